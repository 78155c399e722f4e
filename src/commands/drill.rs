//! `etcdguard drill`: restore the newest good snapshot (or the one named) into a scratch dir
//! and check it as a starting etcd would; the `drill` flow does it and records it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::output::{print, print_json};
use super::{interrupted, runtime, CmdResult};
use crate::cli::InspectFormat;
use crate::config;
use crate::drill::{self, DrillOptions};
use crate::exit::CommandError;
use crate::records::{Outcome, Record};

pub(super) struct Args {
    pub snapshot: Option<String>,
    pub remote: bool,
    pub identity: Option<PathBuf>,
    pub etcd_binary: Option<PathBuf>,
    pub apiserver_binary: Option<PathBuf>,
    pub format: InspectFormat,
}

pub(super) fn run(config_path: Option<&Path>, a: Args) -> CmdResult {
    let config = config::load(config_path)?;
    let opts = DrillOptions {
        snapshot: a.snapshot,
        remote: a.remote,
        identity: a.identity,
        etcd_binary: a.etcd_binary,
        apiserver_binary: a.apiserver_binary,
    };
    let rt = runtime()?;
    let cancel = Arc::new(AtomicBool::new(false));
    let report = rt.block_on(async {
        let handle = tokio::runtime::Handle::current();
        let (c, cfg) = (cancel.clone(), config.clone());
        let mut task =
            tokio::task::spawn_blocking(move || drill::run_drill(&cfg, &opts, c, &handle));
        tokio::select! {
            r = &mut task => r,
            why = interrupted() => {
                tracing::warn!("{why}: stopping the drill");
                cancel.store(true, Ordering::SeqCst);
                task.await
            }
        }
    });
    let report = report
        .map_err(|e| CommandError::Failed(format!("the drill failed to run: {e}")))?
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    super::after_recorded_run(&config, report.records_moved.as_ref());
    let r = &report.record;
    drill::log_record(r);
    match a.format {
        InspectFormat::Json => print_json(r)?,
        InspectFormat::Table => print(&drill_text(r))?,
    }
    Ok(if r.result == Outcome::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human form of a drill record. Pure.
pub(crate) fn drill_text(r: &Record) -> String {
    let Some(d) = &r.drill else {
        return String::new();
    };
    let mut out = format!(
        "drill {} {} in {:.1} s: {}{}{}\n",
        r.id,
        if r.result == Outcome::Success {
            "PASSED"
        } else {
            "FAILED"
        },
        r.duration_seconds,
        r.file_name.as_deref().unwrap_or("no snapshot"),
        d.snapshot_id
            .as_ref()
            .map(|i| format!(" (record {i}, {} copy)", d.source.as_str()))
            .unwrap_or_else(|| format!(" ({})", d.source.as_str())),
        d.target_version
            .as_ref()
            .map(|v| format!(", built for etcd {v}"))
            .unwrap_or_default(),
    );
    let width = d.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &d.checks {
        out.push_str(&format!(
            "  {:<7}  {:<width$}  {}\n",
            c.result.as_str(),
            c.name,
            c.detail
        ));
    }
    out
}
