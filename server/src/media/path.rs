//! Following a browser that switches candidate pairs, for `rtc`'s ICE-lite agent.
//!
//! A browser with several interfaces (Wi-Fi and Ethernet, IPv4 and IPv6, or loopback and a LAN
//! address on one machine) finds several working pairs to the server's one candidate. It
//! nominates one, and later may move to a better one: it sends its checks with USE-CANDIDATE on
//! the new pair and its media from the new address (RFC 8445 §8.1.1 lets the controlling agent
//! do this). `rtc`'s ICE-lite agent keeps the first pair it selected and, hearing nothing more
//! on it, declares the connection failed 10 s later.
//!
//! So the engine shows `rtc` one remote address per connection, the first one nominated, and
//! does the switching itself: every datagram of the connection is handed to `rtc` as if it came
//! from that address; what `rtc` sends there goes to the address the browser nominated last,
//! except STUN responses, which go back to where their request came from (matched by
//! transaction id), so checks on every pair keep succeeding.

use std::net::SocketAddr;

/// RFC 5389 §6.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const ATTR_USE_CANDIDATE: u16 = 0x0025;
/// Outstanding STUN transactions remembered per connection.
const TRANSACTIONS: usize = 16;

type TransactionId = [u8; 12];

#[derive(Debug, Default)]
pub struct PathPin {
    /// The address `rtc` believes the peer is at: the first one nominated.
    pinned: Option<SocketAddr>,
    /// Where the peer is now: the address it nominated last.
    current: Option<SocketAddr>,
    /// Recent binding requests: where to send each one's response.
    requests: Vec<(TransactionId, SocketAddr)>,
}

fn stun_header(d: &[u8]) -> Option<([u8; 2], TransactionId)> {
    if d.len() < 20 || d[0] & 0xc0 != 0 || d[4..8] != MAGIC_COOKIE {
        return None;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&d[8..20]);
    Some(([d[0], d[1]], id))
}

/// Whether a STUN message carries USE-CANDIDATE (attributes are TLVs padded to 4 bytes).
fn has_use_candidate(d: &[u8]) -> bool {
    let declared = u16::from_be_bytes([d[2], d[3]]) as usize;
    let end = (20 + declared).min(d.len());
    let mut at = 20;
    while at + 4 <= end {
        let typ = u16::from_be_bytes([d[at], d[at + 1]]);
        let len = u16::from_be_bytes([d[at + 2], d[at + 3]]) as usize;
        if typ == ATTR_USE_CANDIDATE {
            return true;
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    false
}

impl PathPin {
    /// A datagram of this connection arrived from `from`: returns the address to show `rtc`.
    pub fn inbound(&mut self, from: SocketAddr, data: &[u8]) -> SocketAddr {
        if let Some((BINDING_REQUEST, id)) = stun_header(data) {
            if self.requests.len() == TRANSACTIONS {
                self.requests.remove(0);
            }
            self.requests.push((id, from));
            if has_use_candidate(data) {
                self.pinned.get_or_insert(from);
                self.current = Some(from);
            }
        }
        self.pinned.unwrap_or(from)
    }

    /// `rtc` sends `data` to `to`: returns where it really goes.
    pub fn outbound(&mut self, to: SocketAddr, data: &[u8]) -> SocketAddr {
        if self.pinned != Some(to) {
            return to;
        }
        if let Some((kind, id)) = stun_header(data) {
            // Success (0x0101) and error (0x0111) responses answer a request.
            if kind[0] & 0x01 == 0x01 {
                if let Some(i) = self.requests.iter().position(|(t, _)| *t == id) {
                    return self.requests.swap_remove(i).1;
                }
            }
        }
        self.current.unwrap_or(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(id: u8, use_candidate: bool) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0, 0];
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[id; 12]);
        // USERNAME "ab:cd" (5 bytes, padded to 8), then USE-CANDIDATE (empty).
        m.extend_from_slice(&[
            0x00, 0x06, 0x00, 0x05, b'a', b'b', b':', b'c', b'd', 0, 0, 0,
        ]);
        if use_candidate {
            m.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]);
        }
        let len = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    fn response_to(request: &[u8]) -> Vec<u8> {
        let mut r = request[..20].to_vec();
        r[0..2].copy_from_slice(&[0x01, 0x01]);
        r[2..4].copy_from_slice(&[0, 0]);
        r
    }

    #[test]
    fn follows_a_renomination_and_answers_checks_where_they_came_from() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lan: SocketAddr = "192.0.2.2:6000".parse().unwrap();
        let mut p = PathPin::default();
        // Checks on both pairs before any nomination: shown as they are.
        assert_eq!(p.inbound(lan, &binding(1, false)), lan);
        assert_eq!(
            p.inbound(lo, &binding(2, true)),
            lo,
            "first nomination pins"
        );
        assert_eq!(
            p.outbound(lo, &[0x80; 40]),
            lo,
            "media to the nominated pair"
        );
        // The browser moves to the LAN pair.
        let check = binding(3, true);
        assert_eq!(p.inbound(lan, &check), lo, "rtc keeps seeing one address");
        assert_eq!(
            p.outbound(lo, &response_to(&check)),
            lan,
            "response where asked"
        );
        assert_eq!(p.outbound(lo, &[0x80; 40]), lan, "media follows");
        assert_eq!(p.inbound(lan, &[0x80; 40]), lo);
        // A check still arriving on the old pair is answered there.
        let old = binding(4, false);
        assert_eq!(p.inbound(lo, &old), lo);
        assert_eq!(p.outbound(lo, &response_to(&old)), lo);
        assert_eq!(
            p.outbound(lo, &[0x80; 40]),
            lan,
            "without USE-CANDIDATE it does not move"
        );
        // Something rtc sends elsewhere is left alone.
        let other: SocketAddr = "203.0.113.1:1".parse().unwrap();
        assert_eq!(p.outbound(other, &[0x80; 40]), other);
    }

    #[test]
    fn garbage_is_not_stun() {
        let mut p = PathPin::default();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for d in [
            &[][..],
            &[0u8; 19][..],
            &[
                0x00, 0x01, 0xff, 0xff, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
        ] {
            assert_eq!(p.inbound(from, d), from);
        }
        assert_eq!(p.pinned, None);
    }
}
