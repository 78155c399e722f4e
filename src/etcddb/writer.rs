//! Append-only copy-on-write commit (restore-spec B.8): changes to a few top-level buckets are
//! written as new pages after the high-water mark, then one new meta page makes them live.
//! No page the current meta references is ever written, so until the meta write the file still
//! holds the old database intact. Use it on a copy (the restore's staging dir), never on a
//! source snapshot.
//!
//! Node building ([`build_tree`], [`inline_value`]) is pure; [`commit`] does the I/O.

use std::os::unix::fs::FileExt;

use super::db::Db;
use super::meta::Meta;
use super::page::{
    branch_elements, bucket_root, bucket_sequence, leaf_elements, BucketRoot, Header,
    BUCKET_HEADER_LEN, ELEMENT_LEN, FLAG_BRANCH, FLAG_LEAF, HEADER_LEN, LEAF_FLAG_BUCKET,
    NO_FREELIST,
};

/// One leaf item: key, value, element flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub flags: u32,
}

impl Item {
    pub fn new(key: &[u8], value: &[u8]) -> Item {
        Item {
            key: key.to_vec(),
            value: value.to_vec(),
            flags: 0,
        }
    }

    fn leaf_size(&self) -> usize {
        ELEMENT_LEN + self.key.len() + self.value.len()
    }
}

/// What to do to one top-level bucket.
#[derive(Debug, Clone)]
pub enum Change {
    /// The bucket holds exactly these items afterwards (created if missing). Keys sorted and
    /// unique. For small buckets (`members`, `members_removed`).
    Replace(Vec<Item>),
    /// Insert or overwrite these keys, keep the rest (created if missing). The bucket is read
    /// whole: small buckets only (`meta`).
    Put(Vec<Item>),
    /// Add one key greater than every key in the bucket: the right-most path is copied, the
    /// rest of the tree stays where it is (`key`, for a revision bump).
    Append(Item),
    /// Create the bucket empty if it does not exist; otherwise leave it alone.
    Ensure,
}

/// Reads errors and inconsistencies met while reading what a commit must rewrite.
pub type WriteResult<T> = Result<T, String>;

/// Pages to write, allocated from the high-water mark up.
struct Alloc {
    page_size: usize,
    next: u64,
    pages: Vec<(u64, Vec<u8>)>,
}

impl Alloc {
    fn node(&mut self, flags: u16, count: usize, mut body: Vec<u8>) -> WriteResult<u64> {
        let pages = body.len().div_ceil(self.page_size).max(1);
        body.resize(pages * self.page_size, 0);
        let id = self.next;
        Header {
            id,
            flags,
            count: u16::try_from(count).map_err(|_| format!("{count} elements in one node"))?,
            overflow: (pages - 1) as u32,
        }
        .write(&mut body);
        self.next += pages as u64;
        self.pages.push((id, body));
        Ok(id)
    }
}

/// Serialises a leaf node's elements and data (header left zero for the caller).
fn leaf_image(items: &[&Item]) -> Vec<u8> {
    let head = HEADER_LEN + items.len() * ELEMENT_LEN;
    let mut b = vec![0u8; head];
    for (i, it) in items.iter().enumerate() {
        let off = HEADER_LEN + i * ELEMENT_LEN;
        let pos = (b.len() - off) as u32;
        b[off..off + 4].copy_from_slice(&it.flags.to_le_bytes());
        b[off + 4..off + 8].copy_from_slice(&pos.to_le_bytes());
        b[off + 8..off + 12].copy_from_slice(&(it.key.len() as u32).to_le_bytes());
        b[off + 12..off + 16].copy_from_slice(&(it.value.len() as u32).to_le_bytes());
        b.extend_from_slice(&it.key);
        b.extend_from_slice(&it.value);
    }
    b
}

fn branch_image(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let head = HEADER_LEN + children.len() * ELEMENT_LEN;
    let mut b = vec![0u8; head];
    for (i, (key, child)) in children.iter().enumerate() {
        let off = HEADER_LEN + i * ELEMENT_LEN;
        let pos = (b.len() - off) as u32;
        b[off..off + 4].copy_from_slice(&pos.to_le_bytes());
        b[off + 4..off + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        b[off + 8..off + 16].copy_from_slice(&child.to_le_bytes());
        b.extend_from_slice(key);
    }
    b
}

fn branch_size(children: &[(Vec<u8>, u64)]) -> usize {
    HEADER_LEN
        + children
            .iter()
            .map(|(k, _)| ELEMENT_LEN + k.len())
            .sum::<usize>()
}

/// Splits a sequence into runs whose size stays within `limit` (a run holds at least one).
fn pack<T>(items: &[T], base: usize, size: impl Fn(&T) -> usize, limit: usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut used) = (0, base);
    for (i, it) in items.iter().enumerate() {
        let s = size(it);
        if i > start && used + s > limit {
            runs.push(&items[start..i]);
            start = i;
            used = base;
        }
        used += s;
    }
    if start < items.len() || items.is_empty() {
        runs.push(&items[start..]);
    }
    runs
}

/// Builds a tree holding `items` (sorted) and returns its root page id.
fn build_tree(items: &[Item], alloc: &mut Alloc) -> WriteResult<u64> {
    let ps = alloc.page_size;
    let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
    for run in pack(items, HEADER_LEN, Item::leaf_size, ps) {
        let refs: Vec<&Item> = run.iter().collect();
        let id = alloc.node(FLAG_LEAF, run.len(), leaf_image(&refs))?;
        level.push((run.first().map(|i| i.key.clone()).unwrap_or_default(), id));
    }
    while level.len() > 1 {
        let mut up = Vec::new();
        for run in pack(&level, HEADER_LEN, |(k, _)| ELEMENT_LEN + k.len(), ps) {
            let id = alloc.node(FLAG_BRANCH, run.len(), branch_image(run))?;
            up.push((run[0].0.clone(), id));
        }
        level = up;
    }
    Ok(level[0].1)
}

/// True when bbolt would store a bucket with these items inline (B.6).
pub fn fits_inline(items: &[Item], page_size: usize) -> bool {
    items.iter().all(|i| i.flags & LEAF_FLAG_BUCKET == 0)
        && HEADER_LEN + items.iter().map(Item::leaf_size).sum::<usize>() <= page_size / 4
}

/// The value of an inline bucket holding `items`.
pub fn inline_value(items: &[Item], sequence: u64) -> Vec<u8> {
    let mut v = vec![0u8; BUCKET_HEADER_LEN];
    v[8..16].copy_from_slice(&sequence.to_le_bytes());
    let refs: Vec<&Item> = items.iter().collect();
    let mut page = leaf_image(&refs);
    Header {
        id: 0,
        flags: FLAG_LEAF,
        count: items.len() as u16,
        overflow: 0,
    }
    .write(&mut page);
    v.extend(page);
    v
}

fn tree_value(root: u64, sequence: u64) -> Vec<u8> {
    let mut v = vec![0u8; BUCKET_HEADER_LEN];
    v[0..8].copy_from_slice(&root.to_le_bytes());
    v[8..16].copy_from_slice(&sequence.to_le_bytes());
    v
}

/// A bucket value for `items`: inline when bbolt would inline it, else a new tree.
fn bucket_value(items: &[Item], sequence: u64, alloc: &mut Alloc) -> WriteResult<Vec<u8>> {
    if fits_inline(items, alloc.page_size) {
        Ok(inline_value(items, sequence))
    } else {
        Ok(tree_value(build_tree(items, alloc)?, sequence))
    }
}

/// Every item of the bucket whose value is `value`, in key order. For small buckets and the
/// root bucket; depth-bounded, a page met twice is an error.
pub fn read_items(db: &Db, value: &[u8]) -> WriteResult<Vec<Item>> {
    let mut out = Vec::new();
    match bucket_root(value)? {
        BucketRoot::Inline(page) => push_leaf(page, &mut out)?,
        BucketRoot::Page(root) => read_tree(db, root, 0, &mut out)?,
    }
    Ok(out)
}

fn push_leaf(page: &[u8], out: &mut Vec<Item>) -> WriteResult<()> {
    for e in leaf_elements(page)? {
        out.push(Item {
            key: e.key.to_vec(),
            value: e.value.to_vec(),
            flags: e.flags,
        });
    }
    Ok(())
}

fn read_tree(db: &Db, id: u64, depth: usize, out: &mut Vec<Item>) -> WriteResult<()> {
    if depth > 64 {
        return Err(format!("page {id}: tree too deep"));
    }
    let page = db.read_page(id)?;
    let h = Header::parse(&page).ok_or("short page")?;
    match h.flags {
        FLAG_LEAF => push_leaf(&page, out).map_err(|e| format!("page {id}: {e}")),
        FLAG_BRANCH => {
            for e in branch_elements(&page).map_err(|e| format!("page {id}: {e}"))? {
                read_tree(db, e.child, depth + 1, out)?;
            }
            Ok(())
        }
        _ => Err(format!("page {id}: not a branch or leaf page")),
    }
}

/// Appends `item` (greater than every key) to the tree under `id`; returns the entries that
/// replace this subtree in its parent: one (a changed copy) or two (this subtree unchanged,
/// plus a new right sibling).
fn append_path(
    db: &Db,
    id: u64,
    item: &Item,
    depth: usize,
    alloc: &mut Alloc,
) -> WriteResult<Vec<(Vec<u8>, u64)>> {
    if depth > 64 {
        return Err(format!("page {id}: tree too deep"));
    }
    let ps = alloc.page_size;
    let page = db.read_page(id)?;
    let h = Header::parse(&page).ok_or("short page")?;
    match h.flags {
        FLAG_LEAF => {
            let elems = leaf_elements(&page).map_err(|e| format!("page {id}: {e}"))?;
            let first = elems.first().map(|e| e.key.to_vec()).unwrap_or_default();
            if let Some(last) = elems.last() {
                if last.key >= item.key.as_slice() {
                    return Err(format!(
                        "the appended key {} is not above the last key {}",
                        hex::encode(&item.key),
                        hex::encode(last.key)
                    ));
                }
            }
            let mut items: Vec<Item> = elems
                .iter()
                .map(|e| Item {
                    key: e.key.to_vec(),
                    value: e.value.to_vec(),
                    flags: e.flags,
                })
                .collect();
            items.push(item.clone());
            let size = HEADER_LEN + items.iter().map(Item::leaf_size).sum::<usize>();
            if size <= ps || elems.is_empty() {
                let refs: Vec<&Item> = items.iter().collect();
                let new = alloc.node(FLAG_LEAF, items.len(), leaf_image(&refs))?;
                let key = if elems.is_empty() {
                    item.key.clone()
                } else {
                    first
                };
                Ok(vec![(key, new)])
            } else {
                let new = alloc.node(FLAG_LEAF, 1, leaf_image(&[item]))?;
                Ok(vec![(first, id), (item.key.clone(), new)])
            }
        }
        FLAG_BRANCH => {
            let elems = branch_elements(&page).map_err(|e| format!("page {id}: {e}"))?;
            let Some(last) = elems.last() else {
                return Err(format!("page {id}: empty branch page"));
            };
            let below = append_path(db, last.child, item, depth + 1, alloc)?;
            let mut children: Vec<(Vec<u8>, u64)> = elems[..elems.len() - 1]
                .iter()
                .map(|e| (e.key.to_vec(), e.child))
                .collect();
            let first = elems[0].key.to_vec();
            let grew = below.len() == 2;
            children.extend(below.iter().cloned());
            if !grew || branch_size(&children) <= ps {
                let new = alloc.node(FLAG_BRANCH, children.len(), branch_image(&children))?;
                Ok(vec![(first, new)])
            } else {
                // This branch is full: it stays as it is, the new child gets a new sibling.
                let sibling = &below[1..];
                let new = alloc.node(FLAG_BRANCH, 1, branch_image(sibling))?;
                Ok(vec![(first, id), (sibling[0].0.clone(), new)])
            }
        }
        _ => Err(format!("page {id}: not a branch or leaf page")),
    }
}

/// The new value of a bucket after `item` is appended.
fn append_value(db: &Db, value: &[u8], item: &Item, alloc: &mut Alloc) -> WriteResult<Vec<u8>> {
    let sequence = bucket_sequence(value);
    match bucket_root(value)? {
        BucketRoot::Inline(_) => {
            let mut items = read_items(db, value)?;
            if items.last().is_some_and(|l| l.key >= item.key) {
                return Err("the appended key is not above the last key".into());
            }
            items.push(item.clone());
            bucket_value(&items, sequence, alloc)
        }
        BucketRoot::Page(root) => {
            let mut top = append_path(db, root, item, 0, alloc)?;
            let root = if top.len() == 1 {
                top.remove(0).1
            } else {
                alloc.node(FLAG_BRANCH, top.len(), branch_image(&top))?
            };
            Ok(tree_value(root, sequence))
        }
    }
}

/// Applies `changes` to the db in `db` (opened read-write) in one append-only commit and
/// returns the new active meta. The file grows by the new pages; nothing below the old
/// high-water mark is written except the meta page of the new transaction.
pub fn commit(db: &Db, changes: &[(&[u8], Change)]) -> WriteResult<Meta> {
    let old = *db.meta();
    let mut alloc = Alloc {
        page_size: db.page_size(),
        next: old.pgid,
        pages: Vec::new(),
    };
    let mut top = read_items(db, &tree_value(old.root, old.root_sequence))?;
    for (name, change) in changes {
        let pos = top.binary_search_by(|it| it.key.as_slice().cmp(name));
        if let Ok(i) = pos {
            if top[i].flags & LEAF_FLAG_BUCKET == 0 {
                return Err(format!(
                    "top-level key {} is not a bucket",
                    String::from_utf8_lossy(name)
                ));
            }
        }
        let existing = pos.ok().map(|i| top[i].value.clone());
        let sequence = existing.as_deref().map_or(0, bucket_sequence);
        let value = match (change, existing) {
            (Change::Ensure, Some(_)) => continue,
            (Change::Ensure, None) => inline_value(&[], 0),
            (Change::Replace(items), _) => bucket_value(items, sequence, &mut alloc)?,
            (Change::Put(puts), existing) => {
                let mut items = match &existing {
                    Some(v) => read_items(db, v)?,
                    None => Vec::new(),
                };
                for p in puts {
                    match items.binary_search_by(|it| it.key.cmp(&p.key)) {
                        Ok(i) => items[i] = p.clone(),
                        Err(i) => items.insert(i, p.clone()),
                    }
                }
                bucket_value(&items, sequence, &mut alloc)?
            }
            (Change::Append(item), Some(v)) => append_value(db, &v, item, &mut alloc)?,
            (Change::Append(item), None) => {
                bucket_value(std::slice::from_ref(item), 0, &mut alloc)?
            }
        };
        let new = Item {
            key: name.to_vec(),
            value,
            flags: LEAF_FLAG_BUCKET,
        };
        match pos {
            Ok(i) => top[i] = new,
            Err(i) => top.insert(i, new),
        }
    }
    let root = build_tree(&top, &mut alloc)?;

    let file = db.file();
    let ps = alloc.page_size as u64;
    let none = std::path::Path::new("");
    for (id, bytes) in &alloc.pages {
        crate::failpoint::check("db:write", none)
            .and_then(|()| file.write_all_at(bytes, id * ps))
            .map_err(|e| format!("cannot write page {id}: {e}"))?;
    }
    crate::failpoint::check("db:fsync", none)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("cannot sync the new pages: {e}"))?;
    let new = Meta {
        page_id: (old.txid + 1) % 2,
        page_size: old.page_size,
        root,
        root_sequence: old.root_sequence,
        freelist: NO_FREELIST,
        pgid: alloc.next,
        txid: old.txid + 1,
    };
    crate::failpoint::check("db:write", none)
        .and_then(|()| file.write_all_at(&new.encode(), new.page_id * ps))
        .map_err(|e| format!("cannot write the meta page: {e}"))?;
    crate::failpoint::check("db:fsync", none)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("cannot sync the meta page: {e}"))?;
    Ok(new)
}

/// A complete new db image with these top-level buckets (names sorted, items sorted), as a
/// snapshot's db part looks: meta 0 with txid 2, meta 1 with txid 1, no freelist. For the unit
/// tests; the restore never builds a db from scratch.
#[cfg(test)]
pub fn new_db(page_size: u32, buckets: &[(&[u8], Vec<Item>)]) -> WriteResult<Vec<u8>> {
    let mut alloc = Alloc {
        page_size: page_size as usize,
        next: 2,
        pages: Vec::new(),
    };
    let mut top = Vec::new();
    for (name, items) in buckets {
        top.push(Item {
            key: name.to_vec(),
            value: bucket_value(items, 0, &mut alloc)?,
            flags: LEAF_FLAG_BUCKET,
        });
    }
    top.sort_by(|a, b| a.key.cmp(&b.key));
    let root = build_tree(&top, &mut alloc)?;
    let ps = page_size as usize;
    let mut out = vec![0u8; alloc.next as usize * ps];
    for (id, bytes) in &alloc.pages {
        let off = *id as usize * ps;
        out[off..off + bytes.len()].copy_from_slice(bytes);
    }
    for txid in [2u64, 1] {
        let m = Meta {
            page_id: 2 - txid,
            page_size,
            root,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: alloc.next,
            txid,
        };
        let mut page = m.encode();
        page[0..8].copy_from_slice(&m.page_id.to_le_bytes());
        let off = m.page_id as usize * ps;
        out[off..off + ps].copy_from_slice(&page);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_runs_within_the_limit() {
        let sizes = [10, 10, 10, 50, 5];
        let runs = pack(&sizes, 0, |s| *s, 30);
        let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(lens, [3, 1, 1]);
        assert_eq!(pack(&[] as &[usize], 0, |s| *s, 30).len(), 1);
    }

    #[test]
    fn inline_rule_is_a_quarter_page() {
        let small = vec![Item::new(b"k", &[0u8; 900])];
        assert!(fits_inline(&small, 4096));
        let big = vec![Item::new(b"k", &[0u8; 1000])];
        assert!(!fits_inline(&big, 4096));
        assert_eq!(inline_value(&[], 0).len(), 32);
    }
}
