//! `etcdguard run` against real etcd, speaking the sd_notify protocol to a socket the test owns.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::util::node::Node;
use crate::util::proxy::{Faults, Proxy};
use crate::util::{etcdguard_cmd, list_dir, poll_until, wait_until, NEWEST};

/// The notify socket systemd would own, and everything received on it.
struct Notify {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    got: Vec<String>,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            path,
            got: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits until a message satisfying `f` arrives (or was received already, at index >= from).
    fn wait_for(&mut self, from: usize, limit: Duration, f: impl Fn(&str) -> bool) -> usize {
        // No pause between looks: drain() waits for the socket's read timeout.
        let found = poll_until(limit, Duration::ZERO, || {
            let i = self.got.iter().skip(from).position(|m| f(m));
            if i.is_none() {
                self.drain();
            }
            i
        });
        match found {
            Some(i) => from + i,
            None => panic!(
                "no matching notify message in {limit:?}; got {:#?}",
                self.got
            ),
        }
    }
}

fn spawn_daemon(node: &Node, notify: &Notify) -> Child {
    etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000")
        .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// How often the waits look.
const EVERY: Duration = Duration::from_millis(100);

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn records_where(node: &Node, f: impl Fn(&serde_json::Value) -> bool) -> usize {
    if !node.state_dir().join("records.json").exists() {
        return 0;
    }
    node.records().iter().filter(|r| f(r)).count()
}

#[test]
fn daemon_schedules_notifies_reloads_skips_and_stops_cleanly() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("d", 1500);
    let metrics = node.path("metrics/etcdguard.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    node.set("", "schedule", "\"*/2 * * * * *\"");
    node.set("", "metrics_file", &format!("{metrics:?}"));
    let mut notify = Notify::new(node.root.path());
    let mut daemon = spawn_daemon(&node, &notify);

    // READY with a human STATUS, then a scheduled backup and watchdog pings.
    let ready = notify.wait_for(0, Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(
        notify.got[ready].contains("STATUS="),
        "{:?}",
        notify.got[ready]
    );
    wait_until("a scheduled backup", Duration::from_secs(15), EVERY, || {
        records_where(&node, |r| {
            r["trigger"] == "schedule" && r["result"] == "Success"
        }) >= 1
    });
    notify.wait_for(ready, Duration::from_secs(5), |m| m.contains("WATCHDOG=1"));
    let status = notify.wait_for(ready, Duration::from_secs(5), |m| {
        m.contains("STATUS=last backup OK at")
    });
    assert!(
        notify.got[status].contains("; next 20"),
        "{}",
        notify.got[status]
    );
    wait_until("the metrics file", Duration::from_secs(5), EVERY, || {
        std::fs::read_to_string(&metrics)
            .is_ok_and(|t| t.contains("etcdguard_last_result{destination=\"local\"} 1"))
    });
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("etcdguard_next_run_timestamp_seconds "),
        "{text}"
    );
    assert!(text.contains("etcdguard_paused 0"), "{text}");
    assert!(
        list_dir(metrics.parent().unwrap())
            .iter()
            .all(|n| n == "etcdguard.prom"),
        "temp files left next to the metrics file"
    );

    // SIGHUP with a broken config: RELOADING (with MONOTONIC_USEC), READY, old config stays.
    let good_config = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(&node.config, format!("{good_config}\nbogus_key = 1\n")).unwrap();
    let mark = notify.got.len();
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    let reloading = notify.wait_for(mark, Duration::from_secs(5), |m| m.contains("RELOADING=1"));
    assert!(
        notify.got[reloading].contains("MONOTONIC_USEC="),
        "{}",
        notify.got[reloading]
    );
    notify.wait_for(reloading, Duration::from_secs(5), |m| m.contains("READY=1"));
    let before = records_where(&node, |r| r["trigger"] == "schedule");
    wait_until(
        "backups to continue",
        Duration::from_secs(10),
        EVERY,
        || records_where(&node, |r| r["trigger"] == "schedule") > before,
    );

    // A good reload that pauses: STATUS says so and no scheduled backups happen.
    std::fs::write(&node.config, format!("paused = true\n{good_config}")).unwrap();
    let mark = notify.got.len();
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    notify.wait_for(mark, Duration::from_secs(5), |m| m.contains("PAUSED"));
    std::thread::sleep(Duration::from_millis(500)); // a backup in flight may still finish
    let before = records_where(&node, |_| true);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        records_where(&node, |_| true),
        before,
        "backups while paused"
    );

    // Unpaused, through a slow link: the next slot finds the backup still running (Skipped),
    // then SIGTERM aborts it cleanly.
    let slow = Proxy::start(
        node.etcd.client_port(),
        Faults::slow(256 << 10, Duration::from_millis(300)),
    );
    node.set("etcd", "endpoint", &format!("{:?}", slow.url()));
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    wait_until("a skipped slot", Duration::from_secs(15), EVERY, || {
        records_where(&node, |r| {
            r["result"] == "Skipped"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("was still running"))
        }) >= 1
    });
    assert!(list_dir(&node.snapshot_dir())
        .iter()
        .any(|n| n.ends_with(".partial")));
    let mark = notify.got.len();
    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit: {status:?}");
    notify.drain();
    assert!(
        notify.got[mark..].iter().any(|m| m.contains("STOPPING=1")),
        "{:#?}",
        &notify.got[mark..]
    );
    let last = node.last_record();
    assert_eq!(last["result"], "Failed", "{last:#}");
    assert_eq!(last["reason"], "interrupted by shutdown");
    assert!(
        list_dir(&node.snapshot_dir())
            .iter()
            .all(|n| !n.starts_with('.')),
        "partial file left: {:?}",
        list_dir(&node.snapshot_dir())
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("etcdguard_skipped_slots_total "), "{text}");
    assert!(!text.contains("etcdguard_skipped_slots_total 0"), "{text}");
}

#[test]
fn daemon_takes_one_catch_up_backup_for_slots_missed_while_down() {
    let node = Node::start(NEWEST, "cp1");
    std::fs::create_dir_all(node.state_dir()).unwrap();
    let three_days_ago = chrono::Utc::now() - chrono::Duration::days(3);
    std::fs::write(
        node.state_dir().join("records.json"),
        serde_json::json!({
            "version": 1,
            "records": [],
            "daemon": {"lastHandledSlot": three_days_ago.to_rfc3339()}
        })
        .to_string(),
    )
    .unwrap();
    // Hourly: 72 slots were missed.
    let notify = Notify::new(node.root.path());
    let mut daemon = spawn_daemon(&node, &notify);
    wait_until(
        "the catch-up backup",
        Duration::from_secs(15),
        EVERY,
        || records_where(&node, |_| true) >= 1,
    );
    std::thread::sleep(Duration::from_secs(3));
    let recs = node.records();
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["trigger"], "catch-up");
    assert_eq!(recs[0]["result"], "Success");
    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().unwrap().success());
    // The slot is remembered: a restart does not catch up again.
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node.state_dir().join("records.json")).unwrap(),
    )
    .unwrap();
    let remembered = v["daemon"]["lastHandledSlot"].as_str().unwrap();
    assert!(
        remembered > three_days_ago.to_rfc3339().as_str(),
        "{remembered}"
    );
    let mut again = spawn_daemon(&node, &notify);
    std::thread::sleep(Duration::from_secs(3));
    signal(&again, nix::sys::signal::Signal::SIGTERM);
    assert!(again.wait().unwrap().success());
    assert_eq!(node.records().len(), 1);
}

#[test]
fn daemon_with_bad_config_exits_78_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etcdguard.toml");
    std::fs::write(&config, "schedule = \"every hour\"\n").unwrap();
    let notify = Notify::new(dir.path());
    let out = etcdguard_cmd(&["--config", config.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &notify.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let mut buf = [0u8; 512];
    assert!(
        notify.sock.recv(&mut buf).is_err(),
        "READY sent despite a bad config"
    );
}

#[test]
fn daemon_logs_the_pre_flight_problems_of_config_check_and_still_starts() {
    // etcd may come up after etcdguard at boot: unusable TLS files are reported in the words
    // `config check` uses, and the daemon runs on (each backup records the failure).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etcdguard.toml");
    let missing = dir.path().join("pki/nope.crt");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[etcd]\nendpoint = \"https://127.0.0.1:1\"\nca_cert = {:?}\n",
            dir.path().join("state").display().to_string(),
            missing.display().to_string()
        ),
    )
    .unwrap();
    let check = etcdguard_cmd(&["--config", config.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78));
    let mut notify = Notify::new(dir.path());
    let daemon = etcdguard_cmd(&["--config", config.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &notify.path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    notify.wait_for(0, Duration::from_secs(10), |m| m.contains("READY=1"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = daemon.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let logged = String::from_utf8_lossy(&out.stderr);
    let in_check = String::from_utf8_lossy(&check.stderr);
    let sentence = in_check
        .lines()
        .find(|l| l.contains(missing.to_str().unwrap()))
        .and_then(|l| l.split_once("etcd.ca_cert: "))
        .map(|(_, s)| s.trim().to_string())
        .unwrap_or_else(|| panic!("config check does not name the CA: {in_check}"));
    assert!(
        logged.contains("pre-flight: etcd.ca_cert: ") && logged.contains(&sentence),
        "wanted {sentence:?} in the daemon's log:\n{logged}"
    );
}

#[test]
fn daemon_runs_scheduled_drills_records_them_and_the_metrics_carry_them() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("drill", 800);
    let metrics = node.path("metrics/etcdguard.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    node.set("", "schedule", "\"*/2 * * * * *\"");
    node.set("", "metrics_file", &format!("{metrics:?}"));
    node.set("drill", "schedule", "\"*/3 * * * * *\"");
    let mut notify = Notify::new(node.root.path());
    let mut daemon = spawn_daemon(&node, &notify);
    notify.wait_for(0, Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "READY=1")
    });

    // Drills on their own slots, recorded, each of the newest backup, and never a skipped
    // backup slot because of one.
    wait_until("two passed drills", Duration::from_secs(40), EVERY, || {
        records_where(&node, |r| {
            r["trigger"] == "drill" && r["result"] == "Success"
        }) >= 2
    });
    let drills: Vec<serde_json::Value> = node
        .records()
        .into_iter()
        .filter(|r| r["trigger"] == "drill" && r["result"] == "Success")
        .collect();
    for d in &drills {
        crate::util::schema::assert_valid("record.v1", &d.to_string());
        assert_eq!(d["drill"]["source"], "local", "{d:#}");
        assert_eq!(d["drill"]["targetVersion"], NEWEST);
    }
    assert_eq!(
        records_where(&node, |r| r["result"] == "Skipped"),
        0,
        "a drill made a backup slot skip"
    );
    let status = notify.wait_for(0, Duration::from_secs(10), |m| {
        m.contains("; last drill passed at")
    });
    assert!(
        notify.got[status].contains("last backup OK"),
        "{}",
        notify.got[status]
    );
    wait_until("drill metrics", Duration::from_secs(10), EVERY, || {
        std::fs::read_to_string(&metrics).is_ok_and(|t| t.contains("etcdguard_last_drill_result 1"))
    });
    let text = std::fs::read_to_string(&metrics).unwrap();
    for family in [
        "etcdguard_last_drill_success_timestamp_seconds ",
        "etcdguard_last_drill_timestamp_seconds ",
        "etcdguard_last_verified_timestamp_seconds{destination=\"local\"} ",
        "etcdguard_drill_max_age_seconds ",
        "etcdguard_backup_max_age_seconds{destination=\"local\"} ",
        "etcdguard_backup_within_policy{destination=\"local\"} 1",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let passed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("etcdguard_drills_total{result=\"success\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(passed >= 2, "{text}");

    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit: {status:?}");
    assert_eq!(
        list_dir(&node.state_dir().join("drill")),
        Vec::<String>::new(),
        "a drill's scratch dir was left"
    );
    node.etcd.stop();
}
