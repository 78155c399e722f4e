//! The checks of a drill: what a starting etcd checks of a data dir (restore-spec D.1, D.2),
//! read back from the built dir independently of the code that built it (the raft files by
//! `restore::datadir::read`, the db by the bbolt reader) and compared with the plan and with
//! the snapshot. Each check returns the sentence for the record, or the failure naming what is
//! wrong and where.

use std::io::Read;
use std::path::Path;

use crate::etcddb::keyspace;
use crate::etcddb::schema::{self, Revision, StoredMember};
use crate::etcddb::{check_and_walk, Visitor};
use crate::restore::datadir::read::{self, Wal};
use crate::restore::datadir::Cluster;

/// The WAL segment etcd preallocates; a built one has exactly this size.
const WAL_SEGMENT: u64 = 64 * 1000 * 1000;
const WAL_NAME: &str = "0000000000000000-0000000000000000.wal";
/// The records of a restored WAL are a few hundred bytes per member.
const WAL_HEAD: usize = 1 << 20;

/// What one walk of a db says, for comparing a built db with its snapshot.
#[derive(Debug, Clone, Default)]
pub(super) struct DbContent {
    /// CRC-32C over every pair the restore does not rewrite (all buckets but `members` and
    /// `members_removed`; `meta` without `consistent_index` and `term`), with its bucket name.
    pub hash: u32,
    /// CRC-32C of "key" and every pair of the `key` bucket (etcd's HashKV before compaction).
    pub key_hash: u32,
    pub members: Vec<StoredMember>,
    pub removed: usize,
    pub consistent_index: Option<u64>,
    pub term: Option<u64>,
    pub revision: i64,
    pub compact: Option<i64>,
    pub scheduled: Option<i64>,
    pub pairs: u64,
    pub pages: u64,
}

/// Builds a [`DbContent`] element by element: from a walk of its own ([`content`]) or from the
/// integrity check's walk of the snapshot (`etcddb::verify_snapshot_file_visiting`), so a
/// drill reads the snapshot once for both.
pub(super) struct ContentWalk {
    c: DbContent,
    /// The top-level bucket being walked.
    top: Vec<u8>,
}

impl ContentWalk {
    pub fn new() -> ContentWalk {
        ContentWalk {
            c: DbContent {
                key_hash: crc32c::crc32c(schema::KEY),
                ..DbContent::default()
            },
            top: Vec::new(),
        }
    }

    /// What the walk saw, for a db of `pages` pages (its meta's high-water mark).
    pub fn finish(self, pages: u64) -> DbContent {
        DbContent { pages, ..self.c }
    }
}

impl Visitor for ContentWalk {
    fn element(&mut self, depth: usize, k: &[u8], v: &[u8], is_bucket: bool) {
        let c = &mut self.c;
        if depth == 0 {
            self.top = k.to_vec();
            return;
        }
        if depth != 1 || is_bucket {
            return;
        }
        c.pairs += 1;
        let rewritten = match self.top.as_slice() {
            schema::MEMBERS => {
                if let Some(m) = StoredMember::decode(v) {
                    c.members.push(m);
                }
                true
            }
            schema::MEMBERS_REMOVED => {
                c.removed += 1;
                true
            }
            schema::META => match k {
                schema::CONSISTENT_INDEX => {
                    c.consistent_index = schema::be_u64(v);
                    true
                }
                schema::TERM => {
                    c.term = schema::be_u64(v);
                    true
                }
                schema::FINISHED_COMPACT_REV => {
                    c.compact = Revision::parse(v).map(|r| r.main);
                    false
                }
                schema::SCHEDULED_COMPACT_REV => {
                    c.scheduled = Revision::parse(v).map(|r| r.main);
                    false
                }
                _ => false,
            },
            schema::KEY => {
                if let Some(r) = Revision::parse(k) {
                    c.revision = r.main;
                }
                c.key_hash = crc32c::crc32c_append(c.key_hash, k);
                c.key_hash = crc32c::crc32c_append(c.key_hash, v);
                false
            }
            _ => false,
        };
        if !rewritten {
            c.hash = crc32c::crc32c_append(c.hash, &self.top);
            c.hash = crc32c::crc32c_append(c.hash, k);
            c.hash = crc32c::crc32c_append(c.hash, v);
        }
    }
}

/// Walks the db at `path` (a built data dir's db) with bbolt's check.
pub(super) fn content(path: &Path) -> Result<DbContent, String> {
    let db = keyspace::open(path)?;
    let mut walk = ContentWalk::new();
    let report = check_and_walk(&db, &mut walk);
    if !report.is_ok() {
        return Err(format!(
            "{} is not consistent as bbolt checks it ({} errors): {}",
            path.display(),
            report.error_count,
            report.lines().join("; ")
        ));
    }
    Ok(walk.finish(db.meta().pgid))
}

/// This node as its manifest and records describe it.
#[derive(Debug, Clone)]
pub(super) struct NodeIdentity {
    pub name: String,
    pub peer_urls: Vec<String>,
    /// From the newest record that knows it.
    pub member_id: Option<u64>,
}

impl NodeIdentity {
    fn describe(&self) -> String {
        match self.member_id {
            Some(id) => format!("{} ({id:x}, {})", self.name, self.peer_urls.join(",")),
            None => format!("{} ({})", self.name, self.peer_urls.join(",")),
        }
    }
}

fn member_list(members: &[StoredMember]) -> String {
    let v: Vec<String> = members
        .iter()
        .map(|m| format!("{} ({:x}, {})", m.name, m.id, m.peer_urls.join(",")))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The snapshot is of this node's cluster: one of its members is this node, by member ID, or
/// by name and peer URLs (a member replaced since has another ID).
pub(super) fn of_this_cluster(snapshot: &DbContent, node: &NodeIdentity) -> Result<String, String> {
    let mut want = node.peer_urls.clone();
    want.sort();
    let by_id = snapshot
        .members
        .iter()
        .find(|m| Some(m.id) == node.member_id);
    let by_name = snapshot.members.iter().find(|m| {
        let mut got = m.peer_urls.clone();
        got.sort();
        m.name == node.name && got == want
    });
    match by_id.or(by_name) {
        Some(m) => Ok(format!(
            "the snapshot's members ({}) include this node, {} ({:x})",
            member_list(&snapshot.members),
            m.name,
            m.id
        )),
        None => Err(format!(
            "none of the snapshot's members ({}) is this node, {}: it is a snapshot of another \
             cluster (or of a member whose name and peer URLs have changed)",
            member_list(&snapshot.members),
            node.describe()
        )),
    }
}

/// Everything the restore leaves alone is as it was in the snapshot.
pub(super) fn content_equal(snapshot: &DbContent, built: &DbContent) -> Result<String, String> {
    if snapshot.hash != built.hash {
        return Err(format!(
            "the built db's content hash is {:08x}, the snapshot's {:08x}: pairs outside \
             members and meta/consistent_index,term differ ({} pairs built, {} in the snapshot)",
            built.hash, snapshot.hash, built.pairs, snapshot.pairs
        ));
    }
    if snapshot.key_hash != built.key_hash {
        return Err(format!(
            "the built db's `key` bucket hashes to {:08x}, the snapshot's to {:08x}",
            built.key_hash, snapshot.key_hash
        ));
    }
    Ok(format!(
        "content hash {:08x} (every bucket but members, and meta without consistent_index and \
         term) and the hash of the `key` bucket ({:08x}) equal the snapshot's",
        built.hash, built.key_hash
    ))
}

/// The revision and the compaction marks are the snapshot's (a drill does not bump).
pub(super) fn revision_equal(snapshot: &DbContent, built: &DbContent) -> Result<String, String> {
    let marks = |c: &DbContent| (c.revision, c.compact, c.scheduled);
    if marks(snapshot) != marks(built) {
        return Err(format!(
            "revision {}, compacted at {:?}, compaction scheduled at {:?} in the built db; the \
             snapshot has {}, {:?}, {:?}",
            built.revision,
            built.compact,
            built.scheduled,
            snapshot.revision,
            snapshot.compact,
            snapshot.scheduled
        ));
    }
    Ok(format!(
        "revision {}{}",
        built.revision,
        match (built.compact, built.scheduled) {
            (Some(c), Some(s)) if s > c => format!(", compacted at {c}, compaction to {s} resumes"),
            (Some(c), _) => format!(", compacted at {c}"),
            (None, Some(s)) => format!(", compaction to {s} resumes at start"),
            (None, None) => ", never compacted".into(),
        }
    ))
}

/// The WAL decodes with its CRC chain intact and says what the plan says: this member and
/// the cluster, one AddNode entry per member in ID order, HardState {term 1, the lowest ID,
/// commit N}, and a last snapshot mark {N, 1, all voters}.
pub(super) fn wal(data_dir: &Path, cluster: &Cluster) -> Result<(String, Wal), String> {
    let path = data_dir.join("member/wal").join(WAL_NAME);
    let mut f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size != WAL_SEGMENT {
        return Err(format!(
            "{} is {size} bytes; etcd's segments are {WAL_SEGMENT}",
            path.display()
        ));
    }
    let mut head = Vec::with_capacity(WAL_HEAD);
    (&mut f)
        .take(WAL_HEAD as u64)
        .read_to_end(&mut head)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let w = read::decode_wal(&head).map_err(|e| format!("{}: {e}", path.display()))?;
    let ids = cluster.ids();
    let n = ids.len() as u64;
    let bad = |what: String| Err(format!("{}: {what}", path.display()));
    if (w.node_id, w.cluster_id) != (cluster.this().id, cluster.cluster_id) {
        return bad(format!(
            "member {:x} of cluster {:x}; the plan is member {:x} of cluster {:x}",
            w.node_id,
            w.cluster_id,
            cluster.this().id,
            cluster.cluster_id
        ));
    }
    if w.entries.len() != cluster.members.len() {
        return bad(format!(
            "{} entries; the plan has {} members",
            w.entries.len(),
            n
        ));
    }
    for (i, (e, m)) in w.entries.iter().zip(&cluster.members).enumerate() {
        let ok = e.index == i as u64 + 1
            && e.term == 1
            && e.conf_change.as_ref().is_some_and(|c| {
                c.kind == 0
                    && c.node_id == m.id
                    && StoredMember::decode(c.context.as_bytes()).is_some_and(|s| {
                        s.id == m.id && s.name == m.name && s.peer_urls == m.peer_urls
                    })
            });
        if !ok {
            return bad(format!(
                "entry {} is not the AddNode of member {} ({:x}, {}) at index {}, term 1: {e:?}",
                i + 1,
                m.name,
                m.id,
                m.peer_urls.join(","),
                i + 1
            ));
        }
    }
    let hs = w
        .hard_state
        .ok_or_else(|| format!("{}: no HardState", path.display()))?;
    if (hs.term, hs.vote, hs.commit) != (1, ids[0], n) {
        return bad(format!(
            "HardState {{term {}, vote {:x}, commit {}}}; the plan needs {{1, {:x}, {n}}}",
            hs.term, hs.vote, hs.commit, ids[0]
        ));
    }
    let last = w
        .snapshots
        .last()
        .ok_or_else(|| format!("{}: no snapshot mark", path.display()))?;
    if (last.index, last.term, &last.voters) != (n, 1, &ids) {
        return bad(format!(
            "the last snapshot mark is {{index {}, term {}, voters {:x?}}}; the plan needs \
             {{{n}, 1, {:x?}}}",
            last.index, last.term, last.voters, ids
        ));
    }
    Ok((
        format!(
            "{} records, CRC chain intact; member {:x} of cluster {:x}, {n} AddNode entries, \
             HardState commit {n}, snapshot mark at {n}",
            w.records, w.node_id, w.cluster_id
        ),
        w,
    ))
}

/// The db's consistent index is where raft restarts: the WAL's commit and its snapshot mark
/// (a larger index makes etcd skip entries, a smaller one look for a `.snap.db` that is not
/// there); its term is the HardState's.
pub(super) fn consistent_index(built: &DbContent, w: &Wal) -> Result<String, String> {
    let commit = w.hard_state.map(|h| h.commit).unwrap_or(0);
    let term = w.hard_state.map(|h| h.term).unwrap_or(0);
    let mark = w.snapshots.last().map(|s| s.index).unwrap_or(0);
    match (built.consistent_index, built.term) {
        (Some(ci), Some(t)) if ci == commit && ci == mark && t == term => Ok(format!(
            "meta/consistent_index {ci} = the WAL's commit and snapshot mark; meta/term {t} = \
             its HardState's"
        )),
        (ci, t) => Err(format!(
            "the db's meta/consistent_index is {} and meta/term {}, but the WAL commits {commit} \
             at term {term} with its snapshot mark at {mark}: etcd would {}",
            ci.map_or("absent".into(), |c| c.to_string()),
            t.map_or("absent".into(), |c| c.to_string()),
            match ci {
                Some(c) if c > commit => "skip the first entries it applies",
                _ => "look for a .snap.db that is not there and refuse to start",
            }
        )),
    }
}

/// The `.snap` of the WAL's last mark exists, its crc holds, its metadata is the mark's and
/// its v2 store holds exactly the plan's members.
pub(super) fn snap(data_dir: &Path, cluster: &Cluster, w: &Wal) -> Result<String, String> {
    let mark = w.snapshots.last().ok_or("the WAL has no snapshot mark")?;
    let path = data_dir
        .join("member/snap")
        .join(format!("{:016x}-{:016x}.snap", mark.term, mark.index));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = read::decode_snap(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if (s.index, s.term, &s.voters) != (mark.index, mark.term, &mark.voters) {
        return Err(format!(
            "{}: index {}, term {}, voters {:x?}; the WAL's mark is {}, {}, {:x?}",
            path.display(),
            s.index,
            s.term,
            s.voters,
            mark.index,
            mark.term,
            mark.voters
        ));
    }
    let mut want: Vec<(String, Vec<String>)> = cluster
        .members
        .iter()
        .map(|m| (format!("{:x}", m.id), m.peer_urls.clone()))
        .collect();
    want.sort();
    if s.members != want {
        return Err(format!(
            "{}: its v2 store has members {:?}; the plan {:?}",
            path.display(),
            s.members,
            want
        ));
    }
    if !s.other_content.is_empty() {
        return Err(format!(
            "{}: its v2 store holds {} besides the members: etcd refuses custom v2 content",
            path.display(),
            s.other_content.join(", ")
        ));
    }
    Ok(format!(
        "{} at index {}, term {}, crc intact, members as planned",
        path.file_name().unwrap_or_default().to_string_lossy(),
        s.index,
        s.term
    ))
}

/// The db's members are the plan's, and none is recorded as removed.
pub(super) fn members(built: &DbContent, cluster: &Cluster) -> Result<String, String> {
    let mut got: Vec<(u64, String, Vec<String>, bool)> = built
        .members
        .iter()
        .map(|m| (m.id, m.name.clone(), m.peer_urls.clone(), m.is_learner))
        .collect();
    got.sort();
    let want: Vec<(u64, String, Vec<String>, bool)> = cluster
        .members
        .iter()
        .map(|m| (m.id, m.name.clone(), m.peer_urls.clone(), false))
        .collect();
    if got != want {
        return Err(format!(
            "the db's members bucket holds {}; the plan is {}",
            member_list(&built.members),
            cluster
                .members
                .iter()
                .map(|m| format!("{} ({:x}, {})", m.name, m.id, m.peer_urls.join(",")))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if built.removed > 0 {
        return Err(format!(
            "members_removed holds {} entries: removed members would come back as zombies",
            built.removed
        ));
    }
    Ok(format!(
        "members bucket = the plan ({}), members_removed empty",
        member_list(&built.members)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::datadir::read::{HardState, SnapshotMark};

    fn member(id: u64, name: &str, url: &str) -> StoredMember {
        StoredMember {
            id,
            peer_urls: vec![url.into()],
            name: name.into(),
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn a_snapshot_belongs_to_this_cluster_by_id_or_by_name_and_urls() {
        let snap = DbContent {
            members: vec![member(0xa, "cp1", "https://10.0.0.1:2380")],
            ..DbContent::default()
        };
        let node = |id, name: &str, url: &str| NodeIdentity {
            name: name.into(),
            peer_urls: vec![url.into()],
            member_id: id,
        };
        assert!(of_this_cluster(&snap, &node(Some(0xa), "x", "https://y:1")).is_ok());
        assert!(of_this_cluster(&snap, &node(None, "cp1", "https://10.0.0.1:2380")).is_ok());
        let e =
            of_this_cluster(&snap, &node(Some(0xb), "cp1", "https://10.0.0.9:2380")).unwrap_err();
        assert!(e.contains("another cluster"), "{e}");
        assert!(e.contains("cp1 (a, https://10.0.0.1:2380)"), "{e}");
    }

    #[test]
    fn the_consistent_index_must_be_where_raft_restarts() {
        let w = Wal {
            hard_state: Some(HardState {
                term: 1,
                vote: 1,
                commit: 1,
            }),
            snapshots: vec![SnapshotMark {
                index: 1,
                term: 1,
                voters: vec![1],
            }],
            ..Wal::default()
        };
        let db = |ci, t| DbContent {
            consistent_index: Some(ci),
            term: Some(t),
            ..DbContent::default()
        };
        assert!(consistent_index(&db(1, 1), &w).is_ok());
        assert!(consistent_index(&db(2, 1), &w)
            .unwrap_err()
            .contains("skip the first entries"));
        assert!(consistent_index(&db(0, 1), &w)
            .unwrap_err()
            .contains(".snap.db"));
        assert!(consistent_index(&db(1, 2), &w).is_err());
    }

    #[test]
    fn content_and_revision_compare_with_the_snapshot() {
        let a = DbContent {
            hash: 1,
            key_hash: 2,
            revision: 10,
            compact: Some(5),
            ..DbContent::default()
        };
        assert!(content_equal(&a, &a.clone()).is_ok());
        assert!(content_equal(
            &a,
            &DbContent {
                hash: 9,
                ..a.clone()
            }
        )
        .is_err());
        assert!(revision_equal(&a, &a.clone()).is_ok());
        assert!(revision_equal(
            &a,
            &DbContent {
                revision: 11,
                ..a.clone()
            }
        )
        .is_err());
    }
}
