//! One backup run, the same for `etcdguard snapshot` and the daemon:
//! lock → resolve the local member → TLS → stream into a hidden temp file (hashing as it goes)
//! and, with `[remote_storage]`, into a multipart upload in the same pass → fsync → bbolt check
//! and status → publish under the final name → complete and verify the upload (or abort it)
//! → settle the copies (`copies::settle`: bundle, sidecars) → record → local retention →
//! remote maintenance (`copies::maintain`).
//!
//! Every attempt that gets past the lock leaves exactly one record, successful or failed, and
//! never a partial file or object: the temp file is removed on every failure path, including
//! cancellation (the future is dropped) and, for a process that died, at the next run; an
//! upload is completed only after the snapshot verified and is aborted otherwise. A remote
//! that is down never fails the backup: the record says `pending` and the upload is retried.

mod attempt;
mod reconcile;
mod stream;
mod writer;

use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::copies;
use crate::records::{
    MovedAside, Outcome, Pin, Record, RecordStore, RecordsError, RemoteCopy, RemoteState, Trigger,
};
use crate::retention;
use crate::state::{LockError, StateDir};
use crate::store::local::LocalStore;
use attempt::{attempt, Failure, Success};

/// Why a run could not even be attempted (nothing recorded).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Another backup holds the lock, or the state dir is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The attempt ran, but its record could not be written (the state dir is full or
    /// read-only). A snapshot it published stays, and the next backup adopts it.
    #[error("{}the record of this backup could not be written: {source}{}", .file.as_ref().map(|f| format!("{f} was taken, but ")).unwrap_or_default(), .file.as_ref().map(|_| "; the snapshot is kept, and the next backup adopts it").unwrap_or_default())]
    NotRecorded {
        file: Option<String>,
        source: RecordsError,
    },
}

/// What one attempt produced.
#[derive(Debug)]
pub struct BackupReport {
    pub record: Record,
    /// Non-fatal problems worth a human's attention (expiring certificate, loose permissions).
    pub warnings: Vec<String>,
    /// Local snapshots deleted by retention after this backup.
    pub deleted: Vec<String>,
    /// Records dropped from the history (beyond `[records]` limits, snapshot gone).
    pub records_dropped: usize,
    /// Set when the records file did not parse and was moved aside.
    pub records_moved: Option<MovedAside>,
    /// Remote retention and retries done after the backup.
    pub remote: Option<copies::Maintenance>,
}

/// The one structured log line per backup attempt (journald fields when logging there).
pub fn log_record(r: &Record) {
    let member = r.member.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    // `remote=name:state,…`, one per destination.
    let remote = if r.remotes.is_empty() {
        "none".to_string()
    } else {
        r.remotes
            .iter()
            .map(|c| format!("{}:{}", c.destination, c.state.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    };
    match r.result {
        Outcome::Success => tracing::info!(
            id = %r.id,
            result = "Success",
            trigger = r.trigger.as_str(),
            member,
            file = r.file_name.as_deref().unwrap_or(""),
            bytes = r.size_bytes.unwrap_or(0),
            revision = r.revision.unwrap_or(0),
            duration_seconds = r.duration_seconds,
            remote = remote.as_str(),
            "backup finished"
        ),
        Outcome::Failed | Outcome::Skipped => tracing::error!(
            id = %r.id,
            result = if r.result == Outcome::Failed { "Failed" } else { "Skipped" },
            trigger = r.trigger.as_str(),
            member,
            reason = r.reason.as_deref().unwrap_or(""),
            duration_seconds = r.duration_seconds,
            "backup {}",
            if r.result == Outcome::Failed { "failed" } else { "skipped" }
        ),
    }
}

/// Runs one backup; `slot` is the schedule's slot it serves (`None` by hand: with `per =
/// "cluster"` such a backup uploads this node's own copy). `cancel` resolving aborts it
/// cleanly (temp file removed, `Failed` record with reason `interrupted by <what cancel
/// returns>`).
pub async fn run_backup(
    config: &Config,
    trigger: Trigger,
    slot: Option<DateTime<Utc>>,
    pin: Option<Pin>,
    cancel: impl Future<Output = String>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let _lock = StateDir::new(&config.state_dir).lock_backup()?;
    let mut warnings = Vec::new();
    let store = LocalStore::new(&config.local_storage.path);
    for said in reconcile::reconcile(config, &store) {
        tracing::warn!("{said}");
        warnings.push(said);
    }
    let attempt_started = crate::clock::now();
    let mut cancel = std::pin::pin!(cancel);
    let mut cancelled = false;
    let outcome = tokio::select! {
        r = attempt(config, &store, slot, &mut warnings) => r,
        what = &mut cancel => {
            cancelled = true;
            Err(Failure::new(format!("interrupted by {what}")))
        }
    };
    let duration = started.elapsed().as_secs_f64();
    let record = match outcome {
        Ok(s) => record_success(config, s, trigger, duration, pin).await,
        Err(f) => Record::backup_failed(
            attempt_started,
            trigger,
            f.reason,
            f.member,
            f.etcd_version,
            duration,
        ),
    };
    let mut report = record_and_retain(config, &store, record, warnings)?;
    // Remote retention and due retries, still under the backup lock; an interrupt stops them.
    // Not after a failed upload: the remote is unwell, the daemon retries later.
    let uploaded = report
        .record
        .remotes
        .iter()
        .any(|c| c.state == RemoteState::Uploaded);
    if uploaded && !cancelled {
        let member = report.record.member.as_ref().map(|m| m.name.clone());
        tokio::select! {
            m = copies::maintain(config, member.as_deref(), false) => report.remote = Some(m),
            _ = &mut cancel => {}
        }
    }
    Ok(report)
}

/// The record of a successful attempt: the copy at each destination (uploaded, or pending
/// for a retry; with `per = "cluster"`, the slot's facts, or the copy another node covers),
/// then settled like any upload (bundle, sidecars, the slot marked done).
async fn record_success(
    config: &Config,
    s: Success,
    trigger: Trigger,
    duration: f64,
    pin: Option<Pin>,
) -> Record {
    let mut record = Record::backup_succeeded(s.snapshot, trigger, duration);
    record.pin = pin;
    let me = record
        .member
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let now = crate::clock::now();
    let (cluster, claim) = match (s.cluster, config.primary()) {
        (Some(decided), Some(rc)) => {
            let (cluster, covered) = copies::cluster::copies_for(&decided.decision, rc, &me, now);
            if let Some(c) = covered {
                record.set_copy(c);
            }
            (cluster, decided.claim)
        }
        _ => (None, None),
    };
    let mut uploaded = Vec::new();
    for r in s.remotes {
        let copy = match r.result {
            Ok(up) => RemoteCopy::uploaded(&r.destination, r.location, now, up.etag, up.sealed)
                .with_lock(up.locked_until),
            Err(e) => {
                tracing::warn!(destination = %r.destination, error = %e, "remote copy not made now; it will be retried from the local file");
                RemoteCopy::pending(&r.destination, r.location, now, e)
            }
        }
        .with_cluster(cluster.clone());
        if copy.may_exist() {
            uploaded.extend(r.remote);
        }
        record.set_copy(copy);
    }
    copies::settle::settle(config, &mut record, &uploaded, claim).await;
    crate::crashpoint::here("backup:sidecar");
    record
}

/// Writes the attempt's record and, after a success, applies local retention, in one locked
/// change of the records (failing backups never shrink what exists; a snapshot whose
/// deletion failed keeps its record).
fn record_and_retain(
    config: &Config,
    store: &LocalStore,
    record: Record,
    mut warnings: Vec<String>,
) -> Result<BackupReport, BackupError> {
    let rule = config.local_storage.retention;
    let succeeded = record.result == Outcome::Success;
    let rec_for_file = record.clone();
    let now = crate::clock::now();
    crate::crashpoint::here("backup:before-record");
    let ((deleted, records_dropped), moved) = RecordStore::new(&config.state_dir)
        .update(now, |file| {
            file.push(rec_for_file);
            let deleted = if succeeded {
                copies::local::apply_retention(&mut file.records, store, now, rule, &mut warnings)
            } else {
                Vec::new()
            };
            let dropped = retention::trim_history(file, config.history);
            (deleted, dropped)
        })
        .map_err(|source| BackupError::NotRecorded {
            file: record.local.as_ref().map(|l| l.path.display().to_string()),
            source,
        })?;
    crate::crashpoint::here("backup:recorded");
    Ok(BackupReport {
        record,
        warnings,
        deleted,
        records_dropped,
        records_moved: moved,
        remote: None,
    })
}
