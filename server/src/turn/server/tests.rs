//! The TURN core driven by hand-built client messages, as a browser's TURN client sends them
//! (Chromium: Allocate without credentials, then with them after the 401; CreatePermission
//! and ChannelBind for each remote candidate; Send indications until a channel is bound).

use super::*;
use rtc::stun::integrity::MessageIntegrity;
use rtc::turn::proto::chandata::ChannelData;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::reqtrans::RequestedTransport;

const UNIX: u64 = 1_800_000_000;
const REALM: &str = "confab";

fn media() -> SocketAddr {
    "192.0.2.10:7882".parse().unwrap()
}

fn client(transport: ClientTransport) -> Client {
    Client {
        transport,
        remote: "198.51.100.7:40000".parse().unwrap(),
        local: "192.0.2.10:3478".parse().unwrap(),
    }
}

struct Harness {
    server: TurnServer,
    secret: TurnSecret,
    now: Instant,
}

impl Harness {
    fn new() -> Harness {
        let secret = TurnSecret::new(b"s3cret".to_vec(), rtc::crypto::default_provider().unwrap());
        let server = TurnServer::new(
            TurnConfig {
                realm: REALM.into(),
                secret: secret.clone(),
                peers: vec![media()],
                max_allocations: 3,
                max_per_user: 2,
            },
            [9; 32],
        );
        Harness {
            server,
            secret,
            now: Instant::now(),
        }
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    /// Sends `m` and returns the one message the client gets back.
    fn ask(&mut self, c: Client, m: &Message) -> Message {
        self.server.handle_client(self.now, UNIX, c, &m.raw);
        let out = self.outputs();
        match &out[..] {
            [Output::ToClient(to, bytes)] => {
                assert_eq!(*to, c);
                let mut r = Message::new();
                r.unmarshal_binary(bytes).expect("a STUN message");
                assert_eq!(r.transaction_id, m.transaction_id);
                r
            }
            other => panic!("expected one answer, got {other:?}"),
        }
    }
}

fn error_code(m: &Message) -> u16 {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).expect("an ERROR-CODE");
    e.code.0
}

fn nonce_of(m: &Message) -> String {
    TextAttribute::get_from_as(m, ATTR_NONCE).unwrap().text
}

/// A request with long-term credentials (or none if `auth` is None).
fn request(
    method: Method,
    attrs: Vec<Box<dyn Setter>>,
    auth: Option<(&str, &str, &str)>,
) -> Message {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.extend(attrs);
    let mut m = Message::new();
    m.build(&setters).unwrap();
    if let Some((user, pass, nonce)) = auth {
        TextAttribute::new(ATTR_USERNAME, user.into())
            .add_to(&mut m)
            .unwrap();
        TextAttribute::new(ATTR_REALM, REALM.into())
            .add_to(&mut m)
            .unwrap();
        TextAttribute::new(ATTR_NONCE, nonce.into())
            .add_to(&mut m)
            .unwrap();
        let crypto = rtc::crypto::default_provider().unwrap();
        MessageIntegrity::new_long_term_integrity_with_provider(
            user.into(),
            REALM.into(),
            pass.into(),
            crypto.crypto(),
        )
        .unwrap()
        .add_to(&mut m)
        .unwrap();
    }
    m
}

fn udp_transport() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: rtc::turn::proto::PROTO_UDP,
    })
}

fn peer(a: SocketAddr) -> Box<dyn Setter> {
    Box::new(PeerAddress {
        ip: a.ip(),
        port: a.port(),
    })
}

/// Allocates for `c` as a browser does; returns (username, password, nonce, relay).
fn allocate(h: &mut Harness, c: Client, who: &str) -> (String, String, String, SocketAddr) {
    let first = h.ask(c, &request(METHOD_ALLOCATE, vec![udp_transport()], None));
    assert_eq!(error_code(&first), 401);
    let nonce = nonce_of(&first);
    let creds = h.secret.issue(who, UNIX);
    let req = request(
        METHOD_ALLOCATE,
        vec![udp_transport()],
        Some((&creds.username, &creds.password, &nonce)),
    );
    h.server.handle_client(h.now, UNIX, c, &req.raw);
    let out = h.outputs();
    assert!(matches!(out[..], [Output::Bind(b)] if b == c), "{out:?}");
    let relay: SocketAddr = "192.0.2.10:50000".parse().unwrap();
    h.server.bound(h.now, c, Ok(relay));
    let out = h.outputs();
    let [Output::ToClient(_, bytes)] = &out[..] else {
        panic!("{out:?}")
    };
    let mut r = Message::new();
    r.unmarshal_binary(bytes).unwrap();
    assert_eq!(
        r.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE)
    );
    assert_eq!(r.transaction_id, req.transaction_id);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&r).unwrap();
    assert_eq!(SocketAddr::new(relayed.ip, relayed.port), relay);
    // The response is signed with the same key.
    let crypto = rtc::crypto::default_provider().unwrap();
    let key = MessageIntegrity::long_term_integrity_key(
        creds.username.clone(),
        REALM.into(),
        creds.password.clone(),
        crypto.crypto(),
    )
    .unwrap();
    MessageIntegrity::check(&mut r, &key, crypto.crypto()).expect("signed response");
    (creds.username, creds.password, nonce, relay)
}

#[test]
fn allocate_permission_send_and_channel_both_ways() {
    let mut h = Harness::new();
    let c = client(ClientTransport::Tls);
    let (user, pass, nonce, relay) = allocate(&mut h, c, "alice");
    let auth = Some((user.as_str(), pass.as_str(), nonce.as_str()));

    // Data for a peer without a permission is dropped.
    let mut send = Message::new();
    send.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
        peer(media()),
        Box::new(rtc::turn::proto::data::Data(b"check".to_vec())),
    ])
    .unwrap();
    h.server.handle_client(h.now, UNIX, c, &send.raw);
    assert!(h.outputs().is_empty());

    // The media port: permitted. Anything else: 403.
    let ok = h.ask(
        c,
        &request(METHOD_CREATE_PERMISSION, vec![peer(media())], auth),
    );
    assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE);
    for other in ["10.0.0.1:22", "127.0.0.1:7882"] {
        let r = h.ask(
            c,
            &request(
                METHOD_CREATE_PERMISSION,
                vec![peer(other.parse().unwrap())],
                auth,
            ),
        );
        assert_eq!(error_code(&r), 403, "{other}");
    }

    h.server.handle_client(h.now, UNIX, c, &send.raw);
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::ToPeer { relay: r, peer: p, data }] if *r == relay && *p == media() && &data[..] == b"check"),
        "{out:?}"
    );
    // Another port of the permitted address: not relayed.
    let mut sneaky = Message::new();
    sneaky
        .build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            peer("192.0.2.10:22".parse().unwrap()),
            Box::new(rtc::turn::proto::data::Data(b"ssh".to_vec())),
        ])
        .unwrap();
    h.server.handle_client(h.now, UNIX, c, &sneaky.raw);
    assert!(h.outputs().is_empty());

    // From the peer: a Data indication.
    h.server.handle_peer(h.now, relay, media(), b"answer");
    let out = h.outputs();
    let [Output::ToClient(_, bytes)] = &out[..] else {
        panic!("{out:?}")
    };
    let mut d = Message::new();
    d.unmarshal_binary(bytes).unwrap();
    assert_eq!(d.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(d.get(ATTR_DATA).unwrap(), b"answer");
    // From someone without a permission: nothing.
    h.server
        .handle_peer(h.now, relay, "203.0.113.9:1".parse().unwrap(), b"spam");
    assert!(h.outputs().is_empty());

    // A channel: ChannelData both ways.
    let bind = request(
        METHOD_CHANNEL_BIND,
        vec![
            Box::new(rtc::turn::proto::channum::ChannelNumber(0x4001)),
            peer(media()),
        ],
        auth,
    );
    assert_eq!(h.ask(c, &bind).typ.class, CLASS_SUCCESS_RESPONSE);
    let clash = request(
        METHOD_CHANNEL_BIND,
        vec![
            Box::new(rtc::turn::proto::channum::ChannelNumber(0x4002)),
            peer(media()),
        ],
        auth,
    );
    assert_eq!(error_code(&h.ask(c, &clash)), 400, "one channel per peer");
    let mut cd = ChannelData {
        data: b"rtp".to_vec(),
        number: rtc::turn::proto::channum::ChannelNumber(0x4001),
        raw: vec![],
    };
    cd.encode();
    h.server.handle_client(h.now, UNIX, c, &cd.raw[..4 + 3]);
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::ToPeer { data, .. }] if &data[..] == b"rtp"),
        "{out:?}"
    );
    h.server.handle_peer(h.now, relay, media(), b"srtp");
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::ToClient(_, b)] if b[..] == [0x40, 0x01, 0, 4, b's', b'r', b't', b'p']),
        "{out:?}"
    );

    // Refresh with lifetime 0 ends it and releases the socket.
    let end = request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::ZERO))],
        auth,
    );
    h.server.handle_client(h.now, UNIX, c, &end.raw);
    let out = h.outputs();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Release(r) if *r == relay)),
        "{out:?}"
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn credentials_nonces_and_quotas() {
    let mut h = Harness::new();
    let c = client(ClientTransport::Udp);
    let first = h.ask(c, &request(METHOD_ALLOCATE, vec![udp_transport()], None));
    let nonce = nonce_of(&first);
    let creds = h.secret.issue("bob", UNIX);
    // Wrong password: 401.
    let wrong = request(
        METHOD_ALLOCATE,
        vec![udp_transport()],
        Some((&creds.username, "guess", &nonce)),
    );
    assert_eq!(error_code(&h.ask(c, &wrong)), 401);
    // Expired credentials: 401.
    let old = h
        .secret
        .issue("bob", UNIX - 2 * super::super::credentials::LIFETIME_SECS);
    let expired = request(
        METHOD_ALLOCATE,
        vec![udp_transport()],
        Some((&old.username, &old.password, &nonce)),
    );
    assert_eq!(error_code(&h.ask(c, &expired)), 401);
    // A forged or stale nonce: 438 with a fresh one.
    for bad in ["1-00", "zz", &format!("{:x}-0000000000000000", UNIX)] {
        let r = h.ask(
            c,
            &request(
                METHOD_ALLOCATE,
                vec![udp_transport()],
                Some((&creds.username, &creds.password, bad)),
            ),
        );
        assert_eq!(error_code(&r), 438, "{bad}");
        assert_ne!(nonce_of(&r), bad);
    }
    // TCP allocations are not offered.
    let tcp = request(
        METHOD_ALLOCATE,
        vec![Box::new(RequestedTransport {
            protocol: rtc::turn::proto::PROTO_TCP,
        })],
        Some((&creds.username, &creds.password, &nonce)),
    );
    assert_eq!(error_code(&h.ask(c, &tcp)), 442);
    // Two allocations per user, three in all.
    let mut clients = Vec::new();
    for port in 1..=2u16 {
        let mut c = client(ClientTransport::Udp);
        c.remote.set_port(port);
        allocate(&mut h, c, "bob");
        clients.push(c);
    }
    let mut third = client(ClientTransport::Udp);
    third.remote.set_port(3);
    let r = h.ask(
        third,
        &request(
            METHOD_ALLOCATE,
            vec![udp_transport()],
            Some((&creds.username, &creds.password, &nonce)),
        ),
    );
    assert_eq!(error_code(&r), 486);
    allocate(&mut h, third, "carol");
    let mut fourth = client(ClientTransport::Udp);
    fourth.remote.set_port(4);
    let dave = h.secret.issue("dave", UNIX);
    let r = h.ask(
        fourth,
        &request(
            METHOD_ALLOCATE,
            vec![udp_transport()],
            Some((&dave.username, &dave.password, &nonce)),
        ),
    );
    assert_eq!(error_code(&r), 486);
    // A binding request is answered without credentials.
    let b = h.ask(c, &request(METHOD_BINDING, vec![], None));
    assert_eq!(b.typ, BINDING_SUCCESS);
}

#[test]
fn allocations_end_with_their_connection_or_their_lifetime() {
    let mut h = Harness::new();
    let tcp = client(ClientTransport::Tcp);
    let (_, _, _, relay) = allocate(&mut h, tcp, "erin");
    h.server.client_closed(tcp);
    assert!(matches!(h.outputs()[..], [Output::Release(r)] if r == relay));
    let udp = client(ClientTransport::Udp);
    let (_, _, _, relay) = allocate(&mut h, udp, "erin");
    h.now += DEFAULT_LIFETIME + Duration::from_secs(2);
    h.server.handle_timeout(h.now);
    assert!(matches!(h.outputs()[..], [Output::Release(r)] if r == relay));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_timeout(), None, "nothing left to sweep");
}

#[test]
fn garbage_is_ignored() {
    let mut h = Harness::new();
    let c = client(ClientTransport::Udp);
    for g in [
        &[][..],
        &[0x40][..],
        &[0x40, 0x00, 0xff, 0xff, 1][..],
        &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..],
        &[
            0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ][..],
    ] {
        h.server.handle_client(h.now, UNIX, c, g);
    }
    h.server
        .handle_peer(h.now, "192.0.2.10:1".parse().unwrap(), media(), b"x");
    assert!(h.outputs().is_empty());
}
