//! Send-side bandwidth estimation, one estimator per subscribe connection: how many bits per
//! second the path from the server to that subscriber carries now, from the subscriber's
//! transport-wide congestion control feedback (TWCC) and its losses.
//!
//! The engine numbers every packet that leaves transport-wide and joins the subscriber's
//! feedback to what it sent (`super::twcc`), and hands this estimator one [`PacketReport`] per
//! packet (departure, arrival, size, lost or not). The delay analysis is `rtc`'s: its arrival grouping, Kalman slope and adaptive
//! overuse threshold ([`SlopeEstimator`], [`OveruseDetector`]) say whether the path's queue is
//! growing. What is written here is the rate control around them, because `rtc`'s own
//! (`Gcc`'s `RateController`) does not fit an SFU:
//!
//! - **It forgets nothing.** After one backoff it approaches the rate of that backoff additively,
//!   one packet per 200 ms, for the life of the connection. A subscriber squeezed to 400 kbit/s
//!   once would take half a minute to climb back to two 720p pictures; the issue asks for 15 s.
//!   Here the climb is multiplicative, and a probe (below) can jump it.
//! - **It climbs without evidence.** Its target grows by 8 %/s while nothing is congested, even
//!   when the server sends a tenth of it (a subscriber watching thumbnails), and an allocator
//!   trusting that number would switch to a layer the path has never carried. Here the target
//!   grows only while it is under 1.5 × what arrives (plus a little), as libwebrtc's does.
//! - **Probes.** To find out whether a bigger layer fits without sending it (a keyframe of the
//!   wrong size into a full link freezes the picture), the engine sends padding above the
//!   estimate for a moment (`pace`). A rate that arrived without the queue growing is a rate
//!   the path carries: the target rises to it at once.
//!
//! The estimator belongs to the engine's side of the connection; what it decides is also
//! published in [`Estimate`], a few atomics that the connection's retransmission budget reads
//! inside `rtc`'s chain (`super::rtx_budget`; no lock: one writer, one reader, both on the media
//! thread; atomics only because the chain requires `Send + Sync`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use rtc::interceptor::{
    BandwidthEstimator, EstimatorStats, OveruseDetector, PacketReport, SlopeEstimator, Usage,
};

/// Where a subscriber's estimate starts: enough for one 720p picture and audio, so a newcomer
/// sees the speaker sharply at once, while a weak link finds out within a few hundred
/// milliseconds and backs off from what actually arrives.
pub const INITIAL_BPS: f64 = 1_500_000.0;
/// Never below this: audio and one small picture. A path that carries less gets that much
/// anyway (pausing the last picture for a moment's lower estimate cost more: on a loaded
/// machine, a false overuse signal took a 250 kbit/s subscriber to 150 and starved it).
pub const MIN_BPS: f64 = 200_000.0;
/// Never above this: nobody's tiles need more.
pub const MAX_BPS: f64 = 25_000_000.0;

/// Back off to this fraction of what arrives when the queue grows (GCC's β).
const DECREASE: f64 = 0.85;
/// Multiplicative climb per second while nothing is congested.
const INCREASE_PER_SECOND: f64 = 1.08;
/// The climb is checked at most this often, so each step is seen before the next.
const INTERVAL: Duration = Duration::from_millis(200);
/// The target may grow while it is under this multiple of what arrives, plus [`SLACK_BPS`].
const HEADROOM: f64 = 1.5;
const SLACK_BPS: f64 = 50_000.0;
/// Loss above this fraction (smoothed) cuts the target; between [`LOW_LOSS`] and it, the
/// target holds: a few per cent is normal on Wi-Fi, and reacting would give up capacity.
const HIGH_LOSS: f64 = 0.10;
const LOW_LOSS: f64 = 0.02;

/// The window over which what arrived is measured, on the receiver's clock.
const DELIVERED_WINDOW: Duration = Duration::from_millis(500);

/// What the path delivered lately: the bytes of the packets that arrived, over the span of
/// their arrival times on the receiver's clock. Measured by arrival, not by when feedback came
/// back: a report that brings a queued backlog at once would otherwise read as a rate the path
/// never carried, and a probe into a full link would look like it got through.
#[derive(Debug, Default)]
struct Delivered {
    arrivals: VecDeque<(Duration, usize)>,
    bytes: usize,
}

impl Delivered {
    fn add(&mut self, arrival: Duration, size: usize) {
        // Feedback is in send order; arrivals may step back a little (reordering), which only
        // shortens the span a little.
        self.arrivals.push_back((arrival, size));
        self.bytes += size;
        while let Some(&(at, size)) = self.arrivals.front() {
            if arrival.saturating_sub(at) <= DELIVERED_WINDOW {
                break;
            }
            self.arrivals.pop_front();
            self.bytes -= size;
        }
    }

    /// Bits per second, once the window spans enough time to say.
    fn rate(&self) -> Option<f64> {
        let first = self.arrivals.front()?.0;
        let last = self.arrivals.back()?.0;
        let span = last.saturating_sub(first);
        if span < Duration::from_millis(200) || self.arrivals.len() < 5 {
            return None;
        }
        // The first packet's bytes arrived before the span began.
        let bytes = self.bytes - self.arrivals.front().map_or(0, |a| a.1);
        Some(bytes as f64 * 8.0 / span.as_secs_f64())
    }
}

/// What the estimator tells the engine. Written by the estimator inside `rtc`'s chain, read by
/// the engine between packets.
#[derive(Debug, Default)]
pub struct Estimate {
    bps: AtomicU64,
    /// Smoothed loss, in thousandths.
    loss_permille: AtomicU32,
    /// Counts backoffs, so the engine can tell that one happened since it last looked.
    decreases: AtomicU32,
    /// Counts reports, so the engine can tell an estimate with no feedback behind it.
    reports: AtomicU32,
    /// Packets the subscriber asked to be resent that its budget had no room for
    /// (`super::rtx_budget`), since the engine last took the count.
    refused: AtomicU64,
}

impl Estimate {
    pub fn bps(&self) -> f64 {
        self.bps.load(Relaxed) as f64
    }

    pub fn loss(&self) -> f64 {
        self.loss_permille.load(Relaxed) as f64 / 1000.0
    }

    pub fn decreases(&self) -> u32 {
        self.decreases.load(Relaxed)
    }

    pub fn reports(&self) -> u32 {
        self.reports.load(Relaxed)
    }

    pub fn refused_resends(&self, n: u64) {
        self.refused.fetch_add(n, Relaxed);
    }

    pub fn take_refused_resends(&self) -> u64 {
        self.refused.swap(0, Relaxed)
    }
}

/// The estimator `rtc`'s congestion-control interceptor drives; see the module comment.
pub struct Bwe {
    slope: SlopeEstimator,
    detector: OveruseDetector,
    received: Delivered,
    usage: Usage,
    target: f64,
    loss: Option<f64>,
    last_change: Option<Instant>,
    last_loss_cut: Option<Instant>,
    /// Whether the last step was a backoff: then hold once before climbing again.
    just_decreased: bool,
    out: Arc<Estimate>,
}

impl Bwe {
    pub fn new() -> (Bwe, Arc<Estimate>) {
        let out = Arc::new(Estimate::default());
        out.bps.store(INITIAL_BPS as u64, Relaxed);
        let bwe = Bwe {
            slope: SlopeEstimator::new(),
            detector: OveruseDetector::new(),
            received: Delivered::default(),
            usage: Usage::Normal,
            target: INITIAL_BPS,
            loss: None,
            last_change: None,
            last_loss_cut: None,
            just_decreased: false,
            out: out.clone(),
        };
        (bwe, out)
    }

    fn decrease_to(&mut self, now: Instant, bps: f64) {
        // Counted only when the target really falls: at the floor, an overuse signal from a
        // trickle of audio is no news, and the engine must not hold its probes back for it.
        let bps = bps.max(MIN_BPS);
        if bps < self.target {
            self.target = bps;
            self.out.decreases.fetch_add(1, Relaxed);
        }
        self.just_decreased = true;
        self.last_change = Some(now);
    }

    /// No feedback came for a second on what was sent: the path may be losing everything the
    /// subscriber would report on. Halve, as libwebrtc does (it is how a link that went dead or
    /// tiny is noticed when nothing gets through to say so).
    pub fn feedback_timeout(&mut self, now: Instant) {
        self.decrease_to(now, self.target * 0.5);
        self.out.bps.store(self.target as u64, Relaxed);
    }

    /// One step of the rate control, after a batch of feedback.
    fn control(&mut self, now: Instant, received: Option<f64>) {
        let loss = self.loss.unwrap_or(0.0);
        if loss > HIGH_LOSS
            && self
                .last_loss_cut
                .is_none_or(|t| now.saturating_duration_since(t) >= INTERVAL)
        {
            // Loss without a growing queue (a shallow buffer, a lossy radio): cut by half the
            // loss, as GCC's loss-based half does.
            // Never below half of what arrives: what arrives, the path carries.
            self.last_loss_cut = Some(now);
            let floor = received.map_or(0.0, |r| 0.5 * r);
            self.decrease_to(now, (self.target * (1.0 - 0.5 * loss)).max(floor));
            return;
        }
        match self.usage {
            Usage::Over => {
                // Back off from what the path delivers, not from what was aimed at.
                if let Some(r) = received {
                    self.decrease_to(now, r * DECREASE);
                }
            }
            Usage::Under => {
                // The queue is draining: wait for it before climbing.
                self.last_change = Some(now);
            }
            Usage::Normal => {
                if self.just_decreased {
                    self.just_decreased = false;
                    self.last_change = Some(now);
                    return;
                }
                let Some(r) = received else {
                    return;
                };
                if loss > LOW_LOSS {
                    return;
                }
                if r > self.target {
                    // More arrived than the target, with no queue growing: a probe, or media
                    // above the estimate, got through. The path carries at least that.
                    self.target = r;
                    self.last_change = Some(now);
                    return;
                }
                let elapsed = self
                    .last_change
                    .map_or(INTERVAL, |t| now.saturating_duration_since(t));
                if elapsed < INTERVAL {
                    return;
                }
                self.last_change = Some(now);
                if self.target < HEADROOM * r + SLACK_BPS {
                    let grown =
                        self.target * INCREASE_PER_SECOND.powf(elapsed.as_secs_f64().min(1.0));
                    self.target = grown.min(HEADROOM * r + SLACK_BPS).max(self.target);
                }
            }
        }
    }
}

impl BandwidthEstimator for Bwe {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        for report in reports {
            if let (true, Some(at)) = (report.arrived, report.arrival) {
                self.received.add(at, report.size);
            }
            if let Some(trend) = self.slope.accumulate(report) {
                self.usage = self.detector.update(trend.at, trend.estimate_ms);
            }
        }
        let lost = reports.iter().filter(|r| !r.arrived).count() as f64;
        let sample = lost / reports.len() as f64;
        self.loss = Some(match self.loss {
            // A sudden collapse counts at once; recovery is smoothed.
            Some(l) if sample < l => 0.8 * l + 0.2 * sample,
            Some(l) => 0.5 * l + 0.5 * sample,
            None => sample,
        });
        let received = self.received.rate();
        self.control(now, received);
        tracing::trace!(usage = ?self.usage, ?received, loss = self.loss, target = self.target, n = reports.len(), "feedback");
        self.target = self.target.clamp(MIN_BPS, MAX_BPS);
        self.out.bps.store(self.target as u64, Relaxed);
        self.out
            .loss_permille
            .store((self.loss.unwrap_or(0.0) * 1000.0) as u32, Relaxed);
        self.out.reports.fetch_add(1, Relaxed);
    }

    fn target_bitrate(&self) -> f64 {
        self.target
    }

    fn stats(&self) -> EstimatorStats {
        let mut s = EstimatorStats::default();
        s.packet_loss = self.loss;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// A bottleneck link with a drop-tail queue, fed by a sender at `send_bps` in 1200-byte
    /// packets, reporting every 50 ms: what a subscriber's TWCC feedback says about it.
    struct Link {
        epoch: Instant,
        /// Capacity, bits per second.
        capacity: f64,
        /// Queue limit, in bytes.
        queue_bytes: f64,
        /// When the link is free again (seconds since epoch).
        busy_until: f64,
        sent: u64,
    }

    impl Link {
        fn new(capacity: f64) -> Link {
            Link {
                epoch: Instant::now(),
                capacity,
                // 250 ms worth.
                queue_bytes: capacity / 8.0 * 0.25,
                busy_until: 0.0,
                sent: 0,
            }
        }

        /// Sends at `send_bps` for `secs`, feeding `bwe` its reports; returns the target after.
        fn run(&mut self, bwe: &mut Bwe, start: f64, secs: f64, send_bps: impl Fn(f64) -> f64) {
            let mut t = start;
            let mut batch = Vec::new();
            let mut next_report = start + 0.05;
            while t < start + secs {
                let size = 1200usize;
                let departure = t;
                let backlog = (self.busy_until - t).max(0.0) * self.capacity / 8.0;
                let arrival = if backlog + size as f64 > self.queue_bytes {
                    None
                } else {
                    let begin = self.busy_until.max(t);
                    self.busy_until = begin + size as f64 * 8.0 / self.capacity;
                    // 20 ms of propagation.
                    Some(self.busy_until + 0.02)
                };
                batch.push(PacketReport {
                    ssrc: 1,
                    id: self.sent,
                    rtp_sequence_number: self.sent as u16,
                    is_twcc: true,
                    twcc_sequence_number: self.sent as u16,
                    size,
                    arrived: arrival.is_some(),
                    departure: self.epoch + Duration::from_secs_f64(departure),
                    arrival: arrival.map(Duration::from_secs_f64),
                    ecn: Ecn::default(),
                });
                self.sent += 1;
                t += size as f64 * 8.0 / send_bps(t).max(1.0);
                if t >= next_report {
                    bwe.on_reports(self.epoch + Duration::from_secs_f64(next_report), &batch);
                    batch.clear();
                    next_report += 0.05;
                }
            }
        }
    }

    #[test]
    fn a_full_link_brings_the_estimate_under_its_capacity() {
        let (mut bwe, out) = Bwe::new();
        let mut link = Link::new(400_000.0);
        // The server sends what the estimate allows (as the allocator does), starting at
        // 1.5 Mbit/s, into a 400 kbit/s link.
        let o = out.clone();
        link.run(&mut bwe, 0.0, 4.0, move |_| o.bps());
        let bps = out.bps();
        assert!(
            (250_000.0..=440_000.0).contains(&bps),
            "estimate {bps} should settle just under the 400 kbit/s link"
        );
        assert!(out.decreases() > 0);
    }

    #[test]
    fn an_idle_subscriber_does_not_climb_without_evidence() {
        let (mut bwe, out) = Bwe::new();
        let mut link = Link::new(50_000_000.0);
        // 200 kbit/s of thumbnails on a fast link, for 20 s.
        link.run(&mut bwe, 0.0, 20.0, |_| 200_000.0);
        assert!(
            out.bps() <= INITIAL_BPS,
            "the target stays where it was: {}",
            out.bps()
        );
    }

    #[test]
    fn a_probe_that_arrives_raises_the_estimate_at_once() {
        let (mut bwe, out) = Bwe::new();
        let mut link = Link::new(10_000_000.0);
        link.run(&mut bwe, 0.0, 2.0, |_| 1_000_000.0);
        let before = out.bps();
        // 600 ms at 3 Mbit/s, which the link carries.
        link.run(&mut bwe, 2.0, 0.6, |_| 3_000_000.0);
        let after = out.bps();
        assert!(
            after >= 2_400_000.0 && after > before,
            "probe of 3 Mbit/s: {before} -> {after}"
        );
    }

    #[test]
    fn a_probe_into_a_full_link_does_not_raise_it() {
        let (mut bwe, out) = Bwe::new();
        let mut link = Link::new(400_000.0);
        let o = out.clone();
        link.run(&mut bwe, 0.0, 5.0, move |_| o.bps());
        let before = out.bps();
        assert!(before <= 520_000.0, "{before}");
        link.run(&mut bwe, 5.0, 0.6, |_| 2.0 * before);
        let o = out.clone();
        link.run(&mut bwe, 5.6, 1.0, move |_| o.bps());
        let after = out.bps();
        assert!(
            after <= before.max(400_000.0) * 1.1,
            "a probe of twice the rate into a 400 kbit/s link: {before} -> {after}"
        );
    }

    #[test]
    fn recovers_when_the_squeeze_ends() {
        let (mut bwe, out) = Bwe::new();
        let mut link = Link::new(400_000.0);
        let o = out.clone();
        link.run(&mut bwe, 0.0, 5.0, move |_| o.bps());
        assert!(out.bps() < 520_000.0, "{}", out.bps());
        // The link opens to 20 Mbit/s; the sender probes at twice the estimate for 600 ms
        // every 1.5 s (as `pace` does while a subscriber wants more) and sends the estimate
        // otherwise.
        link.capacity = 20_000_000.0;
        link.queue_bytes = 20_000_000.0 / 8.0 * 0.25;
        let mut t = 5.0;
        let mut reached = None;
        while t < 20.0 {
            let e = out.bps();
            link.run(&mut bwe, t, 0.6, |_| 2.0 * e);
            let e = out.bps();
            link.run(&mut bwe, t + 0.6, 0.9, |_| e);
            t += 1.5;
            if out.bps() >= 4_000_000.0 {
                reached = Some(t - 5.0);
                break;
            }
        }
        let secs = reached.expect("back above 4 Mbit/s");
        assert!(secs <= 10.0, "took {secs} s");
    }

    #[test]
    fn heavy_loss_cuts_the_estimate() {
        let (mut bwe, out) = Bwe::new();
        let epoch = Instant::now();
        // 20 % of packets lost, no queueing.
        for i in 0..40u64 {
            let now = epoch + Duration::from_millis(50 * i);
            let reports: Vec<PacketReport> = (0..10)
                .map(|k| PacketReport {
                    ssrc: 1,
                    id: i * 10 + k,
                    rtp_sequence_number: 0,
                    is_twcc: true,
                    twcc_sequence_number: 0,
                    size: 1200,
                    arrived: k % 5 != 0,
                    departure: now + Duration::from_millis(5 * k),
                    arrival: (k % 5 != 0).then(|| Duration::from_millis(50 * i + 5 * k + 20)),
                    ecn: Ecn::default(),
                })
                .collect();
            bwe.on_reports(now, &reports);
        }
        assert!(out.bps() < INITIAL_BPS * 0.6, "{}", out.bps());
        assert!(out.loss() > 0.1);
    }
}
