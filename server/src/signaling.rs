//! One signaling session per WebSocket (`/ws`): parses client messages, keeps presence in
//! [`Rooms`](crate::room::Rooms), relays negotiation to and from the media plane, and ends the participant when the
//! socket closes, goes quiet, or its peer connection fails.
//!
//! Chat never holds signaling up: a chat message, a history request and the join's notice and
//! history are queued ([`Chat::submit`](crate::chat::Chat::submit)) and their completions kept
//! in order in the session; the session goes on reading and relaying meanwhile, and acknowledges
//! and shows each message once the store has made it durable.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::access::{Credentials, Denied};
use crate::chat::rate::RateLimit;
use crate::chat::{self, ChatError, Inserted, Kind, NewMessage, StoredMessage};
use crate::media::api::{Command, MediaEvent, ParticipantKey};
use crate::moderation::{self, Action, Actor, ModerationError};
use crate::names::{DisplayName, ParticipantId, RoomName};
use crate::protocol::{
    parse_client_message_within, ClientMessage, ErrorCode, MediaKind, ParticipantKind, Role,
    ServerMessage,
};
use crate::room::JoinError;
use crate::state::App;

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
    name: String,
    identity_key: String,
    chat_rate: RateLimit,
    role: Role,
}

/// Chat work a session has started and not finished, completed in the order started.
type ChatQueue = FuturesOrdered<BoxFuture<'static, Completion>>;

/// What a queued piece of chat work came to; [`finish`] tells whom.
enum Completion {
    /// A chat message of `from`, stored (or not).
    Chat {
        room: RoomName,
        from: ParticipantId,
        to: Option<String>,
        client_id: String,
        result: Result<(StoredMessage, Inserted), ChatError>,
    },
    /// The notice of `from` joining, then the history it gets.
    Joined {
        room: RoomName,
        from: ParticipantId,
        notice: Result<(StoredMessage, Inserted), ChatError>,
        history: Result<(Vec<StoredMessage>, bool), ChatError>,
    },
    /// Older history, asked for.
    History {
        room: RoomName,
        result: Result<(Vec<StoredMessage>, bool), ChatError>,
    },
}

/// The connection itself, beside what it joined.
struct Connection {
    peer: SocketAddr,
    /// Resolves when an operator takes this participant out of the room.
    removed: Option<oneshot::Receiver<String>>,
}

pub async fn run_session(socket: WebSocket, app: Arc<App>, peer: SocketAddr) {
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
                    let Some(msg) = msg else {
                        // Every sender is gone: the session is ending and its close frame is
                        // on the way (or already queued); send it rather than just hanging up.
                        if let Some(frame) = close_rx.recv().await {
                            let _ = sink.send(Message::Close(Some(frame))).await;
                        }
                        break;
                    };
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
    let mut chat_queue = ChatQueue::new();
    let mut shutdown = app.shutdown.clone();
    let mut bad = 0u32;
    let mut last_seen = Instant::now();
    let mut conn = Connection {
        peer,
        removed: None,
    };
    let limits = &app.config.limits;
    let mut rate = RateLimit::new(
        limits.signaling_rate as f64,
        limits.signaling_burst,
        std::time::Instant::now(),
    );
    let close = |code: u16, reason: &str| CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let send = |m: ServerMessage| {
        let _ = out_tx.send(m);
    };

    // Why the session ends, and the goodbye to send once it has left the room (so that no
    // broadcast can slip in after it).
    let mut bye: Option<String> = None;
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
                if !rate.allow(std::time::Instant::now()) {
                    send(ServerMessage::error(ErrorCode::RateLimited, format!(
                        "more than {} messages per second; slow down", limits.signaling_rate)));
                    bad += 1;
                    if bad >= MAX_BAD_MESSAGES { break close(1008, "too many messages"); }
                    continue;
                }
                let parsed = match parse_client_message_within(text.as_str(), limits.ws_message_bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        send(ServerMessage::error(e.code(), e.to_string()));
                        bad += 1;
                        if bad >= MAX_BAD_MESSAGES { break close(1008, "too many bad messages"); }
                        continue;
                    }
                };
                match handle_client(&app, parsed, &mut me, &mut conn, &out_tx, &media_tx, &mut chat_queue).await {
                    Flow::Continue => bad = 0,
                    Flow::Rejected => {
                        bad += 1;
                        if bad >= MAX_BAD_MESSAGES { break close(1008, "too many bad messages"); }
                    }
                    Flow::Leave => {
                        bye = Some("you left the room".into());
                        break close(1000, "left");
                    }
                    Flow::Redirect => break close(1000, "the room is on another node"),
                }
            }
            Some(done) = chat_queue.next(), if !chat_queue.is_empty() => {
                finish(&app, done, &out_tx);
            }
            ev = media_rx.recv() => {
                let Some(ev) = ev else { continue };
                match ev {
                    MediaEvent::Answer { sdp } => send(ServerMessage::Answer { sdp }),
                    MediaEvent::Offer { sdp, revision, tracks } => send(ServerMessage::Offer { sdp, revision, tracks }),
                    MediaEvent::Candidate { pc, candidate } => send(ServerMessage::Candidate { pc, candidate }),
                    MediaEvent::Error { code, message } => send(ServerMessage::error(code, message)),
                    MediaEvent::Speaker { id } => send(ServerMessage::Speaker { id: id.map(|i| i.to_string()) }),
                    MediaEvent::Layers { track, paused } => send(ServerMessage::Layers { track, paused }),
                    MediaEvent::TracksChanged { tracks } => {
                        if let Some(m) = &me {
                            app.rooms.update(&m.room, &m.id, |i| i.tracks = tracks);
                        }
                    }
                    MediaEvent::Unreachable { reason } => {
                        send(ServerMessage::error(ErrorCode::MediaUnreachable, format!("your network seems to block the media connection: no audio or video got through to the server ({reason}). Try another network, or ask its administrator to allow UDP or TCP to the server's media port")));
                        bye = Some("media connection blocked".into());
                        break close(1011, "media connection blocked");
                    }
                    MediaEvent::Failed { reason } => {
                        send(ServerMessage::error(ErrorCode::Internal, format!("your media connection ended ({reason}); rejoin to continue")));
                        bye = Some("media connection failed".into());
                        break close(1011, "media connection failed");
                    }
                }
            }
            reason = async {
                match conn.removed.as_mut() {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                }
            } => {
                conn.removed = None;
                // Not told if the sender went away without a word (the session left itself).
                if let Ok(reason) = reason {
                    bye = Some(reason);
                    break close(4001, "removed by an operator");
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                break close(1001, "no traffic for 30 s");
            }
            _ = shutdown.changed() => {
                bye = Some("the server is shutting down".into());
                break close(1001, "server shutting down");
            }
        }
    };

    // Messages already accepted are acknowledged and shown before the goodbye (bounded: the
    // store may be failing).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(done) = chat_queue.next().await {
            finish(&app, done, &out_tx);
        }
    })
    .await;
    let left = me.take();
    if let Some(m) = &left {
        app.rooms.leave(&m.room, &m.id, m.key);
        let _ = app.media.send(Command::Leave { key: m.key });
        tracing::info!(room = %m.room, participant = %m.id, "left");
    }
    if let Some(reason) = bye {
        send(ServerMessage::Bye { reason });
    }
    let _ = close_tx.send(end);
    if let Some(m) = &left {
        system_notice(&app, m, format!("{} left", m.name)).await;
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    app.metrics
        .websocket_connections
        .fetch_sub(1, Ordering::Relaxed);
    app.session_ended.notify_waiters();
}

enum Flow {
    Continue,
    Rejected,
    Leave,
    /// The room lives on another node; the client was told where.
    Redirect,
}

async fn handle_client(
    app: &App,
    msg: ClientMessage,
    me: &mut Option<Membership>,
    conn: &mut Connection,
    out: &mpsc::UnboundedSender<ServerMessage>,
    media_events: &mpsc::UnboundedSender<MediaEvent>,
    chat_queue: &mut ChatQueue,
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
        (
            ClientMessage::Join {
                room,
                name,
                identity,
                password,
                token,
                previous_node,
            },
            None,
        ) => {
            let room = match RoomName::parse(room) {
                Ok(r) => r,
                Err(e) => return reject(ErrorCode::BadRoom, e.to_string()),
            };
            let creds = Credentials {
                password: password.clone(),
                token: token.clone(),
            };
            let grant = match app
                .access
                .admit(&room, &creds, conn.peer.ip(), std::time::Instant::now())
                .await
            {
                Ok(g) => g,
                Err(e) => {
                    let code = match e {
                        Denied::Required(_) => ErrorCode::AuthRequired,
                        Denied::TokenRequired(_) => ErrorCode::TokenRequired,
                        Denied::Wrong(_) => ErrorCode::BadCredentials,
                        Denied::Throttled { .. } => ErrorCode::Throttled,
                    };
                    return reject(code, e.to_string());
                }
            };
            // A token fixes the name; otherwise the client chooses it.
            let name = match DisplayName::parse(grant.name.as_deref().unwrap_or(name)) {
                Ok(n) => n,
                Err(e) => return reject(ErrorCode::BadName, e.to_string()),
            };
            if let Some(cluster) = &app.cluster {
                match cluster
                    .place(&room, app.rooms.occupied(&room), previous_node.as_deref())
                    .await
                {
                    Ok(crate::cluster::Placement::Here) => {}
                    Ok(crate::cluster::Placement::There(node)) => {
                        tracing::info!(room = %room, node = %node.id, url = %node.url, "room is on another node: redirected");
                        app.metrics
                            .cluster_redirects
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = out.send(ServerMessage::Redirect {
                            url: crate::cluster::ws_url(&node.url),
                            node: node.id,
                        });
                        return Flow::Redirect;
                    }
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "join refused: no placement");
                        app.metrics
                            .cluster_unavailable
                            .fetch_add(1, Ordering::Relaxed);
                        return reject(ErrorCode::ClusterUnavailable, e.to_string());
                    }
                }
            }
            let identity_key = chat::identity_key(identity.as_deref());
            let joined = match app.rooms.join(
                &room,
                &name,
                ParticipantKind::Browser,
                grant.role,
                identity_key.clone(),
                out.clone(),
            ) {
                Ok(j) => j,
                Err(e) => {
                    let code = match e {
                        JoinError::Full { .. } | JoinError::Taken { .. } => ErrorCode::RoomFull,
                        JoinError::Locked { .. } => ErrorCode::RoomLocked,
                        JoinError::TooManyRooms { .. } => ErrorCode::TooManyRooms,
                    };
                    return reject(code, e.to_string());
                }
            };
            tracing::info!(room = %room, participant = %joined.id, role = grant.role.as_str(), "joined");
            let _ = out.send(ServerMessage::Joined {
                room: room.to_string(),
                id: joined.id.to_string(),
                participants: joined.others,
                upload_token: joined.upload_token,
                role: grant.role,
                locked: joined.locked,
                turn: app
                    .turn
                    .as_ref()
                    .map(|t| t.grant(joined.id.as_str(), crate::access::unix_now())),
                node: app.cluster.as_ref().map(|c| c.id().to_owned()),
                nodes: app
                    .cluster
                    .as_ref()
                    .map(|c| c.signaling_urls())
                    .unwrap_or_default(),
            });
            conn.removed = Some(joined.removed);
            let _ = app.media.join(
                joined.key,
                room.clone(),
                joined.id.clone(),
                media_events.clone(),
            );
            let m = Membership {
                room,
                id: joined.id,
                key: joined.key,
                name: name.as_str().to_owned(),
                identity_key,
                chat_rate: RateLimit::chat(std::time::Instant::now()),
                role: grant.role,
            };
            // The history is read once the notice is committed, so it includes it.
            let notice = app.chat.submit(notice(&m, format!("{} joined", m.name)));
            let history =
                app.chat
                    .history(m.room.to_string(), Some(m.identity_key.clone()), None, None);
            let (room, from) = (m.room.clone(), m.id.clone());
            chat_queue.push_back(Box::pin(async move {
                let notice = notice.await;
                let history = history.await;
                Completion::Joined {
                    room,
                    from,
                    notice,
                    history,
                }
            }));
            *me = Some(m);
            return Flow::Continue;
        }
        (ClientMessage::Ping { nonce }, _) => {
            let _ = out.send(ServerMessage::Pong { nonce: *nonce });
            return Flow::Continue;
        }
        (ClientMessage::Leave, _) => return Flow::Leave,
        (_, None) => return reject(ErrorCode::NotJoined, "send join {room, name} first".into()),
        (
            ClientMessage::Chat {
                text,
                to,
                client_id,
            },
            Some(_),
        ) => {
            let (text, to, client_id) = (text.clone(), to.clone(), client_id.clone());
            let Some(m) = me.as_mut() else {
                return Flow::Continue;
            };
            return match send_chat(app, m, text, to, client_id.clone()) {
                Ok(stored) => {
                    chat_queue.push_back(stored);
                    Flow::Continue
                }
                Err((code, message)) => {
                    let _ = out.send(ServerMessage::Error {
                        code,
                        message,
                        client_id: Some(client_id),
                    });
                    // Sending too fast is not a protocol violation: it never closes the socket.
                    if code == ErrorCode::RateLimited {
                        Flow::Continue
                    } else {
                        Flow::Rejected
                    }
                }
            };
        }
        (ClientMessage::History { before, limit }, Some(m)) => {
            let history = app.chat.history(
                m.room.to_string(),
                Some(m.identity_key.clone()),
                *before,
                limit.map(|l| l as usize),
            );
            let room = m.room.clone();
            chat_queue.push_back(Box::pin(async move {
                Completion::History {
                    room,
                    result: history.await,
                }
            }));
            return Flow::Continue;
        }
        (_, Some(m)) => m,
    };
    if let Some(action) = operator_action(&member.room, &msg) {
        let actor = Actor::Participant {
            name: &member.name,
            role: member.role,
        };
        // Someone who may not act learns that first, not what else is wrong.
        let done = moderation::permit(actor)
            .and(action)
            .and_then(|action| moderation::carry_out(app, &member.room, actor, action));
        return match done {
            Ok(()) => Flow::Continue,
            Err(e) => reject(moderation_code(&e), e.to_string()),
        };
    }
    let key = member.key;
    let limits = &app.config.limits;
    let command = match msg {
        ClientMessage::Publish { sdp } => {
            if !member.role.can_publish() {
                return reject(
                    ErrorCode::Forbidden,
                    "viewers cannot send media; ask an operator for a presenter link".into(),
                );
            }
            if let Err(e) = check_offer(&sdp, limits) {
                return reject(ErrorCode::LimitExceeded, e.to_string());
            }
            Command::Publish { key, sdp }
        }
        ClientMessage::SubscribeAnswer { sdp, revision } => {
            if let Err(e) = check_size(&sdp, limits) {
                return reject(ErrorCode::LimitExceeded, e.to_string());
            }
            Command::SubscribeAnswer { key, sdp, revision }
        }
        ClientMessage::Candidate { pc, candidate } => Command::Candidate { key, pc, candidate },
        ClientMessage::RestartIce => Command::RestartIce { key },
        ClientMessage::Quality { track, layer } => Command::SetLayer {
            key,
            track,
            layer: layer.map(usize::from),
        },
        ClientMessage::Update { audio, video } => {
            // Turning a muted microphone or camera back on is the participant's own choice.
            for (on, kind) in [(audio, MediaKind::Audio), (video, MediaKind::Video)] {
                if on == Some(true) {
                    let _ = app.media.send(Command::Mute {
                        key,
                        kind,
                        muted: false,
                    });
                }
            }
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
        // Handled above.
        ClientMessage::Join { .. }
        | ClientMessage::Ping { .. }
        | ClientMessage::Leave
        | ClientMessage::Chat { .. }
        | ClientMessage::History { .. }
        | ClientMessage::Mute { .. }
        | ClientMessage::Remove { .. }
        | ClientMessage::Lock { .. }
        | ClientMessage::End => return Flow::Continue,
    };
    if !app.media.send(command) {
        return reject(
            ErrorCode::Internal,
            "the media plane is not running; the server is shutting down".into(),
        );
    }
    Flow::Continue
}

/// An SDP over a configured limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SdpLimit {
    #[error("the SDP is {bytes} bytes; the limit is {limit}")]
    Size { bytes: usize, limit: usize },
    #[error("the offer sends {tracks} tracks; at most {limit} per participant are allowed")]
    Tracks { tracks: usize, limit: usize },
}

/// An SDP (offer or answer) within the size limit.
fn check_size(sdp: &str, limits: &crate::config::Limits) -> Result<(), SdpLimit> {
    if sdp.len() > limits.sdp_bytes {
        return Err(SdpLimit::Size {
            bytes: sdp.len(),
            limit: limits.sdp_bytes,
        });
    }
    Ok(())
}

/// An SDP offer within the size limit that publishes no more tracks than allowed.
fn check_offer(sdp: &str, limits: &crate::config::Limits) -> Result<(), SdpLimit> {
    check_size(sdp, limits)?;
    let tracks = sending_sections(sdp);
    if tracks > limits.tracks_per_participant {
        return Err(SdpLimit::Tracks {
            tracks,
            limit: limits.tracks_per_participant,
        });
    }
    Ok(())
}

/// Media sections of an offer that send (audio or video, port not 0, direction sendrecv or
/// sendonly, which is the default).
fn sending_sections(sdp: &str) -> usize {
    let mut count = 0;
    let mut current: Option<bool> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            count += usize::from(current == Some(true));
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or_default();
            let port = parts.next().unwrap_or_default();
            current = Some(matches!(kind, "audio" | "video") && port != "0");
        } else if matches!(line, "a=recvonly" | "a=inactive") {
            if let Some(c) = current.as_mut() {
                *c = false;
            }
        }
    }
    count + usize::from(current == Some(true))
}

/// The operator's action a message asks for, if it is an operator message.
fn operator_action(
    room: &RoomName,
    msg: &ClientMessage,
) -> Option<Result<Action, ModerationError>> {
    Some(match msg {
        ClientMessage::Mute { id, kind } => {
            moderation::target(room, id).map(|id| Action::Mute { id, kind: *kind })
        }
        ClientMessage::Remove { id } => {
            moderation::target(room, id).map(|id| Action::Remove { id })
        }
        ClientMessage::Lock { locked } => Ok(Action::Lock { locked: *locked }),
        ClientMessage::End => Ok(Action::End),
        _ => return None,
    })
}

fn moderation_code(e: &ModerationError) -> ErrorCode {
    match e {
        ModerationError::Forbidden => ErrorCode::Forbidden,
        ModerationError::UnknownParticipant { .. } | ModerationError::EmptyRoom { .. } => {
            ErrorCode::UnknownParticipant
        }
    }
}

/// Validates a chat message and queues it for the store; what the returned future completes
/// to is delivered by [`finish`] once it is committed, so nobody sees it before then.
fn send_chat(
    app: &App,
    m: &mut Membership,
    text: String,
    to: Option<String>,
    client_id: String,
) -> Result<BoxFuture<'static, Completion>, (ErrorCode, String)> {
    if !m.chat_rate.allow(std::time::Instant::now()) {
        return Err((
            ErrorCode::RateLimited,
            "more than 10 messages per second; slow down and resend".into(),
        ));
    }
    if client_id.is_empty()
        || client_id.chars().count() > 64
        || client_id.contains(char::is_control)
    {
        return Err((
            ErrorCode::BadMessage,
            "client_id must be 1-64 characters, none of them control characters".into(),
        ));
    }
    let text = chat::text::clean(&text).map_err(|e| (ErrorCode::BadText, e.to_string()))?;
    let recipient_key = match &to {
        None => None,
        Some(id) => Some(app.rooms.identity_key(&m.room, id).ok_or_else(|| {
            (
                ErrorCode::UnknownRecipient,
                format!("nobody with id {id:?} is in this room; pick someone from the list"),
            )
        })?),
    };
    let msg = NewMessage {
        room: m.room.to_string(),
        from: m.id.to_string(),
        name: m.name.clone(),
        ts: chat::unix_millis(std::time::SystemTime::now()),
        to: to.clone(),
        text,
        kind: Kind::Text,
        client_id: Some(client_id.clone()),
        sender_key: m.identity_key.clone(),
        recipient_key,
    };
    let stored = app.chat.submit(msg);
    let (room, from) = (m.room.clone(), m.id.clone());
    Ok(Box::pin(async move {
        Completion::Chat {
            room,
            from,
            to,
            client_id,
            result: stored.await,
        }
    }))
}

/// Delivers completed chat work: a stored message to the room (or its recipient) and the
/// acknowledgement to its sender; the join's notice and history; a history page.
fn finish(app: &App, done: Completion, out: &mpsc::UnboundedSender<ServerMessage>) {
    match done {
        Completion::Chat {
            room,
            from,
            to,
            client_id,
            result,
        } => match result {
            Ok((stored, inserted)) => {
                if inserted == Inserted::New {
                    let live = ServerMessage::Chat {
                        message: stored.clone(),
                    };
                    match &to {
                        Some(id) => {
                            app.rooms.send_to(&room, id, live);
                        }
                        None => app.rooms.broadcast(&room, Some(&from), &live),
                    }
                }
                let _ = out.send(ServerMessage::ChatAck {
                    client_id,
                    message: stored,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, room = %room, "chat message not stored");
                let message = match e {
                    ChatError::Busy => e.to_string(),
                    _ => "the message could not be stored; resend it in a moment".to_owned(),
                };
                let _ = out.send(ServerMessage::Error {
                    code: ErrorCode::Internal,
                    message,
                    client_id: Some(client_id),
                });
            }
        },
        Completion::Joined {
            room,
            from,
            notice,
            history,
        } => {
            match notice {
                Ok((message, _)) => {
                    app.rooms
                        .broadcast(&room, Some(&from), &ServerMessage::Chat { message })
                }
                Err(e) => tracing::error!(error = %e, room = %room, "system notice not stored"),
            }
            send_history(&room, history, out);
        }
        Completion::History { room, result } => send_history(&room, result, out),
    }
}

fn send_history(
    room: &RoomName,
    history: Result<(Vec<StoredMessage>, bool), ChatError>,
    out: &mpsc::UnboundedSender<ServerMessage>,
) {
    match history {
        Ok((messages, more)) => {
            let _ = out.send(ServerMessage::History { messages, more });
        }
        Err(e) => {
            tracing::error!(error = %e, room = %room, "chat history unavailable");
            let _ = out.send(ServerMessage::error(
                ErrorCode::Internal,
                "chat history is unavailable right now; try again later",
            ));
        }
    }
}

/// A system notice ("Alice joined") about `m`, for the room's history and the others.
fn notice(m: &Membership, text: String) -> NewMessage {
    NewMessage {
        room: m.room.to_string(),
        from: m.id.to_string(),
        name: m.name.clone(),
        ts: chat::unix_millis(std::time::SystemTime::now()),
        to: None,
        text,
        kind: Kind::System,
        client_id: None,
        sender_key: m.identity_key.clone(),
        recipient_key: None,
    }
}

/// Stores a system notice and, once it is committed, shows it to the others.
async fn system_notice(app: &App, m: &Membership, text: String) {
    match app.chat.insert(notice(m, text)).await {
        Ok((message, _)) => {
            app.rooms
                .broadcast(&m.room, Some(&m.id), &ServerMessage::Chat { message })
        }
        Err(e) => tracing::error!(error = %e, room = %m.room, "system notice not stored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_within_limits() {
        let limits = crate::config::Limits {
            sdp_bytes: 100,
            tracks_per_participant: 1,
            ..Default::default()
        };
        let two = "m=audio 9 x 111\r\nm=video 9 x 96\r\n";
        assert_eq!(check_size(two, &limits), Ok(()));
        assert_eq!(
            check_offer(two, &limits),
            Err(SdpLimit::Tracks {
                tracks: 2,
                limit: 1
            })
        );
        let long = "a".repeat(101);
        assert_eq!(
            check_offer(&long, &limits).unwrap_err().to_string(),
            "the SDP is 101 bytes; the limit is 100"
        );
        assert!(check_size(&long, &limits).is_err());
    }

    #[test]
    fn counts_sending_media_sections() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=inactive\r\n";
        assert_eq!(sending_sections(sdp), 2);
        assert_eq!(sending_sections(""), 0);
        assert_eq!(sending_sections("m=video 9 x 96"), 1);
    }
}
