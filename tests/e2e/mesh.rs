//! Several publishers in one room: everyone receives everyone, including while the server is
//! renegotiating.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::common::signaling::{ClientMsg, ServerMsg};
use crate::common::{
    expect_clean, expect_media, expect_offer_with, heavy, run_with_server, Peer, PeerConfig,
};

const MEDIA_WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_mesh() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(150), |server| async move {
        let url = server.ws_url();
        let a = Peer::join(&url, PeerConfig::new("mesh", "Alice", 1)).await?;
        let b = Peer::join(&url, PeerConfig::new("mesh", "Bob", 2)).await?;
        let c = Peer::join(&url, PeerConfig::new("mesh", "Carol", 3)).await?;
        let ids: BTreeSet<&str> = [&a, &b, &c].iter().map(|p| p.id.as_str()).collect();
        ensure!(ids.len() == 3, "participant ids are not unique: {ids:?}");

        let peers = [&a, &b, &c];
        for rx in peers {
            for tx in peers {
                if rx.id != tx.id {
                    expect_media(rx, tx, 30, 25, MEDIA_WAIT).await?;
                }
            }
        }
        for p in peers {
            let others: Vec<&Peer> = peers.into_iter().filter(|q| q.id != p.id).collect();
            expect_offer_with(p, &others, Duration::from_secs(10)).await?;
            // Everyone knows the others, with their published tracks.
            p.wait_until(
                "both others listed with a video and an audio track",
                Duration::from_secs(10),
                |s| {
                    others.iter().all(|q| {
                        s.participants.get(&q.id).is_some_and(|info| {
                            let kinds: BTreeSet<&str> =
                                info.tracks.iter().map(|t| t.kind.as_str()).collect();
                            kinds == ["audio", "video"].into() && info.kind == "browser"
                        })
                    }) && s.participants.len() == 2
                },
            )
            .await?;
            expect_clean(p)?;
        }

        // Keepalive and microphone state.
        a.ping(Duration::from_secs(5)).await?;
        for (audio, video) in [(true, true), (false, true)] {
            a.send(&ClientMsg::Update {
                audio: Some(audio),
                video: Some(video),
            })?;
            for p in [&b, &c] {
                p.wait_until(
                    &format!("participant_updated: Alice audio={audio} video={video}"),
                    Duration::from_secs(5),
                    |s| {
                        s.participants
                            .get(&a.id)
                            .is_some_and(|i| i.audio == audio && i.video == video)
                    },
                )
                .await?;
            }
        }

        // The REST view agrees.
        let (status, body) = server.http_get("/api/rooms/mesh").await?;
        ensure!(status == 200, "GET /api/rooms/mesh: {status} {body}");
        let room: Value = serde_json::from_str(&body).context("room JSON")?;
        ensure!(room["name"] == "mesh", "room JSON: {room}");
        let listed = room["participants"]
            .as_array()
            .context("participants array")?;
        ensure!(
            listed.len() == 3,
            "REST lists {} participants: {room}",
            listed.len()
        );
        for p in listed {
            let codecs: BTreeSet<String> = p["tracks"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| {
                            format!("{}:{}", t["kind"].as_str().unwrap_or("?"), {
                                t["codec"].as_str().unwrap_or("?").to_lowercase()
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            ensure!(
                codecs == ["audio:opus".to_string(), "video:h264".to_string()].into(),
                "REST participant {p} has tracks {codecs:?}"
            );
        }

        // Carol leaves; the others are told and renegotiated without her tracks.
        let carol = c.id.clone();
        let revisions: Vec<u64> = [&a, &b]
            .iter()
            .map(|p| p.state(|s| s.latest_offer().map_or(0, |o| o.revision)))
            .collect();
        let mut a_events = a.events();
        c.leave().await.context("Carol's leave")?;
        // The event stream sees it too (the state below is built from the same messages).
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match a_events.recv().await {
                    Ok(ServerMsg::ParticipantLeft { id }) if id == carol => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(anyhow::anyhow!("event stream: {e}")),
                }
            }
        })
        .await
        .context("participant_left for Carol on Alice's event stream")??;
        for (p, rev) in [&a, &b].into_iter().zip(revisions) {
            p.wait_until("participant_left for Carol", Duration::from_secs(5), |s| {
                s.has_left(&carol)
            })
            .await?;
            p.wait_until(
                "a newer subscribe offer without Carol's tracks",
                Duration::from_secs(5),
                |s| {
                    s.latest_offer().is_some_and(|o| {
                        o.revision > rev
                            && o.tracks.iter().all(|t| t.participant != carol)
                            && !o.active_streams.contains(&carol)
                    }) && s.subscribe_settled()
                },
            )
            .await?;
        }
        // Media between the remaining two keeps flowing after that renegotiation.
        for (rx, tx) in [(&a, &b), (&b, &a)] {
            let base = rx.state(|s| s.remote(&tx.id).frames_good);
            rx.wait_until(
                "20 more frames after Carol left",
                Duration::from_secs(15),
                |s| s.remote(&tx.id).frames_good >= base + 20,
            )
            .await?;
            expect_media(rx, tx, base + 20, 0, Duration::from_secs(1)).await?;
            expect_clean(rx)?;
        }
        let (status, body) = server.http_get("/api/rooms/mesh").await?;
        ensure!(
            status == 200,
            "GET /api/rooms/mesh after leave: {status} {body}"
        );
        let room: Value = serde_json::from_str(&body)?;
        ensure!(
            room["participants"].as_array().map(Vec::len) == Some(2),
            "after Carol left REST says {room}"
        );
        Ok(())
    })
    .await
}

/// Two slow-answering peers are mid-renegotiation (D just started publishing, their answers
/// are held back) when C joins; the server has to fold the changes into later offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_during_renegotiation() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(150), |server| async move {
        let url = server.ws_url();
        let slow = Duration::from_millis(400);
        let a = Peer::join(&url, PeerConfig::new("reneg", "A", 11).answer_delay(slow)).await?;
        let b = Peer::join(&url, PeerConfig::new("reneg", "B", 12).answer_delay(slow)).await?;
        expect_media(&a, &b, 5, 0, MEDIA_WAIT).await?;
        expect_media(&b, &a, 5, 0, MEDIA_WAIT).await?;

        // D publishes; C joins right behind it, before A and B have answered anything.
        let d = Peer::join(&url, PeerConfig::new("reneg", "D", 14)).await?;
        let c = Peer::join(&url, PeerConfig::new("reneg", "C", 13)).await?;

        let peers = [&a, &b, &c, &d];
        for rx in peers {
            for tx in peers {
                if rx.id != tx.id {
                    expect_media(rx, tx, 20, 10, MEDIA_WAIT).await?;
                }
            }
        }
        for p in peers {
            let others: Vec<&Peer> = peers.into_iter().filter(|q| q.id != p.id).collect();
            expect_offer_with(p, &others, Duration::from_secs(10)).await?;
            expect_clean(p)?;
        }
        Ok(())
    })
    .await
}

/// Participants keep coming and going while two stay: the stayers' subscribe connections are
/// renegotiated again and again (tracks added, removed, m-lines reused) and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_renegotiation_churn() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(150), |server| async move {
        let url = server.ws_url();
        let a = Peer::join(&url, PeerConfig::new("churn", "Stay A", 61)).await?;
        let b = Peer::join(&url, PeerConfig::new("churn", "Stay B", 62)).await?;
        expect_media(&a, &b, 5, 5, MEDIA_WAIT).await?;
        expect_media(&b, &a, 5, 5, MEDIA_WAIT).await?;
        for round in 0..4u16 {
            let guest = Peer::join(
                &url,
                PeerConfig::new("churn", &format!("Guest {round}"), 70 + round),
            )
            .await?;
            for p in [&a, &b] {
                expect_media(p, &guest, 5, 5, MEDIA_WAIT)
                    .await
                    .with_context(|| format!("round {round}"))?;
            }
            expect_media(&guest, &a, 5, 5, MEDIA_WAIT).await?;
            expect_media(&guest, &b, 5, 5, MEDIA_WAIT).await?;
            let gone = guest.id.clone();
            if round % 2 == 0 {
                guest.leave().await?;
            } else {
                guest.vanish().await;
            }
            for (p, other) in [(&a, &b), (&b, &a)] {
                p.wait_until("the guest left", Duration::from_secs(7), |s| {
                    s.has_left(&gone)
                })
                .await?;
                expect_offer_with(p, &[other], Duration::from_secs(7)).await?;
            }
        }
        // After all that, A and B still get each other's media.
        for (rx, tx) in [(&a, &b), (&b, &a)] {
            let base = rx.state(|s| s.remote(&tx.id).frames_good);
            rx.wait_until(
                "20 more frames after the churn",
                Duration::from_secs(15),
                |s| s.remote(&tx.id).frames_good >= base + 20,
            )
            .await?;
            expect_media(rx, tx, base + 20, 0, Duration::from_secs(1)).await?;
            expect_clean(rx)?;
            let revisions = rx.state(|s| s.offers.len());
            ensure!(revisions >= 8, "{} saw only {revisions} offers", rx.id);
        }
        Ok(())
    })
    .await
}
