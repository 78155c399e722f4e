//! The node's CPU pressure: the kernel's pressure stall information (PSI), the time during
//! which at least one runnable task waited for a CPU ("some"). Read from `/proc/pressure/cpu`,
//! or from the cgroup v2 root's `cpu.pressure` where `/proc` shows only processes (the unit's
//! `ProcSubset=pid`); absent without PSI (a kernel booted with `psi=0`).
//!
//! Its 10-second average when a backup starts says whether the node was idle before it: only
//! then may the pace climb past its cruising pace. During the stream the pressure is only
//! reported: the stream's own threads and etcd's sending them the snapshot wait for the cores
//! too, so on a small node it rises by about as much on an idle node as on a busy one
//! (`bench/README.md`).

use std::path::PathBuf;

/// Tests stand a file of their own in for the kernel's (its content in the same format).
pub const TEST_FILE_ENV: &str = "ETCDGUARD_TEST_CPU_PRESSURE_FILE";

const SOURCES: [&str; 2] = ["/proc/pressure/cpu", "/sys/fs/cgroup/cpu.pressure"];

/// One reading of the `some` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The share of the last 10 seconds in which some task waited for a CPU (0 to 1).
    pub avg10: f64,
    /// Microseconds during which some task waited, since boot.
    pub total_micros: u64,
}

/// The node's CPU pressure now; `None` without PSI.
pub fn read() -> Option<Reading> {
    let test = std::env::var_os(TEST_FILE_ENV).map(PathBuf::from);
    let paths: Vec<PathBuf> = match test {
        Some(p) => vec![p],
        None => SOURCES.iter().map(PathBuf::from).collect(),
    };
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| parse(&text))
}

/// The `some` line: `some avg10=0.12 avg60=0.05 avg300=0.01 total=1234567` (averages in
/// percent).
fn parse(text: &str) -> Option<Reading> {
    let line = text.lines().find_map(|l| l.strip_prefix("some "))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    let avg10: f64 = field("avg10")?.parse().ok()?;
    Some(Reading {
        avg10: (avg10 / 100.0).clamp(0.0, 1.0),
        total_micros: field("total")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_some_line() {
        let text = "some avg10=69.47 avg60=80.24 avg300=47.13 total=204201089\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let r = parse(text).unwrap();
        assert!((r.avg10 - 0.6947).abs() < 1e-9);
        assert_eq!(r.total_micros, 204_201_089);
        assert_eq!(parse("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse("some avg10=1.00 total=x\n"), None);
        assert_eq!(parse("some total=5\n"), None, "no average");
        assert_eq!(parse(""), None);
    }
}
