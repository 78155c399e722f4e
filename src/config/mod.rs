//! The configuration: TOML model, kubeadm defaults, validation and the redacted display.
//!
//! Parsing happens in two layers. `Raw*` structs mirror the file exactly (every field optional,
//! unknown keys rejected, positions kept with `Spanned`), and [`validate`] turns them into the
//! effective [`Config`], collecting *every* problem with its file, line, column and field name
//! instead of stopping at the first. Nothing here touches the network; file checks that go
//! beyond parsing (certificates, the manifest, the bucket) live in `preflight`.
//!
//! `raw` is the file's model, `validate` turns it into a `Config` (the destinations in
//! `destination`, single values checked by the `Validator` of `validator`), `display` prints
//! it back with secrets redacted.

mod destination;
mod display;
mod raw;
mod validate;
mod validator;

use raw::RawConfig;
use validate::validate;
use validator::Validator;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::encryption::{Compression, Encryption};
use crate::retention::{HistoryLimits, Rule};
use crate::schedule::{Schedule, Zone};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/etcdguard/etcdguard.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/etcdguard";
pub const DEFAULT_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";
pub const DEFAULT_CA_CERT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
pub const DEFAULT_CLIENT_CERT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
pub const DEFAULT_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
pub const DEFAULT_SCHEDULE: &str = "0 */6 * * *";

/// The effective configuration after defaults and validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; `None` when the default path does not exist and defaults apply.
    pub source: Option<PathBuf>,
    pub schedule: Schedule,
    pub timezone: Zone,
    pub paused: bool,
    /// Take one backup when the daemon finds a slot was missed (down, suspended).
    pub catch_up: bool,
    pub state_dir: PathBuf,
    /// Prometheus textfile to keep up to date; `None`: no metrics file.
    pub metrics_file: Option<PathBuf>,
    pub etcd: EtcdConfig,
    pub local_storage: LocalStorageConfig,
    /// Where copies go besides the local store: `[remote_storage]` (one destination, named
    /// `remote` unless it says otherwise) and every `[[destination]]`, in the file's order.
    /// Every backup goes to all of them in one pass; the first is the primary (the recovery
    /// bundle and `per = "cluster"` go with it).
    pub destinations: Vec<DestinationConfig>,
    /// How many records `records.json` keeps (`[records]`).
    pub history: HistoryLimits,
    /// `[encryption]`: every copy that leaves the node is compressed and encrypted to these
    /// public recipients; `None`: copies are the snapshot itself.
    pub encryption: Option<Encryption>,
    /// `[bundle]`: a node recovery bundle beside each remote copy (requires `[encryption]`).
    pub bundle: Option<BundleConfig>,
    /// `[drill]`: restore drills (by hand always; on a schedule when one is set).
    pub drill: DrillConfig,
}

/// Which copy a drill restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillSource {
    /// The newest good local copy; the newest remote copy when no local one is left.
    Local,
    /// The newest remote copy (downloaded, opened, checked against its record).
    Remote,
}

#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// The daemon's drill schedule; `None`: drills only by hand (`etcdguard drill`).
    pub schedule: Option<Schedule>,
    pub source: DrillSource,
    /// Where drills build their data dir (and put downloads); emptied after every drill.
    pub scratch_dir: PathBuf,
    /// Opens sealed copies (`encrypt_local`, or remote copies with `[encryption]`).
    pub identity: Option<PathBuf>,
    /// An etcd binary of this node's version: when set, the drill starts it on the built dir
    /// (loopback, TLS with the node's etcd PKI) and compares `hashkv`.
    pub etcd_binary: Option<PathBuf>,
    /// A kube-apiserver binary: when set (with `etcd_binary`), the drill starts it on the
    /// drill's etcd (loopback, the node's etcd PKI) and lists every resource type the snapshot
    /// holds through it.
    pub apiserver_binary: Option<PathBuf>,
    /// Bound on the started etcd (and API server) becoming healthy and answering.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BundleConfig {
    /// Where the node's files are (`/`; another root for a chroot or a test node).
    pub root: PathBuf,
    /// More files or directories to take, besides kubeadm's.
    pub extra_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub manifest: PathBuf,
    /// Explicit endpoint; `None` means "the loopback client URL from the manifest".
    pub endpoint: Option<String>,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Bound on one whole snapshot stream.
    pub timeout: Duration,
    /// Bound on the wait for any single message of the stream (a stalled server).
    pub stall_timeout: Duration,
    /// Bound on establishing the TCP + TLS connection.
    pub dial_timeout: Duration,
    /// Bytes per second the snapshot stream is read at, at most (`rate_limit = "50MiB/s"`);
    /// `None`: no ceiling besides the pace.
    pub rate_limit: Option<u64>,
    /// `pacing`: follow etcd's latency (default), or not at all.
    pub pacing: PacingChoice,
    /// `metrics_url`: where etcd's metrics are read; `None`: the manifest's
    /// `--listen-metrics-urls`.
    pub metrics_url: Option<String>,
}

/// `[etcd] pacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacingChoice {
    /// Slow down as etcd's WAL fsync and backend commit latency rise (the fallback pace when
    /// its metrics cannot be read).
    Auto,
    /// As fast as etcd sends, within `rate_limit`.
    Off,
}

#[derive(Debug, Clone)]
pub struct LocalStorageConfig {
    pub path: PathBuf,
    pub retention: Rule,
}

/// The name `[remote_storage]` gets when it names none (the records own it: old records carry it).
pub use crate::records::DEFAULT_DESTINATION;

/// What kind of storage a destination is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An S3-compatible bucket.
    S3,
    /// A Google Cloud Storage bucket.
    Gcs {
        /// No credentials at all (an emulator, a public test bucket): explicit, logged loudly.
        anonymous: bool,
    },
    /// An Azure Blob Storage container (`bucket` holds the container's name).
    Azblob { account: String },
    /// A mounted directory (NFS, SMB, another disk): `path` is its root.
    Fs {
        path: PathBuf,
        /// `path` must be a mount point (the default): a mount that is missing is an error,
        /// never a write into the empty directory beneath it.
        require_mount: bool,
    },
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Gcs { .. } => "gcs",
            Kind::Azblob { .. } => "azblob",
            Kind::Fs { .. } => "fs",
        }
    }
}

/// One destination of the copies (`[remote_storage]` or a `[[destination]]`).
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// Its name in records, metrics and messages (unique; letters, digits, `-`, `_`).
    pub name: String,
    /// How the file names it in messages: `remote_storage` or `destination.<name>`.
    pub table: String,
    pub kind: Kind,
    /// The bucket (S3, GCS) or container (Azure); empty for `fs`.
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    /// Key prefix shared by all nodes; each node writes under `<prefix><member>/`.
    pub prefix: String,
    pub force_path_style: bool,
    /// Extra CA certificates (PEM) to trust for the endpoint, besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// Accept any server certificate. Explicit, and logged loudly on every use.
    pub insecure_skip_tls_verify: bool,
    /// Server-side encryption header.
    pub sse: Option<Sse>,
    /// S3 Object Lock: every copy is given this retention when it is uploaded.
    pub object_lock: Option<ObjectLock>,
    /// Where the access key comes from (see [`Credentials`]).
    pub credentials: Credentials,
    /// Multipart upload part size in bytes.
    pub part_size: usize,
    /// Parts uploaded at the same time.
    pub concurrency: usize,
    /// Bound on one upload (or one retry of it).
    pub timeout: Duration,
    /// Bytes per second the upload sends at most (`rate_limit = "20MiB/s"`), on average over
    /// parts; in the backup's own pass it paces the stream from etcd too.
    pub rate_limit: Option<u64>,
    /// The longest the object store may take to answer one request or accept one part; also
    /// how long the snapshot stream waits for a remote that takes no data before the same-pass
    /// upload is given up (the local backup goes on; the upload is retried later).
    pub stall_timeout: Duration,
    pub retention: Rule,
    /// `per = "cluster"`: one copy per scheduled slot for the cluster (the nodes agree through
    /// etcd, `cluster.rs`); `false`: every node its own (the default).
    pub per_cluster: bool,
    /// The lease a slot's uploader keeps alive: how soon another node may take a dead
    /// uploader's slot over.
    pub cluster_lease: Duration,
}

/// S3 Object Lock retention given to each uploaded copy (the bucket must have Object Lock
/// enabled): nobody, the node's own credentials included, can delete it before `period` is
/// over (`Governance`: except with the bypass permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Server-side encryption requested for uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// `x-amz-server-side-encryption: AES256`
    S3Managed,
    /// `aws:kms`, with the key id (or the bucket's default key).
    Kms(Option<String>),
}

/// Where remote credentials come from. They are read again for every upload, so rotated keys
/// and renewed role tokens work without a restart; they are never kept in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A credentials file (mode 0600/0400), named by `credentials_file`: AWS-style for S3, a
    /// service account's JSON key for GCS, the account key for Azure.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/<name>` from systemd's `LoadCredential=` (the default when that
    /// credential exists), else the provider's standard chain (AWS's; GCS's application
    /// default credentials; Azure has none: a key is required).
    SystemdOrDefault(String),
}

/// The systemd credential name the unit's `LoadCredential=` uses for `[remote_storage]`; a
/// `[[destination]]` named N uses `etcdguard-N`.
pub const SYSTEMD_CREDENTIAL: &str = "etcdguard-s3";
pub const DEFAULT_PART_SIZE: usize = 5 << 20;
const MIN_PART_SIZE: usize = 5 << 20;

/// One thing wrong with the configuration, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: Option<PathBuf>,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    /// Dotted field name, e.g. `local_storage.ttl`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.position) {
            (Some(file), Some((l, c))) => write!(f, "{}:{l}:{c}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => write!(f, "(defaults): ")?,
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration. Maps to exit code 78 (EX_CONFIG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.len() {
            1 => write!(f, "configuration error: {}", self.problems[0]),
            n => {
                write!(f, "{n} configuration errors:")?;
                for p in &self.problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn single(file: Option<&Path>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                file: file.map(Path::to_owned),
                position: None,
                field: None,
                message: message.into(),
            }],
        }
    }
}

/// Loads the configuration. `explicit` is the path named by `--config` or `ETCDGUARD_CONFIG`:
/// it must exist. Without it, the default path is read if it exists, and defaults apply if not.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    match explicit {
        Some(p) => load_from(p, true),
        None => load_from(Path::new(DEFAULT_CONFIG_PATH), false),
    }
}

/// Loads `path` when it exists; the defaults when it does not (the default file's rule, for
/// another location such as a rescue root).
pub fn load_optional(path: &Path) -> Result<Config, ConfigError> {
    load_from(path, false)
}

fn load_from(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
    let path = path.to_owned();
    // Test-only: lets the daemon tests use a 6-field (seconds) schedule.
    let allow_seconds = std::env::var_os(TEST_SECONDS_ENV).is_some_and(|v| v == "1");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_with(&text, Some(&path), allow_seconds),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            parse_with("", None, allow_seconds)
        }
        Err(e) => Err(ConfigError::single(
            Some(&path),
            match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "the configuration file does not exist (check --config / ETCDGUARD_CONFIG)"
                        .to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "the configuration file cannot be read: permission denied (run as root, \
                     or fix the file's owner and mode; the package installs it 0640 root)"
                        .to_string()
                }
                _ => format!("the configuration file cannot be read: {e}"),
            },
        )),
    }
}

/// Set to `1` to accept 6-field cron expressions with seconds. For tests only.
pub const TEST_SECONDS_ENV: &str = "ETCDGUARD_TEST_SECONDS_SCHEDULE";

/// Parses and validates configuration text as if it were a file (for the fuzz targets).
pub(crate) fn parse_text(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, Some(Path::new("fuzz.toml")), false)
}

/// Parses and validates configuration text. `file` names it in error messages; `None` means
/// built-in defaults.
#[cfg(test)]
pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
    parse_with(text, file, false)
}

fn parse_with(text: &str, file: Option<&Path>, allow_seconds: bool) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        problems: vec![Problem {
            file: file.map(Path::to_owned),
            position: e.span().map(|s| line_col(text, s.start)),
            field: None,
            message: e.message().trim_end().to_string(),
        }],
    })?;
    let mut v = Validator {
        text,
        file,
        allow_seconds,
        problems: Vec::new(),
    };
    let config = validate(raw, &mut v);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            problems: v.problems,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// The same configuration for a node whose disk is mounted at `root` (`restore --root`):
    /// the state dir, the etcd manifest and TLS files, the snapshot dir and the metrics file
    /// under `root`. The destinations (their credential files, an `fs` destination's mount)
    /// stay this machine's.
    pub fn under_root(mut self, root: &Path) -> Config {
        let at = |p: &mut PathBuf| *p = crate::fsutil::under_root(root, p);
        at(&mut self.state_dir);
        at(&mut self.etcd.manifest);
        at(&mut self.etcd.ca_cert);
        at(&mut self.etcd.client_cert);
        at(&mut self.etcd.client_key);
        at(&mut self.local_storage.path);
        at(&mut self.drill.scratch_dir);
        if let Some(m) = self.metrics_file.as_mut() {
            at(m);
        }
        self
    }

    /// The primary destination: the first one configured (`[remote_storage]`, else the first
    /// `[[destination]]`). The recovery bundle, `per = "cluster"`, `records --remote` and
    /// `recover` use it.
    pub fn primary(&self) -> Option<&DestinationConfig> {
        self.destinations.first()
    }

    /// Where the node's files are: `[bundle] root`, `/` without a `[bundle]` (a test node or
    /// a chroot sets it). The drill finds the files its manifests name there.
    pub fn node_root(&self) -> &Path {
        self.bundle.as_ref().map_or(Path::new("/"), |b| &b.root)
    }

    /// True when `destination` names the primary destination.
    pub fn is_primary(&self, destination: &str) -> bool {
        self.primary().is_some_and(|d| d.name == destination)
    }
}

#[cfg(test)]
mod tests;
