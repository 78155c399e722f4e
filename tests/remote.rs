//! Remote copies against real S3 servers (s3s-fs with SigV4 checks; moto over HTTPS with a
//! CA of ours, and for listing open multipart uploads) and a real etcd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::node::Node;
use crate::util::proxy::{Faults, Proxy};
use crate::util::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use crate::util::schema;
use crate::util::{
    assert_stderr_has, etcd_binary, etcdguard_cmd, list_dir, stderr, stdout, wait_until, NEWEST,
};

pub(crate) const BUCKET: &str = "etcd-backups";

pub(crate) fn write_credentials(dir: &Path, secret: &str) -> PathBuf {
    let p = dir.join("s3-credentials");
    std::fs::write(
        &p,
        format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Points `node` at `server`'s `bucket` with the test credentials.
pub(crate) fn use_remote(node: &mut Node, server: &S3Server, bucket: &str, secret: &str) {
    let creds = write_credentials(node.root.path(), secret);
    node.set("remote_storage", "bucket", &format!("{bucket:?}"));
    node.set(
        "remote_storage",
        "endpoint",
        &format!("{:?}", server.endpoint),
    );
    node.set("remote_storage", "region", "\"us-east-1\"");
    node.set("remote_storage", "prefix", "\"prod/\"");
    node.set("remote_storage", "force_path_style", "true");
    node.set(
        "remote_storage",
        "credentials_file",
        &format!("{:?}", creds.display().to_string()),
    );
    node.set("remote_storage", "part_size", "\"5MiB\"");
    node.set("remote_storage", "stall_timeout", "\"3s\"");
    node.set("remote_storage", "timeout", "\"60s\"");
}

/// Runs etcdguard for `node` with the most verbose logging: the secret key must never show
/// (the request signer's credential providers print it in their debug lines; logging caps
/// them).
pub(crate) fn run_verbose(node: &Node, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--config", node.config.to_str().unwrap()];
    all.extend_from_slice(args);
    etcdguard_cmd(&all)
        .env(
            "ETCDGUARD_LOG",
            "trace,reqsign_core=trace,reqsign_aws_v4=trace,h2=info,hyper=info,tonic=info,tower=info",
        )
        .output()
        .unwrap()
}

/// The object's path inside an s3s-fs root.
pub(crate) fn s3s_object(server: &S3Server, key: &str) -> PathBuf {
    server.root.as_ref().unwrap().join(BUCKET).join(key)
}

pub(crate) fn remote_state(rec: &serde_json::Value) -> String {
    rec["remote"]["state"].as_str().unwrap_or("").to_string()
}

/// Takes a backup that succeeds locally while its remote copy stays pending with an error
/// containing `needle`; its record.
fn snapshot_with_remote_pending(node: &Node, needle: &str) -> serde_json::Value {
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let rec = node.last_record();
    assert_eq!(remote_state(&rec), "pending", "{rec:#}");
    let error = rec["remote"]["lastError"].as_str().unwrap();
    assert!(error.contains(needle), "{rec:#}");
    rec
}

#[test]
fn backup_with_remote_copy_is_identical_and_restorable_by_etcdutl() {
    let mut node = Node::start(NEWEST, "cp1");
    // Larger than two parts, so the upload is multipart.
    node.etcd.put_keys("pods", 6000);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);

    let check = run_verbose(&node, &["config", "check", "--remote"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert_stderr_has(&check, "exists and is writable");
    assert!(!stdout(&check).contains(SECRET_KEY) && !stderr(&check).contains(SECRET_KEY));

    let out = run_verbose(&node, &["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DEBUG") && !stderr(&out).contains(SECRET_KEY),
        "debug logging on, secret absent"
    );
    assert!(
        stdout(&out).contains("remote copy s3://etcd-backups/prod/cp1/"),
        "{}",
        stdout(&out)
    );
    let rec = node.last_record();
    assert_eq!(remote_state(&rec), "uploaded", "{rec:#}");
    let file = rec["fileName"].as_str().unwrap();
    let key = format!("prod/cp1/{file}");
    assert_eq!(rec["remote"]["location"], format!("s3://{BUCKET}/{key}"));
    let local = std::fs::read(node.snapshot_dir().join(file)).unwrap();
    assert!(
        local.len() > 5 << 20,
        "want a multipart upload, got {} bytes",
        local.len()
    );
    let object = std::fs::read(s3s_object(&s3, &key)).unwrap();
    assert!(object == local, "the object differs from the local file");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3s_object(&s3, &format!("{key}.json"))).unwrap())
            .unwrap();
    assert_eq!(sidecar["sha256"], rec["sha256"]);
    // The versions a restore needs travel with the object.
    let data = format!("{NEWEST}.0");
    assert_eq!(sidecar["snapshotVersion"], data.as_str(), "{sidecar:#}");
    assert_eq!(sidecar["storageVersion"], data.as_str(), "{sidecar:#}");
    assert!(sidecar["etcdVersion"].as_str().unwrap().starts_with(NEWEST));
    // The multipart ETag was computed from the parts and matched the server's.
    let etag = rec["remote"]["etag"].as_str().unwrap_or("");
    assert!(etag.trim_matches('"').ends_with("-3"), "{rec:#}");
    assert_eq!(sidecar["remote"]["state"], "uploaded");

    // The downloaded object restores with the upstream tool.
    let restored = dir.path().join("restored");
    let obj = dir.path().join("downloaded.db");
    std::fs::write(&obj, &object).unwrap();
    let up = Command::new(etcd_binary(NEWEST, "etcdutl"))
        .args(["snapshot", "restore", obj.to_str().unwrap(), "--data-dir"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", stderr(&up));

    // records --remote lists it from the sidecar, known locally.
    let out = node.run(&["records", "--remote", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    schema::assert_valid("records-remote.v1", &stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["node"], "cp1");
    assert_eq!(v[0]["knownLocally"], true);
    assert_eq!(v[0]["record"]["fileName"], file);
    // The local records with their remote copies fit their schema too.
    let local = node.run(&["records", "--output", "json"]);
    schema::assert_valid("records.v1", &stdout(&local));
}

#[test]
fn moto_over_https_with_a_ca_bundle_and_clear_tls_errors() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 300);
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = node.pki.issue(
        "s3",
        "s3.test",
        &["127.0.0.1", "localhost"],
        true,
        false,
        30,
    );
    let s3 = S3Server::moto(dir.path(), Some((crt, key)), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);

    // Not trusted without the CA: one clear error, the local backup still succeeds.
    let check = node.run(&["config", "check", "--remote"]);
    assert_eq!(check.status.code(), Some(78), "{}", stderr(&check));
    assert_stderr_has(&check, "is not trusted");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let rec = node.last_record();
    assert_eq!(remote_state(&rec), "pending");
    assert!(
        rec["remote"]["lastError"]
            .as_str()
            .unwrap()
            .contains("is not trusted"),
        "{rec:#}"
    );

    // With the CA bundle: uploaded, byte-identical.
    let ca = node.pki.path("ca.crt");
    node.set(
        "remote_storage",
        "ca_bundle",
        &format!("{:?}", ca.display().to_string()),
    );
    let check = run_verbose(&node, &["config", "check", "--remote"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        !stderr(&check).contains(SECRET_KEY),
        "secret in the trace log"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let rec = node.last_record();
    assert_eq!(remote_state(&rec), "uploaded", "{rec:#}");
    let file = rec["fileName"].as_str().unwrap();
    let object = s3.object(BUCKET, &format!("prod/cp1/{file}"));
    assert!(object == std::fs::read(node.snapshot_dir().join(file)).unwrap());
    assert!(
        stdout(&out).contains("remote copy s3://"),
        "{}",
        stdout(&out)
    );

    // insecure_skip_tls_verify works without the CA and says so loudly.
    node.unset("remote_storage", "ca_bundle");
    node.set("remote_storage", "insecure_skip_tls_verify", "true");
    std::thread::sleep(Duration::from_millis(1100));
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, "NOT verified");
    assert_eq!(remote_state(&node.last_record()), "uploaded");
}

#[test]
fn wrong_key_and_unknown_bucket_give_one_clear_error_and_the_local_backup_succeeds() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 100);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);

    use_remote(&mut node, &s3, BUCKET, "not-the-secret");
    let check = node.run(&["config", "check", "--remote"]);
    assert_eq!(check.status.code(), Some(78), "{}", stderr(&check));
    let err = stderr(&check);
    assert!(
        err.contains("secret key for access key AKIA…T01 is wrong"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"), "{err}");
    let rec = snapshot_with_remote_pending(&node, "is wrong");
    assert!(node
        .snapshot_dir()
        .join(rec["fileName"].as_str().unwrap())
        .exists());

    // s3s-fs creates buckets on demand; moto answers NoSuchBucket like AWS.
    let moto = S3Server::moto(dir.path(), None, BUCKET);
    use_remote(&mut node, &moto, "no-such-bucket", SECRET_KEY);
    let check = node.run(&["config", "check", "--remote"]);
    assert_eq!(check.status.code(), Some(78));
    assert_stderr_has(
        &check,
        &format!("bucket no-such-bucket does not exist at {}", moto.endpoint),
    );
    snapshot_with_remote_pending(&node, "bucket no-such-bucket does not exist");

    // A credentials file others can read is refused, naming the fix.
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let creds = node.root.path().join("s3-credentials");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = node.run(&["config", "check"]);
    assert_eq!(check.status.code(), Some(78));
    assert_stderr_has(&check, "chmod 0600");
}

/// How often the waits look.
const EVERY: Duration = Duration::from_millis(100);

#[test]
fn s3_stopped_or_killed_mid_upload_leaves_no_object_and_the_retry_uploads_it() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 2500);
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    // A slow etcd link, so the upload is in flight long enough to stop the server under it.
    let slow = Proxy::start(
        node.etcd.client_port(),
        Faults::slow(1 << 20, Duration::from_millis(20)),
    );
    node.set("etcd", "endpoint", &format!("{:?}", slow.url()));

    let t0 = Instant::now();
    let mark = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    for (round, how) in ["SIGSTOP", "SIGKILL"].iter().enumerate() {
        mark(&format!("{how}: snapshot starts"));
        let child = node.run_spawn(&["snapshot"]);
        let before = slow
            .downstream_bytes
            .load(std::sync::atomic::Ordering::SeqCst);
        wait_until(
            "the stream to start",
            Duration::from_secs(20),
            EVERY,
            || {
                slow.downstream_bytes
                    .load(std::sync::atomic::Ordering::SeqCst)
                    > before + (2 << 20)
            },
        );
        match *how {
            "SIGSTOP" => s3.signal(nix::sys::signal::Signal::SIGSTOP),
            _ => s3.kill(),
        }
        mark("server interrupted");
        let out = child.wait_with_output().unwrap();
        mark("snapshot done");
        eprintln!("{}", stderr(&out));
        assert!(out.status.success(), "{how}: {}", stderr(&out));
        let rec = node.last_record();
        assert_eq!(remote_state(&rec), "pending", "{how}: {rec:#}");
        let file = rec["fileName"].as_str().unwrap().to_string();
        let key = format!("prod/cp1/{file}");
        match *how {
            "SIGSTOP" => s3.signal(nix::sys::signal::Signal::SIGCONT),
            _ => s3.restart(),
        }
        // No object (and no partial one) became visible.
        assert!(
            !s3s_object(&s3, &key).exists(),
            "{how}: object visible after a failed upload"
        );

        // The daemon retries pending uploads at start-up.
        let mut daemon = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the retried upload", Duration::from_secs(60), EVERY, || {
            node.records()
                .iter()
                .find(|r| r["fileName"] == file.as_str())
                .is_some_and(|r| remote_state(r) == "uploaded")
        });
        mark("retried");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(daemon.wait().unwrap().success());
        mark("daemon stopped");
        let local = std::fs::read(node.snapshot_dir().join(&file)).unwrap();
        assert!(
            std::fs::read(s3s_object(&s3, &key)).unwrap() == local,
            "round {round}"
        );
    }
}

#[test]
fn a_stream_cut_by_etcd_aborts_the_multipart_upload() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 6000);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::moto(dir.path(), None, BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let cut = Proxy::start(node.etcd.client_port(), Faults::cut(8 << 20));
    node.set("etcd", "endpoint", &format!("{:?}", cut.url()));
    let out = node.snapshot();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(node.last_record()["result"], "Failed");
    assert!(s3.keys(BUCKET).is_empty(), "{:?}", s3.keys(BUCKET));
    assert_eq!(
        s3.open_multipart_uploads(BUCKET),
        0,
        "orphan multipart upload left"
    );
    assert!(list_dir(&node.snapshot_dir()).is_empty());
}

#[test]
fn backups_killed_mid_upload_leave_open_uploads_that_the_next_run_aborts() {
    let mut node = Node::start(NEWEST, "cp1");
    // About 20 MiB: opendal opens the multipart upload when the second 5 MiB part is ready.
    node.etcd.put_keys("pods", 12000);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::moto(dir.path(), None, BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    // Open uploads that are not this node's to abort: another node's, and a name etcdguard
    // never gives.
    s3.boto(&format!(
        "for k in ['prod/cp2/snapshot-etcd-20260101-000000-cp2.db', 'prod/cp1/notes.bin']:\n    \
         s3.create_multipart_upload(Bucket='{BUCKET}', Key=k)"
    ));
    let open_keys = || {
        let out = s3.boto(&format!(
            "r = s3.list_multipart_uploads(Bucket='{BUCKET}')\n\
             out = '\\n'.join(sorted(u['Key'] for u in r.get('Uploads', []))).encode()"
        ));
        let text = String::from_utf8(out).unwrap();
        text.lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(open_keys().len(), 2);
    // Slow enough that a kill lands mid-upload.
    node.set("etcd", "rate_limit", "\"2MiB/s\"");
    for kill in 1..=2 {
        let mut child = node.run_spawn(&["snapshot"]);
        wait_until("the upload to open", Duration::from_secs(30), EVERY, || {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("the backup ended before its upload opened: {status}\n{err}");
            }
            open_keys().len() == 2 + kill
        });
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let stale: Vec<String> = open_keys()
        .into_iter()
        .filter(|k| k.starts_with("prod/cp1/snapshot-"))
        .collect();
    assert_eq!(stale.len(), 2, "{stale:?}");

    node.unset("etcd", "rate_limit");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    for k in &stale {
        assert!(
            said.contains(&format!(
                "aborted a multipart upload left open by an interrupted backup: {k} (started at "
            )),
            "{said}"
        );
    }
    assert_eq!(
        open_keys(),
        [
            "prod/cp1/notes.bin",
            "prod/cp2/snapshot-etcd-20260101-000000-cp2.db"
        ]
    );
    assert_eq!(remote_state(&node.last_record()), "uploaded");
}

#[test]
fn remote_retention_touches_only_this_nodes_expired_objects_and_keeps_min_keep() {
    let mut node = Node::start(NEWEST, "cp1");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    node.set("remote_storage", "ttl", "\"1h\"");
    node.set("remote_storage", "min_keep", "2");
    // Old objects of this node and of another node, as a previous life would have left them.
    let put = |key: &str| {
        let p = s3s_object(&s3, key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"not ours to delete").unwrap();
    };
    for day in 1..=4 {
        for node in ["cp1", "cp2"] {
            put(&format!(
                "prod/{node}/snapshot-etcd-2026010{day}-000000-{node}.db"
            ));
            put(&format!(
                "prod/{node}/snapshot-etcd-2026010{day}-000000-{node}.db.json"
            ));
        }
    }
    put("prod/cp1/notes.txt");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let mine = list_dir(&s3_dir(&s3, "prod/cp1"));
    let theirs = list_dir(&s3_dir(&s3, "prod/cp2"));
    // Newest two of this node kept (the new one and 2026-01-04), older ones gone with sidecars.
    let rec = node.last_record();
    let new = rec["fileName"].as_str().unwrap();
    let mut want = vec![
        "notes.txt".to_string(),
        "snapshot-etcd-20260104-000000-cp1.db".into(),
        "snapshot-etcd-20260104-000000-cp1.db.json".into(),
        new.to_string(),
        format!("{new}.json"),
    ];
    want.sort();
    assert_eq!(mine, want);
    assert_eq!(
        theirs.len(),
        8,
        "another node's objects were touched: {theirs:?}"
    );
    assert!(stdout(&out).contains("remote retention deleted snapshot-etcd-20260101-000000-cp1.db"));
    // s3s-fs does not implement ListMultipartUploads: said, not failed.
    assert_stderr_has(&out, "this object store cannot list open multipart uploads");
}

fn s3_dir(s3: &S3Server, rel: &str) -> PathBuf {
    s3.root.as_ref().unwrap().join(BUCKET).join(rel)
}

/// "uploaded 257.3 MiB in 32.10 s (8.0 MiB/s), completed in 4.70 s" from a run's log: (MiB, seconds).
fn upload_line(log: &str) -> (f64, f64) {
    let line = log
        .lines()
        .find(|l| l.contains("uploaded ") && l.contains(" MiB in "))
        .unwrap_or_else(|| panic!("no upload line in: {log}"));
    let after = &line[line.find("uploaded ").unwrap() + "uploaded ".len()..];
    let mib: f64 = after.split(' ').next().unwrap().parse().unwrap();
    let secs = after.split(" MiB in ").nth(1).unwrap();
    let secs: f64 = secs.split(' ').next().unwrap().parse().unwrap();
    (mib, secs)
}

#[test]
fn a_rate_limited_upload_takes_the_time_its_limit_says() {
    let mut node = Node::start("3.7", "cp1");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    node.set("remote_storage", "timeout", "\"5m\"");
    node.set("remote_storage", "stall_timeout", "\"30s\"");
    // The paced pass slows the stream from etcd too: it needs more than the test's etcd.timeout.
    node.set("etcd", "timeout", "\"5m\"");
    node.etcd.put_mib("big", 48);
    // Unlimited first: how fast this machine uploads, so the limit below is well under it.
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let (mib, free) = upload_line(&stderr(&out));
    // bbolt's freelist makes the size vary run to run: the rate is measured on the size got.
    assert!(
        mib >= 40.0,
        "the database is {mib} MiB: too small to measure a rate on"
    );
    // The limit well under what this machine uploads unlimited (half of it, at most 2 MiB/s:
    // some 25 s for the copy), so what is measured is the limit, not the machine, busy or not.
    let free_rate = mib / free;
    let rate_kib = ((free_rate * 1024.0 / 2.0) as u64).min(2048);
    assert!(
        rate_kib >= 512,
        "unlimited uploads run at {free_rate:.1} MiB/s here: too slow to measure a limit on"
    );
    let rate = rate_kib as f64 / 1024.0;
    node.set(
        "remote_storage",
        "rate_limit",
        &format!("\"{rate_kib}KiB/s\""),
    );
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let (mib, took) = upload_line(&stderr(&out));
    let want = mib / rate;
    eprintln!(
        "{mib:.1} MiB: unlimited {free:.2} s, at {rate} MiB/s {took:.2} s (expected {want:.2} s)"
    );
    // The limit is a ceiling: never faster than it (5 % for the timer), and slower only by
    // what the machine itself costs (twice the unlimited upload's time, for a busy machine).
    assert!(
        took >= 0.95 * want,
        "{mib:.1} MiB at {rate} MiB/s took {took:.2} s: faster than the limit ({want:.2} s)"
    );
    assert!(
        took <= want + 2.0 * free + 2.0,
        "{mib:.1} MiB at {rate} MiB/s took {took:.2} s, expected about {want:.2} s (unlimited: \
         {free:.2} s)"
    );
    let rec = node.last_record();
    assert_eq!(remote_state(&rec), "uploaded", "{rec:#}");
    let name = rec["fileName"].as_str().unwrap();
    assert_eq!(
        std::fs::read(s3s_object(&s3, &format!("prod/cp1/{name}"))).unwrap(),
        std::fs::read(node.snapshot_dir().join(name)).unwrap()
    );
}

/// A bucket crowded with other clusters and long histories: `records --remote` lists only its
/// own prefix's node directories, page by page (a node with more keys than one listing page
/// holds), nothing deeper; `--node` only that node; `--limit` reads only the newest sidecars.
#[test]
fn records_remote_pages_through_its_own_prefix_only_and_reads_what_it_shows() {
    let mut node = Node::start(NEWEST, "cp1");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = node.last_record()["fileName"].as_str().unwrap().to_string();
    let real = std::fs::read(s3s_object(&s3, &format!("prod/cp1/{file}.json"))).unwrap();
    let real: serde_json::Value = serde_json::from_slice(&real).unwrap();
    let put = |key: &str, bytes: &[u8]| {
        let p = s3s_object(&s3, key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    };
    // 600 copies of cp2 (1200 keys: two pages), a minute apart on 2026-01-01.
    let copy = |prefix: &str, who: &str, minute: u32| {
        let name = format!(
            "snapshot-etcd-20260101-{:02}{:02}00-{who}.db",
            minute / 60,
            minute % 60
        );
        let mut r = real.clone();
        r["fileName"] = name.clone().into();
        r["backupTimestamp"] =
            format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60).into();
        put(&format!("{prefix}{who}/{name}"), b"object");
        put(
            &format!("{prefix}{who}/{name}.json"),
            &serde_json::to_vec(&r).unwrap(),
        );
    };
    for minute in 0..600 {
        copy("prod/", "cp2", minute);
    }
    // The oldest of cp2 does not parse: read (and said) only without a limit.
    put(
        "prod/cp2/snapshot-etcd-20251231-000000-cp2.db.json",
        b"{not json",
    );
    // Another cluster's copies, and a deeper key under this cluster: never listed.
    for minute in 0..5 {
        copy("other/", "cp1", minute);
        copy("prod/cp3/archive/", "cp3", minute);
    }
    let listed = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["records", "--remote", "--output", "json"];
        all.extend_from_slice(args);
        let out = node.run(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        schema::assert_valid("records-remote.v1", &stdout(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = listed(&[]);
    assert_eq!(all.len(), 601, "every copy of cp1 and cp2, nothing else");
    assert_eq!(all[0]["record"]["fileName"], file.as_str());
    assert_eq!(
        all[1]["record"]["fileName"],
        "snapshot-etcd-20260101-095900-cp2.db"
    );
    assert!(all
        .iter()
        .all(|e| e["key"].as_str().unwrap().starts_with("prod/cp")
            && !e["key"].as_str().unwrap().contains("archive")));
    let out = node.run(&["records", "--remote", "--output", "json"]);
    assert_stderr_has(&out, "sidecar does not parse");

    let two = listed(&["--node", "cp2", "--limit", "2"]);
    let names: Vec<&str> = two
        .iter()
        .map(|e| e["record"]["fileName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "snapshot-etcd-20260101-095900-cp2.db",
            "snapshot-etcd-20260101-095800-cp2.db"
        ]
    );
    assert_eq!(listed(&["--node", "cp2"]).len(), 600);
    let out = node.run(&["records", "--remote", "--limit", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("does not parse"),
        "a limit reads only the newest sidecars: {}",
        stderr(&out)
    );
    // --node needs --remote.
    assert!(!node.run(&["records", "--node", "cp2"]).status.success());
}
