//! A kubeadm-style control-plane node in a temp dir: PKI under etc/kubernetes/pki/etcd, the etcd
//! static pod manifest under etc/kubernetes/manifests, a real etcd serving from var/lib/etcd,
//! and an etcdguard config whose fields can be overridden per test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;

use super::etcd::EtcdServer;
use super::manifest::EtcdPod;
use super::pki::Pki;
use super::{etcdguard, list_dir};

pub struct Node {
    pub root: tempfile::TempDir,
    pub pki: Pki,
    pub etcd: EtcdServer,
    pub config: PathBuf,
    /// section ("" for top level) → key → TOML value text
    settings: BTreeMap<String, BTreeMap<String, String>>,
    /// `[[destination]]` tables, as TOML text each.
    destinations: Vec<String>,
}

fn q(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl Node {
    pub fn start(version: &str, name: &str) -> Node {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let pki = Pki::create(&r.join("etc/kubernetes/pki/etcd"));
        std::fs::create_dir_all(r.join("var/lib")).unwrap();
        let etcd = EtcdServer::start(version, name, &r.join("var/lib/etcd"), &pki.dir);
        let manifests = r.join("etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("etcd.yaml"), kubeadm_manifest(&etcd)).unwrap();
        let mut node = Node {
            config: r.join("etc/etcdguard/etcdguard.toml"),
            settings: BTreeMap::new(),
            destinations: Vec::new(),
            pki,
            etcd,
            root,
        };
        node.set("", "schedule", "\"@hourly\"");
        node.set("", "state_dir", &q(&node.state_dir()));
        node.set("etcd", "manifest", &q(&manifests.join("etcd.yaml")));
        let pki = node.pki.dir.clone();
        node.use_pki(&pki);
        node.set("etcd", "timeout", "\"60s\"");
        node.set("etcd", "stall_timeout", "\"10s\"");
        node.set("etcd", "dial_timeout", "\"5s\"");
        node.write_config();
        node
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("var/lib/etcdguard")
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.state_dir().join("snapshots")
    }

    /// Sets `key = value` (value is TOML text) in `section` and rewrites the config file.
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.settings
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
        self.write_config();
    }

    /// Sets `key` in `section` to a path.
    pub fn set_path(&mut self, section: &str, key: &str, path: &std::path::Path) {
        self.set(section, key, &q(path));
    }

    /// Points `[etcd]` at the CA and healthcheck client of the kubeadm PKI in `dir`.
    pub fn use_pki(&mut self, dir: &std::path::Path) {
        self.set_path("etcd", "ca_cert", &dir.join("ca.crt"));
        self.set_path("etcd", "client_cert", &dir.join("healthcheck-client.crt"));
        self.set_path("etcd", "client_key", &dir.join("healthcheck-client.key"));
    }

    /// Adds a `[[destination]]` with `toml` (its keys, one per line) and rewrites the config.
    pub fn add_destination(&mut self, toml: &str) {
        self.destinations.push(toml.to_string());
        self.write_config();
    }

    /// Drops every `[[destination]]`.
    pub fn clear_destinations(&mut self) {
        self.destinations.clear();
        self.write_config();
    }

    pub fn unset(&mut self, section: &str, key: &str) {
        if let Some(s) = self.settings.get_mut(section) {
            s.remove(key);
        }
        self.write_config();
    }

    fn write_config(&self) {
        let mut text = String::new();
        if let Some(top) = self.settings.get("") {
            for (k, v) in top {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (section, kv) in self.settings.iter().filter(|(s, _)| !s.is_empty()) {
            text.push_str(&format!("\n[{section}]\n"));
            for (k, v) in kv {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        for d in &self.destinations {
            text.push_str(&format!("\n[[destination]]\n{}\n", d.trim_end()));
        }
        std::fs::create_dir_all(self.config.parent().unwrap()).unwrap();
        std::fs::write(&self.config, text).unwrap();
    }

    /// Runs `etcdguard --config <this node's config> <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        etcdguard(&all)
    }

    /// Starts `etcdguard --config <this node's config> <args>` without waiting for it.
    pub fn run_spawn(&self, args: &[&str]) -> std::process::Child {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        super::etcdguard_cmd(&all)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn snapshot(&self) -> Output {
        self.run(&["snapshot"])
    }

    /// The records array from records.json.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir().join("records.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        v["records"].as_array().unwrap().clone()
    }

    pub fn last_record(&self) -> serde_json::Value {
        self.records().pop().expect("at least one record")
    }

    pub fn snapshot_files(&self) -> Vec<String> {
        list_dir(&self.snapshot_dir())
    }
}

/// The etcd static pod as kubeadm writes it, pointing at `etcd` (its client and peer ports).
pub fn kubeadm_manifest(etcd: &EtcdServer) -> String {
    let port = |url: &str| url.rsplit(':').next().unwrap().parse().unwrap();
    EtcdPod {
        version: &etcd.version,
        name: &etcd.name,
        client_port: port(&etcd.client_url),
        peer_port: port(&etcd.peer_url),
        metrics_port: etcd.metrics_port,
        initial_cluster: &format!("{}={}", etcd.name, etcd.peer_url),
        state: None,
    }
    .render()
}
