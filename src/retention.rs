//! Pure retention: (records, now, policy) → which snapshots to delete, which records to drop,
//! and, for `etcdguard records`, why each snapshot is kept or when it goes. No I/O.
//!
//! Snapshot rule (the same for local and remote copies):
//! - candidates are successful records whose copy is present;
//! - the count rules select what they keep: `keep` (alias `keep_last`) the newest `keep`
//!   candidates; `keep_hourly`/`keep_daily`/`keep_weekly`/`keep_monthly` = N the newest
//!   candidate of each of the last N hours/days/ISO weeks/calendar months that have one
//!   (restic's meaning: counting back from the newest; a period without a backup does not
//!   use up a count), periods read in the configured `timezone`;
//! - a candidate is deleted when it is older than `ttl` **or** (a count rule is set and) no
//!   count rule selects it, but **never** when it is among the newest `min_keep`;
//! - "newest" is the order of the records file (append order), not timestamps, so a clock that
//!   jumped cannot make an old snapshot look new; a timestamp in the future is age zero; the
//!   count rules read no clock at all (only the copies' own times), so a jump of the clock
//!   cannot make them delete anything;
//! - a pinned snapshot is outside the rule: never deleted, and not counted among the newest
//!   (a pin adds to what is kept, never takes the place of a `min_keep` copy).
//!
//! History rule: a record whose snapshot still exists (locally or remotely) is never dropped.
//! Beyond that, successful records are dropped oldest first while there are more than
//! `successful` of them, and failed records beyond the newest `failed` are dropped.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::records::{Outcome, Record, RecordsFile};
use crate::schedule::Zone;

/// When snapshots of one destination are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Delete when older than this; `None`: no age limit.
    pub ttl: Option<Duration>,
    /// Keep the newest `keep` (`keep_last`); `None`: this count rule is off.
    pub keep: Option<usize>,
    /// Keep the newest of each of the last N periods (`keep_hourly` …).
    pub tiers: Tiers,
    /// The zone whose hours, days, weeks and months the tiers count (the schedule's).
    pub zone: Zone,
    /// Never delete the newest `min_keep`.
    pub min_keep: usize,
}

/// `keep_hourly`, `keep_daily`, `keep_weekly`, `keep_monthly`: `None` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tiers {
    pub hourly: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
}

/// A calendar period of the tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Hour, Period::Day, Period::Week, Period::Month];

    /// The config field that counts this period.
    pub fn field(self) -> &'static str {
        match self {
            Period::Hour => "keep_hourly",
            Period::Day => "keep_daily",
            Period::Week => "keep_weekly",
            Period::Month => "keep_monthly",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// A number naming the period that contains `t` in `zone`: equal for two times in the
    /// same period, different otherwise. Pure (for `Zone::Local`, given the host's zone).
    fn key(self, t: DateTime<Utc>, zone: Zone) -> i64 {
        let local = match zone {
            Zone::Utc => t.naive_utc(),
            Zone::Local => t.with_timezone(&chrono::Local).naive_local(),
            Zone::Named(tz) => t.with_timezone(&tz).naive_local(),
        };
        let day = i64::from(local.date().num_days_from_ce());
        match self {
            Period::Hour => day * 24 + i64::from(local.hour()),
            Period::Day => day,
            Period::Week => {
                let w = local.date().iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Month => i64::from(local.year()) * 12 + i64::from(local.month0()),
        }
    }
}

impl Tiers {
    pub fn get(&self, p: Period) -> Option<usize> {
        match p {
            Period::Hour => self.hourly,
            Period::Day => self.daily,
            Period::Week => self.weekly,
            Period::Month => self.monthly,
        }
    }

    pub fn any(&self) -> bool {
        Period::ALL.iter().any(|p| self.get(*p).is_some())
    }
}

impl Rule {
    /// True when nothing is ever deleted.
    pub fn keeps_forever(&self) -> bool {
        self.ttl.is_none() && !self.counts()
    }

    /// True when a count rule (`keep` or a tier) is set: what none of them selects goes.
    fn counts(&self) -> bool {
        self.keep.is_some() || self.tiers.any()
    }
}

/// Why a count rule keeps one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Among the newest `keep`.
    Last(usize),
    /// The newest of its period, one of the last N.
    Newest(Period, usize),
}

/// For copies ordered oldest first, which count rules keep each (restic's walk: newest first,
/// each tier keeping a copy whose period differs from the last one it kept, while its count
/// lasts). A copy past the ttl goes whatever the tiers say, so the tiers' walk passes over it
/// without spending a count: deleting it then changes nothing in the walk (the rule is
/// idempotent), and a later `now` only ever adds deletions.
fn count_rules(times: &[DateTime<Utc>], now: DateTime<Utc>, rule: &Rule) -> Vec<Vec<Kept>> {
    let n = times.len();
    let mut out = vec![Vec::new(); n];
    let mut left: Vec<(Period, usize, usize, Option<i64>)> = Period::ALL
        .iter()
        .filter_map(|&p| rule.tiers.get(p).map(|c| (p, c, c, None)))
        .collect();
    for pos in (0..n).rev() {
        let newer = n - 1 - pos;
        if let Some(k) = rule.keep.filter(|k| newer < *k) {
            out[pos].push(Kept::Last(k));
        }
        if rule.ttl.is_some_and(|ttl| is_older(times[pos], now, ttl)) {
            continue;
        }
        for (p, count, remaining, last) in left.iter_mut() {
            if *remaining == 0 {
                continue;
            }
            let key = p.key(times[pos], rule.zone);
            if *last != Some(key) {
                *last = Some(key);
                *remaining -= 1;
                out[pos].push(Kept::Newest(*p, *count));
            }
        }
    }
    out
}

/// The count rules in words, for a copy none of them keeps: "not among the newest 3
/// (local_storage.keep), nor the newest of one of the last 7 days (local_storage.keep_daily)".
fn unselected_reason(rule: &Rule, what: &str) -> String {
    let mut parts = Vec::new();
    if let Some(k) = rule.keep {
        parts.push(format!("among the newest {k} ({what}.keep)"));
    }
    for p in Period::ALL {
        if let Some(c) = rule.tiers.get(p) {
            parts.push(format!(
                "the newest of one of the last {c} {}s ({what}.{})",
                p.noun(),
                p.field()
            ));
        }
    }
    format!("not {}", parts.join(", nor "))
}

/// A count rule's hold on one copy in words.
fn kept_text(k: Kept) -> String {
    match k {
        Kept::Last(n) => format!("one of the newest {n} (keep)"),
        Kept::Newest(p, c) => format!(
            "the newest of its {}, one of the last {c} ({})",
            p.noun(),
            p.field()
        ),
    }
}

/// How many records the history keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub successful: usize,
    pub failed: usize,
}

/// One deletion decision: the record's index in the slice, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub index: usize,
    pub reason: String,
}

fn ttl_text(ttl: Duration) -> String {
    humantime::format_duration(ttl).to_string()
}

/// Indices of present, successful, unpinned local snapshots in append order (oldest first).
fn local_candidates(records: &[Record]) -> Vec<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_good_local() && r.pin.is_none())
        .map(|(i, _)| i)
        .collect()
}

/// The rule over copies ordered oldest first, with their timestamps: which positions to
/// delete and why. `what` names the config section in reasons (`local_storage`).
fn select(
    times: &[DateTime<Utc>],
    now: DateTime<Utc>,
    rule: Rule,
    what: &str,
) -> Vec<(usize, String)> {
    let n = times.len();
    let kept = count_rules(times, now, &rule);
    times
        .iter()
        .enumerate()
        .filter_map(|(pos, t)| {
            let newer = n - 1 - pos; // copies newer than this one
            if newer < rule.min_keep {
                return None;
            }
            // Past the ttl first: the tiers pass over such a copy, so theirs would not be why.
            let reason = if let Some(ttl) = rule.ttl.filter(|ttl| is_older(*t, now, *ttl)) {
                format!("older than {what}.ttl ({})", ttl_text(ttl))
            } else if rule.counts() && kept[pos].is_empty() {
                unselected_reason(&rule, what)
            } else {
                return None;
            };
            Some((pos, reason))
        })
        .collect()
}

/// Decides which local snapshots to delete.
pub fn local_deletions(records: &[Record], now: DateTime<Utc>, rule: Rule) -> Vec<Deletion> {
    let candidates = local_candidates(records);
    let times: Vec<DateTime<Utc>> = candidates
        .iter()
        .map(|&i| records[i].backup_timestamp)
        .collect();
    select(&times, now, rule, "local_storage")
        .into_iter()
        .map(|(pos, reason)| Deletion {
            index: candidates[pos],
            reason,
        })
        .collect()
}

/// Decides which of this node's remote snapshots to delete. `objects` are the snapshot names
/// under the node's prefix with the time in each name, ordered as [`remote_order`] says (no
/// records here: by that time). Names in `pinned` are outside the rule. Indices refer to
/// `objects`.
#[cfg(test)]
pub fn remote_deletions(
    objects: &[(String, DateTime<Utc>)],
    pinned: &std::collections::HashSet<String>,
    now: DateTime<Utc>,
    rule: Rule,
) -> Vec<Deletion> {
    let none = std::collections::HashMap::new();
    remote_deletions_at(objects, &none, pinned, now, rule, "remote_storage")
}

/// [`remote_deletions`] at the destination whose settings are `section` (`remote_storage`,
/// `destination.<name>`), which the reasons name; `recorded` maps the object names this
/// node's records know to the record's position in the file (see [`remote_order`]).
pub fn remote_deletions_at(
    objects: &[(String, DateTime<Utc>)],
    recorded: &std::collections::HashMap<String, usize>,
    pinned: &std::collections::HashSet<String>,
    now: DateTime<Utc>,
    rule: Rule,
    section: &str,
) -> Vec<Deletion> {
    let candidates: Vec<usize> = (0..objects.len())
        .filter(|&i| !pinned.contains(&objects[i].0))
        .collect();
    let order = remote_order(objects, candidates, recorded);
    let times: Vec<DateTime<Utc>> = order.iter().map(|&i| objects[i].1).collect();
    select(&times, now, rule, section)
        .into_iter()
        .map(|(pos, reason)| Deletion {
            index: order[pos],
            reason,
        })
        .collect()
}

/// The order remote copies are judged in, oldest first, as local copies are: the order the
/// backups were recorded in, not the times in the names, for the copies this node's records
/// know (`recorded`: object name → the record's position). A clock stepped back gives a newer
/// backup an older name; ordered by name it would count as the oldest and go first. A
/// recorded copy sorts at the latest name time recorded up to it; copies the records do not
/// know (another node's, records lost with a rebuilt node) at their own.
fn remote_order(
    objects: &[(String, DateTime<Utc>)],
    mut candidates: Vec<usize>,
    recorded: &std::collections::HashMap<String, usize>,
) -> Vec<usize> {
    let mut known: Vec<(usize, usize)> = candidates
        .iter()
        .filter_map(|&i| recorded.get(&objects[i].0).map(|&pos| (pos, i)))
        .collect();
    known.sort_unstable();
    let mut at: std::collections::HashMap<usize, DateTime<Utc>> = Default::default();
    let mut latest: Option<DateTime<Utc>> = None;
    for (_, i) in known {
        let t = latest.map_or(objects[i].1, |l| l.max(objects[i].1));
        latest = Some(t);
        at.insert(i, t);
    }
    candidates.sort_by_cached_key(|&i| {
        let pos = recorded.get(&objects[i].0).copied().unwrap_or(usize::MAX);
        (
            at.get(&i).copied().unwrap_or(objects[i].1),
            pos,
            objects[i].0.clone(),
        )
    });
    candidates
}

/// Of copies ordered oldest first, how many are older than the rule's ttl but kept because
/// they are among the newest `min_keep`: a sign that no good backup has replaced them for
/// longer than the ttl. Pure.
pub fn held_by_min_keep(times: &[DateTime<Utc>], now: DateTime<Utc>, rule: Rule) -> usize {
    let Some(ttl) = rule.ttl else { return 0 };
    let n = times.len();
    times
        .iter()
        .enumerate()
        .filter(|(pos, t)| n - 1 - pos < rule.min_keep && is_older(**t, now, ttl))
        .count()
}

fn is_older(t: DateTime<Utc>, now: DateTime<Utc>, ttl: Duration) -> bool {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    now - t > ttl
}

/// True when the record's snapshot may still exist somewhere (local or remote copy).
fn snapshot_exists(r: &Record) -> bool {
    use crate::records::CopyState;
    let local = r
        .local
        .as_ref()
        .is_some_and(|l| l.state == CopyState::Present);
    // A pending upload still has its local copy; a failed one has nothing anywhere.
    let remote = r.remotes.iter().any(|c| c.may_exist());
    local || remote
}

/// Drops the records `history_drops` selects from the file; how many.
pub fn trim_history(file: &mut RecordsFile, limits: HistoryLimits) -> usize {
    let drops = history_drops(&file.records, limits);
    for &i in drops.iter().rev() {
        file.records.remove(i);
    }
    drops.len()
}

/// Indices of records to drop from the history, ascending. Call after deletions are applied
/// (a snapshot whose deletion failed still exists and keeps its record).
pub fn history_drops(records: &[Record], limits: HistoryLimits) -> Vec<usize> {
    let kept = newest_of_each_kind(records);
    let mut drops = Vec::new();
    let successful: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].result == Outcome::Success && !kept.contains(&i))
        .collect();
    let mut excess = successful.len().saturating_sub(limits.successful);
    for &i in &successful {
        if excess == 0 {
            break;
        }
        if !snapshot_exists(&records[i]) {
            drops.push(i);
            excess -= 1;
        }
    }
    // Skipped slots count with the failures: both are attempts without a snapshot.
    let failed: Vec<usize> = (0..records.len())
        .filter(|&i| {
            records[i].result != Outcome::Success
                && !snapshot_exists(&records[i])
                && !kept.contains(&i)
        })
        .collect();
    let excess = failed.len().saturating_sub(limits.failed);
    drops.extend_from_slice(&failed[..excess]);
    drops.sort_unstable();
    drops
}

/// The records the history keeps whatever its limits: the newest drill, the newest drill that
/// passed, the newest restore and the newest rollback. With hourly backups they would
/// otherwise fall out of a limit of 50 within two days, and with them what `records`,
/// `health` and the metrics say of the last drill.
fn newest_of_each_kind(records: &[Record]) -> Vec<usize> {
    use crate::records::Trigger;
    let newest = |f: &dyn Fn(&Record) -> bool| records.iter().rposition(f);
    [
        newest(&|r| r.trigger == Trigger::Drill),
        newest(&|r| r.trigger == Trigger::Drill && r.result == Outcome::Success),
        newest(&|r| r.trigger == Trigger::Restore),
        newest(&|r| r.trigger == Trigger::Rollback),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// For each record, a sentence saying why its local snapshot is kept or when it will go;
/// `None` for records without a local snapshot.
pub fn local_status(records: &[Record], now: DateTime<Utc>, rule: Rule) -> Vec<Option<String>> {
    use crate::records::CopyState;
    let candidates = local_candidates(records);
    let n = candidates.len();
    let mut out = vec![None; records.len()];
    for (i, r) in records.iter().enumerate() {
        if let Some(p) = r.pin.as_ref().filter(|_| r.is_good_local()) {
            out[i] = Some(format!("kept: {} until unpinned", p.describe()));
        }
        if let Some(l) = r.local.as_ref().filter(|l| l.state == CopyState::Deleted) {
            out[i] = Some(match (&l.deleted_at, &l.deleted_reason) {
                (Some(at), Some(why)) => {
                    format!("deleted {}: {why}", crate::records::rfc3339(*at))
                }
                _ => "deleted".to_string(),
            });
        }
    }
    let times: Vec<DateTime<Utc>> = candidates
        .iter()
        .map(|&i| records[i].backup_timestamp)
        .collect();
    let kept = count_rules(&times, now, &rule);
    for (pos, &i) in candidates.iter().enumerate() {
        let newer = n - 1 - pos;
        let r = &records[i];
        if rule.tiers.any() && newer >= rule.min_keep {
            out[i] = Some(tiered_status(r.backup_timestamp, &kept[pos], now, &rule));
            continue;
        }
        out[i] = Some(if newer < rule.min_keep {
            format!(
                "kept: one of the newest {} good snapshots (min_keep)",
                rule.min_keep
            )
        } else if rule.keep.is_some_and(|k| newer >= k) {
            format!(
                "goes at the next successful backup: not among the newest {} (keep)",
                rule.keep.unwrap_or(0)
            )
        } else {
            match (rule.ttl, rule.keep) {
                (Some(ttl), keep) => {
                    let (Ok(mut s) | Err(mut s)) = ttl_words(r.backup_timestamp, ttl, now);
                    if let Some(k) = keep {
                        s.push_str(&format!(", or after {} more backups (keep {k})", k - newer));
                    }
                    s
                }
                (None, Some(k)) => {
                    format!("kept for {} more successful backups (keep {k})", k - newer)
                }
                (None, None) => "kept forever (no ttl or keep)".to_string(),
            }
        });
    }
    out
}

/// A copy's ttl in words: `Ok("expires <time> (ttl <ttl>)")` while it lasts,
/// `Err("expired <time> (ttl <ttl>): goes at the next successful backup")` after.
fn ttl_words(t: DateTime<Utc>, ttl: Duration, now: DateTime<Utc>) -> Result<String, String> {
    let expiry = t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let at = crate::records::rfc3339(expiry);
    if expiry < now {
        Err(format!(
            "expired {at} (ttl {}): goes at the next successful backup",
            ttl_text(ttl)
        ))
    } else {
        Ok(format!("expires {at} (ttl {})", ttl_text(ttl)))
    }
}

/// `local_status` for a copy beyond `min_keep` when tiers are set.
fn tiered_status(t: DateTime<Utc>, kept: &[Kept], now: DateTime<Utc>, rule: &Rule) -> String {
    if kept.is_empty() {
        return format!(
            "goes at the next successful backup: {}",
            unselected_reason(rule, "local_storage")
        );
    }
    let held = kept
        .iter()
        .map(|k| kept_text(*k))
        .collect::<Vec<_>>()
        .join("; ");
    match rule.ttl {
        None => format!("kept: {held}"),
        Some(ttl) => match ttl_words(t, ttl, now) {
            Ok(expires) => format!("kept: {held}; {expires}"),
            Err(expired) => expired,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::records::{CopyState, RemoteCopy, Snapshot, Trigger};

    const H: i64 = 3600;

    fn at(hours_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::seconds(hours_ago * H)
    }

    fn rec(id: &str, ts: DateTime<Utc>, ok: bool, state: CopyState) -> Record {
        let mut r = if ok {
            Record::backup_succeeded(Snapshot::example(id, ts), Trigger::Schedule, 1.0)
        } else {
            Record::backup_failed(ts, Trigger::Schedule, "x".into(), None, None, 1.0)
        };
        r.id = id.into();
        if let Some(l) = r.local.as_mut() {
            l.state = state;
        }
        r
    }

    fn good(id: &str, hours_ago: i64, now: DateTime<Utc>) -> Record {
        rec(id, at(hours_ago, now), true, CopyState::Present)
    }

    fn failed(id: &str, hours_ago: i64, now: DateTime<Utc>) -> Record {
        rec(id, at(hours_ago, now), false, CopyState::Present)
    }

    fn ids(records: &[Record], d: &[Deletion]) -> Vec<String> {
        d.iter().map(|x| records[x.index].id.clone()).collect()
    }

    fn rule(ttl_hours: Option<u64>, keep: Option<usize>, min_keep: usize) -> Rule {
        Rule {
            tiers: Tiers::default(),
            zone: Zone::Utc,
            ttl: ttl_hours.map(|h| Duration::from_secs(h * 3600)),
            keep,
            min_keep,
        }
    }

    fn history(records: &[Record], limits: HistoryLimits) -> Vec<String> {
        history_drops(records, limits)
            .iter()
            .map(|&i| records[i].id.clone())
            .collect()
    }

    #[test]
    fn empty_history() {
        let now = Utc::now();
        assert!(local_deletions(&[], now, rule(Some(1), Some(1), 1)).is_empty());
        let limits = HistoryLimits {
            successful: 1,
            failed: 1,
        };
        assert!(history_drops(&[], limits).is_empty());
        assert!(local_status(&[], now, rule(None, None, 1)).is_empty());
    }

    #[test]
    fn ttl_only_beyond_min_keep() {
        let now = Utc::now();
        let r: Vec<_> = [50, 40, 30, 20, 1]
            .iter()
            .enumerate()
            .map(|(i, h)| good(&format!("r{i}"), *h, now))
            .collect();
        let d = local_deletions(&r, now, rule(Some(24), None, 2));
        assert_eq!(ids(&r, &d), ["r0", "r1", "r2"]);
        assert!(d[0].reason.contains("ttl"));
    }

    #[test]
    fn keep_only_deletes_the_oldest_beyond_keep() {
        let now = Utc::now();
        let r: Vec<_> = (0..6).map(|i| good(&format!("r{i}"), 6 - i, now)).collect();
        let d = local_deletions(&r, now, rule(None, Some(3), 2));
        assert_eq!(ids(&r, &d), ["r0", "r1", "r2"]);
        assert!(d[0].reason.contains("keep"));
    }

    #[test]
    fn ttl_or_keep_whichever_deletes_more_but_never_min_keep() {
        let now = Utc::now();
        let r = vec![
            good("a", 100, now),
            good("b", 90, now), // expired
            good("c", 2, now),
            good("d", 1, now),
            good("e", 0, now),
        ];
        // keep 4 alone would delete a; ttl 24h deletes a and b.
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(Some(24), Some(4), 1))),
            ["a", "b"]
        );
        // keep 2 deletes a, b, c; min_keep 3 protects c.
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(Some(24), Some(2), 2))),
            ["a", "b", "c"]
        );
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(None, Some(3), 3))),
            ["a", "b"]
        );
    }

    #[test]
    fn both_absent_keeps_forever() {
        let now = Utc::now();
        let r: Vec<_> = (0..5)
            .map(|i| good(&format!("r{i}"), 10_000, now))
            .collect();
        let rl = rule(None, None, 1);
        assert!(rl.keeps_forever());
        assert!(local_deletions(&r, now, rl).is_empty());
        assert_eq!(
            local_status(&r, now, rl)[0].as_deref(),
            Some("kept forever (no ttl or keep)")
        );
    }

    #[test]
    fn min_keep_protects_old_ones_when_recent_backups_failed() {
        let now = Utc::now();
        let r = vec![
            good("old1", 100, now),
            good("old2", 90, now),
            good("old3", 80, now),
            failed("f1", 10, now),
            failed("f2", 5, now),
            failed("f3", 1, now),
        ];
        let d = local_deletions(&r, now, rule(Some(24), Some(2), 2));
        assert_eq!(ids(&r, &d), ["old1"]);
        assert!(local_deletions(&r, now, rule(Some(24), None, 5)).is_empty());
    }

    #[test]
    fn deleted_copies_do_not_count() {
        let now = Utc::now();
        let r = vec![
            good("a", 100, now),
            good("b", 90, now),
            rec("c", at(80, now), true, CopyState::Deleted),
            rec("d", at(70, now), true, CopyState::Deleted),
        ];
        assert!(local_deletions(&r, now, rule(Some(24), None, 2)).is_empty());
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(Some(24), None, 1))),
            ["a"]
        );
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(None, Some(1), 1))),
            ["a"]
        );
    }

    #[test]
    fn clock_skew_and_equal_timestamps() {
        let now = Utc::now();
        let r = vec![
            good("skewed-old", -240, now), // written while the clock was 10 days ahead
            good("older", 200, now),
            good("new1", 2, now),
            good("new2", 1, now),
        ];
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(Some(24), None, 2))),
            ["older"]
        );
        // keep counts append order, so the skewed one is the oldest by count.
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(None, Some(2), 1))),
            ["skewed-old", "older"]
        );
        // Equal timestamps: append order decides.
        let t = at(5, now);
        let r: Vec<_> = (0..4)
            .map(|i| rec(&format!("s{i}"), t, true, CopyState::Present))
            .collect();
        assert_eq!(
            ids(&r, &local_deletions(&r, now, rule(None, Some(2), 1))),
            ["s0", "s1"]
        );
    }

    #[test]
    fn exactly_at_ttl_is_kept() {
        let now = Utc::now();
        let r = vec![good("a", 24, now), good("b", 1, now)];
        assert!(local_deletions(&r, now, rule(Some(24), None, 1)).is_empty());
    }

    #[test]
    fn history_never_drops_existing_snapshots() {
        let now = Utc::now();
        let mut r = vec![
            rec("gone1", at(9, now), true, CopyState::Deleted),
            good("live1", 8, now),
            rec("gone2", at(7, now), true, CopyState::Deleted),
            good("live2", 6, now),
            good("live3", 5, now),
        ];
        let limits = HistoryLimits {
            successful: 2,
            failed: 5,
        };
        // 5 successful, limit 2: only the two gone ones can go; the three live ones stay.
        assert_eq!(history(&r, limits), ["gone1", "gone2"]);
        // A gone record that still has a remote copy stays.
        let copy = |state| RemoteCopy {
            state,
            ..RemoteCopy::uploaded("remote", "s3://b/k".into(), Utc::now(), None, None)
        };
        r[0].remotes = vec![copy(crate::records::RemoteState::Uploaded)];
        assert_eq!(history(&r, limits), ["gone2"]);
        r[0].remotes = vec![copy(crate::records::RemoteState::Deleted)];
        assert_eq!(history(&r, limits), ["gone1", "gone2"]);
        r[0].remotes = vec![copy(crate::records::RemoteState::Failed)];
        assert_eq!(history(&r, limits), ["gone1", "gone2"]);
    }

    #[test]
    fn history_drops_oldest_failed_and_successful_separately() {
        let now = Utc::now();
        let r = vec![
            failed("f1", 10, now),
            rec("g1", at(9, now), true, CopyState::Deleted),
            failed("f2", 8, now),
            rec("g2", at(7, now), true, CopyState::Deleted),
            failed("f3", 6, now),
            good("live", 5, now),
            failed("f4", 4, now),
        ];
        let limits = HistoryLimits {
            successful: 2,
            failed: 2,
        };
        assert_eq!(history(&r, limits), ["f1", "g1", "f2"]);
        let limits = HistoryLimits {
            successful: 10,
            failed: 10,
        };
        assert!(history(&r, limits).is_empty());
    }

    #[test]
    fn history_keeps_the_newest_drill_and_the_newest_passing_drill_whatever_the_limits() {
        use crate::records::Trigger;
        let now = Utc::now();
        let drill = |id: &str, h: i64, ok: bool| {
            let mut r = rec(id, at(h, now), ok, CopyState::Deleted);
            r.trigger = Trigger::Drill;
            r.local = None;
            r
        };
        let r = vec![
            drill("d-old", 30, true),
            drill("d-pass", 20, true),
            rec("g1", at(15, now), true, CopyState::Deleted),
            drill("d-fail", 12, false),
            rec("g2", at(10, now), true, CopyState::Deleted),
            rec("g3", at(5, now), true, CopyState::Deleted),
            failed("f1", 4, now),
        ];
        let limits = HistoryLimits {
            successful: 1,
            failed: 0,
        };
        // The newest drill (failed) and the newest that passed stay; the rest goes oldest first.
        assert_eq!(history(&r, limits), ["d-old", "g1", "g2", "f1"]);
    }

    #[test]
    fn status_explains_each_snapshot() {
        let now = Utc::now();
        let mut r = vec![
            rec("gone", at(100, now), true, CopyState::Deleted),
            good("a", 30, now),
            good("b", 20, now),
            good("c", 10, now),
            failed("f", 5, now),
            good("d", 1, now),
        ];
        r[0].local.as_mut().unwrap().deleted_at = Some(at(50, now));
        r[0].local.as_mut().unwrap().deleted_reason = Some("older than ttl".into());
        let s = local_status(&r, now, rule(Some(24), Some(3), 2));
        assert!(s[0].as_deref().unwrap().starts_with("deleted "), "{s:?}");
        assert!(
            s[1].as_deref().unwrap().contains("not among the newest 3"),
            "{s:?}"
        );
        assert!(s[2].as_deref().unwrap().starts_with("expires "), "{s:?}");
        assert!(
            s[2].as_deref().unwrap().contains("or after 1 more backups"),
            "{s:?}"
        );
        assert!(s[3].as_deref().unwrap().contains("min_keep"), "{s:?}");
        assert_eq!(s[4], None);
        assert!(s[5].as_deref().unwrap().contains("min_keep"), "{s:?}");
        let s = local_status(&r, now, rule(Some(24), None, 1));
        assert!(s[1].as_deref().unwrap().starts_with("expired "), "{s:?}");
        let s = local_status(&r, now, rule(None, Some(4), 1));
        assert_eq!(
            s[1].as_deref(),
            Some("kept for 1 more successful backups (keep 4)")
        );
    }

    #[test]
    fn remote_rule_orders_recorded_copies_as_recorded_after_a_clock_step_back() {
        let now = Utc::now();
        let t = |h: i64| now + chrono::Duration::hours(h);
        // Recorded in this order: a and b while the clock was a day ahead, then c and d after
        // it was stepped back two days: c and d have the oldest names but are the newest.
        // x is a copy the records do not know (another node's): placed by its name.
        let objs: Vec<(String, DateTime<Utc>)> =
            [("c", -25), ("x", 0), ("a", 23), ("d", -24), ("b", 24)]
                .iter()
                .map(|(n, h)| (n.to_string(), t(*h)))
                .collect();
        let recorded: std::collections::HashMap<String, usize> =
            [("a", 0), ("b", 1), ("c", 2), ("d", 3)]
                .iter()
                .map(|(n, i)| (n.to_string(), *i))
                .collect();
        let gone = |recorded: &std::collections::HashMap<String, usize>| -> Vec<String> {
            let mut v: Vec<String> = remote_deletions_at(
                &objs,
                recorded,
                &HashSet::new(),
                now,
                rule(None, Some(2), 1),
                "remote_storage",
            )
            .into_iter()
            .map(|d| objs[d.index].0.clone())
            .collect();
            v.sort();
            v
        };
        assert_eq!(gone(&recorded), ["a", "b", "x"]);
        // Without records, by the names: the two "future" copies are the newest.
        assert_eq!(gone(&Default::default()), ["c", "d", "x"]);
        // A ttl of an hour, the clock just after d: a and b (in the future) are age zero and
        // stay; c, an hour and ten minutes old, goes, as it would locally; d is the newest.
        let later = t(-24) + chrono::Duration::minutes(10);
        let d = remote_deletions_at(
            &objs,
            &recorded,
            &HashSet::new(),
            later,
            rule(Some(1), None, 1),
            "r",
        );
        let names: Vec<&str> = d.iter().map(|d| objs[d.index].0.as_str()).collect();
        assert_eq!(names, ["c"]);
    }

    #[test]
    fn remote_rule_orders_by_time_and_keeps_min_keep() {
        let now = Utc::now();
        // Listed out of order: the rule must order by time, not by listing.
        let objs: Vec<(String, DateTime<Utc>)> = [5, 1, 4, 2, 3]
            .iter()
            .map(|d| (format!("d{d}"), now - chrono::Duration::days(*d)))
            .collect();
        let names = |rule: Rule| -> Vec<String> {
            let mut v: Vec<String> = remote_deletions(&objs, &HashSet::new(), now, rule)
                .into_iter()
                .map(|d| objs[d.index].0.clone())
                .collect();
            v.sort();
            v
        };
        let ttl = |days: u64| Some(Duration::from_secs(days * 86400 - 60));
        // ttl 2 days: d2..d5 are older, but min_keep 3 keeps d1, d2, d3.
        assert_eq!(
            names(Rule {
                tiers: Tiers::default(),
                zone: Zone::Utc,
                ttl: ttl(2),
                keep: None,
                min_keep: 3
            }),
            ["d4", "d5"]
        );
        // keep 2 (no ttl): everything but the newest two.
        assert_eq!(
            names(Rule {
                tiers: Tiers::default(),
                zone: Zone::Utc,
                ttl: None,
                keep: Some(2),
                min_keep: 1
            }),
            ["d3", "d4", "d5"]
        );
        // Nothing old enough.
        assert!(names(Rule {
            tiers: Tiers::default(),
            zone: Zone::Utc,
            ttl: ttl(30),
            keep: None,
            min_keep: 1
        })
        .is_empty());
        assert!(remote_deletions(
            &[],
            &HashSet::new(),
            now,
            Rule {
                tiers: Tiers::default(),
                zone: Zone::Utc,
                ttl: ttl(1),
                keep: Some(1),
                min_keep: 1
            }
        )
        .is_empty());
        let r = remote_deletions(
            &objs,
            &HashSet::new(),
            now,
            Rule {
                tiers: Tiers::default(),
                zone: Zone::Utc,
                ttl: None,
                keep: Some(4),
                min_keep: 1,
            },
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, "not among the newest 4 (remote_storage.keep)");
    }

    #[test]
    fn pinned_snapshots_are_outside_the_rule_locally_and_remotely() {
        let now = Utc::now();
        let keep1 = Rule {
            tiers: Tiers::default(),
            zone: Zone::Utc,
            ttl: Some(Duration::from_secs(3600)),
            keep: Some(1),
            min_keep: 1,
        };
        // Remote: d5 (the oldest) pinned; the newest unpinned one is still kept by min_keep.
        let objs: Vec<(String, DateTime<Utc>)> = [5, 1, 4, 2, 3]
            .iter()
            .map(|d| (format!("d{d}"), now - chrono::Duration::days(*d)))
            .collect();
        let pinned: HashSet<String> = ["d5".to_string(), "d1".to_string()].into();
        let mut gone: Vec<String> = remote_deletions(&objs, &pinned, now, keep1)
            .into_iter()
            .map(|d| objs[d.index].0.clone())
            .collect();
        gone.sort();
        // d1 pinned does not count as the newest: d2 is kept as min_keep.
        assert_eq!(gone, ["d3", "d4"]);

        // Local: the pinned old record is neither deleted nor counted.
        let mut records: Vec<Record> = (0..4)
            .map(|i| {
                Record::backup_succeeded(
                    Snapshot::example(&format!("s{i}"), now - chrono::Duration::days(10 - i)),
                    Trigger::Manual,
                    1.0,
                )
            })
            .collect();
        records[0].pin = Some(crate::records::Pin {
            pinned_at: now,
            label: Some("before kubeadm upgrade".into()),
        });
        let d: Vec<usize> = local_deletions(&records, now, keep1)
            .iter()
            .map(|d| d.index)
            .collect();
        assert_eq!(d, [1, 2]);
        let status = local_status(&records, now, keep1);
        assert!(
            status[0]
                .as_deref()
                .unwrap()
                .contains("(before kubeadm upgrade) until unpinned"),
            "{status:?}"
        );
        assert!(status[3].as_deref().unwrap().contains("min_keep"));
        // Unpinned, it goes like any other.
        records[0].pin = None;
        let d: Vec<usize> = local_deletions(&records, now, keep1)
            .iter()
            .map(|d| d.index)
            .collect();
        assert_eq!(d, [0, 1, 2]);
    }

    #[test]
    fn min_keep_holding_copies_past_their_ttl_is_counted() {
        let now = Utc::now();
        let times = [at(50, now), at(30, now), at(10, now)];
        // ttl 24 h: two are older; min_keep 2 holds one of them (the 30 h one).
        assert_eq!(held_by_min_keep(&times, now, rule(Some(24), None, 2)), 1);
        assert_eq!(held_by_min_keep(&times, now, rule(Some(24), None, 3)), 2);
        assert_eq!(held_by_min_keep(&times, now, rule(Some(100), None, 3)), 0);
        assert_eq!(held_by_min_keep(&times, now, rule(None, Some(3), 3)), 0);
        assert_eq!(held_by_min_keep(&[], now, rule(Some(1), None, 3)), 0);
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tiered(keep: Option<usize>, tiers: Tiers, zone: Zone, min_keep: usize) -> Rule {
        Rule {
            ttl: None,
            keep,
            tiers,
            zone,
            min_keep,
        }
    }

    /// Names of the copies `remote_deletions` keeps (all copies named by their time).
    fn kept_of(times: &[&str], rule: Rule, now: DateTime<Utc>) -> Vec<String> {
        let objs: Vec<(String, DateTime<Utc>)> =
            times.iter().map(|t| (t.to_string(), utc(t))).collect();
        let gone: HashSet<usize> = remote_deletions(&objs, &HashSet::new(), now, rule)
            .into_iter()
            .map(|d| d.index)
            .collect();
        let mut kept: Vec<String> = (0..objs.len())
            .filter(|i| !gone.contains(i))
            .map(|i| objs[i].0.clone())
            .collect();
        kept.sort();
        kept
    }

    // 2026-11-29 is a Sunday (ISO week 48); 2026-11-30, a Monday, starts week 49.
    const WEEK: [&str; 7] = [
        "2026-11-29T12:00:00Z",
        "2026-11-30T23:00:00Z",
        "2026-12-01T01:00:00Z",
        "2026-12-01T13:00:00Z",
        "2026-12-02T09:00:00Z",
        "2026-12-02T18:00:00Z",
        "2026-12-03T08:00:00Z",
    ];

    #[test]
    fn tiers_keep_the_newest_of_each_of_the_last_periods() {
        let now = utc("2026-12-03T09:00:00Z");
        let t = |daily, weekly, monthly| Tiers {
            hourly: None,
            daily,
            weekly,
            monthly,
        };
        assert_eq!(
            kept_of(
                &WEEK,
                tiered(None, t(Some(2), None, None), Zone::Utc, 1),
                now
            ),
            ["2026-12-02T18:00:00Z", "2026-12-03T08:00:00Z"]
        );
        assert_eq!(
            kept_of(
                &WEEK,
                tiered(None, t(None, Some(2), None), Zone::Utc, 1),
                now
            ),
            ["2026-11-29T12:00:00Z", "2026-12-03T08:00:00Z"]
        );
        // The newest of November is the 30th's, not the 29th's.
        assert_eq!(
            kept_of(
                &WEEK,
                tiered(None, t(None, None, Some(5)), Zone::Utc, 1),
                now
            ),
            ["2026-11-30T23:00:00Z", "2026-12-03T08:00:00Z"]
        );
        // Rules add up: the newest 2, the newest of 4 days, of 2 weeks.
        assert_eq!(
            kept_of(
                &WEEK,
                tiered(Some(2), t(Some(4), Some(2), None), Zone::Utc, 1),
                now
            ),
            [
                "2026-11-29T12:00:00Z",
                "2026-11-30T23:00:00Z",
                "2026-12-01T13:00:00Z",
                "2026-12-02T18:00:00Z",
                "2026-12-03T08:00:00Z"
            ]
        );
        // Days of the configured zone: in Berlin 23:00 UTC on the 30th is already the 1st,
        // so four days reach back only to the 29th's copy, as the newest of its day.
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        assert_eq!(
            kept_of(&WEEK, tiered(None, t(Some(4), None, None), berlin, 1), now),
            [
                "2026-11-29T12:00:00Z",
                "2026-12-01T13:00:00Z",
                "2026-12-02T18:00:00Z",
                "2026-12-03T08:00:00Z"
            ]
        );
        assert_eq!(
            kept_of(
                &WEEK,
                tiered(None, t(Some(4), None, None), Zone::Utc, 1),
                now
            ),
            [
                "2026-11-30T23:00:00Z",
                "2026-12-01T13:00:00Z",
                "2026-12-02T18:00:00Z",
                "2026-12-03T08:00:00Z"
            ]
        );
        // Hourly: periods without a copy do not use up the count.
        let hourly = Tiers {
            hourly: Some(3),
            ..Tiers::default()
        };
        assert_eq!(
            kept_of(&WEEK, tiered(None, hourly, Zone::Utc, 1), now),
            [
                "2026-12-02T09:00:00Z",
                "2026-12-02T18:00:00Z",
                "2026-12-03T08:00:00Z"
            ]
        );
        // min_keep is a floor the tiers cannot lower.
        assert_eq!(
            kept_of(
                &WEEK,
                tiered(None, t(None, None, Some(1)), Zone::Utc, 3),
                now
            ),
            [
                "2026-12-02T09:00:00Z",
                "2026-12-02T18:00:00Z",
                "2026-12-03T08:00:00Z"
            ]
        );
    }

    #[test]
    fn tiers_with_a_ttl_and_their_reasons_and_status() {
        let now = utc("2026-12-03T09:00:00Z");
        let rule = Rule {
            ttl: Some(Duration::from_secs(48 * 3600)),
            keep: None,
            tiers: Tiers {
                daily: Some(7),
                ..Tiers::default()
            },
            zone: Zone::Utc,
            min_keep: 1,
        };
        // The ttl cuts what the tiers would keep.
        assert_eq!(
            kept_of(&WEEK, rule, now),
            [
                "2026-12-01T13:00:00Z",
                "2026-12-02T18:00:00Z",
                "2026-12-03T08:00:00Z"
            ]
        );
        let records: Vec<Record> = WEEK
            .iter()
            .enumerate()
            .map(|(i, t)| rec(&format!("w{i}"), utc(t), true, CopyState::Present))
            .collect();
        let d = local_deletions(&records, now, rule);
        let why: Vec<(String, String)> = d
            .iter()
            .map(|x| (records[x.index].id.clone(), x.reason.clone()))
            .collect();
        assert_eq!(
            why,
            [
                (
                    "w0".to_string(),
                    "older than local_storage.ttl (2days)".to_string()
                ),
                (
                    "w1".to_string(),
                    "older than local_storage.ttl (2days)".to_string()
                ),
                (
                    "w2".to_string(),
                    "older than local_storage.ttl (2days)".to_string()
                ),
                (
                    "w4".to_string(),
                    "not the newest of one of the last 7 days (local_storage.keep_daily)"
                        .to_string()
                ),
            ]
        );
        let status = local_status(&records, now, rule);
        assert_eq!(
            status[3].as_deref(),
            Some(
                "kept: the newest of its day, one of the last 7 (keep_daily); \
                 expires 2026-12-03T13:00:00Z (ttl 2days)"
            )
        );
        assert_eq!(
            status[4].as_deref(),
            Some(
                "goes at the next successful backup: not the newest of one of the last 7 \
                 days (local_storage.keep_daily)"
            )
        );
        assert_eq!(
            status[6].as_deref(),
            Some("kept: one of the newest 1 good snapshots (min_keep)")
        );
    }

    /// xorshift64*: the property tests' inputs, reproducible from the seed in a failure.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn maybe(&mut self, max: u64) -> Option<usize> {
            (self.below(2) == 0).then(|| 1 + self.below(max) as usize)
        }
    }

    /// A random history (oldest first; with `jumps`, the clock sometimes went back between
    /// two backups), a random rule and a random evaluation time.
    fn case(seed: u64, jumps: bool) -> (Vec<DateTime<Utc>>, Rule, DateTime<Utc>) {
        let mut g = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut t = utc("2026-01-01T00:00:00Z");
        let n = g.below(80) as usize;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let gap = match g.below(4) {
                0 => g.below(600),       // back to back
                1 => g.below(4 * 3600),  // hourly-ish
                2 => g.below(2 * 86400), // daily-ish
                _ => g.below(20 * 86400),
            } as i64;
            t += chrono::Duration::seconds(gap);
            if jumps && g.below(8) == 0 {
                t -= chrono::Duration::seconds(g.below(3 * 86400) as i64);
            }
            times.push(t);
        }
        let zones = [
            Zone::Utc,
            Zone::parse("Europe/Berlin").unwrap(),
            Zone::parse("Asia/Kolkata").unwrap(),
        ];
        let rule = Rule {
            ttl: (g.below(3) == 0).then(|| Duration::from_secs(3600 + g.below(90 * 86400))),
            keep: g.maybe(10),
            tiers: Tiers {
                hourly: g.maybe(30),
                daily: g.maybe(14),
                weekly: g.maybe(8),
                monthly: g.maybe(12),
            },
            zone: zones[g.below(3) as usize],
            min_keep: 1 + g.below(5) as usize,
        };
        let now = t + chrono::Duration::seconds(g.below(60 * 86400) as i64 - 86400);
        (times, rule, now)
    }

    fn deleted(times: &[DateTime<Utc>], rule: Rule, now: DateTime<Utc>) -> Vec<usize> {
        // Remote order is by time, then name: the history's order when times only grow.
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by_key(|&i| (times[i], i));
        let sorted: Vec<DateTime<Utc>> = order.iter().map(|&i| times[i]).collect();
        let mut v: Vec<usize> = select(&sorted, now, rule, "x")
            .into_iter()
            .map(|(pos, _)| order[pos])
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn property_never_the_newest_min_keep_deterministic_idempotent_monotone_in_now() {
        for seed in 0..3000u64 {
            let (times, rule, now) = case(seed, false);
            let n = times.len();
            let gone = select(&times, now, rule, "x");
            let positions: Vec<usize> = gone.iter().map(|(p, _)| *p).collect();
            // Never the newest min_keep.
            assert!(
                positions.iter().all(|&p| n - 1 - p >= rule.min_keep),
                "seed {seed}: deleted one of the newest {}",
                rule.min_keep
            );
            // Deterministic.
            assert_eq!(gone, select(&times, now, rule, "x"), "seed {seed}");
            // Idempotent: what is left passes the rule untouched.
            let left: Vec<DateTime<Utc>> = (0..n)
                .filter(|p| !positions.contains(p))
                .map(|p| times[p])
                .collect();
            assert!(
                select(&left, now, rule, "x").is_empty(),
                "seed {seed}: a second run deletes more"
            );
            // The count rules read no clock; the ttl only adds deletions as time passes.
            let later = now + chrono::Duration::seconds(1 + (seed as i64 % 40) * 86400);
            let gone_later: Vec<usize> = select(&times, later, rule, "x")
                .iter()
                .map(|(p, _)| *p)
                .collect();
            assert!(
                positions.iter().all(|p| gone_later.contains(p)),
                "seed {seed}: a later clock keeps what an earlier one deleted"
            );
            let earlier = now - chrono::Duration::days(400);
            let gone_earlier: Vec<usize> = select(&times, earlier, rule, "x")
                .iter()
                .map(|(p, _)| *p)
                .collect();
            assert!(
                gone_earlier.iter().all(|p| positions.contains(p)),
                "seed {seed}: a clock that jumped back deletes more"
            );
            if rule.ttl.is_none() {
                assert_eq!(
                    gone_earlier, positions,
                    "seed {seed}: the count rules read the clock"
                );
            }
            // Remote order (by time) gives the same decisions when times only grow.
            assert_eq!(deleted(&times, rule, now), positions, "seed {seed}");
        }
    }

    #[test]
    fn property_with_a_clock_that_went_back_between_backups() {
        for seed in 0..3000u64 {
            let (times, rule, now) = case(seed, true);
            let n = times.len();
            let positions: Vec<usize> = select(&times, now, rule, "x")
                .iter()
                .map(|(p, _)| *p)
                .collect();
            assert!(
                positions.iter().all(|&p| n - 1 - p >= rule.min_keep),
                "seed {seed}: deleted one of the newest {}",
                rule.min_keep
            );
            // Each count rule still keeps as many copies as it counts (fewer only when the
            // history has fewer), and the newest copy always stays.
            let kept = n - positions.len();
            if let Some(k) = rule.keep.filter(|_| rule.ttl.is_none()) {
                assert!(kept >= k.min(n), "seed {seed}: keep {k} kept {kept}");
            }
            if n > 0 {
                assert!(
                    !positions.contains(&(n - 1)),
                    "seed {seed}: the newest went"
                );
            }
            let left: Vec<DateTime<Utc>> = (0..n)
                .filter(|p| !positions.contains(p))
                .map(|p| times[p])
                .collect();
            assert!(
                select(&left, now, rule, "x").is_empty(),
                "seed {seed}: a second run deletes more"
            );
        }
    }
}
