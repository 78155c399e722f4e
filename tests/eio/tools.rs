//! `restore-datadir` and `decrypt` with each of their I/O sites failing once: the command
//! fails naming the file and the operation, leaves nothing (no output, nothing partial), and
//! the next normal run makes the output whole, equal to a reference run's. `drill` likewise:
//! it fails naming the file and the operation, its scratch dir is emptied, records.json
//! parses, and the next drill passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::{sha256, walk};
use crate::util::node::Node;
use crate::util::{etcdguard_cmd, list_dir, stderr, NEWEST, PEER_URL};

/// A site of a one-shot command (`restore-datadir`, `decrypt`).
pub(super) struct ToolSite {
    pub rule: &'static str,
    /// Text the message must contain to name the file, and the operation.
    pub file: &'static str,
    pub op: &'static str,
}

pub(super) const fn tool(rule: &'static str, file: &'static str, op: &'static str) -> ToolSite {
    ToolSite { rule, file, op }
}

const DATADIR_SITES: [ToolSite; 16] = [
    tool("file:create#/snap/db", "snap/db", "create"),
    tool("datadir:write#/snap/db", "snap/db", "write"),
    tool("db:write", "snap/db", "write"),
    tool("db:fsync", "snap/db", "sync"),
    tool("db:fsync@2", "snap/db", "sync"),
    tool("file:create#/wal/", "wal", "create"),
    tool("datadir:write#/wal/", "wal", "write"),
    tool("datadir:fsync#/wal/", "wal", "fsync"),
    tool("file:create#.snap", ".snap", "create"),
    tool("datadir:write#.snap", ".snap", "write"),
    tool("datadir:fsync#.snap", ".snap", "fsync"),
    tool("dir:fsync@1", "snap", "fsync"),
    tool("dir:fsync@3", "member", "fsync"),
    tool("dir:fsync@4", ".restored.restore-", "fsync"),
    tool("datadir:rename", "restored", "move"),
    tool("dir:fsync@5", "work", "fsync"),
];

const DECRYPT_SITES: [ToolSite; 6] = [
    tool("file:create#.partial", "out.db", "create"),
    tool("unseal:write", "out.db", "write"),
    tool("unseal:fsync", "out.db", "fsync"),
    tool("publish:link#out.db", "out.db", "link"),
    tool("publish:unlink#out.db", "out.db", "unlink"),
    tool("publish:dir-fsync#out.db", "out.db", "fsync"),
];

/// Runs a one-shot command with extra environment variables.
type Run<'a> = dyn Fn(&[(&str, &str)]) -> Output + 'a;

/// What is at `p` (a file or a directory), by path relative to it → sha256.
fn tree_of(p: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if p.is_dir() {
        walk(p, &mut out);
    } else if let Ok(b) = std::fs::read(p) {
        out.insert(p.to_path_buf(), sha256(&b));
    }
    out.into_iter()
        .map(|(k, v)| (k.strip_prefix(p).unwrap().to_path_buf(), v))
        .collect()
}

/// A one-shot command whose output is `out` in `dir`, run with a fail point by `run`: it
/// fails naming the file and the operation, leaves `dir` as it was (no output, nothing
/// partial), and the next normal run makes `out` whole, equal to `want`.
fn tool_once(
    s: &ToolSite,
    dir: &Path,
    out: &Path,
    want: &BTreeMap<PathBuf, String>,
    run: &Run<'_>,
) -> (Vec<String>, String) {
    let mut bad = Vec::new();
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_file(out);
    let before = list_dir(dir);
    let o = run(&[("ETCDGUARD_TEST_FAIL_IO", s.rule)]);
    let err = stderr(&o);
    let site_name = s.rule.split(['#', '@', '%']).next().unwrap();
    if !err.contains(&format!("fail point {site_name}: EIO")) {
        bad.push(format!("{}: the site was never reached:\n{err}", s.rule));
    }
    if o.status.success() {
        bad.push(format!("{}: succeeded:\n{err}", s.rule));
    }
    let message = err
        .lines()
        .find(|l| l.contains("Input/output error"))
        .unwrap_or_default()
        .to_string();
    if !(message.contains(s.file) && message.contains(s.op)) {
        bad.push(format!(
            "{}: no message names {:?} and {:?}: {message:?}\n{err}",
            s.rule, s.file, s.op
        ));
    }
    let left = list_dir(dir);
    let outcome = if left == before {
        "nothing left".to_string()
    } else {
        bad.push(format!(
            "{}: {} holds {left:?}, was {before:?}",
            s.rule,
            dir.display()
        ));
        format!("LEFT {left:?}")
    };
    let next = run(&[]);
    let then = if !next.status.success() {
        bad.push(format!(
            "{}: the next run failed:\n{}",
            s.rule,
            stderr(&next)
        ));
        format!("FAILED {:?}", next.status.code())
    } else if tree_of(out) != *want {
        bad.push(format!(
            "{}: the next run's output is not the reference",
            s.rule
        ));
        "ok, but NOT THE REFERENCE".to_string()
    } else {
        "ok, whole".to_string()
    };
    let short = message.replace(&dir.display().to_string(), "<dir>");
    let row = format!(
        "{:28} | fails (exit {}), {outcome} | {short} | {then}",
        s.rule,
        o.status.code().unwrap_or(-1)
    );
    (bad, row)
}

/// Runs every site of `sites` through [`tool_once`] and prints the table under `title`.
fn tool_table(title: &str, sites: &[ToolSite], dir: &Path, out: &Path, run: &Run<'_>) {
    let reference = run(&[]);
    assert!(reference.status.success(), "{}", stderr(&reference));
    let want = tree_of(out);
    assert!(!want.is_empty());
    let mut bad = Vec::new();
    let mut table = Vec::new();
    for s in sites {
        let (b, row) = tool_once(s, dir, out, &want, run);
        bad.extend(b);
        table.push(row);
    }
    eprintln!(
        "EIO table ({title}, each site failed once)\n{:28} | outcome | message | next run\n{}",
        "site",
        table.join("\n")
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// A snapshot of a small cluster, taken by etcdguard, in `dir`.
pub(super) fn a_snapshot(dir: &Path) -> PathBuf {
    let node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("eio", 300);
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let from = PathBuf::from(node.last_record()["local"]["path"].as_str().unwrap());
    let to = dir.join("snap.db");
    std::fs::copy(from, &to).unwrap();
    to
}

#[test]
fn restore_datadir_failing_at_each_site_leaves_nothing_and_the_next_run_builds_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = a_snapshot(tmp.path());
    let dir = tmp.path().join("work");
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join("restored");
    let args = crate::util::restore_datadir_args(&snap, &target, "cp1", PEER_URL, "t", &[]);
    let run = |env: &[(&str, &str)]| {
        etcdguard_cmd(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    tool_table("restore-datadir", &DATADIR_SITES, &dir, &target, &run);
}

#[test]
fn decrypt_failing_at_each_site_publishes_nothing_and_the_next_run_opens_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = a_snapshot(tmp.path());
    let (key, recipient) = crate::encryption::age_key(tmp.path(), "key.txt");
    let sealed = tmp.path().join("snap.db.age");
    let age = std::process::Command::new(crate::util::system_bin("age", "age"))
        .args(["-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&snap)
        .output()
        .unwrap();
    assert!(age.status.success(), "{}", stderr(&age));
    let dir = tmp.path().join("work");
    std::fs::create_dir(&dir).unwrap();
    let out = dir.join("out.db");
    let args = [
        "decrypt".to_string(),
        sealed.display().to_string(),
        "--identity".into(),
        key.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    let run = |env: &[(&str, &str)]| {
        etcdguard_cmd(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    tool_table("decrypt", &DECRYPT_SITES, &dir, &out, &run);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&snap).unwrap());
}

const DRILL_SITES: [ToolSite; 6] = [
    tool("file:create#/snap/db", "snap/db", "create"),
    tool("db:write", "snap/db", "write"),
    tool("datadir:fsync#/wal/", "wal", "fsync"),
    tool("datadir:rename", "drill", "move"),
    tool("dir:fsync@5", "drill", "fsync"),
    tool("atomic:fsync#records.json", "records.json", "fsync"),
];

#[test]
fn drill_failing_at_each_site_fails_naming_it_and_leaves_no_scratch() {
    let node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("eio", 300);
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let config = node.config.to_str().unwrap();
    let run = |env: &[(&str, &str)]| {
        etcdguard_cmd(&["--config", config, "drill"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let scratch = node.state_dir().join("drill");
    let first = run(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let mut bad = Vec::new();
    let mut table = Vec::new();
    for s in &DRILL_SITES {
        let o = run(&[("ETCDGUARD_TEST_FAIL_IO", s.rule)]);
        let said = format!("{}\n{}", crate::util::stdout(&o), stderr(&o));
        let site_name = s.rule.split(['#', '@', '%']).next().unwrap();
        if !said.contains(&format!("fail point {site_name}: EIO")) {
            bad.push(format!("{}: the site was never reached:\n{said}", s.rule));
        }
        if o.status.success() {
            bad.push(format!("{}: succeeded:\n{said}", s.rule));
        }
        let message = said
            .lines()
            .find(|l| l.contains("Input/output error") && !l.starts_with("fail point"))
            .unwrap_or_default()
            .to_string();
        if !(message.contains(s.file) && message.contains(s.op)) {
            bad.push(format!(
                "{}: no message names {:?} and {:?}:\n{said}",
                s.rule, s.file, s.op
            ));
        }
        let left = list_dir(&scratch);
        if !left.is_empty() {
            bad.push(format!("{}: the scratch dir holds {left:?}", s.rule));
        }
        let records = std::fs::read_to_string(node.state_dir().join("records.json"));
        let parses = records
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["records"].is_array());
        if !parses {
            bad.push(format!("{}: records.json does not parse", s.rule));
        }
        let next = run(&[]);
        if !next.status.success() {
            bad.push(format!(
                "{}: the next drill failed:\n{}",
                s.rule,
                stderr(&next)
            ));
        }
        let short = message.replace(&node.root.path().display().to_string(), "<root>");
        table.push(format!(
            "{:28} | exit {}, scratch {} | {short} | next drill {}",
            s.rule,
            o.status.code().unwrap_or(-1),
            if left.is_empty() {
                "empty"
            } else {
                "NOT EMPTY"
            },
            if next.status.success() {
                "ok"
            } else {
                "FAILED"
            }
        ));
    }
    eprintln!(
        "EIO table (drill, each site failed once)\n{}",
        table.join("\n")
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
