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
//!
//! A path is a whole [`FiveTuple`]: a browser may move from UDP to an ICE-TCP connection or
//! back (RFC 6544 pairs are nominated like any other), and `rtc` is shown the transport and
//! local candidate of the pinned path, so it keeps finding its selected pair.

use super::api::FiveTuple;
use super::stun::{self, TransactionId};

/// Outstanding STUN transactions remembered per connection.
const TRANSACTIONS: usize = 16;

#[derive(Debug, Default)]
pub struct PathPin {
    /// The path `rtc` believes the peer is on: the first one nominated.
    pinned: Option<FiveTuple>,
    /// Where the peer is now: the path it nominated last.
    current: Option<FiveTuple>,
    /// Recent binding requests: where to send each one's response.
    requests: Vec<(TransactionId, FiveTuple)>,
}

/// Whether two paths reach the same peer address the same way (`rtc` names the local side by
/// its candidate, which may differ from the address a datagram arrived at behind NAT 1:1).
fn same_peer(a: &FiveTuple, b: &FiveTuple) -> bool {
    a.transport == b.transport && a.remote == b.remote
}

impl PathPin {
    /// A datagram of this connection arrived on `path`: returns the path to show `rtc`.
    pub fn inbound(&mut self, path: FiveTuple, data: &[u8]) -> FiveTuple {
        if let Some(h) = stun::header(data).filter(stun::Header::is_binding_request) {
            if self.requests.len() == TRANSACTIONS {
                self.requests.remove(0);
            }
            self.requests.push((h.transaction, path));
            if stun::has_use_candidate(data) {
                self.pinned.get_or_insert(path);
                self.current = Some(path);
            }
        }
        self.pinned.unwrap_or(path)
    }

    /// `rtc` sends `data` on `to`: returns the path it really takes.
    pub fn outbound(&mut self, to: FiveTuple, data: &[u8]) -> FiveTuple {
        if !self.pinned.is_some_and(|p| same_peer(&p, &to)) {
            return to;
        }
        if let Some(h) = stun::header(data).filter(stun::Header::is_response) {
            if let Some(i) = self.requests.iter().position(|(t, _)| *t == h.transaction) {
                return self.requests.swap_remove(i).1;
            }
        }
        self.current.unwrap_or(to)
    }

    /// The path the peer nominated last, if any.
    pub fn current(&self) -> Option<FiveTuple> {
        self.current
    }

    /// An ICE restart: `rtc` forgets its selected pair, so the next nomination pins afresh.
    pub fn reset(&mut self) {
        *self = PathPin::default();
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

    fn udp(remote: &str) -> FiveTuple {
        FiveTuple::udp("127.0.0.1:9".parse().unwrap(), remote.parse().unwrap())
    }

    #[test]
    fn follows_a_renomination_and_answers_checks_where_they_came_from() {
        let lo = udp("127.0.0.1:5000");
        let lan = udp("192.0.2.2:6000");
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
        let other = udp("203.0.113.1:1");
        assert_eq!(p.outbound(other, &[0x80; 40]), other);
    }

    #[test]
    fn follows_a_move_from_udp_to_tcp() {
        let udp_path = udp("192.0.2.2:6000");
        let tcp_path = FiveTuple::tcp(
            "127.0.0.1:9".parse().unwrap(),
            "192.0.2.2:6000".parse().unwrap(),
        );
        let mut p = PathPin::default();
        assert_eq!(p.inbound(udp_path, &binding(1, true)), udp_path);
        // Same address and port, other transport: a path of its own.
        let check = binding(2, true);
        assert_eq!(
            p.inbound(tcp_path, &check),
            udp_path,
            "rtc keeps its UDP pair"
        );
        assert_eq!(p.outbound(udp_path, &response_to(&check)), tcp_path);
        assert_eq!(
            p.outbound(udp_path, &[0x80; 40]),
            tcp_path,
            "media over TCP now"
        );
        assert_eq!(p.current(), Some(tcp_path));
        p.reset();
        assert_eq!(
            p.inbound(tcp_path, &binding(3, true)),
            tcp_path,
            "pinned afresh"
        );
    }

    #[test]
    fn garbage_is_not_stun() {
        let mut p = PathPin::default();
        let from = udp("127.0.0.1:1");
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
