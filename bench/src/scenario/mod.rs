//! Scenarios: who joins, what they send, how the load grows. What they share lives here:
//! joining many participants at once, waiting (bounded) until media flows, measuring a step, and
//! ramping subscribers until the objective breaks.

pub mod churn;
pub mod fanout;
pub mod meeting;
pub mod rtsp;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::stream::{self, StreamExt};

use crate::measure::{self, Baseline};
use crate::peer::{Context, PublishSpec, RxTotals};
use crate::probe::Probe;
use crate::process::Server;
use crate::report::{medians, Capacity, Slo, Step};
use crate::target::{Participant, Target};

/// How long a joined subscriber may take to receive its first media.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a scenario works with.
pub struct Run<'a> {
    pub ctx: Arc<Context>,
    pub target: Target,
    pub server: &'a Server,
    pub warmup: Duration,
    pub seconds: Duration,
    pub repeats: usize,
    pub slo: Slo,
    /// Participants joining at the same time.
    pub join_parallel: usize,
    /// Measure the remaining steps after the objective breaks (to compare servers at equal
    /// load), as long as the measurement still means something.
    pub keep_going: bool,
    /// Probe subscribers per step (see `probe.rs`).
    pub probes: usize,
}

/// Which subscribers count as receiving.
pub type Heard = fn(&RxTotals, usize) -> bool;

/// Video and audio from every one of `n` publishers.
pub fn heard_av(rx: &RxTotals, n: usize) -> bool {
    rx.publishers_heard(1, 1) >= n
}

/// A keyframe and audio from every one of `n` publishers (a picture could be shown).
pub fn heard_keyframe(rx: &RxTotals, n: usize) -> bool {
    rx.publishers_watchable() >= n
}

/// Audio from every one of `n` publishers.
pub fn heard_audio(rx: &RxTotals, n: usize) -> bool {
    rx.publishers_heard(0, 1) >= n
}

/// Any video and audio packets (media without our stamps: a camera).
pub fn heard_anything(rx: &RxTotals, _n: usize) -> bool {
    rx.video.packets > 0 && rx.audio.packets > 0
}

impl Run<'_> {
    /// Joins `names` (with tags) into `room`, `join_parallel` at a time; each then subscribes to
    /// `publishers` (Janus) and, with `publish`, publishes. Returns who made it and why the
    /// others did not.
    pub async fn join_many(
        &self,
        room: &str,
        who: Vec<(String, u32)>,
        publish: Option<PublishSpec>,
        publishers: &[&Participant],
    ) -> (Vec<Participant>, Vec<String>) {
        let results: Vec<Result<Participant>> = stream::iter(who)
            .map(|(name, tag)| {
                let publish = publish.clone();
                async move {
                    let mut p = self
                        .target
                        .join(&self.ctx, room, &name, tag, publish)
                        .await?;
                    self.target
                        .subscribe(&self.ctx, room, &mut p, publishers)
                        .await?;
                    Ok(p)
                }
            })
            .buffer_unordered(self.join_parallel.max(1))
            .collect()
            .await;
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(p) => ok.push(p),
                Err(e) => failed.push(format!("join: {e:#}")),
            }
        }
        (ok, failed)
    }

    /// Waits (bounded) until every one of `people` satisfies `heard` for `n` publishers; returns
    /// a description of those that never did.
    pub async fn wait_media(&self, people: &[&Participant], heard: Heard, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
        loop {
            let missing: Vec<&str> = people
                .iter()
                .filter(|p| !heard(&p.rx.totals(), n))
                .map(|p| p.name.as_str())
                .collect();
            if missing.is_empty() {
                return Vec::new();
            }
            if tokio::time::Instant::now() >= deadline {
                let mut names = missing
                    .iter()
                    .take(10)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                if missing.len() > 10 {
                    names += ", …";
                }
                return vec![format!(
                    "{} of {} participants received no media from all {n} publishers within {MEDIA_TIMEOUT:?}: {names}",
                    missing.len(),
                    people.len()
                )];
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Joins `self.probes` probe subscribers to `room`, receiving `publishers`.
    pub async fn join_probes(
        &self,
        room: &str,
        publishers: &[&Participant],
        first_tag: u32,
    ) -> (Vec<Probe>, Vec<String>) {
        let feeds = match crate::target::feeds(publishers) {
            Ok(f) => f,
            Err(e) => return (Vec::new(), vec![format!("probes: {e:#}")]),
        };
        let mut probes = Vec::new();
        let mut problems = Vec::new();
        for i in 0..self.probes {
            let tag = first_tag + i as u32;
            match Probe::join(
                self.target.clone(),
                self.ctx.clone(),
                room.to_string(),
                format!("probe-{tag}"),
                tag,
                feeds.clone(),
            )
            .await
            {
                Ok(p) => probes.push(p),
                Err(e) => problems.push(format!("probe: {e:#}")),
            }
        }
        (probes, problems)
    }

    /// Measures the current load as one step. `people` includes the `probes`.
    pub async fn step(
        &self,
        people: &[&Participant],
        probes: &[&Participant],
        base: Baseline,
        publishers: usize,
        subscribers: usize,
        mut problems: Vec<String>,
    ) -> Result<Step> {
        let windows = measure::windows(
            self.server,
            people,
            probes,
            &base,
            self.warmup,
            self.seconds,
            self.repeats,
        )
        .await?;
        let figures = medians(&windows);
        let mut violations = figures.violations(&self.slo);
        for p in people {
            for e in p.server_errors() {
                if problems.len() < 20 {
                    problems.push(format!("{}: server said {e}", p.name));
                }
            }
        }
        if !problems.is_empty() {
            violations.push(format!("{} problem(s), see `problems`", problems.len()));
        }
        let generator_saturated = figures.generator_saturated();
        let step = Step {
            publishers,
            subscribers,
            participants: base.participants,
            slo_ok: violations.is_empty(),
            violations,
            generator_saturated,
            problems,
            figures,
            windows,
        };
        eprintln!(
            "step: {publishers} publisher(s), {subscribers} subscriber(s): {:.0} pkt/s out, server {:.0} % CPU, {} µs/pkt, p99 {} ms (probes {} ms), loss {:.3} %, generator {:.0} % CPU{} — {}",
            step.figures.egress_pps,
            step.figures.server_cpu_percent,
            step.figures
                .server_cpu_us_per_packet
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "–".into()),
            step.figures
                .latency_p99_us
                .map(|v| format!("{:.2}", v / 1000.0))
                .unwrap_or_else(|| "–".into()),
            step.figures
                .probe_latency_p99_us
                .map(|v| format!("{:.2}", v / 1000.0))
                .unwrap_or_else(|| "–".into()),
            step.figures.loss_percent,
            step.figures.generator_cpu_percent,
            if generator_saturated { " (saturated)" } else { "" },
            if step.slo_ok {
                "ok".to_string()
            } else {
                step.violations.join("; ")
            }
        );
        Ok(step)
    }

    /// Adds subscribers to `room` (start, then `step` more at a time up to `max`), measuring each
    /// level, until the objective breaks (with `keep_going`, on to `max`). `publishers` are
    /// already in and sending. The capacity is the last step before the first break.
    #[allow(clippy::too_many_arguments)]
    pub async fn ramp(
        &self,
        room: &str,
        publishers: &[&Participant],
        start: usize,
        step: usize,
        max: usize,
        heard: Heard,
        mut base: Baseline,
        // Publishers outside `publishers` (a camera pushed over RTSP).
        external_publishers: usize,
    ) -> Result<(Vec<Step>, Capacity, Vec<Participant>)> {
        let mut subs: Vec<Participant> = Vec::new();
        let mut steps = Vec::new();
        let mut best: Option<Step> = None;
        let mut broken: Option<&'static str> = None;
        let mut target = start.max(1);
        let mut probes: Vec<Probe> = Vec::new();
        let mut probe_tag = 300_000u32;
        let stopped_by = loop {
            let regular = target.saturating_sub(self.probes);
            let who: Vec<(String, u32)> = (subs.len()..regular)
                .map(|i| (format!("sub-{i}"), 100_000 + i as u32))
                .collect();
            let (joined, mut problems) = self.join_many(room, who, None, publishers).await;
            subs.extend(joined);
            // Fresh probes each step, so they are the last to have joined.
            for p in probes.drain(..) {
                p.leave().await;
            }
            let (new_probes, probe_problems) = self.join_probes(room, publishers, probe_tag).await;
            probe_tag += self.probes as u32;
            probes = new_probes;
            problems.extend(probe_problems);
            let probe_refs: Vec<&Participant> = probes
                .iter()
                .filter_map(|p| p.participant.as_ref())
                .collect();
            let people: Vec<&Participant> = publishers
                .iter()
                .copied()
                .chain(subs.iter())
                .chain(probe_refs.iter().copied())
                .collect();
            problems.extend(
                self.wait_media(&people[publishers.len()..], heard, publishers.len())
                    .await,
            );
            let receivers = people.len() - publishers.len();
            base.subscribers = receivers;
            base.participants = people.len() + external_publishers;
            let s = self
                .step(
                    &people,
                    &probe_refs,
                    base,
                    publishers.len() + external_publishers,
                    receivers,
                    problems,
                )
                .await?;
            let (ok, hopeless) = (s.slo_ok, s.hopeless());
            if !ok && broken.is_none() {
                broken = Some(if s.generator_saturated {
                    "generator"
                } else {
                    "slo"
                });
            }
            if ok && broken.is_none() {
                best = Some(s.clone());
            }
            steps.push(s);
            if let Some(why) = broken {
                if !self.keep_going || hopeless {
                    break why;
                }
            }
            if target >= max || step == 0 {
                break broken.unwrap_or("max");
            }
            target = (target + step).min(max);
        };
        for p in probes {
            p.leave().await;
        }
        let capacity = Capacity {
            subscribers: best.as_ref().map(|s| s.subscribers),
            participants: best.as_ref().map(|s| s.participants),
            stopped_by: stopped_by.to_string(),
        };
        Ok((steps, capacity, subs))
    }
}

/// Janus: each of `people` subscribes to all the others (confab does this by itself).
pub async fn subscribe_each_other(
    run: &Run<'_>,
    room: &str,
    people: &mut [Participant],
) -> Vec<String> {
    let mut problems = Vec::new();
    if people.len() < 2 {
        return problems;
    }
    for i in 0..people.len() {
        let (before, rest) = people.split_at_mut(i);
        let Some((me, after)) = rest.split_first_mut() else {
            break;
        };
        let others: Vec<&Participant> = before.iter().chain(after.iter()).collect();
        if let Err(e) = run.target.subscribe(&run.ctx, room, me, &others).await {
            problems.push(format!("{} subscribing: {e:#}", me.name));
        }
    }
    problems
}

/// Everyone leaves, `join_parallel` at a time (bounded by each leave's own timeouts).
pub async fn leave_all(people: Vec<Participant>, parallel: usize) {
    stream::iter(people)
        .map(|p| p.leave())
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<()>>()
        .await;
}
