//! The pace of a backup. By default it follows etcd's own latency, read from the metrics the
//! manifest's `--listen-metrics-urls` serves (the tests' etcd serves them as kubeadm's does);
//! when etcd's WAL fsync p99 rises, the pace halves, and the stream still ends within its
//! deadline. Metrics that cannot be read leave a fixed conservative pace, and the record and
//! the metrics file say so. `pacing = "off"` leaves only `rate_limit`.
//!
//! The rise in latency is scripted: a loopback server that answers as etcd's metrics page
//! would on a disk that slows down, because a real disk cannot be made to slow on cue; so is
//! the CPU pressure, a file written as `/proc/pressure/cpu` is. The etcd the snapshot comes
//! from is real.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::node::Node;
use crate::util::{stderr, NEWEST};

const MIB: f64 = (1 << 20) as f64;

/// A metrics page on loopback. Each scrape adds 100 WAL fsyncs and 20 backend commits: in
/// the 1–2 ms bucket for the first `quiet` scrapes, in the 64–128 ms bucket after them (a
/// disk that slowed down). `mute` makes it accept and never answer.
struct FakeMetrics {
    url: String,
    scrapes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FakeMetrics {
    fn start(quiet: u64, mute: bool) -> FakeMetrics {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let scrapes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, halt) = (scrapes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let k = n.fetch_add(1, Ordering::Relaxed) + 1;
                if mute {
                    held.push(conn);
                    continue;
                }
                conn.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let body = page(k, quiet);
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}"
                );
            }
        });
        FakeMetrics { url, scrapes, stop }
    }
}

impl Drop for FakeMetrics {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The page at scrape `k`: cumulative histograms.
fn page(k: u64, quiet: u64) -> String {
    let (fast, slow) = (k.min(quiet), k.saturating_sub(quiet));
    let mut out = String::new();
    for (name, per) in [
        ("etcd_disk_wal_fsync_duration_seconds", 100),
        ("etcd_disk_backend_commit_duration_seconds", 20),
    ] {
        let mut cum = 0;
        for (le, n) in [
            ("0.001", 0),
            ("0.002", fast * per),
            ("0.064", 0),
            ("0.128", slow * per),
            ("+Inf", 0),
        ] {
            cum += n;
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cum}\n"));
        }
        out.push_str(&format!("{name}_count {cum}\n"));
    }
    out
}

/// A file standing in for `/proc/pressure/cpu`: tasks waited for a CPU `avg10` percent of the
/// last 10 seconds.
fn fake_pressure(dir: &std::path::Path, avg10: f64) -> std::path::PathBuf {
    let path = dir.join(format!("cpu-pressure-{avg10}"));
    std::fs::write(
        &path,
        format!(
            "some avg10={avg10:.2} avg60={avg10:.2} avg300={avg10:.2} total=1000000\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        ),
    )
    .unwrap();
    path
}

/// One backup with the file `pressure` standing in for the node's CPU pressure.
fn backup_pressed(node: &Node, pressure: &std::path::Path) -> serde_json::Value {
    let config = node.config.to_str().unwrap().to_string();
    let out = crate::util::etcdguard_cmd(&["--config", &config, "snapshot"])
        .env("ETCDGUARD_TEST_CPU_PRESSURE_FILE", pressure)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = node.last_record();
    assert_eq!(r["result"], "Success", "{r:#}");
    r["pacing"].clone()
}

/// A node whose etcd holds `mib` MiB, writing a metrics file: the node and that file.
fn node_with(mib: usize) -> (Node, std::path::PathBuf) {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_mib("big", mib);
    let metrics = node.root.path().join("etcdguard.prom");
    node.set(
        "",
        "metrics_file",
        &format!("{:?}", metrics.display().to_string()),
    );
    (node, metrics)
}

/// One backup, which must succeed: its record's `pacing`, the record, and what it said.
fn backup(node: &Node) -> (serde_json::Value, serde_json::Value, String) {
    let out = node.snapshot();
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    let r = node.last_record();
    assert_eq!(r["result"], "Success", "{r:#}");
    (r["pacing"].clone(), r, said)
}

#[test]
fn a_backup_follows_etcds_latency_and_still_ends_within_its_deadline() {
    let (mut node, metrics) = node_with(64);

    // 1. By default: the manifest's metrics URL, served by the real etcd.
    let (p, r, _) = backup(&node);
    assert_eq!(p["mode"], "adaptive", "{r:#}");
    assert_eq!(
        p["metricsUrl"],
        format!("http://127.0.0.1:{}/metrics", node.etcd.metrics_port)
    );
    assert!(p["pacedSeconds"].as_f64().unwrap() >= 0.0, "{p:#}");
    assert!(p.get("reason").is_none(), "{p:#}");
    // 64 MiB at 32 MiB/s outlasts the baseline's second, which has etcd's CPU besides its latency.
    assert!(p["before"]["cpuCores"].as_f64().unwrap() >= 0.0, "{p:#}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("etcdguard_last_pacing_fallback{destination=\"local\"} 0"),
        "{text}"
    );

    // 2. Past 32 MiB/s only on a node that was idle before the backup: the pace doubles at
    //    the first interval where no task waited for a CPU in the 10 s before; where tasks
    //    waited 5 % of the time, it stays at 32 MiB/s.
    let p = backup_pressed(&node, &fake_pressure(node.root.path(), 0.0));
    assert_eq!(p["mode"], "adaptive", "{p:#}");
    assert_eq!(p["before"]["cpuPressurePercent"], 0.0, "{p:#}");
    assert!(
        p["highestBytesPerSecond"].as_f64().unwrap() >= 64.0 * MIB,
        "{p:#}"
    );
    let p = backup_pressed(&node, &fake_pressure(node.root.path(), 5.0));
    assert_eq!(p["before"]["cpuPressurePercent"], 5.0, "{p:#}");
    assert_eq!(
        p["highestBytesPerSecond"].as_f64().unwrap(),
        32.0 * MIB,
        "{p:#}"
    );

    // 3. etcd's WAL fsync p99 rises from under 2 ms to about 128 ms once the stream runs: the
    //    pace halves and halves; with a deadline of 8 s the stream still ends in time.
    let fake = FakeMetrics::start(2, false);
    node.set("etcd", "metrics_url", &format!("{:?}", fake.url));
    node.set("etcd", "timeout", "\"8s\"");
    let (p, r, _) = backup(&node);
    assert_eq!(p["mode"], "adaptive", "{r:#}");
    assert!(p["slowdowns"].as_u64().unwrap() >= 2, "{p:#}");
    assert!(
        p["lowestBytesPerSecond"].as_f64().unwrap() <= 8.0 * MIB,
        "{p:#}"
    );
    let before = p["before"]["walFsyncP99Ms"].as_f64().unwrap();
    assert!(before <= 2.0, "the baseline: {p:#}");
    assert!(
        p["worst"]["walFsyncP99Ms"].as_f64().unwrap() > 64.0,
        "{p:#}"
    );
    // 64 MiB, of which at most 32 MiB in the first second, the rest at 16, 8, 4 MiB/s until
    // the deadline's share (60 % of 8 s) sets the pace: stretched to about 5 s, never 8.
    assert!(p["pacedSeconds"].as_f64().unwrap() > 0.0, "{p:#}");
    let took = r["durationSeconds"].as_f64().unwrap();
    assert!((3.0..8.0).contains(&took), "{r:#}");
    assert!(fake.scrapes.load(Ordering::Relaxed) >= 4);
    let out = node.run(&["verify", r["local"]["path"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unreadable_metrics_leave_the_fallback_pace_and_off_leaves_none() {
    let (mut node, metrics) = node_with(48);

    // Nothing listens: the fallback pace of 32 MiB/s, said in the record and the metrics.
    let nobody = format!("http://127.0.0.1:{}/metrics", crate::util::free_port());
    node.set("etcd", "metrics_url", &format!("{nobody:?}"));
    let (p, r, said) = backup(&node);
    assert_eq!(p["mode"], "fallback", "{r:#}");
    let reason = p["reason"].as_str().unwrap();
    assert!(reason.contains(&nobody), "{reason}");
    assert!(reason.contains("could not be read"), "{reason}");
    assert_eq!(p["lowestBytesPerSecond"].as_f64().unwrap(), 32.0 * MIB);
    // 48 MiB at 32 MiB/s: at least 1.5 s, whatever else the machine does.
    assert!(r["durationSeconds"].as_f64().unwrap() >= 1.4, "{r:#}");
    assert!(said.contains("fallback pace of 32 MiB/s"), "{said}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("etcdguard_last_pacing_fallback{destination=\"local\"} 1"),
        "{text}"
    );

    // A metrics page that never answers costs one second, then the same fallback.
    let mute = FakeMetrics::start(0, true);
    node.set("etcd", "metrics_url", &format!("{:?}", mute.url));
    let (p, _, _) = backup(&node);
    assert_eq!(p["mode"], "fallback");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("no answer within 1s"),
        "{p:#}"
    );

    // Off: no pace, no wait.
    node.set("etcd", "pacing", "\"off\"");
    let (p, _, _) = backup(&node);
    assert_eq!(p["mode"], "off");
    assert_eq!(p["pacedSeconds"].as_f64().unwrap(), 0.0);

    // A pacing that is neither: a config error naming the field and both choices.
    node.set("etcd", "pacing", "\"fast\"");
    let out = node.snapshot();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("etcd.pacing") && err.contains("\"auto\""),
        "{err}"
    );
}
