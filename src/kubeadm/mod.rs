//! Everything kubeadm-specific: reading the etcd static pod manifest (and, for restore,
//! rewriting it). Pure parsing over text; the only I/O is reading the file in [`EtcdManifest::load`].

mod manifest;
mod rewrite;

pub use manifest::{split_url, split_urls, EtcdManifest, HostDataDir, ManifestError};
pub use rewrite::{rewrite_etcd_flags, RewriteMode, Rewritten};
