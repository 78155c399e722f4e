//! A restored etcd data directory (restore-spec C): `plan` (validation, IDs), `proto`, `wal`
//! and `snap` (the raft files, as bytes) are pure; `build` does the I/O.
//!
//! The layout is the same for etcd 3.5, 3.6 and 3.7; what differs by target version is the
//! raft messages' encoding (`proto::Encoding`) and which versions may meet
//! (`crate::etcdversion`). `tests/engine.rs` compares every target with its own etcdutl.

mod build;
mod plan;
mod proto;
pub(crate) mod read;
mod snap;
mod wal;

pub use build::{build_data_dir, remove_staging, BuildError, BuildOptions, BuildReport};
pub use plan::{resolve, Cluster, PlanError, RestorePlan};

/// The WAL records and `.snap` file of the spec's worked example, for other modules' tests.
#[cfg(test)]
pub(crate) fn worked_example_raft_files() -> (Vec<u8>, Vec<u8>) {
    let c = plan::worked_example();
    (
        wal::records(&c, proto::Encoding::Gogo),
        snap::contents(&c, crate::etcdversion::Minor::V3_5),
    )
}
