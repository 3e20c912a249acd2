//! The RTSP listener on `--rtsp`.
//!
//! The RTSP bridge (push, pull, playback) is its own piece of work; until it lands, the
//! listener exists so the port and the contract's startup line are right, and it answers every
//! request with `501 Not Implemented` and the request's CSeq instead of hanging.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

const MAX_HEADER: usize = 16 * 1024;

pub async fn serve(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    bridge: crate::bridge::Bridge,
) {
    let _ = bridge;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    metrics.rtsp_sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = tokio::time::timeout(Duration::from_secs(60), answer(stream)).await;
                    metrics.rtsp_sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = find_header_end(&buf) {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            let cseq = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("cseq")
                        .then(|| v.trim().to_owned())
                })
                .filter(|v| v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty());
            let mut resp = String::from("RTSP/1.0 501 Not Implemented\r\n");
            if let Some(c) = cseq {
                resp.push_str(&format!("CSeq: {c}\r\n"));
            }
            resp.push_str("Server: confab\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(resp.as_bytes()).await?;
        }
        if buf.len() > MAX_HEADER {
            stream
                .write_all(b"RTSP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    }
}

fn find_header_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
