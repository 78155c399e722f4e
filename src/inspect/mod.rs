//! `etcdguard inspect` and `etcdguard diff`: what a snapshot holds, read offline the way etcd
//! rebuilds its index when it starts. The `key` bucket holds every revision of every key in
//! revision order; a key's newest revision is its state (a delete ends it), so a key whose
//! newest revision is a delete exists only in older revisions (deleted since the last
//! compaction). Kubernetes data is broken down by resource type and namespace from the
//! `/registry/…` layout (`k8s`).
//!
//! Memory stays flat in the database size: each walk reads a few pages at a time. To know each
//! key's newest revision, the summary, the diff and `hash_kv` sort a fixed-size entry per
//! revision (a 128-bit hash of the key, never the key or its value) by key, on disk past about
//! 8 MiB (`index`, `spill`), and name the keys they print by revision: up to
//! `index::LOOKUPS` by point lookups in the `key` bucket, more in a second walk beside the
//! sorted revisions wanted; `keys` keeps the names it prints, `get` one value. "Bytes" are
//! value bytes, as `etcdctl get -w json` reports them.

mod index;
pub mod k8s;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use serde::Serialize;

use crate::etcddb::keyspace::{self, Facts};
use crate::etcddb::schema::Revision;
use crate::etcddb::Db;
use crate::spill::Sorter;

/// How long the lists of a summary are.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub largest: usize,
    pub deleted: usize,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Keys, bytes and deletions of one namespace of a resource.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Count {
    /// Live keys.
    pub keys: u64,
    /// Their value bytes.
    pub bytes: u64,
    /// Keys whose newest revision is a delete.
    pub deleted: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRow {
    /// "" for cluster-scoped objects.
    pub namespace: String,
    #[serde(flatten)]
    pub count: Count,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRow {
    pub resource: String,
    #[serde(flatten)]
    pub count: Count,
    pub namespaces: Vec<NamespaceRow>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LargeObject {
    pub key: String,
    pub bytes: u64,
    pub resource: String,
    pub namespace: String,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedKey {
    pub key: String,
    /// The revision of the delete.
    pub deleted_at: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRow {
    /// Hex, as `etcdctl lease list` prints it.
    pub id: String,
    pub ttl_seconds: i64,
    /// Live keys attached.
    pub keys: u64,
}

/// What `inspect` says of a snapshot.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[serde(flatten)]
    pub facts: Facts,
    /// Live keys and their value bytes; keys deleted since the last compaction.
    #[serde(flatten)]
    pub totals: Count,
    /// Keys under `/registry/`: the data of a Kubernetes cluster.
    pub kubernetes_keys: u64,
    pub resources: Vec<ResourceRow>,
    pub largest: Vec<LargeObject>,
    /// The most recent deletes, newest first (all of them are counted in `deleted`).
    pub deleted_keys: Vec<DeletedKey>,
    pub leases: Vec<LeaseRow>,
}

/// The summary of a snapshot: facts, totals, Kubernetes breakdown, largest objects, deleted
/// keys, leases. One walk, and a point lookup per name printed.
pub fn summarize(db: &Db, limits: Limits) -> Result<Summary, String> {
    summarize_in(
        db,
        limits,
        crate::spill::in_memory(index::ENTRIES_IN_MEMORY),
    )
}

/// What a summary looks a revision up for.
const LARGEST: u8 = 1;
const DELETED: u8 = 2;

fn summarize_in(db: &Db, limits: Limits, cap: usize) -> Result<Summary, String> {
    let (newest, groups, facts) = index::index(db, false, cap)?;
    let mut by_group: Vec<Count> = vec![Count::default(); groups.names.len()];
    let mut per_lease: HashMap<i64, u64> = HashMap::new();
    // The largest live objects (bytes, then the newest first) and the newest deletes, by
    // revision: their names are looked up afterwards.
    let mut largest: BinaryHeap<Reverse<(u32, Revision, u32)>> = BinaryHeap::new();
    let mut deleted: BinaryHeap<Reverse<Revision>> = BinaryHeap::new();
    for e in newest {
        let e = e?;
        let c = &mut by_group[e.group as usize];
        if e.live {
            c.keys += 1;
            c.bytes += u64::from(e.bytes);
            if e.lease != 0 {
                *per_lease.entry(e.lease).or_default() += 1;
            }
            keep_greatest(
                &mut largest,
                (e.bytes, e.revision(), e.group),
                limits.largest,
            );
        } else {
            c.deleted += 1;
            keep_greatest(&mut deleted, e.revision(), limits.deleted);
        }
    }
    let (resources, totals, kubernetes_keys) = breakdown(&groups, &by_group);

    // The names of the largest live objects and of the newest deletes, by revision.
    let mut wanted = index::wanted(cap);
    for Reverse((_, revision, _)) in &largest {
        wanted.push(index::Wanted {
            revision: *revision,
            tags: LARGEST,
        })?;
    }
    for Reverse(revision) in &deleted {
        wanted.push(index::Wanted {
            revision: *revision,
            tags: DELETED,
        })?;
    }
    let mut names: HashMap<Revision, Vec<u8>> = HashMap::new();
    if !largest.is_empty() || !deleted.is_empty() {
        index::find_wanted(db, wanted, &mut |p| {
            if let Some(kv) = p.wanted_kv() {
                names.insert(p.revision, kv.key.to_vec());
            }
        })?;
    }
    let name = |rev: &Revision| names.get(rev).map(|k| text(k)).unwrap_or_default();
    let mut largest: Vec<LargeObject> = largest
        .into_iter()
        .map(|Reverse((bytes, rev, group))| {
            let (resource, namespace) = groups.name(group);
            LargeObject {
                key: name(&rev),
                bytes: u64::from(bytes),
                resource,
                namespace,
                mod_revision: rev.main,
            }
        })
        .collect();
    largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.key.cmp(&b.key)));
    let mut deleted: Vec<_> = deleted.into_iter().map(|Reverse(r)| r).collect();
    deleted.sort_by(|a, b| b.cmp(a));
    let deleted_keys = deleted
        .iter()
        .map(|rev| DeletedKey {
            key: name(rev),
            deleted_at: rev.main,
        })
        .collect();
    let mut leases: Vec<LeaseRow> = facts
        .leases
        .iter()
        .map(|l| LeaseRow {
            id: format!("{:x}", l.id),
            ttl_seconds: l.ttl,
            keys: per_lease.get(&l.id).copied().unwrap_or(0),
        })
        .collect();
    leases.sort_by(|a, b| b.keys.cmp(&a.keys).then(a.id.cmp(&b.id)));
    Ok(Summary {
        facts,
        totals,
        kubernetes_keys,
        resources,
        largest,
        deleted_keys,
        leases,
    })
}

/// The counts per group as rows per resource (each with its namespaces), the totals and the
/// Kubernetes keys among them.
fn breakdown(groups: &index::Groups, by_group: &[Count]) -> (Vec<ResourceRow>, Count, u64) {
    let mut resources: BTreeMap<&str, (Count, Vec<NamespaceRow>)> = BTreeMap::new();
    let mut kubernetes_keys = 0;
    let mut totals = Count::default();
    for (i, (res, ns)) in groups.names.iter().enumerate() {
        let c = &by_group[i];
        if !res.starts_with('(') {
            kubernetes_keys += c.keys;
        }
        totals.keys += c.keys;
        totals.bytes += c.bytes;
        totals.deleted += c.deleted;
        let entry = resources.entry(res.as_str()).or_default();
        entry.0.keys += c.keys;
        entry.0.bytes += c.bytes;
        entry.0.deleted += c.deleted;
        entry.1.push(NamespaceRow {
            namespace: ns.clone(),
            count: c.clone(),
        });
    }
    let resources = resources
        .into_iter()
        .map(|(res, (count, mut namespaces))| {
            namespaces.sort_by(|a, b| a.namespace.cmp(&b.namespace));
            ResourceRow {
                resource: res.to_string(),
                count,
                namespaces,
            }
        })
        .collect();

    (resources, totals, kubernetes_keys)
}

/// Keeps the `limit` greatest items in a heap whose smallest is on top.
fn keep_greatest<T: Ord>(heap: &mut BinaryHeap<Reverse<T>>, item: T, limit: usize) {
    if limit == 0 {
        return;
    }
    if heap.len() < limit {
        heap.push(Reverse(item));
    } else if heap.peek().is_some_and(|Reverse(min)| item > *min) {
        heap.pop();
        heap.push(Reverse(item));
    }
}

/// etcd's `HashKV` at the snapshot's newest revision, as a server started on it answers:
/// CRC-32C of "key" and of every pair of the `key` bucket, except the revisions at or below
/// the compaction `compact` that are not the newest revision of a live key (etcd's
/// `kvindex.Keep`), and a delete at exactly `compact`. The same before and after the
/// compaction ran, as etcd designed it. Two walks.
pub fn hash_kv(db: &Db, compact: Option<i64>) -> Result<u32, String> {
    hash_kv_in(
        db,
        compact,
        crate::spill::in_memory(index::ENTRIES_IN_MEMORY),
    )
}

fn hash_kv_in(db: &Db, compact: Option<i64>, cap: usize) -> Result<u32, String> {
    const KEPT: u8 = 1;
    let c = compact.unwrap_or(-1);
    let (newest, _, _) = index::index(db, false, cap)?;
    let mut keep_any = false;
    let mut kept = index::wanted(cap);
    for e in newest {
        let e = e?;
        if e.live {
            keep_any = true;
            if e.main <= c {
                kept.push(index::Wanted {
                    revision: e.revision(),
                    tags: KEPT,
                })?;
            }
        }
    }
    let mut h = crc32c::crc32c(crate::etcddb::schema::KEY);
    index::walk_wanted(db, kept, &mut |p| {
        if p.revision.main <= c && keep_any && p.tags & KEPT == 0 {
            return;
        }
        if p.revision.main == c && crate::etcddb::schema::is_tombstone(p.key) {
            return;
        }
        h = crc32c::crc32c_append(h, p.key);
        h = crc32c::crc32c_append(h, p.value);
    })?;
    Ok(h)
}

/// A live key as `inspect --keys` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRow {
    pub key: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub lease: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The live keys that start with `prefix`, sorted. One walk; only matching keys are kept.
pub fn keys(db: &Db, prefix: &[u8]) -> Result<Vec<KeyRow>, String> {
    let mut found: BTreeMap<Vec<u8>, Option<KeyRow>> = BTreeMap::new();
    keyspace::walk(db, &mut |e| {
        if !e.kv.key.starts_with(prefix) {
            return;
        }
        let row = (!e.tombstone).then(|| KeyRow {
            key: text(e.kv.key),
            create_revision: e.kv.create_revision,
            mod_revision: e.kv.mod_revision,
            version: e.kv.version,
            bytes: e.kv.value.len() as u64,
            lease: e.kv.lease,
        });
        found.insert(e.kv.key.to_vec(), row);
    })?;
    Ok(found.into_values().flatten().collect())
}

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

/// Why `get` has no value to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    #[error("{0}")]
    Read(String),
    #[error("revision {asked} is compacted (this snapshot was compacted at {compacted}): its older values are gone")]
    Compacted { asked: i64, compacted: i64 },
    #[error("revision {asked} is after this snapshot's revision {revision}")]
    Future { asked: i64, revision: i64 },
    #[error("no key {key} in this snapshot{}", at.map(|r| format!(" at revision {r}")).unwrap_or_default())]
    Missing { key: String, at: Option<i64> },
    #[error("key {key} was deleted at revision {deleted_at}{}", at.map(|r| format!(" (asked at revision {r})")).unwrap_or_default())]
    Deleted {
        key: String,
        deleted_at: i64,
        at: Option<i64>,
    },
}

/// The value of `key` at revision `at` (the newest when `None`), as etcd would answer a read
/// at that revision. One walk, one value kept.
pub fn get(db: &Db, key: &[u8], at: Option<i64>) -> Result<Found, GetError> {
    let mut newest: Option<(i64, bool, Found)> = None;
    let facts = keyspace::walk(db, &mut |e| {
        if e.kv.key != key || at.is_some_and(|r| e.revision.main > r) {
            return;
        }
        newest = Some((
            e.revision.main,
            e.tombstone,
            Found {
                key: key.to_vec(),
                create_revision: e.kv.create_revision,
                mod_revision: e.kv.mod_revision,
                version: e.kv.version,
                lease: e.kv.lease,
                value: e.kv.value.to_vec(),
            },
        ));
    })
    .map_err(GetError::Read)?;
    if let Some(r) = at {
        if let Some(c) = facts.compact_revision.filter(|c| r < *c) {
            return Err(GetError::Compacted {
                asked: r,
                compacted: c,
            });
        }
        if r > facts.revision {
            return Err(GetError::Future {
                asked: r,
                revision: facts.revision,
            });
        }
    }
    match newest {
        None => Err(GetError::Missing { key: text(key), at }),
        Some((rev, true, _)) => Err(GetError::Deleted {
            key: text(key),
            deleted_at: rev,
            at,
        }),
        Some((_, false, f)) => Ok(f),
    }
}

/// Changes between two snapshots in one resource and namespace.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiffCount {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiffRow {
    pub resource: String,
    pub namespace: String,
    #[serde(flatten)]
    pub count: DiffCount,
}

/// One side of a diff.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffSide {
    pub revision: i64,
    pub keys: u64,
}

/// What changed from snapshot A to snapshot B: keys live in B only (added), in A only
/// (removed), or in both with another value or lease (changed). A put that wrote the same
/// bytes again is not a change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub a: DiffSide,
    pub b: DiffSide,
    #[serde(flatten)]
    pub totals: DiffCount,
    pub rows: Vec<DiffRow>,
    /// Up to the limit each, sorted.
    pub added_keys: Vec<String>,
    pub removed_keys: Vec<String>,
    pub changed_keys: Vec<String>,
}

/// Keeps the `limit` smallest names.
fn keep_smallest(set: &mut BTreeSet<Vec<u8>>, name: &[u8], limit: usize) {
    if set.len() < limit || set.last().is_some_and(|l| name < l.as_slice()) {
        set.insert(name.to_vec());
        if set.len() > limit {
            set.pop_last();
        }
    }
}

/// The diff from `a` to `b`, naming up to `limit` keys of each kind. Two walks (one per
/// side); the keys named are looked up by revision, or found in one more walk of a side with
/// more than `index::LOOKUPS` of them.
pub fn diff(a: &Db, b: &Db, limit: usize) -> Result<Diff, String> {
    diff_in(
        a,
        b,
        limit,
        crate::spill::in_memory(index::ENTRIES_IN_MEMORY),
    )
}

/// What a diff looks a revision up for.
const ADDED: u8 = 1;
const REMOVED: u8 = 2;
const CHANGED: u8 = 4;

fn diff_in(a: &Db, b: &Db, limit: usize, cap: usize) -> Result<Diff, String> {
    let (na, ga, fa) = index::index(a, true, cap)?;
    let (nb, gb, fb) = index::index(b, true, cap)?;
    let mut rows: BTreeMap<(String, String), DiffCount> = BTreeMap::new();
    let mut totals = DiffCount::default();
    let (mut keys_a, mut keys_b) = (0u64, 0u64);
    let (mut wanted_a, mut wanted_b) = (index::wanted(cap), index::wanted(cap));
    let note = |wanted: &mut Sorter<index::Wanted>, e: &index::Entry, tags: u8| {
        if limit > 0 {
            wanted.push(index::Wanted {
                revision: e.revision(),
                tags,
            })
        } else {
            Ok(())
        }
    };
    // Both sides in key hash order: a merge join.
    let (mut na, mut nb) = (na.peekable(), nb.peekable());
    loop {
        let ea = na.peek().cloned().transpose()?;
        let eb = nb.peek().cloned().transpose()?;
        let (ea, eb) = match (ea, eb) {
            (None, None) => break,
            (Some(x), Some(y)) if x.hash == y.hash => (Some(x), Some(y)),
            (Some(x), Some(y)) if x.hash < y.hash => (Some(x), None),
            (Some(x), None) => (Some(x), None),
            (_, y) => (None, y),
        };
        if ea.is_some() {
            na.next();
        }
        if eb.is_some() {
            nb.next();
        }
        let (ea, eb) = (ea.filter(|e| e.live), eb.filter(|e| e.live));
        keys_a += u64::from(ea.is_some());
        keys_b += u64::from(eb.is_some());
        match (ea, eb) {
            (None, None) => {}
            (None, Some(y)) => {
                rows.entry(gb.name(y.group)).or_default().added += 1;
                totals.added += 1;
                note(&mut wanted_b, &y, ADDED)?;
            }
            (Some(x), None) => {
                rows.entry(ga.name(x.group)).or_default().removed += 1;
                totals.removed += 1;
                note(&mut wanted_a, &x, REMOVED)?;
            }
            (Some(x), Some(y)) if x.value_hash != y.value_hash => {
                rows.entry(gb.name(y.group)).or_default().changed += 1;
                totals.changed += 1;
                note(&mut wanted_b, &y, CHANGED)?;
            }
            (Some(_), Some(_)) => {}
        }
    }
    let (mut added_keys, mut changed_keys, mut removed_keys) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    if limit > 0 && totals.added + totals.changed > 0 {
        index::find_wanted(b, wanted_b, &mut |p| {
            let Some(kv) = p.wanted_kv() else { return };
            if p.tags & ADDED != 0 {
                keep_smallest(&mut added_keys, kv.key, limit);
            } else if p.tags & CHANGED != 0 {
                keep_smallest(&mut changed_keys, kv.key, limit);
            }
        })?;
    }
    if limit > 0 && totals.removed > 0 {
        index::find_wanted(a, wanted_a, &mut |p| {
            if let Some(kv) = p.wanted_kv().filter(|_| p.tags & REMOVED != 0) {
                keep_smallest(&mut removed_keys, kv.key, limit);
            }
        })?;
    }
    let names = |s: BTreeSet<Vec<u8>>| s.into_iter().map(|k| text(&k)).collect();
    Ok(Diff {
        a: DiffSide {
            revision: fa.revision,
            keys: keys_a,
        },
        b: DiffSide {
            revision: fb.revision,
            keys: keys_b,
        },
        totals,
        rows: rows
            .into_iter()
            .map(|((resource, namespace), count)| DiffRow {
                resource,
                namespace,
                count,
            })
            .collect(),
        added_keys: names(added_keys),
        removed_keys: names(removed_keys),
        changed_keys: names(changed_keys),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcddb::writer::{new_db, Item};

    /// An mvccpb.KeyValue.
    fn kv(key: &str, rev: i64, value: &[u8], lease: i64) -> Vec<u8> {
        let mut o = vec![0x0a, key.len() as u8];
        o.extend_from_slice(key.as_bytes());
        o.extend_from_slice(&[0x10, rev as u8, 0x18, rev as u8, 0x20, 1]);
        o.push(0x2a);
        o.push(value.len() as u8);
        o.extend_from_slice(value);
        if lease != 0 {
            o.extend_from_slice(&[0x30, lease as u8]);
        }
        o
    }

    /// A db from events: (key, value or None for a delete, lease).
    fn db(events: &[(&str, Option<&[u8]>, i64)]) -> (tempfile::TempDir, Db) {
        let mut items: Vec<Item> = Vec::new();
        for (i, (key, value, lease)) in events.iter().enumerate() {
            let rev = i as i64 + 2;
            let mut k = Revision { main: rev, sub: 0 }.to_bytes().to_vec();
            let v = match value {
                Some(v) => kv(key, rev, v, *lease),
                None => {
                    k.push(b't');
                    kv(key, rev, b"", 0)
                }
            };
            items.push(Item::new(&k, &v));
        }
        let bytes = new_db(
            4096,
            &[
                (b"key", items),
                (
                    b"lease",
                    vec![Item::new(&7i64.to_be_bytes(), &[0x08, 7, 0x10, 60])],
                ),
                (
                    b"meta",
                    vec![Item::new(b"consistent_index", &9u64.to_be_bytes())],
                ),
            ],
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        std::fs::write(&p, bytes).unwrap();
        let db = keyspace::open(&p).unwrap();
        (d, db)
    }

    const A: &[(&str, Option<&[u8]>, i64)] = &[
        ("/registry/pods/default/a", Some(b"1111"), 0),
        ("/registry/pods/default/b", Some(b"22"), 7),
        ("/registry/pods/kube-system/c", Some(b"333"), 0),
        ("/registry/namespaces/default", Some(b"n"), 0),
        ("/registry/pods/default/a", Some(b"11111111"), 0),
        ("/registry/pods/kube-system/c", None, 0),
        ("/other/x", Some(b"x"), 0),
    ];

    #[test]
    fn the_newest_revision_of_each_key_counts() {
        let (_d, db) = db(A);
        let s = summarize(
            &db,
            Limits {
                largest: 2,
                deleted: 5,
            },
        )
        .unwrap();
        assert_eq!(
            s.totals,
            Count {
                keys: 4,
                bytes: 8 + 2 + 1 + 1,
                deleted: 1
            }
        );
        assert_eq!(s.kubernetes_keys, 3);
        let pods = s.resources.iter().find(|r| r.resource == "pods").unwrap();
        assert_eq!(
            (pods.count.keys, pods.count.bytes, pods.count.deleted),
            (2, 10, 1)
        );
        let ns: Vec<(&str, u64, u64)> = pods
            .namespaces
            .iter()
            .map(|n| (n.namespace.as_str(), n.count.keys, n.count.deleted))
            .collect();
        assert_eq!(ns, [("default", 2, 0), ("kube-system", 0, 1)]);
        assert_eq!(s.largest[0].key, "/registry/pods/default/a");
        assert_eq!((s.largest[0].bytes, s.largest[0].mod_revision), (8, 6));
        assert_eq!(s.largest.len(), 2);
        assert_eq!(s.deleted_keys.len(), 1);
        assert_eq!(s.deleted_keys[0].key, "/registry/pods/kube-system/c");
        assert_eq!(s.deleted_keys[0].deleted_at, 7);
        assert_eq!(s.leases.len(), 1);
        assert_eq!((s.leases[0].id.as_str(), s.leases[0].keys), ("7", 1));
        assert_eq!(s.facts.revision, 8);
        assert_eq!(s.facts.revisions, 7);
    }

    #[test]
    fn keys_and_get_read_as_etcd_would() {
        let (_d, db) = db(A);
        let k = keys(&db, b"/registry/pods/").unwrap();
        let names: Vec<&str> = k.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            names,
            ["/registry/pods/default/a", "/registry/pods/default/b"]
        );
        assert_eq!((k[0].bytes, k[0].mod_revision), (8, 6));
        let now = get(&db, b"/registry/pods/default/a", None).unwrap();
        assert_eq!(now.value, b"11111111");
        let then = get(&db, b"/registry/pods/default/a", Some(5)).unwrap();
        assert_eq!(then.value, b"1111");
        assert!(matches!(
            get(&db, b"/registry/pods/kube-system/c", None),
            Err(GetError::Deleted { deleted_at: 7, .. })
        ));
        assert_eq!(
            get(&db, b"/registry/pods/kube-system/c", Some(6))
                .unwrap()
                .value,
            b"333"
        );
        assert!(matches!(
            get(&db, b"/nope", None),
            Err(GetError::Missing { .. })
        ));
        assert!(matches!(
            get(&db, b"/other/x", Some(99)),
            Err(GetError::Future { .. })
        ));
    }

    #[test]
    fn diff_counts_added_removed_and_changed_by_place() {
        let (_da, a) = db(A);
        let mut b_events = A.to_vec();
        b_events.push(("/registry/pods/default/b", None, 0)); // removed
        b_events.push(("/registry/pods/default/d", Some(b"4"), 0)); // added
        b_events.push(("/registry/namespaces/default", Some(b"n2"), 0)); // changed
        b_events.push(("/other/x", Some(b"x"), 0)); // same bytes again: not a change
        let (_db, b) = db(&b_events);
        let d = diff(&a, &b, 10).unwrap();
        assert_eq!(
            d.totals,
            DiffCount {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
        assert_eq!(d.added_keys, ["/registry/pods/default/d"]);
        assert_eq!(d.removed_keys, ["/registry/pods/default/b"]);
        assert_eq!(d.changed_keys, ["/registry/namespaces/default"]);
        let pods = d
            .rows
            .iter()
            .find(|r| r.resource == "pods" && r.namespace == "default")
            .unwrap();
        assert_eq!(
            pods.count,
            DiffCount {
                added: 1,
                removed: 1,
                changed: 0
            }
        );
        let same = diff(&a, &a, 10).unwrap();
        assert_eq!(same.totals, DiffCount::default());
        assert!(same.rows.is_empty());
    }

    /// With a few entries in memory, every answer comes from sorted runs on disk: the same.
    #[test]
    fn runs_on_disk_give_the_same_answers_as_memory() {
        let (_da, a) = db(A);
        let mut b_events = A.to_vec();
        b_events.push(("/registry/pods/default/b", None, 0));
        b_events.push(("/registry/pods/default/d", Some(b"4"), 0));
        b_events.push(("/registry/namespaces/default", Some(b"n2"), 0));
        let (_db, b) = db(&b_events);
        let limits = Limits {
            largest: 2,
            deleted: 5,
        };
        let json = |s: &Summary| serde_json::to_string(s).unwrap();
        for cap in [1, 2, 3] {
            assert_eq!(
                json(&summarize_in(&a, limits, cap).unwrap()),
                json(&summarize(&a, limits).unwrap()),
                "summary, {cap} entries in memory"
            );
            assert_eq!(
                serde_json::to_string(&diff_in(&a, &b, 10, cap).unwrap()).unwrap(),
                serde_json::to_string(&diff(&a, &b, 10).unwrap()).unwrap(),
                "diff, {cap} entries in memory"
            );
            for compact in [None, Some(3), Some(6), Some(7)] {
                assert_eq!(
                    hash_kv_in(&b, compact, cap).unwrap(),
                    hash_kv(&b, compact).unwrap(),
                    "hash_kv at {compact:?}, {cap} entries in memory"
                );
            }
        }
    }
}
