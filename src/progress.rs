//! Progress of long byte work (a snapshot stream, a verify, a data-dir build, a download) as a
//! bar on stderr with bytes, rate and time left. Only when the CLI turned bars on (`enable`)
//! and stderr is a terminal: never in pipes, files, the journal or the daemon; `--quiet` turns
//! them off. Plain text, no colour.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Bars on for this process when stderr is a terminal and not `quiet`. The CLI calls this
/// once; `etcdguard run` does not, so the daemon never draws.
pub fn enable(quiet: bool) {
    ENABLED.store(!quiet && std::io::stderr().is_terminal(), Ordering::Relaxed);
}

/// A bar, or nothing when bars are off. Cheap to clone and to update from any thread.
#[derive(Clone, Debug, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `what` over `total` bytes when known (then with a time left), else bytes and
    /// rate only.
    pub fn bytes(what: &str, total: Option<u64>) -> Progress {
        if !ENABLED.load(Ordering::Relaxed) {
            return Progress(None);
        }
        let template = if total.is_some() {
            "{msg:9} [{bar:25}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} left"
        } else {
            "{msg:9} {bytes} {binary_bytes_per_sec} {elapsed}"
        };
        let style = ProgressStyle::with_template(template)
            .expect("progress template")
            .progress_chars("=> ");
        // A bar dropped unfinished (the work failed) is cleared, so the error that follows
        // starts on a clean line.
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(what.to_string())
            .with_finish(ProgressFinish::AndClear);
        Progress(Some(bar))
    }

    pub fn inc(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }

    /// Leaves the bar's last state on its own line.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
            // A bar is drawn only on a terminal; a failed newline is remembered like any.
            let _ = crate::stdio::err(b"\n");
        }
    }
}
