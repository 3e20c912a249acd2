//! Keyframes: gating new subscribers, throttling requests to publishers, operator mute.

use std::time::{Duration, Instant};

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

use super::{meeting, stream, track, AUDIO, FRAME, VIDEO};
use crate::media::keyframe::KEYFRAME_INTERVAL;
use crate::media::sim::{frame_number, is_keyframe, ClientId, Rtcp, Sim};
use crate::protocol::{MediaKind, PcRole};

/// When keyframe requests for alice's video reached her.
fn plis(sim: &Sim, alice: ClientId) -> Vec<Instant> {
    let ssrc = sim.client(alice).tracks[VIDEO].ssrc;
    sim.client(alice)
        .rtcp_on(PcRole::Publish)
        .filter(|(_, r)| matches!(r, Rtcp::Pli { media_ssrc } if *media_ssrc == ssrc))
        .map(|(at, _)| at)
        .collect()
}

/// Subscriber `s` asks for a keyframe of the video it receives, as a decoder that lost the
/// picture does.
fn ask(sim: &mut Sim, s: ClientId, video: &str) {
    let media_ssrc = sim
        .client(s)
        .rtp_of(video)
        .last()
        .expect("receiving the video")
        .header
        .ssrc;
    let pli = PictureLossIndication {
        sender_ssrc: 1,
        media_ssrc,
    };
    sim.send_rtcp(s, PcRole::Subscribe, vec![Box::new(pli)]);
}

#[test]
fn a_new_subscriber_gets_nothing_of_a_video_track_until_a_keyframe() {
    let mut sim = Sim::new(31);
    let alice = sim.join("alice");
    sim.publish(alice, &[MediaKind::Video, MediaKind::Audio]);
    assert!(sim.run_until(Duration::from_secs(10), |s| s.connected(alice)));
    for i in 0..10 {
        sim.send_video(alice, VIDEO, i == 0, 1);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
    let (video, audio) = (
        track(&sim, alice, MediaKind::Video),
        track(&sim, alice, MediaKind::Audio),
    );
    let bob = sim.join("bob");
    // Two seconds of frames that are not keyframes (this encoder ignores requests).
    for _ in 0..60 {
        sim.send_video(alice, VIDEO, false, 2);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
    assert!(sim.connected(bob));
    assert!(
        sim.client(bob).rtp_of(&audio).count() > 30,
        "audio is not held back"
    );
    assert_eq!(
        sim.client(bob).rtp_of(&video).count(),
        0,
        "no video before a keyframe"
    );
    assert!(
        sim.client(alice).tracks[VIDEO].keyframe_requests > 0,
        "the engine asked alice for one"
    );

    let key = sim.send_video(alice, VIDEO, true, 3);
    for _ in 0..5 {
        sim.run_for(FRAME);
        sim.send_video(alice, VIDEO, false, 2);
    }
    sim.run_for(FRAME);
    let got: Vec<_> = sim.client(bob).rtp_of(&video).collect();
    assert_eq!(got.len(), 3 + 5 * 2, "the keyframe and what follows it");
    assert!(is_keyframe(&got[0].payload), "it starts at the keyframe");
    assert_eq!(frame_number(&got[0].payload), Some(key.frame));
}

#[test]
fn many_keyframe_requests_reach_the_publisher_at_most_once_per_interval() {
    let (mut sim, alice, subs) = meeting(32, &["bob", "carol", "dave"]);
    let video = track(&sim, alice, MediaKind::Video);
    stream(&mut sim, alice, 30);
    let start = sim.now;
    // Every subscriber asks every 40 ms for 1.2 s; alice sends no keyframe meanwhile.
    let mut last_ask = start;
    for _ in 0..30 {
        for &s in &subs {
            ask(&mut sim, s, &video);
        }
        last_ask = sim.now;
        sim.send_video(alice, VIDEO, false, 1);
        sim.run_for(Duration::from_millis(40));
    }
    for _ in 0..30 {
        sim.send_video(alice, VIDEO, false, 1);
        sim.run_for(Duration::from_millis(40));
    }
    let got: Vec<Instant> = plis(&sim, alice)
        .into_iter()
        .filter(|t| *t > start)
        .collect();
    assert!(
        (3..=4).contains(&got.len()),
        "90 requests in 1.2 s make 3 or 4 PLIs, not {}",
        got.len()
    );
    for w in got.windows(2) {
        assert!(
            w[1] - w[0] >= KEYFRAME_INTERVAL,
            "PLIs {:?} apart",
            w[1] - w[0]
        );
    }
    let last = *got.last().unwrap();
    assert!(
        last > last_ask,
        "the requests at the end of the storm are not dropped"
    );
}

#[test]
fn a_request_inside_the_window_is_sent_at_its_end() {
    let (mut sim, alice, subs) = meeting(33, &["bob", "carol"]);
    let video = track(&sim, alice, MediaKind::Video);
    stream(&mut sim, alice, 30);
    let start = sim.now;
    ask(&mut sim, subs[0], &video);
    sim.run_for(Duration::from_millis(100));
    ask(&mut sim, subs[1], &video);
    sim.run_for(Duration::from_millis(1500));
    let got: Vec<Instant> = plis(&sim, alice)
        .into_iter()
        .filter(|t| *t > start)
        .collect();
    assert_eq!(got.len(), 2, "one at once, one deferred: {got:?}");
    assert_eq!(
        got[1] - got[0],
        KEYFRAME_INTERVAL,
        "the deferred request goes when the window ends"
    );
}

#[test]
fn an_operator_mute_stops_video_and_unmute_resumes_at_a_keyframe() {
    let (mut sim, alice, subs) = meeting(34, &["bob"]);
    let bob = subs[0];
    let (video, audio) = (
        track(&sim, alice, MediaKind::Video),
        track(&sim, alice, MediaKind::Audio),
    );
    stream(&mut sim, alice, 10);
    let last_before = sim
        .client(bob)
        .rtp_of(&video)
        .last()
        .unwrap()
        .header
        .sequence_number;
    let (video_before, audio_before) = (
        sim.client(bob).rtp_of(&video).count(),
        sim.client(bob).rtp_of(&audio).count(),
    );

    let key = sim.client(alice).key;
    sim.mute(key, MediaKind::Video, true);
    for i in 0..30 {
        sim.send_video(alice, VIDEO, i % 10 == 0, 1);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
    assert_eq!(
        sim.client(bob).rtp_of(&video).count(),
        video_before,
        "no video while muted, keyframes included"
    );
    assert_eq!(
        sim.client(bob).rtp_of(&audio).count(),
        audio_before + 30,
        "audio is not muted"
    );

    sim.mute(key, MediaKind::Video, false);
    let unmuted = sim.now;
    for _ in 0..45 {
        sim.send_video(alice, VIDEO, false, 1);
        sim.send_audio(alice, AUDIO);
        sim.run_for(FRAME);
    }
    assert_eq!(
        sim.client(bob).rtp_of(&video).count(),
        video_before,
        "after unmute, nothing before a keyframe"
    );
    assert!(
        plis(&sim, alice).iter().any(|t| *t > unmuted),
        "the engine asks alice for a keyframe"
    );
    let k = sim.send_video(alice, VIDEO, true, 2);
    sim.run_for(FRAME);
    sim.send_video(alice, VIDEO, false, 1);
    sim.run_for(FRAME);
    let after: Vec<_> = sim.client(bob).rtp_of(&video).skip(video_before).collect();
    assert_eq!(after.len(), 3);
    assert!(is_keyframe(&after[0].payload));
    assert_eq!(frame_number(&after[0].payload), Some(k.frame));
    assert_eq!(
        after[0].header.sequence_number,
        last_before.wrapping_add(1),
        "the subscriber's sequence continues where it stopped"
    );
}
