//! The configuration: TOML model, kubeadm defaults, validation and the redacted display.
//!
//! Parsing happens in two layers. `Raw*` structs mirror the file exactly (every field optional,
//! unknown keys rejected, positions kept with `Spanned`), and [`validate`] turns them into the
//! effective [`Config`], collecting *every* problem with its file, line, column and field name
//! instead of stopping at the first. Nothing here touches the network; file checks that go
//! beyond parsing (certificates, the manifest) live in `commands::config_check`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
    pub remote_storage: Option<RemoteStorageConfig>,
    /// How many records `records.json` keeps (`[records]`).
    pub history: HistoryLimits,
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
}

#[derive(Debug, Clone)]
pub struct LocalStorageConfig {
    pub path: PathBuf,
    pub retention: Rule,
}

#[derive(Debug, Clone)]
pub struct RemoteStorageConfig {
    pub kind: String,
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
    /// Where the access key comes from (see [`Credentials`]).
    pub credentials: Credentials,
    /// Multipart upload part size in bytes.
    pub part_size: usize,
    /// Parts uploaded at the same time.
    pub concurrency: usize,
    /// Bound on one upload (or one retry of it).
    pub timeout: Duration,
    /// The longest the object store may take to answer one request or accept one part; also
    /// how long the snapshot stream waits for a remote that takes no data before the same-pass
    /// upload is given up (the local backup goes on; the upload is retried later).
    pub stall_timeout: Duration,
    pub retention: Rule,
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
    /// An AWS-style credentials file (mode 0600/0400), named by `credentials_file`.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/<name>` from systemd's `LoadCredential=` (the default when that
    /// credential exists), else the standard AWS chain.
    SystemdOrDefault(String),
}

/// The systemd credential name the unit's `LoadCredential=` uses.
pub const SYSTEMD_CREDENTIAL: &str = "etcdguard-s3";
pub const DEFAULT_PART_SIZE: usize = 5 << 20;
const MIN_PART_SIZE: usize = 5 << 20;

// ---------------------------------------------------------------------------------------------
// Errors

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

// ---------------------------------------------------------------------------------------------
// Loading

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

/// Parses and validates configuration text. `file` names it in error messages; `None` means
/// built-in defaults.
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

// ---------------------------------------------------------------------------------------------
// Raw file model

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    paused: Option<bool>,
    catch_up: Option<bool>,
    state_dir: Option<Spanned<PathBuf>>,
    metrics_file: Option<Spanned<PathBuf>>,
    etcd: Option<RawEtcd>,
    local_storage: Option<RawLocal>,
    remote_storage: Option<Spanned<RawRemote>>,
    records: Option<RawRecords>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecords {
    successful_history_limit: Option<Spanned<i64>>,
    failed_history_limit: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    manifest: Option<Spanned<PathBuf>>,
    endpoint: Option<Spanned<String>>,
    ca_cert: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    timeout: Option<Spanned<RawDuration>>,
    stall_timeout: Option<Spanned<RawDuration>>,
    dial_timeout: Option<Spanned<RawDuration>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    path: Option<Spanned<PathBuf>>,
    ttl: Option<Spanned<RawDuration>>,
    keep: Option<Spanned<i64>>,
    min_keep: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    force_path_style: Option<bool>,
    ca_bundle: Option<Spanned<PathBuf>>,
    insecure_skip_tls_verify: Option<bool>,
    sse: Option<Spanned<String>>,
    sse_kms_key_id: Option<Spanned<String>>,
    credentials_file: Option<Spanned<PathBuf>>,
    part_size: Option<Spanned<RawSize>>,
    concurrency: Option<Spanned<i64>>,
    timeout: Option<Spanned<RawDuration>>,
    stall_timeout: Option<Spanned<RawDuration>>,
    ttl: Option<Spanned<RawDuration>>,
    keep: Option<Spanned<i64>>,
    min_keep: Option<Spanned<i64>>,
}

/// A byte size: an integer, or a string such as "8MiB", "16MB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

fn parse_size(raw: &RawSize) -> Result<usize, String> {
    let (num, unit) = match raw {
        RawSize::Bytes(b) => (*b as f64, 1u64),
        RawSize::Text(t) => {
            let t = t.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (n, u) = t.split_at(split);
            let unit = match u.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" => 1000,
                "kib" => 1 << 10,
                "m" | "mb" => 1000 * 1000,
                "mib" => 1 << 20,
                "g" | "gb" => 1000 * 1000 * 1000,
                "gib" => 1 << 30,
                other => {
                    return Err(format!(
                    "{t:?} has an unknown unit {other:?}; use bytes or a string such as \"8MiB\""
                ))
                }
            };
            let n: f64 = n
                .parse()
                .map_err(|_| format!("{t:?} is not a size such as \"8MiB\""))?;
            (n, unit)
        }
    };
    let bytes = num * unit as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err("must be a positive size".into());
    }
    Ok(bytes as usize)
}

/// A duration as `EtcdBackupConfiguration` accepts it: integer seconds or a humantime string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(i64),
    Text(String),
}

// ---------------------------------------------------------------------------------------------
// Validation

struct Validator<'a> {
    text: &'a str,
    file: Option<&'a Path>,
    allow_seconds: bool,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.map(Path::to_owned),
            position: span.map(|s| line_col(self.text, s.start)),
            field: Some(field.to_string()),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        raw: Option<Spanned<RawDuration>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        let span = raw.span();
        match parse_duration(raw.get_ref()) {
            Ok(d) => d,
            Err(msg) => {
                self.problem(Some(span), field, msg);
                default
            }
        }
    }

    /// A whole number of at least 1.
    fn count(&mut self, raw: &Spanned<i64>, field: &str, what: &str) -> Option<usize> {
        match usize::try_from(*raw.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.problem(
                    Some(raw.span()),
                    field,
                    format!("must be at least 1 (got {}): {what}", raw.get_ref()),
                );
                None
            }
        }
    }

    /// `ttl`, `keep` and `min_keep` of one destination. With neither `ttl` nor `keep`, the
    /// default ttl applies; `ttl = "forever"` turns the age limit off. `min_keep` defaults to
    /// 3, or to `keep` when that is smaller.
    fn retention(
        &mut self,
        section: &str,
        ttl: Option<Spanned<RawDuration>>,
        keep: Option<Spanned<i64>>,
        min_keep: Option<Spanned<i64>>,
        default_ttl: Duration,
    ) -> Rule {
        let keep_field = format!("{section}.keep");
        let keep_span = keep.as_ref().map(Spanned::span);
        let keep = keep
            .and_then(|k| self.count(&k, &keep_field, "the number of newest good snapshots kept"));
        let ttl = match ttl {
            None if keep_span.is_some() => None,
            None => Some(default_ttl),
            Some(raw) => match raw.get_ref() {
                RawDuration::Text(t) if t.trim() == "forever" => None,
                _ => Some(self.duration(Some(raw), &format!("{section}.ttl"), default_ttl)),
            },
        };
        let min_keep = match min_keep {
            None => keep.map_or(3, |k| k.min(3)),
            Some(raw) => {
                let n = self
                    .count(
                        &raw,
                        &format!("{section}.min_keep"),
                        "the number of newest good snapshots that are never deleted",
                    )
                    .unwrap_or(1);
                if keep.is_some_and(|k| k < n) {
                    self.problem(
                        keep_span.clone(),
                        &keep_field,
                        format!(
                            "keep ({}) must be at least min_keep ({n}): min_keep snapshots \
                             are never deleted",
                            keep.unwrap_or(0)
                        ),
                    );
                }
                n
            }
        };
        Rule {
            ttl,
            keep,
            min_keep,
        }
    }

    fn path(&mut self, raw: Option<Spanned<PathBuf>>, field: &str, default: &Path) -> PathBuf {
        let Some(raw) = raw else {
            return default.to_owned();
        };
        let span = raw.span();
        let p = raw.into_inner();
        if !p.is_absolute() {
            self.problem(
                Some(span),
                field,
                format!(
                    "must be an absolute path (got {:?}); the daemon's working directory is /",
                    p.display().to_string()
                ),
            );
        }
        p
    }
}

fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    let d = match raw {
        RawDuration::Seconds(s) if *s <= 0 => {
            return Err(format!(
                "must be a positive duration (got {s}); write seconds as a positive integer \
                 or a string such as \"7d\" or \"12h\""
            ))
        }
        RawDuration::Seconds(s) => Duration::from_secs(*s as u64),
        RawDuration::Text(t) => {
            let trimmed = t.trim();
            if trimmed.starts_with('-') {
                return Err(format!("must be a positive duration (got {t:?})"));
            }
            humantime::parse_duration(trimmed).map_err(|e| {
                format!(
                    "{t:?} is not a duration ({e}); use a string such as \"90d\", \"12h\", \
                     \"30m\" or integer seconds"
                )
            })?
        }
    };
    if d.is_zero() {
        return Err("must be a positive duration (got 0)".to_string());
    }
    Ok(d)
}

fn validate(raw: RawConfig, v: &mut Validator<'_>) -> Config {
    let schedule = match raw.schedule {
        None => Schedule::parse(DEFAULT_SCHEDULE).expect("default schedule parses"),
        Some(s) => match Schedule::parse_with(s.get_ref(), v.allow_seconds) {
            Ok(sch) => sch,
            Err(e) => {
                v.problem(Some(s.span()), "schedule", e);
                Schedule::parse(DEFAULT_SCHEDULE).expect("default schedule parses")
            }
        },
    };
    let timezone = match raw.timezone {
        None => Zone::Utc,
        Some(s) => match Zone::parse(s.get_ref()) {
            Ok(z) => z,
            Err(e) => {
                v.problem(Some(s.span()), "timezone", e);
                Zone::Utc
            }
        },
    };
    let state_dir = v.path(raw.state_dir, "state_dir", Path::new(DEFAULT_STATE_DIR));
    let metrics_file = raw.metrics_file.map(|m| {
        let span = m.span();
        let p = v.path(Some(m), "metrics_file", Path::new(""));
        if p.extension().is_none_or(|e| e != "prom") {
            v.problem(
                Some(span),
                "metrics_file",
                format!(
                    "{:?} must end in .prom: node_exporter's textfile collector reads only \
                     *.prom files",
                    p.display().to_string()
                ),
            );
        }
        p
    });

    let e = raw.etcd.unwrap_or_default();
    let endpoint = e.endpoint.and_then(|ep| {
        let span = ep.span();
        match validate_endpoint(ep.get_ref()) {
            Ok(()) => Some(ep.into_inner()),
            Err(msg) => {
                v.problem(Some(span), "etcd.endpoint", msg);
                None
            }
        }
    });
    let etcd = EtcdConfig {
        manifest: v.path(e.manifest, "etcd.manifest", Path::new(DEFAULT_MANIFEST)),
        endpoint,
        ca_cert: v.path(e.ca_cert, "etcd.ca_cert", Path::new(DEFAULT_CA_CERT)),
        client_cert: v.path(
            e.client_cert,
            "etcd.client_cert",
            Path::new(DEFAULT_CLIENT_CERT),
        ),
        client_key: v.path(
            e.client_key,
            "etcd.client_key",
            Path::new(DEFAULT_CLIENT_KEY),
        ),
        timeout: v.duration(e.timeout, "etcd.timeout", Duration::from_secs(600)),
        stall_timeout: v.duration(
            e.stall_timeout,
            "etcd.stall_timeout",
            Duration::from_secs(60),
        ),
        dial_timeout: v.duration(e.dial_timeout, "etcd.dial_timeout", Duration::from_secs(10)),
    };

    let l = raw.local_storage.unwrap_or_default();
    let local_storage = LocalStorageConfig {
        path: v.path(l.path, "local_storage.path", &state_dir.join("snapshots")),
        retention: v.retention(
            "local_storage",
            l.ttl,
            l.keep,
            l.min_keep,
            Duration::from_secs(7 * 24 * 3600),
        ),
    };

    let remote_storage = raw.remote_storage.map(|r| validate_remote(r, v));

    let rec = raw.records.unwrap_or_default();
    let mut limit = |raw: Option<Spanned<i64>>, field: &str, default: usize| {
        raw.and_then(|r| v.count(&r, field, "how many such records the history keeps"))
            .unwrap_or(default)
    };
    let history = HistoryLimits {
        successful: limit(
            rec.successful_history_limit,
            "records.successful_history_limit",
            1000,
        ),
        failed: limit(
            rec.failed_history_limit,
            "records.failed_history_limit",
            100,
        ),
    };

    Config {
        source: v.file.map(Path::to_owned),
        schedule,
        timezone,
        paused: raw.paused.unwrap_or(false),
        catch_up: raw.catch_up.unwrap_or(true),
        state_dir,
        metrics_file,
        etcd,
        local_storage,
        remote_storage,
        history,
    }
}

fn validate_endpoint(ep: &str) -> Result<(), String> {
    let rest = ep.strip_prefix("https://").ok_or_else(|| {
        format!(
            "{ep:?} must be an https:// URL: etcdguard always talks TLS with the host PKI \
             (kubeadm's etcd serves clients over TLS only)"
        )
    })?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') || hostport.contains(',') {
        return Err(format!(
            "{ep:?} must be one URL of the form https://HOST:PORT (the local member only)"
        ));
    }
    Ok(())
}

fn validate_remote(r: Spanned<RawRemote>, v: &mut Validator<'_>) -> RemoteStorageConfig {
    let table_span = r.span();
    let r = r.into_inner();
    let required = |field: Option<Spanned<String>>, name: &str, v: &mut Validator<'_>| match field {
        Some(s) if !s.get_ref().trim().is_empty() => s.into_inner(),
        Some(s) => {
            v.problem(Some(s.span()), name, "must not be empty");
            String::new()
        }
        None => {
            v.problem(
                Some(table_span.clone()),
                name,
                "is required when [remote_storage] is present",
            );
            String::new()
        }
    };
    let kind = match r.kind {
        None => "s3".to_string(),
        Some(k) if k.get_ref() == "s3" => k.into_inner(),
        Some(k) => {
            v.problem(
                Some(k.span()),
                "remote_storage.type",
                format!(
                    "unsupported storage type {:?}; supported: \"s3\"",
                    k.get_ref()
                ),
            );
            k.into_inner()
        }
    };
    let bucket = required(r.bucket, "remote_storage.bucket", v);
    let region = required(r.region, "remote_storage.region", v);
    let endpoint = r.endpoint.map(|e| {
        if !(e.get_ref().starts_with("https://") || e.get_ref().starts_with("http://")) {
            v.problem(
                Some(e.span()),
                "remote_storage.endpoint",
                format!("{:?} must be an http:// or https:// URL", e.get_ref()),
            );
        }
        e.into_inner()
    });
    let prefix = match r.prefix {
        None => String::new(),
        Some(p) => {
            let text = p.get_ref().trim_start_matches('/').to_string();
            if text.contains("//") || text.contains("..") {
                v.problem(
                    Some(p.span()),
                    "remote_storage.prefix",
                    format!("{:?} must not contain \"//\" or \"..\"", p.get_ref()),
                );
            }
            // A prefix names a folder: each node writes under <prefix><member>/.
            if text.is_empty() || text.ends_with('/') {
                text
            } else {
                format!("{text}/")
            }
        }
    };
    let ca_bundle = r
        .ca_bundle
        .map(|c| v.path(Some(c), "remote_storage.ca_bundle", Path::new("")));
    let sse = match (r.sse, r.sse_kms_key_id) {
        (None, None) => None,
        (None, Some(k)) => {
            v.problem(
                Some(k.span()),
                "remote_storage.sse_kms_key_id",
                "needs sse = \"aws:kms\"",
            );
            None
        }
        (Some(s), key) => match s.get_ref().as_str() {
            "AES256" => {
                if let Some(k) = key {
                    v.problem(
                        Some(k.span()),
                        "remote_storage.sse_kms_key_id",
                        "only applies to sse = \"aws:kms\"",
                    );
                }
                Some(Sse::S3Managed)
            }
            "aws:kms" => Some(Sse::Kms(key.map(Spanned::into_inner))),
            other => {
                v.problem(
                    Some(s.span()),
                    "remote_storage.sse",
                    format!("{other:?} is not supported; use \"AES256\" or \"aws:kms\""),
                );
                None
            }
        },
    };
    let credentials = match r.credentials_file {
        Some(c) => {
            Credentials::File(v.path(Some(c), "remote_storage.credentials_file", Path::new("")))
        }
        None => Credentials::SystemdOrDefault(SYSTEMD_CREDENTIAL.to_string()),
    };
    let part_size = match r.part_size {
        None => DEFAULT_PART_SIZE,
        Some(p) => match parse_size(p.get_ref()) {
            Ok(n) if (MIN_PART_SIZE..=(5 << 30)).contains(&n) => n,
            Ok(n) => {
                v.problem(
                    Some(p.span()),
                    "remote_storage.part_size",
                    format!("{n} bytes is outside S3's part size limits (5MiB to 5GiB)"),
                );
                DEFAULT_PART_SIZE
            }
            Err(e) => {
                v.problem(Some(p.span()), "remote_storage.part_size", e);
                DEFAULT_PART_SIZE
            }
        },
    };
    let concurrency = match r.concurrency {
        None => 2,
        Some(c) => match usize::try_from(*c.get_ref()) {
            Ok(n) if (1..=16).contains(&n) => n,
            _ => {
                v.problem(
                    Some(c.span()),
                    "remote_storage.concurrency",
                    format!("must be between 1 and 16 (got {})", c.get_ref()),
                );
                2
            }
        },
    };
    RemoteStorageConfig {
        kind,
        bucket,
        endpoint,
        region,
        prefix,
        force_path_style: r.force_path_style.unwrap_or(false),
        ca_bundle,
        insecure_skip_tls_verify: r.insecure_skip_tls_verify.unwrap_or(false),
        sse,
        credentials,
        part_size,
        concurrency,
        timeout: v.duration(
            r.timeout,
            "remote_storage.timeout",
            Duration::from_secs(1800),
        ),
        stall_timeout: v.duration(
            r.stall_timeout,
            "remote_storage.stall_timeout",
            Duration::from_secs(60),
        ),
        retention: v.retention(
            "remote_storage",
            r.ttl,
            r.keep,
            r.min_keep,
            Duration::from_secs(30 * 24 * 3600),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Display

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn write_rule(w: &mut String, rule: &Rule) {
    use std::fmt::Write;
    let ttl = rule.ttl.map_or_else(|| "forever".to_string(), human);
    let _ = writeln!(w, "ttl = {}", toml_string(&ttl));
    if let Some(k) = rule.keep {
        let _ = writeln!(w, "keep = {k}");
    }
    let _ = writeln!(w, "min_keep = {}", rule.min_keep);
    if rule.keeps_forever() {
        let _ = writeln!(
            w,
            "# neither ttl nor keep: snapshots here are never deleted"
        );
    }
}

fn quoted(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Config {
    /// The effective configuration as TOML, every default filled in. Secrets (remote
    /// credentials, once they exist) are replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        use std::fmt::Write;
        let _ = writeln!(w, "schedule = {}", toml_string(self.schedule.expression()));
        let _ = writeln!(w, "timezone = {}", toml_string(&self.timezone.to_string()));
        let _ = writeln!(w, "paused = {}", self.paused);
        let _ = writeln!(w, "catch_up = {}", self.catch_up);
        let _ = writeln!(w, "state_dir = {}", quoted(&self.state_dir));
        match &self.metrics_file {
            Some(m) => {
                let _ = writeln!(w, "metrics_file = {}", quoted(m));
            }
            None => {
                let _ = writeln!(w, "# metrics_file unset: no Prometheus textfile");
            }
        }
        let e = &self.etcd;
        let _ = writeln!(w, "\n[etcd]");
        let _ = writeln!(w, "manifest = {}", quoted(&e.manifest));
        match &e.endpoint {
            Some(ep) => {
                let _ = writeln!(w, "endpoint = {}", toml_string(ep));
            }
            None => {
                let _ = writeln!(w, "# endpoint: the loopback client URL in the manifest");
            }
        }
        let _ = writeln!(w, "ca_cert = {}", quoted(&e.ca_cert));
        let _ = writeln!(w, "client_cert = {}", quoted(&e.client_cert));
        let _ = writeln!(w, "client_key = {}", quoted(&e.client_key));
        let _ = writeln!(w, "timeout = {}", toml_string(&human(e.timeout)));
        let _ = writeln!(
            w,
            "stall_timeout = {}",
            toml_string(&human(e.stall_timeout))
        );
        let _ = writeln!(w, "dial_timeout = {}", toml_string(&human(e.dial_timeout)));
        let l = &self.local_storage;
        let _ = writeln!(w, "\n[local_storage]");
        let _ = writeln!(w, "path = {}", quoted(&l.path));
        write_rule(w, &l.retention);
        match &self.remote_storage {
            None => {
                let _ = writeln!(w, "\n# [remote_storage] absent: local copies only");
            }
            Some(r) => {
                let _ = writeln!(w, "\n[remote_storage]");
                let _ = writeln!(w, "type = {}", toml_string(&r.kind));
                let _ = writeln!(w, "bucket = {}", toml_string(&r.bucket));
                if let Some(ep) = &r.endpoint {
                    let _ = writeln!(w, "endpoint = {}", toml_string(ep));
                }
                let _ = writeln!(w, "region = {}", toml_string(&r.region));
                let _ = writeln!(w, "prefix = {}", toml_string(&r.prefix));
                let _ = writeln!(w, "force_path_style = {}", r.force_path_style);
                if let Some(ca) = &r.ca_bundle {
                    let _ = writeln!(w, "ca_bundle = {}", quoted(ca));
                }
                if r.insecure_skip_tls_verify {
                    let _ = writeln!(w, "insecure_skip_tls_verify = true  # TLS NOT VERIFIED");
                }
                match &r.sse {
                    None => {}
                    Some(Sse::S3Managed) => {
                        let _ = writeln!(w, "sse = \"AES256\"");
                    }
                    Some(Sse::Kms(key)) => {
                        let _ = writeln!(w, "sse = \"aws:kms\"");
                        if let Some(k) = key {
                            let _ = writeln!(w, "sse_kms_key_id = {}", toml_string(k));
                        }
                    }
                }
                match &r.credentials {
                    Credentials::File(p) => {
                        let _ = writeln!(w, "credentials_file = {}", quoted(p));
                    }
                    Credentials::SystemdOrDefault(name) => {
                        let _ = writeln!(
                            w,
                            "# credentials: $CREDENTIALS_DIRECTORY/{name} (systemd \
                             LoadCredential=), else the AWS chain (environment, profile, \
                             instance role)"
                        );
                    }
                }
                let _ = writeln!(w, "part_size = {}", r.part_size);
                let _ = writeln!(w, "concurrency = {}", r.concurrency);
                let _ = writeln!(w, "timeout = {}", toml_string(&human(r.timeout)));
                let _ = writeln!(
                    w,
                    "stall_timeout = {}",
                    toml_string(&human(r.stall_timeout))
                );
                write_rule(w, &r.retention);
            }
        }
        let _ = writeln!(w, "\n[records]");
        let _ = writeln!(w, "successful_history_limit = {}", self.history.successful);
        let _ = writeln!(w, "failed_history_limit = {}", self.history.failed);
        out
    }

    pub fn records_path(&self) -> PathBuf {
        self.state_dir.join("records.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        parse(text, Some(Path::new("/etc/x.toml")))
            .unwrap_err()
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn empty_file_gives_kubeadm_defaults() {
        let c = parse("", None).unwrap();
        assert_eq!(c.etcd.ca_cert, Path::new(DEFAULT_CA_CERT));
        assert_eq!(
            c.local_storage.path,
            Path::new("/var/lib/etcdguard/snapshots")
        );
        assert_eq!(c.local_storage.retention.min_keep, 3);
        assert_eq!(
            c.local_storage.retention.ttl,
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(c.local_storage.retention.keep, None);
        assert_eq!(c.history.successful, 1000);
        assert_eq!(c.history.failed, 100);
        assert!(c.remote_storage.is_none());
        assert!(!c.paused);
    }

    #[test]
    fn durations_accept_seconds_and_text() {
        let c = parse(
            "[local_storage]\nttl = 7776000\n[etcd]\ntimeout = \"90s\"",
            None,
        )
        .unwrap();
        assert_eq!(
            c.local_storage.retention.ttl,
            Some(Duration::from_secs(7776000))
        );
        assert_eq!(c.etcd.timeout, Duration::from_secs(90));
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = errs("schedule = \"@daily\"\n[local_storage]\nttll = \"1d\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("/etc/x.toml:3:1: "), "{}", e[0]);
        assert!(e[0].contains("unknown field `ttll`"), "{}", e[0]);
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errs(
            "schedule = \"61 * * * *\"\ntimezone = \"Mars/Olympus\"\n\
             [local_storage]\nttl = -5\nmin_keep = 0\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].starts_with("/etc/x.toml:1:12: schedule: "), "{}", e[0]);
        assert!(e[1].contains("timezone: "), "{}", e[1]);
        assert!(
            e[2].contains(":4:7: local_storage.ttl: must be a positive"),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("local_storage.min_keep: must be at least 1"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn keep_ttl_and_min_keep() {
        // keep alone: no age limit, min_keep follows keep when smaller.
        let c = parse("[local_storage]\nkeep = 2\n", None).unwrap();
        let r = c.local_storage.retention;
        assert_eq!((r.ttl, r.keep, r.min_keep), (None, Some(2), 2));
        let c = parse("[local_storage]\nkeep = 40\nttl = \"30d\"\n", None).unwrap();
        let r = c.local_storage.retention;
        assert_eq!(r.ttl, Some(Duration::from_secs(30 * 86400)));
        assert_eq!((r.keep, r.min_keep), (Some(40), 3));
        let c = parse("[local_storage]\nttl = \"forever\"\n", None).unwrap();
        assert!(c.local_storage.retention.keeps_forever());
        assert!(c.to_redacted_toml().contains("never deleted"));

        let e = errs("[local_storage]\nkeep = 2\nmin_keep = 3\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains(":2:8: local_storage.keep: keep (2) must be at least min_keep (3)"),
            "{}",
            e[0]
        );
        let e = errs("[local_storage]\nkeep = 0\n[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nkeep = 1\nmin_keep = 2\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].contains("local_storage.keep: must be at least 1"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("remote_storage.keep: keep (1) must be at least min_keep (2)"),
            "{}",
            e[1]
        );
    }

    #[test]
    fn daemon_settings() {
        let c = parse("", None).unwrap();
        assert!(c.catch_up);
        assert_eq!(c.metrics_file, None);
        let c = parse(
            "catch_up = false\nmetrics_file = \"/var/lib/node/etcdguard.prom\"\n",
            None,
        )
        .unwrap();
        assert!(!c.catch_up);
        assert_eq!(
            c.metrics_file.as_deref(),
            Some(Path::new("/var/lib/node/etcdguard.prom"))
        );
        let e = errs("metrics_file = \"/var/lib/node/etcdguard.txt\"\n");
        assert!(e[0].contains("metrics_file: "), "{}", e[0]);
        assert!(e[0].contains(".prom"), "{}", e[0]);
        // 6-field schedules only for tests.
        assert!(parse("schedule = \"*/5 * * * * *\"\n", None).is_err());
        assert!(parse_with("schedule = \"*/5 * * * * *\"\n", None, true).is_ok());
    }

    #[test]
    fn records_history_limits() {
        let c = parse(
            "[records]\nsuccessful_history_limit = 10\nfailed_history_limit = 5\n",
            None,
        )
        .unwrap();
        assert_eq!((c.history.successful, c.history.failed), (10, 5));
        let e = errs("[records]\nfailed_history_limit = 0\n");
        assert!(
            e[0].contains("records.failed_history_limit: must be at least 1"),
            "{}",
            e[0]
        );
        let e = errs("[records]\nlimit = 3\n");
        assert!(e[0].contains("unknown field `limit`"), "{}", e[0]);
    }

    #[test]
    fn bad_duration_text() {
        let e = errs("[local_storage]\nttl = \"7 dayz\"\n");
        assert!(e[0].contains("is not a duration"), "{}", e[0]);
        let e = errs("[local_storage]\nttl = \"-7d\"\n");
        assert!(e[0].contains("positive"), "{}", e[0]);
    }

    #[test]
    fn endpoint_must_be_one_https_url() {
        assert!(errs("[etcd]\nendpoint = \"http://127.0.0.1:2379\"")[0].contains("https://"));
        assert!(errs("[etcd]\nendpoint = \"https://a:1,https://b:2\"")[0].contains("one URL"));
        let c = parse("[etcd]\nendpoint = \"https://[::1]:2379\"", None).unwrap();
        assert_eq!(c.etcd.endpoint.as_deref(), Some("https://[::1]:2379"));
    }

    #[test]
    fn relative_paths_are_rejected() {
        let e = errs("state_dir = \"var/lib\"");
        assert!(
            e[0].contains("state_dir: must be an absolute path"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn remote_storage_fields() {
        let c = parse(
            "[remote_storage]\nbucket = \"b1\"\nregion = \"eu-west-1\"\nprefix = \"prod\"\n\
             sse = \"aws:kms\"\nsse_kms_key_id = \"k-1\"\npart_size = \"16MiB\"\n\
             concurrency = 4\ncredentials_file = \"/etc/etcdguard/s3\"\nca_bundle = \"/etc/ca.pem\"\n",
            None,
        )
        .unwrap();
        let r = c.remote_storage.unwrap();
        assert_eq!(r.prefix, "prod/");
        assert_eq!(r.sse, Some(Sse::Kms(Some("k-1".into()))));
        assert_eq!((r.part_size, r.concurrency), (16 << 20, 4));
        assert_eq!(r.credentials, Credentials::File("/etc/etcdguard/s3".into()));
        assert!(!r.insecure_skip_tls_verify);
        let d = parse("[remote_storage]\nbucket = \"b1\"\nregion = \"r\"\n", None).unwrap();
        let d = d.remote_storage.unwrap();
        assert_eq!(
            d.credentials,
            Credentials::SystemdOrDefault(SYSTEMD_CREDENTIAL.into())
        );
        assert_eq!(d.part_size, DEFAULT_PART_SIZE);

        let e = errs(
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nsse = \"DES\"\n\
             part_size = \"1MiB\"\nconcurrency = 0\ncredentials_file = \"rel/path\"\n\
             access_key = \"AKIA\"\n",
        );
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("unknown field `access_key`"), "{}", e[0]);
        let e = errs(
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nsse = \"DES\"\n\
             part_size = \"1MiB\"\nconcurrency = 0\ncredentials_file = \"rel/path\"\n",
        );
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].contains("remote_storage.sse: \"DES\" is not supported"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("remote_storage.credentials_file: must be an absolute"),
            "{}",
            e[1]
        );
        assert!(
            e[2].contains("remote_storage.part_size: 1048576 bytes is outside"),
            "{}",
            e[2]
        );
        assert!(
            e[3].contains("remote_storage.concurrency: must be between 1 and 16"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn remote_requires_bucket_and_region() {
        let e = errs("[remote_storage]\ntype = \"s3\"\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains("remote_storage.bucket: is required"));
        assert!(e[1].contains("remote_storage.region: is required"));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = errs("schedule = \n");
        assert!(e[0].starts_with("/etc/x.toml:1:"), "{}", e[0]);
    }

    #[test]
    fn shipped_example_config_is_valid_and_equals_the_defaults() {
        let example = parse(
            include_str!("../config/etcdguard.toml"),
            Some(Path::new("config/etcdguard.toml")),
        )
        .unwrap();
        let defaults = parse("", None).unwrap();
        assert_eq!(example.to_redacted_toml(), defaults.to_redacted_toml());
    }

    #[test]
    fn redacted_display_round_trips() {
        let c = parse(
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nendpoint = \"https://s3\"\n",
            None,
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        let again = parse(&shown, None).unwrap();
        assert_eq!(again.to_redacted_toml(), shown);
    }
}
