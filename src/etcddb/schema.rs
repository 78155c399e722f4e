//! etcd's schema inside bbolt (restore-spec B.9): bucket and key names, revision keys, and the
//! Member JSON etcd stores (with Go's `encoding/json` escaping, byte for byte). Pure.

pub const KEY: &[u8] = b"key";
pub const META: &[u8] = b"meta";
pub const CLUSTER: &[u8] = b"cluster";
pub const MEMBERS: &[u8] = b"members";
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const ALARM: &[u8] = b"alarm";

pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const TERM: &[u8] = b"term";
pub const STORAGE_VERSION: &[u8] = b"storageVersion";
pub const SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";
pub const DOWNGRADE: &[u8] = b"downgrade";

/// A revision key of the `key` bucket: 8-byte big-endian `main`, `'_'`, 8-byte `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
