//! Adaptive media: each subscriber's bandwidth estimate, from the TWCC feedback its client
//! sends back, and what the allocator and pacer make of it.

use std::time::Duration;

use super::{meeting, AUDIO, FRAME, VIDEO};
use crate::media::sim::{Dir, LinkConfig, Sim};

/// `frames` frames of alice's video, `packets` packets each (about 80 bytes on the wire), and
/// her audio.
fn stream(sim: &mut Sim, alice: super::ClientId, frames: usize, packets: usize) {
    for _ in 0..frames {
        sim.encode_video(alice, VIDEO, packets);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
}

fn estimate(sim: &mut Sim, id: &str) -> u64 {
    sim.subscriptions()
        .into_iter()
        .find(|v| v.id == id)
        .and_then(|v| v.estimate_bps)
        .unwrap_or_else(|| panic!("{id} has an estimate"))
}

#[test]
fn a_squeezed_subscribers_estimate_falls_to_its_link_and_nobody_elses_does() {
    let (mut sim, alice, subs) = meeting(41, &["bob", "carol"]);
    let carol = subs[1];
    // Carol's downlink: 300 kbit/s with a quarter second of queue.
    sim.set_link(
        carol,
        Dir::Down,
        LinkConfig {
            rate: Some((300_000.0, Duration::from_millis(250))),
            ..Default::default()
        },
    );
    // About 900 kbit/s of video for 6 s.
    stream(&mut sim, alice, 180, 45);
    let (bob_bps, carol_bps) = (estimate(&mut sim, "bob"), estimate(&mut sim, "carol"));
    assert!(
        carol_bps <= 330_000,
        "carol's estimate {carol_bps} should be under her 300 kbit/s link"
    );
    assert!(
        bob_bps >= 1_000_000,
        "bob's estimate {bob_bps} is not touched"
    );
    assert!(
        sim.link_stats(subs[0], Dir::Down).lost == 0,
        "bob loses nothing"
    );
}
