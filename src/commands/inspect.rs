//! `etcdguard inspect SNAPSHOT` (what a snapshot holds, `--keys`, `--get`) and `etcdguard
//! diff A B`: offline, read by the `inspect` flow; an encrypted copy is opened with
//! `--identity` into a private temp dir first.

use std::path::Path;
use std::process::ExitCode;

use super::output::{human_size, print, print_json, table_for_stdout};
use super::CmdResult;
use crate::cli::InspectFormat;
use crate::etcddb::keyspace;
use crate::exit::CommandError;
use crate::inspect::{self, k8s, Diff, Limits, Summary};

/// Inspect options, as the command line gave them.
pub(super) struct Options<'a> {
    pub file: &'a Path,
    pub format: InspectFormat,
    pub keys: Option<&'a str>,
    pub get: Option<&'a str>,
    pub revision: Option<i64>,
    pub limit: usize,
    pub identity: Option<&'a Path>,
}

fn open(
    file: &Path,
    identity: Option<&Path>,
) -> Result<(crate::etcddb::Db, Option<crate::encryption::Unsealed>), CommandError> {
    let unsealed = super::open_sealed(file, identity, &std::env::temp_dir())?;
    let plain = unsealed.as_ref().map_or(file, |u| u.path());
    let db = keyspace::open(plain).map_err(CommandError::Failed)?;
    Ok((db, unsealed))
}

fn failed(file: &Path) -> impl Fn(String) -> CommandError + '_ {
    move |e| CommandError::Failed(format!("{}: {e}", file.display()))
}

pub(super) fn run(o: Options<'_>) -> CmdResult {
    let (db, _unsealed) = open(o.file, o.identity)?;
    if let Some(prefix) = o.keys {
        let rows = inspect::keys(&db, prefix.as_bytes()).map_err(failed(o.file))?;
        match o.format {
            InspectFormat::Json => print_json(&rows)?,
            InspectFormat::Table => {
                let mut out = String::new();
                for r in &rows {
                    out.push_str(&r.key);
                    out.push('\n');
                }
                print(&out)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(key) = o.get {
        let found = inspect::get(&db, key.as_bytes(), o.revision)
            .map_err(|e| CommandError::Failed(format!("{}: {e}", o.file.display())))?;
        return print_value(&found, o.format);
    }
    let s = inspect::summarize(
        &db,
        Limits {
            largest: o.limit,
            deleted: o.limit,
        },
    )
    .map_err(failed(o.file))?;
    match o.format {
        InspectFormat::Json => {
            let mut v = serde_json::to_value(&s).expect("summary serializes");
            if let Some(obj) = v.as_object_mut() {
                obj.insert("path".into(), o.file.display().to_string().into());
            }
            print_json(&v)?
        }
        InspectFormat::Table => print(&summary_text(o.file, &s))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_value(f: &inspect::Found, format: InspectFormat) -> CmdResult {
    match format {
        InspectFormat::Json => {
            let mut v = k8s::value_json(&f.value);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("key".into(), String::from_utf8_lossy(&f.key).into());
                obj.insert("createRevision".into(), f.create_revision.into());
                obj.insert("modRevision".into(), f.mod_revision.into());
                obj.insert("version".into(), f.version.into());
                obj.insert("lease".into(), f.lease.into());
                obj.insert("bytes".into(), f.value.len().into());
            }
            print_json(&v)?;
        }
        InspectFormat::Table => match k8s::decode(&f.value) {
            // As stored: what `etcdctl get --print-value-only` prints.
            k8s::Decoded::Json | k8s::Decoded::Text => {
                let mut s = String::from_utf8_lossy(&f.value).into_owned();
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                print(&s)?;
            }
            k8s::Decoded::Kubernetes { .. } => print_json(&k8s::value_json(&f.value))?,
            k8s::Decoded::EncryptedAtRest { provider, key } => {
                tracing::warn!(
                    "the value is encrypted at rest by kube-apiserver ({provider}, key \
                     {key}); printed in base64"
                );
                print_base64(&f.value)?;
            }
            k8s::Decoded::Binary => {
                tracing::warn!("the value is binary; printed in base64");
                print_base64(&f.value)?;
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn print_base64(b: &[u8]) -> Result<(), CommandError> {
    use base64::Engine;
    print(&format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(b)
    ))
}

fn ns_cell(ns: &str) -> String {
    if ns.is_empty() {
        "(cluster)".into()
    } else {
        ns.to_string()
    }
}

fn auth_text(f: &keyspace::Facts) -> String {
    format!(
        "{} ({} users, {} roles)",
        if f.auth_enabled {
            "enabled"
        } else {
            "disabled"
        },
        f.users,
        f.roles
    )
}

/// The human form of a summary. Pure.
pub(crate) fn summary_text(path: &Path, s: &Summary) -> String {
    let mut out = facts_text(path, s);
    if s.resources.is_empty() {
        out.push_str("\nno keys\n");
        return out;
    }
    out.push_str(&resources_text(s));
    out.push_str(&namespaces_text(s));
    out.push_str(&largest_text(s));
    out.push_str(&deleted_text(s));
    out
}

/// The head of a summary: revision, versions, totals, members, alarms, leases, auth.
fn facts_text(path: &Path, s: &Summary) -> String {
    let f = &s.facts;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{}\n  revision          {}{}\n  storage version   {}\n  cluster version   {}\n  \
         keys              {} live ({} of values), {} deleted since the last compaction, \
         {} revisions in all\n",
        path.display(),
        f.revision,
        compaction_note(f),
        opt(&f.storage_version),
        opt(&f.cluster_version),
        s.totals.keys,
        human_size(s.totals.bytes),
        s.totals.deleted,
        f.revisions,
    );
    out.push_str(&members_text(f));
    out.push_str(&format!(
        "  alarms            {}\n  leases            {}\n  auth              {}\n",
        alarms_cell(f),
        leases_cell(s),
        auth_text(f),
    ));
    out
}

/// What follows the revision: where compaction stands.
fn compaction_note(f: &keyspace::Facts) -> String {
    match (f.compact_revision, f.scheduled_compact_revision) {
        (Some(c), Some(sc)) if sc > c => {
            format!(" (compacted at {c}; compaction to {sc} resumes when etcd starts)")
        }
        (Some(c), _) => format!(" (compacted at {c})"),
        (None, Some(sc)) => format!(" (compaction to {sc} resumes when etcd starts)"),
        (None, None) => " (never compacted)".into(),
    }
}

/// One line per member (the first one titled), then the removed members if any.
fn members_text(f: &keyspace::Facts) -> String {
    let mut out = String::new();
    for (i, m) in f.members.iter().enumerate() {
        out.push_str(&format!(
            "  {}  {} {:x} {}{}\n",
            if i == 0 {
                "members         "
            } else {
                "                "
            },
            if m.name.is_empty() {
                "(unstarted)"
            } else {
                &m.name
            },
            m.id,
            m.peer_urls.join(","),
            if m.is_learner { " (learner)" } else { "" }
        ));
    }
    if !f.removed_members.is_empty() {
        out.push_str(&format!(
            "  removed members   {}\n",
            f.removed_members.join(", ")
        ));
    }
    out
}

fn alarms_cell(f: &keyspace::Facts) -> String {
    if f.alarms.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} (they survive a restore: `etcdctl alarm disarm`)",
            f.alarms.join(", ")
        )
    }
}

fn leases_cell(s: &Summary) -> String {
    match s.leases.len() {
        0 => "none".to_string(),
        n => format!(
            "{n} ({} with keys attached)",
            s.leases.iter().filter(|l| l.keys > 0).count()
        ),
    }
}

/// The table of resources (or prefixes), with its title.
fn resources_text(s: &Summary) -> String {
    let mut out = format!(
        "\n{}\n",
        if s.kubernetes_keys > 0 {
            "BY RESOURCE (Kubernetes /registry/ layout; bytes are value bytes)"
        } else {
            "BY PREFIX (bytes are value bytes)"
        }
    );
    let rows: Vec<Vec<String>> = s
        .resources
        .iter()
        .map(|r| {
            vec![
                r.resource.clone(),
                r.count.keys.to_string(),
                human_size(r.count.bytes),
                r.count.deleted.to_string(),
                match r
                    .namespaces
                    .iter()
                    .filter(|n| !n.namespace.is_empty())
                    .count()
                {
                    0 => "-".into(),
                    n => n.to_string(),
                },
            ]
        })
        .collect();
    out.push_str(&table_for_stdout(
        &["RESOURCE", "KEYS", "BYTES", "DELETED", "NAMESPACES"],
        &rows,
        &["NAMESPACES", "DELETED"],
    ));
    out
}

/// The table of namespaced resources per namespace; empty when there are none.
fn namespaces_text(s: &Summary) -> String {
    let rows: Vec<Vec<String>> = s
        .resources
        .iter()
        .flat_map(|r| {
            r.namespaces
                .iter()
                .filter(|n| !n.namespace.is_empty())
                .map(|n| {
                    vec![
                        r.resource.clone(),
                        ns_cell(&n.namespace),
                        n.count.keys.to_string(),
                        human_size(n.count.bytes),
                        n.count.deleted.to_string(),
                    ]
                })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = "\nBY NAMESPACE\n".to_string();
    out.push_str(&table_for_stdout(
        &["RESOURCE", "NAMESPACE", "KEYS", "BYTES", "DELETED"],
        &rows,
        &["DELETED"],
    ));
    out
}

/// The largest objects; empty when there are none.
fn largest_text(s: &Summary) -> String {
    if s.largest.is_empty() {
        return String::new();
    }
    let mut out = "\nLARGEST OBJECTS\n".to_string();
    let rows: Vec<Vec<String>> = s
        .largest
        .iter()
        .map(|l| {
            vec![
                human_size(l.bytes),
                l.mod_revision.to_string(),
                l.key.clone(),
            ]
        })
        .collect();
    out.push_str(&table_for_stdout(
        &["BYTES", "MOD REVISION", "KEY"],
        &rows,
        &["MOD REVISION"],
    ));
    out
}

/// The newest deletes since the last compaction; empty when there are none.
fn deleted_text(s: &Summary) -> String {
    if s.deleted_keys.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nDELETED SINCE THE LAST COMPACTION (newest {} of {}; `--get KEY --revision N` \
         reads an older value)\n",
        s.deleted_keys.len(),
        s.totals.deleted
    );
    let rows: Vec<Vec<String>> = s
        .deleted_keys
        .iter()
        .map(|d| vec![d.deleted_at.to_string(), d.key.clone()])
        .collect();
    out.push_str(&table_for_stdout(&["DELETED AT", "KEY"], &rows, &[]));
    out
}

pub(super) fn diff(
    a: &Path,
    b: &Path,
    format: InspectFormat,
    limit: usize,
    identity: Option<&Path>,
) -> CmdResult {
    let (da, _ua) = open(a, identity)?;
    let (db, _ub) = open(b, identity)?;
    let d = inspect::diff(&da, &db, limit).map_err(CommandError::Failed)?;
    match format {
        InspectFormat::Json => print_json(&d)?,
        InspectFormat::Table => print(&diff_text(a, b, &d, limit))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of a diff. Pure but for the terminal width.
fn diff_text(a: &Path, b: &Path, d: &Diff, limit: usize) -> String {
    let mut out = format!(
        "A {} (revision {}, {} keys)\nB {} (revision {}, {} keys)\n{} added, {} removed, {} \
         changed\n",
        a.display(),
        d.a.revision,
        d.a.keys,
        b.display(),
        d.b.revision,
        d.b.keys,
        d.totals.added,
        d.totals.removed,
        d.totals.changed
    );
    if d.rows.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = d
        .rows
        .iter()
        .map(|r| {
            vec![
                r.resource.clone(),
                ns_cell(&r.namespace),
                r.count.added.to_string(),
                r.count.removed.to_string(),
                r.count.changed.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table_for_stdout(
        &["RESOURCE", "NAMESPACE", "ADDED", "REMOVED", "CHANGED"],
        &rows,
        &[],
    ));
    for (title, keys, total) in [
        ("ADDED", &d.added_keys, d.totals.added),
        ("REMOVED", &d.removed_keys, d.totals.removed),
        ("CHANGED", &d.changed_keys, d.totals.changed),
    ] {
        if keys.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{title}\n"));
        for k in keys {
            out.push_str(&format!("  {k}\n"));
        }
        if total > keys.len() as u64 {
            out.push_str(&format!(
                "  … and {} more (--limit {limit} names each kind)\n",
                total - keys.len() as u64
            ));
        }
    }
    out
}
