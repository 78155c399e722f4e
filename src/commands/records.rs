//! `etcdguard records` (this node's records file) and `etcdguard records --remote` (what the
//! bucket holds, from the sidecars).

use std::path::Path;
use std::process::ExitCode;

use super::output::{human_size, print, print_json, table_for_stdout};
use super::{runtime, CmdResult};
use crate::cli::RecordsFormat;
use crate::config;
use crate::exit::CommandError;
use crate::records::{self, CopyState, Outcome, Record, RecordStore};
use crate::retention;

pub(super) fn local(
    config_path: Option<&Path>,
    format: RecordsFormat,
    limit: Option<usize>,
) -> CmdResult {
    let config = config::load(config_path)?;
    let file = RecordStore::new(&config.state_dir)
        .load()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let status = retention::local_status(
        &file.records,
        crate::clock::now(),
        config.local_storage.retention,
    );
    let mut shown: Vec<(&Record, Option<&str>)> = file
        .records
        .iter()
        .zip(status.iter().map(Option::as_deref))
        .rev()
        .collect();
    if let Some(n) = limit {
        shown.truncate(n);
    }
    match format {
        RecordsFormat::Json => {
            // Each record as stored, plus `retention`: why its snapshot is kept or when it goes.
            let values: Vec<serde_json::Value> = shown
                .iter()
                .map(|(r, status)| {
                    let mut v = serde_json::to_value(r).expect("record serializes");
                    if let (Some(obj), Some(s)) = (v.as_object_mut(), status) {
                        obj.insert("retention".into(), (*s).into());
                    }
                    v
                })
                .collect();
            print_json(&values)?;
        }
        RecordsFormat::Table => print(&records_table(&shown, table_for_stdout))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One destination's copy of `r`, in its column.
fn remote_cell(r: &Record, dest: &str) -> String {
    use crate::records::RemoteState;
    match r.copy(dest) {
        None => "-".into(),
        Some(c) => match c.state {
            RemoteState::Uploaded if r.pin.is_some() => "uploaded (pinned)".into(),
            RemoteState::Uploaded => match &c.cluster {
                Some(cl) if cl.fallback.is_some() => "uploaded (own: no quorum)".into(),
                Some(_) => "uploaded (cluster)".into(),
                None => "uploaded".into(),
            },
            RemoteState::Covered => format!(
                "covered by {}",
                c.cluster
                    .as_ref()
                    .and_then(|cl| cl.uploader.as_deref())
                    .unwrap_or("?")
            ),
            RemoteState::Pending if c.waits_for_cluster() => format!(
                "pending ({} uploads)",
                c.cluster
                    .as_ref()
                    .and_then(|cl| cl.uploader.as_deref())
                    .unwrap_or("?")
            ),
            RemoteState::Pending => format!("pending ({} tries)", c.attempts),
            RemoteState::Failed => "FAILED".into(),
            RemoteState::Deleted => "deleted".into(),
        },
    }
}

/// The destinations the records name, in the order they first appear (the configuration's
/// order when the backups were taken).
fn destinations_of(records: &[(&Record, Option<&str>)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in records.iter().flat_map(|(r, _)| &r.remotes) {
        if !out.contains(&c.destination) {
            out.push(c.destination.clone());
        }
    }
    out
}

/// The member's etcd version and, in brackets, the snapshot's storage version (what a restore
/// must run; etcd ≥ 3.6 sends it). Pure.
fn etcd_cell(r: &Record) -> String {
    match (&r.etcd_version, &r.snapshot_version) {
        (None, _) => "-".into(),
        (Some(v), Some(s)) => format!("{v} ({s})"),
        (Some(v), None) => v.clone(),
    }
}

/// Columns left out first when the table is too wide for the terminal, in this order.
const NARROW_DROPS: [&str; 8] = [
    "RETENTION",
    "ETCD (DATA)",
    "TRIGGER",
    "MEMBER",
    "LOCAL",
    "REVISION",
    "TIME (UTC)",
    "REMOTE",
];

/// The records as a table, newest first, laid out by `layout` (`table_for_stdout`, or
/// `table`). Pure given a pure layout.
pub(crate) fn records_table(
    records: &[(&Record, Option<&str>)],
    layout: impl Fn(&[&str], &[Vec<String>], &[&str]) -> String,
) -> String {
    if records.is_empty() {
        return "no backup records yet\n".to_string();
    }
    // One column per destination: `REMOTE` for a single one (or none), else its name.
    let dests = destinations_of(records);
    let dest_headers: Vec<String> = match dests.as_slice() {
        [] | [_] => vec!["REMOTE".to_string()],
        many => many.iter().map(|d| d.to_uppercase()).collect(),
    };
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|(r, status)| {
            let local = match &r.local {
                Some(l) if l.state == CopyState::Present => "present".to_string(),
                Some(_) => "deleted".to_string(),
                None => "-".to_string(),
            };
            let detail = match r.result {
                Outcome::Success => {
                    let mut d = r.file_name.clone().unwrap_or_default();
                    for a in r.health.iter().flat_map(|h| &h.alarms) {
                        d.push_str(&format!(" [alarm {a}]"));
                    }
                    d
                }
                Outcome::Failed | Outcome::Skipped => r.reason.clone().unwrap_or_default(),
            };
            let mut row = vec![
                r.id.clone(),
                records::rfc3339(r.backup_timestamp),
                format!("{:?}", r.result),
                r.trigger.as_str().to_string(),
                r.member
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| "-".into()),
                etcd_cell(r),
                r.revision
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.size_bytes.map(human_size).unwrap_or_else(|| "-".into()),
                local,
            ];
            match dests.as_slice() {
                [] => row.push("-".into()),
                all => row.extend(all.iter().map(|d| remote_cell(r, d))),
            }
            row.push(detail);
            row.push(status.unwrap_or("-").to_string());
            row
        })
        .collect();
    let mut headers = vec![
        "ID",
        "TIME (UTC)",
        "RESULT",
        "TRIGGER",
        "MEMBER",
        "ETCD (DATA)",
        "REVISION",
        "SIZE",
        "LOCAL",
    ];
    headers.extend(dest_headers.iter().map(String::as_str));
    headers.extend(["FILE / REASON", "RETENTION"]);
    layout(&headers, &rows, &NARROW_DROPS)
}

pub(super) fn remote(
    config_path: Option<&Path>,
    format: RecordsFormat,
    limit: Option<usize>,
    node: Option<&str>,
) -> CmdResult {
    let config = config::load(config_path)?;
    // The primary destination: every node's sidecars are there (and the recovery bundles).
    let Some(rc) = config.primary() else {
        return Err(CommandError::Failed(
            "no [remote_storage] or [[destination]] in the configuration: nothing to list".into(),
        ));
    };
    let entries = runtime()?
        .block_on(crate::copies::listing::list(rc, node, limit))
        .map_err(CommandError::Failed)?;
    let local = RecordStore::new(&config.state_dir)
        .load()
        .map(|f| f.records)
        .unwrap_or_default();
    let known = |e: &crate::copies::listing::RemoteEntry| {
        local.iter().any(|r| {
            r.file_name == e.record.file_name
                && r.member.as_ref().map(|m| &m.name) == e.record.member.as_ref().map(|m| &m.name)
        })
    };
    match format {
        RecordsFormat::Json => {
            let values: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "node": e.node,
                        "key": e.key,
                        "knownLocally": known(e),
                        "record": e.record,
                    })
                })
                .collect();
            print_json(&values)?;
        }
        RecordsFormat::Table => {
            if entries.is_empty() {
                print(&format!(
                    "no snapshots under {}\n",
                    crate::store::remote::location(rc, &rc.prefix)
                ))?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.node.clone(),
                            records::rfc3339(e.record.backup_timestamp),
                            e.record
                                .revision
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "-".into()),
                            e.record
                                .size_bytes
                                .map(human_size)
                                .unwrap_or_else(|| "-".into()),
                            if known(e) { "yes" } else { "no" }.to_string(),
                            e.location.clone(),
                        ]
                    })
                    .collect();
                print(&table_for_stdout(
                    &[
                        "NODE",
                        "TIME (UTC)",
                        "REVISION",
                        "SIZE",
                        "IN LOCAL RECORDS",
                        "OBJECT",
                    ],
                    &rows,
                    &["IN LOCAL RECORDS", "REVISION", "SIZE"],
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table() {
        assert_eq!(
            records_table(&[], |h, r, _| super::super::output::table(h, r)),
            "no backup records yet\n"
        );
    }
}
