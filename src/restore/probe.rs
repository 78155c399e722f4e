//! Is etcd (or the API server) really stopped? Listening ports from `/proc/net/tcp{,6}`, and
//! the locks etcd holds on its data dir (restore-spec D.4): bbolt's `flock` on
//! `member/snap/db` and the OFD write locks on the WAL files. Probe locks are released at
//! once: a held flock would make a starting etcd wait forever.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Local ports in LISTEN state in `/proc/net/tcp`-format text. Pure.
pub fn parse_listening(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[3] != "0A" {
            continue;
        }
        if let Some((_, port)) = cols[1].rsplit_once(':') {
            if let Ok(p) = u16::from_str_radix(port, 16) {
                out.push(p);
            }
        }
    }
    out
}

/// TCP ports something listens on, on this host (IPv4 and IPv6).
pub fn listening_ports() -> std::io::Result<BTreeSet<u16>> {
    let mut set = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(f) {
            Ok(t) => set.extend(parse_listening(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(set)
}

/// True while some process holds bbolt's lock on `db` (absent file: false).
pub fn db_locked(db: &Path) -> std::io::Result<bool> {
    let f = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        // Released when dropped, right here.
        Ok(_held_for_an_instant) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

/// True while some process holds a write lock on any WAL file in `wal_dir`.
pub fn wal_locked(wal_dir: &Path) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(wal_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "wal") {
            continue;
        }
        let f = File::open(&path)?;
        // SAFETY: libc::flock is plain data; all zeroes is valid (a whole-file range from 0).
        let mut fl: nix::libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = nix::libc::F_WRLCK as i16;
        fl.l_whence = nix::libc::SEEK_SET as i16;
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl))
            .map_err(std::io::Error::from)?;
        if fl.l_type != nix::libc::F_UNLCK as i16 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What still holds a data dir or its ports; empty when etcd is really stopped.
pub fn still_running(data_dir: &Path, ports: &[u16]) -> Vec<String> {
    let mut why = Vec::new();
    match listening_ports() {
        Ok(open) => {
            for p in ports.iter().filter(|p| open.contains(p)) {
                why.push(format!("port {p} is still listening"));
            }
        }
        Err(e) => why.push(format!("cannot read /proc/net/tcp: {e}")),
    }
    match db_locked(&data_dir.join("member/snap/db")) {
        Ok(true) => why.push("member/snap/db is locked (bbolt flock)".into()),
        Ok(false) => {}
        Err(e) => why.push(format!("cannot probe the db lock: {e}")),
    }
    match wal_locked(&data_dir.join("member/wal")) {
        Ok(true) => why.push("a WAL file is locked (OFD lock)".into()),
        Ok(false) => {}
        Err(e) => why.push(format!("cannot probe the WAL locks: {e}")),
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listeners() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0927 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:9C40 0100007F:0927 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listening(text), [2343]);
    }

    #[test]
    fn locks_are_seen_and_released() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("member/snap/db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        std::fs::write(&db, b"x").unwrap();
        assert!(!db_locked(&db).unwrap());
        let held = Flock::lock(File::open(&db).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
        assert!(db_locked(&db).unwrap());
        drop(held);
        assert!(!db_locked(&db).unwrap());
        // The probe did not leave a lock behind.
        let _again =
            Flock::lock(File::open(&db).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();

        let wal = d.path().join("member/wal");
        std::fs::create_dir_all(&wal).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(wal.join("0000000000000000-0000000000000000.wal"))
            .unwrap();
        assert!(!wal_locked(&wal).unwrap());
        let mut fl: nix::libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = nix::libc::F_WRLCK as i16;
        fl.l_whence = nix::libc::SEEK_SET as i16;
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).unwrap();
        // OFD locks conflict between open file descriptions, even in one process.
        assert!(wal_locked(&wal).unwrap());
        drop(f);
        assert!(!wal_locked(&wal).unwrap());
    }
}
