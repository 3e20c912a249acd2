//! The DTLS record reader that keeps a peer's repeated handshake flight from `rtc`
//! (`media::dtls_repeat`): it reads the record headers of every datagram a handshaking peer
//! sends. Nothing panics, and a datagram that does not start like DTLS is never a repeat.
//!
//! Input: datagrams as `[dir, len, len bytes]`; `dir` even: the server sends it, odd: the
//! peer does.
#![no_main]

use confab::media::dtls_repeat::RepeatGuard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut guard = RepeatGuard::default();
    let mut rest = data;
    while let [dir, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (datagram, next) = tail.split_at(n);
        if dir % 2 == 0 {
            guard.sent(datagram);
        } else {
            let repeat = guard.is_answered_repeat(datagram);
            assert!(
                !repeat || matches!(datagram.first(), Some(20..=63)),
                "only DTLS is a repeat"
            );
        }
        rest = next;
    }
});
