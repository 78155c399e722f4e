//! `etcdguard prune [--dry-run]`: retention now, without a backup.

use std::path::Path;
use std::process::ExitCode;

use super::output::print;
use super::{runtime, CmdResult};
use crate::backup::{self, BackupError};
use crate::config;
use crate::exit::CommandError;

pub(super) fn run(config_path: Option<&Path>, dry_run: bool) -> CmdResult {
    let config = config::load(config_path)?;
    let report = runtime()?
        .block_on(backup::run_prune(&config, dry_run))
        .map_err(|e| match e {
            BackupError::Lock(_) => CommandError::Failed(e.to_string()),
            other => CommandError::Failed(format!("nothing pruned: {other}")),
        })?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut out = String::new();
    for (what, list) in [("local", &report.local), ("remote", &report.remote)] {
        if list.is_empty() {
            out.push_str(&format!("{what}: nothing to delete\n"));
        }
        for (place, why) in list {
            out.push_str(&format!("{what}: {verb} {place}: {why}\n"));
        }
    }
    for (place, why) in &report.locked {
        out.push_str(&format!("remote: keeps {place}: {why}\n"));
    }
    if config.destinations.is_empty() {
        out = out.replace("remote: nothing to delete\n", "");
    }
    print(&out)?;
    for e in &report.errors {
        tracing::error!("{e}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
