//! The sans-I/O SFU core.
//!
//! An [`Engine`] owns a set of rooms' peer connections and forwards media between them. It never
//! touches a socket or a clock: the shell ([`super::udp`]) feeds it datagrams, commands from the
//! signaling layer and timeouts, each with `now`, and drains what it wants to send. Several
//! engines (one per worker thread, each with its own rooms) can run side by side; nothing in
//! here is shared between them except the metrics counters.
//!
//! Forwarding path, per RTP packet from a publisher: one hash lookup for the track, then per
//! subscriber a sequence/timestamp rewrite and `write_rtp` into that subscriber's connection,
//! which encrypts it for that subscriber only. The payload bytes are shared (`Bytes` is
//! reference-counted); nothing here allocates, locks or spawns per packet per subscriber.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::header::PacketType;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

pub use super::api::{Command, ExternalTrack, MediaEvent, ParticipantKey, TrackKey};
use super::api::{EngineConfig, Output, OutputTrack, PlaybackEvent, TapId, Transmit};
use super::demux::Demux;
use super::keyframe::{starts_keyframe, KeyframeGate, VideoCodec};
use super::path::PathPin;
use super::peer;
use super::rewrite::Rewriter;
use crate::metrics::Metrics;
use crate::names::{ParticipantId, RoomName};
use crate::protocol::{ErrorCode, IceCandidate, MediaKind, OfferedTrack, PcRole, TrackInfo};

/// Index of a peer connection in the engine's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(u32);

/// The SSRC the server's own RTCP feedback (PLI) is sent from.
const FEEDBACK_SSRC: u32 = 0x0c0f_ab00;

/// A replayed group of pictures is taken out of the subscriber's connection this many packets
/// at a time. Written in one go, a group of hundreds of packets grew every queue of `rtc`'s
/// pipeline to that many entries, and queues keep their capacity for the connection's lifetime
/// (`confab-bench rtsp`, 25–125 subscribers: 0.86–1.1 MiB of RSS per subscriber before,
/// 0.37–0.56 MiB after; BENCHMARKS.md).
const REPLAY_CHUNK: u64 = 32;

/// How often translated sender reports go to subscribers (RFC 3550 §6.2 suggests ~5 s minimum
/// for large sessions; browsers sync faster with 1 s).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

struct Peer {
    pc: RTCPeerConnection,
    owner: ParticipantKey,
    role: PcRole,
    ufrag: String,
    state: RTCPeerConnectionState,
    deadline: Option<Instant>,
    dirty: bool,
    /// Publish connections: `rtc`'s track id → our track.
    inbound: HashMap<String, TrackKey>,
    /// Whether our candidates were trickled (after the first local description).
    trickled: bool,
    /// Which address `rtc` sees for the peer, and where the peer really is (see [`PathPin`]).
    path: PathPin,
}

impl Peer {
    /// The next datagram the connection wants sent: bytes, where to (after [`PathPin`]), and
    /// from which local address.
    fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.pc.poll_write()?;
        let destination = self.path.outbound(t.transport.peer_addr, &t.message);
        Some(Transmit {
            contents: t.message,
            destination,
            source: t.transport.local_addr,
        })
    }
}

struct Subscription {
    sender: RTCRtpSenderId,
    ssrc: u32,
    /// Negotiated payload type on this subscriber's connection; None until answered, or if the
    /// subscriber cannot receive the publisher's codec.
    pt: Option<u8>,
    negotiated: bool,
    /// The revision of the first subscribe offer that carried this sender: only an answer to
    /// that offer (or a later one) settles it.
    offered_in: Option<u64>,
    rewriter: Rewriter,
    waiting_keyframe: bool,
    /// When a cached keyframe was last replayed to this subscriber (external tracks).
    last_replay: Option<Instant>,
    sent: Sent,
}

/// What a subscription has sent, for its sender reports.
#[derive(Default)]
struct Sent {
    packets: u32,
    octets: u32,
}

struct Participant {
    room: RoomName,
    id: ParticipantId,
    publish: Option<PeerKey>,
    subscribe: PeerKey,
    published: Vec<TrackKey>,
    subs: HashMap<TrackKey, Subscription>,
    /// Public track id → track, to route subscriber PLI/FIR.
    sub_by_track_id: HashMap<String, TrackKey>,
    revision: u64,
    awaiting_answer: Option<u64>,
    renegotiate: bool,
}

/// Where a published track's packets come from.
enum TrackSource {
    /// A browser's publish connection: keyframes are asked for with PLI.
    Peer {
        peer: PeerKey,
        receiver: RTCRtpReceiverId,
        rtc_track_id: String,
    },
    /// A camera through the RTSP bridge: cameras cannot be asked for keyframes, so the latest
    /// keyframe and what followed it are kept and replayed to each new subscriber.
    External { cache: GopCache },
}

/// The packets from the latest keyframe on, for external video tracks (instant start).
#[derive(Default)]
struct GopCache {
    packets: Vec<rtc::rtp::Packet>,
    bytes: usize,
    /// False until a keyframe starts it, and after the group outgrew the limits (then the next
    /// keyframe starts it again).
    valid: bool,
}

/// A group longer than this is not cached; subscribers then wait for the next keyframe.
const GOP_CACHE_BYTES: usize = 8 * 1024 * 1024;
const GOP_CACHE_PACKETS: usize = 8192;

impl GopCache {
    fn push(&mut self, pkt: &rtc::rtp::Packet, starts_keyframe: bool) {
        // A keyframe of several slices starts once: only its first packet opens a group.
        let new_frame = self
            .packets
            .last()
            .is_none_or(|l| l.header.timestamp != pkt.header.timestamp);
        if starts_keyframe && new_frame {
            self.packets.clear();
            self.bytes = 0;
            self.valid = true;
        }
        if !self.valid {
            return;
        }
        if self.bytes + pkt.payload.len() > GOP_CACHE_BYTES
            || self.packets.len() >= GOP_CACHE_PACKETS
        {
            self.packets = Vec::new();
            self.bytes = 0;
            self.valid = false;
            return;
        }
        self.bytes += pkt.payload.len();
        self.packets.push(pkt.clone());
    }

    fn replayable(&self) -> bool {
        self.valid && !self.packets.is_empty()
    }

    /// Maps the cached packets through `rewriter` (rebased to start with them) and hands each
    /// to `emit` with its sequence number and timestamp, until `emit` says stop. Frames before
    /// the newest get timestamps `tick` apart ending at the newest one's (see `Engine::replay`).
    fn replay(
        &self,
        now: Instant,
        tick: u32,
        rewriter: &mut Rewriter,
        mut emit: impl FnMut(&rtc::rtp::Packet, u16, u32) -> bool,
    ) {
        let Some(last) = self.packets.last() else {
            return;
        };
        let frames = 1 + self
            .packets
            .windows(2)
            .filter(|w| w[0].header.timestamp != w[1].header.timestamp)
            .count() as u32;
        rewriter.rebase();
        let (mut frame, mut prev, mut offset) = (0u32, self.packets[0].header.timestamp, None);
        for pkt in &self.packets {
            if pkt.header.timestamp != prev {
                frame += 1;
                prev = pkt.header.timestamp;
            }
            let Some(out) = rewriter.rewrite(now, pkt.header.sequence_number, pkt.header.timestamp)
            else {
                continue;
            };
            // The rewriter's offset: the newest frame keeps its real mapping.
            let off = *offset.get_or_insert(out.ts.wrapping_sub(pkt.header.timestamp));
            let squeeze = (frames - 1 - frame).wrapping_mul(tick);
            let ts = last
                .header
                .timestamp
                .wrapping_add(off)
                .wrapping_sub(squeeze);
            if !emit(pkt, out.seq, ts) {
                return;
            }
        }
    }
}

/// An RTSP player's copy of a track.
struct Tap {
    id: TapId,
    rewriter: Rewriter,
    waiting_keyframe: bool,
}

struct PubTrack {
    owner: ParticipantKey,
    room: RoomName,
    public_id: String,
    kind: MediaKind,
    codec: RTCRtpCodec,
    video: VideoCodec,
    source: TrackSource,
    media_ssrc: u32,
    last_ssrc: Option<u32>,
    subscribers: Vec<ParticipantKey>,
    taps: Vec<Tap>,
    gate: KeyframeGate,
    /// The publisher's latest sender report: NTP time, RTP time, and when it arrived.
    sr: Option<(u64, u32, Instant)>,
}

/// A participant whose media comes through the bridge.
struct External {
    room: RoomName,
    id: ParticipantId,
    tracks: Vec<TrackKey>,
}

/// The SFU core for a set of rooms.
pub struct Engine {
    candidates: Vec<SocketAddr>,
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    demux: Demux<PeerKey>,
    participants: HashMap<ParticipantKey, Participant>,
    rooms: HashMap<RoomName, Vec<ParticipantKey>>,
    tracks: HashMap<TrackKey, PubTrack>,
    externals: HashMap<ParticipantKey, External>,
    /// Participants' media kinds an operator muted: not forwarded until unmuted.
    muted: HashSet<(ParticipantKey, MediaKind)>,
    /// Tap id → the tracks it copies.
    taps: HashMap<TapId, Vec<TrackKey>>,
    /// Whether external video keeps its latest group of pictures for instant start.
    gop_cache: bool,
    next_track: u64,
    timers: BinaryHeap<Reverse<(Instant, PeerKey)>>,
    dirty: Vec<PeerKey>,
    keyframes_pending: Vec<TrackKey>,
    next_report: Option<Instant>,
    metrics: Arc<Metrics>,
    scratch: Vec<TaggedRTCMessage>,
    /// Datagrams taken out of connections before [`drain_transmits`](Self::drain_transmits)
    /// (see [`REPLAY_CHUNK`]): bytes, destination, source address.
    early: VecDeque<Transmit>,
    /// Events, playback and answers for the shell, oldest first.
    outputs: VecDeque<Output>,
    /// How far [`poll_output`](Self::poll_output) has got through `dirty`.
    dirty_at: usize,
    /// The latest `now` the engine was told.
    last_now: Option<Instant>,
    rng: StdRng,
}

fn media_kind(k: RtpCodecKind) -> MediaKind {
    match k {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    }
}

/// `video/H264` → `H264`, `audio/opus` → `opus`, as the REST API shows codecs.
pub(crate) fn codec_name(mime: &str) -> String {
    mime.split('/').nth(1).unwrap_or(mime).to_owned()
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

/// Picks the payload type on a subscriber's connection for a publisher's codec: the same MIME
/// type; for H.264 packetization-mode 1 and, if offered, the same profile.
fn pick_payload_type(
    codec: &RTCRtpCodec,
    offered: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters],
) -> Option<u8> {
    let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
        c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
    };
    if VideoCodec::from_mime(&codec.mime_type) == VideoCodec::H264 {
        let mode = |f: &str| {
            fmtp_param(f, "packetization-mode")
                .unwrap_or("0")
                .to_owned()
        };
        let profile = |f: &str| {
            fmtp_param(f, "profile-level-id")
                .map(|p| p.to_ascii_lowercase())
                .unwrap_or_default()
        };
        let want_mode = mode(&codec.sdp_fmtp_line);
        let want_profile = profile(&codec.sdp_fmtp_line);
        let h264: Vec<_> = offered
            .iter()
            .filter(same_mime)
            .filter(|c| mode(&c.rtp_codec.sdp_fmtp_line) == want_mode)
            .collect();
        return h264
            .iter()
            .find(|c| profile(&c.rtp_codec.sdp_fmtp_line) == want_profile)
            .or(h264.first())
            .map(|c| c.payload_type);
    }
    offered.iter().find(same_mime).map(|c| c.payload_type)
}

impl Engine {
    pub fn new(config: EngineConfig, metrics: Arc<Metrics>) -> Self {
        Engine {
            candidates: config.candidates,
            peers: Vec::new(),
            free: Vec::new(),
            demux: Demux::default(),
            participants: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            externals: HashMap::new(),
            muted: HashSet::new(),
            taps: HashMap::new(),
            gop_cache: true,
            next_track: 1,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            keyframes_pending: Vec::new(),
            next_report: None,
            metrics,
            scratch: Vec::new(),
            early: VecDeque::new(),
            outputs: VecDeque::new(),
            dirty_at: 0,
            last_now: None,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.iter().filter(|p| p.is_some()).count()
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A datagram arrived on the media port at `local` (the address it was sent to).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        self.last_now = Some(now);
        let Some(key) = self.demux.route(from, data) else {
            self.metrics.dropped_datagrams.fetch_add(1, Relaxed);
            return;
        };
        let Some(peer) = self.peer_mut(key) else {
            self.metrics.dropped_datagrams.fetch_add(1, Relaxed);
            return;
        };
        let closing =
            peer.state == RTCPeerConnectionState::Connected && is_encrypted_dtls_alert(data);
        let shown = peer.path.inbound(from, data);
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: shown,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = peer.pc.handle_read(msg) {
            tracing::debug!(%from, error = %e, "datagram rejected by its connection");
            self.metrics.dropped_datagrams.fetch_add(1, Relaxed);
        }
        self.service(now, key);
        if closing {
            // `rtc` answers close_notify but keeps the connection "connected" until ICE times
            // out; the peer has said it is gone, so it is.
            self.peer_closed(now, key, "closed by the peer");
        }
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.last_now = Some(now);
        match cmd {
            Command::Join { key, room, id } => self.join(now, key, room, id),
            Command::Publish { key, sdp } => self.publish(now, key, sdp),
            Command::SubscribeAnswer { key, sdp, revision } => {
                self.subscribe_answer(now, key, sdp, revision)
            }
            Command::Candidate { key, pc, candidate } => self.remote_candidate(key, pc, candidate),
            Command::Leave { key } => self.remove_participant(now, key),
            Command::ExternalJoin { key, room, id } => {
                tracing::info!(room = %room, participant = %id, "camera joined the media plane");
                self.externals.insert(
                    key,
                    External {
                        room,
                        id,
                        tracks: Vec::new(),
                    },
                );
                if self.next_report.is_none() {
                    self.next_report = Some(now + REPORT_INTERVAL);
                }
            }
            Command::ExternalTracks { key, tracks } => self.external_tracks(now, key, tracks),
            Command::ExternalRtp { key, index, packet } => {
                let Some(tk) = self
                    .externals
                    .get(&key)
                    .and_then(|x| x.tracks.get(index).copied())
                else {
                    return;
                };
                if self.gop_cache {
                    if let Some(t) = self.tracks.get_mut(&tk) {
                        if let TrackSource::External { cache } = &mut t.source {
                            if t.kind == MediaKind::Video {
                                cache.push(&packet, starts_keyframe(t.video, &packet.payload));
                            }
                        }
                    }
                }
                self.forward(now, tk, packet);
            }
            Command::ExternalSenderReport {
                key,
                index,
                ntp,
                rtp,
            } => {
                let tk = self
                    .externals
                    .get(&key)
                    .and_then(|x| x.tracks.get(index).copied());
                if let Some(t) = tk.and_then(|tk| self.tracks.get_mut(&tk)) {
                    t.sr = Some((ntp, rtp, now));
                }
            }
            Command::Describe { request, room, id } => {
                let tracks = self.describe(&room, &id);
                self.outputs.push_back(Output::Described(request, tracks));
            }
            Command::Tap {
                tap,
                room,
                id,
                tracks,
            } => self.tap(now, tap, &room, &id, &tracks),
            Command::TapLagged { tap } => self.tap_lagged(now, tap),
            Command::KeyframeCache(on) => self.gop_cache = on,
            Command::Mute { key, kind, muted } => self.mute(key, kind, muted),
            Command::Untap { tap } => {
                for tk in self.taps.remove(&tap).unwrap_or_default() {
                    if let Some(t) = self.tracks.get_mut(&tk) {
                        t.taps.retain(|x| x.id != tap);
                    }
                }
            }
            Command::Shutdown => {
                let keys: Vec<ParticipantKey> = self
                    .participants
                    .keys()
                    .chain(self.externals.keys())
                    .copied()
                    .collect();
                for key in keys {
                    self.remove_participant(now, key);
                }
            }
        }
    }

    /// Drives every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peer_mut(key) else {
                continue;
            };
            // Entries are not removed when a deadline moves; only the current one fires.
            if peer.deadline != Some(at) {
                continue;
            }
            peer.deadline = None;
            if let Err(e) = peer.pc.handle_timeout(now) {
                tracing::debug!(error = %e, "peer timeout handling failed");
            }
            self.service(now, key);
        }
        if !self.keyframes_pending.is_empty() {
            let pending = std::mem::take(&mut self.keyframes_pending);
            for tk in pending {
                let due = self.tracks.get_mut(&tk).is_some_and(|t| t.gate.poll(now));
                if due {
                    self.send_pli(now, tk);
                }
                if self
                    .tracks
                    .get(&tk)
                    .is_some_and(|t| t.gate.deadline().is_some())
                {
                    self.keyframes_pending.push(tk);
                }
            }
        }
        if self.next_report.is_some_and(|t| now >= t) {
            self.send_sender_reports(now);
            self.keyframe_watchdog(now);
            self.next_report = if self.participants.is_empty() && self.externals.is_empty() {
                None
            } else {
                Some(now + REPORT_INTERVAL)
            };
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.timers.peek().map(|Reverse((at, _))| *at);
        let mut consider = |c: Option<Instant>| {
            if let Some(c) = c {
                t = Some(t.map_or(c, |t| t.min(c)));
            }
        };
        consider(self.next_report);
        for tk in &self.keyframes_pending {
            consider(self.tracks.get(tk).and_then(|t| t.gate.deadline()));
        }
        t
    }

    /// The next thing the engine wants done: events and datagrams first, then, once nothing
    /// is left, [`Output::Timeout`] with when to call [`handle_timeout`](Self::handle_timeout)
    /// (an hour ahead when nothing is scheduled). Poll until it says `Timeout` after every
    /// input. Datagrams are handed over, so the shell sends them without a copy.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        if let Some(t) = self.early.pop_front() {
            return Output::Transmit(t);
        }
        while let Some(&key) = self.dirty.get(self.dirty_at) {
            if let Some(peer) = self.peers.get_mut(key.0 as usize).and_then(Option::as_mut) {
                if let Some(t) = peer.poll_transmit() {
                    return Output::Transmit(t);
                }
                peer.dirty = false;
                let deadline = peer.pc.poll_timeout();
                if deadline != peer.deadline {
                    peer.deadline = deadline;
                    if let Some(d) = deadline {
                        self.timers.push(Reverse((d, key)));
                    }
                }
            }
            self.dirty_at += 1;
        }
        self.dirty.clear();
        self.dirty_at = 0;
        let far = self.last_now.unwrap_or_else(Instant::now) + Duration::from_secs(3600);
        Output::Timeout(self.poll_timeout().unwrap_or(far))
    }

    // ----- participants -------------------------------------------------------------------

    fn join(&mut self, now: Instant, key: ParticipantKey, room: RoomName, id: ParticipantId) {
        if self.participants.contains_key(&key) {
            return;
        }
        let subscribe = match self.new_peer(now, key, PcRole::Subscribe) {
            Ok(k) => k,
            Err(e) => {
                let ev = MediaEvent::Error {
                    code: ErrorCode::Internal,
                    message: format!("could not create a peer connection: {e}"),
                };
                self.outputs.push_back(Output::Event(key, ev));
                return;
            }
        };
        self.participants.insert(
            key,
            Participant {
                room: room.clone(),
                id,
                publish: None,
                subscribe,
                published: Vec::new(),
                subs: HashMap::new(),
                sub_by_track_id: HashMap::new(),
                revision: 0,
                awaiting_answer: None,
                renegotiate: false,
            },
        );
        let existing: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room)
            .map(|(k, _)| *k)
            .collect();
        self.rooms.entry(room).or_default().push(key);
        if self.next_report.is_none() {
            self.next_report = Some(now + REPORT_INTERVAL);
        }
        for tk in &existing {
            self.subscribe(key, *tk);
        }
        if !existing.is_empty() {
            self.renegotiate(now, key);
        }
    }

    fn mute(&mut self, key: ParticipantKey, kind: MediaKind, muted: bool) {
        if !muted {
            if self.muted.remove(&(key, kind)) && kind == MediaKind::Video {
                // Subscribers' decoders lost the picture: start them again at a keyframe.
                let Engine {
                    tracks,
                    participants,
                    ..
                } = self;
                for (tk, t) in tracks
                    .iter()
                    .filter(|(_, t)| t.owner == key && t.kind == kind)
                {
                    for sub in &t.subscribers {
                        if let Some(s) = participants.get_mut(sub).and_then(|p| p.subs.get_mut(tk))
                        {
                            s.waiting_keyframe = true;
                        }
                    }
                }
            }
            return;
        }
        if self.participants.contains_key(&key) || self.externals.contains_key(&key) {
            self.muted.insert((key, kind));
        }
    }

    fn remove_participant(&mut self, now: Instant, key: ParticipantKey) {
        self.muted.retain(|(k, _)| *k != key);
        if let Some(x) = self.externals.remove(&key) {
            for tk in x.tracks {
                self.unpublish(now, tk, false);
            }
            tracing::info!(room = %x.room, participant = %x.id, "camera left the media plane");
            return;
        }
        let Some(p) = self.participants.remove(&key) else {
            return;
        };
        for tk in p.published.iter().copied() {
            self.unpublish(now, tk, false);
        }
        for tk in p.subs.keys() {
            if let Some(t) = self.tracks.get_mut(tk) {
                t.subscribers.retain(|s| *s != key);
            }
        }
        for pk in [Some(p.subscribe), p.publish].into_iter().flatten() {
            self.close_peer(pk);
        }
        if let Some(members) = self.rooms.get_mut(&p.room) {
            members.retain(|m| *m != key);
            if members.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        tracing::info!(room = %p.room, participant = %p.id, "left the media plane");
    }

    fn notify(&mut self, key: ParticipantKey, ev: MediaEvent) {
        if self.participants.contains_key(&key) {
            self.outputs.push_back(Output::Event(key, ev));
        }
    }

    // ----- peer connections ---------------------------------------------------------------

    fn peer_mut(&mut self, key: PeerKey) -> Option<&mut Peer> {
        self.peers.get_mut(key.0 as usize).and_then(Option::as_mut)
    }

    fn new_peer(
        &mut self,
        now: Instant,
        owner: ParticipantKey,
        role: PcRole,
    ) -> Result<PeerKey, rtc::shared::error::Error> {
        let (ufrag, pwd) = peer::ice_credentials(&mut self.rng);
        let pc = peer::build(now, role, &ufrag, &pwd, &self.candidates)?;
        let peer = Peer {
            pc,
            owner,
            role,
            ufrag: ufrag.clone(),
            state: RTCPeerConnectionState::New,
            deadline: None,
            dirty: false,
            inbound: HashMap::new(),
            trickled: false,
            path: PathPin::default(),
        };
        let key = match self.free.pop() {
            Some(i) => {
                self.peers[i as usize] = Some(peer);
                PeerKey(i)
            }
            None => {
                self.peers.push(Some(peer));
                PeerKey(self.peers.len() as u32 - 1)
            }
        };
        self.demux.insert(ufrag, key);
        self.metrics.peers_new.fetch_add(1, Relaxed);
        self.mark_dirty(key);
        Ok(key)
    }

    fn close_peer(&mut self, key: PeerKey) {
        let Some(mut peer) = self.peers.get_mut(key.0 as usize).and_then(Option::take) else {
            return;
        };
        let _ = peer.pc.close();
        self.state_gauge(peer.state).fetch_sub(1, Relaxed);
        self.demux.remove(&peer.ufrag, key);
        self.free.push(key.0);
    }

    fn state_gauge(&self, s: RTCPeerConnectionState) -> &std::sync::atomic::AtomicI64 {
        let m = &self.metrics;
        match s {
            RTCPeerConnectionState::New | RTCPeerConnectionState::Unspecified => &m.peers_new,
            RTCPeerConnectionState::Connecting => &m.peers_connecting,
            RTCPeerConnectionState::Connected => &m.peers_connected,
            RTCPeerConnectionState::Disconnected => &m.peers_disconnected,
            _ => &m.peers_failed,
        }
    }

    fn mark_dirty(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.get_mut(key.0 as usize).and_then(Option::as_mut) {
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Drains a connection's events and inbound messages after anything happened to it.
    fn service(&mut self, now: Instant, key: PeerKey) {
        self.mark_dirty(key);
        let mut events = Vec::new();
        let mut scratch = std::mem::take(&mut self.scratch);
        let (owner, role) = {
            let Some(peer) = self.peer_mut(key) else {
                return;
            };
            while let Some(ev) = peer.pc.poll_event() {
                events.push(ev);
            }
            while let Some(m) = peer.pc.poll_read() {
                scratch.push(m);
            }
            (peer.owner, peer.role)
        };
        for ev in events {
            self.handle_peer_event(now, key, owner, role, ev);
        }
        for TaggedRTCMessage { now: at, message } in scratch.drain(..) {
            match message {
                RTCMessage::RtpPacket(track_id, packet) => {
                    let tk = self
                        .peer_mut(key)
                        .and_then(|p| p.inbound.get(&track_id).copied());
                    if let Some(tk) = tk {
                        self.forward(at, tk, packet);
                    }
                }
                RTCMessage::RtcpPacket(track_id, packets) => {
                    self.handle_rtcp(at, key, role, owner, &track_id, &packets);
                }
                _ => {}
            }
        }
        self.scratch = scratch;
    }

    fn handle_peer_event(
        &mut self,
        now: Instant,
        key: PeerKey,
        owner: ParticipantKey,
        role: PcRole,
        ev: RTCPeerConnectionEvent,
    ) {
        match ev {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(old) = self
                    .peer_mut(key)
                    .map(|p| std::mem::replace(&mut p.state, state))
                else {
                    return;
                };
                self.state_gauge(old).fetch_sub(1, Relaxed);
                self.state_gauge(state).fetch_add(1, Relaxed);
                let id = self.participants.get(&owner).map(|p| p.id.to_string());
                tracing::debug!(participant = ?id, ?role, %state, "peer connection state");
                match state {
                    RTCPeerConnectionState::Connected if role == PcRole::Subscribe => {
                        self.request_keyframes_for(now, owner);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.peer_closed(now, key, &state.to_string());
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if role == PcRole::Publish =>
            {
                self.add_published_track(now, key, owner, init);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if role == PcRole::Publish =>
            {
                if let Some(tk) = self.peer_mut(key).and_then(|p| p.inbound.remove(&track_id)) {
                    self.unpublish(now, tk, true);
                }
            }
            _ => {}
        }
    }

    /// A connection is over: its participant leaves the media plane, and its session is told.
    fn peer_closed(&mut self, now: Instant, key: PeerKey, why: &str) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let (owner, role) = (peer.owner, peer.role);
        let id = self.participants.get(&owner).map(|p| p.id.to_string());
        tracing::info!(participant = ?id, ?role, why, "peer connection ended; removing participant");
        self.notify(
            owner,
            MediaEvent::Failed {
                reason: format!("{role:?} connection {why}").to_lowercase(),
            },
        );
        self.remove_participant(now, owner);
    }

    fn handle_rtcp(
        &mut self,
        now: Instant,
        key: PeerKey,
        role: PcRole,
        owner: ParticipantKey,
        track_id: &str,
        packets: &[Box<dyn rtc::rtcp::Packet>],
    ) {
        match role {
            PcRole::Publish => {
                let Some(tk) = self
                    .peer_mut(key)
                    .and_then(|p| p.inbound.get(track_id).copied())
                else {
                    return;
                };
                for p in packets {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        if let Some(t) = self.tracks.get_mut(&tk) {
                            if Some(sr.ssrc) == t.last_ssrc || sr.ssrc == t.media_ssrc {
                                t.sr = Some((sr.ntp_time, sr.rtp_time, now));
                            }
                        }
                    }
                }
            }
            PcRole::Subscribe => {
                let wants_keyframe = packets.iter().any(|p| {
                    let h = p.header();
                    h.packet_type == PacketType::PayloadSpecificFeedback && matches!(h.count, 1 | 4)
                });
                if !wants_keyframe {
                    return;
                }
                let tk = self
                    .participants
                    .get(&owner)
                    .and_then(|p| p.sub_by_track_id.get(track_id).copied());
                if let Some(tk) = tk {
                    self.resync_from_cache(now, owner, tk);
                    self.request_keyframe(now, tk);
                }
            }
        }
    }

    // ----- publishing ---------------------------------------------------------------------

    fn publish(&mut self, now: Instant, key: ParticipantKey, sdp: String) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let offer = match RTCSessionDescription::offer(sdp) {
            Ok(o) => o,
            Err(e) => {
                return self.notify(
                    key,
                    MediaEvent::Error {
                        code: ErrorCode::BadSdp,
                        message: format!("the publish offer is not valid SDP: {e}"),
                    },
                )
            }
        };
        let pk = match p.publish {
            Some(pk) => pk,
            None => match self.new_peer(now, key, PcRole::Publish) {
                Ok(pk) => {
                    if let Some(p) = self.participants.get_mut(&key) {
                        p.publish = Some(pk);
                    }
                    pk
                }
                Err(e) => {
                    return self.notify(
                        key,
                        MediaEvent::Error {
                            code: ErrorCode::Internal,
                            message: format!("could not create a peer connection: {e}"),
                        },
                    )
                }
            },
        };
        let Some(peer) = self.peer_mut(pk) else {
            return;
        };
        let result = (|| {
            peer.pc.set_remote_description(now, offer)?;
            let answer = peer.pc.create_answer(None)?;
            peer.pc.set_local_description(now, answer.clone())?;
            Ok::<_, rtc::shared::error::Error>(answer.sdp)
        })();
        match result {
            Ok(sdp) => {
                self.notify(key, MediaEvent::Answer { sdp });
                self.trickle_candidates(pk, key, PcRole::Publish);
            }
            Err(e) => self.notify(
                key,
                MediaEvent::Error {
                    code: ErrorCode::BadSdp,
                    message: format!("cannot accept this publish offer: {e}"),
                },
            ),
        }
        self.service(now, pk);
    }

    /// Sends our host candidates once per connection, after its first local description.
    fn trickle_candidates(&mut self, pk: PeerKey, owner: ParticipantKey, role: PcRole) {
        let Some(peer) = self.peer_mut(pk) else {
            return;
        };
        if std::mem::replace(&mut peer.trickled, true) {
            return;
        }
        for addr in self.candidates.clone() {
            if let Ok(init) = peer::host_candidate(addr) {
                self.notify(
                    owner,
                    MediaEvent::Candidate {
                        pc: role,
                        candidate: IceCandidate {
                            candidate: init.candidate,
                            sdp_mid: Some("0".to_owned()),
                            sdp_m_line_index: Some(0),
                            username_fragment: None,
                        },
                    },
                );
            }
        }
    }

    fn add_published_track(
        &mut self,
        now: Instant,
        pk: PeerKey,
        owner: ParticipantKey,
        init: RTCTrackEventInit,
    ) {
        let Some(owner_p) = self.participants.get(&owner) else {
            return;
        };
        let (room, owner_id) = (owner_p.room.clone(), owner_p.id.clone());
        let tk = TrackKey(self.next_track);
        let Some(peer) = self.peers.get_mut(pk.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        if peer.inbound.contains_key(&init.track_id) {
            return;
        }
        let Some(mut receiver) = peer.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let kind = receiver.track().kind();
        let Some(codec) = receiver
            .get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.rtp_codec.clone())
        else {
            tracing::warn!(participant = %owner_id, "published track without a negotiated codec; ignored");
            return;
        };
        self.next_track += 1;
        let kind = media_kind(kind);
        let public_id = format!(
            "{owner_id}-{}{}",
            if kind == MediaKind::Audio { "a" } else { "v" },
            tk.0
        );
        tracing::info!(room = %room, participant = %owner_id, track = %public_id, codec = %codec.mime_type, "track published");
        peer.inbound.insert(init.track_id.clone(), tk);
        let source = TrackSource::Peer {
            peer: pk,
            receiver: init.receiver_id,
            rtc_track_id: init.track_id,
        };
        self.insert_track(
            now, tk, owner, room, public_id, kind, codec, source, init.ssrc,
        );
        if let Some(p) = self.participants.get_mut(&owner) {
            p.published.push(tk);
        }
        self.send_tracks_changed(owner);
    }

    /// Adds a published track and subscribes everyone else in the room to it.
    #[allow(clippy::too_many_arguments)]
    fn insert_track(
        &mut self,
        now: Instant,
        tk: TrackKey,
        owner: ParticipantKey,
        room: RoomName,
        public_id: String,
        kind: MediaKind,
        codec: RTCRtpCodec,
        source: TrackSource,
        media_ssrc: u32,
    ) {
        self.tracks.insert(
            tk,
            PubTrack {
                owner,
                room: room.clone(),
                public_id,
                kind,
                video: VideoCodec::from_mime(&codec.mime_type),
                codec,
                source,
                media_ssrc,
                last_ssrc: None,
                subscribers: Vec::new(),
                taps: Vec::new(),
                gate: KeyframeGate::default(),
                sr: None,
            },
        );
        let others: Vec<ParticipantKey> = self
            .rooms
            .get(&room)
            .map(|m| m.iter().copied().filter(|k| *k != owner).collect())
            .unwrap_or_default();
        for sub in others {
            self.subscribe(sub, tk);
            self.renegotiate(now, sub);
        }
    }

    fn unpublish(&mut self, now: Instant, tk: TrackKey, tell_owner: bool) {
        let Some(track) = self.tracks.remove(&tk) else {
            return;
        };
        tracing::info!(track = %track.public_id, "track unpublished");
        self.keyframes_pending.retain(|k| *k != tk);
        if let TrackSource::Peer {
            peer, rtc_track_id, ..
        } = &track.source
        {
            if let Some(peer) = self.peer_mut(*peer) {
                peer.inbound.remove(rtc_track_id);
            }
        }
        for tap in &track.taps {
            if let Some(list) = self.taps.get_mut(&tap.id) {
                list.retain(|k| *k != tk);
                if list.is_empty() {
                    self.taps.remove(&tap.id);
                    self.outputs.push_back(Output::TapEnded(tap.id));
                }
            }
        }
        if let Some(p) = self.participants.get_mut(&track.owner) {
            p.published.retain(|k| *k != tk);
        }
        if let Some(x) = self.externals.get_mut(&track.owner) {
            x.tracks.retain(|k| *k != tk);
        }
        if tell_owner {
            self.send_tracks_changed(track.owner);
        }
        for sub in track.subscribers {
            let Some(p) = self.participants.get_mut(&sub) else {
                continue;
            };
            let Some(s) = p.subs.remove(&tk) else {
                continue;
            };
            p.sub_by_track_id.remove(&track.public_id);
            let spk = p.subscribe;
            if let Some(peer) = self.peer_mut(spk) {
                if let Err(e) = peer.pc.remove_track(s.sender) {
                    tracing::debug!(error = %e, "remove_track failed");
                }
            }
            self.renegotiate(now, sub);
        }
    }

    fn send_tracks_changed(&mut self, owner: ParticipantKey) {
        let Some(p) = self.participants.get(&owner) else {
            return;
        };
        let tracks = p
            .published
            .iter()
            .filter_map(|tk| self.tracks.get(tk))
            .map(|t| TrackInfo {
                id: t.public_id.clone(),
                kind: t.kind,
                codec: codec_name(&t.codec.mime_type),
            })
            .collect();
        let ev = MediaEvent::TracksChanged { tracks };
        self.outputs.push_back(Output::Event(owner, ev));
    }

    // ----- external participants and players ---------------------------------------------

    fn external_tracks(&mut self, now: Instant, key: ParticipantKey, tracks: Vec<ExternalTrack>) {
        let Some(x) = self.externals.get_mut(&key) else {
            return;
        };
        let old = std::mem::take(&mut x.tracks);
        let room = x.room.clone();
        for tk in old {
            self.unpublish(now, tk, false);
        }
        let mut keys = Vec::with_capacity(tracks.len());
        for t in tracks {
            let tk = TrackKey(self.next_track);
            self.next_track += 1;
            tracing::info!(room = %room, track = %t.public_id, codec = %t.codec.mime_type, "camera track published");
            let source = TrackSource::External {
                cache: GopCache::default(),
            };
            self.insert_track(
                now,
                tk,
                key,
                room.clone(),
                t.public_id,
                t.kind,
                t.codec,
                source,
                0,
            );
            keys.push(tk);
        }
        if let Some(x) = self.externals.get_mut(&key) {
            x.tracks = keys;
        }
    }

    fn owner_by_id(
        &self,
        room: &RoomName,
        id: &ParticipantId,
    ) -> Option<(ParticipantKey, Vec<TrackKey>)> {
        self.participants
            .iter()
            .find(|(_, p)| p.room == *room && p.id == *id)
            .map(|(k, p)| (*k, p.published.clone()))
            .or_else(|| {
                self.externals
                    .iter()
                    .find(|(_, x)| x.room == *room && x.id == *id)
                    .map(|(k, x)| (*k, x.tracks.clone()))
            })
    }

    fn describe(&self, room: &RoomName, id: &ParticipantId) -> Option<Vec<OutputTrack>> {
        let (_, published) = self.owner_by_id(room, id)?;
        let mut next_dynamic = 96u8;
        let mut out = Vec::new();
        for tk in published {
            let Some(t) = self.tracks.get(&tk) else {
                continue;
            };
            let encoding = codec_name(&t.codec.mime_type);
            let payload_type = match encoding.to_ascii_uppercase().as_str() {
                "PCMU" => 0,
                "PCMA" => 8,
                "H264" | "OPUS" | "VP8" => {
                    next_dynamic += 1;
                    next_dynamic - 1
                }
                _ => continue,
            };
            let channels = match t.kind {
                MediaKind::Audio => t.codec.channels.max(1),
                MediaKind::Video => 0,
            };
            out.push(OutputTrack {
                key: tk,
                kind: t.kind,
                encoding,
                payload_type,
                clock_rate: t.codec.clock_rate,
                channels,
                fmtp: (!t.codec.sdp_fmtp_line.is_empty()).then(|| t.codec.sdp_fmtp_line.clone()),
            });
        }
        Some(out)
    }

    fn tap(
        &mut self,
        now: Instant,
        tap: TapId,
        room: &RoomName,
        id: &ParticipantId,
        wanted: &[TrackKey],
    ) {
        let Some((owner, _)) = self.owner_by_id(room, id) else {
            self.outputs.push_back(Output::TapEnded(tap));
            return;
        };
        let mut keys = Vec::new();
        for &tk in wanted {
            let Some(t) = self.tracks.get_mut(&tk) else {
                continue;
            };
            if t.owner != owner || keys.contains(&tk) {
                continue;
            }
            let (seq, ts) = (self.rng.random(), self.rng.random());
            t.taps.push(Tap {
                id: tap,
                rewriter: Rewriter::new(t.codec.clock_rate, seq, ts),
                waiting_keyframe: t.kind == MediaKind::Video,
            });
            keys.push(tk);
        }
        if keys.is_empty() {
            self.outputs.push_back(Output::TapEnded(tap));
            return;
        }
        self.taps.insert(tap, keys.clone());
        for tk in keys {
            self.request_keyframe(now, tk);
        }
    }

    /// Player `tap` lost packets in the shell: its video starts again at a keyframe.
    fn tap_lagged(&mut self, now: Instant, tap: TapId) {
        let keys = self.taps.get(&tap).cloned().unwrap_or_default();
        for tk in keys {
            let Some(t) = self.tracks.get_mut(&tk) else {
                continue;
            };
            if t.kind != MediaKind::Video {
                continue;
            }
            let mut lagged = false;
            for x in t.taps.iter_mut().filter(|x| x.id == tap) {
                lagged |= !std::mem::replace(&mut x.waiting_keyframe, true);
            }
            if lagged {
                self.metrics.dropped_sends.fetch_add(1, Relaxed);
                self.request_keyframe(now, tk);
            }
        }
    }

    /// Gives the cached group of pictures of an external track to every subscriber and player
    /// waiting for a keyframe. Frames before the newest are given timestamps 1 ms apart ending
    /// at the newest one's, so a receiver decodes them at once and shows the present picture
    /// instead of replaying the group at its original pace (which would add its age to the
    /// latency for good).
    fn replay(&mut self, now: Instant, tk: TrackKey) {
        let Engine {
            tracks,
            participants,
            peers,
            dirty,
            metrics,
            early,
            outputs,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&tk) else {
            return;
        };
        let TrackSource::External { cache } = &track.source else {
            return;
        };
        if !cache.replayable() {
            return;
        }
        let tick = (track.codec.clock_rate / 1000).max(1);
        let mut replayed = 0u64;
        for sub in &track.subscribers {
            let Some(p) = participants.get_mut(sub) else {
                continue;
            };
            let Some(s) = p.subs.get_mut(&tk) else {
                continue;
            };
            let Some(pt) = s.pt else {
                continue;
            };
            let Some(peer) = peers
                .get_mut(p.subscribe.0 as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            if !s.waiting_keyframe || peer.state != RTCPeerConnectionState::Connected {
                continue;
            }
            s.waiting_keyframe = false;
            s.last_replay = Some(now);
            let (ssrc, sent) = (s.ssrc, &mut s.sent);
            cache.replay(now, tick, &mut s.rewriter, |pkt, seq, ts| {
                let (marker, payload) = (pkt.header.marker, &pkt.payload);
                if send_rtp(now, peer, ssrc, sent, pt, marker, seq, ts, payload) {
                    replayed += 1;
                    if replayed.is_multiple_of(REPLAY_CHUNK) {
                        early.extend(std::iter::from_fn(|| peer.poll_transmit()));
                    }
                }
                true
            });
            if !peer.dirty {
                peer.dirty = true;
                dirty.push(p.subscribe);
            }
            tracing::debug!(track = %track.public_id, subscriber = %p.id, "cached keyframe replayed");
        }
        for tap in track.taps.iter_mut().filter(|t| t.waiting_keyframe) {
            // The shell hands the group over whole or not at all (then reports the player
            // lagging, and it starts at the next live keyframe).
            tap.waiting_keyframe = false;
            let mut group = Vec::with_capacity(cache.packets.len());
            cache.replay(now, tick, &mut tap.rewriter, |pkt, seq, ts| {
                group.push(PlaybackEvent::Rtp {
                    track: tk,
                    marker: pkt.header.marker,
                    seq,
                    ts,
                    payload: pkt.payload.clone(),
                });
                true
            });
            outputs.push_back(Output::Replay(tap.id, group));
        }
        if replayed > 0 {
            metrics.forwarded_packets.fetch_add(replayed, Relaxed);
        }
    }

    // ----- subscribing --------------------------------------------------------------------

    /// Adds a sender for `tk` to `sub`'s subscribe connection (negotiated by the next offer).
    fn subscribe(&mut self, sub: ParticipantKey, tk: TrackKey) {
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        let Some(owner_id) = owner_id(&self.participants, &self.externals, track.owner) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&sub) else {
            return;
        };
        if p.subs.contains_key(&tk) {
            return;
        }
        let Some(peer) = self
            .peers
            .get_mut(p.subscribe.0 as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        let ssrc = self.rng.random::<u32>();
        let kind = match track.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let local = MediaStreamTrack::new(
            owner_id,
            track.public_id.clone(),
            track.public_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                active: true,
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        let sender = match peer.pc.add_track(local) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(track = %track.public_id, error = %e, "could not add track to subscriber");
                return;
            }
        };
        if let Some(fallback) = peer::audio_fallback(&track.codec) {
            // Offered alone, a G.711 line that the subscriber refuses leaves its connection
            // with no audio codec at all (`rtc` then negotiates nothing for audio, and every
            // later audio track fails). Offering Opus beside it keeps audio negotiable; a
            // subscriber that picks Opus on this line simply does not get this track.
            let id: rtc::rtp_transceiver::RTCRtpTransceiverId = sender.into();
            if let Some(mut t) = peer.pc.rtp_transceiver(id) {
                if let Err(e) = t.set_codec_preferences(fallback) {
                    tracing::debug!(error = %e, "codec preferences not set");
                }
            }
        }
        let first_seq = self.rng.random::<u16>();
        let first_ts = self.rng.random::<u32>();
        p.subs.insert(
            tk,
            Subscription {
                sender,
                ssrc,
                pt: None,
                negotiated: false,
                offered_in: None,
                rewriter: Rewriter::new(track.codec.clock_rate, first_seq, first_ts),
                waiting_keyframe: track.kind == MediaKind::Video,
                last_replay: None,
                sent: Sent::default(),
            },
        );
        p.sub_by_track_id.insert(track.public_id.clone(), tk);
        track.subscribers.push(sub);
    }

    /// Sends a new subscribe offer, or remembers to once the outstanding one is answered.
    fn renegotiate(&mut self, now: Instant, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.awaiting_answer.is_some() {
            p.renegotiate = true;
            return;
        }
        p.renegotiate = false;
        let spk = p.subscribe;
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let tracks: Vec<OfferedTrack> = p
            .subs
            .keys()
            .filter_map(|tk| self.tracks.get(tk))
            .map(|t| OfferedTrack {
                participant: owner_id(&self.participants, &self.externals, t.owner)
                    .unwrap_or_default(),
                track: t.public_id.clone(),
                kind: t.kind,
            })
            .collect();
        let Some(peer) = self.peers.get_mut(spk.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let result = (|| {
            let offer = peer.pc.create_offer(None)?;
            peer.pc.set_local_description(now, offer.clone())?;
            Ok::<_, rtc::shared::error::Error>(offer.sdp)
        })();
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        match result {
            Ok(sdp) => {
                p.revision += 1;
                p.awaiting_answer = Some(p.revision);
                let revision = p.revision;
                for s in p.subs.values_mut().filter(|s| s.offered_in.is_none()) {
                    s.offered_in = Some(revision);
                }
                let ev = MediaEvent::Offer {
                    sdp,
                    revision,
                    tracks,
                };
                self.outputs.push_back(Output::Event(key, ev));
                self.trickle_candidates(spk, key, PcRole::Subscribe);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not create a subscribe offer");
            }
        }
        self.service(now, spk);
    }

    fn subscribe_answer(&mut self, now: Instant, key: ParticipantKey, sdp: String, revision: u64) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.awaiting_answer != Some(revision) {
            tracing::debug!(revision, expected = ?p.awaiting_answer, "stale subscribe answer ignored");
            return;
        }
        let spk = p.subscribe;
        let answer_sdp = sdp.clone();

        let answer = match RTCSessionDescription::answer(sdp) {
            Ok(a) => a,
            Err(e) => {
                return self.notify(
                    key,
                    MediaEvent::Error {
                        code: ErrorCode::BadSdp,
                        message: format!("the subscribe answer is not valid SDP: {e}"),
                    },
                )
            }
        };
        let Some(peer) = self.peers.get_mut(spk.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Err(e) = peer.pc.set_remote_description(now, answer) {
            return self.notify(
                key,
                MediaEvent::Error {
                    code: ErrorCode::BadSdp,
                    message: format!("cannot apply the subscribe answer: {e}"),
                },
            );
        }
        // Resolve payload types for the senders this answer negotiated.
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        p.awaiting_answer = None;
        let mut rejected = Vec::new();
        // Senders added after the answered offer went out wait for the next one.
        let answered =
            |s: &Subscription| !s.negotiated && s.offered_in.is_some_and(|r| r <= revision);
        for (tk, s) in p.subs.iter_mut().filter(|(_, s)| answered(s)) {
            let Some(track) = self.tracks.get(tk) else {
                continue;
            };
            // The answer says what the subscriber takes on this sender's line (`rtc`'s sender
            // parameters list what was offered, accepted or not).
            let tid: rtc::rtp_transceiver::RTCRtpTransceiverId = s.sender.into();
            let mid = peer.pc.rtp_transceiver(tid).and_then(|t| t.mid().clone());
            let answered = mid.and_then(|mid| answered_codecs(&answer_sdp, &mid));
            let codecs = match answered {
                Some(codecs) => codecs,
                None => {
                    let Some(mut sender) = peer.pc.rtp_sender(s.sender) else {
                        continue;
                    };
                    sender.get_parameters().rtp_parameters.codecs.clone()
                }
            };
            s.pt = pick_payload_type(&track.codec, &codecs);
            s.negotiated = true;
            if s.pt.is_none() {
                tracing::warn!(track = %track.public_id, codec = %track.codec.mime_type, "subscriber cannot receive this codec; track not forwarded");
                rejected.push(s.sender);
            }
        }
        // A sender whose codec the subscriber refused has no codecs left: `rtc` cannot put it
        // in the next offer, and would hand its transceiver to the next track of that kind.
        // Stopping it takes it out of both (its m-line stays, rejected with port 0).
        for sender in rejected {
            if let Err(e) = peer.pc.remove_track(sender) {
                tracing::debug!(error = %e, "could not remove a refused sender");
            }
            let id: rtc::rtp_transceiver::RTCRtpTransceiverId = sender.into();
            if let Some(mut t) = peer.pc.rtp_transceiver(id) {
                if let Err(e) = t.stop() {
                    tracing::debug!(error = %e, "could not stop a refused sender");
                }
            }
        }
        let again = p.renegotiate;
        self.service(now, spk);
        // New subscriptions on a connection that is already up can start now. A connection
        // still being set up asks when it connects: a keyframe sent before that would be lost
        // to it and would use up the publisher's request window.
        let connected = self
            .peer_mut(spk)
            .is_some_and(|p| p.state == RTCPeerConnectionState::Connected);
        if connected {
            self.request_keyframes_for(now, key);
        }
        if again {
            self.renegotiate(now, key);
        }
    }

    fn remote_candidate(&mut self, key: ParticipantKey, role: PcRole, c: IceCandidate) {
        if c.candidate.is_empty() {
            return;
        }
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let pk = match role {
            PcRole::Publish => p.publish,
            PcRole::Subscribe => Some(p.subscribe),
        };
        let Some(peer) = pk.and_then(|pk| self.peer_mut(pk)) else {
            return;
        };
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        // ICE-lite learns addresses from the peer's checks; a candidate we cannot use (mDNS
        // names, TCP) is harmless.
        if let Err(e) = peer.pc.add_remote_candidate(init) {
            tracing::debug!(error = %e, "remote candidate not added");
        }
    }

    // ----- forwarding ---------------------------------------------------------------------

    fn forward(&mut self, now: Instant, tk: TrackKey, pkt: rtc::rtp::Packet) {
        let Engine {
            tracks,
            participants,
            peers,
            dirty,
            metrics,
            muted,
            outputs,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&tk) else {
            return;
        };
        if !muted.is_empty() && muted.contains(&(track.owner, track.kind)) {
            return;
        }
        metrics.received_packets.fetch_add(1, Relaxed);
        metrics
            .received_bytes
            .fetch_add(pkt.payload.len() as u64, Relaxed);
        let restarted = track.last_ssrc.is_some_and(|s| s != pkt.header.ssrc);
        track.last_ssrc = Some(pkt.header.ssrc);
        let mut keyframe: Option<bool> = None;
        let mut still_waiting = false;
        let mut forwarded = 0u64;
        for sub in &track.subscribers {
            let Some(p) = participants.get_mut(sub) else {
                continue;
            };
            let Some(s) = p.subs.get_mut(&tk) else {
                continue;
            };
            if restarted {
                s.rewriter.rebase();
                s.waiting_keyframe = track.kind == MediaKind::Video;
            }
            let Some(pt) = s.pt else {
                continue;
            };
            let Some(peer) = peers
                .get_mut(p.subscribe.0 as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            if peer.state != RTCPeerConnectionState::Connected {
                continue;
            }
            if s.waiting_keyframe {
                let k = *keyframe.get_or_insert_with(|| starts_keyframe(track.video, &pkt.payload));
                if !k {
                    still_waiting = true;
                    continue;
                }
                s.waiting_keyframe = false;
                s.rewriter.rebase();
                tracing::debug!(track = %track.public_id, subscriber = %p.id, "keyframe starts the subscription");
            }
            let Some(out) =
                s.rewriter
                    .rewrite(now, pkt.header.sequence_number, pkt.header.timestamp)
            else {
                continue;
            };
            if !send_rtp(
                now,
                peer,
                s.ssrc,
                &mut s.sent,
                pt,
                pkt.header.marker,
                out.seq,
                out.ts,
                &pkt.payload,
            ) {
                continue;
            }
            forwarded += 1;
            if !peer.dirty {
                peer.dirty = true;
                dirty.push(p.subscribe);
            }
        }
        for tap in &mut track.taps {
            if tap.waiting_keyframe {
                let k = *keyframe.get_or_insert_with(|| starts_keyframe(track.video, &pkt.payload));
                if !k {
                    still_waiting = true;
                    continue;
                }
                tap.waiting_keyframe = false;
                tap.rewriter.rebase();
            }
            let Some(out) =
                tap.rewriter
                    .rewrite(now, pkt.header.sequence_number, pkt.header.timestamp)
            else {
                continue;
            };
            // A player that cannot keep up loses its own packets (the shell reports it with
            // `TapLagged`); it resumes cleanly at the next keyframe.
            let ev = PlaybackEvent::Rtp {
                track: tk,
                marker: pkt.header.marker,
                seq: out.seq,
                ts: out.ts,
                payload: pkt.payload.clone(),
            };
            outputs.push_back(Output::Playback(tap.id, ev));
        }
        if keyframe == Some(true) && !still_waiting {
            track.gate.satisfied();
        }
        if forwarded > 0 {
            metrics.forwarded_packets.fetch_add(forwarded, Relaxed);
            metrics
                .forwarded_bytes
                .fetch_add(forwarded * pkt.payload.len() as u64, Relaxed);
        }
    }

    /// Publishers do not always answer a PLI (Chromium ignores one that comes right after a
    /// keyframe it just sent): every second, ask again for each track that a connected,
    /// negotiated subscriber is still waiting on. The gate keeps this to one request per 500 ms.
    fn keyframe_watchdog(&mut self, now: Instant) {
        let mut waiting: Vec<TrackKey> = Vec::new();
        for p in self.participants.values() {
            let connected = self
                .peers
                .get(p.subscribe.0 as usize)
                .and_then(Option::as_ref)
                .is_some_and(|peer| peer.state == RTCPeerConnectionState::Connected);
            if !connected {
                continue;
            }
            for (tk, s) in &p.subs {
                if s.waiting_keyframe && s.pt.is_some() && !waiting.contains(tk) {
                    waiting.push(*tk);
                }
            }
        }
        for (tk, t) in &self.tracks {
            if t.taps.iter().any(|tap| tap.waiting_keyframe) && !waiting.contains(tk) {
                waiting.push(*tk);
            }
        }
        for tk in waiting {
            self.request_keyframe(now, tk);
        }
    }

    // ----- keyframes and reports ----------------------------------------------------------

    fn request_keyframes_for(&mut self, now: Instant, sub: ParticipantKey) {
        let Some(p) = self.participants.get(&sub) else {
            return;
        };
        let wanted: Vec<TrackKey> = p
            .subs
            .iter()
            .filter(|(_, s)| s.waiting_keyframe && s.pt.is_some())
            .map(|(tk, _)| *tk)
            .collect();
        for tk in wanted {
            self.request_keyframe(now, tk);
        }
    }

    /// A subscriber of an external track asked for a keyframe (its decoder lost track): it
    /// gets the cached group again, at most once a second.
    fn resync_from_cache(&mut self, now: Instant, sub: ParticipantKey, tk: TrackKey) {
        let replayable = self.tracks.get(&tk).is_some_and(
            |t| matches!(&t.source, TrackSource::External { cache } if cache.replayable()),
        );
        if !replayable {
            return;
        }
        let Some(s) = self
            .participants
            .get_mut(&sub)
            .and_then(|p| p.subs.get_mut(&tk))
        else {
            return;
        };
        if s.last_replay
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            s.waiting_keyframe = true;
        }
    }

    fn request_keyframe(&mut self, now: Instant, tk: TrackKey) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        if matches!(t.source, TrackSource::External { .. }) {
            // A camera cannot be asked; its cached group of pictures stands in.
            return self.replay(now, tk);
        }
        if t.gate.request(now) {
            self.send_pli(now, tk);
        } else if !self.keyframes_pending.contains(&tk) {
            self.keyframes_pending.push(tk);
        }
    }

    fn send_pli(&mut self, now: Instant, tk: TrackKey) {
        let Some(t) = self.tracks.get(&tk) else {
            return;
        };
        let TrackSource::Peer { peer, receiver, .. } = &t.source else {
            return;
        };
        let (pk, receiver) = (*peer, *receiver);
        let media_ssrc = t.last_ssrc.unwrap_or(t.media_ssrc);
        let Some(peer) = self.peer_mut(pk) else {
            return;
        };
        let Some(mut r) = peer.pc.rtp_receiver(receiver) else {
            return;
        };
        // Without a=rtcp-rsize (which `rtc` does not negotiate) RTCP must be compound and start
        // with a report (RFC 3550 §6.1); Chromium drops a bare PLI.
        let rr = ReceiverReport {
            ssrc: FEEDBACK_SSRC,
            reports: vec![],
            profile_extensions: Bytes::new(),
        };
        let pli = PictureLossIndication {
            sender_ssrc: FEEDBACK_SSRC,
            media_ssrc,
        };
        if let Err(e) = r.write_rtcp(now, vec![Box::new(rr), Box::new(pli)]) {
            tracing::debug!(error = %e, "PLI not sent");
            return;
        }
        self.metrics.keyframe_requests.fetch_add(1, Relaxed);
        tracing::debug!(media_ssrc, "keyframe requested (PLI)");
        self.mark_dirty(pk);
    }

    /// Sender reports for every subscription, translated from the publisher's latest report:
    /// the same NTP↔RTP relation, moved by the subscription's timestamp offset, so that
    /// receivers line audio and video up as the publisher captured them (RFC 3550 §6.4.1).
    fn send_sender_reports(&mut self, now: Instant) {
        let Engine {
            tracks,
            participants,
            peers,
            dirty,
            outputs,
            ..
        } = self;
        for (tk, track) in tracks.iter() {
            let Some((ntp, rtp, at)) = track.sr else {
                continue;
            };
            let elapsed = now.saturating_duration_since(at);
            // NTP is 32.32 fixed point seconds.
            let ntp_now = ntp.wrapping_add((elapsed.as_secs_f64() * 4_294_967_296.0) as u64);
            let rtp_now =
                rtp.wrapping_add((elapsed.as_secs_f64() * track.codec.clock_rate as f64) as u32);
            for tap in track.taps.iter().filter(|t| t.rewriter.started()) {
                let ev = PlaybackEvent::SenderReport {
                    track: *tk,
                    ntp: ntp_now,
                    rtp: tap.rewriter.map_ts(rtp_now),
                };
                outputs.push_back(Output::Playback(tap.id, ev));
            }
            for sub in &track.subscribers {
                let Some(p) = participants.get_mut(sub) else {
                    continue;
                };
                let Some(s) = p.subs.get(tk) else {
                    continue;
                };
                if !s.rewriter.started() {
                    continue;
                }
                let Some(peer) = peers
                    .get_mut(p.subscribe.0 as usize)
                    .and_then(Option::as_mut)
                else {
                    continue;
                };
                if peer.state != RTCPeerConnectionState::Connected {
                    continue;
                }
                let sr = SenderReport {
                    ssrc: s.ssrc,
                    ntp_time: ntp_now,
                    rtp_time: s.rewriter.map_ts(rtp_now),
                    packet_count: s.sent.packets,
                    octet_count: s.sent.octets,
                    reports: vec![],
                    profile_extensions: Bytes::new(),
                };
                if let Some(mut sender) = peer.pc.rtp_sender(s.sender) {
                    if sender.write_rtcp(now, vec![Box::new(sr)]).is_ok() && !peer.dirty {
                        peer.dirty = true;
                        dirty.push(p.subscribe);
                    }
                }
            }
        }
    }
}

/// A DTLS record of content type alert (21) from epoch 1 or later, i.e. encrypted after the
/// handshake: close_notify or a fatal error, either way the end of the connection
/// (RFC 6347 §4.1: type, version, epoch, sequence number, length; 13 bytes of header).
fn is_encrypted_dtls_alert(d: &[u8]) -> bool {
    d.len() >= 13 && d[0] == 21 && d[1] == 254 && u16::from_be_bytes([d[3], d[4]]) >= 1
}

/// The codecs an answer accepts on the m-line `mid` (none when it refuses the line with port
/// 0), or `None` when the answer has no such line. Subscribers may refuse codecs the server
/// offers (a client without G.711, say), and `rtc` does not tell a refused sender from an
/// accepted one.
fn answered_codecs(
    sdp: &str,
    mid: &str,
) -> Option<Vec<rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters>> {
    let section = sdp.split("\nm=").skip(1).find(|sec| {
        sec.lines()
            .any(|l| l.trim_end().strip_prefix("a=mid:") == Some(mid))
    })?;
    let mut head = section.split_whitespace();
    let kind = head.next().unwrap_or_default();
    if head.next() == Some("0") {
        return Some(Vec::new());
    }
    let attr = |name: &'static str| {
        section.lines().filter_map(move |l| {
            let (pt, value) = l.trim_end().strip_prefix(name)?.split_once(' ')?;
            Some((pt.parse::<u8>().ok()?, value.trim()))
        })
    };
    let codecs = attr("a=rtpmap:")
        .map(|(pt, map)| {
            let mut parts = map.split('/');
            let name = parts.next().unwrap_or_default();
            let clock_rate = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let fmtp = attr("a=fmtp:")
                .find(|(p, _)| *p == pt)
                .map(|(_, f)| f.to_owned())
                .unwrap_or_default();
            rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: format!("{kind}/{name}"),
                    clock_rate,
                    channels,
                    sdp_fmtp_line: fmtp,
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            }
        })
        .collect();
    Some(codecs)
}

/// Writes one packet to a subscriber's connection (which encrypts it); false if it could not.
#[allow(clippy::too_many_arguments)]
fn send_rtp(
    now: Instant,
    peer: &mut Peer,
    ssrc: u32,
    sent: &mut Sent,
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    payload: &Bytes,
) -> bool {
    let packet = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            padding: false,
            extension: false,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload: payload.clone(),
    };
    let len = payload.len() as u32;
    // Straight into the connection's pipeline (interceptors, SRTP) rather than through
    // `RTCRtpSender::write_rtp`, which rebuilds the sender's parameters (several allocations)
    // and copies the track id on every packet only to check what the engine already knows: the
    // SSRC is this subscription's own and the payload type was negotiated for it.
    let msg = TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), packet),
    };
    if let Err(e) = peer.pc.handle_write(msg) {
        tracing::trace!(error = %e, "forward failed");
        return false;
    }
    sent.packets = sent.packets.wrapping_add(1);
    sent.octets = sent.octets.wrapping_add(len);
    true
}

fn owner_id(
    participants: &HashMap<ParticipantKey, Participant>,
    externals: &HashMap<ParticipantKey, External>,
    owner: ParticipantKey,
) -> Option<String> {
    participants
        .get(&owner)
        .map(|p| p.id.to_string())
        .or_else(|| externals.get(&owner).map(|x| x.id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config() -> EngineConfig {
        EngineConfig {
            candidates: vec!["127.0.0.1:9".parse().unwrap()],
            seed: 7,
        }
    }
    use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;

    fn codec(mime: &str, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: fmtp.into(),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
        }
    }

    #[test]
    fn payload_type_follows_codec_and_profile() {
        let offered = vec![
            codec("video/VP8", "", 96),
            codec(
                "video/H264",
                "packetization-mode=0;profile-level-id=42e01f",
                100,
            ),
            codec(
                "video/H264",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
                104,
            ),
            codec(
                "video/H264",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                102,
            ),
        ];
        let publisher = codec(
            "video/h264",
            "packetization-mode=1;profile-level-id=42E01F",
            127,
        )
        .rtp_codec;
        assert_eq!(pick_payload_type(&publisher, &offered), Some(102));
        let main = codec(
            "video/H264",
            "packetization-mode=1;profile-level-id=4d001f",
            1,
        )
        .rtp_codec;
        assert_eq!(
            pick_payload_type(&main, &offered),
            Some(104),
            "another mode-1 profile rather than nothing"
        );
        let vp8 = codec("video/VP8", "", 120).rtp_codec;
        assert_eq!(pick_payload_type(&vp8, &offered), Some(96));
        let av1 = codec("video/AV1", "", 45).rtp_codec;
        assert_eq!(pick_payload_type(&av1, &offered), None);
    }

    #[test]
    fn a_replayed_group_ends_at_the_present_picture() {
        let mut c = GopCache::default();
        for (i, ts) in [0u32, 0, 3000, 3000, 6000, 6000].into_iter().enumerate() {
            let pkt = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    sequence_number: 500 + i as u16,
                    timestamp: ts,
                    ..Default::default()
                },
                payload: Bytes::from_static(b"x"),
            };
            c.push(&pkt, i == 0);
        }
        let now = Instant::now();
        let mut r = Rewriter::new(90_000, 100, 1000);
        let mut out = vec![];
        c.replay(now, 90, &mut r, |_, seq, ts| {
            out.push((seq, ts));
            true
        });
        assert_eq!(
            out,
            [
                (100, 6820),
                (101, 6820),
                (102, 6910),
                (103, 6910),
                (104, 7000),
                (105, 7000)
            ],
            "continuous sequence numbers; frames 1 ms apart ending at the newest one's real time"
        );
        // Live packets continue from there with the real mapping.
        assert_eq!(
            r.rewrite(now, 506, 9000),
            Some(crate::media::rewrite::Rewritten {
                seq: 106,
                ts: 10_000
            })
        );
        let mut n = 0;
        c.replay(now, 90, &mut Rewriter::new(90_000, 0, 0), |_, _, _| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2, "emit can stop the replay");
    }

    #[test]
    fn answers_that_refuse_a_codec_are_seen() {
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n\
            m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:2\r\n";
        // Whether the subscriber takes `mime` on line `mid`, as the engine decides it.
        let answer_accepts = |answer: &str, mid: &str, mime: &str| {
            let fmtp = "packetization-mode=1;profile-level-id=42e01f";
            answered_codecs(answer, mid).is_none_or(|codecs| {
                pick_payload_type(&codec(mime, fmtp, 0).rtp_codec, &codecs).is_some()
            })
        };
        assert!(answer_accepts(answer, "0", "video/H264"));
        assert!(answer_accepts(answer, "1", "audio/opus"));
        assert!(
            !answer_accepts(answer, "1", "audio/PCMU"),
            "opus only on that line"
        );
        assert!(!answer_accepts(answer, "2", "audio/PCMU"), "port 0 refuses");
        assert!(
            answer_accepts(answer, "9", "audio/PCMU"),
            "unknown mid: not judged here"
        );
        let video = answered_codecs(answer, "0").unwrap();
        assert_eq!(video[0].payload_type, 102);
        assert!(video[0].rtp_codec.sdp_fmtp_line.contains("42e01f"));
        assert_eq!(
            pick_payload_type(
                &codec(
                    "video/H264",
                    "packetization-mode=1;profile-level-id=42e01f",
                    1
                )
                .rtp_codec,
                &video
            ),
            Some(102),
            "the answer's payload type"
        );
    }

    #[test]
    fn gop_cache_starts_at_keyframes_and_gives_up_when_too_long() {
        let pkt = |len: usize| rtc::rtp::Packet {
            header: Default::default(),
            payload: Bytes::from(vec![0u8; len]),
        };
        let mut c = GopCache::default();
        c.push(&pkt(100), false);
        assert!(!c.replayable(), "nothing before the first keyframe");
        c.push(&pkt(100), true);
        c.push(&pkt(100), false);
        assert!(c.replayable());
        assert_eq!(c.packets.len(), 2);
        let mut second_slice = pkt(100);
        second_slice.header.timestamp = 3000;
        c.push(&second_slice, true);
        assert_eq!(c.packets.len(), 1, "a keyframe starts a new group");
        c.push(&second_slice, true);
        assert_eq!(
            c.packets.len(),
            2,
            "another slice of the same keyframe does not"
        );
        c.push(&pkt(GOP_CACHE_BYTES), false);
        assert!(!c.replayable(), "a group over the limit is dropped");
        c.push(&pkt(100), false);
        assert!(!c.replayable(), "and stays dropped until the next keyframe");
        c.push(&pkt(100), true);
        assert!(c.replayable());
    }

    #[test]
    fn dtls_alerts_after_the_handshake() {
        // content type 21, DTLS 1.2 (254, 253), epoch 1, sequence, length 26.
        let close = [21, 254, 253, 0, 1, 0, 0, 0, 0, 0, 3, 0, 26];
        assert!(is_encrypted_dtls_alert(&close));
        let mut plain = close;
        plain[4] = 0; // epoch 0: a handshake-time alert, not ours to act on
        assert!(!is_encrypted_dtls_alert(&plain));
        let mut app_data = close;
        app_data[0] = 23;
        assert!(!is_encrypted_dtls_alert(&app_data));
        assert!(!is_encrypted_dtls_alert(&close[..12]));
        // An SRTP packet (first byte 0x80..) never matches.
        assert!(!is_encrypted_dtls_alert(&[0x80; 20]));
    }

    #[test]
    fn garbage_datagrams_are_counted_not_fatal() {
        let metrics = Arc::new(Metrics::default());
        let mut e = Engine::new(test_config(), metrics.clone());
        let now = Instant::now();
        let local = "127.0.0.1:9".parse().unwrap();
        let from = "127.0.0.1:1234".parse().unwrap();
        for d in [
            &[][..],
            &[0u8; 1][..],
            &[0x80; 200][..],
            &[22, 254, 253][..],
        ] {
            e.handle_datagram(now, local, from, d);
        }
        assert_eq!(metrics.dropped_datagrams.load(Relaxed), 4);
        assert!(
            matches!(e.poll_output(), Output::Timeout(_)),
            "nothing to send"
        );
    }

    #[test]
    fn join_and_leave_in_any_order_clean_up() {
        let metrics = Arc::new(Metrics::default());
        let mut e = Engine::new(test_config(), metrics.clone());
        let now = Instant::now();
        let room = RoomName::parse("r").unwrap();
        for i in 0..3 {
            e.handle_command(
                now,
                Command::Join {
                    key: ParticipantKey(i),
                    room: room.clone(),
                    id: ParticipantId::parse(&format!("p{i}")).unwrap(),
                },
            );
        }
        assert_eq!(e.participant_count(), 3);
        assert_eq!(e.peer_count(), 3);
        e.handle_command(
            now,
            Command::Leave {
                key: ParticipantKey(1),
            },
        );
        e.handle_command(
            now,
            Command::Leave {
                key: ParticipantKey(1),
            },
        );
        e.handle_command(
            now,
            Command::Leave {
                key: ParticipantKey(0),
            },
        );
        e.handle_command(
            now,
            Command::Publish {
                key: ParticipantKey(0),
                sdp: "v=0".into(),
            },
        );
        e.handle_command(
            now,
            Command::Publish {
                key: ParticipantKey(2),
                sdp: "not sdp at all".into(),
            },
        );
        let error = std::iter::from_fn(|| match e.poll_output() {
            Output::Timeout(_) => None,
            o => Some(o),
        })
        .find_map(|o| match o {
            Output::Event(ParticipantKey(2), MediaEvent::Error { code, .. }) => Some(code),
            _ => None,
        });
        assert_eq!(error, Some(ErrorCode::BadSdp), "participant 2 is told");
        e.handle_command(
            now,
            Command::Leave {
                key: ParticipantKey(2),
            },
        );
        assert_eq!(e.participant_count(), 0);
        assert_eq!(e.peer_count(), 0);
        assert!(e.rooms.is_empty());
        assert!(e.demux.is_empty());
    }
}
