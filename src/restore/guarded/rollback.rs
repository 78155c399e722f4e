//! Undoing a restore from its journal, whatever point it reached: the restored etcd stopped,
//! the old data dir back (the restored one kept for diagnosis), the original manifest byte for
//! byte, the old member answering, kube-apiserver back. Every step looks at the filesystem
//! first, so running it twice is harmless.

use std::path::PathBuf;
use std::time::Duration;

use super::super::journal::{Journal, JournalFile, JournalState};
use super::super::probe;
use super::node::put_back_apiserver;
use super::wait::{wait_healthy, wait_until, Expect};
use super::Options;
use crate::config::Config;
use crate::fsutil;
use crate::kubeadm::EtcdManifest;
use crate::preflight;

/// Undoes a restore from its journal, checking the file system at every step (so it is
/// idempotent and works from any point a restore stopped at).
pub(super) async fn rollback_journal(
    config: &Config,
    j: &mut Journal,
    opts: &Options,
) -> Result<(), String> {
    let paths = j.paths.clone();
    let original = paths.backup_dir.join("etcd.yaml");
    let wait = if opts.no_wait {
        Duration::ZERO
    } else {
        opts.timeout
    };

    // 1. The restored etcd stops: its manifest leaves the manifest dir. Waiting for etcd to
    //    stop matters only when data dirs are about to be renamed under it.
    let mut restored_was_running = false;
    if original.exists() {
        if let Ok(current) = std::fs::read(&paths.etcd_manifest) {
            if current != std::fs::read(&original).map_err(|e| e.to_string())? {
                fsutil::move_file(
                    &paths.etcd_manifest,
                    &paths.backup_dir.join("etcd.yaml.restored"),
                )
                .map_err(|e| format!("moving the restored etcd.yaml out: {e}"))?;
                restored_was_running = true;
            }
        }
    }
    let swapped = paths.pre_restore.exists();
    if !paths.etcd_manifest.exists() && !opts.no_wait && (restored_was_running || swapped) {
        let ports = std::fs::read_to_string(&original)
            .ok()
            .and_then(|t| EtcdManifest::parse(&t, &original).ok())
            .map(|m| m.listen_ports())
            .unwrap_or_default();
        wait_until(wait, || probe::still_running(&paths.data_dir, &ports))
            .map_err(|why| format!("etcd did not stop: {}", why.join(", ")))?;
    }

    // 2. The old data back in place; the restored one kept for diagnosis.
    let live = if paths.swap_member_only {
        paths.data_dir.join("member")
    } else {
        paths.data_dir.clone()
    };
    // A process still exiting may recreate the data dir's path: such a straggler is moved
    // aside as well, and the rename tried again.
    let mut attempt = 0;
    while paths.pre_restore.exists() {
        if live.exists() {
            let mut aside = paths.failed_restore.clone();
            let mut n = 1;
            while aside.exists() {
                n += 1;
                aside = PathBuf::from(format!("{}.{n}", paths.failed_restore.display()));
            }
            fsutil::rename_durable(&live, &aside)
                .map_err(|e| format!("moving the restored data dir aside: {e}"))?;
        }
        match fsutil::rename_durable(&paths.pre_restore, &live) {
            Ok(()) => break,
            Err(e) if attempt < 5 => {
                tracing::warn!("moving the old data dir back: {e}; trying again");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(format!("moving the old data dir back: {e}")),
        }
    }
    if paths.built.exists() {
        std::fs::remove_dir_all(&paths.built)
            .map_err(|e| format!("removing {}: {e}", paths.built.display()))?;
    }
    // A restore killed while it built the data dir leaves its staging dir beside it.
    for p in crate::restore::datadir::remove_staging(&paths.built)
        .map_err(|e| format!("removing the staging dir of {}: {e}", paths.built.display()))?
    {
        tracing::info!(path = %p.display(), "removed the staging dir of a killed restore");
    }

    // 3. The original manifest, byte for byte, with its mode.
    if original.exists() && !paths.etcd_manifest.exists() {
        let bytes = std::fs::read(&original).map_err(|e| e.to_string())?;
        let mode = fsutil::mode_of(&original).unwrap_or(0o600);
        fsutil::write_atomic(&paths.etcd_manifest, &bytes, mode)
            .map_err(|e| format!("putting etcd.yaml back: {e}"))?;
    }

    // 4. The old member answers again.
    if !opts.no_wait && original.exists() {
        let tls = preflight::etcd_tls(&config.etcd).map_err(|e| e.to_string())?;
        let m = EtcdManifest::parse(
            &std::fs::read_to_string(&original).map_err(|e| e.to_string())?,
            &original,
        )
        .map_err(|e| e.to_string())?;
        let endpoint = m.local_client_url().map_err(|e| e.to_string())?;
        let parse = |s: &Option<String>| s.as_deref().and_then(|h| u64::from_str_radix(h, 16).ok());
        wait_healthy(
            &endpoint,
            &tls,
            &Expect {
                member_id: parse(&j.plan.old_member_id),
                cluster_id: parse(&j.plan.old_cluster_id),
                revision: None,
                quorum: j.plan.members == 1,
            },
            opts.timeout,
        )
        .await
        .map_err(|e| format!("after the rollback: {e}"))?;
    }

    // 5. The API server back.
    put_back_apiserver(&paths).map_err(|e| format!("putting kube-apiserver.yaml back: {e}"))?;
    j.state = JournalState::RolledBack;
    j.outcome = Some("rolled back".into());
    j.save().map_err(|e| format!("journal: {e}"))?;
    Ok(())
}
