//! HTTP routes of shared images' previews (`chat::preview` makes them):
//!
//! - `GET /api/rooms/{room}/files/{hash}/preview`: the preview JPEG (upright, at most
//!   1280 px, no EXIF/GPS), for the chat to show instead of the original;
//! - `GET /api/rooms/{room}/files/{hash}/meta`: the file's metadata with its preview's size
//!   and fidelity (`preview`), or why there is none (`preview_error`).
//!
//! Both are read like the file itself (`?token=` or Bearer in a protected room), and only for
//! a file shared in that room. A preview is made at upload; one never made (a file from
//! before previews existed) is made on the first request, and stored either way.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::chat::{FileRecord, PreviewRecord};
use crate::http::{internal, shared_file, stored_file_response, ApiError, TokenQuery};
use crate::state::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/rooms/{room}/files/{hash}/preview", get(preview))
        .route("/api/rooms/{room}/files/{hash}/meta", get(meta))
}

/// The file shared in `room` with this hash, and its preview record, after the read check.
async fn lookup(
    app: &App,
    peer: SocketAddr,
    room: &str,
    hash: &str,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(FileRecord, Option<PreviewRecord>), ApiError> {
    let (_, rec) = shared_file(app, peer, room, hash, headers, token).await?;
    let preview = if rec.mime.starts_with("image/") {
        app.chat.ensure_preview(hash).await.map_err(internal)?
    } else {
        None
    };
    Ok((rec, preview))
}

async fn meta(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, hash)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (rec, preview) = lookup(&app, peer, &room, &hash, &headers, q.token.as_deref()).await?;
    let url = format!("/api/rooms/{room}/files/{hash}");
    let (preview, error) = match preview.map(|p| p.outcome) {
        Some(Ok(f)) => (
            Some(json!({
                "url": format!("{url}/preview"),
                "width": f.width,
                "height": f.height,
                "bytes": f.bytes,
                "original_width": f.original_width,
                "original_height": f.original_height,
                "psnr": (f.psnr * 100.0).round() / 100.0,
                "ssim": (f.ssim * 10_000.0).round() / 10_000.0,
            })),
            None,
        ),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    Ok(Json(json!({
        "name": rec.name,
        "size": rec.size,
        "mime": rec.mime,
        "url": url,
        "preview": preview,
        "preview_error": error,
    })))
}

async fn preview(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, hash)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, preview) = lookup(&app, peer, &room, &hash, &headers, q.token.as_deref()).await?;
    match preview.map(|p| p.outcome) {
        Some(Ok(_)) => {}
        Some(Err(why)) => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("this file has no preview: {why}; download the original instead"),
            ))
        }
        None => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                "only images have previews; download the file instead".into(),
            ))
        }
    }
    let path = app
        .chat
        .preview_path(&hash)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such file in this room".into()))?;
    let bytes = tokio::fs::read(&path).await.map_err(internal)?;
    Ok(stored_file_response(
        bytes,
        HeaderValue::from_static("image/jpeg"),
        Some(HeaderValue::from_static("inline; filename=\"preview.jpg\"")),
    ))
}
