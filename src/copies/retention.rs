//! Remote retention for this node (and, with `per = "cluster"`, the cluster's copies): the
//! same rule as local retention over the objects (in the order this node recorded them; by
//! the times in their names where its records do not know them), pins (records and sidecars) and
//! S3 Object Lock honoured; the open multipart uploads a killed run left aborted; records
//! that name an object the destination lost marked deleted. `etcdguard prune` (and its dry
//! run) is here too: local and remote retention now, without a backup.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{local, newest_member, Maintenance};
use crate::cluster::CLUSTER_NODE;
use crate::config::{Config, DestinationConfig};
use crate::records::{Record, RecordStore, RecordsError, RemoteCopy, RemoteState};
use crate::retention;
use crate::state::{LockError, StateDir};
use crate::store::local::{snapshot_time, LocalStore};
use crate::store::remote::{ListError, NodeListing, Remote};

/// One destination's retention after a backup or a retry pass: stale open uploads aborted,
/// then retention, for this node and (with `per = "cluster"`) the cluster's copies.
pub(super) async fn maintain(
    config: &Config,
    rc: &DestinationConfig,
    member: &str,
    m: &mut Maintenance,
) {
    abort_stale_uploads(rc, member, member, m).await;
    match apply(config, rc, member).await {
        Ok(deleted) => m.deleted = deleted.iter().map(|(at, _)| object_of(at)).collect(),
        Err(e) => m.errors.push(format!("remote retention: {e}")),
    }
    if rc.per_cluster {
        // This node's own uploads under the cluster's prefix only: another node's may be
        // in flight. The cluster's retention is the same rule, applied by every node.
        abort_stale_uploads(rc, CLUSTER_NODE, member, m).await;
        match apply(config, rc, CLUSTER_NODE).await {
            Ok(deleted) => m
                .deleted
                .extend(deleted.iter().map(|(at, _)| object_of(at))),
            Err(e) => m
                .errors
                .push(format!("remote retention of the cluster's copies: {e}")),
        }
    }
}

/// The endpoints that answered that they cannot list open uploads: asked once per process
/// (the daemon's log says it once, not every hour).
static CANNOT_LIST: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Aborts the multipart uploads of this node that a backup killed mid-upload left open (their
/// parts stay stored, and billed, until aborted). This runs under the backup lock, so none of
/// this node's own uploads is in flight: every open upload under its prefix with a snapshot's
/// name is stale. Servers that cannot list open uploads are said so in the log, once.
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
    let known = |e: &str| CANNOT_LIST.lock().is_ok_and(|l| l.iter().any(|k| k == e));
    if known(remote.endpoint()) {
        return;
    }
    let open = match remote.open_uploads().await {
        Ok(open) => open,
        Err(ListError::Unsupported(why)) => {
            if let Ok(mut l) = CANNOT_LIST.lock() {
                l.push(remote.endpoint().to_string());
            }
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

/// The listed snapshot objects of this node (or the cluster) with the time in each name.
fn timed(listed: &NodeListing) -> Vec<(String, DateTime<Utc>)> {
    listed
        .snapshots
        .iter()
        .filter_map(|o| snapshot_time(&o.name).map(|t| (o.name.clone(), t)))
        .collect()
}

/// What this node's records say of its copies at destination `dest`: the object names of
/// pinned snapshots, and until when each locked copy is locked.
struct Recorded {
    /// Object name → the position of its record (retention's order: the records').
    order: HashMap<String, usize>,
    pinned: HashSet<String>,
    locks: HashMap<String, DateTime<Utc>>,
}

impl Recorded {
    fn load(config: &Config, dest: &str) -> Result<Recorded, String> {
        let records = RecordStore::new(&config.state_dir)
            .load()
            .map_err(|e| e.to_string())?
            .records;
        let copies = || records.iter().filter_map(|r| r.copy(dest).map(|c| (r, c)));
        Ok(Recorded {
            order: records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.copy(dest).map(|c| (c.object_name().to_string(), i)))
                .collect(),
            pinned: copies()
                .filter(|(r, _)| r.pin.is_some())
                .map(|(_, c)| c.object_name().to_string())
                .collect(),
            locks: copies()
                .filter_map(|(_, c)| c.locked_until.map(|t| (c.object_name().to_string(), t)))
                .collect(),
        })
    }

    /// Until when the copy `name` at `remote` is still locked at `now` (S3 Object Lock): what
    /// this node's records say, or, for a destination that locks its copies, what the server
    /// says (records lost with a rebuilt node still leave the lock there).
    async fn locked_until(
        &self,
        remote: &Remote,
        name: &str,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let until = match self.locks.get(name) {
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
}

/// One remote deletion retention would make now: where, and why; `locked_until` when Object
/// Lock forbids it yet (retention keeps it until then).
#[derive(Debug, Clone)]
pub struct PlannedDeletion {
    pub location: String,
    pub reason: String,
    pub locked_until: Option<DateTime<Utc>>,
}

/// What remote retention would delete now under `<prefix><member>/` (`etcdguard prune
/// --dry-run`). Reads only: lists the objects and asks the sidecars of the candidates for pins.
pub async fn plan(
    config: &Config,
    rc: &DestinationConfig,
    member: &str,
) -> Result<Vec<PlannedDeletion>, String> {
    if rc.retention.keeps_forever() {
        return Ok(Vec::new());
    }
    let remote = Remote::open(rc, member)?;
    let objects = timed(&remote.list_node().await?);
    let recorded = Recorded::load(config, &rc.name)?;
    let now = crate::clock::now();
    let mut plan = Vec::new();
    for d in retention::remote_deletions_at(
        &objects,
        &recorded.order,
        &recorded.pinned,
        now,
        rc.retention,
        &rc.table,
    ) {
        let name = &objects[d.index].0;
        let key = remote.key_for(name);
        if let Ok(Record { pin: Some(_), .. }) = remote.read_sidecar(&key).await {
            continue;
        }
        plan.push(PlannedDeletion {
            location: remote.location(&key),
            reason: d.reason,
            locked_until: recorded.locked_until(&remote, name, now).await,
        });
    }
    Ok(plan)
}

/// The prefixes this node's remote retention covers: its own, and the cluster's with
/// `per = "cluster"` (every node applies the cluster's rule).
fn prefixes(rc: &DestinationConfig, member: &str) -> Vec<String> {
    let mut v = vec![member.to_string()];
    if rc.per_cluster {
        v.push(CLUSTER_NODE.to_string());
    }
    v
}

/// The object name at the end of a location (`s3://bucket/prefix/member/<name>`).
fn object_of(location: &str) -> String {
    location.rsplit('/').next().unwrap_or(location).to_string()
}

/// Deletes this node's remote snapshots that the rule selects (only names of our pattern
/// under `<prefix><member>/`), with their sidecars, and marks their records; (location,
/// reason) of each deleted.
async fn apply(
    config: &Config,
    rc: &DestinationConfig,
    member: &str,
) -> Result<Vec<(String, String)>, String> {
    if rc.retention.keeps_forever() {
        return Ok(Vec::new());
    }
    let remote = Remote::open(rc, member)?;
    // One listing serves the rule and the orphaned sidecars.
    let listed = remote.list_node().await?;
    let objects = timed(&listed);
    forget_missing_objects(config, &remote, &objects)?;
    for k in remote.delete_orphan_sidecars(&listed).await? {
        tracing::warn!(sidecar = %k, "deleted a sidecar whose snapshot object is gone");
    }
    // Pinned copies are outside the rule: this node's records say which; a copy's sidecar is
    // asked too before it goes (records lost with a rebuilt node still leave the pin there).
    let recorded = Recorded::load(config, &rc.name)?;
    let now = crate::clock::now();
    let mut deleted: Vec<(String, String)> = Vec::new();
    for d in retention::remote_deletions_at(
        &objects,
        &recorded.order,
        &recorded.pinned,
        now,
        rc.retention,
        &rc.table,
    ) {
        let name = &objects[d.index].0;
        if let Ok(Record { pin: Some(p), .. }) = remote.read_sidecar(&remote.key_for(name)).await {
            tracing::info!(file = %name, "retention keeps a remote snapshot: {} (its sidecar)", p.describe());
            continue;
        }
        if let Some(until) = recorded.locked_until(&remote, name, now).await {
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
                deleted.push((name.clone(), d.reason));
            }
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "retention could not delete a remote snapshot")
            }
        }
    }
    if !deleted.is_empty() {
        record_deletions(config, rc, &deleted, now)?;
    }
    Ok(deleted
        .into_iter()
        .map(|(name, why)| (remote.location(&remote.key_for(&name)), why))
        .collect())
}

/// Marks the copies of the deleted objects (name, reason) deleted in their records, the
/// bundle with the primary destination's copy.
fn record_deletions(
    config: &Config,
    rc: &DestinationConfig,
    deleted: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<(), String> {
    let primary = config.is_primary(&rc.name);
    RecordStore::new(&config.state_dir)
        .update(crate::clock::now(), |f| {
            for r in f.records.iter_mut() {
                let Some(c) = r.copy_mut(&rc.name) else {
                    continue;
                };
                if let Some((_, why)) = deleted.iter().find(|(n, _)| n == c.object_name()) {
                    c.deleted(now, why.clone());
                    if let Some(b) = r.bundle.as_mut().filter(|_| primary) {
                        b.state = RemoteState::Deleted;
                    }
                }
            }
            retention::trim_history(f, config.history);
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
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

/// Why `prune` did nothing at all.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Another backup holds the lock, or the state dir is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Records(#[from] RecordsError),
}

/// What `etcdguard prune` deleted, or with `dry_run` would delete: (where, why) per copy.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub local: Vec<(String, String)>,
    /// Per destination (its name), what went (or would go) there.
    pub remote: Vec<(String, Vec<(String, String)>)>,
    /// Copies the rule would delete but Object Lock keeps (dry run): destination, where, why.
    pub locked: Vec<(String, String, String)>,
    /// Problems that stopped part of it (the rest was still done).
    pub errors: Vec<String>,
}

/// Applies retention now, locally and remotely, without taking a backup (`etcdguard prune`),
/// under the backup lock. With `dry_run`, only says what would go: no lock, nothing changed.
pub async fn prune(config: &Config, dry_run: bool) -> Result<PruneReport, PruneError> {
    if dry_run {
        return prune_plan(config).await;
    }
    let _lock = StateDir::new(&config.state_dir).lock_backup()?;
    let store = LocalStore::new(&config.local_storage.path);
    let rule = config.local_storage.retention;
    let now = crate::clock::now();
    let mut report = PruneReport::default();
    let mut warnings = Vec::new();
    let member = RecordStore::new(&config.state_dir)
        .update(now, |file| {
            let deleted =
                local::apply_retention(&mut file.records, &store, now, rule, &mut warnings);
            // The reasons from the records, before the history drops any of them.
            let why = |name: &String| {
                file.records
                    .iter()
                    .filter_map(|r| r.local.as_ref())
                    .find(|l| l.path == store.path_of(name))
                    .and_then(|l| l.deleted_reason.clone())
                    .unwrap_or_default()
            };
            report.local = deleted
                .iter()
                .map(|n| (store.path_of(n).display().to_string(), why(n)))
                .collect();
            retention::trim_history(file, config.history);
            newest_member(&file.records)
        })?
        .0;
    report.errors.extend(warnings);
    for rc in &config.destinations {
        let mut gone = Vec::new();
        for who in member.iter().flat_map(|m| prefixes(rc, m)) {
            match apply(config, rc, &who).await {
                Ok(deleted) => gone.extend(deleted),
                Err(e) => report
                    .errors
                    .push(format!("remote retention of {}: {e}", rc.name)),
            }
        }
        report.remote.push((rc.name.clone(), gone));
    }
    Ok(report)
}

/// `prune --dry-run`: what retention would delete now, locally and at every destination.
async fn prune_plan(config: &Config) -> Result<PruneReport, PruneError> {
    let store = LocalStore::new(&config.local_storage.path);
    let file = RecordStore::new(&config.state_dir).load()?;
    let mut report = PruneReport {
        local: local::plan(
            &file.records,
            &store,
            crate::clock::now(),
            config.local_storage.retention,
        ),
        ..PruneReport::default()
    };
    let member = newest_member(&file.records);
    for rc in &config.destinations {
        let mut would = Vec::new();
        for who in member.iter().flat_map(|m| prefixes(rc, m)) {
            match plan(config, rc, &who).await {
                Ok(planned) => {
                    for p in planned {
                        match p.locked_until {
                            None => would.push((p.location, p.reason)),
                            Some(t) => report.locked.push((
                                rc.name.clone(),
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
        report.remote.push((rc.name.clone(), would));
    }
    Ok(report)
}
