//! Prometheus text exposition for node_exporter's textfile collector.
//!
//! [`render`] is pure (records file + daemon facts → text); [`refresh`] writes it through the
//! one atomic-write helper, so a process that dies never leaves a half-written file (the temp
//! name does not end in `.prom`, so the collector never reads it). Counters come from the
//! records file's `stats`, which history pruning never decreases.

use std::fmt::Write;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::fsutil;
use crate::records::{Outcome, RecordStore, RecordsFile};

/// node_exporter usually runs as its own user: the metrics file is world-readable. It holds no
/// secrets (times, sizes, counts).
const METRICS_MODE: u32 = 0o644;

fn secs(t: DateTime<Utc>) -> String {
    format!("{:.3}", t.timestamp_millis() as f64 / 1000.0)
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Renders every metric. `next_run` is the next scheduled slot (daemon), `paused` the config.
pub fn render(file: &RecordsFile, paused: bool, next_run: Option<DateTime<Utc>>) -> String {
    let mut out = String::new();
    backups(&mut out, file);
    health(&mut out, file);
    counters(&mut out, file, paused, next_run);
    out
}

/// etcd's health as the newest successful backup saw it.
fn health(out: &mut String, file: &RecordsFile) {
    let Some(h) = file
        .records
        .iter()
        .rev()
        .filter(|r| r.result == Outcome::Success)
        .find_map(|r| r.health.as_ref())
    else {
        return;
    };
    let active = |kind: &str| u8::from(h.alarms.iter().any(|a| a.starts_with(kind))).to_string();
    gauge(
        out,
        "etcdguard_etcd_alarm_active",
        "1 when the etcd alarm was active at the last successful backup.",
        &[
            ("{alarm=\"NOSPACE\"}", active("NOSPACE")),
            ("{alarm=\"CORRUPT\"}", active("CORRUPT")),
        ],
    );
    gauge(
        out,
        "etcdguard_etcd_db_size_bytes",
        "etcd's database file size at the last successful backup.",
        &[("", h.db_size_bytes.to_string())],
    );
    gauge(
        out,
        "etcdguard_etcd_db_quota_bytes",
        "etcd's backend quota (reported by etcd 3.6+, else the manifest's, else the default).",
        &[("", h.quota_bytes.to_string())],
    );
    gauge(
        out,
        "etcdguard_etcd_health_warnings",
        "Health warnings at the last successful backup (alarms, quota, learner, apply lag).",
        &[("", h.warnings.len().to_string())],
    );
}

/// The last attempt, the last success per destination, and what is kept.
fn backups(out: &mut String, file: &RecordsFile) {
    let local = "{destination=\"local\"}";
    let attempts = || {
        file.records
            .iter()
            .rev()
            .filter(|r| r.result != Outcome::Skipped && r.trigger.is_backup())
    };
    if let Some(last) = attempts().next() {
        let ok = last.result == Outcome::Success;
        gauge(
            out,
            "etcdguard_last_attempt_timestamp_seconds",
            "Time of the last backup attempt (success or failure).",
            &[(local, secs(last.backup_timestamp))],
        );
        gauge(
            out,
            "etcdguard_last_result",
            "1 if the last backup attempt succeeded, 0 if it failed.",
            &[(local, u8::from(ok).to_string())],
        );
        gauge(
            out,
            "etcdguard_last_duration_seconds",
            "Duration of the last backup attempt.",
            &[(local, format!("{:.3}", last.duration_seconds))],
        );
    }
    let remote = "{destination=\"remote\"}";
    let with_remote = || file.records.iter().rev().filter_map(|r| r.remote.as_ref());
    let mut successes = Vec::new();
    if let Some(good) = attempts().find(|r| r.result == Outcome::Success) {
        successes.push((local, secs(good.backup_timestamp)));
    }
    if let Some(t) = with_remote().filter_map(|c| c.uploaded_at).max() {
        successes.push((remote, secs(t)));
    }
    if !successes.is_empty() {
        gauge(
            out,
            "etcdguard_last_success_timestamp_seconds",
            "Time of the last successful backup (local) or upload (remote).",
            &successes,
        );
    }
    if let Some(good) = attempts().find(|r| r.result == Outcome::Success) {
        gauge(
            out,
            "etcdguard_last_size_bytes",
            "Size of the last successful snapshot file.",
            &[(local, good.size_bytes.unwrap_or(0).to_string())],
        );
        gauge(
            out,
            "etcdguard_last_revision",
            "etcd revision of the last successful snapshot.",
            &[(local, good.revision.unwrap_or(0).to_string())],
        );
    }
    if let Some(last) = with_remote().next() {
        use crate::records::RemoteState;
        let ok = matches!(last.state, RemoteState::Uploaded | RemoteState::Deleted);
        gauge(
            out,
            "etcdguard_remote_last_result",
            "1 if the newest backup's remote copy was made, 0 if it is pending or failed.",
            &[("", u8::from(ok).to_string())],
        );
        gauge(
            out,
            "etcdguard_remote_pending",
            "Remote copies waiting for a retry.",
            &[(
                "",
                with_remote()
                    .filter(|c| c.state == RemoteState::Pending)
                    .count()
                    .to_string(),
            )],
        );
    }
    let mut snapshots = vec![(
        local,
        file.records
            .iter()
            .filter(|r| r.is_good_local())
            .count()
            .to_string(),
    )];
    if with_remote().next().is_some() {
        snapshots.push((
            remote,
            with_remote().filter(|c| c.may_exist()).count().to_string(),
        ));
    }
    gauge(
        out,
        "etcdguard_snapshots",
        "Snapshots present per destination.",
        &snapshots,
    );
}

/// The counters and the daemon's state.
fn counters(out: &mut String, file: &RecordsFile, paused: bool, next_run: Option<DateTime<Utc>>) {
    let s = &file.stats;
    let _ = writeln!(
        out,
        "# HELP etcdguard_backups_total Backup attempts by result.\n\
         # TYPE etcdguard_backups_total counter\n\
         etcdguard_backups_total{{result=\"success\"}} {}\n\
         etcdguard_backups_total{{result=\"failed\"}} {}\n\
         etcdguard_backups_total{{result=\"skipped\"}} {}",
        s.success, s.failed, s.skipped
    );
    let _ = writeln!(
        out,
        "# HELP etcdguard_skipped_slots_total Scheduled slots skipped because a backup was still running.\n\
         # TYPE etcdguard_skipped_slots_total counter\n\
         etcdguard_skipped_slots_total {}",
        s.skipped
    );
    gauge(
        out,
        "etcdguard_paused",
        "1 if scheduled backups are paused.",
        &[("", u8::from(paused).to_string())],
    );
    if let Some(next) = next_run {
        gauge(
            out,
            "etcdguard_next_run_timestamp_seconds",
            "Time of the next scheduled backup.",
            &[("", secs(next))],
        );
    }
}

/// Rewrites the metrics file from the records, if `metrics_file` is configured.
pub fn refresh(config: &Config, next_run: Option<DateTime<Utc>>) -> Result<(), String> {
    let Some(path) = &config.metrics_file else {
        return Ok(());
    };
    let file = RecordStore::new(&config.state_dir)
        .load()
        .map_err(|e| e.to_string())?;
    write(path, &render(&file, config.paused, next_run))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fsutil::write_atomic(path, text.as_bytes(), METRICS_MODE)
        .map_err(|e| format!("cannot write metrics file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Record, Snapshot, Trigger};

    fn rec(result: Outcome, ts: &str) -> Record {
        let at = DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .with_timezone(&Utc);
        let t = Trigger::Schedule;
        match result {
            Outcome::Success => Record::backup_succeeded(Snapshot::example(ts, at), t, 1.5),
            Outcome::Failed => Record::backup_failed(at, t, "x".into(), None, None, 1.5),
            Outcome::Skipped => Record::skipped(at, t, "x".into()),
        }
    }

    #[test]
    fn renders_last_success_and_last_attempt_separately() {
        let mut f = RecordsFile::default();
        f.push(rec(Outcome::Success, "2026-05-01T10:00:00Z"));
        f.push(rec(Outcome::Failed, "2026-05-01T11:00:00Z"));
        f.push(rec(Outcome::Skipped, "2026-05-01T11:30:00Z"));
        let next = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = render(&f, false, Some(next));
        for line in [
            "etcdguard_last_attempt_timestamp_seconds{destination=\"local\"} 1777633200.000",
            "etcdguard_last_result{destination=\"local\"} 0",
            "etcdguard_last_success_timestamp_seconds{destination=\"local\"} 1777629600.000",
            "etcdguard_last_size_bytes{destination=\"local\"} 1000",
            "etcdguard_last_revision{destination=\"local\"} 42",
            "etcdguard_snapshots{destination=\"local\"} 1",
            "etcdguard_backups_total{result=\"success\"} 1",
            "etcdguard_backups_total{result=\"failed\"} 1",
            "etcdguard_backups_total{result=\"skipped\"} 1",
            "etcdguard_skipped_slots_total 1",
            "etcdguard_paused 0",
            "etcdguard_next_run_timestamp_seconds 1777636800.000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every family is declared once, every sample line belongs to a declared family.
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert_eq!(text.matches(&format!("{l}\n")).count(), 1, "{l} twice");
        }
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{l}");
        }
    }

    #[test]
    fn health_of_the_newest_success() {
        let mut f = RecordsFile::default();
        let mut sick = rec(Outcome::Success, "2026-05-01T10:00:00Z");
        sick.health = Some(crate::records::Health::assess(
            &[(0x8e9e, "NOSPACE".into())],
            None,
            16 << 20,
            16 << 20,
            16 << 20,
            None,
            false,
            1,
            1,
        ));
        f.push(sick);
        f.push(rec(Outcome::Failed, "2026-05-01T11:00:00Z"));
        let text = render(&f, false, None);
        for line in [
            "etcdguard_etcd_alarm_active{alarm=\"NOSPACE\"} 1",
            "etcdguard_etcd_alarm_active{alarm=\"CORRUPT\"} 0",
            "etcdguard_etcd_db_size_bytes 16777216",
            "etcdguard_etcd_db_quota_bytes 16777216",
            "etcdguard_etcd_health_warnings 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No health known: no health metrics.
        let text = render(&RecordsFile::default(), false, None);
        assert!(!text.contains("etcdguard_etcd_"), "{text}");
    }

    #[test]
    fn remote_destination_metrics() {
        use crate::records::{RemoteCopy, RemoteState};
        let mut f = RecordsFile::default();
        let copy = |state, at: Option<&str>| RemoteCopy {
            state,
            uploaded_at: at.map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
            ..RemoteCopy::uploaded("s3://b/k".into(), Utc::now(), None, None)
        };
        let mut a = rec(Outcome::Success, "2026-05-01T10:00:00Z");
        a.remote = Some(copy(RemoteState::Uploaded, Some("2026-05-01T10:00:05Z")));
        let mut b = rec(Outcome::Success, "2026-05-01T11:00:00Z");
        b.remote = Some(copy(RemoteState::Pending, None));
        f.push(a);
        f.push(b);
        let text = render(&f, false, None);
        for line in [
            "etcdguard_last_success_timestamp_seconds{destination=\"local\"} 1777633200.000",
            "etcdguard_last_success_timestamp_seconds{destination=\"remote\"} 1777629605.000",
            "etcdguard_remote_last_result 0",
            "etcdguard_remote_pending 1",
            "etcdguard_snapshots{destination=\"remote\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE etcdguard_last_success_timestamp_seconds")
                .count(),
            1
        );
    }

    #[test]
    fn empty_history_has_counters_but_no_last_times() {
        let text = render(&RecordsFile::default(), true, None);
        assert!(!text.contains("last_attempt"));
        assert!(text.contains("etcdguard_backups_total{result=\"success\"} 0"));
        assert!(text.contains("etcdguard_paused 1"));
    }
}
