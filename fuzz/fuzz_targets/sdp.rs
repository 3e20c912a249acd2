//! SDP from clients: an RTSP ANNOUNCE body, a browser's publish offer, and a browser's answer
//! to a subscribe offer. The input is split at its first NUL byte: before it is the ANNOUNCE
//! body and the publish offer, after it the subscribe answer.
#![no_main]

use confab::media::api::MediaEvent;
use confab::rtsp::sdp::parse_announce;
use confab_fuzz::client::{sim, Offered};
use libfuzzer_sys::fuzz_target;

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

    // A publish offer.
    let mut sim = sim();
    let p = sim.join("p");
    sim.publish_sdp(p, first.to_owned());
    for (_, ev) in &sim.client(p).events {
        if let MediaEvent::Answer { sdp } = ev {
            assert!(sdp.starts_with("v=0"), "{sdp}");
        }
    }
    sim.leave(p);
    assert_eq!(sim.engine().peer_count(), 0);

    // A subscribe answer.
    let Ok(second) = std::str::from_utf8(second) else {
        return;
    };
    let mut offered = Offered::new();
    let (browser, revision) = (offered.browser, offered.revision);
    offered
        .sim
        .send_subscribe_answer(browser, second.to_owned(), revision);
});
