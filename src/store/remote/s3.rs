//! The S3 kind (AWS and every S3-compatible server): the operator (static key or the AWS
//! chain, server-side encryption, Content-MD5 for Object Lock buckets), the multipart ETag
//! computed from the parts as they are sent and compared with the server's, and Object Lock
//! retention given to a verified copy. The calls opendal lacks (open multipart uploads,
//! retention) are `s3_raw.rs`'s.

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use opendal::Operator;

use super::credentials::{self, Resolved};
use super::s3_raw::RawS3;
use super::{Backend, Opened};
use crate::config::{DestinationConfig, ObjectLock, Sse};

/// The S3 operator (static key or the AWS chain, SSE) and the raw calls beside it.
pub(super) fn open(cfg: &DestinationConfig, client: &reqwest::Client) -> Result<Opened, String> {
    let creds = credentials::resolve(&cfg.credentials, credentials::systemd_dir().as_deref())?;
    let endpoint = cfg
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
    let mut b = opendal::services::S3::default()
        .bucket(&cfg.bucket)
        .region(&cfg.region)
        .endpoint(&endpoint)
        .root("/");
    if !cfg.force_path_style {
        b = b.enable_virtual_host_style();
    }
    if cfg.object_lock.is_some() {
        // Object Lock buckets refuse uploads without Content-MD5 (or another checksum).
        b = b.checksum_algorithm("md5");
    }
    if let Resolved::Static { key, .. } = &creds {
        // Only this key: neither environment nor profiles nor instance metadata may
        // quietly replace it.
        b = b
            .disable_config_load()
            .disable_ec2_metadata()
            .access_key_id(&key.access_key_id)
            .secret_access_key(&key.secret_access_key);
        if let Some(t) = &key.session_token {
            b = b.session_token(t);
        }
    }
    match &cfg.sse {
        None => {}
        Some(Sse::S3Managed) => b = b.server_side_encryption_with_s3_key(),
        Some(Sse::Kms(None)) => b = b.server_side_encryption_with_aws_managed_kms_key(),
        Some(Sse::Kms(Some(id))) => b = b.server_side_encryption_with_customer_managed_kms_key(id),
    }
    let op = Operator::new(b).map_err(|e| format!("{} setup: {e}", cfg.table))?;
    let raw = RawS3::new(
        client.clone(),
        &creds,
        &endpoint,
        &cfg.bucket,
        &cfg.region,
        cfg.force_path_style,
        cfg.stall_timeout,
    )?;
    let backend = Backend::S3 {
        kms: matches!(cfg.sse, Some(Sse::Kms(_))),
        raw,
    };
    Ok(Opened {
        op,
        backend,
        endpoint,
        creds,
    })
}

/// The S3 multipart ETag (`md5(md5(part1)…md5(partN))-N`) or, for a single PUT, the
/// object's MD5; computed from the parts as they are uploaded.
#[derive(Debug, Clone, Default)]
pub struct EtagCalc {
    part_size: usize,
    current: Md5,
    in_part: usize,
    parts: Vec<[u8; 16]>,
}

impl EtagCalc {
    pub fn new(part_size: usize) -> Self {
        EtagCalc {
            part_size,
            ..Default::default()
        }
    }

    pub fn update(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let n = (self.part_size - self.in_part).min(b.len());
            self.current.update(&b[..n]);
            self.in_part += n;
            b = &b[n..];
            if self.in_part == self.part_size {
                let d = std::mem::take(&mut self.current).finalize();
                self.parts.push(d.into());
                self.in_part = 0;
            }
        }
    }

    /// `(multipart ETag, single-PUT ETag)`; the server's ETag form says which applies.
    pub fn finish(mut self) -> (String, Option<String>) {
        if self.in_part > 0 || self.parts.is_empty() {
            self.parts.push(self.current.finalize().into());
        }
        let single = (self.parts.len() == 1).then(|| hex::encode(self.parts[0]));
        let mut all = Md5::new();
        for p in &self.parts {
            all.update(p);
        }
        (
            format!("{}-{}", hex::encode(all.finalize()), self.parts.len()),
            single,
        )
    }
}

/// Compares a server ETag with what we computed. `None` when the server's form is not an MD5
/// form (SSE-KMS, servers with their own scheme): nothing to compare.
pub fn etag_matches(server: &str, computed: &(String, Option<String>)) -> Option<bool> {
    let e = server.trim_matches('"').to_ascii_lowercase();
    let (hexpart, suffix) = match e.split_once('-') {
        Some((h, n)) => (h, Some(n)),
        None => (e.as_str(), None),
    };
    if hexpart.len() != 32 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(match suffix {
        Some(_) => e == computed.0,
        None => computed.1.as_deref() == Some(hexpart),
    })
}

/// Checks the server's ETag of an uploaded object against what was sent. `Ok(true)` when it
/// was compared, `Ok(false)` when the server gave none or one not in an MD5 form.
pub(super) fn check_etag(
    location: &str,
    server: Option<&str>,
    computed: &(String, Option<String>),
) -> Result<bool, String> {
    match server {
        Some(s) => match etag_matches(s, computed) {
            Some(true) => Ok(true),
            Some(false) => Err(format!(
                "{location} has ETag {s}, but the uploaded bytes give {}",
                computed.1.as_deref().unwrap_or(&computed.0)
            )),
            None => Ok(false),
        },
        _ => Ok(false),
    }
}

/// Gives the object at `key` its Object Lock retention for `lock.period` from now; until when.
pub(super) async fn lock(
    raw: &RawS3,
    lock: &ObjectLock,
    key: &str,
) -> Result<DateTime<Utc>, String> {
    let until = crate::clock::now()
        + chrono::Duration::from_std(lock.period).unwrap_or(chrono::Duration::MAX);
    raw.put_retention(key, lock.mode.as_str(), until).await?;
    Ok(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        let data = vec![7u8; 11];
        let mut c = EtagCalc::new(5);
        c.update(&data[..3]);
        c.update(&data[3..]);
        let (multi, single) = c.finish();
        assert!(multi.ends_with("-3"), "{multi}");
        assert_eq!(single, None);
        let mut c = EtagCalc::new(100);
        c.update(&data);
        let comp = c.finish();
        let whole = hex::encode(Md5::digest(&data));
        assert_eq!(comp.1.as_deref(), Some(whole.as_str()));
        assert_eq!(etag_matches(&format!("\"{whole}\""), &comp), Some(true));
        assert_eq!(
            etag_matches("\"00000000000000000000000000000000\"", &comp),
            Some(false)
        );
        assert_eq!(etag_matches("\"not-an-md5\"", &comp), None);
        // Multipart form: md5 of the part md5s.
        let mut c = EtagCalc::new(5);
        c.update(&data);
        let comp = c.finish();
        let mut all = Md5::new();
        for part in data.chunks(5) {
            all.update(Md5::digest(part));
        }
        let expect = format!("{}-3", hex::encode(all.finalize()));
        assert_eq!(etag_matches(&format!("\"{expect}\""), &comp), Some(true));
    }
}
