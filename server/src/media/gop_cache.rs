//! The latest group of pictures of a source that cannot be asked for keyframes (a camera), for
//! instant start: a new subscriber or player, or one whose decoder lost track, gets the cached
//! keyframe and what followed it at once instead of waiting up to a camera's 2–4 s group.
//!
//! Replayed at their original timestamps, the frames would be played out at their original
//! pace, adding the group's age to the latency for good; so frames before the newest get
//! timestamps 1 ms apart ending at the newest one's, and the receiver decodes them all at once
//! and shows the present picture. Sender reports keep the real mapping, so lip sync is
//! unaffected once live packets flow.

use std::time::Instant;

use super::rewrite::Rewriter;

/// The packets from the latest keyframe on, for external video tracks (instant start).
#[derive(Default)]
pub(super) struct GopCache {
    pub packets: Vec<rtc::rtp::Packet>,
    bytes: usize,
    /// False until a keyframe starts it, and after the group outgrew the limits (then the next
    /// keyframe starts it again).
    valid: bool,
}

/// A group longer than this is not cached; subscribers then wait for the next keyframe.
const GOP_CACHE_BYTES: usize = 8 * 1024 * 1024;
const GOP_CACHE_PACKETS: usize = 8192;

impl GopCache {
    pub fn push(&mut self, pkt: &rtc::rtp::Packet, starts_keyframe: bool) {
        // A keyframe of several slices starts once: only its first packet opens a group.
        let new_frame = self
            .packets
            .last()
            .is_none_or(|l| l.header.timestamp != pkt.header.timestamp);
        if starts_keyframe && new_frame {
            self.packets.clear();
            self.bytes = 0;
            self.valid = true;
        }
        if !self.valid {
            return;
        }
        if self.bytes + pkt.payload.len() > GOP_CACHE_BYTES
            || self.packets.len() >= GOP_CACHE_PACKETS
        {
            self.packets = Vec::new();
            self.bytes = 0;
            self.valid = false;
            return;
        }
        self.bytes += pkt.payload.len();
        self.packets.push(pkt.clone());
    }

    pub fn replayable(&self) -> bool {
        self.valid && !self.packets.is_empty()
    }

    /// Maps the cached packets through `rewriter` (rebased to start with them) and hands each
    /// to `emit` with its sequence number and timestamp, until `emit` says stop. Frames before
    /// the newest get timestamps `tick` apart ending at the newest one's (see the module's notes).
    pub fn replay(
        &self,
        now: Instant,
        tick: u32,
        rewriter: &mut Rewriter,
        mut emit: impl FnMut(&rtc::rtp::Packet, u16, u32) -> bool,
    ) {
        let Some(last) = self.packets.last() else {
            return;
        };
        let frames = 1 + self
            .packets
            .windows(2)
            .filter(|w| w[0].header.timestamp != w[1].header.timestamp)
            .count() as u32;
        rewriter.rebase();
        let (mut frame, mut prev, mut offset) = (0u32, self.packets[0].header.timestamp, None);
        for pkt in &self.packets {
            if pkt.header.timestamp != prev {
                frame += 1;
                prev = pkt.header.timestamp;
            }
            let Some(out) = rewriter.rewrite(now, pkt.header.sequence_number, pkt.header.timestamp)
            else {
                continue;
            };
            // The rewriter's offset: the newest frame keeps its real mapping.
            let off = *offset.get_or_insert(out.ts.wrapping_sub(pkt.header.timestamp));
            let squeeze = (frames - 1 - frame).wrapping_mul(tick);
            let ts = last
                .header
                .timestamp
                .wrapping_add(off)
                .wrapping_sub(squeeze);
            if !emit(pkt, out.seq, ts) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_replayed_group_ends_at_the_present_picture() {
        let mut c = GopCache::default();
        for (i, ts) in [0u32, 0, 3000, 3000, 6000, 6000].into_iter().enumerate() {
            let pkt = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    sequence_number: 500 + i as u16,
                    timestamp: ts,
                    ..Default::default()
                },
                payload: Bytes::from_static(b"x"),
            };
            c.push(&pkt, i == 0);
        }
        let now = Instant::now();
        let mut r = Rewriter::new(90_000, 100, 1000);
        let mut out = vec![];
        c.replay(now, 90, &mut r, |_, seq, ts| {
            out.push((seq, ts));
            true
        });
        assert_eq!(
            out,
            [
                (100, 6820),
                (101, 6820),
                (102, 6910),
                (103, 6910),
                (104, 7000),
                (105, 7000)
            ],
            "continuous sequence numbers; frames 1 ms apart ending at the newest one's real time"
        );
        // Live packets continue from there with the real mapping.
        assert_eq!(
            r.rewrite(now, 506, 9000),
            Some(crate::media::rewrite::Rewritten {
                seq: 106,
                ts: 10_000
            })
        );
        let mut n = 0;
        c.replay(now, 90, &mut Rewriter::new(90_000, 0, 0), |_, _, _| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2, "emit can stop the replay");
    }

    #[test]
    fn gop_cache_starts_at_keyframes_and_gives_up_when_too_long() {
        let pkt = |len: usize| rtc::rtp::Packet {
            header: Default::default(),
            payload: Bytes::from(vec![0u8; len]),
        };
        let mut c = GopCache::default();
        c.push(&pkt(100), false);
        assert!(!c.replayable(), "nothing before the first keyframe");
        c.push(&pkt(100), true);
        c.push(&pkt(100), false);
        assert!(c.replayable());
        assert_eq!(c.packets.len(), 2);
        let mut second_slice = pkt(100);
        second_slice.header.timestamp = 3000;
        c.push(&second_slice, true);
        assert_eq!(c.packets.len(), 1, "a keyframe starts a new group");
        c.push(&second_slice, true);
        assert_eq!(
            c.packets.len(),
            2,
            "another slice of the same keyframe does not"
        );
        c.push(&pkt(GOP_CACHE_BYTES), false);
        assert!(!c.replayable(), "a group over the limit is dropped");
        c.push(&pkt(100), false);
        assert!(!c.replayable(), "and stays dropped until the next keyframe");
        c.push(&pkt(100), true);
        assert!(c.replayable());
    }
}
