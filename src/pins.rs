//! Pinned snapshots: kept by every retention, local and remote, until unpinned (retention.rs
//! leaves them outside its rule). A pin lives in the record, and in the remote copy's sidecar
//! so the bucket says it too (remote retention asks both).

use std::time::Duration;

use crate::config::Config;
use crate::records::{Pin, Record, RecordStore};
use crate::state::StateDir;
use crate::store::remote::Remote;

/// How long `pin`/`unpin` wait for a backup that is running (it may be applying retention).
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Why a pin change was not made.
#[derive(Debug)]
pub enum SetError {
    /// The record named does not exist or has nothing to pin: nothing changed.
    Input(String),
    Failed(String),
}

/// What a pin change did.
#[derive(Debug)]
pub struct Changed {
    pub record: Record,
    /// The pin was already as asked: nothing written.
    pub unchanged: bool,
    /// The remote copy's sidecar could not be updated (the pin still holds on this node).
    pub sidecar_error: Option<String>,
}

/// Pins (`Some`) or unpins (`None`) the snapshot of the record `selector` names (its id or
/// its file name), under the backup lock so no retention runs meanwhile; then rewrites its
/// remote copy's sidecar.
pub async fn set(config: &Config, selector: &str, pin: Option<Pin>) -> Result<Changed, SetError> {
    let state = StateDir::new(&config.state_dir);
    let store = RecordStore::new(&config.state_dir);
    // Checked on a read first, before the lock: bad input changes nothing on disk.
    let known = store
        .load()
        .map_err(|e| SetError::Failed(e.to_string()))?
        .records
        .iter()
        .any(|r| r.id == selector || r.file_name.as_deref() == Some(selector));
    if !known {
        return Err(SetError::Input(format!(
            "no record {selector:?} on this node: give a record id or a snapshot file name as \
             `etcdguard records` lists them"
        )));
    }
    let _lock = tokio::task::block_in_place(|| state.lock_backup_waiting(LOCK_WAIT))
        .map_err(|e| SetError::Failed(e.to_string()))?;
    let found = store
        .load()
        .map_err(|e| SetError::Failed(e.to_string()))?
        .records
        .into_iter()
        .find(|r| r.id == selector || r.file_name.as_deref() == Some(selector))
        .ok_or_else(|| {
            SetError::Input(format!(
                "no record {selector:?} on this node: give a record id or a snapshot file name \
                 as `etcdguard records` lists them"
            ))
        })?;
    let exists = found.is_good_local() || found.remotes.iter().any(|c| c.may_exist());
    if pin.is_some() && !exists {
        return Err(SetError::Input(format!(
            "record {} has no snapshot left to pin (no local file, no remote copy)",
            found.id
        )));
    }
    let unchanged = match (&found.pin, &pin) {
        (None, None) => true,
        (Some(old), Some(new)) => old.label == new.label,
        _ => false,
    };
    let record = if unchanged {
        found
    } else {
        store
            .update(crate::clock::now(), |f| {
                let r = f.records.iter_mut().find(|r| r.id == found.id)?;
                r.pin = pin.clone();
                Some(r.clone())
            })
            .map_err(|e| SetError::Failed(e.to_string()))?
            .0
            .ok_or_else(|| SetError::Failed(format!("record {} went away meanwhile", found.id)))?
    };
    let mut changed = Changed {
        record,
        unchanged,
        sidecar_error: None,
    };
    // Every uploaded copy's sidecar says the pin (retention at each destination asks it).
    let mut errors = Vec::new();
    for rc in config.destinations.iter().filter(|_| !unchanged) {
        let uploaded = changed
            .record
            .copy(&rc.name)
            .is_some_and(|c| c.state == crate::records::RemoteState::Uploaded);
        if !uploaded {
            continue;
        }
        let member = changed
            .record
            .member
            .as_ref()
            .map_or("", |m| m.name.as_str());
        let written = match Remote::open(rc, member) {
            Ok(remote) => crate::copies::settle::write_sidecar(&remote, &changed.record).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            errors.push(format!("{}: {e}", rc.name));
        }
    }
    changed.sidecar_error = (!errors.is_empty()).then(|| errors.join("; "));
    Ok(changed)
}
