//! SDP from clients: an RTSP ANNOUNCE body, a browser's publish offer, and a browser's answer
//! to a subscribe offer. The input is split at its first NUL byte: before it is the ANNOUNCE
//! body and the publish offer, after it the subscribe answer.
#![no_main]

use confab::media::api::{Command, MediaEvent, ParticipantKey};
use confab::names::ParticipantId;
use confab::rtsp::sdp::parse_announce;
use confab_fuzz::client::{drain, engine, room, Offered};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let (first, second) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(tracks) = parse_announce(first) {
        for t in &tracks {
            assert!(t.clock_rate > 0, "{t:?}");
            assert!(t.channels > 0, "{t:?}");
        }
    }
    let Ok(first) = std::str::from_utf8(first) else {
        return;
    };
    let now = Instant::now();

    // A publish offer.
    let mut engine = engine();
    let key = ParticipantKey(1);
    engine.handle_command(
        now,
        Command::Join {
            key,
            room: room(),
            id: ParticipantId::parse("p").unwrap(),
        },
    );
    engine.handle_command(
        now,
        Command::Publish {
            key,
            sdp: first.to_owned(),
        },
    );
    for (_, ev) in drain(&mut engine).1 {
        if let MediaEvent::Answer { sdp } = ev {
            assert!(sdp.starts_with("v=0"), "{sdp}");
        }
    }
    engine.handle_command(now, Command::Leave { key });
    assert_eq!(engine.peer_count(), 0);

    // A subscribe answer.
    let Ok(second) = std::str::from_utf8(second) else {
        return;
    };
    let mut offered = Offered::new();
    let revision = offered.revision;
    offered.engine.handle_command(
        offered.now,
        Command::SubscribeAnswer {
            key: ParticipantKey(1),
            sdp: second.to_owned(),
            revision,
        },
    );
    drain(&mut offered.engine);
});
