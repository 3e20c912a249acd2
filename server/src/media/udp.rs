//! The media plane's I/O shell: the one UDP socket, its own thread, and the loop that feeds the
//! [`Engine`] datagrams, commands and timeouts and sends what it produces.
//!
//! The socket is bound once (`--media`). With `recvmmsg`/GRO (via `quinn-udp`) a wake-up reads
//! a batch of datagrams, and the destination address of each (IP_PKTINFO) tells which of the
//! announced host candidates it came in on: `rtc` needs that exact address as the local side of
//! the candidate pair. Sends that the kernel refuses (buffer full) are dropped and counted: a
//! slow receiver loses its own packets and never stalls the loop for anyone else.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::engine::{Command, Engine};
use crate::metrics::Metrics;

const BATCH: usize = 16;
const BUF_SIZE: usize = 64 * 1024;
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A running media plane.
pub struct MediaPlane {
    pub local_addr: SocketAddr,
    pub candidates: Vec<SocketAddr>,
    pub commands: mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MediaPlane {
    /// Stops the media loop and waits up to `timeout` for its thread to finish.
    pub fn stop(mut self, timeout: Duration) {
        let _ = self.commands.send(Command::Shutdown);
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

/// Binds the media socket and starts the media thread.
pub fn start(
    bind: SocketAddr,
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
    // Whether candidates are the socket's own addresses (then replies leave from the address
    // the request arrived at) or NAT-mapped public ones (then the kernel picks the source).
    let own_addresses = public_ips.is_empty();
    let (tx, rx) = mpsc::unbounded_channel();
    let cands = candidates.clone();
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
                if let Err(e) = run(socket, cands, own_addresses, rx, metrics).await {
                    tracing::error!(error = %e, "media loop ended with an error");
                }
            });
        })?;
    Ok(MediaPlane {
        local_addr,
        candidates,
        commands: tx,
        thread: Some(thread),
    })
}

/// Consecutive datagrams to one destination, sent with one syscall (UDP GSO): all but the
/// last are the same size. A subscriber's queue holds a whole frame's packets after a batch of
/// input, and the middle fragments of a frame are all MTU-sized, so video mostly batches.
struct Batch {
    buf: BytesMut,
    destination: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
    segment: usize,
    count: usize,
    /// Whether the last datagram was shorter than `segment` (then nothing more may follow).
    closed: bool,
    max_segments: usize,
}

/// GSO sends are limited to 64 KiB in all.
const GSO_BYTES: usize = 65_000;

impl Batch {
    fn new(max_segments: usize) -> Self {
        Batch {
            buf: BytesMut::new(),
            destination: None,
            src_ip: None,
            segment: 0,
            count: 0,
            closed: false,
            max_segments: max_segments.max(1),
        }
    }

    /// Starts a batch with `contents`, taken over as it is: a datagram that goes out alone
    /// (most audio, small frames) is never copied.
    fn start(&mut self, contents: BytesMut, destination: SocketAddr, src_ip: Option<IpAddr>) {
        self.segment = contents.len();
        self.buf = contents;
        self.destination = Some(destination);
        self.src_ip = src_ip;
        self.count = 1;
        self.closed = false;
    }

    /// Adds `contents` if it can go in the same send; false if the batch must be flushed first.
    fn append(&mut self, contents: &[u8], destination: SocketAddr, src_ip: Option<IpAddr>) -> bool {
        let fits = self.destination == Some(destination)
            && self.src_ip == src_ip
            && !self.closed
            && !contents.is_empty()
            && contents.len() <= self.segment
            && self.count < self.max_segments
            && self.buf.len() + contents.len() <= GSO_BYTES;
        if !fits {
            return false;
        }
        if self.buf.capacity() - self.buf.len() < contents.len() {
            self.buf.reserve(GSO_BYTES - self.buf.len());
        }
        self.buf.extend_from_slice(contents);
        self.count += 1;
        self.closed = contents.len() < self.segment;
        true
    }

    fn flush(&mut self, state: &UdpSocketState, socket: &UdpSocket, metrics: &Metrics) {
        let Some(destination) = self.destination.take() else {
            return;
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &self.buf,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: self.src_ip,
        };
        if let Err(e) = state.try_send(socket.into(), &transmit) {
            metrics
                .dropped_sends
                .fetch_add(self.count as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::trace!(%destination, error = %e, "send dropped");
        }
        self.count = 0;
    }
}

/// Which announced candidate a datagram addressed to `dst` arrived on.
fn local_candidate(candidates: &[SocketAddr], dst: Option<IpAddr>, port: u16) -> SocketAddr {
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

async fn run(
    socket: StdUdpSocket,
    candidates: Vec<SocketAddr>,
    own_addresses: bool,
    mut commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    let state = UdpSocketState::new((&socket).into())?;
    let socket = UdpSocket::from_std(socket)?;
    let port = socket.local_addr()?.port();
    let mut engine = Engine::new(candidates.clone(), metrics.clone());
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_SIZE]).collect();
    let mut metas = [RecvMeta::default(); BATCH];
    let far_future = Duration::from_secs(3600);

    let mut batch = Batch::new(state.max_gso_segments());
    loop {
        engine.drain_transmits(|contents, destination, source| {
            let src_ip = own_addresses.then_some(source.ip());
            if !batch.append(&contents, destination, src_ip) {
                batch.flush(&state, &socket, &metrics);
                batch.start(contents, destination, src_ip);
            }
        });
        batch.flush(&state, &socket, &metrics);
        let deadline = engine
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + far_future);
        tokio::select! {
            biased;
            cmd = commands.recv() => match cmd {
                Some(Command::Shutdown) | None => {
                    engine.handle_command(Instant::now(), Command::Shutdown);
                    // Let the connections' close alerts out before the socket goes.
                    engine.drain_transmits(|contents, destination, source| {
                        let transmit = Transmit {
                            destination,
                            ecn: None,
                            contents: &contents,
                            segment_size: None,
                            src_ip: own_addresses.then_some(source.ip()),
                        };
                        let _ = state.try_send((&socket).into(), &transmit);
                    });
                    break;
                }
                Some(cmd) => engine.handle_command(Instant::now(), cmd),
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
    fn batches_hold_equal_datagrams_to_one_peer_and_a_shorter_last_one() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut batch = Batch::new(3);
        batch.start(BytesMut::from(&[1u8; 100][..]), a, None);
        assert!(batch.append(&[2; 100], a, None), "same size, same peer");
        assert!(!batch.append(&[3; 100], b, None), "another peer");
        assert!(!batch.append(&[3; 120], a, None), "larger than the segment");
        assert!(batch.append(&[3; 40], a, None), "a shorter last one");
        assert_eq!(batch.count, 3);
        assert!(
            !batch.append(&[4; 10], a, None),
            "nothing after a short one"
        );
        assert_eq!(
            &batch.buf[..],
            &[[1u8; 100], [2; 100]].concat()[..]
                .iter()
                .chain(&[3u8; 40])
                .copied()
                .collect::<Vec<u8>>()[..]
        );
        let mut full = Batch::new(2);
        full.start(BytesMut::from(&[0u8; 10][..]), a, None);
        assert!(full.append(&[0; 10], a, None));
        assert!(
            !full.append(&[0; 10], a, None),
            "the socket's segment limit"
        );
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
