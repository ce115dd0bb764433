//! Building and running the server. [`Application::build`] binds the listener first (port 0 picks a
//! free one, reported by [`Application::local_addr`]), connects and migrates the database, then
//! assembles the services; [`Application::run`] serves until its shutdown token is cancelled.
//!
//! Shutdown protocol: health turns NOT_SERVING, the server stops accepting connections, open watch
//! streams end with UNAVAILABLE (callers resume elsewhere with after_event), in-flight calls get
//! `shutdown_grace` to finish; then the work still under way (calls past the grace, the reconciler's
//! pass) is cut off and the stages it had claimed are released, so that the next call (after a
//! restart, or on another replica) goes ahead at once; then the database pool is closed and the
//! sandbox's simulators stop.

use crate::auth::Callers;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::Environment;
use crate::grpc::OnboardingApi;
use crate::grpc::PaymentConfigurationApi;
use crate::grpc::call::CallLayer;
use crate::grpc::status::explain_oversized;
use crate::metrics::{self, Breaker, Funnel};
use crate::operations::{Operations, StageTiming};
use crate::proto;
use crate::proto::onboarding_service_server::OnboardingServiceServer;
use crate::proto::payment_configuration_service_server::PaymentConfigurationServiceServer;
use crate::reconciler::{self, ReconcilerSettings};
use crate::storage::{StorageError, Store, StoreOptions};
use anyhow::Context;
use billecta_client::{Billecta, BillectaClient, BreakerState, ClientSettings, Observer};
use billecta_sim::{self as simulator, RunningSimulator, SimulatorConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::util::MapResponseLayer;

/// The longest a shutdown spends releasing the stages of the calls it cut off.
const RELEASE_TIME: Duration = Duration::from_secs(5);

/// The service names health reports on: "" for the server as a whole, and each API service.
const HEALTH_SERVICES: [&str; 3] = [
    "",
    "payway.billecta.onboarding.v1.OnboardingService",
    "payway.billecta.onboarding.v1.PaymentConfigurationService",
];

pub struct Application {
    config: Config,
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    store: Store,
    billecta: Billecta,
    keyring: Keyring,
    callers: Callers,
    sandbox: Option<Sandbox>,
    shutdown: CancellationToken,
}

/// The two in-process Billecta simulators of `--sandbox`, one per environment.
pub struct Sandbox {
    test: Arc<RunningSimulator>,
    production: Arc<RunningSimulator>,
}

impl Sandbox {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let start = |environment, listen| {
            simulator::start(SimulatorConfig {
                listen,
                sign_in: config.sandbox_sign_in,
                ..SimulatorConfig::new(environment)
            })
        };
        let test = start(simulator::Environment::Test, config.sandbox_test_listen)
            .await
            .context("starting the sandbox's test-environment simulator")?;
        let production = start(
            simulator::Environment::Production,
            config.sandbox_production_listen,
        )
        .await
        .context("starting the sandbox's production simulator")?;
        for (environment, simulator) in [("test", &test), ("production", &production)] {
            tracing::info!(
                environment,
                base_url = %simulator.base_url(),
                sign_in = %config.sandbox_sign_in,
                "sandbox: Billecta simulator listening (admin API under /admin)"
            );
        }
        Ok(Sandbox {
            test: Arc::new(test),
            production: Arc::new(production),
        })
    }

    /// The simulator standing in for an environment (shared, so that tests can play the human steps).
    pub fn simulator(&self, environment: Environment) -> &Arc<RunningSimulator> {
        match environment {
            Environment::Test => &self.test,
            Environment::Production => &self.production,
        }
    }

    /// Stops both simulators; one still shared elsewhere stops when its last holder lets go.
    async fn stop(self) {
        for simulator in [self.test, self.production] {
            if let Ok(simulator) = Arc::try_unwrap(simulator) {
                simulator.shutdown().await;
            }
        }
    }
}

impl Application {
    /// Binds, connects and migrates. Fails with a clear message on a bad setting or an unreachable
    /// database.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        if config.sandbox_reset {
            config.reset_sandbox()?;
        }
        let (keyring, new_key) = config.keyring_and_new_key()?;
        let callers = config.callers()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the metrics endpoint {address}"))?,
            ),
            None => None,
        };
        let store = Store::connect(&StoreOptions {
            database: config.database.clone(),
            max_connections: config.database_max_connections,
            acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
            cached_onboardings: config.cached_onboardings,
        })
        .await?;
        // The sandbox's new key is kept once its database exists: a start that failed before left
        // neither behind, and a restart finds both.
        if let Some(new_key) = new_key {
            new_key.write()?;
        }
        store.migrate().await?;
        let sandbox = match config.sandbox {
            true => Some(Sandbox::start(&config).await?),
            false => None,
        };
        let client = |environment| {
            let base_url = match &sandbox {
                Some(sandbox) => sandbox.simulator(environment).base_url(),
                None => config.billecta_url(environment).to_owned(),
            };
            let settings = ClientSettings {
                observer: Some(Arc::new(CountedInMetrics)),
                ..config.billecta_settings(&base_url)
            };
            BillectaClient::new(environment, settings)
        };
        let billecta = Billecta::new(client(Environment::Test)?, client(Environment::Production)?);
        Ok(Self {
            config,
            listener,
            local_addr,
            metrics_listener,
            store,
            billecta,
            keyring,
            callers,
            sandbox,
            shutdown: CancellationToken::new(),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the metrics endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The Billecta clients, pointed at the configured URLs or at the sandbox's simulators.
    pub fn billecta(&self) -> &Billecta {
        &self.billecta
    }

    /// The sandbox's simulators, when running with `--sandbox`.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            local_addr,
            metrics_listener,
            store,
            billecta,
            keyring,
            callers,
            sandbox,
            shutdown,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        // Migrations ran in build(); SERVING from the first call on if the database answers.
        let check_interval = Duration::from_millis(config.health_check_interval_ms);
        let initial = database_status(&store, check_interval).await;
        report(&health, initial).await;
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let operations = Operations::new(
            store.clone(),
            billecta,
            Arc::new(keyring),
            StageTiming {
                lease: Duration::from_millis(config.stage_lease_ms),
                settle: Duration::from_millis(config.billecta_timeout_ms.saturating_mul(2)),
            },
        );
        // Before the first call: the service reads credentials only where this puts them.
        operations
            .upgrade_credentials()
            .await
            .context("moving stored credentials to their Billecta users")?;
        let payment_configuration_service = PaymentConfigurationServiceServer::new(
            PaymentConfigurationApi::new(operations.clone()),
        )
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let api = OnboardingApi::new(
            operations.clone(),
            shutdown.clone(),
            Duration::from_millis(config.watch_poll_interval_ms),
            config.max_watch_streams,
            config.cached_onboardings,
        );
        let onboarding_service = OnboardingServiceServer::new(api)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);

        let reconciler = (config.reconcile_interval_ms > 0).then(|| {
            tokio::spawn(reconciler::run(
                operations.clone(),
                ReconcilerSettings {
                    interval: Duration::from_millis(config.reconcile_interval_ms),
                    revalidate_every: (config.revalidate_interval_ms > 0)
                        .then(|| Duration::from_millis(config.revalidate_interval_ms)),
                    request_id_retention: Duration::from_millis(config.request_id_retention_ms),
                },
                shutdown.clone(),
            ))
        });
        let metrics_task = metrics_listener.map(|listener| {
            tokio::spawn(serve_metrics(
                listener,
                operations.clone(),
                shutdown.clone(),
            ))
        });
        let health_task = tokio::spawn(watch_database(
            health.clone(),
            store.clone(),
            check_interval,
            initial,
            shutdown.clone(),
        ));

        let max_message_bytes = config.max_message_bytes;
        let mut builder = Server::builder();
        if let Some(tls) = config.tls()? {
            builder = builder
                .tls_config(tls)
                .context("the TLS certificate or key cannot be used")?;
        }
        let server = builder
            .concurrency_limit_per_connection(config.concurrency_per_connection)
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(CallLayer::new(
                config.max_concurrent_calls,
                Arc::new(callers),
                config.public_reflection,
            ))
            .layer(MapResponseLayer::new(
                move |response: http::Response<tonic::body::Body>| {
                    explain_oversized(response, max_message_bytes)
                },
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(onboarding_service)
            .add_service(payment_configuration_service)
            // Every accepted connection without Nagle's algorithm: with it, a response that leaves
            // in more than one write waits for the client's delayed ACK (some 40 ms).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            );
        tracing::info!(address = %local_addr, backend = ?store.backend(), sandbox = config.sandbox, "serving gRPC");

        let mut server = std::pin::pin!(server);
        let served = tokio::select! {
            finished = &mut server => {
                shutdown.cancel();
                finished.context("the gRPC server stopped")
            }
            () = shutdown.cancelled() => {
                for service in HEALTH_SERVICES {
                    health.set_service_status(service, ServingStatus::NotServing).await;
                }
                tracing::info!(grace_ms = config.shutdown_grace_ms, "draining: no new connections, finishing calls in flight");
                match tokio::time::timeout(config.shutdown_grace(), &mut server).await {
                    Ok(finished) => finished.context("the gRPC server stopped"),
                    Err(_) => {
                        tracing::warn!("calls still in flight after the grace period were cut off");
                        Ok(())
                    }
                }
            }
        };
        health_task.abort();
        if let Some(metrics) = metrics_task {
            metrics.abort();
        }
        // The reconciler's pass ends here; a stage it had claimed stays in the register of held
        // leases, and is released with the calls' below.
        if let Some(reconciler) = reconciler {
            reconciler.abort();
            let _ = reconciler.await;
        }
        // A database that does not answer must not hold the exit up: a lease not released is free
        // once it runs out, as after a crash.
        match tokio::time::timeout(RELEASE_TIME, operations.release_abandoned()).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "stages of cut-off calls released"),
            Err(_) => tracing::warn!(
                "the database did not answer in time to release every stage of the cut-off calls; the rest are free once their leases run out"
            ),
        }
        store.close().await;
        if let Some(sandbox) = sandbox {
            sandbox.stop().await;
        }
        tracing::info!("stopped");
        served
    }
}

/// Serves `GET /metrics` (Prometheus text format) until shutdown.
async fn serve_metrics(listener: TcpListener, operations: Operations, shutdown: CancellationToken) {
    use axum::routing::get;
    let address = listener.local_addr().ok();
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let operations = operations.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    scrape(&operations).await,
                )
            }
        }),
    );
    tracing::info!(address = ?address, "serving metrics");
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %error, "the metrics endpoint stopped");
    }
}

/// The metrics' exposition, with what they cannot read themselves: the Billecta breakers' states and
/// the funnel from the database, both as they are now.
async fn scrape(operations: &Operations) -> String {
    let billecta = operations.billecta();
    let breaker = |environment| match billecta.client(environment).breaker_state() {
        BreakerState::Closed => Breaker::Closed,
        BreakerState::HalfOpen => Breaker::HalfOpen,
        BreakerState::Open => Breaker::Open,
    };
    let funnel = async {
        let counted = operations.store().funnel().await;
        counted.map(|counted| Funnel {
            onboardings: counted.onboardings,
            stages: counted.stages,
        })
    };
    metrics::metrics().render(breaker, funnel).await
}

/// Counts every request the Billecta clients send in the process's metrics.
#[derive(Debug)]
struct CountedInMetrics;

impl Observer for CountedInMetrics {
    fn request_finished(
        &self,
        environment: billecta_client::Environment,
        endpoint: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        metrics::metrics().billecta_request(environment.as_str(), endpoint, outcome, elapsed);
    }
}

/// Reflection over the API, health and the google.rpc error details, so that grpcurl can describe
/// every service and decode every error.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// How often the database is checked while it cannot be reached or take writes.
const UNREACHABLE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The health entry of the database alone: NOT_SERVING also while it answers but refuses writes
/// (its disk full), when the service itself still serves reads.
const DATABASE_HEALTH: &str = "database";

/// What the health check found of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatabaseHealth {
    Answering,
    /// It answers, but the disk that holds it is full: writes are refused, reads go on.
    DiskFull,
    Unreachable,
}

/// Keeps health in step with the database: everything SERVING while it answers; the `database`
/// entry NOT_SERVING while its disk is full; everything NOT_SERVING while it does not answer (and
/// calls are refused at once meanwhile), and for good once draining starts.
async fn watch_database(
    health: HealthReporter,
    store: Store,
    interval: Duration,
    initial: DatabaseHealth,
    shutdown: CancellationToken,
) {
    let mut last = initial;
    loop {
        // While the database is away or full, look again soon, so that calls are let through
        // again within moments of its return.
        let wait = if last == DatabaseHealth::Answering {
            interval
        } else {
            interval.min(UNREACHABLE_CHECK_INTERVAL)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        let status = database_status(&store, interval).await;
        if shutdown.is_cancelled() {
            return;
        }
        store.set_reachable(status != DatabaseHealth::Unreachable);
        if last != status {
            report(&health, status).await;
            last = status;
        }
    }
}

/// What the database does within the check interval (at least 500 ms).
async fn database_status(store: &Store, interval: Duration) -> DatabaseHealth {
    match store.ping(interval.max(Duration::from_millis(500))).await {
        Ok(()) => DatabaseHealth::Answering,
        Err(StorageError::DiskFull(_)) => DatabaseHealth::DiskFull,
        Err(_) => DatabaseHealth::Unreachable,
    }
}

async fn report(health: &HealthReporter, status: DatabaseHealth) {
    let (service, database) = match status {
        DatabaseHealth::Answering => {
            tracing::info!("database reachable: SERVING");
            (ServingStatus::Serving, ServingStatus::Serving)
        }
        DatabaseHealth::DiskFull => {
            tracing::error!(
                "the disk that holds the database is full: changes are refused until space is \
                 freed, reads are served; health entry \"database\" NOT_SERVING"
            );
            (ServingStatus::Serving, ServingStatus::NotServing)
        }
        DatabaseHealth::Unreachable => {
            tracing::warn!("database unreachable: NOT_SERVING");
            (ServingStatus::NotServing, ServingStatus::NotServing)
        }
    };
    for name in HEALTH_SERVICES {
        health.set_service_status(name, service).await;
    }
    health.set_service_status(DATABASE_HEALTH, database).await;
}

/// Asks the server at `address` for its overall health; `Ok` only when it is SERVING.
pub async fn probe(
    address: &str,
    ca: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ask = async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())?;
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            endpoint = endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {address}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            response.status == Status::Serving as i32,
            "health is {:?}",
            Status::try_from(response.status).unwrap_or(Status::Unknown)
        );
        Ok(())
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {address} within {timeout:?}"))?
}
