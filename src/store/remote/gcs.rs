//! The Google Cloud Storage kind: the operator (a service account's JSON, the provider's
//! chain, or anonymous for emulators), uploads resumable with `ifGenerationMatch=0` (they never
//! replace an object; the XML multipart API is not what every GCS-compatible server offers),
//! and the object's MD5, which GCS reports, compared with the bytes sent. Unfinished resumable
//! sessions expire by themselves: there are no open uploads to list.

use opendal::Operator;

use super::credentials::{self, Resolved};
use super::{Backend, Opened};
use crate::config::DestinationConfig;

/// The GCS operator for `cfg`; `anonymous` skips signing (emulators).
pub(super) fn open(cfg: &DestinationConfig, anonymous: bool) -> Result<Opened, String> {
    let endpoint = cfg
        .endpoint
        .clone()
        .unwrap_or_else(|| "https://storage.googleapis.com".into());
    let mut b = opendal::services::Gcs::default()
        .bucket(&cfg.bucket)
        .endpoint(&endpoint)
        .root("/");
    let creds = if anonymous {
        b = b
            .skip_signature()
            .disable_vm_metadata()
            .disable_config_load();
        Resolved::Anonymous
    } else {
        match credentials::resolve_secret(&cfg.credentials, credentials::systemd_dir().as_deref())?
        {
            Some((json, from)) => {
                use base64::Engine;
                b = b
                    .credential(&base64::engine::general_purpose::STANDARD.encode(json))
                    .disable_vm_metadata()
                    .disable_config_load();
                Resolved::Secret { from }
            }
            None => Resolved::GcsChain,
        }
    };
    let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
    Ok(Opened {
        op,
        backend: Backend::Gcs,
        endpoint,
        creds,
    })
}

/// GCS reports the object's MD5 (base64), which its ETag is not: it must be the MD5 of the
/// bytes sent (`mine`). A server that reports none has nothing to compare.
pub(super) fn check_md5(
    location: &str,
    mine: [u8; 16],
    theirs: Option<&str>,
) -> Result<(), String> {
    use base64::Engine;
    let Some(theirs) = theirs else {
        return Ok(());
    };
    let mine = base64::engine::general_purpose::STANDARD.encode(mine);
    if mine != theirs {
        return Err(format!(
            "{location} has MD5 {theirs}, but the uploaded bytes give {mine}"
        ));
    }
    Ok(())
}
