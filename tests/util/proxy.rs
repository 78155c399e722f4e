//! Byte-level TCP proxies on 127.0.0.1 for fault injection between etcdguard and etcd or S3. TLS
//! passes through untouched (the server certificate's 127.0.0.1 SAN still matches).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// What the hostile proxy does to one connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Forwards untouched.
    Pass,
    /// Waits this long before forwarding each chunk, both ways.
    Latency(Duration),
    /// At most this many bytes per second, each way.
    Bandwidth(u64),
    /// Resets the connection (RST) once `after` bytes have passed, both ways counted.
    Reset { after: u64 },
    /// Stops forwarding once `after` bytes have passed, both ways counted, and keeps both
    /// sockets open: a peer that vanished without a word.
    HalfOpen { after: u64 },
    /// Accepts and never answers (no upstream connection at all).
    Blackhole,
    /// Closes cleanly (FIN) once `after` server→client bytes have passed.
    Truncate { after: u64 },
    /// Flips one bit of the server→client byte at offset `at`.
    Corrupt { at: u64 },
    /// Answers every HTTP request on the connection with this status and S3 error code
    /// (500 InternalError, 503 SlowDown), then closes.
    Http { status: u16, code: &'static str },
}

struct Plan {
    faults: Vec<Fault>,
    next: usize,
    /// Connections left before the plan falls back to `Pass` (a burst).
    left: Option<usize>,
}

struct Shared {
    plan: Mutex<Plan>,
    /// Connections that got a fault other than `Pass`.
    faulted: AtomicU64,
    /// Sockets of half-open and black-holed connections, closed by `clear`.
    held: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy on 127.0.0.1 whose fault can be changed while it runs: each new connection
/// takes the plan's next fault (one fault, a rotation, or a burst of N then `Pass`).
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            plan: Mutex::new(Plan {
                faults: vec![Fault::Pass],
                next: 0,
                left: None,
            }),
            faulted: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let fault = s.take();
                if fault != Fault::Pass {
                    s.faulted.fetch_add(1, Ordering::SeqCst);
                }
                let s = s.clone();
                std::thread::spawn(move || serve(client, upstream_port, fault, s));
            }
        });
        FaultProxy { port, shared }
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Every new connection gets `fault`.
    pub fn set(&self, fault: Fault) {
        self.plan(vec![fault], None);
    }

    /// New connections take the faults in turn.
    pub fn rotate(&self, faults: Vec<Fault>) {
        self.plan(faults, None);
    }

    /// The next `n` connections get `fault`, then the proxy passes everything.
    pub fn burst(&self, fault: Fault, n: usize) {
        self.plan(vec![fault], Some(n));
    }

    /// Passes everything again and closes the held (half-open, black-holed) connections.
    pub fn clear(&self) {
        self.plan(vec![Fault::Pass], None);
        for s in self.shared.held.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Connections that got a fault so far.
    pub fn faulted(&self) -> u64 {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    fn plan(&self, faults: Vec<Fault>, left: Option<usize>) {
        *self.shared.plan.lock().unwrap() = Plan {
            faults,
            next: 0,
            left,
        };
    }
}

impl Shared {
    fn take(&self) -> Fault {
        let mut p = self.plan.lock().unwrap();
        if p.left == Some(0) {
            return Fault::Pass;
        }
        if let Some(n) = p.left.as_mut() {
            *n -= 1;
        }
        let f = p.faults[p.next % p.faults.len()].clone();
        p.next += 1;
        f
    }

    fn hold(&self, s: TcpStream) {
        self.held.lock().unwrap().push(s);
    }
}

/// Sends RST instead of FIN when `s` is closed.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized linger value.
    unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_LINGER,
            &l as *const nix::libc::linger as *const nix::libc::c_void,
            std::mem::size_of::<nix::libc::linger>() as nix::libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn serve(client: TcpStream, upstream_port: u16, fault: Fault, shared: Arc<Shared>) {
    match fault {
        Fault::Blackhole => return shared.hold(client),
        Fault::Http { status, code } => return http_error(client, status, code),
        _ => {}
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    let conn = Arc::new(Conn {
        total: AtomicU64::new(0),
        frozen: std::sync::atomic::AtomicBool::new(false),
        shared,
    });
    let (c_in, s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (f, c) = (fault.clone(), conn.clone());
    std::thread::spawn(move || hostile_pump(c_in, s_out, false, &f, &c));
    hostile_pump(server, client, true, &fault, &conn);
}

/// One proxied connection: bytes passed both ways, and whether it went silent (half-open).
struct Conn {
    total: AtomicU64,
    frozen: std::sync::atomic::AtomicBool,
    shared: Arc<Shared>,
}

/// Forwards `from` → `to` under `fault`; `down` is the server→client direction.
fn hostile_pump(mut from: TcpStream, mut to: TcpStream, down: bool, fault: &Fault, conn: &Conn) {
    let mut buf = [0u8; 16 * 1024];
    let mut passed = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = conn.total.fetch_add(n as u64, Ordering::SeqCst);
        let mut n = n;
        match *fault {
            _ if conn.frozen.load(Ordering::SeqCst) => {
                // Silent from now on: the sockets stay open until `clear`.
                conn.shared.hold(from);
                conn.shared.hold(to);
                return;
            }
            Fault::Latency(d) => std::thread::sleep(d),
            Fault::Bandwidth(bps) => {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / bps as f64))
            }
            Fault::Reset { after } if before + n as u64 > after => {
                reset(&from);
                reset(&to);
                return;
            }
            Fault::HalfOpen { after } if before + n as u64 > after => {
                conn.frozen.store(true, Ordering::SeqCst);
                conn.shared.hold(from);
                conn.shared.hold(to);
                return;
            }
            Fault::Truncate { after } if down && passed + n as u64 > after => {
                n = after.saturating_sub(passed) as usize;
                let _ = to.write_all(&buf[..n]);
                break;
            }
            Fault::Corrupt { at } if down && passed <= at && at < passed + n as u64 => {
                buf[(at - passed) as usize] ^= 0x01;
            }
            _ => {}
        }
        passed += n as u64;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Reads one HTTP/1.1 request (head, then a Content-Length or chunked body) and answers it
/// with an S3 error; repeats until the client closes (the answer says `Connection: close`).
fn http_error(mut client: TcpStream, status: u16, code: &str) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = data.len() - head_end;
    loop {
        let done = match length {
            Some(len) => body >= len,
            None if chunked => data.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if done {
            break;
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                body += n;
                if chunked {
                    data.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by \
         the test's fault proxy</Message><RequestId>fault</RequestId></Error>"
    );
    let reason = if status == 503 {
        "Slow Down"
    } else {
        "Internal Server Error"
    };
    let _ = write!(
        client,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{xml}",
        xml.len()
    );
    let _ = client.shutdown(Shutdown::Write);
}
