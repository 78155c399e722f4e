//! The bundle's files on the node: how each compares with what is there (create, same,
//! replace), putting them back in order with their modes and owners (a replaced file kept
//! first, for the rollback), and taking them back out.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::{Entry, Kind};
use crate::fsutil::{self, under_root};

/// What happens to one path of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    /// Already there, identical (content, mode, owner).
    Same,
    /// There and different: replaced with `--overwrite` (the old one kept), refused without.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub entry: Entry,
    pub action: Action,
}

/// How `e` compares with what is at `target` (`staged` holds the bundle's files).
pub(super) fn compare(e: &Entry, target: &Path, staged: &Path) -> Action {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return Action::Create;
    };
    let owner_mode =
        meta.uid() == e.uid && meta.gid() == e.gid && meta.permissions().mode() & 0o7777 == e.mode;
    let same = match e.kind {
        Kind::Dir => meta.is_dir(),
        Kind::Symlink => {
            meta.file_type().is_symlink()
                && std::fs::read_link(target)
                    .ok()
                    .map(|t| t.display().to_string())
                    == e.target
        }
        Kind::File => {
            meta.is_file()
                && std::fs::read(target).ok()
                    == std::fs::read(under_root(staged, Path::new(&e.path))).ok()
        }
    };
    match (same, e.kind) {
        // A directory that exists is used as it is.
        (true, Kind::Dir) => Action::Same,
        (true, _) if owner_mode => Action::Same,
        _ => Action::Replace,
    }
}

/// Places the bundle's entries under `root` in order (directories before their contents):
/// replaced files are first copied to `<work>/replaced/`.
pub(super) fn place_files(
    root: &Path,
    placements: &[Placement],
    work: &Path,
) -> Result<(), String> {
    for pl in placements.iter().filter(|p| p.action == Action::Replace) {
        let target = under_root(root, Path::new(&pl.entry.path));
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
            let keep = under_root(&work.join("replaced"), Path::new(&pl.entry.path));
            copy_keeping(&target, &keep)?;
        }
    }
    for pl in placements.iter().filter(|p| p.action != Action::Same) {
        let e = &pl.entry;
        let target = under_root(root, Path::new(&e.path));
        let io = |what: &str, err: std::io::Error| format!("{what} {}: {err}", target.display());
        match e.kind {
            Kind::Dir => {
                std::fs::create_dir_all(&target).map_err(|err| io("cannot create", err))?;
            }
            Kind::File => {
                let bytes = std::fs::read(under_root(&work.join("files"), Path::new(&e.path)))
                    .map_err(|err| io("cannot read the bundle's copy of", err))?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|err| io("cannot create", err))?;
                }
                fsutil::write_atomic(&target, &bytes, e.mode)
                    .map_err(|err| io("cannot write", err))?;
            }
            Kind::Symlink => {
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), &target)
                    .map_err(|err| io("cannot link", err))?;
            }
        }
        set_owner_mode(&target, e).map_err(|err| io("cannot set owner and mode of", err))?;
    }
    Ok(())
}

fn set_owner_mode(target: &Path, e: &Entry) -> std::io::Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        target,
        Some(nix::unistd::Uid::from_raw(e.uid)),
        Some(nix::unistd::Gid::from_raw(e.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)?;
    if e.kind != Kind::Symlink {
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(e.mode))?;
    }
    Ok(())
}

fn copy_keeping(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mode = fsutil::mode_of(from).unwrap_or(0o600);
    if let Some(parent) = to.parent() {
        fsutil::create_private_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fsutil::write_atomic(to, &bytes, mode).map_err(|e| format!("{}: {e}", to.display()))
}

/// Files created are removed, replaced ones restored, created directories removed when empty
/// (deepest first).
pub(super) fn undo_files(root: &Path, placements: &[Placement], work: &Path) -> Result<(), String> {
    for pl in placements.iter().rev() {
        let target = under_root(root, Path::new(&pl.entry.path));
        match (pl.action, pl.entry.kind) {
            (Action::Same, _) => {}
            (Action::Create, Kind::Dir) => {
                let _ = std::fs::remove_dir(&target);
            }
            (Action::Create, _) => match std::fs::remove_file(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", target.display())),
            },
            (Action::Replace, _) => {
                let keep = under_root(&work.join("replaced"), Path::new(&pl.entry.path));
                if keep.is_file() {
                    let meta = std::fs::metadata(&keep).map_err(|e| e.to_string())?;
                    let bytes = std::fs::read(&keep).map_err(|e| e.to_string())?;
                    fsutil::write_atomic(&target, &bytes, meta.permissions().mode() & 0o7777)
                        .map_err(|e| format!("cannot restore {}: {e}", target.display()))?;
                }
            }
        }
    }
    Ok(())
}
