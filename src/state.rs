//! The state directory (`state_dir`, default `/var/lib/etcdguard`): the one place that names
//! what lives there and takes the backup lock.
//!
//! - `records.json`: the records file, replaced atomically under `records.lock` (`records.rs`);
//! - `backup.lock`: held for a whole backup, remote maintenance or restore, so that only one
//!   of them touches snapshots, the bucket or etcd's data dir at a time. It holds the holder's
//!   pid, which the `Busy` error names;
//! - `restore-downloads/`: snapshots a restore fetched from the bucket;
//! - `recover/<stamp>/`: one `recover` run's work dir (its bundle, the files it put back,
//!   the files it replaced, its journal);
//! - `drill.lock`: held for a whole restore drill (one at a time; it never blocks a backup);
//! - `snapshots/` and `drill/`: the defaults of `local_storage.path` and `drill.scratch_dir`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fsutil::{self, LockGuard};

pub const RECORDS_FILE: &str = "records.json";
const RECORDS_LOCK: &str = "records.lock";
const BACKUP_LOCK: &str = "backup.lock";
const DOWNLOADS_DIR: &str = "restore-downloads";
const DRILL_LOCK: &str = "drill.lock";
const RECOVER_DIR: &str = "recover";
const SNAPSHOTS_DIR: &str = "snapshots";
const DRILL_DIR: &str = "drill";

/// How often a waiting restore looks at the lock again.
const LOCK_POLL: Duration = Duration::from_secs(2);

/// Why the backup lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another backup is running{} (lock {lock}); not starting a second one", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { holder: Option<u32>, lock: PathBuf },
    #[error("cannot use state directory {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// One state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_owned(),
        }
    }

    pub fn records_file(&self) -> PathBuf {
        self.dir.join(RECORDS_FILE)
    }

    pub fn records_lock(&self) -> PathBuf {
        self.dir.join(RECORDS_LOCK)
    }

    /// Where a restore downloads a remote snapshot to.
    pub fn downloads(&self) -> PathBuf {
        self.dir.join(DOWNLOADS_DIR)
    }

    /// Where `recover` keeps its work dirs, one per run (`<stamp>/`).
    pub fn recover_dir(&self) -> PathBuf {
        self.dir.join(RECOVER_DIR)
    }

    /// The default of `local_storage.path`.
    pub fn default_snapshots_dir(&self) -> PathBuf {
        self.dir.join(SNAPSHOTS_DIR)
    }

    /// The default of `drill.scratch_dir`.
    pub fn default_drill_scratch_dir(&self) -> PathBuf {
        self.dir.join(DRILL_DIR)
    }

    /// Takes the backup lock now (creating the directory 0700), or says who holds it.
    pub fn lock_backup(&self) -> Result<LockGuard, LockError> {
        self.lock_now(BACKUP_LOCK)
    }

    /// Takes the drill lock now, or says who holds it (`Busy`).
    pub fn lock_drill(&self) -> Result<LockGuard, LockError> {
        self.lock_now(DRILL_LOCK)
    }

    fn lock_now(&self, name: &str) -> Result<LockGuard, LockError> {
        let state_err = |source| LockError::StateDir {
            dir: self.dir.clone(),
            source,
        };
        fsutil::create_private_dir_all(&self.dir).map_err(state_err)?;
        fsutil::check_trusted_dir(&self.dir).map_err(state_err)?;
        let lock = self.dir.join(name);
        fsutil::try_lock(&lock)
            .map_err(state_err)?
            .map_err(|held| LockError::Busy {
                holder: held.holder_pid,
                lock,
            })
    }

    /// Like [`lock_backup`](Self::lock_backup), waiting up to `bound` for a running backup to
    /// finish (a restore waits; a second backup does not).
    pub fn lock_backup_waiting(&self, bound: Duration) -> Result<LockGuard, LockError> {
        let deadline = Instant::now() + bound;
        loop {
            match self.lock_backup() {
                Err(LockError::Busy { holder, .. }) if Instant::now() < deadline => {
                    tracing::info!(holder = ?holder, "waiting for the backup that is running to finish");
                    std::thread::sleep(LOCK_POLL);
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(&d.path().join("state"));
        let _held = s.lock_backup().unwrap();
        // flock is per open file: a second open in this process conflicts too.
        match s.lock_backup_waiting(Duration::ZERO) {
            Err(LockError::Busy { holder, lock }) => {
                assert_eq!(holder, Some(std::process::id()));
                assert_eq!(lock, d.path().join("state").join(BACKUP_LOCK));
            }
            other => panic!("{other:?}"),
        }
    }
}
