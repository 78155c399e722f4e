//! What a run that was killed left, set right by the next one (under the backup lock, before
//! it streams): a record that says its local file is present when the file is gone (a run
//! killed between deleting the file and recording it) is marked deleted; a published snapshot
//! that no record knows (a run killed between publishing and recording) is verified and
//! adopted with a record of its own, its remote copy pending so the retry uploads it (and
//! writes its sidecar); one that does not verify is renamed out of the snapshot pattern and
//! said so. Temp files (`.partial`) are `attempt`'s to remove.

use crate::config::Config;
use crate::records::{
    CheckedFrom, CopyState, Member, Record, RecordStore, RemoteCopy, Snapshot, Trigger,
};
use crate::store::local::{is_snapshot_file_name, snapshot_time, LocalStore};

/// What the reconciliation did, one sentence each (logged and reported as warnings).
pub(super) fn reconcile(config: &Config, store: &LocalStore) -> Vec<String> {
    let mut said = Vec::new();
    let records = match RecordStore::new(&config.state_dir).load() {
        Ok(f) => f.records,
        // A corrupt records file is moved aside by the run's own update; then nothing is known.
        Err(_) => return said,
    };
    let names: Vec<String> = match std::fs::read_dir(store.dir()) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_snapshot_file_name(n))
            .collect(),
        Err(_) => return said,
    };
    let known = |name: &str| {
        records.iter().any(|r| {
            r.local
                .as_ref()
                .is_some_and(|l| l.path == store.path_of(name))
        })
    };
    let gone: Vec<String> = records
        .iter()
        .filter(|r| {
            r.local.as_ref().is_some_and(|l| {
                l.state == CopyState::Present
                    && l.path.parent() == Some(store.dir())
                    && !l.path.exists()
            })
        })
        .map(|r| r.id.clone())
        .collect();
    let mut adopted = Vec::new();
    for name in names.iter().filter(|n| !known(n)) {
        let path = store.path_of(name);
        if name.ends_with(".age") {
            said.push(format!(
                "{} is a sealed snapshot no record knows (a run was killed before it recorded \
                 it); left as it is: it opens with `etcdguard decrypt`",
                path.display()
            ));
            continue;
        }
        match adopt(config, name, &path) {
            Ok(r) => {
                said.push(format!(
                    "{} was published by a run killed before it recorded it: it verifies, and is \
                     adopted as record {}",
                    path.display(),
                    r.id
                ));
                adopted.push(r);
            }
            Err(e) => said.push(set_aside(name, &path, &e)),
        }
    }
    if !gone.is_empty() || !adopted.is_empty() {
        said.extend(record(config, &gone, adopted));
    }
    said
}

/// The record of a published snapshot no record knows, when it verifies: adopted, its copy at
/// every destination pending (due now), so the retry uploads it with its sidecar.
fn adopt(config: &Config, name: &str, path: &std::path::Path) -> Result<Record, String> {
    let report =
        crate::etcddb::verify_snapshot_file(path, false, None).map_err(|e| e.to_string())?;
    let member = name.get(30..name.len() - 3).unwrap_or("").to_string();
    let mut r = Record::backup_succeeded(
        Snapshot {
            at: snapshot_time(name).unwrap_or_else(crate::clock::now),
            file_name: name.to_string(),
            path: path.to_path_buf(),
            member: Member {
                name: member,
                id: None,
                endpoint: String::new(),
            },
            etcd_version: String::new(),
            storage_version: report.storage_version.clone(),
            snapshot_version: report.storage_version.clone(),
            revision: report.revision,
            size_bytes: report.size_bytes,
            sha256: report.sha256.clone().unwrap_or_default(),
            checked_from: CheckedFrom::File,
            local_sealed: None,
            pacing: None,
            health: None,
        },
        Trigger::Adopted,
        0.0,
    );
    r.etcd_version = None;
    let now = crate::clock::now();
    for rc in &config.destinations {
        let who = r.member.as_ref().map_or("", |m| m.name.as_str());
        let key = crate::store::remote::object_key(rc, who, name, config.encryption.as_ref());
        let mut c = RemoteCopy::pending(
            &rc.name,
            crate::store::remote::location(rc, &key),
            now,
            "adopted: uploaded (again) from the local file with its sidecar".into(),
        );
        c.next_attempt_at = Some(now);
        r.set_copy(c);
    }
    Ok(r)
}

/// A published snapshot no record knows that does not verify (`why`): renamed out of the
/// snapshot pattern; what was done, as one sentence.
fn set_aside(name: &str, path: &std::path::Path, why: &str) -> String {
    let aside = path.with_file_name(format!(
        "{name}.unverified-{}",
        crate::clock::now().format("%Y%m%dT%H%M%SZ")
    ));
    let moved = std::fs::rename(path, &aside);
    format!(
        "{} is a snapshot no record knows, and it does not verify ({why}); {}",
        path.display(),
        match moved {
            Ok(()) => format!("moved aside to {}", aside.display()),
            Err(m) => format!("it could not be moved aside: {m}"),
        }
    )
}

/// Records what reconciliation found: the records `gone` (their local file vanished) marked
/// deleted, the `adopted` ones appended. What was said.
fn record(config: &Config, gone: &[String], adopted: Vec<Record>) -> Option<String> {
    let now = crate::clock::now();
    let update = RecordStore::new(&config.state_dir).update(now, |f| {
        for r in f.records.iter_mut().filter(|r| gone.contains(&r.id)) {
            if let Some(l) = r.local.as_mut() {
                l.deleted(
                    now,
                    "the file was gone when the next backup looked (a run was killed while \
                     deleting it)"
                        .into(),
                );
            }
            for c in r
                .remotes
                .iter_mut()
                .filter(|c| c.state == crate::records::RemoteState::Pending)
            {
                c.give_up("the local copy is gone, nothing left to upload");
            }
        }
        for r in adopted {
            f.push(r);
        }
    });
    match update {
        Ok(_) if gone.is_empty() => None,
        Ok(_) => Some(format!(
            "{} record(s) named local files that were gone: marked deleted",
            gone.len()
        )),
        Err(e) => Some(format!("what a killed run left could not be recorded: {e}")),
    }
}
