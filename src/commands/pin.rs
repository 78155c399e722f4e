//! `etcdguard pin ID [--label TEXT]` and `etcdguard unpin ID`.

use std::path::Path;
use std::process::ExitCode;

use super::output::print;
use super::{runtime, CmdResult};
use crate::config;
use crate::exit::CommandError;
use crate::pins::{self, SetError};
use crate::records::Pin;

pub(super) fn pin(config_path: Option<&Path>, id: &str, label: Option<String>) -> CmdResult {
    let pin = Pin {
        pinned_at: crate::clock::now(),
        label,
    };
    set(config_path, id, Some(pin))
}

pub(super) fn unpin(config_path: Option<&Path>, id: &str) -> CmdResult {
    set(config_path, id, None)
}

fn set(config_path: Option<&Path>, id: &str, pin: Option<Pin>) -> CmdResult {
    let config = config::load(config_path)?;
    let changed = runtime()?
        .block_on(pins::set(&config, id, pin))
        .map_err(|e| match e {
            SetError::Input(m) => CommandError::Usage(m),
            SetError::Failed(m) => CommandError::Failed(m),
        })?;
    let r = &changed.record;
    let name = r.file_name.as_deref().unwrap_or(&r.id);
    let what = match (&r.pin, changed.unchanged) {
        (Some(p), false) => format!(
            "{name}: {}; kept by every retention until `etcdguard unpin {}`\n",
            p.describe(),
            r.id
        ),
        (Some(p), true) => format!("{name}: already {}\n", p.describe()),
        (None, false) => format!("{name}: unpinned; retention treats it like any other\n"),
        (None, true) => format!("{name}: was not pinned\n"),
    };
    print(&what)?;
    if let Some(e) = &changed.sidecar_error {
        tracing::warn!(
            "the remote copy's sidecar still shows the old pin state ({e}); this node's \
             retention follows its records, the next upload of the sidecar fixes the bucket"
        );
    }
    Ok(ExitCode::SUCCESS)
}
