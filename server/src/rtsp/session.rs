//! The RTSP state machine of one connection (RFC 2326 §A.2, server side), sans I/O.
//!
//! It takes parsed requests, the bridge's answers, notes of media activity and the time, and
//! queues [`Output`]s for the shell: responses to write, bridge calls to make, packets to
//! send, and the session's start and end. It never blocks and never reads a clock.
//!
//! A connection carries at most one RTSP session at a time, created by the first SETUP and
//! ended by TEARDOWN, by [`SESSION_TIMEOUT`] without any request or RTP/RTCP from the client,
//! or by the connection closing. The session is either a publisher (ANNOUNCE → SETUP… →
//! RECORD) or a player (DESCRIBE → SETUP… → PLAY, PAUSE, PLAY…).
//!
//! Requests are handled one at a time: when one needs the bridge (DESCRIBE, RECORD, PLAY) the
//! session queues an [`Output::Call`] and waits for [`Session::handle_bridge`] before it takes
//! the next request, so responses go out in request order.
//!
//! Status codes (RFC 2326 §7.1.1): malformed requests, URLs and names get 400 with a reason
//! phrase saying what is wrong; a method in the wrong state 455; a wrong `Session` 454; a
//! transport the server cannot serve 461; an unknown method 501. Bridge errors map as
//! [`BridgeError`] documents: 404, 409, 400, 503.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::message::{FrameError, Method, Request, Response};
use super::sdp;
use super::sender::RtpSender;
use super::transport::{self, Lower, Reply, ReplyKind, Spec};
use crate::bridge::{BridgeError, InputTrack, OutputTrack, PlaybackEvent};
use crate::media::api::TrackKey;
use crate::names::{ParticipantId, RoomName};

/// How long a session lives without hearing from its client (announced in `Session:
/// …;timeout=60`, RFC 2326 §12.37).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// Most media sections an ANNOUNCE may have.
pub const MAX_TRACKS: usize = 16;

/// The methods served, for OPTIONS (`Public`) and 501 answers.
pub const PUBLIC: &str = "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, \
                          GET_PARAMETER, SET_PARAMETER";

#[derive(Debug, Clone)]
pub struct Config {
    /// [`SESSION_TIMEOUT`] except in tests.
    pub timeout: Duration,
    /// The client's address: UDP media goes to this IP only.
    pub peer: SocketAddr,
    /// The server's shared UDP pair, if it could be bound.
    pub udp: Option<UdpPorts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPorts {
    pub rtp: u16,
    pub rtcp: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Publish,
    Play,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Publish => "publish",
            Mode::Play => "play",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PacketKind {
    Rtp,
    Rtcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Teardown,
    /// Nothing from the client for the session timeout.
    Timeout,
    /// The played participant left.
    SourceGone,
    /// The connection closed (or the server is stopping).
    Closed,
    /// The client broke the framing; the connection is closed.
    BadStream,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Teardown => "teardown",
            EndReason::Timeout => "timeout",
            EndReason::SourceGone => "participant left",
            EndReason::Closed => "connection closed",
            EndReason::BadStream => "malformed input",
        }
    }
}

/// What a client presented to enter a protected room: `Authorization: Basic` (its password,
/// or a join token in the password's place) or `?token=` in the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub password: Option<String>,
    pub token: Option<String>,
}

/// Why a client may not go on (the shell's answer to [`Call::Authorize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401 with `WWW-Authenticate`: nothing or something wrong was presented.
    Unauthorized(String),
    /// 403: admitted, but not for this (a viewer publishing).
    Forbidden(String),
    /// 503 with `Retry-After` (seconds): too many failures from this address.
    Throttled { message: String, retry_after: u64 },
}

/// The realm clients are asked for credentials in.
pub const REALM: &str = "confab";

/// A bridge call the shell makes, answering with the matching [`Answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// May this client publish into (`publish`) or play from `room`?
    Authorize {
        room: RoomName,
        publish: bool,
        credentials: Credentials,
    },
    Describe {
        room: RoomName,
        id: ParticipantId,
    },
    /// Publish `tracks`; packets then arrive for indexes into this list ([`Ingest::track`],
    /// [`UdpRoute::track`]).
    Publish {
        room: RoomName,
        id: ParticipantId,
        tracks: Vec<InputTrack>,
    },
    Play {
        room: RoomName,
        id: ParticipantId,
        tracks: Vec<TrackKey>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Authorize(Result<(), Refusal>),
    Describe(Result<Vec<OutputTrack>, BridgeError>),
    Publish(Result<(), BridgeError>),
    Play(Result<(), BridgeError>),
}

/// Where a packet to a player goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// In the connection, on this channel.
    Interleaved(u8),
    /// To `to`, from the server's RTCP socket if `rtcp`, else from its RTP socket.
    Udp { to: SocketAddr, rtcp: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A header of the session's making and the bridge's payload, shared, not copied.
    Rtp {
        header: [u8; 12],
        payload: Bytes,
    },
    Rtcp(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Destination,
    pub packet: Packet,
}

/// Datagrams from `from` on the server's RTP or RTCP socket (`kind`) belong to this session's
/// track `track` (published index for a publisher, set-up index for a player).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRoute {
    pub from: SocketAddr,
    pub kind: PacketKind,
    pub track: usize,
}

/// An interleaved frame of a publisher: feed it to the publisher's track `track`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingest {
    pub track: usize,
    pub kind: PacketKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Response(Response),
    Call(Call),
    /// A session began (first SETUP).
    Started {
        id: String,
        mode: Mode,
        room: RoomName,
        participant: ParticipantId,
        lower: Lower,
    },
    /// The session ended; its UDP routes are void.
    Ended {
        id: String,
        reason: EndReason,
    },
    /// Drop the publisher (the camera leaves the room).
    Unpublish,
    /// Drop the playback tap (PAUSE, end).
    StopPlayback,
    /// Route these sources' datagrams to this connection (after RECORD or PLAY).
    RouteUdp(Vec<UdpRoute>),
    Transmit(Transmit),
    /// Close the connection once what is queued is written.
    Close,
}

/// The per-connection state machine; see the module docs.
pub struct Session {
    config: Config,
    rng: StdRng,
    last_activity: Instant,
    state: State,
    /// The RTSP session id, from the first SETUP until the session ends.
    id: Option<String>,
    pending: Option<Pending>,
    outputs: VecDeque<Output>,
    closed: bool,
}

enum State {
    Idle,
    Publish(Publish),
    Play(Play),
}

#[derive(Debug, Clone)]
struct Target {
    room: RoomName,
    id: ParticipantId,
    /// `rtsp://host:port/{room}/{id}`, as the client addressed it.
    base: String,
}

struct Publish {
    target: Target,
    tracks: Vec<InputTrack>,
    setup: Vec<Option<Transport>>,
    /// Once RECORD succeeded: the announced index of each published track.
    published: Option<Vec<usize>>,
}

struct Play {
    target: Target,
    tracks: Vec<OutputTrack>,
    setup: Vec<Option<PlayTrack>>,
    playing: bool,
    /// The RTCP CNAME of all tracks: it tells the player they belong together.
    cname: String,
}

struct PlayTrack {
    transport: Transport,
    /// The track's URL as the client wrote it in SETUP (for RTP-Info).
    url: String,
    sender: RtpSender,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Interleaved { rtp: u8, rtcp: u8 },
    Udp { rtp: SocketAddr, rtcp: SocketAddr },
}

impl Transport {
    fn lower(self) -> Lower {
        match self {
            Transport::Interleaved { .. } => Lower::Tcp,
            Transport::Udp { .. } => Lower::Udp,
        }
    }

    fn destination(self, kind: PacketKind) -> Destination {
        match (self, kind) {
            (Transport::Interleaved { rtp, .. }, PacketKind::Rtp) => Destination::Interleaved(rtp),
            (Transport::Interleaved { rtcp, .. }, PacketKind::Rtcp) => {
                Destination::Interleaved(rtcp)
            }
            (Transport::Udp { rtp, .. }, PacketKind::Rtp) => Destination::Udp {
                to: rtp,
                rtcp: false,
            },
            (Transport::Udp { rtcp, .. }, PacketKind::Rtcp) => Destination::Udp {
                to: rtcp,
                rtcp: true,
            },
        }
    }

    fn routes(self, track: usize) -> [Option<UdpRoute>; 2] {
        match self {
            Transport::Interleaved { .. } => [None, None],
            Transport::Udp { rtp, rtcp } => [
                Some(UdpRoute {
                    from: rtp,
                    kind: PacketKind::Rtp,
                    track,
                }),
                Some(UdpRoute {
                    from: rtcp,
                    kind: PacketKind::Rtcp,
                    track,
                }),
            ],
        }
    }
}

struct Pending {
    cseq: u32,
    kind: PendingKind,
}

enum PendingKind {
    /// ANNOUNCE waits for [`Call::Authorize`]; then the session is this publisher.
    Announce(Publish),
    /// DESCRIBE waits for [`Call::Authorize`], then for [`Call::Describe`].
    AuthorizeDescribe(Target),
    Describe(Target),
    Publish,
    Play,
}

/// A refusal: status and what to tell the client.
#[derive(Debug)]
struct Reject {
    status: u16,
    message: String,
}

fn reject(status: u16, message: impl Into<String>) -> Reject {
    Reject {
        status,
        message: message.into(),
    }
}

type Handled = Result<Option<Response>, Reject>;

impl Session {
    /// A new connection's state. `seed` drives session ids, SSRCs and initial sequence
    /// numbers and timestamps (the shell passes a random one; tests a fixed one).
    pub fn new(config: Config, seed: u64, now: Instant) -> Self {
        Session {
            config,
            rng: StdRng::seed_from_u64(seed),
            last_activity: now,
            state: State::Idle,
            id: None,
            pending: None,
            outputs: VecDeque::new(),
            closed: false,
        }
    }

    /// The RTSP session id, while a session is open.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.last_activity + self.config.timeout;
        if let State::Play(p) = &self.state {
            if p.playing {
                for t in p.setup.iter().flatten() {
                    if let Some(r) = t.sender.next_report() {
                        at = at.min(r);
                    }
                }
            }
        }
        at
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if now >= self.last_activity + self.config.timeout {
            self.end(EndReason::Timeout);
            self.close();
            return;
        }
        if let State::Play(p) = &mut self.state {
            if !p.playing {
                return;
            }
            for t in p.setup.iter_mut().flatten() {
                if let Some(report) = t.sender.poll_report(now, &p.cname) {
                    self.outputs.push_back(Output::Transmit(Transmit {
                        to: t.transport.destination(PacketKind::Rtcp),
                        packet: Packet::Rtcp(report),
                    }));
                }
            }
        }
    }

    /// The connection is gone (or the server is stopping).
    pub fn handle_close(&mut self) {
        if !self.closed {
            self.end(EndReason::Closed);
            self.closed = true;
        }
    }

    /// The client's stream cannot be framed: answer 400 and close.
    pub fn handle_frame_error(&mut self, error: &FrameError) {
        if self.closed {
            return;
        }
        let mut response = Response::error(400, &error.to_string());
        if let Some(cseq) = error.cseq {
            response.headers.insert(0, ("CSeq", cseq.to_string()));
        }
        self.outputs.push_back(Output::Response(response));
        self.end(EndReason::BadStream);
        self.close();
    }

    /// An interleaved frame arrived on `channel`: what it is, if it is a publisher's media.
    pub fn handle_interleaved(&mut self, channel: u8, now: Instant) -> Option<Ingest> {
        self.last_activity = now;
        let State::Publish(p) = &self.state else {
            // A player's receiver reports, or noise: activity all the same.
            return None;
        };
        let published = p.published.as_ref()?;
        published
            .iter()
            .enumerate()
            .find_map(|(track, &announced)| match p.setup[announced]? {
                Transport::Interleaved { rtp, .. } if rtp == channel => Some(Ingest {
                    track,
                    kind: PacketKind::Rtp,
                }),
                Transport::Interleaved { rtcp, .. } if rtcp == channel => Some(Ingest {
                    track,
                    kind: PacketKind::Rtcp,
                }),
                _ => None,
            })
    }

    /// A datagram from one of this session's UDP routes arrived.
    pub fn handle_udp(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// A packet or report from the playback tap.
    pub fn handle_playback(&mut self, event: PlaybackEvent, now: Instant) {
        let State::Play(p) = &mut self.state else {
            return;
        };
        if !p.playing {
            return;
        }
        let key = match &event {
            PlaybackEvent::Rtp { track, .. } | PlaybackEvent::SenderReport { track, .. } => *track,
        };
        let Some(t) = p.tracks.iter().zip(p.setup.iter_mut()).find_map(|(o, t)| {
            if o.key == key {
                t.as_mut()
            } else {
                None
            }
        }) else {
            return;
        };
        match event {
            PlaybackEvent::Rtp {
                marker,
                seq,
                ts,
                payload,
                ..
            } => {
                let header = t.sender.rtp(marker, seq, ts, payload.len(), now);
                self.outputs.push_back(Output::Transmit(Transmit {
                    to: t.transport.destination(PacketKind::Rtp),
                    packet: Packet::Rtp { header, payload },
                }));
            }
            PlaybackEvent::SenderReport { ntp, rtp, .. } => t.sender.sender_report(ntp, rtp, now),
        }
    }

    /// The playback tap ended: the participant left (or the server is stopping). Over TCP
    /// the session ends and the connection closes, which a player notices at once; over UDP
    /// sending stops and the session waits for TEARDOWN or its timeout.
    pub fn handle_playback_end(&mut self, _now: Instant) {
        let State::Play(p) = &mut self.state else {
            return;
        };
        if !p.playing {
            return;
        }
        p.playing = false;
        let tcp = p
            .setup
            .iter()
            .flatten()
            .any(|t| t.transport.lower() == Lower::Tcp);
        for t in p.setup.iter_mut().flatten() {
            t.sender.stop();
        }
        self.outputs.push_back(Output::StopPlayback);
        if tcp {
            self.end(EndReason::SourceGone);
            self.close();
        }
    }

    /// One request. Its response (or a bridge call) is queued.
    pub fn handle_request(&mut self, req: Request, now: Instant) {
        if self.closed {
            return;
        }
        self.last_activity = now;
        let cseq = match req.header("CSeq").map(|v| (v, v.trim().parse::<u32>())) {
            Some((_, Ok(cseq))) => cseq,
            Some((v, Err(_))) => {
                let message = format!("CSeq {v:?} is not a number");
                self.outputs
                    .push_back(Output::Response(Response::error(400, &message)));
                return;
            }
            None => {
                self.outputs.push_back(Output::Response(Response::error(
                    400,
                    "the request has no CSeq header",
                )));
                return;
            }
        };
        if self.pending.is_some() {
            // The shell hands over one request at a time; this is a bug in it.
            self.respond_error(
                cseq,
                reject(
                    500,
                    "a request arrived before the previous one was answered",
                ),
            );
            return;
        }
        if req.version != "RTSP/1.0" {
            let message = format!("{} is not served; use RTSP/1.0", req.version);
            self.respond_error(cseq, reject(505, message));
            return;
        }
        if let Some(required) = req.header("Require") {
            let message = format!("no option is supported (Require: {required})");
            let response = Response::error(551, &message).with_header("Unsupported", required);
            self.respond(cseq, response);
            return;
        }
        let handled = match &req.method {
            Method::Options => Ok(Some(Response::new(200).with_header("Public", PUBLIC))),
            Method::Announce => self.announce(&req, cseq),
            Method::Describe => self.describe(&req, cseq),
            Method::Setup => self.setup(&req, now),
            Method::Record => self.record(&req, cseq),
            Method::Play => self.play(&req, cseq),
            Method::Pause => self.pause(&req),
            Method::Teardown => self.teardown(&req),
            Method::GetParameter | Method::SetParameter => self.parameter(&req),
            Method::Other(name) => {
                let message = format!("{name} is not supported");
                let response = Response::error(501, &message).with_header("Public", PUBLIC);
                Ok(Some(response))
            }
        };
        match handled {
            Ok(Some(response)) => self.respond(cseq, response),
            Ok(None) => {}
            Err(r) => self.respond_error(cseq, r),
        }
    }

    /// The answer to the queued [`Output::Call`].
    pub fn handle_bridge(&mut self, answer: Answer, now: Instant) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if self.closed {
            return;
        }
        let cseq = pending.cseq;
        let handled = match (pending.kind, answer) {
            (_, Answer::Authorize(Err(refusal))) => {
                self.respond(cseq, refusal_response(&refusal));
                return;
            }
            (PendingKind::Announce(publish), Answer::Authorize(Ok(()))) => {
                self.state = State::Publish(publish);
                Ok(Some(Response::new(200)))
            }
            (PendingKind::AuthorizeDescribe(target), Answer::Authorize(Ok(()))) => {
                self.outputs.push_back(Output::Call(Call::Describe {
                    room: target.room.clone(),
                    id: target.id.clone(),
                }));
                self.pending = Some(Pending {
                    cseq,
                    kind: PendingKind::Describe(target),
                });
                return;
            }
            (PendingKind::Describe(target), Answer::Describe(result)) => {
                self.described(target, result)
            }
            (PendingKind::Publish, Answer::Publish(result)) => self.recording(result),
            (PendingKind::Play, Answer::Play(result)) => self.playing(result, now),
            _ => Err(reject(500, "the bridge answered another question")),
        };
        match handled {
            Ok(Some(response)) => self.respond(cseq, response),
            Ok(None) => {}
            Err(r) => self.respond_error(cseq, r),
        }
    }

    fn respond(&mut self, cseq: u32, mut response: Response) {
        response.headers.insert(0, ("CSeq", cseq.to_string()));
        if let Some(id) = &self.id {
            if response.header("Session").is_none() {
                let value = format!("{id};timeout={}", self.config.timeout.as_secs());
                response.headers.insert(1, ("Session", value));
            }
        }
        self.outputs.push_back(Output::Response(response));
    }

    fn respond_error(&mut self, cseq: u32, r: Reject) {
        self.respond(cseq, Response::error(r.status, &r.message));
    }

    fn close(&mut self) {
        self.closed = true;
        self.outputs.push_back(Output::Close);
    }

    /// Ends the session (if any) and forgets the connection's state.
    fn end(&mut self, reason: EndReason) {
        match &mut self.state {
            State::Publish(p) if p.published.is_some() => {
                self.outputs.push_back(Output::Unpublish);
            }
            State::Play(p) if p.playing => {
                self.outputs.push_back(Output::StopPlayback);
            }
            _ => {}
        }
        self.state = State::Idle;
        if let Some(id) = self.id.take() {
            self.outputs.push_back(Output::Ended { id, reason });
        }
    }

    /// A `Session` header, if given, must name this connection's session (§12.37).
    fn check_session(&self, req: &Request) -> Result<(), Reject> {
        let Some(given) = req.header("Session") else {
            return Ok(());
        };
        let given = given.split(';').next().unwrap_or_default().trim();
        match &self.id {
            Some(id) if id == given => Ok(()),
            _ => Err(reject(
                454,
                format!("session {given:?} is not open on this connection"),
            )),
        }
    }

    /// Before the first SETUP a connection may (re)start with ANNOUNCE or DESCRIBE.
    fn check_no_session(&self, method: &Method) -> Result<(), Reject> {
        if self.id.is_some() {
            return Err(reject(
                455,
                format!("{method} is not valid in an open session; TEARDOWN first"),
            ));
        }
        Ok(())
    }

    fn announce(&mut self, req: &Request, cseq: u32) -> Handled {
        self.check_session(req)?;
        self.check_no_session(&req.method)?;
        let (target, suffix) = parse_target(&req.uri)?;
        if !suffix.is_empty() {
            return Err(reject(
                404,
                format!("ANNOUNCE to {}, not to a track URL", target.base),
            ));
        }
        let content_type = req.header("Content-Type").unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("application/sdp") {
            return Err(reject(
                415,
                format!("ANNOUNCE needs an application/sdp body, not {content_type:?}"),
            ));
        }
        let tracks = sdp::parse_announce(&req.body).map_err(|e| reject(400, e.to_string()))?;
        if tracks.len() > MAX_TRACKS {
            return Err(reject(
                400,
                format!(
                    "the SDP has {} media sections; at most {MAX_TRACKS} are served",
                    tracks.len()
                ),
            ));
        }
        self.outputs.push_back(Output::Call(Call::Authorize {
            room: target.room.clone(),
            publish: true,
            credentials: credentials(req),
        }));
        self.pending = Some(Pending {
            cseq,
            kind: PendingKind::Announce(Publish {
                target,
                setup: vec![None; tracks.len()],
                tracks,
                published: None,
            }),
        });
        Ok(None)
    }

    fn describe(&mut self, req: &Request, cseq: u32) -> Handled {
        self.check_session(req)?;
        self.check_no_session(&req.method)?;
        let (target, suffix) = parse_target(&req.uri)?;
        if !suffix.is_empty() {
            return Err(reject(
                404,
                format!(
                    "nothing to describe at {:?}; DESCRIBE {}",
                    req.uri, target.base
                ),
            ));
        }
        self.outputs.push_back(Output::Call(Call::Authorize {
            room: target.room.clone(),
            publish: false,
            credentials: credentials(req),
        }));
        self.pending = Some(Pending {
            cseq,
            kind: PendingKind::AuthorizeDescribe(target),
        });
        Ok(None)
    }

    fn described(
        &mut self,
        target: Target,
        result: Result<Vec<OutputTrack>, BridgeError>,
    ) -> Handled {
        let tracks = result.map_err(|e| bridge_reject(&e, &target))?;
        if tracks.is_empty() {
            return Err(reject(
                404,
                format!(
                    "{} in {} has no tracks a player can receive yet",
                    target.id, target.room
                ),
            ));
        }
        let sdp = sdp::describe(
            target.room.as_str(),
            target.id.as_str(),
            self.rng.random::<u32>().into(),
            &tracks,
        );
        let base = format!("{}/", target.base);
        let cname = format!("confab-{}", Alphanumeric.sample_string(&mut self.rng, 12));
        self.state = State::Play(Play {
            target,
            setup: (0..tracks.len()).map(|_| None).collect(),
            tracks,
            playing: false,
            cname,
        });
        Ok(Some(
            Response::new(200)
                .with_header("Content-Base", base)
                .with_body("application/sdp", sdp),
        ))
    }

    fn setup(&mut self, req: &Request, now: Instant) -> Handled {
        self.check_session(req)?;
        let header = req
            .header("Transport")
            .ok_or_else(|| reject(400, "SETUP needs a Transport header"))?;
        let specs = transport::parse(header).map_err(|e| reject(400, e.to_string()))?;
        let udp = self.config.udp;
        let peer = self.config.peer;
        let (target, mode, transport, reply) = match &mut self.state {
            State::Idle => {
                return Err(reject(
                    455,
                    "SETUP before ANNOUNCE or DESCRIBE: ANNOUNCE an SDP to publish, or DESCRIBE to play",
                ))
            }
            State::Publish(p) => {
                if p.published.is_some() {
                    return Err(reject(455, "SETUP after RECORD is not supported"));
                }
                let suffix = same_target(&p.target, &req.uri)?;
                let index = find_input_track(&p.tracks, &suffix, &req.uri)?;
                let others: Vec<Transport> = p
                    .setup
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .filter_map(|(_, t)| *t)
                    .collect();
                let transport = negotiate(&specs, Mode::Publish, &others, peer, udp, header)?;
                p.setup[index] = Some(transport);
                let reply = Reply {
                    kind: reply_kind(transport, udp),
                    ssrc: None,
                    mode: "record",
                };
                (p.target.clone(), Mode::Publish, transport, reply)
            }
            State::Play(p) => {
                if p.playing {
                    return Err(reject(455, "SETUP while playing is not supported; PAUSE first"));
                }
                let suffix = same_target(&p.target, &req.uri)?;
                let index = find_output_track(&p.tracks, &suffix, &req.uri)?;
                let others: Vec<Transport> = p
                    .setup
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .filter_map(|(_, t)| t.as_ref().map(|t| t.transport))
                    .collect();
                let transport = negotiate(&specs, Mode::Play, &others, peer, udp, header)?;
                let track = &p.tracks[index];
                let slot = &mut p.setup[index];
                match slot {
                    Some(t) => {
                        t.transport = transport;
                        t.url = req.uri.clone();
                    }
                    None => {
                        let sender = RtpSender::new(
                            self.rng.random(),
                            track.payload_type,
                            track.clock_rate,
                            self.rng.random(),
                            self.rng.random(),
                            now,
                        );
                        *slot = Some(PlayTrack {
                            transport,
                            url: req.uri.clone(),
                            sender,
                        });
                    }
                }
                let ssrc = slot.as_ref().map(|t| t.sender.ssrc());
                let reply = Reply {
                    kind: reply_kind(transport, udp),
                    ssrc,
                    mode: "play",
                };
                (p.target.clone(), Mode::Play, transport, reply)
            }
        };
        if self.id.is_none() {
            let id = Alphanumeric.sample_string(&mut self.rng, 16);
            self.id = Some(id.clone());
            self.outputs.push_back(Output::Started {
                id,
                mode,
                room: target.room,
                participant: target.id,
                lower: transport.lower(),
            });
        }
        Ok(Some(
            Response::new(200).with_header("Transport", reply.to_string()),
        ))
    }

    fn record(&mut self, req: &Request, cseq: u32) -> Handled {
        self.check_session(req)?;
        let p = match &mut self.state {
            State::Publish(p) => p,
            State::Play(_) => {
                return Err(reject(
                    455,
                    "RECORD is for publishing, and this session plays: use PLAY",
                ))
            }
            State::Idle => return Err(reject(455, "RECORD before ANNOUNCE and SETUP")),
        };
        same_target(&p.target, &req.uri)?;
        if p.setup.iter().all(Option::is_none) {
            return Err(reject(455, "RECORD before SETUP"));
        }
        if p.published.is_some() {
            // Resuming after PAUSE: the camera never left.
            return Ok(Some(Response::new(200)));
        }
        let tracks = p
            .tracks
            .iter()
            .zip(&p.setup)
            .filter(|(_, s)| s.is_some())
            .map(|(t, _)| t.clone())
            .collect();
        self.outputs.push_back(Output::Call(Call::Publish {
            room: p.target.room.clone(),
            id: p.target.id.clone(),
            tracks,
        }));
        self.pending = Some(Pending {
            cseq,
            kind: PendingKind::Publish,
        });
        Ok(None)
    }

    fn recording(&mut self, result: Result<(), BridgeError>) -> Handled {
        let State::Publish(p) = &mut self.state else {
            return Err(reject(500, "the session changed while publishing"));
        };
        result.map_err(|e| bridge_reject(&e, &p.target))?;
        let published: Vec<usize> = (0..p.setup.len())
            .filter(|&i| p.setup[i].is_some())
            .collect();
        let routes: Vec<UdpRoute> = published
            .iter()
            .enumerate()
            .filter_map(|(track, &i)| p.setup[i].map(|t| t.routes(track)))
            .flatten()
            .flatten()
            .collect();
        p.published = Some(published);
        if !routes.is_empty() {
            self.outputs.push_back(Output::RouteUdp(routes));
        }
        Ok(Some(Response::new(200)))
    }

    fn play(&mut self, req: &Request, cseq: u32) -> Handled {
        self.check_session(req)?;
        let p = match &mut self.state {
            State::Play(p) => p,
            State::Publish(_) => {
                return Err(reject(
                    455,
                    "PLAY is for watching, and this session publishes: use RECORD",
                ))
            }
            State::Idle => return Err(reject(455, "PLAY before DESCRIBE and SETUP")),
        };
        same_target(&p.target, &req.uri)?;
        if p.setup.iter().all(Option::is_none) {
            return Err(reject(455, "PLAY before SETUP"));
        }
        if p.playing {
            return Ok(Some(Response::new(200).with_header("Range", "npt=0.000-")));
        }
        let tracks = p
            .tracks
            .iter()
            .zip(&p.setup)
            .filter(|(_, s)| s.is_some())
            .map(|(t, _)| t.key)
            .collect();
        self.outputs.push_back(Output::Call(Call::Play {
            room: p.target.room.clone(),
            id: p.target.id.clone(),
            tracks,
        }));
        self.pending = Some(Pending {
            cseq,
            kind: PendingKind::Play,
        });
        Ok(None)
    }

    fn playing(&mut self, result: Result<(), BridgeError>, now: Instant) -> Handled {
        let State::Play(p) = &mut self.state else {
            return Err(reject(500, "the session changed while starting to play"));
        };
        result.map_err(|e| bridge_reject(&e, &p.target))?;
        p.playing = true;
        let mut info = Vec::new();
        let mut routes = Vec::new();
        for (i, t) in p.setup.iter_mut().enumerate() {
            let Some(t) = t else { continue };
            let (seq, rtptime) = t.sender.start(now);
            info.push(format!("url={};seq={seq};rtptime={rtptime}", t.url));
            routes.extend(t.transport.routes(i).into_iter().flatten());
        }
        if !routes.is_empty() {
            self.outputs.push_back(Output::RouteUdp(routes));
        }
        Ok(Some(
            Response::new(200)
                .with_header("Range", "npt=0.000-")
                .with_header("RTP-Info", info.join(",")),
        ))
    }

    fn pause(&mut self, req: &Request) -> Handled {
        self.check_session(req)?;
        if self.id.is_none() {
            return Err(reject(455, "PAUSE without a session: SETUP first"));
        }
        if let State::Play(p) = &mut self.state {
            if p.playing {
                p.playing = false;
                for t in p.setup.iter_mut().flatten() {
                    t.sender.stop();
                }
                self.outputs.push_back(Output::StopPlayback);
            }
        }
        // A paused publisher (GStreamer pauses before it leaves) stays in the room.
        Ok(Some(Response::new(200)))
    }

    fn teardown(&mut self, req: &Request) -> Handled {
        self.check_session(req)?;
        self.end(EndReason::Teardown);
        Ok(Some(Response::new(200)))
    }

    fn parameter(&mut self, req: &Request) -> Handled {
        self.check_session(req)?;
        if !req.body.is_empty() {
            return Err(reject(
                451,
                "no parameters are served; an empty GET_PARAMETER keeps the session alive",
            ));
        }
        Ok(Some(Response::new(200)))
    }
}

/// What the request presents: `Authorization: Basic` (user ignored; a password shaped like a
/// JWT is taken as a join token) and the URL's `token` query parameter.
pub fn credentials(req: &Request) -> Credentials {
    use base64::Engine as _;
    let mut c = Credentials::default();
    if let Some(v) = req.header("Authorization") {
        let mut parts = v.trim().splitn(2, ' ');
        let scheme = parts.next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(parts.next().unwrap_or_default().trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some((_, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                if password.split('.').count() == 3 && password.len() > 40 {
                    c.token = Some(password.to_owned());
                } else {
                    c.password = Some(password.to_owned());
                }
            }
        }
    }
    if let Ok(url) = url::Url::parse(&req.uri) {
        if let Some((_, t)) = url.query_pairs().find(|(k, _)| k == "token") {
            c.token = Some(t.into_owned());
        }
    }
    c
}

/// The answer to refused credentials (401 with a challenge, 403, or 503 with `Retry-After`).
pub fn refusal_response(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::Unauthorized(m) => Response::error(401, m)
            .with_header("WWW-Authenticate", format!("Basic realm=\"{REALM}\"")),
        Refusal::Forbidden(m) => Response::error(403, m),
        Refusal::Throttled {
            message,
            retry_after,
        } => Response::error(503, message).with_header("Retry-After", retry_after.to_string()),
    }
}

/// `rtsp://host:port/{room}/{id}[/suffix…]` → the target and the suffix (`trackID=1`).
fn parse_target(uri: &str) -> Result<(Target, String), Reject> {
    let url = url::Url::parse(uri)
        .map_err(|e| reject(400, format!("the request URL {uri:?} is not valid: {e}")))?;
    if url.scheme() != "rtsp" {
        return Err(reject(
            400,
            format!("the request URL {uri:?} is not an rtsp:// URL"),
        ));
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    if segments.len() < 2 {
        return Err(reject(
            400,
            format!(
                "the URL path {:?} must be /{{room}}/{{id}}, e.g. rtsp://host:8554/demo/cam",
                url.path()
            ),
        ));
    }
    let room = RoomName::parse(segments[0]).map_err(|e| reject(400, e.to_string()))?;
    let id = ParticipantId::parse(segments[1]).map_err(|e| reject(400, e.to_string()))?;
    let base = format!("{}/{room}/{id}", &url[..url::Position::BeforePath]);
    Ok((Target { room, id, base }, segments[2..].join("/")))
}

/// Later requests of a connection name the same room and participant; returns the suffix.
fn same_target(target: &Target, uri: &str) -> Result<String, Reject> {
    let (t, suffix) = parse_target(uri)?;
    if t.room != target.room || t.id != target.id {
        return Err(reject(
            400,
            format!(
                "this session is about {}/{}, not {}/{}",
                target.room, target.id, t.room, t.id
            ),
        ));
    }
    Ok(suffix)
}

/// The announced track a SETUP URL names: its `a=control`, relative (`streamid=0`) or
/// absolute; or, with a single track without control, the presentation URL itself.
fn find_input_track(tracks: &[InputTrack], suffix: &str, uri: &str) -> Result<usize, Reject> {
    let found = tracks.iter().position(|t| {
        let control = t.control.trim_start_matches('/');
        if control.contains("://") {
            // Compare paths: the host may be written differently.
            parse_target(control).is_ok_and(|(_, s)| s == suffix)
        } else {
            control == suffix
        }
    });
    if let Some(i) = found {
        return Ok(i);
    }
    if suffix.is_empty() && tracks.len() == 1 {
        return Ok(0);
    }
    let known: Vec<&str> = tracks.iter().map(|t| t.control.as_str()).collect();
    Err(reject(
        404,
        format!("{uri:?} names no announced track; their controls are {known:?}"),
    ))
}

/// The described track a SETUP URL names (`…/trackID={key}`).
fn find_output_track(tracks: &[OutputTrack], suffix: &str, uri: &str) -> Result<usize, Reject> {
    let key = suffix
        .strip_prefix("trackID=")
        .and_then(|k| k.parse::<u64>().ok())
        .map(TrackKey);
    let found = match key {
        Some(k) => tracks.iter().position(|t| t.key == k),
        None if suffix.is_empty() && tracks.len() == 1 => Some(0),
        None => None,
    };
    found.ok_or_else(|| {
        reject(
            404,
            format!("{uri:?} names no track; DESCRIBE lists them as trackID=<n>"),
        )
    })
}

/// The first of the client's transports this session can serve.
fn negotiate(
    specs: &[Spec],
    mode: Mode,
    others: &[Transport],
    peer: SocketAddr,
    udp: Option<UdpPorts>,
    header: &str,
) -> Result<Transport, Reject> {
    let lower_in_use = others.first().map(|t| t.lower());
    let channel_taken = |c: u8| {
        others
            .iter()
            .any(|t| matches!(t, Transport::Interleaved { rtp, rtcp } if *rtp == c || *rtcp == c))
    };
    let port_taken = |p: u16| {
        others.iter().any(
            |t| matches!(t, Transport::Udp { rtp, rtcp } if rtp.port() == p || rtcp.port() == p),
        )
    };
    for spec in specs {
        if !spec.rtp_avp || spec.multicast {
            continue;
        }
        let mode_ok = match (mode, spec.mode.as_deref()) {
            (_, None) => true,
            (Mode::Publish, Some(m)) => m == "record" || m == "receive",
            (Mode::Play, Some(m)) => m == "play",
        };
        // One lower transport per session keeps the routing simple; clients never mix.
        if !mode_ok || lower_in_use.is_some_and(|l| l != spec.lower) {
            continue;
        }
        match spec.lower {
            Lower::Tcp => {
                let (rtp, rtcp) = match spec.interleaved {
                    Some((a, b)) if a != b && !channel_taken(a) && !channel_taken(b) => (a, b),
                    // Absent or clashing: the server picks (§12.39 allows it).
                    _ => match (0..=254u8)
                        .step_by(2)
                        .find(|&c| !channel_taken(c) && !channel_taken(c + 1))
                    {
                        Some(c) => (c, c + 1),
                        None => continue,
                    },
                };
                return Ok(Transport::Interleaved { rtp, rtcp });
            }
            Lower::Udp => {
                let (Some(_), Some((a, b))) = (udp, spec.client_port) else {
                    continue;
                };
                if a == b || port_taken(a) || port_taken(b) {
                    continue;
                }
                return Ok(Transport::Udp {
                    rtp: SocketAddr::new(peer.ip(), a),
                    rtcp: SocketAddr::new(peer.ip(), b),
                });
            }
        }
    }
    let udp_note = if udp.is_none() {
        " (UDP is unavailable on this server)"
    } else {
        ""
    };
    Err(reject(
        461,
        format!(
            "cannot serve Transport {header:?}: use RTP/AVP/TCP;unicast;interleaved=a-b or RTP/AVP;unicast;client_port=a-b{udp_note}"
        ),
    ))
}

fn reply_kind(transport: Transport, udp: Option<UdpPorts>) -> ReplyKind {
    match transport {
        Transport::Interleaved { rtp, rtcp } => ReplyKind::Interleaved { rtp, rtcp },
        Transport::Udp { rtp, rtcp } => {
            // `negotiate` only picks UDP when the server has its pair.
            let ports = udp.map_or((0, 0), |u| (u.rtp, u.rtcp));
            ReplyKind::Udp {
                client: (rtp.port(), rtcp.port()),
                server: ports,
            }
        }
    }
}

fn bridge_reject(e: &BridgeError, target: &Target) -> Reject {
    match e {
        BridgeError::NotFound(m) => reject(404, m.clone()),
        BridgeError::Taken(_) => reject(
            409,
            format!(
                "{} is already live in {}; pick another name",
                target.id, target.room
            ),
        ),
        BridgeError::Invalid(m) => reject(400, m.clone()),
        BridgeError::Unavailable(m) => reject(503, m.clone()),
    }
}

#[cfg(test)]
mod tests;
