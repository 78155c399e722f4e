//! The remote copy: an S3-compatible bucket through opendal, behind this one small interface
//! (`Remote`), so another object store is a different operator builder, not a change
//! elsewhere.
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

pub(crate) mod credentials;
pub mod http;
mod mounted;
mod uploads;

use std::time::{Duration, Instant};

const MIB: f64 = (1u64 << 20) as f64;

use bytes::Bytes;
use md5::{Digest, Md5};
use opendal::{OperationContext, Operator};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{DestinationConfig, Kind, ObjectLock, Sse};
use crate::encryption::{Encryption, Sealer, Sealing};
use crate::records::SealedCopy;
use crate::store::local::{is_snapshot_file_name, sanitize_member};
use credentials::Resolved;
pub use uploads::{ListError, OpenUpload};

/// Bytes in flight between the etcd stream and the upload: small, so memory stays flat; a
/// remote that cannot keep up makes the upload fall back to a retry from the local file.
const FEED_DEPTH: usize = 64;
/// Bound on aborting a multipart upload (a dead server must not hold up anything).
const ABORT_TIMEOUT: Duration = Duration::from_secs(15);
const SIDECAR_SUFFIX: &str = ".json";
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

/// An open connection to one destination, for one node.
#[derive(Clone)]
pub struct Remote {
    op: Operator,
    /// The destination's name, and its table for messages (`destination.<name>`).
    name: String,
    table: String,
    backend: Backend,
    bucket: String,
    endpoint: String,
    /// Every location starts with it: `s3://<bucket>/`, `gs://<bucket>/`,
    /// `azblob://<account>/<container>/`, `file://<root>/`.
    scheme: String,
    prefix: String,
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
        raw: uploads::RawS3,
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

/// Why an object-store call failed, as one sentence with the bucket, endpoint and fix;
/// `table` names the destination's settings (`remote_storage`, `destination.<name>`).
pub fn explain(
    e: &opendal::Error,
    table: &str,
    bucket: &str,
    endpoint: &str,
    key_id: Option<&str>,
) -> String {
    let chain = crate::exit::error_chain(e);
    let has = |n: &str| chain.contains(n);
    let key = key_id.unwrap_or("(from the provider's chain)");
    if has("NoSuchBucket") {
        format!("bucket {bucket} does not exist at {endpoint}; create it or fix {table}.bucket")
    } else if has("ContainerNotFound") {
        format!(
            "container {bucket} does not exist at {endpoint}; create it or fix {table}.container"
        )
    } else if has("InvalidAccessKeyId") {
        format!("access key {key} is not known at {endpoint}; check the credentials")
    } else if has("SignatureDoesNotMatch") {
        format!(
            "the secret key for access key {key} is wrong (signature does not match at \
             {endpoint}); check the credentials"
        )
    } else if has("AccessDenied") || e.kind() == opendal::ErrorKind::PermissionDenied {
        format!("access denied for key {key} on bucket {bucket} at {endpoint}")
    } else if has("UnknownIssuer")
        || has("invalid peer certificate")
        || has("certificate verify failed")
        || has("NotValidForName")
    {
        format!(
            "the TLS certificate of {endpoint} is not trusted ({}); set {table}.ca_bundle \
             to the CA that signed it",
            short(&chain)
        )
    } else if has("Connection refused") || has("tcp connect error") {
        format!("cannot connect to {endpoint}: connection refused")
    } else if has("timed out") || has("deadline") || has("timeout reached") {
        format!("the object store at {endpoint} did not answer in time ({table}.stall_timeout)")
    } else {
        format!(
            "object store {endpoint} (bucket {bucket}): {}",
            short(&chain)
        )
    }
}

fn short(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// The S3 multipart ETag (`md5(md5(part1)…md5(partN))-N`) or, for a single PUT, the
/// object's MD5; computed from the parts as they are uploaded.
#[derive(Debug, Clone, Default)]
pub struct EtagCalc {
    part_size: usize,
    current: Md5,
    in_part: usize,
    parts: Vec<[u8; 16]>,
}

impl EtagCalc {
    pub fn new(part_size: usize) -> Self {
        EtagCalc {
            part_size,
            ..Default::default()
        }
    }

    pub fn update(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let n = (self.part_size - self.in_part).min(b.len());
            self.current.update(&b[..n]);
            self.in_part += n;
            b = &b[n..];
            if self.in_part == self.part_size {
                let d = std::mem::take(&mut self.current).finalize();
                self.parts.push(d.into());
                self.in_part = 0;
            }
        }
    }

    /// `(multipart ETag, single-PUT ETag)`; the server's ETag form says which applies.
    pub fn finish(mut self) -> (String, Option<String>) {
        if self.in_part > 0 || self.parts.is_empty() {
            self.parts.push(self.current.finalize().into());
        }
        let single = (self.parts.len() == 1).then(|| hex::encode(self.parts[0]));
        let mut all = Md5::new();
        for p in &self.parts {
            all.update(p);
        }
        (
            format!("{}-{}", hex::encode(all.finalize()), self.parts.len()),
            single,
        )
    }
}

/// Compares a server ETag with what we computed. `None` when the server's form is not an MD5
/// form (SSE-KMS, servers with their own scheme): nothing to compare.
pub fn etag_matches(server: &str, computed: &(String, Option<String>)) -> Option<bool> {
    let e = server.trim_matches('"').to_ascii_lowercase();
    let (hexpart, suffix) = match e.split_once('-') {
        Some((h, n)) => (h, Some(n)),
        None => (e.as_str(), None),
    };
    if hexpart.len() != 32 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(match suffix {
        Some(_) => e == computed.0,
        None => computed.1.as_deref() == Some(hexpart),
    })
}

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
pub struct Sent {
    etag: EtagCalc,
    /// The whole object's MD5, for servers that report it (GCS).
    md5: Option<[u8; 16]>,
    /// The sealed object's own sha256, for its record; a plain object's is the snapshot's,
    /// known already, so it is not computed twice.
    sha256: Option<String>,
    size: u64,
    sealing: Option<Sealing>,
    /// Time spent sending: from the first byte to the last handed to the writer.
    transfer: Duration,
    /// Time completing the upload after that.
    completing: Duration,
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
        let (op, backend, endpoint, creds) = match &cfg.kind {
            Kind::S3 => Self::s3(cfg, &client)?,
            Kind::Gcs { anonymous } => {
                let endpoint = cfg
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| "https://storage.googleapis.com".into());
                let mut b = opendal::services::Gcs::default()
                    .bucket(&cfg.bucket)
                    .endpoint(&endpoint)
                    .root("/");
                let creds = if *anonymous {
                    b = b
                        .skip_signature()
                        .disable_vm_metadata()
                        .disable_config_load();
                    Resolved::Anonymous
                } else {
                    match credentials::resolve_secret(
                        &cfg.credentials,
                        credentials::systemd_dir().as_deref(),
                    )? {
                        Some((json, from)) => {
                            use base64::Engine;
                            b = b
                                .credential(&base64::engine::general_purpose::STANDARD.encode(json))
                                .disable_vm_metadata()
                                .disable_config_load();
                            Resolved::Secret { from }
                        }
                        None => Resolved::GcsChain,
                    }
                };
                let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
                (op, Backend::Gcs, endpoint, creds)
            }
            Kind::Azblob { account } => {
                let endpoint = cfg
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
                let Some((key, from)) = credentials::resolve_secret(
                    &cfg.credentials,
                    credentials::systemd_dir().as_deref(),
                )?
                else {
                    return Err(format!(
                        "{} needs the storage account's key: set credentials_file (a file \
                         holding the key, mode 0600) or give the unit the systemd credential \
                         etcdguard-{}",
                        cfg.table, cfg.name
                    ));
                };
                let b = opendal::services::Azblob::default()
                    .container(&cfg.bucket)
                    .endpoint(&endpoint)
                    .account_name(account)
                    .account_key(key.trim())
                    .root("/");
                let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
                (op, Backend::Azblob, endpoint, Resolved::Secret { from })
            }
            Kind::Fs {
                path,
                require_mount,
            } => {
                mounted::check(path, *require_mount, &cfg.table)?;
                mounted::prepare(path, &node_prefix)?;
                let root = path.display().to_string();
                let b = opendal::services::Fs::default().root(&root);
                let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
                (
                    op,
                    Backend::Fs { root: path.clone() },
                    format!("the directory {root}"),
                    Resolved::Filesystem,
                )
            }
        };
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
            name: cfg.name.clone(),
            table: cfg.table.clone(),
            backend,
            bucket: cfg.bucket.clone(),
            endpoint,
            scheme: scheme(cfg),
            prefix: cfg.prefix.clone(),
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

    /// The S3 operator (static key or the AWS chain, SSE) and the raw calls beside it.
    fn s3(
        cfg: &DestinationConfig,
        client: &reqwest::Client,
    ) -> Result<(Operator, Backend, String, Resolved), String> {
        let creds = credentials::resolve(&cfg.credentials, credentials::systemd_dir().as_deref())?;
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
        let mut b = opendal::services::S3::default()
            .bucket(&cfg.bucket)
            .region(&cfg.region)
            .endpoint(&endpoint)
            .root("/");
        if !cfg.force_path_style {
            b = b.enable_virtual_host_style();
        }
        if cfg.object_lock.is_some() {
            // Object Lock buckets refuse uploads without Content-MD5 (or another checksum).
            b = b.checksum_algorithm("md5");
        }
        if let Resolved::Static { key, .. } = &creds {
            // Only this key: neither environment nor profiles nor instance metadata may
            // quietly replace it.
            b = b
                .disable_config_load()
                .disable_ec2_metadata()
                .access_key_id(&key.access_key_id)
                .secret_access_key(&key.secret_access_key);
            if let Some(t) = &key.session_token {
                b = b.session_token(t);
            }
        }
        match &cfg.sse {
            None => {}
            Some(Sse::S3Managed) => b = b.server_side_encryption_with_s3_key(),
            Some(Sse::Kms(None)) => b = b.server_side_encryption_with_aws_managed_kms_key(),
            Some(Sse::Kms(Some(id))) => {
                b = b.server_side_encryption_with_customer_managed_kms_key(id)
            }
        }
        let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
        let raw = uploads::RawS3::new(
            client.clone(),
            &creds,
            &endpoint,
            &cfg.bucket,
            &cfg.region,
            cfg.force_path_style,
            cfg.stall_timeout,
        )?;
        let backend = Backend::S3 {
            kms: matches!(cfg.sse, Some(Sse::Kms(_))),
            raw,
        };
        Ok((op, backend, endpoint, creds))
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
            Backend::Fs { root } => mounted::partials(root, &self.node_prefix)
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
            Backend::Fs { root } => mounted::remove_partial(root, &u.key),
            Backend::Gcs | Backend::Azblob => Ok(()),
        }
    }

    /// The kind of storage (`s3`, `gcs`, `azblob`, `fs`).
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::S3 { .. } => "s3",
            Backend::Gcs => "gcs",
            Backend::Azblob => "azblob",
            Backend::Fs { .. } => "fs",
        }
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
            Backend::Fs { .. } => (mounted::partial_key(&key), true),
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

    async fn run_upload(
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
        let mut etag = EtagCalc::new(self.part_size);
        let mut whole_md5 = md5.then(Md5::new);
        let mut sha = hash.then(sha2::Sha256::new);
        let mut size = 0u64;
        let mut started = None;
        while let Some(b) = rx.recv().await {
            let started = *started.get_or_insert_with(Instant::now);
            etag.update(&b);
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
                let _ = mounted::remove_partial(root, key);
            }
            _ => {
                let _ = tokio::time::timeout(ABORT_TIMEOUT, w.abort()).await;
            }
        }
    }

    /// Checks a completed object against the size and ETag of what was sent. An object that
    /// is not what was sent is deleted (the retry uploads from the local file). On a mounted
    /// directory the partial file is read back and compared before it is renamed into place.
    async fn verify_object(&self, key: &str, sent: Sent) -> Result<Uploaded, String> {
        let r = match &self.backend {
            Backend::Fs { root } => {
                let (root, key, sha, size) = (
                    root.clone(),
                    key.to_string(),
                    sent.sha256.clone().unwrap_or_default(),
                    sent.size,
                );
                tokio::task::spawn_blocking(move || mounted::publish(&root, &key, &sha, size))
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
        let until = crate::clock::now()
            + chrono::Duration::from_std(lock.period).unwrap_or(chrono::Duration::MAX);
        match raw.put_retention(key, lock.mode.as_str(), until).await {
            Ok(()) => Ok(Some(until)),
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

    async fn compare_object(
        &self,
        key: &str,
        size: u64,
        etag: EtagCalc,
        md5: Option<[u8; 16]>,
    ) -> Result<Option<String>, String> {
        let meta = self.op.stat(key).await.map_err(|e| self.explain(&e))?;
        if meta.content_length() != size {
            return Err(format!(
                "{} has {} bytes after the upload, expected {size}",
                self.location(key),
                meta.content_length()
            ));
        }
        let server = meta.etag().map(str::to_string);
        // GCS reports the object's MD5 (base64), which its ETag is not.
        if let (Some(mine), Some(theirs)) = (md5, meta.content_md5()) {
            use base64::Engine;
            let mine = base64::engine::general_purpose::STANDARD.encode(mine);
            if mine != theirs {
                return Err(format!(
                    "{} has MD5 {theirs}, but the uploaded bytes give {mine}",
                    self.location(key)
                ));
            }
        }
        let kms = matches!(self.backend, Backend::S3 { kms: true, .. });
        let comparable = matches!(self.backend, Backend::S3 { .. }) && !kms;
        let computed = etag.finish();
        let checked = match server.as_deref() {
            Some(s) if comparable => match etag_matches(s, &computed) {
                Some(true) => true,
                Some(false) => {
                    return Err(format!(
                        "{} has ETag {s}, but the uploaded bytes give {}",
                        self.location(key),
                        computed.1.as_deref().unwrap_or(&computed.0)
                    ))
                }
                None => false,
            },
            _ => false,
        };
        tracing::debug!(key, etag_compared = checked, "upload verified");
        Ok(server)
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

    /// Snapshot objects under this node's prefix (sidecars and foreign names left out).
    pub async fn list_node(&self) -> Result<Vec<ObjectInfo>, String> {
        let entries = self
            .op
            .list_with(&self.node_prefix)
            .recursive(false)
            .await
            .map_err(|e| self.explain(&e))?;
        let mut out = Vec::new();
        for e in entries {
            let key = e.path().to_string();
            let Some(name) = self.own_snapshot_name(&key).map(str::to_string) else {
                continue;
            };
            let size = match e.metadata().content_length() {
                0 => self
                    .op
                    .stat(&key)
                    .await
                    .map(|m| m.content_length())
                    .unwrap_or(0),
                n => n,
            };
            out.push(ObjectInfo { key, name, size });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes this node's sidecars whose snapshot object is gone (a run killed between
    /// deleting the object and its sidecar); the keys deleted.
    pub async fn delete_orphan_sidecars(&self) -> Result<Vec<String>, String> {
        let entries = self
            .op
            .list_with(&self.node_prefix)
            .recursive(false)
            .await
            .map_err(|e| self.explain(&e))?;
        let keys: Vec<String> = entries.iter().map(|e| e.path().to_string()).collect();
        let mut deleted = Vec::new();
        for k in &keys {
            let Some(object) = k.strip_suffix(SIDECAR_SUFFIX) else {
                continue;
            };
            if self.own_snapshot_name(object).is_none() || keys.iter().any(|o| o == object) {
                continue;
            }
            self.op.delete(k).await.map_err(|e| self.explain(&e))?;
            deleted.push(k.clone());
        }
        Ok(deleted)
    }

    /// Every sidecar under the shared prefix (all nodes), as (key, JSON bytes).
    pub async fn all_sidecars(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let entries = self
            .op
            .list_with(&self.prefix)
            .recursive(true)
            .await
            .map_err(|e| self.explain(&e))?;
        let mut out = Vec::new();
        for e in entries {
            let key = e.path().to_string();
            let Some(base) = key.strip_suffix(SIDECAR_SUFFIX) else {
                continue;
            };
            if !is_snapshot_file_name(base.rsplit('/').next().unwrap_or("")) {
                continue;
            }
            let bytes = self.op.read(&key).await.map_err(|e| self.explain(&e))?;
            out.push((key, bytes.to_vec()));
        }
        Ok(out)
    }

    /// True when an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, String> {
        match self.op.stat(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.explain(&e)),
        }
    }

    /// The record in the sidecar of the snapshot at `key`.
    pub async fn read_sidecar(&self, key: &str) -> Result<crate::records::Record, String> {
        let bytes = self
            .op
            .read(&format!("{key}{SIDECAR_SUFFIX}"))
            .await
            .map_err(|e| self.explain(&e))?;
        serde_json::from_slice(&bytes.to_vec())
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
        let mut sha = sha2::Sha256::new();
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
        let key = format!(
            "{}.etcdguard-probe-{}",
            self.node_prefix,
            std::process::id()
        );
        self.op
            .write(&key, Bytes::from_static(b"etcdguard pre-flight check\n"))
            .await
            .map_err(|e| self.explain(&e))?;
        self.op.delete(&key).await.map_err(|e| self.explain(&e))
    }
}

/// The sending side of an upload that runs next to a snapshot stream. Sending never fails
/// the snapshot: a remote that errs or stalls only ends the upload (the reason is kept).
pub struct UploadFeed {
    tx: Option<mpsc::Sender<Bytes>>,
    decide: Option<oneshot::Sender<bool>>,
    handle: Option<JoinHandle<Result<Sent, String>>>,
    failed: Option<String>,
    stall: Duration,
    /// The destination's table, for messages.
    table: String,
    key: String,
    sealer: Option<Sealer>,
    sealing: Option<Sealing>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        let data = vec![7u8; 11];
        let mut c = EtagCalc::new(5);
        c.update(&data[..3]);
        c.update(&data[3..]);
        let (multi, single) = c.finish();
        assert!(multi.ends_with("-3"), "{multi}");
        assert_eq!(single, None);
        let mut c = EtagCalc::new(100);
        c.update(&data);
        let comp = c.finish();
        let whole = hex::encode(Md5::digest(&data));
        assert_eq!(comp.1.as_deref(), Some(whole.as_str()));
        assert_eq!(etag_matches(&format!("\"{whole}\""), &comp), Some(true));
        assert_eq!(
            etag_matches("\"00000000000000000000000000000000\"", &comp),
            Some(false)
        );
        assert_eq!(etag_matches("\"not-an-md5\"", &comp), None);
        // Multipart form: md5 of the part md5s.
        let mut c = EtagCalc::new(5);
        c.update(&data);
        let comp = c.finish();
        let mut all = Md5::new();
        for part in data.chunks(5) {
            all.update(Md5::digest(part));
        }
        let expect = format!("{}-3", hex::encode(all.finalize()));
        assert_eq!(etag_matches(&format!("\"{expect}\""), &comp), Some(true));
    }
}
