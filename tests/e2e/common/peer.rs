//! A scripted confab participant: signaling client plus the two webrtc-rs peer connections of
//! docs/protocol.md (publish: client offers; subscribe: server offers), a synthetic media
//! source and a verifying receiver.
//!
//! Everything a peer observes goes into a [`PeerState`]; tests wait on predicates over it with
//! [`Peer::wait_until`], which wakes on every state change (no polling sleeps).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::Track;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
};
use webrtc::rtp_transceiver::RtpSender;

use super::keyframe::{is_keyframe_request, with_keyframe_requests};
use super::media::{
    self, audio_payload, check_audio, Assembled, DecodeReport, H264Assembler, LiveEncoder,
    ReorderBuffer, VideoDecoder, VideoSource,
};
use super::signaling::{
    CandidateInit, ClientMsg, Incoming, OfferedTrack, ParticipantInfo, PcRole, ServerMsg,
    SignalConn, SignalRx, SignalTx,
};

/// How many audio payloads per remote participant [`PeerState::audio_capture`] keeps (20 s).
pub const AUDIO_CAPTURE_PACKETS: usize = 1000;

/// Payload types this client offers on its publish connection.
pub const H264_PT: u8 = 102;
pub const OPUS_PT: u8 = 111;
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// How a peer behaves.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub room: String,
    pub name: String,
    /// Identifies this peer's media (burnt into the video pattern and the audio payloads).
    pub tag: u16,
    /// Publish video + audio right after joining.
    pub publish: bool,
    /// Hold each subscribe answer back this long (a slow client), so that server-side changes
    /// pile up while an offer is outstanding.
    pub answer_delay: Option<Duration>,
    pub video: VideoMode,
    /// Join credentials for a protected room.
    pub password: Option<String>,
    pub token: Option<String>,
    /// Put received video packets back in order, waiting this long for a missing one (what a
    /// browser's jitter buffer does); `None`: take them as they come.
    pub jitter_buffer: Option<Duration>,
    /// ICE over TCP only: no UDP socket at all, only active ICE-TCP candidates (RFC 6544)
    /// that connect to the server's passive one.
    pub tcp_only: bool,
    /// Connect the server's TCP candidates through this address instead (a proxy the test
    /// controls): every TCP candidate the server sends is rewritten to it.
    pub tcp_via: Option<std::net::SocketAddr>,
    /// Publish the video as three simulcast layers ([`SIMULCAST`]), each encoded live.
    pub simulcast: bool,
}

/// A simulcast publisher's layers: rid, the bitrate its encoder aims at, and the rows of fresh
/// noise in its pictures (what makes it spend about that: openh264 does not reach a rate the
/// picture does not need). The pictures are all the pattern's 320x240 (what the server does
/// with a layer does not depend on its size); the bitrates differ about as a browser's 180p,
/// 360p and 720p layers do.
pub const SIMULCAST: [(&str, u32, usize); 3] =
    [("q", 60_000, 0), ("h", 200_000, 3), ("f", 600_000, 16)];

/// How a publisher produces video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoMode {
    /// Encode live; IDRs only at the start and when a PLI/FIR arrives (like a browser). A
    /// subscriber only sees a picture if the server gets it a keyframe.
    Live,
    /// Replay a shared pre-encoded loop with an IDR every second (cheap; for many publishers).
    Looped,
}

impl PeerConfig {
    pub fn new(room: &str, name: &str, tag: u16) -> PeerConfig {
        PeerConfig {
            room: room.to_string(),
            name: name.to_string(),
            tag,
            publish: true,
            answer_delay: None,
            video: VideoMode::Live,
            password: None,
            token: None,
            jitter_buffer: None,
            tcp_only: false,
            tcp_via: None,
            simulcast: false,
        }
    }

    /// Video as three simulcast layers (see [`SIMULCAST`]).
    pub fn simulcast(mut self) -> PeerConfig {
        self.simulcast = true;
        self
    }

    /// ICE over TCP only (see [`PeerConfig::tcp_only`]).
    pub fn tcp_only(mut self) -> PeerConfig {
        self.tcp_only = true;
        self
    }

    /// TCP only, through `proxy` (see [`PeerConfig::tcp_via`]).
    pub fn tcp_via(mut self, proxy: std::net::SocketAddr) -> PeerConfig {
        self.tcp_only = true;
        self.tcp_via = Some(proxy);
        self
    }

    pub fn token(mut self, token: &str) -> PeerConfig {
        self.token = Some(token.to_string());
        self
    }

    pub fn jitter_buffer(mut self, hold: Duration) -> PeerConfig {
        self.jitter_buffer = Some(hold);
        self
    }

    pub fn subscriber_only(mut self) -> PeerConfig {
        self.publish = false;
        self
    }

    pub fn answer_delay(mut self, d: Duration) -> PeerConfig {
        self.answer_delay = Some(d);
        self
    }

    pub fn video(mut self, mode: VideoMode) -> PeerConfig {
        self.video = mode;
        self
    }
}

/// Media received from one remote participant (keyed by the msid stream id of its tracks).
#[derive(Debug, Clone, Default)]
pub struct RemoteStats {
    pub video_tracks: u32,
    pub audio_tracks: u32,
    pub video_packets: u64,
    /// Decoded frames whose pixels match the pattern.
    pub frames_good: u64,
    /// Decoded frames whose pixels do not.
    pub frames_bad: u64,
    /// Frames skipped while waiting for an IDR.
    pub frames_skipped: u64,
    /// Frames lost to sequence gaps or depacketization errors.
    pub frames_dropped: u64,
    pub decode_errors: u64,
    /// Distinct frame counters seen in good frames (the square moved).
    pub counters_seen: BTreeSet<u16>,
    /// Publisher tags seen in good frames.
    pub video_tags: BTreeSet<u16>,
    pub audio_packets: u64,
    pub audio_bad: u64,
    pub audio_tags: BTreeSet<u16>,
    pub last_problem: Option<String>,
    /// Every decoded picture, whether or not it shows our pattern (media from a camera, such
    /// as ffmpeg's testsrc, never does): `frames_good + frames_bad`.
    pub frames_decoded: u64,
    /// The size of the last decoded picture.
    pub decoded_size: Option<(usize, usize)>,
    /// When the first picture was decoded.
    pub first_decoded_at: Option<Instant>,
    /// When the first video RTP packet arrived.
    pub first_video_packet_at: Option<Instant>,
    /// Why the last frame counted in `frames_dropped` was dropped, with the number of
    /// pictures decoded before it (`last_problem` is overwritten by later decode results).
    pub last_drop: Option<(u64, String)>,
    /// Every audio RTP packet with a payload, fake (ours) or real (a camera's Opus).
    pub audio_rtp_packets: u64,
}

impl RemoteStats {
    fn apply(&mut self, report: DecodeReport) {
        if matches!(report, DecodeReport::Good(_) | DecodeReport::Bad(_)) {
            self.frames_decoded += 1;
            self.first_decoded_at.get_or_insert_with(Instant::now);
        }
        match report {
            DecodeReport::Good(info) => {
                self.frames_good += 1;
                self.counters_seen.insert(info.counter);
                self.video_tags.insert(info.tag);
                self.decoded_size = Some((media::WIDTH, media::HEIGHT));
            }
            DecodeReport::Bad(why) => {
                self.frames_bad += 1;
                if let Some(size) = foreign_size(&why) {
                    self.decoded_size = Some(size);
                }
                self.last_problem = Some(why);
            }
            DecodeReport::Skipped => self.frames_skipped += 1,
            DecodeReport::Error(why) => {
                self.decode_errors += 1;
                self.last_problem = Some(format!("decode error: {why}"));
            }
        }
    }
}

/// The picture size in the pattern check's complaint about a picture of the wrong size
/// (`frame is 640x360, expected 320x240`), which is how a camera's picture fails it.
fn foreign_size(why: &str) -> Option<(usize, usize)> {
    let (w, h) = why
        .strip_prefix("frame is ")?
        .split(',')
        .next()?
        .split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// A subscribe offer as received.
#[derive(Debug, Clone)]
pub struct OfferRecord {
    pub revision: u64,
    pub tracks: Vec<OfferedTrack>,
    /// Stream ids (`a=msid`) of m-sections that actually send (port ≠ 0, sendonly/sendrecv).
    pub active_streams: BTreeSet<String>,
    pub sdp: String,
    pub at: Instant,
}

/// A remote track as `on_track` reported it.
#[derive(Debug, Clone)]
pub struct TrackRecord {
    pub track_id: String,
    pub stream_id: String,
    pub kind: RtpCodecKind,
}

/// Everything a peer has observed.
#[derive(Debug, Default)]
pub struct PeerState {
    pub id: Option<String>,
    pub join_error: Option<(String, String)>,
    /// The others currently in the room.
    pub participants: BTreeMap<String, ParticipantInfo>,
    /// This participant as the server describes it (from `participant_updated` about us).
    pub me: Option<ParticipantInfo>,
    /// `participant_joined` ids in arrival order.
    pub joined_events: Vec<String>,
    /// `participant_left` ids with arrival time.
    pub left_events: Vec<(String, Instant)>,
    /// Every server message except candidates, in order.
    pub messages: Vec<ServerMsg>,
    pub candidates_received: BTreeMap<String, u32>,
    pub offers: Vec<OfferRecord>,
    /// Revisions answered, in order.
    pub answered: Vec<u64>,
    pub publish_answers: u32,
    /// `error` messages from the server: (code, message).
    pub server_errors: Vec<(String, String)>,
    /// Protocol violations and local failures noticed by this client. Tests assert it empty.
    pub problems: Vec<String>,
    pub publish_pc: Option<RTCPeerConnectionState>,
    pub subscribe_pc: Option<RTCPeerConnectionState>,
    pub tracks: Vec<TrackRecord>,
    /// Track id → participant, from the `tracks` lists of offers.
    pub track_owners: BTreeMap<String, String>,
    pub remote: BTreeMap<String, RemoteStats>,
    /// Per remote participant: when each picture that passed the pattern check was decoded,
    /// with its frame counter (for latency measurements against the sender's clock).
    pub good_frame_log: BTreeMap<String, Vec<(Instant, u16)>>,
    /// Per remote participant: the payloads of its first [`AUDIO_CAPTURE_PACKETS`] audio
    /// packets, in arrival order (to decode a camera's real Opus).
    pub audio_capture: BTreeMap<String, Vec<bytes::Bytes>>,
    pub bye: Option<String>,
    /// Cluster mode: the signaling URL a `redirect` named, before `joined`.
    pub redirect: Option<String>,
    /// Set once the socket is gone: the close frame's (code, reason), if any.
    pub ws_closed: Option<Option<(u16, String)>>,
    pub sent_video_frames: u64,
    /// When each picture was handed to the video track, with its frame counter (for latency
    /// measurements: the counter repeats every `media::LOOP_FRAMES` pictures).
    pub sent_frame_log: Vec<(Instant, u16)>,
    pub sent_keyframes: u64,
    pub sent_audio_packets: u64,
    pub send_errors: u64,
    /// PLI/FIR packets that reached our publisher.
    pub keyframe_requests: u64,
    /// `PeerConfig::jitter_buffer`, for the track readers.
    pub jitter_buffer: Option<Duration>,
}

impl PeerState {
    pub fn remote(&self, id: &str) -> RemoteStats {
        self.remote.get(id).cloned().unwrap_or_default()
    }

    fn remote_mut(&mut self, id: &str) -> &mut RemoteStats {
        self.remote.entry(id.to_string()).or_default()
    }

    pub fn latest_offer(&self) -> Option<&OfferRecord> {
        self.offers.last()
    }

    /// True once the newest offer has been answered.
    pub fn subscribe_settled(&self) -> bool {
        match self.offers.last() {
            Some(o) => self.answered.last() == Some(&o.revision),
            None => true,
        }
    }

    /// At least `frames` decoded pictures of any content and `audio` audio packets of any
    /// payload from `id` (a camera, whose media is not our pattern).
    pub fn decoding_from(&self, id: &str, frames: u64, audio: u64) -> bool {
        self.remote
            .get(id)
            .is_some_and(|r| r.frames_decoded >= frames && r.audio_rtp_packets >= audio)
    }

    /// At least `frames` good video frames and `audio` intact audio packets from `id`.
    pub fn receiving_from(&self, id: &str, frames: u64, audio: u64) -> bool {
        self.remote
            .get(id)
            .is_some_and(|r| r.frames_good >= frames && r.audio_packets >= audio)
    }

    pub fn has_left(&self, id: &str) -> bool {
        self.left_events.iter().any(|(l, _)| l == id)
    }

    /// A compact description for failure messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "id={:?} participants={:?} offers={:?} answered={:?} pub_pc={:?} sub_pc={:?} sent(video={}, keyframes={}, audio={}, errors={}) keyframe_requests={} ws_closed={:?} bye={:?}\n",
            self.id,
            self.participants.keys().collect::<Vec<_>>(),
            self.offers
                .iter()
                .map(|o| (o.revision, o.tracks.len()))
                .collect::<Vec<_>>(),
            self.answered,
            self.publish_pc,
            self.subscribe_pc,
            self.sent_video_frames,
            self.sent_keyframes,
            self.sent_audio_packets,
            self.send_errors,
            self.keyframe_requests,
            self.ws_closed,
            self.bye,
        );
        for (id, r) in &self.remote {
            s += &format!(
                "  from {id}: tracks(v={}, a={}) video_pkts={} decoded={} size={:?} good={} bad={} skipped={} dropped={} dec_err={} tags={:?} counters={} audio={} audio_bad={} audio_rtp={} audio_tags={:?} last_problem={:?}\n",
                r.video_tracks,
                r.audio_tracks,
                r.video_packets,
                r.frames_decoded,
                r.decoded_size,
                r.frames_good,
                r.frames_bad,
                r.frames_skipped,
                r.frames_dropped,
                r.decode_errors,
                r.video_tags,
                r.counters_seen.len(),
                r.audio_packets,
                r.audio_bad,
                r.audio_rtp_packets,
                r.audio_tags,
                r.last_problem,
            );
        }
        if !self.server_errors.is_empty() {
            s += &format!("  server errors: {:?}\n", self.server_errors);
        }
        if !self.problems.is_empty() {
            s += &format!("  problems: {:?}\n", self.problems);
        }
        s
    }
}

/// State plus a change signal; shared by the driver, the PC handlers and the media tasks.
pub struct Shared {
    state: Mutex<PeerState>,
    changed: watch::Sender<u64>,
    /// Every server message except candidates, as they arrive.
    events: broadcast::Sender<ServerMsg>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    publish_pc: Mutex<Option<Arc<dyn PeerConnection>>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(PeerState::default()),
            changed: watch::channel(0).0,
            events: broadcast::channel(1024).0,
            tasks: Mutex::new(Vec::new()),
            publish_pc: Mutex::new(None),
        })
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut PeerState) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        r
    }

    pub fn read<R>(&self, f: impl FnOnce(&PeerState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    fn problem(&self, p: impl Into<String>) {
        let p = p.into();
        self.update(|s| s.problems.push(p));
    }

    fn track_task(&self, h: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    /// Waits until `pred` holds; on timeout the error carries the state summary.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&PeerState) -> bool,
    ) -> Result<()> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            rx.borrow_and_update();
            if self.read(&pred) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let summary = self.read(|s| s.summary());
                bail!("timed out after {within:?} waiting for {what}; state:\n{summary}");
            }
        }
    }
}

/// Holds back locally gathered candidates until the description they belong to has been
/// sent, so the server never sees a candidate before its offer/answer.
struct CandidateGate {
    role: PcRole,
    signal: SignalTx,
    inner: Mutex<(bool, Vec<CandidateInit>)>,
}

impl CandidateGate {
    fn new(role: PcRole, signal: SignalTx) -> Arc<CandidateGate> {
        Arc::new(CandidateGate {
            role,
            signal,
            inner: Mutex::new((false, Vec::new())),
        })
    }

    fn push(&self, c: CandidateInit) {
        let mut inner = self.inner.lock().unwrap();
        if inner.0 {
            let _ = self.signal.send(&ClientMsg::Candidate {
                pc: self.role,
                candidate: c,
            });
        } else {
            inner.1.push(c);
        }
    }

    fn open(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.0 {
            return;
        }
        inner.0 = true;
        for c in inner.1.drain(..) {
            let _ = self.signal.send(&ClientMsg::Candidate {
                pc: self.role,
                candidate: c,
            });
        }
    }
}

struct PcHandler {
    role: PcRole,
    shared: Arc<Shared>,
    gate: Arc<CandidateGate>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PcHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.gate.push(CandidateInit {
                candidate: init.candidate,
                sdp_mid: init.sdp_mid,
                sdp_mline_index: init.sdp_mline_index,
                username_fragment: init.username_fragment,
            }),
            Err(e) => self
                .shared
                .problem(format!("{:?}: local candidate to_json: {e}", self.role)),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            // end of candidates
            self.gate.push(CandidateInit::default());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let role = self.role;
        self.shared.update(|s| match role {
            PcRole::Publish => s.publish_pc = Some(state),
            PcRole::Subscribe => s.subscribe_pc = Some(state),
        });
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if self.role != PcRole::Subscribe {
            self.shared
                .problem("on_track fired on the publish connection (it is sendonly)");
        }
        let shared = self.shared.clone();
        let h = tokio::spawn(read_remote_track(track, shared));
        self.shared.track_task(h);
    }
}

fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback: vec![RTCPFeedback {
            typ: "ccm".into(),
            parameter: "fir".into(),
        }],
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A TCP candidate line with its address and port replaced by `via` (other lines as they are).
fn via_proxy(line: &str, via: std::net::SocketAddr) -> String {
    let mut f: Vec<String> = line.split(' ').map(str::to_owned).collect();
    if f.get(2).is_some_and(|p| p.eq_ignore_ascii_case("tcp")) && f.len() > 5 {
        f[4] = via.ip().to_string();
        f[5] = via.port().to_string();
    }
    f.join(" ")
}

/// A webrtc-rs peer connection with H.264 + Opus, bound to 127.0.0.1.
pub async fn build_pc(
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>> {
    build_pc_for(handler, false).await
}

/// [`build_pc`], or with `tcp_only` a connection that has no UDP socket and reaches peers by
/// ICE-TCP only.
pub async fn build_pc_for(
    handler: Arc<dyn PeerConnectionEventHandler>,
    tcp_only: bool,
) -> Result<Arc<dyn PeerConnection>> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: h264_codec(),
            payload_type: H264_PT,
        },
        RtpCodecKind::Video,
    )?;
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
    let registry = with_keyframe_requests(registry);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler);
    let pc = if tcp_only {
        pc.with_tcp_addrs(vec!["127.0.0.1:0".to_string()])
    } else {
        pc.with_udp_addrs(vec!["127.0.0.1:0".to_string()])
    };
    let pc = pc.build().await?;
    Ok(Arc::new(pc))
}

/// The two local tracks of a publisher.
pub struct LocalTracks {
    pub video: Arc<TrackLocalStaticSample>,
    pub audio: Arc<TrackLocalStaticSample>,
}

impl LocalTracks {
    pub fn new(stream_id: &str) -> Result<LocalTracks> {
        Self::with_layers(stream_id, &[""])
    }

    /// Video with one encoding per rid in `rids` (`[""]`: a single stream).
    pub fn with_layers(stream_id: &str, rids: &[&str]) -> Result<LocalTracks> {
        let encodings = |codec: &RTCRtpCodec, rids: &[&str]| -> Vec<RTCRtpEncodingParameters> {
            rids.iter()
                .map(|rid| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: rid.to_string(),
                        ssrc: Some(rand::random::<u32>()),
                        ..Default::default()
                    },
                    codec: codec.clone(),
                    ..Default::default()
                })
                .collect()
        };
        let make = |kind: RtpCodecKind, codec: RTCRtpCodec, suffix: &str| {
            let rids: &[&str] = if kind == RtpCodecKind::Video {
                rids
            } else {
                &[""]
            };
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    stream_id.to_string(),
                    format!("{stream_id}-{suffix}"),
                    format!("{stream_id}-{suffix}"),
                    kind,
                    encodings(&codec, rids),
                ),
            )
            .map(Arc::new)
        };
        Ok(LocalTracks {
            video: make(RtpCodecKind::Video, h264_codec(), "video")?,
            audio: make(RtpCodecKind::Audio, opus_codec(), "audio")?,
        })
    }

    /// Adds both as sendonly transceivers; returns (video sender, audio sender).
    pub async fn add_to(
        &self,
        pc: &Arc<dyn PeerConnection>,
    ) -> Result<(Arc<dyn RtpSender>, Arc<dyn RtpSender>)> {
        let mut senders = Vec::new();
        for track in [&self.video, &self.audio] {
            let t = pc
                .add_transceiver_from_track(
                    Arc::clone(track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await?;
            senders.push(
                t.sender()
                    .await?
                    .ok_or_else(|| anyhow!("transceiver without sender"))?,
            );
        }
        let audio = senders.pop().unwrap();
        let video = senders.pop().unwrap();
        Ok((video, audio))
    }
}

async fn negotiated_pt(sender: &Arc<dyn RtpSender>) -> Result<u8> {
    sender
        .get_parameters()
        .await?
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
        .ok_or_else(|| anyhow!("sender has no negotiated codec"))
}

/// What the media source reports.
#[derive(Debug, Clone, Copy)]
pub enum SourceEvent {
    /// `counter`: the frame counter burnt into the picture (see `media::render`).
    Video {
        ok: bool,
        keyframe: bool,
        counter: u16,
    },
    Audio {
        ok: bool,
    },
    KeyframeRequest,
}

/// Sends the next of publisher `tag`'s audio packets on its audio track; whether it went.
async fn send_audio(tracks: &LocalTracks, ssrc: u32, pt: u8, tag: u16, seq: &mut u32) -> bool {
    let r = tracks
        .audio
        .write_sample(
            ssrc,
            pt,
            &Sample {
                data: audio_payload(tag, *seq),
                duration: media::AUDIO_FRAME_DURATION,
                ..Sample::new(Instant::now())
            },
            &[],
        )
        .await;
    *seq = seq.wrapping_add(1);
    r.is_ok()
}

/// Sends the pattern and audio on the tracks until aborted, answering keyframe requests.
/// Starts once `ready` resolves.
pub async fn run_media_source(
    tracks: LocalTracks,
    senders: (Arc<dyn RtpSender>, Arc<dyn RtpSender>),
    mut video: VideoSource,
    tag: u16,
    ready: impl Future<Output = Result<()>>,
    mut on_event: impl FnMut(SourceEvent) + Send,
) -> Result<()> {
    ready.await?;
    let video_pt = negotiated_pt(&senders.0).await?;
    let audio_pt = negotiated_pt(&senders.1).await?;
    let video_ssrc = *tracks
        .video
        .ssrcs()
        .await
        .first()
        .ok_or_else(|| anyhow!("video track without ssrc"))?;
    let audio_ssrc = *tracks
        .audio
        .ssrcs()
        .await
        .first()
        .ok_or_else(|| anyhow!("audio track without ssrc"))?;
    let mut video_tick = tokio::time::interval(media::FRAME_DURATION);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio_tick = tokio::time::interval(media::AUDIO_FRAME_DURATION);
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut position = 0usize;
    let mut audio_seq = 0u32;
    let mut want_keyframe = false;
    let mut listening = true;
    loop {
        tokio::select! {
            _ = video_tick.tick() => {
                let f = video.next(&mut position, want_keyframe).await?;
                want_keyframe = false;
                let r = tracks
                    .video
                    .write_sample(
                        video_ssrc,
                        video_pt,
                        &Sample {
                            data: f.data.clone(),
                            duration: media::FRAME_DURATION,
                            ..Sample::new(Instant::now())
                        },
                        &[],
                    )
                    .await;
                // Both sources advance `position` by one per picture, so the picture just sent
                // is number `position - 1` of the 60-frame pattern loop.
                let counter = (position.wrapping_sub(1) % media::LOOP_FRAMES as usize) as u16;
                on_event(SourceEvent::Video { ok: r.is_ok(), keyframe: f.keyframe, counter });
                listening = true;
            }
            _ = audio_tick.tick() => {
                let ok = send_audio(&tracks, audio_ssrc, audio_pt, tag, &mut audio_seq).await;
                on_event(SourceEvent::Audio { ok });
            }
            event = tracks.video.poll(), if listening => match event {
                Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        want_keyframe = true;
                        on_event(SourceEvent::KeyframeRequest);
                    }
                }
                Some(_) => {}
                // not bound (yet/any more): look again after the next frame
                None => listening = false,
            },
        }
    }
}

/// A header extension that is text: a mid (RFC 8843) or an RTP stream id (RFC 8852).
struct TextExtension(String);

impl rtc::shared::marshal::MarshalSize for TextExtension {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl rtc::shared::marshal::Marshal for TextExtension {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len();
        buf.get_mut(..n)
            .ok_or(rtc::shared::error::Error::ErrShortBuffer)?
            .copy_from_slice(self.0.as_bytes());
        Ok(n)
    }
}

/// Like [`run_media_source`], for a simulcast publisher: each layer of [`SIMULCAST`] has its
/// own live encoder (at the layer's bitrate; the pattern carries `tag + rank`, so a decoded
/// picture names its layer) and its own SSRC, and its packets name their rid (RFC 8852) as a
/// browser's do. A keyframe request asks the layer whose SSRC it names.
pub async fn run_simulcast_source(
    tracks: LocalTracks,
    senders: (Arc<dyn RtpSender>, Arc<dyn RtpSender>),
    tag: u16,
    mid: &str,
    ready: impl Future<Output = Result<()>>,
    mut on_event: impl FnMut(SourceEvent) + Send,
) -> Result<()> {
    use rtc::rtp::extension::HeaderExtension;
    ready.await?;
    let video_pt = negotiated_pt(&senders.0).await?;
    let audio_pt = negotiated_pt(&senders.1).await?;
    let ssrcs = tracks.video.ssrcs().await;
    ensure!(
        ssrcs.len() == SIMULCAST.len(),
        "a simulcast track has {} SSRCs",
        ssrcs.len()
    );
    let audio_ssrc = *tracks
        .audio
        .ssrcs()
        .await
        .first()
        .ok_or_else(|| anyhow!("audio track without ssrc"))?;
    let mut layers = Vec::new();
    for (rank, ((rid, bps, rows), ssrc)) in SIMULCAST.iter().zip(&ssrcs).enumerate() {
        let encoder = Arc::new(Mutex::new(LiveEncoder::with_bitrate(
            tag + rank as u16,
            *bps,
            *rows,
        )?));
        let ids = [
            HeaderExtension::Custom {
                uri: rtc::sdp::extmap::SDES_MID_URI.into(),
                extension: Box::new(TextExtension(mid.to_string())),
            },
            HeaderExtension::Custom {
                uri: rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI.into(),
                extension: Box::new(TextExtension(rid.to_string())),
            },
        ];
        layers.push((*ssrc, encoder, ids, true));
    }
    let mut video_tick = tokio::time::interval(media::FRAME_DURATION);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio_tick = tokio::time::interval(media::AUDIO_FRAME_DURATION);
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio_seq = 0u32;
    let mut frame = 0u64;
    let mut listening = true;
    loop {
        tokio::select! {
            _ = video_tick.tick() => {
                for (ssrc, encoder, ids, want_keyframe) in &mut layers {
                    let keyframe = std::mem::take(want_keyframe);
                    let enc = encoder.clone();
                    let f = tokio::task::spawn_blocking(move || enc.lock().unwrap().encode_next(keyframe))
                        .await??;
                    let r = tracks
                        .video
                        .write_sample(
                            *ssrc,
                            video_pt,
                            &Sample {
                                data: f.data.clone(),
                                duration: media::FRAME_DURATION,
                                ..Sample::new(Instant::now())
                            },
                            &ids[..],
                        )
                        .await;
                    let counter = (frame % media::LOOP_FRAMES as u64) as u16;
                    if frame % 20 == 5 { eprintln!("SIZE {ssrc} {}", f.data.len()); }
                    on_event(SourceEvent::Video { ok: r.is_ok(), keyframe: f.keyframe, counter });
                }
                frame += 1;
                listening = true;
            }
            _ = audio_tick.tick() => {
                let ok = send_audio(&tracks, audio_ssrc, audio_pt, tag, &mut audio_seq).await;
                on_event(SourceEvent::Audio { ok });
            }
            event = tracks.video.poll(), if listening => match event {
                Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                    for p in packets.iter().filter(|p| is_keyframe_request(p.as_ref())) {
                        let media = p
                            .as_any()
                            .downcast_ref::<PictureLossIndication>()
                            .map(|pli| pli.media_ssrc);
                        for (ssrc, _, _, want) in &mut layers {
                            if media.is_none_or(|m| m == *ssrc) {
                                *want = true;
                            }
                        }
                        on_event(SourceEvent::KeyframeRequest);
                    }
                }
                Some(_) => {}
                None => listening = false,
            },
        }
    }
}

/// Reads one remote track until it ends, verifying its media into `shared`.
pub async fn read_remote_track(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let stream_id = track.stream_id().await;
    let track_id = track.track_id().await;
    let kind = track.kind().await;
    let owner = shared.update(|s| {
        let from_offer = s.track_owners.get(&track_id).cloned();
        if let Some(p) = &from_offer {
            if *p != stream_id {
                s.problems.push(format!(
                    "track {track_id}: msid stream id {stream_id:?} but the offer's tracks list says participant {p:?}"
                ));
            }
        }
        let owner = if stream_id.is_empty() {
            from_offer.unwrap_or_else(|| "?".into())
        } else {
            stream_id.clone()
        };
        s.tracks.push(TrackRecord {
            track_id: track_id.clone(),
            stream_id: stream_id.clone(),
            kind,
        });
        let r = s.remote_mut(&owner);
        match kind {
            RtpCodecKind::Video => r.video_tracks += 1,
            RtpCodecKind::Audio => r.audio_tracks += 1,
            _ => {}
        }
        owner
    });
    match kind {
        RtpCodecKind::Video => read_video(track, owner, shared).await,
        RtpCodecKind::Audio => read_audio(track, owner, shared).await,
        other => shared.problem(format!("track {track_id} of unexpected kind {other:?}")),
    }
}

async fn send_pli(track: &Arc<dyn TrackRemote>, media_ssrc: u32) {
    let _ = track
        .write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        })])
        .await;
}

async fn read_video(track: Arc<dyn TrackRemote>, owner: String, shared: Arc<Shared>) {
    let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    send_pli(&track, media_ssrc).await;
    let decoder = {
        let shared = shared.clone();
        let owner = owner.clone();
        VideoDecoder::spawn(move |report| {
            shared.update(|s| {
                if let DecodeReport::Good(info) = &report {
                    s.good_frame_log
                        .entry(owner.clone())
                        .or_default()
                        .push((Instant::now(), info.counter));
                }
                s.remote_mut(&owner).apply(report)
            })
        })
    };
    let decoder = match decoder {
        Ok(d) => d,
        Err(e) => {
            shared.problem(format!("cannot start a decoder: {e}"));
            return;
        }
    };
    let mut assembler = H264Assembler::default();
    let mut last_pli = Instant::now();
    let mut skipped_seen = 0u64;
    let mut reorder = shared
        .read(|s| s.jitter_buffer)
        .map(ReorderBuffer::<rtc::rtp::Packet>::new);
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                shared.update(|s| {
                    let r = s.remote_mut(&owner);
                    r.video_packets += 1;
                    r.first_video_packet_at.get_or_insert_with(Instant::now);
                });
                let ready = match &mut reorder {
                    Some(b) => b.push(pkt.header.sequence_number, pkt, Instant::now()),
                    None => vec![pkt],
                };
                for pkt in ready {
                    let out = assembler.push(
                        pkt.header.sequence_number,
                        pkt.header.timestamp,
                        pkt.header.marker,
                        pkt.payload.clone(),
                    );
                    if let Some(out) = out {
                        if let Assembled::Dropped(why) = &out {
                            let why = why.clone();
                            shared.update(|s| {
                                let r = s.remote_mut(&owner);
                                r.frames_dropped += 1;
                                r.last_drop = Some((r.frames_decoded, why.clone()));
                                r.last_problem = Some(why);
                            });
                        }
                        // Like a browser, ask again every half second while nothing can be
                        // decoded (a frame was lost, or the decoder still waits for an IDR):
                        // one request may be lost on the way, as the IDR it asked for may be.
                        let skipped =
                            shared.read(|s| s.remote.get(&owner).map_or(0, |r| r.frames_skipped));
                        let stuck = matches!(out, Assembled::Dropped(_)) || skipped > skipped_seen;
                        skipped_seen = skipped;
                        if stuck && last_pli.elapsed() > Duration::from_millis(500) {
                            last_pli = Instant::now();
                            send_pli(&track, media_ssrc).await;
                        }
                        decoder.send(out);
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

async fn read_audio(track: Arc<dyn TrackRemote>, owner: String, shared: Arc<Shared>) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                let tag = check_audio(&pkt.payload);
                shared.update(|s| {
                    let r = s.remote_mut(&owner);
                    if !pkt.payload.is_empty() {
                        r.audio_rtp_packets += 1;
                    }
                    let capture = s.audio_capture.entry(owner.clone()).or_default();
                    if capture.len() < AUDIO_CAPTURE_PACKETS && !pkt.payload.is_empty() {
                        capture.push(pkt.payload.clone());
                    }
                    let r = s.remote_mut(&owner);
                    match tag {
                        Some(t) => {
                            r.audio_packets += 1;
                            r.audio_tags.insert(t);
                        }
                        None => {
                            r.audio_bad += 1;
                            r.last_problem =
                                Some(format!("bad audio payload of {} bytes", pkt.payload.len()));
                        }
                    }
                });
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// Stream ids of the m-sections of `sdp` that send media (port ≠ 0 and sendonly/sendrecv).
pub fn active_msid_streams(sdp: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(s) = sections.last_mut() {
            s.push(line);
        }
    }
    for s in sections {
        let port = s[0].split_whitespace().nth(1).unwrap_or("0");
        let mut direction = "sendrecv";
        let mut streams = Vec::new();
        for l in &s[1..] {
            match *l {
                "a=sendonly" | "a=sendrecv" | "a=recvonly" | "a=inactive" => direction = &l[2..],
                _ => {
                    if let Some(rest) = l.strip_prefix("a=msid:") {
                        if let Some(stream) = rest.split_whitespace().next() {
                            streams.push(stream.to_string());
                        }
                    }
                }
            }
        }
        if port != "0" && (direction == "sendonly" || direction == "sendrecv") {
            out.extend(streams);
        }
    }
    out
}

/// A joined participant.
pub struct Peer {
    pub cfg: PeerConfig,
    pub id: String,
    shared: Arc<Shared>,
    signal: SignalTx,
    subscribe_pc: Arc<dyn PeerConnection>,
    driver: JoinHandle<()>,
    ws_writer: JoinHandle<()>,
    signal_url: String,
    /// The signaling URLs that redirected this peer before it joined (cluster mode), in order.
    pub redirected_from: Vec<String>,
}

impl Peer {
    /// Connects, joins `cfg.room` and, if `cfg.publish`, starts publishing (returns once the
    /// publish offer is sent). Follows `redirect`s (cluster mode) as the page does, up to 3.
    pub async fn join(ws_url: &str, cfg: PeerConfig) -> Result<Peer> {
        let mut url = ws_url.to_string();
        let mut from = Vec::new();
        loop {
            match Self::join_once(&url, cfg.clone()).await? {
                Ok(mut peer) => {
                    peer.redirected_from = from;
                    return Ok(peer);
                }
                Err(next) => {
                    ensure!(
                        from.len() < 3,
                        "more than 3 redirects: {from:?} then {next}"
                    );
                    from.push(std::mem::replace(&mut url, next));
                }
            }
        }
    }

    /// One join attempt: the peer, or the URL a `redirect` named.
    async fn join_once(ws_url: &str, cfg: PeerConfig) -> Result<std::result::Result<Peer, String>> {
        // Prepare the video before joining so media can flow as soon as ICE is up.
        let source = if cfg.publish {
            Some(Self::video_source(&cfg).await?)
        } else {
            None
        };
        let conn = SignalConn::connect(ws_url).await?;
        let shared = Shared::new();
        shared.update(|s| s.jitter_buffer = cfg.jitter_buffer);
        let sub_gate = CandidateGate::new(PcRole::Subscribe, conn.tx.clone());
        let subscribe_pc = build_pc_for(
            Arc::new(PcHandler {
                role: PcRole::Subscribe,
                shared: shared.clone(),
                gate: sub_gate.clone(),
            }),
            cfg.tcp_only,
        )
        .await?;
        let driver = tokio::spawn(
            Driver {
                shared: shared.clone(),
                signal: conn.tx.clone(),
                rx: conn.rx,
                subscribe_pc: subscribe_pc.clone(),
                sub_gate,
                answer_delay: cfg.answer_delay,
                tcp_via: cfg.tcp_via,
                pending_offers: VecDeque::new(),
                held_candidates: Vec::new(),
                release_at: None,
            }
            .run(),
        );
        conn.tx.send(&ClientMsg::Join {
            room: cfg.room.clone(),
            name: cfg.name.clone(),
            identity: None,
            password: cfg.password.clone(),
            token: cfg.token.clone(),
        })?;
        let mut peer = Peer {
            cfg: cfg.clone(),
            id: String::new(),
            shared: shared.clone(),
            signal: conn.tx,
            subscribe_pc,
            driver,
            ws_writer: conn.writer,
            signal_url: ws_url.to_string(),
            redirected_from: Vec::new(),
        };
        shared
            .wait_until("joined", Duration::from_secs(10), |s| {
                s.id.is_some()
                    || s.join_error.is_some()
                    || s.ws_closed.is_some()
                    || s.redirect.is_some()
            })
            .await?;
        let (id, err, redirect) =
            shared.read(|s| (s.id.clone(), s.join_error.clone(), s.redirect.clone()));
        if let (None, Some(url)) = (&id, redirect) {
            return Ok(Err(url));
        }
        match (id, err) {
            (Some(id), _) => peer.id = id,
            (None, Some((code, msg))) => bail!("join refused: {code}: {msg}"),
            (None, None) => bail!("socket closed before joined"),
        }
        if let Some(source) = source {
            peer.publish_with(source).await?;
        }
        Ok(Ok(peer))
    }

    async fn video_source(cfg: &PeerConfig) -> Result<VideoSource> {
        let tag = cfg.tag;
        Ok(match cfg.video {
            VideoMode::Live => VideoSource::live(tag)?,
            VideoMode::Looped => VideoSource::Looped(
                tokio::task::spawn_blocking(move || media::encoded_loop(tag)).await??,
            ),
        })
    }

    /// Starts publishing video + audio (once per peer).
    pub async fn publish(&self) -> Result<()> {
        let source = Self::video_source(&self.cfg).await?;
        self.publish_with(source).await
    }

    async fn publish_with(&self, source: VideoSource) -> Result<()> {
        if self.shared.publish_pc.lock().unwrap().is_some() {
            bail!("already publishing");
        }
        let gate = CandidateGate::new(PcRole::Publish, self.signal.clone());
        let pc = build_pc_for(
            Arc::new(PcHandler {
                role: PcRole::Publish,
                shared: self.shared.clone(),
                gate: gate.clone(),
            }),
            self.cfg.tcp_only,
        )
        .await?;
        let stream = self.cfg.name.to_lowercase().replace(' ', "-");
        let tracks = if self.cfg.simulcast {
            let rids: Vec<&str> = SIMULCAST.iter().map(|(rid, ..)| *rid).collect();
            LocalTracks::with_layers(&stream, &rids)?
        } else {
            LocalTracks::new(&stream)?
        };
        let senders = tracks.add_to(&pc).await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description after set_local_description"))?
            .sdp;
        *self.shared.publish_pc.lock().unwrap() = Some(pc.clone());
        // A simulcast layer's packets carry the video section's mid as well as their rid
        // (their SSRCs are not in the offer, so this is how the server tells them apart).
        let video_mid = sdp
            .split("m=video")
            .nth(1)
            .and_then(|v| v.lines().find_map(|l| l.trim().strip_prefix("a=mid:")))
            .unwrap_or("0")
            .to_string();
        self.signal.send(&ClientMsg::Publish { sdp })?;
        gate.open();

        let shared = self.shared.clone();
        let ready = {
            let shared = self.shared.clone();
            async move {
                // Media flows once the connection is up; this waits as long as the peer lives.
                shared
                    .wait_until("publish connection", Duration::from_secs(3600), |s| {
                        s.publish_pc == Some(RTCPeerConnectionState::Connected)
                    })
                    .await
            }
        };
        let tag = self.cfg.tag;
        let simulcast = self.cfg.simulcast;
        let task = tokio::spawn(async move {
            let on_event = {
                let shared = shared.clone();
                move |event: SourceEvent| {
                    shared.update(|s| match event {
                        SourceEvent::Video { ok: false, .. } | SourceEvent::Audio { ok: false } => {
                            s.send_errors += 1
                        }
                        SourceEvent::Video {
                            keyframe, counter, ..
                        } => {
                            s.sent_frame_log.push((Instant::now(), counter));
                            s.sent_video_frames += 1;
                            s.sent_keyframes += keyframe as u64;
                        }
                        SourceEvent::Audio { .. } => s.sent_audio_packets += 1,
                        SourceEvent::KeyframeRequest => s.keyframe_requests += 1,
                    })
                }
            };
            let run = if simulcast {
                run_simulcast_source(tracks, senders, tag, &video_mid, ready, on_event).await
            } else {
                run_media_source(tracks, senders, source, tag, ready, on_event).await
            };
            if let Err(e) = run {
                shared.problem(format!("media source stopped: {e}"));
            }
        });
        self.shared.track_task(task);
        Ok(())
    }

    /// A stream of the server messages (candidates excluded) that arrive from now on.
    pub fn events(&self) -> broadcast::Receiver<ServerMsg> {
        self.shared.events.subscribe()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reads the state.
    pub fn state<R>(&self, f: impl FnOnce(&PeerState) -> R) -> R {
        self.shared.read(f)
    }

    /// Waits until `pred` holds, failing after `within` with a state dump.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&PeerState) -> bool,
    ) -> Result<()> {
        self.shared
            .wait_until(
                &format!("{} ({}): {what}", self.cfg.name, self.id),
                within,
                pred,
            )
            .await
    }

    /// Sends a raw protocol message.
    /// Sends any JSON, also shapes the typed `ClientMsg` lacks.
    pub fn send_raw(&self, v: serde_json::Value) -> Result<()> {
        self.signal.send_raw_text(v.to_string())
    }

    pub fn send(&self, msg: &ClientMsg) -> Result<()> {
        self.signal.send(msg)
    }

    /// Round trip of a `ping` with a fresh nonce.
    pub async fn ping(&self, within: Duration) -> Result<Duration> {
        let nonce = rand::random::<u32>() as u64;
        let start = Instant::now();
        self.send(&ClientMsg::Ping { nonce: Some(nonce) })?;
        self.wait_until("pong", within, |s| {
            s.messages
                .iter()
                .any(|m| matches!(m, ServerMsg::Pong { nonce: Some(n) } if *n == nonce))
        })
        .await?;
        Ok(start.elapsed())
    }

    /// Sends `leave`, expects `bye` and the socket to close, then closes the peer connections.
    pub async fn leave(self) -> Result<()> {
        self.send(&ClientMsg::Leave)?;
        let r = self
            .wait_until("bye and close after leave", Duration::from_secs(5), |s| {
                s.bye.is_some() && s.ws_closed.is_some()
            })
            .await;
        self.shutdown().await;
        r
    }

    /// Disappears without `leave`: the WebSocket is dropped without a close handshake and the
    /// peer connections are closed.
    pub async fn vanish(self) {
        self.driver.abort();
        self.ws_writer.abort();
        self.shutdown().await;
    }

    /// Closes both peer connections but keeps the WebSocket open.
    pub async fn close_peer_connections(&self) {
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let publish = self.shared.publish_pc.lock().unwrap().clone();
        if let Some(pc) = publish {
            let _ = pc.close().await;
        }
        let _ = self.subscribe_pc.close().await;
    }

    async fn shutdown(&self) {
        self.close_peer_connections().await;
        self.driver.abort();
        self.ws_writer.abort();
    }

    /// The URL this peer signals on.
    pub fn url(&self) -> &str {
        &self.signal_url
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.driver.abort();
        self.ws_writer.abort();
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let publish = self.shared.publish_pc.lock().unwrap().take();
        let subscribe = self.subscribe_pc.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(pc) = publish {
                    let _ = pc.close().await;
                }
                let _ = subscribe.close().await;
            });
        }
    }
}

/// Reads the signaling socket and runs the protocol: subscribe offers are answered (in order,
/// optionally delayed), publish answers applied, candidates added.
struct Driver {
    shared: Arc<Shared>,
    signal: SignalTx,
    rx: SignalRx,
    subscribe_pc: Arc<dyn PeerConnection>,
    sub_gate: Arc<CandidateGate>,
    answer_delay: Option<Duration>,
    pending_offers: VecDeque<(String, u64)>,
    /// Subscribe candidates that arrived while an offer was held back (they can only be
    /// added once that offer is the remote description).
    held_candidates: Vec<RTCIceCandidateInit>,
    release_at: Option<tokio::time::Instant>,
    tcp_via: Option<std::net::SocketAddr>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let release = self.release_at;
            let delay = async move {
                match release {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                incoming = self.rx.recv() => match incoming {
                    Incoming::Msg(m) => self.on_message(m).await,
                    Incoming::Binary(n) => self
                        .shared
                        .problem(format!("server sent a binary frame of {n} bytes")),
                    Incoming::Closed(frame) => {
                        self.shared.update(|s| s.ws_closed = Some(frame));
                        break;
                    }
                },
                _ = delay => {
                    self.release_at = None;
                    self.answer_pending().await;
                }
            }
        }
    }

    async fn on_message(&mut self, m: ServerMsg) {
        match &m {
            ServerMsg::Candidate { pc, candidate } => {
                let key = format!("{pc:?}").to_lowercase();
                self.shared
                    .update(|s| *s.candidates_received.entry(key).or_default() += 1);
                if candidate.candidate.is_empty() {
                    return; // end of candidates
                }
                let target = match pc {
                    PcRole::Subscribe => Some(self.subscribe_pc.clone()),
                    PcRole::Publish => self.shared.publish_pc.lock().unwrap().clone(),
                };
                let Some(target) = target else {
                    self.shared
                        .problem("server sent a publish candidate before we published");
                    return;
                };
                let line = match self.tcp_via {
                    Some(via) => via_proxy(&candidate.candidate, via),
                    None => candidate.candidate.clone(),
                };
                let init = RTCIceCandidateInit {
                    candidate: line,
                    sdp_mid: candidate.sdp_mid.clone(),
                    sdp_mline_index: candidate.sdp_mline_index,
                    username_fragment: candidate.username_fragment.clone(),
                    url: None,
                };
                if *pc == PcRole::Subscribe && !self.pending_offers.is_empty() {
                    self.held_candidates.push(init);
                    return;
                }
                if let Err(e) = target.add_ice_candidate(init).await {
                    self.shared.problem(format!(
                        "add_ice_candidate({pc:?}, {:?}): {e}",
                        candidate.candidate
                    ));
                }
                return;
            }
            ServerMsg::Joined {
                id, participants, ..
            } => {
                let (id, participants) = (id.clone(), participants.clone());
                self.shared.update(|s| {
                    if s.id.is_some() {
                        s.problems.push("second `joined`".into());
                    }
                    s.id = Some(id);
                    for p in participants {
                        s.participants.insert(p.id.clone(), p);
                    }
                });
            }
            ServerMsg::ParticipantJoined { participant } => {
                let p = participant.clone();
                self.shared.update(|s| {
                    if s.id.as_ref() == Some(&p.id) {
                        s.problems
                            .push("participant_joined announces ourselves".to_string());
                        return;
                    }
                    s.joined_events.push(p.id.clone());
                    s.participants.insert(p.id.clone(), p);
                });
            }
            ServerMsg::ParticipantUpdated { participant } => {
                let p = participant.clone();
                self.shared.update(|s| {
                    if s.id.as_ref() == Some(&p.id) {
                        s.me = Some(p);
                    } else {
                        if !s.participants.contains_key(&p.id) {
                            s.problems.push(format!(
                                "participant_updated for {:?}, who is not in the room",
                                p.id
                            ));
                        }
                        s.participants.insert(p.id.clone(), p);
                    }
                });
            }
            ServerMsg::ParticipantLeft { id } => {
                let id = id.clone();
                self.shared.update(|s| {
                    if s.participants.remove(&id).is_none() {
                        s.problems
                            .push(format!("participant_left for {id:?}, who was not listed"));
                    }
                    s.left_events.push((id, Instant::now()));
                });
            }
            ServerMsg::Answer { sdp } => {
                let pc = self.shared.publish_pc.lock().unwrap().clone();
                match pc {
                    Some(pc) => {
                        let r = async {
                            pc.set_remote_description(RTCSessionDescription::answer(sdp.clone())?)
                                .await
                        }
                        .await;
                        match r {
                            Ok(()) => self.shared.update(|s| s.publish_answers += 1),
                            Err(e) => self
                                .shared
                                .problem(format!("applying the publish answer: {e}")),
                        }
                    }
                    None => self.shared.problem("`answer` without a publish offer"),
                }
            }
            ServerMsg::Offer {
                sdp,
                revision,
                tracks,
            } => {
                let record = OfferRecord {
                    revision: *revision,
                    tracks: tracks.clone(),
                    active_streams: active_msid_streams(sdp),
                    sdp: sdp.clone(),
                    at: Instant::now(),
                };
                let outstanding = self.pending_offers.back().map(|(_, r)| *r);
                self.shared.update(|s| {
                    if let Some(prev) = s.offers.last() {
                        if record.revision <= prev.revision {
                            s.problems.push(format!(
                                "offer revision {} after {}: revisions must increase",
                                record.revision, prev.revision
                            ));
                        }
                    }
                    if let Some(r) = outstanding {
                        s.problems.push(format!(
                            "offer revision {} arrived while revision {r} was still unanswered",
                            record.revision
                        ));
                    }
                    for t in &record.tracks {
                        s.track_owners
                            .insert(t.track.clone(), t.participant.clone());
                    }
                    s.offers.push(record);
                });
                self.pending_offers.push_back((sdp.clone(), *revision));
                match self.answer_delay {
                    Some(d) => {
                        if self.release_at.is_none() {
                            self.release_at = Some(tokio::time::Instant::now() + d);
                        }
                    }
                    None => self.answer_pending().await,
                }
            }
            ServerMsg::Error { code, message, .. } => {
                let (code, message) = (code.clone(), message.clone());
                self.shared.update(|s| {
                    if s.id.is_none() && s.join_error.is_none() {
                        s.join_error = Some((code.clone(), message.clone()));
                    }
                    s.server_errors.push((code, message));
                });
            }
            ServerMsg::Bye { reason } => {
                let reason = reason.clone();
                self.shared.update(|s| s.bye = Some(reason));
            }
            ServerMsg::Redirect { url, .. } => {
                let url = url.clone();
                let joined = self.shared.update(|s| {
                    if s.id.is_none() {
                        s.redirect = Some(url.clone());
                    }
                    s.id.is_some()
                });
                if joined {
                    self.shared
                        .problem(format!("redirect to {url} after joined"));
                }
            }
            // Chat (system notices such as "Alice joined") is recorded in `messages` below;
            // media tests do not look at it.
            ServerMsg::Pong { .. }
            | ServerMsg::Muted { .. }
            | ServerMsg::RoomState { .. }
            | ServerMsg::Chat { .. }
            | ServerMsg::ChatAck { .. }
            | ServerMsg::History { .. } => {}
            ServerMsg::Unknown(v) => {
                self.shared
                    .problem(format!("undocumented server message: {v}"));
            }
        }
        let _ = self.shared.events.send(m.clone());
        self.shared.update(|s| s.messages.push(m));
    }

    async fn answer_pending(&mut self) {
        while let Some((sdp, revision)) = self.pending_offers.pop_front() {
            match self.answer_offer(sdp, revision).await {
                Ok(()) => self.shared.update(|s| s.answered.push(revision)),
                Err(e) => self
                    .shared
                    .problem(format!("answering subscribe offer {revision}: {e:#}")),
            }
        }
        for c in std::mem::take(&mut self.held_candidates) {
            let text = c.candidate.clone();
            if let Err(e) = self.subscribe_pc.add_ice_candidate(c).await {
                self.shared
                    .problem(format!("add_ice_candidate(Subscribe, {text:?}): {e}"));
            }
        }
    }

    async fn answer_offer(&self, sdp: String, revision: u64) -> Result<()> {
        let pc = &self.subscribe_pc;
        pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await
            .context("set_remote_description(offer)")?;
        let answer = pc.create_answer(None).await.context("create_answer")?;
        pc.set_local_description(answer)
            .await
            .context("set_local_description(answer)")?;
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp;
        self.signal
            .send(&ClientMsg::SubscribeAnswer { sdp, revision })?;
        self.sub_gate.open();
        Ok(())
    }
}
