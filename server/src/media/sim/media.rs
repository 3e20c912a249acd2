//! What simulated clients and cameras send: codecs and recognisable payloads.

use bytes::Bytes;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

/// RTP clock ticks per video frame (90 kHz, 30 fps) and per audio packet (48 kHz, 20 ms).
pub const VIDEO_TICKS: u32 = 3000;
pub const AUDIO_TICKS: u32 = 960;

/// What [`Sim::send_video`](super::Sim::send_video) and friends sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub frame: u32,
    pub first_seq: u16,
    pub last_seq: u16,
    pub ts: u32,
}

/// The H.264 codec every party here sends (Constrained Baseline, packetization mode 1).
pub fn h264() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Opus as the server offers it.
pub fn opus() -> RTCRtpCodec {
    crate::media::peer::opus(111).rtp_codec
}

const FILL: [u8; 40] = [0xab; 40];

/// The RTP payloads of H.264 frame number `frame`: one IDR (or non-IDR) slice as a single NAL
/// unit, or split into `packets` FU-A fragments (RFC 6184 §5.8). The frame number is in the
/// bytes after the NAL (and FU) header; see [`frame_number`].
pub fn h264_payloads(keyframe: bool, frame: u32, packets: usize) -> Vec<Bytes> {
    let nal_type = if keyframe { 5 } else { 1 };
    if packets <= 1 {
        let mut p = vec![0x60 | nal_type];
        p.extend_from_slice(&frame.to_be_bytes());
        p.extend_from_slice(&FILL);
        return vec![Bytes::from(p)];
    }
    (0..packets)
        .map(|i| {
            let start = if i == 0 { 0x80 } else { 0 };
            let end = if i + 1 == packets { 0x40 } else { 0 };
            let mut p = vec![0x7c, start | end | nal_type];
            p.extend_from_slice(&frame.to_be_bytes());
            p.extend_from_slice(&FILL);
            Bytes::from(p)
        })
        .collect()
}

/// An Opus packet carrying `frame`.
pub fn opus_payload(frame: u32) -> Bytes {
    // TOC: SILK wideband 20 ms, mono, one frame (RFC 6716 §3.1).
    let mut p = vec![0x48];
    p.extend_from_slice(&frame.to_be_bytes());
    p.extend_from_slice(&FILL[..20]);
    Bytes::from(p)
}

/// The frame number a payload made here carries (H.264 or Opus).
pub fn frame_number(payload: &[u8]) -> Option<u32> {
    let at = if payload.first()? & 0x1f == 28 { 2 } else { 1 };
    let b = payload.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Whether a payload made here starts a keyframe.
pub fn is_keyframe(payload: &[u8]) -> bool {
    crate::media::keyframe::starts_keyframe(crate::media::keyframe::VideoCodec::H264, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_frame_and_keyframes_are_recognised() {
        for packets in [1, 2, 5] {
            let key = h264_payloads(true, 7, packets);
            assert_eq!(key.len(), packets);
            assert!(is_keyframe(&key[0]), "{packets} packets: starts a keyframe");
            assert!(key[1..].iter().all(|p| !is_keyframe(p)), "only the first");
            assert!(key.iter().all(|p| frame_number(p) == Some(7)));
            let delta = h264_payloads(false, 8, packets);
            assert!(delta.iter().all(|p| !is_keyframe(p)));
            assert!(delta.iter().all(|p| frame_number(p) == Some(8)));
        }
        assert_eq!(frame_number(&opus_payload(9)), Some(9));
        assert!(!is_keyframe(&opus_payload(9)));
        assert_eq!(frame_number(&[0x65, 1]), None, "too short");
    }
}
