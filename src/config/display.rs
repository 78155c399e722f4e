//! The effective configuration printed back as TOML, every default filled in and secrets
//! redacted (`config check`).
//!
//! Each table is a list of lines, `key = value` or `# note`, built from the configuration
//! in the order they are shown; one loop writes them all.

use std::fmt::{self, Write};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::retention::Period;

/// One line of a table.
enum Line {
    /// `key = value`, the value already written as TOML.
    Set(&'static str, String),
    /// `# text`: what an unset key means, or what a value implies.
    Note(String),
}

/// `key = value`.
fn set(key: &'static str, value: impl fmt::Display) -> Option<Line> {
    Some(Line::Set(key, value.to_string()))
}

/// An optional key: its line when it has a value, no line when not.
fn set_some(key: &'static str, value: Option<String>) -> Option<Line> {
    value.map(|v| Line::Set(key, v))
}

/// An optional key: its line when it has a value, else a note saying what unset means.
fn set_or_note(key: &'static str, value: Option<String>, unset: &str) -> Option<Line> {
    Some(value.map_or_else(|| Line::Note(unset.to_string()), |v| Line::Set(key, v)))
}

fn note(text: impl Into<String>) -> Option<Line> {
    Some(Line::Note(text.into()))
}

/// A note shown only `when` it applies.
fn note_if(when: bool, text: impl Into<String>) -> Option<Line> {
    when.then(|| Line::Note(text.into()))
}

/// One table of the display: its heading after a blank line, then its lines (`None`, an
/// optional key left unset, shows nothing). The top-level keys have no heading; a table that
/// is absent is a heading that is a note.
struct Section {
    heading: Option<String>,
    lines: Vec<Option<Line>>,
}

impl Section {
    fn new(heading: &str, lines: Vec<Option<Line>>) -> Section {
        Section {
            heading: Some(heading.to_string()),
            lines,
        }
    }

    /// A table that is not in the configuration, and what that means.
    fn absent(note: &str) -> Section {
        Section {
            heading: Some(format!("# {note}")),
            lines: Vec::new(),
        }
    }

    fn render(&self, out: &mut String) {
        if let Some(heading) = &self.heading {
            let _ = writeln!(out, "\n{heading}");
        }
        for line in self.lines.iter().flatten() {
            let _ = match line {
                Line::Set(key, value) => writeln!(out, "{key} = {value}"),
                Line::Note(text) => writeln!(out, "# {text}"),
            };
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn duration(d: Duration) -> String {
    toml_string(&human(d))
}

fn quoted(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Bytes per second.
fn rate(r: u64) -> String {
    format!("\"{r}B/s\"")
}

impl Config {
    /// The effective configuration as TOML, every default filled in. Secrets (remote
    /// credentials, once they exist) are replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut sections = vec![
            self.top_level(),
            etcd(&self.etcd),
            local_storage(&self.local_storage),
        ];
        if self.destinations.is_empty() {
            sections.push(Section::absent(
                "no [remote_storage] and no [[destination]]: local copies only",
            ));
        }
        sections.extend(self.destinations.iter().map(destination));
        sections.push(encryption(self.encryption.as_ref()));
        sections.extend(self.bundle.as_ref().map(bundle));
        sections.push(drill(&self.drill));
        sections.push(records(&self.history));
        let mut out = String::new();
        for section in &sections {
            section.render(&mut out);
        }
        out
    }

    fn top_level(&self) -> Section {
        Section {
            heading: None,
            lines: vec![
                set("schedule", toml_string(self.schedule.expression())),
                set("timezone", toml_string(&self.timezone.to_string())),
                set("paused", self.paused),
                set("catch_up", self.catch_up),
                set("state_dir", quoted(&self.state_dir)),
                set_or_note(
                    "metrics_file",
                    self.metrics_file.as_deref().map(quoted),
                    "metrics_file unset: no Prometheus textfile",
                ),
            ],
        }
    }
}

fn etcd(e: &EtcdConfig) -> Section {
    Section::new(
        "[etcd]",
        vec![
            set("manifest", quoted(&e.manifest)),
            set_or_note(
                "endpoint",
                e.endpoint.as_deref().map(toml_string),
                "endpoint: the loopback client URL in the manifest",
            ),
            set("ca_cert", quoted(&e.ca_cert)),
            set("client_cert", quoted(&e.client_cert)),
            set("client_key", quoted(&e.client_key)),
            set("timeout", duration(e.timeout)),
            set("stall_timeout", duration(e.stall_timeout)),
            set("dial_timeout", duration(e.dial_timeout)),
            set_or_note(
                "rate_limit",
                e.rate_limit.map(rate),
                "rate_limit unset: no ceiling besides the pace",
            ),
            set(
                "pacing",
                toml_string(match e.pacing {
                    PacingChoice::Auto => "auto",
                    PacingChoice::Off => "off",
                }),
            ),
            set_or_note(
                "metrics_url",
                e.metrics_url.as_deref().map(toml_string),
                "metrics_url: the manifest's --listen-metrics-urls on loopback",
            ),
        ],
    )
}

fn local_storage(l: &LocalStorageConfig) -> Section {
    let mut lines = vec![set("path", quoted(&l.path))];
    lines.extend(retention(&l.retention));
    Section::new("[local_storage]", lines)
}

/// `ttl`, the count rules and `min_keep` of a store, and what they imply.
fn retention(rule: &Rule) -> Vec<Option<Line>> {
    let ttl = rule.ttl.map_or_else(|| "forever".to_string(), human);
    let mut lines = vec![
        set("ttl", toml_string(&ttl)),
        set_some("keep", rule.keep.map(|k| k.to_string())),
    ];
    lines
        .extend(Period::ALL.map(|p| set_some(p.field(), rule.tiers.get(p).map(|n| n.to_string()))));
    lines.extend([
        set("min_keep", rule.min_keep),
        note_if(
            rule.tiers.any(),
            format!(
                "hours, days, weeks (ISO, from Monday) and months in the timezone {}",
                toml_string(&rule.zone.to_string())
            ),
        ),
        note_if(
            rule.keeps_forever(),
            "neither ttl nor a keep rule: snapshots here are never deleted",
        ),
    ]);
    lines
}

/// Every destination in the new form: `[remote_storage]` is the first, named as its `name`
/// says (`remote` by default), its systemd credential `etcdguard-s3`.
fn destination(r: &DestinationConfig) -> Section {
    let mut lines = vec![
        set("name", toml_string(&r.name)),
        set("type", toml_string(r.kind.as_str())),
    ];
    lines.extend(kind_keys(r));
    lines.extend([
        set_some("endpoint", r.endpoint.as_deref().map(toml_string)),
        set("prefix", toml_string(&r.prefix)),
        set_some(
            "force_path_style",
            (r.kind == Kind::S3).then(|| r.force_path_style.to_string()),
        ),
        set_some("ca_bundle", r.ca_bundle.as_deref().map(quoted)),
        set_some(
            "insecure_skip_tls_verify",
            r.insecure_skip_tls_verify
                .then(|| "true  # TLS NOT VERIFIED".to_string()),
        ),
        set_some("sse", r.sse.as_ref().map(sse_name)),
        set_some(
            "sse_kms_key_id",
            match &r.sse {
                Some(Sse::Kms(Some(key))) => Some(toml_string(key)),
                _ => None,
            },
        ),
        set_some(
            "object_lock_mode",
            r.object_lock.map(|l| toml_string(l.mode.as_str())),
        ),
        set_some(
            "object_lock_period",
            r.object_lock.map(|l| duration(l.period)),
        ),
    ]);
    lines.extend(credentials(r));
    lines.extend([
        set("part_size", r.part_size),
        set("concurrency", r.concurrency),
        set("timeout", duration(r.timeout)),
        set("stall_timeout", duration(r.stall_timeout)),
        set_some("rate_limit", r.rate_limit.map(rate)),
    ]);
    lines.extend(retention(&r.retention));
    lines.extend([
        set(
            "per",
            toml_string(if r.per_cluster { "cluster" } else { "node" }),
        ),
        set_some(
            "cluster_lease",
            r.per_cluster.then(|| duration(r.cluster_lease)),
        ),
    ]);
    Section::new("[[destination]]", lines)
}

/// The keys of the destination's kind of storage.
fn kind_keys(r: &DestinationConfig) -> Vec<Option<Line>> {
    match &r.kind {
        Kind::S3 => vec![
            set("bucket", toml_string(&r.bucket)),
            set("region", toml_string(&r.region)),
        ],
        Kind::Gcs { anonymous } => vec![
            set("bucket", toml_string(&r.bucket)),
            set_some(
                "anonymous",
                anonymous.then(|| "true  # NO CREDENTIALS".to_string()),
            ),
        ],
        Kind::Azblob { account } => vec![
            set("container", toml_string(&r.bucket)),
            set("account_name", toml_string(account)),
        ],
        Kind::Fs {
            path,
            require_mount,
        } => vec![
            set("path", quoted(path)),
            set("require_mount", require_mount),
        ],
    }
}

fn sse_name(sse: &Sse) -> String {
    toml_string(match sse {
        Sse::S3Managed => "AES256",
        Sse::Kms(_) => "aws:kms",
    })
}

/// `credentials_file`, or `systemd_credential` and where the credentials come from without it.
fn credentials(r: &DestinationConfig) -> Vec<Option<Line>> {
    let name = match &r.credentials {
        Credentials::File(p) => return vec![set("credentials_file", quoted(p))],
        Credentials::SystemdOrDefault(name) => name,
    };
    let otherwise = match r.kind {
        Kind::S3 => "the AWS chain (environment, profile, instance role)",
        Kind::Gcs { .. } => "GCS application default credentials",
        Kind::Azblob { .. } => "none: a key is required",
        Kind::Fs { .. } => "none needed (the file system's permissions)",
    };
    vec![
        set("systemd_credential", toml_string(name)),
        note(format!(
            "credentials: $CREDENTIALS_DIRECTORY/{name} (systemd LoadCredential=), else \
             {otherwise}"
        )),
    ]
}

fn encryption(e: Option<&Encryption>) -> Section {
    let Some(e) = e else {
        return Section::absent("[encryption] absent: copies are the plain snapshot");
    };
    let recipients: String = e
        .recipients
        .iter()
        .map(|r| format!("  {},\n", toml_string(r.text())))
        .collect();
    let level = match e.compression {
        Compression::Zstd(level) => Some(level.to_string()),
        _ => None,
    };
    Section::new(
        "[encryption]",
        vec![
            note(format!("copies are sealed as <snapshot>.db{}", e.suffix())),
            set("recipients", format!("[\n{recipients}]")),
            set("compression", toml_string(e.compression.name())),
            set_some("compression_level", level),
            set("encrypt_local", e.encrypt_local),
        ],
    )
}

fn bundle(b: &BundleConfig) -> Section {
    let extra: Vec<String> = b.extra_paths.iter().map(|p| quoted(p)).collect();
    Section::new(
        "[bundle]",
        vec![
            set("root", quoted(&b.root)),
            set("extra_paths", format!("[{}]", extra.join(", "))),
        ],
    )
}

fn drill(d: &DrillConfig) -> Section {
    let source = match d.source {
        DrillSource::Local => "local",
        DrillSource::Remote => "remote",
    };
    Section::new(
        "[drill]",
        vec![
            set_or_note(
                "schedule",
                d.schedule.as_ref().map(|s| toml_string(s.expression())),
                "no schedule: drills only by hand (`etcdguard drill`)",
            ),
            set("source", toml_string(source)),
            set("scratch_dir", quoted(&d.scratch_dir)),
            set_some("identity", d.identity.as_deref().map(quoted)),
            set_some("etcd_binary", d.etcd_binary.as_deref().map(quoted)),
            set_some(
                "apiserver_binary",
                d.apiserver_binary.as_deref().map(quoted),
            ),
            set("timeout", duration(d.timeout)),
        ],
    )
}

fn records(h: &HistoryLimits) -> Section {
    Section::new(
        "[records]",
        vec![
            set("successful_history_limit", h.successful),
            set("failed_history_limit", h.failed),
        ],
    )
}
