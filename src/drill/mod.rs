//! `etcdguard drill` and the daemon's `[drill]` schedule: proof that a backup restores. The
//! newest good snapshot (local; the remote copy when there is no local one, or always with
//! `source = "remote"`; or the one named) is verified, built into a data dir for this node's
//! etcd version by the native engine in a scratch dir, and the built dir is read back and
//! checked as a starting etcd would check it (`checks`); optionally a real etcd is started on
//! it (`start`). The scratch dir is always removed; the live data dir is never touched. Every
//! drill leaves one `drill` record naming each check's verdict.
//!
//! A drill takes the drill lock, never the backup lock: a backup slot during a drill is taken
//! as usual. The chosen local file is held open for the whole drill (read through
//! `/proc/self/fd`), so retention deleting it meanwhile changes nothing.

mod apiserver;
mod checks;
mod choose;
mod damage;
mod scratch;
mod start;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::etcddb::{self, SnapshotFileReport};
use crate::etcdversion::{self, Compat, Minor};
use crate::fsutil;
use crate::kubeadm::EtcdManifest;
use crate::records::{
    Drill, DrillCheck, DrillOrigin, Member, MovedAside, Outcome, Record, RecordStore, RecordsError,
    Verdict,
};
use crate::restore::datadir::{self, BuildOptions, BuildReport, Cluster, RestorePlan};
use crate::state::{LockError, StateDir};

use checks::{DbContent, NodeIdentity};
use choose::{choose, Chosen};
use scratch::Scratch;

/// What the operator (or the schedule) asked for.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// A file, a record id or a remote key; `None`: the newest good copy.
    pub snapshot: Option<String>,
    /// The newest remote copy, whatever `[drill] source` says.
    pub remote: bool,
    /// Opens a sealed copy; `None`: `[drill] identity`.
    pub identity: Option<PathBuf>,
    /// Start this etcd on the built dir; `None`: `[drill] etcd_binary`.
    pub etcd_binary: Option<PathBuf>,
    /// Start this kube-apiserver on that etcd; `None`: `[drill] apiserver_binary`.
    pub apiserver_binary: Option<PathBuf>,
}

/// Why no drill was recorded.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("another drill is running{} (lock {}); not starting a second one", .holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), .lock.display())]
    Busy { holder: Option<u32>, lock: PathBuf },
    #[error(transparent)]
    State(LockError),
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("the drill was interrupted by {0}; nothing was recorded")]
    Interrupted(String),
}

/// What one drill produced.
#[derive(Debug)]
pub struct DrillReport {
    pub record: Record,
    pub records_moved: Option<MovedAside>,
}

/// The verdicts so far; once one failed, the rest are not run.
#[derive(Default)]
struct Run {
    checks: Vec<DrillCheck>,
    failed: bool,
}

impl Run {
    fn push(&mut self, name: &str, result: Verdict, detail: String) {
        self.checks.push(DrillCheck {
            name: name.to_string(),
            result,
            detail,
        });
    }

    /// Runs check `name` unless an earlier one failed.
    fn check<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<(T, String), String>,
    ) -> Option<T> {
        if self.failed {
            self.push(
                name,
                Verdict::Skipped,
                "not run: an earlier check failed".into(),
            );
            return None;
        }
        match f() {
            Ok((v, detail)) => {
                self.push(name, Verdict::Passed, detail);
                Some(v)
            }
            Err(e) => {
                self.push(name, Verdict::Failed, e);
                self.failed = true;
                None
            }
        }
    }
}

/// This node: who it is, and the etcd it runs.
struct NodeFacts {
    identity: NodeIdentity,
    manifest: EtcdManifest,
    /// From the manifest's image; `None` when it names no version etcdguard knows.
    minor: Option<Minor>,
}

fn node_facts(config: &Config, records: &[Record]) -> Result<NodeFacts, String> {
    let manifest = EtcdManifest::load(&config.etcd.manifest).map_err(|e| e.to_string())?;
    let name = manifest
        .member_name()
        .ok_or_else(|| format!("{} has no --name", config.etcd.manifest.display()))?
        .to_string();
    let peer_urls = manifest.advertise_peer_urls().map_err(|e| e.to_string())?;
    let member_id = records
        .iter()
        .rev()
        .filter(|r| r.trigger.is_backup())
        .filter_map(|r| r.member.as_ref())
        .find(|m| m.name == name)
        .and_then(|m| m.id.as_deref())
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    let minor = manifest
        .image_version()
        .and_then(|(a, b, _)| Minor::of(a, b));
    Ok(NodeFacts {
        identity: NodeIdentity {
            name,
            peer_urls,
            member_id,
        },
        manifest,
        minor,
    })
}

/// Runs one drill and records it. `cancel` set (shutdown) stops it between checks; an
/// interrupted drill is not recorded (it proved nothing either way).
pub fn run_drill(
    config: &Config,
    opts: &DrillOptions,
    cancel: Arc<AtomicBool>,
    handle: &tokio::runtime::Handle,
) -> Result<DrillReport, DrillError> {
    let started = crate::clock::now();
    let t0 = Instant::now();
    let state = StateDir::new(&config.state_dir);
    let _lock = state.lock_drill().map_err(|e| match e {
        LockError::Busy { holder, lock } => DrillError::Busy { holder, lock },
        other => DrillError::State(other),
    })?;
    let store = RecordStore::new(&config.state_dir);
    let records = store.load().map(|f| f.records).unwrap_or_default();
    let mut run = Run::default();
    let node = run.check("node", || {
        let n = node_facts(config, &records)?;
        let detail = format!(
            "{}, etcd {}",
            n.identity.name,
            n.minor
                .map_or("of an unknown version".into(), |m| m.to_string())
        );
        Ok((n, detail))
    });
    let scratch = run.check("scratch", || {
        let s = Scratch::create(&config.drill.scratch_dir)?;
        let d = format!("{}", s.path.display());
        Ok((s, d))
    });
    let chosen = match &scratch {
        Some(s) => run.check("source", || choose(config, opts, &records, &s.path, handle)),
        None => None,
    };
    let mut target = None;
    if let (Some(node), Some(scratch), Some(chosen)) = (&node, &scratch, &chosen) {
        let d = Drilling {
            config,
            opts,
            node,
            scratch,
            chosen,
            handle,
        };
        target = drill_dir(&d, &mut run, &cancel);
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(DrillError::Interrupted("shutdown".into()));
    }
    drop(scratch);
    let record = drill_record(
        started,
        t0,
        node.as_ref(),
        chosen.as_ref(),
        target,
        run.checks,
    );
    let history = config.history;
    let (_, moved) = store.update(crate::clock::now(), |f| {
        f.push(record.clone());
        crate::retention::trim_history(f, history);
    })?;
    Ok(DrillReport {
        record,
        records_moved: moved,
    })
}

/// The record of a drill started at `started` (`t0`): the snapshot chosen, if any, the version
/// its dir was built for, if it got that far, and every check's verdict.
fn drill_record(
    started: DateTime<Utc>,
    t0: Instant,
    node: Option<&NodeFacts>,
    chosen: Option<&Chosen>,
    target: Option<Minor>,
    checks: Vec<DrillCheck>,
) -> Record {
    let snapshot = chosen.map(|c| {
        (
            c.record
                .as_ref()
                .and_then(|r| r.file_name.clone())
                .unwrap_or_else(|| c.shown.clone()),
            c.record.as_ref().and_then(|r| r.revision),
            c.record.as_ref().and_then(|r| r.sha256.clone()),
        )
    });
    let record = chosen.and_then(|c| c.record.as_ref());
    let drill = Drill {
        snapshot_id: record.map(|r| r.id.clone()),
        source: chosen.map_or(DrillOrigin::None, |c| c.source),
        snapshot_timestamp: record.map(|r| r.backup_timestamp),
        target_version: target.map(|m| m.to_string()),
        checks,
    };
    let member = node.map(|n| Member {
        name: n.identity.name.clone(),
        id: n.identity.member_id.map(|i| format!("{i:x}")),
        endpoint: String::new(),
    });
    Record::drill(started, member, snapshot, drill, t0.elapsed().as_secs_f64())
}

/// What every step of one drill reads: the configuration, the request, this node, the
/// scratch dir and the chosen snapshot.
struct Drilling<'a> {
    config: &'a Config,
    opts: &'a DrillOptions,
    node: &'a NodeFacts,
    scratch: &'a Scratch,
    chosen: &'a Chosen,
    handle: &'a tokio::runtime::Handle,
}

impl Drilling<'_> {
    /// The etcd to start on the built dir, if any.
    fn etcd_binary(&self) -> Option<&PathBuf> {
        self.opts
            .etcd_binary
            .as_ref()
            .or(self.config.drill.etcd_binary.as_ref())
    }

    /// `e` naming the snapshot as humans know it rather than by the path read.
    fn shown(&self, e: String) -> String {
        e.replace(&self.chosen.path.display().to_string(), &self.chosen.shown)
    }
}

/// The checks from the snapshot's integrity to the optional etcd start. Returns the target
/// version the dir was built for.
fn drill_dir(d: &Drilling, run: &mut Run, cancel: &AtomicBool) -> Option<Minor> {
    let interrupted = || cancel.load(Ordering::SeqCst);
    let (report, source) = check_integrity(d, run)?;
    if interrupted() {
        return None;
    }
    let source: DbContent = run.check("cluster", || {
        let detail = checks::of_this_cluster(&source, &d.node.identity)?;
        Ok((source, detail))
    })?;
    let target = check_version(d, run, &report)?;
    check_space(d, run, &report)?;
    let data_dir = d.scratch.path.join("data");
    let built = build(d, run, target, &data_dir)?;
    if interrupted() {
        return None;
    }
    damage::apply(&data_dir);
    check_built(run, &source, &data_dir, &built.cluster)?;
    if interrupted() {
        return None;
    }
    let etcd = start_etcd(d, run, &source, &built.cluster, target, &data_dir);
    check_apiserver(d, run, etcd.as_ref(), source.revision);
    Some(target)
}

/// The snapshot's sha256 trailer (and its record's sha256) and bbolt consistency; the same
/// walk gives what the later checks compare the built db with.
fn check_integrity(d: &Drilling, run: &mut Run) -> Option<(SnapshotFileReport, DbContent)> {
    let chosen = d.chosen;
    run.check("integrity", || {
        let mut walk = checks::ContentWalk::new();
        let r = etcddb::verify_snapshot_file_visiting(&chosen.path, false, None, &mut walk)
            .map_err(|e| d.shown(e.to_string()))?;
        let content = walk.finish(r.status.total_size / u64::from(r.page_size.max(1)));
        let vs_record = match chosen.record.as_ref().and_then(|r| r.sha256.as_deref()) {
            Some(want) if Some(want) != r.sha256.as_deref() => {
                return Err(format!(
                    "{} has sha256 {}, but its record says {want}: the file changed since the \
                     backup",
                    chosen.shown,
                    r.sha256.as_deref().unwrap_or("?")
                ))
            }
            Some(_) => ", = its record's",
            None => "",
        };
        let detail = format!(
            "sha256 trailer ok{vs_record}; bbolt consistent; revision {}, {} keys, {} bytes",
            r.revision, r.live_keys, r.total_size
        );
        Ok(((r, content), detail))
    })
}

/// The etcd version the dir is built for (this node's, else the snapshot's nearest), and that
/// a restore of this snapshot onto it would pass.
fn check_version(d: &Drilling, run: &mut Run, report: &SnapshotFileReport) -> Option<Minor> {
    let snapshot_version = Minor::of_snapshot(
        report.storage_version.as_deref(),
        report.cluster_version.as_deref(),
    );
    run.check("version", || {
        let target = d
            .node
            .minor
            .or_else(|| snapshot_version.map(|(a, b)| Minor::nearest(a, b)))
            .unwrap_or(Minor::V3_5);
        match etcdversion::restore_compat(snapshot_version, (3, target.minor_number())) {
            Compat::Pass(why) => Ok((target, why)),
            Compat::NeedsForce(why) | Compat::Refuse(why) => Err(format!(
                "a restore onto this node's etcd {target} would be refused: {why}"
            )),
        }
    })
}

/// Room in the scratch dir for the data dir a restore of this snapshot builds.
fn check_space(d: &Drilling, run: &mut Run, report: &SnapshotFileReport) -> Option<()> {
    let scratch = &d.scratch.path;
    run.check("space", || {
        let need = crate::restore::guarded::space_needed(report);
        let (free, _) = fsutil::free_space(scratch)?;
        if free < need {
            return Err(format!(
                "{} has {} MiB free; building the data dir needs {} MiB (set [drill] \
                 scratch_dir to a disk with room)",
                scratch.display(),
                free >> 20,
                need >> 20
            ));
        }
        Ok((
            (),
            format!("{} MiB free, {} MiB needed", free >> 20, need >> 20),
        ))
    })
}

/// Builds `data_dir` for etcd `target` with the native engine: this node alone, a drill
/// token, no revision bump.
fn build(d: &Drilling, run: &mut Run, target: Minor, data_dir: &Path) -> Option<BuildReport> {
    let identity = &d.node.identity;
    let peers = identity.peer_urls.join(",");
    let plan = RestorePlan {
        name: identity.name.clone(),
        initial_cluster: RestorePlan::single_member_cluster(&identity.name, &peers),
        advertise_peer_urls: peers,
        token: format!("etcdguard-drill-{}", crate::clock::now().timestamp()),
        bump_revision: 0,
        mark_compacted: false,
    };
    run.check("build", || {
        let r = datadir::build_data_dir(
            &d.chosen.path,
            &plan,
            data_dir,
            BuildOptions {
                skip_hash_check: false,
                target: Some(target),
                force: false,
            },
        )
        .map_err(|e| d.shown(e.to_string()))?;
        let detail = format!(
            "data dir for etcd {target} built by the native engine (member {} {:x}, cluster {:x})",
            r.cluster.this().name,
            r.cluster.this().id,
            r.cluster.cluster_id
        );
        Ok((r, detail))
    })
}

/// The built dir read back as a starting etcd reads it: its db against the snapshot's
/// (`source`), the WAL, the consistent index, the `.snap` and the members. `None` when its db
/// cannot be read.
fn check_built(
    run: &mut Run,
    source: &DbContent,
    data_dir: &Path,
    cluster: &Cluster,
) -> Option<()> {
    let db_path = data_dir.join("member/snap/db");
    let content = run.check("db", || {
        let c = checks::content(&db_path)?;
        let d = format!("bbolt consistent, {} pages, {} pairs", c.pages, c.pairs);
        Ok((c, d))
    })?;
    run.check("content", || {
        checks::content_equal(source, &content).map(|d| ((), d))
    });
    run.check("revision", || {
        checks::revision_equal(source, &content).map(|d| ((), d))
    });
    let wal = run.check("wal", || {
        checks::wal(data_dir, cluster).map(|(d, w)| (w, d))
    });
    if let Some(w) = &wal {
        run.check("consistent-index", || {
            checks::consistent_index(&content, w).map(|d| ((), d))
        });
        run.check("snap", || {
            checks::snap(data_dir, cluster, w).map(|d| ((), d))
        });
    }
    run.check("members", || {
        checks::members(&content, cluster).map(|d| ((), d))
    });
    Some(())
}

/// The optional real etcd (`--etcd-binary` or `[drill] etcd_binary`) started on the built
/// dir and compared with the snapshot; skipped when none is set. The running etcd, when it
/// passed (killed when dropped).
fn start_etcd(
    d: &Drilling,
    run: &mut Run,
    source: &DbContent,
    cluster: &Cluster,
    target: Minor,
    data_dir: &Path,
) -> Option<EtcdStarted> {
    let config = d.config;
    let Some(b) = d.etcd_binary() else {
        run.push(
            "etcd-start",
            Verdict::Skipped,
            "off: set [drill] etcd_binary to start an etcd of this node's version on the \
             built dir"
                .into(),
        );
        return None;
    };
    let log = d.scratch.path.join("etcd.log");
    run.check("etcd-start", || {
        let tls = crate::preflight::etcd_tls(&config.etcd).map_err(|e| e.to_string())?;
        let server = start::server_tls(&d.node.manifest, config.node_root())?;
        // etcd resumes a pending compaction at start: its hash counts from there.
        let compact = source.compact.max(source.scheduled);
        let db = crate::etcddb::keyspace::open(&d.chosen.path).map_err(|e| d.shown(e))?;
        let expected = start::Expected {
            member_id: cluster.this().id,
            cluster_id: cluster.cluster_id,
            revision: source.revision,
            kv_hash: crate::inspect::hash_kv(&db, compact).map_err(|e| d.shown(e))?,
        };
        let (started, detail) = start::start_and_compare(
            d.handle,
            b,
            target,
            &d.node.identity.name,
            data_dir,
            log,
            &server,
            &tls,
            &expected,
            config.drill.timeout,
        )?;
        Ok((
            EtcdStarted {
                started,
                server,
                tls,
            },
            detail,
        ))
    })
}

/// The drill's etcd while it runs, with the TLS it was started and reached with.
struct EtcdStarted {
    started: start::Started,
    server: [PathBuf; 3],
    tls: crate::etcd::TlsMaterial,
}

/// The optional kube-apiserver (`--apiserver-binary` or `[drill] apiserver_binary`) started
/// on the drill's etcd, listing every resource type of the snapshot at its `revision`.
fn check_apiserver(d: &Drilling, run: &mut Run, etcd: Option<&EtcdStarted>, revision: i64) {
    let Some(binary) = d.opts.apiserver_binary.as_ref().or(d
        .config
        .drill
        .apiserver_binary
        .as_ref())
    else {
        run.push(
            "apiserver",
            Verdict::Skipped,
            "off: set [drill] apiserver_binary to list the snapshot's objects through a \
             kube-apiserver started on the drill's etcd"
                .into(),
        );
        return;
    };
    run.check("apiserver", || {
        let Some(etcd) = etcd else {
            return Err(
                "the API server reads the drill's etcd: set [drill] etcd_binary (or \
                        --etcd-binary) too"
                    .into(),
            );
        };
        let db = crate::etcddb::keyspace::open(&d.chosen.path).map_err(|e| d.shown(e))?;
        let limits = crate::inspect::Limits {
            largest: 0,
            deleted: 0,
        };
        let summary = crate::inspect::summarize(&db, limits).map_err(|e| d.shown(e))?;
        let trees = summary
            .resources
            .into_iter()
            .filter(|r| r.count.keys > 0 && !r.resource.starts_with('('))
            .map(|r| (r.resource, r.count.keys))
            .collect();
        let req = apiserver::Request {
            binary,
            config: d.config,
            etcd_url: &etcd.started.url,
            server: &etcd.server,
            client_tls: &etcd.tls,
            scratch: &d.scratch.path,
            revision,
            trees,
        };
        apiserver::check(d.handle, &req).map(|detail| ((), detail))
    });
}

/// The one structured log line per drill (journald fields when logging there).
pub fn log_record(r: &Record) {
    let file = r.file_name.as_deref().unwrap_or("");
    let source = r.drill.as_ref().map_or("", |d| d.source.as_str());
    match r.result {
        Outcome::Success => tracing::info!(
            id = %r.id,
            result = "Success",
            trigger = "drill",
            file,
            source,
            duration_seconds = r.duration_seconds,
            "drill passed"
        ),
        _ => tracing::error!(
            id = %r.id,
            result = "Failed",
            trigger = "drill",
            file,
            source,
            reason = r.reason.as_deref().unwrap_or(""),
            duration_seconds = r.duration_seconds,
            "drill failed"
        ),
    }
}
