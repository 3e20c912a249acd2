//! A subscriber's retransmissions, kept within its bandwidth estimate.
//!
//! `rtc`'s NACK responder resends whatever a subscriber asks for, as often as it asks. On a
//! squeezed link that is a storm: every packet the link drops is asked for again, the resends
//! are dropped in turn, and the link carries little but retransmissions of pictures already
//! too late to show (measured: 87 % of what reached a subscriber squeezed to 250 kbit/s was
//! resent packets, and it decoded nothing). So the subscribe connection's chain has this
//! interceptor just before the responder: NACKs pass while the connection's retransmission
//! budget, a quarter of its estimate (`super::bwe`), has room for the packets they ask for, and
//! are dropped when it has not. The subscriber then asks for a keyframe of the layer it receives,
//! which the allocator has made one the link carries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::bwe::Estimate;

/// The share of the estimate retransmissions may take.
const SHARE: f64 = 0.25;
/// What a resent packet is counted as, in bits (a full video packet).
const PACKET_BITS: f64 = 1200.0 * 8.0;
/// The budget holds at most this many seconds' worth.
const BURST_SECS: f64 = 0.5;

/// The interceptor; see the module comment.
pub struct RetransmitBudget {
    estimate: Arc<Estimate>,
    budget: f64,
    last: Option<Instant>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl RetransmitBudget {
    pub fn new(estimate: Arc<Estimate>) -> RetransmitBudget {
        RetransmitBudget {
            estimate,
            budget: 0.0,
            last: None,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    /// Whether `packets` resends fit now (and takes them from the budget if so).
    fn take(&mut self, now: Instant, packets: u32) -> bool {
        let rate = self.estimate.bps() * SHARE;
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.budget = (self.budget + dt * rate).min(rate * BURST_SECS);
        } else {
            self.budget = rate * BURST_SECS;
        }
        self.last = Some(now);
        let cost = packets as f64 * PACKET_BITS;
        if cost <= self.budget {
            self.budget -= cost;
            true
        } else {
            false
        }
    }
}

/// How many packets a NACK asks for.
fn asked(nack: &TransportLayerNack) -> u32 {
    nack.nacks
        .iter()
        .map(|p| 1 + p.lost_packets.count_ones())
        .sum()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RetransmitBudget {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let now = msg.now;
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            let mut refused = 0u64;
            packets.retain(|p| {
                let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                    return true;
                };
                let n = asked(nack);
                if self.take(now, n) {
                    true
                } else {
                    refused += u64::from(n);
                    false
                }
            });
            if refused > 0 {
                self.estimate.refused_resends(refused);
            }
            if packets.is_empty() {
                return Ok(());
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for RetransmitBudget {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
    use std::time::Duration;

    fn nack(n: u16) -> TransportLayerNack {
        TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            nacks: vec![NackPair {
                packet_id: 100,
                // The first and `n - 1` following packets.
                lost_packets: (1u16 << (n - 1)) - 1,
            }],
        }
    }

    #[test]
    fn nacks_pass_within_a_quarter_of_the_estimate_and_are_refused_beyond() {
        let (bwe, estimate) = super::super::bwe::Bwe::new();
        drop(bwe);
        let mut b = RetransmitBudget::new(estimate.clone());
        assert_eq!(asked(&nack(5)), 5);
        let t0 = Instant::now();
        // 1.5 Mbit/s estimate: 375 kbit/s of resends, half a second's worth at once (19 packets).
        let mut granted = 0;
        for _ in 0..40 {
            granted += u32::from(b.take(t0, 1));
        }
        let burst = (estimate.bps() * SHARE * BURST_SECS / PACKET_BITS) as u32;
        assert_eq!(granted, burst);
        // A second later, a second's worth more (capped at the burst).
        let mut later = 0;
        for _ in 0..100 {
            later += u32::from(b.take(t0 + Duration::from_secs(1), 1));
        }
        assert_eq!(later, burst, "refilled, up to the burst");
    }
}
