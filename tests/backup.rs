//! `etcdguard snapshot` against real etcd: success and interoperability with upstream tools,
//! and every failure mode leaving a Failed record and no file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::util::etcd::EtcdServer;
use crate::util::node::Node;
use crate::util::proxy::{Faults, Proxy};
use crate::util::schema;
use crate::util::{
    assert_stderr_has, db_buckets, etcd_binary, etcdguard_cmd, free_port, list_dir, stderr, stdout,
    wait_until,
};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Restores `snapshot` with that version's `etcdutl` into `<dir>`, starts a real etcd on it and
/// returns the server.
fn restore_with_upstream(version: &str, snapshot: &Path, dir: &Path, pki: &Path) -> EtcdServer {
    let peer = format!("https://127.0.0.1:{}", free_port());
    let data_dir = dir.join("restored");
    let out = std::process::Command::new(etcd_binary(version, "etcdutl"))
        .args(["snapshot", "restore", snapshot.to_str().unwrap()])
        .args([
            "--name",
            "cp1",
            "--initial-cluster",
            &format!("cp1={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "upstream restore failed: {}",
        stderr(&out)
    );
    EtcdServer::start(version, "cp1", &data_dir, pki)
}

/// Keys put, deleted, compacted and defragmented; then `etcdguard snapshot` and `etcdctl
/// snapshot save` of the same revision give the same bytes, the record names the versions, and
/// the file restores with etcdutl into a real etcd serving the same keys.
fn snapshot_is_restorable(version: &str) {
    let node = Node::start(version, "cp1");
    node.etcd.put_keys("pods", 3000);
    for i in (0..3000).step_by(10) {
        let out = node
            .etcd
            .etcdctl(&["del", &format!("/registry/pods/{i:06}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mid = node.etcd.revision().to_string();
    node.etcd.put_keys("more", 100);
    // `--physical`: etcd compacts in the background, in batches; without it a snapshot taken
    // right after could hold revisions that one taken a moment later no longer does (a CI
    // run under load saw exactly that).
    for args in [
        &["compact", "--physical", mid.as_str()][..],
        &["defrag"][..],
    ] {
        let out = node.etcd.etcdctl(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let keys = node.etcd.all_keys();
    let revision = node.etcd.revision();

    let out = node.snapshot();
    assert!(out.status.success(), "snapshot failed: {}", stderr(&out));
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));

    let rec = node.last_record();
    assert_eq!(rec["result"], "Success", "{rec:#}");
    assert_eq!(rec["trigger"], "manual");
    assert_eq!(rec["member"]["name"], "cp1");
    assert_eq!(rec["member"]["endpoint"], node.etcd.client_url.as_str());
    assert!(rec["member"]["id"].as_str().unwrap().len() >= 8, "{rec:#}");
    assert!(rec["etcdVersion"].as_str().unwrap().starts_with(version));
    if version == "3.5" {
        assert!(rec.get("storageVersion").is_none(), "{rec:#}");
        assert!(rec.get("snapshotVersion").is_none(), "{rec:#}");
    } else {
        // The member's storage version and the snapshot's own: X.Y.0 of this minor.
        let want = format!("{version}.0");
        assert_eq!(rec["storageVersion"], want.as_str(), "{rec:#}");
        assert_eq!(rec["snapshotVersion"], want.as_str(), "{rec:#}");
    }
    assert_eq!(rec["revision"], revision, "{rec:#}");
    // Checked as it streamed by, not read back.
    assert_eq!(rec["checkedFrom"], "stream", "{rec:#}");
    assert_eq!(rec["local"]["state"], "present");
    let table = stdout(&node.run(&["records"]));
    let cell = rec["etcdVersion"].as_str().unwrap().to_string();
    assert!(
        table.contains("ETCD (DATA)") && table.contains(&cell),
        "{table}"
    );

    let files = node.snapshot_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = &files[0];
    assert_eq!(rec["fileName"], name.as_str());
    assert!(
        name.starts_with("snapshot-etcd-") && name.ends_with("-cp1.db"),
        "{name}"
    );
    let path = node.snapshot_dir().join(name);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(rec["sizeBytes"], bytes.len() as u64);
    assert_eq!(rec["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(rec["local"]["path"], path.to_str().unwrap());
    // The trailer is kept: the file is what etcdctl writes.
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer);
    assert!(db.len() > 3000 * 100, "db is {} bytes", db.len());
    // The stream check gives this real database the status the read-back check gives it.
    let mut check = etcdguard::etcddb::StreamCheck::new();
    for piece in bytes.chunks(32 << 10) {
        check.feed(piece);
    }
    let read_back =
        etcdguard::etcddb::Db::open(std::fs::File::open(&path).unwrap(), db.len() as u64)
            .map(|d| etcdguard::etcddb::status(&d).unwrap());
    assert_eq!(check.finish(db.len() as u64), read_back);
    // What etcdctl saves of the same revision, bucket by bucket. Not byte for byte: every
    // Snapshot RPC makes etcd force a backend commit first, which moves the bbolt txid and
    // copies a page or two, so even two `etcdctl snapshot save` in a row differ in bytes.
    let save = |name: &str| {
        let p = node.root.path().join(name);
        let out = node
            .etcd
            .etcdctl(&["snapshot", "save", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        p
    };
    let (theirs, again) = (save("etcdctl-1.db"), save("etcdctl-2.db"));
    assert_eq!(node.etcd.revision(), revision);
    assert!(
        std::fs::read(&theirs).unwrap() != std::fs::read(&again).unwrap(),
        "two etcdctl {version} snapshots of one revision were byte-identical: compare bytes"
    );
    let (ours, other) = (db_buckets(&path), db_buckets(&theirs));
    let differ: Vec<String> = ours
        .keys()
        .chain(other.keys())
        .filter(|b| ours.get(*b) != other.get(*b))
        .map(|b| {
            let keys = |x: &crate::util::Buckets| -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
                x.get(b).cloned().unwrap_or_default().into_iter().collect()
            };
            let (a, t) = (keys(&ours), keys(&other));
            let changed: Vec<String> = a
                .keys()
                .chain(t.keys())
                .filter(|k| a.get(*k) != t.get(*k))
                .take(5)
                .map(|k| {
                    format!(
                        "{} ({:?} against {:?})",
                        String::from_utf8_lossy(k),
                        a.get(k).map(hex::encode),
                        t.get(k).map(hex::encode)
                    )
                })
                .collect();
            format!("{b}: {}", changed.join(", "))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "etcdguard's snapshot holds other data than etcdctl {version}'s of the same revision: {differ:?}"
    );

    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&node.snapshot_dir()), 0o700);
    assert_eq!(mode(&node.state_dir()), 0o700);
    assert_eq!(mode(&node.state_dir().join("records.json")), 0o600);

    // Interoperability: upstream restore accepts the file and a real etcd serves the same keys.
    let dir = tempfile::tempdir().unwrap();
    let restored = restore_with_upstream(version, &path, dir.path(), &node.pki.dir);
    assert_eq!(restored.all_keys(), keys);
    assert_eq!(restored.revision(), revision);
}

per_version!(snapshot_is_restorable =>
    snapshot_of_etcd_3_5_is_restorable_by_etcdutl: "3.5",
    snapshot_of_etcd_3_6_is_restorable_by_etcdutl: "3.6",
    snapshot_of_etcd_3_7_is_restorable_by_etcdutl: "3.7",
);

/// Asserts the last record failed with a reason containing `needle`, exit code 1, and no file.
fn assert_failed(node: &Node, out: &std::process::Output, needle: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let rec = node.last_record();
    assert_eq!(rec["result"], "Failed", "{rec:#}");
    let reason = rec["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(needle),
        "reason {reason:?} lacks {needle:?}"
    );
    assert!(
        stderr(out).contains(&reason),
        "stderr lacks the reason: {}",
        stderr(out)
    );
    assert!(rec.get("fileName").is_none());
    assert_eq!(
        list_dir(&node.snapshot_dir()),
        Vec::<String>::new(),
        "a failed backup left files"
    );
    reason
}

#[test]
fn tls_and_connection_failures_are_recorded_clearly() {
    let mut node = Node::start("3.5", "cp1");
    node.etcd.put_keys("x", 10);

    // Wrong CA: a CA that did not sign etcd's server certificate.
    let other = crate::util::pki::Pki::ca_only(&node.path("other-ca"), "other-ca");
    node.set_path("etcd", "ca_cert", &other.path("ca.crt"));
    let reason = assert_failed(&node, &node.snapshot(), "not signed by the CA");
    assert!(
        reason.contains(other.path("ca.crt").to_str().unwrap()),
        "{reason}"
    );
    node.set_path("etcd", "ca_cert", &node.pki.path("ca.crt"));

    // Expired client certificate.
    let (crt, key) = node
        .pki
        .issue("expired-client", "expired", &[], false, true, -1);
    node.set("etcd", "client_cert", &format!("{crt:?}"));
    node.set("etcd", "client_key", &format!("{key:?}"));
    let reason = assert_failed(&node, &node.snapshot(), "expired");
    assert!(reason.contains("expired-client.crt"), "{reason}");

    // A client certificate signed by another CA: etcd rejects it.
    let (crt, key) = other.issue("foreign-client", "foreign", &[], false, true, 30);
    node.set("etcd", "client_cert", &format!("{crt:?}"));
    node.set("etcd", "client_key", &format!("{key:?}"));
    assert_failed(&node, &node.snapshot(), "rejected the client certificate");

    // Missing client certificate.
    node.set_path("etcd", "client_cert", &node.path("nope/client.crt"));
    let reason = assert_failed(&node, &node.snapshot(), "no such file");
    assert!(reason.contains("nope/client.crt"), "{reason}");
    let own = node.pki.dir.clone();
    node.use_pki(&own);

    // A good backup in between proves the config is right again.
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let good = node.snapshot_files();
    assert_eq!(good.len(), 1);

    // etcd down.
    node.etcd.stop();
    let out = node.snapshot();
    assert_eq!(out.status.code(), Some(1));
    let rec = node.last_record();
    assert_eq!(rec["result"], "Failed");
    let reason = rec["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "etcd at {} refused the connection",
            node.etcd.client_url
        )),
        "{reason}"
    );
    // The manifest still tells which member and endpoint failed.
    assert_eq!(rec["member"]["name"], "cp1");
    assert_eq!(rec["member"]["endpoint"], node.etcd.client_url.as_str());
    assert!(rec["member"].get("id").is_none());
    assert_eq!(
        node.snapshot_files(),
        good,
        "failure touched the good snapshot"
    );

    // Every attempt is recorded: 4 failures, 1 success, 1 failure.
    let results: Vec<_> = node
        .records()
        .iter()
        .map(|r| r["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        results,
        ["Failed", "Failed", "Failed", "Failed", "Success", "Failed"]
    );
    schema::assert_valid(
        "records.v1",
        &stdout(&node.run(&["records", "--output", "json"])),
    );
}

/// Waits until a hidden partial snapshot exists in `dir`.
fn wait_for_partial(dir: &Path, limit: Duration) {
    wait_until(
        &format!("a partial snapshot to appear in {}", dir.display()),
        limit,
        Duration::from_millis(20),
        || list_dir(dir).iter().any(|n| n.ends_with(".partial")),
    );
}

#[test]
fn cut_stalled_interrupted_and_concurrent_snapshots_leave_nothing_behind() {
    let mut node = Node::start("3.5", "cp1");
    // ~12 MB of data so the stream takes many messages.
    node.etcd.put_keys("big", 2500);

    // 1. The stream is cut mid-way by the network.
    let cut = Proxy::start(node.etcd.client_port(), Faults::cut(1 << 20));
    node.set("etcd", "endpoint", &format!("{:?}", cut.url()));
    assert_failed(&node, &node.snapshot(), "snapshot stream broke");

    // 2. The server stalls: stall_timeout fires.
    let stall = Proxy::start(
        node.etcd.client_port(),
        Faults::slow(1 << 20, Duration::from_secs(3600)),
    );
    node.set("etcd", "endpoint", &format!("{:?}", stall.url()));
    node.set("etcd", "stall_timeout", "\"2s\"");
    assert_failed(&node, &node.snapshot(), "etcd sent nothing for 2s");
    node.set("etcd", "stall_timeout", "\"10s\"");

    // 3. A slow stream: a second snapshot meanwhile is refused; SIGTERM aborts the first cleanly.
    let slow = Proxy::start(
        node.etcd.client_port(),
        Faults::slow(256 << 10, Duration::from_millis(200)),
    );
    node.set("etcd", "endpoint", &format!("{:?}", slow.url()));
    let config = node.config.to_str().unwrap().to_string();
    let first = etcdguard_cmd(&["--config", &config, "snapshot"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_partial(&node.snapshot_dir(), Duration::from_secs(20));
    let records_before = node.records().len();
    let second = node.snapshot();
    assert_eq!(second.status.code(), Some(1));
    assert_stderr_has(
        &second,
        &format!("another backup is running (pid {})", first.id()),
    );
    assert_eq!(
        node.records().len(),
        records_before,
        "a refused run must not record"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = first.wait_with_output().unwrap();
    assert_failed(&node, &out, "interrupted by signal SIGTERM");

    // 4. SIGKILL leaves a partial file (nothing can prevent that); the next run removes it.
    let victim = etcdguard_cmd(&["--config", &config, "snapshot"])
        .spawn()
        .unwrap();
    wait_for_partial(&node.snapshot_dir(), Duration::from_secs(20));
    let mut victim = victim;
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(node
        .snapshot_files()
        .iter()
        .any(|n| n.ends_with(".partial")));
    node.unset("etcd", "endpoint");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, "removed a partial snapshot");
    let files = node.snapshot_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(!files[0].starts_with('.'));
}

#[test]
fn paused_config_still_allows_a_manual_snapshot() {
    let mut node = Node::start("3.5", "cp1");
    node.set("", "paused", "true");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, "paused");
    assert_eq!(node.last_record()["result"], "Success");
}

#[test]
fn endpoint_of_another_member_is_refused() {
    // The manifest says this node's member is "cp1"; a configured endpoint that reaches a
    // different member must not produce a backup labelled as this node's.
    let mut node = Node::start("3.5", "cp1");
    let other = Node::start("3.5", "cp9");
    node.set("etcd", "endpoint", &format!("{:?}", other.etcd.client_url));
    node.use_pki(&other.pki.dir);
    assert_failed(
        &node,
        &node.snapshot(),
        "refusing to back up another member",
    );
}

#[test]
fn directories_others_could_change_are_refused_and_planted_symlinks_are_never_followed() {
    use std::os::unix::fs::symlink;
    let mut node = Node::start("3.5", "cp1");
    let set_mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // A state dir anyone may write: nothing is attempted, nothing written.
    let state = node.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    set_mode(&state, 0o777);
    let out = node.snapshot();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_stderr_has(&out, "it is writable by everyone (mode 0777)");
    assert_stderr_has(&out, &format!("chmod 0700 {}", state.display()));
    assert!(list_dir(&state).is_empty(), "{:?}", list_dir(&state));
    set_mode(&state, 0o700);

    // A snapshot dir owned by another user: a Failed record naming the owner and the fix.
    std::fs::create_dir_all(node.snapshot_dir()).unwrap();
    std::os::unix::fs::chown(node.snapshot_dir(), Some(65534), None).unwrap();
    let out = node.snapshot();
    let reason = assert_failed(&node, &out, "is owned by uid 65534");
    assert!(reason.contains("chown 0 "), "{reason}");
    std::os::unix::fs::chown(node.snapshot_dir(), Some(0), None).unwrap();

    // A snapshot replaced by a symlink to a file outside the dir: retention removes the link,
    // never what it points to.
    node.set("local_storage", "keep", "1");
    node.set("local_storage", "min_keep", "1");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let first = node.last_record()["fileName"].as_str().unwrap().to_string();
    let outside = node.root.path().join("precious.db");
    std::fs::write(&outside, b"not a snapshot, not etcdguard's").unwrap();
    let planted = node.snapshot_dir().join(&first);
    std::fs::remove_file(&planted).unwrap();
    symlink(&outside, &planted).unwrap();
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::symlink_metadata(&planted).is_err(),
        "the link is gone"
    );
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"not a snapshot, not etcdguard's"
    );
}

#[test]
fn a_nospace_alarm_and_a_full_quota_are_recorded_and_the_backup_still_verifies() {
    let mut node = Node::start(crate::util::NEWEST, "cp1");
    node.etcd
        .restart_with_env(&[("ETCD_QUOTA_BACKEND_BYTES", "16777216")]);
    let metrics_file = node.root.path().join("etcdguard.prom");
    node.set("", "metrics_file", &format!("{metrics_file:?}"));
    let out = node.run(&["health"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("alarms: none"), "{}", stdout(&out));
    assert!(stdout(&out).ends_with("healthy\n"), "{}", stdout(&out));
    // Fill until etcd refuses: it raises NOSPACE at its quota.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(async {
        let mut c = node.etcd.client().await.unwrap();
        let value = vec![b'x'; 256 << 10];
        for i in 0..400 {
            if let Err(e) = c
                .put(format!("/registry/blobs/{i}"), value.clone(), None)
                .await
            {
                return e.to_string();
            }
        }
        panic!("etcd took 100 MiB under a 16 MiB quota");
    });
    assert!(refused.contains("database space exceeded"), "{refused}");

    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, "etcd alarm NOSPACE on member");
    schema::assert_valid(
        "records.v1",
        &stdout(&node.run(&["records", "--output", "json"])),
    );
    let rec = node.last_record();
    let h = &rec["health"];
    assert!(
        h["alarms"][0]
            .as_str()
            .unwrap()
            .starts_with("NOSPACE on member "),
        "{h:#}"
    );
    assert_eq!(h["quotaBytes"], 16 << 20, "{h:#}");
    assert_eq!(h["quotaSource"], "etcd", "{h:#}");
    let warnings: Vec<&str> = h["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("of its 16 MiB quota")),
        "{warnings:?}"
    );
    assert!(
        stdout(&out).contains("etcd health: etcd alarm NOSPACE"),
        "{}",
        stdout(&out)
    );
    let table = stdout(&node.run(&["records"]));
    assert!(table.contains("alarm NOSPACE"), "{table}");
    let out = node.run(&["health"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("WARNING: etcd alarm NOSPACE on member"),
        "{}",
        stdout(&out)
    );
    let out = node.run(&["health", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    schema::assert_valid("health.v1", &stdout(&out));
    let metrics = std::fs::read_to_string(&metrics_file).unwrap();
    assert!(
        metrics.contains("etcdguard_etcd_alarm_active{alarm=\"NOSPACE\"} 1"),
        "{metrics}"
    );
    // The snapshot itself is whole: verify passes.
    let file = node.snapshot_dir().join(rec["fileName"].as_str().unwrap());
    let v = etcdguard_cmd(&["verify", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", stderr(&v));
}
