//! A Janus videoroom participant, driven through Janus's WebSocket JSON API (1.x, multistream):
//! `create` a session, `attach` the videoroom plugin, `join` as publisher and `publish` with our
//! offer; subscribers `join` as subscriber with the feeds they want, answer Janus's offer and
//! `start`. Used only to compare: the same peers and media as against confab.
//!
//! Janus (libnice) gathers no loopback candidates, so it has to be reached on a real interface;
//! scripts/bench.sh runs it inside a network namespace with a veth pair for that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::peer::{Context, Publication, PublishSpec, RxStats, Subscription};

const VIDEOROOM: &str = "janus.plugin.videoroom";
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One WebSocket to Janus; replies are matched to requests by transaction.
struct Conn {
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
    next: AtomicU64,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Conn {
    async fn connect(url: &str) -> Result<Arc<Conn>> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| anyhow!("WebSocket connect to {url} timed out"))?
            .with_context(|| format!("WebSocket connect to Janus at {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let conn = Arc::new(Conn {
            out,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            reader: Mutex::new(None),
            writer: Mutex::new(None),
        });
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let weak = Arc::downgrade(&conn);
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(t) = frame else { continue };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                let Some(conn) = weak.upgrade() else { break };
                if let Some(tr) = v["transaction"].as_str() {
                    let pending = conn.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(tx) = pending.get(tr) {
                        let _ = tx.send(v);
                    }
                }
                // Events without a transaction (webrtcup, media, hangup, slowlink) are not
                // needed: the peer connections report their own state.
            }
        });
        *conn.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        *conn.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        Ok(conn)
    }

    /// Sends `msg` with a fresh transaction and returns the first reply that is not an `ack`
    /// (or the `ack` itself when `ack_is_final`).
    async fn request(&self, mut msg: Value, ack_is_final: bool) -> Result<Value> {
        let tr = format!("t{}", self.next.fetch_add(1, Relaxed));
        msg["transaction"] = json!(tr);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tr.clone(), tx);
        let what = msg["janus"].as_str().unwrap_or("?").to_string();
        let request = msg["body"]["request"].as_str().map(str::to_string);
        let result = async {
            self.out
                .send(Message::text(msg.to_string()))
                .map_err(|_| anyhow!("Janus connection is closed"))?;
            loop {
                let v = tokio::time::timeout(REPLY_TIMEOUT, rx.recv())
                    .await
                    .map_err(|_| anyhow!("no reply from Janus within {REPLY_TIMEOUT:?}"))?
                    .ok_or_else(|| anyhow!("Janus connection closed"))?;
                match v["janus"].as_str() {
                    Some("ack") if !ack_is_final => continue,
                    Some("error") => bail!("Janus error: {}", v["error"]),
                    _ => {}
                }
                if let Some(e) = v["plugindata"]["data"].get("error") {
                    bail!(
                        "videoroom error {}: {e}",
                        v["plugindata"]["data"]["error_code"]
                    );
                }
                return Ok(v);
            }
        }
        .await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tr);
        result.with_context(|| format!("Janus {what} {}", request.unwrap_or_default()))
    }

    fn close(&self) {
        for h in [&self.reader, &self.writer] {
            if let Some(h) = h.lock().unwrap_or_else(|e| e.into_inner()).take() {
                h.abort();
            }
        }
    }
}

/// The numeric room id Janus uses for a room name.
pub fn room_id(name: &str) -> u64 {
    let mut h = 0x811c_9dc5u32;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % 1_000_000_000) as u64 + 1
}

/// One participant: a Janus session with a publisher handle and/or a subscriber handle.
pub struct Session {
    conn: Arc<Conn>,
    session: u64,
    /// The publisher's feed id, which subscribers ask for.
    pub feed: Option<u64>,
    publisher: Option<(u64, Publication)>,
    subscriber: Option<(u64, Subscription)>,
    keepalive: JoinHandle<()>,
    rx: Arc<RxStats>,
}

impl Session {
    async fn attach(&self) -> Result<u64> {
        let v = self
            .conn
            .request(
                json!({"janus": "attach", "session_id": self.session, "plugin": VIDEOROOM}),
                false,
            )
            .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("attach reply without a handle id: {v}"))
    }

    async fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value> {
        let mut msg = json!({"janus": "message", "session_id": self.session, "handle_id": handle,
                             "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        self.conn.request(msg, false).await
    }

    async fn trickle_done(&self, handle: u64) -> Result<()> {
        self.conn
            .request(
                json!({"janus": "trickle", "session_id": self.session, "handle_id": handle,
                       "candidate": {"completed": true}}),
                true,
            )
            .await
            .map(|_| ())
    }

    /// Opens a session, makes sure the room exists (H.264 + Opus) and, with `publish`, joins as
    /// publisher and publishes.
    pub async fn join(
        ctx: &Arc<Context>,
        ws_url: &str,
        room: &str,
        name: &str,
        tag: u32,
        publish: Option<PublishSpec>,
        rx: Arc<RxStats>,
    ) -> Result<Session> {
        let conn = Conn::connect(ws_url).await?;
        let v = conn.request(json!({"janus": "create"}), false).await?;
        let session = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("create reply without a session id: {v}"))?;
        let keepalive = {
            let conn = Arc::downgrade(&conn);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    let Some(c) = conn.upgrade() else { break };
                    let _ = c
                        .request(json!({"janus": "keepalive", "session_id": session}), true)
                        .await;
                }
            })
        };
        let mut s = Session {
            conn,
            session,
            feed: None,
            publisher: None,
            subscriber: None,
            keepalive,
            rx,
        };
        let Some(spec) = publish else {
            return Ok(s);
        };
        let handle = s.attach().await?;
        let room = room_id(room);
        ensure_room(&s, handle, room).await?;
        let v = s
            .message(
                handle,
                json!({"request": "join", "ptype": "publisher", "room": room, "display": name}),
                None,
            )
            .await?;
        let feed = v["plugindata"]["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("publisher join without a feed id: {v}"))?;
        let (mut publication, sdp) = Publication::offer(ctx, name, tag, spec).await?;
        let v = s
            .message(
                handle,
                json!({"request": "publish", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": sdp})),
            )
            .await?;
        let answer = v["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("publish reply without an answer: {v}"))?;
        publication.accept(answer.to_string()).await?;
        s.trickle_done(handle).await?;
        s.feed = Some(feed);
        s.publisher = Some((handle, publication));
        Ok(s)
    }

    /// Subscribes to `feeds` of `room` over one connection.
    pub async fn subscribe(&mut self, ctx: &Arc<Context>, room: &str, feeds: &[u64]) -> Result<()> {
        if feeds.is_empty() {
            return Ok(());
        }
        if self.subscriber.is_some() {
            bail!("already subscribed (the load generator subscribes once)");
        }
        let handle = self.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        // A feed can be asked for only once Janus has seen its publisher's connection come up
        // (error 428 "No such feed" until then), which may be a moment after ours did.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let v = loop {
            let r = self
                .message(
                    handle,
                    json!({"request": "join", "ptype": "subscriber", "room": room_id(room),
                           "streams": streams}),
                    None,
                )
                .await;
            match r {
                Err(e)
                    if format!("{e:#}").contains("error 428")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => break r?,
            }
        };
        let offer = v["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("subscriber join without an offer: {v}"))?;
        let mut sub = Subscription::new(ctx, self.rx.clone()).await?;
        let answer = sub.answer(offer.to_string()).await?;
        self.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
        self.trickle_done(handle).await?;
        self.subscriber = Some((handle, sub));
        Ok(())
    }

    pub fn publication(&self) -> Option<&Publication> {
        self.publisher.as_ref().map(|(_, p)| p)
    }

    pub fn subscription(&self) -> Option<&Subscription> {
        self.subscriber.as_ref().map(|(_, s)| s)
    }

    /// Leaves the room and destroys the session (bounded), then closes the connections.
    pub async fn leave(mut self) {
        let handles: Vec<u64> = self
            .publisher
            .iter()
            .map(|(h, _)| *h)
            .chain(self.subscriber.iter().map(|(h, _)| *h))
            .collect();
        for h in handles {
            let _ = self.message(h, json!({"request": "leave"}), None).await;
        }
        let _ = self
            .conn
            .request(
                json!({"janus": "destroy", "session_id": self.session}),
                false,
            )
            .await;
        if let Some((_, p)) = self.publisher.take() {
            p.close().await;
        }
        if let Some((_, s)) = self.subscriber.take() {
            s.close().await;
        }
        self.keepalive.abort();
        self.conn.close();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
        self.conn.close();
    }
}

/// Creates the room unless it exists: H.264 (Constrained Baseline, like our stream) and Opus,
/// no bitrate cap, no periodic keyframe requests, room for everyone.
async fn ensure_room(s: &Session, handle: u64, room: u64) -> Result<()> {
    let v = s
        .message(handle, json!({"request": "exists", "room": room}), None)
        .await?;
    if v["plugindata"]["data"]["exists"].as_bool() == Some(true) {
        return Ok(());
    }
    let r = s
        .message(
            handle,
            json!({"request": "create", "room": room, "publishers": 1000,
                   "videocodec": "h264", "audiocodec": "opus", "h264_profile": "42e01f",
                   "bitrate": 0, "fir_freq": 0, "notify_joining": false}),
            None,
        )
        .await;
    match r {
        Ok(_) => Ok(()),
        // Another participant created it meanwhile.
        Err(e) if format!("{e:#}").contains("427") => Ok(()),
        Err(e) => Err(e),
    }
}
