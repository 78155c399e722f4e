//! The restore journal: every destructive step is written here (atomically, 0600) before it is
//! taken and again when it is done, so a restore killed at any point leaves enough to roll
//! back — or to see what happened. It lives in the restore's backup directory, next to the
//! untouched copies of the manifests.
//!
//! The step machinery is shared: [`JournalFile::step`] is the one way a journaled flow takes a
//! step, for the restore's [`Journal`] and for `recover`'s own journal (its [`RecoverStep`]s).

use std::future::Future;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil;

pub const JOURNAL_FILE: &str = "journal.json";
/// Backup directories are `<tmp dir>/etcdguard-restore-<stamp>`.
pub const BACKUP_DIR_PREFIX: &str = "etcdguard-restore-";

/// The steps of a restore, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// `kube-apiserver.yaml` moved into the backup dir, the API server seen stopped.
    ApiserverStopped,
    /// `etcd.yaml` moved into the backup dir.
    EtcdManifestMoved,
    /// Ports closed, db and WAL locks free.
    EtcdStopped,
    /// The new data dir built next to the old one.
    DataDirBuilt,
    /// The old data dir renamed to its `pre-restore` name.
    OldDataDirMoved,
    /// The new data dir renamed into place.
    NewDataDirInPlace,
    /// The rewritten `etcd.yaml` in the manifest dir.
    ManifestWritten,
    /// The restored member answered with the planned IDs and revision.
    EtcdHealthy,
    /// `kube-apiserver.yaml` back in the manifest dir.
    ApiserverRestored,
}

/// A step of a journaled flow, typed: its name is what the journal says (kebab-case) and what
/// `ETCDGUARD_TEST_CRASH_AFTER` kills after.
pub(crate) trait JournalStep: Copy + PartialEq {
    fn name(self) -> &'static str;
}

impl JournalStep for Step {
    fn name(self) -> &'static str {
        match self {
            Step::ApiserverStopped => "apiserver-stopped",
            Step::EtcdManifestMoved => "etcd-manifest-moved",
            Step::EtcdStopped => "etcd-stopped",
            Step::DataDirBuilt => "data-dir-built",
            Step::OldDataDirMoved => "old-data-dir-moved",
            Step::NewDataDirInPlace => "new-data-dir-in-place",
            Step::ManifestWritten => "manifest-written",
            Step::EtcdHealthy => "etcd-healthy",
            Step::ApiserverRestored => "apiserver-restored",
        }
    }
}

/// The steps of `recover` around the restore's own journal, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoverStep {
    /// The bundle's files put back on the node (replaced ones kept first).
    FilesPlaced,
    /// The guarded restore of the snapshot ran to its end.
    Restored,
}

impl JournalStep for RecoverStep {
    fn name(self) -> &'static str {
        match self {
            RecoverStep::FilesPlaced => "files-placed",
            RecoverStep::Restored => "restored",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Started,
    Done,
}

/// One line of a journal: `step` is now `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEntry<S = Step> {
    pub step: S,
    pub state: StepState,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalState {
    InProgress,
    Done,
    /// Failed where an automatic rollback is not safe (multi-member): roll back by hand on
    /// every node.
    Failed,
    RolledBack,
}

/// Every path a restore touches, resolved (under `--root` when given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paths {
    pub manifest_dir: PathBuf,
    pub etcd_manifest: PathBuf,
    /// Present when the node has an API server manifest.
    pub apiserver_manifest: Option<PathBuf>,
    pub backup_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Where the old data (dir, or `member` for a mount point) is kept.
    pub pre_restore: PathBuf,
    /// Where a failed new data dir is kept after a rollback.
    pub failed_restore: PathBuf,
    /// The new data dir as built, before it is moved into place.
    pub built: PathBuf,
    /// The data dir is a mount point: `member` is swapped inside it instead of the dir.
    pub swap_member_only: bool,
}

/// The restore plan as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRecord {
    pub name: String,
    pub initial_cluster: String,
    pub token: String,
    pub bump_revision: u64,
    pub member_id: String,
    pub cluster_id: String,
    /// The revision the restored member must report.
    pub revision: i64,
    pub members: usize,
    /// IDs of the member before the restore, when etcd could be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_member_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_cluster_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub version: u32,
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub state: JournalState,
    pub snapshot: PathBuf,
    pub snapshot_sha256: String,
    pub plan: PlanRecord,
    pub paths: Paths,
    pub steps: Vec<StepEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A journal as a file: the whole document is saved (atomically, 0600) each time a step is
/// marked, so it always says how far its flow got.
pub(crate) trait JournalFile: Serialize {
    type Step: JournalStep;

    /// Where the journal is saved.
    fn path(&self) -> PathBuf;
    fn steps(&self) -> &[StepEntry<Self::Step>];
    fn steps_mut(&mut self) -> &mut Vec<StepEntry<Self::Step>>;

    /// Writes the whole journal (atomic, 0600).
    fn save(&self) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).expect("journal serializes");
        json.push(b'\n');
        fsutil::write_atomic(&self.path(), &json, fsutil::PRIVATE_FILE_MODE)
    }

    /// Runs one journaled step: marked started, `work` awaited, marked done. The one way a
    /// journaled flow (the restore, `recover`) takes a step.
    async fn step<T>(
        &mut self,
        step: Self::Step,
        work: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let journal = |e: std::io::Error| format!("journal: {e}");
        mark(self, step, StepState::Started).map_err(journal)?;
        let out = work.await?;
        mark(self, step, StepState::Done).map_err(journal)?;
        Ok(out)
    }

    fn done(&self, step: Self::Step) -> bool {
        self.steps()
            .iter()
            .any(|e| e.step == step && e.state == StepState::Done)
    }

    fn started(&self, step: Self::Step) -> bool {
        self.steps().iter().any(|e| e.step == step)
    }
}

/// Records the state of `step` and saves; a step is written as started before it is taken and
/// as done after.
fn mark<J: JournalFile + ?Sized>(
    j: &mut J,
    step: J::Step,
    state: StepState,
) -> std::io::Result<()> {
    j.steps_mut().push(StepEntry {
        step,
        state,
        at: crate::clock::now(),
    });
    j.save()?;
    if state == StepState::Done {
        crash_point(step);
    }
    Ok(())
}

impl JournalFile for Journal {
    type Step = Step;

    fn path(&self) -> PathBuf {
        self.paths.backup_dir.join(JOURNAL_FILE)
    }

    fn steps(&self) -> &[StepEntry] {
        &self.steps
    }

    fn steps_mut(&mut self) -> &mut Vec<StepEntry> {
        &mut self.steps
    }
}

impl Journal {
    pub fn load(path: &Path) -> Result<Journal, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read restore journal {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("restore journal {} does not parse: {e}", path.display()))
    }
}

/// Test hook: `ETCDGUARD_TEST_CRASH_AFTER=<step>` kills the process (SIGKILL, no cleanup) right
/// after that step is journaled as done, so tests can prove a rollback from every point.
fn crash_point(step: impl JournalStep) {
    crate::crashpoint::here(step.name());
}

/// The newest journal under `tmp_dir` (by its directory's name, which sorts by time).
pub fn latest(tmp_dir: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(tmp_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(BACKUP_DIR_PREFIX)
        })
        .map(|e| e.path().join(JOURNAL_FILE))
        .filter(|p| p.is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}
