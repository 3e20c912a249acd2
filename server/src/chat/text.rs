//! What a chat message's text may be: trimmed, control characters removed (line breaks kept),
//! 1–4000 characters. Refused rather than cut short, so nobody's words are silently lost.

pub const MAX_CHARS: usize = 4000;

/// What is wrong with a message's text, said to its sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is {chars} characters long; the limit is {MAX_CHARS}: split it or share it as a file")]
    TooLong { chars: usize },
}

/// The text as it will be stored, or what is wrong with it.
pub fn clean(text: &str) -> Result<String, TextError> {
    let normalized = text.replace("\r\n", "\n");
    let kept: String = normalized
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let trimmed = kept.trim();
    let n = trimmed.chars().count();
    if n == 0 {
        return Err(TextError::Empty);
    }
    if n > MAX_CHARS {
        return Err(TextError::TooLong { chars: n });
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("hello", Some("hello")),
            ("  padded \n", Some("padded")),
            ("two\r\nlines", Some("two\nlines")),
            (
                "bell\u{7}\u{0}and\u{1b}[31mescape",
                Some("belland[31mescape"),
            ),
            ("tab\there", Some("tabhere")),
            (
                "<img src=x onerror=alert(1)>",
                Some("<img src=x onerror=alert(1)>"),
            ),
            ("emoji 👩‍👩‍👧 ok", Some("emoji 👩‍👩‍👧 ok")),
            ("", None),
            ("   \n\t ", None),
            ("\u{0}\u{1}", None),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input).ok().as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn length_limit_counts_characters_not_bytes() {
        assert!(clean(&"é".repeat(MAX_CHARS)).is_ok());
        let e = clean(&"é".repeat(MAX_CHARS + 1)).unwrap_err();
        assert_eq!(e, TextError::TooLong { chars: 4001 });
        assert!(e.to_string().contains("4001"), "{e}");
        // Surrounding spaces do not count.
        assert!(clean(&format!("  {}  ", "x".repeat(MAX_CHARS))).is_ok());
    }
}
