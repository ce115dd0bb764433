//! The service binary: read the configuration, set up logging, build, serve until SIGTERM or SIGINT.
//! `billecta-onboarding probe` instead asks a running server's health service (container checks).

use billecta_onboarding::app::{Application, probe};
use billecta_onboarding::config::{Command, Config};
use billecta_onboarding::telemetry;
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::parse();
    if let Some(Command::Probe {
        address,
        timeout_ms,
    }) = &config.command
    {
        return Ok(
            match probe(address, Duration::from_millis(*timeout_ms)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("not serving: {error:#}");
                    ExitCode::FAILURE
                }
            },
        );
    }
    telemetry::init(config.log_format, &config.log)?;
    let application = Application::build(config).await?;
    let shutdown = application.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    application.run().await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
