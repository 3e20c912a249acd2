//! Engine scenarios on simulated time and network ([`super::sim`]), one file per group.
//!
//! Each test builds a [`Sim`], drives it through a scenario in simulated time and asserts on
//! what the clients decrypted, what RTCP reached them and what the engine told their sessions.
//! A failing assertion prints the simulation's trace.

mod adapt;
mod audio;
mod camera;
mod forwarding;
mod handshake;
mod keyframes;
mod liveness;
mod low_layer;
mod nack;
mod renegotiation;
mod speaker;

use std::time::Duration;

use super::sim::{ClientId, Sim};
use crate::protocol::MediaKind;

/// One video frame at 30 fps (3000 ticks of 90 kHz).
pub(super) const FRAME: Duration = Duration::from_millis(33);
/// Alice's tracks in every [`meeting`]: `tracks[VIDEO]`, `tracks[AUDIO]`.
pub(super) const VIDEO: usize = 0;
pub(super) const AUDIO: usize = 1;

/// Alice publishes H.264 video and Opus audio; `subscribers` join and are connected, each with
/// alice's video started (a keyframe reached it). Alice's encoder answers keyframe requests.
pub(super) fn meeting(seed: u64, subscribers: &[&str]) -> (Sim, ClientId, Vec<ClientId>) {
    let mut sim = Sim::new(seed);
    let alice = sim.join("alice");
    let subs: Vec<ClientId> = subscribers.iter().map(|id| sim.join(id)).collect();
    let tracks = sim.publish(alice, &[MediaKind::Video, MediaKind::Audio]);
    assert_eq!(tracks, [VIDEO, AUDIO]);
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.connected(alice)),
        "alice's publish connection connects"
    );
    let started = |sim: &Sim| {
        let Some(video) = sim.client(alice).published_track(MediaKind::Video) else {
            return false;
        };
        subs.iter()
            .all(|&s| sim.connected(s) && sim.client(s).rtp_of(&video).next().is_some())
    };
    for _ in 0..300 {
        if started(&sim) {
            return (sim, alice, subs);
        }
        stream(&mut sim, alice, 1);
    }
    panic!("the subscribers did not start within 10 s");
}

/// `frames` frames of alice's video (as her encoder makes them) and audio, one per [`FRAME`].
pub(super) fn stream(sim: &mut Sim, alice: ClientId, frames: usize) {
    for _ in 0..frames {
        sim.encode_video(alice, VIDEO, 1);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
}

/// The engine's public id of `c`'s track of `kind`.
pub(super) fn track(sim: &Sim, c: ClientId, kind: MediaKind) -> String {
    sim.client(c)
        .published_track(kind)
        .unwrap_or_else(|| panic!("{} publishes no {kind:?}", sim.client(c).id))
}

/// The media section of an SDP that carries `track` (by its `a=msid`), or has `a=mid:{mid}`.
pub(super) fn sdp_section<'a>(
    sdp: &'a str,
    track: Option<&str>,
    mid: Option<&str>,
) -> Option<&'a str> {
    sdp.split("\nm=").skip(1).find(|sec| {
        sec.lines().any(|l| {
            let l = l.trim_end();
            track.is_some_and(|t| l.starts_with("a=msid:") && l.ends_with(&format!(" {t}")))
                || mid.is_some_and(|m| l.strip_prefix("a=mid:") == Some(m))
        })
    })
}

/// The SSRC `a=ssrc` lines give in an SDP section.
pub(super) fn sdp_ssrc(section: &str) -> Option<u32> {
    section
        .lines()
        .find_map(|l| l.strip_prefix("a=ssrc:")?.split(' ').next()?.parse().ok())
}

/// The payload type whose rtpmap starts with `codec` (and whose fmtp, if `fmtp` is given,
/// contains it) in an SDP section.
pub(super) fn sdp_pt(section: &str, codec: &str, fmtp: Option<&str>) -> Option<u8> {
    section.lines().find_map(|l| {
        let (pt, map) = l.trim_end().strip_prefix("a=rtpmap:")?.split_once(' ')?;
        if !map.starts_with(codec) {
            return None;
        }
        let ok = fmtp.is_none_or(|f| {
            section.lines().any(|m| {
                m.strip_prefix(&format!("a=fmtp:{pt} "))
                    .is_some_and(|v| v.contains(f))
            })
        });
        ok.then(|| pt.parse().ok()).flatten()
    })
}
