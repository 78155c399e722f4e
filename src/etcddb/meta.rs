//! bbolt meta pages (restore-spec B.2/B.3), parsed from bytes. Pure: no I/O.

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
const PAGE_FLAG_META: u16 = 0x04;
/// Header (16) + meta body (64) bytes needed to parse a meta page.
pub const META_LEN: usize = 80;

/// The fields of one valid meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_id: u64,
    pub page_size: u32,
    pub root: u64,
    pub freelist: u64,
    /// High-water mark: the first never-used page id.
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// Bytes of valid data: what etcd streams and what `snapshot status` calls totalSize.
    pub fn db_size(&self) -> u64 {
        self.pgid.saturating_mul(u64::from(self.page_size))
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// FNV-1a 64, as bbolt checksums its meta.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses and validates the meta page at the start of `page` (at least [`META_LEN`] bytes).
pub fn parse_meta(page: &[u8]) -> Result<Meta, String> {
    if page.len() < META_LEN {
        return Err(format!(
            "only {} bytes, a meta page needs {META_LEN}",
            page.len()
        ));
    }
    let flags = u16_at(page, 8);
    if flags != PAGE_FLAG_META {
        return Err(format!(
            "page flags are {flags:#06x}, not a meta page (0x0004)"
        ));
    }
    let magic = u32_at(page, 16);
    if magic != MAGIC {
        return Err(format!("magic is {magic:#010x}, not bbolt's {MAGIC:#010x}"));
    }
    let version = u32_at(page, 20);
    if version != VERSION {
        return Err(format!(
            "bbolt format version {version}, expected {VERSION}"
        ));
    }
    let checksum = u64_at(page, 72);
    let computed = fnv1a64(&page[16..72]);
    if checksum != computed {
        return Err(format!(
            "checksum {checksum:#018x} does not match its content ({computed:#018x})"
        ));
    }
    let page_size = u32_at(page, 24);
    if !(1024..=(1 << 24)).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("implausible page size {page_size}"));
    }
    let m = Meta {
        page_id: u64_at(page, 0),
        page_size,
        root: u64_at(page, 32),
        freelist: u64_at(page, 48),
        pgid: u64_at(page, 56),
        txid: u64_at(page, 64),
    };
    if m.pgid < 2 || m.root < 2 || m.root >= m.pgid {
        return Err(format!(
            "inconsistent page ids (root {}, high-water mark {})",
            m.root, m.pgid
        ));
    }
    Ok(m)
}

/// Picks the active meta from the two parse results: the valid one with the larger txid.
pub fn choose_active(
    meta0: Result<Meta, String>,
    meta1: Result<Meta, String>,
) -> Result<Meta, String> {
    match (meta0, meta1) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
        (Err(a), Err(b)) => Err(format!("meta page 0: {a}; meta page 1: {b}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a valid meta page for tests.
    pub(crate) fn meta_page(page_id: u64, page_size: u32, pgid: u64, txid: u64) -> Vec<u8> {
        let mut p = vec![0u8; page_size as usize];
        p[0..8].copy_from_slice(&page_id.to_le_bytes());
        p[8..10].copy_from_slice(&PAGE_FLAG_META.to_le_bytes());
        p[16..20].copy_from_slice(&MAGIC.to_le_bytes());
        p[20..24].copy_from_slice(&VERSION.to_le_bytes());
        p[24..28].copy_from_slice(&page_size.to_le_bytes());
        p[32..40].copy_from_slice(&3u64.to_le_bytes());
        p[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
        p[56..64].copy_from_slice(&pgid.to_le_bytes());
        p[64..72].copy_from_slice(&txid.to_le_bytes());
        let c = fnv1a64(&p[16..72]);
        p[72..80].copy_from_slice(&c.to_le_bytes());
        p
    }

    #[test]
    fn valid_meta() {
        let m = parse_meta(&meta_page(0, 4096, 6, 20)).unwrap();
        assert_eq!(
            (m.page_size, m.pgid, m.txid, m.db_size()),
            (4096, 6, 20, 24576)
        );
    }

    #[test]
    fn each_corruption_is_named() {
        let good = meta_page(0, 4096, 6, 20);
        let mut bad = good.clone();
        bad[16] ^= 1;
        assert!(parse_meta(&bad).unwrap_err().contains("magic"));
        let mut bad = good.clone();
        bad[60] ^= 1;
        assert!(parse_meta(&bad).unwrap_err().contains("checksum"));
        let mut bad = good.clone();
        bad[8] = 0x02;
        assert!(parse_meta(&bad).unwrap_err().contains("not a meta page"));
        assert!(parse_meta(&good[..40])
            .unwrap_err()
            .contains("only 40 bytes"));
    }

    #[test]
    fn active_is_larger_txid_of_valid() {
        let a = parse_meta(&meta_page(0, 4096, 6, 20));
        let b = parse_meta(&meta_page(1, 4096, 6, 19));
        assert_eq!(choose_active(a.clone(), b.clone()).unwrap().txid, 20);
        assert_eq!(choose_active(Err("x".into()), b).unwrap().txid, 19);
        assert!(choose_active(Err("x".into()), Err("y".into())).is_err());
    }
}
