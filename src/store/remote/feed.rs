//! The sending side of an upload: starting one (the writer of `upload.rs` spawned beside the
//! caller) and the [`UploadFeed`] the snapshot stream (or a retry reading the local file) hands
//! its bytes to, sealed on the way with `[encryption]`, completed or aborted on its word.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::upload::{Sent, Uploaded, ABORT_TIMEOUT};
use super::{fs, object_name, Backend, Remote};
use crate::encryption::{Encryption, Sealer, Sealing};

/// Bytes in flight between the etcd stream and the upload: small, so memory stays flat; a
/// remote that cannot keep up makes the upload fall back to a retry from the local file.
const FEED_DEPTH: usize = 64;

impl Remote {
    /// Starts a multipart upload of snapshot `file_name` fed by [`UploadFeed::send`] with the
    /// snapshot's bytes. With `sealing`, what is sent is compressed and encrypted on the way
    /// and the object is named with the sealed suffix; if sealing cannot start, nothing is
    /// uploaded (fail closed).
    pub fn start_upload(
        &self,
        file_name: &str,
        sealing: Option<&Encryption>,
    ) -> Result<UploadFeed, String> {
        let sealer = sealing
            .map(|e| {
                e.sealer()
                    .map_err(|err| format!("encryption cannot start, nothing uploaded: {err}"))
            })
            .transpose()?;
        Ok(self.start_object(
            &object_name(file_name, sealing),
            sealer,
            sealing.map(Encryption::describe),
        ))
    }

    /// Starts the upload of a file that is sealed already (an `encrypt_local` copy), as it
    /// is, under its own name: the node cannot open it, and need not.
    pub fn start_upload_sealed(&self, object_name: &str, sealing: Sealing) -> UploadFeed {
        self.start_object(object_name, None, Some(sealing))
    }

    fn start_object(
        &self,
        object_name: &str,
        sealer: Option<Sealer>,
        sealing: Option<Sealing>,
    ) -> UploadFeed {
        let (tx, rx) = mpsc::channel::<Bytes>(FEED_DEPTH);
        let (decide_tx, decide_rx) = oneshot::channel();
        let key = self.key_for(object_name);
        let this = self.clone();
        // A mounted directory is written under a hidden partial name, read back and checked,
        // then renamed into place (`verify_object`): its sha256 is needed then.
        let (k, hash) = match &self.backend {
            Backend::Fs { .. } => (fs::partial_key(&key), true),
            _ => (key.clone(), sealing.is_some()),
        };
        let md5 = matches!(self.backend, Backend::Gcs);
        let handle =
            tokio::spawn(async move { this.run_upload(k, rx, decide_rx, hash, md5).await });
        UploadFeed {
            tx: Some(tx),
            decide: Some(decide_tx),
            handle: Some(handle),
            failed: None,
            stall: self.stall,
            table: self.table.clone(),
            key,
            sealer,
            sealing,
        }
    }
}

/// The sending side of an upload that runs next to a snapshot stream. Sending never fails
/// the snapshot: a remote that errs or stalls only ends the upload (the reason is kept).
pub struct UploadFeed {
    pub(super) tx: Option<mpsc::Sender<Bytes>>,
    pub(super) decide: Option<oneshot::Sender<bool>>,
    pub(super) handle: Option<JoinHandle<Result<Sent, String>>>,
    pub(super) failed: Option<String>,
    pub(super) stall: Duration,
    /// The destination's table, for messages.
    pub(super) table: String,
    pub(super) key: String,
    pub(super) sealer: Option<Sealer>,
    pub(super) sealing: Option<Sealing>,
}

impl UploadFeed {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Feeds the snapshot's bytes (sealed on the way when sealing); after a failure it does
    /// nothing.
    pub async fn send(&mut self, b: &[u8]) {
        self.send_bytes(Bytes::copy_from_slice(b)).await
    }

    /// [`UploadFeed::send`] of bytes the caller shares: a plain upload keeps a reference
    /// instead of a copy.
    pub async fn send_bytes(&mut self, b: Bytes) {
        if self.tx.is_none() {
            return;
        }
        let bytes = match self.sealer.as_mut().map(|s| s.push(&b)) {
            None => b,
            Some(Ok(sealed)) if sealed.is_empty() => return,
            Some(Ok(sealed)) => Bytes::from(sealed),
            Some(Err(e)) => return self.fail(format!("encryption failed: {e}")),
        };
        self.send_raw(bytes).await
    }

    fn fail(&mut self, reason: String) {
        self.failed = Some(reason);
        self.tx = None;
    }

    async fn send_raw(&mut self, bytes: Bytes) {
        let Some(tx) = &self.tx else { return };
        match tokio::time::timeout(self.stall, tx.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The upload task ended early: its result says why.
                self.tx = None;
            }
            Err(_) => {
                self.failed = Some(format!(
                    "the object store accepted no data for {:?} ({}.stall_timeout)",
                    self.stall, self.table
                ));
                self.tx = None;
            }
        }
    }

    /// Completes the upload (the sealed stream's end sent first) and checks the object
    /// against what was sent; an object that does not match is deleted. Bounded by `timeout`.
    pub async fn complete(
        mut self,
        remote: &Remote,
        timeout: Duration,
    ) -> Result<Uploaded, String> {
        if let Some(sealer) = self.sealer.take() {
            match sealer.finish() {
                Ok(tail) => self.send_raw(Bytes::from(tail)).await,
                Err(e) => self.fail(format!("encryption failed: {e}")),
            }
        }
        let key = self.key.clone();
        let sealing = self.sealing.take();
        let mut sent = self.finish(true, timeout).await?;
        sent.sealing = sealing;
        remote.verify_object(&key, sent).await
    }

    /// Aborts the upload: nothing becomes visible.
    pub async fn abort(self, timeout: Duration) {
        if let Err(e) = self.finish(false, timeout).await {
            tracing::debug!("upload aborted: {e}");
        }
    }

    /// Completes (`commit`) or aborts the upload and returns what was sent. Bounded by
    /// `timeout`.
    async fn finish(mut self, commit: bool, timeout: Duration) -> Result<Sent, String> {
        let stalled = self.failed.take();
        let commit = commit && stalled.is_none();
        self.tx = None;
        if let Some(d) = self.decide.take() {
            let _ = d.send(commit);
        }
        let handle = self.handle.take().expect("finish once");
        // A server that stopped taking data will not take an abort either: do not wait long
        // for it (the unfinished upload is never visible; a bucket lifecycle rule for
        // incomplete multipart uploads cleans its parts).
        let wait = match (commit, stalled.is_some()) {
            (true, _) => timeout,
            (false, true) => Duration::from_secs(3),
            (false, false) => ABORT_TIMEOUT + Duration::from_secs(5),
        };
        let res = match tokio::time::timeout(wait, handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("upload task failed: {e}")),
            Err(_) => Err(format!("upload did not finish within {}s", wait.as_secs())),
        };
        match (stalled, res) {
            (Some(reason), _) => Err(reason),
            (None, r) => r,
        }
    }
}

impl Drop for UploadFeed {
    fn drop(&mut self) {
        // Dropped without a decision (cancelled): the task sees the closed channel and aborts.
        self.tx = None;
        self.decide = None;
    }
}
