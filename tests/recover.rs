//! The node recovery bundle and `etcdguard recover`: a kubeadm node (kubelet stand-in, real
//! etcd) backs up with `[encryption]` and `[bundle]` to a real S3 server (s3s-fs); its root is
//! wiped but for the etcdguard config; `recover` brings back its files byte for byte (modes
//! and owners too) and its etcd with the snapshot's data; killed after every journaled step,
//! `--rollback` undoes it.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::encryption::age_key;
use crate::remote::{s3s_object, write_credentials, BUCKET};
use crate::restore::STEPS;
use crate::util::kubenode::KubeNode;
use crate::util::s3::{S3Server, SECRET_KEY};
use crate::util::{etcdguard_cmd, stderr, stdout, system_bin};

/// Every path under `dir` (not following symlinks): kind, mode, owner, and content hash or
/// link target.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let owner = format!(
                "{:o} {}:{}",
                m.permissions().mode() & 0o7777,
                m.uid(),
                m.gid()
            );
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(
                    rel,
                    format!("link {}:{} -> {}", m.uid(), m.gid(), t.display()),
                );
            } else if m.is_dir() {
                out.insert(format!("{rel}/"), owner);
                walk(base, &p, out);
            } else {
                let h = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
                out.insert(rel, format!("{owner} {h}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What recover must bring back, as a tree under the node root.
const BROUGHT_BACK: [&str; 4] = [
    "etc/kubernetes/pki",
    "etc/kubernetes/enc",
    "var/lib/kubelet",
    "etc/kubernetes/admin.conf",
];

fn snapshot_of(root: &Path) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for rel in BROUGHT_BACK {
        let p = root.join(rel);
        if p.is_dir() {
            for (k, v) in tree(&p) {
                all.insert(format!("{rel}/{k}"), v);
            }
        } else if p.exists() {
            let m = std::fs::metadata(&p).unwrap();
            let h = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
            all.insert(
                rel.to_string(),
                format!(
                    "{:o} {}:{} {h}",
                    m.permissions().mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    all
}

/// The kubeadm files a bundle must carry beyond the stand-in's: an EncryptionConfiguration
/// named by kube-apiserver's manifest, kubelet files (one owned by another user, a symlink as
/// the kubelet makes), a kubeconfig.
fn dress_node(node: &KubeNode, apiserver_port: u16) {
    let r = node.root.path();
    let write = |rel: &str, text: &str, mode: u32| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(
        "etc/kubernetes/enc/enc.yaml",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- \
         resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        \
         secret: c2VjcmV0LWVuY3J5cHRpb24ta2V5LTMyLWJ5dGVzISE=\n  - identity: {}\n",
        0o600,
    );
    write(
        "etc/kubernetes/manifests/kube-apiserver.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: \
             kube-system\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - \
             --secure-port={apiserver_port}\n    - \
             --encryption-provider-config=/etc/kubernetes/enc/enc.yaml\n    image: \
             registry.k8s.io/kube-apiserver:v1.33.0\n    name: kube-apiserver\n    \
             volumeMounts:\n    - mountPath: /etc/kubernetes/enc\n      name: enc\n      \
             readOnly: true\n  volumes:\n  - hostPath:\n      path: /etc/kubernetes/enc\n      \
             type: DirectoryOrCreate\n    name: enc\n"
        ),
        0o600,
    );
    write(
        "etc/kubernetes/admin.conf",
        "apiVersion: v1\nkind: Config\n",
        0o600,
    );
    write(
        "var/lib/kubelet/config.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
        0o644,
    );
    write(
        "var/lib/kubelet/pki/kubelet-client-2026-12-02.pem",
        "PEM\n",
        0o600,
    );
    std::os::unix::fs::symlink(
        "/var/lib/kubelet/pki/kubelet-client-2026-12-02.pem",
        r.join("var/lib/kubelet/pki/kubelet-client-current.pem"),
    )
    .unwrap();
    std::os::unix::fs::chown(
        r.join("var/lib/kubelet/config.yaml"),
        Some(1000),
        Some(1000),
    )
    .unwrap();
}

/// Neither the encryption config's key, nor a PEM key, nor an age identity in the output.
fn assert_no_secrets(out: &std::process::Output) {
    let logs = format!("{}{}", stdout(out), stderr(out));
    for secret in [
        "c2VjcmV0LWVuY3J5cHRpb24ta2V5",
        "BEGIN",
        "PRIVATE KEY",
        "AGE-SECRET-KEY",
    ] {
        assert!(!logs.contains(secret), "{secret} reached the output");
    }
}

/// Files under `root` that a rolled-back recover may leave: its journal and downloads under the
/// state dir, the restore's journal dir, data dirs it moved aside, empty parent dirs.
fn leftovers(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|k| !k.ends_with('/'))
        .filter(|k| {
            !(k == "backup.toml"
                || k.starts_with("etc/etcdguard/")
                || k.starts_with("var/lib/etcdguard/")
                || k.starts_with("etc/kubernetes/tmp/")
                || k.starts_with("var/lib/etcd.recover-rolled-back-"))
        })
        .collect()
}

#[test]
fn recover_rebuilds_a_wiped_node_from_the_bucket_and_rolls_back_from_every_step() {
    let mut node = KubeNode::with_etcd("3.6", "cp1", None, None, None);
    let apiserver_port = crate::util::free_port();
    dress_node(&node, apiserver_port);
    node.start();
    node.wait_healthy(Duration::from_secs(30));
    for i in 0..50 {
        node.ctl(&[
            "put",
            &format!("/registry/secrets/default/s{i:02}"),
            "sealed-by-enc",
        ]);
    }
    let keep = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&keep.path().join("s3"), BUCKET);
    let creds = write_credentials(keep.path(), SECRET_KEY);
    let (identity, recipient) = age_key(keep.path(), "key.txt");
    let root = node.root.path().to_path_buf();
    let mut config = std::fs::read_to_string(&node.config).unwrap();
    config.push_str(&format!(
        "\n[remote_storage]\nbucket = {BUCKET:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
         prefix = \"prod/\"\nforce_path_style = true\ncredentials_file = {:?}\n\
         stall_timeout = \"3s\"\n\n[encryption]\nrecipients = [{recipient:?}]\n\n[bundle]\n\
         root = {:?}\n",
        s3.endpoint,
        creds.display().to_string(),
        root.display().to_string()
    ));
    std::fs::write(&node.config, config).unwrap();
    // The node's own config, as on a real node (its paths are the node's): what survives.
    let node_view = root.join("etc/etcdguard/etcdguard.toml");
    std::fs::create_dir_all(node_view.parent().unwrap()).unwrap();
    std::fs::write(
        &node_view,
        format!(
            "[remote_storage]\nbucket = {BUCKET:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
             prefix = \"prod/\"\nforce_path_style = true\ncredentials_file = {:?}\n\n\
             [encryption]\nrecipients = [{recipient:?}]\n",
            s3.endpoint,
            creds.display().to_string()
        ),
    )
    .unwrap();

    let out = etcdguard_cmd(&["--config", node.config.to_str().unwrap(), "snapshot"])
        .env(
            "ETCDGUARD_LOG",
            "trace,h2=info,hyper=info,tonic=info,tower=info",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secrets(&out);
    let rec: serde_json::Value = serde_json::from_slice(
        &etcdguard_cmd(&[
            "--config",
            node.config.to_str().unwrap(),
            "records",
            "-o",
            "json",
        ])
        .output()
        .unwrap()
        .stdout,
    )
    .unwrap();
    let rec = &rec[0];
    let bundle = &rec["bundle"];
    assert_eq!(bundle["state"], "uploaded", "{rec:#}");
    let holds: Vec<&str> = bundle["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(holds.contains(&"/etc/kubernetes/enc/enc.yaml"), "{holds:?}");
    assert!(
        holds
            .iter()
            .any(|h| h.starts_with("/etc/kubernetes/pki/ (")),
        "{holds:?}"
    );
    let file = rec["fileName"].as_str().unwrap();
    let bundle_key = format!(
        "prod/cp1/{}.bundle.tar.zst.age",
        file.trim_end_matches(".db")
    );
    assert_eq!(bundle["location"], format!("s3://{BUCKET}/{bundle_key}"));
    // The standard tools open the bundle: its listing first, then the node's paths.
    let listing = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' -d -i '{}' '{}' | '{}' -d -q | tar -t",
            system_bin("age", "age").display(),
            identity.display(),
            s3s_object(&s3, &bundle_key).display(),
            system_bin("zstd", "zstd").display()
        ))
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    let names = stdout(&listing);
    assert_eq!(names.lines().next(), Some("etcdguard-bundle.json"));
    for want in [
        "etc/kubernetes/pki/etcd/ca.key",
        "etc/kubernetes/manifests/etcd.yaml",
        "etc/kubernetes/enc/enc.yaml",
        "var/lib/kubelet/pki/kubelet-client-current.pem",
    ] {
        assert!(names.lines().any(|l| l == want), "{want} not in\n{names}");
    }

    let keys = node.keys();
    let before = snapshot_of(&root);
    let manifests_before = tree(&root.join("etc/kubernetes/manifests"));
    let revision = node.endpoint_status()["header"]["revision"]
        .as_i64()
        .unwrap();
    // Disaster: the node's disk is gone; only the etcdguard config is put back.
    node.kubelet = None;
    crate::util::kubenode::wipe(&root);

    let recover = |extra: &[&str], crash: Option<&str>| {
        let mut args = vec![
            "recover",
            "--root",
            root.to_str().unwrap(),
            "--node",
            "cp1",
            "--identity",
            identity.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut c = etcdguard_cmd(&args);
        c.env(
            "ETCDGUARD_LOG",
            "trace,h2=info,hyper=info,tonic=info,tower=info",
        );
        if let Some(step) = crash {
            c.env("ETCDGUARD_TEST_CRASH_AFTER", step);
        }
        c.output().unwrap()
    };
    let rollback = || {
        etcdguard_cmd(&["recover", "--rollback", "--root", root.to_str().unwrap()])
            .output()
            .unwrap()
    };

    // The dry run shows the files and the restore's guards, and changes nothing.
    let dry = recover(&["--dry-run"], None);
    assert!(dry.status.success(), "{}{}", stdout(&dry), stderr(&dry));
    let plan = stdout(&dry);
    assert!(
        plan.contains("create  file    0600 0:0  /etc/kubernetes/enc/enc.yaml"),
        "{plan}"
    );
    assert!(plan.contains("create  file    0644 1000:1000  /var/lib/kubelet/config.yaml"));
    assert!(plan.contains("the restore that follows"), "{plan}");
    assert_no_secrets(&dry);
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    assert!(
        stderr(&dry).contains("sealed snapshot downloaded and opened"),
        "the sealed copy is opened as it downloads: {}",
        stderr(&dry)
    );

    // The snapshot's object altered in the bucket: opened as it downloads, age's
    // authentication fails; nothing is placed, nothing downloaded is left.
    let object = s3s_object(&s3, &format!("prod/cp1/{file}.zst.age"));
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    std::fs::write(&object, &bad).unwrap();
    let out = recover(&["--yes"], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("truncated or was altered"),
        "{}",
        stderr(&out)
    );
    assert!(
        leftovers(&root).is_empty(),
        "{:?}\n{}",
        leftovers(&root),
        stderr(&out)
    );
    assert!(!root.join("var/lib/etcd").exists());
    let downloads = root.join("var/lib/etcdguard/downloads");
    assert_eq!(crate::util::list_dir(&downloads), Vec::<String>::new());
    std::fs::write(&object, &good).unwrap();

    let steps = ["files-placed"]
        .into_iter()
        .chain(STEPS)
        .chain(["apiserver-restored", "restored"]);
    for step in steps {
        let out = recover(&["--yes"], Some(step));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{step}: not killed there: {}",
            stderr(&out)
        );
        let back = rollback();
        assert!(back.status.success(), "{step}: {}", stderr(&back));
        assert!(
            leftovers(&root).is_empty(),
            "{step}: {:?}",
            leftovers(&root)
        );
        assert!(!root.join("var/lib/etcd").exists(), "{step}");
        let again = rollback();
        assert!(stdout(&again).contains("already rolled back"), "{step}");
    }

    let out = recover(&["--yes"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("TRACE"), "recover ran at trace level");
    assert_no_secrets(&out);
    assert_eq!(
        snapshot_of(&root),
        before,
        "PKI, kubelet files, encryption config"
    );
    let manifests = tree(&root.join("etc/kubernetes/manifests"));
    assert_eq!(manifests.len(), manifests_before.len());
    assert_eq!(
        manifests["kube-apiserver.yaml"],
        manifests_before["kube-apiserver.yaml"]
    );
    // etcd.yaml is the bundle's, rewritten by the restore for the new cluster identity.
    let etcd_yaml =
        std::fs::read_to_string(root.join("etc/kubernetes/manifests/etcd.yaml")).unwrap();
    assert!(
        etcd_yaml.contains("--initial-cluster-state=new"),
        "{etcd_yaml}"
    );
    // The kubelet starts: etcd comes up with the snapshot's data.
    node.start();
    node.wait_healthy(Duration::from_secs(60));
    assert_eq!(node.keys(), keys);
    let now = node.endpoint_status()["header"]["revision"]
        .as_i64()
        .unwrap();
    assert!(now >= revision + 1_000_000_000, "{now} vs {revision}");
}
