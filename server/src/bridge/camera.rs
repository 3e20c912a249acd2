//! A camera in a room: its presence (what browsers see in the participant list, with its state)
//! and its registration with the media engine as an external participant. Pushed and pulled
//! cameras are the same thing here; only who feeds them differs.
//!
//! Control (joining, the track list, leaving) goes to the engine's command channel and never
//! waits. Media goes through the [`Feed`], which turns packets into a batch per track and
//! sends it into the engine's bounded data queue when its driver says ([`Feed::flush`]): the
//! pipelines themselves never wait, so no sync code blocks a tokio worker.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::marshal::Unmarshal;

use super::queue::{Backpressure, DataQueue, Refused, DATA_STALL};
use super::source::{Out, Pipeline, Plan};
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
        // What the engine asks of the camera (its low layers) comes back on `events`.
        let (events, asked) = tokio::sync::mpsc::unbounded_channel();
        let _ = inner
            .media
            .external_join(joined.key, room.clone(), pid.clone(), events);
        super::low_layer::serve_camera(&inner, room, &pid, asked);
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
                let out = Out::new(self.key, outputs.len());
                let pipeline = Pipeline::new(&plan, &out, &self.inner.data)?;
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
                Ok((pipeline, out)) => slots.push(Some(Slot::new(pipeline, out))),
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
            queue: self.inner.data.clone(),
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
    /// Whether a sender report has been queued for this track (until the camera sends its
    /// own, the bridge makes one from the first packet's arrival time).
    sender_report: bool,
    /// Whether the camera sends its own sender reports.
    camera_reports: bool,
}

impl Slot {
    fn new(pipeline: Pipeline, out: Out) -> Self {
        Slot {
            pipeline,
            out,
            sender_report: false,
            camera_reports: false,
        }
    }

    /// Some of the track's output was dropped (and the rest of its batch with it).
    fn dropped(&mut self) {
        self.pipeline.restart();
        // The made-up report may have been among it; a camera's own come again anyway.
        if !self.camera_reports {
            self.sender_report = false;
        }
    }
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
///
/// Feeding a packet only queues what it becomes; [`flush`](Self::flush) sends it into the
/// engine's data queue, so the caller decides how to meet a full queue (see [`super::queue`]).
pub struct Feed {
    slots: Vec<Option<Slot>>,
    clock: WallClock,
    notes: Vec<String>,
    queue: DataQueue,
}

impl Feed {
    /// One RTP packet of track `track`, as received. Returns a new note for the camera's state,
    /// if any.
    ///
    /// The packet is parsed in place: its payload stays a slice of `raw`, so what passes
    /// through unchanged (single NAL units, Opus, G.711) reaches the engine without a copy.
    pub fn rtp(&mut self, track: usize, mut raw: Bytes, now: Instant) -> Option<String> {
        // `Bytes` as the `Buf` makes `unmarshal` split the payload off, not copy it.
        let pkt = match rtc::rtp::Packet::unmarshal(&mut raw) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "camera sent a malformed RTP packet");
                return None;
            }
        };
        self.rtp_packet(track, pkt, now)
    }

    /// One RTP packet of track `track`, already parsed (retina's, for pulled cameras).
    pub fn rtp_packet(
        &mut self,
        track: usize,
        pkt: rtc::rtp::Packet,
        now: Instant,
    ) -> Option<String> {
        let slot = self.slots.get_mut(track)?.as_mut()?;
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

    /// One whole JPEG picture for track `track` (an MJPEG track: HTTP cameras), taken at 90 kHz
    /// time `ts`. Returns a new note for the camera's state, if any (pictures that cannot be
    /// decoded). The encoder thread sends what it becomes; only the first sender report waits
    /// for [`flush`](Self::flush).
    pub fn jpeg(&mut self, track: usize, ts: u32, jpeg: Vec<u8>, now: Instant) -> Option<String> {
        let slot = self.slots.get_mut(track)?.as_mut()?;
        if !slot.sender_report {
            if let Some(ts) = slot.pipeline.map_ts(ts) {
                slot.out.sender_report(self.clock.ntp(now), ts);
                slot.sender_report = true;
            }
        }
        let frame = super::mjpeg::JpegFrame {
            ts,
            width: 0,
            height: 0,
            data: jpeg,
        };
        let note = slot.pipeline.push_jpeg(frame)?;
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
                    slot.camera_reports = true;
                }
            }
        }
    }

    /// Sends what the packets fed since the last flush became into the engine's data queue.
    /// With [`Backpressure::Wait`] it waits for room, [`DATA_STALL`] at most; with
    /// [`Backpressure::Drop`] it never waits. When a command does not get in, it and the rest
    /// of its track's batch are dropped and counted, and the track restarts (video at its next
    /// keyframe). Returns how many were dropped.
    pub async fn flush(&mut self, how: Backpressure) -> usize {
        let deadline = tokio::time::Instant::now() + DATA_STALL;
        let mut dropped = 0;
        for slot in self.slots.iter_mut().flatten() {
            let mut batch = slot.out.take_pending();
            let mut commands = batch.drain(..);
            while let Some(command) = commands.next() {
                match self.queue.send(command, how, deadline).await {
                    Ok(()) => {}
                    Err(Refused::Full) => {
                        dropped += 1 + commands.len();
                        slot.dropped();
                        break;
                    }
                    // The server is stopping: nothing to restart, nothing worth counting.
                    Err(Refused::Closed) => break,
                }
            }
            drop(commands);
            slot.out.recycle(batch);
        }
        if dropped > 0 {
            self.queue.dropped(dropped);
            tracing::debug!(
                dropped,
                "camera packets dropped: the media engine's data queue is full"
            );
        }
        dropped
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rtc::shared::marshal::Marshal;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::sync::mpsc;

    const OPUS: Plan = Plan::Pass {
        mime: "audio/opus",
        clock_rate: 48_000,
    };
    const H264: Plan = Plan::H264 { fmtp: None };

    /// A feed of one track per plan into a data queue of `capacity`, counting drops in
    /// `metrics`.
    fn feed_into(queue: &DataQueue, plans: &[Plan]) -> Feed {
        let slots = plans
            .iter()
            .enumerate()
            .map(|(index, plan)| {
                let out = Out::new(ParticipantKey(1), index);
                let pipeline = Pipeline::new(plan, &out, queue).expect("plans used here start");
                let mut slot = Slot::new(pipeline, out);
                // No made-up sender reports: the tests look at RTP.
                slot.sender_report = true;
                Some(slot)
            })
            .collect();
        Feed {
            slots,
            clock: WallClock::new(Instant::now()),
            notes: Vec::new(),
            queue: queue.clone(),
        }
    }

    fn queue(capacity: usize) -> (DataQueue, mpsc::Receiver<Command>, Arc<Metrics>) {
        let (tx, rx) = mpsc::channel(capacity);
        let metrics = Arc::new(Metrics::default());
        let queue = DataQueue::new(tx, metrics.clone());
        (queue, rx, metrics)
    }

    fn feed(plans: &[Plan]) -> (Feed, mpsc::Receiver<Command>) {
        let (queue, rx, _) = queue(1024);
        (feed_into(&queue, plans), rx)
    }

    /// Opus packet `seq` of a camera (20 ms apart), its payload `[TOC, tag]`.
    fn opus_packet(seq: u16, tag: u8) -> Bytes {
        raw(seq, 960 * u32::from(seq), true, &[0x78, tag])
    }

    /// A camera's RTP packet as it arrives (12-byte header, then `payload`).
    fn raw(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Bytes {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 7,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
        .marshal()
        .expect("a plain header marshals")
        .freeze()
    }

    /// An H.264 keyframe (SPS, PPS, a 1190-byte IDR slice) in three packets, which become two:
    /// a STAP-A of the parameter sets and the slice.
    fn keyframe(seq: u16, ts: u32) -> [Bytes; 3] {
        // Too large to share a STAP-A with the parameter sets, small enough for one packet.
        let mut idr = vec![0x65; 1190];
        idr[1] = 0x88;
        [
            raw(seq, ts, false, &[0x67, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80]),
            raw(seq + 1, ts, false, &[0x68, 0xce, 0x3c, 0x80]),
            raw(seq + 2, ts, true, &idr),
        ]
    }

    /// A P slice in one packet.
    fn p_slice(seq: u16, ts: u32) -> Bytes {
        raw(seq, ts, true, &[0x41, 0x9a, 1, 2, 3, 4])
    }

    /// The RTP payloads waiting in the queue.
    fn payloads(rx: &mut mpsc::Receiver<Command>) -> Vec<Bytes> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|c| match c {
                Command::ExternalRtp { packet, .. } => Some(packet.payload),
                _ => None,
            })
            .collect()
    }

    /// Whether `payload` is `raw`'s payload in `raw`'s own memory, not a copy of it.
    fn shares(payload: &Bytes, raw: &Bytes) -> bool {
        payload[..] == raw[12..] && std::ptr::eq(payload.as_ptr(), raw[12..].as_ptr())
    }

    #[tokio::test]
    async fn h264_single_nal_units_pass_through_uncopied() {
        let (mut feed, mut rx) = feed(&[H264]);
        let now = Instant::now();
        let [sps, pps, idr] = keyframe(1, 3000);
        let p = p_slice(4, 6000);
        for packet in [&sps, &pps, &idr, &p] {
            feed.rtp(0, packet.clone(), now);
        }
        assert_eq!(feed.flush(Backpressure::Wait).await, 0);
        let out = payloads(&mut rx);
        assert_eq!(out.len(), 3, "STAP-A (SPS, PPS), IDR, P: {out:?}");
        assert_eq!(out[0][0] & 0x1f, 24, "parameter sets aggregated");
        assert!(shares(&out[1], &idr), "the IDR slice was copied");
        assert!(shares(&out[2], &p), "the P slice was copied");
    }

    #[tokio::test]
    async fn opus_and_g711_pass_through_uncopied() {
        let pcmu_plan = Plan::Pass {
            mime: "audio/PCMU",
            clock_rate: 8000,
        };
        let (mut feed, mut rx) = feed(&[OPUS, pcmu_plan]);
        let opus = raw(1, 960, true, &[0x78, 1, 2, 3]);
        let pcmu = raw(1, 160, false, &[0xff; 160]);
        feed.rtp(0, opus.clone(), Instant::now());
        feed.rtp(1, pcmu.clone(), Instant::now());
        feed.flush(Backpressure::Wait).await;
        let out = payloads(&mut rx);
        assert_eq!(out.len(), 2);
        assert!(shares(&out[0], &opus), "Opus was copied");
        assert!(shares(&out[1], &pcmu), "PCMU was copied");
    }

    /// Over TCP a full queue makes the camera wait, and nothing is lost if room comes in time.
    #[tokio::test(start_paused = true)]
    async fn full_queue_makes_a_tcp_camera_wait() {
        let (queue, mut rx, metrics) = queue(2);
        let mut feed = feed_into(&queue, &[OPUS]);
        for seq in 0..5 {
            feed.rtp(0, opus_packet(seq, seq as u8), Instant::now());
        }
        let started = tokio::time::Instant::now();
        let flushing = tokio::spawn(async move { feed.flush(Backpressure::Wait).await });
        // Two get in, three wait.
        tokio::time::sleep(DATA_STALL / 2).await;
        assert!(!flushing.is_finished(), "the camera did not wait for room");
        let mut got = Vec::new();
        while got.len() < 5 {
            let Some(Command::ExternalRtp { packet, .. }) = rx.recv().await else {
                panic!("only RTP was fed");
            };
            got.push(packet.payload[1]);
        }
        assert_eq!(flushing.await.unwrap(), 0);
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(started.elapsed() < DATA_STALL);
        assert_eq!(metrics.camera_dropped_packets.load(Relaxed), 0);
    }

    /// A camera that cannot get in within DATA_STALL loses that batch (counted) and its video
    /// restarts at the next keyframe; its audio just goes on.
    #[tokio::test(start_paused = true)]
    async fn stalled_video_is_dropped_and_restarts_at_a_keyframe() {
        let (queue, mut rx, metrics) = queue(1);
        let mut feed = feed_into(&queue, &[H264, OPUS]);
        let now = Instant::now();
        for p in keyframe(1, 3000) {
            feed.rtp(0, p, now);
        }
        feed.rtp(0, p_slice(4, 6000), now);
        feed.rtp(1, opus_packet(1, 1), now);
        let started = tokio::time::Instant::now();
        // Nobody drains the queue: the STAP-A gets in, the rest of the video and the audio
        // wait DATA_STALL and are dropped.
        assert_eq!(feed.flush(Backpressure::Wait).await, 3);
        assert_eq!(started.elapsed(), DATA_STALL);
        assert_eq!(metrics.camera_dropped_packets.load(Relaxed), 3);
        assert_eq!(payloads(&mut rx).len(), 1);

        // Room again. P slices are held back until a keyframe; audio flows at once.
        let (queue, mut rx2, _) = self::queue(64);
        feed.queue = queue;
        feed.rtp(0, p_slice(5, 9000), now);
        feed.rtp(1, opus_packet(2, 2), now);
        feed.flush(Backpressure::Wait).await;
        assert_eq!(payloads(&mut rx2), [Bytes::from_static(&[0x78, 2])]);
        let [sps, pps, idr] = keyframe(6, 12_000);
        for p in [sps, pps, idr.clone(), p_slice(9, 15_000)] {
            feed.rtp(0, p, now);
        }
        feed.flush(Backpressure::Wait).await;
        let out = payloads(&mut rx2);
        assert_eq!(
            out.len(),
            3,
            "keyframe (STAP-A, IDR) and the P slice after it"
        );
        assert_eq!(out[0][0] & 0x1f, 24);
        assert_eq!(out[1], idr.slice(12..));
        assert_eq!(metrics.camera_dropped_packets.load(Relaxed), 3);
        drop(rx);
    }

    /// Over UDP nothing waits: what does not fit is dropped and counted at once.
    #[tokio::test(start_paused = true)]
    async fn udp_camera_drops_what_does_not_fit() {
        let (queue, mut rx, metrics) = queue(2);
        let mut feed = feed_into(&queue, &[OPUS]);
        for seq in 0..5 {
            feed.rtp(0, opus_packet(seq, seq as u8), Instant::now());
        }
        let started = tokio::time::Instant::now();
        assert_eq!(feed.flush(Backpressure::Drop).await, 3);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(metrics.camera_dropped_packets.load(Relaxed), 3);
        assert_eq!(payloads(&mut rx).len(), 2);
        // The next batch gets in when there is room.
        feed.rtp(0, opus_packet(5, 5), Instant::now());
        assert_eq!(feed.flush(Backpressure::Drop).await, 0);
        assert_eq!(payloads(&mut rx), [Bytes::from_static(&[0x78, 5])]);
    }

    /// A camera with a big burst waiting for room does not keep another camera out: room is
    /// handed out to waiters in turn.
    #[tokio::test(start_paused = true)]
    async fn a_bursting_camera_does_not_starve_another() {
        let (queue, mut rx, _) = queue(1);
        let mut burst = feed_into(&queue, &[OPUS]);
        let mut other = feed_into(&queue, &[OPUS]);
        for seq in 0..100 {
            burst.rtp(0, opus_packet(seq, 0), Instant::now());
        }
        other.rtp(0, raw(0, 0, true, &[0x78, 1]), Instant::now());
        let burst = tokio::spawn(async move { burst.flush(Backpressure::Wait).await });
        tokio::task::yield_now().await;
        let other = tokio::spawn(async move { other.flush(Backpressure::Wait).await });
        tokio::task::yield_now().await;
        let mut order = Vec::new();
        while order.len() < 101 {
            let Some(Command::ExternalRtp { packet, .. }) = rx.recv().await else {
                panic!("only RTP was fed");
            };
            order.push(packet.payload[1]);
            // A slow engine: one packet per millisecond.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let at = order.iter().position(|&c| c == 1).unwrap();
        assert!(at <= 3, "the other camera's packet came {at}th");
        assert_eq!((burst.await.unwrap(), other.await.unwrap()), (0, 0));
    }
}
