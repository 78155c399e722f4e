//! A kubelet stand-in for restore tests: it watches a node's static pod dir and runs what the
//! manifests say, as the kubelet would. `etcd.yaml` appears → a real etcd starts from the
//! manifest's command, container paths mapped to the host paths of its hostPath volumes (under
//! the node's root), run by the cached etcd binary of the image tag's minor version (an
//! `etcd:3.6.8-0` image runs the 3.6 binary); it changes → etcd restarts; it goes → etcd is stopped (SIGTERM).
//! `kube-apiserver.yaml` → the real kube-apiserver when the manifest is kubeadm's whole one
//! (it names `--etcd-servers`; `kubeapi.rs` writes it), run from its command with the same
//! path mapping; otherwise (the short manifest of the tests that stop at etcd) a listener on
//! its `--secure-port`, so "the API server stopped" can be observed. A process that exits is
//! started again after a second (a crash loop), as the kubelet does.
//!
//! Tests can pause it (it then ignores the manifest dir) to look at a node between steps.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdguard::kubeadm::EtcdManifest;

use super::kubeapi::kube_binary;
use super::{etcd_binary, terminate, wait_until};

/// What runs for a kube-apiserver manifest.
enum ApiServer {
    /// The short manifest: a listener on its port (held open; dropping it closes the port).
    Listener(#[expect(dead_code, reason = "held for its open port")] TcpListener),
    /// kubeadm's manifest: the real API server.
    Process(Child),
}

#[derive(Default)]
struct State {
    etcd: Option<(Child, String)>,
    apiserver: Option<(ApiServer, String)>,
    /// The manifest texts the runner has acted on (None: no pod).
    seen: (Option<String>, Option<String>),
}

pub struct Kubelet {
    root: PathBuf,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The command line of `program`'s container in a manifest, with container paths turned into
/// host paths: under the node's root, unless a host path already is.
fn host_command(root: &Path, text: &str, program: &str) -> Vec<String> {
    let m = EtcdManifest::parse_container(text, Path::new("manifest.yaml"), program)
        .expect("runner: manifest parses");
    let map = |v: &str| -> String {
        for (vol, mount) in &m.mounts {
            let mount = mount.trim_end_matches('/');
            if v == mount || v.starts_with(&format!("{mount}/")) {
                if let Some((_, host)) = m.host_paths.iter().find(|(n, _)| n == vol) {
                    let rest = &v[mount.len()..];
                    let host = Path::new(host);
                    let host = if host.starts_with(root) {
                        host.to_path_buf()
                    } else {
                        root.join(host.strip_prefix("/").unwrap_or(host))
                    };
                    return host
                        .join(rest.trim_start_matches('/'))
                        .display()
                        .to_string()
                        .trim_end_matches('/')
                        .to_string();
                }
            }
        }
        v.to_string()
    };
    m.flags
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("--{n}={}", map(v)),
            None => format!("--{n}"),
        })
        .collect()
}

/// "3.6" for an `etcd:3.6.8-0` image: which cached etcd runs the manifest.
fn image_minor(text: &str) -> String {
    let m = EtcdManifest::parse(text, Path::new("etcd.yaml")).expect("runner: manifest parses");
    let (major, minor, _) = m.image_version().expect("runner: image tag has a version");
    format!("{major}.{minor}")
}

fn secure_port(text: &str) -> u16 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("- --secure-port="))
        .and_then(|p| p.trim().parse().ok())
        .expect("kube-apiserver manifest with --secure-port")
}

/// Starts what a kube-apiserver manifest says (its `n`th start: `kube-apiserver-<n>.log`).
fn start_apiserver(root: &Path, text: &str, n: u32) -> ApiServer {
    if !text.contains("--etcd-servers=") {
        let l = TcpListener::bind(("127.0.0.1", secure_port(text))).unwrap();
        return ApiServer::Listener(l);
    }
    let log = std::fs::File::create(root.join(format!("kube-apiserver-{n}.log"))).unwrap();
    let child = Command::new(kube_binary("kube-apiserver"))
        .args(host_command(root, text, "kube-apiserver"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("runner: spawn kube-apiserver");
    ApiServer::Process(child)
}

fn stop_apiserver(a: Option<(ApiServer, String)>) {
    if let Some((ApiServer::Process(c), _)) = a {
        terminate(c, Duration::from_secs(15));
    }
}

impl Kubelet {
    pub fn start(root: &Path) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State::default()));
        let (r, st, ps, sp) = (root.to_owned(), state.clone(), paused.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let dir = r.join("etc/kubernetes/manifests");
            let mut log_n = 0;
            let mut restart_at: Option<Instant> = None;
            let (mut api_n, mut api_restart_at): (u32, Option<Instant>) = (0, None);
            while !sp.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if ps.load(Ordering::SeqCst) {
                    continue;
                }
                let etcd = std::fs::read_to_string(dir.join("etcd.yaml")).ok();
                let api = std::fs::read_to_string(dir.join("kube-apiserver.yaml")).ok();
                let mut s = st.lock().unwrap();
                // etcd
                let exited = s
                    .etcd
                    .as_mut()
                    .is_some_and(|(c, _)| matches!(c.try_wait(), Ok(Some(_))));
                if exited {
                    s.etcd = None;
                    restart_at = Some(Instant::now() + Duration::from_secs(1));
                }
                let running_text = s.etcd.as_ref().map(|(_, t)| t.clone());
                if running_text.is_some() && running_text != etcd {
                    let (c, _) = s.etcd.take().unwrap();
                    terminate(c, Duration::from_secs(15));
                }
                if s.etcd.is_none() && restart_at.is_none_or(|t| Instant::now() >= t) {
                    if let Some(text) = &etcd {
                        log_n += 1;
                        let log =
                            std::fs::File::create(r.join(format!("etcd-{log_n}.log"))).unwrap();
                        let child = Command::new(etcd_binary(&image_minor(text), "etcd"))
                            .args(host_command(&r, text, "etcd"))
                            .args(["--logger", "zap", "--log-level", "warn"])
                            .stdin(Stdio::null())
                            .stdout(log.try_clone().unwrap())
                            .stderr(log)
                            .spawn()
                            .expect("runner: spawn etcd");
                        s.etcd = Some((child, text.clone()));
                        restart_at = None;
                    }
                }
                // kube-apiserver
                let api_exited = match s.apiserver.as_mut() {
                    Some((ApiServer::Process(c), _)) => matches!(c.try_wait(), Ok(Some(_))),
                    _ => false,
                };
                if api_exited {
                    s.apiserver = None;
                    api_restart_at = Some(Instant::now() + Duration::from_secs(1));
                }
                let api_running = s.apiserver.as_ref().map(|(_, t)| t.clone());
                if api_running.is_some() && api_running != api {
                    stop_apiserver(s.apiserver.take());
                }
                if s.apiserver.is_none() && api_restart_at.is_none_or(|t| Instant::now() >= t) {
                    if let Some(text) = &api {
                        api_n += 1;
                        s.apiserver = Some((start_apiserver(&r, text, api_n), text.clone()));
                        api_restart_at = None;
                    }
                }
                s.seen = (etcd, api);
            }
            let mut s = st.lock().unwrap();
            stop_apiserver(s.apiserver.take());
            if let Some((c, _)) = s.etcd.take() {
                terminate(c, Duration::from_secs(15));
            }
        });
        Kubelet {
            root: root.to_owned(),
            stop,
            paused,
            state,
            thread: Some(thread),
        }
    }

    /// Waits until the runner acted on the manifest dir as it is now, then stops watching it.
    pub fn settle_and_pause(&self) {
        let dir = self.root.join("etc/kubernetes/manifests");
        wait_until(
            "the runner to settle",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let etcd = std::fs::read_to_string(dir.join("etcd.yaml")).ok();
                let api = std::fs::read_to_string(dir.join("kube-apiserver.yaml")).ok();
                let s = self.state.lock().unwrap();
                let etcd_ok = s.etcd.as_ref().map(|(_, t)| t.clone()) == etcd;
                if s.seen == (etcd.clone(), api) && etcd_ok {
                    // Paused under the lock, as the runner saw it settled.
                    self.paused.store(true, Ordering::SeqCst);
                    return true;
                }
                false
            },
        );
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// True while the runner has an etcd process running.
    pub fn etcd_running(&self) -> bool {
        self.state.lock().unwrap().etcd.is_some()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
