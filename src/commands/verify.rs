//! `etcdguard verify FILE`: the checks `etcdutl snapshot status` makes, and more. An
//! encrypted copy is opened with `--identity` into a private temp dir first.

use std::path::Path;
use std::process::ExitCode;

use super::output::{print, print_json};
use super::CmdResult;
use crate::cli::VerifyFormat;
use crate::etcddb::{self, Trailer};
use crate::exit::CommandError;

pub(super) fn run(
    file: &Path,
    format: VerifyFormat,
    skip_hash_check: bool,
    generation: Option<etcddb::Minor>,
    identity: Option<&Path>,
) -> CmdResult {
    let unsealed = super::open_sealed(file, identity, &std::env::temp_dir())?;
    let plain = unsealed.as_ref().map_or(file, |u| u.path());
    let mut r = etcddb::verify_snapshot_file(plain, skip_hash_check, generation)
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    r.path = file.to_owned();
    if r.trailer != Trailer::Ok {
        tracing::warn!(
            "{}: sha256 trailer {}: integrity not proven by a checksum (a data-dir db may \
             miss writes that were only in the WAL)",
            r.path.display(),
            r.trailer
        );
    }
    match format {
        VerifyFormat::Json => {
            print_json(&r)?;
        }
        VerifyFormat::Text => print(&verify_text(&r))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of a verify report. Pure.
pub(crate) fn verify_text(r: &etcddb::SnapshotFileReport) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}: OK\n  size              {} bytes\n  sha256            {}\n  trailer           {}\n  \
         bbolt             consistent (page size {}, txid {})\n  \
         hash              {:x}  (etcdutl snapshot status)\n  revision          {}\n  \
         total keys        {}  (as etcdutl {} counts: {})\n  total size        {} bytes\n  \
         consistent index  {}\n  \
         storage version   {}\n  cluster version   {}\n  buckets           {}\n{}",
        r.path.display(),
        r.size_bytes,
        r.sha256
            .as_deref()
            .unwrap_or("not computed (--skip-hash-check)"),
        r.trailer.describe(),
        r.page_size,
        r.txid,
        r.hash,
        r.revision,
        r.total_key,
        r.status_as,
        if r.status_as.counts_live_keys() {
            format!(
                "live keys; {} pairs in all buckets",
                r.total_key_all_buckets
            )
        } else {
            format!("pairs in all buckets; {} live keys", r.live_keys)
        },
        r.total_size,
        r.consistent_index
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(&r.storage_version),
        opt(&r.cluster_version),
        r.buckets.join(", "),
        if r.alarms > 0 {
            format!(
                "  WARNING           {} alarm(s) recorded in the snapshot (NOSPACE/CORRUPT survive \
                 a restore: `etcdctl alarm list`, `etcdctl alarm disarm`)\n",
                r.alarms
            )
        } else {
            String::new()
        }
    )
}
