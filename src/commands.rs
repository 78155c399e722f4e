//! The CLI commands: each takes parsed arguments, does its work through the library modules,
//! prints for a human (or as JSON) and returns an exit code. Logs go to stderr, results to
//! stdout.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;

use crate::backup::{self, BackupError};
use crate::cli::{Cli, Command, ConfigCommand, RecordsFormat, VerifyFormat};
use crate::config::{self, ConfigError, Problem};
use crate::etcd::TlsMaterial;
use crate::etcddb;
use crate::fsutil;
use crate::records::{self, CopyState, Outcome, Record, RecordStore, Trigger};
use crate::retention;

pub const EXIT_FAILED: u8 = 1;
/// Bad flags (clap's own usage errors exit 2 too).
pub const EXIT_USAGE: u8 = 2;
/// EX_CONFIG from sysexits.h; the unit's `RestartPreventExitStatus=78` stops restart loops.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug)]
pub enum CommandError {
    Config(ConfigError),
    Failed(String),
    Usage(String),
}

impl From<ConfigError> for CommandError {
    fn from(e: ConfigError) -> Self {
        CommandError::Config(e)
    }
}

type CmdResult = Result<ExitCode, CommandError>;

pub fn dispatch(cli: Cli) -> CmdResult {
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Run => {
            runtime()?
                .block_on(crate::daemon::run(cli.config.clone()))
                .map_err(|e| match e {
                    crate::daemon::DaemonError::Config(c) => CommandError::Config(c),
                    crate::daemon::DaemonError::Fatal(m) => CommandError::Failed(m),
                })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot => snapshot(config_path),
        Command::Records {
            output,
            limit,
            remote: false,
        } => list_records(config_path, output, limit),
        Command::Records {
            output,
            limit,
            remote: true,
        } => list_remote_records(config_path, output, limit),
        Command::Verify {
            file,
            output,
            skip_hash_check,
            as_etcdutl,
        } => verify(&file, output, skip_hash_check, as_etcdutl.map(Into::into)),
        Command::RestoreDatadir(args) => restore_datadir(&args),
        Command::Restore(args) => restore(config_path, &args),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man_pages(&dir),
        Command::Config {
            command: ConfigCommand::Check { remote },
        } => config_check(config_path, remote),
    }
}

/// Writes to stdout; a closed pipe (`etcdguard records | head`) is a normal end.
fn print(text: &str) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CommandError::Failed(format!("cannot write output: {e}"))),
    }
}

/// Two worker threads: the etcd stream (TLS, file, sha256) and the upload (TLS, MD5 of the
/// parts) run side by side on a control-plane node's spare core; idle workers park and do not
/// wake up.
fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failed(format!("cannot start the async runtime: {e}")))
}

/// Resolves when SIGINT or SIGTERM arrives, with the signal's name.
async fn interrupted() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "signal SIGTERM".to_string(),
        _ = int.recv() => "signal SIGINT".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// snapshot

fn snapshot(config_path: Option<&Path>) -> CmdResult {
    let config = config::load(config_path)?;
    if config.paused {
        tracing::info!(
            "configuration is paused: scheduled backups are off; this manual backup runs anyway"
        );
    }
    let report = runtime()?
        .block_on(backup::run_backup(&config, Trigger::Manual, interrupted()))
        .map_err(|e| match e {
            BackupError::Busy { .. } => CommandError::Failed(e.to_string()),
            other => CommandError::Failed(format!("backup not attempted: {other}")),
        })?;
    if let Some(moved) = &report.records_moved {
        tracing::error!("{moved}");
    }
    let next = config
        .schedule
        .next_after(Utc::now(), &config.timezone)
        .filter(|_| !config.paused);
    if let Err(e) = crate::metrics::refresh(&config, next) {
        tracing::error!("{e}");
    }
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    let r = &report.record;
    backup::log_record(r);
    match r.result {
        Outcome::Success => {
            let path = r.local.as_ref().map(|l| l.path.display().to_string());
            print(&format!(
                "backup {} succeeded: {} ({} bytes, revision {}, sha256 {})\n",
                r.id,
                path.unwrap_or_default(),
                r.size_bytes.unwrap_or(0),
                r.revision.unwrap_or(0),
                r.sha256.as_deref().unwrap_or("")
            ))?;
            if let Some(c) = &r.remote {
                use crate::records::RemoteState;
                match c.state {
                    RemoteState::Uploaded => print(&format!("remote copy {}\n", c.location))?,
                    _ => print(&format!(
                        "remote copy NOT made yet ({}); it will be retried: {}\n",
                        c.location,
                        c.last_error.as_deref().unwrap_or("unknown error")
                    ))?,
                }
            }
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
            }
            if report.records_dropped > 0 {
                tracing::info!(
                    dropped = report.records_dropped,
                    "dropped old records beyond the [records] history limits"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed | Outcome::Skipped => Err(CommandError::Failed(format!(
            "backup {} failed: {}",
            r.id,
            r.reason.as_deref().unwrap_or("unknown reason")
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// records

fn list_records(
    config_path: Option<&Path>,
    format: RecordsFormat,
    limit: Option<usize>,
) -> CmdResult {
    let config = config::load(config_path)?;
    let file = RecordStore::new(&config.state_dir)
        .load()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let status = retention::local_status(&file.records, Utc::now(), config.local_storage.retention);
    let mut shown: Vec<(&Record, Option<&str>)> = file
        .records
        .iter()
        .zip(status.iter().map(Option::as_deref))
        .rev()
        .collect();
    if let Some(n) = limit {
        shown.truncate(n);
    }
    match format {
        RecordsFormat::Json => {
            // Each record as stored, plus `retention`: why its snapshot is kept or when it goes.
            let values: Vec<serde_json::Value> = shown
                .iter()
                .map(|(r, status)| {
                    let mut v = serde_json::to_value(r).expect("record serializes");
                    if let (Some(obj), Some(s)) = (v.as_object_mut(), status) {
                        obj.insert("retention".into(), (*s).into());
                    }
                    v
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&values).expect("records serialize");
            s.push('\n');
            print(&s)?;
        }
        RecordsFormat::Table => print(&records_table(&shown))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Left-aligned columns, two spaces apart, the last column unpadded. Pure.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn remote_cell(r: &Record) -> String {
    use crate::records::RemoteState;
    match r.remote.as_ref() {
        None => "-".into(),
        Some(c) => match c.state {
            RemoteState::Uploaded => "uploaded".into(),
            RemoteState::Pending => format!("pending ({} tries)", c.attempts),
            RemoteState::Failed => "FAILED".into(),
            RemoteState::Deleted => "deleted".into(),
        },
    }
}

/// The member's etcd version and, in brackets, the snapshot's storage version (what a restore
/// must run; etcd ≥ 3.6 sends it). Pure.
fn etcd_cell(r: &Record) -> String {
    match (&r.etcd_version, &r.snapshot_version) {
        (None, _) => "-".into(),
        (Some(v), Some(s)) => format!("{v} ({s})"),
        (Some(v), None) => v.clone(),
    }
}

/// A plain-text table, newest first. Pure.
pub fn records_table(records: &[(&Record, Option<&str>)]) -> String {
    if records.is_empty() {
        return "no backup records yet\n".to_string();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|(r, status)| {
            let local = match &r.local {
                Some(l) if l.state == CopyState::Present => "present".to_string(),
                Some(_) => "deleted".to_string(),
                None => "-".to_string(),
            };
            let detail = match r.result {
                Outcome::Success => r.file_name.clone().unwrap_or_default(),
                Outcome::Failed | Outcome::Skipped => r.reason.clone().unwrap_or_default(),
            };
            vec![
                r.id.clone(),
                records::rfc3339(r.backup_timestamp),
                format!("{:?}", r.result),
                r.trigger.as_str().to_string(),
                r.member
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| "-".into()),
                etcd_cell(r),
                r.revision
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.size_bytes.map(human_size).unwrap_or_else(|| "-".into()),
                local,
                remote_cell(r),
                detail,
                status.unwrap_or("-").to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TIME (UTC)",
            "RESULT",
            "TRIGGER",
            "MEMBER",
            "ETCD (DATA)",
            "REVISION",
            "SIZE",
            "LOCAL",
            "REMOTE",
            "FILE / REASON",
            "RETENTION",
        ],
        &rows,
    )
}

fn list_remote_records(
    config_path: Option<&Path>,
    format: RecordsFormat,
    limit: Option<usize>,
) -> CmdResult {
    let config = config::load(config_path)?;
    let Some(rc) = &config.remote_storage else {
        return Err(CommandError::Failed(
            "no [remote_storage] in the configuration: nothing to list".into(),
        ));
    };
    let mut entries = runtime()?
        .block_on(crate::remote_sync::list_remote(rc))
        .map_err(CommandError::Failed)?;
    if let Some(n) = limit {
        entries.truncate(n);
    }
    let local = RecordStore::new(&config.state_dir)
        .load()
        .map(|f| f.records)
        .unwrap_or_default();
    let known = |e: &crate::remote_sync::RemoteEntry| {
        local.iter().any(|r| {
            r.file_name == e.record.file_name
                && r.member.as_ref().map(|m| &m.name) == e.record.member.as_ref().map(|m| &m.name)
        })
    };
    match format {
        RecordsFormat::Json => {
            let values: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "node": e.node,
                        "key": e.key,
                        "knownLocally": known(e),
                        "record": e.record,
                    })
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&values).expect("serializes");
            s.push('\n');
            print(&s)?;
        }
        RecordsFormat::Table => {
            if entries.is_empty() {
                print(&format!(
                    "no snapshots under s3://{}/{}\n",
                    rc.bucket, rc.prefix
                ))?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.node.clone(),
                            records::rfc3339(e.record.backup_timestamp),
                            e.record
                                .revision
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "-".into()),
                            e.record
                                .size_bytes
                                .map(human_size)
                                .unwrap_or_else(|| "-".into()),
                            if known(e) { "yes" } else { "no" }.to_string(),
                            format!("s3://{}/{}", rc.bucket, e.key),
                        ]
                    })
                    .collect();
                print(&table(
                    &[
                        "NODE",
                        "TIME (UTC)",
                        "REVISION",
                        "SIZE",
                        "IN LOCAL RECORDS",
                        "OBJECT",
                    ],
                    &rows,
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// verify

fn verify(
    file: &Path,
    format: VerifyFormat,
    skip_hash_check: bool,
    generation: Option<etcddb::Minor>,
) -> CmdResult {
    let r = etcddb::verify_snapshot_file(file, skip_hash_check, generation)
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    if r.trailer != "ok" {
        tracing::warn!(
            "{}: sha256 trailer {}: integrity not proven by a checksum (a data-dir db may \
             miss writes that were only in the WAL)",
            r.path.display(),
            r.trailer
        );
    }
    match format {
        VerifyFormat::Json => {
            let mut s = serde_json::to_string_pretty(&r).expect("report serializes");
            s.push('\n');
            print(&s)?;
        }
        VerifyFormat::Text => print(&verify_text(&r))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of a verify report. Pure.
pub fn verify_text(r: &etcddb::SnapshotFileReport) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}: OK\n  size              {} bytes\n  sha256            {}\n  trailer           {}\n  \
         bbolt             consistent (page size {}, txid {})\n  \
         hash              {:x}  (etcdutl snapshot status)\n  revision          {}\n  \
         total keys        {}  (as etcdutl {} counts: {})\n  total size        {} bytes\n  \
         consistent index  {}\n  \
         storage version   {}\n  cluster version   {}\n  buckets           {}\n{}",
        r.path.display(),
        r.size_bytes,
        r.sha256
            .as_deref()
            .unwrap_or("not computed (--skip-hash-check)"),
        match r.trailer {
            "ok" => "ok (sha256 of the database matches)",
            "not checked" => "present, not checked (--skip-hash-check)",
            _ => "absent (--skip-hash-check)",
        },
        r.page_size,
        r.txid,
        r.hash,
        r.revision,
        r.total_key,
        r.status_as,
        if r.status_as.counts_live_keys() {
            format!(
                "live keys; {} pairs in all buckets",
                r.total_key_all_buckets
            )
        } else {
            format!("pairs in all buckets; {} live keys", r.live_keys)
        },
        r.total_size,
        r.consistent_index
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(&r.storage_version),
        opt(&r.cluster_version),
        r.buckets.join(", "),
        if r.alarms > 0 {
            format!(
                "  WARNING           {} alarm(s) recorded in the snapshot (NOSPACE/CORRUPT survive \
                 a restore: `etcdctl alarm list`, `etcdctl alarm disarm`)\n",
                r.alarms
            )
        } else {
            String::new()
        }
    )
}

// ---------------------------------------------------------------------------------------------
// restore

fn restore(config_path: Option<&Path>, a: &crate::cli::RestoreArgs) -> CmdResult {
    use crate::restore::journal;
    use crate::restore::kubeadm::{self, Options};
    let root = a
        .root
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/"));
    // Under --root the node's own configuration is read from there too.
    let under_root = a
        .root
        .as_ref()
        .map(|r| kubeadm::under(r, Path::new(config::DEFAULT_CONFIG_PATH)));
    let config = match (config_path, &under_root) {
        (Some(p), _) => config::load(Some(p))?,
        (None, Some(r)) => config::load_optional(r)?,
        (None, None) => config::load(None)?,
    };
    let opts = Options {
        source: a.snapshot.clone().unwrap_or_default(),
        root: a.root.clone(),
        dry_run: a.dry_run,
        yes: a.yes,
        initial_cluster: a.initial_cluster.clone(),
        token: a.initial_cluster_token.clone(),
        bump_revision: a.bump_revision,
        force: a.force,
        skip_hash_check: a.skip_hash_check,
        timeout: a.timeout,
        no_wait: a.no_wait,
    };
    let state_dir = kubeadm::under(&root, &config.state_dir);
    let started = std::time::Instant::now();
    let rt = runtime()?;
    // One restore or backup at a time on this node.
    let take_lock = || -> Result<fsutil::LockGuard, CommandError> {
        fsutil::create_private_dir_all(&state_dir)
            .map_err(|e| CommandError::Failed(format!("{}: {e}", state_dir.display())))?;
        let lock = state_dir.join("backup.lock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            match fsutil::try_lock(&lock) {
                Ok(Ok(g)) => return Ok(g),
                Ok(Err(held)) if std::time::Instant::now() < deadline => {
                    tracing::info!(holder = ?held.holder_pid, "waiting for the backup that is running to finish");
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                Ok(Err(held)) => {
                    return Err(CommandError::Failed(format!(
                        "a backup (pid {:?}) still holds {}",
                        held.holder_pid,
                        lock.display()
                    )))
                }
                Err(e) => return Err(CommandError::Failed(format!("{}: {e}", lock.display()))),
            }
        }
    };

    if let Some(which) = &a.rollback {
        let path = match which {
            Some(p) => p.clone(),
            None => journal::latest(&kubeadm::under(&root, Path::new("/etc/kubernetes/tmp")))
                .ok_or_else(|| {
                    CommandError::Failed(
                        "no restore journal found under /etc/kubernetes/tmp (pass its path)".into(),
                    )
                })?,
        };
        let mut j = journal::Journal::load(&path).map_err(CommandError::Failed)?;
        if j.state == journal::JournalState::RolledBack {
            print(&format!("{}: already rolled back\n", path.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        let _lock = take_lock()?;
        let res = rt.block_on(kubeadm::rollback_journal(&config, &mut j, &opts));
        let snap = j.snapshot.clone();
        kubeadm::record(
            &config,
            &root,
            Trigger::Rollback,
            Some(&j),
            &snap,
            res.as_ref().map(|_| ()).map_err(String::as_str),
            started,
        );
        return match res {
            Ok(()) => {
                print(&format!(
                    "rolled back the restore {}: the old data dir and manifests are in place again\n  kept for diagnosis: {}\n",
                    j.id,
                    j.paths.failed_restore.display()
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(CommandError::Failed(format!(
                "rollback failed: {e}; journal {}",
                path.display()
            ))),
        };
    }

    let _lock = take_lock()?;
    let prepared = rt
        .block_on(kubeadm::prepare(&config, &opts))
        .map_err(|e| CommandError::Failed(format!("{e}; nothing was changed")))?;
    // Milliseconds: two restores in one second must not share a backup dir.
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let text = kubeadm::render(&prepared, &stamp);
    if a.dry_run {
        print(&text)?;
        return if prepared.ok() {
            print("dry run: all guards pass; nothing was changed\n")?;
            Ok(ExitCode::SUCCESS)
        } else {
            Err(CommandError::Failed(
                "dry run: some guards fail (above); nothing was changed".into(),
            ))
        };
    }
    if !prepared.ok() {
        eprint!("{text}");
        return Err(CommandError::Failed(
            "guards failed (above); nothing was changed".into(),
        ));
    }
    if !a.yes {
        kubeadm::confirm(&text).map_err(CommandError::Failed)?;
    } else {
        eprint!("{text}");
    }
    match rt.block_on(kubeadm::execute(&config, &prepared, &opts, &stamp)) {
        Ok(j) => {
            kubeadm::record(
                &config,
                &root,
                Trigger::Restore,
                Some(&j),
                &prepared.snapshot,
                Ok(()),
                started,
            );
            print(&format!(
                "restored {} into {}\n  member {} of cluster {} at revision {}\n  old data dir kept: {}\n  \
                 original manifests and journal: {}\nnext: restart kube-controller-manager, \
                 kube-scheduler and kubelet; check `kubectl get nodes`. Remove the kept data dir \
                 once you are sure.\n",
                prepared.snapshot.display(),
                j.paths.data_dir.display(),
                j.plan.member_id,
                j.plan.cluster_id,
                j.plan.revision,
                j.paths.pre_restore.display(),
                j.paths.backup_dir.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            kubeadm::record(
                &config,
                &root,
                Trigger::Restore,
                None,
                &prepared.snapshot,
                Err(&f.message),
                started,
            );
            Err(CommandError::Failed(format!(
                "restore failed: {}",
                f.message
            )))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// restore-datadir

fn restore_datadir(a: &crate::cli::RestoreDatadirArgs) -> CmdResult {
    use crate::restore::datadir::{build_data_dir, BuildError, BuildOptions, RestorePlan};
    let plan = RestorePlan {
        name: a.name.clone(),
        initial_cluster: a.initial_cluster.clone().unwrap_or_else(|| {
            a.initial_advertise_peer_urls
                .split(',')
                .map(|u| format!("{}={}", a.name, u.trim()))
                .collect::<Vec<_>>()
                .join(",")
        }),
        advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
        token: a.initial_cluster_token.clone(),
        bump_revision: a.bump_revision,
        mark_compacted: a.mark_compacted,
    };
    let opts = BuildOptions {
        skip_hash_check: a.skip_hash_check,
        target: a.target_version.map(Into::into),
        force: a.force,
    };
    let r = build_data_dir(&a.snapshot, &plan, &a.data_dir, opts).map_err(|e| match e {
        BuildError::Plan(p) => CommandError::Usage(p.to_string()),
        other => CommandError::Failed(other.to_string()),
    })?;
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
    let mut out = format!(
        "restored {} into {}\n  for etcd    {}\n  cluster ID  {:x}\n  revision    {}{}\n  \
         members\n",
        a.snapshot.display(),
        r.target.display(),
        r.target_version,
        r.cluster.cluster_id,
        r.revision,
        if a.bump_revision > 0 {
            format!(
                " (snapshot {} + bump {}, marked compacted)",
                r.source.revision, a.bump_revision
            )
        } else {
            String::new()
        }
    );
    for (i, m) in r.cluster.members.iter().enumerate() {
        out.push_str(&format!(
            "    {:x}  {}  {}{}\n",
            m.id,
            m.name,
            m.peer_urls.join(","),
            if i == r.cluster.self_index {
                "  (this member)"
            } else {
                ""
            }
        ));
    }
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// completions and man pages: from the CLI definition itself, so they never drift from it

fn completions(shell: crate::cli::CompletionShell) -> CmdResult {
    use crate::cli::CompletionShell;
    use clap::CommandFactory;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "etcdguard", &mut out);
    print(&String::from_utf8_lossy(&out))?;
    Ok(ExitCode::SUCCESS)
}

fn man_pages(dir: &Path) -> CmdResult {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        .map_err(|e| {
            CommandError::Failed(format!(
                "cannot write man pages into {}: {e}",
                dir.display()
            ))
        })?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// config check

fn config_check(config_path: Option<&Path>, check_remote: bool) -> CmdResult {
    let config = config::load(config_path)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let problem = |field: &str, message: String| Problem {
        file: config.source.clone(),
        position: None,
        field: Some(field.to_string()),
        message,
    };

    let e = &config.etcd;
    match TlsMaterial::load(&e.ca_cert, &e.client_cert, &e.client_key, Utc::now()) {
        Ok(tls) => warnings.extend(tls.warnings),
        Err(err) => problems.push(problem(err.config_field(), err.to_string())),
    }
    let endpoint = match backup::resolve_target(&config) {
        Ok(t) => Some(t.endpoint),
        Err(msg) => {
            problems.push(problem(
                if e.endpoint.is_some() {
                    "etcd.endpoint"
                } else {
                    "etcd.manifest"
                },
                msg,
            ));
            None
        }
    };
    if config.local_storage.retention.keeps_forever() {
        warnings.push(format!(
            "local snapshots in {} are never deleted: neither local_storage.ttl nor \
             local_storage.keep limits them; watch the disk",
            config.local_storage.path.display()
        ));
    }
    if let Some(rc) = &config.remote_storage {
        if rc.insecure_skip_tls_verify {
            warnings.push(format!(
                "remote_storage.insecure_skip_tls_verify is set: the TLS certificate of {} is \
                 NOT verified",
                rc.endpoint.as_deref().unwrap_or("the endpoint")
            ));
        }
        if rc.retention.keeps_forever() {
            warnings.push(
                "remote snapshots are never deleted: neither remote_storage.ttl nor \
                           remote_storage.keep limits them"
                    .to_string(),
            );
        }
        let member = backup::resolve_target(&config)
            .ok()
            .and_then(|t| t.manifest_name)
            .unwrap_or_else(|| "-".into());
        match crate::store::remote::Remote::open(rc, &member) {
            Err(e) => problems.push(problem("remote_storage", e)),
            Ok(r) => {
                if check_remote {
                    match runtime()?.block_on(r.probe()) {
                        Ok(()) => eprintln!(
                            "remote storage: bucket {} at {} exists and is writable ({})",
                            r.bucket(),
                            r.endpoint(),
                            r.credentials().describe()
                        ),
                        Err(e) => problems.push(problem("remote_storage", e)),
                    }
                }
            }
        }
    }

    let mut out = String::new();
    out.push_str(&format!(
        "# effective configuration (from {})\n",
        config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!(
                "built-in defaults: {} does not exist",
                config::DEFAULT_CONFIG_PATH
            ))
    ));
    if let Some(ep) = &endpoint {
        out.push_str(&format!("# etcd endpoint in use: {ep}\n"));
    }
    if let Some(next) = config.schedule.next_after(Utc::now(), &config.timezone) {
        out.push_str(&format!(
            "# next scheduled backup: {}{}\n",
            records::rfc3339(next),
            if config.paused {
                " (paused: will be skipped)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&config.to_redacted_toml());
    print(&out)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CommandError::Config(ConfigError { problems }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(500), "500 B");
        assert_eq!(human_size(24608), "24.0 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn empty_table() {
        assert_eq!(records_table(&[]), "no backup records yet\n");
    }
}
