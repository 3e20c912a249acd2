//! The RTSP bridge against real peers: ffmpeg pushing cameras (H.264 with Opus, AAC or G.711;
//! MJPEG; TCP and UDP), the GStreamer camera of `scripts/rtsp-camera.py` pulled through the
//! REST API or the config file, ffmpeg and ffprobe playing participants back, and webrtc-rs
//! subscribers decoding what the cameras send. Pictures are checked by size (a camera's are
//! not our test pattern, see `RemoteStats::frames_decoded`), sound by decoding it and finding
//! the cameras' 440 Hz sine; a browser participant played back over RTSP must show its own
//! test pattern.
//!
//! Needs ffmpeg/ffprobe and GStreamer with its RTSP server and Python bindings (Debian:
//! ffmpeg gstreamer1.0-tools gstreamer1.0-rtsp gstreamer1.0-plugins-good
//! gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
//! gir1.2-gst-rtsp-server-1.0 python3-gi; `scripts/setup.sh` installs them).
//!
//! Latency (ignored by default):
//! `cargo test --release -p confab --test e2e rtsp_latency -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::common::media::{self, check_frame};
use crate::common::rtsp::{
    add_camera, cameras, ffmpeg_luma_frames, ffmpeg_play, ffmpeg_tone, ffprobe, ffprobe_error,
    measure_tone, percentile, room_participant, rtsp_url, run_on_server, track_codecs, unused_port,
    wait_camera, CameraOptions, FfmpegPush, GstCamera, Push, PushAudio, PushVideo, RtspConn,
    RtspH264Pusher, Tool, Transport,
};
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::common::{expect_clean, heavy, run_with_server, Peer, PeerConfig, TestServer};

/// Frames a subscriber must decode from a camera before the test believes it.
const FRAMES: u64 = 30;
/// Audio packets a subscriber must receive from a camera.
const AUDIO: u64 = 25;
/// How long a camera may take to show its first frames at a subscriber (ffmpeg's start,
/// the first keyframe after at most 2 s, the subscriber's ICE and DTLS).
const FIRST_MEDIA: Duration = Duration::from_secs(20);
/// A camera that is gone must have left the room within this.
const GONE: Duration = Duration::from_secs(5);
/// A pulled camera that restarts must reach a viewer within this: the puller's retry delay,
/// the RTSP session, the first keyframe.
const PULL_RETURN_BOUND: Duration = Duration::from_secs(20);

/// How a test stops a pushing ffmpeg.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL: the connection closes without TEARDOWN.
    Kill,
    /// SIGTERM: ffmpeg sends TEARDOWN.
    Term,
}

/// Waits until `viewer` has decoded `frames` more pictures and received `audio` more audio
/// packets from camera `id`; checks they are the camera's 640x360 pictures. `feeder` is the
/// process behind the camera: if it exits first, the wait ends at once with what it said.
async fn expect_camera_media(
    viewer: &Peer,
    id: &str,
    frames: u64,
    audio: u64,
    within: Duration,
    feeder: &mut Tool,
) -> Result<()> {
    let (base_frames, base_audio) = viewer.state(|s| {
        let r = s.remote(id);
        (r.frames_decoded, r.audio_rtp_packets)
    });
    let what = format!("{frames} more decoded pictures and {audio} more audio packets from {id}");
    let waited = tokio::select! {
        r = viewer.wait_until(&what, within, |s| {
            s.decoding_from(id, base_frames + frames, base_audio + audio)
        }) => r,
        exit = feeder.wait_exit(within + Duration::from_secs(1)) => match exit {
            Ok(status) => Err(anyhow::anyhow!(
                "{} exited ({status}) while {} waited for {what}; state:\n{}",
                feeder.what(),
                viewer.id,
                viewer.state(|s| s.summary())
            )),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = waited {
        bail!(
            "{e:#}\n--- {} (progress {:?}) stderr:\n{}",
            feeder.what(),
            feeder
                .stdout_lines()
                .iter()
                .rev()
                .find(|l| l.starts_with("frame=")),
            feeder.stderr()
        );
    }
    let (r, summary) = viewer.state(|s| (s.remote(id), s.summary()));
    ensure!(
        r.decoded_size == Some((640, 360)),
        "{} decodes pictures of {:?} from {id}, expected the camera's 640x360\n{summary}",
        viewer.id,
        r.decoded_size
    );
    // What the server offers now (a camera that reconnected has new tracks; the old ones are
    // gone from the offer, though the viewer saw them arrive once).
    let (video, audio) = viewer.state(|s| {
        let offered = s
            .latest_offer()
            .map(|o| o.tracks.clone())
            .unwrap_or_default();
        let count = |kind: &str| {
            offered
                .iter()
                .filter(|t| t.participant == id && t.kind == kind)
                .count()
        };
        (count("video"), count("audio"))
    });
    ensure!(
        video == 1 && audio <= 1,
        "{} is offered {video} video and {audio} audio tracks from {id}, expected one of each at most\n{summary}",
        viewer.id,
    );
    Ok(())
}

/// Decodes the Opus that `viewer` received from camera `id` (mousiki) and checks that it is
/// the camera's 440 Hz sine: whatever the camera sent (Opus, AAC), browsers must hear it.
async fn expect_sine_at(viewer: &Peer, id: &str) -> Result<()> {
    viewer
        .wait_until(
            &format!("2 s of audio from {id}"),
            Duration::from_secs(10),
            |s| s.audio_capture.get(id).is_some_and(|c| c.len() >= 100),
        )
        .await?;
    let packets = viewer.state(|s| s.audio_capture.get(id).cloned().unwrap_or_default());
    ensure!(
        packets.len() >= 100,
        "{} captured only {} audio packets from {id}",
        viewer.id,
        packets.len()
    );
    // Browsers are told opus/48000/2; decode as stereo and keep the first channel.
    let mut decoder = mousiki::Decoder::new(48_000, mousiki::Channels::Stereo)
        .map_err(|e| anyhow::anyhow!("opus decoder: {e:?}"))?;
    let mut pcm = vec![0f32; 5760 * 2];
    let mut mono = Vec::new();
    let mut errors = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        match decoder.decode_float(p, &mut pcm, false) {
            Ok(n) => mono.extend(pcm[..n * 2].iter().step_by(2).map(|v| f64::from(*v))),
            Err(e) => errors.push(format!("packet {i} ({} bytes): {e:?}", p.len())),
        }
    }
    ensure!(
        errors.is_empty(),
        "{} cannot decode {} of {} Opus packets from {id}: {:?}",
        viewer.id,
        errors.len(),
        packets.len(),
        &errors[..errors.len().min(5)]
    );
    // Skip the first 200 ms (the encoder's and decoder's start).
    let tone = measure_tone(&mono[mono.len().min(9600)..], 48_000.0);
    ensure!(
        (tone.hz - 440.0).abs() < 15.0 && tone.rms > 0.03,
        "the Opus {} received from {id} is not the camera's 440 Hz sine: {tone:?}",
        viewer.id
    );
    println!(
        "{} hears {id}: {:.1} Hz, rms {:.3}, {:.1} s in {} packets",
        viewer.id,
        tone.hz,
        tone.rms,
        tone.seconds,
        packets.len()
    );
    Ok(())
}

/// Waits (polling REST, bounded) until `GET /api/rooms/{room}` lists `id`; returns its JSON.
async fn rest_participant(
    server: &TestServer,
    room: &str,
    id: &str,
    within: Duration,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = room_participant(server, room, id).await? {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            bail!("GET /api/rooms/{room} does not list {id} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The camera `id` is listed with kind `camera`, H.264 video and `audio` (`opus` for Opus
/// and for AAC, which is transcoded; `PCMU` for G.711), both by REST and in the viewer's
/// signaling.
async fn expect_camera_listed(
    server: &TestServer,
    viewer: &Peer,
    room: &str,
    id: &str,
    audio: Option<&str>,
) -> Result<()> {
    let p = rest_participant(server, room, id, Duration::from_secs(5)).await?;
    ensure!(
        p["kind"] == "camera",
        "GET /api/rooms/{room}: {id} has kind {}, expected \"camera\": {p}",
        p["kind"]
    );
    let mut want = vec![("video".to_string(), "H264".to_string())];
    if let Some(codec) = audio {
        want.insert(0, ("audio".to_string(), codec.to_string()));
    }
    let got: Vec<(String, String)> = track_codecs(&p)
        .into_iter()
        .map(|(k, c)| {
            (
                k,
                if c.eq_ignore_ascii_case("opus") {
                    "opus".into()
                } else {
                    c
                },
            )
        })
        .collect();
    ensure!(
        got == want,
        "GET /api/rooms/{room}: {id} has tracks {got:?}, expected {want:?}: {p}"
    );
    let kind = viewer.state(|s| s.participants.get(id).map(|p| p.kind.clone()));
    ensure!(
        kind.as_deref() == Some("camera"),
        "{} sees {id} with kind {kind:?} in signaling, expected \"camera\"",
        viewer.id
    );
    Ok(())
}

/// Waits until `id` has left: `participant_left` at the viewer and gone from REST.
async fn expect_gone(server: &TestServer, viewer: &Peer, room: &str, id: &str) -> Result<()> {
    let t0 = Instant::now();
    viewer
        .wait_until(&format!("{id} to leave"), GONE, |s| s.has_left(id))
        .await?;
    let left_after = t0.elapsed();
    if let Some(p) = room_participant(server, room, id).await? {
        bail!("{id} left in signaling but GET /api/rooms/{room} still lists it: {p}");
    }
    println!("{room}/{id} gone after {left_after:?}");
    Ok(())
}

/// ffmpeg pushes a camera; a subscriber decodes it; stopping ffmpeg removes it.
async fn push_case(room: &'static str, push: Push, stop: Stop) -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(90), |server| async move {
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let mut cam = FfmpegPush::spawn(&rtsp_url(&server, room, "cam"), push)?;
        // The test peer takes Opus only (a browser would take G.711 too).
        let audio = match push.audio {
            PushAudio::Opus | PushAudio::Aac => AUDIO,
            PushAudio::Pcmu | PushAudio::None => 0,
        };
        expect_camera_media(&viewer, "cam", FRAMES, audio, FIRST_MEDIA, &mut cam.tool).await?;
        let codec = match push.audio {
            PushAudio::Opus | PushAudio::Aac => Some("opus"),
            PushAudio::Pcmu => Some("PCMU"),
            PushAudio::None => None,
        };
        expect_camera_listed(&server, &viewer, room, "cam", codec).await?;
        if audio > 0 {
            expect_sine_at(&viewer, "cam").await?;
        }
        // One camera is far from filling the engine's data queue: the bridge dropped nothing.
        let (_, metrics) = server.http_get("/metrics").await?;
        ensure!(
            metrics
                .lines()
                .any(|l| l == "confab_camera_dropped_packets_total 0"),
            "the bridge dropped camera packets:\n{metrics}"
        );
        ensure!(
            cam.tool.is_running(),
            "ffmpeg stopped while publishing: {}",
            cam.tool.stderr()
        );
        match stop {
            Stop::Kill => cam.tool.kill().await?,
            Stop::Term => {
                cam.tool.terminate(Duration::from_secs(10)).await?;
            }
        }
        expect_gone(&server, &viewer, room, "cam").await?;
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_h264_opus_over_tcp() -> Result<()> {
    push_case("push-tcp", Push::h264_opus(Transport::Tcp), Stop::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_h264_aac_over_tcp() -> Result<()> {
    let push = Push::h264_opus(Transport::Tcp).audio(PushAudio::Aac);
    push_case("push-aac", push, Stop::Term).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_h264_opus_over_udp() -> Result<()> {
    push_case("push-udp", Push::h264_opus(Transport::Udp), Stop::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_h264_aac_over_udp() -> Result<()> {
    let push = Push::h264_opus(Transport::Udp).audio(PushAudio::Aac);
    push_case("push-aac-udp", push, Stop::Term).await
}

/// G.711 audio: forwarded as PCMU (browsers take it); the test peer, which takes only Opus,
/// must still get the video, i.e. the subscribe offer must not break on the audio track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_h264_pcmu_over_tcp() -> Result<()> {
    let push = Push::h264_opus(Transport::Tcp).audio(PushAudio::Pcmu);
    push_case("push-pcmu", push, Stop::Kill).await
}

/// MJPEG cannot go to browsers as it is: it arrives as H.264 pictures of the same size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mjpeg_arrives_as_h264() -> Result<()> {
    let push = Push::h264_opus(Transport::Tcp).video(PushVideo::Mjpeg);
    push_case("push-mjpeg", push, Stop::Kill).await
}

/// A second publisher for an id that is live is refused; the first one keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_of_a_live_id_is_refused() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(90), |server| async move {
        let room = "push-dup";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let url = rtsp_url(&server, room, "cam");
        let mut first = FfmpegPush::spawn(&url, Push::h264_opus(Transport::Tcp))?;
        expect_camera_media(&viewer, "cam", FRAMES, AUDIO, FIRST_MEDIA, &mut first.tool)
        .await?;

        let mut second = FfmpegPush::spawn(&url, Push::h264_opus(Transport::Tcp))?;
        let status = second.tool.wait_exit(Duration::from_secs(15)).await?;
        let said = second.tool.stderr();
        ensure!(
            !status.success(),
            "the second publisher of {url} exited with {status}, expected a failure; stderr:\n{said}"
        );
        ensure!(
            said.contains("409") || said.to_lowercase().contains("conflict"),
            "the second publisher of {url} failed, but not with 409 Conflict:\n{said}"
        );
        println!("second publisher refused: {}", said.lines().next().unwrap_or(""));

        // The first one goes on: still running, still decoded, the only camera in the room.
        expect_camera_media(&viewer, "cam", FRAMES, AUDIO, Duration::from_secs(10), &mut first.tool)
        .await?;
        ensure!(
            first.tool.is_running(),
            "the first publisher stopped: {}",
            first.tool.stderr()
        );
        let ids: Vec<String> = crate::common::rtsp::room_participants(&server, room)
            .await?
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect();
        ensure!(
            ids.iter().filter(|i| i.starts_with("cam")).count() == 1,
            "the room lists {ids:?}; the refused publisher must not join as another camera"
        );
        ensure!(
            !viewer.state(|s| s.has_left("cam")),
            "the live camera left when the second publisher was refused"
        );
        first.tool.kill().await?;
        expect_gone(&server, &viewer, room, "cam").await
    })
    .await
}

/// Pulls the GStreamer camera through the REST API: live, down (retrying with an error),
/// back on the same port (live again, frames resume), deleted (leaves the room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_camera_lifecycle() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(150), |server| async move {
        let room = "pull";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let opts = CameraOptions::default();
        let mut camera = GstCamera::start(0, &opts).await?;
        let port = camera.port;

        let r = add_camera(&server, room, "gst", &camera.url).await?;
        ensure!(
            r.status == 201,
            "POST /api/rooms/{room}/cameras: {} {}",
            r.status,
            r.text()
        );
        let body = r.json()?;
        ensure!(
            body["name"] == "gst",
            "201 body does not name the camera: {body}"
        );
        let again = add_camera(&server, room, "gst", &camera.url).await?;
        ensure!(
            again.status == 409,
            "a second POST of camera gst: {} {} (expected 409)",
            again.status,
            again.text()
        );
        ensure!(
            again
                .json()
                .map(|v| v["error"].is_string())
                .unwrap_or(false),
            "the 409 has no JSON error: {}",
            again.text()
        );

        let t0 = Instant::now();
        wait_camera(&server, room, "gst", "live", Duration::from_secs(10), |c| {
            c.state == "live"
        })
        .await?;
        println!("pulled camera live after {:?}", t0.elapsed());
        expect_camera_media(&viewer, "gst", FRAMES, AUDIO, FIRST_MEDIA, &mut camera.tool).await?;
        expect_camera_listed(&server, &viewer, room, "gst", Some("opus")).await?;

        // The camera dies.
        camera.tool.kill().await?;
        let down = wait_camera(
            &server,
            room,
            "gst",
            "retrying",
            Duration::from_secs(15),
            |c| c.state == "retrying",
        )
        .await?;
        let error = down.error.clone().unwrap_or_default();
        ensure!(
            !error.trim().is_empty(),
            "a camera that is down is `retrying` without an error text: {}",
            down.json
        );
        println!("camera down: {}", down.json);

        // It comes back on the same address.
        let mut camera = GstCamera::start(port, &opts).await?;
        let t1 = Instant::now();
        wait_camera(
            &server,
            room,
            "gst",
            "live again",
            Duration::from_secs(20),
            |c| c.state == "live",
        )
        .await?;
        println!("camera live again {:?} after it restarted", t1.elapsed());
        expect_camera_media(&viewer, "gst", FRAMES, AUDIO, FIRST_MEDIA, &mut camera.tool).await?;
        // The viewer stayed in the room all along (a fault test: the camera disappears and
        // returns; the pushed camera's counterpart is in faults.rs).
        let back = t1.elapsed();
        println!(
            "faults/camera-return pulled: {FRAMES} pictures at the viewer {back:.1?} after the camera restarted (bound {PULL_RETURN_BOUND:?})"
        );
        ensure!(
            back <= PULL_RETURN_BOUND,
            "the returning camera took {back:?} to reach the viewer"
        );

        // Stop pulling.
        let r = server
            .http_request(
                "DELETE",
                &format!("/api/rooms/{room}/cameras/gst"),
                &[],
                &[],
            )
            .await?;
        ensure!(
            r.status == 204,
            "DELETE camera gst: {} {}",
            r.status,
            r.text()
        );
        expect_gone(&server, &viewer, room, "gst").await?;
        let listed = cameras(&server, room).await?;
        ensure!(
            listed.iter().all(|c| c.name != "gst"),
            "GET cameras still lists gst after DELETE: {:?}",
            listed.iter().map(|c| &c.json).collect::<Vec<_>>()
        );
        let r = server
            .http_request(
                "DELETE",
                &format!("/api/rooms/{room}/cameras/gst"),
                &[],
                &[],
            )
            .await?;
        ensure!(
            r.status == 404,
            "DELETE of a camera that is gone: {} {} (expected 404)",
            r.status,
            r.text()
        );
        camera.tool.kill().await?;
        Ok(())
    })
    .await
}

/// A camera that is down when it is added goes live once it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_camera_that_starts_later() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "pull-late";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let port = unused_port()?;
        let url = format!("rtsp://127.0.0.1:{port}/cam");
        let r = add_camera(&server, room, "late", &url).await?;
        ensure!(
            r.status == 201,
            "POST camera with nobody listening at {url}: {} {} (expected 201: it retries)",
            r.status,
            r.text()
        );
        let waiting = wait_camera(
            &server,
            room,
            "late",
            "retrying",
            Duration::from_secs(10),
            |c| c.state == "retrying",
        )
        .await?;
        println!("camera not there yet: {}", waiting.json);
        ensure!(
            waiting
                .error
                .as_deref()
                .is_some_and(|e| !e.trim().is_empty()),
            "a camera that cannot be reached is `retrying` without an error text: {}",
            waiting.json
        );

        let mut camera = GstCamera::start(port, &CameraOptions::default()).await?;
        let t0 = Instant::now();
        wait_camera(
            &server,
            room,
            "late",
            "live",
            Duration::from_secs(20),
            |c| c.state == "live",
        )
        .await?;
        println!("camera live {:?} after it started", t0.elapsed());
        expect_camera_media(
            &viewer,
            "late",
            FRAMES,
            AUDIO,
            FIRST_MEDIA,
            &mut camera.tool,
        )
        .await?;
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// A pulled MJPEG camera with G.711 audio: its pictures reach the subscriber as H.264, and an
/// RTSP player hears its sine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mjpeg_pcmu_camera() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "pull-mjpeg";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let opts = CameraOptions {
            codec: "mjpeg",
            audio: "pcmu",
            ..CameraOptions::default()
        };
        let mut camera = GstCamera::start(0, &opts).await?;
        let r = add_camera(&server, room, "mj", &camera.url).await?;
        ensure!(r.status == 201, "POST camera mj: {} {}", r.status, r.text());
        wait_camera(&server, room, "mj", "live", Duration::from_secs(15), |c| {
            c.state == "live"
        })
        .await?;
        // The test peer takes Opus only, so it gets the video alone.
        expect_camera_media(&viewer, "mj", FRAMES, 0, FIRST_MEDIA, &mut camera.tool).await?;
        expect_camera_listed(&server, &viewer, room, "mj", Some("PCMU")).await?;
        let url = rtsp_url(&server, room, "mj");
        let tone = ffmpeg_tone(&url, Transport::Tcp, 3, Duration::from_secs(30)).await?;
        ensure!(
            (tone.hz - 440.0).abs() < 15.0 && tone.rms > 0.05,
            "the MJPEG camera's G.711 played over RTSP is not its 440 Hz sine: {tone:?}"
        );
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// A pulled H.264 camera with AAC audio: subscribers hear its sine as Opus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_aac_camera() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "pull-aac";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let opts = CameraOptions {
            audio: "aac",
            ..CameraOptions::default()
        };
        let mut camera = GstCamera::start(0, &opts).await?;
        let r = add_camera(&server, room, "aac", &camera.url).await?;
        ensure!(
            r.status == 201,
            "POST camera aac: {} {}",
            r.status,
            r.text()
        );
        wait_camera(&server, room, "aac", "live", Duration::from_secs(15), |c| {
            c.state == "live"
        })
        .await?;
        expect_camera_media(&viewer, "aac", FRAMES, AUDIO, FIRST_MEDIA, &mut camera.tool).await?;
        expect_camera_listed(&server, &viewer, room, "aac", Some("opus")).await?;
        expect_sine_at(&viewer, "aac").await?;
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// A subscriber that cannot take one camera's audio (G.711; the test peer offers Opus only,
/// so it rejects that m-section in its answer) still gets the tracks of a camera that comes
/// later: a rejected section must not break the next subscribe offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_track_does_not_block_later_ones() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(90), |server| async move {
        let room = "reject";
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let g711 = Push::h264_opus(Transport::Tcp).audio(PushAudio::Pcmu);
        let mut first = FfmpegPush::spawn(&rtsp_url(&server, room, "g711"), g711)?;
        expect_camera_media(&viewer, "g711", FRAMES, 0, FIRST_MEDIA, &mut first.tool).await?;
        let mut second = FfmpegPush::spawn(
            &rtsp_url(&server, room, "opus"),
            Push::h264_opus(Transport::Tcp),
        )?;
        expect_camera_media(
            &viewer,
            "opus",
            FRAMES,
            AUDIO,
            FIRST_MEDIA,
            &mut second.tool,
        )
        .await
        .context(
            "the second camera never reached a subscriber that had rejected the first one's \
                 G.711 audio (see `could not create a subscribe offer` in the server log)",
        )?;
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// An H.265 camera cannot be bridged (browsers are offered H.264): the camera's state says
/// so instead of pretending to be live with a picture nobody can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_h265_camera_is_reported() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(60), |server| async move {
        let room = "pull-hevc";
        let camera = GstCamera::start(
            0,
            &CameraOptions {
                codec: "h265",
                audio: "opus",
                ..CameraOptions::default()
            },
        )
        .await?;
        let r = add_camera(&server, room, "hevc", &camera.url).await?;
        ensure!(
            r.status == 201,
            "POST camera hevc: {} {}",
            r.status,
            r.text()
        );
        let c = wait_camera(
            &server,
            room,
            "hevc",
            "reported with its H.265 problem",
            Duration::from_secs(15),
            |c| {
                let said = format!("{} {}", c.state, c.error.as_deref().unwrap_or_default());
                said.contains("265") || said.to_lowercase().contains("hevc")
            },
        )
        .await?;
        println!("H.265 camera: {}", c.json);
        let p = room_participant(&server, room, "hevc").await?;
        println!("H.265 camera in the room: {p:?}");
        if let Some(p) = p {
            ensure!(
                !track_codecs(&p).iter().any(|(k, _)| k == "video"),
                "the H.265 camera is listed with a video track browsers cannot decode: {p}"
            );
        }
        Ok(())
    })
    .await
}

/// `[[camera]]` entries of the config file are pulled at start, over TCP and over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_cameras_from_config() -> Result<()> {
    let _heavy = heavy().await;
    let mut tcp_cam = GstCamera::start(0, &CameraOptions::default()).await?;
    let mut udp_cam = GstCamera::start(
        0,
        &CameraOptions {
            audio: "none",
            ..CameraOptions::default()
        },
    )
    .await?;
    let config = format!(
        "[[camera]]\nroom = \"cfg\"\nname = \"gate\"\nurl = \"{}\"\n\n\
         [[camera]]\nroom = \"cfg\"\nname = \"yard\"\nurl = \"{}\"\ntransport = \"udp\"\n",
        tcp_cam.url, udp_cam.url
    );
    let server = TestServer::start_with_config(&config)
        .await
        .with_context(|| format!("starting with the config\n{config}"))?;
    run_on_server(server, Duration::from_secs(120), |server| async move {
        let room = "cfg";
        for name in ["gate", "yard"] {
            wait_camera(&server, room, name, "live", Duration::from_secs(15), |c| {
                c.state == "live"
            })
            .await?;
        }
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        expect_camera_media(
            &viewer,
            "gate",
            FRAMES,
            AUDIO,
            FIRST_MEDIA,
            &mut tcp_cam.tool,
        )
        .await?;
        expect_camera_media(&viewer, "yard", FRAMES, 0, FIRST_MEDIA, &mut udp_cam.tool).await?;
        expect_camera_listed(&server, &viewer, room, "gate", Some("opus")).await?;
        expect_sine_at(&viewer, "gate").await?;
        expect_camera_listed(&server, &viewer, room, "yard", None).await?;
        expect_clean(&viewer)?;
        Ok(())
    })
    .await
}

/// ffprobe and ffmpeg play a browser-like participant (a webrtc-rs peer publishing our test
/// pattern) over TCP and UDP; the pictures they decode are that peer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_a_browser_participant() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let room = "play";
        let tag = 0x155;
        let alice = Peer::join(&server.ws_url(), PeerConfig::new(room, "Alice", tag)).await?;
        alice
            .wait_until("sending video", Duration::from_secs(15), |s| {
                s.sent_video_frames >= 10
            })
            .await?;
        let url = rtsp_url(&server, room, &alice.id);

        for transport in [Transport::Tcp, Transport::Udp] {
            let t = transport.as_str();
            let streams = ffprobe(&url, transport, 3, Duration::from_secs(30)).await?;
            let video = streams.iter().find(|s| s.kind == "video");
            let audio = streams.iter().find(|s| s.kind == "audio");
            ensure!(
                video.is_some_and(|v| v.codec == "h264"
                    && (v.width, v.height) == (Some(320), Some(240))
                    && v.frames >= 10),
                "ffprobe over {t}: expected 320x240 H.264 with decoded frames, got {streams:?}"
            );
            ensure!(
                audio.is_some_and(|a| a.codec == "opus"),
                "ffprobe over {t}: expected an Opus stream, got {streams:?}"
            );

            let frames = ffmpeg_luma_frames(
                &url,
                transport,
                20,
                (media::WIDTH, media::HEIGHT),
                Duration::from_secs(30),
            )
            .await?;
            let mut counters = std::collections::BTreeSet::new();
            for (i, y) in frames.iter().enumerate() {
                let info = check_frame(y, media::WIDTH, media::WIDTH, media::HEIGHT)
                    .map_err(|e| anyhow::anyhow!("ffmpeg over {t}, frame {i}: {e}"))?;
                ensure!(
                    info.tag == tag,
                    "ffmpeg over {t}: frame {i} carries tag {} instead of Alice's {tag}",
                    info.tag
                );
                counters.insert(info.counter);
            }
            ensure!(
                counters.len() >= 10,
                "ffmpeg over {t}: only {} distinct frames among 20: the picture does not move",
                counters.len()
            );

            let played = ffmpeg_play(&url, transport, 3, Duration::from_secs(30)).await?;
            ensure!(
                played.video_frames >= 30 && played.video_size == Some((320, 240)),
                "ffmpeg playing over {t} for 3 s: {played:?}"
            );
            println!(
                "browser participant over {t}: ffprobe {streams:?}; ffmpeg {} video frames",
                played.video_frames
            );
        }
        expect_clean(&alice)?;
        Ok(())
    })
    .await
}

/// A pushed camera played back over TCP and UDP: H.264 video and its audio both decode, and
/// the audio is the camera's 440 Hz sine (Opus as it came; AAC, which browsers cannot take,
/// however the bridge serves it).
async fn play_pushed_camera(room: &'static str, audio: PushAudio) -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let url = rtsp_url(&server, room, "cam");
        let mut cam = FfmpegPush::spawn(&url, Push::h264_opus(Transport::Tcp).audio(audio))?;
        cam.wait_streaming(30, Duration::from_secs(15)).await?;
        for transport in [Transport::Tcp, Transport::Udp] {
            let t = transport.as_str();
            let streams = ffprobe(&url, transport, 3, Duration::from_secs(30)).await?;
            let video = streams.iter().find(|s| s.kind == "video");
            let sound = streams.iter().find(|s| s.kind == "audio");
            ensure!(
                video.is_some_and(|v| v.codec == "h264"
                    && (v.width, v.height) == (Some(640), Some(360))
                    && v.frames >= 20),
                "ffprobe over {t}: expected 640x360 H.264 with decoded frames, got {streams:?}"
            );
            ensure!(
                sound.is_some_and(|a| a.frames >= 25),
                "ffprobe over {t}: expected audio with decoded frames, got {streams:?}"
            );
            if audio == PushAudio::Opus {
                ensure!(
                    sound.is_some_and(|a| a.codec == "opus"),
                    "ffprobe over {t}: the camera's Opus is played back as {streams:?}"
                );
            }
            let played = ffmpeg_play(&url, transport, 3, Duration::from_secs(30)).await?;
            ensure!(
                played.video_frames >= 45
                    && played.distinct_video >= 20
                    && played.video_size == Some((640, 360))
                    && played.audio_frames >= if audio == PushAudio::Pcmu { 10 } else { 50 },
                "ffmpeg playing the camera over {t} for 3 s: {played:?}"
            );
            let tone = ffmpeg_tone(&url, transport, 3, Duration::from_secs(30)).await?;
            ensure!(
                (tone.hz - 440.0).abs() < 15.0 && tone.rms > 0.05,
                "the camera's audio played over {t} is not its 440 Hz sine: {tone:?}"
            );
            println!(
                "camera ({audio:?}) over {t}: {} video frames ({} distinct), {} audio frames, {} {:?}; tone {:.1} Hz rms {:.3}",
                played.video_frames,
                played.distinct_video,
                played.audio_frames,
                sound.map(|a| a.codec.as_str()).unwrap_or("?"),
                sound.and_then(|a| a.sample_rate),
                tone.hz,
                tone.rms
            );
        }
        ensure!(cam.tool.is_running(), "ffmpeg stopped: {}", cam.tool.stderr());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_a_pushed_camera() -> Result<()> {
    play_pushed_camera("play-cam", PushAudio::Opus).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_a_pushed_aac_camera() -> Result<()> {
    play_pushed_camera("play-aac", PushAudio::Aac).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_a_pushed_pcmu_camera() -> Result<()> {
    play_pushed_camera("play-pcmu", PushAudio::Pcmu).await
}

/// DESCRIBE of a participant that does not exist is 404, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_unknown_is_404() -> Result<()> {
    run_with_server(Duration::from_secs(60), |server| async move {
        let room = "describe";
        let alice = Peer::join(&server.ws_url(), PeerConfig::new(room, "Alice", 3)).await?;
        alice
            .wait_until("sending video", Duration::from_secs(15), |s| {
                s.sent_video_frames >= 5
            })
            .await?;
        let mut c = RtspConn::connect(crate::common::rtsp::loopback(server.rtsp)).await?;
        for (what, url) in [
            ("unknown room", rtsp_url(&server, "nosuchroom", "x")),
            ("unknown participant", rtsp_url(&server, room, "nobody")),
        ] {
            let r = c
                .request("DESCRIBE", &url, &[("Accept", "application/sdp")], &[])
                .await?;
            ensure!(
                r.status == 404,
                "DESCRIBE of an {what} ({url}): {} {}, expected 404",
                r.status,
                r.reason
            );
        }
        // The same connection still serves: Alice is described.
        let url = rtsp_url(&server, room, &alice.id);
        let r = c
            .request("DESCRIBE", &url, &[("Accept", "application/sdp")], &[])
            .await?;
        let sdp = String::from_utf8_lossy(&r.body).to_string();
        ensure!(
            r.status == 200
                && r.header("content-type")
                    .is_some_and(|t| t.starts_with("application/sdp"))
                && sdp.contains("m=video")
                && sdp.contains("H264")
                && sdp.contains("m=audio"),
            "DESCRIBE of {url} after two 404s: {} {} {:?}\n{sdp}",
            r.status,
            r.reason,
            r.headers
        );
        let said =
            ffprobe_error(&rtsp_url(&server, room, "nobody"), Duration::from_secs(15)).await?;
        ensure!(
            said.contains("404"),
            "ffprobe of an unknown participant should report 404; it said:\n{said}"
        );
        Ok(())
    })
    .await
}

/// Measures (ignored by default; run with `--ignored --nocapture`, ideally `--release`):
/// - the latency the bridge adds: our own RTSP publisher sends the pre-encoded test pattern
///   (320x240, 20 fps) over TCP and records when each frame left; a webrtc-rs subscriber
///   decodes each frame and reads its counter from the pixels. Latency = decoded − sent
///   (includes about a millisecond of decoding);
/// - the time from a subscriber joining to its first decoded camera frame, with ffmpeg
///   pushing H.264 with a keyframe only every 4 s (a cached keyframe makes it fast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rtsp_latency() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(240), |server| async move {
        // 1. Added latency.
        let room = "lat";
        let tag = 0x2A;
        let viewer = Peer::join(
            &server.ws_url(),
            PeerConfig::new(room, "Viewer", 1).subscriber_only(),
        )
        .await?;
        let frames = tokio::task::spawn_blocking(move || media::encoded_loop(tag)).await??;
        let pusher = RtspH264Pusher::start(
            crate::common::rtsp::loopback(server.rtsp),
            room,
            "pattern",
            frames.clone(),
            media::FPS,
        )
        .await?;
        viewer
            .wait_until("first good frames", FIRST_MEDIA, |s| {
                s.receiving_from("pattern", 20, 0)
            })
            .await?;
        let start = Instant::now();
        let measure = Duration::from_secs(20);
        let goal = (media::FPS as u64) * measure.as_secs() * 9 / 10;
        let base = viewer.state(|s| s.remote("pattern").frames_good);
        viewer
            .wait_until(
                "frames to measure",
                measure + Duration::from_secs(10),
                |s| s.remote("pattern").frames_good >= base + goal,
            )
            .await?;
        pusher.check_running()?;
        let sent = pusher.sent.lock().unwrap().clone();
        let log = viewer.state(|s| s.good_frame_log.get("pattern").cloned().unwrap_or_default());
        let mut lat = Vec::new();
        for (at, counter) in log.iter().filter(|(at, _)| *at >= start) {
            // The frame with this counter that was sent last before it was decoded (the
            // counter repeats every LOOP_FRAMES frames: 3 s).
            let send = sent
                .iter()
                .rev()
                .find(|(t, i)| t <= at && *i == *counter as usize);
            if let Some((t, _)) = send {
                lat.push(at.duration_since(*t).as_secs_f64() * 1000.0);
            }
        }
        ensure!(
            lat.len() as u64 >= goal / 2,
            "only {} frames matched",
            lat.len()
        );
        let n = lat.len();
        let p50 = percentile(&mut lat, 50.0);
        let p99 = percentile(&mut lat, 99.0);
        let max = percentile(&mut lat, 100.0);
        println!("bridge-latency-ms p50={p50:.1} p99={p99:.1} max={max:.1} n={n}");
        drop(pusher);
        drop(viewer);

        // 2. Join to first frame with a 4 s GOP.
        let push = Push::h264_opus(Transport::Tcp).video(PushVideo::H264 { gop: 120 });
        let mut cam = FfmpegPush::spawn(&rtsp_url(&server, "join", "cam"), push)?;
        cam.wait_streaming(150, Duration::from_secs(20)).await?;
        let mut joins = Vec::new();
        let ms = |from: Instant, to: Instant| to.duration_since(from).as_millis();
        for i in 0..10u16 {
            let t0 = Instant::now();
            let viewer = Peer::join(
                &server.ws_url(),
                PeerConfig::new("join", &format!("Viewer {i}"), 10 + i).subscriber_only(),
            )
            .await?;
            let joined = Instant::now();
            viewer
                .wait_until("subscribe connection", Duration::from_secs(10), |s| {
                    s.subscribe_pc == Some(RTCPeerConnectionState::Connected)
                })
                .await?;
            let connected = Instant::now();
            viewer
                .wait_until("first camera frame", Duration::from_secs(10), |s| {
                    s.remote("cam").first_decoded_at.is_some()
                })
                .await
                .with_context(|| format!("ffmpeg: {}", cam.tool.stderr()))?;
            let r = viewer.state(|s| s.remote("cam"));
            let first = r.first_decoded_at.expect("waited for it");
            let packet = r.first_video_packet_at.unwrap_or(first);
            println!(
                "join {i}: joined +{} ms, connected +{} ms, first video packet +{} ms, first picture +{} ms ({} frames skipped waiting for an IDR, {} dropped, last drop {:?})",
                ms(t0, joined),
                ms(t0, connected),
                ms(t0, packet),
                ms(t0, first),
                r.frames_skipped,
                r.frames_dropped,
                r.last_drop
            );
            joins.push(first.duration_since(t0).as_secs_f64() * 1000.0);
            viewer.leave().await?;
            // Spread the joins over the 4 s GOP.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let values: Vec<String> = joins.iter().map(|v| format!("{v:.0}")).collect();
        let p50 = percentile(&mut joins, 50.0);
        let max = percentile(&mut joins, 100.0);
        println!(
            "camera-join-to-first-frame-ms p50={p50:.0} max={max:.0} values=[{}]",
            values.join(", ")
        );
        cam.tool.kill().await?;
        Ok(())
    })
    .await
}
