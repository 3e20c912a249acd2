//! Room passwords, kept only as argon2id hashes in PHC string form (`$argon2id$v=19$…`).
//! `confab hash-password` makes one; the configuration holds nothing else.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Longest password accepted (argon2 would take more, but nobody types this much).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A PHC hash of `password` with a fresh random salt and argon2id's default cost.
pub fn hash(password: &str) -> Result<String, String> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "a room password must be 1-{MAX_PASSWORD_BYTES} bytes"
        ));
    }
    let mut salt = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `phc` is a hash this server can check, with a message saying how to get one.
pub fn validate(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| {
        format!("password_hash is not a PHC hash ({e}); make one with `confab hash-password`")
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "password_hash uses {}; only argon2 hashes from `confab hash-password` are accepted",
            parsed.algorithm
        ));
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
