//! A browser-like client: its two `rtc` peer connections and what it recorded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use rtc::interceptor::{
    NackGeneratorBuilder, NackResponderBuilder, Registry, Slot, TwccReceiverBuilder,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::shared::error::Error;

use crate::media::api::{MediaEvent, ParticipantKey};
use crate::media::peer::{self, DeliverRtcp, RtcpDelivery};
use crate::protocol::{IceCandidate, MediaKind, OfferedTrack, PcRole};

/// One of a client's two peer connections.
pub struct Conn {
    pub pc: RTCPeerConnection,
    pub addr: SocketAddr,
    pub state: RTCPeerConnectionState,
    pub(super) trickled: bool,
}

/// A track a client publishes.
#[derive(Debug, Clone)]
pub struct LocalTrack {
    /// The client's own id for it (`rtc`'s track id; the engine names it differently).
    pub id: String,
    pub kind: MediaKind,
    pub ssrc: u32,
    pub sender: RTCRtpSenderId,
    /// The negotiated payload type, once known.
    pub pt: Option<u8>,
    /// The last sequence number and timestamp sent, and frames sent so far.
    pub seq: u16,
    pub ts: u32,
    pub frames: u32,
    pub removed: bool,
    /// Keyframe requests (PLI, FIR) for this track that reached the client, and how many of
    /// them a keyframe from [`Sim::encode_video`](super::Sim::encode_video) answered.
    pub keyframe_requests: usize,
    pub(super) answered_requests: usize,
}

/// A subscribe offer the client has not answered yet.
#[derive(Debug, Clone)]
pub struct PendingOffer {
    pub revision: u64,
    pub sdp: String,
    pub tracks: Vec<OfferedTrack>,
}

/// An RTP packet a client received and decrypted.
#[derive(Debug, Clone)]
pub struct RtpIn {
    pub at: Instant,
    pub role: PcRole,
    /// `rtc`'s track id on the client: the engine's public track id.
    pub track: String,
    pub header: rtc::rtp::header::Header,
    pub payload: Bytes,
}

/// An RTCP packet a client received (one per packet of a compound).
#[derive(Debug, Clone)]
pub struct RtcpIn {
    pub at: Instant,
    pub role: PcRole,
    pub rtcp: Rtcp,
}

/// The RTCP the scenarios look at.
#[derive(Debug, Clone, PartialEq)]
pub enum Rtcp {
    SenderReport {
        ssrc: u32,
        ntp: u64,
        rtp: u32,
        packets: u32,
        octets: u32,
    },
    ReceiverReport {
        ssrc: u32,
    },
    Pli {
        media_ssrc: u32,
    },
    Fir {
        media_ssrc: u32,
    },
    Nack {
        media_ssrc: u32,
        seqs: Vec<u16>,
    },
    Other(String),
}

impl Rtcp {
    pub(super) fn from_packet(p: &dyn rtc::rtcp::Packet) -> Rtcp {
        let any = p.as_any();
        if let Some(sr) = any.downcast_ref::<SenderReport>() {
            Rtcp::SenderReport {
                ssrc: sr.ssrc,
                ntp: sr.ntp_time,
                rtp: sr.rtp_time,
                packets: sr.packet_count,
                octets: sr.octet_count,
            }
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            Rtcp::ReceiverReport { ssrc: rr.ssrc }
        } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
            Rtcp::Pli {
                media_ssrc: pli.media_ssrc,
            }
        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
            Rtcp::Fir {
                media_ssrc: fir.media_ssrc,
            }
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            Rtcp::Nack {
                media_ssrc: nack.media_ssrc,
                seqs: nack.nacks.iter().flat_map(|n| n.packet_list()).collect(),
            }
        } else {
            let h = p.header();
            Rtcp::Other(format!("pt={:?} fmt={}", h.packet_type, h.count))
        }
    }
}

/// A browser-like participant.
pub struct Client {
    pub key: ParticipantKey,
    pub id: String,
    pub room: String,
    /// Answer subscribe offers as they come, as a browser does. When false they wait in
    /// `pending_offers` for [`Sim::answer_offer`](super::Sim::answer_offer).
    pub auto_answer: bool,
    pub publish: Option<Conn>,
    pub subscribe: Option<Conn>,
    pub tracks: Vec<LocalTrack>,
    /// Everything the engine told this client's signaling session.
    pub events: Vec<(Instant, MediaEvent)>,
    pub pending_offers: VecDeque<PendingOffer>,
    /// Subscribe answers sent: revision and SDP.
    pub answers: Vec<(u64, String)>,
    /// Every SDP this client sent or received, in order (seeds for the SDP fuzz target).
    pub sdps: Vec<String>,
    /// Decrypted RTP (only while the simulation records).
    pub received: Vec<RtpIn>,
    pub received_count: usize,
    /// RTCP received (only while the simulation records).
    pub rtcp: Vec<RtcpIn>,
    /// The first thing that went wrong: `Failed` or `Error` from the engine, or an SDP the
    /// client could not apply.
    pub failure: Option<String>,
    pub left: bool,
    pub(super) pub_addr: SocketAddr,
    pub(super) sub_addr: SocketAddr,
    pub(super) inbox: VecDeque<MediaEvent>,
    pub(super) early_candidates: Vec<(PcRole, IceCandidate)>,
    pub(super) publish_busy: bool,
    pub(super) publish_again: bool,
}

impl Client {
    pub(super) fn add_candidate(&mut self, role: PcRole, c: IceCandidate) {
        if let Some(conn) = self.conn_mut(role) {
            let _ = conn.pc.add_remote_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_m_line_index,
                username_fragment: c.username_fragment,
                ..Default::default()
            });
        }
    }

    pub fn conn(&self, role: PcRole) -> Option<&Conn> {
        match role {
            PcRole::Publish => self.publish.as_ref(),
            PcRole::Subscribe => self.subscribe.as_ref(),
        }
    }

    pub(super) fn conn_mut(&mut self, role: PcRole) -> Option<&mut Conn> {
        match role {
            PcRole::Publish => self.publish.as_mut(),
            PcRole::Subscribe => self.subscribe.as_mut(),
        }
    }

    /// RTP received on the engine's track `track` (its public id), in arrival order.
    pub fn rtp_of<'a>(&'a self, track: &'a str) -> impl Iterator<Item = &'a RtpIn> + 'a {
        self.received.iter().filter(move |r| r.track == track)
    }

    /// The subscribe offers received: revision and tracks.
    pub fn offers(&self) -> Vec<(u64, Vec<OfferedTrack>)> {
        self.events
            .iter()
            .filter_map(|(_, ev)| match ev {
                MediaEvent::Offer {
                    revision, tracks, ..
                } => Some((*revision, tracks.clone())),
                _ => None,
            })
            .collect()
    }

    /// The public ids of the engine's tracks (`{participant}-v1`) this client publishes, as the
    /// engine last reported them.
    pub fn published(&self) -> Vec<String> {
        self.events
            .iter()
            .rev()
            .find_map(|(_, ev)| match ev {
                MediaEvent::TracksChanged { tracks } => {
                    Some(tracks.iter().map(|t| t.id.clone()).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The engine's public id of the first track of `kind` this client publishes.
    pub fn published_track(&self, kind: MediaKind) -> Option<String> {
        self.events.iter().rev().find_map(|(_, ev)| match ev {
            MediaEvent::TracksChanged { tracks } => {
                tracks.iter().find(|t| t.kind == kind).map(|t| t.id.clone())
            }
            _ => None,
        })
    }

    /// RTCP received on connection `role`.
    pub fn rtcp_on(&self, role: PcRole) -> impl Iterator<Item = (Instant, &Rtcp)> {
        self.rtcp
            .iter()
            .filter(move |r| r.role == role)
            .map(|r| (r.at, &r.rtcp))
    }

    /// The `Failed` reason the engine gave, if it removed this client.
    pub fn failed(&self) -> Option<(Instant, &str)> {
        self.events.iter().find_map(|(at, ev)| match ev {
            MediaEvent::Failed { reason } => Some((*at, reason.as_str())),
            _ => None,
        })
    }
}

/// Chromium's payload types, which differ from the server's, so forwarding has to map them,
/// and the Opus parameters Chromium offers (without DTX: the server's answer asks for it).
const CHROMIUM_PAYLOAD_TYPES: peer::PayloadTypes = peer::PayloadTypes {
    h264: [(109, "42e01f"), (103, "42001f"), (117, "4d001f")],
    vp8: 96,
    opus: 111,
    opus_fmtp: "minptime=10;useinbandfec=1",
};

/// A client connection as a browser's would be: full ICE with one host candidate at `addr`;
/// the publish side answers NACKs from its send history, the subscribe side sends NACKs. With
/// `dtls_client` it answers an offer as the DTLS client (`a=setup:active`) as Chromium does,
/// else as the server (`rtc`'s default).
pub(super) fn client_pc(
    now: Instant,
    role: PcRole,
    addr: SocketAddr,
    dtls_client: bool,
) -> Result<RTCPeerConnection, Error> {
    let registry = Registry::new().with(
        Slot::from(14_000),
        DeliverRtcp::new(RtcpDelivery::EachPacket),
    );
    let registry = match role {
        PcRole::Publish => registry.with(Slot::NackResponder, NackResponderBuilder::new().build()),
        // A browser reports what it receives transport-wide (TWCC), which drives the
        // server's bandwidth estimate for it (`bwe`).
        PcRole::Subscribe => registry
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build()),
    };
    let answering = if dtls_client {
        RTCDtlsRole::Client
    } else {
        RTCDtlsRole::Unspecified
    };
    let settings = SettingEngineBuilder::new()
        .with_answering_dtls_role(answering)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(peer::media_engine(&CHROMIUM_PAYLOAD_TYPES)?)
        .with_interceptor_registry(registry)
        .build(now)?;
    pc.add_local_candidate(peer::host_candidate(addr)?)?;
    Ok(pc)
}
