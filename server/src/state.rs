//! What the HTTP handlers, signaling sessions and operator actions share while the server runs.
//!
//! It is its own module, apart from [`crate::app`] which builds it, so that the layers using it
//! (`http`, `signaling`, `moderation`) depend on it without depending on the code that starts
//! and stops them: no import cycle between the server's top-level modules.

use std::sync::Arc;

use tokio::sync::watch;

use crate::bridge::Bridge;
use crate::chat::Chat;
use crate::config::Config;
use crate::media::MediaHandle;
use crate::metrics::Metrics;
use crate::room::Rooms;

/// Shared state of the HTTP and signaling side.
pub struct App {
    pub config: Config,
    /// Who may enter which room.
    pub access: Arc<crate::access::Access>,
    pub rooms: Arc<Rooms>,
    pub bridge: Bridge,
    pub chat: Chat,
    pub media: MediaHandle,
    /// The built-in TURN relay (`--turn`), if it runs: signaling hands out its credentials.
    pub turn: Option<crate::turn::TurnService>,
    /// The ICE candidates and relay the media plane announces (`/api/diagnostics/ice`).
    pub announced: crate::diagnostics::Announced,
    pub metrics: Arc<Metrics>,
    /// This node's membership of a cluster (`--redis`), if it is in one.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Cluster mode: which pulled cameras this node pulls (those of rooms placed here).
    pub cameras: Option<Arc<crate::cluster::cameras::Cameras>>,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Signalled whenever a signaling session has ended (shutdown waits on it).
    pub session_ended: tokio::sync::Notify,
    /// Cluster mode: `POST /api/node/drain` asks the server to drain and stop.
    pub drain_requested: tokio::sync::Notify,
}
