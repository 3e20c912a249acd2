//! Sender reports to sinks, translated from the source's latest one (RFC 3550 §6.4.1): the same
//! NTP↔RTP relation, carried forward to now and moved by each sink's timestamp offset, so that
//! receivers line audio and video up exactly as the source captured them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::sender_report::SenderReport;

use super::api::{Output, PlaybackEvent};
use super::connection::Connections;
use super::engine::Engine;
use super::track::SinkKind;

/// How often translated sender reports go out (RFC 3550 §6.2 suggests ~5 s minimum for large
/// sessions; browsers sync faster with 1 s).
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The source's report `(ntp, rtp)` received `elapsed` ago, carried forward to now: NTP is
/// 32.32 fixed-point seconds, RTP counts `clock_rate` per second.
pub(super) fn carried_forward(
    ntp: u64,
    rtp: u32,
    elapsed: Duration,
    clock_rate: u32,
) -> (u64, u32) {
    let secs = elapsed.as_secs_f64();
    (
        ntp.wrapping_add((secs * 4_294_967_296.0) as u64),
        rtp.wrapping_add((secs * clock_rate as f64) as u32),
    )
}

impl Engine {
    pub(super) fn send_sender_reports(&mut self, now: Instant) {
        let Engine {
            tracks,
            conns,
            outputs,
            ..
        } = self;
        let Connections { slots, dirty, .. } = conns;
        for (tk, track) in tracks.iter() {
            for sink in track.sinks.iter().filter(|s| s.rewriter.started()) {
                // A simulcast sink goes by the report of the layer it receives.
                let report = match sink.layer.and_then(|l| track.layers[l].as_ref()) {
                    Some(layer) => layer.sr,
                    None => track.sr,
                };
                let Some((ntp, rtp, at)) = report else {
                    continue;
                };
                let elapsed = now.saturating_duration_since(at);
                let (ntp_now, rtp_now) = carried_forward(ntp, rtp, elapsed, track.codec.clock_rate);
                let rtp_time = sink.rewriter.map_ts(rtp_now);
                match &sink.to {
                    SinkKind::Tap(tap) => {
                        let ev = PlaybackEvent::SenderReport {
                            track: *tk,
                            ntp: ntp_now,
                            rtp: rtp_time,
                        };
                        outputs.push_back(Output::Playback(*tap, ev));
                    }
                    SinkKind::Peer(ps) => {
                        let Some(conn) = slots.get_mut(ps.conn.0 as usize).and_then(Option::as_mut)
                        else {
                            continue;
                        };
                        if !conn.connected() {
                            continue;
                        }
                        let sr = SenderReport {
                            ssrc: ps.ssrc.0,
                            ntp_time: ntp_now,
                            rtp_time,
                            packet_count: ps.sent.packets,
                            octet_count: ps.sent.octets,
                            reports: vec![],
                            profile_extensions: Bytes::new(),
                        };
                        if let Some(mut sender) = conn.pc.rtp_sender(ps.sender) {
                            if sender.write_rtcp(now, vec![Box::new(sr)]).is_ok() && !conn.dirty {
                                conn.dirty = true;
                                dirty.push(ps.conn);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_carried_forward_in_both_clocks() {
        // Half a second later: NTP moves by 2^31, RTP by half the clock rate.
        let (ntp, rtp) = carried_forward(1 << 40, 1000, Duration::from_millis(500), 90_000);
        assert_eq!(ntp, (1 << 40) + (1 << 31));
        assert_eq!(rtp, 1000 + 45_000);
        // Both wrap rather than overflow.
        let (ntp, rtp) = carried_forward(u64::MAX, u32::MAX, Duration::from_secs(1), 48_000);
        assert_eq!(ntp, (1u64 << 32) - 1);
        assert_eq!(rtp, 47_999);
    }
}
