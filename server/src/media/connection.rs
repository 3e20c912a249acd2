//! The engine's peer connections: `rtc` connections in a slab, found by [`PeerKey`], routed to
//! by [`Demux`], with a timer heap of their deadlines and the list of those with something to
//! send. And what the engine does with what a connection tells it: state changes, tracks
//! opening and closing, RTP and RTCP.
//!
//! `rtc` answers a peer's DTLS close_notify but stays "connected" until ICE times out, so an
//! encrypted DTLS alert from a connected peer ends its connection here at once.
//!
//! Datagrams arrive on a [`FiveTuple`]: UDP on the media port, or a frame of an ICE-TCP
//! connection; both go through the same demultiplexer, path pin and `rtc` connection, which is
//! told the transport (`TransportContext::transport_protocol`) so that its ICE agent matches
//! the UDP or the TCP candidate. What it sends says its transport the same way.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::interceptor::BandwidthEstimator;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::header::PacketType;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::adapt::Adapt;
use super::api::{FiveTuple, Output, ParticipantKey, Ssrc, TrackKey, Transmit, Transport};
use super::bwe::{Bwe, Estimate};
use super::demux::Demux;
use super::dtls_repeat::RepeatGuard;
use super::engine::Engine;
use super::pace::Pacer;
use super::path::PathPin;
use super::twcc::TwccSend;
use crate::metrics::{KeyframeCause, Metrics};
use crate::protocol::PcRole;
use std::collections::HashMap;

/// Index of a peer connection in the engine's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub(super) u32);

pub(super) struct Connection {
    pub pc: RTCPeerConnection,
    pub owner: ParticipantKey,
    pub role: PcRole,
    /// Its current ICE ufrag: the demultiplexing key (empty until the first local
    /// description; changes with each ICE restart).
    pub ufrag: String,
    /// Whether it was ever connected: a connection that fails before is a peer whose network
    /// lets no media through (told apart from one that worked and broke).
    pub ever_connected: bool,
    pub state: RTCPeerConnectionState,
    pub deadline: Option<Instant>,
    /// Whether it is on the list of connections with something to send.
    pub dirty: bool,
    /// Publish connections: `rtc`'s track id → our track.
    pub inbound: HashMap<String, TrackKey>,
    /// Whether our candidates were trickled (after the first local description).
    pub trickled: bool,
    /// Which address `rtc` sees for the peer, and where the peer really is (see [`PathPin`]).
    pub path: PathPin,
    /// The shell cannot send on the path as fast as media comes (a slow ICE-TCP reader): video
    /// waits (see `Command::Congested`).
    pub congested: bool,
    /// Addresses the peer announced as relay candidates (TURN): a path to one of them is
    /// counted and logged as relayed.
    pub relay_addrs: Vec<SocketAddr>,
    /// How the connection is counted in the metrics while connected.
    pub reach: Option<Reach>,
    /// Until it connects: which of the peer's handshake flights it has answered, so that
    /// their repeats are kept from `rtc` (see [`RepeatGuard`]).
    pub repeats: RepeatGuard,
    /// Subscribe connections: the bandwidth estimate (`super::bwe`), the pacer that follows it
    /// (`super::pace`), and the probing that raises it (`super::adapt`).
    pub estimate: Option<Arc<Estimate>>,
    pub bwe: Option<Bwe>,
    /// Transport-wide numbering, once the subscriber's answer negotiated it (`super::twcc`).
    pub twcc: Option<TwccSend>,
    pub pacer: Pacer,
    pub adapt: Adapt,
    /// When `rtc` wants its `handle_timeout` (the connection's `deadline` is the earlier of
    /// this and the pacer's next release).
    pub pc_deadline: Option<Instant>,
}

/// How a connected peer reaches the server: what `/metrics` counts and the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Udp,
    Tcp,
    /// Through a TURN server (the peer's relay candidate), whichever way it reaches that.
    Relay,
}

impl Reach {
    fn gauge(self, m: &Metrics) -> &AtomicI64 {
        match self {
            Reach::Udp => &m.connected_udp,
            Reach::Tcp => &m.connected_tcp,
            Reach::Relay => &m.connected_relay,
        }
    }
}

fn protocol(t: Transport) -> TransportProtocol {
    match t {
        Transport::Udp => TransportProtocol::UDP,
        Transport::Tcp => TransportProtocol::TCP,
    }
}

impl Connection {
    pub fn connected(&self) -> bool {
        self.state == RTCPeerConnectionState::Connected
    }

    /// The next datagram the connection wants sent, on the path where the peer really is.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.pc.poll_write()?;
        if !self.connected() {
            self.repeats.sent(&t.message);
        }
        let to = FiveTuple {
            transport: match t.transport.transport_protocol {
                TransportProtocol::TCP => Transport::Tcp,
                _ => Transport::Udp,
            },
            local: t.transport.local_addr,
            remote: t.transport.peer_addr,
        };
        let real = self.path.outbound(to, &t.message);
        Some(Transmit {
            contents: t.message,
            destination: real.remote,
            source: real.local,
            transport: real.transport,
        })
    }

    /// How the peer reaches us now: the path it nominated last.
    pub fn reach(&self) -> Option<Reach> {
        let p = self.path.current()?;
        Some(if self.relay_addrs.contains(&p.remote) {
            Reach::Relay
        } else if p.transport == Transport::Tcp {
            Reach::Tcp
        } else {
            Reach::Udp
        })
    }
}

/// The table of connections.
#[derive(Default)]
pub(super) struct Connections {
    pub slots: Vec<Option<Connection>>,
    free: Vec<u32>,
    pub demux: Demux<PeerKey>,
    /// Deadlines of connections; an entry is stale when the connection's deadline moved.
    pub timers: BinaryHeap<Reverse<(Instant, PeerKey)>>,
    /// Connections with something to send, in the order they got it.
    pub dirty: Vec<PeerKey>,
    /// How far the engine's output has got through `dirty`.
    pub dirty_at: usize,
}

impl Connections {
    pub fn get(&self, key: PeerKey) -> Option<&Connection> {
        self.slots.get(key.0 as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, key: PeerKey) -> Option<&mut Connection> {
        self.slots.get_mut(key.0 as usize).and_then(Option::as_mut)
    }

    pub fn count(&self) -> usize {
        self.slots.iter().filter(|c| c.is_some()).count()
    }

    pub fn insert(&mut self, conn: Connection) -> PeerKey {
        let key = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(conn);
                PeerKey(i)
            }
            None => {
                self.slots.push(Some(conn));
                PeerKey(self.slots.len() as u32 - 1)
            }
        };
        self.mark_dirty(key);
        key
    }

    /// Routes `key` by `ufrag` from now on; true if it had another one before (an ICE
    /// restart).
    pub fn set_ufrag(&mut self, key: PeerKey, ufrag: &str) -> bool {
        let Some(conn) = self.get_mut(key) else {
            return false;
        };
        if conn.ufrag == ufrag {
            return false;
        }
        let old = std::mem::replace(&mut conn.ufrag, ufrag.to_owned());
        self.demux.rename(&old, ufrag.to_owned(), key);
        !old.is_empty()
    }

    pub fn remove(&mut self, key: PeerKey) -> Option<Connection> {
        let conn = self.slots.get_mut(key.0 as usize).and_then(Option::take)?;
        self.demux.remove(&conn.ufrag, key);
        self.free.push(key.0);
        Some(conn)
    }

    pub fn mark_dirty(&mut self, key: PeerKey) {
        if let Some(c) = self.get_mut(key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// The next datagram of a connection with something to send; a connection that has
    /// nothing left gets its deadline refreshed and leaves the list.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some(&key) = self.dirty.get(self.dirty_at) {
            if let Some(c) = self.slots.get_mut(key.0 as usize).and_then(Option::as_mut) {
                if let Some(t) = c.poll_transmit() {
                    return Some(t);
                }
                c.dirty = false;
                c.pc_deadline = c.pc.poll_timeout();
                let deadline = c.pc_deadline.into_iter().chain(c.pacer.next_wake()).min();
                if deadline != c.deadline {
                    c.deadline = deadline;
                    if let Some(d) = deadline {
                        self.timers.push(Reverse((d, key)));
                    }
                }
            }
            self.dirty_at += 1;
        }
        self.dirty.clear();
        self.dirty_at = 0;
        None
    }

    /// The connection whose deadline is due at `now`, if any (stale timer entries are skipped).
    pub fn pop_due(&mut self, now: Instant) -> Option<PeerKey> {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                return None;
            }
            self.timers.pop();
            let Some(c) = self.get_mut(key) else {
                continue;
            };
            if c.deadline != Some(at) {
                continue;
            }
            c.deadline = None;
            return Some(key);
        }
        None
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }
}

/// The metrics gauge counting connections in state `s`.
pub(super) fn state_gauge(m: &Metrics, s: RTCPeerConnectionState) -> &AtomicI64 {
    match s {
        RTCPeerConnectionState::New | RTCPeerConnectionState::Unspecified => &m.peers_new,
        RTCPeerConnectionState::Connecting => &m.peers_connecting,
        RTCPeerConnectionState::Connected => &m.peers_connected,
        RTCPeerConnectionState::Disconnected => &m.peers_disconnected,
        _ => &m.peers_failed,
    }
}

/// A DTLS record of content type alert (21) from epoch 1 or later, i.e. encrypted after the
/// handshake: close_notify or a fatal error, either way the end of the connection
/// (RFC 6347 §4.1: type, version, epoch, sequence number, length; 13 bytes of header).
pub(super) fn is_encrypted_dtls_alert(d: &[u8]) -> bool {
    d.len() >= 13 && d[0] == 21 && d[1] == 254 && u16::from_be_bytes([d[3], d[4]]) >= 1
}

impl Engine {
    /// A UDP datagram arrived on the media port at `local` (the address it was sent to).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        self.handle_input(now, FiveTuple::udp(local, from), data);
    }

    /// A datagram arrived on `path`: UDP, or one frame of an ICE-TCP connection. Returns
    /// whether a connection took it; a TCP connection whose first frame none takes is to be
    /// closed (it does not begin with a binding request naming one of ours).
    pub fn handle_input(&mut self, now: Instant, path: FiveTuple, data: &[u8]) -> bool {
        self.last_now = Some(now);
        let Some(key) = self.conns.demux.route(path, data) else {
            self.metrics.dropped_datagrams.fetch_add(1, Relaxed);
            return false;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            self.metrics.dropped_datagrams.fetch_add(1, Relaxed);
            return false;
        };
        if !conn.connected() && conn.repeats.is_answered_repeat(data) {
            tracing::debug!(%path, "kept a repeated DTLS flight from the handshake that answered it");
            return true;
        }
        let closing = conn.connected() && is_encrypted_dtls_alert(data);
        let before = conn.reach();
        let shown = conn.path.inbound(path, data);
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: shown.local,
                peer_addr: shown.remote,
                ecn: None,
                transport_protocol: protocol(shown.transport),
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = conn.pc.handle_read(msg) {
            tracing::debug!(%path, error = %e, "datagram rejected by its connection");
            self.metrics.dropped_datagrams.fetch_add(1, Relaxed);
        }
        if conn.connected() && conn.reach() != before {
            self.count_reach(key);
        }
        self.service(now, key);
        if closing {
            // `rtc` answers close_notify but keeps the connection "connected" until ICE times
            // out; the peer has said it is gone, so it is.
            self.conn_closed(now, key, "closed by the peer");
        }
        true
    }

    /// Takes a connection's ufrag from its latest local description, after every
    /// `set_local_description`. A new one means ICE restarted (RFC 8445 §9): the demultiplexer
    /// routes by it, `rtc` has forgotten its selected pair so the path pin starts over, and the
    /// candidates are trickled again for the new generation.
    pub(super) fn sync_ice(&mut self, key: PeerKey) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Some(desc) = conn.pc.local_description() else {
            return;
        };
        let Some(ufrag) = super::peer::ice_ufrag(&desc.sdp) else {
            return;
        };
        if self.conns.set_ufrag(key, ufrag) {
            if let Some(c) = self.conns.get_mut(key) {
                c.path.reset();
                c.trickled = false;
                let (owner, role) = (c.owner, c.role);
                let id = self.members.get(&owner).map(|m| m.id.to_string());
                tracing::info!(participant = ?id, ?role, "ICE restart");
            }
        }
    }

    /// The browser asks for a new path for its subscribe connection (its network changed):
    /// the next subscribe offer restarts ICE with new credentials.
    pub(super) fn restart_ice(&mut self, now: Instant, key: ParticipantKey) {
        let Some(spk) = self
            .members
            .get(&key)
            .and_then(|m| m.browser())
            .map(|b| b.subscribe)
        else {
            return;
        };
        let Some(conn) = self.conns.get_mut(spk) else {
            return;
        };
        if conn.pc.remote_description().is_none() {
            // Never negotiated: there is nothing to restart yet.
            return;
        }
        conn.pc.restart_ice();
        self.renegotiate(now, key);
    }

    /// The shell's ICE-TCP connection `path` is gone: nothing arrives on it any more.
    pub(super) fn path_closed(&mut self, now: Instant, path: FiveTuple) {
        self.congested(now, path, false);
        self.conns.demux.forget(path);
    }

    /// Counts a connected connection under how it is reached now (and no longer under how it
    /// was), and says so in the log when that is not plain UDP.
    pub(super) fn count_reach(&mut self, key: PeerKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let now = if conn.connected() { conn.reach() } else { None };
        if now == conn.reach {
            return;
        }
        if let Some(old) = conn.reach.take() {
            old.gauge(&self.metrics).fetch_sub(1, Relaxed);
        }
        conn.reach = now;
        let (owner, role) = (conn.owner, conn.role);
        let Some(reach) = now else {
            return;
        };
        reach.gauge(&self.metrics).fetch_add(1, Relaxed);
        let id = self.members.get(&owner).map(|m| m.id.to_string());
        match reach {
            Reach::Udp => {
                tracing::debug!(participant = ?id, ?role, "media connected over UDP");
            }
            Reach::Tcp => tracing::info!(
                participant = ?id,
                ?role,
                "media connected only by ICE-TCP: this browser's UDP to the media port is blocked or worse than TCP"
            ),
            Reach::Relay => tracing::info!(
                participant = ?id,
                ?role,
                "media connected only through TURN: this browser reaches the media port by no direct path"
            ),
        }
    }

    /// Closes a connection and forgets it; its ICE-TCP connections are closed by the shell.
    pub(super) fn close_conn(&mut self, key: PeerKey) {
        let paths: Vec<FiveTuple> = self.conns.demux.addresses(key).to_vec();
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        let _ = conn.pc.close();
        state_gauge(&self.metrics, conn.state).fetch_sub(1, Relaxed);
        if let Some(reach) = conn.reach {
            reach.gauge(&self.metrics).fetch_sub(1, Relaxed);
        }
        self.outputs.extend(
            paths
                .into_iter()
                .filter(|p| p.transport == Transport::Tcp)
                .map(Output::Close),
        );
    }

    /// Drains a connection's events and inbound messages after anything happened to it.
    pub(super) fn service(&mut self, now: Instant, key: PeerKey) {
        self.conns.mark_dirty(key);
        let mut events = Vec::new();
        let mut scratch = std::mem::take(&mut self.scratch);
        let (owner, role) = {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            while let Some(ev) = conn.pc.poll_event() {
                events.push(ev);
            }
            while let Some(m) = conn.pc.poll_read() {
                scratch.push(m);
            }
            (conn.owner, conn.role)
        };
        for ev in events {
            self.handle_conn_event(now, key, owner, role, ev);
        }
        for TaggedRTCMessage { now: at, message } in scratch.drain(..) {
            match message {
                RTCMessage::RtpPacket(track_id, packet) => {
                    let tk = self
                        .conns
                        .get(key)
                        .and_then(|c| c.inbound.get(&track_id).copied());
                    if let Some(tk) = tk {
                        self.forward(at, tk, packet, None);
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

    fn handle_conn_event(
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
                    .conns
                    .get_mut(key)
                    .map(|c| std::mem::replace(&mut c.state, state))
                else {
                    return;
                };
                state_gauge(&self.metrics, old).fetch_sub(1, Relaxed);
                state_gauge(&self.metrics, state).fetch_add(1, Relaxed);
                let id = self.members.get(&owner).map(|m| m.id.to_string());
                tracing::debug!(participant = ?id, ?role, %state, "peer connection state");
                if state == RTCPeerConnectionState::Connected {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.ever_connected = true;
                    }
                }
                self.count_reach(key);
                match state {
                    RTCPeerConnectionState::Connected if role == PcRole::Subscribe => {
                        self.request_keyframes_for(now, owner, KeyframeCause::Start);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.conn_closed(now, key, &state.to_string());
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
                let closed = self
                    .conns
                    .get_mut(key)
                    .and_then(|c| c.inbound.remove(&track_id));
                if let Some(tk) = closed {
                    self.unpublish(now, tk, true);
                }
            }
            _ => {}
        }
    }

    /// A connection is over: its participant leaves the media plane, and its session is told.
    pub(super) fn conn_closed(&mut self, now: Instant, key: PeerKey, why: &str) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let (owner, role, worked) = (conn.owner, conn.role, conn.ever_connected);
        let id = self.members.get(&owner).map(|m| m.id.to_string());
        let reason = format!("{role:?} connection {why}").to_lowercase();
        let ev = if worked {
            tracing::info!(participant = ?id, ?role, why, "peer connection ended; removing participant");
            super::api::MediaEvent::Failed { reason }
        } else {
            tracing::warn!(participant = ?id, ?role, why, "peer connection ended before it ever connected: no path for media from this browser to the media port (UDP and ICE-TCP blocked?); removing participant");
            super::api::MediaEvent::Unreachable { reason }
        };
        self.notify(owner, ev);
        self.remove_member(now, owner);
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
                    .conns
                    .get(key)
                    .and_then(|c| c.inbound.get(track_id).copied())
                else {
                    return;
                };
                let Some(t) = self.tracks.get_mut(&tk) else {
                    return;
                };
                for p in packets {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        let ssrc = Ssrc(sr.ssrc);
                        let report = Some((sr.ntp_time, sr.rtp_time, now));
                        if let Some(rank) = t.layer_of(ssrc) {
                            if let Some(l) = t.layers[rank].as_mut() {
                                l.sr = report;
                            }
                        } else if Some(ssrc) == t.last_ssrc || ssrc == t.media_ssrc {
                            t.sr = report;
                        }
                    }
                }
            }
            PcRole::Subscribe => {
                // Transport-wide feedback: what arrived of what was sent, for the estimate.
                if let Some(c) = self.conns.get_mut(key) {
                    for p in packets {
                        let Some(fb) = p.as_any().downcast_ref::<TransportLayerCc>() else {
                            continue;
                        };
                        if let (Some(twcc), Some(bwe)) = (c.twcc.as_ref(), c.bwe.as_mut()) {
                            let reports = twcc.reports(fb);
                            bwe.on_reports(now, &reports);
                        }
                    }
                }
                // PLI (PSFB FMT 1) or FIR (FMT 4): the subscriber's decoder needs a keyframe.
                let wants_keyframe = packets.iter().any(|p| {
                    let h = p.header();
                    h.packet_type == PacketType::PayloadSpecificFeedback && matches!(h.count, 1 | 4)
                });
                if !wants_keyframe {
                    return;
                }
                let tk = self
                    .members
                    .get(&owner)
                    .and_then(|m| m.browser())
                    .and_then(|b| b.subscribed.get(track_id).copied());
                if let Some(tk) = tk {
                    self.resync_from_cache(now, owner, tk);
                    self.subscriber_wants_keyframe(now, owner, tk);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
