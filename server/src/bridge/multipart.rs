//! `multipart/x-mixed-replace` (an MJPEG stream over HTTP) split into its parts: sans-I/O,
//! bytes in, whole JPEG pictures out, with bounded memory against a hostile server.
//!
//! Why our own splitter: the maintained multipart crates (`multer`, which axum uses for uploads)
//! parse `multipart/form-data` bodies of finite length, want a `Content-Disposition` per part and
//! the RFC 2046 framing to the letter. MJPEG servers do not keep to it: mjpg-streamer, motion and
//! ffmpeg's `mpjpeg` send `Content-Length` per part and whatever bytes they like around the
//! delimiter; Flask `video_feed` examples send no length at all; some servers declare
//! `boundary=--frame` and write `--frame` (or `----frame`) lines; some write LF where CRLF is due,
//! or no blank line before the picture. The stream never ends, so a form parser's limit on the
//! whole body does not apply; what must be bounded is one part.
//!
//! What is accepted (RFC 2046 §5.1.1, leniently):
//! - A delimiter line is 2 to 4 dashes, the boundary without its own leading dashes, optionally
//!   `--` (the close delimiter), up to [`MAX_PADDING`] spaces or tabs, and CRLF or LF.
//! - Before a part's delimiter, anything that is not one is skipped ([`Limits::max_junk`] bytes
//!   at most): the preamble, a part's trailing CRLF, a server's stray bytes.
//! - Part headers follow the delimiter, ending with an empty line. `Content-Length` sets the
//!   part's length; without it the part ends at the line break before the next delimiter line.
//!   A header line that starts a JPEG (`FF D8`) is taken as the body's start (a server that
//!   forgot the empty line).
//!
//! Invariants, checked by the unit tests and the `multipart` fuzz target:
//! - No input panics.
//! - The bytes held never exceed [`Splitter::capacity`]: a part over [`Limits::max_part`]
//!   (declared or found), headers over [`Limits::max_headers`] or junk over [`Limits::max_junk`]
//!   is an error, found as soon as the bytes held prove it.
//! - However the stream is cut into pushes, the same parts come out, and the same error.
//! - Searching is linear: each byte is looked at a bounded number of times.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// How much a part, its headers and the junk between parts may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest part body (a JPEG picture).
    pub max_part: usize,
    /// The largest header block of a part (from after the delimiter line to its empty line).
    pub max_headers: usize,
    /// The most bytes skipped while looking for a delimiter line.
    pub max_junk: usize,
}

impl Limits {
    /// What confab uses: 8 MiB pictures (a 4K JPEG at high quality is 2-4 MiB) and 8 KiB of
    /// headers. Junk is not kept (only the last few bytes, which may start a delimiter), so its
    /// limit bounds time, not memory: 8 MiB, so that a server that writes its first picture
    /// before its first boundary line still gets through.
    pub const DEFAULT: Limits = Limits {
        max_part: 8 << 20,
        max_headers: 8 << 10,
        max_junk: 8 << 20,
    };
}

/// Spaces and tabs allowed after a boundary (RFC 2046's transport padding).
pub const MAX_PADDING: usize = 64;

/// The most bytes one [`Splitter::push`] takes; feed longer input in pieces, taking the parts
/// out between them.
pub const MAX_PUSH: usize = 64 << 10;

/// Dashes before the boundary on a delimiter line: RFC 2046 says two; servers that declare
/// `boundary=--x` and write `----x` make four.
const MIN_DASHES: usize = 2;
const MAX_DASHES: usize = 4;

/// Why the stream cannot be split any further. Positions are byte offsets in the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error(
        "byte {at}: no boundary line (--{boundary}) within {limit} bytes; is this an MJPEG stream?"
    )]
    NoBoundary {
        at: u64,
        boundary: String,
        limit: usize,
    },
    #[error("byte {at}: part headers longer than {limit} bytes")]
    HeadersTooLong { at: u64, limit: usize },
    #[error("byte {at}: part of {len} bytes (its Content-Length) is over the {limit}-byte limit")]
    PartTooLarge { at: u64, len: u64, limit: usize },
    #[error("byte {at}: part runs over {limit} bytes without a boundary line")]
    UnboundedPart { at: u64, limit: usize },
    #[error("byte {at}: Content-Length {value:?} is not a number")]
    BadLength { at: u64, value: String },
    #[error("{len} bytes pushed at once; push at most {MAX_PUSH} and take the parts out between")]
    PushTooLarge { len: usize },
}

/// A problem with the `Content-Type` of the response itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundaryError {
    #[error("Content-Type {0:?} has no boundary parameter")]
    Missing(String),
    #[error(
        "boundary {0:?} is empty, all dashes, longer than 200 bytes or has control characters"
    )]
    Invalid(String),
}

/// One part: its declared type, if any, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Skipping to the next delimiter line.
    Delimiter,
    /// Reading a part's header lines.
    Headers {
        content_type: Option<String>,
        length: Option<u64>,
        /// Header bytes consumed so far.
        used: usize,
    },
    /// Reading a part's body.
    Body {
        content_type: Option<String>,
        length: Option<usize>,
    },
    /// After the close delimiter: the rest is epilogue, dropped.
    Closed,
}

/// The splitter of one response body.
#[derive(Debug)]
pub struct Splitter {
    /// The boundary without its leading dashes.
    token: Vec<u8>,
    /// As declared, for messages.
    boundary: String,
    limits: Limits,
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    offset: u64,
    state: State,
    /// Bytes of junk skipped since the last part (state `Delimiter`).
    junk: usize,
    /// How far into `buf` the search for the delimiter has found nothing (state `Delimiter` and
    /// `Body` without a length): later searches start there.
    searched: usize,
}

/// The `boundary` parameter of a `multipart/…` Content-Type, quotes removed.
pub fn boundary_of(content_type: &str) -> Result<String, BoundaryError> {
    let value = content_type
        .split(';')
        .skip(1)
        .find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| BoundaryError::Missing(content_type.to_owned()))?;
    Ok(value)
}

impl Splitter {
    pub fn new(boundary: &str, limits: Limits) -> Result<Splitter, BoundaryError> {
        let token = boundary.trim_start_matches('-');
        if token.is_empty()
            || boundary.len() > 200
            || boundary.bytes().any(|b| b.is_ascii_control())
        {
            return Err(BoundaryError::Invalid(boundary.to_owned()));
        }
        Ok(Splitter {
            token: token.as_bytes().to_vec(),
            boundary: boundary.to_owned(),
            limits,
            buf: BytesMut::new(),
            offset: 0,
            state: State::Delimiter,
            junk: 0,
            searched: 0,
        })
    }

    /// The most bytes the splitter ever holds: a part at its limit, its delimiter line with
    /// padding, and one push.
    pub fn capacity(&self) -> usize {
        self.limits.max_part + self.limits.max_headers + self.delimiter_line_max() + 2 + MAX_PUSH
    }

    /// Bytes held now.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends `data` (at most [`MAX_PUSH`] bytes). Take the parts out with
    /// [`next_part`](Self::next_part) before the next push.
    pub fn push(&mut self, data: &[u8]) -> Result<(), MultipartError> {
        if data.len() > MAX_PUSH {
            return Err(MultipartError::PushTooLarge { len: data.len() });
        }
        if self.state == State::Closed {
            self.offset += data.len() as u64;
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete part, if the bytes pushed so far hold one.
    pub fn next_part(&mut self) -> Result<Option<Part>, MultipartError> {
        loop {
            let progressed = match std::mem::replace(&mut self.state, State::Closed) {
                State::Delimiter => self.delimiter()?,
                State::Headers {
                    content_type,
                    length,
                    used,
                } => self.headers(content_type, length, used)?,
                State::Body {
                    content_type,
                    length,
                } => match self.body(content_type, length)? {
                    Some(p) => return Ok(Some(p)),
                    None => false,
                },
                State::Closed => {
                    self.offset += self.buf.len() as u64;
                    self.buf.clear();
                    false
                }
            };
            if !progressed {
                return Ok(None);
            }
        }
    }

    /// The longest delimiter line: dashes, boundary, `--`, padding, CRLF.
    fn delimiter_line_max(&self) -> usize {
        MAX_DASHES + self.token.len() + 2 + MAX_PADDING + 2
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.offset += n as u64;
        self.searched = self.searched.saturating_sub(n);
    }

    /// Looks for a delimiter line at any position (junk before it is skipped). True when the
    /// state changed.
    fn delimiter(&mut self) -> Result<bool, MultipartError> {
        match self.find_delimiter(false) {
            Found::At { start, end, close } => {
                if self.junk + start > self.limits.max_junk {
                    return Err(self.no_boundary());
                }
                self.consume(end);
                self.junk = 0;
                self.searched = 0;
                self.state = if close {
                    State::Closed
                } else {
                    State::Headers {
                        content_type: None,
                        length: None,
                        used: 0,
                    }
                };
                Ok(true)
            }
            Found::Nothing { keep_from } => {
                // Everything before `keep_from` can never start a delimiter line.
                self.junk += keep_from;
                self.consume(keep_from);
                self.state = State::Delimiter;
                if self.junk > self.limits.max_junk {
                    return Err(self.no_boundary());
                }
                Ok(false)
            }
        }
    }

    fn no_boundary(&self) -> MultipartError {
        MultipartError::NoBoundary {
            at: self.offset,
            boundary: self.boundary.clone(),
            limit: self.limits.max_junk,
        }
    }

    /// Reads header lines. True when the state changed to the body (or an error).
    fn headers(
        &mut self,
        mut content_type: Option<String>,
        mut length: Option<u64>,
        mut used: usize,
    ) -> Result<bool, MultipartError> {
        loop {
            // A JPEG where a header line should be: the server left out the empty line.
            if self.buf.starts_with(&[0xFF, 0xD8]) {
                return self.start_body(content_type, length);
            }
            let wait = |s: &mut Self, content_type, length, used| {
                s.state = State::Headers {
                    content_type,
                    length,
                    used,
                };
                Ok(false)
            };
            if self.buf[..] == [0xFF] {
                return wait(self, content_type, length, used);
            }
            let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                if used + self.buf.len() > self.limits.max_headers {
                    return Err(MultipartError::HeadersTooLong {
                        at: self.offset,
                        limit: self.limits.max_headers,
                    });
                }
                return wait(self, content_type, length, used);
            };
            if used + nl + 1 > self.limits.max_headers {
                return Err(MultipartError::HeadersTooLong {
                    at: self.offset,
                    limit: self.limits.max_headers,
                });
            }
            let line = &self.buf[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                self.consume(nl + 1);
                return self.start_body(content_type, length);
            }
            if let Some((name, value)) = line
                .iter()
                .position(|&b| b == b':')
                .map(|c| (&line[..c], &line[c + 1..]))
            {
                let value = String::from_utf8_lossy(value).trim().to_owned();
                if name.trim_ascii().eq_ignore_ascii_case(b"content-type") {
                    content_type = Some(value);
                } else if name.trim_ascii().eq_ignore_ascii_case(b"content-length") {
                    let n = value
                        .parse::<u64>()
                        .map_err(|_| MultipartError::BadLength {
                            at: self.offset,
                            value: value.chars().take(40).collect(),
                        })?;
                    length = Some(n);
                }
            }
            used += nl + 1;
            self.consume(nl + 1);
        }
    }

    fn start_body(
        &mut self,
        content_type: Option<String>,
        length: Option<u64>,
    ) -> Result<bool, MultipartError> {
        let length = match length {
            Some(n) if n > self.limits.max_part as u64 => {
                return Err(MultipartError::PartTooLarge {
                    at: self.offset,
                    len: n,
                    limit: self.limits.max_part,
                })
            }
            Some(n) => Some(n as usize),
            None => None,
        };
        self.searched = 0;
        self.state = State::Body {
            content_type,
            length,
        };
        Ok(true)
    }

    fn body(
        &mut self,
        content_type: Option<String>,
        length: Option<usize>,
    ) -> Result<Option<Part>, MultipartError> {
        if let Some(n) = length {
            if self.buf.len() < n {
                self.state = State::Body {
                    content_type,
                    length,
                };
                return Ok(None);
            }
            let body = self.buf.split_to(n).freeze();
            self.offset += n as u64;
            self.searched = 0;
            self.state = State::Delimiter;
            return Ok(Some(Part { content_type, body }));
        }
        match self.find_delimiter(true) {
            Found::At { start, end, close } => {
                // The line break before the delimiter line belongs to it, not to the body.
                let mut body_end = start;
                if body_end > 0 && self.buf[body_end - 1] == b'\n' {
                    body_end -= 1;
                    if body_end > 0 && self.buf[body_end - 1] == b'\r' {
                        body_end -= 1;
                    }
                }
                if body_end > self.limits.max_part {
                    return Err(MultipartError::UnboundedPart {
                        at: self.offset,
                        limit: self.limits.max_part,
                    });
                }
                let body = self.buf.split_to(body_end).freeze();
                self.offset += body_end as u64;
                self.consume(end - body_end);
                self.searched = 0;
                self.state = if close {
                    State::Closed
                } else {
                    State::Headers {
                        content_type: None,
                        length: None,
                        used: 0,
                    }
                };
                Ok(Some(Part { content_type, body }))
            }
            Found::Nothing { keep_from } => {
                // `keep_from` bytes are body for sure, less the CRLF that may end it.
                if keep_from.saturating_sub(2) > self.limits.max_part {
                    return Err(MultipartError::UnboundedPart {
                        at: self.offset,
                        limit: self.limits.max_part,
                    });
                }
                self.state = State::Body {
                    content_type,
                    length,
                };
                Ok(None)
            }
        }
    }

    /// Finds the first delimiter line in `buf` at or after `searched`. In a body
    /// (`after_newline`) it must start a line; between parts it may start anywhere.
    fn find_delimiter(&mut self, after_newline: bool) -> Found {
        let token_len = self.token.len();
        let mut from = self.searched;
        loop {
            let hit = memmem::find(&self.buf[from..], &self.token).map(|i| from + i);
            let Some(t) = hit else {
                // The next token can start no earlier than `next`: every hit before it has
                // been looked at, and a partial token may end the buffer. Its dashes and the
                // line break before them are kept, so that it is judged on the same bytes
                // however the stream was cut.
                let next = from.max((self.buf.len() + 1).saturating_sub(token_len));
                self.searched = next;
                let keep_from = next.saturating_sub(MAX_DASHES + 2);
                return Found::Nothing { keep_from };
            };
            let dashes = self.buf[..t]
                .iter()
                .rev()
                .take(MAX_DASHES + 1)
                .take_while(|&&b| b == b'-')
                .count();
            let start = t - dashes.min(MAX_DASHES);
            let starts_line = start > 0 && self.buf[start - 1] == b'\n';
            let dashes_ok = (MIN_DASHES..=MAX_DASHES).contains(&dashes);
            if dashes_ok && (starts_line || !after_newline) {
                match self.line_end(t + token_len) {
                    LineEnd::Found { end, close } => {
                        return Found::At { start, end, close };
                    }
                    LineEnd::NeedMore => {
                        // Look at this hit again when more has arrived.
                        self.searched = t;
                        return Found::Nothing {
                            keep_from: start.saturating_sub(2),
                        };
                    }
                    LineEnd::NotADelimiter => {}
                }
            }
            from = t + 1;
        }
    }

    /// After a boundary at `at`: `--`? padding? CRLF|LF.
    fn line_end(&self, at: usize) -> LineEnd {
        let rest = &self.buf[at..];
        let (close, rest_at) = match rest {
            [b'-', b'-', ..] => (true, 2),
            [b'-'] | [] => return LineEnd::NeedMore,
            _ => (false, 0),
        };
        let mut i = rest_at;
        while i < rest.len() && i - rest_at <= MAX_PADDING {
            match rest[i] {
                b' ' | b'\t' => i += 1,
                b'\n' => {
                    return LineEnd::Found {
                        end: at + i + 1,
                        close,
                    }
                }
                b'\r' => {
                    return match rest.get(i + 1) {
                        Some(b'\n') => LineEnd::Found {
                            end: at + i + 2,
                            close,
                        },
                        Some(_) => LineEnd::NotADelimiter,
                        None => LineEnd::NeedMore,
                    }
                }
                _ => return LineEnd::NotADelimiter,
            }
        }
        if i - rest_at > MAX_PADDING {
            LineEnd::NotADelimiter
        } else {
            LineEnd::NeedMore
        }
    }
}

enum Found {
    /// A delimiter line from `start` (its first dash) to `end` (after its line break).
    At {
        start: usize,
        end: usize,
        close: bool,
    },
    /// None complete; bytes before `keep_from` can never start one.
    Nothing { keep_from: usize },
}

enum LineEnd {
    Found { end: usize, close: bool },
    NeedMore,
    NotADelimiter,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts as `(content type, body)`, and the error that ended the splitting, if any.
    type Outcome = (Vec<(Option<String>, Vec<u8>)>, Option<MultipartError>);

    const SMALL: Limits = Limits {
        max_part: 64,
        max_headers: 48,
        max_junk: 32,
    };

    /// Parts (as `(content type, body)`) and the error, if any, pushing `input` in pieces of
    /// `piece` bytes and taking the parts out after each; checks the bytes held stay under the
    /// capacity all along.
    fn split(boundary: &str, limits: Limits, input: &[u8], piece: usize) -> Outcome {
        let mut s = Splitter::new(boundary, limits).unwrap();
        let mut parts = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            if let Err(e) = s.push(chunk) {
                return (parts, Some(e));
            }
            loop {
                assert!(s.buffered() <= s.capacity(), "{} held", s.buffered());
                match s.next_part() {
                    Ok(Some(p)) => parts.push((p.content_type, p.body.to_vec())),
                    Ok(None) => break,
                    Err(e) => return (parts, Some(e)),
                }
            }
        }
        (parts, None)
    }

    /// The same as [`split`] however the input is cut.
    fn split_any(boundary: &str, limits: Limits, input: &[u8]) -> Outcome {
        let whole = split(boundary, limits, input, MAX_PUSH);
        for piece in [1, 2, 3, 7, 64] {
            let cut = split(boundary, limits, input, piece);
            assert_eq!(
                (&cut.0, cut.1.as_ref().map(std::mem::discriminant)),
                (&whole.0, whole.1.as_ref().map(std::mem::discriminant)),
                "pieces of {piece} vs whole: {:?} vs {:?} on {:?}",
                cut.1,
                whole.1,
                input.escape_ascii().to_string()
            );
        }
        whole
    }

    fn jpeg(n: u8) -> Vec<u8> {
        vec![0xFF, 0xD8, n, n, n, 0xFF, 0xD9]
    }

    #[test]
    fn servers_as_they_write_it() {
        let (a, b) = (jpeg(1), jpeg(2));
        let with_length = |bnd: &str, ct: &str, sep: &str| {
            let mut v = Vec::new();
            for body in [&a, &b] {
                v.extend_from_slice(
                    format!(
                        "--{bnd}{sep}Content-Type: {ct}{sep}Content-Length: {}{sep}{sep}",
                        body.len()
                    )
                    .as_bytes(),
                );
                v.extend_from_slice(body);
                v.extend_from_slice(sep.as_bytes());
            }
            v
        };
        let jpegs = vec![
            (Some("image/jpeg".to_owned()), a.clone()),
            (Some("image/jpeg".to_owned()), b.clone()),
        ];
        // ffmpeg mpjpeg, mjpg-streamer, motion: Content-Length, CRLF.
        assert_eq!(
            split_any(
                "ffmpeg",
                Limits::DEFAULT,
                &with_length("ffmpeg", "image/jpeg", "\r\n")
            ),
            (jpegs.clone(), None)
        );
        // LF only.
        assert_eq!(
            split_any(
                "frame",
                Limits::DEFAULT,
                &with_length("frame", "image/jpeg", "\n")
            ),
            (jpegs.clone(), None)
        );
        // Flask `video_feed`: no length, the part ends at the next delimiter line.
        let mut flask = Vec::new();
        for body in [&a, &b] {
            flask.extend_from_slice(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n");
            flask.extend_from_slice(body);
            flask.extend_from_slice(b"\r\n");
        }
        flask.extend_from_slice(b"--frame\r\n");
        assert_eq!(
            split_any("frame", Limits::DEFAULT, &flask),
            (jpegs.clone(), None)
        );
        // Declared with dashes of its own, written with two or four, a preamble, padding.
        let mut dashed = b"preamble\r\n".to_vec();
        dashed.extend_from_slice(b"--myboundary \t\r\n\r\n");
        dashed.extend_from_slice(&a);
        dashed.extend_from_slice(b"\r\n----myboundary\r\nContent-type: image/jpeg\r\n\r\n");
        dashed.extend_from_slice(&b);
        dashed.extend_from_slice(b"\r\n--myboundary--\r\nepilogue --myboundary\r\n");
        assert_eq!(
            split_any("--myboundary", Limits::DEFAULT, &dashed),
            (
                vec![
                    (None, a.clone()),
                    (Some("image/jpeg".to_owned()), b.clone())
                ],
                None
            )
        );
        // No empty line before the picture.
        let mut sloppy = b"--b\r\nContent-Type: image/jpeg\r\n".to_vec();
        sloppy.extend_from_slice(&a);
        sloppy.extend_from_slice(b"\r\n--b\r\n");
        assert_eq!(
            split_any("b", Limits::DEFAULT, &sloppy),
            (vec![(Some("image/jpeg".to_owned()), a.clone())], None)
        );
    }

    /// ffmpeg's `mpjpeg` (what `-f mpjpeg -listen 1` serves): three pictures that decode.
    #[test]
    fn an_ffmpeg_stream_splits_into_its_pictures() {
        const CAPTURE: &[u8] = include_bytes!("../../testdata/mjpeg/ffmpeg-mpjpeg-160x120.mjpeg");
        let (parts, e) = split_any("ffmpeg", Limits::DEFAULT, CAPTURE);
        assert_eq!((parts.len(), e), (3, None));
        for (content_type, body) in parts {
            assert_eq!(content_type.as_deref(), Some("image/jpeg"));
            let mut d = zune_jpeg::JpegDecoder::new(&body);
            d.decode().unwrap();
            assert_eq!(d.dimensions(), Some((160, 120)));
        }
    }

    #[test]
    fn boundary_text_inside_a_picture_is_not_a_delimiter() {
        let mut body = b"xx--frameyy\r\n--framez\r\n-frame\r\n".to_vec();
        body.extend_from_slice(&jpeg(3));
        let mut input = b"--frame\r\n\r\n".to_vec();
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n--frame\r\n");
        assert_eq!(
            split_any("frame", Limits::DEFAULT, &input),
            (vec![(None, body)], None)
        );
    }

    #[test]
    fn limits_hold_against_hostile_servers() {
        // A part that never ends.
        let mut endless = b"--b\r\n\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', 200));
        let (parts, e) = split_any("b", SMALL, &endless);
        assert!(parts.is_empty());
        assert!(
            matches!(e, Some(MultipartError::UnboundedPart { limit: 64, .. })),
            "{e:?}"
        );
        // A huge Content-Length: refused at once, nothing read into memory for it.
        let (_, e) = split_any(
            "b",
            Limits::DEFAULT,
            b"--b\r\nContent-Length: 99999999999\r\n\r\n",
        );
        assert_eq!(
            e.map(|e| e.to_string()),
            Some(
                "byte 36: part of 99999999999 bytes (its Content-Length) is over the 8388608-byte limit"
                    .to_owned()
            )
        );
        // Endless headers.
        let mut headers = b"--b\r\n".to_vec();
        headers.extend(std::iter::repeat_n(b"X-A: 1\r\n", 20).flatten());
        let (_, e) = split_any("b", SMALL, &headers);
        assert!(
            matches!(e, Some(MultipartError::HeadersTooLong { .. })),
            "{e:?}"
        );
        // No boundary at all.
        let (_, e) = split_any("b", SMALL, &[b'z'; 100]);
        assert!(
            matches!(e, Some(MultipartError::NoBoundary { .. })),
            "{e:?}"
        );
        // Junk between parts, exactly at the limit, then over it.
        let mut ok = b"--b\r\nContent-Length: 1\r\n\r\nA".to_vec();
        ok.extend(std::iter::repeat_n(b'j', 32));
        ok.extend_from_slice(b"--b\r\n\r\nB\r\n--b--\r\n");
        assert_eq!(split_any("b", SMALL, &ok).1, None);
        ok.insert(30, b'j');
        assert!(matches!(
            split_any("b", SMALL, &ok).1,
            Some(MultipartError::NoBoundary { .. })
        ));
        // A part exactly at the limit passes.
        let mut at_limit = b"--b\r\n\r\n".to_vec();
        at_limit.extend(std::iter::repeat_n(b'p', 64));
        at_limit.extend_from_slice(b"\r\n--b\r\n");
        let (parts, e) = split_any("b", SMALL, &at_limit);
        assert_eq!((parts.len(), e), (1, None));
    }

    #[test]
    fn a_flood_of_tiny_parts_is_split_in_linear_time() {
        let mut flood = Vec::new();
        for _ in 0..100_000 {
            flood.extend_from_slice(b"--b\r\n\r\nx\r\n");
        }
        let t = std::time::Instant::now();
        let (parts, e) = split("b", Limits::DEFAULT, &flood, 4096);
        assert_eq!((parts.len(), e), (99_999, None));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // One long body searched in small pushes does not rescan what it has searched.
        let mut long = b"--b\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'-', 4 << 20));
        long.extend_from_slice(b"\r\n--b\r\n");
        let t = std::time::Instant::now();
        let (parts, e) = split("b", Limits::DEFAULT, &long, 1024);
        assert_eq!((parts.len(), e), (1, None));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn boundaries_from_content_types() {
        for (ct, want) in [
            ("multipart/x-mixed-replace;boundary=ffmpeg", Ok("ffmpeg")),
            (
                "multipart/x-mixed-replace; Boundary=\"--myboundary\"",
                Ok("--myboundary"),
            ),
            (
                "multipart/x-mixed-replace; charset=x; boundary=frame ",
                Ok("frame"),
            ),
        ] {
            assert_eq!(
                boundary_of(ct).as_deref(),
                want.map(str::to_owned).as_deref()
            );
        }
        assert!(boundary_of("multipart/x-mixed-replace").is_err());
        for bad in ["", "----", "a\r\nb"] {
            assert!(Splitter::new(bad, Limits::DEFAULT).is_err(), "{bad:?}");
        }
        assert!(Splitter::new(&"x".repeat(201), Limits::DEFAULT).is_err());
    }

    #[test]
    fn garbage_never_panics_and_splits_the_same_however_cut() {
        let mut rng = crate::bridge::TestRng::new(7);
        for _ in 0..3000 {
            let len = rng.below(300usize);
            // Garbage made of the pieces that matter, so that it gets somewhere.
            let pieces: [&[u8]; 9] = [
                b"--b",
                b"\r\n",
                b"\n",
                b"-",
                b"b",
                b"Content-Length: 3\r\n",
                b"--",
                b" ",
                b"\xff\xd8",
            ];
            let mut input = Vec::new();
            while input.len() < len {
                if rng.below(3u8) == 0 {
                    input.extend(rng.bytes(3));
                } else {
                    input.extend_from_slice(pieces[rng.below(pieces.len())]);
                }
            }
            split_any("b", SMALL, &input);
        }
    }
}
