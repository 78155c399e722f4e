//! The other storage servers of the destination tests, on free loopback ports: Azurite
//! (Azure's blob emulator, from npm) and fake-gcs-server (a GCS emulator, built from its Go
//! module), at the versions `scripts/test-servers/` pins, installed by
//! `scripts/install-test-deps` into the project cache; a missing one fails the test with that
//! pointer. Each is read back through its own HTTP API, independently of etcdguard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{cache_bin, free_port, poll_until, wait_listening};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn pinned(rel: &str, find: impl Fn(&str) -> Option<String>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(find)
        .unwrap_or_else(|| panic!("no version in {}", path.display()))
}

fn azurite_version() -> String {
    pinned("scripts/test-servers/azurite/package.json", |l| {
        let l = l.trim();
        l.strip_prefix("\"azurite\": \"")
            .map(|v| v.trim_end_matches(['"', ',']).to_string())
    })
}

fn fake_gcs_version() -> String {
    pinned("scripts/test-servers/fake-gcs-server/go.mod", |l| {
        l.strip_prefix("require github.com/fsouza/fake-gcs-server ")
            .map(|v| v.trim().to_string())
    })
}

/// One emulator process, restartable on the same port (and, for Azurite, the same data).
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        self.child = Some(child);
        let child = self.child.as_mut().unwrap();
        wait_listening(self.name, child, self.port, &self.log);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Azurite's blob service, its data in a directory (it survives a restart).
pub struct Azurite {
    pub endpoint: String,
    pub container: String,
    proc: Process,
}

impl Azurite {
    pub fn start(dir: &Path, container: &str) -> Azurite {
        let port = free_port();
        let program = cache_bin(&format!(
            "azurite/{}/node_modules/.bin/azurite-blob",
            azurite_version()
        ));
        let data = dir.join("azurite");
        std::fs::create_dir_all(&data).unwrap();
        let mut proc = Process {
            name: "azurite",
            program,
            // --disableTelemetry: it would report off the machine otherwise.
            args: [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                data.to_str().unwrap(),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ]
            .map(String::from)
            .to_vec(),
            port,
            log: dir.join("azurite.log"),
            child: None,
        };
        proc.start();
        let a = Azurite {
            endpoint: format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}"),
            container: container.to_string(),
            proc,
        };
        let within = Duration::from_secs(30);
        let mut last = (0, String::new());
        let created = poll_until(within, Duration::from_millis(200), || {
            last = a.call("PUT", &format!("/{container}"), "restype=container");
            (last.0 == 201 || last.0 == 409).then_some(())
        });
        let (code, body) = last;
        assert!(
            created.is_some(),
            "cannot create container {container} in {within:?}: {code} {body}"
        );
        a
    }

    /// The account key in a 0600 file, as `credentials_file` wants it.
    pub fn key_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("azure-key");
        std::fs::write(&p, format!("{AZURE_KEY}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// One request signed with the account key (SharedKey), by a small Python program of
    /// the standard library: a client independent of etcdguard's. (status, body).
    fn call(&self, method: &str, path: &str, query: &str) -> (u16, String) {
        let (code, body) = self.call_bytes(method, path, query);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn call_bytes(&self, method: &str, path: &str, query: &str) -> (u16, Vec<u8>) {
        let out = Command::new("python3")
            .args([
                "-c",
                AZURE_CLIENT,
                &self.proc.port.to_string(),
                method,
                path,
                query,
            ])
            .env("AZ_ACCOUNT", AZURE_ACCOUNT)
            .env("AZ_KEY", AZURE_KEY)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "azure client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (head, body) = out
            .stdout
            .split_at(out.stdout.iter().position(|&b| b == b'\n').unwrap());
        (
            String::from_utf8_lossy(head).trim().parse().unwrap(),
            body[1..].to_vec(),
        )
    }

    /// Blob names in the container.
    pub fn names(&self) -> Vec<String> {
        let (code, body) = self.call(
            "GET",
            &format!("/{}", self.container),
            "comp=list&restype=container",
        );
        assert_eq!(code, 200, "{body}");
        body.split("<Name>")
            .skip(1)
            .filter_map(|s| s.split("</Name>").next())
            .map(str::to_string)
            .collect()
    }

    pub fn blob(&self, name: &str) -> Vec<u8> {
        let (code, body) = self.call_bytes("GET", &format!("/{}/{name}", self.container), "");
        assert_eq!(code, 200, "{name}");
        body
    }

    /// SIGKILL; `restart` brings it back on the same port and data.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc.start();
    }
}

/// SharedKey for Azurite's path-style URLs: the account appears in the path and in the
/// canonicalized resource. argv: port method path query; prints the status, a newline, the
/// body.
const AZURE_CLIENT: &str = r#"
import base64, hashlib, hmac, http.client, os, sys, urllib.parse
from email.utils import formatdate
port, method, path, query = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
acct, key = os.environ["AZ_ACCOUNT"], base64.b64decode(os.environ["AZ_KEY"])
q = dict(urllib.parse.parse_qsl(query)) if query else {}
h = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-12-02"}
if method == "PUT":
    h["Content-Length"] = "0"
xms = "".join(f"{k}:{v}\n" for k, v in sorted(h.items()) if k.startswith("x-ms-"))
res = f"/{acct}/{acct}{path}" + "".join(f"\n{k}:{q[k]}" for k in sorted(q))
cl = h.get("Content-Length", "")
cl = "" if cl == "0" else cl
sts = "\n".join([method, "", "", cl, "", "", "", "", "", "", "", ""]) + "\n" + xms + res
sig = base64.b64encode(hmac.new(key, sts.encode(), hashlib.sha256).digest()).decode()
h["Authorization"] = f"SharedKey {acct}:{sig}"
url = f"/{acct}{path}" + (("?" + urllib.parse.urlencode(q)) if q else "")
c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
c.request(method, url, headers=h)
r = c.getresponse()
data = r.read()
sys.stdout.buffer.write(f"{r.status}\n".encode() + data)
"#;

/// fake-gcs-server over plain HTTP, its objects in a directory.
pub struct FakeGcs {
    pub endpoint: String,
    pub bucket: String,
    /// Killed when dropped.
    _proc: Process,
}

impl FakeGcs {
    pub fn start(dir: &Path, bucket: &str) -> FakeGcs {
        let port = free_port();
        let program = cache_bin(&format!(
            "fake-gcs-server/{}/fake-gcs-server",
            fake_gcs_version()
        ));
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut proc = Process {
            name: "fake-gcs-server",
            program,
            args: vec![
                "-scheme".into(),
                "http".into(),
                "-host".into(),
                "127.0.0.1".into(),
                "-port".into(),
                port.to_string(),
                "-backend".into(),
                "filesystem".into(),
                "-filesystem-root".into(),
                dir.join("gcs").display().to_string(),
                "-public-host".into(),
                format!("127.0.0.1:{port}"),
                "-external-url".into(),
                endpoint.clone(),
                "-log-level".into(),
                "warn".into(),
            ],
            port,
            log: dir.join("fake-gcs.log"),
            child: None,
        };
        proc.start();
        let g = FakeGcs {
            endpoint,
            bucket: bucket.to_string(),
            _proc: proc,
        };
        g.create_bucket();
        g
    }

    fn create_bucket(&self) {
        let (code, body) = self.http(
            "POST",
            "/storage/v1/b?project=etcdguard-test",
            Some(format!("{{\"name\": \"{}\"}}", self.bucket)),
        );
        assert!(code == 200 || code == 409, "create bucket: {code} {body:?}");
    }

    fn http(&self, method: &str, path: &str, json: Option<String>) -> (u16, Vec<u8>) {
        let client = etcdguard::store::http::client(None, false, Duration::from_secs(10)).unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}{path}", self.endpoint);
        super::rt().block_on(async {
            let mut req = client.request(method, &url);
            if let Some(j) = json {
                req = req.header("content-type", "application/json").body(j);
            }
            match req.send().await {
                Ok(r) => (
                    r.status().as_u16(),
                    r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                ),
                Err(_) => (0, Vec::new()),
            }
        })
    }

    /// Object names in the bucket.
    pub fn names(&self) -> Vec<String> {
        let (code, body) = self.http("GET", &format!("/storage/v1/b/{}/o", self.bucket), None);
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn object(&self, name: &str) -> Vec<u8> {
        let enc: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = self.http(
            "GET",
            &format!("/storage/v1/b/{}/o/{enc}?alt=media", self.bucket),
            None,
        );
        assert_eq!(code, 200, "{name}");
        body
    }
}
