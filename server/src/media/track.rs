//! The seam between sources and sinks: a published track has one [`Source`] and any number of
//! [`Sink`]s, and forwarding, keyframe replay, keyframe requests and sender reports are written
//! once against them, whatever is on either side.
//!
//! - A source is where packets come from: a browser's publish connection, or anything the
//!   shell feeds in ready-made RTP (an RTSP camera, pushed or pulled; later a file or WHIP).
//!   The difference that matters to the core is whether it can be asked for a keyframe (PLI) or
//!   has its latest group of pictures cached instead.
//! - A sink is where a copy goes: a browser's subscribe connection (encrypted per subscriber)
//!   or an RTSP player's tap (handed to the shell as [`Output::Playback`]). Each sink has its
//!   own sequence/timestamp space and keyframe gate.
//!
//! [`Output::Playback`]: super::api::Output::Playback

use std::time::Instant;

use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};

use super::api::{ParticipantKey, Ssrc, TapId};
use super::connection::PeerKey;
use super::gop_cache::GopCache;
use super::keyframe::{KeyframeGate, VideoCodec};
use super::rewrite::Rewriter;
use crate::names::RoomName;
use crate::protocol::MediaKind;

/// Where a published track's packets come from.
pub(super) enum Source {
    /// A browser's publish connection: keyframes are asked for with PLI.
    Peer {
        conn: PeerKey,
        receiver: RTCRtpReceiverId,
        rtc_track_id: String,
    },
    /// Packets the shell hands in ready to forward (a camera through the RTSP bridge). Such
    /// sources cannot be asked for keyframes, so the latest keyframe and what followed it are
    /// kept and replayed to each sink that needs one.
    External { cache: GopCache },
}

/// A published track.
pub(super) struct Track {
    pub owner: ParticipantKey,
    pub room: RoomName,
    pub public_id: String,
    pub kind: MediaKind,
    pub codec: RTCRtpCodec,
    pub video: VideoCodec,
    pub source: Source,
    /// The SSRC the source announced (0 when it did not).
    pub media_ssrc: Ssrc,
    /// The SSRC of the latest packet: a change means the source restarted.
    pub last_ssrc: Option<Ssrc>,
    /// An operator muted it: nothing is forwarded.
    pub muted: bool,
    pub sinks: Vec<Sink>,
    pub gate: KeyframeGate,
    /// The source's latest sender report: NTP time, RTP time, and when it arrived.
    pub sr: Option<(u64, u32, Instant)>,
    /// Audio from a browser: the id of the audio-level header extension (RFC 6464) its
    /// packets carry, as negotiated on its publish connection.
    pub audio_level: Option<u8>,
    /// Simulcast: the spatial layers the browser sends, by rank (0 the smallest picture); all
    /// `None` for a single stream. Each sink receives exactly one of them.
    pub layers: [Option<Layer>; LAYERS],
    /// Dynacast: the layers the publisher was last told someone receives, and how many
    /// present layers that paused (counted in `confab_paused_layers`).
    pub announced: Option<[bool; LAYERS]>,
    pub paused_count: usize,
    /// What each layer (rank 0 for a single stream or audio) has been sending, for the
    /// allocator (`super::allocate`).
    pub rates: [RateMeter; LAYERS],
    /// External video: the low layer the bridge makes of it on demand (`super::low_layer`).
    pub low: LowLayer,
}

/// Whether the bridge is asked for a camera's low layer, and how it went
/// (`super::low_layer`). Present or not, the layer itself is `layers[low_layer::LOW]`.
#[derive(Debug, Default)]
pub(super) struct LowLayer {
    /// The bridge was last told someone needs it.
    pub wanted: bool,
    /// When someone last needed it (it is stopped a hold time after that).
    pub needed_at: Option<Instant>,
    /// When its last packet arrived.
    pub last_packet: Option<Instant>,
    /// Its rate while it is not there, so that the next start begins from what it sent.
    pub meter: RateMeter,
}

/// Spatial layers a simulcast track may have.
pub(super) const LAYERS: usize = 3;

/// Of the layers `present` (by rank), the one a sink that wants rank `want` gets: the largest
/// at or below it, else the smallest there is (a publisher that sends only its full picture
/// still reaches a small tile).
pub(super) fn effective_layer(present: [bool; LAYERS], want: usize) -> Option<usize> {
    (0..=want.min(LAYERS - 1))
        .rev()
        .find(|&r| present[r])
        .or_else(|| (0..LAYERS).find(|&r| present[r]))
}

/// Dynacast: which of the `present` layers someone needs, given each (unpaused) sink's
/// current layer and effective target. The smallest layer is always kept: a newcomer starts on
/// it at once, and a publisher alone in a room still sends something to start from.
pub(super) fn needed_layers(
    present: [bool; LAYERS],
    sinks: impl IntoIterator<Item = (Option<usize>, Option<usize>)>,
) -> [bool; LAYERS] {
    let mut needed = [false; LAYERS];
    if let Some(lowest) = (0..LAYERS).find(|&r| present[r]) {
        needed[lowest] = true;
    }
    for (on, target) in sinks {
        for r in [on, target].into_iter().flatten() {
            if r < LAYERS && present[r] {
                needed[r] = true;
            }
        }
    }
    needed
}

/// What a sink of a simulcast track does with a packet of layer `li`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// Not its layer: skip it.
    No,
    /// Its layer, flowing: forward it.
    Yes,
    /// The layer it moves to (or starts on): take it from a keyframe on, and skip it before.
    AtKeyframe,
}

/// The rule of one simulcast sink: it receives exactly one layer (`on`) and keeps receiving
/// it until its `target` layer (the effective one; see [`Track::effective_layer`]) gives a
/// keyframe, so the picture never stops while the switch waits; a sink waiting for a keyframe
/// (it starts, or its connection was congested) takes one of its target only.
pub(super) fn simulcast_take(
    on: Option<usize>,
    waiting_keyframe: bool,
    target: Option<usize>,
    li: usize,
) -> Take {
    if on == Some(li) && !waiting_keyframe {
        Take::Yes
    } else if target == Some(li) {
        Take::AtKeyframe
    } else {
        Take::No
    }
}

/// What one layer of a track sends, in bits per second, measured in quarter-second steps and
/// smoothed over about a second. A layer that sends nothing (paused by dynacast, or not
/// started) keeps the rate it had, so the allocator does not take a paused 720p layer for free.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RateMeter {
    /// Bytes since the last step.
    pub bytes: u64,
    smoothed: f64,
}

impl RateMeter {
    /// Ends a step of `secs` seconds.
    pub fn step(&mut self, secs: f64) {
        if self.bytes > 0 && secs > 0.0 {
            let sample = self.bytes as f64 * 8.0 / secs;
            self.smoothed = if self.smoothed == 0.0 {
                sample
            } else {
                0.75 * self.smoothed + 0.25 * sample
            };
        }
        self.bytes = 0;
    }

    /// The rate, or `default` when nothing was ever measured.
    pub fn bps(&self, default: f64) -> f64 {
        if self.smoothed > 0.0 {
            self.smoothed
        } else {
            default
        }
    }
}

/// One simulcast layer of a published track.
pub(super) struct Layer {
    /// Its RTP stream id (`a=rid`), as the browser named it.
    pub rid: String,
    /// The SSRC its packets carry, once one has arrived.
    pub ssrc: Option<Ssrc>,
    /// Keyframe requests for this layer alone: a subscriber of the small picture never makes
    /// the publisher encode a large keyframe.
    pub gate: KeyframeGate,
    /// This layer's latest sender report (each layer is its own RTP stream, with its own
    /// timestamps): NTP time, RTP time, and when it arrived.
    pub sr: Option<(u64, u32, Instant)>,
}

/// The rank of a simulcast layer from its rid: the page names them `q`, `h` and `f` (a
/// quarter, half and full picture, as Chromium's and LiveKit's `q/h/f` and `l/m/h` go).
/// Unknown names take the first free rank in the order they arrive.
pub(super) fn rid_rank(rid: &str) -> Option<usize> {
    match rid {
        "q" | "l" | "low" | "0" => Some(0),
        "h" | "m" | "mid" | "medium" | "1" => Some(1),
        "f" | "high" | "full" | "2" => Some(2),
        _ => None,
    }
}

impl Track {
    pub fn is_video(&self) -> bool {
        self.kind == MediaKind::Video
    }

    /// The sink that feeds subscriber `sub`, if it is subscribed.
    /// Whether the browser sends this track as simulcast layers.
    pub fn is_simulcast(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// The rank of the layer whose packets carry `ssrc`, if it is known.
    pub fn layer_of(&self, ssrc: Ssrc) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.ssrc == Some(ssrc)))
    }

    /// The layer a sink that wants rank `want` gets: the largest there is at or below it,
    /// else the smallest there is.
    pub fn effective_layer(&self, want: usize) -> Option<usize> {
        effective_layer(std::array::from_fn(|r| self.layers[r].is_some()), want)
    }

    pub fn sink_of(&self, sub: ParticipantKey) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.subscriber() == Some(sub))
    }

    pub fn sink_of_mut(&mut self, sub: ParticipantKey) -> Option<&mut Sink> {
        self.sinks.iter_mut().find(|s| s.subscriber() == Some(sub))
    }
}

/// One copy of a track.
pub(super) struct Sink {
    pub to: SinkKind,
    /// Its own sequence numbers and timestamps, continuous across source restarts.
    pub rewriter: Rewriter,
    /// Video only: nothing is sent until a keyframe starts the stream (again).
    pub waiting_keyframe: bool,
    /// Video only: the last packet sent did not end its frame (no marker bit), so the rest of
    /// the frame follows even if the connection becomes congested.
    pub frame_open: bool,
    /// When a cached group of pictures was last replayed to it (external sources).
    pub last_replay: Option<Instant>,
    /// Simulcast: the layer (rank) it receives now, and the one it should receive (the
    /// subscriber's choice). It moves to `target` at a keyframe of that layer, and until then
    /// keeps receiving `layer`.
    pub layer: Option<usize>,
    pub target: usize,
    /// Video the subscriber shows nowhere (off-screen, hidden tab): nothing is sent.
    pub paused: bool,
    /// The largest rank the subscriber's bandwidth estimate allows (`super::allocate`).
    pub cap: usize,
    /// Video the estimate has no room for: nothing is sent.
    pub starved: bool,
    /// When the subscriber's decoder last made the source asked for a keyframe.
    pub last_pli: Option<Instant>,
    /// A camera's video that the subscriber's estimate would rather take as its low layer
    /// (or not at all) than as the camera sends it (`super::low_layer`).
    pub squeezed: bool,
    /// Since when the allocator has found it squeezed (it is `squeezed` after a while).
    pub squeezed_since: Option<Instant>,
}

pub(super) enum SinkKind {
    /// A browser's subscribe connection.
    Peer(PeerSink),
    /// An RTSP player.
    Tap(TapId),
}

impl Sink {
    pub fn new(to: SinkKind, rewriter: Rewriter, kind: MediaKind) -> Sink {
        Sink {
            to,
            rewriter,
            waiting_keyframe: kind == MediaKind::Video,
            frame_open: false,
            last_replay: None,
            layer: None,
            target: LAYERS - 1,
            paused: false,
            cap: LAYERS - 1,
            starved: false,
            last_pli: None,
            squeezed: false,
            squeezed_since: None,
        }
    }

    /// Video that is sent nothing: shown nowhere, or with no room in the estimate.
    pub fn idle(&self) -> bool {
        self.paused || self.starved
    }

    /// The rank it should receive: what the tile needs, within what the estimate allows.
    pub fn want(&self) -> usize {
        self.target.min(self.cap).min(LAYERS - 1)
    }

    pub fn subscriber(&self) -> Option<ParticipantKey> {
        match &self.to {
            SinkKind::Peer(p) => Some(p.subscriber),
            SinkKind::Tap(_) => None,
        }
    }

    pub fn peer(&self) -> Option<&PeerSink> {
        match &self.to {
            SinkKind::Peer(p) => Some(p),
            SinkKind::Tap(_) => None,
        }
    }

    pub fn peer_mut(&mut self) -> Option<&mut PeerSink> {
        match &mut self.to {
            SinkKind::Peer(p) => Some(p),
            SinkKind::Tap(_) => None,
        }
    }

    pub fn tap(&self) -> Option<TapId> {
        match &self.to {
            SinkKind::Tap(t) => Some(*t),
            SinkKind::Peer(_) => None,
        }
    }
}

/// A subscriber's sender for one track.
pub(super) struct PeerSink {
    pub subscriber: ParticipantKey,
    /// The subscriber's subscribe connection.
    pub conn: PeerKey,
    pub sender: RTCRtpSenderId,
    pub ssrc: Ssrc,
    /// Negotiated payload type on this subscriber's connection; None until answered, or if the
    /// subscriber cannot receive the source's codec.
    pub pt: Option<u8>,
    pub negotiated: bool,
    /// The revision of the first subscribe offer that carried this sender: only an answer to
    /// that offer (or a later one) settles it.
    pub offered_in: Option<u64>,
    pub sent: Sent,
}

/// What a sender has sent, for its sender reports.
#[derive(Default)]
pub(super) struct Sent {
    pub packets: u32,
    pub octets: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_rank_small_to_large() {
        for (rid, rank) in [
            ("q", Some(0)),
            ("h", Some(1)),
            ("f", Some(2)),
            ("l", Some(0)),
        ] {
            assert_eq!(rid_rank(rid), rank, "{rid}");
        }
        assert_eq!(rid_rank("x"), None);
    }

    #[test]
    fn only_layers_someone_receives_are_needed() {
        let all = [true; LAYERS];
        assert_eq!(
            needed_layers(all, []),
            [true, false, false],
            "alone: the smallest only"
        );
        assert_eq!(
            needed_layers(all, [(Some(2), Some(2)), (Some(0), Some(0))]),
            [true, false, true]
        );
        assert_eq!(
            needed_layers(all, [(Some(2), Some(1))]),
            [true, true, true],
            "moving down: the old layer until the switch, and the new one"
        );
        let two = [true, false, true];
        assert_eq!(
            needed_layers(two, [(None, Some(1))]),
            [true, false, false],
            "an absent layer is never needed"
        );
    }

    #[test]
    fn the_layer_a_sink_gets() {
        let all = [true, true, true];
        assert_eq!(effective_layer(all, 0), Some(0));
        assert_eq!(effective_layer(all, 2), Some(2));
        assert_eq!(effective_layer(all, 9), Some(2), "beyond the top: the top");
        let two = [true, false, true]; // q and f, as a 360p camera sends
        assert_eq!(
            effective_layer(two, 1),
            Some(0),
            "no half picture: the quarter"
        );
        assert_eq!(effective_layer(two, 2), Some(2));
        let top = [false, false, true];
        assert_eq!(
            effective_layer(top, 0),
            Some(2),
            "only the full picture: that"
        );
        assert_eq!(effective_layer([false; LAYERS], 1), None);
    }

    #[test]
    fn a_sink_keeps_its_layer_until_the_targets_keyframe() {
        use Take::*;
        // (on, waiting, target, packet's layer) -> what happens
        for (on, waiting, target, li, want, why) in [
            (Some(2), false, Some(2), 2, Yes, "steady on its layer"),
            (Some(2), false, Some(2), 0, No, "another layer"),
            (
                Some(2),
                false,
                Some(0),
                2,
                Yes,
                "moving down: the old layer goes on meanwhile",
            ),
            (
                Some(2),
                false,
                Some(0),
                0,
                AtKeyframe,
                "moving down: the new layer from a keyframe",
            ),
            (
                Some(2),
                false,
                Some(0),
                1,
                No,
                "a layer it neither has nor wants",
            ),
            (None, true, Some(1), 1, AtKeyframe, "starting"),
            (None, true, Some(1), 2, No, "starting: only its target"),
            (
                Some(1),
                true,
                Some(1),
                1,
                AtKeyframe,
                "congested: again from a keyframe",
            ),
            (
                Some(1),
                true,
                Some(2),
                1,
                No,
                "congested and moving: the target's keyframe only",
            ),
        ] {
            assert_eq!(simulcast_take(on, waiting, target, li), want, "{why}");
        }
    }
}
