//! Access control end to end: protected rooms (token, password), roles, operator actions over
//! the protocol and REST, RTSP credentials, throttling, limits, HTTP hardening, and no secrets
//! in the log.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::rtsp::{ffprobe, ffprobe_error, rtsp_url, FfmpegPush, Push, Transport};
use crate::common::signaling::{is_policy_close, RawEvent, RawWs, ServerMsg};
use crate::common::{expect_media, heavy, run_on, Peer, PeerConfig, TestServer};

const SECRET: &str = "e2e-token-secret-0123456789";
const API_KEY: &str = "e2e-api-key-abcdefghij";
const T: Duration = Duration::from_secs(10);

/// `confab token …` with the test secret, through the real binary.
fn mint(room: &str, name: &str, role: &str) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "--token-secret",
            SECRET,
            "token",
            "--room",
            room,
            "--name",
            name,
        ])
        .args(["--role", role, "--ttl", "1h"])
        .output()
        .context("running confab token")?;
    ensure!(
        out.status.success(),
        "confab token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(token.split('.').count() == 3, "not a JWT: {token:?}");
    Ok(token)
}

/// `confab hash-password` with `password` on standard input.
fn hash_password(password: &str) -> Result<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))
        .and_then(|mut i| {
            Ok(std::io::Write::write_all(
                &mut i,
                format!("{password}\n").as_bytes(),
            )?)
        })?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "confab hash-password failed");
    let hash = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(hash.starts_with("$argon2id$"), "not an argon2 hash: {hash}");
    Ok(hash)
}

async fn join_raw(server: &TestServer, join: Value) -> Result<(RawWs, Value)> {
    let mut ws = RawWs::connect(&server.ws_url()).await?;
    ws.send_json(&join).await?;
    loop {
        match ws.recv(T).await? {
            RawEvent::Json(v) if v["type"] == "joined" || v["type"] == "error" => {
                return Ok((ws, v))
            }
            RawEvent::Json(_) => continue,
            other => bail!("joining: {other:?}"),
        }
    }
}

fn expect_error(v: &Value, code: &str) -> Result<()> {
    ensure!(
        v["type"] == "error" && v["code"] == code,
        "expected error {code}, got {v}"
    );
    ensure!(
        v["message"].as_str().is_some_and(|m| m.len() > 10),
        "the error says what to do: {v}"
    );
    Ok(())
}

/// Waits for a message of `ty` on a peer's signaling.
async fn peer_event(
    p: &Peer,
    rx: &mut tokio::sync::broadcast::Receiver<ServerMsg>,
    what: &str,
    pred: impl Fn(&ServerMsg) -> bool,
) -> Result<ServerMsg> {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(m) if pred(&m) => return Ok(m),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => return Err(anyhow!("{}: signaling ended: {e}", p.id)),
            }
        }
    };
    tokio::time::timeout(T, fut)
        .await
        .map_err(|_| anyhow!("{}: no {what} within {T:?}", p.id))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_room_roles_and_operator_actions() -> Result<()> {
    let _heavy = heavy().await;
    let config =
        format!("token_secret = \"{SECRET}\"\n[[room]]\nname = \"vip\"\nrequire_token = true\n");
    let server = TestServer::start_with_config(&config).await?;
    run_on(server, Duration::from_secs(120), |server| async move {
        let url = server.ws_url();
        // No token, a forged one, one for another room: refused with a reason.
        let (_ws, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "Eve"})).await?;
        expect_error(&v, "token_required")?;
        let (_ws, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "Eve", "password": "guess"})).await?;
        expect_error(&v, "token_required")?;
        let other = mint("elsewhere", "Eve", "operator")?;
        let (_ws, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "Eve", "token": other})).await?;
        expect_error(&v, "bad_credentials")?;
        let mut forged = mint("vip", "Eve", "viewer")?;
        forged.replace_range(forged.len() - 4.., "AAAA");
        let (_ws, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "Eve", "token": forged})).await?;
        expect_error(&v, "bad_credentials")?;

        let presenter = Peer::join(&url, PeerConfig::new("vip", "ignored", 31).token(&mint("vip", "Ann", "presenter")?)).await?;
        ensure!(presenter.id == "ann", "the token fixes the name: id {}", presenter.id);
        let viewer = Peer::join(&url, PeerConfig::new("vip", "Vic", 32).subscriber_only().token(&mint("vip", "Vic", "viewer")?)).await?;
        expect_media(&viewer, &presenter, 10, 10, Duration::from_secs(40)).await?;

        // A viewer's media is refused.
        let mut vrx = viewer.events();
        viewer.send(&crate::common::signaling::ClientMsg::Publish { sdp: "v=0\r\n".into() })?;
        peer_event(&viewer, &mut vrx, "forbidden", |m| matches!(m, ServerMsg::Error { code, .. } if code == "forbidden")).await?;
        // A presenter cannot act as an operator.
        let mut prx = presenter.events();
        presenter.send_raw(json!({"type": "remove", "id": "vic"}))?;
        peer_event(&presenter, &mut prx, "forbidden", |m| matches!(m, ServerMsg::Error { code, .. } if code == "forbidden")).await?;

        let (mut op, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "x", "token": mint("vip", "Olga", "operator")?})).await?;
        ensure!(v["type"] == "joined" && v["role"] == "operator", "{v}");

        // Mute: the presenter is told, the viewer stops getting its audio, and gets it again
        // once the presenter turns the microphone back on.
        op.send_json(&json!({"type": "mute", "id": "ann", "kind": "audio"})).await?;
        let m = peer_event(&presenter, &mut prx, "muted", |m| matches!(m, ServerMsg::Muted { .. })).await?;
        ensure!(matches!(&m, ServerMsg::Muted { kind, by } if kind == "audio" && by == "Olga"), "{m:?}");
        // Packets already on the way may still land; then the count must stand still.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = viewer.state(|s| s.remote(&presenter.id).audio_packets);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = viewer.state(|s| s.remote(&presenter.id).audio_packets);
        ensure!(after == before, "muted audio still forwarded: {before} -> {after} packets in 1 s");
        let video = viewer.state(|s| s.remote(&presenter.id).frames_good);
        presenter.send_raw(json!({"type": "update", "audio": true}))?;
        viewer
            .wait_until("audio again after unmute", T, |s| s.remote(&presenter.id).audio_packets > after + 10)
            .await?;
        ensure!(viewer.state(|s| s.remote(&presenter.id).frames_good) > video, "video kept flowing while audio was muted");
        println!("mute: 0 audio packets forwarded in 1 s while muted ({before} before), audio back after unmute");

        // Lock: a new presenter is refused, an operator is not.
        op.send_json(&json!({"type": "lock", "locked": true})).await?;
        op.expect_type("room_state", T).await?;
        let (_ws, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "x", "token": mint("vip", "Bob", "presenter")?})).await?;
        expect_error(&v, "room_locked")?;
        let (_op2, v) = join_raw(&server, json!({"type": "join", "room": "vip", "name": "x", "token": mint("vip", "Otto", "operator")?})).await?;
        ensure!(v["type"] == "joined" && v["locked"] == true, "{v}");

        // Remove: the viewer gets a bye with the reason and its socket closes; others see it go.
        op.send_json(&json!({"type": "remove", "id": "vic"})).await?;
        viewer.wait_until("bye", T, |s| s.bye.is_some() && s.ws_closed.is_some()).await?;
        let bye = viewer.state(|s| s.bye.clone()).unwrap_or_default();
        ensure!(bye.contains("removed") && bye.contains("Olga"), "bye reason: {bye:?}");
        presenter.wait_until("viewer gone", T, |s| s.has_left("vic")).await?;
        op.send_json(&json!({"type": "remove", "id": "nobody"})).await?;
        let v = op.expect_type("error", T).await?;
        expect_error(&v, "unknown_participant")?;

        // End: everyone is out, the room is gone.
        op.send_json(&json!({"type": "end"})).await?;
        presenter.wait_until("meeting ended", T, |s| s.bye.as_deref().is_some_and(|b| b.contains("ended"))).await?;
        let bye = op.expect_type("bye", T).await?;
        ensure!(bye["reason"].as_str().is_some_and(|r| r.contains("ended")), "{bye}");
        let (status, _) = server.http_get("/api/rooms/vip").await?;
        ensure!(status == 404, "room still there after end: {status}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_room_throttling_and_protected_reads() -> Result<()> {
    let hash = hash_password("correct horse")?;
    let config = format!(
        "token_secret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\n[[room]]\nname = \"board\"\npassword_hash = \"{hash}\"\n"
    );
    let server = TestServer::start_with_config(&config).await?;
    run_on(server, Duration::from_secs(60), |server| async move {
        let join = |pw: Option<&str>| json!({"type": "join", "room": "board", "name": "Pat", "password": pw});
        let (_ws, v) = join_raw(&server, json!({"type": "join", "room": "board", "name": "Pat"})).await?;
        expect_error(&v, "auth_required")?;
        let (member, v) = join_raw(&server, join(Some("correct horse"))).await?;
        ensure!(v["type"] == "joined" && v["role"] == "presenter", "{v}");
        let upload = v["upload_token"].as_str().unwrap_or_default().to_owned();
        let (_open, v) = join_raw(&server, json!({"type": "join", "room": "lobby", "name": "Lou"})).await?;
        ensure!(v["type"] == "joined", "open rooms stay open: {v}");

        // Reads of the protected room need credentials; it is not listed.
        let list = server.http_request("GET", "/api/rooms", &[], &[]).await?.json()?;
        let names: Vec<&str> = list.as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        ensure!(names == ["lobby"], "GET /api/rooms lists {names:?}");
        for path in ["/api/rooms/board", "/api/rooms/board/messages", "/api/rooms/board/cameras"] {
            let r = server.http_request("GET", path, &[], &[]).await?;
            ensure!(r.status == 401, "GET {path} without credentials: {}", r.status);
            let r = server.http_request("GET", path, &[("Authorization", &format!("Bearer {API_KEY}"))], &[]).await?;
            ensure!(r.status == 200, "GET {path} with the API key: {}", r.status);
            let r = server.http_request("GET", &format!("{path}?token={upload}"), &[], &[]).await?;
            ensure!(r.status == 200, "GET {path} with a member's token: {}", r.status);
            let r = server.http_request("GET", path, &[("Authorization", &format!("Bearer {}", mint("board", "Rex", "viewer")?))], &[]).await?;
            ensure!(r.status == 200, "GET {path} with a join token: {}", r.status);
        }
        let admin_list = server
            .http_request("GET", "/api/rooms", &[("Authorization", &format!("Bearer {API_KEY}"))], &[])
            .await?
            .json()?;
        ensure!(admin_list.to_string().contains("board"), "the operator sees every room: {admin_list}");

        // REST operator actions need the API key.
        let r = server.http_request("PUT", "/api/rooms/board/lock", &[], br#"{"locked": true}"#).await?;
        ensure!(r.status == 401, "lock without the key: {}", r.status);
        let auth = format!("Bearer {API_KEY}");
        let r = server.http_request("PUT", "/api/rooms/board/lock", &[("Authorization", &auth)], br#"{"locked": true}"#).await?;
        ensure!(r.status == 200 && r.json()?["locked"] == true, "lock: {} {}", r.status, r.text());
        let (_ws, v) = join_raw(&server, join(Some("correct horse"))).await?;
        expect_error(&v, "room_locked")?;
        let r = server.http_request("POST", "/api/rooms/board/participants/pat/mute", &[("Authorization", &auth)], br#"{"kind": "video"}"#).await?;
        ensure!(r.status == 204, "mute: {} {}", r.status, r.text());
        let r = server.http_request("POST", "/api/rooms/board/participants/pat/mute", &[("Authorization", &auth)], br#"{"kind": "smell"}"#).await?;
        ensure!(r.status == 400, "a bad mute body: {}", r.status);
        let r = server.http_request("DELETE", "/api/rooms/board/participants/nobody", &[("Authorization", &auth)], &[]).await?;
        ensure!(r.status == 404, "removing nobody: {}", r.status);
        let r = server.http_request("DELETE", "/api/rooms/board/participants/pat", &[("Authorization", &auth)], &[]).await?;
        ensure!(r.status == 204, "remove: {} {}", r.status, r.text());
        let mut member = member;
        let mut saw = Vec::new();
        loop {
            match member.recv(T).await? {
                RawEvent::Json(v) => saw.push(v["type"].as_str().unwrap_or_default().to_owned()),
                RawEvent::Closed(_) => break,
                other => bail!("removed member: {other:?}"),
            }
        }
        ensure!(saw.contains(&"muted".to_owned()) && saw.contains(&"bye".to_owned()), "the removed member saw {saw:?}");
        let r = server.http_request("DELETE", "/api/rooms/lobby", &[("Authorization", &auth)], &[]).await?;
        ensure!(r.status == 204, "end the lobby meeting: {}", r.status);

        // Wrong passwords from one address are throttled, even before the right one.
        for i in 0..5 {
            let (_ws, v) = join_raw(&server, join(Some(&format!("wrong {i}")))).await?;
            expect_error(&v, "bad_credentials")?;
        }
        let (_ws, v) = join_raw(&server, join(Some("correct horse"))).await?;
        expect_error(&v, "throttled")?;
        Ok(())
    })
    .await
}

/// RTSP into and out of a password room: 401 with a Basic challenge without credentials, in
/// with the password in the URL or a join token, 403 for a viewer publishing, 503 when
/// throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_needs_credentials_in_protected_rooms() -> Result<()> {
    let _heavy = heavy().await;
    let hash = hash_password("s3cret-pw")?;
    let config = format!(
        "token_secret = \"{SECRET}\"\n[[room]]\nname = \"yard\"\npassword_hash = \"{hash}\"\n"
    );
    let server = TestServer::start_with_config(&config).await?;
    run_on(server, Duration::from_secs(120), |server| async move {
        // A raw DESCRIBE shows the challenge.
        let mut s =
            tokio::net::TcpStream::connect(crate::common::rtsp::loopback(server.rtsp)).await?;
        let url = rtsp_url(&server, "yard", "cam");
        s.write_all(format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(T, s.read(&mut buf)).await??;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        ensure!(text.starts_with("RTSP/1.0 401"), "{text}");
        ensure!(
            text.contains("WWW-Authenticate: Basic realm=\"confab\""),
            "{text}"
        );
        drop(s);

        let with_pw = url.replacen("rtsp://", "rtsp://cam:s3cret-pw@", 1);
        let mut push = FfmpegPush::spawn(&with_pw, Push::h264_opus(Transport::Tcp))?;
        push.wait_streaming(30, Duration::from_secs(30)).await?;
        // Playing: without credentials refused, with a viewer token in the URL allowed.
        let err = ffprobe_error(&url, T).await?;
        ensure!(err.contains("401"), "ffprobe without credentials: {err}");
        let viewer = mint("yard", "Vera", "viewer")?;
        let streams = ffprobe(
            &format!("{url}?token={viewer}"),
            Transport::Tcp,
            2,
            Duration::from_secs(30),
        )
        .await?;
        ensure!(
            streams.iter().any(|s| s.kind == "video" && s.frames > 0),
            "{streams:?}"
        );
        // A viewer token cannot publish.
        let mut bad = FfmpegPush::spawn(
            &format!("{}?token={viewer}", rtsp_url(&server, "yard", "cam2")),
            Push::h264_opus(Transport::Tcp),
        )?;
        let status = bad.tool.wait_exit(Duration::from_secs(20)).await?;
        ensure!(
            !status.success() && bad.tool.stderr().contains("403"),
            "viewer publishing: {status} {}",
            bad.tool.stderr()
        );
        // Five wrong passwords, then even the right one waits.
        for i in 0..5 {
            let wrong = url.replacen("rtsp://", &format!("rtsp://x:wrong{i}@"), 1);
            let err = ffprobe_error(&wrong, T).await?;
            ensure!(err.contains("401"), "wrong password {i}: {err}");
        }
        let err = ffprobe_error(&with_pw, T).await?;
        ensure!(err.contains("503"), "after five failures: {err}");
        drop(push);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_are_enforced() -> Result<()> {
    let config = "[limits]\nrooms = 2\nparticipants_per_room = 2\ntracks_per_participant = 1\n\
                  ws_message_bytes = 8192\nsignaling_rate = 5\nsignaling_burst = 10\nsdp_bytes = 2048\n\
                  rtsp_headers = 8\nrtsp_header_bytes = 2048\nrtsp_sessions = 2\n";
    let server = TestServer::start_with_config(config).await?;
    run_on(server, Duration::from_secs(60), |server| async move {
        let join = |room: &str, name: &str| json!({"type": "join", "room": room, "name": name});
        let (mut a, v) = join_raw(&server, join("one", "A")).await?;
        ensure!(v["type"] == "joined", "{v}");
        let (_b, v) = join_raw(&server, join("two", "B")).await?;
        ensure!(v["type"] == "joined", "{v}");
        let (_c, v) = join_raw(&server, join("three", "C")).await?;
        expect_error(&v, "too_many_rooms")?;
        let (_d, v) = join_raw(&server, join("one", "D")).await?;
        ensure!(v["type"] == "joined", "{v}");
        let (_e, v) = join_raw(&server, join("one", "E")).await?;
        expect_error(&v, "room_full")?;

        // Tracks and SDP size are checked before the media plane sees the offer.
        let two = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        a.send_json(&json!({"type": "publish", "sdp": two})).await?;
        let v = a.expect_type("error", T).await?;
        expect_error(&v, "limit_exceeded")?;
        ensure!(v["message"].as_str().unwrap_or_default().contains("tracks"), "{v}");
        let big = format!("v=0\r\n{}", "a=x-filler\r\n".repeat(300));
        a.send_json(&json!({"type": "publish", "sdp": big})).await?;
        let v = a.expect_type("error", T).await?;
        expect_error(&v, "limit_exceeded")?;

        // Message size: over the configured 8 KiB the socket is refused the frame.
        let mut w = RawWs::connect(&server.ws_url()).await?;
        let big = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(9000));
        // The server may close before the whole frame is written: then the write fails.
        if w.send_text(big).await.is_ok() {
            match w.recv(T).await? {
                RawEvent::Closed(_) => {}
                RawEvent::Json(v) => expect_error(&v, "too_large")?,
                other => bail!("9000-byte frame: {other:?}"),
            }
        }
        // Either way the socket is done, and the server keeps serving others.
        let (_ok, v) = join_raw(&server, join("two", "F")).await?;
        ensure!(v["type"] == "joined", "after the oversized frame: {v}");

        // Rate: a burst beyond 10 messages gets rate_limited, and flooding closes the socket.
        // The flood goes on (in batches of 40, each fully answered) until the server closes;
        // on a loaded machine the bucket refills between messages, so the pongs allowed are
        // the burst plus what 5 per second refilled while the flood lasted.
        let mut f = RawWs::connect(&server.ws_url()).await?;
        let started = std::time::Instant::now();
        let (mut pongs, mut limited, mut closed) = (0u32, 0u32, None);
        let mut nonce = 0u64;
        for _batch in 0..20 {
            for _ in 0..40 {
                nonce += 1;
                if f.send_json(&json!({"type": "ping", "nonce": nonce})).await.is_err() {
                    break; // closed under us; the close frame is read below
                }
            }
            for _ in 0..40 {
                match f.recv(T).await? {
                    RawEvent::Json(v) if v["type"] == "pong" => pongs += 1,
                    RawEvent::Json(v) if v["code"] == "rate_limited" => limited += 1,
                    RawEvent::Closed(code) => {
                        closed = Some(code);
                        break;
                    }
                    other => bail!("flood: {other:?}"),
                }
            }
            if closed.is_some() {
                break;
            }
        }
        let allowed = 10 + (5.0 * started.elapsed().as_secs_f64()).ceil() as u32 + 1;
        ensure!(
            (10..=allowed).contains(&pongs) && limited >= 10,
            "pongs {pongs} (at most {allowed}), rate_limited {limited}"
        );
        ensure!(is_policy_close(closed.flatten()), "flooding closes with 1008: {closed:?}");

        // RTSP: a third connection gets 503 while two are open.
        let rtsp = crate::common::rtsp::loopback(server.rtsp);
        let mut one = tokio::net::TcpStream::connect(rtsp).await?;
        let mut two = tokio::net::TcpStream::connect(rtsp).await?;
        for s in [&mut one, &mut two] {
            s.write_all(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").await?;
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(T, s.read(&mut buf)).await??;
            ensure!(buf[..n].starts_with(b"RTSP/1.0 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        }
        let third = rtsp_exchange(rtsp, "OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n").await?;
        ensure!(third.starts_with("RTSP/1.0 503") && third.contains("CSeq: 7"), "{third}");
        // Too many header lines is a 400 (on an open connection, so the count is not in the way).
        let mut req = "OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n".to_string();
        for i in 0..20 {
            req.push_str(&format!("X-H{i}: 1\r\n"));
        }
        req.push_str("\r\n");
        one.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(T, one.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out);
        ensure!(answer.starts_with("RTSP/1.0 400") && answer.contains("header"), "{answer}");
        Ok(())
    })
    .await
}

async fn rtsp_exchange(addr: std::net::SocketAddr, request: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    ensure!(!out.is_empty(), "no answer to {request:.40}");
    Ok(String::from_utf8_lossy(&out).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_security_headers_and_cross_origin_is_closed() -> Result<()> {
    let server = TestServer::start().await?;
    run_on(server, Duration::from_secs(30), |server| async move {
        for path in ["/", "/r/demo", "/web/room.js", "/api/rooms"] {
            let r = server
                .http_request("GET", path, &[("Origin", "https://evil.example")], &[])
                .await?;
            ensure!(r.status == 200, "GET {path}: {}", r.status);
            let csp = r.header("content-security-policy").unwrap_or_default();
            for part in [
                "script-src 'self'",
                "frame-ancestors 'none'",
                "object-src 'none'",
                "base-uri 'none'",
            ] {
                ensure!(csp.contains(part), "GET {path}: CSP {csp:?} lacks {part}");
            }
            // WebAssembly may be compiled (the blur's model runs on it), JavaScript never
            // evaluated from strings, and no inline script or style.
            ensure!(
                csp.contains("script-src 'self' 'wasm-unsafe-eval';")
                    && !csp.contains("'unsafe-inline'")
                    && !csp.contains("'unsafe-eval'"),
                "{csp}"
            );
            ensure!(
                r.header("referrer-policy") == Some("no-referrer"),
                "GET {path}: referrer policy"
            );
            ensure!(
                r.header("x-frame-options") == Some("DENY"),
                "GET {path}: framing"
            );
            ensure!(
                r.header("x-content-type-options") == Some("nosniff"),
                "GET {path}: nosniff"
            );
            ensure!(
                r.header("access-control-allow-origin").is_none(),
                "GET {path}: CORS is open"
            );
        }
        let pre = server
            .http_request(
                "OPTIONS",
                "/api/rooms/demo/cameras",
                &[
                    ("Origin", "https://evil.example"),
                    ("Access-Control-Request-Method", "POST"),
                ],
                &[],
            )
            .await?;
        ensure!(
            pre.header("access-control-allow-origin").is_none()
                && pre.header("access-control-allow-methods").is_none(),
            "preflight answered: {:?}",
            pre.headers
        );
        // A WebSocket from another site's page is refused; from the server's own page it opens.
        let connect = |origin: String| {
            let url = server.ws_url();
            async move {
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let mut req = url.into_client_request()?;
                req.headers_mut().insert("Origin", origin.parse()?);
                match tokio::time::timeout(T, tokio_tungstenite::connect_async(req)).await? {
                    Ok((_ws, resp)) => Ok::<u16, anyhow::Error>(resp.status().as_u16()),
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        Ok(resp.status().as_u16())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        };
        let status = connect("https://evil.example".into()).await?;
        ensure!(status == 403, "cross-site WebSocket: {status}");
        let status = connect(format!("http://{}", server.http)).await?;
        ensure!(status == 101, "same-origin WebSocket: {status}");
        Ok(())
    })
    .await
}

/// Passwords, tokens and keys never reach the log, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_log() -> Result<()> {
    let hash = hash_password("hunter2-pass")?;
    let data = crate::common::server::fresh_temp_dir("confab-e2e")?;
    let cfg = data.with_extension("toml");
    std::fs::write(&cfg, format!("token_secret = \"{SECRET}\"\napi_key = \"{API_KEY}\"\n[[room]]\nname = \"safe\"\npassword_hash = \"{hash}\"\n"))?;
    let cfg = cfg.to_string_lossy().to_string();
    let server = TestServer::start_in(data, "debug", &["--config", &cfg]).await?;
    run_on(server, Duration::from_secs(60), |server| async move {
        let token = mint("safe", "Tia", "operator")?;
        let (_a, v) = join_raw(
            &server,
            json!({"type": "join", "room": "safe", "name": "x", "token": token}),
        )
        .await?;
        ensure!(v["type"] == "joined", "{v}");
        let (_b, v) = join_raw(
            &server,
            json!({"type": "join", "room": "safe", "name": "P", "password": "hunter2-pass"}),
        )
        .await?;
        ensure!(v["type"] == "joined", "{v}");
        let upload = v["upload_token"].as_str().unwrap_or_default().to_owned();
        let (_c, v) = join_raw(
            &server,
            json!({"type": "join", "room": "safe", "name": "P", "password": "hunter3-wrong"}),
        )
        .await?;
        expect_error(&v, "bad_credentials")?;
        let r = server
            .http_request(
                "GET",
                &format!("/api/rooms/safe?token={upload}"),
                &[("Authorization", &format!("Bearer {API_KEY}"))],
                &[],
            )
            .await?;
        ensure!(r.status == 200, "{}", r.status);
        let url = rtsp_url(&server, "safe", "nobody");
        let _ = ffprobe_error(&format!("{url}?token={token}"), T).await?;
        let _ = ffprobe_error(&url.replacen("rtsp://", "rtsp://u:hunter2-pass@", 1), T).await?;
        let log = server.log_tail(100_000);
        ensure!(log.contains("DEBUG"), "debug logging is on: {log}");
        for secret in [
            token.as_str(),
            "hunter2-pass",
            "hunter3-wrong",
            API_KEY,
            SECRET,
            upload.as_str(),
            hash.as_str(),
        ] {
            ensure!(
                !log.contains(secret),
                "the log contains a secret ({:.12}…)",
                secret
            );
        }
        Ok(())
    })
    .await
}

#[test]
fn token_command_refuses_bad_input() -> Result<()> {
    for (args, says) in [
        (vec!["token", "--room", "a b", "--name", "N"], "room"),
        (
            vec!["token", "--room", "r", "--name", "N", "--role", "admin"],
            "role",
        ),
        (
            vec!["token", "--room", "r", "--name", "N", "--ttl", "forever"],
            "ttl",
        ),
        (
            vec![
                "--token-secret",
                "short",
                "token",
                "--room",
                "r",
                "--name",
                "N",
            ],
            "at least",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(&args)
            .env(
                "CONFAB_DATA",
                std::env::temp_dir().join("confab-e2e-token-cli"),
            )
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2) && err.contains(says),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    Ok(())
}
