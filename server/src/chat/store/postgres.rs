//! The PostgreSQL backend: `--database postgres://…`, one database every node of a cluster
//! shares.
//!
//! Driver: `tokio-postgres` with a `deadpool-postgres` pool rather than `sqlx`. The store's
//! SQL is a handful of fixed statements, so sqlx's compile-time checking would need a live
//! database (or checked-in query metadata) in every build for little gain, and its SQLite
//! driver would duplicate the rusqlite backend we keep. tokio-postgres is the async driver sqlx
//! and most Rust PostgreSQL tools grew from, is well kept (rust-postgres), and *pipelines*: a
//! batch's statements go out before the answers come back, so a group commit costs one round
//! trip plus the commit, not one per message. deadpool only hands connections out and caches
//! prepared statements per connection.
//!
//! Writes ([`Postgres::commit`]): BEGIN; `pg_advisory_xact_lock(WRITE_LOCK)`; the batch's
//! statements, pipelined; COMMIT. The lock makes writers on different nodes take turns from
//! drawing ids to commit, so ids become visible in increasing order (the store's invariant),
//! as with SQLite's single writer; a node holds it for one batch at a time. Durability:
//! `synchronous_commit = on` is set for every connection (a server or role default of `off`
//! would acknowledge commits the server could still lose), so COMMIT returns once the WAL is
//! flushed.
//!
//! Migrations: `confab_schema` holds the version; each step runs in one transaction with its
//! bump, under `pg_advisory_xact_lock(MIGRATE_LOCK)` so that nodes starting together migrate
//! once. [`MIGRATIONS`] makes the same tables as `sqlite::MIGRATIONS` (PostgreSQL's types:
//! `BIGINT` identities, whose sequences never hand out a value twice).
//!
//! TLS to the database is not supported yet: a URL asking for it (`sslmode=require`) is
//! refused at start with what to do; keep the database on a trusted network or tunnel it.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::Poll;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::{
    check_size, FileRecord, FileRef, Inserted, MessageKind, NewMessage, PreviewFigures,
    PreviewRecord, StoreError, StoredMessage, Write, Written, SCHEMA_VERSION,
};

/// How long connecting (TCP, TLS refusal, authentication) may take before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a query waits for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connections per node: one for the writer, the rest for history and file lookups.
const POOL_SIZE: usize = 8;
/// Advisory lock keys (`pg_advisory_xact_lock`), "confab" plus a number.
const WRITE_LOCK: i64 = 0x636f_6e66_6162_0001;
const MIGRATE_LOCK: i64 = 0x636f_6e66_6162_0002;

/// Schema migrations; entry i upgrades version i to i + 1. Append only, and keep in step with
/// `sqlite::MIGRATIONS` (same tables, same checks).
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: messages and files.
    "
    CREATE TABLE messages (
        -- An identity's sequence never hands out a value twice, even for rolled-back inserts
        -- or deleted rows, so an id a client holds never comes to mean another message.
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        room          TEXT   NOT NULL,
        sender        TEXT   NOT NULL,
        sender_name   TEXT   NOT NULL,
        ts_ms         BIGINT NOT NULL,
        recipient     TEXT,
        sender_key    TEXT   NOT NULL,
        recipient_key TEXT,
        kind          TEXT   NOT NULL CHECK (kind IN ('text', 'file', 'system')),
        text          TEXT   NOT NULL,
        file_name     TEXT,
        file_size     BIGINT CHECK (file_size >= 0),
        file_mime     TEXT,
        file_url      TEXT,
        client_id     TEXT,
        CHECK ((kind = 'file') = (file_name IS NOT NULL AND file_size IS NOT NULL
                                  AND file_mime IS NOT NULL AND file_url IS NOT NULL)),
        CHECK (kind = 'file' OR (file_name IS NULL AND file_size IS NULL
                                 AND file_mime IS NULL AND file_url IS NULL)),
        CHECK ((recipient IS NULL) = (recipient_key IS NULL))
    );
    CREATE INDEX messages_by_room ON messages (room, id);
    CREATE UNIQUE INDEX messages_dedup ON messages (room, sender_key, client_id)
        WHERE client_id IS NOT NULL;

    CREATE TABLE files (
        hash       TEXT   NOT NULL CHECK (length(hash) = 64),
        room       TEXT   NOT NULL,
        size       BIGINT NOT NULL CHECK (size >= 0),
        mime       TEXT   NOT NULL,
        name       TEXT   NOT NULL,
        uploader   TEXT   NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (hash, room)
    );
    ",
    // 2: image previews, once per content (chat/preview.rs): the figures, or why there is none.
    "
    CREATE TABLE previews (
        hash            TEXT   PRIMARY KEY CHECK (length(hash) = 64),
        width           BIGINT CHECK (width > 0),
        height          BIGINT CHECK (height > 0),
        bytes           BIGINT CHECK (bytes > 0),
        original_width  BIGINT CHECK (original_width > 0),
        original_height BIGINT CHECK (original_height > 0),
        psnr            DOUBLE PRECISION,
        ssim            DOUBLE PRECISION,
        error           TEXT,
        CHECK ((error IS NULL) = (width IS NOT NULL AND height IS NOT NULL AND bytes IS NOT NULL
                                  AND original_width IS NOT NULL AND original_height IS NOT NULL
                                  AND psnr IS NOT NULL AND ssim IS NOT NULL))
    );
    ",
    // 3: the index of recordings (see sqlite::MIGRATIONS).
    "
    CREATE TABLE recordings (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        room       TEXT   NOT NULL,
        started_ms BIGINT NOT NULL,
        ended_ms   BIGINT CHECK (ended_ms IS NULL OR ended_ms >= started_ms),
        path       TEXT   NOT NULL,
        bytes      BIGINT CHECK (bytes >= 0),
        mime       TEXT   NOT NULL,
        started_by TEXT   NOT NULL
    );
    CREATE INDEX recordings_by_room ON recordings (room, id);
    ",
];

const MESSAGE_COLUMNS: &str = "id, room, sender, sender_name, ts_ms, recipient, kind, text, \
                               file_name, file_size, file_mime, file_url, client_id";

const INSERT_MESSAGE: &str = "
    INSERT INTO messages (room, sender, sender_name, ts_ms, recipient, kind, text, file_name,
                          file_size, file_mime, file_url, client_id, sender_key, recipient_key)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
    ON CONFLICT (room, sender_key, client_id) WHERE client_id IS NOT NULL DO NOTHING
    RETURNING id";

const INSERT_FILE: &str = "
    INSERT INTO files (hash, room, size, mime, name, uploader, created_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (hash, room) DO NOTHING";

const INSERT_PREVIEW: &str = "
    INSERT INTO previews (hash, width, height, bytes, original_width, original_height, psnr,
                          ssim, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (hash) DO NOTHING";

const SELECT_PREVIEW: &str = "
    SELECT width, height, bytes, original_width, original_height, psnr, ssim, error
    FROM previews WHERE hash = $1";

// `COLLATE "C"`: ties broken by bytes, as SQLite does, whatever the database's locale.
const SELECT_FILE: &str = "
    SELECT hash, size, mime, name, room, uploader, created_ms FROM files
    WHERE hash = $1 AND ($2::text IS NULL OR room = $2)
    ORDER BY created_ms, room COLLATE \"C\"
    LIMIT 1";

/// The PostgreSQL store: a pool of connections to one database.
pub struct Postgres {
    pool: Pool,
    /// `postgres://user@host:port/db`, for logs and errors (no password).
    target: String,
}

/// Parses a `--database` URL (or key=value string) without connecting.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::DatabaseUrl {
        url: redact(url),
        reason: e.to_string(),
    })?;
    if config.get_ssl_mode() == SslMode::Require {
        return Err(StoreError::DatabaseUrl {
            url: redact(url),
            reason: "it asks for TLS (sslmode=require), which this confab does not speak to \
                     PostgreSQL yet; use sslmode=disable or prefer on a trusted network, or \
                     reach the database through a tunnel (WireGuard, stunnel, SSH)"
                .into(),
        });
    }
    if config.get_hosts().is_empty() {
        return Err(StoreError::DatabaseUrl {
            url: redact(url),
            reason: "it names no host".into(),
        });
    }
    Ok(config)
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let mut query = u.query_pairs().into_owned().collect::<Vec<_>>();
            let mut hid = false;
            for (k, v) in &mut query {
                if k == "password" {
                    *v = "***".into();
                    hid = true;
                }
            }
            if hid {
                u.query_pairs_mut().clear().extend_pairs(query);
            }
            u.to_string()
        }
        // Not a URL: show only what cannot be a secret.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "(not a URL)".into(),
        },
    }
}

/// A PostgreSQL error as one line: the server's message, detail and hint, or the client
/// side's chain of causes (tokio-postgres alone says little more than "db error"), plus what to
/// do for the errors people meet when setting up.
pub fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    let mut out = match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    };
    let advice = match e.code() {
        Some(&SqlState::INVALID_CATALOG_NAME) => {
            Some("create the database first, e.g. `createdb -O USER DBNAME`")
        }
        Some(&SqlState::INVALID_PASSWORD)
        | Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) => {
            Some("check the user and password in --database, and pg_hba.conf on the server")
        }
        Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Some("the user needs to own the database (or be granted CREATE on its schema)")
        }
        _ => None,
    };
    if let Some(a) = advice {
        out.push_str(&format!("; {a}"));
    }
    out
}

/// `postgres://user@host:port/db` of a parsed config (no password).
fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(user)");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

impl Postgres {
    /// Connects, migrates, and keeps a pool. A server that cannot be reached or refuses is an
    /// error within [`CONNECT_TIMEOUT`], saying what to check.
    pub async fn open(url: &str) -> Result<Postgres, StoreError> {
        let mut config = parse_url(url)?;
        let target = target(&config);
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("confab");
        }
        let options = format!(
            "{} -c synchronous_commit=on",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());

        // The first connection is made here rather than by the pool, so that its error reaches
        // the operator as PostgreSQL said it.
        let connecting = config.connect(NoTls);
        let (mut client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| StoreError::ConnectTimeout {
                target: target.clone(),
                secs: CONNECT_TIMEOUT.as_secs(),
            })?
            .map_err(|source| StoreError::Connect {
                target: target.clone(),
                source,
            })?;
        let driver = tokio::spawn(connection);
        let migrated = migrate(&mut client, &target, MIGRATIONS).await;
        drop(client);
        let _ = driver.await;
        migrated?;

        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool {
                db: target.clone(),
                op: "starting the connection pool".into(),
                reason: e.to_string(),
            })?;
        Ok(Postgres { pool, target })
    }

    pub fn describe(&self) -> String {
        self.target.clone()
    }

    fn pg_err(&self, op: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        let (db, op) = (self.target.clone(), op.into());
        move |source| StoreError::Pg { db, op, source }
    }

    async fn client(&self, op: &str) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(source) => StoreError::Pg {
                db: self.target.clone(),
                op: format!("connecting for {op}"),
                source,
            },
            other => StoreError::Pool {
                db: self.target.clone(),
                op: op.to_owned(),
                reason: other.to_string(),
            },
        })
    }

    pub async fn commit(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        for w in writes {
            w.check()?;
        }
        let op = format!("committing {} writes", writes.len());
        let mut client = self.client(&op).await?;
        let tx = client.transaction().await.map_err(self.pg_err(&op))?;
        let stmts = Statements {
            lock: tx
                .prepare_cached("SELECT pg_advisory_xact_lock($1)")
                .await
                .map_err(self.pg_err(&op))?,
            insert_message: tx
                .prepare_cached(INSERT_MESSAGE)
                .await
                .map_err(self.pg_err(&op))?,
            duplicate: tx
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE room = $1 AND sender_key = $2 AND client_id = $3"
                ))
                .await
                .map_err(self.pg_err(&op))?,
            insert_file: tx
                .prepare_cached(INSERT_FILE)
                .await
                .map_err(self.pg_err(&op))?,
            select_file: tx
                .prepare_cached(SELECT_FILE)
                .await
                .map_err(self.pg_err(&op))?,
            insert_preview: tx
                .prepare_cached(INSERT_PREVIEW)
                .await
                .map_err(self.pg_err(&op))?,
            select_preview: tx
                .prepare_cached(SELECT_PREVIEW)
                .await
                .map_err(self.pg_err(&op))?,
        };
        // The lock first, then every write, all sent before any answer is awaited.
        let steps = std::iter::once(None).chain(writes.iter().map(Some));
        let results = pipelined(
            steps
                .map(|step| self.step(&tx, &stmts, step))
                .collect::<Vec<_>>(),
        )
        .await;
        let mut out = Vec::with_capacity(writes.len());
        for r in results {
            if let Some(w) = r? {
                out.push(w);
            }
        }
        tx.commit().await.map_err(self.pg_err(&op))?;
        Ok(out)
    }

    /// One step of a batch: the write lock (`None`) or a write.
    async fn step(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stmts: &Statements,
        write: Option<&Write>,
    ) -> Result<Option<Written>, StoreError> {
        match write {
            None => {
                tx.execute(&stmts.lock, &[&WRITE_LOCK])
                    .await
                    .map_err(self.pg_err("taking the write lock"))?;
                Ok(None)
            }
            Some(Write::Message(m)) => {
                let (stored, inserted) = self.insert_message(tx, stmts, m).await?;
                Ok(Some(Written::Message(stored, inserted)))
            }
            Some(Write::File(f)) => {
                let (rec, inserted) = self.insert_file(tx, stmts, f).await?;
                Ok(Some(Written::File(rec, inserted)))
            }
            Some(Write::Preview(p)) => {
                let (rec, inserted) = self.insert_preview(tx, stmts, p).await?;
                Ok(Some(Written::Preview(rec, inserted)))
            }
        }
    }

    async fn insert_preview(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stmts: &Statements,
        rec: &PreviewRecord,
    ) -> Result<(PreviewRecord, Inserted), StoreError> {
        let op = || format!("storing the preview of file {}", rec.hash);
        let f = rec.outcome.as_ref().ok();
        let bytes = f
            .map(|f| check_size(&format!("preview of {}", rec.hash), f.bytes))
            .transpose()?;
        let wide = |v: Option<u32>| v.map(i64::from);
        let changed = tx
            .execute(
                &stmts.insert_preview,
                &[
                    &rec.hash,
                    &wide(f.map(|f| f.width)),
                    &wide(f.map(|f| f.height)),
                    &bytes,
                    &wide(f.map(|f| f.original_width)),
                    &wide(f.map(|f| f.original_height)),
                    &f.map(|f| f.psnr),
                    &f.map(|f| f.ssim),
                    &rec.outcome.as_ref().err(),
                ],
            )
            .await
            .map_err(self.pg_err(op()))?;
        if changed == 1 {
            return Ok((rec.clone(), Inserted::New));
        }
        let row = tx
            .query_one(&stmts.select_preview, &[&rec.hash])
            .await
            .map_err(self.pg_err(op()))?;
        Ok((self.preview_row(&rec.hash, &row)?, Inserted::Duplicate))
    }

    async fn insert_message(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stmts: &Statements,
        m: &NewMessage,
    ) -> Result<(StoredMessage, Inserted), StoreError> {
        let op = || format!("storing a message in room {}", m.room);
        let file = m.kind.file();
        let file_size = file.map(|f| check_size(&f.name, f.size)).transpose()?;
        let row = tx
            .query_opt(
                &stmts.insert_message,
                &[
                    &m.room,
                    &m.from,
                    &m.name,
                    &m.ts,
                    &m.to,
                    &m.kind.tag().as_str(),
                    &m.text,
                    &file.map(|f| f.name.as_str()),
                    &file_size,
                    &file.map(|f| f.mime.as_str()),
                    &file.map(|f| f.url.as_str()),
                    &m.client_id,
                    &m.sender_key,
                    &m.recipient_key,
                ],
            )
            .await
            .map_err(self.pg_err(op()))?;
        if let Some(row) = row {
            let id: i64 = row.try_get(0).map_err(self.pg_err(op()))?;
            return Ok((m.stored(id), Inserted::New));
        }
        // Only the dedup index can make the insert do nothing, so the row exists (written
        // earlier in this batch, or committed before it: the write lock orders batches).
        let row = tx
            .query_one(&stmts.duplicate, &[&m.room, &m.sender_key, &m.client_id])
            .await
            .map_err(self.pg_err(op()))?;
        Ok((self.message_row(&row)?, Inserted::Duplicate))
    }

    async fn insert_file(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        stmts: &Statements,
        f: &FileRecord,
    ) -> Result<(FileRecord, Inserted), StoreError> {
        let op = || format!("storing metadata of file {} in room {}", f.hash, f.room);
        let size = check_size(&f.name, f.size)?;
        let changed = tx
            .execute(
                &stmts.insert_file,
                &[
                    &f.hash,
                    &f.room,
                    &size,
                    &f.mime,
                    &f.name,
                    &f.uploader,
                    &f.created,
                ],
            )
            .await
            .map_err(self.pg_err(op()))?;
        if changed == 1 {
            return Ok((f.clone(), Inserted::New));
        }
        let row = tx
            .query_one(&stmts.select_file, &[&f.hash, &Some(&f.room)])
            .await
            .map_err(self.pg_err(op()))?;
        Ok((self.file_row(&row)?, Inserted::Duplicate))
    }

    pub async fn history(
        &self,
        room: &str,
        viewer: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let op = format!("reading the history of room {room}");
        let client = self.client(&op).await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE room = $1 AND id < $2
                   AND (recipient IS NULL
                        OR ($3::text IS NOT NULL AND (sender_key = $3 OR recipient_key = $3)))
                 ORDER BY id DESC
                 LIMIT $4"
            ))
            .await
            .map_err(self.pg_err(&op))?;
        // At most MAX_LIMIT (500) by the caller, so the conversion cannot fail.
        let limit = i64::try_from(limit).unwrap_or(0);
        let rows = client
            .query(&stmt, &[&room, &before, &viewer, &limit])
            .await
            .map_err(self.pg_err(&op))?;
        // Newest first through the (room, id) index, then reversed: the last N, oldest first.
        rows.iter().rev().map(|r| self.message_row(r)).collect()
    }

    pub async fn file_by_hash(
        &self,
        hash: &str,
        room: Option<&str>,
    ) -> Result<Option<FileRecord>, StoreError> {
        let op = format!("looking up file {hash}");
        let client = self.client(&op).await?;
        let stmt = client
            .prepare_cached(SELECT_FILE)
            .await
            .map_err(self.pg_err(&op))?;
        let row = client
            .query_opt(&stmt, &[&hash, &room])
            .await
            .map_err(self.pg_err(&op))?;
        row.map(|r| self.file_row(&r)).transpose()
    }

    pub async fn preview(&self, hash: &str) -> Result<Option<PreviewRecord>, StoreError> {
        let op = format!("looking up the preview of file {hash}");
        let client = self.client(&op).await?;
        let stmt = client
            .prepare_cached(SELECT_PREVIEW)
            .await
            .map_err(self.pg_err(&op))?;
        let row = client
            .query_opt(&stmt, &[&hash])
            .await
            .map_err(self.pg_err(&op))?;
        row.map(|r| self.preview_row(hash, &r)).transpose()
    }

    /// Decodes a row selected by [`SELECT_PREVIEW`].
    fn preview_row(&self, hash: &str, r: &Row) -> Result<PreviewRecord, StoreError> {
        let err = self.pg_err("reading a preview record");
        let corrupt = |what: String| StoreError::Corrupt {
            db: self.target.clone(),
            what,
        };
        let error: Option<String> = r.try_get(7).map_err(err)?;
        let outcome = match error {
            Some(e) => Err(e),
            None => {
                let mut ints = [0i64; 5];
                for (i, v) in ints.iter_mut().enumerate() {
                    *v = r
                        .try_get(i)
                        .map_err(self.pg_err("reading a preview record"))?;
                }
                let side = |v: i64| {
                    u32::try_from(v).map_err(|_| corrupt(format!("preview side {v} of {hash}")))
                };
                let float = |i: usize| -> Result<f64, StoreError> {
                    r.try_get(i)
                        .map_err(self.pg_err("reading a preview record"))
                };
                Ok(PreviewFigures {
                    width: side(ints[0])?,
                    height: side(ints[1])?,
                    bytes: u64::try_from(ints[2])
                        .map_err(|_| corrupt(format!("preview size {} of {hash}", ints[2])))?,
                    original_width: side(ints[3])?,
                    original_height: side(ints[4])?,
                    psnr: float(5)?,
                    ssim: float(6)?,
                })
            }
        };
        Ok(PreviewRecord {
            hash: hash.to_owned(),
            outcome,
        })
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client("reading the schema version").await?;
        let row = client
            .query_one("SELECT version FROM confab_schema", &[])
            .await
            .map_err(self.pg_err("reading the schema version"))?;
        row.try_get(0)
            .map_err(self.pg_err("reading the schema version"))
    }

    pub async fn tables(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client("listing tables").await?;
        let rows = client
            .query(
                "SELECT tablename::text FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename <> 'confab_schema'
                 ORDER BY tablename COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(self.pg_err("listing tables"))?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(self.pg_err("listing tables")))
            .collect()
    }

    /// Decodes a row selected with [`MESSAGE_COLUMNS`]; a row breaking the invariants is an
    /// error, never a panic.
    fn message_row(&self, r: &Row) -> Result<StoredMessage, StoreError> {
        let err = self.pg_err("reading a message");
        let decode = || -> Result<Result<StoredMessage, String>, tokio_postgres::Error> {
            let kind: String = r.try_get(6)?;
            let Some(kind) = MessageKind::parse(&kind) else {
                return Ok(Err(format!("unknown message kind {kind:?}")));
            };
            let file = match kind {
                MessageKind::File => {
                    let size: i64 = r.try_get(9)?;
                    let Ok(size) = u64::try_from(size) else {
                        return Ok(Err(format!("negative file size {size}")));
                    };
                    Some(FileRef {
                        name: r.try_get(8)?,
                        size,
                        mime: r.try_get(10)?,
                        url: r.try_get(11)?,
                    })
                }
                MessageKind::Text | MessageKind::System => None,
            };
            let to: Option<String> = r.try_get(5)?;
            Ok(Ok(StoredMessage {
                id: r.try_get(0)?,
                room: r.try_get(1)?,
                from: r.try_get(2)?,
                name: r.try_get(3)?,
                ts: r.try_get(4)?,
                private: to.is_some(),
                to,
                kind,
                text: r.try_get(7)?,
                file,
                client_id: r.try_get(12)?,
            }))
        };
        decode().map_err(err)?.map_err(|what| StoreError::Corrupt {
            db: self.target.clone(),
            what,
        })
    }

    fn file_row(&self, r: &Row) -> Result<FileRecord, StoreError> {
        let err = self.pg_err("reading a file record");
        let size: i64 = r.try_get(1).map_err(self.pg_err("reading a file record"))?;
        let size = u64::try_from(size).map_err(|_| StoreError::Corrupt {
            db: self.target.clone(),
            what: format!("negative file size {size}"),
        })?;
        let decode = || -> Result<FileRecord, tokio_postgres::Error> {
            Ok(FileRecord {
                hash: r.try_get(0)?,
                size,
                mime: r.try_get(2)?,
                name: r.try_get(3)?,
                room: r.try_get(4)?,
                uploader: r.try_get(5)?,
                created: r.try_get(6)?,
            })
        };
        decode().map_err(err)
    }

    /// A connection straight from the pool, for tests of its settings.
    #[cfg(test)]
    pub(super) async fn raw(&self) -> deadpool_postgres::Object {
        self.client("a test").await.unwrap()
    }
}

/// The statements of a batch, prepared (once per connection) before it starts.
struct Statements {
    lock: tokio_postgres::Statement,
    insert_message: tokio_postgres::Statement,
    duplicate: tokio_postgres::Statement,
    insert_file: tokio_postgres::Statement,
    select_file: tokio_postgres::Statement,
    insert_preview: tokio_postgres::Statement,
    select_preview: tokio_postgres::Statement,
}

/// Runs `futures` to completion, polling the unfinished ones in order each time. tokio-postgres
/// sends a statement when its future is first polled, so this sends them in order and before
/// any answer is read: a pipeline, one round trip for the lot (`join_all` does not promise
/// its polling order).
async fn pipelined<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    // Every entry is Some once the loop above has finished.
    done.into_iter().flatten().collect()
}

/// Applies the pending `migrations`, each in its own transaction with its version bump, under
/// the migration lock.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    db: &str,
    migrations: &[&str],
) -> Result<(), StoreError> {
    loop {
        let mig_err = |version| {
            let db = db.to_owned();
            move |source| StoreError::PgMigrate {
                db,
                version,
                source,
            }
        };
        let tx = client
            .transaction()
            .await
            .map_err(mig_err(SCHEMA_VERSION))?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATE_LOCK});
             CREATE TABLE IF NOT EXISTS confab_schema (
                 single  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (single),
                 version BIGINT  NOT NULL
             );
             INSERT INTO confab_schema (version) VALUES (0) ON CONFLICT DO NOTHING;"
        ))
        .await
        .map_err(mig_err(SCHEMA_VERSION))?;
        let found: i64 = tx
            .query_one("SELECT version FROM confab_schema", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(mig_err(SCHEMA_VERSION))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                db: db.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(sql) = usize::try_from(found).ok().and_then(|i| migrations.get(i)) else {
            // Nothing to do; committing ends the transaction (and the lock) cleanly.
            tx.commit().await.map_err(mig_err(found))?;
            return Ok(());
        };
        let next = found + 1;
        tx.batch_execute(sql).await.map_err(mig_err(next))?;
        tx.execute("UPDATE confab_schema SET version = $1", &[&next])
            .await
            .map_err(mig_err(next))?;
        tx.commit().await.map_err(mig_err(next))?;
        tracing::info!(db, version = next, "chat database migrated");
    }
}

#[cfg(test)]
mod tests {
    //! What only PostgreSQL has: URLs, connecting, its settings and schema table. Everything
    //! the two backends share is tested in `store/tests.rs`.

    use super::*;
    use crate::chat::store::temp_postgres::TempPostgres;

    #[test]
    fn migrations_match_sqlite() {
        assert_eq!(MIGRATIONS.len(), super::super::sqlite::MIGRATIONS.len());
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let cases: &[(&str, bool)] = &[
            ("postgres://confab:secret@db.example:5432/confab", true),
            ("postgresql://confab@10.0.0.5/chat?sslmode=disable", true),
            ("postgres://u:secret@h/db?sslmode=require", false),
            ("postgres://u:secret@h:notaport/db", false),
        ];
        for (url, ok) in cases {
            let got = parse_url(url);
            assert_eq!(got.is_ok(), *ok, "{url}: {:?}", got.err());
            if let Err(e) = got {
                let text = e.to_string();
                assert!(!text.contains("secret"), "{text}");
                assert!(text.contains("--database"), "{text}");
            }
        }
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("postgres://u@h/db?password=secret&x=1"),
            "postgres://u@h/db?password=***&x=1"
        );
        assert_eq!(redact("postgres://u:sec ret@[/db"), "postgres://…");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://confab:secret@127.0.0.1:{port}/confab");
        let err = Postgres::open(&url).await.err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Connect { .. }), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("check that it is running"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_database_says_to_create_it() {
        let pg = TempPostgres::shared();
        let err = Postgres::open(&pg.url("no_such_db"))
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(text.contains("createdb"), "{text}");
    }

    #[tokio::test]
    async fn commits_are_synchronous() {
        let pg = TempPostgres::shared();
        let store = Postgres::open(&pg.fresh_database()).await.unwrap();
        let client = store.raw().await;
        let row = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "on");
    }

    #[tokio::test]
    async fn refuses_a_newer_schema_and_nodes_migrate_once() {
        let pg = TempPostgres::shared();
        let url = pg.fresh_database();
        // Nodes starting together: every one opens, one migrates.
        let opened = futures_util::future::join_all((0..4).map(|_| Postgres::open(&url))).await;
        for o in &opened {
            assert!(o.is_ok(), "{:?}", o.as_ref().err());
        }
        let store = opened.into_iter().next().unwrap().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        store
            .raw()
            .await
            .execute(
                "UPDATE confab_schema SET version = $1",
                &[&(SCHEMA_VERSION + 1)],
            )
            .await
            .unwrap();
        match Postgres::open(&url).await {
            Err(StoreError::TooNew {
                found, supported, ..
            }) => assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a database from the future"),
        }
    }
}
