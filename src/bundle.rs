//! The node recovery bundle: what a kubeadm control-plane node needs to come back besides the
//! snapshot (its PKI with the CA keys, the static pod manifests, the kubeadm and kubelet
//! configuration, and the API server's EncryptionConfiguration, without which every Secret in
//! the snapshot is unreadable). A tar archive whose first member, `etcdguard-bundle.json`,
//! lists every entry (path, kind, mode, owner, size, sha256), sealed like the copies
//! (zstd + age). It is never written unencrypted: `[bundle]` requires `[encryption]`.
//!
//! The standard tools open it: `age -d -i KEY B | zstd -d | tar -t`. Its contents are never
//! logged or printed; the record says which paths it holds.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encryption::{self, Encryption, Identities, Sealer};
use crate::fsutil::under_root;

/// The first member of the archive.
pub const CONTENTS_NAME: &str = "etcdguard-bundle.json";
/// A bundle larger than this is a mistake (a data dir under the PKI, say).
const LIMIT: u64 = 64 << 20;

/// What a kubeadm node keeps that a rebuild needs: directories taken whole, then single files
/// taken when they exist.
const TREES: [&str; 3] = [
    "/etc/kubernetes/pki",
    "/etc/kubernetes/manifests",
    "/var/lib/kubelet/pki",
];
const FILES: [&str; 6] = [
    "/var/lib/kubelet/config.yaml",
    "/var/lib/kubelet/kubeadm-flags.env",
    "/var/lib/kubelet/instance-config.yaml",
    "/etc/default/kubelet",
    "/etc/sysconfig/kubelet",
    "/etc/kubernetes/kubeadm-config.yaml",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One path of the node in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The node's absolute path.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `etcdguard-bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contents {
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub member: String,
    pub entries: Vec<Entry>,
}

impl Contents {
    /// What the bundle holds, for its record: each tree with its file count, then the files.
    pub fn summary(&self) -> Vec<String> {
        let files = |prefix: &str| {
            self.entries
                .iter()
                .filter(|e| e.kind != Kind::Dir && e.path.starts_with(&format!("{prefix}/")))
                .count()
        };
        let mut out: Vec<String> = TREES
            .iter()
            .filter(|t| self.entries.iter().any(|e| e.path == **t))
            .map(|t| format!("{t}/ ({} files)", files(t)))
            .collect();
        out.extend(
            self.entries
                .iter()
                .filter(|e| e.kind != Kind::Dir && !TREES.iter().any(|t| e.path.starts_with(t)))
                .map(|e| e.path.clone()),
        );
        out
    }
}

/// A sealed bundle ready to upload.
pub struct Built {
    pub sealed: Vec<u8>,
    pub contents: Contents,
}

/// The paths to take from the node under `root`: kubeadm's, the API server's
/// `--encryption-provider-config`, and `extra`.
fn sources(root: &Path, extra: &[PathBuf]) -> Result<Vec<String>, String> {
    let pki = under_root(root, Path::new(TREES[0]));
    if !pki.is_dir() {
        return Err(format!(
            "{} does not exist: not a kubeadm control-plane node, nothing to bundle",
            pki.display()
        ));
    }
    let mut out: Vec<String> = TREES.iter().map(|s| s.to_string()).collect();
    out.extend(FILES.iter().map(|s| s.to_string()));
    // The kubeconfigs kubeadm writes (admin.conf, kubelet.conf, …).
    if let Ok(rd) = std::fs::read_dir(under_root(root, Path::new("/etc/kubernetes"))) {
        let mut confs: Vec<String> = rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf"))
            .map(|n| format!("/etc/kubernetes/{n}"))
            .collect();
        confs.sort();
        out.extend(confs);
    }
    let api = under_root(
        root,
        Path::new("/etc/kubernetes/manifests/kube-apiserver.yaml"),
    );
    if let Ok(text) = std::fs::read_to_string(&api) {
        let m = crate::kubeadm::EtcdManifest::parse_container(&text, &api, "kube-apiserver")
            .map_err(|e| e.to_string())?;
        if let Some(f) = m.flag("encryption-provider-config") {
            out.push(m.host_path(f));
        }
    }
    out.extend(extra.iter().map(|p| p.display().to_string()));
    Ok(out)
}

/// Reads every entry of the node under `root` (contents in memory: a bundle is small, and
/// bounded), hashing files.
fn read_node(root: &Path, extra: &[PathBuf]) -> Result<Vec<(Entry, Vec<u8>)>, String> {
    let mut out: Vec<(Entry, Vec<u8>)> = Vec::new();
    let mut total = 0u64;
    for src in sources(root, extra)? {
        add(root, &src, &mut out, &mut total)?;
    }
    Ok(out)
}

fn add(
    root: &Path,
    path: &str,
    out: &mut Vec<(Entry, Vec<u8>)>,
    total: &mut u64,
) -> Result<(), String> {
    if out.iter().any(|(e, _)| e.path == path) {
        return Ok(());
    }
    let host = under_root(root, Path::new(path));
    let meta = match std::fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", host.display())),
    };
    let mut entry = Entry {
        path: path.to_string(),
        kind: Kind::File,
        mode: meta.permissions().mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: None,
        sha256: None,
        target: None,
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        entry.kind = Kind::Symlink;
        let t = std::fs::read_link(&host).map_err(|e| format!("{}: {e}", host.display()))?;
        entry.target = Some(t.display().to_string());
        out.push((entry, Vec::new()));
    } else if ft.is_dir() {
        entry.kind = Kind::Dir;
        out.push((entry, Vec::new()));
        let mut names: Vec<String> = std::fs::read_dir(&host)
            .map_err(|e| format!("cannot read {}: {e}", host.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            add(
                root,
                &format!("{}/{n}", path.trim_end_matches('/')),
                out,
                total,
            )?;
        }
    } else if ft.is_file() {
        *total += meta.len();
        if *total > LIMIT {
            return Err(format!(
                "the bundle would exceed {} MiB at {}: it is meant for PKI and configuration \
                 files; check [bundle] extra_paths",
                LIMIT >> 20,
                host.display()
            ));
        }
        let bytes =
            std::fs::read(&host).map_err(|e| format!("cannot read {}: {e}", host.display()))?;
        entry.size = Some(bytes.len() as u64);
        entry.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
        out.push((entry, bytes));
    }
    Ok(())
}

/// Collects the node under `root` and seals the archive to `enc`'s recipients.
pub fn build(
    root: &Path,
    extra: &[PathBuf],
    member: &str,
    enc: &Encryption,
) -> Result<Built, String> {
    let items = read_node(root, extra)?;
    let contents = Contents {
        version: 1,
        created_at: crate::clock::now(),
        member: member.to_string(),
        entries: items.iter().map(|(e, _)| e.clone()).collect(),
    };
    let sealer = enc
        .sealer()
        .map_err(|e| format!("encryption cannot start, no bundle written: {e}"))?;
    let mut tar = tar::Builder::new(SealWriter {
        sealer,
        out: Vec::new(),
    });
    let io = |e: std::io::Error| format!("building the bundle: {e}");
    let json = serde_json::to_vec_pretty(&contents).expect("contents serialize");
    let mut h = header(tar::EntryType::Regular, 0o600, 0, 0, json.len() as u64);
    tar.append_data(&mut h, CONTENTS_NAME, &json[..])
        .map_err(io)?;
    for (e, bytes) in &items {
        let name = e.path.trim_start_matches('/');
        match e.kind {
            Kind::Dir => {
                let mut h = header(tar::EntryType::Directory, e.mode, e.uid, e.gid, 0);
                tar.append_data(&mut h, format!("{name}/"), std::io::empty())
                    .map_err(io)?;
            }
            Kind::File => {
                let mut h = header(
                    tar::EntryType::Regular,
                    e.mode,
                    e.uid,
                    e.gid,
                    bytes.len() as u64,
                );
                tar.append_data(&mut h, name, &bytes[..]).map_err(io)?;
            }
            Kind::Symlink => {
                let mut h = header(tar::EntryType::Symlink, e.mode, e.uid, e.gid, 0);
                let target = e.target.as_deref().unwrap_or("");
                tar.append_link(&mut h, name, target).map_err(io)?;
            }
        }
    }
    let w = tar.into_inner().map_err(io)?;
    let mut sealed = w.out;
    sealed.extend(w.sealer.finish().map_err(io)?);
    Ok(Built { sealed, contents })
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_size(size);
    h.set_mtime(0);
    h
}

struct SealWriter {
    sealer: Sealer,
    out: Vec<u8>,
}

impl Write for SealWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let more = self.sealer.push(b)?;
        self.out.extend(more);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens the sealed bundle `file` with `ids`, checks every file against its listing, and
/// writes the files into `staging` (0700 dir, files 0600, by their node paths). Returns the
/// listing; nothing is placed on the node here.
pub fn unpack(file: &Path, ids: &Identities, staging: &Path) -> Result<Contents, String> {
    let what = file.display().to_string();
    let input = std::fs::File::open(file).map_err(|e| format!("cannot read {what}: {e}"))?;
    let plain = encryption::open(input, Some(ids), &what)?;
    let mut archive = tar::Archive::new(plain);
    let bad = |m: String| format!("the bundle {what} {m}");
    let mut entries = archive
        .entries()
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    let first = entries
        .next()
        .ok_or_else(|| bad("is empty".into()))?
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    if first.path().map(|p| p.to_path_buf()).ok() != Some(PathBuf::from(CONTENTS_NAME)) {
        return Err(bad(format!("does not start with {CONTENTS_NAME}")));
    }
    let contents: Contents = serde_json::from_reader(first.take(LIMIT))
        .map_err(|e| bad(format!("has a listing that does not parse: {e}")))?;
    let mut seen = 0usize;
    for item in entries {
        let mut item = item.map_err(|e| bad(format!("cannot be read: {e}")))?;
        if item.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = format!(
            "/{}",
            item.path()
                .map_err(|e| bad(format!("has a bad name: {e}")))?
                .display()
        );
        let e = contents
            .entries
            .iter()
            .find(|e| e.path == name && e.kind == Kind::File)
            .ok_or_else(|| bad(format!("holds {name}, which its listing does not name")))?;
        let mut bytes = Vec::new();
        (&mut item)
            .take(LIMIT)
            .read_to_end(&mut bytes)
            .map_err(|err| bad(format!("cannot be read at {name}: {err}")))?;
        if e.sha256.as_deref() != Some(hex::encode(Sha256::digest(&bytes)).as_str()) {
            return Err(bad(format!("has {name} with another sha256 than listed")));
        }
        let dest = under_root(staging, Path::new(&name));
        if let Some(parent) = dest.parent() {
            crate::fsutil::create_private_dir_all(parent)
                .map_err(|err| format!("{}: {err}", parent.display()))?;
        }
        crate::fsutil::write_atomic(&dest, &bytes, crate::fsutil::PRIVATE_FILE_MODE)
            .map_err(|err| format!("{}: {err}", dest.display()))?;
        seen += 1;
    }
    let files = contents
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .count();
    if seen != files {
        return Err(bad(format!("lists {files} files but holds {seen}")));
    }
    Ok(contents)
}
