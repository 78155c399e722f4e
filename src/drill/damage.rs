//! Test-only damage to a drill's built data dir, to show that the checks catch an engine that
//! builds a wrong dir (the drill tests set `ETCDGUARD_TEST_DRILL_DAMAGE`). It lives apart from
//! `mod.rs`, which applies it between the build and the checks.

use std::path::Path;

use crate::etcddb;

/// Test-only: damage the built data dir before it is checked (`consistent-index`), to show
/// that the checks catch an engine that builds a wrong dir.
pub const TEST_DAMAGE_ENV: &str = "ETCDGUARD_TEST_DRILL_DAMAGE";

/// Damages the built `data_dir` as `ETCDGUARD_TEST_DRILL_DAMAGE` says; nothing when unset.
pub(super) fn apply(data_dir: &Path) {
    if std::env::var(TEST_DAMAGE_ENV).as_deref() == Ok("consistent-index") {
        consistent_index(&data_dir.join("member/snap/db"));
    }
}

/// Test-only damage: the built db's consistent index one past the WAL's commit, as an engine
/// that got it wrong would leave it.
fn consistent_index(db_path: &Path) {
    use crate::etcddb::writer::{self, Change, Item};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db_path)
        .expect("test damage: open the built db");
    let len = f.metadata().expect("test damage: stat").len();
    let db = etcddb::Db::open(f, len).expect("test damage: a db");
    let status = etcddb::status(&db).expect("test damage: status");
    let ci = status.consistent_index.unwrap_or(0) + 1;
    let term = status.term.unwrap_or(1);
    writer::commit(
        &db,
        &[(
            etcddb::schema::META,
            Change::Put(vec![
                Item::new(etcddb::schema::CONSISTENT_INDEX, &ci.to_be_bytes()),
                Item::new(etcddb::schema::TERM, &term.to_be_bytes()),
            ]),
        )],
    )
    .expect("test damage: commit");
}
