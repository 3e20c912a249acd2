//! The RTSP session state machine driven by a client's byte stream, on a fake clock.
//!
//! The input is what a client sends (real transcripts from `server/testdata/rtsp` are valid
//! inputs as they are). Interleaved frames on channels 0xf0 and up are not media but the
//! world around the session: time passing, how the bridge answers, playback packets, the
//! source leaving, the connection closing. Every request is answered once, every response
//! is well formed and echoes the request's CSeq, and every session that starts also ends.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use confab::bridge::{BridgeError, OutputTrack, PlaybackEvent};
use confab::media::api::TrackKey;
use confab::protocol::MediaKind;
use confab::rtsp::message::{Frame, Framer, Response};
use confab::rtsp::session::{
    Answer, Call, Config, Output, Packet, Refusal, Session, UdpPorts, SESSION_TIMEOUT,
};
use libfuzzer_sys::fuzz_target;

/// The session id `server/testdata/rtsp/record.py` handed out; replaced by the real one.
const RECORDER_SESSION: &str = "7d0f2c4b91e8a635";

fn output_tracks() -> Vec<OutputTrack> {
    vec![
        OutputTrack {
            key: TrackKey(1),
            kind: MediaKind::Video,
            encoding: "H264".into(),
            payload_type: 96,
            clock_rate: 90000,
            channels: 1,
            fmtp: Some("packetization-mode=1;profile-level-id=42e01f".into()),
        },
        OutputTrack {
            key: TrackKey(2),
            kind: MediaKind::Audio,
            encoding: "opus".into(),
            payload_type: 111,
            clock_rate: 48000,
            channels: 2,
            fmtp: None,
        },
        OutputTrack {
            key: TrackKey(3),
            kind: MediaKind::Audio,
            encoding: "PCMU".into(),
            payload_type: 0,
            clock_rate: 8000,
            channels: 1,
            fmtp: None,
        },
    ]
}

fn bridge_error(b: u8) -> BridgeError {
    let text = "bridge says no".to_owned();
    match b % 4 {
        0 => BridgeError::NotFound(text),
        1 => BridgeError::Taken(text),
        2 => BridgeError::Invalid(text),
        _ => BridgeError::Unavailable(text),
    }
}

struct World {
    session: Session,
    now: Instant,
    /// Bit 0..2: describe, publish, play fail; bits 3..: which error; bit 7: authorization fails.
    bridge: u8,
    started: usize,
    ended: usize,
    closed: bool,
    responses: usize,
}

impl World {
    /// Drains outputs, answering bridge calls; returns the responses.
    fn drain(&mut self) -> Vec<Response> {
        let mut responses = Vec::new();
        while let Some(o) = self.session.poll_output() {
            match o {
                Output::Response(r) => {
                    let mut out = Vec::new();
                    r.write(&mut out);
                    confab_fuzz::rtsp::check_response(&out);
                    responses.push(r);
                }
                Output::Call(call) => {
                    let fail = |bit: u8| (self.bridge >> bit) & 1 == 1;
                    let err = bridge_error(self.bridge >> 3);
                    let answer = match call {
                        Call::Authorize { .. } if fail(7) => {
                            Answer::Authorize(Err(match (self.bridge >> 3) & 3 {
                                0 => Refusal::Unauthorized("who are you".into()),
                                1 => Refusal::Forbidden("viewers watch".into()),
                                _ => Refusal::Throttled {
                                    message: "wait".into(),
                                    retry_after: 60,
                                },
                            }))
                        }
                        Call::Authorize { .. } => Answer::Authorize(Ok(())),
                        Call::Describe { .. } if fail(0) => Answer::Describe(Err(err)),
                        Call::Describe { .. } => Answer::Describe(Ok(output_tracks())),
                        Call::Publish { tracks, .. } => {
                            assert!(!tracks.is_empty(), "nothing to publish");
                            Answer::Publish(if fail(1) { Err(err) } else { Ok(()) })
                        }
                        Call::Play { .. } => Answer::Play(if fail(2) { Err(err) } else { Ok(()) }),
                    };
                    self.session.handle_bridge(answer, self.now);
                }
                Output::Started { .. } => {
                    assert_eq!(self.started, self.ended, "one session at a time");
                    self.started += 1;
                }
                Output::Ended { .. } => {
                    self.ended += 1;
                    assert_eq!(self.started, self.ended, "ended what started");
                }
                Output::Close => self.closed = true,
                Output::Transmit(t) => {
                    if let Packet::Rtp { header, .. } = t.packet {
                        assert_eq!(header[0] >> 6, 2, "RTP version 2");
                    }
                }
                Output::Unpublish | Output::StopPlayback | Output::RouteUdp(_) => {}
            }
        }
        self.responses += responses.len();
        responses
    }

    /// A frame on channel 0xf0 and up: something else happening.
    fn control(&mut self, channel: u8, data: &[u8]) {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let u32_at =
            |i: usize| u32::from_be_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)]);
        match channel {
            0xf0 => {
                // Time passes: up to ~18 hours in ms steps, then the timers run.
                self.now += Duration::from_millis(u64::from(u32_at(0) >> 6));
                self.session.handle_timeout(self.now);
            }
            0xf1 => self.bridge = byte(0),
            0xf2 => self.session.handle_playback(
                PlaybackEvent::Rtp {
                    track: TrackKey(u64::from(byte(0) % 4)),
                    marker: byte(1) & 1 == 1,
                    seq: u16::from_be_bytes([byte(2), byte(3)]),
                    ts: u32_at(4),
                    payload: Bytes::copy_from_slice(data.get(8..).unwrap_or_default()),
                },
                self.now,
            ),
            0xf3 => self.session.handle_playback(
                PlaybackEvent::SenderReport {
                    track: TrackKey(u64::from(byte(0) % 4)),
                    ntp: (u64::from(u32_at(1)) << 32) | u64::from(u32_at(5)),
                    rtp: u32_at(9),
                },
                self.now,
            ),
            0xf4 => self.session.handle_playback_end(self.now),
            0xf5 => self.session.handle_udp(self.now),
            0xf6 => {
                // The connection closed: the session answers nothing after it.
                self.session.handle_close();
                self.closed = true;
            }
            _ => {
                let _ = self.session.handle_interleaved(channel, self.now);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let config = Config {
        timeout: SESSION_TIMEOUT,
        peer: "127.0.0.1:40000".parse().unwrap(),
        udp: Some(UdpPorts {
            rtp: 6970,
            rtcp: 6971,
        }),
    };
    let mut w = World {
        session: Session::new(config, 1, start),
        now: start,
        bridge: 0,
        started: 0,
        ended: 0,
        closed: false,
        responses: 0,
    };
    let mut framer = Framer::new();
    framer.feed(data);
    loop {
        // Each frame a little later than the one before.
        w.now += Duration::from_millis(10);
        match framer.poll() {
            Ok(Some(Frame::Request(mut req))) => {
                if let Some(id) = w.session.id() {
                    for (name, value) in &mut req.headers {
                        if name.eq_ignore_ascii_case("session") {
                            *value = value.replace(RECORDER_SESSION, id);
                        }
                    }
                }
                let cseq = req
                    .header("CSeq")
                    .and_then(|v| v.trim().parse::<u32>().ok());
                let was_closed = w.closed;
                w.session.handle_request(req, w.now);
                let responses = w.drain();
                if was_closed {
                    assert!(responses.is_empty(), "nothing is answered after close");
                    continue;
                }
                assert_eq!(
                    responses.len(),
                    1,
                    "one response per request: {responses:?}"
                );
                let r = &responses[0];
                assert!((200..600).contains(&r.status));
                if let Some(cseq) = cseq {
                    assert_eq!(r.header("CSeq"), Some(cseq.to_string().as_str()));
                }
            }
            Ok(Some(Frame::Interleaved { channel, data })) => {
                if channel >= 0xf0 {
                    w.control(channel, &data);
                } else {
                    let _ = w.session.handle_interleaved(channel, w.now);
                }
                w.drain();
            }
            Ok(None) => break,
            Err(e) => {
                w.session.handle_frame_error(&e);
                w.drain();
                break;
            }
        }
    }
    w.session.handle_close();
    w.drain();
    assert_eq!(w.started, w.ended, "every session that started ended");
});
