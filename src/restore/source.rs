//! Where a snapshot comes from: a file; a record id (its local file, or its remote copy
//! downloaded); or a remote key (`s3://bucket/key` or a key in the configured bucket),
//! downloaded into the state dir and checked against its record or sidecar. A sealed source
//! (`[encryption]`: zstd + age) is opened with `--identity` into a private dir beside the
//! downloads, and the snapshot inside is checked against the record's sha256.

use std::path::{Path, PathBuf};

use crate::config::{Config, DestinationConfig};
use crate::encryption::{self, Identities, Unsealed};
use crate::fsutil::{self, under_root};
use crate::records::{CopyState, Outcome, Record, RecordStore};
use crate::state::StateDir;
use crate::store::remote::Remote;

/// A source found (and downloaded, for a remote one), not yet opened.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    /// The plain snapshot's sha256, when a record or sidecar says it.
    pub sha256: Option<String>,
}

/// A plain snapshot ready to read; a sealed source's plain copy lives as long as this.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    _unsealed: Option<Unsealed>,
}

/// Finds the snapshot `source` names and returns it plain: a sealed one is opened with the
/// identity file `identity`. A sealed remote copy is opened as it downloads, in one pass:
/// nothing sealed is written to disk. `config` is already under `root`.
pub async fn resolve_source(
    config: &Config,
    root: &Path,
    source: &str,
    identity: Option<&Path>,
) -> Result<Source, String> {
    let found = match find(config, root, source)? {
        Found::Remote { rc, key, record } if is_sealed_name(&key) => {
            // Said before anything is downloaded: no identity, or one that cannot be read.
            identities(identity, Path::new(&key))?;
            let identity = identity.expect("checked").to_path_buf();
            let dir = StateDir::new(&config.state_dir).downloads();
            return download_opened(rc, &key, record.map(|r| *r), &dir, identity).await;
        }
        Found::Remote { rc, key, record } => {
            let dir = StateDir::new(&config.state_dir).downloads();
            download(rc, &key, record.map(|r| *r), &dir).await?
        }
        Found::File(l) => l,
    };
    let sealed = encryption::is_sealed(&found.path)
        .map_err(|e| format!("cannot read {}: {e}", found.path.display()))?;
    if !sealed {
        return Ok(Source {
            path: found.path,
            _unsealed: None,
        });
    }
    let ids = identities(identity, &found.path)?;
    let dir = StateDir::new(&config.state_dir).downloads();
    fsutil::create_private_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let unsealed = Unsealed::create(&found.path, Some(&ids), &dir)?;
    if let Some(want) = &found.sha256 {
        let got = unsealed.sha256();
        if got != want {
            return Err(format!(
                "{} opens to a snapshot with sha256 {got}, but its record says {want}",
                found.path.display()
            ));
        }
    }
    tracing::info!(source = %found.path.display(), "sealed snapshot opened");
    Ok(Source {
        path: unsealed.path().to_owned(),
        _unsealed: Some(unsealed),
    })
}

/// The identities of `--identity`, required for the sealed `what`.
pub fn identities(identity: Option<&Path>, what: &Path) -> Result<Identities, String> {
    let path = identity.ok_or_else(|| {
        format!(
            "{} is encrypted (age): give an identity that opens it with --identity FILE",
            what.display()
        )
    })?;
    Identities::load(path)
}

/// Finds the file or object `source` names; a remote one is downloaded into the state dir's
/// downloads and checked against the checksum its record or sidecar gives for the object.
pub async fn locate(config: &Config, root: &Path, source: &str) -> Result<Located, String> {
    let dir = StateDir::new(&config.state_dir).downloads();
    locate_into(config, root, source, &dir).await
}

/// [`locate`], downloading into `dir`.
pub async fn locate_into(
    config: &Config,
    root: &Path,
    source: &str,
    dir: &Path,
) -> Result<Located, String> {
    match find(config, root, source)? {
        Found::File(l) => Ok(l),
        Found::Remote { rc, key, record } => download(rc, &key, record.map(|r| *r), dir).await,
    }
}

/// Where a snapshot is, before anything is downloaded.
enum Found<'a> {
    File(Located),
    /// Object `key` at destination `rc`, of `record` when a record names it.
    Remote {
        rc: &'a DestinationConfig,
        key: String,
        record: Option<Box<Record>>,
    },
}

/// A file or an object that holds a sealed copy, by its name (`….db.zst.age`).
fn is_sealed_name(key: &str) -> bool {
    key.ends_with(".age") || key.ends_with(".zst")
}

/// What `source` names: a file, a record's local file or remote copy, or a remote key.
fn find<'a>(config: &'a Config, root: &Path, source: &str) -> Result<Found<'a>, String> {
    let as_file = PathBuf::from(source);
    if as_file.is_file() {
        return Ok(Found::File(Located {
            path: as_file,
            sha256: None,
        }));
    }
    let records = RecordStore::new(&config.state_dir)
        .load()
        .map(|f| f.records)
        .unwrap_or_default();
    if let Some(r) = records.iter().find(|r| r.id == source) {
        if r.result != Outcome::Success {
            return Err(format!("record {source} is not a successful backup"));
        }
        if let Some(l) = r.local.as_ref().filter(|l| l.state == CopyState::Present) {
            for p in [l.path.clone(), under_root(root, &l.path)] {
                if p.is_file() {
                    return Ok(Found::File(Located {
                        path: p,
                        sha256: r.sha256.clone(),
                    }));
                }
            }
        }
        if config
            .destinations
            .iter()
            .any(|d| r.copy(&d.name).is_some_and(|c| c.may_exist()))
        {
            return remote_of(config, r);
        }
        return Err(format!(
            "record {source}: neither its local file nor a remote copy is available"
        ));
    }
    // A location names its destination; a bare key is the first destination's.
    let at = config
        .destinations
        .iter()
        .find_map(|rc| {
            source
                .strip_prefix(&crate::store::remote::location(rc, ""))
                .map(|k| (rc, k))
        })
        .or_else(|| config.primary().map(|rc| (rc, source)));
    if let Some((rc, key)) = at {
        let name = key.rsplit('/').next().unwrap_or("");
        if crate::store::local::is_snapshot_file_name(name) {
            return Ok(Found::Remote {
                rc,
                key: key.to_string(),
                record: None,
            });
        }
    }
    Err(format!(
        "--snapshot {source}: not a file, not a record id in {}, and not a remote key",
        StateDir::new(&config.state_dir).records_file().display()
    ))
}

/// The copy of `record` a download takes: at the first destination (in the configuration's
/// order) that holds one.
pub fn remote_copy_of<'a, 'r>(
    config: &'a Config,
    record: &'r Record,
) -> Option<(&'a DestinationConfig, &'r crate::records::RemoteCopy)> {
    config.destinations.iter().find_map(|rc| {
        record
            .copy(&rc.name)
            .filter(|c| c.may_exist())
            .map(|c| (rc, c))
    })
}

/// Downloads a remote copy of `record` into `dir`, checked against the record: the first
/// destination (in the configuration's order) that holds one.
pub async fn download_copy(
    config: &Config,
    record: &Record,
    dir: &Path,
) -> Result<Located, String> {
    match remote_of(config, record)? {
        Found::Remote { rc, key, record } => download(rc, &key, record.map(|r| *r), dir).await,
        Found::File(l) => Ok(l),
    }
}

/// The remote copy of `record` a download takes (see [`remote_copy_of`]).
fn remote_of<'a>(config: &'a Config, record: &Record) -> Result<Found<'a>, String> {
    let Some((rc, c)) = remote_copy_of(config, record) else {
        return Err(format!(
            "record {} has no remote copy at any configured destination",
            record.id
        ));
    };
    let key = c
        .location
        .strip_prefix(&crate::store::remote::location(rc, ""))
        .unwrap_or(&c.location)
        .to_string();
    Ok(Found::Remote {
        rc,
        key,
        record: Some(Box::new(record.clone())),
    })
}

/// Downloads sealed object `key` and opens it as it arrives: the object's bytes go to the
/// opener (age, zstd) on a blocking thread, which writes the plain snapshot into a private dir
/// under `dir`. Both checksums the record (or the sidecar) gives are checked: the object's,
/// and the plain snapshot's. On any failure nothing is left.
async fn download_opened(
    rc: &DestinationConfig,
    key: &str,
    record: Option<Record>,
    dir: &Path,
    identity: PathBuf,
) -> Result<Source, String> {
    use futures_util::StreamExt;
    use sha2::Digest;
    let remote = Remote::open_shared(rc)?;
    fsutil::create_private_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let record = match record {
        Some(r) => Some(r),
        None => remote.read_sidecar(key).await.ok(),
    };
    let mut stream = remote.stream(key).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let (what, name, parent) = (
        remote.location(key),
        key.rsplit('/').next().unwrap_or("").to_string(),
        dir.to_path_buf(),
    );
    let opener = tokio::task::spawn_blocking(move || {
        let input = Received {
            rx,
            at: bytes::Bytes::new(),
        };
        let ids = Identities::load(&identity)?;
        Unsealed::from_reader(input, Some(&ids), &what, &name, &parent)
    });
    let (mut n, mut sha, mut broke) = (0u64, sha2::Sha256::new(), None);
    let progress = crate::progress::Progress::bytes("download", None);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                n += c.len() as u64;
                sha.update(&c);
                progress.inc(c.len() as u64);
                if tx.send(c).await.is_err() {
                    break; // the opener stopped: its error says why
                }
            }
            Err(e) => {
                broke = Some(e);
                break;
            }
        }
    }
    progress.finish();
    drop(tx);
    let opened = opener
        .await
        .map_err(|e| format!("opening {} failed: {e}", remote.location(key)))?;
    if let Some(e) = broke {
        return Err(e);
    }
    let unsealed = opened?;
    let got = hex::encode(sha.finalize());
    let (object_sha, plain_sha) = record.as_ref().map_or((None, None), |r| {
        let sealed = r.copy(&rc.name).and_then(|c| c.sealed.as_ref());
        (sealed.map(|s| s.object_sha256.clone()), r.sha256.clone())
    });
    if let Some(want) = object_sha.filter(|w| *w != got) {
        return Err(format!(
            "{} downloaded with sha256 {got}, but its record says {want}",
            remote.location(key)
        ));
    }
    if let Some(want) = plain_sha.filter(|w| w != unsealed.sha256()) {
        return Err(format!(
            "{} opens to a snapshot with sha256 {}, but its record says {want}",
            remote.location(key),
            unsealed.sha256()
        ));
    }
    tracing::info!(key, bytes = n, "sealed snapshot downloaded and opened");
    Ok(Source {
        path: unsealed.path().to_owned(),
        _unsealed: Some(unsealed),
    })
}

/// A download's chunks, read as a stream of bytes by the opener's thread.
struct Received {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    at: bytes::Bytes,
}

impl std::io::Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.at = c,
                None => return Ok(0),
            }
        }
        let k = buf.len().min(self.at.len());
        buf[..k].copy_from_slice(&self.at.split_to(k));
        Ok(k)
    }
}

async fn download(
    rc: &DestinationConfig,
    key: &str,
    record: Option<Record>,
    dir: &Path,
) -> Result<Located, String> {
    let remote = Remote::open_shared(rc)?;
    fsutil::create_private_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = key.rsplit('/').next().unwrap_or("snapshot.db");
    let dest = dir.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&dest);
    let (n, got) = remote.download(key, &dest).await?;
    if n == 0 {
        let _ = std::fs::remove_file(&dest);
        return Err(format!("{} is empty", remote.location(key)));
    }
    let record = match record {
        Some(r) => Some(r),
        None => remote.read_sidecar(key).await.ok(),
    };
    // The object's own checksum: the sealed object's, or the snapshot's for a plain one.
    let object_sha =
        record
            .as_ref()
            .and_then(|r| match r.copy(&rc.name).and_then(|c| c.sealed.as_ref()) {
                Some(s) => Some(s.object_sha256.clone()),
                None => r.sha256.clone(),
            });
    if let Some(want) = object_sha {
        if got != want {
            let _ = std::fs::remove_file(&dest);
            return Err(format!(
                "{} downloaded with sha256 {got}, but its record says {want}",
                remote.location(key)
            ));
        }
    }
    tracing::info!(key, bytes = n, path = %dest.display(), "snapshot downloaded");
    Ok(Located {
        path: dest,
        sha256: record.and_then(|r| r.sha256),
    })
}
