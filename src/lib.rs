//! etcdguard: scheduled, verified etcd snapshots and guarded restore for kubeadm nodes.
//! See `docs/architecture.md` for the map of modules.
//!
//! Public are only the modules the binary, the integration tests and the fuzz targets use; the
//! rest is private to the crate, so the compiler reports what nothing calls.

pub mod cli;
pub mod commands;
pub mod etcddb;
pub mod exit;
#[doc(hidden)]
pub mod fuzzing;
pub mod kubeadm;
pub mod logging;
pub mod restore;
pub mod stdio;
pub mod store;

mod backup;
mod bundle;
mod clock;
mod cluster;
mod config;
mod copies;
mod crashpoint;
mod daemon;
mod drill;
mod encryption;
mod etcd;
mod etcdversion;
mod failpoint;
mod fsutil;
mod inspect;
mod metrics;
mod pacing;
mod pins;
mod preflight;
mod priority;
mod progress;
mod protowire;
mod records;
mod retention;
mod schedule;
mod spill;
mod state;
