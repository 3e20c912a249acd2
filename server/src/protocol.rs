//! The signaling wire protocol: JSON text frames over the `/ws` WebSocket.
//!
//! Every message is an object tagged by `"type"`. The shapes here are the contract documented
//! in `docs/protocol.md`; the web client's JSDoc typedefs (`web/protocol.js`) mirror them.
//!
//! Peer-connection model: two connections per participant, one per direction.
//! - **publish**: the client offers (`publish`), the server answers (`answer`). Only the client
//!   ever offers on it.
//! - **subscribe**: the server offers (`offer`, with a `revision`), the client answers
//!   (`subscribe_answer`). Only the server ever offers on it.
//!
//! One offerer per connection means negotiation glare cannot happen.

use serde::{Deserialize, Serialize};

/// The largest text frame a client may send (64 KiB); SDP offers are a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcRole {
    Publish,
    Subscribe,
}

/// An ICE candidate as the browser's `RTCIceCandidateInit` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Messages from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Enter a room. Must be the first message; exactly once per connection.
    Join {
        room: String,
        name: String,
        /// A secret the client keeps (e.g. in localStorage, 16–128 characters) so that a
        /// reconnecting participant sees its own private messages again and nobody else does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        /// The room password, for a room protected by one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// A signed join token (`confab token`, the page's `?token=`): fixes name and role.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Cluster mode, on a rejoin after the connection dropped: the id of the node the
        /// client was last in the room on (`joined`'s `node`). If the room is still placed
        /// there and that node does not answer, the room moves to a live node at once instead
        /// of when the dead node's record expires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_node: Option<String>,
    },
    /// An SDP offer for the publish connection (first negotiation or renegotiation).
    Publish { sdp: String },
    /// The answer to the server's subscribe offer with the same `revision`.
    SubscribeAnswer { sdp: String, revision: u64 },
    /// A trickled ICE candidate for one of the two connections.
    Candidate { pc: PcRole, candidate: IceCandidate },
    /// Media lost its path (the network changed): send a subscribe offer that restarts ICE.
    /// The publish connection restarts with a new `publish` offer of the client's own.
    RestartIce,
    /// Microphone/camera state as the user set it (shown to others as muted / camera off).
    Update {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        video: Option<bool>,
    },
    /// Which simulcast layer of a video track to receive: 0 the smallest picture, 2 the full
    /// one (the page asks by the size its tile is shown at; tracks sent as one stream ignore
    /// the number). `null` (or absent): the video is shown nowhere; nothing is sent until the
    /// next `quality`.
    Quality {
        track: String,
        #[serde(default)]
        layer: Option<u8>,
    },
    /// Keepalive; answered with `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// Leave the room; the server closes the connection afterwards.
    Leave,
    /// A chat message to the room, or privately to participant `to`. `client_id` (1–64
    /// characters, unique per sender) makes resending safe: a repeat is acknowledged again,
    /// never delivered twice.
    Chat {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        client_id: String,
    },
    /// Older chat history: up to `limit` (default 100, at most 500) messages before id `before`.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Operator: stop forwarding participant `id`'s microphone (`audio`) or camera (`video`)
    /// until that participant turns it on again itself.
    Mute { id: String, kind: MediaKind },
    /// Operator: take participant `id` out of the room.
    Remove { id: String },
    /// Operator: lock (nobody new may join, operators excepted) or unlock the room.
    Lock { locked: bool },
    /// Operator: end the meeting for everyone in the room.
    End,
}

/// What a participant may do in a room (see `access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publish, subscribe, chat.
    #[default]
    Presenter,
    /// Subscribe and chat; media it sends is refused.
    Viewer,
    /// A presenter who may also mute or remove others, lock the room and end the meeting.
    Operator,
}

impl Role {
    pub fn can_publish(self) -> bool {
        matches!(self, Role::Presenter | Role::Operator)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Presenter => "presenter",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// A role name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a role; use presenter, viewer or operator")]
pub struct UnknownRole {
    pub given: String,
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "presenter" => Ok(Role::Presenter),
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            _ => Err(UnknownRole {
                given: s.to_owned(),
            }),
        }
    }
}

/// Kinds of participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantKind {
    Browser,
    Camera,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// A track a participant publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Server-wide track id; also the `MediaStreamTrack.id` subscribers see.
    pub id: String,
    pub kind: MediaKind,
    /// `H264`, `VP8`, `opus`, …
    pub codec: String,
}

/// What everyone in a room knows about a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    pub kind: ParticipantKind,
    #[serde(default)]
    pub role: Role,
    pub tracks: Vec<TrackInfo>,
    /// Microphone on (as the participant says).
    pub audio: bool,
    /// Camera on (as the participant says).
    pub video: bool,
    /// Cameras only: how the bridge is doing with it (`live`, `connecting`, `retrying: why`,
    /// or what it cannot show, e.g. an unsupported codec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// How to reach the server's TURN relay: the ports it listens on (the host is the page's own)
/// and short-lived credentials for it (TURN REST API scheme: `username` is
/// `<expiry>:<participant>`, `credential` its HMAC). The page passes them to
/// `RTCPeerConnection` as `iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnGrant {
    pub username: String,
    pub credential: String,
    /// Unix seconds after which the credentials no longer make new allocations.
    pub expires: u64,
    /// `turn:HOST:PORT?transport=udp`.
    pub udp: Option<u16>,
    /// `turn:HOST:PORT?transport=tcp`.
    pub tcp: Option<u16>,
    /// `turns:HOST:PORT?transport=tcp` (TLS with the server's certificate).
    pub tls: Option<u16>,
}

/// Which participant a track in a subscribe offer belongs to. The stream id of each track
/// (`a=msid`) is the publisher's participant id too, so `ontrack`'s `streams[0].id` suffices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedTrack {
    pub participant: String,
    pub track: String,
    pub kind: MediaKind,
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    BadRoom,
    BadName,
    NotJoined,
    AlreadyJoined,
    BadSdp,
    RoomFull,
    TooLarge,
    /// More than 10 chat messages per second (burst 20); slow down.
    RateLimited,
    /// Chat text empty or longer than 4000 characters.
    BadText,
    /// A private message to someone not in the room.
    UnknownRecipient,
    /// The room needs its password (or a join token) and none was given.
    AuthRequired,
    /// The room admits join tokens only, and none was given.
    TokenRequired,
    /// The password or token was wrong, expired, or for another room.
    BadCredentials,
    /// Too many wrong passwords or tokens from this address; wait and retry.
    Throttled,
    /// The room is locked by an operator.
    RoomLocked,
    /// The server has as many rooms as it is configured for.
    TooManyRooms,
    /// Your role does not allow this (e.g. a viewer publishing, a presenter removing someone).
    Forbidden,
    /// An operator action named someone who is not in the room.
    UnknownParticipant,
    /// A configured limit was reached (tracks per participant, SDP size, …).
    LimitExceeded,
    /// Your media connection never got through to the server: your network seems to block it
    /// (UDP and TCP to the media port). Joining again from this network will not help.
    MediaUnreachable,
    /// Cluster mode: this node cannot reach Redis to learn where the room lives; retry.
    ClusterUnavailable,
    Internal,
}

/// Messages from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to `join`: who you are, and who is already there (yourself excluded).
    Joined {
        room: String,
        id: String,
        participants: Vec<ParticipantInfo>,
        /// Bearer token for `POST /api/rooms/{room}/files`, valid while you are in the room.
        /// In a protected room it also opens the room's files (`?token=` on their URLs).
        upload_token: String,
        /// What you may do here.
        role: Role,
        /// Whether an operator has locked the room.
        locked: bool,
        /// Credentials for the server's TURN relay, when it runs one (`--turn`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn: Option<TurnGrant>,
        /// Cluster mode: this node's id, and the signaling URLs of the cluster's live nodes
        /// (this one first), to rejoin through when this node cannot be reached.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nodes: Vec<String>,
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
    /// The answer to a `publish` offer.
    Answer {
        sdp: String,
    },
    /// A subscribe offer; answer it with `subscribe_answer` carrying the same revision.
    Offer {
        sdp: String,
        revision: u64,
        tracks: Vec<OfferedTrack>,
    },
    Candidate {
        pc: PcRole,
        candidate: IceCandidate,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// For a refused `chat`: the `client_id` of the message that was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// An operator stopped your microphone (`audio`) or camera (`video`); turn it back on
    /// yourself (`update`) when asked to.
    Muted {
        kind: MediaKind,
        by: String,
    },
    /// The room was locked or unlocked by an operator.
    RoomState {
        locked: bool,
        by: String,
    },
    /// Dynacast: nobody receives the encodings of your simulcast track `track` whose rids are
    /// in `paused`: pause them (`RTCRtpEncodingParameters.active`), and run the others.
    Layers {
        track: String,
        paused: Vec<String>,
    },
    /// The room's dominant speaker (by participant id) changed; also sent after `joined` when
    /// someone is speaking. `null`: the speaker left and nobody has spoken since.
    Speaker {
        id: Option<String>,
    },
    /// Cluster mode: the room lives on another node. Join there instead (same `join`); this
    /// socket closes next.
    Redirect {
        /// The other node's signaling URL, `ws(s)://…/ws`.
        url: String,
        /// Its node id (for logs).
        node: String,
    },
    /// Cluster mode: this node is draining (shutting down); the room continues on another
    /// node. Rejoin at `url` now (same `join`); this socket closes next.
    Moved {
        /// The room's new node's signaling URL, `ws(s)://…/ws`.
        url: String,
        node: String,
        /// Why, for people: "This server is shutting down; …".
        message: String,
    },
    /// The server is ending the session (shutdown, removed); the socket closes next.
    Bye {
        reason: String,
    },
    /// A chat message (text, file or system notice) for you: public, or private to or from you.
    Chat {
        message: ChatMessage,
    },
    /// Your message `client_id` is stored as `message` (also the answer to a resend).
    ChatAck {
        client_id: String,
        message: ChatMessage,
    },
    /// Chat history, oldest first: sent after `joined` (the last 100 messages you may see) and
    /// in answer to `history`. `more` says whether older messages exist.
    History {
        messages: Vec<ChatMessage>,
        more: bool,
    },
}

/// A chat message as clients see it (the chat store's record).
pub type ChatMessage = crate::chat::StoredMessage;

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            client_id: None,
        }
    }
}

/// A client text frame that is not a message; the text is meant for the client.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("not a valid message: {0}; see docs/protocol.md")]
    Invalid(serde_json::Error),
}

impl MessageError {
    /// The code the client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            MessageError::TooLarge { .. } => ErrorCode::TooLarge,
            MessageError::Invalid(_) => ErrorCode::BadMessage,
        }
    }
}

/// Parses one client text frame of at most [`MAX_MESSAGE_BYTES`].
pub fn parse_client_message(text: &str) -> Result<ClientMessage, MessageError> {
    parse_client_message_within(text, MAX_MESSAGE_BYTES)
}

/// [`parse_client_message`] with the configured size limit.
pub fn parse_client_message_within(
    text: &str,
    limit: usize,
) -> Result<ClientMessage, MessageError> {
    if text.len() > limit {
        return Err(MessageError::TooLarge {
            bytes: text.len(),
            limit,
        });
    }
    serde_json::from_str(text).map_err(MessageError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_round_trips() {
        let m = parse_client_message(r#"{"type":"join","room":"demo","name":"Alice"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                room: "demo".into(),
                name: "Alice".into(),
                identity: None,
                password: None,
                token: None,
                previous_node: None,
            }
        );
        let back = serde_json::to_string(&m).unwrap();
        assert_eq!(parse_client_message(&back).unwrap(), m);
    }

    #[test]
    fn candidate_uses_browser_field_names() {
        let m = parse_client_message(
            r#"{"type":"candidate","pc":"subscribe","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        )
        .unwrap();
        match m {
            ClientMessage::Candidate { pc, candidate } => {
                assert_eq!(pc, PcRole::Subscribe);
                assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
                assert_eq!(candidate.sdp_m_line_index, Some(0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn server_messages_are_snake_case_tagged() {
        let s = serde_json::to_value(ServerMessage::ParticipantLeft { id: "bob".into() }).unwrap();
        assert_eq!(
            s,
            serde_json::json!({"type": "participant_left", "id": "bob"})
        );
        let e = serde_json::to_value(ServerMessage::error(ErrorCode::BadRoom, "x")).unwrap();
        assert_eq!(e["code"], "bad_room");
    }

    #[test]
    fn hostile_and_malformed_messages_are_errors_not_panics() {
        let long = format!(
            r#"{{"type":"join","room":"a","name":"{}"}}"#,
            "x".repeat(70_000)
        );
        let deep = "[".repeat(10_000);
        let cases: Vec<&str> = vec![
            "",
            "null",
            "{}",
            "[]",
            "\u{0}",
            r#"{"type":"nope"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":5,"name":"x"}"#,
            r#"{"type":"join","room":"a","name":"b","extra":1}"#,
            r#"{"type":"subscribe_answer","sdp":"x","revision":-1}"#,
            r#"{"type":"candidate","pc":"sideways","candidate":{"candidate":""}}"#,
            r#"{"type":"ping","nonce":1e400}"#,
            r#"{"type":"chat","text":"hi"}"#,
            r#"{"type":"chat","text":5,"client_id":"a"}"#,
            r#"{"type":"history","before":"x"}"#,
            &deep,
            &long,
        ];
        for c in cases {
            assert!(parse_client_message(c).is_err(), "accepted {c:.60}");
        }
        let e = parse_client_message(&long).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooLarge);
        assert_eq!(e.to_string(), "message is 70036 bytes; the limit is 65536");
        assert_eq!(
            parse_client_message("{}").unwrap_err().code(),
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn restart_ice_and_turn_credentials() {
        assert_eq!(
            parse_client_message(r#"{"type":"restart_ice"}"#).unwrap(),
            ClientMessage::RestartIce
        );
        let e =
            serde_json::to_value(ServerMessage::error(ErrorCode::MediaUnreachable, "x")).unwrap();
        assert_eq!(e["code"], "media_unreachable");
        let grant = TurnGrant {
            username: "1700000000:alice".into(),
            credential: "c".into(),
            expires: 1_700_000_000,
            udp: Some(3478),
            tcp: Some(3478),
            tls: None,
        };
        let v = serde_json::to_value(&grant).unwrap();
        assert_eq!(v["tls"], serde_json::Value::Null);
        assert_eq!(v["udp"], 3478);
    }

    #[test]
    fn optional_fields_may_be_absent() {
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping { nonce: None }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"update","audio":false}"#).unwrap(),
            ClientMessage::Update {
                audio: Some(false),
                video: None
            }
        );
    }
}
