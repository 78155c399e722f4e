//! The wall clock as etcdguard reads it. One home, so that tests can move it: the test-only
//! [`TEST_CLOCK_OFFSET_ENV`] adds milliseconds to every reading (negative: behind), to show
//! that nodes whose clocks disagree by seconds still agree on the schedule's slots, and to
//! take a month of backups in a minute for the retention tests. Unset, it is `Utc::now()`.

use chrono::{DateTime, Utc};

/// Test-only: milliseconds added to this process's clock.
pub const TEST_CLOCK_OFFSET_ENV: &str = "ETCDGUARD_TEST_CLOCK_OFFSET_MS";

/// Now, with the test offset applied (read once per process).
pub fn now() -> DateTime<Utc> {
    static OFFSET: std::sync::OnceLock<chrono::Duration> = std::sync::OnceLock::new();
    let off = *OFFSET.get_or_init(|| {
        std::env::var(TEST_CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(chrono::Duration::zero(), chrono::Duration::milliseconds)
    });
    Utc::now() + off
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
