//! The tree walk over the page digests: `db::check_and_walk`'s rules in the same order, and
//! the status from each leaf's digest in key order. Any error that check would report ends
//! the fold with a reason (the read-back check then says what is wrong); nothing is
//! reported here.

use super::super::db::{not_above, not_below, Bits, MAX_DEPTH};
use super::super::meta::Meta;
use super::super::page::{
    branch_elements, bucket_root, leaf_elements, u64_at, BucketRoot, Header, FLAG_BRANCH,
    FLAG_FREELIST, FLAG_LEAF, HEADER_LEN, NO_FREELIST,
};
use super::super::status::{Acc, DbStatus};
use super::digests::{Digest, Reader};

struct Fold {
    meta: Meta,
    digests: Reader,
    reachable: Bits,
    freed: Option<Bits>,
    acc: Acc,
}

/// The status of the database the digests describe, or why the fold cannot vouch for it.
pub(super) fn status(meta: Meta, digests: Reader) -> Result<DbStatus, String> {
    let mut f = Fold {
        meta,
        digests,
        reachable: Bits::new(meta.pgid),
        freed: None,
        acc: Acc::default(),
    };
    f.reachable.set(0);
    f.reachable.set(1);
    if meta.freelist != NO_FREELIST {
        f.load_freelist()?;
    }
    f.tree(meta.root, None, None, 0, 0)?;
    if let Some(freed) = &f.freed {
        if let Some(i) = (0..meta.pgid).find(|&i| !f.reachable.get(i) && !freed.get(i)) {
            return Err(format!("page {i}: unreachable unfreed"));
        }
    }
    f.acc.into_status(&meta).map_err(|e| e.to_string())
}

impl Fold {
    /// Page `id`'s digest, and the pages it spans.
    fn page(&mut self, id: u64) -> Result<(Digest, u64), String> {
        if id >= self.meta.pgid {
            return Err(format!("page {id}: out of bounds: {}", self.meta.pgid));
        }
        let d = self
            .digests
            .get(id)?
            .ok_or_else(|| format!("page {id}: no digest"))?;
        let overflow = match &d {
            Digest::Leaf { overflow, .. } => *overflow,
            Digest::Whole(page) => Header::parse(page).map_or(0, |h| h.overflow),
            Digest::Unusable(why) => return Err(why.clone()),
        };
        Ok((d, u64::from(overflow)))
    }

    fn load_freelist(&mut self) -> Result<(), String> {
        let id = self.meta.freelist;
        let (d, overflow) = self.page(id)?;
        for i in 0..=overflow {
            self.reachable.set(id + i);
        }
        let Digest::Whole(page) = d else {
            return Err(format!("page {id}: the meta names it the freelist"));
        };
        let h = Header::parse(&page).ok_or("freelist: no header")?;
        if h.flags != FLAG_FREELIST {
            return Err(format!("page {id}: the meta names it the freelist"));
        }
        let (count, start) = if h.count == 0xFFFF {
            (u64_at(&page, HEADER_LEN).unwrap_or(0), HEADER_LEN + 8)
        } else {
            (u64::from(h.count), HEADER_LEN)
        };
        let fits = (page.len() - start.min(page.len())) as u64 / 8;
        if count > fits {
            return Err(format!("page {id}: the freelist claims more ids than fit"));
        }
        let mut freed = Bits::new(self.meta.pgid);
        for k in 0..count {
            let free = u64_at(&page, start + 8 * k as usize).unwrap_or(0);
            if free < self.meta.pgid && freed.get(free) {
                return Err(format!("page {free}: already freed"));
            }
            freed.set(free);
        }
        self.freed = Some(freed);
        Ok(())
    }

    /// The subtree at page `id`, keys in `[lower, upper)`: its largest key.
    fn tree(
        &mut self,
        id: u64,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        level: usize,
        nesting: usize,
    ) -> Result<Option<Vec<u8>>, String> {
        if level + nesting > MAX_DEPTH {
            return Err(format!("page {id}: the tree is too deep"));
        }
        let (d, overflow) = self.page(id)?;
        for i in 0..=overflow {
            if self.reachable.get(id + i) {
                return Err(format!("page {}: multiple references", id + i));
            }
            self.reachable.set(id + i);
        }
        if self.freed.as_ref().is_some_and(|f| f.get(id)) {
            return Err(format!("page {id}: reachable freed"));
        }
        match d {
            Digest::Leaf {
                first, last, pairs, ..
            } => {
                if pairs.count == 0 {
                    return Ok(None);
                }
                // Its own keys were checked in order where it streamed by.
                if misordered(0, &first, lower, None) || misordered(0, &last, None, upper) {
                    return Err(format!("page {id}: keys out of order"));
                }
                match nesting {
                    0 => return Err("a top-level key that is not a bucket".into()),
                    1 => self.acc.leaf(&pairs),
                    _ => {} // nested deeper: not in etcdutl's status
                }
                Ok(Some(last))
            }
            Digest::Whole(page) => {
                let h = Header::parse(&page).ok_or("no header")?;
                match h.flags {
                    FLAG_BRANCH => self.branch(id, &page, lower, upper, level, nesting),
                    FLAG_LEAF => {
                        let elems = leaf_elements(&page).map_err(|e| format!("page {id}: {e}"))?;
                        let mut prev = lower;
                        for (i, e) in elems.iter().enumerate() {
                            if misordered(i, e.key, prev, upper) {
                                return Err(format!("page {id}: keys out of order"));
                            }
                            prev = Some(e.key);
                            self.element(nesting, e.key, e.value, e.is_bucket())?;
                        }
                        Ok(elems.last().map(|e| e.key.to_vec()))
                    }
                    _ => Err(format!("page {id}: invalid type: {}", h.type_name())),
                }
            }
            Digest::Unusable(why) => Err(why),
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
    ) -> Result<Option<Vec<u8>>, String> {
        let elems = branch_elements(page).map_err(|e| format!("page {id}: {e}"))?;
        if elems.is_empty() {
            return Err(format!("page {id}: empty branch page"));
        }
        let mut running: Option<Vec<u8>> = lower.map(<[u8]>::to_vec);
        let mut max = None;
        for (i, e) in elems.iter().enumerate() {
            if misordered(i, e.key, running.as_deref(), upper) {
                return Err(format!("page {id}: keys out of order"));
            }
            let child_upper = elems.get(i + 1).map(|n| n.key).or(upper);
            max = self.tree(e.child, Some(e.key), child_upper, level + 1, nesting)?;
            if max.is_some() {
                running.clone_from(&max);
            }
        }
        Ok(max)
    }

    /// One element of a bucket at `nesting`, as `db::Walk::element`: into the status, and
    /// into its sub-bucket.
    fn element(
        &mut self,
        nesting: usize,
        key: &[u8],
        value: &[u8],
        is_bucket: bool,
    ) -> Result<(), String> {
        self.acc.element(nesting, key, value, is_bucket);
        if !is_bucket {
            return Ok(());
        }
        if nesting + 1 > MAX_DEPTH {
            return Err("buckets nested too deep".into());
        }
        match bucket_root(value)? {
            BucketRoot::Page(root) => {
                self.tree(root, None, None, 0, nesting + 1)?;
            }
            BucketRoot::Inline(page) => {
                match Header::parse(page) {
                    Some(h) if h.flags == FLAG_LEAF => {}
                    _ => return Err("an inline bucket that is not a leaf page".into()),
                }
                for e in leaf_elements(page)? {
                    self.element(nesting + 1, e.key, e.value, e.is_bucket())?;
                }
            }
        }
        Ok(())
    }
}

/// Key `i` of a page breaks the order rules (`db::not_above`, `db::not_below`).
fn misordered(i: usize, key: &[u8], prev: Option<&[u8]>, upper: Option<&[u8]>) -> bool {
    prev.is_some_and(|p| not_above(i, key, p)) || upper.is_some_and(|u| not_below(key, u))
}
