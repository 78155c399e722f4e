//! The guarded offline restore of a kubeadm node (restore-spec E): read the node from its
//! static pod manifest, check everything (guards), then stop kube-apiserver and etcd by moving
//! their manifests out, build the new data dir next to the old one, swap by rename (the old one
//! is kept), rewrite `etcd.yaml`, wait for the restored member, and put the API server back.
//! Every step is journaled before and after; any failure of a single-member restore rolls back
//! automatically, and `--rollback` undoes a restore from its journal at any point.
//!
//! Nothing here deletes an old data dir, and nothing is changed before every guard passed.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::datadir::{build_data_dir, resolve, BuildOptions, Cluster, RestorePlan};
use super::journal::{
    self, Journal, JournalState, Paths, PlanRecord, Step, StepState, BACKUP_DIR_PREFIX,
};
use super::probe;
use crate::config::Config;
use crate::etcd::{self, TlsMaterial};
use crate::etcddb::{self, SnapshotFileReport};
use crate::etcdversion::{self, Compat, Minor};
use crate::fsutil;
use crate::kubeadm::{rewrite_etcd_flags, split_url, EtcdManifest, RewriteMode};
use crate::records::{self, Member, Outcome, Record, RecordStore, Trigger};

/// The bump Kubernetes' docs recommend for restores under a running control plane's caches.
pub const DEFAULT_BUMP: u64 = 1_000_000_000;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--snapshot`: a file, a record id, or a remote key.
    pub source: String,
    pub root: Option<PathBuf>,
    pub dry_run: bool,
    pub yes: bool,
    pub initial_cluster: Option<String>,
    pub token: Option<String>,
    pub bump_revision: u64,
    pub force: bool,
    pub skip_hash_check: bool,
    /// How long to wait for the restored member to be healthy.
    pub timeout: Duration,
    /// Change the files but do not wait for etcd (no kubelet, e.g. a disk mounted for rescue).
    pub no_wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One guard and what it found.
#[derive(Debug, Clone)]
pub struct Guard {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn guard(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Guard {
    Guard {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// `p` (an absolute host path) under `root`.
pub fn under(root: &Path, p: &Path) -> PathBuf {
    match p.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(p),
    }
}

/// The node as its files describe it.
#[derive(Debug, Clone)]
pub struct Node {
    pub root: PathBuf,
    pub manifest_dir: PathBuf,
    pub etcd_manifest: PathBuf,
    pub manifest: EtcdManifest,
    pub manifest_text: String,
    pub manifest_mode: u32,
    pub apiserver_manifest: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub tmp_dir: PathBuf,
}

/// kubelet's `staticPodPath` (from `/var/lib/kubelet/config.yaml`), kubeadm's default if absent.
fn static_pod_dir(root: &Path) -> PathBuf {
    let cfg = under(root, Path::new("/var/lib/kubelet/config.yaml"));
    let from_kubelet = std::fs::read_to_string(cfg).ok().and_then(|t| {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&t).ok()?;
        v.get("staticPodPath")?.as_str().map(str::to_string)
    });
    under(
        root,
        Path::new(
            from_kubelet
                .as_deref()
                .unwrap_or("/etc/kubernetes/manifests"),
        ),
    )
}

pub fn load_node(root: &Path) -> Result<Node, String> {
    let manifest_dir = static_pod_dir(root);
    let etcd_manifest = manifest_dir.join("etcd.yaml");
    let manifest_text = std::fs::read_to_string(&etcd_manifest).map_err(|e| {
        format!(
            "cannot read the etcd manifest {}: {e} (is this a kubeadm control-plane node? \
             with --root, is the disk mounted there?)",
            etcd_manifest.display()
        )
    })?;
    let manifest =
        EtcdManifest::parse(&manifest_text, &etcd_manifest).map_err(|e| e.to_string())?;
    let manifest_mode = std::fs::metadata(&etcd_manifest)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let host = manifest.host_data_dir().map_err(|e| e.to_string())?;
    let apiserver = manifest_dir.join("kube-apiserver.yaml");
    Ok(Node {
        root: root.to_owned(),
        data_dir: under(root, Path::new(&host.host_path)),
        manifest_dir,
        etcd_manifest,
        manifest,
        manifest_text,
        manifest_mode,
        apiserver_manifest: apiserver.exists().then_some(apiserver),
        tmp_dir: under(root, Path::new("/etc/kubernetes/tmp")),
    })
}

/// Everything known before anything changes.
pub struct Prepared {
    pub node: Node,
    pub snapshot: PathBuf,
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
    pub fn ok(&self) -> bool {
        self.guards.iter().all(|g| g.verdict != Verdict::Fail)
    }
}

/// Finds the snapshot: a file; a record id (its local file, or its remote copy downloaded);
/// or a remote key (`s3://bucket/key` or a key in the configured bucket), downloaded into the
/// state dir and checked against its sidecar.
pub async fn resolve_source(config: &Config, root: &Path, source: &str) -> Result<PathBuf, String> {
    let as_file = PathBuf::from(source);
    if as_file.is_file() {
        return Ok(as_file);
    }
    let state_dir = under(root, &config.state_dir);
    let records = RecordStore::new(&state_dir)
        .load()
        .map(|f| f.records)
        .unwrap_or_default();
    if let Some(r) = records.iter().find(|r| r.id == source) {
        if r.result != Outcome::Success {
            return Err(format!("record {source} is not a successful backup"));
        }
        if let Some(l) = r
            .local
            .as_ref()
            .filter(|l| l.state == records::CopyState::Present)
        {
            for p in [l.path.clone(), under(root, &l.path)] {
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        if let (Some(c), Some(rc)) = (&r.remote, &config.remote_storage) {
            if c.may_exist() {
                let key = c
                    .location
                    .strip_prefix(&format!("s3://{}/", rc.bucket))
                    .unwrap_or(&c.location)
                    .to_string();
                return download(config, root, &key, r.sha256.as_deref()).await;
            }
        }
        return Err(format!(
            "record {source}: neither its local file nor a remote copy is available"
        ));
    }
    if let Some(rc) = &config.remote_storage {
        let key = source
            .strip_prefix(&format!("s3://{}/", rc.bucket))
            .unwrap_or(source);
        if key.ends_with(".db") {
            return download(config, root, key, None).await;
        }
    }
    Err(format!(
        "--snapshot {source}: not a file, not a record id in {}, and not a remote key",
        state_dir.join("records.json").display()
    ))
}

async fn download(
    config: &Config,
    root: &Path,
    key: &str,
    sha256: Option<&str>,
) -> Result<PathBuf, String> {
    let rc = config
        .remote_storage
        .as_ref()
        .ok_or("no [remote_storage] configured to download from")?;
    let remote = crate::store::remote::Remote::open(rc, "-")?;
    let dir = under(root, &config.state_dir).join("restore-downloads");
    fsutil::create_private_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = key.rsplit('/').next().unwrap_or("snapshot.db");
    let dest = dir.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&dest);
    let n = remote.download(key, &dest).await?;
    if n == 0 {
        let _ = std::fs::remove_file(&dest);
        return Err(format!("{} is empty", remote.location(key)));
    }
    let want = match sha256 {
        Some(s) => Some(s.to_string()),
        None => remote.read_sidecar(key).await.ok().and_then(|r| r.sha256),
    };
    if let Some(want) = want {
        let got = sha256_file(&dest)?;
        if got != want {
            let _ = std::fs::remove_file(&dest);
            return Err(format!(
                "{} downloaded with sha256 {got}, but its record says {want}",
                remote.location(key)
            ));
        }
    }
    tracing::info!(key, bytes = n, path = %dest.display(), "snapshot downloaded");
    Ok(dest)
}

fn sha256_file(p: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Version compatibility of the snapshot and the etcd image (E.5 #3), by the one rule in
/// [`etcdversion::restore_compat`]; also the etcd minor the data dir is built for. Pure.
pub fn version_guard(
    image: Option<(u64, u64, u64)>,
    storage: Option<&str>,
    cluster: Option<&str>,
    force: bool,
) -> (Guard, Option<Minor>) {
    let name = "version compatibility";
    let Some((imaj, imin, ipatch)) = image else {
        return (
            guard(
                name,
                Verdict::Warn,
                "the etcd image tag does not say its version; cannot compare (the data dir is \
                 built for the snapshot's own version)",
            ),
            None,
        );
    };
    let img = format!("{imaj}.{imin}.{ipatch}");
    // Outside 3.5..=3.7 (with --force only) the nearest encoding we know is used.
    let target = Some(Minor::nearest(imaj, imin));
    let snapshot = Minor::of_snapshot(storage, cluster);
    let g = match etcdversion::restore_compat(snapshot, (imaj, imin)) {
        Compat::Pass(why) => guard(name, Verdict::Pass, format!("image {img}: {why}")),
        Compat::NeedsForce(why) if force => guard(
            name,
            Verdict::Warn,
            format!("image {img}: {why} (--force given)"),
        ),
        Compat::NeedsForce(why) => guard(name, Verdict::Fail, format!("image {img}: {why}")),
        Compat::Refuse(why) => guard(name, Verdict::Fail, format!("image {img}: {why}")),
    };
    (g, target)
}

/// etcd 3.6's names for the `--experimental-*` flags kubeadm wrote (etcd's `deprecatedFlags`);
/// etcd 3.7 removed the old names and exits on them.
const EXPERIMENTAL_REPLACEMENTS: &[(&str, &str)] = &[
    (
        "experimental-initial-corrupt-check",
        "--feature-gates=InitialCorruptCheck=true",
    ),
    (
        "experimental-compact-hash-check-enabled",
        "--feature-gates=CompactHashCheck=true",
    ),
    (
        "experimental-watch-progress-notify-interval",
        "--watch-progress-notify-interval",
    ),
    ("experimental-corrupt-check-time", "--corrupt-check-time"),
    (
        "experimental-snapshot-catchup-entries",
        "--snapshot-catchup-entries",
    ),
    (
        "experimental-bootstrap-defrag-threshold-megabytes",
        "--bootstrap-defrag-threshold-megabytes",
    ),
];

/// The manifest's flags against its image: the restore changes only the `--initial-cluster*`
/// flags, so a flag the image's etcd rejects would stop the restored member from starting.
/// etcd 3.7 exits on every `--experimental-*` flag (refused, with the replacements kubeadm 1.37
/// writes); 3.6 accepts them deprecated (a warning). Pure.
pub fn flags_guard<'a>(
    image: Option<(u64, u64, u64)>,
    flags: impl Iterator<Item = &'a str>,
) -> Guard {
    let name = "manifest flags";
    let experimental: Vec<&str> = flags.filter(|f| f.starts_with("experimental-")).collect();
    if experimental.is_empty() {
        return guard(name, Verdict::Pass, "no flag the image's etcd rejects");
    }
    let listed = experimental
        .iter()
        .map(
            |f| match EXPERIMENTAL_REPLACEMENTS.iter().find(|(o, _)| o == f) {
                Some((_, new)) => format!("--{f} (now {new})"),
                None => format!("--{f}"),
            },
        )
        .collect::<Vec<_>>()
        .join(", ");
    match image {
        Some((3, minor, _)) if minor >= 7 => guard(
            name,
            Verdict::Fail,
            format!(
                "the image is etcd 3.{minor}, which exits on {listed}: replace them in etcd.yaml \
                 as kubeadm 1.37 writes it, then restore"
            ),
        ),
        Some((3, 6, _)) => guard(
            name,
            Verdict::Warn,
            format!("etcd 3.6 accepts {listed} but they are deprecated; etcd 3.7 rejects them"),
        ),
        _ => guard(
            name,
            Verdict::Pass,
            format!("{listed}: valid for this image"),
        ),
    }
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

/// The host path of a file the etcd container sees at `container_path` (through its mounts).
fn host_file(node: &Node, container_path: &str) -> PathBuf {
    let m = &node.manifest;
    let mut best: Option<(&str, &str)> = None;
    for (vol, mount) in &m.mounts {
        let mt = mount.trim_end_matches('/');
        if container_path.starts_with(&format!("{mt}/"))
            && best.is_none_or(|(_, b)| mt.len() > b.len())
        {
            best = Some((vol, mt));
        }
    }
    let host = best.and_then(|(vol, mt)| {
        m.host_paths
            .iter()
            .find(|(n, _)| n == vol)
            .map(|(_, p)| format!("{}{}", p.trim_end_matches('/'), &container_path[mt.len()..]))
    });
    under(
        &node.root,
        Path::new(host.as_deref().unwrap_or(container_path)),
    )
}

fn free_space(dir: &Path) -> Result<(u64, u64), String> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        if !d.pop() {
            break;
        }
    }
    let st = nix::sys::statvfs::statvfs(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok((
        st.blocks_available() as u64 * st.fragment_size() as u64,
        st.files_available() as u64,
    ))
}

/// Reads the node, the snapshot and the live cluster, and evaluates every guard. Changes
/// nothing.
pub async fn prepare(config: &Config, opts: &Options) -> Result<Prepared, String> {
    let root = opts.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut guards = Vec::new();
    let is_root = nix::unistd::Uid::effective().is_root();
    guards.push(guard(
        "running as root",
        if is_root {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        if is_root {
            "yes"
        } else {
            "no: the data dir, manifests and PKI are root's"
        },
    ));
    let node = load_node(&root)?;
    guards.push(guard(
        "etcd manifest",
        Verdict::Pass,
        format!(
            "{}: member {:?}, image {}",
            node.etcd_manifest.display(),
            node.manifest.member_name().unwrap_or("?"),
            node.manifest.image.as_deref().unwrap_or("?")
        ),
    ));
    // A second pod named etcd in the manifest dir would be started beside ours.
    let mut others = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&node.manifest_dir) {
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
    guards.push(if others.is_empty() {
        guard(
            "one etcd pod",
            Verdict::Pass,
            "no other manifest defines a pod named etcd",
        )
    } else {
        guard(
            "one etcd pod",
            Verdict::Fail,
            format!(
                "{} in {} also define a pod named etcd; move them out of the manifest dir",
                others.join(", "),
                node.manifest_dir.display()
            ),
        )
    });
    let name = node
        .manifest
        .member_name()
        .ok_or("the etcd manifest has no --name")?
        .to_string();
    let advertise = node
        .manifest
        .advertise_peer_urls()
        .map_err(|e| e.to_string())?;
    guards.push(guard(
        "data dir",
        Verdict::Pass,
        format!(
            "{} (host path of the etcd-data volume)",
            node.data_dir.display()
        ),
    ));

    let snapshot = resolve_source(config, &root, &opts.source).await?;
    let report = match etcddb::verify_snapshot_file(&snapshot, opts.skip_hash_check, None) {
        Ok(r) => r,
        Err(e) => {
            return Err(format!("snapshot integrity: {e}"));
        }
    };
    let mut integrity = format!(
        "{}: sha256 {}, revision {}, {} keys, hash {:x}",
        snapshot.display(),
        match report.trailer {
            "ok" => "verified",
            "not checked" => "NOT CHECKED (--skip-hash-check)",
            _ => "ABSENT (--skip-hash-check)",
        },
        report.revision,
        report.total_key,
        report.hash
    );
    let has_buckets = ["key", "meta"]
        .iter()
        .all(|b| report.buckets.iter().any(|x| x == b));
    let mut v = Verdict::Pass;
    if !has_buckets || report.consistent_index.is_none() {
        v = Verdict::Fail;
        integrity.push_str("; not an etcd database (no key/meta buckets or consistent_index)");
    } else if report.alarms > 0 || report.trailer != "ok" {
        v = Verdict::Warn;
        if report.alarms > 0 {
            integrity.push_str(&format!(
                "; {} alarm(s) recorded: disarm them after the restore",
                report.alarms
            ));
        }
    }
    guards.push(guard("snapshot integrity", v, integrity));
    let (vguard, target_version) = version_guard(
        node.manifest.image_version(),
        report.storage_version.as_deref(),
        report.cluster_version.as_deref(),
        opts.force,
    );
    guards.push(vguard);
    guards.push(flags_guard(
        node.manifest.image_version(),
        node.manifest.flags.iter().map(|(n, _)| n.as_str()),
    ));

    let plan = RestorePlan {
        name: name.clone(),
        initial_cluster: opts.initial_cluster.clone().unwrap_or_else(|| {
            advertise
                .iter()
                .map(|u| format!("{name}={u}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        advertise_peer_urls: advertise.join(","),
        token: opts
            .token
            .clone()
            .unwrap_or_else(|| format!("etcd-restore-{}", Utc::now().timestamp())),
        bump_revision: opts.bump_revision,
        mark_compacted: opts.bump_revision > 0,
    };
    let cluster = match resolve(&plan) {
        Ok(c) => {
            guards.push(guard(
                "restore plan",
                Verdict::Pass,
                format!(
                    "{} member(s); this member {} is in --initial-cluster with its advertised peer URL",
                    c.members.len(),
                    name
                ),
            ));
            c
        }
        Err(e) => return Err(format!("restore plan: {e}")),
    };

    // Peer URL hosts must be in the peer certificate, or the members cannot talk after the
    // restore.
    let peer_cert = host_file(
        &node,
        node.manifest
            .flag("peer-cert-file")
            .unwrap_or("/etc/kubernetes/pki/etcd/peer.crt"),
    );
    match std::fs::read(&peer_cert)
        .map_err(|e| e.to_string())
        .and_then(|p| cert_sans(&p))
    {
        Ok(sans) => {
            let missing: Vec<String> = cluster
                .this()
                .peer_urls
                .iter()
                .filter_map(|u| split_url(u).map(|(_, h, _)| h.to_string()))
                .filter(|h| !sans.iter().any(|s| s == h))
                .collect();
            guards.push(if missing.is_empty() {
                guard(
                    "peer certificate",
                    Verdict::Pass,
                    format!("{} covers this member's peer URL", peer_cert.display()),
                )
            } else {
                guard(
                    "peer certificate",
                    if cluster.members.len() > 1 {
                        Verdict::Fail
                    } else {
                        Verdict::Warn
                    },
                    format!(
                        "{} has no SAN for {}: peers will fail TLS",
                        peer_cert.display(),
                        missing.join(", ")
                    ),
                )
            });
        }
        Err(e) => guards.push(guard(
            "peer certificate",
            Verdict::Warn,
            format!("cannot read {}: {e}", peer_cert.display()),
        )),
    }

    // Disk: the db, a WAL segment, 10 % and a few pages, on the data dir's filesystem.
    let need =
        report.total_size + 64_000_000 + report.total_size / 10 + 64 * u64::from(report.page_size);
    let parent = node
        .data_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    guards.push(match free_space(&parent) {
        Ok((free, inodes)) if free >= need && inodes >= 64 => guard(
            "disk space",
            Verdict::Pass,
            format!(
                "{} MB free at {}, {} MB needed",
                free / 1_000_000,
                parent.display(),
                need.div_ceil(1_000_000)
            ),
        ),
        Ok((free, inodes)) => guard(
            "disk space",
            Verdict::Fail,
            format!(
                "{} MB and {inodes} inodes free at {}, {} MB needed: free space first",
                free / 1_000_000,
                parent.display(),
                need.div_ceil(1_000_000)
            ),
        ),
        Err(e) => guard("disk space", Verdict::Fail, format!("cannot tell: {e}")),
    });

    // The live cluster: answering with quorum means a restore would throw a working cluster
    // away.
    let endpoint = node
        .manifest
        .local_client_url()
        .map_err(|e| e.to_string())?;
    let e = &config.etcd;
    let tls = TlsMaterial::load(
        &under(&root, &e.ca_cert),
        &under(&root, &e.client_cert),
        &under(&root, &e.client_key),
        Utc::now(),
    );
    let mut old_ids = None;
    let tls = match tls {
        Ok(t) => {
            match etcd::connect(&endpoint, &t, PROBE_TIMEOUT).await {
                Err(_) => guards.push(guard(
                    "live cluster",
                    Verdict::Pass,
                    format!("etcd does not answer at {endpoint}"),
                )),
                Ok(mut client) => match etcd::member_info(&mut client, PROBE_TIMEOUT).await {
                    Err(err) => guards.push(guard(
                        "live cluster",
                        Verdict::Warn,
                        format!(
                            "etcd at {endpoint} accepts connections but does not answer: {err}"
                        ),
                    )),
                    Ok(info) => {
                        old_ids = Some((info.id, info.cluster_id));
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
                        guards.push(if !quorum {
                            guard("live cluster", Verdict::Warn, format!("etcd at {endpoint} answers but its cluster has no quorum (members: {members}); it will be stopped"))
                        } else if opts.force {
                            guard("live cluster", Verdict::Warn, format!("etcd at {endpoint} answers and its cluster has quorum (members: {members}); restoring anyway (--force)"))
                        } else {
                            guard("live cluster", Verdict::Fail, format!(
                                "etcd at {endpoint} answers and its cluster has quorum (members: {members}): a restore would throw a working cluster away. Replace a failed member with `etcdctl member remove/add` instead, or pass --force"
                            ))
                        });
                    }
                },
            }
            Some(t)
        }
        Err(err) => {
            guards.push(guard(
                "live cluster",
                if opts.no_wait {
                    Verdict::Warn
                } else {
                    Verdict::Fail
                },
                format!(
                    "cannot check, and cannot verify the restored member later: {err}{}",
                    if opts.no_wait {
                        ""
                    } else {
                        " (--no-wait to restore files only)"
                    }
                ),
            ));
            None
        }
    };

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
    .map(|r| (r.text, r.mode));
    match &manifest_preview {
        Ok((_, RewriteMode::Textual)) => guards.push(guard("manifest rewrite", Verdict::Pass, "only the --initial-cluster* flags change")),
        Ok((_, RewriteMode::Reserialized)) => guards.push(guard("manifest rewrite", Verdict::Warn, "the manifest is not in kubeadm's layout: it will be re-serialised (same content, formatting and comments lost)")),
        Err(e) => guards.push(guard("manifest rewrite", Verdict::Fail, e.to_string())),
    }
    Ok(Prepared {
        node,
        snapshot,
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

fn manifest_edits(plan: &RestorePlan) -> Vec<(String, String)> {
    vec![
        ("initial-cluster".into(), plan.initial_cluster.clone()),
        ("initial-cluster-state".into(), "new".into()),
        ("initial-cluster-token".into(), plan.token.clone()),
    ]
}

/// The plan and the guards, for a human.
pub fn render(p: &Prepared, stamp: &str) -> String {
    let n = &p.node;
    let paths = plan_paths(n, stamp);
    let mut s = String::new();
    s.push_str("Restore plan\n");
    s.push_str(&format!("  snapshot        {}\n", p.snapshot.display()));
    s.push_str(&format!(
        "  revision        {} (snapshot) -> {}{}\n",
        p.report.revision,
        p.revision_after,
        if p.plan.bump_revision > 0 {
            format!(" (+{} bump, marked compacted)", p.plan.bump_revision)
        } else {
            String::new()
        }
    ));
    s.push_str(&format!("  cluster token   {}\n", p.plan.token));
    s.push_str(&format!("  cluster ID      {:x}\n", p.cluster.cluster_id));
    for (i, m) in p.cluster.members.iter().enumerate() {
        s.push_str(&format!(
            "  member          {:x} {} {}{}\n",
            m.id,
            m.name,
            m.peer_urls.join(","),
            if i == p.cluster.self_index {
                "  <- this node"
            } else {
                ""
            }
        ));
    }
    s.push_str("Steps\n");
    if let Some(a) = &n.apiserver_manifest {
        s.push_str(&format!(
            "  1. move {} to {} (stops kube-apiserver)\n",
            a.display(),
            paths.backup_dir.display()
        ));
    } else {
        s.push_str("  1. (no kube-apiserver manifest on this node)\n");
    }
    s.push_str(&format!(
        "  2. move {} to {} (stops etcd; the original is kept there)\n",
        n.etcd_manifest.display(),
        paths.backup_dir.display()
    ));
    s.push_str("  3. wait until etcd's ports are closed and its db/WAL locks are free\n");
    s.push_str(&format!(
        "  4. build the new data dir in {}\n",
        paths.built.display()
    ));
    s.push_str(&format!(
        "  5. rename {} to {} (kept, never deleted)\n",
        if paths.swap_member_only {
            n.data_dir.join("member")
        } else {
            n.data_dir.clone()
        }
        .display(),
        paths.pre_restore.display()
    ));
    s.push_str(&format!(
        "  6. rename the new data dir into {}\n",
        n.data_dir.display()
    ));
    s.push_str(&format!("  7. rewrite {}: --initial-cluster, --initial-cluster-state=new, --initial-cluster-token\n", n.etcd_manifest.display()));
    s.push_str("  8. wait for the restored member: planned member and cluster IDs, revision\n");
    s.push_str("  9. put kube-apiserver.yaml back\n");
    s.push_str(&format!(
        "  Journal: {}\n",
        paths.backup_dir.join(journal::JOURNAL_FILE).display()
    ));
    s.push_str("Guards\n");
    for g in &p.guards {
        s.push_str(&format!(
            "  [{}] {:<22} {}\n",
            match g.verdict {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            },
            g.name,
            g.detail
        ));
    }
    s
}

fn plan_paths(n: &Node, stamp: &str) -> Paths {
    let name = n
        .data_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "etcd".into());
    let parent = n.data_dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    let swap_member_only = is_mount_point(&n.data_dir);
    let (pre, failed, built) = if swap_member_only {
        (
            n.data_dir.join(format!("member.pre-restore-{stamp}")),
            n.data_dir.join(format!("member.failed-restore-{stamp}")),
            n.data_dir.join(format!(".restored-{stamp}")),
        )
    } else {
        (
            parent.join(format!("{name}.pre-restore-{stamp}")),
            parent.join(format!("{name}.failed-restore-{stamp}")),
            parent.join(format!(".{name}.restored-{stamp}")),
        )
    };
    Paths {
        manifest_dir: n.manifest_dir.clone(),
        etcd_manifest: n.etcd_manifest.clone(),
        apiserver_manifest: n.apiserver_manifest.clone(),
        backup_dir: n.tmp_dir.join(format!("{BACKUP_DIR_PREFIX}{stamp}")),
        data_dir: n.data_dir.clone(),
        pre_restore: pre,
        failed_restore: failed,
        built,
        swap_member_only,
    }
}

/// A mount point: its device differs from its parent's.
fn is_mount_point(p: &Path) -> bool {
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Asks on the terminal; refuses without one.
pub fn confirm(plan_text: &str) -> Result<(), String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "no terminal to confirm the restore on: review it with --dry-run, then pass --yes"
                .into(),
        );
    }
    let mut out = std::io::stderr();
    let _ = write!(out, "{plan_text}\nThis stops etcd and kube-apiserver on this node. Type 'restore' to go ahead: ");
    let _ = out.flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() == "restore" {
        Ok(())
    } else {
        Err("not confirmed; nothing was changed".into())
    }
}

/// Moves a file: rename, or copy + fsync + unlink across filesystems; fsyncs both dirs.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let bytes = std::fs::read(from)?;
            let mode = std::fs::metadata(from)?.permissions().mode() & 0o7777;
            fsutil::write_atomic(to, &bytes, mode)?;
            std::fs::remove_file(from)?;
        }
        Err(e) => return Err(e),
    }
    for d in [from.parent(), to.parent()].into_iter().flatten() {
        fsutil::fsync_dir(d)?;
    }
    Ok(())
}

fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    for d in [from.parent(), to.parent()].into_iter().flatten() {
        fsutil::fsync_dir(d)?;
    }
    Ok(())
}

/// Gives the new tree the old dir's owner (a rootless control plane runs etcd as its own uid).
fn copy_ownership(tree: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let chown = |p: &Path| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(std::io::Error::from)
    };
    chown(tree)?;
    if tree.is_dir() {
        for e in std::fs::read_dir(tree)? {
            copy_ownership(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Waits until `f` finds nothing wrong, and still nothing a second later (a process that is
/// shutting down closes its ports before it is gone).
fn wait_until(timeout: Duration, mut f: impl FnMut() -> Vec<String>) -> Result<(), Vec<String>> {
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

fn apiserver_ports(path: &Path) -> Vec<u16> {
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
struct Expect {
    member_id: Option<u64>,
    cluster_id: Option<u64>,
    revision: Option<i64>,
    quorum: bool,
}

async fn wait_healthy(
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
                    if expect.revision.is_some_and(|r| r != info.revision) {
                        bad.push(format!(
                            "revision {}, expected {}",
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

/// Why a restore ended without success.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// The journal, when the restore got that far.
    pub journal: Option<PathBuf>,
    pub rolled_back: bool,
}

/// Runs the restore (guards already passed and confirmed).
pub async fn execute(
    config: &Config,
    p: &Prepared,
    opts: &Options,
    stamp: &str,
) -> Result<Journal, Failure> {
    let n = &p.node;
    let paths = plan_paths(n, stamp);
    let fail_early = |message: String| Failure {
        message,
        journal: None,
        rolled_back: false,
    };
    // Exclusive: a second restore never writes into another one's backup dir and journal.
    let made = paths
        .backup_dir
        .parent()
        .map_or(Ok(()), fsutil::create_private_dir_all)
        .and_then(|()| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(fsutil::PRIVATE_DIR_MODE)
                .create(&paths.backup_dir)
        });
    made.map_err(|e| fail_early(format!("cannot create {}: {e}", paths.backup_dir.display())))?;
    let mut j = Journal {
        version: 1,
        id: stamp.to_string(),
        started_at: Utc::now(),
        state: JournalState::InProgress,
        snapshot: p.snapshot.clone(),
        snapshot_sha256: p
            .report
            .sha256
            .clone()
            .unwrap_or_else(|| "not computed (--skip-hash-check)".into()),
        plan: PlanRecord {
            name: p.plan.name.clone(),
            initial_cluster: p.plan.initial_cluster.clone(),
            token: p.plan.token.clone(),
            bump_revision: p.plan.bump_revision,
            member_id: format!("{:x}", p.cluster.this().id),
            cluster_id: format!("{:x}", p.cluster.cluster_id),
            revision: p.revision_after,
            members: p.cluster.members.len(),
            old_member_id: p.old_ids.map(|(m, _)| format!("{m:x}")),
            old_cluster_id: p.old_ids.map(|(_, c)| format!("{c:x}")),
        },
        paths: paths.clone(),
        steps: Vec::new(),
        outcome: None,
    };
    j.save()
        .map_err(|e| fail_early(format!("cannot write the journal: {e}")))?;
    let journal_path = j.path();
    let result = steps(config, p, opts, &mut j).await;
    match result {
        Ok(()) => {
            j.state = JournalState::Done;
            j.outcome = Some("restored".into());
            let _ = j.save();
            Ok(j)
        }
        Err(message) => {
            tracing::error!("restore failed: {message}");
            let healthy_stage = j.started(Step::EtcdHealthy) && !j.done(Step::EtcdHealthy);
            if p.cluster.members.len() > 1 && healthy_stage {
                // A member of a multi-member restore must not be rolled back alone: a mixed
                // state (some nodes new, some old) must never run.
                j.state = JournalState::Failed;
                j.outcome = Some(message.clone());
                let _ = j.save();
                return Err(Failure {
                    message: format!("{message}. This is one member of a {}-member restore: do not roll back one node alone; check all nodes, then run `etcdguard restore --rollback` on every node if the cluster does not form", p.cluster.members.len()),
                    journal: Some(journal_path),
                    rolled_back: false,
                });
            }
            let rb = rollback_journal(config, &mut j, opts).await;
            let rolled_back = rb.is_ok();
            Err(Failure {
                message: match rb {
                    Ok(()) => format!(
                        "{message}; rolled back: the old data dir and manifests are in place again"
                    ),
                    Err(e) => format!(
                        "{message}; the rollback failed too: {e}; journal {}",
                        journal_path.display()
                    ),
                },
                journal: Some(journal_path),
                rolled_back,
            })
        }
    }
}

async fn steps(
    config: &Config,
    p: &Prepared,
    opts: &Options,
    j: &mut Journal,
) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let paths = j.paths.clone();
    let n = &p.node;
    let _ = config;

    if let Some(api) = &paths.apiserver_manifest {
        j.mark(Step::ApiserverStopped, StepState::Started)
            .map_err(|e| io("journal", e))?;
        move_file(api, &paths.backup_dir.join("kube-apiserver.yaml"))
            .map_err(|e| io("moving kube-apiserver.yaml", e))?;
        if !opts.no_wait {
            let ports = apiserver_ports(&paths.backup_dir.join("kube-apiserver.yaml"));
            wait_until(opts.timeout, || {
                probe::listening_ports()
                    .map(|open| {
                        ports
                            .iter()
                            .filter(|p| open.contains(p))
                            .map(|p| format!("port {p} still listening"))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .map_err(|why| {
                format!(
                    "kube-apiserver did not stop within {:?}: {}",
                    opts.timeout,
                    why.join(", ")
                )
            })?;
        }
        j.mark(Step::ApiserverStopped, StepState::Done)
            .map_err(|e| io("journal", e))?;
    }

    j.mark(Step::EtcdManifestMoved, StepState::Started)
        .map_err(|e| io("journal", e))?;
    move_file(&paths.etcd_manifest, &paths.backup_dir.join("etcd.yaml"))
        .map_err(|e| io("moving etcd.yaml", e))?;
    j.mark(Step::EtcdManifestMoved, StepState::Done)
        .map_err(|e| io("journal", e))?;

    j.mark(Step::EtcdStopped, StepState::Started)
        .map_err(|e| io("journal", e))?;
    let ports = n.manifest.listen_ports();
    wait_until(
        if opts.no_wait {
            Duration::ZERO
        } else {
            opts.timeout
        },
        || probe::still_running(&paths.data_dir, &ports),
    )
    .map_err(|why| {
        format!(
            "etcd is still running on {}: {}",
            paths.data_dir.display(),
            why.join(", ")
        )
    })?;
    j.mark(Step::EtcdStopped, StepState::Done)
        .map_err(|e| io("journal", e))?;

    j.mark(Step::DataDirBuilt, StepState::Started)
        .map_err(|e| io("journal", e))?;
    let built = build_data_dir(
        &p.snapshot,
        &p.plan,
        &paths.built,
        BuildOptions {
            skip_hash_check: opts.skip_hash_check,
            target: p.target_version,
            // The version guard has decided already (a Fail stops before this step).
            force: true,
        },
    )
    .map_err(|e| format!("building the new data dir: {e}"))?;
    for w in &built.warnings {
        tracing::warn!("{w}");
    }
    j.mark(Step::DataDirBuilt, StepState::Done)
        .map_err(|e| io("journal", e))?;

    // Owner and mode of the old data (or its parent, when the data dir is gone).
    let owner = std::fs::metadata(&paths.data_dir)
        .or_else(|_| std::fs::metadata(paths.data_dir.parent().unwrap_or(Path::new("/"))))
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    let (old, new) = if paths.swap_member_only {
        (paths.data_dir.join("member"), paths.built.join("member"))
    } else {
        (paths.data_dir.clone(), paths.built.clone())
    };
    j.mark(Step::OldDataDirMoved, StepState::Started)
        .map_err(|e| io("journal", e))?;
    if old.exists() {
        rename_durable(&old, &paths.pre_restore)
            .map_err(|e| io(&format!("renaming {}", old.display()), e))?;
    }
    j.mark(Step::OldDataDirMoved, StepState::Done)
        .map_err(|e| io("journal", e))?;

    j.mark(Step::NewDataDirInPlace, StepState::Started)
        .map_err(|e| io("journal", e))?;
    rename_durable(&new, &old).map_err(|e| {
        io(
            &format!("renaming the new data dir into {}", old.display()),
            e,
        )
    })?;
    if paths.swap_member_only {
        let _ = std::fs::remove_dir(&paths.built);
    }
    copy_ownership(&old, owner.0, owner.1)
        .map_err(|e| io("setting the owner of the new data dir", e))?;
    std::fs::set_permissions(&paths.data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod 0700 the data dir", e))?;
    j.mark(Step::NewDataDirInPlace, StepState::Done)
        .map_err(|e| io("journal", e))?;

    j.mark(Step::ManifestWritten, StepState::Started)
        .map_err(|e| io("journal", e))?;
    let (text, _) = p
        .manifest_preview
        .clone()
        .ok_or("the manifest cannot be rewritten")?;
    write_manifest(&paths.etcd_manifest, text.as_bytes(), n.manifest_mode)
        .map_err(|e| io("writing etcd.yaml", e))?;
    j.mark(Step::ManifestWritten, StepState::Done)
        .map_err(|e| io("journal", e))?;

    j.mark(Step::EtcdHealthy, StepState::Started)
        .map_err(|e| io("journal", e))?;
    if !opts.no_wait {
        let tls = p
            .tls
            .as_ref()
            .ok_or("no TLS material to check the restored member with")?;
        let said = wait_healthy(
            &p.endpoint,
            tls,
            &Expect {
                member_id: Some(p.cluster.this().id),
                cluster_id: Some(p.cluster.cluster_id),
                revision: Some(p.revision_after),
                quorum: true,
            },
            opts.timeout,
        )
        .await?;
        tracing::info!("restored etcd is healthy: {said}");
    }
    j.mark(Step::EtcdHealthy, StepState::Done)
        .map_err(|e| io("journal", e))?;

    if paths.apiserver_manifest.is_some() {
        j.mark(Step::ApiserverRestored, StepState::Started)
            .map_err(|e| io("journal", e))?;
        restore_apiserver(&paths).map_err(|e| io("putting kube-apiserver.yaml back", e))?;
        j.mark(Step::ApiserverRestored, StepState::Done)
            .map_err(|e| io("journal", e))?;
    }
    Ok(())
}

/// Writes a manifest the way kubelet can never half-read: a dot-temp file (kubelet ignores
/// dot files), fsync, rename, fsync the dir; with the original mode.
fn write_manifest(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    fsutil::write_atomic(path, bytes, mode)
}

fn restore_apiserver(paths: &Paths) -> std::io::Result<()> {
    let (Some(api), backup) = (
        &paths.apiserver_manifest,
        paths.backup_dir.join("kube-apiserver.yaml"),
    ) else {
        return Ok(());
    };
    if !api.exists() && backup.exists() {
        let bytes = std::fs::read(&backup)?;
        let mode = std::fs::metadata(&backup)?.permissions().mode() & 0o7777;
        write_manifest(api, &bytes, mode)?;
    }
    Ok(())
}

/// Undoes a restore from its journal, checking the file system at every step (so it is
/// idempotent and works from any point a restore stopped at).
pub async fn rollback_journal(
    config: &Config,
    j: &mut Journal,
    opts: &Options,
) -> Result<(), String> {
    let _ = config;
    let paths = j.paths.clone();
    let original = paths.backup_dir.join("etcd.yaml");
    let wait = if opts.no_wait {
        Duration::ZERO
    } else {
        opts.timeout
    };

    // 1. The restored etcd stops: its manifest leaves the manifest dir. Waiting for etcd to
    //    stop matters only when data dirs are about to be renamed under it.
    let mut restored_was_running = false;
    if original.exists() {
        if let Ok(current) = std::fs::read(&paths.etcd_manifest) {
            if current != std::fs::read(&original).map_err(|e| e.to_string())? {
                move_file(
                    &paths.etcd_manifest,
                    &paths.backup_dir.join("etcd.yaml.restored"),
                )
                .map_err(|e| format!("moving the restored etcd.yaml out: {e}"))?;
                restored_was_running = true;
            }
        }
    }
    let swapped = paths.pre_restore.exists();
    if !paths.etcd_manifest.exists() && !opts.no_wait && (restored_was_running || swapped) {
        let ports = std::fs::read_to_string(&original)
            .ok()
            .and_then(|t| EtcdManifest::parse(&t, &original).ok())
            .map(|m| m.listen_ports())
            .unwrap_or_default();
        wait_until(wait, || probe::still_running(&paths.data_dir, &ports))
            .map_err(|why| format!("etcd did not stop: {}", why.join(", ")))?;
    }

    // 2. The old data back in place; the restored one kept for diagnosis.
    let live = if paths.swap_member_only {
        paths.data_dir.join("member")
    } else {
        paths.data_dir.clone()
    };
    // A process still exiting may recreate the data dir's path: such a straggler is moved
    // aside as well, and the rename tried again.
    let mut attempt = 0;
    while paths.pre_restore.exists() {
        if live.exists() {
            let mut aside = paths.failed_restore.clone();
            let mut n = 1;
            while aside.exists() {
                n += 1;
                aside = PathBuf::from(format!("{}.{n}", paths.failed_restore.display()));
            }
            rename_durable(&live, &aside)
                .map_err(|e| format!("moving the restored data dir aside: {e}"))?;
        }
        match rename_durable(&paths.pre_restore, &live) {
            Ok(()) => break,
            Err(e) if attempt < 5 => {
                tracing::warn!("moving the old data dir back: {e}; trying again");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(format!("moving the old data dir back: {e}")),
        }
    }
    if paths.built.exists() {
        std::fs::remove_dir_all(&paths.built)
            .map_err(|e| format!("removing {}: {e}", paths.built.display()))?;
    }

    // 3. The original manifest, byte for byte, with its mode.
    if original.exists() && !paths.etcd_manifest.exists() {
        let bytes = std::fs::read(&original).map_err(|e| e.to_string())?;
        let mode = std::fs::metadata(&original)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o600);
        write_manifest(&paths.etcd_manifest, &bytes, mode)
            .map_err(|e| format!("putting etcd.yaml back: {e}"))?;
    }

    // 4. The old member answers again.
    if !opts.no_wait && original.exists() {
        let e = &config.etcd;
        let root = opts.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let tls = TlsMaterial::load(
            &under(&root, &e.ca_cert),
            &under(&root, &e.client_cert),
            &under(&root, &e.client_key),
            Utc::now(),
        )
        .map_err(|e| e.to_string())?;
        let m = EtcdManifest::parse(
            &std::fs::read_to_string(&original).map_err(|e| e.to_string())?,
            &original,
        )
        .map_err(|e| e.to_string())?;
        let endpoint = m.local_client_url().map_err(|e| e.to_string())?;
        let parse = |s: &Option<String>| s.as_deref().and_then(|h| u64::from_str_radix(h, 16).ok());
        wait_healthy(
            &endpoint,
            &tls,
            &Expect {
                member_id: parse(&j.plan.old_member_id),
                cluster_id: parse(&j.plan.old_cluster_id),
                revision: None,
                quorum: j.plan.members == 1,
            },
            opts.timeout,
        )
        .await
        .map_err(|e| format!("after the rollback: {e}"))?;
    }

    // 5. The API server back.
    restore_apiserver(&paths).map_err(|e| format!("putting kube-apiserver.yaml back: {e}"))?;
    j.state = JournalState::RolledBack;
    j.outcome = Some("rolled back".into());
    j.save().map_err(|e| format!("journal: {e}"))?;
    Ok(())
}

/// Appends a record for a restore or a rollback.
pub fn record(
    config: &Config,
    root: &Path,
    trigger: Trigger,
    j: Option<&Journal>,
    snapshot: &Path,
    result: Result<(), &str>,
    started: Instant,
) {
    let now = Utc::now();
    let rec = Record {
        id: records::new_record_id(now),
        backup_timestamp: now,
        file_name: snapshot
            .file_name()
            .map(|s| s.to_string_lossy().into_owned()),
        result: if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failed
        },
        reason: result.err().map(str::to_string),
        trigger,
        member: j.map(|j| Member {
            name: j.plan.name.clone(),
            id: Some(j.plan.member_id.clone()),
            endpoint: String::new(),
        }),
        etcd_version: None,
        storage_version: None,
        snapshot_version: None,
        revision: j.map(|j| j.plan.revision),
        size_bytes: None,
        sha256: j.map(|j| j.snapshot_sha256.clone()),
        duration_seconds: started.elapsed().as_secs_f64(),
        local: None,
        remote: None,
    };
    let state_dir = under(root, &config.state_dir);
    if let Err(e) = fsutil::create_private_dir_all(&state_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            RecordStore::new(&state_dir)
                .update(now, |f| f.push(rec))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    {
        tracing::error!("cannot record the {}: {e}", trigger.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        let v = |img, st: Option<&str>, cl: Option<&str>, force| {
            let (g, t) = version_guard(img, st, cl, force);
            (g.verdict, t)
        };
        use Minor::*;
        assert_eq!(
            v(Some((3, 5, 16)), None, Some("3.5.0"), false),
            (Verdict::Pass, Some(V3_5))
        );
        assert_eq!(
            v(Some((3, 5, 16)), Some("3.6.0"), None, true).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 6, 8)), Some("3.7.0"), Some("3.7.0"), true).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 6, 4)), None, Some("3.4.0"), false).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 6, 4)), None, Some("3.4.0"), true).0,
            Verdict::Warn
        );
        assert_eq!(
            v(Some((3, 6, 4)), None, Some("3.5.0"), false),
            (Verdict::Pass, Some(V3_6))
        );
        assert_eq!(
            v(Some((3, 7, 0)), Some("3.6.0"), Some("3.6.0"), false),
            (Verdict::Pass, Some(V3_7))
        );
        assert_eq!(
            v(Some((3, 7, 0)), None, Some("3.5.0"), false).0,
            Verdict::Fail
        );
        assert_eq!(
            v(Some((3, 7, 0)), None, Some("3.5.0"), true),
            (Verdict::Warn, Some(V3_7))
        );
        assert_eq!(v(Some((3, 4, 23)), None, None, false).0, Verdict::Fail);
        assert_eq!(v(None, None, Some("3.5.0"), false), (Verdict::Warn, None));
    }

    #[test]
    fn flags_for_each_generation() {
        let k133 = [
            "data-dir",
            "experimental-initial-corrupt-check",
            "experimental-watch-progress-notify-interval",
        ];
        let k137 = [
            "data-dir",
            "feature-gates",
            "watch-progress-notify-interval",
        ];
        let v = |img, f: &[&str]| flags_guard(img, f.iter().copied());
        assert_eq!(v(Some((3, 5, 30)), &k133).verdict, Verdict::Pass);
        assert_eq!(v(Some((3, 6, 8)), &k133).verdict, Verdict::Warn);
        let g = v(Some((3, 7, 0)), &k133);
        assert_eq!(g.verdict, Verdict::Fail);
        assert!(
            g.detail.contains("--watch-progress-notify-interval")
                && g.detail.contains("InitialCorruptCheck=true"),
            "{}",
            g.detail
        );
        for img in [(3, 6, 8), (3, 7, 0)] {
            assert_eq!(v(Some(img), &k137).verdict, Verdict::Pass);
        }
    }

    #[test]
    fn paths_under_root() {
        assert_eq!(
            under(Path::new("/mnt/disk"), Path::new("/var/lib/etcd")),
            Path::new("/mnt/disk/var/lib/etcd")
        );
        assert_eq!(
            under(Path::new("/"), Path::new("/var/lib/etcd")),
            Path::new("/var/lib/etcd")
        );
    }
}
