//! Each key's newest revision, in memory bounded whatever the database's size. The `key`
//! bucket is in revision order, so a key's newest revision is known only at the end of a walk:
//! the walk writes one fixed-size entry per revision (a 128-bit hash of the key, never the
//! key or its value) into a [`Sorter`] by key hash, and reading it back keeps the last entry
//! of each key. Names are then found by revision, since a revision names exactly one pair
//! ([`find_wanted`]): a few by point lookups in the `key` bucket (a few pages each), many in a
//! second walk beside their sorted list ([`walk_wanted`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::k8s;
use crate::etcddb::keyspace::{self, Facts};
use crate::etcddb::lookup;
use crate::etcddb::schema::{self, KeyValue, Revision};
use crate::etcddb::status::key_hash;
use crate::etcddb::Db;
use crate::spill::{keep_all, keep_last_per_key, Keyed, LastPerKey, Record, Sorter};

/// Entries held in memory before a sorted run goes to disk: about 8 MiB (as many wanted
/// revisions: 3 MiB).
pub const ENTRIES_IN_MEMORY: usize = 1 << 17;

/// Resource and namespace names, numbered in the order first seen.
#[derive(Default)]
pub struct Groups {
    by_name: HashMap<(String, String), u32>,
    pub names: Vec<(String, String)>,
}

impl Groups {
    fn of(&mut self, key: &[u8]) -> u32 {
        let name = k8s::classify(key);
        if let Some(&i) = self.by_name.get(&name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.clone());
        self.by_name.insert(name, i);
        i
    }

    pub fn name(&self, group: u32) -> (String, String) {
        self.names[group as usize].clone()
    }
}

/// One revision of one key: ordered by key hash, then revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub hash: u128,
    pub main: i64,
    pub sub: i64,
    pub group: u32,
    pub bytes: u32,
    pub live: bool,
    pub lease: i64,
    /// Of the value and lease, for `diff` (0 when not asked for).
    pub value_hash: u64,
}

impl Entry {
    pub fn revision(&self) -> Revision {
        Revision {
            main: self.main,
            sub: self.sub,
        }
    }
}

impl Keyed for Entry {
    fn key(&self) -> u128 {
        self.hash
    }
}

impl Record for Entry {
    const SIZE: usize = 16 + 8 + 8 + 4 + 4 + 1 + 8 + 8;

    fn put(&self, o: &mut [u8]) {
        o[0..16].copy_from_slice(&self.hash.to_le_bytes());
        o[16..24].copy_from_slice(&self.main.to_le_bytes());
        o[24..32].copy_from_slice(&self.sub.to_le_bytes());
        o[32..36].copy_from_slice(&self.group.to_le_bytes());
        o[36..40].copy_from_slice(&self.bytes.to_le_bytes());
        o[40] = u8::from(self.live);
        o[41..49].copy_from_slice(&self.lease.to_le_bytes());
        o[49..57].copy_from_slice(&self.value_hash.to_le_bytes());
    }

    fn get(b: &[u8]) -> Entry {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        Entry {
            hash: u128::from_le_bytes(b[0..16].try_into().unwrap_or_default()),
            main: u64_at(16) as i64,
            sub: u64_at(24) as i64,
            group: u32_at(32),
            bytes: u32_at(36),
            live: b[40] != 0,
            lease: u64_at(41) as i64,
            value_hash: u64_at(49),
        }
    }
}

fn value_hash(value: &[u8], lease: i64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    lease.hash(&mut h);
    h.finish()
}

/// Every key's newest entry, in key hash order.
pub type Newest = LastPerKey<Entry>;

/// One walk: each key's newest entry (with a hash of its value when `hash_values`), the
/// resource and namespace names, the walk's facts. `cap`: entries held in memory.
pub fn index(db: &Db, hash_values: bool, cap: usize) -> Result<(Newest, Groups, Facts), String> {
    let mut groups = Groups::default();
    let mut sorter = Sorter::new(cap, keep_last_per_key);
    let mut failed = None;
    let facts = keyspace::walk(db, &mut |e| {
        if failed.is_some() {
            return;
        }
        let entry = Entry {
            hash: key_hash(e.kv.key),
            main: e.revision.main,
            sub: e.revision.sub,
            group: groups.of(e.kv.key),
            bytes: u32::try_from(e.kv.value.len()).unwrap_or(u32::MAX),
            live: !e.tombstone,
            lease: e.kv.lease,
            value_hash: if hash_values && !e.tombstone {
                value_hash(e.kv.value, e.kv.lease)
            } else {
                0
            },
        };
        failed = sorter.push(entry).err();
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok((LastPerKey::of(sorter.finish()?), groups, facts))
}

/// A revision a second walk looks for, with what it is wanted for (a bit of `tags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    pub revision: Revision,
    pub tags: u8,
}

impl Record for Wanted {
    const SIZE: usize = 17;

    fn put(&self, o: &mut [u8]) {
        o[0..8].copy_from_slice(&self.revision.main.to_le_bytes());
        o[8..16].copy_from_slice(&self.revision.sub.to_le_bytes());
        o[16] = self.tags;
    }

    fn get(b: &[u8]) -> Wanted {
        let i64_at = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Wanted {
            revision: Revision {
                main: i64_at(0),
                sub: i64_at(8),
            },
            tags: b[16],
        }
    }
}

/// The revisions a second walk looks for, gathered in any order.
pub fn wanted(cap: usize) -> Sorter<Wanted> {
    Sorter::new(cap, keep_all)
}

/// One pair of the `key` bucket in a walk beside the wanted revisions.
pub struct Pair<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub revision: Revision,
    /// What it is wanted for (0: not wanted).
    pub tags: u8,
}

impl<'a> Pair<'a> {
    /// The key-value of a wanted pair, as `keyspace::walk` would decode it.
    pub fn wanted_kv(&self) -> Option<KeyValue<'a>> {
        if self.tags == 0 {
            return None;
        }
        KeyValue::decode(self.value).filter(|kv| !kv.key.is_empty())
    }
}

/// Wanted revisions up to this many are found by point lookups (a few pages each); more take a
/// walk of the whole `key` bucket, which reads every page once.
pub const LOOKUPS: u64 = 1024;

/// Calls `on` with the pair of each wanted revision (their tags merged), in revision order: by
/// point lookups when at most [`LOOKUPS`] were pushed, else by [`walk_wanted`]. A revision the
/// `key` bucket does not hold is skipped.
pub fn find_wanted(
    db: &Db,
    wanted: Sorter<Wanted>,
    on: &mut dyn FnMut(&Pair<'_>),
) -> Result<(), String> {
    find_wanted_with(db, wanted, LOOKUPS, on)
}

fn find_wanted_with(
    db: &Db,
    wanted: Sorter<Wanted>,
    lookups: u64,
    on: &mut dyn FnMut(&Pair<'_>),
) -> Result<(), String> {
    if wanted.pushed() > lookups {
        return walk_wanted(db, wanted, &mut |p| {
            if p.tags != 0 {
                on(p)
            }
        });
    }
    let mut merged: Vec<Wanted> = Vec::new();
    for w in wanted.finish()? {
        let w = w?;
        match merged.last_mut() {
            Some(last) if last.revision == w.revision => last.tags |= w.tags,
            _ => merged.push(w),
        }
    }
    for w in merged {
        let live = w.revision.to_bytes();
        let mut tombstone = live.to_vec();
        tombstone.push(schema::TOMBSTONE);
        for key in [&live[..], &tombstone] {
            if let Some(value) = lookup::get(db, schema::KEY, key)? {
                on(&Pair {
                    key,
                    value: &value,
                    revision: w.revision,
                    tags: w.tags,
                });
                break;
            }
        }
    }
    Ok(())
}

/// Walks the `key` bucket's pairs in revision order beside the wanted revisions (sorted):
/// `on` sees every pair with its revision and the tags it is wanted for.
pub fn walk_wanted(
    db: &Db,
    wanted: Sorter<Wanted>,
    on: &mut dyn FnMut(&Pair<'_>),
) -> Result<(), String> {
    let mut wanted = wanted.finish()?.peekable();
    let mut failed = None;
    keyspace::walk_key_pairs(db, &mut |k, v| {
        let Some(rev) = Revision::parse(k) else {
            return;
        };
        let mut tags = 0;
        while let Some(w) = wanted.peek() {
            match w {
                Ok(w) if w.revision < rev => {}
                Ok(w) if w.revision == rev => tags |= w.tags,
                Ok(_) => break,
                Err(e) => {
                    failed.get_or_insert_with(|| e.clone());
                    break;
                }
            }
            wanted.next();
        }
        on(&Pair {
            key: k,
            value: v,
            revision: rev,
            tags,
        });
    })?;
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_what_the_walk_finds() {
        let bytes = crate::etcddb::tests::sample_db(1024, 3000);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.db");
        std::fs::write(&path, &bytes).unwrap();
        let db = Db::open(std::fs::File::open(&path).unwrap(), bytes.len() as u64).unwrap();
        let found = |lookups: u64| {
            let mut w = wanted(2);
            for (main, tags) in [(2999, 1), (9, 2), (3, 1), (9, 4), (5000, 1), (100, 2)] {
                w.push(Wanted {
                    revision: Revision { main, sub: 0 },
                    tags,
                })
                .unwrap();
            }
            let mut got = Vec::new();
            assert_eq!(w.pushed(), 6);
            find_wanted_with(&db, w, lookups, &mut |p| {
                got.push((p.revision.main, p.tags, p.value.to_vec()))
            })
            .unwrap();
            got
        };
        let by_lookups = found(LOOKUPS);
        let mains: Vec<_> = by_lookups.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(
            mains,
            [(3, 1), (9, 6), (100, 2), (2999, 1)],
            "absent 5000 skipped"
        );
        assert_eq!(by_lookups[1].2, vec![b'a' + 9; 5000], "an overflow value");
        assert_eq!(found(0), by_lookups, "the walk, with no lookups allowed");
    }

    #[test]
    fn entries_and_wanted_revisions_read_back_as_written() {
        let e = Entry {
            hash: u128::MAX - 5,
            main: 1 << 40,
            sub: 3,
            group: 7,
            bytes: 24 << 10,
            live: true,
            lease: -2,
            value_hash: 99,
        };
        let mut b = vec![0u8; Entry::SIZE];
        e.put(&mut b);
        assert_eq!(Entry::get(&b), e);
        let w = Wanted {
            revision: Revision { main: 12, sub: 1 },
            tags: 4,
        };
        let mut b = vec![0u8; Wanted::SIZE];
        w.put(&mut b);
        assert_eq!(Wanted::get(&b), w);
    }
}
