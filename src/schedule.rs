//! Pure schedule logic: a 5-field cron expression (or `@hourly`, `@daily`, `@weekly`, …)
//! evaluated in a configured time zone. No clocks are read here; callers pass `now`.

use std::fmt;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
}

impl Schedule {
    /// Parses a standard 5-field expression (minute hour day-of-month month day-of-week) or a
    /// nickname. Six-field (seconds) expressions are refused: slots are whole minutes.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        Self::parse_with(expression, false)
    }

    /// As [`Schedule::parse`]; with `allow_seconds`, a 6-field expression with a leading
    /// seconds field is accepted too. Only tests use that (`ETCDGUARD_TEST_SECONDS_SCHEDULE`),
    /// to exercise the daemon without waiting for whole minutes.
    pub fn parse_with(expression: &str, allow_seconds: bool) -> Result<Schedule, String> {
        let trimmed = expression.trim();
        let nickname = trimmed.starts_with('@');
        let fields = trimmed.split_whitespace().count();
        if allow_seconds && fields == 6 {
            let cron = CronParser::builder()
                .seconds(Seconds::Required)
                .year(Year::Disallowed)
                .build()
                .parse(trimmed)
                .map_err(|e| format!("{expression:?} is not a valid cron expression: {e}"))?;
            return Ok(Schedule {
                expression: trimmed.to_string(),
                cron,
            });
        }
        if !nickname && fields != 5 {
            return Err(format!(
                "{expression:?} is not a 5-field cron expression \
                 (minute hour day-of-month month day-of-week, e.g. \"0 */6 * * *\"), \
                 nor one of @hourly, @daily, @weekly, @monthly, @yearly"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| format!("{expression:?} is not a valid cron expression: {e}"))?;
        Ok(Schedule {
            expression: trimmed.to_string(),
            cron,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first slot strictly after `after`, evaluated in `zone`.
    pub fn next_after(&self, after: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        self.find(after, zone, false, true)
    }

    /// The latest slot at or before `at`, evaluated in `zone`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        self.find(at, zone, true, false)
    }

    fn find(
        &self,
        t: DateTime<Utc>,
        zone: &Zone,
        inclusive: bool,
        forward: bool,
    ) -> Option<DateTime<Utc>> {
        fn go<Tz: chrono::TimeZone>(
            cron: &Cron,
            t: DateTime<Tz>,
            inclusive: bool,
            forward: bool,
        ) -> Option<DateTime<Utc>> {
            let r = if forward {
                cron.find_next_occurrence(&t, inclusive)
            } else {
                cron.find_previous_occurrence(&t, inclusive)
            };
            r.ok().map(|x| x.with_timezone(&Utc))
        }
        match zone {
            Zone::Utc => go(&self.cron, t, inclusive, forward),
            Zone::Local => go(
                &self.cron,
                t.with_timezone(&chrono::Local),
                inclusive,
                forward,
            ),
            Zone::Named(tz) => go(&self.cron, t.with_timezone(tz), inclusive, forward),
        }
    }
}

/// A clock that went back by more than this is treated as having been wrong before: the
/// remembered slot is dropped (with an error in the log) instead of waiting for the clock to
/// catch up with it, which could stop backups for a long time.
pub const MAX_CLOCK_BACKSTEP: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A slot this late (or less) is on time; later than this it is a catch-up.
pub const ON_TIME_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// The decision of one loop iteration. Pure: the daemon calls it after every wake-up with the
/// wall clock, so suspend, resume and clock jumps never skip or repeat a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The slot to handle now: the latest one in (last handled, now]. Many missed slots give
    /// one due slot, never a burst.
    pub due: Option<DateTime<Utc>>,
    /// True when `due` is more than [`ON_TIME_GRACE`] late (missed while down or suspended).
    pub late: bool,
    /// The slot handled after this tick (to persist).
    pub last_handled: DateTime<Utc>,
    /// The first slot after both `now` and the last handled one: when to wake up for it.
    pub next: Option<DateTime<Utc>>,
    /// The remembered slot was more than [`MAX_CLOCK_BACKSTEP`] in the future and was reset.
    pub clock_went_back: bool,
}

pub fn tick(
    schedule: &Schedule,
    zone: &Zone,
    last_handled: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Tick {
    let clock_went_back = last_handled - now > MAX_CLOCK_BACKSTEP;
    let last = if clock_went_back { now } else { last_handled };
    let due = schedule
        .latest_at_or_before(now, zone)
        .filter(|slot| *slot > last);
    let handled = due.unwrap_or(last);
    Tick {
        due,
        late: due.is_some_and(|slot| now - slot > ON_TIME_GRACE),
        last_handled: handled,
        next: schedule.next_after(handled.max(now), zone),
        clock_went_back,
    }
}

/// The time zone a schedule is evaluated in (and retention's hours, days, weeks and months).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Utc,
    /// The host's zone (`/etc/localtime`).
    Local,
    Named(chrono_tz::Tz),
}

impl Zone {
    pub fn parse(name: &str) -> Result<Zone, String> {
        match name {
            "UTC" | "utc" | "Etc/UTC" => Ok(Zone::Utc),
            "local" => Ok(Zone::Local),
            other => other
                .parse::<chrono_tz::Tz>()
                .map(Zone::Named)
                .map_err(|_| {
                    format!(
                        "{other:?} is not a known IANA time zone (e.g. \"UTC\", \
                     \"Europe/Berlin\"), nor \"local\""
                    )
                }),
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Utc => f.write_str("UTC"),
            Zone::Local => f.write_str("local"),
            Zone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_and_nicknames() {
        for ok in [
            "0 */6 * * *",
            "@hourly",
            "@daily",
            "@weekly",
            "*/5 * * * 1-5",
        ] {
            Schedule::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["0 0 */6 * * *", "61 * * * *", "* * *", "", "@sometimes"] {
            assert!(Schedule::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn next_in_zone() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        let z = Zone::parse("Europe/Berlin").unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(utc("2026-01-10T12:00:00Z"), &z),
            Some(utc("2026-01-11T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-10T12:00:00Z"), &Zone::Utc),
            Some(utc("2026-01-11T02:00:00Z"))
        );
    }

    /// A fake clock walking `now` through `steps`, feeding each tick's `last_handled` into the
    /// next, as the daemon does. Returns the due slots and whether each was late.
    fn simulate(
        expr: &str,
        zone: &str,
        start_handled: &str,
        steps: &[&str],
    ) -> Vec<(DateTime<Utc>, bool)> {
        let s = Schedule::parse(expr).unwrap();
        let z = Zone::parse(zone).unwrap();
        let mut last = utc(start_handled);
        let mut out = Vec::new();
        for now in steps {
            let t = tick(&s, &z, last, utc(now));
            if let Some(d) = t.due {
                out.push((d, t.late));
            }
            last = t.last_handled;
        }
        out
    }

    /// Every `minutes` from `from` to `to`, as RFC 3339 strings.
    fn every(from: &str, to: &str, minutes: i64) -> Vec<String> {
        let (mut t, end) = (utc(from), utc(to));
        let mut v = Vec::new();
        while t <= end {
            v.push(t.to_rfc3339());
            t += chrono::Duration::minutes(minutes);
        }
        v
    }

    fn run_every(
        expr: &str,
        zone: &str,
        from: &str,
        to: &str,
        minutes: i64,
    ) -> Vec<(DateTime<Utc>, bool)> {
        let steps = every(from, to, minutes);
        let refs: Vec<&str> = steps.iter().map(String::as_str).collect();
        simulate(expr, zone, from, &refs)
    }

    #[test]
    fn steady_ticks_fire_each_slot_once_on_time() {
        let due = run_every(
            "0 * * * *",
            "UTC",
            "2026-05-01T10:00:00Z",
            "2026-05-01T14:59:00Z",
            1,
        );
        let slots: Vec<_> = due.iter().map(|d| d.0).collect();
        assert_eq!(
            slots,
            ["11", "12", "13", "14"]
                .map(|h| utc(&format!("2026-05-01T{h}:00:00Z")))
                .to_vec()
        );
        assert!(due.iter().all(|d| !d.1), "woken at the slot: on time");
    }

    #[test]
    fn dst_spring_forward_fixed_time_runs_once_right_after_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST. 02:30 does not exist that day;
        // croner runs a fixed-time job at the first valid minute after the gap (03:00 CEST =
        // 01:00 UTC), once.
        let due = run_every(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            "2026-03-30T12:00:00Z",
            1,
        );
        let slots: Vec<_> = due.iter().map(|d| d.0).collect();
        assert_eq!(
            slots,
            [utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z")]
        );
    }

    #[test]
    fn dst_spring_forward_interval_skips_the_gap() {
        // "*/30 * * * *" in Berlin: 02:00 and 02:30 local do not exist on 2026-03-29.
        let due = run_every(
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:30:00Z",
            1,
        );
        let slots: Vec<_> = due.iter().map(|d| d.0).collect();
        // 00:30 UTC = 01:30 CET, then 01:00 UTC = 03:00 CEST, 01:30 UTC = 03:30 CEST.
        assert_eq!(
            slots,
            [
                utc("2026-03-29T00:30:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:30:00Z")
            ]
        );
    }

    #[test]
    fn dst_fall_back_fixed_time_runs_once() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice (00:30
        // and 01:30 UTC). A fixed-time job runs at the first one only.
        let due = run_every(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            "2026-10-26T12:00:00Z",
            1,
        );
        let slots: Vec<_> = due.iter().map(|d| d.0).collect();
        assert_eq!(
            slots,
            [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
    }

    #[test]
    fn dst_fall_back_interval_runs_in_both_passes() {
        let due = run_every(
            "0 * * * *",
            "Europe/Berlin",
            "2026-10-24T23:30:00Z",
            "2026-10-25T02:30:00Z",
            1,
        );
        let slots: Vec<_> = due.iter().map(|d| d.0).collect();
        // Local 02:00 CEST (00:00 UTC), 02:00 CET (01:00 UTC), 03:00 CET (02:00 UTC): real
        // hours, none skipped, none doubled.
        assert_eq!(
            slots,
            [
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T01:00:00Z"),
                utc("2026-10-25T02:00:00Z")
            ]
        );
    }

    #[test]
    fn clock_jump_forward_gives_one_late_slot() {
        let due = simulate(
            "0 * * * *",
            "UTC",
            "2026-05-01T10:00:00Z",
            &[
                "2026-05-01T10:30:00Z",
                "2026-05-01T15:20:00Z",
                "2026-05-01T15:50:00Z",
                "2026-05-01T16:00:30Z",
            ],
        );
        assert_eq!(
            due,
            [
                (utc("2026-05-01T15:00:00Z"), true),
                (utc("2026-05-01T16:00:00Z"), false)
            ]
        );
    }

    #[test]
    fn clock_jump_back_never_repeats_a_slot() {
        let s = Schedule::parse("0 * * * *").unwrap();
        let due = simulate(
            "0 * * * *",
            "UTC",
            "2026-05-01T11:00:00Z",
            &[
                "2026-05-01T12:00:10Z", // 12:00 handled
                "2026-05-01T11:40:00Z", // clock set back 20 minutes
                "2026-05-01T11:59:00Z",
                "2026-05-01T12:00:05Z", // 12:00 again on the wall clock: not repeated
                "2026-05-01T13:00:01Z",
            ],
        );
        assert_eq!(
            due,
            [
                (utc("2026-05-01T12:00:00Z"), false),
                (utc("2026-05-01T13:00:00Z"), false)
            ]
        );
        // While the clock is behind, the next wake-up is after the handled slot.
        let t = tick(
            &s,
            &Zone::Utc,
            utc("2026-05-01T12:00:00Z"),
            utc("2026-05-01T11:40:00Z"),
        );
        assert_eq!(t.next, Some(utc("2026-05-01T13:00:00Z")));
        assert!(!t.clock_went_back);
    }

    #[test]
    fn suspend_for_a_day_gives_one_catch_up() {
        let due = simulate(
            "0 */6 * * *",
            "UTC",
            "2026-05-01T12:00:00Z",
            &[
                "2026-05-01T13:00:00Z",
                "2026-05-02T13:30:00Z",
                "2026-05-02T14:00:00Z",
            ],
        );
        assert_eq!(due, [(utc("2026-05-02T12:00:00Z"), true)]);
    }

    #[test]
    fn clock_far_in_the_past_resets_instead_of_stalling() {
        let s = Schedule::parse("0 * * * *").unwrap();
        // The slot remembered is a year ahead of the clock: the clock was wrong before.
        let t = tick(
            &s,
            &Zone::Utc,
            utc("2027-05-01T12:00:00Z"),
            utc("2026-05-01T12:30:00Z"),
        );
        assert!(t.clock_went_back);
        assert_eq!(t.due, None);
        assert_eq!(t.next, Some(utc("2026-05-01T13:00:00Z")));
    }

    #[test]
    fn seconds_only_when_allowed() {
        assert!(Schedule::parse("*/5 * * * * *").is_err());
        let s = Schedule::parse_with("*/5 * * * * *", true).unwrap();
        let t = utc("2026-05-01T12:00:01Z");
        assert_eq!(
            s.next_after(t, &Zone::Utc),
            Some(utc("2026-05-01T12:00:05Z"))
        );
    }

    #[test]
    fn next_is_strictly_after() {
        let s = Schedule::parse("@hourly").unwrap();
        let t = utc("2026-03-01T10:00:00Z");
        assert_eq!(
            s.next_after(t, &Zone::Utc),
            Some(utc("2026-03-01T11:00:00Z"))
        );
    }
}
