//! Restoring etcd from a snapshot. `datadir` builds a data directory the way
//! `etcdutl snapshot restore` does, byte for byte where it matters; the guarded kubeadm restore
//! (manifest, guards, journal, rollback) builds on it.

pub mod datadir;
