//! The dominant speaker through the engine: audio levels on publishers' packets (RFC 6464) in,
//! `Speaker` events to every participant's session out.

use std::time::{Duration, Instant};

use super::super::sim::{ClientId, Sim};
use crate::media::api::MediaEvent;
use crate::protocol::MediaKind;

/// 20 ms Opus packets.
const PACKET: Duration = Duration::from_millis(20);

/// The speakers client `c`'s session was told of, with when.
fn speakers(sim: &Sim, c: ClientId) -> Vec<(Instant, Option<String>)> {
    sim.client(c)
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            MediaEvent::Speaker { id } => Some((*at, id.as_ref().map(|i| i.to_string()))),
            _ => None,
        })
        .collect()
}

fn ids(sim: &Sim, c: ClientId) -> Vec<Option<String>> {
    speakers(sim, c).into_iter().map(|(_, id)| id).collect()
}

/// `d` of audio from each of `who` at its level, a packet every 20 ms.
fn talk(sim: &mut Sim, d: Duration, who: &[(ClientId, u8)]) {
    for _ in 0..d.as_millis() / PACKET.as_millis() {
        for &(c, level) in who {
            sim.send_audio_level(c, 0, Some(level));
        }
        sim.run_for(PACKET);
    }
}

#[test]
fn the_loud_publisher_is_the_speaker_and_a_swap_switches_once() {
    let mut sim = Sim::new(71);
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    assert_eq!(sim.publish(alice, &[MediaKind::Audio]), [0]);
    assert_eq!(sim.publish(bob, &[MediaKind::Audio]), [0]);
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.connected(alice)
            && s.connected(bob)),
        "both connect"
    );
    let answer = sim.client(alice).events.iter().find_map(|(_, e)| match e {
        MediaEvent::Answer { sdp } => Some(sdp.clone()),
        _ => None,
    });
    assert!(
        answer.is_some_and(|a| a.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level")),
        "the publish answer takes the audio-level extension"
    );
    // Alice talks (−25 dBov), bob's microphone is muted (silence, 127).
    talk(&mut sim, Duration::from_secs(3), &[(alice, 25), (bob, 127)]);
    for c in [alice, bob] {
        assert_eq!(ids(&sim, c), [Some("alice".to_owned())], "{c:?}");
    }
    // They swap.
    let swapped = sim.now;
    talk(&mut sim, Duration::from_secs(4), &[(alice, 127), (bob, 25)]);
    for c in [alice, bob] {
        assert_eq!(
            ids(&sim, c),
            [Some("alice".to_owned()), Some("bob".to_owned())],
            "{c:?}: switched once"
        );
    }
    let after = speakers(&sim, alice)[1].0 - swapped;
    assert!(
        after <= Duration::from_millis(2500),
        "bob took over {after:?} after the swap"
    );
    assert_eq!(
        sim.metrics()
            .speaker_changes
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // Someone joining is told who speaks.
    let carol = sim.join("carol");
    assert_eq!(ids(&sim, carol), [Some("bob".to_owned())]);
    // The speaker leaving clears it for everyone left.
    sim.leave(bob);
    for c in [alice, carol] {
        assert_eq!(ids(&sim, c).last(), Some(&None), "{c:?}");
    }
    // And the next voice takes it at once.
    talk(&mut sim, Duration::from_secs(1), &[(alice, 30)]);
    assert_eq!(ids(&sim, carol).last(), Some(&Some("alice".to_owned())));
}

#[test]
fn an_operator_muted_voice_is_not_heard() {
    let mut sim = Sim::new(72);
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    sim.publish(alice, &[MediaKind::Audio]);
    sim.publish(bob, &[MediaKind::Audio]);
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.connected(alice)
            && s.connected(bob))
    );
    talk(&mut sim, Duration::from_secs(2), &[(alice, 40), (bob, 127)]);
    assert_eq!(ids(&sim, bob), [Some("alice".to_owned())]);
    let key = sim.client(bob).key;
    sim.mute(key, MediaKind::Audio, true);
    // Bob shouts into a microphone an operator muted: nobody hears him, so he does not win.
    talk(&mut sim, Duration::from_secs(4), &[(alice, 40), (bob, 5)]);
    assert_eq!(ids(&sim, alice), [Some("alice".to_owned())]);
}
