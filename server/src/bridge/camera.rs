//! A camera in a room: its presence (what browsers see in the participant list, with its state)
//! and its registration with the media engine as an external participant. Pushed and pulled
//! cameras are the same thing here; only who feeds them differs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::marshal::Unmarshal;

use super::source::{Out, Pipeline, Plan, Sink};
use super::{BridgeError, Inner, InputTrack};
use crate::media::api::{Command, ExternalTrack, ParticipantKey};
use crate::media::engine::codec_name;
use crate::names::{DisplayName, ParticipantId, RoomName};
use crate::protocol::{MediaKind, ParticipantKind, TrackInfo};
use crate::room::JoinError;

/// A camera participant. Dropping it takes it out of the room.
pub struct Camera {
    inner: Arc<Inner>,
    key: ParticipantKey,
    room: RoomName,
    id: ParticipantId,
    /// Resolves if an operator takes the camera out of the room.
    removed: Option<tokio::sync::oneshot::Receiver<String>>,
}

impl Camera {
    pub(super) fn join(
        inner: Arc<Inner>,
        room: &RoomName,
        id: &str,
    ) -> Result<Camera, BridgeError> {
        let pid = ParticipantId::parse(id)
            .map_err(|e| BridgeError::Invalid(format!("{id:?} cannot be a camera name: {e}")))?;
        let name = DisplayName::parse(id)
            .map_err(|e| BridgeError::Invalid(format!("{id:?} cannot be a camera name: {e}")))?;
        // Nobody reads a camera's messages; a closed channel makes sends to it no-ops.
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let joined = inner
            .rooms
            .join_exact(room, &pid, &name, ParticipantKind::Camera, tx)
            .map_err(|e| match e {
                JoinError::Taken { .. } => BridgeError::Taken(e.to_string()),
                JoinError::Full { .. }
                | JoinError::Locked { .. }
                | JoinError::TooManyRooms { .. } => BridgeError::Unavailable(e.to_string()),
            })?;
        let _ = inner.media.send(Command::ExternalJoin {
            key: joined.key,
            room: room.clone(),
            id: pid.clone(),
        });
        tracing::info!(room = %room, camera = %pid, "camera joined");
        Ok(Camera {
            inner,
            key: joined.key,
            room: room.clone(),
            id: pid,
            removed: Some(joined.removed),
        })
    }

    /// Resolves with the reason once an operator has removed the camera; never otherwise.
    pub async fn removed(&mut self) -> String {
        if let Some(rx) = self.removed.as_mut() {
            if let Ok(reason) = rx.await {
                self.removed = None;
                return reason;
            }
            self.removed = None;
        }
        std::future::pending().await
    }

    pub fn id(&self) -> &ParticipantId {
        &self.id
    }

    /// Shows `state` (`live`, `connecting`, `retrying: why`, what is unsupported) in the room.
    pub fn set_state(&self, state: &str) {
        self.inner.rooms.update(&self.room, &self.id, |info| {
            info.state = Some(state.to_owned());
        });
    }

    /// Replaces the camera's tracks with what `tracks` can become, and returns the feed that
    /// turns their packets into the room's, with notes on what cannot be used.
    pub fn start_feed(&self, tracks: &[InputTrack], now: Instant) -> (Feed, Vec<String>) {
        let mut notes = Vec::new();
        let mut outputs = Vec::new();
        let mut infos = Vec::new();
        let mut slots = Vec::with_capacity(tracks.len());
        for t in tracks {
            let plan = Plan::for_track(t);
            let started = plan.and_then(|plan| {
                let index = outputs.len();
                let out = Out::new(Sink {
                    media: self.inner.media.clone(),
                    key: self.key,
                    index,
                });
                let pipeline = Pipeline::new(&plan, &out)?;
                let (kind, codec) = plan.output_codec();
                let letter = if kind == MediaKind::Audio { 'a' } else { 'v' };
                let serial = self
                    .inner
                    .next_track
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let public_id = format!("{}-{letter}{serial}", self.id);
                infos.push(TrackInfo {
                    id: public_id.clone(),
                    kind,
                    codec: codec_name(&codec.mime_type),
                });
                outputs.push(ExternalTrack {
                    public_id,
                    kind,
                    codec,
                });
                Ok((pipeline, out))
            });
            match started {
                Ok((pipeline, out)) => slots.push(Some(Slot {
                    pipeline,
                    out,
                    sender_report: false,
                })),
                Err(why) => {
                    tracing::info!(room = %self.room, camera = %self.id, track = %t.control, why, "camera track not bridged");
                    notes.push(why);
                    slots.push(None);
                }
            }
        }
        let audio = infos.iter().any(|t| t.kind == MediaKind::Audio);
        let video = infos.iter().any(|t| t.kind == MediaKind::Video);
        let _ = self.inner.media.send(Command::ExternalTracks {
            key: self.key,
            tracks: outputs,
        });
        self.inner.rooms.update(&self.room, &self.id, |info| {
            info.tracks = infos;
            info.audio = audio;
            info.video = video;
        });
        let feed = Feed {
            slots,
            clock: WallClock::new(now),
            notes: notes.clone(),
        };
        (feed, notes)
    }

    /// The camera has no media right now (its source is down and being retried).
    pub fn clear_tracks(&self) {
        let _ = self.inner.media.send(Command::ExternalTracks {
            key: self.key,
            tracks: Vec::new(),
        });
        self.inner.rooms.update(&self.room, &self.id, |info| {
            info.tracks.clear();
            info.audio = false;
            info.video = false;
        });
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.inner.media.send(Command::Leave { key: self.key });
        self.inner.rooms.leave(&self.room, &self.id, self.key);
        tracing::info!(room = %self.room, camera = %self.id, "camera left");
    }
}

struct Slot {
    pipeline: Pipeline,
    out: Out,
    /// Whether the camera's own sender reports have been seen (until then the bridge makes
    /// them from arrival times).
    sender_report: bool,
}

/// NTP time for an `Instant`, anchored once (RFC 3550 §4: seconds since 1900, 32.32).
struct WallClock {
    at: Instant,
    ntp: u64,
}

impl WallClock {
    fn new(now: Instant) -> Self {
        let since_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let since_1900 = since_unix + Duration::from_secs(2_208_988_800);
        WallClock {
            at: now,
            ntp: to_ntp(since_1900),
        }
    }

    fn ntp(&self, now: Instant) -> u64 {
        self.ntp
            .wrapping_add(to_ntp(now.saturating_duration_since(self.at)))
    }
}

fn to_ntp(d: Duration) -> u64 {
    (d.as_secs() << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// The pipelines of one RTSP session's tracks (indexed like the SDP's media sections).
pub struct Feed {
    slots: Vec<Option<Slot>>,
    clock: WallClock,
    notes: Vec<String>,
}

impl Feed {
    /// One RTP packet of track `track`. Returns a new note for the camera's state, if any.
    pub fn rtp(&mut self, track: usize, raw: &[u8], now: Instant) -> Option<String> {
        let slot = self.slots.get_mut(track)?.as_mut()?;
        let mut buf = raw;
        let pkt = match rtc::rtp::Packet::unmarshal(&mut buf) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "camera sent a malformed RTP packet");
                return None;
            }
        };
        if !slot.sender_report {
            // Until the camera reports its clock, take the arrival time: all tracks of one
            // camera arrive together, so they stay in sync with each other.
            if let Some(ts) = slot.pipeline.map_ts(pkt.header.timestamp) {
                slot.out.sender_report(self.clock.ntp(now), ts);
                slot.sender_report = true;
            }
        }
        let note = slot.pipeline.push(&pkt, &mut slot.out)?;
        self.notes.push(note.clone());
        Some(note)
    }

    /// One RTCP compound packet of track `track`: the camera's sender reports set the
    /// NTP↔RTP relation browsers use for lip sync.
    pub fn rtcp(&mut self, track: usize, raw: &[u8]) {
        let Some(slot) = self.slots.get_mut(track).and_then(Option::as_mut) else {
            return;
        };
        let mut buf = raw;
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) else {
            return;
        };
        for p in packets {
            if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                if let Some(ts) = slot.pipeline.map_ts(sr.rtp_time) {
                    slot.out.sender_report(sr.ntp_time, ts);
                    slot.sender_report = true;
                }
            }
        }
    }

    /// Everything noted so far (unsupported tracks, B-frames).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether any track is bridged.
    pub fn any(&self) -> bool {
        self.slots.iter().any(Option::is_some)
    }
}
