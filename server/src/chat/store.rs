//! The chat store: message history, shared files' metadata and image previews' figures. One
//! interface ([`Store`]), two backends:
//! - [`sqlite`]: the embedded default, `<data>/confab.db`; nothing to set up;
//! - [`postgres`]: `--database postgres://…`, one database every node of a cluster shares.
//!
//! Invariants, kept by both backends (the suite in `store/tests.rs` runs against each):
//! - Message ids are assigned by the store, strictly increasing and never reused (even after
//!   rows are deleted), so clients can page with `before=<id>` and order by id alone; `ts` is
//!   informative only (the wall clock may step back).
//! - Ids become visible in increasing order: once a reader has seen id n, no message with a
//!   smaller id appears later. (SQLite has one writer; PostgreSQL writers take a
//!   transaction-scoped lock before drawing ids, so nodes commit their batches in turn.)
//! - A private message (`to` set) is returned only to a viewer whose identity key is its
//!   sender's or recipient's (ids are reusable display handles, keys are not), and never by the
//!   public-only query (`viewer = None`), which backs the REST history.
//! - `(room, sender_key, client_id)` is unique: storing it again returns the stored message and
//!   [`Inserted::Duplicate`], so a client may resend after a reconnect without doubling it.
//! - Strings are stored byte for byte, except that none may hold NUL (U+0000), which
//!   PostgreSQL's `text` cannot: both backends refuse it ([`StoreError::Invalid`]), so what one
//!   accepts the other does too. Validating text for people (length, control characters) is the
//!   caller's job, at the edge where it can tell the user what to fix.
//! - `kind == file` exactly when `file` is present; the schemas check it as well.
//!
//! Writes are [`Store::commit`]ted in batches: one transaction, durable when it returns (SQLite
//! `synchronous = FULL`, PostgreSQL `synchronous_commit = on`), so a batch is one fsync however
//! many messages it holds. The server writes only through `chat::writer` (group commit); reads
//! never wait for it.
//!
//! Each backend versions its schema in code: `MIGRATIONS[i]` takes a database from version i to
//! i + 1, in one transaction with the version bump; both lists describe the same tables and are
//! equally long ([`SCHEMA_VERSION`]). A database newer than this binary is refused rather than
//! guessed at.

pub mod postgres;
pub mod sqlite;
#[doc(hidden)]
pub mod temp_postgres;
#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Messages returned by a history query when the caller does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most messages one history query returns; larger limits are cut to this.
pub const MAX_LIMIT: usize = 500;
/// The schema version this binary writes, in either backend.
pub const SCHEMA_VERSION: i64 = sqlite::MIGRATIONS.len() as i64;

/// Errors of the chat store. Each says which database or operation, and what to do where the
/// operator can do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open chat database {}: {source}; check that the data directory exists, \
         is writable and is not on a network filesystem",
        path.display()
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "cannot create the data directory {}: {source}; create it or point the data \
         directory setting elsewhere",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "chat database {db} has schema version {found}, newer than this confab understands \
         ({supported}); run a newer confab or restore a backup made by this version"
    )]
    TooNew {
        db: String,
        found: i64,
        supported: i64,
    },
    #[error("migrating chat database {db} to schema version {version}: {source}")]
    Migrate {
        db: String,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("chat database: {op}: {source}")]
    Db { op: String, source: rusqlite::Error },
    #[error("--database {url:?} is not a PostgreSQL URL: {reason}; write it as postgres://USER:PASSWORD@HOST:5432/DBNAME")]
    DatabaseUrl { url: String, reason: String },
    #[error(
        "cannot connect to PostgreSQL at {target}: {}; check that it is running and reachable \
         from here and that --database names the right host, port, user, password and database",
        postgres::describe(source)
    )]
    Connect {
        /// `user@host:port/dbname`, without the password.
        target: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "PostgreSQL at {target} did not answer within {secs} s; check that it is running and \
         reachable from here (host, port, firewall) and that --database is right"
    )]
    ConnectTimeout { target: String, secs: u64 },
    #[error(
        "migrating chat database {db} to schema version {version}: {}",
        postgres::describe(source)
    )]
    PgMigrate {
        db: String,
        version: i64,
        source: tokio_postgres::Error,
    },
    #[error("chat database {db}: {op}: {}", postgres::describe(source))]
    Pg {
        db: String,
        op: String,
        source: tokio_postgres::Error,
    },
    #[error("chat database {db}: no connection to PostgreSQL for {op}: {reason}")]
    Pool {
        db: String,
        op: String,
        reason: String,
    },
    #[error(
        "chat database {db} holds a row this confab cannot read ({what}); was it edited by hand?"
    )]
    Corrupt { db: String, what: String },
    #[error("file hash {0:?} is not a SHA-256 digest in lower-case hex (64 characters)")]
    InvalidHash(String),
    #[error("size {size} of file {name:?} is too large to store")]
    SizeTooLarge { name: String, size: u64 },
    #[error("cannot store {what}: {why}")]
    Invalid { what: String, why: &'static str },
    #[error("the chat database's worker thread stopped ({0}); restart confab")]
    Worker(String),
}

/// What storing a message or file record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now: broadcast it.
    New,
    /// Already stored under the same key; the earlier record is returned. Acknowledge it to
    /// the sender again, but do not broadcast it a second time.
    Duplicate,
}

/// A message's kind as seen in history (`"text"`, `"file"`, `"system"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Typed by a participant.
    Text,
    /// A shared file; `file` holds its metadata.
    File,
    /// Written by the server: joined, left, camera on/off and the like.
    System,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::File => "file",
            MessageKind::System => "system",
        }
    }

    /// The kind stored as `s`, if it is one.
    pub fn parse(s: &str) -> Option<MessageKind> {
        match s {
            "text" => Some(MessageKind::Text),
            "file" => Some(MessageKind::File),
            "system" => Some(MessageKind::System),
            _ => None,
        }
    }
}

/// A shared file as a message refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Original file name, for display and download.
    pub name: String,
    /// Bytes.
    pub size: u64,
    pub mime: String,
    /// Where clients fetch it (by content hash).
    pub url: String,
}

/// What kind of message to store; the file payload travels with the `File` kind so a file
/// message without metadata (or a text message with some) cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Text,
    File(FileRef),
    System,
}

impl Kind {
    pub fn tag(&self) -> MessageKind {
        match self {
            Kind::Text => MessageKind::Text,
            Kind::File(_) => MessageKind::File,
            Kind::System => MessageKind::System,
        }
    }

    pub fn file(&self) -> Option<&FileRef> {
        match self {
            Kind::File(f) => Some(f),
            Kind::Text | Kind::System => None,
        }
    }
}

/// A message to store. Ids (room, participants) are the validated `names` types' strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub room: String,
    /// Sender participant id.
    pub from: String,
    /// Sender display name at the time of sending.
    pub name: String,
    /// Server time, milliseconds since the Unix epoch (UTC).
    pub ts: i64,
    /// Recipient participant id for a private message; `None` for everyone in the room.
    pub to: Option<String>,
    pub text: String,
    pub kind: Kind,
    /// The client's own id for this message, for deduplication of resends.
    pub client_id: Option<String>,
    /// The sender's identity key: who may read its private messages, and whose resends are
    /// deduplicated. Never sent to clients.
    pub sender_key: String,
    /// The recipient's identity key, exactly when `to` is set.
    pub recipient_key: Option<String>,
}

impl NewMessage {
    /// The record this message becomes once stored under `id`.
    pub fn stored(&self, id: i64) -> StoredMessage {
        StoredMessage {
            id,
            room: self.room.clone(),
            from: self.from.clone(),
            name: self.name.clone(),
            text: self.text.clone(),
            ts: self.ts,
            to: self.to.clone(),
            private: self.to.is_some(),
            kind: self.kind.tag(),
            file: self.kind.file().cloned(),
            client_id: self.client_id.clone(),
        }
    }
}

/// A message as stored and as sent to clients (serialized with these field names).
/// `file` is present exactly when `kind` is `file`; `private` is `to.is_some()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Server-assigned, strictly increasing.
    pub id: i64,
    pub room: String,
    /// Sender participant id.
    pub from: String,
    /// Sender display name.
    pub name: String,
    pub text: String,
    /// Server time, milliseconds since the Unix epoch (UTC).
    pub ts: i64,
    pub to: Option<String>,
    pub private: bool,
    pub kind: MessageKind,
    pub file: Option<FileRef>,
    pub client_id: Option<String>,
}

/// Metadata of an uploaded file; the bytes live elsewhere, named by `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// SHA-256 of the content, lower-case hex.
    pub hash: String,
    pub size: u64,
    pub mime: String,
    /// Original file name.
    pub name: String,
    pub room: String,
    /// Uploader participant id.
    pub uploader: String,
    /// Server time of the upload, milliseconds since the Unix epoch (UTC).
    pub created: i64,
}

/// What is known about the preview of an image (by content hash): its figures, or why it
/// could not be made. Stored once, so a preview is computed once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewRecord {
    pub hash: String,
    pub outcome: Result<PreviewFigures, String>,
}

/// A preview's size and fidelity (see `chat::preview`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreviewFigures {
    pub width: u32,
    pub height: u32,
    /// Size of the preview's JPEG file.
    pub bytes: u64,
    /// The original's size, upright.
    pub original_width: u32,
    pub original_height: u32,
    /// Luma PSNR (dB) and SSIM against the original scaled to the preview's size.
    pub psnr: f64,
    pub ssim: f64,
}

/// One write of a batch given to [`Store::commit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A message; a resend of a stored `(room, sender_key, client_id)` returns the stored one.
    Message(NewMessage),
    /// An uploaded file's metadata; the same content in the same room again returns the first
    /// record (its name and uploader win).
    File(FileRecord),
    /// An image preview's figures (or failure); the first record for a hash stands.
    Preview(PreviewRecord),
}

/// What a [`Write`] did, in the batch's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Message(StoredMessage, Inserted),
    File(FileRecord, Inserted),
    Preview(PreviewRecord, Inserted),
}

impl Write {
    /// Refuses what no backend can store, before it reaches one: a write refused here fails
    /// alone instead of failing its batch.
    pub fn check(&self) -> Result<(), StoreError> {
        match self {
            Write::Message(m) => {
                let what = || format!("a message in room {:?}", m.room);
                if m.to.is_some() != m.recipient_key.is_some() {
                    return Err(StoreError::Invalid {
                        what: what(),
                        why: "a private message needs both a recipient and its identity key",
                    });
                }
                if let Some(f) = m.kind.file() {
                    check_size(&f.name, f.size)?;
                }
                let strings = [
                    Some(&m.room),
                    Some(&m.from),
                    Some(&m.name),
                    m.to.as_ref(),
                    Some(&m.text),
                    m.client_id.as_ref(),
                    Some(&m.sender_key),
                    m.recipient_key.as_ref(),
                    m.kind.file().map(|f| &f.name),
                    m.kind.file().map(|f| &f.mime),
                    m.kind.file().map(|f| &f.url),
                ];
                check_no_nul(what, strings.into_iter().flatten())
            }
            Write::File(f) => {
                if !is_sha256_hex(&f.hash) {
                    return Err(StoreError::InvalidHash(f.hash.clone()));
                }
                check_size(&f.name, f.size)?;
                check_no_nul(
                    || format!("file {} in room {:?}", f.hash, f.room),
                    [&f.mime, &f.name, &f.room, &f.uploader],
                )
            }
            Write::Preview(p) => {
                if !is_sha256_hex(&p.hash) {
                    return Err(StoreError::InvalidHash(p.hash.clone()));
                }
                match &p.outcome {
                    Ok(f) => check_size(&format!("preview of {}", p.hash), f.bytes).map(|_| ()),
                    Err(why) => check_no_nul(|| format!("preview of {}", p.hash), [why]),
                }
            }
        }
    }
}

fn check_size(name: &str, size: u64) -> Result<i64, StoreError> {
    i64::try_from(size).map_err(|_| StoreError::SizeTooLarge {
        name: name.to_owned(),
        size,
    })
}

fn check_no_nul<'a>(
    what: impl FnOnce() -> String,
    strings: impl IntoIterator<Item = &'a String>,
) -> Result<(), StoreError> {
    if strings.into_iter().any(|s| s.contains('\0')) {
        return Err(StoreError::Invalid {
            what: what(),
            why: "text holds a NUL character (U+0000), which the database cannot keep",
        });
    }
    Ok(())
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where the store lives: `--database`, or SQLite in the data directory without it.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Without the URL's password: configurations get logged.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&postgres::redact(url))
                .finish(),
        }
    }
}

impl Location {
    /// `database` as given to `--database` (only `postgres://` and `postgresql://` URLs), or
    /// `<data>/confab.db`.
    pub fn from_flag(database: Option<&str>, data: &Path) -> Result<Location, StoreError> {
        match database {
            None => Ok(Location::Sqlite(data.join("confab.db"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                postgres::parse_url(url)?;
                Ok(Location::Postgres(url.to_owned()))
            }
            Some(url) => Err(StoreError::DatabaseUrl {
                url: postgres::redact(url),
                reason: "only postgres:// (or postgresql://) URLs are supported; leave \
                         --database out to keep the chat in SQLite under --data"
                    .into(),
            }),
        }
    }
}

/// The chat store, on one backend or the other. Reads may run concurrently; writes should come
/// from one place (the server's `chat::writer`), which batches them.
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (creating and migrating) the store at `at`. A PostgreSQL server that cannot be
    /// reached, or refuses, is an error here, with what to do.
    pub async fn open(at: &Location) -> Result<Store, StoreError> {
        Ok(match at {
            Location::Sqlite(path) => Store::Sqlite(sqlite::Sqlite::open(path.clone()).await?),
            Location::Postgres(url) => Store::Postgres(postgres::Postgres::open(url).await?),
        })
    }

    /// For logs and errors: the SQLite file, or `postgres://user@host:port/db` (no password).
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => s.describe(),
            Store::Postgres(p) => p.describe(),
        }
    }

    /// Applies `writes` in one transaction, durable when this returns `Ok`; results in the same
    /// order. Any failure rolls back the whole batch (check each write with [`Write::check`]
    /// first so that one bad write cannot fail the others).
    pub async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Written>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Sqlite(s) => s.commit(writes).await,
            Store::Postgres(p) => p.commit(&writes).await,
        }
    }

    /// Up to `limit` (at most [`MAX_LIMIT`]) of the newest messages of `room` with an id below
    /// `before` (all if `None`), oldest first. Page further back by passing the first returned
    /// id as the next `before`.
    ///
    /// `viewer = Some(key)`: public messages plus the private ones the identity `key` sent or
    /// received. `viewer = None`: public messages only (the REST history).
    pub async fn history(
        &self,
        room: &str,
        viewer: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = limit.min(MAX_LIMIT);
        let before = before.unwrap_or(i64::MAX);
        match self {
            Store::Sqlite(s) => s.history(room, viewer, before, limit).await,
            Store::Postgres(p) => p.history(room, viewer, before, limit).await,
        }
    }

    /// A file's metadata by content hash: as shared in `room`, or (with `None`) its first
    /// upload anywhere. `None` if unknown, including for a malformed hash.
    pub async fn file_by_hash(
        &self,
        hash: &str,
        room: Option<&str>,
    ) -> Result<Option<FileRecord>, StoreError> {
        if !is_sha256_hex(hash) {
            return Ok(None);
        }
        match self {
            Store::Sqlite(s) => s.file_by_hash(hash, room).await,
            Store::Postgres(p) => p.file_by_hash(hash, room).await,
        }
    }

    /// The stored preview record of a content hash, if one was made. `None` also for a
    /// malformed hash.
    pub async fn preview(&self, hash: &str) -> Result<Option<PreviewRecord>, StoreError> {
        if !is_sha256_hex(hash) {
            return Ok(None);
        }
        match self {
            Store::Sqlite(s) => s.preview(hash).await,
            Store::Postgres(p) => p.preview(hash).await,
        }
    }

    /// The database's schema version.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.schema_version().await,
            Store::Postgres(p) => p.schema_version().await,
        }
    }

    /// The tables the schema has made, sorted (for tests that both backends agree).
    pub async fn tables(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tables().await,
            Store::Postgres(p) => p.tables().await,
        }
    }
}
