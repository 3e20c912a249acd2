//! The media plane: one UDP port shared by every WebRTC peer connection.
//!
//! - [`demux`]: which connection a datagram belongs to (STUN USERNAME, then source address).
//! - [`peer`]: how the server's `rtc` connections are built (codecs, interceptors, ICE-lite).
//! - [`path`]: following a browser that moves to another candidate pair (ICE-lite).
//! - [`rewrite`], [`keyframe`]: per-subscriber sequence/timestamp rewriting, keyframe logic.
//! - [`api`]: the core's vocabulary: ids, commands, events, outputs.
//! - [`engine`]: the sans-I/O SFU core: rooms' peer connections and forwarding, told the time.
//! - [`handle`]: how the rest of the server reaches the media thread.
//! - [`udp`]: the I/O shell owning the socket and driving the engine on its own thread.

pub mod api;
pub mod demux;
pub mod engine;
pub mod handle;
pub mod keyframe;
pub mod path;
pub mod peer;
pub mod rewrite;
pub mod udp;

pub use handle::{MediaHandle, Stopped, DATA_QUEUE};
