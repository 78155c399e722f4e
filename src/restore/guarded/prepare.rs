//! Everything known before anything changes: the node, the snapshot (verified), the plan, the
//! live cluster, the manifest as it will be rewritten, and every guard's verdict. Reads files,
//! the snapshot and the network; changes nothing.

use std::path::{Path, PathBuf};

use super::guards::{self, Guard, Live, Verdict};
use super::node::{load_node, Node};
use super::wait::PROBE_TIMEOUT;
use super::Options;
use crate::config::Config;
use crate::etcd::{self, TlsMaterial};
use crate::etcddb::{self, SnapshotFileReport};
use crate::etcdversion::Minor;
use crate::kubeadm::{rewrite_etcd_flags, split_url, EtcdManifest, RewriteMode};
use crate::preflight;
use crate::restore::datadir::{resolve, Cluster, RestorePlan};
use crate::restore::source::{resolve_source, Source};

/// Why there is nothing to show the operator yet.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The flags do not make a valid restore plan (`--initial-cluster`, …): a usage error.
    #[error("restore plan: {0}")]
    Plan(String),
    /// The node, the snapshot or the state dir could not be read.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for PrepareError {
    fn from(s: String) -> Self {
        PrepareError::Failed(s)
    }
}

/// Everything known before anything changes.
pub struct Prepared {
    pub node: Node,
    pub snapshot: PathBuf,
    /// Keeps a sealed snapshot's plain copy (at `snapshot`) until the restore is done.
    pub _source: Source,
    pub report: SnapshotFileReport,
    pub plan: RestorePlan,
    pub cluster: Cluster,
    /// The etcd minor of the manifest's image: what the data dir is built for.
    pub target_version: Option<Minor>,
    pub guards: Vec<Guard>,
    pub revision_after: i64,
    pub endpoint: String,
    pub tls: Option<TlsMaterial>,
    pub old_ids: Option<(u64, u64)>,
    pub manifest_preview: Option<(String, RewriteMode)>,
}

impl Prepared {
    /// No guard fails.
    pub fn ok(&self) -> bool {
        self.guards.iter().all(|g| g.verdict != Verdict::Fail)
    }
}

/// Reads the node, the snapshot and the live cluster, and evaluates every guard. `config` is
/// already under `opts.root`. Changes nothing.
pub async fn prepare(config: &Config, opts: &Options) -> Result<Prepared, PrepareError> {
    let root = opts.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut guards = vec![guards::running_as_root(
        nix::unistd::Uid::effective().is_root(),
    )];
    let node = load_node(&root)?;
    let m = &node.manifest;
    let name = m
        .member_name()
        .ok_or_else(|| "the etcd manifest has no --name".to_string())?
        .to_string();
    let advertise = m.advertise_peer_urls().map_err(|e| e.to_string())?;
    guards.push(guards::etcd_manifest(
        &node.etcd_manifest,
        &name,
        m.image.as_deref().unwrap_or("?"),
    ));
    guards.push(guards::one_etcd_pod(
        &other_etcd_pods(&node.manifest_dir),
        &node.manifest_dir,
    ));
    guards.push(guards::data_dir(&node.data_dir));

    let source = resolve_source(config, &root, &opts.source, opts.identity.as_deref()).await?;
    let snapshot = source.path.clone();
    let report = etcddb::verify_snapshot_file(&snapshot, opts.skip_hash_check, None)
        .map_err(|e| format!("snapshot integrity: {e}"))?;
    guards.push(guards::snapshot_integrity(&snapshot, &report));
    let (version, target_version) = guards::version_guard(
        m.image_version(),
        report.storage_version.as_deref(),
        report.cluster_version.as_deref(),
        opts.force,
    );
    guards.push(version);
    guards.push(guards::flags_guard(
        m.image_version(),
        m.flags.iter().map(|(n, _)| n.as_str()),
    ));

    let plan = plan_of(&name, &advertise.join(","), opts);
    let cluster = resolve(&plan).map_err(|e| PrepareError::Plan(e.to_string()))?;
    guards.push(guards::restore_plan(cluster.members.len(), &name));

    let peer_cert = node.host_file(
        m.flag("peer-cert-file")
            .unwrap_or("/etc/kubernetes/pki/etcd/peer.crt"),
    );
    let sans = std::fs::read(&peer_cert)
        .map_err(|e| e.to_string())
        .and_then(|p| cert_sans(&p));
    let hosts: Vec<String> = cluster
        .this()
        .peer_urls
        .iter()
        .filter_map(|u| split_url(u).map(|(_, h, _)| h.to_string()))
        .collect();
    guards.push(guards::peer_certificate(
        &peer_cert,
        sans,
        &hosts,
        cluster.members.len(),
    ));

    let parent = node.data_dir.parent().unwrap_or(Path::new("/"));
    guards.push(guards::disk_space(
        parent,
        guards::space_needed(&report),
        crate::fsutil::free_space(parent),
    ));

    let endpoint = m.local_client_url().map_err(|e| e.to_string())?;
    let (tls, live, old_ids) = match preflight::etcd_tls(&config.etcd) {
        Ok(t) => {
            let (live, ids) = ask_live(&endpoint, &t).await;
            (Some(t), live, ids)
        }
        Err(err) => (None, Live::NoTls(err.to_string()), None),
    };
    guards.push(guards::live_cluster(
        &endpoint,
        &live,
        opts.force,
        opts.no_wait,
    ));

    let revision_after = if opts.bump_revision > 0 {
        report.status.latest.map_or(0, |l| l.main) + opts.bump_revision as i64
    } else {
        report.revision
    };
    let manifest_preview = rewrite_etcd_flags(
        &node.manifest_text,
        &node.etcd_manifest,
        &manifest_edits(&plan),
    )
    .map(|r| (r.text, r.mode))
    .map_err(|e| e.to_string());
    guards.push(guards::manifest_rewrite(
        manifest_preview
            .as_ref()
            .map(|(_, m)| *m)
            .map_err(Clone::clone),
    ));
    Ok(Prepared {
        node,
        snapshot,
        _source: source,
        report,
        plan,
        cluster,
        target_version,
        guards,
        revision_after,
        endpoint,
        tls,
        old_ids,
        manifest_preview: manifest_preview.ok(),
    })
}

/// The restore plan from the manifest's member `name` and peer URLs and the operator's flags.
fn plan_of(name: &str, advertise: &str, opts: &Options) -> RestorePlan {
    RestorePlan {
        name: name.to_string(),
        initial_cluster: opts
            .initial_cluster
            .clone()
            .unwrap_or_else(|| RestorePlan::single_member_cluster(name, advertise)),
        advertise_peer_urls: advertise.to_string(),
        token: opts
            .token
            .clone()
            .unwrap_or_else(|| format!("etcd-restore-{}", crate::clock::now().timestamp())),
        bump_revision: opts.bump_revision,
        mark_compacted: opts.bump_revision > 0,
    }
}

/// The flags a restore changes in `etcd.yaml`.
fn manifest_edits(plan: &RestorePlan) -> Vec<(String, String)> {
    vec![
        ("initial-cluster".into(), plan.initial_cluster.clone()),
        ("initial-cluster-state".into(), "new".into()),
        ("initial-cluster-token".into(), plan.token.clone()),
    ]
}

/// Other manifests in the static pod dir that define a pod named etcd.
fn other_etcd_pods(manifest_dir: &Path) -> Vec<String> {
    let mut others = Vec::new();
    if let Ok(rd) = std::fs::read_dir(manifest_dir) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "etcd.yaml" || !e.path().is_file() {
                continue;
            }
            if let Ok(m) = EtcdManifest::load(&e.path()) {
                if m.pod_name.as_deref() == Some("etcd") {
                    others.push(name);
                }
            }
        }
    }
    others
}

/// Asks the etcd at `endpoint` who it is and whether its cluster has quorum; with its member
/// and cluster IDs when it answers.
async fn ask_live(endpoint: &str, tls: &TlsMaterial) -> (Live, Option<(u64, u64)>) {
    let Ok(mut client) = etcd::connect(endpoint, tls, PROBE_TIMEOUT).await else {
        return (Live::Silent, None);
    };
    let info = match etcd::member_info(&mut client, PROBE_TIMEOUT).await {
        Ok(info) => info,
        Err(err) => return (Live::Mute(err.to_string()), None),
    };
    let quorum = etcd::has_quorum(&mut client, PROBE_TIMEOUT).await;
    let members = etcd::member_list(&mut client, PROBE_TIMEOUT)
        .await
        .map(|l| {
            l.iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    (
        Live::Answers { quorum, members },
        Some((info.id, info.cluster_id)),
    )
}
/// Host names and IPs in the peer certificate's subject alternative names.
fn cert_sans(pem: &[u8]) -> Result<Vec<String>, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let a: [u8; 16] = (*b).try_into().unwrap_or([0; 16]);
                        out.push(std::net::Ipv6Addr::from(a).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(out)
}
