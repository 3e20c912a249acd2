//! The media plane's I/O shell: the one UDP socket, its own thread, and the loop that feeds the
//! [`Engine`] datagrams, commands and timeouts and sends what it produces.
//!
//! The socket is bound once (`--media`). With `recvmmsg`/GRO (via `quinn-udp`) a wake-up reads
//! a batch of datagrams, and the destination address of each (IP_PKTINFO) tells which of the
//! announced host candidates it came in on: `rtc` needs that exact address as the local side of
//! the candidate pair. What one engine pass produces leaves with as few system calls as possible
//! ([`Outbox`]): consecutive datagrams to one peer as one GSO send, and those sends for all peers
//! together with `sendmmsg`. Sends that the kernel refuses (buffer full) are dropped and counted:
//! a slow receiver loses its own packets and never stalls the loop for anyone else.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::api::{
    Command, EngineConfig, MediaEvent, Output, OutputTrack, ParticipantKey, PlaybackEvent,
    RequestId, TapId,
};
use super::engine::Engine;
use super::handle::{self, MediaHandle, Queues, Request};
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
    let (handle, queues) = handle::channel();
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
                if let Err(e) = run(socket, cands, own_addresses, queues, metrics).await {
                    tracing::error!(error = %e, "media loop ended with an error");
                }
            });
        })?;
    Ok(MediaPlane {
        local_addr,
        candidates,
        handle,
        thread: Some(thread),
    })
}

/// Consecutive datagrams to one destination, sent with one syscall (UDP GSO): all but the
/// last are the same size. A subscriber's queue holds a whole frame's packets after a batch of
/// input, and the middle fragments of a frame are all MTU-sized, so video mostly batches. The
/// datagrams stay the buffers `rtc` produced, one I/O vector each: nothing is copied.
struct Batch {
    datagrams: Vec<BytesMut>,
    len: usize,
    destination: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
    segment: usize,
    /// Whether the last datagram was shorter than `segment` (then nothing more may follow).
    closed: bool,
    max_segments: usize,
    /// Emptied lists of sent runs, reused so that a run costs no allocation once warm.
    spare: Vec<Vec<BytesMut>>,
}

/// Emptied lists kept for reuse at most (one per destination of a busy pass).
const SPARE_LISTS: usize = 1024;

/// GSO sends are limited to 64 KiB in all.
const GSO_BYTES: usize = 65_000;

impl Batch {
    fn new(max_segments: usize) -> Self {
        Batch {
            datagrams: Vec::new(),
            len: 0,
            destination: None,
            src_ip: None,
            segment: 0,
            closed: false,
            max_segments: max_segments.max(1),
            spare: Vec::new(),
        }
    }

    /// Takes back the list of a sent run for the next one.
    fn recycle(&mut self, mut datagrams: Vec<BytesMut>) {
        if self.spare.len() < SPARE_LISTS {
            datagrams.clear();
            self.spare.push(datagrams);
        }
    }

    /// Adds `contents` if it can go in the same send, or hands it back if the batch must be
    /// taken first.
    fn append(
        &mut self,
        contents: BytesMut,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
    ) -> Result<(), BytesMut> {
        if self.destination.is_none() {
            self.segment = contents.len();
            self.destination = Some(destination);
            self.src_ip = src_ip;
            self.closed = false;
        } else {
            let fits = self.destination == Some(destination)
                && self.src_ip == src_ip
                && !self.closed
                && !contents.is_empty()
                && contents.len() <= self.segment
                && self.datagrams.len() < self.max_segments
                && self.len + contents.len() <= GSO_BYTES;
            if !fits {
                return Err(contents);
            }
            self.closed = contents.len() < self.segment;
        }
        self.len += contents.len();
        self.datagrams.push(contents);
        Ok(())
    }

    /// The batch as a finished [`Run`], if it holds anything.
    fn take(&mut self) -> Option<Run> {
        let destination = self.destination.take()?;
        let count = self.datagrams.len();
        self.len = 0;
        Some(Run {
            datagrams: std::mem::replace(&mut self.datagrams, self.spare.pop().unwrap_or_default()),
            destination,
            src_ip: self.src_ip,
            segment: (count > 1).then_some(self.segment),
        })
    }
}

/// One send: a datagram, or several to one destination split by the kernel (`segment`, GSO).
struct Run {
    datagrams: Vec<BytesMut>,
    destination: SocketAddr,
    src_ip: Option<IpAddr>,
    segment: Option<usize>,
}

impl Run {
    /// Runs that may share one `sendmmsg` call (its control messages are common to all).
    fn key(&self) -> (Option<IpAddr>, Option<usize>) {
        (self.src_ip, self.segment)
    }

    fn count(&self) -> usize {
        self.datagrams.len()
    }

    /// Sends the run with quinn-udp (which needs it in one buffer).
    fn send_alone(&self, state: &UdpSocketState, socket: &UdpSocket, metrics: &Metrics) {
        let joined;
        let contents: &[u8] = match &self.datagrams[..] {
            [one] => one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        let transmit = Transmit {
            destination: self.destination,
            ecn: None,
            contents,
            segment_size: self.segment,
            src_ip: self.src_ip,
        };
        metrics.send_calls.fetch_add(1, Relaxed);
        match state.try_send(socket.into(), &transmit) {
            Ok(()) => {
                metrics
                    .sent_datagrams
                    .fetch_add(self.count() as u64, Relaxed);
            }
            Err(e) => {
                dropped(metrics, self.count());
                tracing::trace!(destination = %self.destination, error = %e, "send dropped");
            }
        }
    }
}

fn dropped(metrics: &Metrics, n: usize) {
    metrics.dropped_sends.fetch_add(n as u64, Relaxed);
}

/// Runs handed to one `sendmmsg` call at most.
const MMSG_MAX: usize = 256;

/// The runs of one engine pass, sent together: one `sendmmsg` call carries up to [`MMSG_MAX`]
/// runs of one [`Run::key`]; a destination's runs keep their order (a run waits for the next
/// call when an earlier one to the same destination did). Without `sendmmsg` (IPv6 sockets,
/// whose IPv4-mapped peers quinn-udp knows how to address) each run is its own `sendmsg`.
struct Outbox {
    batch: Batch,
    runs: Vec<Run>,
    rest: Vec<Run>,
    /// The runs of the `sendmmsg` calls being made.
    call: Vec<Run>,
    waiting: HashSet<SocketAddr>,
    /// Preallocated `sendmmsg` headers, per shape of control messages: [source address][GSO].
    headers: Option<[[MultiHeaders<SockaddrIn>; 2]; 2]>,
}

impl Outbox {
    fn new(max_segments: usize, ipv4_socket: bool) -> Self {
        let headers = ipv4_socket.then(|| {
            use nix::libc::in_pktinfo;
            // The control buffer must be exactly as long as the messages encoded into it.
            let shape = |space: Option<Vec<u8>>| MultiHeaders::preallocate(MMSG_MAX, space);
            [
                [shape(None), shape(Some(nix::cmsg_space!(u16)))],
                [
                    shape(Some(nix::cmsg_space!(in_pktinfo))),
                    shape(Some(nix::cmsg_space!(in_pktinfo, u16))),
                ],
            ]
        });
        Outbox {
            batch: Batch::new(max_segments),
            runs: Vec::new(),
            rest: Vec::new(),
            call: Vec::new(),
            waiting: HashSet::new(),
            headers,
        }
    }

    /// Queues a datagram: appended to the batch for its destination if it can join it.
    fn push(&mut self, contents: BytesMut, destination: SocketAddr, src_ip: Option<IpAddr>) {
        if let Err(contents) = self.batch.append(contents, destination, src_ip) {
            self.runs.extend(self.batch.take());
            let _ = self.batch.append(contents, destination, src_ip);
        }
    }

    /// Sends everything queued.
    fn flush(&mut self, state: &UdpSocketState, socket: &UdpSocket, metrics: &Metrics) {
        self.runs.extend(self.batch.take());
        let Some(headers) = &mut self.headers else {
            for run in self.runs.drain(..) {
                run.send_alone(state, socket, metrics);
                self.batch.recycle(run.datagrams);
            }
            return;
        };
        let fd = socket.as_raw_fd();
        while !self.runs.is_empty() {
            let key = self.runs[0].key();
            self.waiting.clear();
            for run in self.runs.drain(..) {
                if run.key() == key && !self.waiting.contains(&run.destination) {
                    self.call.push(run);
                } else {
                    self.waiting.insert(run.destination);
                    self.rest.push(run);
                }
            }
            for chunk in self.call.chunks(MMSG_MAX) {
                send_many(fd, headers, chunk, state, socket, metrics);
            }
            for run in self.call.drain(..) {
                self.batch.recycle(run.datagrams);
            }
            std::mem::swap(&mut self.runs, &mut self.rest);
        }
    }
}

/// Sends runs of one key with `sendmmsg`, as far as the kernel takes them.
fn send_many(
    fd: RawFd,
    headers: &mut [[MultiHeaders<SockaddrIn>; 2]; 2],
    runs: &[Run],
    state: &UdpSocketState,
    socket: &UdpSocket,
    metrics: &Metrics,
) {
    let Some(first) = runs.first() else { return };
    let one_by_one = || {
        for run in runs {
            run.send_alone(state, socket, metrics);
        }
    };
    let addrs: Option<Vec<Option<SockaddrIn>>> = runs
        .iter()
        .map(|r| match r.destination {
            SocketAddr::V4(a) => Some(Some(SockaddrIn::from(a))),
            SocketAddr::V6(_) => None,
        })
        .collect();
    let (Some(addrs), Ok(segment)) = (addrs, u16::try_from(first.segment.unwrap_or(0))) else {
        return one_by_one();
    };
    let pktinfo = match first.src_ip {
        Some(IpAddr::V4(ip)) => Some(in_pktinfo(ip)),
        Some(IpAddr::V6(_)) => return one_by_one(),
        None => None,
    };
    let mut cmsgs = Vec::with_capacity(2);
    if let Some(info) = &pktinfo {
        cmsgs.push(ControlMessage::Ipv4PacketInfo(info));
    }
    if first.segment.is_some() {
        cmsgs.push(ControlMessage::UdpGsoSegments(&segment));
    }
    let headers =
        &mut headers[usize::from(pktinfo.is_some())][usize::from(first.segment.is_some())];
    // One I/O vector per datagram; a run's vectors are one message.
    let vectors: Vec<IoSlice<'_>> = runs
        .iter()
        .flat_map(|r| r.datagrams.iter().map(|d| IoSlice::new(d)))
        .collect();
    let mut messages: Vec<&[IoSlice<'_>]> = Vec::with_capacity(runs.len());
    let mut at = 0;
    for run in runs {
        messages.push(&vectors[at..at + run.count()]);
        at += run.count();
    }
    let mut start = 0;
    while start < runs.len() {
        metrics.send_calls.fetch_add(1, Relaxed);
        match sendmmsg(
            fd,
            headers,
            &messages[start..],
            &addrs[start..],
            &cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(sent) => {
                // nix reports how many messages went by iterating over them.
                let n = sent.count();
                let datagrams: usize = runs[start..start + n].iter().map(Run::count).sum();
                metrics.sent_datagrams.fetch_add(datagrams as u64, Relaxed);
                start += n;
                // The kernel stopped at a run it refused; it is dropped, the rest tried again.
                if let Some(run) = runs.get(start) {
                    dropped(metrics, run.count());
                    start += 1;
                }
            }
            Err(Errno::EAGAIN) => {
                dropped(metrics, runs[start..].iter().map(Run::count).sum());
                return;
            }
            // GSO refused (EIO without checksum offload) or anything unexpected: quinn-udp
            // sends them one by one and knows how to fall back.
            Err(e) => {
                tracing::trace!(error = %e, "sendmmsg failed; sending one by one");
                for run in &runs[start..] {
                    run.send_alone(state, socket, metrics);
                }
                return;
            }
        }
    }
}

fn in_pktinfo(ip: Ipv4Addr) -> nix::libc::in_pktinfo {
    nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
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

/// Where the engine's outputs go: the shell's half of the core's ids.
#[derive(Default)]
struct Routes {
    events: HashMap<ParticipantKey, mpsc::UnboundedSender<MediaEvent>>,
    taps: HashMap<TapId, mpsc::Sender<PlaybackEvent>>,
    describes: HashMap<RequestId, oneshot::Sender<Option<Vec<OutputTrack>>>>,
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
            Request::Describe { room, id, reply } => {
                self.next_request += 1;
                let request = RequestId(self.next_request);
                self.describes.insert(request, reply);
                Command::Describe { request, room, id }
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
    own_addresses: bool,
    metrics: &Metrics,
) -> Instant {
    routes.lagged.clear();
    loop {
        match engine.poll_output() {
            Output::Transmit(t) => {
                outbox.push(
                    t.contents,
                    t.destination,
                    own_addresses.then_some(t.source.ip()),
                );
            }
            Output::Event(key, ev) => {
                if let Some(tx) = routes.events.get(&key) {
                    if tx.send(ev).is_err() {
                        routes.events.remove(&key);
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
            Output::Timeout(at) => return at,
        }
    }
}

async fn run(
    socket: StdUdpSocket,
    candidates: Vec<SocketAddr>,
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
    let config = EngineConfig {
        candidates: candidates.clone(),
        seed: rand::random(),
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
            own_addresses,
            &metrics,
        );
        outbox.flush(&state, &socket, &metrics);
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
        let d = |fill: u8, len: usize| BytesMut::from(&vec![fill; len][..]);
        let mut batch = Batch::new(3);
        assert!(batch.append(d(1, 100), a, None).is_ok(), "the first");
        assert!(
            batch.append(d(2, 100), a, None).is_ok(),
            "same size, same peer"
        );
        assert!(batch.append(d(3, 100), b, None).is_err(), "another peer");
        assert!(
            batch.append(d(3, 120), a, None).is_err(),
            "larger than the segment"
        );
        assert!(
            batch.append(d(3, 40), a, None).is_ok(),
            "a shorter last one"
        );
        assert!(
            batch.append(d(4, 10), a, None).is_err(),
            "nothing after a short one"
        );
        let run = batch.take().unwrap();
        assert_eq!(run.segment, Some(100));
        assert_eq!(
            run.datagrams.concat(),
            [vec![1u8; 100], vec![2; 100], vec![3; 40]].concat()
        );
        assert!(batch.take().is_none(), "taken");
        let mut full = Batch::new(2);
        assert!(full.append(d(0, 10), a, None).is_ok());
        assert!(full.append(d(0, 10), a, None).is_ok());
        assert!(
            full.append(d(0, 10), a, None).is_err(),
            "the socket's segment limit"
        );
        let mut alone = Batch::new(8);
        assert!(alone.append(d(5, 10), b, None).is_ok());
        assert_eq!(
            alone.take().unwrap().segment,
            None,
            "one datagram is no GSO send"
        );
    }

    #[tokio::test]
    async fn outbox_sends_every_datagram_in_order_per_destination() {
        let std_socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        std_socket.set_nonblocking(true).unwrap();
        let state = UdpSocketState::new((&std_socket).into()).unwrap();
        let socket = UdpSocket::from_std(std_socket).unwrap();
        let receiver = || {
            let r = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            r
        };
        let (ra, rb) = (receiver(), receiver());
        let (a, b) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
        let here = Some(IpAddr::from([127, 0, 0, 1]));
        let metrics = Metrics::default();
        let mut outbox = Outbox::new(state.max_gso_segments(), true);
        // Runs of four shapes (GSO or not, source address or not), interleaved across two
        // destinations: each shape goes in a sendmmsg call of its own, and a destination's later
        // run must not overtake its earlier one.
        let sends: [(SocketAddr, u8, usize, Option<IpAddr>); 6] = [
            (a, 1, 100, None),
            (a, 2, 100, None),
            (b, 3, 50, here),
            (a, 4, 60, here),
            (b, 5, 70, None),
            (a, 6, 80, None),
        ];
        for (to, fill, len, from) in sends {
            outbox.push(BytesMut::from(&vec![fill; len][..]), to, from);
        }
        outbox.flush(&state, &socket, &metrics);
        let received = |r: &StdUdpSocket, n: usize| {
            let mut buf = [0u8; 2048];
            (0..n)
                .map(|_| {
                    let len = r.recv(&mut buf).expect("every datagram arrives");
                    (buf[0], len)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(received(&ra, 4), vec![(1, 100), (2, 100), (4, 60), (6, 80)]);
        assert_eq!(received(&rb, 2), vec![(3, 50), (5, 70)]);
        assert_eq!(metrics.dropped_sends.load(Relaxed), 0);
        assert_eq!(metrics.sent_datagrams.load(Relaxed), 6);
        assert!(metrics.send_calls.load(Relaxed) <= 4, "one call per shape");
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
