//! Fills an etcd with Kubernetes-like data until its database reaches a size, for
//! `bench/run`: keys `/registry/<resource>/<namespace>/<name>`, values of 1–24 KiB of
//! incompressible bytes (as protobuf-encoded objects and Secrets are, to a compressor), some
//! keys overwritten (old revisions stay until compaction, as in a live cluster).
//!
//!   cargo run --release --example bench-fill -- <client URL> <pki dir> <target MiB> [k8s]
//!
//! With `k8s`, values are shaped like Kubernetes objects instead (for the compression
//! benchmark): kind, metadata, labels and managedFields as text with the repetition real
//! objects have, random uids and resource versions, and for Secrets an opaque random payload.
//! With `configmaps`, every key is a ConfigMap a real kube-apiserver decodes (JSON, its data
//! random hex), under `/registry/configmaps/` (for the recovery-time benchmark, which ends when
//! an API server serves them).

use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions, Txn, TxnOp};

const RESOURCES: [&str; 8] = [
    "pods",
    "secrets",
    "configmaps",
    "events",
    "services/endpoints",
    "deployments",
    "leases",
    "replicasets",
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// xorshift64*: cheap deterministic bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value shaped like a Kubernetes object of resource `r`, about `len` bytes.
    fn object(&mut self, r: &str, ns: u64, name: &str, len: usize) -> Vec<u8> {
        use std::fmt::Write;
        let mut v = String::with_capacity(len + 512);
        let uid = hex(&self.bytes(16));
        let _ = write!(
            v,
            "k8s\0{{\"kind\":\"{r}\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{name}\",\
             \"namespace\":\"ns-{ns}\",\"uid\":\"{uid}\",\"resourceVersion\":\"{}\",\
             \"labels\":{{\"app.kubernetes.io/name\":\"web-{}\",\"app.kubernetes.io/part-of\":\
             \"shop\",\"pod-template-hash\":\"{}\"}},\"managedFields\":[",
            self.next() % 100_000_000,
            self.next() % 50,
            &hex(&self.bytes(5))[..10]
        );
        let payload = if r == "secrets" { len / 2 } else { 0 };
        while v.len() + payload < len {
            let _ = write!(
                v,
                "{{\"manager\":\"kube-controller-manager\",\"operation\":\"Update\",\
                 \"apiVersion\":\"apps/v1\",\"time\":\"2026-11-{:02}T{:02}:{:02}:{:02}Z\",\
                 \"fieldsType\":\"FieldsV1\",\"fieldsV1\":{{\"f:status\":{{\"f:conditions\":\
                 {{\"k:{{\\\"type\\\":\\\"Ready\\\"}}\":{{\"f:lastTransitionTime\":{{}},\
                 \"f:status\":{{}}}}}},\"f:replicas\":{{}},\"f:observedGeneration\":{}}}}}}},",
                1 + self.next() % 28,
                self.next() % 24,
                self.next() % 60,
                self.next() % 60,
                self.next() % 1000
            );
        }
        v.push_str("]}}");
        let mut out = v.into_bytes();
        out.extend(self.bytes(payload));
        out
    }

    /// A ConfigMap kube-apiserver reads back, about `len` bytes of JSON.
    fn configmap(&mut self, ns: u64, name: &str, len: usize) -> Vec<u8> {
        let uid = hex(&self.bytes(16));
        let data = hex(&self.bytes(len / 2));
        format!(
            "{{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{name}\",\
             \"namespace\":\"ns-{ns}\",\"uid\":\"{}-{}-{}-{}-{}\",\
             \"creationTimestamp\":\"2026-11-01T00:00:00Z\"}},\"data\":{{\"blob\":\"{data}\"}}}}",
            &uid[..8],
            &uid[8..12],
            &uid[12..16],
            &uid[16..20],
            &uid[20..32]
        )
        .into_bytes()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, pki, target_mib) = (
        &args[1],
        std::path::Path::new(&args[2]),
        args[3].parse::<u64>()?,
    );
    let read = |f: &str| std::fs::read(pki.join(f)).expect("pki file");
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .identity(Identity::from_pem(
            read("healthcheck-client.crt"),
            read("healthcheck-client.key"),
        ));
    let client = Client::connect(
        [url.as_str()],
        Some(
            ConnectOptions::new()
                .with_tls(tls)
                .with_timeout(Duration::from_secs(30)),
        ),
    )
    .await?;
    let target = target_mib << 20;
    let shaped = args.get(4).is_some_and(|a| a == "k8s");
    let configmaps = args.get(4).is_some_and(|a| a == "configmaps");
    let start = Instant::now();
    let mut handles = Vec::new();
    for worker in 0..16u64 {
        let mut c = client.clone();
        handles.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9e37_79b9_7f4a_7c15 ^ (worker + 1).wrapping_mul(0x1234_5678_9abc_def1));
            let mut n = 0u64;
            loop {
                let size = c.status().await?.db_size() as u64;
                if size >= target {
                    return Ok::<u64, etcd_client::Error>(n);
                }
                for _ in 0..20 {
                    let mut ops = Vec::new();
                    let mut seen = std::collections::HashSet::new();
                    for _ in 0..8 {
                        let r = if configmaps {
                            "configmaps"
                        } else {
                            RESOURCES[(rng.next() % 8) as usize]
                        };
                        // A tenth of the writes overwrite an earlier key.
                        let name = if rng.next() % 10 == 0 {
                            rng.next() % (n + 1)
                        } else {
                            n
                        };
                        let key = format!("/registry/{r}/ns-{}/obj-{worker}-{name:08}", name % 40);
                        if !seen.insert(key.clone()) {
                            continue; // one key at most once per transaction
                        }
                        let len = 1024 + (rng.next() % (23 * 1024)) as usize;
                        let value = if configmaps {
                            rng.configmap(name % 40, &format!("obj-{worker}-{name:08}"), len)
                        } else if shaped {
                            rng.object(r, name % 40, &format!("obj-{worker}-{name:08}"), len)
                        } else {
                            rng.bytes(len)
                        };
                        ops.push(TxnOp::put(key, value, None));
                        n += 1;
                    }
                    c.txn(Txn::new().and_then(ops)).await?;
                }
            }
        }));
    }
    let mut keys = 0;
    for h in handles {
        keys += h.await??;
    }
    let mut c = client.clone();
    let st = c.status().await?;
    println!(
        "filled: {keys} puts, db {} MiB, revision {}, {:.1}s",
        st.db_size() >> 20,
        st.header().map_or(0, |h| h.revision()),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
