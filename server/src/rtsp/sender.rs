//! One track of a player's session as an RTP sender (RFC 3550): the session's own SSRC and
//! payload type, sequence numbers and timestamps that continue across PAUSE/PLAY, and RTCP
//! sender reports so the player can line audio up with video.
//!
//! Each PLAY starts a new tap on the bridge, whose packets have their own sequence and
//! timestamp spaces. The PLAY response announces where this sender's stream continues
//! (`RTP-Info: seq=…;rtptime=…`, RFC 2326 §12.33), and the first packet of the tap is mapped
//! there; later packets keep their distance to it. Across a pause the timestamp advances by the
//! wall-clock time that passed, so a player's clock keeps running and no delay builds up.
//!
//! Sender reports translate the source's NTP↔RTP pair (from the bridge) into this sender's
//! timestamp space and extrapolate it to the time of sending.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// How often a sender report goes out per track (RFC 3550 §6.2 suggests 5 s at minimum for
/// large sessions; players sync faster with more, and a report is 44 bytes).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RtpSender {
    ssrc: u32,
    payload_type: u8,
    clock_rate: u32,
    /// The sequence number the next packet gets.
    next_seq: u16,
    /// The newest timestamp sent (or announced) and when: where a new tap continues.
    anchor: (u32, Instant),
    /// Input → output deltas of the current tap, known from its first packet.
    delta: Option<(u16, u32)>,
    /// Where the current tap starts, as announced in RTP-Info.
    start: (u16, u32),
    packets: u32,
    octets: u32,
    /// The source's NTP time for input timestamp `rtp`, learned at `at`.
    mapping: Option<Mapping>,
    next_report: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    ntp: u64,
    rtp: u32,
    at: Instant,
}

impl RtpSender {
    /// A sender whose stream starts at `seq` and `ts` (random, RFC 3550 §5.1).
    pub fn new(
        ssrc: u32,
        payload_type: u8,
        clock_rate: u32,
        seq: u16,
        ts: u32,
        now: Instant,
    ) -> Self {
        RtpSender {
            ssrc,
            payload_type,
            clock_rate: clock_rate.max(1),
            next_seq: seq,
            anchor: (ts, now),
            delta: None,
            start: (seq, ts),
            packets: 0,
            octets: 0,
            mapping: None,
            next_report: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Begins a new tap (PLAY): returns the `seq` and `rtptime` its first packet will carry.
    pub fn start(&mut self, now: Instant) -> (u16, u32) {
        let (ts, at) = self.anchor;
        let ts = ts.wrapping_add(self.ticks(now.saturating_duration_since(at)));
        self.anchor = (ts, now);
        self.start = (self.next_seq, ts);
        self.delta = None;
        self.mapping = None;
        self.next_report = None;
        self.start
    }

    /// Ends the current tap (PAUSE); the stream continues at the next [`start`](Self::start).
    pub fn stop(&mut self) {
        self.delta = None;
        self.mapping = None;
        self.next_report = None;
    }

    /// The RTP header for one packet of the tap, `len` payload bytes.
    pub fn rtp(&mut self, marker: bool, seq: u16, ts: u32, len: usize, now: Instant) -> [u8; 12] {
        let (dseq, dts) = *self.delta.get_or_insert_with(|| {
            (
                self.start.0.wrapping_sub(seq),
                self.start.1.wrapping_sub(ts),
            )
        });
        let out_seq = seq.wrapping_add(dseq);
        let out_ts = ts.wrapping_add(dts);
        // Only packets newer than any sent move the stream on (the tap may reorder a little).
        if out_seq.wrapping_sub(self.next_seq) < 0x8000 {
            self.next_seq = out_seq.wrapping_add(1);
            self.anchor = (out_ts, now);
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(len as u32);
        if self.mapping.is_some() && self.next_report.is_none() {
            self.next_report = Some(now);
        }
        let mut h = [0u8; 12];
        h[0] = 0x80; // V=2, no padding, no extension, no CSRC
        h[1] = (u8::from(marker) << 7) | (self.payload_type & 0x7f);
        h[2..4].copy_from_slice(&out_seq.to_be_bytes());
        h[4..8].copy_from_slice(&out_ts.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        h
    }

    /// The source's NTP time `ntp` for its timestamp `rtp` (in the tap's timestamp space).
    pub fn sender_report(&mut self, ntp: u64, rtp: u32, now: Instant) {
        self.mapping = Some(Mapping { ntp, rtp, at: now });
        if self.delta.is_some() && self.next_report.is_none() {
            self.next_report = Some(now);
        }
    }

    /// When the next sender report is due, if one can be made.
    pub fn next_report(&self) -> Option<Instant> {
        self.next_report
    }

    /// A compound RTCP packet (SR + SDES CNAME, RFC 3550 §6.4.1, §6.5.1) if one is due.
    /// `cname` must be the same for all tracks of a session: players group streams by it
    /// for lip sync.
    pub fn poll_report(&mut self, now: Instant, cname: &str) -> Option<Bytes> {
        let due = self.next_report?;
        if now < due {
            return None;
        }
        let (mapping, (_, dts)) = (self.mapping?, self.delta?);
        self.next_report = Some(now + REPORT_INTERVAL);
        let elapsed = now.saturating_duration_since(mapping.at);
        let ntp = mapping.ntp.wrapping_add(ntp_duration(elapsed));
        let rtp = mapping
            .rtp
            .wrapping_add(dts)
            .wrapping_add(self.ticks(elapsed));
        Some(self.report(ntp, rtp, cname))
    }

    fn report(&self, ntp: u64, rtp: u32, cname: &str) -> Bytes {
        let cname = &cname.as_bytes()[..cname.len().min(255)];
        // SDES: header, SSRC, CNAME item (type, length, text), end item, pad to 32 bits.
        let sdes_len = (4 + 4 + 2 + cname.len() + 1).div_ceil(4) * 4;
        let mut b = BytesMut::with_capacity(28 + sdes_len);
        b.put_u8(0x80); // V=2, P=0, RC=0
        b.put_u8(200); // SR
        b.put_u16(6); // length in 32-bit words minus one
        b.put_u32(self.ssrc);
        b.put_u64(ntp);
        b.put_u32(rtp);
        b.put_u32(self.packets);
        b.put_u32(self.octets);
        b.put_u8(0x81); // V=2, P=0, SC=1
        b.put_u8(202); // SDES
        b.put_u16((sdes_len / 4 - 1) as u16);
        b.put_u32(self.ssrc);
        b.put_u8(1); // CNAME
        b.put_u8(cname.len() as u8);
        b.put_slice(cname);
        while b.len() < 28 + sdes_len {
            b.put_u8(0); // end of list, then padding
        }
        b.freeze()
    }

    /// `d` in this track's clock (wrapping, as RTP timestamps do).
    fn ticks(&self, d: Duration) -> u32 {
        (d.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u32
    }
}

/// `d` in the 32.32 fixed-point NTP format.
fn ntp_duration(d: Duration) -> u64 {
    (d.as_secs() << 32) + ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(h: &[u8; 12]) -> (bool, u8, u16, u32, u32) {
        (
            h[1] & 0x80 != 0,
            h[1] & 0x7f,
            u16::from_be_bytes([h[2], h[3]]),
            u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        )
    }

    #[test]
    fn continues_across_taps() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(0xabcd, 96, 90000, 65534, 4_294_967_000, t0);
        assert_eq!(s.start(t0), (65534, 4_294_967_000));
        // The tap's own numbering starts anywhere.
        let h = s.rtp(true, 100, 5000, 10, t0);
        assert_eq!(header(&h), (true, 96, 65534, 4_294_967_000, 0xabcd));
        let h = s.rtp(false, 101, 8000, 10, t0 + Duration::from_millis(33));
        assert_eq!(
            header(&h),
            (
                false,
                96,
                65535,
                4_294_967_000u32.wrapping_add(3000),
                0xabcd
            )
        );
        let h = s.rtp(false, 102, 11000, 10, t0 + Duration::from_millis(66));
        // Both wrap.
        assert_eq!(header(&h).2, 0);
        assert_eq!(header(&h).3, 4_294_967_000u32.wrapping_add(6000));
        // A late packet does not move the stream back.
        let _ = s.rtp(false, 101, 8000, 10, t0 + Duration::from_millis(67));
        s.stop();
        // Two seconds later, a new tap with other numbers continues the stream: the next
        // sequence number, and the timestamp advanced by the time that passed.
        let t1 = t0 + Duration::from_millis(66) + Duration::from_secs(2);
        let (seq, ts) = s.start(t1);
        assert_eq!(seq, 1);
        assert_eq!(ts, 4_294_967_000u32.wrapping_add(6000 + 180_000));
        let h = s.rtp(true, 9, 77, 10, t1);
        assert_eq!((header(&h).2, header(&h).3), (1, ts));
    }

    #[test]
    fn sender_reports_in_output_timestamps() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(7, 111, 48000, 0, 1_000_000, t0);
        s.start(t0);
        assert!(s.poll_report(t0, "c").is_none());
        // The source says: input ts 500 is NTP 10.0 s.
        s.sender_report(10 << 32, 500, t0);
        assert!(
            s.next_report().is_none(),
            "no packet yet: the offset is unknown"
        );
        let _ = s.rtp(false, 1, 500, 100, t0);
        assert_eq!(s.next_report(), Some(t0));
        let later = t0 + Duration::from_millis(250);
        let sr = s.poll_report(later, "confab-x").unwrap();
        // Parse it back with `rtc`.
        let mut buf = &sr[..];
        let packets = rtc::rtcp::packet::unmarshal(&mut buf).unwrap();
        assert_eq!(packets.len(), 2);
        let report = packets[0]
            .as_any()
            .downcast_ref::<rtc::rtcp::sender_report::SenderReport>()
            .unwrap();
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.ntp_time, (10 << 32) + (1 << 30));
        assert_eq!(report.rtp_time, 1_000_000 + 12_000);
        assert_eq!((report.packet_count, report.octet_count), (1, 100));
        let sdes = packets[1]
            .as_any()
            .downcast_ref::<rtc::rtcp::source_description::SourceDescription>()
            .unwrap();
        assert_eq!(&sdes.chunks[0].items[0].text[..], b"confab-x");
        // The next is due a second after.
        assert_eq!(s.next_report(), Some(later + REPORT_INTERVAL));
        assert!(s
            .poll_report(later + Duration::from_millis(999), "c")
            .is_none());
        assert!(s.poll_report(later + REPORT_INTERVAL, "c").is_some());
        // A pause stops reports until the new tap has both a packet and a mapping.
        s.stop();
        assert!(s.next_report().is_none());
    }
}
