//! The snapshot's local file, written front to back on a blocking thread while the bytes also
//! go through the stream check (`etcddb::StreamCheck`): the file is never read back for its
//! check, so its bytes need not stay in the page cache, and they are written around it
//! (`O_DIRECT`) where the file system allows.
//!
//! - Direct: the bytes are copied into one reused, page-aligned buffer and written from it
//!   [`DIRECT_WRITE`] at a time; each write reaches the disk before the next starts, so at most
//!   one small request queues before etcd's own fsyncs on a shared disk, and no page-cache
//!   page is filled (on this VM, filling fresh page-cache pages was the largest CPU cost of a
//!   backup, and a 1 GiB backup evicts nothing of etcd's hot pages). The last partial block
//!   goes through the page cache; the caller's fsync makes everything durable.
//! - Buffered (a file system without `O_DIRECT`, such as tmpfs, or a direct write refused):
//!   one `writev` per batch, every [`WRITEBACK_STEP`] handed to the kernel's writeback while
//!   the range before is waited for.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::sync::mpsc;

use crate::etcddb::StreamCheck;
use crate::fsutil;

/// Bytes per direct write: small enough that etcd's fsync waits behind little (128 KiB left
/// etcd's WAL fsync p99 where no writer did in a probe on this disk; 256 KiB added 0.2 ms).
const DIRECT_WRITE: usize = 128 << 10;
/// Direct writes start, end and are sized on this boundary (any logical block size up to it).
const ALIGN: usize = 4096;
/// The buffered writer hands the disk this much at a time.
const WRITEBACK_STEP: u64 = 256 << 10;

/// How the file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Direct,
    Buffered,
}

/// Writes the batches to `file` in order, each byte also fed to `check`; stops at the first
/// error. Returns the check and how the file was written.
pub(super) fn write_file(
    file: &File,
    path: &Path,
    batches: mpsc::Receiver<Vec<Bytes>>,
    check: StreamCheck,
) -> std::io::Result<(StreamCheck, Mode)> {
    write_in(file, path, batches, check, Mode::Direct)
}

/// [`write_file`], directly only when `want` is [`Mode::Direct`].
fn write_in(
    file: &File,
    path: &Path,
    mut batches: mpsc::Receiver<Vec<Bytes>>,
    mut check: StreamCheck,
    want: Mode,
) -> std::io::Result<(StreamCheck, Mode)> {
    let mut out = Out::new(file, path, want == Mode::Direct);
    while let Some(batch) = batches.blocking_recv() {
        out.write(&batch)?;
        for b in &batch {
            check.feed(b);
        }
    }
    out.finish()?;
    Ok((check, out.mode()))
}

struct Out<'a> {
    file: &'a File,
    path: &'a Path,
    written: u64,
    /// Direct mode: the aligned buffer (`buf[start..start + DIRECT_WRITE]`) and its fill.
    direct: Option<(Vec<u8>, usize, usize)>,
    writeback: fsutil::Writeback,
    in_flight: Option<(u64, u64)>,
}

impl<'a> Out<'a> {
    fn new(file: &'a File, path: &'a Path, try_direct: bool) -> Out<'a> {
        let direct = try_direct
            .then(|| set_direct(file, true).ok())
            .flatten()
            .map(|()| {
                let buf = vec![0u8; DIRECT_WRITE + ALIGN];
                let start = buf.as_ptr().align_offset(ALIGN);
                (buf, start, 0)
            });
        Out {
            file,
            path,
            written: 0,
            direct,
            writeback: fsutil::Writeback::with_step(WRITEBACK_STEP),
            in_flight: None,
        }
    }

    fn mode(&self) -> Mode {
        if self.direct.is_some() {
            Mode::Direct
        } else {
            Mode::Buffered
        }
    }

    fn write(&mut self, batch: &[Bytes]) -> std::io::Result<()> {
        if self.direct.is_none() {
            return self.write_buffered(batch);
        }
        for (i, b) in batch.iter().enumerate() {
            let mut rest = &b[..];
            while !rest.is_empty() {
                let Some((buf, start, fill)) = self.direct.as_mut() else {
                    // Out of direct mode mid-batch: the rest of it goes buffered.
                    let mut left = vec![b.slice(b.len() - rest.len()..)];
                    left.extend_from_slice(&batch[i + 1..]);
                    return self.write_buffered(&left);
                };
                let n = rest.len().min(DIRECT_WRITE - *fill);
                buf[*start + *fill..*start + *fill + n].copy_from_slice(&rest[..n]);
                *fill += n;
                rest = &rest[n..];
                if *fill == DIRECT_WRITE {
                    self.flush_direct(DIRECT_WRITE)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the direct buffer (a multiple of [`ALIGN`]) at the end
    /// of the file and moves the rest of the buffer to its front. A direct write the kernel
    /// refuses (`EINVAL`: the file system or the device's alignment) is made buffered, and so
    /// is everything after it.
    fn flush_direct(&mut self, len: usize) -> std::io::Result<()> {
        let Some((buf, start, fill)) = self.direct.as_mut() else {
            return Ok(());
        };
        let start = *start;
        let mut done = 0;
        while done < len {
            crate::failpoint::check("backup:write", self.path)?;
            match self
                .file
                .write_at(&buf[start + done..start + len], self.written + done as u64)
            {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) if (done + n) % ALIGN == 0 || done + n == len => done += n,
                // A short write off the boundary: the rest goes buffered.
                Ok(n) => {
                    done += n;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        self.written += done as u64;
        let keep = buf[start + done..start + *fill].to_vec();
        *fill = 0;
        if done < len {
            // Out of direct mode: what the buffer still holds goes buffered.
            self.direct = None;
            self.leave_direct()?;
            return self.write_buffered(&[Bytes::from(keep)]);
        }
        buf[start..start + keep.len()].copy_from_slice(&keep);
        *fill = keep.len();
        Ok(())
    }

    /// Back to writes through the page cache, from where the direct writes (positioned,
    /// they leave the file offset alone) ended.
    fn leave_direct(&mut self) -> std::io::Result<()> {
        set_direct(self.file, false)?;
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.written))?;
        Ok(())
    }

    /// One `writev` per batch (more where the kernel takes less), handing every
    /// [`WRITEBACK_STEP`] to the kernel's writeback and waiting for the range before it.
    fn write_buffered(&mut self, batch: &[Bytes]) -> std::io::Result<()> {
        let mut out = self.file;
        let mut slices: Vec<std::io::IoSlice<'_>> = batch
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            crate::failpoint::check("backup:write", self.path)?;
            let n = match std::io::Write::write_vectored(&mut out, rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.written += n as u64;
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        if let Some((offset, len)) = self.writeback.due(self.written, 0) {
            fsutil::start_writeback(self.file, offset, len);
            if let Some((offset, len)) = self.in_flight.replace((offset, len)) {
                fsutil::wait_writeback(self.file, offset, len);
            }
        }
        Ok(())
    }

    /// Writes what the direct buffer still holds: its whole blocks directly, the last
    /// partial block through the page cache.
    fn finish(&mut self) -> std::io::Result<()> {
        let Some((_, _, fill)) = self.direct.as_ref() else {
            return Ok(());
        };
        let whole = fill - fill % ALIGN;
        if whole > 0 {
            self.flush_direct(whole)?;
        }
        let Some((buf, start, fill)) = self.direct.take() else {
            return Ok(()); // the flush went buffered and wrote everything
        };
        self.leave_direct()?;
        let tail = Bytes::copy_from_slice(&buf[start..start + fill]);
        let r = self.write_buffered(&[tail]);
        self.direct = Some((buf, start, 0));
        r
    }
}

/// Turns `O_DIRECT` on or off for `file`.
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file holds exactly the streamed bytes, whatever the batches' sizes and whether
    /// the last block is whole (a stream cut on a block boundary) or not (a trailer), written
    /// directly or buffered; and the stream check saw them all.
    #[test]
    fn the_file_holds_the_stream() {
        let db = crate::etcddb::tests::sample_db(4096, 9_000);
        let want_status = crate::etcddb::tests::status_of(&db);
        let dir = tempfile::tempdir().unwrap();
        for trailer in [32, 0] {
            let mut data = db.clone();
            data.resize(db.len() + trailer, 7);
            for want in [Mode::Direct, Mode::Buffered] {
                for batch_len in [256 << 10, (256 << 10) + 12_345, 1000] {
                    let (tx, rx) = mpsc::channel(100_000);
                    for batch in data.chunks(batch_len) {
                        let pieces = batch.chunks(32 << 10).map(Bytes::copy_from_slice).collect();
                        tx.try_send(pieces).unwrap();
                    }
                    drop(tx);
                    let path = dir.path().join("snapshot");
                    let file = std::fs::File::create(&path).unwrap();
                    let (check, mode) =
                        write_in(&file, &path, rx, StreamCheck::new(), want).unwrap();
                    assert_eq!(mode, want);
                    assert_eq!(check.finish(db.len() as u64).as_ref(), Ok(&want_status));
                    file.sync_all().unwrap();
                    drop(file);
                    let got = std::fs::read(&path).unwrap();
                    assert!(
                        got == data,
                        "the file differs ({mode:?}, trailer {trailer})"
                    );
                }
            }
        }
    }
}
