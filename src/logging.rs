//! Where log lines go. Under systemd, when stderr *is* the journal (`JOURNAL_STREAM` names the
//! device and inode of our stderr), events go to journald natively, each field its own
//! journal field (`ID`, `FILE`, `BYTES`, `REVISION`, `DURATION_SECONDS`, `RESULT`, …), so
//! `journalctl -u etcdguard RESULT=Failed` works. Everywhere else: human-readable lines on
//! stderr. `ETCDGUARD_LOG` takes an env-filter directive (default `info`).

use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,tower=warn,tonic=warn,rustls=warn,opendal=warn,reqwest=warn";

/// True when `JOURNAL_STREAM` (`<dev>:<inode>`, set by systemd) matches our stderr.
/// Pure comparison split out for tests: see [`journal_stream_matches`].
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Parses `JOURNAL_STREAM` and compares it with a file's device and inode.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Installs the global subscriber. Call once, early.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ETCDGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(
                    journald
                        .with_field_prefix(None)
                        .with_syslog_identifier("etcdguard".to_string()),
                )
                .try_init();
            return;
        }
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("8-12345", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
