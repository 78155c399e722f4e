//! The wall clock as etcdguard reads it. One home, so that tests can move it. Unset, it is
//! `Utc::now()`. Two test-only knobs add milliseconds to every reading (negative: behind):
//!
//! - [`TEST_CLOCK_OFFSET_ENV`], read once per process: nodes whose clocks disagree by seconds
//!   still agree on the schedule's slots; a month of backups in a minute for the retention
//!   tests.
//! - [`TEST_CLOCK_FILE_ENV`], a file whose content is an offset in milliseconds, looked at on
//!   every reading and re-read when it changed: a test steps a *running* daemon's clock (back
//!   an hour, forward a day) by rewriting it (write a temp file, rename it over: a new file
//!   is always seen). A missing or unparsable file is offset zero. The variable itself is
//!   read once; unset, a reading costs nothing more.
//!
//! Both add up. [`machine_now`] is never offset.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

/// Test-only: milliseconds added to this process's clock.
pub const TEST_CLOCK_OFFSET_ENV: &str = "ETCDGUARD_TEST_CLOCK_OFFSET_MS";

/// Test-only: a file holding milliseconds added to this process's clock, re-read when it
/// changes (the clock can be stepped while the daemon runs).
pub const TEST_CLOCK_FILE_ENV: &str = "ETCDGUARD_TEST_CLOCK_FILE";

/// Now, with the test offsets applied.
pub fn now() -> DateTime<Utc> {
    static OFFSET: OnceLock<chrono::Duration> = OnceLock::new();
    let off = *OFFSET.get_or_init(|| {
        std::env::var(TEST_CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(chrono::Duration::zero(), chrono::Duration::milliseconds)
    });
    Utc::now() + off + stepped()
}

/// What the file was like when last read: (modified, inode, length), and the offset it held.
type Seen = (Option<(SystemTime, u64, u64)>, chrono::Duration);

/// The offset in the [`TEST_CLOCK_FILE_ENV`] file (zero when the variable is unset).
fn stepped() -> chrono::Duration {
    static FILE: OnceLock<Option<(PathBuf, Mutex<Seen>)>> = OnceLock::new();
    let Some((path, seen)) = FILE.get_or_init(|| {
        std::env::var_os(TEST_CLOCK_FILE_ENV).map(|p| {
            (
                PathBuf::from(p),
                Mutex::new((None, chrono::Duration::zero())),
            )
        })
    }) else {
        return chrono::Duration::zero();
    };
    use std::os::unix::fs::MetadataExt;
    let id = std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.ino(),
            m.len(),
        )
    });
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if id != seen.0 {
        let ms = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .unwrap_or(0);
        *seen = (id, chrono::Duration::milliseconds(ms));
    }
    seen.1
}

/// The machine's own clock, never offset: what TLS handshakes (rustls, etcd, the object
/// stores) judge certificates by, so a certificate is checked against it too. A test that
/// moves [`now`] a month back must not make a fresh certificate "not yet valid".
pub fn machine_now() -> DateTime<Utc> {
    Utc::now()
}

/// The stamp that names journals and restore backup dirs: UTC to the millisecond
/// (`20261203T101500.123Z`), so names sort by time and two in one second differ.
pub fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}
