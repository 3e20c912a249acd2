//! The RTSP server on `--rtsp` (RTSP/1.0, RFC 2326): cameras and encoders push into rooms
//! (ANNOUNCE, SETUP, RECORD) and players watch a participant (DESCRIBE, SETUP, PLAY), over
//! TCP-interleaved or UDP transport. `docs/rtsp.md` describes the behaviour.
//!
//! Pure protocol code, told the time and free of sockets, does the work:
//! - [`message`]: framing of a connection's byte stream, requests and responses;
//! - [`transport`]: the `Transport` header;
//! - [`sdp`]: DESCRIBE SDP from [`OutputTrack`](crate::bridge::OutputTrack)s (ANNOUNCE SDP is
//!   read into [`InputTrack`](crate::bridge::InputTrack)s by `crate::bridge::sdp`, which the
//!   camera puller shares);
//! - [`sender`]: a player's outgoing RTP stream (SSRC, sequence and timestamp rewriting,
//!   RTCP sender reports);
//! - [`session`]: the per-connection state machine;
//! - [`relay`]: what becomes of a connection whose room is on another cluster node (players
//!   are redirected, publishers relayed).
//!
//! [`server`] is the shell: the listener, one task per connection, the shared UDP port pair,
//! and the calls into the [`Bridge`](crate::bridge::Bridge).

pub mod message;
pub mod relay;
pub mod sdp;
pub mod sender;
pub mod server;
pub mod session;
pub mod transport;

pub use server::serve;
