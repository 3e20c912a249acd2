//! Repair of lost packets with NACK on both legs (RFC 4585 §6.2.1).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{meeting, stream, track, AUDIO, FRAME, VIDEO};
use crate::media::sim::{Dir, LinkConfig, Rtcp};
use crate::protocol::{MediaKind, PcRole};

const FRAMES: usize = 100;
const PACKETS: usize = 3;

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

    sim.set_link(bob, Dir::Down, LinkConfig::media_loss(0.1));
    for _ in 0..FRAMES {
        sim.send_video(alice, VIDEO, false, PACKETS);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
    sim.set_link(bob, Dir::Down, LinkConfig::default());
    sim.run_for(Duration::from_secs(1));

    let lost: BTreeSet<u16> = sim
        .lost_rtp(bob, Dir::Down)
        .iter()
        .filter(|(ssrc, _)| *ssrc == last.ssrc)
        .map(|(_, seq)| *seq)
        .collect();
    assert!(lost.len() > 10, "the link lost video packets: {lost:?}");
    let got: BTreeSet<u16> = sim
        .client(bob)
        .rtp_of(&video)
        .map(|r| r.header.sequence_number)
        .collect();
    let missing: Vec<u16> = (1..=(FRAMES * PACKETS) as u16)
        .map(|i| last.sequence_number.wrapping_add(i))
        .filter(|s| !got.contains(s))
        .collect();
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

    sim.set_link(alice, Dir::Up, LinkConfig::media_loss(0.1));
    for _ in 0..FRAMES {
        sim.send_video(alice, VIDEO, false, PACKETS);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
    sim.set_link(alice, Dir::Up, LinkConfig::default());
    sim.run_for(Duration::from_secs(1));

    let lost: BTreeSet<u16> = sim
        .lost_rtp(alice, Dir::Up)
        .iter()
        .filter(|(s, _)| *s == ssrc)
        .map(|(_, seq)| *seq)
        .collect();
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

    let got: BTreeSet<u16> = sim
        .client(bob)
        .rtp_of(&video)
        .map(|r| r.header.sequence_number)
        .collect();
    let missing: Vec<u16> = (1..=(FRAMES * PACKETS) as u16)
        .map(|i| last.sequence_number.wrapping_add(i))
        .filter(|s| !got.contains(s))
        .collect();
    assert!(
        missing.is_empty(),
        "the resent packets are forwarded: {missing:?} missing"
    );
}
