//! Per-subscriber rewriting of RTP sequence numbers and timestamps.
//!
//! A subscriber sees one continuous stream per sender no matter what happens upstream: the
//! server starts it at a keyframe (dropping what came before), the publisher may restart its
//! stream (new SSRC, new random sequence base), or later a different source may be switched in.
//! Each of those is a [`Rewriter::rebase`]: the next packet continues the output sequence right
//! after the last one sent, and its timestamp continues after the last sent timestamp plus the
//! wall-clock time that passed, so jitter buffers and lip sync stay valid (RFC 3550 §5.1).
//!
//! Between rebases the mapping is a fixed offset in modular arithmetic, so wraparound at 2^16
//! (sequence) and 2^32 (timestamp) needs no special case, and late or retransmitted packets map
//! to the same numbers they would have had. Packets older than the rebase point are dropped:
//! they would collide with numbers already used.

use std::time::Instant;

/// `a` is newer than `b` in RFC 1982 serial-number order over 16 bits.
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[derive(Debug, Clone)]
pub struct Rewriter {
    clock_rate: u32,
    seq_offset: u16,
    ts_offset: u32,
    /// Set until the first packet after a (re)base has arrived.
    rebase_pending: bool,
    /// First input sequence number after the last rebase; anything older is dropped.
    base_in_seq: u16,
    /// Highest output sequence number and timestamp sent, and when.
    last_out: Option<(u16, u32, Instant)>,
}

/// What to put in the forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u16,
    pub ts: u32,
}

impl Rewriter {
    /// `first_out_seq` lets a caller start at a random point (RFC 3550 §5.1 recommends it).
    pub fn new(clock_rate: u32, first_out_seq: u16, first_out_ts: u32) -> Self {
        Rewriter {
            clock_rate: clock_rate.max(1),
            seq_offset: 0,
            ts_offset: 0,
            rebase_pending: true,
            base_in_seq: 0,
            // None until the first packet: `with_start` parks the wanted first output values in
            // the offsets, and the first rebase turns them into real offsets.
            last_out: None,
        }
        .with_start(first_out_seq, first_out_ts)
    }

    fn with_start(mut self, seq: u16, ts: u32) -> Self {
        // Encode the desired first output as "the last one sent was one before it".
        self.seq_offset = seq.wrapping_sub(1);
        self.ts_offset = ts;
        self
    }

    /// The next packet starts a new mapping (keyframe restart, SSRC change, source switch).
    pub fn rebase(&mut self) {
        self.rebase_pending = true;
    }

    /// Maps an input packet, or `None` if it must be dropped (older than the rebase point).
    pub fn rewrite(&mut self, now: Instant, in_seq: u16, in_ts: u32) -> Option<Rewritten> {
        if self.rebase_pending {
            self.rebase_pending = false;
            self.base_in_seq = in_seq;
            match self.last_out {
                None => {
                    // First packet ever: seq_offset/ts_offset hold the desired start values.
                    let want_seq = self.seq_offset.wrapping_add(1);
                    let want_ts = self.ts_offset;
                    self.seq_offset = want_seq.wrapping_sub(in_seq);
                    self.ts_offset = want_ts.wrapping_sub(in_ts);
                }
                Some((last_seq, last_ts, at)) => {
                    let elapsed = now.saturating_duration_since(at);
                    let ticks = (elapsed.as_secs_f64() * self.clock_rate as f64) as u64;
                    // At least one tick so the new frame is not taken as part of the last one.
                    let ticks = ticks.clamp(1, u32::MAX as u64 / 2) as u32;
                    self.seq_offset = last_seq.wrapping_add(1).wrapping_sub(in_seq);
                    self.ts_offset = last_ts.wrapping_add(ticks).wrapping_sub(in_ts);
                }
            }
        } else if seq_newer(self.base_in_seq, in_seq) {
            return None;
        }
        let seq = in_seq.wrapping_add(self.seq_offset);
        let ts = in_ts.wrapping_add(self.ts_offset);
        match self.last_out {
            Some((last_seq, _, _)) if !seq_newer(seq, last_seq) => {}
            _ => self.last_out = Some((seq, ts, now)),
        }
        Some(Rewritten { seq, ts })
    }

    /// Numbers a padding packet (a probe, `super::pace`): the sequence number after the last one
    /// sent, with the last timestamp. Later packets move up by one; a late packet from before
    /// the padding would now collide, so it is dropped as if before a rebase. `None` before the
    /// first packet or while a rebase is pending (there is nothing to continue from).
    pub fn pad(&mut self) -> Option<Rewritten> {
        if self.rebase_pending {
            return None;
        }
        let (last_seq, last_ts, at) = self.last_out?;
        let seq = last_seq.wrapping_add(1);
        self.base_in_seq = last_seq.wrapping_sub(self.seq_offset).wrapping_add(1);
        self.seq_offset = self.seq_offset.wrapping_add(1);
        self.last_out = Some((seq, last_ts, at));
        Some(Rewritten { seq, ts: last_ts })
    }

    /// Input timestamp → output timestamp under the current mapping (for sender reports).
    pub fn map_ts(&self, in_ts: u32) -> u32 {
        in_ts.wrapping_add(self.ts_offset)
    }

    /// Whether any packet has been mapped yet.
    pub fn started(&self) -> bool {
        self.last_out.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn serial_order_across_wrap() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(100, 65000));
    }

    #[test]
    fn continuous_across_input_wraparound() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 1000, 5000);
        let mut out = vec![];
        for (i, s) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            let ts = 4_294_967_000u32.wrapping_add(3000 * i as u32);
            out.push(r.rewrite(t0, s, ts).unwrap());
        }
        let seqs: Vec<u16> = out.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [1000, 1001, 1002, 1003]);
        let tss: Vec<u32> = out.iter().map(|o| o.ts).collect();
        assert_eq!(tss, [5000, 8000, 11000, 14000]);
    }

    #[test]
    fn output_wraps_cleanly() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 65535, u32::MAX);
        assert_eq!(
            r.rewrite(t0, 10, 0).unwrap(),
            Rewritten {
                seq: 65535,
                ts: u32::MAX
            }
        );
        assert_eq!(
            r.rewrite(t0, 11, 960).unwrap(),
            Rewritten { seq: 0, ts: 959 }
        );
    }

    #[test]
    fn late_packets_keep_their_place_and_pre_rebase_ones_drop() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 0, 0);
        assert_eq!(r.rewrite(t0, 500, 0).unwrap().seq, 0);
        assert_eq!(r.rewrite(t0, 502, 0).unwrap().seq, 2);
        // 501 arrives late (reordered or retransmitted): same offset.
        assert_eq!(r.rewrite(t0, 501, 0).unwrap().seq, 1);
        // Older than the first packet we started from: would collide, dropped.
        assert_eq!(r.rewrite(t0, 499, 0), None);
    }

    #[test]
    fn rebase_continues_after_a_pause_with_elapsed_time() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 100, 1_000);
        assert_eq!(
            r.rewrite(t0, 7, 50).unwrap(),
            Rewritten {
                seq: 100,
                ts: 1_000
            }
        );
        assert_eq!(
            r.rewrite(t0, 8, 3050).unwrap(),
            Rewritten {
                seq: 101,
                ts: 4_000
            }
        );
        // The publisher restarts with an unrelated sequence and timestamp base, 2 s later.
        r.rebase();
        let t1 = t0 + Duration::from_secs(2);
        let o = r.rewrite(t1, 40_000, 123_456_789).unwrap();
        assert_eq!(o.seq, 102);
        assert_eq!(o.ts, 4_000 + 180_000);
        let o = r.rewrite(t1, 40_001, 123_456_789 + 3000).unwrap();
        assert_eq!(
            o,
            Rewritten {
                seq: 103,
                ts: 187_000
            }
        );
        // Stragglers from the old stream are dropped, not mapped onto used numbers.
        assert_eq!(r.rewrite(t1, 39_999, 0), None);
    }

    #[test]
    fn rebase_without_pause_still_advances_timestamp() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 0, 0);
        r.rewrite(t0, 1, 10).unwrap();
        r.rebase();
        let o = r.rewrite(t0, 9000, 10).unwrap();
        assert_eq!(o.seq, 1);
        assert_eq!(o.ts, 1);
    }

    #[test]
    fn padding_takes_the_next_number_and_shifts_what_follows() {
        let t = Instant::now();
        let mut r = Rewriter::new(90_000, 100, 5000);
        assert_eq!(r.pad(), None, "nothing to continue from yet");
        assert_eq!(r.rewrite(t, 10, 1).unwrap().seq, 100);
        assert_eq!(r.rewrite(t, 11, 1).unwrap().seq, 101);
        let p = r.pad().unwrap();
        assert_eq!(p.seq, 102);
        assert_eq!(p.ts, r.map_ts(1), "the last frame's timestamp");
        assert_eq!(r.rewrite(t, 12, 3000).unwrap().seq, 103);
        assert_eq!(
            r.rewrite(t, 11, 1),
            None,
            "a late packet from before the padding"
        );
        r.rebase();
        assert_eq!(r.pad(), None, "not while a rebase is pending");
    }
}
