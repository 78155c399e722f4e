//! Shared test support: real etcd servers with a kubeadm-layout PKI, a kubeadm-style node
//! root, a byte-level TCP proxy for fault injection, and helpers to run the etcdguard binary.
//!
//! Binaries come from `$ETCDGUARD_ETCD_DIR` or the project cache `.cache/etcd/<version>/`,
//! filled by `scripts/install-test-deps`. A missing binary fails the test with that pointer;
//! nothing is ever skipped.

/// One `#[test]` per etcd version, each calling `$f` with it:
/// `per_version!(f => test_for_3_5: "3.5", test_for_3_6: "3.6");`.
macro_rules! per_version {
    ($f:ident => $($name:ident: $v:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $f($v);
            }
        )+
    };
}

pub mod etcd;
pub mod kubeapi;
pub mod kubelet;
pub mod kubenode;
pub mod manifest;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod s3;
pub mod schema;
pub mod storage;

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The peer URL the single-member restores advertise.
pub const PEER_URL: &str = "https://127.0.0.1:2380";

/// The `etcdguard restore-datadir` command line of `snap` into `data_dir` for the member `name`
/// advertising `peer_url` in the cluster `token`, then `extra` (`--initial-cluster`,
/// `--target-version`, the bump flags, `--identity`, ...).
pub fn restore_datadir_args(
    snap: &Path,
    data_dir: &Path,
    name: &str,
    peer_url: &str,
    token: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "restore-datadir".to_string(),
        snap.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--name".into(),
        name.into(),
        "--initial-advertise-peer-urls".into(),
        peer_url.into(),
        "--initial-cluster-token".into(),
        token.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `etcdguard restore-datadir` of `snap` into `dir`, for etcd `version`, as the member `plan`
/// describes (its bump flags are the caller's, in `extra`).
pub fn restore_datadir(
    snap: &Path,
    dir: &Path,
    plan: &etcdguard::restore::datadir::RestorePlan,
    version: &str,
    extra: &[&str],
) -> Output {
    let mut args = restore_datadir_args(
        snap,
        dir,
        &plan.name,
        &plan.advertise_peer_urls,
        &plan.token,
        &[
            "--initial-cluster",
            &plan.initial_cluster,
            "--target-version",
            version,
        ],
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    etcdguard(&args)
}

/// Asserts that the command's stderr contains `needle`, showing stderr when it does not.
pub fn assert_stderr_has(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(err.contains(needle), "wanted {needle:?} in stderr:\n{err}");
}

/// `etcdctl` of etcd `version` against `endpoint`, as the kubeadm healthcheck client of the
/// PKI in `pki_dir`; the caller adds flags and the command.
pub fn etcdctl_tls(version: &str, endpoint: &str, pki_dir: &Path) -> Command {
    let p = |f: &str| pki_dir.join(f).display().to_string();
    let mut c = Command::new(etcd_binary(version, "etcdctl"));
    c.env("ETCDCTL_API", "3").args([
        "--endpoints",
        endpoint,
        "--cacert",
        &p("ca.crt"),
        "--cert",
        &p("healthcheck-client.crt"),
        "--key",
        &p("healthcheck-client.key"),
    ]);
    c
}

/// A program installed into the test cache (`.cache/<rel>`) by `scripts/install-test-deps`;
/// a missing one fails the test with that pointer.
pub fn cache_bin(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache")
        .join(rel);
    assert!(
        p.is_file(),
        "{} not found: run scripts/install-test-deps",
        p.display()
    );
    p
}

/// A program from a Debian package (`/usr/bin/<name>`), which `scripts/install-test-deps`
/// installs; a missing one fails the test with that pointer.
pub fn system_bin(name: &str, package: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.is_file(),
        "{} not found: run scripts/install-test-deps (it installs Debian's {package})",
        p.display()
    );
    p
}

/// Where the etcd binaries live.
pub fn etcd_cache_dir() -> PathBuf {
    match std::env::var_os("ETCDGUARD_ETCD_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/etcd"),
    }
}

/// The path of `binary` (etcd, etcdctl, etcdutl) for the newest cached version starting with
/// `version_prefix` ("3.5", "3.6", "3.7"). Panics with the install pointer when it is missing.
pub fn etcd_binary(version_prefix: &str, binary: &str) -> PathBuf {
    let dir = etcd_cache_dir();
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{version_prefix}.")))
                })
                .filter(|p| p.join(binary).is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|d| d.join(binary)).unwrap_or_else(|| {
        panic!(
            "etcd {version_prefix}.x binary `{binary}` not found under {} \
             (or $ETCDGUARD_ETCD_DIR): run scripts/install-test-deps",
            dir.display()
        )
    })
}

/// The newest etcd minor the tests run (what kubeadm 1.37 ships): the daemon and remote tests
/// use it; the engine, backup and restore tests run every supported minor.
pub const NEWEST: &str = "3.7";

/// A port free on 127.0.0.1 now, never handed out before in this run. The ports come from
/// below the kernel's ephemeral range (32768 and up), in turn: the tests run in one process,
/// so two tests never get the same port, and no outgoing connection or port-0 listener of
/// another test (an API server, a storage server) takes one a test let go of and expects to
/// stay free (a restore checks that etcd's ports are closed).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20000;
    const HIGH: u32 = 32000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        LOW + std::process::id() % 4000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (LOW + (n - LOW) % (HIGH - LOW)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A small seeded pseudo-random generator (xorshift64*): one seed, one sequence, so a run can
/// be repeated from the seed it printed. Not for anything secret.
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (made odd: the state must never be zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }

    /// `n` bytes of the sequence (incompressible data).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..n.div_ceil(8))
            .flat_map(|_| self.next_u64().to_le_bytes())
            .collect();
        v.truncate(n);
        v
    }
}

/// Calls `f` until it gives `Some`, every `every`, for at most `within`: what it gave, or
/// `None` when it never did (the caller decides what a timeout means). `f` runs at least once,
/// and once more after the last pause.
pub fn poll_until<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits until `done` holds, asking every `every`; after `within` fails the test saying it
/// timed out after `within` waiting for `what`.
pub fn wait_until(what: &str, within: Duration, every: Duration, mut done: impl FnMut() -> bool) {
    if poll_until(within, every, || done().then_some(())).is_none() {
        panic!("timed out after {within:?} waiting for {what}");
    }
}

/// Waits up to 30 s until `name`, spawned as `child` with its output in `log`, accepts
/// connections on 127.0.0.1:`port`; fails the test with that log when it exits first.
pub fn wait_listening(name: &str, child: &mut Child, port: u16, log: &Path) {
    let what = format!("{name} to listen");
    wait_until(
        &what,
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "{name} exited ({st}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    );
}

/// Stops `child`: SIGTERM, then SIGKILL when it has not exited within `grace`; reaps it.
pub fn terminate(mut child: Child, grace: Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exited = poll_until(grace, Duration::from_millis(50), || {
        child.try_wait().ok().flatten()
    });
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs the etcdguard binary with `args`, a clean environment for its logs, and returns
/// its output.
pub fn etcdguard<S: AsRef<OsStr>>(args: &[S]) -> Output {
    etcdguard_cmd(args).output().expect("run etcdguard")
}

pub fn etcdguard_cmd<S: AsRef<OsStr>>(args: &[S]) -> Command {
    etcdguard_cmd_of(Path::new(env!("CARGO_BIN_EXE_etcdguard")), args)
}

/// Like `etcdguard_cmd`, for a copy of the binary at `bin`.
pub fn etcdguard_cmd_of<S: AsRef<OsStr>>(bin: &Path, args: &[S]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .env_remove("ETCDGUARD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("ETCDGUARD_LOG", "info");
    // The machine's AWS_* variables must not change what a test means; instance metadata is
    // never asked (it is not a loopback address).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// `cmd` run through a shell that sets `WATCHDOG_PID` to its own pid and execs it: sd_notify
/// counts `WATCHDOG_USEC` only for that pid, and the daemon's loop then looks at the clock
/// every half of it (else every minute).
pub fn with_watchdog_pid(cmd: &Command) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A single-threaded tokio runtime for test-side etcd clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The entries of `dir`, sorted, as names.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every top-level bucket of an etcd db with its keys and values, read with etcdguard's bbolt
/// reader: equality independent of the page layout (which differs between bbolt versions, and
/// between two snapshots of one server: every Snapshot RPC forces a commit). A snapshot's
/// sha256 trailer is left out.
pub type Buckets = std::collections::BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

pub fn db_buckets(path: &Path) -> Buckets {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let len = if size % 512 == 32 { size - 32 } else { size };
    let db = etcdguard::etcddb::Db::open(f, len).unwrap();
    let mut out = Buckets::default();
    let mut top = String::new();
    let report = etcdguard::etcddb::check_and_walk(
        &db,
        &mut |depth: usize, k: &[u8], v: &[u8], is_bucket: bool| match depth {
            0 => {
                top = String::from_utf8_lossy(k).into_owned();
                out.entry(top.clone()).or_default();
            }
            1 => out
                .get_mut(&top)
                .unwrap()
                .push((k.to_vec(), if is_bucket { vec![] } else { v.to_vec() })),
            _ => {}
        },
    );
    assert!(report.is_ok(), "{}: {:?}", path.display(), report.lines());
    out
}

/// A tmpfs of `size` mounted on a new directory; unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the disk tests need root and mount): {}",
            stderr(&out)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills it to the last byte.
    pub fn fill(&self) -> PathBuf {
        let p = self.dir.path().join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", p.display()))
            .output();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}
