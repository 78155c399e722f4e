//! A real kube-apiserver on a kubeadm node, for the tests that end where a user's restore ends:
//! Kubernetes serving again. `write_control_plane` lays out what kubeadm 1.37 leaves on a
//! control-plane node besides etcd's files: the cluster CA and the API server's serving
//! certificate, its etcd client certificate (signed by the etcd CA), the kubelet client and
//! front-proxy certificates, the service-account key pair, `admin.conf`, an
//! EncryptionConfiguration (aescbc for Secrets) and the kube-apiserver static pod manifest
//! (`tests/fixtures/kubeadm-apiserver.yaml`). The kubelet stand-in runs that manifest with the
//! binary `scripts/install-test-deps` builds ([`kube_binary`]); [`Kubectl`] reads it back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;

use super::pki::Pki;
use super::{poll_until, Rng};

const TEMPLATE: &str = include_str!("../fixtures/kubeadm-apiserver.yaml");

/// The Kubernetes minor the tests run (what kubeadm ships etcd 3.7 with).
pub const KUBE_MINOR: &str = "v1.37";

/// `kube-apiserver` or `kubectl` of the newest cached v1.37 build; a missing one fails the
/// test with a pointer to the script that builds it.
pub fn kube_binary(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/kubernetes");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{KUBE_MINOR}.")))
                })
                .filter(|p| p.join(name).is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|d| d.join(name)).unwrap_or_else(|| {
        panic!(
            "{name} {KUBE_MINOR}.x not found under {}: run scripts/install-test-deps (it \
             builds kube-apiserver and kubectl from Kubernetes' Go modules)",
            dir.display()
        )
    })
}

/// What `kube-apiserver --version` says (`Kubernetes v1.37.2`).
pub fn apiserver_version() -> String {
    let out = Command::new(kube_binary("kube-apiserver"))
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The kube-apiserver manifest for API port `secure_port` and etcd at `etcd_port`.
pub fn apiserver_manifest(secure_port: u16, etcd_port: u16) -> String {
    let mut out = String::new();
    for line in TEMPLATE.lines().filter(|l| !l.starts_with('#')) {
        out.push_str(
            &line
                .replace("@SECURE_PORT@", &secure_port.to_string())
                .replace("@ETCD_PORT@", &etcd_port.to_string()),
        );
        out.push('\n');
    }
    out
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Lays out the control plane of a kubeadm node under `root` whose etcd (with its PKI in
/// `etc/kubernetes/pki/etcd`, CA named `etcd-ca`) listens on `etcd_port`, the API server to
/// listen on `secure_port`. `seed` makes the encryption key.
pub fn write_control_plane(root: &Path, etcd_port: u16, secure_port: u16, seed: u64) {
    let pki_dir = root.join("etc/kubernetes/pki");
    let ca = Pki::ca_only(&pki_dir, "kubernetes");
    let sans = [
        "127.0.0.1",
        "10.96.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    ca.issue("apiserver", "kube-apiserver", &sans, true, false, 365);
    ca.issue_in(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("kubeadm:cluster-admins"),
        &[],
        false,
        true,
        365,
    );
    let (admin_crt, admin_key) = ca.issue_in(
        "admin",
        "kubernetes-admin",
        Some("system:masters"),
        &[],
        false,
        true,
        365,
    );
    etcd_client_cert(&pki_dir);
    let front = Pki::ca_only(&pki_dir.join("front-proxy"), "front-proxy-ca");
    front.issue(
        "front-proxy-client",
        "front-proxy-client",
        &[],
        false,
        true,
        365,
    );
    for (from, to) in [
        ("front-proxy/ca.crt", "front-proxy-ca.crt"),
        ("front-proxy/ca.key", "front-proxy-ca.key"),
        (
            "front-proxy/front-proxy-client.crt",
            "front-proxy-client.crt",
        ),
        (
            "front-proxy/front-proxy-client.key",
            "front-proxy-client.key",
        ),
    ] {
        std::fs::rename(pki_dir.join(from), pki_dir.join(to)).unwrap();
    }
    std::fs::remove_dir_all(pki_dir.join("front-proxy")).unwrap();
    let sa = rcgen::KeyPair::generate().unwrap();
    write_private(&pki_dir.join("sa.key"), &sa.serialize_pem());
    std::fs::write(pki_dir.join("sa.pub"), sa.public_key_pem()).unwrap();

    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    \
         server: https://127.0.0.1:{secure_port}\n  name: kubernetes\ncontexts:\n- context:\n    \
         cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\n\
         current-context: kubernetes-admin@kubernetes\nusers:\n- name: kubernetes-admin\n  user:\n    \
         client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&std::fs::read(pki_dir.join("ca.crt")).unwrap()),
        b64(&std::fs::read(&admin_crt).unwrap()),
        b64(&std::fs::read(&admin_key).unwrap()),
    );
    write_private(&root.join("etc/kubernetes/admin.conf"), &kubeconfig);
    std::fs::remove_file(admin_crt).unwrap();
    std::fs::remove_file(admin_key).unwrap();

    let key = Rng::new(seed).bytes(32);
    write_private(
        &root.join("etc/kubernetes/enc/enc.yaml"),
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        \
             secret: {}\n  - identity: {{}}\n",
            b64(&key)
        ),
    );
    write_private(
        &root.join("etc/kubernetes/manifests/kube-apiserver.yaml"),
        &apiserver_manifest(secure_port, etcd_port),
    );
}

/// The API server's etcd client certificate, `apiserver-etcd-client.{crt,key}` in `pki_dir`,
/// signed by the etcd CA in `pki_dir/etcd`.
fn etcd_client_cert(pki_dir: &Path) {
    let etcd = Pki::load(&pki_dir.join("etcd"), "etcd-ca");
    let (c, k) = etcd.issue(
        "apiserver-etcd-client",
        "kube-apiserver-etcd-client",
        &[],
        false,
        true,
        365,
    );
    for (from, to) in [
        (c, "apiserver-etcd-client.crt"),
        (k, "apiserver-etcd-client.key"),
    ] {
        std::fs::rename(from, pki_dir.join(to)).unwrap();
    }
}

/// Lays out under `root` the control plane of another node of the cluster whose first node
/// is at `first`: the same cluster, front-proxy and service-account keys, the same
/// EncryptionConfiguration, an `admin.conf` pointing at this node's API server, and the
/// manifest for this node's ports (kubeadm's `join --control-plane` with uploaded certs).
pub fn join_control_plane(root: &Path, first: &Path, etcd_port: u16, secure_port: u16) {
    let (from, to) = (first.join("etc/kubernetes"), root.join("etc/kubernetes"));
    for f in [
        "ca.crt",
        "ca.key",
        "apiserver.crt",
        "apiserver.key",
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "front-proxy-client.crt",
        "front-proxy-client.key",
        "sa.key",
        "sa.pub",
    ] {
        std::fs::copy(from.join("pki").join(f), to.join("pki").join(f)).unwrap();
    }
    etcd_client_cert(&to.join("pki"));
    write_private(
        &to.join("enc/enc.yaml"),
        &std::fs::read_to_string(from.join("enc/enc.yaml")).unwrap(),
    );
    let admin = std::fs::read_to_string(from.join("admin.conf")).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    write_private(
        &to.join("admin.conf"),
        &admin.replace(&server, &format!("https://127.0.0.1:{secure_port}")),
    );
    write_private(
        &to.join("manifests/kube-apiserver.yaml"),
        &apiserver_manifest(secure_port, etcd_port),
    );
}

/// kubectl with a node's `admin.conf` (or another kubeconfig).
pub struct Kubectl {
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kube_binary("kubectl"));
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "20s"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs kubectl and returns its stdout; a failure fails the test with its stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A JSON answer (`-o json`).
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Waits until the API server says it is ready (`/readyz`); `log` is said on a timeout.
    pub fn wait_ready(&self, within: Duration, log: impl Fn() -> String) {
        let ready = poll_until(within, Duration::from_millis(500), || {
            let out = self.run(&["get", "--raw", "/readyz"]);
            (out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok")
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "the API server was not ready within {within:?}; its log ends: {}",
            log()
        );
    }
}
