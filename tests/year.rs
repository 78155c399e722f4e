//! A year in minutes: the daemon through hourly slots on the test clock (the steppable one of
//! `tests/clock.rs`), with local copies, an S3 destination and an fs destination under tiered
//! retention, a weekly drill, bounded history, a metrics file, and faults every 720 slots (a
//! month): S3 down for six hours, etcd down for three, the snapshot disk full for four, the
//! daemon killed during a backup.
//! Every hundred slots (every thousand for the year) it samples the daemon's open files,
//! threads and RSS, the records' count and the state dir's size; at the end each destination
//! holds exactly what its rule keeps of the backups that succeeded (an oracle of its own,
//! written here), the records are within their limits, the metrics say the last backup, the
//! resources stayed flat, and nothing half-written is left.
//!
//! `ETCDGUARD_TEST_YEAR_SLOTS` sets the slots (default 720: a month, in CI);
//! `scripts/torture --year` runs 8,760.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde_json::Value;

use crate::clock::Clock;
use crate::remote::{use_remote, BUCKET};
use crate::util::node::Node;
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::{etcdguard_cmd, wait_until, with_watchdog_pid, Tmpfs, NEWEST};

/// One daemon process; killed when dropped, its log shown on a panic.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn spawn(node: &Node, clock: &Clock, n: usize) -> Running {
        let log = node.root.path().join(format!("daemon-{n}.log"));
        let cmd = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "run"]);
        let child = with_watchdog_pid(&cmd)
            .env("ETCDGUARD_TEST_CLOCK_FILE", clock.path())
            // The loop looks at the clock every 50 ms (half the watchdog interval).
            .env("WATCHDOG_USEC", "100000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- daemon log (newest first):\n{}", tail.join("\n"));
        }
    }
}

/// What `/proc` says of a process, and of the state dir.
#[derive(Debug, Clone, Copy)]
struct Sample {
    slot: usize,
    fds: usize,
    threads: usize,
    rss_kib: u64,
    records: usize,
    state_kib: u64,
}

fn sample(slot: usize, pid: u32, node: &Node) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        slot,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        threads: field("Threads:") as usize,
        rss_kib: field("VmRSS:"),
        records: records_file(node)["records"].as_array().map_or(0, Vec::len),
        state_kib: dir_bytes(&node.state_dir()) >> 10,
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn records_file(node: &Node) -> Value {
    std::fs::read(node.state_dir().join("records.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn last_handled(node: &Node) -> Option<DateTime<Utc>> {
    records_file(node)["daemon"]["lastHandledSlot"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

/// The oracle: of copies taken at `times` (oldest first), the ones a restic-style rule keeps:
/// the newest `last`, and the newest of each of the last `daily` days, `weekly` ISO weeks and
/// `monthly` months that have a copy.
fn kept(
    times: &[DateTime<Utc>],
    last: usize,
    daily: usize,
    weekly: usize,
    monthly: usize,
) -> BTreeSet<DateTime<Utc>> {
    let mut keep: BTreeSet<DateTime<Utc>> = times.iter().rev().take(last).copied().collect();
    let mut per = |n: usize, key: &dyn Fn(&DateTime<Utc>) -> (i32, u32)| {
        let mut seen = Vec::new();
        for t in times.iter().rev() {
            let k = key(t);
            if !seen.contains(&k) {
                if seen.len() == n {
                    break;
                }
                seen.push(k);
                keep.insert(*t);
            }
        }
    };
    per(daily, &|t| (t.year(), t.ordinal()));
    per(weekly, &|t| (t.iso_week().year(), t.iso_week().week()));
    per(monthly, &|t| (t.year(), t.month()));
    keep
}

/// `snapshot-etcd-20270104-010012-cp1.db` → its slot, the hour it was taken in.
fn slot_of(name: &str) -> DateTime<Utc> {
    let s = &name["snapshot-etcd-".len().."snapshot-etcd-".len() + 15];
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H%M%S")
        .unwrap()
        .and_utc();
    t.with_minute(0).unwrap().with_second(0).unwrap()
}

fn db_names(dir: &Path) -> BTreeSet<String> {
    crate::util::list_dir(dir)
        .into_iter()
        .filter(|f| f.ends_with(".db"))
        .collect()
}

#[test]
fn a_month_of_hourly_backups_with_faults_leaves_exactly_the_tiers_and_flat_resources() {
    let slots: usize = std::env::var("ETCDGUARD_TEST_YEAR_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(720);
    let every = std::env::var("ETCDGUARD_TEST_YEAR_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if slots > 2000 { 1000 } else { 100 });
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("pods", 200);
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    use_remote(&mut node, &s3, BUCKET, SECRET_KEY);
    node.set("remote_storage", "stall_timeout", "\"3s\"");
    let (last, daily, weekly, monthly) = (3, 7, 4, 12);
    for section in ["local_storage", "remote_storage"] {
        node.set(section, "keep_last", &last.to_string());
        node.set(section, "keep_daily", &daily.to_string());
        node.set(section, "keep_weekly", &weekly.to_string());
        node.set(section, "keep_monthly", &monthly.to_string());
        node.set(section, "min_keep", "2");
    }
    // The snapshot dir on a disk of its own, filled to the last block for four slots a month.
    let disk = Tmpfs::new("96m");
    let snaps = disk.path().join("snapshots");
    node.set_path("local_storage", "path", &snaps);
    let mut filler = None;
    let nfs = Tmpfs::new("64m");
    node.add_destination(&format!(
        "name = \"nfs\"\ntype = \"fs\"\npath = {:?}\nprefix = \"prod/\"\nkeep_last = 3\nmin_keep = 1\n",
        nfs.path().display().to_string()
    ));
    node.set("", "schedule", "\"0 * * * *\"");
    node.set("drill", "schedule", "\"@weekly\"");
    node.set("records", "successful_history_limit", "50");
    node.set("records", "failed_history_limit", "10");
    let metrics = node.root.path().join("etcdguard.prom");
    node.set(
        "",
        "metrics_file",
        &format!("{:?}", metrics.display().to_string()),
    );

    // Monday 4 January 2027, 10 s after midnight: each step puts the clock 10 s past the
    // next hour.
    let start = Utc.with_ymd_and_hms(2027, 1, 4, 0, 0, 10).unwrap();
    let clock = Clock::new(dir.path());
    let at = |k: usize| start + chrono::Duration::hours(k as i64);
    clock.set((at(0) - Utc::now()).num_milliseconds());
    let mut spawned = 0;
    let mut daemon = Running::spawn(&node, &clock, spawned);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut faults = Vec::new();
    for k in 0..slots {
        let month = k % 720;
        match month {
            100 => {
                s3.kill();
                faults.push(format!("slot {k}: S3 down for 6 slots"));
            }
            106 => s3.restart(),
            200 => {
                node.etcd.stop();
                faults.push(format!("slot {k}: etcd down for 3 slots"));
            }
            203 => node.etcd.restart_with_env(&[]),
            // Filled again at each slot: whatever retention freed is taken back.
            400..=403 => {
                filler = Some(disk.fill());
                if month == 400 {
                    faults.push(format!("slot {k}: snapshot disk full for 4 slots"));
                }
            }
            404 => {
                std::fs::remove_file(filler.take().unwrap()).unwrap();
            }
            _ => {}
        }
        let slot = at(k) - chrono::Duration::seconds(10);
        clock.set((at(k) - Utc::now()).num_milliseconds());
        if month == 300 {
            // Killed while the slot's backup runs; the next daemon takes the slot again.
            std::thread::sleep(Duration::from_millis(60));
            drop(daemon);
            faults.push(format!("slot {k}: daemon killed during its backup"));
            spawned += 1;
            daemon = Running::spawn(&node, &clock, spawned);
        }
        wait_until(
            &format!("slot {k} ({slot}) handled"),
            Duration::from_secs(90),
            Duration::from_millis(10),
            || last_handled(&node).is_some_and(|t| t >= slot),
        );
        if k % every == 0 || k + 1 == slots {
            samples.push(sample(k, daemon.pid(), &node));
        }
    }
    // Let a pending copy or drill finish, then stop.
    wait_until(
        "no copy pending",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            records_file(&node)["records"]
                .as_array()
                .is_some_and(|rs| !rs.iter().any(|r| r["remote"]["state"] == "pending"))
        },
    );
    // The metrics file is written right after the records: wait for the last slot's.
    let last_slot = (at(slots - 1) - chrono::Duration::seconds(10)).timestamp() as f64;
    wait_until(
        "the metrics of the last slot",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(&metrics).is_ok_and(|m| {
                m.lines()
                    .find(|l| {
                        l.starts_with(
                            "etcdguard_last_success_timestamp_seconds{destination=\"local\"}",
                        )
                    })
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= last_slot)
            })
        },
    );
    let wall = t0.elapsed();
    drop(daemon);

    eprintln!(
        "{slots} hourly slots in {:.0} s ({:.0} ms a slot); faults: {}",
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1000.0 / slots as f64,
        faults.join("; ")
    );
    eprintln!("| slot | open fds | threads | RSS KiB | records | state dir KiB |\n|---|---|---|---|---|---|");
    for s in &samples {
        eprintln!(
            "| {} | {} | {} | {} | {} | {} |",
            s.slot, s.fds, s.threads, s.rss_kib, s.records, s.state_kib
        );
    }

    // Exactly the tiers of the slots whose backup succeeded (all but the three each month
    // when etcd was down and the four when the disk was full), at every destination.
    let recs = node.records();
    let taken: Vec<DateTime<Utc>> = (0..slots)
        .filter(|k| !(200..203).contains(&(k % 720)) && !(400..404).contains(&(k % 720)))
        .map(|k| at(k) - chrono::Duration::seconds(10))
        .collect();
    let want = kept(&taken, last, daily, weekly, monthly);
    if slots > 404 {
        let full = recs
            .iter()
            .rev()
            .find(|r| {
                r["result"] == "Failed"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|s| s.contains("No space left on device"))
            })
            .expect("a Failed record of a slot when the snapshot disk was full");
        let reason = full["reason"].as_str().unwrap();
        assert!(reason.contains(&snaps.display().to_string()), "{reason}");
    }
    let slots_in =
        |d: &Path| -> BTreeSet<DateTime<Utc>> { db_names(d).iter().map(|n| slot_of(n)).collect() };
    let local = slots_in(&snaps);
    let remote = slots_in(&s3.root.as_ref().unwrap().join(BUCKET).join("prod/cp1"));
    let on_mount = slots_in(&nfs.path().join("prod/cp1"));
    assert_eq!(local, want, "local copies are exactly the tiers");
    assert_eq!(remote, want, "remote copies are exactly the tiers");
    let newest3: BTreeSet<DateTime<Utc>> = taken.iter().rev().take(3).copied().collect();
    assert_eq!(on_mount, newest3, "the fs destination keeps its newest 3");
    let newest = *local.iter().next_back().unwrap();
    // Nothing half-written: only snapshots in the snapshot dir and at the destinations.
    let d = snaps.clone();
    let stray: Vec<String> = crate::util::list_dir(&d)
        .into_iter()
        .filter(|f| !f.ends_with(".db"))
        .collect();
    assert!(stray.is_empty(), "{}: {stray:?}", d.display());
    // Records within their limits: every snapshot that exists, and at most the limits more;
    // each remaining record is of a copy that exists, or within the limits.
    // The weekly drill: its newest record, passed and of the last week, is never trimmed
    // (hourly backups fill a limit of 50 in two days).
    let drills = recs.iter().filter(|r| r["trigger"] == "drill").count();
    let week_ago = at(slots - 1) - chrono::Duration::days(7);
    if slots >= 168 {
        let newest_drill = recs
            .iter()
            .rev()
            .find(|r| r["trigger"] == "drill")
            .expect("the newest drill's record");
        assert_eq!(newest_drill["result"], "Success", "{newest_drill:#}");
        let t: DateTime<Utc> = newest_drill["backupTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(t >= week_ago, "the newest drill is of {t}");
    }
    assert!(
        recs.len() <= local.len() + remote.len() + 50 + 10 + drills,
        "{} records",
        recs.len()
    );
    // The metrics file says the last backup and the copies kept.
    let m = std::fs::read_to_string(&metrics).unwrap();
    let line = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(
        line("etcdguard_snapshots{destination=\"local\"}") as usize,
        local.len()
    );
    if slots >= 168 {
        let drilled = line("etcdguard_last_drill_success_timestamp_seconds");
        assert!(
            drilled >= week_ago.timestamp() as f64,
            "last drill success {drilled}"
        );
    }
    let last_success = line("etcdguard_last_success_timestamp_seconds{destination=\"local\"}");
    assert!(
        (last_success - newest.timestamp() as f64).abs() < 60.0,
        "the metrics' last success {last_success} is not the newest backup's {newest}"
    );
    // A server's lasting limit is said once per daemon, not every hour.
    for n in 0..=spawned {
        let log =
            std::fs::read_to_string(node.root.path().join(format!("daemon-{n}.log"))).unwrap();
        let said = log.matches("cannot list open multipart uploads").count();
        assert!(said <= 1, "daemon {n} said it {said} times");
    }
    // Flat: after the first sample (start-up), no growth in files or threads, RSS bounded.
    let base = samples[1.min(samples.len() - 1)];
    for s in &samples[1..] {
        assert!(s.fds <= base.fds + 4, "open files grew: {samples:?}");
        assert!(s.threads <= base.threads + 4, "threads grew: {samples:?}");
        assert!(
            s.rss_kib <= base.rss_kib * 3 / 2 + 16 * 1024,
            "RSS grew: {samples:?}"
        );
        assert!(s.records <= 50 + 10 + local.len() + remote.len() + drills + 5);
    }
}
