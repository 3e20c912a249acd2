//! Send-time stamps carried inside the media, so that a subscriber can tell how long each packet
//! took through the server.
//!
//! Video: every frame starts (after SPS/PPS) with an H.264 SEI NAL unit of type
//! `user_data_unregistered` (ITU-T H.264 D.1.7 / D.2.7), sent as an RTP packet of its own. It
//! carries the publisher's tag, the frame's index in the loop, the publisher's RTP sequence
//! number of that very packet, and the send time. Header extensions cannot do this job: confab
//! drops them when it forwards (their ids differ per connection) and Janus rewrites them, while
//! both pass the payload through untouched. The SEI is legal H.264, so a decoder ignores it.
//!
//! Audio: the fake Opus payload itself starts with the same fields.
//!
//! Numbers are written as fixed-length groups of 7 bits with the top bit set, so no byte is
//! zero and no start-code emulation (`00 00 0x`) can arise inside the NAL unit; nothing has to
//! be escaped.

/// NAL unit type 6: supplemental enhancement information.
pub const NAL_SEI: u8 = 6;
/// SEI payload type 5: user data unregistered.
const SEI_USER_DATA_UNREGISTERED: u8 = 5;
/// Identifies our SEI among others (random bytes, none zero).
const UUID: [u8; 16] = [
    0xc0, 0x9f, 0xab, 0x5e, 0x17, 0x42, 0x4b, 0xe1, 0x9d, 0x3c, 0x6a, 0x21, 0x88, 0xf4, 0x05, 0x7b,
];
const RBSP_TRAILING: u8 = 0x80;

/// Groups of 7 bits for each field.
const TAG_GROUPS: usize = 3; // 21 bits
const FRAME_GROUPS: usize = 3; // 21 bits
const SEQ_GROUPS: usize = 3; // 16 bits
const TIME_GROUPS: usize = 10; // 64 bits
const FIELDS_LEN: usize = TAG_GROUPS + FRAME_GROUPS + SEQ_GROUPS + TIME_GROUPS;
const SEI_PAYLOAD_LEN: usize = UUID.len() + FIELDS_LEN;
/// Bytes of the whole SEI NAL unit.
pub const SEI_LEN: usize = 3 + SEI_PAYLOAD_LEN + 1;

/// The largest tag that fits.
#[cfg(test)]
const MAX_TAG: u32 = (1 << (7 * TAG_GROUPS)) - 1;

/// Marks our audio payloads; an Opus TOC byte for a 20 ms CELT frame comes before it.
const AUDIO_MAGIC: [u8; 3] = [0xb7, 0xe5, 0xa9];
const OPUS_TOC: u8 = 0xfc;
/// Bytes of the stamp at the start of an audio payload.
pub const AUDIO_STAMP_LEN: usize = 1 + AUDIO_MAGIC.len() + TAG_GROUPS + SEQ_GROUPS + TIME_GROUPS;

/// What a video frame's SEI says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoStamp {
    /// Which publisher sent it.
    pub tag: u32,
    /// The frame's index in the encoded loop (what the decoded picture must hash to).
    pub frame: u32,
    /// The RTP sequence number the publisher gave the SEI packet (before any rewriting).
    pub seq: u16,
    /// Send time, microseconds on the load generator's clock.
    pub sent_us: u64,
}

/// What an audio payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioStamp {
    pub tag: u32,
    pub seq: u16,
    pub sent_us: u64,
}

fn put(out: &mut Vec<u8>, v: u64, groups: usize) {
    for g in (0..groups).rev() {
        out.push(0x80 | ((v >> (7 * g)) & 0x7f) as u8);
    }
}

fn take(bytes: &[u8], at: &mut usize, groups: usize) -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..groups {
        let b = *bytes.get(*at)?;
        if b & 0x80 == 0 {
            return None;
        }
        v = (v << 7) | (b & 0x7f) as u64;
        *at += 1;
    }
    Some(v)
}

impl VideoStamp {
    /// The SEI NAL unit (no start code), ready to be an RTP payload of its own.
    pub fn to_sei(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEI_LEN);
        out.push(NAL_SEI); // forbidden_zero 0, nal_ref_idc 0, type 6
        out.push(SEI_USER_DATA_UNREGISTERED);
        out.push(SEI_PAYLOAD_LEN as u8);
        out.extend_from_slice(&UUID);
        put(&mut out, self.tag as u64, TAG_GROUPS);
        put(&mut out, self.frame as u64, FRAME_GROUPS);
        put(&mut out, self.seq as u64, SEQ_GROUPS);
        put(&mut out, self.sent_us, TIME_GROUPS);
        out.push(RBSP_TRAILING);
        out
    }

    /// Reads our SEI from a NAL unit; `None` for anything else.
    pub fn from_sei(nal: &[u8]) -> Option<VideoStamp> {
        if nal.len() != SEI_LEN
            || nal[0] & 0x1f != NAL_SEI
            || nal[1] != SEI_USER_DATA_UNREGISTERED
            || nal[2] as usize != SEI_PAYLOAD_LEN
            || nal[3..3 + UUID.len()] != UUID
        {
            return None;
        }
        let mut at = 3 + UUID.len();
        let tag = take(nal, &mut at, TAG_GROUPS)? as u32;
        let frame = take(nal, &mut at, FRAME_GROUPS)? as u32;
        let seq = take(nal, &mut at, SEQ_GROUPS)?;
        let sent_us = take(nal, &mut at, TIME_GROUPS)?;
        if seq > u16::MAX as u64 || nal[at] != RBSP_TRAILING {
            return None;
        }
        Some(VideoStamp {
            tag,
            frame,
            seq: seq as u16,
            sent_us,
        })
    }
}

impl AudioStamp {
    /// A fake Opus payload of `len` bytes (at least [`AUDIO_STAMP_LEN`]) starting with the stamp.
    pub fn to_payload(self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len.max(AUDIO_STAMP_LEN));
        out.push(OPUS_TOC);
        out.extend_from_slice(&AUDIO_MAGIC);
        put(&mut out, self.tag as u64, TAG_GROUPS);
        put(&mut out, self.seq as u64, SEQ_GROUPS);
        put(&mut out, self.sent_us, TIME_GROUPS);
        let mut filler = self.seq as u8;
        while out.len() < len {
            filler = filler.wrapping_mul(31).wrapping_add(17);
            out.push(filler);
        }
        out
    }

    pub fn from_payload(p: &[u8]) -> Option<AudioStamp> {
        if p.len() < AUDIO_STAMP_LEN || p[0] != OPUS_TOC || p[1..4] != AUDIO_MAGIC {
            return None;
        }
        let mut at = 4;
        let tag = take(p, &mut at, TAG_GROUPS)? as u32;
        let seq = take(p, &mut at, SEQ_GROUPS)?;
        let sent_us = take(p, &mut at, TIME_GROUPS)?;
        if seq > u16::MAX as u64 {
            return None;
        }
        Some(AudioStamp {
            tag,
            seq: seq as u16,
            sent_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sei_round_trips_and_has_no_start_code_emulation() {
        for s in [
            VideoStamp {
                tag: 0,
                frame: 0,
                seq: 0,
                sent_us: 0,
            },
            VideoStamp {
                tag: MAX_TAG,
                frame: 119,
                seq: u16::MAX,
                sent_us: u64::MAX,
            },
            VideoStamp {
                tag: 7,
                frame: 3,
                seq: 0x0100,
                sent_us: 1_234_567_890,
            },
        ] {
            let sei = s.to_sei();
            assert_eq!(sei.len(), SEI_LEN);
            assert!(
                !sei.windows(2).any(|w| w == [0, 0]),
                "two zero bytes in {sei:02x?}"
            );
            assert_eq!(VideoStamp::from_sei(&sei), Some(s));
        }
    }

    #[test]
    fn foreign_nal_units_are_not_stamps() {
        let mut sei = VideoStamp {
            tag: 1,
            frame: 2,
            seq: 3,
            sent_us: 4,
        }
        .to_sei();
        assert_eq!(VideoStamp::from_sei(&sei[..SEI_LEN - 1]), None);
        sei[5] ^= 1; // UUID
        assert_eq!(VideoStamp::from_sei(&sei), None);
        assert_eq!(VideoStamp::from_sei(&[0x65, 0x88, 0x80]), None); // an IDR slice
    }

    #[test]
    fn audio_round_trips() {
        let s = AudioStamp {
            tag: 42,
            seq: 65_000,
            sent_us: 987_654_321,
        };
        let p = s.to_payload(80);
        assert_eq!(p.len(), 80);
        assert_eq!(AudioStamp::from_payload(&p), Some(s));
        assert_eq!(AudioStamp::from_payload(&p[..10]), None);
        let mut bad = p.clone();
        bad[1] = 0;
        assert_eq!(AudioStamp::from_payload(&bad), None);
    }
}
