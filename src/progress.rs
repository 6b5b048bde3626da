//! A one-line progress display on stderr, drawn only when stderr is a terminal and at most five times a
//! second, so pipes and CI logs stay clean.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress of one long task.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    last: Option<Instant>,
}

impl Progress {
    /// A display for a task of `total` units (bytes, events), if known; off unless `wanted` and stderr
    /// is a terminal.
    pub fn new(wanted: bool, label: &'static str, total: Option<u64>) -> Self {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            label,
            unit: "lines",
            total,
            last: None,
        }
    }

    /// Progress over files of an archive (`done` of `total`), with `items` read so far: a display made
    /// on the first call, when the total is known.
    pub fn files(
        bar: &mut Option<Progress>,
        label: &'static str,
        done: usize,
        total: usize,
        items: u64,
        elapsed: Duration,
    ) {
        bar.get_or_insert_with(|| Progress::new(true, label, Some(total as u64)).unit("events")).update(
            done as u64,
            items,
            elapsed,
        );
    }

    /// What the items are called (default "lines").
    pub fn unit(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    /// Redraws if enough time has passed: `done` of `total` units, `items` processed so far.
    pub fn update(&mut self, done: u64, items: u64, elapsed: Duration) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last = Some(Instant::now());
        let rate = items as f64 / elapsed.as_secs_f64().max(1e-9);
        let pct = match self.total {
            Some(t) if t > 0 => format!("{:5.1}% ", 100.0 * done as f64 / t as f64),
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}: {pct}{items} {}, {:.0}/s   ", self.label, self.unit, rate);
        let _ = err.flush();
    }

    /// Clears the line.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(std::io::stderr(), "\r{:60}\r", "");
        }
    }
}
