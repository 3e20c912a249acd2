//! The seam between sources and sinks: a published track has one [`Source`] and any number of
//! [`Sink`]s, and forwarding, keyframe replay, keyframe requests and sender reports are written
//! once against them, whatever is on either side.
//!
//! - A source is where packets come from: a browser's publish connection, or anything the
//!   shell feeds in ready-made RTP (an RTSP camera, pushed or pulled; later a file or WHIP).
//!   The difference that matters to the core is whether it can be asked for a keyframe (PLI) or
//!   has its latest group of pictures cached instead.
//! - A sink is where a copy goes: a browser's subscribe connection (encrypted per subscriber)
//!   or an RTSP player's tap (handed to the shell as [`Output::Playback`]). Each sink has its
//!   own sequence/timestamp space and keyframe gate.
//!
//! [`Output::Playback`]: super::api::Output::Playback

use std::time::Instant;

use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};

use super::api::{ParticipantKey, Ssrc, TapId};
use super::connection::PeerKey;
use super::gop_cache::GopCache;
use super::keyframe::{KeyframeGate, VideoCodec};
use super::rewrite::Rewriter;
use crate::names::RoomName;
use crate::protocol::MediaKind;

/// Where a published track's packets come from.
pub(super) enum Source {
    /// A browser's publish connection: keyframes are asked for with PLI.
    Peer {
        conn: PeerKey,
        receiver: RTCRtpReceiverId,
        rtc_track_id: String,
    },
    /// Packets the shell hands in ready to forward (a camera through the RTSP bridge). Such
    /// sources cannot be asked for keyframes, so the latest keyframe and what followed it are
    /// kept and replayed to each sink that needs one.
    External { cache: GopCache },
}

/// A published track.
pub(super) struct Track {
    pub owner: ParticipantKey,
    pub room: RoomName,
    pub public_id: String,
    pub kind: MediaKind,
    pub codec: RTCRtpCodec,
    pub video: VideoCodec,
    pub source: Source,
    /// The SSRC the source announced (0 when it did not).
    pub media_ssrc: Ssrc,
    /// The SSRC of the latest packet: a change means the source restarted.
    pub last_ssrc: Option<Ssrc>,
    /// An operator muted it: nothing is forwarded.
    pub muted: bool,
    pub sinks: Vec<Sink>,
    pub gate: KeyframeGate,
    /// The source's latest sender report: NTP time, RTP time, and when it arrived.
    pub sr: Option<(u64, u32, Instant)>,
    /// Audio from a browser: the id of the audio-level header extension (RFC 6464) its
    /// packets carry, as negotiated on its publish connection.
    pub audio_level: Option<u8>,
}

impl Track {
    pub fn is_video(&self) -> bool {
        self.kind == MediaKind::Video
    }

    /// The sink that feeds subscriber `sub`, if it is subscribed.
    pub fn sink_of(&self, sub: ParticipantKey) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.subscriber() == Some(sub))
    }

    pub fn sink_of_mut(&mut self, sub: ParticipantKey) -> Option<&mut Sink> {
        self.sinks.iter_mut().find(|s| s.subscriber() == Some(sub))
    }
}

/// One copy of a track.
pub(super) struct Sink {
    pub to: SinkKind,
    /// Its own sequence numbers and timestamps, continuous across source restarts.
    pub rewriter: Rewriter,
    /// Video only: nothing is sent until a keyframe starts the stream (again).
    pub waiting_keyframe: bool,
    /// Video only: the last packet sent did not end its frame (no marker bit), so the rest of
    /// the frame follows even if the connection becomes congested.
    pub frame_open: bool,
    /// When a cached group of pictures was last replayed to it (external sources).
    pub last_replay: Option<Instant>,
}

pub(super) enum SinkKind {
    /// A browser's subscribe connection.
    Peer(PeerSink),
    /// An RTSP player.
    Tap(TapId),
}

impl Sink {
    pub fn new(to: SinkKind, rewriter: Rewriter, kind: MediaKind) -> Sink {
        Sink {
            to,
            rewriter,
            waiting_keyframe: kind == MediaKind::Video,
            frame_open: false,
            last_replay: None,
        }
    }

    pub fn subscriber(&self) -> Option<ParticipantKey> {
        match &self.to {
            SinkKind::Peer(p) => Some(p.subscriber),
            SinkKind::Tap(_) => None,
        }
    }

    pub fn peer(&self) -> Option<&PeerSink> {
        match &self.to {
            SinkKind::Peer(p) => Some(p),
            SinkKind::Tap(_) => None,
        }
    }

    pub fn peer_mut(&mut self) -> Option<&mut PeerSink> {
        match &mut self.to {
            SinkKind::Peer(p) => Some(p),
            SinkKind::Tap(_) => None,
        }
    }

    pub fn tap(&self) -> Option<TapId> {
        match &self.to {
            SinkKind::Tap(t) => Some(*t),
            SinkKind::Peer(_) => None,
        }
    }
}

/// A subscriber's sender for one track.
pub(super) struct PeerSink {
    pub subscriber: ParticipantKey,
    /// The subscriber's subscribe connection.
    pub conn: PeerKey,
    pub sender: RTCRtpSenderId,
    pub ssrc: Ssrc,
    /// Negotiated payload type on this subscriber's connection; None until answered, or if the
    /// subscriber cannot receive the source's codec.
    pub pt: Option<u8>,
    pub negotiated: bool,
    /// The revision of the first subscribe offer that carried this sender: only an answer to
    /// that offer (or a later one) settles it.
    pub offered_in: Option<u64>,
    pub sent: Sent,
}

/// What a sender has sent, for its sender reports.
#[derive(Default)]
pub(super) struct Sent {
    pub packets: u32,
    pub octets: u32,
}
