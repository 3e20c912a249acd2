//! `confab`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use confab::config::{Cli, Config, Tool};

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let tool = cli.command.take();
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(tool) = tool {
        return match run_tool(tool, &config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("confab: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter(&config.log)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let stop = shutdown_signals();
    let code = match confab::app::run(config, stop).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("confab: {e}");
            1
        }
    };
    // Everything that must be flushed has been by now; tasks still parked on dead sockets
    // must not hold the process past the contract's 5 s.
    std::process::exit(code)
}

/// `confab token …`, `confab hash-password` and `confab drain`.
async fn run_tool(tool: Tool, config: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use confab::access::token::{parse_ttl, Claims, TokenKey};
    match tool {
        Tool::Token {
            room,
            name,
            role,
            ttl,
        } => {
            let room = confab::names::RoomName::parse(&room)?;
            let name = confab::names::DisplayName::parse(&name)?;
            let role: confab::access::Role = role.parse()?;
            let ttl = parse_ttl(&ttl)?;
            let key = TokenKey::for_node(
                config.token_secret.as_deref(),
                config.cluster.as_ref().map(|c| c.secret.as_str()),
                &config.data,
            )?;
            let now = confab::access::unix_now();
            let token = key.sign(&Claims {
                room: room.to_string(),
                name: name.as_str().to_owned(),
                role,
                exp: now + ttl,
                iat: now,
            });
            println!("{token}");
            eprintln!(
                "a {} token for {} in room {room}, valid for {ttl} s: open /r/{room}?token=<it>",
                role.as_str(),
                name.as_str()
            );
            Ok(())
        }
        Tool::HashPassword => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let hash = confab::access::password::hash(password)?;
            println!("{hash}");
            Ok(())
        }
        Tool::Drain { url } => drain(url, config).await,
    }
}

/// `confab drain`: asks the node to drain (`POST /api/node/drain`), then follows it
/// (`GET /api/node/drain` every second) until it has stopped.
async fn drain(url: Option<String>, config: &Config) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let scheme = match config.tls {
                confab::config::Tls::Off => "http",
                _ => "https",
            };
            let mut at = config.http;
            if at.ip().is_unspecified() {
                at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{scheme}://{at}")
        }
    };
    let parsed = url::Url::parse(&base).with_context(|| format!("--url {base}: not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    // A node's own certificate is often self-signed; on loopback nobody can be in between.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(loopback)
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let mut post = client.post(format!("{base}/api/node/drain"));
    if let Some(key) = &config.api_key {
        post = post.bearer_auth(key);
    }
    let r = post.send().await.with_context(|| {
        format!("cannot reach the node at {base} (is it running? give its address with --url)")
    })?;
    let status = r.status();
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the node refused to drain ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    eprintln!(
        "{base} is draining: {} people in {} rooms to move, at most {} s",
        body["participants"], body["rooms"], body["timeout_s"]
    );
    let limit = std::time::Duration::from_secs(body["timeout_s"].as_u64().unwrap_or(60) + 15);
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match client.get(format!("{base}/api/node/drain")).send().await {
            Ok(r) if r.status().is_success() => {
                let v: serde_json::Value =
                    serde_json::from_slice(&r.bytes().await.unwrap_or_default())
                        .unwrap_or_default();
                let now = (v["participants"].as_u64(), v["rooms"].as_u64());
                if last != Some(now) {
                    eprintln!(
                        "  {} people in {} rooms still here",
                        now.0.unwrap_or(0),
                        now.1.unwrap_or(0)
                    );
                    last = Some(now);
                }
            }
            // Refused (or no answer): the node has stopped.
            _ => {
                eprintln!(
                    "drained and stopped after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        }
        if started.elapsed() > limit {
            bail!(
                "the node at {base} still answers {} s after it began draining; check its log",
                limit.as_secs()
            );
        }
    }
}

/// The user's filter, with `rtc`'s per-handshake chatter (DTLS extension and server_name
/// warnings, ICE state lines) quieted unless the filter says something about `rtc` itself.
/// Its packet handlers warn once per refused packet (a replayed SRTP packet after a NACK
/// retransmission, a STUN request without credentials): a lossy or hostile peer would flood
/// the log, so only their errors show.
fn log_filter(user: &str) -> String {
    if user.contains("rtc") {
        user.to_owned()
    } else {
        format!("{user},rtc=warn,rtc::peer_connection::handler=error,rtc_ice=warn,rtc_dtls=error")
    }
}

/// Registers the handlers at once (a signal before the first poll must not kill the process),
/// and sends one message per SIGINT or SIGTERM: the first stops (or, in a cluster, drains) the
/// server, a second cuts a drain short.
fn shutdown_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    tokio::spawn(async move {
        #[cfg(unix)]
        if let (Ok(mut term), Ok(mut int)) = (term, int) {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        }
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}
