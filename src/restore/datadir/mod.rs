//! A restored etcd data directory (restore-spec C): `plan` (validation, IDs), `proto`, `wal`
//! and `snap` (the raft files, as bytes) are pure; `build` does the I/O.
//!
//! etcd 3.6 accepts the same layout (the spec says so from its source; not yet verified
//! against a 3.6 binary, none is available here).

pub mod build;
pub mod plan;
pub mod proto;
pub mod snap;
pub mod wal;

pub use build::{build_data_dir, BuildError, BuildOptions, BuildReport};
pub use plan::{resolve, Cluster, PlanError, RestorePlan};
