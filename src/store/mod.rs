//! Where snapshots are kept. `local` is the snapshot directory on this node; the remote
//! object store joins it here.

pub(crate) mod local;
pub(crate) mod remote;

pub use remote::http;
