//! Server CPU time per forwarded packet, 1 publisher → N subscribers. A measurement, not a
//! pass/fail test: run it on a release build and read the figure it prints.
//!
//! ```sh
//! cargo test --release -p confab --test e2e cpu -- --ignored --nocapture
//! CONFAB_BENCH_SUBSCRIBERS=20 CONFAB_BENCH_SECONDS=30 cargo test --release ...
//! ```

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::future::try_join_all;

use crate::common::{expect_media, heavy, run_with_server, Peer, PeerConfig};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn metric(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly on a release build"]
async fn cpu_per_forwarded_packet() -> Result<()> {
    let _heavy = heavy().await;
    let subscribers = env_or("CONFAB_BENCH_SUBSCRIBERS", 20) as u16;
    let seconds = env_or("CONFAB_BENCH_SECONDS", 30);
    run_with_server(Duration::from_secs(seconds + 180), |server| async move {
        let url = server.ws_url();
        let presenter = Peer::join(&url, PeerConfig::new("cpu", "Presenter", 7)).await?;
        let viewers = try_join_all((0..subscribers).map(|i| {
            let url = url.clone();
            async move {
                Peer::join(
                    &url,
                    PeerConfig::new("cpu", &format!("Viewer {i}"), 100 + i).subscriber_only(),
                )
                .await
            }
        }))
        .await?;
        for v in &viewers {
            expect_media(v, &presenter, 10, 5, Duration::from_secs(60)).await?;
        }
        let pid = server.pid();
        let (_, m0) = server.http_get("/metrics").await?;
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu1 = cpu_seconds(pid)?;
        let wall = t0.elapsed().as_secs_f64();
        let (_, m1) = server.http_get("/metrics").await?;
        let fwd = metric(&m1, "confab_forwarded_packets_total")?
            - metric(&m0, "confab_forwarded_packets_total")?;
        let rcv = metric(&m1, "confab_received_packets_total")?
            - metric(&m0, "confab_received_packets_total")?;
        ensure!(fwd > 0.0, "nothing was forwarded");
        let cpu = cpu1 - cpu0;
        println!(
            "cpu-per-forwarded-packet: subscribers={subscribers} seconds={wall:.1} \
             received={rcv} forwarded={fwd} ({:.0} pkt/s) server_cpu={cpu:.2}s ({:.1}% of one core) \
             => {:.2} us/packet",
            fwd / wall,
            100.0 * cpu / wall,
            1e6 * cpu / fwd
        );
        drop(viewers);
        drop(presenter);
        Ok(())
    })
    .await
}
