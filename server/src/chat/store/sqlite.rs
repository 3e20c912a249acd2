//! The SQLite backend, the embedded default: `<data>/confab.db` through rusqlite.
//!
//! Connections: one writer, which applies [`Store::commit`](super::Store::commit)'s batches one
//! at a time on tokio's blocking pool, and a few readers beside it. WAL lets readers run while
//! the writer commits, so a history query never waits for an fsync, and the writer never waits
//! for a reader. Nothing but `commit` writes.
//!
//! The schema version is `PRAGMA user_version`. Durability: WAL journal with
//! `synchronous = FULL` (see [`Sqlite::open`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};

use super::{
    check_size, FileRecord, FileRef, Inserted, MessageKind, NewMessage, PreviewFigures,
    PreviewRecord, StoreError, StoredMessage, Write, Written, SCHEMA_VERSION,
};

/// How long a write waits for a lock held by another connection (an operator's `sqlite3`
/// shell, a backup) before failing, instead of failing at once with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle reader connections kept open; more are opened while more reads run at once.
const IDLE_READERS: usize = 4;

/// Schema migrations; entry i upgrades `user_version` i to i + 1. Append only: never edit an
/// entry that has shipped. `postgres::MIGRATIONS` makes the same tables.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 3: the index of recordings, for `POST /api/rooms/{room}/recording` (not written yet):
    // one row per recording, its file under the shared files directory.
    "
    CREATE TABLE recordings (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        room       TEXT    NOT NULL,
        started_ms INTEGER NOT NULL,
        ended_ms   INTEGER CHECK (ended_ms IS NULL OR ended_ms >= started_ms),
        path       TEXT    NOT NULL,
        bytes      INTEGER CHECK (bytes >= 0),
        mime       TEXT    NOT NULL,
        started_by TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX recordings_by_room ON recordings (room, id);
    ",
];

impl ToSql for MessageKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for MessageKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        MessageKind::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown message kind {s:?}").into()))
    }
}

/// The SQLite store. Cheap to share (`Sync`): the writer connection sits behind a mutex only
/// `commit` takes, readers in a small pool.
pub struct Sqlite {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

const MESSAGE_COLUMNS: &str = "id, room, sender, sender_name, ts_ms, recipient, kind, text, \
                               file_name, file_size, file_mime, file_url, client_id";

impl Sqlite {
    /// Opens (creating if needed, with its parent directory) the database at `path` and
    /// brings its schema up to [`SCHEMA_VERSION`].
    ///
    /// Journal: WAL, so readers never block the writer and a crash (kill -9, power loss)
    /// leaves committed transactions intact and the file consistent.
    ///
    /// `synchronous = FULL` rather than `NORMAL`: with WAL, `NORMAL` already survives the
    /// process being killed, but may lose the last commits on power loss or an OS crash, and
    /// those are messages other participants have already seen, since we broadcast right after
    /// commit. `FULL` costs one fsync per commit, and the writer commits every message queued
    /// meanwhile at once (`chat::writer`), so that buys "if you saw it, it is in the history"
    /// without a queue of fsyncs.
    pub async fn open(path: PathBuf) -> Result<Sqlite, StoreError> {
        blocking(move || Self::open_blocking(path)).await
    }

    /// [`Sqlite::open`] on the calling thread.
    pub fn open_blocking(path: PathBuf) -> Result<Sqlite, StoreError> {
        let mut conn = connect(&path)?;
        migrate(&mut conn, &path.display().to_string())?;
        Ok(Sqlite {
            path,
            writer: Arc::new(Mutex::new(conn)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }

    pub async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Written>, StoreError> {
        let writer = self.writer.clone();
        blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
            commit(&mut conn, &writes)
        })
        .await
    }

    pub async fn history(
        &self,
        room: &str,
        viewer: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let (room, viewer) = (room.to_owned(), viewer.map(str::to_owned));
        self.read(move |conn| history(conn, &room, viewer.as_deref(), before, limit))
            .await
    }

    pub async fn file_by_hash(
        &self,
        hash: &str,
        room: Option<&str>,
    ) -> Result<Option<FileRecord>, StoreError> {
        let (hash, room) = (hash.to_owned(), room.map(str::to_owned));
        self.read(move |conn| {
            select_file(conn, &hash, room.as_deref()).map_err(|source| StoreError::Db {
                op: format!("looking up file {hash}"),
                source,
            })
        })
        .await
    }

    pub async fn preview(&self, hash: &str) -> Result<Option<PreviewRecord>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            select_preview(conn, &hash).map_err(|source| StoreError::Db {
                op: format!("looking up the preview of file {hash}"),
                source,
            })
        })
        .await
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(schema_version).await
    }

    pub async fn tables(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let db_err = |source| StoreError::Db {
                op: "listing tables".into(),
                source,
            };
            let mut stmt = conn
                .prepare(
                    "SELECT name FROM sqlite_schema WHERE type = 'table'
                     AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .map_err(db_err)?;
            let names = stmt
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
                .map_err(db_err)?;
            Ok(names)
        })
        .await
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        blocking(move || {
            let idle = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match idle {
                Some(c) => c,
                None => connect_reader(&path)?,
            };
            let out = f(&conn);
            let mut idle = readers.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
    }

    /// The writer connection, for tests of its settings.
    #[cfg(test)]
    pub(super) fn with_writer<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.writer.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Runs blocking SQLite work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
}

/// Opens the database file for writing (creating it and its directory), in WAL mode with
/// `synchronous = FULL`.
fn connect(path: &Path) -> Result<Connection, StoreError> {
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
        // SQLite keeps the old journal where WAL is impossible (some network filesystems).
        // That is still crash-safe with synchronous = FULL, only slower (and readers then wait
        // for the writer), so go on rather than refuse to start.
        tracing::warn!(
            db = %path.display(),
            journal_mode = %mode,
            "chat database could not switch to WAL; put the data directory on a local \
             filesystem for better performance"
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    Ok(conn)
}

/// A connection that only reads (the file exists and is migrated by then).
fn connect_reader(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(open_err)?;
    Ok(conn)
}

/// Applies the pending migrations, each with its version bump in one transaction. The version
/// is read inside an IMMEDIATE (write-locked) transaction, so two processes opening the same
/// new file cannot both run migration 1.
pub(super) fn migrate(conn: &mut Connection, db: &str) -> Result<(), StoreError> {
    migrate_to(conn, db, MIGRATIONS)
}

/// [`migrate`] with the migrations given (tests build older databases with a prefix).
pub(super) fn migrate_to(
    conn: &mut Connection,
    db: &str,
    migrations: &[&str],
) -> Result<(), StoreError> {
    loop {
        let mig_err = |version| {
            let db = db.to_owned();
            move |source| StoreError::Migrate {
                db,
                version,
                source,
            }
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(mig_err(SCHEMA_VERSION))?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(mig_err(SCHEMA_VERSION))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                db: db.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // `found` is in 0..=SCHEMA_VERSION here, so the index is in range or the loop ends.
        let Some(sql) = usize::try_from(found).ok().and_then(|i| migrations.get(i)) else {
            return Ok(());
        };
        let next = found + 1;
        tx.execute_batch(sql).map_err(mig_err(next))?;
        tx.pragma_update(None, "user_version", next)
            .map_err(mig_err(next))?;
        tx.commit().map_err(mig_err(next))?;
    }
}

fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|source| StoreError::Db {
            op: "reading schema version".to_owned(),
            source,
        })
}

/// One batch in one IMMEDIATE transaction; nothing of it stays if any write fails.
fn commit(conn: &mut Connection, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| StoreError::Db {
            op: format!("starting a transaction for {} writes", writes.len()),
            source,
        })?;
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        w.check()?;
        out.push(match w {
            Write::Message(m) => {
                let (stored, inserted) = insert_message(&tx, m)?;
                Written::Message(stored, inserted)
            }
            Write::File(f) => {
                let (rec, inserted) = insert_file(&tx, f)?;
                Written::File(rec, inserted)
            }
            Write::Preview(p) => {
                let (rec, inserted) = insert_preview(&tx, p)?;
                Written::Preview(rec, inserted)
            }
        });
    }
    tx.commit().map_err(|source| StoreError::Db {
        op: format!("committing {} writes", writes.len()),
        source,
    })?;
    Ok(out)
}

/// Inserts a message, or finds the one already stored under the same
/// `(room, sender_key, client_id)` (whatever the new text says: the first one wins).
fn insert_message(
    tx: &Connection,
    msg: &NewMessage,
) -> Result<(StoredMessage, Inserted), StoreError> {
    let db_err = |source| StoreError::Db {
        op: format!("storing a message in room {}", msg.room),
        source,
    };
    let file = msg.kind.file();
    let file_size = file.map(|f| check_size(&f.name, f.size)).transpose()?;
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
    if let Some(id) = new_id {
        return Ok((msg.stored(id), Inserted::New));
    }
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
    Ok((existing, Inserted::Duplicate))
}

/// Records an uploaded file's metadata, or finds the record already stored for the same
/// content in the same room (the first upload's name and uploader win).
fn insert_file(tx: &Connection, file: &FileRecord) -> Result<(FileRecord, Inserted), StoreError> {
    let size = check_size(&file.name, file.size)?;
    let db_err = |source| StoreError::Db {
        op: format!(
            "storing metadata of file {} in room {}",
            file.hash, file.room
        ),
        source,
    };
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
    if changed == 1 {
        return Ok((file.clone(), Inserted::New));
    }
    // The conflict means the row is there; a vanished row is an internal fault, reported
    // rather than panicked on.
    let existing = select_file(tx, &file.hash, Some(&file.room))
        .map_err(db_err)?
        .ok_or_else(|| db_err(rusqlite::Error::QueryReturnedNoRows))?;
    Ok((existing, Inserted::Duplicate))
}

/// Records a preview's figures (or failure), or finds the record already stored for the hash.
fn insert_preview(
    tx: &Connection,
    rec: &PreviewRecord,
) -> Result<(PreviewRecord, Inserted), StoreError> {
    let db_err = |source| StoreError::Db {
        op: format!("storing the preview of file {}", rec.hash),
        source,
    };
    let f = rec.outcome.as_ref().ok();
    let bytes = f
        .map(|f| check_size(&format!("preview of {}", rec.hash), f.bytes))
        .transpose()?;
    let changed = tx
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
    if changed == 1 {
        return Ok((rec.clone(), Inserted::New));
    }
    let existing = select_preview(tx, &rec.hash)
        .map_err(db_err)?
        .ok_or_else(|| db_err(rusqlite::Error::QueryReturnedNoRows))?;
    Ok((existing, Inserted::Duplicate))
}

fn select_preview(conn: &Connection, hash: &str) -> rusqlite::Result<Option<PreviewRecord>> {
    conn.prepare_cached(
        "SELECT width, height, bytes, original_width, original_height, psnr, ssim, error
         FROM previews WHERE hash = ?1",
    )?
    .query_row(params![hash], |r| {
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
}

fn history(
    conn: &Connection,
    room: &str,
    viewer: Option<&str>,
    before: i64,
    limit: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let db_err = |source| StoreError::Db {
        op: format!("reading the history of room {room}"),
        source,
    };
    // At most MAX_LIMIT (500) by the caller, so the conversion cannot fail.
    let limit = i64::try_from(limit).unwrap_or(0);
    // Newest first through the (room, id) index, then reversed: the last N, oldest first.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE room = ?1 AND id < ?2
           AND (recipient IS NULL
                OR (?3 IS NOT NULL AND (sender_key = ?3 OR recipient_key = ?3)))
         ORDER BY id DESC
         LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let rows = stmt
        .query_map(params![room, before, viewer, limit], message_row)
        .map_err(db_err)?;
    let mut out = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
    out.reverse();
    Ok(out)
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

#[cfg(test)]
mod tests {
    //! What only SQLite has: its file, pragmas and `user_version`. Everything the two backends
    //! share is tested in `store/tests.rs`.

    use super::*;
    use crate::chat::store::tests::{msg, texts, TempDir};
    use crate::chat::store::Store;

    #[test]
    fn store_is_send_and_sync() {
        fn assert_both<T: Send + Sync>() {}
        assert_both::<Sqlite>();
        assert_both::<Store>();
    }

    #[tokio::test]
    async fn pragmas_are_wal_and_full() {
        let dir = TempDir::new();
        let s = Sqlite::open(dir.db()).await.unwrap();
        let (mode, sync): (String, i64) = s.with_writer(|c| {
            (
                c.pragma_query_value(None, "journal_mode", |r| r.get(0))
                    .unwrap(),
                c.pragma_query_value(None, "synchronous", |r| r.get(0))
                    .unwrap(),
            )
        });
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "FULL");
    }

    #[tokio::test]
    async fn migrating_again_does_nothing() {
        let dir = TempDir::new();
        let s = Sqlite::open(dir.db()).await.unwrap();
        s.with_writer(|c| {
            let mut c = Connection::open(c.path().unwrap()).unwrap();
            migrate(&mut c, "again").unwrap();
        });
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn upgrades_a_version_1_database_and_keeps_its_messages() {
        let dir = TempDir::new();
        let path = dir.db();
        {
            let mut conn = connect(&path).unwrap();
            migrate_to(&mut conn, "v1", &MIGRATIONS[..1]).unwrap();
            assert_eq!(schema_version(&conn).unwrap(), 1);
            commit(&mut conn, &[Write::Message(msg("r", "a", None, "from v1"))]).unwrap();
        }
        let s = Store::Sqlite(Sqlite::open(path).await.unwrap());
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        let h = s.history("r", None, None, 10).await.unwrap();
        assert_eq!(texts(&h), ["from v1"]);
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = TempDir::new();
        let path = dir.db();
        drop(Sqlite::open(path.clone()).await.unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        match Sqlite::open(path).await {
            Err(StoreError::TooNew {
                found, supported, ..
            }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a database from the future"),
        }
    }

    #[tokio::test]
    async fn open_reports_a_path_that_is_not_a_database_dir() {
        let dir = TempDir::new();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        // The parent "directory" is a file: creating it fails with a clear error, no panic.
        let err = Sqlite::open(file.join("confab.db")).await.err().unwrap();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
        // A file that is not SQLite.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0xAB; 4096]).unwrap();
        assert!(Sqlite::open(junk).await.is_err());
    }
}
