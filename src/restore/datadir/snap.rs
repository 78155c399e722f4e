//! The `.snap` file of a restored member (restore-spec C.6): a raft snapshot at index N, term 1,
//! whose data is the v2 store holding only `/0/members/<id>/raftAttributes`, in etcd 3.5's
//! deterministic JSON layout. etcdutl 3.6 and 3.7 build it differently (from a fresh v2 store,
//! after one failed lookup, so their stats say `getsFail: 1`; the member nodes are created in
//! Go map order, so with several members their indexes differ from run to run); 3.7 writes it
//! but no longer reads it.
//! Pure.

use super::plan::Cluster;
use super::proto::{self, Encoding};
use crate::etcddb::schema::{go_json_string, hex_id, raft_attributes_json};
use crate::etcdversion::Minor;

/// `%016x-%016x.snap` of (term 1, index N).
pub fn file_name(cluster: &Cluster) -> String {
    format!("{:016x}-{:016x}.snap", 1, cluster.members.len())
}

fn node(path: &str, index: usize, value: &str, children: Option<&str>) -> String {
    let mut s = String::from("{\"Path\":");
    go_json_string(&mut s, path);
    s.push_str(&format!(
        ",\"CreatedIndex\":{index},\"ModifiedIndex\":{index},\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":"
    ));
    go_json_string(&mut s, value);
    s.push_str(",\"Children\":");
    s.push_str(children.unwrap_or("null"));
    s.push('}');
    s
}

/// The v2 store JSON as etcdutl of `target` writes it (members in ID order).
pub fn v2_store_json(cluster: &Cluster, target: Minor) -> String {
    // etcdutl ≥ 3.6 looks a key up in the fresh store before it adds the members.
    let gets_fail = u8::from(target >= Minor::V3_6);
    let n = cluster.members.len();
    // Member i (1-based, ID order) was created at index i.
    let indexed: Vec<(usize, String, String)> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (i + 1, hex_id(m.id), raft_attributes_json(&m.peer_urls)))
        .collect();
    // Go marshals map keys sorted as strings: unpadded hex IDs sort differently from numbers.
    let mut by_hex: Vec<&(usize, String, String)> = indexed.iter().collect();
    by_hex.sort_by(|a, b| a.1.cmp(&b.1));
    let mut members = String::from("{");
    for (k, (i, hex, ra)) in by_hex.iter().enumerate() {
        if k > 0 {
            members.push(',');
        }
        let base = format!("/0/members/{hex}");
        let attrs = node(&format!("{base}/raftAttributes"), *i, ra, None);
        let member = node(
            &base,
            *i,
            "",
            Some(&format!("{{\"raftAttributes\":{attrs}}}")),
        );
        go_json_string(&mut members, hex);
        members.push(':');
        members.push_str(&member);
    }
    members.push('}');
    let members_node = node("/0/members", 1, "", Some(&members));
    let zero = node(
        "/0",
        0,
        "",
        Some(&format!("{{\"members\":{members_node}}}")),
    );
    let one = node("/1", 0, "", Some("{}"));
    let root = node("/", 0, "", Some(&format!("{{\"0\":{zero},\"1\":{one}}}")));

    let mut events = String::new();
    for (i, hex, ra) in &indexed {
        let mut e = String::from("{\"action\":\"create\",\"node\":{\"key\":");
        go_json_string(&mut e, &format!("/0/members/{hex}/raftAttributes"));
        e.push_str(",\"value\":");
        go_json_string(&mut e, ra);
        e.push_str(&format!(",\"modifiedIndex\":{i},\"createdIndex\":{i}}}}}"));
        events.push_str(&e);
        events.push(',');
    }
    for k in 0..1000 - n {
        events.push_str("null");
        if k + 1 < 1000 - n {
            events.push(',');
        }
    }
    if n == 1000 {
        events.pop();
    }
    format!(
        "{{\"Root\":{root},\"WatcherHub\":{{\"EventHistory\":{{\"Queue\":{{\"Events\":[{events}],\"Size\":{n},\"Front\":0,\"Back\":{n},\"Capacity\":1000}},\"StartIndex\":1,\"LastIndex\":{n}}}}},\"CurrentIndex\":{n},\"Stats\":{{\"getsSuccess\":0,\"getsFail\":{gets_fail},\"setsSuccess\":0,\"setsFail\":0,\"deleteSuccess\":0,\"deleteFail\":0,\"updateSuccess\":0,\"updateFail\":0,\"createSuccess\":{n},\"createFail\":0,\"compareAndSwapSuccess\":0,\"compareAndSwapFail\":0,\"compareAndDeleteSuccess\":0,\"compareAndDeleteFail\":0,\"expireCount\":0,\"watchers\":0}},\"CurrentVersion\":2}}"
    )
}

/// The whole `.snap` file.
pub fn contents(cluster: &Cluster, target: Minor) -> Vec<u8> {
    let n = cluster.members.len() as u64;
    let raft = proto::raft_snapshot(
        v2_store_json(cluster, target).as_bytes(),
        &cluster.ids(),
        n,
        1,
        Encoding::for_target(target),
    );
    proto::snap_file(crc32c::crc32c(&raft), &raft)
}

#[cfg(test)]
mod tests {
    use super::super::plan::worked_example;
    use super::*;

    #[test]
    fn sizes_and_head_match_the_spec() {
        let c = worked_example();
        assert_eq!(v2_store_json(&c, Minor::V3_5).len(), 6459);
        let f = contents(&c, Minor::V3_5);
        assert_eq!(f.len(), 6491);
        assert_eq!(hex::encode(&f[..16]), "08cdf690c10712d2320abb327b22526f");
        assert_eq!(
            hex::encode(&f[f.len() - 20..]),
            "12120a0c088ee6beb4dbae99d12f280010011801"
        );
        assert_eq!(file_name(&c), "0000000000000001-0000000000000001.snap");
        let json: serde_json::Value =
            serde_json::from_str(&v2_store_json(&c, Minor::V3_5)).unwrap();
        assert_eq!(json["CurrentIndex"], 1);
        let json: serde_json::Value =
            serde_json::from_str(&v2_store_json(&c, Minor::V3_6)).unwrap();
        assert_eq!(json["Stats"]["getsFail"], 1);
    }
}
