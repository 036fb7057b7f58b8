//! The operator running in a world: its namespace, its leader, its metrics and what its process
//! costs (CPU, memory), read inside the world.

use std::path::Path;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use crate::{exec, pod_pid};

/// The namespace the chart installed the operator into.
pub fn namespace() -> String {
    std::env::var("SCO_OPERATOR_NAMESPACE").unwrap_or_else(|_| "sco-system".into())
}

/// The full identity (`<pod>_<process>`) holding the operator's leader Lease.
pub async fn leader_identity(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace());
    leases
        .get_opt("spark-connect-operator")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// The pod holding the operator's leader Lease.
pub async fn leader(client: &Client) -> Option<String> {
    let identity = leader_identity(client).await?;
    Some(identity.split('_').next().unwrap_or_default().to_string())
}

/// The leading operator's metrics in the Prometheus text format, read inside the world.
pub async fn metrics(client: &Client, world_bin: &Path, state: &Path) -> String {
    let Some(leader) = leader(client).await else {
        return String::new();
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace());
    let Some(ip) = pods.get(&leader).await.ok().and_then(|p| p.status?.pod_ip) else {
        return String::new();
    };
    exec(
        world_bin,
        state,
        &["curl", "-s", &format!("http://{ip}:8080/metrics")],
    )
    .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    .unwrap_or_default()
}

/// Sum of a metric's samples whose labels contain `filter`, from a metrics text.
pub fn metric_sum(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a process has cost so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident memory, MB.
    pub peak_rss_mb: f64,
    /// Resident memory now, MB.
    pub rss_mb: f64,
}

/// The usage of a pod's main process (the node agent records its PID inside the world).
pub fn pod_usage(world_bin: &Path, state: &Path, ns: &str, pod: &str) -> Option<Usage> {
    let pid = pod_pid(state, ns, pod)?;
    let script = format!("cat /proc/{pid}/stat; grep -E '^Vm(HWM|RSS):' /proc/{pid}/status");
    let out = exec(world_bin, state, &["sh", "-c", &script]).ok()?;
    parse_usage(&String::from_utf8_lossy(&out.stdout))
}

/// Reads `/proc/PID/stat` (utime, stime in clock ticks of 100 Hz) and the VmHWM/VmRSS lines.
fn parse_usage(text: &str) -> Option<Usage> {
    let mut lines = text.lines();
    let stat = lines.next()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let cpu_seconds = (ticks(11)? + ticks(12)?) / 100.0;
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
    };
    Some(Usage {
        cpu_seconds,
        peak_rss_mb: kb("VmHWM:")? / 1024.0,
        rss_mb: kb("VmRSS:")? / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_proc_stat_and_status() {
        let text = "127 (spark-connect op) S 1 127 127 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 8 0 100 1 1\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\n";
        let usage = parse_usage(text).unwrap();
        assert!((usage.cpu_seconds - 3.0).abs() < 1e-9, "{usage:?}");
        assert!((usage.peak_rss_mb - 40.0).abs() < 1e-9);
        assert!((usage.rss_mb - 20.0).abs() < 1e-9);
    }

    #[test]
    fn metric_sums_filter_by_label() {
        let text = "x_total{verb=\"GET\"} 3\nx_total{verb=\"PATCH\"} 2\ny 9\n";
        assert_eq!(metric_sum(text, "x_total", ""), 5.0);
        assert_eq!(metric_sum(text, "x_total", "PATCH"), 2.0);
    }
}
