//! Starting the `confab` binary for a test and talking plain HTTP to it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many of the server's most recent output lines are kept for failure reports.
const LOG_LINES_KEPT: usize = 4000;

/// A running `confab` server on ephemeral ports; killed (and its data dir removed) on drop.
pub struct TestServer {
    child: Child,
    pub http: SocketAddr,
    pub rtsp: SocketAddr,
    pub media: SocketAddr,
    data_dir: PathBuf,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl TestServer {
    /// Starts the server with `--log info` (or `CONFAB_E2E_SERVER_LOG` if set).
    pub async fn start() -> Result<TestServer> {
        let level = std::env::var("CONFAB_E2E_SERVER_LOG").unwrap_or_else(|_| "info".into());
        Self::start_with(&level, &[]).await
    }

    /// Starts the server with a log filter and extra arguments.
    pub async fn start_with(log_level: &str, extra_args: &[&str]) -> Result<TestServer> {
        let bin = env!("CARGO_BIN_EXE_confab");
        let data_dir = fresh_temp_dir("confab-e2e")?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--http",
            "127.0.0.1:0",
            "--rtsp",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(&data_dir)
        .args(["--log", log_level])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {bin}"))?;

        let log = Arc::new(Mutex::new(VecDeque::new()));
        let echo = std::env::var_os("CONFAB_E2E_ECHO").is_some();
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_log_pump("out", stdout, log.clone(), Some(line_tx), echo);
        spawn_log_pump("err", stderr, log.clone(), None, echo);

        // Wait (bounded) for the three "listening" lines.
        let (mut http, mut rtsp, mut media) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let rx = tokio::task::spawn_blocking(move || {
            while http.is_none() || rtsp.is_none() || media.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = match line_rx.recv_timeout(left) {
                    Ok(line) => line,
                    Err(_) => break,
                };
                if let Some(rest) = line.strip_prefix("http listening on http://") {
                    http = rest.trim().parse::<SocketAddr>().ok();
                } else if let Some(rest) = line.strip_prefix("http listening on https://") {
                    http = rest.trim().parse::<SocketAddr>().ok();
                } else if let Some(rest) = line.strip_prefix("rtsp listening on rtsp://") {
                    rtsp = rest.trim().parse::<SocketAddr>().ok();
                } else if let Some(rest) = line.strip_prefix("media listening on udp ") {
                    media = rest.trim().parse::<SocketAddr>().ok();
                }
            }
            (http, rtsp, media)
        })
        .await?;
        let mut server = TestServer {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            rtsp: "0.0.0.0:0".parse().unwrap(),
            media: "0.0.0.0:0".parse().unwrap(),
            data_dir,
            log,
        };
        match rx {
            (Some(h), Some(r), Some(m)) => {
                server.http = h;
                server.rtsp = r;
                server.media = m;
                Ok(server)
            }
            (h, r, m) => {
                let status = server.child.try_wait().ok().flatten();
                bail!(
                    "server did not print its listeners within 20 s (http {h:?}, rtsp {r:?}, media {m:?}, exit status {status:?}); output:\n{}",
                    server.log_tail(60)
                )
            }
        }
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// The last `n` lines the server wrote (stdout and stderr interleaved).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines of the server's output containing `needle`.
    pub fn log_grep(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", self.child.id());
        }
        Ok(())
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the server did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the process is still running.
    /// The server's process id (for reading its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET path` on the HTTP listener: (status, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http, path).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn spawn_log_pump<R: Read + Send + 'static>(
    stream: &'static str,
    reader: R,
    log: Arc<Mutex<VecDeque<String>>>,
    lines: Option<std::sync::mpsc::Sender<String>>,
    echo: bool,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(reader);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[confab {stream}] {line}");
            }
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            let mut log = log.lock().unwrap();
            if log.len() >= LOG_LINES_KEPT {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

/// A new empty directory under the system temp dir.
pub fn fresh_temp_dir(prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A minimal HTTP/1.1 GET (no TLS, `Connection: close`): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow!("GET {path}: no complete response within 10 s"))?
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("response without header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk header"))?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size_str:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size..];
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        }
    }
}
