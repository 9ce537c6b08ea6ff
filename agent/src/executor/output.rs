//! The cap on what one job's tasks print on one agent: lines and bytes per second (a token
//! bucket each, with a burst of two seconds' worth). What is over is dropped, and the driver is
//! told how much, at most once a second.

use ladle_common::limits::{OUTPUT_BYTES_PER_SECOND, OUTPUT_LINES_PER_SECOND};
use tokio::time::{Duration, Instant};

const BURST_SECONDS: f64 = 2.0;

pub struct Cap {
    lines: f64,
    bytes: f64,
    refilled: Option<Instant>,
    dropped_lines: u64,
    dropped_bytes: u64,
    noted: Option<Instant>,
}

impl Default for Cap {
    fn default() -> Self {
        Self {
            lines: f64::from(OUTPUT_LINES_PER_SECOND) * BURST_SECONDS,
            bytes: f64::from(OUTPUT_BYTES_PER_SECOND) * BURST_SECONDS,
            refilled: None,
            dropped_lines: 0,
            dropped_bytes: 0,
            noted: None,
        }
    }
}

impl Cap {
    /// Whether a line of `len` bytes may be sent now; counts it as dropped otherwise.
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        if let Some(last) = self.refilled {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.lines = (self.lines + secs * f64::from(OUTPUT_LINES_PER_SECOND))
                .min(f64::from(OUTPUT_LINES_PER_SECOND) * BURST_SECONDS);
            self.bytes = (self.bytes + secs * f64::from(OUTPUT_BYTES_PER_SECOND))
                .min(f64::from(OUTPUT_BYTES_PER_SECOND) * BURST_SECONDS);
        }
        self.refilled = Some(now);
        let len = len as f64;
        if self.lines >= 1.0 && self.bytes >= len {
            self.lines -= 1.0;
            self.bytes -= len;
            true
        } else {
            self.dropped_lines += 1;
            self.dropped_bytes += len as u64;
            false
        }
    }

    /// When a note of dropped output is due (none while nothing was dropped).
    pub fn note_due(&self) -> Option<Instant> {
        (self.dropped_lines > 0).then(|| {
            self.noted
                .map_or_else(Instant::now, |at| at + Duration::from_secs(1))
        })
    }

    /// A line telling the driver what was dropped since the last such line, at most once a
    /// second.
    pub fn note(&mut self, now: Instant) -> Option<String> {
        if self.dropped_lines == 0
            || self
                .noted
                .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return None;
        }
        self.noted = Some(now);
        let note = format!(
            "[ladle: {} lines ({} bytes) of this job's output dropped here: more than {} lines \
             or {} bytes a second]",
            self.dropped_lines,
            self.dropped_bytes,
            OUTPUT_LINES_PER_SECOND,
            OUTPUT_BYTES_PER_SECOND
        );
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
        Some(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_rate_and_the_drop_is_noted_once_a_second() {
        let start = Instant::now();
        let mut cap = Cap::default();
        let burst = (f64::from(OUTPUT_LINES_PER_SECOND) * BURST_SECONDS) as usize;
        let admitted = (0..burst * 3).filter(|_| cap.admit(10, start)).count();
        assert_eq!(admitted, burst);
        let note = cap.note(start).expect("a note of the drop");
        assert!(note.contains(&format!("{} lines", burst * 2)), "{note}");
        assert!(!cap.admit(10, start));
        assert!(cap.note(start).is_none(), "one note a second at most");
        // A second later, a second's worth is let through again.
        let later = start + Duration::from_secs(1);
        let admitted = (0..burst).filter(|_| cap.admit(10, later)).count();
        assert_eq!(admitted, OUTPUT_LINES_PER_SECOND as usize);
        assert!(cap.note(later).is_some());
        // Bytes are capped too: one line larger than the byte burst never passes.
        let mut cap = Cap::default();
        assert!(!cap.admit(OUTPUT_BYTES_PER_SECOND as usize * 3, start));
    }
}
