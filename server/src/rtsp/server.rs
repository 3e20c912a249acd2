//! The RTSP server's I/O shell: the only part with sockets, tasks and timers.
//!
//! - The accept loop spawns one task per connection and, on shutdown, stops accepting and
//!   closes every connection.
//! - A connection task reads the socket into a [`Framer`], drives its [`Session`] with what it
//!   reads, the time, the playback tap and UDP datagrams routed to it, and carries out the
//!   session's outputs: bridge calls, media to the publisher, packets to the player. A writer
//!   task owns the socket's write half behind a bounded queue. Responses wait for room in it
//!   (a client that reads nothing for `WRITE_STALL` is dropped); a player's next packet is
//!   taken from its playback tap only when there is room, so a slow player's packets back up
//!   into the tap, whose bounded queue the engine fills without waiting: a slow player loses
//!   only its own packets and never holds up a publisher or anyone else. Over UDP, a packet
//!   the socket cannot take at once is dropped.
//! - One UDP pair (an even RTP port, the next odd RTCP port) on the listener's address serves
//!   every UDP session. A router task reads both sockets and hands each datagram to the
//!   connection whose session claimed its source address (client IP and port, learned in
//!   SETUP); nothing else gets in. Playback over UDP is sent from the same pair.
//! - A publisher's media is never copied here: the connection reads into the framer's buffer
//!   and interleaved frames are split off it, datagrams are split off a receive block
//!   (`RecvBuffer`), and the bridge gets each packet as that [`Bytes`].
//! - What a publisher's packets become goes into the media engine's bounded data queue once
//!   per read (and before each request). Over TCP the connection waits for room, up to
//!   [`DATA_STALL`](crate::bridge::queue::DATA_STALL), and reads nothing meanwhile, so a
//!   camera faster than the engine is slowed by its own TCP window; over UDP what does not fit
//!   is dropped (and counted). Either way the task never blocks its worker thread.
//! - In cluster mode, a connection whose room lives on another node is redirected (play) or
//!   relayed (push) as [`relay`](super::relay) describes; a relay runs in the connection's
//!   task, so it counts against `limits.rtsp_sessions` like any connection, and shutdown
//!   ends it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::message::{Frame, Framer, FramerLimits, Request, Response};
use super::relay::{self, Step};
use super::session::{
    Answer, Call, Config, Credentials, Destination, Ingest, Output, Packet, PacketKind, Refusal,
    Session, Transmit, UdpPorts, UdpRoute, SESSION_TIMEOUT,
};
use crate::access::{Access, Denied};
use crate::bridge::queue::Backpressure;
use crate::bridge::{Bridge, BridgeError, Playback, PlaybackEvent, Publisher};
use crate::cluster::{Cluster, Placement};
use crate::config::Limits;
use crate::metrics::Metrics;

/// Items queued for a connection's writer (responses and interleaved media).
const WRITE_QUEUE: usize = 512;
/// How long a response may wait for room in the write queue before the client is given up.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// Datagrams queued from the UDP router to one connection.
const UDP_QUEUE: usize = 1024;
/// How long a bridge call may take before the request is answered 503.
const BRIDGE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering malformed input, how long (and how much) unread input is drained before
/// closing, so the client reads the 400 instead of a connection reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long a relay may take to connect to the room's node.
const RELAY_CONNECT: Duration = Duration::from_secs(5);

/// Serves RTSP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    bridge: Bridge,
    access: Arc<Access>,
    limits: Limits,
    cluster: Option<Arc<Cluster>>,
) {
    let local_ip = listener
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let udp = match UdpShared::start(local_ip, metrics.clone(), shutdown.clone()) {
        Ok(udp) => {
            tracing::info!(
                "rtsp UDP transport on {local_ip}, ports {}-{}",
                udp.ports.rtp,
                udp.ports.rtcp
            );
            Some(udp)
        }
        Err(e) => {
            tracing::warn!("rtsp UDP transport unavailable (TCP only): {e}");
            None
        }
    };
    let shared = Arc::new(Shared {
        bridge,
        metrics,
        udp,
        access,
        cluster,
        framer: FramerLimits {
            head: limits.rtsp_header_bytes,
            headers: limits.rtsp_headers,
            body: limits.sdp_bytes,
        },
    });
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() >= limits.rtsp_sessions => {
                    tracing::warn!(%peer, limit = limits.rtsp_sessions, "rtsp connection refused: limit reached (limits.rtsp_sessions)");
                    connections.spawn(refuse(stream, limits.rtsp_sessions));
                }
                Ok((stream, peer)) => {
                    next_id += 1;
                    tracing::debug!(%peer, conn = next_id, "rtsp connection");
                    connections.spawn(connection(
                        stream,
                        peer,
                        next_id,
                        shared.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("rtsp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Connections see the same shutdown signal and close; give them a moment to say so.
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), all_closed)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}

/// A request URL fit for the log: user info and query (passwords, `?token=`) are cut.
fn redacted(uri: &str) -> std::borrow::Cow<'_, str> {
    let Ok(mut url) = url::Url::parse(uri) else {
        return uri.into();
    };
    if url.query().is_none() && url.password().is_none() && url.username().is_empty() {
        return uri.into();
    }
    url.set_query(None);
    let _ = url.set_password(None);
    let _ = url.set_username("");
    format!("{url} (credentials cut)").into()
}

/// Answers a connection over the limit with 503 (echoing its first request's CSeq if it comes
/// quickly) and closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let mut framer = Framer::new();
    let mut buf = [0u8; 2048];
    let cseq = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => framer.feed(&buf[..n]),
            }
            match framer.poll() {
                Ok(Some(Frame::Request(r))) => return r.header("CSeq").map(str::to_owned),
                Ok(_) => {}
                Err(e) => return e.cseq.map(|c| c.to_string()),
            }
        }
    })
    .await
    .ok()
    .flatten();
    let mut r = Response::error(
        503,
        &format!("the server serves at most {limit} RTSP connections at once; retry later"),
    )
    .with_header("Retry-After", "5");
    if let Some(c) = cseq {
        r.headers.insert(0, ("CSeq", c));
    }
    let mut bytes = Vec::new();
    r.write(&mut bytes);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}

struct Shared {
    access: Arc<Access>,
    framer: FramerLimits,
    bridge: Bridge,
    metrics: Arc<Metrics>,
    udp: Option<UdpShared>,
    cluster: Option<Arc<Cluster>>,
}

/// The shared UDP pair and the router's command channel.
struct UdpShared {
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    ports: UdpPorts,
    commands: mpsc::UnboundedSender<RouteCommand>,
}

enum RouteCommand {
    Add {
        conn: u64,
        routes: Vec<UdpRoute>,
        tx: mpsc::Sender<UdpIn>,
    },
    Remove {
        conn: u64,
    },
}

/// A datagram for a connection: its session's track and what it is.
struct UdpIn {
    track: usize,
    kind: PacketKind,
    data: Bytes,
}

impl UdpShared {
    fn start(
        ip: IpAddr,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<UdpShared> {
        let (rtp, rtcp) = bind_pair(ip)?;
        let ports = UdpPorts {
            rtp: rtp.local_addr()?.port(),
            rtcp: rtcp.local_addr()?.port(),
        };
        let rtp = Arc::new(UdpSocket::from_std(rtp)?);
        let rtcp = Arc::new(UdpSocket::from_std(rtcp)?);
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(route_udp(rtp.clone(), rtcp.clone(), rx, metrics, shutdown));
        Ok(UdpShared {
            rtp,
            rtcp,
            ports,
            commands,
        })
    }
}

/// Binds an even port and the odd one after it (RFC 3550 §11), any free pair.
fn bind_pair(ip: IpAddr) -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    for _ in 0..100 {
        let rtp = std::net::UdpSocket::bind((ip, 0))?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 {
            continue;
        }
        let Ok(rtcp) = std::net::UdpSocket::bind((ip, port + 1)) else {
            continue;
        };
        for s in [&rtp, &rtcp] {
            s.set_nonblocking(true)?;
            // Keyframes from UDP publishers arrive in bursts; a larger buffer loses fewer.
            let _ = socket2::SockRef::from(s).set_recv_buffer_size(2 * 1024 * 1024);
        }
        return Ok((rtp, rtcp));
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free even/odd UDP port pair found",
    ))
}

/// Reads both UDP sockets and hands each datagram to the connection that claimed its source.
async fn route_udp(
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    mut commands: mpsc::UnboundedReceiver<RouteCommand>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    type Table = HashMap<(SocketAddr, PacketKind), (u64, usize, mpsc::Sender<UdpIn>)>;
    let mut table: Table = HashMap::new();
    let mut rtp_buf = RecvBuffer::default();
    let mut rtcp_buf = RecvBuffer::default();
    let deliver = |table: &Table, kind: PacketKind, from: SocketAddr, data: Bytes| {
        let Some((_, track, tx)) = table.get(&(from, kind)) else {
            metrics.dropped_datagrams.fetch_add(1, Relaxed);
            return;
        };
        let item = UdpIn {
            track: *track,
            kind,
            data,
        };
        if tx.try_send(item).is_err() {
            metrics.dropped_datagrams.fetch_add(1, Relaxed);
        }
    };
    loop {
        tokio::select! {
            // Routes first: a session's route is in place before its client's first packet.
            biased;
            _ = shutdown.changed() => return,
            command = commands.recv() => match command {
                None => return,
                Some(RouteCommand::Add { conn, routes, tx }) => {
                    for r in routes {
                        let old = table.insert((r.from, r.kind), (conn, r.track, tx.clone()));
                        if old.is_some_and(|(c, _, _)| c != conn) {
                            tracing::warn!(from = %r.from, conn, "UDP source moved to a newer RTSP session");
                        }
                    }
                }
                Some(RouteCommand::Remove { conn }) => table.retain(|_, (c, _, _)| *c != conn),
            },
            received = rtp.recv_buf_from(rtp_buf.room()) => match received {
                Ok((_, from)) => deliver(&table, PacketKind::Rtp, from, rtp_buf.take()),
                Err(e) => tracing::debug!("rtsp RTP socket: {e}"),
            },
            received = rtcp.recv_buf_from(rtcp_buf.room()) => match received {
                Ok((_, from)) => deliver(&table, PacketKind::Rtcp, from, rtcp_buf.take()),
                Err(e) => tracing::debug!("rtsp RTCP socket: {e}"),
            },
        }
    }
}

/// Where datagrams are received: each is split off as its own [`Bytes`], which the bridge
/// passes on without copying (a single NAL unit, an Opus packet reach the engine in this
/// allocation). A block is replaced once it has no room for the largest datagram, and freed
/// when the last packet in it is.
///
/// The cost of sharing: a packet kept long (the engine's keyframe cache keeps a group of
/// pictures) keeps its whole block, and a block holds the datagrams of every UDP publisher
/// that arrived around the same time. [`RECV_BLOCK`] is small enough for that to stay modest
/// and large enough that the unusable tail (under one largest datagram) wastes little.
#[derive(Default)]
struct RecvBuffer(bytes::BytesMut);

/// The largest UDP payload (65,535 less the IPv4 and UDP headers), rounded up.
const MAX_DATAGRAM: usize = 64 * 1024;
const RECV_BLOCK: usize = 256 * 1024;

impl RecvBuffer {
    /// Room for one datagram of any size (a smaller buffer would truncate it silently).
    fn room(&mut self) -> &mut bytes::BytesMut {
        if self.0.capacity() < MAX_DATAGRAM {
            self.0 = bytes::BytesMut::with_capacity(RECV_BLOCK);
        }
        &mut self.0
    }

    /// The datagram just received.
    fn take(&mut self) -> Bytes {
        self.0.split().freeze()
    }
}

/// What a connection's writer writes.
enum Outgoing {
    Response(Vec<u8>),
    /// Bytes from the room's node, for a relayed connection.
    Relayed(Vec<u8>),
    Media {
        channel: u8,
        packet: Packet,
    },
}

/// How a connection ended, for the lingering close.
#[derive(PartialEq, Eq)]
enum Ending {
    /// The session asked to close (after a 400 for malformed input, a timeout, the played
    /// participant leaving).
    Closed,
    /// The client went away.
    Gone,
    Shutdown,
    /// The room is on another node: the connection is handed to a [`Relay`].
    Relay,
}

/// One connection's I/O state around its session.
struct Conn {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    session: Session,
    out: mpsc::Sender<Outgoing>,
    udp_tx: mpsc::Sender<UdpIn>,
    publisher: Option<Publisher>,
    playback: Option<Playback>,
    /// What the log lines of the current session carry.
    live: Option<String>,
    routed: bool,
    closing: bool,
    /// The cluster has placed this connection's room here (asked once per connection).
    placed: bool,
    /// The room is on another node: its RTSP base, and the request that named the room.
    relay: Option<(String, Request)>,
    /// For assembling UDP datagrams (header + payload) without allocating per packet.
    scratch: Vec<u8>,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
    let mut writer = tokio::spawn(write_loop(writer, out_rx));
    let (udp_tx, mut udp_rx) = mpsc::channel(UDP_QUEUE);
    let config = Config {
        timeout: SESSION_TIMEOUT,
        peer,
        udp: shared.udp.as_ref().map(|u| u.ports),
    };
    let mut conn = Conn {
        id,
        peer,
        session: Session::new(config, rand::random(), Instant::now()),
        shared,
        out,
        udp_tx,
        publisher: None,
        playback: None,
        live: None,
        routed: false,
        closing: false,
        placed: false,
        relay: None,
        scratch: Vec::with_capacity(2048),
    };
    let mut framer = Framer::with_limits(conn.shared.framer);
    let ending = loop {
        let deadline = tokio::time::Instant::from_std(conn.session.poll_timeout());
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Ending::Shutdown,
            // Straight into the framer's buffer: interleaved packets are split off it, not
            // copied out of it.
            read = reader.read_buf(framer.read_buffer(READ_CHUNK)) => match read {
                Ok(0) | Err(_) => break Ending::Gone,
                Ok(_) => {
                    conn.frames(&mut framer).await;
                    if conn.relay.is_some() {
                        break Ending::Relay;
                    }
                    // One batch per read. Waiting here for room in the engine's data queue
                    // is the backpressure: this connection is not read meanwhile.
                    conn.flush(Backpressure::Wait).await;
                }
            },
            Some(datagram) = udp_rx.recv() => {
                conn.datagram(datagram);
                // Nothing to slow down over UDP: what does not fit now is dropped.
                conn.flush(Backpressure::Drop).await;
            }
            reason = removed(&mut conn.publisher) => {
                tracing::info!(conn = id, peer = %peer, reason, "rtsp publisher removed from its room");
                conn.publisher = None;
                break Ending::Gone;
            }
            event = next_event(&conn.out, &mut conn.playback) => {
                let now = Instant::now();
                match event {
                    Some(event) => conn.session.handle_playback(event, now),
                    None => {
                        tracing::debug!(conn = id, "playback ended by the bridge");
                        // An ended tap is dropped whatever the session makes of it.
                        conn.playback = None;
                        conn.session.handle_playback_end(now);
                    }
                }
                conn.drain().await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                conn.session.handle_timeout(Instant::now());
                conn.drain().await;
            }
        }
        if conn.closing {
            break Ending::Closed;
        }
    };
    let ending = match conn.relay.take() {
        Some((owner, first)) if ending == Ending::Relay => {
            let r = Relay {
                conn: id,
                peer,
                owner: &owner,
                out: &conn.out,
            };
            r.run(&mut reader, &mut framer, first, &mut shutdown).await
        }
        _ => ending,
    };
    conn.session.handle_close();
    conn.drain().await;
    conn.unroute();
    let Conn { out, .. } = conn;
    // The writer writes what is queued, then closes its half (FIN).
    drop(out);
    if ending == Ending::Shutdown {
        writer.abort();
        return;
    }
    if tokio::time::timeout(WRITE_STALL, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
        return;
    }
    if ending == Ending::Closed {
        linger(&mut reader).await;
    }
}

/// Resolves when an operator removes the camera this connection publishes.
async fn removed(publisher: &mut Option<Publisher>) -> String {
    match publisher {
        Some(p) => p.removed().await,
        None => std::future::pending().await,
    }
}

/// The next playback event once the writer has room for it, or never while nothing plays.
///
/// Waiting for room first means a burst (the keyframe group a new player starts with) waits
/// in the tap's queue instead of being dropped here; when a player stays slow, the tap's
/// queue fills and the engine drops that player's packets, and only that player's.
async fn next_event(
    out: &mpsc::Sender<Outgoing>,
    playback: &mut Option<Playback>,
) -> Option<PlaybackEvent> {
    let Some(p) = playback else {
        return std::future::pending().await;
    };
    // The connection task is the queue's only sender, so the room is still there when the
    // event is sent; the permit is released at once. An error means the writer is gone,
    // which the read side notices.
    match out.reserve().await {
        Ok(permit) => drop(permit),
        Err(_) => return std::future::pending().await,
    }
    p.recv().await
}

/// Reads and discards what the client still sends, briefly, so that closing does not reset
/// the connection under the response it has yet to read.
async fn linger(reader: &mut OwnedReadHalf) {
    let mut buf = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

async fn write_loop(writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut w = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(item) = rx.recv().await {
        if write_item(&mut w, item).await.is_err() {
            return;
        }
        // Write whatever else is queued before flushing: one syscall for a burst.
        while let Ok(item) = rx.try_recv() {
            if write_item(&mut w, item).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn write_item(w: &mut BufWriter<OwnedWriteHalf>, item: Outgoing) -> io::Result<()> {
    match item {
        Outgoing::Response(bytes) | Outgoing::Relayed(bytes) => w.write_all(&bytes).await,
        Outgoing::Media { channel, packet } => {
            let (head, body): (&[u8], &[u8]) = match &packet {
                Packet::Rtp { header, payload } => (header, payload),
                Packet::Rtcp(bytes) => (&[], bytes),
            };
            let Ok(len) = u16::try_from(head.len() + body.len()) else {
                return Ok(()); // cannot be framed (RFC 2326 §10.12); the bridge sends MTU-sized
            };
            let [hi, lo] = len.to_be_bytes();
            w.write_all(&[b'$', channel, hi, lo]).await?;
            w.write_all(head).await?;
            w.write_all(body).await
        }
    }
}

impl Conn {
    /// Handles every whole frame the framer holds.
    async fn frames(&mut self, framer: &mut Framer) {
        loop {
            match framer.poll() {
                Ok(Some(Frame::Request(req))) => {
                    // Media that came before a request goes in before it is handled (a
                    // TEARDOWN would discard it).
                    self.flush(Backpressure::Wait).await;
                    tracing::debug!(
                        conn = self.id,
                        peer = %self.peer,
                        method = %req.method,
                        uri = %redacted(&req.uri),
                        cseq = req.header("CSeq").unwrap_or("-"),
                        "rtsp request"
                    );
                    let Some(req) = self.place(req).await else {
                        if self.closing || self.relay.is_some() {
                            return;
                        }
                        continue;
                    };
                    self.session.handle_request(req, Instant::now());
                    self.drain().await;
                }
                Ok(Some(Frame::Interleaved { channel, data })) => self.interleaved(channel, data),
                Ok(None) => return,
                Err(e) => {
                    tracing::info!(conn = self.id, peer = %self.peer, "rtsp: malformed input, closing: {e}");
                    self.session.handle_frame_error(&e);
                    self.drain().await;
                    return;
                }
            }
            if self.closing {
                return;
            }
        }
    }

    /// In cluster mode, where the first request naming a room (DESCRIBE, ANNOUNCE) is
    /// served: here (the request is given back), or on another node, which a player is
    /// redirected to and a publisher relayed to (`self.relay`); or nowhere, when the cluster
    /// cannot be asked (answered 503).
    async fn place(&mut self, req: Request) -> Option<Request> {
        let Some(cluster) = &self.shared.cluster else {
            return Some(req);
        };
        if self.placed {
            return Some(req);
        }
        let Some(room) = relay::deciding_room(&req) else {
            return Some(req);
        };
        let here = self.shared.bridge.occupied(&room);
        let cseq = req.header("CSeq").unwrap_or("0").to_owned();
        let node = match cluster.place(&room, here, None).await {
            Ok(Placement::Here) => {
                self.placed = true;
                return Some(req);
            }
            Ok(Placement::There(node)) => node,
            Err(e) => {
                tracing::warn!(conn = self.id, peer = %self.peer, room = %room, error = %e, "rtsp request refused: no placement");
                self.shared
                    .metrics
                    .cluster_unavailable
                    .fetch_add(1, Relaxed);
                let r = Response::error(503, &e.to_string()).with_header("Retry-After", "2");
                self.answer(&cseq, r).await;
                return None;
            }
        };
        let Some(owner) = node.rtsp.clone() else {
            let message = format!(
                "room {room} is on node {}, which does not say where its RTSP server is (an older confab); send this request to that node's RTSP port",
                node.url
            );
            tracing::warn!(conn = self.id, room = %room, node = %node.id, "rtsp: the room's node has no RTSP base in its record");
            self.answer(&cseq, Response::error(503, &message)).await;
            return None;
        };
        if relay::redirects(&req.method) {
            let Some(location) = relay::location(&owner, &req.uri) else {
                let message = format!("room {room} is on node {owner}; send the request there");
                self.answer(&cseq, Response::error(503, &message)).await;
                return None;
            };
            tracing::info!(conn = self.id, peer = %self.peer, room = %room, node = %node.id, to = %redacted(&location), "rtsp: room is on another node: redirected");
            self.shared.metrics.cluster_redirects.fetch_add(1, Relaxed);
            let r = Response::new(302).with_header("Location", location);
            self.answer(&cseq, r).await;
            return None;
        }
        // Credentials are checked here too, against the camera's own address: wrong guesses
        // are throttled where they were made, whereas the room's node, which sees this node's
        // address on every relayed connection, would hold one client's guesses against every
        // camera relayed from here. (The room's node checks again; every node has the same
        // rooms' settings and token key.)
        let credentials = super::session::credentials(&req);
        if let Err(refusal) = self.authorize(&room, true, credentials).await {
            tracing::info!(conn = self.id, peer = %self.peer, room = %room, "rtsp: publisher for another node's room refused here");
            let r = super::session::refusal_response(&refusal);
            self.answer(&cseq, r).await;
            return None;
        }
        tracing::info!(conn = self.id, peer = %self.peer, room = %room, node = %node.id, to = %owner, "rtsp: room is on another node: relayed");
        self.relay = Some((owner, req));
        None
    }

    /// Answers a request the session never sees (it is about another node's room).
    async fn answer(&mut self, cseq: &str, mut r: Response) {
        r.headers.insert(0, ("CSeq", cseq.to_owned()));
        tracing::debug!(conn = self.id, status = r.status, reason = %r.reason, "rtsp response");
        let mut bytes = Vec::with_capacity(256);
        r.write(&mut bytes);
        let sent =
            tokio::time::timeout(WRITE_STALL, self.out.send(Outgoing::Response(bytes))).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.closing = true;
        }
    }

    fn interleaved(&mut self, channel: u8, data: Bytes) {
        let now = Instant::now();
        match self.session.handle_interleaved(channel, now) {
            Some(Ingest { track, kind }) => {
                if let Some(p) = &mut self.publisher {
                    match kind {
                        PacketKind::Rtp => p.rtp(track, data, now),
                        PacketKind::Rtcp => p.rtcp(track, &data),
                    }
                }
            }
            None => tracing::trace!(conn = self.id, channel, "interleaved frame ignored"),
        }
    }

    /// Sends the publisher's queued media into the engine's data queue.
    async fn flush(&mut self, how: Backpressure) {
        if let Some(p) = &mut self.publisher {
            p.flush(how).await;
        }
    }

    fn datagram(&mut self, d: UdpIn) {
        let now = Instant::now();
        self.session.handle_udp(now);
        if let Some(p) = &mut self.publisher {
            match d.kind {
                PacketKind::Rtp => p.rtp(d.track, d.data, now),
                PacketKind::Rtcp => p.rtcp(d.track, &d.data),
            }
        }
    }

    /// Carries out everything the session has queued.
    async fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Response(r) => {
                    tracing::debug!(conn = self.id, status = r.status, reason = %r.reason, "rtsp response");
                    let mut bytes = Vec::with_capacity(256 + r.body.len());
                    r.write(&mut bytes);
                    let sent =
                        tokio::time::timeout(WRITE_STALL, self.out.send(Outgoing::Response(bytes)))
                            .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        // The client reads nothing, or is gone.
                        self.closing = true;
                    }
                }
                Output::Call(call) => {
                    let answer = self.call(call).await;
                    self.session.handle_bridge(answer, Instant::now());
                }
                Output::Started {
                    id,
                    mode,
                    room,
                    participant,
                    lower,
                } => {
                    self.shared.metrics.rtsp_sessions.fetch_add(1, Relaxed);
                    let what = format!("{room}/{participant}");
                    tracing::info!(
                        session = %id,
                        peer = %self.peer,
                        mode = mode.as_str(),
                        transport = lower.as_str(),
                        "rtsp session started: {what}"
                    );
                    self.live = Some(what);
                }
                Output::Ended { id, reason } => {
                    self.shared.metrics.rtsp_sessions.fetch_sub(1, Relaxed);
                    tracing::info!(
                        session = %id,
                        peer = %self.peer,
                        reason = reason.as_str(),
                        "rtsp session ended: {}",
                        self.live.take().unwrap_or_default()
                    );
                    self.unroute();
                }
                Output::Unpublish => self.publisher = None,
                Output::StopPlayback => self.playback = None,
                Output::RouteUdp(routes) => self.route(routes),
                Output::Transmit(t) => self.transmit(t),
                Output::Close => self.closing = true,
            }
        }
    }

    async fn call(&mut self, call: Call) -> Answer {
        let bridge = &self.shared.bridge;
        let late = || BridgeError::Unavailable("the server is busy; try again".into());
        match call {
            Call::Authorize {
                room,
                publish,
                credentials,
            } => Answer::Authorize(self.authorize(&room, publish, credentials).await),
            Call::Describe { room, id } => {
                let described =
                    tokio::time::timeout(BRIDGE_TIMEOUT, bridge.describe(&room, id.as_str()))
                        .await
                        .unwrap_or_else(|_| Err(late()));
                Answer::Describe(described)
            }
            Call::Publish { room, id, tracks } => {
                match bridge.publish(&room, id.as_str(), tracks, Instant::now()) {
                    Ok(p) => {
                        self.publisher = Some(p);
                        Answer::Publish(Ok(()))
                    }
                    Err(e) => Answer::Publish(Err(e)),
                }
            }
            Call::Play { room, id, tracks } => {
                let played =
                    tokio::time::timeout(BRIDGE_TIMEOUT, bridge.play(&room, id.as_str(), &tracks))
                        .await
                        .unwrap_or_else(|_| Err(late()));
                match played {
                    Ok(p) => {
                        self.playback = Some(p);
                        Answer::Play(Ok(()))
                    }
                    Err(e) => Answer::Play(Err(e)),
                }
            }
        }
    }

    async fn authorize(
        &self,
        room: &crate::names::RoomName,
        publish: bool,
        credentials: Credentials,
    ) -> Result<(), Refusal> {
        let creds = crate::access::Credentials {
            password: credentials.password,
            token: credentials.token,
        };
        let grant = self
            .shared
            .access
            .admit(room, &creds, self.peer.ip(), Instant::now())
            .await
            .map_err(|e| match e {
                Denied::Required(m) | Denied::TokenRequired(m) | Denied::Wrong(m) => {
                    Refusal::Unauthorized(m)
                }
                Denied::Throttled { retry_after } => Refusal::Throttled {
                    message: Denied::Throttled { retry_after }.to_string(),
                    retry_after: retry_after.as_secs().max(1),
                },
            })?;
        if publish && !grant.role.can_publish() {
            return Err(Refusal::Forbidden(format!(
                "a {} may watch room {room} but not publish into it",
                grant.role.as_str()
            )));
        }
        Ok(())
    }

    fn route(&mut self, routes: Vec<UdpRoute>) {
        let Some(udp) = &self.shared.udp else { return };
        self.routed = true;
        let _ = udp.commands.send(RouteCommand::Add {
            conn: self.id,
            routes,
            tx: self.udp_tx.clone(),
        });
    }

    fn unroute(&mut self) {
        if !std::mem::take(&mut self.routed) {
            return;
        }
        if let Some(udp) = &self.shared.udp {
            let _ = udp.commands.send(RouteCommand::Remove { conn: self.id });
        }
    }

    /// Sends a packet to the player without waiting: if there is no room, it is dropped.
    fn transmit(&mut self, t: Transmit) {
        let sent = match t.to {
            Destination::Interleaved(channel) => self
                .out
                .try_send(Outgoing::Media {
                    channel,
                    packet: t.packet,
                })
                .is_ok(),
            Destination::Udp { to, rtcp } => {
                let Some(udp) = &self.shared.udp else { return };
                let socket = if rtcp { &udp.rtcp } else { &udp.rtp };
                let datagram: &[u8] = match &t.packet {
                    Packet::Rtp { header, payload } => {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(header);
                        self.scratch.extend_from_slice(payload);
                        &self.scratch
                    }
                    Packet::Rtcp(bytes) => bytes,
                };
                socket.try_send_to(datagram, to).is_ok()
            }
        };
        if !sent {
            self.shared.metrics.dropped_sends.fetch_add(1, Relaxed);
        }
    }
}

/// A connection whose room is on another node, relayed to that node's RTSP server.
struct Relay<'a> {
    conn: u64,
    peer: SocketAddr,
    /// `rtsp://host:port` of the room's node.
    owner: &'a str,
    out: &'a mpsc::Sender<Outgoing>,
}

/// Why a relay could not go on.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the room's node ({owner}) cannot be reached: {reason}; try again in a moment, or send to that node directly")]
    Connect { owner: String, reason: String },
    #[error("the room's node at {owner} stopped taking data for {WRITE_STALL:?}")]
    Stalled { owner: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Relay<'_> {
    /// Relays until either side closes (or shutdown): connects to the owner, passes `first`
    /// and the requests after it on ([`relay::step`]), then splices.
    async fn run(
        &self,
        reader: &mut OwnedReadHalf,
        framer: &mut Framer,
        first: Request,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ending {
        let cseq = first.header("CSeq").unwrap_or("0").to_owned();
        let upstream = match self.connect().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(conn = self.conn, peer = %self.peer, error = %e, "rtsp relay failed");
                let mut r = Response::error(503, &e.to_string()).with_header("Retry-After", "2");
                r.headers.insert(0, ("CSeq", cseq));
                let mut bytes = Vec::new();
                r.write(&mut bytes);
                let _ = tokio::time::timeout(WRITE_STALL, self.out.send(Outgoing::Response(bytes)))
                    .await;
                return Ending::Closed;
            }
        };
        let _ = upstream.set_nodelay(true);
        let (up_read, mut up_write) = upstream.into_split();
        let pump = pump(up_read, self.out.clone());
        tokio::pin!(pump);
        // The splice: not `copy_bidirectional`, since the client's write half belongs to the
        // writer task (the pump feeds it through the same queue as the relay's own answers);
        // and each write towards the owner is bounded by WRITE_STALL, so an owner that
        // vanished without closing ends the relay instead of holding it. An idle client is
        // the owner's to time out (SESSION_TIMEOUT), which closes the pump's side.
        let relayed = async {
            self.requests(reader, framer, first, &mut up_write).await?;
            let rest = framer.take_buffered();
            self.send(&mut up_write, &rest).await?;
            tracing::debug!(conn = self.conn, "rtsp relay: transport fixed, spliced");
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                self.send(&mut up_write, &buf[..n]).await?;
            }
            let _ = up_write.shutdown().await;
            Ok::<_, RelayError>(())
        };
        let ending = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Ending::Shutdown,
            done = relayed => {
                if let Err(e) = done {
                    tracing::info!(conn = self.conn, peer = %self.peer, error = %e, "rtsp relay ended");
                }
                Ending::Gone
            }
            done = &mut pump => {
                if let Err(e) = done {
                    tracing::info!(conn = self.conn, peer = %self.peer, error = %e, "rtsp relay: the room's node's side ended");
                }
                Ending::Closed
            }
        };
        tracing::debug!(conn = self.conn, owner = self.owner, "rtsp relay closed");
        ending
    }

    async fn connect(&self) -> Result<TcpStream, RelayError> {
        let err = |reason: String| RelayError::Connect {
            owner: self.owner.to_owned(),
            reason,
        };
        let url = url::Url::parse(self.owner).map_err(|e| err(e.to_string()))?;
        let host = url.host_str().ok_or_else(|| err("no host".into()))?;
        let addr = format!("{host}:{}", url.port().unwrap_or(554));
        match tokio::time::timeout(RELAY_CONNECT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(_) => Err(err(format!("no answer within {RELAY_CONNECT:?}"))),
        }
    }

    /// Passes requests on until the transport is fixed, answering the ones the owner must
    /// not see (UDP SETUPs); returns when the rest of the stream can be spliced.
    async fn requests(
        &self,
        reader: &mut OwnedReadHalf,
        framer: &mut Framer,
        first: Request,
        up: &mut OwnedWriteHalf,
    ) -> Result<(), RelayError> {
        let mut bytes = Vec::with_capacity(1024);
        first.write(&mut bytes);
        self.send(up, &bytes).await?;
        loop {
            match framer.poll() {
                Ok(Some(Frame::Request(req))) => {
                    tracing::debug!(conn = self.conn, method = %req.method, uri = %redacted(&req.uri), "rtsp relay: request");
                    match relay::step(&req) {
                        Step::Answer(r) => {
                            tracing::debug!(
                                conn = self.conn,
                                status = r.status,
                                "rtsp relay: answered here"
                            );
                            let mut bytes = Vec::new();
                            r.write(&mut bytes);
                            self.reply(bytes).await?;
                        }
                        step => {
                            bytes.clear();
                            req.write(&mut bytes);
                            self.send(up, &bytes).await?;
                            if step == Step::Splice {
                                return Ok(());
                            }
                        }
                    }
                }
                Ok(Some(Frame::Interleaved { channel, data })) => {
                    // Media before a TCP SETUP: the owner makes of it what it would.
                    let [hi, lo] = (data.len() as u16).to_be_bytes();
                    self.send(up, &[b'$', channel, hi, lo]).await?;
                    self.send(up, &data).await?;
                    return Ok(());
                }
                Ok(None) => {
                    let n = reader.read_buf(framer.read_buffer(READ_CHUNK)).await?;
                    if n == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                    }
                }
                Err(e) => {
                    // The owner would answer 400 and close; so does the relay.
                    let mut r = Response::error(400, &e.to_string());
                    if let Some(c) = e.cseq {
                        r.headers.insert(0, ("CSeq", c.to_string()));
                    }
                    let mut bytes = Vec::new();
                    r.write(&mut bytes);
                    self.reply(bytes).await?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()).into());
                }
            }
        }
    }

    async fn send(&self, up: &mut OwnedWriteHalf, bytes: &[u8]) -> Result<(), RelayError> {
        match tokio::time::timeout(WRITE_STALL, up.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RelayError::Stalled {
                owner: self.owner.to_owned(),
            }),
        }
    }

    async fn reply(&self, bytes: Vec<u8>) -> Result<(), RelayError> {
        match tokio::time::timeout(WRITE_STALL, self.out.send(Outgoing::Response(bytes))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(io::Error::from(io::ErrorKind::BrokenPipe).into()),
        }
    }
}

/// Passes what the room's node sends on to the client, until it closes. A client that reads
/// nothing for [`WRITE_STALL`] ends the relay.
async fn pump(mut up: OwnedReadHalf, out: mpsc::Sender<Outgoing>) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = up.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_STALL, out.send(Outgoing::Relayed(buf[..n].to_vec())))
            .await
        {
            Ok(Ok(())) => {}
            _ => return Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Datagrams are split off one receive block: each is where the socket put it, the next
    /// right after it, and nothing is copied on the way to the bridge.
    #[tokio::test]
    async fn datagrams_are_received_in_place() {
        use super::{RecvBuffer, MAX_DATAGRAM, RECV_BLOCK};
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let mut buf = RecvBuffer::default();
        let mut got = Vec::new();
        let count = RECV_BLOCK / 1200;
        for n in 0..count {
            tx.send_to(&vec![n as u8; 1200], to).await.unwrap();
            let (len, _) = rx.recv_buf_from(buf.room()).await.unwrap();
            assert_eq!(len, 1200);
            got.push(buf.take());
        }
        for (n, d) in got.iter().enumerate() {
            assert!(d.len() == 1200 && d.iter().all(|&b| b == n as u8));
        }
        // A new block is started only when the last one has no room for a largest datagram.
        let contiguous = got
            .windows(2)
            .filter(|w| std::ptr::eq(w[0].as_ptr().wrapping_add(1200), w[1].as_ptr()))
            .count();
        assert_eq!(
            contiguous,
            count - 1 - (count * 1200) / (RECV_BLOCK - MAX_DATAGRAM)
        );
        // The largest datagram fits whole.
        let big = vec![7u8; 65_507];
        tx.send_to(&big, to).await.unwrap();
        rx.recv_buf_from(buf.room()).await.unwrap();
        assert_eq!(buf.take(), big);
    }

    #[test]
    fn logged_urls_lose_their_credentials() {
        assert_eq!(super::redacted("rtsp://h:1/r/c"), "rtsp://h:1/r/c");
        let r = super::redacted("rtsp://u:pw@h:1/r/c?token=abc.def.ghi");
        assert!(
            !r.contains("pw") && !r.contains("abc") && r.contains("h:1/r/c"),
            "{r}"
        );
        assert_eq!(super::redacted("*"), "*");
    }
}
