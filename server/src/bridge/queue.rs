//! The media engine's data queue, as the bridge feeds it: every camera's `ExternalRtp` and
//! `ExternalSenderReport` go through one bounded queue (`MediaHandle::data`), apart from
//! control commands (joins, tracks, leaving), which never wait.
//!
//! Bounded, because an engine that falls behind must slow the cameras down or shed their
//! packets, not collect them in memory. What a producer does when the queue is full depends
//! on what is behind it ([`Backpressure`]):
//!
//! - A camera on TCP (RTSP interleaved, a pulled camera on TCP) waits for room: its task stops
//!   reading the connection, and the backlog waits in the camera's TCP window instead of here.
//!   It waits at most [`DATA_STALL`] per batch, so a camera whose packets cannot get in is cut
//!   off from the queue rather than left waiting; waiting holds no place in the queue, and
//!   tokio hands out room to waiters in turn, so a camera with a big burst does not keep the
//!   others out.
//! - A camera on UDP has nothing to slow down: what does not fit at once is dropped.
//! - The MJPEG encoder thread blocks ([`DataQueue::blocking_send`]), which stops only that
//!   thread; JPEG frames then pile up in front of it and are dropped there, before encoding,
//!   where a lost frame breaks nothing.
//!
//! Whatever is dropped is counted (`confab_camera_dropped_packets_total`), and the rest of
//! that track's batch goes with it: a picture with a hole is worse than none, so a video track
//! restarts at its next keyframe (the pipelines' `restart`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::media::api::Command;
use crate::metrics::Metrics;

/// Longest a camera's batch may wait for room in the queue. Longer than the engine takes for
/// a burst (a keyframe of a few hundred packets), short against a camera's keyframe interval:
/// a camera that waited this long is better off restarting at its next keyframe than sending
/// pictures that are late already.
pub const DATA_STALL: Duration = Duration::from_millis(500);

/// How a producer meets a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for room, up to [`DATA_STALL`] (TCP: the camera's reading slows down).
    Wait,
    /// Drop what does not fit at once (UDP: nothing upstream to slow).
    Drop,
}

/// Why a command did not get into the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No room (in time): the command was dropped.
    Full,
    /// The engine is gone (the server is stopping); nothing will get in any more.
    Closed,
}

/// The sending side of the data queue, cloned into every camera's feed.
#[derive(Clone)]
pub struct DataQueue {
    tx: mpsc::Sender<Command>,
    /// Where dropped packets are counted (`confab_camera_dropped_packets_total`).
    metrics: Arc<Metrics>,
}

impl DataQueue {
    /// The bridge's side of the engine's bounded data queue
    /// ([`MediaHandle::data`](crate::media::MediaHandle::data), [`crate::media::DATA_QUEUE`]
    /// entries), counting what it drops in `metrics`.
    pub fn new(tx: mpsc::Sender<Command>, metrics: Arc<Metrics>) -> Self {
        DataQueue { tx, metrics }
    }

    /// Sends `command`, waiting for room until `deadline` ([`Backpressure::Wait`]) or not at
    /// all ([`Backpressure::Drop`]). A refused command is dropped.
    pub async fn send(
        &self,
        command: Command,
        how: Backpressure,
        deadline: tokio::time::Instant,
    ) -> Result<(), Refused> {
        match how {
            // `timeout_at` tries the send before looking at the clock, so once the deadline
            // has passed this is a `try_send`.
            Backpressure::Wait => {
                match tokio::time::timeout_at(deadline, self.tx.send(command)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(Refused::Closed),
                    Err(_) => Err(Refused::Full),
                }
            }
            Backpressure::Drop => self.tx.try_send(command).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }),
        }
    }

    /// Sends `command` from an OS thread, blocking it until there is room. Never call this on
    /// a tokio worker thread (tokio panics): async producers use [`send`](Self::send).
    pub fn blocking_send(&self, command: Command) -> Result<(), Refused> {
        self.tx.blocking_send(command).map_err(|_| Refused::Closed)
    }

    /// Counts `n` dropped packets.
    pub fn dropped(&self, n: usize) {
        self.metrics
            .camera_dropped_packets
            .fetch_add(n as u64, Relaxed);
    }
}
