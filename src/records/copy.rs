//! A snapshot's copies in its record: the local file and the copy at each destination,
//! every change of state one verb of `RemoteCopy`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::DEFAULT_DESTINATION;

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
    DEFAULT_DESTINATION.to_string()
}

/// A record's copies as JSON: `remote`, the copy at the first destination (what records had
/// before there were several, so version 1 readers go on working), and `moreRemotes`, the
/// copies at the others, each naming its destination.
pub(super) mod copies_json {
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
