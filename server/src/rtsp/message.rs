//! RTSP/1.0 messages on one connection: framing of the client's byte stream and writing of
//! responses.
//!
//! A client's stream mixes requests (RFC 2326 §6: request line, headers, an optional body of
//! `Content-Length` bytes) and interleaved binary frames (§10.12: `$`, channel, 16-bit length,
//! data) in any order, and may pipeline requests. [`Framer`] takes bytes as they arrive, in
//! pieces of any size, and hands out whole [`Frame`]s. It is pure: no I/O, no clock.
//!
//! Limits keep a hostile client from making the server buffer without bound: a header block
//! of at most [`MAX_HEAD`] bytes and a body of at most [`MAX_BODY`] bytes. Anything that is
//! not a well-formed request or frame is a [`FrameError`] carrying the byte position in the
//! connection's stream and the offending text, enough to find the spot in a packet capture.
//! After an error the framer stays failed: the stream's framing is lost, and the connection is
//! answered `400 Bad Request` and closed.
//!
//! Line ends: CRLF, and also a bare LF, which RFC 2326 §15 asks receivers to accept.

use std::borrow::Cow;
use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Longest header block (request line and headers, with the blank line) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request body accepted (an ANNOUNCE's SDP is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 64;

/// How much [`Framer::read_buffer`] allocates at a time: a few reads' worth, so that the
/// unframed rest is moved once per block, not once per read.
const READ_BLOCK: usize = 64 * 1024;

/// The bounds a [`Framer`] enforces (`[limits]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerLimits {
    pub head: usize,
    pub headers: usize,
    pub body: usize,
}

impl Default for FramerLimits {
    fn default() -> Self {
        FramerLimits {
            head: MAX_HEAD,
            headers: MAX_HEADERS,
            body: MAX_BODY,
        }
    }
}

/// An RTSP method (RFC 2326 §10). Names are case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Options,
    Describe,
    Announce,
    Setup,
    Play,
    Pause,
    Record,
    Teardown,
    GetParameter,
    SetParameter,
    /// Anything else, as written (`REDIRECT`, `GET`, …).
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "OPTIONS" => Method::Options,
            "DESCRIBE" => Method::Describe,
            "ANNOUNCE" => Method::Announce,
            "SETUP" => Method::Setup,
            "PLAY" => Method::Play,
            "PAUSE" => Method::Pause,
            "RECORD" => Method::Record,
            "TEARDOWN" => Method::Teardown,
            "GET_PARAMETER" => Method::GetParameter,
            "SET_PARAMETER" => Method::SetParameter,
            other => Method::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Options => "OPTIONS",
            Method::Describe => "DESCRIBE",
            Method::Announce => "ANNOUNCE",
            Method::Setup => "SETUP",
            Method::Play => "PLAY",
            Method::Pause => "PAUSE",
            Method::Record => "RECORD",
            Method::Teardown => "TEARDOWN",
            Method::GetParameter => "GET_PARAMETER",
            Method::SetParameter => "SET_PARAMETER",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request as the client sent it; header values are trimmed, folded lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The Request-URI as written (`rtsp://host:port/room/id/trackID=1`, or `*`).
    pub uri: String,
    /// As written, e.g. `RTSP/1.0`.
    pub version: String,
    /// In order; names as written.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Offset of the request's first byte in the connection's stream.
    pub position: u64,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends the request in RTSP/1.0 wire format, as read (folded header lines come out
    /// joined): what a relay passes on to another node.
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{} {} {}\r\n", self.method, self.uri, self.version);
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// What a connection's stream is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request(Request),
    /// An interleaved binary frame (RTP or RTCP on `channel`).
    Interleaved {
        channel: u8,
        data: Bytes,
    },
}

/// Why the stream cannot be framed; see [`FrameError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameErrorKind {
    #[error("not an RTSP request: byte 0x{0:02x} where a method name belongs")]
    NotRequest(u8),
    #[error("malformed request line: {0}")]
    RequestLine(&'static str),
    #[error("header block longer than the limit")]
    HeadTooLarge,
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("malformed header line: {0}")]
    HeaderLine(&'static str),
    #[error("Content-Length is not a number")]
    ContentLength,
    #[error("body of {0} bytes is longer than the limit")]
    BodyTooLarge(u64),
}

/// A framing error: where in the stream, what, and the text around it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte {position}: {kind} (at {context:?})")]
pub struct FrameError {
    /// Offset in the connection's stream of the offending byte or line.
    pub position: u64,
    pub kind: FrameErrorKind,
    /// The offending line (escaped, shortened).
    pub context: String,
    /// The request's CSeq if it could be read, so the `400` can echo it.
    pub cseq: Option<u32>,
}

/// Streaming framer of one connection's input; see the module docs.
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    position: u64,
    /// Where in `buf` the current header block's next unterminated line starts.
    line_start: usize,
    /// How far past `line_start` is known to hold no line end, so that bytes are scanned
    /// once however the input is split.
    scanned: usize,
    /// Whether the current message's request line has been checked.
    line_checked: bool,
    /// A complete header block waiting for its body: its length and contents.
    head: Option<(usize, Head)>,
    failed: Option<FrameError>,
    limits: FramerLimits,
}

/// The longest method name looked at before giving up on a stream (the longest real one,
/// `GET_PARAMETER`, has 13 characters).
const MAX_METHOD: usize = 32;

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: FramerLimits) -> Self {
        Framer {
            limits,
            ..Self::default()
        }
    }

    /// Appends bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read the connection into directly, with room for at least `at_least`
    /// more bytes: append to it (`read_buf`) and nothing else, or the framing is lost.
    ///
    /// This is the zero-copy way in. Interleaved frames are split off this buffer, so the RTP
    /// packets a camera sends stay where the socket put them all the way to the engine. A
    /// buffer still shared with frames in use is not grown in place: the unframed rest (less
    /// than a frame) moves to a new allocation of the first one's size, and the old one is
    /// freed once its frames are.
    pub fn read_buffer(&mut self, at_least: usize) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < at_least {
            self.buf.reserve(at_least.max(READ_BLOCK));
        }
        &mut self.buf
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes held that do not make a whole frame yet, as they arrived: for a relay
    /// that stops framing and passes the rest of the stream on unread. The framer is left
    /// empty, for a new stream.
    pub fn take_buffered(&mut self) -> BytesMut {
        let rest = std::mem::take(&mut self.buf);
        *self = Framer::with_limits(self.limits);
        rest
    }

    /// The next whole frame, `Ok(None)` if more input is needed. An error is final: every
    /// later call returns it again.
    pub fn poll(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.poll_inner();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn poll_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.line_start == 0 {
            // Empty lines between messages are allowed (some clients send a CRLF as a
            // keepalive).
            let blank = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.consume(blank);
        }
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        if first == b'$' && self.line_start == 0 {
            return Ok(self.interleaved());
        }
        self.request()
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.position += n as u64;
    }

    fn interleaved(&mut self) -> Option<Frame> {
        if self.buf.len() < 4 {
            return None;
        }
        let channel = self.buf[1];
        let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
        if self.buf.len() < 4 + len {
            return None;
        }
        let mut frame = self.buf.split_to(4 + len);
        frame.advance(4);
        self.position += (4 + len) as u64;
        Some(Frame::Interleaved {
            channel,
            data: frame.freeze(),
        })
    }

    fn request(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.head.is_none() {
            // Fail fast on bytes that cannot start a request (random data, TLS, a binary
            // frame without its `$`) instead of buffering up to the header limit.
            if !self.line_checked {
                self.check_method_prefix()?;
            }
            let Some(head_len) = self.find_head_end()? else {
                return Ok(None);
            };
            let head = self.parse_head(head_len)?;
            self.head = Some((head_len, head));
        }
        let Some((head_len, head)) = &self.head else {
            return Ok(None);
        };
        // `parse_head` checked the length against MAX_BODY.
        let total = head_len + head.content_length as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let (head_len, head) = self.head.take().expect("checked just above");
        let position = self.position;
        let mut message = self.buf.split_to(total);
        self.position += total as u64;
        self.line_start = 0;
        self.scanned = 0;
        self.line_checked = false;
        message.advance(head_len);
        Ok(Some(Frame::Request(Request {
            method: head.method,
            uri: head.uri,
            version: head.version,
            headers: head.headers,
            body: message.freeze(),
            position,
        })))
    }

    /// Checks the bytes before the first space (or all so far) are method-name characters.
    fn check_method_prefix(&self) -> Result<(), FrameError> {
        for (i, &b) in self.buf.iter().enumerate().take(MAX_METHOD + 1) {
            if b == b' ' && i > 0 {
                return Ok(());
            }
            if !is_token_char(b) || i == MAX_METHOD {
                let line_end = self
                    .buf
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(self.buf.len());
                let kind = if is_token_char(b) {
                    FrameErrorKind::RequestLine("the method name is too long")
                } else {
                    FrameErrorKind::NotRequest(b)
                };
                return Err(self.error(
                    self.position + i as u64,
                    kind,
                    &self.buf[..line_end],
                    None,
                ));
            }
        }
        Ok(())
    }

    /// The length of the header block (through its blank line) once it is all here.
    fn find_head_end(&mut self) -> Result<Option<usize>, FrameError> {
        loop {
            let from = self.line_start + self.scanned;
            let Some(nl) = self.buf[from..].iter().position(|&b| b == b'\n') else {
                if self.buf.len() > self.limits.head {
                    return Err(self.too_large());
                }
                self.scanned = self.buf.len() - self.line_start;
                return Ok(None);
            };
            let line_end = from + nl;
            let line = strip_cr(&self.buf[self.line_start..line_end]);
            if self.line_start == 0 {
                self.check_request_line(line)?;
                self.line_checked = true;
            }
            let was_blank = line.is_empty() && self.line_start > 0;
            self.line_start = line_end + 1;
            self.scanned = 0;
            if self.line_start > self.limits.head {
                return Err(self.too_large());
            }
            if was_blank {
                return Ok(Some(self.line_start));
            }
        }
    }

    fn too_large(&self) -> FrameError {
        let first_line_end = self
            .buf
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.buf.len());
        // The CSeq, if it came before the limit, lets the 400 be matched to the request.
        let cseq = self.buf[..self.line_start.min(self.buf.len())]
            .split(|&b| b == b'\n')
            .skip(1)
            .filter_map(|l| std::str::from_utf8(strip_cr(l)).ok())
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("cseq"))
            .and_then(|(_, v)| v.trim().parse().ok());
        self.error(
            self.position + self.limits.head as u64,
            FrameErrorKind::HeadTooLarge,
            &self.buf[..first_line_end],
            cseq,
        )
    }

    fn check_request_line(&self, line: &[u8]) -> Result<(), FrameError> {
        let bad =
            |what| Err(self.error(self.position, FrameErrorKind::RequestLine(what), line, None));
        let Ok(text) = std::str::from_utf8(line) else {
            return bad("not UTF-8");
        };
        let parts: Vec<&str> = text.split(' ').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return bad("expected `METHOD URI RTSP/1.0`");
        }
        let version = parts[2].as_bytes();
        let version_ok = version.len() == 8
            && version.starts_with(b"RTSP/")
            && version[5].is_ascii_digit()
            && version[6] == b'.'
            && version[7].is_ascii_digit();
        if !version_ok {
            return bad("the protocol is not RTSP/x.y");
        }
        if parts[1].bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return bad("the URI has control characters or non-ASCII bytes");
        }
        Ok(())
    }

    fn parse_head(&self, head_len: usize) -> Result<Head, FrameError> {
        let mut head = Head {
            method: Method::Options,
            uri: String::new(),
            version: String::new(),
            headers: Vec::new(),
            cseq: None,
            content_length: 0,
        };
        // Where each header's first line starts, for errors about its value.
        let mut header_pos: Vec<u64> = Vec::new();
        let mut offset = 0usize;
        for (n, raw) in self.buf[..head_len]
            .split_inclusive(|&b| b == b'\n')
            .enumerate()
        {
            let line_pos = self.position + offset as u64;
            offset += raw.len();
            let line = strip_cr(raw.strip_suffix(b"\n").unwrap_or(raw));
            if line.is_empty() {
                break;
            }
            let bad = |kind| self.error(line_pos, kind, line, cseq(&head.headers));
            let Ok(text) = std::str::from_utf8(line) else {
                return Err(bad(FrameErrorKind::HeaderLine("not UTF-8")));
            };
            if line.contains(&b'\r') {
                // A lone CR would end the line for some readers and not for others, and header
                // values are echoed in responses (`Unsupported`).
                return Err(bad(FrameErrorKind::HeaderLine("a CR inside the line")));
            }
            if n == 0 {
                // Its shape was checked by `check_request_line`.
                let mut parts = text.split(' ');
                head.method = Method::parse(parts.next().unwrap_or_default());
                head.uri = parts.next().unwrap_or_default().to_owned();
                head.version = parts.next().unwrap_or_default().to_owned();
                continue;
            }
            if text.starts_with([' ', '\t']) {
                // A folded continuation of the previous header (RFC 2326 §4, RFC 822).
                let Some((_, value)) = head.headers.last_mut() else {
                    // No header yet, so no CSeq either.
                    let kind = FrameErrorKind::HeaderLine("continuation line without a header");
                    return Err(self.error(line_pos, kind, line, None));
                };
                // Joined with one space, so that the value stays trimmed however the lines
                // were padded (a blank continuation adds nothing).
                let more = text.trim();
                if !more.is_empty() {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(more);
                }
                continue;
            }
            let Some((name, value)) = text.split_once(':') else {
                return Err(bad(FrameErrorKind::HeaderLine("no `:`")));
            };
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(bad(FrameErrorKind::HeaderLine(
                    "the header name is not a token",
                )));
            }
            if head.headers.len() >= self.limits.headers {
                return Err(bad(FrameErrorKind::TooManyHeaders(self.limits.headers)));
            }
            head.headers
                .push((name.to_owned(), value.trim().to_owned()));
            header_pos.push(line_pos);
        }
        // CSeq and Content-Length are read from the whole (unfolded) values, the same ones the
        // session sees, so that a continuation line cannot make them say something else.
        head.cseq = cseq(&head.headers);
        let mut content_length: Option<u64> = None;
        for ((name, value), &pos) in head.headers.iter().zip(&header_pos) {
            if !name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let line = format!("{name}: {value}");
            let bad = |kind| self.error(pos, kind, line.as_bytes(), head.cseq);
            let Ok(n) = value.parse::<u64>() else {
                return Err(bad(FrameErrorKind::ContentLength));
            };
            if content_length.is_some_and(|m| m != n) {
                return Err(bad(FrameErrorKind::HeaderLine(
                    "two different Content-Length headers",
                )));
            }
            if n > self.limits.body as u64 {
                return Err(bad(FrameErrorKind::BodyTooLarge(n)));
            }
            content_length = Some(n);
        }
        head.content_length = content_length.unwrap_or(0);
        Ok(head)
    }

    fn error(
        &self,
        position: u64,
        kind: FrameErrorKind,
        context: &[u8],
        cseq: Option<u32>,
    ) -> FrameError {
        FrameError {
            position,
            kind,
            context: escape(context),
            cseq,
        }
    }
}

/// A parsed header block.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: String,
    version: String,
    headers: Vec<(String, String)>,
    cseq: Option<u32>,
    content_length: u64,
}

/// The first CSeq header's value, if it is a number.
fn cseq(headers: &[(String, String)]) -> Option<u32> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("cseq"))
        .and_then(|(_, v)| v.parse().ok())
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// RFC 2616 §2.2 token characters (RFC 2326 §15 uses the same), the alphabet of method and
/// header names.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// At most 80 bytes, printable, for error messages and logs.
fn escape(bytes: &[u8]) -> String {
    let mut s: String = bytes[..bytes.len().min(80)].escape_ascii().to_string();
    if bytes.len() > 80 {
        s.push('…');
    }
    s
}

/// A response to write. `CSeq` and `Session` are added by the session; `Content-Length` by
/// [`write`](Response::write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: Cow<'static, str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    /// A response with the standard reason phrase and no body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            reason: Cow::Borrowed(reason_phrase(status)),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// An error whose reason phrase and `text/plain` body say what went wrong (clients such
    /// as ffmpeg show the reason phrase to their user).
    pub fn error(status: u16, message: &str) -> Self {
        let reason: String = message
            .chars()
            .take(160)
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let reason = if reason.trim().is_empty() {
            Cow::Borrowed(reason_phrase(status))
        } else {
            Cow::Owned(reason)
        };
        Response {
            status,
            reason,
            headers: Vec::new(),
            body: Bytes::from(format!("{message}\n")),
        }
        .with_header("Content-Type", "text/plain; charset=utf-8")
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.headers.push(("Content-Type", content_type.to_owned()));
        self.body = body.into();
        self
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends the response in RTSP/1.0 wire format.
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "RTSP/1.0 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(out, "Server: confab\r\n");
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
        out.extend_from_slice(&self.body);
    }
}

/// RFC 2326 §7.1.1 reason phrases.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        451 => "Parameter Not Understood",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        551 => "Option not supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = framer.poll()? {
            out.push(f);
        }
        Ok(out)
    }

    fn one(input: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut f = Framer::new();
        f.feed(input);
        frames(&mut f)
    }

    const OPTIONS: &[u8] = b"OPTIONS rtsp://h/r/c RTSP/1.0\r\nCSeq: 1\r\n\r\n";
    const ANNOUNCE: &[u8] = b"ANNOUNCE rtsp://h/r/c RTSP/1.0\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n";

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(OPTIONS);
        s.extend_from_slice(b"$\x00\x00\x03abc");
        s.extend_from_slice(ANNOUNCE);
        s.extend_from_slice(b"\r\n$\x01\x00\x00");
        s.extend_from_slice(b"GET_PARAMETER * RTSP/1.0\nCSeq: 3\nSession: x\n  ;timeout=60\n\n");
        s
    }

    fn check_stream(frames: &[Frame]) {
        assert_eq!(frames.len(), 5, "{frames:#?}");
        let Frame::Request(r) = &frames[0] else {
            panic!("{:?}", frames[0])
        };
        assert_eq!(r.method, Method::Options);
        assert_eq!(r.uri, "rtsp://h/r/c");
        assert_eq!(r.version, "RTSP/1.0");
        assert_eq!(r.header("cseq"), Some("1"));
        assert_eq!(r.position, 0);
        assert_eq!(
            frames[1],
            Frame::Interleaved {
                channel: 0,
                data: Bytes::from_static(b"abc")
            }
        );
        let Frame::Request(r) = &frames[2] else {
            panic!()
        };
        assert_eq!(r.method, Method::Announce);
        assert_eq!(&r.body[..], b"v=0\r\n");
        assert_eq!(r.position, (OPTIONS.len() + 7) as u64);
        assert_eq!(
            frames[3],
            Frame::Interleaved {
                channel: 1,
                data: Bytes::new()
            }
        );
        let Frame::Request(r) = &frames[4] else {
            panic!()
        };
        assert_eq!(r.method, Method::GetParameter);
        assert_eq!(r.uri, "*");
        assert_eq!(r.header("Session"), Some("x ;timeout=60"));
    }

    #[test]
    fn pipelined_requests_and_interleaved_frames() {
        check_stream(&one(&stream()).unwrap());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let s = stream();
        for split in 0..=s.len() {
            let mut f = Framer::new();
            let mut got = Vec::new();
            f.feed(&s[..split]);
            got.extend(frames(&mut f).unwrap());
            f.feed(&s[split..]);
            got.extend(frames(&mut f).unwrap());
            check_stream(&got);
            assert_eq!(f.buffered(), 0);
        }
        // And one byte at a time.
        let mut f = Framer::new();
        let mut got = Vec::new();
        for b in &s {
            f.feed(std::slice::from_ref(b));
            got.extend(frames(&mut f).unwrap());
        }
        check_stream(&got);
    }

    /// What is read into [`Framer::read_buffer`] is handed out in place: an interleaved
    /// frame's data is the memory the read wrote, not a copy of it, also when reads end
    /// mid-frame and the buffer is still shared with earlier frames.
    #[test]
    fn read_buffer_frames_are_not_copied() {
        let mut wire = Vec::new();
        let mut starts = Vec::new();
        for n in 0..200u16 {
            let data = vec![n as u8; 1000 + usize::from(n)];
            wire.extend_from_slice(&[b'$', (n % 2) as u8]);
            wire.extend_from_slice(&(data.len() as u16).to_be_bytes());
            starts.push(wire.len());
            wire.extend_from_slice(&data);
        }
        wire.extend_from_slice(OPTIONS);
        const READ: usize = 1500;
        let mut f = Framer::new();
        // Where each read put its bytes, and every frame handed out (kept alive, so no
        // allocation is reused while the test looks at addresses).
        let mut reads: Vec<*const u8> = Vec::new();
        let mut got = Vec::new();
        let mut requests = 0;
        for read in wire.chunks(READ) {
            let buf = f.read_buffer(4096);
            let at = buf.len();
            buf.extend_from_slice(read);
            reads.push(buf[at..].as_ptr());
            while let Some(frame) = f.poll().unwrap() {
                match frame {
                    Frame::Interleaved { channel, data } => got.push((channel, data)),
                    Frame::Request(_) => requests += 1,
                }
            }
        }
        assert_eq!(requests, 1);
        assert_eq!(got.len(), 200);
        let mut in_place = 0;
        for (n, (channel, data)) in got.iter().enumerate() {
            assert_eq!(*channel, (n % 2) as u8);
            assert_eq!(data.len(), 1000 + n);
            assert!(data.iter().all(|&b| b == n as u8));
            let (read, offset) = (starts[n] / READ, starts[n] % READ);
            in_place += usize::from(std::ptr::eq(
                data.as_ptr(),
                reads[read].wrapping_add(offset),
            ));
        }
        // Only a frame cut by the end of a 64 KiB block moves (with the unframed rest).
        assert!(
            in_place >= 190,
            "only {in_place} of 200 frames are where they were read"
        );
    }

    #[test]
    fn errors_carry_position_context_and_cseq() {
        // (input, kind, position)
        let long_header = {
            let mut s = b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\nX: ".to_vec();
            s.extend(std::iter::repeat_n(b'a', MAX_HEAD));
            s
        };
        let cases: Vec<(Vec<u8>, FrameErrorKind, u64, Option<u32>)> = vec![
            (
                b"\x16\x03\x01\x02\x00".to_vec(),
                FrameErrorKind::NotRequest(0x16),
                0,
                None,
            ),
            (
                b"OPTIONS * RTSP/1.0\r\n\r\nOPT\x00".to_vec(),
                FrameErrorKind::NotRequest(0),
                25,
                None,
            ),
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                FrameErrorKind::RequestLine("the protocol is not RTSP/x.y"),
                0,
                None,
            ),
            (
                b"OPTIONS  * RTSP/1.0\r\n".to_vec(),
                FrameErrorKind::RequestLine("expected `METHOD URI RTSP/1.0`"),
                0,
                None,
            ),
            (
                b"OPTIONS * RTSP/1.0\r\nCSeq: 4\r\nno colon\r\n\r\n".to_vec(),
                FrameErrorKind::HeaderLine("no `:`"),
                29,
                Some(4),
            ),
            (
                b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\nContent-Length: x\r\n\r\n".to_vec(),
                FrameErrorKind::ContentLength,
                29,
                Some(5),
            ),
            (
                b"ANNOUNCE * RTSP/1.0\r\nCSeq: 6\r\nContent-Length: 65537\r\n\r\n".to_vec(),
                FrameErrorKind::BodyTooLarge(65537),
                30,
                Some(6),
            ),
            (
                long_header,
                FrameErrorKind::HeadTooLarge,
                MAX_HEAD as u64,
                Some(7),
            ),
            (
                vec![b'A'; 100],
                FrameErrorKind::RequestLine("the method name is too long"),
                MAX_METHOD as u64,
                None,
            ),
            (
                {
                    let mut s = b"OPTIONS ".to_vec();
                    s.extend(std::iter::repeat_n(b'u', MAX_HEAD));
                    s
                },
                FrameErrorKind::HeadTooLarge,
                MAX_HEAD as u64,
                None,
            ),
        ];
        for (input, kind, position, cseq) in cases {
            let err = one(&input).unwrap_err();
            assert_eq!(err.kind, kind, "{}", input.escape_ascii());
            assert_eq!(err.position, position, "{err}");
            assert_eq!(err.cseq, cseq, "{err}");
            assert!(!err.context.is_empty() || input.is_empty(), "{err}");
        }
    }

    #[test]
    fn error_is_sticky() {
        let mut f = Framer::new();
        f.feed(b"\x00");
        let e = f.poll().unwrap_err();
        f.feed(OPTIONS);
        assert_eq!(f.poll().unwrap_err(), e);
    }

    #[test]
    fn body_at_the_limit_is_accepted() {
        let mut s = format!("ANNOUNCE * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: {MAX_BODY}\r\n\r\n")
            .into_bytes();
        s.extend(std::iter::repeat_n(b'x', MAX_BODY));
        let got = one(&s).unwrap();
        let Frame::Request(r) = &got[0] else { panic!() };
        assert_eq!(r.body.len(), MAX_BODY);
    }

    /// A deterministic random-bytes loop: whatever arrives, the framer returns frames or an
    /// error, never panics, and never holds more than its limits allow.
    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let pieces: [&[u8]; 8] = [
            OPTIONS,
            ANNOUNCE,
            b"$\x00\x00\x04",
            b"\r\n",
            b"Content-Length: 3\r\n",
            b"SETUP rtsp://a/b/c RTSP/1.0\r\n",
            b": ",
            b"\n\n",
        ];
        for _ in 0..3000 {
            let mut f = Framer::new();
            for _ in 0..rng.random_range(1..20) {
                let mut chunk: Vec<u8> = if rng.random_bool(0.5) {
                    pieces[rng.random_range(0..pieces.len())].to_vec()
                } else {
                    (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
                };
                if rng.random_bool(0.1) {
                    chunk.truncate(rng.random_range(0..=chunk.len()));
                }
                f.feed(&chunk);
                loop {
                    match f.poll() {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            let _ = e.to_string();
                            break;
                        }
                    }
                }
                assert!(f.buffered() <= MAX_HEAD + MAX_BODY + 64 + 65535);
            }
        }
    }

    #[test]
    fn response_wire_format() {
        let mut out = Vec::new();
        Response::new(200)
            .with_header("CSeq", "3")
            .with_body("application/sdp", "v=0\r\n")
            .write(&mut out);
        assert_eq!(
            out,
            b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Type: application/sdp\r\nServer: confab\r\nContent-Length: 5\r\n\r\nv=0\r\n"
        );
        let e = Response::error(409, "cam is already live in demo;\r\n pick another name é");
        assert_eq!(
            e.reason,
            "cam is already live in demo;?? pick another name ?"
        );
        assert!(std::str::from_utf8(&e.body).unwrap().contains('é'));
    }

    #[test]
    fn configured_limits_bound_header_count_head_and_body() {
        let limits = FramerLimits {
            head: 1024,
            headers: 4,
            body: 100,
        };
        let mut f = Framer::with_limits(limits);
        f.feed(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
        assert!(f.poll().is_ok());
        let mut f = Framer::with_limits(limits);
        f.feed(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
        assert_eq!(
            f.poll().unwrap_err().kind,
            FrameErrorKind::TooManyHeaders(4)
        );
        let mut f = Framer::with_limits(limits);
        f.feed(b"ANNOUNCE * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 101\r\n\r\n");
        assert_eq!(
            f.poll().unwrap_err().kind,
            FrameErrorKind::BodyTooLarge(101)
        );
        let mut f = Framer::with_limits(limits);
        f.feed(format!("OPTIONS * RTSP/1.0\r\nX: {}\r\n", "a".repeat(1100)).as_bytes());
        assert_eq!(f.poll().unwrap_err().kind, FrameErrorKind::HeadTooLarge);
    }

    /// Frames `input` fed in pieces of `size` bytes: the frames, and the error if any.
    fn framed(input: &[u8], size: usize) -> (Vec<Frame>, Option<(FrameErrorKind, u64)>) {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for piece in input.chunks(size.max(1)) {
            f.feed(piece);
            loop {
                match f.poll() {
                    Ok(Some(frame)) => out.push(frame),
                    Ok(None) => break,
                    Err(e) => return (out, Some((e.kind, e.position))),
                }
            }
        }
        (out, None)
    }

    /// What `fuzz/fuzz_targets/rtsp_message.rs` found, replayed with its checks: the same
    /// frames however the stream is split, and requests that survive being written back.
    #[test]
    fn fuzz_regressions() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/fuzz/rtsp_message");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let whole = framed(&input, input.len());
            assert_eq!(whole, framed(&input, 1), "{path:?}");
            assert_eq!(whole, framed(&input, 7), "{path:?}");
            for frame in &whole.0 {
                let Frame::Request(req) = frame else { continue };
                for (name, value) in &req.headers {
                    assert_eq!(value.trim(), value, "{path:?}: {name} is trimmed");
                }
                let mut text = format!("{} {} {}\r\n", req.method, req.uri, req.version);
                for (name, value) in &req.headers {
                    text.push_str(&format!("{name}: {value}\r\n"));
                }
                text.push_str("\r\n");
                let mut again = text.into_bytes();
                again.extend_from_slice(&req.body);
                let Ok(Some(Frame::Request(back))) = one(&again).map(|f| f.into_iter().next())
                else {
                    panic!("{path:?}: {req:?} written back does not frame");
                };
                assert_eq!(back.headers, req.headers, "{path:?}");
                assert_eq!(back.body, req.body, "{path:?}");
            }
            n += 1;
        }
        assert!(n > 0, "no inputs in {dir}");
    }
}
