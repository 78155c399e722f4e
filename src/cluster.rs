//! `[remote_storage] per = "cluster"`: one remote copy per scheduled slot for the whole
//! cluster, the nodes agreeing through etcd itself who uploads it.
//!
//! The slot's key, `/etcdguard/v1/slots/<slot>` (outside `/registry/`: no Kubernetes object is
//! touched), is created in a transaction only if it is absent, bound to a lease the uploader
//! keeps alive while it uploads; its value names the uploader and the object. The winner
//! uploads under `<prefix>_cluster/` and then rewrites the key without the lease, `done`. The
//! others record the slot as covered by the winner; until the key says `done`, their copy is
//! pending, and a pending copy whose slot key has vanished (the winner died: its lease
//! expired) is taken over by claiming the slot again. Without quorum no transaction completes:
//! the node uploads its own copy under its own prefix and records why.
//!
//! Who claims first: the slot's preferred uploader, the member at `hash(slot) mod n` of the
//! members sorted by ID, claims at once; the others wait [`HEAD_START`] first. Uploads rotate
//! over the nodes, and none is a single point of failure. The slots are the schedule's (the
//! same instant on every node whatever their clocks say), so skewed clocks name the same key.
//! The newest [`KEEP_SLOT_KEYS`] slot keys are kept; older ones are deleted after each upload.

use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

pub const SLOT_PREFIX: &str = "/etcdguard/v1/slots/";
/// The bucket "node" the cluster's copies live under (`<prefix>_cluster/`): no node can have
/// that name (kubeadm node names are DNS labels, which have no `_`).
pub const CLUSTER_NODE: &str = "_cluster";
/// How long the members that are not a slot's preferred uploader wait before they claim it.
pub const HEAD_START: Duration = Duration::from_secs(2);
/// Slot keys kept in etcd.
pub const KEEP_SLOT_KEYS: usize = 32;

/// What a slot's key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotValue {
    /// The member that claimed the slot.
    pub member: String,
    /// The object's key in the bucket.
    pub object: String,
    pub state: SlotState,
    pub at: DateTime<Utc>,
}

/// Where a slot's upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Bound to the uploader's lease: gone when the uploader dies.
    Uploading,
    /// The copy is verified and has its sidecar; the key outlives the lease.
    Done,
}

impl SlotValue {
    pub fn is_done(&self) -> bool {
        self.state == SlotState::Done
    }
}

pub fn slot_key(slot: DateTime<Utc>) -> String {
    format!("{SLOT_PREFIX}{}", slot.format("%Y%m%dT%H%M%SZ"))
}

/// The preferred uploader of `slot` among member IDs: `hash(slot) mod n` of them sorted. Pure.
pub fn preferred(slot: DateTime<Utc>, ids: &[u64]) -> Option<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return None;
    }
    // FNV-1a over the slot's seconds: stable across nodes, releases and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in slot.timestamp().to_be_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Some(ids[(h % ids.len() as u64) as usize])
}

/// The outcome of a claim.
pub enum Claim {
    /// This node uploads the slot; the lease is kept alive as long as this lives.
    Won(Held),
    /// Another node has it (uploading, or done).
    Taken(SlotValue),
    /// No transaction was possible (no quorum, no answer): upload this node's own copy.
    NoQuorum(String),
}

/// A claimed slot: its lease kept alive by a task, stopped when this is dropped.
pub struct Held {
    pub slot: DateTime<Utc>,
    pub value: SlotValue,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Held {
    /// The slot's copy is `member`'s object `object` (found in the bucket after its uploader
    /// died before marking the slot done): that is what `mark_done` will record.
    pub fn adopt(&mut self, member: &str, object: &str) {
        self.value.member = member.to_string();
        self.value.object = object.to_string();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

fn timed_out(what: &str, t: Duration) -> String {
    format!("etcd did not answer {what} within {t:?}: it has no quorum (or this member is cut off)")
}

/// An error etcd returned for `what`. etcd answers a request it cannot commit with a deadline
/// or leader error (its own timeout, shorter than ours): that means no quorum, and is said so.
pub fn refused(what: &str, e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if [
        "deadline exceeded",
        "no leader",
        "leader changed",
        "timed out",
        "unavailable",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        format!("etcd has no quorum: {what} could not be committed ({text})")
    } else {
        format!("etcd refused {what}: {text}")
    }
}

/// When a claim is made: for a scheduled slot (the preferred uploader at once, the others
/// after [`HEAD_START`]), or at once (a takeover of a slot whose uploader died).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claiming {
    Scheduled,
    TakeOver,
}

/// What a claim asks for: `slot`, for this member (`me`, `my_id`), to upload `object`.
pub struct ClaimRequest<'a> {
    pub slot: DateTime<Utc>,
    pub me: &'a str,
    pub my_id: u64,
    /// The cluster's member IDs (who is the slot's preferred uploader); empty for a takeover.
    pub members: &'a [u64],
    pub object: &'a str,
    /// The lease bound to the claim, kept alive while the upload runs.
    pub ttl: Duration,
    /// The bound on every request.
    pub timeout: Duration,
    pub claiming: Claiming,
}

/// Claims the request's slot, or learns who has it.
pub async fn claim(client: &mut Client, req: &ClaimRequest<'_>) -> Claim {
    let (slot, ttl, timeout) = (req.slot, req.ttl, req.timeout);
    if req.claiming == Claiming::Scheduled
        && preferred(slot, req.members).is_some_and(|p| p != req.my_id)
    {
        tokio::time::sleep(HEAD_START).await;
    }
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = match tokio::time::timeout(timeout, client.lease_grant(ttl_secs, None)).await {
        Err(_) => return Claim::NoQuorum(timed_out("a lease grant", timeout)),
        Ok(Err(e)) => return Claim::NoQuorum(refused("a lease", &e)),
        Ok(Ok(r)) => r.id(),
    };
    let key = slot_key(slot);
    let value = SlotValue {
        member: req.me.to_string(),
        object: req.object.to_string(),
        state: SlotState::Uploading,
        at: crate::clock::now(),
    };
    let json = serde_json::to_vec(&value).expect("slot value serializes");
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            json,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key.clone(), None)]);
    let r = match tokio::time::timeout(timeout, client.txn(txn)).await {
        Err(_) => return Claim::NoQuorum(timed_out("the slot's transaction", timeout)),
        Ok(Err(e)) => return Claim::NoQuorum(refused("the slot's transaction", &e)),
        Ok(Ok(r)) => r,
    };
    if !r.succeeded() {
        let _ = tokio::time::timeout(timeout, client.lease_revoke(lease)).await;
        let taken = r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<SlotValue>(kv.value()).ok()),
            _ => None,
        });
        return match taken {
            Some(v) => Claim::Taken(v),
            None => Claim::NoQuorum(format!("the slot key {key} holds no etcdguard value")),
        };
    }
    let mut keeper_client = client.clone();
    let keeper = tokio::spawn(async move {
        let Ok((mut keeper, mut stream)) = keeper_client.lease_keep_alive(lease).await else {
            return;
        };
        let every = (ttl / 3).max(Duration::from_millis(500));
        loop {
            if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                tracing::warn!(lease, "the slot's lease could not be kept alive");
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    Claim::Won(Held {
        slot,
        value,
        lease,
        keeper,
    })
}

/// The upload of a claimed slot is done: the key is rewritten `done`, without the lease (so it
/// outlives it), and old slot keys beyond [`KEEP_SLOT_KEYS`] are deleted.
pub async fn mark_done(client: &mut Client, held: Held, timeout: Duration) -> Result<(), String> {
    let mut value = held.value.clone();
    value.state = SlotState::Done;
    value.at = crate::clock::now();
    let json = serde_json::to_vec(&value).expect("slot value serializes");
    let key = slot_key(held.slot);
    tokio::time::timeout(timeout, client.put(key, json, None))
        .await
        .map_err(|_| timed_out("marking the slot done", timeout))?
        .map_err(|e| format!("marking the slot done: {e}"))?;
    let lease = held.lease;
    drop(held);
    let _ = tokio::time::timeout(timeout, client.lease_revoke(lease)).await;
    if let Err(e) = clean(client, timeout).await {
        tracing::warn!("old slot keys not cleaned up: {e}");
    }
    Ok(())
}

/// What `slot`'s key says now (`None`: no key, or its lease expired).
pub async fn read(
    client: &mut Client,
    slot: DateTime<Utc>,
    timeout: Duration,
) -> Result<Option<SlotValue>, String> {
    let r = tokio::time::timeout(timeout, client.get(slot_key(slot), None))
        .await
        .map_err(|_| timed_out("a read of the slot key", timeout))?
        .map_err(|e| format!("reading the slot key: {e}"))?;
    Ok(r.kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// Deletes the slot keys older than the newest [`KEEP_SLOT_KEYS`].
async fn clean(client: &mut Client, timeout: Duration) -> Result<(), String> {
    let r = tokio::time::timeout(
        timeout,
        client.get(
            SLOT_PREFIX,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await
    .map_err(|_| timed_out("listing slot keys", timeout))?
    .map_err(|e| e.to_string())?;
    let mut keys: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    keys.sort();
    if keys.len() <= KEEP_SLOT_KEYS {
        return Ok(());
    }
    let first_kept = keys[keys.len() - KEEP_SLOT_KEYS].clone();
    tokio::time::timeout(
        timeout,
        client.delete(
            SLOT_PREFIX,
            Some(etcd_client::DeleteOptions::new().with_range(first_kept)),
        ),
    )
    .await
    .map_err(|_| timed_out("deleting old slot keys", timeout))?
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_uploader_rotates_and_every_node_agrees() {
        let ids = [30, 10, 20];
        let slots: Vec<DateTime<Utc>> = (0..30)
            .map(|i| DateTime::from_timestamp(1_800_000_000 + i * 3600, 0).unwrap())
            .collect();
        let picks: Vec<u64> = slots.iter().map(|s| preferred(*s, &ids).unwrap()).collect();
        for id in ids {
            assert!(picks.contains(&id), "{id} never preferred: {picks:?}");
        }
        // The order the IDs are given in changes nothing.
        let other: Vec<u64> = slots
            .iter()
            .map(|s| preferred(*s, &[20, 30, 10, 10]).unwrap())
            .collect();
        assert_eq!(picks, other);
        assert_eq!(preferred(slots[0], &[]), None);
        assert_eq!(slot_key(slots[0]), "/etcdguard/v1/slots/20270115T080000Z");
    }
}
