//! `etcdguard drill` against real snapshots of etcd 3.5, 3.6 and 3.7: it passes, a real etcd
//! of the version started on the drill's dir serves the source's hashkv at the snapshot
//! revision, and each kind of damage fails the drill naming the check. The scratch dir is
//! always emptied and the live data dir never touched.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::util::etcd::EtcdServer;
use crate::util::node::Node;
use crate::util::pki::Pki;
use crate::util::{etcd_binary, etcdguard_cmd, list_dir, schema, stderr, stdout};

/// The node's manifest mounts its real PKI dir (kubeadm's is /etc/kubernetes/pki/etcd), so
/// the drill's etcd serves with the node's server certificate.
fn mount_pki(node: &Node) {
    let manifest = node.path("etc/kubernetes/manifests/etcd.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace(
        "path: /etc/kubernetes/pki/etcd",
        &format!("path: {}", node.pki.dir.display()),
    );
    std::fs::write(&manifest, text).unwrap();
}

/// `etcdguard drill` with `args`; its JSON record (schema-checked) and exit code.
fn drill(node: &Node, args: &[&str], env: &[(&str, &str)]) -> (Value, Option<i32>) {
    let mut all = vec![
        "--config",
        node.config.to_str().unwrap(),
        "drill",
        "--output",
        "json",
    ];
    all.extend_from_slice(args);
    let out = etcdguard_cmd(&all)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(!text.is_empty(), "no output; stderr:\n{}", stderr(&out));
    schema::assert_valid("record.v1", &text);
    (serde_json::from_str(&text).unwrap(), out.status.code())
}

fn check<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["drill"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {record:#}"))
}

fn scratch_is_empty(node: &Node) {
    let scratch = node.state_dir().join("drill");
    assert_eq!(
        list_dir(&scratch),
        Vec::<String>::new(),
        "scratch left behind"
    );
}

fn drill_passes_and_etcd_serves_the_source_hashkv(version: &str) {
    let mut node = Node::start(version, "cp1");
    node.etcd.put_keys("drill", 1200);
    // Deletes and a compaction, so the hash covers tombstones and a compacted history.
    let rev = node.etcd.revision();
    let out = node
        .etcd
        .etcdctl(&["del", "--prefix", "/registry/drill/0001"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node
        .etcd
        .etcdctl(&["compact", "--physical", &(rev - 100).to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    mount_pki(&node);
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = node.last_record();
    let live_before = list_dir(&node.etcd.data_dir.join("member/snap"));

    // Without an etcd binary: every offline check passes, the start is off.
    let (r, code) = drill(&node, &[], &[]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(
        (r["trigger"].as_str(), r["result"].as_str()),
        (Some("drill"), Some("Success"))
    );
    assert_eq!(r["drill"]["snapshotId"], backup["id"]);
    assert_eq!(r["drill"]["source"], "local");
    assert_eq!(r["drill"]["targetVersion"], version);
    assert_eq!(r["sha256"], backup["sha256"]);
    for name in [
        "integrity",
        "cluster",
        "version",
        "space",
        "build",
        "db",
        "content",
        "revision",
        "wal",
        "consistent-index",
        "snap",
        "members",
    ] {
        assert_eq!(check(&r, name)["result"], "passed", "{name}: {r:#}");
    }
    assert_eq!(check(&r, "etcd-start")["result"], "skipped");
    scratch_is_empty(&node);

    // With this version's etcd: it starts on the built dir, and its hashkv at the snapshot's
    // revision is the source's at that revision. The drill's offline hashkv and live-key
    // count sort on disk here (100 entries in memory for 1,200 keys): the same answer.
    let snapshot_rev = backup["revision"].as_i64().unwrap();
    let etcd = etcd_binary(version, "etcd");
    let (r, code) = drill(
        &node,
        &["--etcd-binary", etcd.to_str().unwrap()],
        &[("ETCDGUARD_TEST_SORT_IN_MEMORY", "100")],
    );
    assert_eq!(code, Some(0), "{r:#}");
    let started = check(&r, "etcd-start");
    assert_eq!(started["result"], "passed", "{r:#}");
    let out = node.etcd.etcdctl(&[
        "endpoint",
        "hashkv",
        "--rev",
        &snapshot_rev.to_string(),
        "-w",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let source_hash = v[0]["HashKV"]["hash"].as_u64().unwrap();
    let detail = started["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("hashkv {source_hash} = the snapshot's")),
        "source hashkv {source_hash}, drill: {detail}"
    );
    assert!(
        detail.contains(&format!("revision {snapshot_rev}")),
        "{detail}"
    );
    // The wrong version's etcd is refused, naming the check.
    let other = if version == "3.7" { "3.6" } else { "3.7" };
    let etcd = etcd_binary(other, "etcd");
    let (r, code) = drill(&node, &["--etcd-binary", etcd.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(check(&r, "etcd-start")["result"], "failed");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("drill check `etcd-start` failed"),
        "{r:#}"
    );
    scratch_is_empty(&node);

    // The live member was never touched, and every drill is a record.
    assert!(node.etcd.etcdctl(&["endpoint", "health"]).status.success());
    assert_eq!(
        list_dir(&node.etcd.data_dir.join("member/snap")),
        live_before
    );
    let drills = node
        .records()
        .iter()
        .filter(|r| r["trigger"] == "drill")
        .count();
    assert_eq!(drills, 3);
    let text = node.run(&["drill"]);
    assert!(stdout(&text).contains("PASSED"), "{}", stdout(&text));
    assert!(
        stdout(&text).contains("consistent-index"),
        "{}",
        stdout(&text)
    );
    node.etcd.stop();
}

per_version!(drill_passes_and_etcd_serves_the_source_hashkv =>
    drill_passes_on_etcd_3_5: "3.5",
    drill_passes_on_etcd_3_6: "3.6",
    drill_passes_on_etcd_3_7: "3.7",
);

fn write_with_trailer(path: &Path, mut db: Vec<u8>) {
    let sum = Sha256::digest(&db);
    db.extend_from_slice(&sum);
    std::fs::write(path, db).unwrap();
}

/// The offsets of a db's leaf pages, last first (some may be free pages, not in the tree).
fn leaves(db: &[u8]) -> Vec<usize> {
    let ps = u32::from_le_bytes(db[24..28].try_into().unwrap()) as usize;
    (2..db.len() / ps)
        .rev()
        .map(|i| i * ps)
        .filter(|&off| u16::from_le_bytes([db[off + 8], db[off + 9]]) == 0x02)
        .collect()
}

/// The db with one leaf of its tree made an unknown page type: the first leaf, from the end,
/// whose damage bbolt's check (our reader's) reports.
fn broken_leaf(db: &[u8], path: &Path) -> usize {
    for leaf in leaves(db) {
        let mut broken = db.to_vec();
        broken[leaf + 8] = 0x40;
        write_with_trailer(path, broken);
        if etcdguard::etcddb::verify_snapshot_file(path, false, None).is_err() {
            return leaf;
        }
    }
    panic!("no leaf of the tree found");
}

#[test]
fn each_kind_of_damage_fails_the_drill_naming_the_check() {
    let node = Node::start(crate::util::NEWEST, "cp1");
    node.etcd.put_keys("dmg", 600);
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = node.last_record();
    let good = PathBuf::from(backup["local"]["path"].as_str().unwrap());
    let bytes = std::fs::read(&good).unwrap();
    let db = bytes[..bytes.len() - 32].to_vec();
    let dir = node.path("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    let failed_at = |file: &Path, env: &[(&str, &str)]| -> (String, Value) {
        let (r, code) = drill(&node, &["--snapshot", file.to_str().unwrap()], env);
        assert_eq!(code, Some(1), "{r:#}");
        assert_eq!(r["result"], "Failed");
        let failed: Vec<&Value> = r["drill"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["result"] == "failed")
            .collect();
        assert_eq!(failed.len(), 1, "{r:#}");
        let name = failed[0]["name"].as_str().unwrap().to_string();
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .starts_with(&format!("drill check `{name}` failed")),
            "{r:#}"
        );
        scratch_is_empty(&node);
        (name, r)
    };

    // A flipped byte in a leaf: the sha256 trailer no longer matches.
    let mut flipped = bytes.clone();
    flipped[leaves(&db)[0] + 200] ^= 0x10;
    let f = dir.join("flipped.db");
    std::fs::write(&f, &flipped).unwrap();
    let (name, r) = failed_at(&f, &[]);
    assert_eq!(name, "integrity");
    assert!(
        check(&r, "integrity")["detail"]
            .as_str()
            .unwrap()
            .contains("sha256"),
        "{r:#}"
    );

    // A leaf made unreadable with the trailer made to match: bbolt's check catches it.
    let f = dir.join("broken-leaf.db");
    let leaf = broken_leaf(&db, &f);
    let (name, r) = failed_at(&f, &[]);
    assert_eq!(name, "integrity");
    assert!(
        check(&r, "integrity")["detail"]
            .as_str()
            .unwrap()
            .contains("bbolt"),
        "{r:#}"
    );

    // A truncated file.
    let f = dir.join("truncated.db");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(failed_at(&f, &[]).0, "integrity");

    // A record whose file changed after the backup (trailer still consistent): its sha256.
    let mut changed_value = db.clone();
    changed_value[leaf + 4095] ^= 1;
    write_with_trailer(&good, changed_value);
    let id = backup["id"].as_str().unwrap();
    let (r, code) = drill(&node, &["--snapshot", id], &[]);
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(check(&r, "integrity")["result"], "failed", "{r:#}");
    assert!(
        check(&r, "integrity")["detail"]
            .as_str()
            .unwrap()
            .contains("its record says"),
        "{r:#}"
    );
    std::fs::write(&good, &bytes).unwrap();

    // A db whose consistent index disagrees with the WAL the engine writes (an engine bug,
    // injected by the test hook after the build).
    let (name, r) = failed_at(
        &good,
        &[("ETCDGUARD_TEST_DRILL_DAMAGE", "consistent-index")],
    );
    assert_eq!(name, "consistent-index", "{r:#}");
    assert!(
        check(&r, "consistent-index")["detail"]
            .as_str()
            .unwrap()
            .contains("skip the first entries"),
        "{r:#}"
    );
    assert_eq!(check(&r, "wal")["result"], "passed");

    // A snapshot of another cluster.
    let other_root = tempfile::tempdir().unwrap();
    let pki = Pki::create(&other_root.path().join("pki"));
    let other = EtcdServer::start(
        crate::util::NEWEST,
        "other",
        &other_root.path().join("etcd"),
        &pki.dir,
    );
    other.put_keys("x", 10);
    let f = dir.join("other-cluster.db");
    let out = other.etcdctl(&["snapshot", "save", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (name, r) = failed_at(&f, &[]);
    assert_eq!(name, "cluster");
    assert!(
        check(&r, "cluster")["detail"]
            .as_str()
            .unwrap()
            .contains("another cluster"),
        "{r:#}"
    );

    // The good snapshot still passes, and the metrics and records saw every drill.
    let (r, code) = drill(&node, &[], &[]);
    assert_eq!(code, Some(0), "{r:#}");
    let drills: Vec<Value> = node
        .records()
        .into_iter()
        .filter(|r| r["trigger"] == "drill")
        .collect();
    assert_eq!(drills.len(), 7);
    assert_eq!(
        drills.iter().filter(|r| r["result"] == "Success").count(),
        1
    );
}

/// The remote copy, compressed and encrypted: downloaded into the scratch dir, checked against
/// its record, opened with the identity, drilled; without the identity the drill fails naming
/// the source, and a scheduled drill of sealed copies without one is a configuration error.
#[test]
fn a_drill_of_the_encrypted_remote_copy_downloads_opens_and_passes() {
    use crate::encryption::age_key;
    use crate::remote::{use_remote, BUCKET};
    use crate::util::s3::{S3Server, SECRET_KEY};
    let mut node = Node::start(crate::util::NEWEST, "cp1");
    node.etcd.put_keys("remote", 400);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let (identity, recipient) = age_key(dir.path(), "ops.txt");
    node.set("encryption", "recipients", &format!("[{recipient:?}]"));
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = node.last_record();
    assert_eq!(backup["remote"]["state"], "uploaded");

    let (r, code) = drill(&node, &["--remote"], &[]);
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(check(&r, "source")["result"], "failed");
    assert!(
        check(&r, "source")["detail"]
            .as_str()
            .unwrap()
            .contains("encrypted"),
        "{r:#}"
    );

    let (r, code) = drill(
        &node,
        &["--remote", "--identity", identity.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["drill"]["source"], "remote");
    assert_eq!(r["drill"]["snapshotId"], backup["id"]);
    let source = check(&r, "source")["detail"].as_str().unwrap();
    assert!(source.contains("downloaded from s3://"), "{source}");
    assert!(source.contains("opened with"), "{source}");
    assert_eq!(check(&r, "integrity")["result"], "passed");
    assert_eq!(
        list_dir(&node.state_dir().join("drill")),
        Vec::<String>::new()
    );
    // Nothing of the key in the record.
    let key = std::fs::read_to_string(&identity).unwrap();
    let secret = key
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    assert!(!r.to_string().contains(secret));

    node.set("drill", "schedule", "\"@weekly\"");
    node.set("drill", "source", "\"remote\"");
    let check = node.run(&["config", "check"]);
    assert_eq!(check.status.code(), Some(78));
    assert!(
        stderr(&check).contains("drill.identity"),
        "{}",
        stderr(&check)
    );
    node.set_path("drill", "identity", &identity);
    let check = node.run(&["config", "check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let (r, code) = drill(&node, &[], &[]);
    assert_eq!(
        (code, r["drill"]["source"].as_str()),
        (Some(0), Some("remote")),
        "{r:#}"
    );
}
