//! `etcdguard restore-datadir`: a data directory from a snapshot, as `etcdutl snapshot restore`
//! builds it, without touching the node.

use std::process::ExitCode;

use super::output::print;
use super::CmdResult;
use crate::exit::CommandError;

pub(super) fn run(a: &crate::cli::RestoreDatadirArgs) -> CmdResult {
    use crate::restore::datadir::{build_data_dir, BuildError, BuildOptions, RestorePlan};
    let plan = RestorePlan {
        name: a.name.clone(),
        initial_cluster: a.initial_cluster.clone().unwrap_or_else(|| {
            RestorePlan::single_member_cluster(&a.name, &a.initial_advertise_peer_urls)
        }),
        advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
        token: a.initial_cluster_token.clone(),
        bump_revision: a.bump_revision,
        mark_compacted: a.mark_compacted,
    };
    let opts = BuildOptions {
        skip_hash_check: a.skip_hash_check,
        target: a.target_version.map(Into::into),
        force: a.force,
    };
    // A sealed snapshot is opened beside the data dir (same disk, private, removed after).
    let parent = a
        .data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let unsealed = super::open_sealed(&a.snapshot, a.identity.as_deref(), parent)?;
    let snapshot = unsealed.as_ref().map_or(a.snapshot.as_path(), |u| u.path());
    let r = build_data_dir(snapshot, &plan, &a.data_dir, opts).map_err(|e| match e {
        BuildError::Plan(p) => CommandError::Usage(p.to_string()),
        other => CommandError::Failed(other.to_string()),
    })?;
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
    let mut out = format!(
        "restored {} into {}\n  for etcd    {}\n  cluster ID  {:x}\n  revision    {}{}\n  \
         members\n",
        a.snapshot.display(),
        r.target.display(),
        r.target_version,
        r.cluster.cluster_id,
        r.revision,
        if a.bump_revision > 0 {
            format!(
                " (snapshot {} + bump {}, marked compacted)",
                r.source.revision, a.bump_revision
            )
        } else {
            String::new()
        }
    );
    out.push_str(&r.cluster.member_lines("    ", "  (this member)"));
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}
