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
//! held at `u` costs `u·L`, but never less than `λD·L`, the replacements starting. Holding
//! `u` for part of a phase and another count for the rest interpolates, so a phase's least
//! cost for a number of misses lies on the lower convex hull of its `(u·L, λL·P(N ≥ u))`
//! points; buying the steepest hull segments of all phases first gives the least cost for the
//! allowed misses. Phase edges are ignored and the workshop's
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
        // A server started when its claim comes is ready in time: its start-up is all.
        return day.phases().map(|p| p.rate * p.length).sum::<f64>() * start.as_secs_f64();
    }
    let allowed = (1.0 - share).max(0.0) * claims as f64;
    let (mut cost, mut misses) = (0.0, 0.0);
    let mut steps = Vec::new();
    for phase in day.phases().filter(|p| p.rate > 0.0) {
        let points = phase_points(phase.length, phase.rate, window, start.as_secs_f64());
        let hull = lower_hull(&points);
        if let Some((least, missed)) = hull.first() {
            cost += least;
            misses += missed;
        }
        steps.extend(hull.windows(2).map(|pair| Step {
            cost: pair[1].0 - pair[0].0,
            saved: pair[0].1 - pair[1].1,
        }));
    }
    steps.sort_by(|a, b| b.per_second().total_cmp(&a.per_second()));
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

/// A phase held at each count `u` from none until misses vanish: `(cost, expected misses)`.
/// The cost is `u·L`, but never less than `λD·L`: each claim's server spends the start-up
/// time `D` unclaimed, starting, so a pool holds that many on average however few it asks
/// for. Counts that cost the same keep only the one that misses least.
fn phase_points(length: f64, rate: f64, window: f64, start: f64) -> Vec<(f64, f64)> {
    let claims = rate * length;
    let least = rate * start * length;
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (held, tail) in tails(rate * window).take(MOST_HELD).enumerate() {
        let point = ((held as f64 * length).max(least), claims * tail);
        match points.last_mut() {
            Some(last) if last.0 >= point.0 => *last = point,
            _ => points.push(point),
        }
        if point.1 < 1e-9 {
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

/// Most servers a phase is considered holding (far beyond any pool here).
const MOST_HELD: usize = 100_000;

/// The fewest held servers `u` with `P(N ≥ u) ≤ 1 - share` for `N` Poisson with mean `mean`;
/// none where no claim comes.
fn fewest_held(mean: f64, share: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    let held = tails(mean)
        .take(MOST_HELD)
        .position(|tail| tail <= 1.0 - share)
        .unwrap_or(MOST_HELD);
    u32::try_from(held).unwrap_or(u32::MAX)
}

/// `P(N ≥ u)` for `u` = 0, 1, 2, … and `N` Poisson with mean `mean`: the chance a claim finds
/// `u` held servers taken. Summed in log space in one pass, so a large mean cannot underflow.
fn tails(mean: f64) -> impl Iterator<Item = f64> {
    let mut log_probability = -mean;
    let mut below: f64 = 0.0;
    let mut held = 0u32;
    std::iter::from_fn(move || {
        let tail = if mean > 0.0 {
            (1.0 - below).max(0.0)
        } else {
            f64::from(u8::from(held == 0))
        };
        below += log_probability.exp();
        held = held.saturating_add(1);
        log_probability += (mean / f64::from(held)).ln();
        Some(tail)
    })
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
    }

    #[test]
    fn the_claims_own_start_up_is_all_when_none_need_serving_in_time_or_servers_start_within_it() {
        let claims: f64 = Day::TEAM.phases().map(|p| p.rate * p.length).sum();
        let hit = Duration::from_secs(1);
        // (start-up, share within the hit time)
        for (start, share) in [(5_000, 0.0), (800, 0.99)] {
            let start = Duration::from_millis(start);
            let cost = least_unclaimed_seconds(Day::TEAM, start, hit, share, 99);
            let start_up = claims * start.as_secs_f64();
            assert!(
                (cost - start_up).abs() < 1e-9,
                "{start:?}: {cost} vs {start_up}"
            );
        }
    }

    #[test]
    fn a_claim_is_missed_when_as_many_claims_as_held_servers_came_in_the_window_before_it() {
        let e = (-2.0f64).exp();
        let two: Vec<f64> = tails(2.0).take(31).collect();
        assert_eq!(two[0], 1.0);
        assert!((two[1] - (1.0 - e)).abs() < 1e-12);
        assert!((two[2] - (1.0 - 3.0 * e)).abs() < 1e-12);
        assert!(two[30] < 1e-12);
        // A mean whose e^-mean underflows still sums right.
        let large: Vec<f64> = tails(2_000.0).take(2_501).collect();
        assert!((large[1_500] - 1.0).abs() < 1e-9);
        assert!(large[2_500] < 1e-9);
        assert_eq!(tails(0.0).take(3).collect::<Vec<_>>(), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn the_fewest_held_servers_are_where_the_tail_first_falls_to_the_allowed_share() {
        for mean in [0.5, 2.3, 23.0, 400.0] {
            for share in [0.9, 0.99] {
                let held = fewest_held(mean, share) as usize;
                let tail: Vec<f64> = tails(mean).take(held + 1).collect();
                assert!(tail[held] <= 1.0 - share, "{mean} {share}");
                assert!(held == 0 || tail[held - 1] > 1.0 - share, "{mean} {share}");
            }
        }
        assert_eq!(fewest_held(0.0, 0.99), 0);
    }

    #[test]
    fn a_phase_costs_at_least_the_start_up_time_of_its_claims_however_few_are_held() {
        // 2 claims a second, 4 s to start: 8 servers starting on average.
        let points = phase_points(10.0, 2.0, 3.0, 4.0);
        assert_eq!(points[0].0, 80.0);
        assert!(points[1].0 > 80.0, "{points:?}");
        // Of the counts up to 8, all costing 80, only 8 (missing least) is kept.
        assert!((points[0].1 - 20.0 * tails(6.0).nth(8).unwrap_or(1.0)).abs() < 1e-9);
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
