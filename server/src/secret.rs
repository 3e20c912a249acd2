//! Secrets the server hands out or checks: random tokens (ICE credentials, upload tokens,
//! temporary names) and comparisons that take the same time whatever the input, so a secret
//! cannot be guessed byte by byte from response times.

use rand::distr::{Alphanumeric, SampleString};

/// `len` random characters of `A-Z a-z 0-9` from the OS-seeded CSPRNG.
pub fn token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Whether `given` equals `expected`, in time that depends only on their lengths.
pub fn equal(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_comparison() {
        let a = token(32);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, token(32));
        assert!(equal(&a, &a.clone()));
        assert!(!equal(&a, &a[..31]));
        assert!(!equal("", "x"));
        assert!(equal("", ""));
        assert!(!equal("abc", "abd"));
    }
}
