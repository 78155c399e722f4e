//! The crash campaign: SIGKILL at named points (`ETCDGUARD_TEST_CRASH_AFTER`) and at random
//! moments across a backup with local and remote copies (moto, which lists open multipart
//! uploads), a retried upload, retention, the daemon's scheduled and catch-up backups, and a
//! restore with its rollback; after each kill a normal run, then the invariants:
//!
//! - `records.json` parses; no record claims a local file that is missing unless it says
//!   deleted, every such file has the record's sha256; no snapshot file that no record knows
//!   and no `.partial` file stays past the next run;
//! - every object under this node's prefix is the sha256 of its record, has its sidecar, and
//!   every record that says uploaded has its object; no sidecar without its object; no
//!   multipart upload open;
//! - a restore's node after its rollback is the old one byte for byte (manifests and data
//!   dir), a rollback twice is harmless, and one that ran to the end left the new one whole.
//!
//! Seeded and reproducible: `ETCDGUARD_TORTURE_SEED`, `ETCDGUARD_TORTURE_POINTS` (CI: 40; by
//! hand `scripts/torture --points 500`), `ETCDGUARD_TORTURE_KEYS` (the database's size). The
//! counts per operation are printed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::remote::{use_remote, BUCKET};
use crate::restore::tree;
use crate::util::kubenode::KubeNode;
use crate::util::node::Node;
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::{
    etcdguard, etcdguard_cmd, list_dir, poll_until, restore_datadir_args, stderr, Rng, NEWEST,
};

const BACKUP_POINTS: [&str; 9] = [
    "backup:temp-created",
    "backup:checked",
    "backup:published",
    "backup:uploaded",
    "backup:sidecar",
    "backup:before-record",
    "backup:recorded",
    "retention:file-deleted",
    "retention:object-deleted",
];

const RESTORE_STEPS: [&str; 7] = [
    "apiserver-stopped",
    "etcd-manifest-moved",
    "etcd-stopped",
    "data-dir-built",
    "old-data-dir-moved",
    "new-data-dir-in-place",
    "manifest-written",
];

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Runs `args` against the node's config with `env`; killed after `delay` when given.
fn run(node: &Node, args: &[&str], env: &[(&str, &str)], delay: Option<Duration>) -> Option<i32> {
    run_with(&node.config, args, env, delay)
}

fn run_with(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    delay: Option<Duration>,
) -> Option<i32> {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut c = etcdguard_cmd(&all)
        .envs(env.iter().copied())
        .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(d) = delay {
        let exited = poll_until(d, Duration::from_millis(10), || c.try_wait().ok().flatten());
        if let Some(st) = exited {
            return st.code();
        }
        let _ = c.kill();
    }
    c.wait().unwrap().code()
}

/// Every object in the bucket with its sha256, and the open multipart uploads (one boto call).
fn bucket(s3: &S3Server) -> (BTreeMap<String, String>, usize) {
    let out = s3.boto(&format!(
        "import hashlib, json\n\
         keys = [o['Key'] for o in s3.list_objects_v2(Bucket='{BUCKET}').get('Contents', [])]\n\
         objs = {{k: hashlib.sha256(s3.get_object(Bucket='{BUCKET}', Key=k)['Body'].read()).hexdigest() for k in keys}}\n\
         open_ = len(s3.list_multipart_uploads(Bucket='{BUCKET}').get('Uploads', []))\n\
         out = json.dumps({{'objects': objs, 'open': open_}}).encode()"
    ));
    let v: Value = serde_json::from_slice(&out).unwrap();
    let objects = v["objects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, h)| (k.clone(), h.as_str().unwrap().to_string()))
        .collect();
    (objects, v["open"].as_u64().unwrap() as usize)
}

/// The invariants of the backup side, after a normal run.
fn check_backups(node: &Node, s3: &S3Server, what: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(node.state_dir().join("records.json"))
        .map_err(|e| format!("records.json: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("records.json: {e}"))?;
    let records = v["records"]
        .as_array()
        .ok_or("records.json has no records")?;
    let dir = node.snapshot_dir();
    let files = list_dir(&dir);
    if let Some(p) = files.iter().find(|f| f.ends_with(".partial")) {
        return Err(format!("{what}: a partial file stayed: {p}"));
    }
    let mut known = Vec::new();
    for r in records {
        let l = &r["local"];
        if l["state"] == "present" {
            let path = PathBuf::from(l["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).map_err(|e| {
                format!("{what}: record {} claims {}: {e}", r["id"], path.display())
            })?;
            if sha256(&bytes) != r["sha256"].as_str().unwrap_or("") {
                return Err(format!(
                    "{what}: {} is not its record's sha256",
                    path.display()
                ));
            }
            known.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    for f in files.iter().filter(|f| f.starts_with("snapshot-etcd-")) {
        if !known.contains(f) {
            return Err(format!(
                "{what}: {f} is in the snapshot dir but no record says so"
            ));
        }
    }
    let (objects, open) = bucket(s3);
    if open > 0 {
        return Err(format!("{what}: {open} multipart upload(s) open"));
    }
    let prefix = "prod/cp1/";
    for (k, h) in &objects {
        let Some(name) = k.strip_prefix(prefix) else {
            continue;
        };
        if let Some(object) = name.strip_suffix(".json") {
            if !objects.contains_key(&format!("{prefix}{object}")) {
                return Err(format!("{what}: sidecar {k} without its object"));
            }
            continue;
        }
        if !objects.contains_key(&format!("{k}.json")) {
            return Err(format!("{what}: object {k} has no sidecar"));
        }
        let rec = records
            .iter()
            .find(|r| r["remote"]["location"] == format!("s3://{BUCKET}/{k}").as_str())
            .ok_or_else(|| format!("{what}: object {k} has no record"))?;
        if rec["sha256"].as_str() != Some(h.as_str()) {
            return Err(format!("{what}: object {k} is not its record's sha256"));
        }
    }
    for r in records {
        if r["remote"]["state"] == "uploaded" {
            let key = r["remote"]["location"]
                .as_str()
                .unwrap()
                .trim_start_matches(&format!("s3://{BUCKET}/"))
                .to_string();
            if !objects.contains_key(&key) {
                return Err(format!(
                    "{what}: record {} says uploaded, {key} is not there",
                    r["id"]
                ));
            }
        }
    }
    Ok(())
}

/// A kubeadm node root (no kubelet: `--no-wait`) with a data dir built from `snapshot`.
pub(crate) fn restore_node(snapshot: &std::path::Path) -> KubeNode {
    let node = KubeNode::with_etcd(NEWEST, "cp1", None, None, None);
    let peer = format!(
        "https://127.0.0.1:{}",
        std::fs::read_to_string(node.path("etc/kubernetes/manifests/etcd.yaml"))
            .unwrap()
            .split("--initial-advertise-peer-urls=https://127.0.0.1:")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
    );
    let out = etcdguard(&restore_datadir_args(
        snapshot,
        &node.path("var/lib/etcd"),
        "cp1",
        &peer,
        "old-cluster",
        &[],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    node
}

/// A restore killed at `step` (or after `delay`, or not at all), rolled back twice: the node is
/// the old one byte for byte; one that finished left the new data dir whole first.
fn torture_restore(
    k: &KubeNode,
    snapshot: &std::path::Path,
    step: Option<&str>,
    delay: Option<Duration>,
) -> Result<&'static str, String> {
    let manifests = k.path("etc/kubernetes/manifests");
    let (m0, d0) = (tree(&manifests), tree(&k.path("var/lib/etcd")));
    let root = k.root.path().to_str().unwrap().to_string();
    let mut c = etcdguard_cmd(&[
        "restore",
        "--root",
        &root,
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--yes",
        "--no-wait",
        "--force",
    ]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(s) = step {
        c.env("ETCDGUARD_TEST_CRASH_AFTER", s);
    }
    let mut child = c.spawn().unwrap();
    if let Some(d) = delay {
        std::thread::sleep(d);
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let finished = out.status.success();
    if finished {
        // Entirely new: the rewritten manifest and a data dir that is not the old one.
        if tree(&k.path("var/lib/etcd")) == d0 || tree(&manifests) == m0 {
            return Err("a restore that succeeded left the old node".into());
        }
    }
    for round in 0..2 {
        let out = etcdguard(&["restore", "--rollback", "--root", &root, "--no-wait"]);
        if !out.status.success() {
            let err = stderr(&out);
            // Killed before its journal existed: nothing to roll back, nothing was changed.
            if err.contains("no restore journal") {
                break;
            }
            return Err(format!("rollback {round}: {err}"));
        }
    }
    if tree(&manifests) != m0 {
        return Err("the manifests are not the old ones after the rollback".into());
    }
    if tree(&k.path("var/lib/etcd")) != d0 {
        return Err("the data dir is not the old one after the rollback".into());
    }
    let lib = list_dir(&k.path("var/lib"));
    if lib
        .iter()
        .any(|n| n.contains("pre-restore") || n.contains("restored-"))
    {
        return Err(format!("left behind after the rollback: {lib:?}"));
    }
    // Out of the way for the next round's "newest journal".
    let tmp = k.path("etc/kubernetes/tmp");
    for d in list_dir(&tmp) {
        let _ = std::fs::remove_dir_all(tmp.join(d));
    }
    Ok(if finished {
        "restore ran through"
    } else {
        "restore killed"
    })
}

#[test]
fn crash_campaign_kills_everywhere_and_nothing_is_lost_or_half_done() {
    let seed: u64 = std::env::var("ETCDGUARD_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    let points: usize = std::env::var("ETCDGUARD_TORTURE_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut rng = Rng::new(seed);
    let mut node = Node::start(NEWEST, "cp1");
    // By hand, a larger database (ETCDGUARD_TORTURE_KEYS=12000: ~15 MiB) makes the uploads
    // multipart, so random kills leave open multipart uploads for the next run to abort.
    let keys: usize = std::env::var("ETCDGUARD_TORTURE_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    node.etcd.put_keys("torture", keys);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::moto(dir.path(), None, BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    node.set("local_storage", "keep", "3");
    node.set("local_storage", "min_keep", "2");
    node.set("remote_storage", "keep", "3");
    node.set("remote_storage", "min_keep", "2");
    node.set("etcd", "rate_limit", "\"8MiB/s\"");
    node.set("", "schedule", "\"*/2 * * * * *\"");
    let text = std::fs::read_to_string(&node.config).unwrap();
    // The same node, its bucket unreachable: a backup that leaves its copy pending.
    let dead = node.path("etc/etcdguard/dead-remote.toml");
    std::fs::write(
        &dead,
        text.replace(
            &s3.endpoint,
            &format!("http://127.0.0.1:{}", crate::util::free_port()),
        ),
    )
    .unwrap();
    let first = run(&node, &["snapshot"], &[], None);
    assert_eq!(first, Some(0));
    let snapshot = PathBuf::from(node.last_record()["local"]["path"].as_str().unwrap());
    let restore_snapshot = node.path("restore-source.db");
    std::fs::copy(&snapshot, &restore_snapshot).unwrap();
    let kube = restore_node(&restore_snapshot);

    let started = Instant::now();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..points {
        let op = rng.below(100);
        let (what, result) = if op < 40 {
            let p = *rng.pick(&BACKUP_POINTS);
            run(
                &node,
                &["snapshot"],
                &[("ETCDGUARD_TEST_CRASH_AFTER", p)],
                None,
            );
            (format!("backup killed at {p}"), None)
        } else if op < 60 {
            let ms = 50 + rng.below(1500);
            run(&node, &["snapshot"], &[], Some(Duration::from_millis(ms)));
            ("backup killed at a random moment".into(), None)
        } else if op < 72 {
            // A copy left pending, then its retry killed (at the point or at random).
            run_with(&dead, &["snapshot"], &[], None);
            if rng.below(2) == 0 {
                run(
                    &node,
                    &["snapshot"],
                    &[("ETCDGUARD_TEST_CRASH_AFTER", "retry:uploaded")],
                    None,
                );
                ("retried upload killed at retry:uploaded".into(), None)
            } else {
                run(
                    &node,
                    &["snapshot"],
                    &[],
                    Some(Duration::from_millis(300 + rng.below(1500))),
                );
                ("retried upload killed at a random moment".into(), None)
            }
        } else if op < 84 {
            // The daemon: catch-up of the slots missed since the last one, then scheduled ones.
            run(
                &node,
                &["run"],
                &[],
                Some(Duration::from_millis(200 + rng.below(2500))),
            );
            (
                "daemon (catch-up, schedule) killed at a random moment".into(),
                None,
            )
        } else {
            let r = match rng.below(3) {
                0 => torture_restore(
                    &kube,
                    &restore_snapshot,
                    Some(*rng.pick(&RESTORE_STEPS)),
                    None,
                ),
                1 => torture_restore(
                    &kube,
                    &restore_snapshot,
                    None,
                    Some(Duration::from_millis(rng.below(800))),
                ),
                _ => torture_restore(&kube, &restore_snapshot, None, None),
            };
            match r {
                Ok(w) => (w.to_string(), Some(Ok(()))),
                Err(e) => ("restore".to_string(), Some(Err(e))),
            }
        };
        *counts.entry(what.clone()).or_default() += 1;
        let verdict = match result {
            Some(r) => r,
            None => {
                let next = run(&node, &["snapshot"], &[], None);
                if next != Some(0) {
                    Err(format!(
                        "the next backup failed ({next:?}): {:#}",
                        node.last_record()
                    ))
                } else {
                    check_backups(&node, &s3, &what)
                }
            }
        };
        if let Err(e) = verdict {
            failures.push(format!("point {i} ({what}): {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("  {n:4}  {k}"))
        .collect();
    eprintln!(
        "crash campaign, seed {seed}, {keys} keys: {points} points in {:.0} s\n{}",
        started.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    assert!(
        failures.is_empty(),
        "invariants violated:\n{}",
        failures.join("\n")
    );
}
