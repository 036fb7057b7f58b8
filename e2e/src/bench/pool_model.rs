//! A model, not a measurement: what a pool told the trace's rates in advance reaches on the
//! same trace. The model pool knows each phase's arrival rate and the workshop one start-up
//! time ahead (what no reactive policy knows); it keeps unclaimed (starting or idle) the
//! `q`-quantile of the Poisson arrivals expected within the next start-up time, starts a
//! replacement the moment a server is claimed, and its servers start in exactly `d`. Its
//! figures mark where the frontier of hit rate against idle capacity lies for this trace:
//! a goal beyond what this pool reaches is beyond what foresight of the rates buys.

use std::collections::VecDeque;
use std::time::Duration;

use spark_connect_operator::controller::pool::autoscale::poisson_quantile;

use super::trace::{Arrival, rate_at};

/// Time step of the model.
const STEP: f64 = 0.01;
/// Samples of the rate over one start-up time.
const RATE_SAMPLES: u32 = 20;

/// What the model pool does on the trace at one quantile.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRun {
    /// The share of arrivals within a start-up time the pool covers.
    pub quantile: f64,
    /// Claims of the trace.
    pub claims: usize,
    /// Claims that found a ready idle server on arrival.
    pub hits: usize,
    /// Unclaimed (starting or idle) server-seconds over the trace.
    pub unclaimed_server_seconds: f64,
}

/// Runs the model pool at each quantile, with servers that start in `start`.
pub fn frontier(trace: &[Arrival], start: Duration, quantiles: &[f64]) -> Vec<ModelRun> {
    quantiles
        .iter()
        .map(|q| run(trace, start.as_secs_f64(), *q))
        .collect()
}

/// The expected arrivals within `d` seconds after `t`.
fn expected_within(t: f64, d: f64) -> f64 {
    let samples =
        (0..RATE_SAMPLES).map(|i| rate_at(t + d * f64::from(i) / f64::from(RATE_SAMPLES)));
    samples.sum::<f64>() / f64::from(RATE_SAMPLES) * d
}

fn run(trace: &[Arrival], d: f64, quantile: f64) -> ModelRun {
    let end = trace
        .iter()
        .map(|a| (a.at + a.hold).as_secs_f64())
        .fold(0.0, f64::max);
    // Ready times of starting servers, in order (all start in `d`).
    let mut starting: VecDeque<f64> = VecDeque::new();
    let (mut idle, mut waiting, mut hits, mut cost) = (0usize, 0usize, 0usize, 0.0);
    let mut next = 0;
    // Begin one start-up time early, so the first claims' servers can be ready.
    let first = -2.0 * d;
    let steps = ((end - first) / STEP).ceil() as u64;
    for step in 0..=steps {
        let t = first + step as f64 * STEP;
        while starting.front().is_some_and(|ready| *ready <= t) {
            starting.pop_front();
            idle += 1;
        }
        let served = waiting.min(idle);
        waiting -= served;
        idle -= served;
        while next < trace.len() && trace[next].at.as_secs_f64() <= t {
            next += 1;
            if idle > 0 {
                idle -= 1;
                hits += 1;
            } else {
                waiting += 1;
            }
        }
        let target = poisson_quantile(expected_within(t, d), quantile);
        let unclaimed = (idle + starting.len()).saturating_sub(waiting);
        for _ in unclaimed..target {
            starting.push_back(t + d);
        }
        if waiting == 0 {
            idle -= idle.min(unclaimed.saturating_sub(target));
        }
        if t >= 0.0 {
            cost += (idle + starting.len()) as f64 * STEP;
        }
    }
    ModelRun {
        quantile,
        claims: trace.len(),
        hits,
        unclaimed_server_seconds: cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::trace;

    #[test]
    fn covering_more_arrivals_buys_hits_with_idle_capacity() {
        let runs = frontier(&trace(), Duration::from_secs(4), &[0.9, 0.99, 0.9999]);
        for pair in runs.windows(2) {
            assert!(pair[1].hits >= pair[0].hits, "{runs:?}");
            assert!(
                pair[1].unclaimed_server_seconds > pair[0].unclaimed_server_seconds,
                "{runs:?}"
            );
        }
        // Every claim's server is up and unclaimed for at least one start-up time.
        let least = runs[0].claims as f64 * 4.0;
        assert!(
            runs.iter()
                .all(|r| r.unclaimed_server_seconds >= least * 0.99),
            "{runs:?}"
        );
    }
}
