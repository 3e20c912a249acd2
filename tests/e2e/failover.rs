//! Cluster failover and drain: real nodes sharing a throwaway Redis (and PostgreSQL for the
//! chat), on loopback.
//!
//! - kill -9 of a room's node: its people rejoin through another node, naming the node they
//!   lost; the room moves at once (not when the dead node's record expires), they meet again
//!   within 10 s, and the chat history, acknowledged messages included, is intact;
//! - drain (`confab drain`, or SIGTERM): the node takes no new rooms, tells the people of its
//!   rooms where the room went (`moved`), and exits once they have left; people who stay
//!   hold it up for `--drain-timeout` at most.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::cluster::{report, Cluster};
use crate::common::server::postgres_database;
use crate::common::signaling::{RawEvent, RawWs};
const T: Duration = Duration::from_secs(10);

/// A participant's signaling socket, joined (following redirects), and the `joined` message.
async fn join(
    url: &str,
    room: &str,
    name: &str,
    identity: &str,
    previous_node: Option<&str>,
) -> Result<(RawWs, Value)> {
    let mut url = url.to_owned();
    for _hop in 0..3 {
        let mut ws = RawWs::connect(&url).await?;
        let mut msg = json!({"type": "join", "room": room, "name": name, "identity": identity});
        if let Some(p) = previous_node {
            msg["previous_node"] = json!(p);
        }
        ws.send_json(&msg).await?;
        loop {
            match ws.recv(T).await? {
                RawEvent::Json(v) if v["type"] == "joined" => return Ok((ws, v)),
                RawEvent::Json(v) if v["type"] == "redirect" => {
                    url = v["url"]
                        .as_str()
                        .context("redirect without url")?
                        .to_owned();
                    break;
                }
                RawEvent::Json(v) if v["type"] == "error" => bail!("join on {url}: {v}"),
                RawEvent::Json(_) => continue,
                other => bail!("join on {url}: {other:?}"),
            }
        }
    }
    bail!("more than 3 redirects for room {room}")
}

/// Receives until a message of type `ty` (others skipped).
async fn expect(ws: &mut RawWs, ty: &str) -> Result<Value> {
    ws.expect_type(ty, T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_s_people_meet_again_with_their_history() -> Result<()> {
    let database = postgres_database().await?;
    let mut c = Cluster::start_with(3, None, &["--database", &database]).await?;
    let limit = Duration::from_secs(90);
    let r = tokio::time::timeout(limit, async {
        let (nodes, redis) = (&mut c.nodes, &c.redis);
        // Placed on idle node 2, where the first join arrives; Bob comes in through node 0.
        let (mut alice, joined) = join(
            &nodes[2].ws_url(),
            "lifeboat",
            "Alice",
            "alice-identity-0123456789",
            None,
        )
        .await?;
        let dead = joined["node"]
            .as_str()
            .context("joined without node")?
            .to_owned();
        let listed: Vec<&str> = joined["nodes"]
            .as_array()
            .context("joined without nodes")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            listed.len() == 3 && listed[0] == nodes[2].ws_url(),
            "nodes: {listed:?}"
        );
        let (mut bob, joined_b) = join(
            &nodes[0].ws_url(),
            "lifeboat",
            "Bob",
            "bob-identity-0123456789ab",
            None,
        )
        .await?;
        ensure!(
            joined_b["node"] == dead.as_str(),
            "Bob was not sent to the room's node: {joined_b}"
        );
        expect(&mut alice, "participant_joined").await?;

        alice
            .send_json(&json!({"type": "chat", "text": "before the crash", "client_id": "a-1"}))
            .await?;
        let ack = expect(&mut alice, "chat_ack").await?;
        ensure!(ack["client_id"] == "a-1", "{ack}");

        nodes[2].kill()?;
        let killed = Instant::now();
        // Both sockets see the node go (the kernel resets them).
        for ws in [&mut alice, &mut bob] {
            loop {
                match ws.recv(T).await? {
                    RawEvent::Closed(_) => break,
                    _ => continue,
                }
            }
        }
        // Alice's page was on node 2 itself: she rejoins through the next node `joined` listed,
        // naming the node she lost; Bob through his own page's node 0, likewise.
        let (mut alice, a) = join(
            listed[1],
            "lifeboat",
            "Alice",
            "alice-identity-0123456789",
            Some(&dead),
        )
        .await?;
        let (mut bob, b) = join(
            &nodes[0].ws_url(),
            "lifeboat",
            "Bob",
            "bob-identity-0123456789ab",
            Some(&dead),
        )
        .await?;
        let met = killed.elapsed();
        ensure!(
            a["node"] != dead.as_str() && a["node"] == b["node"],
            "Alice on {}, Bob on {}",
            a["node"],
            b["node"]
        );
        let names: Vec<&str> = b["participants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        ensure!(
            names.contains(&"Alice"),
            "Bob does not see Alice after failover: {b}"
        );
        ensure!(
            met < Duration::from_secs(10),
            "they met again only after {met:?}"
        );
        eprintln!("failover: both back in one room on another node {met:?} after kill -9");

        // The history, with the acknowledged message, is intact (PostgreSQL, shared).
        bob.send_json(&json!({"type": "history", "limit": 50}))
            .await?;
        let h = expect(&mut bob, "history").await?;
        ensure!(
            h["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["text"] == "before the crash" && m["client_id"] == "a-1"),
            "history after failover: {h}"
        );
        // An unacknowledged message resent after the rejoin (the page's outbox does this) is
        // stored once and reaches Bob.
        alice
            .send_json(&json!({"type": "chat", "text": "after the crash", "client_id": "a-2"}))
            .await?;
        expect(&mut alice, "chat_ack").await?;
        // (Join notices, e.g. Alice's own, may come first.)
        loop {
            let m = expect(&mut bob, "chat").await?;
            if m["message"]["kind"] == "system" {
                continue;
            }
            ensure!(m["message"]["text"] == "after the crash", "{m}");
            break;
        }
        // Redis names the live node now.
        let owner = redis.command(&["GET", "confab:room:lifeboat"])?;
        ensure!(
            !owner.contains(&dead),
            "the room key still names the dead node: {owner}"
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_everyone_then_the_node_exits() -> Result<()> {
    let mut c = Cluster::start_with(2, None, &["--drain-timeout", "30s"]).await?;
    let limit = Duration::from_secs(90);
    let r = tokio::time::timeout(limit, async {
        let nodes = &mut c.nodes;
        let (mut alice, a) = join(
            &nodes[1].ws_url(),
            "harbour",
            "Alice",
            "alice-identity-0123456789",
            None,
        )
        .await?;
        let (mut bob, _) = join(
            &nodes[1].ws_url(),
            "harbour",
            "Bob",
            "bob-identity-0123456789ab",
            None,
        )
        .await?;
        let draining_id = a["node"]
            .as_str()
            .context("joined without node")?
            .to_owned();
        expect(&mut alice, "participant_joined").await?;

        // `confab drain` against node 1: it returns once the node has stopped.
        let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["drain", "--url", &format!("http://{}", nodes[1].http)])
            .kill_on_drop(true)
            .output();
        let cli = tokio::spawn(cli);
        let started = Instant::now();
        let mut moved_to = Vec::new();
        for ws in [&mut alice, &mut bob] {
            let m = expect(ws, "moved").await?;
            ensure!(m["message"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
            moved_to.push(m["url"].as_str().unwrap_or_default().to_owned());
        }
        ensure!(
            moved_to.iter().all(|u| *u == nodes[0].ws_url()),
            "moved to {moved_to:?}, not node 0 {}",
            nodes[0].ws_url()
        );
        // While it drains, node 1 places nothing new on itself.
        let mut probe = RawWs::connect(&nodes[1].ws_url()).await?;
        probe
            .send_json(&json!({"type": "join", "room": "newcomer", "name": "Carol"}))
            .await?;
        let v = expect(&mut probe, "redirect").await?;
        ensure!(v["url"] == nodes[0].ws_url().as_str(), "{v}");
        let (status, body) = nodes[1].http_get("/api/node/drain").await?;
        ensure!(
            status == 200 && body.contains("\"draining\":true"),
            "{status} {body}"
        );

        // The pages leave and rejoin where they were sent; the node then exits by itself.
        drop(alice);
        drop(bob);
        let (_alice, a2) = join(
            &moved_to[0],
            "harbour",
            "Alice",
            "alice-identity-0123456789",
            None,
        )
        .await?;
        let (_bob, b2) = join(
            &moved_to[1],
            "harbour",
            "Bob",
            "bob-identity-0123456789ab",
            None,
        )
        .await?;
        ensure!(
            a2["node"] != draining_id.as_str() && a2["node"] == b2["node"],
            "{a2} / {b2}"
        );
        let status = nodes[1].wait_exit(Duration::from_secs(20)).await?;
        ensure!(status.success(), "the drained node exited with {status}");
        let out = cli.await??;
        let said = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && said.contains("draining") && said.contains("stopped"),
            "confab drain: {} {said}",
            out.status
        );
        eprintln!(
            "drain: everyone moved and the node exited {:?} after the drain began",
            started.elapsed()
        );
        Ok(())
    })
    .await;
    report(r, limit, &c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_people_who_stay_hold_it_up_only_until_the_timeout() -> Result<()> {
    let mut c = Cluster::start_with(2, None, &["--drain-timeout", "3s"]).await?;
    let limit = Duration::from_secs(60);
    let r = tokio::time::timeout(limit, async {
        let nodes = &mut c.nodes;
        let (mut stay, _) = join(
            &nodes[0].ws_url(),
            "anchor",
            "Stay",
            "stay-identity-0123456789ab",
            None,
        )
        .await?;
        nodes[0].terminate()?;
        let signalled = Instant::now();
        let m = expect(&mut stay, "moved").await?;
        ensure!(m["url"] == nodes[1].ws_url().as_str(), "{m}");
        // We do not follow: the node waits out --drain-timeout (3 s), then says goodbye.
        let bye = expect(&mut stay, "bye").await?;
        let waited = signalled.elapsed();
        ensure!(
            waited >= Duration::from_millis(2500),
            "bye after {waited:?}, before the drain timeout: {bye}"
        );
        let status = nodes[0].wait_exit(Duration::from_secs(10)).await?;
        ensure!(status.success(), "exit status {status}");
        ensure!(
            signalled.elapsed() < Duration::from_secs(12),
            "exited only after {:?}",
            signalled.elapsed()
        );
        // Without a cluster, SIGTERM is the plain, quick shutdown it always was (shutdown.rs).
        Ok(())
    })
    .await;
    report(r, limit, &c)
}
