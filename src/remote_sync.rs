//! Keeping the bucket in step with the records: retries of pending uploads (from the local
//! file, with backoff), remote retention for this node, the sidecars, and the cross-node
//! listing behind `etcdguard records --remote`.
//!
//! Network work happens outside the records lock; each result is then written to the record
//! it belongs to (by id) under the lock, so a slow bucket never blocks other writers.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::cluster::{self, Claim, CLUSTER_NODE};
use crate::config::{Config, DestinationConfig};

/// True for the first destination: the recovery bundle goes there.
fn is_primary(config: &Config, rc: &DestinationConfig) -> bool {
    config
        .destinations
        .first()
        .is_some_and(|d| d.name == rc.name)
}
use crate::records::{
    BundleCopy, CopyState, LocalCopy, Outcome, Record, RecordStore, RemoteCopy, RemoteState,
};
use crate::retention;
use crate::store::local::{bundle_name, snapshot_time};
use crate::store::remote::{ListError, Remote, Uploaded};

/// Writes the record as its object's JSON sidecar (plain JSON, nothing secret: readable
/// without any key, so `records --remote` needs none).
pub async fn write_sidecar(remote: &Remote, record: &Record) -> Result<(), String> {
    let name = record
        .copy(remote.name())
        .map(|c| c.object_name())
        .filter(|n| !n.is_empty())
        .ok_or("a record without a remote copy has no sidecar")?;
    let mut json = serde_json::to_vec_pretty(record).expect("record serializes");
    json.push(b'\n');
    remote.put_sidecar(name, json).await
}

/// Makes this node's recovery bundle for `record` and uploads it beside its remote copy
/// (`[bundle]`); the outcome goes into the record. A failed bundle never fails the backup: it
/// is said in the record and the log.
pub async fn attach_bundle(config: &Config, remote: &Remote, record: &mut Record) {
    let (Some(b), Some(enc), Some(name)) = (
        config.bundle.clone(),
        config.encryption.clone(),
        record.file_name.clone(),
    ) else {
        return;
    };
    let member = record
        .member
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let object = bundle_name(&name, enc.suffix());
    let location = remote.location(&remote.key_for(&object));
    let built = tokio::task::spawn_blocking(move || {
        crate::bundle::build(&b.root, &b.extra_paths, &member, &enc)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the bundle task failed: {e}")));
    let mut copy = BundleCopy {
        location,
        state: RemoteState::Failed,
        object_sha256: None,
        object_size_bytes: None,
        files: 0,
        holds: Vec::new(),
        last_error: None,
    };
    let result = match built {
        Ok(built) => {
            copy.files = built
                .contents
                .entries
                .iter()
                .filter(|e| e.kind == crate::bundle::Kind::File)
                .count();
            copy.holds = built.contents.summary();
            copy.object_sha256 = Some(hex::encode(Sha256::digest(&built.sealed)));
            copy.object_size_bytes = Some(built.sealed.len() as u64);
            remote.put_small(&object, built.sealed).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {
            copy.state = RemoteState::Uploaded;
            tracing::info!(location = %copy.location, files = copy.files, "recovery bundle uploaded");
        }
        Err(e) => {
            tracing::warn!(error = %e, "no recovery bundle with this backup");
            copy.last_error = Some(e);
        }
    }
    record.bundle = Some(copy);
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
        match file.read(&mut buf).await {
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

/// What one pending copy's retry came to.
enum Step {
    /// Uploaded now (by this node), with what changes in its cluster facts.
    Uploaded(
        Box<(Remote, Uploaded, Option<BundleCopy>)>,
        Option<ClusterChange>,
    ),
    /// `per = "cluster"`: the slot's copy is another node's, confirmed.
    Covered {
        location: String,
        uploader: String,
    },
    /// `per = "cluster"`: the slot's uploader is still at it.
    Waiting(String),
    Failed(String),
}

/// How a retry changes a cluster copy's facts.
enum ClusterChange {
    /// This node took the slot over.
    TookOver(String),
    /// No agreement was possible: this node's own copy.
    Fallback(String),
}

impl ClusterChange {
    fn apply(&self, c: &mut crate::records::ClusterCopy) {
        match self {
            ClusterChange::TookOver(me) => {
                c.uploader = Some(me.clone());
                c.fallback = None;
            }
            ClusterChange::Fallback(why) => c.fallback = Some(why.clone()),
        }
    }
}

/// Uploads `rec`'s local file under `under`'s prefix with its bundle and sidecar.
async fn upload_record(
    config: &Config,
    rc: &DestinationConfig,
    rec: &Record,
    under: &str,
) -> Result<(Remote, Uploaded, Option<BundleCopy>), String> {
    let (Some(name), Some(local), Some(sha)) = (&rec.file_name, &rec.local, &rec.sha256) else {
        return Err("the record names no local file".into());
    };
    let remote = Remote::open(rc, under)?;
    let up = upload_from_file(&remote, rc, config, local, name, sha).await?;
    let mut done = rec.clone();
    if let Some(c) = done.copy_mut(&rc.name) {
        retried(c, &remote, &up, crate::clock::now());
    }
    if is_primary(config, rc) {
        attach_bundle(config, &remote, &mut done).await;
    }
    write_sidecar(&remote, &done)
        .await
        .map_err(|e| format!("the sidecar could not be written: {e}"))?;
    Ok((remote, up, done.bundle))
}

/// A pending copy of a cluster slot another node claimed: confirmed when the slot's key says
/// done; still waited for while the uploader holds its lease; taken over when the key is gone
/// (the uploader died): its object adopted if it made it to the bucket, else this node's file
/// uploaded under the cluster's prefix. Without quorum, this node's own copy.
async fn resolve_cluster_copy(config: &Config, rc: &DestinationConfig, rec: &Record) -> Step {
    let c = rec.copy(&rc.name).expect("a remote copy");
    let slot = c.cluster.as_ref().expect("a cluster copy").slot;
    let me = rec
        .member
        .as_ref()
        .map_or("", |m| m.name.as_str())
        .to_string();
    let timeout = crate::backup::cluster_timeout(config);
    let fallback = |why: String| async move {
        tracing::warn!(
            "no agreement through etcd on the slot ({why}): uploading this node's own copy"
        );
        let me = rec.member.as_ref().map_or("", |m| m.name.as_str());
        match upload_record(config, rc, rec, me).await {
            Ok(done) => Step::Uploaded(Box::new(done), Some(ClusterChange::Fallback(why))),
            Err(e) => Step::Failed(e),
        }
    };
    let mut client = match connect_local(config).await {
        Ok(c) => c,
        Err(e) => return fallback(e).await,
    };
    let value = match cluster::read(&mut client, slot, timeout).await {
        Ok(v) => v,
        Err(e) => return fallback(e).await,
    };
    let bucket_key = |location: &str| {
        location
            .strip_prefix(&crate::store::remote::location(rc, ""))
            .unwrap_or(location)
            .to_string()
    };
    match value {
        Some(v) if v.is_done() => Step::Covered {
            location: crate::store::remote::location(rc, &v.object),
            uploader: v.member,
        },
        Some(v) => Step::Waiting(format!("{} is still uploading this slot's copy", v.member)),
        None => {
            let my_id = rec
                .member
                .as_ref()
                .and_then(|m| m.id.as_deref())
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            let (Some(name), Some(local)) = (&rec.file_name, &rec.local) else {
                return Step::Failed("the record names no local file".into());
            };
            let object = format!(
                "{}{}",
                crate::store::remote::node_prefix(&rc.prefix, CLUSTER_NODE),
                match &local.sealed {
                    Some(_) => local
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| name.clone()),
                    None => crate::store::remote::object_name(name, config.encryption.as_ref()),
                }
            );
            let claim = cluster::claim(
                &mut client,
                slot,
                &me,
                my_id,
                &[],
                &object,
                rc.cluster_lease,
                timeout,
                false,
            )
            .await;
            match claim {
                Claim::Taken(v) if v.is_done() => Step::Covered {
                    location: crate::store::remote::location(rc, &v.object),
                    uploader: v.member,
                },
                Claim::Taken(v) => {
                    Step::Waiting(format!("{} took this slot over and uploads it", v.member))
                }
                Claim::NoQuorum(why) => fallback(why).await,
                Claim::Won(mut held) => {
                    // The uploader may have finished its object and died before marking it.
                    let theirs = bucket_key(&c.location);
                    let uploader = c
                        .cluster
                        .as_ref()
                        .and_then(|cl| cl.uploader.clone())
                        .unwrap_or_default();
                    let found = match Remote::open(rc, CLUSTER_NODE) {
                        Ok(r) => r.exists(&theirs).await.unwrap_or(false),
                        Err(_) => false,
                    };
                    if found && !uploader.is_empty() {
                        held.adopt(&uploader, &theirs);
                        if let Err(e) = cluster::mark_done(&mut client, held, timeout).await {
                            return Step::Failed(e);
                        }
                        return Step::Covered {
                            location: crate::store::remote::location(rc, &theirs),
                            uploader,
                        };
                    }
                    tracing::info!(slot = %crate::records::rfc3339(slot), "the slot's uploader is gone: this node takes the slot over");
                    match upload_record(config, rc, rec, CLUSTER_NODE).await {
                        Ok(done) => {
                            if let Err(e) = cluster::mark_done(&mut client, held, timeout).await {
                                tracing::warn!(
                                    "the slot's copy is uploaded but not marked done: {e}"
                                );
                            }
                            Step::Uploaded(
                                Box::new(done),
                                Some(ClusterChange::TookOver(me.clone())),
                            )
                        }
                        // Dropping the claim lets its lease expire: the next try (here or on
                        // another node) takes it over again.
                        Err(e) => Step::Failed(e),
                    }
                }
            }
        }
    }
}

/// A client of the local member, as a backup reaches it.
async fn connect_local(config: &Config) -> Result<etcd_client::Client, String> {
    let target = crate::preflight::resolve_target(config)?;
    let tls = crate::preflight::etcd_tls(&config.etcd).map_err(|e| e.to_string())?;
    crate::etcd::connect(&target.endpoint, &tls, config.etcd.dial_timeout)
        .await
        .map_err(|e| format!("cannot reach etcd at {}: {e}", target.endpoint))
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

/// What a maintenance pass did.
#[derive(Debug, Default, Clone)]
pub struct Maintenance {
    /// Pending uploads that succeeded now.
    pub uploaded: Vec<String>,
    /// Pending uploads that failed again (file, error).
    pub retry_failed: Vec<(String, String)>,
    /// Remote snapshots deleted by retention.
    pub deleted: Vec<String>,
    /// Multipart uploads left open by a backup that died mid-upload, aborted now.
    pub aborted_uploads: Vec<String>,
    /// Problems that stopped part of the pass.
    pub errors: Vec<String>,
}

/// Pending copies at destination `dest` whose retry is due at `now` (`None`: all of them).
fn due_pending(records: &[Record], dest: &str, now: Option<DateTime<Utc>>) -> Vec<Record> {
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

/// When the next pending upload is due, at any destination (the daemon wakes up for it).
pub fn next_pending_at(config: &Config) -> Option<DateTime<Utc>> {
    if config.destinations.is_empty() {
        return None;
    }
    let f = RecordStore::new(&config.state_dir).load().ok()?;
    config
        .destinations
        .iter()
        .flat_map(|d| {
            due_pending(&f.records, &d.name, None)
                .into_iter()
                .filter_map(|r| r.copy(&d.name).and_then(|c| c.next_attempt_at))
                .collect::<Vec<_>>()
        })
        .min()
}

/// True when some pending upload is due (the daemon asks this on every tick).
pub fn has_due_pending(config: &Config, now: DateTime<Utc>) -> bool {
    !config.destinations.is_empty()
        && RecordStore::new(&config.state_dir).load().is_ok_and(|f| {
            config
                .destinations
                .iter()
                .any(|d| !due_pending(&f.records, &d.name, Some(now)).is_empty())
        })
}

/// Retries due pending uploads (all pending ones with `all_pending`, as at start-up), then
/// applies remote retention for this node, at every destination at the same time (one that
/// is down never holds up the others). `member` is this node's member name (from the
/// backup); without one, the newest record's is used.
pub async fn maintain(config: &Config, member: Option<&str>, all_pending: bool) -> Maintenance {
    let passes = futures_util::future::join_all(
        config
            .destinations
            .iter()
            .map(|rc| maintain_one(config, rc, member, all_pending)),
    )
    .await;
    let mut m = Maintenance::default();
    let named = config.destinations.len() > 1;
    for (rc, one) in config.destinations.iter().zip(passes) {
        let tag = |s: String| {
            if named {
                format!("{s} ({})", rc.name)
            } else {
                s
            }
        };
        m.uploaded.extend(one.uploaded.into_iter().map(tag));
        m.retry_failed
            .extend(one.retry_failed.into_iter().map(|(f, e)| (tag(f), e)));
        m.deleted.extend(one.deleted.into_iter().map(tag));
        m.aborted_uploads
            .extend(one.aborted_uploads.into_iter().map(tag));
        m.errors.extend(one.errors.into_iter().map(|e| {
            if named {
                format!("{}: {e}", rc.table)
            } else {
                e
            }
        }));
    }
    for e in &m.errors {
        tracing::error!("{e}");
    }
    m
}

/// [`maintain`] at one destination.
async fn maintain_one(
    config: &Config,
    rc: &DestinationConfig,
    member: Option<&str>,
    all_pending: bool,
) -> Maintenance {
    let mut m = Maintenance::default();
    let store = RecordStore::new(&config.state_dir);
    let file = match store.load() {
        Ok(f) => f,
        Err(e) => {
            m.errors.push(e.to_string());
            return m;
        }
    };
    let member = member
        .map(str::to_string)
        .or_else(|| newest_member(&file.records));

    let now = (!all_pending).then(crate::clock::now);
    for rec in due_pending(&file.records, &rc.name, now) {
        let (Some(name), Some(local), Some(_)) = (&rec.file_name, &rec.local, &rec.sha256) else {
            continue;
        };
        let step = if rec
            .copy(&rc.name)
            .is_some_and(RemoteCopy::waits_for_cluster)
        {
            resolve_cluster_copy(config, rc, &rec).await
        } else {
            let who = rec.member.as_ref().map_or("", |m| m.name.as_str());
            match upload_record(config, rc, &rec, who).await {
                Ok(done) => Step::Uploaded(Box::new(done), None),
                Err(e) => Step::Failed(e),
            }
        };
        crate::crashpoint::here("retry:uploaded");
        let now = crate::clock::now();
        let wait = crate::backup::cluster_wait(rc);
        let update = store.update(now, |f| {
            let Some(r) = f.records.iter_mut().find(|r| r.id == rec.id) else {
                return;
            };
            if let Step::Uploaded(done, _) = &step {
                if is_primary(config, rc) {
                    r.bundle = done.2.clone();
                }
            }
            let Some(c) = r.copy_mut(&rc.name) else {
                return;
            };
            match &step {
                Step::Uploaded(done, cluster) => {
                    let (remote, up, _) = &**done;
                    retried(c, remote, up, now);
                    if let (Some(cl), Some(change)) = (c.cluster.as_mut(), cluster) {
                        change.apply(cl);
                    }
                }
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
        });
        if let Err(e) = update {
            m.errors.push(e.to_string());
        }
        match step {
            Step::Uploaded(..) => {
                tracing::info!(file = %name, destination = %rc.name, "pending remote copy uploaded");
                m.uploaded.push(name.clone());
            }
            Step::Covered { location, uploader } => {
                tracing::info!(file = %name, %uploader, %location, "the slot's copy is another node's upload");
            }
            Step::Waiting(why) => tracing::info!(file = %name, "{why}"),
            Step::Failed(e) => {
                tracing::warn!(file = %name, destination = %rc.name, error = %e, "pending remote copy still not uploaded");
                m.retry_failed.push((name.clone(), e));
            }
        }
    }

    if let Some(member) = member {
        abort_stale_uploads(rc, &member, &member, &mut m).await;
        match apply_retention(config, rc, &member).await {
            Ok(deleted) => m.deleted = deleted.iter().map(|(at, _)| object_of(at)).collect(),
            Err(e) => m.errors.push(format!("remote retention: {e}")),
        }
        if rc.per_cluster {
            // This node's own uploads under the cluster's prefix only: another node's may be
            // in flight. The cluster's retention is the same rule, applied by every node.
            abort_stale_uploads(rc, CLUSTER_NODE, &member, &mut m).await;
            match apply_retention(config, rc, CLUSTER_NODE).await {
                Ok(deleted) => m
                    .deleted
                    .extend(deleted.iter().map(|(at, _)| object_of(at))),
                Err(e) => m
                    .errors
                    .push(format!("remote retention of the cluster's copies: {e}")),
            }
        }
    }
    m
}

/// Aborts the multipart uploads of this node that a backup killed mid-upload left open (their
/// parts stay stored, and billed, until aborted). This runs under the backup lock, so none of
/// this node's own uploads is in flight: every open upload under its prefix with a snapshot's
/// name is stale. Servers that cannot list open uploads are said so in the log.
async fn abort_stale_uploads(
    rc: &DestinationConfig,
    under: &str,
    member: &str,
    m: &mut Maintenance,
) {
    let remote = match Remote::open(rc, under) {
        Ok(r) => r,
        Err(e) => return m.errors.push(format!("open multipart uploads: {e}")),
    };
    let open = match remote.open_uploads().await {
        Ok(open) => open,
        Err(ListError::Unsupported(why)) => {
            tracing::warn!(
                endpoint = remote.endpoint(),
                "this object store cannot list open multipart uploads ({why}): uploads left \
                 open by a backup killed mid-upload cannot be found and aborted by etcdguard; \
                 a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them"
            );
            return;
        }
        Err(ListError::Failed(e)) => {
            return m.errors.push(format!(
                "cannot list open multipart uploads in {}: {e}",
                remote.location(&remote.key_for(""))
            ))
        }
    };
    let mine = format!("-{}.db", crate::store::local::sanitize_member(member));
    for u in open
        .into_iter()
        .filter(|u| under == member || u.key.contains(&mine))
    {
        let started = u.initiated.map_or_else(
            || "at an unknown time".into(),
            |t| format!("at {}", t.to_rfc3339()),
        );
        match remote.abort_open_upload(&u).await {
            Ok(()) => {
                tracing::info!(object = %u.key, "aborted a multipart upload left open by an interrupted backup (started {started})");
                m.aborted_uploads
                    .push(format!("{} (started {started})", u.key));
            }
            Err(e) => m.errors.push(format!(
                "cannot abort the stale multipart upload of {}: {e}",
                remote.location(&u.key)
            )),
        }
    }
}

/// This node's (or the cluster's) snapshot objects with the time in each name.
async fn listed_snapshots(remote: &Remote) -> Result<Vec<(String, DateTime<Utc>)>, String> {
    Ok(remote
        .list_node()
        .await?
        .into_iter()
        .filter_map(|o| snapshot_time(&o.name).map(|t| (o.name, t)))
        .collect())
}

/// Object names of pinned snapshots at destination `dest`, from this node's records.
fn pinned_objects(
    config: &Config,
    dest: &str,
) -> Result<std::collections::HashSet<String>, String> {
    Ok(RecordStore::new(&config.state_dir)
        .load()
        .map_err(|e| e.to_string())?
        .records
        .iter()
        .filter(|r| r.pin.is_some())
        .filter_map(|r| r.copy(dest).map(|c| c.object_name().to_string()))
        .collect())
}

/// One remote deletion retention would make now: where, and why; `locked_until` when Object
/// Lock forbids it yet (retention keeps it until then).
#[derive(Debug, Clone)]
pub struct PlannedDeletion {
    pub location: String,
    pub reason: String,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Until when the copy `name` at `remote` is still locked at `now` (S3 Object Lock): what
/// this node's records say, or, for a destination that locks its copies, what the server says
/// (records lost with a rebuilt node still leave the lock there).
async fn still_locked(
    locks: &std::collections::HashMap<String, DateTime<Utc>>,
    remote: &Remote,
    name: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let until = match locks.get(name) {
        Some(t) => Some(*t),
        None if remote.locks() => remote
            .locked_until(&remote.key_for(name))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    until.filter(|t| *t > now)
}

/// Object name → locked until, of this node's copies at destination `dest`.
fn recorded_locks(
    config: &Config,
    dest: &str,
) -> Result<std::collections::HashMap<String, DateTime<Utc>>, String> {
    Ok(RecordStore::new(&config.state_dir)
        .load()
        .map_err(|e| e.to_string())?
        .records
        .iter()
        .filter_map(|r| r.copy(dest))
        .filter_map(|c| c.locked_until.map(|t| (c.object_name().to_string(), t)))
        .collect())
}

/// What remote retention would delete now under `<prefix><member>/` (`etcdguard prune
/// --dry-run`). Reads only: lists the objects and asks the sidecars of the candidates for pins.
pub async fn retention_plan(
    config: &Config,
    rc: &DestinationConfig,
    member: &str,
) -> Result<Vec<PlannedDeletion>, String> {
    if rc.retention.keeps_forever() {
        return Ok(Vec::new());
    }
    let remote = Remote::open(rc, member)?;
    let objects = listed_snapshots(&remote).await?;
    let pinned = pinned_objects(config, &rc.name)?;
    let locks = recorded_locks(config, &rc.name)?;
    let now = crate::clock::now();
    let mut plan = Vec::new();
    for d in retention::remote_deletions_at(
        &objects,
        &pinned,
        crate::clock::now(),
        rc.retention,
        &rc.table,
    ) {
        let key = remote.key_for(&objects[d.index].0);
        if let Ok(Record { pin: Some(_), .. }) = remote.read_sidecar(&key).await {
            continue;
        }
        plan.push(PlannedDeletion {
            location: remote.location(&key),
            reason: d.reason,
            locked_until: still_locked(&locks, &remote, &objects[d.index].0, now).await,
        });
    }
    Ok(plan)
}

/// The prefixes this node's remote retention covers: its own, and the cluster's with
/// `per = "cluster"` (every node applies the cluster's rule).
pub fn retention_prefixes(rc: &DestinationConfig, member: &str) -> Vec<String> {
    let mut v = vec![member.to_string()];
    if rc.per_cluster {
        v.push(CLUSTER_NODE.to_string());
    }
    v
}

/// Remote retention alone, for this node and (with `per = "cluster"`) the cluster's copies:
/// `etcdguard prune`. The caller holds the backup lock. What went (location, reason), and
/// the problems met.
pub async fn prune(config: &Config) -> (Vec<(String, String)>, Vec<String>) {
    let (mut gone, mut errors) = (Vec::new(), Vec::new());
    let member = match RecordStore::new(&config.state_dir).load() {
        Ok(f) => newest_member(&f.records),
        Err(e) => return (gone, vec![e.to_string()]),
    };
    for rc in &config.destinations {
        for who in member.iter().flat_map(|m| retention_prefixes(rc, m)) {
            match apply_retention(config, rc, &who).await {
                Ok(deleted) => gone.extend(deleted),
                Err(e) => errors.push(format!("remote retention of {}: {e}", rc.name)),
            }
        }
    }
    (gone, errors)
}

/// The object name at the end of a location (`s3://bucket/prefix/member/<name>`).
fn object_of(location: &str) -> String {
    location.rsplit('/').next().unwrap_or(location).to_string()
}

/// The member name of this node's newest record that has one.
pub fn newest_member(records: &[Record]) -> Option<String> {
    records
        .iter()
        .rev()
        .find_map(|r| r.member.as_ref().map(|m| m.name.clone()))
}

/// Deletes this node's remote snapshots that the rule selects (only names of our pattern
/// under `<prefix><member>/`), with their sidecars, and marks their records.
async fn apply_retention(
    config: &Config,
    rc: &DestinationConfig,
    member: &str,
) -> Result<Vec<(String, String)>, String> {
    if rc.retention.keeps_forever() {
        return Ok(Vec::new());
    }
    let remote = Remote::open(rc, member)?;
    let objects = listed_snapshots(&remote).await?;
    forget_missing_objects(config, &remote, &objects)?;
    for k in remote.delete_orphan_sidecars().await? {
        tracing::warn!(sidecar = %k, "deleted a sidecar whose snapshot object is gone");
    }
    // Pinned copies are outside the rule: this node's records say which; a copy's sidecar is
    // asked too before it goes (records lost with a rebuilt node still leave the pin there).
    let pinned = pinned_objects(config, &rc.name)?;
    let locks = recorded_locks(config, &rc.name)?;
    let now = crate::clock::now();
    let mut deleted = Vec::new();
    let mut reasons = Vec::new();
    for d in retention::remote_deletions_at(&objects, &pinned, now, rc.retention, &rc.table) {
        let name = &objects[d.index].0;
        if let Ok(Record { pin: Some(p), .. }) = remote.read_sidecar(&remote.key_for(name)).await {
            tracing::info!(file = %name, "retention keeps a remote snapshot: {} (its sidecar)", p.describe());
            continue;
        }
        if let Some(until) = still_locked(&locks, &remote, name, now).await {
            tracing::info!(
                file = %name,
                destination = %rc.name,
                "retention keeps a remote snapshot until {} ({}, but it is under Object Lock until then)",
                crate::records::rfc3339(until),
                d.reason
            );
            continue;
        }
        let gone = remote.delete_snapshot(name).await;
        crate::crashpoint::here("retention:object-deleted");
        match gone {
            Ok(()) => {
                tracing::info!(file = %name, reason = %d.reason, "retention deleted remote snapshot");
                deleted.push(name.clone());
                reasons.push(d.reason);
            }
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "retention could not delete a remote snapshot")
            }
        }
    }
    if !deleted.is_empty() {
        RecordStore::new(&config.state_dir)
            .update(crate::clock::now(), |f| {
                let primary = is_primary(config, rc);
                for r in f.records.iter_mut() {
                    let Some(c) = r.copy_mut(&rc.name) else {
                        continue;
                    };
                    if let Some(pos) = deleted.iter().position(|d| d == c.object_name()) {
                        c.deleted(now, reasons[pos].clone());
                        if let Some(b) = r.bundle.as_mut().filter(|_| primary) {
                            b.state = RemoteState::Deleted;
                        }
                    }
                }
                retention::trim_history(f, config.history);
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(deleted
        .iter()
        .zip(reasons)
        .map(|(name, why)| (remote.location(&remote.key_for(name)), why))
        .collect())
}

/// Records that say their copy is in the bucket under `remote`'s prefix while the listing
/// `objects` has no such object (a run killed between deleting it and recording that) are
/// marked deleted.
fn forget_missing_objects(
    config: &Config,
    remote: &Remote,
    objects: &[(String, DateTime<Utc>)],
) -> Result<(), String> {
    let prefix = remote.location(&remote.key_for(""));
    let missing = |c: &RemoteCopy| {
        matches!(c.state, RemoteState::Uploaded | RemoteState::Covered)
            && c.location
                .strip_prefix(&prefix)
                .is_some_and(|name| !name.contains('/') && !objects.iter().any(|(o, _)| o == name))
    };
    let file = RecordStore::new(&config.state_dir)
        .load()
        .map_err(|e| e.to_string())?;
    let dest = remote.name();
    if !file
        .records
        .iter()
        .filter_map(|r| r.copy(dest))
        .any(missing)
    {
        return Ok(());
    }
    let now = crate::clock::now();
    RecordStore::new(&config.state_dir)
        .update(now, |f| {
            for c in f.records.iter_mut().filter_map(|r| r.copy_mut(dest)) {
                if missing(c) {
                    tracing::warn!(object = %c.location, "a record names an object that is not at its destination: marked deleted");
                    c.deleted(
                        now,
                        "not in the bucket when retention looked (a run was killed while \
                         deleting it)"
                            .into(),
                    );
                }
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One snapshot in the bucket, from its sidecar.
#[derive(Debug, Clone)]
pub struct RemoteEntry {
    /// The node directory (`<prefix><node>/`).
    pub node: String,
    pub key: String,
    pub record: Record,
}

/// Every node's snapshots, from the sidecars under the shared prefix.
pub async fn list_remote(rc: &DestinationConfig) -> Result<Vec<RemoteEntry>, String> {
    let remote = Remote::open(rc, "-")?;
    let mut out = Vec::new();
    for (key, bytes) in remote.all_sidecars().await? {
        let snapshot_key = key.trim_end_matches(".json").to_string();
        let rel = snapshot_key
            .strip_prefix(&rc.prefix)
            .unwrap_or(&snapshot_key);
        let node = rel
            .rsplit_once('/')
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) => out.push(RemoteEntry {
                node,
                key: snapshot_key,
                record,
            }),
            Err(e) => tracing::warn!(key = %key, "sidecar does not parse: {e}"),
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.record.backup_timestamp));
    Ok(out)
}
