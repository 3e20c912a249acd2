//! The TURN server's core (RFC 8656), sans-I/O: STUN and ChannelData messages from clients
//! and datagrams from peers in, messages to clients, datagrams to peers and relay sockets to
//! open and close out. The shell ([`super::io`]) owns the sockets.
//!
//! What it relays, and to whom: confab runs TURN so that browsers that cannot reach the media
//! port directly reach it through the relay; it is not a general relay. Every peer address a
//! client names (CREATE-PERMISSION, CHANNEL-BIND, Send indications) must be one of the media
//! port's own announced addresses ([`TurnConfig::peers`]); anything else is refused with 403.
//! So credentials that leak let their holder reach the meeting server's media port until they
//! expire, and nothing else (no internal hosts, no other ports of this host).
//!
//! Authentication is the long-term credential mechanism (RFC 8489 §9.2) with usernames and
//! passwords of the TURN REST scheme ([`super::credentials`]); nonces are stateless
//! (`<time>-<mac>`, stale after [`NONCE_LIFETIME`]). Allocations are UDP relays (REQUESTED-
//! TRANSPORT 17) of IPv4 addresses; EVEN-PORT, RESERVATION-TOKEN and DONT-FRAGMENT are not
//! offered (420). Lifetimes: allocations 600 s by default, at most 3600 s; permissions 300 s;
//! channels 600 s (RFC 8656 §§7.2, 9, 12).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::crypto::{HmacAlgorithm, RTCCryptoProvider};
use rtc::stun::attributes::*;
use rtc::stun::error_code::*;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::*;
use rtc::stun::textattrs::TextAttribute;
use rtc::stun::uattrs::UnknownAttributes;
use rtc::stun::xoraddr::XorMappedAddress;
use rtc::turn::proto::lifetime::Lifetime;
use rtc::turn::proto::relayaddr::RelayedAddress;

use super::credentials::TurnSecret;

pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Nonces older than this are stale (438); the client retries with the fresh one.
pub const NONCE_LIFETIME: u64 = 600;
/// How often expired allocations, permissions and channels are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// Channel numbers clients may bind (RFC 8656 §12).
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x4fff;
/// UDP, the only transport relayed (RFC 8656 §18.5: REQUESTED-TRANSPORT carries a protocol
/// number).
const PROTO_UDP: u8 = 17;
const ATTR_REQUESTED_ADDRESS_FAMILY: AttrType = AttrType(0x0017);
const ATTR_MESSAGE_INTEGRITY_SHA256: AttrType = AttrType(0x001C);
const ATTR_PASSWORD_ALGORITHMS: AttrType = AttrType(0x8002);
const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);

/// How a client reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientTransport {
    Udp,
    Tcp,
    Tls,
}

impl ClientTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTransport::Udp => "udp",
            ClientTransport::Tcp => "tcp",
            ClientTransport::Tls => "tls",
        }
    }
}

/// A client's 5-tuple: its transport, its address, and the server's address it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub transport: ClientTransport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// How the core is set up.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub realm: String,
    pub secret: TurnSecret,
    /// The only peer addresses relays may send to: the media port's announced addresses.
    pub peers: Vec<SocketAddr>,
    /// Allocations at once, over all clients.
    pub max_allocations: usize,
    /// Allocations at once per username (one participant has two peer connections, each may
    /// allocate over several transports).
    pub max_per_user: usize,
}

/// What the core wants done.
#[derive(Debug)]
pub enum Output {
    /// A STUN or ChannelData message for the client (the shell pads ChannelData on streams).
    ToClient(Client, BytesMut),
    /// A datagram from relay socket `relay` to `peer`.
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        data: Bytes,
    },
    /// Open a relay socket (UDP, IPv4) for `client`'s new allocation, and report its address
    /// with [`TurnServer::bound`].
    Bind(Client),
    /// The allocation behind relay socket `relay` is gone: close the socket.
    Release(SocketAddr),
}

struct Pending {
    transaction: TransactionId,
    lifetime: Duration,
}

struct Allocation {
    /// None while its socket is being opened.
    relay: Option<SocketAddr>,
    pending: Option<Pending>,
    /// The transaction that made it (a retransmitted Allocate gets the same answer).
    made_by: TransactionId,
    username: String,
    key: Vec<u8>,
    expires: Instant,
    /// By peer IP (RFC 8656 §9: permissions ignore the port).
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
}

impl Allocation {
    fn permitted(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }

    fn channel_of(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, (p, t))| *p == peer && *t > now)
            .map(|(n, _)| *n)
    }
}

/// Why a request is refused.
struct Refusal {
    code: ErrorCode,
    reason: &'static str,
    /// Whether the response carries MESSAGE-INTEGRITY (the request was authenticated).
    signed: bool,
    unknown: Vec<AttrType>,
}

fn refuse(code: ErrorCode, reason: &'static str) -> Refusal {
    Refusal {
        code,
        reason,
        signed: true,
        unknown: Vec::new(),
    }
}

/// The TURN server.
pub struct TurnServer {
    config: TurnConfig,
    crypto: Arc<dyn RTCCryptoProvider>,
    nonce_key: [u8; 32],
    allocations: HashMap<Client, Allocation>,
    by_relay: HashMap<SocketAddr, Client>,
    outputs: VecDeque<Output>,
    next_sweep: Option<Instant>,
}

impl TurnServer {
    pub fn new(config: TurnConfig, nonce_key: [u8; 32]) -> TurnServer {
        let crypto = config.secret.crypto().clone();
        TurnServer {
            config,
            crypto,
            nonce_key,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            outputs: VecDeque::new(),
            next_sweep: None,
        }
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Allocations by how their clients reach us.
    pub fn allocations_by_transport(&self) -> [(ClientTransport, usize); 3] {
        let count = |t| self.allocations.keys().filter(|c| c.transport == t).count();
        [
            (ClientTransport::Udp, count(ClientTransport::Udp)),
            (ClientTransport::Tcp, count(ClientTransport::Tcp)),
            (ClientTransport::Tls, count(ClientTransport::Tls)),
        ]
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// One message from `client`: a STUN message or ChannelData (`unix`: the wall clock in
    /// seconds, for credential expiry and nonces).
    pub fn handle_client(&mut self, now: Instant, unix: u64, client: Client, msg: &[u8]) {
        if msg.first().is_some_and(|b| (0x40..=0x4f).contains(b)) {
            return self.channel_data(now, client, msg);
        }
        let mut m = Message::new();
        if m.unmarshal_binary(msg).is_err() {
            return;
        }
        let method = m.typ.method;
        match m.typ.class {
            CLASS_REQUEST => {}
            CLASS_INDICATION if method == METHOD_SEND => {
                return self.send_indication(now, client, &m)
            }
            // Responses and other indications mean nothing to a server.
            _ => return,
        }
        if method == METHOD_BINDING {
            let mapped = XorMappedAddress {
                ip: client.remote.ip(),
                port: client.remote.port(),
            };
            return self.respond(
                client,
                &m,
                CLASS_SUCCESS_RESPONSE,
                None,
                vec![Box::new(mapped)],
            );
        }
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            let r = Refusal {
                signed: false,
                ..refuse(CODE_BAD_REQUEST, "Unsupported method")
            };
            return self.refuse(client, &m, None, r, unix);
        }
        let (username, key) = match self.authenticate(&mut m, unix, method == METHOD_ALLOCATE) {
            Ok(ok) => ok,
            Err(r) => return self.refuse(client, &m, None, r, unix),
        };
        let result = match method {
            METHOD_ALLOCATE => self.allocate(now, client, &m, username, &key),
            METHOD_REFRESH => self.refresh(now, client, &m, &key),
            METHOD_CREATE_PERMISSION => self.create_permission(now, client, &m, &key),
            _ => self.channel_bind(now, client, &m, &key),
        };
        if let Err(r) = result {
            self.refuse(client, &m, Some(&key), r, unix);
        }
    }

    /// A datagram that arrived on relay socket `relay` from `from`.
    pub fn handle_peer(&mut self, now: Instant, relay: SocketAddr, from: SocketAddr, data: &[u8]) {
        let Some(client) = self.by_relay.get(&relay).copied() else {
            return;
        };
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        // RFC 8656 §11.2: nothing without a permission for the sender's address.
        if !a.permitted(now, from.ip()) {
            return;
        }
        let Ok(len) = u16::try_from(data.len()) else {
            return;
        };
        if let Some(n) = a.channel_of(now, from) {
            let mut out = BytesMut::with_capacity(4 + data.len());
            out.put_u16(n);
            out.put_u16(len);
            out.put_slice(data);
            self.outputs.push_back(Output::ToClient(client, out));
            return;
        }
        let mut m = Message::new();
        let built = m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_DATA, CLASS_INDICATION)),
            Box::new(rtc::turn::proto::peeraddr::PeerAddress {
                ip: from.ip(),
                port: from.port(),
            }),
            Box::new(rtc::turn::proto::data::Data(data.to_vec())),
        ]);
        if built.is_ok() {
            self.outputs
                .push_back(Output::ToClient(client, BytesMut::from(&m.raw[..])));
        }
    }

    /// The shell opened (or could not open) the relay socket for `client`'s allocation.
    pub fn bound(&mut self, now: Instant, client: Client, relay: Result<SocketAddr, String>) {
        let Some(a) = self.allocations.get_mut(&client) else {
            // The client went away meanwhile.
            if let Ok(r) = relay {
                self.outputs.push_back(Output::Release(r));
            }
            return;
        };
        let Some(p) = a.pending.take() else {
            return;
        };
        let key = a.key.clone();
        let mut req = Message::new();
        req.transaction_id = p.transaction;
        req.typ = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
        let relay = match relay {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(client = ?client, error = %e, "TURN: no relay socket");
                self.allocations.remove(&client);
                let r = refuse(CODE_INSUFFICIENT_CAPACITY, "No relay socket");
                return self.refuse(client, &req, Some(&key), r, 0);
            }
        };
        a.relay = Some(relay);
        a.expires = now + p.lifetime;
        self.by_relay.insert(relay, client);
        self.schedule(now);
        tracing::debug!(client = ?client, %relay, "TURN allocation");
        self.allocate_success(client, &req, &key, relay, p.lifetime);
    }

    /// A TCP or TLS client's connection ended: its allocation ends with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: Client) {
        self.remove(client);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now < t) {
            return;
        }
        let expired: Vec<Client> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.pending.is_none() && a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in expired {
            self.remove(c);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            a.channels.retain(|_, (_, t)| *t > now);
        }
        self.next_sweep = None;
        self.schedule(now);
    }

    fn schedule(&mut self, now: Instant) {
        if self.next_sweep.is_none() && !self.allocations.is_empty() {
            self.next_sweep = Some(now + SWEEP);
        }
    }

    fn remove(&mut self, client: Client) {
        if let Some(a) = self.allocations.remove(&client) {
            if let Some(r) = a.relay {
                self.by_relay.remove(&r);
                self.outputs.push_back(Output::Release(r));
            }
        }
    }

    // ----- authentication ---------------------------------------------------------------------

    fn nonce(&self, unix: u64) -> String {
        let stamp = format!("{unix:x}");
        format!("{stamp}-{}", self.mac_hex(&stamp))
    }

    fn mac_hex(&self, stamp: &str) -> String {
        let mut tag = [0u8; 20];
        let _ = self
            .crypto
            .crypto()
            .new_hmac(HmacAlgorithm::Sha1, &self.nonce_key)
            .and_then(|mut mac| mac.sign(&[stamp.as_bytes()], &mut tag));
        crate::chat::service::hex(&tag[..8])
    }

    /// Whether `nonce` is ours and fresh.
    fn nonce_ok(&self, nonce: &str, unix: u64) -> bool {
        let Some((stamp, mac)) = nonce.split_once('-') else {
            return false;
        };
        let Ok(at) = u64::from_str_radix(stamp, 16) else {
            return false;
        };
        // Compared in constant time would be nicer; the MAC only protects freshness, not access.
        mac == self.mac_hex(stamp) && at <= unix + 5 && unix.saturating_sub(at) <= NONCE_LIFETIME
    }

    /// The username and the integrity key of an authenticated request (RFC 8489 §9.2.4).
    fn authenticate(
        &self,
        m: &mut Message,
        unix: u64,
        fresh: bool,
    ) -> Result<(String, Vec<u8>), Refusal> {
        let unauthorized = |reason| Refusal {
            signed: false,
            ..refuse(CODE_UNAUTHORIZED, reason)
        };
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err(unauthorized("Unauthorized"));
        }
        let text = |t| TextAttribute::get_from_as(m, t).map(|a| a.text).ok();
        let (Some(username), Some(realm), Some(nonce)) =
            (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            return Err(Refusal {
                signed: false,
                ..refuse(CODE_BAD_REQUEST, "Missing USERNAME, REALM or NONCE")
            });
        };
        if !self.nonce_ok(&nonce, unix) {
            return Err(Refusal {
                signed: false,
                ..refuse(CODE_STALE_NONCE, "Stale Nonce")
            });
        }
        if realm != self.config.realm {
            return Err(unauthorized("Wrong realm"));
        }
        let Some(password) = self.config.secret.password(&username, unix, fresh) else {
            return Err(unauthorized("Unknown or expired credentials"));
        };
        let key = MessageIntegrity::long_term_integrity_key(
            username.clone(),
            realm,
            password,
            self.crypto.crypto(),
        )
        .map_err(|_| unauthorized("Unauthorized"))?;
        MessageIntegrity::check(m, &key, self.crypto.crypto())
            .map_err(|_| unauthorized("Wrong credentials"))?;
        Ok((username, key))
    }

    // ----- requests ---------------------------------------------------------------------------

    fn allocate(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        username: String,
        key: &[u8],
    ) -> Result<(), Refusal> {
        if let Some(a) = self.allocations.get(&client) {
            // A retransmission of the request that made it gets the same answer.
            if a.made_by == m.transaction_id {
                if let Some(relay) = a.relay {
                    let lifetime = a.expires.saturating_duration_since(now);
                    self.allocate_success(client, m, key, relay, lifetime);
                }
                return Ok(());
            }
            return Err(refuse(CODE_ALLOC_MISMATCH, "Allocation Mismatch"));
        }
        let unknown: Vec<AttrType> = [ATTR_EVEN_PORT, ATTR_RESERVATION_TOKEN, ATTR_DONT_FRAGMENT]
            .into_iter()
            .filter(|t| m.contains(*t))
            .chain(unknown_required(m))
            .collect();
        if !unknown.is_empty() {
            return Err(Refusal {
                unknown,
                ..refuse(CODE_UNKNOWN_ATTRIBUTE, "Unknown Attribute")
            });
        }
        let transport = m
            .get(ATTR_REQUESTED_TRANSPORT)
            .map_err(|_| refuse(CODE_BAD_REQUEST, "Missing REQUESTED-TRANSPORT"))?;
        if transport.first() != Some(&PROTO_UDP) {
            return Err(refuse(
                CODE_UNSUPPORTED_TRANS_PROTO,
                "Unsupported Transport Protocol",
            ));
        }
        if let Ok(family) = m.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            if family.first() != Some(&0x01) {
                return Err(refuse(
                    CODE_ADDR_FAMILY_NOT_SUPPORTED,
                    "Address Family not Supported",
                ));
            }
        }
        if self.allocations.len() >= self.config.max_allocations
            || self
                .allocations
                .values()
                .filter(|a| a.username == username)
                .count()
                >= self.config.max_per_user
        {
            return Err(refuse(CODE_ALLOC_QUOTA_REACHED, "Allocation Quota Reached"));
        }
        let lifetime = requested_lifetime(m).unwrap_or(DEFAULT_LIFETIME);
        let lifetime = lifetime.clamp(DEFAULT_LIFETIME, MAX_LIFETIME);
        self.allocations.insert(
            client,
            Allocation {
                relay: None,
                pending: Some(Pending {
                    transaction: m.transaction_id,
                    lifetime,
                }),
                made_by: m.transaction_id,
                username,
                key: key.to_vec(),
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
            },
        );
        self.outputs.push_back(Output::Bind(client));
        Ok(())
    }

    fn allocate_success(
        &mut self,
        client: Client,
        req: &Message,
        key: &[u8],
        relay: SocketAddr,
        lifetime: Duration,
    ) {
        let attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(RelayedAddress {
                ip: relay.ip(),
                port: relay.port(),
            }),
            Box::new(Lifetime(lifetime)),
            Box::new(XorMappedAddress {
                ip: client.remote.ip(),
                port: client.remote.port(),
            }),
        ];
        self.respond(client, req, CLASS_SUCCESS_RESPONSE, Some(key), attrs);
    }

    fn refresh(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        key: &[u8],
    ) -> Result<(), Refusal> {
        if !self.allocations.contains_key(&client) {
            return Err(refuse(CODE_ALLOC_MISMATCH, "Allocation Mismatch"));
        }
        let requested = requested_lifetime(m).unwrap_or(DEFAULT_LIFETIME);
        let lifetime = if requested.is_zero() {
            self.remove(client);
            Duration::ZERO
        } else {
            let lifetime = requested.min(MAX_LIFETIME);
            if let Some(a) = self.allocations.get_mut(&client) {
                a.expires = now + lifetime;
            }
            lifetime
        };
        let attrs: Vec<Box<dyn Setter>> = vec![Box::new(Lifetime(lifetime))];
        self.respond(client, m, CLASS_SUCCESS_RESPONSE, Some(key), attrs);
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        key: &[u8],
    ) -> Result<(), Refusal> {
        let peers = peer_addresses(m);
        if peers.is_empty() {
            return Err(refuse(CODE_BAD_REQUEST, "Missing XOR-PEER-ADDRESS"));
        }
        if !peers.iter().all(|p| self.allowed_ip(p.ip())) {
            return Err(refuse(
                CODE_FORBIDDEN,
                "Forbidden: this server relays only to its own media port",
            ));
        }
        let a = self.usable(client)?;
        for p in peers {
            a.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        self.respond(client, m, CLASS_SUCCESS_RESPONSE, Some(key), vec![]);
        Ok(())
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        client: Client,
        m: &Message,
        key: &[u8],
    ) -> Result<(), Refusal> {
        let number = m
            .get(ATTR_CHANNEL_NUMBER)
            .ok()
            .filter(|v| v.len() == 4)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .filter(|n| CHANNELS.contains(n))
            .ok_or_else(|| refuse(CODE_BAD_REQUEST, "Bad CHANNEL-NUMBER"))?;
        let peer = *peer_addresses(m)
            .first()
            .ok_or_else(|| refuse(CODE_BAD_REQUEST, "Missing XOR-PEER-ADDRESS"))?;
        if !self.allowed(peer) {
            return Err(refuse(
                CODE_FORBIDDEN,
                "Forbidden: this server relays only to its own media port",
            ));
        }
        let a = self.usable(client)?;
        // RFC 8656 §11.2: a channel is bound to one peer and a peer to one channel.
        let clash = a
            .channels
            .iter()
            .any(|(n, (p, t))| *t > now && ((*n == number) != (*p == peer)));
        if clash {
            return Err(refuse(CODE_BAD_REQUEST, "Channel or peer bound otherwise"));
        }
        a.channels.insert(number, (peer, now + CHANNEL_LIFETIME));
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        self.respond(client, m, CLASS_SUCCESS_RESPONSE, Some(key), vec![]);
        Ok(())
    }

    /// The client's allocation, once its relay is open.
    fn usable(&mut self, client: Client) -> Result<&mut Allocation, Refusal> {
        self.allocations
            .get_mut(&client)
            .filter(|a| a.relay.is_some())
            .ok_or_else(|| refuse(CODE_ALLOC_MISMATCH, "Allocation Mismatch"))
    }

    fn allowed(&self, peer: SocketAddr) -> bool {
        self.config.peers.contains(&peer)
    }

    fn allowed_ip(&self, ip: IpAddr) -> bool {
        self.config.peers.iter().any(|p| p.ip() == ip)
    }

    // ----- data ---------------------------------------------------------------------------------

    fn send_indication(&mut self, now: Instant, client: Client, m: &Message) {
        let (Some(&peer), Ok(data)) = (peer_addresses(m).first(), m.get(ATTR_DATA)) else {
            return;
        };
        self.relay_out(now, client, peer, Bytes::from(data));
    }

    fn channel_data(&mut self, now: Instant, client: Client, msg: &[u8]) {
        if msg.len() < 4 {
            return;
        }
        let number = u16::from_be_bytes([msg[0], msg[1]]);
        let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
        let Some(data) = msg.get(4..4 + len) else {
            return;
        };
        let Some(peer) = self
            .allocations
            .get(&client)
            .and_then(|a| a.channels.get(&number))
            .filter(|(_, t)| *t > now)
            .map(|(p, _)| *p)
        else {
            return;
        };
        self.relay_out(now, client, peer, Bytes::copy_from_slice(data));
    }

    fn relay_out(&mut self, now: Instant, client: Client, peer: SocketAddr, data: Bytes) {
        if !self.allowed(peer) {
            return;
        }
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        let Some(relay) = a.relay.filter(|_| a.permitted(now, peer.ip())) else {
            return;
        };
        self.outputs.push_back(Output::ToPeer { relay, peer, data });
    }

    // ----- responses ------------------------------------------------------------------------------

    fn respond(
        &mut self,
        client: Client,
        req: &Message,
        class: MessageClass,
        key: Option<&[u8]>,
        attrs: Vec<Box<dyn Setter>>,
    ) {
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(req.transaction_id),
            Box::new(MessageType::new(req.typ.method, class)),
        ];
        setters.extend(attrs);
        if m.build(&setters).is_err() {
            return;
        }
        if let Some(key) = key {
            let mi = MessageIntegrity::new_raw_integrity_with_provider(
                key.to_vec(),
                self.crypto.crypto(),
            );
            if mi.add_to(&mut m).is_err() {
                return;
            }
        }
        if FINGERPRINT.add_to(&mut m).is_err() {
            return;
        }
        self.outputs
            .push_back(Output::ToClient(client, BytesMut::from(&m.raw[..])));
    }

    fn refuse(&mut self, client: Client, req: &Message, key: Option<&[u8]>, r: Refusal, unix: u64) {
        let mut attrs: Vec<Box<dyn Setter>> = vec![Box::new(ErrorCodeAttribute {
            code: r.code,
            reason: r.reason.as_bytes().to_vec(),
        })];
        if r.code == CODE_UNAUTHORIZED || r.code == CODE_STALE_NONCE {
            attrs.push(Box::new(TextAttribute::new(
                ATTR_REALM,
                self.config.realm.clone(),
            )));
            attrs.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce(unix))));
        }
        if !r.unknown.is_empty() {
            attrs.push(Box::new(UnknownAttributes(r.unknown)));
        }
        let key = key.filter(|_| r.signed);
        self.respond(client, req, CLASS_ERROR_RESPONSE, key, attrs);
    }
}

/// Comprehension-required attributes (type < 0x8000) we do not know.
fn unknown_required(m: &Message) -> Vec<AttrType> {
    const KNOWN: [AttrType; 13] = [
        ATTR_USERNAME,
        ATTR_MESSAGE_INTEGRITY,
        ATTR_MESSAGE_INTEGRITY_SHA256,
        ATTR_REALM,
        ATTR_NONCE,
        ATTR_REQUESTED_TRANSPORT,
        ATTR_LIFETIME,
        ATTR_XOR_PEER_ADDRESS,
        ATTR_DATA,
        ATTR_CHANNEL_NUMBER,
        ATTR_REQUESTED_ADDRESS_FAMILY,
        ATTR_ERROR_CODE,
        ATTR_USE_CANDIDATE,
    ];
    m.attributes
        .0
        .iter()
        .map(|a| a.typ)
        .filter(|t| t.0 < 0x8000 && !KNOWN.contains(t))
        .filter(|t| ![ATTR_PASSWORD_ALGORITHMS, ATTR_ADDITIONAL_ADDRESS_FAMILY].contains(t))
        .collect()
}

fn requested_lifetime(m: &Message) -> Option<Duration> {
    let v = m.get(ATTR_LIFETIME).ok()?;
    let secs: [u8; 4] = v.get(..4)?.try_into().ok()?;
    Some(Duration::from_secs(u64::from(u32::from_be_bytes(secs))))
}

/// Every XOR-PEER-ADDRESS of a message (CREATE-PERMISSION may carry several), decoded by RFC
/// 8489 §14.2's XOR with the magic cookie (and the transaction id for IPv6).
fn peer_addresses(m: &Message) -> Vec<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .filter_map(|a| {
            let v = &a.value;
            if v.len() < 4 {
                return None;
            }
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let ip = match (v[1], v.len()) {
                (0x01, 8) => {
                    let mut o = [0u8; 4];
                    for i in 0..4 {
                        o[i] = v[4 + i] ^ cookie[i];
                    }
                    IpAddr::from(o)
                }
                (0x02, 20) => {
                    let mut mask = [0u8; 16];
                    mask[..4].copy_from_slice(&cookie);
                    mask[4..].copy_from_slice(&m.transaction_id.0);
                    let mut o = [0u8; 16];
                    for i in 0..16 {
                        o[i] = v[4 + i] ^ mask[i];
                    }
                    IpAddr::from(o)
                }
                _ => return None,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests;
