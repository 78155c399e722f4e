//! `inspect` (summary, keys, hashkv) of arbitrary bytes as a database file: it must return,
//! never panic, hang or read out of bounds. Run: scripts/fuzz.
#![no_main]

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static FILE: std::fs::File = {
        let fd = nix::sys::memfd::memfd_create(c"inspect", nix::sys::memfd::MFdFlags::empty())
            .expect("memfd");
        use std::os::fd::IntoRawFd;
        unsafe { std::fs::File::from_raw_fd(fd.into_raw_fd()) }
    };
}

fuzz_target!(|data: &[u8]| {
    FILE.with(|f| {
        let mut f = f.try_clone().unwrap();
        f.set_len(0).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(data).unwrap();
        etcdguard::fuzzing::inspect(f, data.len() as u64);
    });
});
