//! The CLI face: one file per command. Each parses what clap gave it into the library's
//! options, calls one flow (`backup`, `restore`, `preflight`, …), and prints the outcome for a
//! human or as JSON through `output`. No domain logic lives here. Logs go to stderr, results to
//! stdout; errors are `exit::CommandError`, which carries the exit code.

mod config_check;
mod decrypt;
mod docs;
mod drill;
mod health;
mod inspect;
mod output;
mod pin;
mod prune;
mod records;
mod recover;
mod restore;
mod restore_datadir;
mod snapshot;
mod verify;

use std::process::ExitCode;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::exit::CommandError;

type CmdResult = Result<ExitCode, CommandError>;

pub fn dispatch(cli: Cli) -> CmdResult {
    let config_path = cli.config.as_deref();
    if !matches!(cli.command, Command::Run) {
        crate::progress::enable(cli.quiet);
    }
    // Before any thread exists: the runtime's workers inherit the lowered priorities.
    if matches!(cli.command, Command::Snapshot { .. }) && !cli.normal_priority {
        for p in crate::priority::lower() {
            tracing::warn!("{p}");
        }
    }
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
        Command::Snapshot { pin, label } => snapshot::run(config_path, pin, label),
        Command::Health { output } => health::run(config_path, output),
        Command::Pin { id, label } => pin::pin(config_path, &id, label),
        Command::Unpin { id } => pin::unpin(config_path, &id),
        Command::Prune { dry_run } => prune::run(config_path, dry_run),
        Command::Records {
            output,
            limit,
            remote: false,
            ..
        } => records::local(config_path, output, limit),
        Command::Records {
            output,
            limit,
            remote: true,
            node,
        } => records::remote(config_path, output, limit, node.as_deref()),
        Command::Verify {
            file,
            output,
            skip_hash_check,
            as_etcdutl,
            identity,
        } => verify::run(
            &file,
            output,
            skip_hash_check,
            as_etcdutl.map(Into::into),
            identity.as_deref(),
        ),
        Command::Drill {
            snapshot,
            remote,
            identity,
            etcd_binary,
            apiserver_binary,
            output,
        } => drill::run(
            config_path,
            drill::Args {
                snapshot,
                remote,
                identity,
                etcd_binary,
                apiserver_binary,
                format: output,
            },
        ),
        Command::Inspect {
            file,
            output,
            keys,
            get,
            revision,
            limit,
            identity,
        } => inspect::run(inspect::Options {
            file: &file,
            format: output,
            keys: keys.as_deref(),
            get: get.as_deref(),
            revision,
            limit,
            identity: identity.as_deref(),
        }),
        Command::Diff {
            a,
            b,
            output,
            limit,
            identity,
        } => inspect::diff(&a, &b, output, limit, identity.as_deref()),
        Command::Decrypt {
            source,
            identity,
            output,
        } => decrypt::run(config_path, &source, &identity, &output),
        Command::RestoreDatadir(args) => restore_datadir::run(&args),
        Command::Restore(args) => restore::run(config_path, &args),
        Command::Recover(args) => recover::run(config_path, &args),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man_pages(&dir),
        Command::Config {
            command: ConfigCommand::Check { remote },
        } => config_check::run(config_path, remote),
    }
}

/// A plain copy of `file` in a private dir under `parent` when it is sealed (age), opened with
/// `identity`; `None` for a plain snapshot.
fn open_sealed(
    file: &std::path::Path,
    identity: Option<&std::path::Path>,
    parent: &std::path::Path,
) -> Result<Option<crate::encryption::Unsealed>, CommandError> {
    let sealed = crate::encryption::is_sealed(file)
        .map_err(|e| CommandError::Failed(format!("cannot read {}: {e}", file.display())))?;
    if !sealed {
        return Ok(None);
    }
    let ids = crate::restore::source::identities(identity, file).map_err(CommandError::Usage)?;
    crate::encryption::Unsealed::create(file, Some(&ids), parent)
        .map(Some)
        .map_err(CommandError::Failed)
}

/// Two worker threads: the etcd stream (TLS, file, sha256) and the upload (TLS, MD5 of the
/// parts) run side by side on a control-plane node's spare core; idle workers park and do not
/// wake up.
/// After a run that wrote a record (a backup, a drill): a records file that did not parse and
/// was moved aside is said, and the metrics file is written anew.
fn after_recorded_run(config: &crate::config::Config, moved: Option<&crate::records::MovedAside>) {
    if let Some(moved) = moved {
        tracing::error!("{moved}");
    }
    let next = config
        .schedule
        .next_after(crate::clock::now(), &config.timezone)
        .filter(|_| !config.paused);
    if let Err(e) = crate::metrics::refresh(config, next) {
        tracing::error!("{e}");
    }
}

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
