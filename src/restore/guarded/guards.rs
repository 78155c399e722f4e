//! The guards of a restore (restore-spec E.5): every check that must pass before anything on
//! the node changes. Each is one pure function of what `prepare` found, so each is unit-tested
//! here; `prepare` reads the files, the snapshot and the live cluster, then asks them.

use std::path::Path;

use crate::etcddb::{SnapshotFileReport, Trailer};
use crate::etcdversion::{self, Compat, Minor};
use crate::kubeadm::RewriteMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One guard and what it found.
#[derive(Debug, Clone)]
pub struct Guard {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn guard(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Guard {
    Guard {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// The data dir, manifests and PKI are root's.
pub fn running_as_root(is_root: bool) -> Guard {
    if is_root {
        guard("running as root", Verdict::Pass, "yes")
    } else {
        guard(
            "running as root",
            Verdict::Fail,
            "no: the data dir, manifests and PKI are root's",
        )
    }
}

/// The manifest was read and names a member (reading it is what can fail, before this).
pub fn etcd_manifest(path: &Path, member: &str, image: &str) -> Guard {
    guard(
        "etcd manifest",
        Verdict::Pass,
        format!("{}: member {member:?}, image {image}", path.display()),
    )
}

/// A second pod named etcd in the manifest dir (`others`) would be started beside ours.
pub fn one_etcd_pod(others: &[String], manifest_dir: &Path) -> Guard {
    if others.is_empty() {
        guard(
            "one etcd pod",
            Verdict::Pass,
            "no other manifest defines a pod named etcd",
        )
    } else {
        guard(
            "one etcd pod",
            Verdict::Fail,
            format!(
                "{} in {} also define a pod named etcd; move them out of the manifest dir",
                others.join(", "),
                manifest_dir.display()
            ),
        )
    }
}

/// Where the data dir is, as the etcd-data volume says.
pub fn data_dir(path: &Path) -> Guard {
    guard(
        "data dir",
        Verdict::Pass,
        format!("{} (host path of the etcd-data volume)", path.display()),
    )
}

/// The snapshot verified; it must be an etcd database, and alarms or an unchecked trailer are
/// worth a warning.
pub fn snapshot_integrity(snapshot: &Path, report: &SnapshotFileReport) -> Guard {
    let mut detail = format!(
        "{}: sha256 {}, revision {}, {} keys, hash {:x}",
        snapshot.display(),
        match report.trailer {
            Trailer::Ok => "verified",
            Trailer::NotChecked => "NOT CHECKED (--skip-hash-check)",
            Trailer::Absent => "ABSENT (--skip-hash-check)",
        },
        report.revision,
        report.total_key,
        report.hash
    );
    let has_buckets = ["key", "meta"]
        .iter()
        .all(|b| report.buckets.iter().any(|x| x == b));
    let mut v = Verdict::Pass;
    if !has_buckets || report.consistent_index.is_none() {
        v = Verdict::Fail;
        detail.push_str("; not an etcd database (no key/meta buckets or consistent_index)");
    } else if report.alarms > 0 || report.trailer != Trailer::Ok {
        v = Verdict::Warn;
        if report.alarms > 0 {
            detail.push_str(&format!(
                "; {} alarm(s) recorded: disarm them after the restore",
                report.alarms
            ));
        }
    }
    guard("snapshot integrity", v, detail)
}

/// Version compatibility of the snapshot and the etcd image (restore-spec E.5, guard 3), by
/// the one rule in [`etcdversion::restore_compat`]; also the etcd minor the data dir is built
/// for. Pure.
pub fn version_guard(
    image: Option<(u64, u64, u64)>,
    storage: Option<&str>,
    cluster: Option<&str>,
    force: bool,
) -> (Guard, Option<Minor>) {
    let name = "version compatibility";
    let Some((imaj, imin, ipatch)) = image else {
        return (
            guard(
                name,
                Verdict::Warn,
                "the etcd image tag does not say its version; cannot compare (the data dir is \
                 built for the snapshot's own version)",
            ),
            None,
        );
    };
    let img = format!("{imaj}.{imin}.{ipatch}");
    // Outside 3.5..=3.7 (with --force only) the nearest encoding we know is used.
    let target = Some(Minor::nearest(imaj, imin));
    let snapshot = Minor::of_snapshot(storage, cluster);
    let g = match etcdversion::restore_compat(snapshot, (imaj, imin)) {
        Compat::Pass(why) => guard(name, Verdict::Pass, format!("image {img}: {why}")),
        Compat::NeedsForce(why) if force => guard(
            name,
            Verdict::Warn,
            format!("image {img}: {why} (--force given)"),
        ),
        Compat::NeedsForce(why) => guard(name, Verdict::Fail, format!("image {img}: {why}")),
        Compat::Refuse(why) => guard(name, Verdict::Fail, format!("image {img}: {why}")),
    };
    (g, target)
}

/// etcd 3.6's names for the `--experimental-*` flags kubeadm wrote (etcd's `deprecatedFlags`);
/// etcd 3.7 removed the old names and exits on them.
const EXPERIMENTAL_REPLACEMENTS: &[(&str, &str)] = &[
    (
        "experimental-initial-corrupt-check",
        "--feature-gates=InitialCorruptCheck=true",
    ),
    (
        "experimental-compact-hash-check-enabled",
        "--feature-gates=CompactHashCheck=true",
    ),
    (
        "experimental-watch-progress-notify-interval",
        "--watch-progress-notify-interval",
    ),
    ("experimental-corrupt-check-time", "--corrupt-check-time"),
    (
        "experimental-snapshot-catchup-entries",
        "--snapshot-catchup-entries",
    ),
    (
        "experimental-bootstrap-defrag-threshold-megabytes",
        "--bootstrap-defrag-threshold-megabytes",
    ),
];

/// The manifest's flags against its image: the restore changes only the `--initial-cluster*`
/// flags, so a flag the image's etcd rejects would stop the restored member from starting.
/// etcd 3.7 exits on every `--experimental-*` flag (refused, with the replacements kubeadm 1.37
/// writes); 3.6 accepts them deprecated (a warning). Pure.
pub fn flags_guard<'a>(
    image: Option<(u64, u64, u64)>,
    flags: impl Iterator<Item = &'a str>,
) -> Guard {
    let name = "manifest flags";
    let experimental: Vec<&str> = flags.filter(|f| f.starts_with("experimental-")).collect();
    if experimental.is_empty() {
        return guard(name, Verdict::Pass, "no flag the image's etcd rejects");
    }
    let listed = experimental
        .iter()
        .map(
            |f| match EXPERIMENTAL_REPLACEMENTS.iter().find(|(o, _)| o == f) {
                Some((_, new)) => format!("--{f} (now {new})"),
                None => format!("--{f}"),
            },
        )
        .collect::<Vec<_>>()
        .join(", ");
    match image {
        Some((3, minor, _)) if minor >= 7 => guard(
            name,
            Verdict::Fail,
            format!(
                "the image is etcd 3.{minor}, which exits on {listed}: replace them in etcd.yaml \
                 as kubeadm 1.37 writes it, then restore"
            ),
        ),
        Some((3, 6, _)) => guard(
            name,
            Verdict::Warn,
            format!("etcd 3.6 accepts {listed} but they are deprecated; etcd 3.7 rejects them"),
        ),
        _ => guard(
            name,
            Verdict::Pass,
            format!("{listed}: valid for this image"),
        ),
    }
}

/// The plan resolved (a plan that does not resolve is a usage error before this).
pub fn restore_plan(members: usize, name: &str) -> Guard {
    guard(
        "restore plan",
        Verdict::Pass,
        format!(
            "{members} member(s); this member {name} is in --initial-cluster with its advertised \
             peer URL"
        ),
    )
}

/// The peer certificate `cert` must name every host of this member's peer URLs (`hosts`), or
/// the members cannot talk after the restore; alone, a member does not need it.
pub fn peer_certificate(
    cert: &Path,
    sans: Result<Vec<String>, String>,
    hosts: &[String],
    members: usize,
) -> Guard {
    let name = "peer certificate";
    let sans = match sans {
        Ok(s) => s,
        Err(e) => {
            return guard(
                name,
                Verdict::Warn,
                format!("cannot read {}: {e}", cert.display()),
            )
        }
    };
    let missing: Vec<&str> = hosts
        .iter()
        .filter(|h| !sans.contains(h))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return guard(
            name,
            Verdict::Pass,
            format!("{} covers this member's peer URL", cert.display()),
        );
    }
    guard(
        name,
        if members > 1 {
            Verdict::Fail
        } else {
            Verdict::Warn
        },
        format!(
            "{} has no SAN for {}: peers will fail TLS",
            cert.display(),
            missing.join(", ")
        ),
    )
}

/// What the new data dir needs: the db, a WAL segment, 10 % and a few pages.
pub fn space_needed(report: &SnapshotFileReport) -> u64 {
    report.total_size + 64_000_000 + report.total_size / 10 + 64 * u64::from(report.page_size)
}

/// `free` is (bytes, inodes) available at `dir`, the data dir's parent.
pub fn disk_space(dir: &Path, need: u64, free: Result<(u64, u64), String>) -> Guard {
    let need_mb = need.div_ceil(1_000_000);
    match free {
        Ok((free, inodes)) if free >= need && inodes >= 64 => guard(
            "disk space",
            Verdict::Pass,
            format!(
                "{} MB free at {}, {need_mb} MB needed",
                free / 1_000_000,
                dir.display()
            ),
        ),
        Ok((free, inodes)) => guard(
            "disk space",
            Verdict::Fail,
            format!(
                "{} MB and {inodes} inodes free at {}, {need_mb} MB needed: free space first",
                free / 1_000_000,
                dir.display()
            ),
        ),
        Err(e) => guard("disk space", Verdict::Fail, format!("cannot tell: {e}")),
    }
}

/// What the etcd at the manifest's client URL said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Nothing answers.
    Silent,
    /// It accepts connections but does not answer.
    Mute(String),
    /// It answers; `members` are its member names.
    Answers { quorum: bool, members: String },
    /// The TLS material to ask it with is unusable.
    NoTls(String),
}

/// A cluster that answers with quorum would be thrown away by a restore.
pub fn live_cluster(endpoint: &str, live: &Live, force: bool, no_wait: bool) -> Guard {
    let name = "live cluster";
    match live {
        Live::Silent => guard(
            name,
            Verdict::Pass,
            format!("etcd does not answer at {endpoint}"),
        ),
        Live::Mute(err) => guard(
            name,
            Verdict::Warn,
            format!("etcd at {endpoint} accepts connections but does not answer: {err}"),
        ),
        Live::Answers {
            quorum: false,
            members,
        } => guard(
            name,
            Verdict::Warn,
            format!(
                "etcd at {endpoint} answers but its cluster has no quorum (members: {members}); \
                 it will be stopped"
            ),
        ),
        Live::Answers { members, .. } if force => guard(
            name,
            Verdict::Warn,
            format!(
                "etcd at {endpoint} answers and its cluster has quorum (members: {members}); \
                 restoring anyway (--force)"
            ),
        ),
        Live::Answers { members, .. } => guard(
            name,
            Verdict::Fail,
            format!(
                "etcd at {endpoint} answers and its cluster has quorum (members: {members}): a \
                 restore would throw a working cluster away. Replace a failed member with \
                 `etcdctl member remove/add` instead, or pass --force"
            ),
        ),
        Live::NoTls(err) => guard(
            name,
            if no_wait {
                Verdict::Warn
            } else {
                Verdict::Fail
            },
            format!(
                "cannot check, and cannot verify the restored member later: {err}{}",
                if no_wait {
                    ""
                } else {
                    " (--no-wait to restore files only)"
                }
            ),
        ),
    }
}

/// How the manifest rewrite will go.
pub fn manifest_rewrite(preview: Result<RewriteMode, String>) -> Guard {
    match preview {
        Ok(RewriteMode::Textual) => guard(
            "manifest rewrite",
            Verdict::Pass,
            "only the --initial-cluster* flags change",
        ),
        Ok(RewriteMode::Reserialized) => guard(
            "manifest rewrite",
            Verdict::Warn,
            "the manifest is not in kubeadm's layout: it will be re-serialised (same content, \
             formatting and comments lost)",
        ),
        Err(e) => guard("manifest rewrite", Verdict::Fail, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        let v = |img, st: Option<&str>, cl: Option<&str>, force| {
            let (g, t) = version_guard(img, st, cl, force);
            (g.verdict, t)
        };
        use Minor::*;
        assert_eq!(
            v(Some((3, 5, 16)), None, Some("3.5.0"), false),
            (Verdict::Pass, Some(V3_5))
        );
        assert_eq!(
            v(Some((3, 5, 16)), Some("3.6.0"), None, true).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 6, 8)), Some("3.7.0"), Some("3.7.0"), true).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 6, 4)), None, Some("3.4.0"), false).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 6, 4)), None, Some("3.4.0"), true).0,
            Verdict::Warn
        );
        assert_eq!(
            v(Some((3, 6, 4)), None, Some("3.5.0"), false),
            (Verdict::Pass, Some(V3_6))
        );
        assert_eq!(
            v(Some((3, 7, 0)), Some("3.6.0"), Some("3.6.0"), false),
            (Verdict::Pass, Some(V3_7))
        );
        assert_eq!(
            v(Some((3, 7, 0)), None, Some("3.5.0"), false).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 7, 0)), None, Some("3.5.0"), true),
            (Verdict::Warn, Some(V3_7))
        );
        assert_eq!(v(Some((3, 4, 23)), None, None, false).0, Verdict::Fail);
        assert_eq!(v(None, None, Some("3.5.0"), false), (Verdict::Warn, None));
    }

    #[test]
    fn flags_for_each_generation() {
        let k133 = [
            "data-dir",
            "experimental-initial-corrupt-check",
            "experimental-watch-progress-notify-interval",
        ];
        let k137 = [
            "data-dir",
            "feature-gates",
            "watch-progress-notify-interval",
        ];
        let v = |img, f: &[&str]| flags_guard(img, f.iter().copied());
        assert_eq!(v(Some((3, 5, 30)), &k133).verdict, Verdict::Pass);
        assert_eq!(v(Some((3, 6, 8)), &k133).verdict, Verdict::Warn);
        let g = v(Some((3, 7, 0)), &k133);
        assert_eq!(g.verdict, Verdict::Fail);
        assert!(
            g.detail.contains("--watch-progress-notify-interval")
                && g.detail.contains("InitialCorruptCheck=true"),
            "{}",
            g.detail
        );
        for img in [(3, 6, 8), (3, 7, 0)] {
            assert_eq!(v(Some(img), &k137).verdict, Verdict::Pass);
        }
    }

    #[test]
    fn peer_certificate_needs_every_host_in_a_cluster() {
        let cert = Path::new("/pki/peer.crt");
        let hosts = ["10.0.0.1".to_string()];
        let sans = || Ok(vec!["node-a".to_string(), "10.0.0.1".to_string()]);
        assert_eq!(
            peer_certificate(cert, sans(), &hosts, 3).verdict,
            Verdict::Pass
        );
        let other = ["10.0.0.9".to_string()];
        assert_eq!(
            peer_certificate(cert, sans(), &other, 3).verdict,
            Verdict::Fail
        );
        assert_eq!(
            peer_certificate(cert, sans(), &other, 1).verdict,
            Verdict::Warn
        );
        let g = peer_certificate(cert, Err("gone".into()), &hosts, 3);
        assert_eq!(g.verdict, Verdict::Warn);
        assert!(g.detail.contains("/pki/peer.crt") && g.detail.contains("gone"));
    }

    #[test]
    fn disk_space_needs_bytes_and_inodes() {
        let d = Path::new("/var/lib");
        assert_eq!(disk_space(d, 100, Ok((100, 64))).verdict, Verdict::Pass);
        assert_eq!(disk_space(d, 100, Ok((99, 1000))).verdict, Verdict::Fail);
        assert_eq!(disk_space(d, 100, Ok((1000, 10))).verdict, Verdict::Fail);
        assert_eq!(disk_space(d, 1, Err("x".into())).verdict, Verdict::Fail);
    }

    #[test]
    fn a_live_cluster_with_quorum_is_refused_without_force() {
        let answers = |quorum| Live::Answers {
            quorum,
            members: "a, b".into(),
        };
        let v =
            |live: &Live, force, no_wait| live_cluster("https://x", live, force, no_wait).verdict;
        assert_eq!(v(&Live::Silent, false, false), Verdict::Pass);
        assert_eq!(v(&Live::Mute("x".into()), false, false), Verdict::Warn);
        assert_eq!(v(&answers(true), false, false), Verdict::Fail);
        assert_eq!(v(&answers(true), true, false), Verdict::Warn);
        assert_eq!(v(&answers(false), false, false), Verdict::Warn);
        assert_eq!(v(&Live::NoTls("x".into()), false, false), Verdict::Fail);
        assert_eq!(v(&Live::NoTls("x".into()), false, true), Verdict::Warn);
    }

    #[test]
    fn other_etcd_pods_and_root_are_checked() {
        assert_eq!(one_etcd_pod(&[], Path::new("/m")).verdict, Verdict::Pass);
        let g = one_etcd_pod(&["etcd-old.yaml".into()], Path::new("/m"));
        assert!(g.verdict == Verdict::Fail && g.detail.contains("etcd-old.yaml"));
        assert_eq!(running_as_root(false).verdict, Verdict::Fail);
        assert_eq!(running_as_root(true).verdict, Verdict::Pass);
    }
}
