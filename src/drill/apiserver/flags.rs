//! The drill's kube-apiserver command line. What decides how the stored data reads (the
//! encryption config, the service-account keys and issuer, the etcd prefix, the API and
//! feature switches) comes from the node's own `kube-apiserver.yaml`; the rest is the drill's:
//! its etcd, loopback only, the node's etcd PKI for serving and for clients (the same trust
//! as the drill's etcd), no compaction, no watch cache (every list reads etcd), and no
//! admission webhooks or policies (the drill must never call the live cluster's webhooks).

use std::path::{Path, PathBuf};

use crate::kubeadm::EtcdManifest;

/// Flags whose value is a file on the node (mapped through the manifest's mounts).
const NODE_FILES: &[(&str, bool)] = &[
    ("encryption-provider-config", false),
    ("service-account-key-file", true),
    ("service-account-signing-key-file", true),
];

/// Flags taken as written.
const NODE_VALUES: &[(&str, bool)] = &[
    ("service-account-issuer", true),
    ("service-cluster-ip-range", false),
    ("etcd-prefix", false),
    ("storage-media-type", false),
    ("runtime-config", false),
    ("feature-gates", false),
    ("api-audiences", false),
];

/// What the drill gives its API server.
pub(super) struct Own<'a> {
    /// The drill's etcd, `https://127.0.0.1:<port>`.
    pub etcd_url: &'a str,
    /// etcdguard's etcd client CA, certificate and key (`[etcd]`).
    pub etcd_client: [&'a Path; 3],
    /// The node's etcd server certificate, key and client CA: the API server serves with
    /// them and trusts clients they trust.
    pub server: &'a [PathBuf; 3],
    pub port: u16,
    /// Where it may write the files it makes.
    pub cert_dir: &'a Path,
}

/// The command line (without the program), from the node's kube-apiserver `manifest` (at
/// `manifest_path`, its files under `root`) and the drill's `own` settings.
pub(super) fn args(
    manifest: &EtcdManifest,
    manifest_path: &Path,
    root: &Path,
    own: &Own,
) -> Result<Vec<String>, String> {
    let missing = |f: &str| {
        format!(
            "{} has no --{f}: the drill's API server reads the data as the node's does and \
             needs it",
            manifest_path.display()
        )
    };
    let mut out = Vec::new();
    for &(flag, required) in NODE_FILES {
        match manifest.flag(flag) {
            Some(p) => {
                let host = crate::fsutil::under_root(root, Path::new(&manifest.host_path(p)));
                out.push(format!("--{flag}={}", host.display()));
            }
            None if required => return Err(missing(flag)),
            None => {}
        }
    }
    for &(flag, required) in NODE_VALUES {
        match manifest.flag(flag) {
            Some(v) => out.push(format!("--{flag}={v}")),
            None if required => return Err(missing(flag)),
            None => {}
        }
    }
    let [ca, cert, key] = own.etcd_client;
    let [server_cert, server_key, client_ca] = own.server;
    let path = |p: &Path| p.display().to_string();
    for (flag, value) in [
        ("etcd-servers", own.etcd_url.to_string()),
        ("etcd-cafile", path(ca)),
        ("etcd-certfile", path(cert)),
        ("etcd-keyfile", path(key)),
        ("etcd-compaction-interval", "0".into()),
        ("watch-cache", "false".into()),
        ("bind-address", "127.0.0.1".into()),
        ("advertise-address", "127.0.0.1".into()),
        ("secure-port", own.port.to_string()),
        ("endpoint-reconciler-type", "none".into()),
        ("tls-cert-file", path(server_cert)),
        ("tls-private-key-file", path(server_key)),
        ("client-ca-file", path(client_ca)),
        ("anonymous-auth", "false".into()),
        ("authorization-mode", "AlwaysAllow".into()),
        (
            "disable-admission-plugins",
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,MutatingAdmissionPolicy,\
             ValidatingAdmissionPolicy"
                .into(),
        ),
        ("cert-dir", path(own.cert_dir)),
        ("profiling", "false".into()),
    ] {
        out.push(format!("--{flag}={value}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1
kind: Pod
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.5
    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml
    - --etcd-servers=https://127.0.0.1:2379
    - --service-account-issuer=https://kubernetes.default.svc.cluster.local
    - --service-account-key-file=/etc/kubernetes/pki/sa.pub
    - --service-account-signing-key-file=/etc/kubernetes/pki/sa.key
    - --service-cluster-ip-range=10.96.0.0/12
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
    - mountPath: /etc/kubernetes/enc
      name: encryption
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki
    name: k8s-certs
  - hostPath:
      path: /srv/enc
    name: encryption
";

    fn own<'a>(server: &'a [PathBuf; 3]) -> Own<'a> {
        Own {
            etcd_url: "https://127.0.0.1:4001",
            etcd_client: [
                Path::new("/n/ca.crt"),
                Path::new("/n/c.crt"),
                Path::new("/n/c.key"),
            ],
            server,
            port: 4002,
            cert_dir: Path::new("/scratch/certs"),
        }
    }

    #[test]
    fn the_nodes_data_settings_through_its_mounts_and_the_drills_own_rest() {
        let p = Path::new("/root/etc/kubernetes/manifests/kube-apiserver.yaml");
        let m = EtcdManifest::parse_container(MANIFEST, p, "kube-apiserver").unwrap();
        let server = [
            PathBuf::from("/s.crt"),
            PathBuf::from("/s.key"),
            PathBuf::from("/ca.crt"),
        ];
        let a = args(&m, p, Path::new("/root"), &own(&server)).unwrap();
        for want in [
            "--encryption-provider-config=/root/srv/enc/enc.yaml",
            "--service-account-key-file=/root/etc/kubernetes/pki/sa.pub",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--etcd-servers=https://127.0.0.1:4001",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--client-ca-file=/ca.crt",
            "--watch-cache=false",
            "--etcd-compaction-interval=0",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} not in {a:?}");
        }
        // Nothing of the node's own network or etcd.
        assert!(!a
            .iter()
            .any(|x| x.contains("10.0.0.5") || x.contains(":2379")));
    }

    #[test]
    fn a_manifest_without_service_account_keys_is_named() {
        let p = Path::new("/m/kube-apiserver.yaml");
        let text = MANIFEST.replace(
            "    - --service-account-signing-key-file=/etc/kubernetes/pki/sa.key\n",
            "",
        );
        let m = EtcdManifest::parse_container(&text, p, "kube-apiserver").unwrap();
        let server = [PathBuf::new(), PathBuf::new(), PathBuf::new()];
        let e = args(&m, p, Path::new("/"), &own(&server)).unwrap_err();
        assert!(
            e.contains("/m/kube-apiserver.yaml has no --service-account-signing-key-file"),
            "{e}"
        );
    }
}
