//! Sending what one engine pass produced with as few system calls as possible: consecutive
//! datagrams to one peer as one GSO send ([`Batch`]), and the sends for all peers together
//! with `sendmmsg` ([`Outbox`]), each from the announced address it must leave from. Sends the
//! kernel refuses (buffer full) are dropped and counted: a slow receiver loses its own packets
//! and never stalls the loop for anyone else.

use std::collections::HashSet;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};
use quinn_udp::{Transmit, UdpSocketState};
use tokio::net::UdpSocket;

use crate::metrics::Metrics;

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
pub(super) struct Outbox {
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
    pub(super) fn new(max_segments: usize, ipv4_socket: bool) -> Self {
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
    pub(super) fn push(
        &mut self,
        contents: BytesMut,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
    ) {
        if let Err(contents) = self.batch.append(contents, destination, src_ip) {
            self.runs.extend(self.batch.take());
            let _ = self.batch.append(contents, destination, src_ip);
        }
    }

    /// Sends everything queued.
    pub(super) fn flush(&mut self, state: &UdpSocketState, socket: &UdpSocket, metrics: &Metrics) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdpSocket;
    use std::time::Duration;

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
}
