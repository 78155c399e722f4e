//! Thin entry point: parse the command line, set up logging, run the command, and turn its
//! error into one line on stderr and the exit code `exit.rs` assigns it.

use std::process::ExitCode;

use clap::Parser;

use etcdguard::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 on usage errors
    etcdguard::logging::init();
    etcdguard::commands::dispatch(cli).unwrap_or_else(|e| {
        eprintln!("etcdguard: {e}");
        e.exit_code()
    })
}
