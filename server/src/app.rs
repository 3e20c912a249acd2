//! The running server: binds the listeners, prints where they are, wires the pieces together
//! and shuts them down in order.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0} (or give one with --token-secret)")]
    TokenSecret(#[from] crate::access::token::SecretError),
}

/// Runs until the first message on `stop` (a SIGINT or SIGTERM), then shuts down within a few
/// seconds. In cluster mode it drains first (its rooms move to other nodes, for at most
/// `--drain-timeout`); a second message on `stop` cuts the drain short.
pub async fn run(mut config: Config, mut stop: mpsc::Receiver<()>) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
        path: config.data.display().to_string(),
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    let chat = Chat::open(&config.store, &config.files, metrics.clone()).await?;
    tracing::info!(store = %chat.describe(), files = %config.files.display(), "chat store open");
    let key = crate::access::token::TokenKey::for_node(
        config.token_secret.as_deref(),
        config.cluster.as_ref().map(|c| c.secret.as_str()),
        &config.data,
    )?;
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
    let tcp = match config.media_tcp {
        crate::config::MediaTcp::SameAsMedia => udp::TcpBind::SameAsMedia,
        crate::config::MediaTcp::At(a) => udp::TcpBind::At(a),
        crate::config::MediaTcp::Off => udp::TcpBind::Off,
    };
    let media = udp::start(config.media, tcp, &config.public_ips, metrics.clone())
        .map_err(StartError::Media)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let turn = match config.turn {
        Some(t) => {
            let setup = crate::turn::io::TurnSetup {
                listen: t.listen,
                tls: tls.as_ref().map(|c| (t.tls, c.get_inner())),
                media_candidates: media.candidates.clone(),
                media_bound: media.local_addr,
            };
            Some(
                crate::turn::io::start(setup, metrics.clone(), shutdown_rx.clone())
                    .await
                    .map_err(StartError::Media)?,
            )
        }
        None => None,
    };

    let http_addr = http_listener.local_addr().map_err(StartError::Media)?;
    // From here on `config.rtsp` is the bound address (port 0 picked one): links to
    // watch someone over RTSP name the real port, and so does this node's cluster record.
    config.rtsp = rtsp_listener.local_addr().map_err(StartError::Media)?;
    // Before the listening lines: a node that cannot join its cluster does not start.
    let cluster = match &config.cluster {
        Some(c) => {
            let cluster =
                crate::cluster::Cluster::connect(c, http_addr.port(), config.rtsp.port()).await?;
            tracing::info!(node = cluster.id(), url = cluster.url(), redis = %crate::cluster::redacted(&c.redis), "joined the cluster");
            Some(cluster)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Tests and scripts read these lines to learn the real ports (port 0 = pick one).
    println!("http listening on {scheme}://{http_addr}");
    println!("rtsp listening on rtsp://{}", config.rtsp);
    // Before the media line, which the test harnesses take as the last of the listeners.
    if let Some(tcp) = media.tcp_addr {
        println!("ice-tcp listening on tcp {tcp}");
    }
    if let Some(t) = &turn {
        println!("turn listening on udp {}", t.udp);
        println!("turn listening on tcp {}", t.tcp);
        match t.tls {
            Some(a) => println!("turn listening on tls {a}"),
            None => tracing::warn!("TURN over TLS is off: it needs a certificate (--tls-cert/--tls-key or --tls-self-signed)"),
        }
    }
    println!("media listening on udp {}", media.local_addr);
    tracing::info!(candidates = ?media.candidates, tcp = ?media.tcp_candidates, "announcing ICE host candidates");

    if !config.keyframe_cache {
        tracing::info!("keyframe cache for cameras is off ([bridge] keyframe_cache = false)");
        let _ = media.handle.send(Command::KeyframeCache(false));
    }
    let rooms = Arc::new(Rooms::new(
        config.limits.rooms,
        config.limits.participants_per_room,
    ));
    if let Some(cluster) = &cluster {
        tokio::spawn(
            cluster
                .clone()
                .run(rooms.clone(), metrics.clone(), shutdown_rx.clone()),
        );
    }
    let bridge = Bridge::new(rooms.clone(), media.handle.clone(), metrics.clone());
    // In a cluster only the room's node pulls a camera (`cluster/cameras.rs`); alone, this
    // node pulls them all.
    let cameras = match (&cluster, &config.cluster) {
        (Some(cluster), Some(c)) => {
            let cameras = crate::cluster::cameras::Cameras::new(
                cluster.clone(),
                bridge.clone(),
                rooms.clone(),
                &c.secret,
                config.cameras.clone(),
            );
            tokio::spawn(cameras.clone().run(shutdown_rx.clone()));
            Some(cameras)
        }
        _ => {
            for spec in &config.cameras {
                if let Err(e) = bridge.pull(spec.clone()) {
                    tracing::warn!(room = %spec.room, camera = %spec.name, error = %e, "camera from the config file not pulled");
                }
            }
            None
        }
    };
    let app = Arc::new(App {
        access: access.clone(),
        rooms,
        bridge: bridge.clone(),
        chat,
        media: media.handle.clone(),
        turn: turn.as_ref().map(|t| crate::turn::TurnService {
            secret: t.secret.clone(),
            udp: t.udp.port(),
            tcp: t.tcp.port(),
            tls: t.tls.map(|a| a.port()),
        }),
        announced: crate::diagnostics::Announced {
            udp: media.candidates.clone(),
            tcp: media.tcp_candidates.clone(),
            public_ip: !config.public_ips.is_empty(),
            turn: turn.as_ref().map(|t| (t.udp, t.tcp, t.tls)),
        },
        metrics: metrics.clone(),
        cluster,
        cameras,
        shutdown: shutdown_rx.clone(),
        session_ended: tokio::sync::Notify::new(),
        drain_requested: tokio::sync::Notify::new(),
        config,
    });

    if let Some(cluster) = &app.cluster {
        let relayed = cluster.clone().listen(shutdown_rx.clone());
        tokio::spawn(http::serve_relayed(app.clone(), relayed));
    }
    let router = http::router(app.clone());
    let http_task = tokio::spawn(http::serve(http_listener, tls, router, shutdown_rx.clone()));
    let rtsp_task = tokio::spawn(rtsp::serve(
        rtsp_listener,
        shutdown_rx.clone(),
        metrics.clone(),
        bridge,
        access,
        app.config.limits.clone(),
        app.cluster.clone(),
    ));

    tokio::select! {
        _ = stop.recv() => {}
        _ = app.drain_requested.notified() => {}
    }
    if let Some(cluster) = app.cluster.clone() {
        tokio::select! {
            _ = crate::drain::drain(&app, &cluster) => {}
            _ = stop.recv() => tracing::warn!("stopping now: the drain was cut short by a second signal"),
        }
    }
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
    // Every chat write queued so far is committed before the process exits.
    let _ = tokio::time::timeout(Duration::from_secs(1), app.chat.close()).await;
    rtsp_task.abort();
    drop(app);
    if let Some(t) = turn {
        t.stop();
    }
    media.stop(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(())
}
