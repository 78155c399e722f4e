//! `etcdguard inspect` and `etcdguard diff` on snapshots of real etcd servers filled with
//! Kubernetes-shaped keys (several resource types and namespaces, protobuf and JSON values, a
//! large object, deletes, an overwrite, keys on a lease), against what etcdctl reports for the
//! same prefixes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use etcd_client::PutOptions;
use serde_json::Value;

use crate::encryption::age_key;
use crate::util::node::Node;
use crate::util::{etcdguard, etcdguard_cmd, rt, schema, stderr, stdout, system_bin};

/// A Kubernetes object as kube-apiserver stores it in protobuf: `k8s\0` and a runtime.Unknown
/// {typeMeta {apiVersion, kind}, raw: {metadata {name, namespace, uid}, spec}}.
fn k8s_object(api_version: &str, kind: &str, ns: &str, name: &str, spec_len: usize) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, n: u8, b: &[u8]) {
        out.push(n << 3 | 2);
        let mut len = b.len();
        while len >= 0x80 {
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(b);
    }
    let mut meta = Vec::new();
    field(&mut meta, 1, name.as_bytes());
    if !ns.is_empty() {
        field(&mut meta, 3, ns.as_bytes());
    }
    field(&mut meta, 5, format!("uid-{name}").as_bytes());
    let mut obj = Vec::new();
    field(&mut obj, 1, &meta);
    field(&mut obj, 2, &vec![b's'; spec_len]);
    let mut tm = Vec::new();
    field(&mut tm, 1, api_version.as_bytes());
    field(&mut tm, 2, kind.as_bytes());
    let mut unknown = Vec::new();
    field(&mut unknown, 1, &tm);
    field(&mut unknown, 2, &obj);
    let mut v = b"k8s\0".to_vec();
    v.extend_from_slice(&unknown);
    v
}

fn json_object(kind: &str, ns: &str, name: &str) -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "example.com/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": {"size": name.len()}
    })
    .to_string()
    .into_bytes()
}

/// What the test did to the keyspace, for the expectations etcdctl cannot give.
struct Filled {
    deleted: Vec<String>,
    /// The configmap overwritten, and the revision of its first value.
    overwritten: (String, i64),
    json_key: String,
    pod_key: String,
    lease_keys: usize,
}

fn fill(node: &Node) -> Filled {
    rt().block_on(async {
        let mut c = node.etcd.client().await.unwrap();
        let nss = ["default", "kube-system", "prod"];
        for ns in nss {
            c.put(
                format!("/registry/namespaces/{ns}"),
                k8s_object("v1", "Namespace", "", ns, 20),
                None,
            )
            .await
            .unwrap();
        }
        for (i, ns) in nss.iter().enumerate() {
            for p in 0..3 + i {
                let name = format!("pod-{p}");
                c.put(
                    format!("/registry/pods/{ns}/{name}"),
                    k8s_object("v1", "Pod", ns, &name, 300 + 37 * p),
                    None,
                )
                .await
                .unwrap();
            }
            for s in 0..2 {
                c.put(
                    format!("/registry/secrets/{ns}/secret-{s}"),
                    k8s_object("v1", "Secret", ns, &format!("secret-{s}"), 64),
                    None,
                )
                .await
                .unwrap();
            }
            c.put(
                format!("/registry/deployments/{ns}/web"),
                k8s_object("apps/v1", "Deployment", ns, "web", 500),
                None,
            )
            .await
            .unwrap();
        }
        for (k, v) in [
            (
                "/registry/minions/cp1",
                k8s_object("v1", "Node", "", "cp1", 900),
            ),
            (
                "/registry/minions/w1",
                k8s_object("v1", "Node", "", "w1", 800),
            ),
            (
                "/registry/services/specs/default/kubernetes",
                k8s_object("v1", "Service", "default", "kubernetes", 120),
            ),
            (
                "/registry/services/endpoints/default/kubernetes",
                k8s_object("v1", "Endpoints", "default", "kubernetes", 90),
            ),
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
                json_object("CustomResourceDefinition", "", "widgets.example.com"),
            ),
            (
                "/registry/example.com/widgets/prod/w-1",
                json_object("Widget", "prod", "w-1"),
            ),
            (
                "/registry/example.com/widgets/prod/w-2",
                json_object("Widget", "prod", "w-2"),
            ),
            (
                "/registry/example.com/widgets/default/w-3",
                json_object("Widget", "default", "w-3"),
            ),
            // A large object: overflow pages.
            (
                "/registry/configmaps/kube-system/big",
                k8s_object("v1", "ConfigMap", "kube-system", "big", 200 << 10),
            ),
            ("/other/not-kubernetes", b"plain text".to_vec()),
        ] {
            c.put(k, v, None).await.unwrap();
        }
        let cm = "/registry/configmaps/default/cm-0".to_string();
        let first = c
            .put(
                cm.clone(),
                json_object("ConfigMap", "default", "cm-0"),
                None,
            )
            .await
            .unwrap();
        let first_rev = first.header().unwrap().revision();
        c.put(
            cm.clone(),
            json_object("ConfigMap", "default", "cm-0-changed"),
            None,
        )
        .await
        .unwrap();
        // Events on a lease, as kube-apiserver stores them.
        let lease = c.lease_grant(3600, None).await.unwrap().id();
        for e in 0..4 {
            c.put(
                format!("/registry/events/default/ev-{e}"),
                k8s_object("v1", "Event", "default", &format!("ev-{e}"), 80),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        }
        let deleted = vec![
            "/registry/pods/default/pod-1".to_string(),
            "/registry/pods/prod/pod-4".to_string(),
            "/registry/secrets/kube-system/secret-0".to_string(),
        ];
        for k in &deleted {
            c.delete(k.as_str(), None).await.unwrap();
        }
        Filled {
            deleted,
            overwritten: (cm, first_rev),
            json_key: "/registry/example.com/widgets/prod/w-1".into(),
            pod_key: "/registry/pods/prod/pod-2".into(),
            lease_keys: 4,
        }
    })
}

fn ctl(node: &Node, args: &[&str]) -> String {
    let out = node.etcd.etcdctl(args);
    assert!(out.status.success(), "etcdctl {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// etcdctl's count and value bytes under `prefix`.
fn etcdctl_count_and_bytes(node: &Node, prefix: &str) -> (u64, u64) {
    let fields = ctl(
        node,
        &["get", "--prefix", "--count-only", prefix, "-w", "fields"],
    );
    let count = fields
        .lines()
        .find_map(|l| l.strip_prefix("\"Count\" : "))
        .unwrap_or_else(|| panic!("no Count in {fields}"))
        .trim()
        .parse()
        .unwrap();
    let v: Value =
        serde_json::from_str(&ctl(node, &["get", "--prefix", prefix, "-w", "json"])).unwrap();
    let bytes = v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    base64::engine::general_purpose::STANDARD
                        .decode(kv["value"].as_str().unwrap_or(""))
                        .unwrap()
                        .len() as u64
                })
                .sum()
        })
        .unwrap_or(0);
    (count, bytes)
}

fn inspect_json(file: &Path, extra: &[&str], schema_name: &str) -> Value {
    let mut args = vec!["inspect", file.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    let out = etcdguard(&args);
    assert!(out.status.success(), "inspect {extra:?}: {}", stderr(&out));
    schema::assert_valid(schema_name, &stdout(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The JSON etcdguard prints for `args` with only `in_memory` entries held in memory, so its
/// sorting goes to disk.
fn sorting_on_disk(args: &[&str], in_memory: usize) -> Value {
    let out = etcdguard_cmd(args)
        .env("ETCDGUARD_TEST_SORT_IN_MEMORY", in_memory.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn snapshot_file(node: &Node) -> PathBuf {
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    PathBuf::from(node.last_record()["local"]["path"].as_str().unwrap())
}

fn inspect_equals_etcdctl(version: &str) {
    let node = Node::start(version, "cp1");
    let filled = fill(&node);
    let file = snapshot_file(&node);
    let s = inspect_json(&file, &["--limit", "50"], "inspect.v1");
    // With 8 entries in memory every key's newest revision is sorted on disk: the same.
    let args = [
        "inspect",
        file.to_str().unwrap(),
        "--output",
        "json",
        "--limit",
        "50",
    ];
    assert_eq!(sorting_on_disk(&args, 8), s, "inspect sorting on disk");

    // Every resource and namespace: keys and value bytes as etcdctl reports them for its prefix.
    let resources = s["resources"].as_array().unwrap();
    let names: Vec<&str> = resources
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    for want in [
        "pods",
        "secrets",
        "deployments",
        "namespaces",
        "minions",
        "services/specs",
        "services/endpoints",
        "apiextensions.k8s.io/customresourcedefinitions",
        "example.com/widgets",
        "configmaps",
        "events",
        "(not Kubernetes: /other)",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in resources {
        let res = r["resource"].as_str().unwrap();
        let prefix = match res.strip_prefix("(not Kubernetes: ") {
            Some(p) => format!("{}/", p.trim_end_matches(')')),
            None => format!("/registry/{res}/"),
        };
        let (count, bytes) = etcdctl_count_and_bytes(&node, &prefix);
        assert_eq!(
            (r["keys"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
            (count, bytes),
            "{prefix}"
        );
        for n in r["namespaces"].as_array().unwrap() {
            let ns = n["namespace"].as_str().unwrap();
            if ns.is_empty() {
                continue;
            }
            let (count, bytes) = etcdctl_count_and_bytes(&node, &format!("{prefix}{ns}/"));
            assert_eq!(
                (n["keys"].as_u64().unwrap(), n["bytes"].as_u64().unwrap()),
                (count, bytes),
                "{prefix}{ns}/"
            );
        }
    }
    let (all, all_bytes) = etcdctl_count_and_bytes(&node, "");
    assert_eq!(
        (s["keys"].as_u64().unwrap(), s["bytes"].as_u64().unwrap()),
        (all, all_bytes)
    );
    assert_eq!(s["kubernetesKeys"].as_u64().unwrap(), all - 1);

    // The keys that exist only in older revisions: exactly the ones deleted.
    let mut deleted: Vec<&str> = s["deletedKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    deleted.sort();
    assert_eq!(deleted, filled.deleted);
    assert_eq!(s["deleted"].as_u64().unwrap(), 3);
    let pods = resources.iter().find(|r| r["resource"] == "pods").unwrap();
    assert_eq!(pods["deleted"], 2);

    // The largest object, the lease with its keys, the snapshot's facts.
    assert_eq!(
        s["largest"][0]["key"],
        "/registry/configmaps/kube-system/big"
    );
    let leases = ctl(&node, &["lease", "list"]);
    let lease = s["leases"].as_array().unwrap();
    assert_eq!(lease.len(), 1);
    assert!(
        leases.contains(lease[0]["id"].as_str().unwrap()),
        "{leases}"
    );
    assert_eq!(
        lease[0]["keys"].as_u64().unwrap() as usize,
        filled.lease_keys
    );
    assert_eq!(s["revision"].as_i64().unwrap(), node.etcd.revision());
    assert_eq!(s["members"][0]["name"], "cp1");
    assert_eq!(s["alarms"].as_array().unwrap().len(), 0);
    let text = etcdguard(&["inspect", file.to_str().unwrap()]);
    assert!(text.status.success(), "{}", stderr(&text));
    for needle in [
        "BY RESOURCE",
        "BY NAMESPACE",
        "LARGEST OBJECTS",
        "DELETED SINCE",
        "example.com/widgets",
    ] {
        assert!(
            stdout(&text).contains(needle),
            "{needle}:\n{}",
            stdout(&text)
        );
    }

    // --get: a JSON value exactly as etcdctl prints it, now and at an older revision; a
    // Kubernetes protobuf object by its envelope and metadata.
    let get = |args: &[&str]| {
        let mut a = vec!["inspect", file.to_str().unwrap(), "--get"];
        a.extend_from_slice(args);
        let out = etcdguard(&a);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(
        get(&[&filled.json_key]).trim_end(),
        ctl(&node, &["get", &filled.json_key, "--print-value-only"]).trim_end()
    );
    let (cm, rev) = &filled.overwritten;
    let rev = rev.to_string();
    assert_eq!(
        get(&[cm, "--revision", &rev]).trim_end(),
        ctl(&node, &["get", cm, "--rev", &rev, "--print-value-only"]).trim_end()
    );
    assert_ne!(get(&[cm]), get(&[cm, "--revision", &rev]));
    let pod = inspect_json(&file, &["--get", &filled.pod_key], "inspect-value.v1");
    assert_eq!(
        (
            pod["encoding"].as_str(),
            pod["kind"].as_str(),
            pod["apiVersion"].as_str()
        ),
        (Some("kubernetes-protobuf"), Some("Pod"), Some("v1"))
    );
    assert_eq!(pod["metadata"]["name"], "pod-2");
    assert_eq!(pod["metadata"]["namespace"], "prod");
    let gone = etcdguard(&[
        "inspect",
        file.to_str().unwrap(),
        "--get",
        &filled.deleted[0],
    ]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("was deleted at revision"),
        "{}",
        stderr(&gone)
    );

    // --keys: the live keys under a prefix, as etcdctl lists them.
    let keys = inspect_json(&file, &["--keys", "/registry/pods/"], "inspect-keys.v1");
    let ours: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    let listed = ctl(
        &node,
        &["get", "--prefix", "--keys-only", "/registry/pods/"],
    );
    let theirs: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(ours, theirs);

    // An encrypted copy, made with the standard tools, reads the same with --identity.
    let dir = node.path("sealed");
    std::fs::create_dir_all(&dir).unwrap();
    let (identity, recipient) = age_key(&dir, "ops");
    let sealed = dir.join("copy.db.zst.age");
    let sh = format!(
        "{} -q -c {} | {} -r {} -o {}",
        system_bin("zstd", "zstd").display(),
        file.display(),
        system_bin("age", "age").display(),
        recipient,
        sealed.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &sh])
        .status()
        .unwrap()
        .success());
    let no_key = etcdguard(&["inspect", sealed.to_str().unwrap()]);
    assert_eq!(no_key.status.code(), Some(2), "{}", stderr(&no_key));
    let opened = inspect_json(
        &sealed,
        &["--limit", "50", "--identity", identity.to_str().unwrap()],
        "inspect.v1",
    );
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("path");
        v
    };
    assert_eq!(strip(opened), strip(s));
}

per_version!(inspect_equals_etcdctl =>
    inspect_equals_etcdctl_3_5: "3.5",
    inspect_equals_etcdctl_3_6: "3.6",
    inspect_equals_etcdctl_3_7: "3.7",
);

#[test]
fn diff_lists_exactly_the_changes_between_two_snapshots() {
    let node = Node::start(crate::util::NEWEST, "cp1");
    fill(&node);
    let a = snapshot_file(&node);
    // Known changes: two added, one removed, one changed, one rewritten with the same bytes.
    let same = std::fs::read(&a).unwrap(); // keep A as it was (the next backup may not touch it)
    let a_copy = node.path("a.db");
    std::fs::write(&a_copy, same).unwrap();
    rt().block_on(async {
        let mut c = node.etcd.client().await.unwrap();
        c.put(
            "/registry/pods/default/new-1",
            k8s_object("v1", "Pod", "default", "new-1", 10),
            None,
        )
        .await
        .unwrap();
        c.put(
            "/registry/example.com/widgets/prod/w-9",
            json_object("Widget", "prod", "w-9"),
            None,
        )
        .await
        .unwrap();
        c.delete("/registry/secrets/prod/secret-1", None)
            .await
            .unwrap();
        c.put(
            "/registry/minions/w1",
            k8s_object("v1", "Node", "", "w1", 801),
            None,
        )
        .await
        .unwrap();
        c.put(
            "/registry/minions/cp1",
            k8s_object("v1", "Node", "", "cp1", 900),
            None,
        )
        .await
        .unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new file name
    let b = snapshot_file(&node);
    let out = etcdguard(&[
        "diff",
        a_copy.to_str().unwrap(),
        b.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    schema::assert_valid("diff.v1", &stdout(&out));
    let d: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let args = [
        "diff",
        a_copy.to_str().unwrap(),
        b.to_str().unwrap(),
        "--output",
        "json",
    ];
    assert_eq!(sorting_on_disk(&args, 8), d, "diff sorting on disk");
    let names = |k: &str| -> Vec<String> {
        d[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("addedKeys"),
        [
            "/registry/example.com/widgets/prod/w-9",
            "/registry/pods/default/new-1"
        ]
    );
    assert_eq!(names("removedKeys"), ["/registry/secrets/prod/secret-1"]);
    assert_eq!(names("changedKeys"), ["/registry/minions/w1"]);
    assert_eq!(
        (
            d["added"].as_u64(),
            d["removed"].as_u64(),
            d["changed"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let rows: BTreeMap<(String, String), (u64, u64, u64)> = d["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["resource"].as_str().unwrap().to_string(),
                    r["namespace"].as_str().unwrap().to_string(),
                ),
                (
                    r["added"].as_u64().unwrap(),
                    r["removed"].as_u64().unwrap(),
                    r["changed"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let own = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        rows,
        BTreeMap::from([
            (own("example.com/widgets", "prod"), (1, 0, 0)),
            (own("minions", ""), (0, 0, 1)),
            (own("pods", "default"), (1, 0, 0)),
            (own("secrets", "prod"), (0, 1, 0)),
        ])
    );
    let text = etcdguard(&["diff", a_copy.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(
        stdout(&text).contains("2 added, 1 removed, 1 changed"),
        "{}",
        stdout(&text)
    );
    let same = etcdguard(&[
        "diff",
        b.to_str().unwrap(),
        b.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let same: Value = serde_json::from_str(&stdout(&same)).unwrap();
    assert_eq!(
        (
            same["added"].as_u64(),
            same["removed"].as_u64(),
            same["changed"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
}
