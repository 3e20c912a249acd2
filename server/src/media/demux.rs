//! Which peer connection a datagram on the shared media port belongs to.
//!
//! ICE (RFC 8445 §7.2.2) puts `USERNAME = <receiver ufrag>:<sender ufrag>` in every binding
//! request. The server picks each connection's ufrag itself, so a binding request names its
//! connection; its source address is then learned for that connection. Everything else (DTLS,
//! SRTP, SRTCP, and STUN without USERNAME) is routed by source address alone. One connection
//! may own several addresses (browsers check from every interface); all are forgotten with it.
//!
//! The binding request's integrity is checked by the ICE agent after routing; an address is
//! only ever learned from a request naming a live connection's ufrag, which only the two ends
//! of that connection know (it travels in the SDP over the signaling channel).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_ATTR_USERNAME: u16 = 0x0006;
const STUN_HEADER_LEN: usize = 20;

/// RFC 7983 §7: the first byte of a STUN message is 0..=3; the magic cookie follows.
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= STUN_HEADER_LEN && d[0] < 4 && d[4..8] == STUN_MAGIC_COOKIE
}

/// The local (server) half of a binding request's USERNAME, if this datagram is one.
pub fn binding_request_local_ufrag(d: &[u8]) -> Option<&str> {
    if !is_stun(d) {
        return None;
    }
    let msg_type = u16::from_be_bytes([d[0], d[1]]);
    if msg_type != STUN_BINDING_REQUEST {
        return None;
    }
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let body = d.get(STUN_HEADER_LEN..STUN_HEADER_LEN + len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let alen = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + alen)?;
        if typ == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to a multiple of 4 bytes (RFC 8489 §14).
        let padded = (4 + alen + 3) & !3;
        rest = rest.get(padded..)?;
    }
    None
}

/// The routing table.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    addrs_of: HashMap<K, Vec<SocketAddr>>,
}

impl<K> Default for Demux<K> {
    fn default() -> Self {
        Demux {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs_of: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    pub fn insert(&mut self, ufrag: String, key: K) {
        self.by_ufrag.insert(ufrag, key);
        self.addrs_of.entry(key).or_default();
    }

    /// Forgets a connection: its ufrag and every address it used.
    pub fn remove(&mut self, ufrag: &str, key: K) {
        if self.by_ufrag.get(ufrag) == Some(&key) {
            self.by_ufrag.remove(ufrag);
        }
        for a in self.addrs_of.remove(&key).unwrap_or_default() {
            if self.by_addr.get(&a) == Some(&key) {
                self.by_addr.remove(&a);
            }
        }
    }

    /// The connection this datagram from `from` belongs to, learning `from` when it is a
    /// binding request naming a known connection.
    pub fn route(&mut self, from: SocketAddr, d: &[u8]) -> Option<K> {
        if let Some(ufrag) = binding_request_local_ufrag(d) {
            let key = *self.by_ufrag.get(ufrag)?;
            match self.by_addr.insert(from, key) {
                Some(old) if old == key => {}
                Some(old) => {
                    // The address moved to another connection (a client reusing a port):
                    // the old one no longer owns it.
                    if let Some(v) = self.addrs_of.get_mut(&old) {
                        v.retain(|a| *a != from);
                    }
                    self.addrs_of.entry(key).or_default().push(from);
                }
                None => self.addrs_of.entry(key).or_default().push(from),
            }
            return Some(key);
        }
        self.by_addr.get(&from).copied()
    }

    pub fn addresses(&self, key: K) -> &[SocketAddr] {
        self.addrs_of.get(&key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with the given USERNAME and, after it, a PRIORITY attribute.
    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = vec![];
        attrs.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x1e, 0xff]); // PRIORITY
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]); // transaction id
        m.extend_from_slice(&attrs);
        m
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_username() {
        assert_eq!(
            binding_request_local_ufrag(&binding_request("srv1:cli9")),
            Some("srv1")
        );
        assert_eq!(
            binding_request_local_ufrag(&binding_request("abc")),
            Some("abc")
        );
        assert_eq!(binding_request_local_ufrag(&binding_request(":x")), None);
        // A binding success response (0x0101) is not a request.
        let mut resp = binding_request("srv1:cli9");
        resp[0] = 0x01;
        resp[1] = 0x01;
        assert_eq!(binding_request_local_ufrag(&resp), None);
    }

    #[test]
    fn garbage_never_panics() {
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
            let _ = binding_request_local_ufrag(&d);
            if d.len() >= 20 {
                d[0] = 0;
                d[1] = 1;
                d[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
                let _ = binding_request_local_ufrag(&d);
            }
        }
        // Truncated in the middle of an attribute, and a length field pointing past the end.
        let full = binding_request("srv1:cli9");
        for cut in 0..full.len() {
            let _ = binding_request_local_ufrag(&full[..cut]);
        }
        let mut lying = full.clone();
        lying[2] = 0xff;
        assert_eq!(binding_request_local_ufrag(&lying), None);
    }

    #[test]
    fn routes_by_ufrag_then_address() {
        let mut d = Demux::default();
        d.insert("aaaa".into(), 1u32);
        d.insert("bbbb".into(), 2u32);
        let dtls = [22u8, 254, 253, 0, 0];
        // Unknown address before any binding request: dropped.
        assert_eq!(d.route(addr("127.0.0.1:5000"), &dtls), None);
        assert_eq!(
            d.route(addr("127.0.0.1:5000"), &binding_request("aaaa:x")),
            Some(1)
        );
        assert_eq!(d.route(addr("127.0.0.1:5000"), &dtls), Some(1));
        // A second interface of the same peer.
        assert_eq!(
            d.route(addr("10.0.0.2:5001"), &binding_request("aaaa:x")),
            Some(1)
        );
        assert_eq!(d.route(addr("10.0.0.2:5001"), &dtls), Some(1));
        assert_eq!(
            d.route(addr("127.0.0.1:6000"), &binding_request("bbbb:y")),
            Some(2)
        );
        // Unknown ufrag: dropped, address not learned.
        assert_eq!(
            d.route(addr("127.0.0.1:7000"), &binding_request("zzzz:y")),
            None
        );
        assert_eq!(d.route(addr("127.0.0.1:7000"), &dtls), None);
        assert_eq!(d.addresses(1).len(), 2);
        d.remove("aaaa", 1);
        assert_eq!(d.route(addr("127.0.0.1:5000"), &dtls), None);
        assert_eq!(d.route(addr("10.0.0.2:5001"), &dtls), None);
        assert_eq!(d.route(addr("127.0.0.1:6000"), &dtls), Some(2));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn address_moving_to_another_connection() {
        let mut d = Demux::default();
        d.insert("aaaa".into(), 1u32);
        d.insert("bbbb".into(), 2u32);
        let a = addr("127.0.0.1:5000");
        d.route(a, &binding_request("aaaa:x"));
        d.route(a, &binding_request("bbbb:x"));
        assert_eq!(d.route(a, &[0x80, 0x60]), Some(2));
        // Removing the first connection must not take the address from the second.
        d.remove("aaaa", 1);
        assert_eq!(d.route(a, &[0x80, 0x60]), Some(2));
    }
}
