//! `etcdutl snapshot status`, computed exactly as etcdutl 3.5 does (restore-spec A.3), in the
//! same single walk as bbolt's consistency check, plus what a restore needs to know about the
//! db (consistent index, storage and cluster versions, alarms, the latest revision).
//!
//! etcd 3.6 counts `totalKey` differently (live user keys) and adds `version`; that is known from
//! the spec only and not implemented here: the fields below are etcdutl 3.5's.

use super::db::{check_and_walk, CheckReport, Db};
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
}

#[derive(Default)]
struct Acc {
    hash: u32,
    total_key: u64,
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
                    (schema::KEY, k, _) => {
                        // etcdutl takes the main revision of every key; the last one stays.
                        if let Some(rev) = Revision::parse(k) {
                            self.revision = rev.main;
                            self.latest = Some(rev);
                        } else if k.len() >= 8 {
                            self.revision =
                                i64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                        }
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

/// Checks the db and computes its status in one walk. Integrity errors win over everything
/// else, as in etcdutl (it checks before it hashes).
pub fn status(db: &Db) -> Result<DbStatus, StatusError> {
    let mut acc = Acc::default();
    let report = check_and_walk(db, &mut |d: usize, k: &[u8], v: &[u8], b: bool| {
        acc.element(d, k, v, b)
    });
    if !report.is_ok() {
        return Err(StatusError::Integrity(report));
    }
    if let Some(p) = acc.problem {
        return Err(StatusError::NotEtcd(p));
    }
    let meta = db.meta();
    Ok(DbStatus {
        hash: acc.hash,
        revision: acc.revision,
        total_key: acc.total_key,
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
