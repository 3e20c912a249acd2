//! Building the server's `rtc` peer connections: codecs, interceptors, ICE-lite, and host
//! candidates on the shared media port (UDP and ICE-TCP).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, NackResponderBuilder, Packet,
    ReceiverReportBuilder, Registry, Slot, StreamInfo, TaggedPacket, TwccReceiverBuilder,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_VP8,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::header::PacketType;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::bwe::Estimate;
use super::rtx_budget::RetransmitBudget;
use crate::protocol::PcRole;

/// The payload types a connection numbers its codecs with (each end of a connection picks its
/// own; forwarding maps them per subscriber), and the Opus parameters it asks for.
pub struct PayloadTypes {
    /// H.264 profiles, all packetization-mode 1, in order of preference (Chromium offers
    /// these three).
    pub h264: [(u8, &'static str); 3],
    pub vp8: u8,
    pub opus: u8,
    /// The Opus `a=fmtp` parameters of its offers.
    pub opus_fmtp: &'static str,
}

/// The server's own numbering.
pub const SERVER_PAYLOAD_TYPES: PayloadTypes = PayloadTypes {
    h264: [(102, "42e01f"), (104, "42001f"), (106, "4d001f")],
    vp8: 96,
    opus: 111,
    opus_fmtp: OPUS_FMTP,
};

/// The Opus parameters the server asks for in its subscribe offers and its publish answers
/// (RFC 7587 §6.1; they describe what the receiver of a direction prefers, so the answer is
/// what a publisher's encoder follows): in-band FEC (`useinbandfec=1`: the encoder adds a
/// low-bitrate copy of the previous frame, and a decoder that lost a packet rebuilds it from
/// the next), DTX (`usedtx=1`: during silence the encoder sends an occasional comfort-noise
/// frame instead of one every 20 ms; Chromium's muted microphone goes from 50 packets a second
/// to 5) and 10 ms as the shortest packet (`minptime=10`, as browsers offer).
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1;usedtx=1";

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("transport-cc", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(t, p)| RTCPFeedback {
        typ: t.to_owned(),
        parameter: p.to_owned(),
    })
    .collect()
}

/// For a G.711 track, the codecs to offer on its line: G.711 first, Opus as a fallback.
pub fn audio_fallback(codec: &RTCRtpCodec) -> Option<Vec<RTCRtpCodecParameters>> {
    let pt = match codec.mime_type.to_ascii_uppercase().as_str() {
        "AUDIO/PCMU" => 0,
        "AUDIO/PCMA" => 8,
        _ => return None,
    };
    let g711 = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: codec.mime_type.clone(),
            clock_rate: 8_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    };
    Some(vec![g711, opus(SERVER_PAYLOAD_TYPES.opus)])
}

/// Opus as the server offers it, numbered `pt`.
pub fn opus(pt: u8) -> RTCRtpCodecParameters {
    opus_with(pt, OPUS_FMTP)
}

/// Opus numbered `pt` with the `a=fmtp` parameters `fmtp`.
pub fn opus_with(pt: u8, fmtp: &str) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![RTCPFeedback {
                typ: "transport-cc".to_owned(),
                parameter: String::new(),
            }],
        },
        payload_type: pt,
    }
}

/// The codecs every confab connection negotiates, numbered as `pts` says (the server's own
/// connections use [`SERVER_PAYLOAD_TYPES`]; the simulation's clients Chromium's). H.264 first
/// so browsers prefer it.
pub fn media_engine(pts: &PayloadTypes) -> Result<MediaEngine, Error> {
    let mut m = MediaEngine::default();
    for (pt, profile) in pts.h264 {
        m.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_H264.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: format!(
                        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                    ),
                    rtcp_feedback: video_feedback(),
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )?;
    }
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: video_feedback(),
            },
            payload_type: pts.vp8,
        },
        RtpCodecKind::Video,
    )?;
    m.register_codec(opus_with(pts.opus, pts.opus_fmtp), RtpCodecKind::Audio)?;
    // G.711, which many cameras send and every browser plays: forwarded as it is.
    for (mime, pt) in [(MIME_TYPE_PCMU, 0), (MIME_TYPE_PCMA, 8)] {
        m.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 8_000,
                    channels: 0,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            },
            RtpCodecKind::Audio,
        )?;
    }
    // transport-wide sequence numbers from publishers drive the TWCC feedback their congestion
    // control needs; MID lets `rtc` map streams without a=ssrc lines.
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        for uri in [
            rtc::sdp::extmap::TRANSPORT_CC_URI,
            rtc::sdp::extmap::SDES_MID_URI,
        ] {
            m.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                kind,
                None,
            )?;
        }
    }
    // Simulcast: each layer's packets name their RTP stream (RFC 8852), which is how `rtc`
    // tells the layers of one track apart.
    for uri in [
        rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
        rtc::sdp::extmap::SDES_REPAIR_RTP_STREAM_ID_URI,
    ] {
        m.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )?;
    }
    // RFC 6464 audio levels on publishers' audio packets: how the engine hears who is
    // speaking (`speaker`) without decoding anything.
    m.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(m)
}

/// Which inbound RTCP reaches `poll_read` (`rtc` keeps RTCP in its interceptors unless a packet
/// is marked for the application).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpDelivery {
    /// What the engine acts on: keyframe requests and transport-wide feedback from subscribers
    /// (PLI, FIR, transport-cc) and sender reports from publishers (for lip sync). Receiver
    /// reports and NACKs stay with the interceptors that already handle them.
    Wanted,
    /// Every packet, one at a time, as a browser reads them (the simulation's clients record
    /// what they get): `rtc` routes a compound by its first packet's destination SSRC and
    /// drops one that starts with a report without report blocks (the engine's RR + PLI).
    EachPacket,
}

/// The interceptor that marks RTCP for the application, as [`RtcpDelivery`] says.
pub struct DeliverRtcp {
    delivery: RtcpDelivery,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl DeliverRtcp {
    pub fn new(delivery: RtcpDelivery) -> Self {
        DeliverRtcp {
            delivery,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

fn wanted_rtcp(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let h = p.header();
        match h.packet_type {
            PacketType::SenderReport => true,
            // RFC 4585 §6.3.1 PLI is FMT 1, RFC 5104 §4.3.1 FIR is FMT 4.
            PacketType::PayloadSpecificFeedback => matches!(h.count, 1 | 4),
            // Transport-wide congestion control feedback is FMT 15 (`super::twcc`).
            PacketType::TransportSpecificFeedback => h.count == 15,
            _ => false,
        }
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let Packet::Rtcp(packets) = &mut msg.message.packet else {
            self.read_queue.push_back(msg);
            return Ok(());
        };
        match self.delivery {
            RtcpDelivery::Wanted => {
                if wanted_rtcp(packets) {
                    msg.message.add(Attribute::DeliverToApplication);
                }
                self.read_queue.push_back(msg);
            }
            RtcpDelivery::EachPacket => {
                let packets = std::mem::take(packets);
                msg.message.add(Attribute::DeliverToApplication);
                for p in packets {
                    let mut message = msg.message.clone();
                    message.packet = Packet::Rtcp(vec![p]);
                    self.read_queue.push_back(TaggedPacket {
                        now: msg.now,
                        transport: msg.transport,
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// How many sent packets a subscribe connection keeps per video stream to answer NACKs: 256
/// packets are about a second of 720p at 1.5 Mbit/s (230 packets/s) and half a second at
/// 3 Mbit/s, longer than a retransmission is still useful to a receiver's jitter buffer. Each
/// slot is a packet header (112 bytes; the payloads are shared with the publisher's packet), so
/// `rtc`'s default of 1024 cost 112 KiB per subscribed video track, this 28 KiB (heaptrack of
/// `fanout --subscribers 100`: `bench/results/2026-11-21b/harness/attach.sh`, BENCHMARKS.md).
const NACK_HISTORY: u16 = 256;

/// The interceptors a connection needs for its role; every interceptor is a queue each packet
/// passes through, so a connection gets only those that act on its direction of media.
/// Subscribe connections only send media: they answer NACKs from the per-stream history and
/// pass keyframe requests and transport-wide feedback to the engine (sender reports are written
/// by the engine itself, translated from the publisher's, so lip sync survives forwarding; the
/// engine numbers packets transport-wide and estimates bandwidth itself, `super::twcc`), and
/// keep resends within a share of the estimate (`super::rtx_budget`). `rtc`'s pacer is left
/// out: it releases packets only from `handle_timeout`, so every packet would cost the
/// connection a timer round trip; the engine paces itself (`super::pace`).
/// Publish connections only
/// receive media: they send NACKs on loss, receiver reports, and TWCC feedback for the
/// publisher's congestion control, and pass the publisher's sender reports to the engine.
fn interceptors(role: PcRole, estimate: Option<Arc<Estimate>>) -> Registry {
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::new(RtcpDelivery::Wanted));
    match role {
        PcRole::Subscribe => {
            let registry = registry.with(
                Slot::NackResponder,
                NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
            );
            match estimate {
                Some(e) => registry.with(Slot::from(3_500), RetransmitBudget::new(e)),
                None => registry,
            }
        }
        PcRole::Publish => registry
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build()),
    }
}

/// A new ICE-lite peer connection for `role` whose only candidates are `candidates` (UDP, all
/// on the one port) and `tcp_candidates` (passive ICE-TCP, RFC 6544).
///
/// Its ICE credentials are `rtc`'s own (random, from its crypto provider), not chosen here:
/// `rtc` re-stages the credentials given to its setting engine on every ICE restart, so fixed
/// ones would make a restart keep its ufrag and password, which RFC 8445 §9 forbids and which
/// keeps Chromium from restarting at all when the server offers it. The engine reads the ufrag
/// (its demultiplexing key) from each local description instead.
///
/// A subscribe connection keeps its resends within a share of `estimate` (`super::rtx_budget`).
pub fn build(
    now: Instant,
    role: PcRole,
    candidates: &[SocketAddr],
    tcp_candidates: &[SocketAddr],
    estimate: Option<Arc<Estimate>>,
) -> Result<RTCPeerConnection, Error> {
    let registry = interceptors(role, estimate);
    let setting_engine = SettingEngineBuilder::new()
        .with_lite(true)
        .with_include_loopback_candidate(true)
        // A peer that closes its connection says so (DTLS close_notify, see the engine) and is
        // removed at once. One that vanishes is noticed by silence: `disconnected` after 5 s,
        // `failed` 5 s later, checked every second. Shorter is not safe: Chromium sends nothing
        // but consent checks (2.5 s apart) on a subscribe connection while no media reaches it,
        // and with 4 s + 4 s a loaded machine dropped healthy subscribers.
        .with_ice_timeouts(
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(1)),
        )
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(setting_engine)
        .with_media_engine(media_engine(&SERVER_PAYLOAD_TYPES)?)
        .with_interceptor_registry(registry)
        .build(now)?;
    for c in candidates {
        pc.add_local_candidate(host_candidate(*c)?)?;
    }
    for c in tcp_candidates {
        pc.add_local_candidate(tcp_host_candidate(*c)?)?;
    }
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(pc)
}

/// The candidate line for one advertised UDP address, as `RTCIceCandidateInit`.
pub fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, Error> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}

/// The candidate line for one advertised ICE-TCP address: a passive host candidate (the
/// browser connects, RFC 6544 §4.1). Its priority is below every UDP host candidate's: `rtc`
/// computes the local preference of TCP candidates as RFC 6544 §4.2 recommends (direction
/// preference 4 for passive: 40959 against 65535 for UDP), so a browser that can use UDP
/// nominates UDP.
pub fn tcp_host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, Error> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "tcp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: rtc::ice::tcp_type::TcpType::Passive,
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}

/// The ICE username fragment of a session description (`a=ice-ufrag:`, session or first media
/// level; bundled connections have one).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
        .filter(|u| !u.is_empty())
}
