//! A backup's pace, as its record says it: what set it (etcd's latency, the fallback, or
//! nothing), how long it made the stream wait, and what etcd's latency did meanwhile.

use serde::{Deserialize, Serialize};

/// What paced the snapshot stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PacingMode {
    /// etcd's WAL fsync and backend commit latency, read from its metrics while streaming.
    Adaptive,
    /// etcd's metrics could not be read (`reason` says why): the fixed conservative pace.
    Fallback,
    /// `pacing = "off"`: as fast as etcd sends (within `rate_limit`).
    Off,
}

/// etcd's p99 latencies over a window, in milliseconds, the CPU in use, and the node's CPU
/// pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdLatency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_fsync_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_commit_p99_ms: Option<f64>,
    /// CPU cores etcd and etcdguard used together (etcd's `process_cpu_seconds_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// The share of the window in which some task on the node waited for a CPU (PSI's
    /// "some"), in percent; before the backup, the kernel's average over the 10 seconds before
    /// it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pressure_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    pub mode: PacingMode,
    /// Where etcd's metrics were read (adaptive), or were to be read (fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// Why the fallback pace was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds the stream waited for its pace: how much pacing (and `rate_limit`) stretched
    /// the backup.
    pub paced_seconds: f64,
    /// Times etcd's latency halved the pace.
    #[serde(default)]
    pub slowdowns: u32,
    /// The slowest pace set, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowest_bytes_per_second: Option<u64>,
    /// The fastest pace set, bytes per second (past 32 MiB/s only on a node idle before the
    /// backup, or up to a `rate_limit` set higher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_bytes_per_second: Option<u64>,
    /// etcd's latency in the second before the stream, and the worst interval during it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<EtcdLatency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<EtcdLatency>,
}
