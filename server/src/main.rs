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
        return match run_tool(tool, &config) {
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
    let stop = shutdown_signal();
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

/// `confab token …` and `confab hash-password`.
fn run_tool(tool: Tool, config: &Config) -> anyhow::Result<()> {
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
/// and resolves on the first SIGINT or SIGTERM.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
