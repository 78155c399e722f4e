//! Restoring etcd from a snapshot. `datadir` builds a data directory the way
//! `etcdutl snapshot restore` does, byte for byte where it matters; `guarded` is the guarded
//! restore of a kubeadm node built on it (guards, `journal`, manifest swap, rollback), with
//! `probe` telling whether etcd really stopped. `source` finds the snapshot a restore (or
//! `decrypt`) names, downloads it and opens it when it is sealed; `recover` rebuilds a lost
//! node from its recovery bundle, then restores it.

pub mod datadir;
pub(crate) mod guarded;
pub(crate) mod journal;
pub(crate) mod probe;
pub(crate) mod recover;
pub(crate) mod source;
