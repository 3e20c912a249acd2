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
/// It can be killed and started again on the same data directory ([`TestServer::restart`]);
/// its ports change then.
pub struct TestServer {
    child: Child,
    pub http: SocketAddr,
    pub rtsp: SocketAddr,
    pub media: SocketAddr,
    /// The ICE-TCP listener (`ice-tcp listening on tcp …`), unless it is off.
    pub media_tcp: Option<SocketAddr>,
    data_dir: PathBuf,
    log_level: String,
    extra_args: Vec<String>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl TestServer {
    /// Starts the server with `--log info` (or `CONFAB_E2E_SERVER_LOG` if set).
    pub async fn start() -> Result<TestServer> {
        Self::start_with(&default_log_level(), &[]).await
    }

    /// Starts the server with the default log filter and extra arguments.
    pub async fn start_with_args(extra_args: &[&str]) -> Result<TestServer> {
        Self::start_with(&default_log_level(), extra_args).await
    }

    /// Starts the server with its chat store in a fresh database on the shared throwaway
    /// PostgreSQL server of this test process (started on first use).
    pub async fn start_on_postgres() -> Result<TestServer> {
        let url = postgres_database().await?;
        Self::start_with_args(&["--database", &url]).await
    }

    /// Starts the server with a log filter and extra arguments.
    pub async fn start_with(log_level: &str, extra_args: &[&str]) -> Result<TestServer> {
        let data_dir = fresh_temp_dir("confab-e2e")?;
        Self::start_in(data_dir, log_level, extra_args).await
    }

    /// Starts the server with `config` (TOML) as its `--config` file. The file is written
    /// beside the data directory (`<data>.toml`), not in it, so that tests looking into the
    /// data directory see only what the server wrote.
    pub async fn start_with_config(config: &str) -> Result<TestServer> {
        let data_dir = fresh_temp_dir("confab-e2e")?;
        let mut path = data_dir.clone().into_os_string();
        path.push(".toml");
        let path = PathBuf::from(path);
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let path = path.to_string_lossy().to_string();
        Self::start_in(data_dir, &default_log_level(), &["--config", &path]).await
    }

    /// Starts the server on an existing data directory, which it then owns (removes on drop).
    pub async fn start_in(
        data_dir: PathBuf,
        log_level: &str,
        extra_args: &[&str],
    ) -> Result<TestServer> {
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let (child, lines) = spawn(&data_dir, log_level, &extra_args, log.clone())?;
        let mut server = TestServer {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            rtsp: "0.0.0.0:0".parse().unwrap(),
            media: "0.0.0.0:0".parse().unwrap(),
            media_tcp: None,
            data_dir,
            log_level: log_level.to_string(),
            extra_args,
            log,
        };
        server.await_listeners(lines).await?;
        Ok(server)
    }

    /// Kills the process with SIGKILL (no chance to flush anything), waits for it, and starts
    /// a new one with the same arguments on the same data directory. The log keeps the old
    /// process's lines, followed by a marker.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.log
            .lock()
            .unwrap()
            .push_back("===== test harness: restarting the server after SIGKILL =====".into());
        let (child, lines) = spawn(
            &self.data_dir,
            &self.log_level,
            &self.extra_args,
            self.log.clone(),
        )?;
        self.child = child;
        self.await_listeners(lines).await
    }

    /// SIGKILL (`kill -9`) and wait for the process to be gone.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("kill -9 of the server")?;
        self.child.wait().context("waiting for the killed server")?;
        Ok(())
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Waits (bounded) for the current process's three "listening" lines on `lines` (its
    /// stdout) and fills the address fields.
    async fn await_listeners(&mut self, lines: std::sync::mpsc::Receiver<String>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let found = tokio::task::spawn_blocking(move || {
            let (mut http, mut rtsp, mut media, mut tcp) = (None, None, None, None);
            while http.is_none() || rtsp.is_none() || media.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = match lines.recv_timeout(left) {
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
                } else if let Some(rest) = line.strip_prefix("ice-tcp listening on tcp ") {
                    tcp = rest.trim().parse::<SocketAddr>().ok();
                }
            }
            (http, rtsp, media, tcp)
        })
        .await?;
        match found {
            (Some(h), Some(r), Some(m), tcp) => {
                self.http = h;
                self.rtsp = r;
                self.media = m;
                self.media_tcp = tcp;
                Ok(())
            }
            (h, r, m, _) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "server did not print its listeners within 20 s (http {h:?}, rtsp {r:?}, media {m:?}, exit status {status:?}); output:\n{}",
                    self.log_tail(60)
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

    /// Any request on the HTTP listener; see [`http_request`].
    pub async fn http_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse> {
        http_request(self.http, method, path, headers, body).await
    }
}

/// A fresh database on the shared throwaway PostgreSQL server (`chat::store::temp_postgres`);
/// fails, saying to run scripts/setup.sh, where PostgreSQL is not installed.
pub async fn postgres_database() -> Result<String> {
    tokio::task::spawn_blocking(|| {
        std::panic::catch_unwind(|| {
            confab::chat::store::temp_postgres::TempPostgres::shared().fresh_database()
        })
        .map_err(|e| {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::anyhow!("no PostgreSQL for this test: {why}")
        })
    })
    .await?
}

/// The server's log filter: `CONFAB_E2E_SERVER_LOG`, else `info`.
pub fn default_log_level() -> String {
    std::env::var("CONFAB_E2E_SERVER_LOG").unwrap_or_else(|_| "info".into())
}

fn spawn(
    data_dir: &std::path::Path,
    log_level: &str,
    extra_args: &[String],
    log: Arc<Mutex<VecDeque<String>>>,
) -> Result<(Child, std::sync::mpsc::Receiver<String>)> {
    // `CONFAB_E2E_BIN`: another build of the server (a release build, for measurements).
    let bin =
        std::env::var("CONFAB_E2E_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_confab").to_owned());
    let mut cmd = Command::new(&bin);
    // Loopback listeners on free ports, unless the test gives its own (`extra_args`).
    for (flag, default) in [
        ("--http", "127.0.0.1:0"),
        ("--rtsp", "127.0.0.1:0"),
        ("--media", "127.0.0.1:0"),
    ] {
        if !extra_args.iter().any(|a| a == flag) {
            cmd.args([flag, default]);
        }
    }
    cmd.arg("--data")
        .arg(data_dir)
        .args(["--log", log_level])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {bin}"))?;
    let echo = std::env::var_os("CONFAB_E2E_ECHO").is_some();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    spawn_log_pump("out", stdout, log.clone(), Some(line_tx), echo);
    spawn_log_pump("err", stderr, log, None, echo);
    Ok((child, line_rx))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let mut config = self.data_dir.clone().into_os_string();
        config.push(".toml");
        let _ = std::fs::remove_file(config);
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

/// A minimal HTTP/1.1 GET (no TLS, `Connection: close`): (status, body as text).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let r = http_request(addr, "GET", path, &[("Accept", "*/*")], &[]).await?;
    Ok((r.status, String::from_utf8_lossy(&r.body).to_string()))
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

/// An HTTP response as [`http_request`] returns it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {:.300}",
                self.status,
                self.text()
            )
        })
    }
}

/// A minimal HTTP/1.1 request (no TLS, `Connection: close`, `Content-Length` set when there
/// is a body). The body is written while the response is read, so a server that answers
/// early (413 before reading an oversized body) and closes is seen answering, not as a
/// failed write.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let what = format!("{method} {path}");
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut reader, mut writer) = stream.into_split();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let write = async move {
            let r = writer.write_all(&request).await;
            // Keep the write half open until the response is read: shutting it down early
            // is fine for HTTP but some servers treat a half-close as an aborted request.
            (r, writer)
        };
        let read = async {
            let mut raw = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let err = loop {
                match reader.read(&mut buf).await {
                    Ok(0) => break None,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) => break Some(e),
                }
            };
            (raw, err)
        };
        let ((write_result, _writer), (raw, read_err)) = tokio::join!(write, read);
        match parse_http_response_bytes(&raw) {
            Ok(resp) => Ok(resp),
            Err(e) => Err(anyhow!(
                "{e} (request write: {write_result:?}, read error: {read_err:?}, {} bytes received)",
                raw.len()
            )),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .map_err(|_| anyhow!("{what}: no complete response within 20 s"))?
        .with_context(|| what.clone())
}

fn parse_http_response_bytes(raw: &[u8]) -> Result<HttpResponse> {
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
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        let declared = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match declared {
            Some(len) if body.len() < len => {
                bail!("body truncated: {} of {len} bytes", body.len())
            }
            Some(len) => body[..len].to_vec(),
            None => body.to_vec(),
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}
