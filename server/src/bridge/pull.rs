//! Pulled cameras: the server as an RTSP client (`retina`) of a camera URL, so a camera that
//! cannot push still joins a room; or as an HTTP client of an MJPEG or JPEG URL
//! ([`super::http_camera`]), with the same states and retries.
//!
//! Each pulled camera is one task that owns the camera's place in the room for as long as the
//! pull exists, and loops forever: connect, DESCRIBE/SETUP/PLAY, feed the packets into the same
//! pipelines as a pushed camera, and when anything fails (or the camera is down at the start)
//! show why, wait (1 s, doubling to 30 s; back to 1 s after a good minute) and try again.
//! `retina` hands over the RTP packets as received, so pushed and pulled cameras share every
//! codec path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use retina::client::{PacketItem, Session, SessionOptions, SetupOptions, Transport};
use serde::Serialize;
use url::Url;

use super::camera::Camera;
use super::http_camera::{self, Fps, HttpSource, Mode};
use super::queue::Backpressure;
use super::{Bridge, BridgeError, InputTrack};
use crate::names::{NameError, ParticipantId, RoomName};

/// How long connecting (DESCRIBE to PLAY) may take, and how long a live camera may stay silent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that stayed up this long resets the backoff.
const GOOD_SESSION: Duration = Duration::from_secs(60);

/// A camera to pull that cannot be, as given (REST body or `[[camera]]` entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("room {given:?}: {source}")]
    Room { given: String, source: NameError },
    #[error("camera name {given:?}: {source}")]
    Name { given: String, source: NameError },
    #[error("camera url {given:?} is not a URL ({source}); write it like rtsp://user:pass@192.168.1.20:554/stream1")]
    Url {
        given: String,
        source: url::ParseError,
    },
    #[error(
        "camera url {url} must start with rtsp://, http:// or https:// (rtsps is not supported)"
    )]
    Scheme { url: Url },
    #[error("camera url {url} has no host")]
    NoHost { url: Url },
    #[error("camera transport {given:?} is not tcp or udp")]
    Transport { given: String },
    #[error("camera transport is for rtsp:// cameras; an http(s):// camera is read over HTTP, leave transport out")]
    TransportForHttp,
    #[error("camera mode and fps are for http(s):// cameras (MJPEG streams and JPEG pictures); leave them out for rtsp://")]
    HttpOptionForRtsp,
    #[error("camera mode {given:?} is not auto, mjpeg or jpeg")]
    Mode { given: String },
    #[error("camera fps {given} is not between 0.1 and 30")]
    Fps { given: String },
}

/// How to pull, besides the URL: optional fields of the REST body and `[[camera]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullOptions<'a> {
    /// `tcp` (default) or `udp`: RTSP only.
    pub transport: Option<&'a str>,
    /// `auto` (default), `mjpeg` or `jpeg`: HTTP only.
    pub mode: Option<&'a str>,
    /// HTTP only: the poll rate of a JPEG picture (default 1), the cap of an MJPEG stream
    /// (default 30).
    pub fps: Option<f64>,
}

/// What a camera URL is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rtsp { udp: bool },
    Http(HttpSource),
}

/// What to pull: validated from the REST API or a `[[camera]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSpec {
    pub room: RoomName,
    pub name: ParticipantId,
    url: Url,
    username: Option<String>,
    password: Option<String>,
    pub source: Source,
}

impl PullSpec {
    pub fn parse(
        room: &str,
        name: &str,
        url: &str,
        options: &PullOptions<'_>,
    ) -> Result<Self, SpecError> {
        let room = RoomName::parse(room).map_err(|source| SpecError::Room {
            given: room.to_owned(),
            source,
        })?;
        let name = ParticipantId::parse(name).map_err(|source| SpecError::Name {
            given: name.to_owned(),
            source,
        })?;
        let mut url = Url::parse(url).map_err(|source| SpecError::Url {
            given: url.to_owned(),
            source,
        })?;
        let http = match url.scheme() {
            "rtsp" => false,
            "http" | "https" => true,
            _ => return Err(SpecError::Scheme { url }),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(SpecError::NoHost { url });
        }
        let source = if http {
            if options.transport.is_some() {
                return Err(SpecError::TransportForHttp);
            }
            let mode = match options.mode {
                None => Mode::Auto,
                Some(m) => Mode::parse(m).ok_or_else(|| SpecError::Mode {
                    given: m.to_owned(),
                })?,
            };
            let fps = match options.fps {
                None => None,
                Some(f) => Some(Fps::new(f).ok_or_else(|| SpecError::Fps {
                    given: f.to_string(),
                })?),
            };
            Source::Http(HttpSource { mode, fps })
        } else {
            if options.mode.is_some() || options.fps.is_some() {
                return Err(SpecError::HttpOptionForRtsp);
            }
            let udp = match options.transport.map(str::to_ascii_lowercase).as_deref() {
                None | Some("tcp") => false,
                Some("udp") => true,
                Some(other) => {
                    return Err(SpecError::Transport {
                        given: other.to_owned(),
                    })
                }
            };
            Source::Rtsp { udp }
        };
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        // Credentials go to retina separately; the URL is shown without them.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(PullSpec {
            room,
            name,
            url,
            username,
            password,
            source,
        })
    }

    /// The URL as shown (credentials removed).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Whether an RTSP camera is read over UDP.
    pub fn udp(&self) -> bool {
        matches!(self.source, Source::Rtsp { udp: true })
    }

    pub(super) fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    pub(super) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

/// A pulled camera as the REST API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PullStatus {
    pub room: String,
    pub name: String,
    pub url: String,
    /// `tcp` or `udp` (RTSP), `http` (HTTP cameras).
    pub transport: &'static str,
    /// HTTP cameras: `auto` until the first answer says `mjpeg` (a stream) or `jpeg` (a
    /// picture polled at `fps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// HTTP cameras: the poll rate (`jpeg`) or the cap (`mjpeg`), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<Fps>,
    /// `connecting`, `live` or `retrying`.
    pub state: &'static str,
    /// Why the last attempt failed (while retrying), or what cannot be shown (while live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PullStatus {
    /// A camera about to be pulled: `connecting`, no error yet.
    pub fn connecting(spec: &PullSpec) -> PullStatus {
        PullStatus {
            room: spec.room.to_string(),
            name: spec.name.to_string(),
            url: spec.url().to_owned(),
            transport: match spec.source {
                Source::Rtsp { udp: true } => "udp",
                Source::Rtsp { udp: false } => "tcp",
                Source::Http(_) => "http",
            },
            mode: match spec.source {
                Source::Http(h) => Some(h.mode),
                Source::Rtsp { .. } => None,
            },
            fps: match spec.source {
                Source::Http(h) => h.fps,
                Source::Rtsp { .. } => None,
            },
            state: "connecting",
            error: None,
        }
    }
}

struct Pulled {
    status: Arc<Mutex<PullStatus>>,
    task: tokio::task::JoinHandle<()>,
}

/// The pulled cameras of the whole server.
#[derive(Default)]
pub struct Pulls {
    map: Mutex<BTreeMap<(RoomName, ParticipantId), Pulled>>,
}

impl Pulls {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(RoomName, ParticipantId), Pulled>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read(status: &Mutex<PullStatus>) -> PullStatus {
    status.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Bridge {
    /// Starts pulling a camera into its room. Its name must be free in the room.
    pub fn pull(&self, spec: PullSpec) -> Result<PullStatus, BridgeError> {
        let mut map = self.inner.pulls.lock();
        let key = (spec.room.clone(), spec.name.clone());
        if map.contains_key(&key) {
            return Err(BridgeError::Taken(format!(
                "a camera called {} is already pulled into room {}; DELETE it first or pick another name",
                spec.name, spec.room
            )));
        }
        let camera = Camera::join(self.inner.clone(), &spec.room, spec.name.as_str())?;
        let status = Arc::new(Mutex::new(PullStatus::connecting(&spec)));
        let shown = read(&status);
        tracing::info!(room = %spec.room, camera = %spec.name, url = %spec.url(), "pulling camera");
        let task = tokio::spawn(run(camera, spec, status.clone()));
        map.insert(key, Pulled { status, task });
        Ok(shown)
    }

    /// The pulled cameras of `room`.
    pub fn pulls(&self, room: &RoomName) -> Vec<PullStatus> {
        self.inner
            .pulls
            .lock()
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|(_, p)| read(&p.status))
            .collect()
    }

    /// Every camera this node pulls, by room and name.
    pub fn pulled(&self) -> Vec<(RoomName, ParticipantId)> {
        self.inner.pulls.lock().keys().cloned().collect()
    }

    /// Stops pulling a camera; it leaves the room. False if there was no such pull.
    pub fn stop_pull(&self, room: &RoomName, name: &str) -> bool {
        let Ok(name) = ParticipantId::parse(name) else {
            return false;
        };
        let Some(p) = self.inner.pulls.lock().remove(&(room.clone(), name)) else {
            return false;
        };
        // Dropping the task's future drops its Camera, which leaves the room.
        p.task.abort();
        true
    }
}

fn set(status: &Mutex<PullStatus>, state: &'static str, error: Option<String>) {
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.state = state;
    s.error = error;
}

async fn run(camera: Camera, spec: PullSpec, status: Arc<Mutex<PullStatus>>) {
    let mut backoff = BACKOFF_FIRST;
    let mut http_client = None;
    loop {
        set(&status, "connecting", None);
        camera.set_state("connecting");
        let started = Instant::now();
        let result = match &spec.source {
            Source::Rtsp { .. } => session(&camera, &spec, &status).await,
            Source::Http(source) => {
                http_camera::session(&camera, &spec, source, &mut http_client, &status).await
            }
        };
        let why = match result {
            Ok(()) => "the camera ended the stream".to_owned(),
            Err(e) => e,
        };
        camera.clear_tracks();
        if started.elapsed() >= GOOD_SESSION {
            backoff = BACKOFF_FIRST;
        }
        tracing::info!(room = %spec.room, camera = %spec.name, why, retry_in = ?backoff, "camera pull failed; retrying");
        set(&status, "retrying", Some(why.clone()));
        camera.set_state(&format!("retrying: {why}"));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One RTSP session with the camera, until it fails.
async fn session(
    camera: &Camera,
    spec: &PullSpec,
    status: &Mutex<PullStatus>,
) -> Result<(), String> {
    let creds = spec
        .username
        .clone()
        .map(|username| retina::client::Credentials {
            username,
            password: spec.password.clone().unwrap_or_default(),
        });
    let options = SessionOptions::default()
        .creds(creds)
        .user_agent(format!("confab/{}", env!("CARGO_PKG_VERSION")));
    let connect = async {
        let mut described = Session::describe(spec.url.clone(), options)
            .await
            .map_err(|e| e.to_string())?;
        let tracks = tracks_of(&described);
        let mut wanted = Vec::new();
        for (i, t) in tracks.iter().enumerate() {
            if super::source::Plan::for_track(t).is_err() {
                continue;
            }
            let transport = if spec.udp() {
                Transport::Udp(Default::default())
            } else {
                Transport::Tcp(Default::default())
            };
            described
                .setup(i, SetupOptions::default().transport(transport))
                .await
                .map_err(|e| e.to_string())?;
            wanted.push(i);
        }
        if wanted.is_empty() {
            return Err(format!(
                "the camera offers nothing confab can show ({})",
                tracks
                    .iter()
                    .map(|t| format!("{} {}", t.encoding, t.clock_rate))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let playing = described
            .play(retina::client::PlayOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((playing, tracks))
    };
    let (mut playing, tracks) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))??;
    let (mut feed, notes) = camera.start_feed(&tracks, Instant::now());
    let state_of = |notes: &[String]| super::state_text(true, notes);
    camera.set_state(&state_of(&notes));
    set(
        status,
        "live",
        (!notes.is_empty()).then(|| notes.join("; ")),
    );
    tracing::info!(room = %spec.room, camera = %spec.name, "camera live");
    // Over TCP, waiting for room in the engine's data queue leaves the camera's connection
    // unread, which slows the camera; over UDP nothing would, so what does not fit is dropped.
    let how = if spec.udp() {
        Backpressure::Drop
    } else {
        Backpressure::Wait
    };
    loop {
        let item = tokio::time::timeout(SILENCE_TIMEOUT, playing.next())
            .await
            .map_err(|_| format!("no media for {} s", SILENCE_TIMEOUT.as_secs()))?;
        match item {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(PacketItem::Rtp(pkt))) => {
                let track = pkt.stream_id();
                if feed
                    .rtp_packet(track, from_retina(pkt), Instant::now())
                    .is_some()
                {
                    camera.set_state(&state_of(feed.notes()));
                    set(status, "live", Some(feed.notes().join("; ")));
                }
                feed.flush(how).await;
            }
            Some(Ok(PacketItem::Rtcp(c))) => {
                feed.rtcp(c.stream_id(), c.raw());
                feed.flush(how).await;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// retina's packet as the pipelines take it. retina has checked the header and cut off
/// extensions and padding; its payload `Bytes` is taken over, not copied.
fn from_retina(pkt: retina::rtp::ReceivedPacket) -> rtc::rtp::Packet {
    let h = pkt.header();
    let header = rtc::rtp::header::Header {
        version: 2,
        marker: h.mark(),
        payload_type: h.payload_type(),
        sequence_number: h.sequence_number(),
        timestamp: h.timestamp(),
        ssrc: h.ssrc(),
        ..Default::default()
    };
    rtc::rtp::Packet {
        header,
        payload: pkt.into_payload_bytes(),
    }
}

/// The camera's tracks as the SDP describes them (fmtp included: retina does not keep it),
/// falling back to what retina parsed when the SDP's media sections do not line up.
fn tracks_of(s: &Session<retina::client::Described>) -> Vec<InputTrack> {
    let from_sdp = super::sdp::parse_announce(s.sdp()).unwrap_or_default();
    if from_sdp.len() == s.streams().len() {
        return from_sdp;
    }
    s.streams()
        .iter()
        .map(|st| InputTrack {
            kind: if st.media() == "audio" {
                crate::protocol::MediaKind::Audio
            } else {
                crate::protocol::MediaKind::Video
            },
            control: st.control().map(|u| u.to_string()).unwrap_or_default(),
            payload_type: st.rtp_payload_type(),
            encoding: st.encoding_name().to_ascii_uppercase(),
            clock_rate: st.clock_rate_hz(),
            channels: st.channels().map_or(1, |c| c.get()),
            fmtp: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retina_packets_keep_their_header_and_bytes() {
        let pkt = retina::rtp::ReceivedPacketBuilder {
            ctx: retina::PacketContext::dummy(),
            stream_id: 1,
            sequence_number: 0xfffe,
            timestamp: retina::Timestamp::new(0x1_2345_6789, 90_000.try_into().unwrap(), 0)
                .unwrap(),
            payload_type: 96,
            ssrc: 0xdead_beef,
            mark: true,
            loss: 0,
        }
        .build([0x41, 0x9a, 1, 2, 3])
        .unwrap();
        let payload = pkt.payload().as_ptr();
        let p = from_retina(pkt);
        assert!(p.header.marker);
        assert_eq!(p.header.payload_type, 96);
        assert_eq!(p.header.sequence_number, 0xfffe);
        assert_eq!(p.header.timestamp, 0x2345_6789);
        assert_eq!(p.header.ssrc, 0xdead_beef);
        assert_eq!(&p.payload[..], [0x41, 0x9a, 1, 2, 3]);
        assert!(std::ptr::eq(p.payload.as_ptr(), payload), "payload copied");
    }

    #[test]
    fn specs_are_validated_and_credentials_kept_apart() {
        let none = PullOptions::default();
        let s = PullSpec::parse(
            "lobby",
            "door",
            "rtsp://admin:p%40ss@10.0.0.5:554/live",
            &none,
        )
        .unwrap();
        assert_eq!(s.url(), "rtsp://10.0.0.5:554/live");
        assert_eq!(s.username.as_deref(), Some("admin"));
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert!(!s.udp());
        let udp = PullOptions {
            transport: Some("UDP"),
            ..none.clone()
        };
        assert!(PullSpec::parse("lobby", "door", "rtsp://h/x", &udp)
            .unwrap()
            .udp());
        let http =
            PullSpec::parse("lobby", "door", "http://u:p@cam.lan/video_feed", &none).unwrap();
        assert_eq!(http.url(), "http://cam.lan/video_feed");
        assert_eq!((http.username(), http.password()), (Some("u"), Some("p")));
        assert_eq!(
            http.source,
            Source::Http(HttpSource {
                mode: Mode::Auto,
                fps: None
            })
        );
        let still = PullOptions {
            mode: Some("jpeg"),
            fps: Some(2.0),
            ..none.clone()
        };
        assert_eq!(
            PullSpec::parse("lobby", "door", "https://cam.lan/snap.jpg", &still)
                .unwrap()
                .source,
            Source::Http(HttpSource {
                mode: Mode::Jpeg,
                fps: Fps::new(2.0)
            })
        );
        let sctp = PullOptions {
            transport: Some("sctp"),
            ..none.clone()
        };
        let fast = PullOptions {
            fps: Some(60.0),
            ..none.clone()
        };
        let odd = PullOptions {
            mode: Some("h264"),
            ..none.clone()
        };
        for (room, name, url, options) in [
            ("bad room", "door", "rtsp://h/x", &none),
            ("lobby", "no/slash", "rtsp://h/x", &none),
            ("lobby", "door", "ftp://h/x", &none),
            ("lobby", "door", "not a url", &none),
            ("lobby", "door", "rtsp://h/x", &sctp),
            ("lobby", "door", "http://h/x", &udp),
            ("lobby", "door", "rtsp://h/x", &still),
            ("lobby", "door", "http://h/x", &fast),
            ("lobby", "door", "http://h/x", &odd),
        ] {
            assert!(
                PullSpec::parse(room, name, url, options).is_err(),
                "{room} {name} {url} {options:?}"
            );
        }
        assert_eq!(
            PullSpec::parse("lobby", "door", "ftp://h/x", &none)
                .unwrap_err()
                .to_string(),
            "camera url ftp://h/x must start with rtsp://, http:// or https:// (rtsps is not supported)"
        );
        assert_eq!(
            PullSpec::parse("bad room", "door", "rtsp://h/x", &none)
                .unwrap_err()
                .to_string(),
            "room \"bad room\": room name \"bad room\" is not valid: use 1-64 characters of A-Z a-z 0-9 . _ -"
        );
    }
}
