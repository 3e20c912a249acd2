//! A throwaway `redis-server` for cluster tests: a fresh temporary directory, a free loopback
//! port, no persistence (`--save "" --appendonly no`); stopped (SIGKILL) and its directory
//! removed on drop. A missing `redis-server` is an error that says to run scripts/setup.sh:
//! a cluster test never passes by skipping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct TempRedis {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
}

impl TempRedis {
    pub fn start() -> Result<TempRedis> {
        let dir = super::server::fresh_temp_dir("confab-redis")?;
        let mut last = String::new();
        // A port that was free a moment ago may be taken in between: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            match spawn(&dir, port) {
                Ok(child) => {
                    return Ok(TempRedis {
                        child: Some(child),
                        dir,
                        port,
                    })
                }
                Err(e) => last = e.to_string(),
            }
        }
        bail!("redis-server did not start: {last}")
    }

    /// Starts a stopped server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = Some(spawn(&self.dir, self.port)?);
        Ok(())
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its clients see the connection refused from now on).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command given as its arguments (sent as a RESP array, so any bytes may be in them);
    /// the raw RESP reply.
    pub fn command_args(&self, args: &[&str]) -> Result<String> {
        let mut line = format!("*{}\r\n", args.len());
        for a in args {
            line.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        // `command` appends the final CRLF.
        command(self.port, line.trim_end_matches("\r\n"))
    }

    /// One inline command; the raw RESP reply (e.g. `+PONG\r\n`, a bulk string's bytes).
    pub fn command(&self, line: &str) -> Result<String> {
        command(self.port, line)
    }
}

/// Starts redis-server on `port` and waits (10 s at most) until it answers PING.
fn spawn(dir: &std::path::Path, port: u16) -> Result<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting redis-server (not installed? run scripts/setup.sh)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            bail!("redis-server exited ({status}): {out}");
        }
        if command(port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("redis-server on port {port} did not answer PING within 10 s")
}

/// Sends one inline command and reads what arrives within 100 ms of the first bytes.
fn command(port: u16, line: &str) -> Result<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{line}\r\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let n = s.read(&mut buf)?;
    out.extend_from_slice(&buf[..n]);
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
