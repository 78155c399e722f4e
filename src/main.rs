//! Thin entry point: parse the command line, set up logging, dispatch, map the outcome to an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

use etcdguard::cli::Cli;
use etcdguard::commands::{self, CommandError};

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 on usage errors
    etcdguard::logging::init();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(CommandError::Config(e)) => {
            eprintln!("etcdguard: {e}");
            ExitCode::from(commands::EXIT_CONFIG)
        }
        Err(CommandError::Usage(msg)) => {
            eprintln!("etcdguard: {msg}");
            ExitCode::from(commands::EXIT_USAGE)
        }
        Err(CommandError::Failed(msg)) => {
            eprintln!("etcdguard: {msg}");
            ExitCode::from(commands::EXIT_FAILED)
        }
    }
}
