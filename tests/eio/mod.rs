//! The EIO campaign: every named I/O site of a backup (`ETCDGUARD_TEST_FAIL_IO`, see
//! `src/failpoint.rs`) fails once, then every site at a seeded rate; after each failing run and
//! after the normal run that follows, the invariants:
//!
//! - the failing run says the failure in one message that names the file and the operation;
//! - nothing partial is visible (no `.partial`, no `.tmp-` file) in the snapshot directory,
//!   the state directory, the `fs` destination or beside the metrics file;
//! - a file whose fsync failed is never published: its final name does not appear, the file
//!   it was to replace is unchanged;
//! - `records.json` parses, every local file a record claims is there with the record's
//!   sha256, and after the next run every snapshot file and every object is known to a record,
//!   has its sidecar unless its record says the copy is pending, and every published file
//!   verifies (`etcdguard verify`);
//! - the next normal run succeeds.
//!
//! The table of site → outcome, message and what the next run did is printed; the random part
//! prints its seed (`ETCDGUARD_EIO_SEED`, `ETCDGUARD_EIO_RUNS`, `ETCDGUARD_EIO_PERCENT`).
//! `tools` does the same for `restore-datadir` and `decrypt`, `restore` for a restore and its
//! rollback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::util::node::Node;
use crate::util::{etcdguard, etcdguard_cmd, list_dir, stderr, NEWEST};

mod restore;
mod tools;

/// What a failure at a site does to the backup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The backup fails (exit non-zero).
    Fails,
    /// The backup succeeds and says the failure (a sidecar or a copy left pending, the
    /// metrics file not written).
    Says,
}

struct Site {
    /// The rule given to `ETCDGUARD_TEST_FAIL_IO`.
    rule: &'static str,
    /// Text the message must contain to name the file.
    file: &'static str,
    /// Text the message must contain to name the operation.
    op: &'static str,
    expect: Expect,
    /// For an fsync: the ending of the file names that must not appear or change.
    guards: Option<&'static str>,
    /// A rule for a run before (its checks are the next row's): a copy left pending, so that
    /// the failing run's retry meets the site.
    setup: Option<&'static str>,
}

const fn site(
    rule: &'static str,
    file: &'static str,
    op: &'static str,
    expect: Expect,
    guards: Option<&'static str>,
) -> Site {
    Site {
        rule,
        file,
        op,
        expect,
        guards,
        setup: None,
    }
}

/// A site of the retry of a copy that a run before left pending (its upload failed once).
const fn retry(rule: &'static str, file: &'static str, op: &'static str) -> Site {
    Site {
        setup: Some("publish:link#/nfs/"),
        ..site(rule, file, op, Says, None)
    }
}

use Expect::{Fails, Says};

const BACKUP_SITES: [Site; 28] = [
    site(
        "file:create#/snapshots/",
        "snapshots",
        "create",
        Fails,
        None,
    ),
    site("backup:write", ".partial", "write", Fails, None),
    site("backup:fsync", ".partial", "fsync", Fails, Some(".db")),
    site("backup:check", "page digests", "create", Says, None),
    // The stream check cannot vouch (its digests file fails), and the read-back fails too.
    site(
        "backup:check,backup:read-back",
        ".partial",
        "read",
        Fails,
        None,
    ),
    site(
        "publish:link#/snapshots/",
        "snapshot-etcd-",
        "link",
        Fails,
        None,
    ),
    site(
        "publish:unlink#/snapshots/",
        "snapshot-etcd-",
        "unlink",
        Fails,
        None,
    ),
    site(
        "publish:dir-fsync#/snapshots/",
        "snapshots",
        "fsync",
        Fails,
        None,
    ),
    site(
        "atomic:create#records.json",
        "records.json",
        "create",
        Fails,
        None,
    ),
    site(
        "atomic:write#records.json",
        "records.json",
        "write",
        Fails,
        None,
    ),
    site(
        "atomic:fsync#records.json",
        "records.json",
        "fsync",
        Fails,
        Some("records.json"),
    ),
    site(
        "atomic:rename#records.json",
        "records.json",
        "rename",
        Fails,
        None,
    ),
    site(
        "atomic:dir-fsync#records.json",
        "records.json",
        "fsync",
        Fails,
        None,
    ),
    site("publish:link#/nfs/", "/nfs/", "link", Says, None),
    site("publish:unlink#/nfs/", "/nfs/", "unlink", Says, None),
    site("publish:dir-fsync#/nfs/", "/nfs/", "fsync", Says, None),
    site("atomic:create#.db.json", ".db.json", "create", Says, None),
    site("atomic:write#.db.json", ".db.json", "write", Says, None),
    site(
        "atomic:fsync#.db.json",
        ".db.json",
        "fsync",
        Says,
        Some(".db.json"),
    ),
    site("atomic:rename#.db.json", ".db.json", "rename", Says, None),
    site("atomic:dir-fsync#.db.json", ".db.json", "fsync", Says, None),
    site(
        "atomic:write#metrics.prom",
        "metrics.prom",
        "write",
        Says,
        None,
    ),
    site(
        "atomic:fsync#metrics.prom",
        "metrics.prom",
        "fsync",
        Says,
        Some("metrics.prom"),
    ),
    site(
        "atomic:rename#metrics.prom",
        "metrics.prom",
        "rename",
        Says,
        None,
    ),
    retry("retry:read", "snapshot-etcd-", "read"),
    retry("publish:link#/nfs/@2", "/nfs/", "link"),
    retry("atomic:write#.db.json@2", ".db.json", "write"),
    retry("atomic:fsync#records.json@2", "records.json", "fsync"),
];

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A node with an `fs` destination (a plain directory) and a metrics file, whose runs each
/// move the clock ten minutes on: a copy left pending is due again at the next run.
struct Rig {
    node: Node,
    nfs: PathBuf,
    metrics: PathBuf,
    runs: u64,
    /// The age identity of sealed copies, for `verify`.
    identity: Option<PathBuf>,
}

impl Rig {
    fn new() -> Rig {
        let mut node = Node::start(NEWEST, "cp1");
        node.etcd.put_keys("eio", 300);
        let nfs = node.path("nfs");
        std::fs::create_dir_all(&nfs).unwrap();
        node.add_destination(&format!(
            "name = \"nfs\"\ntype = \"fs\"\npath = {:?}\nrequire_mount = false\nprefix = \"prod/\"\n",
            nfs.display().to_string()
        ));
        let metrics = node.path("metrics/metrics.prom");
        std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
        node.set_path("", "metrics_file", &metrics);
        Rig {
            node,
            nfs,
            metrics,
            runs: 0,
            identity: None,
        }
    }

    /// `etcdguard snapshot` with `env`.
    fn snapshot(&mut self, env: &[(&str, &str)]) -> Output {
        self.runs += 1;
        etcdguard_cmd(&["--config", self.node.config.to_str().unwrap(), "snapshot"])
            .envs(env.iter().copied())
            .env(
                "ETCDGUARD_TEST_CLOCK_OFFSET_MS",
                (self.runs * 600_000).to_string(),
            )
            .output()
            .unwrap()
    }

    /// Every file under the state dir, the destination and the metrics dir: path → sha256.
    fn files(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for d in [
            self.node.state_dir(),
            self.nfs.clone(),
            self.metrics.parent().unwrap().into(),
        ] {
            walk(&d, &mut out);
        }
        out
    }

    /// Shortens the node's root in a message.
    fn shown(&self, s: &str) -> String {
        s.replace(&self.node.root.path().display().to_string(), "<root>")
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for name in list_dir(dir) {
        let p = dir.join(&name);
        if p.is_dir() {
            walk(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.insert(p, sha256(&b));
        }
    }
}

/// How much holds after a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Any run: nothing partial, the records parse and their local files are there.
    Any,
    /// A run that recorded its failure: besides, no snapshot file that no record knows (what
    /// failed is not published).
    Recorded,
    /// A normal run: besides, every object known too, and every published file verifies.
    Settled,
}

/// The invariants that hold `after` a run.
fn check(rig: &Rig, after: After) -> Result<(), String> {
    let files = rig.files();
    for p in files.keys() {
        let name = p.file_name().unwrap().to_string_lossy();
        if name.ends_with(".partial") || name.contains(".tmp-") {
            return Err(format!("a partial file is visible: {}", p.display()));
        }
    }
    // No records file yet (the first run could not write it) is an empty history.
    let text = match std::fs::read_to_string(rig.node.state_dir().join("records.json")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => r#"{"records": []}"#.into(),
        other => other.map_err(|e| format!("records.json: {e}"))?,
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("records.json: {e}"))?;
    let records = v["records"].as_array().ok_or("records.json: no records")?;
    let mut known = Vec::new();
    for r in records {
        let l = &r["local"];
        if l["state"] == "present" {
            let path = PathBuf::from(l["path"].as_str().unwrap_or(""));
            // A sealed local copy (`encrypt_local`) is checked against its sealed bytes' sha256.
            let want = match l["sealed"]["objectSha256"].as_str() {
                Some(sealed) => Some(sealed),
                None => r["sha256"].as_str(),
            };
            match files.get(&path) {
                Some(h) if Some(h.as_str()) == want => known.push(path),
                Some(_) => return Err(format!("{} is not its record's sha256", path.display())),
                None => return Err(format!("record {} claims {}", r["id"], path.display())),
            }
        }
    }
    if after == After::Any {
        return Ok(());
    }
    let snapshots = rig.node.snapshot_dir();
    for p in files
        .keys()
        .filter(|p| p.parent() == Some(snapshots.as_path()))
    {
        if !known.contains(p) {
            return Err(format!("{} is not known to any record", p.display()));
        }
    }
    if after == After::Recorded {
        return Ok(());
    }
    check_objects(rig, records, &files)?;
    for p in &known {
        let mut args = vec!["verify", p.to_str().unwrap()];
        if let Some(id) = &rig.identity {
            args.extend(["--identity", id.to_str().unwrap()]);
        }
        let out = etcdguard(&args);
        if !out.status.success() {
            return Err(format!("{} does not verify: {}", p.display(), stderr(&out)));
        }
    }
    Ok(())
}

/// Every object on the destination is its record's sha256 and has its sidecar unless the
/// record says pending; no sidecar without its object; every copy said uploaded is there.
fn check_objects(
    rig: &Rig,
    records: &[Value],
    files: &BTreeMap<PathBuf, String>,
) -> Result<(), String> {
    let dir = rig.nfs.join("prod/cp1");
    let location = |p: &Path| format!("file://{}", p.display());
    for (p, h) in files
        .iter()
        .filter(|(p, _)| p.parent() == Some(dir.as_path()))
    {
        let name = p.file_name().unwrap().to_string_lossy();
        if let Some(object) = name.strip_suffix(".json") {
            if !files.contains_key(&dir.join(object)) {
                return Err(format!("sidecar {name} without its object"));
            }
            continue;
        }
        let r = records
            .iter()
            .find(|r| r["remote"]["location"] == location(p).as_str())
            .ok_or_else(|| format!("object {name} has no record"))?;
        let want = match r["remote"]["sealed"]["objectSha256"].as_str() {
            Some(sealed) => Some(sealed),
            None => r["sha256"].as_str(),
        };
        if want != Some(h.as_str()) {
            return Err(format!("object {name} is not its record's sha256"));
        }
        let sidecar = dir.join(format!("{name}.json"));
        if !files.contains_key(&sidecar) && r["remote"]["state"] != "pending" {
            return Err(format!(
                "object {name} has no sidecar and its copy is {}",
                r["remote"]["state"]
            ));
        }
    }
    for r in records {
        if r["remote"]["state"] == "uploaded" {
            let loc = r["remote"]["location"].as_str().unwrap_or("");
            if !files.keys().any(|p| location(p) == loc) {
                return Err(format!(
                    "record {} says uploaded, {loc} is not there",
                    r["id"]
                ));
            }
        }
    }
    Ok(())
}

/// How many records there are (0 when the file does not parse).
fn records_len(rig: &Rig) -> usize {
    std::fs::read_to_string(rig.node.state_dir().join("records.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["records"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Every string in `v`, depth first.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The message that says the EIO: a line of stderr, or of the last record, with the error.
fn eio_message(rig: &Rig, out: &Output) -> Option<String> {
    let mut lines: Vec<String> = stderr(out).lines().map(str::to_string).collect();
    let text = std::fs::read_to_string(rig.node.state_dir().join("records.json"));
    if let Some(last) = text
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["records"].as_array().and_then(|r| r.last().cloned()))
    {
        strings(&last, &mut lines);
    }
    lines.into_iter().find(|l| l.contains("Input/output error"))
}

/// One site failed once: the violations found, and the table's row.
fn fail_once(rig: &mut Rig, s: &Site) -> (Vec<String>, String) {
    let mut bad = Vec::new();
    if let Some(setup) = s.setup {
        rig.snapshot(&[("ETCDGUARD_TEST_FAIL_IO", setup)]);
    }
    let before = rig.files();
    let records_before = records_len(rig);
    let out = rig.snapshot(&[("ETCDGUARD_TEST_FAIL_IO", s.rule)]);
    let err = stderr(&out);
    for rule in s.rule.split(',') {
        let site_name = rule.split(['#', '@', '%']).next().unwrap();
        if !err.contains(&format!("fail point {site_name}: EIO")) {
            bad.push(format!("{}: the site was never reached:\n{err}", s.rule));
        }
    }
    let failed = !out.status.success();
    if failed != (s.expect == Fails) {
        bad.push(format!("{}: exit {:?}:\n{err}", s.rule, out.status.code()));
    }
    let message = eio_message(rig, &out).unwrap_or_default();
    if !(message.contains(s.file) && message.contains(s.op)) {
        bad.push(format!(
            "{}: no message names {:?} and {:?}: {message:?}\n{err}",
            s.rule, s.file, s.op
        ));
    }
    if let Some(guard) = s.guards {
        let after = rig.files();
        let touched: Vec<_> = after
            .iter()
            .filter(|(p, h)| p.to_string_lossy().ends_with(guard) && before.get(*p) != Some(*h))
            .map(|(p, _)| rig.shown(&p.display().to_string()))
            .collect();
        if !touched.is_empty() {
            bad.push(format!(
                "{}: published after a failed fsync: {touched:?}",
                s.rule
            ));
        }
    }
    // A failure the run recorded (a new `Failed` record) published nothing.
    let recorded =
        records_len(rig) > records_before && rig.node.last_record()["result"] == "Failed";
    let level = if recorded {
        After::Recorded
    } else {
        After::Any
    };
    if let Err(e) = check(rig, level) {
        bad.push(format!("{} (the failing run): {e}", s.rule));
    }
    let next = rig.snapshot(&[]);
    let said = stderr(&next);
    let mut then = if next.status.success() {
        "ok".to_string()
    } else {
        bad.push(format!("{}: the next run failed:\n{said}", s.rule));
        format!("FAILED {:?}", next.status.code())
    };
    for (needle, what) in [
        ("adopted as record", "adopted the published file"),
        ("removed a partial", "removed a partial"),
        ("retried", "retried the copy"),
    ] {
        if said.contains(needle) {
            then.push_str(&format!("; {what}"));
        }
    }
    if let Err(e) = check(rig, After::Settled) {
        bad.push(format!("{} (the next run): {e}", s.rule));
        then.push_str("; INVARIANT VIOLATED");
    }
    let outcome = match (failed, out.status.code()) {
        (true, c) => format!("fails (exit {})", c.unwrap_or(-1)),
        (false, _) => "succeeds".to_string(),
    };
    let row = format!(
        "{:32} | {:15} | {} | {then}",
        s.rule,
        outcome,
        rig.shown(&message)
    );
    (bad, row)
}

/// [`fail_once`] for each of `sites` in turn: every violation, and the table's rows.
fn fail_each_once(rig: &mut Rig, sites: &[Site]) -> (Vec<String>, Vec<String>) {
    let mut bad = Vec::new();
    let mut table = Vec::new();
    for s in sites {
        let (b, row) = fail_once(rig, s);
        bad.extend(b);
        table.push(row);
    }
    (bad, table)
}

#[test]
fn every_backup_io_site_failing_once_is_said_and_set_right_by_the_next_run() {
    let mut rig = Rig::new();
    let first = rig.snapshot(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    check(&rig, After::Settled).unwrap();
    let (bad, table) = fail_each_once(&mut rig, &BACKUP_SITES);
    eprintln!(
        "EIO table (backup, each site failed once)\n{:32} | {:15} | message | next run\n{}",
        "site",
        "outcome",
        table.join("\n")
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// `encrypt_local`: the checked plain temp file is sealed into a second temp file, which alone
/// is published. Reading the plain one, writing or fsyncing the sealed one fails once: the
/// backup fails naming the file and the operation, nothing sealed is published after its
/// fsync failed, no plain copy is left, and the next run publishes a sealed copy.
const SEAL_SITES: [Site; 3] = [
    site("seal:read", ".partial", "read", Fails, None),
    site("seal:write", ".partial", "write", Fails, None),
    site("seal:fsync", ".partial", "fsync", Fails, Some(".age")),
];

#[test]
fn sealing_a_local_copy_failing_at_each_site_publishes_nothing_plain_or_half_sealed() {
    let mut rig = Rig::new();
    let keys = tempfile::tempdir().unwrap();
    let (identity, recipient) = crate::encryption::age_key(keys.path(), "key.txt");
    rig.identity = Some(identity);
    rig.node
        .set("encryption", "recipients", &format!("[{recipient:?}]"));
    rig.node.set("encryption", "encrypt_local", "true");
    let first = rig.snapshot(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    check(&rig, After::Settled).unwrap();
    let (bad, table) = fail_each_once(&mut rig, &SEAL_SITES);
    eprintln!(
        "EIO table (encrypt_local, each site failed once)\n{}",
        table.join("\n")
    );
    let plain: Vec<String> = list_dir(&rig.node.snapshot_dir())
        .into_iter()
        .filter(|n| n.ends_with(".db"))
        .collect();
    assert!(plain.is_empty(), "plain copies published: {plain:?}");
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The fsyncs that failed in a run (`fail point …fsync: EIO on <path>`), by site.
fn failed_fsyncs(err: &str) -> Vec<(String, PathBuf)> {
    err.lines()
        .filter_map(|l| l.strip_prefix("fail point "))
        .filter_map(|l| l.split_once(": EIO on "))
        .filter(|(site, _)| site.ends_with("fsync") && !site.contains("dir"))
        .map(|(site, p)| (site.to_string(), PathBuf::from(p)))
        .collect()
}

#[test]
fn backup_io_failing_at_a_seeded_rate_never_publishes_a_file_whose_fsync_failed() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let seed = env("ETCDGUARD_EIO_SEED", 20261207);
    let runs = env("ETCDGUARD_EIO_RUNS", 16);
    let percent = env("ETCDGUARD_EIO_PERCENT", 4);
    // Every site at `percent`, the fsyncs (few hits per run) at five times that.
    let rule = format!(
        "*%{percent},backup:fsync%{0},atomic:fsync%{0},publish:dir-fsync%{0}",
        (percent * 5).min(100)
    );
    eprintln!("EIO {rule:?}, {runs} runs, seed {seed}");
    let mut rig = Rig::new();
    let mut bad = Vec::new();
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    let (mut failed_runs, mut fsyncs) = (0, 0);
    for i in 0..runs {
        let run_seed = (seed + i).to_string();
        let before = rig.files();
        let out = rig.snapshot(&[
            ("ETCDGUARD_TEST_FAIL_IO", &rule),
            ("ETCDGUARD_TEST_FAIL_SEED", &run_seed),
        ]);
        let err = stderr(&out);
        for l in err.lines().filter_map(|l| l.strip_prefix("fail point ")) {
            *fired
                .entry(l.split(':').take(2).collect::<Vec<_>>().join(":"))
                .or_default() += 1;
        }
        failed_runs += usize::from(!out.status.success());
        let after = rig.files();
        for (site, p) in failed_fsyncs(&err) {
            fsyncs += 1;
            // The backup's temp file: its final name must not appear; a replaced file that is
            // written once per run (metrics, a sidecar) must not change.
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let published = match name.strip_suffix(".partial") {
                Some(stem) => p.with_file_name(stem.trim_start_matches('.')),
                None => p.clone(),
            };
            let once = site == "backup:fsync" || !name.ends_with("records.json");
            if once && after.get(&published) != before.get(&published) {
                bad.push(format!(
                    "run {i} (seed {run_seed}): {} published after its fsync failed",
                    rig.shown(&published.display().to_string())
                ));
            }
        }
        if let Err(e) = check(&rig, After::Any) {
            bad.push(format!("run {i} (seed {run_seed}), the failing run: {e}"));
        }
        let next = rig.snapshot(&[]);
        if !next.status.success() {
            bad.push(format!(
                "run {i} (seed {run_seed}): the next run failed: {}",
                stderr(&next)
            ));
        }
        if let Err(e) = check(&rig, After::Settled) {
            bad.push(format!("run {i} (seed {run_seed}), the next run: {e}"));
        }
    }
    let summary: Vec<String> = fired.iter().map(|(k, n)| format!("  {n:3}  {k}")).collect();
    eprintln!(
        "seed {seed}: {runs} runs, {failed_runs} failed, {fsyncs} failed fsyncs; EIO made at:\n{}",
        summary.join("\n")
    );
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
