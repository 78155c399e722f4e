//! `etcdguard restore`: the guarded restore of this kubeadm node, and `--rollback`. The flow is
//! `restore::guarded`; this file reads the configuration (under `--root`), shows the plan, asks
//! for confirmation and prints the outcome.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use super::output::{print, say};
use super::{runtime, CmdResult};
use crate::cli::RestoreArgs;
use crate::config::{self, Config};
use crate::exit::CommandError;
use crate::restore::guarded::{self, Options, PrepareError, RolledBack};

/// The node's configuration: `--config`, else its default path under `--root`, else the
/// default; then every path of it under `--root`.
pub(super) fn node_config(
    config_path: Option<&Path>,
    root: Option<&Path>,
) -> Result<Config, CommandError> {
    let config = node_config_file(config_path, root)?;
    Ok(match root {
        Some(root) => config.under_root(root),
        None => config,
    })
}

/// The node's configuration as written (its paths not yet under `--root`).
pub(super) fn node_config_file(
    config_path: Option<&Path>,
    root: Option<&Path>,
) -> Result<Config, CommandError> {
    Ok(match (config_path, root) {
        (Some(p), _) => config::load(Some(p))?,
        (None, None) => config::load(None)?,
        (None, Some(root)) => config::load_optional(&crate::fsutil::under_root(
            root,
            Path::new(config::DEFAULT_CONFIG_PATH),
        ))?,
    })
}

pub(super) fn run(config_path: Option<&Path>, a: &RestoreArgs) -> CmdResult {
    let config = node_config(config_path, a.root.as_deref())?;
    let opts = Options {
        source: a.snapshot.clone().unwrap_or_default(),
        root: a.root.clone(),
        initial_cluster: a.initial_cluster.clone(),
        token: a.initial_cluster_token.clone(),
        bump_revision: a.bump_revision,
        force: a.force,
        skip_hash_check: a.skip_hash_check,
        identity: a.identity.clone(),
        timeout: a.timeout,
        no_wait: a.no_wait,
    };
    let rt = runtime()?;
    if let Some(which) = &a.rollback {
        return rollback(&rt, &config, &opts, which.as_deref());
    }

    let session = rt
        .block_on(guarded::begin(&config, &opts))
        .map_err(|e| match e {
            PrepareError::Plan(_) => CommandError::Usage(format!("{e}; nothing was changed")),
            PrepareError::Failed(_) => CommandError::Failed(format!("{e}; nothing was changed")),
        })?;
    let text = session.plan_text();
    let ok = session.prepared().ok();
    if a.dry_run {
        print(&text)?;
        if !ok {
            return Err(CommandError::Failed(
                "dry run: some guards fail (above); nothing was changed".into(),
            ));
        }
        print("dry run: all guards pass; nothing was changed\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    if !ok {
        say(&text)?;
        return Err(CommandError::Failed(
            "guards failed (above); nothing was changed".into(),
        ));
    }
    if a.yes {
        say(&text)?;
    } else {
        confirm(
            &text,
            "restore",
            "This stops etcd and kube-apiserver on this node.",
        )
        .map_err(CommandError::Failed)?;
    }
    let snapshot = session.prepared().snapshot.clone();
    let j = rt
        .block_on(session.execute())
        .map_err(|e| CommandError::Failed(format!("restore failed: {e}")))?;
    print(&format!(
        "restored {} into {}\n  member {} of cluster {} at revision {}\n  old data dir kept: {}\n  \
         original manifests and journal: {}\nnext: restart kube-controller-manager, \
         kube-scheduler and kubelet; check `kubectl get nodes`. Remove the kept data dir \
         once you are sure.\n",
        snapshot.display(),
        j.paths.data_dir.display(),
        j.plan.member_id,
        j.plan.cluster_id,
        j.plan.revision,
        j.paths.pre_restore.display(),
        j.paths.backup_dir.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn rollback(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    opts: &Options,
    which: Option<&Path>,
) -> CmdResult {
    match rt.block_on(guarded::rollback(config, opts, which)) {
        Ok(RolledBack::Already(path)) => {
            print(&format!("{}: already rolled back\n", path.display()))?
        }
        Ok(RolledBack::Now(j)) => print(&format!(
            "rolled back the restore {}: the old data dir and manifests are in place again\n  \
             kept for diagnosis: {}\n",
            j.id,
            j.paths.failed_restore.display()
        ))?,
        Err(e) => return Err(CommandError::Failed(e)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal for `word`; refuses without one.
pub(super) fn confirm(plan_text: &str, word: &str, warning: &str) -> Result<(), String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "no terminal to confirm the {word} on: review it with --dry-run, then pass --yes"
        ));
    }
    // A plan nobody could read is not confirmed.
    crate::stdio::err(format!("{plan_text}\n{warning} Type '{word}' to go ahead: ").as_bytes())
        .map_err(|e| format!("cannot write the plan to standard error: {e}"))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() == word {
        Ok(())
    } else {
        Err("not confirmed; nothing was changed".into())
    }
}
