//! How fast a backup reads etcd's snapshot stream (and so writes the local file and feeds the
//! uploads). By default it follows etcd's own latency: a sampler reads etcd's metrics (the
//! manifest's `--listen-metrics-urls`, or `[etcd] metrics_url`) at the backup's start and a
//! second later for a baseline, then every half second, and an AIMD pace (`aimd.rs`) slows the
//! stream as soon as etcd's WAL fsync or backend commit p99 rises; past its cruising pace it
//! climbs only on a node that was idle before the backup (its CPU pressure, `pressure.rs`).
//! The baseline's second runs beside the pre-flight (and, after a quick pre-flight, beside the
//! stream's first moments: a wait for it was tried and cost a second per backup). The record
//! also says the CPU etcd and the backup used together (etcd's `process_cpu_seconds_total` and
//! this process's own) and the node's CPU pressure, before and at worst. Without readable
//! metrics the pace is a fixed conservative [`FALLBACK`], and the record says why.
//! `rate_limit` is a ceiling either way; without it the adaptive pace climbs no higher than
//! its start ([`aimd::START`]), or on an idle node [`aimd::DEFAULT_CEILING`]; `pacing = "off"`
//! leaves only `rate_limit`. The stream passes every chunk through a [`Gate`], which also
//! keeps the stream inside its deadline whatever the pace says.

mod aimd;
mod pressure;
mod prom;
mod scrape;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::PacingChoice;
use crate::records::pacing::{EtcdLatency, Pacing, PacingMode};
use aimd::{Aimd, Latency};
use prom::Histogram;

pub use aimd::MIB;

/// The pace without etcd's metrics: gentle on a shared disk, still a 1 GiB database in about
/// half a minute.
pub const FALLBACK: u64 = 32 * MIB;
/// The window at the backup's start (beside its pre-flight) whose latency is the baseline.
const BASELINE: Duration = Duration::from_secs(1);
/// How often etcd's latency is read during the stream.
const INTERVAL: Duration = Duration::from_millis(500);
/// Bound on one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// The share of the stream's whole time bound the bytes may take at most, whatever the pace
/// says (the check and publication come after, and a backup that happens beats a gentle one
/// that times out).
const DEADLINE_SHARE: f64 = 0.6;

const WAL: &str = "etcd_disk_wal_fsync_duration_seconds";
const COMMIT: &str = "etcd_disk_backend_commit_duration_seconds";
const CPU: &str = "process_cpu_seconds_total";

/// Unpaced.
const NONE: u64 = u64::MAX;

struct Shared {
    /// Bytes per second; [`NONE`] for no pace.
    rate: AtomicU64,
    /// Nanoseconds the gate made the stream wait.
    waited: AtomicU64,
    report: Mutex<Pacing>,
}

/// The pace of one backup: started before the stream, finished after it.
pub struct Pacer {
    shared: Arc<Shared>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl Pacer {
    /// Decides what paces this backup. With `Auto`, one scrape of `metrics_url` now: it
    /// answers, and the sampler starts; it does not (or there is no URL), and the fallback pace
    /// is used. `rate_limit` is the ceiling; without it, when paced, [`aimd::START`], or
    /// [`aimd::DEFAULT_CEILING`] on a node that was idle before the backup (its CPU pressure,
    /// read in the same scrape); none with pacing off.
    pub async fn start(
        choice: PacingChoice,
        metrics_url: Option<&str>,
        rate_limit: Option<u64>,
    ) -> Pacer {
        let ceiling = rate_limit.unwrap_or(NONE);
        let report = |mode, reason: Option<String>| Pacing {
            mode,
            metrics_url: metrics_url.map(str::to_string),
            reason,
            paced_seconds: 0.0,
            slowdowns: 0,
            lowest_bytes_per_second: None,
            highest_bytes_per_second: None,
            before: None,
            worst: None,
        };
        let new = |rate: u64, pacing: Pacing| {
            Arc::new(Shared {
                rate: AtomicU64::new(rate),
                waited: AtomicU64::new(0),
                report: Mutex::new(pacing),
            })
        };
        let url = match (choice, metrics_url) {
            (PacingChoice::Off, _) => {
                return Pacer {
                    shared: new(ceiling, report(PacingMode::Off, None)),
                    sampler: None,
                }
            }
            (PacingChoice::Auto, None) => {
                let why = "etcd's manifest names no http --listen-metrics-urls on loopback and \
                           [etcd] metrics_url is not set";
                return Pacer::fallback(
                    new,
                    report(PacingMode::Fallback, Some(why.into())),
                    ceiling,
                );
            }
            (PacingChoice::Auto, Some(url)) => url.to_string(),
        };
        let first = match scrape(&url).await {
            Ok(h) => h,
            Err(e) => {
                let why = format!("etcd's metrics at {url} could not be read: {e}");
                return Pacer::fallback(new, report(PacingMode::Fallback, Some(why)), ceiling);
            }
        };
        let shared = new(
            aimd::START.min(rate_limit.unwrap_or(aimd::START)),
            report(PacingMode::Adaptive, None),
        );
        let idle = first
            .pressure
            .is_some_and(|p| p.avg10 <= aimd::IDLE_PRESSURE);
        let sampler = tokio::spawn(sample(url, first, shared.clone(), rate_limit, idle));
        Pacer {
            shared,
            sampler: Some(sampler),
        }
    }

    fn fallback(
        new: impl Fn(u64, Pacing) -> Arc<Shared>,
        mut pacing: Pacing,
        ceiling: u64,
    ) -> Pacer {
        let rate = FALLBACK.min(ceiling);
        if let Some(why) = &pacing.reason {
            tracing::warn!(
                "{why}: the snapshot is read at the fallback pace of {} MiB/s",
                rate / MIB
            );
        }
        pacing.lowest_bytes_per_second = Some(rate);
        Pacer {
            shared: new(rate, pacing),
            sampler: None,
        }
    }

    /// The gate the stream passes its chunks through; `timeout` bounds the whole stream and
    /// `expected` is about how many bytes it brings.
    pub fn gate(&self, timeout: Duration, expected: Option<u64>) -> Gate {
        Gate {
            shared: self.shared.clone(),
            next: None,
            end_by: Instant::now() + timeout.mul_f64(DEADLINE_SHARE),
            expected,
            sent: 0,
        }
    }

    /// Stops the sampler; what the record says.
    pub fn finish(mut self) -> Pacing {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        let mut p = self.shared.report.lock().unwrap().clone();
        p.paced_seconds = self.shared.waited.load(Ordering::Relaxed) as f64 / 1e9;
        p
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
    }
}

/// etcd's two histograms and its CPU seconds, read once, with this process's own CPU seconds
/// and the node's CPU stall time at the same time.
struct Scrape {
    wal: Option<Histogram>,
    commit: Option<Histogram>,
    etcd_cpu: Option<f64>,
    own_cpu: Option<f64>,
    pressure: Option<pressure::Reading>,
    at: Instant,
}

impl Scrape {
    fn latency_since(&self, earlier: &Scrape, min: f64) -> Latency {
        let since = |a: &Option<Histogram>, b: &Option<Histogram>| match (a, b) {
            (Some(a), Some(b)) => Some(a.since(b)),
            _ => None,
        };
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        let rate = |now: Option<f64>, then: Option<f64>| match (now, then) {
            (Some(n), Some(t)) if n >= t && secs > 0.0 => Some((n - t) / secs),
            _ => None,
        };
        let cpu = rate(self.etcd_cpu, earlier.etcd_cpu)
            .map(|etcd| etcd + rate(self.own_cpu, earlier.own_cpu).unwrap_or(0.0));
        let stalled = |p: Option<pressure::Reading>| p.map(|p| p.total_micros as f64 / 1e6);
        let pressure = rate(stalled(self.pressure), stalled(earlier.pressure)).map(|p| p.min(1.0));
        Latency {
            cpu,
            pressure,
            ..Latency::of(
                since(&self.wal, &earlier.wal).as_ref(),
                since(&self.commit, &earlier.commit).as_ref(),
                min,
            )
        }
    }
}

/// CPU seconds this process has used (user and system).
fn own_cpu() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    if unsafe { nix::libc::getrusage(nix::libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zeroed is a valid rusage, and getrusage succeeded in filling it.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: nix::libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

async fn scrape(url: &str) -> Result<Scrape, String> {
    let text = scrape::get(url, SCRAPE_TIMEOUT).await?;
    let s = Scrape {
        wal: prom::histogram(&text, WAL),
        commit: prom::histogram(&text, COMMIT),
        etcd_cpu: prom::sample(&text, CPU),
        own_cpu: own_cpu(),
        pressure: pressure::read(),
        at: Instant::now(),
    };
    if s.wal.is_none() && s.commit.is_none() {
        return Err(format!("the page has neither {WAL} nor {COMMIT}"));
    }
    Ok(s)
}

fn ms(l: Latency) -> EtcdLatency {
    EtcdLatency {
        wal_fsync_p99_ms: l.wal.map(|v| (v * 1e5).round() / 100.0),
        backend_commit_p99_ms: l.commit.map(|v| (v * 1e5).round() / 100.0),
        cpu_cores: l.cpu.map(|v| (v * 100.0).round() / 100.0),
        cpu_pressure_percent: l.pressure.map(|v| (v * 1e3).round() / 10.0),
    }
}

/// The sampler: the baseline over [`BASELINE`], then one AIMD step per [`INTERVAL`]. Metrics
/// that stop answering leave the fallback pace for the rest of the stream.
async fn sample(
    url: String,
    first: Scrape,
    shared: Arc<Shared>,
    rate_limit: Option<u64>,
    idle: bool,
) {
    let mut prev = first;
    let mut aimd: Option<Aimd> = None;
    loop {
        tokio::time::sleep(if aimd.is_none() { BASELINE } else { INTERVAL }).await;
        let now = match scrape(&url).await {
            Ok(s) => s,
            Err(e) => {
                let rate = FALLBACK.min(rate_limit.unwrap_or(NONE));
                shared.rate.store(rate, Ordering::Relaxed);
                let mut r = shared.report.lock().unwrap();
                r.mode = PacingMode::Fallback;
                r.reason = Some(format!(
                    "etcd's metrics at {url} stopped answering during the backup: {e}"
                ));
                r.lowest_bytes_per_second =
                    Some(r.lowest_bytes_per_second.map_or(rate, |l| l.min(rate)));
                tracing::warn!("{}; the rest is read at the fallback pace", e);
                return;
            }
        };
        let a = match &mut aimd {
            None => {
                let mut base = now.latency_since(&prev, aimd::MIN_BASELINE);
                // The CPU pressure before: the kernel's average over the 10 s before the
                // backup began (what said idle or not), not this second's, which the
                // stream's start shares.
                base.pressure = prev.pressure.map(|p| p.avg10);
                shared.report.lock().unwrap().before = Some(ms(base));
                aimd.insert(Aimd::new(base, rate_limit, idle))
            }
            Some(a) => {
                a.observe(now.latency_since(&prev, aimd::MIN_INTERVAL));
                a
            }
        };
        shared.rate.store(a.rate(), Ordering::Relaxed);
        {
            let mut r = shared.report.lock().unwrap();
            r.slowdowns = a.slowdowns;
            r.lowest_bytes_per_second = Some(a.lowest);
            r.highest_bytes_per_second = Some(a.highest);
            r.worst = Some(ms(a.worst)).filter(|w| *w != EtcdLatency::default());
        }
        prev = now;
    }
}

/// The pace at which `rest` bytes end within the time `left`.
fn needed(rest: u64, left: Duration) -> u64 {
    let left = left.as_secs_f64();
    if left > 0.0 {
        (rest as f64 / left) as u64
    } else {
        NONE
    }
}

/// Where the stream waits for its pace.
pub struct Gate {
    shared: Arc<Shared>,
    /// When the bytes passed so far are due at the current pace.
    next: Option<Instant>,
    /// The bytes end by then at the latest.
    end_by: Instant,
    expected: Option<u64>,
    sent: u64,
}

impl Gate {
    /// `len` more bytes: waits until they are due. No credit builds up while the stream is
    /// slower than the pace, so a slow etcd is never followed by a burst.
    pub async fn pass(&mut self, len: u64) {
        self.sent += len;
        let mut rate = self.shared.rate.load(Ordering::Relaxed);
        let now = Instant::now();
        // A stream that would miss its deadline at this pace goes as fast as it must.
        if let Some(expected) = self.expected {
            let left = self.end_by.saturating_duration_since(now);
            rate = rate.max(needed(expected.saturating_sub(self.sent), left));
        }
        if rate == NONE {
            self.next = None;
            return;
        }
        let due = self.next.map_or(now, |n| n.max(now))
            + Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
        self.next = Some(due);
        let ahead = due.saturating_duration_since(now);
        if ahead > Duration::from_millis(5) {
            tokio::time::sleep(ahead).await;
            self.shared
                .waited
                .fetch_add(ahead.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_raises_the_pace_it_needs() {
        assert_eq!(needed(60 * MIB, Duration::from_secs(6)), 10 * MIB);
        assert_eq!(needed(0, Duration::from_secs(10)), 0);
        assert_eq!(
            needed(1, Duration::ZERO),
            NONE,
            "past the deadline: unpaced"
        );
    }
}
