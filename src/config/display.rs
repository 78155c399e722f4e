//! The effective configuration printed back as TOML, every default filled in and secrets
//! redacted (`config check`).

use std::path::Path;
use std::time::Duration;

use super::*;

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn write_rule(w: &mut String, rule: &Rule) {
    use std::fmt::Write;
    let ttl = rule.ttl.map_or_else(|| "forever".to_string(), human);
    let _ = writeln!(w, "ttl = {}", toml_string(&ttl));
    if let Some(k) = rule.keep {
        let _ = writeln!(w, "keep = {k}");
    }
    for p in crate::retention::Period::ALL {
        if let Some(n) = rule.tiers.get(p) {
            let _ = writeln!(w, "{} = {n}", p.field());
        }
    }
    let _ = writeln!(w, "min_keep = {}", rule.min_keep);
    if rule.tiers.any() {
        let _ = writeln!(
            w,
            "# hours, days, weeks (ISO, from Monday) and months in the timezone {}",
            toml_string(&rule.zone.to_string())
        );
    }
    if rule.keeps_forever() {
        let _ = writeln!(
            w,
            "# neither ttl nor a keep rule: snapshots here are never deleted"
        );
    }
}

fn quoted(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Config {
    /// The effective configuration as TOML, every default filled in. Secrets (remote
    /// credentials, once they exist) are replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        use std::fmt::Write;
        let _ = writeln!(w, "schedule = {}", toml_string(self.schedule.expression()));
        let _ = writeln!(w, "timezone = {}", toml_string(&self.timezone.to_string()));
        let _ = writeln!(w, "paused = {}", self.paused);
        let _ = writeln!(w, "catch_up = {}", self.catch_up);
        let _ = writeln!(w, "state_dir = {}", quoted(&self.state_dir));
        match &self.metrics_file {
            Some(m) => {
                let _ = writeln!(w, "metrics_file = {}", quoted(m));
            }
            None => {
                let _ = writeln!(w, "# metrics_file unset: no Prometheus textfile");
            }
        }
        let e = &self.etcd;
        let _ = writeln!(w, "\n[etcd]");
        let _ = writeln!(w, "manifest = {}", quoted(&e.manifest));
        match &e.endpoint {
            Some(ep) => {
                let _ = writeln!(w, "endpoint = {}", toml_string(ep));
            }
            None => {
                let _ = writeln!(w, "# endpoint: the loopback client URL in the manifest");
            }
        }
        let _ = writeln!(w, "ca_cert = {}", quoted(&e.ca_cert));
        let _ = writeln!(w, "client_cert = {}", quoted(&e.client_cert));
        let _ = writeln!(w, "client_key = {}", quoted(&e.client_key));
        let _ = writeln!(w, "timeout = {}", toml_string(&human(e.timeout)));
        let _ = writeln!(
            w,
            "stall_timeout = {}",
            toml_string(&human(e.stall_timeout))
        );
        let _ = writeln!(w, "dial_timeout = {}", toml_string(&human(e.dial_timeout)));
        match e.rate_limit {
            Some(r) => {
                let _ = writeln!(w, "rate_limit = \"{}B/s\"", r);
            }
            None => {
                let _ = writeln!(
                    w,
                    "# rate_limit unset: the snapshot is read as fast as etcd sends"
                );
            }
        }
        let l = &self.local_storage;
        let _ = writeln!(w, "\n[local_storage]");
        let _ = writeln!(w, "path = {}", quoted(&l.path));
        write_rule(w, &l.retention);
        if self.destinations.is_empty() {
            let _ = writeln!(
                w,
                "\n# no [remote_storage] and no [[destination]]: local copies only"
            );
        }
        for r in &self.destinations {
            // Every destination in the new form: [remote_storage] is the first, named as its
            // `name` says (`remote` by default), its systemd credential `etcdguard-s3`.
            let _ = writeln!(w, "\n[[destination]]");
            let _ = writeln!(w, "name = {}", toml_string(&r.name));
            let _ = writeln!(w, "type = {}", toml_string(r.kind.as_str()));
            match &r.kind {
                Kind::S3 => {
                    let _ = writeln!(w, "bucket = {}", toml_string(&r.bucket));
                    let _ = writeln!(w, "region = {}", toml_string(&r.region));
                }
                Kind::Gcs { anonymous } => {
                    let _ = writeln!(w, "bucket = {}", toml_string(&r.bucket));
                    if *anonymous {
                        let _ = writeln!(w, "anonymous = true  # NO CREDENTIALS");
                    }
                }
                Kind::Azblob { account } => {
                    let _ = writeln!(w, "container = {}", toml_string(&r.bucket));
                    let _ = writeln!(w, "account_name = {}", toml_string(account));
                }
                Kind::Fs {
                    path,
                    require_mount,
                } => {
                    let _ = writeln!(w, "path = {}", quoted(path));
                    let _ = writeln!(w, "require_mount = {require_mount}");
                }
            }
            if let Some(ep) = &r.endpoint {
                let _ = writeln!(w, "endpoint = {}", toml_string(ep));
            }
            let _ = writeln!(w, "prefix = {}", toml_string(&r.prefix));
            if r.kind == Kind::S3 {
                let _ = writeln!(w, "force_path_style = {}", r.force_path_style);
            }
            if let Some(ca) = &r.ca_bundle {
                let _ = writeln!(w, "ca_bundle = {}", quoted(ca));
            }
            if r.insecure_skip_tls_verify {
                let _ = writeln!(w, "insecure_skip_tls_verify = true  # TLS NOT VERIFIED");
            }
            match &r.sse {
                None => {}
                Some(Sse::S3Managed) => {
                    let _ = writeln!(w, "sse = \"AES256\"");
                }
                Some(Sse::Kms(key)) => {
                    let _ = writeln!(w, "sse = \"aws:kms\"");
                    if let Some(k) = key {
                        let _ = writeln!(w, "sse_kms_key_id = {}", toml_string(k));
                    }
                }
            }
            if let Some(l) = &r.object_lock {
                let _ = writeln!(w, "object_lock_mode = {}", toml_string(l.mode.as_str()));
                let _ = writeln!(w, "object_lock_period = {}", toml_string(&human(l.period)));
            }
            match &r.credentials {
                Credentials::File(p) => {
                    let _ = writeln!(w, "credentials_file = {}", quoted(p));
                }
                Credentials::SystemdOrDefault(name) => {
                    let _ = writeln!(w, "systemd_credential = {}", toml_string(name));
                    let _ = writeln!(
                        w,
                        "# credentials: $CREDENTIALS_DIRECTORY/{name} (systemd \
                         LoadCredential=), else {}",
                        match r.kind {
                            Kind::S3 => "the AWS chain (environment, profile, instance role)",
                            Kind::Gcs { .. } => "GCS application default credentials",
                            Kind::Azblob { .. } => "none: a key is required",
                            Kind::Fs { .. } => "none needed (the file system's permissions)",
                        }
                    );
                }
            }
            let _ = writeln!(w, "part_size = {}", r.part_size);
            let _ = writeln!(w, "concurrency = {}", r.concurrency);
            let _ = writeln!(w, "timeout = {}", toml_string(&human(r.timeout)));
            let _ = writeln!(
                w,
                "stall_timeout = {}",
                toml_string(&human(r.stall_timeout))
            );
            if let Some(rate) = r.rate_limit {
                let _ = writeln!(w, "rate_limit = \"{rate}B/s\"");
            }
            write_rule(w, &r.retention);
            let _ = writeln!(
                w,
                "per = {}",
                toml_string(if r.per_cluster { "cluster" } else { "node" })
            );
            if r.per_cluster {
                let _ = writeln!(
                    w,
                    "cluster_lease = {}",
                    toml_string(&human(r.cluster_lease))
                );
            }
        }
        match &self.encryption {
            None => {
                let _ = writeln!(w, "\n# [encryption] absent: copies are the plain snapshot");
            }
            Some(e) => {
                let _ = writeln!(w, "\n[encryption]");
                let _ = writeln!(w, "# copies are sealed as <snapshot>.db{}", e.suffix());
                let _ = writeln!(w, "recipients = [");
                for r in &e.recipients {
                    let _ = writeln!(w, "  {},", toml_string(r.text()));
                }
                let _ = writeln!(w, "]");
                let _ = writeln!(w, "compression = {}", toml_string(e.compression.name()));
                if let Compression::Zstd(l) = e.compression {
                    let _ = writeln!(w, "compression_level = {l}");
                }
                let _ = writeln!(w, "encrypt_local = {}", e.encrypt_local);
            }
        }
        if let Some(b) = &self.bundle {
            let _ = writeln!(w, "\n[bundle]");
            let _ = writeln!(w, "root = {}", quoted(&b.root));
            let list: Vec<String> = b.extra_paths.iter().map(|p| quoted(p)).collect();
            let _ = writeln!(w, "extra_paths = [{}]", list.join(", "));
        }
        let d = &self.drill;
        let _ = writeln!(w, "\n[drill]");
        match &d.schedule {
            Some(s) => {
                let _ = writeln!(w, "schedule = {}", toml_string(s.expression()));
            }
            None => {
                let _ = writeln!(w, "# no schedule: drills only by hand (`etcdguard drill`)");
            }
        }
        let source = match d.source {
            crate::config::DrillSource::Local => "local",
            crate::config::DrillSource::Remote => "remote",
        };
        let _ = writeln!(w, "source = {}", toml_string(source));
        let _ = writeln!(w, "scratch_dir = {}", quoted(&d.scratch_dir));
        if let Some(i) = &d.identity {
            let _ = writeln!(w, "identity = {}", quoted(i));
        }
        if let Some(b) = &d.etcd_binary {
            let _ = writeln!(w, "etcd_binary = {}", quoted(b));
        }
        let _ = writeln!(w, "timeout = {}", toml_string(&human(d.timeout)));
        let _ = writeln!(w, "\n[records]");
        let _ = writeln!(w, "successful_history_limit = {}", self.history.successful);
        let _ = writeln!(w, "failed_history_limit = {}", self.history.failed);
        out
    }
}
