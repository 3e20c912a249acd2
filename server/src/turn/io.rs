//! The TURN server's shell: its listeners (UDP and TCP on `--turn-listen`, TLS on
//! `--turn-tls` with the server's certificate), the relay sockets of allocations, and the one
//! task that drives the [`TurnServer`] core with what they receive.
//!
//! Relay sockets are UDP sockets on the address the media port is reached at locally; what a
//! client sends to one of the media port's announced addresses leaves its relay socket for the
//! media port's local address (the same one, unless `--public-ip` announces a NAT's address,
//! which this host may not reach itself), and what comes back is shown to the client as coming
//! from the announced address it asked for.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::credentials::TurnSecret;
use super::framing::{self, Framer};
use super::server::{Client, ClientTransport, Output, TurnConfig, TurnServer};
use crate::metrics::Metrics;

/// Messages waiting for the core task, from all listeners and relays.
const INBOUND: usize = 4096;
/// Messages queued per TCP/TLS client at most; more are dropped (the client is slow).
const CLIENT_QUEUE: usize = 256;
/// TCP and TLS clients at once at most.
const MAX_STREAMS: usize = 1024;
/// A TLS client must finish its handshake within this long.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Allocations at once, over all clients, and per username.
const MAX_ALLOCATIONS: usize = 1000;
const MAX_PER_USER: usize = 8;
const DATAGRAM: usize = 65_536;

/// Where TURN listens and what it relays to.
#[derive(Debug, Clone)]
pub struct TurnSetup {
    /// UDP and TCP (`--turn-listen`).
    pub listen: SocketAddr,
    /// TLS, with this certificate (`--turn-tls`; none without a certificate).
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// The media port's announced addresses (UDP candidates): the only peers relayed to.
    pub media_candidates: Vec<SocketAddr>,
    /// The media socket's own address (what `--media` bound).
    pub media_bound: SocketAddr,
}

/// A running TURN server.
pub struct TurnPlane {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub secret: TurnSecret,
    tasks: Vec<JoinHandle<()>>,
}

impl TurnPlane {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

enum In {
    Client(Client, BytesMut),
    Stream(Client, mpsc::Sender<BytesMut>),
    Closed(Client),
    Peer {
        relay: SocketAddr,
        from: SocketAddr,
        data: BytesMut,
    },
}

/// Binds the listeners and starts the TURN tasks.
pub async fn start(
    setup: TurnSetup,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<TurnPlane> {
    let bind_err = |what: &str, addr: SocketAddr, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for TURN on {what} {addr}: {e} (choose another address with --turn-listen / --turn-tls)"),
        )
    };
    let udp = Arc::new(
        UdpSocket::bind(setup.listen)
            .await
            .map_err(|e| bind_err("udp", setup.listen, e))?,
    );
    let udp_addr = udp.local_addr()?;
    // TCP on the same port number as UDP (a system-chosen UDP port, too).
    let tcp_at = SocketAddr::new(setup.listen.ip(), udp_addr.port());
    let tcp = TcpListener::bind(tcp_at)
        .await
        .map_err(|e| bind_err("tcp", tcp_at, e))?;
    let tcp_addr = tcp.local_addr()?;
    let tls = match &setup.tls {
        Some((addr, config)) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| bind_err("tls", *addr, e))?;
            let mut config = (**config).clone();
            // TURN clients send no ALPN of HTTP's; RFC 7443 names "stun.turn".
            config.alpn_protocols = vec![b"stun.turn".to_vec()];
            Some((l, tokio_rustls::TlsAcceptor::from(Arc::new(config))))
        }
        None => None,
    };
    let tls_addr = match &tls {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };

    let crypto = rtc::crypto::default_provider()
        .map_err(|e| io::Error::other(format!("no crypto provider for TURN: {e}")))?;
    let secret = TurnSecret::generate(crypto);
    let peers = setup.media_candidates.clone();
    let core = TurnServer::new(
        TurnConfig {
            realm: "confab".into(),
            secret: secret.clone(),
            peers: peers.clone(),
            max_allocations: MAX_ALLOCATIONS,
            max_per_user: MAX_PER_USER,
        },
        rand::random(),
    );
    let routes = Routes::new(&peers, setup.media_bound);
    let (tx, rx) = mpsc::channel(INBOUND);
    let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![
        tokio::spawn(run_core(
            core,
            rx,
            tx.clone(),
            udp.clone(),
            routes,
            metrics,
            shutdown,
        )),
        tokio::spawn(read_udp(udp, udp_addr, tx.clone())),
        tokio::spawn(accept(tcp, tcp_addr, None, tx.clone(), streams.clone())),
    ];
    if let (Some((l, acceptor)), Some(addr)) = (tls, tls_addr) {
        tasks.push(tokio::spawn(accept(l, addr, Some(acceptor), tx, streams)));
    }
    Ok(TurnPlane {
        udp: udp_addr,
        tcp: tcp_addr,
        tls: tls_addr,
        secret,
        tasks,
    })
}

/// Between the announced media addresses the core relays to and where datagrams really go.
struct Routes {
    /// The local address relay sockets bind to.
    relay_ip: IpAddr,
    /// Announced → the media port as this host reaches it.
    deliver: HashMap<SocketAddr, SocketAddr>,
    /// And back: a datagram from there is shown as from this announced address.
    announced: HashMap<SocketAddr, SocketAddr>,
}

impl Routes {
    fn new(peers: &[SocketAddr], media_bound: SocketAddr) -> Routes {
        let local_ips: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip())
            .collect();
        let fallback = if media_bound.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            media_bound.ip()
        };
        let mut deliver = HashMap::new();
        let mut announced = HashMap::new();
        for p in peers.iter().filter(|p| p.is_ipv4()) {
            let to = if media_bound.ip().is_unspecified() && local_ips.contains(&p.ip()) {
                *p
            } else {
                SocketAddr::new(fallback, media_bound.port())
            };
            deliver.insert(*p, to);
            announced.entry(to).or_insert(*p);
        }
        // Relay sockets sit where the media port is reached: on the first delivery address.
        let relay_ip = peers
            .iter()
            .filter_map(|p| deliver.get(p))
            .map(|a| a.ip())
            .next()
            .unwrap_or(fallback);
        Routes {
            relay_ip,
            deliver,
            announced,
        }
    }
}

struct Relay {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn run_core(
    mut core: TurnServer,
    mut rx: mpsc::Receiver<In>,
    tx: mpsc::Sender<In>,
    udp: Arc<UdpSocket>,
    routes: Routes,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut streams: HashMap<Client, mpsc::Sender<BytesMut>> = HashMap::new();
    let mut relays: HashMap<SocketAddr, Relay> = HashMap::new();
    let far = Duration::from_secs(3600);
    loop {
        let wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let now = Instant::now();
                match msg {
                    In::Client(c, m) => core.handle_client(now, unix_now(), c, &m),
                    In::Stream(c, s) => { streams.insert(c, s); }
                    In::Closed(c) => {
                        streams.remove(&c);
                        core.client_closed(c);
                    }
                    In::Peer { relay, from, data } => {
                        let from = routes.announced.get(&from).copied().unwrap_or(from);
                        core.handle_peer(now, relay, from, &data);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => core.handle_timeout(Instant::now()),
            _ = shutdown.changed() => break,
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::ToClient(c, m) => match c.transport {
                    ClientTransport::Udp => {
                        let _ = udp.try_send_to(&m, c.remote);
                    }
                    _ => {
                        if let Some(s) = streams.get(&c) {
                            if s.try_send(m).is_err() {
                                metrics.dropped_sends.fetch_add(1, Relaxed);
                            }
                        }
                    }
                },
                Output::ToPeer { relay, peer, data } => {
                    let to = routes.deliver.get(&peer).copied().unwrap_or(peer);
                    if let Some(r) = relays.get(&relay) {
                        if r.socket.try_send_to(&data, to).is_err() {
                            metrics.dropped_sends.fetch_add(1, Relaxed);
                        }
                    }
                }
                Output::Bind(c) => {
                    let bound = bind_relay(routes.relay_ip, tx.clone());
                    let result = match bound {
                        Ok((addr, relay)) => {
                            relays.insert(addr, relay);
                            Ok(addr)
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    core.bound(Instant::now(), c, result);
                }
                Output::Release(addr) => {
                    if let Some(r) = relays.remove(&addr) {
                        r.task.abort();
                    }
                }
            }
        }
        let [(_, u), (_, t), (_, s)] = core.allocations_by_transport();
        metrics.turn_allocations_udp.store(u as i64, Relaxed);
        metrics.turn_allocations_tcp.store(t as i64, Relaxed);
        metrics.turn_allocations_tls.store(s as i64, Relaxed);
    }
    for (_, r) in relays {
        r.task.abort();
    }
}

fn bind_relay(ip: IpAddr, tx: mpsc::Sender<In>) -> io::Result<(SocketAddr, Relay)> {
    let std = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    std.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(std)?);
    let addr = socket.local_addr()?;
    let reader = socket.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; DATAGRAM];
        while let Ok((n, from)) = reader.recv_from(&mut buf).await {
            let data = BytesMut::from(&buf[..n]);
            if tx
                .send(In::Peer {
                    relay: addr,
                    from,
                    data,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    Ok((addr, Relay { socket, task }))
}

async fn read_udp(socket: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<In>) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let Ok((n, remote)) = socket.recv_from(&mut buf).await else {
            // ICMP errors from vanished clients surface here; they concern one client.
            continue;
        };
        let client = Client {
            transport: ClientTransport::Udp,
            remote,
            local,
        };
        if tx
            .send(In::Client(client, BytesMut::from(&buf[..n])))
            .await
            .is_err()
        {
            break;
        }
    }
}

async fn accept(
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<In>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        if streams.load(Relaxed) >= MAX_STREAMS {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let transport = if tls.is_some() {
            ClientTransport::Tls
        } else {
            ClientTransport::Tcp
        };
        let client = Client {
            transport,
            remote,
            local,
        };
        let (tx, tls, streams) = (tx.clone(), tls.clone(), streams.clone());
        streams.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_stream(s, client, tx).await,
                        _ => tracing::debug!(%remote, "TURN TLS handshake failed"),
                    }
                }
                None => serve_stream(stream, client, tx).await,
            }
            streams.fetch_sub(1, Relaxed);
        });
    }
}

/// One TCP or TLS client: messages in (framed per RFC 8656 §12.5), queued messages out.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: Client,
    tx: mpsc::Sender<In>,
) {
    let (mut read, mut write) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<BytesMut>(CLIENT_QUEUE);
    if tx.send(In::Stream(client, out_tx)).await.is_err() {
        return;
    }
    let reader = async {
        let mut framer = Framer::default();
        loop {
            loop {
                match framer.next_message() {
                    Ok(Some(m)) => {
                        if tx.send(In::Client(client, m)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(remote = %client.remote, error = %e, "TURN stream closed");
                        return;
                    }
                }
            }
            framer.buffer().reserve(4096);
            match read.read_buf(framer.buffer()).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let writer = async {
        let mut buf = BytesMut::new();
        while let Some(m) = out_rx.recv().await {
            buf.clear();
            framing::put(&mut buf, &m);
            while let Ok(m) = out_rx.try_recv() {
                framing::put(&mut buf, &m);
            }
            if write.write_all(&buf).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    let _ = tx.send(In::Closed(client)).await;
}
