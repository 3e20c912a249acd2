//! What a browser's WebSocket text frames go through before the signaling layer acts on them:
//! the message parser, then the checks of the names, chat text and identities they carry.
//! Nothing panics; what parses survives a round trip; what is cleaned stays clean.
#![no_main]

use confab::chat::text::{clean, MAX_CHARS};
use confab::names::{DisplayName, ParticipantId, RoomName};
use confab::protocol::{parse_client_message, ClientMessage};
use libfuzzer_sys::fuzz_target;

fn names(s: &str) {
    if let Ok(r) = RoomName::parse(s) {
        assert_eq!(r.as_str(), s);
        assert!(ParticipantId::parse(s).is_ok());
    }
    if let Ok(d) = DisplayName::parse(s) {
        assert_eq!(
            DisplayName::parse(d.as_str()),
            Ok(d.clone()),
            "parsing is idempotent"
        );
    }
    let base = ParticipantId::base_from_name(s);
    assert!(
        ParticipantId::parse(&base).is_ok(),
        "the id a name suggests is a valid id: {base:?}"
    );
    let id = ParticipantId::unique(&base, |c| c.len() < base.len() + 3);
    assert!(ParticipantId::parse(id.as_str()).is_ok(), "{id}");
}

fn chat_text(s: &str) {
    if let Ok(t) = clean(s) {
        assert_eq!(
            clean(&t).as_deref(),
            Ok(t.as_str()),
            "cleaning is idempotent"
        );
        let n = t.chars().count();
        assert!(n > 0 && n <= MAX_CHARS);
        assert!(!t.contains('\r'));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    names(text);
    chat_text(text);
    let Ok(message) = parse_client_message(text) else {
        return;
    };
    let again = serde_json::to_string(&message).expect("a parsed message serializes");
    assert_eq!(
        parse_client_message(&again).as_ref().ok(),
        Some(&message),
        "round trip through {again}"
    );
    match &message {
        ClientMessage::Join {
            room,
            name,
            identity,
            token,
            ..
        } => {
            names(room);
            names(name);
            if let Some(i) = identity {
                let _ = confab::chat::service::identity_key(Some(i));
            }
            if let Some(t) = token {
                // Any string, verified against a key: an error, never a panic.
                let key = confab::access::token::TokenKey::new(b"fuzzing secret, long enough");
                assert!(key.verify(t, 0).is_err() || t.split('.').count() == 3);
            }
        }
        ClientMessage::Chat {
            text,
            to,
            client_id,
            ..
        } => {
            chat_text(text);
            names(to.as_deref().unwrap_or_default());
            names(client_id);
        }
        _ => {}
    }
});
