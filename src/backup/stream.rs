//! The bytes of one backup: etcd's snapshot stream into a hidden temp file (hashed as it goes,
//! written and checked by `writer` on a blocking thread) and into one upload per destination
//! in the same pass; then fsync, the bbolt check and status (from the stream, or over the
//! written file when the stream check cannot vouch for it), and publication under the final
//! name. The uploads are completed and verified only after that (`Uploads::finish`, all at
//! once), or aborted.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::{DestinationConfig, Encryption};
use crate::etcd::{self, StreamLimits, StreamedSnapshot};
use crate::etcddb::{self, DbStatus, StreamCheck};
use crate::fsutil;
use crate::pacing::Gate;
use crate::progress::Progress;
use crate::records::{CheckedFrom, SealedCopy};
use crate::store::local::{LocalStore, TempSnapshot};
use crate::store::remote::{self, Remote, UploadFeed, Uploaded};

use super::writer;

/// The file writer takes the chunks in batches of about this many bytes: one wake-up and one
/// `writev` per batch instead of per 32 KiB chunk. Small enough that each batch's writeback
/// is a short request: on a disk shared with etcd, every etcd fsync waits for what is queued
/// before it (1 MiB and 4 MiB were measured: the smaller, the lower etcd's p99).
const BATCH_BYTES: usize = 256 << 10;
/// Batches in flight to the file writer besides the one being filled: memory stays flat in
/// the database size (under 1 MiB).
const WRITE_DEPTH: usize = 2;

/// The bytes of one snapshot go to the local file and, when configured, to the upload. Each
/// chunk is the slice of tonic's receive buffer the message decoded to: the file writer and
/// the upload share it, nothing is copied in user space on the way to the kernel.
struct Sinks<'a> {
    /// To the file writer thread ([`write_file`]).
    file: Option<mpsc::Sender<Vec<Bytes>>>,
    /// The batch being filled, and its size.
    batch: Vec<Bytes>,
    batch_len: usize,
    writer: Option<tokio::task::JoinHandle<std::io::Result<(StreamCheck, writer::Mode)>>>,
    /// The stream check, back from the writer once it wrote everything.
    check: Option<StreamCheck>,
    /// One per destination. A destination that takes no data for its `stall_timeout` is
    /// dropped from the pass (retried later from the local file); the others are fed at the
    /// same time, so it holds them up at most that long, once.
    feeds: Vec<&'a mut UploadFeed>,
    written: u64,
    progress: Progress,
    /// The pace (etcd's latency, the fallback, `rate_limit`).
    gate: Gate,
}

impl Sinks<'_> {
    /// Hands the batch to the file writer; an error when the writer stopped (its own error
    /// says why).
    async fn send_batch(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let sent = match &self.file {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        };
        if !sent {
            self.writer_done().await?;
            return Err(std::io::Error::other("the file writer stopped"));
        }
        Ok(())
    }

    /// The file writer's result once it has written everything sent (or stopped on an error).
    async fn writer_done(&mut self) -> std::io::Result<()> {
        self.file = None;
        let Some(h) = self.writer.take() else {
            return Ok(());
        };
        let (check, mode) = h
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))?;
        tracing::debug!(?mode, "snapshot file written");
        self.check = Some(check);
        Ok(())
    }
}

impl etcd::SnapshotSink for Sinks<'_> {
    async fn write(&mut self, bytes: Bytes) -> std::io::Result<()> {
        let len = bytes.len() as u64;
        match self.feeds.as_mut_slice() {
            [] => {}
            [one] => one.send_bytes(bytes.clone()).await,
            many => {
                futures_util::future::join_all(
                    many.iter_mut().map(|f| f.send_bytes(bytes.clone())),
                )
                .await;
            }
        }
        self.batch_len += bytes.len();
        self.batch.push(bytes);
        if self.batch_len >= BATCH_BYTES {
            self.send_batch().await?;
        }
        self.written += len;
        self.progress.inc(len);
        // Reading slower makes etcd send slower (gRPC flow control): the disk, the CPU and
        // etcd itself see the pace, not only our file.
        self.gate.pass(len).await;
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.send_batch().await?;
        self.writer_done().await
    }
}

/// Why the check of the written file failed: it could not be read back, or what it holds is
/// not a consistent database.
enum Check {
    Read(std::io::Error),
    Bad(String),
}

/// Where the bytes go.
pub(super) struct Targets<'a> {
    pub store: &'a LocalStore,
    pub temp: TempSnapshot,
    pub file: std::fs::File,
    pub file_name: &'a str,
    pub feeds: Vec<&'a mut UploadFeed>,
    /// The size etcd reports for its database: what the stream will about be.
    pub expected: Option<u64>,
    /// `encrypt_local`: the checked snapshot is published sealed, never plain.
    pub seal_local: Option<&'a Encryption>,
    /// The pace the stream is read at.
    pub gate: Gate,
}

/// What `stream_and_publish` made.
pub(super) struct Published {
    pub streamed: StreamedSnapshot,
    pub status: DbStatus,
    pub checked_from: CheckedFrom,
    pub path: PathBuf,
    /// Set when the local copy was published sealed.
    pub sealed: Option<SealedCopy>,
}

/// Streams the snapshot into `to`, fsyncs it, checks the database and publishes the file
/// (sealed first with `encrypt_local`). `fail` turns a reason into the caller's error; `ep`
/// names etcd in messages.
pub(super) async fn stream_and_publish<E>(
    channel: &tonic::transport::Channel,
    limits: StreamLimits,
    to: Targets<'_>,
    ep: &str,
    fail: impl Fn(String) -> E,
) -> Result<Published, E> {
    let Targets {
        store,
        temp,
        file,
        file_name,
        feeds,
        expected,
        seal_local,
        gate,
    } = to;
    let file = Arc::new(file);
    let (tx, rx) = mpsc::channel(WRITE_DEPTH);
    let for_writer = file.clone();
    let temp_path = temp.path().to_path_buf();
    let mut sinks = Sinks {
        file: Some(tx),
        batch: Vec::new(),
        batch_len: 0,
        writer: Some(tokio::task::spawn_blocking({
            let path = temp_path.clone();
            let dir = store.dir().to_path_buf();
            move || {
                // The page digests (a few % of the snapshot) beside it, on the disk that has
                // room for it, not in a TMPDIR that may be memory; unnamed, so nothing is left.
                let digests = crate::failpoint::check("backup:check", &dir)
                    .and_then(|()| crate::spill::unlinked_file(&dir));
                let check = StreamCheck::with_digests(digests, &dir);
                writer::write_file(&for_writer, &path, rx, check)
            }
        })),
        check: None,
        feeds,
        written: 0,
        progress: Progress::bytes("snapshot", expected),
        gate,
    };
    let streamed = etcd::stream_snapshot(channel, &mut sinks, limits).await;
    // Whatever happened, the writer is finished before the file is used or dropped.
    let written = sinks.writer_done().await;
    // A write that failed (no space, a read-only file system) names the file, whichever side
    // noticed it first.
    let streamed = streamed.map_err(|err| match (err, &written) {
        (_, Err(w)) => fail(format!("cannot write {}: {w}", temp.path().display())),
        (etcd::SnapshotError::Write(w), _) => {
            fail(format!("cannot write {}: {w}", temp.path().display()))
        }
        (err, _) => fail(format!("snapshot from etcd at {ep} failed: {err}")),
    })?;
    written.map_err(|err| fail(format!("cannot write {}: {err}", temp.path().display())))?;
    sinks.progress.finish();
    let std_file =
        Arc::try_unwrap(file).map_err(|_| fail("the snapshot file is still in use".into()))?;
    let fsync_path = temp_path.clone();
    let std_file = tokio::task::spawn_blocking(move || {
        crate::failpoint::check("backup:fsync", &fsync_path)?;
        std_file.sync_all().map(|()| std_file)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    .map_err(|err| fail(format!("cannot fsync {}: {err}", temp.path().display())))?;
    // The bbolt check and etcdutl's status, before the snapshot counts: a snapshot whose
    // checksum matches can still be an inconsistent database. From what streamed by when the
    // stream check vouches for it; otherwise over the written file, read back.
    let db_len = streamed.file_len - etcddb::TRAILER_LEN;
    // Once checked and published, the snapshot's pages leave the page cache (below).
    let cached = std_file.try_clone().ok();
    let check = sinks.check.take();
    let checked =
        tokio::task::spawn_blocking(move || check_snapshot(check, std_file, &temp_path, db_len))
            .await
            .map_err(|err| fail(format!("the snapshot check did not finish: {err}")))?;
    let (status, checked_from) = checked.map_err(|c| match c {
        Check::Read(err) => fail(format!(
            "cannot read back {} for the check: {err}",
            temp.path().display()
        )),
        // A read error inside the walk lands here too: the file is named either way.
        Check::Bad(reason) => fail(format!(
            "etcd at {ep} sent a snapshot whose checksum matches but whose database, as \
             written to {}, is not consistent: {reason}",
            temp.path().display()
        )),
    })?;
    crate::crashpoint::here("backup:checked");
    let published = match seal_local {
        None => store.publish(temp).map(|p| (p, None)),
        Some(enc) => {
            let (store, enc, name) = (store.clone(), enc.clone(), file_name.to_string());
            tokio::task::spawn_blocking(move || seal_and_publish(&store, temp, &name, &enc))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        }
    };
    let (path, sealed) = published.map_err(|err| {
        fail(format!(
            "cannot publish snapshot {file_name} in {}: {err}",
            store.dir().display()
        ))
    })?;
    crate::crashpoint::here("backup:published");
    if let Some(f) = cached {
        fsutil::drop_cached(&f);
    }
    Ok(Published {
        streamed,
        status,
        checked_from,
        path,
        sealed,
    })
}

/// The snapshot's status: from the stream check when it vouches, otherwise from the written
/// file at `path`, read back (its first `db_len` bytes are the database).
fn check_snapshot(
    check: Option<StreamCheck>,
    file: std::fs::File,
    path: &std::path::Path,
    db_len: u64,
) -> Result<(DbStatus, CheckedFrom), Check> {
    let unsure = match check.map(|c| c.finish(db_len)) {
        Some(Ok(status)) => return Ok((status, CheckedFrom::Stream)),
        Some(Err(why)) => why,
        None => "no stream check".into(),
    };
    tracing::info!(
        file = %path.display(),
        "the snapshot is read back for its check: the stream check could not vouch for it ({unsure})"
    );
    crate::failpoint::check("backup:read-back", path).map_err(Check::Read)?;
    let db = etcddb::Db::open(file, db_len).map_err(Check::Bad)?;
    let status = etcddb::status(&db).map_err(|e| Check::Bad(e.to_string()))?;
    Ok((status, CheckedFrom::File))
}

/// Seals the checked plain temp file into a second temp file, publishes that under the sealed
/// name and drops the plain one (removed): no plain copy is ever published.
fn seal_and_publish(
    store: &LocalStore,
    plain: TempSnapshot,
    file_name: &str,
    enc: &Encryption,
) -> std::io::Result<(PathBuf, Option<SealedCopy>)> {
    let name = remote::object_name(file_name, Some(enc));
    let (temp, file) = store.create_temp(&name)?;
    let (sha, size) = crate::encryption::seal_file(plain.path(), &file, temp.path(), enc)?;
    let path = store.publish(temp)?;
    drop(plain);
    Ok((
        path,
        Some(SealedCopy {
            sealing: enc.describe(),
            object_sha256: sha,
            object_size_bytes: size,
        }),
    ))
}

/// How one destination's same-pass upload went.
pub(super) struct RemoteResult {
    /// The destination's name.
    pub destination: String,
    /// `None` when the remote could not even be set up (credentials, TLS files, a missing
    /// mount).
    pub remote: Option<Remote>,
    pub location: String,
    pub result: Result<Uploaded, String>,
}

/// One destination's side of a backup: the opened remote and its upload, or why there is
/// none.
pub(super) struct Upload {
    pub config: DestinationConfig,
    pub remote: Option<Remote>,
    pub feed: Option<UploadFeed>,
    pub setup_error: Option<String>,
}

/// The uploads of one backup, one per destination.
pub(super) struct Uploads {
    pub items: Vec<Upload>,
}

impl Uploads {
    /// Opens every destination (credentials are read now, for this upload) and starts the
    /// upload of `file_name` beside the stream, sealed when `sealing` is set; `who` names the
    /// node prefix. A destination that cannot be set up is said in its result, never stops
    /// the others.
    pub fn start(
        destinations: &[DestinationConfig],
        sealing: Option<&Encryption>,
        who: &str,
        file_name: &str,
    ) -> Uploads {
        let items = destinations
            .iter()
            .map(|rc| {
                let mut up = Upload {
                    config: rc.clone(),
                    remote: None,
                    feed: None,
                    setup_error: None,
                };
                match Remote::open(rc, who) {
                    Ok(r) => {
                        if rc.insecure_skip_tls_verify {
                            tracing::warn!(
                                endpoint = r.endpoint(),
                                destination = %rc.name,
                                "{}.insecure_skip_tls_verify is set: the object store's TLS \
                                 certificate is NOT verified; snapshots hold every cluster Secret",
                                rc.table
                            );
                        }
                        match r.start_upload(file_name, sealing) {
                            Ok(feed) => up.feed = Some(feed),
                            Err(e) => up.setup_error = Some(e),
                        }
                        up.remote = Some(r);
                    }
                    Err(e) => up.setup_error = Some(e),
                }
                up
            })
            .collect();
        Uploads { items }
    }

    /// The feeds the stream writes to.
    pub fn feeds(&mut self) -> Vec<&mut UploadFeed> {
        self.items
            .iter_mut()
            .filter_map(|u| u.feed.as_mut())
            .collect()
    }

    /// Nothing verified: every upload is aborted, nothing becomes visible.
    pub async fn abort(self) {
        futures_util::future::join_all(self.items.into_iter().filter_map(|u| {
            let timeout = u.config.timeout;
            u.feed.map(|f| f.abort(timeout))
        }))
        .await;
    }

    /// Verified locally: completes every upload at once and checks what each destination
    /// holds. An object that is not what was sent is deleted (the retry uploads from the
    /// local file). `who` names the node prefix.
    pub async fn finish(
        self,
        sealing: Option<&Encryption>,
        who: &str,
        file_name: &str,
    ) -> Vec<RemoteResult> {
        let done = futures_util::future::join_all(self.items.into_iter().map(|u| async move {
            let rc = u.config;
            let (Some(r), Some(feed)) = (u.remote, u.feed) else {
                let key = remote::object_key(&rc, who, file_name, sealing);
                return RemoteResult {
                    destination: rc.name.clone(),
                    remote: None,
                    location: remote::location(&rc, &key),
                    result: Err(u
                        .setup_error
                        .unwrap_or_else(|| "remote storage not set up".into())),
                };
            };
            let key = feed.key().to_string();
            let result = feed.complete(&r, rc.timeout).await;
            RemoteResult {
                destination: rc.name.clone(),
                location: r.location(&key),
                remote: Some(r),
                result,
            }
        }))
        .await;
        crate::crashpoint::here("backup:uploaded");
        done
    }
}
