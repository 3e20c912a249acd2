//! The chat service the rest of the server uses: the store (SQLite or PostgreSQL), written only
//! through the group-commit [`Writer`] and read directly (reads never wait for a commit), and
//! uploaded files on disk in the files directory (`<data>/files/` or `--files`), named by their
//! SHA-256, with the previews of images under `<files>/previews/<hash>.jpg`.
//!
//! Its futures own what they need (`'static`), so a signaling session can keep them in a queue
//! and go on with signaling while the disk works.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::preview;
use super::store::{
    FileRecord, Inserted, Location, NewMessage, PreviewFigures, PreviewRecord, Store, StoreError,
    StoredMessage, Write, Written, DEFAULT_LIMIT, MAX_LIMIT,
};
use super::writer::Writer;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Shared by every write of a batch that failed as a whole.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("file storage under {path}: {source}")]
    Files {
        path: String,
        source: std::io::Error,
    },
    #[error("the chat store is not taking writes; the server is shutting down")]
    Gone,
    #[error("the chat store is behind with writing; resend in a moment")]
    Busy,
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> ChatError {
        ChatError::Store(Arc::new(e))
    }
}

pub struct Chat {
    store: Arc<Store>,
    writer: Writer,
    files: PathBuf,
}

/// An upload being received: written to a temporary file while it is hashed and counted.
pub struct Upload {
    file: tokio::fs::File,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

/// Why an upload did not complete.
#[derive(Debug)]
pub enum UploadError {
    TooLarge { limit: u64 },
    Io(std::io::Error),
}

impl Chat {
    /// Opens (creating and migrating) the store at `store` and the files directory `files`,
    /// and starts the writer on the current runtime.
    pub async fn open(
        store: &Location,
        files: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Chat, ChatError> {
        let store = Arc::new(Store::open(store).await?);
        let files = files.to_owned();
        let tmp = files.join("tmp");
        for dir in [&tmp, &files.join("previews")] {
            std::fs::create_dir_all(dir).map_err(|source| ChatError::Files {
                path: dir.display().to_string(),
                source,
            })?;
        }
        remove_stale_uploads(&tmp, std::time::SystemTime::now());
        let writer = Writer::start(store.clone(), metrics);
        Ok(Chat {
            store,
            writer,
            files,
        })
    }

    /// The store, for logs: its file or URL (no password).
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Queues a message for the next commit; the future resolves once it is durable. Queuing
    /// happens now, not when the future is first polled, so messages submitted one after the
    /// other commit in that order.
    pub fn submit(
        &self,
        msg: NewMessage,
    ) -> impl Future<Output = Result<(StoredMessage, Inserted), ChatError>> + Send + 'static {
        let pending = self.writer.submit(Write::Message(msg));
        async move {
            match pending.await? {
                Written::Message(m, ins) => Ok((m, ins)),
                Written::File(..) | Written::Preview(..) => Err(ChatError::Gone),
            }
        }
    }

    /// Stores a message; it is committed to disk when this returns.
    pub async fn insert(&self, msg: NewMessage) -> Result<(StoredMessage, Inserted), ChatError> {
        self.submit(msg).await
    }

    /// Up to `limit` messages before `before` that `viewer` (an identity key; `None`: public
    /// only) may see, oldest first, and whether older ones exist. Reads what is committed when
    /// it runs (first polled).
    pub fn history(
        &self,
        room: String,
        viewer: Option<String>,
        before: Option<i64>,
        limit: Option<usize>,
    ) -> impl Future<Output = Result<(Vec<StoredMessage>, bool), ChatError>> + Send + 'static {
        let store = self.store.clone();
        async move {
            let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
            let viewer = viewer.as_deref();
            let msgs = store.history(&room, viewer, before, limit).await?;
            let more = match msgs.first() {
                Some(oldest) => !store
                    .history(&room, viewer, Some(oldest.id), 1)
                    .await?
                    .is_empty(),
                None => false,
            };
            Ok((msgs, more))
        }
    }

    pub async fn insert_file(&self, rec: FileRecord) -> Result<FileRecord, ChatError> {
        match self.writer.submit(Write::File(rec)).await? {
            Written::File(r, _) => Ok(r),
            Written::Message(..) | Written::Preview(..) => Err(ChatError::Gone),
        }
    }

    pub async fn file(&self, hash: String, room: String) -> Result<Option<FileRecord>, ChatError> {
        Ok(self.store.file_by_hash(&hash, Some(&room)).await?)
    }

    /// Commits what is queued and stops taking writes (shutdown).
    pub async fn close(&self) {
        self.writer.close().await;
    }

    /// Where the content with this hash lives (if it was ever stored).
    pub fn file_path(&self, hash: &str) -> Option<PathBuf> {
        let valid =
            hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| self.files.join(hash))
    }

    /// Where the preview of the content with this hash lives (if one was made).
    pub fn preview_path(&self, hash: &str) -> Option<PathBuf> {
        self.file_path(hash)?;
        Some(self.files.join("previews").join(format!("{hash}.jpg")))
    }

    /// The preview record of the stored content `hash`: made now (off the async threads) if
    /// it never was, stored with its figures or with why it failed, so it is made once.
    /// `None` for a hash with no stored content.
    pub async fn ensure_preview(&self, hash: &str) -> Result<Option<PreviewRecord>, ChatError> {
        let (Some(original), Some(dest)) = (self.file_path(hash), self.preview_path(hash)) else {
            return Ok(None);
        };
        if let Some(done) = self.store.preview(hash).await? {
            return Ok(Some(done));
        }
        let files_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ChatError::Files { path, source }
        };
        let bytes = match tokio::fs::read(&original).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(files_err(&original)(e)),
        };
        let made =
            tokio::task::spawn_blocking(move || preview::make(&bytes, &preview::Limits::default()))
                .await
                .map_err(|_| ChatError::Gone)?;
        let outcome = match made {
            Ok(p) => {
                let tmp = self.files.join("tmp").join(crate::secret::token(24));
                tokio::fs::write(&tmp, &p.jpeg)
                    .await
                    .map_err(files_err(&tmp))?;
                tokio::fs::rename(&tmp, &dest)
                    .await
                    .map_err(files_err(&dest))?;
                Ok(PreviewFigures {
                    width: p.width,
                    height: p.height,
                    bytes: p.jpeg.len() as u64,
                    original_width: p.original_width,
                    original_height: p.original_height,
                    psnr: p.fidelity.psnr,
                    ssim: p.fidelity.ssim,
                })
            }
            Err(e) => {
                tracing::info!(file = hash, error = %e, "no preview");
                Err(e.to_string())
            }
        };
        let rec = PreviewRecord {
            hash: hash.to_owned(),
            outcome,
        };
        // Two requests (or nodes) may make the same preview at once: the first record
        // stored stands, and both get it.
        match self.writer.submit(Write::Preview(rec)).await? {
            Written::Preview(rec, _) => Ok(Some(rec)),
            Written::Message(..) | Written::File(..) => Err(ChatError::Gone),
        }
    }

    /// Starts receiving an upload of at most `limit` bytes.
    pub async fn begin_upload(&self, limit: u64) -> std::io::Result<Upload> {
        let tmp = self.files.join("tmp").join(crate::secret::token(24));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Upload {
            file,
            tmp,
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Moves a complete upload to its content-addressed place; returns (hash, size).
    pub async fn finish_upload(&self, mut up: Upload) -> std::io::Result<(String, u64)> {
        up.file.flush().await?;
        up.file.sync_all().await?;
        let hash = hex(&up.hasher.finalize_reset());
        let dest = self.files.join(&hash);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(&up.tmp).await;
        } else {
            tokio::fs::rename(&up.tmp, &dest).await?;
        }
        Ok((hash, up.size))
    }
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(UploadError::Io)
    }

    /// Gives up: nothing of it stays on disk.
    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// Uploads in progress are written to `tmp` and renamed into place when complete; a crash
/// leaves them behind. Only those untouched for [`STALE_UPLOAD`] go: the files directory may be
/// shared by several nodes, and another node's upload in progress is written to all the time.
fn remove_stale_uploads(tmp: &Path, now: std::time::SystemTime) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let modified = e.metadata().and_then(|m| m.modified());
        let stale = modified.map_or(true, |t| {
            now.duration_since(t).unwrap_or_default() >= STALE_UPLOAD
        });
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How long an unfinished upload's file may sit untouched before a starting node removes it.
const STALE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(3600);

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The identity key of a participant: derived from the secret its client keeps, so the same
/// person after a reconnect gets the same key; a fresh random one without it.
pub fn identity_key(identity: Option<&str>) -> String {
    match identity.filter(|i| (16..=128).contains(&i.len())) {
        Some(secret) => hex(&Sha256::digest(
            format!("confab-identity:{secret}").as_bytes(),
        )),
        None => format!("anon-{}", crate::secret::token(32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keys() {
        let a = identity_key(Some("0123456789abcdef-secret"));
        assert_eq!(a, identity_key(Some("0123456789abcdef-secret")));
        assert_ne!(a, identity_key(Some("0123456789abcdef-other")));
        assert_eq!(a.len(), 64);
        // Too short to be a secret, or absent: a fresh random key each time.
        assert_ne!(identity_key(Some("short")), identity_key(Some("short")));
        assert_ne!(identity_key(None), identity_key(None));
    }

    #[test]
    fn only_stale_unfinished_uploads_are_removed() {
        let dir = std::env::temp_dir().join(format!("confab-stale-{}", crate::secret::token(8)));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a", "b"] {
            std::fs::write(dir.join(name), b"partial").unwrap();
        }
        let now = std::time::SystemTime::now();
        // Just written: another node's upload in progress stays.
        remove_stale_uploads(&dir, now);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        // An hour later both are leftovers.
        remove_stale_uploads(&dir, now + STALE_UPLOAD + std::time::Duration::from_secs(1));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn uploads_are_content_addressed_and_limits_leave_nothing() {
        let dir = std::env::temp_dir().join(format!("confab-chat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let chat = Chat::open(
            &Location::Sqlite(dir.join("confab.db")),
            &dir.join("files"),
            Default::default(),
        )
        .await
        .unwrap();
        let mut up = chat.begin_upload(10).await.unwrap();
        up.write(b"hello").await.unwrap();
        let (hash, size) = chat.finish_upload(up).await.unwrap();
        assert_eq!(size, 5);
        assert_eq!(
            hash,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            std::fs::read(chat.file_path(&hash).unwrap()).unwrap(),
            b"hello"
        );
        let mut up = chat.begin_upload(10).await.unwrap();
        up.write(b"0123456").await.unwrap();
        assert!(matches!(
            up.write(b"89ab").await,
            Err(UploadError::TooLarge { limit: 10 })
        ));
        up.abort().await;
        assert_eq!(std::fs::read_dir(dir.join("files/tmp")).unwrap().count(), 0);
        assert!(chat.file_path("../../etc/passwd").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn previews_are_made_once_and_failures_remembered() {
        let dir = std::env::temp_dir().join(format!("confab-preview-{}", crate::secret::token(8)));
        let chat = Chat::open(
            &Location::Sqlite(dir.join("confab.db")),
            &dir.join("files"),
            Default::default(),
        )
        .await
        .unwrap();
        let photo = preview::tests::jpeg_with_exif(&preview::tests::smooth(1600, 1000), 6);
        let mut up = chat.begin_upload(u64::MAX).await.unwrap();
        up.write(&photo).await.unwrap();
        let (hash, _) = chat.finish_upload(up).await.unwrap();
        let rec = chat.ensure_preview(&hash).await.unwrap().unwrap();
        let f = rec.outcome.clone().unwrap();
        assert_eq!(
            (f.width, f.height, f.original_width, f.original_height),
            (800, 1280, 1000, 1600)
        );
        let path = chat.preview_path(&hash).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, f.bytes);
        // Made once: the stored record answers, even with the file's bytes gone.
        std::fs::remove_file(chat.file_path(&hash).unwrap()).unwrap();
        assert_eq!(chat.ensure_preview(&hash).await.unwrap(), Some(rec));

        let mut up = chat.begin_upload(u64::MAX).await.unwrap();
        up.write(b"%PDF-1.7 not a picture").await.unwrap();
        let (pdf, _) = chat.finish_upload(up).await.unwrap();
        let rec = chat.ensure_preview(&pdf).await.unwrap().unwrap();
        assert!(rec.outcome.unwrap_err().contains("not an image"));
        assert!(!chat.preview_path(&pdf).unwrap().exists());
        assert_eq!(chat.ensure_preview(&"0".repeat(64)).await.unwrap(), None);
        assert_eq!(chat.ensure_preview("../x").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
