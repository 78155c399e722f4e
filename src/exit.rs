//! The error every command returns at the CLI face, and its exit code: the one table of codes,
//! which `cli.rs` quotes in `--help` and `docs/` repeats.
//!
//! The error rule of the crate: a module returns a typed error (`thiserror`) where a caller
//! branches on what went wrong (busy lock, bad plan, corrupt records, a configuration problem);
//! where callers only report, it returns one explained `String` that names the thing, the
//! place and the fix. At this face both become a `CommandError`, whose variant alone decides the
//! exit code.

use std::process::ExitCode;

use crate::config::ConfigError;

/// The operation was attempted and failed (a backup, a restore, a verify), or what it had to
/// say could not be written (stdout or stderr: `stdio.rs`).
pub const EXIT_FAILED: u8 = 1;
/// Bad flags or arguments (clap's own usage errors exit 2 too).
pub const EXIT_USAGE: u8 = 2;
/// EX_CONFIG from sysexits.h; the unit's `RestartPreventExitStatus=78` stops restart loops.
pub const EXIT_CONFIG: u8 = 78;

/// An error with its sources, `outer: inner: root`, a repeated message said once: what a
/// library error means is often only in its sources (hyper, tonic, reqwest, opendal).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if parts.last() != Some(&t) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The table `--help` prints.
pub const EXIT_CODES_HELP: &str =
    "Exit codes: 0 success, 1 the operation failed, 2 usage error, 78 configuration error.";

#[derive(Debug)]
pub enum CommandError {
    /// A configuration problem (file, field, position): exit 78.
    Config(ConfigError),
    /// The operation failed: exit 1.
    Failed(String),
    /// The command line asked for something impossible: exit 2.
    Usage(String),
}

impl From<ConfigError> for CommandError {
    fn from(e: ConfigError) -> Self {
        CommandError::Config(e)
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Config(e) => e.fmt(f),
            CommandError::Failed(m) | CommandError::Usage(m) => f.write_str(m),
        }
    }
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CommandError::Config(_) => EXIT_CONFIG,
            CommandError::Failed(_) => EXIT_FAILED,
            CommandError::Usage(_) => EXIT_USAGE,
        })
    }
}
