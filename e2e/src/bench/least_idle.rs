//! An estimate, not a measurement: the least unclaimed server-seconds with which a pool could
//! serve a share of the trace's claims within the hit time, had it known each phase's arrival
//! rate exactly but not when each claim comes.
//!
//! Such a pool holds some number `u` of unclaimed servers (starting or idle) through a phase
//! and starts a replacement for each one claimed, which is unclaimed while it starts, for the
//! start-up time `D`. With `W = D - hit`, a claim is served within the hit time exactly when
//! fewer than `u` claims came in the `W` before it: the replacements of older claims are ready
//! in time, those of the last `W` are not. A Poisson arrival sees `N ~ Poisson(λW)` claims
//! before it (PASTA), so it is missed with probability `P(N ≥ u)`, and a phase of length `L`
//! held at `u` costs `u·L`. Holding `u` for part of a phase and another count for the rest
//! interpolates, so a phase's least cost for a number of misses lies on the lower convex hull
//! of its `(u·L, λL·P(N ≥ u))` points; buying the steepest hull segments of all phases first
//! gives the least cost for the allowed misses. Phase edges are ignored and the workshop's
//! claims are counted as served for free, both in the pool's favour: the true least is higher.

use std::time::Duration;

use super::trace::{Day, WORKSHOP_AT, WORKSHOP_CLAIMS, WORKSHOP_EVERY};

/// One step along a phase's hull: holding more servers for `cost` server-seconds saves `saved`
/// misses.
#[derive(Clone, Copy, Debug)]
struct Step {
    cost: f64,
    saved: f64,
}

impl Step {
    /// Misses saved per server-second.
    fn per_second(self) -> f64 {
        self.saved / self.cost
    }
}

/// The least unclaimed server-seconds to serve `share` (0..1) of the `claims` claims of `day`
/// within `hit`, with servers that take `start` to start.
pub fn least_unclaimed_seconds(
    day: Day,
    start: Duration,
    hit: Duration,
    share: f64,
    claims: usize,
) -> f64 {
    let window = start.saturating_sub(hit).as_secs_f64();
    if window <= 0.0 {
        return 0.0;
    }
    let allowed = (1.0 - share).max(0.0) * claims as f64;
    let mut misses = 0.0;
    let mut steps = Vec::new();
    for phase in day.phases().filter(|p| p.rate > 0.0) {
        let hull = lower_hull(&phase_points(phase.length, phase.rate, window));
        misses += hull.first().map_or(0.0, |(_, m)| *m);
        steps.extend(hull.windows(2).map(|pair| Step {
            cost: pair[1].0 - pair[0].0,
            saved: pair[0].1 - pair[1].1,
        }));
    }
    steps.sort_by(|a, b| b.per_second().total_cmp(&a.per_second()));
    let mut cost = 0.0;
    for step in steps {
        if misses <= allowed {
            break;
        }
        if misses - step.saved <= allowed {
            cost += (misses - allowed) / step.per_second();
            break;
        }
        cost += step.cost;
        misses -= step.saved;
    }
    cost
}

/// The unclaimed servers a pool that knows the day's rates and its workshop holds at `t`
/// (seconds into the day) to serve each claim within `hit` with chance `share`: through each
/// phase the fewest with `P(N ≥ u) ≤ 1 - share`, from one start-up time before the phase
/// begins; the workshop's claims on top from one start-up time before it. What the model pool
/// reaches with it is the estimate's check.
pub fn knowing_target(day: Day, start: Duration, hit: Duration, share: f64, t: f64) -> usize {
    let window = start.saturating_sub(hit).as_secs_f64();
    let lead = start.as_secs_f64();
    let rate = day
        .phase_starts()
        .filter(|(at, phase)| *at <= t + lead && t < at + phase.length)
        .map(|(_, phase)| phase.rate)
        .fold(0.0, f64::max);
    let workshop_end = WORKSHOP_AT + f64::from(WORKSHOP_CLAIMS) * WORKSHOP_EVERY;
    let workshop = if (WORKSHOP_AT - lead..workshop_end).contains(&t) {
        WORKSHOP_CLAIMS
    } else {
        0
    };
    (fewest_held(rate * window, share) + workshop) as usize
}

/// A phase held at each count `u` from none until misses vanish: `(u·L, expected misses)`.
fn phase_points(length: f64, rate: f64, window: f64) -> Vec<(f64, f64)> {
    let mean = rate * window;
    let claims = rate * length;
    let mut points = Vec::new();
    for held in 0u32.. {
        let missed = claims * tail(mean, held);
        points.push((f64::from(held) * length, missed));
        if missed < 1e-9 || held >= 100_000 {
            break;
        }
    }
    points
}

/// The lower convex hull of points sorted by their first coordinate.
fn lower_hull(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for &p in points {
        while let [.., a, b] = hull[..] {
            // Drop `b` when it lies on or above the segment from `a` to `p`.
            if (b.1 - a.1) * (p.0 - a.0) >= (p.1 - a.1) * (b.0 - a.0) {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// The fewest held servers `u` with `P(N ≥ u) ≤ 1 - share` for `N` Poisson with mean `mean`,
/// summed once in log space (bounded, like [`phase_points`]).
fn fewest_held(mean: f64, share: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    let mut log_probability = -mean;
    let mut below = 0.0;
    let mut held = 0;
    while 1.0 - below > 1.0 - share && held < 100_000 {
        below += log_probability.exp();
        held += 1;
        log_probability += (mean / f64::from(held)).ln();
    }
    held
}

/// `P(N ≥ u)` for `N` Poisson with mean `mean`: the chance a claim finds `u` held servers
/// taken. Summed in log space, so a large mean cannot underflow.
fn tail(mean: f64, held: u32) -> f64 {
    if mean <= 0.0 {
        return if held == 0 { 1.0 } else { 0.0 };
    }
    let mut log_probability = -mean;
    let mut below = 0.0;
    for n in 0..held {
        below += log_probability.exp();
        log_probability += (mean / f64::from(n + 1)).ln();
    }
    (1.0 - below).max(0.0)
}

/// Shares of claims served within the hit time whose least idle capacity is reported.
const SHARES: [f64; 3] = [0.9, 0.95, 0.99];

/// Prints the least unclaimed server-seconds for 90, 95 and 99 % of the `claims` claims of
/// `day` within `hit`, each against the ideal (`claims × start`), and returns them as rows.
pub fn report(day: Day, start: Duration, hit: Duration, claims: usize) -> Vec<serde_json::Value> {
    let ideal = claims as f64 * start.as_secs_f64();
    SHARES
        .iter()
        .map(|&share| {
            let seconds = least_unclaimed_seconds(day, start, hit, share, claims);
            println!(
                "least idle capacity for {:.0} % of claims within {} s, had a pool known every phase's rate (an estimate): {seconds:.0} server-seconds = {:.2}x the ideal",
                share * 100.0,
                hit.as_secs(),
                seconds / ideal
            );
            serde_json::json!({"share": share, "idle_server_seconds": seconds, "idle_vs_ideal": seconds / ideal})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_more_claims_at_once_needs_more_idle_capacity() {
        let start = Duration::from_secs(5);
        let hit = Duration::from_secs(1);
        let costs: Vec<f64> = [0.5, 0.9, 0.95, 0.99]
            .iter()
            .map(|s| least_unclaimed_seconds(Day::TEAM, start, hit, *s, 99))
            .collect();
        assert!(costs.windows(2).all(|c| c[1] > c[0]), "{costs:?}");
        assert_eq!(least_unclaimed_seconds(Day::TEAM, start, hit, 0.0, 99), 0.0);
    }

    #[test]
    fn servers_that_start_within_the_hit_time_need_no_idle_capacity() {
        let cost = least_unclaimed_seconds(
            Day::TEAM,
            Duration::from_millis(800),
            Duration::from_secs(1),
            0.99,
            99,
        );
        assert_eq!(cost, 0.0);
    }

    #[test]
    fn a_claim_is_missed_when_as_many_claims_as_held_servers_came_in_the_window_before_it() {
        let e = (-2.0f64).exp();
        assert_eq!(tail(2.0, 0), 1.0);
        assert!((tail(2.0, 1) - (1.0 - e)).abs() < 1e-12);
        assert!((tail(2.0, 2) - (1.0 - 3.0 * e)).abs() < 1e-12);
        assert!(tail(2.0, 30) < 1e-12);
        // A mean whose e^-mean underflows still sums right.
        assert!((tail(2_000.0, 1_500) - 1.0).abs() < 1e-9);
        assert!(tail(2_000.0, 2_500) < 1e-9);
    }

    #[test]
    fn the_fewest_held_servers_are_where_the_tail_first_falls_to_the_allowed_share() {
        for mean in [0.5, 2.3, 23.0, 400.0] {
            for share in [0.9, 0.99] {
                let held = fewest_held(mean, share);
                assert!(tail(mean, held) <= 1.0 - share, "{mean} {share}");
                assert!(
                    held == 0 || tail(mean, held - 1) > 1.0 - share,
                    "{mean} {share}"
                );
            }
        }
        assert_eq!(fewest_held(0.0, 0.99), 0);
    }

    #[test]
    fn the_hull_keeps_only_the_points_no_mixture_of_others_beats() {
        let points = [(0.0, 10.0), (1.0, 9.5), (2.0, 4.0), (3.0, 3.9), (4.0, 0.0)];
        assert_eq!(
            lower_hull(&points),
            vec![(0.0, 10.0), (2.0, 4.0), (4.0, 0.0)]
        );
    }

    #[test]
    fn serving_nearly_every_claim_holds_more_than_the_claims_of_one_window() {
        let start = Duration::from_millis(4840);
        let hit = Duration::from_secs(1);
        let window = (start - hit).as_secs_f64();
        for day in [Day::TEAM, Day { rate_scale: 10.0 }] {
            let claims: f64 = day.phases().map(|p| p.rate * p.length).sum();
            let cost = least_unclaimed_seconds(day, start, hit, 0.99, claims as usize);
            assert!(
                cost > claims * window,
                "{day:?}: {cost} vs {}",
                claims * window
            );
        }
    }
}
