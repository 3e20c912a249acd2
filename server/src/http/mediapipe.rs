//! The MediaPipe selfie segmentation files the page's background blur runs on, served by
//! confab itself: meetings must work on a LAN without internet, and a CDN would learn who
//! meets when. `build.rs` fetches them from npm at a pinned version, checks the tarball's
//! integrity hash and embeds them; a build without npm has none, and then the manifest says
//! why, so the page can disable its **Blur background** button with that reason.
//!
//! Routes: `GET /vendor/mediapipe/manifest.json` (`{available, reason, package, version,
//! integrity, base, license}`), `GET /vendor/mediapipe/{version}/{file}` (immutable: the version is in the path)
//! and `GET /vendor/mediapipe/LICENSE` (Apache-2.0, the package's licence; the package ships
//! only its `license` field, so the text is kept in `server/assets/mediapipe/`).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::http::ApiError;
use crate::state::App;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/mediapipe_assets.rs"));
}

pub use assets::{INTEGRITY, PACKAGE, UNAVAILABLE, VERSION};

const LICENSE: &str = include_str!("../../assets/mediapipe/LICENSE");

/// Where the files are served (the page's worker loads them from here).
pub fn base() -> String {
    format!("/vendor/mediapipe/{VERSION}/")
}

/// The embedded file called `name`, if any.
pub fn file(name: &str) -> Option<&'static [u8]> {
    assets::FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, data)| *data)
}

/// Whether the files are there, and if not, why (as the page shows it).
pub fn availability() -> Result<(), &'static str> {
    match UNAVAILABLE {
        Some(why) => Err(why),
        None if assets::FILES.is_empty() => Err("the blur files are missing from this build"),
        None => Ok(()),
    }
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/vendor/mediapipe/manifest.json", get(manifest))
        .route(
            "/vendor/mediapipe/LICENSE",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    LICENSE,
                )
            }),
        )
        .route("/vendor/mediapipe/{version}/{file}", get(serve))
}

async fn manifest() -> Response {
    let (available, reason) = match availability() {
        Ok(()) => (true, None),
        Err(why) => (
            false,
            Some(format!("Background blur is not available: {why}.")),
        ),
    };
    let mut resp = Json(serde_json::json!({
        "available": available,
        "reason": reason,
        "package": PACKAGE,
        "version": VERSION,
        "integrity": INTEGRITY,
        "base": base(),
        "license": "/vendor/mediapipe/LICENSE",
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn serve(Path((version, name)): Path<(String, String)>) -> Response {
    let Some(data) = (version == VERSION).then(|| file(&name)).flatten() else {
        return ApiError(
            StatusCode::NOT_FOUND,
            format!("no file {name:?} of MediaPipe {version}; see /vendor/mediapipe/manifest.json"),
        )
        .into_response();
    };
    let mime = match name.rsplit('.').next() {
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    };
    let mut resp = ([(header::CONTENT_TYPE, mime)], data).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_embedded_or_the_reason_is_given() {
        match availability() {
            Ok(()) => {
                for name in [
                    "selfie_segmentation.js",
                    "selfie_segmentation_solution_simd_wasm_bin.wasm",
                    "selfie_segmentation_landscape.tflite",
                ] {
                    assert!(file(name).is_some_and(|d| !d.is_empty()), "{name}");
                }
                // The WASM magic number: what was embedded is the module, not an error page.
                let wasm = file("selfie_segmentation_solution_simd_wasm_bin.wasm").unwrap();
                assert_eq!(&wasm[..4], b"\0asm");
            }
            Err(why) => assert!(!why.is_empty()),
        }
        assert!(file("../Cargo.toml").is_none());
        assert!(LICENSE.contains("Apache License"));
    }
}
