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
use super::meta::Meta;
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
pub(super) struct Acc {
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
    pub(super) fn element(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
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
                match self.top.as_slice() {
                    schema::KEY => {
                        if let Some(rev) = revision_of(key) {
                            self.revision = rev;
                        }
                        if let Some(rev) = Revision::parse(key) {
                            self.latest = Some(rev);
                        }
                        let v = if is_bucket { &[][..] } else { value };
                        self.live_key(key, v);
                    }
                    schema::ALARM => self.alarms += 1,
                    _ if !is_bucket => self.fact(key, value),
                    _ => {}
                }
            }
            _ => {} // nested deeper: not iterated by etcdutl's ForEach
        }
    }

    /// A value of `meta` or `cluster` that the status reports.
    fn fact(&mut self, key: &[u8], v: &[u8]) {
        match (self.top.as_slice(), key) {
            (schema::META, schema::CONSISTENT_INDEX) => self.consistent_index = schema::be_u64(v),
            (schema::META, schema::TERM) => self.term = schema::be_u64(v),
            (schema::META, schema::STORAGE_VERSION) => {
                self.storage_version = Some(String::from_utf8_lossy(v).into_owned())
            }
            (schema::CLUSTER, schema::CLUSTER_VERSION) => {
                self.cluster_version = Some(String::from_utf8_lossy(v).into_owned())
            }
            (schema::CLUSTER, schema::DOWNGRADE) => {
                self.downgrade = Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => {}
        }
    }

    /// A whole leaf of a top-level bucket without sub-buckets, from its summary: the same
    /// as [`Acc::element`] for each of its pairs in order (the status of a check made from
    /// the stream, `super::streamcheck`).
    pub(super) fn leaf(&mut self, leaf: &LeafDigest) {
        self.hash = crc32c_concat(self.hash, leaf.crc, leaf.crc_len);
        self.total_key += u64::from(leaf.count);
        match self.top.as_slice() {
            schema::KEY => {
                if let Some(rev) = leaf.revision {
                    self.revision = rev;
                }
                if leaf.latest.is_some() {
                    self.latest = leaf.latest;
                }
            }
            schema::ALARM => self.alarms += u64::from(leaf.count),
            _ => {
                for (k, v) in &leaf.facts {
                    self.fact(k, v);
                }
            }
        }
    }
}

/// etcdutl takes the main revision of every key of `key` (the last one stays): a revision
/// key's, or the first 8 bytes of any key that long.
pub(super) fn revision_of(key: &[u8]) -> Option<i64> {
    match Revision::parse(key) {
        Some(rev) => Some(rev.main),
        None if key.len() >= 8 => Some(i64::from_be_bytes(key[..8].try_into().ok()?)),
        None => None,
    }
}

/// The keys of `meta` and `cluster` whose values the status reports.
pub(super) fn is_fact(key: &[u8]) -> bool {
    [
        schema::CONSISTENT_INDEX,
        schema::TERM,
        schema::STORAGE_VERSION,
        schema::CLUSTER_VERSION,
        schema::DOWNGRADE,
    ]
    .contains(&key)
}

/// What a leaf without sub-buckets adds to the status when it belongs to a top-level bucket,
/// computed where its page passes by (the stream) and applied later in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LeafDigest {
    pub count: u32,
    /// CRC-32C of its keys and values in order, and their length.
    pub crc: u32,
    pub crc_len: u64,
    /// What its last key of 8 bytes or more makes the revision ([`revision_of`]).
    pub revision: Option<i64>,
    /// Its last revision key.
    pub latest: Option<Revision>,
    /// Its pairs whose key [`is_fact`].
    pub facts: Vec<(Vec<u8>, Vec<u8>)>,
}

impl LeafDigest {
    /// The digest of a leaf's pairs (none a sub-bucket), in order.
    pub(crate) fn of<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> LeafDigest {
        let mut d = LeafDigest::default();
        for (k, v) in pairs {
            d.count += 1;
            d.crc = crc32c::crc32c_append(crc32c::crc32c_append(d.crc, k), v);
            d.crc_len += (k.len() + v.len()) as u64;
            if let Some(rev) = revision_of(k) {
                d.revision = Some(rev);
            }
            if let Some(rev) = Revision::parse(k) {
                d.latest = Some(rev);
            }
            if is_fact(k) {
                d.facts.push((k.to_vec(), v.to_vec()));
            }
        }
        d
    }
}

/// The CRC-32C of `a` followed by `b`, from `crc(a)`, `crc(b)` and `b`'s length: `crc(a)`
/// multiplied by x^(8·len) modulo the polynomial, plus `crc(b)` (the CRC's linearity; the
/// initial and final inversions cancel out).
pub(crate) fn crc32c_concat(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    gf_mul(x_pow_8n(len_b), crc_a) ^ crc_b
}

/// CRC-32C's polynomial, bit-reversed (the CRC's bit order: x^0 is the top bit).
const POLY: u32 = 0x82F6_3B78;

/// `a · b` modulo the polynomial, both in the CRC's reversed bit order.
fn gf_mul(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    for bit in 0..32 {
        if a & (1 << (31 - bit)) != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// x^(8·n) modulo the polynomial: the product of x^(8·2^i) for each bit `i` set in `n`.
fn x_pow_8n(n: u64) -> u32 {
    static POWERS: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
    let powers = POWERS.get_or_init(|| {
        let mut p = [0u32; 64];
        p[0] = 1 << (31 - 8); // x^8
        for i in 1..64 {
            p[i] = gf_mul(p[i - 1], p[i - 1]);
        }
        p
    });
    (0..64)
        .filter(|i| n & (1 << i) != 0)
        .fold(1 << 31, |acc, i| gf_mul(powers[i], acc)) // from x^0
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
    acc.into_status(db.meta())
}

impl Acc {
    /// The status once every element (or leaf digest) went through.
    pub(super) fn into_status(self, meta: &Meta) -> Result<DbStatus, StatusError> {
        let acc = self;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC of two pieces joined is the CRC of the whole, whatever their lengths.
    #[test]
    fn crcs_concatenate() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for cut in [0, 1, 7, 8, 255, 4096, 9_999, 10_000] {
            let (a, b) = data.split_at(cut);
            let joined = crc32c_concat(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64);
            assert_eq!(joined, crc32c::crc32c(&data), "cut at {cut}");
        }
    }

    #[test]
    fn key_hashes_differ() {
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
        assert_eq!(key_hash(b"a"), key_hash(b"a"));
    }
}
