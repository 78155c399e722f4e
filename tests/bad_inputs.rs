//! The bad-input catalogue (`docs/bad-inputs.md`): every row is run here, and its exit code and
//! message must be what the table says, word for word (temp paths shown as `<dir>`). Nothing
//! may change on disk for a refused input (checked for the state dir). To rewrite the table
//! after a deliberate change of wording: `ETCDGUARD_WRITE_BAD_INPUTS=1 cargo test --test
//! integration bad_input`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::encryption::age_key;
use crate::util::etcd::EtcdServer;
use crate::util::manifest::EtcdPod;
use crate::util::pki::Pki;
use crate::util::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use crate::util::{etcdguard_cmd, restore_datadir_args, stderr, NEWEST, PEER_URL};

/// A kubeadm-style node without a running etcd: PKI, manifest, a valid config, a snapshot.
struct Env {
    /// The row being run, and the configs it wrote (for their names).
    row: std::cell::Cell<usize>,
    configs: std::cell::Cell<usize>,
    dir: tempfile::TempDir,
    pki: Pki,
    snapshot: PathBuf,
    s3: S3Server,
}

impl Env {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn manifest(&self) -> PathBuf {
        self.p("etc/kubernetes/manifests/etcd.yaml")
    }

    /// The valid config with `top` prepended and `sections` appended (TOML text).
    fn config_with(&self, top: &str, sections: &str) -> PathBuf {
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        // An [etcd] key the row sets replaces the valid one.
        let etcd: String = [
            ("manifest", self.manifest()),
            ("ca_cert", self.pki.path("ca.crt")),
            ("client_cert", self.pki.path("healthcheck-client.crt")),
            ("client_key", self.pki.path("healthcheck-client.key")),
        ]
        .into_iter()
        .filter(|(k, _)| !sections.lines().any(|l| l.starts_with(&format!("{k} ="))))
        .map(|(k, v)| format!("{k} = {}\n", q(v)))
        .collect();
        let state = if top.contains("state_dir") {
            String::new()
        } else {
            format!("state_dir = {}\n", q(self.p("var/lib/etcdguard")))
        };
        let text = format!("{top}\n{state}\n[etcd]\n{etcd}{sections}\n");
        // Named by the row: the same name on every run.
        let n = self.configs.get() + 1;
        self.configs.set(n);
        let path = self.p(&format!("conf/row{}-{n}.toml", self.row.get()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path.to_owned()
    }

    fn config(&self, sections: &str) -> String {
        self.config_with("", sections).display().to_string()
    }

    fn remote(&self, bucket: &str, creds: &Path) -> String {
        format!(
            "[remote_storage]\nbucket = {bucket:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
             force_path_style = true\ncredentials_file = {:?}\nstall_timeout = \"3s\"\n",
            self.s3.endpoint,
            creds.display().to_string()
        )
    }

    /// An AWS credentials file with `secret`, mode `mode`.
    fn creds(&self, name: &str, secret: &str, mode: u32) -> PathBuf {
        let p = self.p(name);
        std::fs::write(
            &p,
            format!(
                "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// A file with `bytes` under the env dir.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.p(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("etc/kubernetes/pki/etcd"));
    // A real snapshot of a real etcd, made once.
    let etcd = EtcdServer::start(NEWEST, "cp1", &dir.path().join("src-etcd"), &pki.dir);
    etcd.put_keys("x", 20);
    let snapshot = dir.path().join("good.db");
    let out = etcd.etcdctl(&["snapshot", "save", snapshot.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(etcd);
    let manifests = dir.path().join("etc/kubernetes/manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let manifest = EtcdPod {
        version: NEWEST,
        name: "cp1",
        client_port: 2379,
        peer_port: 2380,
        metrics_port: 2381,
        initial_cluster: "cp1=https://127.0.0.1:2380",
        state: None,
    }
    .render();
    std::fs::write(manifests.join("etcd.yaml"), manifest).unwrap();
    let s3 = S3Server::s3s_fs(&dir.path().join("s3"), "etcd-backups");
    Env {
        row: Default::default(),
        configs: Default::default(),
        dir,
        pki,
        snapshot,
        s3,
    }
}

/// One row: what is wrong, and how to run it (setting up what it needs).
struct Row {
    area: &'static str,
    what: &'static str,
    exit: i32,
    run: fn(&Env) -> Vec<String>,
}

macro_rules! row {
    ($area:literal, $what:literal, $exit:literal, |$e:ident| $body:expr) => {
        Row {
            area: $area,
            what: $what,
            exit: $exit,
            run: |$e: &Env| -> Vec<String> { $body },
        }
    };
}

fn check(e: &Env, sections: &str) -> Vec<String> {
    vec![
        "--config".into(),
        e.config(sections),
        "config".into(),
        "check".into(),
    ]
}

fn check_top(e: &Env, top: &str) -> Vec<String> {
    let c = e.config_with(top, "");
    vec![
        "--config".into(),
        c.display().to_string(),
        "config".into(),
        "check".into(),
    ]
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn rows() -> Vec<Row> {
    vec![
        // ---- configuration values
        row!("config", "an unknown key (a typo)", 78, |e| check(
            e,
            "[local_storage]\nmin_kep = 2"
        )),
        row!("config", "a schedule with four fields", 78, |e| check_top(
            e,
            "schedule = \"0 */6 * *\""
        )),
        row!("config", "a schedule hour out of range", 78, |e| check_top(
            e,
            "schedule = \"0 25 * * *\""
        )),
        row!("config", "a time zone that does not exist", 78, |e| {
            check_top(e, "timezone = \"Moon/Base\"")
        }),
        row!("config", "a relative state_dir", 78, |e| {
            check_top(e, "state_dir = \"var/lib/etcdguard\"")
        }),
        row!("config", "a negative ttl", 78, |e| check(
            e,
            "[local_storage]\nttl = -3600"
        )),
        row!("config", "a ttl that is not a duration", 78, |e| check(
            e,
            "[local_storage]\nttl = \"a week\""
        )),
        row!("config", "keep smaller than min_keep", 78, |e| check(
            e,
            "[local_storage]\nkeep = 2\nmin_keep = 3"
        )),
        row!("config", "min_keep 0", 78, |e| check(
            e,
            "[local_storage]\nmin_keep = 0"
        )),
        row!(
            "config",
            "keep and its other name keep_last both set",
            78,
            |e| check(e, "[local_storage]\nkeep = 5\nkeep_last = 7")
        ),
        row!("config", "a tier of 0 periods", 78, |e| check(
            e,
            "[local_storage]\nkeep_daily = 0"
        )),
        row!("config", "paused given as a string", 78, |e| check_top(
            e,
            "paused = \"yes\""
        )),
        row!("config", "an http:// etcd endpoint", 78, |e| check(
            e,
            "endpoint = \"http://127.0.0.1:2379\""
        )),
        row!("config", "two etcd endpoints", 78, |e| check(
            e,
            "endpoint = \"https://a:2379,https://b:2379\""
        )),
        row!("config", "a metrics file not ending in .prom", 78, |e| {
            check_top(e, "metrics_file = \"/var/lib/node_exporter/etcdguard.txt\"")
        }),
        row!(
            "config",
            "a rate limit without a unit per second",
            78,
            |e| check(e, "rate_limit = \"50MiB\"")
        ),
        row!("config", "a records history limit of 0", 78, |e| check(
            e,
            "[records]\nsuccessful_history_limit = 0"
        )),
        row!("config", "a TOML syntax error", 78, |e| check_top(
            e,
            "schedule = \"@hourly"
        )),
        row!(
            "config",
            "remote storage without bucket and region",
            78,
            |e| check(e, "[remote_storage]\nendpoint = \"https://s3.example\"")
        ),
        row!("config", "a remote endpoint without scheme", 78, |e| check(
            e,
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nendpoint = \"s3.example.internal\""
        )),
        row!("config", "a remote part size below S3's minimum", 78, |e| {
            check(
                e,
                "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\npart_size = \"1MiB\"",
            )
        }),
        row!("config", "remote concurrency 0", 78, |e| check(
            e,
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nconcurrency = 0"
        )),
        row!(
            "config",
            "an unknown server-side encryption",
            78,
            |e| check(
                e,
                "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nsse = \"AES128\""
            )
        ),
        row!("config", "a KMS key id without sse = aws:kms", 78, |e| {
            check(
                e,
                "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nsse_kms_key_id = \"k1\"",
            )
        }),
        row!("config", "an unknown remote storage type", 78, |e| check(
            e,
            "[remote_storage]\ntype = \"ftp\"\nbucket = \"b\"\nregion = \"r\""
        )),
        row!(
            "config",
            "per = something else than node or cluster",
            78,
            |e| check(
                e,
                "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nper = \"everyone\""
            )
        ),
        row!("config", "a recipient that is not a public key", 78, |e| {
            check(e, "[encryption]\nrecipients = [\"age1notakey\"]")
        }),
        row!("config", "a private key pasted as a recipient", 78, |e| {
            check(e, "[encryption]\nrecipients = [\"AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\"]")
        }),
        row!("config", "encryption without any recipient", 78, |e| check(
            e,
            "[encryption]\ncompression = \"zstd\""
        )),
        row!("config", "a recipients file that does not exist", 78, |e| {
            check(
                e,
                "[encryption]\nrecipients_file = \"/etc/etcdguard/no-such-recipients.txt\"",
            )
        }),
        row!("config", "a zstd level out of range", 78, |e| {
            let (_, r) = age_key(e.dir.path(), "k1.txt");
            check(
                e,
                &format!("[encryption]\nrecipients = [{r:?}]\ncompression_level = 25"),
            )
        }),
        row!("config", "a bundle without encryption", 78, |e| check(
            e,
            "[bundle]\nextra_paths = []"
        )),
        row!(
            "config",
            "a drill of remote copies without remote storage",
            78,
            |e| check(e, "[drill]\nsource = \"remote\"")
        ),
        row!(
            "config",
            "a scheduled drill of sealed copies without an identity",
            78,
            |e| {
                let (_, r) = age_key(e.dir.path(), "k2.txt");
                check(e, &format!("[encryption]\nrecipients = [{r:?}]\nencrypt_local = true\n[drill]\nschedule = \"@weekly\""))
            }
        ),
        row!("config", "a --config file that does not exist", 78, |e| {
            vec![
                "--config".into(),
                e.p("nope.toml").display().to_string(),
                "records".into(),
            ]
        }),
        // ---- manifests
        row!("manifest", "the etcd manifest is missing", 78, |e| {
            check(
                e,
                &format!(
                    "manifest = {:?}",
                    e.p("nowhere/etcd.yaml").display().to_string()
                ),
            )
        }),
        row!("manifest", "the manifest is not YAML", 78, |e| {
            let m = e.file("m/notyaml.yaml", b"apiVersion: v1\nkind: Pod\n  spec: [\n");
            check(e, &format!("manifest = {m:?}"))
        }),
        row!(
            "manifest",
            "the manifest has no --listen-client-urls",
            78,
            |e| {
                let text = std::fs::read_to_string(e.manifest()).unwrap();
                let text: String = text
                    .lines()
                    .filter(|l| !l.contains("--listen-client-urls"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let m = e.file("m/nolisten.yaml", text.as_bytes());
                check(e, &format!("manifest = {m:?}"))
            }
        ),
        row!(
            "manifest",
            "the manifest listens on no loopback address",
            78,
            |e| {
                let text = std::fs::read_to_string(e.manifest()).unwrap().replace(
                    "--listen-client-urls=https://127.0.0.1:2379",
                    "--listen-client-urls=https://10.0.0.10:2379",
                );
                let m = e.file("m/remote.yaml", text.as_bytes());
                check(e, &format!("manifest = {m:?}"))
            }
        ),
        row!("manifest", "the manifest is another pod's", 78, |e| {
            let m = e.file("m/api.yaml", b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver]\n");
            check(e, &format!("manifest = {m:?}"))
        }),
        // ---- certificates and keys
        row!("tls", "the CA certificate is missing", 78, |e| check(
            e,
            &format!("ca_cert = {:?}", e.p("none/ca.crt").display().to_string())
        )),
        row!("tls", "the client key is readable by everyone", 78, |e| {
            let k = e.p("loose/healthcheck-client.key");
            std::fs::create_dir_all(k.parent().unwrap()).unwrap();
            std::fs::copy(e.pki.path("healthcheck-client.key"), &k).unwrap();
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
            check(e, &format!("client_key = {:?}", k.display().to_string()))
        }),
        row!("tls", "the client certificate has expired", 78, |e| {
            let (crt, key) = e.pki.issue(
                "expired",
                "kube-etcd-healthcheck-client",
                &[],
                false,
                true,
                -1,
            );
            check(
                e,
                &format!(
                    "client_cert = {:?}\nclient_key = {:?}",
                    crt.display().to_string(),
                    key.display().to_string()
                ),
            )
        }),
        row!("tls", "the client certificate is not PEM", 78, |e| {
            let c = e.file("tls/garbage.crt", b"not a certificate\n");
            check(e, &format!("client_cert = {c:?}"))
        }),
        row!(
            "tls",
            "the client key does not match the certificate",
            78,
            |e| {
                check(
                    e,
                    &format!(
                        "client_key = {:?}",
                        e.pki.path("server.key").display().to_string()
                    ),
                )
            }
        ),
        row!("tls", "a key given as the CA certificate", 78, |e| check(
            e,
            &format!("ca_cert = {:?}", e.pki.path("ca.key").display().to_string())
        )),
        // ---- remote storage
        row!("bucket", "the bucket does not exist", 78, |e| {
            let c = e.creds("creds-ok", SECRET_KEY, 0o600);
            let mut a = check(e, &e.remote("no-such-bucket", &c));
            a.push("--remote".into());
            a
        }),
        row!("bucket", "the secret key is wrong", 78, |e| {
            let c = e.creds("creds-bad", "wrong-secret-key-0000000000000000000", 0o600);
            let mut a = check(e, &e.remote("etcd-backups", &c));
            a.push("--remote".into());
            a
        }),
        row!(
            "bucket",
            "the credentials file is readable by others",
            78,
            |e| {
                let c = e.creds("creds-loose", SECRET_KEY, 0o644);
                let mut a = check(e, &e.remote("etcd-backups", &c));
                a.push("--remote".into());
                a
            }
        ),
        row!("bucket", "the credentials file is missing", 78, |e| {
            let mut a = check(e, &e.remote("etcd-backups", &e.p("no-creds")));
            a.push("--remote".into());
            a
        }),
        // ---- flags
        row!("flags", "an unknown command", 2, |_e| s(&["backup"])),
        row!("flags", "restore without --snapshot", 2, |_e| s(&[
            "restore", "--yes"
        ])),
        row!("flags", "restore-datadir without --name", 2, |e| s(&[
            "restore-datadir",
            e.snapshot.to_str().unwrap(),
            "--data-dir",
            "/tmp/x",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-cluster-token",
            "t"
        ])),
        row!(
            "flags",
            "a target version etcdguard does not build for",
            2,
            |e| restore_datadir_args(
                &e.snapshot,
                Path::new("/tmp/x"),
                "n",
                PEER_URL,
                "t",
                &["--target-version", "3.4"]
            )
        ),
        row!("flags", "a bump without --mark-compacted", 2, |e| {
            let extra = ["--bump-revision", "1000"];
            restore_datadir_args(&e.snapshot, &e.p("dd1"), "n", PEER_URL, "t", &extra)
        }),
        row!("flags", "a member not in --initial-cluster", 2, |e| {
            let extra = ["--initial-cluster", "cp1=https://127.0.0.1:2380"];
            restore_datadir_args(&e.snapshot, &e.p("dd2"), "cp9", PEER_URL, "t", &extra)
        }),
        row!("flags", "a peer URL with a path", 2, |e| {
            let peer = "https://127.0.0.1:2380/etcd";
            restore_datadir_args(&e.snapshot, &e.p("dd3"), "n", peer, "t", &[])
        }),
        row!("flags", "inspect --revision without --get", 2, |e| s(&[
            "inspect",
            e.snapshot.to_str().unwrap(),
            "--revision",
            "5"
        ])),
        row!("flags", "drill --remote with --snapshot", 2, |e| s(&[
            "--config",
            &e.config(""),
            "drill",
            "--remote",
            "--snapshot",
            "x"
        ])),
        row!("flags", "records --limit that is not a number", 2, |_e| s(
            &["records", "--limit", "ten"]
        )),
        row!(
            "flags",
            "restore --timeout that is not a duration",
            2,
            |_e| s(&["restore", "--snapshot", "x", "--timeout", "soon"])
        ),
        row!("flags", "decrypt without --identity", 2, |e| s(&[
            "decrypt",
            e.snapshot.to_str().unwrap(),
            "--output",
            "/tmp/out.db"
        ])),
        // ---- snapshot files
        row!(
            "snapshot",
            "verify of a file that does not exist",
            1,
            |e| s(&["verify", e.p("missing.db").to_str().unwrap()])
        ),
        row!("snapshot", "verify of an empty file", 1, |e| s(&[
            "verify",
            &e.file("s/empty.db", b"")
        ])),
        row!("snapshot", "verify of a truncated snapshot", 1, |e| {
            let b = std::fs::read(&e.snapshot).unwrap();
            s(&["verify", &e.file("s/truncated.db", &b[..b.len() / 2])])
        }),
        row!(
            "snapshot",
            "verify of a snapshot with a flipped byte",
            1,
            |e| {
                let mut b = std::fs::read(&e.snapshot).unwrap();
                let n = b.len();
                b[n - 200] ^= 0x20;
                s(&["verify", &e.file("s/flipped.db", &b)])
            }
        ),
        row!(
            "snapshot",
            "verify of a data dir's db (no trailer) without --skip-hash-check",
            1,
            |e| {
                let b = std::fs::read(&e.snapshot).unwrap();
                s(&["verify", &e.file("s/raw.db", &b[..b.len() - 32])])
            }
        ),
        row!(
            "snapshot",
            "verify of a file that is not a database",
            1,
            |e| {
                let mut b = vec![0x55u8; 8192];
                use sha2::Digest;
                let sum = sha2::Sha256::digest(&b);
                b.extend_from_slice(&sum);
                s(&["verify", &e.file("s/garbage.db", &b)])
            }
        ),
        row!(
            "snapshot",
            "verify of an encrypted copy without --identity",
            2,
            |e| {
                let f = e.file(
                    "s/copy.db.age",
                    b"age-encryption.org/v1\n-> X25519 abc\nxyz\n--- abc\n",
                );
                s(&["verify", &f])
            }
        ),
        row!(
            "snapshot",
            "decrypt with a key that does not open it",
            1,
            |e| {
                let (_, r) = age_key(e.dir.path(), "k3.txt");
                let (other, _) = age_key(e.dir.path(), "k4.txt");
                let sealed = e.p("s/sealed.db.age");
                let st = std::process::Command::new(crate::util::system_bin("age", "age"))
                    .args([
                        "-r",
                        &r,
                        "-o",
                        sealed.to_str().unwrap(),
                        e.snapshot.to_str().unwrap(),
                    ])
                    .status()
                    .unwrap();
                assert!(st.success());
                s(&[
                    "decrypt",
                    sealed.to_str().unwrap(),
                    "--identity",
                    other.to_str().unwrap(),
                    "--output",
                    e.p("s/out.db").to_str().unwrap(),
                ])
            }
        ),
        row!(
            "snapshot",
            "restore-datadir into a directory that is not empty",
            1,
            |e| {
                let d = e.p("full");
                std::fs::create_dir_all(d.join("member")).unwrap();
                restore_datadir_args(&e.snapshot, &d, "n", PEER_URL, "t", &[])
            }
        ),
        row!(
            "snapshot",
            "inspect --get of a key that is not there",
            1,
            |e| s(&[
                "inspect",
                e.snapshot.to_str().unwrap(),
                "--get",
                "/registry/pods/default/nope"
            ])
        ),
        row!(
            "snapshot",
            "inspect --get at a revision after the snapshot's",
            1,
            |e| s(&[
                "inspect",
                e.snapshot.to_str().unwrap(),
                "--get",
                "/registry/x/000001",
                "--revision",
                "999999"
            ])
        ),
        row!(
            "snapshot",
            "diff of a file that is not a database",
            1,
            |e| s(&[
                "diff",
                e.snapshot.to_str().unwrap(),
                &e.file("s/text.db", b"hello")
            ])
        ),
        // ---- records and journals
        row!("records", "records.json that does not parse", 1, |e| {
            std::fs::create_dir_all(e.p("var/lib/etcdguard")).unwrap();
            std::fs::set_permissions(
                e.p("var/lib/etcdguard"),
                std::fs::Permissions::from_mode(0o700),
            )
            .unwrap();
            std::fs::write(
                e.p("var/lib/etcdguard/records.json"),
                b"{\"version\":1,\"records\":[",
            )
            .unwrap();
            s(&["--config", &e.config(""), "records"])
        }),
        row!(
            "records",
            "records.json written by a newer release",
            1,
            |e| {
                std::fs::create_dir_all(e.p("var/lib/etcdguard")).unwrap();
                std::fs::write(
                    e.p("var/lib/etcdguard/records.json"),
                    b"{\"version\":2,\"records\":[]}",
                )
                .unwrap();
                s(&["--config", &e.config(""), "records"])
            }
        ),
        row!("records", "pin of a record that does not exist", 2, |e| {
            std::fs::write(
                e.p("var/lib/etcdguard/records.json"),
                b"{\"version\":1,\"records\":[]}",
            )
            .unwrap();
            s(&[
                "--config",
                &e.config(""),
                "pin",
                "20260101T000000.000Z-0000",
            ])
        }),
        row!("journal", "restore --rollback with no journal", 1, |e| {
            s(&[
                "--config",
                &e.config(""),
                "restore",
                "--rollback",
                "--root",
                e.p("rootfs").to_str().unwrap(),
                "--no-wait",
            ])
        }),
        row!(
            "journal",
            "restore --rollback of a journal that does not parse",
            1,
            |e| {
                let j = e.file(
                    "rootfs2/etc/kubernetes/tmp/etcdguard-restore-20261203T000000Z/journal.json",
                    b"{\"steps\": [",
                );
                s(&[
                    "--config",
                    &e.config(""),
                    "restore",
                    "--rollback",
                    &j,
                    "--root",
                    e.p("rootfs2").to_str().unwrap(),
                    "--no-wait",
                ])
            }
        ),
        row!("config", "two destinations with the same name", 78, |e| {
            check(
            e,
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\n\n[[destination]]\nname = \"remote\"\ntype = \"gcs\"\nbucket = \"g\""
        )
        }),
        row!("config", "a [[destination]] without a name", 78, |e| check(
            e,
            "[[destination]]\ntype = \"gcs\"\nbucket = \"g\""
        )),
        row!(
            "config",
            "an fs destination given a bucket and no path",
            78,
            |e| check(
                e,
                "[[destination]]\nname = \"nfs\"\ntype = \"fs\"\nbucket = \"b\""
            )
        ),
        row!(
            "config",
            "an Azure destination without its account",
            78,
            |e| check(
                e,
                "[[destination]]\nname = \"azure\"\ntype = \"azblob\"\ncontainer = \"backups\""
            )
        ),
        row!("config", "an Object Lock mode without a period", 78, |e| {
            check(
            e,
            "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nobject_lock_mode = \"COMPLIANCE\""
        )
        }),
        row!(
            "config",
            "per = cluster with more than one destination",
            78,
            |e| {
                check(
                e,
                "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nper = \"cluster\"\n\n[[destination]]\nname = \"gcs\"\ntype = \"gcs\"\nbucket = \"g\""
            )
            }
        ),
    ]
}

/// The message of a run: the lines etcdguard printed as its error (the log lines left out),
/// temp paths as `<dir>`.
fn message(e: &Env, stderr: &str) -> String {
    let root = e.dir.path().display().to_string();
    let mut lines = Vec::new();
    let mut in_error = false;
    for l in stderr.lines() {
        let log = l.len() > 27 && l.as_bytes()[4] == b'-' && l.contains("Z ");
        if log {
            in_error = false;
            continue;
        }
        if l.starts_with("etcdguard: ") || l.starts_with("error: ") {
            in_error = true;
        }
        if in_error
            && !l.trim().is_empty()
            && !l.starts_with("For more information")
            && !l.starts_with("Usage:")
        {
            lines.push(l.trim().to_string());
        }
    }
    normalize(&lines.join(" ").replace(&root, "<dir>"))
}

/// What differs from run to run shown as a placeholder: loopback ports, sha256 sums, times.
fn normalize(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    while i < b.len() {
        let rest: String = b[i..].iter().take(10).collect();
        if rest.starts_with("127.0.0.1:") && digits(i + 10) > 0 {
            out.push_str("127.0.0.1:<port>");
            i += 10 + digits(i + 10);
            continue;
        }
        let hex = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if hex == 64 {
            out.push_str("<sha256>");
            i += 64;
            continue;
        }
        // 2026-12-02 08:29:12 UTC
        let t: String = b[i..].iter().take(23).collect();
        let is_time = t.len() == 23
            && t.chars().enumerate().all(|(k, c)| match k {
                4 | 7 => c == '-',
                10 => c == ' ',
                13 | 16 => c == ':',
                19 => c == ' ',
                20..=22 => "UTC".contains(c),
                _ => c.is_ascii_digit(),
            });
        if is_time {
            out.push_str("<time>");
            i += 23;
            continue;
        }
        if rest.starts_with("size ") && digits(i + 5) > 0 {
            out.push_str("size <n>");
            i += 5 + digits(i + 5);
            continue;
        }
        if hex > 0 {
            out.extend(&b[i..i + hex]);
            i += hex;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

const DOC: &str = "docs/bad-inputs.md";
const HEAD: &str = "# Bad inputs and what etcdguard says\n\n\
Every row is run by `tests/bad_inputs.rs`: the exit code and the message are what etcdguard \
prints, word for word (`<dir>` is the test's temporary directory). Exit codes: 1 the \
operation failed, 2 usage error, 78 configuration error. A refused input changes nothing on \
disk.\n\n| # | area | what is wrong | exit | message |\n|---|---|---|---|---|\n";

#[test]
fn every_bad_input_of_the_catalogue_gets_its_exit_code_and_message() {
    let e = env();
    let mut table = String::from(HEAD);
    let mut failures = Vec::new();
    for (i, r) in rows().iter().enumerate() {
        e.row.set(i + 1);
        e.configs.set(0);
        let args = (r.run)(&e);
        let state = e.p("var/lib/etcdguard");
        let before = crate::util::list_dir(&state);
        let out = etcdguard_cmd(&args).output().unwrap();
        let msg = message(&e, &stderr(&out));
        let code = out.status.code().unwrap_or(-1);
        if code != r.exit {
            failures.push(format!(
                "row {} ({}): exit {code}, want {}: {}",
                i + 1,
                r.what,
                r.exit,
                stderr(&out)
            ));
        }
        if msg.is_empty() {
            failures.push(format!(
                "row {} ({}): no message: {}",
                i + 1,
                r.what,
                stderr(&out)
            ));
        }
        if crate::util::list_dir(&state) != before {
            failures.push(format!("row {} ({}): the state dir changed", i + 1, r.what));
        }
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            i + 1,
            r.area,
            r.what,
            code,
            msg.replace('|', "\\|")
        ));
    }
    assert!(rows().len() >= 60, "{} rows", rows().len());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    if std::env::var_os("ETCDGUARD_WRITE_BAD_INPUTS").is_some() {
        std::fs::write(&path, &table).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    if doc != table {
        let diff: Vec<String> = doc
            .lines()
            .zip(table.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("doc:  {a}\nnow:  {b}"))
            .take(5)
            .collect();
        panic!(
            "{DOC} differs from what etcdguard says (ETCDGUARD_WRITE_BAD_INPUTS=1 rewrites it \
             after a deliberate change):\n{}",
            diff.join("\n")
        );
    }
}
