//! A PKI generated in the test, in kubeadm's file layout under `<root>/etc/kubernetes/pki/etcd`:
//! ca.crt/key, server.crt/key (SAN 127.0.0.1, ::1, localhost), peer.crt/key,
//! healthcheck-client.crt/key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub struct Pki {
    pub dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Pki {
    /// Creates the CA and the standard kubeadm etcd certificates in `dir`.
    pub fn create(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki::ca_only(dir, "etcd-ca");
        let sans = ["127.0.0.1", "::1", "localhost"];
        pki.issue("server", "etcd-server", &sans, true, true, 365);
        pki.issue("peer", "etcd-peer", &sans, true, true, 365);
        pki.issue(
            "healthcheck-client",
            "kube-etcd-healthcheck-client",
            &[],
            false,
            true,
            365,
        );
        pki
    }

    /// A CA alone, written as `ca.crt`/`ca.key` in `dir` (another CA for "wrong CA" tests).
    pub fn ca_only(dir: &Path, cn: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(3650);
        let cert = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        write_private(&dir.join("ca.key"), &ca_key.serialize_pem());
        Pki {
            dir: dir.to_owned(),
            ca_params: p,
            ca_key,
        }
    }

    /// The CA already in `dir` (`ca.crt`/`ca.key`, made by [`Pki::ca_only`] with common name
    /// `cn`), to issue more certificates from.
    pub fn load(dir: &Path, cn: &str) -> Pki {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Pki {
            dir: dir.to_owned(),
            ca_params: p,
            ca_key,
        }
    }

    /// Issues `<name>.crt`/`<name>.key` signed by this CA, valid from yesterday for
    /// `valid_days` days (negative: already expired).
    pub fn issue(
        &self,
        name: &str,
        cn: &str,
        sans: &[&str],
        server: bool,
        client: bool,
        valid_days: i64,
    ) -> (PathBuf, PathBuf) {
        self.issue_in(name, cn, None, sans, server, client, valid_days)
    }

    /// [`Pki::issue`] with an organization (`O=`, a Kubernetes group) when `org` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_in(
        &self,
        name: &str,
        cn: &str,
        org: Option<&str>,
        sans: &[&str],
        server: bool,
        client: bool,
        valid_days: i64,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        for s in sans {
            p.subject_alt_names
                .push(match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*s).try_into().unwrap()),
                });
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if client {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let now = OffsetDateTime::now_utc();
        if valid_days >= 0 {
            p.not_before = now - Duration::days(1);
            p.not_after = now + Duration::days(valid_days);
        } else {
            p.not_before = now - Duration::days(30);
            p.not_after = now + Duration::days(valid_days);
        }
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let (crt, k) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        write_private(&k, &key.serialize_pem());
        (crt, k)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}
