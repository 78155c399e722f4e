//! Test-only I/O fail points: `ETCDGUARD_TEST_FAIL_IO=<rule>[,<rule>…]` makes the named I/O
//! sites return EIO (`io::Error::from_raw_os_error(EIO)`) instead of doing their system call,
//! so that `tests/eio.rs` can show what every failure leaves behind. The crash points
//! (`crashpoint.rs`) kill the process; these make one call fail and let the code carry on.
//!
//! A site is named `<where>:<operation>` and is checked right before its system call, with
//! the path it acts on:
//!
//! - the durable primitives of `fsutil`, whoever calls them, are named by the primitive:
//!   `atomic:create|write|fsync|rename|dir-fsync` (`write_atomic`: records, metrics, sidecars on
//!   an `fs` destination, journals; the path is the file being replaced),
//!   `publish:link|unlink|dir-fsync` (`publish_no_replace`: the path is the final name),
//!   `move:rename|dir-fsync` (`rename_durable`, `move_file`), `dir:fsync` (`fsync_dir` called on
//!   its own), `file:create` (`create_private_file`);
//! - a flow's own I/O by the flow: `backup:write|fsync|read-back` (the snapshot's temp file),
//!   `backup:check` (the stream check's unnamed page digests file, in the snapshot directory),
//!   `datadir:write|fsync|rename` (a restored data dir's db copy, WAL and `.snap`, and its
//!   staging directory moved into place), `db:write|fsync` (the bbolt commit of a restore,
//!   no path), `unseal:write|fsync` (a sealed snapshot opened into a file: `decrypt`, a
//!   restore's source), `seal:read|write|fsync` (`encrypt_local`: the checked plain temp file
//!   read, the sealed temp file written), `retry:read` (the local file a pending copy is uploaded again from).
//!
//! A rule is `<site>[#<path part>][@<n> | %<percent>]`: the site's name, or a prefix of names
//! ending in `*` (`backup:*`, `*`); `#` keeps only hits whose path contains that text (the
//! callers of one primitive told apart: `atomic:fsync#records.json`); `@n` fails the n-th
//! matching hit of the process (the default is the first); `%p` fails each matching hit with
//! probability p/100, drawn from `ETCDGUARD_TEST_FAIL_SEED` (one seed, one sequence). Every
//! failure made says so on stderr (`fail point <site>: EIO on <path>`).
//!
//! Unset, a check costs one read of a `OnceLock`: the variable is read once per process. A
//! rule that does not parse panics: a test that meant to fail something must not pass
//! because nothing failed.

use std::io;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// The environment variable with the rules.
pub const ENV: &str = "ETCDGUARD_TEST_FAIL_IO";
/// The seed of the `%` rules.
pub const SEED_ENV: &str = "ETCDGUARD_TEST_FAIL_SEED";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// The n-th matching hit (from 1).
    Nth(u64),
    /// Each matching hit with this probability, in percent.
    Percent(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    site: String,
    path_part: Option<String>,
    when: When,
    hits: u64,
}

impl Rule {
    fn matches(&self, site: &str, path: &str) -> bool {
        let named = match self.site.strip_suffix('*') {
            Some(prefix) => site.starts_with(prefix),
            None => self.site == site,
        };
        named && self.path_part.as_ref().is_none_or(|p| path.contains(p))
    }
}

#[derive(Debug)]
struct Points {
    rules: Vec<Rule>,
    /// xorshift64* state of the `%` rules.
    rng: u64,
}

impl Points {
    /// Counts the hit; true when a rule says it fails.
    fn hit(&mut self, site: &str, path: &str) -> bool {
        let mut fail = false;
        for i in 0..self.rules.len() {
            if !self.rules[i].matches(site, path) {
                continue;
            }
            self.rules[i].hits += 1;
            fail |= match self.rules[i].when {
                When::Nth(n) => self.rules[i].hits == n,
                When::Percent(p) => self.next() % 100 < p,
            };
        }
        fail
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn parse(spec: &str) -> Result<Vec<Rule>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let bad = |why: &str| format!("{ENV}: rule {r:?}: {why}");
            let (rest, when) = if let Some((rest, n)) = r.split_once('@') {
                let n: u64 = n.parse().map_err(|_| bad("@ wants a hit number"))?;
                (rest, When::Nth(n.max(1)))
            } else if let Some((rest, p)) = r.split_once('%') {
                let p: u64 = p.parse().map_err(|_| bad("% wants a percentage"))?;
                (rest, When::Percent(p.min(100)))
            } else {
                (r, When::Nth(1))
            };
            let (site, path_part) = match rest.split_once('#') {
                Some((s, p)) => (s, Some(p.to_string())),
                None => (rest, None),
            };
            if site.is_empty() {
                return Err(bad("no site"));
            }
            Ok(Rule {
                site: site.to_string(),
                path_part,
                when,
                hits: 0,
            })
        })
        .collect()
}

fn load() -> Option<Mutex<Points>> {
    let spec = std::env::var(ENV).ok().filter(|s| !s.trim().is_empty())?;
    let rules = parse(&spec).unwrap_or_else(|e| panic!("{e}"));
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1);
    Some(Mutex::new(Points {
        rules,
        rng: seed | 1,
    }))
}

/// The I/O at `site` on `path` is about to happen: EIO when a rule says it fails here.
pub fn check(site: &str, path: &Path) -> io::Result<()> {
    static POINTS: OnceLock<Option<Mutex<Points>>> = OnceLock::new();
    let Some(points) = POINTS.get_or_init(load) else {
        return Ok(());
    };
    let shown = path.display().to_string();
    let fail = points
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hit(site, &shown);
    if !fail {
        return Ok(());
    }
    eprintln!("fail point {site}: EIO on {shown}");
    Err(io::Error::from_raw_os_error(nix::libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(spec: &str, seed: u64) -> Points {
        Points {
            rules: parse(spec).unwrap(),
            rng: seed | 1,
        }
    }

    #[test]
    fn the_nth_matching_hit_fails_once() {
        let mut p = points("atomic:fsync#records.json@2", 1);
        let hits: Vec<bool> = [
            ("atomic:fsync", "/s/records.json"),
            ("atomic:fsync", "/m/metrics.prom"),
            ("atomic:write", "/s/records.json"),
            ("atomic:fsync", "/s/records.json"),
            ("atomic:fsync", "/s/records.json"),
        ]
        .iter()
        .map(|(s, f)| p.hit(s, f))
        .collect();
        assert_eq!(hits, [false, false, false, true, false]);
    }

    #[test]
    fn a_prefix_names_many_sites_and_the_first_hit_is_the_default() {
        let mut p = points("backup:*", 1);
        assert!(!p.hit("atomic:write", "x"));
        assert!(p.hit("backup:fsync", "x"));
        assert!(!p.hit("backup:write", "x"));
    }

    #[test]
    fn a_rate_fails_about_that_share_and_one_seed_repeats() {
        let run = |seed| {
            let mut p = points("*%25", seed);
            (0..1000).map(|_| p.hit("a:b", "")).collect::<Vec<_>>()
        };
        let (a, b) = (run(7), run(7));
        assert_eq!(a, b);
        let n = a.iter().filter(|f| **f).count();
        assert!((150..350).contains(&n), "{n}");
        assert_ne!(a, run(8));
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in ["x@y", "x%", "@2", "#a"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("").unwrap().is_empty());
    }
}
