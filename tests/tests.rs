//! Integration tests: one test binary, modules per concern, shared support in `util`.
//! They run the real etcdguard binary against real etcd servers (3.5 and 3.4) over TLS.

mod util;

mod backup;
mod cli;
mod daemon;
mod engine;
mod remote;
mod restore;
mod retention;
mod verify;
