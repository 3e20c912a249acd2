//! The server under test, as scenarios see it: participants join a room, publish, subscribe to
//! the room's publishers and leave, the same way whichever server it is.
//!
//! confab subscribes everyone to everyone by itself (its server sends the offers); Janus needs
//! each subscriber to name the feeds it wants, which [`Target::subscribe`] does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::confab;
use crate::janus;
use crate::peer::{Context, PublishSpec, RtcpTotals, RxStats, TxStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Confab,
    Janus,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    /// Signaling WebSocket URL.
    pub ws_url: String,
}

enum Conn {
    Confab(confab::Session),
    Janus(janus::Session),
}

/// One simulated participant.
pub struct Participant {
    pub name: String,
    pub rx: Arc<RxStats>,
    conn: Conn,
}

impl Target {
    /// Joins `room` as `name`; with `publish`, publishes (media starts once connected).
    pub async fn join(
        &self,
        ctx: &Arc<Context>,
        room: &str,
        name: &str,
        tag: u32,
        publish: Option<PublishSpec>,
    ) -> Result<Participant> {
        let rx = Arc::new(RxStats::default());
        let conn = match self.kind {
            Kind::Confab => Conn::Confab(
                confab::Session::join(ctx, &self.ws_url, room, name, tag, publish, rx.clone())
                    .await?,
            ),
            Kind::Janus => Conn::Janus(
                janus::Session::join(ctx, &self.ws_url, room, name, tag, publish, rx.clone())
                    .await?,
            ),
        };
        Ok(Participant {
            name: name.to_string(),
            rx,
            conn,
        })
    }

    /// Makes `p` receive `publishers` (confab does so by itself; Janus is asked).
    pub async fn subscribe(
        &self,
        ctx: &Arc<Context>,
        room: &str,
        p: &mut Participant,
        publishers: &[&Participant],
    ) -> Result<()> {
        let feeds = feeds(publishers)?;
        self.subscribe_feeds(ctx, room, p, &feeds).await
    }

    /// [`Target::subscribe`] by Janus feed ids (see [`feeds`]).
    pub async fn subscribe_feeds(
        &self,
        ctx: &Arc<Context>,
        room: &str,
        p: &mut Participant,
        feeds: &[u64],
    ) -> Result<()> {
        match &mut p.conn {
            Conn::Confab(_) => Ok(()),
            Conn::Janus(s) => s.subscribe(ctx, room, feeds).await,
        }
    }
}

/// The Janus feed ids of `publishers` (none for confab).
pub fn feeds(publishers: &[&Participant]) -> Result<Vec<u64>> {
    let mut feeds = Vec::new();
    for q in publishers {
        match &q.conn {
            Conn::Janus(j) => match j.feed {
                Some(f) => feeds.push(f),
                None => bail!("{} publishes nothing", q.name),
            },
            Conn::Confab(_) => {}
        }
    }
    Ok(feeds)
}

impl Participant {
    pub fn tx(&self) -> Option<Arc<TxStats>> {
        match &self.conn {
            Conn::Confab(s) => s.publication().map(|p| p.stats.clone()),
            Conn::Janus(s) => s.publication().map(|p| p.stats.clone()),
        }
    }

    /// NACK/PLI counts of both connections.
    pub async fn rtcp(&self) -> RtcpTotals {
        let mut t = RtcpTotals::default();
        match &self.conn {
            Conn::Confab(s) => {
                if let Some(p) = s.publication() {
                    t.add(&p.counters);
                }
                if let Some(c) = s.subscription_counters().await {
                    t.add(&c);
                }
            }
            Conn::Janus(s) => {
                if let Some(p) = s.publication() {
                    t.add(&p.counters);
                }
                if let Some(sub) = s.subscription() {
                    t.add(&sub.counters);
                }
            }
        }
        t
    }

    /// Waits until the publish connection is up.
    pub async fn published(&self, within: Duration) -> Result<()> {
        let p = match &self.conn {
            Conn::Confab(s) => s.publication(),
            Conn::Janus(s) => s.publication(),
        };
        match p {
            Some(p) => p.connected(within).await,
            None => bail!("{} does not publish", self.name),
        }
    }

    /// Errors the server reported to this participant after it joined.
    pub fn server_errors(&self) -> Vec<String> {
        match &self.conn {
            Conn::Confab(s) => s.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            Conn::Janus(_) => Vec::new(),
        }
    }

    pub async fn leave(self) {
        match self.conn {
            Conn::Confab(s) => s.leave().await,
            Conn::Janus(s) => s.leave().await,
        }
    }
}
