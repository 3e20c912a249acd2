//! SIGTERM: clients are told (`bye`), sockets close, the process exits 0 within 5 s.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::common::signaling::{RawEvent, RawWs};
use crate::common::{Peer, PeerConfig, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_bye_and_exits_cleanly() -> Result<()> {
    let mut server = TestServer::start().await?;
    let result = async {
        let mut ws = RawWs::connect(&server.ws_url()).await?;
        ws.send_json(&json!({"type": "join", "room": "shutdown", "name": "Raw"}))
            .await?;
        ws.expect_type("joined", Duration::from_secs(5)).await?;
        // A full peer too, so that there are live peer connections at shutdown.
        let peer = Peer::join(
            &server.ws_url(),
            PeerConfig::new("shutdown", "Pat", 51).subscriber_only(),
        )
        .await?;

        let start = Instant::now();
        server.terminate()?;
        ws.expect_type("bye", Duration::from_secs(5))
            .await
            .context("bye on shutdown")?;
        match ws.recv(Duration::from_secs(5)).await? {
            RawEvent::Closed(_) => {}
            other => bail!("after bye expected a close, got {other:?}"),
        }
        peer.wait_until("bye and close on shutdown", Duration::from_secs(5), |s| {
            s.bye.is_some() && s.ws_closed.is_some()
        })
        .await?;
        let status = server.wait_exit(Duration::from_secs(5)).await?;
        ensure!(status.success(), "exit status {status}");
        eprintln!("server exited {:?} after SIGTERM", start.elapsed());
        Ok(())
    }
    .await;
    result.map_err(|e| {
        anyhow::anyhow!(
            "{e:?}\n\n--- server output (last 80 lines) ---\n{}",
            server.log_tail(80)
        )
    })
}
