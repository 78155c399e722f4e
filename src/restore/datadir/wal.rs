//! The first WAL segment of a restored member (restore-spec C.5), as bytes. Pure.
//!
//! Frame: 8-byte little-endian length (with the padding count in the top byte when padded),
//! the `walpb.Record`, zero padding to 8 bytes. Each record's crc chains CRC-32C over the data
//! of the records before it. The file is preallocated to [`SEGMENT_SIZE`]; the writer fills it.

use super::plan::Cluster;
use super::proto::{self, Encoding};
use crate::etcddb::schema;

/// etcd's WAL segment size; etcdutl preallocates the first segment to exactly this.
pub const SEGMENT_SIZE: u64 = 64 * 1000 * 1000;
pub const FILE_NAME: &str = "0000000000000000-0000000000000000.wal";

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;
const ENTRY_CONF_CHANGE: u64 = 1;

struct Encoder {
    out: Vec<u8>,
    crc: u32,
}

impl Encoder {
    fn frame(&mut self, rec: &[u8]) {
        let len = rec.len() as u64;
        let pad = (8 - len % 8) % 8;
        let field = if pad > 0 {
            len | (0x80 | pad) << 56
        } else {
            len
        };
        self.out.extend_from_slice(&field.to_le_bytes());
        self.out.extend_from_slice(rec);
        self.out.resize(self.out.len() + pad as usize, 0);
    }

    fn record(&mut self, kind: i64, data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        let rec = proto::wal_record(kind, self.crc, Some(data));
        self.frame(&rec);
    }
}

/// The records a restore writes for `cluster`, from the point of view of its own member. The
/// caller writes them at offset 0 of a [`SEGMENT_SIZE`] file of zeros.
pub fn records(cluster: &Cluster, enc: Encoding) -> Vec<u8> {
    let ids = cluster.ids();
    let n = ids.len() as u64;
    let mut e = Encoder {
        out: Vec::new(),
        crc: 0,
    };
    // A crc record carries the running crc before it (0 at the start) and no data.
    e.frame(&proto::wal_record(CRC, 0, None));
    e.record(
        METADATA,
        &proto::metadata(cluster.this().id, cluster.cluster_id),
    );
    e.record(SNAPSHOT, &proto::wal_snapshot(0, 0, None, enc));
    for (i, m) in cluster.members.iter().enumerate() {
        let ctx = schema::member_json(m.id, &m.peer_urls, &m.name);
        let cc = proto::conf_change_add(m.id, ctx.as_bytes(), enc);
        e.record(
            ENTRY,
            &proto::entry(ENTRY_CONF_CHANGE, 1, i as u64 + 1, Some(&cc)),
        );
    }
    e.record(STATE, &proto::hard_state(1, ids[0], n));
    e.record(SNAPSHOT, &proto::wal_snapshot(n, 1, Some(&ids), enc));
    e.out
}

#[cfg(test)]
mod tests {
    use super::super::plan::worked_example;
    use super::*;

    #[test]
    fn matches_the_worked_example() {
        // A WAL etcdutl wrote for 1 member n1, http://127.0.0.1:23802, token newtok (restore-spec
        // C.5 worked example).
        let c = worked_example();
        let w = records(&c, Encoding::Gogo);
        let hex = |r: std::ops::Range<usize>| hex::encode(&w[r]);
        assert_eq!(hex(0..16), "04000000000000840804100000000000");
        assert_eq!(hex(16..32), "1f00000000000081080110dafbfdc30e");
        assert_eq!(hex(0xc8..0xd8), "1800000000000000080310e09cb3ae07");
        assert_eq!(hex(0xe8..0xf8), "1c0000000000008408051093c792990b");
        assert_eq!(w.len(), 0x110);
        assert_eq!(hex(0x100..0x110), "088ee6beb4dbae99d12f280000000000");
    }
}
