//! `etcdutl snapshot status` of both generations, in the same single walk as bbolt's
//! consistency check, plus what a restore needs to know about the db (consistent index,
//! storage and cluster versions, alarms, the latest revision).
//!
//! - etcdutl 3.5 (restore-spec A.3): `hash` is a CRC-32C over every bucket name, key and value;
//!   `revision` the main revision of the last key in `key`; `totalKey` every pair in every
//!   bucket; `totalSize` the db size.
//! - etcdutl 3.6 and 3.7: the same hash, revision and size; `totalKey` counts the *live user
//!   keys*: the `key` bucket walked in revision order, each value decoded as an mvccpb.KeyValue,
//!   its key added, and removed again by a tombstone (an 18-byte revision key ending in `t`); a
//!   value that does not decode is an error. `version` is `meta/storageVersion`.
//!
//! The live-key count sorts a 25-byte entry per pair of the `key` bucket (a 128-bit hash of the
//! key, never the key or its value, the pair's place in the walk, put or delete) by key, on
//! disk past about 4 MiB (`crate::spill`), and counts the keys whose newest entry is a put:
//! memory stays flat whatever the number of keys. It is computed only when asked
//! ([`status_with_live_keys`], which `verify` uses), not in the check every backup and restore
//! runs, whose memory stays a few pages.

use std::hash::{Hash, Hasher};

use crate::spill::{keep_last_per_key, Keyed, LastPerKey, Record, Sorter};

use super::db::{check_and_walk, CheckReport, Db, Visitor};
use super::schema::{self, Revision};

/// What `status` found in a consistent db.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbStatus {
    /// CRC-32C over bucket names, keys and values, in order (etcdutl's `hash`).
    pub hash: u32,
    /// Main revision of the greatest key in the `key` bucket (etcdutl's `revision`).
    pub revision: i64,
    /// Key/value pairs in all buckets (etcdutl 3.5's `totalKey`).
    pub total_key: u64,
    /// Live user keys in `key` (etcdutl 3.6's and 3.7's `totalKey`); `None` when not counted.
    pub live_keys: Option<u64>,
    /// The first value of the `key` bucket that is not an mvccpb.KeyValue: etcdutl ≥ 3.6
    /// refuses such a db; 3.5 never decodes values.
    pub undecodable_key: Option<String>,
    /// `pgid * pageSize` (etcdutl's `totalSize`).
    pub total_size: u64,
    pub page_size: u32,
    pub txid: u64,
    /// The greatest revision key in `key`, if any (the base of a revision bump).
    pub latest: Option<Revision>,
    /// Top-level bucket names in order.
    pub buckets: Vec<String>,
    /// `meta/consistent_index`, `meta/term`.
    pub consistent_index: Option<u64>,
    pub term: Option<u64>,
    /// `meta/storageVersion` (written by etcd ≥ 3.6).
    pub storage_version: Option<String>,
    /// `cluster/clusterVersion`.
    pub cluster_version: Option<String>,
    /// Entries in the `alarm` bucket (NOSPACE/CORRUPT alarms survive a restore).
    pub alarms: u64,
    /// `cluster/downgrade` JSON, if present.
    pub downgrade: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// bbolt's consistency check failed.
    #[error("integrity check failed. {} errors found.\n{}", .0.error_count, .0.lines().join("\n"))]
    Integrity(CheckReport),
    /// Consistent as bbolt, but not an etcd database etcdutl can hash.
    #[error("{0}")]
    NotEtcd(String),
    /// The live keys could not be counted (their sorted runs on disk failed).
    #[error("cannot count the live keys: {0}")]
    Count(String),
}

/// Entries of the live-key count held in memory before a sorted run goes to disk.
const LIVE_IN_MEMORY: usize = 1 << 17;

/// One pair of the `key` bucket, for the live-key count: the key's hash, the pair's place in
/// the walk (etcdutl adds and removes in that order), put or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Live {
    hash: u128,
    seq: u64,
    put: bool,
}

impl Keyed for Live {
    fn key(&self) -> u128 {
        self.hash
    }
}

impl Record for Live {
    const SIZE: usize = 25;

    fn put(&self, o: &mut [u8]) {
        o[0..16].copy_from_slice(&self.hash.to_le_bytes());
        o[16..24].copy_from_slice(&self.seq.to_le_bytes());
        o[24] = u8::from(self.put);
    }

    fn get(b: &[u8]) -> Live {
        Live {
            hash: u128::from_le_bytes(b[0..16].try_into().unwrap_or_default()),
            seq: u64::from_le_bytes(b[16..24].try_into().unwrap_or_default()),
            put: b[24] != 0,
        }
    }
}

#[derive(Default)]
struct Acc {
    hash: u32,
    total_key: u64,
    /// `Some` when live keys are counted.
    live: Option<Sorter<Live>>,
    count_failed: Option<String>,
    undecodable_key: Option<String>,
    top: Vec<u8>,
    latest: Option<Revision>,
    revision: i64,
    buckets: Vec<String>,
    consistent_index: Option<u64>,
    term: Option<u64>,
    storage_version: Option<String>,
    cluster_version: Option<String>,
    alarms: u64,
    downgrade: Option<String>,
    problem: Option<String>,
}

impl Acc {
    fn element(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        match depth {
            0 => {
                self.top = key.to_vec();
                if !is_bucket {
                    // etcdutl: "cannot get hash of bucket <name>"
                    self.problem.get_or_insert_with(|| {
                        format!(
                            "cannot get hash of bucket {}: a top-level key that is not a bucket",
                            String::from_utf8_lossy(key)
                        )
                    });
                    return;
                }
                self.buckets.push(String::from_utf8_lossy(key).into_owned());
                self.hash = crc32c::crc32c_append(self.hash, key);
            }
            1 => {
                self.hash = crc32c::crc32c_append(self.hash, key);
                // A sub-bucket's value is nil to a cursor: it feeds nothing.
                if !is_bucket {
                    self.hash = crc32c::crc32c_append(self.hash, value);
                }
                self.total_key += 1;
                let v = (!is_bucket).then_some(value);
                match (self.top.as_slice(), key, v) {
                    (schema::KEY, k, v) => {
                        // etcdutl takes the main revision of every key; the last one stays.
                        if let Some(rev) = Revision::parse(k) {
                            self.revision = rev.main;
                            self.latest = Some(rev);
                        } else if k.len() >= 8 {
                            self.revision =
                                i64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                        }
                        self.live_key(k, v.unwrap_or_default());
                    }
                    (schema::META, schema::CONSISTENT_INDEX, Some(v)) => {
                        self.consistent_index = schema::be_u64(v)
                    }
                    (schema::META, schema::TERM, Some(v)) => self.term = schema::be_u64(v),
                    (schema::META, schema::STORAGE_VERSION, Some(v)) => {
                        self.storage_version = Some(String::from_utf8_lossy(v).into_owned())
                    }
                    (schema::CLUSTER, schema::CLUSTER_VERSION, Some(v)) => {
                        self.cluster_version = Some(String::from_utf8_lossy(v).into_owned())
                    }
                    (schema::CLUSTER, schema::DOWNGRADE, Some(v)) => {
                        self.downgrade = Some(String::from_utf8_lossy(v).into_owned())
                    }
                    (schema::ALARM, _, _) => self.alarms += 1,
                    _ => {}
                }
            }
            _ => {} // nested deeper: not iterated by etcdutl's ForEach
        }
    }
}

impl Acc {
    /// etcdutl ≥ 3.6's live-key bookkeeping for one pair of the `key` bucket.
    fn live_key(&mut self, rev: &[u8], value: &[u8]) {
        if self.undecodable_key.is_some() {
            return;
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        match schema::KeyValue::decode(value) {
            Some(kv) => {
                let entry = Live {
                    hash: key_hash(kv.key),
                    seq: self.total_key,
                    put: !schema::is_tombstone(rev),
                };
                if let Err(e) = live.push(entry) {
                    self.count_failed.get_or_insert(e);
                }
            }
            None => {
                self.undecodable_key = Some(format!(
                    "the value at revision key {} of bucket `key` is not an etcd KeyValue",
                    hex::encode(rev)
                ))
            }
        }
    }
}

/// 128 bits of two differently seeded SipHashes: a collision between two live keys is not a
/// practical concern, and the set never holds a key itself.
pub(crate) fn key_hash(k: &[u8]) -> u128 {
    let half = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        k.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Checks the db and computes its status in one walk, without the live-key count. Integrity
/// errors win over everything else, as in etcdutl (it checks before it hashes).
pub fn status(db: &Db) -> Result<DbStatus, StatusError> {
    walk_status(db, false, &mut |_: usize, _: &[u8], _: &[u8], _: bool| {})
}

/// [`status`] with etcdutl ≥ 3.6's live-key count (memory per live key, see the module doc).
/// Every element is also handed to `also`: a caller that needs its own pass over the pairs
/// (a drill's content hash) takes it from this walk instead of reading the file again.
pub fn status_with_live_keys(db: &Db, also: &mut dyn Visitor) -> Result<DbStatus, StatusError> {
    walk_status(db, true, also)
}

fn walk_status(
    db: &Db,
    count_live_keys: bool,
    also: &mut dyn Visitor,
) -> Result<DbStatus, StatusError> {
    let mut acc = Acc {
        live: count_live_keys
            .then(|| Sorter::new(crate::spill::in_memory(LIVE_IN_MEMORY), keep_last_per_key)),
        ..Acc::default()
    };
    let report = check_and_walk(db, &mut |d: usize, k: &[u8], v: &[u8], b: bool| {
        acc.element(d, k, v, b);
        also.element(d, k, v, b);
    });
    if !report.is_ok() {
        return Err(StatusError::Integrity(report));
    }
    if let Some(p) = acc.problem {
        return Err(StatusError::NotEtcd(p));
    }
    if let Some(e) = acc.count_failed {
        return Err(StatusError::Count(e));
    }
    let live_keys = match acc.live {
        None => None,
        Some(sorter) => {
            let mut n = 0u64;
            for e in LastPerKey::of(sorter.finish().map_err(StatusError::Count)?) {
                n += u64::from(e.map_err(StatusError::Count)?.put);
            }
            Some(n)
        }
    };
    let meta = db.meta();
    Ok(DbStatus {
        hash: acc.hash,
        revision: acc.revision,
        total_key: acc.total_key,
        live_keys,
        undecodable_key: acc.undecodable_key,
        total_size: meta.db_size(),
        page_size: meta.page_size,
        txid: meta.txid,
        latest: acc.latest,
        buckets: acc.buckets,
        consistent_index: acc.consistent_index,
        term: acc.term,
        storage_version: acc.storage_version,
        cluster_version: acc.cluster_version,
        alarms: acc.alarms,
        downgrade: acc.downgrade,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_differ() {
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
        assert_eq!(key_hash(b"a"), key_hash(b"a"));
    }
}
