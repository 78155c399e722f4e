//! `etcdguard recover`: a control-plane node whose disk was lost, rebuilt from the bucket. On a
//! freshly installed machine with only the etcdguard configuration and an identity: the newest
//! good backup of the node that has a recovery bundle is found from the sidecars, the bundle
//! downloaded, opened and checked, its files put back (PKI, manifests, kubelet and kubeadm
//! configuration, the API server's EncryptionConfiguration) with their modes and owners, and
//! then the guarded restore of the snapshot runs.
//!
//! The kubelet must not run meanwhile: the data dir has to be in place before it starts etcd
//! from the manifests put back (a kubelet that found them first would start an empty etcd).
//! Every change is journaled (`<state_dir>/recover/<stamp>/journal.json`); `--rollback` undoes
//! it from any point: the restore's own rollback, the data dir it built moved aside, the
//! files put back removed and replaced ones restored. Bundle contents are never printed or
//! logged, only paths.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::journal::{JournalFile, RecoverStep, StepEntry, JOURNAL_FILE};

mod files;

use crate::bundle::{self, Contents};
use crate::clock;
use crate::config::Config;
use crate::copies::listing::{self, RemoteEntry};
use crate::encryption::Identities;
use crate::fsutil::{self, under_root};
use crate::restore::guarded::{self, Options};
use crate::state::StateDir;
use crate::store::local::sanitize_member;
use crate::store::remote::Remote;
use files::{compare, place_files, undo_files};
pub use files::{Action, Placement};

/// Version 2: typed steps with their time (`{step, state, at}`), as the restore's journal has
/// them; version 1 kept `[step, state]` pairs.
const JOURNAL_VERSION: u32 = 2;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    /// The member to recover; default: this machine's host name.
    pub node: Option<String>,
    /// A record id of that node to use instead of the newest good one with a bundle.
    pub record: Option<String>,
    pub identity: PathBuf,
    pub root: Option<PathBuf>,
    /// Replace files that exist and differ from the bundle (kept for the rollback).
    pub overwrite: bool,
}

impl RecoverOptions {
    fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// Everything `recover` will do, read before anything changes.
pub struct Plan {
    pub source: RemoteEntry,
    pub contents: Contents,
    pub placements: Vec<Placement>,
    pub data_dir: PathBuf,
    /// `<state_dir>/recover/<stamp>`: the bundle, its files, replaced files, the journal.
    pub work: PathBuf,
    pub stamp: String,
    pub refusals: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoverState {
    InProgress,
    Done,
    RolledBack,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecoverJournal {
    version: u32,
    id: String,
    started_at: DateTime<Utc>,
    state: RecoverState,
    record_id: String,
    snapshot_key: String,
    root: PathBuf,
    data_dir: PathBuf,
    placements: Vec<Placement>,
    steps: Vec<StepEntry<RecoverStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    /// The work dir the journal is saved in (not written: it is where the file is).
    #[serde(skip)]
    work: PathBuf,
}

impl JournalFile for RecoverJournal {
    type Step = RecoverStep;

    fn path(&self) -> PathBuf {
        self.work.join(JOURNAL_FILE)
    }

    fn steps(&self) -> &[StepEntry<RecoverStep>] {
        &self.steps
    }

    fn steps_mut(&mut self) -> &mut Vec<StepEntry<RecoverStep>> {
        &mut self.steps
    }
}

impl RecoverJournal {
    /// Saves, with an error for the operator.
    fn write(&self) -> Result<(), String> {
        self.save().map_err(|e| format!("journal: {e}"))
    }

    /// The journal in `work`; one written by an etcdguard before version 2 is read too, so a
    /// recover it left can still be rolled back.
    fn load(work: &Path) -> Result<RecoverJournal, String> {
        let bytes = std::fs::read(work.join(JOURNAL_FILE)).map_err(|e| e.to_string())?;
        let mut j = match serde_json::from_slice::<RecoverJournal>(&bytes) {
            Ok(j) => j,
            Err(e) => from_version_1(&bytes)
                .ok_or_else(|| format!("recover journal {} does not parse: {e}", work.display()))?,
        };
        j.work = work.to_owned();
        Ok(j)
    }
}

/// A version 1 journal, read as version 2: its `[step, state]` pairs become typed steps, timed
/// at the journal's start (their own time was not written).
fn from_version_1(bytes: &[u8]) -> Option<RecoverJournal> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("version")? != 1 {
        return None;
    }
    obj.insert("version".into(), JOURNAL_VERSION.into());
    let at = obj.get("startedAt")?.clone();
    let steps = obj.get_mut("steps")?.as_array_mut()?;
    for s in steps.iter_mut() {
        let (step, state) = match s.as_array()?.as_slice() {
            [step, state] => (step.clone(), state.clone()),
            _ => return None,
        };
        *s = serde_json::json!({ "step": step, "state": state, "at": at });
    }
    serde_json::from_value(v).ok()
}

fn this_host() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Finds the backup, downloads and opens its bundle, and compares it with the node. Changes
/// nothing on the node (the work dir under the state dir holds the download).
pub async fn prepare(config: &Config, opts: &RecoverOptions) -> Result<Plan, String> {
    // The recovery bundle goes with the first destination's copies.
    let rc = config.primary().ok_or(
        "no [remote_storage] or [[destination]] in the configuration: recover finds the node's \
         backups and their bundles at the first destination",
    )?;
    let ids = Identities::load(&opts.identity)?;
    let node = opts
        .node
        .clone()
        .or_else(this_host)
        .ok_or("cannot tell this node's member name from the host name: give --node NAME")?;
    let source = choose(
        listing::list(rc, None, None).await?,
        &node,
        opts.record.as_deref(),
    )?;
    let bundle_copy = source.record.bundle.clone().expect("chosen with a bundle");
    let root = opts.root();
    let stamp = clock::stamp(clock::now());
    let work = StateDir::new(&config.state_dir).recover_dir().join(&stamp);
    // The work dir holds the opened bundle (key material): a failure removes it.
    let opened = open_bundle(rc, &bundle_copy, &ids, &work).await;
    let contents = opened.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&work);
    })?;
    let mut placements = Vec::new();
    let mut conflicts = Vec::new();
    for e in &contents.entries {
        let action = compare(
            e,
            &under_root(&root, Path::new(&e.path)),
            &work.join("files"),
        );
        if action == Action::Replace {
            conflicts.push(e.path.clone());
        }
        placements.push(Placement {
            entry: e.clone(),
            action,
        });
    }
    let manifest = work.join("files/etc/kubernetes/manifests/etcd.yaml");
    let data_dir = crate::kubeadm::EtcdManifest::load(&manifest)
        .and_then(|m| m.host_data_dir())
        .map(|d| under_root(&root, Path::new(&d.host_path)))
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&work);
            format!("the bundle's etcd manifest: {e}")
        })?;
    let mut refusals = Vec::new();
    if std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) {
        refusals.push(format!(
            "{} exists and is not empty: this node still has its etcd data; use `etcdguard \
             restore` (recover is for a node whose disk was lost)",
            data_dir.display()
        ));
    }
    if !conflicts.is_empty() && !opts.overwrite {
        refusals.push(format!(
            "{} file(s) on the node differ from the bundle ({}); pass --overwrite to replace \
             them (the current ones are kept for --rollback)",
            conflicts.len(),
            conflicts.join(", ")
        ));
    }
    if root == Path::new("/") && kubelet_running() {
        refusals.push(
            "the kubelet is running: stop it first (`systemctl stop kubelet`); the data dir must \
             be in place before it starts etcd from the manifests put back"
                .into(),
        );
    }
    Ok(Plan {
        source,
        contents,
        placements,
        data_dir,
        work,
        stamp,
        refusals,
    })
}

/// Downloads the bundle into `work`, checks it against its record and opens it into
/// `work/files`.
async fn open_bundle(
    rc: &crate::config::DestinationConfig,
    copy: &crate::records::BundleCopy,
    ids: &Identities,
    work: &Path,
) -> Result<Contents, String> {
    fsutil::create_private_dir_all(&work.join("files"))
        .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let key = copy
        .location
        .strip_prefix(&format!("s3://{}/", rc.bucket))
        .unwrap_or(&copy.location);
    let sealed = work.join("bundle.tar.age");
    let (_, got) = Remote::open_shared(rc)?.download(key, &sealed).await?;
    if let Some(want) = &copy.object_sha256 {
        if &got != want {
            return Err(format!(
                "{} downloaded with sha256 {got}, but its record says {want}",
                copy.location
            ));
        }
    }
    bundle::unpack(&sealed, ids, &work.join("files"))
}

/// The newest successful backup of `node` with an uploaded bundle (or the record `id`).
fn choose(all: Vec<RemoteEntry>, node: &str, id: Option<&str>) -> Result<RemoteEntry, String> {
    let dir = sanitize_member(node);
    let usable = |e: &RemoteEntry| {
        e.record.result == crate::records::Outcome::Success
            && e.record
                .bundle
                .as_ref()
                .is_some_and(|b| b.state == crate::records::RemoteState::Uploaded)
    };
    let mine: Vec<RemoteEntry> = all
        .into_iter()
        .filter(|e| e.node.rsplit('/').next() == Some(dir.as_str()))
        .collect();
    let found = match id {
        Some(id) => mine.into_iter().find(|e| e.record.id == id),
        None => mine.into_iter().find(usable),
    };
    match found {
        Some(e) if usable(&e) => Ok(e),
        Some(e) => Err(format!(
            "record {} of node {node} has no recovery bundle in the bucket",
            e.record.id
        )),
        None => Err(format!(
            "no successful backup with a recovery bundle for node {node} in the bucket (give \
             --node NAME; `etcdguard records --remote` lists the nodes)"
        )),
    }
}

fn kubelet_running() -> bool {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok).any(|p| {
                std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "kubelet")
            })
        })
        .unwrap_or(false)
}

/// The plan for the operator: the backup, then each path and what happens to it. No content.
pub fn plan_text(p: &Plan) -> String {
    let r = &p.source.record;
    let mut out = format!(
        "recover node {} from the bucket\n  backup    {} taken {} (revision {}, {} bytes)\n  \
         snapshot  {}\n  bundle    {} ({} entries)\n  data dir  {}\n\nfiles put back:\n",
        p.contents.member,
        r.id,
        r.backup_timestamp.to_rfc3339(),
        r.revision.unwrap_or(0),
        r.size_bytes.unwrap_or(0),
        p.source.key,
        r.bundle.as_ref().map_or("", |b| b.location.as_str()),
        p.contents.entries.len(),
        p.data_dir.display(),
    );
    for pl in &p.placements {
        let e = &pl.entry;
        let what = match pl.action {
            Action::Create => "create ",
            Action::Same => "same   ",
            Action::Replace => "REPLACE",
        };
        out.push_str(&format!(
            "  {what} {:<7} {:04o} {}:{}  {}\n",
            format!("{:?}", e.kind).to_lowercase(),
            e.mode,
            e.uid,
            e.gid,
            e.path
        ));
    }
    out.push_str(
        "\nthen: the guarded restore of the snapshot (its plan and guards follow), without \
         waiting for etcd; start the kubelet afterwards.\n",
    );
    for r in &p.refusals {
        out.push_str(&format!("REFUSED: {r}\n"));
    }
    out
}

/// Why a recover did not finish.
#[derive(Debug)]
pub enum RecoverFailure {
    /// Nothing stays changed: refused before anything was written, or the restore did not
    /// start and the files put back were removed again.
    Undone(String),
    /// Changes stay on the node: `recover --rollback` undoes them.
    NeedsRollback(String),
}

/// Puts the files back and runs the guarded restore. `restore_opts` carries the restore's
/// flags (its source and identity are set here). When the restore does not start (its
/// snapshot cannot be read or opened, its guards refuse), the files put back are removed
/// again: nothing of the recover stays.
pub async fn execute(
    config: &Config,
    p: &Plan,
    restore_opts: &Options,
) -> Result<String, RecoverFailure> {
    if let Some(r) = p.refusals.first() {
        return Err(RecoverFailure::Undone(format!("{r}; nothing was changed")));
    }
    let mut j = RecoverJournal {
        version: JOURNAL_VERSION,
        id: p.stamp.clone(),
        started_at: clock::now(),
        state: RecoverState::InProgress,
        record_id: p.source.record.id.clone(),
        snapshot_key: p.source.key.clone(),
        root: restore_opts.root(),
        data_dir: p.data_dir.clone(),
        placements: p.placements.clone(),
        steps: Vec::new(),
        outcome: None,
        work: p.work.clone(),
    };
    j.write().map_err(RecoverFailure::NeedsRollback)?;
    let started = std::cell::Cell::new(false);
    let result = steps(config, p, restore_opts, &mut j, &started).await;
    let failure = match &result {
        Ok(_) => {
            j.state = RecoverState::Done;
            j.outcome = Some("recovered".into());
            None
        }
        Err(e) if !started.get() => match undo_files(&j.root, &j.placements, &p.work) {
            Ok(()) => {
                j.state = RecoverState::RolledBack;
                j.outcome = Some(format!("{e}; the files put back were removed again"));
                Some(RecoverFailure::Undone(format!(
                    "{e}\nthe files put back were removed again: nothing was changed"
                )))
            }
            Err(u) => {
                j.outcome = Some(e.clone());
                Some(RecoverFailure::NeedsRollback(format!(
                    "{e}\nremoving the files put back failed too: {u}"
                )))
            }
        },
        Err(e) => {
            j.outcome = Some(e.clone());
            Some(RecoverFailure::NeedsRollback(e.clone()))
        }
    };
    j.write().map_err(RecoverFailure::NeedsRollback)?;
    match failure {
        Some(f) => Err(f),
        None => result.map_err(RecoverFailure::NeedsRollback),
    }
}

async fn steps(
    config: &Config,
    p: &Plan,
    restore_opts: &Options,
    j: &mut RecoverJournal,
    started: &std::cell::Cell<bool>,
) -> Result<String, String> {
    let root = restore_opts.root();
    j.step(RecoverStep::FilesPlaced, async {
        place_files(&root, &p.placements, &p.work)
    })
    .await?;
    j.step(RecoverStep::Restored, async {
        let mut opts = restore_opts.clone();
        opts.source = p.source.key.clone();
        opts.no_wait = true;
        let session = guarded::begin(config, &opts)
            .await
            .map_err(|e| format!("the restore did not start: {e}"))?;
        let plan = session.plan_text();
        if !session.prepared().ok() {
            return Err(format!("the restore's guards refused:\n{plan}"));
        }
        started.set(true);
        let restored = session.execute().await;
        restored.map_err(|e| format!("the restore failed: {e}"))?;
        Ok(plan)
    })
    .await
}

/// How a rollback went.
pub enum RecoverRolledBack {
    Now(PathBuf),
    Already(PathBuf),
}

/// Undoes the newest recover (its journal under the state dir), from whatever point it
/// reached: the restore rolled back, the data dir it built moved aside, files put back
/// removed, replaced ones restored. Running it twice is harmless.
pub async fn rollback(
    config: &Config,
    restore_opts: &Options,
) -> Result<RecoverRolledBack, String> {
    let dir = StateDir::new(&config.state_dir).recover_dir();
    let mut stamps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("no recover journal under {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(JOURNAL_FILE).is_file())
        .collect();
    stamps.sort();
    let work = stamps
        .pop()
        .ok_or_else(|| format!("no recover journal under {}", dir.display()))?;
    let mut j = RecoverJournal::load(&work)?;
    if j.state == RecoverState::RolledBack {
        return Ok(RecoverRolledBack::Already(work));
    }
    if j.started(RecoverStep::Restored) {
        let mut opts = restore_opts.clone();
        opts.no_wait = true;
        match guarded::rollback(config, &opts, None).await {
            Ok(_) => {}
            Err(e) if e.contains("no restore journal found") => {}
            Err(e) => return Err(e),
        }
        if j.data_dir.exists() {
            let aside = PathBuf::from(format!(
                "{}.recover-rolled-back-{}",
                j.data_dir.display(),
                j.id
            ));
            fsutil::rename_durable(&j.data_dir, &aside)
                .map_err(|e| format!("moving the restored data dir aside: {e}"))?;
        }
    }
    undo_files(&j.root, &j.placements, &work)?;
    j.state = RecoverState::RolledBack;
    j.outcome = Some("rolled back".into());
    j.write()?;
    Ok(RecoverRolledBack::Now(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(work: &Path) -> RecoverJournal {
        RecoverJournal {
            version: JOURNAL_VERSION,
            id: "20261203T101500.123Z".into(),
            started_at: clock::now(),
            state: RecoverState::InProgress,
            record_id: "r1".into(),
            snapshot_key: "k".into(),
            root: PathBuf::from("/"),
            data_dir: PathBuf::from("/var/lib/etcd"),
            placements: Vec::new(),
            steps: Vec::new(),
            outcome: None,
            work: work.to_owned(),
        }
    }

    #[tokio::test]
    async fn steps_are_journaled_typed_private_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let mut j = journal(d.path());
        j.step(RecoverStep::FilesPlaced, async { Ok(()) })
            .await
            .unwrap();
        let failed = j
            .step(RecoverStep::Restored, async { Err::<(), _>("no".into()) })
            .await;
        assert_eq!(failed, Err("no".to_string()));
        let path = d.path().join(JOURNAL_FILE);
        assert_eq!(fsutil::mode_of(&path).unwrap(), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"step\": \"files-placed\""), "{text}");
        let back = RecoverJournal::load(d.path()).unwrap();
        assert_eq!(back.work, d.path());
        assert!(back.done(RecoverStep::FilesPlaced));
        assert!(back.started(RecoverStep::Restored));
        assert!(!back.done(RecoverStep::Restored));
    }

    #[test]
    fn a_version_1_journal_still_rolls_back() {
        let d = tempfile::tempdir().unwrap();
        let v1 = r#"{
  "version": 1,
  "id": "20261203T101500.123Z",
  "startedAt": "2026-12-03T10:15:00.123Z",
  "state": "in-progress",
  "recordId": "r1",
  "snapshotKey": "k",
  "root": "/",
  "dataDir": "/var/lib/etcd",
  "placements": [],
  "steps": [
    ["files-placed", "started"],
    ["files-placed", "done"],
    ["restored", "started"]
  ]
}
"#;
        std::fs::write(d.path().join(JOURNAL_FILE), v1).unwrap();
        let j = RecoverJournal::load(d.path()).unwrap();
        assert!(j.done(RecoverStep::FilesPlaced));
        assert!(j.started(RecoverStep::Restored));
        assert!(!j.done(RecoverStep::Restored));
        assert_eq!(j.steps[0].at, j.started_at);
        assert_eq!(j.version, JOURNAL_VERSION);

        std::fs::write(d.path().join(JOURNAL_FILE), b"{\"steps\": [").unwrap();
        let e = RecoverJournal::load(d.path()).err().unwrap();
        assert!(e.contains("does not parse: EOF"), "{e}");
    }
}
