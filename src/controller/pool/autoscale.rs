//! The hot-pool autoscaler. Claims arrive at a rate (a moving average); a claimed server is
//! replaced within one warm-up time, so the idle servers must cover the claims that arrive
//! within a warm-up. Arrivals are taken as Poisson: the idle target is the smallest count that
//! covers them with probability `hitRatePercent` (at least one), clamped to
//! `hotPool.min..=max`; up at once, down only after `scaleDownDelay` of lower demand. The rate's
//! half-life is the warm-up time itself: the pool reacts on the time scale on which it can
//! act, whether servers take 5 s or 2 minutes to start. A silence that would be unlikely at
//! the current rate lowers the rate at once, so a pool shrinks as soon as the claims stop
//! rather than a few half-lives later. A claim counts from its creation, not from when this
//! process first saw it, and the target and start-up time are kept in the cluster's status: a
//! process that takes over (a new leader, a restart) goes on from there instead of taking every
//! claim it finds for a fresh burst. State lives in memory per cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle servers kept however low demand is.
const AT_LEAST: usize = 1;
/// Bounds of the arrival-rate moving average's half-life (the measured warm-up, clamped).
const HALF_LIFE_BOUNDS: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(300));
/// Demand below this many servers counts as none (the moving average only approaches zero).
const NEGLIGIBLE: f64 = 0.05;
/// The most arrivals expected in a silence before the rate is taken to have fallen: at a rate
/// `r`, no claim for `t` seconds has the chance `exp(-r·t)`, under 1 % once `r·t` exceeds this
/// (`ln 100`). So the rate is held at most `SILENCE_AT_MOST / t` after `t` without a claim.
const SILENCE_AT_MOST: f64 = 4.6;
/// Start-up time assumed before one is measured.
pub const DEFAULT_START_TIME: Duration = Duration::from_secs(30);

/// A claim as one round sees it.
#[derive(Clone, Debug)]
pub struct SeenClaim {
    /// Its name.
    pub name: String,
    /// How long ago it was created.
    pub age: Duration,
}

/// What a cluster's status keeps of its autoscaler, for a process that starts without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// The measured start-up time.
    pub start_time: Option<Duration>,
    /// The idle target last chosen (when autoscaling).
    pub target: Option<usize>,
}

/// Autoscaler state of one cluster.
#[derive(Clone, Debug)]
pub struct Demand {
    rate_per_sec: f64,
    rate_at: Option<Instant>,
    warmup_secs: Option<f64>,
    seen_claims: HashSet<String>,
    target: Option<usize>,
    high_since: Option<Instant>,
    last_arrival: Option<Instant>,
}

impl Default for Demand {
    fn default() -> Self {
        Self {
            rate_per_sec: 0.0,
            rate_at: None,
            warmup_secs: None,
            seen_claims: HashSet::new(),
            target: None,
            high_since: None,
            last_arrival: None,
        }
    }
}

/// A change of the idle target, for Events and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The new target.
    pub target: usize,
    /// The previous target.
    pub previous: usize,
    /// Why.
    pub reason: String,
}

impl Demand {
    /// The demand of a cluster this process has not tracked yet, going on from what its status
    /// kept: the start-up time, and the target, held for a `scaleDownDelay` from `now` as if
    /// just chosen (the claims still there rebuild the rate by their ages).
    pub fn resumed(kept: Kept, now: Instant) -> Self {
        Self {
            warmup_secs: kept.start_time.map(|t| t.as_secs_f64()),
            target: kept.target,
            high_since: kept.target.map(|_| now),
            ..Self::default()
        }
    }

    /// The warm-up time: measured, or assumed until one is.
    fn warmup_secs(&self) -> f64 {
        self.warmup_secs.unwrap_or(DEFAULT_START_TIME.as_secs_f64())
    }

    /// Half-life of the rate's moving average in seconds: one warm-up.
    fn half_life_secs(&self) -> f64 {
        let (low, high) = HALF_LIFE_BOUNDS;
        self.warmup_secs()
            .clamp(low.as_secs_f64(), high.as_secs_f64())
    }

    fn decay(&mut self, now: Instant) {
        if let Some(at) = self.rate_at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.rate_per_sec *= 0.5f64.powf(dt / self.half_life_secs());
        }
        // A silence this long is unlikely (under 1 %) at a higher rate: the rate has fallen.
        if let Some(last) = self.last_arrival {
            let silence = now.saturating_duration_since(last).as_secs_f64();
            if silence > 0.0 {
                self.rate_per_sec = self.rate_per_sec.min(SILENCE_AT_MOST / silence);
            }
        }
        self.rate_at = Some(now);
    }

    /// Records claims seen (a new name counts as an arrival at its creation: one seen late
    /// weighs what is left of it after its age) and warm-up times just measured.
    pub fn observe(&mut self, claims: &[SeenClaim], warmups: &[Duration], now: Instant) {
        self.decay(now);
        let half_life = self.half_life_secs();
        for claim in claims {
            if !self.seen_claims.insert(claim.name.clone()) {
                continue;
            }
            // Each arrival adds to an exponentially weighted rate (events per second).
            let left = 0.5f64.powf(claim.age.as_secs_f64() / half_life);
            self.rate_per_sec += left * std::f64::consts::LN_2 / half_life;
            if let Some(arrived) = now.checked_sub(claim.age) {
                self.last_arrival = self.last_arrival.max(Some(arrived));
            }
        }
        let current: HashSet<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        self.seen_claims.retain(|c| current.contains(c.as_str()));
        for w in warmups {
            let w = w.as_secs_f64();
            self.warmup_secs = Some(self.warmup_secs.map_or(w, |avg| 0.7 * avg + 0.3 * w));
        }
    }

    /// How long a new server takes to become healthy: measured, or assumed until one is.
    pub fn start_time(&self) -> Duration {
        Duration::try_from_secs_f64(self.warmup_secs()).unwrap_or(DEFAULT_START_TIME)
    }

    /// The start-up time, if one was measured (or kept).
    pub fn measured_start_time(&self) -> Option<Duration> {
        self.warmup_secs
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    }

    /// Autoscaling was turned off: forget the target, so turning it on again starts afresh
    /// (arrivals and start-up times are kept).
    pub fn stop_targeting(&mut self) {
        self.target = None;
        self.high_since = None;
    }

    /// Claims per minute (moving average).
    pub fn rate_per_minute(&self) -> f64 {
        self.rate_per_sec * 60.0
    }

    /// The idle target now, and a decision when it changed.
    /// `hit_rate` (0..1) is the chance with which the idle servers cover all claims of one
    /// warm-up.
    pub fn target(
        &mut self,
        min: usize,
        max: usize,
        floor: usize,
        hit_rate: f64,
        delay: Duration,
        now: Instant,
    ) -> (usize, Option<Decision>) {
        self.decay(now);
        let warmup = self.warmup_secs();
        let expected = (self.rate_per_sec * warmup - NEGLIGIBLE).max(0.0);
        let wanted = poisson_quantile(expected, hit_rate)
            .max(AT_LEAST)
            .max(floor)
            .clamp(min, max.max(min));
        // A target above a lowered `max` (or below a raised `min`) obeys it at once.
        let current = (*self.target.get_or_insert(wanted)).clamp(min, max.max(min));
        let (next, reason) = if wanted >= current {
            self.high_since = Some(now);
            (
                wanted,
                format!(
                    "demand {:.1} claims/min x warm-up {:.0}s needs {wanted} idle",
                    self.rate_per_minute(),
                    warmup
                ),
            )
        } else if self
            .high_since
            .is_none_or(|t| now.saturating_duration_since(t) >= delay)
        {
            self.high_since = Some(now);
            (
                wanted,
                format!(
                    "demand fell for {}s: {wanted} idle suffice",
                    delay.as_secs()
                ),
            )
        } else {
            (current, String::new())
        };
        self.target = Some(next);
        let decision = (next != current).then_some(Decision {
            target: next,
            previous: current,
            reason,
        });
        (next, decision)
    }
}

/// The smallest `n` with P(N ≤ n) ≥ `p` for N ~ Poisson(`mean`); bounded, so a huge mean
/// cannot loop long (the caller clamps to `hotPool.max` anyway).
pub fn poisson_quantile(mean: f64, p: f64) -> usize {
    const LIMIT: usize = 10_000;
    if mean <= 0.0 || !mean.is_finite() {
        return 0;
    }
    // Far beyond any pool size, a normal approximation is close enough.
    if mean > 500.0 {
        let z = 2.33; // about the 99th percentile
        return ((mean + z * mean.sqrt()).ceil() as usize).min(LIMIT);
    }
    let mut term = (-mean).exp();
    let mut cumulative = term;
    let mut n = 0;
    while cumulative < p && n < LIMIT {
        n += 1;
        term *= mean / n as f64;
        cumulative += term;
    }
    n
}

/// Demand per cluster.
#[derive(Default)]
pub struct Autoscaler {
    clusters: Mutex<HashMap<String, Demand>>,
}

impl Autoscaler {
    /// Runs `f` on the demand of `cluster`; one this process has not tracked yet resumes from
    /// what `kept` says its status kept.
    pub fn with<T>(
        &self,
        cluster: &str,
        kept: impl FnOnce() -> Kept,
        now: Instant,
        f: impl FnOnce(&mut Demand) -> T,
    ) -> Option<T> {
        self.clusters.lock().ok().map(|mut c| {
            f(c.entry(cluster.to_string())
                .or_insert_with(|| Demand::resumed(kept(), now)))
        })
    }

    /// Forgets a cluster.
    pub fn forget(&self, cluster: &str) {
        if let Ok(mut clusters) = self.clusters.lock() {
            clusters.remove(cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` claims created just now.
    fn new_claims(n: usize, prefix: &str) -> Vec<SeenClaim> {
        (0..n).map(|i| claim(&format!("{prefix}{i}"), 0)).collect()
    }

    /// The claim `name`, created `age_secs` ago.
    fn claim(name: &str, age_secs: u64) -> SeenClaim {
        SeenClaim {
            name: name.into(),
            age: Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn a_burst_raises_the_target_at_once_and_it_falls_only_after_the_delay() {
        let mut d = Demand::default();
        let t0 = Instant::now();
        let delay = Duration::from_secs(300);
        d.observe(&[], &[Duration::from_secs(30)], t0);
        assert_eq!(
            d.target(1, 20, 1, 0.99, delay, t0).0,
            1,
            "no demand: one idle server"
        );

        let burst = new_claims(20, "c");
        d.observe(&burst, &[], t0);
        let (target, decision) = d.target(1, 20, 1, 0.99, delay, t0);
        assert!(target > 1, "{target}");
        assert!(decision.unwrap().reason.contains("claims/min"));

        // Demand ends; the target holds until the delay has passed.
        let later = t0 + Duration::from_secs(299);
        d.observe(&[], &[], later);
        assert_eq!(d.target(1, 20, 1, 0.99, delay, later).0, target);
        let after = t0 + Duration::from_secs(600);
        d.observe(&[], &[], after);
        let (fallen, decision) = d.target(1, 20, 1, 0.99, delay, after);
        assert!(fallen < target);
        assert!(decision.unwrap().reason.contains("demand fell"));
    }

    #[test]
    fn target_is_clamped_and_never_below_the_floor() {
        let mut d = Demand::default();
        let t0 = Instant::now();
        d.observe(&new_claims(1000, "c"), &[Duration::from_secs(60)], t0);
        assert_eq!(d.target(0, 8, 0, 0.99, Duration::ZERO, t0).0, 8);
        let mut quiet = Demand::default();
        assert_eq!(
            quiet.target(0, 8, 3, 0.99, Duration::ZERO, t0).0,
            3,
            "spec.hotPool.idle is the floor"
        );
    }

    #[test]
    fn the_target_covers_the_claims_of_one_warm_up_at_the_asked_share() {
        assert_eq!(poisson_quantile(0.0, 0.99), 0);
        // 2.6 claims expected within a warm-up: 7 idle servers serve 99 % of them at once.
        assert_eq!(poisson_quantile(2.6, 0.99), 7);
        assert_eq!(poisson_quantile(2.6, 0.5), 2);
        assert!(poisson_quantile(1e6, 0.99) <= 10_000);
        let mut d = Demand::default();
        let t0 = Instant::now();
        d.observe(&[], &[Duration::from_secs(30)], t0);
        d.observe(&new_claims(10, "c"), &[], t0);
        let strict = d.clone().target(0, 100, 0, 0.99, Duration::ZERO, t0).0;
        let loose = d.target(0, 100, 0, 0.6, Duration::ZERO, t0).0;
        assert!(strict > loose, "{strict} > {loose}");
    }

    #[test]
    fn demand_is_forgotten_on_the_time_scale_of_one_warm_up() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let remaining = |warmup: u64| {
            let mut d = Demand::default();
            d.observe(&[], &[Duration::from_secs(warmup)], t0);
            d.observe(&new_claims(10, "c"), &[], t0);
            let before = d.rate_per_minute();
            d.observe(&new_claims(10, "c"), &[], later);
            d.rate_per_minute() / before
        };
        // 10 s is two half-lives of a 5 s warm-up and a sixth of a 60 s one.
        assert!((remaining(5) - 0.25).abs() < 1e-9, "{}", remaining(5));
        assert!((remaining(60) - 0.5f64.powf(10.0 / 60.0)).abs() < 1e-9);
    }

    /// A claim every `every` from `t0` for `count` claims: the demand just after the last, when
    /// that was, and the rate then (claims a second).
    fn stream(every: Duration, count: u32, t0: Instant) -> (Demand, Instant, f64) {
        let mut d = Demand::default();
        d.observe(&[], &[Duration::from_secs(5)], t0);
        let mut claims = Vec::new();
        for i in 0..count {
            claims.push(claim(&format!("c{i}"), 0));
            d.observe(&claims, &[], t0 + every * i);
        }
        let rate = d.rate_per_minute() / 60.0;
        (d, t0 + every * (count - 1), rate)
    }

    /// The rate (claims a second) `d` holds at `at`, no claim having come since.
    fn rate_at(d: &mut Demand, at: Instant) -> f64 {
        d.observe(&[], &[], at);
        d.rate_per_minute() / 60.0
    }

    #[test]
    fn a_silence_unlikely_at_the_rate_lowers_it_at_once() {
        // Six claims a second for ten seconds, then none for three seconds.
        let (mut d, last, busy) = stream(Duration::from_millis(166), 60, Instant::now());
        assert!((4.0..7.0).contains(&busy), "{busy}/s");
        let after = rate_at(&mut d, last + Duration::from_secs(3));
        // The half-life alone would keep two thirds of it (3 s of a 5 s half-life).
        assert!(after <= SILENCE_AT_MOST / 3.0 + 1e-9, "{after}/s after 3 s");
        assert!(after < 0.4 * busy, "{after}/s from {busy}/s");
    }

    #[test]
    fn a_steady_stream_keeps_its_rate_through_its_gaps() {
        let (mut d, last, steady) = stream(Duration::from_millis(500), 60, Instant::now());
        assert!((1.5..2.5).contains(&steady), "{steady}/s");
        // Just before the next claim is due, the gap is ordinary: only the half-life counts.
        let before_next = rate_at(&mut d, last + Duration::from_millis(490));
        let decayed = steady * 0.5f64.powf(0.49 / 5.0);
        assert!((before_next - decayed).abs() < 1e-9, "{before_next}/s");
    }

    #[test]
    fn a_claim_seen_late_weighs_what_is_left_of_it_after_its_age() {
        let t0 = Instant::now();
        let rate_after = |age_secs: u64| {
            let mut d = Demand::default();
            d.observe(&[], &[Duration::from_secs(5)], t0);
            d.observe(&[claim("c", age_secs)], &[], t0);
            d.rate_per_minute()
        };
        // One half-life (the 5 s start-up) old: half a fresh claim's weight.
        assert!((rate_after(5) - rate_after(0) / 2.0).abs() < 1e-9);
        assert!(rate_after(600) < 1e-9, "{}", rate_after(600));
    }

    #[test]
    fn a_process_that_takes_over_does_not_take_the_claims_it_finds_for_a_burst() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(300);
        let kept = Kept {
            start_time: Some(Duration::from_secs(5)),
            target: Some(1),
        };
        let old: Vec<SeenClaim> = (0..8).map(|i| claim(&format!("c{i}"), 60)).collect();
        let mut resumed = Demand::resumed(kept, t0);
        resumed.observe(&old, &[], t0);
        assert_eq!(resumed.target(1, 10, 1, 0.99, delay, t0), (1, None));

        // The same claims, had they just come, are a burst.
        let mut burst = Demand::resumed(kept, t0);
        burst.observe(&new_claims(8, "c"), &[], t0);
        assert!(burst.target(1, 10, 1, 0.99, delay, t0).0 > 1);
    }

    #[test]
    fn a_kept_target_holds_for_the_delay_and_a_kept_start_time_is_planned_with() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(30);
        let kept = Kept {
            start_time: Some(Duration::from_secs(5)),
            target: Some(6),
        };
        let mut d = Demand::resumed(kept, t0);
        assert_eq!(d.start_time(), Duration::from_secs(5));
        assert_eq!(d.measured_start_time(), Some(Duration::from_secs(5)));
        d.observe(&[], &[], t0);
        assert_eq!(d.target(1, 10, 1, 0.99, delay, t0), (6, None));
        let later = t0 + delay;
        d.observe(&[], &[], later);
        let (fallen, decision) = d.target(1, 10, 1, 0.99, delay, later);
        assert_eq!(fallen, 1);
        assert!(decision.is_some_and(|d| d.previous == 6));
        assert_eq!(Demand::default().measured_start_time(), None);
    }

    #[test]
    fn a_lowered_max_caps_the_target_at_once() {
        let t0 = Instant::now();
        let mut d = Demand::default();
        d.observe(&new_claims(20, "c"), &[Duration::from_secs(30)], t0);
        let delay = Duration::from_secs(300);
        assert_eq!(d.target(1, 10, 1, 0.99, delay, t0).0, 10);
        assert_eq!(d.target(1, 4, 1, 0.99, delay, t0).0, 4);
    }

    #[test]
    fn the_same_claim_counts_once() {
        let mut d = Demand::default();
        let t0 = Instant::now();
        d.observe(&new_claims(5, "c"), &[], t0);
        let rate = d.rate_per_minute();
        d.observe(&new_claims(5, "c"), &[], t0);
        assert_eq!(d.rate_per_minute(), rate);
    }
}
