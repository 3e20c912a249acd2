//! Keyframe requests: who asks, and how a source is asked.
//!
//! A sink needs a keyframe when it starts, when its subscriber's connection comes up or its
//! answer is applied, when its decoder says so (PLI/FIR from the subscriber), and when it lost
//! packets in the shell (a player). A browser source is sent a PLI (RFC 4585 §6.3.1), gated per
//! track by [`KeyframeGate`](super::keyframe::KeyframeGate) to one per 500 ms, a request inside
//! the window deferred to its end; an external source cannot be asked, so its cached group of
//! pictures is replayed instead.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;

use super::api::{ExternalEvent, Output, ParticipantKey, TrackKey};
use super::engine::Engine;
use super::low_layer::LOW;
use super::track::{Sink, SinkKind, Source, LAYERS};
use crate::metrics::KeyframeCause;

/// How often one subscriber's decoder may make a publisher encode a keyframe of a track.
const SUBSCRIBER_PLI_INTERVAL: Duration = Duration::from_secs(1);

/// The SSRC the server's own RTCP feedback (PLI) is sent from.
const FEEDBACK_SSRC: u32 = 0x0c0f_ab00;

/// A sink whose decoder lost track gets the cached group again at most this often.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

impl Engine {
    pub(super) fn request_keyframe(&mut self, now: Instant, tk: TrackKey) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        if !t.is_video() {
            return;
        }
        if matches!(t.source, Source::External { .. }) {
            // A camera's low layer is asked of its transcoder, for the sinks that wait for it
            // or move to it.
            let wants_low = t.has_low_layer()
                && t.sinks.iter().filter(|s| !s.idle()).any(|s| {
                    t.effective_layer(s.want()) == Some(LOW)
                        && (s.waiting_keyframe || s.layer != Some(LOW))
                });
            if wants_low {
                self.request_layer_keyframe(now, tk, LOW);
            }
            // A camera cannot be asked; its cached group of pictures stands in.
            return self.replay(now, tk);
        }
        if t.is_simulcast() {
            // Only the layers that some sink waits for, or is moving to.
            let mut wanted = [false; LAYERS];
            for s in t.sinks.iter().filter(|s| !s.idle()) {
                if let Some(target) = t.effective_layer(s.want()) {
                    if s.waiting_keyframe || s.layer != Some(target) {
                        wanted[target] = true;
                    }
                }
            }
            for (rank, _) in wanted.iter().enumerate().filter(|(_, w)| **w) {
                self.request_layer_keyframe(now, tk, rank);
            }
            return;
        }
        if t.gate.request(now) {
            self.send_pli(now, tk, None);
        } else if !self.keyframes_pending.contains(&tk) {
            self.keyframes_pending.push(tk);
        }
    }

    /// Asks for a keyframe of one simulcast layer, gated per layer. A camera's own stream
    /// cannot be asked: its cached group is replayed to the sinks waiting for it.
    pub(super) fn request_layer_keyframe(&mut self, now: Instant, tk: TrackKey, rank: usize) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        if matches!(t.source, Source::External { .. }) && rank != LOW {
            return self.replay(now, tk);
        }
        let Some(l) = t.layers.get_mut(rank).and_then(Option::as_mut) else {
            return;
        };
        if l.gate.request(now) {
            let ssrc = l.ssrc;
            self.send_pli(now, tk, ssrc);
        } else if !self.keyframes_pending.contains(&tk) {
            self.keyframes_pending.push(tk);
        }
    }

    /// Subscriber `sub`'s decoder asked for a keyframe of track `tk`: of a simulcast track,
    /// only the layer it receives is asked, so a lossy subscriber of the small picture never
    /// costs the others a large keyframe.
    pub(super) fn subscriber_wants_keyframe(
        &mut self,
        now: Instant,
        sub: ParticipantKey,
        tk: TrackKey,
    ) {
        // One request per subscriber and track per `SUBSCRIBER_PLI_INTERVAL`: a decoder that
        // keeps losing its keyframe on a squeezed link would otherwise make the publisher encode
        // one every half second (the layer's own gate), for everyone on that layer.
        let Some(s) = self.tracks.get_mut(&tk).and_then(|t| t.sink_of_mut(sub)) else {
            return;
        };
        if s.last_pli
            .is_some_and(|t| now < t + SUBSCRIBER_PLI_INTERVAL)
        {
            return;
        }
        s.last_pli = Some(now);
        let layer = self
            .tracks
            .get(&tk)
            .filter(|t| t.is_simulcast())
            .and_then(|t| t.sink_of(sub))
            .and_then(|s| s.layer);
        match layer {
            Some(rank) => {
                self.metrics.keyframe_asked(KeyframeCause::Subscriber);
                self.request_layer_keyframe(now, tk, rank)
            }
            None => {
                self.metrics.keyframe_asked(KeyframeCause::Subscriber);
                self.request_keyframe(now, tk)
            }
        }
    }

    /// Sends the deferred requests whose window has ended.
    pub(super) fn poll_keyframe_requests(&mut self, now: Instant) {
        if self.keyframes_pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.keyframes_pending);
        for tk in pending {
            let Some(t) = self.tracks.get_mut(&tk) else {
                continue;
            };
            // The track's own gate, or each of its layers' (which SSRC to ask on).
            let mut due: Vec<Option<super::api::Ssrc>> = Vec::new();
            if t.gate.poll(now) {
                due.push(None);
            }
            for l in t.layers.iter_mut().flatten() {
                if l.gate.poll(now) {
                    due.push(l.ssrc);
                }
            }
            let again = t.gate.deadline().is_some()
                || t.layers
                    .iter()
                    .flatten()
                    .any(|l| l.gate.deadline().is_some());
            for ssrc in due {
                self.send_pli(now, tk, ssrc);
            }
            if again {
                self.keyframes_pending.push(tk);
            }
        }
    }

    /// When the earliest deferred request is due.
    pub(super) fn keyframe_deadline(&self) -> Option<Instant> {
        self.keyframes_pending
            .iter()
            .filter_map(|tk| self.tracks.get(tk))
            .flat_map(|t| {
                std::iter::once(t.gate.deadline())
                    .chain(t.layers.iter().flatten().map(|l| l.gate.deadline()))
            })
            .flatten()
            .min()
    }

    /// Sends a PLI for track `tk`, on `ssrc` (a simulcast layer's) or the track's own. Of a
    /// camera only its low layer's gate is ever asked: its transcoder is told to encode a
    /// keyframe.
    fn send_pli(&mut self, now: Instant, tk: TrackKey, ssrc: Option<super::api::Ssrc>) {
        let Some(t) = self.tracks.get(&tk) else {
            return;
        };
        if t.has_low_layer() {
            tracing::debug!(track = %t.public_id, "keyframe of the low layer asked");
            self.metrics.keyframe_requests.fetch_add(1, Relaxed);
            let ev = ExternalEvent::LowLayerKeyframe { track: tk };
            self.outputs.push_back(Output::External(t.owner, ev));
            return;
        }
        let Source::Peer { conn, receiver, .. } = &t.source else {
            return;
        };
        let (pk, receiver) = (*conn, *receiver);
        let media_ssrc = ssrc.or(t.last_ssrc).unwrap_or(t.media_ssrc).0;
        let Some(conn) = self.conns.get_mut(pk) else {
            return;
        };
        let Some(mut r) = conn.pc.rtp_receiver(receiver) else {
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
        self.conns.mark_dirty(pk);
    }

    /// Whether a sink waits for a keyframe it could take now: a player, or a subscriber whose
    /// connection is up and whose payload type is negotiated.
    fn waits_ready(&self, s: &Sink) -> bool {
        s.waiting_keyframe
            && !s.idle()
            && match &s.to {
                SinkKind::Tap(_) => true,
                // A congested connection waits for its queue to drain, not for a keyframe: asking
                // the publisher would cost every other subscriber a keyframe a second.
                SinkKind::Peer(ps) => {
                    ps.pt.is_some()
                        && self
                            .conns
                            .get(ps.conn)
                            .is_some_and(|c| c.connected() && !c.congested)
                }
            }
    }

    /// Publishers do not always answer a PLI (Chromium ignores one that comes right after a
    /// keyframe it just sent, of any of its simulcast layers): every second, ask again for each
    /// track that a sink able to take it is still waiting on, or moving to another layer of.
    /// The gates keep this to one request per layer per 500 ms.
    pub(super) fn keyframe_watchdog(&mut self, now: Instant) {
        // A simulcast sink moving to another layer waits on that layer's keyframe too (while
        // it still receives its old one).
        let moving = |t: &super::track::Track, s: &Sink| {
            t.is_simulcast()
                && !s.idle()
                && s.peer().is_some_and(|p| p.pt.is_some())
                && s.layer.is_some()
                && s.layer != t.effective_layer(s.want())
        };
        let waiting: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.sinks.iter().any(|s| self.waits_ready(s) || moving(t, s)))
            .map(|(tk, _)| *tk)
            .collect();
        for tk in waiting {
            self.metrics.keyframe_asked(KeyframeCause::Watchdog);
            self.request_keyframe(now, tk);
        }
    }

    /// Asks for what subscriber `sub` waits on (its connection came up, or an answer settled
    /// new subscriptions).
    pub(super) fn request_keyframes_for(
        &mut self,
        now: Instant,
        sub: ParticipantKey,
        cause: KeyframeCause,
    ) {
        let Some(b) = self.members.get(&sub).and_then(|m| m.browser()) else {
            return;
        };
        let wanted: Vec<TrackKey> = b
            .subscribed
            .values()
            .filter(|tk| {
                self.tracks
                    .get(tk)
                    .and_then(|t| t.sink_of(sub))
                    .is_some_and(|s| s.waiting_keyframe && s.peer().is_some_and(|p| p.pt.is_some()))
            })
            .copied()
            .collect();
        for tk in wanted {
            self.metrics.keyframe_asked(cause);
            self.request_keyframe(now, tk);
        }
    }

    /// A subscriber of an external track asked for a keyframe (its decoder lost track): it
    /// gets the cached group again, at most once a second.
    pub(super) fn resync_from_cache(&mut self, now: Instant, sub: ParticipantKey, tk: TrackKey) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        if !matches!(&t.source, Source::External { cache } if cache.replayable()) {
            return;
        }
        let Some(s) = t.sink_of_mut(sub) else {
            return;
        };
        if s.last_replay
            .is_none_or(|t| now.saturating_duration_since(t) >= RESYNC_INTERVAL)
        {
            s.waiting_keyframe = true;
        }
    }
}
