//! A hostile disk: no space at each place etcdguard writes (small tmpfs mounts), and a snapshot
//! directory whose ext4 file system the kernel turns read-only in the middle of a backup (a
//! file-system error with `errors=remount-ro`, raised through ext4's `trigger_fs_error`). Every
//! fault ends in a clear error or record, no partial file, records.json intact, and the next run
//! (space back, disk repaired) repairs what was left. EIO needs device-mapper's `error`/`flakey`
//! targets, which the kernel of these machines does not have: that is not tested here.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::node::Node;
use crate::util::{
    etcdguard, list_dir, restore_datadir_args, stderr, stdout, wait_until, Tmpfs, NEWEST, PEER_URL,
};

/// An ext4 file system on a loop device, mounted with `errors=remount-ro`: `fail` makes the
/// kernel turn it read-only under the running writers, as a disk error does on a real node.
struct Ext4 {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Ext4 {
    fn new(size: &str) -> Ext4 {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run_ok(Command::new("truncate").args(["-s", size]).arg(&image));
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let e = Ext4 { dir, image };
        e.mount();
        e
    }

    fn mount(&self) {
        run_ok(
            Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(&self.image)
                .arg(self.path()),
        );
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The kernel records a file-system error and remounts read-only (emergency_ro).
    fn fail(&self) {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(self.path())
            .output()
            .unwrap();
        let dev = stdout(&out).trim().rsplit('/').next().unwrap().to_string();
        std::fs::write(
            format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
            "etcdguard disk test",
        )
        .unwrap();
    }

    /// Unmounts, checks and repairs, mounts again read-write: the operator's fix.
    fn repair(&self) {
        run_ok(Command::new("umount").arg(self.path()));
        let _ = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .output();
        self.mount();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).output();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (the disk tests need mount, mkfs.ext4 and e2fsck: scripts/install-test-deps installs them)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed (the disk tests need root and loop devices): {}",
        stderr(&out)
    );
}

#[test]
fn no_space_at_each_write_site_and_a_read_only_snapshot_dir() {
    let mut node = Node::start(NEWEST, "cp1");
    node.etcd.put_keys("disk", 4000);
    let ok = node.snapshot();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let good = PathBuf::from(node.last_record()["local"]["path"].as_str().unwrap());
    let size = std::fs::metadata(&good).unwrap().len();
    assert!(
        size > 2 << 20,
        "want a snapshot larger than the small disks: {size}"
    );

    // 1. The snapshot directory fills up during the stream: a Failed record that says so,
    //    no partial file, no snapshot file.
    let small = Tmpfs::new("1m");
    let snaps = small.path().join("snapshots");
    node.set_path("local_storage", "path", &snaps);
    let out = node.snapshot();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = node.last_record();
    assert_eq!(r["result"], "Failed");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(reason.contains(&snaps.display().to_string()), "{reason}");
    assert_eq!(list_dir(&snaps), Vec::<String>::new(), "left behind");

    // 2. The snapshot directory's file system turned read-only by the kernel in the middle of
    //    a backup (an ext4 error with errors=remount-ro): a Failed record naming the file; the
    //    partial file it could not remove goes at the next run, once the disk is repaired.
    let disk = Ext4::new("64M");
    let snaps = disk.path().join("snapshots");
    node.set_path("local_storage", "path", &snaps);
    node.set("etcd", "rate_limit", "\"1MiB/s\"");
    let child = node.run_spawn(&["snapshot"]);
    wait_until(
        "a partial file to appear",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || list_dir(&snaps).iter().any(|n| n.ends_with(".partial")),
    );
    std::thread::sleep(Duration::from_millis(500));
    disk.fail();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = node.last_record();
    assert_eq!(r["result"], "Failed");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("Read-only file system"), "{reason}");
    assert!(reason.contains(&snaps.display().to_string()), "{reason}");
    assert!(
        !list_dir(&snaps).iter().any(|n| n.ends_with(".db")),
        "{:?}",
        list_dir(&snaps)
    );
    disk.repair();
    node.unset("etcd", "rate_limit");
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    let files = list_dir(&snaps);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".db"), "{files:?}");

    // 3. The state directory full: the snapshot is published but its record cannot be
    //    written; the command says so, records.json is as it was, and the next run (space
    //    back) adopts the snapshot.
    let state_fs = Tmpfs::new("2m");
    let state = state_fs.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(
        node.state_dir().join("records.json"),
        state.join("records.json"),
    )
    .unwrap();
    node.set_path("", "state_dir", &state);
    let before = std::fs::read(state.join("records.json")).unwrap();
    let filler = state_fs.fill();
    let out = node.snapshot();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("records.json"), "{}", stderr(&out));
    assert_eq!(std::fs::read(state.join("records.json")).unwrap(), before);
    assert!(
        !list_dir(&state).iter().any(|n| n.starts_with('.')),
        "{:?}",
        list_dir(&state)
    );
    std::fs::remove_file(filler).unwrap();
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("adopted"), "{}", stderr(&out));
    let recs: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(state.join("records.json")).unwrap(),
    )
    .unwrap()["records"]
        .as_array()
        .unwrap()
        .clone();
    let present: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["local"]["state"] == "present")
        .collect();
    for f in list_dir(&snaps) {
        assert!(
            present
                .iter()
                .any(|r| r["local"]["path"].as_str().unwrap().ends_with(&f)),
            "{f} has no record"
        );
    }

    // 4. A data dir built onto a full disk, 5. a decrypt into one, 6. a drill whose scratch
    //    dir has no room: each refused or failed, nothing left there.
    let tiny = Tmpfs::new("1m");
    let d = tiny.path().join("data");
    let out = etcdguard(&restore_datadir_args(&good, &d, "cp1", PEER_URL, "t", &[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(list_dir(tiny.path()), Vec::<String>::new());

    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = crate::encryption::age_key(dir.path(), "k.txt");
    let sealed = dir.path().join("s.db.age");
    let st = Command::new(crate::util::system_bin("age", "age"))
        .args([
            "-r",
            &recipient,
            "-o",
            sealed.to_str().unwrap(),
            good.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let target = tiny.path().join("plain.db");
    let out = etcdguard(&[
        "decrypt",
        sealed.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
        "--output",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(list_dir(tiny.path()), Vec::<String>::new());

    node.set_path("drill", "scratch_dir", tiny.path());
    let out = node.run(&["drill", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let space = d["drill"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "space")
        .unwrap();
    assert_eq!(space["result"], "failed", "{d:#}");
    assert!(
        space["detail"].as_str().unwrap().contains("scratch_dir"),
        "{space:#}"
    );
    assert_eq!(list_dir(tiny.path()), Vec::<String>::new());

    // 7. The metrics file's directory full: the backup still succeeds and says why the
    //    metrics were not written.
    let mfs = Tmpfs::new("64k");
    node.set_path("", "metrics_file", &mfs.path().join("etcdguard.prom"));
    mfs.fill();
    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write metrics file"),
        "{}",
        stderr(&out)
    );
    assert!(
        !list_dir(mfs.path()).iter().any(|n| n.contains("etcdguard")),
        "{:?}",
        list_dir(mfs.path())
    );
}
