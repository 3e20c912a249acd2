//! Adaptive media for each subscriber: four times a second, its bandwidth estimate
//! (`super::bwe`) is spent on the tracks it receives (`super::allocate`), each video sink
//! gets the layer cap that comes out (it moves at a keyframe of the new layer, as for a tile
//! resize), its pacer (`super::pace`) follows the estimate, and when a larger layer is wanted
//! that the estimate does not cover, a probe finds out whether the path carries it.
//!
//! **Probing policy.** A probe is padding on top of the media for [`PROBE_LENGTH`], up to the
//! rate the wanted upgrade needs, but never below 1.2 × nor above 2 × the estimate: one step
//! at a time, so a probe into a full link overfills its queue by a little, briefly. After a
//! probe that raised the estimate the next may follow at once (a recovered link climbs back in
//! a few steps); after one that did not, the wait doubles, from 1 s up to [`MAX_BACKOFF`], so a
//! squeezed subscriber is probed every few seconds at most. No probe starts within a second of
//! a backoff of the estimate: the queue is still draining then and the probe would only add
//! to it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;

use super::allocate::{allocate, Priority, Video};
use super::api::{ParticipantKey, Ssrc, SubscriberView, SubscriptionView, TrackKey};
use super::connection::{Connection, PeerKey};
use super::engine::Engine;
use super::low_layer;
use super::pace::{PROBE_PACKET_BYTES, WIRE_OVERHEAD};
use super::track::{effective_layer, LAYERS};
use super::twcc::seq_bytes;
use crate::metrics::{KeyframeCause, ESTIMATE_BUCKETS};
use crate::names::RoomName;
use crate::protocol::MediaKind;

/// How often allocations are worked out.
pub const ADAPT_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe lasts: long enough for the estimator's half-second rate window to see it.
const PROBE_LENGTH: Duration = Duration::from_millis(600);
/// Feedback on a probe's last packets arrives within this after it ends.
const PROBE_SETTLE: Duration = Duration::from_millis(300);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A camera's stream must look squeezed this long before its low layer is asked for.
const SQUEEZE_CONFIRM: Duration = Duration::from_secs(2);
/// After the estimate backs off, every packet is numbered for this long (`super::twcc`).
const PRECISE_AFTER_DECREASE: Duration = Duration::from_secs(4);
/// After the estimate backs off, nothing moves up for this long.
const UPGRADE_HOLD: Duration = Duration::from_secs(3);
/// A probe raised the estimate if it grew by this factor.
const PROBE_SUCCESS: f64 = 1.1;

/// Rates assumed for a layer nothing was measured of yet (the page's `simulcastEncodings`).
const DEFAULT_LAYER_BPS: [f64; LAYERS] = [150_000.0, 500_000.0, 1_500_000.0];
const DEFAULT_SINGLE_BPS: f64 = 1_500_000.0;
const DEFAULT_AUDIO_BPS: f64 = 40_000.0;

/// A subscribe connection's probing state; see the module comment.
#[derive(Debug, Default)]
pub struct Adapt {
    /// The probe in flight: when it ends, and the estimate and backoff count before it.
    probe: Option<(Instant, f64, u32)>,
    next_probe: Option<Instant>,
    backoff: Duration,
    /// The estimator's backoff count last seen, and when it last grew.
    decreases: u32,
    pub last_decrease: Option<Instant>,
    /// The video the probe's padding rides on.
    pub pad_track: Option<TrackKey>,
    /// Number every video packet transport-wide, not a sample (`super::twcc`): while the
    /// estimate matters.
    pub precise: bool,
    /// The estimator's report count last seen, when it changed, and how many packets had been
    /// numbered then.
    reports_seen: Option<(u32, Instant, u64)>,
}

impl Engine {
    /// Steps the rate meters and works out every subscriber's allocation.
    pub(super) fn adapt(&mut self, now: Instant) {
        let secs = ADAPT_INTERVAL.as_secs_f64();
        for t in self.tracks.values_mut() {
            for m in &mut t.rates {
                m.step(secs);
            }
        }
        let subscribers: Vec<(ParticipantKey, PeerKey)> = self
            .members
            .iter()
            .filter_map(|(k, m)| Some((*k, m.browser()?.subscribe)))
            .collect();
        for (sub, conn) in subscribers {
            self.adapt_subscriber(now, sub, conn);
        }
        self.update_low_layers(now);
        self.count_estimates();
        self.next_adapt = if self.members.is_empty() {
            None
        } else {
            Some(now + ADAPT_INTERVAL)
        };
    }

    /// Puts this engine's subscribers' estimates into the metrics' histogram (as a change from
    /// what it put there last, so several engines add up).
    fn count_estimates(&mut self) {
        let mut now = [0i64; ESTIMATE_BUCKETS.len() + 1];
        let mut sum = 0i64;
        for c in self.conns.slots.iter().flatten() {
            let Some(e) = c.estimate.as_ref().filter(|_| c.connected()) else {
                continue;
            };
            let bps = e.bps();
            for (i, le) in ESTIMATE_BUCKETS.iter().enumerate() {
                now[i] += i64::from(bps <= *le);
            }
            now[ESTIMATE_BUCKETS.len()] += 1;
            sum += bps as i64;
        }
        for (i, n) in now.iter().enumerate() {
            self.metrics.estimates[i].fetch_add(n - self.counted_estimates[i], Relaxed);
        }
        self.metrics
            .estimates_sum
            .fetch_add(sum - self.counted_estimates_sum, Relaxed);
        self.counted_estimates = now;
        self.counted_estimates_sum = sum;
    }

    fn adapt_subscriber(&mut self, now: Instant, sub: ParticipantKey, pk: PeerKey) {
        let Some((estimate, reports)) = self
            .conns
            .get(pk)
            .filter(|c| c.connected())
            .and_then(|c| c.estimate.as_ref())
            .map(|e| (e.bps(), e.reports()))
        else {
            return;
        };
        tracing::trace!(estimate, reports, "subscriber's estimate");
        let Some(m) = self.members.get(&sub) else {
            return;
        };
        let speaker = self.speakers.get(&m.room).and_then(|s| s.current());
        let Some(b) = m.browser() else {
            return;
        };
        let mut audio = 0.0;
        let mut keys = Vec::new();
        let mut videos = Vec::new();
        // The same videos as if every camera had its low layer (`super::low_layer`).
        let mut what_if = Vec::new();
        let mut cameras = Vec::new();
        let mut pad_track = None;
        for &tk in b.subscribed.values() {
            let Some(t) = self.tracks.get(&tk) else {
                continue;
            };
            let Some(s) = t.sink_of(sub) else {
                continue;
            };
            if s.peer().is_none_or(|p| p.pt.is_none()) {
                continue;
            }
            if t.kind == MediaKind::Audio {
                if !t.muted {
                    audio += t.rates[0].bps(DEFAULT_AUDIO_BPS);
                }
                continue;
            }
            let simulcast = t.is_simulcast();
            let rates = std::array::from_fn(|r| {
                if simulcast {
                    t.layers[r]
                        .as_ref()
                        .map(|_| t.rates[r].bps(DEFAULT_LAYER_BPS[r]))
                } else {
                    (r == 0).then(|| t.rates[0].bps(DEFAULT_SINGLE_BPS))
                }
            });
            let present: [bool; LAYERS] = std::array::from_fn(|r| rates[r].is_some());
            let cap = (!s.paused && !t.muted)
                .then(|| effective_layer(present, s.target))
                .flatten();
            // A starved video has nothing now: bringing it back is an upgrade, which needs
            // headroom (else it would come and go with each wobble of its rate).
            let current = if s.starved {
                None
            } else if simulcast {
                s.layer.filter(|_| !s.waiting_keyframe)
            } else {
                (!s.waiting_keyframe).then_some(0)
            };
            // The owner's first video is its camera; later ones are screen shares.
            let first_video = self.members.get(&t.owner).and_then(|o| {
                o.published
                    .iter()
                    .copied()
                    .find(|k| self.tracks.get(k).is_some_and(|t| t.is_video()))
            });
            let priority = if first_video != Some(tk) {
                Priority::Screen
            } else if speaker == Some(t.owner) {
                Priority::Speaker
            } else {
                Priority::Other
            };
            // Padding rides on a video that flows, else on any this subscriber received
            // before (hidden or starved: the padding goes on in its numbering, and a subscriber
            // whose every video is starved can still find out that its path has recovered).
            if s.rewriter.started() && (pad_track.is_none() || (current.is_some() && !s.idle())) {
                pad_track = Some(tk);
            }
            keys.push(tk);
            videos.push(Video {
                priority,
                rates,
                simulcast,
                cap,
                current,
            });
            what_if.push(low_layer::what_if(t, s, priority));
            cameras.push(t.is_camera_video());
        }
        // Nothing moves up for a while after the estimate backed off (see `allocate`).
        let hold = self
            .conns
            .get(pk)
            .and_then(|c| c.adapt.last_decrease)
            .is_some_and(|t| now < t + UPGRADE_HOLD);
        let plan = allocate(estimate, audio, &videos, hold);
        tracing::trace!(estimate, audio, ?plan, ?videos, "allocation");
        for (i, tk) in keys.iter().enumerate() {
            if videos[i].simulcast && videos[i].cap.is_some() {
                self.apply_layer(now, *tk, sub, plan.layers[i]);
            }
        }
        // A camera's stream is "squeezed" only on evidence: the estimate backed off in the last
        // 10 s, on a connection the shell is not already pausing for (ICE-TCP congestion), and
        // the what-if plan has said so for `SQUEEZE_CONFIRM`. A start estimate below a camera's
        // rate, or one false overuse signal on a loaded machine, must not start a transcoder
        // (the first did, for a plain viewer of an MJPEG camera on loopback).
        let evidence = self.conns.get(pk).is_some_and(|c| {
            !c.congested
                && c.adapt
                    .last_decrease
                    .is_some_and(|t| now < t + Duration::from_secs(10))
        });
        if cameras.contains(&true) {
            let what_if: Vec<Video> = what_if
                .into_iter()
                .zip(&videos)
                .map(|(w, v)| w.unwrap_or(*v))
                .collect();
            let would = allocate(estimate, audio, &what_if, false);
            for (i, tk) in keys.iter().enumerate().filter(|(i, _)| cameras[*i]) {
                let squeezed = evidence && low_layer::squeezed(&what_if[i], would.layers[i]);
                if let Some(s) = self.tracks.get_mut(tk).and_then(|t| t.sink_of_mut(sub)) {
                    if squeezed {
                        let since = *s.squeezed_since.get_or_insert(now);
                        s.squeezed = now >= since + SQUEEZE_CONFIRM;
                    } else {
                        s.squeezed_since = None;
                        s.squeezed = false;
                    }
                }
            }
        }
        let Engine { conns, metrics, .. } = self;
        let Some(c) = conns.get_mut(pk) else {
            return;
        };
        // Feedback stopped while numbered packets went out: see `Bwe::feedback_timeout`.
        let numbered = c.twcc.as_ref().map_or(0, |t| t.numbered());
        match c.adapt.reports_seen {
            Some((seen, at, then))
                if seen == reports && numbered > then + 8 && now >= at + Duration::from_secs(1) =>
            {
                if let Some(bwe) = c.bwe.as_mut() {
                    bwe.feedback_timeout(now);
                    tracing::debug!("no transport-wide feedback for a second: the estimate halves");
                }
                c.adapt.reports_seen = Some((reports, now, numbered));
            }
            Some((seen, ..)) if seen == reports => {}
            _ => c.adapt.reports_seen = Some((reports, now, numbered)),
        }
        c.adapt.pad_track = pad_track;
        // Every packet numbered while the estimate decides anything: something is held back,
        // it probes, or it backed off in the last few seconds. Otherwise a sample is enough to
        // notice when that changes, and costs less (`super::twcc`).
        c.adapt.precise = plan.wanted.is_some()
            || c.pacer.probing(now)
            || c.adapt
                .last_decrease
                .is_some_and(|t| now < t + PRECISE_AFTER_DECREASE);
        c.pacer.set_estimate(estimate);
        metrics
            .paced_drops
            .fetch_add(c.pacer.take_dropped(), Relaxed);
        if let Some(e) = &c.estimate {
            metrics
                .refused_resends
                .fetch_add(e.take_refused_resends(), Relaxed);
        }
        match probe_if_wanted(now, c, estimate, plan.wanted) {
            Probed::Started => metrics.probes.fetch_add(1, Relaxed),
            Probed::Raised => metrics.probes_raised.fetch_add(1, Relaxed),
            Probed::Nothing => 0,
        };
    }

    /// Gives sink `sub` of simulcast track `tk` the layer the allocator chose (`None`: none).
    fn apply_layer(
        &mut self,
        now: Instant,
        tk: TrackKey,
        sub: ParticipantKey,
        layer: Option<usize>,
    ) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        let present: [bool; LAYERS] = std::array::from_fn(|r| t.layers[r].is_some());
        let Some(s) = t.sink_of_mut(sub) else {
            return;
        };
        let (cap, starved) = match layer {
            Some(l) => (l, false),
            None => (s.cap, true),
        };
        if cap == s.cap && starved == s.starved {
            return;
        }
        let resumed = s.starved && !starved;
        s.cap = cap;
        s.starved = starved;
        if starved {
            tracing::debug!(track = %t.public_id, "no room in the subscriber's estimate: its video pauses");
            self.dynacast(tk);
            return;
        }
        if resumed {
            s.waiting_keyframe = true;
        }
        let target = effective_layer(present, s.want());
        let moving = resumed || (s.layer.is_some() && s.layer != target);
        tracing::debug!(track = %t.public_id, cap, ?target, "the subscriber's estimate moves its layer");
        if let (Some(target), true) = (target, moving) {
            let cause = if resumed {
                KeyframeCause::Resume
            } else {
                KeyframeCause::Layer
            };
            self.metrics.keyframe_asked(cause);
            self.request_layer_keyframe(now, tk, target);
        }
        self.dynacast(tk);
    }

    /// What each browser in `room` receives now, for the REST room view.
    pub(super) fn subscriptions(&self, room: &RoomName) -> Vec<SubscriberView> {
        let mut out = Vec::new();
        for key in self.rooms.members(room) {
            let Some(m) = self.members.get(key) else {
                continue;
            };
            let Some(b) = m.browser() else {
                continue;
            };
            let estimate_bps = self
                .conns
                .get(b.subscribe)
                .filter(|c| c.connected())
                .and_then(|c| c.estimate.as_ref())
                .map(|e| e.bps() as u64);
            let mut tracks = Vec::new();
            for tk in b.subscribed.values() {
                let Some(t) = self.tracks.get(tk) else {
                    continue;
                };
                let Some(s) = t.sink_of(*key) else {
                    continue;
                };
                let participant = self
                    .members
                    .get(&t.owner)
                    .map(|o| o.id.to_string())
                    .unwrap_or_default();
                let state = if !t.is_video() {
                    "sending"
                } else if s.paused {
                    "hidden"
                } else if s.starved {
                    "starved"
                } else if s.waiting_keyframe {
                    "starting"
                } else {
                    "sending"
                };
                let simulcast = t.is_simulcast();
                let layer = s.layer.filter(|_| simulcast);
                tracks.push(SubscriptionView {
                    participant,
                    kind: t.kind,
                    state,
                    layer,
                    rid: layer.and_then(|l| Some(t.layers[l].as_ref()?.rid.clone())),
                    wanted: simulcast.then_some(s.target),
                    allowed: simulcast.then_some(s.cap),
                });
            }
            tracks.sort_by(|a, b| {
                (&a.participant, a.kind as u8).cmp(&(&b.participant, b.kind as u8))
            });
            out.push(SubscriberView {
                id: m.id.to_string(),
                estimate_bps,
                tracks,
            });
        }
        out
    }

    /// Releases what connection `key`'s pacer lets out now, and the padding of its probe.
    pub(super) fn release_paced(&mut self, now: Instant, key: PeerKey) {
        let Engine { conns, tracks, .. } = self;
        let Some(c) = conns.get_mut(key) else {
            return;
        };
        while let Some(p) = c.pacer.release(now) {
            write_rtp(
                now, c, p.number, p.ssrc, p.pt, p.marker, p.seq, p.ts, &p.payload,
            );
        }
        if !c.pacer.queue.is_empty() {
            return;
        }
        while c.pacer.padding_due(now) {
            let sink = c
                .adapt
                .pad_track
                .and_then(|tk| tracks.get_mut(&tk))
                .and_then(|t| t.sink_of_mut(c.owner))
                .filter(|s| !s.frame_open || s.idle());
            let Some(s) = sink else {
                break;
            };
            let Some((ssrc, pt)) = s.peer().and_then(|p| Some((p.ssrc, p.pt?))) else {
                break;
            };
            let Some(out) = s.rewriter.pad() else {
                break;
            };
            write_padding(now, c, ssrc, pt, out.seq, out.ts);
        }
    }
}

/// What [`probe_if_wanted`] did.
enum Probed {
    Nothing,
    Started,
    /// The last probe was judged, and it raised the estimate.
    Raised,
}

/// Starts a probe on `c` if the allocator wants more than `estimate` and the policy allows
/// (see the module comment); judges the last one first.
fn probe_if_wanted(now: Instant, c: &mut Connection, estimate: f64, wanted: Option<f64>) -> Probed {
    let Some(e) = c.estimate.clone() else {
        return Probed::Nothing;
    };
    let a = &mut c.adapt;
    if e.decreases() != a.decreases {
        a.decreases = e.decreases();
        a.last_decrease = Some(now);
    }
    if let Some((ends, before, decreases)) = a.probe {
        if now < ends + PROBE_SETTLE {
            return Probed::Nothing;
        }
        let raised = estimate >= before * PROBE_SUCCESS && e.decreases() == decreases;
        a.backoff = if raised {
            Duration::ZERO
        } else {
            (a.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF)
        };
        a.next_probe = Some(now + a.backoff);
        a.probe = None;
        tracing::debug!(before, after = estimate, raised, "probe judged");
        if raised {
            return Probed::Raised;
        }
    }
    let Some(wanted) = wanted else {
        return Probed::Nothing;
    };
    if a.next_probe.is_some_and(|t| now < t)
        || a.last_decrease
            .is_some_and(|t| now < t + Duration::from_secs(1))
        || a.pad_track.is_none()
    {
        return Probed::Nothing;
    }
    let rate = wanted.clamp(estimate * 1.2, estimate * 2.0);
    a.probe = Some((now + PROBE_LENGTH, estimate, e.decreases()));
    c.pacer.probe(now, rate, PROBE_LENGTH);
    tracing::debug!(estimate, rate, "probing");
    Probed::Started
}

/// Writes one RTP packet into connection `c`'s pipeline (which encrypts it); false if it could
/// not. `number`: it carries a transport-wide number even while a sample is enough (audio;
/// `super::twcc`). Straight into the pipeline rather than through `RTCRtpSender::write_rtp`, which
/// rebuilds the sender's parameters (several allocations) and copies the track id on every
/// packet only to check what the engine already knows.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_rtp(
    now: Instant,
    c: &mut Connection,
    number: bool,
    ssrc: Ssrc,
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
            ssrc: ssrc.0,
            ..Default::default()
        },
        payload: payload.clone(),
    };
    let number = number || c.adapt.precise;
    write(now, c, packet, number)
}

/// Into `c`'s pipeline, with a transport-wide sequence number (`super::twcc`) if `number` and
/// the subscriber reports on them.
fn write(now: Instant, c: &mut Connection, mut packet: rtc::rtp::Packet, number: bool) -> bool {
    if let Some(t) = c.twcc.as_mut() {
        // A probe's padding is all header extension; media is payload and a plain header.
        let size = if packet.header.extensions.is_empty() {
            packet.payload.len() + WIRE_OVERHEAD
        } else {
            packet.marshal_size() + WIRE_OVERHEAD - 12
        };
        if number || t.sample() {
            let seq = t.stamp(now, size);
            if packet
                .header
                .set_extension(t.ext_id, seq_bytes(seq))
                .is_err()
            {
                return false;
            }
        } else {
            // No extension on this one: 8 bytes fewer.
            t.skip(size - 8);
        }
    }
    let msg = TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), packet),
    };
    if let Err(e) = c.pc.handle_write(msg) {
        tracing::trace!(error = %e, "write failed");
        return false;
    }
    true
}

/// Zeros a probe's padding is made of.
static PAD: [u8; 250] = [0; 250];

/// A probe's padding packet: no payload (the P bit, and `rtc`'s four padding bytes), so the
/// receiver counts its sequence number and drops it before the decoder; its size is in header
/// extensions under ids nobody negotiated, which receivers skip (RFC 8285 §4.3).
fn write_padding(now: Instant, c: &mut Connection, ssrc: Ssrc, pt: u8, seq: u16, ts: u32) {
    let mut header = rtc::rtp::header::Header {
        version: 2,
        padding: true,
        marker: false,
        payload_type: pt,
        sequence_number: seq,
        timestamp: ts,
        ssrc: ssrc.0,
        ..Default::default()
    };
    for id in (200u8..).take(PROBE_PACKET_BYTES / PAD.len()) {
        if header.set_extension(id, Bytes::from_static(&PAD)).is_err() {
            return;
        }
    }
    write(
        now,
        c,
        rtc::rtp::Packet {
            header,
            payload: Bytes::new(),
        },
        true,
    );
}
