//! A hostile network between etcdguard and both etcd and S3, through the test support's fault
//! proxy (`util::proxy::FaultProxy`): connection resets, half-open connections, a server that
//! accepts and never answers, truncated and corrupted responses, HTTP 500 and 503 SlowDown,
//! latency and a bandwidth cap. Every fault ends in a clear record (`Failed`, or a remote copy
//! `pending` with the reason) within the configured timeouts, leaves no partial file and no
//! object, and the copy completes once the fault clears; a daemon living through hundreds of
//! faults leaks no file descriptors, threads or memory.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::remote::{remote_state, use_remote, BUCKET};
use crate::util::node::Node;
use crate::util::proxy::{Fault, FaultProxy};
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::{etcdguard, etcdguard_cmd, poll_until, stderr, wait_until, NEWEST};

const SLOW_DOWN: Fault = Fault::Http {
    status: 503,
    code: "SlowDown",
};
const INTERNAL: Fault = Fault::Http {
    status: 500,
    code: "InternalError",
};

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn verifies(path: &Path) {
    let out = etcdguard(&["verify", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn etcd_behind_a_hostile_network_fails_clearly_in_bounded_time_then_works() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("net", 2500);
    let proxy = FaultProxy::start(node.etcd.client_port());
    node.set("etcd", "endpoint", &format!("{:?}", proxy.https_url()));
    node.set("etcd", "dial_timeout", "\"2s\"");
    node.set("etcd", "stall_timeout", "\"2s\"");
    node.set("etcd", "timeout", "\"30s\"");
    let out = node.snapshot();
    assert!(
        out.status.success(),
        "through a clean proxy: {}",
        stderr(&out)
    );

    // (fault, what the record's reason says: any of these). The bound: the dial and stall
    // timeouts (2 s each) and the time the stream takes here. A server that accepts and never
    // answers used to hold the TLS handshake forever (tonic's connect timeout bounds only TCP).
    // A connection cut mid-stream reads as a reset or as a close without TLS close_notify,
    // depending on when the reset reaches the reader (a busy machine sees the second): both
    // say the connection was cut.
    let cut: &[&str] = &["connection reset", "peer closed connection"];
    let cases: [(Fault, &[&str]); 7] = [
        (Fault::Reset { after: 0 }, &["cannot talk to etcd at"]),
        (Fault::Reset { after: 1 << 20 }, cut),
        (
            Fault::HalfOpen { after: 0 },
            &["no TLS handshake completed within 2s (etcd.dial_timeout)"],
        ),
        (
            Fault::HalfOpen { after: 1 << 20 },
            &["etcd sent nothing for 2s (etcd.stall_timeout)"],
        ),
        (
            Fault::Blackhole,
            &["no TLS handshake completed within 2s (etcd.dial_timeout)"],
        ),
        (Fault::Truncate { after: 1 << 20 }, cut),
        (
            Fault::Corrupt { at: 1 << 20 },
            &["cannot decrypt peer's message"],
        ),
    ];
    let mut table = Vec::new();
    for (fault, needles) in cases {
        proxy.set(fault.clone());
        let before = node.snapshot_files();
        let records_before = node.records().len();
        let started = Instant::now();
        let out = node.snapshot();
        let took = started.elapsed();
        proxy.clear();
        assert_eq!(out.status.code(), Some(1), "{fault:?}: {}", stderr(&out));
        let recs = node.records();
        assert_eq!(recs.len(), records_before + 1, "{fault:?}: one record");
        let r = recs.last().unwrap();
        assert_eq!(r["result"], "Failed", "{fault:?}: {r:#}");
        let reason = r["reason"].as_str().unwrap().to_string();
        assert!(
            needles.iter().any(|n| reason.contains(n)),
            "{fault:?}: {reason}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{fault:?} took {took:?}: {reason}"
        );
        assert_eq!(node.snapshot_files(), before, "{fault:?} left a file");
        table.push(format!("{fault:?}: {:.1} s: {reason}", took.as_secs_f64()));
    }
    eprintln!("{}", table.join("\n"));
    assert!(proxy.faulted() >= 7);

    // A slow network is not a broken one: the backup completes and verifies.
    for fault in [
        Fault::Latency(Duration::from_millis(3)),
        Fault::Bandwidth(8 << 20),
    ] {
        proxy.set(fault.clone());
        let out = node.snapshot();
        proxy.clear();
        assert!(out.status.success(), "{fault:?}: {}", stderr(&out));
        verifies(Path::new(
            node.last_record()["local"]["path"].as_str().unwrap(),
        ));
    }
}

#[test]
fn s3_behind_a_hostile_network_leaves_copies_pending_then_completes_them() {
    let mut node = Node::start(NEWEST, "cp1");
    // Larger than two 5 MiB parts: the upload is multipart.
    node.etcd.put_keys("net", 4000);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::moto(dir.path(), None, BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let proxy = FaultProxy::start(port_of(&s3.endpoint));
    node.set(
        "remote_storage",
        "endpoint",
        &format!("{:?}", proxy.http_url()),
    );
    node.set("remote_storage", "stall_timeout", "\"2s\"");
    node.set("remote_storage", "timeout", "\"30s\"");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(remote_state(&node.last_record()), "uploaded");

    // A short burst of SlowDown is ridden out by the request retries.
    proxy.burst(SLOW_DOWN, 1);
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        remote_state(&node.last_record()),
        "uploaded",
        "{:#}",
        node.last_record()
    );

    let cases = [
        (SLOW_DOWN, "RateLimited"),
        (INTERNAL, ""),
        (Fault::Reset { after: 0 }, ""),
        (Fault::Reset { after: 2 << 20 }, ""),
        (Fault::HalfOpen { after: 1 << 20 }, ""),
        (Fault::Blackhole, ""),
        (Fault::Truncate { after: 12 }, ""),
        (Fault::Corrupt { at: 9 }, ""),
    ];
    let mut table = Vec::new();
    let mut pending = Vec::new();
    for (fault, needle) in cases {
        proxy.set(fault.clone());
        let started = Instant::now();
        let out = node.snapshot();
        let took = started.elapsed();
        proxy.clear();
        // The local copy is the backup: it succeeds whatever the network does.
        assert!(out.status.success(), "{fault:?}: {}", stderr(&out));
        let r = node.last_record();
        assert_eq!(r["result"], "Success", "{fault:?}: {r:#}");
        assert_eq!(remote_state(&r), "pending", "{fault:?}: {r:#}");
        let error = r["remote"]["lastError"].as_str().unwrap().to_string();
        assert!(
            !error.is_empty() && error.contains(needle),
            "{fault:?}: {error}"
        );
        assert!(
            took < Duration::from_secs(60),
            "{fault:?} took {took:?}: {error}"
        );
        let file = r["fileName"].as_str().unwrap().to_string();
        assert!(
            !s3.keys(BUCKET).contains(&format!("prod/cp1/{file}")),
            "{fault:?}: an object became visible"
        );
        table.push(format!("{fault:?}: {:.1} s: {error}", took.as_secs_f64()));
        pending.push(file);
    }
    eprintln!("{}", table.join("\n"));

    // The fault gone, the daemon's start-up retry completes every copy, byte-identical, and
    // leaves no multipart upload open.
    let mut daemon = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let within = Duration::from_secs(90);
    let mut left: Vec<&String> = Vec::new();
    let retried = poll_until(within, Duration::from_millis(200), || {
        let recs = node.records();
        left = pending
            .iter()
            .filter(|f| {
                !recs
                    .iter()
                    .any(|r| r["fileName"] == f.as_str() && remote_state(r) == "uploaded")
            })
            .collect();
        // The start-up run aborts what the failed uploads left open once the retries are
        // done.
        (left.is_empty() && s3.open_multipart_uploads(BUCKET) == 0).then_some(())
    });
    assert!(
        retried.is_some(),
        "not retried in {within:?}: {left:?}, {} multipart uploads open",
        s3.open_multipart_uploads(BUCKET)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    for r in node.records() {
        let file = r["fileName"].as_str().unwrap();
        let object = s3.object(BUCKET, &format!("prod/cp1/{file}"));
        assert_eq!(
            sha256(&object),
            sha256(&std::fs::read(r["local"]["path"].as_str().unwrap()).unwrap()),
            "{file}"
        );
    }
}

/// Open file descriptors, threads and resident memory (KiB) of a process.
fn usage(pid: u32) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

#[test]
fn a_daemon_lives_through_hundreds_of_network_faults_without_leaking() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("net", 300);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    let etcd = FaultProxy::start(node.etcd.client_port());
    let remote = FaultProxy::start(port_of(&s3.endpoint));
    node.set("etcd", "endpoint", &format!("{:?}", etcd.https_url()));
    node.set("etcd", "dial_timeout", "\"1s\"");
    node.set("etcd", "stall_timeout", "\"1s\"");
    node.set("etcd", "timeout", "\"10s\"");
    node.set(
        "remote_storage",
        "endpoint",
        &format!("{:?}", remote.http_url()),
    );
    node.set("remote_storage", "stall_timeout", "\"1s\"");
    node.set("remote_storage", "timeout", "\"10s\"");
    node.set("local_storage", "keep", "5");
    node.set("", "schedule", "\"* * * * * *\"");
    etcd.rotate(vec![
        Fault::Pass,
        Fault::Reset { after: 0 },
        Fault::Pass,
        Fault::Reset { after: 4096 },
        Fault::Truncate { after: 3000 },
        Fault::Pass,
        Fault::Corrupt { at: 2000 },
        Fault::HalfOpen { after: 4096 },
        Fault::Pass,
        Fault::Blackhole,
    ]);
    remote.rotate(vec![
        SLOW_DOWN,
        INTERNAL,
        Fault::Pass,
        Fault::Reset { after: 0 },
        Fault::Truncate { after: 12 },
        Fault::Corrupt { at: 9 },
        Fault::Pass,
        Fault::HalfOpen { after: 100 },
        Fault::Blackhole,
        Fault::Reset { after: 300 },
    ]);
    let mut daemon = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"])
        .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    let faults = || etcd.faulted() + remote.faulted();
    let wait_for = |n: u64, limit: Duration| {
        let reached = poll_until(limit, Duration::from_millis(100), || {
            (faults() >= n).then_some(())
        });
        assert!(reached.is_some(), "only {} faults in {limit:?}", faults());
    };
    // CI: 50 faults after 30 of warm-up (each kind of fault several times, about 90 s); by
    // hand, ETCDGUARD_NETWORK_FAULTS=300 or more.
    let target: u64 = std::env::var("ETCDGUARD_NETWORK_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    wait_for(30, Duration::from_secs(120));
    let base = usage(pid);
    let mut peak = base;
    let started = Instant::now();
    let within = Duration::from_secs(5 * target);
    let reached = poll_until(within, Duration::from_millis(250), || {
        if faults() >= target + 30 {
            return Some(());
        }
        let now = usage(pid);
        peak = (peak.0.max(now.0), peak.1.max(now.1), peak.2.max(now.2));
        None
    });
    assert!(reached.is_some(), "only {} faults in {within:?}", faults());
    let end = usage(pid);
    eprintln!(
        "{} faults (etcd {}, S3 {}) in {:.0} s; fds {} -> {} (peak {}), threads {} -> {} (peak {}), \
         RSS {} -> {} KiB (peak {})",
        faults(),
        etcd.faulted(),
        remote.faulted(),
        started.elapsed().as_secs_f64(),
        base.0,
        end.0,
        peak.0,
        base.1,
        end.1,
        peak.1,
        base.2,
        end.2,
        peak.2
    );
    // Connections in flight come and go; what stays is a leak.
    assert!(
        end.0 <= base.0 + 8,
        "file descriptors grew: {base:?} -> {end:?}"
    );
    assert!(end.1 <= base.1 + 8, "threads grew: {base:?} -> {end:?}");
    assert!(
        end.2 <= base.2 + 64 * 1024,
        "memory grew: {base:?} -> {end:?}"
    );

    // Every attempt left a record that parses; the fault gone, backups and copies complete.
    let records_at_clear = node.records().len();
    assert!(records_at_clear > 0);
    etcd.clear();
    remote.clear();
    wait_until(
        "a clean backup after the faults cleared",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let recs = node.records();
            recs[records_at_clear.min(recs.len())..]
                .iter()
                .any(|r| r["result"] == "Success" && remote_state(r) == "uploaded")
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    for r in node.records() {
        if r["local"]["state"] == "present" {
            verifies(Path::new(r["local"]["path"].as_str().unwrap()));
        }
    }
    assert!(
        !crate::util::list_dir(&node.snapshot_dir())
            .iter()
            .any(|n| n.ends_with(".partial")),
        "a partial file stayed"
    );
}
