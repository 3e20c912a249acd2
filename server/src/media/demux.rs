//! Which peer connection a datagram on the shared media port belongs to.
//!
//! ICE (RFC 8445 §7.2.2) puts `USERNAME = <receiver ufrag>:<sender ufrag>` in every binding
//! request. The server picks each connection's ufrag itself, so a binding request names its
//! connection; its source address is then learned for that connection. Everything else (DTLS,
//! SRTP, SRTCP, and STUN without USERNAME) is routed by source address alone. One connection
//! may own several addresses (browsers check from every interface); all are forgotten with it.
//!
//! ICE-TCP connections (RFC 6544) are routed the same way: a TCP connection is known by its
//! peer's address on the TCP side, and the first binding request it carries names its peer
//! connection. UDP and TCP addresses are kept apart (the same address and port may be in use
//! on both). A TCP connection whose first frame names no connection is refused (the shell
//! closes it).
//!
//! The binding request's integrity is checked by the ICE agent after routing; an address is
//! only ever learned from a request naming a live connection's ufrag, which only the two ends
//! of that connection know (it travels in the SDP over the signaling channel).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use super::api::{FiveTuple, Transport};
use super::stun::binding_request_local_ufrag;

/// The routing table.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<(Transport, SocketAddr), K>,
    addrs_of: HashMap<K, Vec<FiveTuple>>,
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

    /// A connection's ufrag changed (an ICE restart): checks name it by the new one from now
    /// on; the addresses it learned stay its own.
    pub fn rename(&mut self, old: &str, new: String, key: K) {
        if self.by_ufrag.get(old) == Some(&key) {
            self.by_ufrag.remove(old);
        }
        self.by_ufrag.insert(new, key);
    }

    /// Forgets a connection: its ufrag and every address it used. Returns them (the shell
    /// closes the TCP connections among them).
    pub fn remove(&mut self, ufrag: &str, key: K) -> Vec<FiveTuple> {
        if self.by_ufrag.get(ufrag) == Some(&key) {
            self.by_ufrag.remove(ufrag);
        }
        let gone = self.addrs_of.remove(&key).unwrap_or_default();
        for a in &gone {
            let k = (a.transport, a.remote);
            if self.by_addr.get(&k) == Some(&key) {
                self.by_addr.remove(&k);
            }
        }
        gone
    }

    /// The connection this datagram on `path` belongs to, learning `path` when it is a
    /// binding request naming a known connection.
    pub fn route(&mut self, path: FiveTuple, d: &[u8]) -> Option<K> {
        let addr = (path.transport, path.remote);
        if let Some(ufrag) = binding_request_local_ufrag(d) {
            let key = *self.by_ufrag.get(ufrag)?;
            match self.by_addr.insert(addr, key) {
                Some(old) if old == key => {}
                Some(old) => {
                    // The address moved to another connection (a client reusing a port):
                    // the old one no longer owns it.
                    if let Some(v) = self.addrs_of.get_mut(&old) {
                        v.retain(|a| (a.transport, a.remote) != addr);
                    }
                    self.addrs_of.entry(key).or_default().push(path);
                }
                None => self.addrs_of.entry(key).or_default().push(path),
            }
            return Some(key);
        }
        self.by_addr.get(&addr).copied()
    }

    /// Forgets one address (an ICE-TCP connection that closed): a new connection from the
    /// same address must begin with a binding request again.
    pub fn forget(&mut self, path: FiveTuple) {
        let addr = (path.transport, path.remote);
        if let Some(key) = self.by_addr.remove(&addr) {
            if let Some(v) = self.addrs_of.get_mut(&key) {
                v.retain(|a| (a.transport, a.remote) != addr);
            }
        }
    }

    /// The connection that learned `path`, without routing anything.
    pub fn owner(&self, path: FiveTuple) -> Option<K> {
        self.by_addr.get(&(path.transport, path.remote)).copied()
    }

    pub fn addresses(&self, key: K) -> &[FiveTuple] {
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

    fn addr(s: &str) -> FiveTuple {
        FiveTuple::udp("127.0.0.1:9".parse().unwrap(), s.parse().unwrap())
    }

    fn tcp(s: &str) -> FiveTuple {
        FiveTuple::tcp("127.0.0.1:9".parse().unwrap(), s.parse().unwrap())
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
        assert_eq!(d.remove("aaaa", 1).len(), 2);
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

    #[test]
    fn tcp_connections_are_routed_apart_from_udp() {
        let mut d = Demux::default();
        d.insert("aaaa".into(), 1u32);
        d.insert("bbbb".into(), 2u32);
        let dtls = [22u8, 254, 253, 0, 0];
        // The same address and port on both transports, owned by different connections.
        assert_eq!(
            d.route(tcp("127.0.0.1:5000"), &binding_request("aaaa:x")),
            Some(1)
        );
        assert_eq!(
            d.route(addr("127.0.0.1:5000"), &dtls),
            None,
            "UDP learned nothing"
        );
        assert_eq!(
            d.route(addr("127.0.0.1:5000"), &binding_request("bbbb:y")),
            Some(2)
        );
        assert_eq!(d.route(tcp("127.0.0.1:5000"), &dtls), Some(1));
        assert_eq!(d.route(addr("127.0.0.1:5000"), &dtls), Some(2));
        // An unknown first frame on a new TCP connection is not routed.
        assert_eq!(d.route(tcp("127.0.0.1:6000"), &dtls), None);
        assert_eq!(d.owner(tcp("127.0.0.1:5000")), Some(1));
        d.route(tcp("127.0.0.1:5001"), &binding_request("aaaa:x"));
        d.forget(tcp("127.0.0.1:5001"));
        assert_eq!(
            d.route(tcp("127.0.0.1:5001"), &dtls),
            None,
            "closed, then reused"
        );
        assert_eq!(d.remove("aaaa", 1), vec![tcp("127.0.0.1:5000")]);
        assert_eq!(d.route(tcp("127.0.0.1:5000"), &dtls), None);
    }

    #[test]
    fn a_restart_renames_the_connection() {
        let mut d = Demux::default();
        d.insert("aaaa".into(), 1u32);
        d.route(addr("127.0.0.1:5000"), &binding_request("aaaa:x"));
        d.rename("aaaa", "cccc".into(), 1);
        assert_eq!(
            d.route(addr("127.0.0.1:7000"), &binding_request("aaaa:x")),
            None
        );
        assert_eq!(
            d.route(addr("127.0.0.1:7000"), &binding_request("cccc:x")),
            Some(1)
        );
        assert_eq!(d.route(addr("127.0.0.1:5000"), &[0x80, 0x60]), Some(1));
        assert_eq!(d.len(), 1);
        d.remove("cccc", 1);
        assert!(d.is_empty());
    }
}
