//! A camera's low layer (`media/low_layer.rs`): asked of the bridge while a subscriber needs a
//! smaller picture, forwarded like a simulcast layer, stopped a hold time after nobody does.
//! The test plays the bridge: it sends the low layer while asked to, a keyframe first and
//! whenever the engine asks for one.

use std::time::{Duration, Instant};

use super::FRAME;
use crate::media::adapt::ADAPT_INTERVAL;
use crate::media::api::{ExternalEvent, TrackKey};
use crate::media::low_layer::{HOLD, STALE};
use crate::media::sim::{
    frame_number, is_keyframe, CameraId, ClientId, Dir, LinkConfig, Sim, LOW_FRAMES,
};
use crate::protocol::MediaKind;

/// The camera's keyframe interval in frames (2 s at 30 fps).
const GOP: u32 = 60;

/// The test's stand-in for the bridge's transcoder.
struct Bridge {
    cam: CameraId,
    track: TrackKey,
    /// Camera's frames per picture, in packets.
    packets: usize,
    /// Events of the camera already acted on.
    seen: usize,
    making: bool,
    keyframe_due: bool,
    /// The transcoder died: the low layer stops without the engine saying so.
    crashed: bool,
    frames: u32,
    /// Frame numbers of the low layer's keyframes sent.
    low_keyframes: Vec<u32>,
}

impl Bridge {
    fn new(sim: &mut Sim, id: &str, packets: usize) -> (Bridge, String) {
        let cam = sim.add_camera(id, &[MediaKind::Video]);
        let tracks = sim.describe(id).expect("the camera is there");
        let public = sim.camera(cam).tracks[0].public_id.clone();
        let bridge = Bridge {
            cam,
            track: tracks[0].key,
            packets,
            seen: 0,
            making: false,
            keyframe_due: false,
            crashed: false,
            frames: 0,
            low_keyframes: Vec::new(),
        };
        (bridge, public)
    }

    /// One frame of the camera (a keyframe every [`GOP`]) and, while the engine asks for it,
    /// one of the low layer (a keyframe when it starts or was asked for); then a frame's time.
    fn step(&mut self, sim: &mut Sim) {
        let events = sim.camera(self.cam).events[self.seen..].to_vec();
        self.seen += events.len();
        for (_, ev) in events {
            match ev {
                ExternalEvent::LowLayer { track, needed } if track == self.track => {
                    if needed && !self.making {
                        self.keyframe_due = true;
                    }
                    self.making = needed;
                }
                ExternalEvent::LowLayerKeyframe { track } if track == self.track => {
                    self.keyframe_due = true;
                }
                other => panic!("an event for another track: {other:?}"),
            }
        }
        sim.camera_video(self.cam, 0, self.frames.is_multiple_of(GOP), self.packets);
        self.frames += 1;
        if self.making && !self.crashed {
            let key = std::mem::take(&mut self.keyframe_due);
            let sent = sim.camera_low_video(self.cam, self.track, key, 2);
            if key {
                self.low_keyframes.push(sent.frame);
            }
        }
        sim.run_for(FRAME);
    }

    fn run(&mut self, sim: &mut Sim, d: Duration) {
        let end = sim.now + d;
        while sim.now < end {
            self.step(sim);
        }
    }

    /// When the engine asked for keyframes of the low layer.
    fn keyframes_asked(&self, sim: &Sim) -> Vec<Instant> {
        sim.camera(self.cam)
            .events
            .iter()
            .filter(|(_, ev)| matches!(ev, ExternalEvent::LowLayerKeyframe { .. }))
            .map(|(at, _)| *at)
            .collect()
    }

    /// The `LowLayer` events so far: when, and needed or not.
    fn asked(&self, sim: &Sim) -> Vec<(Instant, bool)> {
        sim.camera(self.cam)
            .events
            .iter()
            .filter_map(|(at, ev)| match ev {
                ExternalEvent::LowLayer { needed, .. } => Some((*at, *needed)),
                _ => None,
            })
            .collect()
    }
}

/// What `c` received of `track`: (sequence number, timestamp, frame number, keyframe start),
/// from `from` on.
fn received(sim: &Sim, c: ClientId, track: &str, from: Instant) -> Vec<(u16, u32, u32, bool)> {
    sim.client(c)
        .rtp_of(track)
        .filter(|r| r.at >= from)
        .filter_map(|r| {
            // Probes' padding carries no frame.
            Some((
                r.header.sequence_number,
                r.header.timestamp,
                frame_number(&r.payload)?,
                is_keyframe(&r.payload),
            ))
        })
        .collect()
}

fn is_low(frame: u32) -> bool {
    frame >= LOW_FRAMES
}

/// Sequence numbers go on by one and timestamps never go back, across layer switches.
fn check_continuous(who: &str, got: &[(u16, u32, u32, bool)]) {
    for w in got.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0.wrapping_add(1),
            "{who}: sequence numbers go on by one: {w:?}"
        );
        let dt = w[1].1.wrapping_sub(w[0].1);
        assert!(dt < 0x8000_0000, "{who}: the timestamp went back: {w:?}");
        if w[0].2 != w[1].2 {
            assert!(dt > 0, "{who}: a new frame has a new timestamp: {w:?}");
        }
    }
}

/// Every switch between the camera's stream and the low layer happens at a keyframe of the
/// layer switched to; returns how many switches there were.
fn check_switches(who: &str, got: &[(u16, u32, u32, bool)]) -> usize {
    let mut switches = 0;
    for w in got.windows(2) {
        if is_low(w[0].2) != is_low(w[1].2) {
            switches += 1;
            assert!(w[1].3, "{who}: switched without a keyframe: {w:?}");
        }
    }
    switches
}

fn connect(sim: &mut Sim, bridge: &mut Bridge, c: ClientId, track: &str) {
    for _ in 0..300 {
        if sim.connected(c) && sim.client(c).rtp_of(track).next().is_some() {
            return;
        }
        bridge.step(sim);
    }
    panic!("{} did not start receiving the camera", sim.client(c).id);
}

#[test]
fn a_tile_asking_for_layer_0_gets_the_low_layer_until_it_asks_for_more() {
    let mut sim = Sim::new(61);
    let (mut bridge, track) = Bridge::new(&mut sim, "cam", 3);
    bridge.run(&mut sim, FRAME * 5);
    let bob = sim.join("bob");
    connect(&mut sim, &mut bridge, bob, &track);
    bridge.run(&mut sim, Duration::from_secs(1));
    assert!(bridge.asked(&sim).is_empty(), "nobody needs it yet");

    // Bob's tile shrinks to a thumbnail: the bridge is asked at the next allocation.
    let small = sim.now;
    sim.set_layer(bob, &track, Some(0));
    bridge.run(&mut sim, Duration::from_millis(300));
    let asked = bridge.asked(&sim);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].1);
    assert!(asked[0].0 - small <= ADAPT_INTERVAL);

    // The low layer's first keyframe moves bob onto it.
    bridge.run(&mut sim, Duration::from_secs(2));
    let got = received(&sim, bob, &track, small);
    assert!(got.iter().any(|r| is_low(r.2)), "bob gets the low layer");
    assert!(
        is_low(got.last().unwrap().2),
        "and the camera's stream no more: {:?}",
        got.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    let view = sim.subscriptions();
    let bob_view = view.iter().find(|v| v.id == "bob").unwrap();
    let video = &bob_view.tracks[0];
    assert_eq!(
        (video.layer, video.rid.as_deref()),
        (Some(0), Some("low")),
        "{video:?}"
    );

    // Back to a large tile: the camera's stream from its next keyframe, and after the hold
    // the bridge is told to stop.
    let large = sim.now;
    sim.set_layer(bob, &track, Some(2));
    bridge.run(&mut sim, HOLD + Duration::from_secs(1));
    let asked = bridge.asked(&sim);
    assert_eq!(asked.len(), 2, "asked once and stopped once: {asked:?}");
    assert!(!asked[1].1);
    let held = asked[1].0 - large;
    // The last need was seen at the allocation before the tile grew.
    assert!(
        held > HOLD - ADAPT_INTERVAL && held <= HOLD + ADAPT_INTERVAL,
        "stopped {held:?} after the tile grew (hold {HOLD:?})"
    );
    bridge.run(&mut sim, Duration::from_secs(1));
    let got = received(&sim, bob, &track, small);
    assert_eq!(check_switches("bob", &got), 2, "down and up again");
    check_continuous("bob", &got);
    let back = got.iter().rposition(|r| is_low(r.2)).unwrap() + 1;
    assert!(
        got[back..].iter().all(|r| !is_low(r.2)) && got.len() - back > 60,
        "the camera's stream after the switch back"
    );
    let view = sim.subscriptions();
    let bob_view = view.iter().find(|v| v.id == "bob").unwrap();
    assert_eq!(bob_view.tracks[0].layer, None, "one stream again");
}

#[test]
fn low_layer_packets_nobody_asked_for_are_dropped() {
    let mut sim = Sim::new(62);
    let (mut bridge, track) = Bridge::new(&mut sim, "cam", 3);
    bridge.run(&mut sim, FRAME * 5);
    let bob = sim.join("bob");
    connect(&mut sim, &mut bridge, bob, &track);
    let from = sim.now;
    for i in 0..30 {
        sim.camera_low_video(bridge.cam, bridge.track, i == 0, 2);
        bridge.step(&mut sim);
    }
    sim.set_layer(bob, &track, Some(0));
    // Not asked for yet when the first of these arrive: only what comes after counts.
    bridge.run(&mut sim, Duration::from_secs(1));
    let got = received(&sim, bob, &track, from);
    check_continuous("bob", &got);
    let first_low = got.iter().position(|r| is_low(r.2)).unwrap();
    assert!(got[first_low].3, "starts at the low layer's keyframe");
    assert!(
        got[first_low].2 >= LOW_FRAMES + 30,
        "the unasked frames were not sent: {:?}",
        got[first_low]
    );
}

#[test]
fn a_squeezed_subscriber_gets_the_low_layer_and_the_others_the_camera() {
    let mut sim = Sim::new(63);
    // About 900 kbit/s of camera (45 packets of ~80 bytes a frame).
    let (mut bridge, track) = Bridge::new(&mut sim, "cam", 45);
    bridge.run(&mut sim, FRAME * 5);
    let bob = sim.join("bob");
    let carol = sim.join("carol");
    connect(&mut sim, &mut bridge, bob, &track);
    connect(&mut sim, &mut bridge, carol, &track);
    bridge.run(&mut sim, Duration::from_secs(1));
    assert!(bridge.asked(&sim).is_empty(), "both take the camera");

    let squeeze = sim.now;
    sim.set_link(
        carol,
        Dir::Down,
        LinkConfig {
            rate: Some((300_000.0, Duration::from_millis(250))),
            ..Default::default()
        },
    );
    bridge.run(&mut sim, Duration::from_secs(10));
    let asked = bridge.asked(&sim);
    assert_eq!(asked.len(), 1, "asked once, never stopped: {asked:?}");
    assert!(asked[0].1);
    println!("asked {:?} after the squeeze", asked[0].0 - squeeze);

    let carol_got = received(&sim, carol, &track, squeeze);
    let moved = carol_got
        .iter()
        .position(|r| is_low(r.2))
        .expect("carol gets the low layer");
    assert!(
        bridge.low_keyframes.contains(&carol_got[moved].2),
        "from one of its keyframes: {:?}",
        carol_got[moved]
    );
    let last_second = sim.now - Duration::from_secs(1);
    let recent = received(&sim, carol, &track, last_second);
    assert!(
        !recent.is_empty() && recent.iter().all(|r| is_low(r.2)),
        "carol stays on the low layer: {:?}",
        recent.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    let bob_got = received(&sim, bob, &track, squeeze);
    assert!(
        bob_got.iter().all(|r| !is_low(r.2)),
        "bob's estimate has room: he keeps the camera"
    );
    check_continuous("bob", &bob_got);
    assert!(
        sim.link_stats(bob, Dir::Down).lost == 0,
        "bob loses nothing"
    );
}

#[test]
fn a_subscriber_moving_to_the_low_layer_has_a_keyframe_made_for_it() {
    let mut sim = Sim::new(64);
    let (mut bridge, track) = Bridge::new(&mut sim, "cam", 3);
    bridge.run(&mut sim, FRAME * 5);
    let bob = sim.join("bob");
    connect(&mut sim, &mut bridge, bob, &track);
    sim.set_layer(bob, &track, Some(0));
    bridge.run(&mut sim, Duration::from_secs(2));
    assert!(
        received(&sim, bob, &track, sim.now - FRAME * 3)
            .iter()
            .all(|r| is_low(r.2)),
        "bob is on the low layer"
    );

    // Carol comes, on the camera's stream first, then shrinks her tile: the transcoder is
    // asked for a keyframe (the low layer has none otherwise), and she moves at it.
    let carol = sim.join("carol");
    connect(&mut sim, &mut bridge, carol, &track);
    bridge.run(&mut sim, Duration::from_secs(1));
    let asked_before = bridge.keyframes_asked(&sim).len();
    let keyframes_before = bridge.low_keyframes.len();
    let small = sim.now;
    sim.set_layer(carol, &track, Some(0));
    bridge.run(&mut sim, Duration::from_secs(1));
    let asked = bridge.keyframes_asked(&sim);
    assert!(
        asked.len() > asked_before && asked[asked_before] - small < FRAME,
        "a keyframe is asked for at once: {asked:?}"
    );
    assert_eq!(bridge.low_keyframes.len(), keyframes_before + 1);
    let carol_got = received(&sim, carol, &track, small);
    let moved = carol_got.iter().position(|r| is_low(r.2)).unwrap();
    assert_eq!(
        carol_got[moved].2,
        *bridge.low_keyframes.last().unwrap(),
        "at that keyframe"
    );
    check_continuous("carol", &carol_got);
    let bob_got = received(&sim, bob, &track, small - FRAME * 3);
    check_continuous("bob", &bob_got);
    assert!(bob_got.iter().all(|r| is_low(r.2)), "bob stays where he is");
}

#[test]
fn a_low_layer_that_stops_is_taken_out_and_its_subscribers_get_the_camera() {
    let mut sim = Sim::new(65);
    let (mut bridge, track) = Bridge::new(&mut sim, "cam", 3);
    bridge.run(&mut sim, FRAME * 5);
    let bob = sim.join("bob");
    connect(&mut sim, &mut bridge, bob, &track);
    sim.set_layer(bob, &track, Some(0));
    bridge.run(&mut sim, Duration::from_secs(2));
    let crash = sim.now;
    bridge.crashed = true;
    bridge.run(&mut sim, STALE + Duration::from_secs(1));
    let got = received(&sim, bob, &track, crash - FRAME * 3);
    let back = got
        .iter()
        .position(|r| !is_low(r.2))
        .expect("bob gets the camera again");
    assert!(got[back].3, "from a keyframe (its cached group)");
    let gap = sim
        .client(bob)
        .rtp_of(&track)
        .find(|r| r.header.sequence_number == got[back].0)
        .unwrap()
        .at
        - crash;
    assert!(
        gap >= STALE && gap <= STALE + Duration::from_millis(300),
        "after {gap:?}, the stale time {STALE:?}"
    );
    check_continuous("bob", &got);
    assert_eq!(
        bridge.asked(&sim).len(),
        1,
        "still asked for: a transcoder that comes back is taken"
    );
    bridge.crashed = false;
    bridge.keyframe_due = true;
    bridge.run(&mut sim, Duration::from_secs(1));
    let last = received(&sim, bob, &track, sim.now - FRAME * 3);
    assert!(last.iter().all(|r| is_low(r.2)), "and bob is on it again");
}
