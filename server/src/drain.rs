//! Draining a node (SIGTERM in cluster mode, `confab drain`, `POST /api/node/drain`): it
//! takes no new rooms, moves the rooms it serves to other nodes and tells their people to
//! follow, then lets the server stop.
//!
//! 1. The node's record says `draining` (a heartbeat goes out at once), so no node places a
//!    room here, and this node stops refreshing its rooms' keys.
//! 2. Each room is moved in Redis to the least-loaded other node (`Cluster::move_room`, one
//!    atomic script), and everyone in it is sent `moved` with that node's address. Pages
//!    rejoin there at once; pulled cameras follow at the new node's next camera check.
//! 3. The node waits until nobody is left in a browser session, or `--drain-timeout`; then
//!    the usual shutdown says goodbye to whoever stayed.

use std::time::{Duration, Instant};

use crate::cluster::{ws_url, Cluster, Placement};
use crate::protocol::{ParticipantKind, ServerMessage};
use crate::state::App;

/// What the people of a moved room are told.
const MOVED: &str = "This server is shutting down for maintenance; you are being moved to another one. The meeting goes on there.";

/// How often a drain in progress says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where a drain is, for `GET /api/node/drain` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub draining: bool,
    pub rooms: usize,
    /// People in browser sessions still on this node (cameras move by themselves).
    pub participants: usize,
}

/// How many people (not cameras) are still here, and in how many rooms.
pub fn progress(app: &App, draining: bool) -> Progress {
    let mut rooms = 0;
    let mut participants = 0;
    for (room, _) in app.rooms.list() {
        let people = app
            .rooms
            .participants(&room)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.kind == ParticipantKind::Browser)
            .count();
        if people > 0 {
            rooms += 1;
            participants += people;
        }
    }
    Progress {
        draining,
        rooms,
        participants,
    }
}

/// Drains this node: returns when everyone has moved or `--drain-timeout` has passed.
pub async fn drain(app: &App, cluster: &Cluster) {
    let started = Instant::now();
    let limit = app.config.drain_timeout;
    cluster.start_draining().await;
    let rooms = app.rooms.list();
    let at_start = progress(app, true);
    tracing::info!(
        rooms = rooms.len(),
        participants = at_start.participants,
        timeout = ?limit,
        "draining: moving this node's rooms to other nodes (send the signal again to stop at once)"
    );
    for (room, _) in rooms {
        match cluster.move_room(&room, cluster.id()).await {
            Ok(Placement::There(node)) => {
                tracing::info!(room = %room, node = %node.id, url = %node.url, "draining: room moved; its people follow");
                app.rooms.broadcast(
                    &room,
                    None,
                    &ServerMessage::Moved {
                        url: ws_url(&node.url),
                        node: node.id.clone(),
                        message: MOVED.into(),
                    },
                );
            }
            Ok(Placement::Here) => {
                tracing::warn!(room = %room, "draining: no other live node takes rooms; its people stay until the drain times out");
            }
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "draining: the room could not be moved; its people stay until the drain times out");
            }
        }
    }
    let deadline = started + limit;
    let mut next_report = Instant::now() + PROGRESS_EVERY;
    loop {
        // Registered before the count, so a session ending in between is not missed.
        let ended = app.session_ended.notified();
        let now = progress(app, true);
        if now.participants == 0 {
            tracing::info!(after = ?started.elapsed(), "drained: everyone has moved");
            return;
        }
        let t = Instant::now();
        if t >= deadline {
            tracing::warn!(
                participants = now.participants,
                rooms = now.rooms,
                "drain timed out (--drain-timeout): stopping with people still here"
            );
            return;
        }
        if t >= next_report {
            tracing::info!(
                participants = now.participants,
                rooms = now.rooms,
                left = ?deadline - t,
                "draining: waiting for people to move"
            );
            next_report = t + PROGRESS_EVERY;
        }
        let wake = deadline.min(next_report);
        let _ = tokio::time::timeout_at(wake.into(), ended).await;
    }
}
