//! The dominant speaker of a room: who is talking, from the audio level publishers put on their
//! audio packets (RFC 6464, `urn:ietf:params:rtp-hdrext:ssrc-audio-level`), chosen with
//! hysteresis so that the choice follows the conversation instead of every cough.
//!
//! Per participant, the loudness of its packets is kept in [`BUCKET`]-long buckets over the
//! last [`WINDOW`] of them: a bucket's value is the mean of `QUIET - level` over its packets
//! (levels are −dBov, so that is dB above the quietest level that counts as sound), 0 for a
//! bucket without packets (Opus DTX sends one packet per 400 ms in silence) or whose packets
//! were all quieter than [`QUIET`]. A participant's score is the sum over the window. Once per
//! bucket the room's loudest participant is compared with the current speaker:
//!
//! - nobody wins below [`MIN_SCORE`], so silence, DTX and background noise never do, and a
//!   room that goes quiet keeps its last speaker;
//! - with no current speaker (a new room, or the speaker left), the loudest wins at once;
//! - otherwise the loudest must beat the current speaker's score by [`MARGIN`] in every
//!   evaluation for [`SWITCH_AFTER`]: a word or a laugh from someone else does not take over,
//!   a sentence does.
//!
//! Sans-I/O: told the time with each packet; per packet it only adds to a bucket (nothing
//! allocates but the first packet of a participant).

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering::Relaxed;

use rtc::rtp::header::Header;

use super::api::{MediaEvent, ParticipantKey};
use super::engine::Engine;
use crate::names::RoomName;

/// How long one bucket of levels lasts, and how often the choice is reconsidered.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Buckets per participant: the choice looks at the last second.
pub const WINDOW: usize = 10;
/// Levels quieter than −60 dBov count as silence: a quiet room's noise floor is below it,
/// speech into a microphone after the browser's gain control (around −20 to −40 dBov) well
/// above it.
pub const QUIET: u8 = 60;
/// The least score that can win: 20 dB above [`QUIET`] for 3 of the 10 buckets, or a
/// quieter voice for longer.
pub const MIN_SCORE: u32 = 60;
/// How much louder (in score) than the current speaker someone else must be to take over: on
/// average 6 dB louder over the whole second, or talking for two more tenths of it.
pub const MARGIN: u32 = 60;
/// How long someone else must keep beating the current speaker to take over.
pub const SWITCH_AFTER: Duration = Duration::from_millis(1000);

const SWITCH_BUCKETS: u64 = (SWITCH_AFTER.as_millis() / BUCKET.as_millis()) as u64;

/// The level (−dBov, 0 loudest, 127 silence) an RTP packet carries in the audio-level header
/// extension numbered `id` (RFC 6464 §3: the V bit, then 7 bits of level), if it carries one.
pub fn audio_level(header: &Header, id: u8) -> Option<u8> {
    if !header.extension {
        return None;
    }
    let ext = header.extensions.iter().find(|e| e.id == id)?;
    ext.payload.first().map(|b| b & 0x7f)
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket (since the detector's epoch) this slot holds; a slot holding an older one
    /// counts as empty.
    number: u64,
    sum: u32,
    packets: u32,
}

impl Bucket {
    fn value(&self) -> u32 {
        self.sum.checked_div(self.packets).unwrap_or(0)
    }
}

struct Speaker {
    key: ParticipantKey,
    buckets: [Bucket; WINDOW],
}

impl Speaker {
    /// The sum of the values of the `WINDOW` buckets before bucket `now`.
    fn score(&self, now: u64) -> u32 {
        let from = now.saturating_sub(WINDOW as u64);
        self.buckets
            .iter()
            .filter(|b| b.number >= from && b.number < now)
            .map(Bucket::value)
            .sum()
    }
}

/// One room's dominant speaker.
#[derive(Default)]
pub struct DominantSpeaker {
    speakers: Vec<Speaker>,
    current: Option<ParticipantKey>,
    /// Who has been beating the current speaker, since which bucket.
    challenger: Option<(ParticipantKey, u64)>,
    epoch: Option<Instant>,
    /// The bucket the choice was last made in.
    evaluated: u64,
}

impl DominantSpeaker {
    /// The current dominant speaker, if anyone has spoken.
    pub fn current(&self) -> Option<ParticipantKey> {
        self.current
    }

    /// An audio packet of `key` at `now` with audio level `level`. Returns the new dominant
    /// speaker when the choice changed.
    pub fn hear(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        level: u8,
    ) -> Option<Option<ParticipantKey>> {
        let epoch = *self.epoch.get_or_insert(now);
        let n = (now.saturating_duration_since(epoch).as_millis() / BUCKET.as_millis()) as u64;
        if n < self.evaluated {
            // Late for a bucket already judged (packets of several connections meet here in
            // the order the engine read them): it would only blur the next one.
            return None;
        }
        let changed = if n > self.evaluated {
            self.evaluated = n;
            self.choose(n)
        } else {
            None
        };
        let i = match self.speakers.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                self.speakers.push(Speaker {
                    key,
                    buckets: [Bucket::default(); WINDOW],
                });
                self.speakers.len() - 1
            }
        };
        let slot = &mut self.speakers[i].buckets[(n % WINDOW as u64) as usize];
        if slot.number != n {
            *slot = Bucket {
                number: n,
                ..Bucket::default()
            };
        }
        slot.sum = slot
            .sum
            .saturating_add(u32::from(QUIET.saturating_sub(level.min(127))));
        slot.packets = slot.packets.saturating_add(1);
        changed
    }

    /// `key` left the room (or stopped publishing audio). Returns `Some(None)` if it was the
    /// dominant speaker: the room has none until someone speaks.
    pub fn remove(&mut self, key: ParticipantKey) -> Option<Option<ParticipantKey>> {
        self.speakers.retain(|s| s.key != key);
        if self.challenger.is_some_and(|(c, _)| c == key) {
            self.challenger = None;
        }
        if self.current == Some(key) {
            self.current = None;
            return Some(None);
        }
        None
    }

    /// Reconsiders the choice at the start of bucket `n`, from the buckets before it.
    fn choose(&mut self, n: u64) -> Option<Option<ParticipantKey>> {
        let mut loudest: Option<(ParticipantKey, u32)> = None;
        let mut current_score = 0;
        for s in &self.speakers {
            let score = s.score(n);
            if Some(s.key) == self.current {
                current_score = score;
            }
            // Ties go to whoever came first.
            if score >= MIN_SCORE && loudest.is_none_or(|(_, best)| score > best) {
                loudest = Some((s.key, score));
            }
        }
        let Some((candidate, score)) = loudest.filter(|(k, _)| Some(*k) != self.current) else {
            self.challenger = None;
            return None;
        };
        if self.current.is_none() {
            self.challenger = None;
            self.current = Some(candidate);
            return Some(self.current);
        }
        if score < current_score.saturating_add(MARGIN) {
            self.challenger = None;
            return None;
        }
        match self.challenger {
            Some((c, since)) if c == candidate => {
                if n - since >= SWITCH_BUCKETS {
                    self.challenger = None;
                    self.current = Some(candidate);
                    return Some(self.current);
                }
            }
            _ => self.challenger = Some((candidate, n)),
        }
        None
    }
}

impl Engine {
    /// Room `room`'s dominant speaker is now `speaker`: every browser in it is told.
    pub(super) fn speaker_changed(&mut self, room: &RoomName, speaker: Option<ParticipantKey>) {
        self.metrics.speaker_changes.fetch_add(1, Relaxed);
        let id = speaker
            .and_then(|k| self.members.get(&k))
            .map(|m| m.id.clone());
        tracing::debug!(room = %room, speaker = ?id.as_ref().map(|i| i.to_string()), "dominant speaker");
        let browsers: Vec<ParticipantKey> = self
            .rooms
            .members(room)
            .iter()
            .copied()
            .filter(|k| self.members.get(k).is_some_and(|m| m.browser().is_some()))
            .collect();
        for key in browsers {
            self.notify(key, MediaEvent::Speaker { id: id.clone() });
        }
    }

    /// Member `key` left `room` (already out of its member list): if it was the speaker, the
    /// others are told the room has none; the last one out takes the room's choice along.
    pub(super) fn speaker_left(&mut self, room: &RoomName, key: ParticipantKey) {
        if self.rooms.members(room).is_empty() {
            self.speakers.remove(room);
            return;
        }
        let cleared = self.speakers.get_mut(room).and_then(|d| d.remove(key));
        if let Some(speaker) = cleared {
            self.speaker_changed(room, speaker);
        }
    }

    /// Tells a browser that just joined who is speaking in its room, if anyone is.
    pub(super) fn tell_speaker(&mut self, key: ParticipantKey) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let id = self
            .speakers
            .get(&m.room)
            .and_then(DominantSpeaker::current)
            .and_then(|k| self.members.get(&k))
            .map(|s| s.id.clone());
        if id.is_some() {
            self.notify(key, MediaEvent::Speaker { id });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const A: ParticipantKey = ParticipantKey(1);
    const B: ParticipantKey = ParticipantKey(2);
    const C: ParticipantKey = ParticipantKey(3);
    /// Opus packets every 20 ms.
    const PACKET: Duration = Duration::from_millis(20);
    const SILENCE: u8 = 127;

    /// A room on simulated time: feeds packets and records every change with its time.
    struct Room {
        d: DominantSpeaker,
        start: Instant,
        now: Instant,
        changes: Vec<(Duration, Option<ParticipantKey>)>,
    }

    impl Room {
        fn new() -> Room {
            let start = Instant::now();
            Room {
                d: DominantSpeaker::default(),
                start,
                now: start,
                changes: Vec::new(),
            }
        }

        /// `d` of packets every 20 ms from each of `who` at its level (`None`: no packets, as
        /// with DTX).
        fn talk(&mut self, d: Duration, who: &[(ParticipantKey, Option<u8>)]) {
            let end = self.now + d;
            while self.now < end {
                for &(key, level) in who {
                    if let Some(level) = level {
                        if let Some(change) = self.d.hear(self.now, key, level) {
                            self.changes.push((self.now - self.start, change));
                        }
                    }
                }
                self.now += PACKET;
            }
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_first_voice_wins_at_once_and_keeps_it() {
        let mut r = Room::new();
        r.talk(secs(5.0), &[(A, Some(30)), (B, Some(SILENCE))]);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        let (at, who) = r.changes[0];
        assert_eq!(who, Some(A));
        assert!(at <= secs(0.5), "A won after {at:?}");
        assert_eq!(r.d.current(), Some(A));
    }

    #[test]
    fn a_brief_louder_burst_does_not_take_over() {
        let mut r = Room::new();
        r.talk(secs(3.0), &[(A, Some(40)), (B, Some(SILENCE))]);
        assert_eq!(r.d.current(), Some(A));
        // B shouts for half a second while A goes on talking.
        r.talk(secs(0.5), &[(A, Some(40)), (B, Some(5))]);
        r.talk(secs(3.0), &[(A, Some(40)), (B, Some(SILENCE))]);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        // Nor while A pauses to breathe (no packets: DTX) for half a second.
        r.talk(secs(0.5), &[(B, Some(10))]);
        r.talk(secs(3.0), &[(A, Some(40)), (B, None)]);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        assert_eq!(r.d.current(), Some(A));
    }

    #[test]
    fn a_sustained_louder_voice_takes_over_once_within_the_bound() {
        let mut r = Room::new();
        r.talk(secs(3.0), &[(A, Some(40)), (B, Some(SILENCE))]);
        let started = r.elapsed();
        // B talks over A, clearly louder, and keeps on.
        r.talk(secs(5.0), &[(A, Some(40)), (B, Some(15))]);
        assert_eq!(r.changes.len(), 2, "{:?}", r.changes);
        let (at, who) = r.changes[1];
        assert_eq!(who, Some(B));
        let after = at - started;
        assert!(
            after >= SWITCH_AFTER && after <= secs(2.0),
            "B took over {after:?} after starting"
        );
    }

    #[test]
    fn turns_in_a_conversation_switch_once_each() {
        let mut r = Room::new();
        for (turn, (speaker, listener)) in [(A, B), (B, A), (A, B), (C, A)].into_iter().enumerate()
        {
            let started = r.elapsed();
            r.talk(secs(4.0), &[(speaker, Some(35)), (listener, None)]);
            assert_eq!(r.changes.len(), turn + 1, "{:?}", r.changes);
            let (at, who) = r.changes[turn];
            assert_eq!(who, Some(speaker));
            assert!(at - started <= secs(2.0), "turn {turn}: {:?}", at - started);
        }
    }

    #[test]
    fn voices_alike_do_not_flap() {
        let mut r = Room::new();
        // Both talk at once, as loud as each other, the louder one changing every 300 ms.
        for i in 0..40 {
            let (a, b) = if i % 2 == 0 { (30, 36) } else { (36, 30) };
            r.talk(secs(0.3), &[(A, Some(a)), (B, Some(b))]);
        }
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
    }

    #[test]
    fn silence_and_noise_never_win() {
        let mut r = Room::new();
        // Muted microphones send silence; DTX sends nothing most of the time; a fan hums at
        // −70 dBov.
        r.talk(
            secs(10.0),
            &[(A, Some(SILENCE)), (B, None), (C, Some(QUIET + 10))],
        );
        assert!(r.changes.is_empty(), "{:?}", r.changes);
        assert_eq!(r.d.current(), None);
        r.talk(secs(2.0), &[(B, Some(30)), (C, Some(QUIET + 10))]);
        assert_eq!(r.d.current(), Some(B));
        // The room goes quiet: B stays the speaker, however long.
        r.talk(
            secs(30.0),
            &[
                (A, Some(SILENCE)),
                (B, Some(SILENCE)),
                (C, Some(QUIET + 10)),
            ],
        );
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        assert_eq!(r.d.current(), Some(B));
    }

    #[test]
    fn the_speaker_leaving_clears_the_choice() {
        let mut r = Room::new();
        r.talk(secs(2.0), &[(A, Some(30)), (B, Some(SILENCE))]);
        assert_eq!(r.d.current(), Some(A));
        assert_eq!(r.d.remove(B), None, "B was not the speaker");
        assert_eq!(r.d.remove(A), Some(None));
        assert_eq!(r.d.current(), None);
        assert_eq!(r.d.remove(A), None, "gone already");
        r.talk(secs(2.0), &[(B, Some(SILENCE))]);
        assert_eq!(r.d.current(), None, "silence does not win an empty choice");
        let started = r.elapsed();
        r.talk(secs(2.0), &[(B, Some(45))]);
        assert_eq!(r.d.current(), Some(B));
        let (at, _) = *r.changes.last().unwrap();
        assert!(at - started <= secs(0.6), "{:?}", at - started);
    }

    #[test]
    fn late_packets_are_ignored() {
        let mut r = Room::new();
        r.talk(secs(3.0), &[(A, Some(30)), (B, Some(SILENCE))]);
        let bucket = (r.elapsed().as_millis() / BUCKET.as_millis()) as u64;
        let score = |d: &DominantSpeaker, key| {
            d.speakers
                .iter()
                .find(|s| s.key == key)
                .map(|s| s.score(bucket))
        };
        let before = score(&r.d, B);
        // B's packets of half a second ago, as loud as can be, arriving now: not counted.
        for _ in 0..100 {
            assert_eq!(r.d.hear(r.now - secs(0.5), B, 0), None);
        }
        assert_eq!(score(&r.d, B), before);
        assert_eq!(before, Some(0));
    }

    #[test]
    fn levels_are_read_from_the_negotiated_extension() {
        let mut h = Header::default();
        assert_eq!(audio_level(&h, 1), None, "no extensions");
        h.set_extension(3, Bytes::from_static(&[0x80 | 42]))
            .unwrap();
        assert_eq!(audio_level(&h, 3), Some(42), "the V bit is not part of it");
        assert_eq!(audio_level(&h, 1), None, "another id");
        h.set_extension(1, Bytes::new()).unwrap();
        assert_eq!(audio_level(&h, 1), None, "empty payload");
        h.extension = false;
        assert_eq!(audio_level(&h, 3), None);
    }
}
