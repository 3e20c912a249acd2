//! Negotiation: the publish connection's answer, the subscribe connection's offers and the
//! answers to them, payload types per subscriber, and candidates.
//!
//! Two connections per participant, each with exactly one offerer, so glare cannot happen:
//! **publish** (the browser offers, the server answers) and **subscribe** (the server offers,
//! the browser answers). Changes that arrive while a subscribe offer is outstanding are folded
//! into the next one. Offers carry a revision; only the answer to the latest one counts.
//!
//! The answer parser below reads only the codecs an answer accepts per m-line, which `rtc` does
//! not tell apart from the ones it offered; it is written here because that is one loop over
//! `a=rtpmap`/`a=fmtp` lines of one section, where a full SDP crate would parse all of it again
//! after `rtc` has.

use std::time::Instant;

use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;

use super::api::{MediaEvent, Output, ParticipantKey, Ssrc, TrackKey};
use super::connection::PeerKey;
use super::engine::Engine;
use super::keyframe::VideoCodec;
use super::peer;
use super::rewrite::Rewriter;
use super::track::{PeerSink, Sent, Sink, SinkKind, Source};
use crate::protocol::{ErrorCode, IceCandidate, MediaKind, OfferedTrack, PcRole};

impl Engine {
    /// A browser's publish offer: answered on its publish connection (made on first use).
    pub(super) fn publish(&mut self, now: Instant, key: ParticipantKey, sdp: String) {
        let Some(b) = self.members.get(&key).and_then(|m| m.browser()) else {
            return;
        };
        let existing = b.publish;
        let offer = match RTCSessionDescription::offer(sdp) {
            Ok(o) => o,
            Err(e) => {
                let message = format!("the publish offer is not valid SDP: {e}");
                return self.notify_error(key, ErrorCode::BadSdp, message);
            }
        };
        let pk = match existing {
            Some(pk) => pk,
            None => match self.new_conn(now, key, PcRole::Publish) {
                Ok(pk) => {
                    if let Some(b) = self.members.get_mut(&key).and_then(|m| m.browser_mut()) {
                        b.publish = Some(pk);
                    }
                    pk
                }
                Err(e) => {
                    let message = format!("could not create a peer connection: {e}");
                    return self.notify_error(key, ErrorCode::Internal, message);
                }
            },
        };
        let Some(conn) = self.conns.get_mut(pk) else {
            return;
        };
        let result = (|| {
            conn.pc.set_remote_description(now, offer)?;
            let answer = conn.pc.create_answer(None)?;
            conn.pc.set_local_description(now, answer.clone())?;
            // `rtc` accepts only the answer it made as the local description; the Opus
            // parameters are for the browser's encoder alone (`rtc` neither encodes nor
            // decodes), so the browser gets them and `rtc` keeps its own copy.
            Ok::<_, rtc::shared::error::Error>(with_opus_params(&answer.sdp))
        })();
        match result {
            Ok(sdp) => {
                self.sync_ice(pk);
                self.notify(key, MediaEvent::Answer { sdp });
                self.trickle_candidates(pk, key, PcRole::Publish);
                self.unpublish_ended(now, pk);
            }
            Err(e) => {
                let message = format!("cannot accept this publish offer: {e}");
                self.notify_error(key, ErrorCode::BadSdp, message);
            }
        }
        self.service(now, pk);
    }

    /// Unpublishes the tracks of publish connection `pk` that its latest offer no longer sends
    /// (the browser removed them: their m-line is now inactive or receive-only, or stopped).
    /// `rtc` 0.21.1 does not report such a track closed.
    fn unpublish_ended(&mut self, now: Instant, pk: PeerKey) {
        let Some(conn) = self.conns.get_mut(pk) else {
            return;
        };
        let mut ended = Vec::new();
        for (rtc_id, tk) in &conn.inbound {
            let Some(Source::Peer { receiver, .. }) = self.tracks.get(tk).map(|t| &t.source) else {
                continue;
            };
            let id: rtc::rtp_transceiver::RTCRtpTransceiverId = (*receiver).into();
            let receiving = conn.pc.rtp_transceiver(id).is_some_and(|t| {
                matches!(
                    t.current_direction(),
                    RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv
                )
            });
            if !receiving {
                ended.push((rtc_id.clone(), *tk));
            }
        }
        for (rtc_id, tk) in ended {
            if let Some(conn) = self.conns.get_mut(pk) {
                conn.inbound.remove(&rtc_id);
            }
            self.unpublish(now, tk, true);
        }
    }

    /// Sends our host candidates once per connection, after its first local description.
    pub(super) fn trickle_candidates(&mut self, pk: PeerKey, owner: ParticipantKey, role: PcRole) {
        let Some(conn) = self.conns.get_mut(pk) else {
            return;
        };
        if std::mem::replace(&mut conn.trickled, true) {
            return;
        }
        let lines = self
            .candidates
            .iter()
            .map(|a| peer::host_candidate(*a))
            .chain(
                self.tcp_candidates
                    .iter()
                    .map(|a| peer::tcp_host_candidate(*a)),
            )
            .collect::<Vec<_>>();
        for init in lines.into_iter().flatten() {
            let candidate = IceCandidate {
                candidate: init.candidate,
                sdp_mid: Some("0".to_owned()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            };
            let ev = MediaEvent::Candidate {
                pc: role,
                candidate,
            };
            self.notify(owner, ev);
        }
    }

    pub(super) fn remote_candidate(&mut self, key: ParticipantKey, role: PcRole, c: IceCandidate) {
        if c.candidate.is_empty() {
            return;
        }
        let Some(b) = self.members.get(&key).and_then(|m| m.browser()) else {
            return;
        };
        let pk = match role {
            PcRole::Publish => b.publish,
            PcRole::Subscribe => Some(b.subscribe),
        };
        let Some(conn) = pk.and_then(|pk| self.conns.get_mut(pk)) else {
            return;
        };
        if let Some(addr) = relay_address(&c.candidate) {
            if !conn.relay_addrs.contains(&addr) && conn.relay_addrs.len() < 16 {
                conn.relay_addrs.push(addr);
            }
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        // ICE-lite learns addresses from the peer's checks; a candidate we cannot use (mDNS
        // names, TCP) is harmless.
        if let Err(e) = conn.pc.add_remote_candidate(init) {
            tracing::debug!(error = %e, "remote candidate not added");
        }
    }

    /// Adds a sender for `tk` to `sub`'s subscribe connection (negotiated by the next offer).
    pub(super) fn subscribe(&mut self, sub: ParticipantKey, tk: TrackKey) {
        let Some(owner_id) = self
            .tracks
            .get(&tk)
            .and_then(|t| self.members.get(&t.owner))
            .map(|m| m.id.to_string())
        else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        let Some(b) = self.members.get_mut(&sub).and_then(|m| m.browser_mut()) else {
            return;
        };
        if b.subscribed.contains_key(&track.public_id) {
            return;
        }
        let Some(conn) = self.conns.get_mut(b.subscribe) else {
            return;
        };
        let ssrc = Ssrc(self.rng.random());
        let kind = match track.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let local = MediaStreamTrack::new(
            owner_id,
            track.public_id.clone(),
            track.public_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc.0),
                    ..Default::default()
                },
                active: true,
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        let sender = match conn.pc.add_track(local) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(track = %track.public_id, error = %e, "could not add track to subscriber");
                return;
            }
        };
        if let Some(fallback) = peer::audio_fallback(&track.codec) {
            // Offered alone, a G.711 line that the subscriber refuses leaves its connection
            // with no audio codec at all (`rtc` then negotiates nothing for audio, and every
            // later audio track fails). Offering Opus beside it keeps audio negotiable; a
            // subscriber that picks Opus on this line simply does not get this track.
            let id: rtc::rtp_transceiver::RTCRtpTransceiverId = sender.into();
            if let Some(mut t) = conn.pc.rtp_transceiver(id) {
                if let Err(e) = t.set_codec_preferences(fallback) {
                    tracing::debug!(error = %e, "codec preferences not set");
                }
            }
        }
        let rewriter = Rewriter::new(track.codec.clock_rate, self.rng.random(), self.rng.random());
        let to = SinkKind::Peer(PeerSink {
            subscriber: sub,
            conn: b.subscribe,
            sender,
            ssrc,
            pt: None,
            negotiated: false,
            offered_in: None,
            sent: Sent::default(),
        });
        track.sinks.push(Sink::new(to, rewriter, track.kind));
        b.subscribed.insert(track.public_id.clone(), tk);
    }

    /// Sends a new subscribe offer, or remembers to once the outstanding one is answered.
    pub(super) fn renegotiate(&mut self, now: Instant, key: ParticipantKey) {
        let Some(b) = self.members.get_mut(&key).and_then(|m| m.browser_mut()) else {
            return;
        };
        if b.awaiting_answer.is_some() {
            b.renegotiate = true;
            return;
        }
        b.renegotiate = false;
        let spk = b.subscribe;
        let subscribed: Vec<TrackKey> = b.subscribed.values().copied().collect();
        let tracks: Vec<OfferedTrack> = subscribed
            .iter()
            .filter_map(|tk| self.tracks.get(tk))
            .map(|t| OfferedTrack {
                participant: self
                    .members
                    .get(&t.owner)
                    .map(|m| m.id.to_string())
                    .unwrap_or_default(),
                track: t.public_id.clone(),
                kind: t.kind,
            })
            .collect();
        let Some(conn) = self.conns.get_mut(spk) else {
            return;
        };
        let result = (|| {
            let offer = conn.pc.create_offer(None)?;
            conn.pc.set_local_description(now, offer.clone())?;
            Ok::<_, rtc::shared::error::Error>(offer.sdp)
        })();
        match result {
            Ok(sdp) => {
                self.sync_ice(spk);
                let Some(b) = self.members.get_mut(&key).and_then(|m| m.browser_mut()) else {
                    return;
                };
                b.revision += 1;
                b.awaiting_answer = Some(b.revision);
                let revision = b.revision;
                for tk in &subscribed {
                    let sink = self.tracks.get_mut(tk).and_then(|t| t.sink_of_mut(key));
                    if let Some(ps) = sink.and_then(Sink::peer_mut) {
                        ps.offered_in.get_or_insert(revision);
                    }
                }
                let ev = MediaEvent::Offer {
                    sdp,
                    revision,
                    tracks,
                };
                self.outputs.push_back(Output::Event(key, ev));
                self.trickle_candidates(spk, key, PcRole::Subscribe);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not create a subscribe offer");
            }
        }
        self.service(now, spk);
    }

    pub(super) fn subscribe_answer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        sdp: String,
        revision: u64,
    ) {
        let Some(b) = self.members.get(&key).and_then(|m| m.browser()) else {
            return;
        };
        if b.awaiting_answer != Some(revision) {
            tracing::debug!(revision, expected = ?b.awaiting_answer, "stale subscribe answer ignored");
            return;
        }
        let spk = b.subscribe;
        let subscribed: Vec<TrackKey> = b.subscribed.values().copied().collect();
        let answer_sdp = sdp.clone();
        let answer = match RTCSessionDescription::answer(sdp) {
            Ok(a) => a,
            Err(e) => {
                let message = format!("the subscribe answer is not valid SDP: {e}");
                return self.notify_error(key, ErrorCode::BadSdp, message);
            }
        };
        let Some(conn) = self.conns.get_mut(spk) else {
            return;
        };
        if let Err(e) = conn.pc.set_remote_description(now, answer) {
            let message = format!("cannot apply the subscribe answer: {e}");
            return self.notify_error(key, ErrorCode::BadSdp, message);
        }
        // Transport-wide sequence numbers, if the subscriber reports on them (`twcc`).
        match super::twcc::ext_id(&answer_sdp) {
            Some(id) if conn.twcc.as_ref().is_none_or(|t| t.ext_id != id) => {
                conn.twcc = Some(super::twcc::TwccSend::new(id, now));
            }
            Some(_) => {}
            None => conn.twcc = None,
        }
        let mut rejected = Vec::new();
        for tk in &subscribed {
            let Some(track) = self.tracks.get_mut(tk) else {
                continue;
            };
            let codec = track.codec.clone();
            let public_id = track.public_id.clone();
            let Some(s) = track.sink_of_mut(key).and_then(Sink::peer_mut) else {
                continue;
            };
            // Senders added after the answered offer went out wait for the next one.
            if s.negotiated || s.offered_in.is_none_or(|r| r > revision) {
                continue;
            }
            // The answer says what the subscriber takes on this sender's line (`rtc`'s sender
            // parameters list what was offered, accepted or not).
            let tid: rtc::rtp_transceiver::RTCRtpTransceiverId = s.sender.into();
            let mid = conn.pc.rtp_transceiver(tid).and_then(|t| t.mid().clone());
            let codecs = match mid.and_then(|mid| answered_codecs(&answer_sdp, &mid)) {
                Some(codecs) => codecs,
                None => {
                    let Some(mut sender) = conn.pc.rtp_sender(s.sender) else {
                        continue;
                    };
                    sender.get_parameters().rtp_parameters.codecs.clone()
                }
            };
            s.pt = pick_payload_type(&codec, &codecs);
            s.negotiated = true;
            if s.pt.is_none() {
                tracing::warn!(track = %public_id, codec = %codec.mime_type, "subscriber cannot receive this codec; track not forwarded");
                rejected.push(s.sender);
            }
        }
        // A sender whose codec the subscriber refused has no codecs left: `rtc` cannot put it
        // in the next offer, and would hand its transceiver to the next track of that kind.
        // Stopping it takes it out of both (its m-line stays, rejected with port 0).
        for sender in rejected {
            if let Err(e) = conn.pc.remove_track(sender) {
                tracing::debug!(error = %e, "could not remove a refused sender");
            }
            let id: rtc::rtp_transceiver::RTCRtpTransceiverId = sender.into();
            if let Some(mut t) = conn.pc.rtp_transceiver(id) {
                if let Err(e) = t.stop() {
                    tracing::debug!(error = %e, "could not stop a refused sender");
                }
            }
        }
        let connected = conn.connected();
        let Some(b) = self.members.get_mut(&key).and_then(|m| m.browser_mut()) else {
            return;
        };
        b.awaiting_answer = None;
        let again = b.renegotiate;
        self.service(now, spk);
        // New subscriptions on a connection that is already up can start now. A connection
        // still being set up asks when it connects: a keyframe sent before that would be lost
        // to it and would use up the publisher's request window.
        if connected {
            self.request_keyframes_for(now, key, crate::metrics::KeyframeCause::Start);
        }
        if again {
            self.renegotiate(now, key);
        }
    }
}

/// The address of a relay candidate line (`candidate:… <ip> <port> typ relay …`): a TURN
/// server's relayed address for the peer.
pub(super) fn relay_address(line: &str) -> Option<std::net::SocketAddr> {
    let line = line.strip_prefix("candidate:").unwrap_or(line);
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    if f.get(6..8)? != ["typ", "relay"] {
        return None;
    }
    let ip: std::net::IpAddr = f.get(4)?.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, f.get(5)?.parse().ok()?))
}

/// The publish answer with the server's Opus parameters ([`peer::OPUS_FMTP`]) on every Opus
/// payload type. `rtc` answers with the offer's `a=fmtp` line as it is, and Chromium offers
/// `minptime=10;useinbandfec=1`: without this the publisher would never use DTX, which only
/// the answer can ask for (RFC 7587 §6.1: `usedtx` says what the receiver prefers). The
/// offer's other parameters (`stereo`, …) stay; ours replace theirs where both say something.
pub(super) fn with_opus_params(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let pt_of = |line: &str, attr: &str| -> Option<String> {
        let (pt, _) = line.strip_prefix(attr)?.split_once(' ')?;
        Some(pt.to_owned())
    };
    let opus_pts: Vec<String> = sdp
        .lines()
        .filter(|l| {
            l.split_once(' ').is_some_and(|(_, map)| {
                map.get(..5)
                    .is_some_and(|m| m.eq_ignore_ascii_case("opus/"))
            })
        })
        .filter_map(|l| pt_of(l.trim_end(), "a=rtpmap:"))
        .collect();
    if opus_pts.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + 64);
    // Per media section: its Opus payload types, and those that had an `a=fmtp` line.
    let (mut mapped, mut parameterized) = (Vec::new(), Vec::new());
    let end_section =
        |out: &mut String, mapped: &mut Vec<String>, parameterized: &mut Vec<String>| {
            for pt in mapped.drain(..).filter(|pt| !parameterized.contains(pt)) {
                out.push_str(&format!("a=fmtp:{pt} {}{eol}", peer::OPUS_FMTP));
            }
            parameterized.clear();
        };
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare.starts_with("m=") {
            end_section(&mut out, &mut mapped, &mut parameterized);
        }
        if let Some(pt) = pt_of(bare, "a=rtpmap:").filter(|pt| opus_pts.contains(pt)) {
            mapped.push(pt);
        }
        if let Some(pt) = pt_of(bare, "a=fmtp:").filter(|pt| opus_pts.contains(pt)) {
            let params = bare["a=fmtp:".len() + pt.len() + 1..].trim();
            out.push_str(&format!(
                "a=fmtp:{pt} {}{eol}",
                merge_fmtp(params, peer::OPUS_FMTP)
            ));
            parameterized.push(pt);
            continue;
        }
        out.push_str(line);
    }
    end_section(&mut out, &mut mapped, &mut parameterized);
    out
}

/// `ours` laid over `theirs` (`a=fmtp` parameter lists): their parameters in their order with
/// our values where we have one, then ours that they lack.
fn merge_fmtp(theirs: &str, ours: &str) -> String {
    let mut merged: Vec<(String, String)> = theirs
        .split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    for kv in ours.split(';') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match merged.iter_mut().find(|(mk, _)| mk.eq_ignore_ascii_case(k)) {
            Some(slot) => slot.1 = v.to_owned(),
            None => merged.push((k.to_owned(), v.to_owned())),
        }
    }
    merged
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

pub(super) fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

/// Picks the payload type on a subscriber's connection for a publisher's codec: the same MIME
/// type; for H.264 packetization-mode 1 and, if offered, the same profile.
pub(super) fn pick_payload_type(
    codec: &RTCRtpCodec,
    offered: &[RTCRtpCodecParameters],
) -> Option<u8> {
    let same_mime =
        |c: &&RTCRtpCodecParameters| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type);
    if VideoCodec::from_mime(&codec.mime_type) == VideoCodec::H264 {
        let mode = |f: &str| {
            fmtp_param(f, "packetization-mode")
                .unwrap_or("0")
                .to_owned()
        };
        let profile = |f: &str| {
            fmtp_param(f, "profile-level-id")
                .map(|p| p.to_ascii_lowercase())
                .unwrap_or_default()
        };
        let want_mode = mode(&codec.sdp_fmtp_line);
        let want_profile = profile(&codec.sdp_fmtp_line);
        let h264: Vec<_> = offered
            .iter()
            .filter(same_mime)
            .filter(|c| mode(&c.rtp_codec.sdp_fmtp_line) == want_mode)
            .collect();
        return h264
            .iter()
            .find(|c| profile(&c.rtp_codec.sdp_fmtp_line) == want_profile)
            .or(h264.first())
            .map(|c| c.payload_type);
    }
    offered.iter().find(same_mime).map(|c| c.payload_type)
}

/// The codecs an answer accepts on the m-line `mid` (none when it refuses the line with port
/// 0), or `None` when the answer has no such line. Subscribers may refuse codecs the server
/// offers (a client without G.711, say), and `rtc` does not tell a refused sender from an
/// accepted one.
fn answered_codecs(sdp: &str, mid: &str) -> Option<Vec<RTCRtpCodecParameters>> {
    let section = sdp.split("\nm=").skip(1).find(|sec| {
        sec.lines()
            .any(|l| l.trim_end().strip_prefix("a=mid:") == Some(mid))
    })?;
    let mut head = section.split_whitespace();
    let kind = head.next().unwrap_or_default();
    if head.next() == Some("0") {
        return Some(Vec::new());
    }
    let attr = |name: &'static str| {
        section.lines().filter_map(move |l| {
            let (pt, value) = l.trim_end().strip_prefix(name)?.split_once(' ')?;
            Some((pt.parse::<u8>().ok()?, value.trim()))
        })
    };
    let codecs = attr("a=rtpmap:")
        .map(|(pt, map)| {
            let mut parts = map.split('/');
            let name = parts.next().unwrap_or_default();
            let clock_rate = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let fmtp = attr("a=fmtp:")
                .find(|(p, _)| *p == pt)
                .map(|(_, f)| f.to_owned())
                .unwrap_or_default();
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: format!("{kind}/{name}"),
                    clock_rate,
                    channels,
                    sdp_fmtp_line: fmtp,
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            }
        })
        .collect();
    Some(codecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: fmtp.into(),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
        }
    }

    #[test]
    fn payload_type_follows_codec_and_profile() {
        let offered = vec![
            codec("video/VP8", "", 96),
            codec(
                "video/H264",
                "packetization-mode=0;profile-level-id=42e01f",
                100,
            ),
            codec(
                "video/H264",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
                104,
            ),
            codec(
                "video/H264",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                102,
            ),
        ];
        let publisher = codec(
            "video/h264",
            "packetization-mode=1;profile-level-id=42E01F",
            127,
        )
        .rtp_codec;
        assert_eq!(pick_payload_type(&publisher, &offered), Some(102));
        let main = codec(
            "video/H264",
            "packetization-mode=1;profile-level-id=4d001f",
            1,
        )
        .rtp_codec;
        assert_eq!(
            pick_payload_type(&main, &offered),
            Some(104),
            "another mode-1 profile rather than nothing"
        );
        let vp8 = codec("video/VP8", "", 120).rtp_codec;
        assert_eq!(pick_payload_type(&vp8, &offered), Some(96));
        let av1 = codec("video/AV1", "", 45).rtp_codec;
        assert_eq!(pick_payload_type(&av1, &offered), None);
    }

    #[test]
    fn publish_answers_ask_for_opus_fec_and_dtx() {
        // Chromium's offer as `rtc` answers it: the offer's Opus parameters, verbatim.
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
            a=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1;stereo=1\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:1\r\na=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=rtpmap:111 OPUS/48000/2\r\n";
        let out = with_opus_params(answer);
        let fmtp = |mid: &str, pt: &str| {
            let section = crate::media::tests::sdp_section(&out, None, Some(mid)).unwrap();
            let prefix = format!("a=fmtp:{pt} ");
            let lines: Vec<&str> = section
                .lines()
                .filter_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
                .collect();
            assert!(
                lines.len() <= 1,
                "one fmtp line per payload type: {lines:?}"
            );
            lines.first().map(|l| l.to_string())
        };
        assert_eq!(
            fmtp("0", "111").as_deref(),
            Some("minptime=10;useinbandfec=1;stereo=1;usedtx=1"),
            "ours added, theirs kept"
        );
        assert_eq!(
            fmtp("2", "111").as_deref(),
            Some(peer::OPUS_FMTP),
            "a line without fmtp gets ours"
        );
        assert_eq!(
            fmtp("1", "102").as_deref(),
            Some("packetization-mode=1;profile-level-id=42e01f"),
            "other codecs untouched"
        );
        assert!(!out.contains("\r\r") && out.ends_with("\r\n"));
        assert_eq!(
            with_opus_params(&out),
            out,
            "applying it twice changes nothing"
        );
        let no_opus = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        assert_eq!(with_opus_params(no_opus), no_opus);
        assert_eq!(
            merge_fmtp("usedtx=0; minptime=20", "usedtx=1;minptime=10"),
            "usedtx=1;minptime=10"
        );
        assert_eq!(merge_fmtp("", "a=1"), "a=1");
    }

    #[test]
    fn relay_candidates_are_recognised() {
        assert_eq!(
            relay_address(
                "candidate:1 1 udp 41885439 192.0.2.1 50000 typ relay raddr 0.0.0.0 rport 0"
            ),
            Some("192.0.2.1:50000".parse().unwrap())
        );
        assert_eq!(
            relay_address("1 1 udp 41885439 ::1 5 typ relay"),
            Some("[::1]:5".parse().unwrap())
        );
        assert_eq!(
            relay_address("candidate:1 1 udp 2130706431 192.0.2.1 5 typ host"),
            None
        );
        assert_eq!(
            relay_address("candidate:1 1 udp 1 x.local 5 typ relay"),
            None
        );
        assert_eq!(relay_address(""), None);
    }

    #[test]
    fn answers_that_refuse_a_codec_are_seen() {
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n\
            m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:2\r\n";
        // Whether the subscriber takes `mime` on line `mid`, as the engine decides it.
        let answer_accepts = |answer: &str, mid: &str, mime: &str| {
            let fmtp = "packetization-mode=1;profile-level-id=42e01f";
            answered_codecs(answer, mid).is_none_or(|codecs| {
                pick_payload_type(&codec(mime, fmtp, 0).rtp_codec, &codecs).is_some()
            })
        };
        assert!(answer_accepts(answer, "0", "video/H264"));
        assert!(answer_accepts(answer, "1", "audio/opus"));
        assert!(
            !answer_accepts(answer, "1", "audio/PCMU"),
            "opus only on that line"
        );
        assert!(!answer_accepts(answer, "2", "audio/PCMU"), "port 0 refuses");
        assert!(
            answer_accepts(answer, "9", "audio/PCMU"),
            "unknown mid: not judged here"
        );
        let video = answered_codecs(answer, "0").unwrap();
        assert_eq!(video[0].payload_type, 102);
        assert!(video[0].rtp_codec.sdp_fmtp_line.contains("42e01f"));
        assert_eq!(
            pick_payload_type(
                &codec(
                    "video/H264",
                    "packetization-mode=1;profile-level-id=42e01f",
                    1
                )
                .rtp_codec,
                &video
            ),
            Some(102),
            "the answer's payload type"
        );
    }
}
