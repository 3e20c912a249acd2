//! What happened in a simulation, line by line.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::time::Instant;

/// What happened, line by line, at simulated milliseconds since the start.
pub struct Trace {
    start: Instant,
    lines: VecDeque<String>,
    cap: usize,
    omitted: usize,
    /// Off: nothing is recorded (the fuzz targets run millions of steps).
    pub enabled: bool,
}

impl Trace {
    pub(super) fn new(start: Instant) -> Self {
        Trace {
            start,
            lines: VecDeque::new(),
            cap: 200_000,
            omitted: 0,
            enabled: true,
        }
    }

    /// Adds a line at `now`; `who` is the party it concerns.
    pub fn log(&mut self, now: Instant, who: &str, what: fmt::Arguments<'_>) {
        if !self.enabled {
            return;
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
            self.omitted += 1;
        }
        let ms = now.saturating_duration_since(self.start).as_secs_f64() * 1000.0;
        self.lines
            .push_back(format!("{ms:>10.3} ms  {who:<12} {what}"));
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// The last `n` lines, with a note of how many came before.
    pub fn tail(&self, n: usize) -> String {
        let skip = self.lines.len().saturating_sub(n);
        let mut s = String::new();
        if skip + self.omitted > 0 {
            let _ = writeln!(s, "... {} earlier lines", skip + self.omitted);
        }
        for l in self.lines.iter().skip(skip) {
            let _ = writeln!(s, "{l}");
        }
        s
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tail(usize::MAX))
    }
}
