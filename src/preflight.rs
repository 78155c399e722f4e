//! The checks that touch files or the network before anything is attempted: where the local
//! etcd member is, whether the TLS material is usable, whether the bucket exists and takes
//! writes. `config check`, every backup and the daemon's start-up ask them here, so they ask
//! the same questions and give the same answers. `config.rs` stays pure parsing.

use tonic::transport::Channel;

use crate::clock;
use crate::config::{Config, EtcdConfig};
use crate::etcd::{self, MemberInfo, Phase, TlsError, TlsMaterial};
use crate::kubeadm::EtcdManifest;
use crate::records::Health;
use crate::store::remote::Remote;

/// Where and who the local member is, before talking to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: String,
    /// `--name` from the manifest, if it was read.
    pub manifest_name: Option<String>,
    /// `--quota-backend-bytes` from the manifest, if it was read and set.
    pub manifest_quota: Option<u64>,
    /// Where etcd's metrics are read for the pace: `etcd.metrics_url`, else the manifest's
    /// `--listen-metrics-urls` on loopback.
    pub metrics_url: Option<String>,
}

impl Target {
    /// The config field to fix when the endpoint cannot be found.
    pub fn config_field(config: &Config) -> &'static str {
        if config.etcd.endpoint.is_some() {
            "etcd.endpoint"
        } else {
            "etcd.manifest"
        }
    }
}

/// The endpoint to snapshot: `etcd.endpoint` when set, otherwise the loopback client URL of
/// the local member from the static pod manifest.
pub fn resolve_target(config: &Config) -> Result<Target, String> {
    let manifest = EtcdManifest::load(&config.etcd.manifest);
    let quota = |m: &EtcdManifest| {
        m.flag("quota-backend-bytes")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&q| q > 0)
    };
    let metrics_url = |m: Option<&EtcdManifest>| {
        config
            .etcd
            .metrics_url
            .clone()
            .or_else(|| m.and_then(EtcdManifest::local_metrics_url))
    };
    match (&config.etcd.endpoint, manifest) {
        (Some(ep), m) => Ok(Target {
            endpoint: ep.clone(),
            manifest_name: m
                .as_ref()
                .ok()
                .and_then(|m| m.member_name().map(str::to_string)),
            manifest_quota: m.as_ref().ok().and_then(quota),
            metrics_url: metrics_url(m.as_ref().ok()),
        }),
        (None, Ok(m)) => Ok(Target {
            endpoint: m.local_client_url().map_err(|e| e.to_string())?,
            manifest_name: m.member_name().map(str::to_string),
            manifest_quota: quota(&m),
            metrics_url: metrics_url(Some(&m)),
        }),
        (None, Err(e)) => Err(format!(
            "cannot find the local etcd endpoint: {e}; set etcd.endpoint in the config, or \
             etcd.manifest to the etcd static pod manifest"
        )),
    }
}

/// The CA, client certificate and key of `[etcd]`, read and checked now (by the clock the
/// TLS handshake itself uses).
pub fn etcd_tls(e: &EtcdConfig) -> Result<TlsMaterial, TlsError> {
    TlsMaterial::load(
        &e.ca_cert,
        &e.client_cert,
        &e.client_key,
        clock::machine_now(),
    )
}

/// What the local checks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// The etcd endpoint a backup would use, when it can be found.
    pub endpoint: Option<String>,
    /// What makes a backup fail: the config field to fix and the sentence.
    pub problems: Vec<(&'static str, String)>,
    /// What works but deserves attention (a certificate close to expiry, nothing ever deleted,
    /// TLS verification off).
    pub warnings: Vec<String>,
}

/// The checks that need no network: the TLS material, the local member's endpoint, and the
/// settings that deserve a warning.
pub fn local(config: &Config) -> Findings {
    let mut f = Findings::default();
    match etcd_tls(&config.etcd) {
        Ok(tls) => f.warnings.extend(tls.warnings),
        Err(err) => f.problems.push((err.config_field(), err.to_string())),
    }
    match resolve_target(config) {
        Ok(t) => f.endpoint = Some(t.endpoint),
        Err(msg) => f.problems.push((Target::config_field(config), msg)),
    }
    if config.local_storage.retention.keeps_forever() {
        f.warnings.push(format!(
            "local snapshots in {} are never deleted: neither local_storage.ttl nor \
             local_storage.keep limits them; watch the disk",
            config.local_storage.path.display()
        ));
    }
    for rc in &config.destinations {
        let t = &rc.table;
        if rc.insecure_skip_tls_verify {
            f.warnings.push(format!(
                "{t}.insecure_skip_tls_verify is set: the TLS certificate of {} is NOT verified",
                rc.endpoint.as_deref().unwrap_or("the endpoint")
            ));
        }
        if matches!(rc.kind, crate::config::Kind::Gcs { anonymous: true }) {
            f.warnings.push(format!(
                "{t}.anonymous is set: copies go to {} without any credentials",
                rc.endpoint.as_deref().unwrap_or("the endpoint")
            ));
        }
        if rc.retention.keeps_forever() {
            f.warnings.push(format!(
                "snapshots at destination {} are never deleted: neither {t}.ttl nor {t}.keep \
                 limits them",
                rc.name
            ));
        }
    }
    f
}

/// What one destination's check found.
#[derive(Debug, PartialEq, Eq)]
pub enum RemoteCheck {
    /// Credentials and TLS files read; the bucket was not asked.
    Opened,
    /// The bucket exists and is writable: the sentence says which, where and as whom.
    Probed(String),
}

/// What `etcdguard health` reports: the local member and its health, as a backup records it.
#[derive(Debug)]
pub struct EtcdHealth {
    pub endpoint: String,
    pub member: MemberInfo,
    pub health: Health,
}

/// Reaches the local member `target` names, as every backup does before it streams: the TLS
/// material read and checked (its warnings added to `warnings`, also when the rest fails), the
/// connection dialled, the member's status, identity and alarms read. Returns the connection
/// (the snapshot stream uses it) and what the member said; the error is one sentence naming
/// what to fix.
pub async fn reach_member(
    config: &Config,
    target: &Target,
    warnings: &mut Vec<String>,
) -> Result<(Channel, MemberInfo), String> {
    let e = &config.etcd;
    let ep = &target.endpoint;
    let tls = etcd_tls(e).map_err(|err| err.to_string())?;
    warnings.extend(tls.warnings.iter().cloned());
    let explain = |phase, err: &(dyn std::error::Error + 'static)| {
        etcd::explain_connect_error(ep, &e.ca_cert, &e.client_cert, phase, err)
    };
    let channel = etcd::dial(ep, &tls, e.dial_timeout)
        .await
        .map_err(|err| explain(Phase::Dial, err.as_ref()))?;
    let mut client = etcd::client_on(channel.clone())
        .await
        .map_err(|err| explain(Phase::Dial, err.as_ref()))?;
    let mut info = etcd::member_info(&mut client, e.dial_timeout)
        .await
        .map_err(|err| explain(Phase::FirstRequest, err.as_ref()))?;
    info.leader_raft_index = etcd::leader_raft_index(&info, &tls, e.dial_timeout).await;
    Ok((channel, info))
}

/// Asks the local member how it is (status, alarms), as a backup does before it streams. The
/// error is one sentence naming what to fix.
pub async fn etcd_health(config: &Config) -> Result<EtcdHealth, String> {
    let target = resolve_target(config)?;
    let mut warnings = Vec::new();
    let reached = reach_member(config, &target, &mut warnings).await;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let (_, member) = reached?;
    let health = health_of(&target, &member);
    Ok(EtcdHealth {
        endpoint: target.endpoint,
        member,
        health,
    })
}

/// The health a backup records for the member `info` describes (the manifest may give the
/// quota etcd < 3.6 does not report).
pub fn health_of(target: &Target, info: &MemberInfo) -> Health {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Health::assess(
        &info.alarms,
        info.alarms_error.as_deref(),
        n(info.db_size),
        n(info.db_size_in_use),
        n(info.db_size_quota),
        target.manifest_quota,
        info.is_learner,
        info.raft_index,
        info.raft_applied_index,
    )
    .with_leader(info.leader_raft_index)
}

/// Opens every destination (credentials, CA bundle, an `fs` destination's mount) and, with
/// `probe`, checks that each exists and is writable, all at once. One result per destination,
/// with its table (`remote_storage`, `destination.<name>`); each error is one sentence.
pub async fn remote(config: &Config, probe: bool) -> Vec<(String, Result<RemoteCheck, String>)> {
    let member = resolve_target(config).ok().and_then(|t| t.manifest_name);
    let member = member.as_deref().unwrap_or("-");
    let checks = config.destinations.iter().map(|rc| async move {
        let r = match Remote::open(rc, member) {
            Ok(r) => r,
            Err(e) => return (rc.table.clone(), Err(e)),
        };
        if !probe {
            return (rc.table.clone(), Ok(RemoteCheck::Opened));
        }
        let checked = r.probe().await.map(|()| {
            RemoteCheck::Probed(match r.kind() {
                "fs" => format!("{} {} is mounted and writable", rc.name, r.endpoint()),
                kind => format!(
                    "{} ({kind}): bucket {} at {} exists and is writable ({})",
                    rc.name,
                    r.bucket(),
                    r.endpoint(),
                    r.credentials().describe()
                ),
            })
        });
        (rc.table.clone(), checked)
    });
    futures_util::future::join_all(checks).await
}
