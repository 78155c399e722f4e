//! etcdguard::fuzzing::raft_files on arbitrary input: it must return, never panic or hang, and what
//! it asserts must hold. Run: scripts/fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = etcdguard::fuzzing::raft_files(data);
});
