//! Pictures out: the latest picture of any participant (browser or camera), decoded from its
//! H.264 video and encoded as JPEG, for `frame.jpeg` and `stream.mjpeg` (`http/snapshots.rs`).
//!
//! A decoder is a *sink* outside the media core, like an RTSP player: it taps the
//! participant's first video track ([`Bridge::play`]), which starts at a keyframe (a camera
//! replays its cached group of pictures at once, a browser publisher is asked for a keyframe),
//! depacketizes it ([`h264::Depacketizer`]) and decodes it with openh264 on a thread of its
//! own. Nothing in the core changes for it.
//!
//! Invariants:
//! - Decoding happens only while someone asks: a decoder starts on the first request for a
//!   participant and stops when the last stream viewer leaves, or [`SNAPSHOT_LINGER`] after
//!   the last `frame.jpeg` (so that a home automation polling every few seconds does not
//!   start one each time).
//! - One decoder per participant, shared by all its viewers, and at most [`MAX_DECODERS`] on
//!   the server; JPEGs are encoded once per picture and width, whoever asks.
//! - Memory is bounded: [`DECODE_QUEUE`] access units wait for the decoder (more and the
//!   decoder skips to the next keyframe, re-tapping so that one comes), one picture is kept,
//!   and the JPEGs of that picture for at most [`CACHED_WIDTHS`] widths.
//! - A participant whose video is not H.264 (a VP8 browser) is refused with
//!   [`SnapshotError::Unsupported`]: confab carries no VP8 decoder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use tokio::sync::{watch, Notify};

use super::h264::{self, AccessUnit};
use super::{Bridge, BridgeError, PlaybackEvent};
use crate::metrics::Metrics;
use crate::names::{ParticipantId, RoomName};
use crate::protocol::MediaKind;

/// Decoders running at once on the server (each takes up to a core's share for HD video).
pub const MAX_DECODERS: usize = 16;
/// MJPEG stream viewers at once on the server.
pub const MAX_STREAM_VIEWERS: usize = 64;
/// How long a decoder keeps running after the last `frame.jpeg`.
pub const SNAPSHOT_LINGER: Duration = Duration::from_secs(10);
/// The narrowest and widest picture a client may ask for (`?width=`); never wider than the
/// source.
pub const MIN_WIDTH: u32 = 16;
pub const MAX_WIDTH: u32 = 3840;
/// Access units waiting for the decoder thread.
pub const DECODE_QUEUE: usize = 64;
/// JPEGs of the latest picture kept, one per width asked for.
pub const CACHED_WIDTHS: usize = 4;
const JPEG_QUALITY: u8 = 80;
/// At most one re-tap (for a keyframe after a loss) per this long.
const RETAP_AFTER: Duration = Duration::from_secs(1);
/// How often a decoder looks again for video that is not there (a camera reconnecting).
const NO_VIDEO_RETRY: Duration = Duration::from_millis(500);

/// Why there is no picture. The HTTP routes map each to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// No such participant (any more): 404.
    #[error("{0}")]
    NotFound(String),
    /// The participant sends no video now (camera off, a camera reconnecting): 409.
    #[error("{0}")]
    NoVideo(String),
    /// Video confab cannot decode (VP8): 415.
    #[error("{0}")]
    Unsupported(String),
    /// Too many decoders or viewers: 503.
    #[error("{0}")]
    Busy(String),
}

/// A decoded picture: I420, planes packed without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Counts the decoder's pictures (a newer picture has a larger one).
    pub seq: u64,
    pub width: usize,
    pub height: usize,
    /// Y (`width * height`), then U and V (`chroma_width * chroma_height` each).
    pub yuv: Vec<u8>,
}

impl Picture {
    fn chroma(&self) -> (usize, usize) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }
}

/// The size of a picture of `width` x `height` scaled to `want` pixels wide: never wider than
/// it is, height in proportion (at least 1).
pub fn scaled_size(width: usize, height: usize, want: Option<u32>) -> (usize, usize) {
    let w = want.map_or(width, |w| (w as usize).min(width)).max(1);
    let h = ((height * w + width / 2) / width.max(1)).max(1);
    (w, h)
}

/// I420 (video range, BT.601) to RGB. A pair of pixels shares its chroma, so the chroma terms
/// are worked out once per pair.
fn to_rgb(p: &Picture) -> Vec<u8> {
    let (w, h) = (p.width, p.height);
    let (cw, ch) = p.chroma();
    let mut rgb = vec![0u8; w * h * 3];
    // Pictures are made whole by `copy_picture`; a short one stays black rather than panic.
    if p.yuv.len() < w * h + 2 * cw * ch {
        return rgb;
    }
    let (y_plane, uv) = p.yuv.split_at(w * h);
    let (u_plane, v_plane) = uv.split_at(cw * ch);
    let clamp = |v: i32| (v >> 8).clamp(0, 255) as u8;
    for ((out, ys), row) in rgb
        .chunks_exact_mut(w * 3)
        .zip(y_plane.chunks_exact(w))
        .zip(0..)
    {
        let c = (row / 2) * cw;
        let (us, vs) = (&u_plane[c..c + cw], &v_plane[c..c + cw]);
        for ((px, ys), (&u, &v)) in out.chunks_mut(6).zip(ys.chunks(2)).zip(us.iter().zip(vs)) {
            let (u, v) = (i32::from(u) - 128, i32::from(v) - 128);
            let (r, g, b) = (409 * v, -100 * u - 208 * v, 516 * u);
            for (px, &y) in px.chunks_exact_mut(3).zip(ys) {
                let y = 298 * (i32::from(y) - 16) + 128;
                px[0] = clamp(y + r);
                px[1] = clamp(y + g);
                px[2] = clamp(y + b);
            }
        }
    }
    rgb
}

/// The JPEG of `picture`, `width` pixels wide at most (see [`scaled_size`]).
pub fn encode_jpeg(picture: &Picture, width: Option<u32>) -> Result<Vec<u8>, String> {
    use image::{ImageBuffer, Rgb};
    let (w, h) = scaled_size(picture.width, picture.height, width);
    let rgb = to_rgb(picture);
    let full: ImageBuffer<Rgb<u8>, Vec<u8>> =
        ImageBuffer::from_raw(picture.width as u32, picture.height as u32, rgb)
            .ok_or("picture buffer of the wrong size")?;
    let scaled = if w == picture.width {
        full
    } else {
        // Area averaging: fast, and sharp enough for thumbnails.
        image::imageops::thumbnail(&full, w as u32, h as u32)
    };
    let mut out = Vec::with_capacity(w * h / 4);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode(
            scaled.as_raw(),
            scaled.width(),
            scaled.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// CPU time of the calling thread (decode and encode figures on `/metrics`).
pub(super) fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// The decoders of the whole server.
pub struct Snapshots {
    running: Mutex<HashMap<(RoomName, ParticipantId), Arc<Shared>>>,
    streams: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Snapshots {
    /// No decoders yet; decoders, pictures and their CPU time are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Snapshots {
            running: Mutex::default(),
            streams: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(RoomName, ParticipantId), Arc<Shared>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the running decoder of `key`, if there is one.
    fn join(&self, key: &(RoomName, ParticipantId), linger: Duration) -> Option<Lease> {
        let map = self.lock();
        let shared = map.get(key)?;
        shared.leases().viewers += 1;
        Some(Lease {
            shared: shared.clone(),
            linger,
        })
    }

    /// Removes `shared` from the running decoders, if nobody holds it and it has lingered
    /// long enough (or at once with `force`). True when it is gone.
    fn finish(&self, shared: &Arc<Shared>, force: bool) -> bool {
        let mut map = self.lock();
        if !force {
            let l = shared.leases();
            if l.viewers > 0 || Instant::now() < l.keep_until {
                return false;
            }
        }
        let key = (shared.room.clone(), shared.id.clone());
        if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            map.remove(&key);
        }
        true
    }
}

/// What the viewers of one decoder share.
struct Shared {
    room: RoomName,
    id: ParticipantId,
    /// When the decoder started: viewers time their pictures on a grid from here.
    started: Instant,
    leases: Mutex<Leases>,
    /// Told when the last lease is dropped.
    wake: Notify,
    pictures: watch::Receiver<Option<Arc<Picture>>>,
    /// Why the decoder stopped while it had viewers (the participant left).
    ended: Mutex<Option<SnapshotError>>,
    jpegs: tokio::sync::Mutex<Vec<Encoded>>,
}

struct Leases {
    viewers: usize,
    keep_until: Instant,
}

struct Encoded {
    seq: u64,
    width: usize,
    jpeg: Bytes,
}

impl Shared {
    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the decoder may stop if nobody comes: never while someone holds a lease.
    fn idle_deadline(&self) -> Instant {
        let l = self.leases();
        if l.viewers > 0 {
            Instant::now() + Duration::from_secs(3600)
        } else {
            l.keep_until
        }
    }
}

/// A viewer's hold on a participant's decoder. Dropping it lets the decoder stop: at once, or
/// after its linger time.
pub struct Lease {
    shared: Arc<Shared>,
    linger: Duration,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut l = self.shared.leases();
        l.viewers -= 1;
        l.keep_until = l.keep_until.max(Instant::now() + self.linger);
        if l.viewers == 0 {
            self.shared.wake.notify_one();
        }
    }
}

impl Lease {
    /// The decoder's pictures: `None` until the first; closed when the decoder stops.
    pub fn pictures(&self) -> watch::Receiver<Option<Arc<Picture>>> {
        self.shared.pictures.clone()
    }

    /// The first instant after `now` on the grid of `interval` steps from the decoder's
    /// start: viewers at one frame rate wake together, take the same picture and share its
    /// JPEG.
    pub fn next_tick(&self, now: Instant, interval: Duration) -> Instant {
        let since = now.saturating_duration_since(self.shared.started);
        let steps = since.as_nanos() / interval.as_nanos().max(1) + 1;
        self.shared.started + interval * steps.min(u128::from(u32::MAX)) as u32
    }

    /// Why the decoder stopped, once it has.
    pub fn ended(&self) -> Option<SnapshotError> {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The JPEG of `picture` at `width` (see [`scaled_size`]), encoded once for all viewers.
    pub async fn jpeg(
        &self,
        picture: &Arc<Picture>,
        width: Option<u32>,
        metrics: Arc<Metrics>,
    ) -> Result<Bytes, String> {
        let (w, _) = scaled_size(picture.width, picture.height, width);
        // Held while encoding: a second viewer of the same picture waits and takes this one.
        let mut cache = self.shared.jpegs.lock().await;
        if let Some(e) = cache.iter().find(|e| e.seq == picture.seq && e.width == w) {
            return Ok(e.jpeg.clone());
        }
        let p = picture.clone();
        let (jpeg, cpu) = tokio::task::spawn_blocking(move || {
            let start = thread_cpu();
            let jpeg = encode_jpeg(&p, Some(w as u32));
            (jpeg, thread_cpu().saturating_sub(start))
        })
        .await
        .map_err(|e| format!("JPEG encoder: {e}"))?;
        let jpeg = Bytes::from(jpeg?);
        metrics.snapshot_jpegs_encoded.fetch_add(1, Relaxed);
        metrics
            .snapshot_encode_cpu_micros
            .fetch_add(cpu.as_micros() as u64, Relaxed);
        cache.retain(|e| e.seq == picture.seq);
        if cache.len() >= CACHED_WIDTHS {
            cache.remove(0);
        }
        cache.push(Encoded {
            seq: picture.seq,
            width: w,
            jpeg: jpeg.clone(),
        });
        Ok(jpeg)
    }
}

/// A place among the [`MAX_STREAM_VIEWERS`]; dropping it frees the place.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Bridge {
    /// A hold on the decoder of participant `id`'s video, started if it is not running.
    /// `linger`: how long the decoder may keep running after this lease is dropped.
    pub async fn snapshot(
        &self,
        room: &RoomName,
        id: &str,
        linger: Duration,
    ) -> Result<Lease, SnapshotError> {
        let nobody = || SnapshotError::NotFound(format!("nobody called {id:?} is in room {room}"));
        let pid = ParticipantId::parse(id).map_err(|_| nobody())?;
        let snapshots = &self.inner.snapshots;
        let key = (room.clone(), pid.clone());
        if let Some(lease) = snapshots.join(&key, linger) {
            return Ok(lease);
        }
        let tracks = self.describe(room, id).await.map_err(|e| match e {
            BridgeError::NotFound(m) => SnapshotError::NotFound(m),
            other => SnapshotError::Busy(other.to_string()),
        })?;
        check_video(room, id, &tracks)?;
        let mut map = snapshots.lock();
        if let Some(shared) = map.get(&key) {
            shared.leases().viewers += 1;
            return Ok(Lease {
                shared: shared.clone(),
                linger,
            });
        }
        if map.len() >= MAX_DECODERS {
            return Err(SnapshotError::Busy(format!(
                "{MAX_DECODERS} participants' pictures are being decoded already; try again later"
            )));
        }
        let (tx, rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            room: room.clone(),
            id: pid,
            started: Instant::now(),
            leases: Mutex::new(Leases {
                viewers: 1,
                keep_until: Instant::now(),
            }),
            wake: Notify::new(),
            pictures: rx,
            ended: Mutex::new(None),
            jpegs: tokio::sync::Mutex::new(Vec::new()),
        });
        map.insert(key, shared.clone());
        drop(map);
        let metrics = snapshots.metrics.clone();
        metrics.snapshot_decoders_started.fetch_add(1, Relaxed);
        tracing::info!(room = %room, participant = id, "snapshot decoder started");
        tokio::spawn(run(self.clone(), shared.clone(), tx, metrics));
        Ok(Lease { shared, linger })
    }

    /// A place for one more MJPEG stream viewer, if there is room.
    pub fn stream_slot(&self) -> Result<StreamSlot, SnapshotError> {
        let streams = &self.inner.snapshots.streams;
        if streams.fetch_add(1, Relaxed) >= MAX_STREAM_VIEWERS {
            streams.fetch_sub(1, Relaxed);
            return Err(SnapshotError::Busy(format!(
                "{MAX_STREAM_VIEWERS} MJPEG streams are being served already; try again later or poll frame.jpeg"
            )));
        }
        Ok(StreamSlot(streams.clone()))
    }

    /// The server's metrics (for the encode figures).
    pub fn snapshot_metrics(&self) -> Arc<Metrics> {
        self.inner.snapshots.metrics.clone()
    }
}

/// The participant's first video track, if it is H.264.
fn check_video<'a>(
    room: &RoomName,
    id: &str,
    tracks: &'a [super::OutputTrack],
) -> Result<&'a super::OutputTrack, SnapshotError> {
    let video = tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .ok_or_else(|| {
            SnapshotError::NoVideo(format!(
                "{id} in room {room} sends no video right now (camera off, or a camera reconnecting); try again later"
            ))
        })?;
    if !video.encoding.eq_ignore_ascii_case("H264") {
        return Err(SnapshotError::Unsupported(format!(
            "{id} in room {room} sends {} video, which confab cannot decode for pictures (H.264 only); a browser that publishes H.264 (Chromium, Safari, Firefox with H.264 enabled) can be shown",
            video.encoding
        )));
    }
    Ok(video)
}

/// What a decoder's task does next.
enum Flow {
    /// Tap again (the track ended or lost packets: a new tap starts at a keyframe).
    Retap,
    /// Nobody wants pictures any more.
    End,
}

/// A decoder: tap, depacketize, hand access units to the decoder thread; tap again when the
/// track changes or a keyframe is needed; stop when nobody wants pictures.
async fn run(
    bridge: Bridge,
    shared: Arc<Shared>,
    pictures: watch::Sender<Option<Arc<Picture>>>,
    metrics: Arc<Metrics>,
) {
    let snapshots = &bridge.inner.snapshots;
    metrics.snapshot_decoders.fetch_add(1, Relaxed);
    let (units, rx) = std_mpsc::sync_channel::<AccessUnit>(DECODE_QUEUE);
    let broken = Arc::new(AtomicBool::new(false));
    let thread_broken = broken.clone();
    let thread_metrics = metrics.clone();
    let spawned = std::thread::Builder::new()
        .name("confab-snapshot".into())
        .spawn(move || decode(rx, pictures, thread_broken, thread_metrics));
    let (room, id) = (shared.room.clone(), shared.id.to_string());
    let why = match spawned {
        Err(e) => Some(SnapshotError::Busy(format!(
            "cannot start a decoder thread: {e}"
        ))),
        Ok(_) => loop {
            if snapshots.finish(&shared, false) {
                break None;
            }
            let tracks = match bridge.describe(&room, &id).await {
                Ok(t) => t,
                Err(BridgeError::NotFound(m)) => break Some(SnapshotError::NotFound(m)),
                Err(e) => break Some(SnapshotError::Busy(e.to_string())),
            };
            let key = match check_video(&room, &id, &tracks) {
                Ok(t) => t.key,
                Err(SnapshotError::NoVideo(_)) => {
                    if wait_idle(&shared, NO_VIDEO_RETRY).await && snapshots.finish(&shared, false)
                    {
                        break None;
                    }
                    continue;
                }
                Err(e) => break Some(e),
            };
            let mut playback = match bridge.play(&room, &id, &[key]).await {
                Ok(p) => p,
                Err(BridgeError::NotFound(_)) => {
                    // The track went between describing and tapping it.
                    if wait_idle(&shared, NO_VIDEO_RETRY).await && snapshots.finish(&shared, false)
                    {
                        break None;
                    }
                    continue;
                }
                Err(e) => break Some(SnapshotError::Busy(e.to_string())),
            };
            match tap(&shared, snapshots, &mut playback, &units, &broken).await {
                Flow::Retap => continue,
                Flow::End => break None,
            }
        },
    };
    if let Some(e) = why {
        tracing::info!(room = %room, participant = id, why = %e, "snapshot decoder stopped");
        *shared.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        snapshots.finish(&shared, true);
    } else {
        tracing::info!(room = %room, participant = id, "snapshot decoder stopped: nobody watches");
    }
    metrics.snapshot_decoders.fetch_sub(1, Relaxed);
    // Dropping `units` ends the decoder thread, which drops the pictures' sender: viewers see
    // the stream end.
}

/// Waits up to `d`, or until the last lease is dropped. True when it was the latter, or the
/// linger time is over.
async fn wait_idle(shared: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = shared.wake.notified() => true,
        _ = tokio::time::sleep(d) => Instant::now() >= shared.idle_deadline(),
    }
}

/// One tap of the video track, until it ends, needs a keyframe, or nobody watches.
async fn tap(
    shared: &Arc<Shared>,
    snapshots: &Snapshots,
    playback: &mut super::Playback,
    units: &std_mpsc::SyncSender<AccessUnit>,
    broken: &AtomicBool,
) -> Flow {
    let started = Instant::now();
    let mut depack = h264::Depacketizer::new();
    // A tap starts at a keyframe; after a loss, wait for the next one.
    let mut waiting = true;
    let mut lost = false;
    loop {
        let deadline = tokio::time::Instant::from_std(shared.idle_deadline());
        tokio::select! {
            event = playback.recv() => {
                let Some(PlaybackEvent::Rtp { marker, seq, ts, payload, .. }) = event else {
                    if event.is_none() {
                        return Flow::Retap;
                    }
                    continue;
                };
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
                        tracing::debug!(error = %e, "snapshot: H.264 packet dropped");
                        lost = true;
                        None
                    }
                };
                while let Some(d) = next {
                    lost |= d.after_loss;
                    if d.after_loss {
                        waiting = true;
                    }
                    if !waiting || d.au.is_keyframe() {
                        waiting = false;
                        match units.try_send(d.au) {
                            Ok(()) => {}
                            Err(std_mpsc::TrySendError::Full(_)) => {
                                waiting = true;
                                lost = true;
                            }
                            Err(std_mpsc::TrySendError::Disconnected(_)) => return Flow::End,
                        }
                    }
                    next = depack.pop_ready();
                }
                if broken.swap(false, Relaxed) {
                    lost = true;
                }
                if lost && started.elapsed() >= RETAP_AFTER {
                    return Flow::Retap;
                }
            }
            _ = shared.wake.notified() => {
                if snapshots.finish(shared, false) {
                    return Flow::End;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if snapshots.finish(shared, false) {
                    return Flow::End;
                }
            }
        }
    }
}

/// The decoder thread: access units in, the latest picture out. A burst (a camera's replayed
/// group of pictures) is decoded whole and only its last picture published.
fn decode(
    units: std_mpsc::Receiver<AccessUnit>,
    pictures: watch::Sender<Option<Arc<Picture>>>,
    broken: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut decoder = match Decoder::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "snapshot: cannot start the H.264 decoder");
            return;
        }
    };
    let mut seq = 0u64;
    let mut skip_to_keyframe = false;
    let mut failures = 0u32;
    while let Ok(first) = units.recv() {
        let mut pending = Some(first);
        while let Some(au) = pending.take() {
            let next = units.try_recv().ok();
            if skip_to_keyframe && !au.is_keyframe() {
                pending = next;
                continue;
            }
            skip_to_keyframe = false;
            let start = thread_cpu();
            let annex_b = au.to_annex_b();
            let decoded = match decoder.decode(&annex_b) {
                Ok(Some(yuv)) if next.is_none() => {
                    seq += 1;
                    Some(Ok(copy_picture(&yuv, seq)))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
            let cpu = thread_cpu().saturating_sub(start);
            metrics.snapshot_frames_decoded.fetch_add(1, Relaxed);
            metrics
                .snapshot_decode_cpu_micros
                .fetch_add(cpu.as_micros() as u64, Relaxed);
            match decoded {
                Some(Ok(picture)) => {
                    pictures.send_replace(Some(Arc::new(picture)));
                }
                Some(Err(e)) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::info!(error = %e, failures, "snapshot: H.264 picture not decoded");
                    }
                    skip_to_keyframe = true;
                    broken.store(true, Relaxed);
                }
                None => {}
            }
            pending = next;
        }
    }
}

/// The decoder's picture, planes packed.
fn copy_picture(yuv: &impl YUVSource, seq: u64) -> Picture {
    let (width, height) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let mut out = Vec::with_capacity(width * height + 2 * cw * ch);
    for (plane, stride, w, h, fill) in [
        (yuv.y(), sy, width, height, 16),
        (yuv.u(), su, cw, ch, 128),
        (yuv.v(), sv, cw, ch, 128),
    ] {
        for row in 0..h {
            match plane.get(row * stride..row * stride + w) {
                Some(r) => out.extend_from_slice(r),
                None => out.extend(std::iter::repeat_n(fill, w)),
            }
        }
    }
    Picture {
        seq,
        width,
        height,
        yuv: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture of one colour (video-range Y, U, V).
    fn flat(width: usize, height: usize, y: u8, u: u8, v: u8) -> Picture {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let mut yuv = vec![y; width * height];
        yuv.extend(std::iter::repeat_n(u, cw * ch));
        yuv.extend(std::iter::repeat_n(v, cw * ch));
        Picture {
            seq: 1,
            width,
            height,
            yuv,
        }
    }

    #[test]
    fn sizes_scale_down_only() {
        assert_eq!(scaled_size(640, 360, None), (640, 360));
        assert_eq!(scaled_size(640, 360, Some(320)), (320, 180));
        assert_eq!(scaled_size(640, 360, Some(4000)), (640, 360));
        assert_eq!(scaled_size(641, 361, Some(100)), (100, 56));
        assert_eq!(scaled_size(4000, 10, Some(16)), (16, 1));
    }

    #[test]
    fn only_h264_video_is_decoded() {
        use crate::media::api::TrackKey;
        let track = |key, kind, encoding: &str| super::super::OutputTrack {
            key: TrackKey(key),
            kind,
            encoding: encoding.into(),
            payload_type: 96,
            clock_rate: 90_000,
            channels: 0,
            fmtp: None,
        };
        let room = RoomName::parse("r").unwrap();
        let audio = track(1, MediaKind::Audio, "opus");
        let h264 = [audio.clone(), track(2, MediaKind::Video, "H264")];
        assert_eq!(
            check_video(&room, "a", &h264).map(|t| t.key),
            Ok(TrackKey(2))
        );
        let vp8 = [track(3, MediaKind::Video, "VP8")];
        let e = check_video(&room, "a", &vp8).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Unsupported(m) if m.contains("VP8")),
            "{e}"
        );
        assert!(matches!(
            check_video(&room, "a", &[audio]),
            Err(SnapshotError::NoVideo(_))
        ));
    }

    #[test]
    fn colours_survive_the_round_trip() {
        // Video-range white, black, and BT.601 red (Y 81, U 90, V 240).
        for ((y, u, v), rgb) in [
            ((235, 128, 128), [255, 255, 255]),
            ((16, 128, 128), [0, 0, 0]),
            ((81, 90, 240), [255, 0, 0]),
        ] {
            let p = flat(33, 17, y, u, v);
            let got = to_rgb(&p);
            for px in got.chunks_exact(3) {
                for (g, w) in px.iter().zip(rgb) {
                    assert!(g.abs_diff(w) <= 2, "{y},{u},{v}: {px:?} vs {rgb:?}");
                }
            }
            let jpeg = encode_jpeg(&p, Some(16)).unwrap();
            let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
            assert_eq!((img.width(), img.height()), (16, 8));
            let mid = img.get_pixel(8, 4).0;
            for (g, w) in mid.iter().zip(rgb) {
                assert!(g.abs_diff(w) <= 8, "{y},{u},{v}: {mid:?} vs {rgb:?}");
            }
        }
    }

    /// A picture encoded with openh264 and decoded again comes out as it went in.
    #[test]
    fn decoded_pictures_are_copied_whole() {
        use openh264::encoder::Encoder;
        use openh264::formats::YUVBuffer;
        let (w, h) = (64usize, 48usize);
        let mut yuv = vec![0u8; w * h * 3 / 2];
        for (i, b) in yuv[..w * h].iter_mut().enumerate() {
            *b = if (i % w) < w / 2 { 40 } else { 200 };
        }
        yuv[w * h..].fill(128);
        let src = YUVBuffer::from_vec(yuv, w, h);
        let mut enc = Encoder::new().unwrap();
        let bitstream = enc.encode(&src).unwrap().to_vec();
        let mut dec = Decoder::new().unwrap();
        let pic = copy_picture(&dec.decode(&bitstream).unwrap().unwrap(), 7);
        assert_eq!((pic.width, pic.height, pic.seq), (w, h, 7));
        assert_eq!(pic.yuv.len(), w * h * 3 / 2);
        let (left, right) = (pic.yuv[w * 10 + 5], pic.yuv[w * 10 + w - 5]);
        assert!(
            left.abs_diff(40) < 6 && right.abs_diff(200) < 6,
            "{left} {right}"
        );
    }

    /// Decode and encode cost per picture (`cargo test --release -p confab --lib
    /// bridge::snapshot::tests::cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn cost() {
        use openh264::encoder::Encoder;
        use openh264::formats::YUVBuffer;
        let (w, h) = (640usize, 360usize);
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let n = 60;
        let (mut decode, mut full, mut small) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for i in 0..n {
            let mut yuv = vec![128u8; w * h * 3 / 2];
            for (j, b) in yuv[..w * h].iter_mut().enumerate() {
                *b = ((j % w + i * 4) % 220 + 16) as u8 ^ ((j / w) as u8 & 0x10);
            }
            let bits = enc
                .encode(&YUVBuffer::from_vec(yuv, w, h))
                .unwrap()
                .to_vec();
            let t = thread_cpu();
            let pic = copy_picture(&dec.decode(&bits).unwrap().unwrap(), i as u64);
            decode += thread_cpu() - t;
            let t = thread_cpu();
            encode_jpeg(&pic, None).unwrap();
            full += thread_cpu() - t;
            let t = thread_cpu();
            encode_jpeg(&pic, Some(320)).unwrap();
            small += thread_cpu() - t;
        }
        let per = |d: Duration| d / n as u32;
        println!(
            "640x360: decode {:?}/picture, JPEG {:?} (640 wide), {:?} (320 wide)",
            per(decode),
            per(full),
            per(small)
        );
    }
}
