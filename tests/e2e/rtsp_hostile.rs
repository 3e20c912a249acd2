//! The RTSP listener under misuse, driven by hand over raw TCP: each bad input gets its status
//! code or a closed connection, and the server keeps serving everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{run_with_server, TestServer};

/// Bound on every single exchange.
const T: Duration = Duration::from_secs(5);

/// What came back for a request.
#[derive(Debug)]
enum Reply {
    Response(Response),
    /// The server closed (or reset) the connection without a (further) response.
    Closed,
}

#[derive(Debug)]
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw RTSP connection.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Result<Raw> {
        let addr = SocketAddr::from(([127, 0, 0, 1], server.rtsp.port()));
        let stream = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .context("connecting to the RTSP port timed out")?
            .context("connecting to the RTSP port")?;
        Ok(Raw {
            stream,
            buf: Vec::new(),
        })
    }

    fn url(server: &TestServer, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{path}", server.rtsp.port())
    }

    /// Writes `bytes`; a server that already closed is not an error here (its answer, or
    /// the close, is what the next read sees).
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match tokio::time::timeout(T, self.stream.write_all(bytes)).await {
            Ok(_) => Ok(()),
            Err(_) => bail!("writing {} bytes took longer than {T:?}", bytes.len()),
        }
    }

    /// The next response (interleaved frames skipped), or `Closed`.
    async fn reply(&mut self) -> Result<Reply> {
        tokio::time::timeout(T, self.reply_inner())
            .await
            .with_context(|| {
                format!(
                    "neither a response nor a close within {T:?} (have {:?})",
                    String::from_utf8_lossy(&self.buf)
                )
            })?
    }

    async fn reply_inner(&mut self) -> Result<Reply> {
        loop {
            while self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = 4 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() < len {
                    break;
                }
                self.buf.drain(..len);
            }
            if self.buf.first() != Some(&b'$') {
                if let Some(r) = parse_response(&mut self.buf)? {
                    return Ok(Reply::Response(r));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(Reply::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `request` and expects a response.
    async fn request(&mut self, request: &str) -> Result<Response> {
        self.send(request.as_bytes()).await?;
        match self.reply().await? {
            Reply::Response(r) => Ok(r),
            Reply::Closed => bail!("the server closed the connection instead of answering"),
        }
    }

    /// The server closes the connection (reading whatever else comes), within `T`.
    async fn expect_closed(&mut self) -> Result<()> {
        loop {
            match self.reply().await? {
                Reply::Closed => return Ok(()),
                Reply::Response(r) => ensure!(
                    r.status >= 400,
                    "expected the connection to close, got {r:?}"
                ),
            }
        }
    }
}

/// A complete response at the start of `buf`, removed from it.
fn parse_response(buf: &mut Vec<u8>) -> Result<Option<Response>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    ensure!(
        parts.next() == Some("RTSP/1.0"),
        "not an RTSP/1.0 response: {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse())
        .transpose()?
        .unwrap_or(0);
    if buf.len() < end + 4 + len {
        return Ok(None);
    }
    let body = buf[end + 4..end + 4 + len].to_vec();
    buf.drain(..end + 4 + len);
    Ok(Some(Response {
        status,
        reason,
        headers,
        body,
    }))
}

fn expect_status(r: &Response, status: u16, what: &str) -> Result<()> {
    ensure!(
        r.status == status,
        "{what}: expected {status}, got {} {:?} (body {:?})",
        r.status,
        r.reason,
        String::from_utf8_lossy(&r.body)
    );
    Ok(())
}

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
    m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_status_and_the_server_keeps_serving() -> Result<()> {
    run_with_server(Duration::from_secs(90), |server| async move {
        let url = |path: &str| Raw::url(&server, path);

        // Random bytes, then the client stops sending: a 400 or a close, never a hang.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0b5e55ed);
        for round in 0..16 {
            let mut c = Raw::connect(&server).await?;
            let len = rng.random_range(1..8192);
            let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            c.send(&junk).await?;
            let _ = c.stream.shutdown().await;
            c.expect_closed()
                .await
                .with_context(|| format!("random bytes, round {round}"))?;
        }

        // Bytes that cannot start a request are refused at once.
        let mut c = Raw::connect(&server).await?;
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await?;
        match c.reply().await? {
            Reply::Response(r) => expect_status(&r, 400, "a TLS hello")?,
            Reply::Closed => {}
        }
        c.expect_closed().await.context("after a TLS hello")?;

        // A header block over 16 KiB: 400 echoing the CSeq, then the connection closes.
        let mut c = Raw::connect(&server).await?;
        let huge = format!(
            "OPTIONS {} RTSP/1.0\r\nCSeq: 1\r\nX-Padding: {}\r\n\r\n",
            url("demo/cam"),
            "a".repeat(20 * 1024)
        );
        let r = c.request(&huge).await.context("a huge header")?;
        expect_status(&r, 400, "a huge header")?;
        ensure!(r.header("CSeq") == Some("1"), "CSeq not echoed: {r:?}");
        c.expect_closed().await.context("after a huge header")?;

        // A body over 64 KiB is refused before it is read.
        let mut c = Raw::connect(&server).await?;
        let r = c
            .request(&format!(
                "ANNOUNCE {} RTSP/1.0\r\nCSeq: 3\r\nContent-Type: application/sdp\r\nContent-Length: 10000000\r\n\r\n",
                url("demo/cam")
            ))
            .await?;
        expect_status(&r, 400, "a 10 MB body")?;
        c.expect_closed().await.context("after a 10 MB body")?;

        // Missing and garbage CSeq: 400 without a CSeq; the connection stays usable.
        let mut c = Raw::connect(&server).await?;
        let r = c
            .request(&format!("OPTIONS {} RTSP/1.0\r\n\r\n", url("demo/cam")))
            .await?;
        expect_status(&r, 400, "no CSeq")?;
        ensure!(r.header("CSeq").is_none(), "{r:?}");
        let r = c
            .request(&format!(
                "OPTIONS {} RTSP/1.0\r\nCSeq: seven\r\n\r\n",
                url("demo/cam")
            ))
            .await?;
        expect_status(&r, 400, "CSeq: seven")?;
        ensure!(r.header("CSeq").is_none(), "{r:?}");

        // Interleaved data on a channel nobody set up is dropped; requests still work.
        c.send(b"$\x07\x00\x04abcd$\xff\x00\x00").await?;
        let r = c
            .request(&format!("OPTIONS {} RTSP/1.0\r\nCSeq: 2\r\n\r\n", url("demo/cam")))
            .await?;
        expect_status(&r, 200, "OPTIONS after stray interleaved data")?;
        ensure!(r.header("CSeq") == Some("2"), "{r:?}");
        ensure!(
            r.header("Public").is_some_and(|p| p.contains("ANNOUNCE")),
            "{r:?}"
        );

        // SETUP before ANNOUNCE or DESCRIBE.
        let r = c
            .request(&format!(
                "SETUP {} RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
                url("demo/cam/streamid=0")
            ))
            .await?;
        expect_status(&r, 455, "SETUP before ANNOUNCE")?;

        // An unknown method.
        let r = c
            .request(&format!("FROBNICATE {} RTSP/1.0\r\nCSeq: 4\r\n\r\n", url("demo/cam")))
            .await?;
        expect_status(&r, 501, "an unknown method")?;

        // A wrong Session id once a session exists.
        let r = c
            .request(&format!(
                "ANNOUNCE {} RTSP/1.0\r\nCSeq: 5\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
                url("hostile/cam"),
                SDP.len()
            ))
            .await?;
        expect_status(&r, 200, "ANNOUNCE")?;
        let r = c
            .request(&format!(
                "SETUP {} RTSP/1.0\r\nCSeq: 6\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n",
                url("hostile/cam/streamid=0")
            ))
            .await?;
        expect_status(&r, 200, "SETUP")?;
        let session = r
            .header("Session")
            .context("SETUP without Session")?
            .to_string();
        ensure!(session.ends_with(";timeout=60"), "Session: {session}");
        let r = c
            .request(&format!(
                "RECORD {} RTSP/1.0\r\nCSeq: 7\r\nSession: not-{}\r\n\r\n",
                url("hostile/cam"),
                session.split(';').next().unwrap_or_default()
            ))
            .await?;
        expect_status(&r, 454, "RECORD with a wrong Session")?;
        drop(c);

        // DESCRIBE of an unknown room or participant.
        let mut c = Raw::connect(&server).await?;
        for (i, path) in ["nosuchroom/cam", "hostile/nobody"].iter().enumerate() {
            let r = c
                .request(&format!("DESCRIBE {} RTSP/1.0\r\nCSeq: {i}\r\n\r\n", url(path)))
                .await?;
            expect_status(&r, 404, &format!("DESCRIBE {path}"))?;
        }
        // Names outside the alphabet, and paths that are not /{room}/{id}.
        for (path, words) in [
            ("bad%20room/cam", "room name"),
            ("demo/c%2Fam", "participant id"),
            ("demo", "/{room}/{id}"),
        ] {
            let r = c
                .request(&format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 9\r\n\r\n", url(path)))
                .await?;
            expect_status(&r, 400, &format!("DESCRIBE {path}"))?;
            ensure!(
                r.reason.contains(words) && String::from_utf8_lossy(&r.body).contains(words),
                "DESCRIBE {path}: the answer should say what is wrong: {r:?}"
            );
        }
        drop(c);

        // After all that: a new connection is served, and so is HTTP.
        let mut c = Raw::connect(&server).await?;
        let r = c
            .request(&format!("OPTIONS {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", url("demo/cam")))
            .await?;
        expect_status(&r, 200, "OPTIONS on a fresh connection")?;
        let (status, body) = server.http_get("/healthz").await?;
        ensure!(status == 200 && body.trim() == "ok", "healthz: {status} {body}");

        // Every RTSP session the misuse opened is gone once its connection is.
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let (_, metrics) = server.http_get("/metrics").await?;
            if metrics.lines().any(|l| l == "confab_rtsp_sessions 0") {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "RTSP sessions still counted:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_does_not_hold_up_shutdown() -> Result<()> {
    let mut server = TestServer::start().await?;
    let result = async {
        let mut idle = Raw::connect(&server).await?;
        // And one that sent half a request.
        let mut half = Raw::connect(&server).await?;
        half.send(b"OPTIONS rtsp://127.0.0.1/demo/cam RTSP/1.0\r\nCSeq: 1\r\n")
            .await?;
        // Both connections are accepted and being served before the signal.
        let mut probe = Raw::connect(&server).await?;
        let r = probe
            .request("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            .await?;
        expect_status(&r, 200, "OPTIONS")?;

        server.terminate()?;
        let status = server.wait_exit(T).await?;
        ensure!(status.success(), "exit status {status}");
        for (what, c) in [("idle", &mut idle), ("half a request", &mut half)] {
            c.expect_closed()
                .await
                .with_context(|| format!("the {what} client after shutdown"))?;
        }
        Ok(())
    }
    .await;
    result.map_err(|e| {
        anyhow::anyhow!(
            "{e:?}\n\n--- server output (last 80 lines) ---\n{}",
            server.log_tail(80)
        )
    })
}
