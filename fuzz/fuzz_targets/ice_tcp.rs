//! ICE-TCP streams from clients (RFC 6544 / RFC 4571): arbitrary bytes as what one TCP
//! connection to the media port carries.
//!
//! The first byte seeds how the stream is cut into reads; the rest is the stream. It is framed
//! with the shell's codec (`media::tcp::codec`) whole and in pieces, and every frame goes to an
//! engine that has one browser with a subscribe connection, exactly as the shell hands them
//! over: on one TCP path, stopping at the first frame the engine refuses when nothing was taken
//! before (the shell closes such a connection). The 16 bytes `@@@@@@@@@@@@@@@@` anywhere in the
//! input stand for that connection's ufrag, so seeds with binding requests reach a live
//! connection. The engine persists across inputs (building connections costs milliseconds);
//! each input is a new connection from a new port.
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use confab::media::api::{
    Command, EngineConfig, ExternalTrack, FiveTuple, MediaEvent, Output, ParticipantKey, Transport,
};
use confab::media::engine::Engine;
use confab::media::sim::{h264, ENGINE_ADDR, ROOM};
use confab::media::tcp::{codec, put_frame};
use confab::metrics::Metrics;
use confab::names::{ParticipantId, RoomName};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const PLACEHOLDER: &[u8; 16] = b"@@@@@@@@@@@@@@@@";

fn room() -> RoomName {
    RoomName::parse(ROOM).expect("a valid name")
}

struct State {
    engine: Engine,
    ufrag: Vec<u8>,
    now: Instant,
    port: u16,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn setup() -> State {
    let now = Instant::now();
    let addr: SocketAddr = ENGINE_ADDR;
    let config = EngineConfig {
        candidates: vec![addr],
        tcp_candidates: vec![addr],
        seed: 3,
    };
    let mut engine = Engine::new(config, std::sync::Arc::new(Metrics::default()));
    engine.handle_command(
        now,
        Command::Join {
            key: ParticipantKey(1),
            room: room(),
            id: ParticipantId::parse("browser").unwrap(),
        },
    );
    engine.handle_command(
        now,
        Command::ExternalJoin {
            key: ParticipantKey(2),
            room: room(),
            id: ParticipantId::parse("camera").unwrap(),
        },
    );
    engine.handle_command(
        now,
        Command::ExternalTracks {
            key: ParticipantKey(2),
            tracks: vec![ExternalTrack {
                public_id: "camera-v0".to_owned(),
                kind: confab::protocol::MediaKind::Video,
                codec: h264(),
            }],
        },
    );
    let mut ufrag = None;
    loop {
        match engine.poll_output() {
            Output::Event(_, MediaEvent::Offer { sdp, .. }) => {
                ufrag = sdp
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
                    .map(|u| u.as_bytes().to_vec());
            }
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    State {
        engine,
        ufrag: ufrag.expect("the subscribe offer names its ufrag"),
        now,
        port: 1024,
    }
}

/// Cut points from a seed (xorshift), for reads of 1 to 64 bytes.
fn cuts(mut seed: u32, len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    seed |= 1;
    while at < len {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        at += 1 + (seed % 64) as usize;
        out.push(at.min(len));
    }
    out
}

/// The frames of `stream` read in pieces ending at `cut`, and how many bytes they span (the
/// codec takes a frame's length off its buffer before the frame is complete, so what is left in
/// the buffer does not say).
fn frames_of(stream: &[u8], cut: &[usize]) -> (Vec<BytesMut>, usize) {
    let mut c = codec();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut from = 0;
    for &to in cut {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        // A 16-bit length never exceeds the codec's limit: decoding cannot fail.
        while let Some(f) = c.decode(&mut buf).expect("RFC 4571 frames always decode") {
            frames.push(f);
        }
    }
    let used = frames.iter().map(|f| 2 + f.len()).sum();
    (frames, used)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let state = guard.get_or_insert_with(setup);

    // The placeholder becomes this connection's ufrag.
    let mut stream = stream.to_vec();
    let mut i = 0;
    while i + 16 <= stream.len() {
        if &stream[i..i + 16] == PLACEHOLDER && state.ufrag.len() == 16 {
            stream[i..i + 16].copy_from_slice(&state.ufrag);
            i += 16;
        } else {
            i += 1;
        }
    }

    // Framing: the same frames however the stream is read, and they are the stream.
    let (whole, used) = frames_of(&stream, &[stream.len()]);
    let (pieces, used2) = frames_of(
        &stream,
        &cuts(u32::from(seed).wrapping_mul(2654435761), stream.len()),
    );
    assert_eq!(whole, pieces, "frames depend on how the stream was read");
    assert_eq!(used, used2);
    let mut again = BytesMut::new();
    for f in &whole {
        put_frame(&mut again, f);
    }
    assert_eq!(
        &again[..],
        &stream[..used],
        "frames written back differ from the stream"
    );

    // The engine, fed as the shell feeds it.
    state.port = state.port.checked_add(1).unwrap_or(1024);
    let local: SocketAddr = ENGINE_ADDR;
    let path = FiveTuple::tcp(local, SocketAddr::from(([127, 0, 0, 1], state.port)));
    let mut routed = false;
    for f in &whole {
        state.now += Duration::from_millis(1);
        let taken = state.engine.handle_input(state.now, path, f);
        routed |= taken;
        if !routed {
            break;
        }
        loop {
            match state.engine.poll_output() {
                Output::Transmit(t) => {
                    if t.transport == Transport::Tcp {
                        assert_eq!(
                            t.path(),
                            path,
                            "sent on a TCP connection that is not this one"
                        );
                    }
                }
                Output::Close(p) => assert_eq!(p, path, "closed a connection that is not this one"),
                Output::Timeout(at) => {
                    if at <= state.now {
                        state.engine.handle_timeout(state.now);
                        continue;
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    state
        .engine
        .handle_command(state.now, Command::PathClosed(path));
    // The browser's connection may have ended (a DTLS alert, say): start over next time.
    if state.engine.peer_count() == 0 {
        *guard = None;
    }
});
