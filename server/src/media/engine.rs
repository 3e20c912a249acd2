//! The sans-I/O SFU core.
//!
//! An [`Engine`] owns a set of rooms' peer connections and forwards media between them. It never
//! touches a socket or a clock: the shell ([`super::udp`]) feeds it datagrams, commands and
//! timeouts, each with `now`, and polls [`Engine::poll_output`] for what to send and tell until
//! it says when to wake it next (str0m's shape). Several engines (one per worker thread, each
//! with its own rooms) can run side by side; nothing in here is shared between them except the
//! metrics counters.
//!
//! This file is membership and the input/output loop; each protocol concept has its own module:
//! `connection` (peer connections and what they report), `negotiate` (offers,
//! answers, payload types, candidates), `forward` (per-packet forwarding and keyframe
//! replay), `pli` (keyframe requests), `sender_report`, and the seam between
//! sources and sinks in `track`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::peer_connection::event::RTCTrackEventInit;
use rtc::peer_connection::message::TaggedRTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::sansio::Protocol;

pub use super::api::{Command, ExternalTrack, MediaEvent, ParticipantKey, TrackKey};
use super::api::{EngineConfig, Output, OutputTrack, Ssrc, TapId, Transmit};
use super::connection::{Connection, Connections, PeerKey};
use super::gop_cache::GopCache;
use super::keyframe::{starts_keyframe, KeyframeGate, VideoCodec};
use super::member::{Browser, Member, MemberKind, Rooms};
use super::pace::Pacer;
use super::path::PathPin;
use super::peer;
use super::rewrite::Rewriter;
use super::sender_report::REPORT_INTERVAL;
use super::speaker::DominantSpeaker;
use super::track::{Sink, SinkKind, Source, Track};
use crate::metrics::{KeyframeCause, Metrics};
use crate::names::{ParticipantId, RoomName};
use crate::protocol::{ErrorCode, MediaKind, PcRole, TrackInfo};

/// The SFU core for a set of rooms.
pub struct Engine {
    pub(super) candidates: Vec<SocketAddr>,
    pub(super) tcp_candidates: Vec<SocketAddr>,
    pub(super) conns: Connections,
    pub(super) members: HashMap<ParticipantKey, Member>,
    pub(super) rooms: Rooms,
    pub(super) tracks: HashMap<TrackKey, Track>,
    /// Player → the tracks it copies.
    pub(super) taps: HashMap<TapId, Vec<TrackKey>>,
    /// Each room's dominant speaker.
    pub(super) speakers: HashMap<RoomName, DominantSpeaker>,
    /// Whether external video keeps its latest group of pictures for instant start.
    gop_cache: bool,
    next_track: u64,
    /// Tracks with a keyframe request deferred by their gate.
    pub(super) keyframes_pending: Vec<TrackKey>,
    next_report: Option<Instant>,
    /// When the subscribers' allocations are next worked out (`adapt`).
    pub(super) next_adapt: Option<Instant>,
    /// What this engine last put into the metrics' estimate histogram (`adapt`).
    pub(super) counted_estimates: [i64; crate::metrics::ESTIMATE_BUCKETS.len() + 1],
    pub(super) counted_estimates_sum: i64,
    pub(super) metrics: Arc<Metrics>,
    pub(super) scratch: Vec<TaggedRTCMessage>,
    /// Datagrams taken out of connections early (see `forward::REPLAY_CHUNK`).
    pub(super) early: VecDeque<Transmit>,
    /// Events, playback and answers for the shell, oldest first.
    pub(super) outputs: VecDeque<Output>,
    /// The latest `now` the engine was told.
    pub(super) last_now: Option<Instant>,
    pub(super) rng: StdRng,
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

impl Engine {
    pub fn new(config: EngineConfig, metrics: Arc<Metrics>) -> Self {
        Engine {
            candidates: config.candidates,
            tcp_candidates: config.tcp_candidates,
            conns: Connections::default(),
            members: HashMap::new(),
            rooms: Rooms::default(),
            tracks: HashMap::new(),
            taps: HashMap::new(),
            speakers: HashMap::new(),
            gop_cache: true,
            next_track: 1,
            keyframes_pending: Vec::new(),
            next_report: None,
            next_adapt: None,
            counted_estimates: Default::default(),
            counted_estimates_sum: 0,
            metrics,
            scratch: Vec::new(),
            early: VecDeque::new(),
            outputs: VecDeque::new(),
            last_now: None,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Browsers in the engine's rooms.
    pub fn participant_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.browser().is_some())
            .count()
    }

    pub fn peer_count(&self) -> usize {
        self.conns.count()
    }

    // ----- inputs and outputs -------------------------------------------------------------

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.last_now = Some(now);
        match cmd {
            Command::Join { key, room, id } => self.join(now, key, room, id),
            Command::Publish { key, sdp } => self.publish(now, key, sdp),
            Command::SubscribeAnswer { key, sdp, revision } => {
                self.subscribe_answer(now, key, sdp, revision)
            }
            Command::Candidate { key, pc, candidate } => self.remote_candidate(key, pc, candidate),
            Command::Leave { key } => self.remove_member(now, key),
            Command::ExternalJoin { key, room, id } => self.external_join(now, key, room, id),
            Command::ExternalTracks { key, tracks } => self.external_tracks(now, key, tracks),
            Command::ExternalRtp { key, index, packet } => {
                self.external_rtp(now, key, index, packet)
            }
            Command::ExternalSenderReport {
                key,
                index,
                ntp,
                rtp,
            } => {
                let tk = self.external_track(key, index);
                if let Some(t) = tk.and_then(|tk| self.tracks.get_mut(&tk)) {
                    t.sr = Some((ntp, rtp, now));
                    // With a low layer, the camera's stream is a layer with this report.
                    if let Some(l) = t.layers[super::low_layer::CAMERA].as_mut() {
                        l.sr = t.sr;
                    }
                }
            }
            Command::LowLayerRtp { track, packet } => self.low_layer_rtp(now, track, packet),
            Command::LowLayerSenderReport { track, ntp, rtp } => {
                self.low_layer_sender_report(now, track, ntp, rtp)
            }
            Command::Describe { request, room, id } => {
                let tracks = self.describe(&room, &id);
                self.outputs.push_back(Output::Described(request, tracks));
            }
            Command::Subscriptions { request, room } => {
                let view = self.subscriptions(&room);
                self.outputs.push_back(Output::Subscriptions(request, view));
            }
            Command::Tap {
                tap,
                room,
                id,
                tracks,
            } => self.tap(now, tap, &room, &id, &tracks),
            Command::TapLagged { tap } => self.tap_lagged(now, tap),
            Command::Untap { tap } => self.untap(tap),
            Command::RestartIce { key } => self.restart_ice(now, key),
            Command::Congested { path, congested } => self.congested(now, path, congested),
            Command::PathClosed(path) => self.path_closed(now, path),
            Command::KeyframeCache(on) => self.gop_cache = on,
            Command::Mute { key, kind, muted } => self.mute(key, kind, muted),
            Command::SetLayer { key, track, layer } => self.set_layer(now, key, &track, layer),
            Command::Shutdown => {
                let keys: Vec<ParticipantKey> = self.members.keys().copied().collect();
                for key in keys {
                    self.remove_member(now, key);
                }
            }
        }
    }

    /// Drives every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        while let Some(key) = self.conns.pop_due(now) {
            // The pacer's release, and `rtc`'s own timers only when they are due: a connection
            // woken to release paced video needs nothing else.
            self.release_paced(now, key);
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.pc_deadline.is_some_and(|d| d <= now) {
                if let Err(e) = conn.pc.handle_timeout(now) {
                    tracing::debug!(error = %e, "peer timeout handling failed");
                }
                self.service(now, key);
            } else {
                self.conns.mark_dirty(key);
            }
        }
        if self.next_adapt.is_some_and(|t| now >= t) {
            self.adapt(now);
        }
        self.poll_keyframe_requests(now);
        if self.next_report.is_some_and(|t| now >= t) {
            self.send_sender_reports(now);
            self.keyframe_watchdog(now);
            // Who receives which layer changes with subscriptions, switches and leaves: once
            // a second is soon enough to stop or start encoding a layer.
            let simulcast: Vec<TrackKey> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.is_simulcast())
                .map(|(tk, _)| *tk)
                .collect();
            for tk in simulcast {
                self.dynacast(tk);
            }
            self.next_report = if self.members.is_empty() {
                None
            } else {
                Some(now + REPORT_INTERVAL)
            };
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.conns.next_deadline(),
            self.next_report,
            self.next_adapt,
            self.keyframe_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
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
        if let Some(t) = self.conns.poll_transmit() {
            return Output::Transmit(t);
        }
        let far = self.last_now.unwrap_or_else(Instant::now) + Duration::from_secs(3600);
        Output::Timeout(self.poll_timeout().unwrap_or(far))
    }

    // ----- members ------------------------------------------------------------------------

    fn join(&mut self, now: Instant, key: ParticipantKey, room: RoomName, id: ParticipantId) {
        if self.members.contains_key(&key) {
            return;
        }
        let subscribe = match self.new_conn(now, key, PcRole::Subscribe) {
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
        let browser = Browser {
            publish: None,
            subscribe,
            subscribed: HashMap::new(),
            revision: 0,
            awaiting_answer: None,
            renegotiate: false,
        };
        self.add_member(now, key, room.clone(), id, MemberKind::Browser(browser));
        self.tell_speaker(key);
        let existing: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room)
            .map(|(k, _)| *k)
            .collect();
        for tk in &existing {
            self.subscribe(key, *tk);
        }
        if !existing.is_empty() {
            self.renegotiate(now, key);
        }
    }

    fn external_join(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
    ) {
        if self.members.contains_key(&key) {
            return;
        }
        tracing::info!(room = %room, participant = %id, "camera joined the media plane");
        self.add_member(now, key, room, id, MemberKind::External);
    }

    fn add_member(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
        kind: MemberKind,
    ) {
        self.rooms.add(&room, key);
        self.speakers.entry(room.clone()).or_default();
        self.members.insert(
            key,
            Member {
                room,
                id,
                published: Vec::new(),
                muted: Vec::new(),
                kind,
            },
        );
        if self.next_report.is_none() {
            self.next_report = Some(now + REPORT_INTERVAL);
        }
        if self.next_adapt.is_none() {
            self.next_adapt = Some(now + super::adapt::ADAPT_INTERVAL);
        }
    }

    fn mute(&mut self, key: ParticipantKey, kind: MediaKind, muted: bool) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let was = m.muted.contains(&kind);
        if muted == was {
            return;
        }
        if muted {
            m.muted.push(kind);
        } else {
            m.muted.retain(|k| *k != kind);
        }
        for tk in &m.published {
            let Some(t) = self.tracks.get_mut(tk).filter(|t| t.kind == kind) else {
                continue;
            };
            t.muted = muted;
            if !muted && kind == MediaKind::Video {
                // The sinks' decoders lost the picture: start them again at a keyframe.
                for s in &mut t.sinks {
                    s.waiting_keyframe = true;
                }
            }
        }
    }

    pub(super) fn remove_member(&mut self, now: Instant, key: ParticipantKey) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        // All its tracks go before anyone is offered again: one offer per subscriber, naming
        // none of them.
        let published = m.published.clone();
        let mut reoffer = Vec::new();
        for tk in published {
            reoffer.extend(self.take_track(tk, false));
        }
        let Some(m) = self.members.remove(&key) else {
            return;
        };
        self.rooms.remove(&m.room, key);
        self.speaker_left(&m.room, key);
        match m.kind {
            MemberKind::Browser(b) => {
                for tk in b.subscribed.values() {
                    if let Some(t) = self.tracks.get_mut(tk) {
                        t.sinks.retain(|s| s.subscriber() != Some(key));
                    }
                }
                for pk in [Some(b.subscribe), b.publish].into_iter().flatten() {
                    self.close_conn(pk);
                }
                tracing::info!(room = %m.room, participant = %m.id, "left the media plane");
            }
            MemberKind::External => {
                tracing::info!(room = %m.room, participant = %m.id, "camera left the media plane");
            }
        }
        reoffer.sort();
        reoffer.dedup();
        for sub in reoffer {
            self.renegotiate(now, sub);
        }
    }

    /// Tells browser `key`'s session something (nothing for members that are gone).
    pub(super) fn notify(&mut self, key: ParticipantKey, ev: MediaEvent) {
        if self.members.contains_key(&key) {
            self.outputs.push_back(Output::Event(key, ev));
        }
    }

    pub(super) fn notify_error(&mut self, key: ParticipantKey, code: ErrorCode, message: String) {
        self.notify(key, MediaEvent::Error { code, message });
    }

    /// A new connection for `owner` (its ufrag, once described, is its route).
    pub(super) fn new_conn(
        &mut self,
        now: Instant,
        owner: ParticipantKey,
        role: PcRole,
    ) -> Result<PeerKey, rtc::shared::error::Error> {
        let (bwe, estimate) = match role {
            PcRole::Subscribe => {
                let (bwe, estimate) = super::bwe::Bwe::new();
                (Some(bwe), Some(estimate))
            }
            PcRole::Publish => (None, None),
        };
        let pc = peer::build(
            now,
            role,
            &self.candidates,
            &self.tcp_candidates,
            estimate.clone(),
        )?;
        let key = self.conns.insert(Connection {
            pc,
            owner,
            role,
            // Known from its first local description (see `sync_ice`).
            ufrag: String::new(),
            ever_connected: false,
            state: RTCPeerConnectionState::New,
            deadline: None,
            dirty: false,
            inbound: HashMap::new(),
            trickled: false,
            path: PathPin::default(),
            congested: false,
            relay_addrs: Vec::new(),
            reach: None,
            repeats: Default::default(),
            estimate,
            bwe,
            twcc: None,
            pacer: Pacer::new(super::bwe::INITIAL_BPS),
            adapt: Default::default(),
            pc_deadline: None,
        });
        self.metrics.peers_new.fetch_add(1, Relaxed);
        Ok(key)
    }

    // ----- tracks -------------------------------------------------------------------------

    /// Subscriber `key` wants `layer` of the video track published as `track` (`None`: it
    /// shows it nowhere).
    fn set_layer(&mut self, now: Instant, key: ParticipantKey, track: &str, layer: Option<usize>) {
        // The subscriber's own map from the ids it was offered to tracks.
        let tk = self
            .members
            .get(&key)
            .and_then(|m| m.browser())
            .and_then(|b| b.subscribed.get(track).copied());
        let found = tk.and_then(|tk| {
            let t = self.tracks.get_mut(&tk).filter(|t| t.is_video())?;
            let simulcast = t.is_simulcast();
            let present: [bool; super::track::LAYERS] =
                std::array::from_fn(|r| t.layers[r].is_some());
            let s = t.sink_of_mut(key)?;
            let resumed = s.paused && layer.is_some() && !s.starved;
            s.paused = layer.is_none();
            if let Some(l) = layer {
                s.target = l.min(super::track::LAYERS - 1);
            }
            let target = layer.and_then(|_| super::track::effective_layer(present, s.want()));
            if resumed {
                // From a keyframe, as a new subscriber.
                s.waiting_keyframe = true;
            }
            let moving = simulcast && s.layer.is_some() && s.layer != target;
            Some((tk, simulcast, target, resumed, moving))
        });
        let Some((tk, simulcast, target, resumed, moving)) = found else {
            return;
        };
        tracing::debug!(track, ?layer, "subscriber sets what it shows");
        match (simulcast, target) {
            (true, Some(target)) if resumed || moving => {
                self.metrics.keyframe_asked(if resumed {
                    KeyframeCause::Resume
                } else {
                    KeyframeCause::Layer
                });
                self.request_layer_keyframe(now, tk, target)
            }
            (false, _) if resumed => {
                self.metrics.keyframe_asked(KeyframeCause::Resume);
                self.request_keyframe(now, tk)
            }
            _ => {}
        }
        self.dynacast(tk);
    }

    /// Tells the owner of simulcast track `tk` which of its layers anyone receives, when that
    /// changed (see [`super::track::needed_layers`]).
    pub(super) fn dynacast(&mut self, tk: TrackKey) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        if !t.is_simulcast() || !matches!(t.source, Source::Peer { .. }) {
            return;
        }
        let present: [bool; super::track::LAYERS] = std::array::from_fn(|r| t.layers[r].is_some());
        let sinks = t.sinks.iter().filter(|s| !s.idle());
        let needed = super::track::needed_layers(
            present,
            sinks.map(|s| (s.layer, t.effective_layer(s.want()))),
        );
        if t.announced == Some(needed) {
            return;
        }
        let paused_before = t.paused_count;
        let paused_now = (0..needed.len())
            .filter(|&r| present[r] && !needed[r])
            .count();
        t.announced = Some(needed);
        t.paused_count = paused_now;
        let paused: Vec<String> = t
            .layers
            .iter()
            .zip(needed)
            .filter_map(|(l, n)| l.as_ref().filter(|_| !n).map(|l| l.rid.clone()))
            .collect();
        tracing::debug!(track = %t.public_id, ?paused, "dynacast: layers nobody receives");
        let (owner, public_id) = (t.owner, t.public_id.clone());
        self.metrics
            .paused_layers
            .fetch_add(paused_now as i64 - paused_before as i64, Relaxed);
        self.outputs.push_back(Output::Event(
            owner,
            MediaEvent::Layers {
                track: public_id,
                paused,
            },
        ));
    }

    /// A simulcast layer of track `tk` opened (`a=rid` `rid`; `ssrc` 0 until packets say).
    fn add_layer(&mut self, tk: TrackKey, rid: String, ssrc: Ssrc) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        let rank = super::track::rid_rank(&rid)
            .filter(|&r| t.layers[r].is_none())
            .or_else(|| t.layers.iter().position(Option::is_none));
        let Some(rank) = rank else {
            tracing::warn!(track = %t.public_id, rid, "a fourth simulcast layer; ignored");
            return;
        };
        tracing::info!(track = %t.public_id, rid, rank, "simulcast layer published");
        t.layers[rank] = Some(super::track::Layer {
            rid,
            ssrc: (ssrc.0 != 0).then_some(ssrc),
            gate: KeyframeGate::default(),
            sr: None,
        });
    }

    /// A browser's publish connection opened a track.
    pub(super) fn add_published_track(
        &mut self,
        now: Instant,
        pk: PeerKey,
        owner: ParticipantKey,
        init: RTCTrackEventInit,
    ) {
        let Some(m) = self.members.get(&owner) else {
            return;
        };
        let (room, owner_id) = (m.room.clone(), m.id.clone());
        let tk = TrackKey(self.next_track);
        let Some(conn) = self.conns.get_mut(pk) else {
            return;
        };
        if let Some(&known) = conn.inbound.get(&init.track_id) {
            // Another simulcast layer of a track already published.
            if let Some(rid) = init.rid {
                self.add_layer(known, rid, Ssrc(init.ssrc));
            }
            return;
        }
        let Some(mut receiver) = conn.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let kind = receiver.track().kind();
        let params = &receiver.get_parameters().rtp_parameters;
        let Some(codec) = params.codecs.first().map(|c| c.rtp_codec.clone()) else {
            tracing::warn!(participant = %owner_id, "published track without a negotiated codec; ignored");
            return;
        };
        let audio_level = params
            .header_extensions
            .iter()
            .find(|e| e.uri == rtc::sdp::extmap::AUDIO_LEVEL_URI)
            .and_then(|e| u8::try_from(e.id).ok());
        self.next_track += 1;
        let kind = media_kind(kind);
        let public_id = format!(
            "{owner_id}-{}{}",
            if kind == MediaKind::Audio { "a" } else { "v" },
            tk.0
        );
        tracing::info!(room = %room, participant = %owner_id, track = %public_id, codec = %codec.mime_type, "track published");
        conn.inbound.insert(init.track_id.clone(), tk);
        let source = Source::Peer {
            conn: pk,
            receiver: init.receiver_id,
            rtc_track_id: init.track_id,
        };
        let ssrc = Ssrc(init.ssrc);
        let rid = init.rid.clone();
        let reoffer = self.insert_track(tk, owner, public_id, kind, codec, source, ssrc);
        if let Some(rid) = rid {
            self.add_layer(tk, rid, ssrc);
        }
        if let Some(t) = self
            .tracks
            .get_mut(&tk)
            .filter(|t| t.kind == MediaKind::Audio)
        {
            t.audio_level = audio_level;
        }
        for sub in reoffer {
            self.renegotiate(now, sub);
        }
        self.send_tracks_changed(owner);
    }

    /// Adds a published track and subscribes every browser else in the room to it; returns
    /// them, to be offered again.
    #[allow(clippy::too_many_arguments)]
    fn insert_track(
        &mut self,
        tk: TrackKey,
        owner: ParticipantKey,
        public_id: String,
        kind: MediaKind,
        codec: RTCRtpCodec,
        source: Source,
        media_ssrc: Ssrc,
    ) -> Vec<ParticipantKey> {
        let Some(m) = self.members.get_mut(&owner) else {
            return Vec::new();
        };
        m.published.push(tk);
        let room = m.room.clone();
        let muted = m.muted.contains(&kind);
        self.tracks.insert(
            tk,
            Track {
                owner,
                room: room.clone(),
                public_id,
                kind,
                video: VideoCodec::from_mime(&codec.mime_type),
                codec,
                source,
                media_ssrc,
                last_ssrc: None,
                muted,
                sinks: Vec::new(),
                gate: KeyframeGate::default(),
                sr: None,
                audio_level: None,
                layers: Default::default(),
                announced: None,
                paused_count: 0,
                rates: Default::default(),
                low: Default::default(),
            },
        );
        let others: Vec<ParticipantKey> = self
            .rooms
            .members(&room)
            .iter()
            .copied()
            .filter(|k| *k != owner)
            .filter(|k| self.members.get(k).is_some_and(|m| m.browser().is_some()))
            .collect();
        for sub in &others {
            self.subscribe(*sub, tk);
        }
        others
    }

    pub(super) fn unpublish(&mut self, now: Instant, tk: TrackKey, tell_owner: bool) {
        for sub in self.take_track(tk, tell_owner) {
            self.renegotiate(now, sub);
        }
    }

    /// Takes a track out: its players are told when it was their last, its subscribers lose
    /// their sender for it. Returns the subscribers, to be offered again.
    fn take_track(&mut self, tk: TrackKey, tell_owner: bool) -> Vec<ParticipantKey> {
        let Some(track) = self.tracks.remove(&tk) else {
            return Vec::new();
        };
        tracing::info!(track = %track.public_id, "track unpublished");
        self.keyframes_pending.retain(|k| *k != tk);
        self.metrics
            .paused_layers
            .fetch_sub(track.paused_count as i64, Relaxed);
        if let Source::Peer {
            conn, rtc_track_id, ..
        } = &track.source
        {
            if let Some(conn) = self.conns.get_mut(*conn) {
                conn.inbound.remove(rtc_track_id);
            }
        }
        if let Some(m) = self.members.get_mut(&track.owner) {
            m.published.retain(|k| *k != tk);
        }
        if tell_owner {
            self.send_tracks_changed(track.owner);
        }
        let mut reoffer = Vec::new();
        for sink in track.sinks {
            match sink.to {
                SinkKind::Tap(tap) => {
                    if let Some(list) = self.taps.get_mut(&tap) {
                        list.retain(|k| *k != tk);
                        if list.is_empty() {
                            self.taps.remove(&tap);
                            self.outputs.push_back(Output::TapEnded(tap));
                        }
                    }
                }
                SinkKind::Peer(ps) => {
                    let sub = ps.subscriber;
                    let Some(b) = self.members.get_mut(&sub).and_then(|m| m.browser_mut()) else {
                        continue;
                    };
                    b.subscribed.remove(&track.public_id);
                    if let Some(conn) = self.conns.get_mut(ps.conn) {
                        if let Err(e) = conn.pc.remove_track(ps.sender) {
                            tracing::debug!(error = %e, "remove_track failed");
                        }
                    }
                    reoffer.push(sub);
                }
            }
        }
        reoffer
    }

    fn send_tracks_changed(&mut self, owner: ParticipantKey) {
        let Some(m) = self.members.get(&owner).filter(|m| m.browser().is_some()) else {
            return;
        };
        let tracks = m
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

    // ----- external sources ---------------------------------------------------------------

    /// An external member's track `index` (in the order its tracks were set).
    fn external_track(&self, key: ParticipantKey, index: usize) -> Option<TrackKey> {
        let m = self.members.get(&key)?;
        matches!(m.kind, MemberKind::External).then_some(())?;
        m.published.get(index).copied()
    }

    fn external_tracks(&mut self, now: Instant, key: ParticipantKey, tracks: Vec<ExternalTrack>) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if !matches!(m.kind, MemberKind::External) {
            return;
        }
        let old = std::mem::take(&mut m.published);
        let room = m.room.clone();
        let mut reoffer = Vec::new();
        for tk in old {
            reoffer.extend(self.take_track(tk, false));
        }
        for t in tracks {
            let tk = TrackKey(self.next_track);
            self.next_track += 1;
            tracing::info!(room = %room, track = %t.public_id, codec = %t.codec.mime_type, "camera track published");
            let source = Source::External {
                cache: GopCache::default(),
            };
            reoffer.extend(self.insert_track(
                tk,
                key,
                t.public_id,
                t.kind,
                t.codec,
                source,
                Ssrc(0),
            ));
        }
        // One offer for the whole change (a camera's tracks come and go together).
        reoffer.sort();
        reoffer.dedup();
        for sub in reoffer {
            self.renegotiate(now, sub);
        }
    }

    fn external_rtp(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        index: usize,
        packet: rtc::rtp::Packet,
    ) {
        let Some(tk) = self.external_track(key, index) else {
            return;
        };
        if self.gop_cache {
            if let Some(t) = self.tracks.get_mut(&tk) {
                let video = t.video;
                if let (Source::External { cache }, MediaKind::Video) = (&mut t.source, t.kind) {
                    cache.push(&packet, starts_keyframe(video, &packet.payload));
                }
            }
        }
        let layer = self
            .tracks
            .get(&tk)
            .filter(|t| t.has_low_layer())
            .map(|_| super::low_layer::CAMERA);
        self.forward(now, tk, packet, layer);
    }

    // ----- players ------------------------------------------------------------------------

    fn owner_by_id(&self, room: &RoomName, id: &ParticipantId) -> Option<ParticipantKey> {
        self.rooms
            .members(room)
            .iter()
            .copied()
            .find(|k| self.members.get(k).is_some_and(|m| m.id == *id))
    }

    fn describe(&self, room: &RoomName, id: &ParticipantId) -> Option<Vec<OutputTrack>> {
        let owner = self.owner_by_id(room, id)?;
        let m = self.members.get(&owner)?;
        let mut next_dynamic = 96u8;
        let mut out = Vec::new();
        for tk in &m.published {
            let Some(t) = self.tracks.get(tk) else {
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
                key: *tk,
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
        let Some(owner) = self.owner_by_id(room, id) else {
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
            let rewriter = Rewriter::new(t.codec.clock_rate, self.rng.random(), self.rng.random());
            t.sinks
                .push(Sink::new(SinkKind::Tap(tap), rewriter, t.kind));
            keys.push(tk);
        }
        if keys.is_empty() {
            self.outputs.push_back(Output::TapEnded(tap));
            return;
        }
        self.taps.insert(tap, keys.clone());
        for tk in keys {
            self.metrics.keyframe_asked(KeyframeCause::Start);
            self.request_keyframe(now, tk);
        }
    }

    /// Player `tap` lost packets in the shell: its video starts again at a keyframe. A browser
    /// source is asked for one; a camera's player waits for the next live keyframe or the
    /// watchdog's replay (replaying at once could meet the same full queue again).
    fn tap_lagged(&mut self, now: Instant, tap: TapId) {
        let keys = self.taps.get(&tap).cloned().unwrap_or_default();
        for tk in keys {
            let Some(t) = self.tracks.get_mut(&tk).filter(|t| t.is_video()) else {
                continue;
            };
            let mut lagged = false;
            for s in t.sinks.iter_mut().filter(|s| s.tap() == Some(tap)) {
                lagged |= !std::mem::replace(&mut s.waiting_keyframe, true);
            }
            if lagged && matches!(t.source, Source::Peer { .. }) {
                self.metrics.keyframe_asked(KeyframeCause::Resume);
                self.request_keyframe(now, tk);
            }
        }
    }

    fn untap(&mut self, tap: TapId) {
        for tk in self.taps.remove(&tap).unwrap_or_default() {
            if let Some(t) = self.tracks.get_mut(&tk) {
                t.sinks.retain(|s| s.tap() != Some(tap));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn test_config() -> EngineConfig {
        EngineConfig {
            candidates: vec!["127.0.0.1:9".parse().unwrap()],
            tcp_candidates: vec!["127.0.0.1:9".parse().unwrap()],
            seed: 7,
        }
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
        assert!(e.conns.demux.is_empty());
    }
}
