//! Latency samples, their summary (p50, p99, max, mean), and the plain-text
//! table a benchmark run prints.

use std::fmt::Write as _;
use std::time::Duration;

/// The latencies of one kind of operation, in the order they were measured.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Appends another run's samples (e.g. the baseline measured before and
    /// after the server, so that drift over the run hits both sides).
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        let n = sorted.len();
        Summary {
            p50: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or_default(),
            mean: if n == 0 {
                Duration::ZERO
            } else {
                total / n as u32
            },
        }
    }
}

/// Nearest-rank percentile of an ascending slice: the smallest sample such
/// that at least `p` percent of the samples are less than or equal to it. It
/// is always a real measured value, never an interpolation.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: Duration,
    /// Not a column of the table; a section that wants it prints a line.
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One section of the printed report: a title, then rows of numbers and
/// free lines (verdicts, notes) in the order they were added.
#[derive(Debug)]
pub struct Section {
    pub title: String,
    items: Vec<Item>,
}

#[derive(Debug)]
enum Item {
    Row(String, [String; 4]),
    Line(String),
}

impl Section {
    pub fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            items: Vec::new(),
        }
    }

    /// A row of latencies in milliseconds.
    pub fn timing(&mut self, label: impl Into<String>, s: &Summary) {
        let cell = |d: Duration| format!("{:.2}", ms(d));
        self.items.push(Item::Row(
            label.into(),
            [cell(s.p50), cell(s.p99), cell(s.max), cell(s.mean)],
        ));
    }

    /// A row of `measured / baseline` for each column.
    pub fn ratio(&mut self, label: impl Into<String>, measured: &Summary, baseline: &Summary) {
        let cell = |a: Duration, b: Duration| format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64());
        self.items.push(Item::Row(
            label.into(),
            [
                cell(measured.p50, baseline.p50),
                cell(measured.p99, baseline.p99),
                cell(measured.max, baseline.max),
                cell(measured.mean, baseline.mean),
            ],
        ));
    }

    pub fn line(&mut self, text: impl Into<String>) {
        self.items.push(Item::Line(text.into()));
    }

    fn render(&self, out: &mut String) {
        const HEADS: [&str; 4] = ["p50 (ms)", "p99 (ms)", "max (ms)", "mean (ms)"];
        // `{:width$}` pads by chars, and labels hold arrows, so every width
        // is counted in chars and padded by hand.
        let label_width = self
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Row(label, _) => Some(label.chars().count()),
                Item::Line(_) => None,
            })
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "{}", self.title);
        if label_width > 0 {
            let _ = write!(out, "  {:label_width$}", "");
            for h in HEADS {
                let _ = write!(out, "  {h:>10}");
            }
            out.push('\n');
        }
        for item in &self.items {
            match item {
                Item::Row(label, cells) => {
                    let pad = label_width - label.chars().count();
                    let _ = write!(out, "  {label}{:pad$}", "");
                    for c in cells {
                        let _ = write!(out, "  {c:>10}");
                    }
                    out.push('\n');
                }
                Item::Line(text) if text.is_empty() => out.push('\n'),
                Item::Line(text) => {
                    let _ = writeln!(out, "  {text}");
                }
            }
        }
    }
}

/// The whole printed table: one header line, then the sections.
pub fn render(header: &str, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    for s in sections {
        out.push('\n');
        s.render(&mut out);
    }
    out
}

/// `PASS` or `FAIL`, for the target lines.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples_ms: &[u64], p: f64, expect: u64) {
        let sorted: Vec<Duration> = samples_ms
            .iter()
            .map(|&m| Duration::from_millis(m))
            .collect();
        assert_eq!(
            percentile(&sorted, p),
            Duration::from_millis(expect),
            "p{p} of {samples_ms:?}"
        );
    }

    #[test]
    fn nearest_rank() {
        check(&[7], 50.0, 7);
        check(&[7], 99.0, 7);
        check(&[1, 2], 50.0, 1);
        check(&[1, 2, 3, 4], 50.0, 2);
        check(&(1..=100).collect::<Vec<_>>(), 99.0, 99);
        check(&(1..=200).collect::<Vec<_>>(), 99.0, 198);
        check(&(1..=200).collect::<Vec<_>>(), 50.0, 100);
        check(&[], 50.0, 0);
    }
}
