//! Loss from RTP sequence numbers, the way RFC 3550 (A.3) counts it: expected = highest extended
//! sequence number − first + 1, lost = expected − received. A retransmission that fills a gap
//! counts as received; a duplicate makes the figure smaller, never negative in reports.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqCounts {
    pub expected: u64,
    pub received: u64,
}

impl SeqCounts {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    pub fn since(&self, earlier: &SeqCounts) -> SeqCounts {
        SeqCounts {
            expected: self.expected.saturating_sub(earlier.expected),
            received: self.received.saturating_sub(earlier.received),
        }
    }

    pub fn add(&mut self, other: &SeqCounts) {
        self.expected += other.expected;
        self.received += other.received;
    }
}

#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    first: Option<u64>,
    highest: u64,
    received: u64,
}

impl SeqTracker {
    /// Records packet `seq`.
    pub fn push(&mut self, seq: u16) {
        self.received += 1;
        let Some(_) = self.first else {
            self.first = Some(seq as u64 + (1 << 16));
            self.highest = seq as u64 + (1 << 16);
            return;
        };
        // The extended number closest to the highest so far.
        let cycle = self.highest & !0xffff;
        let candidates = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)];
        let ext = candidates
            .iter()
            .map(|c| c + seq as u64)
            .min_by_key(|e| e.abs_diff(self.highest))
            .unwrap_or(self.highest);
        if ext > self.highest {
            self.highest = ext;
        }
        // A packet from before the first one (reordering at the start): move the start back.
        if let Some(first) = self.first {
            if ext < first {
                self.first = Some(ext);
            }
        }
    }

    pub fn counts(&self) -> SeqCounts {
        match self.first {
            Some(first) => SeqCounts {
                expected: self.highest - first + 1,
                received: self.received,
            },
            None => SeqCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u16]) -> SeqCounts {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.push(s);
        }
        t.counts()
    }

    #[test]
    fn cases() {
        for (seqs, expected, lost) in [
            (&[][..], 0, 0),
            (&[5][..], 1, 0),
            (&[5, 6, 7][..], 3, 0),
            (&[5, 7][..], 3, 1),
            (&[65534, 65535, 0, 1][..], 4, 0),
            (&[65534, 1][..], 4, 2),
            (&[10, 12, 11][..], 3, 0),
            (&[10, 9, 11][..], 3, 0),
            (&[10, 11, 11][..], 2, 0), // duplicate: received > expected, clamped
        ] {
            let c = run(seqs);
            assert_eq!((c.expected, c.lost()), (expected, lost), "{seqs:?}");
        }
    }

    #[test]
    fn long_runs_wrap_many_times() {
        let mut t = SeqTracker::default();
        let mut s = 40_000u16;
        for i in 0..300_000u32 {
            if i % 1000 != 999 {
                t.push(s);
            }
            s = s.wrapping_add(1);
        }
        let c = t.counts();
        assert_eq!(c.expected, 299_999); // the last packet was one of the dropped
        assert_eq!(c.lost(), 299);
    }
}
