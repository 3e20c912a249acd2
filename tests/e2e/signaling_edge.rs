//! The signaling socket under misuse, driven by hand over a raw WebSocket.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::common::run_with_server;
use crate::common::signaling::{is_policy_close, RawEvent, RawWs};

const T: Duration = Duration::from_secs(5);

/// Expects an `error` message with `code` (other message types in between are skipped).
async fn expect_error(ws: &mut RawWs, code: &str, after: &str) -> Result<Value> {
    let v = ws
        .expect_type("error", T)
        .await
        .with_context(|| format!("expected error {code:?} after {after}"))?;
    ensure!(
        v["code"] == code,
        "after {after}: error code {} instead of {code:?}: {v}",
        v["code"]
    );
    ensure!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "after {after}: error without a message: {v}"
    );
    Ok(v)
}

async fn join(ws: &mut RawWs, room: &str, name: &str) -> Result<Value> {
    ws.send_json(&json!({"type": "join", "room": room, "name": name}))
        .await?;
    ws.expect_type("joined", T)
        .await
        .with_context(|| format!("joining {room:?} as {name:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_the_socket_stays_open() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let mut ws = RawWs::connect(&server.ws_url()).await?;
        ws.send_text("{this is not json").await?;
        expect_error(&mut ws, "bad_message", "malformed JSON").await?;
        ws.ping_pong(1, T)
            .await
            .context("ping after malformed JSON")?;

        ws.send_json(&json!({"type": "no_such_type"})).await?;
        expect_error(&mut ws, "bad_message", "an unknown type").await?;
        ws.send_json(&json!({"type": "join", "room": 5, "name": "x"}))
            .await?;
        expect_error(&mut ws, "bad_message", "a join with a numeric room").await?;
        ws.send_binary(vec![1, 2, 3]).await?;
        ws.expect_type("error", T)
            .await
            .context("expected an error for a binary frame")?;
        ws.ping_pong(2, T)
            .await
            .context("ping after binary frame")?;

        // The same after joining.
        let joined = join(&mut ws, "edge", "Eve").await?;
        ensure!(
            joined["participants"]
                .as_array()
                .is_some_and(|p| p.is_empty()),
            "first in the room but joined says {joined}"
        );
        ws.send_text("[1,2,").await?;
        expect_error(&mut ws, "bad_message", "malformed JSON after join").await?;
        ws.ping_pong(3, T).await?;

        // ping without a nonce gets a pong without one
        ws.send_json(&json!({"type": "ping"})).await?;
        let pong = ws.expect_type("pong", T).await?;
        ensure!(
            pong.get("nonce").is_none_or(Value::is_null),
            "pong for a ping without nonce: {pong}"
        );
        ws.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_join_are_not_joined() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let mut ws = RawWs::connect(&server.ws_url()).await?;
        ws.send_json(&json!({"type": "publish", "sdp": "v=0\r\n"}))
            .await?;
        expect_error(&mut ws, "not_joined", "publish before join").await?;
        ws.send_json(&json!({"type": "subscribe_answer", "sdp": "v=0\r\n", "revision": 1}))
            .await?;
        expect_error(&mut ws, "not_joined", "subscribe_answer before join").await?;
        ws.send_json(&json!({"type": "update", "audio": false}))
            .await?;
        expect_error(&mut ws, "not_joined", "update before join").await?;
        // Still usable: join works now, and a second join is refused.
        join(&mut ws, "edge", "Late").await?;
        ws.send_json(&json!({"type": "join", "room": "edge", "name": "Again"}))
            .await?;
        expect_error(&mut ws, "already_joined", "a second join").await?;
        ws.ping_pong(4, T).await?;
        ws.send_json(&json!({"type": "leave"})).await?;
        ws.expect_type("bye", T).await.context("bye after leave")?;
        match ws.recv(T).await? {
            RawEvent::Closed(_) => {}
            other => bail!("after bye expected the socket to close, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_room_and_name_are_refused() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let mut ws = RawWs::connect(&server.ws_url()).await?;
        let long_room = "r".repeat(65);
        for room in ["bad room", "", "a/b", "ünï", long_room.as_str()] {
            ws.send_json(&json!({"type": "join", "room": room, "name": "Eve"}))
                .await?;
            expect_error(&mut ws, "bad_room", &format!("join with room {room:?}")).await?;
        }
        // The refusals did not cost the connection: a good join works.
        join(&mut ws, "edge.Room_1-x", "Eve").await?;
        ws.close().await;

        let mut ws = RawWs::connect(&server.ws_url()).await?;
        let long_name = "n".repeat(65);
        for name in ["", "   ", long_name.as_str()] {
            ws.send_json(&json!({"type": "join", "room": "edge", "name": name}))
                .await?;
            expect_error(&mut ws, "bad_name", &format!("join with name {name:?}")).await?;
        }
        let joined = join(&mut ws, "edge", "  Zoë  ").await?;
        ensure!(joined["room"] == "edge", "joined: {joined}");
        // The display name is stored trimmed.
        let (status, body) = server.http_get("/api/rooms/edge").await?;
        let room: Value = serde_json::from_str(&body).context("room JSON")?;
        ensure!(
            status == 200 && room["participants"][0]["name"] == "Zoë",
            "/api/rooms/edge: {status} {body}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_and_the_server_keeps_serving() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let mut bystander = RawWs::connect(&server.ws_url()).await?;
        join(&mut bystander, "big", "Bystander").await?;

        let mut ws = RawWs::connect(&server.ws_url()).await?;
        join(&mut ws, "big", "Sender").await?;
        let huge = json!({"type": "publish", "sdp": "x".repeat(70 * 1024)}).to_string();
        ws.send_text(huge).await?;
        // Either an error `too_large` (and the socket stays usable) or a close.
        let mut closed = false;
        loop {
            match ws.recv(T).await.context("reply to a 70 KiB frame")? {
                RawEvent::Json(v) if v["type"] == "error" => {
                    ensure!(v["code"] == "too_large", "70 KiB frame: {v}");
                    break;
                }
                // Presence, chat history and notices may arrive in between.
                RawEvent::Json(v)
                    if ["participant_joined", "candidate", "history", "chat"]
                        .iter()
                        .any(|t| v["type"] == *t) =>
                {
                    continue
                }
                RawEvent::Closed(_) => {
                    closed = true;
                    break;
                }
                other => bail!("70 KiB frame answered with {other:?}"),
            }
        }
        if !closed {
            ws.ping_pong(5, T)
                .await
                .context("ping after the refused frame")?;
        }
        // Others are unaffected.
        bystander.ping_pong(6, T).await?;
        let mut newcomer = RawWs::connect(&server.ws_url()).await?;
        join(&mut newcomer, "big", "Newcomer").await?;
        newcomer.ping_pong(7, T).await?;
        let (status, body) = server.http_get("/healthz").await?;
        ensure!(
            status == 200,
            "/healthz after the big frame: {status} {body}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_bad_messages_in_a_row_close_with_1008() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let mut ws = RawWs::connect(&server.ws_url()).await?;
        for i in 0..10 {
            ws.send_text(format!("garbage {i}")).await?;
        }
        let mut errors = 0;
        let code = loop {
            match ws.recv(T).await.context("waiting for the close")? {
                RawEvent::Json(v) if v["type"] == "error" => errors += 1,
                RawEvent::Closed(code) => break code,
                other => bail!("unexpected {other:?}"),
            }
        };
        ensure!(
            is_policy_close(code),
            "closed with {code:?} instead of 1008 after {errors} errors"
        );
        ensure!(errors <= 10, "{errors} errors for 10 bad messages");
        // Nine bad ones followed by a good one do not close it.
        let mut ws = RawWs::connect(&server.ws_url()).await?;
        for i in 0..9 {
            ws.send_text(format!("garbage {i}")).await?;
            expect_error(&mut ws, "bad_message", "garbage").await?;
        }
        ws.ping_pong(8, T).await?;
        ws.send_text("garbage again").await?;
        expect_error(&mut ws, "bad_message", "garbage after a good message").await?;
        ws.ping_pong(9, T)
            .await
            .context("the bad-message count was not reset by a good message")?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_basics() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let (status, body) = server.http_get("/healthz").await?;
        ensure!(
            status == 200 && body.trim() == "ok",
            "/healthz: {status} {body:?}"
        );
        let (status, body) = server.http_get("/api/rooms/nobody-here").await?;
        ensure!(status == 404, "/api/rooms/nobody-here: {status} {body}");
        let err: Value = serde_json::from_str(&body).context("404 body is JSON")?;
        ensure!(err["error"].is_string(), "404 body: {body}");
        let (status, body) = server.http_get("/api/rooms/bad%20room").await?;
        ensure!(status == 400, "/api/rooms/bad%20room: {status} {body}");

        let mut ws = RawWs::connect(&server.ws_url()).await?;
        let joined = join(&mut ws, "rest", "Rita").await?;
        let id = joined["id"].as_str().context("joined.id")?.to_string();
        let (status, body) = server.http_get("/api/rooms/rest").await?;
        ensure!(status == 200, "/api/rooms/rest: {status} {body}");
        let room: Value = serde_json::from_str(&body)?;
        ensure!(
            room["participants"][0]["id"] == id.as_str()
                && room["participants"][0]["name"] == "Rita"
                && room["participants"][0]["kind"] == "browser",
            "/api/rooms/rest: {room}"
        );
        let (status, body) = server.http_get("/api/rooms").await?;
        let rooms: Value = serde_json::from_str(&body)?;
        ensure!(
            status == 200
                && rooms.as_array().is_some_and(|r| r
                    .iter()
                    .any(|r| r["name"] == "rest" && r["participants"] == 1)),
            "/api/rooms: {status} {body}"
        );
        Ok(())
    })
    .await
}
