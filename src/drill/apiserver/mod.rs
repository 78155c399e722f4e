//! The drill's optional check after `etcd-start` (`[drill] apiserver_binary`): a real
//! kube-apiserver started on the drill's etcd reads every resource type the snapshot holds, as
//! the node's API server would after a restore. It takes what decides how stored data reads
//! from the node's own `kube-apiserver.yaml` (`flags`), lists each of the snapshot's resource
//! trees (`resources`) at exactly the snapshot's revision, so that what it writes at start
//! counts for nothing, and must find `inspect`'s count of each. A value it cannot decode (a
//! corrupt object, a Secret under a key the encryption config no longer has) fails the list,
//! and the check, with the API server's words, which name the key. It is loopback-only, trusts
//! only the etcd CA, writes only into the scratch dir, and is killed when the check ends.

mod flags;
mod resources;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::start::{free_port, tail, Running};
use crate::config::Config;
use crate::etcd::TlsMaterial;
use crate::kubeadm::EtcdManifest;
use resources::ApiResource;

/// Objects per list page.
const PAGE: usize = 500;

/// What the check needs.
pub(super) struct Request<'a> {
    pub binary: &'a Path,
    pub config: &'a Config,
    /// The drill's running etcd.
    pub etcd_url: &'a str,
    /// The node's etcd server certificate, key and client CA.
    pub server: &'a [PathBuf; 3],
    /// etcdguard's etcd client credentials (`[etcd]`): they reach this API server too.
    pub client_tls: &'a TlsMaterial,
    pub scratch: &'a Path,
    /// The snapshot's revision: every list reads exactly it.
    pub revision: i64,
    /// The snapshot's resource trees (`inspect`'s names) and their live keys.
    pub trees: Vec<(String, u64)>,
}

/// Starts the API server, lists every tree and compares; the check's detail.
pub(super) fn check(handle: &tokio::runtime::Handle, req: &Request) -> Result<String, String> {
    let manifest_path = req
        .config
        .etcd
        .manifest
        .with_file_name("kube-apiserver.yaml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        format!(
            "cannot read {}: {e} (the drill's API server takes the node's encryption and \
             service-account settings from it)",
            manifest_path.display()
        )
    })?;
    let manifest = EtcdManifest::parse_container(&text, &manifest_path, "kube-apiserver")
        .map_err(|e| e.to_string())?;
    let version = version_of(req.binary)?;
    let port = free_port()?;
    let cert_dir = req.scratch.join("apiserver");
    crate::fsutil::create_private_dir_all(&cert_dir)
        .map_err(|e| format!("{}: {e}", cert_dir.display()))?;
    let etcd = &req.config.etcd;
    let own = flags::Own {
        etcd_url: req.etcd_url,
        etcd_client: [&etcd.ca_cert, &etcd.client_cert, &etcd.client_key],
        server: req.server,
        port,
        cert_dir: &cert_dir,
    };
    let args = flags::args(&manifest, &manifest_path, req.config.node_root(), &own)?;
    let log = req.scratch.join("kube-apiserver.log");
    let mut api = Api {
        handle,
        client: client(req.client_tls)?,
        base: format!("https://127.0.0.1:{port}"),
        running: spawn(req.binary, &args, &log)?,
        log,
        version,
    };
    let deadline = Instant::now() + req.config.drill.timeout;
    api.wait_ready(deadline)?;
    let served = api.discover(&req.trees, deadline)?;
    compare(&api, req, &served)
}

/// Lists every tree at the snapshot's revision against its count.
fn compare(api: &Api, req: &Request, served: &[ApiResource]) -> Result<String, String> {
    let mut listed = Vec::new();
    let mut unserved = Vec::new();
    let mut objects = 0;
    for (tree, keys) in &req.trees {
        let Some(r) = resources::serving(tree, served) else {
            unserved.push(format!("{tree} ({keys})"));
            continue;
        };
        let n = api.count(r, req.revision)?;
        if n != *keys {
            return Err(format!(
                "{} lists {n} {} at revision {}; the snapshot holds {keys} under /registry/{tree}/",
                api.version,
                r.shown(),
                req.revision
            ));
        }
        objects += n;
        listed.push(format!("{} {n}", r.shown()));
    }
    let not_api = if unserved.is_empty() {
        String::new()
    } else {
        format!("; not API resources: {}", unserved.join(", "))
    };
    Ok(format!(
        "{} on the drill's etcd lists all {} resource types at revision {} with the snapshot's \
         counts, {objects} objects ({}){not_api}",
        api.version,
        listed.len(),
        req.revision,
        listed.join(", ")
    ))
}

/// `kube-apiserver --version`: `Kubernetes v1.37.2`.
fn version_of(binary: &Path) -> Result<String, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim();
    if !v.starts_with("Kubernetes v") {
        return Err(format!(
            "{} --version printed {v:?}, not \"Kubernetes v…\": is it kube-apiserver?",
            binary.display()
        ));
    }
    Ok(format!("kube-apiserver {}", &v["Kubernetes ".len()..]))
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> Result<Running, String> {
    let out =
        crate::fsutil::create_private_file(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(binary)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    Ok(Running(child))
}

/// An HTTPS client that trusts the etcd CA and shows etcdguard's etcd client certificate.
fn client(tls: &TlsMaterial) -> Result<reqwest::Client, String> {
    let bad = |e: String| format!("TLS setup for the drill's API server: {e}");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots
            .add(c.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// The started API server.
struct Api<'a> {
    handle: &'a tokio::runtime::Handle,
    client: reqwest::Client,
    base: String,
    running: Running,
    log: PathBuf,
    /// `kube-apiserver v1.37.2`.
    version: String,
}

impl Api<'_> {
    /// GET `path`: the status and the JSON body (`Null` when it is not JSON).
    fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        self.handle.block_on(async {
            let resp = self
                .client
                .get(&url)
                .header(
                    "Accept",
                    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,\
                     application/json",
                )
                .send()
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| format!("GET {path}: {e}"))?;
            let json = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            Ok((status, json))
        })
    }

    /// Its log's last lines, for a failure.
    fn log_tail(&self) -> String {
        tail(&self.log, 8)
    }

    /// Until `/readyz` says ok, leaving out whether its own informers have listed everything:
    /// one that cannot (a Secret it cannot decrypt) would keep it unready for ever, and the
    /// lists say better which object. It exiting or `deadline` passing fails the check.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let mut last;
        loop {
            if let Ok(Some(status)) = self.running.0.try_wait() {
                return Err(format!(
                    "{} exited ({status}) on the drill's etcd; its log ends:\n{}",
                    self.version,
                    self.log_tail()
                ));
            }
            match self.get("/readyz?exclude=informer-sync") {
                Ok((200, _)) => return Ok(()),
                Ok((s, body)) => last = format!("/readyz answered {s}: {}", short(&body)),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} was not ready within the drill's timeout ({last}); its log ends:\n{}",
                    self.version,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every listable resource it serves; asked again (until `deadline`) while a tree of a
    /// group that is not built in finds none, as a CRD's resource appears a moment after
    /// the API server is ready.
    fn discover(
        &self,
        trees: &[(String, u64)],
        deadline: Instant,
    ) -> Result<Vec<ApiResource>, String> {
        loop {
            let served = self.discovery()?;
            let waiting = trees
                .iter()
                .any(|(t, _)| t.contains('.') && resources::serving(t, &served).is_none());
            if !waiting || Instant::now() > deadline {
                return Ok(served);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn discovery(&self) -> Result<Vec<ApiResource>, String> {
        let ok = |path: &str| match self.get(path)? {
            (200, doc) => Ok(doc),
            (s, body) => Err(format!("GET {path}: {s} {}", short(&body))),
        };
        let mut served = resources::resource_list(&ok("/api/v1")?);
        for gv in resources::preferred_versions(&ok("/apis")?) {
            // An aggregated API whose server is away does not stop the rest.
            if let Ok(doc) = ok(&format!("/apis/{gv}")) {
                served.extend(resources::resource_list(&doc));
            }
        }
        Ok(served)
    }

    /// The objects of `r` at `revision`, page by page (metadata only).
    fn count(&self, r: &ApiResource, revision: i64) -> Result<u64, String> {
        let mut n = 0u64;
        let mut next: Option<String> = None;
        loop {
            let path = match &next {
                None => format!(
                    "{}?limit={PAGE}&resourceVersion={revision}&resourceVersionMatch=Exact",
                    r.path()
                ),
                Some(c) => format!("{}?limit={PAGE}&continue={}", r.path(), encode(c)),
            };
            let doc = match self.get(&path)? {
                (200, doc) => doc,
                (s, body) => {
                    return Err(format!(
                        "{} cannot list {} at revision {revision} ({s}): {}",
                        self.version,
                        r.shown(),
                        short(&body)
                    ))
                }
            };
            n += doc["items"].as_array().map_or(0, Vec::len) as u64;
            match doc["metadata"]["continue"].as_str() {
                Some(c) if !c.is_empty() => next = Some(c.to_string()),
                _ => return Ok(n),
            }
        }
    }
}

/// A Status's message, or the body itself, cut short.
fn short(body: &Value) -> String {
    let text = match body["message"].as_str() {
        Some(m) => m.to_string(),
        None => match body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    };
    text.chars().take(600).collect()
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn continue_tokens_are_encoded() {
        assert_eq!(super::encode("eyJ2Ijo+/=="), "eyJ2Ijo%2B%2F%3D%3D");
    }
}
