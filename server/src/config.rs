//! Configuration: command-line flags (each also an environment variable), an optional TOML
//! file, and the defaults of `../shared/INTERFACE.md`, merged into one validated [`Config`].
//! Precedence: flag/env > file > default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for confab: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
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
}

/// What a `--config` file may hold. Unknown keys are an error, so typos are caught.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub rtsp: Option<SocketAddr>,
    pub media: Option<SocketAddr>,
    #[serde(default)]
    pub public_ip: Vec<IpAddr>,
    pub data: Option<PathBuf>,
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
}

/// `[[camera]]`: a camera the server pulls into a room.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub room: String,
    pub name: String,
    pub url: String,
    /// `tcp` (default) or `udp`.
    pub transport: Option<String>,
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
    pub participants_per_room: Option<usize>,
    pub upload_bytes: Option<u64>,
}

/// How HTTPS is served, if at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Off,
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub participants_per_room: usize,
    /// Largest file a participant may share in the chat.
    pub upload_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            participants_per_room: 100,
            upload_bytes: 25 * 1024 * 1024,
        }
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub http: SocketAddr,
    pub rtsp: SocketAddr,
    pub media: SocketAddr,
    pub public_ips: Vec<IpAddr>,
    pub data: PathBuf,
    pub tls: Tls,
    pub api_key: Option<String>,
    pub log: String,
    pub limits: Limits,
    pub cameras: Vec<CameraConfig>,
    pub keyframe_cache: bool,
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
            (Some(_), Some(_), true) => {
                return Err(ConfigError::Invalid(
                    "--tls-self-signed and --tls-cert/--tls-key exclude each other: pick one"
                        .into(),
                ))
            }
            (Some(_), None, _) => {
                return Err(ConfigError::Invalid(
                    "--tls-cert needs --tls-key (the certificate's private key, PEM)".into(),
                ))
            }
            (None, Some(_), _) => {
                return Err(ConfigError::Invalid(
                    "--tls-key needs --tls-cert (the certificate chain, PEM)".into(),
                ))
            }
        };
        if let Tls::Files { cert, key } = &tls {
            for (what, p) in [("certificate", cert), ("key", key)] {
                if !p.is_file() {
                    return Err(ConfigError::Invalid(format!(
                        "TLS {what} file {} does not exist or is not a file",
                        p.display()
                    )));
                }
            }
        }
        let public_ips = if cli.public_ip.is_empty() {
            file.public_ip
        } else {
            cli.public_ip
        };
        if let Some(ip) = public_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid(format!(
                "--public-ip {ip} is not an address peers can reach: give the host's public or LAN address"
            )));
        }
        let api_key = cli.api_key.or(file.api_key).filter(|k| !k.is_empty());
        let log = cli.log.or(file.log).unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::Invalid(format!(
                "--log {log:?} is not a valid filter: use e.g. info, debug or confab=debug,info"
            )));
        }
        let defaults = Limits::default();
        let limits = Limits {
            participants_per_room: file
                .limits
                .participants_per_room
                .unwrap_or(defaults.participants_per_room),
            upload_bytes: file.limits.upload_bytes.unwrap_or(defaults.upload_bytes),
        };
        if limits.upload_bytes == 0 || limits.upload_bytes > 4 * 1024 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.upload_bytes must be between 1 and 4 GiB".into(),
            ));
        }
        if limits.participants_per_room == 0 {
            return Err(ConfigError::Invalid(
                "limits.participants_per_room must be at least 1".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &file.camera {
            crate::bridge::pull::PullSpec::parse(&c.room, &c.name, &c.url, c.transport.as_deref())
                .map_err(|e| ConfigError::Invalid(format!("[[camera]] {e}")))?;
            if !seen.insert((c.room.clone(), c.name.clone())) {
                return Err(ConfigError::Invalid(format!(
                    "[[camera]] {} appears twice in room {}; give each camera its own name",
                    c.name, c.room
                )));
            }
        }
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
            public_ips,
            data: cli
                .data
                .or(file.data)
                .unwrap_or_else(|| PathBuf::from("./data")),
            tls,
            api_key,
            log,
            limits,
            cameras: file.camera,
            keyframe_cache: file.bridge.keyframe_cache.unwrap_or(true),
        })
    }
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
        assert_eq!(c.data, PathBuf::from("./data"));
        assert_eq!(c.tls, Tls::Off);
        assert_eq!(c.log, "info");
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
}
