//! Pacing a subscriber's video to its bandwidth estimate, and probing above it.
//!
//! **Pacing.** A keyframe is tens of packets produced at once; written into a subscriber's
//! connection at once, they arrive at its bottleneck as one burst, overflow a short queue, and
//! the subscriber loses the very packets it needs most. Each subscribe connection therefore has
//! a token bucket at [`PACING_FACTOR`] × the estimate: video leaves while the bucket has tokens
//! and waits in order when it has none, until the connection's timer releases it. Audio is never
//! held (it is small and late audio is lost audio); it spends tokens all the same, so video
//! makes room for it. `rtc`'s own pacer is not used because it holds every packet until the
//! next `handle_timeout` of the whole connection; here the common case (the bucket has tokens)
//! costs a subtraction and only the excess waits.
//!
//! **Probing.** To learn whether a larger layer would fit without sending it, the engine asks
//! for a probe: for a moment, padding tops what the connection sends up to a probe rate above
//! the estimate. If it arrives without the queue growing, the estimator (`super::bwe`) raises
//! the estimate to it; if not, the estimate falls back and the allocator changed nothing. The
//! padding is RTP the subscriber's decoder never sees: empty payloads, on the sequence numbers
//! of a video it receives, between frames (see `Rewriter::pad`). Their size is carried in a
//! header extension the receiver ignores (a two-byte-form extension under an id nobody
//! negotiated, RFC 8285), because `rtc` writes at most four bytes of RTP padding.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::api::Ssrc;

/// Video is released at this multiple of the estimate: fast enough that the pacer is not the
/// bottleneck (the allocator keeps the average under the estimate), slow enough that a
/// keyframe reaches a short bottleneck queue spread out.
pub const PACING_FACTOR: f64 = 2.0;
/// The bucket holds this much time's worth of tokens, but never less than two packets.
const BURST: Duration = Duration::from_millis(20);
const MIN_BURST_BITS: f64 = 2.0 * 1200.0 * 8.0;
/// Packets that would be held beyond this are dropped (only a connection far over its estimate
/// gets here): the subscriber asks for what it misses, and for a keyframe when that fails.
pub const QUEUE_LIMIT: usize = 2048;
/// Bytes a forwarded packet takes beyond its payload: RTP header (12), the transport-wide
/// sequence number extension (8 with its header), SRTP tag (16). What the estimate counts
/// (TWCC reports the RTP packet's size), so pacing and the allocator's layer rates count it too.
pub const WIRE_OVERHEAD: usize = 36;
/// Bytes of padding per probe packet.
pub const PROBE_PACKET_BYTES: usize = 1000;

/// A video packet waiting for the bucket.
pub struct Paced {
    pub ssrc: Ssrc,
    pub pt: u8,
    /// It carries a transport-wide number whatever the density (`super::twcc`).
    pub number: bool,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub payload: Bytes,
}

impl Paced {
    pub fn bits(&self) -> f64 {
        Self::bits_of(self.payload.len())
    }

    /// The size on the wire of a packet with `payload` bytes.
    pub fn bits_of(payload: usize) -> f64 {
        ((payload + WIRE_OVERHEAD) * 8) as f64
    }
}

/// A probe in progress: padding tops the sending rate up to `rate` until `until`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    rate: f64,
    until: Instant,
    /// Bits the probe may still send (refilled at `rate`, spent by everything sent).
    credit: f64,
}

/// One subscribe connection's pacer; see the module comment.
pub struct Pacer {
    rate: f64,
    budget: f64,
    last: Option<Instant>,
    pub queue: VecDeque<Paced>,
    probe: Option<Probe>,
    /// Packets dropped because the queue was full, since [`take_dropped`](Self::take_dropped).
    dropped: u64,
}

impl Pacer {
    pub fn new(estimate: f64) -> Pacer {
        let rate = estimate * PACING_FACTOR;
        Pacer {
            rate,
            budget: Self::burst(rate),
            last: None,
            queue: VecDeque::new(),
            probe: None,
            dropped: 0,
        }
    }

    fn burst(rate: f64) -> f64 {
        (rate * BURST.as_secs_f64()).max(MIN_BURST_BITS)
    }

    /// Follows the estimate.
    pub fn set_estimate(&mut self, estimate: f64) {
        self.rate = estimate * PACING_FACTOR;
        self.budget = self.budget.min(Self::burst(self.rate));
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.budget = (self.budget + dt * self.rate).min(Self::burst(self.rate));
            if let Some(p) = self.probe.as_mut() {
                p.credit = (p.credit + dt * p.rate).min(Self::burst(p.rate));
            }
        }
        self.last = Some(now);
    }

    fn spend(&mut self, bits: f64) {
        self.budget -= bits;
        if let Some(p) = self.probe.as_mut() {
            p.credit -= bits;
        }
    }

    /// Whether a packet of `bits` may leave now: audio always, video when nothing waits ahead
    /// of it and the bucket has tokens. A packet that may not must be [`hold`](Self::hold)ed.
    pub fn admit(&mut self, now: Instant, bits: f64, audio: bool) -> bool {
        self.refill(now);
        if audio || (self.queue.is_empty() && self.budget >= 0.0) {
            self.spend(bits);
            true
        } else {
            false
        }
    }

    /// Queues a video packet that may not leave yet; false if the queue is full (dropped).
    pub fn hold(&mut self, p: Paced) -> bool {
        if self.queue.len() >= QUEUE_LIMIT {
            self.dropped += 1;
            return false;
        }
        self.queue.push_back(p);
        true
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Takes the next queued packet the bucket lets out now.
    pub fn release(&mut self, now: Instant) -> Option<Paced> {
        self.refill(now);
        if self.budget < 0.0 {
            return None;
        }
        let p = self.queue.pop_front()?;
        self.spend(p.bits());
        Some(p)
    }

    /// Starts a probe: the connection sends at `rate` (media and padding together) for
    /// `length`.
    pub fn probe(&mut self, now: Instant, rate: f64, length: Duration) {
        self.refill(now);
        self.probe = Some(Probe {
            rate,
            until: now + length,
            credit: 0.0,
        });
    }

    pub fn probing(&self, now: Instant) -> bool {
        self.probe.is_some_and(|p| now < p.until)
    }

    /// Whether a padding packet is due now (its cost is spent from the probe's credit).
    pub fn padding_due(&mut self, now: Instant) -> bool {
        self.refill(now);
        let Some(p) = self.probe.as_mut() else {
            return false;
        };
        if now >= p.until {
            self.probe = None;
            return false;
        }
        let bits = (PROBE_PACKET_BYTES * 8) as f64;
        if p.credit >= bits {
            p.credit -= bits;
            true
        } else {
            false
        }
    }

    /// When the pacer next has something to release: the queue's head, or the probe's next
    /// padding packet.
    pub fn next_wake(&self) -> Option<Instant> {
        let last = self.last?;
        let queue = (!self.queue.is_empty()).then(|| {
            let wait = if self.budget >= 0.0 || self.rate <= 0.0 {
                0.0
            } else {
                -self.budget / self.rate
            };
            last + Duration::from_secs_f64(wait.min(1.0))
        });
        let probe = self.probe.map(|p| {
            let bits = (PROBE_PACKET_BYTES * 8) as f64;
            let wait = ((bits - p.credit) / p.rate.max(1.0)).clamp(0.0, 1.0);
            (last + Duration::from_secs_f64(wait)).min(p.until)
        });
        queue.into_iter().chain(probe).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Paced {
        Paced {
            ssrc: Ssrc(1),
            pt: 96,
            number: false,
            marker: false,
            seq: 0,
            ts: 0,
            payload: Bytes::from(vec![0u8; len]),
        }
    }

    /// A 60-packet keyframe into a 500 kbit/s estimate leaves at the pacing rate, not at once.
    #[test]
    fn a_keyframe_leaves_at_the_pacing_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(500_000.0);
        let mut sent_at = Vec::new();
        for _ in 0..60 {
            let p = packet(1100);
            if pacer.admit(t0, p.bits(), false) {
                sent_at.push(t0);
            } else {
                assert!(pacer.hold(p));
            }
        }
        assert!(sent_at.len() <= 3, "only a burst leaves at once");
        let mut now = t0;
        while let Some(wake) = pacer.next_wake() {
            assert!(wake >= now, "the wake-up never goes back in time");
            now = wake;
            while pacer.release(now).is_some() {
                sent_at.push(now);
            }
        }
        assert_eq!(sent_at.len(), 60);
        let took = sent_at.last().unwrap().duration_since(t0).as_secs_f64();
        let bits = 60.0 * packet(1100).bits();
        let expected = bits / (500_000.0 * PACING_FACTOR);
        assert!(
            took >= expected * 0.8 && took <= expected * 1.2,
            "{took} s for {expected} s of data"
        );
    }

    #[test]
    fn audio_is_never_held_but_spends_tokens() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(200_000.0);
        while pacer.admit(t0, 9600.0, false) {}
        assert!(pacer.admit(t0, 1000.0, true), "audio goes");
        assert!(!pacer.admit(t0, 9600.0, false), "video waits");
    }

    #[test]
    fn video_keeps_its_order_behind_held_packets() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(200_000.0);
        while pacer.admit(t0, 9600.0, false) {}
        assert!(pacer.hold(packet(100)));
        let later = t0 + Duration::from_secs(1);
        assert!(
            !pacer.admit(later, 800.0, false),
            "a new packet may not overtake one that waits"
        );
    }

    #[test]
    fn a_probe_pads_up_to_its_rate_and_ends() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(500_000.0);
        pacer.probe(t0, 1_000_000.0, Duration::from_millis(500));
        let mut padded = 0usize;
        let mut now = t0;
        while let Some(wake) = pacer.next_wake() {
            now = wake;
            while pacer.padding_due(now) {
                padded += PROBE_PACKET_BYTES * 8;
            }
            if !pacer.probing(now) && pacer.next_wake().is_none_or(|w| w > now) {
                break;
            }
        }
        assert!(now <= t0 + Duration::from_millis(520));
        let rate = padded as f64 / 0.5;
        assert!(
            (800_000.0..=1_100_000.0).contains(&rate),
            "padding at {rate} bit/s"
        );
    }
}
