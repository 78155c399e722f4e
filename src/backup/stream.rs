//! The bytes of one backup: etcd's snapshot stream into a hidden temp file (hashed as it goes)
//! and, with `[remote_storage]`, into a multipart upload in the same pass; then fsync, the bbolt
//! check and status over the written file, and publication under the final name. The upload is
//! completed and verified only after that (`finish_upload`), or aborted.

use std::path::PathBuf;

use tokio::io::BufWriter;

use crate::config::{Encryption, RemoteStorageConfig};
use crate::etcd::{self, StreamLimits, StreamedSnapshot};
use crate::etcddb::{self, DbStatus};
use crate::fsutil;
use crate::progress::Progress;
use crate::records::SealedCopy;
use crate::store::local::{LocalStore, TempSnapshot};
use crate::store::remote::{self, Remote, UploadFeed, Uploaded};

/// Buffer between the gRPC stream and the file: bounded, so memory is flat in the DB size.
const WRITE_BUFFER: usize = 1 << 20;

/// The bytes of one snapshot go to the local file and, when configured, to the upload.
/// Written bytes are handed to the kernel's writeback every 16 MiB on a blocking thread (one
/// call in flight at most), so the final fsync does not find the whole snapshot dirty.
struct Sinks<'a> {
    file: BufWriter<tokio::fs::File>,
    feed: Option<&'a mut UploadFeed>,
    /// The same open file, for `sync_file_range`.
    raw: std::sync::Arc<std::fs::File>,
    written: u64,
    writeback: fsutil::Writeback,
    pending: Option<tokio::task::JoinHandle<()>>,
    progress: Progress,
    /// `[etcd] rate_limit`: bytes per second, and when the stream started.
    rate: Option<(u64, std::time::Instant)>,
}

impl Sinks<'_> {
    /// Bytes possibly still in our buffer and tokio's file buffer, not yet in the page cache.
    const BUFFERED: u64 = WRITE_BUFFER as u64 + (2 << 20);

    /// Waits for the writeback call in flight, if any.
    async fn writeback_done(&mut self) {
        if let Some(h) = self.pending.take() {
            let _ = h.await;
        }
    }
}

impl etcd::SnapshotSink for Sinks<'_> {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        self.progress.inc(bytes.len() as u64);
        if let Some((offset, len)) = self.writeback.due(self.written, Self::BUFFERED) {
            self.writeback_done().await;
            let raw = self.raw.clone();
            self.pending = Some(tokio::task::spawn_blocking(move || {
                fsutil::start_writeback(&*raw, offset, len)
            }));
        }
        if let Some(feed) = self.feed.as_deref_mut() {
            feed.send(bytes).await;
        }
        // Reading slower makes etcd send slower (gRPC flow control): the disk, the CPU and
        // etcd itself see the rate, not only our file.
        if let Some((limit, started)) = self.rate {
            let due = std::time::Duration::from_secs_f64(self.written as f64 / limit as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await
    }
}

/// Where the bytes go.
pub(super) struct Destination<'a> {
    pub store: &'a LocalStore,
    pub temp: TempSnapshot,
    pub file: std::fs::File,
    pub file_name: &'a str,
    pub feed: Option<&'a mut UploadFeed>,
    /// The size etcd reports for its database: what the stream will about be.
    pub expected: Option<u64>,
    /// `encrypt_local`: the checked snapshot is published sealed, never plain.
    pub seal_local: Option<&'a Encryption>,
    /// `[etcd] rate_limit`, bytes per second.
    pub rate_limit: Option<u64>,
}

/// What `stream_and_publish` made.
pub(super) struct Published {
    pub streamed: StreamedSnapshot,
    pub status: DbStatus,
    pub path: PathBuf,
    /// Set when the local copy was published sealed.
    pub sealed: Option<SealedCopy>,
}

/// Streams the snapshot into `to`, fsyncs it, checks the database and publishes the file
/// (sealed first with `encrypt_local`). `fail` turns a reason into the caller's error; `ep`
/// names etcd in messages.
pub(super) async fn stream_and_publish<E>(
    client: &mut etcd_client::Client,
    limits: StreamLimits,
    to: Destination<'_>,
    ep: &str,
    fail: impl Fn(String) -> E,
) -> Result<Published, E> {
    let Destination {
        store,
        temp,
        file,
        file_name,
        feed,
        expected,
        seal_local,
        rate_limit,
    } = to;
    let raw = std::sync::Arc::new(
        file.try_clone()
            .map_err(|err| fail(format!("cannot use {}: {err}", temp.path().display())))?,
    );
    let mut sinks = Sinks {
        file: BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file)),
        feed,
        raw,
        written: 0,
        writeback: fsutil::Writeback::default(),
        pending: None,
        progress: Progress::bytes("snapshot", expected),
        rate: rate_limit.map(|r| (r, std::time::Instant::now())),
    };
    let streamed = etcd::stream_snapshot(client, &mut sinks, limits)
        .await
        .map_err(|err| fail(format!("snapshot from etcd at {ep} failed: {err}")))?;
    sinks.writeback_done().await;
    sinks.progress.finish();
    let file = sinks.file.into_inner();
    file.sync_all()
        .await
        .map_err(|err| fail(format!("cannot fsync {}: {err}", temp.path().display())))?;
    let std_file = file.into_std().await;
    // The bbolt check and etcdutl's status over the written file, before it counts: a
    // snapshot whose checksum matches can still be an inconsistent database.
    let db_len = streamed.file_len - etcddb::TRAILER_LEN;
    let checked = tokio::task::spawn_blocking(move || {
        let db = etcddb::Db::open(std_file, db_len)?;
        etcddb::status(&db).map_err(|e| e.to_string())
    })
    .await
    .map_err(|err| fail(format!("the snapshot check did not finish: {err}")))?;
    let status = checked.map_err(|reason| {
        fail(format!(
            "etcd at {ep} sent a snapshot whose checksum matches but whose database is not \
             consistent: {reason}"
        ))
    })?;
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
    Ok(Published {
        streamed,
        status,
        path,
        sealed,
    })
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
    let (sha, size) = crate::encryption::seal_file(plain.path(), &file, enc)?;
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

/// How the same-pass upload went.
pub(super) struct RemoteResult {
    /// `None` when the remote could not even be set up (credentials, TLS files).
    pub remote: Option<Remote>,
    pub location: String,
    pub result: Result<Uploaded, String>,
}

/// The remote side of one backup: the opened remote and its upload, or why there is none.
pub(super) struct Upload {
    pub remote: Option<Remote>,
    pub feed: Option<UploadFeed>,
    pub setup_error: Option<String>,
}

impl Upload {
    /// Opens the remote (credentials are read now, for this upload) and starts the multipart
    /// upload of `file_name` beside the stream, sealed when `sealing` is set.
    pub fn start(
        rc: Option<&RemoteStorageConfig>,
        sealing: Option<&Encryption>,
        member: &str,
        file_name: &str,
    ) -> Upload {
        let mut up = Upload {
            remote: None,
            feed: None,
            setup_error: None,
        };
        let Some(rc) = rc else {
            return up;
        };
        match Remote::open(rc, member) {
            Ok(r) => {
                if rc.insecure_skip_tls_verify {
                    tracing::warn!(
                        endpoint = r.endpoint(),
                        "remote_storage.insecure_skip_tls_verify is set: the object store's \
                         TLS certificate is NOT verified; snapshots hold every cluster Secret"
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
    }

    /// Nothing verified: the multipart upload is aborted, nothing becomes visible.
    pub async fn abort(self, rc: Option<&RemoteStorageConfig>) {
        if let (Some(feed), Some(rc)) = (self.feed, rc) {
            feed.abort(rc.timeout).await;
        }
    }

    /// Verified locally: completes the upload and checks what the bucket holds. An object that
    /// is not what was sent is deleted (the retry uploads from the local file).
    pub async fn finish(
        self,
        rc: Option<&RemoteStorageConfig>,
        sealing: Option<&Encryption>,
        member: &str,
        file_name: &str,
    ) -> Option<RemoteResult> {
        let rc = rc?;
        let (Some(r), Some(feed)) = (self.remote, self.feed) else {
            let key = format!(
                "{}{}",
                remote::node_prefix(&rc.prefix, member),
                remote::object_name(file_name, sealing)
            );
            return Some(RemoteResult {
                remote: None,
                location: remote::location(&rc.bucket, &key),
                result: Err(self
                    .setup_error
                    .unwrap_or_else(|| "remote storage not set up".into())),
            });
        };
        let key = feed.key().to_string();
        let result = feed.complete(&r, rc.timeout).await;
        Some(RemoteResult {
            location: r.location(&key),
            remote: Some(r),
            result,
        })
    }
}
