//! One backup run, the same for `etcdguard snapshot` and the daemon:
//! lock → resolve the local member → TLS → stream into a hidden temp file (hashing as it goes)
//! and, with `[remote_storage]`, into a multipart upload in the same pass → fsync → bbolt check
//! and status → publish under the final name → complete and verify the upload (or abort it)
//! → sidecar → record → local retention → remote maintenance (`remote_sync`).
//!
//! Every attempt that gets past the lock leaves exactly one record, successful or failed, and
//! never a partial file or object: the temp file is removed on every failure path, including
//! cancellation (the future is dropped) and, for a process that died, at the next run; an
//! upload is completed only after the snapshot verified and is aborted otherwise. A remote
//! that is down never fails the backup: the record says `pending` and the upload is retried.

mod attempt;
mod reconcile;
mod stream;

use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::preflight::{self, RemoteCheck};
use crate::records::{
    MovedAside, Outcome, Pin, Record, RecordStore, RecordsError, RemoteCopy, RemoteState, Trigger,
};
use crate::remote_sync;
use crate::retention::{self, Rule};
use crate::state::{LockError, StateDir};
use crate::store::local::LocalStore;

use crate::cluster;
use crate::config::DestinationConfig;
use crate::records::ClusterCopy;
use attempt::{attempt, ClusterOutcome, Failure};

/// How long a node waits before it looks again at a slot another node uploads.
pub(crate) fn cluster_wait(rc: &DestinationConfig) -> chrono::Duration {
    chrono::Duration::from_std(rc.cluster_lease).unwrap_or(chrono::Duration::seconds(15))
}

/// The bound on each request of the slot election.
pub(crate) fn cluster_timeout(config: &Config) -> std::time::Duration {
    config
        .etcd
        .dial_timeout
        .max(std::time::Duration::from_secs(5))
}

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
    pub remote: Option<remote_sync::Maintenance>,
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
        Ok(s) => {
            let mut record = Record::backup_succeeded(s.snapshot, trigger, duration);
            record.pin = pin;
            let me = record
                .member
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let (copy_cluster, done) = match s.cluster {
                None => (None, None),
                Some(ClusterOutcome::Uploaded { slot, held, client }) => (
                    Some(ClusterCopy {
                        slot,
                        uploader: Some(me.clone()),
                        fallback: None,
                    }),
                    Some((held, client)),
                ),
                Some(ClusterOutcome::Fallback { slot, why }) => (
                    Some(ClusterCopy {
                        slot,
                        uploader: Some(me.clone()),
                        fallback: Some(why),
                    }),
                    None,
                ),
                Some(ClusterOutcome::Covered { slot, value }) => {
                    let rc = config
                        .destinations
                        .first()
                        .expect("per cluster needs a destination");
                    let location = crate::store::remote::location(rc, &value.object);
                    let cluster = ClusterCopy {
                        slot,
                        uploader: Some(value.member.clone()),
                        fallback: None,
                    };
                    let now = crate::clock::now();
                    let mut copy = RemoteCopy::covered_pending(
                        &rc.name,
                        location.clone(),
                        now,
                        cluster,
                        cluster_wait(rc),
                    );
                    if value.is_done() {
                        copy.covered(now, location, value.member);
                    }
                    record.set_copy(copy);
                    (None, None)
                }
            };
            let now = crate::clock::now();
            let mut opened = Vec::new();
            for r in s.remotes {
                let copy = match r.result {
                    Ok(up) => {
                        RemoteCopy::uploaded(&r.destination, r.location, now, up.etag, up.sealed)
                            .with_lock(up.locked_until)
                    }
                    Err(e) => {
                        tracing::warn!(destination = %r.destination, error = %e, "remote copy not made now; it will be retried from the local file");
                        RemoteCopy::pending(&r.destination, r.location, now, e)
                    }
                }
                .with_cluster(copy_cluster.clone());
                if copy.may_exist() {
                    opened.extend(r.remote);
                }
                record.set_copy(copy);
            }
            // The recovery bundle goes with the primary destination's copy; then every
            // uploaded copy gets its sidecar, which carries the record, so each destination
            // alone tells what each object is.
            let primary = config.destinations.first().map(|d| d.name.as_str());
            if let Some(remote) = opened.iter().find(|r| Some(r.name()) == primary) {
                remote_sync::attach_bundle(config, remote, &mut record).await;
            }
            let sidecars = futures_util::future::join_all(
                opened
                    .iter()
                    .map(|remote| remote_sync::write_sidecar(remote, &record)),
            )
            .await;
            crate::crashpoint::here("backup:sidecar");
            for (remote, written) in opened.iter().zip(sidecars) {
                if let Err(e) = written {
                    if let Some(c) = record.copy_mut(remote.name()) {
                        c.retry_later(
                            crate::clock::now(),
                            format!("the sidecar could not be written: {e}"),
                        );
                    }
                }
            }
            // The cluster's copy of the slot is verified and has its sidecar: the slot is done.
            if let Some((held, mut client)) = done {
                let uploaded = record.remotes.iter().any(RemoteCopy::may_exist);
                if uploaded {
                    if let Err(e) =
                        cluster::mark_done(&mut client, held, cluster_timeout(config)).await
                    {
                        // Its lease expires; another node finds the object and marks it.
                        tracing::warn!("the slot's copy is uploaded but not marked done: {e}");
                    }
                }
            }
            record
        }
        Err(f) => Record::backup_failed(
            attempt_started,
            trigger,
            f.reason,
            f.member,
            f.etcd_version,
            duration,
        ),
    };

    let rule = config.local_storage.retention;
    let succeeded = record.result == Outcome::Success;
    let rec_for_file = record.clone();
    let now = crate::clock::now();
    crate::crashpoint::here("backup:before-record");
    let ((deleted, records_dropped), moved) = RecordStore::new(&config.state_dir)
        .update(now, |file| {
            file.push(rec_for_file);
            // Deleting only after a success: failing backups never shrink what exists.
            let deleted = if succeeded {
                apply_local_retention(&mut file.records, &store, now, rule, &mut warnings)
            } else {
                Vec::new()
            };
            // After the deletions, so a snapshot whose deletion failed keeps its record.
            let dropped = retention::trim_history(file, config.history);
            (deleted, dropped)
        })
        .map_err(|source| BackupError::NotRecorded {
            file: record.local.as_ref().map(|l| l.path.display().to_string()),
            source,
        })?;
    crate::crashpoint::here("backup:recorded");
    let mut report = BackupReport {
        record,
        warnings,
        deleted,
        records_dropped,
        records_moved: moved,
        remote: None,
    };
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
            m = remote_sync::maintain(config, member.as_deref(), false) => report.remote = Some(m),
            _ = &mut cancel => {}
        }
    }
    Ok(report)
}

/// Retries due pending uploads and applies remote retention, under the backup lock (so never
/// at the same time as a backup). `probe` first checks that the bucket exists and is writable
/// (the daemon's start-up pre-flight). Busy lock: nothing done.
pub async fn run_remote_maintenance(
    config: &Config,
    probe: bool,
) -> Result<remote_sync::Maintenance, BackupError> {
    let _lock = StateDir::new(&config.state_dir).lock_backup()?;
    let mut m = remote_sync::Maintenance::default();
    if probe {
        for (table, checked) in preflight::remote(config, true).await {
            match checked {
                Ok(RemoteCheck::Probed(found)) => {
                    tracing::info!("remote storage pre-flight: {found}")
                }
                Ok(RemoteCheck::Opened) => {}
                Err(e) => {
                    let e = format!("remote storage pre-flight failed ({table}): {e}");
                    tracing::error!("{e}");
                    m.errors.push(e);
                }
            }
        }
    }
    // At start-up (probe) every pending upload is tried, whatever its backoff.
    let more = remote_sync::maintain(config, None, probe).await;
    m.uploaded = more.uploaded;
    m.retry_failed = more.retry_failed;
    m.deleted = more.deleted;
    m.aborted_uploads = more.aborted_uploads;
    m.errors.extend(more.errors);
    Ok(m)
}

/// What `etcdguard prune` deleted, or with `dry_run` would delete: (where, why) per copy.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub local: Vec<(String, String)>,
    pub remote: Vec<(String, String)>,
    /// Copies the rule would delete but Object Lock keeps (dry run).
    pub locked: Vec<(String, String)>,
    /// Problems that stopped part of it (the rest was still done).
    pub errors: Vec<String>,
}

/// Applies retention now, locally and remotely, without taking a backup (`etcdguard prune`),
/// under the backup lock. With `dry_run`, only says what would go: no lock, nothing changed.
pub async fn run_prune(config: &Config, dry_run: bool) -> Result<PruneReport, BackupError> {
    let store = LocalStore::new(&config.local_storage.path);
    let rule = config.local_storage.retention;
    let mut report = PruneReport::default();
    let records = RecordStore::new(&config.state_dir);
    if dry_run {
        let file = records.load()?;
        let now = crate::clock::now();
        for d in retention::local_deletions(&file.records, now, rule) {
            let path = file.records[d.index].local.as_ref().map(|l| l.path.clone());
            let ours = |p: &std::path::PathBuf| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| *p == store.path_of(n))
            };
            if let Some(path) = path.filter(ours) {
                report.local.push((path.display().to_string(), d.reason));
            }
        }
        let member = remote_sync::newest_member(&file.records);
        for (rc, member) in config
            .destinations
            .iter()
            .flat_map(|rc| member.iter().map(move |m| (rc, m)))
        {
            for who in remote_sync::retention_prefixes(rc, member) {
                match remote_sync::retention_plan(config, rc, &who).await {
                    Ok(plan) => {
                        for p in plan {
                            match p.locked_until {
                                None => report.remote.push((p.location, p.reason)),
                                Some(t) => report.locked.push((
                                    p.location,
                                    format!(
                                        "{}, but it is under Object Lock until {}: kept until then",
                                        p.reason,
                                        crate::records::rfc3339(t)
                                    ),
                                )),
                            }
                        }
                    }
                    Err(e) => report
                        .errors
                        .push(format!("remote retention of {}: {e}", rc.name)),
                }
            }
        }
        return Ok(report);
    }
    let _lock = StateDir::new(&config.state_dir).lock_backup()?;
    let now = crate::clock::now();
    let mut warnings = Vec::new();
    let local = records
        .update(now, |file| {
            let deleted =
                apply_local_retention(&mut file.records, &store, now, rule, &mut warnings);
            // The reasons from the records, before the history drops any of them.
            let why = |name: &String| {
                file.records
                    .iter()
                    .filter_map(|r| r.local.as_ref())
                    .find(|l| l.path == store.path_of(name))
                    .and_then(|l| l.deleted_reason.clone())
                    .unwrap_or_default()
            };
            let local: Vec<(String, String)> = deleted
                .iter()
                .map(|n| (store.path_of(n).display().to_string(), why(n)))
                .collect();
            retention::trim_history(file, config.history);
            local
        })?
        .0;
    report.local = local;
    report.errors.extend(warnings);
    let (remote, errors) = remote_sync::prune(config).await;
    report.remote = remote;
    report.errors.extend(errors);
    Ok(report)
}

/// Deletes what the retention policy selects and marks those records. Runs under the records
/// lock; only files with our name pattern that a record points at are touched.
fn apply_local_retention(
    records: &mut [Record],
    store: &LocalStore,
    now: DateTime<Utc>,
    rule: Rule,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut deleted = Vec::new();
    for d in retention::local_deletions(records, now, rule) {
        let rec = &mut records[d.index];
        // The local file's own name (a sealed copy's ends with `.zst.age`).
        let Some(local) = rec.local.as_mut() else {
            continue;
        };
        let Some(name) = local
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if local.path != store.path_of(&name) {
            // Recorded in another directory (local_storage.path changed): not ours to touch.
            continue;
        }
        let deleted_file = store.delete(&name);
        crate::crashpoint::here("retention:file-deleted");
        match deleted_file {
            Ok(existed) => {
                let reason = if existed {
                    d.reason
                } else {
                    format!("{} (the file was already gone)", d.reason)
                };
                tracing::info!(file = %name, reason = %reason, "retention deleted local snapshot");
                local.deleted(now, reason);
                for r in rec
                    .remotes
                    .iter_mut()
                    .filter(|r| r.state == RemoteState::Pending)
                {
                    r.give_up("the local copy was deleted by retention before an upload succeeded");
                }
                deleted.push(name);
            }
            Err(e) => warnings.push(format!(
                "retention could not delete {}: {e}",
                store.path_of(&name).display()
            )),
        }
    }
    deleted
}
