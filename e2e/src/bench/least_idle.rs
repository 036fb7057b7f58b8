//! An estimate, not a measurement: the least unclaimed server-seconds with which any pool could
//! serve a share of the trace's claims within the hit time, had it known each phase's arrival
//! rate exactly but not when each claim comes.
//!
//! A server started at `t` is ready at `t + D`; a claim arriving in `(t, t + W]`, `W = D - hit`,
//! can therefore be served in time only by a server that was unclaimed (starting or idle) at
//! `t`. Arrivals in such a window are Poisson with mean `λW` whatever happened before, so a pool
//! that holds `u` unclaimed servers misses at least `E[(N - u)+]` of them. A phase of length `L`
//! holds `L / W` such windows; a pool may hold `u` for part of it and `u + 1` for the rest, so
//! its cost (`u·L` server-seconds) and its misses interpolate linearly between whole counts.
//! Misses fall convexly in `u`, so buying the cheapest reduction of misses first, step by step,
//! gives the least cost for a number of misses. The workshop's claims are counted as served for
//! free and phase edges are ignored, both in the pool's favour: the true least is higher.

use std::time::Duration;

use super::trace::Day;

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
    // Per phase: its length, its mean arrivals per window, the count held so far.
    let mut phases: Vec<(f64, f64, u32)> = day
        .phases()
        .filter(|p| p.rate > 0.0)
        .map(|p| (p.length, p.rate * window, 0))
        .collect();
    let misses = |length: f64, mean: f64, held: u32| length / window * shortfall(mean, held);
    let mut expected: f64 = phases.iter().map(|&(l, m, u)| misses(l, m, u)).sum();
    let mut cost = 0.0;
    while expected > allowed {
        // The phase where one more held server saves the most misses per server-second.
        let best = phases
            .iter_mut()
            .map(|phase| {
                let (length, mean, held) = *phase;
                let saved = misses(length, mean, held) - misses(length, mean, held + 1);
                (saved / length, saved, phase)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((per_second, saved, phase)) = best else {
            break;
        };
        if per_second <= 0.0 {
            break;
        }
        if expected - saved <= allowed {
            cost += (expected - allowed) / per_second;
            break;
        }
        cost += phase.0;
        phase.2 += 1;
        expected -= saved;
    }
    cost
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

/// `E[(N - u)+]` for `N` Poisson with mean `mean`: the arrivals `u` servers leave unserved.
fn shortfall(mean: f64, held: u32) -> f64 {
    // E[(N - u)+] = E[N] - u + E[(u - N)+], the last a finite sum.
    let mut probability = (-mean).exp();
    let mut surplus = 0.0;
    for n in 0..held {
        surplus += f64::from(held - n) * probability;
        probability *= mean / f64::from(n + 1);
    }
    mean - f64::from(held) + surplus
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
    fn the_shortfall_is_what_held_servers_leave_unserved() {
        assert!((shortfall(2.0, 0) - 2.0).abs() < 1e-12);
        // One server leaves E[N] - 1 + P(N = 0).
        assert!((shortfall(2.0, 1) - (1.0 + (-2.0f64).exp())).abs() < 1e-12);
        assert!(shortfall(2.0, 30) < 1e-12);
    }
}
