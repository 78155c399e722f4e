//! Shared test support: real etcd servers with a kubeadm-layout PKI, a kubeadm-style node
//! root, a byte-level TCP proxy for fault injection, and helpers to run the etcdguard binary.
//!
//! Binaries come from `$ETCDGUARD_ETCD_DIR` or the project cache `.cache/etcd/<version>/`,
//! filled by `scripts/install-test-deps`. A missing binary fails the test with that pointer;
//! nothing is ever skipped.

#![allow(dead_code)]

pub mod etcd;
pub mod kubelet;
pub mod kubenode;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod s3;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the etcd binaries live.
pub fn etcd_cache_dir() -> PathBuf {
    match std::env::var_os("ETCDGUARD_ETCD_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/etcd"),
    }
}

/// The path of `binary` (etcd, etcdctl, etcdutl) for the newest cached version starting with
/// `version_prefix` ("3.5", "3.4"). Panics with the install pointer when it is missing.
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

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the etcdguard binary with `args`, a clean environment for its logs, and returns
/// its output.
pub fn etcdguard(args: &[&str]) -> Output {
    etcdguard_cmd(args).output().expect("run etcdguard")
}

pub fn etcdguard_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_etcdguard"));
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
