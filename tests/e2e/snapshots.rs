//! Pictures out: `frame.jpeg` and `stream.mjpeg` of a browser participant (a webrtc-rs peer
//! publishing the test pattern) and of a camera (ffmpeg pushing H.264 over RTSP). The JPEGs
//! are decoded here (the `image` crate): their size, `?width=` scaling, and that the picture
//! changes; two stream viewers share one decoder (`/metrics`); access follows the room's.
//!
//! Needs ffmpeg. Run: `cargo test -p confab --test e2e snapshots -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::common::media;
use crate::common::mjpeg::{metric, MjpegClient};
use crate::common::rtsp::{room_participant, rtsp_url, FfmpegPush, Push, Transport};
use crate::common::{heavy, run_on, run_with_server, Peer, PeerConfig, TestServer};

/// `GET path`, expected to be a JPEG: decoded.
async fn get_jpeg(server: &TestServer, path: &str) -> Result<image::RgbImage> {
    let r = server.http_request("GET", path, &[], &[]).await?;
    ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
    ensure!(
        r.header("content-type") == Some("image/jpeg"),
        "GET {path}: Content-Type {:?}",
        r.header("content-type")
    );
    Ok(image::load_from_memory(&r.body)
        .with_context(|| format!("GET {path}: the body is no JPEG"))?
        .to_rgb8())
}

/// Mean absolute difference of two pictures of one size, per channel value.
fn difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len().max(1) as f64
}

/// A JSON error with `status` for `GET path`.
async fn expect_error(server: &TestServer, path: &str, status: u16) -> Result<()> {
    let r = server.http_request("GET", path, &[], &[]).await?;
    ensure!(
        r.status == status && r.json().is_ok_and(|v| v["error"].is_string()),
        "GET {path}: {} {} (expected {status} with a JSON error)",
        r.status,
        r.text()
    );
    Ok(())
}

/// A browser participant's picture: its size, scaled, changing; bad requests answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_jpeg_of_a_browser_participant() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(90), |server| async move {
        let room = "snap";
        let alice = Peer::join(&server.ws_url(), PeerConfig::new(room, "Alice", 0x15a)).await?;
        alice
            .wait_until("sending video", Duration::from_secs(15), |s| {
                s.sent_video_frames >= 10
            })
            .await?;
        let path = format!("/api/rooms/{room}/participants/{}/frame.jpeg", alice.id);
        let t = Instant::now();
        let first = get_jpeg(&server, &path).await?;
        println!("first frame.jpeg of a browser after {:?}", t.elapsed());
        ensure!(
            first.dimensions() == (media::WIDTH as u32, media::HEIGHT as u32),
            "frame.jpeg is {:?}, the publisher sends {}x{}",
            first.dimensions(),
            media::WIDTH,
            media::HEIGHT
        );
        let small = get_jpeg(&server, &format!("{path}?width=160")).await?;
        ensure!(
            small.dimensions() == (160, 120),
            "?width=160: {:?}",
            small.dimensions()
        );
        let wide = get_jpeg(&server, &format!("{path}?width=3000")).await?;
        ensure!(
            wide.dimensions() == first.dimensions(),
            "?width=3000 scaled a {:?} picture up to {:?}",
            first.dimensions(),
            wide.dimensions()
        );
        // The picture changes: polled until it does, for at most 10 s.
        let asked = Instant::now();
        let d = loop {
            let d = difference(&first, &get_jpeg(&server, &path).await?);
            if d > 0.5 || asked.elapsed() > Duration::from_secs(10) {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "browser picture {:.1?} later differs by {d:.2} per channel value",
            asked.elapsed()
        );
        ensure!(d > 0.5, "the picture does not change in 10 s ({d:.2})");
        ensure!(
            metric(&server, "confab_snapshot_decoders_started_total").await? == 1.0,
            "every request was to share one decoder"
        );

        expect_error(&server, &format!("{path}?width=8"), 400).await?;
        expect_error(&server, &format!("{path}?width=x"), 400).await?;
        expect_error(
            &server,
            &format!("/api/rooms/{room}/participants/nobody/frame.jpeg"),
            404,
        )
        .await?;
        expect_error(
            &server,
            &format!(
                "/api/rooms/{room}/participants/{}/stream.mjpeg?fps=100",
                alice.id
            ),
            400,
        )
        .await?;
        Ok(())
    })
    .await
}

/// A camera's pictures: two MJPEG stream viewers at once get changing 640x360 JPEGs from one
/// decoder, which stops when they leave; then frame.jpeg, scaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_pictures_and_a_shared_mjpeg_stream() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "snap-cam";
        let mut push = FfmpegPush::spawn(
            &rtsp_url(&server, room, "door"),
            Push::h264_opus(Transport::Tcp),
        )?;
        push.wait_streaming(30, Duration::from_secs(20)).await?;
        ensure!(
            room_participant(&server, room, "door").await?.is_some(),
            "the pushed camera is not in the room"
        );

        let path = format!("/api/rooms/{room}/participants/door/stream.mjpeg?fps=5");
        let mut a = MjpegClient::get(server.http, &path).await?;
        let mut b = MjpegClient::get(server.http, &path).await?;
        for c in [&a, &b] {
            ensure!(
                c.status == 200
                    && c.content_type == "multipart/x-mixed-replace; boundary=confab-frame",
                "GET {path}: {} {}",
                c.status,
                c.content_type
            );
        }
        let t = Instant::now();
        let mut pictures = Vec::new();
        for _ in 0..6 {
            for (name, c) in [("a", &mut a), ("b", &mut b)] {
                let part = c.next_part(Duration::from_secs(10)).await?;
                let img = image::load_from_memory(&part)
                    .with_context(|| format!("viewer {name}: a part is no JPEG"))?
                    .to_rgb8();
                ensure!(
                    img.dimensions() == (640, 360),
                    "viewer {name}: a {:?} picture",
                    img.dimensions()
                );
                pictures.push(img);
            }
        }
        let elapsed = t.elapsed();
        ensure!(
            metric(&server, "confab_snapshot_decoders").await? == 1.0
                && metric(&server, "confab_snapshot_decoders_started_total").await? == 1.0,
            "two viewers of one camera are to share one decoder"
        );
        let encoded = metric(&server, "confab_snapshot_jpegs_encoded_total").await?;
        println!(
            "two stream viewers: 6 parts each in {elapsed:.1?}, {encoded} JPEGs encoded for the 12 parts"
        );
        // Viewers at one frame rate wake together and share the JPEG of the picture they take
        // (a new picture can still slip in between them now and then).
        ensure!(
            encoded <= 9.0,
            "{encoded} JPEGs encoded for 12 parts of two viewers at one frame rate: not shared"
        );
        let d = difference(&pictures[0], &pictures[pictures.len() - 1]);
        ensure!(d > 0.5, "the camera's stream does not change ({d:.2})");
        drop((a, b));
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&server, "confab_snapshot_decoders").await? != 0.0 {
            ensure!(
                Instant::now() < deadline,
                "the decoder still runs 5 s after its last viewer left"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let frame = format!("/api/rooms/{room}/participants/door/frame.jpeg");
        let t = Instant::now();
        let full = get_jpeg(&server, &frame).await?;
        println!("first frame.jpeg of a camera after {:?}", t.elapsed());
        ensure!(full.dimensions() == (640, 360), "frame.jpeg: {:?}", full.dimensions());
        let half = get_jpeg(&server, &format!("{frame}?width=320")).await?;
        ensure!(half.dimensions() == (320, 180), "?width=320: {:?}", half.dimensions());
        let decode = metric(&server, "confab_snapshot_decode_cpu_seconds_total").await?;
        let frames = metric(&server, "confab_snapshot_frames_decoded_total").await?;
        let encode = metric(&server, "confab_snapshot_encode_cpu_seconds_total").await?;
        let jpegs = metric(&server, "confab_snapshot_jpegs_encoded_total").await?;
        println!(
            "snapshot CPU (this build): decode {:.2} ms per 640x360 picture ({frames} pictures), JPEG {:.2} ms each ({jpegs})",
            decode * 1e3 / frames.max(1.0),
            encode * 1e3 / jpegs.max(1.0)
        );
        push.tool.kill().await?;
        Ok(())
    })
    .await
}

/// A protected room's pictures need its token or the operator's key, like its other reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictures_follow_room_access() -> Result<()> {
    let server = TestServer::start_with_config(
        "api_key = \"operator-key\"\n[[room]]\nname = \"vault\"\nrequire_token = true\n",
    )
    .await?;
    run_on(server, Duration::from_secs(30), |server| async move {
        for route in ["frame.jpeg", "stream.mjpeg"] {
            let path = format!("/api/rooms/vault/participants/cam/{route}");
            for token in ["", "?token=not-a-token"] {
                let r = server
                    .http_request("GET", &format!("{path}{token}"), &[], &[])
                    .await?;
                ensure!(
                    r.status == 401,
                    "GET {path}{token}: {} {}",
                    r.status,
                    r.text()
                );
            }
            // The operator gets through the check, to find nobody there.
            let r = server
                .http_request(
                    "GET",
                    &path,
                    &[("Authorization", "Bearer operator-key")],
                    &[],
                )
                .await?;
            ensure!(
                r.status == 404,
                "GET {path} as the operator: {} {}",
                r.status,
                r.text()
            );
        }
        Ok(())
    })
    .await
}
