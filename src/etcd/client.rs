//! The connection to the local etcd member and its identity.

use std::error::Error as StdError;
use std::time::Duration;

use etcd_client::{Certificate, Client, Identity, TlsOptions};
use tonic::transport::{Channel, Endpoint};

use super::tls::TlsMaterial;

/// Who answered: recorded with every backup.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: u64,
    pub cluster_id: u64,
    /// Empty when the member list could not be read; the caller falls back to the manifest.
    pub name: String,
    pub version: String,
    /// The member's storage version (etcd ≥ 3.6; empty before).
    pub storage_version: String,
    pub revision: i64,
    /// The size of the member's database file: about what a snapshot of it streams.
    pub db_size: i64,
    /// The bytes of it in use (`raftUsedDbSize`, 3.4+).
    pub db_size_in_use: i64,
    /// The backend quota etcd reports (3.6+; 0 before).
    pub db_size_quota: i64,
    pub is_learner: bool,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    /// The leader's member ID (0: no leader).
    pub leader: u64,
    /// The leader's client URLs, from the member list (empty when this member leads).
    pub leader_urls: Vec<String>,
    /// The leader's raft index (`leader_raft_index`), when it was asked.
    pub leader_raft_index: Option<u64>,
    /// The active alarms of the cluster: (member id, `NOSPACE` | `CORRUPT`). Empty when the
    /// alarm list could not be read (that is said in `alarms_error`).
    pub alarms: Vec<(u64, String)>,
    pub alarms_error: Option<String>,
}

/// Dials `endpoint` eagerly (TCP + TLS) so that a refused connection or a bad certificate is
/// reported now, with its cause, rather than as a timeout on the first request. HTTP/2
/// keep-alive pings are sent only while a stream is open: etcd closes connections that ping
/// while idle (`too_many_pings`).
pub async fn connect(
    endpoint: &str,
    tls: &TlsMaterial,
    dial_timeout: Duration,
) -> Result<Client, Box<dyn StdError + Send + Sync>> {
    client_on(dial(endpoint, tls, dial_timeout).await?).await
}

/// The etcd client on a connection [`dial`] made.
pub async fn client_on(channel: Channel) -> Result<Client, Box<dyn StdError + Send + Sync>> {
    Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?)
}

/// The connection [`connect`] makes, for calls made without etcd-client (the snapshot
/// stream, see [`super::stream_snapshot`]).
pub async fn dial(
    endpoint: &str,
    tls: &TlsMaterial,
    dial_timeout: Duration,
) -> Result<Channel, Box<dyn StdError + Send + Sync>> {
    let tls_options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    let endpoint = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(tls_options)?
        .connect_timeout(dial_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(false);
    // The connect timeout bounds only the TCP connect: a server that accepts and never
    // answers would hold the TLS handshake forever. The whole dial gets the bound.
    match tokio::time::timeout(dial_timeout, endpoint.connect()).await {
        Ok(channel) => Ok(channel?),
        Err(_) => Err(format!(
            "the connection was accepted but no TLS handshake completed within \
             {dial_timeout:?} (etcd.dial_timeout)"
        )
        .into()),
    }
}

/// Status and membership of the member behind `client`. The member list is read serializably
/// (no quorum needed): a member that lost quorum is exactly the one worth backing up.
pub async fn member_info(
    client: &mut Client,
    rpc_timeout: Duration,
) -> Result<MemberInfo, Box<dyn StdError + Send + Sync>> {
    let status = tokio::time::timeout(rpc_timeout, client.status())
        .await
        .map_err(|_| format!("no answer to a status request within {rpc_timeout:?}"))??;
    let header = status
        .header()
        .ok_or("etcd's status response carries no header")?;
    let id = header.member_id();
    let cluster_id = header.cluster_id();
    let revision = header.revision();
    let leader = status.leader();
    let (name, leader_urls) = match tokio::time::timeout(rpc_timeout, client.member_list()).await {
        Ok(Ok(list)) => (
            list.members()
                .iter()
                .find(|m| m.id() == id)
                .map(|m| m.name().to_string())
                .unwrap_or_default(),
            list.members()
                .iter()
                .find(|m| m.id() == leader && leader != id)
                .map(|m| m.client_urls().to_vec())
                .unwrap_or_default(),
        ),
        _ => (String::new(), Vec::new()),
    };
    let alarm_list = tokio::time::timeout(
        rpc_timeout,
        client.alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        ),
    )
    .await;
    let (alarms, alarms_error) = match alarm_list {
        Ok(Ok(r)) => (
            r.alarms()
                .iter()
                .filter(|a| a.alarm() != etcd_client::AlarmType::None)
                .map(|a| (a.member_id(), alarm_name(a.alarm())))
                .collect(),
            None,
        ),
        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
        Err(_) => (
            Vec::new(),
            Some(format!("no answer within {rpc_timeout:?}")),
        ),
    };
    Ok(MemberInfo {
        id,
        cluster_id,
        name,
        version: status.version().to_string(),
        storage_version: status.storage_version().to_string(),
        revision,
        db_size: status.db_size(),
        db_size_in_use: status.raft_used_db_size(),
        db_size_quota: status.db_size_quota(),
        is_learner: status.is_learner(),
        raft_index: status.raft_index(),
        raft_applied_index: status.raft_applied_index(),
        leader,
        leader_urls,
        leader_raft_index: None,
        alarms,
        alarms_error,
    })
}

/// The leader's raft index, asked over its first client URL with this member's TLS material
/// (the member itself when it leads). `None` when there is no leader or it does not answer.
pub async fn leader_raft_index(
    info: &MemberInfo,
    tls: &TlsMaterial,
    rpc_timeout: Duration,
) -> Option<u64> {
    if info.leader == 0 {
        return None;
    }
    if info.leader == info.id {
        return Some(info.raft_index);
    }
    let url = info.leader_urls.first()?;
    let asked = async {
        let mut c = connect(url, tls, rpc_timeout).await.ok()?;
        let s = tokio::time::timeout(rpc_timeout, c.status())
            .await
            .ok()?
            .ok()?;
        Some(s.raft_index())
    };
    let got = asked.await;
    if got.is_none() {
        tracing::info!(leader = %url, "the leader's raft index could not be read; the lag against it is not known");
    }
    got
}

/// etcd's `HashKV` at `revision` (the newest when 0): the CRC-32C over the `key` bucket's
/// revisions up to it, and the compaction revision the hash began at.
pub async fn hash_kv(
    client: &mut Client,
    revision: i64,
    rpc_timeout: Duration,
) -> Result<(u32, i64), Box<dyn StdError + Send + Sync>> {
    let r = tokio::time::timeout(rpc_timeout, client.hash_kv(revision))
        .await
        .map_err(|_| format!("no answer to a hashkv request within {rpc_timeout:?}"))??;
    Ok((r.hash(), r.compact_version()))
}

fn alarm_name(a: etcd_client::AlarmType) -> String {
    match a {
        etcd_client::AlarmType::Nospace => "NOSPACE".into(),
        etcd_client::AlarmType::Corrupt => "CORRUPT".into(),
        etcd_client::AlarmType::None => "NONE".into(),
    }
}

/// One member as the member list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// The member list, read serializably (answered by this member alone).
pub async fn member_list(
    client: &mut Client,
    rpc_timeout: Duration,
) -> Result<Vec<ListedMember>, Box<dyn StdError + Send + Sync>> {
    let list = tokio::time::timeout(rpc_timeout, client.member_list())
        .await
        .map_err(|_| format!("no answer to a member list request within {rpc_timeout:?}"))??;
    Ok(list
        .members()
        .iter()
        .map(|m| ListedMember {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
        })
        .collect())
}

/// True when a linearizable read succeeds within `rpc_timeout`: the cluster has a leader and
/// quorum behind this member.
pub async fn has_quorum(client: &mut Client, rpc_timeout: Duration) -> bool {
    let opts = etcd_client::GetOptions::new()
        .with_limit(1)
        .with_keys_only();
    matches!(
        tokio::time::timeout(rpc_timeout, client.get("\0", Some(opts))).await,
        Ok(Ok(_))
    )
}

/// Where in the conversation an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect and TLS handshake.
    Dial,
    /// The first request on a connection whose handshake succeeded.
    FirstRequest,
}

/// Turns a connection or request error into one sentence an operator can act on: what failed,
/// where, and the likely fix. Falls back to the full cause chain.
pub fn explain_connect_error(
    endpoint: &str,
    ca_cert: &std::path::Path,
    client_cert: &std::path::Path,
    phase: Phase,
    err: &(dyn StdError + 'static),
) -> String {
    let mut chain = Vec::new();
    let mut refused = false;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        let s = e.to_string();
        if chain.last() != Some(&s) {
            chain.push(s);
        }
        cur = e.source();
    }
    let text = chain.join(": ");
    let has = |needle: &str| text.contains(needle);
    if refused || has("Connection refused") {
        format!(
            "etcd at {endpoint} refused the connection (is etcd running, and is this its \
             client URL?)"
        )
    } else if has("UnknownIssuer") {
        format!(
            "etcd at {endpoint} presented a server certificate that is not signed by the CA in \
             {} (is etcd.ca_cert the etcd CA?)",
            ca_cert.display()
        )
    } else if has("NotValidForName") || has("NotValidForNameContext") {
        format!(
            "the server certificate of etcd at {endpoint} is not valid for that address \
             (use an address listed in its subject alternative names)"
        )
    } else if has("certificate expired") || has("CertificateExpired") {
        format!(
            "etcd at {endpoint} rejected the client certificate {} as expired; renew it \
             (kubeadm: `kubeadm certs renew etcd-healthcheck-client`)",
            client_cert.display()
        )
    } else if has("BadCertificate")
        || has("CertificateRequired")
        || has("UnknownCA")
        || has("bad certificate")
        || has("unknown certificate authority")
    {
        format!(
            "etcd at {endpoint} rejected the client certificate {} ({text}); it must be signed \
             by the etcd CA",
            client_cert.display()
        )
    } else if phase == Phase::FirstRequest
        && (has("connection closed")
            || has("broken pipe")
            || has("BrokenPipe")
            || has("Connection reset")
            || has("connection was not ready"))
    {
        // TLS 1.3: the server checks the client certificate after the client has finished
        // its side of the handshake, and the alert it sends is lost by the HTTP/2 layer
        // (which, depending on timing, reports a closed or a never-ready connection).
        format!(
            "etcd at {endpoint} closed the connection right after the TLS handshake: it most \
             likely rejected the client certificate {} (not signed by the etcd CA, or not a \
             client certificate); etcd's log says why",
            client_cert.display()
        )
    } else if has("timed out") || has("deadline") {
        format!("no answer from etcd at {endpoint} in time ({text})")
    } else {
        format!("cannot talk to etcd at {endpoint}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn explain(phase: Phase, text: &str) -> String {
        let err = std::io::Error::other(text.to_string());
        explain_connect_error(
            "https://127.0.0.1:2379",
            Path::new("pki/etcd/ca.crt"),
            Path::new("pki/etcd/client.crt"),
            phase,
            &err,
        )
    }

    #[test]
    fn connection_errors_become_one_actionable_sentence() {
        let cases = [
            (
                Phase::Dial,
                "invalid peer certificate: UnknownIssuer",
                "not signed by the CA in pki/etcd/ca.crt",
            ),
            (
                Phase::Dial,
                "received fatal alert: CertificateExpired",
                "as expired; renew it",
            ),
            (
                Phase::Dial,
                "received fatal alert: BadCertificate",
                "must be signed by the etcd CA",
            ),
            (
                Phase::Dial,
                "tcp connect error: Connection refused (os error 111)",
                "refused the connection",
            ),
            // A rejected client certificate under TLS 1.3 shows up only on the first request,
            // as a closed or never-ready connection depending on timing.
            (
                Phase::FirstRequest,
                "hyper::Error(Canceled, \"connection was not ready\")",
                "most likely rejected the client certificate pki/etcd/client.crt",
            ),
            (
                Phase::FirstRequest,
                "connection closed before message completed",
                "most likely rejected",
            ),
            (
                Phase::Dial,
                "connection was not ready",
                "cannot talk to etcd at https://127.0.0.1:2379",
            ),
            (
                Phase::FirstRequest,
                "deadline has elapsed",
                "no answer from etcd",
            ),
        ];
        for (phase, text, want) in cases {
            let got = explain(phase, text);
            assert!(got.contains(want), "{phase:?} {text:?}: {got}");
        }
    }
}
