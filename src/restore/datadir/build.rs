//! Building a restored data directory from a snapshot: the I/O around the pure plan, WAL and
//! `.snap` encoders and the bbolt append-only commit (restore-spec C.3: restore step by step;
//! C.10: improvements that keep the bytes; F: implementation notes).
//!
//! Everything is built in a hidden staging directory next to the target and published with
//! one `rename`; any failure removes the staging directory and leaves the target as it was
//! (absent, or an empty directory). The snapshot is checked (plan, trailer, sha256, bbolt
//! consistency, etcd buckets) before anything is published. Memory stays flat in the database
//! size: the copy streams through a bounded buffer, the db is read with `pread`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::plan::{resolve, Cluster, PlanError, RestorePlan};
use super::proto::Encoding;
use super::{snap, wal};
use crate::etcddb::schema::{self, Revision};
use crate::etcddb::writer::{self, Change, Item};
use crate::etcddb::{self, Db, DbStatus};
use crate::etcdversion::{self, Compat, Minor};
use crate::fsutil;
use crate::progress::Progress;

const COPY_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("data dir {path}: {reason}")]
    Target { path: PathBuf, reason: String },
    #[error("cannot read snapshot {path}: {source}")]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "snapshot {path} has no sha256 trailer (a data-dir db copy?); pass --skip-hash-check to \
         restore it anyway: it may miss writes that were only in the WAL"
    )]
    NoTrailer { path: PathBuf },
    #[error("snapshot {path} is corrupt: its sha256 trailer says {expected}, its content hashes to {got}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        got: String,
    },
    #[error("snapshot {path} is not a usable etcd database: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fsync {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot rewrite the database: {0}")]
    Commit(String),
    /// The snapshot's version and the target's do not meet (`etcdversion::restore_compat`).
    #[error("{0}")]
    Version(String),
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub target: PathBuf,
    pub cluster: Cluster,
    /// Status of the snapshot's database before the restore changed it.
    pub source: DbStatus,
    /// The revision etcd will report on the restored member (snapshot revision + bump).
    pub revision: i64,
    /// The etcd version the data dir was built for.
    pub target_version: Minor,
    /// Things an operator should know (alarms carried over, a downgrade in progress).
    pub warnings: Vec<String>,
}

/// How to build, beyond the plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Accept a snapshot without sha256 trailer (a data dir's `member/snap/db`).
    pub skip_hash_check: bool,
    /// The etcd minor that will run on the data dir: it picks the raft encoding (3.7's
    /// etcdutl writes what protobuf-go writes) and is checked against the snapshot's version.
    /// `None`: the snapshot's own (its storage version, else its cluster version; 3.5 when it
    /// records neither).
    pub target: Option<Minor>,
    /// Build although the versions are a minor apart or more (never for newer data on an
    /// older etcd).
    pub force: bool,
}

/// The target version for `status`, and the warnings the version rule gives. Refusals are
/// errors. Pure.
fn version_decision(
    status: &DbStatus,
    opts: &BuildOptions,
) -> Result<(Minor, Option<String>), BuildError> {
    let snapshot = Minor::of_snapshot(
        status.storage_version.as_deref(),
        status.cluster_version.as_deref(),
    );
    // The snapshot's own version, by the same reading the rule uses (storage version, else
    // cluster version), so the default target never refuses the snapshot's own data.
    let target = opts.target.unwrap_or_else(|| match snapshot {
        Some((major, minor)) => Minor::nearest(major, minor),
        None => Minor::V3_5,
    });
    match etcdversion::restore_compat(snapshot, (3, target.minor_number())) {
        Compat::Pass(_) => Ok((target, None)),
        Compat::NeedsForce(why) if opts.force => Ok((target, Some(why))),
        Compat::NeedsForce(why) => Err(BuildError::Version(format!(
            "{why} (--target-version picks the etcd the data dir is for)"
        ))),
        Compat::Refuse(why) => Err(BuildError::Version(why)),
    }
}

/// Removes the staging directory unless it was published.
struct Staging {
    path: PathBuf,
    published: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The staging directory of a build by this process of `<parent>/<name>`:
/// `.<name>.restore-<stamp>-<pid>` beside it.
fn staging_path(parent: &Path, name: &str, stamp: u64) -> PathBuf {
    parent.join(format!(".{name}.restore-{stamp}-{}", std::process::id()))
}

/// Removes what a build of `target` that was killed left (its staging directories, which a
/// SIGKILL keeps from their `Drop`); the removed paths. A rollback calls it for the data dir
/// its journal says was being built.
pub fn remove_staging(target: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!(".{}.restore-", name.to_string_lossy());
    let mut removed = Vec::new();
    let entries = match fs::read_dir(parent) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && e.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_dir_all(e.path())?;
            removed.push(e.path());
        }
    }
    if !removed.is_empty() {
        fsutil::fsync_dir(parent)?;
    }
    Ok(removed)
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Write {
        path: path.to_owned(),
        source,
    }
}

fn sync_err(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Sync {
        path: path.to_owned(),
        source,
    }
}

fn private_dir(path: &Path) -> Result<(), BuildError> {
    fs::DirBuilder::new()
        .mode(fsutil::PRIVATE_DIR_MODE)
        .create(path)
        .map_err(write_err(path))
}

use std::os::unix::fs::DirBuilderExt;

fn create_private_file(path: &Path) -> Result<File, BuildError> {
    fsutil::create_private_file(path).map_err(write_err(path))
}

/// The target must not exist, or be an empty directory (as etcdutl requires).
fn check_target(target: &Path) -> Result<(), BuildError> {
    let bad = |reason: String| BuildError::Target {
        path: target.to_owned(),
        reason,
    };
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bad(e.to_string())),
        Ok(m) if !m.is_dir() => Err(bad("exists and is not a directory".into())),
        Ok(_) => match fs::read_dir(target).map(|mut d| d.next().is_none()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(bad(
                "exists and is not empty; a restore never writes into or over existing data".into(),
            )),
            Err(e) => Err(bad(e.to_string())),
        },
    }
}

/// Streams the db part of the snapshot into `dest`, returning the sha256 of the bytes written.
/// SHA-256 (about 1 GB/s even with the CPU's SHA extensions) is the slowest part, so it runs on
/// its own thread, fed the same buffers: reading and writing go on meanwhile. Three buffers of
/// `COPY_BUF` circulate; memory does not grow with the file.
fn copy_db(src: &mut File, dest: &mut File, path: &Path, len: u64) -> std::io::Result<[u8; 32]> {
    const BUFFERS: usize = 3;
    let (filled_tx, filled_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    std::thread::scope(|s| {
        let hashing = s.spawn(move || {
            let mut hasher = Sha256::new();
            for (buf, n) in filled_rx {
                hasher.update(&buf[..n]);
                // The copier may have stopped on an error; then nobody wants it back.
                let _ = empty_tx.send(buf);
            }
            <[u8; 32]>::from(hasher.finalize())
        });
        let mut spare: Vec<Vec<u8>> = (0..BUFFERS).map(|_| vec![0u8; COPY_BUF]).collect();
        let mut left = len;
        let mut writeback = fsutil::Writeback::default();
        let progress = Progress::bytes("copy db", Some(len));
        let copied = (|| {
            while left > 0 {
                let mut buf = match spare.pop() {
                    Some(b) => b,
                    None => empty_rx.recv().expect("hash thread alive"),
                };
                let n = left.min(COPY_BUF as u64) as usize;
                src.read_exact(&mut buf[..n])?;
                crate::failpoint::check("datadir:write", path)?;
                dest.write_all(&buf[..n])?;
                left -= n as u64;
                progress.inc(n as u64);
                filled_tx.send((buf, n)).expect("hash thread alive");
                if let Some((offset, n)) = writeback.due(len - left, 0) {
                    fsutil::start_writeback(dest, offset, n);
                }
            }
            Ok(())
        })();
        drop(filled_tx);
        progress.finish();
        let hash = hashing.join().expect("hash thread");
        copied.map(|()| hash)
    })
}

/// Bucket changes in commit order.
type Changes = Vec<(&'static [u8], Change)>;

/// The bucket changes of a restore (C.3 steps 3–6, 9; C.8).
fn changes(cluster: &Cluster, status: &DbStatus) -> Result<(Changes, i64), String> {
    let mut members: Vec<Item> = cluster
        .members
        .iter()
        .map(|m| {
            Item::new(
                schema::hex_id(m.id).as_bytes(),
                schema::member_json(m.id, &m.peer_urls, &m.name).as_bytes(),
            )
        })
        .collect();
    members.sort_by(|a, b| a.key.cmp(&b.key));
    let n = cluster.members.len() as u64;
    let mut meta = vec![
        Item::new(schema::CONSISTENT_INDEX, &n.to_be_bytes()),
        Item::new(schema::TERM, &1u64.to_be_bytes()),
    ];
    let mut out: Changes = vec![
        (schema::MEMBERS, Change::Replace(members)),
        (schema::MEMBERS_REMOVED, Change::Replace(Vec::new())),
        (schema::CLUSTER, Change::Ensure),
    ];
    let mut revision = status.revision;
    if cluster.bump_revision > 0 {
        let latest = status.latest.unwrap_or(Revision { main: 0, sub: 0 });
        let main = i64::try_from(cluster.bump_revision)
            .ok()
            .and_then(|b| latest.main.checked_add(b))
            .ok_or_else(|| {
                format!(
                    "revision {} + bump {} overflows",
                    latest.main, cluster.bump_revision
                )
            })?;
        let new = Revision { main, sub: 0 }.to_bytes();
        out.push((schema::KEY, Change::Append(Item::new(&new, b""))));
        meta.push(Item::new(schema::SCHEDULED_COMPACT_REV, &new));
        revision = main;
    }
    meta.sort_by(|a, b| a.key.cmp(&b.key));
    out.push((schema::META, Change::Put(meta)));
    Ok((out, revision))
}

/// Reads back what the commit wrote (cheap: the changed buckets only) and compares.
fn verify_commit(db: &Db, cluster: &Cluster, status: &DbStatus) -> Result<(), String> {
    let m = db.meta();
    let top = writer::read_items(db, &root_value(m.root, m.root_sequence))?;
    let bucket = |name: &[u8]| -> Result<Vec<Item>, String> {
        let it = top.iter().find(|i| i.key == name).ok_or_else(|| {
            format!(
                "bucket {} missing after the commit",
                String::from_utf8_lossy(name)
            )
        })?;
        writer::read_items(db, &it.value)
    };
    let members = bucket(schema::MEMBERS)?;
    if members.len() != cluster.members.len() {
        return Err(format!(
            "{} members written, {} planned",
            members.len(),
            cluster.members.len()
        ));
    }
    if !bucket(schema::MEMBERS_REMOVED)?.is_empty() {
        return Err("members_removed is not empty after the commit".into());
    }
    bucket(schema::CLUSTER)?;
    let meta = bucket(schema::META)?;
    let get = |k: &[u8]| meta.iter().find(|i| i.key == k).map(|i| i.value.clone());
    if get(schema::CONSISTENT_INDEX) != Some((cluster.members.len() as u64).to_be_bytes().to_vec())
    {
        return Err("meta/consistent_index is not the member count".into());
    }
    if top.len() < status.buckets.len() {
        return Err("a top-level bucket went missing in the commit".into());
    }
    Ok(())
}

fn root_value(root: u64, sequence: u64) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    v[0..8].copy_from_slice(&root.to_le_bytes());
    v[8..16].copy_from_slice(&sequence.to_le_bytes());
    v
}

/// Builds the data directory `target` for `plan` from `snapshot`.
pub fn build_data_dir(
    snapshot: &Path,
    plan: &RestorePlan,
    target: &Path,
    opts: BuildOptions,
) -> Result<BuildReport, BuildError> {
    let cluster = resolve(plan)?;
    check_target(target)?;
    let (mut src, db_len, trailer) = open_source(snapshot, &opts)?;

    let name = target
        .file_name()
        .ok_or_else(|| BuildError::Target {
            path: target.to_owned(),
            reason: "has no final path component".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fsutil::create_private_dir_all(&parent).map_err(write_err(&parent))?;
    let stamp = u64::try_from(crate::clock::now().timestamp()).unwrap_or(0);
    let mut staging = Staging {
        path: staging_path(&parent, &name, stamp),
        published: false,
    };
    private_dir(&staging.path)?;
    let member = staging.path.join("member");
    let snap_dir = member.join("snap");
    let wal_dir = member.join("wal");
    private_dir(&member)?;
    private_dir(&snap_dir)?;

    // The database: copied and hashed in one pass, and checked (bbolt consistency, status)
    // before it is changed. With a trailer to prove the copy equals the source, the check
    // walks the source on a second thread while the copy runs; without one (a raw db), it
    // walks the copy afterwards.
    let db_path = snap_dir.join("db");
    let (db, status) = copy_and_check(snapshot, &mut src, db_len, trailer, &db_path, &opts)?;
    let bad = |reason: String| BuildError::Snapshot {
        path: snapshot.to_owned(),
        reason,
    };
    let (target_version, version_warning) = version_decision(&status, &opts)?;
    let enc = Encoding::for_target(target_version);
    let (changes, revision) = changes(&cluster, &status).map_err(bad)?;
    writer::commit(&db, &changes)
        .map_err(|e| BuildError::Commit(format!("{}: {e}", db_path.display())))?;
    let db = Db::open(
        db.file().try_clone().map_err(write_err(&db_path))?,
        db.file().metadata().map_err(write_err(&db_path))?.len(),
    )
    .map_err(BuildError::Commit)?;
    verify_commit(&db, &cluster, &status).map_err(BuildError::Commit)?;
    drop(db);

    // The WAL: preallocated like etcd's segments, records at the start.
    private_dir(&wal_dir)?;
    write_wal(&wal_dir, &cluster, enc)?;

    let snap_path = snap_dir.join(snap::file_name(&cluster));
    let mut snap_file = create_private_file(&snap_path)?;
    crate::failpoint::check("datadir:write", &snap_path)
        .and_then(|()| snap_file.write_all(&snap::contents(&cluster, target_version)))
        .map_err(write_err(&snap_path))?;
    crate::failpoint::check("datadir:fsync", &snap_path)
        .and_then(|()| snap_file.sync_all())
        .map_err(sync_err(&snap_path))?;

    for d in [&snap_dir, &wal_dir, &member, &staging.path] {
        fsutil::fsync_dir(d).map_err(write_err(d))?;
    }
    let was_empty_dir = target.is_dir();
    crate::failpoint::check("datadir:rename", target)
        .and_then(|()| fs::rename(&staging.path, target))
        .map_err(|e| BuildError::Target {
            path: target.to_owned(),
            reason: format!("cannot move the built directory into place: {e}"),
        })?;
    staging.published = true;
    if let Err(e) = fsutil::fsync_dir(&parent) {
        // The move may not last: taken back, so that a failed build leaves the target as it
        // was (the staging directory is removed on the way out).
        if fs::rename(target, &staging.path).is_ok() {
            staging.published = false;
            if was_empty_dir {
                let _ = private_dir(target);
            }
        }
        return Err(write_err(&parent)(e));
    }

    let warnings = warnings(&status, version_warning);
    Ok(BuildReport {
        target: target.to_owned(),
        cluster,
        source: status,
        revision,
        target_version,
        warnings,
    })
}

/// Opens the snapshot: its file, the database's length, and the sha256 trailer when it has
/// one (required unless `skip_hash_check`).
fn open_source(
    snapshot: &Path,
    opts: &BuildOptions,
) -> Result<(File, u64, Option<[u8; 32]>), BuildError> {
    let src_err = |source| BuildError::Source {
        path: snapshot.to_owned(),
        source,
    };
    let src = File::open(snapshot).map_err(src_err)?;
    let size = src.metadata().map_err(src_err)?.len();
    let has_hash = size % etcddb::SECTOR == etcddb::TRAILER_LEN;
    if !has_hash && !opts.skip_hash_check {
        return Err(BuildError::NoTrailer {
            path: snapshot.to_owned(),
        });
    }
    let db_len = if has_hash {
        size - etcddb::TRAILER_LEN
    } else {
        size
    };
    let mut trailer = [0u8; 32];
    if has_hash {
        src.read_exact_at(&mut trailer, db_len).map_err(src_err)?;
    }
    Ok((src, db_len, has_hash.then_some(trailer)))
}

/// The database: copied and hashed in one pass, and checked (bbolt consistency, status)
/// before it is changed. With a trailer to prove the copy equals the source, the check walks
/// the source on a second thread while the copy runs; without one (a raw db), it walks the
/// copy afterwards.
fn copy_and_check(
    snapshot: &Path,
    src: &mut File,
    db_len: u64,
    trailer: Option<[u8; 32]>,
    db_path: &Path,
    opts: &BuildOptions,
) -> Result<(Db, DbStatus), BuildError> {
    let mut db_file = create_private_file(db_path)?;
    let bad = |reason: String| BuildError::Snapshot {
        path: snapshot.to_owned(),
        reason,
    };
    let check_source = trailer.is_some() && !opts.skip_hash_check;
    let walker = if check_source {
        Some(File::open(snapshot).map_err(|source| BuildError::Source {
            path: snapshot.to_owned(),
            source,
        })?)
    } else {
        None
    };
    let (copied, checked) = std::thread::scope(|s| {
        let checking = walker.map(|f| {
            s.spawn(move || {
                let db = Db::open(f, db_len)?;
                etcddb::status(&db).map_err(|e| e.to_string())
            })
        });
        let copied = copy_db(src, &mut db_file, db_path, db_len);
        (copied, checking.map(|h| h.join().expect("check thread")))
    });
    let got = copied.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BuildError::Snapshot {
            path: snapshot.to_owned(),
            reason: "it got shorter while being read".into(),
        },
        _ => BuildError::Write {
            path: db_path.to_owned(),
            source: e,
        },
    })?;
    if let Some(trailer) = trailer.filter(|t| *t != got && !opts.skip_hash_check) {
        return Err(BuildError::HashMismatch {
            path: snapshot.to_owned(),
            expected: hex::encode(trailer),
            got: hex::encode(got),
        });
    }
    let db = Db::open(db_file, db_len).map_err(bad)?;
    let status = match checked {
        Some(r) => r.map_err(bad)?,
        None => etcddb::status(&db).map_err(|e| bad(e.to_string()))?,
    };
    for required in [schema::KEY, schema::META] {
        let name = String::from_utf8_lossy(required);
        if !status.buckets.iter().any(|b| *b == name) {
            return Err(bad(format!("it has no `{name}` bucket")));
        }
    }
    if status.consistent_index.is_none() {
        return Err(bad("its meta bucket has no consistent_index".into()));
    }
    Ok((db, status))
}

/// The WAL: preallocated like etcd's segments, records at the start.
fn write_wal(wal_dir: &Path, cluster: &Cluster, enc: Encoding) -> Result<(), BuildError> {
    let wal_path = wal_dir.join(wal::FILE_NAME);
    let wal_file = create_private_file(&wal_path)?;
    let werr = write_err(&wal_path);
    if nix::fcntl::fallocate(
        &wal_file,
        nix::fcntl::FallocateFlags::empty(),
        0,
        wal::SEGMENT_SIZE as i64,
    )
    .is_err()
    {
        wal_file.set_len(wal::SEGMENT_SIZE).map_err(&werr)?;
    }
    crate::failpoint::check("datadir:write", &wal_path).map_err(&werr)?;
    wal_file
        .write_all_at(&wal::records(cluster, enc), 0)
        .map_err(&werr)?;
    crate::failpoint::check("datadir:fsync", &wal_path)
        .and_then(|()| wal_file.sync_all())
        .map_err(sync_err(&wal_path))?;
    Ok(())
}

/// What the operator should know about the restored data.
fn warnings(status: &DbStatus, version_warning: Option<String>) -> Vec<String> {
    let mut warnings: Vec<String> = version_warning.into_iter().collect();
    if status.alarms > 0 {
        warnings.push(format!(
            "the snapshot carries {} etcd alarm(s) (NOSPACE makes the cluster read-only, \
             CORRUPT blocks writes): after the restore check `etcdctl alarm list` and disarm",
            status.alarms
        ));
    }
    if status
        .downgrade
        .as_deref()
        .is_some_and(|d| d.contains("\"enabled\":true"))
    {
        warnings.push("the snapshot records a cluster downgrade in progress".into());
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_staging_takes_only_the_staging_dirs_of_that_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("etcd.restored-20261203T120000Z");
        let mine = staging_path(dir.path(), "etcd.restored-20261203T120000Z", 1);
        let other = staging_path(dir.path(), "etcd.restored-20261203T130000Z", 1);
        for d in [&mine, &other] {
            fs::create_dir_all(d.join("member/snap")).unwrap();
            fs::write(d.join("member/snap/db"), b"x").unwrap();
        }
        // A file of that name pattern is not a staging dir: left alone.
        let file = dir
            .path()
            .join(".etcd.restored-20261203T120000Z.restore-notes");
        fs::write(&file, b"keep").unwrap();
        fs::create_dir(dir.path().join("etcd")).unwrap();

        assert_eq!(remove_staging(&target).unwrap(), vec![mine.clone()]);
        assert!(!mine.exists());
        assert!(other.exists() && file.exists() && dir.path().join("etcd").exists());
        // Idempotent, and fine when nothing is there.
        assert!(remove_staging(&target).unwrap().is_empty());
        assert!(remove_staging(&dir.path().join("gone/x"))
            .unwrap()
            .is_empty());
    }
}
