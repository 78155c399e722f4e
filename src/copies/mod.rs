//! The life of a copy, at every destination, after the backup's pass made it (or could not):
//!
//! - [`settle`]: after *any* upload (the backup's pass or a retry), one rule for what follows:
//!   the recovery bundle beside the primary destination's copy, every sidecar, a copy whose
//!   sidecar failed made pending again, the cluster's slot marked done;
//! - [`retry`]: pending copies uploaded again from the local file, with backoff;
//! - [`cluster`]: `per = "cluster"` end to end: the slot decided before the stream, mapped to
//!   the record's copies, resolved later by a retry (confirmed, waited for, or taken over);
//! - [`retention`]: remote retention (and `prune`, its dry run), Object Lock, pins, the
//!   open multipart uploads a killed run left, records that name vanished objects;
//! - [`local`]: local retention, the same rule for the local file;
//! - [`listing`]: every node's snapshots from the sidecars (`records --remote`, `recover`).
//!
//! This file is the maintenance pass the daemon and `snapshot` run after a backup (and the
//! daemon at start-up and when a retry is due): due retries, then retention, at every
//! destination at the same time. Network work happens outside the records lock; each result
//! is then written to the record it belongs to (by id) under the lock, so a slow destination
//! never blocks other writers.

pub mod cluster;
pub mod listing;
pub mod local;
pub mod retention;
pub mod retry;
pub mod settle;

use chrono::{DateTime, Utc};

use crate::config::{Config, DestinationConfig};
use crate::preflight::{self, RemoteCheck};
use crate::records::{Record, RecordStore};
use crate::state::{LockError, StateDir};

/// What a maintenance pass did.
#[derive(Debug, Default, Clone)]
pub struct Maintenance {
    /// Pending uploads that succeeded now.
    pub uploaded: Vec<String>,
    /// Pending uploads that failed again (file, error).
    pub retry_failed: Vec<(String, String)>,
    /// Remote snapshots deleted by retention.
    pub deleted: Vec<String>,
    /// Multipart uploads left open by a backup that died mid-upload, aborted now.
    pub aborted_uploads: Vec<String>,
    /// Problems that stopped part of the pass.
    pub errors: Vec<String>,
}

impl Maintenance {
    /// Adds one destination's pass; with several destinations each line names its own.
    fn absorb(&mut self, rc: &DestinationConfig, one: Maintenance, named: bool) {
        let tag = |s: String| {
            if named {
                format!("{s} ({})", rc.name)
            } else {
                s
            }
        };
        self.uploaded.extend(one.uploaded.into_iter().map(tag));
        self.retry_failed
            .extend(one.retry_failed.into_iter().map(|(f, e)| (tag(f), e)));
        self.deleted.extend(one.deleted.into_iter().map(tag));
        self.aborted_uploads
            .extend(one.aborted_uploads.into_iter().map(tag));
        self.errors.extend(one.errors.into_iter().map(|e| {
            if named {
                format!("{}: {e}", rc.table)
            } else {
                e
            }
        }));
    }
}

/// Retries due pending uploads and applies remote retention, under the backup lock (so never
/// at the same time as a backup). `probe` first checks that every destination is there and
/// writable (the daemon's start-up pre-flight), and tries every pending upload whatever its
/// backoff. Busy lock: nothing done.
pub async fn run_maintenance(config: &Config, probe: bool) -> Result<Maintenance, LockError> {
    let _lock = StateDir::new(&config.state_dir).lock_backup()?;
    let mut m = Maintenance::default();
    if probe {
        for (table, checked) in preflight::remote(config, true).await {
            match checked {
                Ok(RemoteCheck::Probed(found)) => {
                    tracing::info!("remote storage pre-flight: {found}")
                }
                Ok(RemoteCheck::Opened) => {}
                Err(e) => {
                    let e = format!("remote storage pre-flight failed ({table}): {e}");
                    tracing::error!("{e}");
                    m.errors.push(e);
                }
            }
        }
    }
    let more = maintain(config, None, probe).await;
    m.errors.extend(more.errors);
    Ok(Maintenance {
        errors: m.errors,
        ..more
    })
}

/// When the next pending upload is due, at any destination (the daemon wakes up for it).
pub fn next_pending_at(config: &Config) -> Option<DateTime<Utc>> {
    if config.destinations.is_empty() {
        return None;
    }
    let f = RecordStore::new(&config.state_dir).load().ok()?;
    config
        .destinations
        .iter()
        .flat_map(|d| {
            retry::due(&f.records, &d.name, None)
                .into_iter()
                .filter_map(|r| r.copy(&d.name).and_then(|c| c.next_attempt_at))
                .collect::<Vec<_>>()
        })
        .min()
}

/// True when some pending upload is due (the daemon asks this on every tick).
pub fn has_due_pending(config: &Config, now: DateTime<Utc>) -> bool {
    !config.destinations.is_empty()
        && RecordStore::new(&config.state_dir).load().is_ok_and(|f| {
            config
                .destinations
                .iter()
                .any(|d| !retry::due(&f.records, &d.name, Some(now)).is_empty())
        })
}

/// Retries due pending uploads (all pending ones with `all_pending`, as at start-up), then
/// applies remote retention for this node, at every destination at the same time (one that
/// is down never holds up the others). `member` is this node's member name (from the
/// backup); without one, the newest record's is used.
pub async fn maintain(config: &Config, member: Option<&str>, all_pending: bool) -> Maintenance {
    let passes = futures_util::future::join_all(
        config
            .destinations
            .iter()
            .map(|rc| maintain_one(config, rc, member, all_pending)),
    )
    .await;
    let mut m = Maintenance::default();
    let named = config.destinations.len() > 1;
    for (rc, one) in config.destinations.iter().zip(passes) {
        m.absorb(rc, one, named);
    }
    for e in &m.errors {
        tracing::error!("{e}");
    }
    m
}

/// [`maintain`] at one destination: its due retries, then its retention.
async fn maintain_one(
    config: &Config,
    rc: &DestinationConfig,
    member: Option<&str>,
    all_pending: bool,
) -> Maintenance {
    let mut m = Maintenance::default();
    let file = match RecordStore::new(&config.state_dir).load() {
        Ok(f) => f,
        Err(e) => {
            m.errors.push(e.to_string());
            return m;
        }
    };
    let member = member
        .map(str::to_string)
        .or_else(|| newest_member(&file.records));
    let now = (!all_pending).then(crate::clock::now);
    retry::retry_due(config, rc, &file.records, now, &mut m).await;
    if let Some(member) = member {
        retention::maintain(config, rc, &member, &mut m).await;
    }
    m
}

/// The member name of this node's newest record that has one.
pub fn newest_member(records: &[Record]) -> Option<String> {
    records
        .iter()
        .rev()
        .find_map(|r| r.member.as_ref().map(|m| m.name.clone()))
}
