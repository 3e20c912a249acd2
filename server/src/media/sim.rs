//! A simulated meeting: one [`Engine`](super::engine::Engine), browser-like clients, cameras and RTSP taps on a
//! simulated clock and a simulated network.
//!
//! [`Sim`] is test support, public so that the fuzz crate drives the engine the same way. Each
//! client is what a browser is to the protocol in `docs/protocol.md`: a publish connection it
//! offers and a subscribe connection whose offers it answers, both real `rtc` peer connections
//! (ICE, DTLS, SRTP, RTCP feedback), so what reaches the engine is what a browser would send
//! and what the client records is what a browser would decode. Between every client and the
//! engine is one link per direction ([`LinkConfig`]): delay, jitter, seeded loss and
//! reordering, or cut. Nothing sleeps: time jumps from one due event (a datagram's arrival, a
//! timer of the engine or of a client connection) to the next, so a minute of a meeting takes
//! milliseconds.
//!
//! Adding a scenario: [`Sim::new`] with a seed, [`Sim::join`] clients, [`Sim::publish`] their
//! tracks, [`Sim::run_until`] they are connected, then send media ([`Sim::send_video`],
//! [`Sim::send_audio`], [`Sim::send_rtcp`]), change links ([`Sim::set_link`]), let time pass
//! ([`Sim::run_for`]) and look at what each client recorded ([`Client::received`],
//! [`Client::rtcp`], [`Client::events`]). Cameras ([`Sim::add_camera`]) and players
//! ([`Sim::tap`]) are driven the same way.
//!
//! Every datagram (with its fate on the link), every signaling message and every packet a
//! client decrypted goes to a [`Trace`], stamped with simulated milliseconds. A `Sim` dropped
//! while its thread panics (a failed assertion) prints the trace's last lines, or as many as
//! `CONFAB_SIM_TRACE` says.
//!
//! Determinism: the clock is simulated, the engine is seeded with the simulation's seed, and
//! the network's choices come from it too, one generator per link, so the n-th datagram on a
//! link meets the same fate on every run. The clients' `rtc` connections still draw their own
//! random numbers (ICE credentials, DTLS), so bytes differ between runs, not what happens.
//!
//! Parts: `driver` is the only code that calls the engine ([`EngineDriver`]); `net` the
//! links; `client` the browser-like clients; `media` what they and the cameras send; `trace`
//! the record.

mod client;
mod driver;
mod media;
mod net;
mod trace;

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use self::client::client_pc;
pub use self::client::{Client, Conn, LocalTrack, PendingOffer, Rtcp, RtcpIn, RtpIn};
pub use self::driver::EngineDriver;
pub use self::media::{
    frame_number, h264, h264_payloads, is_keyframe, opus, opus_payload, Sent, AUDIO_TICKS,
    VIDEO_TICKS,
};
use self::net::{describe_datagram, Endpoint, Flight, Link};
pub use self::net::{Affects, Dir, LinkConfig, LinkStats, LoseFirst};
pub use self::trace::Trace;
use super::api::{
    Command, ExternalEvent, ExternalTrack, MediaEvent, Output, OutputTrack, ParticipantKey,
    PlaybackEvent, SubscriberView, TapId, TrackKey,
};
use super::peer;
use crate::metrics::Metrics;
use crate::names::{ParticipantId, RoomName};
use crate::protocol::{IceCandidate, MediaKind, PcRole};

/// Where the engine listens: its one announced candidate.
pub const ENGINE_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9000));
/// The room clients and cameras join unless told otherwise.
pub const ROOM: &str = "sim";
/// Bounded loops: more rounds than this at one instant means the parties never go quiet.
const MAX_ROUNDS: usize = 10_000;

/// A client of a [`Sim`] (index into its clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// A camera (external participant) of a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CameraId(pub usize);

/// An external participant (an RTSP camera) whose packets the test hands to the engine.
#[derive(Debug, Clone)]
pub struct Camera {
    pub key: ParticipantKey,
    pub id: String,
    pub room: String,
    pub tracks: Vec<ExternalTrack>,
    /// Per track: last sequence number and timestamp sent, frames sent.
    pub seq: Vec<u16>,
    pub ts: Vec<u32>,
    pub frames: Vec<u32>,
    /// What the engine asked of the camera's source (its low layers), when.
    pub events: Vec<(Instant, ExternalEvent)>,
    /// The low layer the test makes in the bridge's place: last sequence number and
    /// timestamp sent, frames sent (numbered from [`LOW_FRAMES`]).
    pub low_seq: u16,
    pub low_ts: u32,
    pub low_frames: u32,
}

/// Frame numbers of a camera's low layer start here, to tell its pictures from the camera's.
pub const LOW_FRAMES: u32 = 1_000_000;

/// What one player received.
#[derive(Debug, Default)]
pub struct TapLog {
    pub events: Vec<(Instant, PlaybackEvent)>,
    /// The engine said every tapped track is gone.
    pub ended: bool,
}

/// One engine, its clients, cameras and players, the links between them, and the clock.
pub struct Sim {
    pub now: Instant,
    start: Instant,
    seed: u64,
    engine: EngineDriver,
    clients: Vec<Client>,
    cameras: Vec<Camera>,
    taps: HashMap<TapId, TapLog>,
    links: HashMap<(ClientId, Dir), Link>,
    by_addr: HashMap<SocketAddr, (ClientId, PcRole)>,
    flights: BinaryHeap<Flight>,
    order: u64,
    next_key: u64,
    next_tap: u64,
    record: bool,
    /// Clients answer offers as DTLS clients, as Chromium does (`rtc`'s default is the server).
    answer_as_dtls_client: bool,
    /// Datagrams the engine sent to an address nobody has.
    pub misrouted: u64,
    pub trace: Trace,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() && self.trace.enabled {
            let n = std::env::var("CONFAB_SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(400);
            eprintln!(
                "---- simulation trace (seed {}; CONFAB_SIM_TRACE=<lines> for more) ----\n{}",
                self.seed,
                self.trace.tail(n)
            );
        }
    }
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let now = Instant::now();
        Sim {
            now,
            start: now,
            seed,
            engine: EngineDriver::new(ENGINE_ADDR, seed),
            clients: Vec::new(),
            cameras: Vec::new(),
            taps: HashMap::new(),
            links: HashMap::new(),
            by_addr: HashMap::new(),
            flights: BinaryHeap::new(),
            order: 0,
            next_key: 1,
            next_tap: 1,
            record: true,
            answer_as_dtls_client: false,
            misrouted: 0,
            trace: Trace::new(now),
        }
    }

    /// Makes clients joining from now on answer offers as the DTLS client, as Chromium does,
    /// so that the engine is the DTLS server of their subscribe connections. (`rtc`'s default,
    /// and so the simulation's, is the other way round. With it, a camera's group of pictures
    /// replayed at once on connecting leaves the engine with its last handshake flight and
    /// reaches an `rtc` client before it has its SRTP keys; Chromium would take it.)
    pub fn answer_as_dtls_client(&mut self, on: bool) {
        self.answer_as_dtls_client = on;
    }

    /// Turns recording off (trace, per-packet logs; counters stay): for long fuzz runs.
    pub fn set_recording(&mut self, on: bool) {
        self.record = on;
        self.trace.enabled = on;
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn engine(&self) -> &EngineDriver {
        &self.engine
    }

    pub fn metrics(&self) -> &Metrics {
        self.engine.metrics()
    }

    pub fn client(&self, c: ClientId) -> &Client {
        &self.clients[c.0]
    }

    pub fn client_mut(&mut self, c: ClientId) -> &mut Client {
        &mut self.clients[c.0]
    }

    pub fn camera(&self, cam: CameraId) -> &Camera {
        &self.cameras[cam.0]
    }

    pub fn tap_log(&self, tap: TapId) -> &TapLog {
        &self.taps[&tap]
    }

    fn log(&mut self, who: &str, what: fmt::Arguments<'_>) {
        self.trace.log(self.now, who, what);
    }

    fn name(&self, c: ClientId) -> String {
        self.clients[c.0].id.clone()
    }

    // ----- network --------------------------------------------------------------------

    /// Sets one direction of a client's link (both of its connections use it).
    pub fn set_link(&mut self, c: ClientId, dir: Dir, cfg: LinkConfig) {
        let who = self.name(c);
        self.log(&who, format_args!("link {dir:?} now {cfg:?}"));
        self.link(c, dir).cfg = cfg;
    }

    pub fn link_stats(&self, c: ClientId, dir: Dir) -> LinkStats {
        self.links
            .get(&(c, dir))
            .map(|l| l.stats)
            .unwrap_or_default()
    }

    /// SSRC and sequence number of every RTP packet the link lost.
    pub fn lost_rtp(&self, c: ClientId, dir: Dir) -> &[(u32, u16)] {
        self.links.get(&(c, dir)).map_or(&[], |l| &l.lost_rtp)
    }

    fn link(&mut self, c: ClientId, dir: Dir) -> &mut Link {
        let seed = self.seed;
        self.links
            .entry((c, dir))
            .or_insert_with(|| Link::new(seed, c, dir))
    }

    fn transmit(
        &mut self,
        c: ClientId,
        dir: Dir,
        to: Endpoint,
        src: SocketAddr,
        dst: SocketAddr,
        data: BytesMut,
    ) {
        let now = self.now;
        let fate = self.link(c, dir).fate(now, &data);
        if self.trace.enabled {
            let who = self.name(c);
            let arrow = match dir {
                Dir::Up => "->",
                Dir::Down => "<-",
            };
            let when = match fate {
                None => "LOST".to_owned(),
                Some(at) => format!(
                    "arrives {:.3}",
                    at.saturating_duration_since(self.start).as_secs_f64() * 1000.0
                ),
            };
            let what = describe_datagram(&data);
            let conn = match to {
                Endpoint::Client(_, role) => role,
                Endpoint::Engine => self.by_addr.get(&src).map_or(PcRole::Publish, |x| x.1),
            };
            self.log(
                &who,
                format_args!("{conn:?} {arrow} engine  {what}  {when}"),
            );
        }
        if let Some(at) = fate {
            self.order += 1;
            self.flights.push(Flight {
                at,
                order: self.order,
                to,
                src,
                dst,
                data,
            });
        }
    }

    /// A datagram straight from a client connection's address to the engine, as it is (no
    /// link, no encryption): for fuzzing the engine's input.
    pub fn inject(&mut self, c: ClientId, role: PcRole, data: &[u8]) {
        let cl = &self.clients[c.0];
        let from = match role {
            PcRole::Publish => cl.pub_addr,
            PcRole::Subscribe => cl.sub_addr,
        };
        self.engine.datagram(self.now, ENGINE_ADDR, from, data);
    }

    // ----- participants ---------------------------------------------------------------

    fn next_key(&mut self) -> ParticipantKey {
        self.next_key += 1;
        ParticipantKey(self.next_key - 1)
    }

    /// A browser participant `id` joins [`ROOM`].
    pub fn join(&mut self, id: &str) -> ClientId {
        self.join_room(ROOM, id)
    }

    pub fn join_room(&mut self, room: &str, id: &str) -> ClientId {
        let c = ClientId(self.clients.len());
        let key = self.next_key();
        let port = 10_000 + 2 * c.0 as u16;
        let (pub_addr, sub_addr) = (
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], port + 1)),
        );
        self.by_addr.insert(pub_addr, (c, PcRole::Publish));
        self.by_addr.insert(sub_addr, (c, PcRole::Subscribe));
        self.clients.push(Client {
            key,
            id: id.to_owned(),
            room: room.to_owned(),
            auto_answer: true,
            publish: None,
            subscribe: None,
            tracks: Vec::new(),
            events: Vec::new(),
            pending_offers: VecDeque::new(),
            answers: Vec::new(),
            sdps: Vec::new(),
            received: Vec::new(),
            received_count: 0,
            rtcp: Vec::new(),
            failure: None,
            left: false,
            pub_addr,
            sub_addr,
            inbox: VecDeque::new(),
            early_candidates: Vec::new(),
            publish_busy: false,
            publish_again: false,
        });
        self.log(id, format_args!("join room {room} as {key:?}"));
        let (room, pid) = (
            RoomName::parse(room).expect("a valid room name"),
            ParticipantId::parse(id).expect("a valid participant id"),
        );
        self.engine
            .command(self.now, Command::Join { key, room, id: pid });
        self.settle();
        c
    }

    /// The client leaves (its session sends `leave`; its connections are dropped).
    pub fn leave(&mut self, c: ClientId) {
        let key = self.clients[c.0].key;
        let who = self.name(c);
        self.log(&who, format_args!("leave"));
        let cl = &mut self.clients[c.0];
        cl.left = true;
        cl.publish = None;
        cl.subscribe = None;
        self.engine.command(self.now, Command::Leave { key });
        self.settle();
    }

    /// An operator mutes (or unmutes) participant `key`'s tracks of `kind`.
    pub fn mute(&mut self, key: ParticipantKey, kind: MediaKind, muted: bool) {
        self.trace.log(
            self.now,
            "operator",
            format_args!("mute {key:?} {kind:?} {muted}"),
        );
        self.engine
            .command(self.now, Command::Mute { key, kind, muted });
        self.settle();
    }

    fn conn_or_create(&mut self, c: ClientId, role: PcRole) -> Result<&mut Conn, Error> {
        let now = self.now;
        let dtls_client = self.answer_as_dtls_client;
        let cl = &mut self.clients[c.0];
        let addr = match role {
            PcRole::Publish => cl.pub_addr,
            PcRole::Subscribe => cl.sub_addr,
        };
        let slot = match role {
            PcRole::Publish => &mut cl.publish,
            PcRole::Subscribe => &mut cl.subscribe,
        };
        if slot.is_none() {
            *slot = Some(Conn {
                pc: client_pc(now, role, addr, dtls_client)?,
                addr,
                state: RTCPeerConnectionState::New,
                trickled: false,
            });
        }
        Ok(slot.as_mut().expect("just created"))
    }

    /// Publishes new tracks of these kinds (H.264 video, Opus audio) and sends a publish offer
    /// (or a new one once the outstanding one is answered). Returns their indexes in
    /// [`Client::tracks`].
    pub fn publish(&mut self, c: ClientId, kinds: &[MediaKind]) -> Vec<usize> {
        let mut added = Vec::new();
        for &kind in kinds {
            let (id, n) = {
                let cl = &self.clients[c.0];
                (cl.id.clone(), cl.tracks.len())
            };
            let ssrc = 0x5100_0000 | (self.clients[c.0].key.0 as u32) << 8 | n as u32;
            let track_id = format!("{id}-local{n}");
            let (codec, codec_kind) = match kind {
                MediaKind::Video => (h264(), RtpCodecKind::Video),
                MediaKind::Audio => (opus(), RtpCodecKind::Audio),
            };
            let track = MediaStreamTrack::new(
                format!("{id}-stream"),
                track_id.clone(),
                track_id.clone(),
                codec_kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            );
            let sender = match self
                .conn_or_create(c, PcRole::Publish)
                .and_then(|conn| conn.pc.add_track(track))
            {
                Ok(s) => s,
                Err(e) => {
                    self.client_failed(c, format!("cannot add a {kind:?} track: {e}"));
                    continue;
                }
            };
            self.clients[c.0].tracks.push(LocalTrack {
                id: track_id,
                kind,
                ssrc,
                sender,
                pt: None,
                // Close to the wrap, so every scenario crosses it.
                seq: 65_500u16.wrapping_add(n as u16 * 1000),
                ts: 1_000_000 * (n as u32 + 1),
                frames: 0,
                removed: false,
                keyframe_requests: 0,
                answered_requests: 0,
            });
            added.push(n);
        }
        self.offer_publish(c);
        self.settle();
        added
    }

    /// Stops publishing track `index` and renegotiates.
    pub fn unpublish(&mut self, c: ClientId, index: usize) {
        let cl = &mut self.clients[c.0];
        let t = &mut cl.tracks[index];
        t.removed = true;
        let sender = t.sender;
        let who = cl.id.clone();
        let result = cl.publish.as_mut().map(|conn| conn.pc.remove_track(sender));
        self.log(&who, format_args!("unpublish track {index}: {result:?}"));
        self.offer_publish(c);
        self.settle();
    }

    fn offer_publish(&mut self, c: ClientId) {
        let now = self.now;
        let cl = &mut self.clients[c.0];
        if cl.publish_busy {
            // One publish offer at a time (docs/protocol.md).
            cl.publish_again = true;
            return;
        }
        let Some(conn) = cl.publish.as_mut() else {
            return;
        };
        let offer = conn
            .pc
            .create_offer(None)
            .and_then(|o| conn.pc.set_local_description(now, o.clone()).map(|_| o));
        match offer {
            Ok(o) => {
                cl.publish_busy = true;
                cl.sdps.push(o.sdp.clone());
                let key = cl.key;
                let who = cl.id.clone();
                self.log(&who, format_args!("signal -> publish offer"));
                self.engine
                    .command(now, Command::Publish { key, sdp: o.sdp });
                self.trickle(c, PcRole::Publish);
            }
            Err(e) => self.client_failed(c, format!("cannot make a publish offer: {e}")),
        }
    }

    /// A publish offer as it is, from client `c` (for the SDP fuzz target).
    pub fn publish_sdp(&mut self, c: ClientId, sdp: String) {
        let key = self.clients[c.0].key;
        self.engine.command(self.now, Command::Publish { key, sdp });
        self.settle();
    }

    /// A subscribe answer as it is, from client `c`.
    pub fn send_subscribe_answer(&mut self, c: ClientId, sdp: String, revision: u64) {
        self.subscribe_answer(c, sdp, revision);
        self.settle();
    }

    fn subscribe_answer(&mut self, c: ClientId, sdp: String, revision: u64) {
        let key = self.clients[c.0].key;
        let who = self.name(c);
        self.log(
            &who,
            format_args!("signal -> subscribe answer rev {revision}"),
        );
        self.engine
            .command(self.now, Command::SubscribeAnswer { key, sdp, revision });
    }

    /// Answers the oldest subscribe offer not answered yet, as a browser would; returns its
    /// revision.
    pub fn answer_offer(&mut self, c: ClientId) -> Option<u64> {
        let r = self.answer_next_offer(c);
        self.settle();
        r
    }

    fn answer_next_offer(&mut self, c: ClientId) -> Option<u64> {
        let offer = self.clients[c.0].pending_offers.pop_front()?;
        let now = self.now;
        let answer = self.conn_or_create(c, PcRole::Subscribe).and_then(|conn| {
            conn.pc
                .set_remote_description(now, RTCSessionDescription::offer(offer.sdp.clone())?)?;
            let a = conn.pc.create_answer(None)?;
            conn.pc.set_local_description(now, a.clone())?;
            Ok(a.sdp)
        });
        match answer {
            Ok(sdp) => {
                self.apply_early_candidates(c);
                let cl = &mut self.clients[c.0];
                cl.sdps.push(sdp.clone());
                cl.answers.push((offer.revision, sdp.clone()));
                self.subscribe_answer(c, sdp, offer.revision);
                self.trickle(c, PcRole::Subscribe);
            }
            Err(e) => self.client_failed(c, format!("cannot answer offer {}: {e}", offer.revision)),
        }
        Some(offer.revision)
    }

    /// Sends the client's host candidate for `role` once, as browsers trickle theirs.
    fn trickle(&mut self, c: ClientId, role: PcRole) {
        let cl = &mut self.clients[c.0];
        let key = cl.key;
        let Some(conn) = cl.conn_mut(role) else {
            return;
        };
        if std::mem::replace(&mut conn.trickled, true) {
            return;
        }
        let Ok(init) = peer::host_candidate(conn.addr) else {
            return;
        };
        let candidate = IceCandidate {
            candidate: init.candidate,
            sdp_mid: Some("0".to_owned()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        self.engine.command(
            self.now,
            Command::Candidate {
                key,
                pc: role,
                candidate,
            },
        );
    }

    fn apply_early_candidates(&mut self, c: ClientId) {
        let cl = &mut self.clients[c.0];
        let early = std::mem::take(&mut cl.early_candidates);
        for (role, cand) in early {
            cl.add_candidate(role, cand);
        }
    }

    fn client_failed(&mut self, c: ClientId, why: String) {
        let who = self.name(c);
        self.log(&who, format_args!("FAILURE {why}"));
        self.clients[c.0].failure.get_or_insert(why);
    }

    /// The first client that met a failure, and what it was.
    pub fn failure(&self) -> Option<(ClientId, &str)> {
        self.clients
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.failure.as_deref().map(|f| (ClientId(i), f)))
    }

    /// Whether every connection the client has is connected (and it has one).
    pub fn connected(&self, c: ClientId) -> bool {
        let cl = &self.clients[c.0];
        let conns = [cl.publish.as_ref(), cl.subscribe.as_ref()];
        conns.iter().any(Option::is_some)
            && conns
                .iter()
                .flatten()
                .all(|conn| conn.state == RTCPeerConnectionState::Connected)
    }

    // ----- media from clients -----------------------------------------------------------

    /// One RTP packet of the client's track `index` with the next sequence number.
    pub fn send_rtp(
        &mut self,
        c: ClientId,
        index: usize,
        marker: bool,
        ts: u32,
        payload: Bytes,
    ) -> u16 {
        self.send_rtp_with_level(c, index, marker, ts, payload, None)
    }

    /// [`send_rtp`](Self::send_rtp), with an audio level (RFC 6464, −dBov) in the header
    /// extension its connection negotiated for it, as browsers put on every audio packet.
    fn send_rtp_with_level(
        &mut self,
        c: ClientId,
        index: usize,
        marker: bool,
        ts: u32,
        payload: Bytes,
        level: Option<u8>,
    ) -> u16 {
        let now = self.now;
        let cl = &mut self.clients[c.0];
        let Some(conn) = cl.publish.as_mut() else {
            return 0;
        };
        let t = &mut cl.tracks[index];
        if t.pt.is_none() {
            t.pt = conn.pc.rtp_sender(t.sender).and_then(|mut s| {
                let p = s.get_parameters();
                p.rtp_parameters.codecs.first().map(|c| c.payload_type)
            });
        }
        t.seq = t.seq.wrapping_add(1);
        t.ts = ts;
        let mut packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: t.pt.unwrap_or(0),
                sequence_number: t.seq,
                timestamp: ts,
                ssrc: t.ssrc,
                ..Default::default()
            },
            payload,
        };
        if let Some(level) = level {
            let id = conn.pc.rtp_sender(t.sender).and_then(|mut s| {
                let p = s.get_parameters();
                p.rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|e| e.uri == rtc::sdp::extmap::AUDIO_LEVEL_URI)
                    .and_then(|e| u8::try_from(e.id).ok())
            });
            if let Some(id) = id {
                // V bit (RFC 6464 §3) set for anything louder than silence.
                let v = if level < 127 { 0x80 } else { 0 };
                let byte = Bytes::copy_from_slice(&[v | (level & 0x7f)]);
                let _ = packet.header.set_extension(id, byte);
            }
        }
        let (seq, pt) = (t.seq, t.pt);
        let r = conn.pc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(String::new(), packet),
        });
        if self.trace.enabled {
            let who = self.clients[c.0].id.clone();
            self.log(
                &who,
                format_args!(
                    "write RTP track {index} pt={pt:?} seq={seq} ts={ts}{} {}",
                    if marker { " M" } else { "" },
                    r.err().map(|e| format!("FAILED: {e}")).unwrap_or_default()
                ),
            );
        }
        seq
    }

    /// The next video frame of track `index` (timestamps 1/30 s apart) in `packets` packets.
    pub fn send_video(
        &mut self,
        c: ClientId,
        index: usize,
        keyframe: bool,
        packets: usize,
    ) -> Sent {
        let t = &mut self.clients[c.0].tracks[index];
        let (frame, ts) = next_frame(&mut t.frames, t.ts);
        self.frame(frame, ts, keyframe, packets, |sim, last, p| {
            sim.send_rtp(c, index, last, ts, p)
        })
    }

    /// One frame's packets through `send` (which returns the sequence number it used), then
    /// everything that follows from them.
    fn frame(
        &mut self,
        frame: u32,
        ts: u32,
        keyframe: bool,
        packets: usize,
        mut send: impl FnMut(&mut Sim, bool, Bytes) -> u16,
    ) -> Sent {
        let payloads = h264_payloads(keyframe, frame, packets);
        let n = payloads.len();
        let mut seqs = Vec::with_capacity(n);
        for (i, p) in payloads.into_iter().enumerate() {
            seqs.push(send(self, i + 1 == n, p));
        }
        self.settle();
        Sent {
            frame,
            first_seq: seqs[0],
            last_seq: seqs[n - 1],
            ts,
        }
    }

    /// The next video frame of track `index` as a browser's encoder makes it: a keyframe if it
    /// is the first or a keyframe request arrived since the last keyframe.
    pub fn encode_video(&mut self, c: ClientId, index: usize, packets: usize) -> Sent {
        let t = &mut self.clients[c.0].tracks[index];
        let keyframe = t.frames == 0 || t.keyframe_requests > t.answered_requests;
        t.answered_requests = t.keyframe_requests;
        self.send_video(c, index, keyframe, packets)
    }

    /// The next 20 ms Opus packet of track `index`.
    pub fn send_audio(&mut self, c: ClientId, index: usize) -> Sent {
        self.send_audio_level(c, index, None)
    }

    /// The next 20 ms Opus packet of track `index`, with audio level `level` (−dBov: 0 is
    /// the loudest, 127 silence) in its header extension when given.
    pub fn send_audio_level(&mut self, c: ClientId, index: usize, level: Option<u8>) -> Sent {
        let t = &mut self.clients[c.0].tracks[index];
        let frame = t.frames;
        t.frames += 1;
        let ts = if frame == 0 {
            t.ts
        } else {
            t.ts.wrapping_add(AUDIO_TICKS)
        };
        let seq = self.send_rtp_with_level(c, index, false, ts, opus_payload(frame), level);
        self.settle();
        Sent {
            frame,
            first_seq: seq,
            last_seq: seq,
            ts,
        }
    }

    /// RTCP from client `c` on connection `role`, through its SRTCP.
    pub fn send_rtcp(
        &mut self,
        c: ClientId,
        role: PcRole,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
    ) {
        if self.trace.enabled {
            let who = self.name(c);
            let what: Vec<String> = packets
                .iter()
                .map(|p| format!("{:?}", Rtcp::from_packet(p.as_ref())))
                .collect();
            self.log(
                &who,
                format_args!("write RTCP on {role:?}: {}", what.join(", ")),
            );
        }
        self.write(c, role, RTCMessage::RtcpPacket(String::new(), packets));
        self.settle();
    }

    /// Any message into a client connection's sending pipeline (interceptors, SRTP).
    pub fn write(&mut self, c: ClientId, role: PcRole, message: RTCMessage) {
        let now = self.now;
        if let Some(conn) = self.clients[c.0].conn_mut(role) {
            let _ = conn.pc.handle_write(TaggedRTCMessage { now, message });
        }
    }

    // ----- cameras and players ----------------------------------------------------------

    /// A camera `id` with tracks of these kinds (H.264, Opus) joins [`ROOM`].
    pub fn add_camera(&mut self, id: &str, kinds: &[MediaKind]) -> CameraId {
        let key = self.next_key();
        let tracks: Vec<ExternalTrack> = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| ExternalTrack {
                public_id: format!(
                    "{id}-{}{i}",
                    if kind == MediaKind::Video { "v" } else { "a" }
                ),
                kind,
                codec: match kind {
                    MediaKind::Video => h264(),
                    MediaKind::Audio => opus(),
                },
            })
            .collect();
        let cam = CameraId(self.cameras.len());
        let n = tracks.len();
        self.cameras.push(Camera {
            key,
            id: id.to_owned(),
            room: ROOM.to_owned(),
            tracks: tracks.clone(),
            seq: (0..n).map(|i| 40_000 + 1000 * i as u16).collect(),
            ts: (0..n).map(|i| 5_000_000 * (i as u32 + 1)).collect(),
            frames: vec![0; n],
            events: Vec::new(),
            low_seq: 20_000,
            low_ts: 77_000_000,
            low_frames: 0,
        });
        self.log(id, format_args!("camera joins with {n} tracks as {key:?}"));
        let room = RoomName::parse(ROOM).expect("a valid room name");
        let pid = ParticipantId::parse(id).expect("a valid participant id");
        self.engine
            .command(self.now, Command::ExternalJoin { key, room, id: pid });
        self.engine
            .command(self.now, Command::ExternalTracks { key, tracks });
        self.settle();
        cam
    }

    /// One RTP packet of the camera's track `index` with the next sequence number.
    pub fn camera_rtp(
        &mut self,
        cam: CameraId,
        index: usize,
        marker: bool,
        ts: u32,
        payload: Bytes,
    ) -> u16 {
        let cm = &mut self.cameras[cam.0];
        cm.seq[index] = cm.seq[index].wrapping_add(1);
        cm.ts[index] = ts;
        let seq = cm.seq[index];
        let key = cm.key;
        let who = cm.id.clone();
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 0xca3e_0000 | index as u32,
                ..Default::default()
            },
            payload,
        };
        self.log(
            &who,
            format_args!(
                "RTP track {index} seq={seq} ts={ts}{}",
                if marker { " M" } else { "" }
            ),
        );
        self.engine
            .command(self.now, Command::ExternalRtp { key, index, packet });
        seq
    }

    /// The camera's next video frame on track `index` in `packets` packets.
    pub fn camera_video(
        &mut self,
        cam: CameraId,
        index: usize,
        keyframe: bool,
        packets: usize,
    ) -> Sent {
        let cm = &mut self.cameras[cam.0];
        let (frame, ts) = next_frame(&mut cm.frames[index], cm.ts[index]);
        self.frame(frame, ts, keyframe, packets, |sim, last, p| {
            sim.camera_rtp(cam, index, last, ts, p)
        })
    }

    /// The next frame of the low layer of the camera's video track `track`, in `packets`
    /// packets, as the bridge's transcoder would send it (its own SSRC, sequence numbers and
    /// timestamps; frame numbers from [`LOW_FRAMES`]).
    pub fn camera_low_video(
        &mut self,
        cam: CameraId,
        track: TrackKey,
        keyframe: bool,
        packets: usize,
    ) -> Sent {
        let cm = &mut self.cameras[cam.0];
        let (n, ts) = next_frame(&mut cm.low_frames, cm.low_ts);
        cm.low_ts = ts;
        self.frame(
            LOW_FRAMES + n,
            ts,
            keyframe,
            packets,
            |sim, last, payload| {
                let cm = &mut sim.cameras[cam.0];
                cm.low_seq = cm.low_seq.wrapping_add(1);
                let seq = cm.low_seq;
                let who = cm.id.clone();
                sim.log(
                    &who,
                    format_args!(
                        "low layer RTP seq={seq} ts={ts}{}",
                        if last { " M" } else { "" }
                    ),
                );
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        marker: last,
                        payload_type: 96,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: 0x10e0_0000 | cam.0 as u32,
                        ..Default::default()
                    },
                    payload,
                };
                sim.engine
                    .command(sim.now, Command::LowLayerRtp { track, packet });
                seq
            },
        )
    }

    /// Client `c` asks for layer `layer` of video track `track` (`None`: it shows it nowhere),
    /// as the page does with `{"type": "quality"}`.
    pub fn set_layer(&mut self, c: ClientId, track: &str, layer: Option<usize>) {
        let key = self.clients[c.0].key;
        let who = self.name(c);
        self.log(&who, format_args!("quality {track} layer {layer:?}"));
        self.engine.command(
            self.now,
            Command::SetLayer {
                key,
                track: track.to_owned(),
                layer,
            },
        );
        self.settle();
    }

    /// The camera's NTP↔RTP relation for track `index`.
    pub fn camera_sender_report(&mut self, cam: CameraId, index: usize, ntp: u64, rtp: u32) {
        let key = self.cameras[cam.0].key;
        let who = self.cameras[cam.0].id.clone();
        self.log(
            &who,
            format_args!("sender report track {index} ntp={ntp:#x} rtp={rtp}"),
        );
        self.engine.command(
            self.now,
            Command::ExternalSenderReport {
                key,
                index,
                ntp,
                rtp,
            },
        );
        self.settle();
    }

    /// What a player of participant `id` (in [`ROOM`]) would get.
    pub fn describe(&mut self, id: &str) -> Option<Vec<OutputTrack>> {
        let room = RoomName::parse(ROOM).expect("a valid room name");
        let pid = ParticipantId::parse(id).ok()?;
        let d = self.engine.describe(self.now, room, pid);
        self.trace
            .log(self.now, "player", format_args!("describe {id}: {d:?}"));
        d
    }

    /// What each browser in [`ROOM`] receives: estimates, layers.
    pub fn subscriptions(&mut self) -> Vec<SubscriberView> {
        let room = RoomName::parse(ROOM).expect("a valid room name");
        self.engine.subscriptions(self.now, room)
    }

    /// A player taps `tracks` (keys from [`describe`](Self::describe)) of participant `id`.
    pub fn tap(&mut self, id: &str, tracks: &[TrackKey]) -> TapId {
        let tap = TapId(self.next_tap);
        self.next_tap += 1;
        self.taps.insert(tap, TapLog::default());
        self.trace.log(
            self.now,
            "player",
            format_args!("tap {tap:?} on {id} tracks {tracks:?}"),
        );
        let room = RoomName::parse(ROOM).expect("a valid room name");
        let id = ParticipantId::parse(id).expect("a valid participant id");
        self.engine.command(
            self.now,
            Command::Tap {
                tap,
                room,
                id,
                tracks: tracks.to_vec(),
            },
        );
        self.settle();
        tap
    }

    // ----- time -------------------------------------------------------------------------

    /// Lets `d` of simulated time pass.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |s| s.now >= end);
    }

    /// Lets time pass until `done` holds (checked after every event) or `limit` passed;
    /// returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.settle();
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            let next = self.next_wakeup().map_or(end, |t| t.min(end));
            // A timer that stays due does not stop the clock.
            self.now = next.max(self.now + Duration::from_micros(100)).min(end);
        }
    }

    /// The earliest moment anything is due.
    fn next_wakeup(&mut self) -> Option<Instant> {
        let mut t = self.flights.peek().map(|f| f.at);
        let mut consider = |c: Option<Instant>| {
            if let Some(c) = c {
                t = Some(t.map_or(c, |t| t.min(c)));
            }
        };
        consider(self.engine.poll_timeout());
        for cl in &mut self.clients {
            for conn in [cl.publish.as_mut(), cl.subscribe.as_mut()]
                .into_iter()
                .flatten()
            {
                consider(conn.pc.poll_timeout());
            }
        }
        t
    }

    /// Runs everything due now until nobody has anything more to do at this instant.
    pub fn settle(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            // Datagrams that arrived.
            while self.flights.peek().is_some_and(|f| f.at <= self.now) {
                let f = self.flights.pop().expect("peeked");
                self.deliver(f);
                busy = true;
            }
            // Timers.
            let now = self.now;
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.timeout(now);
            }
            for cl in &mut self.clients {
                for conn in [cl.publish.as_mut(), cl.subscribe.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    if conn.pc.poll_timeout().is_some_and(|t| t <= now) {
                        let _ = conn.pc.handle_timeout(now);
                    }
                }
            }
            // What the parties want to send and tell.
            busy |= self.drain_engine();
            for i in 0..self.clients.len() {
                for role in [PcRole::Publish, PcRole::Subscribe] {
                    busy |= self.drain_conn(ClientId(i), role);
                }
                busy |= self.handle_signaling(ClientId(i));
            }
            if !busy {
                return;
            }
        }
        panic!("the simulation does not settle at {:?}", self.elapsed());
    }

    fn deliver(&mut self, f: Flight) {
        match f.to {
            Endpoint::Engine => self.engine.datagram(self.now, f.dst, f.src, &f.data),
            Endpoint::Client(c, role) => {
                let now = self.now;
                let Some(conn) = self.clients[c.0].conn_mut(role) else {
                    return;
                };
                let r = conn.pc.handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: f.dst,
                        peer_addr: f.src,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: f.data,
                });
                if let Err(e) = r {
                    let who = self.name(c);
                    self.log(&who, format_args!("{role:?} rejected a datagram: {e}"));
                }
            }
        }
    }

    fn drain_engine(&mut self) -> bool {
        let mut busy = false;
        while let Some(out) = self.engine.poll_output() {
            busy = true;
            match out {
                Output::Transmit(t) => match self.by_addr.get(&t.destination).copied() {
                    Some((c, role)) => self.transmit(
                        c,
                        Dir::Down,
                        Endpoint::Client(c, role),
                        t.source,
                        t.destination,
                        t.contents,
                    ),
                    None => {
                        self.misrouted += 1;
                        let what = describe_datagram(&t.contents);
                        let to = t.destination;
                        self.trace.log(
                            self.now,
                            "engine",
                            format_args!("-> {to} (nobody): {what}"),
                        );
                    }
                },
                Output::Event(key, ev) => {
                    let Some(cl) = self.clients.iter_mut().find(|c| c.key == key) else {
                        continue;
                    };
                    self.trace.log(
                        self.now,
                        &cl.id,
                        format_args!("signal <- {}", event_line(&ev)),
                    );
                    cl.events.push((self.now, ev.clone()));
                    cl.inbox.push_back(ev);
                }
                Output::External(key, ev) => {
                    let Some(cm) = self.cameras.iter_mut().find(|c| c.key == key) else {
                        continue;
                    };
                    self.trace
                        .log(self.now, &cm.id, format_args!("source <- {ev:?}"));
                    cm.events.push((self.now, ev));
                }
                Output::Playback(tap, ev) => self.playback(tap, ev),
                Output::Replay(tap, evs) => {
                    let n = evs.len();
                    self.trace.log(
                        self.now,
                        &format!("tap {}", tap.0),
                        format_args!("replay of {n} packets"),
                    );
                    for ev in evs {
                        self.playback(tap, ev);
                    }
                }
                Output::TapEnded(tap) => {
                    self.trace
                        .log(self.now, &format!("tap {}", tap.0), format_args!("ended"));
                    if let Some(log) = self.taps.get_mut(&tap) {
                        log.ended = true;
                    }
                }
                other => {
                    self.trace
                        .log(self.now, "engine", format_args!("unexpected {other:?}"));
                }
            }
        }
        busy
    }

    fn playback(&mut self, tap: TapId, ev: PlaybackEvent) {
        if self.trace.enabled {
            let line = match &ev {
                PlaybackEvent::Rtp {
                    track,
                    marker,
                    seq,
                    ts,
                    payload,
                } => format!(
                    "RTP {track} seq={seq} ts={ts}{} frame={:?}",
                    if *marker { " M" } else { "" },
                    frame_number(payload)
                ),
                PlaybackEvent::SenderReport { track, ntp, rtp } => {
                    format!("SR {track} ntp={ntp:#x} rtp={rtp}")
                }
            };
            self.trace
                .log(self.now, &format!("tap {}", tap.0), format_args!("{line}"));
        }
        if let Some(log) = self.taps.get_mut(&tap) {
            log.events.push((self.now, ev));
        }
    }

    /// A client connection's events, decrypted input and datagrams to send.
    fn drain_conn(&mut self, c: ClientId, role: PcRole) -> bool {
        let now = self.now;
        let record = self.record;
        let mut busy = false;
        let mut lines: Vec<String> = Vec::new();
        let mut sends = Vec::new();
        let Client {
            publish,
            subscribe,
            received,
            received_count,
            rtcp: rtcp_log,
            tracks,
            ..
        } = &mut self.clients[c.0];
        let conn = match role {
            PcRole::Publish => publish.as_mut(),
            PcRole::Subscribe => subscribe.as_mut(),
        };
        let Some(conn) = conn else {
            return false;
        };
        while let Some(ev) = conn.pc.poll_event() {
            busy = true;
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                    conn.state = s;
                    lines.push(format!("{role:?} connection {s}"));
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    lines.push(format!(
                        "{role:?} track open {} ssrc={:?}",
                        init.track_id, init.ssrc
                    ));
                }
                _ => {}
            }
        }
        while let Some(m) = conn.pc.poll_read() {
            busy = true;
            match m.message {
                RTCMessage::RtpPacket(track, packet) => {
                    *received_count += 1;
                    if record {
                        let h = &packet.header;
                        lines.push(format!(
                            "{role:?} got RTP {track} pt={} seq={} ts={} ssrc={:#010x}{} frame={:?}",
                            h.payload_type,
                            h.sequence_number,
                            h.timestamp,
                            h.ssrc,
                            if h.marker { " M" } else { "" },
                            frame_number(&packet.payload)
                        ));
                        received.push(RtpIn {
                            at: m.now,
                            role,
                            track,
                            header: packet.header,
                            payload: packet.payload,
                        });
                    }
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    for p in packets.iter().filter(|_| role == PcRole::Publish) {
                        let asked = match Rtcp::from_packet(p.as_ref()) {
                            Rtcp::Pli { media_ssrc } | Rtcp::Fir { media_ssrc } => media_ssrc,
                            _ => continue,
                        };
                        for t in tracks.iter_mut().filter(|t| t.ssrc == asked) {
                            t.keyframe_requests += 1;
                        }
                    }
                    if record {
                        for p in &packets {
                            let rtcp = Rtcp::from_packet(p.as_ref());
                            lines.push(format!("{role:?} got RTCP {rtcp:?}"));
                            rtcp_log.push(RtcpIn {
                                at: m.now,
                                role,
                                rtcp,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        while let Some(t) = conn.pc.poll_write() {
            busy = true;
            sends.push(t);
        }
        if self.trace.enabled {
            let who = self.name(c);
            for l in lines {
                self.trace.log(now, &who, format_args!("{l}"));
            }
        }
        for t in sends {
            let (src, dst) = (t.transport.local_addr, t.transport.peer_addr);
            self.transmit(c, Dir::Up, Endpoint::Engine, src, dst, t.message);
        }
        busy
    }

    /// What the engine told the client's session, acted on as a browser's session would.
    fn handle_signaling(&mut self, c: ClientId) -> bool {
        let mut busy = false;
        while let Some(ev) = self.clients[c.0].inbox.pop_front() {
            busy = true;
            if self.clients[c.0].left {
                continue;
            }
            let now = self.now;
            match ev {
                MediaEvent::Answer { sdp } => {
                    let cl = &mut self.clients[c.0];
                    cl.sdps.push(sdp.clone());
                    cl.publish_busy = false;
                    let applied = cl.publish.as_mut().map(|conn| {
                        RTCSessionDescription::answer(sdp)
                            .and_then(|a| conn.pc.set_remote_description(now, a))
                    });
                    if let Some(Err(e)) = applied {
                        self.client_failed(c, format!("cannot apply the publish answer: {e}"));
                    }
                    self.apply_early_candidates(c);
                    let cl = &mut self.clients[c.0];
                    if std::mem::take(&mut cl.publish_again) {
                        self.offer_publish(c);
                    }
                }
                MediaEvent::Offer {
                    sdp,
                    revision,
                    tracks,
                } => {
                    let cl = &mut self.clients[c.0];
                    cl.sdps.push(sdp.clone());
                    cl.pending_offers.push_back(PendingOffer {
                        revision,
                        sdp,
                        tracks,
                    });
                    if cl.auto_answer {
                        self.answer_next_offer(c);
                    }
                }
                MediaEvent::Candidate { pc, candidate } => {
                    let cl = &mut self.clients[c.0];
                    let ready = cl
                        .conn(pc)
                        .is_some_and(|conn| conn.pc.remote_description().is_some());
                    if ready {
                        cl.add_candidate(pc, candidate);
                    } else {
                        cl.early_candidates.push((pc, candidate));
                    }
                }
                MediaEvent::Failed { reason } => self.client_failed(c, format!("failed: {reason}")),
                MediaEvent::Unreachable { reason } => {
                    self.client_failed(c, format!("unreachable: {reason}"))
                }
                MediaEvent::Error { code, message } => {
                    self.client_failed(c, format!("error {code:?}: {message}"))
                }
                MediaEvent::TracksChanged { .. }
                | MediaEvent::Speaker { .. }
                | MediaEvent::Layers { .. } => {}
            }
        }
        busy
    }
}

/// A signaling event in one line (SDP left out).
fn event_line(ev: &MediaEvent) -> String {
    match ev {
        MediaEvent::Answer { sdp } => format!("answer ({} bytes of SDP)", sdp.len()),
        MediaEvent::Offer {
            revision, tracks, ..
        } => {
            let t: Vec<&str> = tracks.iter().map(|t| t.track.as_str()).collect();
            format!("offer rev {revision} tracks {t:?}")
        }
        MediaEvent::Candidate { pc, candidate } => {
            format!("candidate {pc:?} {}", candidate.candidate)
        }
        other => format!("{other:?}"),
    }
}

/// Counts a frame of a track whose latest frame has timestamp `ts`: its number, and its
/// timestamp (the first frame keeps `ts`, later ones follow 1/30 s on).
fn next_frame(frames: &mut u32, ts: u32) -> (u32, u32) {
    let frame = *frames;
    *frames += 1;
    let ts = if frame == 0 {
        ts
    } else {
        ts.wrapping_add(VIDEO_TICKS)
    };
    (frame, ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz targets' setup: links without delay, nothing recorded.
    #[test]
    fn instant_links_without_recording_connect_and_count() {
        let mut sim = Sim::new(3);
        sim.set_recording(false);
        let (a, b) = (sim.join("a"), sim.join("b"));
        for c in [a, b] {
            for dir in [Dir::Up, Dir::Down] {
                sim.set_link(c, dir, LinkConfig::instant());
            }
        }
        sim.publish(a, &[MediaKind::Video]);
        let started = sim.run_until(Duration::from_secs(10), |s| s.connected(a));
        assert!(started);
        for _ in 0..100 {
            sim.send_video(a, 0, true, 1);
            sim.run_for(Duration::from_millis(33));
            if sim.connected(b) && sim.client(b).received_count > 5 {
                break;
            }
        }
        assert!(sim.client(b).received_count > 5);
        assert!(sim.client(b).received.is_empty(), "nothing kept");
        assert_eq!(sim.trace.lines().count(), 0, "nothing traced");
        assert!(sim.failure().is_none());
        assert_eq!(sim.misrouted, 0);
    }
}
