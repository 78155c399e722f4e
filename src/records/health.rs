//! etcd's health as a backup saw it, and the warnings it calls for (pure).

use serde::{Deserialize, Serialize};

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
