//! Every destination through opendal behind one small interface (`Remote`). The kind of a
//! destination is chosen in one place ([`choose`], with [`scheme`]); each kind is a file of
//! its own: `s3.rs` (with `s3_raw.rs`, the S3 calls opendal lacks), `gcs.rs`, `azblob.rs`,
//! `fs.rs` (a mounted directory). `upload.rs` is the upload engine they share, `feed.rs` its
//! sending side, `explain.rs` the one sentence an object-store error becomes.
//!
//! Layout: every node writes under `<prefix><member>/`: the snapshot `<file name>` and a JSON
//! sidecar `<file name>.json` with its record, so records survive the loss of the node. This
//! module lists and deletes only under its own node's prefix, and only names that match the
//! snapshot pattern.
//!
//! Uploads are multipart and streamed from the same bytes that go to the local file
//! ([`UploadFeed`]); an upload is completed only when the caller says the snapshot verified,
//! and aborted otherwise, so no partial or unverified object ever becomes visible. After
//! completion the object's size, and its ETag where the server's ETag is an MD5 form we can
//! compute, are checked.

mod azblob;
pub(crate) mod credentials;
mod explain;
mod feed;
mod fs;
mod gcs;
pub mod http;
mod s3;
mod s3_raw;
mod upload;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use opendal::{OperationContext, Operator};

use crate::config::{DestinationConfig, Kind, ObjectLock};
use crate::encryption::Encryption;
use crate::store::local::{is_snapshot_file_name, sanitize_member};
use credentials::Resolved;
use explain::explain;
pub use feed::UploadFeed;
pub use s3_raw::{ListError, OpenUpload};
pub use upload::Uploaded;

/// The suffix of a snapshot's sidecar.
pub const SIDECAR_SUFFIX: &str = ".json";
/// The node name a shared view is opened with: no node can have it (node names are DNS
/// labels), so nothing is ever written under it.
const SHARED: &str = "-";

/// One object in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    /// The last path component.
    pub name: String,
    pub size: u64,
}

/// What one listing of a node's prefix found ([`Remote::list_node`]).
#[derive(Debug, Clone, Default)]
pub struct NodeListing {
    /// The snapshot objects, by name.
    pub snapshots: Vec<ObjectInfo>,
    /// Every key directly under the prefix (sidecars and foreign names too).
    keys: Vec<String>,
}

/// An open connection to one destination, for one node.
#[derive(Clone)]
pub struct Remote {
    op: Operator,
    /// The kind's name, as the configuration says it.
    kind: &'static str,
    /// The destination's name, and its table for messages (`destination.<name>`).
    name: String,
    table: String,
    backend: Backend,
    bucket: String,
    endpoint: String,
    /// Every location starts with it: `s3://<bucket>/`, `gs://<bucket>/`,
    /// `azblob://<account>/<container>/`, `file://<root>/`.
    scheme: String,
    node_prefix: String,
    part_size: usize,
    concurrency: usize,
    /// How long a sender waits for the upload to take more data.
    stall: Duration,
    /// `rate_limit`: bytes per second handed to the object store at most.
    rate: Option<u64>,
    /// S3 Object Lock retention for each copy uploaded.
    lock: Option<ObjectLock>,
    creds: Resolved,
}

/// What differs between kinds beyond opendal's operator.
#[derive(Clone)]
enum Backend {
    S3 {
        kms: bool,
        /// The calls opendal does not make (open multipart uploads).
        raw: s3_raw::RawS3,
    },
    Gcs,
    Azblob,
    /// A mounted directory: uploads go to a hidden partial file, are read back and checked,
    /// then renamed into place (`mounted.rs`).
    Fs {
        root: std::path::PathBuf,
    },
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("bucket", &self.bucket)
            .field("node_prefix", &self.node_prefix)
            .finish_non_exhaustive()
    }
}

/// The object name of snapshot `file_name`: itself, or with the sealed suffix.
pub fn object_name(file_name: &str, sealing: Option<&Encryption>) -> String {
    format!("{file_name}{}", sealing.map_or("", Encryption::suffix))
}

/// How records and messages name the object `key` of destination `cfg`: `s3://<bucket>/<key>`,
/// `gs://<bucket>/<key>`, `azblob://<account>/<container>/<key>`, `file://<root>/<key>`.
pub fn location(cfg: &DestinationConfig, key: &str) -> String {
    format!("{}{key}", scheme(cfg))
}

fn scheme(cfg: &DestinationConfig) -> String {
    match &cfg.kind {
        Kind::S3 => format!("s3://{}/", cfg.bucket),
        Kind::Gcs { .. } => format!("gs://{}/", cfg.bucket),
        Kind::Azblob { account } => format!("azblob://{account}/{}/", cfg.bucket),
        Kind::Fs { path, .. } => {
            format!(
                "file://{}/",
                path.display().to_string().trim_end_matches('/')
            )
        }
    }
}

/// The key of snapshot `file_name`'s object at `cfg` under node `who`'s prefix (sealed
/// suffix with `sealing`): the one spelling of a copy's key.
pub fn object_key(
    cfg: &DestinationConfig,
    who: &str,
    file_name: &str,
    sealing: Option<&Encryption>,
) -> String {
    format!(
        "{}{}",
        node_prefix(&cfg.prefix, who),
        object_name(file_name, sealing)
    )
}

/// A node's prefix in the bucket, `<prefix><member>/`.
pub fn node_prefix(prefix: &str, member: &str) -> String {
    format!("{prefix}{}/", sanitize_member(member))
}

/// What a kind's file hands back when it opens a destination.
struct Opened {
    op: Operator,
    backend: Backend,
    endpoint: String,
    creds: Resolved,
}

/// The one place that chooses a destination's kind (with [`scheme`]): a kind is a file of its
/// own beside this one (its operator, its checks after an upload, its quirks) and an arm here.
fn choose(
    cfg: &DestinationConfig,
    client: &reqwest::Client,
    node_prefix: &str,
) -> Result<Opened, String> {
    match &cfg.kind {
        Kind::S3 => s3::open(cfg, client),
        Kind::Gcs { anonymous } => gcs::open(cfg, *anonymous),
        Kind::Azblob { account } => azblob::open(cfg, account),
        Kind::Fs {
            path,
            require_mount,
        } => fs::open(cfg, path, *require_mount, node_prefix),
    }
}

impl Remote {
    /// Resolves credentials now and builds the operator for `member`'s prefix. An `fs`
    /// destination is checked first: its directory must be there, a mount point (unless
    /// `require_mount = false`) and writable.
    pub fn open(cfg: &DestinationConfig, member: &str) -> Result<Remote, String> {
        let client = http::client(
            cfg.ca_bundle.as_deref(),
            cfg.insecure_skip_tls_verify,
            Duration::from_secs(10),
        )
        .map_err(|e| e.replace("remote_storage.", &format!("{}.", cfg.table)))?;
        let node_prefix = node_prefix(&cfg.prefix, member);
        let Opened {
            op,
            backend,
            endpoint,
            creds,
        } = choose(cfg, &client, &node_prefix)?;
        let op = match backend {
            // Local calls: no HTTP transport, no retries (an error is the file system's).
            Backend::Fs { .. } => op,
            _ => {
                let transport = opendal::HttpTransporter::new(
                    opendal_http_transport_reqwest::ReqwestTransport::new(client),
                );
                let ctx: OperationContext = op.context().with_http_transport(transport);
                // Each request (and each wait for a part upload) is bounded by stall_timeout;
                // a few retries ride out a blip. A dead server fails in bounded time, the
                // upload is retried later from the local file.
                op.with_context(ctx)
                    .layer(
                        opendal::layers::TimeoutLayer::new()
                            .with_timeout(cfg.stall_timeout)
                            .with_io_timeout(cfg.stall_timeout),
                    )
                    .layer(
                        opendal::layers::RetryLayer::new()
                            .with_max_times(2)
                            .with_jitter(),
                    )
            }
        };
        Ok(Remote {
            op,
            kind: cfg.kind.as_str(),
            name: cfg.name.clone(),
            table: cfg.table.clone(),
            backend,
            bucket: cfg.bucket.clone(),
            endpoint,
            scheme: scheme(cfg),
            node_prefix,
            part_size: cfg.part_size,
            concurrency: cfg.concurrency,
            stall: cfg.stall_timeout,
            rate: cfg.rate_limit,
            lock: cfg.object_lock,
            creds,
        })
    }

    /// The destination as a whole (every node's prefix under it), for listings across nodes
    /// and downloads by full key; nothing is written through it.
    pub fn open_shared(cfg: &DestinationConfig) -> Result<Remote, String> {
        Remote::open(cfg, SHARED)
    }

    /// The destination's name (`remote`, or the `[[destination]]`'s).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's multipart uploads that the server still holds open, with a snapshot's name
    /// (nothing else under the prefix is ours to touch).
    /// An `fs` destination's are the partial files a killed upload left; GCS and Azure
    /// discard unfinished uploads themselves (resumable sessions and uncommitted blocks
    /// expire after a week), so there none are listed.
    pub async fn open_uploads(&self) -> Result<Vec<OpenUpload>, ListError> {
        let all = match &self.backend {
            Backend::S3 { raw, .. } => raw.list_open(&self.node_prefix).await?,
            Backend::Fs { root } => fs::partials(root, &self.node_prefix)
                .map_err(ListError::Failed)?
                .into_iter()
                .map(|(key, initiated)| OpenUpload {
                    key,
                    upload_id: String::new(),
                    initiated,
                })
                .collect(),
            Backend::Gcs | Backend::Azblob => Vec::new(),
        };
        Ok(all
            .into_iter()
            .filter(|u| self.own_snapshot_name(&u.key).is_some())
            .collect())
    }

    /// The snapshot name `key` holds directly under this node's prefix; `None` for anything
    /// else (deeper keys, other names), which this node never touches.
    fn own_snapshot_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.node_prefix)
            .filter(|name| !name.contains('/') && is_snapshot_file_name(name))
    }

    /// Aborts an open upload found by [`Remote::open_uploads`]: its parts are freed.
    pub async fn abort_open_upload(&self, u: &OpenUpload) -> Result<(), String> {
        match &self.backend {
            Backend::S3 { raw, .. } => raw.abort(u).await,
            Backend::Fs { root } => fs::remove_partial(root, &u.key),
            Backend::Gcs | Backend::Azblob => Ok(()),
        }
    }

    /// The kind of storage (`s3`, `gcs`, `azblob`, `fs`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn credentials(&self) -> &Resolved {
        &self.creds
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn key_for(&self, file_name: &str) -> String {
        format!("{}{file_name}", self.node_prefix)
    }

    pub fn location(&self, key: &str) -> String {
        format!("{}{key}", self.scheme)
    }

    fn explain(&self, e: &opendal::Error) -> String {
        if let Backend::Fs { root } = &self.backend {
            // The file system's own words (no space, read-only, permission), not opendal's.
            let mut src: &dyn std::error::Error = e;
            while let Some(s) = src.source() {
                src = s;
            }
            return format!(
                "the directory {} (destination {}): {src}",
                root.display(),
                self.name
            );
        }
        explain(
            e,
            &self.table,
            &self.bucket,
            &self.endpoint,
            self.creds.key_id().as_deref(),
        )
    }

    /// Writes the JSON sidecar of the object `object_name`.
    pub async fn put_sidecar(&self, object_name: &str, json: Vec<u8>) -> Result<(), String> {
        let key = format!("{}{SIDECAR_SUFFIX}", self.key_for(object_name));
        self.write_small(&key, json).await
    }

    /// One small object in one request; on a mounted directory an atomic, fsynced, 0600
    /// file.
    async fn write_small(&self, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        match &self.backend {
            Backend::Fs { root } => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || {
                    crate::fsutil::write_atomic(&path, &bytes, 0o600)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
            _ => self
                .op
                .write(key, bytes)
                .await
                .map(|_| ())
                .map_err(|e| self.explain(&e)),
        }
    }

    /// Everything directly under this node's prefix.
    async fn node_entries(&self) -> Result<Vec<opendal::Entry>, String> {
        self.op
            .list_with(&self.node_prefix)
            .recursive(false)
            .await
            .map_err(|e| self.explain(&e))
    }

    /// One listing of this node's prefix: its snapshot objects (sidecars and foreign names
    /// left out), and every key, for [`Remote::delete_orphan_sidecars`] without a second list.
    pub async fn list_node(&self) -> Result<NodeListing, String> {
        let entries = self.node_entries().await?;
        let mut snapshots = Vec::new();
        let mut keys = Vec::with_capacity(entries.len());
        for e in entries {
            let key = e.path().to_string();
            if let Some(name) = self.own_snapshot_name(&key).map(str::to_string) {
                let size = match e.metadata().content_length() {
                    0 => self
                        .op
                        .stat(&key)
                        .await
                        .map(|m| m.content_length())
                        .unwrap_or(0),
                    n => n,
                };
                snapshots.push(ObjectInfo {
                    key: key.clone(),
                    name,
                    size,
                });
            }
            keys.push(key);
        }
        snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(NodeListing { snapshots, keys })
    }

    /// Deletes this node's sidecars whose snapshot object is not in `listed` (a run killed
    /// between deleting the object and its sidecar); the keys deleted.
    pub async fn delete_orphan_sidecars(
        &self,
        listed: &NodeListing,
    ) -> Result<Vec<String>, String> {
        let keys: HashSet<&str> = listed.keys.iter().map(String::as_str).collect();
        let mut deleted = Vec::new();
        for k in &listed.keys {
            let Some(object) = k.strip_suffix(SIDECAR_SUFFIX) else {
                continue;
            };
            if self.own_snapshot_name(object).is_none() || keys.contains(object) {
                continue;
            }
            self.op.delete(k).await.map_err(|e| self.explain(&e))?;
            deleted.push(k.clone());
        }
        Ok(deleted)
    }

    /// Calls `each` with every key directly under `dir` (one delimited listing, read page by
    /// page and held by no one), dirs ending in `/`. Reads only.
    pub async fn each_key_in(&self, dir: &str, mut each: impl FnMut(&str)) -> Result<(), String> {
        use futures_util::TryStreamExt;
        let mut pages = self
            .op
            .lister_with(dir)
            .recursive(false)
            .await
            .map_err(|e| self.explain(&e))?;
        while let Some(e) = pages.try_next().await.map_err(|e| self.explain(&e))? {
            each(e.path());
        }
        Ok(())
    }

    /// The JSON bytes of the sidecar at `key` (`<snapshot key>.json`).
    pub async fn sidecar_json(&self, key: &str) -> Result<Vec<u8>, String> {
        self.op
            .read(key)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| self.explain(&e))
    }

    /// True when an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, String> {
        match self.op.stat(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.explain(&e)),
        }
    }

    /// True for kinds that never replace an object (GCS's create-only uploads, an fs mount's
    /// no-replace rename): a copy already there cannot be uploaded again, only adopted.
    pub fn creates_only(&self) -> bool {
        matches!(self.backend, Backend::Gcs | Backend::Fs { .. })
    }

    /// The size and sha256 of the object at `key`, read whole (streamed); `None` when there
    /// is no such object.
    pub async fn sha256_of(&self, key: &str) -> Result<Option<(u64, String)>, String> {
        use futures_util::StreamExt;
        if !self.exists(key).await? {
            return Ok(None);
        }
        let reader = self.op.reader(key).await.map_err(|e| self.explain(&e))?;
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| self.explain(&e))?;
        let (mut n, mut sha) = (0u64, <sha2::Sha256 as sha2::Digest>::new());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("reading {} broke: {e}", self.location(key)))?;
            n += chunk.len() as u64;
            sha2::Digest::update(&mut sha, &chunk);
        }
        Ok(Some((n, hex::encode(sha2::Digest::finalize(sha)))))
    }

    /// The record in the sidecar of the snapshot at `key`.
    pub async fn read_sidecar(&self, key: &str) -> Result<crate::records::Record, String> {
        let bytes = self.sidecar_json(&format!("{key}{SIDECAR_SUFFIX}")).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("sidecar of {} does not parse: {e}", self.location(key)))
    }

    /// Deletes this node's snapshot `name`, its sidecar and its recovery bundle, if any.
    /// Refuses anything else.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), String> {
        if !is_snapshot_file_name(name) {
            return Err(format!("refusing to delete {name:?}: not a snapshot name"));
        }
        let key = self.key_for(name);
        self.op.delete(&key).await.map_err(|e| self.explain(&e))?;
        let plain = crate::encryption::plain_name(name);
        for suffix in [".zst.age", ".age"] {
            let bundle = self.key_for(&crate::store::local::bundle_name(&plain, suffix));
            self.op
                .delete(&bundle)
                .await
                .map_err(|e| self.explain(&e))?;
        }
        self.op
            .delete(&format!("{key}{SIDECAR_SUFFIX}"))
            .await
            .map_err(|e| self.explain(&e))
    }

    /// Writes a small object `name` (a recovery bundle) in one PUT and checks its size.
    pub async fn put_small(&self, name: &str, bytes: Vec<u8>) -> Result<String, String> {
        let key = self.key_for(name);
        let len = bytes.len() as u64;
        self.write_small(&key, bytes).await?;
        let meta = self.op.stat(&key).await.map_err(|e| self.explain(&e))?;
        if meta.content_length() != len {
            let _ = self.op.delete(&key).await;
            return Err(format!(
                "{} has {} bytes after the upload, expected {len}",
                self.location(&key),
                meta.content_length()
            ));
        }
        Ok(key)
    }

    /// Downloads `key` to `dest` (created 0600, fsynced), streaming; returns its size and
    /// sha256, computed on the way. On any failure `dest` is removed.
    pub async fn download(
        &self,
        key: &str,
        dest: &std::path::Path,
    ) -> Result<(u64, String), String> {
        let result = self.download_into(key, dest).await;
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    /// The bytes of object `key` as they arrive (a broken transfer is an error naming it).
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes, String>> + use<>, String> {
        use futures_util::StreamExt;
        let reader = self.op.reader(key).await.map_err(|e| self.explain(&e))?;
        let stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| self.explain(&e))?;
        let key = key.to_string();
        Ok(stream.map(move |c| c.map_err(|e| format!("download of {key} broke: {e}"))))
    }

    async fn download_into(
        &self,
        key: &str,
        dest: &std::path::Path,
    ) -> Result<(u64, String), String> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let reader = self.op.reader(key).await.map_err(|e| self.explain(&e))?;
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| self.explain(&e))?;
        let file = crate::fsutil::create_private_file(dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut n = 0u64;
        let mut sha = <sha2::Sha256 as sha2::Digest>::new();
        let progress = crate::progress::Progress::bytes("download", None);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("download of {key} broke: {e}"))?;
            n += chunk.len() as u64;
            sha2::Digest::update(&mut sha, &chunk);
            progress.inc(chunk.len() as u64);
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        }
        progress.finish();
        file.sync_all()
            .await
            .map_err(|e| format!("cannot fsync {}: {e}", dest.display()))?;
        Ok((n, hex::encode(sha2::Digest::finalize(sha))))
    }

    /// Pre-flight: the bucket exists and is writable (a tiny probe object is written and
    /// deleted under this node's prefix).
    pub async fn probe(&self) -> Result<(), String> {
        // Listing first: some servers create a missing bucket on the first write.
        self.op
            .list_with(&self.node_prefix)
            .limit(1)
            .await
            .map_err(|e| self.explain(&e))?;
        // Written and deleted by a task of its own: a backup that aborts the daemon's start-up
        // maintenance meanwhile must not leave the object behind (a slot due at start did).
        // The name is fixed per node, so one left by a killed process is overwritten and
        // deleted by the next probe.
        let key = format!("{}.etcdguard-probe", self.node_prefix);
        let this = self.clone();
        tokio::spawn(async move {
            this.op
                .write(&key, Bytes::from_static(b"etcdguard pre-flight check\n"))
                .await
                .map_err(|e| this.explain(&e))?;
            this.op.delete(&key).await.map_err(|e| this.explain(&e))
        })
        .await
        .map_err(|e| format!("the pre-flight probe did not finish: {e}"))?
    }
}
