//! Client-side compression and encryption of the copies that leave the node, and the way back.
//!
//! The one place that knows age and zstd. A copy is sealed in one streaming pass with bounded
//! buffers: plaintext → zstd (optional) → age, to public recipients only, so the node never
//! holds a key that opens its own backups. Opening ([`open`]) recognises what it reads by its
//! first bytes (age header, zstd magic, or a plain snapshot), so `verify`, `restore`,
//! `restore-datadir` and `decrypt` take any of them. The standard tools do the same offline:
//! `age -d -i KEY FILE | zstd -d > snapshot.db`.
//!
//! Nothing here logs or prints key material: identities are read, used and dropped; error
//! messages name files and lines, never their contents.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The first line of every age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd's own default: fast (hundreds of MB/s per core) with most of the gain.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Identity files larger than this are not identity files.
const IDENTITY_FILE_LIMIT: u64 = 1 << 20;
const BUF: usize = 1 << 20;

/// Compression applied before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zstd at this level (1..=19).
    Zstd(i32),
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
}

/// One configured recipient: public, safe to print and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    text: String,
    fingerprint: String,
}

impl Recipient {
    /// Parses an age X25519 recipient (`age1…`) or an SSH public key (`ssh-ed25519 …`,
    /// `ssh-rsa …`). A private key given by mistake is refused without being echoed.
    pub fn parse(s: &str) -> Result<Recipient, String> {
        let s = s.trim();
        if s.starts_with("AGE-SECRET-KEY-") {
            return Err(
                "this is an age identity (a private key), not a recipient: the node \
                        must hold public keys only; give its recipient (`age-keygen -y KEYFILE`)"
                    .into(),
            );
        }
        if s.contains("PRIVATE KEY") {
            return Err(
                "this is an SSH private key, not a recipient: the node must hold \
                        public keys only; give the public key (`ssh-keygen -y -f KEYFILE`)"
                    .into(),
            );
        }
        if s.starts_with("age1") {
            let r = age::x25519::Recipient::from_str(s)
                .map_err(|e| format!("not a valid age recipient: {e}"))?;
            let text = r.to_string();
            return Ok(Recipient {
                fingerprint: text.clone(),
                text,
            });
        }
        if s.starts_with("ssh-") {
            use age::ssh::ParseRecipientKeyError as E;
            let r = age::ssh::Recipient::from_str(s).map_err(|e| match e {
                E::Unsupported(t) => {
                    format!("SSH key type {t} is not supported: use ssh-ed25519 or ssh-rsa")
                }
                E::RsaModulusTooSmall => "the ssh-rsa key is shorter than 2048 bits".into(),
                E::RsaModulusTooLarge => "the ssh-rsa key is longer than age supports".into(),
                _ => "not a valid SSH public key".into(),
            })?;
            let text = r.to_string();
            return Ok(Recipient {
                fingerprint: ssh_fingerprint(&text),
                text,
            });
        }
        Err(
            "neither an age recipient (age1…) nor an SSH public key (ssh-ed25519 …, \
             ssh-rsa …)"
                .into(),
        )
    }

    /// The recipient as age prints it (an SSH key without its comment).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// `age1…` itself, or `ssh-ed25519 SHA256:…` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn to_age(&self) -> Box<dyn age::Recipient + Send> {
        if self.text.starts_with("age1") {
            Box::new(age::x25519::Recipient::from_str(&self.text).expect("parsed before"))
        } else {
            Box::new(age::ssh::Recipient::from_str(&self.text).expect("parsed before"))
        }
    }
}

/// `<type> SHA256:<base64 of sha256(key blob), unpadded>`.
fn ssh_fingerprint(public: &str) -> String {
    let mut parts = public.split_whitespace();
    let kind = parts.next().unwrap_or("ssh");
    let blob = parts
        .next()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let digest = Sha256::digest(&blob);
    format!(
        "{kind} SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Parses a recipients file: one recipient per line, `#` comments and blank lines ignored.
/// Errors are `(line, message)`; lines are never echoed.
pub fn parse_recipients_file(text: &str) -> Result<Vec<Recipient>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(Recipient::parse(line).map_err(|e| (i + 1, e))?);
    }
    Ok(out)
}

/// `[encryption]`: how copies are sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub recipients: Vec<Recipient>,
    pub compression: Compression,
    /// Local copies are sealed too (the plain snapshot exists only as the hidden temp file
    /// while it is checked).
    pub encrypt_local: bool,
}

impl Encryption {
    /// What a sealed copy's name ends with after the snapshot's `.db`.
    pub fn suffix(&self) -> &'static str {
        match self.compression {
            Compression::None => ".age",
            Compression::Zstd(_) => ".zst.age",
        }
    }

    /// The description records and sidecars carry.
    pub fn describe(&self) -> Sealing {
        Sealing {
            encryption: "age".into(),
            compression: self.compression.name().into(),
            compression_level: match self.compression {
                Compression::Zstd(l) => Some(l),
                Compression::None => None,
            },
            recipients: self
                .recipients
                .iter()
                .map(|r| r.fingerprint().to_string())
                .collect(),
        }
    }

    /// A streaming sealer to these recipients.
    pub fn sealer(&self) -> io::Result<Sealer> {
        let boxed: Vec<_> = self.recipients.iter().map(Recipient::to_age).collect();
        let enc = age::Encryptor::with_recipients(
            boxed.iter().map(|r| r.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| io::Error::other(format!("age: {e}")))?;
        let out = Shared::default();
        let age = enc.wrap_output(out.clone())?;
        let chain = match self.compression {
            Compression::None => Chain::Age(age),
            Compression::Zstd(level) => {
                let mut z = zstd::stream::write::Encoder::new(age, level)?;
                z.include_checksum(true)?;
                Chain::Zstd(z)
            }
        };
        Ok(Sealer {
            chain: Some(chain),
            out,
        })
    }
}

/// Seals the plain file `src` into `out` (fsynced); returns the sealed bytes' sha256 and size.
pub fn seal_file(
    src: &Path,
    out: &std::fs::File,
    out_path: &Path,
    enc: &Encryption,
) -> io::Result<(String, u64)> {
    // Each error names the file and the operation.
    let said = |op: &str, p: &Path| {
        let p = p.display().to_string();
        let op = op.to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("cannot {op} {p}: {e}"))
    };
    let mut input = std::fs::File::open(src).map_err(said("open", src))?;
    let mut sealer = enc.sealer()?;
    let mut w = Counted {
        w: io::BufWriter::with_capacity(BUF, out),
        h: Sha256::new(),
        n: 0,
    };
    let mut buf = vec![0u8; BUF];
    loop {
        crate::failpoint::check("seal:read", src).map_err(said("read", src))?;
        let k = input.read(&mut buf).map_err(said("read", src))?;
        if k == 0 {
            break;
        }
        let sealed = sealer.push(&buf[..k])?;
        crate::failpoint::check("seal:write", out_path).map_err(said("write", out_path))?;
        w.put(&sealed).map_err(said("write", out_path))?;
    }
    let last = sealer.finish()?;
    w.put(&last).map_err(said("write", out_path))?;
    w.w.flush().map_err(said("write", out_path))?;
    let (h, n) = (w.h, w.n);
    crate::failpoint::check("seal:fsync", out_path).map_err(said("fsync", out_path))?;
    out.sync_all().map_err(said("fsync", out_path))?;
    Ok((hex::encode(h.finalize()), n))
}

/// A writer that hashes and counts what it writes.
struct Counted<W: Write> {
    w: W,
    h: Sha256,
    n: u64,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.h.update(b);
        self.n += b.len() as u64;
        self.w.write_all(b)
    }
}

/// How a copy was sealed: public facts only (records, sidecars).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sealing {
    /// `age`.
    pub encryption: String,
    /// `zstd` or `none`.
    pub compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// The recipients' fingerprints: who can open the copy.
    pub recipients: Vec<String>,
}

/// The growing output of a sealer, drained after every write.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Chain {
    Age(age::stream::StreamWriter<Shared>),
    Zstd(zstd::stream::write::Encoder<'static, age::stream::StreamWriter<Shared>>),
}

/// Plaintext in, sealed bytes out, a chunk at a time: memory is bounded by the compressor's
/// window and age's 64 KiB chunk, not by the input.
pub struct Sealer {
    chain: Option<Chain>,
    out: Shared,
}

impl Sealer {
    /// Seals `plain`; returns the sealed bytes ready so far (often none).
    pub fn push(&mut self, plain: &[u8]) -> io::Result<Vec<u8>> {
        match self.chain.as_mut() {
            Some(Chain::Age(w)) => w.write_all(plain)?,
            Some(Chain::Zstd(w)) => w.write_all(plain)?,
            None => return Err(io::Error::other("sealer already finished")),
        }
        Ok(self.out.take())
    }

    /// Ends the zstd frame and the age stream; returns the last sealed bytes.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        match self.chain.take() {
            Some(Chain::Age(w)) => {
                w.finish()?;
            }
            Some(Chain::Zstd(w)) => {
                w.finish()?.finish()?;
            }
            None => {}
        }
        Ok(self.out.take())
    }
}

/// What a file or object holds, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Age,
    Zstd,
}

pub fn sniff(head: &[u8]) -> Kind {
    if head.starts_with(AGE_MAGIC) {
        Kind::Age
    } else if head.starts_with(&ZSTD_MAGIC) {
        Kind::Zstd
    } else {
        Kind::Plain
    }
}

/// The identities given with `--identity`: an age identity file (`AGE-SECRET-KEY-1…` lines)
/// or an unencrypted OpenSSH private key.
pub struct Identities {
    path: PathBuf,
    ids: Vec<Box<dyn age::Identity>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.path.display())
    }
}

impl Identities {
    pub fn load(path: &Path) -> Result<Identities, String> {
        let name = path.display();
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read the identity file {name}: {e}"))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > IDENTITY_FILE_LIMIT {
            return Err(format!(
                "{name} is {len} bytes: not an age identity file or an SSH private key"
            ));
        }
        let mut text = String::new();
        BufReader::new(file)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the identity file {name}: {e}"))?;
        let ids = if text.contains("-----BEGIN") {
            ssh_identity(&text, path)?
        } else {
            age::IdentityFile::from_buffer(text.as_bytes())
                .and_then(|f| f.into_identities().map_err(io::Error::other))
                .map_err(|e| {
                    format!(
                        "{name} is not an age identity file ({}); give the file `age-keygen` \
                         wrote, or an SSH private key",
                        e.to_string().replace("identity file ", "")
                    )
                })?
                .into_iter()
                .map(|i| i as Box<dyn age::Identity>)
                .collect()
        };
        // The text held key material: overwrite it before it is freed.
        let mut bytes = text.into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        if ids.is_empty() {
            return Err(format!("{name} holds no identity"));
        }
        Ok(Identities {
            path: path.to_owned(),
            ids,
        })
    }
}

fn ssh_identity(text: &str, path: &Path) -> Result<Vec<Box<dyn age::Identity>>, String> {
    let name = path.display();
    match age::ssh::Identity::from_buffer(text.as_bytes(), None) {
        Ok(age::ssh::Identity::Unencrypted(k)) => {
            Ok(vec![Box::new(age::ssh::Identity::Unencrypted(k))])
        }
        Ok(age::ssh::Identity::Encrypted(_)) => Err(format!(
            "{name} is a passphrase-protected SSH key, and etcdguard asks for no passphrase: \
             use a decrypted copy of the key on a safe machine, or an age identity"
        )),
        Ok(age::ssh::Identity::Unsupported(_)) => Err(format!(
            "{name} is an SSH key of a type age cannot use: use ssh-ed25519 or ssh-rsa"
        )),
        Err(_) => Err(format!(
            "{name} is neither an age identity file nor an OpenSSH private key"
        )),
    }
}

/// A reader of the snapshot inside `input`: the plain bytes, whatever sealed them. `what`
/// names the input in messages. An age input needs `ids`.
pub fn open<'a, R: Read + 'a>(
    input: R,
    ids: Option<&'a Identities>,
    what: &str,
) -> Result<Box<dyn Read + 'a>, String> {
    let mut input = BufReader::with_capacity(BUF, input);
    match sniff(peek(&mut input, what)?) {
        Kind::Plain => Ok(Box::new(input)),
        Kind::Zstd => Ok(Box::new(zstd_reader(input, what)?)),
        Kind::Age => {
            let ids = ids.ok_or_else(|| {
                format!(
                    "{what} is encrypted with age: give an identity that opens it with \
                     --identity FILE"
                )
            })?;
            let dec = age::Decryptor::new_buffered(input)
                .map_err(|e| format!("{what} is not a readable age file: {e}"))?;
            let plain = dec
                .decrypt(ids.ids.iter().map(|i| i.as_ref()))
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys => format!(
                        "no identity in {} opens {what}: it was encrypted to other recipients \
                         (its record's sealing.recipients says which)",
                        ids.path.display()
                    ),
                    e => format!("{what} cannot be decrypted: {e}"),
                })?;
            let mut plain = BufReader::with_capacity(BUF, plain);
            match sniff(peek(&mut plain, what)?) {
                Kind::Zstd => Ok(Box::new(zstd_reader(plain, what)?)),
                _ => Ok(Box::new(plain)),
            }
        }
    }
}

fn peek<'b, R: Read>(r: &'b mut BufReader<R>, what: &str) -> Result<&'b [u8], String> {
    r.fill_buf()
        .map_err(|e| format!("cannot read {what}: {}", authentication(&e)))
}

fn zstd_reader<'a, R: BufRead + 'a>(
    input: R,
    what: &str,
) -> Result<zstd::stream::read::Decoder<'a, R>, String> {
    zstd::stream::read::Decoder::with_buffer(input)
        .map_err(|e| format!("{what}: cannot start zstd decompression: {e}"))
}

/// age reports a failed chunk authentication as a bare I/O error: say what it means.
fn authentication(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::InvalidData || e.to_string().contains("decrypt") {
        format!("{e} (the encrypted data is truncated or was altered)")
    } else {
        e.to_string()
    }
}

/// Streams the snapshot inside `src` into `dest` (created 0600, fsynced) and returns its size
/// and sha256. `dest` is removed on failure.
pub fn unseal_file(
    src: &Path,
    ids: Option<&Identities>,
    dest: &Path,
) -> Result<(u64, String), String> {
    let what = src.display().to_string();
    let file = std::fs::File::open(src).map_err(|e| format!("cannot read {what}: {e}"))?;
    unseal_from(file, ids, &what, dest)
}

/// [`unseal_file`] of what `input` (named `what`) yields: a file, or a download as it arrives.
pub fn unseal_from<R: Read>(
    input: R,
    ids: Option<&Identities>,
    what: &str,
    dest: &Path,
) -> Result<(u64, String), String> {
    let result = (|| {
        let mut reader = open(input, ids, what)?;
        let out = crate::fsutil::create_private_file(dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let (n, sha) = copy_hashing(&mut reader, &out, what, dest)?;
        crate::failpoint::check("unseal:fsync", dest)
            .and_then(|()| out.sync_all())
            .map_err(|e| format!("cannot fsync {}: {e}", dest.display()))?;
        Ok((n, sha))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn copy_hashing(
    reader: &mut dyn Read,
    out: &std::fs::File,
    what: &str,
    dest: &Path,
) -> Result<(u64, String), String> {
    let mut w = Counted {
        w: out,
        h: Sha256::new(),
        n: 0,
    };
    let mut buf = vec![0u8; BUF];
    loop {
        let k = reader
            .read(&mut buf)
            .map_err(|e| format!("{what} could not be decoded: {}", authentication(&e)))?;
        if k == 0 {
            break;
        }
        crate::failpoint::check("unseal:write", dest)
            .and_then(|()| w.put(&buf[..k]))
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    Ok((w.n, hex::encode(w.h.finalize())))
}

/// True when the file at `path` is sealed (age or zstd), by its first bytes.
pub fn is_sealed(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 32];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(sniff(&head[..n]) != Kind::Plain)
}

/// A plaintext copy of a sealed file in a private temp dir, removed when dropped.
#[derive(Debug)]
pub struct Unsealed {
    dir: PathBuf,
    file: PathBuf,
    /// The plain snapshot's sha256, computed while it was written.
    sha256: String,
}

impl Unsealed {
    /// Decodes `src` into `<parent>/etcdguard-unsealed-<pid>-<n>/<name>` (dir 0700, file 0600).
    pub fn create(src: &Path, ids: Option<&Identities>, parent: &Path) -> Result<Unsealed, String> {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let what = src.display().to_string();
        let file = std::fs::File::open(src).map_err(|e| format!("cannot read {what}: {e}"))?;
        Unsealed::from_reader(file, ids, &what, name, parent)
    }

    /// [`Unsealed::create`] of what `input` yields (`what`, named `name`, e.g. a download as
    /// it arrives): nothing sealed is written to disk.
    pub fn from_reader<R: Read>(
        input: R,
        ids: Option<&Identities>,
        what: &str,
        name: &str,
        parent: &Path,
    ) -> Result<Unsealed, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("etcdguard-unsealed-{}-{n}", std::process::id()));
        crate::fsutil::create_private_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let name = if name.is_empty() {
            "snapshot.db".to_string()
        } else {
            plain_name(name)
        };
        let mut u = Unsealed {
            file: dir.join(name),
            dir,
            sha256: String::new(),
        };
        u.sha256 = unseal_from(input, ids, what, &u.file)?.1;
        Ok(u)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl Drop for Unsealed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `x.db.zst.age` → `x.db`; other names get `.db` unless they end with it.
pub fn plain_name(name: &str) -> String {
    let base = name.strip_suffix(".age").unwrap_or(name);
    let base = base.strip_suffix(".zst").unwrap_or(base);
    if base.ends_with(".db") {
        base.to_string()
    } else {
        format!("{base}.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (age::x25519::Identity, String) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public().to_string();
        (id, r)
    }

    fn seal(enc: &Encryption, data: &[u8], step: usize) -> Vec<u8> {
        let mut s = enc.sealer().unwrap();
        let mut out = Vec::new();
        for c in data.chunks(step) {
            out.extend(s.push(c).unwrap());
        }
        out.extend(s.finish().unwrap());
        out
    }

    fn identities(id: age::x25519::Identity) -> Identities {
        Identities {
            path: PathBuf::from("key.txt"),
            ids: vec![Box::new(id)],
        }
    }

    #[test]
    fn sealed_bytes_open_to_the_same_plaintext_for_each_compression() {
        let (id, r) = keypair();
        let ids = identities(id);
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for compression in [Compression::None, Compression::Zstd(3)] {
            let enc = Encryption {
                recipients: vec![Recipient::parse(&r).unwrap()],
                compression,
                encrypt_local: false,
            };
            let sealed = seal(&enc, &data, 70_001);
            assert_eq!(sniff(&sealed), Kind::Age);
            let mut plain = Vec::new();
            open(&sealed[..], Some(&ids), "x")
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
            assert!(plain == data, "{compression:?}");
        }
    }

    #[test]
    fn wrong_identity_missing_identity_and_tampering_fail() {
        let (_, r) = keypair();
        let (other, _) = keypair();
        let enc = Encryption {
            recipients: vec![Recipient::parse(&r).unwrap()],
            compression: Compression::Zstd(1),
            encrypt_local: false,
        };
        let sealed = seal(&enc, &vec![5u8; 200_000], 4096);
        let e = open(&sealed[..], None, "obj").err().unwrap();
        assert!(e.contains("--identity"), "{e}");
        let e = open(&sealed[..], Some(&identities(other)), "obj")
            .err()
            .unwrap();
        assert!(e.contains("no identity in key.txt opens obj"), "{e}");

        let (id, r) = keypair();
        let ids = identities(id);
        let enc = Encryption {
            recipients: vec![Recipient::parse(&r).unwrap()],
            compression: Compression::None,
            encrypt_local: false,
        };
        let data = vec![9u8; 200_000];
        let sealed = seal(&enc, &data, 4096);
        let read_all = |b: &[u8]| -> Result<Vec<u8>, String> {
            let mut r = open(b, Some(&ids), "obj")?;
            let mut v = Vec::new();
            r.read_to_end(&mut v).map_err(|e| authentication(&e))?;
            Ok(v)
        };
        assert_eq!(read_all(&sealed).unwrap(), data);
        let truncated = &sealed[..sealed.len() - 100];
        assert!(read_all(truncated).is_err());
        let mut flipped = sealed.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        let e = read_all(&flipped).unwrap_err();
        assert!(e.contains("altered"), "{e}");
    }

    #[test]
    fn recipients_parse_and_private_keys_are_refused_without_echo() {
        let (id, r) = keypair();
        let p = Recipient::parse(&format!("  {r} ")).unwrap();
        assert_eq!(p.fingerprint(), r);
        use age::secrecy::ExposeSecret;
        let secret = id.to_string().expose_secret().to_string();
        let e = Recipient::parse(&secret).unwrap_err();
        assert!(!e.contains(&secret[15..]), "{e}");
        assert!(e.contains("age-keygen -y"), "{e}");
        let ssh =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN ops";
        let p = Recipient::parse(ssh).unwrap();
        assert!(p.fingerprint().starts_with("ssh-ed25519 SHA256:"), "{p:?}");
        assert!(Recipient::parse("ssh-dss AAAA").is_err());
        assert!(Recipient::parse("age1notakey").is_err());
        assert!(Recipient::parse("hello").is_err());
        let e = parse_recipients_file(&format!("# ops\n{r}\n\nage1bad\n")).unwrap_err();
        assert_eq!(e.0, 4);
        assert_eq!(parse_recipients_file(&format!("{r}\n")).unwrap().len(), 1);
    }

    #[test]
    fn names() {
        assert_eq!(plain_name("a.db.zst.age"), "a.db");
        assert_eq!(plain_name("a.db.age"), "a.db");
        assert_eq!(plain_name("a.db"), "a.db");
        assert_eq!(plain_name("obj"), "obj.db");
    }
}
