//! etcdguard: scheduled, verified etcd snapshots and guarded restore for kubeadm nodes.
//! See `docs/architecture.md` for the map of modules.

pub mod backup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod etcd;
pub mod etcddb;
pub mod etcdversion;
pub mod fsutil;
pub mod kubeadm;
pub mod logging;
pub mod metrics;
pub mod records;
pub mod remote_sync;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod store;
