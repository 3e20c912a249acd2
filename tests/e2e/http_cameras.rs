//! HTTP cameras pulled into rooms: an ffmpeg MJPEG stream (`-f mpjpeg -listen 1`, what an IP
//! camera or mjpg-streamer serves), a still JPEG polled at 2 fps, and hostile MJPEG servers
//! the puller must survive with bounded memory and a clear state. Pictures are checked at a
//! webrtc-rs subscriber, decoded (the bridge transcodes MJPEG to H.264).
//!
//! Needs ffmpeg. Run: `cargo test -p confab --test e2e http_cameras -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::common::mjpeg::{
    ffmpeg_mjpeg_server, post_camera, rss_kib, Hostile, HostileServer, StillServer,
};
use crate::common::rtsp::{unused_port, wait_camera};
use crate::common::{expect_clean, heavy, run_with_server, Peer, PeerConfig};

/// Waits until `viewer` has decoded `frames` more pictures of `size` from camera `id`.
async fn expect_pictures(
    viewer: &Peer,
    id: &str,
    frames: u64,
    size: (usize, usize),
    within: Duration,
) -> Result<()> {
    let base = viewer.state(|s| s.remote(id).frames_decoded);
    viewer
        .wait_until(
            &format!("{frames} more decoded pictures from {id}"),
            within,
            |s| s.remote(id).frames_decoded >= base + frames,
        )
        .await?;
    let got = viewer.state(|s| s.remote(id).decoded_size);
    ensure!(
        got == Some(size),
        "{} decodes {got:?} from {id}, expected {size:?}",
        viewer.id
    );
    Ok(())
}

/// An MJPEG stream: live, its pictures decode at a subscriber; the source dies (retrying,
/// with why) and comes back on the same port (live again, pictures resume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjpeg_stream_camera_plays_and_comes_back() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "http-mjpeg";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let port = unused_port()?;
        let mut source = ffmpeg_mjpeg_server(port, "640x360", 10)?;
        let url = format!("http://127.0.0.1:{port}/feed");
        let r = post_camera(
            &server,
            room,
            serde_json::json!({"name": "cam", "url": url}),
        )
        .await?;
        ensure!(r.status == 201, "POST camera: {} {}", r.status, r.text());
        ensure!(
            r.json()?["transport"] == "http",
            "the 201 body: {}",
            r.text()
        );
        let live = wait_camera(&server, room, "cam", "live", Duration::from_secs(15), |c| {
            c.state == "live"
        })
        .await?;
        ensure!(
            live.json["mode"] == "mjpeg",
            "ffmpeg's stream (Content-Type application/octet-stream) is not seen as MJPEG: {}",
            live.json
        );
        expect_pictures(&viewer, "cam", 20, (640, 360), Duration::from_secs(20)).await?;

        // The source dies: the camera retries and says why.
        source.kill().await?;
        let down = wait_camera(
            &server,
            room,
            "cam",
            "retrying",
            Duration::from_secs(15),
            |c| c.state == "retrying",
        )
        .await?;
        ensure!(
            down.error.as_deref().is_some_and(|e| !e.trim().is_empty()),
            "retrying without an error text: {}",
            down.json
        );
        println!("MJPEG source down: {}", down.json);

        // It comes back on the same port.
        let _source = ffmpeg_mjpeg_server(port, "640x360", 10)?;
        let t = Instant::now();
        wait_camera(
            &server,
            room,
            "cam",
            "live again",
            Duration::from_secs(40),
            |c| c.state == "live",
        )
        .await?;
        expect_pictures(&viewer, "cam", 20, (640, 360), Duration::from_secs(20)).await?;
        println!(
            "MJPEG camera back: pictures at the viewer {:.1?} after the source restarted",
            t.elapsed()
        );
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// A still JPEG (`image/jpeg`) polled at `fps = 2`: detected as such, fetched twice a second
/// over one kept-alive connection, and its pictures decode at a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_jpeg_polled_at_2_fps() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(90), |server| async move {
        let room = "http-still";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        // Not 320x240: the test peer reports the size of pictures other than its own pattern's.
        let still = StillServer::start(640, 360).await?;
        let r = post_camera(
            &server,
            room,
            serde_json::json!({"name": "snap", "url": still.url, "fps": 2}),
        )
        .await?;
        ensure!(r.status == 201, "POST camera: {} {}", r.status, r.text());
        let live = wait_camera(
            &server,
            room,
            "snap",
            "live",
            Duration::from_secs(15),
            |c| c.state == "live",
        )
        .await?;
        ensure!(
            live.json["mode"] == "jpeg" && live.json["fps"] == 2.0,
            "the still camera's state: {}",
            live.json
        );
        // Five pictures at 2 fps: 2.5 s, and the first keyframe.
        expect_pictures(&viewer, "snap", 5, (640, 360), Duration::from_secs(20)).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let n = still.requests_within(Duration::from_secs(5));
        println!("still camera: {n} requests in the last 5 s (2 fps: 10)");
        ensure!(
            (8..=12).contains(&n),
            "{n} requests in 5 s; a 2 fps poll makes 10"
        );
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// Hostile MJPEG servers: a part that never ends, a part of 99 999 999 999 bytes, a flood of
/// tiny parts that are no pictures, a server that never answers. Each camera ends up
/// `retrying` with a reason that says what is wrong, and the server's memory stays bounded
/// (the splitter holds one part of at most 8 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mjpeg_servers_are_survived() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "hostile-http";
        let pid = server.pid();
        let before = rss_kib(pid)?;
        // 256 MiB per connection at most: far more than the 8 MiB a part may take.
        let cap = 256 << 20;
        let servers = [
            (
                "endless",
                HostileServer::start(Hostile::EndlessPart, cap).await?,
                "without a boundary line",
            ),
            (
                "huge",
                HostileServer::start(Hostile::HugeLength, cap).await?,
                "over the 8388608-byte limit",
            ),
            (
                "tiny",
                HostileServer::start(Hostile::TinyParts, cap).await?,
                "parts that are not JPEG pictures were skipped",
            ),
            (
                "silent",
                HostileServer::start(Hostile::Silent, cap).await?,
                "no answer within 10 s",
            ),
        ];
        for (name, s, _) in &servers {
            let r =
                post_camera(&server, room, serde_json::json!({"name": name, "url": s.url})).await?;
            ensure!(r.status == 201, "POST camera {name}: {} {}", r.status, r.text());
        }
        let mut peak = before;
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut pending: Vec<&str> = servers.iter().map(|(n, _, _)| *n).collect();
        while !pending.is_empty() {
            peak = peak.max(rss_kib(pid)?);
            let list = crate::common::rtsp::cameras(&server, room).await?;
            pending.retain(|name| {
                let expected = servers.iter().find(|(n, _, _)| n == name).map(|s| s.2);
                let done = list.iter().any(|c| {
                    c.name == *name
                        && c.state == "retrying"
                        && c.error
                            .as_deref()
                            .zip(expected)
                            .is_some_and(|(e, want)| e.contains(want))
                });
                if done {
                    let c = list.iter().find(|c| c.name == *name).map(|c| &c.json);
                    println!("hostile {name}: {c:?}");
                }
                !done
            });
            ensure!(
                Instant::now() < deadline,
                "cameras {pending:?} are not retrying with the expected reason within 40 s: {:?}",
                list.iter().map(|c| &c.json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // More rounds of the endless part and the flood, while memory is watched.
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            peak = peak.max(rss_kib(pid)?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let endless_bytes = servers[0].1.written.load(std::sync::atomic::Ordering::Relaxed);
        let flood_bytes = servers[2].1.written.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "hostile servers: RSS {} KiB before, peak {} KiB (+{} KiB); the endless part sent {} MiB, the flood {} MiB",
            before,
            peak,
            peak.saturating_sub(before),
            endless_bytes >> 20,
            flood_bytes >> 20
        );
        ensure!(
            endless_bytes >= 8 << 20,
            "the endless part was cut off before 8 MiB ({endless_bytes} bytes): not the part limit"
        );
        ensure!(
            peak.saturating_sub(before) < 64 << 10,
            "the server's RSS grew by {} KiB while hostile servers fed it",
            peak.saturating_sub(before)
        );
        // The server still serves.
        let (status, _) = server.http_get("/healthz").await?;
        ensure!(status == 200, "GET /healthz: {status}");
        Ok(())
    })
    .await
}
