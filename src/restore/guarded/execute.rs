//! The restore itself, once every guard passed and the operator said yes: each step journaled
//! before and after (`Journal::step`), so a crash at any point can be rolled back from the
//! journal. A failure rolls back at once, except for one member of a multi-member restore.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::journal::{Journal, JournalFile, JournalState, Paths, PlanRecord, Step};
use super::super::probe;
use super::node::put_back_apiserver;
use super::prepare::Prepared;
use super::rollback::rollback_journal;
use super::wait::{apiserver_ports, wait_healthy, wait_until, Expect};
use super::Options;
use crate::config::Config;
use crate::fsutil;
use crate::restore::datadir::{build_data_dir, BuildOptions};

/// Runs the restore stamped `stamp` (guards already passed and confirmed).
pub async fn execute(
    config: &Config,
    p: &Prepared,
    opts: &Options,
    stamp: &str,
) -> Result<Journal, String> {
    let paths = p.node.paths(stamp);
    // Exclusive: a second restore never writes into another one's backup dir and journal.
    let made = paths
        .backup_dir
        .parent()
        .map_or(Ok(()), fsutil::create_private_dir_all)
        .and_then(|()| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(fsutil::PRIVATE_DIR_MODE)
                .create(&paths.backup_dir)
        });
    made.map_err(|e| format!("cannot create {}: {e}", paths.backup_dir.display()))?;
    let mut j = new_journal(p, paths, stamp);
    j.save()
        .map_err(|e| format!("cannot write the journal: {e}"))?;
    let journal_path = j.path();
    let Err(message) = steps(p, opts, &mut j).await else {
        j.state = JournalState::Done;
        j.outcome = Some("restored".into());
        let _ = j.save();
        return Ok(j);
    };
    tracing::error!("restore failed: {message}");
    let members = p.cluster.members.len();
    if members > 1 && j.started(Step::EtcdHealthy) && !j.done(Step::EtcdHealthy) {
        // A member of a multi-member restore must not be rolled back alone: a mixed state
        // (some nodes new, some old) must never run.
        j.state = JournalState::Failed;
        j.outcome = Some(message.clone());
        let _ = j.save();
        return Err(format!(
            "{message}. This is one member of a {members}-member restore: do not roll back one \
             node alone; check all nodes, then run `etcdguard restore --rollback` on every node \
             if the cluster does not form"
        ));
    }
    Err(match rollback_journal(config, &mut j, opts).await {
        Ok(()) => {
            format!("{message}; rolled back: the old data dir and manifests are in place again")
        }
        Err(e) => format!(
            "{message}; the rollback failed too: {e}; journal {}",
            journal_path.display()
        ),
    })
}

fn new_journal(p: &Prepared, paths: Paths, stamp: &str) -> Journal {
    Journal {
        version: 1,
        id: stamp.to_string(),
        started_at: crate::clock::now(),
        state: JournalState::InProgress,
        snapshot: p.snapshot.clone(),
        snapshot_sha256: p
            .report
            .sha256
            .clone()
            .unwrap_or_else(|| "not computed (--skip-hash-check)".into()),
        plan: PlanRecord {
            name: p.plan.name.clone(),
            initial_cluster: p.plan.initial_cluster.clone(),
            token: p.plan.token.clone(),
            bump_revision: p.plan.bump_revision,
            member_id: format!("{:x}", p.cluster.this().id),
            cluster_id: format!("{:x}", p.cluster.cluster_id),
            revision: p.revision_after,
            members: p.cluster.members.len(),
            old_member_id: p.old_ids.map(|(m, _)| format!("{m:x}")),
            old_cluster_id: p.old_ids.map(|(_, c)| format!("{c:x}")),
        },
        paths,
        steps: Vec::new(),
        outcome: None,
    }
}

/// `what: error`.
fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn steps(p: &Prepared, opts: &Options, j: &mut Journal) -> Result<(), String> {
    let paths = j.paths.clone();
    let wait = if opts.no_wait {
        Duration::ZERO
    } else {
        opts.timeout
    };
    if let Some(api) = &paths.apiserver_manifest {
        j.step(Step::ApiserverStopped, stop_apiserver(api, &paths, opts))
            .await?;
    }
    j.step(Step::EtcdManifestMoved, async {
        fsutil::move_file(&paths.etcd_manifest, &paths.backup_dir.join("etcd.yaml"))
            .map_err(io("moving etcd.yaml"))
    })
    .await?;
    let ports = p.node.manifest.listen_ports();
    j.step(Step::EtcdStopped, async {
        wait_until(wait, || probe::still_running(&paths.data_dir, &ports)).map_err(|why| {
            format!(
                "etcd is still running on {}: {}",
                paths.data_dir.display(),
                why.join(", ")
            )
        })
    })
    .await?;
    j.step(Step::DataDirBuilt, async {
        let options = BuildOptions {
            skip_hash_check: opts.skip_hash_check,
            target: p.target_version,
            // The version guard has decided already (a Fail stops before this step).
            force: true,
        };
        let built = build_data_dir(&p.snapshot, &p.plan, &paths.built, options)
            .map_err(|e| format!("building the new data dir: {e}"))?;
        for w in &built.warnings {
            tracing::warn!("{w}");
        }
        Ok(())
    })
    .await?;
    swap_data_dir(j, &paths).await?;
    j.step(Step::ManifestWritten, async {
        let (text, _) = p
            .manifest_preview
            .clone()
            .ok_or("the manifest cannot be rewritten")?;
        fsutil::write_atomic(&paths.etcd_manifest, text.as_bytes(), p.node.manifest_mode)
            .map_err(io("writing etcd.yaml"))
    })
    .await?;
    j.step(Step::EtcdHealthy, async {
        if opts.no_wait {
            return Ok(());
        }
        let tls = p
            .tls
            .as_ref()
            .ok_or("no TLS material to check the restored member with")?;
        let expect = Expect {
            member_id: Some(p.cluster.this().id),
            cluster_id: Some(p.cluster.cluster_id),
            revision: Some(p.revision_after),
            quorum: true,
        };
        let said = wait_healthy(&p.endpoint, tls, &expect, opts.timeout).await?;
        tracing::info!("restored etcd is healthy: {said}");
        Ok(())
    })
    .await?;
    if paths.apiserver_manifest.is_some() {
        j.step(Step::ApiserverRestored, async {
            put_back_apiserver(&paths).map_err(io("putting kube-apiserver.yaml back"))
        })
        .await?;
    }
    Ok(())
}

/// Moves kube-apiserver's manifest out and waits until its port is closed.
async fn stop_apiserver(api: &Path, paths: &Paths, opts: &Options) -> Result<(), String> {
    let moved = paths.backup_dir.join("kube-apiserver.yaml");
    fsutil::move_file(api, &moved).map_err(io("moving kube-apiserver.yaml"))?;
    if opts.no_wait {
        return Ok(());
    }
    let ports = apiserver_ports(&moved);
    wait_until(opts.timeout, || {
        probe::listening_ports()
            .map(|open| {
                ports
                    .iter()
                    .filter(|p| open.contains(p))
                    .map(|p| format!("port {p} still listening"))
                    .collect()
            })
            .unwrap_or_default()
    })
    .map_err(|why| {
        format!(
            "kube-apiserver did not stop within {:?}: {}",
            opts.timeout,
            why.join(", ")
        )
    })
}

/// The old data (the whole dir, or `member/` when the data dir is a mount point) renamed to
/// `pre_restore`, the new one renamed into its place with the old owner and mode 0700.
async fn swap_data_dir(j: &mut Journal, paths: &Paths) -> Result<(), String> {
    // Owner of the old data (or its parent, when the data dir is gone).
    let owner = std::fs::metadata(&paths.data_dir)
        .or_else(|_| std::fs::metadata(paths.data_dir.parent().unwrap_or(Path::new("/"))))
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    let (old, new): (PathBuf, PathBuf) = if paths.swap_member_only {
        (paths.data_dir.join("member"), paths.built.join("member"))
    } else {
        (paths.data_dir.clone(), paths.built.clone())
    };
    j.step(Step::OldDataDirMoved, async {
        if old.exists() {
            fsutil::rename_durable(&old, &paths.pre_restore)
                .map_err(io(&format!("renaming {}", old.display())))?;
        }
        Ok(())
    })
    .await?;
    j.step(Step::NewDataDirInPlace, async {
        let into = format!("renaming the new data dir into {}", old.display());
        fsutil::rename_durable(&new, &old).map_err(io(&into))?;
        if paths.swap_member_only {
            let _ = std::fs::remove_dir(&paths.built);
        }
        copy_ownership(&old, owner.0, owner.1)
            .map_err(io("setting the owner of the new data dir"))?;
        std::fs::set_permissions(&paths.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod 0700 the data dir"))
    })
    .await
}

/// Gives the new tree the old dir's owner (a rootless control plane runs etcd as its own uid).
fn copy_ownership(tree: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let chown = |p: &Path| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(std::io::Error::from)
    };
    chown(tree)?;
    if tree.is_dir() {
        for e in std::fs::read_dir(tree)? {
            copy_ownership(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}
