//! From the file's model to the effective `Config`: defaults filled in, every problem
//! collected with its position and field instead of stopping at the first.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::*;
use crate::retention::{Period, Tiers};

pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) file: Option<&'a Path>,
    pub(super) allow_seconds: bool,
    pub(super) problems: Vec<Problem>,
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

    /// `ttl`, the count rules (`keep`/`keep_last`, `keep_hourly` … `keep_monthly`) and
    /// `min_keep` of one destination. With neither `ttl` nor a count rule, the default ttl
    /// applies; `ttl = "forever"` turns the age limit off. `min_keep` defaults to 3, or to
    /// `keep` when that is smaller. The tiers count periods of the schedule's `zone`.
    fn retention(
        &mut self,
        section: &str,
        ttl: Option<Spanned<RawDuration>>,
        counts: RawCounts,
        min_keep: Option<Spanned<i64>>,
        default_ttl: Duration,
        zone: Zone,
    ) -> Rule {
        let (keep, keep_field) = match (counts.keep, counts.keep_last) {
            (Some(k), Some(l)) => {
                self.problem(
                    Some(l.span()),
                    &format!("{section}.keep_last"),
                    format!(
                        "keep_last is another name for keep (set to {} here): set one of them",
                        k.get_ref()
                    ),
                );
                (Some(k), format!("{section}.keep"))
            }
            (Some(k), None) => (Some(k), format!("{section}.keep")),
            (None, Some(l)) => (Some(l), format!("{section}.keep_last")),
            (None, None) => (None, format!("{section}.keep")),
        };
        let keep_span = keep.as_ref().map(Spanned::span);
        let keep = keep
            .and_then(|k| self.count(&k, &keep_field, "the number of newest good snapshots kept"));
        let mut tier = |raw: Option<Spanned<i64>>, p: Period| {
            raw.and_then(|r| {
                self.count(
                    &r,
                    &format!("{section}.{}", p.field()),
                    "how many periods keep their newest good snapshot",
                )
            })
        };
        let tiers = Tiers {
            hourly: tier(counts.hourly, Period::Hour),
            daily: tier(counts.daily, Period::Day),
            weekly: tier(counts.weekly, Period::Week),
            monthly: tier(counts.monthly, Period::Month),
        };
        let ttl = match ttl {
            None if keep_span.is_some() || tiers.any() => None,
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
            tiers,
            zone,
            min_keep,
        }
    }

    /// A rate such as `"50MiB/s"`, in bytes per second.
    fn rate(&mut self, raw: Option<Spanned<String>>, field: &str) -> Option<u64> {
        let r = raw?;
        let parsed = r
            .get_ref()
            .trim()
            .strip_suffix("/s")
            .ok_or_else(|| "must be a rate such as \"50MiB/s\"".to_string())
            .and_then(|n| parse_size(&RawSize::Text(n.to_string())));
        match parsed {
            Ok(b) => Some(b as u64),
            Err(msg) => {
                self.problem(Some(r.span()), field, msg);
                None
            }
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

pub(super) fn validate(raw: RawConfig, v: &mut Validator<'_>) -> Config {
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
        rate_limit: v.rate(e.rate_limit, "etcd.rate_limit"),
    };

    let l = raw.local_storage.unwrap_or_default();
    let local_storage = LocalStorageConfig {
        path: v.path(l.path, "local_storage.path", &state_dir.join("snapshots")),
        retention: v.retention(
            "local_storage",
            l.ttl,
            raw_counts!(l),
            l.min_keep,
            Duration::from_secs(7 * 24 * 3600),
            timezone,
        ),
    };

    let destinations = validate_destinations(raw.remote_storage, raw.destination, v, timezone);

    let encryption = raw.encryption.map(|e| validate_encryption(e, v));
    let bundle = raw.bundle.map(|b| {
        let span = b.span();
        let b = b.into_inner();
        if encryption.is_none() || destinations.is_empty() {
            v.problem(
                Some(span),
                "bundle",
                "a recovery bundle holds the cluster's CA keys: it needs [encryption] (it is \
                 never written unencrypted) and [remote_storage] or a [[destination]] (where \
                 it is kept)",
            );
        }
        BundleConfig {
            root: v.path(b.root, "bundle.root", Path::new("/")),
            extra_paths: b
                .extra_paths
                .unwrap_or_default()
                .into_iter()
                .map(|p| v.path(Some(p), "bundle.extra_paths", Path::new("")))
                .collect(),
        }
    });

    let drill = validate_drill(raw.drill, &state_dir, &destinations, &encryption, v);

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
        destinations,
        history,
        encryption,
        bundle,
        drill,
    }
}

/// `[drill]`: the schedule, the copy to drill, where to build, and what opens a sealed copy.
/// A scheduled drill of sealed copies without an identity is refused here, not on its first run.
fn validate_drill(
    raw: Option<Spanned<RawDrill>>,
    state_dir: &Path,
    remote: &[DestinationConfig],
    encryption: &Option<Encryption>,
    v: &mut Validator<'_>,
) -> DrillConfig {
    let section = raw.as_ref().map(Spanned::span);
    let d = raw.map(Spanned::into_inner).unwrap_or(RawDrill {
        schedule: None,
        source: None,
        scratch_dir: None,
        identity: None,
        etcd_binary: None,
        timeout: None,
    });
    let schedule =
        d.schedule.and_then(
            |s| match Schedule::parse_with(s.get_ref(), v.allow_seconds) {
                Ok(sch) => Some(sch),
                Err(e) => {
                    v.problem(Some(s.span()), "drill.schedule", e);
                    None
                }
            },
        );
    let source = match d.source.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("local") => DrillSource::Local,
        Some("remote") => {
            if remote.is_empty() {
                v.problem(
                    d.source.as_ref().map(Spanned::span),
                    "drill.source",
                    "\"remote\" needs [remote_storage] or a [[destination]]: there is no \
                     remote copy to drill",
                );
            }
            DrillSource::Remote
        }
        Some(other) => {
            v.problem(
                d.source.as_ref().map(Spanned::span),
                "drill.source",
                format!("{other:?} is not a drill source: use \"local\" or \"remote\""),
            );
            DrillSource::Local
        }
    };
    let identity = d
        .identity
        .map(|p| v.path(Some(p), "drill.identity", Path::new("")));
    let sealed = encryption
        .as_ref()
        .is_some_and(|e| e.encrypt_local || (source == DrillSource::Remote && !remote.is_empty()));
    if schedule.is_some() && sealed && identity.is_none() {
        v.problem(
            section,
            "drill.identity",
            "the copies a scheduled drill restores are encrypted ([encryption]): give \
             `identity`, a key that opens them (it lets this node decrypt its backups; keep it \
             0600, or drill on another machine with `etcdguard drill --snapshot KEY --identity`)",
        );
    }
    DrillConfig {
        schedule,
        source,
        scratch_dir: v.path(d.scratch_dir, "drill.scratch_dir", &state_dir.join("drill")),
        identity,
        etcd_binary: d
            .etcd_binary
            .map(|p| v.path(Some(p), "drill.etcd_binary", Path::new(""))),
        timeout: v.duration(d.timeout, "drill.timeout", Duration::from_secs(120)),
    }
}

/// `[encryption]`: recipients inline and from `recipients_file` (read now, so a bad one is a
/// configuration error and nothing is ever sent unencrypted), and the compression.
fn validate_encryption(e: Spanned<RawEncryption>, v: &mut Validator<'_>) -> Encryption {
    use crate::encryption::{parse_recipients_file, Recipient, DEFAULT_ZSTD_LEVEL};
    let section = e.span();
    let e = e.into_inner();
    let before = v.problems.len();
    let mut recipients = Vec::new();
    for r in e.recipients.unwrap_or_default() {
        match Recipient::parse(r.get_ref()) {
            Ok(p) => recipients.push(p),
            Err(msg) => v.problem(Some(r.span()), "encryption.recipients", msg),
        }
    }
    if let Some(f) = e.recipients_file {
        let span = f.span();
        let path = v.path(Some(f), "encryption.recipients_file", Path::new(""));
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_recipients_file(&text) {
                Ok(mut more) => recipients.append(&mut more),
                Err((line, msg)) => v.problem(
                    Some(span),
                    "encryption.recipients_file",
                    format!("{}:{line}: {msg}", path.display()),
                ),
            },
            Err(err) => v.problem(
                Some(span),
                "encryption.recipients_file",
                format!(
                    "cannot read {}: {err}; with [encryption] nothing leaves the node until its \
                     recipients can be read",
                    path.display()
                ),
            ),
        }
    }
    if recipients.is_empty() && v.problems.len() == before {
        v.problem(
            Some(section.clone()),
            "encryption.recipients",
            "no recipients: give `recipients = [\"age1…\"]` or `recipients_file`, the public \
             keys whose holders may decrypt the backups",
        );
    }
    recipients.dedup();
    let level = match e.compression_level {
        None => DEFAULT_ZSTD_LEVEL,
        Some(l) => match i32::try_from(*l.get_ref()) {
            Ok(n @ 1..=19) => n,
            _ => {
                v.problem(
                    Some(l.span()),
                    "encryption.compression_level",
                    format!("must be a zstd level from 1 to 19 (got {})", l.get_ref()),
                );
                DEFAULT_ZSTD_LEVEL
            }
        },
    };
    let compression = match e.compression.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("zstd") => Compression::Zstd(level),
        Some("none") => Compression::None,
        Some(other) => {
            v.problem(
                e.compression.as_ref().map(Spanned::span),
                "encryption.compression",
                format!("{other:?} is not a compression: use \"zstd\" or \"none\""),
            );
            Compression::Zstd(level)
        }
    };
    Encryption {
        recipients,
        compression,
        encrypt_local: e.encrypt_local.unwrap_or(false),
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

/// `[remote_storage]` (first, named `remote` unless it says) and every `[[destination]]`:
/// names unique, `per = "cluster"` only with one destination.
fn validate_destinations(
    remote: Option<Spanned<RawRemote>>,
    list: Option<Vec<Spanned<RawRemote>>>,
    v: &mut Validator<'_>,
    zone: Zone,
) -> Vec<DestinationConfig> {
    let mut out: Vec<DestinationConfig> = Vec::new();
    let mut spans = Vec::new();
    let tables = remote
        .into_iter()
        .map(|r| (true, r))
        .chain(list.unwrap_or_default().into_iter().map(|r| (false, r)));
    for (i, (legacy, r)) in tables.enumerate() {
        let span = r.span();
        let name_span = r.get_ref().name.as_ref().map(Spanned::span);
        let d = validate_destination(r, legacy, i, v, zone);
        if out.iter().any(|o| o.name == d.name) {
            v.problem(
                name_span.or(Some(span.clone())),
                &format!("{}.name", d.table),
                format!(
                    "another destination is named {:?} already: each needs its own name (it \
                     names the copy in records and metrics)",
                    d.name
                ),
            );
        }
        spans.push(span);
        out.push(d);
    }
    if out.len() > 1 {
        if let Some(pos) = out.iter().position(|d| d.per_cluster) {
            v.problem(
                Some(spans[pos].clone()),
                &format!("{}.per", out[pos].table),
                "per = \"cluster\" works with one destination only: with several, every node \
                 uploads its own copy to each",
            );
        }
    }
    out
}

/// A destination's name: letters, digits, `-` and `_`, up to 40 characters.
fn destination_name(
    raw: Option<Spanned<String>>,
    legacy: bool,
    v: &mut Validator<'_>,
    at: Range<usize>,
    field: &str,
) -> String {
    match raw {
        None if legacy => DEFAULT_DESTINATION.to_string(),
        None => {
            v.problem(
                Some(at),
                field,
                "is required in a [[destination]]: it names the copy in records and metrics",
            );
            String::new()
        }
        Some(n) => {
            let ok = !n.get_ref().is_empty()
                && n.get_ref().len() <= 40
                && n.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                v.problem(
                    Some(n.span()),
                    field,
                    format!(
                        "{:?} is not a destination name: use up to 40 letters, digits, '-' or '_'",
                        n.get_ref()
                    ),
                );
            }
            n.into_inner()
        }
    }
}

fn validate_destination(
    r: Spanned<RawRemote>,
    legacy: bool,
    index: usize,
    v: &mut Validator<'_>,
    zone: Zone,
) -> DestinationConfig {
    let table_span = r.span();
    let r = r.into_inner();
    let section = if legacy {
        "[remote_storage]"
    } else {
        "[[destination]]"
    };
    let name_field = if legacy {
        "remote_storage.name".to_string()
    } else {
        format!("destination[{index}].name")
    };
    let name = destination_name(r.name, legacy, v, table_span.clone(), &name_field);
    let table = if legacy {
        "remote_storage".to_string()
    } else if name.is_empty() {
        format!("destination[{index}]")
    } else {
        format!("destination.{name}")
    };
    let t = table.as_str();
    let f = |field: &str| format!("{t}.{field}");
    let required =
        |field: Option<Spanned<String>>, name: &str, what: &str, v: &mut Validator<'_>| match field
        {
            Some(s) if !s.get_ref().trim().is_empty() => s.into_inner(),
            Some(s) => {
                v.problem(Some(s.span()), name, "must not be empty");
                String::new()
            }
            None => {
                v.problem(
                    Some(table_span.clone()),
                    name,
                    format!("is required in a {section} of {what}"),
                );
                String::new()
            }
        };
    let kind_name = remote_kind(r.kind, &f("type"), v);
    let not_for =
        |v: &mut Validator<'_>, present: Option<Range<usize>>, field: &str, kinds: &str| {
            if let Some(span) = present {
                v.problem(
                    Some(span),
                    &f(field),
                    format!(
                    "applies to {kinds} destinations only, and this one is type = {kind_name:?}"
                ),
                );
            }
        };
    let span_of = |s: &Option<Spanned<String>>| s.as_ref().map(Spanned::span);
    let (container_span, account_span) = (span_of(&r.container), span_of(&r.account_name));
    let path_span = r.path.as_ref().map(Spanned::span);
    let (kind, bucket, region) = match kind_name.as_str() {
        "gcs" => {
            not_for(v, span_of(&r.region), "region", "s3");
            (
                Kind::Gcs {
                    anonymous: r.anonymous.unwrap_or(false),
                },
                required(r.bucket, &f("bucket"), "type = \"gcs\"", v),
                String::new(),
            )
        }
        "azblob" => {
            not_for(v, span_of(&r.region), "region", "s3");
            let container = match (r.container, r.bucket) {
                (Some(c), _) | (None, Some(c)) => Some(c),
                (None, None) => None,
            };
            (
                Kind::Azblob {
                    account: required(r.account_name, &f("account_name"), "type = \"azblob\"", v),
                },
                required(container, &f("container"), "type = \"azblob\"", v),
                String::new(),
            )
        }
        "fs" => {
            not_for(v, span_of(&r.region), "region", "s3");
            not_for(v, span_of(&r.bucket), "bucket", "s3, gcs and azblob");
            let path = match r.path {
                Some(p) => v.path(Some(p), &f("path"), Path::new("")),
                None => {
                    v.problem(
                        Some(table_span.clone()),
                        &f("path"),
                        format!(
                            "is required in a {section} of type = \"fs\": the mounted directory"
                        ),
                    );
                    PathBuf::new()
                }
            };
            (
                Kind::Fs {
                    path,
                    require_mount: r.require_mount.unwrap_or(true),
                },
                String::new(),
                String::new(),
            )
        }
        _ => (
            Kind::S3,
            required(r.bucket, &f("bucket"), "type = \"s3\"", v),
            required(r.region, &f("region"), "type = \"s3\"", v),
        ),
    };
    if !matches!(kind, Kind::Azblob { .. }) {
        not_for(v, container_span, "container", "azblob");
        not_for(v, account_span, "account_name", "azblob");
    }
    if !matches!(kind, Kind::Fs { .. }) {
        not_for(v, path_span, "path", "fs");
    }
    let endpoint = r.endpoint.map(|e| {
        if !(e.get_ref().starts_with("https://") || e.get_ref().starts_with("http://")) {
            v.problem(
                Some(e.span()),
                &f("endpoint"),
                format!("{:?} must be an http:// or https:// URL", e.get_ref()),
            );
        }
        e.into_inner()
    });
    if matches!(kind, Kind::Fs { .. }) {
        if let Some(e) = &endpoint {
            v.problem(
                Some(table_span.clone()),
                &f("endpoint"),
                format!("an fs destination has no endpoint (got {e:?}): it writes to `path`"),
            );
        }
    }
    let prefix = remote_prefix(r.prefix, &f("prefix"), v);
    let ca_bundle = r
        .ca_bundle
        .map(|c| v.path(Some(c), &f("ca_bundle"), Path::new("")));
    let sse = remote_sse(r.sse, r.sse_kms_key_id, t, v);
    if sse.is_some() && kind != Kind::S3 {
        v.problem(
            Some(table_span.clone()),
            &f("sse"),
            "server-side encryption headers are S3's: use [encryption] for every kind",
        );
    }
    let object_lock = match (r.object_lock_mode, r.object_lock_period) {
        (None, None) => None,
        (Some(m), p) => {
            let mode = match m.get_ref().to_ascii_uppercase().as_str() {
                "GOVERNANCE" => LockMode::Governance,
                "COMPLIANCE" => LockMode::Compliance,
                other => {
                    v.problem(
                        Some(m.span()),
                        &f("object_lock_mode"),
                        format!("{other:?} is not an Object Lock mode: use \"GOVERNANCE\" or \"COMPLIANCE\""),
                    );
                    LockMode::Governance
                }
            };
            if kind != Kind::S3 {
                v.problem(
                    Some(m.span()),
                    &f("object_lock_mode"),
                    "Object Lock is S3's: for GCS and Azure set a retention policy on the bucket \
                     or container itself",
                );
            }
            match p {
                None => {
                    v.problem(
                        Some(m.span()),
                        &f("object_lock_period"),
                        "is required with object_lock_mode: how long each copy stays locked",
                    );
                    None
                }
                Some(p) => Some(ObjectLock {
                    mode,
                    period: v.duration(Some(p), &f("object_lock_period"), Duration::ZERO),
                }),
            }
        }
        (None, Some(p)) => {
            v.problem(
                Some(p.span()),
                &f("object_lock_period"),
                "needs object_lock_mode (\"GOVERNANCE\" or \"COMPLIANCE\")",
            );
            None
        }
    };
    let credentials = match (r.credentials_file, r.systemd_credential) {
        (Some(c), None) => {
            Credentials::File(v.path(Some(c), &f("credentials_file"), Path::new("")))
        }
        (Some(c), Some(_)) => {
            v.problem(
                Some(c.span()),
                &f("credentials_file"),
                "set credentials_file or systemd_credential, not both",
            );
            Credentials::SystemdOrDefault(String::new())
        }
        (None, Some(n)) => {
            let ok = !n.get_ref().is_empty()
                && n.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !ok {
                v.problem(
                    Some(n.span()),
                    &f("systemd_credential"),
                    format!("{:?} is not a systemd credential name", n.get_ref()),
                );
            }
            Credentials::SystemdOrDefault(n.into_inner())
        }
        (None, None) if legacy => Credentials::SystemdOrDefault(SYSTEMD_CREDENTIAL.to_string()),
        (None, None) => Credentials::SystemdOrDefault(format!("etcdguard-{name}")),
    };
    if matches!(kind, Kind::Gcs { anonymous: true }) && matches!(credentials, Credentials::File(_))
    {
        v.problem(
            Some(table_span.clone()),
            &f("anonymous"),
            "anonymous = true sends no credentials: drop credentials_file or anonymous",
        );
    }
    let part_size = remote_part_size(r.part_size, &f("part_size"), v);
    let concurrency = remote_concurrency(r.concurrency, &f("concurrency"), v);
    DestinationConfig {
        name,
        table: table.clone(),
        kind,
        bucket,
        endpoint,
        region,
        prefix,
        force_path_style: r.force_path_style.unwrap_or(false),
        ca_bundle,
        insecure_skip_tls_verify: r.insecure_skip_tls_verify.unwrap_or(false),
        sse,
        object_lock,
        credentials,
        part_size,
        concurrency,
        timeout: v.duration(r.timeout, &f("timeout"), Duration::from_secs(1800)),
        stall_timeout: v.duration(
            r.stall_timeout,
            &f("stall_timeout"),
            Duration::from_secs(60),
        ),
        rate_limit: v.rate(r.rate_limit, &f("rate_limit")),
        retention: v.retention(
            t,
            r.ttl,
            raw_counts!(r),
            r.min_keep,
            Duration::from_secs(30 * 24 * 3600),
            zone,
        ),
        per_cluster: match r.per.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("node") => false,
            Some("cluster") => true,
            Some(other) => {
                v.problem(
                    r.per.as_ref().map(Spanned::span),
                    &f("per"),
                    format!(
                        "{other:?} is not a choice: \"node\" (every node uploads its own copy) or \
                         \"cluster\" (one copy per scheduled slot for the cluster)"
                    ),
                );
                false
            }
        },
        cluster_lease: v.duration(
            r.cluster_lease,
            &f("cluster_lease"),
            Duration::from_secs(15),
        ),
    }
}

/// `type`: "s3" (the default), "gcs", "azblob" or "fs".
fn remote_kind(k: Option<Spanned<String>>, field: &str, v: &mut Validator<'_>) -> String {
    match k {
        None => "s3".to_string(),
        Some(k) if ["s3", "gcs", "azblob", "fs"].contains(&k.get_ref().as_str()) => k.into_inner(),
        Some(k) => {
            v.problem(
                Some(k.span()),
                field,
                format!(
                    "unsupported storage type {:?}; supported: \"s3\", \"gcs\", \"azblob\", \"fs\"",
                    k.get_ref()
                ),
            );
            "s3".to_string()
        }
    }
}

/// `remote_storage.prefix`: a folder, so it ends in `/`; no `//` or `..`.
fn remote_prefix(p: Option<Spanned<String>>, field: &str, v: &mut Validator<'_>) -> String {
    match p {
        None => String::new(),
        Some(p) => {
            let text = p.get_ref().trim_start_matches('/').to_string();
            if text.contains("//") || text.contains("..") {
                v.problem(
                    Some(p.span()),
                    field,
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
    }
}

/// `remote_storage.sse` and `sse_kms_key_id`.
fn remote_sse(
    sse: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    table: &str,
    v: &mut Validator<'_>,
) -> Option<Sse> {
    let key_field = format!("{table}.sse_kms_key_id");
    match (sse, key) {
        (None, None) => None,
        (None, Some(k)) => {
            v.problem(Some(k.span()), &key_field, "needs sse = \"aws:kms\"");
            None
        }
        (Some(s), key) => match s.get_ref().as_str() {
            "AES256" => {
                if let Some(k) = key {
                    v.problem(
                        Some(k.span()),
                        &key_field,
                        "only applies to sse = \"aws:kms\"",
                    );
                }
                Some(Sse::S3Managed)
            }
            "aws:kms" => Some(Sse::Kms(key.map(Spanned::into_inner))),
            other => {
                v.problem(
                    Some(s.span()),
                    &format!("{table}.sse"),
                    format!("{other:?} is not supported; use \"AES256\" or \"aws:kms\""),
                );
                None
            }
        },
    }
}

/// `remote_storage.part_size`: within S3's part size limits.
fn remote_part_size(p: Option<Spanned<RawSize>>, field: &str, v: &mut Validator<'_>) -> usize {
    match p {
        None => DEFAULT_PART_SIZE,
        Some(p) => match parse_size(p.get_ref()) {
            Ok(n) if (MIN_PART_SIZE..=(5 << 30)).contains(&n) => n,
            Ok(n) => {
                v.problem(
                    Some(p.span()),
                    field,
                    format!("{n} bytes is outside S3's part size limits (5MiB to 5GiB)"),
                );
                DEFAULT_PART_SIZE
            }
            Err(e) => {
                v.problem(Some(p.span()), field, e);
                DEFAULT_PART_SIZE
            }
        },
    }
}

/// `remote_storage.concurrency`: 1 to 16 parts in flight.
fn remote_concurrency(c: Option<Spanned<i64>>, field: &str, v: &mut Validator<'_>) -> usize {
    match c {
        None => 2,
        Some(c) => match usize::try_from(*c.get_ref()) {
            Ok(n) if (1..=16).contains(&n) => n,
            _ => {
                v.problem(
                    Some(c.span()),
                    field,
                    format!("must be between 1 and 16 (got {})", c.get_ref()),
                );
                2
            }
        },
    }
}
