//! RTP and RTCP from established peers. Once per process an engine, a publisher and a
//! subscriber are connected in memory (DTLS/SRTP up, media forwarded); each input is then a
//! list of packets the clients send, encrypted by their own SRTP so that they reach the
//! engine decrypted, plus raw datagrams from their addresses and time passing.
//!
//! Input: records of `[op, len, len bytes]`. The low three bits of `op` say what to do:
//! 0 the publisher's H.264 on its negotiated SSRC and payload type (the forwarding path;
//! `op` bit 3 is the marker), 1 an RTP packet as the bytes say (any header), 2 publisher
//! RTCP, 3 subscriber RTCP, 4 subscriber RTP, 5 a raw datagram from the publisher's
//! address, 6 one from the subscriber's, 7 time passes (`len` ms × 8).
#![no_main]

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use confab_fuzz::client::{Mesh, Who, KEYFRAME};
use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::message::RTCMessage;
use rtc::shared::marshal::Unmarshal;

static MESH: Mutex<Option<Mesh>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = MESH.lock().unwrap_or_else(|e| e.into_inner());
    if !guard.as_ref().is_some_and(Mesh::connected) {
        *guard = Some(Mesh::connect().expect("the in-memory peers connect"));
        if let Ok(dir) = std::env::var("CONFAB_FUZZ_WRITE_SDP") {
            let m = guard.as_ref().unwrap();
            let sdps = m.sdps(Who::Publisher).iter().chain(m.sdps(Who::Subscriber));
            for (i, sdp) in sdps.enumerate() {
                let _ = std::fs::write(format!("{dir}/sdp-{i}"), sdp);
            }
        }
    }
    let mesh = guard.as_mut().unwrap();
    // Each input starts at a keyframe, so the subscriber takes what follows.
    mesh.send_h264(true, 0, KEYFRAME);
    let mut rest = data;
    let mut ts = 0u32;
    while rest.len() >= 2 {
        let (op, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + body.len()..];
        match op & 7 {
            0 => {
                ts = ts.wrapping_add(3000);
                mesh.send_h264(op & 8 != 0, ts, body);
            }
            1 | 4 => {
                let who = if op & 7 == 1 {
                    Who::Publisher
                } else {
                    Who::Subscriber
                };
                let mut buf = body;
                if let Ok(p) = rtc::rtp::Packet::unmarshal(&mut buf) {
                    mesh.send(who, RTCMessage::RtpPacket(String::new(), p));
                }
            }
            2 | 3 => {
                let who = if op & 7 == 2 {
                    Who::Publisher
                } else {
                    Who::Subscriber
                };
                let mut buf = Bytes::copy_from_slice(body);
                if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) {
                    mesh.send(who, RTCMessage::RtcpPacket(String::new(), packets));
                }
            }
            5 => mesh.send_raw(Who::Publisher, body),
            6 => mesh.send_raw(Who::Subscriber, body),
            _ => {
                let _ = mesh.step(Duration::from_millis(8 * len as u64));
            }
        }
        if mesh.step(Duration::from_millis(1)).is_err() {
            // A connection ended (the input may say so: a DTLS alert, an RTCP BYE): the next
            // input gets a new mesh.
            *guard = None;
            return;
        }
    }
    if std::env::var_os("CONFAB_FUZZ_DEBUG").is_some() {
        eprintln!(
            "publisher got {} RTP, subscriber {}",
            mesh.received(Who::Publisher),
            mesh.received(Who::Subscriber)
        );
    }
});
