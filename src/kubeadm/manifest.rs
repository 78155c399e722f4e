//! The etcd static pod manifest (`/etc/kubernetes/manifests/etcd.yaml`): the etcd container's
//! flags, image and hostPath volumes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read etcd manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd manifest {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("etcd manifest {path}: {message}")]
    Content { path: PathBuf, message: String },
}

/// The parts of the etcd static pod that etcdguard reads.
#[derive(Debug, Clone)]
pub struct EtcdManifest {
    pub path: PathBuf,
    /// The etcd container's flags in order, leading dashes removed: `("name", Some("cp1"))`.
    pub flags: Vec<(String, Option<String>)>,
    pub image: Option<String>,
    /// The pod's hostPath volumes: (volume name, host path).
    pub host_paths: Vec<(String, String)>,
    /// The etcd container's mounts: (volume name, mount path in the container).
    pub mounts: Vec<(String, String)>,
    /// `metadata.name`.
    pub pod_name: Option<String>,
}

/// Where the etcd data directory lives on the host, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDataDir {
    /// The path as the host sees it (before any `--root` prefix).
    pub host_path: String,
    /// `--data-dir` inside the container.
    pub container_path: String,
    /// The volume that maps it.
    pub volume: String,
}

impl EtcdManifest {
    pub fn load(path: &Path) -> Result<EtcdManifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<EtcdManifest, ManifestError> {
        EtcdManifest::parse_container(text, path, "etcd")
    }

    /// The container of a static pod manifest that is named `program` or runs it (kubeadm's
    /// other control-plane pods read the same way: flags, hostPath volumes, mounts).
    pub fn parse_container(
        text: &str,
        path: &Path,
        program: &str,
    ) -> Result<EtcdManifest, ManifestError> {
        let content = |message: String| ManifestError::Content {
            path: path.to_owned(),
            message,
        };
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| ManifestError::Yaml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let containers = doc
            .get("spec")
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_sequence)
            .ok_or_else(|| content("no spec.containers list; is this a Pod manifest?".into()))?;
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_sequence)
                .map(|seq| {
                    seq.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let runs = |c: &Value| {
            c.get("name").and_then(Value::as_str) == Some(program)
                || strings(c.get("command"))
                    .first()
                    .is_some_and(|cmd| cmd == program || cmd.ends_with(&format!("/{program}")))
        };
        let container = containers
            .iter()
            .find(|c| runs(c))
            .ok_or_else(|| content(format!("no container named {program:?}")))?;
        let mut words = strings(container.get("command"));
        if !words.is_empty() {
            words.remove(0); // the program itself
        }
        words.extend(strings(container.get("args")));
        let host_paths = doc
            .get("spec")
            .and_then(|s| s.get("volumes"))
            .and_then(Value::as_sequence)
            .map(|vols| {
                vols.iter()
                    .filter_map(|v| {
                        let name = v.get("name")?.as_str()?.to_string();
                        let path = v.get("hostPath")?.get("path")?.as_str()?.to_string();
                        Some((name, path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mounts = container
            .get("volumeMounts")
            .and_then(Value::as_sequence)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        Some((
                            m.get("name")?.as_str()?.to_string(),
                            m.get("mountPath")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(EtcdManifest {
            path: path.to_owned(),
            flags: parse_flags(&words),
            image: container
                .get("image")
                .and_then(Value::as_str)
                .map(str::to_string),
            host_paths,
            mounts,
            pod_name: doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    fn content(&self, message: String) -> ManifestError {
        ManifestError::Content {
            path: self.path.clone(),
            message,
        }
    }

    /// The host path of what the container sees at `container_path`, through its hostPath
    /// mounts (the longest matching mount wins); the path itself when no mount covers it.
    pub fn host_path(&self, container_path: &str) -> String {
        let mut best: Option<(&str, &str)> = None;
        for (vol, mount) in &self.mounts {
            let mt = mount.trim_end_matches('/');
            if (container_path == mt || container_path.starts_with(&format!("{mt}/")))
                && best.is_none_or(|(_, b)| mt.len() > b.len())
            {
                best = Some((vol, mt));
            }
        }
        best.and_then(|(vol, mt)| {
            self.host_paths
                .iter()
                .find(|(n, _)| n == vol)
                .map(|(_, p)| format!("{}{}", p.trim_end_matches('/'), &container_path[mt.len()..]))
        })
        .unwrap_or_else(|| container_path.to_string())
    }

    /// A flag that must be there.
    pub fn required(&self, name: &str) -> Result<&str, ManifestError> {
        self.flag(name)
            .ok_or_else(|| self.content(format!("the etcd command has no --{name} flag")))
    }

    /// `--initial-advertise-peer-urls`, split.
    pub fn advertise_peer_urls(&self) -> Result<Vec<String>, ManifestError> {
        Ok(split_urls(self.required("initial-advertise-peer-urls")?))
    }

    /// The etcd version from the image tag (`registry.k8s.io/etcd:3.5.16-0` → `3.5.16`).
    pub fn image_version(&self) -> Option<(u64, u64, u64)> {
        let image = self.image.as_deref()?;
        let tag = image.rsplit_once(':').map(|(_, t)| t)?;
        let tag = tag.trim_start_matches('v');
        let core = tag.split(['-', '+', '@']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
    }

    /// The host directory behind `--data-dir`: the hostPath volume whose mount path is a prefix
    /// of the data dir, plus the rest of the path (restore-spec E.2).
    pub fn host_data_dir(&self) -> Result<HostDataDir, ManifestError> {
        let data_dir = self.required("data-dir")?.trim_end_matches('/').to_string();
        let mut best: Option<(&str, &str)> = None;
        for (vol, mount) in &self.mounts {
            let m = mount.trim_end_matches('/');
            let inside = data_dir == m || data_dir.starts_with(&format!("{m}/"));
            if inside && best.is_none_or(|(_, b)| m.len() > b.len()) {
                best = Some((vol, m));
            }
        }
        let Some((vol, mount)) = best else {
            return Err(self.content(format!(
                "no volume mount of the etcd container contains --data-dir={data_dir}; cannot \
                 tell where the data lives on the host"
            )));
        };
        let host = self
            .host_paths
            .iter()
            .find(|(n, _)| n == vol)
            .map(|(_, p)| p.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                self.content(format!(
                    "volume {vol:?} (mounted at {mount}, holding --data-dir={data_dir}) is not a \
                     hostPath volume; cannot tell where the data lives on the host"
                ))
            })?;
        let rest = &data_dir[mount.len()..];
        Ok(HostDataDir {
            host_path: format!("{host}{rest}"),
            container_path: data_dir,
            volume: vol.to_string(),
        })
    }

    /// TCP ports this etcd listens on (client, peer, metrics), from its listen flags.
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for flag in [
            "listen-client-urls",
            "listen-peer-urls",
            "listen-metrics-urls",
        ] {
            for url in self.flag(flag).map(split_urls).unwrap_or_default() {
                if let Some((_, _, port)) = split_url(&url) {
                    if let Ok(p) = port.trim_end_matches('/').parse() {
                        ports.push(p);
                    }
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The value of `--name`-style flag `name`; the last occurrence wins, as in Go's flag package.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn member_name(&self) -> Option<&str> {
        self.flag("name")
    }

    /// The URL on which this node's own etcd member serves clients on loopback, from
    /// `--listen-client-urls`. A wildcard listener (0.0.0.0, [::]) is reached through loopback.
    /// Never another member's address: a snapshot must come from the local member.
    pub fn local_client_url(&self) -> Result<String, ManifestError> {
        let content = |message: String| ManifestError::Content {
            path: self.path.clone(),
            message,
        };
        let urls = self
            .flag("listen-client-urls")
            .ok_or_else(|| content("the etcd command has no --listen-client-urls flag".into()))?;
        loopback_url(urls, "https").ok_or_else(|| {
            content(format!(
                "--listen-client-urls={urls} has no https URL on loopback or a wildcard \
                 address; set etcd.endpoint in the etcdguard config to this member's own \
                 client URL"
            ))
        })
    }

    /// Where this node's etcd serves its metrics in plain HTTP on loopback, from
    /// `--listen-metrics-urls` (kubeadm: `http://127.0.0.1:2381`), as `…/metrics`.
    pub fn local_metrics_url(&self) -> Option<String> {
        let urls = self.flag("listen-metrics-urls")?;
        loopback_url(urls, "http").map(|u| format!("{u}/metrics"))
    }
}

/// The first `scheme` URL of the list `urls` on loopback, else a wildcard one reached through
/// loopback; without a trailing slash.
fn loopback_url(urls: &str, want: &str) -> Option<String> {
    let mut wildcard = None;
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Some((scheme, host, port)) = split_url(url) else {
            continue;
        };
        if scheme != want {
            continue;
        }
        match host_kind(host) {
            HostKind::Loopback => return Some(url.trim_end_matches('/').to_string()),
            HostKind::Wildcard4 if wildcard.is_none() => {
                wildcard = Some(format!("{want}://127.0.0.1:{port}"))
            }
            HostKind::Wildcard6 if wildcard.is_none() => {
                wildcard = Some(format!("{want}://[::1]:{port}"))
            }
            _ => {}
        }
    }
    wildcard
}

/// A comma-separated URL list.
pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Splits etcd/Go-style flags: `--a=b`, `-a=b`, `--a b`, and bare booleans `--a`.
fn parse_flags(words: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let Some(stripped) = w.strip_prefix("--").or_else(|| w.strip_prefix('-')) else {
            continue; // a positional word; etcd takes none
        };
        if let Some((name, value)) = stripped.split_once('=') {
            out.push((name.to_string(), Some(value.to_string())));
        } else if i < words.len() && !words[i].starts_with('-') {
            out.push((stripped.to_string(), Some(words[i].clone())));
            i += 1;
        } else {
            out.push((stripped.to_string(), None));
        }
    }
    out
}

/// `scheme`, `host` (brackets removed), `port` of a URL.
pub fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let hostport = rest.split('/').next()?;
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, p) = r.split_once("]:")?;
        (h, p)
    } else {
        hostport.rsplit_once(':')?
    };
    Some((scheme, host, port))
}

enum HostKind {
    Loopback,
    Wildcard4,
    Wildcard6,
    Other,
}

fn host_kind(host: &str) -> HostKind {
    if host == "localhost" {
        return HostKind::Loopback;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => HostKind::Loopback,
        Ok(IpAddr::V4(v4)) if v4.is_unspecified() => HostKind::Wildcard4,
        Ok(IpAddr::V6(v6)) if v6.is_unspecified() => HostKind::Wildcard6,
        _ => HostKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_url_is_plain_http_on_loopback() {
        let m = |urls: &str| {
            let text = format!(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: etcd\n    command:\n    - etcd\n    - --listen-metrics-urls={urls}\n"
            );
            EtcdManifest::parse(&text, Path::new("etcd.yaml"))
                .unwrap()
                .local_metrics_url()
        };
        assert_eq!(
            m("http://127.0.0.1:2381").as_deref(),
            Some("http://127.0.0.1:2381/metrics")
        );
        assert_eq!(
            m("https://127.0.0.1:2382,http://0.0.0.0:2381/").as_deref(),
            Some("http://127.0.0.1:2381/metrics")
        );
        assert_eq!(m("http://10.0.0.5:2381"), None, "never another host");
        assert_eq!(
            m("https://127.0.0.1:2381"),
            None,
            "TLS metrics are not read"
        );
    }

    const KUBEADM_35: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://10.0.0.10:2379
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.10:2379
    - --data-dir=/var/lib/etcd
    - --listen-client-urls=https://10.0.0.10:2379,https://127.0.0.1:2379
    - --name=cp1
    image: registry.k8s.io/etcd:3.5.16-0
    name: etcd
  volumes:
  - hostPath:
      path: /var/lib/etcd
    name: etcd-data
"#;

    fn m(text: &str) -> EtcdManifest {
        EtcdManifest::parse(text, Path::new("/m/etcd.yaml")).unwrap()
    }

    #[test]
    fn kubeadm_manifest() {
        let man = m(KUBEADM_35);
        assert_eq!(man.member_name(), Some("cp1"));
        assert_eq!(man.local_client_url().unwrap(), "https://127.0.0.1:2379");
        assert_eq!(man.image.as_deref(), Some("registry.k8s.io/etcd:3.5.16-0"));
    }

    #[test]
    fn separate_value_form_and_ipv6() {
        let man = m(r#"
spec:
  containers:
  - name: etcd
    command: ["etcd", "--name", "cp-2", "--listen-client-urls", "https://[fd00::2]:2379,https://[::1]:2379"]
"#);
        assert_eq!(man.member_name(), Some("cp-2"));
        assert_eq!(man.local_client_url().unwrap(), "https://[::1]:2379");
    }

    #[test]
    fn wildcard_listener_maps_to_loopback() {
        let man = m(r#"
spec:
  containers:
  - name: etcd
    command: [etcd]
    args: ["--listen-client-urls=https://0.0.0.0:12379"]
"#);
        assert_eq!(man.local_client_url().unwrap(), "https://127.0.0.1:12379");
    }

    #[test]
    fn no_local_url_is_a_clear_error() {
        let man = m(r#"
spec:
  containers:
  - name: etcd
    command: [etcd, "--listen-client-urls=https://10.0.0.10:2379,http://127.0.0.1:2379"]
"#);
        let e = man.local_client_url().unwrap_err().to_string();
        assert!(e.contains("/m/etcd.yaml"), "{e}");
        assert!(e.contains("set etcd.endpoint"), "{e}");
    }

    #[test]
    fn not_a_pod() {
        let e = EtcdManifest::parse("a: b", Path::new("/m/x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no spec.containers"), "{e}");
        let e = EtcdManifest::parse("a: [", Path::new("/m/x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid YAML"), "{e}");
    }
}
