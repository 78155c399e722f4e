//! The protobuf messages a restore writes, hand-encoded as etcd's own marshallers do
//! (restore-spec C.7): fields in ascending number, optional bytes and messages only when
//! present, repeated integers unpacked. etcd ≤ 3.6 marshals with gogo/protobuf, which emits
//! non-nullable scalars even when zero; etcd 3.7 with protobuf-go, whose proto2 pointer fields
//! are left out when nil: `ConfChange.id` (`08 00`) and `ConfState.auto_leave` (`28 00`) are the
//! two zeros a restore writes that 3.7 omits ([`Encoding`]). Generic protobuf libraries differ
//! on exactly these points, which would change the bytes. Pure.

/// Whose marshaller the bytes must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// gogo/protobuf: etcd 3.5 and 3.6.
    Gogo,
    /// protobuf-go: etcd 3.7.
    ProtobufGo,
}

impl Encoding {
    pub fn for_target(target: crate::etcdversion::Minor) -> Encoding {
        if target.omits_zero_raft_fields() {
            Encoding::ProtobufGo
        } else {
            Encoding::Gogo
        }
    }
}

const VARINT: u64 = 0;
const LEN: u64 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3 | VARINT);
    varint(out, v);
}

fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, field << 3 | LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// `raftpb.ConfState{voters, auto_leave=false}` (no learners: restore makes voters only).
pub fn conf_state(voters: &[u64], enc: Encoding) -> Vec<u8> {
    let mut o = Vec::new();
    for v in voters {
        uint(&mut o, 1, *v);
    }
    if enc == Encoding::Gogo {
        uint(&mut o, 5, 0); // auto_leave
    }
    o
}

/// `walpb.Record{type, crc, data?}`.
pub fn wal_record(kind: i64, crc: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut o = Vec::new();
    uint(&mut o, 1, kind as u64);
    uint(&mut o, 2, u64::from(crc));
    if let Some(d) = data {
        bytes(&mut o, 3, d);
    }
    o
}

/// `walpb.Snapshot{index, term, conf_state?}`.
pub fn wal_snapshot(index: u64, term: u64, conf: Option<&[u64]>, enc: Encoding) -> Vec<u8> {
    let mut o = Vec::new();
    uint(&mut o, 1, index);
    uint(&mut o, 2, term);
    if let Some(voters) = conf {
        bytes(&mut o, 3, &conf_state(voters, enc));
    }
    o
}

/// `etcdserverpb.Metadata{NodeID, ClusterID}`.
pub fn metadata(node_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut o = Vec::new();
    uint(&mut o, 1, node_id);
    uint(&mut o, 2, cluster_id);
    o
}

/// `raftpb.ConfChange{ID 0, Type AddNode, NodeID, Context}`.
pub fn conf_change_add(node_id: u64, context: &[u8], enc: Encoding) -> Vec<u8> {
    let mut o = Vec::new();
    if enc == Encoding::Gogo {
        uint(&mut o, 1, 0); // id
    }
    uint(&mut o, 2, 0);
    uint(&mut o, 3, node_id);
    bytes(&mut o, 4, context);
    o
}

/// `raftpb.Entry{Type, Term, Index, Data?}`.
pub fn entry(kind: u64, term: u64, index: u64, data: Option<&[u8]>) -> Vec<u8> {
    let mut o = Vec::new();
    uint(&mut o, 1, kind);
    uint(&mut o, 2, term);
    uint(&mut o, 3, index);
    if let Some(d) = data {
        bytes(&mut o, 4, d);
    }
    o
}

/// `raftpb.HardState{term, vote, commit}`.
pub fn hard_state(term: u64, vote: u64, commit: u64) -> Vec<u8> {
    let mut o = Vec::new();
    uint(&mut o, 1, term);
    uint(&mut o, 2, vote);
    uint(&mut o, 3, commit);
    o
}

/// `raftpb.Snapshot{data, metadata{conf_state, index, term}}`.
pub fn raft_snapshot(data: &[u8], voters: &[u64], index: u64, term: u64, enc: Encoding) -> Vec<u8> {
    let mut meta = Vec::new();
    bytes(&mut meta, 1, &conf_state(voters, enc));
    uint(&mut meta, 2, index);
    uint(&mut meta, 3, term);
    let mut o = Vec::new();
    bytes(&mut o, 1, data);
    bytes(&mut o, 2, &meta);
    o
}

/// `snappb.Snapshot{crc, data}`.
pub fn snap_file(crc: u32, data: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    uint(&mut o, 1, u64::from(crc));
    bytes(&mut o, 2, data);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_spec_dump() {
        // The bytes of a real etcdutl WAL for one member (restore-spec C.5 worked example).
        assert_eq!(wal_record(4, 0, None), [0x08, 0x04, 0x10, 0x00]);
        assert_eq!(
            wal_snapshot(0, 0, None, Encoding::Gogo),
            [0x08, 0x00, 0x10, 0x00]
        );
        let md = metadata(0x2fa26575b68fb30e, 0xf2358af6520819fb);
        assert_eq!(&md[..3], &[0x08, 0x8e, 0xe6]);
        assert_eq!(hard_state(1, 0x2fa26575b68fb30e, 1).len(), 14);
        assert_eq!(
            conf_state(&[1, 2], Encoding::Gogo),
            [0x08, 1, 0x08, 2, 0x28, 0]
        );
    }

    #[test]
    fn protobuf_go_leaves_out_the_nil_zeros() {
        assert_eq!(
            conf_state(&[1, 2], Encoding::ProtobufGo),
            [0x08, 1, 0x08, 2]
        );
        assert_eq!(
            conf_change_add(7, b"c", Encoding::ProtobufGo),
            [0x10, 0, 0x18, 7, 0x22, 1, b'c']
        );
        assert_eq!(
            conf_change_add(7, b"c", Encoding::Gogo),
            [0x08, 0, 0x10, 0, 0x18, 7, 0x22, 1, b'c']
        );
    }
}
