//! `restore` with each journaled step's I/O failing once (it rolls itself back: the node is
//! wholly old), and `restore --rollback` of a killed restore with each of its own failing
//! once (the next rollback finishes it); after each, a rollback, a whole restore and its
//! rollback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;

use super::tools::{a_snapshot, tool, ToolSite};
use crate::util::{etcdguard_cmd, list_dir, stderr};

/// Sites of `restore` (forward: each fails once, and the restore rolls itself back) and of
/// `restore --rollback` (after a restore killed with everything changed).
const RESTORE_SITES: [ToolSite; 10] = [
    tool("atomic:write#journal.json", "journal.json", "write"),
    tool("atomic:fsync#journal.json@3", "journal.json", "fsync"),
    tool("move:rename#/etcd.yaml", "etcd.yaml", "rename"),
    tool("datadir:write#/snap/db", "snap/db", "write"),
    tool("datadir:rename", "restored", "move"),
    tool("move:rename#pre-restore", "pre-restore", "rename"),
    tool("move:rename#lib/etcd@2", "lib/etcd", "rename"),
    tool("move:dir-fsync#lib", "lib", "fsync"),
    tool("atomic:write#manifests/etcd.yaml", "etcd.yaml", "write"),
    tool("atomic:rename#manifests/etcd.yaml", "etcd.yaml", "rename"),
];

const ROLLBACK_SITES: [ToolSite; 5] = [
    tool("move:rename#etcd.yaml.restored", "etcd.yaml", "rename"),
    tool("move:rename#failed-restore", "failed-restore", "rename"),
    tool("move:rename#lib/etcd@2", "lib/etcd", "rename"),
    tool("atomic:write#manifests/etcd.yaml", "etcd.yaml", "write"),
    tool("atomic:write#journal.json", "journal.json", "write"),
];

/// A kubeadm node root to restore on: what it was (manifests, data dir) and how to run
/// `restore` and `restore --rollback` on it.
struct RestoreRig {
    node: crate::util::kubenode::KubeNode,
    snapshot: PathBuf,
    old: (BTreeMap<String, String>, BTreeMap<String, String>),
}

impl RestoreRig {
    fn now(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        (
            crate::restore::tree(&self.node.path("etc/kubernetes/manifests")),
            crate::restore::tree(&self.node.path("var/lib/etcd")),
        )
    }

    /// "old", "new", or what is mixed.
    fn state(&self) -> String {
        let (m, d) = self.now();
        match (m == self.old.0, d == self.old.1) {
            (true, true) => "old".into(),
            (false, false) => "new".into(),
            (true, false) => "MIXED: the old manifests, another data dir".into(),
            (false, true) => "MIXED: other manifests, the old data dir".into(),
        }
    }

    fn restore(&self, env: &[(&str, &str)]) -> Output {
        let root = self.node.root.path().to_str().unwrap();
        let snapshot = self.snapshot.to_str().unwrap();
        let args = ["restore", "--root", root, "--snapshot", snapshot];
        etcdguard_cmd(&args)
            .args(["--yes", "--no-wait", "--force"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn rollback(&self, env: &[(&str, &str)]) -> Output {
        let root = self.node.root.path().to_str().unwrap();
        etcdguard_cmd(&["restore", "--rollback", "--root", root, "--no-wait"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Rolled back to the old node, nothing left of the restore but what is kept for
    /// diagnosis, and its journals out of the way of the next one.
    fn back_to_old(&self) -> Result<(), String> {
        let out = self.rollback(&[]);
        if !out.status.success() && !stderr(&out).contains("no restore journal") {
            return Err(format!("the rollback failed: {}", stderr(&out)));
        }
        if self.state() != "old" {
            return Err(format!("after the rollback the node is {}", self.state()));
        }
        let lib = list_dir(&self.node.path("var/lib"));
        if lib
            .iter()
            .any(|n| n.contains("pre-restore") || n.contains("restored-"))
        {
            return Err(format!("left behind after the rollback: {lib:?}"));
        }
        let tmp = self.node.path("etc/kubernetes/tmp");
        for d in list_dir(&tmp) {
            let _ = std::fs::remove_dir_all(tmp.join(d));
        }
        Ok(())
    }
}

/// The message of a failed run: its line with the EIO.
fn eio_line(out: &Output) -> String {
    stderr(out)
        .lines()
        .find(|l| l.contains("Input/output error"))
        .unwrap_or_default()
        .to_string()
}

/// A restore (or, `rollback`, the rollback of a killed one) with `s` failing once: the
/// violations and the table's row.
fn restore_once(rig: &RestoreRig, s: &ToolSite, rollback: bool) -> (Vec<String>, String) {
    let mut bad = Vec::new();
    let env = [("ETCDGUARD_TEST_FAIL_IO", s.rule)];
    let out = if rollback {
        let killed = rig.restore(&[("ETCDGUARD_TEST_CRASH_AFTER", "manifest-written")]);
        assert!(!killed.status.success());
        rig.rollback(&env)
    } else {
        rig.restore(&env)
    };
    let err = stderr(&out);
    let site_name = s.rule.split(['#', '@', '%']).next().unwrap();
    if !err.contains(&format!("fail point {site_name}: EIO")) {
        bad.push(format!("{}: the site was never reached:\n{err}", s.rule));
    }
    let message = eio_line(&out);
    // A rollback may get past a failure (it tries a rename again): then the node is old.
    if out.status.success() && !(rollback && rig.state() == "old") {
        bad.push(format!("{}: succeeded:\n{err}", s.rule));
    }
    if !(message.contains(s.file) && message.contains(s.op)) {
        bad.push(format!(
            "{}: no message names {:?} and {:?}: {message:?}\n{err}",
            s.rule, s.file, s.op
        ));
    }
    // A restore that failed rolled itself back; a rollback that failed is finished by the
    // next one.
    let state = rig.state();
    if !rollback && state.starts_with("MIXED") {
        bad.push(format!("{}: the node is {state}", s.rule));
    }
    // The next normal runs: the rollback, a whole restore, its rollback.
    let mut then = match rig.back_to_old() {
        Ok(()) => "rollback: old".to_string(),
        Err(e) => {
            bad.push(format!("{}: {e}", s.rule));
            format!("rollback: {e}")
        }
    };
    let again = rig.restore(&[]);
    let new = rig.state();
    if !again.status.success() || new != "new" {
        bad.push(format!(
            "{}: the next restore: {new}: {}",
            s.rule,
            stderr(&again)
        ));
    }
    then.push_str(&format!("; restore: {new}"));
    if let Err(e) = rig.back_to_old() {
        bad.push(format!("{} (after the next restore): {e}", s.rule));
    }
    let short = message.replace(&rig.node.root.path().display().to_string(), "<root>");
    let row = format!(
        "{:34} | exit {}, node {state} | {short} | {then}",
        s.rule,
        out.status.code().unwrap_or(-1)
    );
    (bad, row)
}

#[test]
fn restore_and_its_rollback_failing_at_each_site_leave_the_node_wholly_old_or_new() {
    let tmp = tempfile::tempdir().unwrap();
    let snapshot = a_snapshot(tmp.path());
    let node = crate::a_torture::restore_node(&snapshot);
    let mut rig = RestoreRig {
        node,
        snapshot,
        old: Default::default(),
    };
    rig.old = rig.now();
    let mut bad = Vec::new();
    let mut table = Vec::new();
    for (sites, rollback) in [(&RESTORE_SITES[..], false), (&ROLLBACK_SITES[..], true)] {
        for s in sites {
            let (b, row) = restore_once(&rig, s, rollback);
            bad.extend(b);
            let what = if rollback { "rollback" } else { "restore" };
            table.push(format!("{what:8} | {row}"));
        }
    }
    eprintln!(
        "EIO table (restore and rollback, each site failed once)\n{}",
        table.join("\n")
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
