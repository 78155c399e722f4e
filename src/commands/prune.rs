//! `etcdguard prune [--dry-run]`: retention now, without a backup.

use std::path::Path;
use std::process::ExitCode;

use super::output::print;
use super::{runtime, CmdResult};
use crate::config;
use crate::copies::retention::{self, PruneError};
use crate::exit::CommandError;

pub(super) fn run(config_path: Option<&Path>, dry_run: bool) -> CmdResult {
    let config = config::load(config_path)?;
    let report = runtime()?
        .block_on(retention::prune(&config, dry_run))
        .map_err(|e| match e {
            PruneError::Lock(_) => CommandError::Failed(e.to_string()),
            other => CommandError::Failed(format!("nothing pruned: {other}")),
        })?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    // One line per copy, each led by where it is: `local`, or the destination's name.
    let mut out = String::new();
    let places = std::iter::once(("local", &report.local)).chain(
        report
            .remote
            .iter()
            .map(|(name, list)| (name.as_str(), list)),
    );
    for (what, list) in places {
        if list.is_empty() {
            out.push_str(&format!("{what}: nothing to delete\n"));
        }
        for (place, why) in list {
            out.push_str(&format!("{what}: {verb} {place}: {why}\n"));
        }
    }
    for (what, place, why) in &report.locked {
        out.push_str(&format!("{what}: keeps {place}: {why}\n"));
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
