//! Reading a restored data dir's raft files back (restore-spec C.5, C.6, D.1): the WAL's
//! records with their CRC chain checked as etcd's decoder checks it, and the `.snap` file. It
//! shares nothing with the writers (`wal`, `snap`, `proto`): it decodes with the generic wire
//! reader and reports meaning, so the drill can compare a built dir with its plan and catch a
//! writer that is wrong. Pure over bytes.

use crate::protowire::Message;

const METADATA: u64 = 1;
const ENTRY: u64 = 2;
const STATE: u64 = 3;
const CRC: u64 = 4;
const SNAPSHOT: u64 = 5;

/// `raftpb.ConfChange` of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfChange {
    /// 0 AddNode, 1 RemoveNode, 2 UpdateNode, 3 AddLearnerNode.
    pub kind: u64,
    pub node_id: u64,
    /// The member's JSON.
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    /// 0 normal, 1 ConfChange, 2 ConfChangeV2.
    pub kind: u64,
    pub conf_change: Option<ConfChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// A `walpb.Snapshot` record: the raft index and term a `.snap` file must exist for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMark {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
}

/// What a WAL says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wal {
    pub node_id: u64,
    pub cluster_id: u64,
    pub entries: Vec<Entry>,
    /// The last HardState record.
    pub hard_state: Option<HardState>,
    pub snapshots: Vec<SnapshotMark>,
    pub records: usize,
}

fn conf_state_voters(b: &[u8]) -> Result<Vec<u64>, String> {
    let m = Message::parse(b).ok_or("a ConfState that does not decode")?;
    let voters = m
        .repeated_uint(1)
        .ok_or("a ConfState whose voters do not decode")?;
    for (n, what) in [
        (2, "learners"),
        (3, "outgoing voters"),
        (4, "next learners"),
    ] {
        if m.numbers().any(|f| f == n) {
            return Err(format!(
                "a ConfState with {what}: a restore makes voters only"
            ));
        }
    }
    Ok(voters)
}

/// Decodes the records at the start of a WAL segment (`bytes` may be a prefix of the file),
/// checking the frame, the CRC chain and each record's type.
pub fn decode_wal(bytes: &[u8]) -> Result<Wal, String> {
    let mut wal = Wal::default();
    let mut at = 0usize;
    let mut crc = 0u32;
    let mut metadata = false;
    while let Some(head) = bytes.get(at..at + 8) {
        let field = u64::from_le_bytes(head.try_into().expect("8 bytes"));
        if field == 0 {
            break; // the preallocated zeros after the last record
        }
        let len = (field & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if field >> 63 == 1 {
            ((field >> 56) & 0x7) as usize
        } else {
            0
        };
        let start = at + 8;
        let rec = bytes
            .get(start..start + len)
            .ok_or_else(|| format!("record {} at byte {at} runs past the end", wal.records + 1))?;
        if len < pad {
            return Err(format!(
                "record {} at byte {at}: bad padding",
                wal.records + 1
            ));
        }
        let n = wal.records + 1;
        let r = Message::parse(rec).ok_or_else(|| format!("record {n} does not decode"))?;
        let kind = r.uint(1).unwrap_or(0);
        let rec_crc = r.uint(2).unwrap_or(0) as u32;
        let data = r.bytes(3).unwrap_or_default();
        if kind == CRC {
            if rec_crc != crc {
                return Err(format!(
                    "record {n}: a crc record carries {rec_crc:08x}, the chain is at {crc:08x}"
                ));
            }
        } else {
            crc = crc32c::crc32c_append(crc, data);
            if rec_crc != crc {
                return Err(format!(
                    "record {n} (type {kind}): crc {rec_crc:08x}, its data gives {crc:08x}: the \
                     WAL is corrupt"
                ));
            }
        }
        let bad = |what: &str| format!("record {n}: {what}");
        match kind {
            CRC => {}
            METADATA => {
                let m = Message::parse(data).ok_or_else(|| bad("metadata does not decode"))?;
                wal.node_id = m.uint(1).unwrap_or(0);
                wal.cluster_id = m.uint(2).unwrap_or(0);
                metadata = true;
            }
            ENTRY => {
                let e = Message::parse(data).ok_or_else(|| bad("an entry that does not decode"))?;
                let kind = e.uint(1).unwrap_or(0);
                let conf_change = if kind == 1 {
                    let c = Message::parse(e.bytes(4).unwrap_or_default())
                        .ok_or_else(|| bad("a ConfChange that does not decode"))?;
                    Some(ConfChange {
                        kind: c.uint(2).unwrap_or(0),
                        node_id: c.uint(3).unwrap_or(0),
                        context: String::from_utf8_lossy(c.bytes(4).unwrap_or_default())
                            .into_owned(),
                    })
                } else {
                    None
                };
                wal.entries.push(Entry {
                    index: e.uint(3).unwrap_or(0),
                    term: e.uint(2).unwrap_or(0),
                    kind,
                    conf_change,
                });
            }
            STATE => {
                let h =
                    Message::parse(data).ok_or_else(|| bad("a HardState that does not decode"))?;
                wal.hard_state = Some(HardState {
                    term: h.uint(1).unwrap_or(0),
                    vote: h.uint(2).unwrap_or(0),
                    commit: h.uint(3).unwrap_or(0),
                });
            }
            SNAPSHOT => {
                let s = Message::parse(data)
                    .ok_or_else(|| bad("a snapshot mark that does not decode"))?;
                let voters = match s.bytes(3) {
                    Some(cs) => conf_state_voters(cs).map_err(|e| bad(&e))?,
                    None => Vec::new(),
                };
                wal.snapshots.push(SnapshotMark {
                    index: s.uint(1).unwrap_or(0),
                    term: s.uint(2).unwrap_or(0),
                    voters,
                });
            }
            other => return Err(bad(&format!("unknown record type {other}"))),
        }
        wal.records = n;
        at = start + len + pad;
    }
    if !metadata {
        return Err("no metadata record (member and cluster ID)".into());
    }
    Ok(wal)
}

/// What a `.snap` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    /// The v2 store's members: hex ID and peer URLs (`/0/members/<id>/raftAttributes`).
    pub members: Vec<(String, Vec<String>)>,
    /// Keys of the v2 store outside `/0/members` and the empty `/1` (etcd ≥ 3.5 refuses a
    /// store with custom content).
    pub other_content: Vec<String>,
}

/// Decodes a `.snap` file: the crc of its raft snapshot, the metadata, and the v2 store JSON.
pub fn decode_snap(bytes: &[u8]) -> Result<Snap, String> {
    let f = Message::parse(bytes).ok_or("the file is not a snappb.Snapshot")?;
    let data = f.bytes(2).ok_or("the file holds no raft snapshot")?;
    let want = f.uint(1).unwrap_or(0) as u32;
    let got = crc32c::crc32c(data);
    if want != got {
        return Err(format!(
            "its crc says {want:08x}, its raft snapshot gives {got:08x}: the file is corrupt"
        ));
    }
    let raft = Message::parse(data).ok_or("the raft snapshot does not decode")?;
    let meta = Message::parse(raft.bytes(2).ok_or("the raft snapshot has no metadata")?)
        .ok_or("the raft snapshot's metadata does not decode")?;
    let voters = conf_state_voters(meta.bytes(1).unwrap_or_default())?;
    let json: serde_json::Value = serde_json::from_slice(raft.bytes(1).unwrap_or_default())
        .map_err(|e| format!("its v2 store is not JSON: {e}"))?;
    let children = |v: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        v.get("Children")
            .and_then(|c| c.as_object())
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let mut members = Vec::new();
    let mut other = Vec::new();
    let root = json.get("Root").ok_or("its v2 store has no Root")?;
    for (k, top) in children(root) {
        match k.as_str() {
            "0" => {
                for (k2, sub) in children(&top) {
                    if k2 != "members" {
                        other.push(format!("/0/{k2}"));
                        continue;
                    }
                    for (hex, m) in children(&sub) {
                        let ra = children(&m)
                            .into_iter()
                            .find(|(k, _)| k == "raftAttributes")
                            .and_then(|(_, v)| {
                                v.get("Value").and_then(|s| s.as_str()).map(str::to_string)
                            })
                            .ok_or_else(|| format!("member {hex} has no raftAttributes"))?;
                        let urls: serde_json::Value = serde_json::from_str(&ra)
                            .map_err(|e| format!("member {hex}'s raftAttributes: {e}"))?;
                        let urls = urls["peerURLs"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|u| u.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        members.push((hex, urls));
                    }
                }
            }
            "1" => {
                for (k2, _) in children(&top) {
                    other.push(format!("/1/{k2}"));
                }
            }
            _ => other.push(format!("/{k}")),
        }
    }
    members.sort();
    Ok(Snap {
        index: meta.uint(2).unwrap_or(0),
        term: meta.uint(3).unwrap_or(0),
        voters,
        members,
        other_content: other,
    })
}

#[cfg(test)]
mod tests {
    use super::super::plan::worked_example;
    use super::super::proto::Encoding;
    use super::super::{snap, wal};
    use super::*;
    use crate::etcdversion::Minor;

    #[test]
    fn reads_back_what_a_restore_writes() {
        let c = worked_example();
        for enc in [Encoding::Gogo, Encoding::ProtobufGo] {
            let mut bytes = wal::records(&c, enc);
            bytes.resize(bytes.len() + 64, 0);
            let w = decode_wal(&bytes).unwrap();
            assert_eq!((w.node_id, w.cluster_id), (c.this().id, c.cluster_id));
            assert_eq!(w.entries.len(), 1);
            let cc = w.entries[0].conf_change.as_ref().unwrap();
            assert_eq!((cc.kind, cc.node_id), (0, c.this().id));
            assert!(cc.context.contains("\"name\":\"n1\""));
            assert_eq!(
                w.hard_state,
                Some(HardState {
                    term: 1,
                    vote: c.this().id,
                    commit: 1
                })
            );
            assert_eq!(w.snapshots.last().unwrap().voters, vec![c.this().id]);
            assert_eq!(w.records, 6);
        }
        for target in [Minor::V3_5, Minor::V3_7] {
            let s = decode_snap(&snap::contents(&c, target)).unwrap();
            assert_eq!((s.index, s.term), (1, 1));
            assert_eq!(s.voters, vec![c.this().id]);
            assert_eq!(
                s.members,
                vec![(
                    format!("{:x}", c.this().id),
                    vec!["http://127.0.0.1:23802".to_string()]
                )]
            );
            assert!(s.other_content.is_empty());
        }
    }

    #[test]
    fn a_flipped_byte_breaks_the_chain_or_the_crc() {
        let c = worked_example();
        let good = wal::records(&c, Encoding::Gogo);
        // A byte inside the member JSON of the entry (record 4).
        let mut bad = good.clone();
        bad[0x80] ^= 1;
        let e = decode_wal(&bad).unwrap_err();
        assert!(e.contains("crc"), "{e}");
        let mut s = snap::contents(&c, Minor::V3_5);
        let n = s.len();
        s[n / 2] ^= 1;
        assert!(decode_snap(&s).unwrap_err().contains("corrupt"));
    }
}
