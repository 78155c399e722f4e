//! What Kubernetes keeps in etcd, read without its schemas. Pure.
//!
//! Keys: kube-apiserver stores an object at `/registry/<resource>/<namespace>/<name>`, or
//! `/registry/<resource>/<name>` when it is cluster-scoped; resources of API groups that are
//! not built in (CRDs, aggregated APIs) sit one level deeper, `/registry/<group>/<resource>/…`,
//! and a group has a dot in its name (resource names never do). Services keep two trees,
//! `services/specs` and `services/endpoints`. Names and namespaces never contain `/`.
//!
//! Values: JSON (CRDs, some built-ins), or protobuf: the four bytes `k8s\0` and a
//! `runtime.Unknown` {typeMeta {apiVersion, kind}, raw, contentEncoding, contentType} whose
//! `raw` is the object. Every Kubernetes object's field 1 is its `metadata` (ObjectMeta), so
//! that much decodes soundly for any kind; the rest needs the kind's schema and is shown as
//! base64. Values encrypted at rest by kube-apiserver start with `k8s:enc:<provider>:v1:<key>:`.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Serialize;

use crate::protowire::Message;

pub const REGISTRY: &str = "/registry/";

/// The resource and namespace of a key ("" for a cluster-scoped object). Keys outside
/// `/registry/` are grouped by their first path segment.
pub fn classify(key: &[u8]) -> (String, String) {
    let key = String::from_utf8_lossy(key);
    let Some(rest) = key.strip_prefix(REGISTRY) else {
        let first = key
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        return (format!("(not Kubernetes: /{first})"), String::new());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (resource, tail) = match parts.as_slice() {
        [group, res, tail @ ..] if group.contains('.') => (format!("{group}/{res}"), tail),
        ["services", kind @ ("specs" | "endpoints"), tail @ ..] => {
            (format!("services/{kind}"), tail)
        }
        [res, tail @ ..] => (res.to_string(), tail),
        [] => (String::new(), &[][..]),
    };
    let namespace = match tail {
        [ns, _name, ..] => ns.to_string(),
        _ => String::new(),
    };
    (resource, namespace)
}

/// The `metadata` of a Kubernetes object (ObjectMeta's fields that identify and label it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

/// A value as etcdguard can show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A JSON document (shown as stored).
    Json,
    /// Kubernetes' protobuf envelope.
    Kubernetes {
        api_version: String,
        kind: String,
        metadata: Option<Box<ObjectMeta>>,
        /// The object's own bytes (`raw`), which need the kind's schema.
        raw: Vec<u8>,
    },
    /// Encrypted at rest by kube-apiserver (`--encryption-provider-config`).
    EncryptedAtRest { provider: String, key: String },
    /// UTF-8 text that is not JSON.
    Text,
    /// Anything else.
    Binary,
}

const K8S_MAGIC: &[u8] = b"k8s\0";
const ENC_PREFIX: &[u8] = b"k8s:enc:";

pub fn decode(value: &[u8]) -> Decoded {
    if let Some(rest) = value.strip_prefix(ENC_PREFIX) {
        let mut parts = rest.splitn(4, |b| *b == b':');
        let provider = parts
            .next()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let _version = parts.next();
        let key = parts
            .next()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return Decoded::EncryptedAtRest {
            provider: provider.into_owned(),
            key: key.into_owned(),
        };
    }
    if let Some(env) = value.strip_prefix(K8S_MAGIC) {
        if let Some(d) = envelope(env) {
            return d;
        }
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok() {
        return Decoded::Json;
    }
    if std::str::from_utf8(value).is_ok() {
        return Decoded::Text;
    }
    Decoded::Binary
}

fn envelope(env: &[u8]) -> Option<Decoded> {
    let unknown = Message::parse(env)?;
    let type_meta = Message::parse(unknown.bytes(1)?)?;
    let raw = unknown.bytes(2).unwrap_or_default();
    let metadata = Message::parse(raw)
        .and_then(|obj| obj.bytes(1).map(<[u8]>::to_vec))
        .and_then(|m| object_meta(&m))
        .map(Box::new);
    Some(Decoded::Kubernetes {
        api_version: type_meta.str(1).unwrap_or_default().to_string(),
        kind: type_meta.str(2).unwrap_or_default().to_string(),
        metadata,
        raw: raw.to_vec(),
    })
}

/// `metav1.Time{seconds, nanos}` as RFC 3339.
fn time(b: &[u8]) -> Option<String> {
    let t = Message::parse(b)?;
    let secs = t.int(1).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn string_map(entries: Vec<&[u8]>) -> Option<BTreeMap<String, String>> {
    entries
        .into_iter()
        .map(|e| {
            let m = Message::parse(e)?;
            Some((m.str(1)?.to_string(), m.str(2).unwrap_or("").to_string()))
        })
        .collect()
}

/// ObjectMeta (k8s.io/apimachinery meta/v1): name 1, generateName 2, namespace 3, uid 5,
/// resourceVersion 6, generation 7, creationTimestamp 8, deletionTimestamp 9, labels 11,
/// annotations 12, finalizers 14. `None` when the bytes are not shaped like one.
fn object_meta(b: &[u8]) -> Option<ObjectMeta> {
    let m = Message::parse(b)?;
    let s = |n| {
        m.bytes(n)
            .map(|b| std::str::from_utf8(b).map(str::to_string))
    };
    let text = |n| -> Option<String> {
        match s(n) {
            None => Some(String::new()),
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => None,
        }
    };
    Some(ObjectMeta {
        name: text(1)?,
        generate_name: text(2)?,
        namespace: text(3)?,
        uid: text(5)?,
        resource_version: text(6)?,
        generation: m.int(7),
        creation_timestamp: m.bytes(8).and_then(time),
        deletion_timestamp: m.bytes(9).and_then(time),
        labels: string_map(m.repeated_bytes(11))?,
        annotations: string_map(m.repeated_bytes(12))?,
        finalizers: m
            .repeated_bytes(14)
            .into_iter()
            .map(|f| std::str::from_utf8(f).ok().map(str::to_string))
            .collect::<Option<Vec<_>>>()?,
    })
}

/// A value as JSON for `inspect --get --output json`: JSON as itself, Kubernetes protobuf as
/// its envelope and metadata with the object's bytes in base64, text as a string, anything
/// else in base64.
pub fn value_json(value: &[u8]) -> serde_json::Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match decode(value) {
        Decoded::Json => serde_json::json!({
            "encoding": "json",
            "value": serde_json::from_slice::<serde_json::Value>(value).unwrap_or_default(),
        }),
        Decoded::Kubernetes {
            api_version,
            kind,
            metadata,
            raw,
        } => serde_json::json!({
            "encoding": "kubernetes-protobuf",
            "apiVersion": api_version,
            "kind": kind,
            "metadata": metadata,
            "rawBase64": b64(&raw),
        }),
        Decoded::EncryptedAtRest { provider, key } => serde_json::json!({
            "encoding": "kubernetes-encrypted",
            "provider": provider,
            "keyName": key,
            "valueBase64": b64(value),
        }),
        Decoded::Text => serde_json::json!({
            "encoding": "text",
            "value": String::from_utf8_lossy(value),
        }),
        Decoded::Binary => serde_json::json!({
            "encoding": "binary",
            "valueBase64": b64(value),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn c(k: &str) -> (String, String) {
        classify(k.as_bytes())
    }

    #[test]
    fn keys_are_placed_by_the_registry_layout() {
        let own = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(c("/registry/pods/default/web-1"), own("pods", "default"));
        assert_eq!(c("/registry/namespaces/default"), own("namespaces", ""));
        assert_eq!(c("/registry/minions/cp1"), own("minions", ""));
        assert_eq!(
            c("/registry/services/specs/default/kubernetes"),
            own("services/specs", "default")
        );
        assert_eq!(
            c("/registry/services/endpoints/kube-system/kube-dns"),
            own("services/endpoints", "kube-system")
        );
        assert_eq!(
            c("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"),
            own("apiextensions.k8s.io/customresourcedefinitions", "")
        );
        assert_eq!(
            c("/registry/cilium.io/ciliumnetworkpolicies/prod/deny-all"),
            own("cilium.io/ciliumnetworkpolicies", "prod")
        );
        assert_eq!(c("/registry/ranges/serviceips"), own("ranges", ""));
        assert_eq!(
            c("/registry/leases/kube-node-lease/cp1"),
            own("leases", "kube-node-lease")
        );
        assert_eq!(c("/other/thing"), own("(not Kubernetes: /other)", ""));
        assert_eq!(c("plain"), own("(not Kubernetes: /plain)", ""));
    }

    /// A ConfigMap as kube-apiserver stores it in protobuf.
    pub(crate) fn configmap_protobuf() -> Vec<u8> {
        fn field(out: &mut Vec<u8>, n: u8, b: &[u8]) {
            out.push(n << 3 | 2);
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
        let mut meta = Vec::new();
        field(&mut meta, 1, b"cfg");
        field(&mut meta, 3, b"default");
        field(&mut meta, 5, b"0b6f-uid");
        let mut ts = Vec::new();
        ts.extend_from_slice(&[0x08, 0x80, 0xa0, 0xd6, 0xc9, 0x06]); // seconds
        field(&mut meta, 8, &ts);
        let mut label = Vec::new();
        field(&mut label, 1, b"app");
        field(&mut label, 2, b"web");
        field(&mut meta, 11, &label);
        let mut obj = Vec::new();
        field(&mut obj, 1, &meta);
        field(&mut obj, 2, b"\x0a\x01k\x12\x01v");
        let mut tm = Vec::new();
        field(&mut tm, 1, b"v1");
        field(&mut tm, 2, b"ConfigMap");
        let mut unknown = Vec::new();
        field(&mut unknown, 1, &tm);
        field(&mut unknown, 2, &obj);
        let mut v = b"k8s\0".to_vec();
        v.extend_from_slice(&unknown);
        v
    }

    #[test]
    fn values_decode_by_what_they_are() {
        match decode(&configmap_protobuf()) {
            Decoded::Kubernetes {
                api_version,
                kind,
                metadata: Some(m),
                ..
            } => {
                assert_eq!((api_version.as_str(), kind.as_str()), ("v1", "ConfigMap"));
                assert_eq!((m.name.as_str(), m.namespace.as_str()), ("cfg", "default"));
                assert_eq!(m.uid, "0b6f-uid");
                assert_eq!(m.labels.get("app").map(String::as_str), Some("web"));
                assert!(m.creation_timestamp.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(br#"{"kind":"Widget"}"#), Decoded::Json);
        assert_eq!(decode(b"hello"), Decoded::Text);
        assert_eq!(decode(&[0xff, 0x00]), Decoded::Binary);
        assert_eq!(
            decode(b"k8s:enc:aescbc:v1:key1:\x01\x02"),
            Decoded::EncryptedAtRest {
                provider: "aescbc".into(),
                key: "key1".into()
            }
        );
        let j = value_json(&configmap_protobuf());
        assert_eq!(j["kind"], "ConfigMap");
        assert_eq!(j["metadata"]["name"], "cfg");
        assert_eq!(value_json(br#"{"a":1}"#)["value"]["a"], 1);
    }
}
