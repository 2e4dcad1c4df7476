//! Progress bars on stderr for the CLI's long transfers (`ws export`,
//! `snap export`, `org import`). Drawn only when stderr is a terminal;
//! otherwise nothing is drawn and the command prints its one plain line.
//!
//! Hand-written rather than `indicatif`: one line redrawn with `\r` is all
//! we need, indicatif would add its `console` stack to a two-core build,
//! and the rendering here is a pure function a unit test pins.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The bar's width between its brackets.
const WIDTH: u128 = 24;
/// The least time between two redraws.
const REDRAW: Duration = Duration::from_millis(100);

/// The bar for `done` of `total`: `[######------------------]  25%`.
/// Clamped at 100 % (an estimated total can fall short of what arrives);
/// a total of 0 reads as complete.
pub fn bar(done: u64, total: u64) -> String {
    let (done, total) = (u128::from(done), u128::from(total));
    let (filled, percent) = match (done * WIDTH).checked_div(total) {
        Some(filled) => (filled.min(WIDTH), (done * 100 / total).min(100)),
        None => (WIDTH, 100),
    };
    let filled = usize::try_from(filled).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0) - filled;
    format!(
        "[{}{}] {percent:>3}%",
        "#".repeat(filled),
        "-".repeat(empty)
    )
}

/// What the bar measures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// Not known: only the count is shown.
    Unknown,
    /// Exactly this many bytes.
    Exact(u64),
    /// About this many: the data's size, while a compressed archive comes.
    Estimate(u64),
}

/// The whole line: `verb`, the bar and the figures, e.g.
/// `exporting [############------------]  50% 1.0 MB of ~2.0 MB (estimate)`:
/// short enough for an 80-column terminal, where a wrapped line would not
/// be redrawn in place.
pub fn line(verb: &str, done: u64, total: Total) -> String {
    match total {
        Total::Unknown => format!("{verb} {}", bytes(done)),
        Total::Exact(t) => format!("{verb} {} {} of {}", bar(done, t), bytes(done), bytes(t)),
        Total::Estimate(t) => format!(
            "{verb} {} {} of ~{} (estimate)",
            bar(done, t),
            bytes(done),
            bytes(t)
        ),
    }
}

/// Bytes for people, in decimal units: `999 B`, `12.3 KB`, `4.0 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress line on stderr, redrawn at most every 100 ms while a
/// transfer runs, and cleared at the end. Draws nothing unless stderr is a
/// terminal.
pub struct Progress {
    verb: &'static str,
    total: Total,
    done: u64,
    tty: bool,
    drawn: Option<Instant>,
}

impl Progress {
    pub fn new(verb: &'static str, total: Total) -> Self {
        Progress {
            verb,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            drawn: None,
        }
    }

    /// Whether a bar is drawn at all (stderr is a terminal).
    pub fn drawn(&self) -> bool {
        self.tty
    }

    /// The bytes done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Counts `n` more bytes done, redrawing when it is time.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if self.tty && self.drawn.is_none_or(|at| at.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    /// Draws the line as it stands now.
    pub fn draw(&mut self) {
        if self.tty {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K{}", line(self.verb, self.done, self.total));
            let _ = err.flush();
            self.drawn = Some(Instant::now());
        }
    }

    /// Clears the line, for the final message.
    pub fn finish(&self) {
        if self.tty && self.drawn.is_some() {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_share_done() {
        assert_eq!(bar(0, 100), "[------------------------]   0%");
        assert_eq!(bar(25, 100), "[######------------------]  25%");
        assert_eq!(bar(50, 100), "[############------------]  50%");
        assert_eq!(bar(99, 100), "[#######################-]  99%");
        assert_eq!(bar(100, 100), "[########################] 100%");
    }

    #[test]
    fn the_bar_clamps_at_full_when_an_estimate_falls_short() {
        assert_eq!(bar(250, 100), "[########################] 100%");
        assert_eq!(bar(u64::MAX, 1), "[########################] 100%");
        assert_eq!(bar(7, 0), "[########################] 100%");
    }

    #[test]
    fn the_line_says_when_the_total_is_an_estimate() {
        assert_eq!(
            line("exporting", 1_000_000, Total::Estimate(2_000_000)),
            "exporting [############------------]  50% 1.0 MB of ~2.0 MB (estimate)"
        );
        assert_eq!(
            line("uploading", 512, Total::Exact(2048)),
            "uploading [######------------------]  25% 512 B of 2.0 KB"
        );
        assert_eq!(
            line("exporting", 12_345, Total::Unknown),
            "exporting 12.3 KB"
        );
    }
}
