//! Talking to the local etcd member: TLS material from the host PKI, the connection, member
//! identity, and the snapshot stream with its sha256 trailer check.
//!
//! This module never decides *where* bytes go or whether a backup counts: it hands verified
//! bytes to a writer and reports what it saw. `backup.rs` owns the run.

mod client;
mod snapshot;
mod tls;

pub use client::{
    client_on, connect, dial, explain_connect_error, has_quorum, hash_kv, leader_raft_index,
    member_info, member_list, MemberInfo, Phase,
};
pub use snapshot::{stream_snapshot, SnapshotError, SnapshotSink, StreamLimits, StreamedSnapshot};
pub use tls::{TlsError, TlsMaterial};
