//! Every node's snapshots at a destination, read from the sidecars under its shared prefix:
//! what `etcdguard records --remote` shows and `recover` chooses from. Sidecars are plain
//! JSON (no key is needed to read them); one that does not parse is said in the log and
//! left out.
//!
//! The bucket may hold many clusters and years of copies: only the node directories directly
//! under the prefix are listed (`<prefix><node>/`, one delimited listing each, page by page),
//! only sidecar keys are kept from the pages, and with a limit only the newest that many (by
//! the time in their names) are read.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use crate::config::DestinationConfig;
use crate::records::Record;
use crate::store::local::{is_snapshot_file_name, snapshot_time};
use crate::store::remote::{self, Remote, SIDECAR_SUFFIX};

/// Sidecars read at the same time.
const READS_AT_ONCE: usize = 8;

/// One snapshot at a destination, from its sidecar.
#[derive(Debug, Clone)]
pub struct RemoteEntry {
    /// The node directory (`<prefix><node>/`).
    pub node: String,
    /// The snapshot object's key.
    pub key: String,
    /// How records and messages name the object (`s3://<bucket>/<key>`, `gs://…`, …).
    pub location: String,
    pub record: Record,
}

/// The sidecar keys worth reading: all of them, or with a limit the newest that many by the
/// time in the snapshot's name (a min-heap of that size).
struct Newest {
    limit: Option<usize>,
    keys: BinaryHeap<Reverse<(DateTime<Utc>, String)>>,
}

impl Newest {
    fn offer(&mut self, key: String) {
        let name = key.rsplit('/').next().unwrap_or("");
        let name = name.strip_suffix(SIDECAR_SUFFIX).unwrap_or(name);
        let at = snapshot_time(name).unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.keys.push(Reverse((at, key)));
        if self.limit.is_some_and(|n| self.keys.len() > n) {
            self.keys.pop();
        }
    }
}

/// Every node's snapshots at `rc` (or only `node`'s), newest first; with `limit`, only the
/// newest that many sidecars are read.
pub async fn list(
    rc: &DestinationConfig,
    node: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<RemoteEntry>, String> {
    let remote = Remote::open_shared(rc)?;
    let mut dirs = Vec::new();
    match node {
        Some(n) => dirs.push(remote::node_prefix(&rc.prefix, n)),
        None => {
            remote
                .each_key_in(&rc.prefix, |k| {
                    if k != rc.prefix && k.ends_with('/') {
                        dirs.push(k.to_string());
                    }
                })
                .await?
        }
    }
    let mut newest = Newest {
        limit,
        keys: BinaryHeap::new(),
    };
    for dir in &dirs {
        // Only sidecars of snapshot names directly in the node's directory.
        remote
            .each_key_in(dir, |k| {
                let name = k.strip_prefix(dir.as_str()).unwrap_or("");
                if name
                    .strip_suffix(SIDECAR_SUFFIX)
                    .is_some_and(is_snapshot_file_name)
                {
                    newest.offer(k.to_string());
                }
            })
            .await?;
    }
    let read = futures_util::stream::iter(newest.keys.into_iter().map(|Reverse((_, k))| k))
        .map(|key| {
            let remote = &remote;
            async move { remote.sidecar_json(&key).await.map(|b| (key, b)) }
        })
        .buffer_unordered(READS_AT_ONCE);
    futures_util::pin_mut!(read);
    let mut out = Vec::new();
    while let Some(got) = read.next().await {
        let (key, bytes) = got?;
        if let Some(e) = entry(rc, &key, &bytes) {
            out.push(e);
        }
    }
    out.sort_by_key(|e| Reverse(e.record.backup_timestamp));
    if let Some(n) = limit {
        out.truncate(n);
    }
    Ok(out)
}

/// The entry of the sidecar at `key` holding `bytes`; `None` (said in the log) when it does
/// not parse.
fn entry(rc: &DestinationConfig, key: &str, bytes: &[u8]) -> Option<RemoteEntry> {
    let snapshot_key = key.trim_end_matches(SIDECAR_SUFFIX).to_string();
    let rel = snapshot_key
        .strip_prefix(&rc.prefix)
        .unwrap_or(&snapshot_key);
    let node = rel
        .rsplit_once('/')
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    match serde_json::from_slice::<Record>(bytes) {
        Ok(record) => Some(RemoteEntry {
            node,
            location: remote::location(rc, &snapshot_key),
            key: snapshot_key,
            record,
        }),
        Err(e) => {
            tracing::warn!(key = %key, "sidecar does not parse: {e}");
            None
        }
    }
}
