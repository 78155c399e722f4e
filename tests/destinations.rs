//! Several destinations at once, against real servers: an S3 server (s3s-fs, `[remote_storage]`),
//! Azurite, fake-gcs-server and an `fs` destination on a mount of its own (tmpfs), every copy
//! read back through its own server and compared with the local file; one server killed in the
//! middle of the upload leaves only its own copy pending, and the daemon's next tick completes
//! it. The `fs` kind's refusals: a mount that is missing, read-only or full.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::remote::{remote_state, use_remote, BUCKET};
use crate::util::node::Node;
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::storage::{Azurite, FakeGcs, AZURE_ACCOUNT};
use crate::util::{etcdguard_cmd, poll_until, stderr, stdout, Tmpfs, NEWEST};

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The copy of `record` at destination `name`, from `remote` or `moreRemotes`.
fn copy<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    std::iter::once(&record["remote"])
        .chain(record["moreRemotes"].as_array().into_iter().flatten())
        .find(|c| c["destination"] == name)
        .unwrap_or_else(|| panic!("no copy at {name}: {record:#}"))
}

fn states(record: &serde_json::Value) -> Vec<(String, String)> {
    ["remote", "azure", "gcs", "nfs"]
        .iter()
        .map(|d| {
            (
                d.to_string(),
                copy(record, d)["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn azure_destination(az: &Azurite, key_file: &Path) -> String {
    format!(
        "name = \"azure\"\ntype = \"azblob\"\ncontainer = {:?}\naccount_name = {AZURE_ACCOUNT:?}\n\
         endpoint = {:?}\ncredentials_file = {:?}\nprefix = \"prod/\"\nstall_timeout = \"3s\"\n\
         timeout = \"60s\"\n",
        az.container,
        az.endpoint,
        key_file.display().to_string()
    )
}

fn gcs_destination(gcs: &FakeGcs) -> String {
    format!(
        "name = \"gcs\"\ntype = \"gcs\"\nbucket = {:?}\nendpoint = {:?}\nanonymous = true\n\
         prefix = \"prod/\"\nstall_timeout = \"3s\"\ntimeout = \"60s\"\n",
        gcs.bucket, gcs.endpoint
    )
}

fn fs_destination(path: &Path) -> String {
    format!(
        "name = \"nfs\"\ntype = \"fs\"\npath = {:?}\nprefix = \"prod/\"\n",
        path.display().to_string()
    )
}

#[test]
fn four_destinations_get_byte_identical_copies_and_a_server_killed_mid_upload_delays_only_its_own()
{
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_mib("dest", 24);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    let mut az = Azurite::start(dir.path(), "etcd-backups");
    let gcs = FakeGcs::start(dir.path(), "etcd-backups");
    let nfs = Tmpfs::new("256m");
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    node.set(
        "",
        "metrics_file",
        &format!("{:?}", node.path("metrics.prom").display().to_string()),
    );
    let key_file = az.key_file(node.root.path());
    node.add_destination(&azure_destination(&az, &key_file));
    node.add_destination(&gcs_destination(&gcs));
    node.add_destination(&fs_destination(nfs.path()));

    // The pre-flight asks every destination.
    let out = node.run(&["config", "check", "--remote"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for d in ["remote (s3)", "azure (azblob)", "gcs (gcs)", "nfs "] {
        assert!(
            stderr(&out).contains(&format!("destination: {d}")),
            "{d}: {}",
            stderr(&out)
        );
    }
    assert!(
        stdout(&out).matches("[[destination]]").count() == 4,
        "{}",
        stdout(&out)
    );

    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = node.last_record();
    assert!(
        states(&r).iter().all(|(_, s)| s == "uploaded"),
        "{:?}: {r:#}",
        states(&r)
    );
    let file = r["fileName"].as_str().unwrap().to_string();
    let local = std::fs::read(r["local"]["path"].as_str().unwrap()).unwrap();
    assert!(local.len() > 20 << 20, "{} bytes", local.len());
    let want = sha256(&local);
    let key = format!("prod/cp1/{file}");
    assert_eq!(sha256(&s3.object(BUCKET, &key)), want, "s3");
    assert_eq!(sha256(&az.blob(&key)), want, "azure");
    assert_eq!(sha256(&gcs.object(&key)), want, "gcs");
    let on_mount = nfs.path().join(&key);
    assert_eq!(sha256(&std::fs::read(&on_mount).unwrap()), want, "fs");
    // Each destination has the sidecar; on the mount everything is private and nothing
    // partial is left.
    assert!(
        az.names().contains(&format!("{key}.json")),
        "{:?}",
        az.names()
    );
    assert!(
        gcs.names().contains(&format!("{key}.json")),
        "{:?}",
        gcs.names()
    );
    assert_eq!(mode(&on_mount), 0o600);
    assert_eq!(mode(&nfs.path().join(format!("{key}.json"))), 0o600);
    assert_eq!(mode(on_mount.parent().unwrap()), 0o700);
    let names = crate::util::list_dir(on_mount.parent().unwrap());
    assert_eq!(names, [file.clone(), format!("{file}.json")], "{names:?}");
    for d in ["azure", "gcs", "nfs"] {
        let loc = copy(&r, d)["location"].as_str().unwrap();
        assert!(loc.ends_with(&key), "{d}: {loc}");
    }
    let json = node.run(&["records", "--output", "json"]);
    crate::util::schema::assert_valid("records.v1", &stdout(&json));

    // One column per destination, and the metrics carry each by name.
    let out = node.run(&["records"]);
    let head = stdout(&out).lines().next().unwrap_or("").to_string();
    for col in ["REMOTE", "AZURE", "GCS", "NFS"] {
        assert!(head.contains(col), "{head}");
    }
    let metrics = std::fs::read_to_string(node.path("metrics.prom")).unwrap();
    for d in ["remote", "azure", "gcs", "nfs"] {
        let line = format!("etcdguard_snapshots{{destination=\"{d}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }

    // Azurite killed in the middle of the upload: the stream is paced so that the kill lands
    // in it. Only Azure's copy waits; the others are uploaded, and the backup is not held up
    // by more than Azure's stall_timeout.
    node.set("etcd", "rate_limit", "\"6MiB/s\"");
    // The healthy destinations get a stall_timeout a busy machine cannot trip (its test
    // servers are slow then, not dead); Azure keeps 3 s, and is the one killed.
    node.set("remote_storage", "stall_timeout", "\"30s\"");
    node.clear_destinations();
    node.add_destination(&azure_destination(&az, &key_file));
    node.add_destination(
        &gcs_destination(&gcs).replace("stall_timeout = \"3s\"", "stall_timeout = \"30s\""),
    );
    node.add_destination(&fs_destination(nfs.path()));
    let started = Instant::now();
    let child = node.run_spawn(&["snapshot"]);
    std::thread::sleep(Duration::from_millis(1500));
    az.kill();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = node.last_record();
    let st = states(&r);
    assert_eq!(
        st,
        [
            ("remote".to_string(), "uploaded".to_string()),
            ("azure".into(), "pending".into()),
            ("gcs".into(), "uploaded".into()),
            ("nfs".into(), "uploaded".into())
        ],
        "{r:#}"
    );
    let error = copy(&r, "azure")["lastError"].as_str().unwrap().to_string();
    assert!(!error.is_empty(), "{r:#}");
    let bound =
        Duration::from_secs_f64(local.len() as f64 / (6 << 20) as f64) + Duration::from_secs(45);
    assert!(
        took < bound,
        "the backup took {took:?} (bound {bound:?}): {error}"
    );
    eprintln!("azure killed mid-upload: pending after {took:?}: {error}");
    let file2 = r["fileName"].as_str().unwrap().to_string();
    let key2 = format!("prod/cp1/{file2}");
    az.restart();
    assert!(
        !az.names().contains(&key2),
        "a partial Azure object became visible"
    );
    let m = std::fs::read_to_string(node.path("metrics.prom")).unwrap();
    assert!(
        m.lines()
            .any(|l| l == "etcdguard_remote_pending{destination=\"azure\"} 1"),
        "{m}"
    );

    // The daemon's start-up tick retries it from the local file.
    let mut daemon = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let within = Duration::from_secs(60);
    let mut r = serde_json::Value::Null;
    let retried = poll_until(within, Duration::from_millis(200), || {
        r = node
            .records()
            .into_iter()
            .find(|r| r["fileName"] == file2.as_str())
            .unwrap();
        (copy(&r, "azure")["state"] == "uploaded").then_some(())
    });
    assert!(retried.is_some(), "not retried in {within:?}: {r:#}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    let local2 = std::fs::read(node.snapshot_dir().join(&file2)).unwrap();
    assert_eq!(sha256(&az.blob(&key2)), sha256(&local2));
    assert!(az.names().contains(&format!("{key2}.json")));
    // The others were uploaded once, in the backup's pass.
    assert_eq!(sha256(&gcs.object(&key2)), sha256(&local2));
    assert_eq!(remote_state(&node.last_record()), "uploaded");
}

#[test]
fn an_fs_destination_refuses_a_missing_read_only_or_full_mount_and_leaves_nothing_partial() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_mib("fs", 6);
    let plain = tempfile::tempdir().unwrap();
    let mount_point = plain.path().join("backups");
    std::fs::create_dir(&mount_point).unwrap();

    // `refused`: the pre-flight refuses it too (a full mount still takes its tiny probe).
    let attempt = |node: &Node, needle: &str, refused: bool| {
        let out = node.snapshot();
        // The local copy is the backup: it is taken whatever the destination says.
        assert!(out.status.success(), "{}", stderr(&out));
        let r = node.last_record();
        assert_eq!(r["result"], "Success");
        let c = copy(&r, "nfs");
        assert_eq!(c["state"], "pending", "{r:#}");
        let e = c["lastError"].as_str().unwrap();
        assert!(e.contains(needle), "wanted {needle:?}: {e}");
        if refused {
            let check = node.run(&["config", "check", "--remote"]);
            assert_eq!(check.status.code(), Some(78), "{}", stderr(&check));
            assert!(
                stderr(&check).contains("destination.nfs"),
                "{}",
                stderr(&check)
            );
        }
        e.to_string()
    };

    // Nothing mounted there: refused, and nothing written into the directory beneath.
    node.add_destination(&fs_destination(&mount_point));
    let e = attempt(&node, "is not a mount point", true);
    assert!(std::fs::read_dir(&mount_point).unwrap().next().is_none());
    eprintln!("missing mount: {e}");

    // The directory itself missing.
    node.clear_destinations();
    node.add_destination(&fs_destination(&plain.path().join("gone")));
    eprintln!("missing dir: {}", attempt(&node, "does not exist", true));

    // Mounted read-only.
    let ro = Tmpfs::new("64m");
    let remount = |opt: &str| {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(ro.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    remount("ro");
    node.clear_destinations();
    node.add_destination(&fs_destination(ro.path()));
    eprintln!("read-only: {}", attempt(&node, "mounted read-only", true));
    remount("rw");

    // Full: a 2 MiB mount for a 6 MiB snapshot. The write fails, the partial file goes.
    let full = Tmpfs::new("2m");
    node.clear_destinations();
    node.add_destination(&fs_destination(full.path()));
    let e = attempt(&node, "No space left", false);
    eprintln!("full: {e}");
    let node_dir = full.path().join("prod/cp1");
    assert_eq!(
        crate::util::list_dir(&node_dir),
        Vec::<String>::new(),
        "something partial was left"
    );

    // Room again: the next pass completes what waited (from the local files).
    node.clear_destinations();
    node.add_destination(&fs_destination(ro.path()));
    let out = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "snapshot"])
        .env("ETCDGUARD_TEST_CLOCK_OFFSET_MS", "7200000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let records = node.records();
    let waited: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["result"] == "Success")
        .collect();
    assert_eq!(waited.len(), 5);
    for r in waited {
        assert_eq!(copy(r, "nfs")["state"], "uploaded", "{r:#}");
    }
}

/// S3 Object Lock on moto: each copy is uploaded with Content-MD5 and given its retention;
/// the server refuses to delete it; retention keeps it (and says until when) until the lock is
/// over, then deletes it.
#[test]
fn object_lock_keeps_every_copy_until_its_retention_ends_then_retention_deletes_it() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("lock", 300);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::moto(dir.path(), None, "plain");
    s3.boto("s3.create_bucket(Bucket='locked', ObjectLockEnabledForBucket=True)");
    use_remote(&mut node, &s3, "locked", SECRET_KEY);
    node.set("remote_storage", "object_lock_mode", "\"GOVERNANCE\"");
    node.set("remote_storage", "object_lock_period", "\"20s\"");
    node.set("remote_storage", "keep", "1");
    node.set("remote_storage", "min_keep", "1");
    let mut files = Vec::new();
    for _ in 0..3 {
        let out = node.snapshot();
        assert!(out.status.success(), "{}", stderr(&out));
        let r = node.last_record();
        assert_eq!(remote_state(&r), "uploaded", "{r:#}");
        assert!(r["remote"]["lockedUntil"].is_string(), "{r:#}");
        files.push(r["fileName"].as_str().unwrap().to_string());
    }
    let keys: Vec<String> = files.iter().map(|f| format!("prod/cp1/{f}")).collect();
    // Every copy carries its retention on the server; retention kept all three.
    for k in &keys {
        let out = s3.boto(&format!(
            "h = s3.head_object(Bucket='locked', Key='{k}')\n\
             out = (h['ObjectLockMode'] + ' ' + h['ObjectLockRetainUntilDate'].isoformat()).encode()"
        ));
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.starts_with("GOVERNANCE 20"), "{k}: {text}");
    }
    let listed = s3.keys("locked");
    for k in &keys {
        assert!(listed.contains(k), "{k} went: {listed:?}");
    }
    // The server itself refuses to delete a locked version, whoever asks.
    let refused = s3.boto(&format!(
        "v = s3.head_object(Bucket='locked', Key='{}')['VersionId']\n\
         try:\n    s3.delete_object(Bucket='locked', Key='{}', VersionId=v)\n    out = b'deleted'\n\
         except Exception as e:\n    out = str(e).encode()",
        keys[0], keys[0]
    ));
    let refused = String::from_utf8_lossy(&refused).to_string();
    assert!(refused.contains("AccessDenied"), "{refused}");
    // The dry run says what waits for its lock, and until when.
    let out = node.run(&["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for f in &files[..2] {
        let line = text
            .lines()
            .find(|l| l.contains(f.as_str()))
            .unwrap_or_else(|| panic!("{f} not in:\n{text}"));
        assert!(
            line.starts_with("remote: keeps s3://locked/")
                && line.contains("under Object Lock until"),
            "{line}"
        );
    }
    // Once the locks are over, retention deletes what its rule selects.
    let until = node.records()[1]["remote"]["lockedUntil"]
        .as_str()
        .unwrap()
        .to_string();
    let until = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
    let wait = (until.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    std::thread::sleep(wait + Duration::from_secs(2));
    let out = node.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<String> = s3
        .keys("locked")
        .into_iter()
        .filter(|k| !k.ends_with(".json"))
        .collect();
    assert_eq!(listed, [keys[2].clone()], "{}", stdout(&out));
}

/// A copy that reached a destination which never replaces an object (an fs mount: no-replace
/// rename; GCS: create-only uploads), but whose record or sidecar did not follow (here: the
/// run killed right after the uploads completed), is adopted by the next run once it reads
/// back as the snapshot, not uploaded again (which could never succeed there).
#[test]
fn a_copy_already_at_a_create_only_destination_is_adopted_not_uploaded_again() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("adopt", 300);
    let nfs = Tmpfs::new("64m");
    node.add_destination(&fs_destination(nfs.path()));
    let mut all = vec!["--config", node.config.to_str().unwrap(), "snapshot"];
    let out = crate::util::etcdguard_cmd(&all)
        .env("ETCDGUARD_TEST_CRASH_AFTER", "backup:uploaded")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
    let dir = nfs.path().join("prod/cp1");
    let there = crate::util::list_dir(&dir);
    assert_eq!(there.len(), 1, "the object, no sidecar: {there:?}");
    let object = dir.join(&there[0]);
    let bytes = std::fs::read(&object).unwrap();

    all.truncate(3);
    let out = crate::util::etcdguard_cmd(&all).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let adopted = node
        .records()
        .into_iter()
        .find(|r| r["trigger"] == "adopted")
        .expect("the killed run's snapshot adopted");
    let c = copy(&adopted, "nfs");
    assert_eq!(c["state"], "uploaded", "{adopted:#}");
    assert!(
        c["location"].as_str().unwrap().ends_with(&there[0]),
        "{c:#}"
    );
    assert_eq!(
        std::fs::read(&object).unwrap(),
        bytes,
        "the object was not replaced"
    );
    assert!(
        dir.join(format!("{}.json", there[0])).is_file(),
        "its sidecar"
    );
    assert_eq!(
        std::fs::read(node.snapshot_dir().join(&there[0])).unwrap(),
        bytes
    );
}
