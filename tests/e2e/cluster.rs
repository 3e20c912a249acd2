//! Cluster mode: nodes sharing one throwaway Redis, real processes on loopback.
//!
//! - people joining one room through different nodes meet (redirect), media included;
//! - simultaneous first joins of a new room on two nodes end on one node;
//! - a node killed with SIGKILL leaves the node table within 10 s, and its room is re-placed
//!   at the next join;
//! - with Redis gone, a join for a new room is refused with an error naming Redis, while a
//!   room the node already serves keeps taking joins, and once Redis is back new rooms are
//!   placed again;
//! - operator actions sent to any node reach the room's node (signed, over pub/sub);
//! - a camera pushed over RTSP to a node that does not have its room is relayed into the room
//!   (ffmpeg over TCP, and with its default transport, which tries UDP first and is told 461),
//!   and a player of a room on another node is redirected there (ffmpeg and GStreamer);
//! - a camera added through any node is pulled by its room's node only, whose URL the others
//!   send its reads and pictures to; after a kill -9 of that node a live one pulls it; a
//!   `[[camera]]` in every node's config is pulled by one node.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::future::try_join;
use serde_json::{json, Value};

use crate::common::mjpeg::{post_camera, StillServer};
use crate::common::redis::TempRedis;
use crate::common::rtsp::{
    ffmpeg_play, gst_play_h264, loopback, room_participant, room_participants, rtsp_url,
    wait_camera, FfmpegPush, Push, PushAudio, PushVideo, RtspConn, Tool, Transport,
};
use crate::common::server::{default_log_level, fresh_temp_dir};
use crate::common::signaling::{RawEvent, RawWs};
use crate::common::{expect_media, heavy, Peer, PeerConfig, TestServer};

const SECRET: &str = "e2e cluster secret, shared by every node";

/// A Redis and `n` nodes using it (also the failover tests').
pub(crate) struct Cluster {
    pub(crate) redis: TempRedis,
    pub(crate) nodes: Vec<TestServer>,
}

impl Cluster {
    async fn start(n: usize) -> Result<Cluster> {
        Self::start_with(n, None, &[]).await
    }

    async fn start_with_config(n: usize, config: Option<&str>) -> Result<Cluster> {
        Self::start_with(n, config, &[]).await
    }

    /// `n` nodes, each with `config` (TOML) as its `--config` when given, and `extra` flags.
    pub(crate) async fn start_with(
        n: usize,
        config: Option<&str>,
        extra: &[&str],
    ) -> Result<Cluster> {
        let redis = TempRedis::start()?;
        let url = redis.url();
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut args = vec![
                "--redis".to_owned(),
                url.clone(),
                "--node-url".to_owned(),
                "http://127.0.0.1:0".to_owned(),
                "--cluster-secret".to_owned(),
                SECRET.to_owned(),
            ];
            let data_dir = fresh_temp_dir("confab-e2e")?;
            if let Some(config) = config {
                // Beside the data directory, as TestServer::start_with_config puts it.
                let path = format!("{}.toml", data_dir.display());
                std::fs::write(&path, config)?;
                args.extend(["--config".to_owned(), path]);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(TestServer::start_in(data_dir, &default_log_level(), &args).await?);
        }
        let c = Cluster { redis, nodes };
        // Every node sees every other before a test starts placing rooms.
        for node in &c.nodes {
            c.wait_for_table(node, n, Duration::from_secs(10)).await?;
        }
        Ok(c)
    }

    /// `GET /api/cluster` of `node`.
    async fn table(node: &TestServer) -> Result<Value> {
        let (status, body) = node.http_get("/api/cluster").await?;
        ensure!(status == 200, "GET /api/cluster: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    async fn wait_for_table(&self, node: &TestServer, n: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let t = Self::table(node).await?;
            if t["nodes"].as_array().map(Vec::len) == Some(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} lists {} nodes, not {n}, after {within:?}",
                    node.http,
                    t["nodes"]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node whose HTTP listener `ws_url` names.
    fn index_of(&self, ws_url: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.ws_url() == ws_url)
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i} ({}) ---\n{}", n.http, n.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The scenario's outcome, with the nodes' logs on failure.
pub(crate) fn report(
    r: Result<Result<()>, tokio::time::error::Elapsed>,
    limit: Duration,
    c: &Cluster,
) -> Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("{e:?}\n{}", c.logs())),
        Err(_) => Err(anyhow!("scenario exceeded {limit:?}\n{}", c.logs())),
    }
}

/// What the server said to a bare `join` on `url`: joined (the socket stays open) or where it
/// redirected us.
enum Answer {
    Joined(Box<RawWs>),
    Redirect(String),
    Error(String, String),
}

async fn raw_join(url: &str, room: &str, name: &str) -> Result<Answer> {
    let mut ws = RawWs::connect(url).await?;
    ws.send_json(&json!({"type": "join", "room": room, "name": name}))
        .await?;
    loop {
        match ws.recv(Duration::from_secs(10)).await? {
            RawEvent::Json(v) if v["type"] == "joined" => return Ok(Answer::Joined(Box::new(ws))),
            RawEvent::Json(v) if v["type"] == "redirect" => {
                let to = v["url"]
                    .as_str()
                    .context("redirect without url")?
                    .to_owned();
                return Ok(Answer::Redirect(to));
            }
            RawEvent::Json(v) if v["type"] == "error" => {
                return Ok(Answer::Error(
                    v["code"].as_str().unwrap_or_default().into(),
                    v["message"].as_str().unwrap_or_default().into(),
                ))
            }
            RawEvent::Json(_) => continue,
            other => bail!("join on {url}: {other:?} before joined or redirect"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_on_different_nodes_meet() -> Result<()> {
    let _heavy = heavy().await;
    let mut c = Cluster::start(3).await?;
    let limit = Duration::from_secs(90);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        // Three idle nodes: the first join is placed where it arrives (no redirect).
        let alice = Peer::join(&c.nodes[0].ws_url(), PeerConfig::new("meet", "Alice", 31)).await?;
        ensure!(alice.redirected_from.is_empty(), "alice was redirected: {:?}", alice.redirected_from);
        let bob = Peer::join(&c.nodes[1].ws_url(), PeerConfig::new("meet", "Bob", 32)).await?;
        ensure!(
            bob.redirected_from == [c.nodes[1].ws_url()] && bob.url() == c.nodes[0].ws_url(),
            "bob should go node 1 → node 0; went {:?} → {}",
            bob.redirected_from,
            bob.url()
        );
        let (_, metrics) = c.nodes[1].http_get("/metrics").await?;
        ensure!(
            metrics.contains("confab_cluster_redirects_total 1\n"),
            "node 1 should count one redirect:\n{}",
            metrics.lines().filter(|l| l.contains("cluster")).collect::<Vec<_>>().join("\n")
        );
        expect_media(&bob, &alice, 20, 10, Duration::from_secs(40)).await?;
        expect_media(&alice, &bob, 20, 10, Duration::from_secs(40)).await?;
        // Any node lists the room, with the node it is on.
        let want = json!([{"name": "meet", "participants": 2, "node": format!("http://{}", c.nodes[0].http)}]);
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let (_, body) = c.nodes[2].http_get("/api/rooms").await?;
            let got: Value = serde_json::from_str(&body)?;
            if got == want {
                break;
            }
            ensure!(Instant::now() < deadline, "node 2 lists {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for node in &c.nodes {
            ensure!(node.log_grep(SECRET).is_empty(), "the cluster secret is in a node's log");
        }
        // And a room's details from another node: a 307 to the room's node.
        let r = c.nodes[2].http_request("GET", "/api/rooms/meet", &[], &[]).await?;
        ensure!(
            r.status == 307 && r.header("location") == Some(&format!("http://{}/api/rooms/meet", c.nodes[0].http)),
            "GET /api/rooms/meet on node 2: {} {:?}",
            r.status,
            r.header("location")
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_joins_end_on_one_node() -> Result<()> {
    let mut c = Cluster::start(3).await?;
    let limit = Duration::from_secs(60);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        let mut placed_on = [0usize; 3];
        for i in 0..10 {
            let room = format!("race-{i}");
            let (a, b) = try_join(
                raw_join(&c.nodes[0].ws_url(), &room, "A"),
                raw_join(&c.nodes[1].ws_url(), &room, "B"),
            )
            .await?;
            let mut ends = Vec::new();
            let mut open = Vec::new();
            for (from, answer) in [(0, a), (1, b)] {
                match answer {
                    Answer::Joined(ws) => {
                        ends.push(from);
                        open.push(ws);
                    }
                    Answer::Redirect(url) => ends.push(
                        c.index_of(&url)
                            .with_context(|| format!("redirect to {url}, no node of ours"))?,
                    ),
                    Answer::Error(code, message) => bail!("{room}: {code}: {message}"),
                }
            }
            ensure!(ends[0] == ends[1], "{room}: the two joins ended on nodes {ends:?}");
            ensure!(!open.is_empty(), "{room}: both joins were redirected (to {ends:?}): nobody placed it where they asked");
            placed_on[ends[0]] += 1;
        }
        // Both nodes raced: each won some (not asserted: timing decides), node 2 was asked by
        // nobody and is never chosen while it is no less loaded than the one asked.
        eprintln!("cluster race: rooms placed per node {placed_on:?}");
        // A node stopped cleanly takes its record out at once: the others drop it at their
        // next heartbeat, well before its 7 s TTL would.
        c.nodes[2].terminate()?;
        let stopped = Instant::now();
        c.nodes[2].wait_exit(Duration::from_secs(6)).await?;
        c.wait_for_table(&c.nodes[0], 2, Duration::from_secs(4)).await?;
        eprintln!("cluster stop: node gone from the table after {:?}", stopped.elapsed());
        ensure!(
            stopped.elapsed() < Duration::from_secs(4),
            "a cleanly stopped node stayed in the table {:?}",
            stopped.elapsed()
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_and_its_room_moves() -> Result<()> {
    let mut c = Cluster::start(3).await?;
    let limit = Duration::from_secs(60);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        let Answer::Joined(ws) = raw_join(&c.nodes[2].ws_url(), "phoenix", "A").await? else {
            bail!("the first join on idle node 2 was not placed there");
        };
        let dead_id = Cluster::table(&c.nodes[2]).await?["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        c.nodes[2].kill()?;
        drop(ws);
        let killed = Instant::now();
        // Until its record expires (7 s) the dead node still owns the room: a camera pushed
        // to another node is told that node cannot be reached, at once, not left hanging.
        let mut raw = RtspConn::connect(loopback(c.nodes[0].rtsp)).await?;
        let url = rtsp_url(&c.nodes[0], "phoenix", "cam");
        let sdp = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        let r = raw.request("ANNOUNCE", &url, &[("Content-Type", "application/sdp")], sdp).await?;
        ensure!(
            r.status == 503 && r.reason.contains("cannot be reached") && killed.elapsed() < Duration::from_secs(6),
            "ANNOUNCE for the dead node's room on node 0, {:?} after the kill: {} {}",
            killed.elapsed(),
            r.status,
            r.reason
        );
        c.wait_for_table(&c.nodes[0], 2, Duration::from_secs(10))
            .await
            .context("after kill -9")?;
        let listed = Cluster::table(&c.nodes[0]).await?;
        ensure!(
            !listed["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["id"] == dead_id.as_str()),
            "node {dead_id} still listed after kill -9: {}",
            listed["nodes"]
        );
        eprintln!(
            "cluster kill: node gone from the table after {:?}",
            killed.elapsed()
        );
        // The room's key still names the dead node; the next join re-places it on a live one.
        ensure!(
            c.redis
                .command(&["GET", "confab:room:phoenix"])?
                .contains(&dead_id),
            "the room key should still name the dead node until the next join"
        );
        let end = match raw_join(&c.nodes[1].ws_url(), "phoenix", "B").await? {
            Answer::Joined(_ws) => 1,
            Answer::Redirect(url) => c.index_of(&url).context("redirect to no node of ours")?,
            Answer::Error(code, message) => bail!("rejoin refused: {code}: {message}"),
        };
        ensure!(end != 2, "re-placed on the dead node");
        ensure!(
            !c.redis
                .command(&["GET", "confab:room:phoenix"])?
                .contains(&dead_id),
            "the room key still names the dead node"
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_new_rooms_are_refused() -> Result<()> {
    let mut c = Cluster::start(2).await?;
    let limit = Duration::from_secs(60);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        let Answer::Joined(_kept) = raw_join(&c.nodes[0].ws_url(), "kept", "A").await? else {
            bail!("the first join on idle node 0 was not placed there");
        };
        c.redis.stop();
        match raw_join(&c.nodes[0].ws_url(), "fresh", "B").await? {
            Answer::Error(code, message) => ensure!(
                code == "cluster_unavailable"
                    && message.contains("Redis")
                    && message.contains("try again"),
                "refusal: {code}: {message}"
            ),
            Answer::Joined(_) => bail!("a new room was created locally with Redis down"),
            Answer::Redirect(url) => bail!("redirected to {url} with Redis down"),
        }
        // RTSP too: a player of a new room is told why, not served a split room.
        let mut raw = RtspConn::connect(loopback(c.nodes[0].rtsp)).await?;
        let url = rtsp_url(&c.nodes[0], "fresh", "cam");
        let r = raw.request("DESCRIBE", &url, &[], &[]).await?;
        ensure!(
            r.status == 503 && r.reason.contains("Redis"),
            "DESCRIBE of a new room with Redis down: {} {}",
            r.status,
            r.reason
        );
        // The room this node already serves keeps taking joins.
        match raw_join(&c.nodes[0].ws_url(), "kept", "C").await? {
            Answer::Joined(_) => {}
            Answer::Error(code, message) => {
                bail!("join of a room already here refused: {code}: {message}")
            }
            Answer::Redirect(url) => bail!("join of a room already here redirected to {url}"),
        }
        // Redis back (empty: nothing was persisted): the nodes register again and new rooms
        // are placed, without restarting them.
        c.redis.restart()?;
        let back = Instant::now();
        loop {
            match raw_join(&c.nodes[0].ws_url(), "fresh", "B").await? {
                Answer::Joined(_) | Answer::Redirect(_) => break,
                Answer::Error(code, message) => ensure!(
                    back.elapsed() < Duration::from_secs(15),
                    "15 s after Redis came back: {code}: {message}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "cluster redis back: joins placed again after {:?}",
            back.elapsed()
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_redis_does_not_start() -> Result<()> {
    let redis = TempRedis::start()?;
    let url = redis.url();
    drop(redis);
    let e = match TestServer::start_with_args(&[
        "--redis",
        &url,
        "--node-url",
        "http://127.0.0.1:0",
        "--cluster-secret",
        SECRET,
    ])
    .await
    {
        Ok(_) => bail!("a node started with Redis unreachable"),
        Err(e) => format!("{e:?}"),
    };
    ensure!(e.contains("cannot reach Redis at"), "{e}");
    Ok(())
}

/// Per-command call counts from `INFO commandstats`.
fn command_calls(redis: &TempRedis) -> Result<std::collections::BTreeMap<String, u64>> {
    let info = redis.command(&["INFO", "commandstats"])?;
    let mut calls = std::collections::BTreeMap::new();
    for line in info.lines() {
        let Some((name, stats)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(name) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let n = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        calls.insert(name.to_owned(), n);
    }
    Ok(calls)
}

fn calls_between(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(k, v)| *v > 0 && k != "info")
        .collect()
}

/// From WebSocket open to `joined`, following a redirect (a second handshake) if one comes.
async fn timed_join(url: &str, room: &str, name: &str) -> Result<(Duration, bool)> {
    let mut ws = RawWs::connect(url).await?;
    let start = Instant::now();
    let mut redirected = false;
    loop {
        ws.send_json(&json!({"type": "join", "room": room, "name": name}))
            .await?;
        let next = loop {
            match ws.recv(Duration::from_secs(10)).await? {
                RawEvent::Json(v) if v["type"] == "joined" => break None,
                RawEvent::Json(v) if v["type"] == "redirect" => {
                    break Some(v["url"].as_str().unwrap_or_default().to_owned())
                }
                RawEvent::Json(v) if v["type"] == "error" => bail!("{room}: {v}"),
                RawEvent::Json(_) => continue,
                other => bail!("{room}: {other:?}"),
            }
        };
        match next {
            None => {
                let took = start.elapsed();
                ws.close().await;
                return Ok((took, redirected));
            }
            Some(to) => {
                ensure!(!redirected, "redirected twice");
                redirected = true;
                ws = RawWs::connect(&to).await?;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// BENCHMARKS.md "Cluster placement": the join latency a redirect adds and the Redis commands
/// a join costs. `cargo test -p confab --test e2e cluster::bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn bench_redirect_latency_and_redis_ops() -> Result<()> {
    const N: usize = 20;
    let mut c = Cluster::start(2).await?;
    let limit = Duration::from_secs(120);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        // N rooms on node 0, each with someone in it.
        let mut hosts = Vec::new();
        for i in 0..N {
            match raw_join(&c.nodes[0].ws_url(), &format!("bench-{i}"), "Host").await? {
                Answer::Joined(ws) => hosts.push(ws),
                _ => bail!("bench-{i} not placed on node 0"),
            }
        }
        let mut results = Vec::new();
        for (label, node, want_redirect) in [("direct", 0, false), ("redirected", 1, true)] {
            let before = command_calls(&c.redis)?;
            let t0 = Instant::now();
            let mut took = Vec::new();
            for i in 0..N {
                let (d, redirected) =
                    timed_join(&c.nodes[node].ws_url(), &format!("bench-{i}"), label).await?;
                ensure!(redirected == want_redirect, "{label} join {i}: redirected {redirected}");
                took.push(d);
            }
            let elapsed = t0.elapsed();
            let calls = calls_between(&before, &command_calls(&c.redis)?);
            took.sort();
            results.push((label, took, calls, elapsed));
        }
        for (label, took, calls, elapsed) in &results {
            let scripts = calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
            eprintln!(
                "cluster bench {label}: N={N} p50 {:.2} ms p95 {:.2} ms max {:.2} ms; Redis calls during the batch ({:.1} s, 2 nodes heartbeating): {calls:?}; placement scripts per join {:.2}",
                percentile(took, 0.5).as_secs_f64() * 1e3,
                percentile(took, 0.95).as_secs_f64() * 1e3,
                took[N - 1].as_secs_f64() * 1e3,
                elapsed.as_secs_f64(),
                scripts as f64 / N as f64,
            );
        }
        drop(hosts);
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_from_any_node() -> Result<()> {
    let mut c = Cluster::start(2).await?;
    let limit = Duration::from_secs(60);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        let Answer::Joined(mut alice) = raw_join(&c.nodes[0].ws_url(), "ops", "Alice").await? else {
            bail!("the first join on idle node 0 was not placed there");
        };
        // Node 1 does not have the room; it checks the caller (loopback) and relays.
        let r = c.nodes[1]
            .http_request("POST", "/api/rooms/ops/participants/alice/mute", &[("Content-Type", "application/json")], br#"{"kind":"audio"}"#)
            .await?;
        ensure!(r.status == 204, "mute through node 1: {} {}", r.status, r.text());
        let muted = alice.expect_type("muted", Duration::from_secs(5)).await?;
        ensure!(muted["kind"] == "audio", "{muted}");
        let r = c.nodes[1]
            .http_request("PUT", "/api/rooms/ops/lock", &[("Content-Type", "application/json")], br#"{"locked":true}"#)
            .await?;
        ensure!(r.status == 200, "lock through node 1: {} {}", r.status, r.text());
        let state = alice.expect_type("room_state", Duration::from_secs(5)).await?;
        ensure!(state["locked"] == true, "{state}");
        // The room's node checks the target and its answer comes back.
        let r = c.nodes[1]
            .http_request("DELETE", "/api/rooms/ops/participants/nobody", &[], &[])
            .await?;
        ensure!(
            r.status == 404 && r.text().contains("nobody with id"),
            "remove of nobody through node 1: {} {}",
            r.status,
            r.text()
        );
        // A message without the cluster's signature is refused by the room's node.
        let id = Cluster::table(&c.nodes[0]).await?["node"].as_str().unwrap_or_default().to_owned();
        // Fresh and well-formed: only the signature is wrong.
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let forged = format!(
            "{}.{{\"id\":\"f1\",\"from\":\"x\",\"to\":\"{id}\",\"at\":{now_ms},\"body\":{{\"kind\":\"request\",\"room\":\"ops\",\"action\":{{\"type\":\"end\"}}}}}}",
            "0".repeat(64)
        );
        let receivers = c.redis.command(&["PUBLISH", &format!("confab:actions:{id}"), &forged])?;
        ensure!(receivers == "1", "PUBLISH reached {receivers:?} subscribers");
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.nodes[0].log_grep("relayed message refused").is_empty() {
            ensure!(Instant::now() < deadline, "node 0 did not log the forged message");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        alice.ping_pong(7, Duration::from_secs(5)).await?;
        // Ending the meeting from node 1 ends it on node 0.
        let r = c.nodes[1].http_request("DELETE", "/api/rooms/ops", &[], &[]).await?;
        ensure!(r.status == 204, "end through node 1: {} {}", r.status, r.text());
        loop {
            match alice.recv(Duration::from_secs(5)).await? {
                RawEvent::Closed(code) => {
                    ensure!(code == Some(4001), "closed with {code:?}, not 4001");
                    break;
                }
                RawEvent::Json(_) => continue,
                other => bail!("{other:?}"),
            }
        }
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

/// An H.264 camera without sound (less work for the 2-core machines tests run on).
fn camera(transport: Transport) -> Push {
    Push {
        video: PushVideo::H264 { gop: 30 },
        audio: PushAudio::None,
        transport,
        size: "640x360",
    }
}

/// ffmpeg pushing `camera` to `url` with its default RTSP transport (no `-rtsp_transport`:
/// UDP first, then TCP).
fn push_default_transport(url: &str) -> Result<FfmpegPush> {
    let mut args = camera(Transport::Udp).ffmpeg_args(url);
    let at = args
        .iter()
        .position(|a| a == "-rtsp_transport")
        .context("the push helper names its transport")?;
    args.drain(at..at + 2);
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(args);
    Ok(FfmpegPush {
        url: url.to_owned(),
        tool: Tool::spawn(&format!("ffmpeg pushing {url} (default transport)"), cmd)?,
    })
}

/// Waits until `node` lists `id` in `room` as a camera with an H.264 video track.
async fn wait_camera_in_room(
    node: &TestServer,
    room: &str,
    id: &str,
    within: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let p = room_participant(node, room, id).await?;
        if let Some(p) = &p {
            let video = p["tracks"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["kind"] == "video" && t["codec"] == "H264")
            });
            if p["kind"] == "camera" && video {
                return Ok(p.clone());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{room}/{id} on {}: not a camera with H.264 video within {within:?}: {p:?}",
            node.http
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `confab_…` counter `name` from a node's `/metrics`.
async fn counter(node: &TestServer, name: &str) -> Result<u64> {
    let (_, metrics) = node.http_get("/metrics").await?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics of {}", node.http))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_pushed_to_a_non_owner_node_plays_in_the_room() -> Result<()> {
    let _heavy = heavy().await;
    let c = Cluster::start(2).await?;
    let limit = Duration::from_secs(120);
    let r = tokio::time::timeout(limit, async {
        let c = &c;
        // The room lives on node 0 (A): the first join on an idle node is placed there.
        let Answer::Joined(_kept) = raw_join(&c.nodes[0].ws_url(), "yard", "Host").await? else {
            bail!("the first join on idle node 0 was not placed there");
        };
        let (a, b) = (&c.nodes[0], &c.nodes[1]);
        let a_url = format!("http://{}", a.http);
        // Both cameras stay in the room until the end.
        let mut pushes = Vec::new();
        for (id, tcp) in [("cam-tcp", true), ("cam-default", false)] {
            // Pushed to node 1 (B), which relays it to A.
            let url = rtsp_url(b, "yard", id);
            let mut push = if tcp {
                FfmpegPush::spawn(&url, camera(Transport::Tcp))?
            } else {
                push_default_transport(&url)?
            };
            push.wait_streaming(30, Duration::from_secs(30)).await?;
            if !tcp {
                // ffmpeg tried UDP, was refused by the relay, and went on over TCP.
                let said = push.tool.stderr();
                ensure!(
                    said.contains("461"),
                    "ffmpeg's default transport was not told 461; stderr:\n{said}"
                );
            }
            let p = wait_camera_in_room(a, "yard", id, Duration::from_secs(15)).await?;
            ensure!(p["state"] == "live", "{id} on A: {p}");
            // A serves the session, over TCP whatever the camera tried first.
            let started = a.log_grep(&format!("rtsp session started: yard/{id}"));
            ensure!(
                started.len() == 1
                    && started[0].contains("mode=\"publish\"")
                    && started[0].contains("transport=\"tcp\""),
                "A's log of {id}'s session: {started:?}"
            );
            let deadline = Instant::now() + Duration::from_secs(6);
            loop {
                let (_, body) = b.http_get("/api/rooms").await?;
                let list: Value = serde_json::from_str(&body)?;
                let yard: Vec<&Value> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["name"] == "yard")
                    .collect();
                let want = if tcp { 2 } else { 3 };
                if yard.len() == 1
                    && yard[0]["node"] == a_url.as_str()
                    && yard[0]["participants"] == want
                {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "B lists {list}, want yard on {a_url} with {want}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // B has no room of its own: its list (above, from A's heartbeat) names A, its
            // details are A's (307).
            let r = b.http_request("GET", "/api/rooms/yard", &[], &[]).await?;
            ensure!(
                r.status == 307 && r.header("location") == Some(&format!("{a_url}/api/rooms/yard")),
                "GET /api/rooms/yard on B: {} {:?}",
                r.status,
                r.header("location")
            );
            // The pictures arrive: played through B (redirected to A), decoded by ffmpeg.
            let played = ffmpeg_play(&url, Transport::Tcp, 2, Duration::from_secs(30)).await?;
            ensure!(
                played.video_frames >= 10 && played.video_size == Some((640, 360)),
                "{id} played through B: {} frames of {:?}; stderr:\n{}",
                played.video_frames,
                played.video_size,
                played.stderr
            );
            eprintln!(
                "cluster rtsp: {id} relayed through B, {} frames played back",
                played.video_frames
            );
            pushes.push(push);
        }
        ensure!(
            b.log_grep("rtsp session started").is_empty(),
            "B served an RTSP session itself instead of relaying it:\n{}",
            b.log_tail(40)
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_another_node_is_redirected_to_the_room_node() -> Result<()> {
    let _heavy = heavy().await;
    let c = Cluster::start(2).await?;
    let limit = Duration::from_secs(120);
    let r = tokio::time::timeout(limit, async {
        let c = &c;
        let (a, b) = (&c.nodes[0], &c.nodes[1]);
        // A camera pushed to idle node 0 (A) places the room there.
        let mut push = FfmpegPush::spawn(&rtsp_url(a, "porch", "cam"), camera(Transport::Tcp))?;
        push.wait_streaming(30, Duration::from_secs(30)).await?;
        wait_camera_in_room(a, "porch", "cam", Duration::from_secs(15)).await?;
        // B answers a DESCRIBE with A's URL, path and query kept.
        let mut raw = RtspConn::connect(loopback(b.rtsp)).await?;
        let asked = format!("{}?token=abc", rtsp_url(b, "porch", "cam"));
        let r = raw
            .request("DESCRIBE", &asked, &[("Accept", "application/sdp")], &[])
            .await?;
        let want = format!("{}?token=abc", rtsp_url(a, "porch", "cam"));
        ensure!(
            r.status == 302 && r.header("location") == Some(want.as_str()),
            "DESCRIBE {asked} on B: {} {} {:?}",
            r.status,
            r.reason,
            r.header("location")
        );
        let before = counter(b, "confab_cluster_redirects_total").await?;
        // ffmpeg follows the redirect, over TCP and over UDP.
        let url = rtsp_url(b, "porch", "cam");
        for transport in [Transport::Tcp, Transport::Udp] {
            let played = ffmpeg_play(&url, transport, 2, Duration::from_secs(30)).await?;
            ensure!(
                played.video_frames >= 10 && played.video_size == Some((640, 360)),
                "ffmpeg via B over {}: {} frames of {:?}; stderr:\n{}",
                transport.as_str(),
                played.video_frames,
                played.video_size,
                played.stderr
            );
        }
        // GStreamer's rtspsrc follows it too, with its default protocols and over TCP.
        for protocols in [None, Some("tcp")] {
            gst_play_h264(&url, protocols, 20, Duration::from_secs(30)).await?;
        }
        let after = counter(b, "confab_cluster_redirects_total").await?;
        ensure!(
            after == before + 4,
            "B counted {} redirects for 4 players",
            after - before
        );
        ensure!(
            b.log_grep("rtsp session started").is_empty(),
            "B served a player itself instead of redirecting it:\n{}",
            b.log_tail(40)
        );
        let players = a.log_grep("rtsp session started: porch/cam");
        ensure!(
            players
                .iter()
                .filter(|l| l.contains("mode=\"play\""))
                .count()
                >= 4,
            "A should serve the 4 players itself: {players:?}"
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

/// `GET path` on `node`, expected to answer `307` to the same path on `owner`.
async fn expect_redirect(node: &TestServer, path: &str, owner: &TestServer) -> Result<()> {
    let r = node.http_request("GET", path, &[], &[]).await?;
    let want = format!("http://{}{path}", owner.http);
    ensure!(
        r.status == 307 && r.header("location") == Some(want.as_str()),
        "GET {path} on {}: {} {:?} {} (want 307 to {want})",
        node.http,
        r.status,
        r.header("location"),
        r.text()
    );
    Ok(())
}

/// The state of camera `name` as `node` pulls it: `None` unless `GET …/cameras` answers
/// there (200, not a redirect) and lists it.
async fn camera_here(node: &TestServer, room: &str, name: &str) -> Result<Option<String>> {
    let r = node
        .http_request("GET", &format!("/api/rooms/{room}/cameras"), &[], &[])
        .await?;
    if r.status != 200 {
        return Ok(None);
    }
    Ok(r.json()?
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .map(|c| c["state"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_added_on_any_node_is_pulled_by_its_rooms_node() -> Result<()> {
    let _heavy = heavy().await;
    let mut c = Cluster::start(3).await?;
    let limit = Duration::from_secs(90);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        let still = StillServer::start(320, 240).await?;
        // The room lives on node 0 (its first join was there).
        let Answer::Joined(_host) = raw_join(&c.nodes[0].ws_url(), "cams", "Host").await? else {
            bail!("the first join on idle node 0 was not placed there");
        };
        // Added through node 1: registered in Redis, pulled by node 0.
        let r = post_camera(
            &c.nodes[1],
            "cams",
            json!({"name": "door", "url": still.url, "fps": 4}),
        )
        .await?;
        ensure!(
            r.status == 201,
            "POST through node 1: {} {}",
            r.status,
            r.text()
        );
        let body = r.json()?;
        ensure!(
            body["name"] == "door" && body["node"] == format!("http://{}", c.nodes[0].http),
            "the 201 body should name node 0: {body}"
        );
        wait_camera(
            &c.nodes[0],
            "cams",
            "door",
            "live",
            Duration::from_secs(15),
            |c| c.state == "live",
        )
        .await?;
        let door = room_participant(&c.nodes[0], "cams", "door")
            .await?
            .context("node 0's room does not list the camera")?;
        ensure!(door["kind"] == "camera", "{door}");
        // Nodes 1 and 2 have no room of their own: they send the room's reads to node 0.
        for i in [1, 2] {
            for path in ["/api/rooms/cams", "/api/rooms/cams/cameras"] {
                expect_redirect(&c.nodes[i], path, &c.nodes[0]).await?;
            }
        }
        // The name is taken in the whole cluster.
        let r = post_camera(
            &c.nodes[2],
            "cams",
            json!({"name": "door", "url": still.url}),
        )
        .await?;
        ensure!(
            r.status == 409,
            "second door through node 2: {} {}",
            r.status,
            r.text()
        );
        // Through the room's node, an id already in the room (the host) is taken too, and
        // its entry does not stay behind.
        let r = post_camera(
            &c.nodes[0],
            "cams",
            json!({"name": "host", "url": still.url}),
        )
        .await?;
        ensure!(
            r.status == 409,
            "a camera named like the host: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            c.redis
                .command(&["HEXISTS", "confab:cameras", "cams/host"])?
                == "0",
            "the refused camera's entry stayed in the registry"
        );
        // The registry entry is sealed, not bare JSON.
        let stored = c.redis.command(&["HGET", "confab:cameras", "cams/door"])?;
        ensure!(
            stored.len() > 65
                && stored.as_bytes()[64] == b'.'
                && stored[..64].bytes().all(|b| b.is_ascii_hexdigit()),
            "registry value: {stored:?}"
        );
        // The camera's picture asked on node 2: a 307 to node 0, which serves the JPEG.
        let frame = "/api/rooms/cams/participants/door/frame.jpeg?width=160";
        expect_redirect(&c.nodes[2], frame, &c.nodes[0]).await?;
        expect_redirect(
            &c.nodes[1],
            "/api/rooms/cams/participants/door/stream.mjpeg?fps=2",
            &c.nodes[0],
        )
        .await?;
        let r = c.nodes[0].http_request("GET", frame, &[], &[]).await?;
        ensure!(
            r.status == 200 && r.header("content-type") == Some("image/jpeg"),
            "GET {frame} on node 0: {} {:?} {}",
            r.status,
            r.header("content-type"),
            if r.status == 200 {
                String::new()
            } else {
                r.text()
            }
        );
        let jpeg = image::load_from_memory(&r.body).context("frame.jpeg is no JPEG")?;
        ensure!(
            jpeg.width() == 160,
            "frame.jpeg?width=160 is {}x{}",
            jpeg.width(),
            jpeg.height()
        );
        // An entry written into Redis without the secret is ignored (and logged), not pulled.
        let forged = format!(
            "{}.{{\"room\":\"cams\",\"name\":\"evil\",\"url\":\"{}\"}}",
            "0".repeat(64),
            still.url
        );
        c.redis
            .command(&["HSET", "confab:cameras", "cams/evil", &forged])?;
        let deadline = Instant::now() + Duration::from_secs(6);
        while c.nodes[0]
            .log_grep("a camera in Redis is not ours")
            .is_empty()
        {
            ensure!(
                Instant::now() < deadline,
                "node 0 did not log the forged camera"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            camera_here(&c.nodes[0], "cams", "evil").await?.is_none(),
            "node 0 pulls the forged camera"
        );
        // Deleted through node 1: the stop is relayed, and answered once done.
        let r = c.nodes[1]
            .http_request("DELETE", "/api/rooms/cams/cameras/door", &[], &[])
            .await?;
        ensure!(
            r.status == 204,
            "DELETE through node 1: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            camera_here(&c.nodes[0], "cams", "door").await?.is_none()
                && room_participant(&c.nodes[0], "cams", "door")
                    .await?
                    .is_none(),
            "node 0 still pulls door after the DELETE answered 204"
        );
        ensure!(
            c.redis
                .command(&["HEXISTS", "confab:cameras", "cams/door"])?
                == "0",
            "the registry entry outlived the DELETE"
        );
        let r = c.nodes[2]
            .http_request("DELETE", "/api/rooms/cams/cameras/door", &[], &[])
            .await?;
        ensure!(r.status == 404, "second DELETE: {} {}", r.status, r.text());
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_camera_is_pulled_by_a_live_node() -> Result<()> {
    let _heavy = heavy().await;
    let mut c = Cluster::start(3).await?;
    let limit = Duration::from_secs(90);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        let still = StillServer::start(320, 240).await?;
        let room = "phoenix-cam";
        let Answer::Joined(host) = raw_join(&c.nodes[2].ws_url(), room, "Host").await? else {
            bail!("the first join on idle node 2 was not placed there");
        };
        let r = post_camera(&c.nodes[0], room, json!({"name": "door", "url": still.url, "fps": 4})).await?;
        ensure!(r.status == 201, "POST through node 0: {} {}", r.status, r.text());
        wait_camera(&c.nodes[2], room, "door", "live", Duration::from_secs(15), |c| c.state == "live").await?;
        // The host leaves: the camera alone keeps the room occupied, and its key refreshed.
        drop(host);
        let key = format!("confab:room:{room}");
        let pttl = |c: &Cluster| -> Result<i64> { Ok(c.redis.command(&["PTTL", &key])?.trim().parse()?) };
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut low = pttl(c)?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = pttl(c)?;
            if now > low {
                break;
            }
            low = now;
            ensure!(Instant::now() < deadline, "room key not refreshed with only a camera in the room (PTTL {now})");
        }
        ensure!(
            room_participants(&c.nodes[2], room).await?.len() == 1,
            "node 2's room should hold only the camera"
        );
        let dead_id = Cluster::table(&c.nodes[2]).await?["node"].as_str().unwrap_or_default().to_owned();
        c.nodes[2].kill()?;
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(20);
        let (owner, took) = 'found: loop {
            for i in [0, 1] {
                if camera_here(&c.nodes[i], room, "door").await?.as_deref() == Some("live") {
                    break 'found (i, killed.elapsed());
                }
            }
            ensure!(Instant::now() < deadline, "no live node pulls the camera 20 s after kill -9");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("cluster camera failover: live on node {owner} {took:?} after kill -9 of its room's node");
        ensure!(took <= Duration::from_secs(15), "re-pulled only after {took:?}");
        let owner_id = Cluster::table(&c.nodes[owner]).await?["node"].as_str().unwrap_or_default().to_owned();
        let placed = c.redis.command(&["GET", &key])?;
        ensure!(placed.contains(&owner_id) && !placed.contains(&dead_id), "room key names {placed:?}, not node {owner}");
        // The other live node does not pull it: it sends the room's reads to the new owner.
        let other = 1 - owner;
        ensure!(
            camera_here(&c.nodes[other], room, "door").await?.is_none(),
            "node {other} pulls the camera too"
        );
        expect_redirect(&c.nodes[other], &format!("/api/rooms/{room}"), &c.nodes[owner]).await?;
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_camera_is_pulled_by_one_node() -> Result<()> {
    let _heavy = heavy().await;
    let still = StillServer::start(320, 240).await?;
    let config = format!(
        "[[camera]]\nroom = \"cfg-cams\"\nname = \"gate\"\nurl = \"{}\"\nfps = 4\n",
        still.url
    );
    let mut c = Cluster::start_with_config(3, Some(&config)).await?;
    let limit = Duration::from_secs(60);
    let r = tokio::time::timeout(limit, async {
        let c = &mut c;
        // Every node has the camera in its config; exactly one, the room's, pulls it.
        let deadline = Instant::now() + Duration::from_secs(15);
        let owner = loop {
            let mut live = Vec::new();
            for (i, node) in c.nodes.iter().enumerate() {
                if camera_here(node, "cfg-cams", "gate").await?.as_deref() == Some("live") {
                    live.push(i);
                }
            }
            ensure!(
                live.len() <= 1,
                "nodes {live:?} all pull the configured camera"
            );
            if let [i] = live[..] {
                break i;
            }
            ensure!(
                Instant::now() < deadline,
                "no node pulls the configured camera after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for i in (0..3).filter(|i| *i != owner) {
            expect_redirect(&c.nodes[i], "/api/rooms/cfg-cams/cameras", &c.nodes[owner]).await?;
        }
        // Its name is taken cluster-wide, and REST does not delete what the config says.
        let other = (owner + 1) % 3;
        let r = post_camera(
            &c.nodes[other],
            "cfg-cams",
            json!({"name": "gate", "url": still.url}),
        )
        .await?;
        ensure!(
            r.status == 409,
            "POST of the configured name: {} {}",
            r.status,
            r.text()
        );
        let r = c.nodes[other]
            .http_request("DELETE", "/api/rooms/cfg-cams/cameras/gate", &[], &[])
            .await?;
        ensure!(
            r.status == 409 && r.text().contains("config"),
            "DELETE of a configured camera: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            camera_here(&c.nodes[owner], "cfg-cams", "gate")
                .await?
                .is_some(),
            "the configured camera stopped"
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}
