//! The records file: one record per backup attempt, in `<state_dir>/records.json`.
//!
//! Writers take `<state_dir>/records.lock`, read, change and atomically replace the file, so two
//! writers never lose each other's records and a reader never sees half a file. A file that
//! does not parse is never silently reset: writers move it aside with a timestamp and say so;
//! readers report it and change nothing.

pub(crate) mod copy;
mod drill;
mod health;
pub mod pacing;
mod store;

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub use copy::{
    BundleCopy, ClusterCopy, CopyState, LocalCopy, RemoteCopy, RemoteState, SealedCopy,
};
pub use drill::{Drill, DrillCheck, DrillOrigin, Verdict};
pub use health::Health;
pub use store::{MovedAside, RecordStore, RecordsError};

pub const RECORDS_VERSION: u32 = 1;

/// The name of the first destination when the configuration does not name it (`[remote_storage]`),
/// and the destination of copies in records written before destinations had names.
pub const DEFAULT_DESTINATION: &str = "remote";

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
    /// What the snapshot's bbolt check and status were made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_from: Option<CheckedFrom>,
    pub duration_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalCopy>,
    /// The copies at the destinations, one per destination (in the configuration's order
    /// when the backup was taken); empty when none is configured. JSON: `remote` and
    /// `moreRemotes` (`copy::copies_json`).
    #[serde(flatten, with = "copy::copies_json")]
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
    /// What paced the backup's stream, and how long it made it wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<pacing::Pacing>,
    /// A drill record: which snapshot was restored, and every check's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
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

/// What a backup's bbolt check and status were made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckedFrom {
    /// The bytes as they streamed by (`etcddb::StreamCheck`): the file was not read back.
    Stream,
    /// The written file, read back: the stream check could not vouch for the snapshot.
    File,
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
    pub checked_from: CheckedFrom,
    /// The local file is sealed (`encrypt_local`).
    pub local_sealed: Option<SealedCopy>,
    pub health: Option<Health>,
    /// What paced the stream.
    pub pacing: Option<pacing::Pacing>,
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
            checked_from: CheckedFrom::Stream,
            local_sealed: None,
            health: None,
            pacing: None,
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
            checked_from: None,
            duration_seconds: duration,
            local: None,
            remotes: Vec::new(),
            bundle: None,
            pin: None,
            health: None,
            pacing: None,
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
            .find(|c| c.result == Verdict::Failed)
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
            checked_from: Some(s.checked_from),
            local: Some(LocalCopy::present(s.path, s.local_sealed)),
            health: s.health,
            pacing: s.pacing,
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

/// A new record id: UTC time to the millisecond plus 4 hex digits of entropy, sortable by time.
pub fn new_record_id(now: DateTime<Utc>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{mix:04x}", crate::clock::stamp(now))
}

/// RFC 3339 UTC with seconds, as the records file and tables show it.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::copy::backoff;
    use super::health::DEFAULT_QUOTA;
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
