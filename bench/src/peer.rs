//! The WebRTC side of the load generator, the same whatever server it talks to: webrtc-rs peer
//! connections that publish the looped media ([`Publication`]) or receive and account for it
//! ([`Subscription`]). Signaling is somebody else's job (`confab.rs`, `janus.rs`): these types
//! take and give SDP only.
//!
//! Latency: publishers and subscribers live in one process and share one clock ([`now_us`]).
//! Every video packet's send time is written into its publisher's [`SendLog`] under the
//! sequence number it went out with; the SEI stamp at the start of each frame tells a subscriber
//! which original sequence number that packet had, hence the offset the server applied, hence
//! the send time of every following packet. Audio payloads carry their own send time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Interceptor, Packet as ChainPacket, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::histogram::Histogram;
use crate::media::{
    DecodeOutcome, DecoderInput, FrameChecker, VideoLoop, AUDIO_FRAME, AUDIO_PAYLOAD_LEN,
    AUDIO_TS_STEP,
};
use crate::sequence::{SeqCounts, SeqTracker};
use crate::stamp::{AudioStamp, VideoStamp, NAL_SEI};

pub const H264_PT: u8 = 102;
pub const OPUS_PT: u8 = 111;
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// Microseconds since the first call, on the monotonic clock every task of this process shares.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Send times of one publisher's video packets by the sequence number they left with.
pub struct SendLog {
    times: Box<[AtomicU64]>,
}

impl SendLog {
    fn new() -> SendLog {
        SendLog {
            times: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, seq: u16, us: u64) {
        self.times[seq as usize].store(us, Relaxed);
    }

    fn get(&self, seq: u16) -> u64 {
        self.times[seq as usize].load(Relaxed)
    }
}

/// What every peer connection of one run shares.
pub struct Context {
    /// Local address the peer connections bind (the server must be able to reach it).
    pub bind_ip: String,
    /// ICE over TCP only (`--tcp`): no UDP sockets; the server's passive TCP candidates are
    /// dialled (RFC 6544).
    pub tcp: bool,
    /// Decode received video and check it against the loop's reference hashes.
    pub decode: Option<Arc<VideoLoop>>,
    logs: RwLock<HashMap<u32, Arc<SendLog>>>,
}

impl Context {
    pub fn new(bind_ip: &str, decode: Option<Arc<VideoLoop>>, tcp: bool) -> Arc<Context> {
        Arc::new(Context {
            bind_ip: bind_ip.to_string(),
            tcp,
            decode,
            logs: RwLock::new(HashMap::new()),
        })
    }

    fn log_for(&self, tag: u32) -> Option<Arc<SendLog>> {
        self.logs.read().ok()?.get(&tag).cloned()
    }

    fn new_log(&self, tag: u32) -> Arc<SendLog> {
        let log = Arc::new(SendLog::new());
        if let Ok(mut logs) = self.logs.write() {
            logs.insert(tag, log.clone());
        }
        log
    }
}

/// RTCP feedback seen by one peer connection, counted at the wire end of its chain.
#[derive(Debug, Default)]
pub struct RtcpCounters {
    pub nacks_in: AtomicU64,
    pub nacks_out: AtomicU64,
    pub plis_in: AtomicU64,
    pub plis_out: AtomicU64,
    /// A PLI or FIR arrived; the publisher restarts its loop at the IDR.
    keyframe_wanted: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RtcpTotals {
    pub nacks_in: u64,
    pub nacks_out: u64,
    pub plis_in: u64,
    pub plis_out: u64,
}

impl RtcpTotals {
    pub fn add(&mut self, c: &RtcpCounters) {
        self.nacks_in += c.nacks_in.load(Relaxed);
        self.nacks_out += c.nacks_out.load(Relaxed);
        self.plis_in += c.plis_in.load(Relaxed);
        self.plis_out += c.plis_out.load(Relaxed);
    }

    pub fn since(&self, e: &RtcpTotals) -> RtcpTotals {
        RtcpTotals {
            nacks_in: self.nacks_in.saturating_sub(e.nacks_in),
            nacks_out: self.nacks_out.saturating_sub(e.nacks_out),
            plis_in: self.plis_in.saturating_sub(e.plis_in),
            plis_out: self.plis_out.saturating_sub(e.plis_out),
        }
    }
}

/// Counts NACK and PLI/FIR both ways. It sits closest to the wire, so it sees what the NACK
/// generator emits on the way out and what the peer sent before anything consumes it.
struct FeedbackCounter {
    counters: Arc<RtcpCounters>,
    read_queue: std::collections::VecDeque<TaggedPacket>,
    write_queue: std::collections::VecDeque<TaggedPacket>,
}

impl FeedbackCounter {
    fn count(&self, msg: &TaggedPacket, inbound: bool) {
        let ChainPacket::Rtcp(packets) = &msg.message.packet else {
            return;
        };
        let c = &self.counters;
        for p in packets {
            let any = p.as_any();
            if any.is::<TransportLayerNack>() {
                if inbound { &c.nacks_in } else { &c.nacks_out }.fetch_add(1, Relaxed);
            } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                if inbound {
                    c.keyframe_wanted.store(true, Relaxed);
                }
                if inbound { &c.plis_in } else { &c.plis_out }.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackCounter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.count(&msg, true);
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.count(&msg, false);
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackCounter {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
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
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Connection state and gathering, as the handler saw them.
struct PcWatch {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
}

struct Handler {
    watch: Arc<PcWatch>,
    /// Where remote tracks go (subscriptions only).
    on_track: Option<Arc<TrackSink>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.watch.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.watch.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(sink) = &self.on_track {
            sink.spawn(track);
        }
    }
}

/// A webrtc-rs peer connection with H.264 + Opus and the default interceptors (NACK, RTCP
/// reports, TWCC receiver) plus the feedback counter.
async fn build_pc(
    ctx: &Context,
    watch: Arc<PcWatch>,
    on_track: Option<Arc<TrackSink>>,
    counters: Arc<RtcpCounters>,
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
    let registry = registry.with(
        Slot::from(500),
        FeedbackCounter {
            counters,
            read_queue: Default::default(),
            write_queue: Default::default(),
        },
    );
    // No mDNS: it would open a multicast socket per connection (hundreds of them here), and a
    // network namespace without a multicast route refuses it (ENODEV).
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { watch, on_track }));
    let addrs = vec![format!("{}:0", ctx.bind_ip)];
    let pc = if ctx.tcp {
        pc.with_tcp_addrs(addrs)
    } else {
        pc.with_udp_addrs(addrs)
    };
    Ok(Arc::new(pc.build().await?))
}

/// With `--tcp`: hands the connection the passive TCP candidates of the server's description,
/// which webrtc-rs dials only when they come through `add_ice_candidate`.
async fn dial_tcp_candidates(tcp: bool, pc: &Arc<dyn PeerConnection>, sdp: &str) {
    if !tcp {
        return;
    }
    for line in sdp.lines().filter_map(|l| l.trim().strip_prefix("a=")) {
        if line.starts_with("candidate:")
            && line.contains(" tcp ")
            && line.contains("tcptype passive")
        {
            let init = RTCIceCandidateInit {
                candidate: line.to_owned(),
                sdp_mline_index: Some(0),
                ..Default::default()
            };
            if let Err(e) = pc.add_ice_candidate(init).await {
                tracing::warn!(error = %e, "server TCP candidate not added");
            }
        }
    }
}

fn new_watch() -> Arc<PcWatch> {
    Arc::new(PcWatch {
        state: watch::channel(RTCPeerConnectionState::New).0,
        gathered: watch::channel(false).0,
    })
}

/// Waits (bounded) for ICE gathering to finish and returns the local description with its
/// candidates: the load generator never trickles, so neither server waits for candidates.
async fn local_sdp(pc: &Arc<dyn PeerConnection>, watch: &PcWatch) -> Result<String> {
    let mut rx = watch.gathered.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|g| *g)).await;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp)
}

async fn wait_connected(watch: &PcWatch, within: Duration) -> Result<()> {
    let mut rx = watch.state.subscribe();
    let r = tokio::time::timeout(
        within,
        rx.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        }),
    )
    .await;
    match r {
        Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
        Ok(Ok(s)) => bail!("peer connection {}", *s),
        Ok(Err(_)) => bail!("peer connection handler gone"),
        Err(_) => {
            let state = watch.state.borrow().to_string();
            bail!("peer connection not connected within {within:?} (state {state})")
        }
    }
}

/// What a publisher sends.
#[derive(Clone)]
pub struct PublishSpec {
    pub video: Option<Arc<VideoLoop>>,
    pub audio: bool,
    /// Video pacing rate as a multiple of its bitrate (0: no pacing).
    pub pacing: f64,
}

/// Publisher-side counters.
#[derive(Debug, Default)]
pub struct TxStats {
    pub video_packets: AtomicU64,
    pub audio_packets: AtomicU64,
    pub bytes: AtomicU64,
    pub frames: AtomicU64,
    pub keyframes: AtomicU64,
    /// Packets that left more than 20 ms after their time because the generator was busy.
    pub late_ticks: AtomicU64,
    pub send_errors: AtomicU64,
}

/// A publish connection: sendonly video and/or audio.
pub struct Publication {
    pub tag: u32,
    pc: Arc<dyn PeerConnection>,
    watch: Arc<PcWatch>,
    video: Option<(Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32)>,
    audio: Option<(Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32)>,
    spec: PublishSpec,
    pub counters: Arc<RtcpCounters>,
    pub stats: Arc<TxStats>,
    log: Arc<SendLog>,
    sender: Option<JoinHandle<()>>,
    tcp: bool,
}

fn local_track(
    stream: &str,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> TrackLocalStaticRTP {
    let suffix = if kind == RtpCodecKind::Video {
        "v"
    } else {
        "a"
    };
    TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream.to_string(),
        format!("{stream}-{suffix}"),
        format!("{stream}-{suffix}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    ))
}

async fn add_sendonly(
    pc: &Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
) -> Result<Arc<dyn RtpSender>> {
    let t = pc
        .add_transceiver_from_track(
            track as Arc<dyn TrackLocal>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .await?;
    t.sender()
        .await?
        .ok_or_else(|| anyhow!("transceiver without a sender"))
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

impl Publication {
    /// Builds the connection and its offer (with candidates).
    pub async fn offer(
        ctx: &Arc<Context>,
        stream: &str,
        tag: u32,
        spec: PublishSpec,
    ) -> Result<(Publication, String)> {
        let watch = new_watch();
        let counters = Arc::new(RtcpCounters::default());
        let pc = build_pc(ctx, watch.clone(), None, counters.clone()).await?;
        let mut video = None;
        let mut audio = None;
        if spec.video.is_some() {
            let ssrc = rand::random::<u32>();
            let t = Arc::new(local_track(stream, RtpCodecKind::Video, h264_codec(), ssrc));
            let s = add_sendonly(&pc, t.clone()).await?;
            video = Some((t, s, ssrc));
        }
        if spec.audio {
            let ssrc = rand::random::<u32>();
            let t = Arc::new(local_track(stream, RtpCodecKind::Audio, opus_codec(), ssrc));
            let s = add_sendonly(&pc, t.clone()).await?;
            audio = Some((t, s, ssrc));
        }
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        let sdp = local_sdp(&pc, &watch).await?;
        Ok((
            Publication {
                tag,
                pc,
                watch,
                video,
                audio,
                spec,
                counters,
                stats: Arc::new(TxStats::default()),
                log: ctx.new_log(tag),
                sender: None,
                tcp: ctx.tcp,
            },
            sdp,
        ))
    }

    /// Applies the server's answer and starts sending once connected (in the background).
    pub async fn accept(&mut self, answer_sdp: String) -> Result<()> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer_sdp.clone())?)
            .await
            .context("applying the publish answer")?;
        dial_tcp_candidates(self.tcp, &self.pc, &answer_sdp).await;
        let watch = self.watch.clone();
        let video = self
            .video
            .as_ref()
            .map(|(t, s, ssrc)| (t.clone(), s.clone(), *ssrc));
        let audio = self
            .audio
            .as_ref()
            .map(|(t, s, ssrc)| (t.clone(), s.clone(), *ssrc));
        let sender = Sender {
            tag: self.tag,
            lp: self.spec.video.clone(),
            pacing: self.spec.pacing,
            counters: self.counters.clone(),
            stats: self.stats.clone(),
            log: self.log.clone(),
        };
        self.sender = Some(tokio::spawn(async move {
            if wait_connected(&watch, Duration::from_secs(30))
                .await
                .is_err()
            {
                sender.stats.send_errors.fetch_add(1, Relaxed);
                return;
            }
            let v = match video {
                Some((t, s, ssrc)) => match negotiated_pt(&s).await {
                    Ok(pt) => Some((t, ssrc, pt)),
                    Err(_) => None,
                },
                None => None,
            };
            let a = match audio {
                Some((t, s, ssrc)) => match negotiated_pt(&s).await {
                    Ok(pt) => Some((t, ssrc, pt)),
                    Err(_) => None,
                },
                None => None,
            };
            sender.run(v, a).await;
        }));
        Ok(())
    }

    pub async fn connected(&self, within: Duration) -> Result<()> {
        wait_connected(&self.watch, within).await
    }

    pub async fn close(mut self) {
        if let Some(s) = self.sender.take() {
            s.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), self.pc.close()).await;
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            s.abort();
        }
    }
}

struct Sender {
    tag: u32,
    lp: Option<Arc<VideoLoop>>,
    /// Pacing rate as a multiple of the video bitrate; 0 sends each frame as one burst.
    pacing: f64,
    counters: Arc<RtcpCounters>,
    stats: Arc<TxStats>,
    log: Arc<SendLog>,
}

type Out = (Arc<TrackLocalStaticRTP>, u32, u8);

/// How late a paced packet may leave before the generator counts itself as behind.
const LATE: Duration = Duration::from_millis(20);

impl Sender {
    async fn run(self, video: Option<Out>, audio: Option<Out>) {
        let v = async {
            if let (Some(out), Some(lp)) = (&video, &self.lp) {
                self.video(out, lp).await;
            }
        };
        let a = async {
            if let Some(out) = &audio {
                self.audio(out).await;
            }
        };
        tokio::join!(v, a);
    }

    /// Frames at their nominal times; their packets through a pacer at `pacing` × the
    /// bitrate, like a browser's (Chromium paces at 2.5 ×), so a keyframe leaves spread out
    /// instead of as one burst. The stamp and the send log record when each packet really went.
    async fn video(&self, (track, ssrc, pt): &Out, lp: &VideoLoop) {
        let interval = lp.frame_interval();
        let pace_bps = self.pacing * lp.spec.bitrate_bps as f64;
        let start = tokio::time::Instant::now();
        let mut pacer = start;
        let mut seq: u16 = rand::random();
        let mut ts: u32 = rand::random();
        let mut position = 0usize;
        for n in 0u64.. {
            let frame_at = start + interval.mul_f64(n as f64);
            tokio::time::sleep_until(frame_at).await;
            if self.counters.keyframe_wanted.swap(false, Relaxed) {
                position = 0; // the loop starts with its only IDR
            }
            let index = position % lp.frames.len();
            let frame = &lp.frames[index];
            position += 1;
            let count = frame.payloads.len() + 1;
            for i in 0..count {
                let release = pacer.max(frame_at);
                tokio::time::sleep_until(release).await;
                if tokio::time::Instant::now() > release + LATE {
                    self.stats.late_ticks.fetch_add(1, Relaxed);
                }
                let sent = now_us();
                let payload = match i.cmp(&frame.sei_at) {
                    std::cmp::Ordering::Less => frame.payloads[i].clone(),
                    std::cmp::Ordering::Equal => Bytes::from(
                        VideoStamp {
                            tag: self.tag,
                            frame: index as u32,
                            seq,
                            sent_us: sent,
                        }
                        .to_sei(),
                    ),
                    std::cmp::Ordering::Greater => frame.payloads[i - 1].clone(),
                };
                let len = payload.len() as u64;
                if pace_bps > 0.0 {
                    pacer = release + Duration::from_secs_f64(len as f64 * 8.0 / pace_bps);
                }
                let pkt = rtc::rtp::Packet {
                    header: rtc::rtp::Header {
                        version: 2,
                        marker: i == count - 1,
                        payload_type: *pt,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: *ssrc,
                        ..Default::default()
                    },
                    payload,
                };
                self.log.set(seq, sent);
                seq = seq.wrapping_add(1);
                match track.write_rtp(pkt).await {
                    Ok(()) => {
                        self.stats.video_packets.fetch_add(1, Relaxed);
                        self.stats.bytes.fetch_add(len, Relaxed);
                    }
                    Err(_) => {
                        self.stats.send_errors.fetch_add(1, Relaxed);
                    }
                }
            }
            ts = ts.wrapping_add(lp.rtp_ts_step());
            self.stats.frames.fetch_add(1, Relaxed);
            if frame.keyframe {
                self.stats.keyframes.fetch_add(1, Relaxed);
            }
        }
    }

    /// One packet every 20 ms.
    async fn audio(&self, (track, ssrc, pt): &Out) {
        let start = tokio::time::Instant::now();
        let mut seq: u16 = rand::random();
        let mut ts: u32 = rand::random();
        for n in 0u64.. {
            let at = start + AUDIO_FRAME.mul_f64(n as f64);
            tokio::time::sleep_until(at).await;
            if tokio::time::Instant::now() > at + LATE {
                self.stats.late_ticks.fetch_add(1, Relaxed);
            }
            let payload = AudioStamp {
                tag: self.tag,
                seq,
                sent_us: now_us(),
            }
            .to_payload(AUDIO_PAYLOAD_LEN);
            let pkt = rtc::rtp::Packet {
                header: rtc::rtp::Header {
                    version: 2,
                    payload_type: *pt,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc: *ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(AUDIO_TS_STEP);
            match track.write_rtp(pkt).await {
                Ok(()) => {
                    self.stats.audio_packets.fetch_add(1, Relaxed);
                    self.stats
                        .bytes
                        .fetch_add(AUDIO_PAYLOAD_LEN as u64, Relaxed);
                }
                Err(_) => {
                    self.stats.send_errors.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// Receive-side accounting of one media kind.
#[derive(Debug, Default, Clone)]
pub struct KindTotals {
    pub packets: u64,
    pub bytes: u64,
    pub seq: SeqCounts,
    /// Receive time − send time, µs.
    pub latency: Histogram,
}

impl KindTotals {
    pub fn add(&mut self, o: &KindTotals) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.seq.add(&o.seq);
        self.latency.add(&o.latency);
    }

    pub fn since(&self, e: &KindTotals) -> KindTotals {
        KindTotals {
            packets: self.packets.saturating_sub(e.packets),
            bytes: self.bytes.saturating_sub(e.bytes),
            seq: self.seq.since(&e.seq),
            latency: self.latency.since(&e.latency),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecodeTotals {
    pub intact: u64,
    pub corrupt: u64,
    pub skipped: u64,
    pub errors: u64,
}

impl DecodeTotals {
    pub fn add(&mut self, o: &DecodeTotals) {
        self.intact += o.intact;
        self.corrupt += o.corrupt;
        self.skipped += o.skipped;
        self.errors += o.errors;
    }

    pub fn since(&self, e: &DecodeTotals) -> DecodeTotals {
        DecodeTotals {
            intact: self.intact.saturating_sub(e.intact),
            corrupt: self.corrupt.saturating_sub(e.corrupt),
            skipped: self.skipped.saturating_sub(e.skipped),
            errors: self.errors.saturating_sub(e.errors),
        }
    }
}

/// Everything one subscriber has received, summed over its tracks.
#[derive(Debug, Default, Clone)]
pub struct RxTotals {
    pub video: KindTotals,
    pub audio: KindTotals,
    pub decode: DecodeTotals,
    /// What arrived from each publisher (by tag).
    pub from: BTreeMap<u32, Heard>,
}

/// Packets from one publisher.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub video: u64,
    pub audio: u64,
    /// Stamps of the loop's IDR (frame 0): a decoder could start there.
    pub keyframes: u64,
}

impl RxTotals {
    pub fn add(&mut self, o: &RxTotals) {
        self.video.add(&o.video);
        self.audio.add(&o.audio);
        self.decode.add(&o.decode);
        for (tag, h) in &o.from {
            let e = self.from.entry(*tag).or_default();
            e.video += h.video;
            e.audio += h.audio;
            e.keyframes += h.keyframes;
        }
    }

    pub fn since(&self, e: &RxTotals) -> RxTotals {
        RxTotals {
            video: self.video.since(&e.video),
            audio: self.audio.since(&e.audio),
            decode: self.decode.since(&e.decode),
            from: self
                .from
                .iter()
                .map(|(t, h)| {
                    let h0 = e.from.get(t).copied().unwrap_or_default();
                    let h = Heard {
                        video: h.video.saturating_sub(h0.video),
                        audio: h.audio.saturating_sub(h0.audio),
                        keyframes: h.keyframes.saturating_sub(h0.keyframes),
                    };
                    (*t, h)
                })
                .collect(),
        }
    }

    /// Publishers from whom at least `video` video and `audio` audio packets arrived.
    pub fn publishers_heard(&self, video: u64, audio: u64) -> usize {
        self.from
            .values()
            .filter(|h| h.video >= video && h.audio >= audio)
            .count()
    }

    /// Publishers from whom a keyframe and some audio arrived: a picture could be shown.
    pub fn publishers_watchable(&self) -> usize {
        self.from
            .values()
            .filter(|h| h.keyframes > 0 && h.audio > 0)
            .count()
    }
}

struct TrackState {
    kind: RtpCodecKind,
    seq: SeqTracker,
    packets: u64,
    bytes: u64,
    latency: Histogram,
}

/// One subscriber's receive statistics (all of its tracks), updated per packet.
#[derive(Default)]
pub struct RxStats {
    tracks: Mutex<Vec<TrackState>>,
    decode: Mutex<DecodeTotals>,
    from: Mutex<BTreeMap<u32, Heard>>,
}

impl RxStats {
    pub fn totals(&self) -> RxTotals {
        let mut t = RxTotals::default();
        if let Ok(tracks) = self.tracks.lock() {
            for tr in tracks.iter() {
                let k = if tr.kind == RtpCodecKind::Video {
                    &mut t.video
                } else {
                    &mut t.audio
                };
                k.packets += tr.packets;
                k.bytes += tr.bytes;
                k.seq.add(&tr.seq.counts());
                k.latency.add(&tr.latency);
            }
        }
        if let Ok(d) = self.decode.lock() {
            t.decode = *d;
        }
        if let Ok(f) = self.from.lock() {
            t.from = f.clone();
        }
        t
    }

    fn new_track(&self, kind: RtpCodecKind) -> usize {
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        tracks.push(TrackState {
            kind,
            seq: SeqTracker::default(),
            packets: 0,
            bytes: 0,
            latency: Histogram::default(),
        });
        tracks.len() - 1
    }

    fn packet(&self, track: usize, seq: u16, bytes: usize, latency_us: Option<u64>) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tracks.get_mut(track) {
            t.seq.push(seq);
            t.packets += 1;
            t.bytes += bytes as u64;
            if let Some(l) = latency_us {
                t.latency.record(l);
            }
        }
    }

    fn heard(&self, tag: u32, video: bool, keyframe: bool) {
        let mut from = self.from.lock().unwrap_or_else(|e| e.into_inner());
        let e = from.entry(tag).or_default();
        if video {
            e.video += 1;
        } else {
            e.audio += 1;
        }
        if keyframe {
            e.keyframes += 1;
        }
    }

    fn decoded(&self, outcome: DecodeOutcome) {
        let mut d = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            DecodeOutcome::Intact => d.intact += 1,
            DecodeOutcome::Corrupt => d.corrupt += 1,
            DecodeOutcome::Skipped => d.skipped += 1,
            DecodeOutcome::Error => d.errors += 1,
        }
    }
}

/// Starts a reader task per remote track.
struct TrackSink {
    ctx: Arc<Context>,
    stats: Arc<RxStats>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl TrackSink {
    fn spawn(&self, track: Arc<dyn TrackRemote>) {
        let h = tokio::spawn(read_track(track, self.ctx.clone(), self.stats.clone()));
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    fn abort_all(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Which publisher a video track comes from and how to map its sequence numbers back.
struct VideoOrigin {
    tag: u32,
    /// received seq − original seq
    offset: u16,
    log: Option<Arc<SendLog>>,
}

/// Reassembles access units for the decoder (only with `--decode`).
struct Assembler {
    checker: FrameChecker,
    ts: Option<u32>,
    index: Option<u32>,
    payloads: Vec<Bytes>,
    broken: bool,
    next_seq: Option<u16>,
}

impl Assembler {
    fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &Bytes, stamp_index: Option<u32>) {
        if let Some(expected) = self.next_seq {
            if seq != expected {
                self.broken = true;
            }
        }
        self.next_seq = Some(seq.wrapping_add(1));
        if self.ts != Some(ts) {
            if self.ts.is_some() && !self.payloads.is_empty() {
                // the previous frame never saw its marker
                self.checker.send(DecoderInput::Lost);
            }
            self.ts = Some(ts);
            self.payloads.clear();
            self.index = None;
            self.broken = false;
        }
        if let Some(i) = stamp_index {
            self.index = Some(i);
        }
        self.payloads.push(payload.clone());
        if !marker {
            return;
        }
        self.ts = None;
        let payloads = std::mem::take(&mut self.payloads);
        let (Some(index), false) = (self.index.take(), self.broken) else {
            self.checker.send(DecoderInput::Lost);
            return;
        };
        let mut depay = H264Packet::default();
        let mut annexb = Vec::new();
        for p in &payloads {
            match depay.depacketize(p) {
                Ok(nal) => annexb.extend_from_slice(&nal),
                Err(_) => {
                    self.checker.send(DecoderInput::Lost);
                    return;
                }
            }
        }
        self.checker.send(DecoderInput::Frame { annexb, index });
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, ctx: Arc<Context>, stats: Arc<RxStats>) {
    let kind = track.kind().await;
    let index = stats.new_track(kind);
    let mut origin: Option<VideoOrigin> = None;
    let mut assembler = match (&ctx.decode, kind) {
        (Some(lp), RtpCodecKind::Video) => {
            let s = stats.clone();
            FrameChecker::spawn(lp.clone(), move |o| s.decoded(o))
                .ok()
                .map(|checker| Assembler {
                    checker,
                    ts: None,
                    index: None,
                    payloads: Vec::new(),
                    broken: false,
                    next_seq: None,
                })
        }
        _ => None,
    };
    let mut last_pli = Instant::now() - Duration::from_secs(10);
    while let Some(event) = track.poll().await {
        let pkt = match event {
            TrackRemoteEvent::OnRtpPacket(pkt) => pkt,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let now = now_us();
        let seq = pkt.header.sequence_number;
        let latency = match kind {
            RtpCodecKind::Video => {
                let mut stamp_index = None;
                if pkt.payload.first().map(|b| b & 0x1f) == Some(NAL_SEI) {
                    if let Some(stamp) = VideoStamp::from_sei(&pkt.payload) {
                        stamp_index = Some(stamp.frame);
                        let same = origin.as_ref().is_some_and(|o| o.tag == stamp.tag);
                        let log = if same {
                            origin.as_mut().and_then(|o| o.log.take())
                        } else {
                            ctx.log_for(stamp.tag)
                        };
                        origin = Some(VideoOrigin {
                            tag: stamp.tag,
                            offset: seq.wrapping_sub(stamp.seq),
                            log,
                        });
                    }
                }
                if let Some(a) = assembler.as_mut() {
                    let was_broken = a.broken;
                    a.push(
                        seq,
                        pkt.header.timestamp,
                        pkt.header.marker,
                        &pkt.payload,
                        stamp_index,
                    );
                    // A decoding receiver asks for a keyframe after a loss, as a browser would.
                    if a.broken && !was_broken && last_pli.elapsed() > Duration::from_secs(1) {
                        last_pli = Instant::now();
                        let media_ssrc = pkt.header.ssrc;
                        let _ = track
                            .write_rtcp(vec![Box::new(PictureLossIndication {
                                sender_ssrc: 0,
                                media_ssrc,
                            })])
                            .await;
                    }
                }
                match &origin {
                    Some(o) => {
                        stats.heard(o.tag, true, stamp_index == Some(0));
                        o.log.as_ref().and_then(|log| {
                            let sent = log.get(seq.wrapping_sub(o.offset));
                            (sent > 0 && sent <= now && now - sent < 10_000_000)
                                .then_some(now - sent)
                        })
                    }
                    None => None,
                }
            }
            _ => match AudioStamp::from_payload(&pkt.payload) {
                Some(stamp) => {
                    stats.heard(stamp.tag, false, false);
                    (stamp.sent_us <= now).then_some(now - stamp.sent_us)
                }
                None => None,
            },
        };
        stats.packet(index, seq, pkt.payload.len(), latency);
    }
}

/// A receiving connection: the server (or Janus) offers, we answer.
pub struct Subscription {
    pc: Arc<dyn PeerConnection>,
    watch: Arc<PcWatch>,
    sink: Arc<TrackSink>,
    pub counters: Arc<RtcpCounters>,
    answered: bool,
}

impl Subscription {
    pub async fn new(ctx: &Arc<Context>, stats: Arc<RxStats>) -> Result<Subscription> {
        let watch = new_watch();
        let counters = Arc::new(RtcpCounters::default());
        let sink = Arc::new(TrackSink {
            ctx: ctx.clone(),
            stats,
            tasks: Mutex::new(Vec::new()),
        });
        let pc = build_pc(ctx, watch.clone(), Some(sink.clone()), counters.clone()).await?;
        Ok(Subscription {
            pc,
            watch,
            sink,
            counters,
            answered: false,
        })
    }

    /// Answers an offer (the first answer waits for gathering, so it carries our candidates).
    pub async fn answer(&mut self, offer_sdp: String) -> Result<String> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer_sdp.clone())?)
            .await
            .context("set_remote_description(offer)")?;
        if !self.answered {
            dial_tcp_candidates(self.sink.ctx.tcp, &self.pc, &offer_sdp).await;
        }
        let answer = self.pc.create_answer(None).await.context("create_answer")?;
        self.pc
            .set_local_description(answer)
            .await
            .context("set_local_description(answer)")?;
        let sdp = if self.answered {
            self.pc
                .local_description()
                .await
                .ok_or_else(|| anyhow!("no local description"))?
                .sdp
        } else {
            local_sdp(&self.pc, &self.watch).await?
        };
        self.answered = true;
        Ok(sdp)
    }

    pub async fn close(self) {
        self.sink.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.pc.close()).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.sink.abort_all();
    }
}
