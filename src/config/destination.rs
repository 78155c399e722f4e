//! `[remote_storage]` and every `[[destination]]`: the keys each kind of storage has, and
//! the keys every destination shares.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::validator::Validator;
use super::*;

/// `[remote_storage]` (first, named `remote` unless it says) and every `[[destination]]`:
/// names unique, `per = "cluster"` only with one destination.
pub(super) fn validate_destinations(
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
