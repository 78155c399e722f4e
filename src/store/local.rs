//! The local snapshot directory: the one place that names snapshot files, creates the hidden
//! temp file a snapshot streams into, publishes it, and deletes expired ones.
//!
//! Only files whose names match our pattern are ever touched here.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::fsutil;

const PREFIX: &str = "snapshot-etcd-";
const SUFFIX: &str = ".db";
const TEMP_PREFIX: &str = ".snapshot-etcd-";
const TEMP_SUFFIX: &str = ".partial";

/// `snapshot-etcd-<YYYYMMDD>-<HHMMSS>-<member>.db`, UTC.
pub fn snapshot_file_name(at: DateTime<Utc>, member: &str) -> String {
    format!(
        "{PREFIX}{}-{}{SUFFIX}",
        at.format("%Y%m%d-%H%M%S"),
        sanitize_member(member)
    )
}

/// The recovery bundle made with snapshot `file_name` (`….db`), sealed with `sealed_suffix`:
/// `snapshot-etcd-<stamp>-<member>.bundle.tar<suffix>`.
pub fn bundle_name(file_name: &str, sealed_suffix: &str) -> String {
    let stem = file_name.strip_suffix(SUFFIX).unwrap_or(file_name);
    format!("{stem}.bundle.tar{sealed_suffix}")
}

/// Member names become part of a file name: keep `[A-Za-z0-9._-]`, replace the rest.
pub fn sanitize_member(member: &str) -> String {
    let s: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("m{s}")
    } else {
        s
    }
}

/// What sealed copies' names add after `.db` (`encryption::Encryption::suffix`).
const SEALED_SUFFIXES: [&str; 2] = [".zst.age", ".age"];

/// True for names [`snapshot_file_name`] produces (with any member part), and those names
/// with a sealed copy's suffix.
pub fn is_snapshot_file_name(name: &str) -> bool {
    let name = SEALED_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    let Some(rest) = name
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
    else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() > 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && sanitize_member(&rest[16..]) == rest[16..]
}

/// The UTC time in a snapshot file name (`snapshot-etcd-YYYYMMDD-HHMMSS-…`).
pub fn snapshot_time(name: &str) -> Option<DateTime<Utc>> {
    if !is_snapshot_file_name(name) {
        return None;
    }
    let stamp = &name[PREFIX.len()..PREFIX.len() + 15];
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d-%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// The local snapshot directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

/// A snapshot being written: a hidden temp file that is removed when dropped unless published.
#[derive(Debug)]
pub struct TempSnapshot {
    path: PathBuf,
    final_path: PathBuf,
    published: bool,
}

impl TempSnapshot {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl LocalStore {
    pub fn new(dir: &Path) -> LocalStore {
        LocalStore {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0700) if needed. Refuses one that another user owns or others
    /// may write to; returns a warning when an existing directory is readable by group or
    /// others (the files themselves are always 0600).
    pub fn ensure(&self) -> io::Result<Option<String>> {
        fsutil::create_private_dir_all(&self.dir)?;
        fsutil::check_trusted_dir(&self.dir)?;
        Ok((!fsutil::is_private(&self.dir)?).then(|| {
            format!(
                "snapshot directory {} is accessible to group or others (mode {:o}); \
                 snapshots contain every cluster Secret: chmod 0700 it",
                self.dir.display(),
                fs::metadata(&self.dir)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0)
            )
        }))
    }

    pub fn path_of(&self, file_name: &str) -> PathBuf {
        self.dir.join(file_name)
    }

    /// Opens a new hidden temp file (0600, exclusive) for a snapshot that will be published
    /// as `file_name`.
    pub fn create_temp(&self, file_name: &str) -> io::Result<(TempSnapshot, File)> {
        let path = self.dir.join(format!(
            "{TEMP_PREFIX}{}{TEMP_SUFFIX}",
            file_name.strip_prefix(PREFIX).unwrap_or(file_name)
        ));
        // Read access too: the written file is checked (meta pages) before it is published.
        let file = fsutil::create_private_file(&path)?;
        Ok((
            TempSnapshot {
                final_path: self.dir.join(file_name),
                path,
                published: false,
            },
            file,
        ))
    }

    /// Publishes a fully written and fsynced temp file under its final name (never replacing
    /// an existing file) and fsyncs the directory.
    pub fn publish(&self, mut temp: TempSnapshot) -> io::Result<PathBuf> {
        fsutil::publish_no_replace(&temp.path, &temp.final_path)?;
        temp.published = true;
        Ok(temp.final_path.clone())
    }

    /// Removes temp files left by a process that died mid-snapshot. Call with the backup lock
    /// held, so that no live snapshot is touched.
    pub fn remove_stale_temps(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
                let p = self.dir.join(&*name);
                fs::remove_file(&p)?;
                removed.push(p);
            }
        }
        Ok(removed)
    }

    /// Deletes snapshot `file_name`. Refuses names that are not ours. `Ok(false)` when the file
    /// was already gone.
    pub fn delete(&self, file_name: &str) -> io::Result<bool> {
        if !is_snapshot_file_name(file_name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to delete {file_name:?}: not an etcdguard snapshot name"),
            ));
        }
        match fs::remove_file(self.dir.join(file_name)) {
            Ok(()) => {
                fsutil::fsync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_the_pattern() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T14:03:09Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = snapshot_file_name(t, "cp1");
        assert_eq!(n, "snapshot-etcd-20261121-140309-cp1.db");
        assert!(is_snapshot_file_name(&n));
        assert!(is_snapshot_file_name(&snapshot_file_name(t, "a/b c")));
        assert!(is_snapshot_file_name(&format!("{n}.zst.age")));
        assert!(is_snapshot_file_name(&format!("{n}.age")));
        assert_eq!(snapshot_time(&n), Some(t));
        assert_eq!(snapshot_time("records.json"), None);
        for bad in [
            "snapshot-etcd-20261121-140309-.db",
            "snapshot-etcd-2026112-140309-cp1.db",
            "snapshot-etcd-20261121-140309-cp1.db.bak",
            "snapshot-etcd-20261121-140309-cp1.db.zst",
            "snapshot-etcd-20261121-140309-cp1.db.age.age",
            "records.json",
            "snapshot-etcd-20261121-140309-../x.db",
        ] {
            assert!(!is_snapshot_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn temp_is_removed_unless_published() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        let (t, _f) = s
            .create_temp("snapshot-etcd-20261121-140309-cp1.db")
            .unwrap();
        let p = t.path().to_owned();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());

        let (t, _f) = s
            .create_temp("snapshot-etcd-20261121-140309-cp1.db")
            .unwrap();
        let fin = s.publish(t).unwrap();
        assert!(fin.exists());
        let mode = fs::metadata(&fin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn delete_refuses_foreign_names() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path());
        fs::write(d.path().join("important.db"), b"x").unwrap();
        assert!(s.delete("important.db").is_err());
        assert!(d.path().join("important.db").exists());
        assert!(!s.delete("snapshot-etcd-20261121-140309-cp1.db").unwrap());
    }
}
