//! The HTTP client the object store talks through: rustls with the same crypto provider (ring)
//! as the etcd connection, the system's trust store plus an optional CA bundle, and TLS
//! verification that can only be turned off explicitly (logged loudly by the caller).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Accepts any certificate: `insecure_skip_tls_verify = true` only. Signatures are still
/// checked, so the connection is encrypted to *some* key; who holds it is not verified.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads the PEM certificates of a CA bundle file; errors name the file.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read remote_storage.ca_bundle {}: {e}",
            path.display()
        )
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("remote_storage.ca_bundle {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "remote_storage.ca_bundle {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// An HTTP client for the object store.
pub fn client(
    ca_bundle: Option<&Path>,
    insecure: bool,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_bundle {
            for cert in read_ca_bundle(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("remote_storage.ca_bundle {}: {e}", path.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(connect_timeout)
        // A silent server must not hold an upload forever; whole uploads are bounded too.
        .read_timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client setup: {e}"))
}
