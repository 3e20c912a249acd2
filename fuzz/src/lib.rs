//! What the fuzz targets share: framing helpers and checks of written RTSP responses, and
//! the engine with in-memory WebRTC clients (confab's simulation) to drive it.

pub mod client;
pub mod rtsp;
