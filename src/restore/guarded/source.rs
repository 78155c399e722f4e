//! Where the snapshot comes from: a file; a record id (its local file, or its remote copy
//! downloaded); or a remote key (`s3://bucket/key` or a key in the configured bucket),
//! downloaded into the state dir and checked against its record or sidecar.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::fsutil::{self, under_root};
use crate::records::{CopyState, Outcome, RecordStore};
use crate::state::StateDir;
use crate::store::remote::Remote;

/// Finds the snapshot `--snapshot` names. `config` is already under `root`; a record's own
/// path is tried as written and under `root`.
pub async fn resolve_source(config: &Config, root: &Path, source: &str) -> Result<PathBuf, String> {
    let as_file = PathBuf::from(source);
    if as_file.is_file() {
        return Ok(as_file);
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
                    return Ok(p);
                }
            }
        }
        if let (Some(c), Some(rc)) = (&r.remote, &config.remote_storage) {
            if c.may_exist() {
                let key = c
                    .location
                    .strip_prefix(&format!("s3://{}/", rc.bucket))
                    .unwrap_or(&c.location)
                    .to_string();
                return download(config, &key, r.sha256.as_deref()).await;
            }
        }
        return Err(format!(
            "record {source}: neither its local file nor a remote copy is available"
        ));
    }
    if let Some(rc) = &config.remote_storage {
        let key = source
            .strip_prefix(&format!("s3://{}/", rc.bucket))
            .unwrap_or(source);
        if key.ends_with(".db") {
            return download(config, key, None).await;
        }
    }
    Err(format!(
        "--snapshot {source}: not a file, not a record id in {}, and not a remote key",
        StateDir::new(&config.state_dir).records_file().display()
    ))
}

async fn download(config: &Config, key: &str, sha256: Option<&str>) -> Result<PathBuf, String> {
    let rc = config
        .remote_storage
        .as_ref()
        .ok_or("no [remote_storage] configured to download from")?;
    let remote = Remote::open(rc, "-")?;
    let dir = StateDir::new(&config.state_dir).downloads();
    fsutil::create_private_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = key.rsplit('/').next().unwrap_or("snapshot.db");
    let dest = dir.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&dest);
    let n = remote.download(key, &dest).await?;
    if n == 0 {
        let _ = std::fs::remove_file(&dest);
        return Err(format!("{} is empty", remote.location(key)));
    }
    let want = match sha256 {
        Some(s) => Some(s.to_string()),
        None => remote.read_sidecar(key).await.ok().and_then(|r| r.sha256),
    };
    if let Some(want) = want {
        let got = sha256_file(&dest)?;
        if got != want {
            let _ = std::fs::remove_file(&dest);
            return Err(format!(
                "{} downloaded with sha256 {got}, but its record says {want}",
                remote.location(key)
            ));
        }
    }
    tracing::info!(key, bytes = n, path = %dest.display(), "snapshot downloaded");
    Ok(dest)
}

fn sha256_file(p: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
