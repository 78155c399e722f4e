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
        let trimmed = expression.trim();
        let nickname = trimmed.starts_with('@');
        if !nickname && trimmed.split_whitespace().count() != 5 {
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
        match zone {
            Zone::Utc => self
                .cron
                .find_next_occurrence(&after, false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Zone::Local => self
                .cron
                .find_next_occurrence(&after.with_timezone(&chrono::Local), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Zone::Named(tz) => self
                .cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// The time zone a schedule is evaluated in.
#[derive(Debug, Clone, PartialEq, Eq)]
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
