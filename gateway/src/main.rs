//! `labgate-gateway`: parses flags, sets up logging, runs the gateway until
//! SIGTERM or SIGINT, then drains. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use labgate_gateway::Config;
use labgate_gateway::config::LogFormat;

/// Exit code for bad usage (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(&config);
    if let Err(e) = config.validate() {
        eprintln!("labgate-gateway: {e}");
        return ExitCode::from(EX_USAGE);
    }
    match labgate_gateway::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "labgate-gateway failed");
            eprintln!("labgate-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal, never into log files or collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM (Kubernetes' "please stop") or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
