//! HTTP pictures for the tests: an ffmpeg MJPEG server (what an IP camera or mjpg-streamer
//! serves), a still-JPEG server of our own that counts its requests, hostile MJPEG servers,
//! and a client of the server's `stream.mjpeg`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use super::rtsp::Tool;
use super::server::HttpResponse;
use super::TestServer;

/// ffmpeg serving its test picture as an MJPEG stream at `http://127.0.0.1:PORT/feed`
/// (`-f mpjpeg -listen 1`: one client; when it goes, ffmpeg exits).
pub fn ffmpeg_mjpeg_server(port: u16, size: &str, fps: u32) -> Result<Tool> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc=size={size}:rate={fps}"),
        "-q:v",
        "6",
        "-f",
        "mpjpeg",
        "-listen",
        "1",
        &format!("http://127.0.0.1:{port}/feed"),
    ]);
    Tool::spawn(&format!("ffmpeg MJPEG server on port {port}"), cmd)
}

/// `POST /api/rooms/{room}/cameras` with any JSON body.
pub async fn post_camera(
    server: &TestServer,
    room: &str,
    body: serde_json::Value,
) -> Result<HttpResponse> {
    server
        .http_request(
            "POST",
            &format!("/api/rooms/{room}/cameras"),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await
}

/// A metric's value from `/metrics` (0 if it is not there).
pub async fn metric(server: &TestServer, name: &str) -> Result<f64> {
    let (status, text) = server.http_get("/metrics").await?;
    ensure!(status == 200, "GET /metrics: {status}");
    Ok(text
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0.0))
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// A JPEG of `width` x `height` whose picture depends on `n` (a bar moves).
pub fn test_jpeg(width: u32, height: u32, n: u64) -> Vec<u8> {
    let bar = (n * 16 % u64::from(width)) as u32;
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        if x.abs_diff(bar) < 8 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 96])
        }
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .expect("encoding a JPEG in memory");
    out
}

/// A camera's snapshot URL: each GET answers a new JPEG (`image/jpeg`, keep-alive).
/// Requests are counted with their time. Stops when dropped.
pub struct StillServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StillServer {
    pub async fn start(width: u32, height: u32) -> Result<StillServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (log, counter) = (log.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    // Bounded: a test never makes more than this many requests.
                    for _ in 0..10_000 {
                        let mut line = String::new();
                        let mut head_done = false;
                        while conn.read_line(&mut line).await.unwrap_or(0) > 0 {
                            if line == "\r\n" {
                                head_done = true;
                                break;
                            }
                            line.clear();
                        }
                        if !head_done {
                            return;
                        }
                        log.lock().unwrap().push(Instant::now());
                        let jpeg =
                            test_jpeg(width, height, counter.fetch_add(1, Ordering::Relaxed));
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                            jpeg.len()
                        );
                        if conn.get_mut().write_all(head.as_bytes()).await.is_err()
                            || conn.get_mut().write_all(&jpeg).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(StillServer {
            url: format!("http://{addr}/snapshot.jpg"),
            requests,
            task,
        })
    }

    /// Requests answered within the last `window`.
    pub fn requests_within(&self, window: Duration) -> usize {
        let now = Instant::now();
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|t| now.duration_since(**t) <= window)
            .count()
    }
}

impl Drop for StillServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a hostile MJPEG server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A part that never ends: no boundary after it, bytes as fast as they are read.
    EndlessPart,
    /// A part that announces 99 999 999 999 bytes.
    HugeLength,
    /// Tiny parts that are no pictures, as fast as they are read.
    TinyParts,
    /// Accepts the connection and never answers.
    Silent,
}

/// A hostile MJPEG server: every connection gets the same treatment, and at most
/// `max_bytes` per connection (so that the test's loops end). Counts what it wrote.
pub struct HostileServer {
    pub url: String,
    pub written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileServer {
    pub async fn start(how: Hostile, max_bytes: u64) -> Result<HostileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                if how == Hostile::Silent {
                    // Keep it open, say nothing.
                    held.push(conn);
                    continue;
                }
                let count = count.clone();
                tokio::spawn(async move {
                    let _ = serve_hostile(conn, how, max_bytes, &count).await;
                });
            }
        });
        Ok(HostileServer {
            url: format!("http://{addr}/video"),
            written,
            task,
        })
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_hostile(
    conn: TcpStream,
    how: Hostile,
    max_bytes: u64,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    while conn.read_line(&mut line).await? > 0 && line != "\r\n" {
        line.clear();
    }
    let mut out = conn.into_inner();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=b\r\n\r\n";
    out.write_all(head.as_bytes()).await?;
    let (first, repeat): (Vec<u8>, Vec<u8>) = match how {
        Hostile::EndlessPart => (
            b"--b\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8".to_vec(),
            vec![0xAB; 64 << 10],
        ),
        Hostile::HugeLength => (
            b"--b\r\nContent-Type: image/jpeg\r\nContent-Length: 99999999999\r\n\r\n\xff\xd8"
                .to_vec(),
            vec![0xCD; 64 << 10],
        ),
        Hostile::TinyParts => (Vec::new(), b"--b\r\n\r\nx\r\n".repeat(4096)),
        Hostile::Silent => unreachable!("silent servers write nothing"),
    };
    out.write_all(&first).await?;
    let mut sent = first.len() as u64;
    while sent < max_bytes {
        out.write_all(&repeat).await?;
        sent += repeat.len() as u64;
        count.fetch_add(repeat.len() as u64, Ordering::Relaxed);
    }
    // Then hold the connection open without a word until the client gives up.
    let mut sink = [0u8; 64];
    while out.read(&mut sink).await? > 0 {}
    Ok(())
}

/// A client of `stream.mjpeg`: the response's headers, then its parts one by one.
pub struct MjpegClient {
    pub status: u16,
    pub content_type: String,
    reader: BufReader<TcpStream>,
    /// Whether the body is chunked (HTTP/1.1 without a length), and what is left of the
    /// current chunk.
    chunked: bool,
    chunk_left: usize,
}

impl MjpegClient {
    pub async fn get(addr: SocketAddr, path: &str) -> Result<MjpegClient> {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut reader = BufReader::new(conn);
        let mut status_line = String::new();
        tokio::time::timeout(Duration::from_secs(15), reader.read_line(&mut status_line))
            .await
            .context("no response within 15 s")??;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut content_type = String::new();
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case("content-type") {
                    content_type = v.trim().to_owned();
                }
                if n.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        Ok(MjpegClient {
            status,
            content_type,
            reader,
            chunked,
            chunk_left: 0,
        })
    }

    /// The next part's body (the server writes `Content-Length`), within `within`. The body
    /// is chunked on the wire (HTTP/1.1 without a length): chunk framing is read here too.
    pub async fn next_part(&mut self, within: Duration) -> Result<Vec<u8>> {
        tokio::time::timeout(within, self.read_part())
            .await
            .map_err(|_| anyhow!("no MJPEG part within {within:?}"))?
    }

    async fn read_part(&mut self) -> Result<Vec<u8>> {
        // The part's head: `--confab-frame`, headers, empty line.
        let mut length = None;
        let mut seen_boundary = false;
        loop {
            let line = self.read_body_line().await?;
            if line.starts_with(b"--confab-frame") {
                seen_boundary = true;
                continue;
            }
            if seen_boundary && line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line).to_string();
            if let Some((n, v)) = text.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| anyhow!("a part without Content-Length"))?;
        let mut body = vec![0u8; length];
        self.read_body_exact(&mut body).await?;
        Ok(body)
    }

    /// Up to `want` bytes of the body (dechunked).
    async fn body_bytes(&mut self, want: usize) -> Result<Vec<u8>> {
        if !self.chunked {
            let mut buf = vec![0u8; want];
            self.reader.read_exact(&mut buf).await?;
            return Ok(buf);
        }
        if self.chunk_left == 0 {
            let mut size = String::new();
            loop {
                size.clear();
                if self.reader.read_line(&mut size).await? == 0 {
                    bail!("the stream ended");
                }
                if !size.trim().is_empty() {
                    break;
                }
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| anyhow!("bad chunk size {size:?}"))?;
            if n == 0 {
                bail!("the stream ended");
            }
            self.chunk_left = n;
        }
        let n = want.min(self.chunk_left);
        let mut buf = vec![0u8; n];
        self.reader.read_exact(&mut buf).await?;
        self.chunk_left -= n;
        if self.chunk_left == 0 {
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).await?;
        }
        Ok(buf)
    }

    async fn read_body_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let b = self.body_bytes(1).await?;
            if b == b"\n" {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            line.extend(b);
            ensure!(
                line.len() < 1024,
                "a header line of over 1 KiB in the stream"
            );
        }
    }

    async fn read_body_exact(&mut self, out: &mut [u8]) -> Result<()> {
        let mut at = 0;
        while at < out.len() {
            let b = self.body_bytes(out.len() - at).await?;
            out[at..at + b.len()].copy_from_slice(&b);
            at += b.len();
        }
        Ok(())
    }
}
