//! A camera's low layer: a small picture of an external video track (an RTSP camera's one
//! stream) that the bridge makes on demand (`bridge/low_layer.rs`: decode, scale, encode), so
//! that a subscriber who cannot take the camera's stream gets something smaller rather than the
//! whole stream or nothing. While it exists the track is simulcast with two layers: rank
//! [`LOW`] the transcoded picture, rank [`CAMERA`] the camera's own stream, and everything
//! written for browsers' simulcast (the allocator, layer switches at keyframes, per-layer
//! keyframe gates and sender reports) applies to it.
//!
//! **When it is needed.** Four times a second, with each subscriber's allocation (`adapt`), the
//! allocator is also run as if every camera the subscriber receives had its low layer (one
//! that has it, as it is). A sink of a camera's video is *squeezed* when that plan gives it
//! less than the camera's stream: the low layer, or nothing at all (an estimate too small
//! even for the low layer would otherwise carry the whole camera, which is always sent while
//! it is one stream). Someone needs the low layer of a track while one of its sinks, shown by
//! its subscriber (not paused) and not muted, is squeezed or asks for layer 0 (a tile of at
//! most 400 px, or the page's low data mode: `{"type": "quality", "layer": 0}`).
//!
//! **Asking the bridge.** Needed and not yet asked for: [`ExternalEvent::LowLayer`] with
//! `needed` at once. Asked for and needed by nobody for [`HOLD`]: `needed: false`, and the
//! layer is taken out at once (sinks still on it go back to the camera's stream from its
//! cached group of pictures). The hold keeps an estimate that wobbles around the camera's
//! rate from starting and stopping a transcoder each time; starting one costs a decode of
//! the camera's cached group.
//!
//! **The layer itself.** It exists from its first packet ([`Command::LowLayerRtp`]; the
//! transcoder's first picture is an IDR) and until it is taken out; packets that come while it
//! is not wanted (late ones after a stop) are dropped. One that sends nothing for [`STALE`]
//! (the bridge's transcoder stopped on its own) is taken out too, and comes back with its
//! next packet. It has its own SSRC, timestamps and sender reports
//! ([`Command::LowLayerSenderReport`]): the bridge transcodes its own copy of the track.
//!
//! **Ranks.** The camera's stream is rank 1, not 2: a tile asking for layer 1 or 2 (wider
//! than 400 px) gets the camera, as it would without a low layer, and only a tile asking for
//! layer 0 gets the small picture (`track::effective_layer`).
//!
//! **Keyframes.** A keyframe of the low layer is asked of the transcoder
//! ([`ExternalEvent::LowLayerKeyframe`]), gated per layer like a browser's PLI; its next
//! picture is an IDR, so no cache is kept for it. The camera's stream keeps its cached group:
//! a sink starting on it gets it at once. A sink moving up from the low layer keeps the low
//! picture until the camera's next keyframe, rather than take a replayed group into a link that
//! was too narrow for the camera a moment ago.
//!
//! [`ExternalEvent::LowLayer`]: super::api::ExternalEvent::LowLayer
//! [`ExternalEvent::LowLayerKeyframe`]: super::api::ExternalEvent::LowLayerKeyframe
//! [`Command::LowLayerRtp`]: super::api::Command::LowLayerRtp
//! [`Command::LowLayerSenderReport`]: super::api::Command::LowLayerSenderReport

use std::time::{Duration, Instant};

use super::allocate::{Priority, Video};
use super::api::{ExternalEvent, Output, Ssrc, TrackKey};
use super::engine::Engine;
use super::keyframe::KeyframeGate;
use super::track::{effective_layer, Layer, RateMeter, Sink, Source, Track, LAYERS};
use crate::protocol::MediaKind;

/// The rank of the low layer, and of the camera's own stream while the low layer exists.
pub(super) const LOW: usize = 0;
pub(super) const CAMERA: usize = 1;

/// How long nobody must need the low layer before the bridge is told to stop making it.
pub const HOLD: Duration = Duration::from_secs(5);
/// A low layer that sent nothing for this long is taken out.
pub const STALE: Duration = Duration::from_secs(3);
/// The rate assumed for a low layer never measured (what the bridge encodes at).
pub(super) const LOW_LAYER_BPS: f64 = 150_000.0;
/// The rate assumed for a camera's stream never measured (as for any single stream).
const CAMERA_BPS: f64 = 1_500_000.0;

/// Which layers are present while a camera has its low layer.
const WITH_LOW: [bool; LAYERS] = {
    let mut p = [false; LAYERS];
    p[LOW] = true;
    p[CAMERA] = true;
    p
};

impl Track {
    /// A camera's video (an external source's), which can have a low layer.
    pub fn is_camera_video(&self) -> bool {
        self.kind == MediaKind::Video && matches!(self.source, Source::External { .. })
    }

    /// Whether the low layer exists now.
    pub fn has_low_layer(&self) -> bool {
        self.is_camera_video() && self.layers[LOW].is_some()
    }
}

/// For the allocator's what-if run: sink `s` of camera video `t` (one stream now) as if the
/// track had its low layer; `None` for any other video (it goes in as it is).
pub(super) fn what_if(t: &Track, s: &Sink, priority: Priority) -> Option<Video> {
    if !t.is_camera_video() || t.is_simulcast() {
        return None;
    }
    let mut rates = [None; LAYERS];
    rates[LOW] = Some(t.low.meter.bps(LOW_LAYER_BPS));
    rates[CAMERA] = Some(t.rates[0].bps(CAMERA_BPS));
    Some(Video {
        priority,
        rates,
        simulcast: true,
        cap: (!s.paused && !t.muted)
            .then(|| effective_layer(WITH_LOW, s.target))
            .flatten(),
        current: (!s.waiting_keyframe).then_some(CAMERA),
    })
}

/// Whether a camera's video `v` (as the what-if run saw it) is squeezed by the `planned`
/// layer: shown, and given less than the camera's stream.
pub(super) fn squeezed(v: &Video, planned: Option<usize>) -> bool {
    v.cap.is_some() && planned.is_none_or(|l| l < CAMERA)
}

impl Engine {
    /// One packet of the low layer the bridge makes of camera track `tk`.
    pub(super) fn low_layer_rtp(&mut self, now: Instant, tk: TrackKey, packet: rtc::rtp::Packet) {
        let Some(t) = self
            .tracks
            .get_mut(&tk)
            .filter(|t| t.is_camera_video() && t.low.wanted)
        else {
            return;
        };
        let ssrc = Ssrc(packet.header.ssrc);
        t.low.last_packet = Some(now);
        match t.layers[LOW].as_mut() {
            None => add_low_layer(t, ssrc),
            Some(l) if l.ssrc != Some(ssrc) => {
                // The bridge started another transcoder: its stream starts at a keyframe.
                l.ssrc = Some(ssrc);
                l.sr = None;
                for s in t.sinks.iter_mut().filter(|s| s.layer == Some(LOW)) {
                    s.rewriter.rebase();
                    s.waiting_keyframe = true;
                }
            }
            Some(_) => {}
        }
        self.forward(now, tk, packet, Some(LOW));
    }

    /// The low layer's NTP↔RTP relation.
    pub(super) fn low_layer_sender_report(
        &mut self,
        now: Instant,
        tk: TrackKey,
        ntp: u64,
        rtp: u32,
    ) {
        if let Some(l) = self
            .tracks
            .get_mut(&tk)
            .filter(|t| t.is_camera_video())
            .and_then(|t| t.layers[LOW].as_mut())
        {
            l.sr = Some((ntp, rtp, now));
        }
    }

    /// Works out who needs which camera's low layer (see the module comment) and tells the
    /// bridges what changed; takes out layers nobody wants or that stopped.
    pub(super) fn update_low_layers(&mut self, now: Instant) {
        let cameras: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.is_camera_video())
            .map(|(tk, _)| *tk)
            .collect();
        for tk in cameras {
            let Some(t) = self.tracks.get_mut(&tk) else {
                continue;
            };
            let needed = !t.muted
                && t.sinks
                    .iter()
                    .filter(|s| s.peer().is_some() && !s.paused)
                    .any(|s| s.squeezed || s.target == LOW);
            if needed {
                t.low.needed_at = Some(now);
            }
            let tell = if needed && !t.low.wanted {
                t.low.wanted = true;
                Some(true)
            } else if !needed
                && t.low.wanted
                && t.low
                    .needed_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= HOLD)
            {
                t.low.wanted = false;
                Some(false)
            } else {
                None
            };
            let stale = t
                .low
                .last_packet
                .is_none_or(|at| now.saturating_duration_since(at) >= STALE);
            let take_out = t.has_low_layer() && (!t.low.wanted || stale);
            let (owner, public_id) = (t.owner, t.public_id.clone());
            if let Some(needed) = tell {
                tracing::info!(track = %public_id, needed, "camera's low layer");
                self.outputs.push_back(Output::External(
                    owner,
                    ExternalEvent::LowLayer { track: tk, needed },
                ));
            }
            if take_out {
                self.remove_low_layer(now, tk);
            }
        }
    }

    /// Takes camera track `tk`'s low layer out: it is one stream again, which every sink
    /// receives (a sink that was on the low layer, or had no room, from a keyframe).
    fn remove_low_layer(&mut self, now: Instant, tk: TrackKey) {
        let Some(t) = self.tracks.get_mut(&tk) else {
            return;
        };
        tracing::debug!(track = %t.public_id, "camera's low layer taken out");
        t.layers = Default::default();
        t.low.meter = t.rates[LOW];
        t.rates[0] = t.rates[CAMERA];
        t.rates[CAMERA] = RateMeter::default();
        let mut restart = false;
        for s in &mut t.sinks {
            if s.layer == Some(LOW) || s.starved {
                s.waiting_keyframe = true;
                restart = true;
            }
            s.layer = None;
            s.cap = LAYERS - 1;
            s.starved = false;
        }
        if restart {
            self.request_keyframe(now, tk);
        }
    }
}

/// Camera track `t`'s low layer arrived (its first packet carries `ssrc`): the track becomes
/// simulcast, the camera's stream moving to rank [`CAMERA`] with what it has measured and its
/// sender report, and every sink it flows to now stays on it.
fn add_low_layer(t: &mut Track, ssrc: Ssrc) {
    tracing::debug!(track = %t.public_id, "camera's low layer arrived");
    t.layers[LOW] = Some(Layer {
        rid: "low".into(),
        ssrc: Some(ssrc),
        gate: KeyframeGate::default(),
        sr: None,
    });
    t.layers[CAMERA] = Some(Layer {
        rid: "camera".into(),
        ssrc: t.last_ssrc,
        gate: KeyframeGate::default(),
        sr: t.sr,
    });
    t.rates[CAMERA] = t.rates[0];
    t.rates[LOW] = t.low.meter;
    for s in t.sinks.iter_mut().filter(|s| !s.waiting_keyframe) {
        s.layer = Some(CAMERA);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_layer_serves_small_tiles_only() {
        // Tiles ask 0 (≤ 400 px), 1 (≤ 800), 2.
        for (want, got) in [(0, LOW), (1, CAMERA), (2, CAMERA)] {
            assert_eq!(
                effective_layer(WITH_LOW, want),
                Some(got),
                "tile asks {want}"
            );
        }
    }

    #[test]
    fn squeezed_means_less_than_the_camera_while_shown() {
        let v = |cap| Video {
            priority: Priority::Other,
            rates: [Some(150e3), Some(1e6), None],
            simulcast: true,
            cap,
            current: Some(CAMERA),
        };
        assert!(squeezed(&v(Some(CAMERA)), Some(LOW)));
        assert!(
            squeezed(&v(Some(CAMERA)), None),
            "not even the low layer fits"
        );
        assert!(!squeezed(&v(Some(CAMERA)), Some(CAMERA)));
        assert!(!squeezed(&v(None), None), "shown nowhere");
    }
}
