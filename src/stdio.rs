//! The process's own stdout and stderr. A write that fails (a redirect to a full disk, a
//! closed terminal) is never a panic and never silent: it is remembered here, and `main` then
//! exits 1, saying so on stderr where it still can. A closed pipe on stdout (`etcdguard records
//! | head`) is the reader's choice, a normal end.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static FAILED: AtomicBool = AtomicBool::new(false);

/// True when a write to stdout or stderr failed in this process.
pub fn failed() -> bool {
    FAILED.load(Ordering::SeqCst)
}

fn remember<T>(r: std::io::Result<T>) -> std::io::Result<T> {
    if r.is_err() {
        FAILED.store(true, Ordering::SeqCst);
    }
    r
}

/// Writes `text` to stdout and flushes; a closed pipe is `Ok`.
pub fn out(text: &[u8]) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => remember(r),
    }
}

/// Writes `text` to stderr.
pub fn err(text: &[u8]) -> std::io::Result<()> {
    let mut e = std::io::stderr().lock();
    remember(e.write_all(text).and_then(|()| e.flush()))
}

/// Log lines' writer: stderr, each failed write remembered.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        remember(std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        remember(std::io::stderr().flush())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}
