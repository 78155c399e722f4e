//! Where log lines go. Under systemd, when stderr *is* the journal (`JOURNAL_STREAM` names the
//! device and inode of our stderr), events go to journald natively, each field its own
//! journal field (`ID`, `FILE`, `BYTES`, `REVISION`, `DURATION_SECONDS`, `RESULT`, …), so
//! `journalctl -u etcdguard RESULT=Failed` works. Everywhere else: human-readable lines on
//! stderr. `ETCDGUARD_LOG` takes an env-filter directive (default `info`); whatever it says,
//! the request-signing crates never log below `info` (see [`may_log`]).

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

/// Whether an event of `target` at `level` may be logged at all. The S3 request signer's
/// credential providers print the secret key and session token in their debug lines, so
/// `reqsign*` targets are capped at `info` even when `ETCDGUARD_LOG` asks for `trace`:
/// credentials are never logged.
pub fn may_log(target: &str, level: &tracing::Level) -> bool {
    !(target.starts_with("reqsign") && *level > tracing::Level::INFO)
}

/// Installs the global subscriber. Call once, early.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ETCDGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let registry =
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::filter::filter_fn(|m| {
                may_log(m.target(), m.level())
            }));
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
                .with_writer(crate::stdio::LogWriter)
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

    #[test]
    fn signer_debug_lines_are_never_logged() {
        use tracing::Level;
        for target in [
            "reqsign_core::api",
            "reqsign_aws_v4::sign_request",
            "reqsign",
        ] {
            assert!(!may_log(target, &Level::DEBUG), "{target}");
            assert!(!may_log(target, &Level::TRACE), "{target}");
            assert!(may_log(target, &Level::INFO), "{target}");
            assert!(may_log(target, &Level::WARN), "{target}");
        }
        assert!(may_log("etcdguard::backup", &Level::TRACE));
        assert!(may_log("opendal::services", &Level::DEBUG));
    }
}
