//! `etcdguard recover`: a lost node rebuilt from the bucket (`restore::recover`), and
//! `--rollback`. This file reads the configuration (under `--root`), shows the plan, asks for
//! confirmation and prints the outcome.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::output::{print, say};
use super::restore::{confirm, node_config, node_config_file};
use super::{runtime, CmdResult};
use crate::cli::RecoverArgs;
use crate::exit::CommandError;
use crate::restore::guarded::{self, Options};
use crate::restore::recover::{self, RecoverFailure, RecoverOptions, RecoverRolledBack};

pub(super) fn run(config_path: Option<&Path>, a: &RecoverArgs) -> CmdResult {
    let config = node_config(config_path, a.root.as_deref())?;
    let restore_opts = Options {
        source: String::new(),
        root: a.root.clone(),
        initial_cluster: None,
        token: None,
        bump_revision: 1_000_000_000,
        force: false,
        skip_hash_check: false,
        identity: a.identity.clone(),
        timeout: Duration::from_secs(300),
        no_wait: true,
    };
    let rt = runtime()?;
    if a.rollback {
        return match rt.block_on(recover::rollback(&config, &restore_opts)) {
            Ok(RecoverRolledBack::Already(w)) => {
                print(&format!("{}: already rolled back\n", w.display()))?;
                Ok(ExitCode::SUCCESS)
            }
            Ok(RecoverRolledBack::Now(w)) => {
                print(&format!(
                    "rolled back the recover journaled in {}: the files it put back are gone, \
                     the ones it replaced are back, the data dir it built is moved aside\n",
                    w.display()
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(CommandError::Failed(format!("rollback failed: {e}"))),
        };
    }
    let opts = RecoverOptions {
        node: a.node.clone(),
        record: a.record.clone(),
        identity: a.identity.clone().unwrap_or_default(),
        root: a.root.clone(),
        overwrite: a.overwrite,
    };
    let plan = rt
        .block_on(recover::prepare(&config, &opts))
        .map_err(|e| CommandError::Failed(format!("{e}; nothing was changed")))?;
    let text = recover::plan_text(&plan);
    if a.dry_run {
        print(&text)?;
        let restore = dry_run_restore(config_path, &plan, &restore_opts, &rt);
        let _ = std::fs::remove_dir_all(&plan.work);
        print(&restore?)?;
        if !plan.refusals.is_empty() {
            return Err(CommandError::Failed(
                "dry run: recover would be refused (above); nothing was changed".into(),
            ));
        }
        print("dry run: nothing was changed\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    if !plan.refusals.is_empty() {
        let said = say(&text);
        let _ = std::fs::remove_dir_all(&plan.work);
        said?;
        return Err(CommandError::Failed(
            "recover refused (above); nothing was changed".into(),
        ));
    }
    if a.yes {
        if let Err(e) = say(&text) {
            let _ = std::fs::remove_dir_all(&plan.work);
            return Err(e);
        }
    } else if let Err(e) = confirm(
        &text,
        "recover",
        "This writes the files above on this node.",
    ) {
        let _ = std::fs::remove_dir_all(&plan.work);
        return Err(CommandError::Failed(e));
    }
    let result = rt.block_on(recover::execute(&config, &plan, &restore_opts));
    // The opened bundle (key material) is not kept; the journal and replaced files are.
    let _ = std::fs::remove_dir_all(plan.work.join("files"));
    let _ = std::fs::remove_file(plan.work.join("bundle.tar.age"));
    let restore_plan = result.map_err(|e| match e {
        RecoverFailure::Undone(e) => CommandError::Failed(format!("recover failed: {e}")),
        RecoverFailure::NeedsRollback(e) => CommandError::Failed(format!(
            "recover failed: {e}\nundo it with `etcdguard recover --rollback`{}",
            a.root
                .as_ref()
                .map(|r| format!(" --root {}", r.display()))
                .unwrap_or_default()
        )),
    })?;
    print(&format!(
        "{restore_plan}\nrecovered node {} from backup {}: files put back, data dir restored.\n\
         next: start the kubelet (`systemctl start kubelet`); etcd and the control plane come \
         up from the restored data; check `kubectl get nodes`.\n",
        plan.contents.member, plan.source.record.id
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The restore's plan and guards, evaluated on the bundle's files (the node is untouched).
fn dry_run_restore(
    config_path: Option<&Path>,
    plan: &recover::Plan,
    restore_opts: &Options,
    rt: &tokio::runtime::Runtime,
) -> Result<String, CommandError> {
    let staged = plan.work.join("files");
    let config = node_config_file(config_path, restore_opts.root.as_deref())?.under_root(&staged);
    let mut opts = restore_opts.clone();
    opts.root = Some(staged);
    opts.source = plan.source.key.clone();
    let session = rt.block_on(guarded::begin(&config, &opts)).map_err(|e| {
        CommandError::Failed(format!("the restore that follows would not start: {e}"))
    })?;
    Ok(format!(
        "\nthe restore that follows, its guards evaluated on the bundle's files:\n{}",
        session.plan_text()
    ))
}
