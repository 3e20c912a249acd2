//! A chat-only participant: a signaling connection that joins a room and speaks the chat part
//! of the protocol (no peer connections), plus the HTTP side of files (multipart upload).
//!
//! Everything the client receives is kept in [`ChatClient::seen`], in order, so that tests can
//! assert what did *not* arrive once a later marker message proves that it would have by then.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::task::JoinHandle;

use super::server::{http_request, HttpResponse};
use super::signaling::{
    ChatMessage, ClientMsg, Incoming, ServerMsg, SignalConn, SignalRx, SignalTx, ERROR_CODES,
};

/// Default bound for waiting on one expected message.
pub const T: Duration = Duration::from_secs(5);

pub struct ChatClient {
    /// Our participant id, from `joined`.
    pub id: String,
    pub name: String,
    pub room: String,
    /// `joined.upload_token`.
    pub upload_token: String,
    /// The `history` that came right after `joined`.
    pub join_history: Vec<ChatMessage>,
    pub join_history_more: bool,
    /// Everything received since the connection opened, in order.
    pub seen: Vec<ServerMsg>,
    tx: SignalTx,
    rx: SignalRx,
    /// Received but not yet taken by an `expect_*` call.
    pending: std::collections::VecDeque<ServerMsg>,
    closed: Option<Option<(u16, String)>>,
    writer: JoinHandle<()>,
}

impl ChatClient {
    /// Connects, joins `room` as `name` (with `identity` if given) and waits for `joined` and
    /// the join-time `history`.
    pub async fn join(
        ws_url: &str,
        room: &str,
        name: &str,
        identity: Option<&str>,
    ) -> Result<ChatClient> {
        let conn = SignalConn::connect(ws_url).await?;
        let mut c = ChatClient {
            id: String::new(),
            name: name.to_string(),
            room: room.to_string(),
            upload_token: String::new(),
            join_history: Vec::new(),
            join_history_more: false,
            seen: Vec::new(),
            tx: conn.tx,
            rx: conn.rx,
            pending: Default::default(),
            closed: None,
            writer: conn.writer,
        };
        c.tx.send(&ClientMsg::Join {
            room: room.to_string(),
            name: name.to_string(),
            identity: identity.map(str::to_string),
            password: None,
            token: None,
        })?;
        let who = format!("{name:?} joining {room:?}");
        let (id, token) = c
            .expect(&format!("{who}: joined"), T, |m| match m {
                ServerMsg::Joined {
                    id, upload_token, ..
                } => Some(Ok((id.clone(), upload_token.clone()))),
                ServerMsg::Error { code, message, .. } => {
                    Some(Err(anyhow!("error {code}: {message}")))
                }
                _ => None,
            })
            .await??;
        c.id = id;
        c.upload_token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("{who}: `joined` carries no upload_token"))?;
        let (messages, more) = c
            .expect(&format!("{who}: history after joined"), T, |m| match m {
                ServerMsg::History { messages, more } => Some((messages.clone(), *more)),
                _ => None,
            })
            .await?;
        check_history_order(&messages).with_context(|| format!("{who}: join history"))?;
        c.join_history = messages;
        c.join_history_more = more;
        Ok(c)
    }

    /// Sends any client message.
    pub fn send(&self, msg: &ClientMsg) -> Result<()> {
        self.tx.send(msg)
    }

    /// Sends a raw text frame.
    pub fn send_raw(&self, text: String) -> Result<()> {
        self.tx.send_raw_text(text)
    }

    /// Sends `chat` without waiting.
    pub fn send_chat(&self, text: &str, to: Option<&str>, client_id: &str) -> Result<()> {
        self.tx.send(&ClientMsg::Chat {
            text: text.to_string(),
            to: to.map(str::to_string),
            client_id: client_id.to_string(),
        })
    }

    /// Sends a public or private message and waits for its `chat_ack`; an `error` first is a
    /// failure.
    pub async fn chat(
        &mut self,
        text: &str,
        to: Option<&str>,
        client_id: &str,
    ) -> Result<ChatMessage> {
        self.send_chat(text, to, client_id)?;
        self.expect_ack(client_id).await
    }

    /// Waits for the `chat_ack` of `client_id`; an `error` naming it (or naming no message)
    /// first is a failure.
    pub async fn expect_ack(&mut self, client_id: &str) -> Result<ChatMessage> {
        let who = self.id.clone();
        self.expect(
            &format!("{who}: chat_ack for client_id {client_id:?}"),
            T,
            |m| match m {
                ServerMsg::ChatAck {
                    client_id: c,
                    message,
                } if c == client_id => Some(Ok((**message).clone())),
                ServerMsg::Error {
                    code,
                    message,
                    client_id: c,
                } if c.as_deref().is_none_or(|c| c == client_id) => Some(Err(anyhow!(
                    "{who}: error {code} ({message}, client_id {c:?}) instead of chat_ack for {client_id:?}"
                ))),
                _ => None,
            },
        )
        .await?
    }

    /// Waits for a `chat` whose message satisfies `pred`.
    pub async fn expect_chat(
        &mut self,
        what: &str,
        pred: impl Fn(&ChatMessage) -> bool,
    ) -> Result<ChatMessage> {
        let what = format!("{}: chat {what}", self.id);
        self.expect(&what, T, |m| match m {
            ServerMsg::Chat { message } if pred(message) => Some((**message).clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a `chat` with exactly this text.
    pub async fn expect_chat_text(&mut self, text: &str) -> Result<ChatMessage> {
        self.expect_chat(&format!("with text {text:.60?}"), |m| m.text == text)
            .await
    }

    /// Waits for an `error` and checks its code, that it has a message and, for a refused
    /// chat message (`client_id` given), that it names that message. A `chat_ack` for that
    /// message instead is a failure.
    pub async fn expect_error(
        &mut self,
        code: &str,
        client_id: Option<&str>,
        after: &str,
    ) -> Result<()> {
        let who = self.id.clone();
        let what = format!("{who}: error {code} after {after}");
        let got = self
            .expect(&what, T, |m| match m {
                ServerMsg::Error {
                    code,
                    message,
                    client_id,
                } => Some(Ok((code.clone(), message.clone(), client_id.clone()))),
                ServerMsg::ChatAck {
                    message,
                    client_id: c,
                } if client_id.is_none_or(|want| want == c) => Some(Err(anyhow!(
                    "{what}: chat_ack instead, message {} stored with text {:.80?}",
                    message.id,
                    message.text
                ))),
                _ => None,
            })
            .await??;
        let (got, message, named) = got;
        anyhow::ensure!(got == code, "{what}: got error {got}: {message}");
        anyhow::ensure!(
            ERROR_CODES.contains(&got.as_str()),
            "{who}: undocumented error code {got}"
        );
        anyhow::ensure!(!message.is_empty(), "{who}: error {got} has no message");
        if let Some(want) = client_id {
            anyhow::ensure!(
                named.as_deref() == Some(want),
                "{what}: the error names client_id {named:?}, not {want:?}"
            );
        }
        Ok(())
    }

    /// Asks for history and waits for the answer.
    pub async fn history(
        &mut self,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<(Vec<ChatMessage>, bool)> {
        self.tx.send(&ClientMsg::History { before, limit })?;
        let who = self.id.clone();
        let (messages, more) = self
            .expect(
                &format!("{who}: history (before {before:?}, limit {limit:?})"),
                T,
                |m| match m {
                    ServerMsg::History { messages, more } => Some(Ok((messages.clone(), *more))),
                    ServerMsg::Error { code, message, .. } => Some(Err(anyhow!(
                        "{who}: error {code} ({message}) asking for history"
                    ))),
                    _ => None,
                },
            )
            .await??;
        check_history_order(&messages)?;
        Ok((messages, more))
    }

    /// `ping` with `nonce`, answered by the matching `pong`.
    pub async fn ping(&mut self, nonce: u64) -> Result<()> {
        self.tx.send(&ClientMsg::Ping { nonce: Some(nonce) })?;
        let who = self.id.clone();
        self.expect(&format!("{who}: pong {nonce}"), T, |m| match m {
            ServerMsg::Pong { nonce: Some(n) } if *n == nonce => Some(()),
            _ => None,
        })
        .await
    }

    /// `leave`, then `bye` and the socket closing.
    pub async fn leave(mut self) -> Result<()> {
        self.tx.send(&ClientMsg::Leave)?;
        let who = self.id.clone();
        self.expect(&format!("{who}: bye after leave"), T, |m| {
            matches!(m, ServerMsg::Bye { .. }).then_some(())
        })
        .await?;
        let deadline = tokio::time::Instant::now() + T;
        while self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Incoming::Closed(c)) => self.closed = Some(c),
                Ok(_) => {}
                Err(_) => bail!("{who}: the socket stayed open for {T:?} after bye"),
            }
        }
        Ok(())
    }

    /// Drops the connection without a close handshake.
    pub fn vanish(self) {
        self.writer.abort();
    }

    /// The `chat` messages received so far.
    pub fn chats(&self) -> impl Iterator<Item = &ChatMessage> {
        self.seen.iter().filter_map(|m| match m {
            ServerMsg::Chat { message } => Some(message.as_ref()),
            _ => None,
        })
    }

    /// Receives until `f` accepts a message (which is then taken), failing on close or when
    /// `within` runs out. Messages received meanwhile stay pending for later calls.
    pub async fn expect<R>(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&ServerMsg) -> Option<R>,
    ) -> Result<R> {
        if let Some(i) = self.pending.iter().position(|m| f(m).is_some()) {
            let m = self.pending.remove(i).expect("index from position");
            return Ok(f(&m).expect("matched before"));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(c) = &self.closed {
                bail!(
                    "waiting for {what}: the connection closed ({c:?}); pending: {}",
                    self.pending_summary()
                );
            }
            let incoming = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(i) => i,
                Err(_) => bail!(
                    "waiting for {what}: nothing matching within {within:?}; pending: {}",
                    self.pending_summary()
                ),
            };
            match incoming {
                Incoming::Msg(m) => {
                    if let ServerMsg::Unknown(v) = &m {
                        bail!("waiting for {what}: undocumented server message {v}");
                    }
                    self.seen.push(m.clone());
                    if let Some(r) = f(&m) {
                        return Ok(r);
                    }
                    self.pending.push_back(m);
                }
                Incoming::Binary(n) => bail!("waiting for {what}: a binary frame of {n} bytes"),
                Incoming::Closed(c) => self.closed = Some(c),
            }
        }
    }

    fn pending_summary(&self) -> String {
        let kinds: Vec<String> = self
            .pending
            .iter()
            .map(|m| match m {
                ServerMsg::Error { code, .. } => format!("error({code})"),
                ServerMsg::Chat { message } => {
                    format!("chat({}:{:.30?})", message.id, message.text)
                }
                other => other.kind().to_string(),
            })
            .collect();
        format!("[{}]", kinds.join(", "))
    }

    /// Uploads `data` as `filename` with the declared `mime`, authorized by our token.
    pub async fn upload(
        &self,
        http: SocketAddr,
        filename: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<HttpResponse> {
        upload(
            http,
            &self.room,
            Some(&self.upload_token),
            filename,
            mime,
            data,
        )
        .await
    }
}

/// `POST /api/rooms/{room}/files` with a hand-built `multipart/form-data` body holding one
/// part named `file`, and `Authorization: Bearer token` if a token is given.
pub async fn upload(
    http: SocketAddr,
    room: &str,
    token: Option<&str>,
    filename: &str,
    mime: &str,
    data: &[u8],
) -> Result<HttpResponse> {
    // A boundary that cannot occur in the random test data by chance (RFC 2046 §5.1.1 only
    // asks that it not occur in the body; 32 random hex digits make that practically sure).
    let boundary = format!("confab-e2e-{:032x}", rand::random::<u128>());
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type.as_str())];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_request(
        http,
        "POST",
        &format!("/api/rooms/{room}/files"),
        &headers,
        &body,
    )
    .await
}

/// Ids strictly increasing, as "oldest first" and "strictly increasing ids" promise.
pub fn check_history_order(messages: &[ChatMessage]) -> Result<()> {
    for w in messages.windows(2) {
        anyhow::ensure!(
            w[0].id < w[1].id,
            "history is not in increasing id order: {} then {}",
            w[0].id,
            w[1].id
        );
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, as the server's `ts`.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh identity secret (32 hex digits, within the documented 16–128 characters).
pub fn new_identity() -> String {
    format!("{:032x}", rand::random::<u128>())
}
