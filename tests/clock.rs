//! The daemon while the wall clock jumps under it. Its clock is the test-only steppable one
//! (`ETCDGUARD_TEST_CLOCK_FILE`): the test rewrites a file and the running daemon's next look
//! at the clock sees the new time. A real daemon with a 2-second schedule, local copies (ttl)
//! and an fs destination (keep_last) lives through the clock stepping back an hour, forward a
//! day, and back two days across the ttl; three `per = "cluster"` daemons with clocks seconds
//! apart, one of them stepped back an hour and forward again, still give each slot one copy.
//! What each jump does is what README's "When the clock jumps" says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::cluster::{objects, three_nodes, Member};
use crate::remote::BUCKET;
use crate::util::node::Node;
use crate::util::s3::S3Server;
use crate::util::{
    etcdguard_cmd, poll_until, schema, stdout, wait_until, with_watchdog_pid, NEWEST,
};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// How often the waits look.
const EVERY: Duration = Duration::from_millis(200);

/// The file the daemon's clock offset is read from.
pub(crate) struct Clock {
    path: PathBuf,
}

impl Clock {
    pub(crate) fn new(dir: &Path) -> Clock {
        let c = Clock {
            path: dir.join("clock-offset-ms"),
        };
        c.set(0);
        c
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the offset, in one step (a new file renamed over the old one).
    pub(crate) fn set(&self, ms: i64) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, ms.to_string()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

/// A running `etcdguard run`, its log in a file; killed when dropped, the log shown on panic.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(config: &Path, clock: &Clock, log: PathBuf, offset_ms: i64) -> Daemon {
        let cmd = etcdguard_cmd(&["--config", config.to_str().unwrap(), "run"]);
        let child = with_watchdog_pid(&cmd)
            .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
            .env("ETCDGUARD_TEST_CLOCK_FILE", &clock.path)
            .env("ETCDGUARD_TEST_CLOCK_OFFSET_MS", offset_ms.to_string())
            // The loop looks at the clock at least every second (half the watchdog interval).
            .env("WATCHDOG_USEC", "2000000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the daemon exited: {}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- daemon log {}:\n{}", self.log.display(), self.log());
        }
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// The scheduled (and catch-up) backups that succeeded, in the records' order.
fn backups(node: &Node) -> Vec<Value> {
    if !node.state_dir().join("records.json").exists() {
        return Vec::new();
    }
    node.records()
        .into_iter()
        .filter(|r| {
            (r["trigger"] == "schedule" || r["trigger"] == "catch-up") && r["result"] == "Success"
        })
        .collect()
}

/// The snapshots on the fs destination.
fn on_mount(mount: &Path) -> BTreeSet<String> {
    crate::util::list_dir(&mount.join("prod/cp1"))
        .into_iter()
        .filter(|f| f.ends_with(".db"))
        .collect()
}

/// Waits (up to `within`) until `n` more backups than `before` are recorded; all of them.
fn wait_backups(node: &Node, before: usize, n: usize, what: &str) -> Vec<Value> {
    wait_until(what, Duration::from_secs(40), EVERY, || {
        backups(node).len() >= before + n
    });
    backups(node)
}

/// What retention promises, whatever the clock did: the newest two local copies (min_keep, in
/// the records' order) and the newest three at the fs destination (keep_last) are there; a
/// ttl deletion only of a copy older than the ttl by the clock that deleted it; no file twice.
fn assert_retention_promises(node: &Node, mount: &Path, phase: &str) {
    let recs = backups(node);
    let names: Vec<&str> = recs
        .iter()
        .map(|r| r["fileName"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{phase}: a file name twice");
    let local = node.snapshot_files();
    for r in recs.iter().rev().take(2) {
        assert_eq!(r["local"]["state"], "present", "{phase}: {r:#}");
        assert!(local.contains(&r["fileName"].as_str().unwrap().to_string()));
    }
    for r in &recs {
        if r["local"]["state"] == "deleted" {
            let why = r["local"]["deletedReason"].as_str().unwrap();
            assert!(why.contains("ttl"), "{phase}: {why}");
            let age = time(&r["local"]["deletedAt"]) - time(&r["backupTimestamp"]);
            assert!(
                age > chrono::Duration::hours(20),
                "{phase}: deleted at age {age}: {r:#}"
            );
        }
    }
    // Remote retention runs after the upload; give it a moment.
    let want: BTreeSet<String> = recs
        .iter()
        .rev()
        .take(3)
        .map(|r| r["fileName"].as_str().unwrap().to_string())
        .collect();
    let seen = poll_until(Duration::from_secs(10), EVERY, || {
        let have = on_mount(mount);
        want.is_subset(&have).then_some(have)
    });
    assert!(
        seen.is_some(),
        "{phase}: the newest three backups are not all at the fs destination: want {want:?}, \
         have {:?}; records {:#?}",
        on_mount(mount),
        backups(node)
            .iter()
            .map(|r| (
                &r["fileName"],
                &r["remote"]["state"],
                &r["remote"]["deletedReason"]
            ))
            .collect::<Vec<_>>()
    );
}

/// The backup timestamps of `recs` never go back.
fn assert_in_order(recs: &[Value], phase: &str) {
    let t: Vec<DateTime<Utc>> = recs.iter().map(|r| time(&r["backupTimestamp"])).collect();
    assert!(
        t.windows(2).all(|w| w[0] <= w[1]),
        "{phase}: out of order: {t:?}"
    );
}

#[test]
fn a_daemon_lives_through_back_an_hour_forward_a_day_and_back_across_the_ttl() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("c", 200);
    node.set("", "schedule", "\"*/2 * * * * *\"");
    node.set("local_storage", "ttl", "\"20h\"");
    node.set("local_storage", "min_keep", "2");
    let mount = tempfile::tempdir().unwrap();
    node.add_destination(&format!(
        "name = \"nfs\"\ntype = \"fs\"\npath = {:?}\nprefix = \"prod/\"\nrequire_mount = false\n\
         keep_last = 3\nmin_keep = 2\n",
        mount.path().display().to_string()
    ));
    let clock = Clock::new(node.root.path());
    let mut daemon = Daemon::spawn(&node.config, &clock, node.path("daemon.log"), 0);

    // Steady: a few on-time backups.
    let steady = wait_backups(&node, 0, 4, "four scheduled backups");
    assert_in_order(&steady, "steady");
    assert_retention_promises(&node, mount.path(), "steady");

    // Back an hour: every slot of the coming hour is one the daemon already handled. None is
    // taken again; the daemon says why it waits, and stays alive.
    clock.set(-HOUR);
    std::thread::sleep(Duration::from_millis(2500)); // a backup in flight at the step ends
    let at_step = backups(&node).len();
    std::thread::sleep(Duration::from_secs(6));
    daemon.assert_alive();
    assert_eq!(
        backups(&node).len(),
        at_step,
        "a slot taken twice after the clock went back an hour"
    );
    assert!(
        daemon.log().contains("behind the last handled slot"),
        "the pause is not explained: {}",
        daemon.log()
    );
    assert_retention_promises(&node, mount.path(), "back an hour");

    // Forward a day: one backup for the day of slots jumped over (not 43,200): the latest of
    // them, seconds old, so on time (a `catch-up` when it is more than 2 minutes late), then
    // the schedule again. The copies of before the jump are now 23 hours old by the clock: past
    // the local ttl (20h), they go, but never the newest two.
    let before = backups(&node).len();
    let stepped = Instant::now();
    clock.set(-HOUR + DAY);
    let after = wait_backups(&node, before, 4, "four backups after the jump");
    let new = &after[before..];
    let elapsed = stepped.elapsed().as_secs() as usize;
    assert!(new.iter().all(|r| r["trigger"] == "schedule"), "{new:#?}");
    assert!(
        new.len() <= elapsed / 2 + 2,
        "{} backups in {elapsed} s of a 2 s schedule",
        new.len()
    );
    let jumped = time(&new[0]["backupTimestamp"]) - time(&after[before - 1]["backupTimestamp"]);
    assert!(jumped > chrono::Duration::hours(22), "{jumped}");
    assert_in_order(&after, "forward a day");
    assert_retention_promises(&node, mount.path(), "forward a day");
    daemon.assert_alive();

    // Back two days, across the ttl: the clock is now behind every copy (more than a day
    // behind the last handled slot, so the daemon starts again from now and says so). The
    // new backups carry earlier times than the ones before them; they are still the newest,
    // and the copies in the "future" are not deleted (their age is zero).
    let before = backups(&node).len();
    let local_deleted = |node: &Node| {
        backups(node)
            .iter()
            .filter(|r| r["local"]["state"] == "deleted")
            .count()
    };
    let deleted_before = local_deleted(&node);
    clock.set(-HOUR - DAY);
    let after = wait_backups(&node, before, 4, "four backups after the clock went back");
    let new = &after[before..];
    assert!(new.iter().all(|r| r["trigger"] == "schedule"), "{new:#?}");
    assert!(
        time(&new[0]["backupTimestamp"]) < time(&after[before - 1]["backupTimestamp"]),
        "the records do not show the step back"
    );
    assert_in_order(new, "back two days");
    assert!(
        daemon
            .log()
            .contains("the clock is more than a day behind the last handled slot"),
        "the step back is not explained: {}",
        daemon.log()
    );
    assert_eq!(
        local_deleted(&node),
        deleted_before,
        "a local copy deleted after the clock went back"
    );
    assert_retention_promises(&node, mount.path(), "back two days");
    daemon.assert_alive();
    drop(daemon);
    // `records` reads them all (the seconds schedule needs the test switch to load).
    let out = etcdguard_cmd(&[
        "--config",
        node.config.to_str().unwrap(),
        "records",
        "--output",
        "json",
    ])
    .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    schema::assert_valid("records.v1", &stdout(&out));
}

/// The slots `m` backed up (scheduled or catch-up, successful), by slot.
fn slots(m: &Member) -> BTreeSet<String> {
    m.by_slot().into_keys().collect()
}

#[test]
fn cluster_slots_agree_while_one_node_steps_back_an_hour_and_another_jumps_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    let (_shared, mut members) = three_nodes(&s3, "*/4 * * * * *", "");
    for m in &members {
        m.etcd.put_keys("cluster", 200);
    }
    // cp1 on time, cp2 1.5 s ahead, cp3 1.5 s behind; cp2's and cp3's clocks can be stepped.
    let clocks: Vec<Clock> = members.iter().map(|m| Clock::new(m.root.path())).collect();
    for ((m, c), offset) in members.iter_mut().zip(&clocks).zip([0, 1500, -1500]) {
        m.start_with(offset, &[("ETCDGUARD_TEST_CLOCK_FILE", c.path.as_os_str())]);
    }
    let all = |members: &[Member]| -> BTreeSet<String> {
        let sets: Vec<BTreeSet<String>> = members.iter().map(slots).collect();
        sets[0]
            .iter()
            .filter(|s| sets.iter().all(|x| x.contains(*s)))
            .cloned()
            .collect()
    };
    wait_until(
        "three slots on every node",
        Duration::from_secs(60),
        EVERY,
        || all(&members).len() >= 3,
    );

    // cp3 steps back an hour: it has handled the slots of that hour already and takes none;
    // the other two go on, one copy per slot.
    let cp3_before = slots(&members[2]);
    clocks[2].set(-HOUR);
    let others = |members: &[Member]| -> BTreeSet<String> {
        slots(&members[0])
            .intersection(&slots(&members[1]))
            .cloned()
            .collect()
    };
    let start = others(&members).len();
    wait_until(
        "three slots without cp3",
        Duration::from_secs(40),
        EVERY,
        || others(&members).len() >= start + 3,
    );
    let paused: BTreeSet<String> = slots(&members[2])
        .difference(&cp3_before)
        .cloned()
        .collect();
    assert!(
        paused.len() <= 1, // one in flight at the step
        "cp3 backed up slots while its clock was an hour behind: {paused:?}"
    );
    // Its clock is put right (forward an hour): it joins the next slot, on time.
    clocks[2].set(0);
    let back = all(&members).len();
    wait_until(
        "three more slots on every node",
        Duration::from_secs(40),
        EVERY,
        || all(&members).len() >= back + 3,
    );

    // cp2 jumps a day ahead: its slots are a day later than the others'; one catch-up, then
    // its own slots, each uploaded by it alone (no other node has them).
    let cp2_before = slots(&members[1]);
    clocks[1].set(DAY);
    let future = |members: &[Member]| -> Vec<String> {
        slots(&members[1])
            .difference(&cp2_before)
            .filter(|s| !slots(&members[0]).contains(*s))
            .cloned()
            .collect()
    };
    wait_until(
        "two slots a day ahead on cp2",
        Duration::from_secs(40),
        EVERY,
        || future(&members).len() >= 2,
    );
    let ahead = future(&members);
    for m in &mut members {
        m.stop(nix::sys::signal::Signal::SIGTERM);
    }

    // Every slot any node backed up has one uploaded copy, and every node that has the slot
    // names that copy.
    let maps: Vec<BTreeMap<String, Value>> = members.iter().map(Member::by_slot).collect();
    let handled: BTreeSet<&String> = maps.iter().flat_map(|m| m.keys()).collect();
    let mut locations = BTreeSet::new();
    for slot in &handled {
        let recs: Vec<&Value> = maps.iter().filter_map(|m| m.get(*slot)).collect();
        let uploaded: Vec<&&Value> = recs
            .iter()
            .filter(|r| r["remote"]["state"] == "uploaded")
            .collect();
        assert!(uploaded.len() <= 1, "slot {slot} uploaded twice: {recs:#?}");
        let Some(up) = uploaded.first() else {
            // The slot in flight when the daemons stopped.
            continue;
        };
        let location = up["remote"]["location"].as_str().unwrap();
        assert!(location.contains("/prod/_cluster/"), "{location}");
        for r in &recs {
            if r["remote"]["state"] == "covered" {
                assert_eq!(r["remote"]["location"], location, "slot {slot}: {r:#}");
            }
            assert!(r["remote"]["cluster"].get("fallback").is_none(), "{r:#}");
        }
        locations.insert(location.to_string());
    }
    for slot in &ahead {
        assert!(
            maps[1][slot]["trigger"] == "catch-up"
                || maps[1][slot]["remote"]["state"] == "uploaded",
            "{:#}",
            maps[1][slot]
        );
        assert!(!maps[0].contains_key(slot) && !maps[2].contains_key(slot));
    }
    let cluster_objects = objects(&s3, "prod/_cluster/");
    assert!(
        cluster_objects.len() <= handled.len(),
        "{} objects for {} slots: {cluster_objects:#?}",
        cluster_objects.len(),
        handled.len()
    );
    for n in ["cp1", "cp2", "cp3"] {
        assert_eq!(objects(&s3, &format!("prod/{n}/")), Vec::<String>::new());
    }
}
