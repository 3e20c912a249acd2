//! What a chat message's text may be: trimmed, control characters removed (line breaks kept),
//! 1–4000 characters. Refused rather than cut short, so nobody's words are silently lost.

pub const MAX_CHARS: usize = 4000;

/// The text as it will be stored, or what is wrong with it (for the sender).
pub fn clean(text: &str) -> Result<String, String> {
    let normalized = text.replace("\r\n", "\n");
    let kept: String = normalized
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let trimmed = kept.trim();
    let n = trimmed.chars().count();
    if n == 0 {
        return Err("the message is empty".into());
    }
    if n > MAX_CHARS {
        return Err(format!(
            "the message is {n} characters long; the limit is {MAX_CHARS}: split it or share it as a file"
        ));
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
        assert!(e.contains("4001"), "{e}");
        // Surrounding spaces do not count.
        assert!(clean(&format!("  {}  ", "x".repeat(MAX_CHARS))).is_ok());
    }
}
