//! STUN (RFC 8489) as far as the media port itself needs to read it, before `rtc`'s ICE agent
//! sees a datagram: which connection a binding request names ([`super::demux`]) and whether it
//! nominates its pair ([`super::path`]). One reader for both.
//!
//! Written here rather than taken from a STUN crate because it reads three fields of a header
//! and walks attributes without allocating, on every datagram before routing; `rtc`'s own
//! parser builds a full message (and checks integrity, which needs the connection first).

/// RFC 8489 §5.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
pub const HEADER_LEN: usize = 20;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_USE_CANDIDATE: u16 = 0x0025;

pub type TransactionId = [u8; 12];

/// A STUN message's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u16,
    /// The attributes' length, as declared.
    pub length: u16,
    pub transaction: TransactionId,
}

impl Header {
    pub fn is_binding_request(&self) -> bool {
        self.msg_type == BINDING_REQUEST
    }

    /// Success (class 0b10) and error (0b11) responses answer a request (RFC 8489 §5: the
    /// class bits are 0x0100 and 0x0010 of the type).
    pub fn is_response(&self) -> bool {
        self.msg_type & 0x0100 != 0
    }
}

/// The header, if `d` is a STUN message: RFC 7983 §7 puts its first byte in 0..=3 on a port
/// shared with DTLS and SRTP, and the magic cookie follows.
pub fn header(d: &[u8]) -> Option<Header> {
    if d.len() < HEADER_LEN || d[0] > 3 || d[4..8] != MAGIC_COOKIE {
        return None;
    }
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&d[8..20]);
    Some(Header {
        msg_type: u16::from_be_bytes([d[0], d[1]]),
        length: u16::from_be_bytes([d[2], d[3]]),
        transaction,
    })
}

/// The attributes of message `d` as (type, value), in order. Nothing when the declared length
/// runs past the datagram; the walk stops at an attribute that does.
pub fn attributes(d: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let body = header(d)
        .and_then(|h| d.get(HEADER_LEN..HEADER_LEN + h.length as usize))
        .unwrap_or(&[]);
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        // Attributes are padded to a multiple of 4 bytes (RFC 8489 §14).
        rest = rest.get((4 + len).next_multiple_of(4)..).unwrap_or(&[]);
        Some((typ, value))
    })
}

/// The local (server) half of a binding request's `USERNAME = <receiver>:<sender>`
/// (RFC 8445 §7.2.2), if `d` is one.
pub fn binding_request_local_ufrag(d: &[u8]) -> Option<&str> {
    if !header(d)?.is_binding_request() {
        return None;
    }
    let (_, username) = attributes(d).find(|(t, _)| *t == ATTR_USERNAME)?;
    let username = std::str::from_utf8(username).ok()?;
    username.split(':').next().filter(|u| !u.is_empty())
}

/// Whether a binding request nominates its candidate pair (RFC 8445 §7.2.2, USE-CANDIDATE).
pub fn has_use_candidate(d: &[u8]) -> bool {
    attributes(d).any(|(t, _)| t == ATTR_USE_CANDIDATE)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A binding request with `username`, then PRIORITY, then USE-CANDIDATE if asked.
    pub(crate) fn binding_request(id: u8, username: &str, use_candidate: bool) -> Vec<u8> {
        let mut attrs = vec![];
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x1e, 0xff]); // PRIORITY
        if use_candidate {
            attrs.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[id; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn reads_username_and_nomination() {
        let plain = binding_request(7, "srv1:cli9", false);
        assert_eq!(binding_request_local_ufrag(&plain), Some("srv1"));
        assert!(!has_use_candidate(&plain));
        let nominating = binding_request(7, "abc", true);
        assert_eq!(binding_request_local_ufrag(&nominating), Some("abc"));
        assert!(has_use_candidate(&nominating));
        assert_eq!(
            binding_request_local_ufrag(&binding_request(7, ":x", false)),
            None
        );
        let h = header(&plain).unwrap();
        assert!(h.is_binding_request() && !h.is_response());
        assert_eq!(h.transaction, [7; 12]);
        // A binding success response (0x0101) is not a request.
        let mut resp = plain.clone();
        resp[0..2].copy_from_slice(&[0x01, 0x01]);
        assert!(header(&resp).unwrap().is_response());
        assert_eq!(binding_request_local_ufrag(&resp), None);
        // Error responses (0x0111) answer requests too.
        resp[1] = 0x11;
        assert!(header(&resp).unwrap().is_response());
    }

    #[test]
    fn not_stun() {
        // DTLS (20..=63) and RTP (128..=191) first bytes, short datagrams, no cookie.
        assert!(header(&[22u8; 40]).is_none());
        assert!(header(&[0x80; 40]).is_none());
        assert!(header(&[0u8; 19]).is_none());
        assert!(header(&[0u8; 20]).is_none());
    }

    #[test]
    fn garbage_never_panics_and_lies_are_refused() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let mut d: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = (binding_request_local_ufrag(&d), has_use_candidate(&d));
            if d.len() >= 20 {
                d[0] = 0;
                d[1] = 1;
                d[4..8].copy_from_slice(&MAGIC_COOKIE);
                let _ = (binding_request_local_ufrag(&d), has_use_candidate(&d));
            }
        }
        let full = binding_request(1, "srv1:cli9", true);
        for cut in 0..full.len() {
            let _ = (
                binding_request_local_ufrag(&full[..cut]),
                has_use_candidate(&full[..cut]),
            );
        }
        // A declared length past the end of the datagram: no attributes at all.
        let mut lying = full.clone();
        lying[2] = 0xff;
        assert_eq!(binding_request_local_ufrag(&lying), None);
        assert!(!has_use_candidate(&lying));
    }
}
