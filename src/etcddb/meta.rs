//! bbolt meta pages (restore-spec B.3): parse, validate, choose the active one, and encode a new
//! one for an append-only commit. Pure: no I/O.

use super::page::{u32_at, u64_at, Header, FLAG_META, HEADER_LEN};

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
/// Header (16) + meta body (64) bytes needed to parse a meta page.
pub const META_LEN: usize = 80;

/// The fields of one valid meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_id: u64,
    pub page_size: u32,
    pub root: u64,
    /// Root bucket sequence (always 0 in etcd dbs; kept as found).
    pub root_sequence: u64,
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

    /// This meta as a full page, with the checksum computed. The page id is `txid % 2`, where
    /// bbolt writes the meta of transaction `txid`.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![0u8; self.page_size as usize];
        Header {
            id: self.txid % 2,
            flags: FLAG_META,
            count: 0,
            overflow: 0,
        }
        .write(&mut p);
        p[16..20].copy_from_slice(&MAGIC.to_le_bytes());
        p[20..24].copy_from_slice(&VERSION.to_le_bytes());
        p[24..28].copy_from_slice(&self.page_size.to_le_bytes());
        // 28..32: flags, always 0.
        p[32..40].copy_from_slice(&self.root.to_le_bytes());
        p[40..48].copy_from_slice(&self.root_sequence.to_le_bytes());
        p[48..56].copy_from_slice(&self.freelist.to_le_bytes());
        p[56..64].copy_from_slice(&self.pgid.to_le_bytes());
        p[64..72].copy_from_slice(&self.txid.to_le_bytes());
        let c = fnv1a64(&p[16..72]);
        p[72..80].copy_from_slice(&c.to_le_bytes());
        p
    }
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
    let field = |off| u64_at(page, off).unwrap_or_default();
    let header = Header::parse(page).ok_or("no page header")?;
    if header.flags != FLAG_META {
        return Err(format!(
            "page flags are {:#06x}, not a meta page (0x0004)",
            header.flags
        ));
    }
    let magic = u32_at(page, HEADER_LEN).unwrap_or_default();
    if magic != MAGIC {
        return Err(format!("magic is {magic:#010x}, not bbolt's {MAGIC:#010x}"));
    }
    let version = u32_at(page, 20).unwrap_or_default();
    if version != VERSION {
        return Err(format!(
            "bbolt format version {version}, expected {VERSION}"
        ));
    }
    let checksum = field(72);
    let computed = fnv1a64(&page[16..72]);
    if checksum != computed {
        return Err(format!(
            "checksum {checksum:#018x} does not match its content ({computed:#018x})"
        ));
    }
    let page_size = u32_at(page, 24).unwrap_or_default();
    if !(1024..=(1 << 24)).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("implausible page size {page_size}"));
    }
    let m = Meta {
        page_id: header.id,
        page_size,
        root: field(32),
        root_sequence: field(40),
        freelist: field(48),
        pgid: field(56),
        txid: field(64),
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
        let mut p = Meta {
            page_id,
            page_size,
            root: 3,
            root_sequence: 0,
            freelist: u64::MAX,
            pgid,
            txid,
        }
        .encode();
        // Tests place metas by hand; the header id is what the caller says.
        p[0..8].copy_from_slice(&page_id.to_le_bytes());
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
    fn encode_round_trips() {
        let m = parse_meta(&meta_page(0, 16384, 9, 7)).unwrap();
        let again = parse_meta(&m.encode()).unwrap();
        assert_eq!(again.page_id, 1); // txid 7 lives on page 1
        assert_eq!(
            Meta {
                page_id: 0,
                ..again
            },
            m
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
