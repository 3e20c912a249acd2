//! Faults: what the server does when the world misbehaves. Each test prints its measured
//! figures (`cargo test -p confab --test e2e faults -- --nocapture`).
//!
//! - a subscriber whose UDP path is black-holed must not slow the others down, and is removed;
//! - a publisher behind a lossy, jittery path still reaches its subscribers (NACK, PLI);
//! - a pushed camera that disappears and pushes again plays again for a viewer that stayed;
//! - `kill -9` in the middle of a chat loses no acknowledged message;
//! - 1000 signaling connects and disconnects leak no file descriptors and little memory.
//!
//! The network faults put one peer into a network namespace of its own (`ip netns`, a veth
//! pair on 198.18.0.0/15, which never leaves the machine) and run it there as a child process:
//! this test binary again, filtered to [`netns_peer_process`]. That child routes its media
//! through an in-process relay on its own loopback (the address the server announces), which
//! drops, delays and reorders datagrams as told, so no qdisc (netem) or firewall is needed.
//! Needs root (CI runs as root) and `ip` (iproute2, which `scripts/setup.sh` installs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::json;

use crate::common::chat::{new_identity, ChatClient};
use crate::common::heavy;
use crate::common::server::TestServer;
use crate::common::signaling::{ChatMessage, RawEvent, RawWs, ServerMsg};

const T: Duration = Duration::from_secs(5);

/// The value of an unlabelled metric in `/metrics`.
async fn metric(server: &TestServer, name: &str) -> Result<f64> {
    let (status, body) = server.http_get("/metrics").await?;
    ensure!(status == 200, "GET /metrics: {status}");
    body.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .ok_or_else(|| anyhow!("/metrics has no {name}:\n{body}"))
}

/// Open file descriptors and resident memory (KiB) of process `pid`.
fn fds_and_rss(pid: u32) -> Result<(usize, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok((fds, rss))
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a chat

/// Senders, each pipelining a burst of messages (the documented burst is 20).
const CHAT_SENDERS: usize = 8;
const CHAT_BURST: usize = 20;

/// A sender in its own task: sends its burst without waiting, then reads until the connection
/// ends (or `T` passes in silence) and hands itself back with everything it saw.
async fn send_burst(mut c: ChatClient, round: usize, idle_end: bool) -> ChatClient {
    for k in 0..CHAT_BURST {
        let id = format!("{}-r{round}-{k}", c.name);
        let _ = c.send_chat(&format!("{} round {round} message {k}", c.name), None, &id);
    }
    if idle_end {
        let _ = c.expect("the connection to end", T, |_| None::<()>).await;
    }
    c
}

/// Messages `c` saw acknowledged (`chat_ack` of its own) or broadcast (`chat` from others):
/// both are sent only after the message is committed.
fn acknowledged(c: &ChatClient) -> Vec<ChatMessage> {
    c.seen
        .iter()
        .filter_map(|m| match m {
            ServerMsg::ChatAck { message, .. } => Some((**message).clone()),
            ServerMsg::Chat { message } if message.kind != "system" => Some((**message).clone()),
            _ => None,
        })
        .collect()
}

async fn rest_messages(server: &TestServer, room: &str) -> Result<Vec<ChatMessage>> {
    let mut all: Vec<ChatMessage> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/rooms/{room}/messages?limit=500&before={b}"),
            None => format!("/api/rooms/{room}/messages?limit=500"),
        };
        let resp = server.http_request("GET", &path, &[], &[]).await?;
        ensure!(
            resp.status == 200,
            "GET {path}: {} {}",
            resp.status,
            resp.text()
        );
        let page: Vec<ChatMessage> = serde_json::from_value(resp.json()?)
            .with_context(|| format!("GET {path}: not a list of messages"))?;
        let oldest = page.first().map(|m| m.id);
        let full = page.len() == 500;
        all.splice(0..0, page);
        match (full, oldest) {
            (true, Some(o)) => before = Some(o),
            _ => return Ok(all),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_chat() -> Result<()> {
    let mut server = TestServer::start().await?;
    let result = tokio::time::timeout(Duration::from_secs(90), kill_9_scenario(&mut server)).await;
    let result = result.unwrap_or_else(|_| Err(anyhow!("scenario exceeded 90 s")));
    result.map_err(|e| {
        anyhow!(
            "{e:?}\n\n--- server output (last 150 lines) ---\n{}",
            server.log_tail(150)
        )
    })
}

async fn kill_9_scenario(server: &mut TestServer) -> Result<()> {
    let room = "faults-chat";
    let url = server.ws_url();
    let mut watcher = ChatClient::join(&url, room, "Watcher", None).await?;
    let mut senders = Vec::new();
    for i in 0..CHAT_SENDERS {
        let identity = new_identity();
        senders.push(ChatClient::join(&url, room, &format!("S{i}"), Some(&identity)).await?);
    }

    // Round 1: every burst acknowledged, and files shared, before anything goes wrong.
    let mut confirmed: BTreeMap<i64, ChatMessage> = BTreeMap::new();
    let mut tasks = Vec::new();
    for c in senders.drain(..) {
        tasks.push(tokio::spawn(send_burst(c, 1, false)));
    }
    for t in tasks {
        let mut c = t.await?;
        for k in 0..CHAT_BURST {
            let m = c.expect_ack(&format!("{}-r1-{k}", c.name)).await?;
            confirmed.insert(m.id, m);
        }
        senders.push(c);
    }
    let mut files = Vec::new();
    for (i, size) in [1usize, 1000, 70_000, 300_000].into_iter().enumerate() {
        let data: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        let r = senders[0]
            .upload(
                server.http,
                &format!("f{i}.bin"),
                "application/octet-stream",
                &data,
            )
            .await?;
        ensure!(r.status == 201, "upload {i}: {} {}", r.status, r.text());
        let v = r.json()?;
        let m: ChatMessage = serde_json::from_value(v.get("message").cloned().unwrap_or(v))?;
        files.push((m.clone(), data));
        confirmed.insert(m.id, m);
    }
    let round1 = confirmed.len();

    // Round 2: bursts and uploads in flight; kill -9 once the watcher has seen a third of them.
    let mut tasks = Vec::new();
    for c in senders.drain(..) {
        tasks.push(tokio::spawn(send_burst(c, 2, true)));
    }
    let http = server.http;
    let token = watcher.upload_token.clone();
    let mut uploads = Vec::new();
    for i in 0..3 {
        let token = token.clone();
        uploads.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..50_000).map(|_| rand::random::<u8>()).collect();
            let r = crate::common::chat::upload(
                http,
                room,
                Some(&token),
                &format!("late{i}.bin"),
                "application/octet-stream",
                &data,
            )
            .await;
            r.ok().filter(|r| r.status == 201).and_then(|r| {
                let v = r.json().ok()?;
                serde_json::from_value::<ChatMessage>(v.get("message").cloned().unwrap_or(v)).ok()
            })
        }));
    }
    let kill_after = CHAT_SENDERS * CHAT_BURST / 3;
    let mut seen_round2 = 0;
    while seen_round2 < kill_after {
        watcher
            .expect("round 2 messages", T, |m| match m {
                ServerMsg::Chat { message } if message.text.contains("round 2") => Some(()),
                _ => None,
            })
            .await?;
        seen_round2 += 1;
    }
    let t_kill = Instant::now();
    server.kill()?;
    let _ = watcher
        .expect("the connection to end", T, |_| None::<()>)
        .await;
    for t in tasks {
        senders.push(t.await?);
    }
    for u in uploads {
        if let Some(m) = u.await? {
            confirmed.insert(m.id, m);
        }
    }
    for c in senders.iter().chain([&watcher]) {
        for m in acknowledged(c) {
            if let Some(prev) = confirmed.insert(m.id, m.clone()) {
                ensure!(
                    prev == m,
                    "message {} seen twice, differently: {prev:?} / {m:?}",
                    m.id
                );
            }
        }
    }
    let sent = round1 + CHAT_SENDERS * CHAT_BURST + 3;
    let acked = confirmed.len();

    server.restart().await.context("restarting after kill -9")?;
    let restarted = t_kill.elapsed();
    let history = rest_messages(server, room).await?;
    let stored: BTreeMap<i64, &ChatMessage> = history.iter().map(|m| (m.id, m)).collect();
    let missing: Vec<&ChatMessage> = confirmed
        .values()
        .filter(|m| stored.get(&m.id) != Some(&m))
        .collect();
    println!(
        "faults/kill-9 chat: {sent} sent, {acked} acknowledged before the kill ({} in flight), {} missing after restart; restart took {restarted:?}",
        sent - acked,
        missing.len()
    );
    ensure!(
        missing.is_empty(),
        "{} acknowledged messages are missing or altered after kill -9, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let client_ids: Vec<&str> = history
        .iter()
        .filter_map(|m| m.client_id.as_deref())
        .collect();
    let distinct: BTreeSet<&str> = client_ids.iter().copied().collect();
    ensure!(
        distinct.len() == client_ids.len(),
        "{} client_ids are stored twice after the restart",
        client_ids.len() - distinct.len()
    );
    // The shared files survived too.
    for (m, data) in &files {
        let f = m.file.as_ref().ok_or_else(|| anyhow!("no file in {m:?}"))?;
        let r = server.http_request("GET", &f.url, &[], &[]).await?;
        ensure!(
            r.status == 200 && r.body == *data,
            "{} after the restart: status {}, {} bytes (stored {})",
            f.url,
            r.status,
            r.body.len(),
            data.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1000 connects and disconnects

const CYCLES: usize = 1000;
const WARMUP: usize = 100;
const CYCLE_WORKERS: usize = 4;
/// File descriptors the server may hold above its baseline afterwards (log pipes or the SQLite
/// journal opened lazily).
const FD_SLACK: usize = 3;
/// Resident memory the server may grow by over the 1000 cycles: 6 KiB a connection would
/// exceed it.
const RSS_GROWTH_KIB: u64 = 6 * 1024;

/// One connection: join, then leave politely (0), close the WebSocket (1), or drop the TCP
/// connection without a close frame (2).
async fn ws_cycle(url: &str, room: &str, i: usize) -> Result<()> {
    let mut ws = RawWs::connect(url).await?;
    ws.send_json(&json!({"type": "join", "room": room, "name": format!("Cycler {i}")}))
        .await?;
    ws.expect_type("joined", T).await?;
    match i % 3 {
        0 => {
            ws.send_json(&json!({"type": "leave"})).await?;
            ws.expect_type("bye", T).await?;
            while !matches!(ws.recv(T).await?, RawEvent::Closed(_)) {}
        }
        1 => ws.close().await,
        _ => drop(ws),
    }
    Ok(())
}

async fn cycles(url: &str, room: &str, from: usize, count: usize) -> Result<()> {
    let mut workers = Vec::new();
    for w in 0..CYCLE_WORKERS {
        let url = url.to_string();
        let room = room.to_string();
        workers.push(tokio::spawn(async move {
            let mut i = from + w;
            while i < from + count {
                ws_cycle(&url, &room, i)
                    .await
                    .with_context(|| format!("cycle {i}"))?;
                i += CYCLE_WORKERS;
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// Waits until the server says nobody is connected (bounded; the server has no event to await).
async fn wait_empty(server: &TestServer) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = metric(server, "confab_participants").await?;
        let w = metric(server, "confab_websocket_connections").await?;
        if p == 0.0 && w == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("15 s after the last disconnect: {p} participants, {w} WebSockets");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_1000_leak_leak_no_fds_or_memory() -> Result<()> {
    let _heavy = heavy().await;
    crate::common::run_with_server(Duration::from_secs(120), |server| async move {
        let url = server.ws_url();
        let room = "faults-churn";
        cycles(&url, room, 0, WARMUP).await?;
        wait_empty(&server).await?;
        let (fds0, rss0) = fds_and_rss(server.pid())?;
        let t0 = Instant::now();
        cycles(&url, room, WARMUP, CYCLES).await?;
        let took = t0.elapsed();
        wait_empty(&server).await?;
        let (fds1, rss1) = fds_and_rss(server.pid())?;
        let growth = rss1 as i64 - rss0 as i64;
        println!(
            "faults/churn: {CYCLES} connect+join+disconnect cycles in {took:?}: fds {fds0} -> {fds1}, VmRSS {rss0} KiB -> {rss1} KiB ({growth:+} KiB, {:.2} KiB per cycle)",
            growth as f64 / CYCLES as f64
        );
        ensure!(
            fds1 <= fds0 + FD_SLACK,
            "the server holds {fds1} file descriptors after {CYCLES} cycles, {fds0} before"
        );
        ensure!(
            growth < RSS_GROWTH_KIB as i64,
            "VmRSS grew by {growth} KiB over {CYCLES} cycles (bound {RSS_GROWTH_KIB} KiB)"
        );
        Ok(())
    })
    .await
}
