//! HTTP routes of participants' pictures (`bridge::snapshot` decodes them):
//!
//! - `GET /api/rooms/{room}/participants/{id}/frame.jpeg[?width=N]`: the latest picture;
//! - `GET /api/rooms/{room}/participants/{id}/stream.mjpeg[?width=N][&fps=F]`: a
//!   `multipart/x-mixed-replace` stream of pictures (for `<img>`, home automation, OBS), at most
//!   `fps` a second ([`DEFAULT_FPS`], at most [`MAX_FPS`]), a new picture only when there is one.
//!
//! Both are read like the room's other protected reads (`?token=` or Bearer, the operator's
//! key), for any participant, browser or camera. `width` is 16 to 3840, never wider than the
//! picture (which is not scaled up).
//!
//! In cluster mode a participant's picture is decoded on the node of its room: asked anywhere
//! else, both answer `307` to the same path and query there (`http::to_owner`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};

use crate::bridge::snapshot::{
    Lease, Picture, SnapshotError, MAX_WIDTH, MIN_WIDTH, SNAPSHOT_LINGER,
};
use crate::http::{authorize_room_read, parse_room, to_owner, ApiError};
use crate::state::App;

/// How long a request waits for the first picture of a decoder it started: a camera replays
/// its keyframe group at once, a browser answers a keyframe request within a few hundred ms.
pub const FIRST_PICTURE: Duration = Duration::from_secs(5);
/// Pictures a second of an MJPEG stream unless `fps` says, and at most.
pub const DEFAULT_FPS: f64 = 10.0;
pub const MAX_FPS: f64 = 15.0;
const MIN_FPS: f64 = 0.1;
/// The stream's part boundary.
const BOUNDARY: &str = "confab-frame";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/rooms/{room}/participants/{id}/frame.jpeg", get(frame))
        .route(
            "/api/rooms/{room}/participants/{id}/stream.mjpeg",
            get(stream),
        )
}

/// The query of both routes; numbers are read here, so that a bad one gets a JSON 400.
#[derive(serde::Deserialize)]
struct PictureQuery {
    token: Option<String>,
    width: Option<String>,
    fps: Option<String>,
}

impl PictureQuery {
    fn width(&self) -> Result<Option<u32>, ApiError> {
        let Some(w) = &self.width else {
            return Ok(None);
        };
        match w.parse::<u32>() {
            Ok(w) if (MIN_WIDTH..=MAX_WIDTH).contains(&w) => Ok(Some(w)),
            _ => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "width must be a number of pixels from {MIN_WIDTH} to {MAX_WIDTH}, got {w:?}"
                ),
            )),
        }
    }

    fn fps(&self) -> Result<f64, ApiError> {
        let Some(f) = &self.fps else {
            return Ok(DEFAULT_FPS);
        };
        match f.parse::<f64>() {
            Ok(f) if (MIN_FPS..=MAX_FPS).contains(&f) => Ok(f),
            _ => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("fps must be a number from {MIN_FPS} to {MAX_FPS}, got {f:?}"),
            )),
        }
    }
}

fn snapshot_error(e: SnapshotError) -> ApiError {
    let status = match e {
        SnapshotError::NotFound(_) => StatusCode::NOT_FOUND,
        SnapshotError::NoVideo(_) => StatusCode::CONFLICT,
        SnapshotError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        SnapshotError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError(status, e.to_string())
}

/// The checks both routes make, then a hold on the participant's decoder and its first
/// picture.
async fn start(
    app: &App,
    peer: SocketAddr,
    room: &str,
    id: &str,
    headers: &HeaderMap,
    q: &PictureQuery,
    linger: Duration,
) -> Result<(Lease, Arc<Picture>), ApiError> {
    let room = parse_room(room)?;
    authorize_room_read(app, &room, headers, q.token.as_deref(), peer.ip())?;
    let lease = app
        .bridge
        .snapshot(&room, id, linger)
        .await
        .map_err(snapshot_error)?;
    let mut pictures = lease.pictures();
    let first = tokio::time::timeout(FIRST_PICTURE, pictures.wait_for(Option::is_some)).await;
    let picture = match first {
        Ok(Ok(p)) => p.clone(),
        Ok(Err(_)) => {
            let why = lease.ended().map_or_else(
                || format!("the decoder of {id} stopped; try again"),
                |e| e.to_string(),
            );
            return Err(ApiError(StatusCode::NOT_FOUND, why));
        }
        Err(_) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no picture from {id} within {} s (no keyframe came); try again",
                    FIRST_PICTURE.as_secs()
                ),
            ))
        }
    };
    let picture = picture.ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the decoder gave no picture".into(),
        )
    })?;
    Ok((lease, picture))
}

/// Headers of pictures that change all the time and belong to the room.
fn picture_headers(h: &mut HeaderMap, content_type: HeaderValue) {
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // As for downloads: nothing in it runs, and it is not framed elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; img-src 'self'; sandbox"),
    );
}

async fn frame(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    Query(q): Query<PictureQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(r) = to_owner(&app, &parse_room(&room)?, &uri).await {
        return Ok(r);
    }
    let width = q.width()?;
    let (lease, picture) = start(&app, peer, &room, &id, &headers, &q, SNAPSHOT_LINGER).await?;
    let jpeg = lease
        .jpeg(&picture, width, app.bridge.snapshot_metrics())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let mut resp = jpeg.into_response();
    picture_headers(resp.headers_mut(), HeaderValue::from_static("image/jpeg"));
    Ok(resp)
}

/// What an MJPEG stream's body keeps between pictures.
struct Viewer {
    lease: Lease,
    pictures: tokio::sync::watch::Receiver<Option<Arc<Picture>>>,
    width: Option<u32>,
    interval: Duration,
    next_at: tokio::time::Instant,
    last_seq: u64,
    metrics: Arc<crate::metrics::Metrics>,
    _slot: crate::bridge::snapshot::StreamSlot,
}

impl Viewer {
    /// The next part: the newest picture once it is newer than the last and the frame
    /// interval has passed. `None` when the decoder stops (the participant left).
    async fn next_part(&mut self) -> Option<Bytes> {
        tokio::time::sleep_until(self.next_at).await;
        let picture = loop {
            let newest = self.pictures.borrow_and_update().clone();
            if let Some(p) = newest.filter(|p| p.seq != self.last_seq) {
                break p;
            }
            self.pictures.changed().await.ok()?;
        };
        let jpeg = self
            .lease
            .jpeg(&picture, self.width, self.metrics.clone())
            .await
            .ok()?;
        self.last_seq = picture.seq;
        self.next_at = tokio::time::Instant::from_std(
            self.lease
                .next_tick(std::time::Instant::now(), self.interval),
        );
        let head = format!(
            "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        let mut part = BytesMut::with_capacity(head.len() + jpeg.len() + 2);
        part.put_slice(head.as_bytes());
        part.put_slice(&jpeg);
        part.put_slice(b"\r\n");
        Some(part.freeze())
    }
}

async fn stream(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    Query(q): Query<PictureQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(r) = to_owner(&app, &parse_room(&room)?, &uri).await {
        return Ok(r);
    }
    let width = q.width()?;
    let fps = q.fps()?;
    let slot = app.bridge.stream_slot().map_err(snapshot_error)?;
    // No linger: a stream's decoder stops when its last viewer goes.
    let (lease, _) = start(&app, peer, &room, &id, &headers, &q, Duration::ZERO).await?;
    let viewer = Viewer {
        pictures: lease.pictures(),
        lease,
        width,
        interval: Duration::from_secs_f64(1.0 / fps),
        next_at: tokio::time::Instant::now(),
        last_seq: 0,
        metrics: app.bridge.snapshot_metrics(),
        _slot: slot,
    };
    let body = futures_util::stream::unfold(viewer, |mut v| async move {
        let part = v.next_part().await?;
        Some((Ok::<_, Infallible>(part), v))
    });
    let mut resp = Body::from_stream(body).into_response();
    let content_type =
        HeaderValue::from_str(&format!("multipart/x-mixed-replace; boundary={BOUNDARY}"))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    picture_headers(resp.headers_mut(), content_type);
    Ok(resp)
}
