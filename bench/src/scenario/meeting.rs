//! `meeting`: N participants who all publish video + audio and receive everyone else (N×N),
//! for each N asked, each N in a fresh room.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{heard_av, leave_all, subscribe_each_other, Run};
use crate::measure::Baseline;
use crate::peer::PublishSpec;
use crate::process;
use crate::report::{Capacity, Step};

pub async fn meeting(
    run: &Run<'_>,
    spec: PublishSpec,
    sizes: &[usize],
) -> Result<(Vec<Step>, Capacity)> {
    let mut steps = Vec::new();
    let mut best = None;
    let mut broken: Option<&'static str> = None;
    for &n in sizes {
        let room = format!("bench-meeting-{n}");
        let empty = process::rss_kib(run.server.pid).ok();
        let who = (0..n)
            .map(|i| (format!("m{n}-{i}"), 1 + i as u32))
            .collect();
        let (mut people, mut problems) = run.join_many(&room, who, Some(spec.clone()), &[]).await;
        for p in &people {
            p.published(Duration::from_secs(30))
                .await
                .with_context(|| format!("{}'s publish connection", p.name))?;
        }
        problems.extend(subscribe_each_other(run, &room, &mut people).await);
        let mut refs: Vec<_> = people.iter().collect();
        problems.extend(run.wait_media(&refs, heard_av, n.saturating_sub(1)).await);
        // Probes watch the meeting (everyone) from threads of their own.
        let (probes, probe_problems) = run.join_probes(&room, &refs, 300_000).await;
        problems.extend(probe_problems);
        let probe_refs: Vec<_> = probes
            .iter()
            .filter_map(|p| p.participant.as_ref())
            .collect();
        problems.extend(run.wait_media(&probe_refs, heard_av, n).await);
        refs.extend(probe_refs.iter().copied());
        let base = Baseline {
            empty_kib: empty,
            publishers_kib: None,
            participants: refs.len(),
            subscribers: refs.len(),
        };
        let s = run
            .step(&refs, &probe_refs, base, people.len(), refs.len(), problems)
            .await;
        drop(refs);
        drop(probe_refs);
        for p in probes {
            p.leave().await;
        }
        let s = s?;
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
        leave_all(people, run.join_parallel).await;
        if broken.is_some() && (!run.keep_going || hopeless) {
            break;
        }
        // Let the server release the room before the next size.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok((
        steps,
        Capacity {
            subscribers: best.as_ref().map(|s| s.subscribers),
            participants: best.as_ref().map(|s| s.participants),
            stopped_by: broken.unwrap_or("max").into(),
        },
    ))
}
