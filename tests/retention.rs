//! Local retention against real backups.

use crate::util::node::Node;
use crate::util::stderr;

#[test]
fn expired_snapshots_beyond_min_keep_are_deleted_and_nothing_else() {
    let mut node = Node::start("3.5", "cp1");
    node.set("local_storage", "ttl", "\"1s\"");
    node.set("local_storage", "min_keep", "2");
    std::fs::create_dir_all(node.snapshot_dir()).unwrap();
    // Files that are not ours, or ours but not in our records, are never touched.
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
    let mut expected: Vec<String> = recs[2..4]
        .iter()
        .map(|r| r["fileName"].as_str().unwrap().to_string())
        .chain(foreign.iter().map(|s| s.to_string()))
        .collect();
    expected.sort();
    assert_eq!(node.snapshot_files(), expected);
}
