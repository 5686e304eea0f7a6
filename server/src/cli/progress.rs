//! Progress of a long subcommand (snapshot save and restore, migrate): a bar on stderr
//! while stderr is a terminal, nothing at all otherwise, so that logs, pipes and
//! service journals stay quiet. Owns only the drawing; the work reports how far it is.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws at most this often: a terminal needs no more.
const REDRAWS_PER_SECOND: u8 = 10;

/// One bar; clones draw the same bar.
#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar of bytes, `total_bytes` long (it may grow: `set_total`).
    pub fn bytes(what: &str, total_bytes: u64) -> Progress {
        Progress::with_style(
            what,
            total_bytes,
            "{msg}: {bar:30} {bytes}/{total_bytes} ({percent}%, {eta} left)",
        )
    }

    /// A bar of `total` items (keys).
    pub fn items(what: &str, total: u64) -> Progress {
        Progress::with_style(what, total, "{msg}: {bar:30} {pos}/{len} keys ({percent}%)")
    }

    /// A spinner for work whose length is unknown (a member's defragment).
    pub fn spinner(what: &str) -> Progress {
        let target = ProgressDrawTarget::stderr_with_hz(REDRAWS_PER_SECOND);
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Progress(bar)
    }

    /// Ends the bar with `message` in place of its own.
    pub fn finish_with(&self, message: String) {
        self.0.finish_with_message(message);
    }

    fn with_style(what: &str, total: u64, template: &str) -> Progress {
        let target = ProgressDrawTarget::stderr_with_hz(REDRAWS_PER_SECOND);
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(bar)
    }

    pub fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    pub fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }

    /// Leaves the finished bar on the terminal.
    pub fn finish(&self) {
        self.0.finish();
    }
}
