//! Starts the real server in-process on a random port against a fresh database, and gives tests a
//! generated gRPC client for it.
//!
//! Every scenario runs against SQLite (a new file) and, when `TEST_POSTGRES_URL` names a PostgreSQL
//! server, against PostgreSQL too (a new database per server). With `CI=true` a missing
//! `TEST_POSTGRES_URL` is an error, so CI cannot skip PostgreSQL by accident.

#![allow(dead_code)]

use billecta_onboarding::app::Application;
use billecta_onboarding::config::Config;
use billecta_onboarding::domain::Environment;
use billecta_onboarding::proto::onboarding_service_client::OnboardingServiceClient;
use billecta_onboarding::simulator::RunningSimulator;
use sqlx::Connection;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use billecta_onboarding::proto;

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// The backends to run every scenario against.
pub fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Sqlite];
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => backends.push(Backend::Postgres(url)),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!(
                "CI=true but TEST_POSTGRES_URL is not set: the PostgreSQL suite would be skipped"
            )
        }
        _ => eprintln!("TEST_POSTGRES_URL is not set: running against SQLite only"),
    }
    backends
}

/// Runs `scenario` once per backend, each on a fresh server and database.
pub async fn for_each_backend<F, Fut>(scenario: F)
where
    F: Fn(TestServer) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let server = TestServer::start(&backend).await;
        scenario(server).await;
    }
}

pub struct TestServer {
    pub address: SocketAddr,
    /// The sandbox's Billecta simulators, test and production.
    pub simulators: [Arc<RunningSimulator>; 2],
    pub client: OnboardingServiceClient<Channel>,
    pub channel: Channel,
    pub database: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// Keeps the SQLite file's folder alive for the server's lifetime.
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start(backend: &Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server whose configuration `adjust` may change first.
    pub async fn start_with(backend: &Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let (database, dir) = fresh_database(backend).await;
        let mut config = Config::for_database(database.clone());
        config.sandbox = true;
        // Short Billecta backoffs, so fault tests stay quick.
        config.billecta_backoff_base_ms = 10;
        config.billecta_backoff_max_ms = 50;
        config.watch_poll_interval_ms = 200;
        config.health_check_interval_ms = 100;
        adjust(&mut config);
        let application = Application::build(config).await.expect("server builds");
        let address = application.local_addr();
        let sandbox = application.sandbox().expect("tests run in sandbox mode");
        let simulators = [
            sandbox.simulator(Environment::Test).clone(),
            sandbox.simulator(Environment::Production).clone(),
        ];
        let shutdown = application.shutdown_token();
        let task = tokio::spawn(application.run());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connects to the server");
        Self {
            address,
            simulators,
            client: OnboardingServiceClient::new(channel.clone()),
            channel,
            database,
            shutdown,
            task,
            _dir: dir,
        }
    }
}

impl TestServer {
    /// The simulator standing in for Billecta's `environment`.
    pub fn simulator(&self, environment: Environment) -> &RunningSimulator {
        match environment {
            Environment::Test => &self.simulators[0],
            Environment::Production => &self.simulators[1],
        }
    }
}

/// A new, empty database for one server.
async fn fresh_database(backend: &Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("onboarding.sqlite3");
            (path.to_str().unwrap().to_owned(), Some(dir))
        }
        Backend::Postgres(url) => {
            let name = format!("onboarding_test_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(url)
                .await
                .expect("connects to TEST_POSTGRES_URL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("creates a test database");
            admin.close().await.ok();
            let (base, _) = url
                .rsplit_once('/')
                .expect("TEST_POSTGRES_URL has a database path");
            (format!("{base}/{name}"), None)
        }
    }
}

/// The ErrorInfo reason of a status (every error has exactly one).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    details
        .error_info()
        .expect("every error carries an ErrorInfo")
        .reason
        .clone()
}

/// The fields named by a status's BadRequest.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

pub fn name(tenant: &str, environment: &str) -> String {
    format!("tenants/{tenant}/environments/{environment}")
}

pub fn create_request(
    tenant: &str,
    environment: proto::Environment,
) -> proto::CreateOnboardingRequest {
    proto::CreateOnboardingRequest {
        tenant: tenant.to_owned(),
        environment: environment.into(),
        ..Default::default()
    }
}

pub fn agreement_request(name: &str) -> proto::RecordAgreementRequest {
    proto::RecordAgreementRequest {
        name: name.to_owned(),
        attested_by: "anna@payway.se".to_owned(),
        agreement_time: Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        }),
        reference: "CONTRACT-2026-17".to_owned(),
        ..Default::default()
    }
}

pub fn account_request(name: &str) -> proto::RegisterAccountRequest {
    proto::RegisterAccountRequest {
        name: name.to_owned(),
        account: Some(proto::Account {
            full_name: "Payway Billecta".to_owned(),
            company_name: "Göteborgs-Posten AB".to_owned(),
            email: "billecta@gp.se".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates an onboarding and returns it.
pub async fn create(
    server: &TestServer,
    tenant: &str,
    environment: proto::Environment,
) -> proto::Onboarding {
    server
        .client
        .clone()
        .create_onboarding(create_request(tenant, environment))
        .await
        .expect("creates")
        .into_inner()
        .onboarding
        .unwrap()
}

pub async fn get(server: &TestServer, name: &str) -> Result<proto::Onboarding, tonic::Status> {
    Ok(server
        .client
        .clone()
        .get_onboarding(proto::GetOnboardingRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .onboarding
        .unwrap())
}

pub async fn events(server: &TestServer, name: &str) -> Vec<proto::OnboardingEvent> {
    server
        .client
        .clone()
        .list_onboarding_events(proto::ListOnboardingEventsRequest {
            name: name.to_owned(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("lists events")
        .into_inner()
        .events
}

/// Every text column of every row the service stored, and every stored byte string.
pub async fn stored_everything(database: &str) -> Vec<u8> {
    sqlx::any::install_default_drivers();
    let url = if database.starts_with("postgres") {
        database.to_owned()
    } else {
        format!("sqlite://{database}")
    };
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let mut everything = Vec::new();
    for (table, columns) in [
        ("credentials", vec!["ciphertext", "nonce"]),
        ("events", vec!["summary", "actor", "transitions"]),
        ("idempotency_keys", vec!["response", "request_hash"]),
        ("stages", vec!["message", "reason"]),
        ("onboardings", vec!["account"]),
        ("creditors", vec!["company_settings"]),
    ] {
        let query = format!("SELECT {} FROM {table}", columns.join(", "));
        let rows = sqlx::query(sqlx::AssertSqlSafe(query))
            .fetch_all(&pool)
            .await
            .unwrap();
        for row in rows {
            use sqlx::Row;
            for column in &columns {
                if let Ok(bytes) = row.try_get::<Vec<u8>, _>(*column) {
                    everything.extend(bytes);
                } else if let Ok(Some(text)) = row.try_get::<Option<String>, _>(*column) {
                    everything.extend(text.into_bytes());
                }
            }
        }
    }
    pool.close().await;
    // SQLite: the files themselves too, write-ahead log included.
    if let Some(dir) = std::path::Path::new(database)
        .parent()
        .filter(|_| !database.starts_with("postgres"))
    {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            everything.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    everything
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}
