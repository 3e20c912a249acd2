//! A camera's low layer, made while the media engine asks for it (`media/low_layer.rs` says
//! when): the camera's H.264 decoded, scaled down to about 320 pixels on its long side, encoded
//! again at [`LOW_LAYER_BPS`] and handed to the engine as the track's low layer
//! (`Command::LowLayerRtp`), for subscribers whose estimate or tile cannot take the camera.
//!
//! Each camera has a task ([`serve`]) that receives what the engine asks of it
//! (`ExternalEvent`, routed by the media shell like a browser's session events). For each track
//! asked for, a transcoder: a tap of the track through the engine, like an RTSP player or a
//! snapshot decoder (`snapshot.rs`), so it starts at once from the camera's cached group of
//! pictures, and sees only what the engine forwards; then depacketizing on the task, and
//! decoding, scaling and encoding on a thread of its own, off the media thread and the async
//! workers. Told that nobody needs it any more, or when the track goes, the transcoder stops
//! and its thread ends, freeing the decoder and the encoder.
//!
//! Invariants:
//! - Memory is bounded: [`QUEUE`] access units wait for the thread; when it is full (the
//!   thread falls behind) what comes is dropped up to the camera's next keyframe. A backlog is
//!   decoded whole, as the pictures depend on each other, but only its last picture is scaled
//!   and encoded. So is the replayed group a tap starts with (its pictures 1 ms apart,
//!   [`REPLAYED`]): only its keyframe is encoded, to start from, then the live pictures. The
//!   thread blocks on the engine's full data queue, which backs up the access units in front
//!   of it, which are dropped there. A stopped transcoder's thread drops what is queued.
//! - At most [`MAX_TRANSCODERS`] run on the server; a camera refused one tries again every
//!   [`RETRY`] while it is still asked for, as it does after a transcoder failed.
//! - The low layer is its own RTP stream: an SSRC, sequence numbers and timestamps of its own
//!   (the tap's, the picture keeps its timestamp), and sender reports to match, taken from the
//!   tap's (`Command::LowLayerSenderReport`).
//! - Keyframes: the first picture, one every [`KEYFRAME_EVERY`], and one whenever the engine
//!   asks (a subscriber switches to the low layer or lost it).
//!
//! Scaling is a box filter written here, on the decoder's I420 planes in place (their
//! strides), about one add per source sample: 0.25 ms for the luma of a 1280x720 picture and
//! half that for its chroma, against 1.6 ms to decode it and 3 ms for the whole transcode
//! (release, the `cost` test below). The crates in the tree scale RGB or whole images
//! (`image`'s `thumbnail` took 1.8 ms to bring a 640x360 RGB picture to 320 wide in the
//! snapshot decoder, design notes), and a resampling crate would be a new dependency for a few
//! lines of arithmetic; an area average is also what a picture shrunk by 2 to 6 wants (no
//! ringing, no aliasing of fine detail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
    UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;
use tokio::sync::{mpsc, oneshot};

use super::h264::{self, AccessUnit};
use super::mjpeg::FrameIntervals;
use super::queue::{Backpressure, DataQueue};
use super::snapshot::thread_cpu;
use super::source::{H264Path, Out};
use super::{Bridge, BridgeError, Inner, PlaybackEvent};
use crate::media::api::{Command, ExternalEvent, TrackKey};
use crate::metrics::Metrics;
use crate::names::{ParticipantId, RoomName};

/// The low layer's bitrate (what a browser's 320x180 simulcast layer is capped at).
pub const LOW_LAYER_BPS: u32 = 150_000;
/// The long side of the low layer's picture at most; it is at most half the camera's too.
pub const LOW_LONG_SIDE: usize = 320;
/// Transcoders running at once on the server (a 1080p camera's takes a fifth of a core;
/// BENCHMARKS.md).
pub const MAX_TRANSCODERS: usize = 8;
/// Access units waiting for a transcoder's thread: a replayed group of two seconds at 30 fps
/// fits, and it is about a megabyte of 720p.
pub const QUEUE: usize = 64;
/// A keyframe at least this often, in case a request for one was lost.
pub const KEYFRAME_EVERY: Duration = Duration::from_secs(4);
/// How often a camera looks again at the transcoders it was asked for and does not run.
pub const RETRY: Duration = Duration::from_secs(1);

/// Why a picture was not transcoded.
#[derive(Debug, thiserror::Error)]
pub enum LowLayerError {
    #[error("openh264 decoder at ts {ts}: {reason}")]
    Decode { ts: u32, reason: String },
    #[error("openh264 encoder at ts {ts} ({width}x{height}): {reason}")]
    Encode {
        ts: u32,
        width: usize,
        height: usize,
        reason: String,
    },
    #[error("openh264 cannot start: {0}")]
    Start(String),
}

/// The size of the low layer of a `width` x `height` picture: at most [`LOW_LONG_SIDE`] on
/// its long side and half the picture, in proportion, even (I420).
pub fn low_size(width: usize, height: usize) -> (usize, usize) {
    let scale = (width.max(height) as f64 / LOW_LONG_SIDE as f64).max(2.0);
    let even = |v: usize| (((v as f64 / scale) as usize) & !1).max(2);
    (even(width), even(height))
}

/// Scales one plane down by area averaging: each output sample is the mean of the source
/// samples whose index falls in its share of the picture (`src` rows `stride` apart; rows the
/// slice does not hold count as missing, never read, and a sample with none is `fill`).
pub fn scale_plane(
    src: &[u8],
    stride: usize,
    (sw, sh): (usize, usize),
    dst: &mut [u8],
    (dw, dh): (usize, usize),
    fill: u8,
) {
    if dw == 0 || dh == 0 || sw == 0 || sh == 0 {
        return;
    }
    // Column ranges of the output samples. The rows of one output row are summed column by
    // column first (a loop the compiler vectorizes), then each sample's columns once.
    let xs: Vec<usize> = (0..=dw).map(|x| x * sw / dw).collect();
    let mut columns = vec![0u32; sw];
    for (oy, out) in dst.chunks_exact_mut(dw).take(dh).enumerate() {
        columns.fill(0);
        let mut rows = 0u32;
        let (y0, y1) = (oy * sh / dh, (oy + 1) * sh / dh);
        for y in y0..y1.max(y0 + 1) {
            let Some(row) = src.get(y * stride..y * stride + sw) else {
                break;
            };
            rows += 1;
            for (c, &v) in columns.iter_mut().zip(row) {
                *c += u32::from(v);
            }
        }
        for (o, w) in out.iter_mut().zip(xs.windows(2)) {
            let (x0, x1) = (w[0], w[1].max(w[0] + 1));
            let sum: u32 = columns[x0..x1].iter().sum();
            let n = rows * (x1 - x0) as u32;
            *o = (sum + n / 2).checked_div(n).map_or(fill, |v| v as u8);
        }
    }
}

/// Decodes a camera's access units and encodes the low layer of them (see the module notes).
/// CPU-bound: run it on a thread of its own.
pub struct Transcoder {
    decoder: Decoder,
    encoder: Option<(Encoder, f32)>,
    /// The scaled picture (I420, planes packed) and its size.
    scaled: Vec<u8>,
    size: (usize, usize),
    force_keyframe: bool,
    last_keyframe_ts: Option<u32>,
    /// The decoder failed: nothing more until a keyframe.
    skip_to_keyframe: bool,
    /// The frame rate of the pictures encoded.
    frame_rate: FrameIntervals,
    /// The timestamp of the last access unit decoded.
    last_decoded: Option<u32>,
}

/// A picture closer than this (5 ms at 90 kHz) to the one before it is decoded, not encoded:
/// it is of a replayed group of pictures (1 ms apart, `media/gop_cache.rs`), not at a
/// camera's pace.
const REPLAYED: u32 = 450;

/// The frame rate assumed until two pictures have been encoded.
const DEFAULT_FPS: f32 = 30.0;
/// A measured frame rate this far from the encoder's (relatively) re-creates the encoder
/// (openh264's rate control spends `bitrate / fps` per picture).
const FPS_TOLERANCE: f32 = 0.25;

fn encoder_config(fps: f32) -> EncoderConfig {
    EncoderConfig::new()
        .bitrate(BitRate::from_bps(LOW_LAYER_BPS))
        .max_frame_rate(FrameRate::from_hz(fps))
        .rate_control_mode(RateControlMode::Bitrate)
        .skip_frames(false)
        .profile(Profile::Baseline)
        .usage_type(UsageType::CameraVideoRealTime)
        .scene_change_detect(false)
        // Keyframes when asked or due (see `push`), not by a frame count.
        .intra_frame_period(IntraFramePeriod::from_num_frames(0))
        .num_threads(1)
}

impl Transcoder {
    pub fn new() -> Result<Transcoder, LowLayerError> {
        Ok(Transcoder {
            decoder: Decoder::new().map_err(|e| LowLayerError::Start(e.to_string()))?,
            encoder: None,
            scaled: Vec::new(),
            size: (0, 0),
            force_keyframe: true,
            last_keyframe_ts: None,
            skip_to_keyframe: false,
            frame_rate: FrameIntervals::default(),
            last_decoded: None,
        })
    }

    /// Makes the next encoded picture a keyframe.
    pub fn force_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Decodes `au` and, if `encode`, encodes its low layer: `Ok(None)` when there is no
    /// picture (yet, not wanted, or one of a replayed group). A picture the decoder fails on is
    /// reported, and what follows is skipped up to the next keyframe.
    pub fn push(
        &mut self,
        au: &AccessUnit,
        encode: bool,
    ) -> Result<Option<AccessUnit>, LowLayerError> {
        let ts = au.ts;
        if self.skip_to_keyframe {
            if !au.is_keyframe() {
                return Ok(None);
            }
            self.skip_to_keyframe = false;
        }
        let decoded = match self.decoder.decode(&au.to_annex_b()) {
            Ok(d) => d,
            Err(e) => {
                self.skip_to_keyframe = true;
                return Err(LowLayerError::Decode {
                    ts,
                    reason: e.to_string(),
                });
            }
        };
        let replayed = self
            .last_decoded
            .replace(ts)
            .is_some_and(|last| ts.wrapping_sub(last) < REPLAYED);
        let Some(picture) = decoded.filter(|_| encode && !replayed) else {
            return Ok(None);
        };
        let (w, h) = picture.dimensions();
        let (sy, su, _) = picture.strides();
        let (dw, dh) = low_size(w, h);
        let (cw, ch) = (dw / 2, dh / 2);
        self.scaled.resize(dw * dh + 2 * cw * ch, 0);
        let (y, uv) = self.scaled.split_at_mut(dw * dh);
        let (u, v) = uv.split_at_mut(cw * ch);
        scale_plane(picture.y(), sy, (w, h), y, (dw, dh), 16);
        let chroma = (w.div_ceil(2), h.div_ceil(2));
        scale_plane(picture.u(), su, chroma, u, (cw, ch), 128);
        scale_plane(picture.v(), su, chroma, v, (cw, ch), 128);
        self.size = (dw, dh);
        self.encode(ts)
    }

    fn encode(&mut self, ts: u32) -> Result<Option<AccessUnit>, LowLayerError> {
        let (dw, dh) = self.size;
        let err = |reason: String| LowLayerError::Encode {
            ts,
            width: dw,
            height: dh,
            reason,
        };
        self.frame_rate.observe(ts);
        let measured = self.frame_rate.fps();
        let stale = self
            .encoder
            .as_ref()
            .is_none_or(|(_, fps)| measured.is_some_and(|m| (m - fps).abs() > FPS_TOLERANCE * fps));
        if stale {
            let fps = measured.unwrap_or(DEFAULT_FPS);
            let encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config(fps))
                .map_err(|e| err(e.to_string()))?;
            tracing::debug!(width = dw, height = dh, fps, "low layer: new H.264 encoder");
            self.encoder = Some((encoder, fps));
            self.force_keyframe = true;
        }
        let Some((encoder, _)) = self.encoder.as_mut() else {
            // Unreachable: set just above when missing.
            return Ok(None);
        };
        let every = (KEYFRAME_EVERY.as_secs_f64() * 90_000.0) as u32;
        if self.force_keyframe
            || self
                .last_keyframe_ts
                .is_none_or(|k| ts.wrapping_sub(k) >= every)
        {
            encoder.force_intra_frame();
        }
        let (y, uv) = self.scaled.split_at(dw * dh);
        let (u, v) = uv.split_at(dw * dh / 4);
        let yuv = YUVSlices::new((y, u, v), (dw, dh), (dw, dw / 2, dw / 2));
        let bitstream = match encoder.encode(&yuv) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                // Start over with a fresh encoder next time.
                self.encoder = None;
                return Err(err(e.to_string()));
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

/// What a transcoder's task and thread share with the camera's task.
#[derive(Default)]
struct Control {
    /// The engine asked for a keyframe.
    keyframe: AtomicBool,
    /// The transcoder was stopped: its thread drops what is still queued.
    stopped: AtomicBool,
}

/// A transcoder running for one track.
struct Running {
    control: Arc<Control>,
    /// Dropped to stop it.
    _stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Ended>,
}

/// Why a transcoder's task ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The track is gone (the camera reconnected with new tracks, or left).
    TrackGone,
    /// Told to stop, or it failed: start again if still asked for.
    Stopped,
}

/// Transcoders running on the server, against [`MAX_TRANSCODERS`]; counted in the metrics'
/// gauge too. Held by a transcoder's thread, so the count falls once its decoder and encoder
/// are freed.
pub(super) struct Budget {
    running: AtomicUsize,
}

impl Budget {
    pub fn new() -> Arc<Budget> {
        Arc::new(Budget {
            running: AtomicUsize::new(0),
        })
    }
}

struct Slot {
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn take(budget: &Arc<Budget>, metrics: &Arc<Metrics>) -> Option<Slot> {
        if budget.running.fetch_add(1, Relaxed) >= MAX_TRANSCODERS {
            budget.running.fetch_sub(1, Relaxed);
            return None;
        }
        metrics.low_layer_transcoders.fetch_add(1, Relaxed);
        metrics.low_layer_transcoders_started.fetch_add(1, Relaxed);
        Some(Slot {
            budget: budget.clone(),
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.running.fetch_sub(1, Relaxed);
        self.metrics.low_layer_transcoders.fetch_sub(1, Relaxed);
    }
}

/// Starts camera `id`'s task answering what the engine asks of it on `events` (nothing
/// outside a tokio runtime: there is no engine to ask then). It ends when the camera leaves
/// (the shell drops the sending side).
pub(super) fn serve_camera(
    inner: &Arc<Inner>,
    room: &RoomName,
    id: &ParticipantId,
    events: mpsc::UnboundedReceiver<ExternalEvent>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let bridge = Bridge {
        inner: inner.clone(),
    };
    runtime.spawn(serve(bridge, room.clone(), id.to_string(), events));
}

/// A camera's task: a transcoder per track the engine asks a low layer of.
async fn serve(
    bridge: Bridge,
    room: RoomName,
    id: String,
    mut events: mpsc::UnboundedReceiver<ExternalEvent>,
) {
    // The tracks asked for, and their transcoders where they run.
    let mut asked: HashMap<TrackKey, Option<Running>> = HashMap::new();
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break,
                Some(ExternalEvent::LowLayer { track, needed: true }) => {
                    let slot = asked.entry(track).or_default();
                    if slot.is_none() {
                        *slot = start(&bridge, &room, &id, track);
                    }
                }
                Some(ExternalEvent::LowLayer { track, needed: false }) => {
                    // Dropping it stops it.
                    asked.remove(&track);
                }
                Some(ExternalEvent::LowLayerKeyframe { track }) => {
                    if let Some(Some(r)) = asked.get(&track) {
                        r.control.keyframe.store(true, Relaxed);
                    }
                }
            },
            _ = retry.tick() => {
                let mut gone = Vec::new();
                for (track, slot) in asked.iter_mut() {
                    if let Some(r) = slot.as_mut().filter(|r| r.done.is_finished()) {
                        if (&mut r.done).await.unwrap_or(Ended::Stopped) == Ended::TrackGone {
                            gone.push(*track);
                            continue;
                        }
                        *slot = None;
                    }
                    if slot.is_none() {
                        *slot = start(&bridge, &room, &id, *track);
                    }
                }
                for track in gone {
                    asked.remove(&track);
                }
            }
        }
    }
}

/// Starts a transcoder for `track`, if the server has room for one.
fn start(bridge: &Bridge, room: &RoomName, id: &str, track: TrackKey) -> Option<Running> {
    let metrics = &bridge.inner.metrics;
    let Some(slot) = Slot::take(&bridge.inner.low_layers, metrics) else {
        tracing::info!(room = %room, camera = id, "{MAX_TRANSCODERS} camera low layers are being made already; this one waits");
        return None;
    };
    let control = Arc::new(Control::default());
    let (stop, stopped) = oneshot::channel();
    let done = tokio::spawn(transcode(
        bridge.clone(),
        room.clone(),
        id.to_owned(),
        track,
        control.clone(),
        stopped,
        slot,
    ));
    Some(Running {
        control,
        _stop: stop,
        done,
    })
}

/// One transcoder: taps the track, depacketizes it and hands access units to its thread,
/// until stopped or the track ends.
async fn transcode(
    bridge: Bridge,
    room: RoomName,
    id: String,
    track: TrackKey,
    control: Arc<Control>,
    mut stop: oneshot::Receiver<()>,
    slot: Slot,
) -> Ended {
    let queue = bridge.inner.data.clone();
    let metrics = bridge.inner.metrics.clone();
    let mut playback = match bridge.play(&room, &id, &[track]).await {
        Ok(p) => p,
        Err(BridgeError::NotFound(_)) => return Ended::TrackGone,
        Err(e) => {
            tracing::info!(room = %room, camera = id, error = %e, "camera low layer: cannot tap the camera");
            return Ended::Stopped;
        }
    };
    let (units, rx) = std_mpsc::sync_channel::<AccessUnit>(QUEUE);
    let thread_queue = queue.clone();
    let thread_control = control.clone();
    let spawned = std::thread::Builder::new()
        .name("confab-lowlayer".into())
        .spawn(move || encode(rx, track, thread_queue, thread_control, metrics, slot));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "camera low layer: cannot start a thread");
        return Ended::Stopped;
    }
    tracing::info!(room = %room, camera = id, "camera low layer started");
    let mut depack = h264::Depacketizer::new();
    // The tap starts at a keyframe; after a loss or a full queue, wait for the next one.
    let mut waiting = true;
    let ended = loop {
        tokio::select! {
            _ = &mut stop => break Ended::Stopped,
            event = playback.recv() => match event {
                None => break Ended::TrackGone,
                Some(PlaybackEvent::SenderReport { ntp, rtp, .. }) => {
                    let report = Command::LowLayerSenderReport { track, ntp, rtp };
                    let _ = queue
                        .send(report, Backpressure::Drop, tokio::time::Instant::now())
                        .await;
                }
                Some(PlaybackEvent::Rtp { marker, seq, ts, payload, .. }) => {
                    let packet = rtc::rtp::Packet {
                        header: rtc::rtp::header::Header {
                            version: 2,
                            marker,
                            payload_type: 96,
                            sequence_number: seq,
                            timestamp: ts,
                            ..Default::default()
                        },
                        payload,
                    };
                    let mut next = match depack.push(&packet) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::debug!(error = %e, "camera low layer: H.264 packet dropped");
                            waiting = true;
                            None
                        }
                    };
                    while let Some(d) = next {
                        waiting |= d.after_loss;
                        if !waiting || d.au.is_keyframe() {
                            waiting = false;
                            match units.try_send(d.au) {
                                Ok(()) => {}
                                Err(std_mpsc::TrySendError::Full(_)) => waiting = true,
                                Err(std_mpsc::TrySendError::Disconnected(_)) => {
                                    // The thread ended: it cannot make pictures (or the
                                    // engine is gone).
                                    return Ended::Stopped;
                                }
                            }
                        }
                        next = depack.pop_ready();
                    }
                }
            },
        }
    };
    tracing::info!(room = %room, camera = id, "camera low layer stopped");
    // The thread drops what is queued, and ends once `units` is dropped, freeing the decoder,
    // the encoder and its slot.
    control.stopped.store(true, Relaxed);
    ended
}

/// A transcoder's thread: access units in, the low layer's packets out into the engine's
/// data queue. Only the last picture of a burst is encoded.
fn encode(
    units: std_mpsc::Receiver<AccessUnit>,
    track: TrackKey,
    queue: DataQueue,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    _slot: Slot,
) {
    let mut transcoder = match Transcoder::new() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "camera low layer: no transcoder");
            return;
        }
    };
    let mut out = Out::low_layer(track);
    let mut h264 = H264Path::new(h264::ParameterSets::default());
    let mut failures = 0u32;
    while let Ok(first) = units.recv() {
        let mut pending = Some(first);
        while let Some(au) = pending.take() {
            if control.stopped.load(Relaxed) {
                return;
            }
            let next = units.try_recv().ok();
            if control.keyframe.swap(false, Relaxed) {
                transcoder.force_keyframe();
            }
            let start = thread_cpu();
            let result = transcoder.push(&au, next.is_none());
            metrics.low_layer_cpu_micros.fetch_add(
                thread_cpu().saturating_sub(start).as_micros() as u64,
                Relaxed,
            );
            match result {
                Ok(Some(mut low)) => {
                    metrics.low_layer_frames.fetch_add(1, Relaxed);
                    h264.send_au(&mut low, &mut out);
                    let mut batch = out.take_pending();
                    for command in batch.drain(..) {
                        // Only `Closed`: the engine is gone.
                        if queue.blocking_send(command).is_err() {
                            return;
                        }
                    }
                    out.recycle(batch);
                }
                Ok(None) => {}
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::info!(error = %e, failures, "camera low layer: picture not transcoded");
                    }
                }
            }
            pending = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openh264::formats::YUVBuffer;

    #[test]
    fn low_sizes() {
        for ((w, h), want) in [
            ((640, 360), (320, 180)),
            ((1280, 720), (320, 180)),
            ((1920, 1080), (320, 180)),
            ((3840, 2160), (320, 180)),
            ((800, 600), (320, 240)),
            ((720, 1280), (180, 320)),
            ((320, 240), (160, 120)),
            ((2, 2), (2, 2)),
        ] {
            assert_eq!(low_size(w, h), want, "{w}x{h}");
        }
    }

    #[test]
    fn planes_are_area_averaged() {
        // 4x2 → 2x1: each output sample the mean of a 2x2 block.
        let src = [10, 20, 100, 200, 30, 40, 0, 0];
        let mut dst = [0u8; 2];
        scale_plane(&src, 4, (4, 2), &mut dst, (2, 1), 16);
        assert_eq!(dst, [25, 75]);
        // Strides wider than the picture are skipped; 3 → 2 columns split 1 + 1 (the third
        // column falls in the second sample's share).
        let src = [9, 9, 9, 77, 9, 9, 9, 77];
        let mut dst = [0u8; 2];
        scale_plane(&src, 4, (3, 2), &mut dst, (2, 1), 16);
        assert_eq!(dst, [9, 9]);
        // A plane shorter than it says: the missing rows are not read.
        let mut dst = [0u8; 4];
        scale_plane(&[50; 6], 3, (3, 4), &mut dst, (2, 2), 128);
        assert_eq!(dst, [50, 50, 128, 128]);
        // Nothing to do, nothing done.
        scale_plane(&[], 0, (0, 0), &mut [], (0, 0), 16);
    }

    /// A 640x360 picture: left half dark, right half light, and in the bottom rows a bar that
    /// moves with the frame number.
    fn picture(i: usize) -> YUVBuffer {
        let (w, h) = (640, 360);
        let mut yuv = vec![128u8; w * h * 3 / 2];
        for (j, b) in yuv[..w * h].iter_mut().enumerate() {
            let (x, y) = (j % w, j / w);
            *b = if y >= 300 && (x + i * 8) % w < 16 {
                235
            } else if x < w / 2 {
                40
            } else {
                200
            };
        }
        YUVBuffer::from_vec(yuv, w, h)
    }

    /// A camera's stream in, the low layer out: 320x180 H.264 that decodes to the same
    /// picture, keyframes first, when asked and when due, and only the last of a burst.
    #[test]
    fn transcodes_a_camera_to_its_low_layer() {
        let mut camera = Encoder::new().unwrap();
        let mut t = Transcoder::new().unwrap();
        let mut check = Decoder::new().unwrap();
        let mut keyframes = Vec::new();
        let mut encoded = 0;
        for i in 0..40usize {
            let ts = 3000 * i as u32;
            let bits = camera.encode(&picture(i)).unwrap().to_vec();
            let au = AccessUnit::from_annex_b(ts, &bits);
            if i == 20 {
                t.force_keyframe();
            }
            // Frames 30..35 come as a burst: only the last is encoded.
            let burst = (30..35).contains(&i);
            let Some(low) = t.push(&au, !burst).unwrap() else {
                continue;
            };
            encoded += 1;
            assert_eq!(low.ts, ts, "the picture keeps its timestamp");
            if low.is_keyframe() {
                keyframes.push(i);
            }
            let pic = check.decode(&low.to_annex_b()).unwrap().unwrap();
            assert_eq!(pic.dimensions(), (320, 180));
            let (sy, _, _) = pic.strides();
            let (left, right) = (pic.y()[90 * sy + 80], pic.y()[90 * sy + 240]);
            assert!(
                left.abs_diff(40) < 12 && right.abs_diff(200) < 12,
                "frame {i}: {left} {right}"
            );
        }
        assert_eq!(encoded, 35, "all but the burst's first four");
        assert_eq!(keyframes, [0, 20], "the first, and the one asked for");
    }

    /// A replayed group (frames 1 ms apart) is decoded, and encoding goes on at the camera's
    /// pace after it.
    #[test]
    fn a_replayed_group_is_decoded_not_encoded() {
        let mut camera = Encoder::new().unwrap();
        let mut t = Transcoder::new().unwrap();
        let mut encoded = Vec::new();
        // Ten frames replayed 1 ms apart, then live ones 33 ms apart.
        let stamps = (0..10u32)
            .map(|i| 90 * i)
            .chain((1..6).map(|i| 810 + 3000 * i));
        for (i, ts) in stamps.enumerate() {
            let bits = camera.encode(&picture(i)).unwrap().to_vec();
            if let Some(low) = t.push(&AccessUnit::from_annex_b(ts, &bits), true).unwrap() {
                encoded.push((i, low.is_keyframe()));
            }
        }
        assert_eq!(
            encoded,
            [
                (0, true),
                (10, false),
                (11, false),
                (12, false),
                (13, false),
                (14, false)
            ]
        );
    }

    /// Whatever the decoder makes of garbage, the stream picks up at the next keyframe.
    #[test]
    fn garbage_is_skipped_to_the_next_keyframe() {
        let mut camera = Encoder::new().unwrap();
        let mut t = Transcoder::new().unwrap();
        let first = camera.encode(&picture(0)).unwrap().to_vec();
        assert!(t
            .push(&AccessUnit::from_annex_b(0, &first), true)
            .unwrap()
            .is_some());
        let junk = AccessUnit {
            ts: 3000,
            nals: vec![bytes::Bytes::from_static(&[0x65, 0xff, 0x00, 0x12, 0x34])],
        };
        let _ = t.push(&junk, true);
        camera.force_intra_frame();
        let key = camera.encode(&picture(2)).unwrap().to_vec();
        let low = t.push(&AccessUnit::from_annex_b(6000, &key), true).unwrap();
        assert!(low.is_some(), "the next keyframe is transcoded");
    }

    /// CPU per picture of a 720p camera's low layer (`cargo test --release -p confab --lib
    /// bridge::low_layer::tests::cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn cost() {
        let (w, h) = (1280usize, 720usize);
        let mut camera = Encoder::new().unwrap();
        let mut t = Transcoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut n = 0;
        let (mut all, mut decode_only) = (Duration::ZERO, Duration::ZERO);
        let mut scaled = vec![0u8; 320 * 180];
        let mut scale = Duration::ZERO;
        for i in 0..120 {
            let mut yuv = vec![128u8; w * h * 3 / 2];
            for (j, b) in yuv[..w * h].iter_mut().enumerate() {
                *b = ((j % w + i * 4) % 220 + 16) as u8 ^ ((j / w) as u8 & 0x10);
            }
            let bits = camera
                .encode(&YUVBuffer::from_vec(yuv, w, h))
                .unwrap()
                .to_vec();
            let au = AccessUnit::from_annex_b(3000 * i as u32, &bits);
            let c = thread_cpu();
            // openh264's default encoder skips pictures now and then.
            let Some(pic) = dec.decode(&bits).unwrap() else {
                continue;
            };
            decode_only += thread_cpu() - c;
            let c = thread_cpu();
            scale_plane(
                pic.y(),
                pic.strides().0,
                (w, h),
                &mut scaled,
                (320, 180),
                16,
            );
            scale += thread_cpu() - c;
            let c = thread_cpu();
            t.push(&au, true).unwrap();
            all += thread_cpu() - c;
            n += 1;
        }
        let per = |d: Duration| d / n as u32;
        println!(
            "1280x720 → 320x180: {:?}/picture in all (decode {:?}, scale the luma {:?}; {n} pictures)",
            per(all),
            per(decode_only),
            per(scale)
        );
    }
}
