//! Backpressure from the shell: an ICE-TCP connection whose reader is slower than the media
//! sent to it.
//!
//! UDP never pushes back (a full socket buffer drops datagrams, and the receiver's NACKs and
//! PLIs recover), but a TCP connection delivers everything in order, so a reader that falls
//! behind would make the server queue without limit or stall the media thread. The shell keeps
//! a bounded queue per ICE-TCP connection (`super::tcp`) and says when it fills past its mark
//! ([`Command::Congested`]). Then the connection's video sinks finish the frame they are in
//! (a half frame is a broken picture) and send nothing more; audio, RTCP and ICE go on (they are
//! a few kilobytes a second). When the queue has drained, each video sink starts again at a
//! keyframe, so the subscriber's decoder never sees a frame with a missing reference. The
//! sinks' sequence numbers stay continuous (the rewriter rebases at the keyframe), so the
//! subscriber does not ask for the skipped packets.
//!
//! Dropping here rather than in the shell: the shell sees encrypted datagrams and would have to
//! guess which are video and where frames end; the engine knows both per sink.
//!
//! [`Command::Congested`]: super::api::Command::Congested

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::api::FiveTuple;
use super::engine::Engine;
use crate::metrics::KeyframeCause;
use crate::protocol::PcRole;

impl Engine {
    pub(super) fn congested(&mut self, now: Instant, path: FiveTuple, congested: bool) {
        let Some(key) = self.conns.demux.owner(path) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.congested == congested {
            return;
        }
        conn.congested = congested;
        let (owner, role) = (conn.owner, conn.role);
        let id = self.members.get(&owner).map(|m| m.id.to_string());
        if congested {
            self.metrics.ice_tcp_congested.fetch_add(1, Relaxed);
            tracing::debug!(participant = ?id, %path, "ICE-TCP connection congested: its video pauses");
        } else {
            tracing::debug!(participant = ?id, %path, "ICE-TCP connection drained: its video resumes at a keyframe");
            if role == PcRole::Subscribe {
                self.request_keyframes_for(now, owner, KeyframeCause::Resume);
            }
        }
    }
}
