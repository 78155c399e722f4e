//! The cross-version matrix of the restore version rules (`etcdversion::restore_compat`),
//! against real servers: a snapshot of etcd V1 restored for etcd V2, for every pair of 3.5, 3.6
//! and 3.7. Where etcdguard builds, a real etcd V2 must start on the dir (`ETCD_VERIFY=all`)
//! with the snapshot's keys; where it refuses, the same pair built by the source's own etcdutl
//! shows what etcd V2 does with such data. The observed table is printed; docs/etcd-versions.md
//! holds it.

use std::path::Path;
use std::time::Duration;

use etcdguard::restore::datadir::RestorePlan;

use crate::util::etcd::{EtcdServer, MemberSpec};
use crate::util::pki::Pki;
use crate::util::{etcd_binary, free_port, restore_datadir, stderr};

const VERSIONS: [&str; 3] = ["3.5", "3.6", "3.7"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Pass,
    Force,
    Refuse,
}

fn rule(from: &str, to: &str) -> Rule {
    match (from, to) {
        ("3.5", "3.7") => Rule::Force,
        (a, b) if a > b => Rule::Refuse,
        _ => Rule::Pass,
    }
}

/// Starts etcd `version` on `dir` (one member `m`, peer URL from the plan) and reports whether
/// it became healthy with `keys`, or how it failed.
fn try_start(version: &str, dir: &Path, pki: &Path, peer_port: u16, keys: usize) -> String {
    let mut srv = EtcdServer::spawn_member_env(
        version,
        MemberSpec {
            name: "m".into(),
            data_dir: dir.to_owned(),
            pki_dir: pki.to_owned(),
            client_port: free_port(),
            peer_port,
            initial_cluster: format!("m=https://127.0.0.1:{peer_port}"),
        },
        &[("ETCD_VERIFY", "all")],
    );
    let out = if srv.wait_healthy(Duration::from_secs(20)) {
        let got = srv.all_keys().len();
        if got == keys {
            format!("starts, {got} keys")
        } else {
            format!("starts, but {got} keys of {keys}")
        }
    } else {
        let log = srv.log_tail();
        let why = log
            .lines()
            .rev()
            .find(|l| {
                l.contains("\"level\":\"fatal\"")
                    || l.contains("\"level\":\"panic\"")
                    || l.contains("panic:")
                    || l.contains("not supported")
            })
            .unwrap_or_else(|| log.lines().last().unwrap_or("no log"))
            .to_string();
        let msg = serde_json::from_str::<serde_json::Value>(&why)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "{} {}",
                    v["msg"].as_str()?,
                    v["error"].as_str().unwrap_or("")
                ))
            })
            .unwrap_or(why);
        format!("does not start: {}", msg.trim())
    };
    srv.stop();
    out
}

#[test]
fn cross_version_matrix_against_real_servers() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(&work.path().join("pki"));
    let keys = 40;
    let snaps: Vec<_> = VERSIONS
        .iter()
        .map(|v| {
            let src = EtcdServer::start(v, "src", &work.path().join(format!("src-{v}")), &pki.dir);
            src.put_keys("matrix", keys);
            let p = work.path().join(format!("{v}.db"));
            let out = src.etcdctl(&["snapshot", "save", p.to_str().unwrap()]);
            assert!(out.status.success(), "{}", stderr(&out));
            p
        })
        .collect();

    let mut table = vec![
        "| snapshot from | restored for | etcdguard | real etcd on the dir |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for (from, snap) in VERSIONS.iter().zip(&snaps) {
        for to in VERSIONS {
            let cell = work.path().join(format!("{from}-{to}"));
            let peer_port = free_port();
            let peer = format!("https://127.0.0.1:{peer_port}");
            let plan = RestorePlan {
                name: "m".into(),
                initial_cluster: format!("m={peer}"),
                advertise_peer_urls: peer.clone(),
                token: "matrix".into(),
                bump_revision: 0,
                mark_compacted: false,
            };
            let build = |force: bool| {
                let dir = cell.join(if force { "forced" } else { "plain" });
                let extra: &[&str] = if force { &["--force"] } else { &[] };
                (restore_datadir(snap, &dir, &plan, to, extra), dir)
            };
            let (plain, plain_dir) = build(false);
            let expect = rule(from, to);
            let (ours, dir) = match expect {
                Rule::Pass => {
                    assert!(plain.status.success(), "{from}→{to}: {}", stderr(&plain));
                    ("builds".to_string(), plain_dir)
                }
                Rule::Force => {
                    assert_eq!(plain.status.code(), Some(1), "{from}→{to}");
                    assert!(
                        stderr(&plain).contains("skips a minor version"),
                        "{from}→{to}: {}",
                        stderr(&plain)
                    );
                    let (forced, dir) = build(true);
                    assert!(forced.status.success(), "{from}→{to}: {}", stderr(&forced));
                    ("refuses; builds with --force".to_string(), dir)
                }
                Rule::Refuse => {
                    assert_eq!(plain.status.code(), Some(1), "{from}→{to}");
                    let (forced, _) = build(true);
                    assert_eq!(forced.status.code(), Some(1), "{from}→{to} with --force");
                    for out in [&plain, &forced] {
                        let e = stderr(out);
                        assert!(
                            e.contains(&format!("etcd {from} data"))
                                && e.contains(&format!("target etcd is {to}")),
                            "{from}→{to}: {e}"
                        );
                    }
                    assert!(
                        !plain_dir.exists(),
                        "a refusal created {}",
                        plain_dir.display()
                    );
                    // What the target does with such data: built by the source's own etcdutl.
                    let up = cell.join("by-etcdutl");
                    let out = std::process::Command::new(etcd_binary(from, "etcdutl"))
                        .args(["snapshot", "restore", snap.to_str().unwrap(), "--data-dir"])
                        .arg(&up)
                        .args([
                            "--name",
                            "m",
                            "--initial-cluster",
                            &format!("m={peer}"),
                            "--initial-advertise-peer-urls",
                            &peer,
                        ])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{}", stderr(&out));
                    ("refuses, even with --force".to_string(), up)
                }
            };
            let real = try_start(to, &dir, &pki.dir, peer_port, keys);
            match (expect, *from, to) {
                (Rule::Pass | Rule::Force, _, _) => {
                    assert_eq!(real, format!("starts, {keys} keys"), "{from}→{to}")
                }
                // The reason for the refusal: etcd 3.6 does not run 3.7 data.
                (Rule::Refuse, "3.7", "3.6") => {
                    assert!(real.starts_with("does not start"), "{from}→{to}: {real}")
                }
                _ => {}
            }
            let shown = if expect == Rule::Refuse {
                format!("{real} (dir built by etcdutl {from})")
            } else {
                real
            };
            table.push(format!("| {from} | {to} | {ours} | {shown} |"));
        }
    }
    eprintln!("{}", table.join("\n"));
}
