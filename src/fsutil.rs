//! The one place for durable filesystem primitives: private directories and files, atomic
//! replace, directory fsync, durable moves, `--root` path mapping and advisory locks.
//! Everything that must survive a crash goes through here, so there is exactly one
//! atomic-write helper and one lock helper in the codebase.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::failpoint;

/// Mode of every directory etcdguard creates: snapshots hold every cluster Secret.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file etcdguard creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with mode 0700. An existing directory is left as it
/// is; the caller decides whether wider permissions on it are a problem ([`is_private`]).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Refuses a directory etcdguard keeps its state or snapshots in when someone else could
/// change what is in it: owned by another user, or writable by group or others. The error
/// says which, and the command that fixes it.
pub fn check_trusted_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is owned by uid {}, not by the user etcdguard runs as (uid {me}): that user \
                 could replace what etcdguard reads there; chown {me} {} (or use another \
                 directory)",
                meta.uid(),
                dir.display()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is writable by {} (mode {mode:04o}): they could replace records, locks or \
                 snapshots; chmod 0700 {}",
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// True when neither group nor others have any access to `path`.
pub fn is_private(path: &Path) -> io::Result<bool> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o077 == 0)
}

/// `e` with the operation that failed and its path in front (`fsync /a/b: Input/output
/// error`), its kind kept: the caller's message then says what failed where.
fn failed<'a>(op: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// fsyncs a directory so that a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    sync_dir(dir, "dir:fsync", dir)
}

/// [`fsync_dir`] for a primitive: its fail point `site` is checked with `subject`.
fn sync_dir(dir: &Path, site: &str, subject: &Path) -> io::Result<()> {
    failpoint::check(site, subject)
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(failed("fsync directory", dir))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` atomically with `bytes`: a hidden temp file in the same directory, written,
/// fsynced, renamed over `path`, then the directory fsynced. Readers see the old or the new
/// content, never a mix; a crash leaves at most a stray hidden temp file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = failpoint::check("atomic:create", path)
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&tmp)
            })
            .map_err(failed("create", &tmp))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(failed("chmod", &tmp))?;
        failpoint::check("atomic:write", path)
            .and_then(|()| f.write_all(bytes))
            .map_err(failed("write", &tmp))?;
        failpoint::check("atomic:fsync", path)
            .and_then(|()| f.sync_all())
            .map_err(failed("fsync", &tmp))?;
        failpoint::check("atomic:rename", path)
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(failed("rename into place", &tmp))?;
        sync_dir(dir, "atomic:dir-fsync", path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` only if `to` does not exist yet, durably (hard link, unlink, fsync dir).
/// Both must be in the same directory. All or nothing: when the unlink or the fsync fails, `to`
/// is taken back (`from` is left for the caller to remove), so that a caller told "failed"
/// never leaves a file published, nor one whose directory entry may not last.
pub fn publish_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    failpoint::check("publish:link", to)
        .and_then(|()| fs::hard_link(from, to))
        .map_err(failed("link", to))?;
    let unlinked = failpoint::check("publish:unlink", to)
        .and_then(|()| fs::remove_file(from))
        .map_err(failed("unlink", from));
    if let Err(e) = unlinked {
        let _ = fs::remove_file(to);
        return Err(e);
    }
    if let Err(e) = sync_dir(parent_of(to), "publish:dir-fsync", to) {
        let _ = fs::rename(to, from);
        return Err(e);
    }
    Ok(())
}

/// Renames `from` to `to` durably: both directories fsynced after the rename.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    failpoint::check("move:rename", to)
        .and_then(|()| fs::rename(from, to))
        .map_err(failed(&format!("rename {} to", from.display()), to))?;
    for d in [from.parent(), to.parent()].into_iter().flatten() {
        sync_dir(d, "move:dir-fsync", d)?;
    }
    Ok(())
}

/// Moves a file durably: rename, or across filesystems an atomic copy (same mode) and unlink;
/// both directories fsynced.
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    match failpoint::check("move:rename", to).and_then(|()| fs::rename(from, to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let bytes = fs::read(from).map_err(failed("read", from))?;
            write_atomic(to, &bytes, mode_of(from)?)?;
            fs::remove_file(from).map_err(failed("unlink", from))?;
        }
        Err(e) => return Err(failed(&format!("rename {} to", from.display()), to)(e)),
    }
    for d in [from.parent(), to.parent()].into_iter().flatten() {
        sync_dir(d, "move:dir-fsync", d)?;
    }
    Ok(())
}

/// The permission bits of `path` (what to give its copy).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Creates a new file readable and writable by its owner only (0600 whatever the umask), open
/// for reading and writing; fails if `path` exists.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = failpoint::check("file:create", path)
        .and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE_MODE)
                .open(path)
        })
        .map_err(failed("create", path))?;
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))
        .map_err(failed("chmod", path))?;
    Ok(file)
}

/// `p` (an absolute path of the node) as seen under `root`, where the node's disk is mounted
/// (`restore --root`). With root `/` it is `p` itself.
pub fn under_root(root: &Path, p: &Path) -> PathBuf {
    match p.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(p),
    }
}

/// An exclusive advisory lock (flock) held for the life of the value. The lock file holds the
/// holder's pid so that a waiting process can say who it waits for.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

/// What [`try_lock`] found when the lock was taken by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHeld {
    pub holder_pid: Option<u32>,
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

fn note_holder(lock: &Flock<File>) {
    let f: &File = lock;
    let _ = f.set_len(0);
    let _ = (&*f).write_all(format!("{}\n", std::process::id()).as_bytes());
}

/// Takes the lock at `path` without waiting. `Ok(Err(held))` when another process holds it.
pub fn try_lock(path: &Path) -> io::Result<Result<LockGuard, LockHeld>> {
    let file = open_lock_file(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            note_holder(&lock);
            Ok(Ok(LockGuard { _lock: lock }))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder_pid = fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Ok(Err(LockHeld { holder_pid }))
        }
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

/// Takes the lock at `path`, waiting as long as it takes. For short critical sections only
/// (the records file), never for a whole backup.
pub fn lock(path: &Path) -> io::Result<LockGuard> {
    let file = open_lock_file(path)?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
    note_holder(&lock);
    Ok(LockGuard { _lock: lock })
}

/// Hands `[offset, offset + len)` of a file to the kernel's writeback without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the fsync at the end of a large sequential
/// write finds most pages already on their way to disk instead of all of them dirty.
/// Advisory only: errors are ignored; the fsync that must follow reports real ones.
pub fn start_writeback(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64) {
    sync_range(file, offset, len, nix::libc::SYNC_FILE_RANGE_WRITE);
}

/// Waits until the range's writeback (started by [`start_writeback`]) is done: what a writer
/// calls on an older range to keep the bytes in flight to the disk bounded. Advisory too.
pub fn wait_writeback(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64) {
    sync_range(
        file,
        offset,
        len,
        nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | nix::libc::SYNC_FILE_RANGE_WRITE
            | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
}

/// `sync_file_range` with `flags`; a range that does not fit the call is skipped.
fn sync_range(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64, flags: u32) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor the caller keeps open; no memory is passed.
    unsafe {
        nix::libc::sync_file_range(file.as_raw_fd(), offset, len, flags);
    }
}

/// Tells the kernel the file's cached pages will not be read again (they are on disk): they
/// leave the page cache instead of pushing out what others (etcd's database) keep there.
pub fn drop_cached(file: &impl std::os::fd::AsRawFd) {
    // SAFETY: a plain syscall on a descriptor the caller keeps open; advice only.
    unsafe {
        nix::libc::posix_fadvise(file.as_raw_fd(), 0, 0, nix::libc::POSIX_FADV_DONTNEED);
    }
}

/// How far a file written front to back has been handed to writeback: every `step` bytes
/// (16 MiB by default) the next range is due. Pure bookkeeping; [`start_writeback`] does the
/// call.
#[derive(Debug)]
pub struct Writeback {
    started: u64,
    step: u64,
}

impl Default for Writeback {
    fn default() -> Self {
        Writeback {
            started: 0,
            step: Self::STEP,
        }
    }
}

impl Writeback {
    pub const STEP: u64 = 16 << 20;

    /// Ranges of `step` bytes: smaller ones keep what queues before another process's fsync
    /// short.
    pub fn with_step(step: u64) -> Self {
        Writeback { started: 0, step }
    }

    /// The range due now that `written` bytes were written, of which the last `lag` may still
    /// sit in user-space buffers.
    pub fn due(&mut self, written: u64, lag: u64) -> Option<(u64, u64)> {
        let upto = written.saturating_sub(lag);
        if upto < self.started + self.step {
            return None;
        }
        let range = (self.started, upto - self.started);
        self.started = upto;
        Some(range)
    }
}

/// Bytes and inodes available at `dir` (or its nearest existing parent).
pub fn free_space(dir: &Path) -> Result<(u64, u64), String> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        if !d.pop() {
            break;
        }
    }
    let st = nix::sys::statvfs::statvfs(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok((
        st.blocks_available() as u64 * st.fragment_size() as u64,
        st.files_available() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_dirs_are_ours_and_not_writable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        create_private_dir_all(&d).unwrap();
        check_trusted_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        check_trusted_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_trusted_dir(&d).unwrap_err().to_string();
        assert!(e.contains("writable by everyone (mode 0777)"), "{e}");
        assert!(e.contains(&format!("chmod 0700 {}", d.display())), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o770)).unwrap();
        let e = check_trusted_dir(&d).unwrap_err().to_string();
        assert!(e.contains("writable by its group"), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let e = check_trusted_dir(&d).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert!(e.contains("chown 0 "), "{e}");
        }
    }

    #[test]
    fn writeback_ranges_are_contiguous_and_lag_behind() {
        let mut w = Writeback::default();
        let step = Writeback::STEP;
        assert_eq!(w.due(step - 1, 0), None);
        assert_eq!(w.due(step + 100, 100), Some((0, step)));
        assert_eq!(w.due(step + 200, 100), None);
        assert_eq!(w.due(3 * step, 0), Some((step, 2 * step)));
        assert_eq!(w.due(10, 1 << 40), None, "lag larger than what was written");
    }

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // no temp file left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn publish_no_replace_refuses_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"new").unwrap();
        fs::write(&b, b"old").unwrap();
        assert!(publish_no_replace(&a, &b).is_err());
        assert_eq!(fs::read(&b).unwrap(), b"old");
        assert!(a.exists());
    }

    #[test]
    fn second_try_lock_sees_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let _g = try_lock(&p).unwrap().unwrap();
        // flock locks belong to the open file description, so a second open conflicts even
        // within one process.
        let held = try_lock(&p).unwrap().unwrap_err();
        assert_eq!(held.holder_pid, Some(std::process::id()));
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        create_private_dir_all(&p).unwrap();
        assert!(is_private(&p).unwrap());
        assert!(is_private(&dir.path().join("a")).unwrap());
    }
}
