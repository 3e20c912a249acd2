//! Chat throughput and latency (ignored; run it on purpose):
//!
//! ```text
//! cargo test --release -p confab --test e2e chat_bench -- --ignored --nocapture
//! ```
//!
//! 50 chat-only clients join one room. Every client also sends, so the offered rate is spread
//! over 50 connections and stays under the per-connection limit (10/s, burst 20) up to
//! 450 msg/s. Steps of `CHAT_BENCH_RATES` (default `50,100,200,400` msg/s) last
//! `CHAT_BENCH_SECS` (default 5) each; between steps the bench waits until every acked message
//! has reached every other client (or 10 s). The client and the server share the machine, so
//! the figures are for this machine, not a capacity claim.
//!
//! Each message's text carries its step and send time (µs since the bench's start; all clients
//! live in this process), so receivers compute latency without a lookup. Reported per step:
//! acked messages per second (sustained: over the time until the last ack), fan-out
//! deliveries per second, delivery latency (send → another client's receive) p50/p99/max, and
//! ack latency (send → own chat_ack) p50/p99, and at the end the store's commits and writes
//! (from `/metrics`: writes per commit is what group commit saves in fsyncs).
//!
//! `CHAT_BENCH_DATABASE=postgres` runs the server with its chat store in PostgreSQL (a
//! throwaway server the bench starts, on this machine; see `chat::store::temp_postgres`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::time::Instant;

use crate::common::signaling::{ClientMsg, Incoming, ServerMsg, SignalConn, SignalRx, SignalTx};
use crate::common::TestServer;

const CLIENTS: usize = 50;
const ROOM: &str = "bench";

#[derive(Default)]
struct Step {
    /// Delivery latencies in µs, one per (message, receiver).
    deliveries: Vec<u64>,
    /// Ack latencies in µs.
    acks: Vec<u64>,
    /// µs since start of the last ack / delivery.
    last_ack_us: u64,
    last_delivery_us: u64,
}

#[derive(Default)]
struct Stats {
    steps: Vec<Step>,
    errors: Vec<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Parses "bench <step> <sent_us> …".
fn parse_tag(text: &str) -> Option<(usize, u64)> {
    let mut it = text.split(' ');
    if it.next()? != "bench" {
        return None;
    }
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

async fn read_loop(mut rx: SignalRx, base: Instant, stats: Arc<Mutex<Stats>>) {
    loop {
        let m = match rx.recv().await {
            Incoming::Msg(m) => m,
            Incoming::Binary(_) => continue,
            Incoming::Closed(c) => {
                stats
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("connection closed: {c:?}"));
                return;
            }
        };
        let now_us = base.elapsed().as_micros() as u64;
        let (ack, message) = match m {
            ServerMsg::Chat { message } => (false, message),
            ServerMsg::ChatAck { message, .. } => (true, message),
            ServerMsg::Error { code, message, .. } => {
                stats
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("{code}: {message}"));
                continue;
            }
            _ => continue,
        };
        let Some((step, sent_us)) = parse_tag(&message.text) else {
            continue;
        };
        let mut s = stats.lock().unwrap();
        let Some(st) = s.steps.get_mut(step) else {
            continue;
        };
        let lat = now_us.saturating_sub(sent_us);
        if ack {
            st.acks.push(lat);
            st.last_ack_us = st.last_ack_us.max(now_us);
        } else {
            st.deliveries.push(lat);
            st.last_delivery_us = st.last_delivery_us.max(now_us);
        }
    }
}

async fn join(url: &str, i: usize) -> Result<(SignalTx, SignalRx)> {
    let conn = SignalConn::connect(url).await?;
    let (tx, mut rx) = (conn.tx, conn.rx);
    tx.send(&ClientMsg::Join {
        room: ROOM.into(),
        name: format!("Bench {i}"),
        identity: None,
        password: None,
        token: None,
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Incoming::Msg(ServerMsg::Joined { .. })) => return Ok((tx, rx)),
            Ok(Incoming::Msg(ServerMsg::Error { code, message, .. })) => {
                bail!("client {i}: join refused: {code} {message}")
            }
            Ok(Incoming::Closed(c)) => bail!("client {i}: closed while joining: {c:?}"),
            Ok(_) => {}
            Err(_) => bail!("client {i}: no `joined` within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn chat_bench() -> Result<()> {
    let rates: Vec<u32> = std::env::var("CHAT_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 100, 200, 400]);
    let secs: u64 = env_or("CHAT_BENCH_SECS", 5);
    let server = match std::env::var("CHAT_BENCH_DATABASE").as_deref() {
        Ok("postgres") => TestServer::start_on_postgres().await?,
        Ok("sqlite") | Err(_) => TestServer::start().await?,
        Ok(other) => bail!("CHAT_BENCH_DATABASE={other:?}: use sqlite or postgres"),
    };
    let result = run(&server, &rates, secs).await;
    result.map_err(|e| {
        anyhow!(
            "{e:?}\n\n--- server output (last 60 lines) ---\n{}",
            server.log_tail(60)
        )
    })
}

async fn run(server: &TestServer, rates: &[u32], secs: u64) -> Result<()> {
    let base = Instant::now();
    let stats = Arc::new(Mutex::new(Stats {
        steps: rates.iter().map(|_| Step::default()).collect(),
        errors: Vec::new(),
    }));
    let url = server.ws_url();
    let mut senders = Vec::with_capacity(CLIENTS);
    let mut readers = Vec::with_capacity(CLIENTS);
    let join_start = Instant::now();
    for i in 0..CLIENTS {
        let (tx, rx) = join(&url, i).await?;
        senders.push(tx);
        readers.push(tokio::spawn(read_loop(rx, base, stats.clone())));
    }
    eprintln!(
        "chat_bench: {CLIENTS} clients joined in {:.1} s",
        join_start.elapsed().as_secs_f64()
    );
    // Let the join notices settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut summary = Vec::new();
    let mut seq = 0u64;
    for (step, &rate) in rates.iter().enumerate() {
        let total = u64::from(rate) * secs;
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let t0 = Instant::now();
        let t0_us = base.elapsed().as_micros() as u64;
        for k in 0..total {
            tokio::time::sleep_until(t0 + interval.mul_f64(k as f64)).await;
            let sent_us = base.elapsed().as_micros() as u64;
            seq += 1;
            senders[(k as usize) % CLIENTS].send(&ClientMsg::Chat {
                text: format!("bench {step} {sent_us} {seq}"),
                to: None,
                client_id: format!("b-{seq}"),
            })?;
        }
        let send_window = t0.elapsed();
        // Drain: every ack in, and every acked message delivered to the 49 others.
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (acks, deliveries) = {
                let s = stats.lock().unwrap();
                (s.steps[step].acks.len(), s.steps[step].deliveries.len())
            };
            let complete =
                acks as u64 == total && deliveries as u64 >= total * (CLIENTS as u64 - 1);
            if complete || Instant::now() >= drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let line = {
            let mut s = stats.lock().unwrap();
            let errors = s.errors.len();
            let st = &mut s.steps[step];
            st.acks.sort_unstable();
            st.deliveries.sort_unstable();
            let ack_span =
                (st.last_ack_us.saturating_sub(t0_us) as f64 / 1e6).max(send_window.as_secs_f64());
            let del_span = (st.last_delivery_us.saturating_sub(t0_us) as f64 / 1e6)
                .max(send_window.as_secs_f64());
            let expected = st.acks.len() * (CLIENTS - 1);
            format!(
                "{rate}/s: acked {}/{total} = {:.0}/s, fan-out {:.0}/s ({}/{expected} delivered), latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms, ack p50 {:.1} ms p99 {:.1} ms, errors so far {errors}",
                st.acks.len(),
                st.acks.len() as f64 / ack_span,
                st.deliveries.len() as f64 / del_span,
                st.deliveries.len(),
                percentile(&st.deliveries, 0.5),
                percentile(&st.deliveries, 0.99),
                percentile(&st.deliveries, 1.0),
                percentile(&st.acks, 0.5),
                percentile(&st.acks, 0.99),
            )
        };
        eprintln!("chat_bench step {line}");
        summary.push(line);
    }
    for r in &readers {
        r.abort();
    }
    let errors = stats.lock().unwrap().errors.clone();
    let (_, metrics) = server.http_get("/metrics").await?;
    let counter = |name: &str| {
        metrics.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    let store = match (
        counter("confab_chat_commits_total"),
        counter("confab_chat_writes_total"),
    ) {
        (Some(c), Some(w)) if c > 0 => format!(
            "store: {w} writes in {c} commits ({:.1} per commit)",
            w as f64 / c as f64
        ),
        _ => "store: no commit counters".to_owned(),
    };
    println!(
        "CHAT_BENCH clients={CLIENTS} step={secs}s | {} | {store} | errors: {}",
        summary.join(" | "),
        if errors.is_empty() {
            "none".to_string()
        } else {
            format!("{} (first: {})", errors.len(), errors[0])
        }
    );
    Ok(())
}
