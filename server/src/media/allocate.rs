//! Spending a subscriber's bandwidth estimate (`super::bwe`) on the tracks it receives: which
//! layer of each video it gets, and which video it gets none of.
//!
//! The order is the one people notice: audio always (it is a few tens of kilobits and a
//! meeting without it is over), then screen shares (text must stay readable), then the
//! dominant speaker, then every other tile the subscriber shows; tiles it shows nowhere get
//! nothing (the page says so, `set_layer`). Each video first gets its smallest layer, in that
//! order, as far as the estimate goes: a thumbnail of everyone beats one sharp picture and
//! frozen others. What is left then raises layers one step at a time, again in that order, and
//! round the tiles of one priority in turn, so two equal tiles share fairly. No video gets more
//! than its tile needs (`cap`, from the page's tile sizes).
//!
//! **Hysteresis.** Keeping the layer a video has needs the estimate to cover it; moving up to
//! one it does not have needs [`UPGRADE_HEADROOM`] more. An estimate that wobbles around one
//! layer's rate therefore does not switch back and forth, and each switch (which costs the
//! publisher a keyframe of the new layer) is one the estimate can carry.
//!
//! A video sent as one stream (a camera, a publisher without simulcast) has nothing smaller to
//! fall back to, so it is always sent and its rate is taken off the top, like audio.

use super::track::LAYERS;

/// How much an upgrade's rate must be exceeded by the estimate left, as a factor.
pub const UPGRADE_HEADROOM: f64 = 1.15;

/// Who gets served first, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Screen,
    Speaker,
    Other,
}

/// One video a subscriber receives, as the allocator sees it.
#[derive(Debug, Clone, Copy)]
pub struct Video {
    pub priority: Priority,
    /// The rate of each layer present, by rank (a single stream: rank 0 only).
    pub rates: [Option<f64>; LAYERS],
    /// Simulcast (layers can be chosen) or a single stream (always sent).
    pub simulcast: bool,
    /// The largest rank its tile needs; `None` when the subscriber shows it nowhere.
    pub cap: Option<usize>,
    /// The rank it receives now, if any.
    pub current: Option<usize>,
}

/// What the allocator decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Per video, in the order given: the rank to send, or `None` for nothing.
    pub layers: Vec<Option<usize>>,
    /// Bits per second the plan spends (audio included).
    pub used: f64,
    /// The rate the first upgrade that did not fit needs, with headroom, on top of `used`: what
    /// a probe must show the path carries before that upgrade can happen.
    pub wanted: Option<f64>,
}

fn present(v: &Video) -> impl Iterator<Item = usize> + '_ {
    (0..LAYERS).filter(|&r| v.rates[r].is_some())
}

fn rate(v: &Video, r: usize) -> f64 {
    v.rates[r].unwrap_or(0.0)
}

/// Spends `estimate` on `audio` (bits per second, always) and `videos`; see the module comment.
/// With `hold`, nothing moves up (the estimate backed off a moment ago: the queue it found is
/// still draining, and a layer raised now would be lowered again at the cost of two keyframes).
pub fn allocate(estimate: f64, audio: f64, videos: &[Video], hold: bool) -> Plan {
    let mut plan = Plan {
        layers: vec![None; videos.len()],
        used: audio,
        wanted: None,
    };
    let mut order: Vec<usize> = (0..videos.len()).collect();
    order.sort_by_key(|&i| (videos[i].priority, i));
    // Single streams first: they are sent whatever happens.
    for &i in &order {
        let v = &videos[i];
        if v.simulcast || v.cap.is_none() {
            continue;
        }
        if let Some(r) = present(v).next() {
            plan.layers[i] = Some(r);
            plan.used += rate(v, r);
        }
    }
    // The smallest layer of each shown video, by priority, while it fits.
    for &i in &order {
        let v = &videos[i];
        if !v.simulcast || v.cap.is_none() {
            continue;
        }
        let Some(low) = present(v).next() else {
            continue;
        };
        let need = rate(v, low)
            * if v.current.is_some() {
                1.0
            } else {
                UPGRADE_HEADROOM
            };
        if plan.used + need <= estimate && (v.current.is_some() || !hold) {
            plan.layers[i] = Some(low);
            plan.used += rate(v, low);
        } else if plan.wanted.is_none() {
            plan.wanted = Some(plan.used + rate(v, low) * UPGRADE_HEADROOM);
        }
    }
    // Then one step up at a time, by priority, round the videos of a priority in turn.
    let mut start = 0;
    while start < order.len() {
        let p = videos[order[start]].priority;
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| videos[i].priority == p)
                .count();
        loop {
            let mut moved = false;
            for &i in &order[start..end] {
                let v = &videos[i];
                let (Some(cur), Some(cap), true) = (plan.layers[i], v.cap, v.simulcast) else {
                    continue;
                };
                let Some(next) = present(v).find(|&r| r > cur && r <= cap) else {
                    continue;
                };
                let extra = rate(v, next) - rate(v, cur);
                let keeps = v.current.is_some_and(|c| next <= c);
                let need = if keeps {
                    extra
                } else {
                    extra + rate(v, next) * (UPGRADE_HEADROOM - 1.0)
                };
                if plan.used + need <= estimate && (keeps || !hold) {
                    plan.layers[i] = Some(next);
                    plan.used += extra;
                    moved = true;
                } else if plan.wanted.is_none() {
                    plan.wanted = Some(plan.used + need);
                }
            }
            if !moved {
                break;
            }
        }
        start = end;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: f64 = 1000.0;

    fn cam(priority: Priority, current: Option<usize>) -> Video {
        Video {
            priority,
            rates: [Some(150.0 * K), Some(500.0 * K), Some(1500.0 * K)],
            simulcast: true,
            cap: Some(2),
            current,
        }
    }

    #[test]
    fn plenty_gives_everyone_the_top() {
        let v = [cam(Priority::Other, None), cam(Priority::Other, None)];
        let p = allocate(10_000.0 * K, 80.0 * K, &v, false);
        assert_eq!(p.layers, vec![Some(2), Some(2)]);
        assert_eq!(p.wanted, None);
        assert_eq!(p.used, 3080.0 * K);
    }

    #[test]
    fn a_squeeze_gives_everyone_the_smallest_before_anyone_more() {
        let v = [cam(Priority::Other, Some(2)), cam(Priority::Other, Some(2))];
        let p = allocate(400.0 * K, 80.0 * K, &v, false);
        assert_eq!(p.layers, vec![Some(0), Some(0)]);
        assert!(p.used <= 400.0 * K);
        assert!(p.wanted.is_some_and(|w| w > 400.0 * K), "{p:?}");
    }

    #[test]
    fn priority_decides_who_is_raised_first() {
        let v = [
            cam(Priority::Other, None),
            cam(Priority::Speaker, None),
            cam(Priority::Screen, None),
        ];
        // Audio 80 + three smallest (450) = 530; the screen's middle layer (350 more, 425
        // with headroom) fits in 1 M, nobody else's does after it.
        let p = allocate(1_000.0 * K, 80.0 * K, &v, false);
        assert_eq!(
            p.layers,
            vec![Some(0), Some(0), Some(1)],
            "the screen share first"
        );
        let p = allocate(2_500.0 * K, 80.0 * K, &v, false);
        assert_eq!(p.layers[2], Some(2));
        assert_eq!(p.layers[1], Some(1), "then the speaker: {p:?}");
        assert_eq!(p.layers[0], Some(0));
    }

    #[test]
    fn hidden_tiles_get_nothing_and_caps_hold() {
        let mut a = cam(Priority::Other, None);
        a.cap = None;
        let mut b = cam(Priority::Other, None);
        b.cap = Some(1);
        let p = allocate(10_000.0 * K, 0.0, &[a, b], false);
        assert_eq!(p.layers, vec![None, Some(1)]);
    }

    #[test]
    fn keeping_a_layer_needs_no_headroom_but_moving_up_does() {
        // 150 + 80 audio + 500-150 extra = 580 K: exactly enough to keep the middle layer.
        let keep = allocate(580.0 * K, 80.0 * K, &[cam(Priority::Other, Some(1))], false);
        assert_eq!(keep.layers, vec![Some(1)]);
        let up = allocate(580.0 * K, 80.0 * K, &[cam(Priority::Other, Some(0))], false);
        assert_eq!(up.layers, vec![Some(0)], "an upgrade needs headroom");
        assert!(up.wanted.is_some_and(|w| w > 580.0 * K));
        let up = allocate(660.0 * K, 80.0 * K, &[cam(Priority::Other, Some(0))], false);
        assert_eq!(up.layers, vec![Some(1)]);
    }

    #[test]
    fn a_single_stream_is_always_sent_and_paid_for_first() {
        let camera = Video {
            priority: Priority::Other,
            rates: [Some(2_000.0 * K), None, None],
            simulcast: false,
            cap: Some(2),
            current: Some(0),
        };
        let p = allocate(
            2_300.0 * K,
            80.0 * K,
            &[cam(Priority::Other, None), camera],
            false,
        );
        assert_eq!(p.layers, vec![Some(0), Some(0)]);
        let p = allocate(
            500.0 * K,
            80.0 * K,
            &[cam(Priority::Other, None), camera],
            false,
        );
        assert_eq!(p.layers, vec![None, Some(0)], "the camera still goes");
    }

    #[test]
    fn while_held_nothing_moves_up_but_layers_are_kept_or_lowered() {
        let v = [cam(Priority::Other, Some(1)), cam(Priority::Other, None)];
        let p = allocate(10_000.0 * K, 80.0 * K, &v, true);
        assert_eq!(
            p.layers,
            vec![Some(1), None],
            "kept, not raised, not started"
        );
        assert!(p.wanted.is_some());
        let p = allocate(300.0 * K, 80.0 * K, &v, true);
        assert_eq!(p.layers, vec![Some(0), None], "lowered");
    }

    #[test]
    fn too_little_for_every_thumbnail_starves_the_lowest_priority() {
        let v = [
            cam(Priority::Other, Some(0)),
            cam(Priority::Speaker, Some(0)),
        ];
        let p = allocate(300.0 * K, 80.0 * K, &v, false);
        assert_eq!(p.layers, vec![None, Some(0)]);
    }
}
