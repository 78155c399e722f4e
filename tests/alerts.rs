//! The shipped Prometheus alert rules and Grafana dashboard (`packaging/prometheus/`,
//! `packaging/grafana/`): Debian's `promtool` accepts the rules and runs their unit tests, in
//! which every alert fires on example series and resolves. (That the rules name only metrics
//! etcdguard writes is a unit test of `metrics`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{stderr, stdout};

/// promtool from `.cache/prometheus/<version>/`, which `scripts/install-test-deps` unpacks from
/// Debian's prometheus package.
fn promtool() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/prometheus");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found under {}: run scripts/install-test-deps (it unpacks Debian's \
                 prometheus package)",
                dir.display()
            )
        })
}

#[test]
fn promtool_accepts_the_alert_rules_and_every_alert_fires_and_resolves_in_their_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    let check = Command::new(promtool())
        .args(["check", "rules", "etcdguard.rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(
        stdout(&check).contains("SUCCESS: 8 rules found"),
        "{}",
        stdout(&check)
    );
    let test = Command::new(promtool())
        .args(["test", "rules", "etcdguard.rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(test.status.success(), "{}{}", stdout(&test), stderr(&test));
    // Every alert of the rules has a test in which it fires.
    let rules = std::fs::read_to_string(dir.join("etcdguard.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("etcdguard.rules.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests.split("alertname: ").skip(1).any(|t| {
            t.starts_with(alert)
                && t.lines()
                    .nth(1)
                    .is_some_and(|l| !l.contains("exp_alerts: []"))
        });
        assert!(fires, "no test in which {alert} fires");
    }
    // A broken rule file is refused (the check can fail).
    let broken = tempfile::tempdir().unwrap();
    let bad = broken.path().join("bad.yml");
    std::fs::write(&bad, rules.replace("> 0.8", "> > 0.8")).unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_grafana_dashboard_is_well_formed() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/etcdguard-dashboard.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(d["uid"], "etcdguard");
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().unwrap().contains("etcdguard_"), "{t}");
        }
    }
}
