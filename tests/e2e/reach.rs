//! Reachability: peers that reach the media port by ICE-TCP (RFC 6544) only, and an ICE-TCP
//! subscriber that stops reading.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::common::rtsp::{rtsp_url, FfmpegPush, Push, Transport};
use crate::common::server::TestServer;
use crate::common::{expect_clean, expect_media, heavy, run_with_server, Peer, PeerConfig};

const MEDIA_WAIT: Duration = Duration::from_secs(40);

/// A line of `/metrics` by its full name (labels included).
async fn metric(server: &TestServer, name: &str) -> Result<f64> {
    let (status, body) = server.http_get("/metrics").await?;
    ensure!(status == 200, "GET /metrics: {status}");
    body.lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .ok_or_else(|| anyhow!("/metrics has no {name}:\n{body}"))
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_peers_meet() -> Result<()> {
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(120), |server| async move {
        let url = server.ws_url();
        ensure!(
            server.media_tcp.is_some(),
            "the server printed no `ice-tcp listening on tcp` line"
        );
        let a = Peer::join(&url, PeerConfig::new("tcp", "Alice", 41).tcp_only()).await?;
        let b = Peer::join(&url, PeerConfig::new("tcp", "Bob", 42).tcp_only()).await?;
        expect_media(&a, &b, 30, 25, MEDIA_WAIT).await?;
        expect_media(&b, &a, 30, 25, MEDIA_WAIT).await?;
        for p in [&a, &b] {
            expect_clean(p)?;
        }
        let tcp = metric(
            &server,
            "confab_connected_peer_connections{transport=\"tcp\"}",
        )
        .await?;
        let udp = metric(
            &server,
            "confab_connected_peer_connections{transport=\"udp\"}",
        )
        .await?;
        ensure!(
            tcp == 4.0 && udp == 0.0,
            "connected by tcp {tcp}, by udp {udp}: expected all four connections on TCP"
        );
        ensure!(metric(&server, "confab_ice_tcp_connections").await? >= 4.0);
        ensure!(
            !server
                .log_grep("media connected only by ICE-TCP")
                .is_empty(),
            "the log does not say that the browsers connected by TCP only"
        );
        Ok(())
    })
    .await
}

/// A TCP proxy between a test peer and the server's ICE-TCP port whose server-to-peer
/// direction can be stopped: the peer then looks exactly like a subscriber that stopped
/// reading. Its socket toward the server has a small receive buffer, so the server feels it
/// within a second rather than after megabytes of kernel buffers.
struct StallingProxy {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
}

impl StallingProxy {
    async fn start(server: SocketAddr) -> Result<StallingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    if let Err(e) = Self::pipe(client, server, flag).await {
                        eprintln!("stalling proxy: {e:#}");
                    }
                });
            }
        });
        Ok(StallingProxy { addr, stalled })
    }

    async fn pipe(client: TcpStream, server: SocketAddr, stalled: Arc<AtomicBool>) -> Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(8 * 1024)?;
        let upstream = socket.connect(server).await.context("proxy to server")?;
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = upstream.into_split();
        let up = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = cr.read(&mut buf).await {
                if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 4 * 1024];
        loop {
            if stalled.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let n = sr.read(&mut buf).await?;
            if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        up.abort();
        Ok(())
    }
}

/// Pictures `p` has decoded from participant `id` (a camera's do not carry the test pattern,
/// so they are counted whatever they show).
fn pictures(p: &Peer, id: &str) -> u64 {
    p.state(|s| s.remote(id).frames_decoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_subscriber_that_stops_reading() -> Result<()> {
    const STALL: Duration = Duration::from_secs(8);
    let _heavy = heavy().await;
    run_with_server(Duration::from_secs(150), |server| async move {
        let url = server.ws_url();
        let tcp = server.media_tcp.context("no ICE-TCP listener")?;
        let proxy = StallingProxy::start(tcp).await?;
        let room = "stall";
        let fine = Peer::join(&url, PeerConfig::new(room, "Fine", 52).subscriber_only()).await?;
        let slow = Peer::join(
            &url,
            PeerConfig::new(room, "Slow", 53)
                .subscriber_only()
                .tcp_via(proxy.addr),
        )
        .await?;
        // A camera at about 1 Mbit/s: enough to fill the kernel's buffers within a second
        // once the slow subscriber stops reading.
        let mut cam = FfmpegPush::spawn(
            &rtsp_url(&server, room, "cam"),
            Push::h264_opus(Transport::Tcp),
        )?;
        for p in [&fine, &slow] {
            p.wait_until(
                &format!("{} to decode the camera", p.id),
                MEDIA_WAIT,
                |s| s.remote("cam").frames_decoded >= 30,
            )
            .await
            .with_context(|| format!("ffmpeg said:\n{}", cam.tool.stderr()))?;
        }
        let pid = server.pid();
        let rss_before = rss_kib(pid)?;
        let fine_before = pictures(&fine, "cam");

        // The slow subscriber stops reading.
        proxy.stalled.store(true, Ordering::Relaxed);
        let stalled_at = Instant::now();
        let mut rss_peak = rss_before;
        while stalled_at.elapsed() < STALL {
            tokio::time::sleep(Duration::from_millis(250)).await;
            rss_peak = rss_peak.max(rss_kib(pid)?);
        }
        let fine_during = pictures(&fine, "cam") - fine_before;
        let slow_before = pictures(&slow, "cam");
        let congested = metric(&server, "confab_ice_tcp_congested_total").await?;
        let dropped = metric(&server, "confab_dropped_sends_total").await?;
        println!(
            "reach/stall: {STALL:?} without reading: the other subscriber decoded {fine_during} pictures; congested {congested}, dropped sends {dropped}; server RSS {rss_before} KiB -> peak {rss_peak} KiB"
        );
        // The camera sends 30 pictures a second; the other subscriber must not notice.
        ensure!(
            fine_during as f64 >= STALL.as_secs_f64() * 20.0,
            "the other subscriber decoded only {fine_during} pictures in {STALL:?} while one subscriber stalled"
        );
        ensure!(
            congested >= 1.0,
            "the stalled connection was never reported congested"
        );
        ensure!(
            rss_peak.saturating_sub(rss_before) < 16 * 1024,
            "server RSS grew from {rss_before} KiB to {rss_peak} KiB while a subscriber stalled"
        );

        // It reads again: its video comes back, at a keyframe.
        proxy.stalled.store(false, Ordering::Relaxed);
        let resumed_at = Instant::now();
        slow.wait_until(
            "the slow subscriber's video to come back",
            Duration::from_secs(20),
            |s| s.remote("cam").frames_decoded >= slow_before + 60,
        )
        .await?;
        println!(
            "reach/stall: reading again, 60 more pictures after {:.1?}",
            resumed_at.elapsed()
        );
        expect_clean(&fine)?;
        cam.tool.kill().await?;
        Ok(())
    })
    .await
}
