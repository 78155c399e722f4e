//! A drill's scratch dir: made private under `[drill] scratch_dir`, after removing what drills
//! that were killed left there, and removed when the drill ends, whatever happened.

use std::path::{Path, PathBuf};

use crate::fsutil;

const SCRATCH_PREFIX: &str = "drill-";

/// The scratch dir of one drill; removed when dropped.
pub(super) struct Scratch {
    pub(super) path: PathBuf,
}

impl Scratch {
    /// Creates `<scratch_dir>/drill-<stamp>-<pid>` (0700) after removing what drills that
    /// were killed left there (only names drills make; the drill lock is held).
    pub(super) fn create(scratch_dir: &Path) -> Result<Scratch, String> {
        let bad = |e: std::io::Error| format!("drill scratch dir {}: {e}", scratch_dir.display());
        fsutil::create_private_dir_all(scratch_dir).map_err(bad)?;
        fsutil::check_trusted_dir(scratch_dir).map_err(bad)?;
        for e in std::fs::read_dir(scratch_dir).map_err(bad)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(SCRATCH_PREFIX) {
                tracing::info!(dir = %e.path().display(), "removing what an interrupted drill left");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let path = scratch_dir.join(format!(
            "{SCRATCH_PREFIX}{}-{}",
            crate::clock::now().format("%Y%m%dT%H%M%S"),
            std::process::id()
        ));
        fsutil::create_private_dir_all(&path).map_err(bad)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::error!(dir = %self.path.display(), "cannot remove the drill's scratch dir: {e}");
        }
    }
}
