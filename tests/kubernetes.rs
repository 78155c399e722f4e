//! A restore ends where a user's does: Kubernetes serving again. A kubeadm 1.37 node whose
//! kubelet stand-in runs a real kube-apiserver (`util/kubeapi.rs`) on its etcd, with Secrets
//! encrypted at rest; every object is made through the API server and read back with kubectl.

use std::time::Duration;

use crate::util::kubeapi::{apiserver_version, Kubectl};
use crate::util::kubenode::KubeNode;
use crate::util::stderr;

const WIDGETS_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names:
    kind: Widget
    plural: widgets
    singular: widget
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size:
                type: integer
";

/// Applies the Widget CRD and waits until its resource is served.
fn apply_widgets_crd(k: &Kubectl) {
    k.apply(WIDGETS_CRD);
    crate::util::wait_until(
        "the Widget CRD to be established",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            k.run(&["get", "widgets.example.com", "-A"])
                .status
                .success()
        },
    );
}

fn widget(name: &str, size: u32) -> String {
    format!(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: {name}\n  namespace: team-a\n\
         spec:\n  size: {size}\n"
    )
}

/// (kind/namespace/name, resourceVersion) of every object of `kinds` in the namespaces the test
/// makes, sorted.
fn objects(k: &Kubectl, kinds: &str) -> Vec<(String, u64)> {
    let list = k.json(&["get", kinds, "-A"]);
    let mut out: Vec<(String, u64)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            ns.starts_with("team-") || name.starts_with("team-")
        })
        .map(|o| {
            (
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap()
                ),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

const KINDS: &str = "namespaces,configmaps,secrets,serviceaccounts,widgets.example.com";

/// `kubectl auth whoami` with a bearer token only (no client certificate): who the API server
/// says the token is, or its error.
fn whoami(node: &KubeNode, token: &str) -> Result<String, String> {
    let server = node.kubectl().ok(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let out = std::process::Command::new(crate::util::kubeapi::kube_binary("kubectl"))
        .args(["--kubeconfig", "/dev/null", "--server", &server])
        .arg("--certificate-authority")
        .arg(node.path("etc/kubernetes/pki/ca.crt"))
        .args([
            "--token",
            token,
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_restored_node_serves_the_snapshots_objects_decrypts_its_secrets_and_takes_old_tokens() {
    restore_and_watch(None);
}

/// Without the revision bump the restored store's revision is below what clients saw: a watch
/// from before the restore is not told its picture is old, which is what the bump prevents.
#[test]
fn without_the_revision_bump_an_old_watch_is_not_told_it_is_too_old() {
    restore_and_watch(Some("0"));
}

/// A node with objects made through the API server, backed up, changed, restored (with
/// `--bump-revision bump` when given), then read back through the API server.
fn restore_and_watch(bump: Option<&str>) {
    eprintln!("kube-apiserver: {}", apiserver_version());
    let mut node = KubeNode::with_apiserver("cp1", 7);
    node.start();
    node.wait_healthy(Duration::from_secs(60));
    let k = node.kubectl();
    k.wait_ready(Duration::from_secs(120), || node.apiserver_log_tail());

    // What the cluster holds at the backup, every object made through the API server.
    for ns in ["team-a", "team-b"] {
        k.ok(&["create", "namespace", ns]);
    }
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=blue",
    ]);
    k.ok(&[
        "-n",
        "team-b",
        "create",
        "configmap",
        "other",
        "--from-literal=x=1",
    ]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    apply_widgets_crd(&k);
    k.apply(&widget("small", 1));
    k.ok(&["-n", "team-a", "create", "serviceaccount", "robot"]);
    let token = k
        .ok(&["-n", "team-a", "create", "token", "robot", "--duration=2h"])
        .trim()
        .to_string();
    assert_eq!(
        whoami(&node, &token).unwrap(),
        "system:serviceaccount:team-a:robot"
    );
    // Encrypted at rest: etcd holds ciphertext.
    let raw = node.ctl(&["get", "/registry/secrets/team-a/db", "--print-value-only"]);
    assert!(raw.starts_with("k8s:enc:aescbc:v1:key1:"), "{raw:?}");
    assert!(!raw.contains("s3cret"));
    let at_backup = objects(&k, KINDS);

    let out = node.etcdguard(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recs: serde_json::Value = serde_json::from_slice(
        &node
            .etcdguard(&["records", "--output", "json", "--limit", "1"])
            .stdout,
    )
    .unwrap();
    let record_id = recs[0]["id"].as_str().unwrap().to_string();

    // After the backup: a namespace deleted, objects changed and made.
    k.ok(&["delete", "namespace", "team-b", "--wait=false"]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "extra",
        "--from-literal=y=2",
    ]);
    k.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: team-a\ndata:\n  mode: red\n",
    );
    k.apply(&widget("small", 9));
    k.ok(&["-n", "team-a", "delete", "secret", "db"]);
    let seen_before = objects(&k, KINDS);
    assert_ne!(seen_before, at_backup);
    let newest_seen = seen_before
        .iter()
        .chain(&at_backup)
        .map(|(_, rv)| *rv)
        .max()
        .unwrap();
    // What a client's list said last (kubectl's own lists carry no resourceVersion).
    let list: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/team-a/configmaps"]))
            .unwrap();
    let list_rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let mut args = vec![
        "--snapshot",
        &record_id,
        "--yes",
        "--force",
        "--timeout",
        "120s",
    ];
    if let Some(b) = bump {
        args.extend(["--bump-revision", b]);
    }
    let out = node.restore(&args);
    assert!(
        out.status.success(),
        "{}\n{}\netcd: {}\napiserver: {}",
        crate::util::stdout(&out),
        stderr(&out),
        node.log_tail(),
        node.apiserver_log_tail()
    );
    k.wait_ready(Duration::from_secs(120), || node.apiserver_log_tail());

    // Exactly the snapshot's objects, each as it was at the backup (an object's
    // resourceVersion is its key's last change, which the restore keeps); the store's
    // resourceVersion, which lists and watches start from, is above every one seen before.
    let after = objects(&k, KINDS);
    assert_eq!(after, at_backup, "objects after the restore");
    let list: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/team-a/configmaps"]))
            .unwrap();
    let now_rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "resourceVersion (bump {bump:?}): newest seen before the restore {newest_seen}, the \
         store's after it {now_rv}"
    );
    if bump == Some("0") {
        // No bump: the store went back in time, below what clients saw.
        assert!(now_rv < newest_seen, "{now_rv} {newest_seen}");
        return watch_from(&k, list_rv, false);
    }
    assert!(
        now_rv > newest_seen,
        "the store's resourceVersion {now_rv} is not above {newest_seen} seen before the restore"
    );
    let cm = k.json(&["-n", "team-a", "get", "configmap", "settings"]);
    assert_eq!(cm["data"]["mode"], "blue");
    let w = k.json(&["-n", "team-a", "get", "widgets.example.com", "small"]);
    assert_eq!(w["spec"]["size"], 1);
    // The Secret decrypts with the node's key, and is still ciphertext in etcd.
    let pw = k.ok(&[
        "-n",
        "team-a",
        "get",
        "secret",
        "db",
        "-o",
        "jsonpath={.data.password}",
    ]);
    use base64::Engine;
    let pw = base64::engine::general_purpose::STANDARD
        .decode(pw.trim())
        .unwrap();
    assert_eq!(pw, b"s3cret");
    let raw = node.ctl(&["get", "/registry/secrets/team-a/db", "--print-value-only"]);
    assert!(raw.starts_with("k8s:enc:aescbc:v1:key1:"), "{raw:?}");
    // A token issued before the disaster is still accepted.
    assert_eq!(
        whoami(&node, &token).unwrap(),
        "system:serviceaccount:team-a:robot"
    );
    watch_from(&k, list_rv, true);
}

/// A watch from `list_rv` (what a client listed before the restore): with the bump it ends in
/// 410 Gone ("too old resource version"), so an informer relists instead of keeping objects
/// that went back in time; without it, it is never told so.
fn watch_from(k: &Kubectl, list_rv: u64, bumped: bool) {
    let out = k.run(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/team-a/configmaps?watch=1&resourceVersion={list_rv}&timeoutSeconds=5"),
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "a watch from resourceVersion {list_rv} (before the restore) after it (bumped: \
         {bumped}): {said}"
    );
    let told = said.contains("\"code\":410") && said.contains("too old resource version");
    assert_eq!(told, bumped, "{said}");
}

/// A node lost whole: its disk wiped but for the etcdguard configuration. `recover` brings
/// back the bundle's PKI, manifests and encryption config and the snapshot's data; the
/// kubelet then starts etcd and the API server on it, which serves the Secrets decrypted and
/// accepts a token issued before the disaster.
#[test]
fn recover_of_a_wiped_node_brings_its_api_server_back_with_secrets_and_tokens() {
    use crate::encryption::age_key;
    use crate::remote::{write_credentials, BUCKET};
    use crate::util::s3::{S3Server, SECRET_KEY};
    use crate::util::{etcdguard_cmd, stdout};

    let mut node = KubeNode::with_apiserver("cp1", 11);
    let keep = tempfile::tempdir().unwrap();
    let s3 = S3Server::s3s_fs(&keep.path().join("s3"), BUCKET);
    let creds = write_credentials(keep.path(), SECRET_KEY);
    let (identity, recipient) = age_key(keep.path(), "key.txt");
    let root = node.root.path().to_path_buf();
    let bucket = format!(
        "[remote_storage]\nbucket = {BUCKET:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
         prefix = \"prod/\"\nforce_path_style = true\ncredentials_file = {:?}\n\
         stall_timeout = \"3s\"\n\n[encryption]\nrecipients = [{recipient:?}]\n",
        s3.endpoint,
        creds.display().to_string()
    );
    let mut config = std::fs::read_to_string(&node.config).unwrap();
    config.push_str(&format!(
        "\n{bucket}\n[bundle]\nroot = {:?}\n",
        root.display().to_string()
    ));
    std::fs::write(&node.config, config).unwrap();
    // The node's own configuration: what survives the disaster.
    let node_view = root.join("etc/etcdguard/etcdguard.toml");
    std::fs::create_dir_all(node_view.parent().unwrap()).unwrap();
    std::fs::write(&node_view, &bucket).unwrap();

    node.start();
    node.wait_healthy(Duration::from_secs(60));
    let k = node.kubectl();
    k.wait_ready(Duration::from_secs(120), || node.apiserver_log_tail());
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    k.ok(&["-n", "team-a", "create", "serviceaccount", "robot"]);
    let token = k
        .ok(&["-n", "team-a", "create", "token", "robot", "--duration=2h"])
        .trim()
        .to_string();
    let raw = node.ctl(&["get", "/registry/secrets/team-a/db", "--print-value-only"]);
    assert!(raw.starts_with("k8s:enc:aescbc:v1:key1:"), "{raw:?}");
    let out = node.etcdguard(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rec: serde_json::Value = serde_json::from_slice(
        &node
            .etcdguard(&["records", "-o", "json", "--limit", "1"])
            .stdout,
    )
    .unwrap();
    assert_eq!(rec[0]["bundle"]["state"], "uploaded", "{:#}", rec[0]);
    let at_backup = objects(&k, "namespaces,secrets,serviceaccounts");

    // Disaster: the kubelet and everything it ran are gone, and the disk with them.
    node.kubelet = None;
    crate::util::kubenode::wipe(&root);
    assert!(!root.join("etc/kubernetes/enc/enc.yaml").exists());
    let out = etcdguard_cmd(&[
        "recover",
        "--root",
        root.to_str().unwrap(),
        "--node",
        "cp1",
        "--identity",
        identity.to_str().unwrap(),
        "--yes",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for back in [
        "etc/kubernetes/enc/enc.yaml",
        "etc/kubernetes/pki/sa.key",
        "etc/kubernetes/pki/apiserver.crt",
        "etc/kubernetes/admin.conf",
        "etc/kubernetes/manifests/kube-apiserver.yaml",
    ] {
        assert!(root.join(back).is_file(), "{back} not recovered");
    }

    // The kubelet starts what the recovered manifests say.
    node.start();
    node.wait_healthy(Duration::from_secs(60));
    k.wait_ready(Duration::from_secs(120), || node.apiserver_log_tail());
    assert_eq!(objects(&k, "namespaces,secrets,serviceaccounts"), at_backup);
    let pw = k.ok(&[
        "-n",
        "team-a",
        "get",
        "secret",
        "db",
        "-o",
        "jsonpath={.data.password}",
    ]);
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(pw.trim())
            .unwrap(),
        b"s3cret"
    );
    assert_eq!(
        whoami(&node, &token).unwrap(),
        "system:serviceaccount:team-a:robot"
    );
}

/// Three control-plane nodes, each API server on its own etcd member: every member restored
/// from the same snapshot with one plan, and then every node's API server serves the same
/// objects, the snapshot's, with its Secrets decrypted.
#[test]
fn three_control_plane_nodes_restored_serve_the_same_objects_from_every_api_server() {
    let pki = tempfile::tempdir().unwrap();
    crate::util::pki::Pki::create(pki.path());
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (crate::util::free_port(), crate::util::free_port()))
        .collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("cp{}=https://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = vec![KubeNode::control_plane_member(
        "cp1",
        pki.path(),
        ports[0],
        &cluster,
        None,
    )];
    let first = nodes[0].root.path().to_path_buf();
    for (i, p) in ports.iter().enumerate().skip(1) {
        nodes.push(KubeNode::control_plane_member(
            &format!("cp{}", i + 1),
            pki.path(),
            *p,
            &cluster,
            Some(&first),
        ));
    }
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.wait_healthy(Duration::from_secs(90));
    }
    for n in &nodes {
        n.kubectl()
            .wait_ready(Duration::from_secs(180), || n.apiserver_log_tail());
    }
    let k = nodes[0].kubectl();
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=blue",
    ]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    let at_backup = objects(&k, "namespaces,configmaps,secrets");
    let out = nodes[0].etcdguard(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recs: serde_json::Value = serde_json::from_slice(
        &nodes[0]
            .etcdguard(&["records", "--output", "json", "--limit", "1"])
            .stdout,
    )
    .unwrap();
    let file = recs[0]["local"]["path"].as_str().unwrap().to_string();
    k.ok(&["delete", "namespace", "team-a", "--wait=false"]);
    nodes[1].kubectl().ok(&["create", "namespace", "team-lost"]);

    let token = "etcd-restore-three-apiservers";
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (file, cluster) = (file.clone(), cluster.clone());
                s.spawn(move || {
                    n.restore(&[
                        "--snapshot",
                        &file,
                        "--yes",
                        "--force",
                        "--initial-cluster",
                        &cluster,
                        "--initial-cluster-token",
                        token,
                        "--timeout",
                        "180s",
                    ])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, out) in nodes.iter().zip(&outs) {
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            n.name,
            stderr(out),
            n.log_tail()
        );
    }
    use base64::Engine;
    for n in &nodes {
        let k = n.kubectl();
        k.wait_ready(Duration::from_secs(180), || n.apiserver_log_tail());
        assert_eq!(
            objects(&k, "namespaces,configmaps,secrets"),
            at_backup,
            "{}",
            n.name
        );
        let pw = k.ok(&[
            "-n",
            "team-a",
            "get",
            "secret",
            "db",
            "-o",
            "jsonpath={.data.password}",
        ]);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(pw.trim())
                .unwrap(),
            b"s3cret",
            "{}",
            n.name
        );
    }
}

/// The drill reaches the API server when asked: a kube-apiserver started on the drill's etcd
/// lists every resource type of the snapshot with `inspect`'s counts, and a Secret under a key
/// the node's encryption config no longer has fails the drill, naming the key. The scratch dir
/// is empty afterwards.
#[test]
fn a_drill_lists_the_snapshot_through_a_real_api_server_and_names_a_secret_it_cannot_decrypt() {
    eprintln!("kube-apiserver: {}", apiserver_version());
    let mut node = KubeNode::with_apiserver("cp1", 17);
    // The drill reads the files the manifests name where the host has them: here under the
    // node's root (a real node's are under /).
    for m in ["etcd.yaml", "kube-apiserver.yaml"] {
        let path = node.path(&format!("etc/kubernetes/manifests/{m}"));
        let text = std::fs::read_to_string(&path).unwrap();
        let root = node.root.path().display().to_string();
        std::fs::write(
            &path,
            text.replace(
                "path: /etc/kubernetes",
                &format!("path: {root}/etc/kubernetes"),
            ),
        )
        .unwrap();
    }
    node.start();
    node.wait_healthy(Duration::from_secs(60));
    let k = node.kubectl();
    k.wait_ready(Duration::from_secs(120), || node.apiserver_log_tail());
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    k.ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=blue",
    ]);
    apply_widgets_crd(&k);
    k.apply(&widget("small", 1));
    k.apply(&widget("large", 9));
    let out = node.etcdguard(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let etcd = crate::util::etcd_binary("3.7", "etcd");
    let apiserver = crate::util::kubeapi::kube_binary("kube-apiserver");
    let drill = |with_etcd: bool| {
        let mut args = vec!["drill", "--output", "json"];
        if with_etcd {
            args.extend(["--etcd-binary", etcd.to_str().unwrap()]);
        }
        args.extend(["--apiserver-binary", apiserver.to_str().unwrap()]);
        let out = node.etcdguard(&args);
        let r: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        let api = r["drill"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "apiserver")
            .unwrap_or_else(|| panic!("no apiserver check: {r:#}"))
            .clone();
        (out.status.code(), r, api)
    };
    let scratch_is_empty = || {
        assert_eq!(
            crate::util::list_dir(&node.path("var/lib/etcdguard/drill")),
            Vec::<String>::new()
        )
    };

    let (code, r, api) = drill(true);
    assert_eq!(
        (code, r["result"].as_str()),
        (Some(0), Some("Success")),
        "{r:#}"
    );
    assert_eq!(api["result"], "passed", "{r:#}");
    let detail = api["detail"].as_str().unwrap();
    eprintln!("apiserver check: {detail}");
    for want in [
        "kube-apiserver v1.37",
        "widgets.example.com 2",
        "customresourcedefinitions.apiextensions.k8s.io 1",
        "namespaces ",
        "secrets ",
        "configmaps ",
    ] {
        assert!(detail.contains(want), "{want} not in {detail}");
    }
    scratch_is_empty();

    // Without an etcd to read, the API server check says what to set.
    let (code, _, api) = drill(false);
    assert_eq!(code, Some(1));
    assert_eq!(api["result"], "failed");
    assert!(
        api["detail"].as_str().unwrap().contains("etcd_binary"),
        "{api:#}"
    );

    // The encryption key that sealed the snapshot's Secrets rotated away without being kept:
    // a restore would bring back Secrets nobody can read, and the drill says which.
    let enc = node.path("etc/kubernetes/enc/enc.yaml");
    let text = std::fs::read_to_string(&enc).unwrap();
    let other = text
        .replace("name: key1", "name: key2")
        .replace("secret: ", "secret: AAAA");
    let other = {
        // A different 32-byte key, base64.
        let start = other.find("secret: ").unwrap() + "secret: ".len();
        let end = start + other[start..].find('\n').unwrap();
        format!(
            "{}{}{}",
            &other[..start],
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            &other[end..]
        )
    };
    std::fs::write(&enc, other).unwrap();
    let (code, r, api) = drill(true);
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(api["result"], "failed", "{r:#}");
    let detail = api["detail"].as_str().unwrap();
    eprintln!("apiserver check with the key rotated away: {detail}");
    assert!(detail.contains("/registry/secrets/team-a/db"), "{detail}");
    scratch_is_empty();

    // An object whose stored value does not decode (cut-off JSON): named too.
    std::fs::write(&enc, text).unwrap();
    let out = node.etcdctl(&[
        "put",
        "/registry/configmaps/team-a/broken",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bro"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.etcdguard(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, r, api) = drill(true);
    assert_eq!(code, Some(1), "{r:#}");
    let detail = api["detail"].as_str().unwrap();
    eprintln!("apiserver check with a corrupt object: {detail}");
    assert!(
        detail.contains("/registry/configmaps/team-a/broken"),
        "{detail}"
    );
    scratch_is_empty();
}
