//! `labgate-admission` binary: parses flags and runs the library's service.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = labgate_admission::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rustls warns for every client sending an IP address as SNI
                // (normal for webhook clients); keep its errors only.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        // No colour codes in container logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match labgate_admission::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("labgate-admission failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
