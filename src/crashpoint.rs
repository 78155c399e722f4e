//! Test-only crash points: `ETCDGUARD_TEST_CRASH_AFTER=<point>` kills the process with SIGKILL
//! (no cleanup, no destructors, as a power cut or the OOM killer would) when it reaches the
//! point of that name. The restore's steps, `recover`'s, and the backup's own points
//! (`backup:…`, `retention:…`, `retry:…`) use it; `tests/torture.rs` and `scripts/torture`
//! kill at them, and at random moments, to show that nothing is lost or left half-done.

/// The environment variable naming the point to die at.
pub const ENV: &str = "ETCDGUARD_TEST_CRASH_AFTER";

/// Dies here (SIGKILL) when the crash point `name` was asked for.
pub fn here(name: &str) {
    if std::env::var(ENV).is_ok_and(|s| s == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
