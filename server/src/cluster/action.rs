//! Operator actions relayed between nodes: a REST call for a room on another node is checked
//! where it arrives (`--api-key` or loopback) and handed to the room's node over Redis
//! pub/sub, which carries it out and answers. Pure: the messages, their signatures
//! (HMAC-SHA256 with a key derived from the cluster secret), and the checks a receiver makes
//! (addressed to it, fresh, not seen before). `cluster.rs` moves them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::protocol::MediaKind;

/// Requests for node `{id}` arrive on `confab:actions:{id}`; answers on `confab:replies:{id}`
/// of the node that asked.
pub const ACTIONS_PREFIX: &str = "confab:actions:";
pub const REPLIES_PREFIX: &str = "confab:replies:";

/// A message older (or further in the future) than this is refused: clocks of the nodes may
/// differ a little, a replayed capture may not be used later.
pub const MAX_AGE_MS: u64 = 30_000;

/// What an operator does, as it crosses to the room's node (`moderation::Action` by value,
/// with the ids still to be checked there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RemoteAction {
    Mute {
        id: String,
        kind: MediaKind,
    },
    Remove {
        id: String,
    },
    Lock {
        locked: bool,
    },
    End,
    /// Stop pulling camera `name` (its registry entry is already gone; `cameras.rs`).
    StopCamera {
        name: String,
    },
}

/// What travels: a request (with the room and action) or its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Request {
        room: String,
        action: RemoteAction,
    },
    /// `status`: the HTTP status the asking node answers with; `message` for errors.
    Reply {
        status: u16,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Random per request; a reply carries its request's.
    pub id: String,
    pub from: String,
    pub to: String,
    /// Unix milliseconds when sent.
    pub at: u64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("not a signed relay message")]
    Malformed,
    #[error("the signature does not match this cluster's secret")]
    Signature,
    #[error("the message is not JSON of a relay message: {0}")]
    Json(String),
    #[error("addressed to node {to}, not this one")]
    NotForUs { to: String },
    #[error("sent {age_ms} ms away from now; at most {MAX_AGE_MS} ms are accepted")]
    Stale { age_ms: u64 },
    #[error("message {id} was seen before (a replay)")]
    Replayed { id: String },
}

/// Signs and checks relay messages for one node; remembers recent ids against replays.
pub struct Relay {
    key: Vec<u8>,
    me: String,
    seen: HashMap<String, u64>,
}

impl Relay {
    pub fn new(cluster_secret: &[u8], me: &str) -> Relay {
        Relay {
            key: super::placement::derive(cluster_secret, "confab operator action v1"),
            me: me.to_owned(),
            seen: HashMap::new(),
        }
    }

    /// `hex(mac).json`
    pub fn seal(&self, e: &Envelope) -> String {
        super::placement::seal(
            &self.key,
            &serde_json::to_string(e).expect("a relay message serializes"),
        )
    }

    /// The message in `raw` if it is signed with the cluster's key, addressed to this node,
    /// sent within [`MAX_AGE_MS`] of `now_ms`, and new.
    pub fn open(&mut self, raw: &[u8], now_ms: u64) -> Result<Envelope, RelayError> {
        use super::placement::Unsealed;
        let json = super::placement::unseal(&self.key, raw).map_err(|e| match e {
            Unsealed::Malformed => RelayError::Malformed,
            Unsealed::Signature => RelayError::Signature,
        })?;
        let e: Envelope =
            serde_json::from_slice(json).map_err(|e| RelayError::Json(e.to_string()))?;
        if e.to != self.me {
            return Err(RelayError::NotForUs { to: e.to });
        }
        let age_ms = now_ms.abs_diff(e.at);
        if age_ms > MAX_AGE_MS {
            return Err(RelayError::Stale { age_ms });
        }
        // Ids older than the window can go: a message that old is refused as stale anyway.
        self.seen
            .retain(|_, at| now_ms.saturating_sub(*at) <= 2 * MAX_AGE_MS);
        if self.seen.insert(e.id.clone(), now_ms).is_some() {
            return Err(RelayError::Replayed { id: e.id });
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(to: &str, id: &str, at: u64) -> Envelope {
        Envelope {
            id: id.into(),
            from: "a".into(),
            to: to.into(),
            at,
            body: Body::Request {
                room: "demo".into(),
                action: RemoteAction::Mute {
                    id: "bob".into(),
                    kind: MediaKind::Audio,
                },
            },
        }
    }

    #[test]
    fn only_fresh_signed_messages_for_us_once() {
        let secret = b"the cluster secret for relays";
        let a = Relay::new(secret, "a");
        let mut b = Relay::new(secret, "b");
        let now = 1_000_000;
        let sealed = a.seal(&request("b", "r1", now));
        assert_eq!(
            b.open(sealed.as_bytes(), now + 5),
            Ok(request("b", "r1", now))
        );
        // The same message again: a replay.
        assert_eq!(
            b.open(sealed.as_bytes(), now + 10),
            Err(RelayError::Replayed { id: "r1".into() })
        );
        // For another node, too old, from the future, forged, another cluster, garbage.
        let to_c = a.seal(&request("c", "r2", now));
        assert_eq!(
            b.open(to_c.as_bytes(), now),
            Err(RelayError::NotForUs { to: "c".into() })
        );
        let old = a.seal(&request("b", "r3", now - 31_000));
        assert!(matches!(
            b.open(old.as_bytes(), now),
            Err(RelayError::Stale { .. })
        ));
        let future = a.seal(&request("b", "r4", now + 31_000));
        assert!(matches!(
            b.open(future.as_bytes(), now),
            Err(RelayError::Stale { .. })
        ));
        let forged = a
            .seal(&request("b", "r5", now))
            .replace("\"bob\"", "\"eve\"");
        assert_eq!(b.open(forged.as_bytes(), now), Err(RelayError::Signature));
        let other = Relay::new(b"another cluster's secret", "a");
        let foreign = other.seal(&request("b", "r6", now));
        assert_eq!(b.open(foreign.as_bytes(), now), Err(RelayError::Signature));
        for junk in [&b""[..], b"x", b"{}", b"zz.{}", &[0xff; 70][..]] {
            assert!(b.open(junk, now).is_err(), "{junk:?}");
        }
        // Seen ids are forgotten once stale ones would be refused anyway.
        let later = now + 3 * MAX_AGE_MS;
        let fresh = a.seal(&request("b", "r7", later));
        assert!(b.open(fresh.as_bytes(), later).is_ok());
        assert_eq!(b.seen.len(), 1);
    }

    #[test]
    fn actions_on_the_wire() {
        let e = Body::Request {
            room: "demo".into(),
            action: RemoteAction::Lock { locked: true },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "request", "room": "demo", "action": {"type": "lock", "locked": true}})
        );
    }
}
