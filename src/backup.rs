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

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::io::BufWriter;

use crate::config::Config;
use crate::etcd::{self, Phase, StreamLimits, TlsMaterial};
use crate::etcddb;
use crate::fsutil;
use crate::kubeadm::EtcdManifest;
use crate::records::{
    self, CopyState, LocalCopy, Member, MovedAside, Outcome, Record, RecordStore, RecordsError,
    RemoteCopy, RemoteState, Trigger,
};
use crate::remote_sync;
use crate::retention::{self, Rule};
use crate::store::local::{snapshot_file_name, LocalStore};
use crate::store::remote::{Remote, UploadFeed, Uploaded};

/// Buffer between the gRPC stream and the file: bounded, so memory is flat in the DB size.
const WRITE_BUFFER: usize = 1 << 20;

/// Why a run could not even be attempted (nothing recorded).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("another backup is running{} (lock {lock}); not starting a second one", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { holder: Option<u32>, lock: PathBuf },
    #[error("cannot use state directory {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
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
    let remote = match r.remote.as_ref().map(|c| c.state) {
        None => "none",
        Some(RemoteState::Uploaded) => "uploaded",
        Some(RemoteState::Pending) => "pending",
        Some(RemoteState::Failed) => "failed",
        Some(RemoteState::Deleted) => "deleted",
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
            remote,
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

/// Where and who the local member is, before talking to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: String,
    /// `--name` from the manifest, if it was read.
    pub manifest_name: Option<String>,
}

/// The endpoint to snapshot: `etcd.endpoint` when set, otherwise the loopback client URL of
/// the local member from the static pod manifest.
pub fn resolve_target(config: &Config) -> Result<Target, String> {
    let manifest = EtcdManifest::load(&config.etcd.manifest);
    match (&config.etcd.endpoint, manifest) {
        (Some(ep), m) => Ok(Target {
            endpoint: ep.clone(),
            manifest_name: m.ok().and_then(|m| m.member_name().map(str::to_string)),
        }),
        (None, Ok(m)) => Ok(Target {
            endpoint: m.local_client_url().map_err(|e| e.to_string())?,
            manifest_name: m.member_name().map(str::to_string),
        }),
        (None, Err(e)) => Err(format!(
            "cannot find the local etcd endpoint: {e}; set etcd.endpoint in the config, or \
             etcd.manifest to the etcd static pod manifest"
        )),
    }
}

struct Success {
    at: DateTime<Utc>,
    file_name: String,
    path: PathBuf,
    member: Member,
    etcd_version: String,
    storage_version: Option<String>,
    snapshot_version: Option<String>,
    revision: i64,
    size_bytes: u64,
    sha256: String,
    /// `None` without `[remote_storage]`.
    remote: Option<RemoteResult>,
}

/// How the same-pass upload went.
struct RemoteResult {
    /// `None` when the remote could not even be set up (credentials, TLS files).
    remote: Option<Remote>,
    location: String,
    result: Result<Uploaded, String>,
}

/// The bytes of one snapshot go to the local file and, when configured, to the upload.
/// Written bytes are handed to the kernel's writeback every 16 MiB on a blocking thread (one
/// call in flight at most), so the final fsync does not find the whole snapshot dirty.
struct Sinks<'a> {
    file: BufWriter<tokio::fs::File>,
    feed: Option<&'a mut UploadFeed>,
    /// The same open file, for `sync_file_range`.
    raw: std::sync::Arc<std::fs::File>,
    written: u64,
    writeback: fsutil::Writeback,
    pending: Option<tokio::task::JoinHandle<()>>,
}

impl Sinks<'_> {
    /// Bytes possibly still in our buffer and tokio's file buffer, not yet in the page cache.
    const BUFFERED: u64 = WRITE_BUFFER as u64 + (2 << 20);

    /// Waits for the writeback call in flight, if any.
    async fn writeback_done(&mut self) {
        if let Some(h) = self.pending.take() {
            let _ = h.await;
        }
    }
}

impl etcd::SnapshotSink for Sinks<'_> {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        if let Some((offset, len)) = self.writeback.due(self.written, Self::BUFFERED) {
            self.writeback_done().await;
            let raw = self.raw.clone();
            self.pending = Some(tokio::task::spawn_blocking(move || {
                fsutil::start_writeback(&*raw, offset, len)
            }));
        }
        if let Some(feed) = self.feed.as_deref_mut() {
            feed.send(bytes).await;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await
    }
}

struct Failure {
    reason: String,
    member: Option<Member>,
    etcd_version: Option<String>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            member: None,
            etcd_version: None,
        }
    }
}

/// Runs one backup. `cancel` resolving aborts it cleanly (temp file removed, `Failed` record
/// with reason `interrupted by <what cancel returns>`).
pub async fn run_backup(
    config: &Config,
    trigger: Trigger,
    cancel: impl Future<Output = String>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let state_err = |source| BackupError::StateDir {
        dir: config.state_dir.clone(),
        source,
    };
    fsutil::create_private_dir_all(&config.state_dir).map_err(state_err)?;
    let lock_path = config.state_dir.join("backup.lock");
    let _lock = fsutil::try_lock(&lock_path)
        .map_err(state_err)?
        .map_err(|held| BackupError::Busy {
            holder: held.holder_pid,
            lock: lock_path.clone(),
        })?;

    let mut warnings = Vec::new();
    let store = LocalStore::new(&config.local_storage.path);
    let attempt_started = Utc::now();
    let mut cancel = std::pin::pin!(cancel);
    let mut cancelled = false;
    let outcome = tokio::select! {
        r = attempt(config, &store, &mut warnings) => r,
        what = &mut cancel => {
            cancelled = true;
            Err(Failure::new(format!("interrupted by {what}")))
        }
    };
    let duration = started.elapsed().as_secs_f64();
    let mut sidecar_remote = None;

    let mut record = match outcome {
        Ok(s) => Record {
            id: records::new_record_id(s.at),
            backup_timestamp: s.at,
            file_name: Some(s.file_name),
            result: Outcome::Success,
            reason: None,
            trigger,
            member: Some(s.member),
            etcd_version: Some(s.etcd_version),
            storage_version: s.storage_version,
            snapshot_version: s.snapshot_version,
            revision: Some(s.revision),
            size_bytes: Some(s.size_bytes),
            sha256: Some(s.sha256),
            duration_seconds: duration,
            local: Some(LocalCopy {
                path: s.path,
                state: CopyState::Present,
                deleted_at: None,
                deleted_reason: None,
            }),
            remote: s.remote.map(|r| {
                let now = Utc::now();
                let copy = match r.result {
                    Ok(up) => {
                        sidecar_remote = r.remote;
                        RemoteCopy {
                            location: r.location,
                            state: RemoteState::Uploaded,
                            attempts: 1,
                            last_error: None,
                            last_attempt_at: Some(now),
                            next_attempt_at: None,
                            uploaded_at: Some(now),
                            etag: up.etag,
                            deleted_at: None,
                            deleted_reason: None,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "remote copy not made now; it will be retried from the local file");
                        RemoteCopy {
                            location: r.location,
                            state: RemoteState::Pending,
                            attempts: 1,
                            last_error: Some(e),
                            last_attempt_at: Some(now),
                            next_attempt_at: Some(now + remote_sync::backoff(1)),
                            uploaded_at: None,
                            etag: None,
                            deleted_at: None,
                            deleted_reason: None,
                        }
                    }
                };
                copy
            }),
        },
        Err(f) => Record {
            id: records::new_record_id(attempt_started),
            backup_timestamp: attempt_started,
            file_name: None,
            result: Outcome::Failed,
            reason: Some(f.reason),
            trigger,
            member: f.member,
            etcd_version: f.etcd_version,
            storage_version: None,
            snapshot_version: None,
            revision: None,
            size_bytes: None,
            sha256: None,
            duration_seconds: duration,
            local: None,
            remote: None,
        },
    };

    // The sidecar carries the record, so the bucket alone tells what each object is.
    if let Some(remote) = &sidecar_remote {
        if let Err(e) = remote_sync::write_sidecar(remote, &record).await {
            let now = Utc::now();
            if let Some(c) = record.remote.as_mut() {
                c.state = RemoteState::Pending;
                c.last_error = Some(format!("the sidecar could not be written: {e}"));
                c.next_attempt_at = Some(now + remote_sync::backoff(1));
                c.uploaded_at = None;
            }
        }
    }

    let rule = config.local_storage.retention;
    let succeeded = record.result == Outcome::Success;
    let rec_for_file = record.clone();
    let now = Utc::now();
    let ((deleted, records_dropped), moved) =
        RecordStore::new(&config.state_dir).update(now, |file| {
            file.push(rec_for_file);
            // Deleting only after a success: failing backups never shrink what exists.
            let deleted = if succeeded {
                apply_local_retention(&mut file.records, &store, now, rule, &mut warnings)
            } else {
                Vec::new()
            };
            // After the deletions, so a snapshot whose deletion failed keeps its record.
            let drops = retention::history_drops(&file.records, config.history);
            for &i in drops.iter().rev() {
                file.records.remove(i);
            }
            (deleted, drops.len())
        })?;
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
        .remote
        .as_ref()
        .is_some_and(|c| c.state == RemoteState::Uploaded);
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
    let state_err = |source| BackupError::StateDir {
        dir: config.state_dir.clone(),
        source,
    };
    fsutil::create_private_dir_all(&config.state_dir).map_err(state_err)?;
    let lock_path = config.state_dir.join("backup.lock");
    let _lock = fsutil::try_lock(&lock_path)
        .map_err(state_err)?
        .map_err(|held| BackupError::Busy {
            holder: held.holder_pid,
            lock: lock_path.clone(),
        })?;
    let mut m = remote_sync::Maintenance::default();
    if probe {
        if let Some(rc) = &config.remote_storage {
            let member = resolve_target(config).ok().and_then(|t| t.manifest_name);
            match Remote::open(rc, member.as_deref().unwrap_or("-")) {
                Ok(r) => match r.probe().await {
                    Ok(()) => tracing::info!(
                        bucket = r.bucket(),
                        endpoint = r.endpoint(),
                        credentials = %r.credentials().describe(),
                        "remote storage pre-flight: bucket exists and is writable"
                    ),
                    Err(e) => m
                        .errors
                        .push(format!("remote storage pre-flight failed: {e}")),
                },
                Err(e) => m
                    .errors
                    .push(format!("remote storage pre-flight failed: {e}")),
            }
            for e in &m.errors {
                tracing::error!("{e}");
            }
        }
    }
    // At start-up (probe) every pending upload is tried, whatever its backoff.
    let more = remote_sync::maintain(config, None, probe).await;
    m.uploaded = more.uploaded;
    m.retry_failed = more.retry_failed;
    m.deleted = more.deleted;
    m.errors.extend(more.errors);
    Ok(m)
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
        let Some(name) = rec.file_name.clone() else {
            continue;
        };
        let Some(local) = rec.local.as_ref() else {
            continue;
        };
        if local.path != store.path_of(&name) {
            // Recorded in another directory (local_storage.path changed): not ours to touch.
            continue;
        }
        match store.delete(&name) {
            Ok(existed) => {
                if let Some(r) = rec
                    .remote
                    .as_mut()
                    .filter(|r| r.state == RemoteState::Pending)
                {
                    r.state = RemoteState::Failed;
                    r.next_attempt_at = None;
                    r.last_error = Some(format!(
                        "the local copy was deleted by retention before an upload succeeded \
                         (last error: {})",
                        r.last_error.as_deref().unwrap_or("none")
                    ));
                }
                let Some(local) = rec.local.as_mut() else {
                    continue;
                };
                local.state = CopyState::Deleted;
                local.deleted_at = Some(now);
                local.deleted_reason = Some(if existed {
                    d.reason
                } else {
                    format!("{} (the file was already gone)", d.reason)
                });
                tracing::info!(file = %name, reason = %local.deleted_reason.as_deref().unwrap_or(""), "retention deleted local snapshot");
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

async fn attempt(
    config: &Config,
    store: &LocalStore,
    warnings: &mut Vec<String>,
) -> Result<Success, Failure> {
    let target = resolve_target(config).map_err(Failure::new)?;
    let ep = target.endpoint.clone();
    // Until etcd answers, what the manifest says is all we know about the member.
    let assumed = target.manifest_name.clone().map(|name| Member {
        name,
        id: None,
        endpoint: ep.clone(),
    });
    let early = |reason: String| Failure {
        reason,
        member: assumed.clone(),
        etcd_version: None,
    };

    match store.ensure() {
        Ok(Some(w)) => warnings.push(w),
        Ok(None) => {}
        Err(e) => {
            return Err(early(format!(
                "cannot create snapshot directory {}: {e}",
                store.dir().display()
            )))
        }
    }
    match store.remove_stale_temps() {
        Ok(removed) => {
            for p in removed {
                tracing::warn!(path = %p.display(), "removed a partial snapshot left by an interrupted run");
            }
        }
        Err(e) => warnings.push(format!(
            "cannot clean partial snapshots in {}: {e}",
            store.dir().display()
        )),
    }

    let e = &config.etcd;
    let tls = TlsMaterial::load(&e.ca_cert, &e.client_cert, &e.client_key, Utc::now())
        .map_err(|err| early(err.to_string()))?;
    warnings.extend(tls.warnings.iter().cloned());

    let explain = |phase, err: &(dyn std::error::Error + 'static)| {
        etcd::explain_connect_error(&ep, &e.ca_cert, &e.client_cert, phase, err)
    };
    let mut client = etcd::connect(&ep, &tls, e.dial_timeout)
        .await
        .map_err(|err| early(explain(Phase::Dial, err.as_ref())))?;
    let info = etcd::member_info(&mut client, e.dial_timeout)
        .await
        .map_err(|err| early(explain(Phase::FirstRequest, err.as_ref())))?;
    let name = if !info.name.is_empty() {
        info.name.clone()
    } else {
        target
            .manifest_name
            .clone()
            .unwrap_or_else(|| format!("{:x}", info.id))
    };
    let member = Member {
        name: name.clone(),
        id: Some(format!("{:x}", info.id)),
        endpoint: ep.clone(),
    };
    let fail = |reason: String| Failure {
        reason,
        member: Some(member.clone()),
        etcd_version: Some(info.version.clone()),
    };
    if let Some(manifest_name) = &target.manifest_name {
        if !info.name.is_empty() && manifest_name != &info.name {
            return Err(fail(format!(
                "etcd at {ep} is member {:?}, but the manifest {} names this node's member \
                 {manifest_name:?}; refusing to back up another member",
                info.name,
                e.manifest.display()
            )));
        }
    }

    // One file name per second: wait out a name that is already taken (back-to-back runs).
    let (at, file_name) = loop {
        let at = Utc::now();
        let name = snapshot_file_name(at, &name);
        if !store.path_of(&name).exists() {
            break (at, name);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let (temp, file) = store.create_temp(&file_name).map_err(|err| {
        fail(format!(
            "cannot create a snapshot file in {}: {err}",
            store.dir().display()
        ))
    })?;

    // The remote copy starts with the stream; credentials are read now, for this upload.
    let mut feed = None;
    let mut remote = None;
    let mut remote_setup_error = None;
    if let Some(rc) = &config.remote_storage {
        match Remote::open(rc, &name) {
            Ok(r) => {
                if rc.insecure_skip_tls_verify {
                    tracing::warn!(
                        endpoint = r.endpoint(),
                        "remote_storage.insecure_skip_tls_verify is set: the object store's \
                         TLS certificate is NOT verified; snapshots hold every cluster Secret"
                    );
                }
                feed = Some(r.start_upload(&file_name));
                remote = Some(r);
            }
            Err(e) => remote_setup_error = Some(e),
        }
    }

    let local = async {
        let raw = std::sync::Arc::new(
            file.try_clone()
                .map_err(|err| fail(format!("cannot use {}: {err}", temp.path().display())))?,
        );
        let writer = BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file));
        let mut sinks = Sinks {
            file: writer,
            feed: feed.as_mut(),
            raw,
            written: 0,
            writeback: fsutil::Writeback::default(),
            pending: None,
        };
        let limits = StreamLimits {
            overall: e.timeout,
            stall: e.stall_timeout,
        };
        let streamed = etcd::stream_snapshot(&mut client, &mut sinks, limits)
            .await
            .map_err(|err| fail(format!("snapshot from etcd at {ep} failed: {err}")))?;
        sinks.writeback_done().await;
        let file = sinks.file.into_inner();
        file.sync_all()
            .await
            .map_err(|err| fail(format!("cannot fsync {}: {err}", temp.path().display())))?;
        let std_file = file.into_std().await;
        // The bbolt check and etcdutl's status over the written file, before it counts: a
        // snapshot whose checksum matches can still be an inconsistent database.
        let db_len = streamed.file_len - etcddb::TRAILER_LEN;
        let checked = tokio::task::spawn_blocking(move || {
            let db = etcddb::Db::open(std_file, db_len)?;
            etcddb::status(&db).map_err(|e| e.to_string())
        })
        .await
        .map_err(|err| fail(format!("the snapshot check did not finish: {err}")))?;
        let status = checked.map_err(|reason| {
            fail(format!(
                "etcd at {ep} sent a snapshot whose checksum matches but whose database is \
                 not consistent: {reason}"
            ))
        })?;
        let path = store.publish(temp).map_err(|err| {
            fail(format!(
                "cannot publish snapshot {file_name} in {}: {err}",
                store.dir().display()
            ))
        })?;
        Ok::<_, Failure>((streamed, status, path))
    }
    .await;

    let rc = config.remote_storage.as_ref();
    let (streamed, status, path) = match local {
        Ok(v) => v,
        Err(f) => {
            // Nothing verified: the multipart upload is aborted, nothing becomes visible.
            if let (Some(feed), Some(rc)) = (feed, rc) {
                if let Err(e) = feed.finish(false, rc.timeout).await {
                    tracing::debug!("upload aborted: {e}");
                }
            }
            return Err(f);
        }
    };

    // Verified: complete the upload and check what the bucket holds.
    let remote_result = match (rc, remote, feed) {
        (None, _, _) => None,
        (Some(rc), Some(r), Some(feed)) => {
            let key = feed.key().to_string();
            let result = match feed.finish(true, rc.timeout).await {
                Ok((_meta, etag)) => match r.verify_object(&key, streamed.file_len, etag).await {
                    Ok(up) => Ok(up),
                    Err(e) => {
                        // Visible but not what we sent: remove it, retry from the local file.
                        let _ = r.delete_snapshot(&file_name).await;
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            Some(RemoteResult {
                location: r.location(&key),
                remote: Some(r),
                result,
            })
        }
        (Some(rc), _, _) => Some(RemoteResult {
            remote: None,
            location: remote_sync::location(rc, &name, &file_name),
            result: Err(remote_setup_error.unwrap_or_else(|| "remote storage not set up".into())),
        }),
    };

    Ok(Success {
        at,
        file_name,
        path,
        member,
        etcd_version: info.version,
        storage_version: Some(info.storage_version).filter(|v| !v.is_empty()),
        snapshot_version: Some(streamed.version).filter(|v| !v.is_empty()),
        // The snapshot's own revision, as `etcdutl snapshot status` reports it.
        revision: status.revision,
        size_bytes: streamed.file_len,
        sha256: hex::encode(streamed.file_sha256),
        remote: remote_result,
    })
}
