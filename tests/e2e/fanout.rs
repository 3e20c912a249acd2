//! One publisher, many subscribers.

use std::time::Duration;

use anyhow::{ensure, Result};
use futures_util::future::try_join_all;

use crate::common::{
    expect_clean, expect_media, expect_offer_with, heavy, run_with_server, Peer, PeerConfig,
};

const SUBSCRIBERS: u16 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_ten_subscribers() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(150), |server| async move {
        let url = server.ws_url();
        let presenter = Peer::join(&url, PeerConfig::new("fanout", "Presenter", 21)).await?;
        // The viewers join all at once.
        let viewers = try_join_all((0..SUBSCRIBERS).map(|i| {
            let url = url.clone();
            async move {
                Peer::join(
                    &url,
                    PeerConfig::new("fanout", &format!("Viewer {i}"), 100 + i).subscriber_only(),
                )
                .await
            }
        }))
        .await?;

        for v in &viewers {
            expect_media(v, &presenter, 20, 10, Duration::from_secs(40)).await?;
        }
        for v in &viewers {
            expect_offer_with(v, &[&presenter], Duration::from_secs(10)).await?;
            let from: Vec<String> = v.state(|s| s.remote.keys().cloned().collect());
            ensure!(
                from == [presenter.id.clone()],
                "{} receives media from {from:?}; only the presenter publishes",
                v.id
            );
            expect_clean(v)?;
        }
        presenter
            .wait_until("all viewers listed", Duration::from_secs(10), |s| {
                s.participants.len() == SUBSCRIBERS as usize
            })
            .await?;
        ensure!(
            presenter.state(|s| s.keyframe_requests >= 1),
            "the presenter never got a keyframe request (PLI/FIR) although viewers joined"
        );
        ensure!(
            presenter.state(|s| s.remote.is_empty() && s.tracks.is_empty()),
            "the presenter receives media although nobody else publishes: {}",
            presenter.state(|s| s.summary())
        );
        expect_clean(&presenter)?;
        Ok(())
    })
    .await
}
