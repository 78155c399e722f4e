//! A real etcd server on free loopback ports, TLS with client-certificate auth, kubeadm-style.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use super::{etcd_binary, etcdctl_tls, free_port, poll_until, rt, terminate, Rng};

pub struct EtcdServer {
    pub version: String,
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub pki_dir: PathBuf,
    pub log: PathBuf,
    /// Where it serves its metrics in plain HTTP (`--listen-metrics-urls`), as kubeadm's etcd.
    pub metrics_port: u16,
    /// Extra environment for the server process (`ETCD_VERIFY=all`).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// How to start one member: ports picked by the caller (a planned cluster's peer URLs must be
/// where the members listen), `initial_cluster` as etcd's flag (ignored once a WAL exists).
pub struct MemberSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub pki_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub initial_cluster: String,
}

impl EtcdServer {
    /// Starts a fresh single-member cluster (or, for an existing data dir, the member in it)
    /// named `name`, with etcd `version` ("3.5", "3.6" or "3.7"). From 3.6 on it also waits
    /// for the storage version to be set, as it is on any running cluster within seconds
    /// (snapshots carry it from then on).
    pub fn start(version: &str, name: &str, data_dir: &Path, pki_dir: &Path) -> EtcdServer {
        let mut last_log = String::new();
        for _ in 0..3 {
            let (cp, pp) = (free_port(), free_port());
            let mut s = EtcdServer::spawn_member(
                version,
                MemberSpec {
                    name: name.to_string(),
                    data_dir: data_dir.to_owned(),
                    pki_dir: pki_dir.to_owned(),
                    client_port: cp,
                    peer_port: pp,
                    initial_cluster: format!("{name}=https://127.0.0.1:{pp}"),
                },
            );
            if s.wait_ready(Duration::from_secs(30)) {
                if version != "3.5" {
                    s.wait_storage_version(Duration::from_secs(30));
                }
                return s;
            }
            last_log = s.log_tail();
            s.stop();
        }
        panic!("etcd {version} did not become ready; log tail:\n{last_log}");
    }

    /// Spawns a member without waiting for it (members of a new multi-member cluster become
    /// ready only together). Call [`EtcdServer::wait_ready`] or [`EtcdServer::wait_healthy`].
    pub fn spawn_member(version: &str, spec: MemberSpec) -> EtcdServer {
        EtcdServer::spawn_member_env(version, spec, &[])
    }

    /// [`EtcdServer::spawn_member`] with extra environment for etcd.
    pub fn spawn_member_env(version: &str, spec: MemberSpec, env: &[(&str, &str)]) -> EtcdServer {
        let mut s = EtcdServer {
            version: version.to_string(),
            name: spec.name,
            client_url: format!("https://127.0.0.1:{}", spec.client_port),
            peer_url: format!("https://127.0.0.1:{}", spec.peer_port),
            data_dir: spec.data_dir.clone(),
            pki_dir: spec.pki_dir,
            log: spec
                .data_dir
                .with_extension(format!("etcd-{}.log", spec.client_port)),
            metrics_port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        s.spawn(&spec.initial_cluster);
        s
    }

    /// The member's storage version (`endpoint status`), "" while unset.
    pub fn storage_version(&self) -> String {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v[0]["Status"]["storageVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until etcd ≥ 3.6 reports a storage version; panics with the log if it never does.
    pub fn wait_storage_version(&self, limit: Duration) {
        let set = poll_until(limit, Duration::from_millis(200), || {
            (!self.storage_version().is_empty()).then_some(())
        });
        assert!(
            set.is_some(),
            "etcd {} set no storage version within {limit:?}; log tail:\n{}",
            self.version,
            self.log_tail()
        );
    }

    /// Waits until a linearizable read succeeds (the member is in a cluster with a leader).
    pub fn wait_healthy(&mut self, limit: Duration) -> bool {
        poll_until(limit, Duration::from_millis(200), || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(false);
            }
            self.etcdctl(&["endpoint", "health"])
                .status
                .success()
                .then_some(true)
        })
        .unwrap_or(false)
    }

    fn spawn(&mut self, initial_cluster: &str) {
        let p = |f: &str| self.pki_dir.join(f).display().to_string();
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(etcd_binary(&self.version, "etcd"));
        cmd.args([
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--listen-client-urls",
            &self.client_url,
            "--advertise-client-urls",
            &self.client_url,
            "--listen-peer-urls",
            &self.peer_url,
            "--initial-advertise-peer-urls",
            &self.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{}", self.metrics_port),
            "--cert-file",
            &p("server.crt"),
            "--key-file",
            &p("server.key"),
            "--trusted-ca-file",
            &p("ca.crt"),
            "--client-cert-auth",
            "--peer-cert-file",
            &p("peer.crt"),
            "--peer-key-file",
            &p("peer.key"),
            "--peer-trusted-ca-file",
            &p("ca.crt"),
            "--peer-client-cert-auth",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ])
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn etcd"));
    }

    pub fn wait_ready(&mut self, limit: Duration) -> bool {
        poll_until(limit, Duration::from_millis(100), || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(false); // exited (port taken?)
            }
            let ok = rt().block_on(async {
                match tokio::time::timeout(Duration::from_secs(2), self.client()).await {
                    Ok(Ok(mut c)) => c.status().await.is_ok(),
                    _ => false,
                }
            });
            ok.then_some(true)
        })
        .unwrap_or(false)
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(10));
        }
    }

    /// Restarts the member on its data dir with `env` for etcd (`ETCD_*` flags), and waits
    /// until it is ready.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cluster = format!("{}={}", self.name, self.peer_url);
        self.spawn(&cluster);
        assert!(
            self.wait_ready(Duration::from_secs(30)),
            "etcd did not restart; log tail:\n{}",
            self.log_tail()
        );
    }

    pub fn client_port(&self) -> u16 {
        self.client_url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A TLS client authenticated with the healthcheck-client certificate.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        let read = |f: &str| std::fs::read(self.pki_dir.join(f)).unwrap();
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .identity(Identity::from_pem(
                read("healthcheck-client.crt"),
                read("healthcheck-client.key"),
            ));
        Client::connect(
            [&self.client_url],
            Some(
                ConnectOptions::new()
                    .with_tls(tls)
                    .with_connect_timeout(Duration::from_secs(2)),
            ),
        )
        .await
    }

    /// Puts `n` keys `/registry/<prefix>/<i>`; every 7th value is larger than 4 KiB.
    pub fn put_keys(&self, prefix: &str, n: usize) {
        rt().block_on(async {
            let mut c = self.client().await.unwrap();
            for i in 0..n {
                let len = if i % 7 == 0 {
                    5000 + i % 300
                } else {
                    100 + i % 50
                };
                let value: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
                c.put(format!("/registry/{prefix}/{i:06}"), value, None)
                    .await
                    .unwrap();
            }
        });
    }

    /// Puts `mib` values of 1 MiB each under `/registry/<prefix>/`, each different (so the
    /// database grows by about `mib` MiB).
    pub fn put_mib(&self, prefix: &str, mib: usize) {
        rt().block_on(async {
            let mut c = self.client().await.unwrap();
            let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
            for i in 0..mib {
                let value = rng.bytes(1 << 20);
                c.put(format!("/registry/{prefix}/{i:06}"), value, None)
                    .await
                    .unwrap();
            }
        });
    }

    /// Every key and value under `/registry/`, sorted.
    pub fn all_keys(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        rt().block_on(async {
            let mut c = self.client().await.unwrap();
            let r = c
                .get("/registry/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            r.kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                .collect()
        })
    }

    pub fn revision(&self) -> i64 {
        rt().block_on(async {
            let mut c = self.client().await.unwrap();
            c.status().await.unwrap().header().unwrap().revision()
        })
    }

    /// Runs this version's etcdctl against this server with TLS flags.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_tls(&self.version, &self.client_url, &self.pki_dir)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
