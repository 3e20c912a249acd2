//! The media core's vocabulary: the ids, commands, events and outputs that cross its seam.
//!
//! Everything outside `media/` (signaling, rooms, the RTSP bridge, tests) talks to the core in
//! these terms and nothing else; nothing in here refers to a socket, a channel or a clock. The
//! shell ([`super::udp`]) turns outputs into sends on sockets and channels.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

use crate::names::{ParticipantId, RoomName};
use crate::protocol::{ErrorCode, IceCandidate, MediaKind, OfferedTrack, PcRole, TrackInfo};

/// Identifies a participant (browser, camera) across the signaling layer and the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(pub u64);

/// A published track. Players name tracks by it (RTSP session state keeps the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackKey(pub u64);

/// An RTSP player's copy of a participant's tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TapId(pub u64);

/// Matches a [`Command::Describe`] with its [`Output::Described`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// An RTP synchronization source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

impl fmt::Display for TrackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "track#{}", self.0)
    }
}

/// How a datagram travels between a peer and the media port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// The media port's UDP socket.
    Udp,
    /// An ICE-TCP connection to the media port (RFC 6544): each datagram is one RFC 4571
    /// frame on it. The connection is named by its two ends (a [`FiveTuple`]).
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a datagram comes from and goes to: the transport, the announced local address it
/// arrived at (or leaves from), and the peer's address. For TCP this names one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl FiveTuple {
    pub fn udp(local: SocketAddr, remote: SocketAddr) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            local,
            remote,
        }
    }

    pub fn tcp(local: SocketAddr, remote: SocketAddr) -> FiveTuple {
        FiveTuple {
            transport: Transport::Tcp,
            local,
            remote,
        }
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} <- {}", self.transport, self.local, self.remote)
    }
}

/// How the core is set up.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// The addresses (all on the media port) announced to every peer as UDP host candidates.
    pub candidates: Vec<SocketAddr>,
    /// The addresses announced as passive ICE-TCP host candidates (RFC 6544), at a lower
    /// priority than the UDP ones so that UDP wins wherever it works. Empty: no ICE-TCP.
    pub tcp_candidates: Vec<SocketAddr>,
    /// Seeds what the core chooses at random: SSRCs, first sequence numbers and timestamps.
    /// The shell seeds it from the OS; tests pick a number. (ICE credentials are `rtc`'s own:
    /// see `peer::build`.)
    pub seed: u64,
}

/// What the signaling layer, the bridge and the shell ask of the core.
#[derive(Debug)]
pub enum Command {
    /// A browser joins `room`: the core makes its subscribe connection and subscribes it to
    /// what the room publishes. Its events come out as [`Output::Event`] for `key`.
    Join {
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
    },
    Publish {
        key: ParticipantKey,
        sdp: String,
    },
    SubscribeAnswer {
        key: ParticipantKey,
        sdp: String,
        revision: u64,
    },
    Candidate {
        key: ParticipantKey,
        pc: PcRole,
        candidate: IceCandidate,
    },
    Leave {
        key: ParticipantKey,
    },
    /// The browser lost its path for media (its network changed): its next subscribe offer
    /// restarts ICE (new credentials, RFC 8445 §9). Its publish connection restarts from its
    /// own side, with a new publish offer.
    RestartIce {
        key: ParticipantKey,
    },
    /// A participant whose media does not come over WebRTC (an RTSP camera). Its tracks are
    /// set with `ExternalTracks` and fed with `ExternalRtp`; `Leave` removes it.
    ExternalJoin {
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
    },
    /// Replaces an external participant's tracks (an empty list: it has none right now).
    ExternalTracks {
        key: ParticipantKey,
        tracks: Vec<ExternalTrack>,
    },
    /// One RTP packet of an external participant's track `index`, ready to forward.
    ExternalRtp {
        key: ParticipantKey,
        index: usize,
        packet: rtc::rtp::Packet,
    },
    /// The source's NTP↔RTP relation for track `index`, in that track's timestamp space.
    ExternalSenderReport {
        key: ParticipantKey,
        index: usize,
        ntp: u64,
        rtp: u32,
    },
    /// One RTP packet of the low layer the bridge makes of external video track `track`
    /// (asked for with [`ExternalEvent::LowLayer`]; see `super::low_layer`). Dropped unless
    /// the core wants that layer now.
    LowLayerRtp {
        track: TrackKey,
        packet: rtc::rtp::Packet,
    },
    /// The low layer's NTP↔RTP relation, in its own timestamp space (the bridge's copy of the
    /// track, which it transcodes, has its own).
    LowLayerSenderReport {
        track: TrackKey,
        ntp: u64,
        rtp: u32,
    },
    /// The tracks of participant `id` in `room` as a player would receive them; answered by
    /// [`Output::Described`] with the same `request`.
    Describe {
        request: RequestId,
        room: RoomName,
        id: ParticipantId,
    },
    /// What each browser in `room` receives now: [`Output::Subscriptions`] with the same
    /// `request`.
    Subscriptions {
        request: RequestId,
        room: RoomName,
    },
    /// Copies `tracks` (keys from `Describe`) of participant `id` to player `tap`, starting
    /// each at a keyframe; what it gets comes out as [`Output::Playback`] and
    /// [`Output::Replay`]. The tap ends when every tapped track is gone
    /// ([`Output::TapEnded`]).
    Tap {
        tap: TapId,
        room: RoomName,
        id: ParticipantId,
        tracks: Vec<TrackKey>,
    },
    /// The shell could not hand player `tap` a packet (its queue was full): its video starts
    /// again at the next keyframe.
    TapLagged {
        tap: TapId,
    },
    Untap {
        tap: TapId,
    },
    /// The shell cannot send on `path` as fast as the core produces for it (an ICE-TCP
    /// connection whose reader is slow): while `congested`, the connection's video sinks stop
    /// at the end of the frame they are in and wait; once it clears, they start again at a
    /// keyframe. Audio and control traffic go on.
    Congested {
        path: FiveTuple,
        congested: bool,
    },
    /// The shell's ICE-TCP connection `path` closed (the peer hung up, or it was refused):
    /// a new connection from that address must begin with a binding request again.
    PathClosed(FiveTuple),
    /// Turns the keyframe cache of external video on or off (it is on by default).
    KeyframeCache(bool),
    /// Stops (or resumes) forwarding participant `key`'s tracks of `kind` (an operator's mute).
    Mute {
        key: ParticipantKey,
        kind: MediaKind,
        muted: bool,
    },
    /// Subscriber `key` wants simulcast layer `layer` (0 the smallest picture) of the video
    /// track published as `track` (its public id); it moves there at that layer's next
    /// keyframe (tracks without layers ignore the number). `None`: it shows the video nowhere
    /// (an off-screen tile, a hidden tab): nothing is sent until it asks again.
    SetLayer {
        key: ParticipantKey,
        track: String,
        layer: Option<usize>,
    },
    /// Close every connection.
    Shutdown,
}

/// A track of an external participant.
#[derive(Debug, Clone)]
pub struct ExternalTrack {
    /// The track id shown to clients (`{participant}-v0`).
    pub public_id: String,
    pub kind: MediaKind,
    pub codec: RTCRtpCodec,
}

/// What the core tells one participant's signaling session.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
        revision: u64,
        tracks: Vec<OfferedTrack>,
    },
    Candidate {
        pc: PcRole,
        candidate: IceCandidate,
    },
    /// The participant's own published tracks changed.
    TracksChanged {
        tracks: Vec<TrackInfo>,
    },
    /// Dynacast: nobody receives the layers named by `paused` (their rids) of this
    /// participant's simulcast track `track`; the page pauses their encodings and runs the
    /// others. A layer the server has not seen yet is never named, so it starts and is seen.
    Layers {
        track: String,
        paused: Vec<String>,
    },
    /// The room's dominant speaker changed (told to every browser in the room), or is this
    /// one (told to a browser that joins). `None`: the speaker left and nobody has spoken
    /// since.
    Speaker {
        id: Option<ParticipantId>,
    },
    /// A peer connection failed or closed; the participant has been removed from the media
    /// plane and should be removed from the room.
    Failed {
        reason: String,
    },
    /// A peer connection failed before it ever connected: no media got through from this
    /// browser at all (its network blocks the media port). Removed as with `Failed`; joining
    /// again from the same network will fail the same way.
    Unreachable {
        reason: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// What the core asks of an external participant's source (the bridge's camera), which
/// the shell routes to it ([`Output::External`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalEvent {
    /// Some subscriber of video track `track` needs a smaller picture than the camera sends
    /// (`needed`), or nobody has for a while (`!needed`): start (stop) making its low layer and
    /// sending it as [`Command::LowLayerRtp`].
    LowLayer { track: TrackKey, needed: bool },
    /// A subscriber of the low layer of `track` needs a keyframe: encode one.
    LowLayerKeyframe { track: TrackKey },
}

/// A track a player can receive (RTSP DESCRIBE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTrack {
    /// Names the track in [`PlaybackEvent`]s and in [`Command::Tap`].
    pub key: TrackKey,
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
        track: TrackKey,
        marker: bool,
        seq: u16,
        ts: u32,
        payload: Bytes,
    },
    /// The source's NTP↔RTP relation for `track`, in the same timestamp space as `Rtp.ts`,
    /// for the session's RTCP sender reports (lip sync).
    SenderReport { track: TrackKey, ntp: u64, rtp: u32 },
}

/// A datagram to send from the media port.
#[derive(Debug)]
pub struct Transmit {
    pub contents: BytesMut,
    pub destination: SocketAddr,
    /// The announced local address it must leave from.
    pub source: SocketAddr,
    /// UDP, or the ICE-TCP connection between `source` and `destination`.
    pub transport: Transport,
}

impl Transmit {
    pub fn path(&self) -> FiveTuple {
        FiveTuple {
            transport: self.transport,
            local: self.source,
            remote: self.destination,
        }
    }
}

/// What the core wants done, polled by the shell until it says [`Output::Timeout`].
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    /// For participant `key`'s signaling session.
    Event(ParticipantKey, MediaEvent),
    /// For external participant `key`'s source (the bridge's camera).
    External(ParticipantKey, ExternalEvent),
    /// For player `tap`. A player that cannot take it is reported with
    /// [`Command::TapLagged`].
    Playback(TapId, PlaybackEvent),
    /// A cached group of pictures for player `tap`: all of it or, if the player's queue cannot
    /// take it whole, none (report [`Command::TapLagged`]): half a group shows a broken picture.
    Replay(TapId, Vec<PlaybackEvent>),
    /// Every track player `tap` copied is gone.
    TapEnded(TapId),
    /// The answer to [`Command::Describe`]: `None` if there is no such participant.
    Described(RequestId, Option<Vec<OutputTrack>>),
    /// The answer to [`Command::Subscriptions`].
    Subscriptions(RequestId, Vec<SubscriberView>),
    /// No connection uses this ICE-TCP connection any more (its peer connection ended): close
    /// it.
    Close(FiveTuple),
    /// Nothing more to do until this instant (or the next input).
    Timeout(Instant),
}

/// What one browser receives, for the REST room view.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SubscriberView {
    /// The browser's participant id.
    pub id: String,
    /// Its bandwidth estimate (`bwe`), bits per second, once its connection is up.
    pub estimate_bps: Option<u64>,
    pub tracks: Vec<SubscriptionView>,
}

/// What one browser receives of one track.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SubscriptionView {
    /// Whose track it is (participant id).
    pub participant: String,
    pub kind: MediaKind,
    /// Video: `sending` (pictures flow), `starting` (waiting for a keyframe), `hidden` (the
    /// subscriber shows it nowhere), `starved` (no room in its estimate); audio: `sending`.
    pub state: &'static str,
    /// Simulcast: the layer it receives (0 the smallest picture) and that layer's rid.
    pub layer: Option<usize>,
    pub rid: Option<String>,
    /// Simulcast: the largest layer its tile asks for, and the largest its estimate allows.
    pub wanted: Option<usize>,
    pub allowed: Option<usize>,
}
