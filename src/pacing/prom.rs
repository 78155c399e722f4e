//! Pure: a histogram read from Prometheus' text format (what etcd serves on
//! `--listen-metrics-urls`), the difference of two scrapes, and its quantile computed as
//! Prometheus' `histogram_quantile` does (linear inside the bucket); and a plain sample such
//! as `process_cpu_seconds_total`.

/// Cumulative bucket counts by upper bound, ascending; `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
}

/// The histogram `name` in `text`: every `<name>_bucket{…le="…"…} value` line, summed by
/// bound over label sets. `None` when the text has no bucket of it.
pub fn histogram(text: &str, name: &str) -> Option<Histogram> {
    let prefix = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        // A sample may carry a timestamp after the value.
        let Some(count) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    if buckets.is_empty() {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Histogram { buckets })
}

/// The value of the sample `name` without labels (a counter or gauge such as
/// `process_cpu_seconds_total`); `None` when the text has none.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    })
}

impl Histogram {
    /// Observations counted (the `+Inf` bucket).
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// What was observed since `earlier`. A counter that went down (etcd restarted) counts
    /// from zero.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let reset = self.count() < earlier.count();
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = if reset {
                    0.0
                } else {
                    earlier
                        .buckets
                        .iter()
                        .find(|(b, _)| *b == le)
                        .map_or(0.0, |b| b.1)
                };
                (le, (c - before).max(0.0))
            })
            .collect();
        Histogram { buckets }
    }

    /// The `q` quantile in the histogram's unit; `None` without observations. Past the last
    /// finite bound it is that bound, as Prometheus says.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut prev_le, mut prev_c) = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let width = (c - prev_c).max(f64::MIN_POSITIVE);
                return Some(prev_le + (le - prev_le) * (rank - prev_c) / width);
            }
            (prev_le, prev_c) = (le, c);
        }
        Some(prev_le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP etcd_disk_wal_fsync_duration_seconds The latency distributions of fsync called by WAL.
# TYPE etcd_disk_wal_fsync_duration_seconds histogram
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 10
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 50
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 90
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.008\"} 100
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 100
etcd_disk_wal_fsync_duration_seconds_sum 0.2
etcd_disk_wal_fsync_duration_seconds_count 100
etcd_disk_wal_write_bytes_total 12345
process_cpu_seconds_total_other 3
process_cpu_seconds_total 1.2625e+02
";

    #[test]
    fn reads_buckets_and_interpolates_like_prometheus() {
        let h = histogram(SCRAPE, "etcd_disk_wal_fsync_duration_seconds").unwrap();
        assert_eq!(h.count(), 100.0);
        // rank 50 ends exactly at the 2 ms bound; rank 99 is 9/10 into (4 ms, 8 ms].
        assert!((h.quantile(0.5).unwrap() - 0.002).abs() < 1e-12);
        assert!((h.quantile(0.99).unwrap() - 0.0076).abs() < 1e-9);
        assert_eq!(
            histogram(SCRAPE, "etcd_disk_backend_commit_duration_seconds"),
            None
        );
    }

    #[test]
    fn a_plain_sample_by_its_whole_name() {
        assert_eq!(sample(SCRAPE, "process_cpu_seconds_total"), Some(126.25));
        assert_eq!(
            sample(SCRAPE, "etcd_disk_wal_write_bytes_total"),
            Some(12345.0)
        );
        assert_eq!(
            sample(SCRAPE, "process_cpu"),
            None,
            "a prefix is not a name"
        );
        assert_eq!(sample(SCRAPE, "etcd_disk_wal_fsync_duration_seconds"), None);
    }

    #[test]
    fn the_difference_of_two_scrapes_and_a_reset() {
        let before = histogram(SCRAPE, "etcd_disk_wal_fsync_duration_seconds").unwrap();
        let after = Histogram {
            buckets: vec![
                (0.001, 10.0),
                (0.002, 50.0),
                (0.004, 90.0),
                (0.008, 110.0),
                (f64::INFINITY, 120.0),
            ],
        };
        let d = after.since(&before);
        assert_eq!(d.count(), 20.0);
        // Half of the 20 went past the last bound: the quantile is that bound.
        assert_eq!(d.quantile(0.99), Some(0.008));
        assert_eq!(
            before.since(&before).quantile(0.99),
            None,
            "nothing observed"
        );
        let restarted = Histogram {
            buckets: vec![(0.001, 3.0), (f64::INFINITY, 3.0)],
        };
        assert_eq!(restarted.since(&before).count(), 3.0);
    }

    #[test]
    fn label_sets_are_summed_and_junk_is_skipped() {
        let text = "x_bucket{a=\"1\",le=\"0.5\"} 1\nx_bucket{a=\"2\",le=\"0.5\"} 2 1700000000\n\
                    x_bucket{le=\"+Inf\"} 4\nx_bucket{le=\"nope\"} 9\nx_bucket{le=\"1\"} nan?\n";
        let h = histogram(text, "x").unwrap();
        assert_eq!(h.buckets, vec![(0.5, 3.0), (f64::INFINITY, 4.0)]);
    }
}
