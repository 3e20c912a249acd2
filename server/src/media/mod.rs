//! The media plane: one UDP port shared by every WebRTC peer connection.
//!
//! The core (sans-I/O, told the time, seeded):
//! - [`api`]: its vocabulary: ids, commands, events, outputs. The rest of the server uses only
//!   this and [`MediaHandle`].
//! - [`engine`]: membership and the input/output loop.
//! - `track`: the seam: a published track's source and its sinks.
//! - `member`: browsers and external participants, by room.
//! - `connection`: the `rtc` peer connections and what they report.
//! - `negotiate`: offers, answers, payload types, candidates.
//! - `forward`: per-packet forwarding to sinks, and keyframe replay.
//! - `congestion`: pausing video to a connection the shell cannot send to fast enough.
//! - `adapt`: each subscriber's allocation, pacing and probing, four times a second.
//! - `bwe`: each subscriber's bandwidth estimate, from its TWCC feedback (`twcc`).
//! - `allocate`: spending a subscriber's estimate on layers, by priority.
//! - `pace`: releasing a subscriber's video at the estimate's pace, and probing above it.
//! - `rtx_budget`: a subscriber's retransmissions within a share of its estimate.
//! - `pli`: keyframe requests; [`keyframe`]: keyframe detection and the request gate.
//! - `gop_cache`: the latest group of pictures of a camera, for instant start.
//! - `low_layer`: a camera's small picture, made by the bridge while a subscriber needs it.
//! - `sender_report`: sender reports translated per sink.
//! - [`speaker`]: each room's dominant speaker, from the audio levels of its publishers.
//! - [`rewrite`]: per-sink sequence number and timestamp rewriting.
//! - [`dtls_repeat`]: keeping a peer's repeated handshake flight from `rtc` once answered.
//! - [`demux`]: which connection a datagram belongs to (STUN USERNAME, then source address).
//! - [`path`]: following a browser that moves to another candidate pair (ICE-lite).
//! - [`stun`]: the few STUN fields the two above read.
//! - [`peer`]: how the server's `rtc` connections are built (codecs, interceptors, ICE-lite).
//!
//! The shell:
//! - [`handle`]: how the rest of the server reaches the media thread.
//! - [`udp`]: the I/O shell owning the socket and driving the engine on its own thread.
//! - `tcp`: ICE-TCP: the listener beside the UDP socket, its connections and their bounded
//!   send queues.
//! - `outbox`: its sends: GSO runs per peer, `sendmmsg` across peers.
//!
//! Test and fuzz support:
//! - [`sim`]: the engine with simulated browser-like clients, cameras, players, network and
//!   clock.

mod adapt;
mod allocate;
pub mod api;
pub mod bwe;
mod congestion;
mod connection;
pub mod demux;
pub mod dtls_repeat;
pub mod engine;
mod forward;
mod gop_cache;
pub mod handle;
pub mod keyframe;
mod low_layer;
mod member;
mod negotiate;
mod outbox;
mod pace;
pub mod path;
pub mod peer;
mod pli;
pub mod rewrite;
mod rtx_budget;
mod sender_report;
pub mod sim;
pub mod speaker;
pub mod stun;
pub mod tcp;
mod track;
mod twcc;
pub mod udp;

pub use handle::{MediaHandle, Stopped, DATA_QUEUE};

#[cfg(test)]
mod tests;
