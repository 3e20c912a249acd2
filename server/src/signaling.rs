//! One signaling session per WebSocket (`/ws`): parses client messages, keeps presence in
//! [`Rooms`], relays negotiation to and from the media plane, and ends the participant when the
//! socket closes, goes quiet, or its peer connection fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::App;
use crate::media::engine::{Command, MediaEvent, ParticipantKey};
use crate::names::{DisplayName, ParticipantId, RoomName};
use crate::protocol::{
    parse_client_message, ClientMessage, ErrorCode, ParticipantKind, ServerMessage,
};

/// How often the server pings, and how long a silent client is kept.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive unusable messages before the connection is closed (policy violation).
const MAX_BAD_MESSAGES: u32 = 10;

/// The participant behind a joined session.
struct Membership {
    room: RoomName,
    id: ParticipantId,
    key: ParticipantKey,
}

pub async fn run_session(socket: WebSocket, app: Arc<App>) {
    app.metrics
        .websocket_connections
        .fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let (close_tx, mut close_rx) = mpsc::unbounded_channel::<CloseFrame>();

    // The writer: everything this client receives goes through `out_tx`, from this session
    // and from others' (presence broadcasts), in order.
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = out_rx.recv() => {
                    let Some(msg) = msg else { break };
                    let Ok(text) = serde_json::to_string(&msg) else { continue };
                    if sink.send(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                        break;
                    }
                }
                frame = close_rx.recv() => {
                    // Flush what is queued (a final error or bye), then close.
                    while let Ok(msg) = out_rx.try_recv() {
                        if let Ok(text) = serde_json::to_string(&msg) {
                            let _ = sink.send(Message::Text(Utf8Bytes::from(text))).await;
                        }
                    }
                    let _ = sink.send(Message::Close(frame)).await;
                    break;
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });

    let (media_tx, mut media_rx) = mpsc::unbounded_channel::<MediaEvent>();
    let mut me: Option<Membership> = None;
    let mut shutdown = app.shutdown.clone();
    let mut bad = 0u32;
    let mut last_seen = Instant::now();
    let close = |code: u16, reason: &str| CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let send = |m: ServerMessage| {
        let _ = out_tx.send(m);
    };

    let end: CloseFrame = loop {
        let idle_deadline = last_seen + IDLE_TIMEOUT;
        tokio::select! {
            incoming = stream.next() => {
                let Some(Ok(msg)) = incoming else {
                    break close(1000, "");
                };
                last_seen = Instant::now();
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        send(ServerMessage::error(ErrorCode::BadMessage, "binary frames are not part of the protocol; send JSON text"));
                        bad += 1;
                        if bad >= MAX_BAD_MESSAGES { break close(1008, "too many bad messages"); }
                        continue;
                    }
                    Message::Close(_) => break close(1000, ""),
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let parsed = match parse_client_message(text.as_str()) {
                    Ok(m) => m,
                    Err((code, message)) => {
                        send(ServerMessage::error(code, message));
                        bad += 1;
                        if bad >= MAX_BAD_MESSAGES { break close(1008, "too many bad messages"); }
                        continue;
                    }
                };
                match handle_client(&app, parsed, &mut me, &out_tx, &media_tx) {
                    Flow::Continue => bad = 0,
                    Flow::Rejected => {
                        bad += 1;
                        if bad >= MAX_BAD_MESSAGES { break close(1008, "too many bad messages"); }
                    }
                    Flow::Leave => {
                        send(ServerMessage::Bye { reason: "you left the room".into() });
                        break close(1000, "left");
                    }
                }
            }
            ev = media_rx.recv() => {
                let Some(ev) = ev else { continue };
                match ev {
                    MediaEvent::Answer { sdp } => send(ServerMessage::Answer { sdp }),
                    MediaEvent::Offer { sdp, revision, tracks } => send(ServerMessage::Offer { sdp, revision, tracks }),
                    MediaEvent::Candidate { pc, candidate } => send(ServerMessage::Candidate { pc, candidate }),
                    MediaEvent::Error { code, message } => send(ServerMessage::Error { code, message }),
                    MediaEvent::TracksChanged { tracks } => {
                        if let Some(m) = &me {
                            app.rooms.update(&m.room, &m.id, |i| i.tracks = tracks);
                        }
                    }
                    MediaEvent::Failed { reason } => {
                        send(ServerMessage::error(ErrorCode::Internal, format!("your media connection ended ({reason}); rejoin to continue")));
                        send(ServerMessage::Bye { reason: "media connection failed".into() });
                        break close(1011, "media connection failed");
                    }
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                break close(1001, "no traffic for 30 s");
            }
            _ = shutdown.changed() => {
                send(ServerMessage::Bye { reason: "the server is shutting down".into() });
                break close(1001, "server shutting down");
            }
        }
    };

    if let Some(m) = me.take() {
        app.rooms.leave(&m.room, &m.id, m.key);
        let _ = app.media.send(Command::Leave { key: m.key });
        tracing::info!(room = %m.room, participant = %m.id, "left");
    }
    let _ = close_tx.send(end);
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    app.metrics
        .websocket_connections
        .fetch_sub(1, Ordering::Relaxed);
}

enum Flow {
    Continue,
    Rejected,
    Leave,
}

fn handle_client(
    app: &App,
    msg: ClientMessage,
    me: &mut Option<Membership>,
    out: &mpsc::UnboundedSender<ServerMessage>,
    media_events: &mpsc::UnboundedSender<MediaEvent>,
) -> Flow {
    let reject = |code: ErrorCode, message: String| {
        let _ = out.send(ServerMessage::error(code, message));
        Flow::Rejected
    };
    let member = match (&msg, me.as_ref()) {
        (ClientMessage::Join { .. }, Some(_)) => {
            return reject(
                ErrorCode::AlreadyJoined,
                "already in a room; open another connection to join another".into(),
            )
        }
        (ClientMessage::Join { room, name }, None) => {
            let room = match RoomName::parse(room) {
                Ok(r) => r,
                Err(e) => return reject(ErrorCode::BadRoom, e),
            };
            let name = match DisplayName::parse(name) {
                Ok(n) => n,
                Err(e) => return reject(ErrorCode::BadName, e),
            };
            let joined = match app
                .rooms
                .join(&room, &name, ParticipantKind::Browser, out.clone())
            {
                Ok(j) => j,
                Err(e) => return reject(ErrorCode::RoomFull, e.to_string()),
            };
            tracing::info!(room = %room, participant = %joined.id, "joined");
            let _ = out.send(ServerMessage::Joined {
                room: room.to_string(),
                id: joined.id.to_string(),
                participants: joined.others,
            });
            let _ = app.media.send(Command::Join {
                key: joined.key,
                room: room.clone(),
                id: joined.id.clone(),
                events: media_events.clone(),
            });
            *me = Some(Membership {
                room,
                id: joined.id,
                key: joined.key,
            });
            return Flow::Continue;
        }
        (ClientMessage::Ping { nonce }, _) => {
            let _ = out.send(ServerMessage::Pong { nonce: *nonce });
            return Flow::Continue;
        }
        (ClientMessage::Leave, _) => return Flow::Leave,
        (_, None) => return reject(ErrorCode::NotJoined, "send join {room, name} first".into()),
        (_, Some(m)) => m,
    };
    let key = member.key;
    let command = match msg {
        ClientMessage::Publish { sdp } => Command::Publish { key, sdp },
        ClientMessage::SubscribeAnswer { sdp, revision } => {
            Command::SubscribeAnswer { key, sdp, revision }
        }
        ClientMessage::Candidate { pc, candidate } => Command::Candidate { key, pc, candidate },
        ClientMessage::Update { audio, video } => {
            app.rooms.update(&member.room, &member.id, |i| {
                if let Some(a) = audio {
                    i.audio = a;
                }
                if let Some(v) = video {
                    i.video = v;
                }
            });
            return Flow::Continue;
        }
        ClientMessage::Join { .. } | ClientMessage::Ping { .. } | ClientMessage::Leave => {
            return Flow::Continue
        }
    };
    if app.media.send(command).is_err() {
        return reject(
            ErrorCode::Internal,
            "the media plane is not running; the server is shutting down".into(),
        );
    }
    Flow::Continue
}
