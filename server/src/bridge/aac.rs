//! AAC from cameras, as browsers take it: RFC 3640 (RTP MPEG4-GENERIC) depacketizing and an
//! AAC → Opus transcoder.
//!
//! IP cameras and `ffmpeg -c:a aac -f rtsp` send AAC-LC in `mode=AAC-hbr` (sometimes
//! `AAC-lbr`) at 8–48 kHz, mono or stereo; browsers only take Opus with a 48 kHz RTP clock. The
//! pipeline is pure (no I/O, no clock):
//!
//! - [`AacFmtp`] / [`AacConfig`]: the SDP `a=fmtp` line and the AudioSpecificConfig it carries.
//! - [`AacDepacketizer`]: RTP packets → whole AAC frames (access units) with their RTP
//!   timestamps. `retina` (pulled cameras) hands over whole frames already and skips this step.
//! - [`AacToOpus`]: AAC frames → decoded (symphonia) → resampled when the source rate is not
//!   one Opus takes → 20 ms Opus frames (mousiki) stamped on a 48 kHz clock.
//!
//! Invariants: no input panics; an error concerns one packet or one frame and leaves the
//! structs usable; output timestamps are a fixed function of input timestamps
//! ([`AacToOpus::map_ts`]), so RTCP sender reports translate by the same rule.

use bytes::Bytes;
use symphonia::core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::PacketRef;
use symphonia::core::units::{Duration, Timestamp};
use symphonia::default::codecs::AacDecoder;

/// The output RTP clock: Opus is always 48 kHz on the wire (RFC 7587 §4.1).
pub const OPUS_CLOCK: u32 = 48_000;
/// Samples per Opus frame on the 48 kHz clock (20 ms).
pub const OPUS_FRAME_TICKS: u32 = 960;

/// Largest access unit the depacketizer reassembles. AAC-LC needs at most 6144 bits per channel
/// per frame (768 bytes); this bounds memory against a hostile AU-size.
const MAX_AU_SIZE: usize = 1 << 16;
/// Largest Opus packet for one frame (RFC 6716 §3.2.1).
const MAX_OPUS_PACKET: usize = 1275;

#[derive(Debug, thiserror::Error)]
pub enum AacError {
    /// The `a=fmtp` of an MPEG4-GENERIC track cannot be used.
    #[error("MPEG4-GENERIC fmtp {fmtp:?}: {reason}")]
    Fmtp { fmtp: String, reason: String },
    /// The AudioSpecificConfig is malformed.
    #[error("AAC AudioSpecificConfig {config}: {reason}")]
    Config { config: String, reason: String },
    /// A well-formed stream this bridge cannot transcode.
    #[error("unsupported AAC stream ({0}); configure the camera for AAC-LC, mono or stereo")]
    Unsupported(String),
    /// An RTP packet that cannot be depacketized; the next packets still can.
    #[error("MPEG4-GENERIC RTP packet seq {seq} ts {ts} ({len} bytes): {reason}")]
    Packet {
        seq: u16,
        ts: u32,
        len: usize,
        reason: String,
    },
    /// An AAC frame that cannot be decoded; the next frames still can.
    #[error("AAC frame ts {ts} ({len} bytes): {reason}")]
    Decode { ts: u32, len: usize, reason: String },
    /// The Opus encoder failed (a bug rather than bad input).
    #[error("Opus encoder: {0}")]
    Encode(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads big-endian bit fields, as every MPEG-4 header is written.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    /// The next `n` (≤ 32) bits, or `None` past the end.
    fn read(&mut self, n: u8) -> Option<u32> {
        if n > 32 || usize::from(n) > self.bits_left() {
            return None;
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            let bit = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        Some(v as u32)
    }

    fn read_flag(&mut self) -> Option<bool> {
        self.read(1).map(|b| b == 1)
    }
}

/// The RFC 3640 mode of a stream; only the AAC ones are bridged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AacMode {
    /// `mode=AAC-hbr` (§3.3.6): 13-bit AU-size, 3-bit AU-Index(-delta).
    Hbr,
    /// `mode=AAC-lbr` (§3.3.5): 6-bit AU-size, 2-bit AU-Index(-delta).
    Lbr,
}

/// The fmtp of an MPEG4-GENERIC track (RFC 3640 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFmtp {
    pub mode: AacMode,
    /// The AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), from `config=<hex>`.
    pub config: Vec<u8>,
    /// Bits of the AU-size field of each AU-header.
    pub size_length: u8,
    /// Bits of the AU-Index field (first AU-header of a packet).
    pub index_length: u8,
    /// Bits of the AU-Index-delta field (later AU-headers).
    pub index_delta_length: u8,
    /// Bits of the CTS-delta field (preceded by a CTS-flag bit when non-zero).
    pub cts_delta_length: u8,
    /// Bits of the DTS-delta field (preceded by a DTS-flag bit when non-zero).
    pub dts_delta_length: u8,
    /// Whether each AU-header carries a RAP-flag bit.
    pub random_access_indication: bool,
    /// Bits of the Stream-state field.
    pub stream_state_indication: u8,
    /// Bits of the auxiliary-data-size field; 0 means no auxiliary section.
    pub auxiliary_data_size_length: u8,
    /// `constantDuration`: the RTP-clock duration of every AU, when the sender states it.
    pub constant_duration: Option<u32>,
}

impl AacFmtp {
    /// Parses what follows `a=fmtp:<pt> `. Parameter names are case-insensitive (RFC 3640
    /// §4.1); unknown ones (`profile-level-id`, `streamtype`, ...) are ignored. When a mode's
    /// fixed field lengths are left out they take the mode's values, since some cameras omit
    /// them.
    pub fn parse(fmtp: &str) -> Result<Self, AacError> {
        let err = |reason: String| AacError::Fmtp {
            fmtp: fmtp.to_owned(),
            reason,
        };
        let mut mode = None;
        let mut config = None;
        let mut lengths: [Option<u8>; 7] = [None; 7];
        let mut random_access_indication = false;
        let mut constant_duration = None;
        const LENGTH_KEYS: [&str; 7] = [
            "sizelength",
            "indexlength",
            "indexdeltalength",
            "ctsdeltalength",
            "dtsdeltalength",
            "streamstateindication",
            "auxiliarydatasizelength",
        ];
        for param in fmtp.split(';') {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (param, ""),
            };
            if key.eq_ignore_ascii_case("mode") {
                mode = Some(if value.eq_ignore_ascii_case("AAC-hbr") {
                    AacMode::Hbr
                } else if value.eq_ignore_ascii_case("AAC-lbr") {
                    AacMode::Lbr
                } else {
                    return Err(err(format!(
                        "mode={value} is not supported: only AAC-hbr and AAC-lbr are bridged"
                    )));
                });
            } else if key.eq_ignore_ascii_case("config") {
                config = Some(parse_hex(value).ok_or_else(|| {
                    err(format!(
                        "config={value} is not an even number of hex digits"
                    ))
                })?);
            } else if let Some(i) = LENGTH_KEYS.iter().position(|k| key.eq_ignore_ascii_case(k)) {
                let n: u8 = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= 32)
                    .ok_or_else(|| err(format!("{key}={value} is not a bit count 0..=32")))?;
                lengths[i] = Some(n);
            } else if key.eq_ignore_ascii_case("randomaccessindication") {
                random_access_indication = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(err(format!("{key}={value} is neither 0 nor 1"))),
                };
            } else if key.eq_ignore_ascii_case("constantduration") {
                constant_duration = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|d| *d > 0)
                        .ok_or_else(|| err(format!("{key}={value} is not a duration")))?,
                );
            }
        }
        // A missing mode with explicit AU-header lengths is how some cameras write AAC-hbr.
        let mode = match mode {
            Some(mode) => mode,
            None if lengths[0].is_some() => AacMode::Hbr,
            None => return Err(err("no mode= (AAC-hbr or AAC-lbr expected)".into())),
        };
        let config = config.ok_or_else(|| err("no config= (AudioSpecificConfig)".into()))?;
        if config.is_empty() {
            return Err(err("empty config=".into()));
        }
        let (size, index) = match mode {
            AacMode::Hbr => (13, 3),
            AacMode::Lbr => (6, 2),
        };
        let f = AacFmtp {
            mode,
            config,
            size_length: lengths[0].unwrap_or(size),
            index_length: lengths[1].unwrap_or(index),
            index_delta_length: lengths[2].unwrap_or(index),
            cts_delta_length: lengths[3].unwrap_or(0),
            dts_delta_length: lengths[4].unwrap_or(0),
            stream_state_indication: lengths[5].unwrap_or(0),
            auxiliary_data_size_length: lengths[6].unwrap_or(0),
            random_access_indication,
            constant_duration,
        };
        if f.size_length == 0 {
            // Without AU-size the AUs of a packet cannot be told apart (RFC 3640 §3.2.3).
            return Err(err("sizelength=0: AU sizes are needed for AAC".into()));
        }
        Ok(f)
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// AudioSpecificConfig essentials (ISO/IEC 14496-3 §1.6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// The audio object type as signalled first: 2 AAC-LC, 5 SBR (HE-AAC), 29 PS (HE-AACv2).
    pub object_type: u8,
    /// The AAC core's sampling rate: the rate of the decoded samples and, for AAC-LC, the RTP
    /// clock rate.
    pub sample_rate: u32,
    pub channels: u16,
    /// Samples per frame and channel: 1024, or 960 when the frameLengthFlag is set.
    pub frame_length: u16,
}

impl AacConfig {
    pub fn parse(asc: &[u8]) -> Result<Self, AacError> {
        let err = |reason: &str| AacError::Config {
            config: hex(asc),
            reason: reason.to_owned(),
        };
        let truncated = || err("truncated");
        let mut r = BitReader::new(asc);
        let object_type = read_object_type(&mut r).ok_or_else(truncated)?;
        let sample_rate = read_sample_rate(&mut r)
            .ok_or_else(truncated)?
            .ok_or_else(|| err("reserved samplingFrequencyIndex"))?;
        if sample_rate == 0 {
            return Err(err("sample rate 0"));
        }
        let channel_config = r.read(4).ok_or_else(truncated)?;
        let channels = match channel_config {
            0 => return Err(err("channelConfiguration 0 (program config element)")),
            1..=6 => channel_config as u16,
            7 | 12 | 14 => 8,
            11 => 7,
            _ => return Err(err("reserved channelConfiguration")),
        };
        let mut core_type = object_type;
        if object_type == 5 || object_type == 29 {
            // Explicit SBR/PS: the extension rate, then the core's object type.
            read_sample_rate(&mut r)
                .ok_or_else(truncated)?
                .ok_or_else(|| err("reserved extensionSamplingFrequencyIndex"))?;
            core_type = read_object_type(&mut r).ok_or_else(truncated)?;
            if core_type == 22 {
                // ER BSAC has an extensionChannelConfiguration here.
                r.read(4).ok_or_else(truncated)?;
            }
        }
        // GASpecificConfig starts with frameLengthFlag for every AAC-family object type.
        let ga = matches!(core_type, 1..=4 | 6 | 7 | 17 | 19..=23);
        let frame_length = if ga && r.read_flag().ok_or_else(truncated)? {
            960
        } else {
            1024
        };
        Ok(AacConfig {
            object_type,
            sample_rate,
            channels,
            frame_length,
        })
    }
}

fn read_object_type(r: &mut BitReader<'_>) -> Option<u8> {
    let t = r.read(5)? as u8;
    if t == 31 {
        Some(32 + r.read(6)? as u8)
    } else {
        Some(t)
    }
}

/// `Some(None)` for a reserved index.
fn read_sample_rate(r: &mut BitReader<'_>) -> Option<Option<u32>> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let index = r.read(4)?;
    if index == 15 {
        return Some(Some(r.read(24)?));
    }
    Some(RATES.get(index as usize).copied())
}

/// One AU-header (RFC 3640 §3.2.1.1), as far as timing and size go.
#[derive(Debug, Clone, Copy)]
struct AuHeader {
    size: usize,
    /// AU-Index: the first header's, plus each later one's AU-Index-delta + 1.
    index: u32,
    cts_delta: Option<i32>,
}

/// An AU whose fragments are being collected (RFC 3640 §3.2.3: one AU-header per fragment,
/// each giving the whole AU's size; the marker bit flags the last one).
#[derive(Debug)]
struct Fragment {
    ts: u32,
    size: usize,
    data: Vec<u8>,
}

/// RTP → raw AAC frames with their timestamps (RFC 3640 §3.2).
///
/// Packets must arrive in sequence order (a jitter buffer, if any, sits before this); a
/// sequence gap drops an AU being reassembled. Interleaved streams (AU-Index-delta > 0) get
/// the right timestamp per AU but are not reordered.
#[derive(Debug)]
pub struct AacDepacketizer {
    fmtp: AacFmtp,
    /// Duration of one AU on the RTP clock, for AUs after the first of a packet.
    frame_duration: u32,
    last_seq: Option<u16>,
    frag: Option<Fragment>,
    /// An AU dropped at a sequence gap while being reassembled: its remaining fragments are
    /// ignored rather than taken for a new AU.
    skip_ts: Option<u32>,
    headers: Vec<AuHeader>,
}

impl AacDepacketizer {
    pub fn new(fmtp: &AacFmtp) -> Self {
        let frame_duration = fmtp.constant_duration.unwrap_or_else(|| {
            match AacConfig::parse(&fmtp.config) {
                // Explicit SBR doubles the output rate, which the RTP clock follows.
                Ok(c) if c.object_type == 5 || c.object_type == 29 => 2 * u32::from(c.frame_length),
                Ok(c) => u32::from(c.frame_length),
                Err(_) => 1024,
            }
        });
        AacDepacketizer {
            fmtp: fmtp.clone(),
            frame_duration,
            last_seq: None,
            frag: None,
            skip_ts: None,
            headers: Vec::new(),
        }
    }

    /// Appends the frames completed by `pkt` to `out`. On error the packet is dropped (frames
    /// it completed before the error stay in `out`) and the next packet is handled normally.
    pub fn push(
        &mut self,
        pkt: &rtc::rtp::Packet,
        out: &mut Vec<(u32, Bytes)>,
    ) -> Result<(), AacError> {
        let seq = pkt.header.sequence_number;
        let ts = pkt.header.timestamp;
        let payload = &pkt.payload;
        let err = |reason: String| AacError::Packet {
            seq,
            ts,
            len: payload.len(),
            reason,
        };
        match self.last_seq {
            Some(prev) if prev == seq => {
                tracing::trace!(seq, "duplicate MPEG4-GENERIC packet dropped");
                return Ok(());
            }
            Some(prev) if prev.wrapping_add(1) != seq => {
                if let Some(f) = self.frag.take() {
                    tracing::debug!(
                        seq,
                        ts = f.ts,
                        "sequence gap: AAC frame being reassembled dropped"
                    );
                    self.skip_ts = Some(f.ts);
                }
            }
            _ => {}
        }
        self.last_seq = Some(seq);
        if self.skip_ts.is_some_and(|t| t != ts) {
            self.skip_ts = None;
        }

        let data_start = self.parse_headers(payload).map_err(|r| err(r.to_owned()))?;
        let data = &payload[data_start..];
        // A fragment carries the only AU-header of its packet, with the whole AU's size.
        let fragment = self.headers.len() == 1
            && (self.headers[0].size > data.len()
                || self.frag.as_ref().is_some_and(|f| f.ts == ts));
        if fragment {
            let size = self.headers[0].size;
            return self
                .push_fragment(pkt.header.marker, ts, size, data, out)
                .map_err(err);
        }
        if let Some(f) = self.frag.take() {
            tracing::debug!(
                ts = f.ts,
                "AAC frame whose last fragment never came dropped"
            );
        }

        let first_index = self.headers[0].index;
        let mut offset = data_start;
        for (i, h) in self.headers.iter().enumerate() {
            let end = offset + h.size;
            if end > payload.len() {
                return Err(err(format!(
                    "AU {} of {}: AU-size {} exceeds the {} bytes left",
                    i + 1,
                    self.headers.len(),
                    h.size,
                    payload.len() - offset
                )));
            }
            // §3.2.1.1: CTS-delta is relative to the RTP timestamp; otherwise AUs follow each
            // other at AU-Index steps of one frame.
            let au_ts = match h.cts_delta {
                Some(d) => ts.wrapping_add_signed(d),
                None => ts.wrapping_add(
                    h.index
                        .wrapping_sub(first_index)
                        .wrapping_mul(self.frame_duration),
                ),
            };
            if h.size > 0 {
                out.push((au_ts, payload.slice(offset..end)));
            }
            offset = end;
        }
        Ok(())
    }

    /// Parses the AU Header Section and the auxiliary section into `self.headers`; returns
    /// where the AU data starts.
    fn parse_headers(&mut self, payload: &[u8]) -> Result<usize, &'static str> {
        self.headers.clear();
        let f = &self.fmtp;
        let mut r = BitReader::new(payload);
        let headers_bits = r.read(16).ok_or("no AU-headers-length")? as usize;
        let headers_bytes = headers_bits.div_ceil(8);
        if 2 + headers_bytes > payload.len() {
            return Err("AU-headers-length runs past the payload");
        }
        let mut h = BitReader::new(&payload[2..2 + headers_bytes]);
        let mut index = 0u32;
        while h.pos < headers_bits {
            let start = h.pos;
            let first = self.headers.is_empty();
            let size = h.read(f.size_length).ok_or("truncated AU-header")? as usize;
            if first {
                index = h.read(f.index_length).ok_or("truncated AU-header")?;
            } else {
                let delta = h.read(f.index_delta_length).ok_or("truncated AU-header")?;
                index = index.wrapping_add(delta).wrapping_add(1);
            }
            let mut cts_delta = None;
            if f.cts_delta_length > 0 && h.read_flag().ok_or("truncated AU-header")? {
                let v = h.read(f.cts_delta_length).ok_or("truncated AU-header")?;
                cts_delta = Some(sign_extend(v, f.cts_delta_length));
            }
            if f.dts_delta_length > 0 && h.read_flag().ok_or("truncated AU-header")? {
                h.read(f.dts_delta_length).ok_or("truncated AU-header")?;
            }
            if f.random_access_indication {
                h.read(1).ok_or("truncated AU-header")?;
            }
            h.read(f.stream_state_indication)
                .ok_or("truncated AU-header")?;
            if h.pos > headers_bits {
                return Err("AU-header straddles AU-headers-length");
            }
            if h.pos == start {
                // Only a hand-made AacFmtp gets here (parse wants an AU-size).
                return Err("AU-headers of zero bits");
            }
            if size > MAX_AU_SIZE {
                return Err("AU-size too large");
            }
            self.headers.push(AuHeader {
                size,
                index,
                cts_delta,
            });
        }
        if self.headers.is_empty() {
            return Err("no AU-header");
        }
        let mut start = 2 + headers_bytes;
        if f.auxiliary_data_size_length > 0 {
            // Auxiliary section (§3.2.2): a size in bits, the data, padding to a whole byte.
            let mut a = BitReader::new(&payload[start..]);
            let aux_bits = a
                .read(f.auxiliary_data_size_length)
                .ok_or("truncated auxiliary-data-size")? as usize;
            let total = (usize::from(f.auxiliary_data_size_length) + aux_bits).div_ceil(8);
            if start + total > payload.len() {
                return Err("auxiliary section runs past the payload");
            }
            start += total;
        }
        Ok(start)
    }

    fn push_fragment(
        &mut self,
        marker: bool,
        ts: u32,
        size: usize,
        data: &[u8],
        out: &mut Vec<(u32, Bytes)>,
    ) -> Result<(), String> {
        if self.skip_ts == Some(ts) {
            return Ok(());
        }
        let frag = match &mut self.frag {
            Some(f) if f.ts == ts && f.size == size => f,
            slot => {
                if let Some(f) = slot.take() {
                    tracing::debug!(ts = f.ts, "incomplete AAC frame dropped");
                }
                slot.insert(Fragment {
                    ts,
                    size,
                    data: Vec::with_capacity(size),
                })
            }
        };
        if frag.data.len() + data.len() > frag.size {
            self.frag = None;
            return Err(format!("fragments add up to more than the AU-size {size}"));
        }
        frag.data.extend_from_slice(data);
        if frag.data.len() == frag.size {
            let data = std::mem::take(&mut frag.data);
            self.frag = None;
            out.push((ts, Bytes::from(data)));
        } else if marker {
            let got = frag.data.len();
            self.frag = None;
            return Err(format!(
                "the last fragment leaves the AU at {got} of {size} bytes (a fragment was lost)"
            ));
        }
        Ok(())
    }
}

fn sign_extend(v: u32, bits: u8) -> i32 {
    if bits == 0 || bits >= 32 {
        return v as i32;
    }
    let shift = 32 - u32::from(bits);
    ((v << shift) as i32) >> shift
}

/// One Opus frame of [`AacToOpus`]'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    /// RTP timestamp on the 48 kHz clock.
    pub ts: u32,
    pub data: Bytes,
}

/// Decodes AAC-LC, resamples to a rate Opus takes, encodes 20 ms Opus frames.
///
/// Timing rule: the output timestamp of source timestamp `ts` is `out0 + (ts - ts0) · 48000 /
/// rate`, where `ts0` is the first frame's timestamp, `out0 = ts0 · 48000 / rate` (mod 2³²),
/// and `ts - ts0` is unwrapped frame to frame (each step read as a signed 32-bit difference),
/// so the rule holds across wrap-around even where 48000 / rate is not an integer. For
/// 48 kHz sources output and input timestamps are equal.
///
/// Continuity: the samples fed to the encoder follow the input timestamps. A frame up to a
/// quarter frame early or late is taken as contiguous (jittery camera clocks); a later one
/// means lost frames and the hole is filled with silence; an earlier one overlaps and its
/// overlap is cut, or it is dropped when it is a duplicate or arrives out of order. A jump of
/// more than one second either way (a camera restart) starts afresh: resampler, decoder and
/// encoder are reset, and less than 20 ms of pending audio is dropped.
pub struct AacToOpus {
    config: AacConfig,
    decoder: AacDecoder,
    /// Decoded samples of the current frame, one `Vec` per channel (reused).
    planes: Vec<Vec<f32>>,
    opus: OpusStage,
    clock: Option<Clock>,
    /// Source position (unwrapped timestamp) where the next decoded sample belongs; `None`
    /// before the first frame.
    next_in: Option<i64>,
}

impl AacToOpus {
    /// Prepares a transcoder for the stream an AudioSpecificConfig describes; fails with a
    /// message for the user when the stream is not AAC-LC mono/stereo at a standard rate.
    pub fn new(asc: &[u8]) -> Result<Self, AacError> {
        let config = AacConfig::parse(asc)?;
        let unsupported = |what: String| Err(AacError::Unsupported(what));
        match config.object_type {
            2 => {}
            5 => return unsupported("HE-AAC (SBR) cannot be decoded".into()),
            29 => return unsupported("HE-AACv2 (SBR+PS) cannot be decoded".into()),
            t => return unsupported(format!("audio object type {t} is not AAC-LC (2)")),
        }
        if config.frame_length != 1024 {
            return unsupported("960-sample AAC frames".into());
        }
        if !(1..=2).contains(&config.channels) {
            return unsupported(format!("{} channels", config.channels));
        }
        const RATES: [u32; 13] = [
            7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000,
        ];
        if !RATES.contains(&config.sample_rate) {
            return unsupported(format!("sample rate {} Hz", config.sample_rate));
        }
        let mut params = AudioCodecParameters::new();
        params.codec = CODEC_ID_AAC;
        params.extra_data = Some(asc.into());
        let decoder = AacDecoder::try_new(&params, &AudioDecoderOptions::default())
            .map_err(|e| AacError::Unsupported(format!("AAC decoder: {e}")))?;
        let channels = usize::from(config.channels);
        Ok(AacToOpus {
            config,
            decoder,
            planes: vec![Vec::new(); channels],
            opus: OpusStage::new(config.sample_rate, channels)?,
            clock: None,
            next_in: None,
        })
    }

    /// Source channels; the Opus stream has as many (1 or 2).
    pub fn channels(&self) -> u16 {
        self.config.channels
    }

    /// The stream's AudioSpecificConfig essentials.
    pub fn config(&self) -> &AacConfig {
        &self.config
    }

    /// Transcodes one AAC frame whose timestamp `ts` is on the source clock (the ASC's sample
    /// rate), appending the Opus frames it completes to `out`. An error concerns this frame
    /// only: frames already appended stay valid and the next frame is handled normally.
    pub fn push(
        &mut self,
        ts: u32,
        frame: &[u8],
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), AacError> {
        let rate = i64::from(self.config.sample_rate);
        let frame_len = i64::from(self.config.frame_length);
        let mut clock = match self.clock {
            Some(c) => c,
            None => Clock::new(ts, self.config.sample_rate),
        };
        let pos = clock.extend(ts);
        // Where this frame's samples go, how many of them overlap what was fed already, and
        // how much silence comes first.
        let (next_in, trim, silence) = match self.next_in {
            None => {
                self.opus.restart(clock.map(pos));
                (pos, 0, 0)
            }
            Some(next) => {
                let d = pos - next;
                if d.abs() > rate {
                    tracing::debug!(ts, jump = d, "AAC timestamp jump: transcoder restarted");
                    self.decoder.reset();
                    self.opus.restart(clock.map(pos));
                    (pos, 0, 0)
                } else if d > frame_len / 4 {
                    // Lost frames: keep the timeline with silence.
                    (pos, 0, d as usize)
                } else if d <= -frame_len {
                    tracing::trace!(ts, "late or duplicate AAC frame dropped");
                    return Ok(());
                } else if d < -frame_len / 4 {
                    (next, (-d) as usize, 0)
                } else {
                    (next, 0, 0)
                }
            }
        };
        clock.last_ts = ts;
        clock.last_pos = pos;
        self.clock = Some(clock);
        self.next_in = Some(next_in);
        let filled = self.opus.feed_silence(silence, out);

        let decode_err = |reason: String| AacError::Decode {
            ts,
            len: frame.len(),
            reason,
        };
        let packet = PacketRef::new(0, Timestamp::ZERO, Duration::new(frame_len as u64), frame);
        let samples = match self.decoder.decode_ref(&packet) {
            Ok(buf) => {
                buf.copy_to_vecs_planar::<f32>(&mut self.planes);
                buf.frames()
            }
            Err(e) => return Err(decode_err(e.to_string())),
        };
        if self.planes.len() != self.opus.channels || self.planes.iter().any(|p| p.len() != samples)
        {
            return Err(decode_err(format!(
                "decoded {} planes of {samples} samples, {} channels expected",
                self.planes.len(),
                self.opus.channels
            )));
        }
        if self.planes.iter().flatten().any(|s| !s.is_finite()) {
            // Garbage can overflow the decoder's overlap state, and it would stay poisoned.
            self.decoder.reset();
            return Err(decode_err("non-finite samples; decoder reset".into()));
        }
        if trim < samples {
            self.next_in = Some(next_in + (samples - trim) as i64);
            self.opus.feed(&self.planes, trim, out)?;
        }
        filled
    }

    /// The output (48 kHz) timestamp of source timestamp `ts` by the rule described on
    /// [`AacToOpus`], for translating RTCP sender reports; `None` before the first frame.
    /// `ts` is unwrapped against the latest frame's, so it must lie within ±2³¹ ticks of it
    /// (about 13 hours at 44.1 kHz), as a sender report's does.
    pub fn map_ts(&self, ts: u32) -> Option<u32> {
        self.clock.map(|c| c.map(c.extend(ts)))
    }
}

/// Unwraps source timestamps and maps them to the 48 kHz output clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    rate: u32,
    /// Unwrapped position of the first frame.
    first: i64,
    out0: u32,
    last_ts: u32,
    last_pos: i64,
}

impl Clock {
    fn new(ts: u32, rate: u32) -> Self {
        Clock {
            rate,
            first: i64::from(ts),
            out0: (u64::from(ts) * u64::from(OPUS_CLOCK) / u64::from(rate)) as u32,
            last_ts: ts,
            last_pos: i64::from(ts),
        }
    }

    fn extend(&self, ts: u32) -> i64 {
        self.last_pos + i64::from(ts.wrapping_sub(self.last_ts) as i32)
    }

    fn map(&self, pos: i64) -> u32 {
        let ticks = (i128::from(pos - self.first) * i128::from(OPUS_CLOCK))
            .div_euclid(i128::from(self.rate));
        // Truncation is the intended mod 2³².
        self.out0.wrapping_add(ticks as u32)
    }
}

/// PCM at the source rate → 20 ms Opus frames.
struct OpusStage {
    channels: usize,
    /// `None` when the source rate is one Opus takes as it is.
    resampler: Option<Resampler>,
    encoder: mousiki::Encoder,
    /// Samples per channel in one 20 ms frame at the encoder's rate.
    frame_samples: usize,
    /// Interleaved PCM at the encoder's rate, less than one frame between calls.
    pcm: Vec<f32>,
    packet: Vec<u8>,
    next_ts: u32,
}

impl OpusStage {
    fn new(rate: u32, channels: usize) -> Result<Self, AacError> {
        // Opus takes 8, 12, 16, 24 and 48 kHz; a source at one of those needs no resampling
        // and the encoder picks the matching bandwidth by itself. Others go up to the next
        // Opus rate (down to 48 kHz above it).
        let enc_rate = [8000, 12000, 16000, 24000, 48000]
            .into_iter()
            .find(|r| *r >= rate)
            .unwrap_or(48000);
        let resampler = (enc_rate != rate).then(|| Resampler::new(rate, enc_rate, channels));
        let (layout, bitrate) = if channels == 2 {
            (mousiki::Channels::Stereo, 64_000)
        } else {
            (mousiki::Channels::Mono, 32_000)
        };
        let encoder = mousiki::Encoder::builder(enc_rate, layout, mousiki::Application::Audio)
            .bitrate(mousiki::Bitrate::Bits(bitrate))
            .build()
            .map_err(|e| AacError::Encode(format!("{e:?} creating a {enc_rate} Hz encoder")))?;
        Ok(OpusStage {
            channels,
            resampler,
            encoder,
            frame_samples: enc_rate as usize / 50,
            pcm: Vec::new(),
            packet: vec![0; MAX_OPUS_PACKET],
            next_ts: 0,
        })
    }

    /// Starts a new continuous run whose first frame has timestamp `ts`.
    fn restart(&mut self, ts: u32) {
        if let Some(r) = &mut self.resampler {
            r.reset();
        }
        self.pcm.clear();
        // Resetting a live encoder cannot fail (it fails only on a bad request code).
        let _ = self.encoder.reset_state();
        self.next_ts = ts;
    }

    /// Feeds `planes[..][start..]`.
    fn feed(
        &mut self,
        planes: &[Vec<f32>],
        start: usize,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), AacError> {
        match &mut self.resampler {
            Some(r) => {
                r.push(planes, start);
                r.produce(&mut self.pcm);
            }
            None => {
                let n = planes[0].len();
                self.pcm.reserve((n - start) * self.channels);
                for i in start..n {
                    for p in planes {
                        self.pcm.push(p[i].clamp(-1.0, 1.0));
                    }
                }
            }
        }
        self.encode_ready(out)
    }

    fn feed_silence(&mut self, samples: usize, out: &mut Vec<OpusFrame>) -> Result<(), AacError> {
        // In slices, so that a long hole does not grow the buffers.
        let mut left = samples;
        let mut result = Ok(());
        while left > 0 {
            let n = left.min(1024);
            left -= n;
            match &mut self.resampler {
                Some(r) => {
                    r.push_silence(n);
                    r.produce(&mut self.pcm);
                }
                None => self.pcm.resize(self.pcm.len() + n * self.channels, 0.0),
            }
            // Keep going on an encoder error, so the timeline stays whole.
            let r = self.encode_ready(out);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn encode_ready(&mut self, out: &mut Vec<OpusFrame>) -> Result<(), AacError> {
        let len = self.frame_samples * self.channels;
        let mut done = 0;
        let mut result = Ok(());
        while self.pcm.len() - done >= len {
            let pcm = &self.pcm[done..done + len];
            done += len;
            let ts = self.next_ts;
            self.next_ts = ts.wrapping_add(OPUS_FRAME_TICKS);
            match self.encoder.encode_float(pcm, &mut self.packet) {
                Ok(n) => out.push(OpusFrame {
                    ts,
                    data: Bytes::copy_from_slice(&self.packet[..n]),
                }),
                Err(e) => result = Err(AacError::Encode(format!("{e:?} at ts {ts}"))),
            }
        }
        self.pcm.drain(..done);
        result
    }
}

/// Band-limited rational resampler: polyphase windowed sinc (Kaiser window, 80 dB).
///
/// Output sample `n` is the input signal at input position `n · from / to`, so the output
/// is aligned with the input (no group delay to account for); the price is that an output
/// sample waits for half the filter's length of input.
struct Resampler {
    /// Output rate / input rate = `up / down`, reduced.
    up: usize,
    down: usize,
    taps: usize,
    /// `up` rows of `taps` coefficients; row `p` interpolates at fraction `p / up`.
    table: Vec<f32>,
    /// Input not yet consumed, per channel.
    hist: Vec<Vec<f32>>,
    /// Index in `hist` of the first tap of the next output sample.
    base: usize,
    /// Row of `table` for the next output sample.
    phase: usize,
}

impl Resampler {
    fn new(from: u32, to: u32, channels: usize) -> Self {
        let g = gcd(from, to);
        let (up, down) = ((to / g) as usize, (from / g) as usize);
        let from = f64::from(from);
        let min = from.min(f64::from(to));
        // Pass up to 90% of the lower Nyquist frequency; stop where the passband edge's first
        // image (upsampling) or alias (downsampling) lands, min - pass, so nothing folds into
        // the passband.
        let pass = 0.45 * min;
        let stop = min - pass;
        let cutoff = 0.5 * min / from; // cycles per input sample
        const ATTENUATION: f64 = 80.0;
        let transition = 2.0 * std::f64::consts::PI * (stop - pass) / from;
        // Kaiser's estimate of the length for this attenuation and transition width.
        let taps = ((ATTENUATION - 7.95) / (2.285 * transition)).ceil() as usize;
        let taps = (taps.max(8) + 1) & !1;
        let beta = 0.1102 * (ATTENUATION - 8.7);
        let half = taps as f64 / 2.0;
        let mut table = Vec::with_capacity(up * taps);
        for p in 0..up {
            let frac = p as f64 / up as f64;
            let row: Vec<f64> = (0..taps)
                .map(|k| {
                    let d = frac + half - 1.0 - k as f64;
                    let x = 2.0 * cutoff * d;
                    let sinc = if x.abs() < 1e-12 {
                        1.0
                    } else {
                        (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                    };
                    let w = (d / half).clamp(-1.0, 1.0);
                    sinc * bessel_i0(beta * (1.0 - w * w).sqrt()) / bessel_i0(beta)
                })
                .collect();
            // Unit gain at DC for every phase, or a constant input would come out rippled.
            let sum: f64 = row.iter().sum();
            table.extend(row.iter().map(|c| (c / sum) as f32));
        }
        let mut r = Resampler {
            up,
            down,
            taps,
            table,
            hist: vec![Vec::new(); channels],
            base: 0,
            phase: 0,
        };
        r.reset();
        r
    }

    fn reset(&mut self) {
        // Silence before the first sample, so output 0 lines up with input 0.
        for h in &mut self.hist {
            h.clear();
            h.resize(self.taps / 2 - 1, 0.0);
        }
        self.base = 0;
        self.phase = 0;
    }

    fn push(&mut self, planes: &[Vec<f32>], start: usize) {
        for (h, p) in self.hist.iter_mut().zip(planes) {
            h.extend(p[start..].iter().map(|s| s.clamp(-1.0, 1.0)));
        }
    }

    fn push_silence(&mut self, n: usize) {
        for h in &mut self.hist {
            h.resize(h.len() + n, 0.0);
        }
    }

    /// Appends every output sample the buffered input allows, interleaved.
    fn produce(&mut self, out: &mut Vec<f32>) {
        let len = self.hist.first().map_or(0, Vec::len);
        while self.base + self.taps <= len {
            let row = &self.table[self.phase * self.taps..][..self.taps];
            for h in &self.hist {
                out.push(dot(row, &h[self.base..self.base + self.taps]));
            }
            self.phase += self.down;
            self.base += self.phase / self.up;
            self.phase %= self.up;
        }
        let consumed = self.base.min(len);
        for h in &mut self.hist {
            h.drain(..consumed);
        }
        self.base -= consumed;
    }
}

/// Eight independent sums, so the compiler can vectorize without reassociating.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The modified Bessel function of the first kind, order 0 (for the Kaiser window).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Unmarshal;

    /// A capture from `testdata/aac/` (see `capture.py` there): the SDP's fmtp, clock rate and
    /// channels, and the packets.
    struct Capture {
        fmtp: AacFmtp,
        clock: u32,
        channels: u16,
        packets: Vec<rtc::rtp::Packet>,
    }

    fn capture(name: &str) -> Capture {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/aac/");
        let sdp = std::fs::read_to_string(format!("{dir}{name}.sdp")).unwrap();
        let rtpmap = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=rtpmap:97 MPEG4-GENERIC/"))
            .unwrap();
        let mut it = rtpmap.trim().split('/');
        let clock = it.next().unwrap().parse().unwrap();
        let channels = it.next().map_or(1, |c| c.parse().unwrap());
        let fmtp = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=fmtp:97 "))
            .unwrap();
        let raw = std::fs::read(format!("{dir}{name}.rtp")).unwrap();
        let mut packets = Vec::new();
        let mut rest = &raw[..];
        while !rest.is_empty() {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let mut pkt = &rest[2..2 + len];
            packets.push(rtc::rtp::Packet::unmarshal(&mut pkt).unwrap());
            rest = &rest[2 + len..];
        }
        Capture {
            fmtp: AacFmtp::parse(fmtp).unwrap(),
            clock,
            channels,
            packets,
        }
    }

    fn depacketize(fmtp: &AacFmtp, packets: &[rtc::rtp::Packet]) -> Vec<(u32, Bytes)> {
        let mut d = AacDepacketizer::new(fmtp);
        let mut frames = Vec::new();
        for p in packets {
            d.push(p, &mut frames).unwrap();
        }
        frames
    }

    fn transcode(asc: &[u8], frames: &[(u32, Bytes)]) -> Vec<OpusFrame> {
        let mut t = AacToOpus::new(asc).unwrap();
        let mut out = Vec::new();
        for (ts, f) in frames {
            t.push(*ts, f, &mut out).unwrap();
        }
        out
    }

    /// Decodes Opus frames (mousiki) at 48 kHz, first channel only, concealing missing
    /// timestamps.
    fn decode_opus(frames: &[OpusFrame], channels: u16) -> Vec<f32> {
        let layout = if channels == 2 {
            mousiki::Channels::Stereo
        } else {
            mousiki::Channels::Mono
        };
        let ch = usize::from(channels);
        let mut dec = mousiki::Decoder::new(48_000, layout).unwrap();
        let mut pcm = vec![0f32; 5760 * ch];
        let mut mono = Vec::new();
        for f in frames {
            let n = dec.decode_float(&f.data, &mut pcm, false).unwrap();
            assert_eq!(n, 960, "an Opus frame at ts {} is not 20 ms", f.ts);
            mono.extend(pcm[..n * ch].iter().step_by(ch));
        }
        mono
    }

    /// The amplitude of the `freq` component of `x` (Goertzel).
    fn tone_amplitude(x: &[f32], freq: f64, rate: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        2.0 * power.sqrt() / x.len() as f64
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Asserts that `pcm` (48 kHz) is ffmpeg's `sine` source: a 440 Hz tone of amplitude 1/8
    /// (−3 dB per channel once `-ac 2` made it stereo) and nothing else of note. Silence fails
    /// the level check, noise or a wrong pitch the spectral ones.
    fn assert_sine_440(pcm: &[f32], channels: u16, what: &str) {
        let want = if channels == 2 {
            0.125 / std::f64::consts::SQRT_2
        } else {
            0.125
        };
        let a440 = tone_amplitude(pcm, 440.0, 48_000.0);
        let a1000 = tone_amplitude(pcm, 1000.0, 48_000.0);
        let a415 = tone_amplitude(pcm, 415.3, 48_000.0);
        let level = rms(pcm) * std::f64::consts::SQRT_2;
        assert!(
            (a440 / want - 1.0).abs() < 0.2,
            "{what}: 440 Hz at {a440:.4}, not {want:.4}"
        );
        assert!(
            a1000 < a440 / 100.0,
            "{what}: 1 kHz at {a1000:.5} vs 440 Hz {a440:.4}"
        );
        assert!(
            a415 < a440 / 20.0,
            "{what}: 415 Hz at {a415:.5} vs 440 Hz {a440:.4}"
        );
        // Everything but the tone: what a tone-only signal's level would be, within 10%.
        assert!(
            (level / a440 - 1.0).abs() < 0.1,
            "{what}: level {level:.4} vs tone {a440:.4}"
        );
    }

    #[test]
    fn fmtp_parse() {
        struct Case {
            fmtp: &'static str,
            want: Result<(AacMode, &'static str, [u8; 3]), &'static str>,
        }
        let cases = [
            // ffmpeg 5.1 (`-c:a aac -f rtp`), as in testdata/aac/*.sdp.
            Case {
                fmtp: "profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;\
                       indexdeltalength=3; config=121056E500",
                want: Ok((AacMode::Hbr, "121056e500", [13, 3, 3])),
            },
            // Camera style: mixed-case names, streamtype, a trailing semicolon.
            Case {
                fmtp: "streamtype=5;profile-level-id=15;mode=AAC-hbr;config=1408;\
                       sizeLength=13;indexLength=3;indexDeltaLength=3;Profile=1;",
                want: Ok((AacMode::Hbr, "1408", [13, 3, 3])),
            },
            Case {
                fmtp: "mode=aac-lbr; config=1588",
                want: Ok((AacMode::Lbr, "1588", [6, 2, 2])),
            },
            Case {
                fmtp: "sizelength=13;indexlength=3;indexdeltalength=3;config=1190",
                want: Ok((AacMode::Hbr, "1190", [13, 3, 3])),
            },
            Case {
                fmtp: "mode=CELP-cbr;config=1588;constantsize=20",
                want: Err("mode=CELP-cbr is not supported"),
            },
            Case {
                fmtp: "mode=generic;config=1588;sizelength=13",
                want: Err("only AAC-hbr and AAC-lbr"),
            },
            Case {
                fmtp: "mode=AAC-hbr;sizelength=13",
                want: Err("no config="),
            },
            Case {
                fmtp: "mode=AAC-hbr;config=12x0",
                want: Err("hex"),
            },
            Case {
                fmtp: "mode=AAC-hbr;config=121",
                want: Err("hex"),
            },
            Case {
                fmtp: "mode=AAC-hbr;config=1210;sizelength=40",
                want: Err("sizelength=40"),
            },
            Case {
                fmtp: "mode=AAC-hbr;config=1210;sizelength=0",
                want: Err("sizelength=0"),
            },
            Case {
                fmtp: "config=1210",
                want: Err("no mode="),
            },
            Case {
                fmtp: "",
                want: Err("no mode="),
            },
        ];
        for c in cases {
            let got = AacFmtp::parse(c.fmtp);
            match (got, c.want) {
                (Ok(f), Ok((mode, config, lengths))) => {
                    assert_eq!(f.mode, mode, "{}", c.fmtp);
                    assert_eq!(hex(&f.config), config, "{}", c.fmtp);
                    let got = [f.size_length, f.index_length, f.index_delta_length];
                    assert_eq!(got, lengths, "{}", c.fmtp);
                }
                (Err(e), Err(want)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{}: {msg:?} lacks {want:?}", c.fmtp);
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.fmtp),
            }
        }
        let f = AacFmtp::parse(
            "mode=AAC-hbr;config=1210;CTSDeltaLength=16;DTSDeltaLength=8;\
             randomAccessIndication=1;streamStateIndication=4;auxiliaryDataSizeLength=8;\
             constantDuration=1024",
        )
        .unwrap();
        assert_eq!(
            (
                f.cts_delta_length,
                f.dts_delta_length,
                f.random_access_indication,
                f.stream_state_indication,
                f.auxiliary_data_size_length,
                f.constant_duration
            ),
            (16, 8, true, 4, 8, Some(1024))
        );
    }

    /// Writes an AudioSpecificConfig from (value, bits) fields.
    fn bits(fields: &[(u32, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = 0;
        for &(v, len) in fields {
            for i in (0..len).rev() {
                if n % 8 == 0 {
                    out.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                *out.last_mut().unwrap() |= bit << (7 - n % 8);
                n += 1;
            }
        }
        out
    }

    #[test]
    fn asc_parse() {
        let he_aac = bits(&[(5, 5), (6, 4), (2, 4), (3, 4), (2, 5), (0, 3)]);
        let escaped_rate = bits(&[(2, 5), (15, 4), (44100, 24), (2, 4), (0, 3)]);
        let escaped_type = bits(&[(31, 5), (1, 6), (8, 4), (1, 4), (0, 3)]);
        let short_frames = bits(&[(2, 5), (3, 4), (1, 4), (1, 1), (0, 2)]);
        /// (object type, sample rate, channels, frame length) or a piece of the error.
        type Want = Result<(u8, u32, u16, u16), &'static str>;
        let cases: [(&[u8], Want); 12] = [
            (&[0x12, 0x10, 0x56, 0xe5, 0x00], Ok((2, 44100, 2, 1024))), // ffmpeg
            (&[0x14, 0x08, 0x56, 0xe5, 0x00], Ok((2, 16000, 1, 1024))), // ffmpeg
            (&[0x15, 0x88, 0x56, 0xe5, 0x00], Ok((2, 8000, 1, 1024))),  // ffmpeg
            (&[0x11, 0x90], Ok((2, 48000, 2, 1024))),
            (&he_aac, Ok((5, 24000, 2, 1024))),
            (&escaped_rate, Ok((2, 44100, 2, 1024))),
            (&escaped_type, Ok((33, 16000, 1, 1024))),
            (&short_frames, Ok((2, 48000, 1, 960))),
            (&[], Err("truncated")),
            (&[0x12], Err("truncated")),
            (&[0x12, 0x00], Err("channelConfiguration 0")),
            (&[0x16, 0x88], Err("reserved samplingFrequencyIndex")),
        ];
        for (asc, want) in cases {
            match (AacConfig::parse(asc), want) {
                (Ok(c), Ok(w)) => assert_eq!(
                    (c.object_type, c.sample_rate, c.channels, c.frame_length),
                    w,
                    "{}",
                    hex(asc)
                ),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{}: {e}", hex(asc)),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", hex(asc)),
            }
        }
    }

    #[test]
    fn unsupported_streams_say_so() {
        let he_aac = bits(&[(5, 5), (6, 4), (2, 4), (3, 4), (2, 5), (0, 3)]);
        let cases: [(Vec<u8>, &str); 5] = [
            (he_aac, "HE-AAC"),
            (
                bits(&[(4, 5), (3, 4), (2, 4), (0, 3)]),
                "audio object type 4",
            ), // AAC-LTP
            (vec![0x11, 0xb0], "6 channels"), // 48 kHz 5.1
            (
                bits(&[(2, 5), (15, 4), (44000, 24), (1, 4), (0, 3)]),
                "44000 Hz",
            ),
            (
                bits(&[(2, 5), (3, 4), (1, 4), (1, 1), (0, 2)]),
                "960-sample",
            ),
        ];
        for (asc, want) in cases {
            let err = AacToOpus::new(&asc).err().expect("rejected");
            let msg = err.to_string();
            assert!(msg.contains(want), "{}: {msg}", hex(&asc));
            assert!(msg.contains("AAC-LC"), "{msg} does not say what to do");
        }
    }

    /// One RTP packet.
    fn rtp(seq: u16, ts: u32, marker: bool, payload: Vec<u8>) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: 97,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 0x1234,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        }
    }

    /// An AAC-hbr payload: AU-headers-length, then per AU a 13-bit AU-size and a 3-bit
    /// AU-Index (first) or AU-Index-delta, then the AUs. `sizes` overrides the AU-sizes (for
    /// fragments, which give the whole AU's size).
    fn hbr(aus: &[&[u8]], sizes: Option<&[usize]>, deltas: &[u8]) -> Vec<u8> {
        let mut p = ((aus.len() * 16) as u16).to_be_bytes().to_vec();
        for (i, au) in aus.iter().enumerate() {
            let size = sizes.map_or(au.len(), |s| s[i]);
            let index = deltas.get(i).copied().unwrap_or(0);
            p.extend(((size << 3) as u16 | u16::from(index)).to_be_bytes());
        }
        for au in aus {
            p.extend_from_slice(au);
        }
        p
    }

    fn hbr_fmtp() -> AacFmtp {
        AacFmtp::parse("mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1408")
            .unwrap()
    }

    fn au(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn several_aus_per_packet() {
        let (a, b, c) = (au(100, 1), au(1, 2), au(300, 3));
        let mut d = AacDepacketizer::new(&hbr_fmtp());
        let mut out = Vec::new();
        d.push(&rtp(7, 1000, true, hbr(&[&a, &b, &c], None, &[])), &mut out)
            .unwrap();
        let want: Vec<(u32, Bytes)> = vec![(1000, a.into()), (2024, b.into()), (3048, c.into())];
        assert_eq!(out, want);
    }

    #[test]
    fn interleaving_and_cts_give_each_au_its_time() {
        // AU-Index 2, then deltas 1 and 0: serial numbers 2, 4, 5.
        let mut d = AacDepacketizer::new(&hbr_fmtp());
        let mut out = Vec::new();
        let p = hbr(&[&au(3, 0), &au(4, 0), &au(5, 0)], None, &[2, 1, 0]);
        d.push(&rtp(1, 10_000, true, p), &mut out).unwrap();
        let ts: Vec<u32> = out.iter().map(|f| f.0).collect();
        assert_eq!(ts, [10_000, 12_048, 13_072]);

        // CTS-delta (8 bits, two's complement) overrides; constantDuration sets the step.
        let f = AacFmtp::parse(
            "mode=AAC-hbr;config=1408;sizelength=13;indexlength=3;indexdeltalength=3;\
             ctsdeltalength=8;constantduration=960",
        )
        .unwrap();
        let mut d = AacDepacketizer::new(&f);
        // Headers: size 2 idx 0 CTS-flag 0 | size 2 delta 0 flag 1 CTS -3 | size 2 delta 0
        // flag 0: 17 + 25 + 17 = 59 bits.
        let h = bits(&[
            (59, 16),
            (2, 13),
            (0, 3),
            (0, 1),
            (2, 13),
            (0, 3),
            (1, 1),
            (0xfd, 8),
            (2, 13),
            (0, 3),
            (0, 1),
            (0, 5),
        ]);
        let mut p = h;
        p.extend([1, 1, 2, 2, 3, 3]);
        let mut out = Vec::new();
        d.push(&rtp(1, 5, true, p), &mut out).unwrap();
        let got: Vec<(u32, &[u8])> = out.iter().map(|(t, b)| (*t, &b[..])).collect();
        assert_eq!(
            got,
            [
                (5, &[1u8, 1][..]),
                (2, &[2, 2][..]),
                (5 + 2 * 960, &[3, 3][..])
            ]
        );
    }

    #[test]
    fn aac_lbr_and_auxiliary_section() {
        let f = AacFmtp::parse("mode=AAC-lbr;config=1588;auxiliarydatasizelength=8").unwrap();
        let mut d = AacDepacketizer::new(&f);
        // Two 8-bit headers (6-bit size, 2-bit index), an auxiliary section of 12 bits (plus
        // the 8-bit size field, so 3 bytes), then 2 + 3 bytes of AUs.
        let mut p = vec![0, 16, 2 << 2, 3 << 2, 12, 0xaa, 0xbb];
        p.extend([9, 9, 8, 8, 8]);
        let mut out = Vec::new();
        d.push(&rtp(1, 0, true, p), &mut out).unwrap();
        let got: Vec<(u32, &[u8])> = out.iter().map(|(t, b)| (*t, &b[..])).collect();
        assert_eq!(got, [(0, &[9u8, 9][..]), (1024, &[8, 8, 8][..])]);
    }

    /// A 700-byte AU in fragments of 300, 300 and 100 bytes.
    fn fragments(seq: u16, ts: u32, a: &[u8]) -> Vec<rtc::rtp::Packet> {
        let size = [a.len()];
        [(0, 300), (300, 600), (600, 700)]
            .iter()
            .enumerate()
            .map(|(i, &(from, to))| {
                let payload = hbr(&[&a[from..to]], Some(&size), &[]);
                rtp(seq + i as u16, ts, i == 2, payload)
            })
            .collect()
    }

    #[test]
    fn fragmented_au_and_loss() {
        let a = au(700, 9);
        let next = rtp(13, 2024, true, hbr(&[&au(50, 1)], None, &[]));
        // (which fragments arrive, whether the AU comes out, whether a packet errs)
        let cases: [(&[usize], bool, bool); 5] = [
            (&[0, 1, 2], true, false),
            (&[0, 2], false, false), // middle lost: the gap drops it, the rest is skipped
            (&[1, 2], false, true),  // first lost: too short when the marker comes
            (&[0, 1], false, false), // last lost: dropped when the next AU starts
            (&[2], false, true),
        ];
        for (arrive, complete, errs) in cases {
            let mut d = AacDepacketizer::new(&hbr_fmtp());
            let mut out = Vec::new();
            let mut errors = 0;
            let packets = fragments(10, 1000, &a);
            for &i in arrive {
                errors += usize::from(d.push(&packets[i], &mut out).is_err());
            }
            assert_eq!(errors > 0, errs, "{arrive:?}");
            if complete {
                assert_eq!(out, vec![(1000, Bytes::from(a.clone()))], "{arrive:?}");
            } else {
                assert!(out.is_empty(), "{arrive:?}: {out:?}");
            }
            // Whatever happened, the next AU comes through.
            out.clear();
            d.push(&next, &mut out).unwrap();
            assert_eq!(out.len(), 1, "{arrive:?}");
            assert_eq!(out[0].0, 2024);
        }
    }

    #[test]
    fn duplicate_packets_are_ignored() {
        let mut d = AacDepacketizer::new(&hbr_fmtp());
        let mut out = Vec::new();
        let p = rtp(5, 0, true, hbr(&[&au(10, 0)], None, &[]));
        d.push(&p, &mut out).unwrap();
        d.push(&p, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let packets = fragments(6, 1024, &au(700, 0));
        for p in [&packets[0], &packets[0], &packets[1], &packets[2]] {
            d.push(p, &mut out).unwrap();
        }
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("empty", vec![]),
            ("one byte", vec![0]),
            ("no AU-header", vec![0, 0, 1, 2]),
            ("headers past the end", vec![0, 32, 0, 8]),
            ("straddling header", vec![0, 12, 0, 8, 1]),
            (
                "AUs past the end",
                hbr(&[&[1, 2], &[3]], Some(&[2, 5]), &[]),
            ),
            ("second AU past the end", {
                let mut p = hbr(&[&[1, 2], &[3, 4]], None, &[]);
                p.pop();
                p
            }),
        ];
        for (what, payload) in cases {
            let mut d = AacDepacketizer::new(&hbr_fmtp());
            let mut out = Vec::new();
            let err = d.push(&rtp(1, 0, true, payload), &mut out).err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains("seq 1 ts 0"), "{what}: {msg:?}");
        }
    }

    use crate::bridge::TestRng as Rng;

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng::new(0x5eed);
        let real = capture("sine440-44k1-stereo");
        let fmtps = [
            hbr_fmtp(),
            AacFmtp::parse("mode=AAC-lbr;config=1588").unwrap(),
            AacFmtp::parse(
                "mode=AAC-hbr;config=1210;sizelength=32;indexlength=32;indexdeltalength=1;\
                 ctsdeltalength=32;dtsdeltalength=7;randomaccessindication=1;\
                 streamstateindication=32;auxiliarydatasizelength=32",
            )
            .unwrap(),
        ];
        let mut out = Vec::new();
        for f in &fmtps {
            let mut d = AacDepacketizer::new(f);
            for i in 0..20_000u32 {
                let payload = match rng.below(3) {
                    // Real packets, mutated.
                    0 => {
                        let mut p = real.packets[rng.below(21) as usize].payload.to_vec();
                        for _ in 0..rng.below(4) {
                            let at = rng.below(p.len() as u64) as usize;
                            p[at] ^= 1 << rng.below(8);
                        }
                        p.truncate(rng.below(p.len() as u64 + 1) as usize);
                        p
                    }
                    _ => {
                        let n = rng.below(64) as usize;
                        rng.bytes(n)
                    }
                };
                let seq = if rng.below(8) == 0 {
                    rng.next() as u16
                } else {
                    i as u16
                };
                let _ = d.push(
                    &rtp(seq, rng.below(4) as u32, rng.below(2) == 0, payload),
                    &mut out,
                );
                out.clear();
            }
        }

        // The transcoder: garbage frames, truncated and bit-flipped real frames at advancing
        // times (so each is decoded), with holes and jumps; then real frames must still come
        // out as the tone. (Kept small for debug builds; run with more rounds in release when
        // touching the decoder path.)
        let frames = depacketize(&real.fmtp, &real.packets);
        let mut t = AacToOpus::new(&real.fmtp.config).unwrap();
        let mut opus = Vec::new();
        let mut errors = 0;
        let mut ts = 0u32;
        for _ in 0..300 {
            let mut f = frames[rng.below(frames.len() as u64) as usize].1.to_vec();
            match rng.below(3) {
                0 => {
                    let n = rng.below(800) as usize;
                    f = rng.bytes(n);
                }
                1 => f.truncate(rng.below(f.len() as u64) as usize),
                _ => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(f.len() as u64) as usize;
                        f[at] ^= 1 << rng.below(8);
                    }
                }
            }
            ts = match rng.below(50) {
                0 => rng.next() as u32,
                1 => ts.wrapping_add(1024 * rng.below(4) as u32),
                _ => ts.wrapping_add(1024),
            };
            errors += usize::from(t.push(ts, &f, &mut opus).is_err());
        }
        assert!(errors > 50, "only {errors} errors from garbage");
        opus.clear();
        let base = ts.wrapping_add(10 * 44100);
        for (i, (_, f)) in frames.iter().enumerate() {
            t.push(base.wrapping_add(i as u32 * 1024), f, &mut opus)
                .unwrap();
        }
        let pcm = decode_opus(&opus, 2);
        assert_sine_440(&pcm[pcm.len() / 4..], 2, "after garbage");
    }

    #[test]
    fn captures_depacketize_whole() {
        // ffmpeg's RTP muxer does not flush its last, partly filled packet, so a bit less than
        // the 2 s encoded arrives: (capture, rate, channels, frames).
        let cases = [
            ("sine440-44k1-stereo", 44100, 2, 84),
            ("sine440-16k-mono-frag", 16000, 1, 33),
            ("sine440-8k-mono", 8000, 1, 14),
        ];
        for (name, rate, channels, count) in cases {
            let c = capture(name);
            let config = AacConfig::parse(&c.fmtp.config).unwrap();
            assert_eq!(
                (config.sample_rate, config.channels),
                (rate, channels),
                "{name}"
            );
            assert_eq!((c.clock, c.channels), (rate, channels), "{name}");
            let frames = depacketize(&c.fmtp, &c.packets);
            assert_eq!(frames.len(), count, "{name}");
            for (i, (ts, f)) in frames.iter().enumerate() {
                let step = ts.wrapping_sub(frames[0].0);
                assert_eq!(step, 1024 * i as u32, "{name}: frame {i}");
                assert!(!f.is_empty());
            }
        }
        // The 16 kHz capture was sent with -pkt_size 100: every AU is fragmented.
        let c = capture("sine440-16k-mono-frag");
        assert!(c.packets.len() > 3 * 33);
    }

    #[test]
    fn captures_transcode_to_the_tone() {
        for name in [
            "sine440-44k1-stereo",
            "sine440-16k-mono-frag",
            "sine440-8k-mono",
        ] {
            let c = capture(name);
            let frames = depacketize(&c.fmtp, &c.packets);
            let mut t = AacToOpus::new(&c.fmtp.config).unwrap();
            assert_eq!(t.channels(), c.channels);
            assert_eq!(t.map_ts(frames[0].0), None);
            let mut out = Vec::new();
            for (ts, f) in &frames {
                t.push(*ts, f, &mut out).unwrap();
            }
            let secs = frames.len() as f64 * 1024.0 / f64::from(c.clock);
            let expected = (secs * 50.0) as usize;
            assert!(
                (expected - 1..=expected).contains(&out.len()),
                "{name}: {} Opus frames for {secs} s",
                out.len()
            );
            assert_eq!(Some(out[0].ts), t.map_ts(frames[0].0), "{name}");
            for (i, f) in out.iter().enumerate() {
                assert_eq!(
                    f.ts.wrapping_sub(out[0].ts),
                    960 * i as u32,
                    "{name}: frame {i}"
                );
            }
            let pcm = decode_opus(&out, c.channels);
            // Skip the codecs' start-up (AAC priming, Opus ramp-up).
            assert_sine_440(&pcm[9600..], c.channels, name);
        }
    }

    /// The 16 kHz capture's frames, with timestamps from `ts(i)` (None drops frame i).
    fn retimed(ts: impl Fn(u32) -> Option<u32>) -> (Vec<u8>, Vec<(u32, Bytes)>) {
        let c = capture("sine440-16k-mono-frag");
        let frames = depacketize(&c.fmtp, &c.packets);
        let retimed = frames
            .into_iter()
            .enumerate()
            .filter_map(|(i, (_, f))| ts(i as u32).map(|t| (t, f)))
            .collect();
        (c.fmtp.config, retimed)
    }

    #[test]
    fn output_time_follows_input_time() {
        // 16 kHz: output = 3 × input (mod 2³²) by the rule, whatever happens in between.
        struct Case {
            what: &'static str,
            ts: fn(u32) -> Option<u32>,
            /// Runs of Opus frames whose timestamps step by 960 (a restart splits them).
            runs: usize,
        }
        let cases = [
            Case {
                what: "plain",
                ts: |i| Some(1000 + 1024 * i),
                runs: 1,
            },
            Case {
                what: "three frames lost: silence fills the hole",
                ts: |i| (!(10..13).contains(&i)).then_some(1000 + 1024 * i),
                runs: 1,
            },
            Case {
                what: "wrapping",
                ts: |i| Some((u32::MAX - 10 * 1024).wrapping_add(1024 * i)),
                runs: 1,
            },
            Case {
                what: "jittery camera clock",
                ts: |i| Some(1000 + 1024 * i + [0, 100, 3, 250, 17][i as usize % 5]),
                runs: 1,
            },
            Case {
                what: "duplicates and one out of order",
                ts: |i| {
                    Some(
                        1000 + 1024 * [0, 1, 1, 2, 3, 2, 4, 5, 6, 7, 8, 9][i.min(11) as usize]
                            + 1024 * i.saturating_sub(11),
                    )
                },
                runs: 1,
            },
            Case {
                what: "5 s forward: restart",
                ts: |i| Some(1000 + 1024 * i + if i >= 16 { 80_000 } else { 0 }),
                runs: 2,
            },
            Case {
                what: "camera restart, time goes back",
                ts: |i| {
                    Some(if i >= 16 {
                        77 + 1024 * i
                    } else {
                        3_000_000 + 1024 * i
                    })
                },
                runs: 2,
            },
        ];
        for c in cases {
            let (asc, frames) = retimed(c.ts);
            let mut t = AacToOpus::new(&asc).unwrap();
            let mut out = Vec::new();
            let mut ends = Vec::new();
            for (ts, f) in &frames {
                let before = out.len();
                t.push(*ts, f, &mut out).unwrap();
                if out.len() > before {
                    ends.push((*ts, out[out.len() - 1].ts.wrapping_add(960)));
                }
            }
            let runs = 1 + out
                .windows(2)
                .filter(|w| w[1].ts.wrapping_sub(w[0].ts) != 960)
                .count();
            assert_eq!(runs, c.runs, "{}", c.what);
            // Each run starts exactly where the rule puts its first input frame.
            for (i, f) in out.iter().enumerate() {
                if i == 0 || f.ts.wrapping_sub(out[i - 1].ts) != 960 {
                    let (in_ts, _) = frames
                        .iter()
                        .find(|(ts, _)| t.map_ts(*ts) == Some(f.ts))
                        .unwrap_or_else(|| panic!("{}: run at {} has no source", c.what, f.ts));
                    assert_eq!(t.map_ts(*in_ts), Some(in_ts.wrapping_mul(3)), "{}", c.what);
                }
            }
            // After each frame, output reaches up to where that frame ends by the rule, less
            // what does not fill an Opus frame yet, give or take the quarter-frame tolerance.
            for (in_ts, end) in ends {
                let want = in_ts.wrapping_add(1024).wrapping_mul(3);
                let lag = want.wrapping_sub(end) as i32;
                assert!(
                    (-768..960 + 768).contains(&lag),
                    "{}: {in_ts} → {end}",
                    c.what
                );
            }
            let pcm = decode_opus(&out, 1);
            assert!(rms(&pcm[9600..]) > 0.03, "{}: silence", c.what);
        }
    }

    #[test]
    fn map_ts_is_continuous_for_fractional_ratios() {
        // 44.1 kHz → 48 kHz is 160/147: the rule must not jump when the input wraps.
        let mut t = AacToOpus::new(&[0x12, 0x10]).unwrap();
        let frame = depacketize(
            &capture("sine440-44k1-stereo").fmtp,
            &capture("sine440-44k1-stereo").packets,
        )[5]
        .1
        .clone();
        let ts0 = u32::MAX - 44100;
        t.push(ts0, &frame, &mut Vec::new()).unwrap();
        let out0 = t.map_ts(ts0).unwrap();
        assert_eq!(out0, (u64::from(ts0) * 48000 / 44100) as u32);
        for secs in [1u32, 2, 3] {
            let ts = ts0.wrapping_add(44100 * secs);
            assert_eq!(
                t.map_ts(ts),
                Some(out0.wrapping_add(48000 * secs)),
                "{secs} s"
            );
        }
        assert_eq!(
            t.map_ts(ts0.wrapping_sub(441)),
            Some(out0.wrapping_sub(480))
        );
    }

    #[test]
    fn corrupt_frames_are_errors_for_themselves_only() {
        let (asc, mut frames) = retimed(|i| Some(1024 * i));
        for i in [5, 6, 20] {
            let f = &frames[i].1;
            frames[i].1 = f.slice(..f.len() / 3);
        }
        let mut t = AacToOpus::new(&asc).unwrap();
        let mut out = Vec::new();
        let results: Vec<bool> = frames
            .iter()
            .map(|(ts, f)| t.push(*ts, f, &mut out).is_ok())
            .collect();
        let failed: Vec<usize> = (0..results.len()).filter(|i| !results[*i]).collect();
        assert_eq!(failed, [5, 6, 20]);
        let runs = out
            .windows(2)
            .filter(|w| w[1].ts.wrapping_sub(w[0].ts) != 960)
            .count();
        assert_eq!(runs, 0, "the timeline has a hole");
        let pcm = decode_opus(&out, 1);
        let after = 22 * 1024 * 3;
        assert_sine_440(&pcm[after..], 1, "after corrupt frames");
    }

    /// A sine at `freq` sampled at `rate`, `n` samples from sample 0.
    fn sine(freq: f64, rate: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as f32)
            .collect()
    }

    fn resample(from: u32, to: u32, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut r = Resampler::new(from, to, 1);
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            r.push(&[c.to_vec()], 0);
            r.produce(&mut out);
        }
        out
    }

    #[test]
    fn resampler_is_accurate_and_aligned() {
        // (from, to, tone): the output must be the same tone sampled at the new rate, with
        // no delay, to -60 dB.
        let cases = [
            (44100, 48000, 1000.0),
            (44100, 48000, 15000.0),
            (32000, 48000, 440.0),
            (22050, 24000, 3000.0),
            (11025, 12000, 4000.0),
            (7350, 8000, 440.0),
            (96000, 48000, 10000.0),
            (88200, 48000, 19000.0),
            (64000, 48000, 1000.0),
        ];
        for (from, to, freq) in cases {
            let input = sine(freq, f64::from(from), from as usize / 2);
            let out = resample(from, to, &input, 1024);
            let want = sine(freq, f64::from(to), out.len());
            assert!(
                out.len() + 200 > to as usize / 2,
                "{from}→{to}: {} samples",
                out.len()
            );
            let err = out[200..]
                .iter()
                .zip(&want[200..])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 0.5e-3, "{from}→{to} at {freq} Hz: error {err}");
        }
    }

    #[test]
    fn resampler_rejects_what_would_alias() {
        // Downsampling: a 30 kHz tone at 96 kHz has no place at 48 kHz and must vanish
        // rather than fold to 18 kHz.
        let input = sine(30000.0, 96000.0, 48000);
        let out = resample(96000, 48000, &input, 1000);
        assert!(rms(&out[100..]) < 0.5 * 1e-4, "rms {}", rms(&out[100..]));
        // Upsampling: the images of a tone at 44.1 - f kHz (folded to 48 - (44.1 - f) kHz)
        // are gone, up to the 19.8 kHz passband edge.
        for f in [10000.0, 19000.0] {
            let input = sine(f, 44100.0, 44100);
            let out = resample(44100, 48000, &input, 1000);
            let image = tone_amplitude(&out[200..], 48000.0 - (44100.0 - f), 48000.0);
            assert!(image < 0.5 * 1e-3, "{f} Hz: image at {image}");
        }
    }

    /// A minimal Ogg Opus writer (RFC 7845), to let other decoders check our output.
    fn ogg_opus(frames: &[OpusFrame], channels: u8, input_rate: u32) -> Vec<u8> {
        fn crc(data: &[u8]) -> u32 {
            let mut c = 0u32;
            for &b in data {
                c ^= u32::from(b) << 24;
                for _ in 0..8 {
                    c = if c & 0x8000_0000 != 0 {
                        (c << 1) ^ 0x04c1_1db7
                    } else {
                        c << 1
                    };
                }
            }
            c
        }
        fn page(out: &mut Vec<u8>, seq: u32, flags: u8, granule: u64, packet: &[u8]) {
            let start = out.len();
            out.extend(b"OggS\0");
            out.push(flags);
            out.extend(granule.to_le_bytes());
            out.extend(0x0c0f_fab1u32.to_le_bytes());
            out.extend(seq.to_le_bytes());
            out.extend([0; 4]);
            let lacing: Vec<u8> = std::iter::repeat_n(255u8, packet.len() / 255)
                .chain([(packet.len() % 255) as u8])
                .collect();
            out.push(lacing.len() as u8);
            out.extend(lacing);
            out.extend(packet);
            let c = crc(&out[start..]);
            out[start + 22..start + 26].copy_from_slice(&c.to_le_bytes());
        }
        let mut head = b"OpusHead\x01".to_vec();
        head.push(channels);
        head.extend(312u16.to_le_bytes());
        head.extend(input_rate.to_le_bytes());
        head.extend([0, 0, 0]);
        let mut out = Vec::new();
        page(&mut out, 0, 2, 0, &head);
        page(&mut out, 1, 0, 0, b"OpusTags\x06\0\0\0confab\0\0\0\0");
        for (i, f) in frames.iter().enumerate() {
            let eos = if i + 1 == frames.len() { 4 } else { 0 };
            let granule = 960 * (i as u64 + 1);
            page(&mut out, i as u32 + 2, eos, granule, &f.data);
        }
        out
    }

    /// Interop: our Opus must decode in another implementation. Writes Ogg Opus files to
    /// `$AAC_OPUS_OUT` (default: the temp dir) and, where `ffmpeg` is installed, decodes
    /// them with it and checks for the tone.
    /// `cargo test -p confab --lib bridge::aac::tests::interop_ffmpeg -- --ignored --nocapture`
    #[test]
    #[ignore = "writes files and runs ffmpeg"]
    fn interop_ffmpeg() {
        let dir = std::env::var("AAC_OPUS_OUT").map_or_else(|_| std::env::temp_dir(), Into::into);
        for name in [
            "sine440-44k1-stereo",
            "sine440-16k-mono-frag",
            "sine440-8k-mono",
        ] {
            let c = capture(name);
            let out = transcode(&c.fmtp.config, &depacketize(&c.fmtp, &c.packets));
            let path = dir.join(format!("{name}.opus.ogg"));
            std::fs::write(&path, ogg_opus(&out, c.channels as u8, c.clock)).unwrap();
            println!("wrote {}", path.display());
            let run = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-i"])
                .arg(&path)
                .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
                .output();
            let Ok(run) = run else {
                println!("no ffmpeg: decode {} by hand", path.display());
                continue;
            };
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(
                run.status.success() && stderr.is_empty(),
                "{name}: ffmpeg says {stderr}"
            );
            let pcm: Vec<f32> = run
                .stdout
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            println!("ffmpeg decoded {name}: {} samples, no errors", pcm.len());
            // ffmpeg's downmix (`-ac 1`) restores the mono source's level.
            assert_sine_440(&pcm[9600..], 1, &format!("{name} via ffmpeg"));
        }
    }

    /// CPU cost per 20 ms of audio, whole pipeline from AAC frames.
    /// `cargo test --release -p confab --lib bridge::aac::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run in release"]
    fn bench() {
        for name in [
            "sine440-44k1-stereo",
            "sine440-16k-mono-frag",
            "sine440-8k-mono",
        ] {
            let c = capture(name);
            let frames = depacketize(&c.fmtp, &c.packets);
            let config = AacConfig::parse(&c.fmtp.config).unwrap();
            let mut t = AacToOpus::new(&c.fmtp.config).unwrap();
            let mut out = Vec::new();
            let rounds = 50u32;
            let step = frames.len() as u32 * 1024;
            let start = std::time::Instant::now();
            for r in 0..rounds {
                for (ts, f) in &frames {
                    t.push(ts.wrapping_add(r * step), f, &mut out).unwrap();
                }
            }
            let elapsed = start.elapsed();
            let audio_ms = f64::from(rounds * step) * 1000.0 / f64::from(config.sample_rate);
            let per_20ms = elapsed.as_secs_f64() * 1e6 / (audio_ms / 20.0);

            // The AAC decoder alone, for the breakdown.
            let mut dec = AacToOpus::new(&c.fmtp.config).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                for (_, f) in &frames {
                    let p = PacketRef::new(0, Timestamp::ZERO, Duration::new(1024), f);
                    let _ = dec.decoder.decode_ref(&p).unwrap();
                }
            }
            let decode = start.elapsed().as_secs_f64() * 1e6 / (audio_ms / 20.0);

            // The resampler alone, where there is one.
            let ch = usize::from(config.channels);
            let mut r = Resampler::new(config.sample_rate, 48000, ch);
            let planes = vec![sine(440.0, f64::from(config.sample_rate), 1024); ch];
            let mut pcm = Vec::new();
            let start = std::time::Instant::now();
            for _ in 0..rounds * frames.len() as u32 {
                r.push(&planes, 0);
                r.produce(&mut pcm);
                pcm.clear();
            }
            let resample = start.elapsed().as_secs_f64() * 1e6 / (audio_ms / 20.0);
            let resample = if t.opus.resampler.is_some() {
                format!("resampling {resample:.0} µs ({} taps)", r.taps)
            } else {
                "no resampling".to_owned()
            };
            println!(
                "{name}: {per_20ms:.0} µs per 20 ms of audio ({:.1}% of a core), of which AAC \
                 decoding {decode:.0} µs, {resample}, the rest Opus encoding; {} Opus frames, \
                 {:.1} kbit/s",
                per_20ms / 200.0,
                out.len(),
                out.iter().map(|f| f.data.len()).sum::<usize>() as f64 * 8.0 / audio_ms,
            );
        }
    }
}
