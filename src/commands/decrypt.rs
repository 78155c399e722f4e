//! `etcdguard decrypt SOURCE --identity FILE --output OUT`: the plain snapshot inside an
//! encrypted copy, written atomically (temp file beside OUT, fsync, rename without replacing,
//! fsync dir), checked against its record's sha256 when one is known, and verified as a
//! snapshot before it is published.

use std::path::Path;
use std::process::ExitCode;

use super::output::print;
use super::{runtime, CmdResult};
use crate::config;
use crate::encryption;
use crate::etcddb;
use crate::exit::CommandError;
use crate::restore::source;

pub(super) fn run(
    config_path: Option<&Path>,
    from: &str,
    identity: &Path,
    output: &Path,
) -> CmdResult {
    if output.exists() {
        return Err(CommandError::Usage(format!(
            "{} exists: decrypt never overwrites a file; name another --output",
            output.display()
        )));
    }
    let ids = encryption::Identities::load(identity).map_err(CommandError::Usage)?;
    // A file needs no configuration; a record id or a remote key does.
    let found = if Path::new(from).is_file() {
        source::Located {
            path: from.into(),
            sha256: None,
        }
    } else {
        let config = config::load(config_path)?;
        runtime()?
            .block_on(source::locate(&config, Path::new("/"), from))
            .map_err(CommandError::Failed)?
    };
    let sealed = encryption::is_sealed(&found.path)
        .map_err(|e| CommandError::Failed(format!("cannot read {}: {e}", found.path.display())))?;
    if !sealed {
        return Err(CommandError::Failed(format!(
            "{} is not encrypted: it is already a plain snapshot (`etcdguard verify` it)",
            found.path.display()
        )));
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CommandError::Usage(format!("{}: not a file name", output.display())))?;
    let temp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = write_checked(&found, &ids, &temp, output);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    let (n, sha) = result?;
    print(&format!(
        "{} → {}\n  size    {n} bytes\n  sha256  {sha}{}\n",
        found.path.display(),
        output.display(),
        if found.sha256.is_some() {
            "  (as its record says)"
        } else {
            ""
        }
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Opens `found` into `temp`, checks it, and publishes it as `output`.
fn write_checked(
    found: &source::Located,
    ids: &encryption::Identities,
    temp: &Path,
    output: &Path,
) -> Result<(u64, String), CommandError> {
    let (n, sha) =
        encryption::unseal_file(&found.path, Some(ids), temp).map_err(CommandError::Failed)?;
    if let Some(want) = &found.sha256 {
        if &sha != want {
            return Err(CommandError::Failed(format!(
                "{} opens to a snapshot with sha256 {sha}, but its record says {want}",
                found.path.display()
            )));
        }
    }
    etcddb::verify_snapshot_file(temp, false, None).map_err(|e| {
        CommandError::Failed(format!(
            "{} decrypted, but what it holds is not a sound snapshot: {e}",
            found.path.display()
        ))
    })?;
    crate::fsutil::publish_no_replace(temp, output)
        .map_err(|e| CommandError::Failed(format!("cannot create {}: {e}", output.display())))?;
    Ok((n, sha))
}
