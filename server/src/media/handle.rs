//! The media plane's front door: how the rest of the server hands the media thread its work.
//!
//! Two queues lead to the thread. Control (joins, SDP, candidates, taps: a few messages per
//! participant) is unbounded, because dropping any of it would break a session. Camera data
//! (`ExternalRtp`, `ExternalSenderReport`: hundreds of packets a second per camera) goes in a
//! bounded queue of [`DATA_QUEUE`] entries, so a media thread that falls behind slows the
//! cameras' producers down (or makes them drop, for sources that cannot wait) instead of
//! growing memory without limit. The thread drains both in batches.
//!
//! Order between the two: the shell applies every data command already queued before it
//! applies a control command, so what a producer sent as data before a control command (a
//! camera's packets before its new set of tracks) reaches the core first.
//!
//! The core itself holds no channels: the shell keeps, per participant and per player, where
//! their outputs go, and answers `describe` through a request id.

use tokio::sync::{mpsc, oneshot};

use super::api::{
    Command, ExternalEvent, MediaEvent, OutputTrack, ParticipantKey, PlaybackEvent, SubscriberView,
    TapId, TrackKey,
};
use crate::names::{ParticipantId, RoomName};

/// Camera packets waiting for the media thread at most, over all cameras.
pub const DATA_QUEUE: usize = 4096;

/// What the shell receives on its control queue: a command for the core, or a command plus
/// where its outputs go.
#[derive(Debug)]
pub(crate) enum Request {
    Command(Command),
    Join {
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
        events: mpsc::UnboundedSender<MediaEvent>,
    },
    ExternalJoin {
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
        events: mpsc::UnboundedSender<ExternalEvent>,
    },
    Describe {
        room: RoomName,
        id: ParticipantId,
        reply: oneshot::Sender<Option<Vec<OutputTrack>>>,
    },
    Subscriptions {
        room: RoomName,
        reply: oneshot::Sender<Vec<SubscriberView>>,
    },
    Tap {
        tap: TapId,
        room: RoomName,
        id: ParticipantId,
        tracks: Vec<TrackKey>,
        tx: mpsc::Sender<PlaybackEvent>,
    },
}

/// The media plane has stopped (the server is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the media plane has stopped (the server is shutting down)")]
pub struct Stopped;

/// A cloneable handle to the media thread.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    control: mpsc::UnboundedSender<Request>,
    data: mpsc::Sender<Command>,
}

/// The receiving ends, for the shell.
pub(crate) struct Queues {
    pub control: mpsc::UnboundedReceiver<Request>,
    pub data: mpsc::Receiver<Command>,
}

/// A handle and the queues behind it.
pub(crate) fn channel() -> (MediaHandle, Queues) {
    let (control_tx, control) = mpsc::unbounded_channel();
    let (data_tx, data) = mpsc::channel(DATA_QUEUE);
    (
        MediaHandle {
            control: control_tx,
            data: data_tx,
        },
        Queues { control, data },
    )
}

impl MediaHandle {
    /// Sends a control command; false once the media plane has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        self.control.send(Request::Command(cmd)).is_ok()
    }

    /// Joins browser `key` to `room`; what the core tells its session arrives on `events`.
    pub fn join(
        &self,
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> bool {
        self.control
            .send(Request::Join {
                key,
                room,
                id,
                events,
            })
            .is_ok()
    }

    /// Joins external participant `key` (a camera) to `room`; what the core asks of its source
    /// arrives on `events`.
    pub fn external_join(
        &self,
        key: ParticipantKey,
        room: RoomName,
        id: ParticipantId,
        events: mpsc::UnboundedSender<ExternalEvent>,
    ) -> bool {
        self.control
            .send(Request::ExternalJoin {
                key,
                room,
                id,
                events,
            })
            .is_ok()
    }

    /// The tracks participant `id` of `room` publishes, as a player would receive them;
    /// `None` if nobody of that id is there.
    pub async fn describe(
        &self,
        room: RoomName,
        id: ParticipantId,
    ) -> Result<Option<Vec<OutputTrack>>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Request::Describe { room, id, reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// What each browser in `room` receives now (layers, estimates).
    pub async fn subscriptions(&self, room: RoomName) -> Result<Vec<SubscriberView>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Request::Subscriptions { room, reply })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Copies `tracks` of participant `id` into `tx` until every one of them is gone (then
    /// `tx` is dropped and the receiver ends) or [`Command::Untap`].
    pub fn tap(
        &self,
        tap: TapId,
        room: RoomName,
        id: ParticipantId,
        tracks: Vec<TrackKey>,
        tx: mpsc::Sender<PlaybackEvent>,
    ) -> Result<(), Stopped> {
        self.control
            .send(Request::Tap {
                tap,
                room,
                id,
                tracks,
                tx,
            })
            .map_err(|_| Stopped)
    }

    /// The bounded queue for camera data (`ExternalRtp`, `ExternalSenderReport`).
    pub fn data(&self) -> &mpsc::Sender<Command> {
        &self.data
    }
}
