//! Loading and checking the client TLS material: CA, client certificate and key, as PEM files.
//! Every error names the file and says how to fix it. Files are re-read on every connect, so a
//! renewed certificate (`kubeadm certs renew`) is picked up without a restart.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Warn this long before the client certificate expires.
const EXPIRY_WARNING_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no PEM certificate ({detail})")]
    NoCertificate {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("client key {path} holds no PEM private key ({detail})")]
    NoKey { path: PathBuf, detail: String },
    #[error("{what} {path} is not a valid X.509 certificate: {detail}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "client certificate {path} expired at {not_after}; renew it \
         (kubeadm: `kubeadm certs renew etcd-healthcheck-client`) or point etcd.client_cert \
         at a valid one"
    )]
    Expired {
        path: PathBuf,
        not_after: DateTime<Utc>,
    },
    #[error("client certificate {path} is not valid before {not_before}; check the system clock")]
    NotYetValid {
        path: PathBuf,
        not_before: DateTime<Utc>,
    },
    #[error(
        "client key {path} is readable by {who} (mode {mode:04o}): it opens every key of the \
         cluster's etcd to whoever holds it; `chmod 600 {path}` (kubeadm writes it 0600)"
    )]
    LooseKey {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error(
        "client key {key} is not the key of client certificate {cert}: etcd would refuse the \
         connection; point etcd.client_key and etcd.client_cert at one pair (kubeadm: \
         healthcheck-client.key and healthcheck-client.crt)"
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
}

impl TlsError {
    /// The configuration field naming the file this error is about.
    pub fn config_field(&self) -> &'static str {
        match self {
            TlsError::Read { what, .. }
            | TlsError::NoCertificate { what, .. }
            | TlsError::BadCertificate { what, .. } => match *what {
                "CA certificate" => "etcd.ca_cert",
                "client key" => "etcd.client_key",
                _ => "etcd.client_cert",
            },
            TlsError::NoKey { .. } | TlsError::LooseKey { .. } | TlsError::KeyMismatch { .. } => {
                "etcd.client_key"
            }
            TlsError::Expired { .. } | TlsError::NotYetValid { .. } => "etcd.client_cert",
        }
    }
}

/// PEM bytes ready for the TLS connector, checked for the mistakes we can detect offline.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_cert_not_after: DateTime<Utc>,
    /// Human-readable warnings (certificate about to expire).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsMaterial")
            .field("client_cert_not_after", &self.client_cert_not_after)
            .finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file (check the path in the etcd section \
                                             of the config; kubeadm keeps it under \
                                             /etc/kubernetes/pki/etcd)"
                .to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied (kubeadm PKI files are \
                                                     root-only: run etcdguard as root)"
                .to_string(),
            _ => e.to_string(),
        },
    })
}

fn first_cert(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<CertificateDer<'static>, TlsError> {
    let mut certs = CertificateDer::pem_slice_iter(pem);
    match certs.next() {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        }),
        None => Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
            detail: "no \"BEGIN CERTIFICATE\" block".to_string(),
        }),
    }
}

fn validity(
    what: &'static str,
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        TlsError::BadCertificate {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        }
    })?;
    let v = cert.validity();
    let ts = |t: i64| DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
    Ok((ts(v.not_before.timestamp()), ts(v.not_after.timestamp())))
}

/// A key file others may read is refused, as ssh refuses one.
fn loose_key(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = m.permissions().mode() & 0o7777;
    let who = if mode & 0o004 != 0 {
        "everyone"
    } else if mode & 0o040 != 0 {
        "its group"
    } else {
        return Ok(());
    };
    Err(TlsError::LooseKey {
        path: path.to_owned(),
        mode,
        who,
    })
}

/// True when `key`'s public key is the one in `cert` (or when the key type cannot say: then
/// the TLS handshake is the judge).
fn key_matches(key: &PrivateKeyDer<'_>, cert: &CertificateDer<'_>) -> bool {
    let Ok(signer) = rustls::crypto::ring::sign::any_supported_type(key) else {
        return true;
    };
    let Some(spki) = signer.public_key() else {
        return true;
    };
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => c.tbs_certificate.subject_pki.raw == spki.as_ref(),
        Err(_) => true,
    }
}

impl TlsMaterial {
    /// Reads and checks the three files at time `now`.
    pub fn load(
        ca_cert: &Path,
        client_cert: &Path,
        client_key: &Path,
        now: DateTime<Utc>,
    ) -> Result<TlsMaterial, TlsError> {
        let ca_pem = read("CA certificate", ca_cert)?;
        let ca = first_cert("CA certificate", ca_cert, &ca_pem)?;
        validity("CA certificate", ca_cert, &ca)?;

        let cert_pem = read("client certificate", client_cert)?;
        let cert = first_cert("client certificate", client_cert, &cert_pem)?;
        let (not_before, not_after) = validity("client certificate", client_cert, &cert)?;

        let key_pem = read("client key", client_key)?;
        loose_key(client_key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
            path: client_key.to_owned(),
            detail: e.to_string(),
        })?;
        if !key_matches(&key, &cert) {
            return Err(TlsError::KeyMismatch {
                key: client_key.to_owned(),
                cert: client_cert.to_owned(),
            });
        }

        if now < not_before {
            return Err(TlsError::NotYetValid {
                path: client_cert.to_owned(),
                not_before,
            });
        }
        if now > not_after {
            return Err(TlsError::Expired {
                path: client_cert.to_owned(),
                not_after,
            });
        }
        let mut warnings = Vec::new();
        let left = not_after - now;
        if left < chrono::Duration::days(EXPIRY_WARNING_DAYS) {
            warnings.push(format!(
                "client certificate {} expires in {} days (at {not_after}); renew it \
                 (kubeadm: `kubeadm certs renew etcd-healthcheck-client`)",
                client_cert.display(),
                left.num_days()
            ));
        }
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            client_cert_not_after: not_after,
            warnings,
        })
    }
}
