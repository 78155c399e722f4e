//! Sorting more fixed-size records than memory should hold. Records gather in a buffer of at
//! most `cap`; a full buffer is sorted, thinned (e.g. to one record per key) and written to an
//! anonymous temporary file as one sorted run. The whole is read back as a merge of the runs.
//! Memory: the buffer, plus 8 KiB for each run while merging; the runs are unlinked files in
//! the temporary directory (`TMPDIR`, the unit's private `/tmp`), gone when they close.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// Test-only: how many records a sorter holds in memory, instead of its default
/// (`ETCDGUARD_TEST_SORT_IN_MEMORY=<n>`), so the tests take the on-disk path on small data.
pub const TEST_IN_MEMORY_ENV: &str = "ETCDGUARD_TEST_SORT_IN_MEMORY";

/// The records a sorter holds in memory: `default`, unless the tests say otherwise.
pub fn in_memory(default: usize) -> usize {
    std::env::var(TEST_IN_MEMORY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A record with a fixed encoding of `SIZE` bytes.
pub trait Record: Copy + Ord {
    const SIZE: usize;
    fn put(&self, out: &mut [u8]);
    fn get(b: &[u8]) -> Self;
}

/// What a sorted buffer keeps before it is written: `thin` may drop records.
pub type Thin<R> = fn(&mut Vec<R>);

/// Keeps every record.
pub fn keep_all<R>(_: &mut Vec<R>) {}

/// A record of one revision of one key, ordered by the key's hash first, then by revision.
pub trait Keyed: Record {
    fn key(&self) -> u128;
}

/// Keeps the last (newest) record of each key of a sorted run.
pub fn keep_last_per_key<R: Keyed>(v: &mut Vec<R>) {
    let mut w = 0;
    for i in 0..v.len() {
        if v.get(i + 1).is_some_and(|n| n.key() == v[i].key()) {
            continue;
        }
        v[w] = v[i];
        w += 1;
    }
    v.truncate(w);
}

/// The last (newest) record of each key of a merge.
pub struct LastPerKey<R: Keyed>(std::iter::Peekable<Merged<R>>);

impl<R: Keyed> LastPerKey<R> {
    pub fn of(m: Merged<R>) -> LastPerKey<R> {
        LastPerKey(m.peekable())
    }
}

impl<R: Keyed> Iterator for LastPerKey<R> {
    type Item = Result<R, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut r = match self.0.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        while let Some(Ok(n)) = self.0.peek() {
            if n.key() != r.key() {
                break;
            }
            r = *n;
            self.0.next();
        }
        Some(Ok(r))
    }
}

pub struct Sorter<R: Record> {
    buf: Vec<R>,
    cap: usize,
    runs: Vec<File>,
    thin: Thin<R>,
    pushed: u64,
}

impl<R: Record> Sorter<R> {
    pub fn new(cap: usize, thin: Thin<R>) -> Sorter<R> {
        Sorter {
            buf: Vec::new(),
            cap: cap.max(1),
            runs: Vec::new(),
            thin,
            pushed: 0,
        }
    }

    pub fn push(&mut self, r: R) -> Result<(), String> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap);
        }
        self.buf.push(r);
        self.pushed += 1;
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        Ok(())
    }

    /// How many records were pushed (before any `thin`).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// How many runs went to disk so far.
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    fn sort(&mut self) {
        self.buf.sort_unstable();
        (self.thin)(&mut self.buf);
    }

    fn spill(&mut self) -> Result<(), String> {
        self.sort();
        let dir = std::env::temp_dir();
        let fail = |e: std::io::Error| {
            format!(
                "cannot sort on disk in {}: {e} (set TMPDIR to a writable directory with room)",
                dir.display()
            )
        };
        let file = unlinked_file(&dir).map_err(fail)?;
        let mut w = BufWriter::with_capacity(64 << 10, file);
        let mut b = vec![0u8; R::SIZE];
        for r in self.buf.drain(..) {
            r.put(&mut b);
            w.write_all(&b).map_err(fail)?;
        }
        let mut file = w.into_inner().map_err(|e| fail(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(fail)?;
        self.runs.push(file);
        Ok(())
    }

    /// Every record pushed (less what `thin` dropped), in order. Once anything went to disk,
    /// the rest goes too and the buffer is freed, so memory is the readers' only.
    pub fn finish(mut self) -> Result<Merged<R>, String> {
        let mem = if self.runs.is_empty() {
            self.sort();
            std::mem::take(&mut self.buf)
        } else {
            if !self.buf.is_empty() {
                self.spill()?;
            }
            Vec::new()
        };
        let mut m = Merged {
            readers: self
                .runs
                .into_iter()
                .map(|f| BufReader::with_capacity(8 << 10, f))
                .collect(),
            mem: mem.into_iter(),
            heap: BinaryHeap::new(),
            scratch: vec![0u8; R::SIZE],
        };
        for i in 0..=m.readers.len() {
            if let Some(r) = m.next_of(i)? {
                m.heap.push(Reverse((r, i)));
            }
        }
        Ok(m)
    }
}

/// A new private file in `dir` with no name: gone when it closes, whatever ends the process.
/// `O_TMPFILE` where the file system has it; else a unique name removed at once.
pub(crate) fn unlinked_file(dir: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!(".etcdguard-sort-{}-{n}", std::process::id()));
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(true).create_new(true).mode(0o600);
            let f = o.open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// The merge of sorted runs: an iterator of records in order (equal records in run order).
pub struct Merged<R: Record> {
    readers: Vec<BufReader<File>>,
    mem: std::vec::IntoIter<R>,
    heap: BinaryHeap<Reverse<(R, usize)>>,
    scratch: Vec<u8>,
}

impl<R: Record> Merged<R> {
    /// The next record of source `i` (the readers, then the buffer kept in memory).
    fn next_of(&mut self, i: usize) -> Result<Option<R>, String> {
        let Some(reader) = self.readers.get_mut(i) else {
            return Ok(self.mem.next());
        };
        match reader.read_exact(&mut self.scratch) {
            Ok(()) => Ok(Some(R::get(&self.scratch))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(format!(
                "cannot read back a sorted run in {}: {e}",
                std::env::temp_dir().display()
            )),
        }
    }
}

impl<R: Record> Iterator for Merged<R> {
    type Item = Result<R, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((r, i)) = self.heap.pop()?;
        match self.next_of(i) {
            Ok(Some(n)) => self.heap.push(Reverse((n, i))),
            Ok(None) => {}
            Err(e) => {
                self.heap.clear();
                return Some(Err(e));
            }
        }
        Some(Ok(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Record for u32 {
        const SIZE: usize = 4;
        fn put(&self, out: &mut [u8]) {
            out.copy_from_slice(&self.to_be_bytes());
        }
        fn get(b: &[u8]) -> u32 {
            u32::from_be_bytes(b.try_into().unwrap())
        }
    }

    fn sorted(cap: usize, input: &[u32], thin: Thin<u32>) -> (Vec<u32>, usize) {
        let mut s = Sorter::new(cap, thin);
        for &x in input {
            s.push(x).unwrap();
        }
        let runs = s.runs();
        (s.finish().unwrap().map(Result::unwrap).collect(), runs)
    }

    #[test]
    fn runs_on_disk_merge_to_the_same_order_as_memory() {
        let input: Vec<u32> = (0..1000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) % 97)
            .collect();
        let mut want = input.clone();
        want.sort();
        let (all_in_memory, runs) = sorted(10_000, &input, keep_all);
        assert_eq!((all_in_memory.as_slice(), runs), (want.as_slice(), 0));
        let (spilled, runs) = sorted(7, &input, keep_all);
        assert_eq!(spilled, want);
        assert_eq!(
            runs, 142,
            "1000 records in runs of 7 (the last one at finish)"
        );
        want.dedup();
        let (thinned, _) = sorted(7, &input, |v| v.dedup());
        let mut thinned = thinned;
        thinned.dedup();
        assert_eq!(thinned, want, "thinning each run keeps the merge's order");
        assert!(sorted(3, &[], keep_all).0.is_empty());
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Rev(u128, u32);
    impl Record for Rev {
        const SIZE: usize = 20;
        fn put(&self, out: &mut [u8]) {
            out[..16].copy_from_slice(&self.0.to_le_bytes());
            out[16..].copy_from_slice(&self.1.to_le_bytes());
        }
        fn get(b: &[u8]) -> Rev {
            Rev(
                u128::from_le_bytes(b[..16].try_into().unwrap()),
                u32::from_le_bytes(b[16..].try_into().unwrap()),
            )
        }
    }
    impl Keyed for Rev {
        fn key(&self) -> u128 {
            self.0
        }
    }

    #[test]
    fn the_last_record_of_each_key_wins_in_a_run_and_across_runs() {
        let mut v = vec![Rev(1, 2), Rev(1, 5), Rev(2, 3), Rev(3, 1), Rev(3, 9)];
        keep_last_per_key(&mut v);
        assert_eq!(v, [Rev(1, 5), Rev(2, 3), Rev(3, 9)]);
        // Key 3's newest revision is in the first run, key 1's in the last.
        let input = [
            Rev(3, 1),
            Rev(1, 1),
            Rev(3, 9),
            Rev(2, 3),
            Rev(1, 7),
            Rev(1, 5),
        ];
        for cap in [1, 2, 4, 100] {
            let mut s = Sorter::new(cap, keep_last_per_key);
            for r in input {
                s.push(r).unwrap();
            }
            let last: Vec<Rev> = LastPerKey::of(s.finish().unwrap())
                .map(Result::unwrap)
                .collect();
            assert_eq!(last, [Rev(1, 7), Rev(2, 3), Rev(3, 9)], "{cap} in memory");
        }
    }
}
