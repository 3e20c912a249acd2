//! The running server: binds the listeners, prints where they are, wires the pieces together
//! and shuts them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bridge::Bridge;
use crate::chat::Chat;
use crate::config::Config;
use crate::media::api::Command;
use crate::media::udp;
use crate::metrics::Metrics;
use crate::room::Rooms;
use crate::state::App;
use crate::{http, rtsp, tls};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source} (choose another with --data)")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {what} {addr}: {source} (choose another address with --{what})")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Media(std::io::Error),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Chat(#[from] crate::chat::ChatError),
    #[error("{0} (or give one with --token-secret)")]
    TokenSecret(#[from] crate::access::token::SecretError),
}

/// Runs until `stop` resolves, then shuts down within a few seconds.
pub async fn run(mut config: Config, stop: impl Future<Output = ()>) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
        path: config.data.display().to_string(),
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    let chat = Chat::open(&config.data)?;
    let key = crate::access::token::TokenKey::load(config.token_secret.as_deref(), &config.data)?;
    let access = Arc::new(crate::access::Access::new(
        config.rooms.iter().cloned().collect(),
        key,
    ));
    let tls = tls::load(&config).await?;

    let http_listener =
        std::net::TcpListener::bind(config.http).map_err(|source| StartError::Bind {
            what: "http",
            addr: config.http,
            source,
        })?;
    http_listener
        .set_nonblocking(true)
        .map_err(StartError::Media)?;
    let rtsp_listener =
        TcpListener::bind(config.rtsp)
            .await
            .map_err(|source| StartError::Bind {
                what: "rtsp",
                addr: config.rtsp,
                source,
            })?;
    let media =
        udp::start(config.media, &config.public_ips, metrics.clone()).map_err(StartError::Media)?;

    let http_addr = http_listener.local_addr().map_err(StartError::Media)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Tests and scripts read these lines to learn the real ports (port 0 = pick one).
    println!("http listening on {scheme}://{http_addr}");
    // From here on `config.rtsp` is the bound address (port 0 picked one): links to
    // watch someone over RTSP name the real port.
    config.rtsp = rtsp_listener.local_addr().map_err(StartError::Media)?;
    println!("rtsp listening on rtsp://{}", config.rtsp);
    println!("media listening on udp {}", media.local_addr);
    tracing::info!(candidates = ?media.candidates, "announcing ICE host candidates");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if !config.keyframe_cache {
        tracing::info!("keyframe cache for cameras is off ([bridge] keyframe_cache = false)");
        let _ = media.handle.send(Command::KeyframeCache(false));
    }
    let rooms = Arc::new(Rooms::new(
        config.limits.rooms,
        config.limits.participants_per_room,
    ));
    let bridge = Bridge::new(rooms.clone(), media.handle.clone(), metrics.clone());
    for spec in &config.cameras {
        if let Err(e) = bridge.pull(spec.clone()) {
            tracing::warn!(room = %spec.room, camera = %spec.name, error = %e, "camera from the config file not pulled");
        }
    }
    let app = Arc::new(App {
        access: access.clone(),
        rooms,
        bridge: bridge.clone(),
        chat,
        media: media.handle.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown_rx.clone(),
        session_ended: tokio::sync::Notify::new(),
        config,
    });

    let router = http::router(app.clone());
    let http_task = tokio::spawn(http::serve(http_listener, tls, router, shutdown_rx.clone()));
    let rtsp_task = tokio::spawn(rtsp::serve(
        rtsp_listener,
        shutdown_rx.clone(),
        metrics.clone(),
        bridge,
        access,
        app.config.limits.clone(),
    ));

    stop.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Sessions say goodbye and leave; give them a moment, then stop regardless.
    let all_ended = async {
        loop {
            // Registered before the check, so an ending in between is not missed.
            let ended = app.session_ended.notified();
            if metrics.websocket_connections.load(Ordering::Relaxed) <= 0 {
                break;
            }
            ended.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), all_ended).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), http_task).await;
    rtsp_task.abort();
    drop(app);
    media.stop(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(())
}
