//! Forwarding: each packet of a track to each of its sinks, and a cached group of pictures to
//! the sinks waiting for a keyframe.
//!
//! Per packet: one hash lookup for the track, then per sink: skip until it can take packets
//! (a subscriber's connection connected and its payload type negotiated), hold video back until
//! a keyframe starts it, rewrite sequence number and timestamp into the sink's own space, and
//! hand it over: into the subscriber's connection, which encrypts it for that subscriber only,
//! or to the shell for a player. The payload bytes are shared (`Bytes` is reference-counted):
//! nothing here allocates, locks or spawns per packet per sink.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;

use super::adapt::write_rtp;
use super::api::{Output, PlaybackEvent, Ssrc, TrackKey};
use super::connection::{Connection, Connections};
use super::engine::Engine;
use super::keyframe::starts_keyframe;
use super::pace::Paced;
use super::speaker::audio_level;
use super::track::{PeerSink, SinkKind, Source, Track};

/// A replayed group of pictures is taken out of the subscriber's connection this many packets
/// at a time. Written in one go, a group of hundreds of packets grew every queue of `rtc`'s
/// pipeline to that many entries, and queues keep their capacity for the connection's lifetime
/// (`confab-bench rtsp`, 25–125 subscribers: 0.86–1.1 MiB of RSS per subscriber before,
/// 0.37–0.56 MiB after; BENCHMARKS.md).
const REPLAY_CHUNK: u64 = 32;

/// The connection behind a subscriber's sink, if it can take packets now.
fn ready<'a>(slots: &'a mut [Option<Connection>], ps: &PeerSink) -> Option<&'a mut Connection> {
    ps.pt?;
    slots
        .get_mut(ps.conn.0 as usize)
        .and_then(Option::as_mut)
        .filter(|c| c.connected())
}

/// Puts a connection that was written to on the list of those with something to send.
fn touched(dirty: &mut Vec<super::connection::PeerKey>, conn: &mut Connection, ps: &PeerSink) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(ps.conn);
    }
}

/// The rank of the simulcast layer whose first packet carries `ssrc`: `rtc` has read the
/// packet's rid header extension, and the layer keeps the SSRC from then on.
fn learn_layer(conns: &mut Connections, track: &mut Track, ssrc: Ssrc) -> Option<usize> {
    let Source::Peer { conn, receiver, .. } = &track.source else {
        return None;
    };
    let r = conns.get_mut(*conn)?.pc.rtp_receiver(*receiver)?;
    let rid = r.track().rid(ssrc.0)?.to_owned();
    let rank = track
        .layers
        .iter()
        .position(|l| l.as_ref().is_some_and(|l| l.rid == rid))?;
    tracing::debug!(track = %track.public_id, rid, ssrc = ssrc.0, "simulcast layer's SSRC learned");
    if let Some(l) = track.layers[rank].as_mut() {
        l.ssrc = Some(ssrc);
    }
    Some(rank)
}

impl Engine {
    /// Forwards `pkt` of track `tk` to its sinks. Each sink of a simulcast track takes the
    /// packets of its own layer only, and moves to its target layer at a keyframe of that
    /// layer. `known_layer`: the packet's layer where its source says so (a camera's stream
    /// or the low layer made of it, `super::low_layer`); else it is found by SSRC.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        tk: TrackKey,
        pkt: rtc::rtp::Packet,
        known_layer: Option<usize>,
    ) {
        let Engine {
            tracks,
            conns,
            metrics,
            outputs,
            speakers,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&tk) else {
            return;
        };
        if track.muted {
            return;
        }
        // Who is speaking: heard from what is forwarded (an operator's mute silences it).
        let spoke = track
            .audio_level
            .and_then(|id| audio_level(&pkt.header, id))
            .and_then(|level| speakers.get_mut(&track.room)?.hear(now, track.owner, level))
            .map(|speaker| (track.room.clone(), speaker));
        metrics.received_packets.fetch_add(1, Relaxed);
        metrics
            .received_bytes
            .fetch_add(pkt.payload.len() as u64, Relaxed);
        let ssrc = Ssrc(pkt.header.ssrc);
        let simulcast = track.is_simulcast();
        // Simulcast: the layer of this packet, from its SSRC (learned once per layer).
        let layer = if simulcast {
            known_layer
                .or_else(|| track.layer_of(ssrc))
                .or_else(|| learn_layer(conns, track, ssrc))
        } else {
            None
        };
        if simulcast && layer.is_none() {
            // A packet of no layer we know (its rid not read yet): nobody can take it.
            return;
        }
        // On the wire: what the estimate counts too (header, extensions, SRTP tag).
        track.rates[layer.unwrap_or(0)].bytes +=
            (pkt.payload.len() + super::pace::WIRE_OVERHEAD) as u64;
        // Layers each have their own SSRC; a single stream that changes SSRC restarted. A
        // camera's low layer is not the camera's stream, which may be one stream again later.
        let restarted = !simulcast && track.last_ssrc.is_some_and(|s| s != ssrc);
        if known_layer != Some(super::low_layer::LOW) {
            track.last_ssrc = Some(ssrc);
        }
        let effective: [Option<usize>; super::track::LAYERS] = if simulcast {
            std::array::from_fn(|want| track.effective_layer(want))
        } else {
            [None; super::track::LAYERS]
        };
        let mut switched = 0u64;
        let Connections { slots, dirty, .. } = conns;
        let (video, is_video) = (track.video, track.is_video());
        let mut keyframe: Option<bool> = None;
        let mut still_waiting = false;
        let mut forwarded = 0u64;
        for sink in &mut track.sinks {
            if restarted {
                // A new stream from the source: continue the sink's numbering from it, at a
                // keyframe.
                sink.rewriter.rebase();
                sink.waiting_keyframe = is_video;
            }
            if sink.idle() && is_video {
                // Shown nowhere by its subscriber.
                continue;
            }
            let mut conn = None;
            if let SinkKind::Peer(ps) = &sink.to {
                let Some(c) = ready(slots, ps) else {
                    continue;
                };
                if c.congested && is_video && !sink.frame_open {
                    // Between frames on a connection the shell cannot keep up with: video waits
                    // and starts again at a keyframe (see `congestion`); audio goes on.
                    sink.waiting_keyframe = true;
                    continue;
                }
                conn = Some(c);
            }
            if let Some(li) = layer {
                // Simulcast: this sink's own layer only, or the layer it is moving to, which
                // it takes from a keyframe on.
                let target = effective[sink.want()];
                let take =
                    super::track::simulcast_take(sink.layer, sink.waiting_keyframe, target, li);
                if take == super::track::Take::No {
                    continue;
                }
                if take == super::track::Take::AtKeyframe {
                    let k = *keyframe.get_or_insert_with(|| starts_keyframe(video, &pkt.payload));
                    if !k {
                        still_waiting = true;
                        continue;
                    }
                    if sink.layer.is_some_and(|l| l != li) {
                        switched += 1;
                    }
                    tracing::debug!(track = %track.public_id, from = ?sink.layer, to = li, "simulcast sink takes a layer at its keyframe");
                    sink.layer = Some(li);
                    sink.waiting_keyframe = false;
                    sink.rewriter.rebase();
                }
            } else if sink.waiting_keyframe {
                let k = *keyframe.get_or_insert_with(|| starts_keyframe(video, &pkt.payload));
                if !k {
                    still_waiting = true;
                    continue;
                }
                sink.waiting_keyframe = false;
                sink.rewriter.rebase();
                tracing::debug!(track = %track.public_id, "keyframe starts the sink");
            }
            let Some(out) =
                sink.rewriter
                    .rewrite(now, pkt.header.sequence_number, pkt.header.timestamp)
            else {
                continue;
            };
            match (&mut sink.to, conn) {
                (SinkKind::Peer(ps), Some(c)) => {
                    let marker = pkt.header.marker;
                    // Audio always carries a transport-wide number (`twcc`).
                    let number = !is_video;
                    if pace_rtp(
                        now,
                        c,
                        ps,
                        is_video,
                        number,
                        marker,
                        out.seq,
                        out.ts,
                        &pkt.payload,
                    ) {
                        forwarded += 1;
                        touched(dirty, c, ps);
                    }
                    sink.frame_open = is_video && !marker;
                }
                (SinkKind::Tap(tap), _) => {
                    // A player that cannot keep up loses its own packets (the shell reports it
                    // with `TapLagged`); it resumes cleanly at the next keyframe.
                    let ev = PlaybackEvent::Rtp {
                        track: tk,
                        marker: pkt.header.marker,
                        seq: out.seq,
                        ts: out.ts,
                        payload: pkt.payload.clone(),
                    };
                    outputs.push_back(Output::Playback(*tap, ev));
                }
                (SinkKind::Peer(_), None) => {}
            }
        }
        if keyframe == Some(true) && !still_waiting {
            match layer.and_then(|li| track.layers[li].as_mut()) {
                Some(l) => l.gate.satisfied(),
                None => track.gate.satisfied(),
            }
        }
        if switched > 0 {
            metrics.layer_switches.fetch_add(switched, Relaxed);
        }
        if forwarded > 0 {
            metrics.forwarded_packets.fetch_add(forwarded, Relaxed);
            metrics
                .forwarded_bytes
                .fetch_add(forwarded * pkt.payload.len() as u64, Relaxed);
        }
        if let Some((room, speaker)) = spoke {
            self.speaker_changed(&room, speaker);
        }
    }

    /// Gives the cached group of pictures of an external track to every sink waiting for a
    /// keyframe (see [`super::gop_cache`] for why its timestamps are squeezed). A subscriber
    /// gets it through its connection in chunks; a player gets it whole or, if the shell
    /// cannot queue all of it, not at all.
    pub(super) fn replay(&mut self, now: Instant, tk: TrackKey) {
        let Engine {
            tracks,
            conns,
            metrics,
            early,
            outputs,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&tk) else {
            return;
        };
        let Source::External { cache } = &track.source else {
            return;
        };
        if !cache.replayable() {
            return;
        }
        let Connections { slots, dirty, .. } = conns;
        let tick = (track.codec.clock_rate / 1000).max(1);
        let mut replayed = 0u64;
        // With a low layer (`super::low_layer`) the cache is the camera's stream's: it goes to
        // the sinks that are to receive that stream, and leaves them on it.
        let camera = track.has_low_layer().then_some(super::low_layer::CAMERA);
        let effective: [Option<usize>; super::track::LAYERS] =
            std::array::from_fn(|want| track.effective_layer(want));
        for sink in track.sinks.iter_mut().filter(|s| s.waiting_keyframe) {
            if camera.is_some() && (sink.idle() || effective[sink.want()] != camera) {
                continue;
            }
            if camera.is_some() {
                sink.layer = camera;
            }
            match &mut sink.to {
                SinkKind::Peer(ps) => {
                    let Some(c) = ready(slots, ps).filter(|c| !c.congested) else {
                        continue;
                    };
                    sink.waiting_keyframe = false;
                    sink.frame_open = false;
                    sink.last_replay = Some(now);
                    cache.replay(now, tick, &mut sink.rewriter, |pkt, seq, ts| {
                        let (marker, payload) = (pkt.header.marker, &pkt.payload);
                        if send_rtp(now, c, ps, true, marker, seq, ts, payload) {
                            replayed += 1;
                            if replayed.is_multiple_of(REPLAY_CHUNK) {
                                early.extend(std::iter::from_fn(|| c.poll_transmit()));
                            }
                        }
                        true
                    });
                    touched(dirty, c, ps);
                    tracing::debug!(track = %track.public_id, "cached keyframe replayed");
                }
                SinkKind::Tap(tap) => {
                    sink.waiting_keyframe = false;
                    sink.last_replay = Some(now);
                    let mut group = Vec::with_capacity(cache.packets.len());
                    cache.replay(now, tick, &mut sink.rewriter, |pkt, seq, ts| {
                        group.push(PlaybackEvent::Rtp {
                            track: tk,
                            marker: pkt.header.marker,
                            seq,
                            ts,
                            payload: pkt.payload.clone(),
                        });
                        true
                    });
                    outputs.push_back(Output::Replay(*tap, group));
                }
            }
        }
        if replayed > 0 {
            metrics.forwarded_packets.fetch_add(replayed, Relaxed);
        }
    }
}

/// Writes one packet to a subscriber's connection (which encrypts it); false if it could not.
#[allow(clippy::too_many_arguments)]
fn send_rtp(
    now: Instant,
    conn: &mut Connection,
    ps: &mut PeerSink,
    number: bool,
    marker: bool,
    seq: u16,
    ts: u32,
    payload: &Bytes,
) -> bool {
    let Some(pt) = ps.pt else {
        return false;
    };
    if !write_rtp(now, conn, number, ps.ssrc, pt, marker, seq, ts, payload) {
        return false;
    }
    ps.sent.packets = ps.sent.packets.wrapping_add(1);
    ps.sent.octets = ps.sent.octets.wrapping_add(payload.len() as u32);
    true
}

/// Like [`send_rtp`], through the connection's pacer (`super::pace`): a video packet the
/// bucket has no tokens for waits in the pacer's queue (it is counted as sent, for sender
/// reports, as it is handed over), and leaves when the connection's timer releases it.
#[allow(clippy::too_many_arguments)]
fn pace_rtp(
    now: Instant,
    conn: &mut Connection,
    ps: &mut PeerSink,
    video: bool,
    number: bool,
    marker: bool,
    seq: u16,
    ts: u32,
    payload: &Bytes,
) -> bool {
    let Some(pt) = ps.pt else {
        return false;
    };
    if conn.estimate.is_none() || conn.pacer.admit(now, Paced::bits_of(payload.len()), !video) {
        return send_rtp(now, conn, ps, number, marker, seq, ts, payload);
    }
    let held = Paced {
        ssrc: ps.ssrc,
        pt,
        number,
        marker,
        seq,
        ts,
        payload: payload.clone(),
    };
    if !conn.pacer.hold(held) {
        return false;
    }
    ps.sent.packets = ps.sent.packets.wrapping_add(1);
    ps.sent.octets = ps.sent.octets.wrapping_add(payload.len() as u32);
    true
}
