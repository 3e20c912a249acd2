//! `confab`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use confab::config::{Cli, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::from(2);
        }
    };
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

/// The user's filter, with `rtc`'s per-handshake chatter (DTLS extension and server_name
/// warnings, ICE state lines) quieted unless the filter says something about `rtc` itself.
fn log_filter(user: &str) -> String {
    if user.contains("rtc") {
        user.to_owned()
    } else {
        format!("{user},rtc=warn,rtc_ice=warn,rtc_dtls=error")
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
