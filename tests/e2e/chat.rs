//! Chat and files end to end (docs/protocol.md, "Chat" and "Files"): chat-only participants
//! over the real signaling socket, uploads and downloads over plain HTTP, and a server that is
//! killed with SIGKILL and started again on the same data directory.
//!
//! "Was not delivered" is always proven by a later marker message that the same receiver does
//! get: the server writes each connection's messages in order, so anything wrongly sent before
//! the marker would have arrived before it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::RngCore;
use serde_json::Value;

use crate::common::chat::{new_identity, now_millis, upload, ChatClient};
use crate::common::server::HttpResponse;
use crate::common::sha256::hex_digest;
use crate::common::signaling::{ChatMessage, ClientMsg, ServerMsg};
use crate::common::{run_with_server, TestServer};

const LIMIT: Duration = Duration::from_secs(60);

/// The message with `id` in `list`, if any.
fn find(list: &[ChatMessage], id: i64) -> Option<&ChatMessage> {
    list.iter().find(|m| m.id == id)
}

/// `GET /api/rooms/{room}/messages?limit=500` as a list of messages.
async fn rest_history(server: &TestServer, room: &str) -> Result<Vec<ChatMessage>> {
    let path = format!("/api/rooms/{room}/messages?limit=500");
    let resp = server.http_request("GET", &path, &[], &[]).await?;
    ensure!(
        resp.status == 200,
        "GET {path}: status {} body {:.300}",
        resp.status,
        resp.text()
    );
    let v = resp.json()?;
    let list: Vec<ChatMessage> = serde_json::from_value(v.clone())
        .with_context(|| format!("GET {path}: not a list of chat messages: {v:.500}"))?;
    Ok(list)
}

/// The fields every freshly stored text message must have.
fn check_stored(m: &ChatMessage, from: &ChatClient, text: &str, client_id: &str) -> Result<()> {
    ensure!(m.id > 0, "message id {} is not positive: {m:?}", m.id);
    ensure!(m.room == from.room, "room {:?} in {m:?}", m.room);
    ensure!(
        m.from == from.id && m.name == from.name,
        "from/name {:?}/{:?}, expected {:?}/{:?}",
        m.from,
        m.name,
        from.id,
        from.name
    );
    ensure!(m.text == text, "text {:?}, sent {text:?}", m.text);
    ensure!(m.kind == "text", "kind {:?} for a typed message", m.kind);
    ensure!(m.file.is_none(), "a text message with file {:?}", m.file);
    ensure!(
        m.client_id.as_deref() == Some(client_id),
        "client_id {:?}, sent {client_id:?}",
        m.client_id
    );
    let skew = (m.ts - now_millis()).abs();
    ensure!(
        skew < 5_000,
        "ts {} is {skew} ms away from now: not server UTC milliseconds?",
        m.ts
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_chat_and_a_late_joiner_gets_history() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let mut a = ChatClient::join(&url, "chat1", "Alice", None).await?;
        let mut b = ChatClient::join(&url, "chat1", "Bob", None).await?;
        // The server notes Bob's arrival: a public system message from Bob.
        let notice = a
            .expect_chat("system notice of Bob joining", |m| m.kind == "system")
            .await?;
        ensure!(
            notice.from == b.id
                && notice.name == "Bob"
                && !notice.private
                && notice.file.is_none()
                && notice.text.contains("Bob"),
            "notice of Bob joining: {notice:?}"
        );

        let text = "Hello Bob! <b>not bold</b> & \"quotes\" — ünïcødé 🎉";
        let ack = a.chat(text, None, "a-1").await?;
        check_stored(&ack, &a, text, "a-1").context("Alice's chat_ack")?;
        ensure!(
            !ack.private && ack.to.is_none(),
            "a public message came back private: {ack:?}"
        );
        let got = b.expect_chat_text(text).await?;
        ensure!(
            got == ack,
            "Bob received {got:?}\nbut Alice's ack says {ack:?}"
        );

        // Bob answers; once Alice has the answer, she would have had any echo of her own
        // message too: the sender gets chat_ack only.
        let reply = b.chat("Hi Alice", None, "b-1").await?;
        ensure!(
            reply.id > ack.id,
            "ids not increasing: {} then {}",
            ack.id,
            reply.id
        );
        a.expect_chat_text("Hi Alice").await?;
        let echoes = a.chats().filter(|m| m.id == ack.id).count();
        ensure!(
            echoes == 0,
            "Alice got her own message back as `chat` {echoes} time(s)"
        );

        // A late joiner sees both in its join history, oldest first, unchanged, along with
        // the notice of Bob's arrival.
        let c = ChatClient::join(&url, "chat1", "Carol", None).await?;
        ensure!(
            find(&c.join_history, notice.id) == Some(&notice),
            "Carol's join history lacks the notice {notice:?}"
        );
        let h = &c.join_history;
        ensure!(
            find(h, ack.id) == Some(&ack) && find(h, reply.id) == Some(&reply),
            "Carol's join history lacks or alters the two messages: {h:#?}"
        );
        for m in h {
            ensure!(!m.private, "Carol's history holds a private message: {m:?}");
            if m.kind == "system" {
                ensure!(
                    m.file.is_none() && !m.text.is_empty(),
                    "odd system notice {m:?}"
                );
            }
        }

        // Paging: the one message before Bob's reply is Alice's; `more` says whether anything
        // older exists.
        let (page, more) = b.history(Some(reply.id), Some(1)).await?;
        ensure!(
            page == vec![ack.clone()],
            "history(before={}, limit=1) = {page:#?}",
            reply.id
        );
        let (all, _) = b.history(None, Some(500)).await?;
        let older = all.iter().any(|m| m.id < ack.id);
        ensure!(
            more == older,
            "history(before={}, limit=1).more = {more}, but older messages exist: {older}",
            reply.id
        );
        ensure!(
            find(&all, ack.id).is_some() && find(&all, reply.id).is_some(),
            "full history lacks the messages: {all:#?}"
        );

        // The REST history (public only) has them too.
        let rest = rest_history(&server, "chat1").await?;
        ensure!(
            find(&rest, ack.id) == Some(&ack) && find(&rest, reply.id) == Some(&reply),
            "REST history lacks or alters the messages: {rest:#?}"
        );
        crate::common::chat::check_history_order(&rest).context("REST history")?;

        // Carol leaving is noted too.
        let carol = c.id.clone();
        c.leave().await?;
        let left = a
            .expect_chat("system notice of Carol leaving", |m| {
                m.kind == "system" && m.from == carol
            })
            .await?;
        ensure!(left.text.contains("Carol") && !left.private, "{left:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_reach_only_sender_and_recipient() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let room = "chat2";
        let alice_identity = new_identity();
        let bob_identity = new_identity();
        let mut a = ChatClient::join(&url, room, "Alice", Some(&alice_identity)).await?;
        let mut b = ChatClient::join(&url, room, "Bob", Some(&bob_identity)).await?;
        let mut c = ChatClient::join(&url, room, "Carol", None).await?;

        let secret = "for Bob only";
        let ack = a.chat(secret, Some(&b.id), "p-1").await?;
        check_stored(&ack, &a, secret, "p-1")?;
        ensure!(
            ack.private && ack.to.as_deref() == Some(b.id.as_str()),
            "private message acked as {ack:?}"
        );
        let got = b.expect_chat_text(secret).await?;
        ensure!(got == ack, "Bob received {got:?}\nAlice's ack: {ack:?}");
        // And one back from Bob to Alice.
        let back = b.chat("for Alice only", Some(&a.id), "p-2").await?;
        ensure!(back.private, "{back:?}");
        a.expect_chat_text("for Alice only").await?;

        let marker = a.chat("public marker", None, "m-1").await?;
        c.expect_chat_text("public marker").await?;
        b.expect_chat_text("public marker").await?;
        let leaked: Vec<&ChatMessage> = c.chats().filter(|m| m.private).collect();
        ensure!(leaked.is_empty(), "Carol received private messages: {leaked:#?}");

        let (ch, _) = c.history(None, Some(500)).await?;
        ensure!(
            find(&ch, marker.id).is_some(),
            "Carol's history lacks the public marker: {ch:#?}"
        );
        ensure!(
            ch.iter().all(|m| !m.private),
            "Carol's history holds private messages: {ch:#?}"
        );
        let (bh, _) = b.history(None, Some(500)).await?;
        ensure!(
            find(&bh, ack.id) == Some(&ack) && find(&bh, back.id).is_some(),
            "Bob's history lacks his private messages: {bh:#?}"
        );
        let rest = rest_history(&server, room).await?;
        ensure!(
            find(&rest, marker.id).is_some() && rest.iter().all(|m| !m.private),
            "REST history lacks the marker or shows private messages: {rest:#?}"
        );

        // Alice leaves and comes back with her identity: her private messages are hers again.
        let alice_id = a.id.clone();
        a.leave().await?;
        let a2 = ChatClient::join(&url, room, "Alice", Some(&alice_identity)).await?;
        ensure!(a2.id == alice_id, "rejoined as {:?}, not {alice_id:?}", a2.id);
        ensure!(
            find(&a2.join_history, ack.id) == Some(&ack)
                && find(&a2.join_history, back.id).is_some(),
            "Alice, back with the same identity, does not see her private messages: {:#?}",
            a2.join_history
        );
        a2.leave().await?;

        // Someone else taking the same display name (and so the same participant id) with
        // another identity, or with none, must not see them.
        for (label, identity) in [("another identity", Some(new_identity())), ("no identity", None)] {
            let mut m = ChatClient::join(&url, room, "Alice", identity.as_deref()).await?;
            ensure!(
                m.id == alice_id,
                "the impostor got id {:?}, expected the freed {alice_id:?} (test premise)",
                m.id
            );
            let mut seen = m.join_history.clone();
            seen.extend(m.history(None, Some(500)).await?.0);
            let leaked: Vec<&ChatMessage> = seen.iter().filter(|x| x.private).collect();
            ensure!(
                leaked.is_empty(),
                "a new participant {alice_id:?} with {label} sees Alice's private messages: {leaked:#?}"
            );
            // Dedup is per identity: Alice's client_id means nothing for someone else, who
            // gets a new message of their own, not Alice's private one acked back.
            let own = m.chat("mine", None, "p-1").await?;
            ensure!(
                own.id != ack.id && own.text == "mine" && !own.private,
                "a new participant {alice_id:?} with {label} reusing Alice's client_id got {own:?}"
            );
            m.leave().await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_a_client_id_is_acked_again_but_delivered_once() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let identity = new_identity();
        let mut a = ChatClient::join(&url, "chat3", "Alice", Some(&identity)).await?;
        let mut b = ChatClient::join(&url, "chat3", "Bob", None).await?;
        let first = a.chat("only once", None, "dup-1").await?;
        b.expect_chat_text("only once").await?;
        let again = a.chat("only once", None, "dup-1").await?;
        ensure!(
            again == first,
            "a resend was acked as a different message:\n{again:?}\nfirst: {first:?}"
        );
        // Different text under the same client_id: still the first message.
        let third = a.chat("changed my mind", None, "dup-1").await?;
        ensure!(third == first, "resend with other text acked as {third:?}");
        // After a reconnect (same name and identity, so same id) the resend is recognized.
        let a_id = a.id.clone();
        a.leave().await?;
        let mut a = ChatClient::join(&url, "chat3", "Alice", Some(&identity)).await?;
        ensure!(a.id == a_id, "rejoined as {:?}", a.id);
        let after = a.chat("only once", None, "dup-1").await?;
        ensure!(after == first, "resend after reconnect acked as {after:?}");

        a.chat("marker", None, "dup-2").await?;
        b.expect_chat_text("marker").await?;
        let n = b
            .chats()
            .filter(|m| m.client_id.as_deref() == Some("dup-1"))
            .count();
        ensure!(n == 1, "Bob received the message {n} times");
        let rest = rest_history(&server, "chat3").await?;
        let stored = rest
            .iter()
            .filter(|m| m.client_id.as_deref() == Some("dup-1"))
            .count();
        ensure!(stored == 1, "the history holds {stored} copies");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_is_rate_limited_and_the_connection_stays_open() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let mut a = ChatClient::join(&url, "chat4", "Flood", None).await?;
        let mut b = ChatClient::join(&url, "chat4", "Watcher", None).await?;
        const N: usize = 40;
        for i in 0..N {
            a.send_chat(&format!("flood {i}"), None, &format!("f-{i}"))?;
        }
        // Every message is answered once: chat_ack, or error rate_limited naming it.
        let mut answers: std::collections::BTreeMap<String, Option<ChatMessage>> =
            Default::default();
        while answers.len() < N {
            let what = format!("answers to all {N} messages ({} so far)", answers.len());
            let (cid, r) = a
                .expect(&what, Duration::from_secs(10), |m| match m {
                    ServerMsg::ChatAck { message, client_id } => {
                        Some(Ok((client_id.clone(), Some((**message).clone()))))
                    }
                    ServerMsg::Error {
                        code,
                        client_id: Some(c),
                        ..
                    } if code == "rate_limited" => Some(Ok((c.clone(), None))),
                    ServerMsg::Error {
                        code,
                        message,
                        client_id,
                    } => Some(Err(anyhow!(
                        "error {code} (client_id {client_id:?}): {message}"
                    ))),
                    _ => None,
                })
                .await??;
            ensure!(
                cid.starts_with("f-"),
                "an answer for client_id {cid:?}, never sent"
            );
            ensure!(
                answers.insert(cid.clone(), r).is_none(),
                "{cid} answered twice"
            );
        }
        let acked: Vec<ChatMessage> = (0..N)
            .filter_map(|i| answers[&format!("f-{i}")].clone())
            .collect();
        let limited = N - acked.len();
        ensure!(limited > 0, "40 messages at once, none rate limited");
        ensure!(
            acked.len() >= 18,
            "only {} of {N} acked: the documented burst is 20",
            acked.len()
        );
        a.ping(7)
            .await
            .context("the flooder's connection after rate limiting")?;
        // Still able to chat once the bucket refills (10 per second).
        let mut ok = None;
        for attempt in 0..20 {
            let cid = format!("after-{attempt}");
            a.send_chat("after the flood", None, &cid)?;
            let r = a
                .expect("ack or rate_limited", Duration::from_secs(5), |m| match m {
                    ServerMsg::ChatAck { message, client_id } if *client_id == cid => {
                        Some(Some((**message).clone()))
                    }
                    ServerMsg::Error {
                        code,
                        client_id: Some(c),
                        ..
                    } if code == "rate_limited" && *c == cid => Some(None),
                    _ => None,
                })
                .await?;
            if let Some(m) = r {
                ok = Some(m);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ok = ok.ok_or_else(|| anyhow!("still rate limited 4 s after the flood"))?;
        // The watcher got exactly the acked ones, once each, then the last.
        let last = b
            .expect_chat(&format!("id {}", ok.id), |m| m.id == ok.id)
            .await?;
        ensure!(last.text == "after the flood");
        let got: Vec<i64> = b
            .chats()
            .filter(|m| m.text.starts_with("flood "))
            .map(|m| m.id)
            .collect();
        let want: Vec<i64> = acked.iter().map(|m| m.id).collect();
        ensure!(
            got == want,
            "the watcher received flood messages {got:?}, but the acked ones are {want:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_validated_and_cleaned() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let mut a = ChatClient::join(&url, "chat5", "Alice", None).await?;
        let mut b = ChatClient::join(&url, "chat5", "Bob", None).await?;
        let mut refused = Vec::new();
        let bad = [
            ("4001 characters", "x".repeat(4001)),
            ("4001 two-byte characters", "é".repeat(4001)),
            ("empty text", String::new()),
            ("whitespace only", " \n \t\n  ".to_string()),
            ("control characters only", "\u{7}\u{1}\u{1b}".to_string()),
        ];
        for (i, (what, text)) in bad.iter().enumerate() {
            a.send_chat(text, None, &format!("bad-{i}"))?;
            a.expect_error("bad_text", Some(&format!("bad-{i}")), what)
                .await?;
            refused.push(format!("bad-{i}"));
        }
        a.ping(1).await?;

        // Exactly at the limit, counted in characters, not bytes.
        for (i, text) in ["y".repeat(4000), "ü".repeat(4000)].iter().enumerate() {
            let cid = format!("max-{i}");
            let m = a.chat(text, None, &cid).await.with_context(|| {
                format!("4000 characters ({} bytes) must be accepted", text.len())
            })?;
            ensure!(
                m.text == *text,
                "4000 characters stored as {} characters",
                m.text.chars().count()
            );
        }
        // The limit applies after cleaning: 4000 characters plus a control character.
        let padded = format!("{}\u{7}", "z".repeat(4000));
        let m = a
            .chat(&padded, None, "max-2")
            .await
            .context("4000 characters + BEL")?;
        ensure!(
            m.text == "z".repeat(4000),
            "stored {} characters",
            m.text.chars().count()
        );

        // Cleaning: trimmed, control characters removed, newlines kept.
        let dirty = "  \n line one\u{7}\n\u{1b}[31mline\u{0} two\u{7f}\n\nend  \n";
        let want = "line one\n[31mline two\n\nend";
        let cleaned = a.chat(dirty, None, "clean-1").await?;
        ensure!(
            cleaned.text == want,
            "sent {dirty:?}, stored {:?}, expected {want:?}",
            cleaned.text
        );
        let got = b
            .expect_chat(&format!("id {}", cleaned.id), |m| m.id == cleaned.id)
            .await?;
        ensure!(got.text == want, "Bob received {:?}", got.text);

        // Unknown recipient.
        a.send_chat("hello?", Some("nobody-here"), "to-nobody")?;
        a.expect_error(
            "unknown_recipient",
            Some("to-nobody"),
            "a private message to nobody-here",
        )
        .await?;
        refused.push("to-nobody".into());

        // Nothing refused reached Bob or the history.
        a.chat("marker", None, "marker").await?;
        b.expect_chat_text("marker").await?;
        let (hist, _) = b.history(None, Some(500)).await?;
        for cid in &refused {
            ensure!(
                !b.chats()
                    .any(|m| m.client_id.as_deref() == Some(cid.as_str())),
                "refused message {cid} was delivered to Bob"
            );
            ensure!(
                !hist
                    .iter()
                    .any(|m| m.client_id.as_deref() == Some(cid.as_str())),
                "refused message {cid} is in the history"
            );
        }
        // A refused client_id is not burnt: it can be used for a valid message.
        let reuse = a.chat("valid now", None, "bad-0").await?;
        ensure!(reuse.text == "valid now", "{reuse:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_kill_9() -> Result<()> {
    let mut server = TestServer::start().await?;
    let result = async {
        let room = "chat6";
        let url = server.ws_url();
        let bob_identity = new_identity();
        let alice_identity = new_identity();
        let mut a = ChatClient::join(&url, room, "Alice", Some(&alice_identity)).await?;
        let b = ChatClient::join(&url, room, "Bob", Some(&bob_identity)).await?;
        let mut public = Vec::new();
        for i in 0..5 {
            public.push(
                a.chat(&format!("persist {i}"), None, &format!("p-{i}"))
                    .await?,
            );
        }
        let private = a.chat("private persist", Some(&b.id), "p-priv").await?;
        // The last one acked right before the kill: an ack means "committed to disk".
        let last = a.chat("acked just before the kill", None, "p-last").await?;
        public.push(last.clone());
        let bob_id = b.id.clone();
        server.restart().await.context("restarting after kill -9")?;

        let url = server.ws_url();
        let mut c = ChatClient::join(&url, room, "Carol", None).await?;
        for m in &public {
            ensure!(
                find(&c.join_history, m.id) == Some(m),
                "after kill -9, the join history lacks or alters {m:?}: {:#?}",
                c.join_history
            );
        }
        ensure!(
            find(&c.join_history, private.id).is_none(),
            "Carol's history holds the private message after the restart"
        );
        let rest = rest_history(&server, room).await?;
        for m in &public {
            ensure!(
                find(&rest, m.id) == Some(m),
                "REST history lacks {m:?}: {rest:#?}"
            );
        }
        ensure!(
            find(&rest, private.id).is_none(),
            "REST shows the private message"
        );

        let b = ChatClient::join(&url, room, "Bob", Some(&bob_identity)).await?;
        ensure!(b.id == bob_id, "Bob rejoined as {:?}", b.id);
        ensure!(
            find(&b.join_history, private.id) == Some(&private),
            "Bob (same identity) lacks his private message after the restart: {:#?}",
            b.join_history
        );

        // Ids keep increasing across the restart, and dedup still knows old client ids.
        let next = c.chat("after restart", None, "c-1").await?;
        ensure!(
            next.id > last.id,
            "id {} after restart, {} before",
            next.id,
            last.id
        );
        let mut a = ChatClient::join(&url, room, "Alice", Some(&alice_identity)).await?;
        let again = a.chat("persist 0", None, "p-0").await?;
        ensure!(
            again == public[0],
            "resend after restart acked as {again:?}"
        );
        Ok(())
    }
    .await;
    result.map_err(|e| {
        anyhow!(
            "{e:?}\n\n--- server output (last 150 lines) ---\n{}",
            server.log_tail(150)
        )
    })
}

/// All regular files under `dir`, recursively (nothing excluded).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The chat message a 201 upload response carries: the message object itself or
/// `{"message": …}` (the document says only that the response carries it).
fn upload_message(resp: &HttpResponse) -> Result<ChatMessage> {
    ensure!(
        resp.status == 201,
        "upload: status {} body {:.300}",
        resp.status,
        resp.text()
    );
    let v = resp.json()?;
    let obj = if v.get("message").is_some_and(Value::is_object) {
        v["message"].clone()
    } else {
        v.clone()
    };
    serde_json::from_value(obj)
        .with_context(|| format!("upload response {v} holds no chat message"))
}

/// The path part of a file URL (absolute or relative).
fn url_path(url: &str) -> Result<String> {
    if url.starts_with('/') {
        return Ok(url.to_string());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| anyhow!("file url {url:?} is neither a path nor http(s)"))?;
    Ok(rest
        .find('/')
        .map_or("/".to_string(), |i| rest[i..].to_string()))
}

/// Downloads a file message's URL and checks the bytes and the protective headers.
async fn check_download(
    server: &TestServer,
    m: &ChatMessage,
    data: &[u8],
    disposition: &str,
) -> Result<HttpResponse> {
    let file = m
        .file
        .as_ref()
        .ok_or_else(|| anyhow!("file message without file: {m:?}"))?;
    let path = url_path(&file.url)?;
    let resp = server.http_request("GET", &path, &[], &[]).await?;
    let who = format!("GET {path} ({})", file.name);
    ensure!(
        resp.status == 200,
        "{who}: status {} {:.200}",
        resp.status,
        resp.text()
    );
    ensure!(
        resp.body.len() == data.len() && hex_digest(&resp.body) == hex_digest(data),
        "{who}: {} bytes with SHA-256 {}, uploaded {} bytes with {}",
        resp.body.len(),
        hex_digest(&resp.body),
        data.len(),
        hex_digest(data)
    );
    let header = |n: &str| resp.header(n).unwrap_or("").to_string();
    ensure!(
        header("x-content-type-options").eq_ignore_ascii_case("nosniff"),
        "{who}: X-Content-Type-Options {:?}",
        header("x-content-type-options")
    );
    let cd = header("content-disposition");
    ensure!(
        cd.to_ascii_lowercase().starts_with(disposition),
        "{who}: Content-Disposition {cd:?}, expected {disposition}"
    );
    let csp = header("content-security-policy");
    ensure!(
        csp.contains("sandbox"),
        "{who}: Content-Security-Policy {csp:?} lacks sandbox"
    );
    let ct = header("content-type");
    ensure!(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(&file.mime),
        "{who}: Content-Type {ct:?}, the message says {:?}",
        file.mime
    );
    Ok(resp)
}

/// A valid 1×1 PNG.
const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_announce_and_download_safely() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let room = "chat7";
        let a = ChatClient::join(&url, room, "Alice", None).await?;
        let mut b = ChatClient::join(&url, room, "Bob", None).await?;

        let mut data = vec![0u8; 200 * 1024];
        rand::rng().fill_bytes(&mut data);
        let resp = a
            .upload(server.http, "report.bin", "application/octet-stream", &data)
            .await?;
        let m = upload_message(&resp)?;
        let got = b.expect_chat("of kind file", |x| x.kind == "file").await?;
        ensure!(got == m, "Bob got {got:?}\nthe upload response says {m:?}");
        ensure!(
            m.from == a.id && !m.private && m.text == "report.bin",
            "file message {m:?}"
        );
        let f = m.file.as_ref().ok_or_else(|| anyhow!("no file in {m:?}"))?;
        ensure!(
            f.name == "report.bin"
                && f.size == data.len() as u64
                && !f.url.is_empty()
                && !f.mime.is_empty(),
            "file metadata {f:?}"
        );
        check_download(&server, &m, &data, "attachment").await?;

        // Images preview inline; SVG (scriptable) and HTML do not.
        let png = a
            .upload(server.http, "dot.png", "image/png", PNG_1X1)
            .await?;
        let png = upload_message(&png)?;
        ensure!(
            png.file.as_ref().is_some_and(|f| f.mime == "image/png"),
            "PNG stored as {:?}",
            png.file
        );
        check_download(&server, &png, PNG_1X1, "inline").await?;
        // Its preview: a JPEG of the same 1x1 picture, with the figures in its metadata.
        let png_url = url_path(&png.file.as_ref().map(|f| f.url.clone()).unwrap_or_default())?;
        let meta = server
            .http_request("GET", &format!("{png_url}/meta"), &[], &[])
            .await?;
        ensure!(meta.status == 200, "meta: {} {}", meta.status, meta.text());
        let meta = meta.json()?;
        ensure!(
            meta["preview"]["width"] == 1
                && meta["preview"]["height"] == 1
                && meta["preview"]["psnr"].as_f64().is_some_and(|p| p > 30.0)
                && meta["preview_error"].is_null(),
            "PNG meta {meta}"
        );
        let preview = server
            .http_request("GET", &format!("{png_url}/preview"), &[], &[])
            .await?;
        ensure!(
            preview.status == 200
                && preview.header("content-type") == Some("image/jpeg")
                && preview.body.starts_with(&[0xff, 0xd8]),
            "preview: {} {:?}",
            preview.status,
            preview.headers
        );
        // A "JPEG" that is no picture is shared all the same, with no preview and a reason.
        let fake = upload_message(
            &a.upload(
                server.http,
                "fake.jpg",
                "image/jpeg",
                b"not a picture at all",
            )
            .await?,
        )?;
        let fake_url = url_path(
            &fake
                .file
                .as_ref()
                .map(|f| f.url.clone())
                .unwrap_or_default(),
        )?;
        let r = server
            .http_request("GET", &format!("{fake_url}/preview"), &[], &[])
            .await?;
        ensure!(
            r.status == 422 && r.text().contains("not an image"),
            "{} {}",
            r.status,
            r.text()
        );
        let meta = server
            .http_request("GET", &format!("{fake_url}/meta"), &[], &[])
            .await?
            .json()?;
        ensure!(
            meta["preview"].is_null() && meta["preview_error"].is_string(),
            "fake meta {meta}"
        );
        let svg_data =
            br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#;
        let svg = upload_message(
            &a.upload(server.http, "x.svg", "image/svg+xml", svg_data)
                .await?,
        )?;
        check_download(&server, &svg, svg_data, "attachment").await?;
        let html_data = b"<!doctype html><script>alert(document.cookie)</script>";
        let html = upload_message(
            &a.upload(server.http, "x.html", "text/html", html_data)
                .await?,
        )?;
        check_download(&server, &html, html_data, "attachment").await?;

        // The file messages are in the history too.
        let rest = rest_history(&server, room).await?;
        for x in [&m, &png, &svg, &html] {
            ensure!(
                find(&rest, x.id) == Some(x),
                "REST history lacks or alters {x:?}"
            );
        }

        // Tokens: none, wrong, another room's, and one whose holder has left.
        let small = b"hello";
        let cases: [(&str, &str, Option<String>); 3] = [
            ("no token", room, None),
            ("a wrong token", room, Some(format!("{}x", a.upload_token))),
            (
                "Alice's token for another room",
                "chat7-other",
                Some(a.upload_token.clone()),
            ),
        ];
        for (what, r, token) in cases {
            let resp = upload(
                server.http,
                r,
                token.as_deref(),
                "t.txt",
                "text/plain",
                small,
            )
            .await?;
            ensure!(
                matches!(resp.status, 401 | 403),
                "upload with {what}: status {} {:.200}",
                resp.status,
                resp.text()
            );
            ensure!(
                resp.json().is_ok_and(|v| v["error"].is_string()),
                "upload with {what}: no JSON error body: {:.200}",
                resp.text()
            );
        }
        let token = a.upload_token.clone();
        a.leave().await?;
        let resp = upload(
            server.http,
            room,
            Some(&token),
            "t.txt",
            "text/plain",
            small,
        )
        .await?;
        ensure!(
            matches!(resp.status, 401 | 403),
            "upload with the token of a participant who left: status {}",
            resp.status
        );
        b.ping(1).await?;
        let announced: Vec<&ChatMessage> = b
            .chats()
            .filter(|x| x.kind == "file" && x.text == "t.txt")
            .collect();
        ensure!(
            announced.is_empty(),
            "refused uploads were announced: {announced:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_upload_is_refused_and_leaves_nothing() -> Result<()> {
    let server = TestServer::start_with_config("[limits]\nupload_bytes = 100000\n").await?;
    let result = async {
        let url = server.ws_url();
        let mut a = ChatClient::join(&url, "chat8", "Alice", None).await?;
        let files = server.data_dir().join("files");
        let mut big = vec![0u8; 150_000];
        rand::rng().fill_bytes(&mut big);
        let resp = a
            .upload(server.http, "big.bin", "application/octet-stream", &big)
            .await?;
        ensure!(
            resp.status == 413,
            "150000 bytes over a 100000 limit: status {} {:.300}",
            resp.status,
            resp.text()
        );
        let v = resp.json()?;
        ensure!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "413 without a JSON error: {v}"
        );
        let left = files_under(&files)?;
        ensure!(
            left.is_empty(),
            "after a refused upload, files remain: {left:?}"
        );
        // Far beyond the limit (past any framing allowance): the same JSON 413.
        let mut huge = vec![0u8; 1_000_000];
        rand::rng().fill_bytes(&mut huge);
        let resp = a
            .upload(server.http, "huge.bin", "application/octet-stream", &huge)
            .await?;
        ensure!(
            resp.status == 413 && resp.json().is_ok_and(|v| v["error"].is_string()),
            "1 MB over a 100000 limit: status {} body {:.300}",
            resp.status,
            resp.text()
        );
        let left = files_under(&files)?;
        ensure!(
            left.is_empty(),
            "after a refused 1 MB upload, files remain: {left:?}"
        );
        a.ping(1).await?;
        ensure!(
            !a.chats().any(|m| m.kind == "file"),
            "a refused upload was announced"
        );

        // Under the limit works, is stored once per content, and leaves no temp files.
        let mut ok = vec![0u8; 50_000];
        rand::rng().fill_bytes(&mut ok);
        let first = upload_message(
            &a.upload(server.http, "ok.bin", "application/octet-stream", &ok)
                .await?,
        )?;
        let second = upload_message(
            &a.upload(server.http, "ok-again.bin", "application/octet-stream", &ok)
                .await?,
        )?;
        ensure!(second.id > first.id, "{second:?}");
        let stored = files_under(&files)?;
        ensure!(
            stored.len() == 1,
            "one content uploaded twice, files: {stored:?}"
        );
        let bytes = std::fs::read(&stored[0])?;
        ensure!(
            hex_digest(&bytes) == hex_digest(&ok),
            "{} does not hold the uploaded bytes",
            stored[0].display()
        );
        ensure!(
            stored[0].to_string_lossy().contains(&hex_digest(&ok)),
            "{} is not named by the content's SHA-256 {}",
            stored[0].display(),
            hex_digest(&ok)
        );
        check_download(&server, &second, &ok, "attachment").await?;
        Ok(())
    }
    .await;
    result.map_err(|e| {
        anyhow!(
            "{e:?}\n\n--- server output (last 150 lines) ---\n{}",
            server.log_tail(150)
        )
    })
}

/// A stalled store (here an operator's `sqlite3` shell holding the write lock) holds up chat
/// only: the session keeps answering signaling, and acknowledges the message, and shows it to
/// the others, once it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_holds_up_chat_but_not_signaling() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let mut a = ChatClient::join(&url, "stall", "Alice", None).await?;
        let mut b = ChatClient::join(&url, "stall", "Bob", None).await?;
        a.expect_chat("Bob's join notice", |m| m.kind == "system")
            .await?;
        let db = rusqlite::Connection::open(server.data_dir().join("confab.db"))?;
        db.execute_batch("BEGIN IMMEDIATE")?;
        a.send_chat("while the disk is busy", None, "stall-1")?;
        a.send(&ClientMsg::Ping { nonce: Some(7) })?;
        a.expect(
            "pong while the store is stalled",
            Duration::from_secs(2),
            |m| matches!(m, ServerMsg::Pong { nonce: Some(7) }).then_some(()),
        )
        .await?;
        ensure!(
            !a.seen
                .iter()
                .any(|m| matches!(m, ServerMsg::ChatAck { .. })),
            "acknowledged before the store could commit: {:?}",
            a.seen
        );
        db.execute_batch("COMMIT")?;
        let ack = a.expect_ack("stall-1").await?;
        let got = b.expect_chat_text("while the disk is busy").await?;
        ensure!(got == ack, "Bob got {got:?}, Alice's ack says {ack:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_before_join_is_not_joined() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let mut ws = crate::common::signaling::RawWs::connect(&server.ws_url()).await?;
        ws.send_json(&serde_json::json!({"type": "chat", "text": "hi", "client_id": "x"}))
            .await?;
        let v = ws.expect_type("error", Duration::from_secs(5)).await?;
        ensure!(v["code"] == "not_joined", "chat before join: {v}");
        ws.send_json(&serde_json::json!({"type": "history"}))
            .await?;
        let v = ws.expect_type("error", Duration::from_secs(5)).await?;
        ensure!(v["code"] == "not_joined", "history before join: {v}");
        // client_id outside 1–64 characters is refused, the connection stays.
        ws.send_json(&serde_json::json!({"type": "join", "room": "chat9", "name": "Raw"}))
            .await?;
        ws.expect_type("joined", Duration::from_secs(5)).await?;
        for cid in [String::new(), "c".repeat(65)] {
            ws.send_json(&serde_json::json!({"type": "chat", "text": "hi", "client_id": cid}))
                .await?;
            match ws.expect_type("error", Duration::from_secs(5)).await {
                Ok(v) if v["code"] == "bad_message" || v["code"] == "bad_text" => {}
                Ok(v) => bail!("client_id of {} characters: {v}", cid.len()),
                Err(e) => return Err(e.context(format!("client_id of {} characters", cid.len()))),
            }
        }
        ws.ping_pong(1, Duration::from_secs(5)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_the_last_100_and_pages_back() -> Result<()> {
    run_with_server(LIMIT, |server| async move {
        let url = server.ws_url();
        let room = "chat10";
        // 6 senders × 20 (one burst each, within the rate limit) = 120 messages.
        let mut senders = Vec::new();
        for i in 0..6 {
            senders.push(ChatClient::join(&url, room, &format!("Sender {i}"), None).await?);
        }
        for (i, s) in senders.iter().enumerate() {
            for j in 0..20 {
                s.send_chat(&format!("m {i}.{j}"), None, &format!("c-{j}"))?;
            }
        }
        for s in &mut senders {
            for j in 0..20 {
                s.expect_ack(&format!("c-{j}")).await?;
            }
        }
        let all = rest_history(&server, room).await?;
        let texts = all.iter().filter(|m| m.kind == "text").count();
        ensure!(
            texts == 120,
            "REST history has {texts} text messages, 120 were acked"
        );

        let mut late = ChatClient::join(&url, room, "Late", None).await?;
        let h = late.join_history.clone();
        ensure!(
            h.len() == 100,
            "join history has {} messages, expected the last 100",
            h.len()
        );
        ensure!(
            late.join_history_more,
            "join history of 100 out of {}+ says more = false",
            all.len()
        );
        // The newest 100 at the time of joining: up to the newest text message, or the
        // notice of our own arrival if the server stored that first.
        let all = rest_history(&server, room).await?;
        let upto: Vec<ChatMessage> = all.iter().filter(|m| m.id <= h[99].id).cloned().collect();
        let newest_text = all.iter().rev().find(|m| m.kind == "text");
        ensure!(
            h[..] == upto[upto.len() - 100..]
                && newest_text.is_some_and(|t| find(&h, t.id).is_some()),
            "join history is not the newest 100: ids {}..{}, REST has {:?}",
            h[0].id,
            h[99].id,
            all.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        let all = upto;
        // Paging back from the oldest one gives the rest, and nothing more.
        let (older, more) = late.history(Some(h[0].id), Some(500)).await?;
        ensure!(
            !more,
            "history before {} with limit 500 says more = true",
            h[0].id
        );
        ensure!(
            older[..] == all[..all.len() - 100],
            "paging back gave {} messages (ids {:?}..{:?}), expected {}",
            older.len(),
            older.first().map(|m| m.id),
            older.last().map(|m| m.id),
            all.len() - 100
        );
        let (default_page, _) = late.history(None, None).await?;
        ensure!(
            default_page.len() == 100,
            "history without a limit returned {} messages, the default is 100",
            default_page.len()
        );
        // REST ?limit=N: the newest N, oldest first.
        let path = format!("/api/rooms/{room}/messages?limit=5");
        let resp = server.http_request("GET", &path, &[], &[]).await?;
        ensure!(resp.status == 200, "GET {path}: {}", resp.status);
        let five: Vec<ChatMessage> = serde_json::from_value(resp.json()?)?;
        let newest = rest_history(&server, room).await?;
        ensure!(
            five[..] == newest[newest.len() - 5..],
            "GET {path} is not the newest five: {:?}",
            five.iter().map(|m| m.id).collect::<Vec<_>>()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_midway_leaves_nothing() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    run_with_server(LIMIT, |server| async move {
        let a = ChatClient::join(&server.ws_url(), "chat11", "Alice", None).await?;
        let files = server.data_dir().join("files");
        let boundary = "cutoffboundary";
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let declared = head.len() + 300_000 + boundary.len() + 8;
        let request = format!(
            "POST /api/rooms/chat11/files HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n{head}",
            server.http, a.upload_token
        );
        let mut stream = tokio::net::TcpStream::connect(server.http).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut chunk = vec![0u8; 100_000];
        rand::rng().fill_bytes(&mut chunk);
        stream.write_all(&chunk).await?;
        stream.flush().await?;
        // No event tells that the server has started writing; poll (bounded) for its
        // temporary file, which also proves the walk below looks in the right place.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while files_under(&files)?.is_empty() {
            ensure!(
                std::time::Instant::now() < deadline,
                "no temporary file under {} while an upload is under way",
                files.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The client gives up: the connection closes with the body incomplete.
        drop(stream);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = files_under(&files)?;
            if left.is_empty() {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "5 s after a client gave up on an upload midway, files remain: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    })
    .await
}
