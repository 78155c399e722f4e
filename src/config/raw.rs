//! The configuration file exactly as written: every field optional, unknown keys rejected,
//! positions kept (`Spanned`) for the messages.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) paused: Option<bool>,
    pub(super) catch_up: Option<bool>,
    pub(super) state_dir: Option<Spanned<PathBuf>>,
    pub(super) metrics_file: Option<Spanned<PathBuf>>,
    pub(super) etcd: Option<RawEtcd>,
    pub(super) local_storage: Option<RawLocal>,
    pub(super) remote_storage: Option<Spanned<RawRemote>>,
    /// `[[destination]]` tables.
    pub(super) destination: Option<Vec<Spanned<RawRemote>>>,
    pub(super) records: Option<RawRecords>,
    pub(super) encryption: Option<Spanned<RawEncryption>>,
    pub(super) bundle: Option<Spanned<RawBundle>>,
    pub(super) drill: Option<Spanned<RawDrill>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrill {
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) scratch_dir: Option<Spanned<PathBuf>>,
    pub(super) identity: Option<Spanned<PathBuf>>,
    pub(super) etcd_binary: Option<Spanned<PathBuf>>,
    pub(super) apiserver_binary: Option<Spanned<PathBuf>>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBundle {
    pub(super) root: Option<Spanned<PathBuf>>,
    pub(super) extra_paths: Option<Vec<Spanned<PathBuf>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    pub(super) recipients: Option<Vec<Spanned<String>>>,
    pub(super) recipients_file: Option<Spanned<PathBuf>>,
    pub(super) compression: Option<Spanned<String>>,
    pub(super) compression_level: Option<Spanned<i64>>,
    pub(super) encrypt_local: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecords {
    pub(super) successful_history_limit: Option<Spanned<i64>>,
    pub(super) failed_history_limit: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub(super) manifest: Option<Spanned<PathBuf>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) ca_cert: Option<Spanned<PathBuf>>,
    pub(super) client_cert: Option<Spanned<PathBuf>>,
    pub(super) client_key: Option<Spanned<PathBuf>>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
    pub(super) stall_timeout: Option<Spanned<RawDuration>>,
    pub(super) dial_timeout: Option<Spanned<RawDuration>>,
    pub(super) rate_limit: Option<Spanned<String>>,
    pub(super) pacing: Option<Spanned<String>>,
    pub(super) metrics_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocal {
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) ttl: Option<Spanned<RawDuration>>,
    pub(super) keep: Option<Spanned<i64>>,
    pub(super) keep_last: Option<Spanned<i64>>,
    pub(super) keep_hourly: Option<Spanned<i64>>,
    pub(super) keep_daily: Option<Spanned<i64>>,
    pub(super) keep_weekly: Option<Spanned<i64>>,
    pub(super) keep_monthly: Option<Spanned<i64>>,
    pub(super) min_keep: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub(super) name: Option<Spanned<String>>,
    #[serde(rename = "type", alias = "kind")]
    pub(super) kind: Option<Spanned<String>>,
    pub(super) bucket: Option<Spanned<String>>,
    /// Azure: the container (`bucket` is accepted too).
    pub(super) container: Option<Spanned<String>>,
    /// Azure: the storage account.
    pub(super) account_name: Option<Spanned<String>>,
    /// `fs`: the mounted directory.
    pub(super) path: Option<Spanned<PathBuf>>,
    /// `fs`: refuse a path that is not a mount point (default true).
    pub(super) require_mount: Option<bool>,
    /// GCS: no credentials (an emulator).
    pub(super) anonymous: Option<bool>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) force_path_style: Option<bool>,
    pub(super) ca_bundle: Option<Spanned<PathBuf>>,
    pub(super) insecure_skip_tls_verify: Option<bool>,
    pub(super) sse: Option<Spanned<String>>,
    pub(super) sse_kms_key_id: Option<Spanned<String>>,
    /// S3 Object Lock: `GOVERNANCE` or `COMPLIANCE`, and for how long.
    pub(super) object_lock_mode: Option<Spanned<String>>,
    pub(super) object_lock_period: Option<Spanned<RawDuration>>,
    pub(super) credentials_file: Option<Spanned<PathBuf>>,
    /// The systemd credential's name (`etcdguard-s3` for `[remote_storage]`, else
    /// `etcdguard-<name>`).
    pub(super) systemd_credential: Option<Spanned<String>>,
    pub(super) part_size: Option<Spanned<RawSize>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
    pub(super) stall_timeout: Option<Spanned<RawDuration>>,
    pub(super) rate_limit: Option<Spanned<String>>,
    pub(super) ttl: Option<Spanned<RawDuration>>,
    pub(super) keep: Option<Spanned<i64>>,
    pub(super) keep_last: Option<Spanned<i64>>,
    pub(super) keep_hourly: Option<Spanned<i64>>,
    pub(super) keep_daily: Option<Spanned<i64>>,
    pub(super) keep_weekly: Option<Spanned<i64>>,
    pub(super) keep_monthly: Option<Spanned<i64>>,
    pub(super) min_keep: Option<Spanned<i64>>,
    pub(super) per: Option<Spanned<String>>,
    pub(super) cluster_lease: Option<Spanned<RawDuration>>,
}

/// The count rules of one destination's retention, as written.
pub(super) struct RawCounts {
    pub(super) keep: Option<Spanned<i64>>,
    pub(super) keep_last: Option<Spanned<i64>>,
    pub(super) hourly: Option<Spanned<i64>>,
    pub(super) daily: Option<Spanned<i64>>,
    pub(super) weekly: Option<Spanned<i64>>,
    pub(super) monthly: Option<Spanned<i64>>,
}

macro_rules! raw_counts {
    ($r:expr) => {
        RawCounts {
            keep: $r.keep,
            keep_last: $r.keep_last,
            hourly: $r.keep_hourly,
            daily: $r.keep_daily,
            weekly: $r.keep_weekly,
            monthly: $r.keep_monthly,
        }
    };
}
pub(super) use raw_counts;

/// A byte size: an integer, or a string such as "8MiB", "16MB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

pub(super) fn parse_size(raw: &RawSize) -> Result<usize, String> {
    let (num, unit) = match raw {
        RawSize::Bytes(b) => (*b as f64, 1u64),
        RawSize::Text(t) => {
            let t = t.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (n, u) = t.split_at(split);
            let unit = match u.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" => 1000,
                "kib" => 1 << 10,
                "m" | "mb" => 1000 * 1000,
                "mib" => 1 << 20,
                "g" | "gb" => 1000 * 1000 * 1000,
                "gib" => 1 << 30,
                other => {
                    return Err(format!(
                    "{t:?} has an unknown unit {other:?}; use bytes or a string such as \"8MiB\""
                ))
                }
            };
            let n: f64 = n
                .parse()
                .map_err(|_| format!("{t:?} is not a size such as \"8MiB\""))?;
            (n, unit)
        }
    };
    let bytes = num * unit as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err("must be a positive size".into());
    }
    Ok(bytes as usize)
}

/// A duration as `EtcdBackupConfiguration` accepts it: integer seconds or a humantime string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(i64),
    Text(String),
}
