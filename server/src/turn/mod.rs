//! Built-in TURN (RFC 8656), opt-in with `--turn`: a relay for browsers that reach the media
//! port by no direct path (only TLS or a few TCP ports get out of their network), limited to
//! relaying to confab's own media port.
//!
//! - [`credentials`]: short-lived credentials per participant (TURN REST API scheme).
//! - [`server`]: the sans-I/O core: Allocate, Refresh, CreatePermission, ChannelBind, Send and
//!   Data indications, ChannelData, long-term authentication, lifetimes.
//! - [`framing`]: where a message ends on a TCP or TLS stream.
//! - [`io`]: the shell: UDP, TCP and TLS listeners, relay sockets, the core's task.
//!
//! Why not a crate: webrtc-rs's `turn` server (0.17) is tokio-bound and listens on UDP only
//! (its `ConnConfig` takes packet connections; there is no TCP or TLS listener), sits on the
//! older `webrtc-util`/`stun` 0.17 stack beside the `rtc` 0.21 one confab uses, and relays to
//! any peer address its clients name; `rtc`'s own `rtc-turn` is a client only. The message
//! formats are `rtc`'s (`rtc::stun`, `rtc::turn::proto`); what is written here is the server
//! logic, which is small for a relay to one known peer.

pub mod credentials;
pub mod framing;
pub mod io;
pub mod server;

use crate::protocol::TurnGrant;

/// What signaling needs of a running TURN relay: its ports and the secret its credentials are
/// signed with.
#[derive(Debug, Clone)]
pub struct TurnService {
    pub secret: credentials::TurnSecret,
    pub udp: u16,
    pub tcp: u16,
    pub tls: Option<u16>,
}

impl TurnService {
    /// Credentials for `participant`, valid for [`credentials::LIFETIME_SECS`] from `unix`.
    pub fn grant(&self, participant: &str, unix: u64) -> TurnGrant {
        let c = self.secret.issue(participant, unix);
        TurnGrant {
            username: c.username,
            credential: c.password,
            expires: c.expires,
            udp: Some(self.udp),
            tcp: Some(self.tcp),
            tls: self.tls,
        }
    }
}
