//! HTTP cameras: an MJPEG stream (`multipart/x-mixed-replace`, what mjpg-streamer, motion,
//! ESP32-CAM, many IP cameras and a Flask `video_feed` serve) or a still JPEG polled at a
//! frame rate, pulled into a room like an RTSP camera ([`super::pull`] runs the retry loop and
//! keeps the state: `connecting`, `live`, `retrying` with the reason).
//!
//! The pictures go through the same MJPEG → H.264 path as an RTSP/JPEG camera (the encoder
//! thread of [`super::source::MjpegPath`]), only without the RTP/JPEG depacketizer: HTTP hands
//! over whole JPEGs. This file is the I/O shell: `reqwest` (rustls) fetches, the pure
//! [`super::multipart::Splitter`] cuts the stream into pictures.
//!
//! Which of the two a URL is: `mode` says (`mjpeg`, `jpeg`), or by default (`auto`) the
//! response's Content-Type does: `multipart/…` is a stream, `image/jpeg` a still.
//!
//! Bounded against a hostile or broken server: connecting and the response headers within
//! [`CONNECT_TIMEOUT`]; a picture at least every [`SILENCE_TIMEOUT`] (bytes that never make a
//! picture do not count); a picture, part headers and junk within the splitter's
//! [`Limits::DEFAULT`]; a still's body within the same picture limit, checked against its
//! Content-Length before reading; pictures faster than `fps` (30 at most) are dropped before
//! any decoding, and the encoder thread takes two at a time at most.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::camera::{Camera, Feed};
use super::multipart::{self, Limits, Splitter, MAX_PUSH};
use super::pull::{PullSpec, PullStatus};
use super::queue::Backpressure;
use super::InputTrack;
use crate::protocol::MediaKind;

/// Connecting and the response headers (each request of a still camera, too).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for the next picture (or a still's whole body).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// The frame rate a still JPEG is polled at unless `fps` says otherwise.
pub const DEFAULT_POLL_FPS: Fps = Fps(100);
/// The highest frame rate taken from any HTTP camera (and the default cap of a stream).
pub const MAX_FPS: Fps = Fps(3000);
const MIN_FPS: Fps = Fps(10);

/// How an HTTP camera serves its pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decided by the first response's Content-Type.
    Auto,
    /// `multipart/x-mixed-replace`: one response, a picture per part.
    Mjpeg,
    /// A still `image/jpeg`, fetched again at the frame rate.
    Jpeg,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(Mode::Auto),
            "mjpeg" => Some(Mode::Mjpeg),
            "jpeg" => Some(Mode::Jpeg),
            _ => None,
        }
    }
}

/// A frame rate in hundredths of a hertz (so that specs stay `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fps(u16);

impl Fps {
    /// `fps` if it is between 0.1 and 30.
    pub fn new(fps: f64) -> Option<Fps> {
        let hundredths = (fps * 100.0).round();
        (fps.is_finite() && (f64::from(MIN_FPS.0)..=f64::from(MAX_FPS.0)).contains(&hundredths))
            .then_some(Fps(hundredths as u16))
    }

    pub fn hz(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    pub fn interval(self) -> Duration {
        Duration::from_secs_f64(100.0 / f64::from(self.0.max(1)))
    }
}

impl Serialize for Fps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.hz())
    }
}

/// What an HTTP pull needs besides the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSource {
    pub mode: Mode,
    /// The poll rate of a still (default [`DEFAULT_POLL_FPS`]); the cap of a stream (default
    /// [`MAX_FPS`]).
    pub fps: Option<Fps>,
}

/// The client of one pulled camera, made on its first session: a connection pool of its own
/// (a still camera's requests reuse the connection), no proxy from the environment (cameras
/// are on the LAN), redirects followed five times at most. Certificates are checked against
/// the system's roots (rustls-platform-verifier), so an https camera with a self-signed
/// certificate is refused: serve it over http on a trusted network, or give it a certificate.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // Later than our own deadlines, whose messages say more.
        .read_timeout(SILENCE_TIMEOUT + Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::limited(5))
        .no_proxy()
        .pool_max_idle_per_host(1)
        .user_agent(format!("confab/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {}", chain(&e)))
}

/// An error with its causes, as one line (reqwest's own message names only the URL).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The track an HTTP camera publishes: MJPEG video, transcoded to H.264 by the bridge.
fn jpeg_track() -> InputTrack {
    InputTrack {
        kind: MediaKind::Video,
        control: "http".into(),
        payload_type: 26,
        encoding: "JPEG".into(),
        clock_rate: 90_000,
        channels: 1,
        fmtp: None,
    }
}

/// One connection to the camera (for a still: a run of requests), until it fails.
pub(super) async fn session(
    camera: &Camera,
    spec: &PullSpec,
    source: &HttpSource,
    client: &mut Option<reqwest::Client>,
    status: &Mutex<PullStatus>,
) -> Result<(), String> {
    let client = match client {
        Some(c) => c,
        None => client.insert(self::client()?),
    };
    let mut response = get(client, spec).await?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // What the body starts with decides where the Content-Type does not (ffmpeg's HTTP
    // server says application/octet-stream) or lacks the boundary.
    let declared = match source.mode {
        Mode::Auto => sniff(&content_type),
        m => Some(m),
    };
    let boundary = multipart::boundary_of(&content_type).ok();
    let head = match (declared, &boundary) {
        (Some(Mode::Jpeg), _) | (Some(Mode::Mjpeg), Some(_)) => Bytes::new(),
        _ => peek(&mut response).await?,
    };
    let (mode, boundary) = match (declared, boundary) {
        (Some(Mode::Jpeg), _) => (Mode::Jpeg, None),
        (Some(Mode::Mjpeg), Some(b)) => (Mode::Mjpeg, Some(b)),
        _ => match (declared, sniff_body(&head)) {
            // Told it is a stream, it is a picture: say so rather than poll it.
            (Some(Mode::Mjpeg), Some((Mode::Jpeg, _))) | (_, None) => {
                return Err(not_a_camera(&content_type, declared))
            }
            (_, Some(found)) => found,
        },
    };
    update(status, |s| s.mode = Some(mode));
    let (feed, _) = camera.start_feed(&[jpeg_track()], Instant::now());
    let fps = source.fps.unwrap_or(match mode {
        Mode::Jpeg => DEFAULT_POLL_FPS,
        _ => MAX_FPS,
    });
    let mut intake = Intake::new(camera, status, feed, fps);
    match boundary {
        None => poll(client, spec, response, head, fps, &mut intake).await,
        Some(boundary) => stream(response, head, &boundary, &mut intake).await,
    }
}

/// A stream or a still, by the response's Content-Type; `None` when it does not say.
fn sniff(content_type: &str) -> Option<Mode> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.starts_with("multipart/") {
        Some(Mode::Mjpeg)
    } else if essence == "image/jpeg" || essence == "image/jpg" {
        Some(Mode::Jpeg)
    } else {
        None
    }
}

/// How many bytes [`peek`] reads at most to find a stream's first boundary line.
const PEEK_BYTES: usize = 1024;

/// The start of the body: up to [`PEEK_BYTES`], or less once it holds a line or a JPEG start.
async fn peek(response: &mut reqwest::Response) -> Result<Bytes, String> {
    let read = async {
        let mut head = Vec::new();
        while head.len() < PEEK_BYTES {
            let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("reading the answer: {}", chain(&e)))?
            else {
                break;
            };
            head.extend_from_slice(&chunk);
            let trimmed = head.trim_ascii_start();
            if trimmed.starts_with(&[0xFF, 0xD8]) || trimmed.contains(&b'\n') {
                break;
            }
        }
        Ok(Bytes::from(head))
    };
    tokio::time::timeout(SILENCE_TIMEOUT, read)
        .await
        .map_err(|_| format!("nothing served within {} s", SILENCE_TIMEOUT.as_secs()))?
}

/// A stream (its boundary from its first line) or a still, by the first bytes of the body.
fn sniff_body(head: &[u8]) -> Option<(Mode, Option<String>)> {
    let head = head.trim_ascii_start();
    if head.starts_with(&[0xFF, 0xD8]) {
        return Some((Mode::Jpeg, None));
    }
    let line = &head[..head.iter().position(|&b| b == b'\n')?];
    let boundary = std::str::from_utf8(line.strip_prefix(b"--")?).ok()?.trim();
    multipart::Splitter::new(boundary, Limits::DEFAULT).ok()?;
    Some((Mode::Mjpeg, Some(boundary.to_owned())))
}

fn not_a_camera(content_type: &str, declared: Option<Mode>) -> String {
    let served = if content_type.is_empty() {
        "no Content-Type".to_owned()
    } else {
        format!("Content-Type {content_type:?}")
    };
    match declared {
        Some(Mode::Mjpeg) => format!(
            "the URL serves {served} and its body does not start with a boundary line, so it is no MJPEG stream; mode jpeg polls a still picture"
        ),
        _ => format!(
            "the URL serves {served} and neither an MJPEG stream (multipart/x-mixed-replace) nor a JPEG picture; check the camera's stream or snapshot URL"
        ),
    }
}

/// GET with the camera's credentials (HTTP Basic); a non-2xx answer is an error that says
/// what to do.
async fn get(client: &reqwest::Client, spec: &PullSpec) -> Result<reqwest::Response, String> {
    let mut request = client.get(spec.url());
    if let Some(user) = spec.username() {
        request = request.basic_auth(user, spec.password());
    }
    let response = tokio::time::timeout(CONNECT_TIMEOUT, request.send())
        .await
        .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| chain(&e))?;
    let code = response.status();
    if code.is_success() {
        return Ok(response);
    }
    let hint = match code.as_u16() {
        401 | 403 => {
            "; put the camera's user name and password in the URL (http://user:pass@host/…; HTTP Basic only)"
        }
        404 => "; check the path of the camera's stream or snapshot URL",
        _ => "",
    };
    Err(format!("the camera answered {code}{hint}"))
}

/// The pictures of one connection, into the camera's feed: the frame-rate cap, the camera's
/// `live` state on the first picture, the silence deadline.
struct Intake<'a> {
    camera: &'a Camera,
    status: &'a Mutex<PullStatus>,
    feed: Feed,
    started: Instant,
    /// When the last JPEG arrived (or the connection started).
    last_picture: Instant,
    last_taken: Option<Instant>,
    min_interval: Duration,
    live: bool,
    /// Parts that were not JPEG pictures since the last one.
    skipped: u64,
}

impl<'a> Intake<'a> {
    fn new(camera: &'a Camera, status: &'a Mutex<PullStatus>, feed: Feed, cap: Fps) -> Self {
        let now = Instant::now();
        Intake {
            camera,
            status,
            feed,
            started: now,
            last_picture: now,
            last_taken: None,
            // A little slack, so that a camera at exactly the cap keeps all its pictures.
            min_interval: cap.interval().mul_f64(0.9),
            live: false,
            skipped: 0,
        }
    }

    /// One part or still body.
    async fn picture(&mut self, content_type: Option<&str>, body: Bytes) {
        // What the bytes are decides: servers label JPEG parts image/jpeg, image/jpg or
        // application/octet-stream; a part with another image type is skipped.
        let other_image = content_type.is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("image/") && !(t.starts_with("image/jpeg") || t.starts_with("image/jpg"))
        });
        if other_image || !body.starts_with(&[0xFF, 0xD8]) {
            self.skipped += 1;
            return;
        }
        let now = Instant::now();
        self.last_picture = now;
        self.skipped = 0;
        if self
            .last_taken
            .is_some_and(|t| now.duration_since(t) < self.min_interval)
        {
            return;
        }
        self.last_taken = Some(now);
        let ts = (now.duration_since(self.started).as_micros() * 9 / 100) as u32;
        let note = self.feed.jpeg(0, ts, body.to_vec(), now);
        self.feed.flush(Backpressure::Wait).await;
        if !self.live || note.is_some() {
            self.live = true;
            let notes = self.feed.notes();
            self.camera.set_state(&super::state_text(true, notes));
            update(self.status, |s| {
                s.state = "live";
                s.error = (!notes.is_empty()).then(|| notes.join("; "));
            });
            if note.is_none() {
                tracing::info!(camera = %self.camera.id(), "HTTP camera live");
            }
        }
    }

    /// An error if no picture has come for [`SILENCE_TIMEOUT`].
    fn check_silence(&self) -> Result<(), String> {
        if self.last_picture.elapsed() < SILENCE_TIMEOUT {
            return Ok(());
        }
        Err(self.silence())
    }

    fn silence(&self) -> String {
        let mut why = format!("no JPEG picture for {} s", SILENCE_TIMEOUT.as_secs());
        if self.skipped > 0 {
            why.push_str(&format!(
                " ({} parts that are not JPEG pictures were skipped)",
                self.skipped
            ));
        }
        why
    }
}

/// An MJPEG stream, until it ends or fails.
async fn stream(
    mut response: reqwest::Response,
    head: Bytes,
    boundary: &str,
    intake: &mut Intake<'_>,
) -> Result<(), String> {
    let mut splitter = Splitter::new(boundary, Limits::DEFAULT)
        .map_err(|e| format!("the camera's MJPEG stream: {e}"))?;
    let mut head = Some(head);
    loop {
        let deadline = tokio::time::Instant::from_std(intake.last_picture + SILENCE_TIMEOUT);
        let chunk = match head.take() {
            Some(head) => head,
            None => match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => return Err(intake.silence()),
                Ok(Err(e)) => return Err(format!("reading the stream: {}", chain(&e))),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            },
        };
        for piece in chunk.chunks(MAX_PUSH) {
            let bad = |e: multipart::MultipartError| format!("the camera's MJPEG stream: {e}");
            splitter.push(piece).map_err(bad)?;
            while let Some(part) = splitter.next_part().map_err(bad)? {
                intake
                    .picture(part.content_type.as_deref(), part.body)
                    .await;
            }
        }
        // Bytes that keep coming without a picture do not keep the camera alive.
        intake.check_silence()?;
    }
}

/// A still JPEG fetched at `fps`. A failed request is tried again at the next tick: the
/// session ends (and the camera retries) only when no picture has come for
/// [`SILENCE_TIMEOUT`], so that one lost request of a camera on Wi-Fi does not restart its
/// track for everyone.
async fn poll(
    client: &reqwest::Client,
    spec: &PullSpec,
    first: reqwest::Response,
    head: Bytes,
    fps: Fps,
    intake: &mut Intake<'_>,
) -> Result<(), String> {
    let mut ticks = tokio::time::interval(fps.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut next = Some((first, head));
    loop {
        let fetched = match next.take() {
            Some(first) => Ok(first),
            None => get(client, spec).await.map(|r| (r, Bytes::new())),
        };
        let failure = match fetched {
            Ok((response, head)) => {
                let content_type = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match read_body(response, head).await {
                    Ok(body) => {
                        intake.picture(content_type.as_deref(), body).await;
                        None
                    }
                    Err(e) => Some(e),
                }
            }
            Err(e) => Some(e),
        };
        if let Err(silence) = intake.check_silence() {
            return Err(failure.unwrap_or(silence));
        }
        if let Some(e) = failure {
            tracing::debug!(camera = %intake.camera.id(), error = %e, "JPEG request failed; trying again");
        }
        ticks.tick().await;
    }
}

/// A still's body (after `head`, what was peeked of it), within the picture limit and
/// [`SILENCE_TIMEOUT`].
async fn read_body(mut response: reqwest::Response, head: Bytes) -> Result<Bytes, String> {
    let limit = Limits::DEFAULT.max_part;
    if let Some(n) = response.content_length() {
        if n > limit as u64 {
            return Err(format!(
                "the picture is {n} bytes (its Content-Length), over the {limit}-byte limit"
            ));
        }
    }
    let read = async {
        let mut body = head.to_vec();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the picture: {}", chain(&e)))?
        {
            if body.len() + chunk.len() > limit {
                return Err(format!("the picture is over the {limit}-byte limit"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    };
    tokio::time::timeout(SILENCE_TIMEOUT, read)
        .await
        .map_err(|_| {
            format!(
                "the picture did not arrive within {} s",
                SILENCE_TIMEOUT.as_secs()
            )
        })?
}

fn update(status: &Mutex<PullStatus>, f: impl FnOnce(&mut PullStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_and_first_bytes_say_stream_or_still() {
        assert_eq!(
            sniff("multipart/x-mixed-replace;boundary=ffmpeg"),
            Some(Mode::Mjpeg)
        );
        assert_eq!(sniff("image/jpeg"), Some(Mode::Jpeg));
        assert_eq!(sniff("Image/JPEG; charset=binary"), Some(Mode::Jpeg));
        assert_eq!(sniff("application/octet-stream"), None);
        // ffmpeg's `-f mpjpeg -listen 1` says application/octet-stream.
        assert_eq!(
            sniff_body(b"--ffmpeg\r\nContent-type: image/jpeg\r\n"),
            Some((Mode::Mjpeg, Some("ffmpeg".to_owned())))
        );
        assert_eq!(
            sniff_body(b"\r\n--myboundary \n"),
            Some((Mode::Mjpeg, Some("myboundary".to_owned())))
        );
        assert_eq!(sniff_body(b"\xff\xd8\xff\xe0"), Some((Mode::Jpeg, None)));
        for other in [&b"<html>\n"[..], b"--\n", b"--no line end", b""] {
            assert_eq!(
                sniff_body(other),
                None,
                "{:?}",
                other.escape_ascii().to_string()
            );
        }
        let e = not_a_camera("text/html; charset=utf-8", None);
        assert!(e.contains("text/html"), "{e}");
        assert!(not_a_camera("", Some(Mode::Mjpeg)).contains("no Content-Type"));
    }

    #[test]
    fn frame_rates() {
        assert_eq!(Fps::new(2.0).map(Fps::hz), Some(2.0));
        assert_eq!(Fps::new(0.1).map(Fps::hz), Some(0.1));
        assert_eq!(Fps::new(30.0), Some(MAX_FPS));
        for bad in [0.0, 0.05, 30.5, f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(Fps::new(bad), None, "{bad}");
        }
        assert_eq!(
            Fps::new(2.0).unwrap().interval(),
            Duration::from_millis(500)
        );
        assert_eq!(Mode::parse("MJPEG"), Some(Mode::Mjpeg));
        assert_eq!(Mode::parse("rtsp"), None);
    }
}
