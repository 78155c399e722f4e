//! The keys every destination has, whatever its kind of storage: where and how copies are
//! uploaded (endpoint, prefix, TLS, server-side encryption, Object Lock, credentials, part
//! size, pace), how long they are kept, and by which node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::{Storage, Table};
use crate::config::raw::*;
use crate::config::validator::Validator;
use crate::config::*;

/// The keys every destination has, whatever its kind; with the kind's, the destination.
pub(super) fn shared_keys(
    r: RawRemote,
    storage: Storage,
    name: String,
    t: &Table<'_>,
    v: &mut Validator<'_>,
    zone: Zone,
) -> DestinationConfig {
    let Storage {
        kind,
        bucket,
        region,
    } = storage;
    let f = |key: &str| t.field(key);
    let endpoint = endpoint(r.endpoint, &kind, t, v);
    let prefix = remote_prefix(r.prefix, &f("prefix"), v);
    let ca_bundle = r
        .ca_bundle
        .map(|c| v.path(Some(c), &f("ca_bundle"), Path::new("")));
    let sse = sse(r.sse, r.sse_kms_key_id, &kind, t, v);
    let object_lock = object_lock(r.object_lock_mode, r.object_lock_period, &kind, t, v);
    let credentials = credentials(r.credentials_file, r.systemd_credential, &name, &kind, t, v);
    DestinationConfig {
        name,
        table: t.name.to_string(),
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
        part_size: remote_part_size(r.part_size, &f("part_size"), v),
        concurrency: remote_concurrency(r.concurrency, &f("concurrency"), v),
        timeout: v.duration(r.timeout, &f("timeout"), Duration::from_secs(1800)),
        stall_timeout: v.duration(
            r.stall_timeout,
            &f("stall_timeout"),
            Duration::from_secs(60),
        ),
        rate_limit: v.rate(r.rate_limit, &f("rate_limit")),
        retention: v.retention(
            t.name,
            r.ttl,
            raw_counts!(r),
            r.min_keep,
            Duration::from_secs(30 * 24 * 3600),
            zone,
        ),
        per_cluster: per_cluster(r.per, t, v),
        cluster_lease: v.duration(
            r.cluster_lease,
            &f("cluster_lease"),
            Duration::from_secs(15),
        ),
    }
}

/// `endpoint`: an http:// or https:// URL; an fs destination has none.
fn endpoint(
    raw: Option<Spanned<String>>,
    kind: &Kind,
    t: &Table<'_>,
    v: &mut Validator<'_>,
) -> Option<String> {
    let e = raw?;
    if !(e.get_ref().starts_with("https://") || e.get_ref().starts_with("http://")) {
        v.problem(
            Some(e.span()),
            &t.field("endpoint"),
            format!("{:?} must be an http:// or https:// URL", e.get_ref()),
        );
    }
    let e = e.into_inner();
    if matches!(kind, Kind::Fs { .. }) {
        v.problem(
            Some(t.span.clone()),
            &t.field("endpoint"),
            format!("an fs destination has no endpoint (got {e:?}): it writes to `path`"),
        );
    }
    Some(e)
}

/// `sse` and `sse_kms_key_id`: S3's server-side encryption headers.
fn sse(
    sse: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    kind: &Kind,
    t: &Table<'_>,
    v: &mut Validator<'_>,
) -> Option<Sse> {
    let sse = remote_sse(sse, key, t.name, v);
    if sse.is_some() && *kind != Kind::S3 {
        v.problem(
            Some(t.span.clone()),
            &t.field("sse"),
            "server-side encryption headers are S3's: use [encryption] for every kind",
        );
    }
    sse
}

/// `object_lock_mode` with `object_lock_period`: S3 Object Lock, both or neither.
fn object_lock(
    mode: Option<Spanned<String>>,
    period: Option<Spanned<RawDuration>>,
    kind: &Kind,
    t: &Table<'_>,
    v: &mut Validator<'_>,
) -> Option<ObjectLock> {
    match (mode, period) {
        (None, None) => None,
        (Some(m), p) => {
            let mode = lock_mode(&m, t, v);
            if *kind != Kind::S3 {
                v.problem(
                    Some(m.span()),
                    &t.field("object_lock_mode"),
                    "Object Lock is S3's: for GCS and Azure set a retention policy on the bucket \
                     or container itself",
                );
            }
            let Some(p) = p else {
                v.problem(
                    Some(m.span()),
                    &t.field("object_lock_period"),
                    "is required with object_lock_mode: how long each copy stays locked",
                );
                return None;
            };
            Some(ObjectLock {
                mode,
                period: v.duration(Some(p), &t.field("object_lock_period"), Duration::ZERO),
            })
        }
        (None, Some(p)) => {
            v.problem(
                Some(p.span()),
                &t.field("object_lock_period"),
                "needs object_lock_mode (\"GOVERNANCE\" or \"COMPLIANCE\")",
            );
            None
        }
    }
}

/// `object_lock_mode`: "GOVERNANCE" or "COMPLIANCE", in any case.
fn lock_mode(m: &Spanned<String>, t: &Table<'_>, v: &mut Validator<'_>) -> LockMode {
    match m.get_ref().to_ascii_uppercase().as_str() {
        "GOVERNANCE" => LockMode::Governance,
        "COMPLIANCE" => LockMode::Compliance,
        other => {
            v.problem(
                Some(m.span()),
                &t.field("object_lock_mode"),
                format!(
                    "{other:?} is not an Object Lock mode: use \"GOVERNANCE\" or \"COMPLIANCE\""
                ),
            );
            LockMode::Governance
        }
    }
}

/// `credentials_file` or `systemd_credential` (by default `etcdguard-s3` for
/// `[remote_storage]`, `etcdguard-<name>` for a `[[destination]]`); no credentials file with
/// GCS's `anonymous = true`.
fn credentials(
    file: Option<Spanned<PathBuf>>,
    systemd: Option<Spanned<String>>,
    name: &str,
    kind: &Kind,
    t: &Table<'_>,
    v: &mut Validator<'_>,
) -> Credentials {
    let credentials = match (file, systemd) {
        (Some(c), None) => {
            Credentials::File(v.path(Some(c), &t.field("credentials_file"), Path::new("")))
        }
        (Some(c), Some(_)) => {
            v.problem(
                Some(c.span()),
                &t.field("credentials_file"),
                "set credentials_file or systemd_credential, not both",
            );
            Credentials::SystemdOrDefault(String::new())
        }
        (None, Some(n)) => Credentials::SystemdOrDefault(systemd_credential(n, t, v)),
        (None, None) if t.legacy => Credentials::SystemdOrDefault(SYSTEMD_CREDENTIAL.to_string()),
        (None, None) => Credentials::SystemdOrDefault(format!("etcdguard-{name}")),
    };
    if matches!(kind, Kind::Gcs { anonymous: true }) && matches!(credentials, Credentials::File(_))
    {
        v.problem(
            Some(t.span.clone()),
            &t.field("anonymous"),
            "anonymous = true sends no credentials: drop credentials_file or anonymous",
        );
    }
    credentials
}

/// `systemd_credential`: a credential name as systemd's `LoadCredential=` takes it.
fn systemd_credential(n: Spanned<String>, t: &Table<'_>, v: &mut Validator<'_>) -> String {
    let ok = !n.get_ref().is_empty()
        && n.get_ref()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !ok {
        v.problem(
            Some(n.span()),
            &t.field("systemd_credential"),
            format!("{:?} is not a systemd credential name", n.get_ref()),
        );
    }
    n.into_inner()
}

/// `per`: "node" (every node its own copy, the default) or "cluster".
fn per_cluster(per: Option<Spanned<String>>, t: &Table<'_>, v: &mut Validator<'_>) -> bool {
    let Some(p) = per else { return false };
    match p.get_ref().as_str() {
        "node" => false,
        "cluster" => true,
        other => {
            v.problem(
                Some(p.span()),
                &t.field("per"),
                format!(
                    "{other:?} is not a choice: \"node\" (every node uploads its own copy) or \
                     \"cluster\" (one copy per scheduled slot for the cluster)"
                ),
            );
            false
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
