//! Keeping a peer's repeated DTLS flight from a handshake that has already answered it.
//!
//! `rtc-dtls` 0.21.1 stops its retransmission timer whenever a handshake record arrives while
//! it waits for the peer's next flight, and re-arms it only when it sends again. When our
//! answer is lost, the peer repeats the flight we answered (the DTLS server its ServerHello
//! flight, the client its ClientHello); `rtc` reads the repeat, finds nothing new, and then
//! waits for ever: it never sends its answer again, and the peer never gets it. On a link
//! losing one datagram in ten this happened about once in fifty handshakes (the lossy fault
//! test's publisher stuck in "connecting"), and a browser on a weak link would be stuck the
//! same way. RFC 6347 §4.2.4 lets either side answer a repeat by retransmitting; keeping the
//! repeat away from `rtc` leaves its own timer running, which retransmits the answer.
//!
//! Which flight is a repeat is read from the clear-text record headers (RFC 6347 §4.1: type,
//! version, epoch, sequence number, length) and the first byte of each handshake message,
//! its type (RFC 5246 §7.4). Once we have sent ClientKeyExchange (we are the client) or
//! ServerHello (the server), a datagram made only of epoch-0 handshake records of the peer's
//! earlier flights repeats what we answered. Written here because the fault is `rtc`'s and
//! the crate has no release with a fix; it goes when `rtc` keeps its timer.

/// Handshake message types (RFC 5246 §7.4, RFC 6347 §4.2.1).
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const HELLO_VERIFY_REQUEST: u8 = 3;
const CERTIFICATE: u8 = 11;
const SERVER_KEY_EXCHANGE: u8 = 12;
const CERTIFICATE_REQUEST: u8 = 13;
const SERVER_HELLO_DONE: u8 = 14;
const CLIENT_KEY_EXCHANGE: u8 = 16;

/// The DTLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
const RECORD_HEADER: usize = 13;

/// Which side of the handshake has answered the peer's flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    /// We are the client and sent our key exchange: the server's hello flight is done with.
    AsClient,
    /// We are the server and sent our hello: the client's ClientHello is done with.
    AsServer,
}

/// One connection's view of its handshake, from the datagrams it sends.
#[derive(Debug, Default)]
pub struct RepeatGuard {
    answered: Option<Answered>,
}

impl RepeatGuard {
    /// Notes a datagram the connection sends (only handshake datagrams matter).
    pub fn sent(&mut self, datagram: &[u8]) {
        for (epoch, typ) in handshake_messages(datagram) {
            match (epoch, typ) {
                (0, Some(CLIENT_KEY_EXCHANGE)) => self.answered = Some(Answered::AsClient),
                (0, Some(SERVER_HELLO)) => self.answered = Some(Answered::AsServer),
                _ => {}
            }
        }
    }

    /// Whether a received datagram only repeats a flight the connection has already answered
    /// (and must not reach `rtc`, see the module's notes).
    pub fn is_answered_repeat(&self, datagram: &[u8]) -> bool {
        let Some(answered) = self.answered else {
            return false;
        };
        let mut any = false;
        for record in records(datagram) {
            let Some((content, epoch, typ)) = record else {
                return false;
            };
            let repeat = content == HANDSHAKE
                && epoch == 0
                && match answered {
                    Answered::AsClient => matches!(
                        typ,
                        Some(
                            SERVER_HELLO
                                | HELLO_VERIFY_REQUEST
                                | CERTIFICATE
                                | SERVER_KEY_EXCHANGE
                                | CERTIFICATE_REQUEST
                                | SERVER_HELLO_DONE
                        )
                    ),
                    Answered::AsServer => typ == Some(CLIENT_HELLO),
                };
            if !repeat {
                return false;
            }
            any = true;
        }
        any
    }
}

/// Epoch and handshake type of each handshake record in a datagram (the type only where the
/// record is in the clear, epoch 0).
fn handshake_messages(datagram: &[u8]) -> impl Iterator<Item = (u16, Option<u8>)> + '_ {
    records(datagram)
        .map_while(|r| r)
        .filter(|&(content, _, _)| content == HANDSHAKE)
        .map(|(_, epoch, typ)| (epoch, typ))
}

/// The records of a DTLS datagram as (content type, epoch, handshake type if readable);
/// `None` for bytes that are not a whole record, after which nothing more is read.
fn records(datagram: &[u8]) -> impl Iterator<Item = Option<(u8, u16, Option<u8>)>> + '_ {
    let mut rest = if matches!(datagram.first(), Some(20..=63)) {
        datagram
    } else {
        &[][..]
    };
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(header) = rest.get(..RECORD_HEADER) else {
            rest = &[];
            return Some(None);
        };
        let len = u16::from_be_bytes([header[11], header[12]]) as usize;
        let Some(body) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            rest = &[];
            return Some(None);
        };
        let epoch = u16::from_be_bytes([header[3], header[4]]);
        let typ = (header[0] == HANDSHAKE && epoch == 0)
            .then(|| body.first().copied())
            .flatten();
        rest = &rest[RECORD_HEADER + len..];
        Some(Some((header[0], epoch, typ)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS 1.2 record of `content` at `epoch` around `body`.
    fn record(content: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content, 254, 253];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 7]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn handshake(typ: u8) -> Vec<u8> {
        record(
            HANDSHAKE,
            0,
            &[typ, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4],
        )
    }

    fn datagram(records: &[Vec<u8>]) -> Vec<u8> {
        records.concat()
    }

    #[test]
    fn nothing_is_a_repeat_before_the_answer() {
        let g = RepeatGuard::default();
        assert!(!g.is_answered_repeat(&handshake(SERVER_HELLO)));
        assert!(!g.is_answered_repeat(&handshake(CLIENT_HELLO)));
    }

    #[test]
    fn a_client_that_sent_its_key_exchange_keeps_the_server_hello_flight_out() {
        let mut g = RepeatGuard::default();
        g.sent(&handshake(CLIENT_HELLO));
        assert!(
            !g.is_answered_repeat(&handshake(SERVER_HELLO)),
            "the first one is read"
        );
        g.sent(&datagram(&[
            handshake(CERTIFICATE),
            handshake(CLIENT_KEY_EXCHANGE),
            record(20, 0, &[1]),
            record(HANDSHAKE, 1, &[0xaa; 40]),
        ]));
        let flight4 = datagram(&[
            handshake(SERVER_HELLO),
            handshake(CERTIFICATE),
            handshake(SERVER_KEY_EXCHANGE),
            handshake(CERTIFICATE_REQUEST),
            handshake(SERVER_HELLO_DONE),
        ]);
        assert!(g.is_answered_repeat(&flight4));
        assert!(
            g.is_answered_repeat(&handshake(SERVER_HELLO_DONE)),
            "a fragment of it"
        );
        // The server's answer: change_cipher_spec and the encrypted Finished.
        let flight6 = datagram(&[record(20, 0, &[1]), record(HANDSHAKE, 1, &[0xbb; 40])]);
        assert!(!g.is_answered_repeat(&flight6));
        assert!(
            !g.is_answered_repeat(&record(21, 0, &[2, 40])),
            "alerts pass"
        );
        assert!(
            !g.is_answered_repeat(&record(23, 1, &[0; 30])),
            "data passes"
        );
    }

    #[test]
    fn a_server_that_sent_its_hello_keeps_the_client_hello_out_but_not_the_key_exchange() {
        let mut g = RepeatGuard::default();
        g.sent(&handshake(HELLO_VERIFY_REQUEST));
        assert!(
            !g.is_answered_repeat(&handshake(CLIENT_HELLO)),
            "a ClientHello answering the cookie request is read"
        );
        g.sent(&datagram(&[
            handshake(SERVER_HELLO),
            handshake(CERTIFICATE),
        ]));
        assert!(g.is_answered_repeat(&handshake(CLIENT_HELLO)));
        // The client's flight 5, split over datagrams as a large certificate makes it.
        assert!(!g.is_answered_repeat(&handshake(CERTIFICATE)));
        assert!(!g.is_answered_repeat(&datagram(&[
            handshake(CLIENT_KEY_EXCHANGE),
            record(20, 0, &[1])
        ])));
    }

    #[test]
    fn a_datagram_mixing_a_repeat_with_anything_else_passes() {
        let mut g = RepeatGuard::default();
        g.sent(&handshake(SERVER_HELLO));
        let mixed = datagram(&[handshake(CLIENT_HELLO), record(20, 0, &[1])]);
        assert!(!g.is_answered_repeat(&mixed));
    }

    #[test]
    fn truncated_and_foreign_bytes_are_never_repeats() {
        let mut g = RepeatGuard::default();
        g.sent(&handshake(SERVER_HELLO));
        let whole = handshake(CLIENT_HELLO);
        for n in 0..whole.len() {
            assert!(!g.is_answered_repeat(&whole[..n]), "first {n} bytes");
        }
        let mut trailing = whole.clone();
        trailing.push(22);
        assert!(!g.is_answered_repeat(&trailing));
        assert!(!g.is_answered_repeat(&[0, 1, 0, 0]), "STUN");
        assert!(!g.is_answered_repeat(&[0x80, 96, 0, 1]), "RTP");
        g.sent(&[22, 254]);
        g.sent(&[]);
    }
}
