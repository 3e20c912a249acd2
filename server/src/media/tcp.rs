//! ICE-TCP on the media port (RFC 6544): the shell's TCP half, beside the UDP socket.
//!
//! The server announces passive TCP host candidates (`--media-tcp`, by default the media port's
//! number); a browser whose UDP is blocked connects and speaks ICE, DTLS and SRTP over the
//! connection, each datagram framed by a 16-bit length (RFC 4571 §2). Every frame goes to the
//! engine exactly like a UDP datagram, named by the connection's [`FiveTuple`]; the engine's
//! demultiplexer routes the connection by the ufrag of its first binding request, and a
//! connection whose first frame routes nowhere is closed at once.
//!
//! Framing is `tokio_util`'s `LengthDelimitedCodec` with a 2-byte length field, which is RFC
//! 4571's frame exactly: maintained, streaming (frames come out of the read buffer without a
//! copy) and bounded by construction (a 16-bit length cannot announce more than 64 KiB).
//! `rtc`'s own `shared::tcp_framing` does the same but copies every frame into a new `Vec` and
//! shifts its buffer per frame.
//!
//! Each connection is a task on the media thread's runtime with a bounded send queue of
//! [`QUEUE`] datagrams. The media loop never waits for a connection: it hands datagrams over
//! with `try_send`. When a queue holds more than [`HIGH_WATER`] datagrams (its reader is slower
//! than the media sent to it) the engine is told (`Command::Congested`) and pauses the
//! connection's video at the end of the current frame while audio and control go on; under
//! [`LOW_WATER`] the video resumes at a keyframe (see `super::congestion`). Should the queue
//! fill up entirely (a reader that stopped reading), further datagrams are dropped and counted.
//! So a connection holds at most [`QUEUE`] datagrams, its write buffer and its kernel socket
//! buffer, however slowly it reads, and never stalls anyone else.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::api::{Command, FiveTuple};
use super::engine::Engine;
use super::udp::local_candidate;
use crate::metrics::Metrics;

/// Datagrams a connection's send queue holds at most (a second of 3 Mbit/s video).
pub const QUEUE: usize = 512;
/// Queued datagrams past which the connection's video pauses (about 150 KB, 0.4 s at
/// 3 Mbit/s: a TCP reader this far behind adds that much delay to everything after).
pub const HIGH_WATER: usize = 128;
/// Queued datagrams under which paused video resumes.
pub const LOW_WATER: usize = 16;
/// ICE-TCP connections open at once at most; more are refused.
pub const MAX_CONNECTIONS: usize = 4096;
/// The kernel's send buffer per connection (Linux doubles it for its bookkeeping). Left to
/// autotuning it grows to megabytes, which for a slow path is seconds of video queued where
/// nobody can drop it; this holds about 0.3 s of 3 Mbit/s and still fills a 10 Mbit/s path at
/// 100 ms RTT. The backlog beyond it is in [`QUEUE`], where the engine sees it.
const SEND_BUFFER: usize = 64 * 1024;
/// A connection must send its first frame within this long.
const FIRST_FRAME: Duration = Duration::from_secs(10);
/// Bytes written to the socket per system call at most.
const WRITE_CHUNK: usize = 64 * 1024;
/// Frames from all connections waiting for the media loop.
const INBOUND: usize = 1024;

/// RFC 4571 framing: a 16-bit big-endian length, then the datagram.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(u16::MAX as usize)
        .new_codec()
}

/// What the connections' tasks tell the media loop.
pub(super) enum Inbound {
    Frame(FiveTuple, BytesMut),
    /// The connection ended by itself (the peer closed it, an error, no first frame in time).
    Closed(FiveTuple),
}

struct Conn {
    tx: mpsc::Sender<BytesMut>,
    task: JoinHandle<()>,
    /// Whether a frame of it was taken by a peer connection.
    routed: bool,
    congested: bool,
}

/// The ICE-TCP connections. The listener and the connections' reports ([`TcpIo`]) are kept
/// apart so that the media loop can wait on both while it holds this.
pub(super) struct IceTcp {
    candidates: Vec<SocketAddr>,
    conns: HashMap<FiveTuple, Conn>,
    inbound_tx: mpsc::Sender<Inbound>,
    /// Connections told to the engine as congested.
    congested: Vec<FiveTuple>,
    metrics: Arc<Metrics>,
}

/// What the media loop waits on: new connections, and the connections' reports.
pub(super) struct TcpIo {
    pub listener: TcpListener,
    pub inbound: mpsc::Receiver<Inbound>,
}

impl IceTcp {
    /// Must be called on the media thread's runtime.
    pub fn new(
        listener: std::net::TcpListener,
        candidates: Vec<SocketAddr>,
        metrics: Arc<Metrics>,
    ) -> io::Result<(IceTcp, TcpIo)> {
        listener.set_nonblocking(true)?;
        let (inbound_tx, inbound) = mpsc::channel(INBOUND);
        let io = TcpIo {
            listener: TcpListener::from_std(listener)?,
            inbound,
        };
        let tcp = IceTcp {
            candidates,
            conns: HashMap::new(),
            inbound_tx,
            congested: Vec::new(),
            metrics,
        };
        Ok((tcp, io))
    }

    /// Starts serving an accepted connection.
    pub fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(%remote, "ICE-TCP connection refused: {MAX_CONNECTIONS} are open");
            return;
        }
        let Ok(bound) = stream.local_addr() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let local = local_candidate(&self.candidates, Some(bound.ip()), bound.port());
        let path = FiveTuple::tcp(local, remote);
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(serve(stream, path, self.inbound_tx.clone(), rx));
        if let Some(old) = self.conns.insert(
            path,
            Conn {
                tx,
                task,
                routed: false,
                congested: false,
            },
        ) {
            old.task.abort();
        } else {
            self.metrics.ice_tcp_connections.fetch_add(1, Relaxed);
        }
        tracing::debug!(%path, "ICE-TCP connection accepted");
    }

    /// A task's report: a frame goes to the engine; a closed connection is forgotten.
    pub fn inbound(&mut self, engine: &mut Engine, now: Instant, msg: Inbound) {
        match msg {
            Inbound::Frame(path, frame) => {
                let Some(conn) = self.conns.get_mut(&path) else {
                    return;
                };
                let taken = engine.handle_input(now, path, &frame);
                if taken {
                    conn.routed = true;
                } else if !conn.routed {
                    // RFC 6544 connections carry ICE first: one whose first frame names none of
                    // our connections is not for us.
                    tracing::debug!(%path, "ICE-TCP connection refused: its first frame is no binding request for us");
                    self.close(engine, now, path);
                }
            }
            Inbound::Closed(path) => {
                if self.forget(path) {
                    engine.handle_command(now, Command::PathClosed(path));
                }
            }
        }
    }

    /// Queues a datagram for `path`; dropped (and counted) when there is no such connection
    /// or its queue is full.
    pub fn send(&mut self, engine: &mut Engine, path: FiveTuple, contents: BytesMut) {
        let Some(conn) = self.conns.get_mut(&path) else {
            self.metrics.dropped_sends.fetch_add(1, Relaxed);
            return;
        };
        if conn.tx.try_send(contents).is_err() {
            self.metrics.dropped_sends.fetch_add(1, Relaxed);
        } else {
            self.metrics.sent_datagrams.fetch_add(1, Relaxed);
        }
        let queued = QUEUE - conn.tx.capacity();
        if queued > HIGH_WATER && !conn.congested {
            conn.congested = true;
            self.congested.push(path);
            let now = Instant::now();
            engine.handle_command(
                now,
                Command::Congested {
                    path,
                    congested: true,
                },
            );
        }
    }

    /// Tells the engine which congested connections have drained.
    pub fn poll_drained(&mut self, engine: &mut Engine, now: Instant) {
        let conns = &mut self.conns;
        self.congested.retain(|path| {
            let Some(conn) = conns.get_mut(path) else {
                return false;
            };
            if QUEUE - conn.tx.capacity() >= LOW_WATER {
                return true;
            }
            conn.congested = false;
            engine.handle_command(
                now,
                Command::Congested {
                    path: *path,
                    congested: false,
                },
            );
            false
        });
    }

    /// Closes a connection the engine has no use for.
    pub fn close(&mut self, engine: &mut Engine, now: Instant, path: FiveTuple) {
        if self.forget(path) {
            engine.handle_command(now, Command::PathClosed(path));
        }
    }

    fn forget(&mut self, path: FiveTuple) -> bool {
        let Some(conn) = self.conns.remove(&path) else {
            return false;
        };
        conn.task.abort();
        self.metrics.ice_tcp_connections.fetch_sub(1, Relaxed);
        tracing::debug!(%path, "ICE-TCP connection closed");
        true
    }
}

impl Drop for IceTcp {
    fn drop(&mut self) {
        for (_, conn) in self.conns.drain() {
            conn.task.abort();
            self.metrics.ice_tcp_connections.fetch_sub(1, Relaxed);
        }
    }
}

/// One connection: frames in to the media loop, queued datagrams out, until either side ends.
async fn serve(
    stream: TcpStream,
    path: FiveTuple,
    inbound: mpsc::Sender<Inbound>,
    mut queue: mpsc::Receiver<BytesMut>,
) {
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, codec());
    let reader = async {
        let mut first = true;
        loop {
            let next = if first {
                match tokio::time::timeout(FIRST_FRAME, frames.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                }
            } else {
                frames.next().await
            };
            first = false;
            // A frame longer than what arrived before the peer hung up, or a read error.
            let Some(Ok(frame)) = next else { break };
            if inbound.send(Inbound::Frame(path, frame)).await.is_err() {
                break;
            }
        }
    };
    let writer = async {
        let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
        while let Some(first) = queue.recv().await {
            buf.clear();
            put_frame(&mut buf, &first);
            while buf.len() < WRITE_CHUNK {
                match queue.try_recv() {
                    Ok(d) => put_frame(&mut buf, &d),
                    Err(_) => break,
                }
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
    let _ = inbound.send(Inbound::Closed(path)).await;
}

/// Appends one datagram with its RFC 4571 length (datagrams never exceed 64 KiB: they come
/// from `rtc`, which sends what fits a UDP datagram).
pub fn put_frame(buf: &mut BytesMut, d: &[u8]) {
    let Ok(len) = u16::try_from(d.len()) else {
        return;
    };
    buf.put_u16(len);
    buf.put_slice(d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn frames_round_trip_however_the_stream_is_split() {
        let datagrams: Vec<Vec<u8>> = vec![vec![], vec![1], vec![7; 1200], vec![9; 65535]];
        let mut wire = BytesMut::new();
        for d in &datagrams {
            put_frame(&mut wire, d);
        }
        for step in [1, 2, 3, 1000, wire.len()] {
            let mut codec = codec();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    out.push(f.to_vec());
                }
            }
            assert_eq!(out, datagrams, "split every {step} bytes");
            assert!(buf.is_empty());
        }
        // Too long for a frame: not framed at all.
        let mut buf = BytesMut::new();
        put_frame(&mut buf, &vec![0; 65536]);
        assert!(buf.is_empty());
    }
}
