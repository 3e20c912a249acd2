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

use super::stun::{self, TransactionId};

/// Outstanding STUN transactions remembered per connection.
const TRANSACTIONS: usize = 16;

#[derive(Debug, Default)]
pub struct PathPin {
    /// The address `rtc` believes the peer is at: the first one nominated.
    pinned: Option<SocketAddr>,
    /// Where the peer is now: the address it nominated last.
    current: Option<SocketAddr>,
    /// Recent binding requests: where to send each one's response.
    requests: Vec<(TransactionId, SocketAddr)>,
}

impl PathPin {
    /// A datagram of this connection arrived from `from`: returns the address to show `rtc`.
    pub fn inbound(&mut self, from: SocketAddr, data: &[u8]) -> SocketAddr {
        if let Some(h) = stun::header(data).filter(stun::Header::is_binding_request) {
            if self.requests.len() == TRANSACTIONS {
                self.requests.remove(0);
            }
            self.requests.push((h.transaction, from));
            if stun::has_use_candidate(data) {
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
        if let Some(h) = stun::header(data).filter(stun::Header::is_response) {
            if let Some(i) = self.requests.iter().position(|(t, _)| *t == h.transaction) {
                return self.requests.swap_remove(i).1;
            }
        }
        self.current.unwrap_or(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(id: u8, use_candidate: bool) -> Vec<u8> {
        stun::tests::binding_request(id, "ab:cd", use_candidate)
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
