//! The guarded offline restore of a kubeadm node (restore-spec E, the procedure of the
//! Kubernetes docs made safe): read the node from its static pod manifest, check everything
//! (guards), then stop kube-apiserver and etcd by moving their manifests out, build the new
//! data dir next to the old one, swap by rename (the old one is kept), rewrite `etcd.yaml`,
//! wait for the restored member, and put the API server back. Every step is journaled before
//! and after; any failure of a single-member restore rolls back automatically, and
//! `--rollback` undoes a restore from its journal at any point.
//!
//! Nothing here deletes an old data dir, and nothing is changed before every guard passed.
//! The files, in the order a restore runs: `node` (the node and its paths), `guards`, `prepare`, `render`, `execute`, `rollback`, `wait`. This module holds
//! the backup lock for the whole of it and records the outcome.

mod execute;
mod guards;
mod node;
mod prepare;
mod render;
mod rollback;
mod wait;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::journal::{self, Journal, JournalState};
use crate::clock;
use crate::config::Config;
use crate::fsutil::{under_root, LockGuard};
use crate::records::{Member, Record, RecordStore, Trigger};
use crate::state::{LockError, StateDir};

pub(crate) use guards::space_needed;
pub use prepare::{PrepareError, Prepared};

/// How long a restore waits for a running backup to finish.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--snapshot`: a file, a record id, or a remote key.
    pub source: String,
    pub root: Option<PathBuf>,
    pub initial_cluster: Option<String>,
    pub token: Option<String>,
    pub bump_revision: u64,
    pub force: bool,
    pub skip_hash_check: bool,
    /// `--identity`: opens a sealed (age) snapshot.
    pub identity: Option<PathBuf>,
    /// How long to wait for the restored member to be healthy.
    pub timeout: Duration,
    /// Change the files but do not wait for etcd (no kubelet, e.g. a disk mounted for rescue).
    pub no_wait: bool,
}

impl Options {
    /// `--root`, or `/`.
    pub fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// A restore from its guards to its end, holding the backup lock all along. `config` is the
/// node's configuration already under `--root` (`Config::under_root`).
pub struct Session<'a> {
    config: &'a Config,
    opts: &'a Options,
    prepared: Prepared,
    /// Names the restore's backup dir and journal; milliseconds, so two restores in one
    /// second do not share them.
    stamp: String,
    started: Instant,
    _lock: LockGuard,
}

/// Takes the backup lock (waiting for a running backup), then prepares: reads everything and
/// evaluates the guards. Nothing is changed.
pub async fn begin<'a>(config: &'a Config, opts: &'a Options) -> Result<Session<'a>, PrepareError> {
    let started = Instant::now();
    let lock = wait_for_lock(config).map_err(|e| PrepareError::Failed(e.to_string()))?;
    let prepared = prepare::prepare(config, opts).await?;
    Ok(Session {
        config,
        opts,
        prepared,
        stamp: clock::stamp(clock::now()),
        started,
        _lock: lock,
    })
}

impl Session<'_> {
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The plan and the guards, for the operator to read.
    pub fn plan_text(&self) -> String {
        render::render(&self.prepared, &self.stamp)
    }

    /// Runs the restore (the guards passed and the operator agreed) and records it.
    pub async fn execute(self) -> Result<Journal, String> {
        let result = execute::execute(self.config, &self.prepared, self.opts, &self.stamp).await;
        let (journal, outcome) = match &result {
            Ok(j) => (Some(j), Ok(())),
            Err(e) => (None, Err(e.as_str())),
        };
        record(
            self.config,
            Trigger::Restore,
            journal,
            &self.prepared.snapshot,
            outcome,
            self.started,
        );
        result
    }
}

/// What `--rollback` did.
pub enum RolledBack {
    /// The journal says it was rolled back before: nothing done.
    Already(PathBuf),
    Now(Box<Journal>),
}

/// Undoes the restore of the journal at `which` (the newest under `/etc/kubernetes/tmp` when
/// `None`), holding the backup lock, and records it.
pub async fn rollback(
    config: &Config,
    opts: &Options,
    which: Option<&Path>,
) -> Result<RolledBack, String> {
    let started = Instant::now();
    let path = match which {
        Some(p) => p.to_owned(),
        None => journal::latest(&under_root(&opts.root(), Path::new(node::KUBEADM_TMP)))
            .ok_or_else(|| {
                format!(
                    "no restore journal found under {} (pass its path)",
                    node::KUBEADM_TMP
                )
            })?,
    };
    let mut j = Journal::load(&path)?;
    if j.state == JournalState::RolledBack {
        return Ok(RolledBack::Already(path));
    }
    let _lock = wait_for_lock(config).map_err(|e| e.to_string())?;
    let res = rollback::rollback_journal(config, &mut j, opts).await;
    let snapshot = j.snapshot.clone();
    let outcome = res.as_ref().map(|_| ()).map_err(String::as_str);
    record(
        config,
        Trigger::Rollback,
        Some(&j),
        &snapshot,
        outcome,
        started,
    );
    match res {
        Ok(()) => Ok(RolledBack::Now(Box::new(j))),
        Err(e) => Err(format!("rollback failed: {e}; journal {}", path.display())),
    }
}

/// The backup lock, waiting up to `LOCK_WAIT` for a running backup. The wait sleeps on the
/// calling thread: the CLI drives a restore with `block_on`, so no runtime worker is held.
fn wait_for_lock(config: &Config) -> Result<LockGuard, LockError> {
    StateDir::new(&config.state_dir).lock_backup_waiting(LOCK_WAIT)
}

/// Appends the record of a restore or a rollback; a record that cannot be written is logged.
fn record(
    config: &Config,
    trigger: Trigger,
    j: Option<&Journal>,
    snapshot: &Path,
    result: Result<(), &str>,
    started: Instant,
) {
    let member = j.map(|j| Member {
        name: j.plan.name.clone(),
        id: Some(j.plan.member_id.clone()),
        endpoint: String::new(),
    });
    let rec = Record::restore(
        trigger,
        clock::now(),
        snapshot,
        member,
        j.map(|j| (j.plan.revision, j.snapshot_sha256.clone())),
        result,
        started.elapsed().as_secs_f64(),
    );
    if let Err(e) = RecordStore::new(&config.state_dir).append(rec) {
        tracing::error!("cannot record the {}: {e}", trigger.as_str());
    }
}
