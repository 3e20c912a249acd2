//! RTSP for a room that lives on another cluster node, the pure part: which request decides
//! where a connection goes, where a player is sent, and what a relay does with each request
//! of a publisher before it hands the connection over to the room's node.
//!
//! In cluster mode (`--redis`) every room lives on one node (`crate::cluster`). The first
//! request of a connection that names a room, DESCRIBE (play) or ANNOUNCE (push), asks where
//! that room is; OPTIONS may name it too but decides nothing. When it is another node:
//!
//! - **Play: redirect.** DESCRIBE is answered `302 Moved Temporarily` with `Location:` the
//!   same path and query on the owner's RTSP server (its record's `rtsp`). ffmpeg/ffprobe
//!   (`-i rtsp://…`) and GStreamer's `rtspsrc` both follow it (they open a new connection to
//!   the owner and DESCRIBE there; the e2e tests `cluster::*play*` check both), so media then
//!   flows from the owner to the player with no node in between, as for the WebSocket.
//! - **Push: relay.** ffmpeg's RTSP muxer does not follow a redirect of its ANNOUNCE (it
//!   stops with the 302 as an error), so the node the camera reached opens a TCP connection
//!   to the owner's RTSP server, forwards the ANNOUNCE and every later request, and once the
//!   transport is fixed splices the two connections byte for byte. UDP cannot go through a
//!   TCP splice (the owner would send its UDP to this node, and take the camera's datagrams
//!   only from this node's address), so until then the relay reads the client's requests
//!   itself ([`step`]) and answers a SETUP that does not ask for TCP interleaving with `461
//!   Unsupported Transport`. ffmpeg (5.1) then retries the SETUP over TCP on the same
//!   connection, so its default transport works. GStreamer's `rtspclientsink` (1.22) does not
//!   (it tries UDP multicast next, which it cannot set up for recording, and stops with
//!   "Could not setup transport"): it needs `protocols=tcp` to push through another node.
//!   GStreamer also stops at a 302 to its ANNOUNCE, as ffmpeg does. The owner sees the
//!   relaying node as the client's address, so the relaying node checks the credentials
//!   first, against the client's own address, where wrong guesses are throttled; the owner
//!   checks them again.
//!
//! The shell (`server.rs`) asks the cluster, writes the 302 or the errors (503 when Redis or
//! the owner cannot be reached, saying what to do) and moves the bytes.

use super::message::{Method, Request, Response};
use super::transport::{self, Lower};
use crate::names::RoomName;

/// The room the request names if it decides where the connection goes (DESCRIBE, ANNOUNCE),
/// `None` otherwise. A URL that names no valid room is the session's to refuse (400).
pub fn deciding_room(req: &Request) -> Option<RoomName> {
    if !matches!(req.method, Method::Describe | Method::Announce) {
        return None;
    }
    let url = url::Url::parse(&req.uri).ok()?;
    let first = url.path_segments()?.find(|s| !s.is_empty())?;
    RoomName::parse(first).ok()
}

/// Whether a connection whose room is elsewhere is redirected (play) rather than relayed.
pub fn redirects(method: &Method) -> bool {
    *method == Method::Describe
}

/// Where a player of `uri` is sent: the same path and query on `owner_rtsp`
/// (`rtsp://host:port` of the room's node). `None` if either is not a URL.
pub fn location(owner_rtsp: &str, uri: &str) -> Option<String> {
    let from = url::Url::parse(uri).ok()?;
    let mut to = url::Url::parse(owner_rtsp).ok()?;
    to.set_path(from.path());
    to.set_query(from.query());
    Some(to.into())
}

/// What a relay does with a client's request before the connection is spliced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Pass it on to the room's node and keep reading requests.
    Forward,
    /// Pass it on, then pass everything on unread both ways: the transport is TCP
    /// interleaving (or the client starts its media).
    Splice,
    /// Do not pass it on: answer the client with this.
    Answer(Response),
}

/// See [`Step`].
pub fn step(req: &Request) -> Step {
    match req.method {
        Method::Setup => {
            let all_tcp = req
                .header("Transport")
                .and_then(|h| transport::parse(h).ok())
                .is_some_and(|specs| {
                    !specs.is_empty() && specs.iter().all(|s| s.lower == Lower::Tcp)
                });
            if all_tcp {
                return Step::Splice;
            }
            let mut r = Response::error(
                461,
                "this node relays the room from another node over TCP only; use RTP/AVP/TCP \
                 (ffmpeg: -rtsp_transport tcp), or send to the room's node",
            );
            if let Some(cseq) = req.header("CSeq") {
                r.headers.insert(0, ("CSeq", cseq.to_owned()));
            }
            Step::Answer(r)
        }
        Method::Record | Method::Play => Step::Splice,
        _ => Step::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtsp::message::{Frame, Framer};

    fn request(text: &str) -> Request {
        let mut f = Framer::new();
        f.feed(text.as_bytes());
        match f.poll() {
            Ok(Some(Frame::Request(r))) => r,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn describe_and_announce_decide() {
        for (text, want) in [
            (
                "DESCRIBE rtsp://h:1/demo/cam RTSP/1.0\r\nCSeq: 2\r\n\r\n",
                Some("demo"),
            ),
            (
                "ANNOUNCE rtsp://h:1/demo/cam?token=x RTSP/1.0\r\nCSeq: 2\r\n\r\n",
                Some("demo"),
            ),
            (
                "OPTIONS rtsp://h:1/demo/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n",
                None,
            ),
            (
                "SETUP rtsp://h:1/demo/cam/trackID=0 RTSP/1.0\r\nCSeq: 3\r\n\r\n",
                None,
            ),
            ("DESCRIBE rtsp://h:1/ RTSP/1.0\r\nCSeq: 2\r\n\r\n", None),
            (
                "DESCRIBE rtsp://h:1/bad%20room/cam RTSP/1.0\r\nCSeq: 2\r\n\r\n",
                None,
            ),
            ("DESCRIBE * RTSP/1.0\r\nCSeq: 2\r\n\r\n", None),
        ] {
            let room = deciding_room(&request(text));
            assert_eq!(room.as_ref().map(|r| r.as_str()), want, "{text:?}");
        }
    }

    #[test]
    fn players_keep_path_and_query() {
        for (owner, uri, want) in [
            (
                "rtsp://10.0.0.2:8554",
                "rtsp://10.0.0.1:8554/demo/alice?token=a.b.c",
                Some("rtsp://10.0.0.2:8554/demo/alice?token=a.b.c"),
            ),
            (
                "rtsp://[::1]:9000",
                "rtsp://127.0.0.1:8554/demo/cam",
                Some("rtsp://[::1]:9000/demo/cam"),
            ),
            ("not a url", "rtsp://h/demo/cam", None),
            ("rtsp://h2:1", "*", None),
        ] {
            assert_eq!(location(owner, uri).as_deref(), want, "{owner} {uri}");
        }
    }

    #[test]
    fn only_tcp_interleaving_is_spliced() {
        let setup = |transport: &str| {
            request(&format!(
                "SETUP rtsp://h/r/c/streamid=0 RTSP/1.0\r\nCSeq: 4\r\nTransport: {transport}\r\n\r\n"
            ))
        };
        for (transport, spliced) in [
            ("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record", true),
            ("RTP/AVP/TCP;unicast;mode=record", true),
            (
                "RTP/AVP/UDP;unicast;client_port=5000-5001;mode=record",
                false,
            ),
            ("RTP/AVP;unicast;client_port=5000-5001", false),
            // The owner could choose the UDP alternative.
            (
                "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;interleaved=0-1",
                false,
            ),
            ("nonsense", false),
        ] {
            match step(&setup(transport)) {
                Step::Splice => assert!(spliced, "{transport}"),
                Step::Answer(r) => {
                    assert!(!spliced, "{transport}");
                    assert_eq!(r.status, 461);
                    assert_eq!(r.header("CSeq"), Some("4"), "the client matches it by CSeq");
                }
                Step::Forward => panic!("{transport}: a SETUP is never only forwarded"),
            }
        }
        let no_transport = request("SETUP rtsp://h/r/c RTSP/1.0\r\nCSeq: 4\r\n\r\n");
        assert!(matches!(step(&no_transport), Step::Answer(_)));
        for (text, want) in [
            (
                "RECORD rtsp://h/r/c RTSP/1.0\r\nCSeq: 5\r\n\r\n",
                Step::Splice,
            ),
            (
                "PLAY rtsp://h/r/c RTSP/1.0\r\nCSeq: 5\r\n\r\n",
                Step::Splice,
            ),
            ("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", Step::Forward),
            (
                "ANNOUNCE rtsp://h/r/c RTSP/1.0\r\nCSeq: 2\r\n\r\n",
                Step::Forward,
            ),
        ] {
            assert_eq!(step(&request(text)), want, "{text:?}");
        }
    }

    #[test]
    fn relayed_requests_read_back_the_same() {
        let text = "ANNOUNCE rtsp://h:1/demo/cam RTSP/1.0\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n";
        let r = request(text);
        let mut bytes = Vec::new();
        r.write(&mut bytes);
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), text);
        let mut again = request(std::str::from_utf8(&bytes).unwrap());
        again.position = r.position;
        assert_eq!(again, r);
    }
}
