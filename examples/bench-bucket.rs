//! Writes a crowded bucket for `bench/run --bucket`: what many clusters of three control-plane
//! nodes keep for months, straight into an s3s-fs root (objects are files there), in
//! etcdguard's layout: `<prefix><member>/snapshot-etcd-<stamp>-<member>.db` with its JSON
//! sidecar `….db.json` (the record, as `copies::settle` writes it), and with `per = "cluster"`
//! the cluster's scheduled copies under `<prefix>_cluster/`. Also writes the records file of
//! one node (the measured one), whose history knows its own copies.
//!
//!   cargo run --release --example bench-bucket -- <bucket dir> <records.json> <bucket name>
//!       [clusters] [hourly per node] [daily per node] [cluster copies]
//!
//! Defaults: 50 clusters `c00/` … `c49/` with members `cNN-cp1` … `cNN-cp3`; each node 48
//! hourly and 32 daily copies, the cluster 60 daily ones under `_cluster/`: 600 objects a
//! cluster, 30 000 in all. Every copy fits `keep_hourly = 48`, `keep_daily = 90`: retention
//! finds nothing to delete (a steady state), so every measured run sees the same bucket. The
//! measured node is `c07-cp1` (prefix `c07/`); its records file is the second argument.

use std::path::Path;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{json, Value};

/// The fake snapshot object: small, the size in its record.
const OBJECT_BYTES: usize = 4096;
const MEASURED: (usize, usize) = (7, 1);

fn member(cluster: usize, node: usize) -> String {
    format!("c{cluster:02}-cp{node}")
}

/// A stand-in for a hash: stable, hex, 64 characters.
fn hex64(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    for round in 0..4u64 {
        for b in seed.bytes().chain(round.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// The record of one copy, as etcdguard writes it to the sidecar and `records.json`.
fn record(bucket: &str, key: &str, file: &str, who: &str, at: DateTime<Utc>, slot: bool) -> Value {
    let stamp = at.format("%Y%m%dT%H%M%S%.3fZ");
    let id = format!("{stamp}-{}", &hex64(file)[..4]);
    let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let up = (at + Duration::milliseconds(900)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut remote = json!({
        "destination": "remote",
        "location": format!("s3://{bucket}/{key}"),
        "state": "uploaded",
        "attempts": 1,
        "lastAttemptAt": up,
        "uploadedAt": up,
        "etag": format!("\"{}\"", &hex64(key)[..32]),
    });
    if slot {
        remote["cluster"] =
            json!({ "slot": at.duration_trunc(Duration::days(1)).unwrap(), "uploader": who });
    }
    let revision = 1_000_000 + at.timestamp() % 1_000_000;
    json!({
        "id": id,
        "backupTimestamp": ts,
        "fileName": file,
        "result": "Success",
        "trigger": "schedule",
        "member": { "name": who, "id": &hex64(who)[..16], "endpoint": "https://127.0.0.1:2379" },
        "etcdVersion": "3.5.30",
        "revision": revision,
        "sizeBytes": OBJECT_BYTES,
        "sha256": hex64(file),
        "durationSeconds": 4.21,
        "local": {
            "path": format!("/var/lib/etcdguard/snapshots/{file}"),
            "state": "deleted",
            "deletedAt": up,
            "deletedReason": "kept 48 hourly copies locally",
        },
        "remote": remote,
        "health": {
            "dbSizeBytes": 1_073_741_824u64, "dbSizeInUseBytes": 1_000_000_000u64,
            "quotaBytes": 8_589_934_592u64, "quotaSource": "flag", "isLearner": false,
            "raftIndex": revision + 7, "raftAppliedIndex": revision + 7, "leaderRaftIndex": revision + 7,
        },
    })
}

fn put(root: &Path, key: &str, bytes: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

/// One copy: the object and its sidecar; the record.
fn copy(root: &Path, bucket: &str, dir: &str, who: &str, at: DateTime<Utc>, slot: bool) -> Value {
    let file = format!("snapshot-etcd-{}-{who}.db", at.format("%Y%m%d-%H%M%S"));
    let key = format!("{dir}{file}");
    let r = record(bucket, &key, &file, who, at, slot);
    let mut body = vec![0u8; OBJECT_BYTES];
    body[..file.len()].copy_from_slice(file.as_bytes());
    put(root, &key, &body);
    let mut json = serde_json::to_vec_pretty(&r).unwrap();
    json.push(b'\n');
    put(root, &format!("{key}.json"), &json);
    r
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench-bucket <bucket dir> <records.json> <bucket name> [clusters] [hourly] [daily] [cluster copies]");
        std::process::exit(2);
    }
    let (root, records_path, bucket) = (Path::new(&args[1]), Path::new(&args[2]), &args[3]);
    let n = |i: usize, d: usize| args.get(i).map_or(d, |a| a.parse().unwrap());
    let (clusters, hourly, daily, slots) = (n(4, 50), n(5, 48), n(6, 32), n(7, 60));
    let hour = Utc::now().duration_trunc(Duration::hours(1)).unwrap();
    let day = hour.duration_trunc(Duration::days(1)).unwrap();
    let mut mine = Vec::new();
    let mut objects = 0;
    for c in 0..clusters {
        let prefix = format!("c{c:02}/");
        for node in 1..=3 {
            let who = member(c, node);
            let dir = format!("{prefix}{who}/");
            // Minutes apart, so the three nodes' names differ as real ones do.
            let skew = Duration::minutes(5 * node as i64) + Duration::seconds(c as i64);
            let times = (0..hourly as i64)
                .map(|h| hour - Duration::hours(h + 1) + skew)
                .chain((0..daily as i64).map(|d| day - Duration::days(d + 3) + skew));
            for at in times {
                let r = copy(root, bucket, &dir, &who, at, false);
                objects += 2;
                if (c, node) == MEASURED {
                    mine.push(r);
                }
            }
        }
        for d in 0..slots as i64 {
            let at = day - Duration::days(d + 1) + Duration::minutes(30);
            let who = member(c, 1 + (d as usize) % 3);
            copy(root, bucket, &format!("{prefix}_cluster/"), &who, at, true);
            objects += 2;
        }
    }
    mine.sort_by(|a, b| {
        a["backupTimestamp"]
            .as_str()
            .cmp(&b["backupTimestamp"].as_str())
    });
    let file = json!({
        "version": 1,
        "records": mine,
        "stats": { "success": mine.len(), "failed": 0, "skipped": 0, "drillSuccess": 0, "drillFailed": 0 },
        "daemon": {},
    });
    std::fs::create_dir_all(records_path.parent().unwrap()).unwrap();
    std::fs::write(records_path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    println!("{objects}");
}
