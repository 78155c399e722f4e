//! The records file: one record per backup attempt, in `<state_dir>/records.json`.
//!
//! Writers take `<state_dir>/records.lock`, read, change and atomically replace the file, so two
//! writers never lose each other's records and a reader never sees half a file. A file that
//! does not parse is never silently reset: writers move it aside with a timestamp and say so;
//! readers report it and change nothing.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::state::StateDir;

pub const RECORDS_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Success,
    Failed,
    /// A scheduled slot that was not taken because a backup was still running.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    Manual,
    CatchUp,
    /// Not a backup: a restore from a snapshot (`etcdguard restore`).
    Restore,
    /// Not a backup: a rollback of a restore.
    Rollback,
    /// Not a backup: a restore drill (`etcdguard drill`, or the daemon's `[drill]` schedule).
    Drill,
    /// A snapshot a killed run published but did not record, verified and adopted by the
    /// next run.
    Adopted,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::CatchUp => "catch-up",
            Trigger::Restore => "restore",
            Trigger::Rollback => "rollback",
            Trigger::Drill => "drill",
            Trigger::Adopted => "adopted",
        }
    }

    /// True for backup attempts (what metrics, status and backup counters look at).
    pub fn is_backup(self) -> bool {
        matches!(self, Trigger::Schedule | Trigger::Manual | Trigger::CatchUp)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub name: String,
    /// Member ID in etcd's lowercase hex form; absent when etcd could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    Present,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalCopy {
    pub path: PathBuf,
    pub state: CopyState,
    /// Set when the local file is sealed (`encrypt_local`): its own sha256 and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedCopy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why it was deleted (retention rule, or "file was already gone").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_reason: Option<String>,
}

/// State of a snapshot's remote copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteState {
    /// Not uploaded yet; retried with backoff while the local copy exists.
    Pending,
    /// Uploaded and verified (size, ETag where comparable), sidecar written.
    Uploaded,
    /// Given up: the local copy is gone (expired, deleted) before an upload succeeded.
    Failed,
    /// Deleted by remote retention.
    Deleted,
    /// `per = "cluster"`: this slot's copy is another node's upload (`cluster.uploader`, at
    /// `location`); nothing of this node's is in the bucket for it.
    Covered,
}

impl RemoteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteState::Pending => "pending",
            RemoteState::Uploaded => "uploaded",
            RemoteState::Failed => "failed",
            RemoteState::Deleted => "deleted",
            RemoteState::Covered => "covered",
        }
    }
}

/// The remote copy of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteCopy {
    /// The destination's name (`[remote_storage]` is `remote` unless it names itself; records
    /// written before destinations had names are `remote`'s).
    #[serde(default = "default_destination")]
    pub destination: String,
    /// `s3://<bucket>/<key>`, `gs://…`, `azblob://<account>/<container>/…`, `file:///…`.
    pub location: String,
    pub state: RemoteState,
    /// Upload attempts so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When a pending upload is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<DateTime<Utc>>,
    /// What the server reported after the upload (ETag), for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Set when the object is the snapshot compressed and encrypted (`[encryption]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedCopy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_reason: Option<String>,
    /// `per = "cluster"`: the slot this copy is of, and who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterCopy>,
    /// S3 Object Lock: nobody can delete the object before this time; retention waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
}

fn default_destination() -> String {
    crate::config::DEFAULT_DESTINATION.to_string()
}

/// A record's copies as JSON: `remote`, the copy at the first destination (what records had
/// before there were several, so version 1 readers go on working), and `moreRemotes`, the
/// copies at the others, each naming its destination.
mod copies_json {
    use super::RemoteCopy;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<&'a RemoteCopy>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        more_remotes: &'a [RemoteCopy],
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        #[serde(default)]
        remote: Option<RemoteCopy>,
        #[serde(default)]
        more_remotes: Vec<RemoteCopy>,
    }

    pub fn serialize<S: Serializer>(v: &[RemoteCopy], s: S) -> Result<S::Ok, S::Error> {
        Out {
            remote: v.first(),
            more_remotes: v.get(1..).unwrap_or(&[]),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RemoteCopy>, D::Error> {
        let w = In::deserialize(d)?;
        Ok(w.remote.into_iter().chain(w.more_remotes).collect())
    }
}

/// The cluster side of a scheduled backup's remote copy (`per = "cluster"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCopy {
    /// The schedule's slot (the same on every node).
    pub slot: DateTime<Utc>,
    /// The member whose upload is the slot's copy (this one when it uploaded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<String>,
    /// Why this node uploaded its own copy under its own prefix instead (no quorum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A sealed object: how it was made from the snapshot (public facts only) and its own
/// checksum and size (the record's `sha256` and `sizeBytes` stay the plain snapshot's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedCopy {
    #[serde(flatten)]
    pub sealing: crate::encryption::Sealing,
    pub object_sha256: String,
    pub object_size_bytes: u64,
}

/// Delay before retry number `attempts + 1`: 1 min, doubling, at most an hour.
pub fn backoff(attempts: u32) -> chrono::Duration {
    let minutes = 1i64 << attempts.saturating_sub(1).min(6);
    chrono::Duration::minutes(minutes.min(60))
}

/// Every change of a remote copy's state is one of these verbs.
impl RemoteCopy {
    /// True while the object may exist in the bucket.
    pub fn may_exist(&self) -> bool {
        self.state == RemoteState::Uploaded
    }

    fn first(
        destination: &str,
        location: String,
        state: RemoteState,
        now: DateTime<Utc>,
    ) -> RemoteCopy {
        RemoteCopy {
            destination: destination.to_string(),
            location,
            state,
            attempts: 1,
            last_error: None,
            last_attempt_at: Some(now),
            next_attempt_at: None,
            uploaded_at: None,
            etag: None,
            sealed: None,
            deleted_at: None,
            deleted_reason: None,
            cluster: None,
            locked_until: None,
        }
    }

    /// The copy is locked until `until` (Object Lock), or not.
    pub fn with_lock(mut self, until: Option<DateTime<Utc>>) -> RemoteCopy {
        self.locked_until = until;
        self
    }

    /// `per = "cluster"`: `uploader` claimed the slot and uploads `location`; confirmed (or
    /// taken over) by a retry after `wait`.
    pub fn covered_pending(
        destination: &str,
        location: String,
        now: DateTime<Utc>,
        cluster: ClusterCopy,
        wait: chrono::Duration,
    ) -> RemoteCopy {
        let who = cluster.uploader.clone().unwrap_or_default();
        let mut c = RemoteCopy::first(destination, location, RemoteState::Pending, now);
        c.attempts = 0;
        c.last_error = Some(format!("{who} uploads this slot's copy; not confirmed yet"));
        c.next_attempt_at = Some(now + wait);
        c.cluster = Some(cluster);
        c
    }

    /// `per = "cluster"`: the slot's copy is `uploader`'s object at `location`, confirmed.
    pub fn covered(&mut self, now: DateTime<Utc>, location: String, uploader: String) {
        self.state = RemoteState::Covered;
        self.location = location;
        self.uploaded_at = Some(now);
        self.next_attempt_at = None;
        self.last_error = None;
        if let Some(c) = self.cluster.as_mut() {
            c.uploader = Some(uploader);
        }
    }

    /// `per = "cluster"`: the slot's uploader has not finished yet; look again after `wait`.
    pub fn still_covered_pending(
        &mut self,
        now: DateTime<Utc>,
        why: String,
        wait: chrono::Duration,
    ) {
        self.last_attempt_at = Some(now);
        self.last_error = Some(why);
        self.next_attempt_at = Some(now + wait);
    }

    /// Uploaded and verified with the backup, on the first attempt.
    pub fn uploaded(
        destination: &str,
        location: String,
        now: DateTime<Utc>,
        etag: Option<String>,
        sealed: Option<SealedCopy>,
    ) -> RemoteCopy {
        let mut c = RemoteCopy::first(destination, location, RemoteState::Uploaded, now);
        c.uploaded_at = Some(now);
        c.etag = etag;
        c.sealed = sealed;
        c
    }

    /// The object's name (the last part of its key).
    pub fn object_name(&self) -> &str {
        self.location.rsplit('/').next().unwrap_or("")
    }

    /// The first attempt failed: retried from the local file after the backoff.
    pub fn pending(
        destination: &str,
        location: String,
        now: DateTime<Utc>,
        error: String,
    ) -> RemoteCopy {
        let mut c = RemoteCopy::first(destination, location, RemoteState::Pending, now);
        c.retry_later(now, error);
        c
    }

    /// Not done after all (the sidecar failed, say): pending again, retried after the backoff.
    pub fn retry_later(&mut self, now: DateTime<Utc>, error: String) {
        self.state = RemoteState::Pending;
        self.uploaded_at = None;
        self.last_error = Some(error);
        self.next_attempt_at = Some(now + backoff(self.attempts));
    }

    /// One more attempt at `now`, uploaded to `location` (the sealing in force now may
    /// differ from the backup's).
    pub fn retried_uploaded(
        &mut self,
        now: DateTime<Utc>,
        location: String,
        etag: Option<String>,
        sealed: Option<SealedCopy>,
    ) {
        self.location = location;
        self.sealed = sealed;
        self.attempts += 1;
        self.last_attempt_at = Some(now);
        self.state = RemoteState::Uploaded;
        self.next_attempt_at = None;
        self.uploaded_at = Some(now);
        self.last_error = None;
        self.etag = etag;
    }

    /// One more attempt at `now`, failed: retried later.
    pub fn retried_failed(&mut self, now: DateTime<Utc>, error: String) {
        self.attempts += 1;
        self.last_attempt_at = Some(now);
        self.retry_later(now, error);
    }

    /// Given up: nothing left to upload. `why` is said with the last error.
    pub fn give_up(&mut self, why: &str) {
        self.state = RemoteState::Failed;
        self.next_attempt_at = None;
        self.last_error = Some(format!(
            "{why} (last error: {})",
            self.last_error.as_deref().unwrap_or("none")
        ));
    }

    /// A copy of a cluster slot (`cluster` set), as uploaded or as a fallback.
    pub fn with_cluster(mut self, cluster: Option<ClusterCopy>) -> RemoteCopy {
        self.cluster = cluster;
        self
    }

    /// True for a pending copy that waits for another node's upload of its slot (not for a
    /// fallback, which uploads this node's own copy).
    pub fn waits_for_cluster(&self) -> bool {
        self.state == RemoteState::Pending
            && self.cluster.as_ref().is_some_and(|c| c.fallback.is_none())
    }

    /// Deleted from the bucket by remote retention.
    pub fn deleted(&mut self, now: DateTime<Utc>, reason: String) {
        self.state = RemoteState::Deleted;
        self.deleted_at = Some(now);
        self.deleted_reason = Some(reason);
        self.next_attempt_at = None;
    }
}

impl LocalCopy {
    /// A snapshot just published at `path` (sealed when `sealed` says how).
    pub fn present(path: PathBuf, sealed: Option<SealedCopy>) -> LocalCopy {
        LocalCopy {
            path,
            state: CopyState::Present,
            sealed,
            deleted_at: None,
            deleted_reason: None,
        }
    }

    /// Deleted by local retention.
    pub fn deleted(&mut self, now: DateTime<Utc>, reason: String) {
        self.state = CopyState::Deleted;
        self.deleted_at = Some(now);
        self.deleted_reason = Some(reason);
    }
}

/// One backup attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub backup_timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
    /// The member's server version (`Status.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// The member's storage version (`Status.storageVersion`, etcd ≥ 3.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_version: Option<String>,
    /// The snapshot's own storage version (`SnapshotResponse.version`, etcd ≥ 3.6; absent
    /// while the cluster version is not yet set): what a restore must run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub duration_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalCopy>,
    /// The copies at the destinations, one per destination (in the configuration's order
    /// when the backup was taken); empty when none is configured. JSON: `remote` and
    /// `moreRemotes` ([`copies_json`]).
    #[serde(flatten, with = "copies_json")]
    pub remotes: Vec<RemoteCopy>,
    /// The node recovery bundle made with the remote copy (`[bundle]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleCopy>,
    /// A pinned snapshot is kept by every retention, local and remote, until unpinned
    /// (`snapshot --pin`, `pin`, `unpin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// What etcd said of its own health when the backup was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// A drill record: which snapshot was restored, and every check's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

/// What a restore drill did: the snapshot it restored into a scratch dir and what it checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drill {
    /// The record of the drilled snapshot, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// `local`, `remote` (downloaded) or `file` (named by hand).
    pub source: String,
    /// The backup time of the drilled snapshot, when its record says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_timestamp: Option<DateTime<Utc>>,
    /// The etcd minor the data dir was built for (this node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    pub checks: Vec<DrillCheck>,
}

/// One check of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillCheck {
    pub name: String,
    /// `passed`, `failed`, or `skipped` (an earlier check failed, or it is off).
    pub result: String,
    pub detail: String,
}
/// etcd's health when a backup was taken: alarms, the database against its quota, raft
/// progress. Warnings never fail a backup (a sick cluster is the one most worth backing up);
/// they are said in the record, the log and `records`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Active alarms: `NOSPACE on member 8e9e05c52164694d`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
    pub db_size_bytes: u64,
    pub db_size_in_use_bytes: u64,
    pub quota_bytes: u64,
    /// Where the quota comes from: `etcd` (3.6+ reports it), `manifest` (its
    /// `--quota-backend-bytes`), or `default` (etcd's 2 GiB).
    pub quota_source: String,
    pub is_learner: bool,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    /// The leader's raft index when the backup was taken (asked over its client URL); absent
    /// when this member is the leader's only view (no leader, or it did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_raft_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// etcd's backend quota when none is set.
pub const DEFAULT_QUOTA: u64 = 2 << 30;
/// A database above this share of its quota is a warning.
pub const QUOTA_WARN_PERCENT: u64 = 80;
/// Committed but not yet applied entries above this are a warning.
pub const APPLY_LAG_WARN: u64 = 1000;

impl Health {
    /// The facts etcd reported and the warnings they call for. Pure.
    #[allow(clippy::too_many_arguments)]
    pub fn assess(
        alarms: &[(u64, String)],
        alarms_error: Option<&str>,
        db_size: u64,
        db_size_in_use: u64,
        reported_quota: u64,
        manifest_quota: Option<u64>,
        is_learner: bool,
        raft_index: u64,
        raft_applied_index: u64,
    ) -> Health {
        let (quota_bytes, quota_source) = match (reported_quota, manifest_quota) {
            (q, _) if q > 0 => (q, "etcd"),
            (_, Some(q)) => (q, "manifest"),
            _ => (DEFAULT_QUOTA, "default"),
        };
        let alarms: Vec<String> = alarms
            .iter()
            .map(|(m, a)| format!("{a} on member {m:x}"))
            .collect();
        let mut warnings: Vec<String> = alarms
            .iter()
            .map(|a| {
                let fix = if a.starts_with("NOSPACE") {
                    "etcd takes no writes until the space is freed (compact, defragment) and the \
                     alarm disarmed"
                } else {
                    "a member's data differs from the others'; restore it from a good snapshot"
                };
                format!("etcd alarm {a} is active: {fix}")
            })
            .collect();
        if let Some(e) = alarms_error {
            warnings.push(format!("etcd's alarm list could not be read: {e}"));
        }
        if db_size.saturating_mul(100) >= quota_bytes.saturating_mul(QUOTA_WARN_PERCENT) {
            warnings.push(format!(
                "the database is {} MiB, {}% of its {} MiB quota ({}): at the quota etcd \
                 raises NOSPACE and takes no writes; compact and defragment, or raise \
                 --quota-backend-bytes",
                db_size >> 20,
                db_size * 100 / quota_bytes.max(1),
                quota_bytes >> 20,
                quota_source
            ));
        }
        if is_learner {
            warnings.push(
                "the member is a learner: its data may trail the cluster's; a voting member's \
                 snapshot is the one to restore from"
                    .into(),
            );
        }
        let lag = raft_index.saturating_sub(raft_applied_index);
        if lag > APPLY_LAG_WARN {
            warnings.push(format!(
                "the member has applied {lag} fewer raft entries than it has committed: the \
                 snapshot may trail the cluster"
            ));
        }
        Health {
            alarms,
            db_size_bytes: db_size,
            db_size_in_use_bytes: db_size_in_use,
            quota_bytes,
            quota_source: quota_source.into(),
            is_learner,
            raft_index,
            raft_applied_index,
            leader_raft_index: None,
            warnings,
        }
    }

    /// The leader's raft index: a member that has applied more than [`APPLY_LAG_WARN`]
    /// entries fewer than the leader committed trails the cluster, and so does its snapshot.
    /// Pure.
    pub fn with_leader(mut self, leader_raft_index: Option<u64>) -> Health {
        self.leader_raft_index = leader_raft_index;
        let lag = leader_raft_index.map_or(0, |l| l.saturating_sub(self.raft_applied_index));
        if lag > APPLY_LAG_WARN {
            self.warnings.push(format!(
                "the member has applied {lag} fewer raft entries than the leader has: the \
                 snapshot trails the cluster (a member catching up, or cut off from the leader)"
            ));
        }
        self
    }
}

/// Why and since when a snapshot is pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    pub pinned_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Pin {
    /// `pinned 2026-12-02T10:00:00Z (before kubeadm upgrade)`.
    pub fn describe(&self) -> String {
        match &self.label {
            Some(l) => format!("pinned {} ({l})", rfc3339(self.pinned_at)),
            None => format!("pinned {}", rfc3339(self.pinned_at)),
        }
    }
}

/// A node recovery bundle beside a remote copy: where it is and what it holds (paths, never
/// contents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleCopy {
    /// `s3://<bucket>/<key>`.
    pub location: String,
    /// `uploaded`, `failed` (with `lastError`) or `deleted` (with its snapshot).
    pub state: RemoteState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_size_bytes: Option<u64>,
    /// Files in the bundle.
    pub files: usize,
    /// Its trees (with file counts) and single files.
    pub holds: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What a successful backup found, for its record.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    pub file_name: String,
    pub path: PathBuf,
    pub member: Member,
    pub etcd_version: String,
    pub storage_version: Option<String>,
    pub snapshot_version: Option<String>,
    pub revision: i64,
    pub size_bytes: u64,
    pub sha256: String,
    /// The local file is sealed (`encrypt_local`).
    pub local_sealed: Option<SealedCopy>,
    pub health: Option<Health>,
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot `name`.db taken at `at` (revision 42, 1000 bytes), for unit tests.
    pub fn example(name: &str, at: DateTime<Utc>) -> Snapshot {
        Snapshot {
            at,
            file_name: format!("{name}.db"),
            path: PathBuf::from(format!("/s/{name}.db")),
            member: Member {
                name: "cp1".into(),
                id: None,
                endpoint: "https://127.0.0.1:2379".into(),
            },
            etcd_version: "3.5.30".into(),
            storage_version: None,
            snapshot_version: None,
            revision: 42,
            size_bytes: 1000,
            sha256: "0".repeat(64),
            local_sealed: None,
            health: None,
        }
    }
}

/// Every record is made by one of these constructors.
impl Record {
    fn empty(at: DateTime<Utc>, result: Outcome, trigger: Trigger, duration: f64) -> Record {
        Record {
            id: new_record_id(at),
            backup_timestamp: at,
            file_name: None,
            result,
            reason: None,
            trigger,
            member: None,
            etcd_version: None,
            storage_version: None,
            snapshot_version: None,
            revision: None,
            size_bytes: None,
            sha256: None,
            duration_seconds: duration,
            local: None,
            remotes: Vec::new(),
            bundle: None,
            pin: None,
            health: None,
            drill: None,
        }
    }

    /// A drill started at `at` of the snapshot `file_name` (revision, sha256 as far as known);
    /// it passed when every check that ran passed. The reason names the first failed check.
    pub fn drill(
        at: DateTime<Utc>,
        member: Option<Member>,
        snapshot: Option<(String, Option<i64>, Option<String>)>,
        drill: Drill,
        duration: f64,
    ) -> Record {
        let failed = drill
            .checks
            .iter()
            .find(|c| c.result == "failed")
            .map(|c| format!("drill check `{}` failed: {}", c.name, c.detail));
        let (file_name, revision, sha256) = match snapshot {
            Some((f, r, s)) => (Some(f), r, s),
            None => (None, None, None),
        };
        Record {
            file_name,
            member,
            revision,
            sha256,
            drill: Some(drill),
            reason: failed.clone(),
            ..Record::empty(
                at,
                if failed.is_some() {
                    Outcome::Failed
                } else {
                    Outcome::Success
                },
                Trigger::Drill,
                duration,
            )
        }
    }

    /// A backup that produced `s` (the remote copy, if any, is added by the caller).
    pub fn backup_succeeded(s: Snapshot, trigger: Trigger, duration: f64) -> Record {
        Record {
            file_name: Some(s.file_name),
            member: Some(s.member),
            etcd_version: Some(s.etcd_version),
            storage_version: s.storage_version,
            snapshot_version: s.snapshot_version,
            revision: Some(s.revision),
            size_bytes: Some(s.size_bytes),
            sha256: Some(s.sha256),
            local: Some(LocalCopy::present(s.path, s.local_sealed)),
            health: s.health,
            ..Record::empty(s.at, Outcome::Success, trigger, duration)
        }
    }

    /// A backup attempt started at `at` that failed; what was known of the member is kept.
    pub fn backup_failed(
        at: DateTime<Utc>,
        trigger: Trigger,
        reason: String,
        member: Option<Member>,
        etcd_version: Option<String>,
        duration: f64,
    ) -> Record {
        Record {
            reason: Some(reason),
            member,
            etcd_version,
            ..Record::empty(at, Outcome::Failed, trigger, duration)
        }
    }

    /// A scheduled slot not taken.
    pub fn skipped(at: DateTime<Utc>, trigger: Trigger, reason: String) -> Record {
        Record {
            reason: Some(reason),
            ..Record::empty(at, Outcome::Skipped, trigger, 0.0)
        }
    }

    /// A restore or rollback from `snapshot`; `planned` is the revision and the snapshot's
    /// sha256 from the journal, when it got that far.
    pub fn restore(
        trigger: Trigger,
        at: DateTime<Utc>,
        snapshot: &Path,
        member: Option<Member>,
        planned: Option<(i64, String)>,
        result: Result<(), &str>,
        duration: f64,
    ) -> Record {
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failed
        };
        let (revision, sha256) = planned.unzip();
        Record {
            file_name: snapshot
                .file_name()
                .map(|s| s.to_string_lossy().into_owned()),
            reason: result.err().map(str::to_string),
            member,
            revision,
            sha256,
            ..Record::empty(at, outcome, trigger, duration)
        }
    }

    /// The copy at destination `name`.
    pub fn copy(&self, name: &str) -> Option<&RemoteCopy> {
        self.remotes.iter().find(|c| c.destination == name)
    }

    pub fn copy_mut(&mut self, name: &str) -> Option<&mut RemoteCopy> {
        self.remotes.iter_mut().find(|c| c.destination == name)
    }

    /// Sets the copy of `c.destination`, replacing the one there was.
    pub fn set_copy(&mut self, c: RemoteCopy) {
        match self.copy_mut(&c.destination) {
            Some(old) => *old = c,
            None => self.remotes.push(c),
        }
    }

    pub fn is_good_local(&self) -> bool {
        self.result == Outcome::Success
            && self
                .local
                .as_ref()
                .is_some_and(|l| l.state == CopyState::Present)
    }
}

/// Counters since the records file was created; never decreased by history pruning, so
/// they can be exported as Prometheus counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub success: u64,
    pub failed: u64,
    pub skipped: u64,
    #[serde(default)]
    pub drill_success: u64,
    #[serde(default)]
    pub drill_failed: u64,
}

/// What the daemon must remember across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonState {
    /// The latest schedule slot that was handled (backed up, skipped or passed while paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_slot: Option<DateTime<Utc>>,
    /// The latest `[drill]` slot that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_slot: Option<DateTime<Utc>>,
}

/// The whole file. Unknown top-level fields survive a round trip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordsFile {
    pub version: u32,
    pub records: Vec<Record>,
    #[serde(default)]
    pub stats: Stats,
    #[serde(default)]
    pub daemon: DaemonState,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for RecordsFile {
    fn default() -> Self {
        RecordsFile {
            version: RECORDS_VERSION,
            records: Vec::new(),
            stats: Stats::default(),
            daemon: DaemonState::default(),
            extra: serde_json::Map::new(),
        }
    }
}

impl RecordsFile {
    /// Appends a record and counts it.
    pub fn push(&mut self, record: Record) {
        if record.trigger.is_backup() {
            match record.result {
                Outcome::Success => self.stats.success += 1,
                Outcome::Failed => self.stats.failed += 1,
                Outcome::Skipped => self.stats.skipped += 1,
            }
        }
        if record.trigger == Trigger::Drill {
            match record.result {
                Outcome::Success => self.stats.drill_success += 1,
                _ => self.stats.drill_failed += 1,
            }
        }
        self.records.push(record);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("cannot access records file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "records file {path} does not parse ({message}); it was left as it is. Move it away \
         or repair it; the next backup moves it aside and starts a new one"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("records file {path} has version {found}; this etcdguard reads version {RECORDS_VERSION} (was it written by a newer release?)")]
    Version { path: PathBuf, found: u32 },
}

/// A records file that did not parse and was moved aside by a writer.
#[derive(Debug, Clone)]
pub struct MovedAside {
    pub from: PathBuf,
    pub to: PathBuf,
    pub message: String,
}

impl std::fmt::Display for MovedAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records file {} did not parse ({}); it was moved aside to {} and a new records \
             file was started. Older backups are no longer listed and are never deleted by \
             retention",
            self.from.display(),
            self.message,
            self.to.display()
        )
    }
}

/// The records file of one state directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    path: PathBuf,
    lock_path: PathBuf,
}

enum Loaded {
    Missing,
    Parsed(RecordsFile),
    Corrupt(String),
}

impl RecordStore {
    pub fn new(state_dir: &Path) -> RecordStore {
        RecordStore {
            path: StateDir::new(state_dir).records_file(),
            lock_path: StateDir::new(state_dir).records_lock(),
        }
    }

    fn read(&self) -> Result<Loaded, RecordsError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(source) => {
                return Err(RecordsError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        match serde_json::from_slice::<RecordsFile>(&bytes) {
            Ok(f) if f.version != RECORDS_VERSION => Err(RecordsError::Version {
                path: self.path.clone(),
                found: f.version,
            }),
            Ok(f) => Ok(Loaded::Parsed(f)),
            Err(e) => Ok(Loaded::Corrupt(e.to_string())),
        }
    }

    /// Appends one record (creating the state dir 0700 if needed).
    pub fn append(&self, record: Record) -> Result<(), RecordsError> {
        if let Some(dir) = self.path.parent() {
            fsutil::create_private_dir_all(dir).map_err(|source| RecordsError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        self.update(record.backup_timestamp, |f| f.push(record))
            .map(|_| ())
    }

    /// Reads the records without changing anything. A missing file is an empty history.
    pub fn load(&self) -> Result<RecordsFile, RecordsError> {
        match self.read()? {
            Loaded::Missing => Ok(RecordsFile::default()),
            Loaded::Parsed(f) => Ok(f),
            Loaded::Corrupt(message) => Err(RecordsError::Corrupt {
                path: self.path.clone(),
                message,
            }),
        }
    }

    /// Changes the records under the lock and replaces the file atomically (mode 0600).
    /// A corrupt file is moved aside to `records.json.corrupt-<UTC timestamp>` first and
    /// reported in the second element of the result.
    pub fn update<T>(
        &self,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut RecordsFile) -> T,
    ) -> Result<(T, Option<MovedAside>), RecordsError> {
        let io = |source| RecordsError::Io {
            path: self.path.clone(),
            source,
        };
        let _guard = fsutil::lock(&self.lock_path).map_err(io)?;
        let (mut file, moved) = match self.read()? {
            Loaded::Missing => (RecordsFile::default(), None),
            Loaded::Parsed(f) => (f, None),
            Loaded::Corrupt(message) => {
                let to = self.path.with_file_name(format!(
                    "{}.corrupt-{}",
                    crate::state::RECORDS_FILE,
                    now.format("%Y%m%dT%H%M%S%.3fZ")
                ));
                std::fs::rename(&self.path, &to).map_err(io)?;
                (
                    RecordsFile::default(),
                    Some(MovedAside {
                        from: self.path.clone(),
                        to,
                        message,
                    }),
                )
            }
        };
        let out = change(&mut file);
        let mut json = serde_json::to_vec_pretty(&file).expect("records serialize");
        json.push(b'\n');
        fsutil::write_atomic(&self.path, &json, fsutil::PRIVATE_FILE_MODE).map_err(io)?;
        Ok((out, moved))
    }
}

/// A new record id: UTC time to the millisecond plus 4 hex digits of entropy, sortable by time.
pub fn new_record_id(now: DateTime<Utc>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{mix:04x}", now.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// RFC 3339 UTC with seconds, as the records file and tables show it.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_remote_then_more_remotes_and_old_records_read() {
        let at = Utc::now();
        let mut r = Record::backup_succeeded(
            Snapshot::example("etcd-snapshot-20261203-101500-cp1.db", at),
            Trigger::Manual,
            1.0,
        );
        // A record from before destinations had names: `remote` without `destination`.
        let old = serde_json::json!({"location": "s3://b/k", "state": "uploaded", "attempts": 1});
        let mut v = serde_json::to_value(&r).unwrap();
        v["remote"] = old;
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back.remotes.len(), 1);
        assert_eq!(back.remotes[0].destination, "remote");
        for (d, l) in [
            ("s3", "s3://b/k"),
            ("azure", "azblob://a/c/k"),
            ("nfs", "file:///m/k"),
        ] {
            r.set_copy(RemoteCopy::uploaded(d, l.into(), at, None, None));
        }
        r.set_copy(RemoteCopy::pending(
            "azure",
            "azblob://a/c/k".into(),
            at,
            "down".into(),
        ));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["remote"]["destination"], "s3");
        assert_eq!(v["moreRemotes"][0]["state"], "pending");
        assert_eq!(v["moreRemotes"][1]["destination"], "nfs");
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let none = Record::skipped(at, Trigger::Schedule, "paused".into());
        let v = serde_json::to_value(&none).unwrap();
        assert!(
            v.get("remote").is_none() && v.get("moreRemotes").is_none(),
            "{v}"
        );
    }

    #[test]
    fn health_warns_of_alarms_quota_learners_and_apply_lag_and_nothing_else() {
        let quiet = Health::assess(&[], None, 100 << 20, 90 << 20, 0, None, false, 10, 10);
        assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
        assert_eq!(
            (quiet.quota_bytes, quiet.quota_source.as_str()),
            (DEFAULT_QUOTA, "default")
        );
        let m = Health::assess(&[], None, 1, 1, 0, Some(8 << 30), false, 1, 1);
        assert_eq!(
            (m.quota_bytes, m.quota_source.as_str()),
            (8 << 30, "manifest")
        );
        let e = Health::assess(&[], None, 1, 1, 4 << 30, Some(8 << 30), false, 1, 1);
        assert_eq!((e.quota_bytes, e.quota_source.as_str()), (4 << 30, "etcd"));

        let sick = Health::assess(
            &[(0x8e9e, "NOSPACE".into()), (0x1, "CORRUPT".into())],
            None,
            15 << 20,
            15 << 20,
            16 << 20,
            None,
            true,
            5000,
            100,
        );
        assert_eq!(
            sick.alarms,
            ["NOSPACE on member 8e9e", "CORRUPT on member 1"]
        );
        let w = sick.warnings.join("\n");
        assert!(
            w.contains("etcd alarm NOSPACE on member 8e9e is active"),
            "{w}"
        );
        assert!(
            w.contains("etcd alarm CORRUPT on member 1 is active"),
            "{w}"
        );
        assert!(w.contains("15 MiB, 93% of its 16 MiB quota (etcd)"), "{w}");
        assert!(w.contains("learner"), "{w}");
        assert!(w.contains("applied 4900 fewer raft entries"), "{w}");
        // At 79 % no quota warning; at 80 % one.
        let below = Health::assess(&[], None, 79, 79, 100, None, false, 1, 1);
        assert!(below.warnings.is_empty());
        let at = Health::assess(&[], None, 80, 80, 100, None, false, 1, 1);
        assert_eq!(at.warnings.len(), 1);
        let unread = Health::assess(&[], Some("timeout"), 1, 1, 0, None, false, 1, 1);
        assert_eq!(unread.warnings.len(), 1);
        // Against the leader: within the bound no warning, beyond it one.
        let near = Health::assess(&[], None, 1, 1, 0, None, false, 10, 10).with_leader(Some(1010));
        assert!(near.warnings.is_empty(), "{:?}", near.warnings);
        assert_eq!(near.leader_raft_index, Some(1010));
        let far = Health::assess(&[], None, 1, 1, 0, None, false, 10, 10).with_leader(Some(5000));
        assert!(
            far.warnings[0].contains("4990 fewer raft entries than the leader"),
            "{:?}",
            far.warnings
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let m = |a| backoff(a).num_minutes();
        assert_eq!([m(1), m(2), m(3), m(7), m(30)], [1, 2, 4, 60, 60]);
    }

    fn rec(id: &str) -> Record {
        Record {
            id: id.to_string(),
            ..Record::backup_failed(Utc::now(), Trigger::Manual, "x".into(), None, None, 0.5)
        }
    }

    #[test]
    fn update_appends_and_keeps_unknown_fields() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::new(d.path());
        std::fs::write(&s.path, r#"{"version":1,"records":[],"future":{"x":1}}"#).unwrap();
        s.update(Utc::now(), |f| f.push(rec("a"))).unwrap();
        let f = s.load().unwrap();
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.stats.failed, 1);
        assert_eq!(f.extra["future"]["x"], 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_reported_by_load_and_moved_aside_by_update() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::new(d.path());
        std::fs::write(&s.path, b"{\"version\":1,\"records\":[").unwrap();
        assert!(matches!(s.load(), Err(RecordsError::Corrupt { .. })));
        // load changed nothing
        assert_eq!(
            std::fs::read(&s.path).unwrap(),
            b"{\"version\":1,\"records\":["
        );
        let ((), moved) = s.update(Utc::now(), |f| f.push(rec("b"))).unwrap();
        let moved = moved.expect("moved aside");
        assert_eq!(
            std::fs::read(&moved.to).unwrap(),
            b"{\"version\":1,\"records\":["
        );
        assert_eq!(s.load().unwrap().records.len(), 1);
    }

    #[test]
    fn newer_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::new(d.path());
        std::fs::write(&s.path, r#"{"version":2,"records":[]}"#).unwrap();
        assert!(matches!(s.load(), Err(RecordsError::Version { .. })));
        assert!(s.update(Utc::now(), |_| ()).is_err());
    }

    #[test]
    fn record_json_is_camel_case() {
        let v = serde_json::to_value(rec("a")).unwrap();
        assert!(v.get("backupTimestamp").is_some());
        assert!(v.get("durationSeconds").is_some());
        assert_eq!(v["trigger"], "manual");
        assert_eq!(v["result"], "Failed");
    }
}
