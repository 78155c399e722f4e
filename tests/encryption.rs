//! Encrypted, compressed remote copies (`[encryption]`): against a real S3 server (s3s-fs) and a
//! real etcd, opened by the standard tools (Debian's `age` and `zstd`), restored by upstream
//! `etcdutl`; wrong, missing and bad keys; tampered and truncated objects; fail-closed config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sha2::Digest;

use crate::remote::{remote_state, run_verbose, s3s_object, use_remote, BUCKET};
use crate::util::node::Node;
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::schema;
use crate::util::{
    assert_stderr_has, etcd_binary, etcdguard, etcdguard_cmd, list_dir, restore_datadir_args,
    stderr, stdout, system_bin, wait_until, NEWEST, PEER_URL,
};

/// An age key pair made by `age-keygen`: (identity file, recipient).
pub(crate) fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new(system_bin("age-keygen", "age"))
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&key).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    (key, recipient)
}

/// An ssh-ed25519 key pair made by `ssh-keygen`: (private key file, public key line).
fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let out = Command::new(system_bin("ssh-keygen", "openssh-client"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// `age -d -i IDENTITY OBJECT | zstd -d > OUT` with the standard tools.
fn age_zstd_decrypt(identity: &Path, object: &Path, out: &Path) {
    let age = system_bin("age", "age");
    let zstd = system_bin("zstd", "zstd");
    let r = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' -d -i '{}' '{}' | '{}' -d -q -o '{}'",
            age.display(),
            identity.display(),
            object.display(),
            zstd.display(),
            out.display()
        ))
        .output()
        .unwrap();
    assert!(r.status.success(), "age | zstd: {}", stderr(&r));
}

fn etcdutl_restore(snapshot: &Path, data_dir: &Path) -> Output {
    Command::new(etcd_binary(NEWEST, "etcdutl"))
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// Runs the daemon until it has retried the newest backup's pending upload (it retries every
/// pending one at start-up).
fn retry_with_daemon(node: &Node) {
    let mut daemon = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the retried upload",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || remote_state(&node.last_record()) == "uploaded",
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// `restore-datadir` of the sealed `snapshot`, opened with `identity`, into `data_dir`.
fn restore_datadir_with(snapshot: &Path, identity: &Path, data_dir: &Path) -> Output {
    let identity = ["--identity", identity.to_str().unwrap()];
    etcdguard(&restore_datadir_args(
        snapshot, data_dir, "cp1", PEER_URL, "t", &identity,
    ))
}

/// No key material of `files` appears in `out` (stdout and stderr).
fn assert_no_key_material(out: &Output, files: &[&Path]) {
    let all = format!("{}{}", stdout(out), stderr(out));
    assert!(
        !all.contains("AGE-SECRET-KEY"),
        "an age identity was printed"
    );
    assert!(
        !all.contains("PRIVATE KEY"),
        "an SSH private key was printed"
    );
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let line = line.trim();
            if line.len() > 20 && !line.starts_with('#') && !line.starts_with("-----") {
                assert!(
                    !all.contains(line),
                    "key material of {} printed",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn encrypted_remote_copy_opens_with_age_and_zstd_and_restores_with_etcdutl() {
    let mut node = Node::start(NEWEST, "cp1");
    // Larger than two parts, so the upload is multipart even compressed.
    node.etcd.put_keys("pods", 6000);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let (age_id, age_r) = age_key(dir.path(), "key.txt");
    let (ssh_id, ssh_pub) = ssh_key(dir.path());
    node.set(
        "encryption",
        "recipients",
        &format!("[{age_r:?}, {ssh_pub:?}]"),
    );

    let check = node.run(&["config", "check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains(&age_r), "{}", stdout(&check));

    let out = run_verbose(&node, &["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("TRACE"), "trace logging on");
    assert_no_key_material(&out, &[&age_id, &ssh_id]);
    let rec = node.last_record();
    assert_eq!(remote_state(&rec), "uploaded", "{rec:#}");
    let file = rec["fileName"].as_str().unwrap();
    let key = format!("prod/cp1/{file}.zst.age");
    assert_eq!(rec["remote"]["location"], format!("s3://{BUCKET}/{key}"));
    let local = std::fs::read(node.snapshot_dir().join(file)).unwrap();
    let object_path = s3s_object(&s3, &key);
    let object = std::fs::read(&object_path).unwrap();

    // Not a bbolt file: age's header, no bbolt magic anywhere near the start.
    assert!(object.starts_with(b"age-encryption.org/v1\n"));
    let bbolt_magic = 0xED0C_DAEDu32.to_le_bytes();
    assert!(!object[..4096].windows(4).any(|w| w == bbolt_magic));
    assert!(
        local[16..20] == bbolt_magic,
        "the local copy is a plain bbolt file"
    );
    // Kubernetes-like values compress.
    assert!(
        object.len() < local.len(),
        "{} vs {}",
        object.len(),
        local.len()
    );

    // The record and the sidecar say how it was sealed and what the object is.
    let sealed = &rec["remote"]["sealed"];
    assert_eq!(sealed["encryption"], "age");
    assert_eq!(sealed["compression"], "zstd");
    assert_eq!(sealed["compressionLevel"], 3);
    assert_eq!(sealed["recipients"][0], age_r.as_str());
    let ssh_fp = sealed["recipients"][1].as_str().unwrap();
    let keygen = Command::new(system_bin("ssh-keygen", "openssh-client"))
        .arg("-lf")
        .arg(ssh_id.with_extension("pub"))
        .output()
        .unwrap();
    let fp = stdout(&keygen)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        ssh_fp,
        format!("ssh-ed25519 {fp}"),
        "as ssh-keygen -l prints it"
    );
    assert_eq!(sealed["objectSha256"], sha256(&object).as_str());
    assert_eq!(sealed["objectSizeBytes"], object.len() as u64);
    assert_eq!(rec["sha256"], sha256(&local).as_str());
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3s_object(&s3, &format!("{key}.json"))).unwrap())
            .unwrap();
    assert_eq!(sidecar["remote"]["sealed"], *sealed);
    assert_eq!(sidecar["sha256"], rec["sha256"]);
    let listed = node.run(&["records", "--remote", "--output", "json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    schema::assert_valid("records-remote.v1", &stdout(&listed));
    schema::assert_valid("records.v1", &stdout(&node.run(&["records", "-o", "json"])));

    // The standard tools open it, with either identity, to the local snapshot's bytes, and
    // upstream etcdutl restores that.
    for id in [&age_id, &ssh_id] {
        let plain = dir.path().join("plain.db");
        let _ = std::fs::remove_file(&plain);
        age_zstd_decrypt(id, &object_path, &plain);
        assert!(std::fs::read(&plain).unwrap() == local, "{}", id.display());
    }
    let up = etcdutl_restore(&dir.path().join("plain.db"), &dir.path().join("restored"));
    assert!(up.status.success(), "{}", stderr(&up));

    // etcdguard opens it too: decrypt of the remote key (downloaded, checked against the
    // sidecar), verify of the object file, at trace level without key material.
    let out_db = dir.path().join("decrypted.db");
    let d = run_verbose(
        &node,
        &[
            "decrypt",
            &key,
            "--identity",
            ssh_id.to_str().unwrap(),
            "--output",
            out_db.to_str().unwrap(),
        ],
    );
    assert!(d.status.success(), "{}", stderr(&d));
    assert_no_key_material(&d, &[&age_id, &ssh_id]);
    assert!(std::fs::read(&out_db).unwrap() == local);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out_db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v = etcdguard(&[
        "verify",
        object_path.to_str().unwrap(),
        "--identity",
        age_id.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(v.status.success(), "{}", stderr(&v));
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(report["sha256"], rec["sha256"]);
    assert_eq!(report["revision"], rec["revision"]);
}

#[test]
fn wrong_or_missing_identity_and_tampered_objects_fail_before_anything_is_written() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 500);
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let (key, r) = age_key(dir.path(), "key.txt");
    let (other, _) = age_key(dir.path(), "other.txt");
    node.set("encryption", "recipients", &format!("[{r:?}]"));
    node.set("encryption", "compression", "\"none\"");

    // A copy that could not be made with the backup is retried from the local file, sealed
    // the same way.
    s3.stop();
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = node.last_record()["fileName"].as_str().unwrap().to_string();
    assert_eq!(remote_state(&node.last_record()), "pending");
    s3.restart();
    retry_with_daemon(&node);
    let rec = node.last_record();
    let key_name = format!("prod/cp1/{file}.age");
    assert_eq!(
        rec["remote"]["location"],
        format!("s3://{BUCKET}/{key_name}")
    );
    assert_eq!(rec["remote"]["sealed"]["compression"], "none", "{rec:#}");
    let object = std::fs::read(s3s_object(&s3, &key_name)).unwrap();
    let local = std::fs::read(node.snapshot_dir().join(&file)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let obj = work.join(format!("{file}.age"));
    std::fs::write(&obj, &object).unwrap();
    let plain = dir.path().join("plain.db");
    let age = Command::new(system_bin("age", "age"))
        .args(["-d", "-i"])
        .arg(&key)
        .arg("-o")
        .arg(&plain)
        .arg(&obj)
        .output()
        .unwrap();
    assert!(age.status.success(), "{}", stderr(&age));
    assert!(std::fs::read(&plain).unwrap() == local);

    let decrypt = |src: &Path, id: &Path| {
        let out = work.join("out.db");
        let o = etcdguard(&[
            "decrypt",
            src.to_str().unwrap(),
            "--identity",
            id.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(!out.exists(), "nothing published on failure");
        o
    };
    let before = list_dir(&work);
    // The wrong identity: one clear error, exit 1.
    let o = decrypt(&obj, &other);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_stderr_has(&o, "no identity in");
    assert_stderr_has(&o, "other.txt");
    // No identity: verify says which flag, exit 2.
    let o = etcdguard(&["verify", obj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_stderr_has(&o, "--identity FILE");
    // Not an identity file.
    let o = decrypt(&obj, &node.config);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_stderr_has(&o, "not an age identity file");
    // Truncated, and one byte flipped in the middle: age's authentication fails.
    let truncated = work.join("truncated.db.age");
    std::fs::write(&truncated, &object[..object.len() - 1000]).unwrap();
    let mut flipped = object.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    let tampered = work.join("tampered.db.age");
    std::fs::write(&tampered, &flipped).unwrap();
    for bad in [&truncated, &tampered] {
        let o = decrypt(bad, &key);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_stderr_has(&o, "truncated or was altered");
        let data_dir = work.join("restored");
        let o = restore_datadir_with(bad, &key, &data_dir);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!data_dir.exists());
    }
    let mut after = list_dir(&work);
    after.retain(|n| n != "truncated.db.age" && n != "tampered.db.age");
    assert_eq!(after, before, "no partial file left behind");
    // A good one into a data dir a real etcd version accepts (the engine tests start those).
    let data_dir = work.join("restored");
    let o = restore_datadir_with(&obj, &key, &data_dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data_dir.join("member/snap/db").is_file());
}

#[test]
fn a_bad_recipient_is_a_configuration_error_and_nothing_is_uploaded() {
    let mut node = Node::start(NEWEST, "cp1");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let (key, r) = age_key(dir.path(), "key.txt");
    let secret = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let recipients = dir.path().join("recipients.txt");
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "a typo",
            format!("[{:?}]", &r[..r.len() - 1]),
            None,
            "not a valid age recipient",
        ),
        (
            "a private key",
            format!("[{secret:?}]"),
            None,
            "age-keygen -y",
        ),
        ("an empty list", "[]".into(), None, "no recipients"),
        (
            "a bad line in the file",
            "[]".into(),
            Some(format!("# ops team\n{r}\nage1nope\n")),
            "recipients.txt:3: not a valid age recipient",
        ),
        (
            "a missing file",
            "[]".into(),
            None,
            "with [encryption] nothing leaves the node",
        ),
    ];
    for (what, inline, file, needle) in cases {
        node.set("encryption", "recipients", &inline);
        let _ = std::fs::remove_file(&recipients);
        if let Some(text) = &file {
            std::fs::write(&recipients, text).unwrap();
        }
        if what.contains("file") {
            node.set_path("encryption", "recipients_file", &recipients);
        } else {
            node.unset("encryption", "recipients_file");
        }
        for args in [&["config", "check"][..], &["snapshot"][..]] {
            let o = node.run(args);
            assert_eq!(o.status.code(), Some(78), "{what}: {}", stderr(&o));
            assert_stderr_has(&o, needle);
            assert_stderr_has(&o, "encryption.recipients");
            assert_stderr_has(&o, "etcdguard.toml:");
            assert!(
                !stderr(&o).contains(&secret[16..]),
                "{what}: the key was echoed"
            );
        }
    }
    assert!(node.snapshot_files().is_empty(), "no backup was taken");
    assert!(
        s3.keys(BUCKET).is_empty(),
        "nothing uploaded: {:?}",
        s3.keys(BUCKET)
    );
}

#[test]
fn encrypt_local_publishes_no_plain_copy_and_retention_and_retries_use_the_sealed_file() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 300);
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let (key, r) = age_key(dir.path(), "key.txt");
    node.set("encryption", "recipients", &format!("[{r:?}]"));
    node.set("encryption", "encrypt_local", "true");
    node.set("local_storage", "keep", "1");
    node.set("local_storage", "min_keep", "1");
    s3.stop();
    for _ in 0..2 {
        let out = node.snapshot();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Only the newest backup is kept, sealed; no plain file and no temp file anywhere.
    let files = node.snapshot_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".db.zst.age"), "{files:?}");
    let rec = node.last_record();
    let local_path = PathBuf::from(rec["local"]["path"].as_str().unwrap());
    assert_eq!(local_path, node.snapshot_dir().join(&files[0]));
    let sealed_local = std::fs::read(&local_path).unwrap();
    assert!(sealed_local.starts_with(b"age-encryption.org/v1\n"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&local_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        rec["local"]["sealed"]["objectSha256"],
        sha256(&sealed_local).as_str()
    );
    assert_eq!(
        node.records()[0]["local"]["state"],
        "deleted",
        "retention deleted the first"
    );
    schema::assert_valid("records.v1", &stdout(&node.run(&["records", "-o", "json"])));

    // The record id opens with the identity, to the snapshot its record describes.
    let out_db = dir.path().join("opened.db");
    let id = rec["id"].as_str().unwrap();
    let d = node.run(&[
        "decrypt",
        id,
        "--identity",
        key.to_str().unwrap(),
        "-o",
        out_db.to_str().unwrap(),
    ]);
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(
        rec["sha256"],
        sha256(&std::fs::read(&out_db).unwrap()).as_str()
    );
    let up = etcdutl_restore(&out_db, &dir.path().join("restored"));
    assert!(up.status.success(), "{}", stderr(&up));

    // The pending copy is retried from the sealed local file, uploaded as it is.
    s3.restart();
    retry_with_daemon(&node);
    let rec = node.last_record();
    let object = std::fs::read(s3s_object(&s3, &format!("prod/cp1/{}", files[0]))).unwrap();
    assert!(
        object == sealed_local,
        "the object is the sealed local file"
    );
    assert_eq!(rec["remote"]["sealed"], rec["local"]["sealed"], "{rec:#}");
}
