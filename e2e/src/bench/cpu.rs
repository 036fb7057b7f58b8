//! Where the machine's CPU goes during a measured window: CPU seconds by process name, read
//! from `/proc` on the host (the world's processes are in namespaces the host can see into).

use std::collections::BTreeMap;

/// CPU seconds (user + system) used so far by every process, summed by command name.
pub fn by_process() -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((command, seconds)) = parse_stat(&stat)
        {
            *totals.entry(kind_of(&command)).or_default() += seconds;
        }
    }
    totals
}

/// The name a process is counted under: kernel workers rename themselves after the work they
/// do at the moment, so they count together under their first part (`kworker/u8:3-events` is
/// `kworker`).
fn kind_of(command: &str) -> String {
    command.split('/').next().unwrap_or(command).to_string()
}

/// What `later` adds to `earlier`, the processes that used at least 10 ms, most first.
pub fn spent(earlier: &BTreeMap<String, f64>, later: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut spent: Vec<(String, f64)> = later
        .iter()
        .map(|(k, v)| (k.clone(), v - earlier.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 0.01)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    spent
}

/// The command name and user + system CPU seconds (clock ticks of 100 Hz) of a `stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let command = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((command, (ticks(11)? + ticks(12)?) / 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_command_and_cpu_seconds() {
        let stat =
            "127 (kube-api server) S 1 127 127 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 8 0 100 1 1";
        assert_eq!(parse_stat(stat), Some(("kube-api server".to_string(), 3.0)));
    }

    #[test]
    fn kernel_workers_count_together_whatever_they_are_doing() {
        assert_eq!(kind_of("kworker/u8:3-events_unbound"), "kworker");
        assert_eq!(kind_of("kube-apiserver"), "kube-apiserver");
    }

    #[test]
    fn spending_leaves_out_the_idle_and_puts_the_busiest_first() {
        let earlier = BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 2.0)]);
        let later = BTreeMap::from([
            ("a".to_string(), 1.001),
            ("b".to_string(), 2.5),
            ("c".to_string(), 0.7),
        ]);
        assert_eq!(
            spent(&earlier, &later),
            vec![("c".to_string(), 0.7), ("b".to_string(), 0.5)]
        );
    }
}
