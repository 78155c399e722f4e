//! Where snapshots are kept. `local` is the snapshot directory on this node; the remote
//! object store joins it here.

pub mod local;
pub mod remote;
