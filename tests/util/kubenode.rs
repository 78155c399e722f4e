//! A kubeadm control-plane node in a temp dir, run by the [`Kubelet`] stand-in: kubeadm's file
//! layout (`etc/kubernetes/manifests`, `etc/kubernetes/pki/etcd`, `var/lib/etcd`), an etcd
//! static pod manifest with container paths and hostPath volumes exactly as kubeadm writes it,
//! and a kube-apiserver manifest. Restores run against it with `--root`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use super::kubeapi::{join_control_plane, write_control_plane, Kubectl};
use super::kubelet::Kubelet;
use super::manifest::EtcdPod;
use super::pki::Pki;
use super::{etcdctl_tls, etcdguard, free_port, poll_until};

pub struct KubeNode {
    pub root: tempfile::TempDir,
    pub name: String,
    pub client_port: u16,
    /// etcdguard's config for backups (absolute paths into the root).
    pub config: PathBuf,
    pub kubelet: Option<Kubelet>,
    /// The etcd minor of the manifest's image ("3.5", "3.6", "3.7").
    pub etcd_version: String,
}

fn apiserver_manifest(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n\
         spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --secure-port={port}\n\
         \x20   image: registry.k8s.io/kube-apiserver:v1.33.0\n    name: kube-apiserver\n"
    )
}

impl KubeNode {
    /// A kubeadm ≤ 1.33 node (etcd 3.5); see [`KubeNode::with_etcd`].
    pub fn new(
        name: &str,
        pki: Option<&Path>,
        ports: Option<(u16, u16)>,
        initial_cluster: Option<&str>,
    ) -> KubeNode {
        KubeNode::with_etcd("3.5", name, pki, ports, initial_cluster)
    }

    /// A node of the kubeadm generation that ships etcd `etcd_version`, whose etcd joins
    /// `initial_cluster` (or forms its own when `None`). `pki` is a PKI dir to copy (members of
    /// one cluster share the CA); `None` makes a new one.
    pub fn with_etcd(
        etcd_version: &str,
        name: &str,
        pki: Option<&Path>,
        ports: Option<(u16, u16)>,
        initial_cluster: Option<&str>,
    ) -> KubeNode {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let pki_dir = r.join("etc/kubernetes/pki/etcd");
        match pki {
            Some(src) => {
                std::fs::create_dir_all(&pki_dir).unwrap();
                for e in std::fs::read_dir(src).unwrap() {
                    let e = e.unwrap();
                    std::fs::copy(e.path(), pki_dir.join(e.file_name())).unwrap();
                }
            }
            None => {
                Pki::create(&pki_dir);
            }
        }
        let (client_port, peer_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
        let (metrics_port, apiserver_port) = (free_port(), free_port());
        let own = format!("{name}=https://127.0.0.1:{peer_port}");
        let cluster = initial_cluster.unwrap_or(&own);
        let manifests = r.join("etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(r.join("var/lib")).unwrap();
        let m = EtcdPod {
            version: etcd_version,
            name,
            client_port,
            peer_port,
            metrics_port,
            initial_cluster: cluster,
            state: None,
        }
        .render();
        write_0600(&manifests.join("etcd.yaml"), &m);
        write_0600(
            &manifests.join("kube-apiserver.yaml"),
            &apiserver_manifest(apiserver_port),
        );
        let config = r.join("backup.toml");
        let q = |p: &str| format!("{:?}", r.join(p).display().to_string());
        std::fs::write(
            &config,
            format!(
                "state_dir = {}\n[etcd]\nmanifest = {}\nca_cert = {}\nclient_cert = {}\nclient_key = {}\n",
                q("var/lib/etcdguard"),
                q("etc/kubernetes/manifests/etcd.yaml"),
                q("etc/kubernetes/pki/etcd/ca.crt"),
                q("etc/kubernetes/pki/etcd/healthcheck-client.crt"),
                q("etc/kubernetes/pki/etcd/healthcheck-client.key"),
            ),
        )
        .unwrap();
        KubeNode {
            root,
            name: name.to_string(),
            client_port,
            config,
            kubelet: None,
            etcd_version: etcd_version.to_string(),
        }
    }

    /// A kubeadm 1.37 node (etcd 3.7) whose kubelet stand-in runs a real kube-apiserver on
    /// its etcd, with the control plane's PKI, `admin.conf` and Secrets encrypted at rest.
    pub fn with_apiserver(name: &str, seed: u64) -> KubeNode {
        let node = KubeNode::with_etcd("3.7", name, None, None, None);
        write_control_plane(node.root.path(), node.client_port, free_port(), seed);
        node
    }

    /// A member of a three-node kubeadm 1.37 control plane whose first node is `first`
    /// (`None`: this is the first), each node's API server on its own etcd member (stacked
    /// etcd), sharing the cluster's keys; `pki` is the etcd PKI all members share.
    pub fn control_plane_member(
        name: &str,
        pki: &Path,
        ports: (u16, u16),
        initial_cluster: &str,
        first: Option<&Path>,
    ) -> KubeNode {
        let node = KubeNode::with_etcd("3.7", name, Some(pki), Some(ports), Some(initial_cluster));
        match first {
            None => write_control_plane(node.root.path(), node.client_port, free_port(), 13),
            Some(f) => join_control_plane(node.root.path(), f, node.client_port, free_port()),
        }
        node
    }

    /// kubectl as the node's admin (`etc/kubernetes/admin.conf`).
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.path("etc/kubernetes/admin.conf"),
        }
    }

    /// The last lines of the newest kube-apiserver log.
    pub fn apiserver_log_tail(&self) -> String {
        self.newest_log_tail("kube-apiserver-")
    }

    pub fn start(&mut self) {
        self.kubelet = Some(Kubelet::start(self.root.path()));
    }

    pub fn kubelet(&self) -> &Kubelet {
        self.kubelet.as_ref().expect("kubelet started")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_tls(
            &self.etcd_version,
            &format!("https://127.0.0.1:{}", self.client_port),
            &self.path("etc/kubernetes/pki/etcd"),
        )
        .args(["--command-timeout", "5s"])
        .args(args)
        .output()
        .unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until a linearizable read succeeds.
    pub fn wait_healthy(&self, limit: Duration) {
        let healthy = poll_until(limit, Duration::from_millis(200), || {
            self.etcdctl(&["endpoint", "health"])
                .status
                .success()
                .then_some(())
        });
        assert!(
            healthy.is_some(),
            "etcd on {} not healthy in {limit:?}; log: {}",
            self.name,
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        self.newest_log_tail("etcd-")
    }

    fn newest_log_tail(&self, prefix: &str) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            // A process restarted a moment ago has said nothing yet: the last one that did.
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            .collect();
        // etcd-10.log after etcd-9.log.
        logs.sort_by_key(|p| (p.as_os_str().len(), p.clone()));
        logs.last()
            .map(|l| {
                let t = std::fs::read_to_string(l).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(12)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// `etcdguard --config <backup config> <args>`.
    pub fn etcdguard(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        etcdguard(&all)
    }

    /// `etcdguard restore --root <root> <args>`.
    pub fn restore(&self, args: &[&str]) -> Output {
        let mut all = vec!["restore", "--root", self.root.path().to_str().unwrap()];
        all.extend_from_slice(args);
        etcdguard(&all)
    }

    /// `/registry/...` keys and values.
    pub fn keys(&self) -> Vec<String> {
        self.ctl(&["get", "/registry/", "--prefix"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn endpoint_status(&self) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl(&["endpoint", "status", "-w", "json"])).unwrap();
        v[0]["Status"].clone()
    }
}

fn write_0600(p: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Removes everything under `dir` but the names in `keep`.
fn remove_all_but(dir: &Path, keep: &[&str]) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|n| keep.iter().any(|k| n == *k)) {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// Removes everything under `root` but the etcdguard configs (the node's, and the test's
/// backup config).
pub fn wipe(root: &Path) {
    remove_all_but(root, &["backup.toml", "etc"]);
    remove_all_but(&root.join("etc"), &["etcdguard"]);
}
