//! Real RTSP peers for the bridge's end-to-end tests: ffmpeg publishing a camera (ANNOUNCE +
//! RECORD), the GStreamer test camera of `scripts/rtsp-camera.py` for pulling, ffmpeg and
//! ffprobe as players, a raw RTSP client for exact status codes, and a small RTSP publisher of
//! our own whose every frame has a known send instant (for latency measurements).
//!
//! Every child process is killed when its handle is dropped, every wait is bounded, and each
//! child's stderr is kept so that a failure says what the tool said.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::media::EncodedFrame;
use super::server::{HttpResponse, TestServer};

/// How many of a child's last output lines are kept (players keep all of theirs).
const LINES_KEPT: usize = 200;
/// Lines a player may print: one per decoded frame, for a few seconds of media.
const PLAYER_LINES_KEPT: usize = 100_000;

/// The lower transport of an RTSP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection.
    Tcp,
    /// RTP and RTCP on UDP port pairs.
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// `rtsp://ADDR/ROOM/ID` on the server's RTSP listener.
pub fn rtsp_url(server: &TestServer, room: &str, id: &str) -> String {
    format!("rtsp://{}/{room}/{id}", loopback(server.rtsp))
}

/// The server binds 0.0.0.0 in production; tests connect to the loopback address.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process whose output lines are kept (the last [`LINES_KEPT`] of stderr, the last
/// `keep` of stdout) and whose stdout lines can be waited on. Killed on drop.
pub struct Tool {
    what: String,
    child: Child,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Ends when stderr is read to its end (after the exit, its last lines may still be on
    /// the way).
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    stdout: Arc<Mutex<VecDeque<String>>>,
    /// Bumped on every stdout line.
    stdout_changed: watch::Receiver<u64>,
    status: Option<ExitStatus>,
}

impl Tool {
    /// Spawns `cmd` (stdin closed, stdout and stderr piped). `what` names it in errors.
    pub fn spawn(what: &str, cmd: Command) -> Result<Tool> {
        Self::spawn_keeping(what, cmd, LINES_KEPT)
    }

    /// Like [`spawn`](Self::spawn), keeping the last `keep` lines of stdout.
    pub fn spawn_keeping(what: &str, mut cmd: Command, keep: usize) -> Result<Tool> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {what} ({cmd:?}); is it installed?"))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = watch::channel(0u64);
        let stderr_done = pump_lines(
            child.stderr.take().expect("piped"),
            stderr.clone(),
            LINES_KEPT,
            None,
        );
        pump_lines(
            child.stdout.take().expect("piped"),
            stdout.clone(),
            keep,
            Some(tx),
        );
        Ok(Tool {
            what: what.to_string(),
            child,
            stderr,
            stderr_done: Some(stderr_done),
            stdout,
            stdout_changed: rx,
            status: None,
        })
    }

    /// What it is, as errors name it.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines it wrote to stderr.
    pub fn stderr(&self) -> String {
        let l = self.stderr.lock().unwrap();
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The last lines it wrote to stdout.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().iter().cloned().collect()
    }

    /// Waits until some stdout line satisfies `pred` and returns it; fails when the process
    /// exits first or after `within`.
    pub async fn wait_stdout(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.stdout_changed.borrow_and_update();
            if let Some(line) = self.stdout_lines().into_iter().rev().find(|l| pred(l)) {
                return Ok(line);
            }
            if let Some(status) = self.try_status()? {
                bail!(
                    "{} exited ({status}) before {what}; stderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            let changed = tokio::time::timeout_at(deadline, self.stdout_changed.changed()).await;
            match changed {
                Err(_) => bail!(
                    "{}: no {what} within {within:?}; stdout: {:?}\nstderr:\n{}",
                    self.what,
                    self.stdout_lines(),
                    self.stderr()
                ),
                // The pump ended (stdout closed): the process is exiting; look once more.
                Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                        .await
                        .map_err(|_| anyhow!("{} closed stdout but does not exit", self.what))??;
                    self.status = Some(status);
                    if let Some(line) = self.stdout_lines().into_iter().rev().find(|l| pred(l)) {
                        return Ok(line);
                    }
                    bail!(
                        "{} exited ({status}) before {what}; stderr:\n{}",
                        self.what,
                        self.stderr()
                    );
                }
                Ok(Ok(())) => {}
            }
        }
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits (bounded) for it to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} still runs after {within:?}; stderr:\n{}",
                    self.what,
                    self.stderr()
                )
            })??;
        self.status = Some(status);
        // Everything it wrote is read before anyone looks at it (a grandchild holding the pipe
        // open must not hold the test up: bounded).
        if let Some(done) = self.stderr_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
        }
        Ok(status)
    }

    /// SIGKILL and wait: gone without a goodbye (no TEARDOWN, the kernel closes its sockets).
    pub async fn kill(&mut self) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        self.child.start_kill()?;
        self.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGTERM (ffmpeg then writes its trailer: an RTSP TEARDOWN) and wait for the exit.
    pub async fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            return Ok(s);
        }
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} has no pid", self.what))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -TERM {pid} failed: {status}");
        self.wait_exit(within).await
    }
}

fn pump_lines<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    into: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
    changed: Option<watch::Sender<u64>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            {
                let mut l = into.lock().unwrap();
                if l.len() >= keep {
                    l.pop_front();
                }
                l.push_back(line);
            }
            if let Some(tx) = &changed {
                tx.send_modify(|v| *v += 1);
            }
        }
        // Dropping `changed` tells waiters that no more lines come.
    })
}

// ---------------------------------------------------------------------------------------------
// ffmpeg as a camera that pushes (ANNOUNCE + RECORD)

/// Video a pushing ffmpeg sends: its `testsrc` at 30 fps, 640x360 unless [`Push::size`]
/// says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushVideo {
    /// libx264, High profile, no B-frames, a keyframe every `gop` frames, zerolatency.
    H264 { gop: u32 },
    /// RTP/JPEG (RFC 2435) with standard Huffman tables and both quantization tables.
    Mjpeg,
}

/// Audio a pushing ffmpeg sends: a 440 Hz sine at 48 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAudio {
    Opus,
    Aac,
    /// G.711 µ-law at 8 kHz mono.
    Pcmu,
    None,
}

/// What a pushing ffmpeg sends, and how.
#[derive(Debug, Clone, Copy)]
pub struct Push {
    pub video: PushVideo,
    pub audio: PushAudio,
    pub transport: Transport,
    /// The picture size, as ffmpeg writes it (`640x360`).
    pub size: &'static str,
}

impl Push {
    /// H.264 High (keyframe every 2 s) + Opus over TCP.
    pub fn h264_opus(transport: Transport) -> Push {
        Push {
            video: PushVideo::H264 { gop: 60 },
            audio: PushAudio::Opus,
            transport,
            size: "640x360",
        }
    }

    pub fn size(mut self, size: &'static str) -> Push {
        self.size = size;
        self
    }

    pub fn audio(mut self, audio: PushAudio) -> Push {
        self.audio = audio;
        self
    }

    pub fn video(mut self, video: PushVideo) -> Push {
        self.video = video;
        self
    }

    /// The ffmpeg arguments that publish to `url`.
    pub fn ffmpeg_args(&self, url: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(format!("testsrc=size={}:rate=30", self.size));
        let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
        if self.audio != PushAudio::None {
            push(&["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
        }
        push(&["-map", "0:v"]);
        if self.audio != PushAudio::None {
            push(&["-map", "1:a"]);
        }
        match self.video {
            PushVideo::H264 { gop } => {
                let gop = gop.to_string();
                push(&[
                    "-c:v",
                    "libx264",
                    "-profile:v",
                    "high",
                    "-pix_fmt",
                    "yuv420p",
                    "-bf",
                    "0",
                    "-g",
                    &gop,
                    "-keyint_min",
                    &gop,
                    "-sc_threshold",
                    "0",
                    "-tune",
                    "zerolatency",
                    "-preset",
                    "veryfast",
                    "-b:v",
                    "1M",
                ]);
            }
            PushVideo::Mjpeg => {
                // ffmpeg's RTP/JPEG needs the standard Huffman tables (RFC 2435 carries none);
                // without `force_duplicated_matrix` it sends one 64-byte quantization table
                // for both components, which even ffmpeg's own receiver refuses.
                push(&[
                    "-c:v",
                    "mjpeg",
                    "-pix_fmt",
                    "yuvj420p",
                    "-huffman",
                    "default",
                    "-force_duplicated_matrix",
                    "1",
                    "-q:v",
                    "5",
                ]);
            }
        }
        match self.audio {
            PushAudio::Opus => push(&["-c:a", "libopus", "-b:a", "64k"]),
            PushAudio::Aac => push(&["-c:a", "aac", "-b:a", "128k"]),
            PushAudio::Pcmu => push(&["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"]),
            PushAudio::None => {}
        }
        push(&[
            "-progress",
            "pipe:1",
            "-stats_period",
            "0.2",
            "-f",
            "rtsp",
            "-rtsp_transport",
            self.transport.as_str(),
            url,
        ]);
        a
    }
}

/// An ffmpeg pushing a camera to the server.
pub struct FfmpegPush {
    pub url: String,
    pub tool: Tool,
}

impl FfmpegPush {
    pub fn spawn(url: &str, push: Push) -> Result<FfmpegPush> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(push.ffmpeg_args(url));
        Ok(FfmpegPush {
            url: url.to_string(),
            tool: Tool::spawn(&format!("ffmpeg pushing {url}"), cmd)?,
        })
    }

    /// Frames ffmpeg reports as written so far (its `-progress` output).
    pub fn frames_written(&self) -> u64 {
        progress_frames(&self.tool.stdout_lines())
    }

    /// Waits until ffmpeg has written `frames` video frames to the server: the server
    /// accepted ANNOUNCE, SETUP and RECORD and takes its packets.
    pub async fn wait_streaming(&mut self, frames: u64, within: Duration) -> Result<()> {
        let what = format!("{frames} frames written");
        self.tool
            .wait_stdout(&what, within, |l| {
                l.strip_prefix("frame=")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n >= frames)
            })
            .await
            .map(|_| ())
    }
}

fn progress_frames(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("frame=")?.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The GStreamer test camera (scripts/rtsp-camera.py), for pulling

/// Options of `scripts/rtsp-camera.py`.
#[derive(Debug, Clone)]
pub struct CameraOptions {
    /// `h264`, `mjpeg` or `h265`.
    pub codec: &'static str,
    /// `aac`, `opus`, `pcmu` or `none`.
    pub audio: &'static str,
    /// Seconds between keyframes.
    pub gop: f32,
}

impl Default for CameraOptions {
    fn default() -> Self {
        CameraOptions {
            codec: "h264",
            audio: "opus",
            gop: 2.0,
        }
    }
}

/// A running GStreamer RTSP camera at `rtsp://127.0.0.1:PORT/cam`.
pub struct GstCamera {
    pub url: String,
    pub port: u16,
    pub tool: Tool,
}

/// The path of `scripts/rtsp-camera.py`.
pub fn camera_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rtsp-camera.py")
}

impl GstCamera {
    /// Starts the camera on `port` (0: a free one) and waits for its `ready` line.
    pub async fn start(port: u16, opts: &CameraOptions) -> Result<GstCamera> {
        // The system Python: Debian's GStreamer bindings are not visible to a pyenv python3.
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(camera_script()).args([
            "--port",
            &port.to_string(),
            "--codec",
            opts.codec,
            "--audio",
            opts.audio,
            "--gop",
            &opts.gop.to_string(),
        ]);
        let mut tool = Tool::spawn(&format!("rtsp-camera.py on port {port}"), cmd)?;
        let line = tool
            .wait_stdout("its `ready` line", Duration::from_secs(20), |l| {
                l.starts_with("ready rtsp://")
            })
            .await?;
        let url = line.trim_start_matches("ready ").trim().to_string();
        let port = url
            .trim_start_matches("rtsp://")
            .split('/')
            .next()
            .and_then(|hp| hp.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("cannot read the port in {line:?}"))?;
        Ok(GstCamera { url, port, tool })
    }
}

/// A loopback TCP port that nobody listens on right now (for a camera that starts later).
pub fn unused_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// Players: ffmpeg and ffprobe

/// What an ffmpeg player decoded (from its `framemd5` output: one line per decoded frame).
#[derive(Debug, Clone, Default)]
pub struct PlayReport {
    pub video_frames: u64,
    /// Distinct pictures among them (the picture moves).
    pub distinct_video: usize,
    pub video_size: Option<(u32, u32)>,
    pub audio_frames: u64,
    pub audio_sample_rate: Option<u32>,
    pub stderr: String,
}

/// Plays `url` with ffmpeg over `transport` for `seconds` of media, decoding every stream,
/// and counts the decoded frames. Fails when ffmpeg fails or takes longer than `within`.
pub async fn ffmpeg_play(
    url: &str,
    transport: Transport,
    seconds: u32,
    within: Duration,
) -> Result<PlayReport> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-rtsp_transport",
        transport.as_str(),
        "-i",
        url,
        "-t",
        &seconds.to_string(),
        "-fps_mode",
        "passthrough",
        "-f",
        "framemd5",
        "-",
    ]);
    let what = format!("ffmpeg playing {url} over {}", transport.as_str());
    let mut tool = Tool::spawn_keeping(&what, cmd, PLAYER_LINES_KEPT)?;
    let status = tool.wait_exit(within).await?;
    let lines = tool.stdout_lines();
    let stderr = tool.stderr();
    ensure!(
        status.success(),
        "{what} failed ({status}); stderr:\n{stderr}"
    );
    let mut report = parse_framemd5(&lines);
    report.stderr = stderr;
    Ok(report)
}

/// Counts the frames of a `framemd5` listing (header lines `#media_type N: video` and so on,
/// then one `stream, dts, pts, duration, size, hash` line per decoded frame).
fn parse_framemd5(lines: &[String]) -> PlayReport {
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut r = PlayReport::default();
    let mut hashes = BTreeSet::new();
    for l in lines {
        if let Some(rest) = l.strip_prefix("#media_type ") {
            if let Some((idx, kind)) = rest.split_once(':') {
                kinds.insert(idx.trim().to_string(), kind.trim().to_string());
            }
        } else if let Some(rest) = l.strip_prefix("#dimensions ") {
            if let Some((_, dims)) = rest.split_once(':') {
                if let Some((w, h)) = dims.trim().split_once('x') {
                    r.video_size = w.parse().ok().zip(h.parse().ok());
                }
            }
        } else if let Some(rest) = l.strip_prefix("#sample_rate ") {
            if let Some((_, rate)) = rest.split_once(':') {
                r.audio_sample_rate = rate.trim().parse().ok();
            }
        } else if l.starts_with(|c: char| c.is_ascii_digit()) {
            let cols: Vec<&str> = l.split(',').map(str::trim).collect();
            match kinds.get(cols[0]).map(String::as_str) {
                Some("video") => {
                    r.video_frames += 1;
                    if let Some(h) = cols.last() {
                        hashes.insert(h.to_string());
                    }
                }
                Some("audio") => r.audio_frames += 1,
                _ => {}
            }
        }
    }
    r.distinct_video = hashes.len();
    r
}

/// One stream as ffprobe describes it.
#[derive(Debug, Clone, Default)]
pub struct ProbedStream {
    pub kind: String,
    pub codec: String,
    pub profile: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sample_rate: Option<u32>,
    /// Frames ffprobe decoded (`-count_frames`).
    pub frames: u64,
}

/// Probes `url` with ffprobe over `transport`, decoding its first `seconds` of media.
pub async fn ffprobe(
    url: &str,
    transport: Transport,
    seconds: u32,
    within: Duration,
) -> Result<Vec<ProbedStream>> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-rtsp_transport",
        transport.as_str(),
        "-read_intervals",
        &format!("%+{seconds}"),
        "-count_frames",
        "-show_entries",
        "stream=index,codec_type,codec_name,profile,width,height,sample_rate,nb_read_frames",
        "-of",
        "json=compact=1",
        url,
    ]);
    let what = format!("ffprobe of {url} over {}", transport.as_str());
    let mut tool = Tool::spawn(&what, cmd)?;
    let status = tool.wait_exit(within).await?;
    let out = tool.stdout_lines().join("\n");
    ensure!(
        status.success(),
        "{what} failed ({status}); stderr:\n{}",
        tool.stderr()
    );
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("{what}: output is not JSON: {out}"))?;
    let num = |v: &Value| -> Option<u64> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let streams = v["streams"]
        .as_array()
        .ok_or_else(|| anyhow!("{what}: no streams in {out}"))?
        .iter()
        .map(|s| ProbedStream {
            kind: s["codec_type"].as_str().unwrap_or_default().to_string(),
            codec: s["codec_name"].as_str().unwrap_or_default().to_string(),
            profile: s["profile"].as_str().map(str::to_string),
            width: num(&s["width"]).map(|n| n as u32),
            height: num(&s["height"]).map(|n| n as u32),
            sample_rate: num(&s["sample_rate"]).map(|n| n as u32),
            frames: num(&s["nb_read_frames"]).unwrap_or(0),
        })
        .collect();
    Ok(streams)
}

/// Runs ffprobe on `url` expecting it to fail; returns its stderr.
pub async fn ffprobe_error(url: &str, within: Duration) -> Result<String> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-rtsp_transport",
        "tcp",
        url,
    ]);
    let mut tool = Tool::spawn(&format!("ffprobe of {url}"), cmd)?;
    let status = tool.wait_exit(within).await?;
    ensure!(
        !status.success(),
        "ffprobe of {url} succeeded but should have failed; stdout: {:?}",
        tool.stdout_lines()
    );
    Ok(tool.stderr())
}

/// Plays `url` with GStreamer's `rtspsrc` (`gst-launch-1.0`) until `frames` H.264 pictures
/// are decoded. `protocols` is rtspsrc's property (`tcp`); `None` leaves its default (UDP,
/// then TCP). Fails when gst-launch fails, ends without those pictures, or takes longer than
/// `within`; returns what it printed.
pub async fn gst_play_h264(
    url: &str,
    protocols: Option<&str>,
    frames: u32,
    within: Duration,
) -> Result<String> {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("rtspsrc").arg(format!("location={url}"));
    if let Some(p) = protocols {
        cmd.arg(format!("protocols={p}"));
    }
    // fakesink's num-buffers: EOS (and exit 0) after that many decoded pictures.
    cmd.args([
        "!",
        "rtph264depay",
        "!",
        "h264parse",
        "!",
        "avdec_h264",
        "!",
        "fakesink",
    ])
    .arg(format!("num-buffers={frames}"));
    let what = format!(
        "GStreamer playing {url} (protocols {})",
        protocols.unwrap_or("default")
    );
    let mut tool = Tool::spawn(&what, cmd)?;
    let status = tool.wait_exit(within).await?;
    let out = tool.stdout_lines().join("\n");
    ensure!(
        status.success() && out.contains("Got EOS"),
        "{what} failed ({status}); stdout:\n{out}\nstderr:\n{}",
        tool.stderr()
    );
    Ok(out)
}

/// Plays the first `frames` video frames of `url` with ffmpeg and returns their luma planes
/// (`width` x `height` bytes each), for checking the pixels.
pub async fn ffmpeg_luma_frames(
    url: &str,
    transport: Transport,
    frames: usize,
    (width, height): (usize, usize),
    within: Duration,
) -> Result<Vec<Vec<u8>>> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-rtsp_transport",
        transport.as_str(),
        "-i",
        url,
        "-map",
        "0:v",
        "-frames:v",
        &frames.to_string(),
        "-fps_mode",
        "passthrough",
        "-pix_fmt",
        "gray",
        "-f",
        "rawvideo",
        "-",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let what = format!(
        "ffmpeg reading raw frames of {url} over {}",
        transport.as_str()
    );
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let run = async {
        let mut raw = Vec::new();
        let mut err = Vec::new();
        let (r1, r2) = tokio::join!(stdout.read_to_end(&mut raw), stderr.read_to_end(&mut err));
        r1?;
        r2?;
        let status = child.wait().await?;
        anyhow::Ok((status, raw, String::from_utf8_lossy(&err).to_string()))
    };
    let (status, raw, err) = tokio::time::timeout(within, run)
        .await
        .map_err(|_| anyhow!("{what}: not done within {within:?}"))??;
    ensure!(status.success(), "{what} failed ({status}); stderr:\n{err}");
    let size = width * height;
    ensure!(
        raw.len() == size * frames,
        "{what}: {} bytes of raw video, expected {frames} frames of {width}x{height} ({} bytes); stderr:\n{err}",
        raw.len(),
        size * frames
    );
    Ok(raw.chunks(size).map(<[u8]>::to_vec).collect())
}

/// What a tone sounds like: its frequency (from zero crossings) and its level.
#[derive(Debug, Clone, Copy)]
pub struct Tone {
    pub hz: f64,
    /// RMS of the samples, relative to full scale (a sine at full scale: 0.707).
    pub rms: f64,
    pub seconds: f64,
}

/// Plays the audio of `url` with ffmpeg for `seconds`, decoded to 48 kHz mono, and measures
/// it (the cameras in these tests send a 440 Hz sine).
pub async fn ffmpeg_tone(
    url: &str,
    transport: Transport,
    seconds: u32,
    within: Duration,
) -> Result<Tone> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-rtsp_transport",
        transport.as_str(),
        "-i",
        url,
        "-map",
        "0:a",
        "-t",
        &seconds.to_string(),
        "-ac",
        "1",
        "-ar",
        "48000",
        "-f",
        "s16le",
        "-",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let what = format!(
        "ffmpeg decoding the audio of {url} over {}",
        transport.as_str()
    );
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let run = async {
        let mut raw = Vec::new();
        let mut err = Vec::new();
        let (r1, r2) = tokio::join!(stdout.read_to_end(&mut raw), stderr.read_to_end(&mut err));
        r1?;
        r2?;
        let status = child.wait().await?;
        anyhow::Ok((status, raw, String::from_utf8_lossy(&err).to_string()))
    };
    let (status, raw, err) = tokio::time::timeout(within, run)
        .await
        .map_err(|_| anyhow!("{what}: not done within {within:?}"))??;
    ensure!(status.success(), "{what} failed ({status}); stderr:\n{err}");
    let samples: Vec<f64> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f64 / 32768.0)
        .collect();
    // Skip the first 200 ms: decoders (and a transcoder's start) ramp up.
    let skip = 9600.min(samples.len());
    let tone = measure_tone(&samples[skip..], 48_000.0);
    ensure!(
        tone.seconds >= 0.5,
        "{what}: only {:.2} s of audio decoded; stderr:\n{err}",
        tone.seconds
    );
    Ok(tone)
}

/// Frequency (zero crossings) and RMS level of `samples` at `rate`.
pub fn measure_tone(samples: &[f64], rate: f64) -> Tone {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    let seconds = samples.len() as f64 / rate;
    let rms = (samples.iter().map(|x| x * x).sum::<f64>() / samples.len().max(1) as f64).sqrt();
    Tone {
        hz: if seconds > 0.0 {
            crossings as f64 / 2.0 / seconds
        } else {
            0.0
        },
        rms,
        seconds,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Runs `scenario` against `server` (one started with a config, say) with an overall time
/// limit; on failure the error carries the tail of the server's log. The counterpart of
/// [`super::run_with_server`] for a server the test starts itself.
pub async fn run_on_server<F, Fut>(server: TestServer, limit: Duration, scenario: F) -> Result<()>
where
    F: FnOnce(Arc<TestServer>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
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

// ---------------------------------------------------------------------------------------------
// REST: pulled cameras and room listings

/// `POST /api/rooms/{room}/cameras {"name", "url"}`.
pub async fn add_camera(
    server: &TestServer,
    room: &str,
    name: &str,
    url: &str,
) -> Result<HttpResponse> {
    let body = serde_json::json!({ "name": name, "url": url }).to_string();
    server
        .http_request(
            "POST",
            &format!("/api/rooms/{room}/cameras"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
}

/// A pulled camera as `GET /api/rooms/{room}/cameras` lists it.
#[derive(Debug, Clone)]
pub struct CameraState {
    pub name: String,
    /// `connecting`, `live`, `retrying`, ...
    pub state: String,
    /// The error text, if the entry carries one (`error`, or `last_error`).
    pub error: Option<String>,
    pub json: Value,
}

/// `GET /api/rooms/{room}/cameras`.
pub async fn cameras(server: &TestServer, room: &str) -> Result<Vec<CameraState>> {
    let path = format!("/api/rooms/{room}/cameras");
    let r = server.http_request("GET", &path, &[], &[]).await?;
    ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
    let v = r.json()?;
    let list = v
        .as_array()
        .or_else(|| v["cameras"].as_array())
        .ok_or_else(|| anyhow!("GET {path}: expected a JSON array, got {v}"))?;
    Ok(list
        .iter()
        .map(|c| {
            // `state` is a word; an object form `{"state": .., "error": ..}` is read too.
            let state_v = &c["state"];
            let state = state_v
                .as_str()
                .or_else(|| state_v["state"].as_str())
                .unwrap_or_default()
                .to_string();
            let error = ["error", "last_error"]
                .iter()
                .find_map(|k| c[*k].as_str().or_else(|| state_v[*k].as_str()))
                .map(str::to_string);
            CameraState {
                name: c["name"].as_str().unwrap_or_default().to_string(),
                state,
                error,
                json: c.clone(),
            }
        })
        .collect())
}

/// Polls the camera list (REST has no events) until camera `name` satisfies `pred`; returns
/// that entry. Fails after `within` with the last listing.
pub async fn wait_camera(
    server: &TestServer,
    room: &str,
    name: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&CameraState) -> bool,
) -> Result<CameraState> {
    let deadline = Instant::now() + within;
    loop {
        let list = cameras(server, room).await?;
        if let Some(c) = list.iter().find(|c| c.name == name) {
            if pred(c) {
                return Ok(c.clone());
            }
        }
        if Instant::now() >= deadline {
            let shown: Vec<&Value> = list.iter().map(|c| &c.json).collect();
            bail!("camera {room}/{name}: not {what} within {within:?}; cameras: {shown:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The participants of `room` from `GET /api/rooms/{room}` (empty when it answers 404).
pub async fn room_participants(server: &TestServer, room: &str) -> Result<Vec<Value>> {
    let path = format!("/api/rooms/{room}");
    let r = server.http_request("GET", &path, &[], &[]).await?;
    if r.status == 404 {
        return Ok(Vec::new());
    }
    ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
    let v = r.json()?;
    Ok(v["participants"]
        .as_array()
        .ok_or_else(|| anyhow!("GET {path}: no participants list in {v}"))?
        .clone())
}

/// Participant `id` of `room` as the REST API lists it, if it is there.
pub async fn room_participant(server: &TestServer, room: &str, id: &str) -> Result<Option<Value>> {
    Ok(room_participants(server, room)
        .await?
        .into_iter()
        .find(|p| p["id"] == id))
}

/// `(kind, codec)` of each track of a participant JSON object, sorted.
pub fn track_codecs(p: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p["tracks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["kind"].as_str().unwrap_or_default().to_string(),
                        t["codec"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// A raw RTSP client

/// An RTSP response.
#[derive(Debug, Clone)]
pub struct RtspResponse {
    pub status: u16,
    pub reason: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RtspResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One RTSP connection speaking requests and reading responses, skipping interleaved data.
pub struct RtspConn {
    stream: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    pub session: Option<String>,
}

impl RtspConn {
    pub async fn connect(addr: SocketAddr) -> Result<RtspConn> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to RTSP {addr}: timed out"))??;
        stream.set_nodelay(true)?;
        Ok(RtspConn {
            stream,
            buf: Vec::new(),
            cseq: 0,
            session: None,
        })
    }

    /// Sends a request (CSeq, Session and Content-Length added) and reads its response.
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<RtspResponse> {
        self.cseq += 1;
        let mut head = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: confab-e2e\r\n",
            self.cseq
        );
        if let Some(s) = &self.session {
            head.push_str(&format!("Session: {s}\r\n"));
        }
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.read_response())
            .await
            .map_err(|_| anyhow!("{method} {url}: no response within 10 s"))??;
        let cseq = resp.header("cseq").unwrap_or_default();
        ensure!(
            cseq == self.cseq.to_string(),
            "{method} {url}: response CSeq {cseq:?}, expected {}",
            self.cseq
        );
        if let Some(s) = resp.header("session") {
            self.session = Some(s.split(';').next().unwrap_or(s).trim().to_string());
        }
        Ok(resp)
    }

    async fn read_response(&mut self) -> Result<RtspResponse> {
        loop {
            // Interleaved packets (`$`, channel, length) can precede the response.
            while self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() < 4 + len {
                    break;
                }
                self.buf.drain(..4 + len);
            }
            if self.buf.first() != Some(&b'$') {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                    let mut lines = head.split("\r\n");
                    let status_line = lines.next().unwrap_or_default().to_string();
                    let mut parts = status_line.splitn(3, ' ');
                    let version = parts.next().unwrap_or_default();
                    ensure!(
                        version == "RTSP/1.0",
                        "not an RTSP response: {status_line:?}"
                    );
                    let status: u16 = parts
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
                    let reason = parts.next().unwrap_or_default().to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
                        })
                        .collect();
                    let len = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if self.buf.len() >= end + 4 + len {
                        let body = self.buf[end + 4..end + 4 + len].to_vec();
                        self.buf.drain(..end + 4 + len);
                        return Ok(RtspResponse {
                            status,
                            reason,
                            headers,
                            body,
                        });
                    }
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "connection closed before a complete response ({} bytes buffered)",
                    self.buf.len()
                );
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Gives up the connection for streaming: the write half, and a task that reads and
    /// discards whatever the server sends (RTCP receiver reports, a late response) so that
    /// it never blocks on us.
    pub fn into_writer(self) -> (tokio::net::tcp::OwnedWriteHalf, tokio::task::JoinHandle<()>) {
        let (mut r, w) = self.stream.into_split();
        let drain = tokio::spawn(async move {
            let mut chunk = [0u8; 16 * 1024];
            while let Ok(n) = r.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        });
        (w, drain)
    }
}

// ---------------------------------------------------------------------------------------------
// Our own RTSP publisher: H.264 over TCP interleaving with a known send instant per frame

/// Publishes pre-encoded H.264 access units (Annex B, SPS/PPS before every IDR) to
/// `rtsp://ADDR/ROOM/ID` over TCP interleaving, at a steady frame rate, and records when each
/// frame's last byte went to the socket.
pub struct RtspH264Pusher {
    task: tokio::task::JoinHandle<Result<()>>,
    /// `(send instant, index into the frame list)` of every frame sent, in order.
    pub sent: Arc<Mutex<Vec<(Instant, usize)>>>,
}

/// Largest RTP payload we send (FU-A fragments beyond it), as a camera would on Ethernet.
const RTP_PAYLOAD_MAX: usize = 1400;

impl RtspH264Pusher {
    /// ANNOUNCE, SETUP, RECORD; then sends `frames` in a loop at `fps` until dropped.
    pub async fn start(
        addr: SocketAddr,
        room: &str,
        id: &str,
        frames: Arc<Vec<EncodedFrame>>,
        fps: u32,
    ) -> Result<RtspH264Pusher> {
        let url = format!("rtsp://{addr}/{room}/{id}");
        let first = frames.first().ok_or_else(|| anyhow!("no frames to send"))?;
        let nals = split_annexb(&first.data);
        let sps = nals.iter().find(|n| n[0] & 0x1F == 7);
        let pps = nals.iter().find(|n| n[0] & 0x1F == 8);
        let (sps, pps) = sps
            .zip(pps)
            .ok_or_else(|| anyhow!("the first frame has no SPS/PPS"))?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let sdp = format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=confab-e2e\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1;profile-level-id={:02x}{:02x}{:02x};sprop-parameter-sets={},{}\r\n\
             a=control:streamid=0\r\n",
            sps[1],
            sps[2],
            sps[3],
            b64.encode(sps),
            b64.encode(pps)
        );
        let mut conn = RtspConn::connect(addr).await?;
        let r = conn
            .request(
                "ANNOUNCE",
                &url,
                &[("Content-Type", "application/sdp")],
                sdp.as_bytes(),
            )
            .await?;
        ensure!(r.status == 200, "ANNOUNCE {url}: {} {}", r.status, r.reason);
        let r = conn
            .request(
                "SETUP",
                &format!("{url}/streamid=0"),
                &[(
                    "Transport",
                    "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
                )],
                &[],
            )
            .await?;
        ensure!(r.status == 200, "SETUP {url}: {} {}", r.status, r.reason);
        let r = conn
            .request("RECORD", &url, &[("Range", "npt=0.000-")], &[])
            .await?;
        ensure!(r.status == 200, "RECORD {url}: {} {}", r.status, r.reason);
        let (mut writer, drain) = conn.into_writer();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let task = tokio::spawn(async move {
            let _drain = AbortOnDrop(drain);
            let ssrc: u32 = rand::random();
            let mut seq: u16 = rand::random();
            let ts0: u32 = rand::random();
            let period = Duration::from_secs(1) / fps;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n: u64 = 0;
            let mut out = Vec::with_capacity(64 * 1024);
            loop {
                tick.tick().await;
                let index = (n % frames.len() as u64) as usize;
                let ts = ts0.wrapping_add((n * 90_000 / fps as u64) as u32);
                out.clear();
                let nals = split_annexb(&frames[index].data);
                let count = nals.len();
                for (i, nal) in nals.into_iter().enumerate() {
                    let last_nal = i + 1 == count;
                    for (payload, last) in packetize_nal(nal) {
                        let marker = last_nal && last;
                        let mut rtp = Vec::with_capacity(12 + payload.len());
                        rtp.push(0x80);
                        rtp.push(96 | if marker { 0x80 } else { 0 });
                        rtp.extend_from_slice(&seq.to_be_bytes());
                        rtp.extend_from_slice(&ts.to_be_bytes());
                        rtp.extend_from_slice(&ssrc.to_be_bytes());
                        rtp.extend_from_slice(&payload);
                        seq = seq.wrapping_add(1);
                        out.push(b'$');
                        out.push(0);
                        out.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
                        out.extend_from_slice(&rtp);
                    }
                }
                writer
                    .write_all(&out)
                    .await
                    .context("sending RTP over the RTSP connection")?;
                log.lock().unwrap().push((Instant::now(), index));
                n += 1;
            }
        });
        Ok(RtspH264Pusher { task, sent })
    }

    /// Fails if the sending task has stopped (with its error).
    pub fn check_running(&self) -> Result<()> {
        ensure!(!self.task.is_finished(), "the RTSP pusher stopped sending");
        Ok(())
    }
}

impl Drop for RtspH264Pusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The NAL units of an Annex B byte stream (start codes removed).
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
        // A 4-byte start code leaves a zero byte at the end of the previous NAL.
        while end > s && data[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

/// RFC 6184 payloads for one NAL: itself (single NAL unit packet), or FU-A fragments.
/// Returns `(payload, is_last_of_this_nal)`.
fn packetize_nal(nal: &[u8]) -> Vec<(Vec<u8>, bool)> {
    if nal.len() <= RTP_PAYLOAD_MAX {
        return vec![(nal.to_vec(), true)];
    }
    let header = nal[0];
    let indicator = (header & 0xE0) | 28;
    let body = &nal[1..];
    let chunks: Vec<&[u8]> = body.chunks(RTP_PAYLOAD_MAX - 2).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut fu = header & 0x1F;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == n {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(2 + c.len());
            p.push(indicator);
            p.push(fu);
            p.extend_from_slice(c);
            (p, i + 1 == n)
        })
        .collect()
}

/// `p`-th percentile (0..=100) of `values` (sorted in place), nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_split_and_fu_a() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9,
        ];
        let nals = split_annexb(&data);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 9, 9]]);
        let big: Vec<u8> = std::iter::once(0x65)
            .chain((0..3000).map(|i| i as u8))
            .collect();
        let p = packetize_nal(&big);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].0[..2], [0x7C, 0x85]);
        assert_eq!(p[2].0[1], 0x45);
        assert!(p[2].1 && !p[0].1);
        let total: usize = p.iter().map(|(x, _)| x.len() - 2).sum();
        assert_eq!(total, 3000);
    }

    #[test]
    fn tone_of_a_sine() {
        let samples: Vec<f64> = (0..48_000)
            .map(|i| 0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 48_000.0 + 0.3).sin())
            .collect();
        let t = measure_tone(&samples, 48_000.0);
        assert!((t.hz - 440.0).abs() < 2.0, "{t:?}");
        assert!((t.rms - 0.5 / 2f64.sqrt()).abs() < 0.01, "{t:?}");
    }

    #[test]
    fn framemd5_counts() {
        let lines: Vec<String> = [
            "#tb 0: 1/30",
            "#media_type 0: video",
            "#dimensions 0: 640x360",
            "#media_type 1: audio",
            "#sample_rate 1: 48000",
            "0,          0,          0,        1,   345600, aa",
            "1,          0,          0,      960,     3840, bb",
            "0,          1,          1,        1,   345600, cc",
            "0,          2,          2,        1,   345600, cc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse_framemd5(&lines);
        assert_eq!(
            (r.video_frames, r.distinct_video, r.audio_frames),
            (3, 2, 1)
        );
        assert_eq!(r.video_size, Some((640, 360)));
        assert_eq!(r.audio_sample_rate, Some(48000));
    }
}
