//! The daemon's `[drill]` schedule: restore drills on their own slots, beside backups. Their
//! last handled slot is `daemon.lastDrillSlot` in `records.json`, with the same catch-up rule
//! as backups; a drill runs on a blocking thread and never delays a backup; SIGTERM stops it
//! between checks, and a drill stopped that way is not recorded (its slot stays due).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::drill::{self, DrillError, DrillOptions, DrillReport};
use crate::records::{self, RecordStore};
use crate::schedule;

/// A drill in flight.
pub(super) struct Drilling {
    pub(super) handle: JoinHandle<Result<DrillReport, DrillError>>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) slot: DateTime<Utc>,
}

/// The drill schedule's state: the latest handled slot, the next one, the drill in flight.
pub(super) struct Drills {
    handled: DateTime<Utc>,
    pub(super) next: Option<DateTime<Utc>>,
    pub(super) running: Option<Drilling>,
}

impl Drills {
    /// With the slot `remembered` across restarts; on a first start, or a drill schedule just
    /// added, nothing was missed yet.
    pub(super) fn new(
        config: &Config,
        store: &RecordStore,
        remembered: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Drills {
        let handled = remembered.unwrap_or_else(|| {
            let t = config
                .drill
                .schedule
                .as_ref()
                .and_then(|s| s.latest_at_or_before(now, &config.timezone))
                .unwrap_or(now);
            persist_slot(store, t);
            t
        });
        Drills {
            handled,
            next: None,
            running: None,
        }
    }

    /// The next slot under (a reloaded) `config`.
    pub(super) fn replan(&mut self, config: &Config, now: DateTime<Utc>) {
        self.next = config
            .drill
            .schedule
            .as_ref()
            .and_then(|s| schedule::tick(s, &config.timezone, self.handled, now).next);
    }

    /// The drill schedule's look at the clock: start a due drill, compute the next.
    pub(super) fn tick(&mut self, config: &Config, store: &RecordStore, now: DateTime<Utc>) {
        let Some(schedule) = config.drill.schedule.clone() else {
            self.next = None;
            return;
        };
        let t = schedule::tick(&schedule, &config.timezone, self.handled, now);
        self.handled = t.last_handled;
        self.next = t.next;
        let Some(slot) = t.due else { return };
        let skip = if config.paused {
            Some("paused")
        } else if t.late && !config.catch_up {
            Some("a drill slot was missed (catch_up = false)")
        } else if self.running.is_some() {
            Some("the previous drill is still running")
        } else {
            None
        };
        if let Some(why) = skip {
            tracing::info!(slot = %records::rfc3339(slot), "{why}: scheduled drill not run");
            persist_slot(store, slot);
            return;
        }
        if t.late {
            tracing::info!(slot = %records::rfc3339(slot), "a drill slot was missed: running one catch-up drill");
        }
        let config = config.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let rt = tokio::runtime::Handle::current();
        let handle = tokio::task::spawn_blocking(move || {
            drill::run_drill(&config, &DrillOptions::default(), c, &rt)
        });
        self.running = Some(Drilling {
            handle,
            cancel,
            slot,
        });
    }

    /// A drill of `slot` ended with `res`: logged, and its slot remembered (unless shutdown
    /// interrupted it: then it runs again after the restart).
    pub(super) fn done(
        &mut self,
        store: &RecordStore,
        slot: DateTime<Utc>,
        res: Result<Result<DrillReport, DrillError>, tokio::task::JoinError>,
    ) {
        match res {
            Ok(Ok(report)) => {
                if let Some(moved) = &report.records_moved {
                    tracing::error!("{moved}");
                }
                drill::log_record(&report.record);
            }
            Ok(Err(DrillError::Interrupted(why))) => {
                tracing::warn!("scheduled drill stopped by {why}; not recorded");
                return;
            }
            Ok(Err(e)) => tracing::error!("scheduled drill not run: {e}"),
            Err(e) => tracing::error!("drill task failed: {e}"),
        }
        persist_slot(store, slot);
    }
}

fn persist_slot(store: &RecordStore, slot: DateTime<Utc>) {
    if let Err(e) = store.update(crate::clock::now(), |f| {
        if f.daemon.last_drill_slot.is_none_or(|t| t < slot) {
            f.daemon.last_drill_slot = Some(slot);
        }
    }) {
        tracing::error!("cannot remember the handled drill slot: {e}");
    }
}
