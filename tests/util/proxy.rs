//! A byte-level TCP proxy on 127.0.0.1 for fault injection between etcdguard and etcd. TLS
//! passes through untouched (the server certificate's 127.0.0.1 SAN still matches).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// Close both directions once this many server→client bytes have passed.
    pub cut_after: Option<u64>,
    /// Once this many server→client bytes have passed, sleep `slow_delay` per chunk.
    pub slow_after: Option<u64>,
    pub slow_delay: Duration,
}

impl Faults {
    /// Slow: `delay` per chunk once `after` server→client bytes have passed.
    pub fn slow(after: u64, delay: Duration) -> Faults {
        Faults {
            slow_after: Some(after),
            slow_delay: delay,
            ..Faults::default()
        }
    }

    /// Cut: both directions closed once `after` server→client bytes have passed.
    pub fn cut(after: u64) -> Faults {
        Faults {
            cut_after: Some(after),
            ..Faults::default()
        }
    }
}

pub struct Proxy {
    pub port: u16,
    pub downstream_bytes: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream_port: u16, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (c2s_from, c2s_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2s_from, c2s_to, None, None));
                let c = c.clone();
                std::thread::spawn(move || pump(server, client, Some(c), Some(faults)));
            }
        });
        Proxy {
            port,
            downstream_bytes: counter,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: Option<Arc<AtomicU64>>,
    faults: Option<Faults>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let (Some(c), Some(f)) = (&counter, faults) {
            let total = c.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if f.cut_after.is_some_and(|limit| total > limit) {
                break;
            }
            if f.slow_after.is_some_and(|limit| total > limit) {
                std::thread::sleep(f.slow_delay);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
