//! Building blocks for confab end-to-end tests (and, later, a load tool): a server process,
//! a signaling client, webrtc-rs peers with synthetic media, and verification.

pub mod chat;
pub mod keyframe;
pub mod media;
pub mod mjpeg;
pub mod peer;
pub mod redis;
pub mod rtsp;
pub mod server;
pub mod sha256;
pub mod signaling;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::sync::{Semaphore, SemaphorePermit};

pub use peer::{Peer, PeerConfig};
pub use server::TestServer;

/// Media-heavy tests take this permit so that they run one at a time (the CI machine has two
/// cores; decoding several streams in parallel tests makes timing flaky).
pub async fn heavy() -> SemaphorePermit<'static> {
    static HEAVY: Semaphore = Semaphore::const_new(1);
    HEAVY.acquire().await.expect("semaphore is never closed")
}

/// Runs `scenario` against a fresh server with an overall time limit; on failure the error
/// carries the tail of the server's log.
pub async fn run_with_server<F, Fut>(limit: Duration, scenario: F) -> Result<()>
where
    F: FnOnce(Arc<TestServer>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    // Measurements compare configurations: `CONFAB_E2E_CONFIG` (TOML) is given to the server.
    let server = match std::env::var("CONFAB_E2E_CONFIG") {
        Ok(toml) => TestServer::start_with_config(&toml).await?,
        Err(_) => TestServer::start().await?,
    };
    run_on(server, limit, scenario).await
}

/// [`run_with_server`] on a server the test started itself (e.g. with its own config).
pub async fn run_on<F, Fut>(server: TestServer, limit: Duration, scenario: F) -> Result<()>
where
    F: FnOnce(Arc<TestServer>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let server = Arc::new(server);
    let result = tokio::time::timeout(limit, scenario(server.clone())).await;
    let err = match result {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => format!("{e:?}"),
        Err(_) => format!("scenario exceeded its time limit of {limit:?}"),
    };
    Err(anyhow!(
        "{err}\n\n--- server output (last 150 lines) ---\n{}",
        server.log_tail(150)
    ))
}

/// Waits until `rx` has decoded `frames` good frames and `audio` intact audio packets from
/// `from`, then checks that all of it really is `from`'s media: no frame failed the pixel
/// check, the tags match, the square moved.
pub async fn expect_media(
    rx: &Peer,
    from: &Peer,
    frames: u64,
    audio: u64,
    within: Duration,
) -> Result<()> {
    rx.wait_until(
        &format!(
            "{frames} good frames and {audio} audio packets from {}",
            from.id
        ),
        within,
        |s| s.receiving_from(&from.id, frames, audio),
    )
    .await?;
    let (r, summary) = rx.state(|s| (s.remote(&from.id), s.summary()));
    let who = format!("{} receiving from {}", rx.id, from.id);
    anyhow::ensure!(
        r.frames_bad == 0,
        "{who}: {} decoded frames fail the pattern check (last: {:?})\n{summary}",
        r.frames_bad,
        r.last_problem
    );
    anyhow::ensure!(
        r.video_tags == [from.cfg.tag].into(),
        "{who}: video carries publisher tags {:?}, expected only {} (streams mixed up?)\n{summary}",
        r.video_tags,
        from.cfg.tag
    );
    if audio > 0 {
        anyhow::ensure!(
            r.audio_tags == [from.cfg.tag].into() && r.audio_bad == 0,
            "{who}: audio tags {:?} ({} damaged packets), expected only {}\n{summary}",
            r.audio_tags,
            r.audio_bad,
            from.cfg.tag
        );
    }
    let moved = r.counters_seen.len() as u64;
    anyhow::ensure!(
        moved >= (frames / 2).min(10),
        "{who}: only {moved} distinct frames among {} good ones: the picture does not move\n{summary}",
        r.frames_good
    );
    Ok(())
}

/// No protocol problems seen by `p` and no `error` messages from the server.
pub fn expect_clean(p: &Peer) -> Result<()> {
    let (problems, errors, summary) =
        p.state(|s| (s.problems.clone(), s.server_errors.clone(), s.summary()));
    anyhow::ensure!(
        problems.is_empty() && errors.is_empty(),
        "{} ({}): problems {problems:?}, server errors {errors:?}\n{summary}",
        p.cfg.name,
        p.id
    );
    Ok(())
}

/// Waits until `p`'s newest subscribe offer is answered and forwards exactly the tracks of
/// `publishers` (one video + one audio each), both in its `tracks` list and in the SDP.
pub async fn expect_offer_with(p: &Peer, publishers: &[&Peer], within: Duration) -> Result<()> {
    let want: std::collections::BTreeSet<String> =
        publishers.iter().map(|q| q.id.clone()).collect();
    let what = format!("a settled subscribe offer carrying exactly {want:?}");
    p.wait_until(&what, within, |s| {
        s.subscribe_settled()
            && s.latest_offer().map_or(want.is_empty(), |o| {
                let listed: std::collections::BTreeSet<String> =
                    o.tracks.iter().map(|t| t.participant.clone()).collect();
                listed == want && o.active_streams == want && o.tracks.len() == 2 * want.len()
            })
    })
    .await
}
