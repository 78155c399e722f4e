//! Real S3-compatible servers on free loopback ports: s3s-fs (real SigV4 checks, objects as
//! files on disk, survives restarts) and moto (in memory, lists multipart uploads, serves
//! HTTPS with a certificate of ours). Installed by `scripts/install-test-deps` into the
//! project cache; a missing binary fails the test with that pointer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{cache_bin, free_port, poll_until, wait_listening};

pub const ACCESS_KEY: &str = "AKIAETCDGUARDTEST01";
pub const SECRET_KEY: &str = "etcdguard-test-secret-key-0123456789";

pub struct S3Server {
    pub kind: &'static str,
    pub port: u16,
    pub endpoint: String,
    /// s3s-fs: the directory holding buckets (one subdirectory each, objects as files).
    pub root: Option<PathBuf>,
    pub log: PathBuf,
    child: Option<Child>,
    tls: Option<(PathBuf, PathBuf)>,
}

fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
}

impl S3Server {
    /// s3s-fs serving `root` over HTTP with the test key pair; `bucket` created.
    pub fn s3s_fs(root: &Path, bucket: &str) -> S3Server {
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let mut s = S3Server {
            kind: "s3s-fs",
            port: 0,
            endpoint: String::new(),
            root: Some(root.to_owned()),
            log: root.with_extension("s3s-fs.log"),
            child: None,
            tls: None,
        };
        s.start_on(free_port());
        s
    }

    /// moto over HTTPS with `cert`/`key` (or plain HTTP without), `bucket` created.
    pub fn moto(dir: &Path, tls: Option<(PathBuf, PathBuf)>, bucket: &str) -> S3Server {
        let mut s = S3Server {
            kind: "moto",
            port: 0,
            endpoint: String::new(),
            root: None,
            log: dir.join("moto.log"),
            child: None,
            tls,
        };
        s.start_on(free_port());
        s.create_bucket_unsigned(bucket);
        s
    }

    fn start_on(&mut self, port: u16) {
        self.port = port;
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd;
        match self.kind {
            "s3s-fs" => {
                cmd = Command::new(cache_bin("s3s-fs/bin/s3s-fs"));
                cmd.args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--access-key",
                    ACCESS_KEY,
                    "--secret-key",
                    SECRET_KEY,
                ])
                .arg(self.root.as_ref().unwrap());
                self.endpoint = format!("http://127.0.0.1:{port}");
            }
            _ => {
                cmd = Command::new(cache_bin("moto/bin/moto_server"));
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                if let Some((c, k)) = &self.tls {
                    cmd.arg("--ssl-cert").arg(c).arg("--ssl-key").arg(k);
                    self.endpoint = format!("https://127.0.0.1:{port}");
                } else {
                    self.endpoint = format!("http://127.0.0.1:{port}");
                }
            }
        }
        clean_env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn S3 server"));
        let child = self.child.as_mut().unwrap();
        wait_listening(self.kind, child, port, &self.log);
    }

    /// Sends an unsigned request (moto without auth) and returns (status, body). TLS is not
    /// verified: this is the test peeking at its own server.
    pub fn unsigned(&self, method: &str, path: &str) -> (u16, String) {
        let (code, body) = self.unsigned_bytes(method, path);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn unsigned_bytes(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        let client = etcdguard::store::http::client(None, true, Duration::from_secs(5)).unwrap();
        let url = format!("{}{path}", self.endpoint);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        super::rt().block_on(async {
            match client.request(method, &url).send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    (
                        code,
                        r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                    )
                }
                Err(_) => (0, Vec::new()),
            }
        })
    }

    fn create_bucket_unsigned(&self, bucket: &str) {
        let within = Duration::from_secs(30);
        let mut last = (0, String::new());
        let created = poll_until(within, Duration::from_millis(200), || {
            last = self.unsigned("PUT", &format!("/{bucket}"));
            (last.0 == 200).then_some(())
        });
        let (code, body) = last;
        assert!(
            created.is_some(),
            "cannot create bucket {bucket} on {} in {within:?}: {code} {body}",
            self.kind
        );
    }

    /// Runs a boto3 snippet (the AWS SDK for Python, installed with moto) against this server
    /// as an independent client: `s3` is a client with the test keys; `out` is written to
    /// stdout. TLS is not verified: the test peeks at its own server.
    pub fn boto(&self, code: &str) -> Vec<u8> {
        let script = format!(
            "import sys, boto3\n\
             from botocore.config import Config\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
               aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}', \
               verify=False, config=Config(s3={{'addressing_style': 'path'}}))\n\
             out = b''\n{code}\nsys.stdout.buffer.write(out)\n",
            self.endpoint
        );
        let mut cmd = Command::new(cache_bin("moto/bin/python"));
        cmd.args(["-W", "ignore", "-c", &script]);
        clean_env(&mut cmd);
        let out = cmd.output().expect("python");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Multipart uploads the server still has open in `bucket`.
    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        let out = self.boto(&format!(
            "r = s3.list_multipart_uploads(Bucket='{bucket}')\nout = str(len(r.get('Uploads', []))).encode()"
        ));
        String::from_utf8_lossy(&out).trim().parse().unwrap()
    }

    /// Object keys in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.boto(&format!(
            "r = s3.list_objects_v2(Bucket='{bucket}')\nout = '\\n'.join(o['Key'] for o in r.get('Contents', [])).encode()"
        ));
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The bytes of an object.
    pub fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.boto(&format!(
            "out = s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read()"
        ))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGKILL; [`S3Server::restart`] brings it back on the same port and data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.start_on(self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
