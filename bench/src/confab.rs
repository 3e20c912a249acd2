//! A confab participant as the load generator plays it: the signaling of docs/protocol.md over
//! one WebSocket (join, publish offer → answer, subscribe offer → subscribe_answer by revision,
//! leave), driving a [`Publication`] and a [`Subscription`].
//!
//! The message types are written here from the protocol document, not shared with the server or
//! the end-to-end tests, so the tool keeps working against any server that speaks the protocol.
//! Candidates are not trickled: our descriptions carry them, and so do the server's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::peer::{Context, Publication, PublishSpec, RxStats, Subscription};

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg<'a> {
    Join { room: &'a str, name: &'a str },
    Publish { sdp: String },
    SubscribeAnswer { sdp: String, revision: u64 },
    Leave,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMsg {
    Joined {
        id: String,
    },
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
        revision: u64,
    },
    Error {
        code: String,
        message: String,
    },
    Bye,
    #[serde(other)]
    Other,
}

/// Where a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Connecting,
    Joined(String),
    Refused(String),
    Closed,
}

/// One participant's signaling session and peer connections.
pub struct Session {
    pub id: String,
    out: mpsc::UnboundedSender<Message>,
    phase: watch::Receiver<Phase>,
    publication: Option<Publication>,
    subscription: Arc<tokio::sync::Mutex<Option<Subscription>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// Errors the server sent after joining (code: message).
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
}

fn text(msg: &ClientMsg<'_>) -> Message {
    Message::text(serde_json::to_string(msg).unwrap_or_default())
}

impl Session {
    /// Connects, joins `room` and, with `publish`, publishes (returns once the answer is applied;
    /// media starts when the connection is up). Subscribe offers are answered as they come.
    pub async fn join(
        ctx: &Arc<Context>,
        ws_url: &str,
        room: &str,
        name: &str,
        tag: u32,
        publish: Option<PublishSpec>,
        rx: Arc<RxStats>,
    ) -> Result<Session> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(ws_url),
        )
        .await
        .map_err(|_| anyhow!("WebSocket connect to {ws_url} timed out"))?
        .with_context(|| format!("WebSocket connect to {ws_url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let closing = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let (phase_tx, phase) = watch::channel(Phase::Connecting);
        let (answer_tx, answer_rx) = oneshot::channel::<String>();
        let subscription: Arc<tokio::sync::Mutex<Option<Subscription>>> = Default::default();
        let errors: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let reader = {
            let out = out.clone();
            let subscription = subscription.clone();
            let ctx = ctx.clone();
            let errors = errors.clone();
            let mut answer_tx = Some(answer_tx);
            tokio::spawn(async move {
                while let Some(frame) = stream.next().await {
                    let t = match frame {
                        Ok(Message::Text(t)) => t,
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => continue,
                    };
                    let msg: ServerMsg = match serde_json::from_str(t.as_str()) {
                        Ok(m) => m,
                        Err(_) => continue,
                    };
                    match msg {
                        ServerMsg::Joined { id } => {
                            phase_tx.send_replace(Phase::Joined(id));
                        }
                        ServerMsg::Answer { sdp } => {
                            if let Some(tx) = answer_tx.take() {
                                let _ = tx.send(sdp);
                            }
                        }
                        ServerMsg::Offer { sdp, revision } => {
                            let mut sub = subscription.lock().await;
                            if sub.is_none() {
                                match Subscription::new(&ctx, rx.clone()).await {
                                    Ok(s) => *sub = Some(s),
                                    Err(e) => {
                                        push(&errors, format!("subscribe connection: {e:#}"));
                                        continue;
                                    }
                                }
                            }
                            let Some(s) = sub.as_mut() else { continue };
                            match s.answer(sdp).await {
                                Ok(sdp) => {
                                    let _ = out
                                        .send(text(&ClientMsg::SubscribeAnswer { sdp, revision }));
                                }
                                Err(e) => {
                                    push(&errors, format!("answering offer {revision}: {e:#}"))
                                }
                            }
                        }
                        ServerMsg::Error { code, message } => {
                            if matches!(*phase_tx.borrow(), Phase::Connecting) {
                                phase_tx.send_replace(Phase::Refused(format!("{code}: {message}")));
                            } else {
                                push(&errors, format!("{code}: {message}"));
                            }
                        }
                        ServerMsg::Bye => {}
                        ServerMsg::Other => {}
                    }
                }
                phase_tx.send_replace(Phase::Closed);
            })
        };
        let mut session = Session {
            id: String::new(),
            out,
            phase,
            publication: None,
            subscription,
            reader,
            writer,
            errors,
        };
        session.send(&ClientMsg::Join { room, name })?;
        let joined = {
            let mut p = session.phase.clone();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                p.wait_for(|p| !matches!(p, Phase::Connecting)),
            )
            .await;
            match r {
                Ok(Ok(phase)) => phase.clone(),
                Ok(Err(_)) => Phase::Closed,
                Err(_) => bail!("no `joined` within 10 s"),
            }
        };
        match joined {
            Phase::Joined(id) => session.id = id,
            Phase::Refused(why) => bail!("join refused: {why}"),
            _ => bail!("socket closed before `joined`"),
        }
        if let Some(spec) = publish {
            let stream = session.id.clone();
            let (mut publication, sdp) = Publication::offer(ctx, &stream, tag, spec).await?;
            session.send(&ClientMsg::Publish { sdp })?;
            let answer = tokio::time::timeout(Duration::from_secs(10), answer_rx)
                .await
                .map_err(|_| anyhow!("no publish `answer` within 10 s"))?
                .map_err(|_| anyhow!("session ended before the publish answer"))?;
            publication.accept(answer).await?;
            session.publication = Some(publication);
        }
        Ok(session)
    }

    fn send(&self, msg: &ClientMsg<'_>) -> Result<()> {
        self.out
            .send(text(msg))
            .map_err(|_| anyhow!("signaling connection is closed"))
    }

    pub fn publication(&self) -> Option<&Publication> {
        self.publication.as_ref()
    }

    /// RTCP counters of the subscribe connection, once there is one.
    pub async fn subscription_counters(&self) -> Option<Arc<crate::peer::RtcpCounters>> {
        self.subscription
            .lock()
            .await
            .as_ref()
            .map(|s| s.counters.clone())
    }

    /// Says `leave`, waits (bounded) for the socket to close, closes the connections.
    pub async fn leave(mut self) {
        let _ = self.send(&ClientMsg::Leave);
        let mut p = self.phase.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), p.wait_for(|p| *p == Phase::Closed)).await;
        if let Some(p) = self.publication.take() {
            p.close().await;
        }
        if let Some(s) = self.subscription.lock().await.take() {
            s.close().await;
        }
        self.reader.abort();
        self.writer.abort();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn push(errors: &std::sync::Mutex<Vec<String>>, e: String) {
    let mut v = errors.lock().unwrap_or_else(|e| e.into_inner());
    if v.len() < 100 {
        v.push(e);
    }
}

/// Reads `/metrics` (Prometheus text) over plain HTTP/1.1 from `http://host:port`.
pub async fn metrics(http: std::net::SocketAddr) -> Result<Vec<(String, f64)>> {
    let body = http_get(http, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// A minimal HTTP GET (the tool needs two routes; no client library for that).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `value` of a metric line named exactly `name`.
pub fn metric(lines: &[(String, f64)], name: &str) -> Option<f64> {
    lines.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}
