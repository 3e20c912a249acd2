//! The simulated network: one link per direction between each client and the engine.

use std::cmp::Ordering;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ClientId;
use crate::protocol::PcRole;

/// A link's direction: `Up` is client → engine, `Down` engine → client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Up,
    Down,
}

/// Which datagrams a link's loss and reordering apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affects {
    All,
    /// Only (S)RTP media packets: ICE, DTLS and RTCP pass untouched.
    Rtp,
}

/// One direction of one client's path to the engine.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub delay: Duration,
    /// Each datagram is delayed by up to this much more, uniformly (reorders close datagrams).
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is held back by `reorder_delay`, arriving after later ones.
    pub reorder: f64,
    pub reorder_delay: Duration,
    pub affects: Affects,
    /// Nothing gets through.
    pub cut: bool,
    /// Scripted loss: the first `n` datagrams `matches` picks are lost, whatever `loss` says.
    pub lose_first: Option<LoseFirst>,
    /// A bottleneck: bits per second, and how long its drop-tail queue is (what does not fit
    /// is lost), as `tc` htb with a short fifo shapes a real link.
    pub rate: Option<(f64, Duration)>,
}

/// Loses particular datagrams, for tests that need one of them gone.
#[derive(Debug, Clone, Copy)]
pub struct LoseFirst {
    pub matches: fn(&[u8]) -> bool,
    pub n: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            affects: Affects::All,
            cut: false,
            lose_first: None,
            rate: None,
        }
    }
}

impl LinkConfig {
    /// The default link losing a fraction of its media packets.
    pub fn media_loss(loss: f64) -> Self {
        LinkConfig {
            loss,
            affects: Affects::Rtp,
            ..Default::default()
        }
    }

    /// Datagrams handed over at once, as if the parties shared a process.
    pub fn instant() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            ..Default::default()
        }
    }
}

pub(super) struct Link {
    pub(super) cfg: LinkConfig,
    rng: StdRng,
    pub(super) stats: LinkStats,
    /// SSRC and sequence number of every RTP packet lost (from the clear SRTP header).
    pub(super) lost_rtp: Vec<(u32, u16)>,
    /// How many datagrams the scripted loss took.
    scripted: u32,
    /// When the bottleneck (`LinkConfig::rate`) has sent everything queued.
    busy_until: Option<Instant>,
}

/// What a link did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub sent: u64,
    pub lost: u64,
    pub reordered: u64,
}

impl Link {
    /// A default link whose generator is seeded from the simulation's `seed` and which link
    /// it is, so that links do not share one sequence of choices.
    pub(super) fn new(seed: u64, c: ClientId, dir: Dir) -> Self {
        let n = ((c.0 as u64) << 1) | (dir == Dir::Down) as u64;
        Link {
            cfg: LinkConfig::default(),
            rng: StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            stats: LinkStats::default(),
            lost_rtp: Vec::new(),
            scripted: 0,
            busy_until: None,
        }
    }

    /// When `data` sent at `now` arrives, or `None` if it is lost.
    pub(super) fn fate(&mut self, now: Instant, data: &[u8]) -> Option<Instant> {
        self.stats.sent += 1;
        let scripted = self
            .cfg
            .lose_first
            .is_some_and(|l| self.scripted < l.n && (l.matches)(data));
        self.scripted += scripted as u32;
        let cfg = &self.cfg;
        let affected = cfg.affects == Affects::All || classify(data) == Kind::Rtp;
        if cfg.cut
            || scripted
            || (affected && cfg.loss > 0.0 && self.rng.random_bool(cfg.loss.min(1.0)))
        {
            self.stats.lost += 1;
            if let Some((ssrc, seq)) = rtp_ids(data) {
                self.lost_rtp.push((ssrc, seq));
            }
            return None;
        }
        let mut at = now + cfg.delay;
        if let Some((bps, queue)) = cfg.rate {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            if start.saturating_duration_since(now) > queue {
                self.stats.lost += 1;
                if let Some((ssrc, seq)) = rtp_ids(data) {
                    self.lost_rtp.push((ssrc, seq));
                }
                return None;
            }
            let done = start + Duration::from_secs_f64(data.len() as f64 * 8.0 / bps.max(1.0));
            self.busy_until = Some(done);
            at = done + cfg.delay;
        }
        if !cfg.jitter.is_zero() {
            let us = self.rng.random_range(0..=cfg.jitter.as_micros() as u64);
            at += Duration::from_micros(us);
        }
        if affected && cfg.reorder > 0.0 && self.rng.random_bool(cfg.reorder.min(1.0)) {
            self.stats.reordered += 1;
            at += cfg.reorder_delay;
        }
        Some(at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Engine,
    Client(ClientId, PcRole),
}

/// A datagram on its way.
pub(super) struct Flight {
    pub(super) at: Instant,
    pub(super) order: u64,
    pub(super) to: Endpoint,
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    pub(super) data: BytesMut,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Flight {
    /// Reversed, so that `BinaryHeap` pops the earliest (then the first sent).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// What a datagram is, by its first bytes (RFC 7983 §7, RFC 5761 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Other,
}

fn classify(d: &[u8]) -> Kind {
    match d.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) if d.len() >= 2 && (192..=223).contains(&d[1]) => Kind::Rtcp,
        Some(128..=191) if d.len() >= 12 => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// SSRC and sequence number of an (S)RTP packet.
fn rtp_ids(d: &[u8]) -> Option<(u32, u16)> {
    (classify(d) == Kind::Rtp).then(|| {
        (
            u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
            u16::from_be_bytes([d[2], d[3]]),
        )
    })
}

/// A datagram for the trace: what it is and its clear-text header fields (SRTP leaves the
/// RTP header and SRTCP the first RTCP header in the clear).
pub(super) fn describe_datagram(d: &[u8]) -> String {
    let be16 = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    match classify(d) {
        Kind::Stun if d.len() >= 20 => {
            let what = match be16(0) {
                0x0001 => "binding request",
                0x0101 => "binding success",
                0x0111 => "binding error",
                0x0011 => "binding indication",
                _ => "message",
            };
            format!("STUN {what} {}B", d.len())
        }
        Kind::Dtls if d.len() >= 13 => {
            let what = match d[0] {
                20 => "change_cipher_spec",
                21 => "alert",
                22 => "handshake",
                23 => "application_data",
                _ => "record",
            };
            format!("DTLS {what} epoch={} {}B", be16(3), d.len())
        }
        Kind::Rtp => format!(
            "SRTP pt={} seq={} ts={} ssrc={:#010x}{} {}B",
            d[1] & 0x7f,
            be16(2),
            be32(4),
            be32(8),
            if d[1] & 0x80 != 0 { " M" } else { "" },
            d.len()
        ),
        Kind::Rtcp if d.len() >= 8 => format!(
            "SRTCP pt={} fmt={} ssrc={:#010x} {}B",
            d[1],
            d[0] & 0x1f,
            be32(4),
            d.len()
        ),
        _ => format!("{}B starting {:02x?}", d.len(), &d[..d.len().min(4)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTP: [u8; 12] = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    const RTCP: [u8; 8] = [0x81, 201, 0, 1, 0, 0, 0, 1];
    const STUN: [u8; 20] = [
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    const DTLS: [u8; 13] = [22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn lossy(seed: u64, c: usize, dir: Dir) -> Link {
        let mut l = Link::new(seed, ClientId(c), dir);
        l.cfg = LinkConfig {
            loss: 0.3,
            jitter: Duration::from_millis(10),
            reorder: 0.1,
            ..Default::default()
        };
        l
    }

    fn fates(mut l: Link) -> Vec<Option<Instant>> {
        let now = Instant::now();
        (0..500).map(|_| l.fate(now, &RTP)).collect()
    }

    #[test]
    fn a_links_choices_follow_the_seed_and_differ_between_links() {
        // Times are compared relative to one start.
        let rel = |f: Vec<Option<Instant>>| {
            let t0 = f.iter().flatten().min().copied();
            f.into_iter()
                .map(|t| t.zip(t0).map(|(t, t0)| t - t0))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rel(fates(lossy(7, 1, Dir::Up))),
            rel(fates(lossy(7, 1, Dir::Up)))
        );
        assert_ne!(
            rel(fates(lossy(7, 1, Dir::Up))),
            rel(fates(lossy(8, 1, Dir::Up)))
        );
        assert_ne!(
            rel(fates(lossy(7, 1, Dir::Up))),
            rel(fates(lossy(7, 1, Dir::Down)))
        );
        let lost = fates(lossy(7, 2, Dir::Down))
            .iter()
            .filter(|f| f.is_none())
            .count();
        assert!((100..200).contains(&lost), "about 30 % of 500: {lost}");
    }

    #[test]
    fn media_loss_spares_ice_dtls_and_rtcp_and_records_what_it_lost() {
        let mut l = Link::new(1, ClientId(0), Dir::Down);
        l.cfg = LinkConfig::media_loss(1.0);
        let now = Instant::now();
        for d in [&STUN[..], &DTLS[..], &RTCP[..]] {
            assert_eq!(l.fate(now, d), Some(now + l.cfg.delay), "{d:?}");
        }
        assert_eq!(l.fate(now, &RTP), None);
        assert_eq!(l.lost_rtp, [(1, 1)]);
        l.cfg.cut = true;
        assert_eq!(l.fate(now, &STUN), None, "a cut link loses everything");
        assert_eq!(
            l.stats,
            LinkStats {
                sent: 5,
                lost: 2,
                reordered: 0
            }
        );
    }

    #[test]
    fn datagrams_are_told_apart_for_the_trace() {
        assert_eq!(describe_datagram(&STUN), "STUN binding request 20B");
        assert_eq!(describe_datagram(&DTLS), "DTLS handshake epoch=0 13B");
        assert_eq!(
            describe_datagram(&RTP),
            "SRTP pt=96 seq=1 ts=0 ssrc=0x00000001 12B"
        );
        assert_eq!(
            describe_datagram(&RTCP),
            "SRTCP pt=201 fmt=1 ssrc=0x00000001 8B"
        );
    }
}
