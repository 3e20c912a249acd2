//! Browser-like `rtc` peers connected to an [`Engine`] in memory, on a fake clock.
//!
//! A [`Mesh`] is one engine, a publisher (one H.264 track) and a subscriber to it, with
//! datagrams handed between them directly (no sockets) and time advanced by hand. Once
//! [`Mesh::connect`] returns, both connections have DTLS/SRTP up and the subscriber has
//! received forwarded media, so whatever a client then sends goes through its own SRTP and
//! reaches the engine's forwarding path decrypted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab::media::api::{
    Command, EngineConfig, ExternalTrack, MediaEvent, Output, ParticipantKey, Transmit,
};
use confab::media::engine::Engine;
use confab::metrics::Metrics;
use confab::names::{ParticipantId, RoomName};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_H264};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

pub const ENGINE_ADDR: &str = "127.0.0.1:9000";
pub const PUBLISHER_SSRC: u32 = 0x1234_5678;
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// An IDR slice as a single NAL unit: what starts a subscription.
pub const KEYFRAME: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33, 0xff, 0xfe, 0xf6, 0xf0, 0xfe];

pub fn room() -> RoomName {
    RoomName::parse("fuzz").expect("a valid name")
}

pub fn h264() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A client peer connection with one host candidate at `addr`.
pub fn client_pc(now: Instant, addr: SocketAddr) -> RTCPeerConnection {
    let mut media = MediaEngine::default();
    media
        .register_default_codecs()
        .expect("default codecs register");
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .build(now)
        .expect("a client peer connection");
    pc.add_local_candidate(confab::media::peer::host_candidate(addr).expect("a host candidate"))
        .expect("local candidate");
    pc
}

/// A publish offer for one H.264 track, as a browser would make it (for seeds and tests).
pub fn publish_offer(now: Instant) -> String {
    let mut pc = client_pc(now, "127.0.0.1:5001".parse().unwrap());
    add_h264_track(&mut pc);
    let offer = pc.create_offer(None).expect("an offer");
    offer.sdp
}

fn add_h264_track(pc: &mut RTCPeerConnection) -> rtc::rtp_transceiver::RTCRtpSenderId {
    let track = MediaStreamTrack::new(
        "fuzz-stream".to_owned(),
        "fuzz-video".to_owned(),
        "fuzz-video".to_owned(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(PUBLISHER_SSRC),
                ..Default::default()
            },
            codec: h264(),
            ..Default::default()
        }],
    );
    pc.add_track(track).expect("a track")
}

pub struct Client {
    pub pc: RTCPeerConnection,
    pub addr: SocketAddr,
    pub key: ParticipantKey,
    events: VecDeque<MediaEvent>,
    pub state: RTCPeerConnectionState,
    /// RTP packets that reached this client.
    pub received: usize,
    /// The subscribe offer's and the answer's SDP, for seeds.
    pub sdps: Vec<String>,
}

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Publisher,
    Subscriber,
}

pub struct Mesh {
    pub engine: Engine,
    pub now: Instant,
    pub engine_addr: SocketAddr,
    pub publisher: Client,
    pub subscriber: Client,
    /// The payload type the publisher sends H.264 with.
    pub pt: u8,
    pub seq: u16,
    scratch: Vec<Transmit>,
}

/// An engine for the fuzz harness: one candidate, a fixed seed.
pub fn engine() -> Engine {
    let config = EngineConfig {
        candidates: vec![ENGINE_ADDR.parse().unwrap()],
        seed: 1,
        ..Default::default()
    };
    Engine::new(config, Arc::new(Metrics::default()))
}

/// Everything the engine has to say until it waits: datagrams, and events by participant.
pub fn drain(engine: &mut Engine) -> (Vec<Transmit>, Vec<(ParticipantKey, MediaEvent)>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    loop {
        match engine.poll_output() {
            Output::Transmit(t) => sent.push(t),
            Output::Event(key, ev) => events.push((key, ev)),
            Output::Timeout(_) => return (sent, events),
            _ => {}
        }
    }
}

impl Mesh {
    /// An engine with a publisher and a subscriber, connected; `None` if that failed within
    /// 30 s of fake time.
    pub fn connect() -> Option<Mesh> {
        let now = Instant::now();
        let engine_addr: SocketAddr = ENGINE_ADDR.parse().unwrap();
        let mut engine = engine();
        let mut client = |key: u64, port: u16| {
            engine.handle_command(
                now,
                Command::Join {
                    key: ParticipantKey(key),
                    room: room(),
                    id: ParticipantId::parse(&format!("p{key}")).unwrap(),
                },
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Client {
                pc: client_pc(now, addr),
                addr,
                key: ParticipantKey(key),
                events: VecDeque::new(),
                state: RTCPeerConnectionState::New,
                received: 0,
                sdps: Vec::new(),
            }
        };
        let mut publisher = client(1, 5001);
        let subscriber = client(2, 5002);
        add_h264_track(&mut publisher.pc);
        let offer = publisher.pc.create_offer(None).ok()?;
        publisher
            .pc
            .set_local_description(now, offer.clone())
            .ok()?;
        publisher.sdps.push(offer.sdp.clone());
        engine.handle_command(
            now,
            Command::Publish {
                key: publisher.key,
                sdp: offer.sdp,
            },
        );
        let mut mesh = Mesh {
            engine,
            now,
            engine_addr,
            publisher,
            subscriber,
            pt: 0,
            seq: 0,
            scratch: Vec::new(),
        };
        let mut next_frame = now;
        for _ in 0..30_000 {
            mesh.step(Duration::from_millis(1)).ok()?;
            if mesh.publisher.state == RTCPeerConnectionState::Connected && mesh.now >= next_frame {
                next_frame = mesh.now + Duration::from_millis(33);
                mesh.pt = mesh.negotiated_pt()?;
                mesh.send_h264(false, 0, KEYFRAME);
            }
            if mesh.connected() && mesh.subscriber.received > 0 {
                return Some(mesh);
            }
        }
        None
    }

    pub fn connected(&self) -> bool {
        self.publisher.state == RTCPeerConnectionState::Connected
            && self.subscriber.state == RTCPeerConnectionState::Connected
    }

    fn negotiated_pt(&mut self) -> Option<u8> {
        let sender_id = self.publisher.pc.get_senders().next()?;
        let mut sender = self.publisher.pc.rtp_sender(sender_id)?;
        let params = sender.get_parameters();
        params.rtp_parameters.codecs.first().map(|c| c.payload_type)
    }

    pub fn client(&mut self, who: Who) -> &mut Client {
        match who {
            Who::Publisher => &mut self.publisher,
            Who::Subscriber => &mut self.subscriber,
        }
    }

    /// The publisher's next H.264 packet on its negotiated SSRC and payload type.
    pub fn send_h264(&mut self, marker: bool, ts: u32, payload: &[u8]) {
        self.seq = self.seq.wrapping_add(1);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: self.pt,
                sequence_number: self.seq,
                timestamp: ts,
                ssrc: PUBLISHER_SSRC,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        self.send(Who::Publisher, RTCMessage::RtpPacket(String::new(), packet));
    }

    /// Hands a message to a client's own pipeline (interceptors, SRTP): what the engine gets
    /// is encrypted with that client's keys.
    pub fn send(&mut self, who: Who, message: RTCMessage) {
        let now = self.now;
        let _ = self
            .client(who)
            .pc
            .handle_write(TaggedRTCMessage { now, message });
    }

    /// A datagram as it is, from a client's address straight to the engine.
    pub fn send_raw(&mut self, who: Who, data: &[u8]) {
        let from = self.client(who).addr;
        self.engine
            .handle_datagram(self.now, self.engine_addr, from, data);
    }

    /// Moves everything queued, lets `step` of time pass and runs what is due.
    pub fn step(&mut self, step: Duration) -> Result<(), String> {
        self.now += step;
        let now = self.now;
        self.pump()?;
        for who in [Who::Publisher, Who::Subscriber] {
            self.client_events(who)?;
        }
        for who in [Who::Publisher, Who::Subscriber] {
            let from = self.client(who).addr;
            while let Some(t) = self.client(who).pc.poll_write() {
                self.engine
                    .handle_datagram(now, self.engine_addr, from, &t.message);
            }
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.pump()?;
        for who in [Who::Publisher, Who::Subscriber] {
            let c = self.client(who);
            if c.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = c.pc.handle_timeout(now);
            }
            while let Some(ev) = c.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    c.state = s;
                }
            }
            while let Some(m) = c.pc.poll_read() {
                if let RTCMessage::RtpPacket(..) = m.message {
                    c.received += 1;
                }
            }
        }
        Ok(())
    }

    /// Hands what the engine wants sent to the clients: datagrams to their connections,
    /// events to their signaling sessions.
    fn pump(&mut self) -> Result<(), String> {
        let now = self.now;
        let mut out = std::mem::take(&mut self.scratch);
        loop {
            match self.engine.poll_output() {
                Output::Transmit(t) => out.push(t),
                Output::Event(key, ev) => {
                    if key == self.publisher.key {
                        self.publisher.events.push_back(ev);
                    } else if key == self.subscriber.key {
                        self.subscriber.events.push_back(ev);
                    }
                }
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        for t in out.drain(..) {
            let to = t.destination;
            let client = if to == self.publisher.addr {
                &mut self.publisher
            } else if to == self.subscriber.addr {
                &mut self.subscriber
            } else {
                return Err(format!("the engine sent to {to}, which is nobody"));
            };
            let _ = client.pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: to,
                    peer_addr: t.source,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: t.contents,
            });
        }
        self.scratch = out;
        Ok(())
    }

    /// What the engine told a client's signaling session, acted on as a browser would.
    fn client_events(&mut self, who: Who) -> Result<(), String> {
        let now = self.now;
        let c = self.client(who);
        let mut answer = None;
        while let Some(ev) = c.events.pop_front() {
            match ev {
                MediaEvent::Answer { sdp } => {
                    c.sdps.push(sdp.clone());
                    let answer = RTCSessionDescription::answer(sdp).map_err(|e| e.to_string())?;
                    c.pc.set_remote_description(now, answer)
                        .map_err(|e| e.to_string())?;
                }
                MediaEvent::Offer { sdp, revision, .. } => {
                    c.sdps.push(sdp.clone());
                    let offer = RTCSessionDescription::offer(sdp).map_err(|e| e.to_string())?;
                    c.pc.set_remote_description(now, offer)
                        .map_err(|e| e.to_string())?;
                    let a = c.pc.create_answer(None).map_err(|e| e.to_string())?;
                    c.pc.set_local_description(now, a.clone())
                        .map_err(|e| e.to_string())?;
                    c.sdps.push(a.sdp.clone());
                    answer = Some((a.sdp, revision));
                }
                MediaEvent::Candidate { candidate, .. } => {
                    let _ = c.pc.add_remote_candidate(RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_m_line_index,
                        username_fragment: candidate.username_fragment,
                        ..Default::default()
                    });
                }
                MediaEvent::Failed { reason } | MediaEvent::Unreachable { reason } => return Err(reason),
                MediaEvent::Error { message, .. } => return Err(message),
                MediaEvent::TracksChanged { .. } => {}
            }
        }
        let key = c.key;
        if let Some((sdp, revision)) = answer {
            self.engine
                .handle_command(now, Command::SubscribeAnswer { key, sdp, revision });
        }
        Ok(())
    }
}

/// An engine with a camera (external H.264 track) and a browser participant that has been
/// offered it: what a subscribe answer is judged against.
pub struct Offered {
    pub engine: Engine,
    pub now: Instant,
    pub events: Vec<(ParticipantKey, MediaEvent)>,
    pub revision: u64,
}

impl Offered {
    pub fn new() -> Offered {
        let now = Instant::now();
        let mut engine = engine();
        engine.handle_command(
            now,
            Command::Join {
                key: ParticipantKey(1),
                room: room(),
                id: ParticipantId::parse("browser").unwrap(),
            },
        );
        engine.handle_command(
            now,
            Command::ExternalJoin {
                key: ParticipantKey(2),
                room: room(),
                id: ParticipantId::parse("camera").unwrap(),
            },
        );
        engine.handle_command(
            now,
            Command::ExternalTracks {
                key: ParticipantKey(2),
                tracks: vec![ExternalTrack {
                    public_id: "camera-v0".to_owned(),
                    kind: confab::protocol::MediaKind::Video,
                    codec: h264(),
                }],
            },
        );
        let (_, events) = drain(&mut engine);
        let revision = events
            .iter()
            .filter_map(|(_, ev)| match ev {
                MediaEvent::Offer { revision, .. } => Some(*revision),
                _ => None,
            })
            .last()
            .unwrap_or(0);
        Offered {
            engine,
            now,
            events,
            revision,
        }
    }
}

impl Default for Offered {
    fn default() -> Self {
        Self::new()
    }
}
