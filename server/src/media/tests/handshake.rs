//! DTLS handshakes whose answers are lost: the engine's side must send its answer again
//! however often the peer repeats the flight it answers (see `media::dtls_repeat`).

use std::time::Duration;

use super::FRAME;
use crate::media::sim::{Dir, LinkConfig, LoseFirst, Sim};
use crate::protocol::MediaKind;

/// Content type, epoch and (for clear-text handshake records) message type of each whole
/// record in a DTLS datagram.
fn records(mut d: &[u8]) -> Vec<(u8, u16, Option<u8>)> {
    let mut out = Vec::new();
    if !matches!(d.first(), Some(20..=63)) {
        return out;
    }
    while d.len() >= 13 {
        let len = u16::from_be_bytes([d[11], d[12]]) as usize;
        let Some(body) = d.get(13..13 + len) else {
            break;
        };
        let epoch = u16::from_be_bytes([d[3], d[4]]);
        let typ = (d[0] == 22 && epoch == 0)
            .then(|| body.first().copied())
            .flatten();
        out.push((d[0], epoch, typ));
        d = &d[13 + len..];
    }
    out
}

/// The engine's last flight as a DTLS client: its key exchange and its encrypted Finished.
fn client_key_exchange_flight(d: &[u8]) -> bool {
    records(d).iter().any(|&(c, e, _)| c == 22 && e >= 1)
}

/// The engine's hello flight as a DTLS server.
fn server_hello_flight(d: &[u8]) -> bool {
    records(d).iter().any(|&(_, _, t)| t == Some(2))
}

/// `lose` datagrams from the engine to a client are lost the first `n` times; true if every
/// connection of the client connects within `limit` of simulated time.
fn connects_despite(seed: u64, lose: fn(&[u8]) -> bool, n: u32, limit: Duration) -> bool {
    let mut sim = Sim::new(seed);
    sim.answer_as_dtls_client(true);
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    for c in [alice, bob] {
        sim.set_link(
            c,
            Dir::Down,
            LinkConfig {
                delay: Duration::from_millis(40),
                lose_first: Some(LoseFirst { matches: lose, n }),
                ..Default::default()
            },
        );
        sim.set_link(
            c,
            Dir::Up,
            LinkConfig {
                delay: Duration::from_millis(40),
                ..Default::default()
            },
        );
    }
    sim.publish(alice, &[MediaKind::Video]);
    // Alice's video makes her track known, and so bob's subscribe connection.
    let mut connected = false;
    while !connected && sim.elapsed() < limit {
        if sim.connected(alice) {
            sim.encode_video(alice, 0, 1);
        }
        sim.run_for(FRAME);
        connected = sim.connected(alice) && sim.connected(bob);
    }
    assert!(sim.failure().is_none(), "{:?}", sim.failure());
    connected
}

#[test]
fn a_client_handshake_whose_key_exchange_is_lost_twice_still_connects() {
    // The engine answers a browser's offer, so it is the DTLS client of the publish
    // connection. Its key exchange is lost, and so is its first retransmission; meanwhile the
    // browser repeats its hello flight. The third copy must go out.
    for seed in [1, 2, 3] {
        assert!(
            connects_despite(seed, client_key_exchange_flight, 2, Duration::from_secs(8)),
            "seed {seed}: stuck in the handshake"
        );
    }
}

#[test]
fn a_server_handshake_whose_hello_is_lost_twice_still_connects() {
    // The engine offers the subscribe connection and the client answers as DTLS client, as
    // Chromium does: the engine's ServerHello flight is lost twice while the client repeats
    // its ClientHello.
    for seed in [4, 5, 6] {
        assert!(
            connects_despite(seed, server_hello_flight, 2, Duration::from_secs(8)),
            "seed {seed}: stuck in the handshake"
        );
    }
}

#[test]
fn both_scripted_losses_happen() {
    // The two tests above lose what they mean to: without the losses the same meetings
    // connect within 1.5 s (about 0.9 s with these delays), with them not.
    let quick = |lose: fn(&[u8]) -> bool| connects_despite(7, lose, 0, Duration::from_millis(1500));
    assert!(quick(client_key_exchange_flight));
    assert!(quick(server_hello_flight));
    assert!(!connects_despite(
        7,
        client_key_exchange_flight,
        2,
        Duration::from_millis(1500)
    ));
    assert!(!connects_despite(
        7,
        server_hello_flight,
        2,
        Duration::from_millis(1500)
    ));
}
