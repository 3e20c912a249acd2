//! `confab-bench`: load generator and benchmark harness for confab (issue 6), and the same load
//! against Janus's videoroom for comparison. See BENCHMARKS.md for how to run it and what the
//! figures mean.
//!
//! The tool starts the server itself (optionally pinned with `taskset`), or attaches to one by
//! pid; it joins webrtc-rs publishers and subscribers over the server's own signaling, measures
//! windows, and writes a JSON report and a Markdown table.
#![forbid(unsafe_code)]

mod confab;
mod histogram;
mod janus;
mod measure;
mod media;
mod peer;
mod probe;
mod process;
mod report;
mod scenario;
mod sequence;
mod stamp;
mod target;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::media::VideoSpec;
use crate::peer::{Context, PublishSpec};
use crate::process::Server;
use crate::report::{Report, Slo, VideoInfo};
use crate::scenario::fanout::Ramp;
use crate::scenario::Run;
use crate::target::{Kind, Target};

#[derive(Parser)]
#[command(
    name = "confab-bench",
    version,
    about = "Load generator and benchmarks for confab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// 1 publisher (video + audio) → M subscribers; M grows by --step up to --max until the SLO
    /// breaks.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        ramp: RampArgs,
    },
    /// N×N: every participant publishes and receives everyone else, for each N in --sizes.
    Meeting {
        #[command(flatten)]
        common: Common,
        /// Meeting sizes, measured one after the other.
        #[arg(long, value_delimiter = ',', default_value = "4,8,12,16")]
        sizes: Vec<usize>,
    },
    /// S speakers (audio only) → M listeners, M ramping like fanout.
    Audio {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        speakers: usize,
        #[command(flatten)]
        ramp: RampArgs,
    },
    /// Join/receive/leave cycles against a room with one publisher; server memory must return to
    /// its baseline.
    Churn {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        cycles: usize,
        /// Cycles in flight at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Cycles before the memory baseline is taken.
        #[arg(long, default_value_t = 20)]
        warmup_cycles: usize,
    },
    /// ffmpeg pushes a camera over RTSP into a room → M WebRTC subscribers (confab only).
    Rtsp {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        ramp: RampArgs,
        #[arg(long, default_value = "ffmpeg")]
        ffmpeg: String,
    },
    /// Ratios of two JSON reports of the same scenario (e.g. confab and Janus), as Markdown.
    Compare {
        a: std::path::PathBuf,
        b: std::path::PathBuf,
    },
}

#[derive(Args, Clone)]
struct RampArgs {
    /// Subscribers at the first step (alone, without --step: the only step).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Subscribers added per step (0: one step only).
    #[arg(long, default_value_t = 0)]
    step: usize,
    /// Largest number of subscribers to try.
    #[arg(long)]
    max: Option<usize>,
}

impl RampArgs {
    fn ramp(&self) -> Ramp {
        Ramp {
            start: self.subscribers,
            step: self.step,
            max: self.max.unwrap_or(if self.step == 0 {
                self.subscribers
            } else {
                1000
            }),
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// Which server to load.
    #[arg(long, value_enum, default_value_t = Kind::Confab)]
    target: Kind,
    /// The confab binary to start (on --bind, ports picked by the kernel).
    #[arg(long, default_value = "target/release/confab")]
    server: String,
    /// The Janus binary to start (for --target janus).
    #[arg(long, default_value = "janus")]
    janus: String,
    /// Use a running server at this signaling URL instead of starting one (needs --server-pid;
    /// for confab also --http for /metrics).
    #[arg(long, requires = "server_pid")]
    url: Option<String>,
    #[arg(long)]
    server_pid: Option<u32>,
    /// confab's HTTP address (for /metrics) when attaching with --url.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Pin the started server to these CPUs (`taskset -c LIST`); pin the generator yourself
    /// (`taskset -c OTHER confab-bench …`).
    #[arg(long)]
    server_cpus: Option<String>,
    /// Address for the server's listeners and the generator's peer connections. Janus needs a
    /// non-loopback one (scripts/bench.sh sets up a network namespace with 198.18.0.1).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// The generator's peer connections use ICE over TCP only (RFC 6544: the server's passive
    /// TCP candidates), to compare the cost of ICE-TCP with UDP (confab only).
    #[arg(long)]
    tcp: bool,
    /// Seconds of load before the first window.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Windows per step; the figures are their medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Video size WIDTHxHEIGHT (default per scenario: 1280x720 fanout, 640x360 meeting,
    /// 320x180 churn).
    #[arg(long)]
    video: Option<String>,
    /// Video bitrate, e.g. 1500k or 1.5M (default per scenario: 1.5M, 500k, 200k).
    #[arg(long)]
    bitrate: Option<String>,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds of video in the encoded loop (it starts with its only IDR).
    #[arg(long, default_value_t = 4)]
    loop_seconds: u32,
    /// Publishers pace video at this multiple of its bitrate, as browsers do (Chromium: 2.5);
    /// 0 sends every frame as one burst.
    #[arg(long, default_value_t = 2.5)]
    pacing: f64,
    /// Decode received video with openh264 and check every picture bit for bit (costly).
    #[arg(long)]
    decode: bool,
    /// Participants joining at once.
    #[arg(long, default_value_t = 8)]
    join_parallel: usize,
    /// Probe subscribers per step, each on a thread of its own (their latency is the one the
    /// SLO is judged on; see BENCHMARKS.md). 0: judge on all subscribers.
    #[arg(long, default_value_t = 2)]
    probes: usize,
    /// Measure every step up to --max / every --sizes entry even after the SLO breaks (stops
    /// anyway at > 5 % loss, a saturated generator, or failed joins).
    #[arg(long)]
    keep_going: bool,
    #[arg(long, default_value_t = 5.0)]
    slo_p99_ms: f64,
    #[arg(long, default_value_t = 0.1)]
    slo_loss_percent: f64,
    #[arg(long, default_value_t = 85.0)]
    slo_cpu_percent: f64,
    /// Write the JSON report here ("-" for stdout).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the Markdown table here (it always goes to stderr too).
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// The started confab's --log filter.
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Record a CPU profile of the server for the whole run (`perf record -p`) into this file.
    /// Figures measured meanwhile carry perf's overhead.
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
    /// With --profile: record call graphs (DWARF unwinding; large files).
    #[arg(long)]
    call_graph: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("--video {s}: expected WIDTHxHEIGHT"))?;
    Ok((w.parse()?, h.parse()?))
}

fn parse_bitrate(s: &str) -> Result<u32> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("--bitrate {s}: expected e.g. 1500k or 1.5M"))?;
    Ok((v * mult) as u32)
}

/// Defaults per scenario: (size, bitrate).
fn video_spec(c: &Common, size: (usize, usize), bitrate: u32) -> Result<VideoSpec> {
    let (width, height) = match &c.video {
        Some(v) => parse_size(v)?,
        None => size,
    };
    let bitrate_bps = match &c.bitrate {
        Some(b) => parse_bitrate(b)?,
        None => bitrate,
    };
    Ok(VideoSpec {
        width,
        height,
        fps: c.fps,
        bitrate_bps,
        loop_frames: c.fps * c.loop_seconds.max(1),
    })
}

async fn start_server(c: &Common) -> Result<Server> {
    if let Some(url) = &c.url {
        let pid = c
            .server_pid
            .ok_or_else(|| anyhow!("--url needs --server-pid"))?;
        return Ok(Server::attach(pid, url, c.http));
    }
    match c.target {
        Kind::Confab => {
            if !std::path::Path::new(&c.server).exists() {
                bail!(
                    "no confab binary at {} (build it: cargo build --release -p confab, or pass --server PATH)",
                    c.server
                );
            }
            Server::start_confab(&c.server, &c.bind, c.server_cpus.as_deref(), &c.server_log).await
        }
        Kind::Janus => Server::start_janus(&c.janus, &c.bind, c.server_cpus.as_deref()).await,
    }
}

fn scenario_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Fanout { .. } => "fanout",
        Command::Meeting { .. } => "meeting",
        Command::Audio { .. } => "audio",
        Command::Churn { .. } => "churn",
        Command::Rtsp { .. } => "rtsp",
        Command::Compare { .. } => "compare",
    }
}

async fn encode(spec: VideoSpec) -> Result<Arc<media::VideoLoop>> {
    eprintln!(
        "encoding the test loop: {}x{} @ {} fps, {} kbit/s, {} frames",
        spec.width,
        spec.height,
        spec.fps,
        spec.bitrate_bps / 1000,
        spec.loop_frames
    );
    let lp = tokio::task::spawn_blocking(move || media::encode_loop(spec)).await??;
    eprintln!(
        "encoded in {:.1} s: {:.0} kbit/s, IDR {} bytes",
        lp.encode_seconds,
        lp.actual_bps / 1000.0,
        lp.frames.first().map(|f| f.bytes).unwrap_or(0)
    );
    Ok(Arc::new(lp))
}

fn video_info(lp: &media::VideoLoop) -> VideoInfo {
    VideoInfo {
        width: lp.spec.width,
        height: lp.spec.height,
        fps: lp.spec.fps,
        target_kbps: lp.spec.bitrate_bps as f64 / 1000.0,
        actual_kbps: lp.actual_bps / 1000.0,
        loop_frames: lp.spec.loop_frames,
        keyframe_bytes: lp.frames.first().map(|f| f.bytes).unwrap_or(0),
        encode_seconds: lp.encode_seconds,
    }
}

async fn run(cli: Cli) -> Result<()> {
    let name = scenario_name(&cli.command);
    let (common, command) = match cli.command {
        Command::Compare { a, b } => {
            let read = |p: &std::path::Path| -> Result<Report> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
            };
            println!("{}", report::compare(&read(&a)?, &read(&b)?));
            return Ok(());
        }
        Command::Fanout { ref common, .. }
        | Command::Meeting { ref common, .. }
        | Command::Audio { ref common, .. }
        | Command::Churn { ref common, .. }
        | Command::Rtsp { ref common, .. } => (common.clone(), cli.command),
    };
    if common.target == Kind::Janus && name == "rtsp" {
        bail!("the rtsp scenario is confab's RTSP bridge; Janus's videoroom has none");
    }
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Encode before the server starts, so that the encoder's CPU never lands in a window.
    let video = match &command {
        Command::Fanout { .. } => Some(encode(video_spec(&common, (1280, 720), 1_500_000)?).await?),
        Command::Meeting { .. } => Some(encode(video_spec(&common, (640, 360), 500_000)?).await?),
        Command::Churn { .. } => Some(encode(video_spec(&common, (320, 180), 200_000)?).await?),
        _ => None,
    };
    let server = start_server(&common).await?;
    eprintln!(
        "{:?} server pid {} at {}{}",
        common.target,
        server.pid,
        server.ws_url,
        common
            .server_cpus
            .as_ref()
            .map(|c| format!(" on CPUs {c}"))
            .unwrap_or_default()
    );
    let profiler = match &common.profile {
        Some(p) => Some(process::Profiler::start(server.pid, p, common.call_graph).await?),
        None => None,
    };
    let ctx = Context::new(
        &common.bind,
        if common.decode { video.clone() } else { None },
        common.tcp,
    );
    let bench = Run {
        ctx,
        target: Target {
            kind: common.target,
            ws_url: server.ws_url.clone(),
        },
        server: &server,
        warmup: Duration::from_secs_f64(common.warmup),
        seconds: Duration::from_secs_f64(common.seconds),
        repeats: common.repeats.max(1),
        slo: Slo {
            p99_ms: common.slo_p99_ms,
            loss_percent: common.slo_loss_percent,
            cpu_percent: common.slo_cpu_percent,
        },
        join_parallel: common.join_parallel,
        keep_going: common.keep_going,
        probes: common.probes,
    };
    let av = |v: &Option<Arc<media::VideoLoop>>| PublishSpec {
        video: v.clone(),
        audio: true,
        pacing: common.pacing,
    };
    let mut notes = vec![
        "Latency is receive time − send time on the generator's clock: it includes the generator's own webrtc-rs send and receive path, so it bounds the server's added latency from above.".to_string(),
    ];
    let (steps, capacity, churn) = match &command {
        Command::Fanout { ramp, .. } => {
            let (s, c) = scenario::fanout::fanout(&bench, av(&video), ramp.ramp()).await?;
            (s, Some(c), None)
        }
        Command::Meeting { sizes, .. } => {
            let (s, c) = scenario::meeting::meeting(&bench, av(&video), sizes).await?;
            (s, Some(c), None)
        }
        Command::Audio { speakers, ramp, .. } => {
            let (s, c) = scenario::fanout::audio(&bench, *speakers, ramp.ramp()).await?;
            (s, Some(c), None)
        }
        Command::Churn {
            cycles,
            parallel,
            warmup_cycles,
            ..
        } => {
            let c = scenario::churn::churn(&bench, av(&video), *cycles, *parallel, *warmup_cycles)
                .await?;
            (Vec::new(), None, Some(c))
        }
        Command::Rtsp { ramp, ffmpeg, .. } => {
            let (w, h) = match &common.video {
                Some(v) => parse_size(v)?,
                None => (1280, 720),
            };
            let b = match &common.bitrate {
                Some(b) => parse_bitrate(b)?,
                None => 1_500_000,
            };
            notes.push("RTSP: the bridge re-packetizes and drops SEI, so there is no latency figure; ffmpeg pushes a pre-encoded libx264 loop with -c copy.".into());
            let (s, c) =
                scenario::rtsp::rtsp(&bench, ffmpeg, w, h, common.fps, b, ramp.ramp()).await?;
            (s, Some(c), None)
        }
        Command::Compare { .. } => unreachable!("handled above"),
    };
    let report = Report {
        tool: format!("confab-bench {}", env!("CARGO_PKG_VERSION")),
        scenario: name.to_string(),
        target: format!("{:?}", common.target).to_lowercase(),
        started_unix,
        machine: process::machine(),
        server_cpus: common.server_cpus.clone(),
        generator_cores: process::allowed_cpus(std::process::id()).unwrap_or(0),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        warmup_seconds: common.warmup,
        window_seconds: common.seconds,
        repeats: bench.repeats,
        slo: bench.slo,
        pacing: common.pacing,
        probes: common.probes,
        video: video.as_deref().map(video_info),
        steps,
        capacity,
        churn,
        notes,
    };
    drop(bench);
    if let Some(p) = profiler {
        p.stop().await;
    }
    server.stop().await;
    let md = report.markdown();
    eprintln!("\n{md}");
    if let Some(p) = &common.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    match &common.json {
        Some(p) if p.as_os_str() == "-" => println!("{json}"),
        Some(p) => std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?,
        None => {}
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONFAB_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let timeout = match &cli.command {
        Command::Fanout { common, .. }
        | Command::Meeting { common, .. }
        | Command::Audio { common, .. }
        | Command::Churn { common, .. }
        | Command::Rtsp { common, .. } => common.timeout,
        Command::Compare { .. } => 60,
    };
    // As many workers as CPUs this process may use (taskset limits it).
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let term = async {
            let mut sigterm =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm.recv() => {}
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = run(cli) => r,
            r = tokio::time::timeout(Duration::from_secs(timeout), term) => match r {
                Ok(_) => Err(anyhow!("interrupted")),
                Err(_) => Err(anyhow!("gave up after --timeout {timeout} s")),
            },
        }
    });
    // Dropping the runtime drops the run's future, whose Server kills a started server
    // (kill_on_drop); do not wait for stuck tasks.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}
