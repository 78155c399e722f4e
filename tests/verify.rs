//! `etcdguard verify` on our snapshots, etcdctl-made snapshots, and damaged files.

use std::path::Path;

use crate::util::node::Node;
use crate::util::schema;
use crate::util::{etcdguard, etcdguard_cmd, stderr, stdout};

fn verify(file: &Path) -> std::process::Output {
    etcdguard(&["verify", file.to_str().unwrap()])
}

#[test]
fn verify_accepts_good_snapshots_and_rejects_damaged_ones() {
    let node = Node::start("3.5", "cp1");
    node.etcd.put_keys("v", 500);
    assert!(node.snapshot().status.success());
    let ours = node.snapshot_dir().join(&node.snapshot_files()[0]);

    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("etcdctl.db");
    let out = node
        .etcd
        .etcdctl(&["snapshot", "save", theirs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    for good in [&ours, &theirs] {
        let out = verify(good);
        assert!(out.status.success(), "{}: {}", good.display(), stderr(&out));
        assert!(stdout(&out).contains(": OK"), "{}", stdout(&out));
    }

    // JSON carries etcdutl's totalSize, which equals the db part of the file.
    let out = etcdguard(&["verify", ours.to_str().unwrap(), "--output", "json"]);
    assert!(out.status.success());
    schema::assert_valid("verify.v1", &stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = std::fs::metadata(&ours).unwrap().len();
    assert_eq!(v["sizeBytes"], size);
    assert_eq!(v["totalSize"], size - 32);
    assert_eq!(v["sha256"], node.last_record()["sha256"]);
    assert_eq!(v["trailer"], "ok");

    // --skip-hash-check is a structure-only status (like etcdutl's): it says the trailer was
    // not checked and reports no sha256 it did not compute, but the status fields are the same.
    let out = etcdguard(&[
        "verify",
        ours.to_str().unwrap(),
        "--output",
        "json",
        "--skip-hash-check",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    schema::assert_valid("verify.v1", &stdout(&out));
    let quick: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(quick["trailer"], "not checked");
    assert!(quick.get("sha256").is_none(), "{quick}");
    for field in ["hash", "revision", "totalKey", "totalSize"] {
        assert_eq!(quick[field], v[field], "{field}");
    }

    let bytes = std::fs::read(&ours).unwrap();
    let damaged = |name: &str, content: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let cases = [
        (
            damaged("flipped.db", &flipped),
            "is corrupt: its sha256 trailer says",
        ),
        (
            damaged("truncated.db", &bytes[..bytes.len() - 4096]),
            "is truncated: its database claims",
        ),
        (
            damaged("no-trailer.db", &bytes[..bytes.len() - 32]),
            "has no sha256 trailer",
        ),
        (
            damaged("cut-mid-page.db", &bytes[..bytes.len() - 1000]),
            "has no sha256 trailer",
        ),
        (damaged("empty.db", b""), "too small"),
        (dir.path().join("missing.db"), "No such file"),
    ];
    for (path, needle) in cases {
        let out = verify(&path);
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = stderr(&out);
        assert!(err.contains(needle), "{}: {err}", path.display());
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn verify_reads_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "this is = = not toml").unwrap();
    let missing = dir.path().join("x.db");
    let out = etcdguard_cmd(&["verify", missing.to_str().unwrap()])
        .env("ETCDGUARD_CONFIG", &bad)
        .output()
        .unwrap();
    // Fails on the missing file (exit 1), not on the config (exit 78).
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// Runs `etcdguard <args>` on an 80-column pseudo-terminal (util-linux `script`) and returns
/// what the terminal showed.
fn on_a_terminal(args: &[&str]) -> String {
    let script = Path::new("/usr/bin/script");
    assert!(
        script.is_file(),
        "/usr/bin/script (util-linux) not found: run scripts/install-test-deps"
    );
    let bin = env!("CARGO_BIN_EXE_etcdguard");
    let line = std::iter::once(bin)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!("stty cols 80 rows 24; {line}");
    let out = std::process::Command::new(script)
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("ETCDGUARD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn progress_bars_only_on_a_terminal_and_not_with_quiet() {
    let node = Node::start("3.5", "cp1");
    node.etcd.put_keys("p", 200);
    assert!(node.snapshot().status.success());
    let snap = node.snapshot_dir().join(&node.snapshot_files()[0]);
    let file = snap.to_str().unwrap();
    let bar = "verify    [=========================]";

    let shown = on_a_terminal(&["verify", file]);
    assert!(shown.contains(bar), "no bar on a terminal:\n{shown}");
    assert!(shown.contains("left"), "{shown}");
    assert!(shown.contains(": OK"), "{shown}");

    let quiet = on_a_terminal(&["verify", "--quiet", file]);
    assert!(quiet.contains(": OK"), "{quiet}");
    assert!(
        !quiet.contains("verify    ["),
        "a bar despite --quiet:\n{quiet}"
    );

    // Tables fit the terminal; in a pipe they keep every column.
    let config = node.config.to_str().unwrap();
    let records = on_a_terminal(&["--config", config, "records"]);
    assert!(records.contains("FILE / REASON"), "{records}");
    for line in records.lines() {
        let line = line.trim_end_matches('\r');
        assert!(
            line.chars().count() <= 80,
            "wider than the terminal: {line:?}"
        );
    }
    let piped = node.run(&["records"]);
    assert!(stdout(&piped).contains("RETENTION"), "{}", stdout(&piped));

    // Not a terminal (a pipe, a file, the journal): never a bar.
    let piped = verify(&snap);
    assert!(piped.status.success(), "{}", stderr(&piped));
    let all = format!("{}{}", stdout(&piped), stderr(&piped));
    assert!(!all.contains("verify    ["), "a bar in a pipe:\n{all}");
}
