//! The RTSP bridge's media side: cameras (pushed over RTSP or pulled from a camera URL) join
//! rooms as participants, and any participant can be played back over RTSP.
//!
//! The RTSP protocol itself lives in [`crate::rtsp`] (server) and [`pull`] (client); this module
//! is the seam between them and the SFU. To a room, a camera is a publisher like a browser: its
//! tracks are turned into the RTP the browsers take (H.264 packetization-mode 1 at the WebRTC
//! MTU, Opus, G.711) and handed to the media engine, which forwards them exactly as it forwards
//! a browser's tracks. An RTSP player is a subscriber: the engine taps a participant's tracks
//! into a bounded channel, and a slow player loses its own packets, never anyone else's.
//!
//! Packets come in as the [`Bytes`] the RTSP server or retina received them in, and what goes
//! through unchanged (single NAL units, Opus, G.711) reaches the engine, and every subscriber,
//! as slices of them: one copy from the kernel, none in confab. FU-A fragments are joined and
//! MJPEG and AAC transcoded, which is where copies remain.
//!
//! - [`h264`]: RFC 6184 depacketizing and packetizing, parameter sets, B-frame detection.
//! - [`mjpeg`]: RFC 2435 (RTP/JPEG) frames, decoded and encoded as H.264.
//! - [`multipart`]: an HTTP MJPEG stream (`multipart/x-mixed-replace`) split into pictures.
//! - [`aac`]: RFC 3640 (MPEG4-GENERIC) AAC, decoded and encoded as Opus.
//! - [`source`]: per track, which of those a camera's track goes through.
//! - [`camera`]: a camera's presence in a room and its feed into the media engine.
//! - [`queue`]: the engine's bounded data queue, and how a camera meets it when it is full.
//! - [`pull`]: cameras the server pulls as an RTSP client, retried forever.
//! - [`http_camera`]: cameras the server pulls over HTTP (MJPEG streams, JPEG pictures).
//! - [`sdp`]: a camera's SDP (ANNOUNCE or DESCRIBE) read into [`InputTrack`]s.
//! - [`snapshot`]: any participant's latest picture, decoded while someone asks (JPEG, MJPEG).
//! - [`low_layer`]: a camera's small picture for subscribers who cannot take its stream,
//!   transcoded while the media engine asks for it.

pub mod aac;
pub mod camera;
pub mod h264;
pub mod http_camera;
pub mod low_layer;
pub mod mjpeg;
pub mod multipart;
pub mod pull;
pub mod queue;
pub mod sdp;
pub mod snapshot;
pub mod source;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::media::api::{Command, TapId, TrackKey};
use crate::media::MediaHandle;
use crate::names::{ParticipantId, RoomName};
use crate::protocol::MediaKind;

/// One media section of a publisher's SDP (an RTSP ANNOUNCE), as written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTrack {
    pub kind: MediaKind,
    /// The `a=control` value as written (`streamid=0`, `trackID=1`, or an absolute URL).
    pub control: String,
    pub payload_type: u8,
    /// The `a=rtpmap` encoding name as written (`H264`, `MPEG4-GENERIC`, `opus`, `PCMU`,
    /// `JPEG`, `H265`, ...); for static payload types without an rtpmap (0 PCMU, 8 PCMA, 26
    /// JPEG) the parser fills in the RFC 3551 name.
    pub encoding: String,
    pub clock_rate: u32,
    /// Audio channels; 1 when the rtpmap does not say.
    pub channels: u16,
    /// What follows `a=fmtp:<pt> `, if there is one.
    pub fmtp: Option<String>,
}

pub use crate::media::api::{OutputTrack, PlaybackEvent};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// No such room or participant (RTSP 404).
    #[error("{0}")]
    NotFound(String),
    /// The id is already live in the room (RTSP 409, HTTP 409).
    #[error("{0}")]
    Taken(String),
    /// The request cannot be served as made (RTSP 400 / 415).
    #[error("{0}")]
    Invalid(String),
    /// The server cannot serve it now (shutting down, room full: RTSP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// The bridge's handle, cloned into the RTSP server, the camera puller and the REST API.
#[derive(Clone)]
pub struct Bridge {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    rooms: Arc<crate::room::Rooms>,
    /// Control commands (joins, tracks, taps): unbounded, they never wait.
    media: MediaHandle,
    /// Camera RTP and sender reports: the engine's bounded data queue, see [`queue`].
    data: queue::DataQueue,
    next_tap: AtomicU64,
    /// Numbers camera tracks, so that a camera that reconnects never reuses a track id that
    /// subscribers may still hold for its previous tracks.
    next_track: AtomicU64,
    pulls: pull::Pulls,
    snapshots: snapshot::Snapshots,
    /// Cameras' low-layer transcoders running on the server.
    low_layers: Arc<low_layer::Budget>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A camera in a room, fed by an RTSP publisher's session. Dropping it removes the camera.
pub struct Publisher {
    feed: camera::Feed,
    camera: camera::Camera,
}

/// A player's view of one participant. Dropping it stops the tap.
pub struct Playback {
    rx: tokio::sync::mpsc::Receiver<PlaybackEvent>,
    tap: TapId,
    media: MediaHandle,
}

/// Events a player may fall behind by before it loses packets: room for a replayed group of
/// pictures (about 4 s of 4 Mbit/s video) on top of the live stream.
const PLAYBACK_QUEUE: usize = 4096;

impl Bridge {
    /// The bridge between `rooms`, the media plane and cameras; what it drops is counted in
    /// `metrics`.
    pub fn new(
        rooms: Arc<crate::room::Rooms>,
        media: MediaHandle,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let data = queue::DataQueue::new(media.data().clone(), metrics.clone());
        Bridge {
            inner: Arc::new(Inner {
                rooms,
                media,
                data,
                next_tap: AtomicU64::new(1),
                next_track: AtomicU64::new(1),
                pulls: pull::Pulls::default(),
                snapshots: snapshot::Snapshots::new(metrics.clone()),
                low_layers: low_layer::Budget::new(),
                metrics,
            }),
        }
    }

    /// Joins camera `id` to `room` with the tracks of its SDP. Tracks that cannot be bridged
    /// (H.265 today) are shown as such in the camera's state; the others go live.
    pub fn publish(
        &self,
        room: &RoomName,
        id: &str,
        tracks: Vec<InputTrack>,
        now: Instant,
    ) -> Result<Publisher, BridgeError> {
        if tracks.is_empty() {
            return Err(BridgeError::Invalid(
                "the SDP has no audio or video track to publish".into(),
            ));
        }
        let camera = camera::Camera::join(self.inner.clone(), room, id)?;
        let (feed, notes) = camera.start_feed(&tracks, now);
        camera.set_state(&state_text(feed.any(), &notes));
        Ok(Publisher { feed, camera })
    }

    /// Whether `room` has anyone in it on this node (cluster placement keeps such a room
    /// here when Redis cannot be asked).
    pub fn occupied(&self, room: &RoomName) -> bool {
        self.inner.rooms.occupied(room)
    }

    /// The tracks participant `id` of `room` publishes, as a player would receive them.
    pub async fn describe(
        &self,
        room: &RoomName,
        id: &str,
    ) -> Result<Vec<OutputTrack>, BridgeError> {
        let nobody = || BridgeError::NotFound(format!("nobody called {id:?} is in room {room}"));
        let pid = ParticipantId::parse(id).map_err(|_| nobody())?;
        match self.inner.media.describe(room.clone(), pid).await {
            Ok(Some(tracks)) => Ok(tracks),
            Ok(None) => Err(nobody()),
            Err(e) => Err(BridgeError::Unavailable(e.to_string())),
        }
    }

    /// Starts playing `tracks` (keys from [`describe`](Self::describe)) of participant `id`.
    /// Each track starts at a keyframe, at once where the bridge has one cached.
    pub async fn play(
        &self,
        room: &RoomName,
        id: &str,
        tracks: &[TrackKey],
    ) -> Result<Playback, BridgeError> {
        let available = self.describe(room, id).await?;
        if !tracks.iter().any(|k| available.iter().any(|t| t.key == *k)) {
            return Err(BridgeError::NotFound(format!(
                "{id:?} in room {room} no longer publishes the tracks that were set up; DESCRIBE again"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(PLAYBACK_QUEUE);
        let tap = TapId(self.inner.next_tap.fetch_add(1, Ordering::Relaxed));
        let pid = ParticipantId::parse(id).map_err(|_| {
            BridgeError::NotFound(format!("nobody called {id:?} is in room {room}"))
        })?;
        self.inner
            .media
            .tap(tap, room.clone(), pid, tracks.to_vec(), tx)
            .map_err(|e| BridgeError::Unavailable(e.to_string()))?;
        Ok(Playback {
            rx,
            tap,
            media: self.inner.media.clone(),
        })
    }
}

/// A camera's state: `live`, `live; <what is wrong>` when some track could not be used, or
/// just what is wrong when nothing can be shown.
pub(crate) fn state_text(any_track: bool, notes: &[String]) -> String {
    match (any_track, notes.is_empty()) {
        (true, true) => "live".to_owned(),
        (true, false) => format!("live; {}", notes.join("; ")),
        (false, _) => notes.join("; "),
    }
}

impl Publisher {
    /// One RTP packet, as received, of input track `track` (an index into the published
    /// tracks). Malformed packets are counted and dropped. What passes through unchanged
    /// shares `packet`'s bytes all the way to the subscribers.
    ///
    /// What the packet becomes is only queued: [`flush`](Self::flush) sends it.
    pub fn rtp(&mut self, track: usize, packet: Bytes, now: Instant) {
        if self.feed.rtp(track, packet, now).is_some() {
            self.camera
                .set_state(&state_text(self.feed.any(), self.feed.notes()));
        }
    }

    /// One RTCP compound packet, as received, for input track `track` (sender reports give
    /// lip sync).
    pub fn rtcp(&mut self, track: usize, packet: &[u8]) {
        self.feed.rtcp(track, packet);
    }

    /// Sends what the packets since the last flush became into the engine's data queue:
    /// waiting for room over TCP ([`queue::Backpressure::Wait`]), dropping what does not fit
    /// over UDP ([`queue::Backpressure::Drop`]).
    pub async fn flush(&mut self, how: queue::Backpressure) {
        self.feed.flush(how).await;
    }

    /// Resolves with the reason once an operator has removed this camera from its room.
    pub async fn removed(&mut self) -> String {
        self.camera.removed().await
    }
}

impl Playback {
    /// The next packet or report; `None` once the participant has left or the server stops.
    pub async fn recv(&mut self) -> Option<PlaybackEvent> {
        self.rx.recv().await
    }
}

impl Drop for Playback {
    fn drop(&mut self) {
        let _ = self.media.send(Command::Untap { tap: self.tap });
    }
}

/// Deterministic garbage for the parsers' never-panic tests (seeded, so a failure repeats).
#[cfg(test)]
pub(crate) struct TestRng(rand::rngs::StdRng);

#[cfg(test)]
impl TestRng {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        TestRng(rand::rngs::StdRng::seed_from_u64(seed))
    }

    pub fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below<T: Copy + TryInto<u64> + TryFrom<u64>>(&mut self, n: T) -> T {
        let n = n.try_into().ok().unwrap_or(u64::MAX).max(1);
        T::try_from(self.next() % n)
            .ok()
            .expect("a number below n fits n's type")
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
