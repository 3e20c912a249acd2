//! The seam between the simulation and the engine: the only code that calls [`Engine`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::media::api::{Command, EngineConfig, Output, OutputTrack, RequestId, SubscriberView};
use crate::media::engine::Engine;
use crate::metrics::Metrics;
use crate::names::{ParticipantId, RoomName};

/// Inputs with `now`, and one [`poll_output`](Self::poll_output) for everything the engine
/// wants done.
pub struct EngineDriver {
    engine: Engine,
    metrics: Arc<Metrics>,
    /// Outputs taken from the engine while waiting for a describe answer, not handed out yet.
    held: VecDeque<Output>,
    /// When the engine next wants [`timeout`](Self::timeout), as its last `Output::Timeout`
    /// said.
    deadline: Option<Instant>,
    next_request: u64,
}

impl EngineDriver {
    /// An engine announcing `addr`, choosing its random numbers from `seed`.
    pub fn new(addr: SocketAddr, seed: u64) -> Self {
        let metrics = Arc::new(Metrics::default());
        let config = EngineConfig {
            candidates: vec![addr],
            seed,
            ..Default::default()
        };
        EngineDriver {
            engine: Engine::new(config, metrics.clone()),
            metrics,
            held: VecDeque::new(),
            deadline: None,
            next_request: 1,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn peer_count(&self) -> usize {
        self.engine.peer_count()
    }

    pub fn participant_count(&self) -> usize {
        self.engine.participant_count()
    }

    pub fn command(&mut self, now: Instant, cmd: Command) {
        self.engine.handle_command(now, cmd);
    }

    /// What each browser in `room` receives (`Command::Subscriptions`, answered at once).
    pub fn subscriptions(&mut self, now: Instant, room: RoomName) -> Vec<SubscriberView> {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.engine
            .handle_command(now, Command::Subscriptions { request, room });
        loop {
            match self.engine.poll_output() {
                Output::Subscriptions(r, view) if r == request => return view,
                Output::Timeout(t) => {
                    self.deadline = Some(t);
                    return Vec::new();
                }
                other => self.held.push_back(other),
            }
        }
    }

    /// The tracks a player of participant `id` would get (`Command::Describe`, answered at
    /// once).
    pub fn describe(
        &mut self,
        now: Instant,
        room: RoomName,
        id: ParticipantId,
    ) -> Option<Vec<OutputTrack>> {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.engine
            .handle_command(now, Command::Describe { request, room, id });
        loop {
            match self.engine.poll_output() {
                Output::Described(r, tracks) if r == request => return tracks,
                Output::Timeout(t) => {
                    self.deadline = Some(t);
                    return None;
                }
                other => self.held.push_back(other),
            }
        }
    }

    /// A datagram arrived at the engine's `local` address from `from`.
    pub fn datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.engine.handle_datagram(now, local, from, data);
    }

    pub fn timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
    }

    /// When the engine next wants [`timeout`](Self::timeout); valid once
    /// [`poll_output`](Self::poll_output) returned `None`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The next thing the engine wants done; `None` when it waits (for an input or its
    /// deadline).
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(o) = self.held.pop_front() {
            return Some(o);
        }
        match self.engine.poll_output() {
            Output::Timeout(t) => {
                self.deadline = Some(t);
                None
            }
            o => Some(o),
        }
    }
}
