//! The bbolt check and `etcdutl snapshot status` of a snapshot from the bytes as they stream
//! by, without reading the written file back.
//!
//! A snapshot arrives in file order, but bbolt's check and etcdutl's hash go in key order
//! (the tree). So this works in two steps:
//!
//! - [`StreamCheck::feed`] digests each page as it passes (`digests`): a leaf without
//!   sub-buckets becomes its first and last keys and what its pairs add to the status (a
//!   CRC-32C, counts, the few values the status reports); a branch, a leaf holding
//!   sub-buckets or a freelist is kept whole. Digests go to an unnamed file; memory holds
//!   4 bytes per page and the page being assembled (with its overflow, up to
//!   [`MAX_ASSEMBLED`]).
//! - [`StreamCheck::finish`] walks the tree over the digests (`fold`) with the same rules as
//!   `db::check_and_walk`, joining the leaves' CRCs in key order.
//!
//! It is a fast path, never the last word: it answers only "consistent, and this is its
//! status" (the same status `status::status` gives the file) or "not sure, and why". Anything
//! it does not vouch for (an error bbolt's check would report, an overflow run too long to
//! assemble, a page that is not a whole page) goes to the read-back check, which decides and
//! says what is wrong. A page's digest is made from its own header, so a freed page whose stale
//! header claims overflow pages that were reused since does not mislead it.

mod digests;
mod fold;

use std::collections::VecDeque;

use super::meta::{choose_active, parse_meta, Meta, META_LEN};
use super::page::{leaf_elements, Header, FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF};
use super::status::{DbStatus, LeafDigest};
use digests::{Digest, Writer};

/// A page with its overflow is assembled in memory only up to this size; a longer run (a
/// value of more than 4 MiB, past etcd's default request limit of 1.5 MiB, or a freed page's
/// stale header) gets no digest, and the fold gives up if the tree reaches it.
const MAX_ASSEMBLED: u64 = 4 << 20;
/// The assembly buffer gives back what it grew past this once a long page is done.
const KEEP_CAPACITY: usize = 256 << 10;

/// The check of one snapshot stream.
pub struct StreamCheck {
    /// Why the stream check cannot vouch for this snapshot, once known.
    gave_up: Option<String>,
    digests: Option<Writer>,
    meta: Option<Meta>,
    /// Bytes from the start of page `buf_page` (the metas' bytes before the meta is known).
    buf: Vec<u8>,
    buf_page: u64,
    /// The next page whose header is read.
    next: u64,
    /// Pages with overflow waiting for their last byte: (first page, last page).
    pending: VecDeque<(u64, u64)>,
}

impl StreamCheck {
    /// A check whose digests go to an unnamed file in `TMPDIR` (gone when it closes).
    pub fn new() -> StreamCheck {
        let dir = std::env::temp_dir();
        StreamCheck::with_digests(crate::spill::unlinked_file(&dir), &dir)
    }

    /// A check whose digests go to `file`, made in `dir`; without a file it vouches for
    /// nothing (the read-back check decides).
    pub fn with_digests(
        file: std::io::Result<std::fs::File>,
        dir: &std::path::Path,
    ) -> StreamCheck {
        let (digests, gave_up) = match file {
            Ok(f) => (Some(Writer::new(f)), None),
            Err(e) => (
                None,
                Some(format!(
                    "cannot create the page digests file in {}: {e}",
                    dir.display()
                )),
            ),
        };
        StreamCheck {
            gave_up,
            digests,
            meta: None,
            buf: Vec::new(),
            buf_page: 0,
            next: 2,
            pending: VecDeque::new(),
        }
    }

    /// The next bytes of the snapshot, in order.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.gave_up.is_some() {
            return;
        }
        if let Err(why) = self.take(bytes) {
            self.gave_up = Some(why);
            self.digests = None;
            self.buf = Vec::new();
        }
    }

    fn take(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let meta = match self.meta {
            Some(m) => m,
            None => {
                self.buf.extend_from_slice(bytes);
                let Some(m) = self.metas()? else {
                    return Ok(());
                };
                self.meta = Some(m);
                let ps = m.page_size as usize;
                bytes = &[];
                self.buf.drain(..2 * ps);
                self.buf_page = 2;
                m
            }
        };
        let ps = meta.page_size as usize;
        // Whole pages straight from `bytes` while nothing is being assembled.
        if self.buf.is_empty() && self.pending.is_empty() {
            while bytes.len() >= ps && self.next < meta.pgid {
                let page = &bytes[..ps];
                let h = Header::parse(page).ok_or("page shorter than its header")?;
                if h.overflow != 0 {
                    break;
                }
                self.digest(self.next, page)?;
                self.next += 1;
                bytes = &bytes[ps..];
            }
            self.buf_page = self.next;
        }
        if self.next >= meta.pgid {
            return Ok(()); // past the data: the trailer, free space at the end
        }
        self.buf.extend_from_slice(bytes);
        self.drain(meta)
    }

    /// The active meta, once the first two pages are in `buf`.
    fn metas(&self) -> Result<Option<Meta>, String> {
        if self.buf.len() < META_LEN {
            return Ok(None);
        }
        let meta0 = parse_meta(&self.buf[..META_LEN]).map_err(|e| format!("meta page 0: {e}"))?;
        let ps = meta0.page_size as usize;
        if self.buf.len() < 2 * ps {
            return Ok(None);
        }
        let meta1 = parse_meta(&self.buf[ps..ps + META_LEN]);
        let m = choose_active(Ok(meta0), meta1)?;
        if m.page_size != meta0.page_size {
            return Err("the meta pages disagree on the page size".into());
        }
        Ok(Some(m))
    }

    /// Digests every page `buf` completes: single pages as their header is read, pages with
    /// overflow once their last page is in; then drops what no page still needs.
    fn drain(&mut self, meta: Meta) -> Result<(), String> {
        let ps = meta.page_size as u64;
        let have = self.buf_page + self.buf.len() as u64 / ps; // pages complete in buf
        while self.next < have.min(meta.pgid) {
            let id = self.next;
            let at = ((id - self.buf_page) * ps) as usize;
            let h = Header::parse(&self.buf[at..]).ok_or("page shorter than its header")?;
            let last = id.checked_add(u64::from(h.overflow));
            match last {
                _ if h.overflow == 0 => {
                    let d = digest_of(id, &self.buf[at..at + ps as usize]);
                    self.put(id, &d)?;
                }
                Some(l) if l < meta.pgid && (1 + u64::from(h.overflow)) * ps <= MAX_ASSEMBLED => {
                    self.pending.push_back((id, l));
                }
                _ => self.put(
                    id,
                    &Digest::Unusable(format!(
                        "page {id}: {} overflow pages, past what the stream assembles or the \
                         high-water mark",
                        h.overflow
                    )),
                )?,
            }
            self.next += 1;
            // A page with overflow is digested once its last page is in.
            let mut i = 0;
            while i < self.pending.len() {
                let (first, l) = self.pending[i];
                if l < have {
                    let from = ((first - self.buf_page) * ps) as usize;
                    let to = ((l + 1 - self.buf_page) * ps) as usize;
                    let d = digest_of(first, &self.buf[from..to]);
                    self.put(first, &d)?;
                    self.pending.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        // Keep from the oldest page still needed: a pending one, or the next to read.
        let keep = self.pending.iter().map(|p| p.0).min().unwrap_or(self.next);
        let drop = (((keep - self.buf_page) * ps) as usize).min(self.buf.len());
        self.buf.drain(..drop);
        self.buf_page += (drop as u64) / ps;
        if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() < KEEP_CAPACITY / 2 {
            self.buf.shrink_to(KEEP_CAPACITY);
        }
        Ok(())
    }

    /// The digest of page `id` (with its overflow).
    fn digest(&mut self, id: u64, page: &[u8]) -> Result<(), String> {
        let d = digest_of(id, page);
        self.put(id, &d)
    }

    fn put(&mut self, id: u64, d: &Digest) -> Result<(), String> {
        match self.digests.as_mut() {
            Some(w) => w
                .put(id, d)
                .map_err(|e| format!("cannot write the page digests: {e}")),
            None => Err("no page digests".into()),
        }
    }

    /// The snapshot's status if the stream shows a consistent database of `db_len` bytes (the
    /// trailer excluded); otherwise why the file must be read back to tell.
    pub fn finish(self, db_len: u64) -> Result<DbStatus, String> {
        if let Some(why) = self.gave_up {
            return Err(why);
        }
        let meta = self.meta.ok_or("the stream ended before its meta pages")?;
        if meta.db_size() > db_len {
            return Err(format!(
                "the meta claims {} bytes, the stream holds {db_len}",
                meta.db_size()
            ));
        }
        if self.next < meta.pgid || !self.pending.is_empty() {
            return Err("the stream ended before every page was digested".into());
        }
        let reader = self
            .digests
            .ok_or("no page digests")?
            .finish()
            .map_err(|e| format!("cannot write the page digests: {e}"))?;
        fold::status(meta, reader)
    }
}

impl Default for StreamCheck {
    fn default() -> Self {
        Self::new()
    }
}

/// What the fold needs of page `id`, from its bytes (with its overflow).
fn digest_of(id: u64, page: &[u8]) -> Digest {
    let Some(h) = Header::parse(page) else {
        return Digest::Unusable(format!("page {id}: no header"));
    };
    if h.id != id {
        return Digest::Unusable(format!("page {id}: its header says it is page {}", h.id));
    }
    match h.flags {
        FLAG_BRANCH | FLAG_FREELIST => Digest::Whole(page.to_vec()),
        FLAG_LEAF => {
            let elems = match leaf_elements(page) {
                Ok(e) => e,
                Err(e) => return Digest::Unusable(format!("page {id}: {e}")),
            };
            if elems.iter().any(|e| e.is_bucket()) {
                return Digest::Whole(page.to_vec());
            }
            if elems
                .windows(2)
                .any(|w| super::db::not_above(1, w[1].key, w[0].key))
            {
                return Digest::Unusable(format!("page {id}: keys out of order"));
            }
            Digest::Leaf {
                overflow: h.overflow,
                first: elems.first().map(|e| e.key.to_vec()).unwrap_or_default(),
                last: elems.last().map(|e| e.key.to_vec()).unwrap_or_default(),
                pairs: LeafDigest::of(elems.iter().map(|e| (e.key, e.value))),
            }
        }
        _ => Digest::Unusable(format!("page {id}: a {} page", h.type_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::page::LEAF_FLAG_BUCKET;
    use super::super::tests::{sample_db, status_of};
    use super::super::writer::{commit, inline_value, new_db, Change, Item};
    use super::super::{meta, schema, status, Db};
    use super::*;

    /// The stream check of `db` fed in pieces of `piece` bytes, with a trailer after it.
    fn streamed(db: &[u8], piece: usize) -> Result<DbStatus, String> {
        let mut c = StreamCheck::new();
        let mut bytes = db.to_vec();
        bytes.extend_from_slice(&[0xAB; 32]);
        for p in bytes.chunks(piece) {
            c.feed(p);
        }
        c.finish(db.len() as u64)
    }

    /// What the read-back check says of `db`.
    fn walked(db: &[u8]) -> Result<DbStatus, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.db");
        std::fs::write(&p, db).unwrap();
        let d = Db::open(std::fs::File::open(&p).unwrap(), db.len() as u64)?;
        status(&d).map_err(|e| e.to_string())
    }

    /// `db` after appends to `key` and rewrites of small buckets: pages out of key order, old
    /// pages left unreachable.
    fn rewritten(db: Vec<u8>, rounds: i64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.db");
        std::fs::write(&p, &db).unwrap();
        for i in 0..rounds {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let len = f.metadata().unwrap().len();
            let d = Db::open(f, len).unwrap();
            let rev = schema::Revision {
                main: 10_000 + i,
                sub: 0,
            }
            .to_bytes();
            let term = (i as u64).to_be_bytes();
            commit(
                &d,
                &[
                    (
                        b"key",
                        Change::Append(Item::new(&rev, &vec![b'z'; 100 + 700 * i as usize])),
                    ),
                    (b"meta", Change::Put(vec![Item::new(b"term", &term)])),
                ],
            )
            .unwrap();
        }
        std::fs::read(&p).unwrap()
    }

    #[test]
    fn a_good_database_gives_the_read_back_status_however_it_streams() {
        let mut nested = Item::new(b"nested", &inline_value(&[Item::new(b"a", b"1")], 0));
        nested.flags = LEAF_FLAG_BUCKET;
        let with_nested = new_db(
            4096,
            &[
                (b"alarm", vec![Item::new(b"x", b""), Item::new(b"y", b"")]),
                (b"auth", vec![nested, Item::new(b"z", b"2")]),
                (
                    b"key",
                    (0..3000)
                        .map(|i: i64| {
                            Item::new(&schema::Revision { main: i, sub: 1 }.to_bytes(), b"v")
                        })
                        .collect(),
                ),
            ],
        )
        .unwrap();
        let dbs = [
            sample_db(4096, 1),
            sample_db(4096, 400),
            sample_db(1024, 300),
            sample_db(65536, 2000),
            rewritten(sample_db(4096, 500), 6),
            rewritten(sample_db(1024, 200), 4),
            with_nested,
        ];
        for (n, db) in dbs.iter().enumerate() {
            let want = walked(db).unwrap();
            for piece in [1, 100, 4096, 32 << 10, 1 << 20] {
                assert_eq!(
                    streamed(db, piece).as_ref(),
                    Ok(&want),
                    "db {n}, pieces of {piece}"
                );
            }
        }
        assert_eq!(status_of(&dbs[1]), walked(&dbs[1]).unwrap());
    }

    #[test]
    fn a_persisted_freelist_is_checked() {
        let mut db = sample_db(4096, 300);
        let ps = 4096;
        let pgid = (db.len() / ps) as u64;
        // A freelist page after the last page, listing nothing (every page is reachable).
        let mut page = vec![0u8; ps];
        Header {
            id: pgid,
            flags: FLAG_FREELIST,
            count: 0,
            overflow: 0,
        }
        .write(&mut page);
        db.extend_from_slice(&page);
        for m in 0..2 {
            let at = m * ps;
            let mut meta = meta::parse_meta(&db[at..at + 80]).unwrap();
            meta.freelist = pgid;
            meta.pgid = pgid + 1;
            let mut enc = meta.encode();
            enc[0..8].copy_from_slice(&(m as u64).to_le_bytes());
            db[at..at + ps].copy_from_slice(&enc);
        }
        let want = walked(&db).unwrap();
        assert_eq!(streamed(&db, 10_000), Ok(want));
        // The same freelist listing a reachable page: both checks refuse it.
        db[pgid as usize * ps + 10] = 1;
        db[pgid as usize * ps + 16..][..8].copy_from_slice(&3u64.to_le_bytes());
        assert!(walked(&db).is_err());
        assert!(streamed(&db, 10_000).is_err());
    }

    #[test]
    fn a_stream_cut_short_is_not_vouched_for() {
        let db = sample_db(4096, 300);
        let mut c = StreamCheck::new();
        c.feed(&db[..db.len() - 4096]);
        assert!(c.finish(db.len() as u64 - 4096).is_err());
        assert!(streamed(&[0x55; 8192], 1000).is_err());
    }

    /// Never vouches for what the read-back check refuses, nor with another status: over
    /// thousands of mutated databases, each stream verdict is the read-back's or "not sure".
    #[test]
    fn mutated_databases_are_vouched_for_only_when_the_read_back_agrees() {
        let seeds = [
            sample_db(4096, 400),
            sample_db(1024, 150),
            rewritten(sample_db(4096, 300), 3),
        ];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let (mut agreed, mut unsure, mut refused) = (0, 0, 0);
        for round in 0..1500 {
            let mut db = seeds[round % seeds.len()].clone();
            let ps = u32::from_le_bytes(db[24..28].try_into().unwrap()) as usize;
            for _ in 0..1 + next(6) {
                let page = 2 + next(db.len() / ps - 2);
                let at = match next(3) {
                    0 => page * ps + next(16),      // a header
                    1 => page * ps + 16 + next(64), // element offsets and sizes
                    _ => next(db.len()),
                };
                db[at] = match next(3) {
                    0 => db[at] ^ (1 << next(8)),
                    1 => next(256) as u8,
                    _ => [0, 0xff, 1, 2, 0x10][next(5)],
                };
            }
            let read_back = walked(&db);
            match streamed(&db, 1 + next(70_000)) {
                Ok(s) => {
                    assert_eq!(read_back.as_ref(), Ok(&s), "round {round}");
                    agreed += 1;
                }
                Err(_) if read_back.is_err() => refused += 1,
                Err(_) => unsure += 1,
            }
        }
        assert!(
            agreed > 0 && refused > 0,
            "agreed {agreed}, refused {refused}, unsure {unsure}"
        );
        // Mutations the read-back accepts (a byte of a value, of a free page) mostly do not
        // make the stream unsure.
        assert!(unsure < agreed, "agreed {agreed}, unsure {unsure}");
    }
}
