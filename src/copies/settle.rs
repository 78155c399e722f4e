//! After any upload (the backup's same-pass upload or a retry from the local file), one rule
//! for what follows, so the two can never disagree:
//!
//! 1. the recovery bundle goes beside the primary destination's copy (`[bundle]`; a bundle
//!    that fails never fails the copy: the record says so);
//! 2. every copy that may exist gets its sidecar, which carries the record, so each
//!    destination alone tells what each object is;
//! 3. a copy whose sidecar could not be written is pending again: it is retried from the local
//!    file after the backoff, and counts as not uploaded until then;
//! 4. a `per = "cluster"` slot is marked done only when its copy stands after that.

use sha2::{Digest, Sha256};

use super::cluster::SlotClaim;
use crate::config::Config;
use crate::records::{BundleCopy, Record, RemoteCopy, RemoteState};
use crate::store::local::bundle_name;
use crate::store::remote::Remote;

/// What a failed sidecar makes of a copy: pending again, with this error.
pub fn sidecar_failed(e: &str) -> String {
    format!("the sidecar could not be written: {e}")
}

/// Settles `record` after uploads to `uploaded` (the destinations whose copy the record now
/// says may exist); `slot` is the cluster slot this node holds for the copy, if any.
pub async fn settle(
    config: &Config,
    record: &mut Record,
    uploaded: &[Remote],
    slot: Option<SlotClaim>,
) {
    if let Some(remote) = uploaded.iter().find(|r| config.is_primary(r.name())) {
        attach_bundle(config, remote, record).await;
    }
    let sidecars =
        futures_util::future::join_all(uploaded.iter().map(|r| write_sidecar(r, record))).await;
    let written = uploaded.iter().map(|r| r.name().to_string()).zip(sidecars);
    after_sidecars(record, written, crate::clock::now());
    if let Some(claim) = slot.filter(|_| slot_stands(record)) {
        claim.mark_done().await;
    }
}

/// Rule 3: a copy whose sidecar could not be written (destination, result) is pending again,
/// retried after the backoff. Pure.
fn after_sidecars(
    record: &mut Record,
    written: impl IntoIterator<Item = (String, Result<(), String>)>,
    now: chrono::DateTime<chrono::Utc>,
) {
    for (destination, result) in written {
        if let (Err(e), Some(c)) = (result, record.copy_mut(&destination)) {
            c.retry_later(now, sidecar_failed(&e));
        }
    }
}

/// Rule 4: the slot's copy stands (it may exist, sidecar and all). Pure.
fn slot_stands(record: &Record) -> bool {
    record.remotes.iter().any(RemoteCopy::may_exist)
}

/// Writes the record as its object's JSON sidecar (plain JSON, nothing secret: readable
/// without any key, so `records --remote` needs none).
pub async fn write_sidecar(remote: &Remote, record: &Record) -> Result<(), String> {
    let name = record
        .copy(remote.name())
        .map(|c| c.object_name())
        .filter(|n| !n.is_empty())
        .ok_or("a record without a remote copy has no sidecar")?;
    let mut json = serde_json::to_vec_pretty(record).expect("record serializes");
    json.push(b'\n');
    remote.put_sidecar(name, json).await
}

/// Makes this node's recovery bundle for `record` and uploads it beside its remote copy
/// (`[bundle]`); the outcome goes into the record. A failed bundle never fails the backup: it
/// is said in the record and the log.
async fn attach_bundle(config: &Config, remote: &Remote, record: &mut Record) {
    let (Some(b), Some(enc), Some(name)) = (
        config.bundle.clone(),
        config.encryption.clone(),
        record.file_name.clone(),
    ) else {
        return;
    };
    let member = record
        .member
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let object = bundle_name(&name, enc.suffix());
    let location = remote.location(&remote.key_for(&object));
    let built = tokio::task::spawn_blocking(move || {
        crate::bundle::build(&b.root, &b.extra_paths, &member, &enc)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the bundle task failed: {e}")));
    let mut copy = BundleCopy {
        location,
        state: RemoteState::Failed,
        object_sha256: None,
        object_size_bytes: None,
        files: 0,
        holds: Vec::new(),
        last_error: None,
    };
    let result = match built {
        Ok(built) => {
            copy.files = built
                .contents
                .entries
                .iter()
                .filter(|e| e.kind == crate::bundle::Kind::File)
                .count();
            copy.holds = built.contents.summary();
            copy.object_sha256 = Some(hex::encode(Sha256::digest(&built.sealed)));
            copy.object_size_bytes = Some(built.sealed.len() as u64);
            remote.put_small(&object, built.sealed).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {
            copy.state = RemoteState::Uploaded;
            tracing::info!(location = %copy.location, files = copy.files, "recovery bundle uploaded");
        }
        Err(e) => {
            tracing::warn!(error = %e, "no recovery bundle with this backup");
            copy.last_error = Some(e);
        }
    }
    record.bundle = Some(copy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Snapshot;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    /// A backup with a copy at `remote` and `azure`, both uploaded, retried once before
    /// (`attempts`) when `retried`.
    fn record(retried: bool) -> Record {
        let t = at("2026-12-07T01:00:00Z");
        let mut r = Record::backup_succeeded(
            Snapshot::example("snapshot-etcd-20261207-010000-cp1", t),
            crate::records::Trigger::Manual,
            1.0,
        );
        for d in ["remote", "azure"] {
            let location = format!("s3://b/cp1/snapshot-etcd-20261207-010000-cp1.db?{d}");
            let c = if retried {
                let mut c = RemoteCopy::pending(d, location.clone(), t, "down".into());
                c.retried_uploaded(t, location, None, None);
                c
            } else {
                RemoteCopy::uploaded(d, location, t, None, None)
            };
            r.set_copy(c);
        }
        r
    }

    #[test]
    fn a_failed_sidecar_makes_the_copy_pending_again_whoever_uploaded_it() {
        let now = at("2026-12-07T01:00:10Z");
        for retried in [false, true] {
            let mut r = record(retried);
            let attempts = r.copy("azure").unwrap().attempts;
            after_sidecars(
                &mut r,
                [
                    ("remote".to_string(), Ok(())),
                    ("azure".to_string(), Err("no space".to_string())),
                ],
                now,
            );
            let ok = r.copy("remote").unwrap();
            assert_eq!(ok.state, RemoteState::Uploaded);
            let bad = r.copy("azure").unwrap();
            assert_eq!(bad.state, RemoteState::Pending, "retried: {retried}");
            assert!(!bad.may_exist());
            assert_eq!(
                bad.last_error.as_deref(),
                Some("the sidecar could not be written: no space")
            );
            assert_eq!(bad.uploaded_at, None);
            // The attempt that made the object counts once; the retry waits its backoff.
            assert_eq!(bad.attempts, attempts);
            assert_eq!(
                bad.next_attempt_at,
                Some(now + crate::records::copy::backoff(attempts))
            );
        }
    }

    #[test]
    fn a_slot_is_marked_done_only_when_its_copy_stands() {
        let now = at("2026-12-07T01:00:10Z");
        let mut r = record(false);
        r.remotes.truncate(1);
        assert!(slot_stands(&r));
        after_sidecars(&mut r, [("remote".to_string(), Err("x".into()))], now);
        assert!(!slot_stands(&r));
    }
}
