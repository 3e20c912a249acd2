//! H.264 over RTP (RFC 6184): cameras' packets in, browsers' packets out.
//!
//! Cameras send whatever their packetizer likes (single NAL units, STAP-A, FU-A at ~1460-byte
//! payloads); browsers get packetization mode 1 at the WebRTC MTU. Between the two sits the
//! [`AccessUnit`], one picture as a list of NAL units, so nothing downstream depends on how a
//! camera cut its stream.
//!
//! Invariants:
//! - Nothing here panics on network input: every parser takes arbitrary bytes and returns an
//!   [`H264Error`] naming the packet (sequence number) or byte offset at fault.
//! - NAL units are never copied on the way in: they are slices of the packets' payloads
//!   (FU-A fragments are the exception, they must be joined).
//! - A damaged access unit is dropped, never passed on: after a loss the decoder must see a
//!   clean stream again, and [`Depacketized::after_loss`] tells the caller to ask for a
//!   keyframe.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// NAL unit types (H.264 Table 7-1, RFC 6184 Table 1) this module cares about.
const NAL_SLICE: u8 = 1;
const NAL_SLICE_PART_A: u8 = 2;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const STAP_A: u8 = 24;
const STAP_B: u8 = 25;
const MTAP16: u8 = 26;
const MTAP24: u8 = 27;
const FU_A: u8 = 28;
const FU_B: u8 = 29;

/// Largest access unit the depacketizer assembles. A 4K IDR at high quality is a few MB; more
/// than this is a broken or hostile sender, and the bound keeps it from growing memory.
pub const MAX_ACCESS_UNIT_BYTES: usize = 8 << 20;

/// How far behind the expected sequence number a packet may be and still count as a late
/// duplicate (dropped); further back, the sender has restarted its numbering.
const MAX_LATE: u16 = 64;

/// The type of a NAL unit (its header's low five bits), `None` for an empty one.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|h| h & 0x1F)
}

/// One picture: NAL units without start codes or length prefixes, in decoding order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// 90 kHz RTP timestamp.
    pub ts: u32,
    pub nals: Vec<Bytes>,
}

impl AccessUnit {
    /// Whether the picture contains an IDR slice (type 5), i.e. a decoder can start here.
    pub fn is_keyframe(&self) -> bool {
        self.nals.iter().any(|n| nal_type(n) == Some(NAL_IDR))
    }

    /// Splits an Annex B byte stream (`00 00 01` / `00 00 00 01` start codes). Bytes before the
    /// first start code and trailing zero bytes (which belong to the next start code or are
    /// `trailing_zero_8bits`) are dropped, as are empty NAL units.
    pub fn from_annex_b(ts: u32, data: &[u8]) -> Self {
        // One copy of the whole stream; the NAL units are slices of it.
        let buf = Bytes::copy_from_slice(data);
        let mut nals = Vec::new();
        let mut push = |start: usize, mut end: usize| {
            // A NAL unit never ends in a zero byte (H.264 7.4.1: rbsp_trailing_bits, and a
            // 0x03 is appended after cabac_zero_words), so zeros here are the next start code's.
            while end > start && data[end - 1] == 0 {
                end -= 1;
            }
            if end > start {
                nals.push(buf.slice(start..end));
            }
        };
        let mut start = None;
        let mut i = 0;
        while i + 2 < data.len() {
            if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                if let Some(s) = start {
                    push(s, i);
                }
                i += 3;
                start = Some(i);
            } else {
                i += 1;
            }
        }
        if let Some(s) = start {
            push(s, data.len());
        }
        AccessUnit { ts, nals }
    }

    /// Splits length-prefixed NAL units (ISO 14496-15 "AVCC", what the `retina` crate and MP4
    /// files give), `length_size` being 1, 2, 3 or 4 bytes. Zero-length units are skipped.
    pub fn from_avcc(ts: u32, data: &[u8], length_size: usize) -> Result<Self, H264Error> {
        if !(1..=4).contains(&length_size) {
            return Err(H264Error::BadLengthSize(length_size));
        }
        let buf = Bytes::copy_from_slice(data);
        let mut nals = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            let Some(prefix) = data.get(offset..offset + length_size) else {
                return Err(H264Error::BadLength {
                    offset,
                    size: None,
                    remaining: data.len() - offset,
                });
            };
            let size = prefix
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            let start = offset + length_size;
            let remaining = data.len() - start;
            if size > remaining {
                return Err(H264Error::BadLength {
                    offset,
                    size: Some(size),
                    remaining,
                });
            }
            if size > 0 {
                nals.push(buf.slice(start..start + size));
            }
            offset = start + size;
        }
        Ok(AccessUnit { ts, nals })
    }

    /// The picture as an Annex B byte stream (four-byte start codes), as decoders and files
    /// take it.
    pub fn to_annex_b(&self) -> Vec<u8> {
        let len = self.nals.iter().map(|n| n.len() + 4).sum();
        let mut out = Vec::with_capacity(len);
        for nal in &self.nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        out
    }

    /// Total size of the NAL units in bytes.
    pub fn len_bytes(&self) -> usize {
        self.nals.iter().map(Bytes::len).sum()
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum H264Error {
    #[error(
        "RTP packet {seq}: NAL unit type {nal_type} ({}) is not supported; \
         the sender must use packetization mode 0 or 1",
        packet_type_name(*nal_type)
    )]
    UnsupportedPacket { seq: u16, nal_type: u8 },
    #[error("RTP packet {seq}: STAP-A unit at byte {offset} {problem}")]
    BadStapA {
        seq: u16,
        offset: usize,
        problem: StapProblem,
    },
    #[error("RTP packet {seq}: FU-A payload of {len} bytes has no room for the FU header")]
    ShortFuA { seq: u16, len: usize },
    #[error("RTP packet {seq}: FU-A fragment without its start fragment")]
    FuAWithoutStart { seq: u16 },
    #[error("RTP packet {seq}: a new NAL unit began before the FU-A in progress ended")]
    FuAInterrupted { seq: u16 },
    #[error(
        "RTP packet {seq}: access unit exceeds {} bytes; dropped",
        MAX_ACCESS_UNIT_BYTES
    )]
    TooLarge { seq: u16 },
    #[error("NAL length size {0} is not 1, 2, 3 or 4")]
    BadLengthSize(usize),
    #[error("length-prefixed NAL unit at byte {offset}: {}", match size {
        Some(s) => format!("claims {s} bytes but {remaining} remain"),
        None => format!("only {remaining} bytes left for the length prefix"),
    })]
    BadLength {
        offset: usize,
        size: Option<usize>,
        remaining: usize,
    },
    #[error("sprop-parameter-sets: {0}")]
    BadSprop(String),
    #[error("SPS: {reason} (at bit {bit} of the RBSP)")]
    BadSps { reason: &'static str, bit: usize },
}

/// What is wrong with a STAP-A aggregation unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StapProblem {
    /// Fewer than two bytes left for the size field.
    NoSize { remaining: usize },
    /// The size runs past the end of the packet.
    Overrun { size: usize, remaining: usize },
}

impl std::fmt::Display for StapProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StapProblem::NoSize { remaining } => {
                write!(f, "has only {remaining} bytes left for its size")
            }
            StapProblem::Overrun { size, remaining } => {
                write!(f, "claims {size} bytes but {remaining} remain")
            }
        }
    }
}

fn packet_type_name(t: u8) -> &'static str {
    match t {
        STAP_B => "STAP-B",
        MTAP16 => "MTAP16",
        MTAP24 => "MTAP24",
        FU_B => "FU-B",
        0 | 30 | 31 => "reserved",
        _ => "NAL unit",
    }
}

/// A finished access unit from [`Depacketizer::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Depacketized {
    pub au: AccessUnit,
    /// Packets were lost (or damaged) since the previous access unit: references may be
    /// missing, so the caller should wait for a keyframe or ask for one.
    pub after_loss: bool,
}

struct Pending {
    ts: u32,
    nals: Vec<Bytes>,
    bytes: usize,
}

/// RTP → access units. Handles single NAL unit packets (types 1-23), STAP-A (24) and FU-A
/// (28); STAP-B, MTAP and FU-B (interleaved mode) are rejected with an error.
///
/// Packets must arrive in order: a packet that is a little late is dropped as a duplicate, and
/// the gap it left has already cost its access unit. (RTSP over TCP never reorders; on a LAN,
/// UDP hardly does.)
pub struct Depacketizer {
    next_seq: Option<u16>,
    pending: Option<Pending>,
    fu: Option<BytesMut>,
    /// At the start and after loss or damage, packets are dropped until one begins an access
    /// unit whose timestamp is not `skip_ts`, so that no partial picture goes out.
    resync: bool,
    /// The timestamp of the access unit that was discarded last.
    skip_ts: Option<u32>,
    /// Timestamp and marker of the previous packet, if it was the one right before this one.
    prev: Option<(u32, bool)>,
    loss: bool,
    /// Finished access units not yet handed out (a packet can finish two: the marker-less one
    /// before it, and its own).
    ready: VecDeque<Depacketized>,
}

impl Default for Depacketizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Depacketizer {
    pub fn new() -> Self {
        Depacketizer {
            next_seq: None,
            pending: None,
            fu: None,
            resync: true,
            skip_ts: None,
            prev: None,
            loss: false,
            ready: VecDeque::with_capacity(2),
        }
    }

    /// Feeds one packet; returns a finished access unit when the marker bit ends one, or when
    /// a packet with a new timestamp arrives while one is pending (cameras that never set the
    /// marker).
    ///
    /// A sequence gap discards the partial access unit (and an FU-A in progress) and the next
    /// returned access unit has `after_loss` set. A malformed packet does the same and returns
    /// its error. Rarely a packet finishes two access units; the second waits in
    /// [`pop_ready`](Self::pop_ready) and is otherwise returned by the next `push`.
    pub fn push(&mut self, pkt: &rtc::rtp::Packet) -> Result<Option<Depacketized>, H264Error> {
        let seq = pkt.header.sequence_number;
        let ts = pkt.header.timestamp;
        let payload = &pkt.payload;
        if let Some(expected) = self.next_seq {
            let ahead = seq.wrapping_sub(expected);
            if ahead != 0 {
                if ahead >= 0x8000 && expected.wrapping_sub(seq) <= MAX_LATE {
                    // A duplicate or a straggler: its slot is already counted as lost.
                    return Ok(self.ready.pop_front());
                }
                self.damage();
                self.prev = None;
            }
        }
        self.next_seq = Some(seq.wrapping_add(1));
        // Right after a marker or a timestamp change, a new access unit begins, whatever its
        // first NAL unit looks like (arbitrary slice order, NAL types we do not know).
        let boundary = self.prev.is_some_and(|(t, marker)| marker || t != ts);
        self.prev = Some((ts, pkt.header.marker));
        if payload.is_empty() {
            // Padding only (bandwidth probes).
            return Ok(self.ready.pop_front());
        }
        if self.resync {
            if self.skip_ts == Some(ts) || !(boundary || starts_access_unit(payload)) {
                self.skip_ts = Some(ts);
                return Ok(self.ready.pop_front());
            }
            self.resync = false;
            self.skip_ts = None;
        }
        if self.pending.as_ref().is_some_and(|p| p.ts != ts) {
            self.finish();
        }
        if let Err(e) = self.depacketize(seq, ts, payload) {
            self.damage();
            return Err(e);
        }
        if pkt.header.marker {
            self.finish();
        }
        Ok(self.ready.pop_front())
    }

    /// An access unit finished by the last [`push`](Self::push) but not returned by it.
    pub fn pop_ready(&mut self) -> Option<Depacketized> {
        self.ready.pop_front()
    }

    /// Throws away the access unit in progress after loss or a malformed packet.
    fn damage(&mut self) {
        if let Some(p) = self.pending.take() {
            self.skip_ts = Some(p.ts);
        }
        self.fu = None;
        self.loss = true;
        self.resync = true;
    }

    fn finish(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if self.fu.take().is_some() {
            // The last NAL unit never got its end fragment.
            self.loss = true;
            return;
        }
        if p.nals.is_empty() {
            return;
        }
        self.ready.push_back(Depacketized {
            au: AccessUnit {
                ts: p.ts,
                nals: p.nals,
            },
            after_loss: std::mem::take(&mut self.loss),
        });
    }

    fn depacketize(&mut self, seq: u16, ts: u32, payload: &Bytes) -> Result<(), H264Error> {
        let pending = self.pending.get_or_insert_with(|| Pending {
            ts,
            nals: Vec::new(),
            bytes: 0,
        });
        // `payload` is not empty (checked by the caller).
        let t = payload[0] & 0x1F;
        match t {
            1..=23 => {
                if self.fu.is_some() {
                    return Err(H264Error::FuAInterrupted { seq });
                }
                add_nal(pending, seq, payload.clone())
            }
            STAP_A => {
                // RFC 6184 5.7.1: header byte, then (16-bit size, NAL unit)*.
                if self.fu.is_some() {
                    return Err(H264Error::FuAInterrupted { seq });
                }
                let mut offset = 1;
                while offset < payload.len() {
                    let remaining = payload.len() - offset;
                    if remaining < 2 {
                        return Err(H264Error::BadStapA {
                            seq,
                            offset,
                            problem: StapProblem::NoSize { remaining },
                        });
                    }
                    let size = u16::from_be_bytes([payload[offset], payload[offset + 1]]) as usize;
                    if size > remaining - 2 {
                        return Err(H264Error::BadStapA {
                            seq,
                            offset,
                            problem: StapProblem::Overrun {
                                size,
                                remaining: remaining - 2,
                            },
                        });
                    }
                    let start = offset + 2;
                    if size > 0 {
                        add_nal(pending, seq, payload.slice(start..start + size))?;
                    }
                    offset = start + size;
                }
                Ok(())
            }
            FU_A => {
                // RFC 6184 5.8: FU indicator (F, NRI, 28), FU header (S, E, R, type), data.
                if payload.len() < 2 {
                    return Err(H264Error::ShortFuA {
                        seq,
                        len: payload.len(),
                    });
                }
                let (indicator, header) = (payload[0], payload[1]);
                let (start, end) = (header & 0x80 != 0, header & 0x40 != 0);
                if start {
                    if self.fu.is_some() {
                        return Err(H264Error::FuAInterrupted { seq });
                    }
                    let mut nal = BytesMut::with_capacity(payload.len() * 4);
                    nal.put_u8((indicator & 0xE0) | (header & 0x1F));
                    self.fu = Some(nal);
                }
                let Some(nal) = self.fu.as_mut() else {
                    return Err(H264Error::FuAWithoutStart { seq });
                };
                if pending.bytes + nal.len() + payload.len() > MAX_ACCESS_UNIT_BYTES {
                    return Err(H264Error::TooLarge { seq });
                }
                nal.extend_from_slice(&payload[2..]);
                if end {
                    // Both S and E in one FU is forbidden (RFC 6184 5.8) but harmless: it is a
                    // whole NAL unit, so take it.
                    let nal = self.fu.take().map(BytesMut::freeze).unwrap_or_default();
                    add_nal(pending, seq, nal)?;
                }
                Ok(())
            }
            _ => Err(H264Error::UnsupportedPacket { seq, nal_type: t }),
        }
    }
}

fn add_nal(pending: &mut Pending, seq: u16, nal: Bytes) -> Result<(), H264Error> {
    if pending.bytes + nal.len() > MAX_ACCESS_UNIT_BYTES {
        return Err(H264Error::TooLarge { seq });
    }
    pending.bytes += nal.len();
    pending.nals.push(nal);
    Ok(())
}

/// Whether an RTP payload can be the first of an access unit (H.264 7.4.1.2.3): an AUD, SPS,
/// PPS, SEI or types 14-18, or the first slice of a picture (`first_mb_in_slice` = 0, which
/// as ue(v) is a single 1 bit). Used after loss to tell a clean start from a torn picture.
fn starts_access_unit(payload: &[u8]) -> bool {
    fn nal_starts(header: u8, next: Option<u8>) -> bool {
        match header & 0x1F {
            NAL_SLICE | NAL_SLICE_PART_A | NAL_IDR => next.is_some_and(|b| b & 0x80 != 0),
            NAL_SEI | NAL_SPS | NAL_PPS | NAL_AUD | 14..=18 => true,
            _ => false,
        }
    }
    match payload {
        [h, rest @ ..] if h & 0x1F < STAP_A => nal_starts(*h, rest.first().copied()),
        [h, _, _, inner, rest @ ..] if h & 0x1F == STAP_A => {
            nal_starts(*inner, rest.first().copied())
        }
        [h, fu, rest @ ..] if h & 0x1F == FU_A => {
            fu & 0x80 != 0 && nal_starts(*fu, rest.first().copied())
        }
        _ => false,
    }
}

/// Latest SPS/PPS, from `sprop-parameter-sets` (fmtp) or learned in-band.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParameterSets {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

impl ParameterSets {
    /// Parses `sprop-parameter-sets=<base64>,<base64>` out of an fmtp line (RFC 6184 8.1),
    /// ignoring the other parameters. No `sprop-parameter-sets` at all is not an error: many
    /// cameras only send them in-band.
    pub fn from_fmtp(fmtp: &str) -> Result<Self, H264Error> {
        use base64::Engine as _;
        // Cameras differ on padding; accept both.
        const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let mut sets = ParameterSets::default();
        for param in fmtp.split(';') {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("sprop-parameter-sets") {
                continue;
            }
            for (i, b64) in value.trim().split(',').enumerate() {
                let b64 = b64.trim();
                if b64.is_empty() {
                    continue;
                }
                let nal = B64.decode(b64).map_err(|e| {
                    H264Error::BadSprop(format!("parameter set {} ({b64:?}): {e}", i + 1))
                })?;
                match nal_type(&nal) {
                    Some(NAL_SPS) => sets.sps = Some(nal.into()),
                    Some(NAL_PPS) => sets.pps = Some(nal.into()),
                    // Other NAL types (SEI, SPS extensions) have no use here.
                    _ => {}
                }
            }
        }
        Ok(sets)
    }

    /// Learns any SPS/PPS in `au`; if `au` is a keyframe without SPS/PPS, inserts the known
    /// ones before its first slice (SPS, PPS order), so that every keyframe forwarded can
    /// start a decoder.
    pub fn fix_up(&mut self, au: &mut AccessUnit) {
        let (mut has_sps, mut has_pps) = (false, false);
        for nal in &au.nals {
            match nal_type(nal) {
                Some(NAL_SPS) => {
                    has_sps = true;
                    self.sps = Some(nal.clone());
                }
                Some(NAL_PPS) => {
                    has_pps = true;
                    self.pps = Some(nal.clone());
                }
                _ => {}
            }
        }
        if !au.is_keyframe() {
            return;
        }
        let is_slice = |n: &Bytes| matches!(nal_type(n), Some(1..=5));
        if !has_pps {
            if let Some(pps) = &self.pps {
                let at = au.nals.iter().position(is_slice).unwrap_or(0);
                au.nals.insert(at, pps.clone());
            }
        }
        if !has_sps {
            if let Some(sps) = &self.sps {
                // Before the PPS: parsing a PPS needs its SPS.
                let at = au
                    .nals
                    .iter()
                    .position(|n| is_slice(n) || nal_type(n) == Some(NAL_PPS))
                    .unwrap_or(0);
                au.nals.insert(at, sps.clone());
            }
        }
    }

    pub fn sps(&self) -> Option<&Bytes> {
        self.sps.as_ref()
    }

    pub fn pps(&self) -> Option<&Bytes> {
        self.pps.as_ref()
    }

    /// The fmtp for an SDP offering this stream, e.g.
    /// `packetization-mode=1;profile-level-id=64001f;sprop-parameter-sets=Z2QAH6zZ...,aOvjyyLA`
    /// (`profile-level-id` is the SPS's bytes 1..4). `None` until an SPS is known.
    pub fn fmtp(&self) -> Option<String> {
        use base64::Engine as _;
        let sps = self.sps.as_ref().filter(|s| s.len() >= 4)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut sprop = b64.encode(sps);
        if let Some(pps) = &self.pps {
            sprop.push(',');
            sprop.push_str(&b64.encode(pps));
        }
        Some(format!(
            "packetization-mode=1;profile-level-id={:02x}{:02x}{:02x};sprop-parameter-sets={sprop}",
            sps[1], sps[2], sps[3]
        ))
    }
}

/// Access unit → RTP payloads in packetization mode 1 (RFC 6184 5.6-5.8).
///
/// A NAL unit that fits goes alone (single NAL unit packet); a larger one is cut into FU-A
/// fragments; consecutive NAL units that fit together (SPS + PPS + a small SEI, typically) share
/// a STAP-A. The last payload of the access unit carries the marker.
#[derive(Debug, Clone)]
pub struct Packetizer {
    max_payload: usize,
}

impl Packetizer {
    /// `max_payload` is the largest RTP payload to produce, kept within 3 (the least that
    /// leaves room for FU-A data) and 65535 (STAP-A sizes are 16-bit).
    pub fn new(max_payload: usize) -> Self {
        Packetizer {
            max_payload: max_payload.clamp(3, 65_535),
        }
    }

    /// Appends the payloads of `au` to `out`, each with its marker bit. Payloads that are a
    /// whole NAL unit share its bytes; the others share one allocation per access unit.
    pub fn packetize(&self, au: &AccessUnit, out: &mut Vec<(Bytes, bool)>) {
        let max = self.max_payload;
        let first = out.len();
        let nals: Vec<&Bytes> = au.nals.iter().filter(|n| !n.is_empty()).collect();
        // Everything that is not a whole NAL unit is written here, then split off.
        let built: usize = nals
            .iter()
            .map(|n| {
                if n.len() > max {
                    n.len() + 2 * n.len().div_ceil(max - 2)
                } else {
                    n.len() + 3
                }
            })
            .sum();
        let mut buf = BytesMut::with_capacity(built);
        let mut i = 0;
        while i < nals.len() {
            let nal = nals[i];
            if nal.len() > max {
                let indicator = (nal[0] & 0xE0) | FU_A;
                let nal_type = nal[0] & 0x1F;
                let data = &nal[1..];
                let chunks = data.len().div_ceil(max - 2);
                for (k, chunk) in data.chunks(max - 2).enumerate() {
                    let mut header = nal_type;
                    if k == 0 {
                        header |= 0x80;
                    }
                    if k + 1 == chunks {
                        header |= 0x40;
                    }
                    buf.put_u8(indicator);
                    buf.put_u8(header);
                    buf.extend_from_slice(chunk);
                    out.push((buf.split().freeze(), false));
                }
                i += 1;
                continue;
            }
            // How many of the following NAL units fit in one STAP-A with this one.
            let mut size = 1 + 2 + nal.len();
            let mut j = i + 1;
            while j < nals.len() && size + 2 + nals[j].len() <= max {
                size += 2 + nals[j].len();
                j += 1;
            }
            if j - i < 2 {
                out.push((nal.clone(), false));
                i += 1;
                continue;
            }
            // F is the OR of the units' F bits, NRI their maximum (RFC 6184 5.7).
            let f = nals[i..j].iter().fold(0, |acc, n| acc | (n[0] & 0x80));
            let nri = nals[i..j].iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
            buf.put_u8(f | nri | STAP_A);
            for n in &nals[i..j] {
                // Fits: the whole STAP-A is at most `max`, which is at most 65535.
                buf.put_u16(n.len() as u16);
                buf.extend_from_slice(n);
            }
            out.push((buf.split().freeze(), false));
            i = j;
        }
        if out.len() > first {
            if let Some(last) = out.last_mut() {
                last.1 = true;
            }
        }
    }
}

/// What the decoder needs to know about a stream, from its SPS (H.264 7.3.2.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    /// `constraint_set0_flag` .. `constraint_set5_flag` and the reserved bits, as one byte.
    pub constraints: u8,
    pub level_idc: u8,
    /// Displayed size, after frame cropping.
    pub width: u32,
    pub height: u32,
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`), stopping after `limit` output
/// bytes.
fn unescape(data: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().min(limit));
    let mut zeros = 0;
    for &b in data {
        if out.len() >= limit {
            break;
        }
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// An MSB-first bit reader with exp-Golomb codes (H.264 9.1).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

type BitResult<T> = Result<T, &'static str>;

impl BitReader<'_> {
    fn bit(&mut self) -> BitResult<u32> {
        let byte = self.data.get(self.pos / 8).ok_or("truncated")?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(b as u32)
    }

    fn flag(&mut self) -> BitResult<bool> {
        Ok(self.bit()? == 1)
    }

    fn bits(&mut self, n: u32) -> BitResult<u32> {
        let mut v = 0u32;
        for _ in 0..n.min(32) {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    fn ue(&mut self) -> BitResult<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("exp-Golomb code longer than 32 bits");
            }
        }
        let rest = self.bits(zeros)? as u64;
        // At most 2^32 - 2 (31 zeros), so it fits.
        Ok(((1u64 << zeros) - 1 + rest) as u32)
    }

    fn se(&mut self) -> BitResult<i64> {
        let k = self.ue()? as i64;
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    /// Reads ue(v) and checks it against the syntax element's range.
    fn ue_max(&mut self, max: u32, what: &'static str) -> BitResult<u32> {
        let v = self.ue()?;
        if v > max {
            return Err(what);
        }
        Ok(v)
    }
}

/// Profiles whose SPS carries chroma format, bit depth and scaling matrices (7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Parses an SPS NAL unit (header byte included) far enough to know the picture size.
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, H264Error> {
    match nal_type(nal) {
        Some(NAL_SPS) => {}
        _ => {
            return Err(H264Error::BadSps {
                reason: "not an SPS NAL unit (type 7)",
                bit: 0,
            })
        }
    }
    let rbsp = unescape(&nal[1..], usize::MAX);
    let mut r = BitReader {
        data: &rbsp,
        pos: 0,
    };
    let info = parse_sps_rbsp(&mut r).map_err(|reason| H264Error::BadSps { reason, bit: r.pos })?;
    Ok(info)
}

fn parse_sps_rbsp(r: &mut BitReader<'_>) -> BitResult<SpsInfo> {
    let profile_idc = r.bits(8)? as u8;
    let constraints = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    r.ue_max(31, "seq_parameter_set_id above 31")?;
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if has_chroma_info(profile_idc) {
        chroma_format_idc = r.ue_max(3, "chroma_format_idc above 3")?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        r.ue_max(6, "bit_depth_luma_minus8 above 6")?;
        r.ue_max(6, "bit_depth_chroma_minus8 above 6")?;
        r.flag()?; // qpprime_y_zero_transform_bypass_flag
        if r.flag()? {
            // seq_scaling_matrix_present_flag
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_scaling_list(r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue_max(12, "log2_max_frame_num_minus4 above 12")?;
    match r.ue_max(2, "pic_order_cnt_type above 2")? {
        0 => {
            r.ue_max(12, "log2_max_pic_order_cnt_lsb_minus4 above 12")?;
        }
        1 => {
            r.flag()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue_max(255, "num_ref_frames_in_pic_order_cnt_cycle above 255")?;
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.flag()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? as u64 + 1;
    let height_map_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.flag()?;
    if !frame_mbs_only {
        r.flag()?; // mb_adaptive_frame_field_flag
    }
    r.flag()?; // direct_8x8_inference_flag
    let mut crop = [0u64; 4];
    if r.flag()? {
        for c in &mut crop {
            *c = r.ue()? as u64;
        }
    }
    // 7.4.2.1.1: crop units depend on the chroma format (ChromaArrayType) and field coding.
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_width, sub_height) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (crop_x, crop_y) = if chroma_array_type == 0 {
        (1, field_factor)
    } else {
        (sub_width, sub_height * field_factor)
    };
    let full_width = width_mbs * 16;
    let full_height = height_map_units * 16 * field_factor;
    let cropped_x = crop_x * (crop[0] + crop[1]);
    let cropped_y = crop_y * (crop[2] + crop[3]);
    if cropped_x >= full_width || cropped_y >= full_height {
        return Err("frame cropping removes the whole picture");
    }
    let width = full_width - cropped_x;
    let height = full_height - cropped_y;
    // Level 6.2 allows 139264 macroblocks per frame; anything beyond 16K pixels is garbage.
    if width > 16384 || height > 16384 {
        return Err("picture larger than 16384 pixels");
    }
    Ok(SpsInfo {
        profile_idc,
        constraints,
        level_idc,
        width: width as u32,
        height: height as u32,
    })
}

/// Skips a `scaling_list()` (7.3.2.1.1.1): its deltas must be read to find its end.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> BitResult<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            if !(-128..=127).contains(&delta) {
                return Err("delta_scale outside -128..127");
            }
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Whether any slice of `au` is a B slice (`slice_type` 1 or 6, after `first_mb_in_slice` in
/// the slice header). Browsers decode B frames, but they reorder pictures, so this tells a
/// bridge that the stream has latency and timestamps out of presentation order.
pub fn has_b_slices(au: &AccessUnit) -> bool {
    au.nals.iter().any(|nal| {
        if !matches!(nal_type(nal), Some(NAL_SLICE | NAL_SLICE_PART_A | NAL_IDR)) {
            return false;
        }
        // Two ue(v) of at most 63 bits each fit in 16 bytes.
        let head = unescape(&nal[1..], 16);
        let mut r = BitReader {
            data: &head,
            pos: 0,
        };
        let slice_type = r.ue().and_then(|_first_mb| r.ue());
        matches!(slice_type, Ok(1 | 6))
    })
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven tests spell out their rows' types
mod tests {
    use super::*;
    use rtc::rtp::header::Header;
    use rtc::rtp::Packet;

    const HIGH_BFRAMES: &[u8] = include_bytes!("../../testdata/h264/high-bframes.h264");
    const HIGH_NO_BFRAMES: &[u8] = include_bytes!("../../testdata/h264/high-nobframes.h264");
    const BASELINE: &[u8] = include_bytes!("../../testdata/h264/baseline.h264");

    fn pkt(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Packet {
        Packet {
            header: Header {
                version: 2,
                marker,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 0x1234_5678,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn au(ts: u32, nals: &[&[u8]]) -> AccessUnit {
        AccessUnit {
            ts,
            nals: nals.iter().map(|n| Bytes::copy_from_slice(n)).collect(),
        }
    }

    /// A NAL unit of `len` bytes with header `header` and a recognisable body.
    fn nal(header: u8, len: usize) -> Bytes {
        let mut v = vec![header];
        v.extend((1..len).map(|i| (i * 7 + len) as u8));
        if let Some(b) = v.get_mut(1) {
            // first_mb_in_slice = 0, so that a slice starts its access unit
            *b |= 0x80;
        }
        Bytes::from(v)
    }

    /// Splits a raw H.264 elementary stream into access units: a new one begins at the first
    /// non-VCL NAL unit after a slice, or at a slice with `first_mb_in_slice` = 0.
    fn access_units(stream: &[u8]) -> Vec<AccessUnit> {
        let all = AccessUnit::from_annex_b(0, stream);
        let mut out: Vec<AccessUnit> = Vec::new();
        let mut has_slice = false;
        for n in all.nals {
            let vcl = matches!(nal_type(&n), Some(1..=5));
            let starts = if vcl {
                n.get(1).is_some_and(|b| b & 0x80 != 0)
            } else {
                has_slice
            };
            if out.is_empty() || (starts && has_slice) {
                out.push(AccessUnit {
                    ts: 3000 * out.len() as u32,
                    nals: Vec::new(),
                });
                has_slice = false;
            }
            has_slice |= vcl;
            out.last_mut().unwrap().nals.push(n);
        }
        out
    }

    fn packetize(au: &AccessUnit, max: usize) -> Vec<(Bytes, bool)> {
        let mut out = Vec::new();
        Packetizer::new(max).packetize(au, &mut out);
        out
    }

    /// Feeds payloads as consecutive packets; collects what comes out.
    fn feed(
        d: &mut Depacketizer,
        seq: &mut u16,
        ts: u32,
        payloads: &[(Bytes, bool)],
    ) -> Vec<Depacketized> {
        let mut got = Vec::new();
        for (p, marker) in payloads {
            let r = d.push(&pkt(*seq, ts, *marker, p)).unwrap();
            *seq = seq.wrapping_add(1);
            got.extend(r);
            got.extend(d.pop_ready());
        }
        got
    }

    #[test]
    fn annex_b_and_avcc_split() {
        let cases: &[(&str, &[u8], &[&[u8]])] = &[
            ("empty", &[], &[]),
            ("no start code", &[0x65, 1, 2], &[]),
            (
                "3-byte",
                &[0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2],
                &[&[0x67, 1], &[0x68, 2]],
            ),
            (
                "4-byte, leading zeros, trailing zeros",
                &[0, 0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x65, 9, 0, 0],
                &[&[0x67, 1], &[0x65, 9]],
            ),
            (
                "empty NAL units skipped",
                &[0, 0, 1, 0, 0, 1, 0x09, 0xF0],
                &[&[0x09, 0xF0]],
            ),
            (
                "emulation prevention kept",
                &[0, 0, 1, 0x06, 0, 0, 3, 1],
                &[&[0x06, 0, 0, 3, 1]],
            ),
        ];
        for (name, input, want) in cases {
            let got = AccessUnit::from_annex_b(7, input);
            assert_eq!(got, au(7, want), "{name}");
            // to_annex_b → from_annex_b is the identity.
            assert_eq!(
                AccessUnit::from_annex_b(7, &got.to_annex_b()),
                got,
                "{name}"
            );
        }

        let avcc: &[(&str, &[u8], usize, Result<&[&[u8]], H264Error>)] = &[
            (
                "4-byte",
                &[0, 0, 0, 2, 0x67, 1, 0, 0, 0, 1, 0x68],
                4,
                Ok(&[&[0x67, 1], &[0x68]]),
            ),
            (
                "2-byte",
                &[0, 1, 0x65, 0, 0, 0, 1, 0x41],
                2,
                Ok(&[&[0x65], &[0x41]]),
            ),
            ("1-byte", &[1, 0x65], 1, Ok(&[&[0x65]])),
            (
                "overrun",
                &[0, 0, 0, 9, 0x65],
                4,
                Err(H264Error::BadLength {
                    offset: 0,
                    size: Some(9),
                    remaining: 1,
                }),
            ),
            (
                "torn prefix",
                &[0, 1, 0x65, 0],
                2,
                Err(H264Error::BadLength {
                    offset: 3,
                    size: None,
                    remaining: 1,
                }),
            ),
            ("bad length size", &[], 5, Err(H264Error::BadLengthSize(5))),
        ];
        for (name, input, size, want) in avcc {
            let got = AccessUnit::from_avcc(1, input, *size);
            assert_eq!(got, want.clone().map(|n| au(1, n)), "{name}");
        }
    }

    #[test]
    fn depacketizes_single_stap_a_and_fu_a() {
        #[rustfmt::skip]
        let stap_a: &[u8] = &[
            0x78,             // STAP-A: F=0, NRI=3, type 24
            0x00, 0x04,       // size 4
            0x67, 0x42, 0xC0, 0x1F, // SPS
            0x00, 0x02,       // size 2
            0x68, 0xCE,       // PPS
            0x00, 0x00,       // size 0 (tolerated, skipped)
        ];
        #[rustfmt::skip]
        let fu_start: &[u8] = &[
            0x7C,             // FU indicator: NRI=3, type 28
            0x85,             // FU header: S=1, type 5 (IDR)
            0x88, 0x84,       // first bytes of the IDR slice
        ];
        #[rustfmt::skip]
        let fu_middle: &[u8] = &[0x7C, 0x05, 0x21];
        #[rustfmt::skip]
        let fu_end: &[u8] = &[0x7C, 0x45, 0x22, 0x23]; // E=1
        let mut d = Depacketizer::new();
        for (i, p) in [stap_a, fu_start, fu_middle].iter().enumerate() {
            assert_eq!(d.push(&pkt(i as u16, 90, false, p)).unwrap(), None);
        }
        let got = d.push(&pkt(3, 90, true, fu_end)).unwrap().unwrap();
        assert!(!got.after_loss);
        assert_eq!(
            got.au,
            au(
                90,
                &[
                    &[0x67, 0x42, 0xC0, 0x1F],
                    &[0x68, 0xCE],
                    &[0x65, 0x88, 0x84, 0x21, 0x22, 0x23],
                ]
            )
        );
        assert!(got.au.is_keyframe());

        // A single NAL unit packet with the marker: one P slice.
        let got = d
            .push(&pkt(4, 3090, true, &[0x41, 0x9A, 1]))
            .unwrap()
            .unwrap();
        assert_eq!(got.au, au(3090, &[&[0x41, 0x9A, 1]]));
        assert!(!got.au.is_keyframe());
    }

    #[test]
    fn rejects_malformed_packets() {
        let cases: &[(&str, &[u8], H264Error)] = &[
            (
                "STAP-B",
                &[0x19, 0, 0, 0, 1, 0x65],
                H264Error::UnsupportedPacket {
                    seq: 1,
                    nal_type: 25,
                },
            ),
            (
                "MTAP16",
                &[0x1A, 0, 0],
                H264Error::UnsupportedPacket {
                    seq: 1,
                    nal_type: 26,
                },
            ),
            (
                "FU-B",
                &[0x1D, 0x85, 0, 0, 1],
                H264Error::UnsupportedPacket {
                    seq: 1,
                    nal_type: 29,
                },
            ),
            (
                "reserved type 30",
                &[0x1E, 1],
                H264Error::UnsupportedPacket {
                    seq: 1,
                    nal_type: 30,
                },
            ),
            (
                // 0x18 STAP-A, size 0x10 but only 1 byte follows
                "STAP-A overrun",
                &[0x18, 0x00, 0x10, 0x67],
                H264Error::BadStapA {
                    seq: 1,
                    offset: 1,
                    problem: StapProblem::Overrun {
                        size: 16,
                        remaining: 1,
                    },
                },
            ),
            (
                "STAP-A torn size",
                &[0x18, 0x00, 0x01, 0x09, 0x00],
                H264Error::BadStapA {
                    seq: 1,
                    offset: 4,
                    problem: StapProblem::NoSize { remaining: 1 },
                },
            ),
            (
                "FU-A without header",
                &[0x1C],
                H264Error::ShortFuA { seq: 1, len: 1 },
            ),
        ];
        for (name, payload, want) in cases {
            let mut d = Depacketizer::new();
            // An AUD starts the access unit so that the packet under test is parsed.
            assert_eq!(d.push(&pkt(0, 5, false, &[0x09, 0xF0])).unwrap(), None);
            assert_eq!(
                d.push(&pkt(1, 5, true, payload)),
                Err(want.clone()),
                "{name}"
            );
            // The damaged access unit is gone; the next one is flagged.
            let next = d.push(&pkt(2, 10, true, &[0x65, 0x88])).unwrap().unwrap();
            assert!(next.after_loss, "{name}");
            assert_eq!(next.au, au(10, &[&[0x65, 0x88]]), "{name}");
        }
    }

    #[test]
    fn fu_a_protocol_errors() {
        // An FU-A middle fragment with nothing started.
        let mut d = Depacketizer::new();
        d.push(&pkt(0, 1, false, &[0x09, 0xF0])).unwrap();
        assert_eq!(
            d.push(&pkt(1, 1, false, &[0x7C, 0x05, 1])),
            Err(H264Error::FuAWithoutStart { seq: 1 })
        );
        // A single NAL unit in the middle of an FU-A.
        let mut d = Depacketizer::new();
        d.push(&pkt(0, 1, false, &[0x7C, 0x85, 0x88])).unwrap();
        assert_eq!(
            d.push(&pkt(1, 1, true, &[0x41, 0x9A])),
            Err(H264Error::FuAInterrupted { seq: 1 })
        );
        // A marker before the FU-A's end: the access unit is torn, nothing comes out.
        let mut d = Depacketizer::new();
        d.push(&pkt(0, 1, false, &[0x7C, 0x85, 0x88])).unwrap();
        assert_eq!(d.push(&pkt(1, 1, true, &[0x7C, 0x05, 2])), Ok(None));
        let next = d.push(&pkt(2, 2, true, &[0x41, 0x9A])).unwrap().unwrap();
        assert!(next.after_loss);
    }

    #[test]
    fn round_trips_through_packetizer() {
        let cases: Vec<(&str, AccessUnit, usize)> = vec![
            (
                "IDR larger than the MTU",
                AccessUnit {
                    ts: 1,
                    nals: vec![nal(0x67, 20), nal(0x68, 5), nal(0x65, 5000)],
                },
                1200,
            ),
            (
                "many small NAL units",
                AccessUnit {
                    ts: 2,
                    nals: (0..100).map(|i| nal(0x41, 10 + i)).collect(),
                },
                1200,
            ),
            (
                "exactly the MTU, one over, one under",
                AccessUnit {
                    ts: 3,
                    nals: vec![nal(0x41, 1200), nal(0x41, 1201), nal(0x41, 1199)],
                },
                1200,
            ),
            (
                "tiny MTU",
                AccessUnit {
                    ts: 4,
                    nals: vec![nal(0x67, 10), nal(0x65, 50)],
                },
                3,
            ),
            (
                "one-byte NAL units",
                AccessUnit {
                    ts: 5,
                    nals: vec![nal(0x09, 1), nal(0x0C, 1)],
                },
                1200,
            ),
        ];
        for (name, input, max) in cases {
            let payloads = packetize(&input, max);
            assert!(
                payloads.iter().all(|(p, _)| p.len() <= max.max(3)),
                "{name}"
            );
            let markers: Vec<bool> = payloads.iter().map(|(_, m)| *m).collect();
            assert_eq!(markers.iter().filter(|m| **m).count(), 1, "{name}");
            assert_eq!(markers.last(), Some(&true), "{name}");
            let mut d = Depacketizer::new();
            let mut seq = 65530; // wraps
            let got = feed(&mut d, &mut seq, input.ts, &payloads);
            assert_eq!(got.len(), 1, "{name}");
            assert_eq!(got[0].au, input, "{name}");
            assert!(!got[0].after_loss, "{name}");
        }
    }

    #[test]
    fn packetizer_aggregates_parameter_sets() {
        let input = AccessUnit {
            ts: 0,
            nals: vec![nal(0x67, 25), nal(0x68, 4), nal(0x06, 30), nal(0x65, 3000)],
        };
        let payloads = packetize(&input, 1200);
        // STAP-A(SPS, PPS, SEI), then 3 FU-A fragments of the IDR.
        assert_eq!(payloads.len(), 4);
        #[rustfmt::skip]
        let stap_head: &[u8] = &[
            0x78,       // NRI 3 (from the SPS), type 24
            0x00, 25,   // SPS size
        ];
        assert_eq!(&payloads[0].0[..3], stap_head);
        assert_eq!(payloads[0].0.len(), 1 + 2 + 25 + 2 + 4 + 2 + 30);
        assert_eq!(&payloads[1].0[..2], &[0x7C, 0x85]); // FU-A start of an IDR
        assert_eq!(&payloads[2].0[..2], &[0x7C, 0x05]);
        assert_eq!(&payloads[3].0[..2], &[0x7C, 0x45]); // end
        assert!(payloads[3].1);
    }

    #[test]
    fn round_trips_real_streams() {
        for (name, stream) in [
            ("high-bframes", HIGH_BFRAMES),
            ("high-nobframes", HIGH_NO_BFRAMES),
            ("baseline", BASELINE),
        ] {
            let aus = access_units(stream);
            assert!(aus.len() >= 10, "{name}: {} access units", aus.len());
            assert!(aus[0].is_keyframe(), "{name}");
            let mut d = Depacketizer::new();
            let mut seq = 100;
            let mut got = Vec::new();
            for a in &aus {
                got.extend(feed(&mut d, &mut seq, a.ts, &packetize(a, 1200)));
            }
            let got: Vec<AccessUnit> = got.into_iter().map(|d| d.au).collect();
            assert_eq!(got, aus, "{name}");
        }
    }

    #[test]
    fn loss_in_fu_a_discards_the_access_unit() {
        let idr = AccessUnit {
            ts: 1000,
            nals: vec![nal(0x67, 10), nal(0x68, 4), nal(0x65, 4000)],
        };
        let p_frame = AccessUnit {
            ts: 4000,
            nals: vec![nal(0x41, 2500)],
        };
        let next = AccessUnit {
            ts: 7000,
            nals: vec![nal(0x41, 300)],
        };
        let idr_packets = packetize(&idr, 1200);
        let p_packets = packetize(&p_frame, 1200);
        assert_eq!(p_packets.len(), 3);
        let mut d = Depacketizer::new();
        let mut seq = 0;
        let got = feed(&mut d, &mut seq, idr.ts, &idr_packets);
        assert_eq!(got.len(), 1);
        // The middle fragment of the P frame is lost.
        assert_eq!(d.push(&pkt(seq, 4000, false, &p_packets[0].0)), Ok(None));
        assert_eq!(d.push(&pkt(seq + 2, 4000, true, &p_packets[2].0)), Ok(None));
        seq += 3;
        let got = feed(&mut d, &mut seq, next.ts, &packetize(&next, 1200));
        assert_eq!(got.len(), 1);
        assert!(got[0].after_loss);
        assert_eq!(got[0].au, next);
        // And the one after is clean again.
        let got = feed(&mut d, &mut seq, 10_000, &packetize(&next, 1200));
        assert!(!got[0].after_loss);
    }

    #[test]
    fn loss_between_access_units_keeps_a_clean_start() {
        // The marker packet of frame 1 is lost; frame 2 starts cleanly with its first slice.
        let one = AccessUnit {
            ts: 1,
            nals: vec![nal(0x41, 2000)],
        };
        let two = AccessUnit {
            ts: 2,
            nals: vec![Bytes::from_static(&[0x65, 0x88, 1, 2])],
        };
        let p1 = packetize(&one, 1200);
        let mut d = Depacketizer::new();
        assert_eq!(d.push(&pkt(0, 1, false, &p1[0].0)), Ok(None));
        let got = d.push(&pkt(2, 2, true, &two.nals[0])).unwrap().unwrap();
        assert!(got.after_loss);
        assert_eq!(got.au, two);

        // If instead the first packet of frame 2 is lost, its rest is not passed on: the first
        // slice here has first_mb_in_slice = 5 (ue 00110).
        let mut d = Depacketizer::new();
        let mut seq = 0;
        assert_eq!(feed(&mut d, &mut seq, 1, &p1).len(), 1);
        assert_eq!(d.push(&pkt(seq + 1, 2, true, &[0x41, 0x30, 1])), Ok(None));
        let got = d
            .push(&pkt(seq + 2, 3, true, &[0x41, 0x80]))
            .unwrap()
            .unwrap();
        assert!(got.after_loss);
        assert_eq!(got.au.ts, 3);
    }

    #[test]
    fn stream_joined_mid_access_unit() {
        // The first packets are the tail of an FU-A: dropped without an error or loss flag.
        let mut d = Depacketizer::new();
        assert_eq!(d.push(&pkt(10, 1, false, &[0x7C, 0x05, 1])), Ok(None));
        assert_eq!(d.push(&pkt(11, 1, true, &[0x7C, 0x45, 2])), Ok(None));
        let got = d.push(&pkt(12, 2, true, &[0x65, 0x88])).unwrap().unwrap();
        assert!(!got.after_loss);
    }

    #[test]
    fn resyncs_at_a_marker_whatever_the_first_nal() {
        // Slices that never have first_mb_in_slice = 0 (arbitrary slice order): after the
        // first, partial access unit, the marker shows where the next begins.
        let mut d = Depacketizer::new();
        assert_eq!(d.push(&pkt(0, 1, true, &[0x41, 0x40])), Ok(None));
        let got = d.push(&pkt(1, 2, true, &[0x41, 0x40])).unwrap().unwrap();
        assert_eq!((got.au.ts, got.after_loss), (2, false));
        // After a gap only a recognisable start will do, then the marker again.
        assert_eq!(d.push(&pkt(3, 3, true, &[0x41, 0x40])), Ok(None));
        let got = d.push(&pkt(4, 4, true, &[0x41, 0x40])).unwrap().unwrap();
        assert_eq!((got.au.ts, got.after_loss), (4, true));
    }

    #[test]
    fn duplicates_and_restarts() {
        let mut d = Depacketizer::new();
        d.push(&pkt(100, 1, false, &[0x67, 1])).unwrap();
        // A duplicate of 100 is dropped silently and costs nothing.
        assert_eq!(d.push(&pkt(100, 1, false, &[0x67, 1])), Ok(None));
        let got = d.push(&pkt(101, 1, true, &[0x65, 0x88])).unwrap().unwrap();
        assert!(!got.after_loss);
        assert_eq!(got.au.nals.len(), 2);
        // A sender that restarts its numbering far back: treated as a gap, not as stale.
        let got = d.push(&pkt(5, 2, true, &[0x65, 0x88])).unwrap().unwrap();
        assert!(got.after_loss);
    }

    #[test]
    fn marker_less_camera() {
        // Two packets per frame, never a marker: a new timestamp ends the access unit.
        let mut d = Depacketizer::new();
        let mut out = Vec::new();
        let mut seq = 0;
        for frame in 0..4u32 {
            let ts = frame * 3000;
            for payload in [&[0x41, 0x9A][..], &[0x41, 0x1A]] {
                out.extend(d.push(&pkt(seq, ts, false, payload)).unwrap());
                seq += 1;
            }
        }
        assert_eq!(out.len(), 3);
        for (i, got) in out.iter().enumerate() {
            assert_eq!(got.au.ts, i as u32 * 3000);
            assert_eq!(got.au.nals.len(), 2);
        }
        // A one-packet frame with a marker finishes two access units at once.
        assert_eq!(
            d.push(&pkt(seq, 12_000, true, &[0x65, 0x88]))
                .unwrap()
                .unwrap()
                .au
                .ts,
            9000
        );
        assert_eq!(d.pop_ready().unwrap().au.ts, 12_000);
        assert_eq!(d.pop_ready(), None);
    }

    #[test]
    fn sprop_parsing() {
        // SPS 67 42 C0 1F / PPS 68 CE 3C 80.
        let cases: &[(&str, Result<(Option<&[u8]>, Option<&[u8]>), ()>)] = &[
            (
                "packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAHw==,aM48gA==",
                Ok((Some(&[0x67, 0x42, 0xC0, 0x1F]), Some(&[0x68, 0xCE, 0x3C, 0x80]))),
            ),
            (
                " sprop-parameter-sets = Z0LAHw,aM48gA ; packetization-mode=1",
                Ok((Some(&[0x67, 0x42, 0xC0, 0x1F]), Some(&[0x68, 0xCE, 0x3C, 0x80]))),
            ),
            ("packetization-mode=1", Ok((None, None))),
            ("", Ok((None, None))),
            ("sprop-parameter-sets=Z0LAHw==", Ok((Some(&[0x67, 0x42, 0xC0, 0x1F]), None))),
            ("sprop-parameter-sets=!!!,aM48gA==", Err(())),
        ];
        for (fmtp, want) in cases {
            let got = ParameterSets::from_fmtp(fmtp);
            match want {
                Ok((sps, pps)) => {
                    let got = got.unwrap();
                    assert_eq!(got.sps().map(|b| &b[..]), *sps, "{fmtp}");
                    assert_eq!(got.pps().map(|b| &b[..]), *pps, "{fmtp}");
                }
                Err(()) => assert!(matches!(got, Err(H264Error::BadSprop(_))), "{fmtp}"),
            }
        }
        let sets = ParameterSets::from_fmtp(cases[0].0).unwrap();
        assert_eq!(
            sets.fmtp().unwrap(),
            "packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAHw==,aM48gA=="
        );
        assert_eq!(ParameterSets::default().fmtp(), None);
    }

    #[test]
    fn fix_up_inserts_parameter_sets() {
        let sps: &[u8] = &[0x67, 0x42, 0xC0, 0x1F];
        let pps: &[u8] = &[0x68, 0xCE, 0x3C, 0x80];
        let aud: &[u8] = &[0x09, 0xF0];
        let sei: &[u8] = &[0x06, 5, 1, 0x80];
        let idr: &[u8] = &[0x65, 0x88];
        let p: &[u8] = &[0x41, 0x9A];
        let cases: &[(&str, &[&[u8]], &[&[u8]])] = &[
            ("IDR alone", &[idr], &[sps, pps, idr]),
            (
                "after AUD and SEI",
                &[aud, sei, idr, idr],
                &[aud, sei, sps, pps, idr, idr],
            ),
            ("has both", &[sps, pps, idr], &[sps, pps, idr]),
            ("has SPS only", &[sps, idr], &[sps, pps, idr]),
            ("has PPS only", &[aud, pps, idr], &[aud, sps, pps, idr]),
            ("not a keyframe", &[p], &[p]),
        ];
        for (name, input, want) in cases {
            let mut sets =
                ParameterSets::from_fmtp("sprop-parameter-sets=Z0LAHw==,aM48gA==").unwrap();
            let mut got = au(0, input);
            sets.fix_up(&mut got);
            assert_eq!(got, au(0, want), "{name}");
        }
        // Unknown parameter sets: nothing to insert; then learned in-band.
        let mut sets = ParameterSets::default();
        let mut bare = au(0, &[idr]);
        sets.fix_up(&mut bare);
        assert_eq!(bare, au(0, &[idr]));
        let new_sps: &[u8] = &[0x67, 0x64, 0x00, 0x1F, 0xAC];
        sets.fix_up(&mut au(1, &[new_sps, pps, idr]));
        assert_eq!(sets.sps().map(|b| &b[..]), Some(new_sps));
        assert!(sets.fmtp().unwrap().contains("profile-level-id=64001f"));
        let mut bare = au(2, &[idr]);
        sets.fix_up(&mut bare);
        assert_eq!(bare, au(2, &[new_sps, pps, idr]));
    }

    #[test]
    fn parse_sps_of_real_streams() {
        let cases = [
            ("high-bframes", HIGH_BFRAMES, (100, 0x00, 30, 640, 360)),
            ("high-nobframes", HIGH_NO_BFRAMES, (100, 0x00, 30, 640, 360)),
            ("baseline", BASELINE, (66, 0xC0, 13, 320, 240)),
        ];
        for (name, stream, (profile, constraints, level, width, height)) in cases {
            let first = &access_units(stream)[0];
            let sps = first
                .nals
                .iter()
                .find(|n| nal_type(n) == Some(NAL_SPS))
                .unwrap();
            let info = parse_sps(sps).unwrap();
            assert_eq!(
                info,
                SpsInfo {
                    profile_idc: profile,
                    constraints,
                    level_idc: level,
                    width,
                    height
                },
                "{name}"
            );
        }
    }

    /// Writes SPS bit fields, for the syntax the fixtures do not exercise.
    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn bit(&mut self, b: u32) -> &mut Self {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if b != 0 {
                *self.bytes.last_mut().unwrap() |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
            self
        }
        fn bits(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1);
            }
            self
        }
        fn ue(&mut self, v: u32) -> &mut Self {
            let x = v as u64 + 1;
            let len = 64 - x.leading_zeros();
            self.bits(len - 1, 0);
            for i in (0..len).rev() {
                self.bit(((x >> i) & 1) as u32);
            }
            self
        }
        fn se(&mut self, v: i32) -> &mut Self {
            self.ue(if v > 0 {
                2 * v as u32 - 1
            } else {
                (-2 * v) as u32
            })
        }
        /// Adds the NAL header and emulation prevention.
        fn sps_nal(&mut self) -> Vec<u8> {
            self.bit(1); // rbsp_stop_one_bit
            let mut out = vec![0x67];
            let mut zeros = 0;
            for &b in &self.bytes {
                if zeros >= 2 && b <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                out.push(b);
            }
            out
        }
    }

    #[test]
    fn parse_sps_syntax_variants() {
        // High 4:2:2 with scaling lists, POC type 1, interlaced, cropped: 1920x1080i.
        let mut w = BitWriter::default();
        w.bits(8, 122).bits(8, 0).bits(8, 40).ue(0);
        w.ue(2).ue(2).ue(2).bit(0); // 4:2:2, 10 bit
        w.bit(1); // seq_scaling_matrix_present_flag
        for i in 0..8 {
            w.bit((i % 2 == 0) as u32);
            if i % 2 == 0 {
                // 8 → 13 → 10 → 130, then next = (130 + 126) % 256 = 0: the rest repeats 130.
                w.se(5).se(-3).se(120).se(126);
            }
        }
        w.ue(0).ue(1); // log2_max_frame_num_minus4, poc type 1
        w.bit(0).se(-2).se(3).ue(2).se(1).se(-1);
        w.ue(4).bit(0).ue(119).ue(33); // refs, gaps, 120 MBs wide, 34 map units
        w.bit(0).bit(1).bit(1); // frame_mbs_only=0, mbaff, direct_8x8
                                // Crop bottom 2 units; 4:2:2 has SubHeightC = 1 and field coding doubles it: 4 lines.
        w.bit(1).ue(0).ue(0).ue(0).ue(2);
        w.bit(0); // no VUI
        let info = parse_sps(&w.sps_nal()).unwrap();
        assert_eq!(
            (info.profile_idc, info.level_idc, info.width, info.height),
            (122, 40, 1920, 1084)
        );

        // Baseline, POC type 2, 4:2:0 crop right 4 units (8 pixels).
        let mut w = BitWriter::default();
        w.bits(8, 66).bits(8, 0xE0).bits(8, 31).ue(3);
        w.ue(4).ue(2).ue(1).bit(0).ue(79).ue(44).bit(1).bit(1);
        w.bit(1).ue(0).ue(4).ue(0).ue(0).bit(0);
        let info = parse_sps(&w.sps_nal()).unwrap();
        assert_eq!((info.width, info.height), (1272, 720));

        let bad: &[(&str, &[u8])] = &[
            ("empty", &[]),
            ("not an SPS", &[0x68, 0x42]),
            ("truncated", &[0x67, 0x64, 0x00]),
            (
                "endless exp-Golomb",
                &[0x67, 0x42, 0, 0x1F, 0, 0, 3, 0, 0, 3, 0, 0, 3, 0, 0, 0],
            ),
        ];
        for (name, input) in bad {
            assert!(
                matches!(parse_sps(input), Err(H264Error::BadSps { .. })),
                "{name}"
            );
        }
        // High profile, chroma_format_idc 7.
        let mut w = BitWriter::default();
        w.bits(8, 100).bits(8, 0).bits(8, 30).ue(0).ue(7);
        assert_eq!(
            parse_sps(&w.sps_nal()),
            Err(H264Error::BadSps {
                reason: "chroma_format_idc above 3",
                bit: 32
            })
        );
        // Cropping everything.
        let mut w = BitWriter::default();
        w.bits(8, 66).bits(8, 0).bits(8, 30).ue(0);
        w.ue(0).ue(2).ue(0).bit(0).ue(0).ue(0).bit(1).bit(1);
        w.bit(1).ue(8).ue(0).ue(0).ue(0);
        assert!(parse_sps(&w.sps_nal()).is_err());
    }

    #[test]
    fn detects_b_slices() {
        for (name, stream, want) in [
            ("high-bframes", HIGH_BFRAMES, true),
            ("high-nobframes", HIGH_NO_BFRAMES, false),
            ("baseline", BASELINE, false),
        ] {
            let aus = access_units(stream);
            assert_eq!(aus.iter().any(has_b_slices), want, "{name}");
        }
        // Hand-made slice headers: first_mb 0 ("1"), slice_type as ue(v).
        let cases: &[(&[u8], bool)] = &[
            (&[0x41, 0b1010_0000], true),  // 1 | 010 = slice_type 1: B
            (&[0x01, 0b1001_1100], true),  // 1 | 00111 = 6: B (all slices of the picture)
            (&[0x41, 0b1100_0000], false), // 1 | 1 = 0: P
            (&[0x65, 0b1011_0000], false), // 1 | 011 = 2: I
            (&[0x41], false),              // truncated
        ];
        for &(slice, want) in cases {
            assert_eq!(has_b_slices(&au(0, &[slice])), want, "{slice:02x?}");
        }
    }

    use crate::bridge::TestRng as Rng;

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng::new(0x5EED);
        let real: Vec<(Bytes, bool)> = access_units(HIGH_BFRAMES)
            .iter()
            .flat_map(|a| packetize(a, 1200))
            .collect();
        let mut d = Depacketizer::new();
        let mut sets = ParameterSets::default();
        for round in 0..20_000u32 {
            // Half pure noise, half real packets with a few bytes flipped or truncated.
            let mut payload = if round % 2 == 0 {
                let len = rng.below(64);
                rng.bytes(len)
            } else {
                let mut p = real[rng.below(real.len())].0.to_vec();
                for _ in 0..rng.below(4) {
                    let i = rng.below(p.len());
                    p[i] ^= rng.next() as u8;
                }
                p.truncate(rng.below(p.len() + 1));
                p
            };
            let seq = if rng.below(10) == 0 {
                rng.next() as u16
            } else {
                round as u16
            };
            let marker = rng.below(4) == 0;
            if let Ok(Some(got)) = d.push(&pkt(seq, round / 3, marker, &payload)) {
                sets.fix_up(&mut got.au.clone());
                has_b_slices(&got.au);
                let _ = sets.fmtp();
            }
            let _ = parse_sps(&payload);
            if let Some(b) = payload.first_mut() {
                *b = 0x67;
            }
            let _ = parse_sps(&payload);
            let _ = AccessUnit::from_avcc(0, &payload, 1 + rng.below(4));
            let a = AccessUnit::from_annex_b(0, &payload);
            has_b_slices(&a);
            let mut out = Vec::new();
            Packetizer::new(rng.below(40)).packetize(&a, &mut out);
            let _ = ParameterSets::from_fmtp(&String::from_utf8_lossy(&payload));
        }
    }
}
