//! A steady client load on an etcd for `bench/run --load`: puts of Kubernetes-sized values at
//! a fixed rate (open loop: a put is sent on its tick whether or not the previous ones have
//! answered, so a slow etcd shows as latency, not as fewer requests), a range read after every
//! tenth put (alternately of the newest writes and of a page of the filled data), and one
//! watch on the written prefix. Every put's and range's start time and latency go to a TSV
//! file for the phases' windows (`p` or `r` in the last column). It ends after `seconds`, or
//! as soon as the stop file exists.
//!
//!   cargo run --release --example bench-load -- <client URL> <pki dir> <seconds> <puts/s> <out.tsv> [stop file]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions, WatchOptions,
};
use tokio::io::AsyncWriteExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, pki) = (&args[1], std::path::Path::new(&args[2]));
    let seconds: u64 = args[3].parse()?;
    let rate: u64 = args[4].parse()?;
    let out_path = args[5].clone();
    let stop = args.get(6).map(std::path::PathBuf::from);
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

    // One watch on what the load writes, drained as the API server's watch cache would.
    let mut w = client.clone();
    let mut stream = w
        .watch("/registry/load/", Some(WatchOptions::new().with_prefix()))
        .await?;
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, f64, bool, char)>();
    let writer = tokio::spawn(async move {
        let mut f = tokio::fs::File::create(out_path).await.expect("out file");
        let mut buf = String::new();
        while let Some((at, ms, ok, kind)) = rx.recv().await {
            buf.push_str(&format!("{at:.6}\t{ms:.3}\t{}\t{kind}\n", u8::from(ok)));
            if buf.len() > 1 << 16 {
                f.write_all(buf.as_bytes()).await.expect("write");
                buf.clear();
            }
        }
        f.write_all(buf.as_bytes()).await.expect("write");
        f.flush().await.expect("flush");
    });

    let value = vec![b'v'; 4096];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    let mut inflight = Vec::new();
    let stopped = || stop.as_ref().is_some_and(|p| p.exists());
    while Instant::now() < end && !(n % 100 == 0 && stopped()) {
        tick.tick().await;
        n += 1;
        let mut c = client.clone();
        let (tx, value) = (tx.clone(), value.clone());
        inflight.push(tokio::spawn(async move {
            let now = || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            };
            let at = now();
            let t0 = Instant::now();
            let key = format!("/registry/load/ns-{}/obj-{:06}", n % 20, n % 5000);
            let ok = c.put(key, value, None).await.is_ok();
            let _ = tx.send((at, t0.elapsed().as_secs_f64() * 1000.0, ok, 'p'));
            if n % 10 == 0 {
                // The newest writes, or a page of what bench-fill wrote (etcd's older pages).
                let prefix = if n % 20 == 0 {
                    format!("/registry/load/ns-{}/", n % 20)
                } else {
                    format!("/registry/pods/ns-{}/obj-{}", (n / 20) % 40, (n / 20) % 2)
                };
                let (at, t0) = (now(), Instant::now());
                let ok = c
                    .get(prefix, Some(GetOptions::new().with_prefix().with_limit(50)))
                    .await
                    .is_ok();
                let _ = tx.send((at, t0.elapsed().as_secs_f64() * 1000.0, ok, 'r'));
            }
        }));
        if inflight.len() > 10_000 {
            inflight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
        }
    }
    for h in inflight {
        let _ = h.await;
    }
    drop(tx);
    writer.await?;
    println!("load: {n} puts in {seconds}s");
    Ok(())
}
