//! Point lookups: the value under one key of one top-level bucket, found by descending the
//! B+tree from the meta page's root as bbolt's cursor does (a few pages per key) instead of a
//! walk of the whole file. For readers that already walked and checked the file once and now
//! need a few values back by key (`inspect`'s names of the largest objects and newest deletes).
//!
//! Bad input still never panics and never reads outside the file: `Db::read_page` checks
//! every page id against the high-water mark, element bounds are checked by the page parsers,
//! and the depth is bounded.

use super::db::Db;
use super::page::{
    branch_elements, bucket_root, leaf_elements, BucketRoot, Header, FLAG_BRANCH, FLAG_LEAF,
};

/// Deeper than any real bbolt tree (etcd dbs are 3–5 levels); bounds the descent on bad input.
const MAX_DEPTH: usize = 64;

/// The value stored under `key` in the top-level bucket `bucket`; `None` when the bucket or
/// the key is absent (or `key` names a sub-bucket).
pub fn get(db: &Db, bucket: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some(header) = find(db, db.read_page(db.meta().root)?, bucket, true)? else {
        return Ok(None);
    };
    let start = match bucket_root(&header)? {
        BucketRoot::Inline(page) => page.to_vec(),
        BucketRoot::Page(id) => db.read_page(id)?,
    };
    find(db, start, key, false)
}

/// Descends from the page image `page` to the leaf that would hold `key` and returns its
/// value when an element of that kind (`bucket`: a sub-bucket, else a plain value) is there.
fn find(db: &Db, mut page: Vec<u8>, key: &[u8], bucket: bool) -> Result<Option<Vec<u8>>, String> {
    for _ in 0..MAX_DEPTH {
        let h = Header::parse(&page).ok_or("a page shorter than its header")?;
        if h.flags & FLAG_BRANCH != 0 {
            let elems = branch_elements(&page)?;
            // The last child whose first key is not after `key` (the first one when every
            // key is after it: `key` is absent, and the leaf says so).
            let i = elems.partition_point(|e| e.key <= key).saturating_sub(1);
            let Some(child) = elems.get(i).map(|e| e.child) else {
                return Err(format!("page {}: a branch without elements", h.id));
            };
            page = db.read_page(child)?;
        } else if h.flags & FLAG_LEAF != 0 {
            let elems = leaf_elements(&page)?;
            let found = elems
                .binary_search_by(|e| e.key.cmp(key))
                .ok()
                .map(|i| elems[i])
                .filter(|e| e.is_bucket() == bucket);
            return Ok(found.map(|e| e.value.to_vec()));
        } else {
            return Err(format!(
                "page {}: a {} page inside a tree",
                h.id,
                h.type_name()
            ));
        }
    }
    Err(format!("the tree is deeper than {MAX_DEPTH} levels"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcddb::schema::Revision;
    use crate::etcddb::tests::sample_db;
    use crate::etcddb::writer::{new_db, Item};

    fn open(bytes: &[u8]) -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        std::fs::write(&p, bytes).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        (d, Db::open(f, bytes.len() as u64).unwrap())
    }

    #[test]
    fn finds_every_key_through_branch_and_overflow_pages_and_nothing_else() {
        for page_size in [4096, 1024] {
            let bytes = sample_db(page_size, 3000);
            let (_d, db) = open(&bytes);
            let root = db.read_page(db.meta().root).unwrap();
            assert_eq!(Header::parse(&root).unwrap().flags & FLAG_LEAF, FLAG_LEAF);
            for i in 1..=3000i64 {
                let rev = Revision { main: i, sub: 0 }.to_bytes();
                let len = if i % 9 == 0 {
                    5000
                } else {
                    40 + (i % 13) as usize
                };
                let want = vec![b'a' + (i % 26) as u8; len];
                assert_eq!(get(&db, b"key", &rev).unwrap(), Some(want), "revision {i}");
            }
            for absent in [0i64, 3001, i64::MAX] {
                let rev = Revision {
                    main: absent,
                    sub: 0,
                }
                .to_bytes();
                assert_eq!(get(&db, b"key", &rev).unwrap(), None);
            }
            let between = Revision { main: 17, sub: 1 }.to_bytes();
            assert_eq!(get(&db, b"key", &between).unwrap(), None);
            // A bucket small enough to be stored inline in the root's leaf.
            assert_eq!(
                get(&db, b"cluster", b"clusterVersion").unwrap(),
                Some(b"3.5.0".to_vec())
            );
            assert_eq!(get(&db, b"cluster", b"nope").unwrap(), None);
            assert_eq!(get(&db, b"no-such-bucket", b"x").unwrap(), None);
            assert_eq!(
                get(&db, b"meta", b"key").unwrap(),
                None,
                "not in that bucket"
            );
            // In the root, `key` names a sub-bucket: found as one, never as a plain value.
            let root = || db.read_page(db.meta().root).unwrap();
            assert!(find(&db, root(), b"key", true).unwrap().is_some());
            assert_eq!(find(&db, root(), b"key", false).unwrap(), None);
        }
    }

    #[test]
    fn a_tombstone_is_found_under_its_own_key() {
        let mut tomb = Revision { main: 5, sub: 0 }.to_bytes().to_vec();
        tomb.push(b't');
        let live = Revision { main: 4, sub: 0 }.to_bytes();
        let bytes = new_db(
            4096,
            &[(
                b"key",
                vec![Item::new(&live, b"live"), Item::new(&tomb, b"gone")],
            )],
        )
        .unwrap();
        let (_d, db) = open(&bytes);
        assert_eq!(get(&db, b"key", &tomb).unwrap(), Some(b"gone".to_vec()));
        assert_eq!(get(&db, b"key", &tomb[..17]).unwrap(), None);
        assert_eq!(get(&db, b"key", &live).unwrap(), Some(b"live".to_vec()));
    }
}
