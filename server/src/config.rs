//! Configuration: command-line flags (each also an environment variable), an optional TOML
//! file, and the defaults of `../shared/INTERFACE.md`, merged into one validated [`Config`].
//! Precedence: flag/env > file > default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::names::RoomName;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for confab: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--drain-timeout: {reason} (e.g. 60s or 2m)")]
    DrainTimeout { reason: String },
    #[error("--media-tcp {value:?} is neither an address (e.g. 0.0.0.0:7882) nor `off`")]
    MediaTcp { value: String },
    #[error("--turn-listen and --turn-tls configure the TURN relay: add --turn to run it")]
    TurnWithoutTurn,
    #[error("--tls-self-signed and --tls-cert/--tls-key exclude each other: pick one")]
    TlsBoth,
    #[error("--tls-cert needs --tls-key (the certificate's private key, PEM)")]
    TlsCertWithoutKey,
    #[error("--tls-key needs --tls-cert (the certificate chain, PEM)")]
    TlsKeyWithoutCert,
    #[error("TLS {what} file {} does not exist or is not a file", path.display())]
    TlsFile { what: &'static str, path: PathBuf },
    #[error(
        "--public-ip {ip} is not an address peers can reach: give the host's public or LAN address"
    )]
    PublicIp { ip: IpAddr },
    #[error("--log {filter:?} is not a valid filter: use e.g. info, debug or confab=debug,info")]
    LogFilter { filter: String },
    #[error("limits.{name} is {value}; it must be between {min} and {max}")]
    Limit {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("the token secret must be at least {min} characters; use a long random string")]
    TokenSecret { min: usize },
    #[error("[[camera]] {0}")]
    Camera(crate::bridge::pull::SpecError),
    #[error("[[camera]] {name} appears twice in room {room}; give each camera its own name")]
    CameraTwice { room: String, name: String },
    #[error("[[room]] name: {0}")]
    RoomName(crate::names::NameError),
    #[error("[[room]] {room}: passwords are not kept in plain text; run `confab hash-password` and put its output in password_hash")]
    PlainPassword { room: RoomName },
    #[error("[[room]] {room}: password_hash and require_token exclude each other; pick one")]
    PasswordAndToken { room: RoomName },
    #[error("[[room]] {room}: {source}")]
    PasswordHash {
        room: RoomName,
        source: crate::access::password::PasswordError,
    },
    #[error("[[room]] {room} says nothing: give password_hash or require_token = true (rooms are open by default)")]
    NoPolicy { room: RoomName },
    #[error("[[room]] {room} appears twice; merge the entries")]
    RoomTwice { room: RoomName },
    #[error("{0}")]
    Database(crate::chat::StoreError),
    #[error("--redis turns on cluster mode, which needs --node-url: this node's public base URL (e.g. https://node1.example.org), where the others send people")]
    NodeUrlMissing,
    #[error(
        "--node-url and --cluster-secret belong to cluster mode: add --redis redis://HOST:6379"
    )]
    ClusterWithoutRedis,
    #[error("--node-url {value:?} is not a base URL: give http(s)://HOST[:PORT], as browsers reach this node")]
    NodeUrl { value: String },
    #[error("--redis {value:?} is not a Redis URL: use redis://[:PASSWORD@]HOST:6379[/DB]")]
    RedisUrl { value: String },
    #[error("--redis {value:?}: TLS to Redis (rediss://) is not supported yet; keep Redis on the nodes' private network or reach it through a tunnel, with redis://")]
    RedisTls { value: String },
    #[error("cluster mode needs --cluster-secret (or CONFAB_CLUSTER_SECRET), at least {min} characters and the same on every node: it signs node records and join tokens")]
    ClusterSecret { min: usize },
}

/// The command line. Every flag is optional here so that the file can fill what is missing.
#[derive(Debug, Parser, Default)]
#[command(
    name = "confab",
    version,
    about = "Self-hosted video meetings: one-port WebRTC SFU, chat and RTSP bridge"
)]
pub struct Cli {
    /// HTTP listener: web UI, WebSocket, REST API, metrics [default: 0.0.0.0:8080]
    #[arg(long, env = "CONFAB_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// RTSP listener (TCP), push and playback [default: 0.0.0.0:8554]
    #[arg(long, env = "CONFAB_RTSP", value_name = "ADDR")]
    pub rtsp: Option<SocketAddr>,
    /// The one UDP port every WebRTC peer uses [default: 0.0.0.0:7882]
    #[arg(long, env = "CONFAB_MEDIA", value_name = "ADDR")]
    pub media: Option<SocketAddr>,
    /// ICE-TCP listener for browsers whose UDP is blocked (RFC 6544), or `off` [default: the --media port number]
    #[arg(long = "media-tcp", env = "CONFAB_MEDIA_TCP", value_name = "ADDR")]
    pub media_tcp: Option<String>,
    /// Run a TURN relay (UDP and TCP on --turn-listen, TLS on --turn-tls with the HTTPS certificate) for browsers that reach the media port by no direct path
    #[arg(long, env = "CONFAB_TURN")]
    pub turn: bool,
    /// TURN over UDP and TCP [default: 0.0.0.0:3478]
    #[arg(long = "turn-listen", env = "CONFAB_TURN_LISTEN", value_name = "ADDR")]
    pub turn_listen: Option<SocketAddr>,
    /// TURN over TLS, with the certificate of --tls-cert/--tls-self-signed [default: 0.0.0.0:5349]
    #[arg(long = "turn-tls", env = "CONFAB_TURN_TLS", value_name = "ADDR")]
    pub turn_tls: Option<SocketAddr>,
    /// ICE host candidate address to announce (repeatable) [default: the host's interface addresses]
    #[arg(
        long = "public-ip",
        env = "CONFAB_PUBLIC_IP",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub public_ip: Vec<IpAddr>,
    /// Data directory: database, uploaded files, generated certificates [default: ./data]
    #[arg(long, env = "CONFAB_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Chat store in PostgreSQL, shared by every node: postgres://USER:PASSWORD@HOST:5432/DBNAME [default: SQLite in the data directory]
    #[arg(
        long,
        env = "CONFAB_DATABASE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// Cluster mode: Redis as the nodes' registry and room map, redis://HOST:6379 (see docs/cluster.md)
    #[arg(long, env = "CONFAB_REDIS", value_name = "URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// This node's public base URL in cluster mode, e.g. https://node1.example.org (port 0: the --http port)
    #[arg(long = "node-url", env = "CONFAB_NODE_URL", value_name = "URL")]
    pub node_url: Option<String>,
    /// Shared by every node of a cluster: signs node records and (unless --token-secret) join tokens
    #[arg(
        long = "cluster-secret",
        env = "CONFAB_CLUSTER_SECRET",
        value_name = "SECRET",
        global = true,
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
    /// Cluster mode: how long a stopping node (SIGTERM, `confab drain`) waits for its rooms'
    /// people to move to other nodes before it exits, e.g. 60s, 2m [default: 60s]
    #[arg(
        long = "drain-timeout",
        env = "CONFAB_DRAIN_TIMEOUT",
        value_name = "DURATION"
    )]
    pub drain_timeout: Option<String>,
    /// Directory of uploaded files; in a cluster, one every node mounts [default: <data>/files]
    #[arg(long, env = "CONFAB_FILES", value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// TOML file with rooms, cameras and limits; flags override it
    #[arg(long, env = "CONFAB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TLS certificate chain (PEM); needs --tls-key
    #[arg(long = "tls-cert", env = "CONFAB_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert
    #[arg(long = "tls-key", env = "CONFAB_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate once into the data directory and serve HTTPS with it
    #[arg(long = "tls-self-signed", env = "CONFAB_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// When set, REST mutations need `Authorization: Bearer KEY`; otherwise loopback only
    #[arg(long = "api-key", env = "CONFAB_API_KEY", value_name = "KEY")]
    pub api_key: Option<String>,
    /// Tracing filter, e.g. `info` or `confab=debug,info` [default: info]
    #[arg(long, env = "CONFAB_LOG", value_name = "LEVEL")]
    pub log: Option<String>,
    /// Secret that signs join tokens [default: generated once into <data>/token-secret]
    #[arg(
        long = "token-secret",
        env = "CONFAB_TOKEN_SECRET",
        value_name = "SECRET",
        global = true,
        hide_env_values = true
    )]
    pub token_secret: Option<String>,
    #[command(subcommand)]
    pub command: Option<Tool>,
}

/// One-shot commands beside running the server.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Print a signed join token for a room (put it in the link: /r/ROOM?token=…)
    Token {
        /// The room it admits to
        #[arg(long)]
        room: String,
        /// The display name it fixes
        #[arg(long)]
        name: String,
        /// presenter, viewer or operator
        #[arg(long, default_value = "presenter")]
        role: String,
        /// How long it is valid, e.g. 30m, 2h, 7d
        #[arg(long, default_value = "2h")]
        ttl: String,
    },
    /// Read a room password from standard input and print its argon2 hash for `password_hash`
    HashPassword,
    /// Cluster mode: ask the running node to drain (take no new rooms, move its people to
    /// other nodes, then exit), and wait until it has
    Drain {
        /// The node's base URL [default: from --http, on loopback]
        #[arg(long)]
        url: Option<String>,
    },
}

/// What a `--config` file may hold. Unknown keys are an error, so typos are caught.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub rtsp: Option<SocketAddr>,
    pub media: Option<SocketAddr>,
    /// `"off"` or an address; default: the media port's number.
    pub media_tcp: Option<String>,
    pub turn: Option<bool>,
    pub turn_listen: Option<SocketAddr>,
    pub turn_tls: Option<SocketAddr>,
    #[serde(default)]
    pub public_ip: Vec<IpAddr>,
    pub data: Option<PathBuf>,
    /// `postgres://…`: the chat store in PostgreSQL (see `--database`).
    pub database: Option<String>,
    /// Uploaded files (see `--files`).
    pub files: Option<PathBuf>,
    /// Cluster mode (see `--redis`, `--node-url`, `--cluster-secret`).
    pub redis: Option<String>,
    pub node_url: Option<String>,
    pub cluster_secret: Option<String>,
    /// See `--drain-timeout`.
    pub drain_timeout: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub api_key: Option<String>,
    pub log: Option<String>,
    #[serde(default)]
    pub limits: LimitsFile,
    /// Cameras to pull from the start.
    #[serde(default)]
    pub camera: Vec<CameraConfig>,
    #[serde(default)]
    pub bridge: BridgeFile,
    pub token_secret: Option<String>,
    /// Origins (e.g. `https://meet.example.org`) whose pages may open the WebSocket besides
    /// the server's own (behind a proxy that rewrites Host).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Rooms with access rules; every other room is open.
    #[serde(default)]
    pub room: Vec<RoomConfig>,
}

/// `[[room]]`: a protected room.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    pub name: String,
    /// argon2 PHC hash from `confab hash-password`.
    pub password_hash: Option<String>,
    /// Only join tokens admit.
    #[serde(default)]
    pub require_token: bool,
    /// Refused with a hint: passwords are stored hashed only.
    pub password: Option<String>,
}

/// `[[camera]]`: a camera the server pulls into a room.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub room: String,
    pub name: String,
    /// `rtsp://…`, or `http(s)://…` for an MJPEG stream or a JPEG picture.
    pub url: String,
    /// RTSP: `tcp` (default) or `udp`.
    pub transport: Option<String>,
    /// HTTP: `auto` (default: by the Content-Type), `mjpeg` or `jpeg`.
    pub mode: Option<String>,
    /// HTTP: the poll rate of a JPEG picture (default 1), the cap of an MJPEG stream.
    pub fps: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeFile {
    /// Keep each camera's latest keyframe group so new viewers start at once (default true;
    /// off only to measure what it is worth).
    pub keyframe_cache: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub rooms: Option<usize>,
    pub participants_per_room: Option<usize>,
    pub tracks_per_participant: Option<usize>,
    pub ws_message_bytes: Option<usize>,
    pub signaling_rate: Option<u32>,
    pub signaling_burst: Option<u32>,
    pub sdp_bytes: Option<usize>,
    pub rtsp_header_bytes: Option<usize>,
    pub rtsp_headers: Option<usize>,
    pub rtsp_sessions: Option<usize>,
    pub upload_bytes: Option<u64>,
}

/// Where ICE-TCP listens (`--media-tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTcp {
    /// The `--media` address and port number, on TCP.
    SameAsMedia,
    At(SocketAddr),
    Off,
}

impl MediaTcp {
    fn parse(s: &str) -> Result<MediaTcp, ConfigError> {
        match s.trim() {
            "off" | "false" | "no" => Ok(MediaTcp::Off),
            a => a
                .parse()
                .map(MediaTcp::At)
                .map_err(|_| ConfigError::MediaTcp {
                    value: a.to_owned(),
                }),
        }
    }
}

/// The built-in TURN relay (`--turn`), when on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// UDP and TCP.
    pub listen: SocketAddr,
    /// TLS (used only when the server has a certificate).
    pub tls: SocketAddr,
}

/// How HTTPS is served, if at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Off,
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

/// Bounds on what clients may make the server hold or do (`[limits]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Rooms with anyone in them, server-wide.
    pub rooms: usize,
    pub participants_per_room: usize,
    /// Media tracks one participant may publish (a browser: microphone, camera, screen).
    pub tracks_per_participant: usize,
    /// Largest WebSocket message.
    pub ws_message_bytes: usize,
    /// Signaling messages per second per connection, sustained, and the burst allowed.
    pub signaling_rate: u32,
    pub signaling_burst: u32,
    /// Largest SDP (WebSocket offers and answers, RTSP ANNOUNCE bodies).
    pub sdp_bytes: usize,
    /// Largest RTSP request head (request line and headers) and most header lines.
    pub rtsp_header_bytes: usize,
    pub rtsp_headers: usize,
    /// Concurrent RTSP connections.
    pub rtsp_sessions: usize,
    /// Largest file a participant may share in the chat.
    pub upload_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rooms: 1000,
            participants_per_room: 100,
            tracks_per_participant: 8,
            ws_message_bytes: crate::protocol::MAX_MESSAGE_BYTES,
            signaling_rate: 50,
            signaling_burst: 200,
            sdp_bytes: 32 * 1024,
            rtsp_header_bytes: 16 * 1024,
            rtsp_headers: 64,
            rtsp_sessions: 256,
            upload_bytes: 25 * 1024 * 1024,
        }
    }
}

impl Limits {
    fn merge(file: &LimitsFile) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let l = Limits {
            rooms: file.rooms.unwrap_or(d.rooms),
            participants_per_room: file
                .participants_per_room
                .unwrap_or(d.participants_per_room),
            tracks_per_participant: file
                .tracks_per_participant
                .unwrap_or(d.tracks_per_participant),
            ws_message_bytes: file.ws_message_bytes.unwrap_or(d.ws_message_bytes),
            signaling_rate: file.signaling_rate.unwrap_or(d.signaling_rate),
            signaling_burst: file.signaling_burst.unwrap_or(d.signaling_burst),
            sdp_bytes: file.sdp_bytes.unwrap_or(d.sdp_bytes),
            rtsp_header_bytes: file.rtsp_header_bytes.unwrap_or(d.rtsp_header_bytes),
            rtsp_headers: file.rtsp_headers.unwrap_or(d.rtsp_headers),
            rtsp_sessions: file.rtsp_sessions.unwrap_or(d.rtsp_sessions),
            upload_bytes: file.upload_bytes.unwrap_or(d.upload_bytes),
        };
        let range = |name: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Limit {
                    name,
                    value,
                    min,
                    max,
                })
            }
        };
        range("rooms", l.rooms as u64, 1, 1_000_000)?;
        range(
            "participants_per_room",
            l.participants_per_room as u64,
            1,
            100_000,
        )?;
        range(
            "tracks_per_participant",
            l.tracks_per_participant as u64,
            1,
            64,
        )?;
        range(
            "ws_message_bytes",
            l.ws_message_bytes as u64,
            4096,
            16 << 20,
        )?;
        range("signaling_rate", l.signaling_rate as u64, 1, 100_000)?;
        range("signaling_burst", l.signaling_burst as u64, 1, 1_000_000)?;
        range(
            "sdp_bytes",
            l.sdp_bytes as u64,
            1024,
            l.ws_message_bytes as u64,
        )?;
        range(
            "rtsp_header_bytes",
            l.rtsp_header_bytes as u64,
            1024,
            1 << 20,
        )?;
        range("rtsp_headers", l.rtsp_headers as u64, 8, 10_000)?;
        range("rtsp_sessions", l.rtsp_sessions as u64, 1, 100_000)?;
        range("upload_bytes", l.upload_bytes, 1, 4 << 30)?;
        Ok(l)
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub http: SocketAddr,
    pub rtsp: SocketAddr,
    pub media: SocketAddr,
    pub media_tcp: MediaTcp,
    pub turn: Option<Turn>,
    pub public_ips: Vec<IpAddr>,
    pub data: PathBuf,
    /// Where the chat store lives: SQLite in `data`, or PostgreSQL (`--database`).
    pub store: crate::chat::Location,
    /// Uploaded files: `<data>/files` or `--files`.
    pub files: PathBuf,
    pub tls: Tls,
    pub api_key: Option<String>,
    pub log: String,
    pub limits: Limits,
    /// `[[camera]]` entries, validated: pulled from the start.
    pub cameras: Vec<crate::bridge::pull::PullSpec>,
    pub keyframe_cache: bool,
    pub token_secret: Option<String>,
    /// Cluster mode (`--redis`), when on.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Cluster mode: how long a stopping node waits for its people to move (`--drain-timeout`).
    pub drain_timeout: std::time::Duration,
    pub allowed_origins: Vec<String>,
    /// Rooms that are not open, and how they admit.
    pub rooms: Vec<(RoomName, crate::access::Policy)>,
}

impl Config {
    /// Merges flags over the file (if any) over the defaults, and validates the result.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    pub fn merge(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let default_addr = |s: &str| s.parse::<SocketAddr>().expect("valid literal");
        let tls_cert = cli.tls_cert.or(file.tls_cert);
        let tls_key = cli.tls_key.or(file.tls_key);
        let self_signed = cli.tls_self_signed || file.tls_self_signed.unwrap_or(false);
        let tls = match (tls_cert, tls_key, self_signed) {
            (None, None, false) => Tls::Off,
            (None, None, true) => Tls::SelfSigned,
            (Some(cert), Some(key), false) => Tls::Files { cert, key },
            (Some(_), Some(_), true) => return Err(ConfigError::TlsBoth),
            (Some(_), None, _) => return Err(ConfigError::TlsCertWithoutKey),
            (None, Some(_), _) => return Err(ConfigError::TlsKeyWithoutCert),
        };
        if let Tls::Files { cert, key } = &tls {
            for (what, p) in [("certificate", cert), ("key", key)] {
                if !p.is_file() {
                    return Err(ConfigError::TlsFile {
                        what,
                        path: p.clone(),
                    });
                }
            }
        }
        let public_ips = if cli.public_ip.is_empty() {
            file.public_ip
        } else {
            cli.public_ip
        };
        if let Some(&ip) = public_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(ConfigError::PublicIp { ip });
        }
        let media_tcp = match cli.media_tcp.or(file.media_tcp) {
            Some(s) => MediaTcp::parse(&s)?,
            None => MediaTcp::SameAsMedia,
        };
        let turn_on = cli.turn || file.turn.unwrap_or(false);
        let turn_listen = cli.turn_listen.or(file.turn_listen);
        let turn_tls = cli.turn_tls.or(file.turn_tls);
        if !turn_on && (turn_listen.is_some() || turn_tls.is_some()) {
            return Err(ConfigError::TurnWithoutTurn);
        }
        let turn = turn_on.then(|| Turn {
            listen: turn_listen.unwrap_or_else(|| default_addr("0.0.0.0:3478")),
            tls: turn_tls.unwrap_or_else(|| default_addr("0.0.0.0:5349")),
        });
        let api_key = cli.api_key.or(file.api_key).filter(|k| !k.is_empty());
        let log = cli.log.or(file.log).unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::LogFilter { filter: log });
        }
        let limits = Limits::merge(&file.limits)?;
        let rooms = room_policies(&file.room)?;
        let token_secret = cli.token_secret.or(file.token_secret);
        if let Some(s) = &token_secret {
            if s.len() < crate::access::token::MIN_SECRET_BYTES {
                return Err(ConfigError::TokenSecret {
                    min: crate::access::token::MIN_SECRET_BYTES,
                });
            }
        }
        let cluster = cluster(
            cli.redis.or(file.redis),
            cli.node_url.or(file.node_url),
            cli.cluster_secret.or(file.cluster_secret),
        )?;
        let drain_timeout = match cli.drain_timeout.or(file.drain_timeout) {
            Some(d) => std::time::Duration::from_secs(
                crate::access::token::parse_ttl(&d).map_err(|e| ConfigError::DrainTimeout {
                    reason: e.to_string(),
                })?,
            ),
            None => std::time::Duration::from_secs(60),
        };
        let cameras = cameras(&file.camera)?;
        let data = cli
            .data
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let database = cli.database.or(file.database).filter(|d| !d.is_empty());
        let store = crate::chat::Location::from_flag(database.as_deref(), &data)
            .map_err(ConfigError::Database)?;
        let files = cli
            .files
            .or(file.files)
            .unwrap_or_else(|| data.join("files"));
        Ok(Config {
            http: cli
                .http
                .or(file.http)
                .unwrap_or_else(|| default_addr("0.0.0.0:8080")),
            rtsp: cli
                .rtsp
                .or(file.rtsp)
                .unwrap_or_else(|| default_addr("0.0.0.0:8554")),
            media: cli
                .media
                .or(file.media)
                .unwrap_or_else(|| default_addr("0.0.0.0:7882")),
            media_tcp,
            turn,
            public_ips,
            data,
            store,
            files,
            tls,
            api_key,
            log,
            limits,
            cameras,
            keyframe_cache: file.bridge.keyframe_cache.unwrap_or(true),
            token_secret,
            cluster,
            drain_timeout,
            allowed_origins: file
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            rooms,
        })
    }
}

/// Cluster mode: all three of `--redis`, `--node-url` and `--cluster-secret`, or none.
fn cluster(
    redis: Option<String>,
    node_url: Option<String>,
    secret: Option<String>,
) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
    let redis = redis.filter(|r| !r.is_empty());
    let node_url = node_url.filter(|u| !u.is_empty());
    let Some(redis) = redis else {
        if node_url.is_some() || secret.is_some() {
            return Err(ConfigError::ClusterWithoutRedis);
        }
        return Ok(None);
    };
    let bad_redis = || ConfigError::RedisUrl {
        value: crate::cluster::redacted(&redis),
    };
    match url::Url::parse(&redis) {
        Ok(u) if u.scheme() == "redis" && u.host().is_some() => {}
        Ok(u) if u.scheme() == "rediss" => {
            return Err(ConfigError::RedisTls {
                value: crate::cluster::redacted(&redis),
            })
        }
        _ => return Err(bad_redis()),
    }
    let node_url = node_url.ok_or(ConfigError::NodeUrlMissing)?;
    let parsed = url::Url::parse(&node_url)
        .ok()
        .filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && matches!(u.path(), "" | "/")
                && u.query().is_none()
                && u.username().is_empty()
        })
        .ok_or(ConfigError::NodeUrl { value: node_url })?;
    let min = crate::access::token::MIN_SECRET_BYTES;
    let secret = secret
        .filter(|s| s.len() >= min)
        .ok_or(ConfigError::ClusterSecret { min })?;
    Ok(Some(crate::cluster::ClusterConfig {
        redis,
        node_url: parsed,
        secret,
    }))
}

/// `[[camera]]` entries, each parsed once, here; names unique per room.
fn cameras(entries: &[CameraConfig]) -> Result<Vec<crate::bridge::pull::PullSpec>, ConfigError> {
    let mut specs: Vec<crate::bridge::pull::PullSpec> = Vec::new();
    for c in entries {
        let options = crate::bridge::pull::PullOptions {
            transport: c.transport.as_deref(),
            mode: c.mode.as_deref(),
            fps: c.fps,
        };
        let spec = crate::bridge::pull::PullSpec::parse(&c.room, &c.name, &c.url, &options)
            .map_err(ConfigError::Camera)?;
        if specs
            .iter()
            .any(|s| s.room == spec.room && s.name == spec.name)
        {
            return Err(ConfigError::CameraTwice {
                room: c.room.clone(),
                name: c.name.clone(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn room_policies(
    rooms: &[RoomConfig],
) -> Result<Vec<(RoomName, crate::access::Policy)>, ConfigError> {
    use crate::access::Policy;
    let mut out: Vec<(RoomName, Policy)> = Vec::new();
    for r in rooms {
        let name = RoomName::parse(&r.name).map_err(ConfigError::RoomName)?;
        if r.password.is_some() {
            return Err(ConfigError::PlainPassword { room: name });
        }
        let policy = match (&r.password_hash, r.require_token) {
            (Some(_), true) => return Err(ConfigError::PasswordAndToken { room: name }),
            (Some(h), false) => {
                if let Err(source) = crate::access::password::validate(h) {
                    return Err(ConfigError::PasswordHash { room: name, source });
                }
                Policy::Password(h.clone())
            }
            (None, true) => Policy::Token,
            (None, false) => return Err(ConfigError::NoPolicy { room: name }),
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ConfigError::RoomTwice { room: name });
        }
        out.push((name, policy));
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["confab"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(c.http.to_string(), "0.0.0.0:8080");
        assert_eq!(c.rtsp.to_string(), "0.0.0.0:8554");
        assert_eq!(c.media.to_string(), "0.0.0.0:7882");
        assert_eq!(c.media_tcp, MediaTcp::SameAsMedia);
        assert_eq!(c.turn, None);
        assert_eq!(c.data, PathBuf::from("./data"));
        assert_eq!(
            c.store,
            crate::chat::Location::Sqlite(PathBuf::from("./data/confab.db"))
        );
        assert_eq!(c.files, PathBuf::from("./data/files"));
        assert_eq!(c.tls, Tls::Off);
        assert_eq!(c.log, "info");
    }

    #[test]
    fn database_and_files() {
        let url = "postgres://confab:hunter2@db:5432/confab";
        let c = Config::merge(
            cli(&[
                "--database",
                url,
                "--files",
                "/mnt/confab-files",
                "--data",
                "/d",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.store, crate::chat::Location::Postgres(url.into()));
        assert_eq!(c.files, PathBuf::from("/mnt/confab-files"));
        // The password never shows in a printed configuration.
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        // From the file, and with the files directory following --data.
        let c = Config::merge(
            cli(&["--data", "/d"]),
            toml::from_str(&format!("database = \"{url}\"")).unwrap(),
        )
        .unwrap();
        assert_eq!(c.store, crate::chat::Location::Postgres(url.into()));
        assert_eq!(c.files, PathBuf::from("/d/files"));
        // Anything but a PostgreSQL URL says what --database takes, without the password.
        for bad in [
            "mysql://u:hunter2@h/db",
            "sqlite:///tmp/x.db",
            "postgres://u:hunter2@h:port/db",
        ] {
            let e = Config::merge(cli(&["--database", bad]), FileConfig::default()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("postgres://"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn cluster_mode_takes_three_flags() {
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(c.cluster, None);
        let secret = "a shared cluster secret";
        let c = Config::merge(
            cli(&[
                "--redis",
                "redis://:hunter2@10.0.0.9:6379/0",
                "--node-url",
                "https://node1.example.org",
                "--cluster-secret",
                secret,
            ]),
            FileConfig::default(),
        )
        .unwrap();
        let cl = c.cluster.clone().unwrap();
        assert_eq!(cl.node_url.as_str(), "https://node1.example.org/");
        // Neither Redis's password nor the secret shows in a printed configuration.
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(secret),
            "{shown}"
        );
        for (args, says) in [
            (vec!["--redis", "redis://r:6379"], "--node-url"),
            (
                vec!["--redis", "redis://r:6379", "--node-url", "http://n:8080"],
                "--cluster-secret",
            ),
            (
                vec![
                    "--redis",
                    "redis://r:6379",
                    "--node-url",
                    "http://n:8080",
                    "--cluster-secret",
                    "short",
                ],
                "--cluster-secret",
            ),
            (
                vec![
                    "--redis",
                    "redis://r:6379",
                    "--node-url",
                    "n:8080",
                    "--cluster-secret",
                    secret,
                ],
                "--node-url",
            ),
            (
                vec![
                    "--redis",
                    "redis://r:6379",
                    "--node-url",
                    "http://n:8080/meet",
                    "--cluster-secret",
                    secret,
                ],
                "--node-url",
            ),
            (
                vec![
                    "--redis",
                    "http://r:6379",
                    "--node-url",
                    "http://n:8080",
                    "--cluster-secret",
                    secret,
                ],
                "redis://",
            ),
            (vec!["--node-url", "http://n:8080"], "--redis"),
            (
                vec![
                    "--redis",
                    "rediss://:pw@r:6380",
                    "--node-url",
                    "http://n:8080",
                    "--cluster-secret",
                    secret,
                ],
                "private network",
            ),
        ] {
            let e = Config::merge(cli(&args), FileConfig::default()).unwrap_err();
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn flags_override_file() {
        let file: FileConfig =
            toml::from_str("http = \"127.0.0.1:9000\"\nmedia = \"127.0.0.1:9001\"\n").unwrap();
        let c = Config::merge(cli(&["--http", "127.0.0.1:0"]), file).unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:0");
        assert_eq!(c.media.to_string(), "127.0.0.1:9001");
    }

    #[test]
    fn media_tcp_is_an_address_or_off() {
        let c = Config::merge(cli(&["--media-tcp", "off"]), FileConfig::default()).unwrap();
        assert_eq!(c.media_tcp, MediaTcp::Off);
        let c = Config::merge(
            cli(&["--media-tcp", "127.0.0.1:443"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.media_tcp, MediaTcp::At("127.0.0.1:443".parse().unwrap()));
        let file: FileConfig = toml::from_str("media_tcp = \"off\"").unwrap();
        assert_eq!(
            Config::merge(Cli::default(), file).unwrap().media_tcp,
            MediaTcp::Off
        );
        let e = Config::merge(cli(&["--media-tcp", "7882"]), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--media-tcp"), "{e}");
    }

    #[test]
    fn turn_is_opt_in() {
        let c = Config::merge(cli(&["--turn"]), FileConfig::default()).unwrap();
        let t = c.turn.unwrap();
        assert_eq!(t.listen.to_string(), "0.0.0.0:3478");
        assert_eq!(t.tls.to_string(), "0.0.0.0:5349");
        let c = Config::merge(
            cli(&["--turn", "--turn-tls", "198.51.100.2:443"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.turn.unwrap().tls.to_string(), "198.51.100.2:443");
        let e = Config::merge(
            cli(&["--turn-listen", "0.0.0.0:3479"]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--turn"), "{e}");
    }

    #[test]
    fn repeatable_public_ip() {
        let c = Config::merge(
            cli(&["--public-ip", "192.0.2.1", "--public-ip", "2001:db8::1"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.public_ips.len(), 2);
    }

    #[test]
    fn invalid_combinations_say_what_to_do() {
        let e = Config::merge(cli(&["--tls-cert", "x.pem"]), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
        let e = Config::merge(
            cli(&["--tls-self-signed", "--tls-cert", "a", "--tls-key", "b"]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("exclude"), "{e}");
        let e = Config::merge(cli(&["--public-ip", "0.0.0.0"]), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("public-ip"), "{e}");
        assert!(toml::from_str::<FileConfig>("htp = \"x\"").is_err());
    }

    fn file(text: &str) -> Result<Config, ConfigError> {
        let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        Config::merge(Cli::default(), f)
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let c = file("").unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.ws_message_bytes, 64 * 1024);
        let c = file("[limits]\nrooms = 3\nrtsp_sessions = 2\nsdp_bytes = 2048\n").unwrap();
        assert_eq!(
            (c.limits.rooms, c.limits.rtsp_sessions, c.limits.sdp_bytes),
            (3, 2, 2048)
        );
        for (bad, says) in [
            ("[limits]\nrooms = 0", "limits.rooms"),
            (
                "[limits]\nparticipants_per_room = 0",
                "participants_per_room",
            ),
            (
                "[limits]\ntracks_per_participant = 100",
                "tracks_per_participant",
            ),
            ("[limits]\nsdp_bytes = 100000", "sdp_bytes"),
            ("[limits]\nws_message_bytes = 10", "ws_message_bytes"),
            ("[limits]\nupload_bytes = 0", "upload_bytes"),
            ("[limits]\nrtsp_headers = 1", "rtsp_headers"),
        ] {
            let e = file(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(file("[limits]\nfoo = 1").is_err());
    }

    #[test]
    fn cameras_are_parsed_once_into_pull_specs() {
        let c = file(
            "[[camera]]\nroom = \"lobby\"\nname = \"door\"\nurl = \"rtsp://admin:pw@10.0.0.5/live\"\n\
             [[camera]]\nroom = \"yard\"\nname = \"door\"\nurl = \"rtsp://10.0.0.6/live\"\ntransport = \"udp\"\n\
             [[camera]]\nroom = \"yard\"\nname = \"gate\"\nurl = \"http://10.0.0.7/snap.jpg\"\nmode = \"jpeg\"\nfps = 2\n",
        )
        .unwrap();
        let shown: Vec<_> = c
            .cameras
            .iter()
            .map(|s| (s.room.as_str(), s.name.as_str(), s.url(), s.udp()))
            .collect();
        assert_eq!(
            shown,
            [
                ("lobby", "door", "rtsp://10.0.0.5/live", false),
                ("yard", "door", "rtsp://10.0.0.6/live", true),
                ("yard", "gate", "http://10.0.0.7/snap.jpg", false)
            ]
        );
        for (bad, says) in [
            (
                "[[camera]]\nroom = \"a b\"\nname = \"door\"\nurl = \"rtsp://h/x\"",
                "[[camera]] room",
            ),
            (
                "[[camera]]\nroom = \"a\"\nname = \"door\"\nurl = \"ftp://h/x\"",
                "rtsp://",
            ),
            (
                "[[camera]]\nroom = \"a\"\nname = \"door\"\nurl = \"http://h/x\"\nfps = 99",
                "fps",
            ),
            (
                "[[camera]]\nroom = \"a\"\nname = \"door\"\nurl = \"rtsp://h/x\"\n\
                 [[camera]]\nroom = \"a\"\nname = \"door\"\nurl = \"rtsp://h/y\"",
                "appears twice",
            ),
        ] {
            let e = file(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn protected_rooms() {
        let hash = crate::access::password::hash("pw").unwrap();
        let c = file(&format!(
            "[[room]]\nname = \"board\"\npassword_hash = \"{hash}\"\n[[room]]\nname = \"vip\"\nrequire_token = true\n"
        ))
        .unwrap();
        assert_eq!(c.rooms.len(), 2);
        assert_eq!(c.rooms[1].1, crate::access::Policy::Token);
        for (bad, says) in [
            ("[[room]]\nname = \"a\"\npassword = \"x\"", "hash-password"),
            ("[[room]]\nname = \"a\"\npassword_hash = \"x\"", "PHC"),
            ("[[room]]\nname = \"a\"", "says nothing"),
            ("[[room]]\nname = \"a b\"\nrequire_token = true", "name"),
            ("[[room]]\nname = \"a\"\nrequire_token = true\n[[room]]\nname = \"a\"\nrequire_token = true", "twice"),
            ("token_secret = \"short\"", "token secret"),
        ] {
            let e = file(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
