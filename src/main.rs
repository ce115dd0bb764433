//! The service binary: read the configuration, set up logging, build, serve until SIGTERM or SIGINT.
//! `billecta-onboarding probe` instead asks a running server's health service (container checks).

use billecta_onboarding::app::{Application, probe};
use billecta_onboarding::auth::{self, Permission};
use billecta_onboarding::config::{Command, Config};
use billecta_onboarding::storage::{Store, StoreOptions};
use billecta_onboarding::telemetry;
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::parse();
    if let Some(Command::Probe {
        address,
        timeout_ms,
        ca,
    }) = &config.command
    {
        return Ok(
            match probe(address, ca.as_deref(), Duration::from_millis(*timeout_ms)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("not serving: {error:#}");
                    ExitCode::FAILURE
                }
            },
        );
    }
    if let Some(Command::NewApiKey {
        name,
        permissions,
        tenants,
    }) = &config.command
    {
        return new_api_key(name, permissions, tenants.as_deref());
    }
    let telemetry = telemetry::init(
        config.log_format,
        &config.log,
        config.tracing_export().as_ref(),
    )?;
    if let Some(Command::Reencrypt) = &config.command {
        anyhow::ensure!(
            !config.encryption_keys.trim().is_empty(),
            "--encryption-keys is required: the old keys to read with and the active one to write with"
        );
        let keyring = config.keyring()?;
        let done = reencrypt(&config, &keyring).await?;
        println!(
            "re-encrypted {} secret(s) under key {:?}; {} written meanwhile and left; {} unreadable; {} still under an older key",
            done.reencrypted,
            keyring.active_key_id(),
            done.skipped,
            done.unreadable,
            done.remaining
        );
        telemetry.shutdown().await;
        // Only a clean pass means the old key can go.
        return Ok(if done.remaining == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let application = Application::build(config).await?;
    let shutdown = application.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    let served = application.run().await;
    telemetry.shutdown().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Connects to the service's database and re-encrypts what the old keys encrypted.
async fn reencrypt(
    config: &Config,
    keyring: &billecta_onboarding::crypto::Keyring,
) -> anyhow::Result<billecta_onboarding::rotation::Reencrypted> {
    let store = Store::connect(&StoreOptions {
        database: config.database.clone(),
        max_connections: Some(2),
        acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
        cached_onboardings: 0,
    })
    .await?;
    store.migrate().await?;
    let done = billecta_onboarding::rotation::reencrypt(&store, keyring).await;
    store.close().await;
    done
}

/// Prints a new key and its --callers entry.
fn new_api_key(
    name: &str,
    permissions: &[String],
    tenants: Option<&[String]>,
) -> anyhow::Result<ExitCode> {
    let permissions = permissions
        .iter()
        .map(|text| {
            Permission::parse(text.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown permission {text:?}; use read, write or payment_configuration"
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let tenants = tenants.map(|list| list.iter().map(|t| t.trim().to_owned()).collect());
    let (key, entry) = auth::new_key(name, permissions, tenants)?;
    // Checked the way the server will read it, so a bad entry fails here rather than at start-up.
    auth::Callers::parse(&serde_json::to_string(&vec![entry.clone()])?)?;
    println!("key (give it to the caller; it is not stored anywhere): {key}");
    println!("--callers entry: {}", serde_json::to_string(&entry)?);
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
