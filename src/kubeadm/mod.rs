//! Everything kubeadm-specific: reading the etcd static pod manifest (and, for restore,
//! rewriting it). Pure parsing over text; the only I/O is reading the file in [`EtcdManifest::load`].

mod manifest;

pub use manifest::{EtcdManifest, ManifestError};
