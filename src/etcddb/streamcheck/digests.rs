//! What the stream keeps of each page for the fold: a digest per page, written front to back
//! to an unnamed file (`crate::spill::unlinked_file`) and read back by page id. Memory holds
//! 4 bytes per page (the digest's offset) and one read window.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::super::schema::Revision;
use super::super::status::LeafDigest;

/// What the fold needs of one page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Digest {
    /// A leaf without sub-buckets: its overflow, its first and last keys, its pairs' digest.
    Leaf {
        overflow: u32,
        first: Vec<u8>,
        last: Vec<u8>,
        pairs: LeafDigest,
    },
    /// A page the fold reads itself, with its overflow: a branch, a leaf holding sub-buckets,
    /// a freelist.
    Whole(Vec<u8>),
    /// A page the stream could not digest (why): the fold gives up if the tree reaches it.
    Unusable(String),
}

const LEAF: u8 = 1;
const WHOLE: u8 = 2;
const UNUSABLE: u8 = 3;
/// Digests start on 8-byte boundaries: a `u32` per page addresses 32 GiB of them.
const ALIGN: u64 = 8;
/// The read window when the fold moves forward through the digests (a tree laid out in key
/// order, as after a defrag), and when it jumps (a tree whose pages were rewritten in place
/// over months): one small read per jump, not a large one.
const WINDOW: usize = 64 << 10;
const JUMP_WINDOW: usize = 4 << 10;
/// Index value of a page without a digest (metas, pages past the high-water mark).
const NONE: u32 = u32::MAX;

/// Writes digests as pages complete (a page with overflow after the pages it spans).
pub(super) struct Writer {
    out: BufWriter<File>,
    at: u64,
    index: Vec<u32>,
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(file: File) -> Writer {
        Writer {
            out: BufWriter::with_capacity(64 << 10, file),
            at: 0,
            index: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// The digest of page `id`, in any order; the last one for an id counts.
    pub fn put(&mut self, id: u64, d: &Digest) -> std::io::Result<()> {
        let slot = usize::try_from(id).map_err(std::io::Error::other)?;
        let off = u32::try_from(self.at / ALIGN)
            .ok()
            .filter(|o| *o != NONE)
            .ok_or_else(|| std::io::Error::other("more than 32 GiB of page digests"))?;
        if self.index.len() <= slot {
            self.index.resize(slot + 1, NONE);
        }
        self.index[slot] = off;
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(&[0; 4]);
        match d {
            Digest::Leaf {
                overflow,
                first,
                last,
                pairs,
            } => {
                b.push(LEAF);
                put_u32(b, *overflow);
                put_u32(b, pairs.count);
                put_u32(b, pairs.crc);
                b.extend_from_slice(&pairs.crc_len.to_le_bytes());
                put_bytes(b, first);
                put_bytes(b, last);
                match pairs.revision {
                    Some(r) => {
                        b.push(1);
                        b.extend_from_slice(&r.to_le_bytes());
                    }
                    None => b.push(0),
                }
                match pairs.latest {
                    Some(r) => {
                        b.push(1);
                        b.extend_from_slice(&r.to_bytes());
                    }
                    None => b.push(0),
                }
                put_u32(b, pairs.facts.len() as u32);
                for (k, v) in &pairs.facts {
                    put_bytes(b, k);
                    put_bytes(b, v);
                }
            }
            Digest::Whole(page) => {
                b.push(WHOLE);
                put_bytes(b, page);
            }
            Digest::Unusable(why) => {
                b.push(UNUSABLE);
                put_bytes(b, why.as_bytes());
            }
        }
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b.resize(b.len().next_multiple_of(ALIGN as usize), 0);
        self.out.write_all(b)?;
        self.at += b.len() as u64;
        Ok(())
    }

    /// Done writing: the reader over what was written.
    pub fn finish(self) -> std::io::Result<Reader> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Reader {
            file,
            index: self.index,
            window: Vec::new(),
            window_at: 0,
        })
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}

/// Reads digests by page id, through a window of the file.
pub(super) struct Reader {
    file: File,
    index: Vec<u32>,
    window: Vec<u8>,
    window_at: u64,
}

impl Reader {
    /// The digest of page `id`, `None` when the stream made none.
    pub fn get(&mut self, id: u64) -> Result<Option<Digest>, String> {
        let off = match usize::try_from(id).ok().and_then(|i| self.index.get(i)) {
            Some(&o) if o != NONE => u64::from(o) * ALIGN,
            _ => return Ok(None),
        };
        let len = u32::from_le_bytes(self.bytes(off, 4)?.try_into().unwrap_or_default());
        let rec = self.bytes(off, len as usize)?;
        decode(&rec[4..])
            .map(Some)
            .ok_or_else(|| format!("the digest of page {id} does not decode"))
    }

    /// `len` bytes at `off`, read into the window when not there yet.
    fn bytes(&mut self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        let end = off + len as u64;
        let inside = off >= self.window_at && end <= self.window_at + self.window.len() as u64;
        if !inside {
            let window_end = self.window_at + self.window.len() as u64;
            let forward = off >= self.window_at && off <= window_end + WINDOW as u64;
            let size = if forward { WINDOW } else { JUMP_WINDOW };
            self.window.resize(size.max(len), 0);
            let mut got = 0;
            while got < self.window.len() {
                match self.file.read_at(&mut self.window[got..], off + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("cannot read the page digests back: {e}")),
                }
            }
            self.window.truncate(got);
            self.window_at = off;
            if got < len {
                return Err("the page digests end early".into());
            }
        }
        let start = (off - self.window_at) as usize;
        Ok(self.window[start..start + len].to_vec())
    }
}

/// One digest's body (after its length).
fn decode(b: &[u8]) -> Option<Digest> {
    let mut r = Cursor(b);
    match r.u8()? {
        LEAF => {
            let overflow = r.u32()?;
            let count = r.u32()?;
            let crc = r.u32()?;
            let crc_len = r.u64()?;
            let first = r.bytes()?.to_vec();
            let last = r.bytes()?.to_vec();
            let revision = match r.u8()? {
                0 => None,
                _ => Some(r.u64()? as i64),
            };
            let latest = match r.u8()? {
                0 => None,
                _ => Some(Revision::parse(r.take(17)?)?),
            };
            let n = r.u32()?;
            let mut facts = Vec::new();
            for _ in 0..n {
                facts.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
            }
            Some(Digest::Leaf {
                overflow,
                first,
                last,
                pairs: LeafDigest {
                    count,
                    crc,
                    crc_len,
                    revision,
                    latest,
                    facts,
                },
            })
        }
        WHOLE => Some(Digest::Whole(r.bytes()?.to_vec())),
        UNUSABLE => Some(Digest::Unusable(
            String::from_utf8_lossy(r.bytes()?).into_owned(),
        )),
        _ => None,
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = crate::spill::unlinked_file(dir.path()).unwrap();
        let mut w = Writer::new(file);
        let leaf = Digest::Leaf {
            overflow: 2,
            first: b"a".to_vec(),
            last: vec![7; 300],
            pairs: LeafDigest {
                count: 3,
                crc: 0xdead_beef,
                crc_len: 1 << 40,
                revision: Some(-5),
                latest: Revision::parse(&Revision { main: 9, sub: 1 }.to_bytes()),
                facts: vec![(b"term".to_vec(), vec![0, 1])],
            },
        };
        let big = Digest::Whole(vec![3; 3 * WINDOW]);
        let odd = Digest::Unusable("why".into());
        w.put(2, &leaf).unwrap();
        w.put(5, &big).unwrap();
        for id in 6..2_000 {
            w.put(id, &odd).unwrap();
        }
        let mut r = w.finish().unwrap();
        assert_eq!(r.get(1).unwrap(), None);
        assert_eq!(r.get(3).unwrap(), None);
        assert_eq!(r.get(1_999).unwrap(), Some(odd.clone()));
        assert_eq!(r.get(2).unwrap(), Some(leaf));
        assert_eq!(r.get(5).unwrap(), Some(big));
        assert_eq!(r.get(6).unwrap(), Some(odd));
        assert_eq!(r.get(2_000).unwrap(), None);
    }
}
