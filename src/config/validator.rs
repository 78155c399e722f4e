//! The `Validator`: it collects every problem with its file, line, column and field, and
//! checks single values (durations, counts, rates, paths, a retention rule) on the way.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::*;
use crate::retention::{Period, Tiers};

pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) file: Option<&'a Path>,
    pub(super) allow_seconds: bool,
    pub(super) problems: Vec<Problem>,
}

/// A store's `keep` (or `keep_last`): the count, and where it was written.
struct Keep {
    count: Option<usize>,
    span: Option<Range<usize>>,
    /// The name it was written under.
    field: String,
}

impl Validator<'_> {
    pub(super) fn problem(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            file: self.file.map(Path::to_owned),
            position: span.map(|s| line_col(self.text, s.start)),
            field: Some(field.to_string()),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        raw: Option<Spanned<RawDuration>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        let span = raw.span();
        match parse_duration(raw.get_ref()) {
            Ok(d) => d,
            Err(msg) => {
                self.problem(Some(span), field, msg);
                default
            }
        }
    }

    /// A whole number of at least 1.
    pub(super) fn count(&mut self, raw: &Spanned<i64>, field: &str, what: &str) -> Option<usize> {
        match usize::try_from(*raw.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.problem(
                    Some(raw.span()),
                    field,
                    format!("must be at least 1 (got {}): {what}", raw.get_ref()),
                );
                None
            }
        }
    }

    /// `ttl`, the count rules (`keep`/`keep_last`, `keep_hourly` … `keep_monthly`) and
    /// `min_keep` of one destination. With neither `ttl` nor a count rule, the default ttl
    /// applies; `ttl = "forever"` turns the age limit off. `min_keep` defaults to 3, or to
    /// `keep` when that is smaller. The tiers count periods of the schedule's `zone`.
    pub(super) fn retention(
        &mut self,
        section: &str,
        ttl: Option<Spanned<RawDuration>>,
        counts: RawCounts,
        min_keep: Option<Spanned<i64>>,
        default_ttl: Duration,
        zone: Zone,
    ) -> Rule {
        let RawCounts {
            keep,
            keep_last,
            hourly,
            daily,
            weekly,
            monthly,
        } = counts;
        let keep = self.keep(section, keep, keep_last);
        let tiers = self.tiers(section, hourly, daily, weekly, monthly);
        let ttl = match ttl {
            None if keep.span.is_some() || tiers.any() => None,
            None => Some(default_ttl),
            Some(raw) => match raw.get_ref() {
                RawDuration::Text(t) if t.trim() == "forever" => None,
                _ => Some(self.duration(Some(raw), &format!("{section}.ttl"), default_ttl)),
            },
        };
        let min_keep = self.min_keep(section, min_keep, &keep);
        Rule {
            ttl,
            keep: keep.count,
            tiers,
            zone,
            min_keep,
        }
    }

    /// `keep`, or `keep_last`, another name for it (not both).
    fn keep(
        &mut self,
        section: &str,
        keep: Option<Spanned<i64>>,
        keep_last: Option<Spanned<i64>>,
    ) -> Keep {
        let (raw, field) = match (keep, keep_last) {
            (Some(k), Some(l)) => {
                self.problem(
                    Some(l.span()),
                    &format!("{section}.keep_last"),
                    format!(
                        "keep_last is another name for keep (set to {} here): set one of them",
                        k.get_ref()
                    ),
                );
                (Some(k), format!("{section}.keep"))
            }
            (Some(k), None) => (Some(k), format!("{section}.keep")),
            (None, Some(l)) => (Some(l), format!("{section}.keep_last")),
            (None, None) => (None, format!("{section}.keep")),
        };
        let span = raw.as_ref().map(Spanned::span);
        let count =
            raw.and_then(|k| self.count(&k, &field, "the number of newest good snapshots kept"));
        Keep { count, span, field }
    }

    /// `keep_hourly`, `keep_daily`, `keep_weekly` and `keep_monthly`.
    fn tiers(
        &mut self,
        section: &str,
        hourly: Option<Spanned<i64>>,
        daily: Option<Spanned<i64>>,
        weekly: Option<Spanned<i64>>,
        monthly: Option<Spanned<i64>>,
    ) -> Tiers {
        let mut tier = |raw: Option<Spanned<i64>>, p: Period| {
            raw.and_then(|r| {
                self.count(
                    &r,
                    &format!("{section}.{}", p.field()),
                    "how many periods keep their newest good snapshot",
                )
            })
        };
        Tiers {
            hourly: tier(hourly, Period::Hour),
            daily: tier(daily, Period::Day),
            weekly: tier(weekly, Period::Week),
            monthly: tier(monthly, Period::Month),
        }
    }

    /// `min_keep`: 3 by default, or `keep` when that is smaller; never more than `keep`.
    fn min_keep(&mut self, section: &str, raw: Option<Spanned<i64>>, keep: &Keep) -> usize {
        let Some(raw) = raw else {
            return keep.count.map_or(3, |k| k.min(3));
        };
        let n = self
            .count(
                &raw,
                &format!("{section}.min_keep"),
                "the number of newest good snapshots that are never deleted",
            )
            .unwrap_or(1);
        if keep.count.is_some_and(|k| k < n) {
            self.problem(
                keep.span.clone(),
                &keep.field,
                format!(
                    "keep ({}) must be at least min_keep ({n}): min_keep snapshots are never \
                     deleted",
                    keep.count.unwrap_or(0)
                ),
            );
        }
        n
    }

    /// A rate such as `"50MiB/s"`, in bytes per second.
    pub(super) fn rate(&mut self, raw: Option<Spanned<String>>, field: &str) -> Option<u64> {
        let r = raw?;
        let parsed = r
            .get_ref()
            .trim()
            .strip_suffix("/s")
            .ok_or_else(|| "must be a rate such as \"50MiB/s\"".to_string())
            .and_then(|n| parse_size(&RawSize::Text(n.to_string())));
        match parsed {
            Ok(b) => Some(b as u64),
            Err(msg) => {
                self.problem(Some(r.span()), field, msg);
                None
            }
        }
    }

    pub(super) fn path(
        &mut self,
        raw: Option<Spanned<PathBuf>>,
        field: &str,
        default: &Path,
    ) -> PathBuf {
        let Some(raw) = raw else {
            return default.to_owned();
        };
        let span = raw.span();
        let p = raw.into_inner();
        if !p.is_absolute() {
            self.problem(
                Some(span),
                field,
                format!(
                    "must be an absolute path (got {:?}); the daemon's working directory is /",
                    p.display().to_string()
                ),
            );
        }
        p
    }
}

fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    let d = match raw {
        RawDuration::Seconds(s) if *s <= 0 => {
            return Err(format!(
                "must be a positive duration (got {s}); write seconds as a positive integer \
                 or a string such as \"7d\" or \"12h\""
            ))
        }
        RawDuration::Seconds(s) => Duration::from_secs(*s as u64),
        RawDuration::Text(t) => {
            let trimmed = t.trim();
            if trimmed.starts_with('-') {
                return Err(format!("must be a positive duration (got {t:?})"));
            }
            humantime::parse_duration(trimmed).map_err(|e| {
                format!(
                    "{t:?} is not a duration ({e}); use a string such as \"90d\", \"12h\", \
                     \"30m\" or integer seconds"
                )
            })?
        }
    };
    if d.is_zero() {
        return Err("must be a positive duration (got 0)".to_string());
    }
    Ok(d)
}
