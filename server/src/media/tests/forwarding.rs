//! Forwarding: what a subscriber receives of a publisher's media, and its sender reports.

use std::time::Duration;

use bytes::Bytes;
use rtc::rtcp::sender_report::SenderReport;

use super::{meeting, sdp_pt, sdp_section, sdp_ssrc, track, AUDIO, FRAME, VIDEO};
use crate::media::engine::MediaEvent;
use crate::media::sim::{h264_payloads, opus_payload, ClientId, Rtcp, RtpIn, Sim};
use crate::protocol::{MediaKind, PcRole};

/// The SDP sections of `c`'s last subscribe offer and answer that carry `track`.
fn negotiated(sim: &Sim, c: ClientId, track: &str) -> (String, String) {
    let cl = sim.client(c);
    let offer = cl
        .events
        .iter()
        .rev()
        .find_map(|(_, ev)| match ev {
            MediaEvent::Offer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .expect("an offer");
    let (_, answer) = cl.answers.last().expect("an answer");
    let offered = sdp_section(&offer, Some(track), None).expect("the track is offered");
    let mid = offered
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .expect("a mid");
    let answered = sdp_section(answer, None, Some(mid)).expect("the track is answered");
    (offered.to_owned(), answered.to_owned())
}

#[test]
fn subscribers_get_the_publishers_packets_in_order_on_their_own_ssrc_and_payload_type() {
    let (mut sim, alice, subs) = meeting(11, &["bob"]);
    let bob = subs[0];
    let (video, audio) = (
        track(&sim, alice, MediaKind::Video),
        track(&sim, alice, MediaKind::Audio),
    );
    let before = sim.client(bob).received.len();
    let mut want_video: Vec<(Bytes, u32, bool)> = Vec::new();
    let mut want_audio: Vec<(Bytes, u32)> = Vec::new();
    for i in 0..90 {
        // A keyframe every 30 frames; frames of one to three packets (FU-A).
        let (key, packets) = (i % 30 == 0, 1 + i % 3);
        let sent = sim.send_video(alice, VIDEO, key, packets);
        let payloads = h264_payloads(key, sent.frame, packets);
        let n = payloads.len();
        for (j, p) in payloads.into_iter().enumerate() {
            want_video.push((p, sent.ts, j + 1 == n));
        }
        let a = sim.send_audio(alice, AUDIO);
        want_audio.push((opus_payload(a.frame), a.ts));
        sim.run_for(FRAME);
    }
    sim.run_for(Duration::from_millis(100));

    let got = &sim.client(bob).received[before..];
    let local = &sim.client(alice).tracks;
    for (id, kind, want) in [
        (&video, MediaKind::Video, want_video),
        (
            &audio,
            MediaKind::Audio,
            want_audio
                .into_iter()
                .map(|(p, ts)| (p, ts, false))
                .collect(),
        ),
    ] {
        let rx: Vec<&RtpIn> = got.iter().filter(|r| &r.track == id).collect();
        assert_eq!(rx.len(), want.len(), "{kind:?}: every packet, once");
        let (offered, answered) = negotiated(&sim, bob, id);
        let (ssrc, pt) = match kind {
            MediaKind::Video => (
                sdp_ssrc(&offered),
                sdp_pt(&answered, "H264/", Some("profile-level-id=42e01f")),
            ),
            MediaKind::Audio => (sdp_ssrc(&offered), sdp_pt(&answered, "opus/", None)),
        };
        let (ssrc, pt) = (ssrc.expect("an offered SSRC"), pt.expect("an answered pt"));
        let publisher = &local[if kind == MediaKind::Video {
            VIDEO
        } else {
            AUDIO
        }];
        assert_ne!(ssrc, publisher.ssrc, "{kind:?}: the subscriber's own SSRC");
        if kind == MediaKind::Video {
            assert_ne!(Some(pt), publisher.pt, "the subscriber's own payload type");
        }
        let (seq0, ts0) = (rx[0].header.sequence_number, rx[0].header.timestamp);
        for (i, (r, (payload, ts, marker))) in rx.iter().zip(&want).enumerate() {
            let h = &r.header;
            assert_eq!(
                &r.payload, payload,
                "{kind:?} packet {i}: the publisher's payload"
            );
            assert_eq!(h.ssrc, ssrc, "{kind:?} packet {i}: ssrc");
            assert_eq!(h.payload_type, pt, "{kind:?} packet {i}: payload type");
            assert_eq!(
                h.sequence_number,
                seq0.wrapping_add(i as u16),
                "{kind:?} packet {i}: in order, no gaps"
            );
            assert_eq!(
                h.timestamp.wrapping_sub(ts0),
                ts.wrapping_sub(want[0].1),
                "{kind:?} packet {i}: the publisher's timing"
            );
            // The publisher's header extensions are not forwarded; the only one is the
            // transport-wide sequence number of the subscriber's own connection (`bwe`).
            assert!(
                h.extensions.iter().all(|e| e.payload.len() == 2) && h.extensions.len() <= 1,
                "{kind:?} packet {i}: header extensions dropped: {:?}",
                h.extensions
            );
            if kind == MediaKind::Video {
                assert_eq!(h.marker, *marker, "video packet {i}: marker");
            }
        }
    }
}

/// NTP time (32.32 fixed point) as seconds.
fn ntp_secs(ntp: u64) -> f64 {
    ntp as f64 / 4_294_967_296.0
}

#[test]
fn sender_reports_reach_subscribers_with_the_publishers_clock_moved_by_the_offset() {
    let (mut sim, alice, subs) = meeting(12, &["bob"]);
    let bob = subs[0];
    let video = track(&sim, alice, MediaKind::Video);
    super::stream(&mut sim, alice, 5);
    // The subscription's timestamp offset, from the last frame sent and received.
    let last = sim
        .client(bob)
        .rtp_of(&video)
        .last()
        .expect("video")
        .clone();
    let local = sim.client(alice).tracks[VIDEO].clone();
    let offset = last.header.timestamp.wrapping_sub(local.ts);

    let (ntp, rtp) = (0xe8a1_2345_8000_0000u64, local.ts);
    let sr = SenderReport {
        ssrc: local.ssrc,
        ntp_time: ntp,
        rtp_time: rtp,
        packet_count: 100,
        octet_count: 10_000,
        reports: vec![],
        profile_extensions: Bytes::new(),
    };
    let sent_at = sim.now;
    sim.send_rtcp(alice, PcRole::Publish, vec![Box::new(sr)]);
    // No media meanwhile: the reports must come from the publisher's report alone.
    sim.run_for(Duration::from_millis(2500));

    let reports: Vec<(u64, u32)> = sim
        .client(bob)
        .rtcp_on(PcRole::Subscribe)
        .filter(|(at, _)| *at > sent_at)
        .filter_map(|(_, r)| match r {
            Rtcp::SenderReport { ssrc, ntp, rtp, .. } if *ssrc == last.header.ssrc => {
                Some((*ntp, *rtp))
            }
            _ => None,
        })
        .collect();
    assert!(
        reports.len() >= 2,
        "a report a second for the video track: {reports:?}"
    );
    for &(sub_ntp, sub_rtp) in &reports {
        let elapsed = ntp_secs(sub_ntp.wrapping_sub(ntp));
        assert!(
            (0.0..2.6).contains(&elapsed),
            "NTP time is the publisher's clock ({elapsed} s after its report)"
        );
        let want = rtp
            .wrapping_add(offset)
            .wrapping_add((elapsed * 90_000.0).round() as u32);
        let diff = sub_rtp.wrapping_sub(want) as i32;
        assert!(
            diff.abs() <= 1,
            "RTP time {sub_rtp} = the publisher's {rtp} + offset {offset} + {elapsed} s \
             (off by {diff})"
        );
    }
}
