//! Renegotiation of subscribe connections when tracks come and go (docs/protocol.md).

use std::time::Duration;

use super::FRAME;
use crate::media::engine::MediaEvent;
use crate::media::sim::{ClientId, Sim};
use crate::protocol::{MediaKind, OfferedTrack};

fn names(tracks: &[OfferedTrack]) -> Vec<String> {
    let mut v: Vec<String> = tracks.iter().map(|t| t.track.clone()).collect();
    v.sort();
    v
}

/// Alice publishes `kinds` and is connected; nobody else is there yet.
fn publisher(sim: &mut Sim, kinds: &[MediaKind]) -> ClientId {
    let alice = sim.join("alice");
    sim.publish(alice, kinds);
    assert!(sim.run_until(Duration::from_secs(10), |s| s.connected(alice)));
    alice
}

/// Alice's tracks (those not removed): a video frame or an audio packet each, then a frame's
/// time passes.
fn media(sim: &mut Sim, alice: ClientId, frames: usize) {
    for _ in 0..frames {
        let tracks = sim.client(alice).tracks.clone();
        for (i, t) in tracks.iter().enumerate().filter(|(_, t)| !t.removed) {
            match t.kind {
                MediaKind::Video => {
                    sim.encode_video(alice, i, 1);
                }
                MediaKind::Audio => {
                    sim.send_audio(alice, i);
                }
            }
        }
        sim.run_for(FRAME);
    }
}

fn errors(sim: &Sim, c: ClientId) -> Vec<&MediaEvent> {
    sim.client(c)
        .events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, MediaEvent::Error { .. } | MediaEvent::Failed { .. }))
        .collect()
}

#[test]
fn adding_a_track_sends_an_offer_with_a_higher_revision_listing_the_tracks() {
    let mut sim = Sim::new(21);
    let alice = publisher(&mut sim, &[MediaKind::Video]);
    let bob = sim.join("bob");
    media(&mut sim, alice, 30);
    let video = sim.client(alice).published_track(MediaKind::Video).unwrap();
    let offers = sim.client(bob).offers();
    assert_eq!(offers.len(), 1, "one offer for the one track: {offers:?}");
    assert_eq!(names(&offers[0].1), [video.as_str()]);
    assert!(
        sim.client(bob).rtp_of(&video).next().is_some(),
        "video flows"
    );

    sim.publish(alice, &[MediaKind::Audio]);
    media(&mut sim, alice, 30);
    let audio = sim.client(alice).published_track(MediaKind::Audio).unwrap();
    let offers = sim.client(bob).offers();
    assert_eq!(offers.len(), 2, "a new offer for the new track: {offers:?}");
    assert!(offers[1].0 > offers[0].0, "a higher revision");
    let mut both = vec![video.clone(), audio.clone()];
    both.sort();
    assert_eq!(names(&offers[1].1), both, "it lists both tracks");
    assert!(
        sim.client(bob).rtp_of(&audio).next().is_some(),
        "audio flows"
    );
    assert!(errors(&sim, bob).is_empty(), "{:?}", errors(&sim, bob));
}

#[test]
fn removing_a_track_sends_an_offer_without_it() {
    let mut sim = Sim::new(23);
    let alice = publisher(&mut sim, &[MediaKind::Video, MediaKind::Audio]);
    let bob = sim.join("bob");
    media(&mut sim, alice, 30);
    let audio = sim.client(alice).published_track(MediaKind::Audio).unwrap();
    let before = sim.client(bob).offers();
    assert_eq!(before.last().map(|o| o.1.len()), Some(2), "{before:?}");

    sim.unpublish(alice, 0);
    media(&mut sim, alice, 30);
    let offers = sim.client(bob).offers();
    assert_eq!(
        offers.len(),
        before.len() + 1,
        "a new offer without the removed track: {offers:?}"
    );
    let (rev, tracks) = offers.last().unwrap();
    assert!(*rev > before.last().unwrap().0, "a higher revision");
    assert_eq!(names(tracks), [audio.as_str()]);
    assert_eq!(
        sim.client(alice).published(),
        [audio.as_str()],
        "the owner is told its tracks"
    );
    let audio_now = sim.client(bob).rtp_of(&audio).count();
    media(&mut sim, alice, 10);
    assert_eq!(
        sim.client(bob).rtp_of(&audio).count(),
        audio_now + 10,
        "the remaining track keeps flowing"
    );
}

#[test]
fn changes_during_an_outstanding_offer_are_folded_into_the_next_and_stale_answers_ignored() {
    let mut sim = Sim::new(22);
    let alice = publisher(&mut sim, &[MediaKind::Video]);
    let bob = sim.join("bob");
    sim.client_mut(bob).auto_answer = false;
    media(&mut sim, alice, 10);
    let video = sim.client(alice).published_track(MediaKind::Video).unwrap();
    let offers = sim.client(bob).offers();
    assert_eq!(offers.len(), 1, "{offers:?}");
    let first = offers[0].0;

    // A change while the first offer is outstanding: no offer until it is answered.
    sim.publish(alice, &[MediaKind::Audio]);
    media(&mut sim, alice, 30);
    let audio = sim.client(alice).published_track(MediaKind::Audio).unwrap();
    assert_eq!(
        sim.client(bob).offers().len(),
        1,
        "nothing new while one is outstanding"
    );

    assert_eq!(sim.answer_offer(bob), Some(first));
    let offers = sim.client(bob).offers();
    assert_eq!(
        offers.len(),
        2,
        "the folded change comes at once: {offers:?}"
    );
    let second = offers[1].0;
    assert!(second > first);
    let mut both = vec![video.clone(), audio.clone()];
    both.sort();
    assert_eq!(names(&offers[1].1), both);

    // The first answer again, while the second offer is outstanding: ignored.
    let (rev, stale) = sim.client(bob).answers[0].clone();
    assert_eq!(rev, first);
    sim.send_subscribe_answer(bob, stale, first);
    assert!(errors(&sim, bob).is_empty(), "{:?}", errors(&sim, bob));
    // Had it settled the outstanding offer, this change would make an offer at once.
    let cam = sim.add_camera("cam", &[MediaKind::Video]);
    let cam_video = sim.camera(cam).tracks[0].public_id.clone();
    media(&mut sim, alice, 5);
    assert_eq!(
        sim.client(bob).offers().len(),
        2,
        "the stale answer did not settle the outstanding offer"
    );

    assert_eq!(sim.answer_offer(bob), Some(second));
    let offers = sim.client(bob).offers();
    assert_eq!(offers.len(), 3, "{offers:?}");
    let mut all = vec![video.clone(), audio.clone(), cam_video];
    all.sort();
    assert_eq!(names(&offers[2].1), all);
    assert!(offers[2].0 > second);
    sim.answer_offer(bob);
    media(&mut sim, alice, 60);
    assert!(sim.connected(bob));
    assert!(
        sim.client(bob).rtp_of(&video).next().is_some(),
        "video flows"
    );
    assert!(
        sim.client(bob).rtp_of(&audio).next().is_some(),
        "audio flows"
    );
    assert!(errors(&sim, bob).is_empty(), "{:?}", errors(&sim, bob));
}
