//! Signed join tokens: JWT (RFC 7519) with HS256 (RFC 7518 §3.2) and nothing else.
//!
//! A token names one room, a display name and a role, and expires. Only `alg: HS256` is
//! accepted (never `none`, never an algorithm the token picks for itself), the signature is
//! compared in constant time, and the token's size is bounded before anything is decoded.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::protocol::Role;

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The shortest secret `--token-secret` may be.
pub const MIN_SECRET_BYTES: usize = 16;

/// The file in the data directory that keeps the generated secret.
pub const SECRET_FILE: &str = "token-secret";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub room: String,
    pub name: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a JWT (three base64url parts separated by dots)")]
    Malformed,
    #[error("the token is signed with {0:?}; only HS256 tokens from `confab token` are accepted")]
    Algorithm(String),
    #[error("the token's signature does not match this server's secret")]
    Signature,
    #[error("the token expired; ask for a new one")]
    Expired,
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
}

/// Why the key to sign tokens with is not there.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "--token-secret must be at least {MIN_SECRET_BYTES} characters; use a long random string"
    )]
    TooShort,
    #[error("{} is too short to be a token secret; delete it to have a new one made", path.display())]
    FileTooShort { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create data directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A token lifetime (`confab token --ttl`) that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("--ttl {given:?} is not a duration; use e.g. 30m, 2h or 7d")]
    NotADuration { given: String },
    #[error("--ttl {given:?}: the unit must be s, m, h or d")]
    Unit { given: String },
    #[error("--ttl {given:?} must be more than zero and less than centuries")]
    OutOfRange { given: String },
    #[error("--ttl {given:?} is more than a year")]
    OverAYear { given: String },
}

/// The HMAC key tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, not even in a debug dump of the configuration.
        f.write_str("TokenKey(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        TokenKey(secret.to_vec())
    }

    /// `--token-secret` when given; otherwise the secret kept in `data/token-secret`, made
    /// on first use (readable by the owner only).
    pub fn load(given: Option<&str>, data: &Path) -> Result<TokenKey, SecretError> {
        if let Some(s) = given {
            if s.len() < MIN_SECRET_BYTES {
                return Err(SecretError::TooShort);
            }
            return Ok(TokenKey::new(s.as_bytes()));
        }
        let path = data.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= MIN_SECRET_BYTES => {
                return Ok(TokenKey::new(s.trim().as_bytes()))
            }
            Ok(_) => return Err(SecretError::FileTooShort { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SecretError::Read { path, source }),
        }
        std::fs::create_dir_all(data).map_err(|source| SecretError::CreateDir {
            path: data.to_owned(),
            source,
        })?;
        let secret = crate::secret::token(48);
        if let Err(source) = write_private(&path, secret.as_bytes()) {
            return Err(SecretError::Write { path, source });
        }
        tracing::info!(path = %path.display(), "generated the join-token secret");
        Ok(TokenKey::new(secret.as_bytes()))
    }

    /// The key of a node: `--token-secret` when given; in cluster mode otherwise one derived
    /// from the cluster secret (HMAC-SHA256 of a fixed label), so that every node of the
    /// cluster, and `confab token` run with the same secret, sign and verify alike; otherwise
    /// [`TokenKey::load`]'s generated secret.
    pub fn for_node(
        given: Option<&str>,
        cluster_secret: Option<&str>,
        data: &Path,
    ) -> Result<TokenKey, SecretError> {
        match (given, cluster_secret) {
            (None, Some(c)) => Ok(TokenKey(crate::cluster::placement::derive(
                c.as_bytes(),
                "confab join token v1",
            ))),
            _ => Self::load(given, data),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
        };
        let encode = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let head = encode(&serde_json::to_vec(&header).unwrap_or_default());
        let body = encode(&serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{head}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = encode(&mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// The claims of a token this key signed that has not expired at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(head)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let mut mac = self.mac();
        mac.update(head.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        mac.verify_slice(&decode(signature)?)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(body)?).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Parses a duration like `90s`, `15m`, `2h`, `7d` (or plain seconds).
pub fn parse_ttl(s: &str) -> Result<u64, TtlError> {
    let s = s.trim();
    let given = || s.to_owned();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| TtlError::NotADuration { given: given() })?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(TtlError::Unit { given: given() }),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(TtlError::OutOfRange { given: given() }),
        Some(v) if v > 366 * 86400 => Err(TtlError::OverAYear { given: given() }),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            room: "board".into(),
            name: "Alice".into(),
            role: Role::Operator,
            exp,
            iat: 100,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let t = key.sign(&claims(1000));
        assert_eq!(key.verify(&t, 999).unwrap(), claims(1000));
        assert_eq!(key.verify(&t, 1000), Err(TokenError::Expired));
        let other = TokenKey::new(b"another secret of length");
        assert_eq!(other.verify(&t, 10), Err(TokenError::Signature));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let key = TokenKey::new(b"0123456789abcdef0123");
        let t = key.sign(&claims(1000));
        let parts: Vec<&str> = t.split('.').collect();
        // alg: none with an empty signature.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            key.verify(&format!("{none}.{}.", parts[1]), 10),
            Err(TokenError::Algorithm("none".into()))
        );
        // Claims changed (role raised) under the old signature.
        let mut raised = claims(1000);
        raised.role = Role::Operator;
        raised.room = "other".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&raised).unwrap());
        assert_eq!(
            key.verify(&format!("{}.{body}.{}", parts[0], parts[2]), 10),
            Err(TokenError::Signature)
        );
        for bad in ["", ".", "..", "a.b.c", "a.b.c.d", &"x".repeat(5000)] {
            assert!(key.verify(bad, 10).is_err(), "{bad:.20}");
        }
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("2h").unwrap(), 7200);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("7d").unwrap(), 7 * 86400);
        for bad in ["", "0", "h", "2w", "-1h", "99999999999999999999d", "400d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_ttl("2w").unwrap_err().to_string(),
            "--ttl \"2w\": the unit must be s, m, h or d"
        );
    }

    #[test]
    fn secret_is_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("confab-secret-{}", crate::secret::token(8)));
        let a = TokenKey::load(None, &dir).unwrap();
        let b = TokenKey::load(None, &dir).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
        assert!(matches!(
            TokenKey::load(Some("short"), &dir),
            Err(SecretError::TooShort)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_nodes_share_the_token_key() {
        // Two nodes with their own data directories and the same cluster secret: a token one
        // signs, the other accepts; a node of another cluster does not. No file is written.
        let dirs: Vec<_> = (0..3)
            .map(|_| std::env::temp_dir().join(format!("confab-node-{}", crate::secret::token(8))))
            .collect();
        let secret = Some("the cluster's shared secret");
        let a = TokenKey::for_node(None, secret, &dirs[0]).unwrap();
        let b = TokenKey::for_node(None, secret, &dirs[1]).unwrap();
        let other = TokenKey::for_node(None, Some("another cluster's secret"), &dirs[2]).unwrap();
        let claims = Claims {
            room: "demo".into(),
            name: "Alice".into(),
            role: Role::Presenter,
            exp: 2_000_000_000,
            iat: 1_000_000_000,
        };
        let token = a.sign(&claims);
        assert_eq!(b.verify(&token, 1_500_000_000), Ok(claims));
        assert_eq!(
            other.verify(&token, 1_500_000_000),
            Err(TokenError::Signature)
        );
        // The derived key is not the cluster secret itself (which also signs node records).
        assert_ne!(a.0, b"the cluster's shared secret".to_vec());
        assert!(dirs.iter().all(|d| !d.join(SECRET_FILE).exists()));
        // --token-secret, when given, still wins.
        let given = TokenKey::for_node(Some("an explicit token secret"), secret, &dirs[0]).unwrap();
        assert_eq!(given.0, b"an explicit token secret".to_vec());
    }
}
