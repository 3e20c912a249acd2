//! What the fuzz targets share: framing helpers and checks of written RTSP responses, and an
//! in-memory WebRTC client peer for driving the engine.

pub mod client;
pub mod rtsp;
