//! etcd minor versions and the rules for putting a snapshot of one version under an etcd of
//! another. Pure: one function decides for `restore` and `restore-datadir` alike.
//!
//! What the rules rest on (etcd 3.6/3.7 research, checked against real servers in
//! `tests/engine.rs`, table in `docs/etcd-versions.md`):
//! - etcd ≥ 3.6 refuses a db whose `meta/storageVersion` is above its own minor ("version
//!   3.7.0 is not supported") and panics when `cluster/clusterVersion` is ("invalid
//!   downgrade"): newer data under an older etcd never starts;
//! - upgrades that skip a minor (3.5 → 3.7) are not supported by etcd, though a 3.7 server
//!   accepts the data: allowed with `--force` only, and said loudly;
//! - the same minor or the next one starts.

use serde::Serialize;

/// An etcd minor version etcdguard reads snapshots of and builds data dirs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Minor {
    #[serde(rename = "3.5")]
    V3_5,
    #[serde(rename = "3.6")]
    V3_6,
    #[serde(rename = "3.7")]
    V3_7,
}

impl std::fmt::Display for Minor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Minor::V3_5 => "3.5",
            Minor::V3_6 => "3.6",
            Minor::V3_7 => "3.7",
        })
    }
}

/// `major.minor` of a version string ("3.6.0", "3.6", "v3.7.3"). Pure.
pub fn major_minor(s: &str) -> Option<(u64, u64)> {
    let s = s.trim().trim_start_matches('v');
    let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

impl Minor {
    pub fn of(major: u64, minor: u64) -> Option<Minor> {
        match (major, minor) {
            (3, 5) => Some(Minor::V3_5),
            (3, 6) => Some(Minor::V3_6),
            (3, 7) => Some(Minor::V3_7),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<Minor> {
        major_minor(s).and_then(|(a, b)| Minor::of(a, b))
    }

    /// The supported minor closest to `major.minor`: itself when supported, 3.5 below, 3.7
    /// above. For picking an encoding when the rules allowed an unsupported version. Pure.
    pub fn nearest(major: u64, minor: u64) -> Minor {
        Minor::of(major, minor).unwrap_or(if (major, minor) < (3, 5) {
            Minor::V3_5
        } else {
            Minor::V3_7
        })
    }

    pub fn minor_number(self) -> u64 {
        match self {
            Minor::V3_5 => 5,
            Minor::V3_6 => 6,
            Minor::V3_7 => 7,
        }
    }

    /// The version a snapshot's data belongs to: its storage version (etcd ≥ 3.6), else its
    /// cluster version, else none (a snapshot of etcd 3.4 or older, or of a cluster that never
    /// set one). Pure.
    pub fn of_snapshot(
        storage_version: Option<&str>,
        cluster_version: Option<&str>,
    ) -> Option<(u64, u64)> {
        storage_version
            .and_then(major_minor)
            .or_else(|| cluster_version.and_then(major_minor))
    }

    /// Whether etcd of this minor writes raft messages with protobuf-go (3.7), which leaves out
    /// the zero fields gogo/protobuf (3.5, 3.6) writes.
    pub fn omits_zero_raft_fields(self) -> bool {
        self >= Minor::V3_7
    }

    /// The `.snap` and `meta` semantics: etcdutl ≥ 3.6 counts live keys in `status`.
    pub fn counts_live_keys(self) -> bool {
        self >= Minor::V3_6
    }
}

/// What the rules say about one snapshot → target pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compat {
    /// Supported; the sentence says what was compared.
    Pass(String),
    /// Allowed only with `--force`; the sentence says why it is risky. With force given, the
    /// caller warns with it.
    NeedsForce(String),
    /// Never: the sentence says which versions, why, and what to do instead.
    Refuse(String),
}

/// The version rule for restoring a snapshot whose data is `snapshot` (major, minor; `None`
/// when it records none) for an etcd `target` (major, minor). Pure.
pub fn restore_compat(snapshot: Option<(u64, u64)>, target: (u64, u64)) -> Compat {
    let (tmaj, tmin) = target;
    let t = format!("{tmaj}.{tmin}");
    if Minor::of(tmaj, tmin).is_none() {
        return Compat::NeedsForce(format!(
            "the target etcd is {t}; etcdguard builds data dirs for etcd 3.5, 3.6 and 3.7 (an \
             etcd {t} may refuse the data dir: restore with that version's etcdutl instead)"
        ));
    }
    let Some((smaj, smin)) = snapshot else {
        return Compat::Pass(format!(
            "target etcd {t}; the snapshot records no version (etcd 3.4 or older, or a cluster \
             that never set one)"
        ));
    };
    let s = format!("{smaj}.{smin}");
    if (smaj, smin) > (tmaj, tmin) {
        return Compat::Refuse(format!(
            "the snapshot holds etcd {s} data and the target etcd is {t}: etcd {t} refuses \
             (or panics on) data of a newer version. Restore onto an etcd {s} image (or newer), \
             or first downgrade the snapshot's cluster online (`etcdctl downgrade`) and take \
             a new snapshot"
        ));
    }
    if smaj == tmaj && tmin > smin + 1 {
        return Compat::NeedsForce(format!(
            "the snapshot holds etcd {s} data and the target etcd is {t}: that skips a minor \
             version, which etcd does not support (upgrade through {tmaj}.{} first: restore onto \
             a {tmaj}.{} image, let the cluster version rise, take a new snapshot); --force \
             restores anyway",
            smin + 1,
            smin + 1
        ));
    }
    if smaj != tmaj {
        return Compat::NeedsForce(format!(
            "the snapshot holds etcd {s} data and the target etcd is {t}: a major version \
             apart; --force restores anyway"
        ));
    }
    Compat::Pass(format!("snapshot data {s} for etcd {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(c: Compat) -> &'static str {
        match c {
            Compat::Pass(_) => "pass",
            Compat::NeedsForce(_) => "force",
            Compat::Refuse(_) => "refuse",
        }
    }

    #[test]
    fn the_matrix() {
        let cases = [
            ((3, 5), (3, 5), "pass"),
            ((3, 5), (3, 6), "pass"),
            ((3, 6), (3, 6), "pass"),
            ((3, 6), (3, 7), "pass"),
            ((3, 7), (3, 7), "pass"),
            ((3, 5), (3, 7), "force"),
            ((3, 4), (3, 6), "force"),
            ((3, 7), (3, 6), "refuse"),
            ((3, 6), (3, 5), "refuse"),
            ((3, 7), (3, 5), "refuse"),
            ((3, 5), (3, 4), "force"),
            ((3, 5), (3, 8), "force"),
        ];
        for (snap, target, want) in cases {
            assert_eq!(
                kind(restore_compat(Some(snap), target)),
                want,
                "{snap:?} → {target:?}"
            );
        }
        assert_eq!(kind(restore_compat(None, (3, 6))), "pass");
    }

    #[test]
    fn refusals_say_versions_and_what_to_do() {
        let Compat::Refuse(m) = restore_compat(Some((3, 7)), (3, 6)) else {
            panic!()
        };
        assert!(m.contains("3.7") && m.contains("3.6") && m.contains("Restore onto"));
        let Compat::NeedsForce(m) = restore_compat(Some((3, 5)), (3, 7)) else {
            panic!()
        };
        assert!(m.contains("skips a minor") && m.contains("3.6"));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(Minor::parse("3.6.16"), Some(Minor::V3_6));
        assert_eq!(Minor::parse("v3.7.3"), Some(Minor::V3_7));
        assert_eq!(Minor::parse("3.4.23"), None);
        assert_eq!(Minor::nearest(3, 4), Minor::V3_5);
        assert_eq!(Minor::nearest(3, 6), Minor::V3_6);
        assert_eq!(Minor::nearest(3, 8), Minor::V3_7);
        assert_eq!(
            Minor::of_snapshot(None, Some("3.5.0")),
            Some((3, 5)),
            "3.5 has no storage version"
        );
        assert_eq!(
            Minor::of_snapshot(Some("3.7.0"), Some("3.7.0")),
            Some((3, 7))
        );
    }
}
