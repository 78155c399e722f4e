//! Prometheus text exposition for node_exporter's textfile collector.
//!
//! [`render`] is pure (records file + daemon facts → text); [`refresh`] writes it through the
//! one atomic-write helper, so a process that dies never leaves a half-written file (the temp
//! name does not end in `.prom`, so the collector never reads it). Counters come from the
//! records file's `stats`, which history pruning never decreases.
//!
//! Freshness is exported as timestamps and the policy they are held to
//! (`etcdguard_backup_max_age_seconds`, `etcdguard_drill_max_age_seconds`), so an alert rule
//! compares `time()` with them in Prometheus: it fires even when etcdguard itself stopped
//! writing this file (the shipped rules, `packaging/prometheus/`). The `*_within_policy`
//! gauges say the same at the time of writing.

use std::fmt::Write;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::fsutil;
use crate::records::{DrillOrigin, Outcome, Record, RecordStore, RecordsFile, Stats, Trigger};
use crate::retention::{self, Rule};

/// node_exporter usually runs as its own user: the metrics file is world-readable. It holds no
/// secrets (times, sizes, counts).
const METRICS_MODE: u32 = 0o644;

fn secs(t: DateTime<Utc>) -> String {
    format!("{:.3}", t.timestamp_millis() as f64 / 1000.0)
}

fn gauge<L: AsRef<str>>(out: &mut String, name: &str, help: &str, samples: &[(L, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let labels = labels.as_ref();
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// What the metrics say besides the records: the daemon's state and the policy copies are
/// held to.
#[derive(Debug, Clone)]
pub struct Context {
    pub paused: bool,
    /// The next scheduled backup (daemon).
    pub next_run: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    /// The oldest the newest good copy may be: one schedule interval and the time a backup
    /// (and its upload) may take; per destination by name, with its own upload bound.
    pub local_max_age: Option<std::time::Duration>,
    pub remote_max_age: Vec<(String, std::time::Duration)>,
    /// One drill interval and the drill's own bound; `None` without a drill schedule.
    pub drill_max_age: Option<std::time::Duration>,
    pub local_rule: Rule,
    /// Each destination's retention, by name.
    pub remote_rule: Vec<(String, Rule)>,
}

impl Context {
    /// The context of `config` at `now`. Pure.
    pub fn of(config: &Config, next_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Context {
        let interval = |s: &crate::schedule::Schedule| {
            let latest = s.latest_at_or_before(now, &config.timezone)?;
            let next = s.next_after(latest, &config.timezone)?;
            (next - latest).to_std().ok()
        };
        let local = interval(&config.schedule).map(|i| i + config.etcd.timeout);
        Context {
            paused: config.paused,
            next_run,
            now,
            local_max_age: local,
            remote_max_age: config
                .destinations
                .iter()
                .filter_map(|r| local.map(|l| (r.name.clone(), l + r.timeout)))
                .collect(),
            drill_max_age: config
                .drill
                .schedule
                .as_ref()
                .and_then(interval)
                .map(|i| i + config.drill.timeout + config.etcd.timeout),
            local_rule: config.local_storage.retention,
            remote_rule: config
                .destinations
                .iter()
                .map(|r| (r.name.clone(), r.retention))
                .collect(),
        }
    }
}

/// Renders every metric. Pure.
pub fn render(file: &RecordsFile, ctx: &Context) -> String {
    let mut out = String::new();
    backups(&mut out, file);
    freshness(&mut out, file, ctx);
    drills(&mut out, file, ctx);
    health(&mut out, file);
    counters(&mut out, file, ctx.paused, ctx.next_run);
    out
}

/// Whether the newest copy of each destination is within its policy, and what retention
/// keeps only because of `min_keep` (copies older than their ttl: backups have been failing
/// for longer than it).
fn freshness(out: &mut String, file: &RecordsFile, ctx: &Context) {
    let local = "{destination=\"local\"}".to_string();
    let newest_local = file
        .records
        .iter()
        .filter(|r| r.trigger.is_backup() && r.result == Outcome::Success)
        .map(|r| r.backup_timestamp)
        .max();
    let newest_remote = |dest: &str| {
        file.records
            .iter()
            .filter_map(|r| r.copy(dest))
            .filter_map(|c| c.uploaded_at)
            .max()
    };
    let secs_of = |d: std::time::Duration| d.as_secs().to_string();
    let within = |newest: Option<DateTime<Utc>>, max: std::time::Duration| {
        let ok = newest.is_some_and(|t| (ctx.now - t).to_std().unwrap_or_default() <= max);
        u8::from(ok).to_string()
    };
    let mut max_age = Vec::new();
    let mut within_policy = Vec::new();
    if let Some(m) = ctx.local_max_age {
        max_age.push((local.clone(), secs_of(m)));
        within_policy.push((local.clone(), within(newest_local, m)));
    }
    for (dest, m) in &ctx.remote_max_age {
        max_age.push((label(dest), secs_of(*m)));
        within_policy.push((label(dest), within(newest_remote(dest), *m)));
    }
    if !max_age.is_empty() {
        gauge(
            out,
            "etcdguard_backup_max_age_seconds",
            "The oldest the newest good copy may be: one schedule interval plus the backup's \
             (and upload's) time bound. Alert on time() - last_success > this.",
            &max_age,
        );
        gauge(
            out,
            "etcdguard_backup_within_policy",
            "1 when the newest good copy was within etcdguard_backup_max_age_seconds when \
             this file was written.",
            &within_policy,
        );
    }
    let local_times: Vec<DateTime<Utc>> = file
        .records
        .iter()
        .filter(|r| r.is_good_local() && r.pin.is_none())
        .map(|r| r.backup_timestamp)
        .collect();
    let mut held = vec![(
        local,
        retention::held_by_min_keep(&local_times, ctx.now, ctx.local_rule).to_string(),
    )];
    for (dest, rule) in &ctx.remote_rule {
        let remote_times: Vec<DateTime<Utc>> = file
            .records
            .iter()
            .filter(|r| r.copy(dest).is_some_and(|c| c.may_exist()) && r.pin.is_none())
            .map(|r| r.backup_timestamp)
            .collect();
        held.push((
            label(dest),
            retention::held_by_min_keep(&remote_times, ctx.now, *rule).to_string(),
        ));
    }
    gauge(
        out,
        "etcdguard_retention_held_by_min_keep",
        "Copies older than their ttl that retention keeps only because they are among the \
         newest min_keep: no newer good backup has replaced them.",
        &held,
    );
}

/// Restore drills: the counts, the last one, the last that passed, and the newest snapshot
/// per destination a drill proved restorable.
fn drills(out: &mut String, file: &RecordsFile, ctx: &Context) {
    drills_total(out, &file.stats);
    if let Some(m) = ctx.drill_max_age {
        gauge(
            out,
            "etcdguard_drill_max_age_seconds",
            "The oldest the last passed drill may be: one [drill] schedule interval plus its \
             time bounds.",
            &[("", m.as_secs().to_string())],
        );
    }
    let Some(last) = drill_records(file).next() else {
        return;
    };
    last_drill(out, last);
    if let Some(ok) = drill_records(file).find(|r| r.result == Outcome::Success) {
        gauge(
            out,
            "etcdguard_last_drill_success_timestamp_seconds",
            "Time of the last restore drill that passed.",
            &[("", secs(ok.backup_timestamp))],
        );
    }
    last_verified(out, file);
}

/// The drill records, newest first.
fn drill_records(file: &RecordsFile) -> impl Iterator<Item = &Record> {
    file.records
        .iter()
        .rev()
        .filter(|r| r.trigger == Trigger::Drill)
}

/// `etcdguard_drills_total`, from the records file's counters.
fn drills_total(out: &mut String, s: &Stats) {
    let _ = writeln!(
        out,
        "# HELP etcdguard_drills_total Restore drills by result.\n\
         # TYPE etcdguard_drills_total counter\n\
         etcdguard_drills_total{{result=\"success\"}} {}\n\
         etcdguard_drills_total{{result=\"failed\"}} {}",
        s.drill_success, s.drill_failed
    );
}

/// The last drill's time, result and duration.
fn last_drill(out: &mut String, last: &Record) {
    gauge(
        out,
        "etcdguard_last_drill_timestamp_seconds",
        "Time of the last restore drill (passed or failed).",
        &[("", secs(last.backup_timestamp))],
    );
    gauge(
        out,
        "etcdguard_last_drill_result",
        "1 if the last restore drill passed, 0 if it failed.",
        &[("", u8::from(last.result == Outcome::Success).to_string())],
    );
    gauge(
        out,
        "etcdguard_last_drill_duration_seconds",
        "Duration of the last restore drill.",
        &[("", format!("{:.3}", last.duration_seconds))],
    );
}

/// `etcdguard_last_verified_timestamp_seconds`: the backup time of the newest snapshot a
/// passed drill restored, per destination (local or remote); nothing when none did.
fn last_verified(out: &mut String, file: &RecordsFile) {
    let mut verified = Vec::new();
    for (origin, label) in [
        (DrillOrigin::Local, "{destination=\"local\"}"),
        (DrillOrigin::Remote, "{destination=\"remote\"}"),
    ] {
        let newest = drill_records(file)
            .filter(|r| r.result == Outcome::Success)
            .filter_map(|r| r.drill.as_ref())
            .filter(|d| d.source == origin)
            .filter_map(|d| d.snapshot_timestamp)
            .max();
        if let Some(t) = newest {
            verified.push((label, secs(t)));
        }
    }
    if !verified.is_empty() {
        gauge(
            out,
            "etcdguard_last_verified_timestamp_seconds",
            "Backup time of the newest copy a restore drill proved restorable, per destination.",
            &verified,
        );
    }
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

/// The label set of destination `name`.
fn label(name: &str) -> String {
    format!("{{destination=\"{name}\"}}")
}

/// The last backup attempt: when, how it ended, how long it took and what paced it.
fn last_attempt(out: &mut String, local: &str, last: &Record) {
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
    pacing(out, local, last);
}

/// How much pacing stretched the last backup, and whether it had to fall back.
fn pacing(out: &mut String, local: &str, last: &Record) {
    let Some(p) = &last.pacing else { return };
    gauge(
        out,
        "etcdguard_last_paced_seconds",
        "Seconds the last backup's stream waited for its pace (etcd's latency, the \
         fallback pace, rate_limit): how much pacing stretched it.",
        &[(local, format!("{:.3}", p.paced_seconds))],
    );
    gauge(
        out,
        "etcdguard_last_pacing_fallback",
        "1 if the last backup could not read etcd's metrics and took the fallback pace.",
        &[(
            local,
            u8::from(p.mode == crate::records::pacing::PacingMode::Fallback).to_string(),
        )],
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
        last_attempt(out, local, last);
    }
    // The destinations the records name, in their order (a destination removed from the
    // configuration drops out once its records are gone).
    let mut dests: Vec<&str> = Vec::new();
    for c in file.records.iter().flat_map(|r| &r.remotes) {
        if !dests.contains(&c.destination.as_str()) {
            dests.push(&c.destination);
        }
    }
    let copies = |dest: &str| {
        let dest = dest.to_string();
        file.records.iter().rev().filter_map(move |r| r.copy(&dest))
    };
    let mut successes = vec![];
    if let Some(good) = attempts().find(|r| r.result == Outcome::Success) {
        successes.push((local.to_string(), secs(good.backup_timestamp)));
    }
    for d in &dests {
        if let Some(t) = copies(d).filter_map(|c| c.uploaded_at).max() {
            successes.push((label(d), secs(t)));
        }
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
    if !dests.is_empty() {
        use crate::records::RemoteState;
        let (mut results, mut pending) = (Vec::new(), Vec::new());
        for d in &dests {
            if let Some(last) = copies(d).next() {
                let ok = matches!(last.state, RemoteState::Uploaded | RemoteState::Deleted);
                results.push((label(d), u8::from(ok).to_string()));
            }
            let n = copies(d)
                .filter(|c| c.state == RemoteState::Pending)
                .count();
            pending.push((label(d), n.to_string()));
        }
        gauge(
            out,
            "etcdguard_remote_last_result",
            "1 if the newest backup's copy at the destination was made, 0 if it is pending or \
             failed.",
            &results,
        );
        gauge(
            out,
            "etcdguard_remote_pending",
            "Copies waiting for a retry, per destination.",
            &pending,
        );
    }
    let mut snapshots = vec![(
        local.to_string(),
        file.records
            .iter()
            .filter(|r| r.is_good_local())
            .count()
            .to_string(),
    )];
    for d in &dests {
        snapshots.push((
            label(d),
            copies(d).filter(|c| c.may_exist()).count().to_string(),
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
    write(
        path,
        &render(&file, &Context::of(config, next_run, crate::clock::now())),
    )
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fsutil::write_atomic(path, text.as_bytes(), METRICS_MODE)
        .map_err(|e| format!("cannot write metrics file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Record, Snapshot, Trigger};

    fn ctx(paused: bool, next_run: Option<DateTime<Utc>>) -> Context {
        let config = crate::config::parse("", None).unwrap();
        Context {
            paused,
            ..Context::of(&config, next_run, Utc::now())
        }
    }

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
        let text = render(&f, &ctx(false, Some(next)));
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
        let text = render(&f, &ctx(false, None));
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
        let text = render(&RecordsFile::default(), &ctx(false, None));
        assert!(!text.contains("etcdguard_etcd_"), "{text}");
    }

    #[test]
    fn remote_destination_metrics() {
        use crate::records::{RemoteCopy, RemoteState};
        let mut f = RecordsFile::default();
        let copy = |state, at: Option<&str>| RemoteCopy {
            state,
            uploaded_at: at.map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
            ..RemoteCopy::uploaded("remote", "s3://b/k".into(), Utc::now(), None, None)
        };
        let mut a = rec(Outcome::Success, "2026-05-01T10:00:00Z");
        a.remotes = vec![copy(RemoteState::Uploaded, Some("2026-05-01T10:00:05Z"))];
        let mut b = rec(Outcome::Success, "2026-05-01T11:00:00Z");
        b.remotes = vec![copy(RemoteState::Pending, None)];
        f.push(a);
        f.push(b);
        let text = render(&f, &ctx(false, None));
        for line in [
            "etcdguard_last_success_timestamp_seconds{destination=\"local\"} 1777633200.000",
            "etcdguard_last_success_timestamp_seconds{destination=\"remote\"} 1777629605.000",
            "etcdguard_remote_last_result{destination=\"remote\"} 0",
            "etcdguard_remote_pending{destination=\"remote\"} 1",
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
        let text = render(&RecordsFile::default(), &ctx(true, None));
        assert!(!text.contains("last_attempt"));
        assert!(text.contains("etcdguard_backups_total{result=\"success\"} 0"));
        assert!(text.contains("etcdguard_paused 1"));
    }

    fn at(ts: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn drill_record(ts: &str, ok: bool, source: DrillOrigin, snapshot_at: &str) -> Record {
        use crate::records::{Drill, DrillCheck, Verdict};
        Record::drill(
            at(ts),
            None,
            None,
            Drill {
                snapshot_id: None,
                source,
                snapshot_timestamp: Some(at(snapshot_at)),
                target_version: Some("3.7".into()),
                checks: vec![DrillCheck {
                    name: "wal".into(),
                    result: if ok { Verdict::Passed } else { Verdict::Failed },
                    detail: "x".into(),
                }],
            },
            2.5,
        )
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    #[test]
    fn drills_are_counted_and_the_newest_proven_copy_is_named() {
        let mut f = RecordsFile::default();
        f.push(rec(Outcome::Success, "2026-05-01T10:00:00Z"));
        f.push(drill_record(
            "2026-05-01T10:30:00Z",
            true,
            DrillOrigin::Local,
            "2026-05-01T10:00:00Z",
        ));
        f.push(drill_record(
            "2026-05-01T11:30:00Z",
            false,
            DrillOrigin::Remote,
            "2026-05-01T11:00:00Z",
        ));
        let text = render(&f, &ctx(false, None));
        has(&text, "etcdguard_drills_total{result=\"success\"} 1");
        has(&text, "etcdguard_drills_total{result=\"failed\"} 1");
        has(&text, "etcdguard_last_drill_result 0");
        has(
            &text,
            "etcdguard_last_drill_timestamp_seconds 1777635000.000",
        );
        has(
            &text,
            "etcdguard_last_drill_success_timestamp_seconds 1777631400.000",
        );
        has(&text, "etcdguard_last_drill_duration_seconds 2.500");
        has(
            &text,
            "etcdguard_last_verified_timestamp_seconds{destination=\"local\"} 1777629600.000",
        );
        assert!(!text.contains("etcdguard_last_verified_timestamp_seconds{destination=\"remote\"}"));
        // A drill is not a backup: the backup counters and last attempt are the backup's.
        has(&text, "etcdguard_backups_total{result=\"success\"} 1");
        has(&text, "etcdguard_last_result{destination=\"local\"} 1");
        // No drill schedule: no drill policy.
        assert!(!text.contains("etcdguard_drill_max_age_seconds"));
    }

    #[test]
    fn freshness_is_held_to_the_schedule_interval_and_the_backup_bound() {
        let config = crate::config::parse(
            "schedule = \"0 */6 * * *\"\n[etcd]\ntimeout = \"10m\"\n[drill]\nschedule = \"@weekly\"\n\
             timeout = \"2m\"\n[local_storage]\nttl = \"1d\"\nmin_keep = 2\n",
            None,
        )
        .unwrap();
        let now = at("2026-05-03T13:00:00Z");
        let c = Context::of(&config, None, now);
        assert_eq!(c.local_max_age.unwrap().as_secs(), 6 * 3600 + 600);
        assert_eq!(c.drill_max_age.unwrap().as_secs(), 7 * 86400 + 120 + 600);
        assert!(c.remote_max_age.is_empty());
        let mut f = RecordsFile::default();
        // Two good backups, both older than the ttl: min_keep holds both.
        f.push(rec(Outcome::Success, "2026-05-01T06:00:00Z"));
        f.push(rec(Outcome::Success, "2026-05-01T12:00:00Z"));
        let text = render(&f, &c);
        has(
            &text,
            "etcdguard_backup_max_age_seconds{destination=\"local\"} 22200",
        );
        has(
            &text,
            "etcdguard_backup_within_policy{destination=\"local\"} 0",
        );
        has(
            &text,
            "etcdguard_retention_held_by_min_keep{destination=\"local\"} 2",
        );
        has(&text, "etcdguard_drill_max_age_seconds 605520");
        f.push(rec(Outcome::Success, "2026-05-03T12:00:00Z"));
        let text = render(&f, &c);
        has(
            &text,
            "etcdguard_backup_within_policy{destination=\"local\"} 1",
        );
        has(
            &text,
            "etcdguard_retention_held_by_min_keep{destination=\"local\"} 1",
        );
    }

    /// Every metric the shipped alert rules, their tests and the Grafana dashboard name is
    /// one that etcdguard writes.
    #[test]
    fn the_shipped_rules_and_dashboard_name_only_metrics_that_exist() {
        use crate::records::{Health, RemoteCopy};
        let config = crate::config::parse(
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\n[drill]\nschedule = \"@weekly\"\n",
            None,
        )
        .unwrap();
        let mut f = RecordsFile::default();
        let mut r = rec(Outcome::Success, "2026-05-01T10:00:00Z");
        r.remotes = vec![RemoteCopy::uploaded(
            "remote",
            "s3://b/k".into(),
            Utc::now(),
            None,
            None,
        )];
        r.health = Some(Health::assess(&[], None, 1, 1, 2, None, false, 1, 1));
        f.push(r);
        f.push(drill_record(
            "2026-05-01T10:30:00Z",
            true,
            DrillOrigin::Local,
            "2026-05-01T10:00:00Z",
        ));
        let text = render(&f, &Context::of(&config, Some(Utc::now()), Utc::now()));
        let families: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for (name, shipped) in [
            (
                "rules",
                include_str!("../packaging/prometheus/etcdguard.rules.yml"),
            ),
            (
                "rule tests",
                include_str!("../packaging/prometheus/etcdguard.rules.test.yml"),
            ),
            (
                "dashboard",
                include_str!("../packaging/grafana/etcdguard-dashboard.json"),
            ),
        ] {
            let mut used = 0;
            for word in shipped.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("etcdguard_") {
                    used += 1;
                    assert!(
                        families.contains(word),
                        "the {name} name {word}, which etcdguard does not write"
                    );
                }
            }
            assert!(used > 5, "{name}: {used}");
        }
    }
}
