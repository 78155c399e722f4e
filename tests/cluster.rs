//! `per = "cluster"` against three real etcd members (one cluster, TLS in the kubeadm layout),
//! three etcdguard daemons with a fast schedule and clocks a few seconds apart, and one real S3
//! server: one object per slot, the uploader rotating; a killed uploader's slot taken over
//! within the bound; without quorum, the surviving node's own copy, saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::remote::BUCKET;
use crate::util::etcd::{EtcdServer, MemberSpec};
use crate::util::manifest::EtcdPod;
use crate::util::pki::Pki;
use crate::util::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use crate::util::{
    etcdguard_cmd, free_port, schema, stderr, wait_until, with_watchdog_pid, NEWEST,
};

pub(crate) struct Member {
    pub(crate) root: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) etcd: EtcdServer,
    pub(crate) daemon: Option<Child>,
}

impl Member {
    fn state_dir(&self) -> PathBuf {
        self.root.path().join("var/lib/etcdguard")
    }

    pub(crate) fn records(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(self.state_dir().join("records.json")) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        v["records"].as_array().unwrap().clone()
    }

    /// Scheduled backups that succeeded, by slot.
    pub(crate) fn by_slot(&self) -> BTreeMap<String, Value> {
        self.records()
            .into_iter()
            .filter(|r| {
                (r["trigger"] == "schedule" || r["trigger"] == "catch-up")
                    && r["result"] == "Success"
            })
            .filter_map(|r| {
                let slot = r["remote"]["cluster"]["slot"].as_str()?.to_string();
                Some((slot, r))
            })
            .collect()
    }

    fn start(&mut self, offset_ms: i64) {
        let cmd = etcdguard_cmd(&["--config", self.config.to_str().unwrap(), "run"]);
        self.spawn(offset_ms, cmd);
    }

    /// Starts the daemon with more environment, looking at the clock every second
    /// (`tests/clock.rs`: a steppable clock).
    pub(crate) fn start_with(&mut self, offset_ms: i64, env: &[(&str, &std::ffi::OsStr)]) {
        let mut cmd = etcdguard_cmd(&["--config", self.config.to_str().unwrap(), "run"]);
        cmd.envs(env.iter().copied());
        self.spawn(offset_ms, with_watchdog_pid(&cmd));
    }

    fn spawn(&mut self, offset_ms: i64, mut cmd: std::process::Command) {
        let child = cmd
            .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
            .env("ETCDGUARD_TEST_CLOCK_OFFSET_MS", offset_ms.to_string())
            .env("WATCHDOG_USEC", "2000000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.root.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    pub(crate) fn stop(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.daemon.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGKILL);
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.root.path().join("daemon.log"));
            eprintln!(
                "---- daemon log of {}:\n{}",
                self.etcd.name,
                log.unwrap_or_default()
            );
        }
    }
}

/// Three members of one cluster, each a kubeadm-style node with an etcdguard config whose
/// remote storage is `s3` with `per = "cluster"`; `extra` is appended to every config.
pub(crate) fn three_nodes(
    s3: &S3Server,
    schedule: &str,
    extra: &str,
) -> (tempfile::TempDir, Vec<Member>) {
    let shared = tempfile::tempdir().unwrap();
    let pki = Pki::create(&shared.path().join("pki"));
    let creds = shared.path().join("s3-credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let names = ["cp1", "cp2", "cp3"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(n, (_, p))| format!("{n}=https://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut members: Vec<Member> = names
        .iter()
        .zip(&ports)
        .map(|(name, (cp, pp))| {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("var/lib")).unwrap();
            let etcd = EtcdServer::spawn_member(
                NEWEST,
                MemberSpec {
                    name: name.to_string(),
                    data_dir: root.path().join("var/lib/etcd"),
                    pki_dir: pki.dir.clone(),
                    client_port: *cp,
                    peer_port: *pp,
                    initial_cluster: initial.clone(),
                },
            );
            let manifests = root.path().join("etc/kubernetes/manifests");
            std::fs::create_dir_all(&manifests).unwrap();
            let manifest = EtcdPod {
                version: NEWEST,
                name,
                client_port: *cp,
                peer_port: *pp,
                metrics_port: free_port(),
                initial_cluster: &initial,
                state: None,
            }
            .render();
            std::fs::write(manifests.join("etcd.yaml"), manifest).unwrap();
            let p = |f: &str| format!("{:?}", pki.dir.join(f).display().to_string());
            let config = root.path().join("etcdguard.toml");
            let text = format!(
                "schedule = {schedule:?}\nstate_dir = {:?}\n\n[etcd]\nmanifest = {:?}\n\
                 ca_cert = {}\nclient_cert = {}\nclient_key = {}\ntimeout = \"60s\"\n\
                 stall_timeout = \"10s\"\ndial_timeout = \"5s\"\n\n[remote_storage]\n\
                 bucket = {BUCKET:?}\nendpoint = {:?}\nregion = \"us-east-1\"\nprefix = \"prod/\"\n\
                 force_path_style = true\ncredentials_file = {:?}\nstall_timeout = \"5s\"\n\
                 timeout = \"60s\"\nper = \"cluster\"\ncluster_lease = \"4s\"\n{extra}\n",
                root.path().join("var/lib/etcdguard").display().to_string(),
                manifests.join("etcd.yaml").display().to_string(),
                p("ca.crt"),
                p("healthcheck-client.crt"),
                p("healthcheck-client.key"),
                s3.endpoint,
                creds.display().to_string(),
            );
            std::fs::write(&config, text).unwrap();
            Member {
                root,
                config,
                etcd,
                daemon: None,
            }
        })
        .collect();
    for m in &mut members {
        assert!(
            m.etcd.wait_healthy(Duration::from_secs(30)),
            "member did not join: {}",
            m.etcd.log_tail()
        );
    }
    let check = etcdguard_cmd(&[
        "--config",
        members[0].config.to_str().unwrap(),
        "config",
        "check",
    ])
    .env("ETCDGUARD_TEST_SECONDS_SCHEDULE", "1")
    .output()
    .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("per = \"cluster\""),
        "config check prints the mode"
    );
    (shared, members)
}

/// How often the waits look.
const EVERY: Duration = Duration::from_millis(200);

/// Snapshot objects (not sidecars) under `prefix` in the bucket.
pub(crate) fn objects(s3: &S3Server, prefix: &str) -> Vec<String> {
    s3.keys(BUCKET)
        .into_iter()
        .filter(|k| k.starts_with(prefix) && !k.ends_with(".json"))
        .collect()
}

#[test]
fn one_copy_per_slot_for_three_nodes_with_skewed_clocks_and_own_copies_without_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    let (_shared, mut members) = three_nodes(&s3, "*/4 * * * * *", "");
    for m in &members {
        m.etcd.put_keys("cluster", 300);
    }
    // Clocks 1.5 s ahead and behind: the slots are the schedule's, the same for all.
    for (m, offset) in members.iter_mut().zip([0, 1500, -1500]) {
        m.start(offset);
    }
    // Ten slots that every node has handled and confirmed.
    let confirmed = |members: &[Member]| -> BTreeSet<String> {
        let maps: Vec<BTreeMap<String, Value>> = members.iter().map(Member::by_slot).collect();
        maps[0]
            .keys()
            .filter(|slot| {
                maps.iter().all(|m| {
                    m.get(*slot).is_some_and(|r| {
                        matches!(r["remote"]["state"].as_str(), Some("uploaded" | "covered"))
                    })
                })
            })
            .cloned()
            .collect()
    };
    wait_until(
        "ten confirmed slots",
        Duration::from_secs(120),
        EVERY,
        || confirmed(&members).len() >= 10,
    );
    for m in &mut members {
        m.stop(nix::sys::signal::Signal::SIGTERM);
    }
    let slots = confirmed(&members);
    let maps: Vec<BTreeMap<String, Value>> = members.iter().map(Member::by_slot).collect();
    let mut uploaders = BTreeSet::new();
    let cluster_objects = objects(&s3, "prod/_cluster/");
    for slot in &slots {
        let recs: Vec<&Value> = maps.iter().map(|m| &m[slot]).collect();
        for r in &recs {
            schema::assert_valid("record.v1", &r.to_string());
        }
        let uploaded: Vec<&&Value> = recs
            .iter()
            .filter(|r| r["remote"]["state"] == "uploaded")
            .collect();
        assert_eq!(uploaded.len(), 1, "slot {slot}: {recs:#?}");
        let location = uploaded[0]["remote"]["location"].as_str().unwrap();
        assert!(
            location.starts_with(&format!("s3://{BUCKET}/prod/_cluster/")),
            "{location}"
        );
        let uploader = uploaded[0]["member"]["name"].as_str().unwrap().to_string();
        for r in &recs {
            assert_eq!(r["remote"]["location"], location, "slot {slot}: {r:#}");
            assert_eq!(
                r["remote"]["cluster"]["uploader"],
                uploader.as_str(),
                "{r:#}"
            );
            assert!(r["remote"]["cluster"].get("fallback").is_none(), "{r:#}");
        }
        let key = location.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
        assert!(
            cluster_objects.iter().any(|o| o == key),
            "{key} not in the bucket"
        );
        uploaders.insert(uploader);
    }
    // Exactly one object per slot: every object under the cluster's prefix is one slot's.
    let per_slot: BTreeSet<&str> = slots
        .iter()
        .map(|s| maps[0][s]["remote"]["location"].as_str().unwrap())
        .collect();
    assert_eq!(per_slot.len(), slots.len(), "two slots share an object");
    let handled: BTreeSet<String> = maps.iter().flat_map(|m| m.keys().cloned()).collect();
    // No slot lost: every slot any node backed up is confirmed on all three, but for the one
    // in flight when the daemons stopped (and slots before a node's first).
    let unconfirmed: Vec<&String> = handled
        .iter()
        .filter(|s| !slots.contains(*s) && *s > slots.first().unwrap())
        .collect();
    assert!(unconfirmed.len() <= 1, "slots lost: {unconfirmed:?}");
    assert!(
        cluster_objects.len() <= handled.len(),
        "{} objects for {} slots: {cluster_objects:#?}",
        cluster_objects.len(),
        handled.len()
    );
    assert!(
        uploaders.len() > 1,
        "one node uploaded every slot: {uploaders:?}"
    );
    // No node uploaded a copy of its own while the cluster agreed.
    for n in ["cp1", "cp2", "cp3"] {
        assert_eq!(objects(&s3, &format!("prod/{n}/")), Vec::<String>::new());
    }
    // The slot keys in etcd stay bounded and outside /registry/.
    let keys = members[0]
        .etcd
        .etcdctl(&["get", "--prefix", "/etcdguard/v1/slots/", "--keys-only"]);
    let n = String::from_utf8_lossy(&keys.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert!((1..=32).contains(&n), "{n} slot keys");

    // Two of three members stopped: no quorum. The surviving node's next slot is its own copy,
    // and its record says why.
    members[1].etcd.stop();
    members[2].etcd.stop();
    let before = members[0].by_slot().len();
    members[0].start(0);
    wait_until("a copy of its own", Duration::from_secs(60), EVERY, || {
        members[0].by_slot().values().any(|r| {
            r["remote"]["cluster"]["fallback"].is_string() && r["remote"]["state"] == "uploaded"
        })
    });
    members[0].stop(nix::sys::signal::Signal::SIGTERM);
    let own: Vec<Value> = members[0]
        .by_slot()
        .into_values()
        .filter(|r| r["remote"]["cluster"]["fallback"].is_string())
        .collect();
    assert!(members[0].by_slot().len() > before);
    let r = &own[0];
    assert!(
        r["remote"]["location"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{BUCKET}/prod/cp1/")),
        "{r:#}"
    );
    let why = r["remote"]["cluster"]["fallback"].as_str().unwrap();
    // The reason says what is wrong with etcd (no quorum), not only which call failed.
    assert!(why.contains("no quorum"), "{why}");
    assert_eq!(objects(&s3, "prod/cp1/").len(), own.len());
}

#[test]
fn a_killed_uploader_s_slot_is_taken_over_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), BUCKET);
    // The stream (and so the same-pass upload) at 1 MiB/s: the upload takes ~10 s.
    let (_shared, mut members) = three_nodes(&s3, "*/30 * * * * *", "");
    for m in &members {
        let text = std::fs::read_to_string(&m.config).unwrap().replace(
            "stall_timeout = \"10s\"",
            "stall_timeout = \"10s\"\nrate_limit = \"1MiB/s\"",
        );
        std::fs::write(&m.config, text).unwrap();
    }
    members[0].etcd.put_keys("big", 6000);
    for m in &mut members {
        m.start(0);
    }
    // The slot's uploader, from the slot key (state uploading).
    let mut uploader = None;
    wait_until("a claimed slot", Duration::from_secs(60), EVERY, || {
        let out = members[0].etcd.etcdctl(&[
            "get",
            "--prefix",
            "/etcdguard/v1/slots/",
            "--print-value-only",
        ]);
        uploader = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["state"] == "uploading")
            .and_then(|v| v["member"].as_str().map(str::to_string));
        uploader.is_some()
    });
    std::thread::sleep(Duration::from_secs(2)); // mid-upload
    let dead = uploader.unwrap();
    let i = ["cp1", "cp2", "cp3"]
        .iter()
        .position(|n| *n == dead)
        .unwrap();
    members[i].stop(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let others: Vec<usize> = (0..3).filter(|j| *j != i).collect();
    // The killed slot, as the other nodes recorded it (their first scheduled backup).
    let first = |m: &Member| m.by_slot().into_iter().next();
    let state = |r: &Value| r["remote"]["state"].as_str().unwrap_or("").to_string();
    // Another node completes the slot (its copy uploaded under the cluster's prefix) and the
    // third confirms it.
    wait_until(
        "the slot taken over",
        Duration::from_secs(60),
        EVERY,
        || {
            let recs: Vec<Option<(String, Value)>> =
                others.iter().map(|&j| first(&members[j])).collect();
            let [Some((a, ra)), Some((b, rb))] = [recs[0].clone(), recs[1].clone()] else {
                return false;
            };
            let states = [state(&ra), state(&rb)];
            a == b
                && states.contains(&"uploaded".to_string())
                && states.iter().all(|s| s == "uploaded" || s == "covered")
        },
    );
    let took = killed.elapsed();
    for m in &mut members {
        m.stop(nix::sys::signal::Signal::SIGTERM);
    }
    // Bound: the losers' own backups at 1 MiB/s (~10 s), the lease (4 s) running out, a look
    // every 4 s, and one upload from a local file.
    assert!(took < Duration::from_secs(40), "took {took:?}");
    let (slot, taken) = others
        .iter()
        .map(|&j| first(&members[j]).unwrap())
        .find(|(_, r)| state(r) == "uploaded")
        .unwrap();
    assert_eq!(
        taken["remote"]["cluster"]["uploader"], taken["member"]["name"],
        "{taken:#}"
    );
    let location = taken["remote"]["location"].as_str().unwrap();
    let key = location.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
    let objects = objects(&s3, "prod/_cluster/");
    assert!(objects.iter().any(|o| o == key), "{objects:#?}");
    // The killed node's upload never completed: no other object of that slot.
    let stamp = slot[..19].replace(['-', ':'], "").replace('T', "-");
    let of_slot: Vec<&String> = objects
        .iter()
        .filter(|o| o.contains(&stamp[..13]))
        .collect();
    assert_eq!(of_slot.len(), 1, "{of_slot:#?} ({stamp})");
    for &j in &others {
        let (_, r) = first(&members[j]).unwrap();
        assert_eq!(r["remote"]["location"], location, "{r:#}");
    }
}
