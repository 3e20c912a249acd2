//! The chat store: message history and shared-file metadata in SQLite (`<data>/confab.db`).
//!
//! Invariants:
//! - Message ids are assigned here, strictly increasing and never reused (`AUTOINCREMENT`), so
//!   clients can page with `before=<id>` and order by id alone; `ts` is informative only (the
//!   wall clock may step back).
//! - A private message (`to` set) is returned only to a viewer whose identity key is its
//!   sender's or recipient's (ids are reusable display handles, keys are not),
//!   and never by the public-only query (`viewer = None`), which backs the REST history.
//! - `(room, sender_key, client_id)` is unique: inserting it again returns the stored message and
//!   [`Inserted::Duplicate`], so a client may resend after a reconnect without doubling it.
//! - Text is stored byte for byte; validating it (length, control characters) is the caller's
//!   job, at the edge where it can tell the user what to fix.
//! - `kind == file` exactly when `file` is present; the schema checks it as well.
//!
//! The schema is versioned in code: `MIGRATIONS[i]` takes a database from `user_version` i
//! to i + 1, each in one transaction together with the version bump, so a crash mid-migration
//! leaves the previous version intact. A database newer than this binary is refused rather
//! than guessed at.
//!
//! Durability: WAL journal with `synchronous = FULL` (see [`ChatStore::open`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// Messages returned by a history query when the caller does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most messages one history query returns; larger limits are cut to this.
pub const MAX_LIMIT: usize = 500;
/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a write waits for a lock held by another connection (an operator's `sqlite3`
/// shell, a backup) before failing, instead of failing at once with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; entry i upgrades `user_version` i to i + 1. Append only: never edit an
/// entry that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: messages and files.
    "
    CREATE TABLE messages (
        -- AUTOINCREMENT: ids never reused, even after rows are deleted (retention), so an id a
        -- client holds for paging never comes to mean another message.
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        room        TEXT    NOT NULL,
        sender      TEXT    NOT NULL,
        sender_name TEXT    NOT NULL,
        ts_ms       INTEGER NOT NULL,
        recipient   TEXT,
        -- Who may read a private message: the sender's and recipient's identity keys. Ids are
        -- display handles that a later participant may reuse; keys are not.
        sender_key    TEXT  NOT NULL,
        recipient_key TEXT,
        kind        TEXT    NOT NULL CHECK (kind IN ('text', 'file', 'system')),
        text        TEXT    NOT NULL,
        file_name   TEXT,
        file_size   INTEGER CHECK (file_size >= 0),
        file_mime   TEXT,
        file_url    TEXT,
        client_id   TEXT,
        CHECK ((kind = 'file') = (file_name IS NOT NULL AND file_size IS NOT NULL
                                  AND file_mime IS NOT NULL AND file_url IS NOT NULL)),
        CHECK (kind = 'file' OR (file_name IS NULL AND file_size IS NULL
                                 AND file_mime IS NULL AND file_url IS NULL)),
        CHECK ((recipient IS NULL) = (recipient_key IS NULL))
    ) STRICT;
    CREATE INDEX messages_by_room ON messages (room, id);
    CREATE UNIQUE INDEX messages_dedup ON messages (room, sender_key, client_id)
        WHERE client_id IS NOT NULL;

    -- One row per (content, room): the same bytes shared in two rooms are stored once
    -- elsewhere, but each room keeps its own uploader, name and time.
    CREATE TABLE files (
        hash       TEXT    NOT NULL CHECK (length(hash) = 64),
        room       TEXT    NOT NULL,
        size       INTEGER NOT NULL CHECK (size >= 0),
        mime       TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        uploader   TEXT    NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (hash, room)
    ) STRICT, WITHOUT ROWID;
    ",
    // 2: image previews, once per content (chat/preview.rs): the figures, or why there is none.
    "
    CREATE TABLE previews (
        hash            TEXT    PRIMARY KEY CHECK (length(hash) = 64),
        width           INTEGER CHECK (width > 0),
        height          INTEGER CHECK (height > 0),
        bytes           INTEGER CHECK (bytes > 0),
        original_width  INTEGER CHECK (original_width > 0),
        original_height INTEGER CHECK (original_height > 0),
        psnr            REAL,
        ssim            REAL,
        error           TEXT,
        CHECK ((error IS NULL) = (width IS NOT NULL AND height IS NOT NULL AND bytes IS NOT NULL
                                  AND original_width IS NOT NULL AND original_height IS NOT NULL
                                  AND psnr IS NOT NULL AND ssim IS NOT NULL))
    ) STRICT, WITHOUT ROWID;
    ",
];

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
    #[error("file hash {0:?} is not a SHA-256 digest in lower-case hex (64 characters)")]
    InvalidHash(String),
    #[error("size {size} of file {name:?} is too large to store")]
    SizeTooLarge { name: String, size: u64 },
}

/// What [`ChatStore::insert`] and [`ChatStore::insert_file`] did.
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
}

impl ToSql for MessageKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for MessageKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "text" => Ok(MessageKind::Text),
            "file" => Ok(MessageKind::File),
            "system" => Ok(MessageKind::System),
            other => Err(FromSqlError::Other(
                format!("unknown message kind {other:?}").into(),
            )),
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

/// The chat database. Owns one connection; `Send`, not `Sync`: keep it on one thread (or
/// behind a mutex) and call it via `spawn_blocking`, since every call may touch the disk.
pub struct ChatStore {
    conn: Connection,
    /// For error messages: the file path, or `:memory:`.
    db: String,
}

const MESSAGE_COLUMNS: &str = "id, room, sender, sender_name, ts_ms, recipient, kind, text, \
                               file_name, file_size, file_mime, file_url, client_id";

impl ChatStore {
    /// Opens (creating if needed, with its parent directory) the database at `path` and
    /// brings its schema up to [`SCHEMA_VERSION`].
    ///
    /// Journal: WAL, so readers never block the writer and a crash (kill -9, power loss)
    /// leaves committed transactions intact and the file consistent.
    ///
    /// `synchronous = FULL` rather than `NORMAL`: with WAL, `NORMAL` already survives the
    /// process being killed, but may lose the last commits on power loss or an OS crash, and
    /// those are messages other participants have already seen, since we broadcast right after
    /// commit. `FULL` costs one fsync per message; chat is written at human speed (a handful
    /// of messages per second per server), on a blocking thread, so that cost is affordable
    /// and buys "if you saw it, it is in the history".
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // SQLite keeps the old journal where WAL is impossible (some network
            // filesystems). That is still crash-safe with synchronous = FULL, only slower,
            // so go on rather than refuse to start.
            tracing::warn!(
                db = %path.display(),
                journal_mode = %mode,
                "chat database could not switch to WAL; put the data directory on a local \
                 filesystem for better performance"
            );
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        Self::with_connection(conn, path.display().to_string())
    }

    /// A private, empty, in-memory store (tests, or running without a data directory).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::with_connection(conn, ":memory:".to_owned())
    }

    fn with_connection(conn: Connection, db: String) -> Result<Self, StoreError> {
        let mut store = ChatStore { conn, db };
        store.migrate()?;
        Ok(store)
    }

    /// Applies the pending migrations, each with its version bump in one transaction. The
    /// version is read inside an IMMEDIATE (write-locked) transaction, so two processes
    /// opening the same new file cannot both run migration 1.
    fn migrate(&mut self) -> Result<(), StoreError> {
        loop {
            let db = self.db.clone();
            let mig_err = |version| {
                let db = db.clone();
                move |source| StoreError::Migrate {
                    db,
                    version,
                    source,
                }
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(mig_err(SCHEMA_VERSION))?;
            let found: i64 = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(mig_err(SCHEMA_VERSION))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    db,
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            // `found` is in 0..=SCHEMA_VERSION here, so the index is in range or the loop ends.
            let Some(sql) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
                return Ok(());
            };
            let next = found + 1;
            tx.execute_batch(sql).map_err(mig_err(next))?;
            tx.pragma_update(None, "user_version", next)
                .map_err(mig_err(next))?;
            tx.commit().map_err(mig_err(next))?;
        }
    }

    /// The database's schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| StoreError::Db {
                op: "reading schema version".to_owned(),
                source,
            })
    }

    /// Stores a message, committed to disk when this returns, or returns the message already
    /// stored under the same `(room, from, client_id)` with [`Inserted::Duplicate`] (whatever
    /// the new text says: the first one wins).
    pub fn insert(&mut self, msg: NewMessage) -> Result<(StoredMessage, Inserted), StoreError> {
        let db_err = |source| StoreError::Db {
            op: format!("storing a message in room {}", msg.room),
            source,
        };
        let file = match &msg.kind {
            Kind::File(f) => Some(f),
            Kind::Text | Kind::System => None,
        };
        let file_size = file
            .map(|f| {
                i64::try_from(f.size).map_err(|_| StoreError::SizeTooLarge {
                    name: f.name.clone(),
                    size: f.size,
                })
            })
            .transpose()?;

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let new_id: Option<i64> = tx
            .prepare_cached(
                "INSERT INTO messages (room, sender, sender_name, ts_ms, recipient, kind, text,
                                       file_name, file_size, file_mime, file_url, client_id,
                                       sender_key, recipient_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT (room, sender_key, client_id) WHERE client_id IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        msg.room,
                        msg.from,
                        msg.name,
                        msg.ts,
                        msg.to,
                        msg.kind.tag(),
                        msg.text,
                        file.map(|f| &f.name),
                        file_size,
                        file.map(|f| &f.mime),
                        file.map(|f| &f.url),
                        msg.client_id,
                        msg.sender_key,
                        msg.recipient_key,
                    ],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(db_err)?;

        let existing = match new_id {
            Some(_) => None,
            None => {
                // Only the dedup index can make the insert do nothing, so the row exists.
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE room = ?1 AND sender_key = ?2 AND client_id = ?3"
                );
                let existing = tx
                    .prepare_cached(&sql)
                    .and_then(|mut stmt| {
                        stmt.query_row(
                            params![msg.room, msg.sender_key, msg.client_id],
                            message_row,
                        )
                    })
                    .map_err(db_err)?;
                Some(existing)
            }
        };
        tx.commit().map_err(db_err)?;

        match (new_id, existing) {
            (_, Some(existing)) => Ok((existing, Inserted::Duplicate)),
            (Some(id), None) => {
                let private = msg.to.is_some();
                let kind = msg.kind.tag();
                let stored = StoredMessage {
                    id,
                    room: msg.room,
                    from: msg.from,
                    name: msg.name,
                    text: msg.text,
                    ts: msg.ts,
                    to: msg.to,
                    private,
                    kind,
                    file: match msg.kind {
                        Kind::File(f) => Some(f),
                        Kind::Text | Kind::System => None,
                    },
                    client_id: msg.client_id,
                };
                Ok((stored, Inserted::New))
            }
            // Unreachable by construction above; kept total rather than panicking.
            (None, None) => Err(db_err(rusqlite::Error::QueryReturnedNoRows)),
        }
    }

    /// Up to `limit` (at most [`MAX_LIMIT`]) of the newest messages of `room` with an id
    /// below `before` (all if `None`), oldest first. Page further back by passing the first
    /// returned id as the next `before`.
    ///
    /// `viewer = Some(key)`: public messages plus the private ones the identity `key` sent or
    /// received.
    /// `viewer = None`: public messages only (the REST history).
    pub fn history(
        &self,
        room: &str,
        viewer: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let db_err = |source| StoreError::Db {
            op: format!("reading the history of room {room}"),
            source,
        };
        // At most MAX_LIMIT (500), so the conversion cannot fail.
        let limit = i64::try_from(limit.min(MAX_LIMIT)).unwrap_or(0);
        let before = before.unwrap_or(i64::MAX);
        // Newest first through the (room, id) index, then reversed: the last N, oldest first.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE room = ?1 AND id < ?2
               AND (recipient IS NULL
                    OR (?3 IS NOT NULL AND (sender_key = ?3 OR recipient_key = ?3)))
             ORDER BY id DESC
             LIMIT ?4"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(db_err)?;
        let rows = stmt
            .query_map(params![room, before, viewer, limit], message_row)
            .map_err(db_err)?;
        let mut out = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
        out.reverse();
        Ok(out)
    }

    /// Records an uploaded file's metadata, or returns the record already stored for the same
    /// content in the same room with [`Inserted::Duplicate`] (the first upload's name and
    /// uploader win).
    pub fn insert_file(&mut self, file: FileRecord) -> Result<(FileRecord, Inserted), StoreError> {
        if !is_sha256_hex(&file.hash) {
            return Err(StoreError::InvalidHash(file.hash));
        }
        let size = i64::try_from(file.size).map_err(|_| StoreError::SizeTooLarge {
            name: file.name.clone(),
            size: file.size,
        })?;
        let db_err = |source| StoreError::Db {
            op: format!(
                "storing metadata of file {} in room {}",
                file.hash, file.room
            ),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let changed = tx
            .prepare_cached(
                "INSERT INTO files (hash, room, size, mime, name, uploader, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (hash, room) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    file.hash,
                    file.room,
                    size,
                    file.mime,
                    file.name,
                    file.uploader,
                    file.created
                ])
            })
            .map_err(db_err)?;
        let existing = if changed == 1 {
            None
        } else {
            // The conflict means the row is there; a vanished row is an internal fault,
            // reported rather than panicked on.
            let existing = select_file(&tx, &file.hash, Some(&file.room))
                .map_err(db_err)?
                .ok_or_else(|| db_err(rusqlite::Error::QueryReturnedNoRows))?;
            Some(existing)
        };
        tx.commit().map_err(db_err)?;
        Ok(match existing {
            Some(existing) => (existing, Inserted::Duplicate),
            None => (file, Inserted::New),
        })
    }

    /// A file's metadata by content hash: as shared in `room`, or (with `None`) its first
    /// upload anywhere. `None` if unknown, including for a malformed hash.
    pub fn file_by_hash(
        &self,
        hash: &str,
        room: Option<&str>,
    ) -> Result<Option<FileRecord>, StoreError> {
        if !is_sha256_hex(hash) {
            return Ok(None);
        }
        select_file(&self.conn, hash, room).map_err(|source| StoreError::Db {
            op: format!("looking up file {hash}"),
            source,
        })
    }
}

impl ChatStore {
    /// Records a preview's figures (or failure); the first record for a hash stands.
    pub fn insert_preview(&mut self, rec: &PreviewRecord) -> Result<PreviewRecord, StoreError> {
        if !is_sha256_hex(&rec.hash) {
            return Err(StoreError::InvalidHash(rec.hash.clone()));
        }
        let db_err = |source| StoreError::Db {
            op: format!("storing the preview of file {}", rec.hash),
            source,
        };
        let f = rec.outcome.as_ref().ok();
        let bytes = f
            .map(|f| {
                i64::try_from(f.bytes).map_err(|_| StoreError::SizeTooLarge {
                    name: format!("preview of {}", rec.hash),
                    size: f.bytes,
                })
            })
            .transpose()?;
        self.conn
            .prepare_cached(
                "INSERT INTO previews (hash, width, height, bytes, original_width,
                                       original_height, psnr, ssim, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (hash) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    rec.hash,
                    f.map(|f| f.width),
                    f.map(|f| f.height),
                    bytes,
                    f.map(|f| f.original_width),
                    f.map(|f| f.original_height),
                    f.map(|f| f.psnr),
                    f.map(|f| f.ssim),
                    rec.outcome.as_ref().err(),
                ])
            })
            .map_err(db_err)?;
        self.preview(&rec.hash)?
            .ok_or_else(|| db_err(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The stored preview record of a content hash, if one was made.
    pub fn preview(&self, hash: &str) -> Result<Option<PreviewRecord>, StoreError> {
        if !is_sha256_hex(hash) {
            return Ok(None);
        }
        self.conn
            .prepare_cached(
                "SELECT width, height, bytes, original_width, original_height, psnr, ssim, error
                 FROM previews WHERE hash = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![hash], |r| {
                    let error: Option<String> = r.get(7)?;
                    let outcome = match error {
                        Some(e) => Err(e),
                        None => Ok(PreviewFigures {
                            width: r.get(0)?,
                            height: r.get(1)?,
                            bytes: get_u64(r, 2)?,
                            original_width: r.get(3)?,
                            original_height: r.get(4)?,
                            psnr: r.get(5)?,
                            ssim: r.get(6)?,
                        }),
                    };
                    Ok(PreviewRecord {
                        hash: hash.to_owned(),
                        outcome,
                    })
                })
                .optional()
            })
            .map_err(|source| StoreError::Db {
                op: format!("looking up the preview of file {hash}"),
                source,
            })
    }
}

fn select_file(
    conn: &Connection,
    hash: &str,
    room: Option<&str>,
) -> rusqlite::Result<Option<FileRecord>> {
    conn.prepare_cached(
        "SELECT hash, size, mime, name, room, uploader, created_ms FROM files
         WHERE hash = ?1 AND (?2 IS NULL OR room = ?2)
         ORDER BY created_ms, room
         LIMIT 1",
    )?
    .query_row(params![hash, room], |r| {
        Ok(FileRecord {
            hash: r.get(0)?,
            size: get_u64(r, 1)?,
            mime: r.get(2)?,
            name: r.get(3)?,
            room: r.get(4)?,
            uploader: r.get(5)?,
            created: r.get(6)?,
        })
    })
    .optional()
}

/// Decodes a row selected with [`MESSAGE_COLUMNS`]. A row breaking the invariants (a file
/// message without metadata) is reported as a conversion error, never panicked on.
fn message_row(r: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let kind: MessageKind = r.get(6)?;
    let file = match kind {
        MessageKind::File => Some(FileRef {
            name: r.get(8)?,
            size: get_u64(r, 9)?,
            mime: r.get(10)?,
            url: r.get(11)?,
        }),
        MessageKind::Text | MessageKind::System => None,
    };
    let to: Option<String> = r.get(5)?;
    Ok(StoredMessage {
        id: r.get(0)?,
        room: r.get(1)?,
        from: r.get(2)?,
        name: r.get(3)?,
        ts: r.get(4)?,
        private: to.is_some(),
        to,
        kind,
        text: r.get(7)?,
        file,
        client_id: r.get(12)?,
    })
}

fn get_u64(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "confab-chat-test-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn db(&self) -> PathBuf {
            self.0.join("data").join("confab.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn msg(room: &str, from: &str, to: Option<&str>, text: &str) -> NewMessage {
        NewMessage {
            room: room.to_owned(),
            from: from.to_owned(),
            name: from.to_uppercase(),
            ts: 1_700_000_000_000,
            to: to.map(str::to_owned),
            text: text.to_owned(),
            kind: Kind::Text,
            client_id: None,
            sender_key: from.to_owned(),
            recipient_key: to.map(str::to_owned),
        }
    }

    fn texts(v: &[StoredMessage]) -> Vec<&str> {
        v.iter().map(|m| m.text.as_str()).collect()
    }

    fn ids(v: &[StoredMessage]) -> Vec<i64> {
        v.iter().map(|m| m.id).collect()
    }

    fn hash(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn store_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<ChatStore>();
    }

    #[test]
    fn migrates_from_empty_and_reopen_is_idempotent() {
        let mem = ChatStore::open_in_memory().unwrap();
        assert_eq!(mem.schema_version().unwrap(), SCHEMA_VERSION);
        const { assert!(SCHEMA_VERSION >= 1) };

        let dir = TempDir::new();
        let path = dir.db(); // parent `data/` does not exist yet: open creates it
        {
            let mut s = ChatStore::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            s.insert(msg("r", "a", None, "kept")).unwrap();
            // Running the migrations again on a current database does nothing.
            s.migrate().unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        }
        for _ in 0..2 {
            let s = ChatStore::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            assert_eq!(texts(&s.history("r", None, None, 10).unwrap()), ["kept"]);
        }
    }

    #[test]
    fn pragmas_are_wal_and_full() {
        let dir = TempDir::new();
        let s = ChatStore::open(dir.db()).unwrap();
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = TempDir::new();
        let path = dir.db();
        drop(ChatStore::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        match ChatStore::open(&path) {
            Err(StoreError::TooNew {
                found, supported, ..
            }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a database from the future"),
        }
    }

    #[test]
    fn open_reports_a_path_that_is_not_a_database_dir() {
        let dir = TempDir::new();
        let file = dir.0.join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        // The parent "directory" is a file: creating it fails with a clear error, no panic.
        let err = ChatStore::open(file.join("confab.db"))
            .err()
            .expect("error");
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
        // A file that is not SQLite.
        let junk = dir.0.join("junk.db");
        std::fs::write(&junk, vec![0xAB; 4096]).unwrap();
        assert!(ChatStore::open(&junk).is_err());
    }

    #[test]
    fn history_is_oldest_first_and_ids_increase() {
        let mut s = ChatStore::open_in_memory().unwrap();
        let mut prev = 0;
        for t in ["one", "two", "three"] {
            let (m, ins) = s.insert(msg("r", "a", None, t)).unwrap();
            assert_eq!(ins, Inserted::New);
            assert!(m.id > prev);
            prev = m.id;
        }
        s.insert(msg("other", "a", None, "elsewhere")).unwrap();
        let h = s.history("r", Some("a"), None, DEFAULT_LIMIT).unwrap();
        assert_eq!(texts(&h), ["one", "two", "three"]);
        assert!(h.windows(2).all(|w| w[0].id < w[1].id));
        assert!(s.history("nowhere", None, None, 10).unwrap().is_empty());
    }

    #[test]
    fn paging_with_before_and_limit() {
        let mut s = ChatStore::open_in_memory().unwrap();
        let mut all = Vec::new();
        for i in 0..700 {
            let (m, _) = s.insert(msg("r", "a", None, &format!("m{i}"))).unwrap();
            all.push(m.id);
        }
        let id = |i: usize| all[i];
        // (before, limit, expected index range into `all`)
        let cases: &[(Option<i64>, usize, std::ops::Range<usize>)] = &[
            (None, DEFAULT_LIMIT, 600..700),
            (Some(id(600)), 100, 500..600),
            (Some(id(50)), 100, 0..50),
            (Some(id(0)), 100, 0..0),
            (Some(0), 100, 0..0),
            (Some(i64::MIN), 100, 0..0),
            (None, 0, 700..700),
            (None, 1, 699..700),
            (None, MAX_LIMIT, 200..700),
            (None, MAX_LIMIT + 1, 200..700),
            (None, usize::MAX, 200..700),
            (Some(id(300)), usize::MAX, 0..300),
            (Some(i64::MAX), 3, 697..700),
        ];
        for (before, limit, want) in cases {
            let got = s.history("r", None, *before, *limit).unwrap();
            assert_eq!(ids(&got), all[want.clone()].to_vec(), "{before:?} {limit}");
        }
        // Walking back page by page visits every message exactly once, oldest first.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = s.history("r", Some("a"), before, 150).unwrap();
            let Some(first) = page.first() else { break };
            before = Some(first.id);
            seen.splice(0..0, ids(&page));
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn private_messages_are_seen_only_by_sender_and_recipient() {
        let mut s = ChatStore::open_in_memory().unwrap();
        s.insert(msg("r", "alice", None, "hello all")).unwrap();
        let (p, _) = s
            .insert(msg("r", "alice", Some("bob"), "psst bob"))
            .unwrap();
        assert!(p.private);
        assert_eq!(p.to.as_deref(), Some("bob"));
        s.insert(msg("r", "bob", Some("alice"), "psst alice"))
            .unwrap();
        s.insert(msg("r", "carol", Some("dave"), "c to d")).unwrap();
        s.insert(msg("r", "bob", None, "bye all")).unwrap();
        // The same pair in another room does not leak here.
        s.insert(msg("r2", "alice", Some("carol"), "other room"))
            .unwrap();

        let cases: &[(Option<&str>, &[&str])] = &[
            (
                Some("alice"),
                &["hello all", "psst bob", "psst alice", "bye all"],
            ),
            (
                Some("bob"),
                &["hello all", "psst bob", "psst alice", "bye all"],
            ),
            (Some("carol"), &["hello all", "c to d", "bye all"]),
            (Some("dave"), &["hello all", "c to d", "bye all"]),
            (Some("eve"), &["hello all", "bye all"]),
            (None, &["hello all", "bye all"]),
            // An empty or SQL-ish viewer id is just another stranger.
            (Some(""), &["hello all", "bye all"]),
            (Some("' OR 1=1 --"), &["hello all", "bye all"]),
        ];
        for (viewer, want) in cases {
            let h = s.history("r", *viewer, None, DEFAULT_LIMIT).unwrap();
            assert_eq!(texts(&h), *want, "viewer {viewer:?}");
        }
        // Private messages do not count against a stranger's page either.
        let h = s.history("r", Some("eve"), None, 1).unwrap();
        assert_eq!(texts(&h), ["bye all"]);
        let h = s.history("r", None, Some(h[0].id), 1).unwrap();
        assert_eq!(texts(&h), ["hello all"]);
    }

    #[test]
    fn a_reused_participant_id_does_not_inherit_private_messages() {
        let mut s = ChatStore::open_in_memory().unwrap();
        let m = NewMessage {
            sender_key: "key-bob".into(),
            recipient_key: Some("key-alice-1".into()),
            ..msg("r", "bob", Some("alice"), "psst")
        };
        s.insert(m).unwrap();
        let seen = |key: &str| texts(&s.history("r", Some(key), None, 10).unwrap()).len();
        assert_eq!(seen("key-alice-1"), 1);
        assert_eq!(seen("key-bob"), 1);
        assert_eq!(
            seen("key-alice-2"),
            0,
            "a later alice with another identity"
        );
        assert_eq!(seen("alice"), 0, "the id alone is not an identity");
    }

    #[test]
    fn dedup_by_sender_room_and_client_id() {
        let mut s = ChatStore::open_in_memory().unwrap();
        let with = |room: &str, from: &str, cid: Option<&str>, text: &str| NewMessage {
            client_id: cid.map(str::to_owned),
            ..msg(room, from, None, text)
        };
        let (first, ins) = s.insert(with("r", "a", Some("c1"), "first")).unwrap();
        assert_eq!(ins, Inserted::New);
        assert_eq!(first.client_id.as_deref(), Some("c1"));

        // (message, expected outcome, expected text of the returned message)
        let cases = [
            (
                with("r", "a", Some("c1"), "first"),
                Inserted::Duplicate,
                "first",
            ),
            (
                with("r", "a", Some("c1"), "changed"),
                Inserted::Duplicate,
                "first",
            ),
            (
                with("r", "b", Some("c1"), "other sender"),
                Inserted::New,
                "other sender",
            ),
            (
                with("r2", "a", Some("c1"), "other room"),
                Inserted::New,
                "other room",
            ),
            (
                with("r", "a", Some("c2"), "other id"),
                Inserted::New,
                "other id",
            ),
            (with("r", "a", None, "no id"), Inserted::New, "no id"),
            (with("r", "a", None, "no id"), Inserted::New, "no id"),
        ];
        for (m, want, text) in cases {
            let label = format!("{m:?}");
            let (got, ins) = s.insert(m).unwrap();
            assert_eq!((ins, got.text.as_str()), (want, text), "{label}");
            if ins == Inserted::Duplicate {
                assert_eq!(got, first);
            }
        }
        let h = s.history("r", None, None, DEFAULT_LIMIT).unwrap();
        assert_eq!(
            texts(&h),
            ["first", "other sender", "other id", "no id", "no id"]
        );
    }

    #[test]
    fn persists_across_reopen() {
        let dir = TempDir::new();
        let path = dir.db();
        let mut written = Vec::new();
        {
            let mut s = ChatStore::open(&path).unwrap();
            for (i, to) in [None, Some("b"), None].into_iter().enumerate() {
                written.push(s.insert(msg("r", "a", to, &format!("m{i}"))).unwrap().0);
            }
        }
        let mut s = ChatStore::open(&path).unwrap();
        assert_eq!(s.history("r", Some("a"), None, 10).unwrap(), written);
        // Ids keep increasing after a restart.
        let (m, _) = s.insert(msg("r", "a", None, "after")).unwrap();
        assert!(m.id > written[2].id);
    }

    /// Child half of `survives_kill_9`: commits messages, reports, then waits to be killed.
    /// A no-op unless started by that test.
    #[test]
    fn crash_child() {
        let Ok(path) = std::env::var("CONFAB_CHAT_CRASH_DB") else {
            return;
        };
        let mut s = ChatStore::open(&path).unwrap();
        for i in 0..20 {
            s.insert(msg("r", "a", None, &format!("m{i}"))).unwrap();
        }
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "COMMITTED").unwrap();
        out.flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn survives_kill_9() {
        let dir = TempDir::new();
        let path = dir.db();
        // This test's name as libtest knows it, whatever crate the module is compiled into.
        let module = module_path!();
        let name = module
            .split_once("::")
            .map_or(module, |(_crate, rest)| rest);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([&format!("{name}::crash_child"), "--exact", "--nocapture"])
            .env("CONFAB_CHAT_CRASH_DB", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let committed = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("COMMITTED"));
        child.kill().unwrap(); // SIGKILL on Unix: no destructors, no checkpoint
        child.wait().unwrap();
        assert!(committed, "child never reported its commits");

        let s = ChatStore::open(&path).unwrap();
        let h = s.history("r", None, None, DEFAULT_LIMIT).unwrap();
        let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(texts(&h), want);
    }

    #[test]
    fn text_round_trips_byte_exact() {
        let dir = TempDir::new();
        let big: String = "abcdefghij€😀".repeat(100_000); // ~1.6 MB
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("big", big),
            (
                "unicode",
                "héllo wörld 日本語 🎉 \u{1F469}\u{200D}\u{1F4BB} ﷽".to_owned(),
            ),
            (
                "controls",
                "\0nul\x01\x07\x08\x1b[31mred\x7f\r\n\t\u{202e}rtl\u{feff}".to_owned(),
            ),
            ("trailing nul", "end\0".to_owned()),
            ("sql", "'); DROP TABLE messages; --".to_owned()),
            ("whitespace", "  \n\n  ".to_owned()),
        ];
        let mut s = ChatStore::open(dir.db()).unwrap();
        for (label, text) in &cases {
            let m = NewMessage {
                name: format!("näme\0{label}"),
                client_id: Some(format!("cid-{label}\u{1F600}")),
                ..msg("r", "a", Some("b"), text)
            };
            let (stored, _) = s.insert(m.clone()).unwrap();
            assert_eq!(stored.text.as_bytes(), text.as_bytes(), "{label}");
            let back = s.history("r", Some("b"), None, 1).unwrap();
            assert_eq!(back.len(), 1, "{label}");
            assert_eq!(back[0], stored, "{label}");
            assert_eq!(back[0].text.as_bytes(), text.as_bytes(), "{label}");
            assert_eq!(back[0].name, m.name, "{label}");
        }
    }

    #[test]
    fn kinds_round_trip_and_serialize() {
        let mut s = ChatStore::open_in_memory().unwrap();
        let file = FileRef {
            name: "report.pdf".to_owned(),
            size: 123_456,
            mime: "application/pdf".to_owned(),
            url: format!("/files/{}", hash('a')),
        };
        let cases = [
            (Kind::Text, MessageKind::Text, "text"),
            (Kind::File(file.clone()), MessageKind::File, "file"),
            (Kind::System, MessageKind::System, "system"),
        ];
        for (kind, tag, json_tag) in cases {
            let m = NewMessage {
                kind: kind.clone(),
                ..msg("r", "a", None, "t")
            };
            let (stored, _) = s.insert(m).unwrap();
            let back = s.history("r", None, None, 1).unwrap().remove(0);
            assert_eq!(back, stored);
            assert_eq!(back.kind, tag);
            assert_eq!(
                back.file.as_ref(),
                matches!(kind, Kind::File(_)).then_some(&file)
            );
            let v = serde_json::to_value(&back).unwrap();
            assert_eq!(v["kind"], json_tag);
            let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "client_id",
                    "file",
                    "from",
                    "id",
                    "kind",
                    "name",
                    "private",
                    "room",
                    "text",
                    "to",
                    "ts"
                ]
            );
        }
        let v = serde_json::to_value(s.history("r", None, None, 3).unwrap()).unwrap();
        assert_eq!(v[1]["file"]["size"], 123_456);
        assert_eq!(v[1]["file"]["mime"], "application/pdf");
        assert_eq!(v[0]["file"], serde_json::Value::Null);
        assert_eq!(v[0]["private"], false);

        // A size SQLite cannot hold is an error, not a panic or a wrapped negative number.
        let huge = NewMessage {
            kind: Kind::File(FileRef {
                size: u64::MAX,
                ..file
            }),
            ..msg("r", "a", None, "t")
        };
        assert!(matches!(
            s.insert(huge),
            Err(StoreError::SizeTooLarge { .. })
        ));
    }

    #[test]
    fn previews_are_stored_once() {
        let dir = TempDir::new();
        let ok = PreviewRecord {
            hash: hash('a'),
            outcome: Ok(PreviewFigures {
                width: 1280,
                height: 960,
                bytes: 123_456,
                original_width: 4000,
                original_height: 3000,
                psnr: 41.25,
                ssim: 0.985,
            }),
        };
        let bad = PreviewRecord {
            hash: hash('b'),
            outcome: Err("not an image".into()),
        };
        {
            let mut s = ChatStore::open(dir.db()).unwrap();
            assert_eq!(s.preview(&hash('a')).unwrap(), None);
            assert_eq!(s.insert_preview(&ok).unwrap(), ok);
            assert_eq!(s.insert_preview(&bad).unwrap(), bad);
            // A second record for the same content changes nothing.
            let again = PreviewRecord {
                outcome: Err("other".into()),
                ..ok.clone()
            };
            assert_eq!(s.insert_preview(&again).unwrap(), ok);
            assert!(matches!(
                s.insert_preview(&PreviewRecord {
                    hash: "../x".into(),
                    ..ok.clone()
                }),
                Err(StoreError::InvalidHash(_))
            ));
            assert_eq!(s.preview("../x").unwrap(), None);
        }
        let s = ChatStore::open(dir.db()).unwrap();
        assert_eq!(s.preview(&hash('a')).unwrap(), Some(ok));
        assert_eq!(s.preview(&hash('b')).unwrap(), Some(bad));
    }

    #[test]
    fn file_metadata_round_trip() {
        let mut s = ChatStore::open_in_memory().unwrap();
        let rec = |h: &str, room: &str, who: &str, name: &str, created: i64| FileRecord {
            hash: h.to_owned(),
            size: 5_000_000_000, // above 4 GiB: no 32-bit truncation
            mime: "image/png".to_owned(),
            name: name.to_owned(),
            room: room.to_owned(),
            uploader: who.to_owned(),
            created,
        };
        let h = hash('f');
        let first = rec(&h, "r", "alice", "cat.png", 10);
        assert_eq!(
            s.insert_file(first.clone()).unwrap(),
            (first.clone(), Inserted::New)
        );
        assert_eq!(s.file_by_hash(&h, Some("r")).unwrap(), Some(first.clone()));
        assert_eq!(s.file_by_hash(&h, None).unwrap(), Some(first.clone()));

        // Same content, same room: the first record stands.
        let again = rec(&h, "r", "bob", "other-name.png", 20);
        assert_eq!(
            s.insert_file(again).unwrap(),
            (first.clone(), Inserted::Duplicate)
        );
        // Same content, another room: its own record; the earliest is the room-less answer.
        let elsewhere = rec(&h, "r2", "bob", "dog.png", 30);
        assert_eq!(s.insert_file(elsewhere.clone()).unwrap().1, Inserted::New);
        assert_eq!(s.file_by_hash(&h, Some("r2")).unwrap(), Some(elsewhere));
        assert_eq!(s.file_by_hash(&h, None).unwrap(), Some(first));

        // Lookups that find nothing.
        let cases = [
            (hash('0'), None),
            (h.clone(), Some("r3")),
            (h.to_uppercase(), None),
            ("../../etc/passwd".to_owned(), None),
            (String::new(), None),
            (format!("{h}0"), None),
        ];
        for (q, room) in cases {
            assert_eq!(s.file_by_hash(&q, room).unwrap(), None, "{q:?} {room:?}");
        }

        // Inserts that are refused.
        for bad in [
            hash('g'),
            h.to_uppercase(),
            "abc".to_owned(),
            format!("{h} "),
        ] {
            assert!(
                matches!(
                    s.insert_file(rec(&bad, "r", "a", "x", 1)),
                    Err(StoreError::InvalidHash(_))
                ),
                "{bad:?}"
            );
        }
        let too_big = FileRecord {
            size: u64::MAX,
            ..rec(&hash('1'), "r", "a", "x", 1)
        };
        assert!(matches!(
            s.insert_file(too_big),
            Err(StoreError::SizeTooLarge { .. })
        ));
    }
}
