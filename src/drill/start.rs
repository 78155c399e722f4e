//! The drill's optional last check: a real etcd of this node's version started on the built
//! data dir, on loopback ports, serving TLS with the node's own etcd PKI and asking for client
//! certificates (the data dir holds every Secret of the cluster, so nobody without the etcd
//! CA's trust may read it while it runs). It must come up as the planned member of the planned
//! cluster, at the snapshot's revision, with the `hashkv` the snapshot gives offline. The
//! process is killed when the drill ends, whatever happened; until then the API server check
//! (`apiserver`) may read it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::{self, MemberInfo, TlsMaterial};
use crate::etcdversion::{major_minor, Minor};
use crate::kubeadm::EtcdManifest;

/// What the started member must show.
pub(super) struct Expected {
    pub member_id: u64,
    pub cluster_id: u64,
    pub revision: i64,
    /// etcd's HashKV at `revision`, computed from the snapshot (`inspect::hash_kv`).
    pub kv_hash: u32,
}

/// Kills the process when dropped.
pub(super) struct Running(pub(super) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `etcd --version`'s minor.
fn binary_minor(binary: &Path) -> Result<(String, Option<Minor>), String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(str::trim)
        .ok_or_else(|| {
            format!(
                "{} --version printed no \"etcd Version:\" line: is it etcd?",
                binary.display()
            )
        })?
        .to_string();
    let minor = major_minor(&v).and_then(|(a, b)| Minor::of(a, b));
    Ok((v, minor))
}

pub(super) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// The node's etcd server certificate, key and client CA, as its manifest names them, on the
/// node whose files are under `root` (`[bundle] root`, `/` on a node).
pub(super) fn server_tls(manifest: &EtcdManifest, root: &Path) -> Result<[PathBuf; 3], String> {
    let flag = |f: &str| {
        manifest
            .flag(f)
            .map(|p| crate::fsutil::under_root(root, Path::new(&manifest.host_path(p))))
            .ok_or_else(|| format!("the etcd manifest has no --{f}"))
    };
    Ok([
        flag("cert-file")?,
        flag("key-file")?,
        flag("trusted-ca-file")?,
    ])
}

/// Starts etcd `binary` (of `target`'s minor) on the built `data_dir`, serving with the
/// node's etcd `server` certificate, key and client CA, waits for it to answer and compares
/// its answer with `expected`. The running etcd (killed when dropped, so whatever happens) and
/// the check's detail.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_and_compare(
    handle: &tokio::runtime::Handle,
    binary: &Path,
    target: Minor,
    name: &str,
    data_dir: &Path,
    log: PathBuf,
    server: &[PathBuf; 3],
    client_tls: &TlsMaterial,
    expected: &Expected,
    timeout: Duration,
) -> Result<(Started, String), String> {
    let version = version_of(binary, target)?;
    let mut started = spawn(binary, version, name, data_dir, log, server)?;
    let (info, (hash, compact)) =
        wait_for_answer(handle, &mut started, client_tls, expected, timeout)?;
    let detail = compare(&started.version, &info, hash, compact, expected)?;
    Ok((started, detail))
}

/// The binary's etcd version, which must be of `target`'s minor (the version a restore
/// would run).
fn version_of(binary: &Path, target: Minor) -> Result<String, String> {
    let (version, minor) = binary_minor(binary)?;
    if minor != Some(target) {
        return Err(format!(
            "{} is etcd {version}, this node runs etcd {target}: set [drill] etcd_binary to an \
             etcd {target} (a drill must start the version a restore would run)",
            binary.display()
        ));
    }
    Ok(version)
}

/// A started etcd: killed when dropped.
pub(super) struct Started {
    running: Running,
    /// What `etcd --version` said.
    version: String,
    /// Its client URL, `https://127.0.0.1:<port>`.
    pub(super) url: String,
    /// Its output.
    log: PathBuf,
}

impl Started {
    /// The last lines of its log.
    fn log_tail(&self) -> String {
        tail(&self.log, 5)
    }
}

/// The last `n` lines of the log at `path`.
pub(super) fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `binary` on `data_dir` as member `name`: loopback ports, the node's server TLS
/// with client certificates required, its output to `log`, none of the host's `ETCD*`
/// variables.
fn spawn(
    binary: &Path,
    version: String,
    name: &str,
    data_dir: &Path,
    log: PathBuf,
    server: &[PathBuf; 3],
) -> Result<Started, String> {
    let [cert, key, ca] = server;
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let url = format!("https://127.0.0.1:{client_port}");
    let log_file =
        crate::fsutil::create_private_file(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(binary);
    cmd.args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{peer_port}"))
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .arg("--trusted-ca-file")
        .arg(ca)
        .args([
            "--client-cert-auth",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file);
    // The host's ETCD_* variables would become flags of this etcd.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    let running = Running(
        cmd.spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?,
    );
    Ok(Started {
        running,
        version,
        url,
        log,
    })
}

/// Asks the started etcd for its member facts and its hashkv at the expected revision until
/// it answers, exits, or `timeout` passes.
fn wait_for_answer(
    handle: &tokio::runtime::Handle,
    started: &mut Started,
    client_tls: &TlsMaterial,
    expected: &Expected,
    timeout: Duration,
) -> Result<(MemberInfo, (u32, i64)), String> {
    let version = &started.version;
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no answer yet");
    loop {
        if let Ok(Some(status)) = started.running.0.try_wait() {
            return Err(format!(
                "etcd {version} exited ({status}) on the built data dir; its log ends:\n{}",
                started.log_tail()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "etcd {version} did not answer within {timeout:?} ({last_error}); its log \
                 ends:\n{}",
                started.log_tail()
            ));
        }
        let asked = handle.block_on(async {
            let mut c = etcd::connect(&started.url, client_tls, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            let info = etcd::member_info(&mut c, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?;
            let hash = etcd::hash_kv(&mut c, expected.revision, Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((info, hash))
        });
        match asked {
            Ok(a) => return Ok(a),
            Err(e) => {
                last_error = e;
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

/// The started etcd's answer against what the plan and the snapshot say: its member and
/// cluster IDs, its revision and its hashkv (`compact`: its compact revision).
fn compare(
    version: &str,
    info: &MemberInfo,
    hash: u32,
    compact: i64,
    expected: &Expected,
) -> Result<String, String> {
    if (info.id, info.cluster_id) != (expected.member_id, expected.cluster_id) {
        return Err(format!(
            "etcd {version} came up as member {:x} of cluster {:x}; the plan is member {:x} of \
             cluster {:x}",
            info.id, info.cluster_id, expected.member_id, expected.cluster_id
        ));
    }
    if info.revision != expected.revision {
        return Err(format!(
            "etcd {version} serves revision {}; the snapshot's is {}",
            info.revision, expected.revision
        ));
    }
    if expected.kv_hash != hash {
        return Err(format!(
            "etcd {version}'s hashkv at revision {} is {hash} (compact revision {compact}); \
             the snapshot gives {}: the restored keyspace differs",
            expected.revision, expected.kv_hash
        ));
    }
    Ok(format!(
        "etcd {version} started on the built dir as member {:x} of cluster {:x}, revision {}, \
         hashkv {hash} = the snapshot's",
        info.id, info.cluster_id, info.revision
    ))
}
