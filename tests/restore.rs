//! `etcdguard restore` on kubeadm-style nodes run by the kubelet stand-in: the single-node and
//! three-node procedures, every guard refusing with nothing changed, and a rollback from every
//! journaled step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::util::kubenode::KubeNode;
use crate::util::schema;
use crate::util::{assert_stderr_has, list_dir, stderr, stdout};

fn put(node: &KubeNode, prefix: &str, n: usize) {
    for i in 0..n {
        node.ctl(&[
            "put",
            &format!("/registry/{prefix}/{i:04}"),
            &format!("value-{prefix}-{i}"),
        ]);
    }
}

/// Every file under `dir`: relative path → sha256 (and mode), for "byte-identical" checks.
pub(crate) fn tree(dir: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), format!("{mode:o}"));
                walk(base, &p, out);
            } else {
                let h = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
                out.insert(rel, format!("{mode:o} {h}"));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn single_node() -> KubeNode {
    single_node_with("3.5")
}

fn single_node_with(etcd_version: &str) -> KubeNode {
    let mut n = KubeNode::with_etcd(etcd_version, "cp1", None, None, None);
    n.start();
    n.wait_healthy(Duration::from_secs(30));
    n
}

/// A backup through etcdguard; returns its record id and file.
fn backup(node: &KubeNode) -> (String, PathBuf) {
    let out = node.etcdguard(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recs: serde_json::Value = serde_json::from_slice(
        &node
            .etcdguard(&["records", "--output", "json", "--limit", "1"])
            .stdout,
    )
    .unwrap();
    let r = &recs[0];
    (
        r["id"].as_str().unwrap().to_string(),
        PathBuf::from(r["local"]["path"].as_str().unwrap()),
    )
}

fn lines_only_in(a: &str, b: &str) -> Vec<String> {
    let bl: Vec<&str> = b.lines().collect();
    a.lines()
        .filter(|l| !bl.contains(l))
        .map(str::to_string)
        .collect()
}

#[test]
fn single_node_restore_brings_back_the_snapshot_with_a_new_identity() {
    single_node_restore("3.5");
}

per_version!(single_node_restore =>
    single_node_restore_on_kubeadm_1_36_with_etcd_3_6: "3.6",
    single_node_restore_on_kubeadm_1_37_with_etcd_3_7: "3.7",
);

fn single_node_restore(etcd_version: &str) {
    let node = single_node_with(etcd_version);
    put(&node, "before", 300);
    let keys_at_backup = node.keys();
    let old = node.endpoint_status();
    let (record_id, _) = backup(&node);
    put(&node, "after", 50);
    let manifest = node.path("etc/kubernetes/manifests/etcd.yaml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let api_original =
        std::fs::read(node.path("etc/kubernetes/manifests/kube-apiserver.yaml")).unwrap();

    // Dry run: the whole plan, every guard, and nothing changed.
    let before = tree(&node.path("etc/kubernetes"));
    let out = node.restore(&["--snapshot", &record_id, "--dry-run", "--force"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let plan = stdout(&out);
    for needle in [
        "Restore plan",
        "revision",
        "cluster ID",
        "[PASS] snapshot integrity",
        "[PASS] version compatibility",
        "[WARN] live cluster",
        "Journal:",
    ] {
        assert!(plan.contains(needle), "{needle}: {plan}");
    }
    assert_eq!(
        tree(&node.path("etc/kubernetes")),
        before,
        "dry run changed something"
    );

    // Without --force the live cluster with quorum is refused, with nothing changed.
    let out = node.restore(&["--snapshot", &record_id, "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "[FAIL] live cluster");
    assert_stderr_has(&out, "nothing was changed");
    assert_eq!(tree(&node.path("etc/kubernetes")), before);

    // Without a terminal and without --yes: refused.
    let out = node.restore(&["--snapshot", &record_id, "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "no terminal");

    let out = node.restore(&[
        "--snapshot",
        &record_id,
        "--yes",
        "--force",
        "--timeout",
        "60s",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        node.log_tail()
    );
    node.wait_healthy(Duration::from_secs(30));
    // Exactly the snapshot's keys, under a new cluster ID, the revision bumped by 1e9.
    assert_eq!(node.keys(), keys_at_backup);
    let new = node.endpoint_status();
    assert_ne!(new["header"]["cluster_id"], old["header"]["cluster_id"]);
    assert!(
        new["header"]["revision"].as_i64().unwrap() > 1_000_000_000,
        "{new:#}"
    );
    // The old data dir and the original manifests are kept.
    let lib = list_dir(&node.path("var/lib"));
    let pre = lib
        .iter()
        .find(|n| n.starts_with("etcd.pre-restore-"))
        .expect("old data dir kept");
    assert!(node
        .path("var/lib")
        .join(pre)
        .join("member/snap/db")
        .exists());
    let tmp = node.path("etc/kubernetes/tmp");
    let backup_dir = tmp.join(&list_dir(&tmp)[0]);
    assert_eq!(
        std::fs::read_to_string(backup_dir.join("etcd.yaml")).unwrap(),
        original
    );
    assert_eq!(
        std::fs::read(backup_dir.join("kube-apiserver.yaml")).unwrap(),
        api_original
    );
    // etcd.yaml differs only in the restore flags; the API server manifest is back as it was.
    let now = std::fs::read_to_string(&manifest).unwrap();
    let gone = lines_only_in(&original, &now);
    let added = lines_only_in(&now, &original);
    // (--initial-cluster keeps its value for a single node: cp1 with its own peer URL.)
    assert!(gone.is_empty(), "{gone:?}");
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(
        added
            .iter()
            .all(|l| l.trim_start().starts_with("- --initial-cluster")),
        "{added:?}"
    );
    assert_eq!(
        std::fs::read(node.path("etc/kubernetes/manifests/kube-apiserver.yaml")).unwrap(),
        api_original
    );
    // Every flag is one the image's etcd accepts (it is running on them).
    if etcd_version != "3.5" {
        assert!(!now.contains("--experimental-"), "{now}");
    }
    assert_eq!(
        node.endpoint_status()["version"]
            .as_str()
            .unwrap()
            .rsplit_once('.')
            .unwrap()
            .0,
        etcd_version
    );
    // The journal says done, the records say restored.
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup_dir.join("journal.json")).unwrap()).unwrap();
    assert_eq!(j["state"], "done");
    let out = node.etcdguard(&["records", "--output", "json"]);
    schema::assert_valid("records.v1", &stdout(&out));
    let recs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(recs[0]["trigger"], "restore");
    assert_eq!(recs[0]["result"], "Success");
}

#[test]
fn guards_refuse_with_a_clear_message_and_nothing_changed() {
    let node = single_node();
    put(&node, "x", 20);
    let (_, file) = backup(&node);
    let etc_before = tree(&node.path("etc/kubernetes"));
    // A plan the flags make impossible is a usage error (2), as in restore-datadir; the rest
    // are refusals (1).
    let check_exit = |args: &[&str], needle: &str, code: i32| {
        let out = node.restore(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(all.contains(needle), "{args:?}: wanted {needle:?} in {all}");
        assert_eq!(
            tree(&node.path("etc/kubernetes")),
            etc_before,
            "{args:?} changed a manifest"
        );
        assert!(
            list_dir(&node.path("var/lib"))
                .iter()
                .all(|n| !n.contains("restore")),
            "{args:?}"
        );
    };
    let check = |args: &[&str], needle: &str| check_exit(args, needle, 1);
    let f = file.to_str().unwrap();

    // Corrupt snapshot.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, bytes).unwrap();
    check(
        &["--snapshot", bad.to_str().unwrap(), "--yes", "--force"],
        "is corrupt",
    );
    // Unknown member name in the plan.
    check_exit(
        &[
            "--snapshot",
            f,
            "--yes",
            "--force",
            "--initial-cluster",
            "other=https://127.0.0.1:1",
        ],
        "couldn't find local name \"cp1\"",
        2,
    );
    // Not a file, record or key.
    check(
        &["--snapshot", "no-such-thing", "--yes"],
        "not a file, not a record id",
    );

    // Processes the kubelet does not stop: with the runner paused, moving the manifests out
    // stops nothing. First the API server is seen still running, then (without an API server
    // manifest on the node) etcd still holding the data dir. Both roll back by themselves.
    let manifests_before = tree(&node.path("etc/kubernetes/manifests"));
    node.kubelet().settle_and_pause();
    let out = node.restore(&["--snapshot", f, "--yes", "--force", "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_stderr_has(&out, "kube-apiserver did not stop within 3s");
    assert_stderr_has(&out, "rolled back");
    assert_eq!(
        tree(&node.path("etc/kubernetes/manifests")),
        manifests_before
    );
    let api = node.path("etc/kubernetes/manifests/kube-apiserver.yaml");
    let api_text = std::fs::read(&api).unwrap();
    std::fs::remove_file(&api).unwrap();
    node.kubelet().resume();
    node.kubelet().settle_and_pause();
    let manifests_before = tree(&node.path("etc/kubernetes/manifests"));
    let out = node.restore(&["--snapshot", f, "--yes", "--force", "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_stderr_has(&out, "etcd is still running");
    assert_stderr_has(&out, "member/snap/db is locked");
    assert_stderr_has(&out, "rolled back");
    assert_eq!(
        tree(&node.path("etc/kubernetes/manifests")),
        manifests_before
    );
    assert!(list_dir(&node.path("var/lib"))
        .iter()
        .all(|n| !n.contains("restore")));
    std::fs::write(&api, api_text).unwrap();
    node.kubelet().resume();

    // A manifest whose data volume cannot be resolved.
    let manifest = node.path("etc/kubernetes/manifests/etcd.yaml");
    let good = std::fs::read_to_string(&manifest).unwrap();
    let tricky = good.replace(
        "    - mountPath: /var/lib/etcd\n      name: etcd-data\n",
        "",
    );
    node.kubelet().settle_and_pause();
    std::fs::write(&manifest, &tricky).unwrap();
    let out = node.restore(&["--snapshot", f, "--yes", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(
        &out,
        "no volume mount of the etcd container contains --data-dir",
    );
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), tricky);
    std::fs::write(&manifest, &good).unwrap();
    node.kubelet().resume();
}

#[test]
fn too_little_disk_is_refused() {
    // The data dir's filesystem: a small tmpfs that etcd itself nearly fills: its WAL segment
    // and the next one it preallocates are 64 MB each (with less room the second allocation
    // fails, and etcd may then stall on a full disk before the test starts). What is left,
    // about 35 MB, is less than a restore needs (the db and a 64 MB WAL segment).
    let mut node = KubeNode::new("cp1", None, None, None);
    let lib = node.path("var/lib");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160m", "tmpfs"])
        .arg(&lib)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "cannot mount a tmpfs (this test needs root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(lib.clone());
    node.start();
    node.wait_healthy(Duration::from_secs(30));
    put(&node, "x", 10);
    let (_, file) = backup(&node);
    let out = node.restore(&["--snapshot", file.to_str().unwrap(), "--dry-run", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("[FAIL] disk space"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("MB needed"), "{}", stdout(&out));
    drop(node);
}

/// The journaled steps a crash can follow.
pub(crate) const STEPS: [&str; 8] = [
    "apiserver-stopped",
    "etcd-manifest-moved",
    "etcd-stopped",
    "data-dir-built",
    "old-data-dir-moved",
    "new-data-dir-in-place",
    "manifest-written",
    "etcd-healthy",
];

#[test]
fn a_restore_killed_after_any_step_rolls_back_to_the_exact_previous_state() {
    let node = single_node();
    put(&node, "keep", 100);
    let (_, file) = backup(&node);
    put(&node, "later", 10);
    let keys = node.keys();
    let old_cluster = node.endpoint_status()["header"]["cluster_id"].clone();
    let manifests = node.path("etc/kubernetes/manifests");
    let manifests_before = tree(&manifests);
    let data = node.path("var/lib/etcd");

    for step in STEPS {
        let out = crate::util::etcdguard_cmd(&[
            "restore",
            "--root",
            node.root.path().to_str().unwrap(),
            "--snapshot",
            file.to_str().unwrap(),
            "--yes",
            "--force",
            "--timeout",
            "60s",
        ])
        .env("ETCDGUARD_TEST_CRASH_AFTER", step)
        .output()
        .unwrap();
        assert!(!out.status.success(), "{step}: the restore was not killed");
        // Look at the node as the crash left it; the old data must be untouched wherever it is.
        node.kubelet().settle_and_pause();
        let etcd_down = !node.kubelet().etcd_running();
        if !etcd_down {
            // An etcd runs (the old one, or already the restored one): the rollback must stop
            // it through the kubelet and wait, as on a real node.
            node.kubelet().resume();
        }
        let lib = list_dir(&node.path("var/lib"));
        let old_data = lib
            .iter()
            .find(|n| n.starts_with("etcd.pre-restore-"))
            .map(|n| node.path("var/lib").join(n))
            .unwrap_or_else(|| data.clone());
        let old_tree = etcd_down.then(|| tree(&old_data));

        let out = if etcd_down {
            node.restore(&["--rollback", "--no-wait"])
        } else {
            node.restore(&["--rollback", "--timeout", "60s"])
        };
        assert!(out.status.success(), "{step}: rollback: {}", stderr(&out));
        assert_eq!(
            tree(&manifests),
            manifests_before,
            "{step}: manifests differ after the rollback"
        );
        if let Some(t) = old_tree {
            assert_eq!(
                tree(&data),
                t,
                "{step}: the data dir is not the old one, byte for byte"
            );
        }
        assert!(
            !list_dir(&node.path("var/lib"))
                .iter()
                .any(|n| n.starts_with("etcd.pre-restore") || n.starts_with(".etcd.restored")),
            "{step}: {:?}",
            list_dir(&node.path("var/lib"))
        );
        // A second rollback finds nothing left to do.
        let again = node.restore(&["--rollback", "--no-wait"]);
        assert!(again.status.success(), "{step}: {}", stderr(&again));
        assert!(stdout(&again).contains("already rolled back"), "{step}");

        node.kubelet().resume();
        node.wait_healthy(Duration::from_secs(30));
        assert_eq!(node.keys(), keys, "{step}: keys after the rollback");
        assert_eq!(
            node.endpoint_status()["header"]["cluster_id"],
            old_cluster,
            "{step}"
        );
        // Done with this round: move its journal out of the way for the next "latest".
        let tmp = node.path("etc/kubernetes/tmp");
        for d in list_dir(&tmp) {
            std::fs::rename(tmp.join(&d), node.path(&format!("done-{d}"))).unwrap();
        }
    }
}

#[test]
fn three_nodes_restored_with_one_plan_form_a_healthy_cluster() {
    three_nodes_restored("3.5");
}

per_version!(three_nodes_restored =>
    three_nodes_on_kubeadm_1_36_with_etcd_3_6_restored: "3.6",
    three_nodes_on_kubeadm_1_37_with_etcd_3_7_restored: "3.7",
);

fn three_nodes_restored(etcd_version: &str) {
    let pki = tempfile::tempdir().unwrap();
    crate::util::pki::Pki::create(pki.path());
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (crate::util::free_port(), crate::util::free_port()))
        .collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("cp{}=https://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<KubeNode> = (0..3)
        .map(|i| {
            KubeNode::with_etcd(
                etcd_version,
                &format!("cp{}", i + 1),
                Some(pki.path()),
                Some(ports[i]),
                Some(&cluster),
            )
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.wait_healthy(Duration::from_secs(60));
    }
    put(&nodes[0], "pods", 200);
    let keys = nodes[0].keys();
    let (_, file) = backup(&nodes[0]);
    put(&nodes[0], "lost", 20);

    // The same snapshot and plan on every node, at the same time.
    let token = "etcd-restore-three";
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (file, cluster) = (file.clone(), cluster.clone());
                s.spawn(move || {
                    n.restore(&[
                        "--snapshot",
                        file.to_str().unwrap(),
                        "--yes",
                        "--force",
                        "--initial-cluster",
                        &cluster,
                        "--initial-cluster-token",
                        token,
                        "--timeout",
                        "120s",
                    ])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, out) in nodes.iter().zip(&outs) {
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            n.name,
            stderr(out),
            n.log_tail()
        );
    }
    let mut leaders = std::collections::BTreeSet::new();
    let mut hashes = std::collections::BTreeSet::new();
    for n in &nodes {
        n.wait_healthy(Duration::from_secs(60));
        leaders.insert(n.endpoint_status()["leader"].as_u64().unwrap());
        let hv: serde_json::Value =
            serde_json::from_str(&n.ctl(&["endpoint", "hashkv", "-w", "json"])).unwrap();
        hashes.insert(hv[0]["HashKV"]["hash"].as_u64().unwrap());
        assert_eq!(n.keys(), keys, "{}", n.name);
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    let members: serde_json::Value =
        serde_json::from_str(&nodes[1].ctl(&["member", "list", "-w", "json"])).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
}
