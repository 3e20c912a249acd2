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

use super::stun::binding_request_local_ufrag;

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

    fn binding_request(username: &str) -> Vec<u8> {
        crate::media::stun::tests::binding_request(7, username, false)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
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
