//! The confab signaling protocol (docs/protocol.md) as seen by a client: message types and a
//! WebSocket connection that speaks them.
//!
//! The types are written from the documentation, not shared with the server, so that the tests
//! check the documented contract. Parsing of server messages is lenient about extra fields.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which of the two peer connections a candidate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcRole {
    Publish,
    Subscribe,
}

/// `RTCIceCandidateInit` as browsers spell it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Join {
        room: String,
        name: String,
        /// The client's secret for seeing its own private messages again after a reconnect.
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Publish {
        sdp: String,
    },
    SubscribeAnswer {
        sdp: String,
        revision: u64,
    },
    Candidate {
        pc: PcRole,
        candidate: CandidateInit,
    },
    Update {
        #[serde(skip_serializing_if = "Option::is_none")]
        audio: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        video: Option<bool>,
    },
    Ping {
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    Leave,
    /// A chat message to the room, or privately to participant `to`.
    Chat {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        client_id: String,
    },
    /// Older history: up to `limit` messages with an id below `before`.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
}

impl ClientMsg {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages serialize")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrackInfo {
    #[serde(default)]
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub codec: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
    #[serde(default)]
    pub audio: bool,
    #[serde(default)]
    pub video: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OfferedTrack {
    pub participant: String,
    pub track: String,
    pub kind: String,
}

/// A shared file as a chat message of kind `file` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub url: String,
}

/// A stored chat message (docs/protocol.md, "Chat"). Every documented field is required,
/// `null` allowed where the document shows it, so a message missing one does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatMessage {
    pub id: i64,
    pub room: String,
    pub from: String,
    pub name: String,
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: i64,
    pub to: Option<String>,
    pub private: bool,
    /// `text`, `file` or `system`.
    pub kind: String,
    pub file: Option<FileInfo>,
    pub client_id: Option<String>,
}

/// The error codes docs/protocol.md lists.
pub const ERROR_CODES: &[&str] = &[
    "bad_message",
    "bad_room",
    "bad_name",
    "not_joined",
    "already_joined",
    "bad_sdp",
    "room_full",
    "too_large",
    "rate_limited",
    "bad_text",
    "unknown_recipient",
    "auth_required",
    "token_required",
    "bad_credentials",
    "throttled",
    "room_locked",
    "too_many_rooms",
    "forbidden",
    "unknown_participant",
    "limit_exceeded",
    "internal",
];

/// Server → client. Anything that does not match a documented shape becomes `Unknown`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        room: String,
        id: String,
        participants: Vec<ParticipantInfo>,
        /// Bearer token for file uploads. Optional here so that media tests do not depend on
        /// it; the chat tests require it.
        #[serde(default)]
        upload_token: Option<String>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        id: String,
    },
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
        revision: u64,
        tracks: Vec<OfferedTrack>,
    },
    Candidate {
        pc: PcRole,
        candidate: CandidateInit,
    },
    Pong {
        #[serde(default)]
        nonce: Option<u64>,
    },
    Error {
        code: String,
        message: String,
        /// For a refused `chat`: its `client_id`.
        #[serde(default)]
        client_id: Option<String>,
    },
    Bye {
        #[serde(default)]
        reason: String,
    },
    /// Cluster mode: the room is on another node, join there.
    Redirect {
        url: String,
        node: String,
    },
    Muted {
        kind: String,
        by: String,
    },
    RoomState {
        locked: bool,
        by: String,
    },
    // Boxed: a chat message is several times larger than every other variant.
    Chat {
        message: Box<ChatMessage>,
    },
    ChatAck {
        client_id: String,
        message: Box<ChatMessage>,
    },
    History {
        messages: Vec<ChatMessage>,
        more: bool,
    },
    #[serde(skip)]
    Unknown(Value),
}

impl ServerMsg {
    /// Parses one text frame; undocumented shapes come back as `Unknown` with the raw JSON
    /// (or a string holding the unparsable text).
    pub fn parse(text: &str) -> ServerMsg {
        match serde_json::from_str::<ServerMsg>(text) {
            Ok(m) => m,
            Err(_) => ServerMsg::Unknown(
                serde_json::from_str::<Value>(text).unwrap_or(Value::String(text.to_string())),
            ),
        }
    }

    /// The `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Joined { .. } => "joined",
            ServerMsg::ParticipantJoined { .. } => "participant_joined",
            ServerMsg::ParticipantUpdated { .. } => "participant_updated",
            ServerMsg::ParticipantLeft { .. } => "participant_left",
            ServerMsg::Answer { .. } => "answer",
            ServerMsg::Offer { .. } => "offer",
            ServerMsg::Candidate { .. } => "candidate",
            ServerMsg::Pong { .. } => "pong",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Bye { .. } => "bye",
            ServerMsg::Redirect { .. } => "redirect",
            ServerMsg::Muted { .. } => "muted",
            ServerMsg::RoomState { .. } => "room_state",
            ServerMsg::Chat { .. } => "chat",
            ServerMsg::ChatAck { .. } => "chat_ack",
            ServerMsg::History { .. } => "history",
            ServerMsg::Unknown(_) => "unknown",
        }
    }
}

/// What the reading half of a connection yields.
#[derive(Debug, Clone)]
pub enum Incoming {
    Msg(ServerMsg),
    /// A binary frame (the protocol has none from the server).
    Binary(usize),
    /// A close frame (code, reason) or the TCP stream ending (`None`).
    Closed(Option<(u16, String)>),
}

/// The sending half: cheap to clone, ordered, never blocks.
#[derive(Clone)]
pub struct SignalTx {
    tx: mpsc::UnboundedSender<Message>,
}

impl SignalTx {
    pub fn send(&self, msg: &ClientMsg) -> Result<()> {
        self.send_raw_text(msg.to_json())
    }

    pub fn send_raw_text(&self, text: String) -> Result<()> {
        self.tx
            .send(Message::text(text))
            .map_err(|_| anyhow!("signaling connection is closed"))
    }

    pub fn send_message(&self, msg: Message) -> Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| anyhow!("signaling connection is closed"))
    }
}

/// The receiving half.
pub struct SignalRx {
    stream: SplitStream<Ws>,
}

impl SignalRx {
    /// The next message; `Closed(None)` once the stream has ended or failed.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(t))) => return Incoming::Msg(ServerMsg::parse(t.as_str())),
                Some(Ok(Message::Binary(b))) => return Incoming::Binary(b.len()),
                Some(Ok(Message::Close(frame))) => {
                    return Incoming::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())),
                    )
                }
                Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                Some(Err(_)) | None => return Incoming::Closed(None),
            }
        }
    }
}

/// A connected signaling WebSocket, split into halves. The writer runs as its own task; abort
/// it (or drop everything) to vanish without a close handshake.
pub struct SignalConn {
    pub tx: SignalTx,
    pub rx: SignalRx,
    pub writer: JoinHandle<()>,
}

impl SignalConn {
    pub async fn connect(url: &str) -> Result<SignalConn> {
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| anyhow!("WebSocket connect to {url} timed out"))?
        .with_context(|| format!("WebSocket connect to {url}"))?;
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(sink, rx));
        Ok(SignalConn {
            tx: SignalTx { tx },
            rx: SignalRx { stream },
            writer,
        })
    }
}

async fn write_loop(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(msg) = rx.recv().await {
        let closing = matches!(msg, Message::Close(_));
        if sink.send(msg).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// A bare WebSocket for poking the server with arbitrary frames.
pub struct RawWs {
    ws: Ws,
}

/// What a raw socket received.
#[derive(Debug, Clone, PartialEq)]
pub enum RawEvent {
    Json(Value),
    NonJsonText(String),
    Binary(usize),
    Closed(Option<u16>),
}

impl RawWs {
    pub async fn connect(url: &str) -> Result<RawWs> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| anyhow!("WebSocket connect to {url} timed out"))??;
        Ok(RawWs { ws })
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        self.send_text(v.to_string()).await
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<()> {
        self.ws.send(Message::binary(data)).await?;
        Ok(())
    }

    /// The next data frame or the close, within `within`.
    pub async fn recv(&mut self, within: Duration) -> Result<RawEvent> {
        let fut = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return match serde_json::from_str::<Value>(t.as_str()) {
                            Ok(v) => RawEvent::Json(v),
                            Err(_) => RawEvent::NonJsonText(t.as_str().to_string()),
                        }
                    }
                    Some(Ok(Message::Binary(b))) => return RawEvent::Binary(b.len()),
                    Some(Ok(Message::Close(f))) => {
                        return RawEvent::Closed(f.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return RawEvent::Closed(None),
                }
            }
        };
        tokio::time::timeout(within, fut)
            .await
            .map_err(|_| anyhow!("nothing received within {within:?}"))
    }

    /// Receives until a JSON object whose `type` is `ty` arrives (other messages, e.g.
    /// `candidate`, are skipped); fails on close or timeout.
    pub async fn expect_type(&mut self, ty: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .recv(left)
                .await
                .with_context(|| format!("waiting for {ty:?}"))?
            {
                RawEvent::Json(v) if v["type"] == ty => return Ok(v),
                RawEvent::Json(_) => continue,
                other => bail!("waiting for {ty:?}, got {other:?}"),
            }
        }
    }

    /// Sends `ping` with a nonce and waits for the matching `pong`.
    pub async fn ping_pong(&mut self, nonce: u64, within: Duration) -> Result<()> {
        self.send_json(&serde_json::json!({"type": "ping", "nonce": nonce}))
            .await?;
        let v = self.expect_type("pong", within).await?;
        if v["nonce"] != nonce {
            bail!("pong carries nonce {} instead of {nonce}", v["nonce"]);
        }
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The close code `1008` (policy violation) the protocol uses for abusive clients.
pub fn is_policy_close(code: Option<u16>) -> bool {
    code == Some(u16::from(CloseCode::Policy))
}
