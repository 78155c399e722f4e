//! Reading a bbolt file: pages through `pread` (never a map of the whole file, so memory stays
//! flat in the database size), and one walk that does bbolt's consistency check (restore-spec
//! B.7) while it hands every element, in key order, to a [`Visitor`].
//!
//! Corrupt input never panics and never reads outside the file: every page id is checked
//! against the high-water mark before it is read, every element against its page, recursion is
//! bounded, and a page reached twice is reported and not walked again (so a cycle cannot hang).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::meta::{choose_active, parse_meta, Meta, META_LEN};
use super::page::{
    branch_elements, bucket_root, leaf_elements, u64_at, BucketRoot, Header, FLAG_BRANCH,
    FLAG_FREELIST, FLAG_LEAF, HEADER_LEN, NO_FREELIST,
};

/// Deeper than any real bbolt tree (etcd dbs are 3–5 levels); bounds recursion on bad input.
pub(crate) const MAX_DEPTH: usize = 64;
/// Check errors kept verbatim; the rest are counted.
const MAX_ERRORS_KEPT: usize = 100;

/// Reads the two meta pages of an open db, discovering the page size (restore-spec B.3).
/// `len` is the number of bytes that may be read (a snapshot's trailer excluded).
pub fn read_active_meta(file: &File, len: u64) -> Result<Meta, String> {
    let read_at = |off: u64| -> Result<Vec<u8>, String> {
        if off + META_LEN as u64 > len {
            return Err(format!("file ends before offset {}", off + META_LEN as u64));
        }
        let mut buf = vec![0u8; META_LEN];
        file.read_exact_at(&mut buf, off)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    };
    let meta0 = read_at(0).and_then(|b| parse_meta(&b));
    let meta1 = match &meta0 {
        Ok(m) => read_at(u64::from(m.page_size)).and_then(|b| parse_meta(&b)),
        // Page size unknown: probe meta 1 at 1 KiB·2^i.
        Err(e) => (0..15)
            .map(|i| 1024u64 << i)
            .find_map(|off| read_at(off).and_then(|b| parse_meta(&b)).ok())
            .ok_or_else(|| e.clone()),
    };
    choose_active(meta0, meta1)
}

/// An open bbolt file.
pub struct Db {
    file: File,
    meta: Meta,
}

impl Db {
    /// Opens the db in `file`, of which the first `len` bytes may be read. Fails when the
    /// meta pages are invalid or the file is shorter than the database they describe.
    pub fn open(file: File, len: u64) -> Result<Db, String> {
        let meta = read_active_meta(&file, len)?;
        if meta.db_size() > len {
            return Err(format!(
                "truncated: the database claims {} bytes ({} pages of {}), only {len} are present",
                meta.db_size(),
                meta.pgid,
                meta.page_size
            ));
        }
        Ok(Db { file, meta })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> usize {
        self.meta.page_size as usize
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads logical page `id` with its overflow pages. The whole range must lie below the
    /// high-water mark.
    pub fn read_page(&self, id: u64) -> Result<Vec<u8>, String> {
        let ps = self.page_size();
        if id >= self.meta.pgid {
            return Err(format!(
                "page {id}: beyond the high-water mark {}",
                self.meta.pgid
            ));
        }
        let mut buf = vec![0u8; ps];
        self.file
            .read_exact_at(&mut buf, id * ps as u64)
            .map_err(|e| format!("page {id}: cannot read: {e}"))?;
        let h = Header::parse(&buf).ok_or_else(|| format!("page {id}: no header"))?;
        if h.overflow > 0 {
            let last = id.checked_add(u64::from(h.overflow));
            if last.is_none_or(|l| l >= self.meta.pgid) {
                return Err(format!(
                    "page {id}: {} overflow pages run past the high-water mark {}",
                    h.overflow, self.meta.pgid
                ));
            }
            buf.resize(ps * (1 + h.overflow as usize), 0);
            self.file
                .read_exact_at(&mut buf[ps..], (id + 1) * ps as u64)
                .map_err(|e| format!("page {id}: cannot read its overflow: {e}"))?;
        }
        Ok(buf)
    }
}

/// Receives every element of every bucket, depth first, in key order. `depth` 0 is the root
/// bucket (whose elements are the top-level bucket names), 1 the elements of a top-level
/// bucket, and so on. A sub-bucket's element comes right before the elements inside it.
pub trait Visitor {
    fn element(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool);
}

impl<F: FnMut(usize, &[u8], &[u8], bool)> Visitor for F {
    fn element(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        self(depth, key, value, is_bucket)
    }
}

/// What the check found: empty means consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The first [`MAX_ERRORS_KEPT`] errors, in the order found.
    pub errors: Vec<String>,
    /// All errors, kept or not.
    pub error_count: usize,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.error_count == 0
    }

    fn push(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(e);
        }
    }

    /// All errors as lines, with a note for those not kept.
    pub fn lines(&self) -> Vec<String> {
        let mut v = self.errors.clone();
        if self.error_count > self.errors.len() {
            v.push(format!(
                "... and {} more",
                self.error_count - self.errors.len()
            ));
        }
        v
    }
}

pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    pub(crate) fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub(crate) fn set(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
}

struct Walk<'a> {
    db: &'a Db,
    reachable: Bits,
    /// Pages in a persisted freelist; `None` when the free list is "every unreachable page".
    freed: Option<Bits>,
    report: CheckReport,
    visitor: &'a mut dyn Visitor,
}

/// Key order rules of bbolt ≥ 1.3.7 (B.7 #3), for the walk here and the stream check's fold:
/// key `i` of a page is not above the key before it (the first key may equal its parent's
/// separator, the others must be greater)...
pub(crate) fn not_above(i: usize, key: &[u8], prev: &[u8]) -> bool {
    if i == 0 {
        prev > key
    } else {
        prev >= key
    }
}

/// ... or not below the next separator in its parent.
pub(crate) fn not_below(key: &[u8], upper: &[u8]) -> bool {
    key >= upper
}

/// Checks the whole db as bbolt's `tx.Check` does and visits every element on the way.
pub fn check_and_walk(db: &Db, visitor: &mut dyn Visitor) -> CheckReport {
    let pgid = db.meta.pgid;
    let mut w = Walk {
        db,
        reachable: Bits::new(pgid),
        freed: None,
        report: CheckReport::default(),
        visitor,
    };
    w.reachable.set(0);
    w.reachable.set(1);
    if db.meta.freelist != NO_FREELIST {
        w.load_freelist();
    }
    w.tree(db.meta.root, None, None, 0, 0);
    if let Some(freed) = &w.freed {
        for i in 0..pgid {
            if !w.reachable.get(i) && !freed.get(i) {
                w.report.push(format!("page {i}: unreachable unfreed"));
            }
        }
    }
    w.report
}

impl Walk<'_> {
    fn load_freelist(&mut self) {
        let id = self.db.meta.freelist;
        let mut freed = Bits::new(self.db.meta.pgid);
        let page = match self.db.read_page(id) {
            Ok(p) => p,
            Err(e) => {
                self.report.push(format!("freelist {e}"));
                self.freed = Some(freed);
                return;
            }
        };
        let h = Header::parse(&page).expect("read_page returns whole pages");
        for i in 0..=u64::from(h.overflow) {
            self.reachable.set(id + i);
        }
        if h.flags != FLAG_FREELIST {
            self.report.push(format!(
                "page {id}: the meta names it the freelist, but it is a {} page",
                h.type_name()
            ));
            self.freed = Some(freed);
            return;
        }
        let (count, start) = if h.count == 0xFFFF {
            (u64_at(&page, HEADER_LEN).unwrap_or(0), HEADER_LEN + 8)
        } else {
            (u64::from(h.count), HEADER_LEN)
        };
        let fits = (page.len() - start.min(page.len())) as u64 / 8;
        if count > fits {
            self.report.push(format!(
                "page {id}: the freelist claims {count} ids but has room for {fits}"
            ));
        }
        for k in 0..count.min(fits) {
            let free = u64_at(&page, start + 8 * k as usize).unwrap_or(0);
            if free < self.db.meta.pgid && freed.get(free) {
                self.report.push(format!("page {free}: already freed"));
            }
            freed.set(free);
        }
        self.freed = Some(freed);
    }

    /// Walks the subtree at page `id`; keys must lie in `[lower, upper)`. Returns the largest
    /// key in the subtree. `level` counts pages on this path, `nesting` buckets.
    fn tree(
        &mut self,
        id: u64,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        level: usize,
        nesting: usize,
    ) -> Option<Vec<u8>> {
        let pgid = self.db.meta.pgid;
        if level + nesting > MAX_DEPTH {
            self.report.push(format!(
                "page {id}: the tree is more than {MAX_DEPTH} levels deep"
            ));
            return None;
        }
        if id >= pgid {
            self.report
                .push(format!("page {id}: out of bounds: {pgid}"));
            return None;
        }
        let page = match self.db.read_page(id) {
            Ok(p) => p,
            Err(e) => {
                self.report.push(e);
                return None;
            }
        };
        let h = Header::parse(&page).expect("read_page returns whole pages");
        if self.reachable.get(id) {
            self.report.push(format!("page {id}: multiple references"));
            return None; // walked already: never twice (cycles)
        }
        for i in 0..=u64::from(h.overflow) {
            if i > 0 && self.reachable.get(id + i) {
                self.report
                    .push(format!("page {}: multiple references", id + i));
            }
            self.reachable.set(id + i);
        }
        if self.freed.as_ref().is_some_and(|f| f.get(id)) {
            self.report.push(format!("page {id}: reachable freed"));
        }
        if h.id != id {
            self.report
                .push(format!("page {id}: its header says it is page {}", h.id));
        }
        match h.flags {
            FLAG_BRANCH => self.branch(id, &page, lower, upper, level, nesting),
            FLAG_LEAF => match leaf_elements(&page) {
                Ok(elems) => {
                    let mut prev = lower;
                    for (i, e) in elems.iter().enumerate() {
                        self.order(id, "leaf", i, e.key, prev, upper);
                        prev = Some(e.key);
                        self.element(nesting, e.key, e.value, e.is_bucket());
                    }
                    elems.last().map(|e| e.key.to_vec())
                }
                Err(e) => {
                    self.report.push(format!("page {id}: {e}"));
                    None
                }
            },
            _ => {
                self.report
                    .push(format!("page {id}: invalid type: {}", h.type_name()));
                None
            }
        }
    }

    fn branch(
        &mut self,
        id: u64,
        page: &[u8],
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        level: usize,
        nesting: usize,
    ) -> Option<Vec<u8>> {
        let elems = match branch_elements(page) {
            Ok(e) => e,
            Err(e) => {
                self.report.push(format!("page {id}: {e}"));
                return None;
            }
        };
        if elems.is_empty() {
            self.report.push(format!("page {id}: empty branch page"));
            return None;
        }
        let mut running: Option<Vec<u8>> = lower.map(<[u8]>::to_vec);
        let mut max = None;
        for (i, e) in elems.iter().enumerate() {
            self.order(id, "branch", i, e.key, running.as_deref(), upper);
            let child_upper = elems.get(i + 1).map(|n| n.key).or(upper);
            max = self.tree(e.child, Some(e.key), child_upper, level + 1, nesting);
            if max.is_some() {
                running.clone_from(&max);
            }
        }
        max
    }

    /// Key order rules of bbolt ≥ 1.3.7 (B.7 #3), reported.
    fn order(
        &mut self,
        id: u64,
        kind: &str,
        i: usize,
        key: &[u8],
        prev: Option<&[u8]>,
        upper: Option<&[u8]>,
    ) {
        if let Some(p) = prev.filter(|&p| not_above(i, key, p)) {
            self.report.push(format!(
                "page {id}: key {i} ({}) of this {kind} page is not above the previous key ({})",
                hex::encode(key),
                hex::encode(p)
            ));
        }
        if let Some(u) = upper.filter(|&u| not_below(key, u)) {
            self.report.push(format!(
                "page {id}: key {i} ({}) of this {kind} page is not below the next key in its parent ({})",
                hex::encode(key),
                hex::encode(u)
            ));
        }
    }

    /// One element of a bucket at `nesting`; descends into sub-buckets.
    fn element(&mut self, nesting: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        self.visitor.element(nesting, key, value, is_bucket);
        if !is_bucket {
            return;
        }
        if nesting + 1 > MAX_DEPTH {
            self.report
                .push(format!("buckets nested more than {MAX_DEPTH} deep"));
            return;
        }
        match bucket_root(value) {
            Ok(BucketRoot::Page(root)) => {
                self.tree(root, None, None, 0, nesting + 1);
            }
            // bbolt's check does not look inside inline buckets; reading them safely still
            // needs their bounds checked.
            Ok(BucketRoot::Inline(page)) => match Header::parse(page) {
                Some(h) if h.flags == FLAG_LEAF => match leaf_elements(page) {
                    Ok(elems) => {
                        for e in elems {
                            self.element(nesting + 1, e.key, e.value, e.is_bucket());
                        }
                    }
                    Err(e) => self.report.push(format!(
                        "inline bucket {}: {e}",
                        String::from_utf8_lossy(key)
                    )),
                },
                _ => self.report.push(format!(
                    "inline bucket {}: not a leaf page",
                    String::from_utf8_lossy(key)
                )),
            },
            Err(e) => self
                .report
                .push(format!("bucket {}: {e}", String::from_utf8_lossy(key))),
        }
    }
}
