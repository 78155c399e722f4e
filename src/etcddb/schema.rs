//! etcd's schema inside bbolt (restore-spec B.9): bucket and key names, revision keys, and the
//! Member JSON etcd stores (with Go's `encoding/json` escaping, byte for byte). Pure.

pub const KEY: &[u8] = b"key";
pub const META: &[u8] = b"meta";
pub const CLUSTER: &[u8] = b"cluster";
pub const MEMBERS: &[u8] = b"members";
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const ALARM: &[u8] = b"alarm";
pub const LEASE: &[u8] = b"lease";
pub const AUTH: &[u8] = b"auth";
pub const AUTH_USERS: &[u8] = b"authUsers";
pub const AUTH_ROLES: &[u8] = b"authRoles";

pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const TERM: &[u8] = b"term";
pub const STORAGE_VERSION: &[u8] = b"storageVersion";
pub const SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
pub const FINISHED_COMPACT_REV: &[u8] = b"finishedCompactRev";
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";
pub const DOWNGRADE: &[u8] = b"downgrade";

/// A revision key of the `key` bucket: 8-byte big-endian `main`, `'_'`, 8-byte `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    /// Parses a 17-byte revision key (or an 18-byte tombstone, whose last byte is `t`).
    pub fn parse(k: &[u8]) -> Option<Revision> {
        if k.len() < 17 || k[8] != b'_' {
            return None;
        }
        Some(Revision {
            main: i64::from_be_bytes(k[0..8].try_into().ok()?),
            sub: i64::from_be_bytes(k[9..17].try_into().ok()?),
        })
    }

    pub fn to_bytes(self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[0..8].copy_from_slice(&self.main.to_be_bytes());
        b[8] = b'_';
        b[9..17].copy_from_slice(&self.sub.to_be_bytes());
        b
    }
}

/// A value of the `key` bucket: `mvccpb.KeyValue` (restore-spec C.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyValue<'a> {
    pub key: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: &'a [u8],
    pub lease: i64,
}

impl<'a> KeyValue<'a> {
    /// Decodes `v` as a protobuf decoder would; `None` when it is not a KeyValue. An empty
    /// message (the marker a revision bump writes) is the empty KeyValue.
    pub fn decode(v: &'a [u8]) -> Option<KeyValue<'a>> {
        let m = crate::protowire::Message::parse(v)?;
        Some(KeyValue {
            key: m.bytes(1).unwrap_or_default(),
            create_revision: m.int(2).unwrap_or(0),
            mod_revision: m.int(3).unwrap_or(0),
            version: m.int(4).unwrap_or(0),
            value: m.bytes(5).unwrap_or_default(),
            lease: m.int(6).unwrap_or(0),
        })
    }
}

/// The byte etcd appends to a delete's revision key (`markedRevBytesLen`: 18 bytes).
pub const TOMBSTONE: u8 = b't';

/// A revision key with etcd's tombstone mark.
pub fn is_tombstone(rev: &[u8]) -> bool {
    rev.len() == 18 && rev[17] == TOMBSTONE
}

/// A lease of the `lease` bucket (`leasepb.Lease{ID, TTL, RemainingTTL}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

impl Lease {
    pub fn decode(v: &[u8]) -> Option<Lease> {
        let m = crate::protowire::Message::parse(v)?;
        Some(Lease {
            id: m.int(1).unwrap_or(0),
            ttl: m.int(2).unwrap_or(0),
        })
    }
}

/// An alarm of the `alarm` bucket: its key is `etcdserverpb.AlarmMember{MemberID, Alarm}`.
pub fn decode_alarm(k: &[u8]) -> Option<(u64, &'static str)> {
    let m = crate::protowire::Message::parse(k)?;
    let kind = match m.uint(2).unwrap_or(0) {
        0 => "NONE",
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "UNKNOWN",
    };
    Some((m.uint(1).unwrap_or(0), kind))
}

/// A member as etcd stores it in the `members` bucket (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMember {
    pub id: u64,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_learner: bool,
}

impl StoredMember {
    pub fn decode(v: &[u8]) -> Option<StoredMember> {
        serde_json::from_slice(v).ok()
    }
}

pub fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// etcd's hex form of an ID: lowercase, no padding (Go `strconv.FormatUint(id, 16)`).
pub fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (HTML-safe escaping).
pub fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `["u1","u2"]` with Go escaping.
pub fn go_json_string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(out, s);
    }
    out.push(']');
}

/// The Member JSON of a restored member (restore-spec C.3): `{"id":…,"peerURLs":[…],"name":…}`;
/// `name` is left out when empty, `isLearner` and `clientURLs` always (restore makes voters
/// without client URLs).
pub fn member_json(id: u64, peer_urls: &[String], name: &str) -> String {
    let mut s = format!("{{\"id\":{id},\"peerURLs\":");
    go_json_string_array(&mut s, peer_urls);
    if !name.is_empty() {
        s.push_str(",\"name\":");
        go_json_string(&mut s, name);
    }
    s.push('}');
    s
}

/// `{"peerURLs":[…]}`, the v2 store's raftAttributes value.
pub fn raft_attributes_json(peer_urls: &[String]) -> String {
    let mut s = String::from("{\"peerURLs\":");
    go_json_string_array(&mut s, peer_urls);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys() {
        let r = Revision { main: 25, sub: 1 };
        let b = r.to_bytes();
        assert_eq!(Revision::parse(&b), Some(r));
        let mut t = b.to_vec();
        t.push(b't');
        assert_eq!(Revision::parse(&t), Some(r));
        assert_eq!(Revision::parse(b"short"), None);
        assert!(Revision { main: 2, sub: 0 } > Revision { main: 1, sub: 9 });
    }

    #[test]
    fn key_values_leases_alarms_and_members_decode() {
        // KeyValue{key:"a", create_revision:2, mod_revision:3, version:1, value:"xy", lease:7}
        let kv = [
            0x0a, 1, b'a', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 2, b'x', b'y', 0x30, 7,
        ];
        let d = KeyValue::decode(&kv).unwrap();
        assert_eq!(
            (
                d.key,
                d.create_revision,
                d.mod_revision,
                d.version,
                d.value,
                d.lease
            ),
            (&b"a"[..], 2, 3, 1, &b"xy"[..], 7)
        );
        assert_eq!(KeyValue::decode(&[]), Some(KeyValue::default()));
        assert_eq!(KeyValue::decode(&[0x0a, 5, b'a']), None);
        assert!(is_tombstone(
            &[0; 17].iter().chain(b"t").copied().collect::<Vec<_>>()
        ));
        assert!(!is_tombstone(&[0; 17]));
        assert_eq!(
            Lease::decode(&[0x08, 0x2a, 0x10, 0x3c]),
            Some(Lease { id: 42, ttl: 60 })
        );
        assert_eq!(decode_alarm(&[0x08, 5, 0x10, 1]), Some((5, "NOSPACE")));
        let m = StoredMember::decode(
            br#"{"id":3432417422258189070,"peerURLs":["http://127.0.0.1:23802"],"name":"n1"}"#,
        )
        .unwrap();
        assert_eq!((m.id, m.name.as_str()), (3432417422258189070, "n1"));
    }

    #[test]
    fn member_json_matches_etcd() {
        // The Member JSON etcd itself stores for this member (restore-spec B.6 example).
        assert_eq!(
            member_json(
                3432417422258189070,
                &["http://127.0.0.1:23802".into()],
                "n1"
            ),
            r#"{"id":3432417422258189070,"peerURLs":["http://127.0.0.1:23802"],"name":"n1"}"#
        );
        assert_eq!(
            member_json(1, &["https://a:1".into(), "https://b:2".into()], ""),
            r#"{"id":1,"peerURLs":["https://a:1","https://b:2"]}"#
        );
    }

    #[test]
    fn go_escaping() {
        let mut s = String::new();
        go_json_string(&mut s, "a<b>&\"\\\u{2028}\u{1}é");
        assert_eq!(s, r#""a\u003cb\u003e\u0026\"\\\u2028\u0001é""#);
        assert_eq!(hex_id(0x2fa26575b68fb30e), "2fa26575b68fb30e");
        assert_eq!(hex_id(0xabc), "abc");
    }
}
