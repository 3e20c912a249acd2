//! Probe subscribers: a few subscribers that each run on an OS thread and tokio runtime of
//! their own, so that their receive times are not queued behind the hundreds of other
//! subscribers the generator's workers are busy with. Their latency is the best estimate of
//! what the server adds; the objective is judged on it.
//!
//! A probe joins last (after the step's other subscribers) so that it is also last in any
//! join-ordered fan-out loop: the pessimistic position.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::sync::oneshot;

use crate::peer::Context;
use crate::target::{Participant, Target};

pub struct Probe {
    pub participant: Option<Participant>,
    stop: Option<oneshot::Sender<()>>,
}

impl Probe {
    /// Joins `room` on a new thread and subscribes to `feeds` (Janus).
    pub async fn join(
        target: Target,
        ctx: Arc<Context>,
        room: String,
        name: String,
        tag: u32,
        feeds: Vec<u64>,
    ) -> Result<Probe> {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Participant>>();
        let (stop, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-probe".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let joined = async {
                        let mut p = target.join(&ctx, &room, &name, tag, None).await?;
                        target.subscribe_feeds(&ctx, &room, &mut p, &feeds).await?;
                        Ok(p)
                    }
                    .await;
                    if ready_tx.send(joined).is_err() {
                        return;
                    }
                    // Keep driving the probe's connections until told to stop.
                    let _ = stop_rx.await;
                });
                // Dropping the runtime ends whatever of the probe's tasks remain.
            })?;
        let participant = tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| anyhow!("probe {}: no join within 30 s", "?"))?
            .map_err(|_| anyhow!("probe thread ended"))??;
        Ok(Probe {
            participant: Some(participant),
            stop: Some(stop),
        })
    }

    /// Leaves (bounded) and ends the thread.
    pub async fn leave(mut self) {
        if let Some(p) = self.participant.take() {
            p.leave().await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
