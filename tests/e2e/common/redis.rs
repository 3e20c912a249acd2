//! A throwaway `redis-server` for cluster tests: a fresh temporary directory, a free loopback
//! port, no persistence (`--save "" --appendonly no`); stopped (SIGKILL) and its directory
//! removed on drop. A missing `redis-server` is an error that says to run scripts/setup.sh:
//! a cluster test never passes by skipping.

use std::io::Read;
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

    /// One command; its reply as text (a string's or status's text, an integer's digits, ""
    /// for nil), through the `redis` crate the server uses.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        command(self.port, args)
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
        if command(port, &["PING"]).is_ok_and(|r| r == "PONG") {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("redis-server on port {port} did not answer PING within 10 s")
}

/// One command to the redis-server on `port`, with bounded waits.
fn command(port: u16, args: &[&str]) -> Result<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    let (name, rest) = args.split_first().context("an empty command")?;
    let reply: Option<String> = redis::cmd(name).arg(rest).query(&mut con)?;
    Ok(reply.unwrap_or_default())
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
