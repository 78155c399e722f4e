//! Local retention against real backups.

use crate::remote::{remote_state, s3s_object, use_remote, BUCKET};
use crate::util::node::Node;
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::schema;
use crate::util::{stderr, stdout};

#[test]
fn expired_snapshots_beyond_min_keep_are_deleted_and_nothing_else() {
    let mut node = Node::start("3.5", "cp1");
    node.set("local_storage", "ttl", "\"1s\"");
    node.set("local_storage", "min_keep", "2");
    std::fs::create_dir_all(node.snapshot_dir()).unwrap();
    // Files that are not ours are never touched; one named like ours that no record knows is
    // adopted if it verifies, else moved aside (never deleted).
    let foreign = [
        "snapshot-etcd-20200101-000000-cp1.db",
        "notes.txt",
        "etcd-backup.db",
    ];
    for f in foreign {
        std::fs::write(node.snapshot_dir().join(f), b"keep me").unwrap();
    }

    for i in 0..4 {
        let out = node.snapshot();
        assert!(out.status.success(), "backup {i}: {}", stderr(&out));
    }
    // One failed backup in the middle of the history must not count as a good one.
    node.etcd.stop();
    assert_eq!(node.snapshot().status.code(), Some(1));

    let recs = node.records();
    assert_eq!(recs.len(), 5);
    let states: Vec<_> = recs[..4]
        .iter()
        .map(|r| r["local"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["deleted", "deleted", "present", "present"]);
    for r in &recs[..2] {
        assert!(r["local"]["deletedAt"].is_string());
        assert!(r["local"]["deletedReason"]
            .as_str()
            .unwrap()
            .contains("ttl"));
    }
    // The file named like ours that no record knows and that does not verify is moved out of
    // the snapshot pattern by the first run (said so), bytes intact; never deleted.
    let files = node.snapshot_files();
    let aside: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with(&format!("{}.unverified-", foreign[0])))
        .collect();
    assert_eq!(aside.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::read(node.snapshot_dir().join(aside[0])).unwrap(),
        b"keep me"
    );
    let mut expected: Vec<String> = recs[2..4]
        .iter()
        .map(|r| r["fileName"].as_str().unwrap().to_string())
        .chain(foreign[1..].iter().map(|s| s.to_string()))
        .chain(std::iter::once(aside[0].clone()))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    schema::assert_valid(
        "records.v1",
        &stdout(&node.run(&["records", "--output", "json"])),
    );
}

#[test]
fn keep_by_count_and_history_limits_bound_the_records_file() {
    let mut node = Node::start("3.5", "cp1");
    node.set("local_storage", "keep", "3");
    node.set("local_storage", "min_keep", "2");
    node.set("records", "successful_history_limit", "10");
    node.set("records", "failed_history_limit", "5");

    for i in 0..6 {
        let out = node.snapshot();
        assert!(out.status.success(), "backup {i}: {}", stderr(&out));
    }
    let recs = node.records();
    assert_eq!(recs.len(), 6);
    let states: Vec<_> = recs
        .iter()
        .map(|r| r["local"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states,
        ["deleted", "deleted", "deleted", "present", "present", "present"]
    );
    for r in &recs[..3] {
        let why = r["local"]["deletedReason"].as_str().unwrap();
        assert!(why.contains("not among the newest 3"), "{why}");
    }
    let mut newest: Vec<String> = recs[3..]
        .iter()
        .map(|r| r["fileName"].as_str().unwrap().to_string())
        .collect();
    newest.sort();
    assert_eq!(node.snapshot_files(), newest);

    // `records` explains each snapshot's fate, in the table and in JSON.
    let out = node.run(&["records", "--output", "json"]);
    let shown: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown[0]["retention"].as_str().unwrap().contains("min_keep"));
    assert!(shown[2]["retention"]
        .as_str()
        .unwrap()
        .contains("kept for 1 more successful backups (keep 3)"));
    assert!(shown[3]["retention"]
        .as_str()
        .unwrap()
        .starts_with("deleted "));
    let table = crate::util::stdout(&node.run(&["records"]));
    assert!(
        table.lines().next().unwrap().contains("RETENTION"),
        "{table}"
    );

    // 44 more attempts, alternating success and failure: the history stays within 10 + 5.
    for i in 0..44 {
        if i % 2 == 1 {
            node.set("etcd", "endpoint", "\"https://127.0.0.1:1\"");
            assert_eq!(node.snapshot().status.code(), Some(1));
            node.unset("etcd", "endpoint");
        } else {
            let out = node.snapshot();
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let recs = node.records();
        let ok = recs.iter().filter(|r| r["result"] == "Success").count();
        let failed = recs.len() - ok;
        assert!(
            ok <= 10 && failed <= 5,
            "after attempt {i}: {ok} ok, {failed} failed"
        );
        assert!(node.snapshot_files().len() <= 3);
    }
    let recs = node.records();
    let ok: Vec<_> = recs.iter().filter(|r| r["result"] == "Success").collect();
    assert_eq!(ok.len(), 10);
    assert_eq!(recs.len() - ok.len(), 5);
    // Every snapshot that exists still has its record.
    let present: Vec<String> = ok
        .iter()
        .filter(|r| r["local"]["state"] == "present")
        .map(|r| r["fileName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(present.len(), 3);
    let mut present_sorted = present.clone();
    present_sorted.sort();
    assert_eq!(node.snapshot_files(), present_sorted);
    // The newest record is the last attempt (attempt 43, a failure); the history is in order.
    assert_eq!(recs.last().unwrap()["result"], "Failed");
    let times: Vec<_> = recs
        .iter()
        .map(|r| r["backupTimestamp"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
}

#[test]
fn pinned_snapshots_survive_local_and_remote_retention_until_unpinned() {
    let mut node = Node::start("3.5", "cp1");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    for section in ["local_storage", "remote_storage"] {
        node.set(section, "keep", "1");
        node.set(section, "min_keep", "1");
    }
    let label = "before kubeadm upgrade to 1.37";
    let out = node.run(&["snapshot", "--pin", "--label", label]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("({label}): kept by every retention until")),
        "{}",
        stdout(&out)
    );
    let pinned = node.last_record();
    let (id, file) = (
        pinned["id"].as_str().unwrap().to_string(),
        pinned["fileName"].as_str().unwrap().to_string(),
    );
    assert_eq!(pinned["pin"]["label"], label);
    let key = format!("prod/cp1/{file}");
    let sidecar = |key: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(s3s_object(&s3, &format!("{key}.json"))).unwrap())
            .unwrap()
    };
    assert_eq!(
        sidecar(&key)["pin"]["label"],
        label,
        "the bucket says it too"
    );

    // keep = 1 would delete it at each of these backups.
    for i in 0..3 {
        let out = node.snapshot();
        assert!(out.status.success(), "backup {i}: {}", stderr(&out));
    }
    let newest = node.last_record()["fileName"].as_str().unwrap().to_string();
    let mut want = vec![file.clone(), newest.clone()];
    want.sort();
    assert_eq!(crate::util::list_dir(&node.snapshot_dir()), want);
    assert!(
        s3s_object(&s3, &key).exists(),
        "remote retention deleted a pinned copy"
    );
    assert!(s3s_object(&s3, &format!("prod/cp1/{newest}")).exists());
    let table = stdout(&node.run(&["records"]));
    assert!(
        table.contains(&format!("({label}) until unpinned")),
        "{table}"
    );
    assert!(table.contains("uploaded (pinned)"), "{table}");

    // Bad input changes nothing.
    let before = std::fs::read(node.state_dir().join("records.json")).unwrap();
    let out = node.run(&["unpin", "no-such-record"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no record \"no-such-record\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(node.state_dir().join("records.json")).unwrap(),
        before
    );

    // Unpinned (by file name here), it goes at the next retention run, locally and remotely.
    let out = node.run(&["unpin", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sidecar(&key).get("pin").is_none());
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!node.snapshot_dir().join(&file).exists());
    assert!(!s3s_object(&s3, &key).exists());
    let rec = node
        .records()
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(rec["local"]["state"], "deleted", "{rec:#}");
    assert_eq!(remote_state(&rec), "deleted", "{rec:#}");
    assert!(rec.get("pin").is_none());
    // Pinning again what is gone says so.
    let out = node.run(&["pin", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no snapshot left to pin"),
        "{}",
        stderr(&out)
    );
}

/// Runs `etcdguard <args>` as if the clock read `at` (the test-only clock offset).
fn run_at(node: &Node, at: chrono::DateTime<chrono::Utc>, args: &[&str]) -> std::process::Output {
    let offset = (at - chrono::Utc::now()).num_milliseconds();
    let mut all = vec!["--config", node.config.to_str().unwrap()];
    all.extend_from_slice(args);
    crate::util::etcdguard_cmd(&all)
        .env("ETCDGUARD_TEST_CLOCK_OFFSET_MS", offset.to_string())
        .output()
        .unwrap()
}

/// `snapshot-etcd-20261202-213000-cp1.db` → `20261202-2130` (the second may be off by one:
/// the clock offset is set a moment before the backup reads it).
fn minute_of(name: &str) -> String {
    name.trim_start_matches("snapshot-etcd-")[..13].to_string()
}

#[test]
fn a_simulated_month_of_backups_leaves_exactly_the_tiers_on_every_destination() {
    // Local copies, an S3 destination and an fs destination, each with its own rule.
    use chrono::{Duration, TimeZone, Utc};
    let mut node = Node::start("3.6", "cp1");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    for section in ["local_storage", "remote_storage"] {
        node.set(section, "keep_last", "2");
        node.set(section, "keep_daily", "4");
        node.set(section, "keep_weekly", "3");
        node.set(section, "keep_monthly", "3");
        node.set(section, "min_keep", "1");
    }
    // A second destination with a rule of its own: a mount that keeps the newest three.
    let nfs = crate::util::Tmpfs::new("64m");
    node.add_destination(&format!(
        "name = \"nfs\"\ntype = \"fs\"\npath = {:?}\nprefix = \"prod/\"\nkeep_last = 3\nmin_keep = 1\n",
        nfs.path().display().to_string()
    ));
    // One backup a day at 15:30 UTC from 25 October to 1 December, then four on 2 December.
    let mut times: Vec<chrono::DateTime<Utc>> = (0..38)
        .map(|d| Utc.with_ymd_and_hms(2026, 10, 25, 15, 30, 0).unwrap() + Duration::days(d))
        .collect();
    for h in [3, 9, 15, 21] {
        times.push(Utc.with_ymd_and_hms(2026, 12, 2, h, 30, 0).unwrap());
    }
    for t in &times {
        let out = run_at(&node, *t, &["snapshot"]);
        assert!(out.status.success(), "backup at {t}: {}", stderr(&out));
    }
    // Counting back from the newest: the newest two (2 Dec 21:30 and 15:30); the newest of
    // 4 days (2, 1, 30 and 29 Nov); of 3 ISO weeks (week 49 from Monday 30 Nov: 2 Dec;
    // week 48: Sunday 29 Nov; week 47: Sunday 22 Nov); of 3 months (Dec, Nov 30, Oct 31).
    let want = [
        "20261031-1530",
        "20261122-1530",
        "20261129-1530",
        "20261130-1530",
        "20261201-1530",
        "20261202-1530",
        "20261202-2130",
    ];
    let local: Vec<String> = node.snapshot_files().iter().map(|f| minute_of(f)).collect();
    assert_eq!(local, want, "local copies");
    let remote_dir = s3s_object(&s3, "prod/cp1");
    let remote: Vec<String> = crate::util::list_dir(&remote_dir)
        .iter()
        .filter(|f| f.ends_with(".db"))
        .map(|f| minute_of(f))
        .collect();
    assert_eq!(remote, want, "remote copies");
    for f in node.snapshot_files() {
        assert_eq!(
            std::fs::read(node.snapshot_dir().join(&f)).unwrap(),
            std::fs::read(remote_dir.join(&f)).unwrap(),
            "{f}: the remote copy differs"
        );
    }
    let on_mount: Vec<String> = crate::util::list_dir(&nfs.path().join("prod/cp1"))
        .iter()
        .filter(|f| f.ends_with(".db"))
        .map(|f| minute_of(f))
        .collect();
    assert_eq!(
        on_mount,
        ["20261202-0930", "20261202-1530", "20261202-2130"],
        "fs copies (destination.nfs.keep_last = 3)"
    );
    // Every deleted copy says which rules did not keep it; `records` says why each stays.
    let recs = node.records();
    let gone = recs
        .iter()
        .find(|r| minute_of(r["fileName"].as_str().unwrap()) == "20261128-1530")
        .unwrap();
    assert_eq!(gone["local"]["state"], "deleted");
    let why = gone["local"]["deletedReason"].as_str().unwrap();
    assert!(
        why.contains("keep_daily") && why.contains("keep_weekly") && why.contains("keep_monthly"),
        "{why}"
    );
    assert_eq!(remote_state(gone), "deleted");
    let now = Utc.with_ymd_and_hms(2026, 12, 2, 22, 0, 0).unwrap();
    let table = stdout(&run_at(&node, now, &["records"]));
    assert!(
        table.contains("the newest of its week, one of the last 3 (keep_weekly)"),
        "{table}"
    );

    // Nothing more to delete; then a smaller rule: --dry-run lists what would go and why and
    // changes nothing; prune then deletes exactly that, locally and remotely.
    let out = run_at(&node, now, &["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each destination's lines carry its own name.
    assert_eq!(
        stdout(&out),
        "local: nothing to delete\nremote: nothing to delete\nnfs: nothing to delete\n"
    );
    for section in ["local_storage", "remote_storage"] {
        node.set(section, "keep_weekly", "2");
    }
    let before = std::fs::read(node.state_dir().join("records.json")).unwrap();
    let out = run_at(&node, now, &["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}");
    assert!(lines[0].starts_with("local: would delete "), "{said}");
    assert!(lines[0].contains("snapshot-etcd-20261122-1530"), "{said}");
    assert!(
        lines[0].contains("not among the newest 2 (local_storage.keep)"),
        "{said}"
    );
    assert!(lines[1].starts_with("remote: would delete s3://"), "{said}");
    assert!(lines[1].contains("remote_storage.keep_weekly"), "{said}");
    assert_eq!(lines[2], "nfs: nothing to delete", "{said}");
    assert_eq!(crate::util::list_dir(&node.snapshot_dir()).len(), 7);
    assert_eq!(
        std::fs::read(node.state_dir().join("records.json")).unwrap(),
        before,
        "--dry-run changed the records"
    );
    let out = run_at(&node, now, &["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.starts_with("local: deleted "), "{said}");
    assert!(said.contains("(local_storage.keep_weekly)"), "{said}");
    assert!(said.contains("(remote_storage.keep_weekly)"), "{said}");
    let mut want: Vec<&str> = want.to_vec();
    want.retain(|m| *m != "20261122-1530");
    let local: Vec<String> = node.snapshot_files().iter().map(|f| minute_of(f)).collect();
    assert_eq!(local, want);
    let remote: Vec<String> = crate::util::list_dir(&remote_dir)
        .iter()
        .filter(|f| f.ends_with(".db"))
        .map(|f| minute_of(f))
        .collect();
    assert_eq!(remote, want);
    let out = run_at(&node, now, &["prune", "--dry-run"]);
    assert_eq!(
        stdout(&out),
        "local: nothing to delete\nremote: nothing to delete\nnfs: nothing to delete\n",
        "prune is idempotent"
    );
}
