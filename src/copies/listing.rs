//! Every node's snapshots at a destination, read from the sidecars under its shared prefix:
//! what `etcdguard records --remote` shows and `recover` chooses from. Sidecars are plain
//! JSON (no key is needed to read them); one that does not parse is said in the log and
//! left out.

use crate::config::DestinationConfig;
use crate::records::Record;
use crate::store::remote::{self, Remote};

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

/// Every node's snapshots at `rc`, newest first.
pub async fn list(rc: &DestinationConfig) -> Result<Vec<RemoteEntry>, String> {
    let remote = Remote::open_shared(rc)?;
    let mut out = Vec::new();
    for (key, bytes) in remote.all_sidecars().await? {
        let snapshot_key = key.trim_end_matches(".json").to_string();
        let rel = snapshot_key
            .strip_prefix(&rc.prefix)
            .unwrap_or(&snapshot_key);
        let node = rel
            .rsplit_once('/')
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) => out.push(RemoteEntry {
                node,
                location: remote::location(rc, &snapshot_key),
                key: snapshot_key,
                record,
            }),
            Err(e) => tracing::warn!(key = %key, "sidecar does not parse: {e}"),
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.record.backup_timestamp));
    Ok(out)
}
