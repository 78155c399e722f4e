//! Pure: the pace of a backup from etcd's own latency, in the shape TCP's congestion control
//! made familiar. While etcd's WAL fsync and backend commit p99 stay near what they were
//! before the backup, the pace grows by a step each interval (additive increase) up to its
//! ceiling; as soon as either rises past its threshold, the pace is halved (multiplicative
//! decrease). The backup takes what the disk has to spare and gives it back at once.
//!
//! The ceiling is the cruising pace ([`START`]) unless the node was idle before the backup (no
//! task waited for a CPU in the last 10 seconds, `pressure.rs`): then the pace doubles each
//! calm interval, up to [`DEFAULT_CEILING`], and an idle node's backup takes about what an
//! unpaced one does, and costs less CPU per byte than a trickle. (Tried and not kept, in
//! `bench/README.md`: a slow start that doubled the pace from the first moment on every node,
//! which on a fast disk reached hundreds of MiB/s before the first interval could say
//! anything; a pace that climbed past [`START`] on every node while the disk stayed calm,
//! which cost a busy 2-core node's clients their put p99; and one that followed the CPU
//! pressure during the stream, which the stream itself raises on an idle node as on a busy
//! one.)

use super::prom::Histogram;

pub const MIB: u64 = 1 << 20;

/// The pace a backup starts at, before etcd's latency says anything, and its cruising pace:
/// without `rate_limit`, on a node that was not idle, it climbs back this far and no further.
/// A pace that climbed past it while etcd's WAL fsync and commit stayed calm still cost etcd's
/// clients their put p99 on a busy 2-core node (etcd's CPU for the stream, which those
/// signals do not see); a fixed 32 MiB/s did not (`bench/README.md`).
pub const START: u64 = 32 * MIB;
/// Without `rate_limit`, how far the pace of a backup on an idle node may climb: faster than
/// etcd sends on any node measured, so in effect unpaced. A `rate_limit` is the ceiling
/// instead, idle or not.
pub const DEFAULT_CEILING: u64 = 1024 * MIB;
/// A node whose CPU pressure averaged at most this over the 10 seconds before the backup was
/// idle: hardly ever did a task wait for a CPU.
pub const IDLE_PRESSURE: f64 = 0.01;
/// The slowest pace: a backup must still finish (the stream's deadline raises it further).
pub const FLOOR: u64 = 4 * MIB;
/// Added per interval without trouble.
pub const STEP: u64 = 8 * MIB;

/// A rise this large over the baseline slows the backup...
const FACTOR: f64 = 1.25;
/// ...unless it is smaller than this (a baseline of 0.2 ms is noise at 0.4 ms).
const WAL_MARGIN: f64 = 0.0005;
const COMMIT_MARGIN: f64 = 0.002;
/// Without a baseline (no writes before the backup), etcd's own guidance: WAL fsync p99 under
/// 10 ms, backend commit p99 under 25 ms.
const WAL_ABSOLUTE: f64 = 0.010;
const COMMIT_ABSOLUTE: f64 = 0.025;
/// Fewer observations than this in a window say nothing about its p99.
pub const MIN_BASELINE: f64 = 10.0;
pub const MIN_INTERVAL: f64 = 5.0;

/// etcd's p99 latencies over a window, in seconds; `None` where the window saw too little.
/// And the CPU etcd and this process used in it, in cores (`None` where etcd's metrics lack
/// `process_cpu_seconds_total`): the record reports it, the pace does not follow it (a pace
/// held to a CPU budget was measured: `bench/README.md`). And the node's CPU pressure, the
/// share of the window in which some task waited for a CPU (`None` without PSI), reported
/// likewise.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub wal: Option<f64>,
    pub commit: Option<f64>,
    pub cpu: Option<f64>,
    pub pressure: Option<f64>,
}

impl Latency {
    /// The p99s of a window's histograms, each only with at least `min` observations.
    pub fn of(wal: Option<&Histogram>, commit: Option<&Histogram>, min: f64) -> Latency {
        let p99 = |h: Option<&Histogram>| {
            h.filter(|h| h.count() >= min)
                .and_then(|h| h.quantile(0.99))
        };
        Latency {
            wal: p99(wal),
            commit: p99(commit),
            cpu: None,
            pressure: None,
        }
    }
}

/// Above these, the backup slows down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub wal: f64,
    pub commit: f64,
}

impl Thresholds {
    pub fn from_baseline(b: Latency) -> Thresholds {
        let over = |base: Option<f64>, margin: f64, absolute: f64| {
            base.map_or(absolute, |v| (v * FACTOR).max(v + margin))
        };
        Thresholds {
            wal: over(b.wal, WAL_MARGIN, WAL_ABSOLUTE),
            commit: over(b.commit, COMMIT_MARGIN, COMMIT_ABSOLUTE),
        }
    }
}

/// What one interval did to the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Slower,
    Faster,
    Held,
}

/// The pace, bytes per second, and what it went through.
#[derive(Debug, Clone)]
pub struct Aimd {
    rate: u64,
    ceiling: u64,
    /// Past [`START`], the pace doubles each calm interval (the node was idle) instead of
    /// adding [`STEP`].
    fast: bool,
    pub thresholds: Thresholds,
    /// Times the pace was halved.
    pub slowdowns: u32,
    /// The slowest pace reached.
    pub lowest: u64,
    /// The fastest pace reached.
    pub highest: u64,
    /// The highest p99s seen during the backup.
    pub worst: Latency,
}

impl Aimd {
    /// Starts at [`START`] (or `rate_limit`, when lower). Climbs no higher than `rate_limit`;
    /// without it, no higher than [`START`], or [`DEFAULT_CEILING`] on a node that was `idle`
    /// before the backup.
    pub fn new(baseline: Latency, rate_limit: Option<u64>, idle: bool) -> Aimd {
        let ceiling = rate_limit.unwrap_or(if idle { DEFAULT_CEILING } else { START });
        let rate = START.min(ceiling);
        Aimd {
            rate,
            ceiling,
            fast: idle,
            thresholds: Thresholds::from_baseline(baseline),
            slowdowns: 0,
            lowest: rate,
            highest: rate,
            worst: Latency::default(),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// One interval's latencies: halve the pace when either is over its threshold, else add
    /// [`STEP`] (past [`START`] on an idle node: double), up to the ceiling.
    pub fn observe(&mut self, now: Latency) -> Step {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.worst = Latency {
            wal: max(self.worst.wal, now.wal),
            commit: max(self.worst.commit, now.commit),
            cpu: max(self.worst.cpu, now.cpu),
            pressure: max(self.worst.pressure, now.pressure),
        };
        let over = now.wal.is_some_and(|v| v > self.thresholds.wal)
            || now.commit.is_some_and(|v| v > self.thresholds.commit);
        let step = if over {
            self.rate = (self.rate / 2).max(FLOOR.min(self.ceiling));
            Step::Slower
        } else if self.rate < self.ceiling {
            let next = if self.fast && self.rate >= START {
                self.rate.saturating_mul(2)
            } else {
                self.rate.saturating_add(STEP)
            };
            self.rate = next.min(self.ceiling);
            Step::Faster
        } else {
            Step::Held
        };
        match step {
            Step::Slower => {
                self.slowdowns += 1;
                self.lowest = self.lowest.min(self.rate);
            }
            Step::Faster => self.highest = self.highest.max(self.rate),
            Step::Held => {}
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Latency = Latency {
        wal: Some(0.003),
        commit: Some(0.050),
        cpu: Some(0.3),
        pressure: Some(0.2),
    };

    #[test]
    fn without_a_rate_limit_the_pace_recovers_to_its_start_and_no_higher() {
        let mut a = Aimd::new(QUIET, None, false);
        assert_eq!(a.observe(QUIET), Step::Held);
        assert_eq!(a.rate(), START);
        let loud = Latency {
            wal: Some(0.01),
            ..QUIET
        };
        assert_eq!(a.observe(loud), Step::Slower);
        assert_eq!(a.rate(), START / 2);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(a.observe(QUIET), Step::Held);
        assert_eq!(a.rate(), START);
        assert_eq!(a.highest, START);
        assert_eq!(a.worst.pressure, Some(0.2), "reported, not followed");
    }

    #[test]
    fn on_an_idle_node_the_pace_doubles_past_its_start_until_the_disk_says_no() {
        let mut a = Aimd::new(QUIET, None, true);
        assert_eq!(a.rate(), START);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(a.rate(), 2 * START);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(a.rate(), 4 * START);
        let loud = Latency {
            wal: Some(0.01),
            ..QUIET
        };
        assert_eq!(a.observe(loud), Step::Slower);
        assert_eq!(a.rate(), 2 * START);
        assert_eq!(a.observe(loud), Step::Slower);
        assert_eq!(a.observe(loud), Step::Slower);
        assert_eq!(a.rate(), START / 2);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(
            a.rate(),
            START / 2 + STEP,
            "under its start, a step at a time"
        );
        for _ in 0..20 {
            a.observe(QUIET);
        }
        assert_eq!(a.rate(), DEFAULT_CEILING, "and no higher than the ceiling");
        assert_eq!(a.highest, DEFAULT_CEILING);
        assert_eq!(a.lowest, START / 2);
        // rate_limit is the ceiling, idle or not.
        let mut capped = Aimd::new(QUIET, Some(48 * MIB), true);
        assert_eq!(capped.observe(QUIET), Step::Faster);
        assert_eq!(capped.rate(), 48 * MIB);
        assert_eq!(capped.observe(QUIET), Step::Held);
        // Not idle: a rate_limit set higher is reached a step at a time.
        let mut set = Aimd::new(QUIET, Some(48 * MIB), false);
        assert_eq!(set.observe(QUIET), Step::Faster);
        assert_eq!(set.rate(), START + STEP);
        assert_eq!(set.observe(QUIET), Step::Faster);
        assert_eq!(set.observe(QUIET), Step::Held);
        assert_eq!(set.rate(), 48 * MIB);
    }

    #[test]
    fn thresholds_follow_the_baseline_with_a_margin_or_etcds_guidance() {
        let t = Thresholds::from_baseline(QUIET);
        assert!((t.wal - 0.00375).abs() < 1e-12);
        assert!((t.commit - 0.0625).abs() < 1e-12);
        let tiny = Thresholds::from_baseline(Latency {
            wal: Some(0.0004),
            ..Latency::default()
        });
        assert!((tiny.wal - 0.0009).abs() < 1e-12, "a margin over noise");
        assert_eq!(tiny.commit, 0.025, "no baseline: etcd's guidance");
    }

    #[test]
    fn halves_on_a_rise_adds_while_quiet_and_keeps_within_floor_and_ceiling() {
        let mut a = Aimd::new(QUIET, Some(u64::MAX), false);
        assert_eq!(a.rate(), START);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(a.rate(), START + STEP);
        let slow_wal = Latency {
            wal: Some(0.009),
            commit: Some(0.050),
            cpu: Some(0.4),
            pressure: None,
        };
        assert_eq!(a.observe(slow_wal), Step::Slower);
        assert_eq!(a.rate(), (START + STEP) / 2);
        assert_eq!(a.observe(QUIET), Step::Faster);
        assert_eq!(a.rate(), (START + STEP) / 2 + STEP, "a step at a time");
        for _ in 0..10 {
            a.observe(slow_wal);
        }
        assert_eq!(a.rate(), FLOOR);
        assert_eq!(a.lowest, FLOOR);
        assert_eq!(a.slowdowns, 11);
        assert_eq!(a.worst.wal, Some(0.009));
        assert_eq!(
            a.worst.cpu,
            Some(0.4),
            "the CPU at worst is kept for the record"
        );
        let busy = Latency {
            cpu: Some(1.9),
            ..QUIET
        };
        assert_eq!(
            a.observe(busy),
            Step::Faster,
            "CPU alone does not slow the pace"
        );
        // Nothing observed (no writes): nothing to protect, the pace rises.
        assert_eq!(a.observe(Latency::default()), Step::Faster);

        let mut capped = Aimd::new(QUIET, Some(10 * MIB), true);
        assert_eq!(
            capped.rate(),
            10 * MIB,
            "rate_limit is the ceiling from the start"
        );
        assert_eq!(capped.observe(QUIET), Step::Held);
        let mut tiny = Aimd::new(QUIET, Some(MIB), false);
        tiny.observe(slow_wal);
        assert_eq!(tiny.rate(), MIB, "a ceiling under the floor wins");
    }

    #[test]
    fn a_window_with_too_few_observations_says_nothing() {
        let h = Histogram {
            buckets: vec![(0.001, 3.0), (f64::INFINITY, 4.0)],
        };
        assert_eq!(Latency::of(Some(&h), None, 5.0), Latency::default());
        assert_eq!(Latency::of(Some(&h), None, 4.0).wal, Some(0.001));
    }
}
