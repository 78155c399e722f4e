//! Local retention: the rule applied to the snapshot directory, under the records lock. Only
//! files with our name pattern that a record points at, in the directory configured now, are
//! touched; a copy still pending upload is given up when its local file goes.

use chrono::{DateTime, Utc};

use crate::records::{Record, RemoteState};
use crate::retention::{self, Rule};
use crate::store::local::LocalStore;

/// Deletes what the retention policy selects and marks those records; the names deleted.
/// Problems (a file that could not be deleted) go to `warnings`.
pub fn apply_retention(
    records: &mut [Record],
    store: &LocalStore,
    now: DateTime<Utc>,
    rule: Rule,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut deleted = Vec::new();
    for d in retention::local_deletions(records, now, rule) {
        let rec = &mut records[d.index];
        // The local file's own name (a sealed copy's ends with `.zst.age`).
        let Some(local) = rec.local.as_mut() else {
            continue;
        };
        let Some(name) = own_name(store, &local.path) else {
            continue;
        };
        let deleted_file = store.delete(&name);
        crate::crashpoint::here("retention:file-deleted");
        match deleted_file {
            Ok(existed) => {
                let reason = if existed {
                    d.reason
                } else {
                    format!("{} (the file was already gone)", d.reason)
                };
                tracing::info!(file = %name, reason = %reason, "retention deleted local snapshot");
                local.deleted(now, reason);
                for r in rec
                    .remotes
                    .iter_mut()
                    .filter(|r| r.state == RemoteState::Pending)
                {
                    r.give_up("the local copy was deleted by retention before an upload succeeded");
                }
                deleted.push(name);
            }
            Err(e) => warnings.push(format!(
                "retention could not delete {}: {e}",
                store.path_of(&name).display()
            )),
        }
    }
    deleted
}

/// What local retention would delete now: (path, why) per file (`prune --dry-run`).
pub fn plan(
    records: &[Record],
    store: &LocalStore,
    now: DateTime<Utc>,
    rule: Rule,
) -> Vec<(String, String)> {
    retention::local_deletions(records, now, rule)
        .into_iter()
        .filter_map(|d| {
            let path = &records[d.index].local.as_ref()?.path;
            own_name(store, path).map(|_| (path.display().to_string(), d.reason))
        })
        .collect()
}

/// The file name of `path` when it is in the snapshot directory configured now (a record of
/// another directory, after `local_storage.path` changed, is not ours to touch).
fn own_name(store: &LocalStore, path: &std::path::Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.to_string();
    (*path == store.path_of(&name)).then_some(name)
}
