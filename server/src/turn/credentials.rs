//! Short-lived TURN credentials in the "TURN REST API" scheme (draft-uberti-behave-turn-rest,
//! what coturn calls `use-auth-secret`): the server hands each participant a username
//! `<expiry>:<participant>` (expiry in Unix seconds) and the password
//! `base64(HMAC-SHA1(secret, username))`. The TURN server needs no table of users: it recomputes
//! the password from the username and refuses names whose expiry has passed. Whoever holds the
//! credentials can relay only until the expiry, and only to the meeting's own media port (see
//! [`super::server`]).

use std::sync::Arc;

use base64::Engine as _;
use rtc::crypto::{HmacAlgorithm, RTCCryptoProvider};

/// How long credentials handed out at join are valid. A session that outlives them keeps its
/// allocation (refreshes need the same credentials, which stay valid for refreshes of an
/// existing allocation: see [`TurnSecret::password`]); a new join gets new ones.
pub const LIFETIME_SECS: u64 = 6 * 3600;

/// The secret that signs TURN credentials, drawn at start (credentials do not survive a
/// restart, and neither do sessions).
#[derive(Clone)]
pub struct TurnSecret {
    key: Vec<u8>,
    crypto: Arc<dyn RTCCryptoProvider>,
}

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(…)")
    }
}

/// A participant's credentials, as the page gives them to `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Unix seconds after which they are refused.
    pub expires: u64,
}

impl TurnSecret {
    pub fn new(key: Vec<u8>, crypto: Arc<dyn RTCCryptoProvider>) -> TurnSecret {
        TurnSecret { key, crypto }
    }

    /// A random secret.
    pub fn generate(crypto: Arc<dyn RTCCryptoProvider>) -> TurnSecret {
        let key: [u8; 32] = rand::random();
        TurnSecret::new(key.to_vec(), crypto)
    }

    pub fn crypto(&self) -> &Arc<dyn RTCCryptoProvider> {
        &self.crypto
    }

    /// Credentials for `participant`, valid from `now` (Unix seconds) for [`LIFETIME_SECS`].
    pub fn issue(&self, participant: &str, now: u64) -> Credentials {
        let expires = now + LIFETIME_SECS;
        let username = format!("{expires}:{participant}");
        let password = self.sign(&username);
        Credentials {
            username,
            password,
            expires,
        }
    }

    /// The password for `username`, if it is one of ours and, for a new allocation
    /// (`fresh`), not expired at `now`. An allocation made in time may be refreshed with them
    /// after they expire (RFC 8656 does not end allocations at credential expiry; the allocation's
    /// own lifetime does).
    pub fn password(&self, username: &str, now: u64, fresh: bool) -> Option<String> {
        let (expiry, who) = username.split_once(':')?;
        let expiry: u64 = expiry.parse().ok()?;
        if who.is_empty() || (fresh && expiry < now) {
            return None;
        }
        Some(self.sign(username))
    }

    fn sign(&self, username: &str) -> String {
        let mut tag = [0u8; 20];
        let signed = self
            .crypto
            .crypto()
            .new_hmac(HmacAlgorithm::Sha1, &self.key)
            .and_then(|mut mac| mac.sign(&[username.as_bytes()], &mut tag));
        if signed.is_err() {
            // Every built-in provider has HMAC-SHA1 (STUN needs it); a provider without it gets
            // a password nobody can use rather than a panic.
            tracing::error!(
                "the crypto provider cannot compute HMAC-SHA1: TURN will refuse everyone"
            );
            return String::new();
        }
        base64::engine::general_purpose::STANDARD.encode(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> TurnSecret {
        TurnSecret::new(b"north".to_vec(), rtc::crypto::default_provider().unwrap())
    }

    #[test]
    fn rest_api_credentials() {
        let s = secret();
        let c = s.issue("alice", 1_000);
        assert_eq!(c.username, format!("{}:alice", 1_000 + LIFETIME_SECS));
        // base64(HMAC-SHA1("north", username)), as coturn computes it.
        assert_eq!(c.password.len(), 28);
        assert_eq!(
            s.password(&c.username, 2_000, true),
            Some(c.password.clone())
        );
        // Expired: no new allocation, but an existing one may be refreshed.
        assert_eq!(s.password(&c.username, c.expires + 1, true), None);
        assert_eq!(
            s.password(&c.username, c.expires + 1, false),
            Some(c.password.clone())
        );
        for bad in ["", "alice", ":alice", "x:alice", "123:", "-5:bob"] {
            assert_eq!(s.password(bad, 0, true), None, "{bad:?}");
        }
        // Another secret, another password.
        let other = TurnSecret::new(b"south".to_vec(), s.crypto().clone());
        assert_ne!(other.password(&c.username, 0, true), Some(c.password));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA1(key = "north", "1700000000:bob"), computed with `openssl dgst -sha1 -hmac`.
        let s = secret();
        assert_eq!(
            s.password("1700000000:bob", 0, false).as_deref(),
            Some(KNOWN)
        );
    }

    const KNOWN: &str = "7tNSWpJ3gOxGfEgOjt+kaWhBC20=";
}
