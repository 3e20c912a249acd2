//! A camera's low layer (`bridge/low_layer.rs`, `media/low_layer.rs`): ffmpeg pushes a
//! 640x360 H.264 camera over RTSP; a webrtc-rs subscriber that asks for layer 0 (the page's
//! `{"type": "quality", "track", "layer": 0}` for a small tile) decodes the bridge's 320x180
//! transcode of it (openh264, in the test peer), and once it asks for the full layer again it
//! decodes the camera's 640x360 and the transcoder stops (`confab_low_layer_transcoders` back to
//! 0) a hold time later.
//!
//! Needs ffmpeg. Run: `cargo test -p confab --test e2e camera_low_layer -- --nocapture`.
//!
//! Cost of a 720p camera's low layer (ignored by default; build the server in release and run
//! the test against it):
//! `cargo build --release -p confab && CONFAB_E2E_BIN=$PWD/target/release/confab cargo test -p
//! confab --test e2e camera_low_layer_cost -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use crate::common::mjpeg::metric;
use crate::common::rtsp::{rtsp_url, FfmpegPush, Push, PushAudio, Transport};
use crate::common::PeerConfig;
use crate::common::{expect_clean, heavy, run_with_server, Peer};

/// How long a camera may take to show its first frames at a subscriber.
const FIRST_MEDIA: Duration = Duration::from_secs(20);
/// The engine's hold time before a low layer nobody needs is stopped (`media::low_layer`).
const HOLD: Duration = Duration::from_secs(5);

/// The id of `viewer`'s video track from `camera`, as its latest offer names it.
fn video_track(viewer: &Peer, camera: &str) -> Result<String> {
    viewer
        .state(|s| {
            s.latest_offer()?
                .tracks
                .iter()
                .find(|t| t.participant == camera && t.kind == "video")
                .map(|t| t.track.clone())
        })
        .with_context(|| format!("{} is offered no video from {camera}", viewer.id))
}

/// Waits until `viewer` decodes `frames` more pictures of `size` from `camera`.
async fn expect_pictures(
    viewer: &Peer,
    camera: &str,
    size: (usize, usize),
    frames: u64,
    within: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    viewer
        .wait_until(
            &format!("pictures of {}x{} from {camera}", size.0, size.1),
            within,
            |s| s.remote(camera).decoded_size == Some(size),
        )
        .await?;
    let took = t0.elapsed();
    let base = viewer.state(|s| s.remote(camera).frames_decoded);
    viewer
        .wait_until(
            &format!(
                "{frames} more pictures of {}x{} from {camera}",
                size.0, size.1
            ),
            within,
            |s| {
                let r = s.remote(camera);
                r.decoded_size == Some(size) && r.frames_decoded >= base + frames
            },
        )
        .await?;
    Ok(took)
}

/// Waits until the metric `name` is `want`; returns how long it took.
async fn wait_metric(
    server: &crate::common::TestServer,
    name: &str,
    want: f64,
    within: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let v = metric(server, name).await?;
        if v == want {
            return Ok(t0.elapsed());
        }
        ensure!(
            t0.elapsed() < within,
            "{name} is {v}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_low_layer_for_a_small_tile() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "lowlayer";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let push = Push::h264_opus(Transport::Tcp).audio(PushAudio::None);
        let mut cam = FfmpegPush::spawn(&rtsp_url(&server, room, "cam"), push)?;
        expect_pictures(&viewer, "cam", (640, 360), 30, FIRST_MEDIA).await?;
        ensure!(
            metric(&server, "confab_low_layer_transcoders").await? == 0.0,
            "a low layer is made before anyone asked for it"
        );

        // A thumbnail: the page asks for layer 0.
        let track = video_track(&viewer, "cam")?;
        viewer.send_raw(json!({"type": "quality", "track": track, "layer": 0}))?;
        let took = expect_pictures(&viewer, "cam", (320, 180), 60, Duration::from_secs(15)).await?;
        println!("320x180 pictures {took:?} after asking for layer 0");
        ensure!(
            metric(&server, "confab_low_layer_transcoders").await? == 1.0,
            "one transcoder runs"
        );
        let frames = metric(&server, "confab_low_layer_frames_total").await?;
        let cpu = metric(&server, "confab_low_layer_cpu_seconds_total").await?;
        ensure!(frames >= 60.0 && cpu > 0.0, "frames {frames}, CPU {cpu} s");
        println!(
            "low layer: {frames} pictures, {:.2} ms of CPU each (debug build)",
            cpu * 1000.0 / frames
        );

        // The full tile again: the camera's own pictures, and the transcoder stops after
        // the hold.
        let asked = Instant::now();
        viewer.send_raw(json!({"type": "quality", "track": track, "layer": 2}))?;
        let took = expect_pictures(&viewer, "cam", (640, 360), 30, Duration::from_secs(10)).await?;
        println!("640x360 pictures {took:?} after asking for layer 2");
        let stopped = wait_metric(
            &server,
            "confab_low_layer_transcoders",
            0.0,
            HOLD + Duration::from_secs(10),
        )
        .await?;
        let after = asked.elapsed();
        println!("transcoder stopped {after:?} after asking for layer 2");
        ensure!(
            after + Duration::from_millis(500) >= HOLD,
            "stopped after {after:?} (waited {stopped:?}), before the hold of {HOLD:?}"
        );
        ensure!(
            cam.tool.is_running(),
            "ffmpeg stopped: {}",
            cam.tool.stderr()
        );
        let (r, summary) = viewer.state(|s| (s.remote("cam"), s.summary()));
        ensure!(
            r.decode_errors == 0,
            "decode errors across the switches: {r:?}\n{summary}"
        );
        expect_clean(&viewer)?;
        cam.tool.kill().await?;
        Ok(())
    })
    .await
}

/// The transcoder's CPU per minute for a 30 fps camera of `CONFAB_LOW_LAYER_SIZE` (default
/// `1280x720`), from its metric (see the module comment for how to run it against a release
/// build), and the low layer's bitrate (what the server forwarded to the one viewer, who
/// receives nothing else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn camera_low_layer_cost() -> Result<()> {
    let _heavy = heavy().await;
    let size: &'static str = std::env::var("CONFAB_LOW_LAYER_SIZE")
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .unwrap_or("1280x720");
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .context("CONFAB_LOW_LAYER_SIZE is WIDTHxHEIGHT")?;
    run_with_server(Duration::from_secs(240), |server| async move {
        let room = "lowcost";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let push = Push::h264_opus(Transport::Tcp)
            .audio(PushAudio::None)
            .size(size);
        let mut cam = FfmpegPush::spawn(&rtsp_url(&server, room, "cam"), push)?;
        expect_pictures(&viewer, "cam", (w, h), 30, FIRST_MEDIA).await?;
        let track = video_track(&viewer, "cam")?;
        viewer.send_raw(json!({"type": "quality", "track": track, "layer": 0}))?;
        expect_pictures(&viewer, "cam", (320, 180), 30, Duration::from_secs(15)).await?;
        let names = [
            "confab_low_layer_frames_total",
            "confab_low_layer_cpu_seconds_total",
            "confab_forwarded_bytes_total",
            "confab_received_bytes_total",
        ];
        let mut before = Vec::new();
        for n in names {
            before.push(metric(&server, n).await?);
        }
        let window = Duration::from_secs(60);
        tokio::time::sleep(window).await;
        let mut d = Vec::new();
        for (n, b) in names.iter().zip(&before) {
            d.push(metric(&server, n).await? - b);
        }
        let (frames, cpu, forwarded, received) = (d[0], d[1], d[2], d[3]);
        let kbps = |bytes: f64| bytes * 8.0 / window.as_secs_f64() / 1000.0;
        println!(
            "{size} 30 fps camera's low layer over {window:?}: {frames} pictures, {cpu:.2} s of \
             CPU ({:.1} % of a core, {:.2} ms a picture); low layer {:.0} kbit/s, camera {:.0} \
             kbit/s (RTP payloads)",
            cpu * 100.0 / window.as_secs_f64(),
            cpu * 1000.0 / frames.max(1.0),
            kbps(forwarded),
            kbps(received - forwarded),
        );
        ensure!(
            cam.tool.is_running(),
            "ffmpeg stopped: {}",
            cam.tool.stderr()
        );
        cam.tool.kill().await?;
        Ok(())
    })
    .await
}
