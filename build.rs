//! Stamps the binary with its git commit and build date for `etcdguard --version`.
//! Reproducible: the date is `SOURCE_DATE_EPOCH` when set, else the commit's date, never the
//! clock; outside a git checkout both read "unknown" (or `ETCDGUARD_GIT_COMMIT`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=ETCDGUARD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Some(head) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
        println!("cargo:rerun-if-changed=.git/{head}");
    }
    let commit = std::env::var("ETCDGUARD_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let date = match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(epoch) => Command::new("date")
            .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        None => git(&["log", "-1", "--format=%cd", "--date=format:%Y-%m-%d"]),
    }
    .unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=ETCDGUARD_LONG_VERSION={} (commit {commit}, built {date})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
}
