//! etcd's database file (bbolt) and snapshot files made of it.
//!
//! - `page`, `meta`: the byte layout (pure);
//! - `db`: reading pages with `pread` and the one walk that checks the file as bbolt's
//!   `tx.Check` does while visiting every element;
//! - `status`: `etcdutl snapshot status` (3.5 semantics) from that walk;
//! - `schema`: etcd's buckets and keys, revision keys, Member JSON, KeyValue/lease/alarm;
//! - `keyspace`: every revision of every key in order and the small buckets' facts (inspect,
//!   drill);
//! - `lookup`: one key's value by descending the tree (a few pages, no walk);
//! - `writer`: the append-only commit a restore uses to rewrite a few buckets.
//!
//! This module verifies snapshot files for `verify` and for every backup.

pub(crate) mod db;
pub(crate) mod keyspace;
pub(crate) mod lookup;
pub(crate) mod meta;
pub(crate) mod page;
pub(crate) mod schema;
pub(crate) mod status;
pub(crate) mod streamcheck;
pub(crate) mod writer;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::progress::Progress;
use sha2::{Digest, Sha256};

pub use crate::etcdversion::Minor;
pub use db::{check_and_walk, read_active_meta, Db, Visitor};
pub use status::{status, DbStatus, StatusError};
pub use streamcheck::StreamCheck;

/// etcdutl's rule for "this file carries a sha256 trailer" (restore-spec A.2).
pub const SECTOR: u64 = 512;
/// The raw sha256 after the bbolt data: a snapshot's trailer, as etcd streams and writes it.
pub const TRAILER_LEN: u64 = 32;
const READ_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, too small to be an etcd snapshot")]
    TooSmall { path: PathBuf, size: u64 },
    #[error(
        "{path} has no sha256 trailer (size {size} is not 32 bytes more than a multiple of \
         512): it is truncated, or a copy of a data-dir db rather than a snapshot (for a \
         data-dir db, pass --skip-hash-check: it may miss writes that were only in the WAL)"
    )]
    NoTrailer { path: PathBuf, size: u64 },
    #[error(
        "{path} is corrupt: its sha256 trailer says {expected}, but its content hashes to \
         {computed}"
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        computed: String,
    },
    #[error("{path} is not a valid bbolt database: {reason}")]
    NotBbolt { path: PathBuf, reason: String },
    #[error("{path} is truncated: its database claims {needed} bytes but only {have} are present")]
    Truncated {
        path: PathBuf,
        needed: u64,
        have: u64,
    },
    #[error("{path} is corrupt: bbolt {0}", .source)]
    Integrity { path: PathBuf, source: StatusError },
    #[error(
        "{path} is not a database etcdutl {generation} reads: {reason} (etcdutl 3.6 and later \
         decode every value of the `key` bucket)"
    )]
    Undecodable {
        path: PathBuf,
        generation: StatusGeneration,
        reason: String,
    },
}

/// Which etcdutl's `snapshot status` a report reproduces: 3.5 counts every pair of every
/// bucket as `totalKey` and has no `version`; 3.6 and 3.7 count live user keys and print the
/// storage version.
pub type StatusGeneration = Minor;

/// The etcdutl that belongs to a snapshot: the minor of its storage version (written by etcd
/// ≥ 3.6), else 3.5. Pure.
pub fn own_generation(storage_version: Option<&str>) -> StatusGeneration {
    match storage_version.and_then(crate::etcdversion::major_minor) {
        Some((3, 6)) => Minor::V3_6,
        Some((3, m)) if m >= 7 => Minor::V3_7,
        _ => Minor::V3_5,
    }
}

/// etcdutl ≥ 3.6's `version`: the storage version as a semver string, "" when absent or not a
/// version. Pure.
fn etcdutl_version_field(storage_version: Option<&str>) -> String {
    let Some(v) = storage_version else {
        return String::new();
    };
    let parts: Vec<&str> = v.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        v.to_string()
    } else {
        String::new()
    }
}

/// The sha256 trailer of a snapshot file, as `verify` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Trailer {
    /// Present, and the database hashes to it.
    #[serde(rename = "ok")]
    Ok,
    /// Present, not checked (`--skip-hash-check`).
    #[serde(rename = "not checked")]
    NotChecked,
    /// None: a data dir's `member/snap/db` (only accepted with `--skip-hash-check`).
    #[serde(rename = "absent")]
    Absent,
}

impl Trailer {
    /// How the file's integrity is proven, for a human.
    pub fn describe(self) -> &'static str {
        match self {
            Trailer::Ok => "ok (sha256 of the database matches)",
            Trailer::NotChecked => "present, not checked (--skip-hash-check)",
            Trailer::Absent => "absent (--skip-hash-check)",
        }
    }
}

impl std::fmt::Display for Trailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trailer::Ok => "ok",
            Trailer::NotChecked => "not checked",
            Trailer::Absent => "absent",
        })
    }
}

/// What [`verify_snapshot_file`] established about a good file. The first fields carry
/// etcdutl's names and values (`etcdutl snapshot status -w json`) as the etcdutl named in
/// `statusAs` prints them; `totalKeyAllBuckets` and `liveKeys` give both generations' counts
/// under names that say which is which.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFileReport {
    pub hash: u32,
    pub revision: i64,
    /// etcdutl 3.5: every pair in every bucket; 3.6 and later: live user keys.
    pub total_key: u64,
    /// Bytes of the database proper.
    pub total_size: u64,
    /// etcdutl ≥ 3.6 only: the storage version, "" when the snapshot has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The etcdutl whose `snapshot status` the fields above reproduce.
    pub status_as: StatusGeneration,
    /// etcdutl 3.5's totalKey: every key/value pair in every bucket.
    pub total_key_all_buckets: u64,
    /// etcdutl 3.6's and 3.7's totalKey: live user keys.
    pub live_keys: u64,
    pub path: PathBuf,
    pub size_bytes: u64,
    /// sha256 of the whole file, as `sha256sum` prints it; not computed with the hash check
    /// skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `ok`; `not checked` for a snapshot verified with the hash check skipped; `absent` for a
    /// data-dir db (no trailer), which can only be checked with the hash check skipped.
    pub trailer: Trailer,
    pub page_size: u32,
    pub txid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_version: Option<String>,
    pub buckets: Vec<String>,
    pub alarms: u64,
    #[serde(skip)]
    pub status: DbStatus,
}

/// sha256 of the first `len` bytes of `file` (read through its own offset, from the start) and
/// of the whole file. Bounded buffer.
fn hash_prefix(mut file: &File, len: u64) -> std::io::Result<([u8; 32], Sha256)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut left = len;
    let progress = Progress::bytes("verify", Some(len));
    while left > 0 {
        let n = (left.min(READ_BUF as u64)) as usize;
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
        progress.inc(n as u64);
    }
    progress.finish();
    Ok((hasher.clone().finalize().into(), hasher))
}

/// Checks a snapshot file as it lies on disk: trailer present and matching (unless
/// `skip_hash_check`, for a raw data-dir db), database not truncated, bbolt consistent, and
/// computes etcdutl's status. The sha256 pass and the bbolt walk run on two threads; both read
/// with bounded buffers.
///
/// `generation` picks the etcdutl whose status fields the report reproduces; `None` takes the
/// snapshot's own ([`own_generation`]).
pub fn verify_snapshot_file(
    path: &Path,
    skip_hash_check: bool,
    generation: Option<StatusGeneration>,
) -> Result<SnapshotFileReport, VerifyError> {
    let mut nothing = |_: usize, _: &[u8], _: &[u8], _: bool| {};
    verify_snapshot_file_visiting(path, skip_hash_check, generation, &mut nothing)
}

/// [`verify_snapshot_file`], handing every element of its walk to `also` as well (see
/// [`status::status_with_live_keys`]); what `also` saw counts only when the result is `Ok`.
pub fn verify_snapshot_file_visiting(
    path: &Path,
    skip_hash_check: bool,
    generation: Option<StatusGeneration>,
    also: &mut dyn Visitor,
) -> Result<SnapshotFileReport, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < 2 * 1024 {
        return Err(VerifyError::TooSmall {
            path: path.to_owned(),
            size,
        });
    }
    let has_trailer = size % SECTOR == TRAILER_LEN;
    if !has_trailer && !skip_hash_check {
        return Err(VerifyError::NoTrailer {
            path: path.to_owned(),
            size,
        });
    }
    let db_len = if has_trailer {
        size - TRAILER_LEN
    } else {
        size
    };
    let walker = file.try_clone().map_err(io)?;
    // The sha256 pass is most of the work; with the check skipped (like `etcdutl snapshot
    // status`, which never hashes) it is not done at all.
    let (hashed, opened) = std::thread::scope(|s| {
        let hashing = (!skip_hash_check).then(|| s.spawn(|| hash_prefix(&file, db_len)));
        let opened = Db::open(walker, db_len).map(|db| {
            let st = status::status_with_live_keys(&db, also);
            (*db.meta(), st)
        });
        (hashing.map(|h| h.join().expect("hash thread")), opened)
    });
    let hashed = hashed.transpose().map_err(io)?;
    // A file cut at a page boundary still looks like it has a trailer; its meta tells.
    if let Ok(m) = read_active_meta(&file, size) {
        if m.db_size() > db_len {
            return Err(VerifyError::Truncated {
                path: path.to_owned(),
                needed: m.db_size(),
                have: db_len,
            });
        }
    }
    let sha256 = match hashed {
        None => None,
        Some(h) => Some(check_trailer(path, &file, db_len, has_trailer, h)?),
    };
    let (meta, st) = opened.map_err(|reason| VerifyError::NotBbolt {
        path: path.to_owned(),
        reason,
    })?;
    let st = st.map_err(|source| VerifyError::Integrity {
        path: path.to_owned(),
        source,
    })?;
    let generation = generation.unwrap_or_else(|| own_generation(st.storage_version.as_deref()));
    let live_keys = st.live_keys.unwrap_or_default();
    if generation.counts_live_keys() {
        if let Some(reason) = &st.undecodable_key {
            return Err(VerifyError::Undecodable {
                path: path.to_owned(),
                generation,
                reason: reason.clone(),
            });
        }
    }
    Ok(SnapshotFileReport {
        hash: st.hash,
        revision: st.revision,
        total_key: if generation.counts_live_keys() {
            live_keys
        } else {
            st.total_key
        },
        total_size: st.total_size,
        version: generation
            .counts_live_keys()
            .then(|| etcdutl_version_field(st.storage_version.as_deref())),
        status_as: generation,
        total_key_all_buckets: st.total_key,
        live_keys,
        path: path.to_owned(),
        size_bytes: size,
        sha256,
        trailer: match (has_trailer, skip_hash_check) {
            (true, false) => Trailer::Ok,
            (true, true) => Trailer::NotChecked,
            (false, _) => Trailer::Absent,
        },
        page_size: meta.page_size,
        txid: meta.txid,
        consistent_index: st.consistent_index,
        storage_version: st.storage_version.clone(),
        cluster_version: st.cluster_version.clone(),
        buckets: st.buckets.clone(),
        alarms: st.alarms,
        status: st,
    })
}

/// The sha256 of the database against the file's trailer; the whole file's sha256 (as
/// `sha256sum` prints it) when they agree.
fn check_trailer(
    path: &Path,
    file: &File,
    db_len: u64,
    has_trailer: bool,
    hashed: ([u8; 32], Sha256),
) -> Result<String, VerifyError> {
    let (db_sha, mut whole) = hashed;
    if has_trailer {
        use std::os::unix::fs::FileExt;
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, db_len)
            .map_err(|source| VerifyError::Io {
                path: path.to_owned(),
                source,
            })?;
        if db_sha != trailer {
            return Err(VerifyError::Mismatch {
                path: path.to_owned(),
                expected: hex::encode(trailer),
                computed: hex::encode(db_sha),
            });
        }
        whole.update(trailer);
    }
    Ok(hex::encode(whole.finalize()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::writer::{new_db, Item};
    use super::*;

    /// A small etcd-like db: `key` with revision keys (some values large enough for overflow
    /// pages, enough keys for branch pages), `meta`, `members`, `cluster`.
    pub(crate) fn sample_db(page_size: u32, keys: usize) -> Vec<u8> {
        let key_items: Vec<Item> = (1..=keys as i64)
            .map(|i| {
                let rev = schema::Revision { main: i, sub: 0 }.to_bytes();
                let len = if i % 9 == 0 {
                    5000
                } else {
                    40 + (i % 13) as usize
                };
                Item::new(&rev, &vec![b'a' + (i % 26) as u8; len])
            })
            .collect();
        new_db(
            page_size,
            &[
                (b"cluster", vec![Item::new(b"clusterVersion", b"3.5.0")]),
                (b"key", key_items),
                (
                    b"members",
                    vec![Item::new(
                        b"2fa26575b68fb30e",
                        br#"{"id":3432417422258189070,"peerURLs":["http://127.0.0.1:23802"],"name":"n1"}"#,
                    )],
                ),
                (b"members_removed", vec![]),
                (
                    b"meta",
                    vec![
                        Item::new(b"consistent_index", &7u64.to_be_bytes()),
                        Item::new(b"term", &2u64.to_be_bytes()),
                    ],
                ),
            ],
        )
        .unwrap()
    }

    fn with_trailer(mut db: Vec<u8>) -> Vec<u8> {
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        db
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    #[test]
    fn good_file() {
        let db = sample_db(4096, 300);
        let bytes = with_trailer(db.clone());
        let (_d, p) = write(&bytes);
        let r = verify_snapshot_file(&p, false, None).unwrap();
        assert_eq!(r.size_bytes, db.len() as u64 + 32);
        assert_eq!(r.total_size, db.len() as u64);
        assert_eq!(r.sha256, Some(hex::encode(Sha256::digest(&bytes))));
        assert_eq!(r.revision, 300);
        // 300 keys + clusterVersion + 1 member + 2 meta keys.
        assert_eq!(r.total_key, 304);
        assert_eq!(r.consistent_index, Some(7));
        assert_eq!(r.cluster_version.as_deref(), Some("3.5.0"));
        assert_eq!(
            r.buckets,
            ["cluster", "key", "members", "members_removed", "meta"]
        );
        // A raw db (no trailer) only with the hash check skipped.
        let (_d2, raw) = write(&db);
        assert!(matches!(
            verify_snapshot_file(&raw, false, None),
            Err(VerifyError::NoTrailer { .. })
        ));
        let r2 = verify_snapshot_file(&raw, true, None).unwrap();
        assert_eq!((r2.hash, r2.trailer), (r.hash, Trailer::Absent));
    }

    #[test]
    fn other_page_sizes_give_the_same_status() {
        let a = status_of(&sample_db(4096, 500));
        for ps in [1024, 8192, 65536] {
            let b = status_of(&sample_db(ps, 500));
            assert_eq!(
                (a.hash, a.revision, a.total_key),
                (b.hash, b.revision, b.total_key)
            );
        }
    }

    pub(crate) fn status_of(db: &[u8]) -> DbStatus {
        let (_d, p) = write(db);
        let f = File::open(&p).unwrap();
        status(&Db::open(f, db.len() as u64).unwrap()).unwrap()
    }

    #[test]
    fn flipped_byte_truncated_and_no_trailer() {
        let bytes = with_trailer(sample_db(4096, 50));
        let mut flipped = bytes.clone();
        flipped[9000] ^= 0x40;
        let (_d, p) = write(&flipped);
        assert!(matches!(
            verify_snapshot_file(&p, false, None),
            Err(VerifyError::Mismatch { .. })
        ));
        let (_d, p) = write(&bytes[..bytes.len() - 100]);
        assert!(matches!(
            verify_snapshot_file(&p, false, None),
            Err(VerifyError::NoTrailer { .. })
        ));
        let (_d, p) = write(&bytes[..bytes.len() - 32]);
        assert!(matches!(
            verify_snapshot_file(&p, false, None),
            Err(VerifyError::NoTrailer { .. })
        ));
    }

    #[test]
    fn meta_claims_more_pages_than_present() {
        let db = sample_db(4096, 50);
        let cut = with_trailer(db[..db.len() - 4096].to_vec());
        let (_d, p) = write(&cut);
        assert!(matches!(
            verify_snapshot_file(&p, false, None),
            Err(VerifyError::Truncated { .. })
        ));
    }

    #[test]
    fn hashed_garbage_is_not_bbolt() {
        let (_d, p) = write(&with_trailer(vec![0x55u8; 8192]));
        assert!(matches!(
            verify_snapshot_file(&p, false, None),
            Err(VerifyError::NotBbolt { .. })
        ));
    }

    #[test]
    fn a_corrupt_page_fails_the_integrity_check() {
        let mut db = sample_db(4096, 300);
        // Page 3 onward are tree pages: make one an unknown page type.
        db[3 * 4096 + 8] = 0x40;
        let (_d, p) = write(&with_trailer(db));
        let e = verify_snapshot_file(&p, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("integrity check failed"), "{e}");
        assert!(e.contains("page 3"), "{e}");
    }

    /// xorshift64*: a tiny deterministic generator, so the mutation test is repeatable.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Mutated databases never panic, hang or read outside the file: each gives a status or
    /// an error. Meta pages are re-checksummed half of the time so that mutations of page
    /// ids, the root and the high-water mark get past the checksum.
    #[test]
    fn mutated_databases_never_panic() {
        let seeds = [
            sample_db(4096, 400),
            sample_db(1024, 150),
            sample_db(8192, 60),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut ok, mut failed) = (0, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        for round in 0..3000 {
            let mut db = seeds[round % seeds.len()].clone();
            let ps = u32::from_le_bytes(db[24..28].try_into().unwrap()) as usize;
            for _ in 0..1 + rng.below(8) {
                let at = match rng.below(4) {
                    0 => rng.below(80),          // meta 0
                    1 => ps + rng.below(80),     // meta 1
                    2 => 2 * ps + rng.below(64), // a page header near the start
                    _ => rng.below(db.len()),    // anywhere
                };
                db[at] = match rng.below(3) {
                    0 => db[at] ^ (1 << rng.below(8)),
                    1 => rng.next() as u8,
                    _ => [0, 0xff, 1, 2, 0x10][rng.below(5)],
                };
            }
            if rng.below(2) == 0 {
                for m in [0, ps] {
                    let c = meta::fnv1a64(&db[m + 16..m + 72]);
                    db[m + 72..m + 80].copy_from_slice(&c.to_le_bytes());
                }
            }
            if rng.below(8) == 0 {
                let keep = rng.below(db.len());
                db.truncate(keep);
            }
            std::fs::write(&path, &db).unwrap();
            let f = File::open(&path).unwrap();
            match Db::open(f, db.len() as u64) {
                Ok(d) => match status(&d) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                },
                Err(_) => failed += 1,
            }
        }
        // Both outcomes occur: the mutations reach deep enough to matter.
        assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    }
}
