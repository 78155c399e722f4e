//! Remote credentials, read fresh for every upload (rotated keys, renewed tokens) and never
//! logged or printed: only a masked key id (`AKIA…XYZ`) ever appears in messages.
//!
//! Sources, in the order the configuration allows them:
//! - `credentials_file`: an AWS-style credentials file, which must be 0600 or 0400 — a file
//!   group or others can read is refused;
//! - systemd's `LoadCredential=etcdguard-s3:<file>` (`$CREDENTIALS_DIRECTORY/etcdguard-s3`),
//!   same format; systemd keeps it private;
//! - otherwise the standard AWS chain (environment, profile, instance role), resolved by the
//!   S3 client itself.
//!
//! GCS and Azure destinations read the same way ([`resolve_secret`]): a service account's JSON
//! key, or the storage account's key, from `credentials_file` (0600/0400) or the systemd
//! credential `etcdguard-<destination>`; GCS falls back to its application default
//! credentials, Azure has no chain (a key is required).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::Credentials;

/// An access key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKey({})", mask(&self.access_key_id))
    }
}

/// What to sign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Static {
        key: StaticKey,
        from: PathBuf,
    },
    /// The AWS default chain.
    AwsChain,
    /// A GCS or Azure key read from `from` (handed to the client, not kept).
    Secret {
        from: PathBuf,
    },
    /// GCS's application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the VM's).
    GcsChain,
    /// No credentials (`anonymous = true`).
    Anonymous,
    /// A mounted directory: the file system's permissions.
    Filesystem,
}

impl Resolved {
    /// For messages: which key, from where; never the secret.
    pub fn describe(&self) -> String {
        match self {
            Resolved::Static { key, from } => {
                format!("key {} from {}", mask(&key.access_key_id), from.display())
            }
            Resolved::AwsChain => {
                "credentials from the AWS chain (environment, profile, instance role)".into()
            }
            Resolved::Secret { from } => format!("the key in {}", from.display()),
            Resolved::GcsChain => "GCS application default credentials".into(),
            Resolved::Anonymous => "no credentials (anonymous = true)".into(),
            Resolved::Filesystem => "the file system's permissions".into(),
        }
    }

    pub fn key_id(&self) -> Option<String> {
        match self {
            Resolved::Static { key, .. } => Some(mask(&key.access_key_id)),
            Resolved::AwsChain => std::env::var("AWS_ACCESS_KEY_ID").ok().map(|k| mask(&k)),
            Resolved::Secret { from } => Some(format!("from {}", from.display())),
            _ => None,
        }
    }
}

/// `AKIAIOSFODNN7EXAMPLE` → `AKIA…PLE`.
pub fn mask(key_id: &str) -> String {
    let chars: Vec<char> = key_id.chars().collect();
    if chars.len() <= 8 {
        return "…".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}…{tail}")
}

/// Parses an AWS-style credentials file: `[default]` (or no section) with
/// `aws_access_key_id`, `aws_secret_access_key`, optional `aws_session_token`. Pure.
pub fn parse(text: &str) -> Result<StaticKey, String> {
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut section: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        if section.as_deref().is_some_and(|s| s != "default") {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(StaticKey {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token.filter(|t| !t.is_empty()),
        }),
        _ => Err(
            "needs aws_access_key_id and aws_secret_access_key (in [default] or before any \
             section)"
                .into(),
        ),
    }
}

fn read_key(path: &Path, check_mode: bool) -> Result<StaticKey, String> {
    let text = read_private(path, check_mode)?;
    parse(&text).map_err(|e| format!("credentials file {}: {e}", path.display()))
}

/// The text of a credentials file, refused when group or others may read it (`check_mode`).
fn read_private(path: &Path, check_mode: bool) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read credentials file {}: {}",
            path.display(),
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                _ => e.to_string(),
            }
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(format!(
            "credentials file {} is readable by group or others (mode {mode:o}); refusing to \
             use it: chmod 0600 {}",
            path.display(),
            path.display()
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read credentials file {}: {e}", path.display()))
}

/// A GCS or Azure destination's key, read now: `(text, where from)`, or `None` when the
/// configuration leaves it to the provider's chain and no systemd credential is there.
pub fn resolve_secret(
    source: &Credentials,
    credentials_dir: Option<&Path>,
) -> Result<Option<(String, PathBuf)>, String> {
    match source {
        Credentials::File(path) => Ok(Some((read_private(path, true)?, path.clone()))),
        Credentials::SystemdOrDefault(name) => match credentials_dir.map(|d| d.join(name)) {
            Some(path) if path.exists() => Ok(Some((read_private(&path, false)?, path))),
            _ => Ok(None),
        },
    }
}

/// Resolves the configured source now. `credentials_dir` is `$CREDENTIALS_DIRECTORY`.
pub fn resolve(source: &Credentials, credentials_dir: Option<&Path>) -> Result<Resolved, String> {
    match source {
        Credentials::File(path) => Ok(Resolved::Static {
            key: read_key(path, true)?,
            from: path.clone(),
        }),
        Credentials::SystemdOrDefault(name) => {
            if let Some(dir) = credentials_dir {
                let path = dir.join(name);
                if path.exists() {
                    return Ok(Resolved::Static {
                        key: read_key(&path, false)?,
                        from: path,
                    });
                }
            }
            Ok(Resolved::AwsChain)
        }
    }
}

/// `$CREDENTIALS_DIRECTORY`, when systemd set it.
pub fn systemd_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aws_files() {
        let k =
            parse("[default]\naws_access_key_id = AKIAEXAMPLE123\naws_secret_access_key=s3cr3t\n")
                .unwrap();
        assert_eq!(k.access_key_id, "AKIAEXAMPLE123");
        assert_eq!(k.secret_access_key, "s3cr3t");
        let k = parse("aws_access_key_id=a1234567890\naws_secret_access_key=b\naws_session_token=t\n[other]\naws_access_key_id=zzz\n").unwrap();
        assert_eq!(k.access_key_id, "a1234567890");
        assert_eq!(k.session_token.as_deref(), Some("t"));
        assert!(parse("[other]\naws_access_key_id=a\naws_secret_access_key=b\n").is_err());
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn secrets_never_show() {
        let k =
            parse("aws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key=wJalrXUtnFEMI\n")
                .unwrap();
        assert_eq!(format!("{k:?}"), "StaticKey(AKIA…PLE)");
        assert_eq!(mask("short"), "…");
    }

    #[test]
    fn loose_modes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("creds");
        std::fs::write(
            &p,
            "aws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key=x\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(&Credentials::File(p.clone()), None).unwrap_err();
        assert!(e.contains("readable by group or others"), "{e}");
        assert!(!e.contains("AKIAIOSFODNN7EXAMPLE"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            resolve(&Credentials::File(p), None),
            Ok(Resolved::Static { .. })
        ));
        // systemd's directory wins over the AWS chain when the credential is there.
        let name = "etcdguard-s3";
        assert_eq!(
            resolve(&Credentials::SystemdOrDefault(name.into()), Some(d.path())).unwrap(),
            Resolved::AwsChain
        );
        std::fs::write(
            d.path().join(name),
            "aws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key=x\n",
        )
        .unwrap();
        assert!(matches!(
            resolve(&Credentials::SystemdOrDefault(name.into()), Some(d.path())),
            Ok(Resolved::Static { .. })
        ));
    }
}
