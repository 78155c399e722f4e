//! The upload engine every kind shares: the writer task fed from the snapshot stream (or the
//! local file) through an `UploadFeed` (`feed.rs`), paced by `rate_limit`, hashed on the way (the multipart
//! ETag, GCS's MD5, a sealed or mounted copy's sha256), completed only on the caller's word
//! and then checked against what was sent ([`Remote::verify_object`]), locked where the
//! destination asks for Object Lock. What differs by kind is asked of the kind's file.

use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::{mpsc, oneshot};

use super::s3::EtagCalc;
use super::{fs, gcs, s3, Backend, Remote};
use crate::encryption::Sealing;
use crate::records::SealedCopy;

const MIB: f64 = (1u64 << 20) as f64;
/// Bound on aborting a multipart upload (a dead server must not hold up anything).
pub(super) const ABORT_TIMEOUT: Duration = Duration::from_secs(15);

/// What a completed, verified upload produced.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub key: String,
    /// What the server reported (and what was compared, where the ETag is an MD5).
    pub etag: Option<String>,
    /// How the object was sealed, with its own sha256 and size (`[encryption]`).
    pub sealed: Option<SealedCopy>,
    /// Object Lock: the copy cannot be deleted before this time.
    pub locked_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// What was sent, computed on the way.
pub(super) struct Sent {
    /// The S3 ETag of what was sent, where the server's is compared ([`Remote::etag_compared`]);
    /// elsewhere its MD5 would be CPU spent on nothing.
    pub(super) etag: Option<EtagCalc>,
    /// The whole object's MD5, for servers that report it (GCS).
    pub(super) md5: Option<[u8; 16]>,
    /// The sealed object's own sha256, for its record; a plain object's is the snapshot's,
    /// known already, so it is not computed twice.
    pub(super) sha256: Option<String>,
    pub(super) size: u64,
    pub(super) sealing: Option<Sealing>,
    /// Time spent sending: from the first byte to the last handed to the writer.
    pub(super) transfer: Duration,
    /// Time completing the upload after that.
    pub(super) completing: Duration,
}

impl Remote {
    pub(super) async fn run_upload(
        &self,
        key: String,
        mut rx: mpsc::Receiver<Bytes>,
        decide: oneshot::Receiver<bool>,
        hash: bool,
        md5: bool,
    ) -> Result<Sent, String> {
        // GCS: a resumable upload that never replaces an object (`ifGenerationMatch=0`);
        // its XML multipart API is not what every GCS-compatible server offers.
        let mut w = self
            .op
            .writer_with(&key)
            .chunk(self.part_size)
            .concurrent(self.concurrency)
            .if_not_exists(matches!(self.backend, Backend::Gcs))
            .await
            .map_err(|e| self.explain(&e))?;
        let mut etag = self.etag_compared().then(|| EtagCalc::new(self.part_size));
        let mut whole_md5 = md5.then(Md5::new);
        let mut sha = hash.then(sha2::Sha256::new);
        let mut size = 0u64;
        let mut started = None;
        while let Some(b) = rx.recv().await {
            let started = *started.get_or_insert_with(Instant::now);
            if let Some(e) = etag.as_mut() {
                e.update(&b);
            }
            if let Some(m) = whole_md5.as_mut() {
                m.update(&b);
            }
            if let Some(sha) = sha.as_mut() {
                sha2::Digest::update(sha, &b);
            }
            size += b.len() as u64;
            if let Err(e) = w.write(b).await {
                self.abort_writer(&mut w, &key).await;
                return Err(self.explain(&e));
            }
            // rate_limit: the writer starts a part once it is full, so parts leave spaced
            // out and the average is the limit (a smaller part_size makes it smoother).
            if let Some(rate) = self.rate {
                let due = Duration::from_secs_f64(size as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        // The time sending the bytes (what rate_limit paces); completing the upload (the last
        // parts, the server assembling the object) is timed apart, and the wait for the local
        // copy's checks in between (`decide`) not at all.
        let handed = started.map_or(Duration::ZERO, |t| t.elapsed());
        let decided = decide.await;
        let closing = Instant::now();
        match decided {
            Ok(true) => match w.close().await {
                Ok(_meta) => Ok(Sent {
                    etag,
                    md5: whole_md5.map(|m| m.finalize().into()),
                    sha256: sha.map(|s| hex::encode(sha2::Digest::finalize(s))),
                    size,
                    sealing: None,
                    transfer: handed,
                    completing: closing.elapsed(),
                }),
                Err(e) => {
                    self.abort_writer(&mut w, &key).await;
                    Err(self.explain(&e))
                }
            },
            _ if matches!(self.backend, Backend::Fs { .. }) => {
                self.abort_writer(&mut w, &key).await;
                Err("upload aborted".to_string())
            }
            _ => {
                let aborted = tokio::time::timeout(ABORT_TIMEOUT, w.abort()).await;
                Err(match aborted {
                    Ok(Ok(())) => "upload aborted".to_string(),
                    Ok(Err(e)) => format!("upload aborted; the abort failed: {}", self.explain(&e)),
                    Err(_) => "upload aborted; the abort timed out".to_string(),
                })
            }
        }
    }

    /// Aborts a writer; an `fs` partial file (opendal's fs writer cannot abort a direct
    /// write) is removed.
    async fn abort_writer(&self, w: &mut opendal::Writer, key: &str) {
        match &self.backend {
            Backend::Fs { root } => {
                let _ = fs::remove_partial(root, key);
            }
            _ => {
                let _ = tokio::time::timeout(ABORT_TIMEOUT, w.abort()).await;
            }
        }
    }

    /// Checks a completed object against the size and ETag of what was sent. An object that
    /// is not what was sent is deleted (the retry uploads from the local file). On a mounted
    /// directory the partial file is read back and compared before it is renamed into place.
    pub(super) async fn verify_object(&self, key: &str, sent: Sent) -> Result<Uploaded, String> {
        let r = match &self.backend {
            Backend::Fs { root } => {
                let (root, key, sha, size) = (
                    root.clone(),
                    key.to_string(),
                    sent.sha256.clone().unwrap_or_default(),
                    sent.size,
                );
                tokio::task::spawn_blocking(move || fs::publish(&root, &key, &sha, size))
                    .await
                    .unwrap_or_else(|e| Err(format!("the check of the copy failed: {e}")))
                    .map(|()| None)
            }
            _ => {
                let r = self
                    .compare_object(key, sent.size, sent.etag, sent.md5)
                    .await;
                if r.is_err() {
                    let _ = self.op.delete(key).await;
                }
                r
            }
        };
        let etag = r?;
        let locked_until = self.lock_object(key).await?;
        let seconds = sent.transfer.as_secs_f64();
        tracing::info!(
            object = %self.location(key),
            destination = %self.name,
            bytes = sent.size,
            seconds,
            "uploaded {:.1} MiB in {seconds:.2} s ({:.1} MiB/s), completed in {:.2} s",
            sent.size as f64 / MIB,
            sent.size as f64 / MIB / seconds.max(1e-3),
            sent.completing.as_secs_f64()
        );
        Ok(Uploaded {
            key: key.to_string(),
            etag,
            locked_until,
            sealed: sent.sealing.map(|sealing| SealedCopy {
                sealing,
                object_sha256: sent.sha256.unwrap_or_default(),
                object_size_bytes: sent.size,
            }),
        })
    }

    /// With `object_lock`, gives the verified object its retention; a copy that cannot be
    /// locked is deleted and the upload fails (retried later): a copy meant to be immutable
    /// is never left deletable.
    async fn lock_object(
        &self,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        let (Some(lock), Backend::S3 { raw, .. }) = (&self.lock, &self.backend) else {
            return Ok(None);
        };
        match s3::lock(raw, lock, key).await {
            Ok(until) => Ok(Some(until)),
            Err(e) => {
                let _ = self.op.delete(key).await;
                Err(format!(
                    "{} could not be given its Object Lock retention ({e}); is Object Lock \
                     enabled on bucket {}?",
                    self.location(key),
                    self.bucket
                ))
            }
        }
    }

    /// Until when the object at `key` is locked (S3 Object Lock, as the server says);
    /// `None` for other kinds and unlocked objects.
    pub async fn locked_until(
        &self,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        match &self.backend {
            Backend::S3 { raw, .. } => Ok(raw.retention(key).await?.map(|(_, until)| until)),
            _ => Ok(None),
        }
    }

    /// True when this destination locks its copies (`object_lock`).
    pub fn locks(&self) -> bool {
        self.lock.is_some()
    }

    /// Whether the server's ETag is compared with the MD5 form of what was sent: S3 without
    /// SSE-KMS (whose ETags are not MD5s). Azure, GCS (its own MD5) and mounted directories
    /// (their sha256) are checked otherwise.
    fn etag_compared(&self) -> bool {
        matches!(self.backend, Backend::S3 { kms: false, .. })
    }

    /// The object at `key` against what was sent: its size, then what its kind can compare
    /// (GCS's MD5, S3's ETag where it is an MD5 form). The server's ETag, for the record.
    async fn compare_object(
        &self,
        key: &str,
        size: u64,
        etag: Option<EtagCalc>,
        md5: Option<[u8; 16]>,
    ) -> Result<Option<String>, String> {
        let meta = self.op.stat(key).await.map_err(|e| self.explain(&e))?;
        let location = self.location(key);
        if meta.content_length() != size {
            return Err(format!(
                "{location} has {} bytes after the upload, expected {size}",
                meta.content_length()
            ));
        }
        let server = meta.etag().map(str::to_string);
        if let Some(mine) = md5 {
            gcs::check_md5(&location, mine, meta.content_md5())?;
        }
        let checked = match etag {
            Some(etag) => s3::check_etag(&location, server.as_deref(), &etag.finish())?,
            None => false,
        };
        tracing::debug!(key, etag_compared = checked, "upload verified");
        Ok(server)
    }
}
