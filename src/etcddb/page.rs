//! bbolt page layout (restore-spec B.2, B.5, B.6): page headers, branch and leaf elements,
//! bucket values. Pure functions over byte slices; every offset is bounds-checked, so a corrupt
//! page gives an error naming the problem, never a panic or an out-of-bounds read.

pub const HEADER_LEN: usize = 16;
pub const ELEMENT_LEN: usize = 16;
/// `root u64 | sequence u64` in front of every bucket value.
pub const BUCKET_HEADER_LEN: usize = 16;

pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a sub-bucket.
pub const LEAF_FLAG_BUCKET: u32 = 0x01;
/// `meta.freelist` value meaning "no freelist persisted" (etcd's NoFreelistSync).
pub const NO_FREELIST: u64 = u64::MAX;

pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The 16-byte header at the start of every page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        Some(Header {
            id: u64_at(b, 0)?,
            flags: u16_at(b, 8)?,
            count: u16_at(b, 10)?,
            overflow: u32_at(b, 12)?,
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }

    /// bbolt's name for the page type, as its check messages print it.
    pub fn type_name(&self) -> String {
        match self.flags {
            FLAG_BRANCH => "branch".into(),
            FLAG_LEAF => "leaf".into(),
            FLAG_META => "meta".into(),
            FLAG_FREELIST => "freelist".into(),
            f => format!("unknown<{f:02x}>"),
        }
    }
}

/// One leaf element: key, value and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafElem<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl LeafElem<'_> {
    pub fn is_bucket(&self) -> bool {
        self.flags & LEAF_FLAG_BUCKET != 0
    }
}

/// One branch element: the first key of the child subtree and the child's page id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchElem<'a> {
    pub key: &'a [u8],
    pub child: u64,
}

fn elements_fit(page: &[u8], count: usize) -> Result<(), String> {
    let need = HEADER_LEN + count * ELEMENT_LEN;
    if need > page.len() {
        return Err(format!(
            "{count} elements need {need} bytes, the page has {}",
            page.len()
        ));
    }
    Ok(())
}

fn slice_at<'a>(
    page: &'a [u8],
    elem_off: usize,
    pos: u32,
    len: u32,
    what: &str,
) -> Result<&'a [u8], String> {
    let start = elem_off.checked_add(pos as usize);
    let end = start.and_then(|s| s.checked_add(len as usize));
    match (start, end) {
        (Some(s), Some(e)) if e <= page.len() => Ok(&page[s..e]),
        _ => Err(format!(
            "{what} of {len} bytes at offset {} runs past the end of the page ({} bytes)",
            elem_off as u64 + u64::from(pos),
            page.len()
        )),
    }
}

/// The elements of a page image, each read by `elem` from its index and offset.
fn elements<T>(
    page: &[u8],
    elem: impl Fn(usize, usize) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let h = Header::parse(page).ok_or("page shorter than its header")?;
    let count = usize::from(h.count);
    elements_fit(page, count)?;
    (0..count)
        .map(|i| elem(i, HEADER_LEN + i * ELEMENT_LEN))
        .collect()
}

/// The elements of a leaf page image (a whole page with its overflow, or an inline bucket's
/// page). `page` starts at the page header.
pub fn leaf_elements(page: &[u8]) -> Result<Vec<LeafElem<'_>>, String> {
    elements(page, |i, off| {
        let flags = u32_at(page, off).unwrap_or_default();
        let pos = u32_at(page, off + 4).unwrap_or_default();
        let ksize = u32_at(page, off + 8).unwrap_or_default();
        let vsize = u32_at(page, off + 12).unwrap_or_default();
        let key = slice_at(page, off, pos, ksize, &format!("key {i}"))?;
        let value_pos = pos.checked_add(ksize).ok_or("element offset overflows")?;
        let value = slice_at(page, off, value_pos, vsize, &format!("value {i}"))?;
        Ok(LeafElem { flags, key, value })
    })
}

/// The elements of a branch page image.
pub fn branch_elements(page: &[u8]) -> Result<Vec<BranchElem<'_>>, String> {
    elements(page, |i, off| {
        let pos = u32_at(page, off).unwrap_or_default();
        let ksize = u32_at(page, off + 4).unwrap_or_default();
        let child = u64_at(page, off + 8).unwrap_or_default();
        let key = slice_at(page, off, pos, ksize, &format!("key {i}"))?;
        Ok(BranchElem { key, child })
    })
}

/// Where a bucket's content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRoot<'a> {
    /// A leaf page image stored inside the bucket value (`root == 0`).
    Inline(&'a [u8]),
    /// The page id of the bucket's root page.
    Page(u64),
}

/// Parses a bucket value (B.6): header, then an inline page when `root == 0`.
pub fn bucket_root(value: &[u8]) -> Result<BucketRoot<'_>, String> {
    if value.len() < BUCKET_HEADER_LEN {
        return Err(format!(
            "bucket value has {} bytes, less than its 16-byte header",
            value.len()
        ));
    }
    let root = u64_at(value, 0).unwrap_or_default();
    if root == 0 {
        let page = &value[BUCKET_HEADER_LEN..];
        if page.len() < HEADER_LEN {
            return Err("inline bucket shorter than a page header".into());
        }
        Ok(BucketRoot::Inline(page))
    } else {
        Ok(BucketRoot::Page(root))
    }
}

/// The sequence number stored in a bucket header (kept as is when a bucket is rewritten).
pub fn bucket_sequence(value: &[u8]) -> u64 {
    u64_at(value, 8).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf page image with the given items, built by hand as bbolt lays it out.
    pub(crate) fn leaf(items: &[(&[u8], &[u8], u32)]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + items.len() * ELEMENT_LEN];
        Header {
            id: 0,
            flags: FLAG_LEAF,
            count: items.len() as u16,
            overflow: 0,
        }
        .write(&mut p);
        let mut data = Vec::new();
        for (i, (k, v, f)) in items.iter().enumerate() {
            let off = HEADER_LEN + i * ELEMENT_LEN;
            let pos = (p.len() + data.len() - off) as u32;
            p[off..off + 4].copy_from_slice(&f.to_le_bytes());
            p[off + 4..off + 8].copy_from_slice(&pos.to_le_bytes());
            p[off + 8..off + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[off + 12..off + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        p.extend(data);
        p
    }

    #[test]
    fn leaf_round_trip() {
        let p = leaf(&[(b"a", b"1", 0), (b"bb", b"", 0)]);
        let e = leaf_elements(&p).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].key, e[0].value), (&b"a"[..], &b"1"[..]));
        assert_eq!((e[1].key, e[1].value), (&b"bb"[..], &b""[..]));
    }

    #[test]
    fn corrupt_offsets_are_errors() {
        let mut p = leaf(&[(b"a", b"1", 0)]);
        p[HEADER_LEN + 12..HEADER_LEN + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(leaf_elements(&p).unwrap_err().contains("runs past the end"));
        let mut p = leaf(&[(b"a", b"1", 0)]);
        p[10..12].copy_from_slice(&500u16.to_le_bytes());
        assert!(leaf_elements(&p).unwrap_err().contains("500 elements"));
        assert!(branch_elements(&[0u8; 3]).is_err());
        assert!(bucket_root(&[0u8; 20]).is_err());
        // Found by scripts/fuzz: a bucket value of 8..16 bytes with root 0.
        assert!(bucket_root(&[0u8; 15]).is_err());
    }

    #[test]
    fn empty_inline_bucket() {
        let mut v = vec![0u8; 16];
        v.extend(leaf(&[]));
        assert_eq!(v.len(), 32);
        let BucketRoot::Inline(page) = bucket_root(&v).unwrap() else {
            panic!()
        };
        assert!(leaf_elements(page).unwrap().is_empty());
    }
}
