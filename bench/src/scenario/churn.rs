//! `churn`: a subscriber joins a room with one publisher, receives media, and leaves — many
//! times, some in parallel. The server's memory must come back to where it was.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures_util::stream::{self, StreamExt};

use super::{heard_keyframe, leave_all, Run};
use crate::confab::{metric, metrics};
use crate::peer::PublishSpec;
use crate::process;
use crate::report::Churn;

/// Growth that still counts as "back to baseline": allocator slack, not a leak.
const TOLERANCE_KIB: i64 = 1024;

async fn cycle(
    run: &Run<'_>,
    room: &str,
    i: usize,
    publisher: &crate::target::Participant,
) -> Result<Duration> {
    let name = format!("churn-{i}");
    let started = Instant::now();
    let mut p = run
        .target
        .join(&run.ctx, room, &name, 200_000 + i as u32, None)
        .await?;
    let r = async {
        run.target
            .subscribe(&run.ctx, room, &mut p, &[publisher])
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !heard_keyframe(&p.rx.totals(), 1) {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("{name} received no keyframe within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(started.elapsed())
    }
    .await;
    p.leave().await;
    r
}

pub async fn churn(
    run: &Run<'_>,
    spec: PublishSpec,
    cycles: usize,
    parallel: usize,
    warmup_cycles: usize,
) -> Result<Churn> {
    let room = "bench-churn";
    let pid = run.server.pid;
    let (pubs, failed) = run
        .join_many(room, vec![("churn-pub".into(), 1)], Some(spec), &[])
        .await;
    if let Some(e) = failed.first() {
        anyhow::bail!("the publisher could not join: {e}");
    }
    let Some(publisher) = pubs.first() else {
        anyhow::bail!("no publisher");
    };
    publisher
        .published(Duration::from_secs(30))
        .await
        .context("publish connection")?;
    // Warm-up cycles, as many at once as later, fill the allocator's pools and one-time
    // caches up to the concurrency's high-water mark, so that the baseline is the steady state
    // and not the empty process.
    stream::iter(0..warmup_cycles)
        .map(|i| async move {
            let _ = cycle(run, room, i, publisher).await;
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<()>>()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = process::rss_kib(pid)?;
    let cpu0 = process::cpu_seconds(pid)?;
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let samples = Mutex::new(vec![(0usize, baseline)]);
    let failures = Mutex::new(Vec::<String>::new());
    let failed = AtomicUsize::new(0);
    let times = Mutex::new(crate::histogram::Histogram::default());
    stream::iter(warmup_cycles..warmup_cycles + cycles)
        .map(|i| {
            let (done, samples, failures, failed, times) =
                (&done, &samples, &failures, &failed, &times);
            async move {
                match cycle(run, room, i, publisher).await {
                    Ok(took) => times
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(took.as_micros() as u64),
                    Err(e) => {
                        failed.fetch_add(1, Relaxed);
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        if f.len() < 20 {
                            f.push(format!("{e:#}"));
                        }
                    }
                }
                let n = done.fetch_add(1, Relaxed) + 1;
                if n % 100 == 0 || n == cycles {
                    if let Ok(rss) = process::rss_kib(pid) {
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((n, rss));
                    }
                    eprintln!("churn: {n}/{cycles} cycles");
                }
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<()>>()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process::cpu_seconds(pid)? - cpu0;
    // Sessions end asynchronously; give the server time to let go of them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = process::rss_kib(pid)?;
    let participants_at_end = match run.server.http {
        Some(h) => metrics(h)
            .await
            .ok()
            .and_then(|m| metric(&m, "confab_participants")),
        None => None,
    };
    leave_all(pubs, 1).await;
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    let times = times.into_inner().unwrap_or_else(|e| e.into_inner());
    let peak = samples
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(end)
        .max(end);
    let growth = end as i64 - baseline as i64;
    // The trend after the first sample: a leak keeps climbing, allocator slack does not.
    let steady = match (samples.get(1), samples.last()) {
        (Some(&(n0, r0)), Some(&(n1, r1))) if n1 > n0 => {
            (r1 as f64 - r0 as f64) * 1024.0 / (n1 - n0) as f64
        }
        _ => 0.0,
    };
    let tolerance = TOLERANCE_KIB.max(baseline as i64 / 50);
    Ok(Churn {
        cycles,
        failed_cycles: failed.into_inner(),
        parallel,
        seconds,
        cycles_per_second: cycles as f64 / seconds.max(1e-3),
        rss_baseline_kib: baseline,
        rss_peak_kib: peak,
        rss_end_kib: end,
        rss_growth_kib: growth,
        rss_growth_bytes_per_cycle: growth as f64 * 1024.0 / cycles.max(1) as f64,
        rss_trend_bytes_per_cycle: steady,
        rss_samples: samples,
        server_cpu_ms_per_cycle: 1000.0 * cpu / cycles.max(1) as f64,
        participants_at_end,
        returned_to_baseline: growth <= tolerance,
        failures: failures.into_inner().unwrap_or_else(|e| e.into_inner()),
        media_after_ms_p50: times.quantile(0.5).map(|us| us / 1000.0),
        media_after_ms_p99: times.quantile(0.99).map(|us| us / 1000.0),
    })
}
