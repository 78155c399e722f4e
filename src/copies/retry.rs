//! Pending copies uploaded again from the local file (with backoff), one destination at a
//! time: the file checked against its recorded sha256 on the way, the upload completed only
//! then, the copy settled by the same rule as the backup's ([`super::settle`]). A pending
//! copy of a cluster slot is resolved first ([`super::cluster::resolve`]).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::cluster::{self, ClusterChange, Resolution, SlotClaim};
use super::{settle, Maintenance};
use crate::config::{Config, DestinationConfig};
use crate::records::{
    BundleCopy, CopyState, LocalCopy, Outcome, Record, RecordStore, RemoteCopy, RemoteState,
};
use crate::store::remote::{Remote, Uploaded};

/// Successful backups whose copy at destination `dest` is pending and due at `now` (`None`:
/// all of them), while their local file is there.
pub fn due(records: &[Record], dest: &str, now: Option<DateTime<Utc>>) -> Vec<Record> {
    records
        .iter()
        .filter(|r| {
            r.result == Outcome::Success
                && r.local
                    .as_ref()
                    .is_some_and(|l| l.state == CopyState::Present)
                && r.copy(dest).is_some_and(|c| {
                    c.state == RemoteState::Pending
                        && now.is_none_or(|now| c.next_attempt_at.is_none_or(|t| t <= now))
                })
        })
        .cloned()
        .collect()
}

/// What one pending copy's retry came to.
enum Step {
    /// Uploaded now by this node and settled: the copy as it stands (pending again when its
    /// sidecar failed) and the bundle made with it.
    Uploaded {
        copy: Box<RemoteCopy>,
        bundle: Option<BundleCopy>,
    },
    /// `per = "cluster"`: the slot's copy is another node's, confirmed.
    Covered {
        location: String,
        uploader: String,
    },
    /// `per = "cluster"`: the slot's uploader is still at it.
    Waiting(String),
    Failed(String),
}

/// Retries the copies at `rc` that are due at `now` (`None`: every pending one), each result
/// written to its record under the lock.
pub(super) async fn retry_due(
    config: &Config,
    rc: &DestinationConfig,
    records: &[Record],
    now: Option<DateTime<Utc>>,
    m: &mut Maintenance,
) {
    for rec in due(records, &rc.name, now) {
        let (Some(name), Some(local), Some(_)) = (&rec.file_name, &rec.local, &rec.sha256) else {
            continue;
        };
        let step = retry_one(config, rc, &rec).await;
        crate::crashpoint::here("retry:uploaded");
        if let Err(e) = record_step(config, rc, &rec.id, local, &step) {
            m.errors.push(e);
        }
        report(rc, name, step, m);
    }
}

/// One pending copy: resolved through the cluster first when it waits for another node's
/// upload, else uploaded under this node's prefix.
async fn retry_one(config: &Config, rc: &DestinationConfig, rec: &Record) -> Step {
    if !rec
        .copy(&rc.name)
        .is_some_and(RemoteCopy::waits_for_cluster)
    {
        let me = rec.member.as_ref().map_or("", |m| m.name.as_str());
        return upload_record(config, rc, rec, me, None, None).await;
    }
    match cluster::resolve(config, rc, rec).await {
        Resolution::Covered { location, uploader } => Step::Covered { location, uploader },
        Resolution::Waiting(why) => Step::Waiting(why),
        Resolution::Failed(e) => Step::Failed(e),
        Resolution::Upload {
            under,
            change,
            claim,
        } => upload_record(config, rc, rec, &under, Some(change), claim).await,
    }
}

/// Uploads `rec`'s local file under `under`'s prefix and settles the copy (bundle, sidecar,
/// the slot `claim` marked done), on a working copy of the record.
async fn upload_record(
    config: &Config,
    rc: &DestinationConfig,
    rec: &Record,
    under: &str,
    change: Option<ClusterChange>,
    claim: Option<SlotClaim>,
) -> Step {
    let (Some(name), Some(local), Some(sha)) = (&rec.file_name, &rec.local, &rec.sha256) else {
        return Step::Failed("the record names no local file".into());
    };
    let remote = match Remote::open(rc, under) {
        Ok(r) => r,
        Err(e) => return Step::Failed(e),
    };
    let existing = match remote.creates_only() {
        true => already_there(&remote, config, rec, rc).await,
        false => Ok(None),
    };
    let made = match existing {
        Ok(Some(up)) => Ok(up),
        Ok(None) => upload_from_file(&remote, rc, config, local, name, sha).await,
        Err(e) => Err(e),
    };
    let up = match made {
        Ok(up) => up,
        // Dropping a claim lets its lease expire: the next try (here or on another node)
        // takes the slot over again.
        Err(e) => return Step::Failed(e),
    };
    let mut done = rec.clone();
    let Some(c) = done.copy_mut(&rc.name) else {
        return Step::Failed("the record has no copy at this destination".into());
    };
    retried(c, &remote, &up, crate::clock::now());
    if let (Some(cl), Some(change)) = (c.cluster.as_mut(), &change) {
        change.apply(cl);
    }
    settle::settle(config, &mut done, std::slice::from_ref(&remote), claim).await;
    match done.copy(&rc.name) {
        Some(copy) => Step::Uploaded {
            copy: Box::new(copy.clone()),
            bundle: done.bundle,
        },
        None => Step::Failed("the record has no copy at this destination".into()),
    }
}

/// At a destination that never replaces an object, the copy a run made before its record or
/// sidecar could follow (killed, a sidecar that failed): adopted when it reads back as the
/// bytes the record expects; an object there that is not, or cannot be compared (sealed
/// without a record of its sealed bytes), is an error that says so, never replaced.
async fn already_there(
    remote: &Remote,
    config: &Config,
    rec: &Record,
    rc: &DestinationConfig,
) -> Result<Option<Uploaded>, String> {
    let (Some(name), Some(local)) = (&rec.file_name, &rec.local) else {
        return Ok(None);
    };
    // Which object the retry would make, and what its bytes must be.
    let (object, expected, sealed) = match &local.sealed {
        Some(s) => {
            let own = local
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone());
            let want = (s.object_size_bytes, s.object_sha256.clone());
            (own, Some(want), Some(s.clone()))
        }
        None => {
            let object = crate::store::remote::object_name(name, config.encryption.as_ref());
            match (
                &config.encryption,
                rec.copy(&rc.name).and_then(|c| c.sealed.clone()),
            ) {
                (None, _) => (object, rec.size_bytes.zip(rec.sha256.clone()), None),
                (Some(_), Some(s)) => (
                    object,
                    Some((s.object_size_bytes, s.object_sha256.clone())),
                    Some(s),
                ),
                (Some(_), None) => (object, None, None),
            }
        }
    };
    let key = remote.key_for(&object);
    let Some((size, sha256)) = remote.sha256_of(&key).await? else {
        return Ok(None);
    };
    let location = remote.location(&key);
    match expected {
        Some((want_size, want_sha)) if size == want_size && sha256 == want_sha => {
            tracing::info!(object = %location, destination = %rc.name, "the copy is at the destination already: adopted, not uploaded again");
            Ok(Some(Uploaded {
                key,
                etag: None,
                sealed,
                locked_until: None,
            }))
        }
        Some((want_size, want_sha)) => Err(format!(
            "{location} is there already with {size} bytes and sha256 {sha256}, not this \
             snapshot's {want_size} bytes with sha256 {want_sha}; this destination never \
             replaces an object: remove it, and the next retry uploads the snapshot"
        )),
        None => Err(format!(
            "{location} is there already, sealed, and its bytes cannot be compared with \
             anything this node recorded; this destination never replaces an object: check it \
             opens (`etcdguard decrypt`) and remove it, and the next retry uploads the snapshot"
        )),
    }
}

/// Writes a retry's outcome into the record `id`, under the records lock.
fn record_step(
    config: &Config,
    rc: &DestinationConfig,
    id: &str,
    local: &LocalCopy,
    step: &Step,
) -> Result<(), String> {
    let now = crate::clock::now();
    let wait = cluster::wait(rc);
    let primary = config.is_primary(&rc.name);
    RecordStore::new(&config.state_dir)
        .update(now, |f| {
            let Some(r) = f.records.iter_mut().find(|r| r.id == id) else {
                return;
            };
            if let (Step::Uploaded { bundle, .. }, true) = (step, primary) {
                r.bundle = bundle.clone();
            }
            let Some(c) = r.copy_mut(&rc.name) else {
                return;
            };
            match step {
                Step::Uploaded { copy, .. } => *c = (**copy).clone(),
                Step::Covered { location, uploader } => {
                    c.covered(now, location.clone(), uploader.clone())
                }
                Step::Waiting(why) => c.still_covered_pending(now, why.clone(), wait),
                Step::Failed(e) => {
                    c.retried_failed(now, e.clone());
                    if !local.path.exists() {
                        c.give_up("the local copy is gone, nothing left to upload");
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Logs a retry's outcome and counts it in the pass's report.
fn report(rc: &DestinationConfig, name: &str, step: Step, m: &mut Maintenance) {
    let failed = |e: String, m: &mut Maintenance| {
        tracing::warn!(file = %name, destination = %rc.name, error = %e, "pending remote copy still not uploaded");
        m.retry_failed.push((name.to_string(), e));
    };
    match step {
        Step::Uploaded { copy, .. } if copy.state == RemoteState::Pending => {
            failed(copy.last_error.unwrap_or_default(), m)
        }
        Step::Uploaded { .. } => {
            tracing::info!(file = %name, destination = %rc.name, "pending remote copy uploaded");
            m.uploaded.push(name.to_string());
        }
        Step::Covered { location, uploader } => {
            tracing::info!(file = %name, %uploader, %location, "the slot's copy is another node's upload");
        }
        Step::Waiting(why) => tracing::info!(file = %name, "{why}"),
        Step::Failed(e) => failed(e, m),
    }
}

/// Marks a pending copy uploaded by a retry (its key follows the sealing in force now).
fn retried(c: &mut RemoteCopy, remote: &Remote, up: &Uploaded, now: DateTime<Utc>) {
    c.retried_uploaded(
        now,
        remote.location(&up.key),
        up.etag.clone(),
        up.sealed.clone(),
    );
    c.locked_until = up.locked_until;
}

/// Uploads a backup's local file, checking on the way that it still has the sha256 recorded
/// for it (the upload completes only then), and verifies the object. A plain file is sealed
/// as `[encryption]` says now; a sealed one (`encrypt_local`) goes as it is.
pub async fn upload_from_file(
    remote: &Remote,
    rc: &DestinationConfig,
    config: &Config,
    local: &LocalCopy,
    file_name: &str,
    plain_sha256: &str,
) -> Result<Uploaded, String> {
    let path = local.path.as_path();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read the local copy {}: {e}", path.display()))?;
    let (mut feed, expected_sha256) = match &local.sealed {
        Some(s) => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(file_name);
            (
                remote.start_upload_sealed(name, s.sealing.clone()),
                s.object_sha256.as_str(),
            )
        }
        None => (
            remote.start_upload(file_name, config.encryption.as_ref())?,
            plain_sha256,
        ),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let total = file.metadata().await.ok().map(|m| m.len());
    let progress = crate::progress::Progress::bytes("upload", total);
    let read = loop {
        let got = match crate::failpoint::check("retry:read", path) {
            Ok(()) => file.read(&mut buf).await,
            Err(e) => Err(e),
        };
        match got {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                feed.send(&buf[..n]).await;
                progress.inc(n as u64);
            }
            Err(e) => {
                break Err(format!(
                    "cannot read the local copy {}: {e}",
                    path.display()
                ))
            }
        }
    };
    progress.finish();
    let sha = hex::encode(hasher.finalize());
    let good = match read {
        Err(e) => Err(e),
        Ok(()) if sha != expected_sha256 => Err(format!(
            "the local copy {} changed since the backup (sha256 {sha}, recorded \
             {expected_sha256}); not uploading it",
            path.display()
        )),
        Ok(()) => Ok(()),
    };
    if let Err(e) = good {
        feed.abort(rc.timeout).await;
        return Err(e);
    }
    feed.complete(remote, rc.timeout).await
}
