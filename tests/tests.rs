//! Integration tests: one test binary, modules per concern, shared support in `util`.
//! They run the real etcdguard binary against real etcd servers (3.5, 3.6 and 3.7) over TLS.

#[macro_use]
mod util;

// libtest starts tests in name order (four at a time in CI): the two longest, minutes each
// against seconds for most others, are named to start first, beside the rest, instead of
// last and alone (a fresh CI run spent its last three and a half minutes on them).
#[path = "torture.rs"]
mod a_torture;
#[path = "year.rs"]
mod a_year;

mod alerts;
mod backup;
mod bad_inputs;
mod cli;
mod clock;
mod cluster;
mod daemon;
mod destinations;
mod disk;
mod drill;
mod eio;
mod encryption;
mod engine;
mod inspect;
mod kubernetes;
mod network;
mod pacing;
mod recover;
mod remote;
mod restore;
mod retention;
mod schemas;
mod verify;
mod versions;
