//! Percentiles and the JSON files under `target/bench/`.

use std::path::Path;
use std::time::Duration;

/// The p-quantile (0..=1) of samples, nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// The p-quantile in ms of a Prometheus histogram, interpolated within its bucket.
pub fn histogram_percentile(histogram: &prometheus::Histogram, p: f64) -> f64 {
    use prometheus::core::Collector;
    let families = histogram.collect();
    let Some(metric) = families.first().and_then(|f| f.get_metric().first()) else {
        return f64::NAN;
    };
    let h = metric.get_histogram();
    let total = h.get_sample_count() as f64;
    if total == 0.0 {
        return f64::NAN;
    }
    let target = p * total;
    let mut previous_bound = 0.0;
    let mut previous_count = 0.0;
    for bucket in h.get_bucket() {
        let count = bucket.cumulative_count() as f64;
        let bound = bucket.upper_bound();
        if count >= target {
            let within = if count > previous_count {
                (target - previous_count) / (count - previous_count)
            } else {
                1.0
            };
            return (previous_bound + (bound - previous_bound) * within) * 1000.0;
        }
        previous_bound = bound;
        previous_count = count;
    }
    previous_bound * 1000.0
}

/// Median, least and most of a figure across rounds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The least.
    pub min: f64,
    /// The most.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: &[f64]) -> Self {
        Self {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Writes `value` as pretty JSON to `target/bench/<name>.json` and prints it.
pub fn write(name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(dir.join(format!("{name}.json")), &text)?;
    println!("{name}: {text}");
    Ok(())
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Peak resident memory of this process in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[Duration::from_millis(7)], 0.99), 7.0);
    }

    #[test]
    fn histogram_percentiles_interpolate() {
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("h", "h").buckets(vec![0.001, 0.002]),
        )
        .unwrap();
        for _ in 0..100 {
            h.observe(0.0015);
        }
        let p50 = histogram_percentile(&h, 0.5);
        assert!((1.0..=2.0).contains(&p50), "{p50}");
    }
}
