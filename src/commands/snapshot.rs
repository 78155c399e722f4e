//! `etcdguard snapshot`: one backup now, through the same run as the daemon's.

use std::path::Path;
use std::process::ExitCode;

use super::output::print;
use super::{interrupted, runtime, CmdResult};
use crate::backup::{self, BackupError, BackupReport};
use crate::config::{self, Config};
use crate::exit::CommandError;
use crate::records::{Outcome, Pin, Record, RemoteState, Trigger};
use crate::state::LockError;

pub(super) fn run(config_path: Option<&Path>, pin: bool, label: Option<String>) -> CmdResult {
    let config = config::load(config_path)?;
    let pin = (pin || label.is_some()).then(|| Pin {
        pinned_at: crate::clock::now(),
        label,
    });
    if config.paused {
        tracing::info!(
            "configuration is paused: scheduled backups are off; this manual backup runs anyway"
        );
    }
    let report = backup_now(&config, pin)?;
    after_backup(&config, &report);
    let r = &report.record;
    match r.result {
        Outcome::Success => {
            print_success(&report)?;
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed | Outcome::Skipped => Err(CommandError::Failed(format!(
            "backup {} failed: {}",
            r.id,
            r.reason.as_deref().unwrap_or("unknown reason")
        ))),
    }
}

/// The backup run, the same as the daemon's; its errors as this command reports them.
fn backup_now(config: &Config, pin: Option<Pin>) -> Result<BackupReport, CommandError> {
    runtime()?
        .block_on(backup::run_backup(
            config,
            Trigger::Manual,
            None,
            pin,
            interrupted(),
        ))
        .map_err(|e| match e {
            BackupError::Lock(LockError::Busy { .. }) | BackupError::NotRecorded { .. } => {
                CommandError::Failed(e.to_string())
            }
            other => CommandError::Failed(format!("backup not attempted: {other}")),
        })
}

/// What follows every recorded attempt: the metrics file, the warnings, the log line.
fn after_backup(config: &Config, report: &BackupReport) {
    super::after_recorded_run(config, report.records_moved.as_ref());
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    backup::log_record(&report.record);
}

/// The report of a successful backup: the snapshot, its copies and bundle, then what
/// retention and remote maintenance did.
fn print_success(report: &BackupReport) -> Result<(), CommandError> {
    let r = &report.record;
    let path = r.local.as_ref().map(|l| l.path.display().to_string());
    print(&format!(
        "backup {} succeeded: {} ({} bytes, revision {}, sha256 {})\n",
        r.id,
        path.unwrap_or_default(),
        r.size_bytes.unwrap_or(0),
        r.revision.unwrap_or(0),
        r.sha256.as_deref().unwrap_or("")
    ))?;
    for w in r.health.iter().flat_map(|h| &h.warnings) {
        print(&format!("etcd health: {w}\n"))?;
    }
    if let Some(p) = &r.pin {
        print(&format!(
            "{}: kept by every retention until `etcdguard unpin {}`\n",
            p.describe(),
            r.id
        ))?;
    }
    print_copies(r)?;
    print_maintenance(report)?;
    if report.records_dropped > 0 {
        tracing::info!(
            dropped = report.records_dropped,
            "dropped old records beyond the [records] history limits"
        );
    }
    Ok(())
}

/// Each destination's copy (named when there are several), then the recovery bundle.
fn print_copies(r: &Record) -> Result<(), CommandError> {
    let named = r.remotes.len() > 1;
    for c in &r.remotes {
        let at = if named {
            format!(" at {}", c.destination)
        } else {
            String::new()
        };
        match c.state {
            RemoteState::Uploaded => print(&format!(
                "remote copy{at} {}{}\n",
                c.location,
                if c.sealed.is_some() {
                    " (compressed and encrypted)"
                } else {
                    ""
                }
            ))?,
            _ => print(&format!(
                "remote copy{at} NOT made yet ({}); it will be retried: {}\n",
                c.location,
                c.last_error.as_deref().unwrap_or("unknown error")
            ))?,
        }
    }
    if let Some(b) = &r.bundle {
        match b.state {
            RemoteState::Uploaded => print(&format!(
                "recovery bundle {} ({} files)\n",
                b.location, b.files
            ))?,
            _ => print(&format!(
                "recovery bundle NOT made: {}\n",
                b.last_error.as_deref().unwrap_or("unknown error")
            ))?,
        }
    }
    Ok(())
}

/// Local retention's deletions, then the remote maintenance of the same run.
fn print_maintenance(report: &BackupReport) -> Result<(), CommandError> {
    for d in &report.deleted {
        print(&format!("retention deleted {d}\n"))?;
    }
    if let Some(m) = &report.remote {
        for f in &m.uploaded {
            print(&format!("pending remote copy uploaded: {f}\n"))?;
        }
        for f in &m.deleted {
            print(&format!("remote retention deleted {f}\n"))?;
        }
        for u in &m.aborted_uploads {
            print(&format!(
                "aborted a multipart upload left open by an interrupted backup: {u}\n"
            ))?;
        }
    }
    Ok(())
}
