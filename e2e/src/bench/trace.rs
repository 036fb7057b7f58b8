//! The pool-economics trace: a working day of claims compressed into about five minutes (steady
//! phases of Poisson arrivals, a lunch lull, a night, and one workshop burst), from a fixed seed
//! so that every run replays the same claims.

use std::time::Duration;

/// One claim of the trace.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Offset from the start of the replay.
    pub at: Duration,
    /// How long the user keeps the server.
    pub hold: Duration,
}

/// A phase of the day: its length and its arrival rate (seconds and claims per second,
/// compressed).
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    /// What it is.
    pub name: &'static str,
    /// Its length in seconds.
    pub length: f64,
    /// Claims per second.
    pub rate: f64,
}

/// The day.
pub const PHASES: [Phase; 6] = [
    Phase {
        name: "morning",
        length: 60.0,
        rate: 0.25,
    },
    Phase {
        name: "busy",
        length: 60.0,
        rate: 0.6,
    },
    Phase {
        name: "lunch",
        length: 60.0,
        rate: 0.05,
    },
    Phase {
        name: "afternoon",
        length: 60.0,
        rate: 0.4,
    },
    Phase {
        name: "evening",
        length: 30.0,
        rate: 0.02,
    },
    Phase {
        name: "night",
        length: 30.0,
        rate: 0.0,
    },
];

/// A team's workshop: this many claims, one every [`WORKSHOP_EVERY`] seconds from
/// [`WORKSHOP_AT`].
pub const WORKSHOP_CLAIMS: u32 = 8;
/// When the workshop starts (seconds into the day).
pub const WORKSHOP_AT: f64 = 200.0;
/// Seconds between the workshop's claims.
pub const WORKSHOP_EVERY: f64 = 0.5;

/// A small deterministic generator (xorshift64*), so every run replays the same trace.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential variate with the given mean.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).max(f64::MIN_POSITIVE).ln()
    }
}

/// A day of claims: the phases of [`PHASES`] with every arrival rate multiplied by
/// `rate_scale`, and the workshop as it is (one team's workshop, however large the
/// organisation). `Day::TEAM` is one team's day, the one `sco-bench economics` replays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Day {
    /// The factor on every phase's arrival rate.
    pub rate_scale: f64,
}

impl Day {
    /// One team's day.
    pub const TEAM: Day = Day { rate_scale: 1.0 };

    /// The phases, with their rates scaled.
    pub fn phases(self) -> impl Iterator<Item = Phase> {
        PHASES.into_iter().map(move |phase| Phase {
            rate: phase.rate * self.rate_scale,
            ..phase
        })
    }

    /// The trace: Poisson arrivals at each phase's rate, the workshop, sessions of 15–60 s on
    /// one team's day and that divided by the rate scale on a busier one, so every day keeps
    /// about as many servers claimed at once (a claimed server counts neither for hits nor
    /// for idle time, and the world runs every server as a process on its two cores).
    pub fn trace(self) -> Vec<Arrival> {
        trace_of(self.phases(), self.rate_scale.max(1.0))
    }

    /// Where each phase starts (seconds into the day), with the phase.
    pub fn phase_starts(self) -> impl Iterator<Item = (f64, Phase)> {
        self.phases().scan(0.0, |start, phase| {
            let at = *start;
            *start += phase.length;
            Some((at, phase))
        })
    }
}

/// The arrivals of `phases`, the workshop's and each claim's hold (divided by `hold_divisor`),
/// from the fixed seed.
fn trace_of(phases: impl Iterator<Item = Phase>, hold_divisor: f64) -> Vec<Arrival> {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut arrivals = Vec::new();
    let mut start = 0.0;
    for phase in phases {
        let mut t = start;
        if phase.rate > 0.0 {
            loop {
                t += rng.exponential(1.0 / phase.rate);
                if t >= start + phase.length {
                    break;
                }
                arrivals.push(t);
            }
        }
        start += phase.length;
    }
    arrivals.extend((0..WORKSHOP_CLAIMS).map(|i| WORKSHOP_AT + f64::from(i) * WORKSHOP_EVERY));
    arrivals.sort_by(f64::total_cmp);
    arrivals
        .into_iter()
        .map(|at| Arrival {
            at: Duration::from_secs_f64(at),
            hold: Duration::from_secs_f64((15.0 + rng.next_f64() * 45.0) / hold_divisor),
        })
        .collect()
}

/// The most claims that arrive within any window of `d`: the smallest static pool that serves
/// the trace at once when each claimed server is replaced in `d`.
pub fn peak_within(trace: &[Arrival], d: Duration) -> usize {
    (0..trace.len())
        .map(|i| {
            trace[i..]
                .iter()
                .take_while(|a| a.at < trace[i].at + d)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_is_the_same_every_run_and_has_its_burst() {
        let a = Day::TEAM.trace();
        let b = Day::TEAM.trace();
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.at == y.at && x.hold == y.hold)
        );
        assert!(a.len() > 50, "{} claims", a.len());
        assert!(peak_within(&a, Duration::from_secs(4)) >= 8, "the burst");
    }

    #[test]
    fn a_busier_day_has_more_claims_in_the_same_phases() {
        let team = Day::TEAM.trace();
        let busier = Day { rate_scale: 10.0 }.trace();
        assert!(
            busier.len() > 5 * team.len(),
            "{} vs {}",
            busier.len(),
            team.len()
        );
        let last = |t: &[Arrival]| t.iter().map(|a| a.at).max().unwrap_or_default();
        let day: f64 = PHASES.iter().map(|p| p.length).sum();
        assert!(last(&busier).as_secs_f64() < day);
        let longest = |t: &[Arrival]| t.iter().map(|a| a.hold).max().unwrap_or_default();
        assert!(
            longest(&busier) <= Duration::from_secs(6),
            "shorter sessions"
        );
        assert!(longest(&team) > Duration::from_secs(15));
    }
}
