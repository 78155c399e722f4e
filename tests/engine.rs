//! The native snapshot engine against the upstream tools, for etcd 3.5, 3.6 and 3.7 each:
//! `etcdguard verify` equals that version's `etcdutl snapshot status`, and
//! `etcdguard restore-datadir --target-version V` builds what `etcdutl snapshot restore` of V
//! builds (WAL and .snap byte for byte where etcdutl itself is deterministic, the same db
//! status), on which a real etcd V starts (`ETCD_VERIFY=all`) with the planned identity and the
//! source's data. Plus the cross-version matrix of the version rules, against real servers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use etcdguard::restore::datadir::{resolve, RestorePlan};

use crate::util::etcd::{EtcdServer, MemberSpec};
use crate::util::pki::Pki;
use crate::util::schema;
use crate::util::{
    assert_stderr_has, db_buckets, etcd_binary, etcdguard, etcdguard_cmd, free_port, list_dir,
    restore_datadir, restore_datadir_args, stderr, stdout, PEER_URL,
};

const WAL: &str = "member/wal/0000000000000000-0000000000000000.wal";

fn etcdutl(version: &str, args: &[&str]) -> Output {
    Command::new(etcd_binary(version, "etcdutl"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// etcdutl's status fields for `path`, and ours.
fn statuses(version: &str, path: &Path, skip_hash: bool) -> (Value, Value) {
    let theirs = json(&etcdutl(
        version,
        &["snapshot", "status", "-w", "json", path.to_str().unwrap()],
    ));
    let mut args = vec!["verify", path.to_str().unwrap(), "--output", "json"];
    if skip_hash {
        args.push("--skip-hash-check");
    }
    let out = etcdguard(&args);
    schema::assert_valid("verify.v1", &stdout(&out));
    let ours = json(&out);
    // The live keys counted with 50 entries in memory (sorted on disk): the same status.
    let spilled = etcdguard_cmd(&args)
        .env("ETCDGUARD_TEST_SORT_IN_MEMORY", "50")
        .output()
        .unwrap();
    assert_eq!(json(&spilled), ours, "verify sorting on disk");
    (theirs, ours)
}

/// Every field etcdutl `version` prints equals ours (a snapshot's own etcdutl is the default).
fn assert_status_equal(version: &str, path: &Path, skip_hash: bool) -> Value {
    let (theirs, ours) = statuses(version, path, skip_hash);
    let fields = theirs.as_object().expect("etcdutl prints an object");
    let expected: &[&str] = if version == "3.5" {
        &["hash", "revision", "totalKey", "totalSize"]
    } else {
        &["hash", "revision", "totalKey", "totalSize", "version"]
    };
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(
        names, want,
        "etcdutl {version} prints other fields: {theirs:#}"
    );
    for (f, v) in fields {
        assert_eq!(
            &ours[f],
            v,
            "{f} of {}: ours {ours:#}, etcdutl {version} {theirs:#}",
            path.display()
        );
    }
    assert_eq!(ours["statusAs"], version, "{ours:#}");
    theirs
}

fn save(server: &EtcdServer, path: &Path, extra: &[&str]) {
    let mut args = extra.to_vec();
    args.extend(["snapshot", "save", path.to_str().unwrap()]);
    let out = server.etcdctl(&args);
    assert!(out.status.success(), "snapshot save: {}", stderr(&out));
}

fn ctl(server: &EtcdServer, args: &[&str]) -> String {
    let out = server.etcdctl(args);
    assert!(out.status.success(), "etcdctl {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// A source server of `version` and three snapshots: (a) a few keys, (b) thousands of keys
/// with values over a page (overflow pages, branch pages), deletes, overwrites, a compaction
/// and a defragmentation, (c) leases, users, roles, auth enabled, and a member that was added
/// and removed again (it sits in `members_removed`).
struct Snapshots {
    _dir: tempfile::TempDir,
    version: String,
    few: PathBuf,
    many: PathBuf,
    auth: PathBuf,
    /// hashkv and revision of the source when `many` was taken.
    many_hashkv: u64,
    many_revision: i64,
}

fn hashkv(server: &EtcdServer, extra: &[&str]) -> (u64, i64) {
    let mut args = extra.to_vec();
    args.extend(["endpoint", "hashkv", "-w", "json"]);
    let v: Value = serde_json::from_str(&ctl(server, &args)).unwrap();
    let h = &v[0]["HashKV"];
    (
        h["hash"].as_u64().unwrap(),
        h["compact_revision"].as_i64().unwrap_or(0),
    )
}

fn make_snapshots(version: &str) -> Snapshots {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"));
    let src = EtcdServer::start(version, "src", &dir.path().join("src"), &pki.dir);
    for i in 0..5 {
        ctl(&src, &["put", &format!("/registry/few/{i}"), "v"]);
    }
    let few = dir.path().join("few.db");
    save(&src, &few, &[]);

    src.put_keys("pods", 3000);
    for i in (0..3000).step_by(10) {
        ctl(&src, &["del", &format!("/registry/pods/{i:06}")]);
    }
    let mid = src.revision();
    for i in (5..3000).step_by(100) {
        ctl(
            &src,
            &["put", &format!("/registry/pods/{i:06}"), "overwritten"],
        );
    }
    ctl(&src, &["compact", "--physical", &mid.to_string()]);
    ctl(&src, &["defrag"]);
    let many = dir.path().join("many.db");
    let (many_hashkv, _) = hashkv(&src, &[]);
    let many_revision = src.revision();
    save(&src, &many, &[]);

    // A member added (as a learner: no quorum change) and removed again.
    let added = ctl(
        &src,
        &[
            "member",
            "add",
            "gone",
            "--learner",
            &format!("--peer-urls=https://127.0.0.1:{}", free_port()),
            "-w",
            "json",
        ],
    );
    let added: Value = serde_json::from_str(&added).unwrap();
    let gone_id = format!("{:x}", added["member"]["ID"].as_u64().unwrap());
    ctl(&src, &["member", "remove", &gone_id]);
    let lease = ctl(&src, &["lease", "grant", "3600"]);
    let lease_id = lease.split_whitespace().nth(1).unwrap().to_string();
    ctl(
        &src,
        &[
            "put",
            "/registry/leased",
            "x",
            &format!("--lease={lease_id}"),
        ],
    );
    ctl(&src, &["user", "add", "root:rootpw"]);
    let _ = src.etcdctl(&["user", "grant-role", "root", "root"]);
    ctl(&src, &["role", "add", "reader"]);
    ctl(
        &src,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/registry/",
            "--prefix=true",
        ],
    );
    ctl(&src, &["user", "add", "alice:alicepw"]);
    ctl(&src, &["user", "grant-role", "alice", "reader"]);
    ctl(&src, &["auth", "enable"]);
    let auth = dir.path().join("auth.db");
    save(&src, &auth, &["--user", "root:rootpw"]);
    Snapshots {
        _dir: dir,
        version: version.to_string(),
        few,
        many,
        auth,
        many_hashkv,
        many_revision,
    }
}

per_version!(verify_and_restore_equal_etcdutl =>
    etcd_3_5_verify_and_restore_equal_etcdutl: "3.5",
    etcd_3_6_verify_and_restore_equal_etcdutl: "3.6",
    etcd_3_7_verify_and_restore_equal_etcdutl: "3.7",
);

fn verify_and_restore_equal_etcdutl(version: &str) {
    let s = make_snapshots(version);
    for snap in [&s.few, &s.many, &s.auth] {
        assert_status_equal(version, snap, false);
    }

    let work = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peer = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
    let three = (0..3)
        .map(|i| format!("m{i}={}", peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    let bump = ["--bump-revision", "1000000000", "--mark-compacted"];
    let mut case = 0;
    for snap in [&s.few, &s.many, &s.auth] {
        for (cluster, members) in [(format!("m0={}", peer(0)), 1), (three.clone(), 3)] {
            for extra in [&[][..], &bump[..]] {
                for m in 0..members {
                    case += 1;
                    let name = format!("m{m}");
                    let mut args = vec![
                        "--name".to_string(),
                        name.clone(),
                        "--initial-cluster".into(),
                        cluster.clone(),
                        "--initial-advertise-peer-urls".into(),
                        peer(m),
                        "--initial-cluster-token".into(),
                        "restore-tok".into(),
                    ];
                    args.extend(extra.iter().map(|x| x.to_string()));
                    let theirs = work.path().join(format!("{case}-etcdutl"));
                    let ours = work.path().join(format!("{case}-etcdguard"));
                    compare_restores(&s.version, snap, &args, &theirs, &ours, members);
                }
            }
        }
    }
}

/// The v2 store JSON inside a `.snap`, with the raft snapshot's metadata bytes: `snappb`'s
/// data (field 2) is a `raftpb.Snapshot` whose field 1 is the JSON and field 2 the metadata.
fn decode_snap(file: &[u8]) -> (Value, Vec<u8>) {
    fn fields(b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        let varint = |i: &mut usize| {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[*i];
                *i += 1;
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        };
        while i < b.len() {
            let tag = varint(&mut i);
            match tag & 7 {
                0 => {
                    let v = varint(&mut i);
                    out.push((tag >> 3, v.to_le_bytes().to_vec()));
                }
                2 => {
                    let len = varint(&mut i) as usize;
                    out.push((tag >> 3, b[i..i + len].to_vec()));
                    i += len;
                }
                w => panic!("wire type {w} in a .snap"),
            }
        }
        out
    }
    let data = fields(file)
        .into_iter()
        .find(|(f, _)| *f == 2)
        .expect("snappb data")
        .1;
    let raft = fields(&data);
    let json = &raft.iter().find(|(f, _)| *f == 1).expect("raft data").1;
    let meta = raft
        .iter()
        .find(|(f, _)| *f == 2)
        .expect("metadata")
        .1
        .clone();
    (serde_json::from_slice(json).unwrap(), meta)
}

/// The membership a v2 store holds: every leaf node's path and value, without the indexes
/// (etcd 3.6 creates the member nodes in Go map order, so its indexes vary from run to run).
fn v2_leaves(v: &Value, out: &mut Vec<(String, String)>) {
    if let Some(children) = v.get("Children").and_then(Value::as_object) {
        for c in children.values() {
            v2_leaves(c, out);
        }
    } else if let (Some(p), Some(val)) = (v["Path"].as_str(), v["Value"].as_str()) {
        out.push((p.to_string(), val.to_string()));
    }
}

/// Restores `snap` with both tools and compares what they built.
fn compare_restores(
    version: &str,
    snap: &Path,
    args: &[String],
    theirs: &Path,
    ours: &Path,
    members: usize,
) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut up = vec!["snapshot", "restore", snap.to_str().unwrap(), "--data-dir"];
    up.push(theirs.to_str().unwrap());
    up.extend(&a);
    let out = etcdutl(version, &up);
    assert!(
        out.status.success(),
        "etcdutl {version} restore {a:?}: {}",
        stderr(&out)
    );
    let mut me = vec!["restore-datadir", snap.to_str().unwrap(), "--data-dir"];
    me.push(ours.to_str().unwrap());
    me.extend(&a);
    me.extend(["--target-version", version]);
    let out = etcdguard(&me);
    assert!(
        out.status.success(),
        "etcdguard restore-datadir {a:?}: {}",
        stderr(&out)
    );

    let files = |d: &Path| {
        let mut v = Vec::new();
        for sub in ["member/snap", "member/wal"] {
            for f in list_dir(&d.join(sub)) {
                v.push(format!("{sub}/{f}"));
            }
        }
        v
    };
    assert_eq!(files(theirs), files(ours), "{a:?}");
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let wal = read(ours, WAL);
    assert_eq!(wal.len(), 64_000_000);
    assert!(
        wal == read(theirs, WAL),
        "WAL differs from etcdutl {version}'s for {a:?}"
    );
    let snapfile = files(ours)
        .into_iter()
        .find(|f| f.ends_with(".snap"))
        .expect(".snap written");
    let (o, t) = (read(ours, &snapfile), read(theirs, &snapfile));
    if version != "3.5" && members > 1 {
        // etcdutl ≥ 3.6 creates the member nodes in Go map order: equal after decoding.
        let ((oj, om), (tj, tm)) = (decode_snap(&o), decode_snap(&t));
        assert_eq!(om, tm, ".snap metadata differs for {a:?}");
        let (mut ol, mut tl) = (Vec::new(), Vec::new());
        v2_leaves(&oj["Root"], &mut ol);
        v2_leaves(&tj["Root"], &mut tl);
        ol.sort();
        tl.sort();
        assert_eq!(ol, tl, ".snap membership differs for {a:?}");
        assert_eq!(oj["CurrentIndex"], tj["CurrentIndex"]);
    } else {
        assert!(o == t, ".snap differs from etcdutl {version}'s for {a:?}");
    }
    // Same content in the db, whatever the page layout: every status field of that version's
    // etcdutl, on both dbs.
    let status = |d: &Path| {
        json(&etcdutl(
            version,
            &[
                "snapshot",
                "status",
                "-w",
                "json",
                d.join("member/snap/db").to_str().unwrap(),
            ],
        ))
    };
    let (t, o) = (status(theirs), status(ours));
    for f in ["hash", "revision", "totalKey", "version"] {
        assert_eq!(o[f], t[f], "{f} of the restored db for {a:?}");
    }
    let buckets = |d: &Path| db_buckets(&d.join("member/snap/db"));
    let (tb, ob) = (buckets(theirs), buckets(ours));
    assert_eq!(
        tb.keys().collect::<Vec<_>>(),
        ob.keys().collect::<Vec<_>>(),
        "bucket names for {a:?}"
    );
    for (name, items) in &tb {
        assert!(ob[name] == *items, "bucket {name} differs for {a:?}");
    }
    // And our own status reader agrees with etcdutl on a raw db (no trailer) too.
    assert_status_equal(version, &ours.join("member/snap/db"), true);
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [
        (ours.to_path_buf(), 0o700),
        (ours.join("member"), 0o700),
        (ours.join("member/wal"), 0o700),
        (ours.join("member/snap/db"), 0o600),
        (ours.join(WAL), 0o600),
    ] {
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{}", p.display());
    }
    if version == "3.5" {
        let check = Command::new(etcd_binary("3.5", "etcdutl"))
            .args(["check", "v2store", "--data-dir", ours.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            stdout(&check).contains("No custom content found in v2store"),
            "{}{}",
            stdout(&check),
            stderr(&check)
        );
    }
}

fn plan(name: &str, cluster: &str, peer: &str, bump: u64) -> RestorePlan {
    RestorePlan {
        name: name.into(),
        initial_cluster: cluster.into(),
        advertise_peer_urls: peer.into(),
        token: "boot-tok".into(),
        bump_revision: bump,
        mark_compacted: bump > 0,
    }
}

fn restore_ours(version: &str, snap: &Path, p: &RestorePlan, dir: &Path) {
    let bump = p.bump_revision.to_string();
    let extra: &[&str] = if p.bump_revision > 0 {
        &["--bump-revision", &bump, "--mark-compacted"]
    } else {
        &[]
    };
    let out = restore_datadir(snap, dir, p, version, extra);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn endpoint_status(server: &EtcdServer) -> Value {
    let v: Value =
        serde_json::from_str(&ctl(server, &["endpoint", "status", "-w", "json"])).unwrap();
    v[0]["Status"].clone()
}

/// Starts a member of `version` on `dir` with etcd's own consistency checks on.
fn start_verified(version: &str, spec: MemberSpec) -> EtcdServer {
    EtcdServer::spawn_member_env(version, spec, &[("ETCD_VERIFY", "all")])
}

/// Restores `snap` with our engine as the one member `name` (revision bumped by `bump`) under
/// `work`, and starts a verifying etcd of `version` on it, healthy: the server, the plan and
/// the member's peer URL.
fn start_one(
    version: &str,
    snap: &Path,
    name: &str,
    bump: u64,
    pki: &Pki,
    work: &Path,
) -> (EtcdServer, RestorePlan, String) {
    let (cp, pp) = (free_port(), free_port());
    let peer = format!("https://127.0.0.1:{pp}");
    let p = plan(name, &format!("{name}={peer}"), &peer, bump);
    let dir = work.join(name);
    restore_ours(version, snap, &p, &dir);
    let mut server = start_verified(
        version,
        MemberSpec {
            name: name.into(),
            data_dir: dir,
            pki_dir: pki.dir.clone(),
            client_port: cp,
            peer_port: pp,
            initial_cluster: format!("{name}={peer}"),
        },
    );
    assert!(
        server.wait_healthy(Duration::from_secs(30)),
        "{}",
        server.log_tail()
    );
    (server, p, peer)
}

per_version!(etcd_starts_on_restored_dirs =>
    etcd_3_5_starts_on_restored_dirs: "3.5",
    etcd_3_6_starts_on_restored_dirs: "3.6",
    etcd_3_7_starts_on_restored_dirs: "3.7",
);

/// A real etcd of `version` on what we build for it, 1 and 3 members, with and without the
/// bump: the planned IDs, the source's data (hashkv), the bump and the compaction, and only
/// the planned members (the removed one stays removed).
fn etcd_starts_on_restored_dirs(version: &str) {
    let s = make_snapshots(version);
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(&work.path().join("pki"));

    // One member, no bump: same data (hashkv), computed IDs, the snapshot's revision.
    let (mut solo, p1, peer) = start_one(version, &s.many, "solo", 0, &pki, work.path());
    let expected = resolve(&p1).unwrap();
    let st = endpoint_status(&solo);
    assert_eq!(
        st["header"]["cluster_id"].as_u64(),
        Some(expected.cluster_id)
    );
    assert_eq!(st["header"]["member_id"].as_u64(), Some(expected.this().id));
    assert_eq!(st["header"]["revision"].as_i64(), Some(s.many_revision));
    assert_eq!(
        hashkv(&solo, &[]).0,
        s.many_hashkv,
        "restored data differs from the source"
    );
    let members: Value =
        serde_json::from_str(&ctl(&solo, &["member", "list", "-w", "json"])).unwrap();
    let m = &members["members"][0];
    assert_eq!(
        (m["name"].as_str(), m["peerURLs"][0].as_str()),
        (Some("solo"), Some(peer.as_str()))
    );
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    solo.stop();

    // One member with the bump, from the snapshot that remembers a removed member: revision
    // + 1e9, older revisions compacted, writes continue, the removed member does not return.
    let (mut bumped, _, _) =
        start_one(version, &s.auth, "bumped", 1_000_000_000, &pki, work.path());
    let root = ["--user", "root:rootpw"];
    let (_, compact) = hashkv(&bumped, &root);
    let auth_rev = json_status_rev(version, &s.auth);
    assert_eq!(compact, auth_rev + 1_000_000_000);
    let old = bumped.etcdctl(&[
        "--user",
        "root:rootpw",
        "get",
        "/registry/leased",
        &format!("--rev={auth_rev}"),
    ]);
    assert_stderr_has(&old, "compacted");
    let put = ctl(
        &bumped,
        &[
            "--user",
            "root:rootpw",
            "put",
            "/registry/after",
            "y",
            "-w",
            "json",
        ],
    );
    let put: Value = serde_json::from_str(&put).unwrap();
    assert_eq!(
        put["header"]["revision"].as_i64(),
        Some(auth_rev + 1_000_000_001)
    );
    // Auth, users and the lease came through; the removed member did not.
    assert!(ctl(&bumped, &["--user", "root:rootpw", "user", "list"]).contains("alice"));
    assert!(ctl(&bumped, &["--user", "root:rootpw", "lease", "list"]).contains("found 1 leases"));
    let members: Value = serde_json::from_str(&ctl(
        &bumped,
        &["--user", "root:rootpw", "member", "list", "-w", "json"],
    ))
    .unwrap();
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bumped"], "{members:#}");
    bumped.stop();

    // Three members from one snapshot and plan: one leader, equal hashkv, the source's data.
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, pp))| format!("c{i}=https://127.0.0.1:{pp}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers = Vec::new();
    for (i, (cp, pp)) in ports.iter().enumerate() {
        let name = format!("c{i}");
        let peer = format!("https://127.0.0.1:{pp}");
        let dir = work.path().join(&name);
        restore_ours(version, &s.many, &plan(&name, &cluster, &peer, 0), &dir);
        servers.push(start_verified(
            version,
            MemberSpec {
                name,
                data_dir: dir,
                pki_dir: pki.dir.clone(),
                client_port: *cp,
                peer_port: *pp,
                initial_cluster: cluster.clone(),
            },
        ));
    }
    for s in &mut servers {
        assert!(s.wait_healthy(Duration::from_secs(60)), "{}", s.log_tail());
    }
    let expected = resolve(&plan(
        "c0",
        &cluster,
        &format!("https://127.0.0.1:{}", ports[0].1),
        0,
    ))
    .unwrap();
    let mut leaders = std::collections::BTreeSet::new();
    for srv in &servers {
        let st = endpoint_status(srv);
        assert_eq!(
            st["header"]["cluster_id"].as_u64(),
            Some(expected.cluster_id)
        );
        leaders.insert(st["leader"].as_u64().unwrap());
        assert_eq!(
            hashkv(srv, &[]).0,
            s.many_hashkv,
            "{} differs from the source",
            srv.name
        );
    }
    assert_eq!(
        leaders.len(),
        1,
        "members disagree on the leader: {leaders:?}"
    );
    let members: Value =
        serde_json::from_str(&ctl(&servers[0], &["member", "list", "-w", "json"])).unwrap();
    let mut names: Vec<(String, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["peerURLs"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    names.sort();
    let mut planned: Vec<(String, String)> = expected
        .members
        .iter()
        .map(|m| (m.name.clone(), m.peer_urls[0].clone()))
        .collect();
    planned.sort();
    assert_eq!(names, planned);
}

fn json_status_rev(version: &str, snap: &Path) -> i64 {
    json(&etcdutl(
        version,
        &["snapshot", "status", "-w", "json", snap.to_str().unwrap()],
    ))["revision"]
        .as_i64()
        .unwrap()
}

#[test]
fn bad_input_is_refused_and_nothing_is_created() {
    let s = {
        // A small snapshot is enough here.
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(&dir.path().join("pki"));
        let src = EtcdServer::start("3.5", "src", &dir.path().join("src"), &pki.dir);
        src.put_keys("x", 50);
        let p = dir.path().join("s.db");
        save(&src, &p, &[]);
        (dir, p)
    };
    let snap = &s.1;
    let work = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(snap).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = work.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x10;
    let flipped = write("flipped.db", &flipped);
    let raw = write("raw.db", &bytes[..bytes.len() - 32]);
    let target = work.path().join("out");
    // restore-datadir of `snap` into the target as `name` advertising `peer`, then `extra`.
    let full = |snap: &Path, name: &str, peer: &str, extra: &[&str]| {
        restore_datadir_args(snap, &target, name, peer, "t", extra)
    };
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            full(&flipped, "n1", PEER_URL, &[]),
            1,
            "is corrupt: its sha256 trailer says",
        ),
        (full(&raw, "n1", PEER_URL, &[]), 1, "has no sha256 trailer"),
        (
            full(
                snap,
                "n9",
                PEER_URL,
                &["--initial-cluster", "n1=https://127.0.0.1:2380"],
            ),
            2,
            "couldn't find local name \"n9\"",
        ),
        (
            full(
                snap,
                "n1",
                PEER_URL,
                &[
                    "--initial-cluster",
                    "n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2380",
                ],
            ),
            2,
            "appears twice",
        ),
        (
            full(snap, "n1", "https://127.0.0.1:2380/x", &[]),
            2,
            "must not contain a path",
        ),
        (full(snap, "n1", "127.0.0.1:2380", &[]), 2, "not a URL"),
        (
            full(snap, "n1", PEER_URL, &["--bump-revision", "10"]),
            2,
            "--mark-compacted is required",
        ),
        (
            full(snap, "n1", PEER_URL, &["--mark-compacted"]),
            2,
            "needs --bump-revision",
        ),
    ];
    let before = list_dir(work.path());
    for (args, code, needle) in cases {
        let out = etcdguard(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert_eq!(
            list_dir(work.path()),
            before,
            "{args:?} left something behind"
        );
    }
    // A raw db with the explicit flag is fine.
    let out = etcdguard(&full(&raw, "n1", PEER_URL, &["--skip-hash-check"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // A target that is not empty is refused and left exactly as it was.
    let out = etcdguard(&full(snap, "n1", PEER_URL, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "is not empty");
    assert_eq!(list_dir(&target), ["member"]);
    assert!(
        !list_dir(work.path()).iter().any(|n| n.starts_with('.')),
        "staging left behind"
    );
}
