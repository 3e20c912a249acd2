//! `rtsp`: ffmpeg pushes a camera stream (H.264 without B-frames + Opus) into a room over RTSP
//! (`rtsp://host:port/{room}/cam`), M WebRTC subscribers watch it. confab only.
//!
//! The stream is encoded once to a file and then pushed with `-stream_loop -1 -c copy`, so
//! ffmpeg costs the generator's core almost nothing. The bridge re-packetizes and drops SEI, so
//! no send-time stamp survives: this scenario reports throughput, loss and server CPU, not
//! latency.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::process::Command;

use super::{heard_anything, leave_all, Run};
use crate::measure::Baseline;
use crate::process::{self, TempDir};
use crate::report::{Capacity, Step};

use super::fanout::Ramp;

async fn run_ffmpeg(ffmpeg: &str, args: &[&str], within: Duration) -> Result<()> {
    let mut child = Command::new(ffmpeg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {ffmpeg}"))?;
    let stderr = child.stderr.take();
    let status = tokio::time::timeout(within, child.wait())
        .await
        .map_err(|_| anyhow!("ffmpeg did not finish within {within:?}"))??;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut s) = stderr {
            use tokio::io::AsyncReadExt;
            let _ = s.read_to_string(&mut err).await;
        }
        bail!("ffmpeg failed ({status}): {err}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn rtsp(
    run: &Run<'_>,
    ffmpeg: &str,
    width: usize,
    height: usize,
    fps: u32,
    bitrate_bps: u32,
    ramp: Ramp,
) -> Result<(Vec<Step>, Capacity)> {
    let Some(rtsp) = run.server.rtsp else {
        bail!("the rtsp scenario needs a confab server this tool started (its RTSP port)");
    };
    let room = "bench-rtsp";
    let dir = TempDir::new("confab-bench-rtsp")?;
    let file = dir.0.join("loop.mkv");
    let file_s = file.to_string_lossy().to_string();
    let size = format!("testsrc2=size={width}x{height}:rate={fps}");
    let kbps = format!("{}k", bitrate_bps / 1000);
    let buf = format!("{}k", 2 * bitrate_bps / 1000);
    let gop = (2 * fps).to_string();
    run_ffmpeg(
        ffmpeg,
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &size,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-bf",
            "0",
            "-g",
            &gop,
            "-b:v",
            &kbps,
            "-maxrate",
            &kbps,
            "-bufsize",
            &buf,
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-ac",
            "2",
            &file_s,
        ],
        Duration::from_secs(120),
    )
    .await
    .context("encoding the camera loop")?;
    let empty = process::rss_kib(run.server.pid).ok();
    let url = format!("rtsp://{rtsp}/{room}/cam");
    let mut push = Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
            &file_s,
            "-c",
            "copy",
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
            &url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {ffmpeg} to push {url}"))?;
    // The camera is in the room once it records; give it its first keyframe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Ok(Some(status)) = push.try_wait() {
        bail!("ffmpeg pushing {url} exited: {status}");
    }
    let base = Baseline {
        empty_kib: empty,
        publishers_kib: process::rss_kib(run.server.pid).ok(),
        participants: 1,
        subscribers: 0,
    };
    let r = run
        .ramp(
            room,
            &[],
            ramp.start,
            ramp.step,
            ramp.max,
            heard_anything,
            base,
            1,
        )
        .await;
    let _ = push.kill().await;
    let (steps, cap, subs) = r?;
    leave_all(subs, run.join_parallel).await;
    Ok((steps, cap))
}
