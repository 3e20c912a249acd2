//! End-to-end tests of the confab SFU: the real binary, real WebRTC peers (webrtc-rs), real
//! H.264 (openh264) — see `common/` for the test peer.
//!
//! Run: `cargo test -p confab --test e2e` (add `-- --nocapture` for progress output;
//! `CONFAB_E2E_ECHO=1` echoes the server's output live, `CONFAB_E2E_SERVER_LOG=debug` sets its
//! log filter).
//!
//! Fault tests with their figures (network namespaces: needs root and iproute2):
//! `cargo test -p confab --test e2e faults -- --nocapture`.
//!
//! Chat throughput and latency (ignored by default):
//! `cargo test --release -p confab --test e2e chat_bench -- --ignored --nocapture`.

#[allow(dead_code)]
mod common;

mod access;
mod camera_low_layer;
mod chat;
mod chat_bench;
mod cluster;
mod cpu;
mod failover;
mod fanout;
mod faults;
mod http_cameras;
mod liveness;
mod loopback;
mod mesh;
mod reach;
mod rtsp_bridge;
mod rtsp_hostile;
mod shared_store;
mod shutdown;
mod signaling_edge;
mod snapshots;
mod tls;
