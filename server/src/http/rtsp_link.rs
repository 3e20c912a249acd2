//! Links to watch a participant outside the browser, over RTSP (VLC, ffplay, a recorder):
//! `GET /api/rooms/{room}/participants/{id}/rtsp-link` with `Authorization: Bearer
//! <upload_token>` (the member's token from `joined`) answers
//! `{"url": "rtsp://host:port/room/id", "port", "token_expires"}`.
//!
//! The port is the one the RTSP server really listens on; the host is the one the member's
//! browser reached this server by (or the RTSP listener's own address when it is bound to a
//! specific one). In a protected room the link carries `?token=`: a viewer token for the room
//! that expires after [`LINK_TTL_SECS`], so a copied link lets a player watch, never publish,
//! and stops working on its own. Only someone in the room can ask for one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::http::{member_by_token, parse_room, ApiError};
use crate::state::App;

/// How long the token in a link stays valid.
pub const LINK_TTL_SECS: u64 = 3600;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route(
        "/api/rooms/{room}/participants/{id}/rtsp-link",
        get(rtsp_link),
    )
}

async fn rtsp_link(
    State(app): State<Arc<App>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let member = member_by_token(&app, &room, &headers, "RTSP links")?;
    let present = app
        .rooms
        .participants(&room)
        .is_some_and(|ps| ps.iter().any(|p| p.id == id));
    if !present {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("nobody with id {id:?} is in room {room}"),
        ));
    }
    let host = rtsp_host(app.config.rtsp, headers.get(header::HOST));
    let port = app.config.rtsp.port();
    let mut url = format!("rtsp://{host}:{port}/{room}/{id}");
    let mut expires = None;
    if app.access.is_protected(&room) {
        let (t, exp) =
            app.access
                .viewer_token(&room, &format!("{} (RTSP)", member.name), LINK_TTL_SECS);
        url.push_str("?token=");
        url.push_str(&t);
        expires = Some(exp);
    }
    let mut resp =
        Json(json!({ "url": url, "port": port, "token_expires": expires })).into_response();
    // It may carry a token: nothing on the way keeps it.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The host part of an RTSP link: the RTSP listener's address when it is bound to a specific
/// one, else the host of the HTTP request (without its port), else the loopback address.
fn rtsp_host(rtsp: SocketAddr, http_host: Option<&HeaderValue>) -> String {
    let bracket = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    if !rtsp.ip().is_unspecified() {
        return bracket(rtsp.ip());
    }
    let given = http_host.and_then(|h| h.to_str().ok()).and_then(|h| {
        // `[::1]:8080`, `host:8080`, `host`: keep the brackets of an IPv6 literal.
        let name = match h.strip_prefix('[') {
            Some(rest) => format!("[{}]", rest.split(']').next()?),
            None => h.split(':').next()?.to_owned(),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
        valid.then_some(name)
    });
    given.unwrap_or_else(|| bracket(IpAddr::from([127, 0, 0, 1])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_links() {
        let any: SocketAddr = "0.0.0.0:8554".parse().unwrap();
        let any6: SocketAddr = "[::]:8554".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let v6: SocketAddr = "[fd00::7]:8554".parse().unwrap();
        let h = |s: &'static str| Some(HeaderValue::from_static(s));
        let cases = [
            (any, h("meet.example.org:8080"), "meet.example.org"),
            (any, h("meet.example.org"), "meet.example.org"),
            (any6, h("[::1]:8080"), "[::1]"),
            (any, h("192.0.2.4:443"), "192.0.2.4"),
            (any, None, "127.0.0.1"),
            (any, h("evil/path:1"), "127.0.0.1"),
            (any, h("a\"b"), "127.0.0.1"),
            (lo, h("meet.example.org:8080"), "127.0.0.1"),
            (v6, h("meet.example.org"), "[fd00::7]"),
        ];
        for (rtsp, host, want) in cases {
            assert_eq!(rtsp_host(rtsp, host.as_ref()), want, "{rtsp} {host:?}");
        }
    }
}
