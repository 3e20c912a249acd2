//! Repair of lost packets with NACK on both legs (RFC 4585 §6.2.1).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{meeting, stream, track, AUDIO, FRAME, VIDEO};
use crate::media::sim::{ClientId, Dir, LinkConfig, Rtcp, Sim};
use crate::protocol::{MediaKind, PcRole};

const FRAMES: usize = 100;
const PACKETS: usize = 3;

/// Sends `FRAMES` video frames (and audio) from `publisher` with 10 % seeded media loss on
/// `lossy`'s `dir` link, then a second without loss; returns the sequence numbers of `ssrc`
/// that the link lost.
fn stream_with_loss(
    sim: &mut Sim,
    publisher: ClientId,
    lossy: ClientId,
    dir: Dir,
    ssrc: u32,
) -> BTreeSet<u16> {
    sim.set_link(lossy, dir, LinkConfig::media_loss(0.1));
    for _ in 0..FRAMES {
        sim.send_video(publisher, VIDEO, false, PACKETS);
        sim.send_audio(publisher, AUDIO);
        sim.run_for(FRAME);
    }
    sim.set_link(lossy, dir, LinkConfig::default());
    sim.run_for(Duration::from_secs(1));
    sim.lost_rtp(lossy, dir)
        .iter()
        .filter(|(s, _)| *s == ssrc)
        .map(|(_, seq)| *seq)
        .collect()
}

/// The sequence numbers of the frames sent after `last` that `sub` never got on `track`.
fn missing(sim: &Sim, sub: ClientId, track: &str, last: u16) -> Vec<u16> {
    let got: BTreeSet<u16> = sim
        .client(sub)
        .rtp_of(track)
        .map(|r| r.header.sequence_number)
        .collect();
    (1..=(FRAMES * PACKETS) as u16)
        .map(|i| last.wrapping_add(i))
        .filter(|s| !got.contains(s))
        .collect()
}

#[test]
fn packets_lost_on_the_way_to_a_subscriber_are_resent_when_it_nacks() {
    let (mut sim, alice, subs) = meeting(41, &["bob"]);
    let bob = subs[0];
    let video = track(&sim, alice, MediaKind::Video);
    stream(&mut sim, alice, 5);
    let last = sim
        .client(bob)
        .rtp_of(&video)
        .last()
        .unwrap()
        .header
        .clone();

    let lost = stream_with_loss(&mut sim, alice, bob, Dir::Down, last.ssrc);
    assert!(lost.len() > 10, "the link lost video packets: {lost:?}");
    let missing = missing(&sim, bob, &video, last.sequence_number);
    assert!(
        missing.is_empty(),
        "never repaired: {missing:?} (lost {lost:?})"
    );
}

#[test]
fn packets_lost_on_the_way_from_a_publisher_are_nacked_and_reach_subscribers() {
    let (mut sim, alice, subs) = meeting(42, &["bob"]);
    let bob = subs[0];
    let video = track(&sim, alice, MediaKind::Video);
    stream(&mut sim, alice, 5);
    let ssrc = sim.client(alice).tracks[VIDEO].ssrc;
    let last = sim
        .client(bob)
        .rtp_of(&video)
        .last()
        .unwrap()
        .header
        .clone();

    let lost = stream_with_loss(&mut sim, alice, alice, Dir::Up, ssrc);
    assert!(lost.len() > 10, "the link lost video packets: {lost:?}");
    let nacked: BTreeSet<u16> = sim
        .client(alice)
        .rtcp_on(PcRole::Publish)
        .filter_map(|(_, r)| match r {
            Rtcp::Nack { media_ssrc, seqs } if *media_ssrc == ssrc => Some(seqs.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(nacked, lost, "the engine asks for exactly the lost packets");

    let missing = missing(&sim, bob, &video, last.sequence_number);
    assert!(
        missing.is_empty(),
        "the resent packets are forwarded: {missing:?} missing"
    );
}
