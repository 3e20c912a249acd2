//! Group commit: the one place the server writes to the chat store.
//!
//! [`Writer::submit`] queues a write and returns a [`Pending`] at once; queuing never waits (a
//! full queue is refused with [`ChatError::Busy`]). One task takes everything queued, up to
//! [`MAX_BATCH`], and commits it as one batch: one transaction, one fsync. What arrives while
//! that commit runs forms the next batch. Under load the disk thus sees one flush per commit
//! rather than one per message, and nobody waits behind a mutex for other people's fsyncs
//! before their own (the p99 of 100–500 ms this replaced).
//!
//! A [`Pending`] resolves once its write is durable, or failed: only then may the caller
//! acknowledge or show it. Writes commit in the order submitted, so a sender's messages get
//! increasing ids in the order it sent them.
//!
//! Writes are checked ([`Write::check`]) before they join a batch, so one write the store
//! cannot take fails alone. What fails after that is the store itself (a full disk, a lost
//! database connection), which would have failed each write alone just the same: the whole
//! batch gets that error.
//!
//! [`Writer::close`] stops taking writes, commits what is queued, and returns once that is
//! done (shutdown flushes the chat this way).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::service::ChatError;
use super::store::{Store, Write, Written};
use crate::metrics::Metrics;

/// The most writes one transaction takes.
pub const MAX_BATCH: usize = 256;
/// Writes queued beyond the one being committed before new ones are refused. Chat is rate
/// limited per connection, so this is reached only when the store stalls for long.
pub const QUEUE: usize = 8192;

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written, ChatError>>,
}

pub struct Writer {
    queue: mpsc::Sender<Job>,
    close: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A submitted write: resolves to its result once committed (durable) or failed.
pub struct Pending(oneshot::Receiver<Result<Written, ChatError>>);

impl Future for Pending {
    type Output = Result<Written, ChatError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped reply means the writer task ended without answering (it panicked).
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ChatError::Gone)))
    }
}

impl Pending {
    fn done(result: Result<Written, ChatError>) -> Pending {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        Pending(rx)
    }
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Arc<Store>, metrics: Arc<Metrics>) -> Writer {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(run(store, jobs, closed, metrics));
        Writer {
            queue,
            close: Mutex::new(Some(close)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues `write` for the next batch; never waits.
    pub fn submit(&self, write: Write) -> Pending {
        if let Err(e) = write.check() {
            return Pending::done(Err(e.into()));
        }
        let (reply, rx) = oneshot::channel();
        match self.queue.try_send(Job { write, reply }) {
            Ok(()) => Pending(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Pending::done(Err(ChatError::Busy)),
            Err(mpsc::error::TrySendError::Closed(_)) => Pending::done(Err(ChatError::Gone)),
        }
    }

    /// Refuses new writes, commits those queued, and returns when they are committed.
    pub async fn close(&self) {
        let close = self.close.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(close) = close {
            let _ = close.send(());
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    store: Arc<Store>,
    mut jobs: mpsc::Receiver<Job>,
    mut close: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    loop {
        // `recv_many` waits for the first job, then takes every one already queued: those that
        // arrived while the previous batch was being committed.
        let n = if closing {
            jobs.recv_many(&mut batch, MAX_BATCH).await
        } else {
            tokio::select! {
                n = jobs.recv_many(&mut batch, MAX_BATCH) => n,
                // Told to close (or the Writer is gone): take no more, drain what is queued.
                _ = &mut close => {
                    jobs.close();
                    closing = true;
                    continue;
                }
            }
        };
        if n == 0 {
            return;
        }
        commit(&store, &mut batch, &metrics).await;
    }
}

/// Commits `batch` (leaving it empty) and answers each job.
async fn commit(store: &Store, batch: &mut Vec<Job>, metrics: &Metrics) {
    let writes = batch.iter().map(|j| j.write.clone()).collect();
    match store.commit(writes).await {
        Ok(results) if results.len() == batch.len() => {
            metrics.chat_commits.fetch_add(1, Relaxed);
            metrics.chat_writes.fetch_add(batch.len() as u64, Relaxed);
            for (job, result) in batch.drain(..).zip(results) {
                let _ = job.reply.send(Ok(result));
            }
        }
        Ok(results) => {
            // Both backends answer every write; anything else is a bug, reported, not trusted.
            tracing::error!(
                writes = batch.len(),
                results = results.len(),
                "chat store answered a batch with the wrong number of results"
            );
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(ChatError::Gone));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            tracing::error!(error = %e, writes = batch.len(), db = %store.describe(), "chat batch not stored");
            metrics.chat_failed_commits.fetch_add(1, Relaxed);
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(ChatError::Store(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::store::tests::{msg, Fixture};
    use crate::chat::store::{Inserted, NewMessage, StoreError};

    fn with_cid(cid: &str, text: &str) -> Write {
        Write::Message(NewMessage {
            client_id: Some(cid.into()),
            ..msg("r", "a", None, text)
        })
    }

    async fn group_commit(fx: Fixture) {
        let store = Arc::new(fx.open().await);
        let metrics = Arc::new(Metrics::default());
        let writer = Writer::start(store.clone(), metrics.clone());
        // 300 writes queued at once, then awaited: they need far fewer commits than writes,
        // and come back in the order submitted with increasing ids.
        let pending: Vec<Pending> = (0..300)
            .map(|i| writer.submit(with_cid(&format!("c{i}"), &format!("m{i}"))))
            .collect();
        // A resend in the same stream, and a write that cannot be stored, fail or succeed alone.
        let resend = writer.submit(with_cid("c7", "again"));
        let bad = writer.submit(Write::Message(msg("r", "a", None, "nul\0")));
        let mut prev = 0;
        for (i, p) in pending.into_iter().enumerate() {
            let Ok(Written::Message(m, Inserted::New)) = p.await else {
                panic!("write {i} failed");
            };
            assert_eq!(m.text, format!("m{i}"));
            assert!(m.id > prev);
            prev = m.id;
        }
        let Ok(Written::Message(m, Inserted::Duplicate)) = resend.await else {
            panic!("the resend was not a duplicate");
        };
        assert_eq!(m.text, "m7");
        assert!(matches!(
            bad.await,
            Err(ChatError::Store(e)) if matches!(*e, StoreError::Invalid { .. })
        ));
        let commits = metrics.chat_commits.load(Relaxed);
        assert_eq!(metrics.chat_writes.load(Relaxed), 301);
        assert!(
            (2..=60).contains(&commits),
            "{commits} commits for 301 writes"
        );

        // Closing commits what is queued, then refuses.
        let last = writer.submit(with_cid("last", "last"));
        writer.close().await;
        assert!(matches!(last.await, Ok(Written::Message(_, Inserted::New))));
        assert!(matches!(
            writer.submit(with_cid("late", "late")).await,
            Err(ChatError::Gone)
        ));
        let h = store.history("r", None, None, 500).await.unwrap();
        assert_eq!(h.len(), 301);
        assert_eq!(h.last().unwrap().text, "last");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_sqlite() {
        group_commit(Fixture::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_postgres() {
        group_commit(Fixture::postgres()).await;
    }

    /// What group commit buys, store alone (ignored; run it on purpose):
    /// `cargo test --release -p confab --lib store_bench -- --ignored --nocapture`.
    /// `SENDERS` tasks each store `PER_SENDER` messages one after the other (waiting for each),
    /// first with one commit per message (what the server did before: every message its own
    /// transaction and fsync, behind the store's lock), then through the [`Writer`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark; run with --release -- --ignored --nocapture"]
    async fn store_bench() {
        const SENDERS: usize = 50;
        const PER_SENDER: usize = 40;
        for (backend, fx) in [
            ("sqlite", Fixture::sqlite as fn() -> Fixture),
            ("postgres", Fixture::postgres),
        ] {
            for grouped in [false, true] {
                let fx = fx();
                let store = Arc::new(fx.open().await);
                let metrics = Arc::new(Metrics::default());
                let writer = Arc::new(Writer::start(store.clone(), metrics.clone()));
                let start = std::time::Instant::now();
                let tasks: Vec<_> = (0..SENDERS)
                    .map(|s| {
                        let (store, writer) = (store.clone(), writer.clone());
                        tokio::spawn(async move {
                            let mut latencies = Vec::with_capacity(PER_SENDER);
                            for i in 0..PER_SENDER {
                                let w = with_cid(&format!("s{s}-{i}"), &format!("m {s} {i}"));
                                let t = std::time::Instant::now();
                                if grouped {
                                    writer.submit(w).await.unwrap();
                                } else {
                                    store.commit(vec![w]).await.unwrap();
                                }
                                latencies.push(t.elapsed());
                            }
                            latencies
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                let took = start.elapsed();
                all.sort_unstable();
                let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
                let commits = if grouped {
                    metrics.chat_commits.load(Relaxed)
                } else {
                    all.len() as u64
                };
                println!(
                    "STORE_BENCH {backend} {}: {} messages from {SENDERS} senders in {:.2} s = {:.0}/s, latency p50 {:.1} ms p99 {:.1} ms, {:.1} messages per commit",
                    if grouped { "group commit" } else { "commit per message" },
                    all.len(),
                    took.as_secs_f64(),
                    all.len() as f64 / took.as_secs_f64(),
                    pct(0.5).as_secs_f64() * 1e3,
                    pct(0.99).as_secs_f64() * 1e3,
                    all.len() as f64 / commits.max(1) as f64,
                );
                writer.close().await;
            }
        }
    }

    #[tokio::test]
    async fn a_failing_store_fails_the_batch_with_its_error() {
        // A database file that cannot be written any more: removed from under the store.
        let fx = Fixture::sqlite();
        let store = Arc::new(fx.open().await);
        let Fixture::Sqlite(dir) = &fx else {
            unreachable!("made as SQLite above")
        };
        let metrics = Arc::new(Metrics::default());
        let writer = Writer::start(store, metrics.clone());
        // Make the writer's next commit fail: a table it needs is gone.
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch("DROP TABLE messages").unwrap();
        let a = writer.submit(with_cid("a", "a"));
        let b = writer.submit(with_cid("b", "b"));
        for p in [a, b] {
            let err = p.await.expect_err("failed");
            assert!(err.to_string().contains("messages"), "{err}");
        }
        assert!(metrics.chat_failed_commits.load(Relaxed) >= 1);
        writer.close().await;
    }
}
