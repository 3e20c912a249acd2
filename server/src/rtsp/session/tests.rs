//! The session driven on simulated time: hand-written requests for each rule, and the
//! transcripts of real clients in `testdata/rtsp/` replayed against it.

use std::collections::BTreeMap;

use super::*;
use crate::media::api::TrackKey;
use crate::rtsp::message::{Frame, Framer};

const PEER: &str = "127.0.0.1:40000";
const UDP: UdpPorts = UdpPorts {
    rtp: 6970,
    rtcp: 6971,
};
/// The session id `testdata/rtsp/record.py` hands out; replays put the real one in its place.
const RECORDER_SESSION: &str = "7d0f2c4b91e8a635";

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nt=0 0\r\n\
    m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n\
    a=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n\
    a=control:streamid=1\r\n";

/// What the fake bridge answers.
struct Bridge {
    authorize: Result<(), Refusal>,
    describe: Result<Vec<OutputTrack>, BridgeError>,
    publish: Result<(), BridgeError>,
    play: Result<(), BridgeError>,
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge {
            authorize: Ok(()),
            describe: Ok(output_tracks()),
            publish: Ok(()),
            play: Ok(()),
        }
    }
}

/// What `record.py` describes: H.264 as key 1, Opus as key 2.
fn output_tracks() -> Vec<OutputTrack> {
    vec![
        OutputTrack {
            key: TrackKey(1),
            kind: crate::protocol::MediaKind::Video,
            encoding: "H264".into(),
            payload_type: 96,
            clock_rate: 90000,
            channels: 1,
            fmtp: Some("packetization-mode=1;profile-level-id=42e01f".into()),
        },
        OutputTrack {
            key: TrackKey(2),
            kind: crate::protocol::MediaKind::Audio,
            encoding: "opus".into(),
            payload_type: 111,
            clock_rate: 48000,
            channels: 2,
            fmtp: None,
        },
    ]
}

struct Harness {
    session: Session,
    bridge: Bridge,
    now: Instant,
    cseq: u32,
    /// Everything but responses, in order.
    events: Vec<Output>,
    calls: Vec<Call>,
    /// Authorization calls, apart from the others.
    authorizations: Vec<Call>,
}

impl Harness {
    fn new() -> Self {
        Self::with(Some(UDP), SESSION_TIMEOUT)
    }

    fn with(udp: Option<UdpPorts>, timeout: Duration) -> Self {
        let now = Instant::now();
        let config = Config {
            timeout,
            peer: PEER.parse().unwrap(),
            udp,
        };
        Harness {
            session: Session::new(config, 1, now),
            bridge: Bridge::default(),
            now,
            cseq: 0,
            events: Vec::new(),
            calls: Vec::new(),
            authorizations: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Sends a request with the next CSeq and, once there is one, the session's id.
    fn send(&mut self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Response {
        self.send_body(method, uri, headers, "")
    }

    fn send_body(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        self.cseq += 1;
        let mut text = format!("{method} {uri} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        if let Some(id) = self.session.id() {
            if !headers.iter().any(|(n, _)| *n == "Session") {
                text.push_str(&format!("Session: {id}\r\n"));
            }
        }
        for (n, v) in headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        text.push_str(body);
        let responses = self.raw(text.as_bytes());
        assert_eq!(responses.len(), 1, "{responses:?}");
        let r = responses.into_iter().next().unwrap();
        assert_eq!(r.header("CSeq"), Some(self.cseq.to_string().as_str()));
        r
    }

    /// Feeds raw bytes; returns the responses.
    fn raw(&mut self, bytes: &[u8]) -> Vec<Response> {
        let mut framer = Framer::new();
        framer.feed(bytes);
        loop {
            match framer.poll() {
                Ok(Some(Frame::Request(req))) => self.session.handle_request(req, self.now),
                Ok(Some(Frame::Interleaved { channel, .. })) => {
                    let _ = self.session.handle_interleaved(channel, self.now);
                }
                Ok(None) => break,
                Err(e) => {
                    self.session.handle_frame_error(&e);
                    break;
                }
            }
        }
        self.drain()
    }

    /// Answers bridge calls; returns responses, keeps the rest in `events`.
    fn drain(&mut self) -> Vec<Response> {
        let mut responses = Vec::new();
        while let Some(o) = self.session.poll_output() {
            match o {
                Output::Response(r) => responses.push(r),
                Output::Call(call @ Call::Authorize { .. }) => {
                    self.authorizations.push(call);
                    let answer = Answer::Authorize(self.bridge.authorize.clone());
                    self.session.handle_bridge(answer, self.now);
                }
                Output::Call(call) => {
                    let answer = match &call {
                        Call::Authorize { .. } => unreachable!("matched above"),
                        Call::Describe { .. } => Answer::Describe(self.bridge.describe.clone()),
                        Call::Publish { .. } => Answer::Publish(self.bridge.publish.clone()),
                        Call::Play { .. } => Answer::Play(self.bridge.play.clone()),
                    };
                    self.calls.push(call);
                    self.session.handle_bridge(answer, self.now);
                }
                other => self.events.push(other),
            }
        }
        responses
    }

    fn take_events(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.events)
    }

    fn announce(&mut self) -> Response {
        self.send_body(
            "ANNOUNCE",
            "rtsp://h/room/cam",
            &[("Content-Type", "application/sdp")],
            SDP,
        )
    }

    /// ANNOUNCE, SETUP both tracks over TCP, RECORD.
    fn publish_tcp(&mut self) {
        assert_eq!(self.announce().status, 200);
        for (i, ch) in [(0, "0-1"), (1, "2-3")] {
            let transport = format!("RTP/AVP/TCP;unicast;interleaved={ch};mode=record");
            let r = self.send(
                "SETUP",
                &format!("rtsp://h/room/cam/streamid={i}"),
                &[("Transport", &transport)],
            );
            assert_eq!(r.status, 200, "{r:?}");
        }
        let r = self.send("RECORD", "rtsp://h/room/cam", &[]);
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// DESCRIBE, SETUP both tracks with `transports`, PLAY.
    fn play(&mut self, transports: [&str; 2]) -> Response {
        assert_eq!(self.send("DESCRIBE", "rtsp://h/room/cam", &[]).status, 200);
        for (key, t) in [(1, transports[0]), (2, transports[1])] {
            let r = self.send(
                "SETUP",
                &format!("rtsp://h/room/cam/trackID={key}"),
                &[("Transport", t)],
            );
            assert_eq!(r.status, 200, "{r:?}");
        }
        self.send("PLAY", "rtsp://h/room/cam/", &[])
    }

    fn rtp(&mut self, track: u64, seq: u16, ts: u32) {
        self.session.handle_playback(
            PlaybackEvent::Rtp {
                track: TrackKey(track),
                marker: false,
                seq,
                ts,
                payload: Bytes::from_static(b"payload"),
            },
            self.now,
        );
    }
}

fn rtp_header(p: &Packet) -> (u8, u16, u32, u32) {
    let Packet::Rtp { header: h, .. } = p else {
        panic!("{p:?}")
    };
    (
        h[1] & 0x7f,
        u16::from_be_bytes([h[2], h[3]]),
        u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    )
}

/// `url=…;seq=…;rtptime=…` entries of an RTP-Info header.
fn rtp_info(r: &Response) -> Vec<(String, u16, u32)> {
    r.header("RTP-Info")
        .unwrap_or_else(|| panic!("no RTP-Info in {r:?}"))
        .split(',')
        .map(|e| {
            let mut url = String::new();
            let (mut seq, mut ts) = (0, 0);
            for p in e.split(';') {
                match p.split_once('=') {
                    Some(("url", v)) => url = v.to_owned(),
                    Some(("seq", v)) => seq = v.parse().unwrap(),
                    Some(("rtptime", v)) => ts = v.parse().unwrap(),
                    _ => panic!("{e}"),
                }
            }
            (url, seq, ts)
        })
        .collect()
}

#[test]
fn options_lists_methods_and_echoes_cseq() {
    let mut h = Harness::new();
    let r = h.send("OPTIONS", "rtsp://h/room/cam", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Public"), Some(PUBLIC));
    assert_eq!(r.header("Session"), None);
}

#[test]
fn requests_refused_before_any_state() {
    // (request, status): each on a fresh connection.
    let cases: &[(&str, u16)] = &[
        ("OPTIONS * RTSP/1.0\r\n\r\n", 400),
        ("OPTIONS * RTSP/1.0\r\nCSeq: abc\r\n\r\n", 400),
        ("OPTIONS * RTSP/1.0\r\nCSeq: -1\r\n\r\n", 400),
        ("OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505),
        ("FLY rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n", 501),
        ("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nRequire: implicit-play\r\n\r\n", 551),
        (
            "SETUP rtsp://h/room/cam/streamid=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n",
            455,
        ),
        (
            "SETUP rtsp://h/room/cam/streamid=0 RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            400,
        ),
        ("RECORD rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n", 455),
        ("PLAY rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n", 455),
        ("PAUSE rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n", 455),
        ("TEARDOWN rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n", 200),
        (
            "TEARDOWN rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\nSession: nope\r\n\r\n",
            454,
        ),
        (
            "GET_PARAMETER rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\nSession: nope\r\n\r\n",
            454,
        ),
        ("GET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 200),
        (
            "GET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 9\r\n\r\nposition\n",
            451,
        ),
        ("SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 200),
        (
            "ANNOUNCE rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nv=0",
            415,
        ),
        (
            "ANNOUNCE rtsp://h/room/cam RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=1",
            400,
        ),
        (
            "ANNOUNCE rtsp://h/room/cam/streamid=0 RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\n\r\n",
            404,
        ),
        (
            "DESCRIBE rtsp://h/room/cam/trackID=1 RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            404,
        ),
    ];
    for (text, status) in cases {
        let mut h = Harness::new();
        let r = h.raw(text.as_bytes());
        assert_eq!(r.len(), 1, "{text}");
        assert_eq!(r[0].status, *status, "{text}\n{:?}", r[0]);
        // A valid CSeq is always echoed; an invalid one never.
        let want_cseq = if text.contains("CSeq: 1\r\n") {
            Some("1")
        } else {
            None
        };
        assert_eq!(r[0].header("CSeq"), want_cseq, "{text}");
        if *status >= 400 {
            assert!(!r[0].body.is_empty(), "{text}: errors explain themselves");
        }
        if *status == 501 {
            assert_eq!(r[0].header("Public"), Some(PUBLIC));
        }
    }
}

#[test]
fn bad_urls_and_names() {
    // (url, status, words the reason must contain)
    let cases: &[(&str, u16, &str)] = &[
        ("rtsp://h/", 400, "must be /{room}/{id}"),
        ("rtsp://h/room", 400, "must be /{room}/{id}"),
        ("rtsp://h/bad%20room/cam", 400, "room name"),
        ("rtsp://h/r%C3%A9/cam", 400, "room name"),
        (&const_format_long_room(), 400, "room name"),
        ("rtsp://h/room/b@d", 400, "participant id"),
        ("rtsp://h/room/..", 400, "must be /{room}/{id}"),
        ("http://h/room/cam", 400, "not an rtsp:// URL"),
        ("garbage", 400, "not valid"),
    ];
    for (url, status, words) in cases {
        let mut h = Harness::new();
        let r = h.send("DESCRIBE", url, &[]);
        assert_eq!(r.status, *status, "{url}");
        assert!(r.reason.contains(words), "{url}: {}", r.reason);
        assert!(h.calls.is_empty(), "{url}: no bridge call for a bad URL");
    }
}

fn const_format_long_room() -> String {
    format!("rtsp://h/{}/cam", "r".repeat(65))
}

#[test]
fn publish_over_tcp() {
    let mut h = Harness::new();
    h.publish_tcp();
    assert_eq!(
        h.calls,
        vec![Call::Publish {
            room: RoomName::parse("room").unwrap(),
            id: ParticipantId::parse("cam").unwrap(),
            tracks: sdp::parse_announce(SDP.as_bytes()).unwrap(),
        }]
    );
    let id = h.session.id().unwrap().to_owned();
    let events = h.take_events();
    assert!(
        matches!(&events[..], [Output::Started { mode: Mode::Publish, lower: Lower::Tcp, id: i, .. }] if *i == id),
        "{events:?}"
    );
    // Interleaved channels map to the published tracks.
    let routes: Vec<Option<Ingest>> = [0, 1, 2, 3, 4, 255]
        .into_iter()
        .map(|c| h.session.handle_interleaved(c, h.now))
        .collect();
    let ingest = |track, kind| Some(Ingest { track, kind });
    assert_eq!(
        routes,
        vec![
            ingest(0, PacketKind::Rtp),
            ingest(0, PacketKind::Rtcp),
            ingest(1, PacketKind::Rtp),
            ingest(1, PacketKind::Rtcp),
            None,
            None
        ]
    );
    // RECORD again (after a PAUSE) does not publish twice.
    assert_eq!(h.send("PAUSE", "rtsp://h/room/cam", &[]).status, 200);
    assert_eq!(h.send("RECORD", "rtsp://h/room/cam", &[]).status, 200);
    assert_eq!(h.calls.len(), 1);
    let r = h.send("TEARDOWN", "rtsp://h/room/cam", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Session"), None, "the session is over");
    assert_eq!(
        h.take_events(),
        vec![
            Output::Unpublish,
            Output::Ended {
                id: id.clone(),
                reason: EndReason::Teardown
            }
        ]
    );
    // The old id is gone.
    let r = h.send("GET_PARAMETER", "rtsp://h/room/cam", &[("Session", &id)]);
    assert_eq!(r.status, 454);
}

#[test]
fn responses_carry_the_session_with_its_timeout() {
    let mut h = Harness::new();
    h.announce();
    let r = h.send(
        "SETUP",
        "rtsp://h/room/cam/streamid=0",
        &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
    );
    let id = h.session.id().unwrap();
    assert_eq!(
        r.header("Session"),
        Some(format!("{id};timeout=60").as_str())
    );
    // Clients may echo the timeout back.
    let r = h.send(
        "OPTIONS",
        "rtsp://h/room/cam",
        &[("Session", &format!("{id};timeout=60"))],
    );
    assert_eq!(r.status, 200);
    // A wrong session id is refused everywhere it matters.
    for method in ["SETUP", "RECORD", "PAUSE", "TEARDOWN", "GET_PARAMETER"] {
        let r = h.send(
            method,
            "rtsp://h/room/cam/streamid=1",
            &[
                ("Session", "0123456789abcdef"),
                ("Transport", "RTP/AVP/TCP;interleaved=2-3"),
            ],
        );
        assert_eq!(r.status, 454, "{method}");
    }
}

#[test]
fn publish_bridge_errors() {
    let cases: &[(BridgeError, u16, &str)] = &[
        (
            BridgeError::Taken("x".into()),
            409,
            "cam is already live in room; pick another name",
        ),
        (
            BridgeError::NotFound("no such room".into()),
            404,
            "no such room",
        ),
        (BridgeError::Invalid("H.265 only".into()), 400, "H.265 only"),
        (BridgeError::Unavailable("full".into()), 503, "full"),
    ];
    for (error, status, message) in cases {
        let mut h = Harness::new();
        h.bridge.publish = Err(error.clone());
        h.announce();
        h.send(
            "SETUP",
            "rtsp://h/room/cam/streamid=0",
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        );
        let r = h.send("RECORD", "rtsp://h/room/cam", &[]);
        assert_eq!(r.status, *status);
        assert_eq!(r.reason, *message);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            format!("{message}\n")
        );
        // Nothing is ingested, and TEARDOWN ends the session without unpublishing.
        assert_eq!(h.session.handle_interleaved(0, h.now), None);
        h.take_events();
        assert_eq!(h.send("TEARDOWN", "rtsp://h/room/cam", &[]).status, 200);
        assert!(
            matches!(&h.take_events()[..], [Output::Ended { .. }]),
            "{error:?}"
        );
    }
}

#[test]
fn publish_over_udp_routes_by_client_address() {
    let mut h = Harness::new();
    h.announce();
    for (i, ports) in [(0, "5000-5001"), (1, "5002-5003")] {
        let r = h.send(
            "SETUP",
            &format!("rtsp://h/room/cam/streamid={i}"),
            &[(
                "Transport",
                &format!("RTP/AVP/UDP;unicast;client_port={ports};mode=record"),
            )],
        );
        assert_eq!(
            r.header("Transport"),
            Some(
                format!("RTP/AVP;unicast;client_port={ports};server_port=6970-6971;mode=record")
                    .as_str()
            )
        );
    }
    h.take_events();
    assert_eq!(h.send("RECORD", "rtsp://h/room/cam", &[]).status, 200);
    let route = |port: u16, kind, track| UdpRoute {
        from: SocketAddr::new(PEER.parse::<SocketAddr>().unwrap().ip(), port),
        kind,
        track,
    };
    assert_eq!(
        h.take_events(),
        vec![Output::RouteUdp(vec![
            route(5000, PacketKind::Rtp, 0),
            route(5001, PacketKind::Rtcp, 0),
            route(5002, PacketKind::Rtp, 1),
            route(5003, PacketKind::Rtcp, 1),
        ])]
    );
}

#[test]
fn transports_that_cannot_be_served() {
    // (udp available, Transport, status)
    let cases: &[(bool, &str, u16)] = &[
        (false, "RTP/AVP;unicast;client_port=5000-5001", 461),
        (true, "RTP/AVP;multicast;client_port=5000-5001", 461),
        (true, "RTP/SAVP;unicast;client_port=5000-5001", 461),
        (true, "RTP/AVP;unicast", 461),
        (true, "RTP/AVP/TCP;unicast;interleaved=0-1;mode=play", 461),
        (true, "RTP/AVP/TCP;unicast;interleaved=0-x", 400),
        (
            false,
            "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;interleaved=0-1",
            200,
        ),
    ];
    for (udp, transport, status) in cases {
        let mut h = Harness::with(udp.then_some(UDP), SESSION_TIMEOUT);
        h.announce();
        let r = h.send(
            "SETUP",
            "rtsp://h/room/cam/streamid=0",
            &[("Transport", transport)],
        );
        assert_eq!(r.status, *status, "{transport}: {r:?}");
    }
}

#[test]
fn interleaved_channels_do_not_clash() {
    let mut h = Harness::new();
    h.announce();
    let setup = |h: &mut Harness, track: u8, transport: &str| {
        h.send(
            "SETUP",
            &format!("rtsp://h/room/cam/streamid={track}"),
            &[("Transport", transport)],
        )
        .header("Transport")
        .map(str::to_owned)
    };
    assert_eq!(
        setup(&mut h, 0, "RTP/AVP/TCP;unicast;interleaved=0-1"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record".into())
    );
    // The same channels again for the other track, or none at all: the server picks.
    assert_eq!(
        setup(&mut h, 1, "RTP/AVP/TCP;unicast;interleaved=1-2"),
        Some("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record".into())
    );
    // Mixing lower transports in one session is refused.
    let r = h.send(
        "SETUP",
        "rtsp://h/room/cam/streamid=1",
        &[("Transport", "RTP/AVP;unicast;client_port=5000-5001")],
    );
    assert_eq!(r.status, 461);
    // A track that was not announced.
    let r = h.send(
        "SETUP",
        "rtsp://h/room/cam/streamid=7",
        &[("Transport", "RTP/AVP/TCP;unicast")],
    );
    assert_eq!(r.status, 404);
    // Another participant's URL in this session.
    let r = h.send(
        "SETUP",
        "rtsp://h/room/other/streamid=1",
        &[("Transport", "RTP/AVP/TCP;unicast")],
    );
    assert_eq!(r.status, 400);
}

#[test]
fn play_over_tcp_rewrites_and_reports() {
    let mut h = Harness::new();
    let r = h.play([
        "RTP/AVP/TCP;unicast;interleaved=0-1",
        "RTP/AVP/TCP;unicast;interleaved=2-3",
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Range"), Some("npt=0.000-"));
    let info = rtp_info(&r);
    assert_eq!(info.len(), 2);
    assert_eq!(info[0].0, "rtsp://h/room/cam/trackID=1");
    assert_eq!(info[1].0, "rtsp://h/room/cam/trackID=2");
    assert_eq!(
        h.calls.last(),
        Some(&Call::Play {
            room: RoomName::parse("room").unwrap(),
            id: ParticipantId::parse("cam").unwrap(),
            tracks: vec![TrackKey(1), TrackKey(2)],
        })
    );
    h.take_events();

    // Packets go out on the track's channel with the session's SSRC and payload type,
    // numbered from RTP-Info on.
    h.rtp(1, 500, 9000);
    h.rtp(2, 70, 480);
    h.advance(Duration::from_millis(20));
    h.rtp(1, 501, 9000 + 1800);
    let sent: Vec<(Destination, (u8, u16, u32, u32))> = h
        .session
        .outputs
        .drain(..)
        .map(|o| match o {
            Output::Transmit(t) => (t.to, rtp_header(&t.packet)),
            o => panic!("{o:?}"),
        })
        .collect();
    let (video_ssrc, audio_ssrc) = (sent[0].1 .3, sent[1].1 .3);
    assert_ne!(video_ssrc, audio_ssrc);
    assert_eq!(
        sent,
        vec![
            (
                Destination::Interleaved(0),
                (96, info[0].1, info[0].2, video_ssrc)
            ),
            (
                Destination::Interleaved(2),
                (111, info[1].1, info[1].2, audio_ssrc)
            ),
            (
                Destination::Interleaved(0),
                (
                    96,
                    info[0].1.wrapping_add(1),
                    info[0].2.wrapping_add(1800),
                    video_ssrc
                )
            ),
        ]
    );

    // Sender reports start once the source's NTP mapping is known, every second.
    h.session.handle_playback(
        PlaybackEvent::SenderReport {
            track: TrackKey(1),
            ntp: 1 << 32,
            rtp: 9000,
        },
        h.now,
    );
    assert_eq!(h.session.poll_timeout(), h.now);
    h.session.handle_timeout(h.now);
    let reports: Vec<Output> = h.session.outputs.drain(..).collect();
    assert!(
        matches!(
            &reports[..],
            [Output::Transmit(Transmit {
                to: Destination::Interleaved(1),
                packet: Packet::Rtcp(_)
            })]
        ),
        "{reports:?}"
    );
    assert_eq!(
        h.session.poll_timeout(),
        h.now + crate::rtsp::sender::REPORT_INTERVAL
    );

    // PAUSE stops the tap; PLAY starts a new one that continues the numbering.
    let r = h.send("PAUSE", "rtsp://h/room/cam/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(h.take_events(), vec![Output::StopPlayback]);
    h.rtp(1, 502, 0);
    assert!(h.session.outputs.is_empty(), "nothing is sent while paused");
    h.advance(Duration::from_secs(3));
    let r = h.send("PLAY", "rtsp://h/room/cam/", &[]);
    assert_eq!(h.calls.len(), 3, "DESCRIBE, PLAY, PLAY");
    let again = rtp_info(&r);
    assert_eq!(again[0].1, info[0].1.wrapping_add(2));
    assert_eq!(again[0].2, info[0].2.wrapping_add(1800 + 3 * 90000));
    assert_eq!(again[1].1, info[1].1.wrapping_add(1));
    h.rtp(1, 7, 123);
    match h.session.poll_output() {
        Some(Output::Transmit(t)) => {
            assert_eq!(
                rtp_header(&t.packet),
                (96, again[0].1, again[0].2, video_ssrc)
            )
        }
        o => panic!("{o:?}"),
    }

    // The participant leaves: over TCP the session ends and the connection closes.
    let id = h.session.id().unwrap().to_owned();
    h.session.handle_playback_end(h.now);
    assert_eq!(
        h.take_events()
            .into_iter()
            .chain(h.session.outputs.drain(..))
            .collect::<Vec<_>>(),
        vec![
            Output::StopPlayback,
            Output::Ended {
                id,
                reason: EndReason::SourceGone
            },
            Output::Close
        ]
    );
}

#[test]
fn play_over_udp_waits_for_teardown_when_the_source_leaves() {
    let mut h = Harness::new();
    let r = h.play([
        "RTP/AVP;unicast;client_port=7000-7001",
        "RTP/AVP;unicast;client_port=7002-7003",
    ]);
    assert_eq!(r.status, 200);
    let events = h.take_events();
    assert!(
        matches!(&events[..], [Output::Started { lower: Lower::Udp, .. }, Output::RouteUdp(r)] if r.len() == 4),
        "{events:?}"
    );
    h.rtp(2, 1, 1);
    let ip = PEER.parse::<SocketAddr>().unwrap().ip();
    match h.session.poll_output() {
        Some(Output::Transmit(t)) => assert_eq!(
            t.to,
            Destination::Udp {
                to: SocketAddr::new(ip, 7002),
                rtcp: false
            }
        ),
        o => panic!("{o:?}"),
    }
    h.session.handle_playback_end(h.now);
    assert_eq!(
        h.session.outputs.drain(..).collect::<Vec<_>>(),
        vec![Output::StopPlayback]
    );
    assert_eq!(h.send("TEARDOWN", "rtsp://h/room/cam/", &[]).status, 200);
    assert!(matches!(
        &h.take_events()[..],
        [Output::Ended {
            reason: EndReason::Teardown,
            ..
        }]
    ));
}

#[test]
fn play_errors() {
    // (describe answer, play answer, status of DESCRIBE or PLAY)
    let not_found = || Err(BridgeError::NotFound("no cam in room".into()));
    type Case = (
        Result<Vec<OutputTrack>, BridgeError>,
        Result<(), BridgeError>,
    );
    let cases: Vec<(Case, &str, u16)> = vec![
        ((not_found(), Ok(())), "DESCRIBE", 404),
        ((Ok(vec![]), Ok(())), "DESCRIBE", 404),
        (
            (Err(BridgeError::Unavailable("stopping".into())), Ok(())),
            "DESCRIBE",
            503,
        ),
        (
            (
                Ok(output_tracks()),
                Err(BridgeError::NotFound("gone".into())),
            ),
            "PLAY",
            404,
        ),
    ];
    for ((describe, play), method, status) in cases {
        let mut h = Harness::new();
        h.bridge.describe = describe;
        h.bridge.play = play;
        let r = h.send("DESCRIBE", "rtsp://h/room/cam", &[]);
        if method == "DESCRIBE" {
            assert_eq!(r.status, status);
            continue;
        }
        h.send(
            "SETUP",
            "rtsp://h/room/cam/trackID=1",
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        );
        let r = h.send("PLAY", "rtsp://h/room/cam", &[]);
        assert_eq!(r.status, status);
        // Not playing: nothing goes out.
        h.rtp(1, 1, 1);
        assert!(h.session.outputs.is_empty());
    }
}

#[test]
fn wrong_mode_for_the_session() {
    let mut h = Harness::new();
    h.publish_tcp();
    assert_eq!(h.send("PLAY", "rtsp://h/room/cam", &[]).status, 455);
    assert_eq!(h.send("DESCRIBE", "rtsp://h/room/cam", &[]).status, 455);
    assert_eq!(h.announce().status, 455);
    let mut h = Harness::new();
    h.play(["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=2-3"]);
    assert_eq!(h.send("RECORD", "rtsp://h/room/cam", &[]).status, 455);
    let r = h.send(
        "SETUP",
        "rtsp://h/room/cam/trackID=1",
        &[("Transport", "RTP/AVP/TCP;interleaved=0-1")],
    );
    assert_eq!(r.status, 455, "no SETUP while playing");
}

#[test]
fn timeout_without_client_activity() {
    let timeout = Duration::from_secs(5);
    let mut h = Harness::with(Some(UDP), timeout);
    h.publish_tcp();
    h.take_events();
    assert_eq!(h.session.poll_timeout(), h.now + timeout);
    // Media from the client keeps the session alive...
    for _ in 0..10 {
        h.advance(Duration::from_secs(1));
        h.session.handle_interleaved(0, h.now);
        h.session.handle_timeout(h.now);
    }
    h.advance(Duration::from_secs(1));
    h.session.handle_udp(h.now);
    h.advance(timeout - Duration::from_millis(1));
    h.session.handle_timeout(h.now);
    assert!(h.session.outputs.is_empty());
    // ...and silence ends it.
    h.advance(Duration::from_millis(1));
    assert_eq!(h.session.poll_timeout(), h.now);
    let id = h.session.id().unwrap().to_owned();
    h.session.handle_timeout(h.now);
    assert_eq!(
        h.session.outputs.drain(..).collect::<Vec<_>>(),
        vec![
            Output::Unpublish,
            Output::Ended {
                id,
                reason: EndReason::Timeout
            },
            Output::Close
        ]
    );
    // A connection without a session times out too.
    let mut h = Harness::with(None, timeout);
    h.advance(timeout);
    h.session.handle_timeout(h.now);
    assert_eq!(h.session.poll_output(), Some(Output::Close));
}

#[test]
fn malformed_stream_is_answered_then_closed() {
    let mut h = Harness::new();
    h.publish_tcp();
    h.take_events();
    let r = h.raw(b"OPTIONS * RTSP/1.0\r\nCSeq: 9\r\nbroken line\r\n\r\n");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 400);
    assert_eq!(r[0].header("CSeq"), Some("9"));
    assert!(r[0].reason.contains("no `:`"), "{:?}", r[0].reason);
    let events = h.take_events();
    assert!(
        matches!(
            &events[..],
            [
                Output::Unpublish,
                Output::Ended {
                    reason: EndReason::BadStream,
                    ..
                },
                Output::Close
            ]
        ),
        "{events:?}"
    );
    // Nothing more is taken.
    h.session.handle_request(
        Request {
            method: Method::Options,
            uri: "*".into(),
            version: "RTSP/1.0".into(),
            headers: vec![("CSeq".into(), "10".into())],
            body: Bytes::new(),
            position: 0,
        },
        h.now,
    );
    assert_eq!(h.session.poll_output(), None);
}

#[test]
fn close_ends_the_session() {
    let mut h = Harness::new();
    h.play(["RTP/AVP/TCP;interleaved=0-1", "RTP/AVP/TCP;interleaved=2-3"]);
    h.take_events();
    h.session.handle_close();
    let events: Vec<Output> = h.session.outputs.drain(..).collect();
    assert!(
        matches!(
            &events[..],
            [
                Output::StopPlayback,
                Output::Ended {
                    reason: EndReason::Closed,
                    ..
                }
            ]
        ),
        "{events:?}"
    );
}

/// What replaying a transcript gave.
struct Replay {
    /// (method, response) per request.
    exchanges: Vec<(Method, Response)>,
    calls: Vec<Call>,
    events: Vec<Output>,
    /// Interleaved frames: channel → how many.
    frames: BTreeMap<u8, usize>,
    /// What the session made of them: (track, kind) → how many.
    ingested: BTreeMap<(usize, PacketKind), usize>,
}

/// Feeds a client's recorded byte stream to a session, as the server would, the recorder's
/// session id replaced with the session's own, then closes the connection.
fn replay(transcript: &[u8]) -> Replay {
    let mut h = Harness::new();
    let mut framer = Framer::new();
    framer.feed(transcript);
    let mut replay = Replay {
        exchanges: Vec::new(),
        calls: Vec::new(),
        events: Vec::new(),
        frames: BTreeMap::new(),
        ingested: BTreeMap::new(),
    };
    while let Some(frame) = framer.poll().expect("transcripts frame cleanly") {
        h.advance(Duration::from_millis(10));
        match frame {
            Frame::Request(mut req) => {
                if let Some(id) = h.session.id() {
                    for (name, value) in &mut req.headers {
                        if name.eq_ignore_ascii_case("session") {
                            *value = value.replace(RECORDER_SESSION, id);
                        }
                    }
                }
                let method = req.method.clone();
                h.session.handle_request(req, h.now);
                let responses = h.drain();
                assert_eq!(responses.len(), 1);
                replay
                    .exchanges
                    .push((method, responses.into_iter().next().unwrap()));
            }
            Frame::Interleaved { channel, .. } => {
                *replay.frames.entry(channel).or_default() += 1;
                if let Some(i) = h.session.handle_interleaved(channel, h.now) {
                    *replay.ingested.entry((i.track, i.kind)).or_default() += 1;
                }
            }
        }
    }
    h.session.handle_close();
    h.drain();
    replay.calls = h.calls;
    replay.events = h.events;
    replay
}

fn statuses(r: &Replay) -> Vec<(String, u16)> {
    r.exchanges
        .iter()
        .map(|(m, r)| (m.to_string(), r.status))
        .collect()
}

fn all_ok(methods: &[&str]) -> Vec<(String, u16)> {
    methods.iter().map(|m| (m.to_string(), 200)).collect()
}

fn transports(r: &Replay) -> Vec<String> {
    r.exchanges
        .iter()
        .filter(|(m, _)| *m == Method::Setup)
        .map(|(_, r)| r.header("Transport").unwrap().to_owned())
        .collect()
}

fn published(r: &Replay) -> Vec<(String, u8, String, u32, u16)> {
    match &r.calls[..] {
        [Call::Publish { tracks, .. }] => tracks
            .iter()
            .map(|t| {
                (
                    t.control.clone(),
                    t.payload_type,
                    t.encoding.clone(),
                    t.clock_rate,
                    t.channels,
                )
            })
            .collect(),
        calls => panic!("{calls:?}"),
    }
}

fn ended(r: &Replay) -> Vec<EndReason> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Output::Ended { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn transcript_ffmpeg_record_tcp() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/ffmpeg-record-tcp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"])
    );
    assert_eq!(
        transports(&r),
        [
            "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
            "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"
        ]
    );
    assert_eq!(
        published(&r),
        [
            ("streamid=0".into(), 96, "H264".into(), 90000, 1),
            ("streamid=1".into(), 97, "opus".into(), 48000, 2)
        ]
    );
    // Every frame the client sent after RECORD reached its track.
    let by_channel: BTreeMap<(usize, PacketKind), usize> = r
        .frames
        .iter()
        .map(|(&c, &n)| {
            let kind = if c % 2 == 0 {
                PacketKind::Rtp
            } else {
                PacketKind::Rtcp
            };
            ((usize::from(c / 2), kind), n)
        })
        .collect();
    assert_eq!(r.ingested, by_channel);
    assert_eq!(r.ingested.len(), 4, "RTP and RTCP of both tracks");
    assert!(r.events.contains(&Output::Unpublish));
    assert_eq!(ended(&r), [EndReason::Teardown]);
}

#[test]
fn transcript_ffmpeg_record_udp() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/ffmpeg-record-udp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"])
    );
    assert_eq!(
        transports(&r),
        [
            "RTP/AVP;unicast;client_port=26652-26653;server_port=6970-6971;mode=record",
            "RTP/AVP;unicast;client_port=26654-26655;server_port=6970-6971;mode=record"
        ]
    );
    let routes: Vec<(u16, PacketKind, usize)> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Output::RouteUdp(routes) => Some(routes),
            _ => None,
        })
        .flatten()
        .map(|r| (r.from.port(), r.kind, r.track))
        .collect();
    assert_eq!(
        routes,
        [
            (26652, PacketKind::Rtp, 0),
            (26653, PacketKind::Rtcp, 0),
            (26654, PacketKind::Rtp, 1),
            (26655, PacketKind::Rtcp, 1)
        ]
    );
    assert_eq!(ended(&r), [EndReason::Teardown]);
}

#[test]
fn transcript_ffmpeg_record_mjpeg_pcmu_and_aac() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/ffmpeg-record-mjpeg-pcmu-tcp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "ANNOUNCE", "SETUP", "SETUP", "RECORD", "TEARDOWN"])
    );
    assert_eq!(
        published(&r),
        [
            ("streamid=0".into(), 26, "JPEG".into(), 90000, 1),
            ("streamid=1".into(), 0, "PCMU".into(), 8000, 1)
        ]
    );
    assert_eq!(
        r.ingested.values().sum::<usize>(),
        r.frames.values().sum::<usize>()
    );

    let r = replay(include_bytes!(
        "../../../testdata/rtsp/ffmpeg-record-aac-tcp.rtsp"
    ));
    assert_eq!(
        published(&r)[1],
        ("streamid=1".into(), 97, "MPEG4-GENERIC".into(), 44100, 1)
    );
    let Call::Publish { tracks, .. } = &r.calls[0] else {
        panic!()
    };
    assert_eq!(
        tracks[1].fmtp.as_deref(),
        Some("profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=120856E500")
    );
}

#[test]
fn transcript_gstreamer_record_tcp() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/gstreamer-record-tcp.rtsp"
    ));
    // GStreamer pauses before it goes and then just closes the connection.
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "ANNOUNCE", "SETUP", "SETUP", "RECORD", "PAUSE"])
    );
    // Its SDP lists audio first, as stream=1, and it sets that up first.
    assert_eq!(
        published(&r),
        [
            ("stream=1".into(), 96, "OPUS".into(), 48000, 2),
            ("stream=0".into(), 99, "H264".into(), 90000, 1)
        ]
    );
    assert_eq!(
        transports(&r),
        [
            "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
            "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"
        ]
    );
    assert_eq!(
        r.ingested,
        BTreeMap::from([
            ((0, PacketKind::Rtp), r.frames[&0]),
            ((1, PacketKind::Rtp), r.frames[&2])
        ])
    );
    // The PAUSE left the camera in; the closed connection took it out.
    assert_eq!(
        r.events.iter().filter(|e| **e == Output::Unpublish).count(),
        1
    );
    assert_eq!(ended(&r), [EndReason::Closed]);
}

#[test]
fn transcript_gstreamer_record_udp() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/gstreamer-record-udp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "ANNOUNCE", "SETUP", "SETUP", "RECORD", "PAUSE", "TEARDOWN"])
    );
    assert_eq!(
        transports(&r),
        [
            "RTP/AVP;unicast;client_port=54326-54327;server_port=6970-6971;mode=record",
            "RTP/AVP;unicast;client_port=38994-38995;server_port=6970-6971;mode=record"
        ]
    );
    assert_eq!(ended(&r), [EndReason::Teardown]);
}

/// DESCRIBE, both SETUPs, PLAY of a player transcript; `ports` says where it listens.
fn check_play(r: &Replay, port: u16, transports_want: [String; 2]) {
    let base = format!("rtsp://127.0.0.1:{port}/room/cam");
    let (_, describe) = &r.exchanges[1];
    assert_eq!(describe.status, 200);
    assert_eq!(
        describe.header("Content-Base"),
        Some(format!("{base}/").as_str())
    );
    assert_eq!(describe.header("Content-Type"), Some("application/sdp"));
    let sdp = std::str::from_utf8(&describe.body).unwrap();
    for line in [
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f",
        "a=control:trackID=1",
        "m=audio 0 RTP/AVP 111",
        "a=rtpmap:111 opus/48000/2",
        "a=control:trackID=2",
    ] {
        assert!(sdp.contains(&format!("{line}\r\n")), "{line} in\n{sdp}");
    }
    let got = transports(r);
    for (got, want) in got.iter().zip(&transports_want) {
        // The SSRC is the session's own: check the rest exactly.
        let (head, ssrc) = got.split_once(";ssrc=").unwrap();
        assert_eq!(format!("{head};mode=play"), *want);
        assert_eq!(ssrc.len(), "12345678;mode=play".len(), "{got}");
    }
    let (_, play) = r
        .exchanges
        .iter()
        .find(|(m, _)| *m == Method::Play)
        .unwrap();
    assert_eq!(play.status, 200);
    let info = rtp_info(play);
    assert_eq!(
        info.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
        [format!("{base}/trackID=1"), format!("{base}/trackID=2")]
    );
    assert_eq!(
        r.calls,
        [
            Call::Describe {
                room: RoomName::parse("room").unwrap(),
                id: ParticipantId::parse("cam").unwrap()
            },
            Call::Play {
                room: RoomName::parse("room").unwrap(),
                id: ParticipantId::parse("cam").unwrap(),
                tracks: vec![TrackKey(1), TrackKey(2)]
            }
        ]
    );
}

#[test]
fn transcript_ffmpeg_play_tcp() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/ffmpeg-play-tcp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY", "TEARDOWN"])
    );
    check_play(
        &r,
        8560,
        [
            "RTP/AVP/TCP;unicast;interleaved=0-1;mode=play".into(),
            "RTP/AVP/TCP;unicast;interleaved=2-3;mode=play".into(),
        ],
    );
    assert!(r.events.contains(&Output::StopPlayback));
    assert_eq!(ended(&r), [EndReason::Teardown]);
}

#[test]
fn transcript_ffmpeg_play_udp() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/ffmpeg-play-udp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY", "TEARDOWN"])
    );
    check_play(
        &r,
        8561,
        [
            "RTP/AVP;unicast;client_port=28542-28543;server_port=6970-6971;mode=play".into(),
            "RTP/AVP;unicast;client_port=28544-28545;server_port=6970-6971;mode=play".into(),
        ],
    );
}

#[test]
fn transcript_gstreamer_play() {
    let r = replay(include_bytes!(
        "../../../testdata/rtsp/gstreamer-play-tcp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY"])
    );
    check_play(
        &r,
        8562,
        [
            "RTP/AVP/TCP;unicast;interleaved=0-1;mode=play".into(),
            "RTP/AVP/TCP;unicast;interleaved=2-3;mode=play".into(),
        ],
    );
    assert_eq!(ended(&r), [EndReason::Closed]);

    let r = replay(include_bytes!(
        "../../../testdata/rtsp/gstreamer-play-udp.rtsp"
    ));
    assert_eq!(
        statuses(&r),
        all_ok(&["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "PLAY", "TEARDOWN"])
    );
    check_play(
        &r,
        8563,
        [
            "RTP/AVP;unicast;client_port=35050-35051;server_port=6970-6971;mode=play".into(),
            "RTP/AVP;unicast;client_port=49144-49145;server_port=6970-6971;mode=play".into(),
        ],
    );
}

/// Random requests in random order never panic the session, and every request gets exactly
/// one response.
#[test]
fn random_request_sequences() {
    use rand::seq::IndexedRandom;
    let methods = [
        "OPTIONS",
        "ANNOUNCE",
        "DESCRIBE",
        "SETUP",
        "RECORD",
        "PLAY",
        "PAUSE",
        "TEARDOWN",
        "GET_PARAMETER",
        "FOO",
    ];
    let uris = [
        "rtsp://h/room/cam",
        "rtsp://h/room/cam/streamid=0",
        "rtsp://h/room/cam/trackID=2",
        "rtsp://h/room/other",
        "*",
        "rtsp://h/r%00/x",
    ];
    let transports = [
        "RTP/AVP/TCP;unicast;interleaved=0-1",
        "RTP/AVP;unicast;client_port=5000-5001",
        "RTP/AVP/TCP",
        "nonsense",
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let mut h = Harness::new();
        for _ in 0..20 {
            let method = methods.choose(&mut rng).unwrap();
            let uri = uris.choose(&mut rng).unwrap();
            let transport = transports.choose(&mut rng).unwrap();
            let mut headers = vec![("Transport", *transport)];
            if *method == "ANNOUNCE" {
                headers.push(("Content-Type", "application/sdp"));
            }
            let body = if *method == "ANNOUNCE" { SDP } else { "" };
            let r = h.send_body(method, uri, &headers, body);
            assert!((200..600).contains(&r.status));
            match rng.random_range(0..4) {
                0 => h.rtp(rng.random_range(1..3), rng.random(), rng.random()),
                1 => h.session.handle_playback_end(h.now),
                2 => {
                    h.advance(Duration::from_secs(rng.random_range(0..90)));
                    h.session.handle_timeout(h.now);
                }
                _ => {
                    let _ = h.session.handle_interleaved(rng.random(), h.now);
                }
            }
            h.drain();
            if h.events.contains(&Output::Close) {
                break;
            }
        }
        // Every session that started also ended, once.
        h.session.handle_close();
        h.drain();
        let started = h
            .events
            .iter()
            .filter(|e| matches!(e, Output::Started { .. }))
            .count();
        let ended = h
            .events
            .iter()
            .filter(|e| matches!(e, Output::Ended { .. }))
            .count();
        assert_eq!(started, ended, "{:?}", h.events);
    }
}

#[test]
fn announce_and_describe_ask_for_authorization_with_the_credentials_given() {
    let mut h = Harness::new();
    assert_eq!(h.announce().status, 200);
    let token = format!("{}.{}.{}", "a".repeat(20), "b".repeat(20), "c".repeat(20));
    let mut p = Harness::new();
    // Basic with user "x" and password "pw", and a Basic password shaped like a token.
    let r = p.send(
        "DESCRIBE",
        "rtsp://h/room/cam",
        &[("Authorization", "Basic eDpwdw==")],
    );
    assert_eq!(r.status, 200);
    let basic_token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("user:{token}"),
    );
    let mut q = Harness::new();
    let auth = format!("Basic {basic_token}");
    assert_eq!(
        q.send("DESCRIBE", "rtsp://h/room/cam", &[("Authorization", &auth)])
            .status,
        200
    );
    let mut u = Harness::new();
    let url = format!("rtsp://h/room/cam?token={token}");
    assert_eq!(u.send("DESCRIBE", &url, &[]).status, 200);
    let room = RoomName::parse("room").unwrap();
    let call = |publish: bool, password: Option<&str>, token: Option<&str>| Call::Authorize {
        room: room.clone(),
        publish,
        credentials: Credentials {
            password: password.map(str::to_owned),
            token: token.map(str::to_owned),
        },
    };
    assert_eq!(h.authorizations, [call(true, None, None)]);
    assert_eq!(p.authorizations, [call(false, Some("pw"), None)]);
    assert_eq!(q.authorizations, [call(false, None, Some(&token))]);
    assert_eq!(u.authorizations, [call(false, None, Some(&token))]);
}

#[test]
fn refusals_are_401_403_and_503_and_leave_no_session() {
    for (refusal, status, header) in [
        (
            Refusal::Unauthorized("needs a password".into()),
            401,
            ("WWW-Authenticate", "Basic realm=\"confab\""),
        ),
        (Refusal::Forbidden("viewer".into()), 403, ("", "")),
        (
            Refusal::Throttled {
                message: "wait".into(),
                retry_after: 42,
            },
            503,
            ("Retry-After", "42"),
        ),
    ] {
        let mut h = Harness::new();
        h.bridge.authorize = Err(refusal);
        let r = h.announce();
        assert_eq!(r.status, status);
        if !header.0.is_empty() {
            assert_eq!(r.header(header.0), Some(header.1));
        }
        // Nothing was announced: SETUP has no track to set up.
        let r = h.send(
            "SETUP",
            "rtsp://h/room/cam/streamid=0",
            &[(
                "Transport",
                "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
            )],
        );
        assert_ne!(r.status, 200, "{r:?}");
        let r = h.send("DESCRIBE", "rtsp://h/room/cam", &[]);
        assert_eq!(r.status, status);
        assert!(
            h.calls.is_empty(),
            "the bridge was asked nothing: {:?}",
            h.calls
        );
        assert!(h.session.id().is_none());
    }
}

/// What `fuzz/fuzz_targets/rtsp_session.rs` found, replayed: every response to these streams is
/// well formed when written (no CR or LF inside a header line).
#[test]
fn fuzz_regressions() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/fuzz/rtsp_session");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let mut h = Harness::new();
        for r in h.raw(&input) {
            let mut out = Vec::new();
            r.write(&mut out);
            let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            for line in out[..end].split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(
                    !line.contains(&b'\r'),
                    "{path:?}: {:?}",
                    line.escape_ascii()
                );
            }
        }
        n += 1;
    }
    assert!(n > 0, "no inputs in {dir}");
}
