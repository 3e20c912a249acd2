//! Cameras: the cached group of pictures replayed to a late subscriber and to a player.

use std::time::Duration;

use super::FRAME;
use crate::media::api::PlaybackEvent;
use crate::media::sim::{frame_number, is_keyframe, Sent, Sim, VIDEO_TICKS};
use crate::protocol::MediaKind;

/// One millisecond at 90 kHz: how far apart replayed frames are.
const TICK: u32 = 90;

/// What a receiver got: (sequence number, timestamp, frame number, keyframe start).
type Got = Vec<(u16, u32, u32, bool)>;

/// Checks a replay of `group` (its frames as sent) followed by one live frame `live`.
fn check_replay(who: &str, got: &Got, group: &[(Sent, usize)], live: &Sent) {
    let packets: usize = group.iter().map(|(_, n)| n).sum();
    assert_eq!(
        got.len(),
        packets + 1,
        "{who}: the group and the live frame: {got:?}"
    );
    assert!(got[0].3, "{who}: the replay starts at the keyframe");
    let mut i = 0;
    for (sent, n) in group {
        for _ in 0..*n {
            assert_eq!(got[i].2, sent.frame, "{who}: packet {i} in order");
            i += 1;
        }
    }
    assert_eq!(got[packets].2, live.frame, "{who}: then the live frame");
    for (i, w) in got.windows(2).enumerate() {
        assert_eq!(
            w[1].0,
            w[0].0.wrapping_add(1),
            "{who}: packet {i}: sequence"
        );
        let dt = w[1].1.wrapping_sub(w[0].1);
        let want = if w[0].2 == w[1].2 {
            0
        } else if i + 1 == packets {
            // The newest replayed frame keeps its real mapping; live ones follow it.
            VIDEO_TICKS
        } else {
            TICK
        };
        assert_eq!(dt, want, "{who}: packet {i}: timestamp step");
    }
}

#[test]
fn a_late_subscriber_and_a_player_get_the_cameras_group_of_pictures_at_once() {
    let mut sim = Sim::new(51);
    let cam = sim.add_camera("cam", &[MediaKind::Video]);
    // An older group, then the current one: a keyframe in three packets and nine frames.
    for i in 0..5 {
        sim.camera_video(cam, 0, i == 0, 1);
        sim.run_for(FRAME);
    }
    let mut group = vec![(sim.camera_video(cam, 0, true, 3), 3)];
    for _ in 0..9 {
        sim.run_for(FRAME);
        group.push((sim.camera_video(cam, 0, false, 1), 1));
    }

    let bob = sim.join("bob");
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.connected(bob)),
        "bob connects"
    );
    sim.run_for(Duration::from_millis(100));
    let tracks = sim.describe("cam").expect("the camera is there");
    assert_eq!(tracks.len(), 1);
    let tap = sim.tap("cam", &[tracks[0].key]);
    sim.run_for(FRAME);
    let live = sim.camera_video(cam, 0, false, 1);
    sim.run_for(FRAME);

    let video = sim.camera(cam).tracks[0].public_id.clone();
    let bob_got: Got = sim
        .client(bob)
        .rtp_of(&video)
        .map(|r| {
            let f = frame_number(&r.payload).unwrap();
            (
                r.header.sequence_number,
                r.header.timestamp,
                f,
                is_keyframe(&r.payload),
            )
        })
        .collect();
    check_replay("subscriber", &bob_got, &group, &live);

    let tap_got: Got = sim
        .tap_log(tap)
        .events
        .iter()
        .filter_map(|(_, ev)| match ev {
            PlaybackEvent::Rtp {
                seq, ts, payload, ..
            } => Some((
                *seq,
                *ts,
                frame_number(payload).unwrap(),
                is_keyframe(payload),
            )),
            _ => None,
        })
        .collect();
    check_replay("player", &tap_got, &group, &live);
}
