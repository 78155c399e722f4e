//! An `fs` destination: a mounted directory (NFS, SMB, another disk) kept by the local store's
//! rules. Before anything is written the directory must be there, be a mount point (unless
//! `require_mount = false`: a missing mount must never turn into writes into the empty
//! directory beneath it), be mounted read-write and be writable. A copy is written under a
//! hidden partial name beside its final one (`.<name>.partial`, in a 0700 directory), fsynced,
//! read back and compared with the sha256 and size of what was sent, made 0600 and only then
//! renamed into place without replacing anything, the directory fsynced. A partial file a
//! killed run left is found and removed by the next run (`Remote::open_uploads`).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::credentials::Resolved;
use super::{Backend, Opened};
use crate::config::DestinationConfig;
use crate::fsutil;
use crate::store::local::is_snapshot_file_name;

const PARTIAL_SUFFIX: &str = ".partial";

/// Opens the directory `path` for `node_prefix`: checked first (there, a mount point unless
/// `require_mount = false`, writable), the node's directory made 0700. Local calls: no HTTP
/// transport and no retries (an error is the file system's own).
pub(super) fn open(
    cfg: &DestinationConfig,
    path: &Path,
    require_mount: bool,
    node_prefix: &str,
) -> Result<Opened, String> {
    check(path, require_mount, &cfg.table)?;
    prepare(path, node_prefix)?;
    let root = path.display().to_string();
    let b = opendal::services::Fs::default().root(&root);
    let op = opendal::Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
    Ok(Opened {
        op,
        backend: Backend::Fs {
            root: path.to_path_buf(),
        },
        endpoint: format!("the directory {root}"),
        creds: Resolved::Filesystem,
    })
}

/// The destination's directory can take copies now, or one sentence saying why not.
pub(super) fn check(path: &Path, require_mount: bool, table: &str) -> Result<(), String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{table}.path {shown} does not exist: mount the destination there (or fix {table}.path)"
        ),
        _ => format!("{table}.path {shown}: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(format!("{table}.path {shown} is not a directory"));
    }
    if require_mount && !is_mount_point(path)? {
        return Err(format!(
            "{table}.path {shown} is not a mount point: the file system meant to be mounted \
             there is missing, and etcdguard does not write into the directory beneath it; \
             mount it (or set {table}.require_mount = false if {shown} is a plain directory)"
        ));
    }
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| format!("{table}.path {shown}: {e}"))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(format!(
            "{table}.path {shown} is mounted read-only: remount it read-write"
        ));
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(format!(
            "{table}.path {shown} is not writable by this user (uid {}): fix its owner or mode",
            nix::unistd::geteuid()
        ));
    }
    Ok(())
}

/// True when `path` is where a file system is mounted: the kernel's mount table says so
/// (bind mounts included), or its device differs from its parent's.
fn is_mount_point(path: &Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") {
        if table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| Path::new(&unescape(m)) == real)
        {
            return Ok(true);
        }
    }
    let parent = real.parent().unwrap_or(Path::new("/"));
    let (a, b) = (
        std::fs::metadata(&real).map_err(|e| e.to_string())?,
        std::fs::metadata(parent).map_err(|e| e.to_string())?,
    );
    Ok(a.dev() != b.dev() || a.ino() == b.ino())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates this node's directory (0700, parents too) so that nothing written into it is ever
/// readable by others, whatever the umask of the writer.
pub(super) fn prepare(root: &Path, node_prefix: &str) -> Result<(), String> {
    let dir = root.join(node_prefix);
    fsutil::create_private_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// The hidden partial key of the copy at `key`: `<dir>/.<name>.partial`.
pub(super) fn partial_key(key: &str) -> String {
    match key.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}{PARTIAL_SUFFIX}"),
        None => format!(".{key}{PARTIAL_SUFFIX}"),
    }
}

/// The final key of a partial key; `None` for anything else.
fn final_key(key: &str) -> Option<String> {
    let (dir, name) = match key.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, key),
    };
    let name = name.strip_prefix('.')?.strip_suffix(PARTIAL_SUFFIX)?;
    Some(match dir {
        Some(d) => format!("{d}/{name}"),
        None => name.to_string(),
    })
}

/// A partial file: the final key it was meant for, and when it was last written.
pub(super) type Partial = (String, Option<DateTime<Utc>>);

/// The partial files under this node's directory (a killed upload's).
pub(super) fn partials(root: &Path, node_prefix: &str) -> Result<Vec<Partial>, String> {
    let dir = root.join(node_prefix);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(target) = final_key(&name) else {
            continue;
        };
        if !is_snapshot_file_name(&target) {
            continue;
        }
        let at = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .map(DateTime::<Utc>::from);
        out.push((format!("{node_prefix}{target}"), at));
    }
    out.sort();
    Ok(out)
}

/// Removes the partial file of `key` (a final or a partial key); gone already is fine.
pub(super) fn remove_partial(root: &Path, key: &str) -> Result<(), String> {
    let partial = if final_key(key.rsplit('/').next().unwrap_or(key)).is_some() {
        key.to_string()
    } else {
        partial_key(key)
    };
    let path = root.join(&partial);
    match std::fs::remove_file(&path) {
        Ok(()) => fsutil::fsync_dir(path.parent().unwrap_or(root))
            .map_err(|e| format!("cannot fsync {}: {e}", root.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Reads the partial file of `key` back, and when it holds exactly what was sent (`sha256`,
/// `size`) makes it 0600 and renames it to `key` without replacing anything, durably. Any
/// failure removes the partial file; nothing half-done is ever visible under the final name.
pub(super) fn publish(root: &Path, key: &str, sha256: &str, size: u64) -> Result<(), String> {
    let partial: PathBuf = root.join(partial_key(key));
    let target = root.join(key);
    let result = (|| {
        let mut f = std::fs::File::open(&partial)
            .map_err(|e| format!("cannot read back {}: {e}", partial.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read back {}: {e}", partial.display()))?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            n += got as u64;
        }
        let got = hex::encode(hasher.finalize());
        if n != size || got != sha256 {
            return Err(format!(
                "{} reads back as {n} bytes with sha256 {got}, but {size} bytes with sha256 \
                 {sha256} were written: the copy is not kept",
                partial.display()
            ));
        }
        f.set_permissions(std::fs::Permissions::from_mode(fsutil::PRIVATE_FILE_MODE))
            .map_err(|e| format!("cannot chmod {}: {e}", partial.display()))?;
        fsutil::publish_no_replace(&partial, &target)
            .map_err(|e| format!("cannot rename {} into place: {e}", partial.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_round_trip() {
        let k = "pfx/node-a/etcd-snapshot-20261203-101500-node-a.db";
        let p = partial_key(k);
        assert_eq!(
            p,
            "pfx/node-a/.etcd-snapshot-20261203-101500-node-a.db.partial"
        );
        assert_eq!(final_key(&p).as_deref(), Some(k));
        assert_eq!(final_key(k), None);
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
    }

    #[test]
    fn publish_checks_before_the_name_appears() {
        let d = tempfile::tempdir().unwrap();
        let key = "n/etcd-snapshot-20261203-101500-n.db";
        prepare(d.path(), "n/").unwrap();
        let partial = d.path().join(partial_key(key));
        std::fs::write(&partial, b"hello").unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        let e = publish(d.path(), key, &sha, 6).unwrap_err();
        assert!(e.contains("reads back as 5 bytes"), "{e}");
        assert!(!partial.exists() && !d.path().join(key).exists());
        std::fs::write(&partial, b"hello").unwrap();
        publish(d.path(), key, &sha, 5).unwrap();
        assert!(!partial.exists());
        let mode = std::fs::metadata(d.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(d.path().join(key)).unwrap(), b"hello");
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("backups");
        std::fs::create_dir(&sub).unwrap();
        let e = check(&sub, true, "destination.nfs").unwrap_err();
        assert!(e.contains("is not a mount point"), "{e}");
        check(&sub, false, "destination.nfs").unwrap();
        let e = check(&d.path().join("missing"), false, "destination.nfs").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
