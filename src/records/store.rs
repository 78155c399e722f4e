//! The records file on disk: read, locked change, atomic replace, a corrupt file moved aside.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{Record, RecordsFile, RECORDS_VERSION};
use crate::fsutil;
use crate::state::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("cannot access records file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "records file {path} does not parse ({message}); it was left as it is. Move it away \
         or repair it; the next backup moves it aside and starts a new one"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("records file {path} has version {found}; this etcdguard reads version {RECORDS_VERSION} (was it written by a newer release?)")]
    Version { path: PathBuf, found: u32 },
}

/// A records file that did not parse and was moved aside by a writer.
#[derive(Debug, Clone)]
pub struct MovedAside {
    pub from: PathBuf,
    pub to: PathBuf,
    pub message: String,
}

impl std::fmt::Display for MovedAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records file {} did not parse ({}); it was moved aside to {} and a new records \
             file was started. Older backups are no longer listed and are never deleted by \
             retention",
            self.from.display(),
            self.message,
            self.to.display()
        )
    }
}

/// The records file of one state directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    pub(super) path: PathBuf,
    lock_path: PathBuf,
}

enum Loaded {
    Missing,
    Parsed(RecordsFile),
    Corrupt(String),
}

impl RecordStore {
    pub fn new(state_dir: &Path) -> RecordStore {
        RecordStore {
            path: StateDir::new(state_dir).records_file(),
            lock_path: StateDir::new(state_dir).records_lock(),
        }
    }

    fn read(&self) -> Result<Loaded, RecordsError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(source) => {
                return Err(RecordsError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        match serde_json::from_slice::<RecordsFile>(&bytes) {
            Ok(f) if f.version != RECORDS_VERSION => Err(RecordsError::Version {
                path: self.path.clone(),
                found: f.version,
            }),
            Ok(f) => Ok(Loaded::Parsed(f)),
            Err(e) => Ok(Loaded::Corrupt(e.to_string())),
        }
    }

    /// Appends one record (creating the state dir 0700 if needed).
    pub fn append(&self, record: Record) -> Result<(), RecordsError> {
        if let Some(dir) = self.path.parent() {
            fsutil::create_private_dir_all(dir).map_err(|source| RecordsError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        self.update(record.backup_timestamp, |f| f.push(record))
            .map(|_| ())
    }

    /// Reads the records without changing anything. A missing file is an empty history.
    pub fn load(&self) -> Result<RecordsFile, RecordsError> {
        match self.read()? {
            Loaded::Missing => Ok(RecordsFile::default()),
            Loaded::Parsed(f) => Ok(f),
            Loaded::Corrupt(message) => Err(RecordsError::Corrupt {
                path: self.path.clone(),
                message,
            }),
        }
    }

    /// Changes the records under the lock and replaces the file atomically (mode 0600).
    /// A corrupt file is moved aside to `records.json.corrupt-<UTC timestamp>` first and
    /// reported in the second element of the result.
    pub fn update<T>(
        &self,
        now: DateTime<Utc>,
        change: impl FnOnce(&mut RecordsFile) -> T,
    ) -> Result<(T, Option<MovedAside>), RecordsError> {
        let io = |source| RecordsError::Io {
            path: self.path.clone(),
            source,
        };
        let _guard = fsutil::lock(&self.lock_path).map_err(io)?;
        let (mut file, moved) = match self.read()? {
            Loaded::Missing => (RecordsFile::default(), None),
            Loaded::Parsed(f) => (f, None),
            Loaded::Corrupt(message) => {
                let to = self.path.with_file_name(format!(
                    "{}.corrupt-{}",
                    crate::state::RECORDS_FILE,
                    crate::clock::stamp(now)
                ));
                std::fs::rename(&self.path, &to).map_err(io)?;
                (
                    RecordsFile::default(),
                    Some(MovedAside {
                        from: self.path.clone(),
                        to,
                        message,
                    }),
                )
            }
        };
        let out = change(&mut file);
        let mut json = serde_json::to_vec_pretty(&file).expect("records serialize");
        json.push(b'\n');
        fsutil::write_atomic(&self.path, &json, fsutil::PRIVATE_FILE_MODE).map_err(io)?;
        Ok((out, moved))
    }
}
