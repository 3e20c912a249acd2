//! Transport-wide congestion control (TWCC), the sending half: each packet a subscribe
//! connection sends carries a transport-wide sequence number, and the subscriber's feedback
//! (RTCP transport-cc, which `peer::DeliverRtcp` passes to the engine) is joined to what was
//! sent and handed to the bandwidth estimator (`super::bwe`).
//!
//! Written here rather than with `rtc`'s `TwccSender` and congestion-control interceptors,
//! because those doubled what a forwarded packet costs beyond `rtc`'s own pipeline (callgrind,
//! fanout 10: 15.3–15.8 thousand instructions per forwarded packet before, 21.4–22.7 with them:
//! a two-byte allocation for the extension's bytes, a hash map entry per packet in the send
//! history, and a second pass over every packet on the way out). Here the engine, which builds
//! each packet's header anyway, writes the number from a static table (no allocation for its
//! bytes), and the history is a ring of recent departures per connection, read only when
//! feedback arrives. Retransmissions answered by `rtc`'s NACK responder go out with the header
//! they first had, so they are not counted again (the estimate sees them only as the share of
//! the link they take).
//!
//! **One number per frame.** A header extension costs `rtc`'s pipeline more than its two bytes
//! (the header is parsed again, with an allocation, before encryption): numbering every packet
//! still cost a quarter more per forwarded packet (callgrind as above: 18.6–19.8 thousand). So
//! while a subscriber's estimate is well above what it receives and nothing is held back from
//! it, one video packet in four is numbered and stands for the bytes of the unnumbered ones
//! before it; once the estimate matters (something is held back, a probe runs, or it backed
//! off in the last 4 s: `adapt`), every packet is.
//! Audio and probes always are. A sample is enough to notice the change: what arrived is
//! counted in bytes, which the numbered packets carry for the others, and the delay trend is
//! measured between groups of packets sent together. One in four, not one per frame: a frame
//! is a burst, a full drop-tail queue drops at fixed places in bursts (the tail, and in a long
//! overload the head too), and numbered there a congested link reported nothing at all (the
//! simulation's squeezed subscribers did exactly that). Should a subscriber still send no
//! feedback on what it was sent for a second, the estimate halves (`Bwe::feedback_timeout`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{convert_twcc, PacketReport};
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

/// While a sample is enough, one video packet in this many carries a number.
const SAMPLE: u32 = 4;

/// Departures remembered: about a second of a subscriber of two 720p pictures, several times
/// the interval at which feedback arrives (50–100 ms).
const RING: usize = 512;

/// Every transport-wide sequence number's two bytes, big-endian, so that an extension's payload
/// is a slice of static memory rather than an allocation per packet.
static SEQ_BYTES: [u8; 2 * 65536] = {
    let mut t = [0u8; 2 * 65536];
    let mut i = 0;
    while i < 65536 {
        t[2 * i] = (i >> 8) as u8;
        t[2 * i + 1] = i as u8;
        i += 1;
    }
    t
};

/// The extension payload for sequence number `seq` (RFC draft-holmer-rmcat-transport-wide-cc
/// §2: a 16-bit number).
pub fn seq_bytes(seq: u16) -> Bytes {
    let at = 2 * seq as usize;
    Bytes::from_static(&SEQ_BYTES[at..at + 2])
}

/// One departure.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    /// The extended sequence number (also the report's id), and the departure, in
    /// microseconds since the connection's epoch.
    ext: u64,
    at_us: u64,
    size: u32,
}

/// A subscribe connection's transport-wide numbering and its recent departures.
pub struct TwccSend {
    /// The extension's id, as the subscriber's answer negotiated it.
    pub ext_id: u8,
    next: u64,
    /// Bytes sent without a number since the last numbered packet.
    unnumbered: usize,
    /// Video packets sent while a sample was enough.
    sampled: u32,
    ring: Box<[Sent; RING]>,
    epoch: Instant,
}

impl TwccSend {
    pub fn new(ext_id: u8, epoch: Instant) -> TwccSend {
        TwccSend {
            ext_id,
            next: 0,
            unnumbered: 0,
            sampled: 0,
            ring: Box::new([Sent::default(); RING]),
            epoch,
        }
    }

    /// Numbers a packet of `size` bytes leaving at `now`; it stands for the bytes of the
    /// unnumbered packets before it too.
    pub fn stamp(&mut self, now: Instant, size: usize) -> u16 {
        let ext = self.next;
        self.next += 1;
        self.ring[ext as usize % RING] = Sent {
            ext,
            at_us: now.saturating_duration_since(self.epoch).as_micros() as u64,
            size: (size + std::mem::take(&mut self.unnumbered)) as u32,
        };
        ext as u16
    }

    /// A packet of `size` bytes left without a number.
    pub fn skip(&mut self, size: usize) {
        self.unnumbered += size;
    }

    /// Whether the next video packet is one of the sample that carries a number while a sample
    /// is enough: one in [`SAMPLE`].
    pub fn sample(&mut self) -> bool {
        self.sampled = self.sampled.wrapping_add(1);
        self.sampled.is_multiple_of(SAMPLE)
    }

    /// How many packets were numbered so far.
    pub fn numbered(&self) -> u64 {
        self.next
    }

    /// The extended number of 16-bit `seq`: the one nearest the latest sent.
    fn extend(&self, seq: u16) -> Option<u64> {
        let last = self.next.checked_sub(1)?;
        let back = (last as u16).wrapping_sub(seq) as u64;
        last.checked_sub(back)
    }

    /// What `feedback` says about packets still remembered, in send order.
    pub fn reports(&self, feedback: &TransportLayerCc) -> Vec<PacketReport> {
        convert_twcc(feedback)
            .into_iter()
            .filter_map(|ack| {
                let ext = self.extend(ack.sequence_number)?;
                let sent = self.ring[ext as usize % RING];
                (sent.ext == ext && self.next > 0).then(|| PacketReport {
                    ssrc: 0,
                    id: ext,
                    rtp_sequence_number: 0,
                    is_twcc: true,
                    twcc_sequence_number: ack.sequence_number,
                    size: sent.size as usize,
                    arrived: ack.arrived,
                    departure: self.epoch + Duration::from_micros(sent.at_us),
                    arrival: ack.arrival,
                    ecn: Ecn::default(),
                })
            })
            .collect()
    }
}

/// The id under which `sdp` (a subscriber's answer) negotiated transport-wide sequence numbers,
/// if it did.
pub fn ext_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        let uri = uri.split_whitespace().next()?;
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        (uri == rtc::sdp::extmap::TRANSPORT_CC_URI && (1..=14).contains(&id)).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
    };

    #[test]
    fn the_table_holds_every_number() {
        assert_eq!(&seq_bytes(0)[..], &[0, 0]);
        assert_eq!(&seq_bytes(0x1234)[..], &[0x12, 0x34]);
        assert_eq!(&seq_bytes(0xffff)[..], &[0xff, 0xff]);
    }

    #[test]
    fn a_numbered_packet_stands_for_the_unnumbered_ones_before_it() {
        let t0 = Instant::now();
        let mut s = TwccSend::new(3, t0);
        s.skip(1000);
        s.skip(1000);
        let seq = s.stamp(t0, 500);
        let ext = s.extend(seq).unwrap();
        assert_eq!(s.ring[ext as usize % RING].size, 2500);
        let seq = s.stamp(t0, 500);
        let ext = s.extend(seq).unwrap();
        assert_eq!(s.ring[ext as usize % RING].size, 500);
    }

    #[test]
    fn the_extension_id_comes_from_the_answer() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=extmap:2 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
        assert_eq!(ext_id(sdp), Some(3));
        assert_eq!(ext_id("v=0\r\n"), None);
    }

    #[test]
    fn feedback_is_joined_to_what_was_sent() {
        let t0 = Instant::now();
        let mut s = TwccSend::new(3, t0);
        // 70000 packets: the numbers wrap, and only the last RING are remembered.
        for i in 0..70_000u64 {
            s.stamp(t0 + Duration::from_millis(i), 1000 + (i % 7) as usize);
        }
        let last = 69_999u64;
        let base = (last - 2) as u16;
        let fb = TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: base,
            packet_status_count: 3,
            reference_time: 0,
            fb_pkt_count: 0,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: 3,
            })],
            recv_deltas: (0..3)
                .map(|_| RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: 1000,
                })
                .collect(),
        };
        let r = s.reports(&fb);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].id, last - 2);
        assert_eq!(r[2].id, last);
        assert_eq!(r[2].size, 1000 + (last % 7) as usize);
        assert_eq!(r[2].departure, t0 + Duration::from_millis(last));
        assert!(r.iter().all(|r| r.arrived));
        // Numbers from long ago (a late or bogus report) are not in the ring.
        let old = TransportLayerCc {
            base_sequence_number: base.wrapping_sub(5000),
            ..fb
        };
        assert!(s.reports(&old).is_empty());
    }
}
