//! Waiting on the node: for ports to close and locks to be released, and for a member to
//! answer with the identity and revision it must have.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::etcd::{self, TlsMaterial};

/// How long one question to a live etcd may take.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until `f` finds nothing wrong, and still nothing a second later (a process that is
/// shutting down closes its ports before it is gone).
pub(super) fn wait_until(
    timeout: Duration,
    mut f: impl FnMut() -> Vec<String>,
) -> Result<(), Vec<String>> {
    let start = Instant::now();
    let mut clean_since: Option<Instant> = None;
    loop {
        let why = f();
        if why.is_empty() {
            let since = *clean_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) || timeout.is_zero() {
                return Ok(());
            }
        } else {
            clean_since = None;
            if start.elapsed() > timeout {
                return Err(why);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The port kube-apiserver listens on, from its manifest (6443 when it does not say).
pub(super) fn apiserver_ports(path: &Path) -> Vec<u16> {
    let port = std::fs::read_to_string(path).ok().and_then(|t| {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&t).ok()?;
        let c = v.get("spec")?.get("containers")?.as_sequence()?.first()?;
        c.get("command")?
            .as_sequence()?
            .iter()
            .filter_map(|x| x.as_str())
            .find_map(|f| {
                f.strip_prefix("--secure-port=")
                    .and_then(|p| p.parse().ok())
            })
    });
    vec![port.unwrap_or(6443)]
}

/// What the restored (or rolled-back) member must answer.
pub(super) struct Expect {
    pub(super) member_id: Option<u64>,
    pub(super) cluster_id: Option<u64>,
    /// The revision the restored data starts at: the member answers with it or above (the
    /// members of a multi-member restore that come back first put their API servers back,
    /// which write at once; the new member and cluster IDs already rule out old data).
    pub(super) revision: Option<i64>,
    pub(super) quorum: bool,
}

/// Waits until the etcd at `endpoint` answers as `expect` says; a wrong identity or revision
/// fails at once (it will not fix itself).
pub(super) async fn wait_healthy(
    endpoint: &str,
    tls: &TlsMaterial,
    expect: &Expect,
    timeout: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < timeout {
        if let Ok(mut c) = etcd::connect(endpoint, tls, PROBE_TIMEOUT).await {
            match etcd::member_info(&mut c, PROBE_TIMEOUT).await {
                Ok(info) => {
                    let mut bad = Vec::new();
                    if expect.member_id.is_some_and(|m| m != info.id) {
                        bad.push(format!(
                            "member ID {:x}, expected {:x}",
                            info.id,
                            expect.member_id.unwrap_or(0)
                        ));
                    }
                    if expect.cluster_id.is_some_and(|m| m != info.cluster_id) {
                        bad.push(format!(
                            "cluster ID {:x}, expected {:x}",
                            info.cluster_id,
                            expect.cluster_id.unwrap_or(0)
                        ));
                    }
                    if expect.revision.is_some_and(|r| info.revision < r) {
                        bad.push(format!(
                            "revision {}, expected {} or above",
                            info.revision,
                            expect.revision.unwrap_or(0)
                        ));
                    }
                    if !bad.is_empty() {
                        // Wrong identity or data will not fix itself.
                        return Err(format!(
                            "etcd at {endpoint} answers with {}",
                            bad.join(", ")
                        ));
                    }
                    if !expect.quorum || etcd::has_quorum(&mut c, PROBE_TIMEOUT).await {
                        return Ok(format!(
                            "member {:x} of cluster {:x} at revision {}",
                            info.id, info.cluster_id, info.revision
                        ));
                    }
                    last = "answers, but has no leader yet".into();
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "etcd at {endpoint} was not healthy within {timeout:?}: {last}"
    ))
}
