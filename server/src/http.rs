//! HTTP: the pages, the `/ws` upgrade, the REST API, health and metrics.

mod mediapipe;
mod previews;
mod rtsp_link;
mod snapshots;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use rust_embed::RustEmbed;
use serde_json::json;
use tokio::sync::watch;

use crate::moderation::{self, Action, Actor, ModerationError};
use crate::names::RoomName;
use crate::signaling;
use crate::state::App;

/// The WebSocket read buffer each connection starts with (see `ws_upgrade`).
const WS_READ_BUFFER: usize = 8 * 1024;

/// The meeting UI (`web/`), embedded in release builds, read from disk in debug builds.
#[derive(RustEmbed)]
#[folder = "../web/"]
struct WebAssets;

/// Icons, sounds, sample media (`static/`), served as they are.
#[derive(RustEmbed)]
#[folder = "../static/"]
struct StaticAssets;

/// A JSON error as the contract spells it: `{"error": "what went wrong and what to do"}`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub fn router(app: Arc<App>) -> Router {
    let upload_route_app = app.clone();
    Router::new()
        .route("/", get(|| async { asset::<WebAssets>("index.html") }))
        .route("/r/{room}", get(room_page))
        .route(
            "/web/{*path}",
            get(|Path(p): Path<String>| async move { asset::<WebAssets>(&p) }),
        )
        .route(
            "/static/{*path}",
            get(|Path(p): Path<String>| async move { asset::<StaticAssets>(&p) }),
        )
        .route("/ws", get(ws_upgrade))
        .route("/api/rooms", get(list_rooms))
        .route("/api/cluster", get(cluster_nodes))
        .route("/api/node/drain", get(drain_state).post(start_drain))
        .route("/api/rooms/{room}", get(get_room).delete(end_meeting))
        .route("/api/rooms/{room}/messages", get(get_messages))
        .route("/api/rooms/{room}/lock", axum::routing::put(lock_room))
        .route(
            "/api/rooms/{room}/participants/{id}",
            axum::routing::delete(remove_participant),
        )
        .route(
            "/api/rooms/{room}/participants/{id}/mute",
            axum::routing::post(mute_participant),
        )
        .route(
            "/api/rooms/{room}/files",
            axum::routing::post(upload_file).layer(DefaultBodyLimit::max(
                // The file plus room for the multipart framing; the exact limit is enforced
                // while streaming, with a JSON 413.
                (upload_route_app.config.limits.upload_bytes as usize).saturating_add(64 * 1024),
            )),
        )
        .route("/api/rooms/{room}/files/{hash}", get(download_file))
        .route(
            "/api/rooms/{room}/cameras",
            get(list_cameras).post(add_camera),
        )
        .route(
            "/api/rooms/{room}/cameras/{name}",
            axum::routing::delete(remove_camera),
        )
        .merge(mediapipe::routes())
        .merge(previews::routes())
        .merge(rtsp_link::routes())
        .merge(snapshots::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/diagnostics/ice", get(ice_diagnostics))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such page or API route; see docs/ for what exists".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cluster_cors,
        ))
        .layer(axum::middleware::map_response_with_state(
            app.clone(),
            security_headers,
        ))
        .with_state(app)
}

/// Cluster mode: after a redirect the page of one node sends its uploads to the room's node
/// (where its upload token is), another origin. Those requests, and only the files routes,
/// get CORS answers for the origins of the cluster's own nodes; anything else passes as it is.
async fn cluster_cors(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(cluster) = &app.cluster else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let files =
        path.starts_with("/api/rooms/") && (path.ends_with("/files") || path.contains("/files/"));
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase());
    let Some(origin) = origin.filter(|o| files && cluster.origins().contains(o)) else {
        return next.run(req).await;
    };
    let value = HeaderValue::from_str(&origin).unwrap_or_else(|_| HeaderValue::from_static("null"));
    let mut resp = if req.method() == axum::http::Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    resp.headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("origin"));
    resp
}

/// The policy for everything served: scripts, styles and connections from this origin only,
/// no framing, no referrer (links carry join tokens), no sniffing. Responses that set their
/// own policy (downloads) keep it. `'wasm-unsafe-eval'` lets the background blur compile its
/// WebAssembly (served from here too); it allows no JavaScript `eval`.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
                   img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// [`CSP`] with the cluster's nodes allowed as destinations: after a `redirect` the page opens
/// its session on the room's node, and uploads there (`origins`: `http(s)://host:port`).
fn cluster_csp(origins: &[String]) -> String {
    let mut extra = String::new();
    for o in origins {
        if let Some(rest) = o.strip_prefix("https://") {
            extra.push_str(&format!(" {o} wss://{rest}"));
        } else if let Some(rest) = o.strip_prefix("http://") {
            extra.push_str(&format!(" {o} ws://{rest}"));
        }
    }
    CSP.replace("connect-src 'self'", &format!("connect-src 'self'{extra}"))
}

async fn security_headers(State(app): State<Arc<App>>, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        let csp = match &app.cluster {
            Some(c) => HeaderValue::from_str(&cluster_csp(&c.origins()))
                .unwrap_or_else(|_| HeaderValue::from_static(CSP)),
            None => HeaderValue::from_static(CSP),
        };
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static(
            "camera=(self), microphone=(self), display-capture=(self), geolocation=()",
        ),
    );
    if app.config.tls != crate::config::Tls::Off {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    resp
}

/// Whether a WebSocket upgrade comes from a page the server trusts: no `Origin` (not a
/// browser), the server's own origin (`Origin` names the `Host` asked for), or a configured
/// one. Otherwise another site's page could open a session with the visitor's network
/// position (cross-site WebSocket hijacking).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.contains(&origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

/// Reads of a protected room (participants, history, files, cameras) need one of: the
/// operator's credentials (as for mutations), a join token for the room, or the upload token
/// of someone in it, as `Authorization: Bearer …` or `?token=…`.
pub(crate) fn authorize_room_read(
    app: &App,
    room: &RoomName,
    headers: &HeaderMap,
    query_token: Option<&str>,
    peer: IpAddr,
) -> Result<(), ApiError> {
    if !app.access.is_protected(room) {
        return Ok(());
    }
    for t in [bearer(headers), query_token].into_iter().flatten() {
        if app.rooms.uploader(room, t).is_some() || app.access.token_for(room, t).is_ok() {
            return Ok(());
        }
    }
    if authorize_mutation(app.config.api_key.as_deref(), headers, peer).is_ok() {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::UNAUTHORIZED,
        format!("room {room} is protected: send Authorization: Bearer <a join token for it, or the server's --api-key>"),
    ))
}

/// Serves until shutdown flips; with TLS when configured.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        h.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    let result = match tls {
        Some(tls) => match axum_server::from_tcp_rustls(listener, tls) {
            Ok(server) => server.handle(handle).serve(service).await,
            Err(e) => Err(e),
        },
        None => match axum_server::from_tcp(listener) {
            Ok(server) => server.handle(handle).serve(service).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "http server stopped");
    }
}

fn asset<E: RustEmbed>(path: &str) -> Response {
    let Some(file) = E::get(path) else {
        return ApiError(StatusCode::NOT_FOUND, format!("no file {path:?}")).into_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut resp = (
        [(header::CONTENT_TYPE, mime.as_ref().to_owned())],
        file.data.into_owned(),
    )
        .into_response();
    // `security_headers` adds nosniff and the rest.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn parse_room(room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn room_page(Path(room): Path<String>) -> Response {
    match parse_room(&room) {
        Ok(_) => asset::<WebAssets>("room.html"),
        Err(e) => e.into_response(),
    }
}

async fn ws_upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let allowed = match &app.cluster {
        // A page of any node of the cluster may open its session here (after a redirect).
        Some(c) => [app.config.allowed_origins.clone(), c.origins()].concat(),
        None => app.config.allowed_origins.clone(),
    };
    if !origin_allowed(&headers, &allowed) {
        return ApiError(
            StatusCode::FORBIDDEN,
            "this page's origin may not open a session here; add it to allowed_origins in the config if it should".into(),
        )
        .into_response();
    }
    let limit = app.config.limits.ws_message_bytes;
    // tungstenite reserves its read buffer (128 KiB by default) for every connection up front,
    // the largest single cost of a participant; signaling messages are a few KiB, and a larger
    // one grows the buffer as it arrives.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| signaling::run_session(socket, app, peer))
}

/// Rooms in use; protected ones only for the operator (as for mutations).
async fn list_rooms(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let admin = authorize_mutation(app.config.api_key.as_deref(), &headers, peer.ip()).is_ok();
    let shown = |name: &RoomName| admin || !app.access.is_protected(name);
    let Some(cluster) = &app.cluster else {
        let rooms: Vec<_> = app
            .rooms
            .list()
            .into_iter()
            .filter(|(name, _)| shown(name))
            .map(|(name, n)| json!({"name": name.as_str(), "participants": n}))
            .collect();
        return Json(json!(rooms));
    };
    // The whole cluster's: this node's rooms as they are now, the others' as of their last
    // heartbeat (2 s at most).
    let mut rooms: Vec<(RoomName, usize, String)> = app
        .rooms
        .list()
        .into_iter()
        .map(|(name, n)| (name, n, cluster.url().to_owned()))
        .collect();
    for node in cluster.nodes().iter().filter(|n| n.id != cluster.id()) {
        for (name, n) in &node.room_list {
            if let Ok(name) = RoomName::parse(name) {
                rooms.push((name, *n as usize, node.url.clone()));
            }
        }
    }
    rooms.sort();
    let rooms: Vec<_> = rooms
        .into_iter()
        .filter(|(name, _, _)| shown(name))
        .map(|(name, n, node)| json!({"name": name.as_str(), "participants": n, "node": node}))
        .collect();
    Json(json!(rooms))
}

/// Cluster mode: this node and the live nodes as of its last heartbeat (404 on a single node).
async fn cluster_nodes(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let c = app.cluster.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this server runs alone, not in a cluster (see --redis)".into(),
        )
    })?;
    let nodes: Vec<_> = c
        .nodes()
        .iter()
        .map(|n| {
            json!({"id": n.id, "url": n.url, "rtsp": n.rtsp, "cores": n.cores, "rooms": n.rooms,
                   "participants": n.participants, "packets_per_second": n.packets_per_second,
                   "load": n.load(), "draining": n.draining})
        })
        .collect();
    Ok(Json(
        json!({"node": c.id(), "url": c.url(), "draining": c.is_draining(), "nodes": nodes}),
    ))
}

fn cluster_only(app: &App) -> Result<&crate::cluster::Cluster, ApiError> {
    app.cluster.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "this server runs alone, not in a cluster: there is nowhere to move its rooms; stop it with SIGTERM".into(),
        )
    })
}

/// `GET /api/node/drain`: whether this node drains, and who is still on it.
async fn drain_state(
    State(app): State<Arc<App>>,
) -> Result<Json<crate::drain::Progress>, ApiError> {
    let c = cluster_only(&app)?;
    Ok(Json(crate::drain::progress(&app, c.is_draining())))
}

/// `POST /api/node/drain` (an operator's mutation): drain this node, then stop it.
async fn start_drain(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_mutation(app.config.api_key.as_deref(), &headers, peer.ip())?;
    let c = cluster_only(&app)?;
    let p = crate::drain::progress(&app, true);
    if !c.is_draining() {
        tracing::info!(%peer, "drain requested over REST");
        app.drain_requested.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"state": "draining", "rooms": p.rooms, "participants": p.participants,
                    "timeout_s": app.config.drain_timeout.as_secs()}),
        ),
    )
        .into_response())
}

/// Cluster mode: a room of another node is asked there: `307` to the same path and query on
/// its node (clients follow with the same request). `None` when the room has anyone here, or
/// lives nowhere else that this node knows of (the caller answers). The nodes' records
/// (≤ 2 s old) name rooms with people; a room placed since, or whose records are not in yet,
/// is looked up in Redis.
pub(crate) async fn to_owner(
    app: &App,
    room: &RoomName,
    uri: &axum::http::Uri,
) -> Option<Response> {
    let c = app.cluster.as_ref()?;
    if app.rooms.occupied(room) {
        return None;
    }
    let listed = c.nodes().iter().find_map(|n| {
        (n.id != c.id() && n.room_list.iter().any(|(r, _)| r == room.as_str()))
            .then(|| n.url.clone())
    });
    let url = match listed {
        Some(url) => url,
        // Not in the records yet: Redis's room key says (unreachable, or the room is on no
        // other live node: answered here).
        None => c.owner_elsewhere(room).await.ok().flatten()?.url,
    };
    let target = format!(
        "{url}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    Some((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response())
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct TokenQuery {
    pub(crate) token: Option<String>,
}

async fn get_room(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<TokenQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    if let Some(r) = to_owner(&app, &room, &uri).await {
        return Ok(r);
    }
    authorize_room_read(&app, &room, &headers, q.token.as_deref(), peer.ip())?;
    let participants = app.rooms.participants(&room).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("nobody is in room {room}; it exists only while someone is in it"),
        )
    })?;
    let mut body = json!({"name": room.as_str(), "participants": participants});
    // What each browser receives: its bandwidth estimate, and each track's layer and state.
    if let Ok(view) = app.media.subscriptions(room.clone()).await {
        if let Some(list) = body["participants"].as_array_mut() {
            for p in list {
                let id = p["id"].as_str().unwrap_or_default().to_owned();
                if let Some(v) = view.iter().find(|v| v.id == id) {
                    p["receiving"] = json!({"estimate_bps": v.estimate_bps, "tracks": v.tracks});
                }
            }
        }
    }
    if let Some(c) = &app.cluster {
        body["node"] = json!(c.url());
    }
    Ok(Json(body).into_response())
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
    before: Option<String>,
    token: Option<String>,
}

/// Public chat history, oldest first (private messages never appear here).
async fn get_messages(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let room = parse_room(&room)?;
    authorize_room_read(&app, &room, &headers, q.token.as_deref(), peer.ip())?;
    let bad = |what: &str| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{what} must be a positive whole number (limit: at most 500)"),
        )
    };
    let limit = match q.limit {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=crate::chat::MAX_LIMIT).contains(&n) => Some(n),
            _ => return Err(bad("limit")),
        },
    };
    let before = match q.before {
        None => None,
        Some(b) => match b.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad("before")),
        },
    };
    let (messages, _) = app
        .chat
        .history(room.to_string(), None, before, limit)
        .await
        .map_err(internal)?;
    Ok(Json(json!(messages)))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "request failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server could not do this right now; try again, and check its log if it persists"
            .into(),
    )
}

/// Image types a browser may show inline from the chat; everything else downloads.
const INLINE_IMAGES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// `POST /api/rooms/{room}/files`: a participant shares a file (multipart part `file`).
async fn upload_file(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    match receive_upload(app, room, headers, multipart).await {
        Ok(r) => r,
        Err(e) => {
            // The body may be left unread (a refused or oversized upload): tell the client the
            // connection ends here, so it stops sending instead of writing into a closed socket.
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

/// The member of `room` whose upload token (from `joined`) the request carries as Bearer:
/// how a page proves it is in the room for `what` (uploads, RTSP links).
pub(crate) fn member_by_token(
    app: &App,
    room: &RoomName,
    headers: &HeaderMap,
    what: &str,
) -> Result<crate::room::Uploader, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            format!("{what} need Authorization: Bearer <upload_token from joined>"),
        )
    })?;
    app.rooms.uploader(room, token).ok_or_else(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            "this upload token is not valid in this room (it ends when you leave); rejoin and use the new one".into(),
        )
    })
}

async fn receive_upload(
    app: Arc<App>,
    room: String,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let who = member_by_token(&app, &room, &headers, "uploads")?;
    let limit = app.config.limits.upload_bytes;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the file is larger than the {limit} bytes this server accepts"),
        )
    };
    let map_multipart = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("not a valid multipart upload: {}", e.body_text()),
            )
        }
    };
    loop {
        let Some(mut field) = multipart.next_field().await.map_err(map_multipart)? else {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "no part named \"file\" in the multipart body".into(),
            ));
        };
        if field.name() != Some("file") {
            continue;
        }
        let name = sanitize_file_name(field.file_name().unwrap_or("file"));
        let mime = field
            .content_type()
            .filter(|m| m.parse::<mime_guess::Mime>().is_ok())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                mime_guess::from_path(&name)
                    .first_or_octet_stream()
                    .to_string()
            });
        let mut upload = app.chat.begin_upload(limit).await.map_err(internal)?;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = upload.write(&chunk).await {
                        upload.abort().await;
                        return Err(match e {
                            crate::chat::UploadError::TooLarge { .. } => too_large(),
                            crate::chat::UploadError::Io(e) => internal(e),
                        });
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    upload.abort().await;
                    return Err(map_multipart(e));
                }
            }
        }
        let (hash, size) = app.chat.finish_upload(upload).await.map_err(internal)?;
        if mime.starts_with("image/") {
            // Made before the file is announced, so everyone's page can show it at once;
            // a picture that cannot be previewed is still shared (as a download).
            if let Err(e) = app.chat.ensure_preview(&hash).await {
                tracing::warn!(file = %hash, error = %e, "preview failed");
            }
        }
        let url = format!("/api/rooms/{room}/files/{hash}");
        app.chat
            .insert_file(crate::chat::FileRecord {
                hash: hash.clone(),
                size,
                mime: mime.clone(),
                name: name.clone(),
                room: room.to_string(),
                uploader: who.id.to_string(),
                created: crate::chat::unix_millis(std::time::SystemTime::now()),
            })
            .await
            .map_err(internal)?;
        let msg = crate::chat::NewMessage {
            room: room.to_string(),
            from: who.id.to_string(),
            name: who.name.clone(),
            ts: crate::chat::unix_millis(std::time::SystemTime::now()),
            to: None,
            text: name.clone(),
            kind: crate::chat::Kind::File(crate::chat::FileRef {
                name,
                size,
                mime,
                url,
            }),
            client_id: None,
            sender_key: who.identity_key,
            recipient_key: None,
        };
        let (message, _) = app.chat.insert(msg).await.map_err(internal)?;
        // Everyone, the uploader included: its own client learns of the file this way too.
        app.rooms.broadcast(
            &room,
            None,
            &crate::protocol::ServerMessage::Chat {
                message: message.clone(),
            },
        );
        return Ok((StatusCode::CREATED, Json(message)).into_response());
    }
}

/// A file name safe to put in a header and show: no path, no control characters, not empty.
fn sanitize_file_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    }
}

async fn download_file(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, hash)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (path, rec) = shared_file(&app, peer, &room, &hash, &headers, q.token.as_deref()).await?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| no_such_file())?;
    let inline = INLINE_IMAGES.contains(&rec.mime.as_str());
    // RFC 6266 / 8187: an ASCII fallback and the UTF-8 name.
    let ascii: String = rec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = rec
        .name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = format!(
        "{}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}",
        if inline { "inline" } else { "attachment" }
    );
    // The type as uploaded; `attachment`, nosniff and the sandboxing CSP keep a browser from
    // running an uploaded page even when it is text/html.
    let content_type = HeaderValue::from_str(&rec.mime)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(stored_file_response(
        bytes,
        content_type,
        HeaderValue::from_str(&disposition).ok(),
    ))
}

fn no_such_file() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such file in this room".into())
}

/// The file shared in `room` with this hash (its path and record), after the room's read
/// check: what a download and a preview both start from.
pub(crate) async fn shared_file(
    app: &App,
    peer: SocketAddr,
    room: &str,
    hash: &str,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(std::path::PathBuf, crate::chat::FileRecord), ApiError> {
    let room = parse_room(room)?;
    authorize_room_read(app, &room, headers, token, peer.ip())?;
    let path = app.chat.file_path(hash).ok_or_else(no_such_file)?;
    let rec = app
        .chat
        .file(hash.to_owned(), room.to_string())
        .await
        .map_err(internal)?
        .ok_or_else(no_such_file)?;
    Ok((path, rec))
}

/// A stored file's bytes as a response: the headers every download and preview gets.
pub(crate) fn stored_file_response(
    bytes: Vec<u8>,
    content_type: HeaderValue,
    disposition: Option<HeaderValue>,
) -> Response {
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    if let Some(v) = disposition {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Stricter than the pages' policy, which `security_headers` then leaves alone; nosniff
    // comes from there too.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; img-src 'self'; sandbox"),
    );
    // Stored files are named by their hash: they never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    resp
}

/// A request body read as JSON; a 400 that shows `example` when it is not what the route takes.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {example}: {e}"),
        )
    })
}

/// `POST /api/rooms/{room}/cameras` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCamera {
    name: String,
    /// `rtsp://…`, or `http(s)://…` for an MJPEG stream or a JPEG picture.
    url: String,
    /// RTSP: `tcp` (default) or `udp`.
    transport: Option<String>,
    /// HTTP: `auto` (default), `mjpeg` or `jpeg`.
    mode: Option<String>,
    /// HTTP: the poll rate of a JPEG picture (default 1), the cap of an MJPEG stream.
    fps: Option<f64>,
}

fn bridge_error(e: crate::bridge::BridgeError) -> ApiError {
    use crate::bridge::BridgeError::*;
    match e {
        NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
        Taken(m) => ApiError(StatusCode::CONFLICT, m),
        Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
        Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

async fn add_camera(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize_mutation(app.config.api_key.as_deref(), &headers, peer.ip())?;
    let room = parse_room(&room)?;
    let cam: NewCamera = json_body(&body, r#"{"name": "door", "url": "rtsp://camera/stream"}"#)?;
    let options = crate::bridge::pull::PullOptions {
        transport: cam.transport.as_deref(),
        mode: cam.mode.as_deref(),
        fps: cam.fps,
    };
    let spec = crate::bridge::pull::PullSpec::parse(room.as_str(), &cam.name, &cam.url, &options)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let Some(cameras) = &app.cameras else {
        let status = app.bridge.pull(spec).map_err(bridge_error)?;
        return Ok((StatusCode::CREATED, Json(status)).into_response());
    };
    // Cluster mode: into the registry, then pulled by the room's node (this one or another).
    let entry = crate::cluster::cameras::CameraEntry {
        room: room.to_string(),
        name: cam.name.clone(),
        url: cam.url.clone(),
        transport: cam.transport.clone(),
        mode: cam.mode.clone(),
        fps: cam.fps,
    };
    cameras.add(&entry, &spec).await.map_err(|e| {
        use crate::cluster::cameras::AddError;
        let status = match e {
            AddError::Taken { .. } => StatusCode::CONFLICT,
            AddError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    })?;
    let here = app
        .bridge
        .pulls(&room)
        .into_iter()
        .find(|p| p.name == spec.name.as_str());
    let node = match (&here, &app.cluster) {
        (Some(_), Some(c)) => Some(c.url().to_owned()),
        (None, Some(c)) => c.owner_elsewhere(&room).await.ok().flatten().map(|n| n.url),
        (_, None) => None,
    };
    let status = here.unwrap_or_else(|| crate::bridge::pull::PullStatus::connecting(&spec));
    let mut body = serde_json::to_value(status)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(node) = node {
        body["node"] = json!(node);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_cameras(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<TokenQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    // Only the room's node pulls its cameras (cluster mode), so only it knows their state.
    if let Some(r) = to_owner(&app, &room, &uri).await {
        return Ok(r);
    }
    authorize_room_read(&app, &room, &headers, q.token.as_deref(), peer.ip())?;
    Ok(Json(app.bridge.pulls(&room)).into_response())
}

async fn remove_camera(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize_mutation(app.config.api_key.as_deref(), &headers, peer.ip())?;
    let room = parse_room(&room)?;
    if let (Some(cameras), Some(cluster)) = (&app.cameras, &app.cluster) {
        return remove_cluster_camera(&app, cameras, cluster, &room, &name).await;
    }
    if app.bridge.stop_pull(&room, &name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no camera called {name:?} is pulled into room {room}"),
        ))
    }
}

/// `DELETE …/cameras/{name}` in cluster mode: the registry entry goes at once; `204` once the
/// pull has stopped here or the room's node confirmed it stopped there (relayed, at most 3 s),
/// else `504` saying that the node stops it at its next reconcile.
async fn remove_cluster_camera(
    app: &App,
    cameras: &crate::cluster::cameras::Cameras,
    cluster: &crate::cluster::Cluster,
    room: &RoomName,
    name: &str,
) -> Result<StatusCode, ApiError> {
    use crate::cluster::cameras::{Gone, RemoveError};
    let gone = cameras.remove(room, name).await.map_err(|e| {
        let status = match e {
            RemoveError::NotFound { .. } => StatusCode::NOT_FOUND,
            RemoveError::FromConfig { .. } => StatusCode::CONFLICT,
            RemoveError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    })?;
    let Gone::There {
        node,
        entry_removed,
    } = gone
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    app.metrics
        .cluster_relayed_actions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stop = crate::cluster::action::RemoteAction::StopCamera {
        name: name.to_owned(),
    };
    match cluster.relay(&node, room, stop).await {
        Ok((204, _)) => Ok(StatusCode::NO_CONTENT),
        // Placed there but not pulled yet: with its entry gone it never will be.
        Ok((404, _)) if entry_removed => Ok(StatusCode::NO_CONTENT),
        Ok((status, message)) => Err(ApiError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            message,
        )),
        Err(e) if entry_removed => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!("camera {name} is deleted from the cluster, but {e}; that node stops pulling it at its next heartbeat (2 s)"),
        )),
        Err(e) => Err(ApiError(StatusCode::GATEWAY_TIMEOUT, e.to_string())),
    }
}

/// Runs an operator action for REST, after the same check as every mutation. `action` gets
/// the room, to name it in its errors.
async fn operate_rest(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    room: &str,
    action: impl FnOnce(&RoomName) -> Result<Action, ModerationError>,
) -> Result<(), ApiError> {
    authorize_mutation(app.config.api_key.as_deref(), headers, peer.ip())?;
    let room = parse_room(room)?;
    let action = action(&room).map_err(|e| ApiError(moderation_status(&e), e.to_string()))?;
    if let Some(cluster) = &app.cluster {
        // A room of another node: checked here, carried out there (relayed over Redis).
        if !app.rooms.occupied(&room) {
            let owner = cluster
                .owner_elsewhere(&room)
                .await
                .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            if let Some(node) = owner {
                app.metrics
                    .cluster_relayed_actions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (status, message) = cluster
                    .relay(&node, &room, action.to_remote())
                    .await
                    .map_err(|e| ApiError(StatusCode::GATEWAY_TIMEOUT, e.to_string()))?;
                return match StatusCode::from_u16(status) {
                    Ok(s) if s.is_success() => Ok(()),
                    Ok(s) => Err(ApiError(s, message)),
                    Err(_) => Err(ApiError(StatusCode::BAD_GATEWAY, message)),
                };
            }
        }
    }
    moderation::carry_out(app, &room, Actor::Server, action)
        .map_err(|e| ApiError(moderation_status(&e), e.to_string()))
}

/// The HTTP status of an operator action that could not be carried out.
pub fn moderation_status(e: &ModerationError) -> StatusCode {
    match e {
        ModerationError::EmptyRoom { .. } | ModerationError::UnknownParticipant { .. } => {
            StatusCode::NOT_FOUND
        }
        ModerationError::Forbidden => StatusCode::FORBIDDEN,
    }
}

/// Cluster mode: carries out the operator actions other nodes relay for rooms on this node
/// (they checked the caller's credentials), and answers each.
pub async fn serve_relayed(
    app: Arc<App>,
    mut actions: tokio::sync::mpsc::Receiver<crate::cluster::RelayedAction>,
) {
    while let Some(a) = actions.recv().await {
        let answer = match RoomName::parse(&a.room) {
            Err(e) => (400, e.to_string()),
            Ok(room) => match a.action {
                crate::cluster::action::RemoteAction::StopCamera { name } => {
                    let stopped = match &app.cameras {
                        Some(c) => c.stop_here(&room, &name).await,
                        None => app.bridge.stop_pull(&room, &name),
                    };
                    if stopped {
                        (204, String::new())
                    } else {
                        (
                            404,
                            format!("no camera called {name:?} is pulled into room {room}"),
                        )
                    }
                }
                action => match Action::from_remote(&room, action)
                    .and_then(|action| moderation::carry_out(&app, &room, Actor::Server, action))
                {
                    Ok(()) => (204, String::new()),
                    Err(e) => (moderation_status(&e).as_u16(), e.to_string()),
                },
            },
        };
        let _ = a.reply.send(answer);
    }
}

/// `DELETE /api/rooms/{room}`: end the meeting for everyone in it.
async fn end_meeting(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    operate_rest(&app, peer, &headers, &room, |_| Ok(Action::End)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/rooms/{room}/participants/{id}`: take someone out of the room.
async fn remove_participant(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    operate_rest(&app, peer, &headers, &room, |room| {
        Ok(Action::Remove {
            id: moderation::target(room, &id)?,
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    kind: crate::protocol::MediaKind,
}

/// `POST /api/rooms/{room}/participants/{id}/mute` with `{"kind": "audio"|"video"}`.
async fn mute_participant(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let MuteBody { kind } = json_body(&body, r#"{"kind": "audio"} or {"kind": "video"}"#)?;
    operate_rest(&app, peer, &headers, &room, |room| {
        Ok(Action::Mute {
            id: moderation::target(room, &id)?,
            kind,
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    locked: bool,
}

/// `PUT /api/rooms/{room}/lock` with `{"locked": true|false}`.
async fn lock_room(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let LockBody { locked } = json_body(&body, r#"{"locked": true}"#)?;
    operate_rest(&app, peer, &headers, &room, |_| Ok(Action::Lock { locked })).await?;
    Ok(Json(json!({ "locked": locked })))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let (rooms, participants) = app.rooms.counts();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(rooms, participants),
    )
}

/// The ICE candidates the server announces, and what may be wrong with them.
async fn ice_diagnostics(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    Json(crate::diagnostics::ice_report(&app.announced, host))
}

/// The credential of `Authorization: Bearer …`, if the request has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether a REST mutation may proceed: with `--api-key`, only with `Authorization: Bearer
/// KEY`; without it, only from loopback clients.
pub fn authorize_mutation(
    api_key: Option<&str>,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<(), ApiError> {
    match api_key {
        Some(key) => {
            let ok = bearer(headers).is_some_and(|g| crate::secret::equal(g, key));
            if ok {
                Ok(())
            } else {
                Err(ApiError(
                    StatusCode::UNAUTHORIZED,
                    "this needs Authorization: Bearer <the server's --api-key>".into(),
                ))
            }
        }
        None if peer.is_loopback()
            || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())) =>
        {
            Ok(())
        }
        None => Err(ApiError(
            StatusCode::FORBIDDEN,
            "changes are accepted from this machine only; start the server with --api-key to allow remote clients".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_safe() {
        let cases = [
            ("photo.png", "photo.png"),
            ("../../etc/passwd", "passwd"),
            ("C:\\Users\\me\\a.txt", "a.txt"),
            ("..hidden", "hidden"),
            ("evil\"\r\nX-Header: 1.txt", "evilX-Header: 1.txt"),
            ("", "file"),
            ("   ", "file"),
            ("résumé 📄.pdf", "résumé 📄.pdf"),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_file_name(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn json_bodies_say_what_they_should_be() {
        #[derive(serde::Deserialize, Debug)]
        struct Lock {
            #[allow(dead_code)]
            locked: bool,
        }
        assert!(json_body::<Lock>(br#"{"locked": true}"#, "x").is_ok());
        let ApiError(status, message) =
            json_body::<Lock>(b"{}", r#"{"locked": true}"#).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.starts_with(r#"the body must be JSON like {"locked": true}: missing field"#),
            "{message}"
        );
    }

    #[test]
    fn mutation_auth() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let none = HeaderMap::new();
        assert!(authorize_mutation(None, &none, lo).is_ok());
        assert!(authorize_mutation(None, &none, "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(
            authorize_mutation(None, &none, remote).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let mut good = HeaderMap::new();
        good.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(authorize_mutation(Some("s3cret"), &good, remote).is_ok());
        assert_eq!(
            authorize_mutation(Some("s3cret"), &bad, lo).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert!(authorize_mutation(Some("s3cret"), &none, lo).is_err());
    }

    #[test]
    fn websocket_origins() {
        let with = |origin: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&with(None, "meet:8080"), &none));
        assert!(origin_allowed(
            &with(Some("http://meet:8080"), "meet:8080"),
            &none
        ));
        assert!(origin_allowed(
            &with(Some("https://MEET:8080/"), "meet:8080"),
            &none
        ));
        assert!(!origin_allowed(
            &with(Some("https://evil.example"), "meet:8080"),
            &none
        ));
        assert!(!origin_allowed(&with(Some("null"), "meet:8080"), &none));
        assert!(!origin_allowed(
            &with(Some("http://meet:8081"), "meet:8080"),
            &none
        ));
        let allowed = vec!["https://meet.example.org".to_owned()];
        assert!(origin_allowed(
            &with(Some("https://meet.example.org"), "10.0.0.2:8080"),
            &allowed
        ));
    }
}
