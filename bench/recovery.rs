//! The time a lost node takes to serve again (`bench/run --recovery`): a kubeadm 1.37 node
//! (etcd 3.7, a real kube-apiserver under the kubelet stand-in of the tests) whose etcd holds
//! `--size` MiB of ConfigMaps the API server decodes, backed up to a real S3 server (s3s-fs)
//! with a recovery bundle, then brought back two ways until `kubectl get namespaces` answers:
//!
//! - `restore` from the node's local snapshot (the kubelet running, as on a node whose data dir
//!   went bad);
//! - `recover --yes` on a wiped node (only the etcdguard configuration and an age identity
//!   left), then the kubelet started.
//!
//! Phases come from the journals (their steps' times) and from polling etcd and the API
//! server. Beside them the floor, each part alone: downloading the object (rclone), building
//! the data dir (`restore-datadir`), etcd starting on it, the API server starting on that etcd.
//! Prints a Markdown report; the test support (`tests/util`) runs the servers.
//!
//!   cargo bench --bench recovery -- [--size MiB] [--runs N]   (bench/run --recovery does it)

#![allow(dead_code, unused_macros)]

#[path = "../tests/util/mod.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use util::kubenode::KubeNode;
use util::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use util::{etcdguard_cmd, stderr, stdout};

const BUCKET: &str = "recovery-bench";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("recovery: a benchmark (it fills a 1 GiB etcd); run it with bench/run --recovery");
        return;
    }
    let mut size = 1024u64;
    let mut runs = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = args.next().unwrap().parse().unwrap(),
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}: use --size MiB --runs N"),
        }
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fill = here.join("target/release/examples/bench-fill");
    assert!(
        fill.is_file(),
        "{} not found: bench/run --recovery builds it",
        fill.display()
    );
    let rclone = which("rclone").expect("rclone not found: bench/run --recovery installs it");
    let work = here.join("bench/work/recovery");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let mut b = Bench::set_up(&work, size, &fill);
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut add = |name: &'static str, v: f64| match rows.iter_mut().find(|(n, _)| *n == name) {
        Some((_, vs)) => vs.push(v),
        None => rows.push((name, vec![v])),
    };
    for run in 0..runs {
        eprintln!("== run {}/{runs}", run + 1);
        for (name, secs) in b.floor(&rclone) {
            add(name, secs);
        }
        for (name, secs) in b.restore() {
            add(name, secs);
        }
        for (name, secs) in b.recover() {
            add(name, secs);
        }
    }
    print!("{}", b.report(size, runs, &rows));
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

/// The node, its bucket and what the backup made.
struct Bench {
    node: KubeNode,
    s3: S3Server,
    work: PathBuf,
    identity: PathBuf,
    /// The node's snapshot file (plain), copied out of the node's root.
    local: PathBuf,
    /// The snapshot's key in the bucket (sealed).
    key: String,
    db_mib: u64,
    revision: i64,
}

impl Bench {
    fn set_up(work: &Path, size: u64, fill: &Path) -> Bench {
        let mut node = KubeNode::with_apiserver("cp1", 3);
        let s3 = S3Server::s3s_fs(&work.join("s3"), BUCKET);
        let creds = work.join("s3-credentials");
        write_0600(
            &creds,
            &format!(
                "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = \
                 {SECRET_KEY}\n"
            ),
        );
        let id = age::x25519::Identity::generate();
        let identity = work.join("identity.txt");
        {
            use age::secrecy::ExposeSecret;
            write_0600(&identity, &format!("{}\n", id.to_string().expose_secret()));
        }
        let root = node.root.path().to_path_buf();
        let bucket = format!(
            "[remote_storage]\nbucket = {BUCKET:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
             prefix = \"prod/\"\nforce_path_style = true\ncredentials_file = {:?}\n\n\
             [encryption]\nrecipients = [{:?}]\n",
            s3.endpoint,
            creds.display().to_string(),
            id.to_public().to_string()
        );
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str(&format!(
            "\n{bucket}\n[bundle]\nroot = {:?}\n",
            root.display().to_string()
        ));
        std::fs::write(&node.config, config).unwrap();
        let node_view = root.join("etc/etcdguard/etcdguard.toml");
        std::fs::create_dir_all(node_view.parent().unwrap()).unwrap();
        std::fs::write(&node_view, &bucket).unwrap();

        node.start();
        node.wait_healthy(Duration::from_secs(60));
        let k = node.kubectl();
        k.wait_ready(Duration::from_secs(120), || node.apiserver_log_tail());
        eprintln!("== filling etcd to {size} MiB with ConfigMaps");
        let out = Command::new(fill)
            .arg(format!("https://127.0.0.1:{}", node.client_port))
            .arg(node.path("etc/kubernetes/pki/etcd"))
            .arg(size.to_string())
            .arg("configmaps")
            .output()
            .unwrap();
        assert!(out.status.success(), "bench-fill: {}", stderr(&out));
        eprint!("{}", stdout(&out));
        let out = node.etcdguard(&["snapshot"]);
        assert!(out.status.success(), "snapshot: {}", stderr(&out));
        let rec: serde_json::Value = serde_json::from_slice(
            &node
                .etcdguard(&["records", "-o", "json", "--limit", "1"])
                .stdout,
        )
        .unwrap();
        let r = &rec[0];
        // A copy outside the node's root, which `recover`'s wipe takes with it.
        let local = work.join("snapshot.db");
        std::fs::copy(
            r["local"]["path"].as_str().expect("record local.path"),
            &local,
        )
        .unwrap();
        let location = r["remote"]["location"].as_str().expect("remote copy");
        let key = location
            .split_once(&format!("{BUCKET}/"))
            .map(|(_, k)| k.to_string())
            .unwrap();
        let db_mib = std::fs::metadata(&local).unwrap().len() >> 20;
        let revision = r["revision"].as_i64().unwrap();
        Bench {
            node,
            s3,
            work: work.to_path_buf(),
            identity,
            local,
            key,
            db_mib,
            revision,
        }
    }

    /// Seconds until `kubectl get namespaces` answers.
    fn wait_api(&self, t0: Instant) -> f64 {
        let k = self.node.kubectl();
        let ok = util::poll_until(Duration::from_secs(600), Duration::from_millis(200), || {
            k.run(&["get", "namespaces", "-o", "name"])
                .status
                .success()
                .then_some(())
        });
        assert!(ok.is_some(), "{}", self.node.apiserver_log_tail());
        t0.elapsed().as_secs_f64()
    }

    /// Seconds until etcd answers `endpoint health`.
    fn wait_etcd(&self, t0: Instant) -> f64 {
        self.node.wait_healthy(Duration::from_secs(600));
        t0.elapsed().as_secs_f64()
    }

    /// Each part of the floor alone.
    fn floor(&mut self, rclone: &Path) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        let dl = self.work.join("download");
        let conf = self.work.join("rclone.conf");
        write_0600(&conf, "");
        let mut rc = Command::new(rclone);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                rc.env_remove(k);
            }
        }
        let t0 = Instant::now();
        let st = rc
            .args(["copyto", &format!("s3:{BUCKET}/{}", self.key)])
            .arg(&dl)
            .env("RCLONE_CONFIG", &conf)
            .env("RCLONE_CONFIG_S3_TYPE", "s3")
            .env("RCLONE_CONFIG_S3_PROVIDER", "Other")
            .env("RCLONE_CONFIG_S3_ENDPOINT", &self.s3.endpoint)
            .env("RCLONE_CONFIG_S3_REGION", "us-east-1")
            .env("RCLONE_CONFIG_S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("RCLONE_CONFIG_S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "rclone copyto {}: {}",
            self.key,
            stderr(&st)
        );
        out.push((
            "floor: download the object (rclone)",
            t0.elapsed().as_secs_f64(),
        ));
        std::fs::remove_file(&dl).unwrap();

        // The data dir for this node, built alone, then started by the kubelet as a restore
        // leaves it.
        let built = self.work.join("floor-etcd");
        let _ = std::fs::remove_dir_all(&built);
        let peer = manifest_flag(&self.node, "initial-advertise-peer-urls");
        let args = util::restore_datadir_args(
            &self.local,
            &built,
            "cp1",
            &peer,
            "floor",
            &[
                "--initial-cluster",
                &format!("cp1={peer}"),
                "--target-version",
                "3.7",
                "--bump-revision",
                "1000000000",
                "--mark-compacted",
            ],
        );
        let t0 = Instant::now();
        let o = etcdguard_cmd(&args).output().unwrap();
        assert!(o.status.success(), "restore-datadir: {}", stderr(&o));
        out.push(("floor: restore-datadir", t0.elapsed().as_secs_f64()));
        out.extend(self.start_on(&built));
        out
    }

    /// The kubelet stopped, `dir` put in place of the node's data dir, the kubelet started:
    /// etcd healthy, then the API server answering, each timed from its own start.
    fn start_on(&mut self, dir: &Path) -> Vec<(&'static str, f64)> {
        self.node.kubelet = None;
        let live = self.node.path("var/lib/etcd");
        let aside = self.node.path("var/lib/etcd.bench-aside");
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(&live, &aside).unwrap();
        std::fs::rename(dir, &live).unwrap();
        let t0 = Instant::now();
        self.node.start();
        let etcd = self.wait_etcd(t0);
        let t1 = Instant::now();
        let api = self.wait_api(t1);
        // Back to the node's own data.
        self.node.kubelet = None;
        std::fs::remove_dir_all(&live).unwrap();
        std::fs::rename(&aside, &live).unwrap();
        self.node.start();
        self.wait_etcd(Instant::now());
        self.wait_api(Instant::now());
        vec![
            ("floor: etcd start on the built dir", etcd),
            ("floor: API server start on that etcd", api),
        ]
    }

    /// `restore` from the local file, the kubelet running.
    fn restore(&self) -> Vec<(&'static str, f64)> {
        let t0 = Instant::now();
        let started = Utc::now();
        let out = self.node.restore(&[
            "--snapshot",
            self.local.to_str().unwrap(),
            "--yes",
            "--force",
            "--timeout",
            "600s",
        ]);
        assert!(
            out.status.success(),
            "restore: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let restored = t0.elapsed().as_secs_f64();
        let api = self.wait_api(t0);
        let j = journal_since(self.node.root.path(), started, "apiserver-stopped");
        let at = |step: &str| secs(started, j.done(step));
        vec![
            ("restore: API server and etcd stopped", at("etcd-stopped")),
            (
                "restore: data dir built",
                at("data-dir-built") - at("etcd-stopped"),
            ),
            (
                "restore: etcd healthy",
                at("etcd-healthy") - at("data-dir-built"),
            ),
            ("restore: command done", restored),
            ("restore: API server answers", api - restored),
            ("restore: total", api),
        ]
    }

    /// A wiped node: `recover --yes`, then the kubelet started.
    fn recover(&mut self) -> Vec<(&'static str, f64)> {
        let root = self.node.root.path().to_path_buf();
        self.node.kubelet = None;
        util::kubenode::wipe(&root);
        let t0 = Instant::now();
        let started = Utc::now();
        let out = etcdguard_cmd(&[
            "recover",
            "--root",
            root.to_str().unwrap(),
            "--node",
            "cp1",
            "--identity",
            self.identity.to_str().unwrap(),
            "--yes",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "recover: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let recovered = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        self.node.start();
        let etcd = self.wait_etcd(t1);
        let api = self.wait_api(t1);
        let r = journal_since(&root, started, "files-placed");
        let g = journal_since(&root, started, "data-dir-built");
        let placed = secs(started, r.started("files-placed"));
        let built = secs(started, g.done("data-dir-built"));
        vec![
            ("recover: list, download and open the bundle", placed),
            (
                "recover: download, open the snapshot and build the data dir",
                built - placed,
            ),
            ("recover: command done", recovered),
            ("recover: kubelet start to etcd healthy", etcd),
            ("recover: etcd healthy to API server answers", api - etcd),
            ("recover: total", recovered + api),
        ]
    }

    fn report(&self, size: u64, runs: usize, rows: &[(&str, Vec<f64>)]) -> String {
        let get = |n: &str| {
            rows.iter()
                .find(|(r, _)| *r == n)
                .map(|(_, v)| median(v))
                .unwrap_or(f64::NAN)
        };
        let floor_dl = get("floor: download the object (rclone)");
        let floor_build = get("floor: restore-datadir");
        let floor_etcd = get("floor: etcd start on the built dir");
        let floor_api = get("floor: API server start on that etcd");
        let floor_restore = floor_build + floor_etcd + floor_api;
        let floor_recover = floor_dl + floor_restore;
        let mut s = format!(
            "# Recovery time, {size} MiB asked, {} MiB snapshot (revision {}), {runs} run(s)\n\n\
             `cargo bench --bench recovery -- --size {size} --runs {runs}` on {}: etcd 3.7, {}, \
             s3s-fs on loopback, the snapshot sealed with age and zstd ([encryption]).\n\n\
             | phase | median s | runs |\n|---|---|---|\n",
            self.db_mib,
            self.revision,
            Utc::now().format("%Y-%m-%d"),
            util::kubeapi::apiserver_version(),
        );
        for (name, v) in rows {
            let all: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
            s.push_str(&format!(
                "| {name} | {:.1} | {} |\n",
                median(v),
                all.join(", ")
            ));
        }
        s.push_str(&format!(
            "\n| case | total s | floor s | ratio |\n|---|---|---|---|\n\
             | restore from the local file | {:.1} | {floor_restore:.1} (build + etcd + API \
             server) | {:.2} |\n| recover of a wiped node | {:.1} | {floor_recover:.1} \
             (download + build + etcd + API server) | {:.2} |\n",
            get("restore: total"),
            get("restore: total") / floor_restore,
            get("recover: total"),
            get("recover: total") / floor_recover,
        ));
        s
    }
}

fn write_0600(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The value of `--<flag>` in the node's etcd manifest.
fn manifest_flag(node: &KubeNode, flag: &str) -> String {
    let text = std::fs::read_to_string(node.path("etc/kubernetes/manifests/etcd.yaml")).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("- --{flag}=")))
        .unwrap_or_else(|| panic!("no --{flag} in the etcd manifest"))
        .to_string()
}

/// A journal's steps.
struct Journal(Vec<(String, String, DateTime<Utc>)>);

impl Journal {
    fn at(&self, step: &str, state: &str) -> DateTime<Utc> {
        self.0
            .iter()
            .find(|(s, st, _)| s == step && st == state)
            .map(|(_, _, at)| *at)
            .unwrap_or_else(|| panic!("no {step} {state} in the journal"))
    }
    fn done(&self, step: &str) -> DateTime<Utc> {
        self.at(step, "done")
    }
    fn started(&self, step: &str) -> DateTime<Utc> {
        self.at(step, "started")
    }
}

/// The newest `journal.json` under `root` written since `since` that has `step`.
fn journal_since(root: &Path, since: DateTime<Utc>, step: &str) -> Journal {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "journal.json") {
                found.push(p);
            }
        }
    }
    for p in found {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let steps: Vec<(String, String, DateTime<Utc>)> = v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s["step"].as_str()?.to_string(),
                    s["state"].as_str()?.to_string(),
                    s["at"].as_str()?.parse().ok()?,
                ))
            })
            .collect();
        if steps.iter().any(|(s, _, at)| s == step && *at >= since) {
            return Journal(steps);
        }
    }
    panic!(
        "no journal with {step} since {since} under {}",
        root.display()
    )
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}
