//! The node as its files describe it: kubelet's static pod dir, the etcd manifest, the data
//! dir's host path, and the paths a restore stamped `stamp` will use. With `--root`, every path
//! is the node's own path under the root where its disk is mounted.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::super::journal::{Paths, BACKUP_DIR_PREFIX};
use crate::fsutil::under_root;
use crate::kubeadm::EtcdManifest;

/// Where kubeadm keeps its backups, and a restore its journal and the original manifests.
pub(super) const KUBEADM_TMP: &str = "/etc/kubernetes/tmp";

#[derive(Debug, Clone)]
pub struct Node {
    pub root: PathBuf,
    pub manifest_dir: PathBuf,
    pub etcd_manifest: PathBuf,
    pub manifest: EtcdManifest,
    pub manifest_text: String,
    pub manifest_mode: u32,
    pub apiserver_manifest: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub tmp_dir: PathBuf,
}

impl Node {
    /// The host path of a file the etcd container sees at `container_path` (through its mounts).
    pub fn host_file(&self, container_path: &str) -> PathBuf {
        under_root(
            &self.root,
            Path::new(&self.manifest.host_path(container_path)),
        )
    }

    /// Where a restore stamped `stamp` keeps the old data, builds the new one and journals.
    pub fn paths(&self, stamp: &str) -> Paths {
        let name = self
            .data_dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "etcd".into());
        let parent = self
            .data_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let swap_member_only = is_mount_point(&self.data_dir);
        let (pre, failed, built) = if swap_member_only {
            (
                self.data_dir.join(format!("member.pre-restore-{stamp}")),
                self.data_dir.join(format!("member.failed-restore-{stamp}")),
                self.data_dir.join(format!(".restored-{stamp}")),
            )
        } else {
            (
                parent.join(format!("{name}.pre-restore-{stamp}")),
                parent.join(format!("{name}.failed-restore-{stamp}")),
                parent.join(format!(".{name}.restored-{stamp}")),
            )
        };
        Paths {
            manifest_dir: self.manifest_dir.clone(),
            etcd_manifest: self.etcd_manifest.clone(),
            apiserver_manifest: self.apiserver_manifest.clone(),
            backup_dir: self.tmp_dir.join(format!("{BACKUP_DIR_PREFIX}{stamp}")),
            data_dir: self.data_dir.clone(),
            pre_restore: pre,
            failed_restore: failed,
            built,
            swap_member_only,
        }
    }
}

/// kubelet's `staticPodPath` (from `/var/lib/kubelet/config.yaml`), kubeadm's default if absent.
fn static_pod_dir(root: &Path) -> PathBuf {
    let cfg = under_root(root, Path::new("/var/lib/kubelet/config.yaml"));
    let from_kubelet = std::fs::read_to_string(cfg).ok().and_then(|t| {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&t).ok()?;
        v.get("staticPodPath")?.as_str().map(str::to_string)
    });
    under_root(
        root,
        Path::new(
            from_kubelet
                .as_deref()
                .unwrap_or("/etc/kubernetes/manifests"),
        ),
    )
}

/// Reads the node under `root` (`/` for this machine).
pub fn load_node(root: &Path) -> Result<Node, String> {
    let manifest_dir = static_pod_dir(root);
    let etcd_manifest = manifest_dir.join("etcd.yaml");
    let manifest_text = std::fs::read_to_string(&etcd_manifest).map_err(|e| {
        format!(
            "cannot read the etcd manifest {}: {e} (is this a kubeadm control-plane node? \
             with --root, is the disk mounted there?)",
            etcd_manifest.display()
        )
    })?;
    let manifest =
        EtcdManifest::parse(&manifest_text, &etcd_manifest).map_err(|e| e.to_string())?;
    let manifest_mode = std::fs::metadata(&etcd_manifest)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let host = manifest.host_data_dir().map_err(|e| e.to_string())?;
    let apiserver = manifest_dir.join("kube-apiserver.yaml");
    Ok(Node {
        root: root.to_owned(),
        data_dir: under_root(root, Path::new(&host.host_path)),
        manifest_dir,
        etcd_manifest,
        manifest,
        manifest_text,
        manifest_mode,
        apiserver_manifest: apiserver.exists().then_some(apiserver),
        tmp_dir: under_root(root, Path::new(KUBEADM_TMP)),
    })
}

/// A mount point: its device differs from its parent's.
fn is_mount_point(p: &Path) -> bool {
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Puts kube-apiserver's manifest back (with its mode) if it is not in place. Manifests are
/// written the way kubelet can never half-read: a dot-temp file (kubelet ignores dot files),
/// fsync, rename, fsync the dir.
pub(super) fn put_back_apiserver(paths: &Paths) -> std::io::Result<()> {
    let (Some(api), backup) = (
        &paths.apiserver_manifest,
        paths.backup_dir.join("kube-apiserver.yaml"),
    ) else {
        return Ok(());
    };
    if !api.exists() && backup.exists() {
        let bytes = std::fs::read(&backup)?;
        crate::fsutil::write_atomic(api, &bytes, crate::fsutil::mode_of(&backup)?)?;
    }
    Ok(())
}
