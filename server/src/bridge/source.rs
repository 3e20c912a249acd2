//! One camera track's way into a room: what the camera sends is depacketized, transcoded only
//! where browsers cannot take it, and packetized as WebRTC wants it.
//!
//! | camera sends | browsers get | how |
//! |---|---|---|
//! | H.264 (any profile) | H.264, packetization-mode 1 | depacketize, parameter sets before every keyframe, re-packetize to 1200-byte payloads |
//! | MJPEG (RFC 2435) | H.264 Constrained Baseline | decode JPEG, encode with openh264 on a worker thread |
//! | Opus, PCMU, PCMA | the same | forwarded as they are, new sequence numbers |
//! | AAC (RFC 3640) | Opus | decode (symphonia), resample to 48 kHz, encode (mousiki) |
//! | anything else | nothing | the camera's state says what is unsupported |
//!
//! H.264 keeps its own timestamps (90 kHz both sides). A camera's High or Main profile is
//! announced to browsers as `42e01f`: Chromium offers only Baseline/Main profile ids, but its
//! decoder takes any profile the stream really has, so passing the stream through beats
//! transcoding it (see docs/design.md, "Camera profiles").

use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

use super::queue::DataQueue;
use super::{aac, h264, mjpeg, InputTrack};
use crate::media::api::{Command, ParticipantKey, TrackKey};
use crate::protocol::MediaKind;

/// RTP payload size toward browsers: with SRTP, UDP and IPv6 headers this stays under 1280,
/// the smallest MTU IPv6 allows, so nothing is fragmented on the way.
pub const MAX_PAYLOAD: usize = 1200;

/// The profile announced for H.264 toward browsers (Constrained Baseline 3.1; see above).
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// An output stream: the engine's external track `index` of participant `key`, or the low
/// layer of a camera's track (`super::low_layer`); its own SSRC and sequence numbers, and the
/// commands made for it and not yet sent.
///
/// Pipelines only queue here; whoever drives them sends the batch into the data queue
/// ([`super::queue`]), so that an async caller can wait for room without blocking a tokio
/// worker inside the pipeline.
pub struct Out {
    to: Stream,
    ssrc: u32,
    seq: u16,
    pending: Vec<Command>,
}

/// Which of the engine's streams an [`Out`] feeds.
#[derive(Debug, Clone, Copy)]
enum Stream {
    External { key: ParticipantKey, index: usize },
    LowLayer(TrackKey),
}

impl Out {
    pub fn new(key: ParticipantKey, index: usize) -> Self {
        Out::to(Stream::External { key, index })
    }

    /// The low layer of camera track `track`.
    pub fn low_layer(track: TrackKey) -> Self {
        Out::to(Stream::LowLayer(track))
    }

    fn to(to: Stream) -> Self {
        Out {
            to,
            ssrc: rand::random(),
            seq: rand::random(),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, ts: u32, marker: bool, payload: Bytes) {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                sequence_number: self.seq,
                timestamp: ts,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        // A packet dropped later keeps its number: the gap tells receivers something is
        // missing.
        self.seq = self.seq.wrapping_add(1);
        self.pending.push(match self.to {
            Stream::External { key, index } => Command::ExternalRtp { key, index, packet },
            Stream::LowLayer(track) => Command::LowLayerRtp { track, packet },
        });
    }

    pub fn sender_report(&mut self, ntp: u64, rtp: u32) {
        self.pending.push(match self.to {
            Stream::External { key, index } => Command::ExternalSenderReport {
                key,
                index,
                ntp,
                rtp,
            },
            Stream::LowLayer(track) => Command::LowLayerSenderReport { track, ntp, rtp },
        });
    }

    /// The commands queued since the last call, oldest first. Hand the vector back with
    /// [`recycle`](Self::recycle) once it is sent, so batches reuse one allocation.
    pub fn take_pending(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.pending)
    }

    /// Gives back a vector from [`take_pending`](Self::take_pending), emptied.
    pub fn recycle(&mut self, mut sent: Vec<Command>) {
        if self.pending.is_empty() {
            sent.clear();
            self.pending = sent;
        }
    }
}

/// What a track becomes, decided from its SDP before any packet arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    H264 {
        fmtp: Option<String>,
    },
    Mjpeg,
    /// Opus or G.711: forwarded with the codec given.
    Pass {
        mime: &'static str,
        clock_rate: u32,
    },
    Aac {
        fmtp: aac::AacFmtp,
    },
}

impl Plan {
    /// The plan for `track`, or why it cannot be bridged (for the camera's state).
    pub fn for_track(track: &InputTrack) -> Result<Plan, String> {
        let enc = track.encoding.to_ascii_uppercase();
        match (track.kind, enc.as_str()) {
            (MediaKind::Video, "H264") => Ok(Plan::H264 {
                fmtp: track.fmtp.clone(),
            }),
            (MediaKind::Video, "JPEG") => Ok(Plan::Mjpeg),
            (MediaKind::Audio, "OPUS") => Ok(Plan::Pass {
                mime: "audio/opus",
                clock_rate: 48_000,
            }),
            (MediaKind::Audio, "PCMU") if track.clock_rate == 8000 => Ok(Plan::Pass {
                mime: "audio/PCMU",
                clock_rate: 8000,
            }),
            (MediaKind::Audio, "PCMA") if track.clock_rate == 8000 => Ok(Plan::Pass {
                mime: "audio/PCMA",
                clock_rate: 8000,
            }),
            (MediaKind::Audio, "MPEG4-GENERIC") => {
                let fmtp = aac::AacFmtp::parse(track.fmtp.as_deref().unwrap_or(""))
                    .map_err(|e| format!("AAC audio cannot be used: {e}"))?;
                Ok(Plan::Aac { fmtp })
            }
            (MediaKind::Video, "H265") => Err(
                "H.265 video is not supported (browsers cannot play it); set the camera to H.264"
                    .into(),
            ),
            (kind, _) => Err(format!(
                "{} {} ({} Hz) is not supported; send H.264 or MJPEG video and Opus, AAC, PCMU or PCMA audio",
                match kind {
                    MediaKind::Audio => "audio codec",
                    MediaKind::Video => "video codec",
                },
                track.encoding,
                track.clock_rate
            )),
        }
    }

    /// The codec browsers are offered for this track.
    pub fn output_codec(&self) -> (MediaKind, RTCRtpCodec) {
        let (kind, mime, clock_rate, channels, fmtp) = match self {
            Plan::H264 { .. } | Plan::Mjpeg => {
                (MediaKind::Video, "video/H264", 90_000, 0, H264_FMTP)
            }
            Plan::Pass {
                mime: "audio/opus", ..
            }
            | Plan::Aac { .. } => (
                MediaKind::Audio,
                "audio/opus",
                48_000,
                2,
                "minptime=10;useinbandfec=1",
            ),
            Plan::Pass { mime, clock_rate } => (MediaKind::Audio, *mime, *clock_rate, 0, ""),
        };
        (
            kind,
            RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: vec![],
            },
        )
    }
}

/// A note for the camera's state, reported once.
pub type Note = String;

/// One track's conversion, fed with the camera's RTP packets.
pub enum Pipeline {
    H264(H264Path),
    Mjpeg(MjpegPath),
    Pass,
    Aac(Box<AacPath>),
}

impl Pipeline {
    /// The pipeline for `plan` into `out`. MJPEG starts its encoder thread, which sends into
    /// `queue` itself.
    pub fn new(plan: &Plan, out: &Out, queue: &DataQueue) -> Result<Pipeline, String> {
        Ok(match plan {
            Plan::H264 { fmtp } => {
                let params = match fmtp.as_deref() {
                    Some(f) => h264::ParameterSets::from_fmtp(f).unwrap_or_default(),
                    None => h264::ParameterSets::default(),
                };
                Pipeline::H264(H264Path::new(params))
            }
            Plan::Mjpeg => {
                let Stream::External { key, index } = out.to else {
                    return Err("a camera's own track feeds its MJPEG encoder".into());
                };
                Pipeline::Mjpeg(MjpegPath::start(key, index, queue.clone())?)
            }
            Plan::Pass { .. } => Pipeline::Pass,
            Plan::Aac { fmtp } => Pipeline::Aac(Box::new(AacPath {
                depack: aac::AacDepacketizer::new(fmtp),
                transcoder: aac::AacToOpus::new(&fmtp.config)
                    .map_err(|e| format!("AAC audio cannot be decoded: {e}"))?,
                frames: Vec::new(),
                opus: Vec::new(),
            })),
        })
    }

    /// One packet from the camera. Returns a note for the camera's state when something
    /// worth telling happened (B-frames seen, undecodable data).
    pub fn push(&mut self, pkt: &rtc::rtp::Packet, out: &mut Out) -> Option<Note> {
        match self {
            Pipeline::H264(p) => p.push(pkt, out),
            Pipeline::Mjpeg(p) => p.push(pkt),
            Pipeline::Pass => {
                out.send(pkt.header.timestamp, pkt.header.marker, pkt.payload.clone());
                None
            }
            Pipeline::Aac(p) => p.push(pkt, out),
        }
    }

    /// One whole JPEG picture (an HTTP camera's) for an MJPEG track; other tracks ignore it.
    /// Returns a note for the camera's state when something worth telling happened.
    pub fn push_jpeg(&mut self, frame: mjpeg::JpegFrame) -> Option<Note> {
        match self {
            Pipeline::Mjpeg(p) => p.push_frame(frame),
            _ => None,
        }
    }

    /// Some of this track's output was dropped: a video track sends nothing more until its
    /// next keyframe, so that no picture is decoded against one that never arrived. Audio
    /// goes on (every Opus or G.711 packet decodes alone).
    pub fn restart(&mut self) {
        if let Pipeline::H264(p) = self {
            p.wait_keyframe = true;
        }
    }

    /// The output timestamp for a camera timestamp (to translate its sender reports).
    pub fn map_ts(&self, ts: u32) -> Option<u32> {
        match self {
            Pipeline::Aac(p) => p.transcoder.map_ts(ts),
            _ => Some(ts),
        }
    }
}

/// H.264 passed through.
pub struct H264Path {
    depack: h264::Depacketizer,
    params: h264::ParameterSets,
    pack: h264::Packetizer,
    /// After a loss nothing is sent until the next keyframe: a frozen picture beats a smeared
    /// one, and the engine's keyframe cache must never hold a broken group.
    wait_keyframe: bool,
    b_frames_noted: bool,
    errors_noted: bool,
    payloads: Vec<(Bytes, bool)>,
}

/// NAL unit types browsers do not need: access unit delimiters, SEI, filler data.
fn droppable_nal(nal: &[u8]) -> bool {
    matches!(nal.first().map(|b| b & 0x1f), Some(6 | 9 | 12))
}

impl H264Path {
    pub fn new(params: h264::ParameterSets) -> Self {
        H264Path {
            depack: h264::Depacketizer::new(),
            params,
            pack: h264::Packetizer::new(MAX_PAYLOAD),
            wait_keyframe: true,
            b_frames_noted: false,
            errors_noted: false,
            payloads: Vec::new(),
        }
    }

    fn push(&mut self, pkt: &rtc::rtp::Packet, out: &mut Out) -> Option<Note> {
        let mut next = match self.depack.push(pkt) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "H.264 packet dropped");
                if std::mem::replace(&mut self.errors_noted, true) {
                    return None;
                }
                return Some(format!("some H.264 packets could not be used: {e}"));
            }
        };
        let mut note = None;
        // A packet can finish two access units (a marker-less one and its own).
        while let Some(done) = next {
            if done.after_loss {
                self.wait_keyframe = true;
            }
            let mut au = done.au;
            note = self.send_au(&mut au, out).or(note);
            next = self.depack.pop_ready();
        }
        note
    }

    /// Sends one access unit (also used for transcoded MJPEG).
    pub fn send_au(&mut self, au: &mut h264::AccessUnit, out: &mut Out) -> Option<Note> {
        au.nals.retain(|n| !n.is_empty() && !droppable_nal(n));
        self.params.fix_up(au);
        if au.nals.is_empty() {
            return None;
        }
        let keyframe = au.is_keyframe();
        if self.wait_keyframe {
            if !keyframe || self.params.sps().is_none() {
                return None;
            }
            self.wait_keyframe = false;
        }
        let mut note = None;
        if !self.b_frames_noted && h264::has_b_slices(au) {
            self.b_frames_noted = true;
            note = Some(
                "the camera sends B-frames, which browsers play with stutter; turn B-frames off in the camera's encoder settings"
                    .to_owned(),
            );
        }
        self.payloads.clear();
        self.pack.packetize(au, &mut self.payloads);
        for (payload, marker) in self.payloads.drain(..) {
            out.send(au.ts, marker, payload);
        }
        note
    }
}

/// MJPEG transcoded on a worker thread, so a slow encode never holds up the RTSP session.
///
/// The thread sends its packets into the data queue itself and blocks while it is full. That
/// stops only the encoder: JPEG frames back up in front of it (two at most) and the newest are
/// dropped there, where a lost frame costs nothing, instead of encoded H.264 being dropped
/// after it, where every picture until the next keyframe would be lost with it.
pub struct MjpegPath {
    depack: mjpeg::JpegDepacketizer,
    frames: std_mpsc::SyncSender<mjpeg::JpegFrame>,
    dropped_noted: bool,
    /// The encoder thread's first failure, for the camera's state (noted once).
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    failure_noted: bool,
}

impl MjpegPath {
    fn start(key: ParticipantKey, index: usize, queue: DataQueue) -> Result<MjpegPath, String> {
        // Two frames of slack: a burst is absorbed, a camera faster than the encoder loses
        // frames here instead of building latency.
        let (tx, rx) = std_mpsc::sync_channel::<mjpeg::JpegFrame>(2);
        let failure = std::sync::Arc::new(std::sync::Mutex::new(None));
        let failed = failure.clone();
        std::thread::Builder::new()
            .name("confab-mjpeg".into())
            .spawn(move || {
                let mut out = Out::new(key, index);
                let mut transcoder = mjpeg::MjpegTranscoder::new();
                let mut h264 = H264Path::new(h264::ParameterSets::default());
                let mut failures = 0u32;
                while let Ok(frame) = rx.recv() {
                    match transcoder.transcode(&frame) {
                        Ok(Some(mut au)) => {
                            h264.send_au(&mut au, &mut out);
                            let mut batch = out.take_pending();
                            for command in batch.drain(..) {
                                // Only `Closed`: the engine is gone, and so is the camera.
                                if queue.blocking_send(command).is_err() {
                                    return;
                                }
                            }
                            out.recycle(batch);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failures += 1;
                            if failures == 1 {
                                *failed.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(e.to_string());
                            }
                            if failures.is_power_of_two() {
                                tracing::warn!(error = %e, failures, "MJPEG frame not transcoded");
                            }
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the MJPEG transcoder: {e}"))?;
        Ok(MjpegPath {
            depack: mjpeg::JpegDepacketizer::new(),
            frames: tx,
            dropped_noted: false,
            failure,
            failure_noted: false,
        })
    }

    fn push(&mut self, pkt: &rtc::rtp::Packet) -> Option<Note> {
        match self.depack.push(pkt) {
            Ok(Some(frame)) => self.push_frame(frame),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "MJPEG packet dropped");
                None
            }
        }
    }

    /// Hands a whole picture to the encoder thread, or drops it if two are waiting already.
    fn push_frame(&mut self, frame: mjpeg::JpegFrame) -> Option<Note> {
        if let Err(std_mpsc::TrySendError::Full(_)) = self.frames.try_send(frame) {
            if !std::mem::replace(&mut self.dropped_noted, true) {
                tracing::info!(
                    "MJPEG frames arrive faster than they can be transcoded; dropping some"
                );
            }
        }
        if self.failure_noted {
            return None;
        }
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        self.failure_noted = true;
        Some(format!("some JPEG pictures cannot be used: {failure}"))
    }
}

/// AAC transcoded to Opus, inline: 0.4-0.65 ms of CPU per 20 ms of 44.1 kHz stereo
/// (`cargo test --release -p confab --lib bridge::aac::tests::bench -- --ignored --nocapture`).
pub struct AacPath {
    depack: aac::AacDepacketizer,
    transcoder: aac::AacToOpus,
    frames: Vec<(u32, Bytes)>,
    opus: Vec<aac::OpusFrame>,
}

impl AacPath {
    fn push(&mut self, pkt: &rtc::rtp::Packet, out: &mut Out) -> Option<Note> {
        self.frames.clear();
        if let Err(e) = self.depack.push(pkt, &mut self.frames) {
            tracing::debug!(error = %e, "AAC packet dropped");
            return None;
        }
        for (ts, frame) in self.frames.drain(..) {
            if let Err(e) = self.transcoder.push(ts, &frame, &mut self.opus) {
                tracing::debug!(error = %e, "AAC frame not transcoded");
            }
        }
        for f in self.opus.drain(..) {
            out.send(f.ts, true, f.data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(kind: MediaKind, enc: &str, rate: u32, fmtp: Option<&str>) -> InputTrack {
        InputTrack {
            kind,
            control: "trackID=0".into(),
            payload_type: 96,
            encoding: enc.into(),
            clock_rate: rate,
            channels: 1,
            fmtp: fmtp.map(str::to_owned),
        }
    }

    #[test]
    fn plans_by_codec() {
        use MediaKind::*;
        let h264 = Plan::for_track(&track(Video, "H264", 90_000, None)).unwrap();
        assert_eq!(h264.output_codec().1.mime_type, "video/H264");
        assert_eq!(
            Plan::for_track(&track(Video, "JPEG", 90_000, None)).unwrap(),
            Plan::Mjpeg
        );
        let opus = Plan::for_track(&track(Audio, "opus", 48_000, None)).unwrap();
        assert_eq!(opus.output_codec().1.mime_type, "audio/opus");
        let pcma = Plan::for_track(&track(Audio, "PCMA", 8000, None)).unwrap();
        assert_eq!(pcma.output_codec().1.mime_type, "audio/PCMA");
        let aac = Plan::for_track(&track(
            Audio,
            "MPEG4-GENERIC",
            44_100,
            Some("profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1210"),
        ))
        .unwrap();
        assert_eq!(aac.output_codec().1.mime_type, "audio/opus");
        let h265 = Plan::for_track(&track(Video, "H265", 90_000, None)).unwrap_err();
        assert!(h265.contains("H.265"), "{h265}");
        let l16 = Plan::for_track(&track(Audio, "L16", 44_100, None)).unwrap_err();
        assert!(l16.contains("L16"), "{l16}");
        assert!(
            Plan::for_track(&track(Audio, "MPEG4-GENERIC", 44_100, Some("mode=garbage"))).is_err()
        );
    }
}
