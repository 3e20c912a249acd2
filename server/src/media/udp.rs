//! The media plane's I/O shell: the one UDP socket, its own thread, and the loop that feeds the
//! [`Engine`] datagrams, commands and timeouts and sends what it produces.
//!
//! The socket is bound once (`--media`). With `recvmmsg`/GRO (via `quinn-udp`) a wake-up reads
//! a batch of datagrams, and the destination address of each (IP_PKTINFO) tells which of the
//! announced host candidates it came in on: `rtc` needs that exact address as the local side of
//! the candidate pair. What one engine pass produces leaves with as few system calls as possible
//! (`outbox.rs`): consecutive datagrams to one peer as one GSO send, and those sends for all peers
//! together with `sendmmsg`. Sends that the kernel refuses (buffer full) are dropped and counted:
//! a slow receiver loses its own packets and never stalls the loop for anyone else.
//!
//! The same loop serves the ICE-TCP listener and its connections ([`IceTcp`]): their frames go
//! to the engine like datagrams, and what the engine sends on a TCP path goes to that
//! connection's bounded queue.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::api::{
    Command, EngineConfig, ExternalEvent, MediaEvent, Output, OutputTrack, ParticipantKey,
    PlaybackEvent, RequestId, SubscriberView, TapId, Transport,
};
use super::engine::Engine;
use super::handle::{self, MediaHandle, Queues, Request};
use super::outbox::Outbox;
use super::tcp::{IceTcp, TcpIo};
use crate::metrics::Metrics;

const BATCH: usize = 16;
/// Commands taken off a queue per wake-up before the engine's output is sent: camera packets
/// arrive hundreds a second, and sending after each one would cost a system call per packet.
const COMMAND_BATCH: usize = 64;
const BUF_SIZE: usize = 64 * 1024;
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A running media plane.
pub struct MediaPlane {
    pub local_addr: SocketAddr,
    pub candidates: Vec<SocketAddr>,
    /// The ICE-TCP listener's address, if it is on.
    pub tcp_addr: Option<SocketAddr>,
    pub tcp_candidates: Vec<SocketAddr>,
    pub handle: MediaHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MediaPlane {
    /// Stops the media loop and waits up to `timeout` for its thread to finish.
    pub fn stop(mut self, timeout: Duration) {
        let _ = self.handle.send(Command::Shutdown);
        let Some(t) = self.thread.take() else { return };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = t.join();
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(timeout);
    }
}

/// The host candidates to announce for a socket bound to `bound`.
pub fn candidate_addresses(bound: SocketAddr, public_ips: &[IpAddr]) -> Vec<SocketAddr> {
    let port = bound.port();
    if !public_ips.is_empty() {
        return public_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let want_v4 = bound.is_ipv4();
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == want_v4)
        .filter(|ip| match ip {
            // Link-local IPv6 needs a scope id that candidates cannot carry.
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    // Reachable addresses first; loopback last (still needed for local use and tests).
    out.sort_by_key(|a| a.ip().is_loopback());
    out.dedup();
    if out.is_empty() {
        out.push(SocketAddr::new(
            if want_v4 {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            },
            port,
        ));
    }
    out
}

/// Where the ICE-TCP listener goes (`--media-tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpBind {
    /// The UDP socket's address and port number (the default).
    SameAsMedia,
    At(SocketAddr),
    Off,
}

/// Binds the ICE-TCP listener: at the UDP socket's port number by default; if that number is
/// taken on TCP and the media port was chosen by the system (`--media` port 0), any free one.
fn bind_tcp(
    tcp: TcpBind,
    media_bind: SocketAddr,
    udp_addr: SocketAddr,
) -> io::Result<Option<std::net::TcpListener>> {
    let addr = match tcp {
        TcpBind::Off => return Ok(None),
        TcpBind::At(a) => a,
        TcpBind::SameAsMedia => SocketAddr::new(media_bind.ip(), udp_addr.port()),
    };
    let bound = std::net::TcpListener::bind(addr).or_else(|e| {
        if tcp == TcpBind::SameAsMedia && media_bind.port() == 0 {
            std::net::TcpListener::bind(SocketAddr::new(media_bind.ip(), 0))
        } else {
            Err(e)
        }
    });
    bound.map(Some).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the ICE-TCP port tcp {addr}: {e} (choose another with --media-tcp, or --media-tcp off)"),
        )
    })
}

/// Binds the media socket (and the ICE-TCP listener) and starts the media thread.
pub fn start(
    bind: SocketAddr,
    tcp: TcpBind,
    public_ips: &[IpAddr],
    metrics: Arc<Metrics>,
) -> io::Result<MediaPlane> {
    let socket = StdUdpSocket::bind(bind).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the media port udp {bind}: {e} (choose another with --media)"),
        )
    })?;
    socket.set_nonblocking(true)?;
    let sref = socket2::SockRef::from(&socket);
    let _ = sref.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sref.set_send_buffer_size(SOCKET_BUFFER);
    let local_addr = socket.local_addr()?;
    let candidates = candidate_addresses(local_addr, public_ips);
    let tcp_listener = bind_tcp(tcp, bind, local_addr)?;
    let tcp_addr = match &tcp_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let tcp_candidates = tcp_addr
        .map(|a| candidate_addresses(a, public_ips))
        .unwrap_or_default();
    // Whether candidates are the socket's own addresses (then replies leave from the address
    // the request arrived at) or NAT-mapped public ones (then the kernel picks the source).
    let own_addresses = public_ips.is_empty();
    let (handle, queues) = handle::channel();
    let cands = candidates.clone();
    let tcp_cands = tcp_candidates.clone();
    let thread = std::thread::Builder::new()
        .name("confab-media".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "media thread could not start its runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let candidates = EngineConfig {
                    candidates: cands,
                    tcp_candidates: tcp_cands,
                    seed: rand::random(),
                };
                if let Err(e) = run(
                    socket,
                    candidates,
                    tcp_listener,
                    own_addresses,
                    queues,
                    metrics,
                )
                .await
                {
                    tracing::error!(error = %e, "media loop ended with an error");
                }
            });
        })?;
    Ok(MediaPlane {
        local_addr,
        candidates,
        tcp_addr,
        tcp_candidates,
        handle,
        thread: Some(thread),
    })
}

/// Which announced candidate a datagram addressed to `dst` arrived on.
pub(super) fn local_candidate(
    candidates: &[SocketAddr],
    dst: Option<IpAddr>,
    port: u16,
) -> SocketAddr {
    if let Some(ip) = dst {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if let Some(c) = candidates.iter().find(|c| c.ip() == ip) {
            return *c;
        }
        if let Some(c) = candidates.iter().find(|c| c.is_ipv4() == ip.is_ipv4()) {
            return *c;
        }
    }
    candidates
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port))
}

/// Where the engine's outputs go: the shell's half of the core's ids.
#[derive(Default)]
struct Routes {
    events: HashMap<ParticipantKey, mpsc::UnboundedSender<MediaEvent>>,
    /// Cameras' sources (the bridge), by external participant.
    external: HashMap<ParticipantKey, mpsc::UnboundedSender<ExternalEvent>>,
    taps: HashMap<TapId, mpsc::Sender<PlaybackEvent>>,
    describes: HashMap<RequestId, oneshot::Sender<Option<Vec<OutputTrack>>>>,
    subscriptions: HashMap<RequestId, oneshot::Sender<Vec<SubscriberView>>>,
    next_request: u64,
    /// Players whose queue was full during this pass: the rest of the pass's packets for them
    /// are dropped (they restart at a keyframe).
    lagged: HashSet<TapId>,
}

impl Routes {
    /// Turns a request into a command for the core, keeping where its outputs go.
    fn command(&mut self, request: Request) -> Command {
        match request {
            Request::Command(cmd) => {
                match &cmd {
                    Command::Leave { key } => {
                        self.events.remove(key);
                        self.external.remove(key);
                    }
                    Command::Untap { tap } => {
                        self.taps.remove(tap);
                    }
                    _ => {}
                }
                cmd
            }
            Request::Join {
                key,
                room,
                id,
                events,
            } => {
                self.events.insert(key, events);
                Command::Join { key, room, id }
            }
            Request::ExternalJoin {
                key,
                room,
                id,
                events,
            } => {
                self.external.insert(key, events);
                Command::ExternalJoin { key, room, id }
            }
            Request::Describe { room, id, reply } => {
                self.next_request += 1;
                let request = RequestId(self.next_request);
                self.describes.insert(request, reply);
                Command::Describe { request, room, id }
            }
            Request::Subscriptions { room, reply } => {
                self.next_request += 1;
                let request = RequestId(self.next_request);
                self.subscriptions.insert(request, reply);
                Command::Subscriptions { request, room }
            }
            Request::Tap {
                tap,
                room,
                id,
                tracks,
                tx,
            } => {
                self.taps.insert(tap, tx);
                Command::Tap {
                    tap,
                    room,
                    id,
                    tracks,
                }
            }
        }
    }
}

/// Polls the engine until it has nothing more to do, handing its outputs to the outbox and the
/// channels; returns when it next wants [`Engine::handle_timeout`].
fn drive(
    engine: &mut Engine,
    routes: &mut Routes,
    outbox: &mut Outbox,
    tcp: &mut Option<IceTcp>,
    own_addresses: bool,
    metrics: &Metrics,
) -> Instant {
    routes.lagged.clear();
    loop {
        match engine.poll_output() {
            Output::Transmit(t) if t.transport == Transport::Tcp => {
                let path = t.path();
                match tcp {
                    Some(tcp) => tcp.send(engine, path, t.contents),
                    None => {
                        metrics.dropped_sends.fetch_add(1, Relaxed);
                    }
                }
            }
            Output::Transmit(t) => {
                outbox.push(
                    t.contents,
                    t.destination,
                    own_addresses.then_some(t.source.ip()),
                );
            }
            Output::Close(path) => {
                if let Some(tcp) = tcp {
                    tcp.close(engine, Instant::now(), path);
                }
            }
            Output::Event(key, ev) => {
                if let Some(tx) = routes.events.get(&key) {
                    if tx.send(ev).is_err() {
                        routes.events.remove(&key);
                    }
                }
            }
            Output::External(key, ev) => {
                if let Some(tx) = routes.external.get(&key) {
                    if tx.send(ev).is_err() {
                        routes.external.remove(&key);
                    }
                }
            }
            Output::Playback(tap, ev) => {
                if routes.lagged.contains(&tap) {
                    metrics.dropped_sends.fetch_add(1, Relaxed);
                    continue;
                }
                let Some(tx) = routes.taps.get(&tap) else {
                    continue;
                };
                match tx.try_send(ev) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics.dropped_sends.fetch_add(1, Relaxed);
                        routes.lagged.insert(tap);
                        engine.handle_command(Instant::now(), Command::TapLagged { tap });
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        routes.taps.remove(&tap);
                        engine.handle_command(Instant::now(), Command::Untap { tap });
                    }
                }
            }
            Output::Replay(tap, group) => {
                let Some(tx) = routes.taps.get(&tap) else {
                    continue;
                };
                // Half a group would show a broken picture: all of it, or none.
                if routes.lagged.contains(&tap) || tx.capacity() < group.len() + 64 {
                    if routes.lagged.insert(tap) {
                        engine.handle_command(Instant::now(), Command::TapLagged { tap });
                    }
                    continue;
                }
                let sent = group.into_iter().all(|ev| tx.try_send(ev).is_ok());
                if !sent {
                    routes.lagged.insert(tap);
                    engine.handle_command(Instant::now(), Command::TapLagged { tap });
                }
            }
            Output::TapEnded(tap) => {
                routes.taps.remove(&tap);
            }
            Output::Described(request, tracks) => {
                if let Some(reply) = routes.describes.remove(&request) {
                    let _ = reply.send(tracks);
                }
            }
            Output::Subscriptions(request, view) => {
                if let Some(reply) = routes.subscriptions.remove(&request) {
                    let _ = reply.send(view);
                }
            }
            Output::Timeout(at) => return at,
        }
    }
}

async fn run(
    socket: StdUdpSocket,
    config: EngineConfig,
    tcp_listener: Option<std::net::TcpListener>,
    own_addresses: bool,
    queues: Queues,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    let Queues {
        mut control,
        mut data,
    } = queues;
    let state = UdpSocketState::new((&socket).into())?;
    let socket = UdpSocket::from_std(socket)?;
    let port = socket.local_addr()?.port();
    let candidates = config.candidates.clone();
    // The listener and the connections' reports are waited on apart from the connections.
    let (mut tcp, tcp_accept, mut tcp_inbound) = match tcp_listener {
        Some(l) => {
            let (t, TcpIo { listener, inbound }) =
                IceTcp::new(l, config.tcp_candidates.clone(), metrics.clone())?;
            (Some(t), Some(listener), Some(inbound))
        }
        None => (None, None, None),
    };
    let mut engine = Engine::new(config, metrics.clone());
    let mut routes = Routes::default();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_SIZE]).collect();
    let mut metas = [RecvMeta::default(); BATCH];
    let mut data_open = true;
    let mut stopping = false;

    let mut outbox = Outbox::new(state.max_gso_segments(), socket.local_addr()?.is_ipv4());
    loop {
        let deadline = drive(
            &mut engine,
            &mut routes,
            &mut outbox,
            &mut tcp,
            own_addresses,
            &metrics,
        );
        outbox.flush(&state, &socket, &metrics);
        if let Some(tcp) = tcp.as_mut() {
            tcp.poll_drained(&mut engine, Instant::now());
        }
        if stopping {
            // The connections' close alerts are out; the socket can go.
            break;
        }
        tokio::select! {
            biased;
            request = control.recv() => {
                let now = Instant::now();
                let mut next = request;
                for _ in 0..COMMAND_BATCH {
                    let Some(request) = next else {
                        // Every handle is gone: nobody can use the media plane any more.
                        stopping = true;
                        engine.handle_command(now, Command::Shutdown);
                        break;
                    };
                    // Camera data queued before this command was sent is applied first: a
                    // camera's new tracks must not overtake packets of its old ones.
                    for _ in 0..handle::DATA_QUEUE {
                        let Ok(cmd) = data.try_recv() else {
                            break;
                        };
                        engine.handle_command(now, cmd);
                    }
                    let cmd = routes.command(request);
                    stopping |= matches!(cmd, Command::Shutdown);
                    engine.handle_command(now, cmd);
                    if stopping {
                        break;
                    }
                    next = match control.try_recv() {
                        Ok(r) => Some(r),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                }
            },
            cmd = data.recv(), if data_open => {
                let now = Instant::now();
                let mut next = cmd;
                for _ in 0..COMMAND_BATCH {
                    let Some(cmd) = next else {
                        data_open = false;
                        break;
                    };
                    engine.handle_command(now, cmd);
                    next = match data.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => break,
                    };
                }
            },
            ready = socket.readable() => {
                ready?;
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(&mut b[..])).collect();
                match socket.try_io(Interest::READABLE, || {
                    state.recv((&socket).into(), &mut iovs, &mut metas)
                }) {
                    Ok(n) => {
                        let now = Instant::now();
                        for (meta, buf) in metas.iter().zip(iovs.iter()).take(n) {
                            let local = local_candidate(&candidates, meta.dst_ip, port);
                            let stride = meta.stride.max(1);
                            for d in buf[..meta.len].chunks(stride) {
                                engine.handle_datagram(now, local, meta.addr, d);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // ICMP errors (port unreachable from a vanished peer) surface here on some
                    // systems; they concern one peer, never the loop.
                    Err(e) => tracing::debug!(error = %e, "media recv error"),
                }
            },
            accepted = async {
                match tcp_accept.as_ref() {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                match accepted {
                    Ok((stream, remote)) => {
                        if let Some(t) = tcp.as_mut() {
                            t.accepted(stream, remote);
                        }
                    }
                    // Out of file descriptors and the like: concerns one connection attempt.
                    Err(e) => tracing::debug!(error = %e, "ICE-TCP accept failed"),
                }
            },
            msg = async {
                match tcp_inbound.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                if let (Some(t), Some(r), Some(msg)) = (tcp.as_mut(), tcp_inbound.as_mut(), msg) {
                    t.inbound(&mut engine, now, msg);
                    for _ in 0..COMMAND_BATCH {
                        let Ok(msg) = r.try_recv() else { break };
                        t.inbound(&mut engine, now, msg);
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
    }
    tracing::info!("media plane stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_for_bound_and_public_addresses() {
        let c = candidate_addresses("127.0.0.1:7000".parse().unwrap(), &[]);
        assert_eq!(c, vec!["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]);
        let c = candidate_addresses(
            "0.0.0.0:7000".parse().unwrap(),
            &["203.0.113.5".parse().unwrap()],
        );
        assert_eq!(c, vec!["203.0.113.5:7000".parse::<SocketAddr>().unwrap()]);
        let c = candidate_addresses("0.0.0.0:7000".parse().unwrap(), &[]);
        assert!(c.iter().any(|a| a.ip().is_loopback()), "{c:?}");
        assert!(c.iter().all(|a| a.is_ipv4() && a.port() == 7000));
        assert!(c.last().unwrap().ip().is_loopback(), "loopback sorts last");
    }

    #[test]
    fn local_candidate_by_destination() {
        let cands: Vec<SocketAddr> = vec![
            "192.0.2.10:7000".parse().unwrap(),
            "127.0.0.1:7000".parse().unwrap(),
        ];
        assert_eq!(
            local_candidate(&cands, Some("127.0.0.1".parse().unwrap()), 7000),
            cands[1]
        );
        assert_eq!(
            local_candidate(&cands, Some("::ffff:192.0.2.10".parse().unwrap()), 7000),
            cands[0]
        );
        // NAT 1:1: arrives at a private address, the announced public one is the local side.
        assert_eq!(
            local_candidate(&cands[..1], Some("10.1.2.3".parse().unwrap()), 7000),
            cands[0]
        );
        assert_eq!(local_candidate(&cands, None, 7000), cands[0]);
    }
}
