//! Validated names: rooms, participant ids and display names. Checked once at the edge
//! (HTTP path, WebSocket `join`, RTSP URL), then trusted by type.

use std::fmt;

/// A name that is not valid where it was given; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("room name {given:?} is not valid: use 1-64 characters of A-Z a-z 0-9 . _ -")]
    Room { given: String },
    #[error("participant id {given:?} is not valid: use 1-64 characters of A-Z a-z 0-9 . _ -")]
    Participant { given: String },
    #[error("name must be 1-64 characters")]
    DisplayNameLength,
    #[error("name must not contain control characters")]
    DisplayNameControl,
}

/// The characters allowed in room names and participant ids.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A room name: 1–64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.chars().all(is_name_char) {
            return Err(NameError::Room {
                given: truncate_for_message(s),
            });
        }
        Ok(RoomName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A participant's id, unique within its room, of the room-name alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(String);

impl ParticipantId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        RoomName::parse(s)
            .map(|r| ParticipantId(r.0))
            .map_err(|_| NameError::Participant {
                given: truncate_for_message(s),
            })
    }

    /// The id a display name suggests: lower-case ASCII letters and digits kept, runs of
    /// anything else folded into one `-`; `participant` if nothing is left.
    pub fn base_from_name(name: &str) -> String {
        let mut out = String::new();
        for c in name.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        let trimmed = out.trim_end_matches('-');
        let mut base: String = trimmed.chars().take(48).collect();
        if base.is_empty() {
            base = "participant".to_owned();
        }
        base
    }

    /// `base`, or `base-2`, `base-3`, … whichever `taken` does not hold first.
    pub fn unique(base: &str, taken: impl Fn(&str) -> bool) -> ParticipantId {
        if !taken(base) {
            return ParticipantId(base.to_owned());
        }
        let mut n = 2u32;
        loop {
            let candidate = format!("{base}-{n}");
            if !taken(&candidate) {
                return ParticipantId(candidate);
            }
            n += 1;
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: 1–64 printable characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let t = s.trim();
        let n = t.chars().count();
        if n == 0 || n > 64 {
            return Err(NameError::DisplayNameLength);
        }
        if t.chars().any(|c| c.is_control()) {
            return Err(NameError::DisplayNameControl);
        }
        Ok(DisplayName(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        for ok in ["demo", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "../x", &"x".repeat(65), "a\0"] {
            assert!(RoomName::parse(bad).is_err(), "{bad}");
        }
        // What clients and tests see.
        assert_eq!(
            RoomName::parse("a b").unwrap_err().to_string(),
            "room name \"a b\" is not valid: use 1-64 characters of A-Z a-z 0-9 . _ -"
        );
        assert_eq!(
            ParticipantId::parse(&"y".repeat(100)).unwrap_err(),
            NameError::Participant {
                given: "y".repeat(80)
            }
        );
    }

    #[test]
    fn ids_from_names() {
        assert_eq!(ParticipantId::base_from_name("Alice"), "alice");
        assert_eq!(
            ParticipantId::base_from_name("  Bob  Smith!! "),
            "bob-smith"
        );
        assert_eq!(ParticipantId::base_from_name("Ünïcode"), "n-code");
        assert_eq!(ParticipantId::base_from_name("日本"), "participant");
        let taken = ["alice", "alice-2"];
        assert_eq!(
            ParticipantId::unique("alice", |s| taken.contains(&s)).as_str(),
            "alice-3"
        );
        assert_eq!(ParticipantId::unique("bob", |_| false).as_str(), "bob");
    }

    #[test]
    fn display_names() {
        assert_eq!(DisplayName::parse("  Zoë ").unwrap().as_str(), "Zoë");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse("a\u{7}b").is_err());
        assert!(DisplayName::parse(&"é".repeat(64)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(65)).is_err());
    }
}
