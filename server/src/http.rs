//! HTTP: the pages, the `/ws` upgrade, the REST API, health and metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use rust_embed::RustEmbed;
use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::names::RoomName;
use crate::protocol::MAX_MESSAGE_BYTES;
use crate::signaling;

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
        .route("/api/rooms/{room}", get(get_room))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such page or API route; see docs/ for what exists".into(),
            )
        })
        .with_state(app)
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
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn parse_room(room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
}

async fn room_page(Path(room): Path<String>) -> Response {
    match parse_room(&room) {
        Ok(_) => asset::<WebAssets>("room.html"),
        Err(e) => e.into_response(),
    }
}

async fn ws_upgrade(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| signaling::run_session(socket, app))
}

async fn list_rooms(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let rooms: Vec<_> = app
        .rooms
        .list()
        .into_iter()
        .map(|(name, n)| json!({"name": name, "participants": n}))
        .collect();
    Json(json!(rooms))
}

async fn get_room(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let room = parse_room(&room)?;
    let participants = app.rooms.participants(&room).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("nobody is in room {room}; it exists only while someone is in it"),
        )
    })?;
    Ok(Json(
        json!({"name": room.as_str(), "participants": participants}),
    ))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let (rooms, participants) = app.rooms.counts();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(rooms, participants),
    )
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
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Constant-time comparison: the key is a secret.
            let ok = given.is_some_and(|g| {
                g.len() == key.len()
                    && g.bytes().zip(key.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
            });
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

/// The peer address of a request, for [`authorize_mutation`].
pub type PeerAddr = ConnectInfo<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

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
}
