//! Shell completions and man pages, from the CLI definition itself so they never drift from it.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use super::output::print;
use super::CmdResult;
use crate::cli::{Cli, CompletionShell};
use crate::exit::CommandError;

pub(super) fn completions(shell: crate::cli::CompletionShell) -> CmdResult {
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

pub(super) fn man_pages(dir: &Path) -> CmdResult {
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
