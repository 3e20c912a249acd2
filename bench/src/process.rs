//! The server process under test: started by the tool (confab or Janus, optionally pinned to
//! CPUs with `taskset`) or attached to by pid, and read through `/proc` for CPU time and memory.
//! A started server is stopped (SIGTERM, then SIGKILL after 5 s) when this value is dropped or
//! [`Server::stop`]ped, so no path leaves it running.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Linux's USER_HZ, the unit of utime/stime in /proc/PID/stat, is 100 on every architecture
/// the kernel exports to user space.
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system, all threads) a process has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("malformed stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).unwrap_or(&"0").parse::<u64>()? + f.get(12).unwrap_or(&"0").parse::<u64>()?;
    Ok(ticks as f64 / CLOCK_TICKS)
}

/// CPU seconds the whole machine has been busy (all CPUs: user, nice, system, irq, softirq,
/// steal), from /proc/stat.
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Ok(busy as f64 / CLOCK_TICKS)
}

fn status_field(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let v = status_field(pid, "VmRSS")?;
    Ok(v.trim_end_matches("kB").trim().parse()?)
}

/// How many CPUs the process may run on.
pub fn allowed_cpus(pid: u32) -> Result<usize> {
    let list = status_field(pid, "Cpus_allowed_list")?;
    let mut n = 0;
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => n += b.trim().parse::<usize>()? - a.trim().parse::<usize>()? + 1,
            None => n += 1,
        }
    }
    Ok(n)
}

/// The machine, for the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Machine {
        cpu,
        cpus,
        memory_mib,
        kernel,
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    /// confab's HTTP address (for /metrics), when known.
    pub http: Option<SocketAddr>,
    /// confab's RTSP address, when known.
    pub rtsp: Option<SocketAddr>,
    pub ws_url: String,
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: Option<TempDir>,
}

fn pinned(cpus: Option<&str>, bin: &str) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c, bin]);
            cmd
        }
        None => Command::new(bin),
    }
}

fn pump(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<VecDeque<String>>>,
    lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    tokio::spawn(async move {
        let mut r = BufReader::new(stream).lines();
        while let Ok(Some(line)) = r.next_line().await {
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() >= 200 {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

impl Server {
    /// Starts confab on `ip` with ports picked by the kernel, in a fresh data directory.
    pub async fn start_confab(
        bin: &str,
        ip: &str,
        cpus: Option<&str>,
        log_level: &str,
    ) -> Result<Server> {
        let dir = TempDir::new("confab-bench-data")?;
        // The default room limit (100) is below the loads this tool ramps to.
        let config = dir.0.join("bench.toml");
        std::fs::write(&config, "[limits]\nparticipants_per_room = 100000\n")?;
        let mut cmd = pinned(cpus, bin);
        cmd.args([
            "--http",
            &format!("{ip}:0"),
            "--rtsp",
            &format!("{ip}:0"),
            "--media",
            &format!("{ip}:0"),
            "--log",
            log_level,
            "--config",
        ])
        .arg(&config)
        .arg("--data")
        .arg(dir.0.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {bin}"))?;
        let pid = child.id().ok_or_else(|| anyhow!("confab exited at once"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            pump(out, log.clone(), Some(tx));
        }
        if let Some(err) = child.stderr.take() {
            pump(err, log.clone(), None);
        }
        let mut server = Server {
            child: Some(child),
            pid,
            http: None,
            rtsp: None,
            ws_url: String::new(),
            log,
            _dir: Some(dir),
        };
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            let (mut http, mut rtsp, mut media) = (None, None, false);
            while let Some(line) = lines.recv().await {
                if let Some(a) = line.strip_prefix("http listening on http://") {
                    http = a.trim().parse::<SocketAddr>().ok();
                } else if let Some(a) = line.strip_prefix("rtsp listening on rtsp://") {
                    rtsp = a.trim().parse::<SocketAddr>().ok();
                } else if line.starts_with("media listening on udp ") {
                    media = true;
                }
                if http.is_some() && rtsp.is_some() && media {
                    return Some((http, rtsp));
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some((http, rtsp))) => {
                server.http = http;
                server.rtsp = rtsp;
                server.ws_url =
                    format!("ws://{}/ws", http.unwrap_or(([127, 0, 0, 1], 8080).into()));
                Ok(server)
            }
            _ => bail!(
                "confab did not print its listeners within 20 s; output:\n{}",
                server.log_tail(40)
            ),
        }
    }

    /// Starts Janus with a configuration of our own (videoroom plugin and WebSocket transport
    /// only) listening on `ip`.
    pub async fn start_janus(bin: &str, ip: &str, cpus: Option<&str>) -> Result<Server> {
        let dir = TempDir::new("confab-bench-janus")?;
        let port = {
            let l = std::net::TcpListener::bind((ip, 0))
                .with_context(|| format!("finding a free port on {ip}"))?;
            l.local_addr()?.port()
        };
        write_janus_config(&dir.0, ip, port)?;
        let mut cmd = pinned(cpus, bin);
        cmd.arg("-F")
            .arg(&dir.0)
            .arg("-C")
            .arg(dir.0.join("janus.jcfg"))
            .args(["-d", "3", "-o"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {bin}"))?;
        let pid = child.id().ok_or_else(|| anyhow!("janus exited at once"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            pump(out, log.clone(), None);
        }
        if let Some(err) = child.stderr.take() {
            pump(err, log.clone(), None);
        }
        let mut server = Server {
            child: Some(child),
            pid,
            http: None,
            rtsp: None,
            ws_url: format!("ws://{ip}:{port}"),
            log,
            _dir: Some(dir),
        };
        // Ready once its WebSocket port accepts connections.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
                return Ok(server);
            }
            if let Some(c) = server.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("janus exited ({status}); output:\n{}", server.log_tail(40));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "janus did not listen on {ip}:{port} within 20 s; output:\n{}",
                    server.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A server someone else started.
    pub fn attach(pid: u32, ws_url: &str, http: Option<SocketAddr>) -> Server {
        Server {
            child: None,
            pid,
            http,
            rtsp: None,
            ws_url: ws_url.to_string(),
            log: Default::default(),
            _dir: None,
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

fn write_janus_config(dir: &std::path::Path, ip: &str, port: u16) -> Result<()> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/janus",
        "/usr/lib/aarch64-linux-gnu/janus",
        "/usr/lib/janus",
        "/opt/janus/lib/janus",
    ]
    .into_iter()
    .find(|p| {
        std::path::Path::new(p)
            .join("plugins/libjanus_videoroom.so")
            .exists()
    })
    .ok_or_else(|| anyhow!("Janus's videoroom plugin is not installed (apt-get install janus)"))?;
    // Every plugin and transport but the two we use is disabled: less to load, and the
    // comparison is videoroom against confab, not Janus's whole feature set.
    let plugins = std::fs::read_dir(format!("{lib}/plugins"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".so") && n != "libjanus_videoroom.so")
        .collect::<Vec<_>>()
        .join(",");
    let transports = std::fs::read_dir(format!("{lib}/transports"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".so") && n != "libjanus_websockets.so")
        .collect::<Vec<_>>()
        .join(",");
    let d = dir.display();
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{d}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 3
	session_timeout = 120
}}
media: {{
	rtp_port_range = "20000-40000"
}}
nat: {{
	nice_debug = false
	ice_ignore_list = "vmnet"
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
events: {{
	broadcast = false
}}
"#
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.websockets.jcfg"),
        format!(
            r#"general: {{
	json = "plain"
	ws = true
	ws_port = {port}
	ws_ip = "{ip}"
	wss = false
}}
admin: {{
	admin_ws = false
}}
"#
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// `perf record` attached to the server (software `cpu-clock` event: it works in VMs without
/// hardware counters), until stopped.
pub struct Profiler {
    child: Child,
}

impl Profiler {
    pub async fn start(pid: u32, out: &std::path::Path, call_graph: bool) -> Result<Profiler> {
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-e", "cpu-clock", "-F", "999"]);
        if call_graph {
            // Rust release builds keep no frame pointers; DWARF unwinding works without them.
            cmd.args(["--call-graph", "dwarf,16384"]);
        }
        cmd.args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .context("starting perf record (apt-get install linux-perf)")?;
        // perf needs a moment to attach before the load starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Profiler { child })
    }

    /// SIGINT lets perf write its file; SIGKILL after 20 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
