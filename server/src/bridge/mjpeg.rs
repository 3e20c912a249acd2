//! Motion JPEG cameras (RTP/JPEG, RFC 2435) turned into H.264 that every browser decodes.
//!
//! RTP/JPEG leaves the JPEG headers out: each packet carries a small header (type, Q factor,
//! size) and a piece of the entropy-coded scan. [`JpegDepacketizer`] puts the fragments back
//! together and writes the headers the RFC's Appendix A describes, giving an ordinary JFIF
//! image. [`MjpegTranscoder`] decodes it (zune-jpeg) and encodes Constrained Baseline H.264
//! with openh264.
//!
//! Invariants:
//! - No input panics: packets and JPEG data are untrusted, and every error names the packet
//!   (sequence number) or frame (timestamp).
//! - A frame with a lost fragment is dropped, never decoded half-grey: JPEG frames do not
//!   depend on each other, so the next complete frame is as good as any.
//! - The transcoder's output timestamps are the input's (both 90 kHz), so lip sync and RTCP
//!   sender reports of the camera stay valid.

use std::collections::{HashMap, VecDeque};

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
    UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::bridge::h264::AccessUnit;

/// Largest JPEG frame assembled; beyond it the sender is broken or hostile.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// How far behind the expected sequence number a packet may be and still count as a late
/// duplicate (dropped) rather than a sender that restarted its numbering.
const MAX_LATE: u16 = 64;

/// openh264's limit (3840x2160 in either orientation).
const MAX_LONG_SIDE: usize = 3840;
const MAX_SHORT_SIDE: usize = 2160;

/// A complete JPEG frame rebuilt from RTP/JPEG (RFC 2435 3.1, with the JFIF headers of
/// Appendix A).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegFrame {
    /// 90 kHz RTP timestamp.
    pub ts: u32,
    /// As the RTP/JPEG header says; 0 when not known (an HTTP camera's picture: the decoder
    /// reads the size from the JPEG itself, always).
    pub width: u32,
    pub height: u32,
    /// A whole JPEG image, SOI to EOI.
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum MjpegError {
    #[error("RTP packet {seq}: {len}-byte payload is too short for the RTP/JPEG headers")]
    Short { seq: u16, len: usize },
    #[error(
        "RTP packet {seq}: JPEG type {ty} is not supported (RFC 2435 defines 0, 1, 64 and 65); \
         set the camera to 4:2:0 or 4:2:2 baseline JPEG"
    )]
    UnsupportedType { seq: u16, ty: u8 },
    #[error("RTP packet {seq}: Q factor 0 is reserved")]
    ReservedQ { seq: u16 },
    #[error(
        "RTP packet {seq}: picture size is 0 (RTP/JPEG cannot describe pictures over 2040 \
         pixels); lower the camera's resolution"
    )]
    ZeroSize { seq: u16 },
    #[error("RTP packet {seq}: quantization table header: {problem}")]
    BadTables { seq: u16, problem: &'static str },
    #[error(
        "RTP packet {seq}: Q {q} refers to quantization tables sent earlier, but none arrived"
    )]
    MissingTables { seq: u16, q: u8 },
    #[error(
        "RTP packet {seq}: fragment at offset {got} of the frame at ts {ts}, expected {expected}"
    )]
    BadOffset {
        seq: u16,
        ts: u32,
        expected: usize,
        got: usize,
    },
    #[error("RTP packet {seq}: fragment does not match the frame it continues ({what} differs)")]
    Mismatch { seq: u16, what: &'static str },
    #[error("RTP packet {seq}: frame exceeds {} bytes; dropped", MAX_FRAME_BYTES)]
    TooLarge { seq: u16 },
    #[error("JPEG frame at ts {ts}: {reason}")]
    Decode { ts: u32, reason: String },
    #[error(
        "JPEG frame at ts {ts} is {width}x{height}; H.264 here takes 2x2 up to {}x{}",
        MAX_LONG_SIDE,
        MAX_SHORT_SIDE
    )]
    BadDimensions {
        ts: u32,
        width: usize,
        height: usize,
    },
    #[error("openh264 encoder at ts {ts}: {reason}")]
    Encode { ts: u32, reason: String },
}

/// Quantization tables in DQT order (zigzag), each 64 bytes or, where `precision` has its
/// bit set, 128 bytes of 16-bit values (RFC 2435 3.1.8).
#[derive(Debug, Clone, PartialEq, Eq)]
struct QTables {
    precision: u8,
    data: Vec<u8>,
}

impl QTables {
    /// The tables' extents in `data`, with their precision.
    fn tables(&self) -> impl Iterator<Item = (bool, &[u8])> {
        let mut offset = 0;
        (0..4).map_while(move |i| {
            let wide = self.precision & (1 << i) != 0;
            let len = if wide { 128 } else { 64 };
            let t = self.data.get(offset..offset + len)?;
            offset += len;
            Some((wide, t))
        })
    }

    /// The tables for Q factor 1..=99 (RFC 2435 Appendix A, `MakeTables`): the JPEG
    /// standard's example tables (ITU T.81 K.1, K.2) scaled like the IJG library does.
    fn from_q(q: u8) -> QTables {
        let factor = q.clamp(1, 99) as u32;
        let scale = if factor < 50 {
            5000 / factor
        } else {
            200 - factor * 2
        };
        let mut data = Vec::with_capacity(128);
        for base in [&LUMA_QUANTIZER, &CHROMA_QUANTIZER] {
            for &natural in &ZIGZAG {
                let v = (base[natural as usize] as u32 * scale + 50) / 100;
                data.push(v.clamp(1, 255) as u8);
            }
        }
        QTables { precision: 0, data }
    }
}

/// T.81 Table K.1 (luminance), natural order.
#[rustfmt::skip]
const LUMA_QUANTIZER: [u8; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
];

/// T.81 Table K.2 (chrominance), natural order.
#[rustfmt::skip]
const CHROMA_QUANTIZER: [u8; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
];

/// The natural-order index of each zigzag position (T.81 Figure A.6).
#[rustfmt::skip]
const ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10,
    17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34,
    27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36,
    29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46,
    53, 60, 61, 54, 47, 55, 62, 63,
];

/// The Huffman tables RTP/JPEG implies (T.81 K.3, RFC 2435 Appendix B): class/id, the
/// number of codes of each length 1..=16, and the symbols.
const HUFFMAN_TABLES: [(u8, [u8; 16], &[u8]); 4] = [
    (
        0x00,
        [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        &DC_SYMBOLS,
    ),
    (
        0x10,
        [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D],
        &LUMA_AC_SYMBOLS,
    ),
    (
        0x01,
        [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        &DC_SYMBOLS,
    ),
    (
        0x11,
        [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        &CHROMA_AC_SYMBOLS,
    ),
];

const DC_SYMBOLS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

/// T.81 Table K.5.
#[rustfmt::skip]
const LUMA_AC_SYMBOLS: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
    0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52,
    0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45,
    0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83,
    0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6,
    0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3,
    0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8,
    0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];

/// T.81 Table K.6.
#[rustfmt::skip]
const CHROMA_AC_SYMBOLS: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
    0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33,
    0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18,
    0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44,
    0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63,
    0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A,
    0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
    0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4,
    0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
    0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7,
    0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];

/// What every fragment of one frame must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameKind {
    ty: u8,
    q: u8,
    width: u16,
    height: u16,
}

struct PartialFrame {
    ts: u32,
    kind: FrameKind,
    header_len: usize,
    /// The JPEG headers, then the scan data received so far.
    data: Vec<u8>,
}

/// The main RTP/JPEG header and what follows it in one packet.
struct Fragment<'a> {
    offset: usize,
    kind: FrameKind,
    restart_interval: u16,
    /// Only in a frame's first packet with Q >= 128.
    tables: Option<QTables>,
    scan: &'a [u8],
}

/// RTP/JPEG → JPEG frames: fragments are joined by their offsets, the marker ends a frame,
/// and a lost fragment drops its frame.
pub struct JpegDepacketizer {
    next_seq: Option<u16>,
    frame: Option<PartialFrame>,
    /// Tables of Q 128..=254 are sent once and then referred to (RFC 2435 3.1.8).
    tables: HashMap<u8, QTables>,
    ready: VecDeque<JpegFrame>,
}

impl Default for JpegDepacketizer {
    fn default() -> Self {
        Self::new()
    }
}

impl JpegDepacketizer {
    pub fn new() -> Self {
        JpegDepacketizer {
            next_seq: None,
            frame: None,
            tables: HashMap::new(),
            ready: VecDeque::with_capacity(2),
        }
    }

    /// Feeds one packet; returns a frame when the marker bit ends one, or when a new frame
    /// starts while one is pending (senders that never set the marker). A sequence gap or a
    /// malformed packet drops the frame in progress. Rarely a packet finishes two frames; the
    /// second waits in [`pop_ready`](Self::pop_ready) and is otherwise returned by the next
    /// `push`.
    pub fn push(&mut self, pkt: &rtc::rtp::Packet) -> Result<Option<JpegFrame>, MjpegError> {
        let seq = pkt.header.sequence_number;
        let ts = pkt.header.timestamp;
        if let Some(expected) = self.next_seq {
            let ahead = seq.wrapping_sub(expected);
            if ahead != 0 {
                if ahead >= 0x8000 && expected.wrapping_sub(seq) <= MAX_LATE {
                    return Ok(self.ready.pop_front());
                }
                self.frame = None;
            }
        }
        self.next_seq = Some(seq.wrapping_add(1));
        if pkt.payload.is_empty() {
            return Ok(self.ready.pop_front());
        }
        if let Err(e) = self.add(seq, ts, &pkt.payload) {
            self.frame = None;
            return Err(e);
        }
        if pkt.header.marker {
            self.finish();
        }
        Ok(self.ready.pop_front())
    }

    /// A frame finished by the last [`push`](Self::push) but not returned by it.
    pub fn pop_ready(&mut self) -> Option<JpegFrame> {
        self.ready.pop_front()
    }

    fn add(&mut self, seq: u16, ts: u32, payload: &[u8]) -> Result<(), MjpegError> {
        let fragment = parse_fragment(seq, payload)?;
        if fragment.offset == 0 {
            if let Some(f) = &self.frame {
                if f.ts == ts {
                    // A repeated start: begin again.
                    self.frame = None;
                } else {
                    // The sender never set the marker on the previous frame.
                    self.finish();
                }
            }
            let kind = fragment.kind;
            let tables = match fragment.tables {
                Some(t) if t.data.is_empty() => self
                    .tables
                    .get(&kind.q)
                    .cloned()
                    .ok_or(MjpegError::MissingTables { seq, q: kind.q })?,
                Some(t) => {
                    if kind.q < 255 {
                        self.tables.insert(kind.q, t.clone());
                    }
                    t
                }
                None => QTables::from_q(kind.q),
            };
            let mut data = Vec::with_capacity(1024 + payload.len() * 8);
            write_headers(&mut data, kind, fragment.restart_interval, &tables);
            let header_len = data.len();
            data.extend_from_slice(fragment.scan);
            self.frame = Some(PartialFrame {
                ts,
                kind,
                header_len,
                data,
            });
            return Ok(());
        }
        let Some(frame) = self.frame.as_mut() else {
            // The frame's start was lost (or came before we joined): wait for the next one.
            return Ok(());
        };
        if frame.ts != ts {
            return Err(MjpegError::Mismatch {
                seq,
                what: "timestamp",
            });
        }
        if frame.kind != fragment.kind {
            return Err(MjpegError::Mismatch {
                seq,
                what: "type, Q or size",
            });
        }
        let expected = frame.data.len() - frame.header_len;
        if fragment.offset != expected {
            return Err(MjpegError::BadOffset {
                seq,
                ts,
                expected,
                got: fragment.offset,
            });
        }
        if frame.data.len() + fragment.scan.len() > MAX_FRAME_BYTES {
            return Err(MjpegError::TooLarge { seq });
        }
        frame.data.extend_from_slice(fragment.scan);
        Ok(())
    }

    fn finish(&mut self) {
        let Some(mut f) = self.frame.take() else {
            return;
        };
        if f.data.len() == f.header_len {
            return;
        }
        // Some cameras send the EOI, most leave it to the receiver.
        if !f.data.ends_with(&[0xFF, 0xD9]) {
            f.data.extend_from_slice(&[0xFF, 0xD9]);
        }
        self.ready.push_back(JpegFrame {
            ts: f.ts,
            width: f.kind.width as u32,
            height: f.kind.height as u32,
            data: f.data,
        });
    }
}

/// Parses the RTP/JPEG headers (RFC 2435 3.1): main header, restart marker header (types
/// 64-127), quantization table header (Q >= 128, first fragment only).
fn parse_fragment(seq: u16, p: &[u8]) -> Result<Fragment<'_>, MjpegError> {
    let short = || MjpegError::Short { seq, len: p.len() };
    let main = p.get(..8).ok_or_else(short)?;
    // main[0] is type-specific, unused by types 0/1.
    let offset = u32::from_be_bytes([0, main[1], main[2], main[3]]) as usize;
    let (ty, q) = (main[4], main[5]);
    let (width, height) = (main[6] as u16 * 8, main[7] as u16 * 8);
    let mut rest = &p[8..];
    let mut restart_interval = 0;
    if (64..128).contains(&ty) {
        // Restart interval, then F, L and the restart count (which only matter for decoding
        // around lost fragments; we drop such frames).
        let header = rest.get(..4).ok_or_else(short)?;
        restart_interval = u16::from_be_bytes([header[0], header[1]]);
        rest = &rest[4..];
    }
    if !matches!(ty, 0 | 1 | 64 | 65) {
        return Err(MjpegError::UnsupportedType { seq, ty });
    }
    if q == 0 {
        return Err(MjpegError::ReservedQ { seq });
    }
    if width == 0 || height == 0 {
        return Err(MjpegError::ZeroSize { seq });
    }
    let mut tables = None;
    if q >= 128 && offset == 0 {
        let header = rest.get(..4).ok_or_else(short)?;
        // header[0] must be zero; ignored as the RFC asks of receivers.
        let precision = header[1];
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        rest = &rest[4..];
        let data = rest.get(..len).ok_or(MjpegError::BadTables {
            seq,
            problem: "length runs past the packet",
        })?;
        if len == 0 && q == 255 {
            return Err(MjpegError::BadTables {
                seq,
                problem: "Q 255 requires tables in every frame",
            });
        }
        let t = QTables {
            precision,
            data: data.to_vec(),
        };
        let covered: usize = t.tables().map(|(_, d)| d.len()).sum();
        if covered != len {
            return Err(MjpegError::BadTables {
                seq,
                problem: "length is not a whole number of tables",
            });
        }
        rest = &rest[len..];
        tables = Some(t);
    }
    Ok(Fragment {
        offset,
        kind: FrameKind {
            ty,
            q,
            width,
            height,
        },
        restart_interval,
        tables,
        scan: rest,
    })
}

/// Writes SOI, DQT, DRI, SOF, DHT and SOS for a frame, as RFC 2435 Appendix A's
/// `MakeHeaders` does.
fn write_headers(out: &mut Vec<u8>, kind: FrameKind, restart_interval: u16, tables: &QTables) {
    fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
        out.extend_from_slice(&[0xFF, marker]);
        // Segments here are at most 2 + 4 * 129 bytes, well within u16.
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut count = 0;
    let mut wide = false;
    for (i, (w, t)) in tables.tables().enumerate() {
        let mut body = Vec::with_capacity(1 + t.len());
        body.push(((w as u8) << 4) | i as u8);
        body.extend_from_slice(t);
        segment(out, 0xDB, &body);
        count += 1;
        wide |= w;
    }
    if restart_interval > 0 {
        segment(out, 0xDD, &restart_interval.to_be_bytes());
    }
    // Type 0 is 4:2:2 (luma 2x1), type 1 is 4:2:0 (luma 2x2); chroma uses table 1 when there
    // is one (a single table serves all components).
    let luma_sampling = if kind.ty & 1 == 0 { 0x21 } else { 0x22 };
    let chroma_table = if count > 1 { 1 } else { 0 };
    let [h0, h1] = kind.height.to_be_bytes();
    let [w0, w1] = kind.width.to_be_bytes();
    #[rustfmt::skip]
    let sof = [
        8, h0, h1, w0, w1, 3,
        1, luma_sampling, 0,
        2, 0x11, chroma_table,
        3, 0x11, chroma_table,
    ];
    // 16-bit tables are not allowed in baseline JPEG: say extended sequential (SOF1) then.
    segment(out, if wide { 0xC1 } else { 0xC0 }, &sof);
    let mut dht = Vec::with_capacity(420);
    for (class_id, counts, symbols) in HUFFMAN_TABLES {
        dht.push(class_id);
        dht.extend_from_slice(&counts);
        dht.extend_from_slice(symbols);
    }
    segment(out, 0xC4, &dht);
    segment(out, 0xDA, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
}

/// Full-range (JFIF) luma to the video range H.264 decoders assume (16..=235).
const LUMA_TO_VIDEO: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (16 + (i * 219 + 127) / 255) as u8;
        i += 1;
    }
    t
};

/// Full-range chroma to video range (16..=240 around 128).
const CHROMA_TO_VIDEO: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let d = (i as i32 - 128) * 224;
        let r = if d >= 0 {
            (d + 127) / 255
        } else {
            (d - 127) / 255
        };
        t[i] = (128 + r) as u8;
        i += 1;
    }
    t
};

/// Frame rate assumed until two frame intervals have been seen.
const DEFAULT_FPS: f32 = 15.0;
/// The longest time between keyframes: a browser joining (or losing a packet) waits at most
/// this long even if its keyframe request is lost.
const KEYFRAME_INTERVAL_TICKS: u32 = 2 * 90_000;
/// Frame intervals remembered for the frame-rate estimate.
const INTERVALS: usize = 8;
/// A measured frame rate this far from the encoder's (relatively) re-creates the encoder:
/// openh264's rate control spends `bitrate / fps` bits per frame.
const FPS_TOLERANCE: f32 = 0.25;

/// Target bitrate for a picture size: 1.5 Mbit/s at 640x360, growing with the 0.75th power
/// of the pixel count (bigger pictures compress better per pixel).
pub fn bitrate_for(width: usize, height: usize) -> u32 {
    let pixels = (width * height) as f64;
    let bps = 1_500_000.0 * (pixels / (640.0 * 360.0)).powf(0.75);
    bps.clamp(150_000.0, 8_000_000.0) as u32
}

/// The encoder settings for a picture size and frame rate.
fn encoder_config(width: usize, height: usize, fps: f32) -> EncoderConfig {
    EncoderConfig::new()
        .bitrate(BitRate::from_bps(bitrate_for(width, height)))
        .max_frame_rate(FrameRate::from_hz(fps))
        .rate_control_mode(RateControlMode::Bitrate)
        // Skipping would make openh264 keep the bitrate exactly, at the cost of gaps in the
        // picture; a camera at a steady rate does not need that. (openh264 warns about it on
        // stderr once per encoder.)
        .skip_frames(false)
        .profile(Profile::Baseline)
        .usage_type(UsageType::CameraVideoRealTime)
        .scene_change_detect(false)
        // Keyframes come from the timestamps (see `transcode`), not from a frame count.
        .intra_frame_period(IntraFramePeriod::from_num_frames(0))
        // One core per camera at most: the server runs many.
        .num_threads(1)
}

struct ActiveEncoder {
    encoder: Encoder,
    width: usize,
    height: usize,
    fps: f32,
}

/// Decodes JPEG (zune-jpeg) and encodes H.264 with openh264: Constrained Baseline, so every
/// browser decodes it; at the source frame rate (from the timestamps); a keyframe at least
/// every 2 s and when [`force_keyframe`](Self::force_keyframe) is called; bitrate scaled to
/// the resolution ([`bitrate_for`]). A resolution change re-creates the encoder.
///
/// CPU-bound: run it off the async executor (a blocking task or a thread per camera).
pub struct MjpegTranscoder {
    encoder: Option<ActiveEncoder>,
    force_keyframe: bool,
    last_keyframe_ts: Option<u32>,
    frame_rate: FrameIntervals,
    /// Decoder output (interleaved YCbCr 4:4:4), kept between frames.
    ycbcr: Vec<u8>,
    /// Encoder input (I420), kept between frames.
    i420: Vec<u8>,
}

impl Default for MjpegTranscoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MjpegTranscoder {
    pub fn new() -> Self {
        MjpegTranscoder {
            encoder: None,
            force_keyframe: false,
            last_keyframe_ts: None,
            frame_rate: FrameIntervals::default(),
            ycbcr: Vec::new(),
            i420: Vec::new(),
        }
    }

    /// Makes the next output a keyframe (a browser asked for one).
    pub fn force_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// The frame rate the encoder is configured for, once there is an encoder.
    pub fn frame_rate(&self) -> Option<f32> {
        self.encoder.as_ref().map(|e| e.fps)
    }

    /// Transcodes one frame. `Ok(None)` when the encoder produced nothing for it.
    pub fn transcode(&mut self, frame: &JpegFrame) -> Result<Option<AccessUnit>, MjpegError> {
        let ts = frame.ts;
        let (width, height) = decode_to_i420(ts, &frame.data, &mut self.ycbcr, &mut self.i420)?;
        self.frame_rate.observe(ts);
        let measured = self.frame_rate.fps();
        let stale = match &self.encoder {
            None => true,
            Some(e) => {
                e.width != width
                    || e.height != height
                    || measured.is_some_and(|f| (f - e.fps).abs() > FPS_TOLERANCE * e.fps)
            }
        };
        if stale {
            let fps = measured.unwrap_or(DEFAULT_FPS);
            let config = encoder_config(width, height, fps);
            let encoder =
                Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| {
                    MjpegError::Encode {
                        ts,
                        reason: e.to_string(),
                    }
                })?;
            tracing::debug!(width, height, fps, "MJPEG transcoder: new H.264 encoder");
            self.encoder = Some(ActiveEncoder {
                encoder,
                width,
                height,
                fps,
            });
            // A new encoder starts with an IDR anyway.
            self.force_keyframe = true;
        }
        let Some(active) = self.encoder.as_mut() else {
            // Unreachable: set just above when missing.
            return Ok(None);
        };
        let keyframe_due = self.force_keyframe
            || self
                .last_keyframe_ts
                .is_none_or(|k| ts.wrapping_sub(k) >= KEYFRAME_INTERVAL_TICKS);
        if keyframe_due {
            active.encoder.force_intra_frame();
        }
        let (y, uv) = self.i420.split_at(width * height);
        let (u, v) = uv.split_at(width * height / 4);
        let yuv = YUVSlices::new((y, u, v), (width, height), (width, width / 2, width / 2));
        let encoded = active.encoder.encode(&yuv).map(|b| b.to_vec());
        let bitstream = match encoded {
            Ok(b) => b,
            Err(e) => {
                // Start over with a fresh encoder next time.
                self.encoder = None;
                return Err(MjpegError::Encode {
                    ts,
                    reason: e.to_string(),
                });
            }
        };
        if bitstream.is_empty() {
            return Ok(None);
        }
        let au = AccessUnit::from_annex_b(ts, &bitstream);
        if au.is_keyframe() {
            self.last_keyframe_ts = Some(ts);
            self.force_keyframe = false;
        }
        Ok(Some(au))
    }
}

/// A stream's frame rate from its 90 kHz timestamps: the median of the last few intervals.
#[derive(Debug, Default)]
pub struct FrameIntervals {
    last_ts: Option<u32>,
    /// Recent frame intervals, in 90 kHz ticks.
    intervals: VecDeque<u32>,
}

impl FrameIntervals {
    /// A frame at `ts`.
    pub fn observe(&mut self, ts: u32) {
        if let Some(last) = self.last_ts {
            let d = ts.wrapping_sub(last);
            // Repeated timestamps and jumps (pauses, restarts) say nothing about the rate.
            if d > 0 && d <= 5 * 90_000 {
                if self.intervals.len() == INTERVALS {
                    self.intervals.pop_front();
                }
                self.intervals.push_back(d);
            }
        }
        self.last_ts = Some(ts);
    }

    /// The median frame interval as a rate, once two intervals are known.
    pub fn fps(&self) -> Option<f32> {
        if self.intervals.len() < 2 {
            return None;
        }
        let mut sorted: Vec<u32> = self.intervals.iter().copied().collect();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        Some((90_000.0 / median as f32).clamp(1.0, 60.0))
    }
}

/// Decodes a JPEG into `i420` (video range, even dimensions: an odd last row or column is
/// cropped), returning the dimensions.
fn decode_to_i420(
    ts: u32,
    jpeg: &[u8],
    ycbcr: &mut Vec<u8>,
    i420: &mut Vec<u8>,
) -> Result<(usize, usize), MjpegError> {
    let err = |reason: String| MjpegError::Decode { ts, reason };
    let options = DecoderOptions::default()
        // Cameras' JPEGs are often a little off the standard; decode what can be decoded.
        .set_strict_mode(false)
        .set_max_width(MAX_LONG_SIDE + 1)
        .set_max_height(MAX_LONG_SIDE + 1)
        .jpeg_set_out_colorspace(ColorSpace::YCbCr);
    let mut decoder = JpegDecoder::new_with_options(jpeg, options);
    decoder.decode_headers().map_err(|e| err(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| err("no image information".into()))?;
    let gray = decoder.get_input_colorspace() == Some(ColorSpace::Luma);
    if gray {
        decoder.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let (width, height) = (w & !1, h & !1);
    if width < 2
        || height < 2
        || width.max(height) > MAX_LONG_SIDE
        || width.min(height) > MAX_SHORT_SIDE
    {
        return Err(MjpegError::BadDimensions { ts, width, height });
    }
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| err("no output size".into()))?;
    let components = if gray { 1 } else { 3 };
    if size != w * h * components {
        return Err(err(format!("unexpected output size {size} for {w}x{h}")));
    }
    ycbcr.resize(size, 0);
    decoder.decode_into(ycbcr).map_err(|e| err(e.to_string()))?;

    i420.resize(width * height * 3 / 2, 0);
    let (y_plane, uv) = i420.split_at_mut(width * height);
    let (u_plane, v_plane) = uv.split_at_mut(width * height / 4);
    let row_len = w * components;
    for (src, dst) in ycbcr
        .chunks_exact(row_len)
        .zip(y_plane.chunks_exact_mut(width))
    {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(components)) {
            *d = LUMA_TO_VIDEO[s[0] as usize];
        }
    }
    if gray {
        u_plane.fill(128);
        v_plane.fill(128);
        return Ok((width, height));
    }
    // Each chroma sample is the mean of a 2x2 block.
    let rows = ycbcr.chunks_exact(row_len * 2);
    for ((pair, u_row), v_row) in rows
        .zip(u_plane.chunks_exact_mut(width / 2))
        .zip(v_plane.chunks_exact_mut(width / 2))
    {
        let (top, bottom) = pair.split_at(row_len);
        let blocks = top.chunks_exact(6).zip(bottom.chunks_exact(6));
        for ((a, b), (u, v)) in blocks.zip(u_row.iter_mut().zip(v_row.iter_mut())) {
            let cb = (a[1] as u32 + a[4] as u32 + b[1] as u32 + b[4] as u32 + 2) / 4;
            let cr = (a[2] as u32 + a[5] as u32 + b[2] as u32 + b[5] as u32 + 2) / 4;
            *u = CHROMA_TO_VIDEO[cb as usize];
            *v = CHROMA_TO_VIDEO[cr as usize];
        }
    }
    Ok((width, height))
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven tests spell out their rows' types
mod tests {
    use super::*;
    use crate::bridge::h264::{self, Depacketizer, Packetizer};
    use bytes::Bytes;
    use rtc::rtp::header::Header;
    use rtc::rtp::Packet;
    use rtc::shared::marshal::Unmarshal;

    /// ffmpeg's RTP/JPEG of `testsrc` at 320x240, 10 fps, 6 frames (see README.md there): a
    /// sequence of records, each a 16-bit big-endian length and an RTP packet as received.
    const CAPTURE: &[u8] = include_bytes!("../../testdata/mjpeg/testsrc-320x240.rtpdump");
    /// A 65x49 JPEG from ffmpeg with the standard Huffman tables.
    const ODD_JPEG: &[u8] = include_bytes!("../../testdata/mjpeg/testsrc-65x49.jpg");

    fn capture() -> Vec<Packet> {
        let mut packets = Vec::new();
        let mut rest = CAPTURE;
        while let [a, b, tail @ ..] = rest {
            let len = u16::from_be_bytes([*a, *b]) as usize;
            let mut raw = &tail[..len];
            packets.push(Packet::unmarshal(&mut raw).unwrap());
            rest = &tail[len..];
        }
        packets
    }

    fn frames_of(packets: &[Packet]) -> Vec<JpegFrame> {
        let mut d = JpegDepacketizer::new();
        let mut out = Vec::new();
        for p in packets {
            out.extend(d.push(p).unwrap());
            out.extend(d.pop_ready());
        }
        out
    }

    fn pkt(seq: u16, ts: u32, marker: bool, payload: Vec<u8>) -> Packet {
        Packet {
            header: Header {
                version: 2,
                marker,
                payload_type: 26,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 1,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        }
    }

    /// An RTP/JPEG payload: main header, optional restart and table headers, scan bytes.
    fn payload(
        offset: u32,
        ty: u8,
        q: u8,
        restart: Option<u16>,
        tables: &[u8],
        scan: &[u8],
    ) -> Vec<u8> {
        let o = offset.to_be_bytes();
        #[rustfmt::skip]
        let mut p = vec![
            0,                // type-specific
            o[1], o[2], o[3], // fragment offset
            ty, q,
            40, 30,           // 320x240 in units of 8
        ];
        if let Some(interval) = restart {
            p.extend_from_slice(&interval.to_be_bytes());
            p.extend_from_slice(&[0xC0, 0x00]); // F=1, L=1, count 0
        }
        if q >= 128 && offset == 0 {
            p.extend_from_slice(&[0, 0]); // MBZ, precision: 8-bit tables
            p.extend_from_slice(&(tables.len() as u16).to_be_bytes());
            p.extend_from_slice(tables);
        }
        p.extend_from_slice(scan);
        p
    }

    /// The JPEG segments (marker, body) up to SOS.
    fn segments(jpeg: &[u8]) -> Vec<(u8, Vec<u8>)> {
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let mut out = Vec::new();
        let mut i = 2;
        while i + 4 <= jpeg.len() {
            assert_eq!(jpeg[i], 0xFF);
            let marker = jpeg[i + 1];
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            out.push((marker, jpeg[i + 4..i + 2 + len].to_vec()));
            i += 2 + len;
            if marker == 0xDA {
                break;
            }
        }
        out
    }

    #[test]
    fn huffman_tables_match_ffmpegs() {
        let theirs: Vec<u8> = segments(ODD_JPEG)
            .into_iter()
            .filter(|(m, _)| *m == 0xC4)
            .flat_map(|(_, body)| body)
            .collect();
        let mut ours = Vec::new();
        write_headers(
            &mut ours,
            FrameKind {
                ty: 1,
                q: 50,
                width: 8,
                height: 8,
            },
            0,
            &QTables::from_q(50),
        );
        let ours: Vec<u8> = segments(&ours)
            .into_iter()
            .filter(|(m, _)| *m == 0xC4)
            .flat_map(|(_, body)| body)
            .collect();
        // The tables may come in any order: compare them one by one.
        fn split(mut dht: &[u8]) -> Vec<&[u8]> {
            let mut tables = Vec::new();
            while dht.len() >= 17 {
                let len = 17 + dht[1..17].iter().map(|&n| n as usize).sum::<usize>();
                tables.push(&dht[..len]);
                dht = &dht[len..];
            }
            assert!(dht.is_empty());
            tables.sort();
            tables
        }
        assert_eq!(split(&ours), split(&theirs));
        assert_eq!(split(&ours).len(), 4);
    }

    #[test]
    fn q_factor_tables() {
        // Q 50 is the standard tables themselves, in zigzag order.
        let t = QTables::from_q(50);
        assert_eq!(&t.data[..8], &[16, 11, 12, 14, 12, 10, 16, 14]);
        assert_eq!(&t.data[64..72], &[17, 18, 18, 24, 21, 24, 47, 26]);
        // Q 1 saturates at 255, Q 99 bottoms out at 1.
        assert!(QTables::from_q(1).data.iter().all(|&v| v >= 80));
        assert!(QTables::from_q(99).data.iter().all(|&v| v <= 3));
        // Q 75 halves: (16 * 50 + 50) / 100 = 8.
        assert_eq!(QTables::from_q(75).data[0], 8);
    }

    #[test]
    fn builds_headers_for_each_type() {
        let scan = [0x12, 0x34, 0xFF, 0x00, 0x56];
        let table: Vec<u8> = (1..=64).collect();
        let two_tables: Vec<u8> = (1..=128).collect();
        // (name, type, Q, restart, in-band tables, expected SOF luma sampling, DQT count, DRI)
        let cases: &[(&str, u8, u8, Option<u16>, &[u8], u8, usize, Option<u16>)] = &[
            ("4:2:2, Q 50", 0, 50, None, &[], 0x21, 2, None),
            ("4:2:0, Q 80", 1, 80, None, &[], 0x22, 2, None),
            ("4:2:0 restart", 65, 50, Some(16), &[], 0x22, 2, Some(16)),
            ("4:2:2 restart", 64, 50, Some(4), &[], 0x21, 2, Some(4)),
            ("in-band, one table", 1, 255, None, &table, 0x22, 1, None),
            (
                "in-band, two tables",
                1,
                200,
                None,
                &two_tables,
                0x22,
                2,
                None,
            ),
        ];
        for &(name, ty, q, restart, tables, sampling, dqts, dri) in cases {
            let mut d = JpegDepacketizer::new();
            let p = payload(0, ty, q, restart, tables, &scan);
            let f = d.push(&pkt(1, 900, true, p)).unwrap().unwrap();
            assert_eq!((f.ts, f.width, f.height), (900, 320, 240), "{name}");
            let segs = segments(&f.data);
            let markers: Vec<u8> = segs.iter().map(|(m, _)| *m).collect();
            let mut want = vec![0xDB; dqts];
            if dri.is_some() {
                want.push(0xDD);
            }
            want.extend([0xC0, 0xC4, 0xDA]);
            assert_eq!(markers, want, "{name}");
            let sof = &segs[segs.len() - 3].1;
            #[rustfmt::skip]
            let want_sof = [
                8, 0, 240, 1, 64, 3,               // 8 bit, 240 rows, 320 columns, 3 components
                1, sampling, 0,                    // Y
                2, 0x11, (dqts > 1) as u8,         // Cb
                3, 0x11, (dqts > 1) as u8,         // Cr
            ];
            assert_eq!(sof, &want_sof, "{name}");
            if let Some(interval) = dri {
                assert_eq!(segs[dqts].1, interval.to_be_bytes(), "{name}");
            }
            if !tables.is_empty() {
                assert_eq!(&segs[0].1[1..], &tables[..64], "{name}");
            }
            // Scan data follows SOS, then EOI.
            assert!(
                f.data
                    .ends_with(&[0x12, 0x34, 0xFF, 0x00, 0x56, 0xFF, 0xD9]),
                "{name}"
            );
        }
    }

    #[test]
    fn tables_sent_once_are_reused() {
        let tables: Vec<u8> = (1..=128).collect();
        let mut d = JpegDepacketizer::new();
        let first = d
            .push(&pkt(1, 0, true, payload(0, 1, 200, None, &tables, &[1])))
            .unwrap()
            .unwrap();
        // Length 0: "the tables sent before for this Q".
        let second = d
            .push(&pkt(2, 9000, true, payload(0, 1, 200, None, &[], &[1])))
            .unwrap()
            .unwrap();
        assert_eq!(first.data, second.data);
        // Never sent for Q 201; never allowed for Q 255.
        assert!(matches!(
            d.push(&pkt(3, 18_000, true, payload(0, 1, 201, None, &[], &[1]))),
            Err(MjpegError::MissingTables { seq: 3, q: 201 })
        ));
        assert!(matches!(
            d.push(&pkt(4, 27_000, true, payload(0, 1, 255, None, &[], &[1]))),
            Err(MjpegError::BadTables { seq: 4, .. })
        ));
        // 100 bytes is not a whole number of 64-byte tables.
        assert!(matches!(
            d.push(&pkt(
                5,
                36_000,
                true,
                payload(0, 1, 255, None, &[7; 100], &[1])
            )),
            Err(MjpegError::BadTables { seq: 5, .. })
        ));
    }

    #[test]
    fn fragments_loss_and_garbage() {
        let start = payload(0, 1, 50, None, &[], &[1, 2, 3]);
        let middle = payload(3, 1, 50, None, &[], &[4, 5]);
        let end = payload(5, 1, 50, None, &[], &[6]);
        let frame_scan = |f: &JpegFrame| f.data[f.data.len() - 8..f.data.len() - 2].to_vec();

        // In order: one frame with the scan 1..=6.
        let mut d = JpegDepacketizer::new();
        assert!(d.push(&pkt(10, 1, false, start.clone())).unwrap().is_none());
        assert!(d
            .push(&pkt(11, 1, false, middle.clone()))
            .unwrap()
            .is_none());
        let f = d.push(&pkt(12, 1, true, end.clone())).unwrap().unwrap();
        assert_eq!(frame_scan(&f), [1, 2, 3, 4, 5, 6]);

        // The middle is lost: nothing comes out, and the next frame is whole.
        assert!(d.push(&pkt(13, 2, false, start.clone())).unwrap().is_none());
        assert!(d.push(&pkt(15, 2, true, end.clone())).unwrap().is_none());
        assert!(d.push(&pkt(16, 3, false, start.clone())).unwrap().is_none());
        assert!(d
            .push(&pkt(17, 3, false, middle.clone()))
            .unwrap()
            .is_none());
        assert_eq!(
            d.push(&pkt(18, 3, true, end.clone())).unwrap().unwrap().ts,
            3
        );

        // Joined mid-frame: the tail is ignored.
        let mut d = JpegDepacketizer::new();
        assert!(d.push(&pkt(0, 1, true, end.clone())).unwrap().is_none());

        // Offsets that do not add up (without loss) are an error and drop the frame.
        let mut d = JpegDepacketizer::new();
        d.push(&pkt(0, 1, false, start.clone())).unwrap();
        assert!(matches!(
            d.push(&pkt(1, 1, true, end.clone())),
            Err(MjpegError::BadOffset {
                seq: 1,
                expected: 3,
                got: 5,
                ..
            })
        ));
        // A fragment whose Q differs from its frame's.
        d.push(&pkt(2, 2, false, start.clone())).unwrap();
        assert!(matches!(
            d.push(&pkt(3, 2, true, payload(3, 1, 60, None, &[], &[4]))),
            Err(MjpegError::Mismatch { seq: 3, .. })
        ));

        // A sender without markers: the next frame's start ends the previous one.
        let mut d = JpegDepacketizer::new();
        d.push(&pkt(0, 1, false, start.clone())).unwrap();
        d.push(&pkt(1, 1, false, middle.clone())).unwrap();
        let f = d.push(&pkt(2, 2, true, start.clone())).unwrap().unwrap();
        assert_eq!(f.ts, 1);
        assert!(f.data.ends_with(&[1, 2, 3, 4, 5, 0xFF, 0xD9]));
        assert_eq!(d.pop_ready().unwrap().ts, 2);

        let bad: &[(&str, Vec<u8>)] = &[
            ("short", vec![0, 0, 0, 0, 1, 50, 40]),
            ("type 2", payload(0, 2, 50, None, &[], &[1])),
            ("type 128", payload(0, 128, 50, None, &[], &[1])),
            ("Q 0", payload(0, 1, 0, None, &[], &[1])),
            ("zero width", vec![0, 0, 0, 0, 1, 50, 0, 30, 1]),
            ("restart header cut", vec![0, 0, 0, 0, 65, 50, 40, 30, 0]),
            ("table length past the end", {
                let mut p = payload(0, 1, 255, None, &[1; 64], &[]);
                p.truncate(p.len() - 10);
                p
            }),
        ];
        for (name, p) in bad {
            let mut d = JpegDepacketizer::new();
            assert!(d.push(&pkt(0, 1, true, p.clone())).is_err(), "{name}");
        }
    }

    #[test]
    fn depacketizes_and_transcodes_a_real_stream() {
        let packets = capture();
        let frames = frames_of(&packets);
        assert_eq!(frames.len(), 6);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!((f.width, f.height), (320, 240));
            assert_eq!(f.ts.wrapping_sub(frames[0].ts), i as u32 * 9000);
        }

        let mut transcoder = MjpegTranscoder::new();
        let mut h264_decoder = openh264::decoder::Decoder::new().unwrap();
        let mut sets = h264::ParameterSets::default();
        let packetizer = Packetizer::new(1200);
        let mut depacketizer = Depacketizer::new();
        let mut seq = 0u16;
        for (i, f) in frames.iter().enumerate() {
            let mut au = transcoder.transcode(f).unwrap().unwrap();
            assert_eq!(au.ts, f.ts);
            if i == 0 {
                assert!(au.is_keyframe());
                // The keyframe carries its parameter sets in-band.
                let types: Vec<u8> = au.nals.iter().filter_map(|n| h264::nal_type(n)).collect();
                assert!(types.starts_with(&[7, 8]), "{types:?}");
                let sps = h264::parse_sps(&au.nals[0]).unwrap();
                assert_eq!((sps.width, sps.height), (320, 240));
                // Constrained Baseline: profile 66 with constraint_set1.
                assert_eq!(sps.profile_idc, 66);
                assert_ne!(sps.constraints & 0x40, 0, "{:02x}", sps.constraints);
            }
            assert!(!h264::has_b_slices(&au));
            sets.fix_up(&mut au);

            // Through the browsers' packetization and back.
            let mut payloads = Vec::new();
            packetizer.packetize(&au, &mut payloads);
            let mut back = None;
            for (p, marker) in &payloads {
                assert!(p.len() <= 1200);
                let mut rtp = pkt(seq, au.ts, *marker, p.to_vec());
                rtp.header.payload_type = 96;
                seq = seq.wrapping_add(1);
                back = back.or(depacketizer.push(&rtp).unwrap());
            }
            let back = back.unwrap();
            assert_eq!(back.au, au);

            let pic = h264_decoder
                .decode(&back.au.to_annex_b())
                .unwrap()
                .expect("a picture per access unit");
            use openh264::formats::YUVSource;
            assert_eq!(pic.dimensions(), (320, 240));
            let stride = pic.strides().0;
            let decoded: Vec<u8> = (0..240)
                .flat_map(|row| pic.y()[row * stride..row * stride + 320].to_vec())
                .collect();
            // What went into the encoder, from the JPEG.
            let (mut ycbcr, mut source) = (Vec::new(), Vec::new());
            decode_to_i420(f.ts, &f.data, &mut ycbcr, &mut source).unwrap();
            let diff: u64 = decoded
                .iter()
                .zip(&source[..320 * 240])
                .map(|(a, b)| (*a as i64 - *b as i64).unsigned_abs())
                .sum();
            let mean_diff = diff as f64 / (320.0 * 240.0);
            assert!(
                mean_diff < 6.0,
                "frame {i}: mean luma difference {mean_diff}"
            );
            // testsrc's colour bars: the luma across the top band is anything but flat.
            let band: Vec<u32> = (0..8)
                .map(|bar| {
                    let x = bar * 40 + 20;
                    (20..60).map(|y| decoded[y * 320 + x] as u32).sum::<u32>() / 40
                })
                .collect();
            let spread = band.iter().max().unwrap() - band.iter().min().unwrap();
            assert!(spread > 60, "frame {i}: bar luma {band:?}");
        }
    }

    #[test]
    fn q_factor_frames_decode() {
        // The capture with its in-band tables replaced by "Q 50": still a valid JPEG.
        let mut packets = capture();
        for p in &mut packets {
            let mut v = p.payload.to_vec();
            let offset = u32::from_be_bytes([0, v[1], v[2], v[3]]);
            v[5] = 50;
            if offset == 0 {
                let len = u16::from_be_bytes([v[10], v[11]]) as usize;
                v.drain(8..12 + len);
            }
            p.payload = Bytes::from(v);
        }
        let frames = frames_of(&packets);
        assert_eq!(frames.len(), 6);
        let (mut ycbcr, mut i420) = (Vec::new(), Vec::new());
        assert_eq!(
            decode_to_i420(0, &frames[0].data, &mut ycbcr, &mut i420).unwrap(),
            (320, 240)
        );
    }

    #[test]
    fn keyframes_frame_rate_and_resolution_changes() {
        let frames = frames_of(&capture());
        let mut t = MjpegTranscoder::new();
        let mut keyframes = Vec::new();
        // 5 s at 10 fps, looping over the captured pictures.
        for n in 0..50u32 {
            let mut f = frames[n as usize % frames.len()].clone();
            f.ts = 1000 + n * 9000;
            if n == 33 {
                t.force_keyframe();
            }
            let au = t.transcode(&f).unwrap().unwrap();
            if au.is_keyframe() {
                keyframes.push(n);
            }
        }
        // 0: the first; 2: the measured 10 fps replaced the assumed 15 (a new encoder); 22: 2 s
        // later; 33: asked for (which restarts the 2 s).
        assert_eq!(keyframes, [0, 2, 22, 33]);
        assert_eq!(t.frame_rate(), Some(10.0));

        // A 65x49 picture: cropped to 64x48, a new encoder, a keyframe.
        let odd = JpegFrame {
            ts: 1000 + 50 * 9000,
            width: 65,
            height: 49,
            data: ODD_JPEG.to_vec(),
        };
        let au = t.transcode(&odd).unwrap().unwrap();
        assert!(au.is_keyframe());
        let sps = h264::parse_sps(&au.nals[0]).unwrap();
        assert_eq!((sps.width, sps.height), (64, 48));
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let pic = decoder.decode(&au.to_annex_b()).unwrap().unwrap();
        use openh264::formats::YUVSource;
        assert_eq!(pic.dimensions(), (64, 48));
    }

    #[test]
    fn bitrate_scales_with_resolution() {
        assert_eq!(bitrate_for(640, 360), 1_500_000);
        assert!(bitrate_for(320, 240) < 1_000_000);
        assert!(bitrate_for(1280, 720) > 3_000_000);
        assert_eq!(bitrate_for(3840, 2160), 8_000_000);
        assert_eq!(bitrate_for(2, 2), 150_000);
    }

    /// `cargo test -p confab --release --lib bridge::mjpeg::tests::transcode_cost -- --ignored
    /// --nocapture`
    #[test]
    #[ignore = "timing, run it in release mode"]
    fn transcode_cost() {
        // Encoding alone at 640x360, 30 fps: a textured picture with a moving square, so that
        // P frames have something to code.
        let (w, h) = (640, 360);
        let mut encoder =
            Encoder::with_api_config(OpenH264API::from_source(), encoder_config(w, h, 30.0))
                .unwrap();
        let mut i420 = vec![128u8; w * h * 3 / 2];
        let mut total = std::time::Duration::ZERO;
        let mut bytes = 0;
        let frames = 300;
        for n in 0..frames {
            for y in 0..h {
                for x in 0..w {
                    let square = (x + 4 * n) % w < 64 && (100..164).contains(&y);
                    let texture = ((x * 7 + y * 13) ^ (x * y)) % 61;
                    i420[y * w + x] = if square {
                        235
                    } else {
                        (40 + texture + x / 8) as u8
                    };
                }
            }
            let (yp, uv) = i420.split_at(w * h);
            let (u, v) = uv.split_at(w * h / 4);
            let yuv = YUVSlices::new((yp, u, v), (w, h), (w, w / 2, w / 2));
            if n % 60 == 0 {
                encoder.force_intra_frame();
            }
            let start = std::time::Instant::now();
            bytes += encoder.encode(&yuv).unwrap().to_vec().len();
            total += start.elapsed();
        }
        println!(
            "openh264 encode 640x360: {} us/frame, {} kbit/s at 30 fps (target {})",
            total.as_micros() / frames as u128,
            bytes * 8 * 30 / frames / 1000,
            bitrate_for(w, h) / 1000,
        );

        // The whole transcoder (JPEG decode, I420, encode) at 320x240 on the capture.
        let jpegs = frames_of(&capture());
        let mut t = MjpegTranscoder::new();
        let start = std::time::Instant::now();
        for n in 0..frames {
            let mut f = jpegs[n % jpegs.len()].clone();
            f.ts = n as u32 * 3000;
            t.transcode(&f).unwrap();
        }
        let whole = start.elapsed();
        let (mut ycbcr, mut i420) = (Vec::new(), Vec::new());
        let start = std::time::Instant::now();
        for n in 0..frames {
            decode_to_i420(0, &jpegs[n % jpegs.len()].data, &mut ycbcr, &mut i420).unwrap();
        }
        println!(
            "MJPEG -> H.264 320x240: {} us/frame, of which JPEG decoding and I420 {} us",
            whole.as_micros() / frames as u128,
            start.elapsed().as_micros() / frames as u128
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::bridge::TestRng::new(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.next();
        let real = capture();
        let mut d = JpegDepacketizer::new();
        let mut t = MjpegTranscoder::new();
        for round in 0..3000u32 {
            let mut p = if round % 2 == 0 {
                let len = (next() % 80) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                real[(next() % real.len() as u64) as usize].payload.to_vec()
            };
            for _ in 0..next() % 4 {
                if !p.is_empty() {
                    let i = (next() % p.len() as u64) as usize;
                    p[i] ^= next() as u8;
                }
            }
            let marker = next() % 3 == 0;
            // Frames from here have random sizes (up to 2040x2040): decoding them all would
            // make this test slow; damaged frames are transcoded below.
            let _ = d.push(&pkt(round as u16, round / 4, marker, p));
        }
        // Whole frames with damaged scan data or headers.
        let frames = frames_of(&real);
        for round in 0..40 {
            let mut f = frames[round % frames.len()].clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() % f.data.len() as u64) as usize;
                f.data[i] ^= next() as u8;
            }
            f.data
                .truncate((next() % (f.data.len() as u64 + 1)) as usize);
            let _ = t.transcode(&f);
        }
    }
}
