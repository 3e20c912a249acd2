//! confab: self-hosted video meetings. One binary: a one-port WebRTC SFU on `rtc`, WebSocket
//! signaling, REST, and (later) chat and an RTSP bridge.
#![forbid(unsafe_code)]

pub mod access;
pub mod app;
pub mod bridge;
pub mod chat;
pub mod config;
pub mod diagnostics;
pub mod http;
pub mod media;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod room;
pub mod rtsp;
pub mod secret;
pub mod signaling;
pub mod tls;
pub mod turn;
