//! TURN from clients (RFC 8656): what the built-in relay's core and its stream framer make of
//! arbitrary client bytes.
//!
//! The input is records `[op, len, bytes…]`:
//! - `0`: bytes on a TCP stream from the client, split into messages by `turn::framing::Framer`
//!   (a stream that is not TURN ends the client, as the shell closes it);
//! - `1`: one UDP datagram from the client, as it is;
//! - `2`: the bytes as a STUN message signed by the harness with valid credentials (USERNAME,
//!   REALM, a fresh NONCE, MESSAGE-INTEGRITY), so requests get past authentication;
//! - `3`: a datagram from the media port to the latest relay; `4`: from anywhere else;
//! - `5`: time passes (`len` seconds).
//!
//! The harness opens relay sockets when asked (`Output::Bind`). Checks: data leaves relays only
//! for the allowed peer; only relays that were opened are released, each once; allocations stay
//! within the quota.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confab::turn::credentials::TurnSecret;
use confab::turn::framing::Framer;
use confab::turn::server::{Client, ClientTransport, Output, TurnConfig, TurnServer};
use libfuzzer_sys::fuzz_target;
use rtc::stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{Message, Setter};
use rtc::stun::textattrs::TextAttribute;

const UNIX: u64 = 1_800_000_000;
const MAX: usize = 4;

fuzz_target!(|data: &[u8]| {
    let crypto = rtc::crypto::default_provider().expect("a crypto provider");
    let secret = TurnSecret::new(b"fuzz".to_vec(), crypto.clone());
    let media: SocketAddr = "192.0.2.10:7882".parse().unwrap();
    let mut server = TurnServer::new(
        TurnConfig {
            realm: "confab".into(),
            secret: secret.clone(),
            peers: vec![media],
            max_allocations: MAX,
            max_per_user: 2,
        },
        [1; 32],
    );
    let tcp = Client {
        transport: ClientTransport::Tcp,
        remote: "198.51.100.7:40000".parse().unwrap(),
        local: "192.0.2.10:3478".parse().unwrap(),
    };
    let udp = Client {
        transport: ClientTransport::Udp,
        ..tcp
    };
    let creds = secret.issue("fuzzer", UNIX);
    let mut now = Instant::now();
    let mut unix = UNIX;
    let mut framer = Framer::default();
    let mut tcp_open = true;
    let mut next_port = 50_000u16;
    let mut open: HashSet<SocketAddr> = HashSet::new();
    let mut latest: Option<SocketAddr> = None;
    // The nonce the server hands out: learned from its 401s.
    let mut nonce = String::new();

    let mut rest = data;
    while rest.len() >= 2 {
        let (op, len) = (rest[0] % 6, rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match op {
            0 if tcp_open => {
                framer.extend(body);
                loop {
                    match framer.next_message() {
                        Ok(Some(m)) => server.handle_client(now, unix, tcp, &m),
                        Ok(None) => break,
                        Err(_) => {
                            tcp_open = false;
                            server.client_closed(tcp);
                            break;
                        }
                    }
                }
            }
            1 => server.handle_client(now, unix, udp, body),
            2 => {
                let mut m = Message::new();
                if m.unmarshal_binary(body).is_err() {
                    continue;
                }
                // The request as a signed one, whatever it was.
                m.attributes.0.retain(|a| {
                    ![ATTR_USERNAME, ATTR_REALM, ATTR_NONCE].contains(&a.typ)
                        && a.typ.0 != 0x0008
                        && a.typ.0 != 0x8028
                });
                let mut signed = Message::new();
                signed.typ = m.typ;
                signed.transaction_id = m.transaction_id;
                signed.write_header();
                for a in &m.attributes.0 {
                    signed.add(a.typ, &a.value);
                }
                let texts = [
                    TextAttribute::new(ATTR_USERNAME, creds.username.clone()),
                    TextAttribute::new(ATTR_REALM, "confab".into()),
                    TextAttribute::new(ATTR_NONCE, nonce.clone()),
                ];
                if texts.iter().any(|t| t.add_to(&mut signed).is_err()) {
                    continue;
                }
                let Ok(mi) = MessageIntegrity::new_long_term_integrity_with_provider(
                    creds.username.clone(),
                    "confab".into(),
                    creds.password.clone(),
                    crypto.crypto(),
                ) else {
                    continue;
                };
                if mi.add_to(&mut signed).is_err() {
                    continue;
                }
                server.handle_client(now, unix, udp, &signed.raw);
            }
            3 => {
                if let Some(r) = latest {
                    server.handle_peer(now, r, media, body);
                }
            }
            4 => {
                if let Some(r) = latest {
                    server.handle_peer(now, r, "10.0.0.1:22".parse().unwrap(), body);
                }
            }
            5 => {
                now += Duration::from_secs(len as u64);
                unix += len as u64;
                server.handle_timeout(now);
            }
            _ => {}
        }
        while let Some(out) = server.poll_output() {
            match out {
                Output::ToClient(_, m) => {
                    let mut r = Message::new();
                    if r.unmarshal_binary(&m).is_ok() {
                        if let Ok(n) = TextAttribute::get_from_as(&r, ATTR_NONCE) {
                            nonce = n.text;
                        }
                    }
                }
                Output::ToPeer { relay, peer, .. } => {
                    assert_eq!(peer, media, "relayed to a peer that is not the media port");
                    assert!(open.contains(&relay), "sent from a relay that is not open");
                }
                Output::Bind(c) => {
                    next_port = next_port.wrapping_add(1);
                    let relay = SocketAddr::from(([192, 0, 2, 10], next_port));
                    assert!(open.insert(relay));
                    latest = Some(relay);
                    server.bound(now, c, Ok(relay));
                }
                Output::Release(r) => {
                    assert!(open.remove(&r), "released a relay that was not open");
                }
            }
        }
        assert!(server.allocation_count() <= MAX);
    }
});
