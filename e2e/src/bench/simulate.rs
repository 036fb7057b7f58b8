//! Pool economics in virtual time: the economics trace replayed against the operator's own
//! autoscaler (`Demand`, the code the operator runs) and a model of the pool: a server takes
//! the start-up time to become idle, each claim takes the oldest idle server or waits in line,
//! unclaimed servers (starting or idle) are kept at the idle target plus the waiting claims
//! (surplus starting servers go first), new servers wait for a burst of binds as the operator's
//! do, and a claimed server's replacement waits out `refillDelay` while an idle server is left
//! and no other claim came since. No apiserver and no processes, so one replay takes
//! milliseconds and the autoscaler's settings can be swept; the model leaves out the
//! apiserver's and the prober's delays, which `sco-bench economics` measures, and takes one
//! start-up time for every server, however many start at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use spark_connect_operator::controller::context::BINDS_QUIET;
use spark_connect_operator::controller::pool::autoscale::{Demand, SeenClaim};

use super::calendar::{CalendarWindow, calendar};
use super::least_idle;
use super::report;
use super::trace::{Arrival, Day, PHASES, peak_within};

/// A claim Bound within this time is a hit.
const HIT: Duration = Duration::from_secs(1);
/// Step of virtual time.
const STEP: Duration = Duration::from_millis(50);
/// `hotPool.max` of the economics bench's clusters.
pub const MAX_IDLE: usize = 30;
/// `hotPool.idle` of the economics bench's autoscaled clusters: the autoscaler's floor.
const FLOOR: usize = 1;
/// What the model pool runs under: the day of claims, how long a server takes to start,
/// `hotPool.refillDelay` and the operator's hold of new servers for a burst of binds.
#[derive(Clone, Copy, Debug)]
pub struct Conditions {
    /// The day of claims, which also decides the team's calendar.
    pub day: Day,
    /// How long a new server takes to become idle.
    pub start: Duration,
    /// `hotPool.refillDelay` (the operator's default is 2 s).
    pub refill_delay: Duration,
    /// The longest new servers wait for a burst of binds (the operator's `MAX_REFILL_HOLD`;
    /// zero: none). The model's binds take no time, so a burst is bound while a server was
    /// handed out less than `BINDS_QUIET` ago.
    pub burst_hold: Duration,
}

/// `hotPool.max` on `day`: the economics bench's, grown in proportion for a busier day.
pub fn max_idle(day: Day) -> usize {
    (MAX_IDLE as f64 * day.rate_scale.max(1.0)).ceil() as usize
}

/// How the pool decides its idle target.
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    /// A fixed number of idle servers.
    Static(usize),
    /// The operator's autoscaler.
    Autoscale {
        /// `hotPool.autoscale.hitRatePercent` as a share.
        hit_rate: f64,
        /// `hotPool.autoscale.scaleDownDelay`.
        scale_down_delay: Duration,
        /// Whether the team's calendar is set as `hotPool.schedule`.
        schedule: bool,
    },
    /// Not the operator's: a pool told every phase's arrival rate and the workshop ahead, which
    /// holds what [`least_idle::knowing_target`] asks for `share` of the claims.
    KnowsRates {
        /// The chance, per claim, of being served within [`HIT`].
        share: f64,
    },
}

impl Policy {
    /// The policy as a pool's settings.
    pub fn describe(&self) -> String {
        match self {
            Self::Static(n) => format!("static pool of {n}"),
            Self::Autoscale {
                hit_rate,
                scale_down_delay,
                schedule,
            } => format!(
                "autoscaler{} hitRatePercent {:.0}, scaleDownDelay {}s",
                if *schedule { " + schedule" } else { "" },
                hit_rate * 100.0,
                scale_down_delay.as_secs()
            ),
            Self::KnowsRates { share } => format!(
                "a pool that knows every phase's rate and the workshop, {:.0} % per claim",
                share * 100.0
            ),
        }
    }
}

/// What one replay came to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Claims in the trace.
    pub claims: usize,
    /// Claims Bound within [`HIT`].
    pub hits: usize,
    /// Unclaimed (starting or idle) server-seconds.
    pub unclaimed_seconds: f64,
    /// The same, divided by the ideal (claims × start-up time).
    pub vs_ideal: f64,
    /// The same by phase of the day (in the order of [`PHASES`]), by when the claim came and
    /// when the servers were unclaimed.
    pub by_phase: [PhaseTally; PHASES.len()],
}

/// What one phase of a replay came to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTally {
    /// Claims that came in the phase.
    pub claims: usize,
    /// Of those, the ones Bound within [`HIT`].
    pub hits: usize,
    /// Unclaimed server-seconds in the phase.
    pub unclaimed_seconds: f64,
}

impl Outcome {
    /// The share of claims Bound within [`HIT`].
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.claims.max(1) as f64
    }
}

/// The model pool.
struct Pool {
    /// When each starting server becomes idle.
    starting: Vec<Duration>,
    idle: usize,
    /// The claims waiting, first first: arrival, how long they will hold a server, name.
    waiting: VecDeque<(Duration, Duration, String)>,
    /// Claims holding a server: when they let it go, the name, when they came.
    holding: Vec<(Duration, String, Duration)>,
    /// The oldest handout whose replacement has not started (the claimant's grace).
    unreplaced_since: Option<Duration>,
    /// Handouts since then: a second one ends the grace, as in the operator.
    unreplaced: usize,
    /// When a server was last handed out.
    last_handout: Option<Duration>,
    /// Since when new servers have waited for the current burst of binds.
    burst_held_since: Option<Duration>,
}

impl Pool {
    fn unclaimed(&self) -> usize {
        self.idle + self.starting.len()
    }

    /// Whether new servers wait for a burst of binds at `now`: while a server was handed out
    /// less than `BINDS_QUIET` ago, for at most `burst_hold` from the burst's first handout; a
    /// burst ends only after `burst_hold` without handouts.
    fn burst_hold(&mut self, under: &Conditions, now: Duration) -> bool {
        let Some(last) = self.last_handout else {
            return false;
        };
        if now >= last + BINDS_QUIET {
            if now >= last + under.burst_hold {
                self.burst_held_since = None;
            }
            return false;
        }
        now < *self.burst_held_since.get_or_insert(now) + under.burst_hold
    }

    /// Brings the unclaimed servers to `target` at `now`.
    fn resize(&mut self, target: usize, under: &Conditions, now: Duration) {
        let unclaimed = self.unclaimed();
        let held_for_binds = self.burst_hold(under, now);
        if unclaimed < target {
            let grace = self.unreplaced_since.is_some_and(|since| {
                self.idle > 0
                    && self.waiting.is_empty()
                    && self.unreplaced <= 1
                    && now < since + under.refill_delay
            });
            if grace || held_for_binds {
                return;
            }
            self.unreplaced_since = None;
            self.unreplaced = 0;
            self.starting
                .extend(std::iter::repeat_n(now + under.start, target - unclaimed));
        } else {
            let mut surplus = unclaimed - target;
            // The ones that started last go first, then idle ones.
            self.starting.sort_unstable();
            while surplus > 0 && self.starting.pop().is_some() {
                surplus -= 1;
            }
            self.idle -= surplus.min(self.idle);
        }
    }
}

/// Replays `trace` against a pool deciding by `policy`, `under` the given conditions.
pub fn replay(trace: &[Arrival], policy: Policy, under: &Conditions) -> Outcome {
    let start = under.start;
    let windows = calendar(under.day, start);
    let epoch = Instant::now();
    let mut demand = Demand::default();
    demand.observe(&[], &[start], epoch);
    let first_target = target(&mut demand, policy, &windows, under, epoch, Duration::ZERO);
    let mut pool = Pool {
        starting: Vec::new(),
        idle: first_target,
        waiting: VecDeque::new(),
        holding: Vec::new(),
        unreplaced_since: None,
        unreplaced: 0,
        last_handout: None,
        burst_held_since: None,
    };
    let end = trace
        .iter()
        .map(|a| a.at + a.hold)
        .max()
        .unwrap_or_default();
    let (mut next, mut hits, mut unclaimed_seconds) = (0, 0, 0.0);
    let mut by_phase = [PhaseTally::default(); PHASES.len()];
    let mut now = Duration::ZERO;
    while now <= end {
        while let Some(arrival) = trace.get(next).filter(|a| a.at <= now) {
            pool.waiting
                .push_back((arrival.at, arrival.hold, format!("claim-{next}")));
            by_phase[phase_at(under.day, arrival.at)].claims += 1;
            next += 1;
        }
        let ready = pool.starting.iter().filter(|r| **r <= now).count();
        pool.starting.retain(|r| *r > now);
        pool.idle += ready;
        while pool.idle > 0 {
            let Some((arrived, hold, name)) = pool.waiting.pop_front() else {
                break;
            };
            pool.idle -= 1;
            let hit = usize::from(now - arrived <= HIT);
            hits += hit;
            by_phase[phase_at(under.day, arrived)].hits += hit;
            pool.holding.push((now + hold, name, arrived));
            pool.unreplaced_since.get_or_insert(now);
            pool.unreplaced += 1;
            pool.last_handout = Some(now);
        }
        pool.holding.retain(|(until, _, _)| *until > now);
        let seen = |name: &String, arrived: Duration| SeenClaim {
            name: name.clone(),
            age: now.saturating_sub(arrived),
        };
        let live: Vec<SeenClaim> = pool
            .waiting
            .iter()
            .map(|(arrived, _, name)| seen(name, *arrived))
            .chain(
                pool.holding
                    .iter()
                    .map(|(_, name, arrived)| seen(name, *arrived)),
            )
            .collect();
        demand.observe(&live, &[], epoch + now);
        let wanted = target(&mut demand, policy, &windows, under, epoch, now);
        pool.resize(
            (wanted + pool.waiting.len()).min(max_idle(under.day)),
            under,
            now,
        );
        let step_unclaimed = pool.unclaimed() as f64 * STEP.as_secs_f64();
        unclaimed_seconds += step_unclaimed;
        by_phase[phase_at(under.day, now)].unclaimed_seconds += step_unclaimed;
        now += STEP;
    }
    let ideal = trace.len() as f64 * start.as_secs_f64();
    Outcome {
        claims: trace.len(),
        hits,
        unclaimed_seconds,
        vs_ideal: unclaimed_seconds / ideal,
        by_phase,
    }
}

/// The index in [`PHASES`] of the phase of `day` that `at` falls in (the last one after the
/// day's end).
fn phase_at(day: Day, at: Duration) -> usize {
    let t = at.as_secs_f64();
    day.phase_starts()
        .take_while(|(start, _)| *start <= t)
        .count()
        .clamp(1, PHASES.len())
        - 1
}

/// The idle target at `now`: the policy's, at least an open calendar window's (opened ahead by
/// the start-up time and a probe period, as the operator does).
fn target(
    demand: &mut Demand,
    policy: Policy,
    windows: &[CalendarWindow],
    under: &Conditions,
    epoch: Instant,
    now: Duration,
) -> usize {
    match policy {
        Policy::Static(n) => n,
        Policy::Autoscale {
            hit_rate,
            scale_down_delay,
            schedule,
        } => {
            let (autoscaled, _) = demand.target(
                0,
                max_idle(under.day),
                FLOOR,
                hit_rate,
                scale_down_delay,
                epoch + now,
            );
            let lead = (under.start + Duration::from_secs(1)).as_secs_f64();
            let t = now.as_secs_f64();
            let scheduled = windows
                .iter()
                .filter(|w| schedule && w.at - lead <= t && t < w.at + w.length)
                .map(|w| w.idle)
                .max()
                .unwrap_or(0);
            autoscaled.max(scheduled)
        }
        Policy::KnowsRates { share } => {
            least_idle::knowing_target(under.day, under.start, HIT, share, now.as_secs_f64())
        }
    }
}

/// Shares of claims the sweep asks the autoscaler for.
const HIT_RATES: [f64; 3] = [0.9, 0.95, 0.99];
/// Per-claim shares of the rate-knowing pools the sweep is set beside.
/// The last, the strictest, is the one the per-phase table sets beside the leanest.
const KNOWING_SHARES: [f64; 2] = [0.95, 0.99];
/// Scale-down delays of the sweep.
const DELAYS: [Duration; 4] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(60),
];

/// The autoscaler settings the sweep tries, with and without the schedule.
fn sweep() -> Vec<Policy> {
    let mut policies = Vec::new();
    for schedule in [false, true] {
        for hit_rate in HIT_RATES {
            for scale_down_delay in DELAYS {
                policies.push(Policy::Autoscale {
                    hit_rate,
                    scale_down_delay,
                    schedule,
                });
            }
        }
    }
    policies
}

/// Of the sweep's settings, the one with the least idle capacity that serves at least `share`
/// of the trace's claims within [`HIT`] in the model, with the model's outcome.
pub fn leanest(trace: &[Arrival], under: &Conditions, share: f64) -> Option<(Policy, Outcome)> {
    sweep()
        .into_iter()
        .map(|policy| (policy, replay(trace, policy, under)))
        .filter(|(_, outcome)| outcome.hit_rate() >= share)
        .min_by(|a, b| a.1.unclaimed_seconds.total_cmp(&b.1.unclaimed_seconds))
}

/// Sweeps the autoscaler's settings over the day's trace `under` the given conditions; prints
/// a table, the least idle capacity a pool knowing the rates would need, and writes
/// `target/bench/<output>.json`.
pub fn run(under: &Conditions, output: &str) -> anyhow::Result<()> {
    let trace = under.day.trace();
    let peak = peak_within(&trace, under.start).max(1);
    let policies = std::iter::once(Policy::Static(peak))
        .chain(sweep())
        .chain(KNOWING_SHARES.map(|share| Policy::KnowsRates { share }));
    println!(
        "pool economics simulated: {} claims (arrival rates x{}), servers start in {:.2} s, refillDelay {} ms, hit = Bound within {} s",
        trace.len(),
        under.day.rate_scale,
        under.start.as_secs_f64(),
        under.refill_delay.as_millis(),
        HIT.as_secs()
    );
    let mut rows = Vec::new();
    // The last rate-knowing pool replayed (the strictest) is the per-phase comparison.
    let mut knowing = None;
    for policy in policies {
        let name = policy.describe();
        let outcome = replay(&trace, policy, under);
        if matches!(policy, Policy::KnowsRates { .. }) {
            knowing = Some(outcome);
        }
        println!(
            "  {name}: {}/{} claims hit ({:.1} %), unclaimed server-seconds {:.0} = {:.2}x the ideal",
            outcome.hits,
            outcome.claims,
            outcome.hit_rate() * 100.0,
            outcome.unclaimed_seconds,
            outcome.vs_ideal
        );
        rows.push(serde_json::json!({
            "policy": name, "claims": outcome.claims, "hits_within_1s": outcome.hits,
            "hit_rate": outcome.hit_rate(), "unclaimed_server_seconds": outcome.unclaimed_seconds,
            "idle_vs_ideal": outcome.vs_ideal,
        }));
    }
    let leanest = leanest(&trace, under, 0.99);
    if let Some((policy, outcome)) = &leanest {
        println!(
            "least idle capacity with >= 99 % hits: {}, {:.2}x the ideal",
            policy.describe(),
            outcome.vs_ideal
        );
    }
    if let (Some((_, outcome)), Some(knowing)) = (&leanest, &knowing) {
        print_by_phase(outcome, knowing);
    }
    let least = least_idle::report(under.day, under.start, HIT, trace.len());
    report::write(
        output,
        &serde_json::json!({
            "rate_scale": under.day.rate_scale, "start_seconds": under.start.as_secs_f64(),
            "refill_delay_seconds": under.refill_delay.as_secs_f64(),
            "trace_claims": trace.len(), "policies": rows,
            "leanest_99": leanest.map(|(policy, outcome)| serde_json::json!({
                "policy": policy.describe(), "hit_rate": outcome.hit_rate(), "idle_vs_ideal": outcome.vs_ideal,
                "by_phase": by_phase_json(&outcome),
            })),
            "knowing_99_by_phase": knowing.as_ref().map(by_phase_json),
            "least_idle_knowing_the_rates": least,
        }),
    )
}

/// Where the leanest setting's misses and idle time fall, phase by phase, beside the
/// rate-knowing pool's.
fn print_by_phase(leanest: &Outcome, knowing: &Outcome) {
    println!(
        "by phase: claims, then hits and unclaimed server-seconds (leanest | rate-knowing, 99 %):"
    );
    for ((phase, lean), know) in PHASES.iter().zip(&leanest.by_phase).zip(&knowing.by_phase) {
        println!(
            "  {:<10} {:>4} claims: {:>4} hits {:>6.0} s | {:>4} hits {:>6.0} s",
            phase.name,
            lean.claims,
            lean.hits,
            lean.unclaimed_seconds,
            know.hits,
            know.unclaimed_seconds
        );
    }
}

/// An outcome's phases as JSON.
fn by_phase_json(outcome: &Outcome) -> serde_json::Value {
    PHASES
        .iter()
        .zip(&outcome.by_phase)
        .map(|(phase, tally)| {
            serde_json::json!({
                "phase": phase.name, "claims": tally.claims, "hits_within_1s": tally.hits,
                "unclaimed_server_seconds": tally.unclaimed_seconds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spark_connect_operator::controller::context::MAX_REFILL_HOLD;

    const UNDER: Conditions = Conditions {
        day: Day::TEAM,
        start: Duration::from_millis(4800),
        refill_delay: Duration::from_secs(2),
        burst_hold: MAX_REFILL_HOLD,
    };

    fn autoscale(hit_rate: f64, schedule: bool) -> Policy {
        Policy::Autoscale {
            hit_rate,
            scale_down_delay: Duration::from_secs(20),
            schedule,
        }
    }

    #[test]
    fn a_pool_that_asks_for_more_hits_hits_more_and_idles_more() {
        let trace = Day::TEAM.trace();
        let loose = replay(&trace, autoscale(0.9, false), &UNDER);
        let strict = replay(&trace, autoscale(0.99, false), &UNDER);
        assert!(strict.hits >= loose.hits, "{strict:?} vs {loose:?}");
        assert!(strict.unclaimed_seconds > loose.unclaimed_seconds);
    }

    #[test]
    fn the_calendar_serves_the_bursts_the_autoscaler_alone_misses() {
        let trace = Day::TEAM.trace();
        let alone = replay(&trace, autoscale(0.99, false), &UNDER);
        let scheduled = replay(&trace, autoscale(0.99, true), &UNDER);
        assert!(scheduled.hits > alone.hits, "{scheduled:?} vs {alone:?}");
    }

    #[test]
    fn a_static_pool_of_the_peak_hits_nearly_all_at_several_times_the_ideal_and_an_empty_one_none()
    {
        let trace = Day::TEAM.trace();
        let empty = replay(&trace, Policy::Static(0), &UNDER);
        assert_eq!(empty.hits, 0);
        let peak = peak_within(&trace, UNDER.start);
        let static_pool = replay(&trace, Policy::Static(peak), &UNDER);
        assert!(static_pool.vs_ideal > 1.0, "{static_pool:?}");
        assert!(static_pool.hit_rate() > 0.95, "{static_pool:?}");
    }

    #[test]
    fn the_phases_of_a_replay_add_up_to_its_day() {
        let trace = Day::TEAM.trace();
        let outcome = replay(&trace, autoscale(0.95, true), &UNDER);
        let phases = &outcome.by_phase;
        assert_eq!(
            phases.iter().map(|p| p.claims).sum::<usize>(),
            outcome.claims
        );
        assert_eq!(phases.iter().map(|p| p.hits).sum::<usize>(), outcome.hits);
        let unclaimed: f64 = phases.iter().map(|p| p.unclaimed_seconds).sum();
        assert!((unclaimed - outcome.unclaimed_seconds).abs() < 1e-6);
        // The workshop's eight claims come in the afternoon, on top of its own.
        let afternoon = PHASES.iter().position(|p| p.name == "afternoon");
        assert!(
            afternoon.is_some_and(|i| phases[i].claims >= 8),
            "{phases:?}"
        );
        assert_eq!(phases[PHASES.len() - 1].claims, 0, "no claim at night");
    }

    /// An organisation's day: ten times the claims of one team's.
    const BUSY: Conditions = Conditions {
        day: Day { rate_scale: 10.0 },
        ..UNDER
    };

    #[test]
    fn a_model_pool_that_knows_the_rates_serves_99_percent_at_little_above_the_estimated_least() {
        for under in [UNDER, BUSY] {
            let day = under.day;
            let trace = day.trace();
            let knowing = replay(&trace, Policy::KnowsRates { share: 0.99 }, &under);
            let least =
                least_idle::least_unclaimed_seconds(day, under.start, HIT, 0.99, trace.len());
            assert!(knowing.hit_rate() >= 0.99, "{day:?}: {knowing:?}");
            // The estimate is a floor (phase edges and the workshop come free to it), and a
            // close one: within a quarter of what the pool needs.
            let ratio = knowing.unclaimed_seconds / least;
            assert!((1.0..1.25).contains(&ratio), "{day:?}: {ratio}");
        }
    }

    #[test]
    fn the_hold_for_a_burst_of_binds_costs_a_stream_of_claims_no_hits() {
        // Thirty times one team's claims: several a second, with short gaps between them. Were
        // the refill held anew after every gap, replacements would start up to two seconds
        // late again and again (86 % instead of 99 %).
        let busiest = Conditions {
            day: Day { rate_scale: 30.0 },
            ..UNDER
        };
        let never_held = Conditions {
            burst_hold: Duration::ZERO,
            ..busiest
        };
        assert_costs_no_hits(&busiest, &never_held);
    }

    #[test]
    fn the_claimants_grace_costs_a_busy_pool_no_hits() {
        // Claims come several a second: were every replacement held for the grace, the pool
        // would fall two seconds of claims behind (93 % instead of 99 %).
        let at_once = Conditions {
            refill_delay: Duration::ZERO,
            ..BUSY
        };
        assert_costs_no_hits(&BUSY, &at_once);
    }

    /// The rate-knowing pool under `with` (a hold in place) hits within 0.5 % of the claims it
    /// hits under `without` (the hold off), on the same day.
    fn assert_costs_no_hits(with: &Conditions, without: &Conditions) {
        let trace = with.day.trace();
        let policy = Policy::KnowsRates { share: 0.99 };
        let held = replay(&trace, policy, with);
        let unheld = replay(&trace, policy, without);
        let allowed = (0.005 * trace.len() as f64).ceil() as usize;
        assert!(held.hits + allowed >= unheld.hits, "{held:?} vs {unheld:?}");
    }
}
