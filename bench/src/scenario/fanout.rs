//! `fanout`: one publisher (video + audio) → M subscribers, M growing until the objective
//! breaks. `audio`: S speakers (audio only) → M listeners, likewise.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{heard_audio, heard_av, leave_all, Run};
use crate::measure::Baseline;
use crate::peer::PublishSpec;
use crate::process;
use crate::report::{Capacity, Step};

pub struct Ramp {
    pub start: usize,
    pub step: usize,
    pub max: usize,
}

/// Publishers join and connect; returns them with the server's RSS before and after.
async fn publishers(
    run: &Run<'_>,
    room: &str,
    n: usize,
    spec: PublishSpec,
) -> Result<(Vec<crate::target::Participant>, Baseline)> {
    let empty = process::rss_kib(run.server.pid).ok();
    let who = (0..n).map(|i| (format!("pub-{i}"), 1 + i as u32)).collect();
    let (mut pubs, failed) = run.join_many(room, who, Some(spec), &[]).await;
    if let Some(e) = failed.first() {
        anyhow::bail!("a publisher could not join: {e}");
    }
    for p in &pubs {
        p.published(Duration::from_secs(30))
            .await
            .with_context(|| format!("{}'s publish connection", p.name))?;
    }
    // Publishers hear each other, as in a meeting (confab arranges that by itself).
    if let Some(e) = super::subscribe_each_other(run, room, &mut pubs)
        .await
        .first()
    {
        anyhow::bail!("{e}");
    }
    // Let the first keyframes and reports settle before taking the memory baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = Baseline {
        empty_kib: empty,
        publishers_kib: process::rss_kib(run.server.pid).ok(),
        participants: n,
        subscribers: 0,
    };
    Ok((pubs, base))
}

pub async fn fanout(run: &Run<'_>, spec: PublishSpec, ramp: Ramp) -> Result<(Vec<Step>, Capacity)> {
    let room = "bench-fanout";
    let (pubs, base) = publishers(run, room, 1, spec).await?;
    let refs: Vec<_> = pubs.iter().collect();
    let r = run
        .ramp(
            room, &refs, ramp.start, ramp.step, ramp.max, heard_av, base, 0,
        )
        .await;
    let (steps, cap, subs) = r?;
    leave_all(subs, run.join_parallel).await;
    leave_all(pubs, run.join_parallel).await;
    Ok((steps, cap))
}

pub async fn audio(run: &Run<'_>, speakers: usize, ramp: Ramp) -> Result<(Vec<Step>, Capacity)> {
    let room = "bench-audio";
    let spec = PublishSpec {
        video: None,
        audio: true,
        pacing: 0.0,
    };
    let (pubs, base) = publishers(run, room, speakers, spec).await?;
    let refs: Vec<_> = pubs.iter().collect();
    let (steps, cap, subs) = run
        .ramp(
            room,
            &refs,
            ramp.start,
            ramp.step,
            ramp.max,
            heard_audio,
            base,
            0,
        )
        .await?;
    leave_all(subs, run.join_parallel).await;
    leave_all(pubs, run.join_parallel).await;
    Ok((steps, cap))
}
