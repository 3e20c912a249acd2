//! Synthetic media: a moving H.264 test pattern that identifies its publisher, fake Opus
//! packets, and the receive side (RTP → access units → openh264 → pixel check).
//!
//! The pattern (320x240, I420):
//! - rows 0..16: ten 32-pixel blocks, the frame counter in binary (MSB first, bright = 1);
//! - rows 16..32: ten blocks, the publisher's `tag` in binary;
//! - a bright 32x32 square at y = 112 whose x position follows the frame counter;
//! - rows 176..240: static dark noise (it makes every IDR several kilobytes, so keyframes are
//!   fragmented into FU-A packets);
//! - everything else dark.
//!
//! A decoded frame passes the check only if the bits are clear-cut, the counter is in range,
//! the square is where the counter says and the background is dark — garbage fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level, Profile,
};
use openh264::formats::{YUVBuffer, YUVSource};
use openh264::OpenH264API;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;

pub const WIDTH: usize = 320;
pub const HEIGHT: usize = 240;
pub const FPS: u32 = 20;
pub const FRAME_DURATION: Duration = Duration::from_millis(1000 / FPS as u64);
/// Frames in the pre-encoded loop; a multiple of `KEYFRAME_INTERVAL` so the loop restarts on
/// an IDR.
pub const LOOP_FRAMES: u16 = 60;
/// An IDR every second: receivers that join late (or lose a packet) recover within 1 s even
/// if nobody forwards their PLI.
pub const KEYFRAME_INTERVAL: u32 = FPS;

pub const AUDIO_FRAME_DURATION: Duration = Duration::from_millis(20);
pub const AUDIO_PAYLOAD_LEN: usize = 80;
/// Opus TOC byte: config 31 (CELT FB 20 ms), stereo, one frame.
const OPUS_TOC: u8 = 0xFC;

const BITS: usize = 10;
const BLOCK_W: usize = WIDTH / BITS;
const ROW_H: usize = 16;
const SQUARE: usize = 32;
const SQUARE_Y: usize = 112;
const SQUARE_STEP: usize = 16;
const SQUARE_POSITIONS: usize = (WIDTH - SQUARE) / SQUARE_STEP + 1;
const NOISE_Y: usize = 176;
const DARK: u8 = 16;
const BRIGHT: u8 = 235;
/// The largest value `tag` may have (10 bits).
pub const MAX_TAG: u16 = (1 << BITS) - 1;

/// Where the square is in frame `counter`.
pub fn square_x(counter: u16) -> usize {
    SQUARE_STEP * (counter as usize % SQUARE_POSITIONS)
}

/// The I420 picture of frame `counter` of publisher `tag`.
pub fn render(counter: u16, tag: u16) -> Vec<u8> {
    render_with_noise(counter, tag, 0, 0)
}

/// [`render`] with the first `rows` rows of the noise band seeded by `noise` as well: a new seed
/// in every frame costs the encoder bits in proportion to `rows` (a static texture costs a P
/// frame nothing), which is how a simulcast publisher's layers get different bitrates.
pub fn render_with_noise(counter: u16, tag: u16, noise: u32, rows: usize) -> Vec<u8> {
    let mut yuv = vec![128u8; WIDTH * HEIGHT * 3 / 2];
    let (y, _) = yuv.split_at_mut(WIDTH * HEIGHT);
    y.fill(DARK);
    let mut fill = |x0: usize, y0: usize, w: usize, h: usize| {
        for row in y0..y0 + h {
            y[row * WIDTH + x0..row * WIDTH + x0 + w].fill(BRIGHT);
        }
    };
    for bit in 0..BITS {
        let mask = 1 << (BITS - 1 - bit);
        if counter & mask != 0 {
            fill(bit * BLOCK_W, 0, BLOCK_W, ROW_H);
        }
        if tag & mask != 0 {
            fill(bit * BLOCK_W, ROW_H, BLOCK_W, ROW_H);
        }
    }
    fill(square_x(counter), SQUARE_Y, SQUARE, SQUARE);
    let fixed = 0x9E37_79B9u32 ^ tag as u32;
    let mut seed = fixed;
    for (i, v) in y[NOISE_Y * WIDTH..].iter_mut().enumerate() {
        if i == rows * WIDTH {
            seed = fixed;
        }
        if i == 0 && noise != 0 && rows > 0 {
            seed = fixed.wrapping_add(noise.wrapping_mul(0x85EB_CA6B)) | 1;
        }
        // xorshift
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *v = DARK + (seed % 84) as u8;
    }
    yuv
}

/// What a passing frame says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub counter: u16,
    pub tag: u16,
}

fn mean(y: &[u8], stride: usize, x0: usize, y0: usize, w: usize, h: usize) -> u32 {
    let mut sum = 0u32;
    for row in y0..y0 + h {
        sum += y[row * stride + x0..row * stride + x0 + w]
            .iter()
            .map(|&v| v as u32)
            .sum::<u32>();
    }
    sum / (w * h) as u32
}

/// Checks a decoded luma plane against the pattern.
pub fn check_frame(
    y: &[u8],
    stride: usize,
    width: usize,
    height: usize,
) -> Result<FrameInfo, String> {
    if (width, height) != (WIDTH, HEIGHT) {
        return Err(format!(
            "frame is {width}x{height}, expected {WIDTH}x{HEIGHT}"
        ));
    }
    if y.len() < stride * height {
        return Err(format!("luma plane of {} bytes is too small", y.len()));
    }
    let read_bits = |row_y: usize, what: &str| -> Result<u16, String> {
        let mut v = 0u16;
        for bit in 0..BITS {
            let m = mean(
                y,
                stride,
                bit * BLOCK_W + 8,
                row_y + 4,
                BLOCK_W - 16,
                ROW_H - 8,
            );
            let b = if m >= 170 {
                1
            } else if m <= 80 {
                0
            } else {
                return Err(format!("{what} bit {bit} is ambiguous (mean luma {m})"));
            };
            v = (v << 1) | b;
        }
        Ok(v)
    };
    let counter = read_bits(0, "counter")?;
    let tag = read_bits(ROW_H, "tag")?;
    if counter >= LOOP_FRAMES {
        return Err(format!("counter {counter} out of range"));
    }
    let sx = square_x(counter);
    let inside = mean(y, stride, sx + 6, SQUARE_Y + 6, SQUARE - 12, SQUARE - 12);
    if inside < 170 {
        return Err(format!(
            "frame {counter}: square missing at x={sx} (mean luma {inside})"
        ));
    }
    let probe_x = if sx >= WIDTH / 2 {
        sx - WIDTH / 2
    } else {
        sx + WIDTH / 2 - SQUARE
    };
    let outside = mean(
        y,
        stride,
        probe_x + 6,
        SQUARE_Y + 6,
        SQUARE - 12,
        SQUARE - 12,
    );
    if outside > 80 {
        return Err(format!(
            "frame {counter}: background at x={probe_x} is bright (mean luma {outside})"
        ));
    }
    let band = mean(y, stride, 0, 48, WIDTH, 48);
    if band > 60 {
        return Err(format!(
            "frame {counter}: empty band is not dark (mean luma {band})"
        ));
    }
    let noise = mean(y, stride, 0, NOISE_Y, WIDTH, HEIGHT - NOISE_Y);
    if !(35..=85).contains(&noise) {
        return Err(format!(
            "frame {counter}: noise area has mean luma {noise}, expected about 58"
        ));
    }
    Ok(FrameInfo { counter, tag })
}

/// One encoded picture (Annex B, SPS/PPS in front of every IDR).
#[derive(Clone)]
pub struct EncodedFrame {
    pub data: Bytes,
    pub keyframe: bool,
}

/// The `LOOP_FRAMES` encoded pictures of publisher `tag`, encoded once per process and shared.
pub fn encoded_loop(tag: u16) -> Result<Arc<Vec<EncodedFrame>>> {
    static CACHE: OnceLock<Mutex<HashMap<u16, Arc<Vec<EncodedFrame>>>>> = OnceLock::new();
    if tag > MAX_TAG {
        bail!("tag {tag} does not fit in {BITS} bits");
    }
    let cache = CACHE.get_or_init(Default::default);
    // Encoding under the lock keeps concurrent publishers from encoding the same loop twice.
    let mut cache = cache.lock().unwrap();
    if let Some(frames) = cache.get(&tag) {
        return Ok(frames.clone());
    }
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(1_000_000))
        .max_frame_rate(FrameRate::from_hz(FPS as f32))
        .skip_frames(false)
        .profile(Profile::Baseline)
        .level(Level::Level_3_1)
        .scene_change_detect(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(KEYFRAME_INTERVAL));
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| anyhow!("openh264 encoder: {e}"))?;
    let mut frames = Vec::with_capacity(LOOP_FRAMES as usize);
    for counter in 0..LOOP_FRAMES {
        let yuv = YUVBuffer::from_vec(render(counter, tag), WIDTH, HEIGHT);
        if (counter as u32).is_multiple_of(KEYFRAME_INTERVAL) {
            encoder.force_intra_frame();
        }
        let bitstream = encoder
            .encode(&yuv)
            .map_err(|e| anyhow!("encoding frame {counter}: {e}"))?;
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        let data = bitstream.to_vec();
        if data.is_empty() {
            bail!("openh264 skipped frame {counter}");
        }
        if (counter as u32).is_multiple_of(KEYFRAME_INTERVAL) && !has_idr(&data) {
            bail!("frame {counter} should be an IDR but is not");
        }
        frames.push(EncodedFrame {
            data: Bytes::from(data),
            keyframe,
        });
    }
    let frames = Arc::new(frames);
    cache.insert(tag, frames.clone());
    Ok(frames)
}

/// Encodes the pattern frame by frame, like a camera: one IDR at the start, then P frames,
/// and another IDR only when asked (a keyframe request from the network).
pub struct LiveEncoder {
    encoder: Encoder,
    tag: u16,
    frame: u64,
    /// Rows of fresh noise in every frame (see [`render_with_noise`]).
    fresh_rows: usize,
}

impl LiveEncoder {
    pub fn new(tag: u16) -> Result<LiveEncoder> {
        Self::with_bitrate(tag, 1_000_000, 0)
    }

    /// A live encoder aiming at `bps` whose pictures have `fresh_rows` rows of fresh noise in
    /// every frame (a simulcast layer: more rows, more bits).
    pub fn with_bitrate(tag: u16, bps: u32, fresh_rows: usize) -> Result<LiveEncoder> {
        if tag > MAX_TAG {
            bail!("tag {tag} does not fit in {BITS} bits");
        }
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bps))
            .max_frame_rate(FrameRate::from_hz(FPS as f32))
            .skip_frames(false)
            .profile(Profile::Baseline)
            .level(Level::Level_3_1)
            .scene_change_detect(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0));
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| anyhow!("openh264 encoder: {e}"))?;
        Ok(LiveEncoder {
            encoder,
            tag,
            frame: 0,
            fresh_rows,
        })
    }

    /// Encodes the next picture; an IDR if `keyframe` (the first one always is).
    pub fn encode_next(&mut self, keyframe: bool) -> Result<EncodedFrame> {
        let counter = (self.frame % LOOP_FRAMES as u64) as u16;
        let noise = self.frame as u32 + 1;
        let picture = render_with_noise(counter, self.tag, noise, self.fresh_rows);
        let yuv = YUVBuffer::from_vec(picture, WIDTH, HEIGHT);
        if keyframe {
            self.encoder.force_intra_frame();
        }
        let bitstream = self
            .encoder
            .encode(&yuv)
            .map_err(|e| anyhow!("encoding frame {}: {e}", self.frame))?;
        let data = bitstream.to_vec();
        if data.is_empty() {
            bail!("openh264 skipped frame {}", self.frame);
        }
        self.frame += 1;
        Ok(EncodedFrame {
            keyframe: has_idr(&data),
            data: Bytes::from(data),
        })
    }
}

/// Where a publisher's video comes from.
pub enum VideoSource {
    /// The shared pre-encoded loop (an IDR every second, no CPU cost per frame; keyframe
    /// requests jump to the next IDR of the loop).
    Looped(Arc<Vec<EncodedFrame>>),
    /// Live encoding with IDRs only at the start and on request (what browsers do).
    Live(Arc<Mutex<LiveEncoder>>),
}

impl VideoSource {
    /// The frame to send now; `keyframe` asks for an IDR.
    pub async fn next(&mut self, position: &mut usize, keyframe: bool) -> Result<EncodedFrame> {
        match self {
            VideoSource::Looped(frames) => {
                if keyframe && !frames[*position % frames.len()].keyframe {
                    let k = KEYFRAME_INTERVAL as usize;
                    *position = (*position / k + 1) * k;
                }
                let f = frames[*position % frames.len()].clone();
                *position += 1;
                Ok(f)
            }
            VideoSource::Live(enc) => {
                let enc = enc.clone();
                let frame =
                    tokio::task::spawn_blocking(move || enc.lock().unwrap().encode_next(keyframe))
                        .await??;
                *position += 1;
                Ok(frame)
            }
        }
    }

    /// A live encoder for `tag`.
    pub fn live(tag: u16) -> Result<VideoSource> {
        Ok(VideoSource::Live(Arc::new(Mutex::new(LiveEncoder::new(
            tag,
        )?))))
    }
}

/// NAL unit types in an Annex B byte stream.
pub fn nal_types(annexb: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 <= annexb.len() {
        if annexb[i] == 0 && annexb[i + 1] == 0 && annexb[i + 2] == 1 {
            if let Some(&h) = annexb.get(i + 3) {
                types.push(h & 0x1F);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// True if the access unit holds an IDR slice (NAL type 5).
pub fn has_idr(annexb: &[u8]) -> bool {
    nal_types(annexb).contains(&5)
}

/// The payload of fake Opus packet `seq` of publisher `tag`.
pub fn audio_payload(tag: u16, seq: u32) -> Bytes {
    let mut p = Vec::with_capacity(AUDIO_PAYLOAD_LEN);
    p.push(OPUS_TOC);
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    while p.len() < AUDIO_PAYLOAD_LEN {
        p.push((p.len() as u32).wrapping_mul(7).wrapping_add(seq) as u8);
    }
    Bytes::from(p)
}

/// The tag of a fake Opus packet, if it is intact.
pub fn check_audio(payload: &[u8]) -> Option<u16> {
    if payload.len() != AUDIO_PAYLOAD_LEN || payload[0] != OPUS_TOC {
        return None;
    }
    let tag = u16::from_be_bytes([payload[1], payload[2]]);
    let seq = u32::from_be_bytes([payload[3], payload[4], payload[5], payload[6]]);
    let intact = payload
        .iter()
        .enumerate()
        .skip(7)
        .all(|(i, &b)| b == (i as u32).wrapping_mul(7).wrapping_add(seq) as u8);
    intact.then_some(tag)
}

/// Output of the RTP → access-unit assembler.
#[derive(Debug)]
pub enum Assembled {
    /// A complete access unit in Annex B form.
    Frame(Vec<u8>),
    /// A frame was lost or damaged; the decoder must wait for the next IDR.
    Dropped(String),
}

/// Reassembles H.264 access units from in-order RTP packets (one timestamp per frame, marker
/// on the last packet). A sequence gap damages the frame it falls into.
#[derive(Default)]
pub struct H264Assembler {
    ts: Option<u32>,
    next_seq: Option<u16>,
    payloads: Vec<Bytes>,
    broken: bool,
    pub gaps: u64,
    pub late: u64,
}

impl H264Assembler {
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
    ) -> Option<Assembled> {
        let mut gap = false;
        if let Some(expected) = self.next_seq {
            let ahead = seq.wrapping_sub(expected);
            if ahead >= 0x8000 {
                // older than expected: a duplicate or a late retransmission
                self.late += 1;
                return None;
            }
            if ahead != 0 {
                gap = true;
                self.gaps += 1;
            }
        }
        self.next_seq = Some(seq.wrapping_add(1));
        if self.ts != Some(timestamp) {
            self.ts = Some(timestamp);
            self.payloads.clear();
            self.broken = false;
        }
        if gap {
            self.broken = true;
        }
        if payload.is_empty() {
            // padding-only packet
        } else {
            self.payloads.push(payload);
        }
        if !marker {
            return None;
        }
        self.ts = None;
        let payloads = std::mem::take(&mut self.payloads);
        if self.broken {
            return Some(Assembled::Dropped(format!(
                "sequence gap before packet {seq}"
            )));
        }
        let mut depacketizer = H264Packet::default();
        let mut au = Vec::new();
        for p in &payloads {
            match depacketizer.depacketize(p) {
                Ok(nal) => au.extend_from_slice(&nal),
                Err(e) => return Some(Assembled::Dropped(format!("depacketize: {e}"))),
            }
        }
        if au.is_empty() {
            return Some(Assembled::Dropped("empty access unit".into()));
        }
        Some(Assembled::Frame(au))
    }
}

/// Puts RTP packets back in sequence order, as a browser's jitter buffer does: a packet that
/// arrives early waits for the ones before it, at most `hold` (time for a retransmission after
/// a NACK); then the missing ones are given up and the assembler sees the gap. Without it a
/// path that reorders (jitter) breaks nearly every frame of several packets.
pub struct ReorderBuffer<T> {
    hold: Duration,
    /// The next sequence number to release, extended to 64 bits (no wrap).
    next: Option<u64>,
    highest: u64,
    waiting: BTreeMap<u64, (Instant, T)>,
}

impl<T> ReorderBuffer<T> {
    pub fn new(hold: Duration) -> ReorderBuffer<T> {
        ReorderBuffer {
            hold,
            next: None,
            highest: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Takes packet `seq`; returns the packets now in order (none, or several at once).
    pub fn push(&mut self, seq: u16, item: T, now: Instant) -> Vec<T> {
        let ext = match self.next {
            None => {
                let ext = (1 << 32) + seq as u64;
                self.next = Some(ext);
                self.highest = ext;
                ext
            }
            Some(_) => {
                let delta = seq.wrapping_sub(self.highest as u16) as i16 as i64;
                (self.highest as i64 + delta) as u64
            }
        };
        self.highest = self.highest.max(ext);
        if self.next.is_some_and(|n| ext < n) {
            return Vec::new(); // a duplicate, or too late: given up on already
        }
        self.waiting.entry(ext).or_insert((now, item));
        self.release(now)
    }

    fn release(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some((&ext, &(at, _))) = self.waiting.first_key_value() {
            let in_order = self.next == Some(ext);
            if !in_order && now.duration_since(at) < self.hold {
                break;
            }
            let (_, item) = self.waiting.remove(&ext).expect("first key exists");
            out.push(item);
            self.next = Some(ext + 1);
        }
        out
    }
}

/// What the decoder thread reports, one per access unit handed to it.
#[derive(Debug, Clone)]
pub enum DecodeReport {
    /// Decoded and the pattern check passed.
    Good(FrameInfo),
    /// Decoded but the pixels are wrong.
    Bad(String),
    /// Skipped while waiting for an IDR.
    Skipped,
    /// openh264 refused the access unit.
    Error(String),
}

/// A decoder on its own thread (openh264 is CPU-bound and synchronous). Feed it with
/// [`VideoDecoder::send`]; it calls `report` for every access unit. Stops when dropped.
pub struct VideoDecoder {
    tx: Option<std::sync::mpsc::Sender<Assembled>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VideoDecoder {
    pub fn spawn(mut report: impl FnMut(DecodeReport) + Send + 'static) -> Result<VideoDecoder> {
        let (tx, rx) = std::sync::mpsc::channel::<Assembled>();
        let mut decoder = Decoder::new().map_err(|e| anyhow!("openh264 decoder: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("e2e-h264-decoder".into())
            .spawn(move || {
                let mut need_idr = true;
                while let Ok(item) = rx.recv() {
                    let au = match item {
                        Assembled::Frame(au) => au,
                        Assembled::Dropped(_) => {
                            need_idr = true;
                            continue;
                        }
                    };
                    if need_idr {
                        if !has_idr(&au) {
                            report(DecodeReport::Skipped);
                            continue;
                        }
                        need_idr = false;
                    }
                    match decoder.decode(&au) {
                        Ok(Some(pic)) => {
                            let (w, h) = pic.dimensions();
                            let stride = pic.strides().0;
                            match check_frame(pic.y(), stride, w, h) {
                                Ok(info) => report(DecodeReport::Good(info)),
                                Err(e) => report(DecodeReport::Bad(e)),
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            need_idr = true;
                            report(DecodeReport::Error(e.to_string()));
                        }
                    }
                }
            })?;
        Ok(VideoDecoder {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands an assembled frame (or a loss notice) to the decoder thread.
    pub fn send(&self, item: Assembled) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(item);
        }
    }
}

impl Drop for VideoDecoder {
    fn drop(&mut self) {
        self.tx.take();
        // The thread ends once the channel is drained; do not join (it may be mid-decode and
        // joining from an async context would block the executor).
        self.thread.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_buffer_sorts_waits_and_gives_up() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut b = ReorderBuffer::new(Duration::from_millis(100));
        assert_eq!(b.push(65534, 'a', ms(0)), vec!['a']);
        assert_eq!(
            b.push(0, 'c', ms(1)),
            Vec::<char>::new(),
            "65535 is missing"
        );
        assert_eq!(b.push(65535, 'b', ms(2)), vec!['b', 'c'], "across the wrap");
        assert_eq!(b.push(2, 'e', ms(3)), Vec::<char>::new());
        assert_eq!(b.push(3, 'f', ms(50)), Vec::<char>::new());
        assert_eq!(
            b.push(4, 'g', ms(104)),
            vec!['e', 'f', 'g'],
            "1 given up after 100 ms"
        );
        assert_eq!(b.push(1, 'd', ms(105)), Vec::<char>::new(), "too late");
        assert_eq!(b.push(4, 'g', ms(106)), Vec::<char>::new(), "duplicate");
        assert_eq!(b.push(5, 'h', ms(107)), vec!['h']);
    }

    #[test]
    fn rendered_pattern_passes_its_own_check() {
        for counter in [0, 1, 17, 59] {
            let yuv = render(counter, 0x2A5);
            let info = check_frame(&yuv[..WIDTH * HEIGHT], WIDTH, WIDTH, HEIGHT).unwrap();
            assert_eq!(
                info,
                FrameInfo {
                    counter,
                    tag: 0x2A5
                }
            );
        }
        let garbage = vec![128u8; WIDTH * HEIGHT];
        assert!(check_frame(&garbage, WIDTH, WIDTH, HEIGHT).is_err());
    }

    #[test]
    fn audio_payload_round_trips() {
        let p = audio_payload(7, 1234);
        assert_eq!(check_audio(&p), Some(7));
        let mut bad = p.to_vec();
        bad[40] ^= 1;
        assert_eq!(check_audio(&bad), None);
    }
}
