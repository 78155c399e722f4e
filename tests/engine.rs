//! The native snapshot engine against the upstream tools: `etcdguard verify` equals
//! `etcdutl snapshot status`, and `etcdguard restore-datadir` builds what
//! `etcdutl snapshot restore` builds (WAL and .snap byte for byte, the same db status hash), on
//! which a real etcd 3.5 starts with the planned identity and the source's data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use etcdguard::restore::datadir::{resolve, RestorePlan};

use crate::util::etcd::{EtcdServer, MemberSpec};
use crate::util::pki::Pki;
use crate::util::{etcd_binary, etcdguard, free_port, list_dir, stderr, stdout};

const WAL: &str = "member/wal/0000000000000000-0000000000000000.wal";

fn etcdutl(args: &[&str]) -> Output {
    Command::new(etcd_binary("3.5", "etcdutl"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// etcdutl's four status fields for `path`, and ours.
fn statuses(path: &Path, skip_hash: bool) -> (Value, Value) {
    let theirs = json(&etcdutl(&[
        "snapshot",
        "status",
        "-w",
        "json",
        path.to_str().unwrap(),
    ]));
    let mut args = vec!["verify", path.to_str().unwrap(), "--output", "json"];
    if skip_hash {
        args.push("--skip-hash-check");
    }
    let ours = json(&etcdguard(&args));
    (theirs, ours)
}

fn assert_status_equal(path: &Path, skip_hash: bool, exact_size: bool) -> Value {
    let (theirs, ours) = statuses(path, skip_hash);
    let mut fields = vec!["hash", "revision", "totalKey"];
    if exact_size {
        fields.push("totalSize");
    }
    for f in fields {
        assert_eq!(
            ours[f],
            theirs[f],
            "{f} of {}: ours {ours:#}, etcdutl {theirs:#}",
            path.display()
        );
    }
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

/// A source cluster and four snapshots: (a) a few keys, (b) thousands of keys with values
/// over a page (overflow pages, branch pages), deletes and overwrites, (c) leases, users,
/// roles and auth enabled, (d) an etcd 3.4 server's.
struct Snapshots {
    _dir: tempfile::TempDir,
    few: PathBuf,
    many: PathBuf,
    auth: PathBuf,
    v34: PathBuf,
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

fn make_snapshots() -> Snapshots {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"));
    let src = EtcdServer::start("3.5", "src", &dir.path().join("src"), &pki.dir);
    for i in 0..5 {
        ctl(&src, &["put", &format!("/registry/few/{i}"), "v"]);
    }
    let few = dir.path().join("few.db");
    save(&src, &few, &[]);

    src.put_keys("pods", 3000);
    for i in (0..3000).step_by(10) {
        ctl(&src, &["del", &format!("/registry/pods/{i:06}")]);
    }
    for i in (5..3000).step_by(100) {
        ctl(
            &src,
            &["put", &format!("/registry/pods/{i:06}"), "overwritten"],
        );
    }
    let many = dir.path().join("many.db");
    let (many_hashkv, _) = hashkv(&src, &[]);
    let many_revision = src.revision();
    save(&src, &many, &[]);

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

    let old = EtcdServer::start("3.4", "old", &dir.path().join("old"), &pki.dir);
    old.put_keys("v34", 800);
    let v34 = dir.path().join("v34.db");
    save(&old, &v34, &[]);
    Snapshots {
        _dir: dir,
        few,
        many,
        auth,
        v34,
        many_hashkv,
        many_revision,
    }
}

#[test]
fn verify_equals_etcdutl_status_and_restore_equals_etcdutl_restore() {
    let s = make_snapshots();
    for snap in [&s.few, &s.many, &s.auth, &s.v34] {
        assert_status_equal(snap, false, true);
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
    for snap in [&s.few, &s.many, &s.auth, &s.v34] {
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
                    compare_restores(snap, &args, &theirs, &ours);
                }
            }
        }
    }
}

/// Restores `snap` with both tools and compares what they built.
fn compare_restores(snap: &Path, args: &[String], theirs: &Path, ours: &Path) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut up = vec!["snapshot", "restore", snap.to_str().unwrap(), "--data-dir"];
    up.push(theirs.to_str().unwrap());
    up.extend(&a);
    let out = etcdutl(&up);
    assert!(
        out.status.success(),
        "etcdutl restore {a:?}: {}",
        stderr(&out)
    );
    let mut me = vec!["restore-datadir", snap.to_str().unwrap(), "--data-dir"];
    me.push(ours.to_str().unwrap());
    me.extend(&a);
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
    assert!(wal == read(theirs, WAL), "WAL differs for {a:?}");
    let snapfile = files(ours)
        .into_iter()
        .find(|f| f.ends_with(".snap"))
        .expect(".snap written");
    assert_eq!(
        read(ours, &snapfile),
        read(theirs, &snapfile),
        ".snap differs for {a:?}"
    );
    // Same content in the db, whatever the page layout.
    let t = json(&etcdutl(&[
        "snapshot",
        "status",
        "-w",
        "json",
        theirs.join("member/snap/db").to_str().unwrap(),
    ]));
    let o = json(&etcdutl(&[
        "snapshot",
        "status",
        "-w",
        "json",
        ours.join("member/snap/db").to_str().unwrap(),
    ]));
    for f in ["hash", "revision", "totalKey"] {
        assert_eq!(o[f], t[f], "{f} of the restored db for {a:?}");
    }
    // And our own status reader agrees with etcdutl on a raw db (no trailer) too.
    assert_status_equal(&ours.join("member/snap/db"), true, true);
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

fn restore_ours(snap: &Path, p: &RestorePlan, dir: &Path) {
    let mut args = vec![
        "restore-datadir".to_string(),
        snap.display().to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--name".into(),
        p.name.clone(),
        "--initial-cluster".into(),
        p.initial_cluster.clone(),
        "--initial-advertise-peer-urls".into(),
        p.advertise_peer_urls.clone(),
        "--initial-cluster-token".into(),
        p.token.clone(),
    ];
    if p.bump_revision > 0 {
        args.extend([
            "--bump-revision".into(),
            p.bump_revision.to_string(),
            "--mark-compacted".into(),
        ]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = etcdguard(&a);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn endpoint_status(server: &EtcdServer) -> Value {
    let v: Value =
        serde_json::from_str(&ctl(server, &["endpoint", "status", "-w", "json"])).unwrap();
    v[0]["Status"].clone()
}

#[test]
fn etcd_starts_on_restored_dirs_with_the_planned_identity_and_the_source_data() {
    let s = make_snapshots();
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(&work.path().join("pki"));

    // One member, no bump: same data (hashkv), computed IDs, the snapshot's revision.
    let (cp, pp) = (free_port(), free_port());
    let peer = format!("https://127.0.0.1:{pp}");
    let p1 = plan("solo", &format!("solo={peer}"), &peer, 0);
    let dir = work.path().join("solo");
    restore_ours(&s.many, &p1, &dir);
    let mut solo = EtcdServer::spawn_member(
        "3.5",
        MemberSpec {
            name: "solo".into(),
            data_dir: dir.clone(),
            pki_dir: pki.dir.clone(),
            client_port: cp,
            peer_port: pp,
            initial_cluster: format!("solo={peer}"),
        },
    );
    assert!(
        solo.wait_healthy(Duration::from_secs(30)),
        "{}",
        solo.log_tail()
    );
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

    // One member with the bump: revision + 1e9, older revisions compacted, writes continue.
    let (cp, pp) = (free_port(), free_port());
    let peer = format!("https://127.0.0.1:{pp}");
    let pb = plan("bumped", &format!("bumped={peer}"), &peer, 1_000_000_000);
    let dir = work.path().join("bumped");
    restore_ours(&s.auth, &pb, &dir);
    let mut bumped = EtcdServer::spawn_member(
        "3.5",
        MemberSpec {
            name: "bumped".into(),
            data_dir: dir,
            pki_dir: pki.dir.clone(),
            client_port: cp,
            peer_port: pp,
            initial_cluster: format!("bumped={peer}"),
        },
    );
    assert!(
        bumped.wait_healthy(Duration::from_secs(30)),
        "{}",
        bumped.log_tail()
    );
    let root = ["--user", "root:rootpw"];
    let (_, compact) = hashkv(&bumped, &root);
    let auth_rev = json_status_rev(&s.auth);
    assert_eq!(compact, auth_rev + 1_000_000_000);
    let old = bumped.etcdctl(&[
        "--user",
        "root:rootpw",
        "get",
        "/registry/leased",
        &format!("--rev={auth_rev}"),
    ]);
    assert!(stderr(&old).contains("compacted"), "{}", stderr(&old));
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
    // Auth, users and the lease came through.
    assert!(ctl(&bumped, &["--user", "root:rootpw", "user", "list"]).contains("alice"));
    assert!(ctl(&bumped, &["--user", "root:rootpw", "lease", "list"]).contains("found 1 leases"));
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
        restore_ours(&s.many, &plan(&name, &cluster, &peer, 0), &dir);
        servers.push(EtcdServer::spawn_member(
            "3.5",
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

fn json_status_rev(snap: &Path) -> i64 {
    json(&etcdutl(&[
        "snapshot",
        "status",
        "-w",
        "json",
        snap.to_str().unwrap(),
    ]))["revision"]
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
    let full = |snap: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "restore-datadir".into(),
            snap.display().to_string(),
            "--data-dir".into(),
            target.display().to_string(),
            "--initial-cluster-token".into(),
            "t".into(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let ok = [
        "--name",
        "n1",
        "--initial-advertise-peer-urls",
        "https://127.0.0.1:2380",
    ];
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            full(&flipped, &ok),
            1,
            "is corrupt: its sha256 trailer says",
        ),
        (full(&raw, &ok), 1, "has no sha256 trailer"),
        (
            full(
                snap,
                &[
                    "--name",
                    "n9",
                    "--initial-cluster",
                    "n1=https://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "https://127.0.0.1:2380",
                ],
            ),
            2,
            "couldn't find local name \"n9\"",
        ),
        (
            full(
                snap,
                &[
                    "--name",
                    "n1",
                    "--initial-cluster",
                    "n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "https://127.0.0.1:2380",
                ],
            ),
            2,
            "appears twice",
        ),
        (
            full(
                snap,
                &[
                    "--name",
                    "n1",
                    "--initial-advertise-peer-urls",
                    "https://127.0.0.1:2380/x",
                ],
            ),
            2,
            "must not contain a path",
        ),
        (
            full(
                snap,
                &[
                    "--name",
                    "n1",
                    "--initial-advertise-peer-urls",
                    "127.0.0.1:2380",
                ],
            ),
            2,
            "not a URL",
        ),
        (
            full(
                snap,
                &[
                    "--name",
                    "n1",
                    "--initial-advertise-peer-urls",
                    "https://127.0.0.1:2380",
                    "--bump-revision",
                    "10",
                ],
            ),
            2,
            "--mark-compacted is required",
        ),
        (
            full(
                snap,
                &[
                    "--name",
                    "n1",
                    "--initial-advertise-peer-urls",
                    "https://127.0.0.1:2380",
                    "--mark-compacted",
                ],
            ),
            2,
            "needs --bump-revision",
        ),
    ];
    let before = list_dir(work.path());
    for (args, code, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = etcdguard(&a);
        assert_eq!(out.status.code(), Some(code), "{a:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{a:?}: {}", stderr(&out));
        assert_eq!(list_dir(work.path()), before, "{a:?} left something behind");
    }
    // A raw db with the explicit flag is fine.
    let out = etcdguard(
        &full(&raw, &[&ok[..], &["--skip-hash-check"]].concat())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A target that is not empty is refused and left exactly as it was.
    let out = etcdguard(
        &full(snap, &ok)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(list_dir(&target), ["member"]);
    assert!(
        !list_dir(work.path()).iter().any(|n| n.starts_with('.')),
        "staging left behind"
    );
}
