//! Multipart uploads left open: a backup killed in the middle of its upload (SIGKILL, power
//! loss, OOM) never aborts it, and the server keeps its parts, stored and billed, until a
//! bucket lifecycle rule removes them. opendal has no call to list them, so the two S3
//! requests needed (`ListMultipartUploads` under this node's prefix, `AbortMultipartUpload`)
//! are made here, signed with SigV4 by reqsign, the signer opendal itself uses, from the same
//! credentials.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqsign_aws_v4::{DefaultCredentialProvider, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, OsEnv, ProvideCredentialChain, Signer};
use serde::Deserialize;

use super::credentials::Resolved;
use crate::exit::error_chain;

/// One upload the server still holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
}

/// Why the open uploads could not be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListError {
    /// The server does not implement `ListMultipartUploads` (HTTP 501, or 405).
    Unsupported(String),
    Failed(String),
}

/// Signs and sends the raw requests; one per [`super::Remote`].
#[derive(Clone)]
pub(super) struct RawS3 {
    client: reqwest::Client,
    signer: Arc<Signer<reqsign_aws_v4::Credential>>,
    /// `https://host/bucket` (path style) or `https://bucket.host`.
    bucket_url: String,
    /// Bound on each request.
    timeout: std::time::Duration,
}

impl std::fmt::Debug for RawS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawS3({})", self.bucket_url)
    }
}

impl RawS3 {
    pub(super) fn new(
        client: reqwest::Client,
        creds: &Resolved,
        endpoint: &str,
        bucket: &str,
        region: &str,
        path_style: bool,
        timeout: std::time::Duration,
    ) -> Result<RawS3, String> {
        let ctx = Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_http_send(opendal::HttpTransporter::new(
                opendal_http_transport_reqwest::ReqwestTransport::new(client.clone()),
            ))
            .with_env(OsEnv);
        let signer = match creds {
            Resolved::Static { key, .. } => {
                let mut p =
                    StaticCredentialProvider::new(&key.access_key_id, &key.secret_access_key);
                if let Some(t) = &key.session_token {
                    p = p.with_session_token(t);
                }
                Signer::new(ctx, p, RequestSigner::new("s3", region))
            }
            Resolved::Secret { .. }
            | Resolved::GcsChain
            | Resolved::Anonymous
            | Resolved::Filesystem => {
                return Err("open multipart uploads are S3's: no signer for this kind".into())
            }
            Resolved::AwsChain => Signer::new(
                ctx,
                ProvideCredentialChain::new().push(DefaultCredentialProvider::builder().build()),
                RequestSigner::new("s3", region),
            ),
        };
        Ok(RawS3 {
            client,
            signer: Arc::new(signer),
            bucket_url: bucket_url(endpoint, bucket, path_style)?,
            timeout,
        })
    }

    /// Every open upload whose key starts with `prefix` (all pages).
    pub(super) async fn list_open(&self, prefix: &str) -> Result<Vec<OpenUpload>, ListError> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut url = format!(
                "{}/?uploads=&prefix={}",
                self.bucket_url,
                encode(prefix, true)
            );
            if !key_marker.is_empty() {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(&key_marker, true),
                    encode(&id_marker, true)
                ));
            }
            let (status, body) = self
                .send(::http::Method::GET, &url)
                .await
                .map_err(ListError::Failed)?;
            if status == 501 || status == 405 {
                return Err(ListError::Unsupported(format!(
                    "ListMultipartUploads answered HTTP {status}"
                )));
            }
            if !(200..300).contains(&status) {
                return Err(ListError::Failed(format!(
                    "ListMultipartUploads answered HTTP {status}: {}",
                    super::explain::short(&String::from_utf8_lossy(&body))
                )));
            }
            let page = parse_list(&body).map_err(ListError::Failed)?;
            found.extend(page.uploads);
            match page.next {
                Some((k, i)) if k != key_marker || i != id_marker => {
                    (key_marker, id_marker) = (k, i);
                }
                _ => break,
            }
        }
        Ok(found)
    }

    /// Aborts one open upload; one that is gone already (404) counts as aborted.
    pub(super) async fn abort(&self, u: &OpenUpload) -> Result<(), String> {
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            encode(&u.key, false),
            encode(&u.upload_id, true)
        );
        let (status, body) = self.send(::http::Method::DELETE, &url).await?;
        if (200..300).contains(&status) || status == 404 {
            Ok(())
        } else {
            Err(format!(
                "AbortMultipartUpload answered HTTP {status}: {}",
                super::explain::short(&String::from_utf8_lossy(&body))
            ))
        }
    }

    async fn send(&self, method: ::http::Method, url: &str) -> Result<(u16, Bytes), String> {
        self.send_with(method, url, &[], Bytes::new())
            .await
            .map(|(status, _, body)| (status, body))
    }

    /// A signed request with `headers` and `body` (its sha256 signed too): status, response
    /// headers, body.
    async fn send_with(
        &self,
        method: ::http::Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(u16, ::http::HeaderMap, Bytes), String> {
        let mut builder = ::http::Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        if !body.is_empty() {
            use sha2::Digest;
            builder = builder.header(
                "x-amz-content-sha256",
                hex::encode(sha2::Sha256::digest(&body)),
            );
        }
        let req = builder
            .body(())
            .map_err(|e| format!("bad request URL: {e}"))?;
        let (mut parts, ()) = req.into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| format!("cannot sign the request: {e}"))?;
        let mut rb = self.client.request(method, url).timeout(self.timeout);
        for (name, value) in &parts.headers {
            rb = rb.header(name, value);
        }
        let resp = rb.body(body).send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| error_chain(&e))?;
        Ok((status, headers, body))
    }

    /// Object Lock: gives `key` retention `mode` until `until` (PutObjectRetention, with the
    /// Content-MD5 it requires).
    pub(super) async fn put_retention(
        &self,
        key: &str,
        mode: &str,
        until: DateTime<Utc>,
    ) -> Result<(), String> {
        use base64::Engine;
        use md5::Digest;
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let url = format!("{}/{}?retention=", self.bucket_url, encode(key, false));
        let (status, _, resp) = self
            .send_with(
                ::http::Method::PUT,
                &url,
                &[
                    ("content-md5", md5),
                    ("content-type", "application/xml".to_string()),
                ],
                Bytes::from(body),
            )
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "PutObjectRetention answered HTTP {status}: {}",
                super::explain::short(&String::from_utf8_lossy(&resp))
            ))
        }
    }

    /// The Object Lock retention `key` carries, from its HEAD: `(mode, until)`, or `None`.
    pub(super) async fn retention(
        &self,
        key: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, String> {
        let url = format!("{}/{}", self.bucket_url, encode(key, false));
        let (status, headers, _) = self
            .send_with(::http::Method::HEAD, &url, &[], Bytes::new())
            .await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(format!("HeadObject answered HTTP {status}"));
        }
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        Ok(
            match (
                get("x-amz-object-lock-mode"),
                get("x-amz-object-lock-retain-until-date"),
            ) {
                (Some(m), Some(u)) => DateTime::parse_from_rfc3339(u)
                    .ok()
                    .map(|t| (m.to_string(), t.with_timezone(&Utc))),
                _ => None,
            },
        )
    }
}

/// The bucket's base URL for `endpoint`. Pure.
fn bucket_url(endpoint: &str, bucket: &str, path_style: bool) -> Result<String, String> {
    let endpoint = endpoint.trim_end_matches('/');
    if path_style {
        return Ok(format!("{endpoint}/{bucket}"));
    }
    let (scheme, host) = endpoint
        .split_once("://")
        .ok_or_else(|| format!("endpoint {endpoint} has no scheme"))?;
    Ok(format!("{scheme}://{bucket}.{host}"))
}

/// Percent-encodes for a URL path (`/` kept unless `slash`) or a query value. Pure.
fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

struct Page {
    uploads: Vec<OpenUpload>,
    /// `(NextKeyMarker, NextUploadIdMarker)` when the listing is truncated.
    next: Option<(String, String)>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ListResultXml {
    is_truncated: bool,
    next_key_marker: String,
    next_upload_id_marker: String,
    upload: Vec<UploadXml>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    initiated: String,
}

/// Parses a `ListMultipartUploadsResult` body. Pure.
fn parse_list(body: &[u8]) -> Result<Page, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the upload listing is not UTF-8")?;
    let x: ListResultXml = quick_xml::de::from_str(text)
        .map_err(|e| format!("the upload listing does not parse: {e}"))?;
    let uploads = x
        .upload
        .into_iter()
        .filter(|u| !u.key.is_empty() && !u.upload_id.is_empty())
        .map(|u| OpenUpload {
            initiated: DateTime::parse_from_rfc3339(&u.initiated)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            key: u.key,
            upload_id: u.upload_id,
        })
        .collect();
    let next = (x.is_truncated && !x.next_key_marker.is_empty())
        .then_some((x.next_key_marker, x.next_upload_id_marker));
    Ok(Page { uploads, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listing_with_pages() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>etcdguard/m1/snapshot-b.db</NextKeyMarker>
  <NextUploadIdMarker>id-2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>etcdguard/m1/snapshot-a.db</Key><UploadId>id-1</UploadId>
    <Initiated>2026-12-01T10:00:00.000Z</Initiated><StorageClass>STANDARD</StorageClass></Upload>
  <Upload><Key>etcdguard/m1/snapshot-b.db</Key><UploadId>id-2</UploadId>
    <Initiated>not a time</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let p = parse_list(body).unwrap();
        assert_eq!(p.uploads.len(), 2);
        assert_eq!(p.uploads[0].key, "etcdguard/m1/snapshot-a.db");
        assert_eq!(p.uploads[0].upload_id, "id-1");
        assert_eq!(
            p.uploads[0].initiated.unwrap().to_rfc3339(),
            "2026-12-01T10:00:00+00:00"
        );
        assert_eq!(p.uploads[1].initiated, None);
        assert_eq!(
            p.next,
            Some(("etcdguard/m1/snapshot-b.db".into(), "id-2".into()))
        );
        let empty = parse_list(b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>").unwrap();
        assert!(empty.uploads.is_empty() && empty.next.is_none());
        assert!(
            parse_list(b"<html>").is_err() || parse_list(b"<html>").unwrap().uploads.is_empty()
        );
    }

    #[test]
    fn urls_and_encoding() {
        assert_eq!(
            bucket_url("http://127.0.0.1:9000/", "b", true).unwrap(),
            "http://127.0.0.1:9000/b"
        );
        assert_eq!(
            bucket_url("https://s3.eu-west-1.amazonaws.com", "b", false).unwrap(),
            "https://b.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(encode("a/b c+d=", false), "a/b%20c%2Bd%3D");
        assert_eq!(encode("a/b", true), "a%2Fb");
    }
}
