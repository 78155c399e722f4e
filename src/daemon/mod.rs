//! `etcdguard run`: the daemon systemd starts on every control-plane node.
//!
//! One tokio loop: after every wake-up it reads the wall clock and asks the pure
//! `schedule::tick` what is due, so suspend/resume and clock jumps never skip or repeat a slot.
//! A due slot starts a backup task (the same `backup::run_backup` as the CLI, sharing its
//! lock); a slot that arrives while one is still running is recorded as `Skipped`. It sleeps
//! at most half the watchdog interval and sends `WATCHDOG=1` from the loop itself, so the
//! watchdog tracks real progress. SIGHUP reloads the configuration (a bad one is rejected and
//! the old one stays); SIGTERM/SIGINT cancel an in-flight backup cleanly and stop.
//!
//! The last handled slot lives in `records.json` (`daemon.lastHandledSlot`): a daemon that
//! finds a slot was missed while it was down takes one catch-up backup, not one per slot.
//!
//! With a `[drill]` schedule, the same loop starts restore drills on their own slots (their
//! last handled slot is `daemon.lastDrillSlot`, with the same catch-up rule). A drill runs on
//! a blocking thread beside backups and never delays one; SIGTERM stops it between checks,
//! and a drill stopped that way is not recorded.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backup::{self, BackupError, BackupReport};
use crate::config::{self, Config, ConfigError};
use crate::copies;
use crate::fsutil;
use crate::metrics;
use crate::records::{self, Outcome, Record, RecordStore, RemoteState, Trigger};
use crate::schedule;
use crate::state::LockError;

mod drills;

use drills::Drills;

/// Upper bound on one sleep, even without a watchdog: the wall clock is re-read at least this
/// often, which is how suspend and clock changes are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Fatal(String),
}

/// A backup task in flight.
struct Running {
    handle: JoinHandle<Result<BackupReport, BackupError>>,
    /// Dropping or sending on this cancels the backup.
    cancel: oneshot::Sender<()>,
    slot: DateTime<Utc>,
    started: DateTime<Utc>,
}

struct Daemon {
    config_path: Option<PathBuf>,
    config: Config,
    store: RecordStore,
    /// The latest handled slot in memory (persisted when its backup is done).
    last_handled: DateTime<Utc>,
    /// The clock reads before `last_handled` (it was stepped back): said once.
    clock_behind: bool,
    running: Option<Running>,
    next: Option<DateTime<Utc>>,
    /// Remote retries and retention (and the start-up pre-flight), never beside a backup.
    maintenance: Option<JoinHandle<Result<copies::Maintenance, LockError>>>,
    /// The last remote problem, for STATUS; cleared by a clean pass.
    remote_problem: Option<String>,
    /// The `[drill]` schedule and the drill in flight.
    drills: Drills,
    /// When the next pending upload is due, while nothing runs that would hold it off.
    retry_next: Option<DateTime<Utc>>,
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// Half the watchdog interval systemd asked for, capped at [`MAX_SLEEP`].
fn tick_interval() -> Duration {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Duration::from_micros(usec / 2).min(MAX_SLEEP)
    } else {
        MAX_SLEEP
    }
}

/// Runs until SIGTERM/SIGINT. Errors before READY are returned (78 for configuration).
pub async fn run(config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    let config = config::load(config_path.as_deref())?;
    fsutil::create_private_dir_all(&config.state_dir).map_err(|e| {
        DaemonError::Fatal(format!(
            "cannot create state directory {}: {e}",
            config.state_dir.display()
        ))
    })?;
    let mut d = Daemon::new(config_path, config);
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Fatal(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DaemonError::Fatal(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| DaemonError::Fatal(e.to_string()))?;
    let interval = tick_interval();
    d.say_started();
    d.on_tick();
    // Pre-flight of the bucket and any uploads left pending, right away.
    d.start_maintenance(true);
    notify(&[NotifyState::Ready, NotifyState::Status(&d.status())]);

    loop {
        let now = crate::clock::now();
        let until = |t: Option<DateTime<Utc>>| {
            t.map(|n| (n - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(interval)
        };
        let sleep = until(d.next)
            .min(until(d.drills.next))
            .min(until(d.retry_next))
            .min(interval);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            res = async { (&mut d.running.as_mut().expect("guarded").handle).await },
                if d.running.is_some() => {
                let r = d.running.take().expect("guarded");
                d.on_backup_done(r.slot, res);
            }
            res = async { (d.maintenance.as_mut().expect("guarded")).await },
                if d.maintenance.is_some() => {
                d.maintenance = None;
                d.on_maintenance_done(res);
            }
            res = async { (&mut d.drills.running.as_mut().expect("guarded").handle).await },
                if d.drills.running.is_some() => {
                let r = d.drills.running.take().expect("guarded");
                d.drills.done(&d.store, r.slot, res);
                d.refresh_metrics();
            }
            _ = hup.recv() => d.reload(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        d.on_tick();
        notify(&[NotifyState::Watchdog, NotifyState::Status(&d.status())]);
    }

    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    tracing::info!("stopping");
    d.stop().await;
    Ok(())
}

fn persist_slot(store: &RecordStore, slot: DateTime<Utc>) {
    if let Err(e) = store.update(crate::clock::now(), |f| {
        if f.daemon.last_handled_slot.is_none_or(|t| t < slot) {
            f.daemon.last_handled_slot = Some(slot);
        }
    }) {
        tracing::error!("cannot remember the handled slot: {e}");
    }
}

impl Daemon {
    /// The daemon of `config`, with the slots it handled last (remembered across restarts;
    /// on a first start, or a drill schedule just added, nothing was missed yet).
    fn new(config_path: Option<PathBuf>, config: Config) -> Daemon {
        let store = RecordStore::new(&config.state_dir);
        let now = crate::clock::now();
        let (remembered, drill_remembered) = match store.load() {
            Ok(f) => (f.daemon.last_handled_slot, f.daemon.last_drill_slot),
            Err(e) => {
                // Not fatal: the next backup moves a corrupt file aside and says so.
                tracing::error!("{e}");
                (None, None)
            }
        };
        let drills = Drills::new(&config, &store, drill_remembered, now);
        let last_handled = remembered.unwrap_or_else(|| {
            let t = config
                .schedule
                .latest_at_or_before(now, &config.timezone)
                .unwrap_or(now);
            persist_slot(&store, t);
            t
        });
        Daemon {
            config_path,
            config,
            store,
            last_handled,
            clock_behind: false,
            running: None,
            next: None,
            maintenance: None,
            remote_problem: None,
            drills,
            retry_next: None,
        }
    }

    /// The start-up lines: the schedule, and the same pre-flight as `config check` (not
    /// fatal: etcd may start after us at boot).
    fn say_started(&self) {
        tracing::info!(
            schedule = self.config.schedule.expression(),
            timezone = %self.config.timezone,
            paused = self.config.paused,
            "etcdguard daemon started"
        );
        if self.config.paused {
            tracing::warn!("configuration is paused: no scheduled backups until paused = false");
        }
        let found = crate::preflight::local(&self.config);
        for (field, problem) in &found.problems {
            tracing::error!("pre-flight: {field}: {problem}; backups fail until this is fixed");
        }
        for w in &found.warnings {
            tracing::warn!("pre-flight: {w}");
        }
    }

    /// Stops what runs: maintenance aborted, a drill and a backup cancelled and recorded.
    async fn stop(&mut self) {
        if let Some(m) = self.maintenance.take() {
            m.abort();
            let _ = m.await;
        }
        if let Some(r) = self.drills.running.take() {
            r.cancel.store(true, Ordering::SeqCst);
            let res = r.handle.await;
            self.drills.done(&self.store, r.slot, res);
            self.refresh_metrics();
        }
        if let Some(r) = self.running.take() {
            let _ = r.cancel.send(());
            let res = r.handle.await;
            self.on_backup_done(r.slot, res);
        }
    }

    /// One look at the wall clock: handle a due slot, compute the next.
    fn on_tick(&mut self) {
        let now = crate::clock::now();
        let t = schedule::tick(
            &self.config.schedule,
            &self.config.timezone,
            self.last_handled,
            now,
        );
        if t.clock_went_back {
            tracing::error!(
                remembered = %records::rfc3339(self.last_handled),
                now = %records::rfc3339(now),
                "the clock is more than a day behind the last handled slot; assuming it was \
                 wrong before and continuing from now"
            );
            persist_slot(&self.store, t.last_handled);
        }
        // Stepped back under a day: the slots up to the last handled one were taken; said once.
        let behind = now < t.last_handled;
        if behind && !self.clock_behind {
            tracing::warn!(last_handled = %records::rfc3339(t.last_handled), "the clock is behind the last handled slot (stepped back?): no slot is taken twice; backups resume after it");
        }
        self.clock_behind = behind;
        self.last_handled = t.last_handled;
        self.next = t.next;
        if let Some(slot) = t.due {
            self.on_slot(slot, t.late);
        }
        self.drills.tick(&self.config, &self.store, now);
        if self.running.is_none()
            && self.maintenance.is_none()
            && copies::has_due_pending(&self.config, now)
        {
            self.start_maintenance(false);
        }
        // Wake up for the next retry (a cluster slot's copy is looked at every cluster_lease),
        // unless a backup or maintenance runs: their end wakes the loop anyway.
        self.retry_next = if self.running.is_none() && self.maintenance.is_none() {
            copies::next_pending_at(&self.config).filter(|t| *t > now)
        } else {
            None
        };
    }

    fn start_maintenance(&mut self, probe: bool) {
        if self.config.destinations.is_empty() || self.maintenance.is_some() {
            return;
        }
        let config = self.config.clone();
        self.maintenance = Some(tokio::spawn(async move {
            copies::run_maintenance(&config, probe).await
        }));
    }

    fn on_maintenance_done(
        &mut self,
        res: Result<Result<copies::Maintenance, LockError>, tokio::task::JoinError>,
    ) {
        match res {
            Ok(Ok(m)) => {
                self.remote_problem = m
                    .errors
                    .first()
                    .cloned()
                    .or_else(|| m.retry_failed.first().map(|(f, e)| format!("{f}: {e}")));
            }
            Ok(Err(LockError::Busy { .. })) => {}
            Ok(Err(e)) => tracing::error!("remote maintenance not run: {e}"),
            Err(e) if e.is_cancelled() => {}
            Err(e) => tracing::error!("remote maintenance failed: {e}"),
        }
        self.refresh_metrics();
    }

    fn on_slot(&mut self, slot: DateTime<Utc>, late: bool) {
        let trigger = if late {
            Trigger::CatchUp
        } else {
            Trigger::Schedule
        };
        if self.config.paused {
            tracing::info!(slot = %records::rfc3339(slot), "paused: scheduled backup not taken");
            persist_slot(&self.store, slot);
            return;
        }
        if late && !self.config.catch_up {
            tracing::warn!(slot = %records::rfc3339(slot), "a slot was missed (catch_up = false): not backing up now");
            persist_slot(&self.store, slot);
            return;
        }
        if let Some(r) = &self.running {
            self.skip(
                slot,
                trigger,
                format!(
                    "the backup started at {} was still running",
                    records::rfc3339(r.started)
                ),
            );
            return;
        }
        if late {
            tracing::info!(slot = %records::rfc3339(slot), "a slot was missed while etcdguard was not running or the host slept: taking one catch-up backup");
        }
        let (cancel, cancelled) = oneshot::channel::<()>();
        let config = self.config.clone();
        // A backup has priority over remote retries: stop them and let them release the lock.
        let maintenance = self.maintenance.take();
        if let Some(m) = &maintenance {
            m.abort();
        }
        let handle = tokio::spawn(async move {
            if let Some(m) = maintenance {
                let _ = m.await;
            }
            backup::run_backup(&config, trigger, Some(slot), None, async move {
                let _ = cancelled.await;
                "shutdown".to_string()
            })
            .await
        });
        self.running = Some(Running {
            handle,
            cancel,
            slot,
            started: crate::clock::now(),
        });
    }

    /// Records a slot that was not taken.
    fn skip(&mut self, slot: DateTime<Utc>, trigger: Trigger, reason: String) {
        let now = crate::clock::now();
        let record = Record::skipped(now, trigger, reason);
        backup::log_record(&record);
        let history = self.config.history;
        let res = self.store.update(now, |f| {
            f.push(record);
            if f.daemon.last_handled_slot.is_none_or(|t| t < slot) {
                f.daemon.last_handled_slot = Some(slot);
            }
            crate::retention::trim_history(f, history);
        });
        if let Err(e) = res {
            tracing::error!("cannot record the skipped slot: {e}");
        }
        self.refresh_metrics();
    }

    fn on_backup_done(
        &mut self,
        slot: DateTime<Utc>,
        res: Result<Result<BackupReport, BackupError>, tokio::task::JoinError>,
    ) {
        match res {
            Ok(Ok(report)) => {
                if let Some(moved) = &report.records_moved {
                    tracing::error!("{moved}");
                }
                for w in &report.warnings {
                    tracing::warn!("{w}");
                }
                backup::log_record(&report.record);
                persist_slot(&self.store, slot);
            }
            Ok(Err(BackupError::Lock(LockError::Busy { holder, .. }))) => {
                let who = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
                self.skip(
                    slot,
                    Trigger::Schedule,
                    format!("another backup was running{who}, e.g. `etcdguard snapshot` by hand"),
                );
            }
            Ok(Err(e @ BackupError::NotRecorded { .. })) => {
                tracing::error!("{e}");
                persist_slot(&self.store, slot);
            }
            Ok(Err(e)) => {
                tracing::error!("backup not attempted: {e}");
                persist_slot(&self.store, slot);
            }
            Err(e) => tracing::error!("backup task failed: {e}"),
        }
        self.refresh_metrics();
    }

    fn reload(&mut self) {
        let usec = sd_notify::NotifyState::monotonic_usec_now();
        match &usec {
            Ok(m) => notify(&[NotifyState::Reloading, m.clone()]),
            Err(_) => notify(&[NotifyState::Reloading]),
        }
        match config::load(self.config_path.as_deref()) {
            Ok(c) => {
                tracing::info!(
                    schedule = c.schedule.expression(),
                    paused = c.paused,
                    "configuration reloaded"
                );
                self.config = c;
            }
            Err(e) => {
                tracing::error!("reload rejected, the running configuration stays in force: {e}")
            }
        }
        self.next = schedule::tick(
            &self.config.schedule,
            &self.config.timezone,
            self.last_handled,
            crate::clock::now(),
        )
        .next;
        self.drills.replan(&self.config, crate::clock::now());
        self.refresh_metrics();
        notify(&[NotifyState::Ready, NotifyState::Status(&self.status())]);
    }

    fn refresh_metrics(&self) {
        if let Err(e) = metrics::refresh(&self.config, self.next) {
            tracing::error!("{e}");
        }
    }

    /// What `systemctl status` shows: the last result and the next run.
    fn status(&self) -> String {
        let last = match self.store.load() {
            Ok(f) => f
                .records
                .iter()
                .rev()
                .find(|r| r.result != Outcome::Skipped && r.trigger.is_backup())
                .map(|r| match r.result {
                    Outcome::Success => format!(
                        "last backup OK at {} ({}){}",
                        records::rfc3339(r.backup_timestamp),
                        r.file_name.as_deref().unwrap_or(""),
                        match r.health.as_ref().map(|h| h.warnings.as_slice()) {
                            Some([only]) => format!("; ETCD HEALTH: {only}"),
                            Some([first, rest @ ..]) => {
                                format!("; ETCD HEALTH: {first} (and {} more)", rest.len())
                            }
                            _ => String::new(),
                        }
                    ),
                    _ => format!(
                        "last backup FAILED at {}: {}",
                        records::rfc3339(r.backup_timestamp),
                        r.reason.as_deref().unwrap_or("")
                    ),
                })
                .unwrap_or_else(|| "no backup yet".to_string()),
            Err(e) => format!("records unreadable: {e}"),
        };
        let next = match (self.config.paused, self.next) {
            (true, _) => "PAUSED: no scheduled backups".to_string(),
            (false, Some(n)) => format!("next {}", records::rfc3339(n)),
            (false, None) => "no next slot".to_string(),
        };
        let running = self
            .running
            .as_ref()
            .map(|r| format!("backup running since {}; ", records::rfc3339(r.started)))
            .unwrap_or_default();
        let remote = if !self.config.destinations.is_empty() {
            let pending = self.store.load().map_or(0, |f| {
                f.records
                    .iter()
                    .flat_map(|r| &r.remotes)
                    .filter(|c| c.state == RemoteState::Pending)
                    .count()
            });
            match (&self.remote_problem, pending) {
                (Some(p), _) => format!("; REMOTE PROBLEM: {p}"),
                (None, 0) => String::new(),
                (None, n) => format!("; {n} remote upload(s) pending"),
            }
        } else {
            String::new()
        };
        let drill = match self.store.load() {
            Ok(f) => f
                .records
                .iter()
                .rev()
                .find(|r| r.trigger == Trigger::Drill)
                .map(|r| match r.result {
                    Outcome::Success => format!(
                        "; last drill passed at {}",
                        records::rfc3339(r.backup_timestamp)
                    ),
                    _ => format!(
                        "; LAST DRILL FAILED at {}: {}",
                        records::rfc3339(r.backup_timestamp),
                        r.reason.as_deref().unwrap_or("")
                    ),
                })
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        format!("{running}{last}; {next}{remote}{drill}")
    }
}
