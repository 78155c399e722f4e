//! etcd's database file (bbolt) and snapshot files made of it.
//!
//! Today: the snapshot-file check shared by `verify` and every backup (sha256 trailer, bbolt
//! meta pages, size). The full bbolt reader/checker and `snapshot status` fields grow here.

pub mod meta;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use meta::{choose_active, parse_meta, Meta, META_LEN};

/// etcdutl's rule for "this file carries a sha256 trailer" (restore-spec A.2).
pub const SECTOR: u64 = 512;
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
         512): it is truncated, or a copy of a data-dir db rather than a snapshot"
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
}

/// What [`verify_snapshot_file`] established about a good file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFileReport {
    pub path: PathBuf,
    pub size_bytes: u64,
    /// sha256 of the whole file, as `sha256sum` prints it.
    pub sha256: String,
    pub trailer: &'static str,
    pub page_size: u32,
    /// Bytes of the database proper (etcdutl's `totalSize`).
    pub total_size: u64,
    pub txid: u64,
}

/// Reads the two meta pages of an open db, discovering the page size (restore-spec B.3).
pub fn read_active_meta(file: &File, len: u64) -> Result<Meta, String> {
    let read_at = |off: u64| -> Result<Vec<u8>, String> {
        if off + META_LEN as u64 > len {
            return Err(format!("file ends before offset {}", off + META_LEN as u64));
        }
        let mut buf = vec![0u8; META_LEN];
        file.read_exact_at(&mut buf, off)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    };
    let meta0 = read_at(0).and_then(|b| parse_meta(&b));
    let meta1 = match &meta0 {
        Ok(m) => read_at(u64::from(m.page_size)).and_then(|b| parse_meta(&b)),
        // Page size unknown: probe meta 1 at 1 KiB·2^i.
        Err(e) => (0..15)
            .map(|i| 1024u64 << i)
            .find_map(|off| read_at(off).and_then(|b| parse_meta(&b)).ok())
            .ok_or_else(|| e.clone()),
    };
    choose_active(meta0, meta1)
}

/// Checks a snapshot file as it lies on disk: trailer present and matching, meta pages valid,
/// database not truncated. Streams the file with a bounded buffer.
pub fn verify_snapshot_file(path: &Path) -> Result<SnapshotFileReport, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < 2 * 1024 + TRAILER_LEN {
        return Err(VerifyError::TooSmall {
            path: path.to_owned(),
            size,
        });
    }
    if size % SECTOR != TRAILER_LEN {
        return Err(VerifyError::NoTrailer {
            path: path.to_owned(),
            size,
        });
    }
    let db_len = size - TRAILER_LEN;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut left = db_len;
    while left > 0 {
        let n = (left.min(READ_BUF as u64)) as usize;
        file.read_exact(&mut buf[..n]).map_err(io)?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.seek(SeekFrom::Start(db_len)).map_err(io)?;
    file.read_exact(&mut trailer).map_err(io)?;
    let mut whole = hasher.clone();
    let computed: [u8; 32] = hasher.finalize().into();
    let meta = read_active_meta(&file, db_len);
    if let Ok(m) = &meta {
        // A file cut at a page boundary still looks like it has a trailer; its meta tells.
        if m.db_size() > db_len {
            return Err(VerifyError::Truncated {
                path: path.to_owned(),
                needed: m.db_size(),
                have: db_len,
            });
        }
    }
    if computed != trailer {
        return Err(VerifyError::Mismatch {
            path: path.to_owned(),
            expected: hex::encode(trailer),
            computed: hex::encode(computed),
        });
    }
    whole.update(trailer);
    let meta = meta.map_err(|reason| VerifyError::NotBbolt {
        path: path.to_owned(),
        reason,
    })?;
    Ok(SnapshotFileReport {
        path: path.to_owned(),
        size_bytes: size,
        sha256: hex::encode(whole.finalize()),
        trailer: "ok",
        page_size: meta.page_size,
        total_size: meta.db_size(),
        txid: meta.txid,
    })
}

#[cfg(test)]
mod tests {
    use super::meta::tests::meta_page;
    use super::*;

    fn snapshot_bytes() -> Vec<u8> {
        let mut db = meta_page(0, 4096, 4, 20);
        db.extend(meta_page(1, 4096, 4, 19));
        db.extend(vec![0u8; 2 * 4096]);
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
        let bytes = snapshot_bytes();
        let (_d, p) = write(&bytes);
        let r = verify_snapshot_file(&p).unwrap();
        assert_eq!(r.size_bytes, 4 * 4096 + 32);
        assert_eq!(r.total_size, 4 * 4096);
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn flipped_byte_truncated_and_no_trailer() {
        let mut bytes = snapshot_bytes();
        bytes[9000] ^= 0x40;
        let (_d, p) = write(&bytes);
        assert!(matches!(
            verify_snapshot_file(&p),
            Err(VerifyError::Mismatch { .. })
        ));
        let bytes = snapshot_bytes();
        let (_d, p) = write(&bytes[..bytes.len() - 100]);
        assert!(matches!(
            verify_snapshot_file(&p),
            Err(VerifyError::NoTrailer { .. })
        ));
        let (_d, p) = write(&bytes[..bytes.len() - 32]);
        assert!(matches!(
            verify_snapshot_file(&p),
            Err(VerifyError::NoTrailer { .. })
        ));
    }

    #[test]
    fn meta_claims_more_pages_than_present() {
        let mut db = meta_page(0, 4096, 9, 20);
        db.extend(meta_page(1, 4096, 9, 19));
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        let (_d, p) = write(&db);
        assert!(matches!(
            verify_snapshot_file(&p),
            Err(VerifyError::Truncated { .. })
        ));
    }

    #[test]
    fn hashed_garbage_is_not_bbolt() {
        let mut db = vec![0x55u8; 8192];
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        let (_d, p) = write(&db);
        assert!(matches!(
            verify_snapshot_file(&p),
            Err(VerifyError::NotBbolt { .. })
        ));
    }
}
