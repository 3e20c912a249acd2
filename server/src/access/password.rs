//! Room passwords, kept only as argon2id hashes in PHC string form (`$argon2id$v=19$…`).
//! `confab hash-password` makes one; the configuration holds nothing else.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Longest password accepted (argon2 would take more, but nobody types this much).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password that cannot be hashed, or a configured hash this server cannot check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("a room password must be 1-{MAX_PASSWORD_BYTES} bytes")]
    Length,
    #[error("{0}")]
    Hash(argon2::password_hash::Error),
    #[error("password_hash is not a PHC hash ({0}); make one with `confab hash-password`")]
    NotPhc(argon2::password_hash::Error),
    #[error("password_hash uses {algorithm}; only argon2 hashes from `confab hash-password` are accepted")]
    NotArgon2 { algorithm: String },
}

/// A PHC hash of `password` with a fresh random salt and argon2id's default cost.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::Length);
    }
    let mut salt = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(PasswordError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// Whether `phc` is a hash this server can check, with a message saying how to get one.
pub fn validate(phc: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(PasswordError::NotPhc)?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(PasswordError::NotArgon2 {
            algorithm: parsed.algorithm.to_string(),
        });
    }
    Ok(())
}

/// Whether `password` matches `phc`. Costs tens of milliseconds of CPU by design: call it off
/// the async runtime's threads.
pub fn verify(phc: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("open sesame").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(validate(&h).is_ok());
        assert!(verify(&h, "open sesame"));
        assert!(!verify(&h, "open sesamE"));
        assert!(!verify(&h, ""));
        assert_ne!(h, hash("open sesame").unwrap(), "salted");
        assert!(hash("").is_err());
        assert!(validate("plaintext").is_err());
        assert!(validate("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(!verify("garbage", "x"));
    }
}
