//! The Azure Blob Storage kind: the operator with the storage account's key (a file or the
//! systemd credential; Azure has no anonymous writes), uploads as blocks committed at the end.
//! Uncommitted blocks expire by themselves: there are no open uploads to list; the object's
//! size is what is compared after an upload.

use opendal::Operator;

use super::credentials::{self, Resolved};
use super::{Backend, Opened};
use crate::config::DestinationConfig;

/// The Azure Blob operator for `cfg` in storage account `account`.
pub(super) fn open(cfg: &DestinationConfig, account: &str) -> Result<Opened, String> {
    let endpoint = cfg
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
    let Some((key, from)) =
        credentials::resolve_secret(&cfg.credentials, credentials::systemd_dir().as_deref())?
    else {
        return Err(format!(
            "{} needs the storage account's key: set credentials_file (a file holding the key, \
             mode 0600) or give the unit the systemd credential etcdguard-{}",
            cfg.table, cfg.name
        ));
    };
    let b = opendal::services::Azblob::default()
        .container(&cfg.bucket)
        .endpoint(&endpoint)
        .account_name(account)
        .account_key(key.trim())
        .root("/");
    let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
    Ok(Opened {
        op,
        backend: Backend::Azblob,
        endpoint,
        creds: Resolved::Secret { from },
    })
}
