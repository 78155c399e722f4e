//! Pure retention: (records, now, policy) → which local snapshots to delete. No I/O.
//!
//! Rules:
//! - only successful records whose local copy is present are candidates (a failed backup has
//!   no file; a deleted one is gone);
//! - the newest `min_keep` candidates are never deleted, whatever their age. "Newest" is the
//!   order of the records file (append order), not the timestamps, so a clock that jumped
//!   cannot make an old snapshot look new or a new one look old;
//! - any other candidate older than `ttl` is deleted. A timestamp in the future (the clock went
//!   back) is age zero: never expired by a skewed clock.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::records::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    pub min_keep: usize,
}

/// One deletion decision: the record's index in the slice, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub index: usize,
    pub reason: String,
}

/// Decides which local snapshots to delete.
pub fn local_deletions(records: &[Record], now: DateTime<Utc>, policy: Policy) -> Vec<Deletion> {
    let candidates: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_good_local())
        .map(|(i, _)| i)
        .collect();
    let protected_from = candidates.len().saturating_sub(policy.min_keep);
    let ttl = chrono::Duration::from_std(policy.ttl).unwrap_or(chrono::Duration::MAX);
    candidates[..protected_from]
        .iter()
        .filter_map(|&i| {
            let age = now - records[i].backup_timestamp;
            (age > ttl).then(|| Deletion {
                index: i,
                reason: format!(
                    "older than local_storage.ttl ({})",
                    humantime::format_duration(policy.ttl)
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{CopyState, LocalCopy, Outcome, Trigger};

    const H: i64 = 3600;

    fn at(hours_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::seconds(hours_ago * H)
    }

    fn rec(id: &str, ts: DateTime<Utc>, ok: bool, state: CopyState) -> Record {
        Record {
            id: id.into(),
            backup_timestamp: ts,
            file_name: ok.then(|| format!("{id}.db")),
            result: if ok {
                Outcome::Success
            } else {
                Outcome::Failed
            },
            reason: None,
            trigger: Trigger::Schedule,
            member: None,
            etcd_version: None,
            revision: None,
            size_bytes: None,
            sha256: None,
            duration_seconds: 1.0,
            local: ok.then(|| LocalCopy {
                path: format!("/s/{id}.db").into(),
                state,
                deleted_at: None,
                deleted_reason: None,
            }),
            remote: None,
        }
    }

    fn ids(records: &[Record], d: &[Deletion]) -> Vec<String> {
        d.iter().map(|x| records[x.index].id.clone()).collect()
    }

    fn policy(ttl_hours: u64, min_keep: usize) -> Policy {
        Policy {
            ttl: Duration::from_secs(ttl_hours * 3600),
            min_keep,
        }
    }

    #[test]
    fn empty_history() {
        assert!(local_deletions(&[], Utc::now(), policy(1, 2)).is_empty());
    }

    #[test]
    fn expired_beyond_min_keep_are_deleted() {
        let now = Utc::now();
        let r: Vec<_> = [50, 40, 30, 20, 1]
            .iter()
            .enumerate()
            .map(|(i, h)| rec(&format!("r{i}"), at(*h, now), true, CopyState::Present))
            .collect();
        // ttl 24h: r0, r1, r2 expired; min_keep 2 protects r3, r4 (not expired anyway).
        let d = local_deletions(&r, now, policy(24, 2));
        assert_eq!(ids(&r, &d), ["r0", "r1", "r2"]);
        assert!(d[0].reason.contains("ttl"));
    }

    #[test]
    fn min_keep_protects_old_ones_when_recent_backups_failed() {
        let now = Utc::now();
        let r = vec![
            rec("old1", at(100, now), true, CopyState::Present),
            rec("old2", at(90, now), true, CopyState::Present),
            rec("old3", at(80, now), true, CopyState::Present),
            rec("f1", at(10, now), false, CopyState::Present),
            rec("f2", at(5, now), false, CopyState::Present),
            rec("f3", at(1, now), false, CopyState::Present),
        ];
        // All good backups are expired, but min_keep 2 keeps the two newest good ones.
        let d = local_deletions(&r, now, policy(24, 2));
        assert_eq!(ids(&r, &d), ["old1"]);
        // min_keep larger than what exists: nothing goes.
        assert!(local_deletions(&r, now, policy(24, 5)).is_empty());
    }

    #[test]
    fn deleted_copies_are_not_counted_for_min_keep() {
        let now = Utc::now();
        let r = vec![
            rec("a", at(100, now), true, CopyState::Present),
            rec("b", at(90, now), true, CopyState::Present),
            rec("c", at(80, now), true, CopyState::Deleted),
            rec("d", at(70, now), true, CopyState::Deleted),
        ];
        // Only a and b are present; min_keep 2 keeps both.
        assert!(local_deletions(&r, now, policy(24, 2)).is_empty());
        assert_eq!(ids(&r, &local_deletions(&r, now, policy(24, 1))), ["a"]);
    }

    #[test]
    fn clock_skew_future_timestamps_never_expire_and_order_is_append_order() {
        let now = Utc::now();
        // Written while the clock was 10 days ahead, then the clock was corrected.
        let r = vec![
            rec("skewed-old", at(-240, now), true, CopyState::Present),
            rec("older", at(200, now), true, CopyState::Present),
            rec("new1", at(2, now), true, CopyState::Present),
            rec("new2", at(1, now), true, CopyState::Present),
        ];
        let d = local_deletions(&r, now, policy(24, 2));
        // The future-dated one is not expired; min_keep protects the two last appended.
        assert_eq!(ids(&r, &d), ["older"]);
    }

    #[test]
    fn exactly_at_ttl_is_kept() {
        let now = Utc::now();
        let r = vec![
            rec("a", at(24, now), true, CopyState::Present),
            rec("b", at(1, now), true, CopyState::Present),
        ];
        assert!(local_deletions(&r, now, policy(24, 1)).is_empty());
    }
}
