//! One attempt, from finding the member to a verified snapshot and its remote copy: resolve
//! the local member, check the TLS material, ask etcd who it is (and refuse another member),
//! pick the file name, then hand the bytes to `stream`.

use chrono::{DateTime, Utc};

use super::stream::{self, RemoteResult, Targets, Uploads};
use crate::config::Config;
use crate::copies::cluster::{self, Decided};
use crate::etcd::{MemberInfo, StreamLimits};
use crate::pacing::Pacer;
use crate::preflight::{self, Target};
use crate::records::pacing::Pacing;
use crate::records::{Member, Snapshot};
use crate::store::local::{snapshot_file_name, LocalStore};

/// What a successful attempt made.
pub(super) struct Success {
    pub snapshot: Snapshot,
    /// One per destination; empty without any, or when another node covers the slot.
    pub remotes: Vec<RemoteResult>,
    /// `per = "cluster"` for a scheduled slot: what the nodes agreed.
    pub cluster: Option<Decided>,
}

/// Why an attempt failed, with what was known of the member by then.
pub(super) struct Failure {
    pub reason: String,
    pub member: Option<Member>,
    pub etcd_version: Option<String>,
}

impl Failure {
    pub fn new(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            member: None,
            etcd_version: None,
        }
    }
}

/// Prepares the snapshot directory: created private, partial files of a dead run removed.
fn prepare_store(store: &LocalStore, warnings: &mut Vec<String>) -> Result<(), String> {
    match store.ensure() {
        Ok(Some(w)) => warnings.push(w),
        Ok(None) => {}
        Err(e) => {
            return Err(format!(
                "cannot use snapshot directory {}: {e}",
                store.dir().display()
            ))
        }
    }
    match store.remove_stale_temps() {
        Ok(removed) => {
            for p in removed {
                tracing::warn!(path = %p.display(), "removed a partial snapshot left by an interrupted run");
            }
        }
        Err(e) => warnings.push(format!(
            "cannot clean partial snapshots in {}: {e}",
            store.dir().display()
        )),
    }
    Ok(())
}

/// The member as etcd names itself (the manifest's name, or its ID, when it does not).
fn member_of(target: &Target, info: &MemberInfo) -> Member {
    let name = if !info.name.is_empty() {
        info.name.clone()
    } else {
        target
            .manifest_name
            .clone()
            .unwrap_or_else(|| format!("{:x}", info.id))
    };
    Member {
        name,
        id: Some(format!("{:x}", info.id)),
        endpoint: target.endpoint.clone(),
    }
}

/// One attempt; `slot` is the schedule's slot it serves (`None` for a backup by hand).
pub(super) async fn attempt(
    config: &Config,
    store: &LocalStore,
    slot: Option<DateTime<Utc>>,
    warnings: &mut Vec<String>,
) -> Result<Success, Failure> {
    let target = preflight::resolve_target(config).map_err(Failure::new)?;
    let ep = target.endpoint.clone();
    // etcd's latency before the stream is the baseline: the pacer reads it meanwhile.
    let pacer = Pacer::start(
        config.etcd.pacing,
        target.metrics_url.as_deref(),
        config.etcd.rate_limit,
    )
    .await;
    // Until etcd answers, what the manifest says is all we know about the member.
    let assumed = target.manifest_name.clone().map(|name| Member {
        name,
        id: None,
        endpoint: ep.clone(),
    });
    let early = |reason: String| Failure {
        reason,
        member: assumed.clone(),
        etcd_version: None,
    };
    prepare_store(store, warnings).map_err(early)?;

    let e = &config.etcd;
    let (channel, info) = preflight::reach_member(config, &target, warnings)
        .await
        .map_err(early)?;
    let member = member_of(&target, &info);
    let health = preflight::health_of(&target, &info);
    for w in &health.warnings {
        tracing::warn!("{w}");
    }
    let fail = |reason: String| Failure {
        reason,
        member: Some(member.clone()),
        etcd_version: Some(info.version.clone()),
    };
    same_member(config, &target, &info).map_err(fail)?;
    let (at, file_name) = free_file_name(store, &member.name).await;
    let (temp, file) = store.create_temp(&file_name).map_err(|err| {
        fail(format!(
            "cannot create a snapshot file in {}: {err}",
            store.dir().display()
        ))
    })?;
    crate::crashpoint::here("backup:temp-created");

    // `per = "cluster"` is allowed with one destination only (config validation).
    let sealing = config.encryption.as_ref();
    let cluster = match (config.primary(), slot) {
        (Some(rc), Some(slot)) if rc.per_cluster => {
            Some(cluster::decide(&channel, config, &member.name, info.id, slot, &file_name).await)
        }
        _ => None,
    };
    // Where this node's copy goes: the cluster's prefix, its own, or nowhere (covered).
    let uploader = match &cluster {
        Some(d) => d.decision.uploads_under(&member.name),
        None => Some(member.name.as_str()),
    };
    let mut uploads = match uploader {
        Some(who) => Uploads::start(&config.destinations, sealing, who, &file_name),
        None => Uploads::start(&[], sealing, &member.name, &file_name),
    };
    let expected = u64::try_from(info.db_size).ok().filter(|&n| n > 0);
    let to = Targets {
        store,
        temp,
        file,
        file_name: &file_name,
        feeds: uploads.feeds(),
        expected,
        seal_local: sealing.filter(|e| e.encrypt_local),
        gate: pacer.gate(e.timeout, expected),
    };
    let limits = StreamLimits {
        overall: e.timeout,
        stall: e.stall_timeout,
    };
    let published = match stream::stream_and_publish(&channel, limits, to, &ep, &fail).await {
        Ok(v) => v,
        Err(f) => {
            uploads.abort().await;
            return Err(f);
        }
    };
    let pacing = pacer.finish();
    let remotes = match uploader {
        Some(who) => uploads.finish(sealing, who, &file_name).await,
        None => Vec::new(),
    };
    Ok(Success {
        snapshot: snapshot_of(published, at, file_name, member, info, health, pacing),
        remotes,
        cluster,
    })
}

/// Refuses a member other than the one the manifest names for this node.
fn same_member(config: &Config, target: &Target, info: &MemberInfo) -> Result<(), String> {
    match &target.manifest_name {
        Some(manifest_name) if !info.name.is_empty() && manifest_name != &info.name => {
            Err(format!(
                "etcd at {} is member {:?}, but the manifest {} names this node's member \
                 {manifest_name:?}; refusing to back up another member",
                target.endpoint,
                info.name,
                config.etcd.manifest.display()
            ))
        }
        _ => Ok(()),
    }
}

/// One file name per second: waits out a name that is already taken (back-to-back runs).
async fn free_file_name(store: &LocalStore, member: &str) -> (DateTime<Utc>, String) {
    loop {
        let at = crate::clock::now();
        let name = snapshot_file_name(at, member);
        if !store.path_of(&name).exists() {
            return (at, name);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What the record says of a published snapshot.
fn snapshot_of(
    published: stream::Published,
    at: DateTime<Utc>,
    file_name: String,
    member: Member,
    info: MemberInfo,
    health: crate::records::Health,
    pacing: Pacing,
) -> Snapshot {
    let stream::Published {
        streamed,
        status,
        checked_from,
        path,
        sealed,
    } = published;
    Snapshot {
        at,
        file_name,
        path,
        member,
        etcd_version: info.version,
        storage_version: Some(info.storage_version).filter(|v| !v.is_empty()),
        snapshot_version: Some(streamed.version).filter(|v| !v.is_empty()),
        // The snapshot's own revision, as `etcdutl snapshot status` reports it.
        revision: status.revision,
        size_bytes: streamed.file_len,
        sha256: hex::encode(streamed.file_sha256),
        checked_from,
        local_sealed: sealed,
        health: Some(health),
        pacing: Some(pacing),
    }
}
