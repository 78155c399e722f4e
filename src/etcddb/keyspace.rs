//! The keyspace of a snapshot as etcd rebuilds it when it starts: every revision of the `key`
//! bucket in revision order, each value decoded as an `mvccpb.KeyValue`, and the facts of the
//! small buckets (members, leases, alarms, compaction marks, auth). One walk, with bbolt's
//! consistency check on the way; memory is the walk's few pages plus the facts (members,
//! leases, alarms), never the keys or values.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use super::db::{check_and_walk, Db};
use super::schema::{self, KeyValue, Lease, Revision, StoredMember};
use super::{SECTOR, TRAILER_LEN};

/// One revision of one key.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub revision: Revision,
    /// A delete: the key has no value from this revision on.
    pub tombstone: bool,
    pub kv: KeyValue<'a>,
}

/// What the small buckets say, and counts of the walk.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    /// The greatest main revision in `key` (what `etcdutl snapshot status` calls revision).
    pub revision: i64,
    /// `meta/finishedCompactRev`: older revisions are gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
    /// `meta/scheduledCompactRev`: a compaction etcd resumes when it starts, if greater.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_compact_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_version: Option<String>,
    pub members: Vec<StoredMember>,
    /// Hex IDs in `members_removed`.
    pub removed_members: Vec<String>,
    #[serde(skip)]
    pub leases: Vec<Lease>,
    /// `NOSPACE on member 8e9e05c52164694d`.
    pub alarms: Vec<String>,
    pub auth_enabled: bool,
    pub users: u64,
    pub roles: u64,
    pub buckets: Vec<String>,
    /// Pairs of the `key` bucket (every revision of every key).
    pub revisions: u64,
    /// Values of `key` that are not KeyValues (a db etcd did not write).
    pub undecodable: u64,
}

/// Opens a snapshot file (with its sha256 trailer) or a data dir's raw `member/snap/db`.
pub fn open(path: &Path) -> Result<Db, String> {
    let f = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let len = if size % SECTOR == TRAILER_LEN {
        size - TRAILER_LEN
    } else {
        size
    };
    Db::open(f, len).map_err(|e| format!("{} is not an etcd database: {e}", path.display()))
}

fn revision_of(k: &[u8]) -> Option<i64> {
    Revision::parse(k).map(|r| r.main)
}

/// Walks `db` once: every revision of every key to `on_event`, in revision order (the marker
/// a revision bump writes, an empty KeyValue, is left out), and the facts. Fails when the db
/// is not consistent as bbolt checks it.
pub fn walk(db: &Db, on_event: &mut dyn FnMut(&Event<'_>)) -> Result<Facts, String> {
    let mut facts = Facts::default();
    let mut top: Vec<u8> = Vec::new();
    let report =
        check_and_walk(db, &mut |depth: usize,
                                 k: &[u8],
                                 v: &[u8],
                                 is_bucket: bool| match depth {
            0 => {
                top = k.to_vec();
                facts.buckets.push(String::from_utf8_lossy(k).into_owned());
            }
            1 if is_bucket => {}
            1 => match top.as_slice() {
                schema::KEY => {
                    facts.revisions += 1;
                    let Some(rev) = Revision::parse(k) else {
                        facts.undecodable += 1;
                        return;
                    };
                    facts.revision = rev.main;
                    match KeyValue::decode(v) {
                        Some(kv) if kv.key.is_empty() => {}
                        Some(kv) => on_event(&Event {
                            revision: rev,
                            tombstone: schema::is_tombstone(k),
                            kv,
                        }),
                        None => facts.undecodable += 1,
                    }
                }
                schema::META => match k {
                    schema::CONSISTENT_INDEX => facts.consistent_index = schema::be_u64(v),
                    schema::TERM => facts.term = schema::be_u64(v),
                    schema::STORAGE_VERSION => {
                        facts.storage_version = Some(String::from_utf8_lossy(v).into_owned())
                    }
                    schema::FINISHED_COMPACT_REV => facts.compact_revision = revision_of(v),
                    schema::SCHEDULED_COMPACT_REV => {
                        facts.scheduled_compact_revision = revision_of(v)
                    }
                    _ => {}
                },
                schema::CLUSTER if k == schema::CLUSTER_VERSION => {
                    facts.cluster_version = Some(String::from_utf8_lossy(v).into_owned())
                }
                schema::MEMBERS => {
                    if let Some(m) = StoredMember::decode(v) {
                        facts.members.push(m);
                    }
                }
                schema::MEMBERS_REMOVED => facts
                    .removed_members
                    .push(String::from_utf8_lossy(k).into_owned()),
                schema::LEASE => {
                    if let Some(l) = Lease::decode(v) {
                        facts.leases.push(l);
                    }
                }
                schema::ALARM => {
                    if let Some((member, kind)) = schema::decode_alarm(k) {
                        facts.alarms.push(format!("{kind} on member {member:x}"));
                    }
                }
                schema::AUTH if k == schema::AUTH_ENABLED => {
                    facts.auth_enabled = v.first().is_some_and(|b| *b == 1)
                }
                schema::AUTH_USERS => facts.users += 1,
                schema::AUTH_ROLES => facts.roles += 1,
                _ => {}
            },
            _ => {}
        });
    if !report.is_ok() {
        return Err(format!(
            "bbolt integrity check failed, {} errors: {}",
            report.error_count,
            report.lines().join("; ")
        ));
    }
    Ok(facts)
}

/// Every pair of the `key` bucket as stored (revision key, KeyValue bytes), in order, the
/// marker of a revision bump included. Fails when the db is not consistent.
pub fn walk_key_pairs(db: &Db, on_pair: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String> {
    let mut in_key = false;
    let report =
        check_and_walk(db, &mut |depth: usize,
                                 k: &[u8],
                                 v: &[u8],
                                 is_bucket: bool| match depth {
            0 => in_key = k == schema::KEY,
            1 if in_key && !is_bucket => on_pair(k, v),
            _ => {}
        });
    if !report.is_ok() {
        return Err(format!(
            "bbolt integrity check failed, {} errors: {}",
            report.error_count,
            report.lines().join("; ")
        ));
    }
    Ok(())
}
