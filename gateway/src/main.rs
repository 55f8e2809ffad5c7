//! `labgate-gateway`: parses flags, sets up logging, runs the gateway until
//! SIGTERM or SIGINT, then drains; or, as `labgate-gateway token`, prints a
//! token (see `token::mint`). Everything else lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use labgate_gateway::Config;
use labgate_gateway::config::LogFormat;
use labgate_gateway::token::mint::{MintArgs, MintError, mint};

/// Exit code for bad usage (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

/// The gateway's flags, or a subcommand instead of the server.
#[derive(Parser)]
#[command(
    name = "labgate-gateway",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed token for a user (for operators and scripts).
    Token(MintArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = cli.command {
        return token_command(&args);
    }
    let config = cli.config;
    init_tracing(&config);
    if let Err(e) = config.validate() {
        eprintln!("labgate-gateway: {e}");
        return ExitCode::from(EX_USAGE);
    }
    // A task on the runtime's workers, not the main thread's `block_on`: a
    // connection is then accepted on the thread that serves it, with no
    // wake-up and context switch between the two for every connection.
    let gateway = tokio::spawn(labgate_gateway::run(config, shutdown_signal()));
    let result = gateway
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the gateway task failed: {e}")));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "labgate-gateway failed");
            eprintln!("labgate-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `labgate-gateway token`: the token on stdout, nothing else.
fn token_command(args: &MintArgs) -> ExitCode {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match mint(args, now) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e @ MintError::Usage(_)) => {
            eprintln!("labgate-gateway token: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("labgate-gateway token: {e}");
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
