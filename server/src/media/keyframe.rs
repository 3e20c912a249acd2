//! Keyframes: recognising them in RTP payloads, and throttling requests for them.
//!
//! Every new subscriber and every PLI/FIR from a subscriber asks the publisher for a keyframe.
//! Ten viewers joining at once must not make the publisher send ten keyframes, so requests are
//! gated to one per track per [`KEYFRAME_INTERVAL`]; a request that falls inside the window is
//! remembered and sent when the window ends, so nobody waits for the next natural keyframe.

use std::time::{Duration, Instant};

pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// Per-track keyframe request throttle.
#[derive(Debug, Clone, Default)]
pub struct KeyframeGate {
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeGate {
    /// Someone wants a keyframe. Returns true if a request should go to the publisher now.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_INTERVAL => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// A keyframe arrived and nobody is waiting any more: a deferred request is not needed.
    pub fn satisfied(&mut self) {
        self.pending = false;
    }

    /// When a deferred request becomes due, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.pending, self.last_sent) {
            (true, Some(t)) => Some(t + KEYFRAME_INTERVAL),
            _ => None,
        }
    }

    /// Called at or after [`deadline`](Self::deadline): true if the deferred request goes now.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if now >= d => self.request(now),
            _ => false,
        }
    }
}

/// Video codecs whose keyframes we can recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
    Other,
}

impl VideoCodec {
    pub fn from_mime(mime: &str) -> Self {
        if mime.eq_ignore_ascii_case("video/h264") {
            VideoCodec::H264
        } else if mime.eq_ignore_ascii_case("video/vp8") {
            VideoCodec::Vp8
        } else {
            VideoCodec::Other
        }
    }
}

/// Whether this RTP payload starts a keyframe (a decoder can start here).
///
/// Unknown codecs answer true: we cannot tell, so we do not hold the stream back.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => h264_starts_keyframe(payload),
        VideoCodec::Vp8 => vp8_starts_keyframe(payload),
        VideoCodec::Other => true,
    }
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// RFC 6184: a single NAL unit, STAP-A (§5.7.1) or FU-A start (§5.8) carrying an SPS or an IDR
/// slice. Browsers send SPS+PPS in a STAP-A right before the IDR.
fn h264_starts_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        NAL_IDR | NAL_SPS => true,
        NAL_STAP_A => {
            let mut rest = &p[1..];
            while rest.len() >= 2 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                rest = &rest[2..];
                if size == 0 || size > rest.len() {
                    return false;
                }
                if matches!(rest[0] & 0x1f, NAL_IDR | NAL_SPS) {
                    return true;
                }
                rest = &rest[size..];
            }
            false
        }
        NAL_FU_A => p.len() >= 2 && p[1] & 0x80 != 0 && matches!(p[1] & 0x1f, NAL_IDR | NAL_SPS),
        _ => false,
    }
}

/// RFC 7741 §4.2/§4.3: the first packet of a partition 0 (S=1, PID=0) whose VP8 payload
/// header has P=0 is the start of a key frame.
fn vp8_starts_keyframe(p: &[u8]) -> bool {
    let Some(&d) = p.first() else {
        return false;
    };
    let s = d & 0x10 != 0;
    let pid = d & 0x07;
    if !s || pid != 0 {
        return false;
    }
    let mut i = 1;
    if d & 0x80 != 0 {
        // X: extension byte with I, L, T, K flags.
        let Some(&x) = p.get(1) else { return false };
        i = 2;
        if x & 0x80 != 0 {
            // I: PictureID, 7 or 15 bits.
            let Some(&pic) = p.get(i) else { return false };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T/K: TID/KEYIDX
        }
    }
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_throttles_and_defers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut g = KeyframeGate::default();
        assert!(g.request(t0), "first request goes out");
        assert_eq!(g.deadline(), None);
        assert!(!g.request(t0 + ms(100)), "inside the window");
        assert!(!g.request(t0 + ms(200)), "still inside; folded into one");
        assert_eq!(g.deadline(), Some(t0 + ms(500)));
        assert!(!g.poll(t0 + ms(499)));
        assert!(
            g.poll(t0 + ms(500)),
            "deferred request sent at the window's end"
        );
        assert_eq!(g.deadline(), None);
        assert!(!g.poll(t0 + ms(2000)), "nothing pending");
        assert!(
            g.request(t0 + ms(1000)),
            "after the window a request goes at once"
        );
    }

    #[test]
    fn h264_keyframes() {
        // Single NAL IDR, SPS; non-IDR slice.
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88]));
        assert!(starts_keyframe(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41, 0x9a]));
        // STAP-A with SPS (len 2) and PPS (len 1).
        assert!(starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        // STAP-A with only PPS; and one with a lying length.
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x01, 0x68]
        ));
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0xff, 0xff, 0x67]
        ));
        // FU-A: start of IDR, middle of IDR, start of non-IDR.
        assert!(starts_keyframe(VideoCodec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c, 0x81, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c]));
    }

    #[test]
    fn vp8_keyframes() {
        // S=1 PID=0, no extension, payload header P=0 → key frame.
        assert!(starts_keyframe(VideoCodec::Vp8, &[0x10, 0x00]));
        // P=1 → interframe.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x10, 0x01]));
        // Not a partition start.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        // X with I (15-bit picture id) and T: header at index 5.
        assert!(starts_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xa0, 0x81, 0x23, 0x40, 0x00]
        ));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x90, 0xa0, 0x81]));
        assert!(starts_keyframe(VideoCodec::Other, &[]));
    }
}
