//! The command line: usage errors, configuration errors (exit 78), `config check`, `records`.

use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::util::node::Node;
use crate::util::schema;
use crate::util::{assert_stderr_has, etcdguard, etcdguard_cmd, etcdguard_cmd_of, stderr, stdout};

fn with_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("etcdguard.toml");
    std::fs::write(&p, text).unwrap();
    (d, p)
}

/// Runs `etcdguard --config <p> args` and asserts exit 78 and that stderr contains `needles`.
fn assert_config_error(p: &Path, args: &[&str], needles: &[&str]) {
    let mut all = vec!["--config", p.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = etcdguard(&all);
    assert_eq!(out.status.code(), Some(78), "{all:?}: {}", stderr(&out));
    for n in needles {
        assert!(
            stderr(&out).contains(n),
            "{all:?}: stderr lacks {n:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_configs_exit_78_with_precise_messages() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[local_storage]\nttl = \"7d\"\nmin_kep = 2\n",
            &[":3:1:", "unknown field `min_kep`"],
        ),
        (
            "schedule = \"0 */6 * *\"\n",
            &[":1:12:", "schedule:", "5-field"],
        ),
        (
            "schedule = \"0 25 * * *\"\n",
            &[":1:12:", "schedule:", "not a valid cron"],
        ),
        (
            "[local_storage]\nttl = -3600\n",
            &[":2:7:", "local_storage.ttl:", "positive"],
        ),
        ("timezone = \"Moon/Base\"\n", &["timezone:", "IANA"]),
        (
            "[etcd]\nendpoint = \"http://127.0.0.1:2379\"\n",
            &["etcd.endpoint:", "https://"],
        ),
        ("paused = \"yes\"\n", &[":1:10:", "invalid type"]),
    ];
    for (text, needles) in cases {
        let (_d, p) = with_config(text);
        for args in [&["snapshot"][..], &["config", "check"], &["records"]] {
            assert_config_error(&p, args, needles);
        }
        // Nothing was created next to the config or in the default state dir by a bad config.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}

#[test]
fn missing_or_unreadable_config_file() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.toml");
    assert_config_error(&missing, &["snapshot"], &["nope.toml", "does not exist"]);

    // Unreadable: a file only root may read, opened by an unprivileged user.
    let (dir, p) = with_config("paused = true\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = ["--config", p.to_str().unwrap(), "config", "check"];
    let mut cmd = etcdguard_cmd(&args);
    // `nobody` may not reach the build directory (CI keeps it under root's home), so it runs a
    // copy of the binary from a world-readable temp dir.
    let bin_dir = tempfile::tempdir().unwrap();
    if nix::unistd::geteuid().is_root() {
        let bin = bin_dir.path().join("etcdguard");
        std::fs::copy(env!("CARGO_BIN_EXE_etcdguard"), &bin).unwrap();
        for path in [bin_dir.path(), bin.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        cmd = etcdguard_cmd_of(&bin, &args);
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_stderr_has(&out, "permission denied");
    assert_stderr_has(&out, p.to_str().unwrap());
}

#[test]
fn config_check_names_missing_certificate_files() {
    let (_d, p) = with_config(
        "[etcd]\nendpoint = \"https://127.0.0.1:2379\"\nca_cert = \"/nonexistent/pki/ca.crt\"\n",
    );
    assert_config_error(
        &p,
        &["config", "check"],
        &["etcd.ca_cert:", "/nonexistent/pki/ca.crt", "no such file"],
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["records", "--limit", "x"][..],
        &["verify"],
        &["frobnicate"],
        &[],
    ] {
        let out = etcdguard(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn config_check_prints_effective_config_and_records_lists_backups() {
    let node = Node::start("3.5", "cp1");
    let out = node.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("# etcd endpoint in use: {}", node.etcd.client_url)),
        "{text}"
    );
    assert!(text.contains("min_keep = 3"), "{text}");
    assert!(text.contains("ttl = \"7days\""), "{text}");
    assert!(text.contains("# next scheduled backup: "), "{text}");

    let out = node.run(&["records"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "no backup records yet\n");

    assert!(node.snapshot().status.success());
    assert!(node.snapshot().status.success());
    let out = node.run(&["records"]);
    let table = stdout(&out);
    let lines: Vec<_> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    let recs = node.records();
    // newest first
    assert!(
        lines[1].starts_with(recs[1]["id"].as_str().unwrap()),
        "{table}"
    );
    assert!(
        lines[1].contains("Success") && lines[1].contains("present"),
        "{table}"
    );

    let out = node.run(&["records", "--output", "json", "--limit", "1"]);
    schema::assert_valid("records.v1", &stdout(&out));
    let mut v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), 1);
    // The stored record plus the computed retention explanation.
    let retention = v[0].as_object_mut().unwrap().remove("retention").unwrap();
    assert!(
        retention.as_str().unwrap().contains("min_keep"),
        "{retention}"
    );
    assert_eq!(v[0], recs[1]);
}

#[test]
fn corrupt_records_file_is_reported_then_moved_aside() {
    let node = Node::start("3.5", "cp1");
    std::fs::create_dir_all(node.state_dir()).unwrap();
    let records = node.state_dir().join("records.json");
    std::fs::write(&records, "{\"version\": 1, \"records\": [ {\"id\": ").unwrap();

    let out = node.run(&["records"]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "does not parse");
    assert_stderr_has(&out, "left as it is");

    let out = node.snapshot();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, "moved aside to");
    let aside: Vec<_> = crate::util::list_dir(&node.state_dir())
        .into_iter()
        .filter(|n| n.starts_with("records.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(node.state_dir().join(&aside[0])).unwrap(),
        "{\"version\": 1, \"records\": [ {\"id\": "
    );
    assert_eq!(node.records().len(), 1);
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef etcdguard"),
        ("fish", "complete -c etcdguard"),
    ] {
        let out = etcdguard(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(needle) && text.contains("restore-datadir"),
            "{shell}: {text}"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let man = d.path().join("man");
    let out = etcdguard(&["man", man.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(man.join("etcdguard-restore-datadir.1")).unwrap();
    assert!(page.contains("target\\-version"), "{page}");
    assert!(man.join("etcdguard.1").is_file());
    // Hidden from the help, like any packaging helper.
    assert!(!stdout(&etcdguard(&["--help"])).contains("\n  man "));
}

#[test]
fn one_exit_code_table_for_help_man_page_and_readme() {
    let table = etcdguard::exit::EXIT_CODES_HELP;
    let help = stdout(&etcdguard(&["--help"]));
    assert!(help.contains(table), "--help lacks {table:?}:\n{help}");
    let d = tempfile::tempdir().unwrap();
    let out = etcdguard(&["man", d.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // roff escapes hyphens; the words are the same.
    let page = std::fs::read_to_string(d.path().join("etcdguard.1")).unwrap();
    assert!(
        page.replace("\\-", "-").contains(table),
        "the man page lacks {table:?}"
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(readme.contains(table), "README.md lacks {table:?}");
    // And the codes the binary really uses.
    assert_eq!(
        [
            etcdguard::exit::EXIT_FAILED,
            etcdguard::exit::EXIT_USAGE,
            etcdguard::exit::EXIT_CONFIG
        ],
        [1, 2, 78]
    );
    let usage = etcdguard(&["no-such-command"]);
    assert_eq!(usage.status.code(), Some(2));
}

/// Runs `etcdguard args` with stdout (`out`) or stderr sent to /dev/full.
fn to_full(args: &[&str], stdout_full: bool) -> std::process::Output {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut cmd = etcdguard_cmd(args);
    if stdout_full {
        cmd.stdout(full());
    } else {
        cmd.stderr(full());
    }
    cmd.output().unwrap()
}

#[test]
fn output_that_cannot_be_written_exits_1_and_never_panics() {
    let node = Node::start("3.5", "cp1");
    assert!(node.snapshot().status.success());
    let good = node.snapshot_dir().join(&node.snapshot_files()[0]);
    let good = good.to_str().unwrap();
    // stdout to a full disk: exit 1, and stderr says what could not be written.
    for args in [
        &["--help"][..],
        &["--version"],
        &["verify", good],
        &["verify", good, "--output", "json"],
    ] {
        let out = to_full(args, true);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} >/dev/full: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("standard output"),
            "{args:?} >/dev/full: {}",
            stderr(&out)
        );
    }
    // stderr to a full disk: an error that cannot be said keeps its own exit code (never 101,
    // a panic); a command that worked but whose log lines were lost exits 1.
    let out = to_full(&["verify", "/nonexistent/snapshot.db"], false);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let out = to_full(&["bogus-command"], false);
    assert_eq!(out.status.code(), Some(1), "a usage error nobody can read");
    let out = to_full(
        &["--config", node.config.to_str().unwrap(), "snapshot"],
        false,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // A reader that stops early is not a failure.
    let mut child = etcdguard_cmd(&["--help"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
