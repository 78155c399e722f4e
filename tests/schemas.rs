//! The published JSON Schemas (`docs/schemas/`) are strict enough to catch a change: the
//! other tests validate every JSON output they produce; this one proves a wrong document fails.

use crate::util::schema;

const RECORD: &str = r#"{
  "id": "20261202T043124.017Z-0400",
  "backupTimestamp": "2026-12-02T04:31:24.017Z",
  "fileName": "snapshot-etcd-20261202-043124-cp1.db",
  "result": "Success",
  "trigger": "schedule",
  "member": {"name": "cp1", "id": "8e9e05c52164694d", "endpoint": "https://127.0.0.1:2379"},
  "etcdVersion": "3.7.3",
  "revision": 42,
  "sizeBytes": 24608,
  "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
  "durationSeconds": 0.2,
  "local": {"path": "/var/lib/etcdguard/snapshots/x.db", "state": "present"},
  "retention": "kept: one of the newest 3 good snapshots (min_keep)"
}"#;

#[test]
fn schemas_refuse_what_they_do_not_describe() {
    schema::assert_valid("records.v1", &format!("[{RECORD}]"));
    let bad = [
        // A field the schema does not know (a new one must be documented first).
        RECORD.replace("\"revision\"", "\"undocumented\": 1, \"revision\""),
        // A value outside an enum.
        RECORD.replace("\"Success\"", "\"Succeeded\""),
        // A required field missing.
        RECORD.replace("\"trigger\": \"schedule\",", ""),
        // A wrong type.
        RECORD.replace("\"sizeBytes\": 24608", "\"sizeBytes\": \"24608\""),
    ];
    for doc in bad {
        let doc = format!("[{doc}]");
        assert!(
            schema::check("records.v1", &doc).is_err(),
            "accepted: {doc}"
        );
    }
    assert!(schema::check("verify.v1", "{\"hash\": 1}").is_err());
    assert!(schema::check("records-remote.v1", &format!("[{RECORD}]")).is_err());
}
