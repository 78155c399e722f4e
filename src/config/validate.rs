//! From the file's model to the effective `Config`: defaults filled in, every problem
//! collected with its position and field instead of stopping at the first.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::destination::validate_destinations;
use super::raw::*;
use super::validator::Validator;
use super::*;
use crate::encryption::{parse_recipients_file, Recipient, DEFAULT_ZSTD_LEVEL};

/// The whole file, table by table. Each step reports its own problems, in this order.
pub(super) fn validate(raw: RawConfig, v: &mut Validator<'_>) -> Config {
    let schedule = validate_schedule(raw.schedule, v);
    let timezone = validate_timezone(raw.timezone, v);
    let state_dir = v.path(raw.state_dir, "state_dir", Path::new(DEFAULT_STATE_DIR));
    let metrics_file = raw.metrics_file.map(|m| validate_metrics_file(m, v));
    let etcd = validate_etcd(raw.etcd.unwrap_or_default(), v);
    let local_storage = validate_local_storage(
        raw.local_storage.unwrap_or_default(),
        &state_dir,
        timezone,
        v,
    );
    let destinations = validate_destinations(raw.remote_storage, raw.destination, v, timezone);
    let encryption = raw.encryption.map(|e| validate_encryption(e, v));
    let kept_sealed = encryption.is_some() && !destinations.is_empty();
    let bundle = raw.bundle.map(|b| validate_bundle(b, kept_sealed, v));
    let drill = validate_drill(raw.drill, &state_dir, &destinations, &encryption, v);
    let history = validate_records(raw.records.unwrap_or_default(), v);
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

/// `schedule`: a cron expression (6 fields with seconds only in tests), by default every 6 hours.
fn validate_schedule(raw: Option<Spanned<String>>, v: &mut Validator<'_>) -> Schedule {
    let default = || Schedule::parse(DEFAULT_SCHEDULE).expect("default schedule parses");
    let Some(s) = raw else { return default() };
    match Schedule::parse_with(s.get_ref(), v.allow_seconds) {
        Ok(sch) => sch,
        Err(e) => {
            v.problem(Some(s.span()), "schedule", e);
            default()
        }
    }
}

/// `timezone`: an IANA name or "local"; UTC by default.
fn validate_timezone(raw: Option<Spanned<String>>, v: &mut Validator<'_>) -> Zone {
    let Some(s) = raw else { return Zone::Utc };
    match Zone::parse(s.get_ref()) {
        Ok(z) => z,
        Err(e) => {
            v.problem(Some(s.span()), "timezone", e);
            Zone::Utc
        }
    }
}

/// `metrics_file`: an absolute path ending in `.prom`.
fn validate_metrics_file(m: Spanned<PathBuf>, v: &mut Validator<'_>) -> PathBuf {
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
}

/// `[etcd]`: the manifest, the endpoint, the TLS files and the bounds on a snapshot stream;
/// kubeadm's paths by default.
fn validate_etcd(e: RawEtcd, v: &mut Validator<'_>) -> EtcdConfig {
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
    EtcdConfig {
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
        pacing: pacing(e.pacing, v),
        metrics_url: e.metrics_url.and_then(|u| {
            let span = u.span();
            match validate_metrics_url(u.get_ref()) {
                Ok(()) => Some(u.into_inner()),
                Err(msg) => {
                    v.problem(Some(span), "etcd.metrics_url", msg);
                    None
                }
            }
        }),
    }
}

/// `[etcd] metrics_url`: plain HTTP with a host and port, as etcd's `--listen-metrics-urls`.
fn validate_metrics_url(url: &str) -> Result<(), String> {
    let hostport = url
        .strip_prefix("http://")
        .map(|r| r.split('/').next().unwrap_or(""));
    match hostport {
        Some(hp) if hp.contains(':') => Ok(()),
        _ => Err(format!(
            "{url:?} is not an http://host:port URL: etcd's metrics are read in plain HTTP from \
             its --listen-metrics-urls (kubeadm: \"http://127.0.0.1:2381/metrics\")"
        )),
    }
}

/// `[etcd] pacing`: "auto" (the default) or "off".
fn pacing(raw: Option<Spanned<String>>, v: &mut Validator<'_>) -> PacingChoice {
    match raw.as_ref().map(|r| r.get_ref().as_str()) {
        None | Some("auto") => PacingChoice::Auto,
        Some("off") => PacingChoice::Off,
        Some(other) => {
            v.problem(
                raw.as_ref().map(|r| r.span()),
                "etcd.pacing",
                format!(
                    "{other:?} is not a pacing: \"auto\" (follow etcd's latency, the default) \
                     or \"off\" (as fast as etcd sends, within rate_limit)"
                ),
            );
            PacingChoice::Auto
        }
    }
}

/// `[local_storage]`: where the snapshots are kept (under the state dir by default), and for
/// how long (a week by default).
fn validate_local_storage(
    l: RawLocal,
    state_dir: &Path,
    zone: Zone,
    v: &mut Validator<'_>,
) -> LocalStorageConfig {
    LocalStorageConfig {
        path: v.path(
            l.path,
            "local_storage.path",
            &crate::state::StateDir::new(state_dir).default_snapshots_dir(),
        ),
        retention: v.retention(
            "local_storage",
            l.ttl,
            raw_counts!(l),
            l.min_keep,
            Duration::from_secs(7 * 24 * 3600),
            zone,
        ),
    }
}

/// `[bundle]`: the node's root and more paths to take. A bundle holds the cluster's CA keys:
/// it needs `[encryption]` and a destination to be `kept_sealed`.
fn validate_bundle(
    b: Spanned<RawBundle>,
    kept_sealed: bool,
    v: &mut Validator<'_>,
) -> BundleConfig {
    let span = b.span();
    let b = b.into_inner();
    if !kept_sealed {
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
}

/// `[records]`: how many records of successful and of failed backups the history keeps.
fn validate_records(rec: RawRecords, v: &mut Validator<'_>) -> HistoryLimits {
    let mut limit = |raw: Option<Spanned<i64>>, field: &str, default: usize| {
        raw.and_then(|r| v.count(&r, field, "how many such records the history keeps"))
            .unwrap_or(default)
    };
    HistoryLimits {
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
        apiserver_binary: None,
        timeout: None,
    });
    let schedule = d.schedule.and_then(|s| drill_schedule(s, v));
    let source = drill_source(d.source, !remote.is_empty(), v);
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
    if let (Some(a), None) = (&d.apiserver_binary, &d.etcd_binary) {
        v.problem(
            Some(a.span()),
            "drill.apiserver_binary",
            "the drill's API server reads the etcd the drill starts: set `etcd_binary` too (an \
             etcd of this node's version)",
        );
    }
    DrillConfig {
        schedule,
        source,
        scratch_dir: v.path(
            d.scratch_dir,
            "drill.scratch_dir",
            &crate::state::StateDir::new(state_dir).default_drill_scratch_dir(),
        ),
        identity,
        etcd_binary: d
            .etcd_binary
            .map(|p| v.path(Some(p), "drill.etcd_binary", Path::new(""))),
        apiserver_binary: d
            .apiserver_binary
            .map(|p| v.path(Some(p), "drill.apiserver_binary", Path::new(""))),
        timeout: v.duration(d.timeout, "drill.timeout", Duration::from_secs(120)),
    }
}

/// `drill.schedule`: when the daemon drills.
fn drill_schedule(s: Spanned<String>, v: &mut Validator<'_>) -> Option<Schedule> {
    match Schedule::parse_with(s.get_ref(), v.allow_seconds) {
        Ok(sch) => Some(sch),
        Err(e) => {
            v.problem(Some(s.span()), "drill.schedule", e);
            None
        }
    }
}

/// `drill.source`: "local" (the default) or "remote", which needs a destination.
fn drill_source(
    raw: Option<Spanned<String>>,
    has_remote: bool,
    v: &mut Validator<'_>,
) -> DrillSource {
    let Some(s) = raw else {
        return DrillSource::Local;
    };
    match s.get_ref().as_str() {
        "local" => DrillSource::Local,
        "remote" => {
            if !has_remote {
                v.problem(
                    Some(s.span()),
                    "drill.source",
                    "\"remote\" needs [remote_storage] or a [[destination]]: there is no \
                     remote copy to drill",
                );
            }
            DrillSource::Remote
        }
        other => {
            v.problem(
                Some(s.span()),
                "drill.source",
                format!("{other:?} is not a drill source: use \"local\" or \"remote\""),
            );
            DrillSource::Local
        }
    }
}

/// `[encryption]`: recipients inline and from `recipients_file` (read now, so a bad one is a
/// configuration error and nothing is ever sent unencrypted), and the compression.
fn validate_encryption(e: Spanned<RawEncryption>, v: &mut Validator<'_>) -> Encryption {
    let section = e.span();
    let e = e.into_inner();
    Encryption {
        recipients: recipients(e.recipients, e.recipients_file, section, v),
        compression: compression(e.compression, e.compression_level, v),
        encrypt_local: e.encrypt_local.unwrap_or(false),
    }
}

/// `recipients` and the ones in `recipients_file`: at least one.
fn recipients(
    inline: Option<Vec<Spanned<String>>>,
    file: Option<Spanned<PathBuf>>,
    section: Range<usize>,
    v: &mut Validator<'_>,
) -> Vec<Recipient> {
    let before = v.problems.len();
    let mut recipients = Vec::new();
    for r in inline.unwrap_or_default() {
        match Recipient::parse(r.get_ref()) {
            Ok(p) => recipients.push(p),
            Err(msg) => v.problem(Some(r.span()), "encryption.recipients", msg),
        }
    }
    if let Some(f) = file {
        recipients.extend(recipients_file(f, v));
    }
    if recipients.is_empty() && v.problems.len() == before {
        v.problem(
            Some(section),
            "encryption.recipients",
            "no recipients: give `recipients = [\"age1…\"]` or `recipients_file`, the public \
             keys whose holders may decrypt the backups",
        );
    }
    recipients.dedup();
    recipients
}

/// `recipients_file`, read now.
fn recipients_file(f: Spanned<PathBuf>, v: &mut Validator<'_>) -> Vec<Recipient> {
    let span = f.span();
    let path = v.path(Some(f), "encryption.recipients_file", Path::new(""));
    let problem = match std::fs::read_to_string(&path) {
        Ok(text) => match parse_recipients_file(&text) {
            Ok(recipients) => return recipients,
            Err((line, msg)) => format!("{}:{line}: {msg}", path.display()),
        },
        Err(err) => format!(
            "cannot read {}: {err}; with [encryption] nothing leaves the node until its \
             recipients can be read",
            path.display()
        ),
    };
    v.problem(Some(span), "encryption.recipients_file", problem);
    Vec::new()
}

/// `compression` ("zstd", the default, or "none") and `compression_level`.
fn compression(
    raw: Option<Spanned<String>>,
    level: Option<Spanned<i64>>,
    v: &mut Validator<'_>,
) -> Compression {
    let level = match level {
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
    match raw.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("zstd") => Compression::Zstd(level),
        Some("none") => Compression::None,
        Some(other) => {
            v.problem(
                raw.as_ref().map(Spanned::span),
                "encryption.compression",
                format!("{other:?} is not a compression: use \"zstd\" or \"none\""),
            );
            Compression::Zstd(level)
        }
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
