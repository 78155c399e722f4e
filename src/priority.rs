//! Running gently beside etcd: a backup by hand (`etcdguard snapshot`) lowers its own CPU and
//! I/O priority before it starts any thread, so etcd on the same node wins every contest for a
//! core or the disk. The daemon gets the same from its unit (`Nice=`, `IOSchedulingClass=`,
//! `IOSchedulingPriority=`, `CPUWeight=`), whose seccomp filter does not allow these calls.
//! `bench/run --load` measures what it buys.

/// The nice value a backup runs at (etcd runs at 0).
pub const NICE: i32 = 10;
/// I/O: the best-effort class at its lowest level. Not the idle class: on a disk that is never
/// idle, an idle-class backup could wait forever.
const IOPRIO_CLASS_BE: i32 = 2;
const IOPRIO_LEVEL: i32 = 7;
const IOPRIO_CLASS_SHIFT: i32 = 13;
const IOPRIO_WHO_PROCESS: i32 = 1;

/// Lowers the calling thread's CPU and I/O priority (threads started later inherit both).
/// Returns what could not be done, for a warning; the backup goes on either way.
pub fn lower() -> Vec<String> {
    let mut problems = Vec::new();
    // SAFETY: plain syscalls on the calling thread with constant arguments.
    let nice = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, NICE) };
    if nice != 0 {
        problems.push(format!(
            "cannot lower the CPU priority (nice {NICE}): {}",
            std::io::Error::last_os_error()
        ));
    }
    let prio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | IOPRIO_LEVEL;
    // SAFETY: as above; ioprio_set has no libc wrapper.
    let io = unsafe { nix::libc::syscall(nix::libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
    if io != 0 {
        problems.push(format!(
            "cannot lower the I/O priority (best-effort, level {IOPRIO_LEVEL}): {}",
            std::io::Error::last_os_error()
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowering_takes_effect_on_this_thread() {
        std::thread::spawn(|| {
            assert!(super::lower().is_empty());
            // SAFETY: reads this thread's nice value.
            let nice = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
            assert_eq!(nice, super::NICE);
            // SAFETY: reads this thread's I/O priority.
            let io = unsafe { nix::libc::syscall(nix::libc::SYS_ioprio_get, 1, 0) };
            assert_eq!(io, (2 << 13) | 7);
        })
        .join()
        .unwrap();
    }
}
