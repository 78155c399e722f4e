//! The choice of the snapshot a drill restores: the one named (a file, a record id or a
//! remote key), else the newest good local copy of this node, held open for the whole drill,
//! else (or always with `[drill] source = "remote"` or `--remote`) the newest remote copy,
//! downloaded into the scratch dir and checked against its record. A sealed copy is opened
//! into the scratch dir with the drill's identity. It lives apart from `mod.rs`, which runs
//! the drill and its checks on what is chosen here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::config::{Config, DrillSource};
use crate::encryption::{self, Identities, Unsealed};
use crate::records::{self, DrillOrigin, Record, RecordStore};

use super::DrillOptions;

/// The snapshot a drill restores, open for the whole drill.
pub(super) struct Chosen {
    /// What is read (a plain snapshot): a file, `/proc/self/fd/N`, or the opened copy.
    pub(super) path: PathBuf,
    /// Its name for humans.
    pub(super) shown: String,
    pub(super) record: Option<Record>,
    pub(super) source: DrillOrigin,
    _open: Option<File>,
    _unsealed: Option<Unsealed>,
}

/// The snapshot named by `--snapshot`, else the newest good copy of this node by `[drill]
/// source`; opened when sealed. With the check's detail.
pub(super) fn choose(
    config: &Config,
    opts: &DrillOptions,
    records: &[Record],
    scratch: &Path,
    handle: &tokio::runtime::Handle,
) -> Result<(Chosen, String), String> {
    let (mut chosen, downloaded) = match &opts.snapshot {
        Some(s) => (named(config, s, records, scratch, handle)?, None),
        None => newest(config, opts, records, scratch, handle)?,
    };
    let mut detail = match &chosen.record {
        Some(r) => format!(
            "record {} ({}, taken {}), {} copy",
            r.id,
            r.file_name.as_deref().unwrap_or("?"),
            records::rfc3339(r.backup_timestamp),
            chosen.source.as_str()
        ),
        None => format!("{} ({})", chosen.shown, chosen.source.as_str()),
    };
    if let Some(via) = downloaded {
        detail.push_str(&format!(
            ", downloaded from {via} and checked against its record"
        ));
    }
    if let Some(id) = open_sealed(config, opts, &mut chosen, scratch)? {
        detail.push_str(&format!(", opened with {}", id.display()));
    }
    Ok((chosen, detail))
}

/// The snapshot named by hand: a file, a record id or a remote key (downloaded into the
/// scratch dir).
fn named(
    config: &Config,
    name: &str,
    records: &[Record],
    scratch: &Path,
    handle: &tokio::runtime::Handle,
) -> Result<Chosen, String> {
    let found = handle.block_on(crate::restore::source::locate_into(
        config,
        Path::new("/"),
        name,
        scratch,
    ))?;
    let record = records.iter().find(|r| r.id == name).cloned();
    let downloaded = found.path.starts_with(scratch);
    Ok(Chosen {
        shown: found.path.display().to_string(),
        path: found.path,
        source: if downloaded {
            DrillOrigin::Remote
        } else if record.is_some() {
            DrillOrigin::Local
        } else {
            DrillOrigin::File
        },
        record,
        _open: None,
        _unsealed: None,
    })
}

/// The newest good local copy, unless `[drill] source = "remote"` or `--remote`; else the
/// newest remote copy, with the location it was downloaded from.
fn newest(
    config: &Config,
    opts: &DrillOptions,
    records: &[Record],
    scratch: &Path,
    handle: &tokio::runtime::Handle,
) -> Result<(Chosen, Option<String>), String> {
    let remote = opts.remote || config.drill.source == DrillSource::Remote;
    let local = (!remote)
        .then(|| open_newest_local(config))
        .transpose()?
        .flatten();
    match local {
        Some(c) => Ok((c, None)),
        None => download_newest_remote(config, records, remote, scratch, handle)
            .map(|(c, via)| (c, Some(via))),
    }
}

/// The newest backup record's remote copy at a configured destination, downloaded into the
/// scratch dir (and checked against its record), with its location. `remote`: the remote
/// copy was asked for (it words the error when there is none).
fn download_newest_remote(
    config: &Config,
    records: &[Record],
    remote: bool,
    scratch: &Path,
    handle: &tokio::runtime::Handle,
) -> Result<(Chosen, String), String> {
    let r = records
        .iter()
        .rev()
        .filter(|r| r.trigger.is_backup())
        .find(|r| r.remotes.iter().any(|c| c.may_exist()))
        .ok_or_else(|| {
            if remote {
                "no remote copy to drill: this node's records list no uploaded copy".to_string()
            } else {
                "no good snapshot to drill: this node's records list neither a local \
                 snapshot nor a remote copy"
                    .to_string()
            }
        })?;
    let Some((_, copy)) = crate::restore::source::remote_copy_of(config, r) else {
        return Err(format!(
            "record {} has only remote copies, and none is at a configured destination",
            r.id
        ));
    };
    let via = copy.location.clone();
    let found = handle.block_on(crate::restore::source::download_copy(config, r, scratch))?;
    Ok((
        Chosen {
            shown: via.clone(),
            path: found.path,
            record: Some(r.clone()),
            source: DrillOrigin::Remote,
            _open: None,
            _unsealed: None,
        },
        via,
    ))
}

/// A sealed copy opened into the scratch dir with `--identity` or `[drill] identity` (and
/// checked against its record's sha256); `chosen` then reads the opened copy. Returns the
/// identity used; `None` for a plain snapshot.
fn open_sealed<'a>(
    config: &'a Config,
    opts: &'a DrillOptions,
    chosen: &mut Chosen,
    scratch: &Path,
) -> Result<Option<&'a Path>, String> {
    if !encryption::is_sealed(&chosen.path).map_err(|e| format!("{}: {e}", chosen.shown))? {
        return Ok(None);
    }
    let id = opts
        .identity
        .as_ref()
        .or(config.drill.identity.as_ref())
        .ok_or_else(|| {
            format!(
                "{} is encrypted: give [drill] identity (or --identity) with a key that opens it",
                chosen.shown
            )
        })?;
    let ids = Identities::load(id)?;
    let u = Unsealed::create(&chosen.path, Some(&ids), scratch)
        .map_err(|e| format!("{}: {e}", chosen.shown))?;
    if let Some(want) = chosen.record.as_ref().and_then(|r| r.sha256.as_deref()) {
        if u.sha256() != want {
            return Err(format!(
                "{} opens to a snapshot with sha256 {}, but its record says {want}",
                chosen.shown,
                u.sha256()
            ));
        }
    }
    chosen.path = u.path().to_owned();
    chosen._unsealed = Some(u);
    Ok(Some(id))
}

/// The newest good local snapshot, opened (a file retention deletes between reading the
/// records and opening it is looked for again).
fn open_newest_local(config: &Config) -> Result<Option<Chosen>, String> {
    for _ in 0..3 {
        let records = RecordStore::new(&config.state_dir)
            .load()
            .map_err(|e| e.to_string())?
            .records;
        let Some(r) = records
            .iter()
            .rev()
            .find(|r| r.trigger.is_backup() && r.is_good_local())
        else {
            return Ok(None);
        };
        let path = &r.local.as_ref().expect("good local").path;
        match File::open(path) {
            Ok(f) => {
                return Ok(Some(Chosen {
                    path: PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
                    shown: path.display().to_string(),
                    record: Some(r.clone()),
                    source: DrillOrigin::Local,
                    _open: Some(f),
                    _unsealed: None,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        }
    }
    Err("the newest local snapshots kept disappearing while the drill opened them".into())
}
