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
//! - [`h264`]: RFC 6184 depacketizing and packetizing, parameter sets, B-frame detection.
//! - [`mjpeg`]: RFC 2435 (RTP/JPEG) frames, decoded and encoded as H.264.
//! - [`aac`]: RFC 3640 (MPEG4-GENERIC) AAC, decoded and encoded as Opus.

pub mod aac;
pub mod h264;
pub mod mjpeg;

use std::time::Instant;

use bytes::Bytes;

use crate::names::RoomName;
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

/// A track a player can receive (RTSP DESCRIBE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTrack {
    /// Names the track in [`PlaybackEvent`]s and in [`Bridge::play`].
    pub key: u64,
    pub kind: MediaKind,
    /// `H264`, `opus`, `PCMU` or `PCMA`.
    pub encoding: String,
    /// The payload type to announce: dynamic (96..) or the static 0/8 for G.711.
    pub payload_type: u8,
    pub clock_rate: u32,
    pub channels: u16,
    /// For H.264: `packetization-mode=1;profile-level-id=...` and `sprop-parameter-sets` when
    /// known.
    pub fmtp: Option<String>,
}

/// What a player's session receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaybackEvent {
    /// One RTP packet of track `track`. Sequence numbers are continuous per track and the
    /// stream starts at a keyframe; the session puts its own SSRC, payload type, sequence and
    /// timestamp base on it (RTP-Info).
    Rtp {
        track: u64,
        marker: bool,
        seq: u16,
        ts: u32,
        payload: Bytes,
    },
    /// The source's NTP↔RTP relation for `track`, in the same timestamp space as `Rtp.ts`,
    /// for the session's RTCP sender reports (lip sync).
    SenderReport { track: u64, ntp: u64, rtp: u32 },
}

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
    rooms: std::sync::Arc<crate::room::Rooms>,
    media: tokio::sync::mpsc::UnboundedSender<crate::media::engine::Command>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// A camera in a room, fed by an RTSP publisher's session. Dropping it removes the camera.
pub struct Publisher {}

/// A player's view of one participant. Dropping it stops the tap.
pub struct Playback {
    rx: tokio::sync::mpsc::Receiver<PlaybackEvent>,
}

impl Bridge {
    pub fn new(
        rooms: std::sync::Arc<crate::room::Rooms>,
        media: tokio::sync::mpsc::UnboundedSender<crate::media::engine::Command>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Bridge {
            inner: std::sync::Arc::new(Inner {
                rooms,
                media,
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
        let _ = (&self.inner, room, id, tracks, now);
        Err(BridgeError::Unavailable("not yet".into()))
    }

    /// The tracks participant `id` of `room` publishes, as a player would receive them.
    pub async fn describe(
        &self,
        room: &RoomName,
        id: &str,
    ) -> Result<Vec<OutputTrack>, BridgeError> {
        let _ = (room, id);
        Err(BridgeError::Unavailable("not yet".into()))
    }

    /// Starts playing `tracks` (keys from [`describe`](Self::describe)) of participant `id`.
    /// Each track starts at a keyframe, at once where the bridge has one cached.
    pub async fn play(
        &self,
        room: &RoomName,
        id: &str,
        tracks: &[u64],
    ) -> Result<Playback, BridgeError> {
        let _ = (room, id, tracks);
        Err(BridgeError::Unavailable("not yet".into()))
    }
}

impl Publisher {
    /// One RTP packet, as received, of input track `track` (an index into the published
    /// tracks). Malformed packets are counted and dropped.
    pub fn rtp(&mut self, track: usize, packet: &[u8], now: Instant) {
        let _ = (track, packet, now);
    }

    /// One RTCP compound packet, as received, for input track `track` (sender reports give
    /// lip sync).
    pub fn rtcp(&mut self, track: usize, packet: &[u8], now: Instant) {
        let _ = (track, packet, now);
    }
}

impl Playback {
    /// The next packet or report; `None` once the participant has left or the server stops.
    pub async fn recv(&mut self) -> Option<PlaybackEvent> {
        self.rx.recv().await
    }
}
