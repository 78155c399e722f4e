//! Thin entry point: parse the command line, set up logging, run the command, and turn its
//! error into one line on stderr and the exit code `exit.rs` assigns it. Output that could not
//! be written (`stdio`) makes the exit 1, whatever the command did.

use std::process::ExitCode;

use clap::Parser;

use etcdguard::cli::Cli;
use etcdguard::stdio;

fn main() -> ExitCode {
    // Errors never capture a backtrace (a panic still does with RUST_BACKTRACE): under a
    // global RUST_BACKTRACE=1, every object-store error that the retry layer logged captured
    // and printed one, and resolving it read this binary's debug info into memory for good
    // (240 MB of RSS in the daemon after one S3 outage). RUST_LIB_BACKTRACE=1 brings them back.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version (exit 0) print on stdout, usage errors (exit 2) on stderr.
        Err(e) => return parse_error(&e),
    };
    etcdguard::logging::init();
    let code = etcdguard::commands::dispatch(cli).unwrap_or_else(|e| {
        let _ = stdio::err(format!("etcdguard: {e}\n").as_bytes());
        e.exit_code()
    });
    if stdio::failed() && code == ExitCode::SUCCESS {
        return output_failed();
    }
    code
}

/// What clap has to say instead of a command: help, the version, or a usage error.
fn parse_error(e: &clap::Error) -> ExitCode {
    let text = e.render().to_string();
    let written = if e.use_stderr() {
        stdio::err(text.as_bytes())
    } else {
        stdio::out(text.as_bytes())
    };
    match written {
        Ok(()) => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
        Err(_) => output_failed(),
    }
}

/// A write to stdout or stderr failed: exit 1, saying so where it can still be said.
fn output_failed() -> ExitCode {
    let _ = stdio::err(b"etcdguard: output could not be written (standard output or error)\n");
    ExitCode::from(etcdguard::exit::EXIT_FAILED)
}
