//! The media the load generator sends: a moving test pattern encoded once with openh264 at the
//! chosen size and bitrate, packetized once, then looped by every publisher; and Opus-sized
//! audio packets. Also the optional receive-side decoder that proves the pictures arrive intact.
//!
//! Integrity: at encode time every frame is decoded once and the hash of its luma plane kept.
//! The SEI stamp names the frame's index in the loop, so a subscriber that decodes (`--decode`)
//! compares bit for bit — any corruption on the way shows as a hash mismatch.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level, Profile,
    QpRange, RateControlMode,
};
use openh264::formats::{YUVBuffer, YUVSource};
use openh264::{OpenH264API, Timestamp};
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;

/// Largest RTP payload: leaves room for RTP/SRTP headers and extensions under a 1280-byte IPv6
/// minimum MTU, like browsers do.
pub const MTU: usize = 1200;

/// Opus at 32 kbit/s in 20 ms frames is 80 bytes.
pub const AUDIO_PAYLOAD_LEN: usize = 80;
pub const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// 48 kHz RTP clock, 20 ms.
pub const AUDIO_TS_STEP: u32 = 960;

/// What to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSpec {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// Length of the loop; it starts with the only IDR (a keyframe request restarts it).
    pub loop_frames: u32,
}

/// One encoded picture, packetized.
#[derive(Debug, Clone)]
pub struct LoopFrame {
    /// RTP payloads in order (STAP-A with SPS/PPS first on keyframes).
    pub payloads: Vec<Bytes>,
    /// Where the SEI stamp packet goes (after the parameter sets, before the first slice).
    pub sei_at: usize,
    pub keyframe: bool,
    /// Encoded size in bytes.
    pub bytes: usize,
}

/// The shared loop every publisher replays.
#[derive(Debug)]
pub struct VideoLoop {
    pub spec: VideoSpec,
    pub frames: Vec<LoopFrame>,
    /// Hash of each frame's decoded luma plane.
    pub hashes: Vec<u64>,
    /// What the encoder really produced, in bit/s of H.264 (without the stamps).
    pub actual_bps: f64,
    /// Seconds the encoding took.
    pub encode_seconds: f64,
}

impl VideoLoop {
    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.spec.fps as f64)
    }

    pub fn rtp_ts_step(&self) -> u32 {
        90_000 / self.spec.fps
    }
}

/// xorshift32: the pattern must be the same in every run, so no `rand` here.
fn next(seed: &mut u32) -> u32 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    *seed
}

/// Picture `n` of the pattern (I420): a dark gradient, a bright square that moves across, and a
/// band of fresh noise in every frame so that the encoder has to spend the bitrate it is given
/// (static content would shrink P frames to almost nothing).
pub fn render(spec: &VideoSpec, n: u32) -> Vec<u8> {
    let (w, h) = (spec.width, spec.height);
    let mut yuv = vec![128u8; w * h * 3 / 2];
    let (y, _) = yuv.split_at_mut(w * h);
    for row in 0..h {
        for col in 0..w {
            y[row * w + col] = 16 + ((row + col) * 64 / (w + h)) as u8;
        }
    }
    let side = (h / 6).max(16);
    let travel = w.saturating_sub(side).max(1);
    let x0 = (n as usize * 8) % travel;
    let y0 = h / 3;
    for row in y0..(y0 + side).min(h) {
        y[row * w + x0..row * w + x0 + side].fill(235);
    }
    let mut seed = 0x2545_f491 ^ n.wrapping_mul(0x9e37_79b9);
    let band = (h * 2 / 3)..h;
    for row in band {
        for col in 0..w {
            y[row * w + col] = 60 + (next(&mut seed) % 96) as u8;
        }
    }
    yuv
}

fn level_for(spec: &VideoSpec) -> Level {
    let mbs = spec.width.div_ceil(16) * spec.height.div_ceil(16);
    let mbps = mbs * spec.fps as usize;
    match (mbs, mbps) {
        (..=1620, ..=40_500) => Level::Level_3_0,
        (..=3600, ..=108_000) => Level::Level_3_1,
        (..=5120, ..=216_000) => Level::Level_3_2,
        (..=8192, ..=245_760) => Level::Level_4_0,
        _ => Level::Level_4_2,
    }
}

/// FNV-1a over the visible luma rows.
fn luma_hash(y: &[u8], stride: usize, width: usize, height: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for row in 0..height {
        for &b in &y[row * stride..row * stride + width] {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Encodes and packetizes the loop (CPU-bound: call it from a blocking thread).
pub fn encode_loop(spec: VideoSpec) -> Result<VideoLoop> {
    if !spec.width.is_multiple_of(2)
        || !spec.height.is_multiple_of(2)
        || spec.width < 64
        || spec.height < 64
    {
        bail!(
            "video size {}x{}: width and height must be even and at least 64",
            spec.width,
            spec.height
        );
    }
    if spec.fps == 0 || spec.fps > 60 || spec.loop_frames == 0 {
        bail!("fps must be 1..=60 and the loop at least one frame");
    }
    let started = std::time::Instant::now();
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(spec.bitrate_bps))
        .rate_control_mode(RateControlMode::Bitrate)
        .max_frame_rate(FrameRate::from_hz(spec.fps as f32))
        .skip_frames(false)
        .profile(Profile::Baseline)
        .level(level_for(&spec))
        .scene_change_detect(false)
        .qp(QpRange::new(10, 51))
        .intra_frame_period(IntraFramePeriod::from_num_frames(0));
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| anyhow!("openh264 encoder: {e}"))?;
    let mut decoder = Decoder::new().map_err(|e| anyhow!("openh264 decoder: {e}"))?;
    let mut frames = Vec::with_capacity(spec.loop_frames as usize);
    let mut hashes = Vec::with_capacity(spec.loop_frames as usize);
    let mut payloader = H264Payloader::default();
    let mut total = 0usize;
    // One second of frames first, thrown away: the rate control starts far from its target
    // and would make the loop's first frames several times too large, every time it repeats.
    let warm = spec.fps;
    for k in 0..warm + spec.loop_frames {
        let yuv = YUVBuffer::from_vec(render(&spec, k), spec.width, spec.height);
        if k == 0 || k == warm {
            encoder.force_intra_frame();
        }
        let ts = Timestamp::from_millis(k as u64 * 1000 / spec.fps as u64);
        let bitstream = encoder
            .encode_at(&yuv, ts)
            .map_err(|e| anyhow!("encoding frame {k}: {e}"))?;
        if k < warm {
            continue;
        }
        let n = k - warm;
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR);
        let annexb = bitstream.to_vec();
        if annexb.is_empty() {
            bail!("openh264 skipped frame {n}");
        }
        if n == 0 && !keyframe {
            bail!("the loop's first frame is not an IDR");
        }
        let pic = decoder
            .decode(&annexb)
            .map_err(|e| anyhow!("decoding our own frame {n}: {e}"))?
            .with_context(|| format!("decoder gave no picture for frame {n}"))?;
        let (w, h) = pic.dimensions();
        hashes.push(luma_hash(pic.y(), pic.strides().0, w, h));
        let payloads = payloader
            .payload(MTU, &Bytes::from(annexb.clone()))
            .map_err(|e| anyhow!("packetizing frame {n}: {e}"))?;
        let sei_at = payloads
            .iter()
            .position(|p| !matches!(p.first().map(|b| b & 0x1f), Some(7 | 8 | 24)))
            .unwrap_or(payloads.len());
        total += annexb.len();
        frames.push(LoopFrame {
            payloads,
            sei_at,
            keyframe,
            bytes: annexb.len(),
        });
    }
    let seconds = spec.loop_frames as f64 / spec.fps as f64;
    Ok(VideoLoop {
        spec,
        actual_bps: total as f64 * 8.0 / seconds,
        frames,
        hashes,
        encode_seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the receive-side decoder concluded about one access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeOutcome {
    /// Decoded and bit-identical to the sender's reference.
    Intact,
    /// Decoded, but the picture differs from the reference.
    Corrupt,
    /// Waiting for an IDR after a loss.
    Skipped,
    /// openh264 rejected it.
    Error,
}

/// An access unit for the decoder: Annex B bytes and the loop index its stamp named, or a loss
/// notice (the decoder then waits for the next IDR).
pub enum DecoderInput {
    Frame { annexb: Vec<u8>, index: u32 },
    Lost,
}

/// openh264 on its own thread (decoding is CPU-bound and synchronous); ends when dropped.
pub struct FrameChecker {
    tx: Option<mpsc::SyncSender<DecoderInput>>,
}

impl FrameChecker {
    pub fn spawn(
        reference: std::sync::Arc<VideoLoop>,
        mut report: impl FnMut(DecodeOutcome) + Send + 'static,
    ) -> Result<FrameChecker> {
        // Bounded: a decoder that falls behind drops frames (reported as errors) instead of
        // growing memory without bound.
        let (tx, rx) = mpsc::sync_channel::<DecoderInput>(64);
        let mut decoder = Decoder::new().map_err(|e| anyhow!("openh264 decoder: {e}"))?;
        std::thread::Builder::new()
            .name("bench-decoder".into())
            .spawn(move || {
                let mut need_idr = true;
                while let Ok(input) = rx.recv() {
                    let (annexb, index) = match input {
                        DecoderInput::Frame { annexb, index } => (annexb, index),
                        DecoderInput::Lost => {
                            need_idr = true;
                            continue;
                        }
                    };
                    let is_idr = reference
                        .frames
                        .get(index as usize)
                        .is_some_and(|f| f.keyframe);
                    if need_idr && !is_idr {
                        report(DecodeOutcome::Skipped);
                        continue;
                    }
                    need_idr = false;
                    match decoder.decode(&annexb) {
                        Ok(Some(pic)) => {
                            let (w, h) = pic.dimensions();
                            let hash = luma_hash(pic.y(), pic.strides().0, w, h);
                            let ok = reference.hashes.get(index as usize) == Some(&hash);
                            report(if ok {
                                DecodeOutcome::Intact
                            } else {
                                DecodeOutcome::Corrupt
                            });
                        }
                        Ok(None) => report(DecodeOutcome::Error),
                        Err(_) => {
                            need_idr = true;
                            report(DecodeOutcome::Error);
                        }
                    }
                }
            })?;
        Ok(FrameChecker { tx: Some(tx) })
    }

    /// Hands an access unit over; `false` if the decoder is too far behind (the frame is lost
    /// to the check, and the decoder resynchronises at the next IDR).
    pub fn send(&self, input: DecoderInput) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(input) {
            Ok(()) => true,
            Err(_) => {
                let _ = tx.try_send(DecoderInput::Lost);
                false
            }
        }
    }
}

impl Drop for FrameChecker {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has drained what is queued.
        self.tx.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::VideoStamp;

    #[test]
    fn small_loop_encodes_packetizes_and_decodes_to_its_hashes() {
        let spec = VideoSpec {
            width: 160,
            height: 96,
            fps: 30,
            bitrate_bps: 300_000,
            loop_frames: 10,
        };
        let lp = encode_loop(spec).unwrap();
        assert_eq!(lp.frames.len(), 10);
        assert!(lp.frames[0].keyframe);
        assert!(lp.frames[1..].iter().all(|f| !f.keyframe));
        assert_eq!(lp.frames[0].sei_at, 1, "STAP-A(SPS, PPS) comes first");
        assert!(lp
            .frames
            .iter()
            .all(|f| f.payloads.iter().all(|p| p.len() <= MTU)));

        // Reassemble each frame with a stamp in it, as a receiver would, and decode it again.
        let mut decoder = Decoder::new().unwrap();
        let mut depay = rtc::rtp::codec::h264::H264Packet::default();
        use rtc::rtp::packetizer::Depacketizer;
        for (i, f) in lp.frames.iter().enumerate() {
            let mut au = Vec::new();
            let sei = VideoStamp {
                tag: 1,
                frame: i as u32,
                seq: 9,
                sent_us: 77,
            }
            .to_sei();
            let mut payloads = f.payloads.clone();
            payloads.insert(f.sei_at, Bytes::from(sei));
            for p in &payloads {
                au.extend_from_slice(&depay.depacketize(p).unwrap());
            }
            let pic = decoder.decode(&au).unwrap().unwrap();
            let (w, h) = pic.dimensions();
            assert_eq!(luma_hash(pic.y(), pic.strides().0, w, h), lp.hashes[i]);
        }
    }
}
