//! `per = "cluster"` end to end, at the one destination it is allowed with: the slot decided
//! before the stream starts ([`decide`]), mapped to the record's copies ([`copies_for`]),
//! marked done after the copy settled ([`SlotClaim::mark_done`]), and a pending covered copy
//! resolved later by a retry ([`resolve`]). The election primitives (the slot key, the
//! lease, the transaction) are `crate::cluster`'s.

use chrono::{DateTime, Utc};

use crate::cluster::{self, Claim, ClaimRequest, Claiming, Held, SlotValue, CLUSTER_NODE};
use crate::config::{Config, DestinationConfig};
use crate::records::{ClusterCopy, Record, RemoteCopy};
use crate::store::remote::{self, Remote};

/// How long a node waits before it looks again at a slot another node uploads.
pub fn wait(rc: &DestinationConfig) -> chrono::Duration {
    chrono::Duration::from_std(rc.cluster_lease).unwrap_or(chrono::Duration::seconds(15))
}

/// The bound on each request of the slot election.
pub fn timeout(config: &Config) -> std::time::Duration {
    config
        .etcd
        .dial_timeout
        .max(std::time::Duration::from_secs(5))
}

/// A slot this node holds while it uploads the slot's copy; marked done once the copy settled.
pub struct SlotClaim {
    held: Held,
    client: Box<etcd_client::Client>,
    timeout: std::time::Duration,
}

impl SlotClaim {
    /// The slot's copy is verified and has its sidecar: the slot is done. A failure only
    /// delays that: the lease expires, and another node finds the object and marks it.
    pub async fn mark_done(mut self) {
        if let Err(e) = cluster::mark_done(&mut self.client, self.held, self.timeout).await {
            tracing::warn!("the slot's copy is uploaded but not marked done: {e}");
        }
    }
}

/// What the nodes agreed for a scheduled slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This node claimed the slot: it uploads under `_cluster/`.
    Uploading { slot: DateTime<Utc> },
    /// Another node claimed it: its object, done or still uploading.
    Covered {
        slot: DateTime<Utc>,
        value: SlotValue,
    },
    /// No transaction was possible: this node's own copy, and why.
    Fallback { slot: DateTime<Utc>, why: String },
}

impl Decision {
    /// The node prefix this node's copy goes under (`None`: nowhere, another node's covers it).
    pub fn uploads_under<'a>(&self, me: &'a str) -> Option<&'a str> {
        match self {
            Decision::Uploading { .. } => Some(CLUSTER_NODE),
            Decision::Covered { .. } => None,
            Decision::Fallback { .. } => Some(me),
        }
    }
}

/// A decision, and the claim when this node won the slot.
pub struct Decided {
    pub decision: Decision,
    pub claim: Option<SlotClaim>,
}

/// Claims `slot` for this member (`me`, `my_id`) to upload `file_name`, or learns who has it.
pub async fn decide(
    channel: &tonic::transport::Channel,
    config: &Config,
    me: &str,
    my_id: u64,
    slot: DateTime<Utc>,
    file_name: &str,
) -> Decided {
    let rc = config.primary().expect("per cluster needs a destination");
    let timeout = timeout(config);
    let fallback = |why: String| {
        tracing::warn!(slot = %crate::records::rfc3339(slot), "no agreement through etcd ({why}): uploading this node's own copy");
        Decided {
            decision: Decision::Fallback { slot, why },
            claim: None,
        }
    };
    let mut client = match crate::etcd::client_on(channel.clone()).await {
        Ok(c) => c,
        Err(e) => return fallback(format!("no etcd client: {e}")),
    };
    let ids: Vec<u64> = match crate::etcd::member_list(&mut client, timeout).await {
        Ok(list) => list.iter().map(|m| m.id).collect(),
        Err(e) => return fallback(cluster::refused("the member list", &e)),
    };
    let object = remote::object_key(rc, CLUSTER_NODE, file_name, config.encryption.as_ref());
    let request = ClaimRequest {
        slot,
        me,
        my_id,
        members: &ids,
        object: &object,
        ttl: rc.cluster_lease,
        timeout,
        claiming: Claiming::Scheduled,
    };
    match cluster::claim(&mut client, &request).await {
        Claim::Won(held) => {
            tracing::info!(slot = %crate::records::rfc3339(slot), "this node uploads the cluster's copy of the slot");
            Decided {
                decision: Decision::Uploading { slot },
                claim: Some(SlotClaim {
                    held,
                    client: Box::new(client),
                    timeout,
                }),
            }
        }
        Claim::Taken(value) => {
            tracing::info!(slot = %crate::records::rfc3339(slot), uploader = %value.member, "another node uploads the cluster's copy of the slot");
            Decided {
                decision: Decision::Covered { slot, value },
                claim: None,
            }
        }
        Claim::NoQuorum(why) => fallback(why),
    }
}

/// What a decision means for the record's copies: the cluster facts every copy this node
/// made carries, or, when another node covers the slot, the copy that says so (covered, or
/// pending until the slot's key says done). Pure.
pub fn copies_for(
    decision: &Decision,
    rc: &DestinationConfig,
    me: &str,
    now: DateTime<Utc>,
) -> (Option<ClusterCopy>, Option<RemoteCopy>) {
    match decision {
        Decision::Uploading { slot } => (
            Some(ClusterCopy {
                slot: *slot,
                uploader: Some(me.to_string()),
                fallback: None,
            }),
            None,
        ),
        Decision::Fallback { slot, why } => (
            Some(ClusterCopy {
                slot: *slot,
                uploader: Some(me.to_string()),
                fallback: Some(why.clone()),
            }),
            None,
        ),
        Decision::Covered { slot, value } => {
            let location = remote::location(rc, &value.object);
            let cluster = ClusterCopy {
                slot: *slot,
                uploader: Some(value.member.clone()),
                fallback: None,
            };
            let mut copy =
                RemoteCopy::covered_pending(&rc.name, location.clone(), now, cluster, wait(rc));
            if value.is_done() {
                copy.covered(now, location, value.member.clone());
            }
            (None, Some(copy))
        }
    }
}

/// How a retry changes a cluster copy's facts.
pub enum ClusterChange {
    /// This node took the slot over.
    TookOver(String),
    /// No agreement was possible: this node's own copy.
    Fallback(String),
}

impl ClusterChange {
    pub fn apply(&self, c: &mut ClusterCopy) {
        match self {
            ClusterChange::TookOver(me) => {
                c.uploader = Some(me.clone());
                c.fallback = None;
            }
            ClusterChange::Fallback(why) => c.fallback = Some(why.clone()),
        }
    }
}

/// What a retry does with a pending copy of a slot another node claimed.
pub enum Resolution {
    /// The slot's copy is another node's, confirmed.
    Covered {
        location: String,
        uploader: String,
    },
    /// The slot's uploader is still at it.
    Waiting(String),
    /// This node uploads its file under `under`, its cluster facts changed so; `claim` is the
    /// slot it took over (marked done once the copy settled).
    Upload {
        under: String,
        change: ClusterChange,
        claim: Option<SlotClaim>,
    },
    Failed(String),
}

/// A pending copy of a cluster slot another node claimed: confirmed when the slot's key says
/// done; still waited for while the uploader holds its lease; taken over when the key is gone
/// (the uploader died): its object adopted if it made it to the bucket, else this node's file
/// uploaded under the cluster's prefix. Without quorum, this node's own copy.
pub async fn resolve(config: &Config, rc: &DestinationConfig, rec: &Record) -> Resolution {
    let me = rec.member.as_ref().map_or("", |m| m.name.as_str());
    let fallback = |why: String| {
        tracing::warn!(
            "no agreement through etcd on the slot ({why}): uploading this node's own copy"
        );
        Resolution::Upload {
            under: me.to_string(),
            change: ClusterChange::Fallback(why),
            claim: None,
        }
    };
    let Some(slot) = rec
        .copy(&rc.name)
        .and_then(|c| c.cluster.as_ref())
        .map(|c| c.slot)
    else {
        return Resolution::Failed("the record names no cluster slot".into());
    };
    let mut client = match connect_local(config).await {
        Ok(c) => c,
        Err(e) => return fallback(e),
    };
    let timeout = timeout(config);
    match cluster::read(&mut client, slot, timeout).await {
        Err(e) => fallback(e),
        Ok(Some(v)) if v.is_done() => Resolution::Covered {
            location: remote::location(rc, &v.object),
            uploader: v.member,
        },
        Ok(Some(v)) => {
            Resolution::Waiting(format!("{} is still uploading this slot's copy", v.member))
        }
        Ok(None) => take_over(config, rc, rec, slot, client).await,
    }
}

/// The slot's key is gone (its uploader died): claim it at once, then adopt the uploader's
/// object if it is in the bucket, or upload this node's file.
async fn take_over(
    config: &Config,
    rc: &DestinationConfig,
    rec: &Record,
    slot: DateTime<Utc>,
    mut client: etcd_client::Client,
) -> Resolution {
    let me = rec.member.as_ref().map_or("", |m| m.name.as_str());
    let my_id = rec
        .member
        .as_ref()
        .and_then(|m| m.id.as_deref())
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    let Some(object) = own_object_key(config, rc, rec) else {
        return Resolution::Failed("the record names no local file".into());
    };
    let timeout = timeout(config);
    let request = ClaimRequest {
        slot,
        me,
        my_id,
        members: &[],
        object: &object,
        ttl: rc.cluster_lease,
        timeout,
        claiming: Claiming::TakeOver,
    };
    let mut held = match cluster::claim(&mut client, &request).await {
        Claim::Taken(v) if v.is_done() => {
            return Resolution::Covered {
                location: remote::location(rc, &v.object),
                uploader: v.member,
            }
        }
        Claim::Taken(v) => {
            return Resolution::Waiting(format!("{} took this slot over and uploads it", v.member))
        }
        Claim::NoQuorum(why) => {
            tracing::warn!(
                "no agreement through etcd on the slot ({why}): uploading this node's own copy"
            );
            return Resolution::Upload {
                under: me.to_string(),
                change: ClusterChange::Fallback(why),
                claim: None,
            };
        }
        Claim::Won(held) => held,
    };
    // The uploader may have finished its object and died before marking it.
    let copy = rec.copy(&rc.name).expect("a cluster copy");
    let theirs = copy
        .location
        .strip_prefix(&remote::location(rc, ""))
        .unwrap_or(&copy.location)
        .to_string();
    let uploader = copy
        .cluster
        .as_ref()
        .and_then(|cl| cl.uploader.clone())
        .unwrap_or_default();
    let found = match Remote::open_shared(rc) {
        Ok(r) => r.exists(&theirs).await.unwrap_or(false),
        Err(_) => false,
    };
    if found && !uploader.is_empty() {
        held.adopt(&uploader, &theirs);
        if let Err(e) = cluster::mark_done(&mut client, held, timeout).await {
            return Resolution::Failed(e);
        }
        return Resolution::Covered {
            location: remote::location(rc, &theirs),
            uploader,
        };
    }
    tracing::info!(slot = %crate::records::rfc3339(slot), "the slot's uploader is gone: this node takes the slot over");
    Resolution::Upload {
        under: CLUSTER_NODE.to_string(),
        change: ClusterChange::TookOver(me.to_string()),
        claim: Some(SlotClaim {
            held,
            client: Box::new(client),
            timeout,
        }),
    }
}

/// The key this node's local file of `rec` gets under the cluster's prefix: a sealed local
/// file goes as it is, under its own name; a plain one is sealed as `[encryption]` says now.
fn own_object_key(config: &Config, rc: &DestinationConfig, rec: &Record) -> Option<String> {
    let (Some(name), Some(local)) = (&rec.file_name, &rec.local) else {
        return None;
    };
    Some(match &local.sealed {
        Some(_) => {
            let own = local
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone());
            format!("{}{own}", remote::node_prefix(&rc.prefix, CLUSTER_NODE))
        }
        None => remote::object_key(rc, CLUSTER_NODE, name, config.encryption.as_ref()),
    })
}

/// A client of the local member, as a backup reaches it.
async fn connect_local(config: &Config) -> Result<etcd_client::Client, String> {
    let target = crate::preflight::resolve_target(config)?;
    let tls = crate::preflight::etcd_tls(&config.etcd).map_err(|e| e.to_string())?;
    crate::etcd::connect(&target.endpoint, &tls, config.etcd.dial_timeout)
        .await
        .map_err(|e| format!("cannot reach etcd at {}: {e}", target.endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::SlotState;
    use crate::records::RemoteState;

    fn rc() -> DestinationConfig {
        let config = crate::config::parse(
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nper = \"cluster\"\n",
            None,
        )
        .expect("config parses");
        config.destinations[0].clone()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn value(state: SlotState) -> SlotValue {
        SlotValue {
            member: "cp2".into(),
            object: "_cluster/snapshot-etcd-20261207-010000-cp2.db".into(),
            state,
            at: at("2026-12-07T01:00:01Z"),
        }
    }

    #[test]
    fn a_won_slot_makes_this_node_the_uploader_of_its_copies() {
        let slot = at("2026-12-07T01:00:00Z");
        let (cluster, covered) = copies_for(&Decision::Uploading { slot }, &rc(), "cp1", slot);
        assert_eq!(
            cluster,
            Some(ClusterCopy {
                slot,
                uploader: Some("cp1".into()),
                fallback: None
            })
        );
        assert!(covered.is_none());
        assert_eq!(
            Decision::Uploading { slot }.uploads_under("cp1"),
            Some(CLUSTER_NODE)
        );
    }

    #[test]
    fn without_agreement_the_copy_is_this_nodes_own_and_says_why() {
        let slot = at("2026-12-07T01:00:00Z");
        let d = Decision::Fallback {
            slot,
            why: "etcd has no quorum".into(),
        };
        let (cluster, covered) = copies_for(&d, &rc(), "cp1", slot);
        let cluster = cluster.unwrap();
        assert_eq!(cluster.fallback.as_deref(), Some("etcd has no quorum"));
        assert_eq!(cluster.uploader.as_deref(), Some("cp1"));
        assert!(covered.is_none());
        assert_eq!(d.uploads_under("cp1"), Some("cp1"));
    }

    #[test]
    fn a_slot_another_node_uploads_is_pending_until_done_then_covered() {
        let slot = at("2026-12-07T01:00:00Z");
        let now = at("2026-12-07T01:00:05Z");
        let rc = rc();
        let uploading = Decision::Covered {
            slot,
            value: value(SlotState::Uploading),
        };
        assert_eq!(uploading.uploads_under("cp1"), None);
        let (cluster, copy) = copies_for(&uploading, &rc, "cp1", now);
        assert!(cluster.is_none());
        let copy = copy.unwrap();
        assert_eq!(copy.state, RemoteState::Pending);
        assert!(copy.waits_for_cluster());
        assert_eq!(copy.next_attempt_at, Some(now + wait(&rc)));
        assert_eq!(
            copy.location,
            "s3://b/_cluster/snapshot-etcd-20261207-010000-cp2.db"
        );
        assert_eq!(copy.attempts, 0);

        let done = Decision::Covered {
            slot,
            value: value(SlotState::Done),
        };
        let (_, copy) = copies_for(&done, &rc, "cp1", now);
        let copy = copy.unwrap();
        assert_eq!(copy.state, RemoteState::Covered);
        assert_eq!(
            copy.cluster.as_ref().unwrap().uploader.as_deref(),
            Some("cp2")
        );
        assert!(
            !copy.may_exist(),
            "nothing of this node's is in the bucket for it"
        );
    }

    #[test]
    fn a_retry_records_a_takeover_or_a_fallback() {
        let mut c = ClusterCopy {
            slot: at("2026-12-07T01:00:00Z"),
            uploader: Some("cp2".into()),
            fallback: Some("old".into()),
        };
        ClusterChange::TookOver("cp1".into()).apply(&mut c);
        assert_eq!(c.uploader.as_deref(), Some("cp1"));
        assert!(c.fallback.is_none());
        ClusterChange::Fallback("no quorum".into()).apply(&mut c);
        assert_eq!(c.fallback.as_deref(), Some("no quorum"));
    }
}
