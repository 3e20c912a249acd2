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
        }
    }

    /// When `data` sent at `now` arrives, or `None` if it is lost.
    pub(super) fn fate(&mut self, now: Instant, data: &[u8]) -> Option<Instant> {
        self.stats.sent += 1;
        let cfg = &self.cfg;
        let affected = cfg.affects == Affects::All || classify(data) == Kind::Rtp;
        if cfg.cut || (affected && cfg.loss > 0.0 && self.rng.random_bool(cfg.loss.min(1.0))) {
            self.stats.lost += 1;
            if let Some((ssrc, seq)) = rtp_ids(data) {
                self.lost_rtp.push((ssrc, seq));
            }
            return None;
        }
        let mut at = now + cfg.delay;
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
