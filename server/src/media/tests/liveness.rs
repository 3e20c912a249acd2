//! Participants going away: leaving, and going silent (ICE consent timeout).

use std::time::Duration;

use super::{meeting, stream, track, FRAME};
use crate::media::sim::{Dir, LinkConfig};
use crate::protocol::{MediaKind, OfferedTrack};

/// Alice leaves a meeting with bob and carol; returns, per subscriber, the offers that came
/// after it.
fn leave_offers(seed: u64) -> Vec<Vec<(u64, Vec<OfferedTrack>)>> {
    let (mut sim, alice, subs) = meeting(seed, &["bob", "carol"]);
    stream(&mut sim, alice, 5);
    let before: Vec<usize> = subs.iter().map(|&s| sim.client(s).offers().len()).collect();
    assert_eq!(sim.engine().participant_count(), 3);

    sim.leave(alice);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.engine().participant_count(), 2);
    subs.iter()
        .zip(before)
        .map(|(&s, n)| {
            assert!(sim.connected(s), "the others stay connected");
            assert!(sim.client(s).failure.is_none());
            sim.client(s).offers().split_off(n)
        })
        .collect()
}

#[test]
fn when_a_publisher_leaves_the_others_get_an_offer_without_its_tracks() {
    for offers in leave_offers(61) {
        let (rev, tracks) = offers.last().expect("a new offer");
        assert!(tracks.is_empty(), "without alice's tracks: {offers:?}");
        assert!(offers.windows(2).all(|w| w[1].0 > w[0].0), "{offers:?}");
        assert!(*rev > 2, "a higher revision than before the leave");
    }
}

#[test]
fn a_leave_brings_one_offer_without_any_of_the_tracks() {
    for offers in leave_offers(63) {
        assert_eq!(offers.len(), 1, "{offers:?}");
        assert!(offers[0].1.is_empty(), "{offers:?}");
    }
}

#[test]
fn a_client_that_goes_silent_is_removed_after_the_ice_timeout() {
    let (mut sim, alice, subs) = meeting(62, &["bob"]);
    let bob = subs[0];
    // Bob publishes too, so alice's offers show when he is gone.
    sim.publish(bob, &[MediaKind::Video]);
    for _ in 0..30 {
        sim.encode_video(bob, 0, 1);
        stream(&mut sim, alice, 1);
    }
    let bobs = track(&sim, bob, MediaKind::Video);
    assert!(
        sim.client(alice).rtp_of(&bobs).next().is_some(),
        "alice receives bob"
    );
    let offers_before = sim.client(alice).offers().len();

    // Bob's machine drops off the network: nothing of his reaches the engine any more.
    sim.set_link(
        bob,
        Dir::Up,
        LinkConfig {
            cut: true,
            ..Default::default()
        },
    );
    let silent = sim.now;
    let failed = sim.run_until(Duration::from_secs(20), |s| {
        s.client(bob).failed().is_some()
    });
    assert!(failed, "bob is removed");
    let (at, reason) = sim.client(bob).failed().unwrap();
    let after = at - silent;
    assert!(
        after >= Duration::from_secs(5),
        "not before the disconnect timeout: {after:?} ({reason})"
    );
    assert!(
        after <= Duration::from_secs(12),
        "about 10 s of silence (5 s to disconnected, 5 s to failed): {after:?} ({reason})"
    );
    sim.run_for(FRAME);
    assert_eq!(sim.engine().participant_count(), 1);
    let offers = sim.client(alice).offers();
    assert_eq!(offers.len(), offers_before + 1, "{offers:?}");
    assert!(
        offers.last().unwrap().1.is_empty(),
        "alice is offered no more of bob's tracks"
    );
    assert!(
        sim.client(alice).failed().is_none(),
        "alice, who stayed, is not removed"
    );
}
