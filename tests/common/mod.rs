//! Starts the real server in-process on a random port against a fresh database, and gives tests a
//! generated gRPC client for it; and holds the requests, journey steps and checks that several test
//! binaries share.
//!
//! Every scenario runs against SQLite (a new file) and, when `TEST_POSTGRES_URL` names a PostgreSQL
//! server, against PostgreSQL too (a new database per server). With `CI=true` a missing
//! `TEST_POSTGRES_URL` is an error, so CI cannot skip PostgreSQL by accident.

#![allow(dead_code)]

use billecta_onboarding::app::Application;
use billecta_onboarding::auth::SANDBOX_KEY;
use billecta_onboarding::config::Config;
use billecta_onboarding::domain::Environment;
use billecta_onboarding::proto::onboarding_service_client::OnboardingServiceClient;
pub use billecta_sim::SignIn;
use billecta_sim::{Fault, FaultRule, NewAccount, RunningSimulator};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

pub use billecta_onboarding::proto;

/// The email `account_request` registers, and so the account user's username in Billecta.
pub const ACCOUNT_EMAIL: &str = "billecta@gp.se";
/// Göteborgs-Posten's organisation number, the creditor `creditor_request` creates.
pub const ORG_NO: &str = "556036-0793";

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

/// Runs `scenario` once per backend and per answer Billecta's sign-in may give (the live token, or
/// a new one that invalidates it: not known, so the service must work with both), each on a fresh
/// server and database.
pub async fn for_each_backend_and_sign_in<F, Fut>(scenario: F)
where
    F: Fn(TestServer, SignIn) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in backends() {
        for sign_in in [SignIn::ReturnsLiveToken, SignIn::IssuesNewToken] {
            eprintln!("backend: {backend:?}, sign-in: {sign_in}");
            let server =
                TestServer::start_with(&backend, |config| config.sandbox_sign_in = sign_in).await;
            scenario(server, sign_in).await;
        }
    }
}

/// The account id of the user `username` in `environment`'s simulator.
pub fn simulator_account(server: &TestServer, environment: Environment, username: &str) -> Uuid {
    server
        .simulator(environment)
        .state()
        .users
        .iter()
        .find(|user| user.username.eq_ignore_ascii_case(username))
        .expect("the user exists in the simulator")
        .account_id
}

pub struct TestServer {
    pub address: SocketAddr,
    /// The metrics endpoint, when the test turned it on.
    pub metrics: Option<SocketAddr>,
    /// The sandbox's Billecta simulators, test and production.
    pub simulators: [Arc<RunningSimulator>; 2],
    /// A client that authenticates as the sandbox's developer (every permission).
    pub client: Client,
    pub channel: Channel,
    pub database: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The server's database, removed when the server is dropped.
    _database: FreshDatabase,
}

impl TestServer {
    pub async fn start(backend: &Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server whose configuration `adjust` may change first.
    pub async fn start_with(backend: &Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let fresh = FreshDatabase::new(backend).await;
        let database = fresh.url.clone();
        let mut config = Config::for_database(database.clone());
        config.sandbox = true;
        // Short Billecta backoffs, so fault tests stay quick.
        config.billecta_backoff_base_ms = 10;
        config.billecta_backoff_max_ms = 50;
        config.watch_poll_interval_ms = 200;
        config.health_check_interval_ms = 100;
        // Tests that want the background worker turn it on.
        config.reconcile_interval_ms = 0;
        adjust(&mut config);
        let application = Application::build(config).await.expect("server builds");
        let address = application.local_addr();
        let metrics = application.metrics_addr();
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
            metrics,
            simulators,
            client: client(channel.clone(), SANDBOX_KEY),
            channel,
            database,
            shutdown,
            task,
            _database: fresh,
        }
    }
}

/// Adds a bearer API key to every call (or, for tests of refusals, none).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Bearer {
    pub fn new(key: &str) -> Self {
        Bearer(Some(format!("Bearer {key}").parse().expect("an ASCII key")))
    }

    /// No credential at all.
    pub fn none() -> Self {
        Bearer(None)
    }
}

/// An onboarding client that authenticates with an API key.
pub type Client = OnboardingServiceClient<InterceptedService<Channel, Bearer>>;

pub fn client(channel: Channel, key: &str) -> Client {
    OnboardingServiceClient::with_interceptor(channel, Bearer::new(key))
}

/// Every permission.
pub const ALL_PERMISSIONS: &[&str] = &["read", "write", "payment_configuration"];

/// One configured caller of a test: name, key, permissions and, if limited, its tenants.
pub type TestCaller<'a> = (&'a str, &'a str, &'a [&'a str], Option<&'a [&'a str]>);

/// A --callers value for the given callers.
pub fn callers_json(callers: &[TestCaller<'_>]) -> String {
    let entries: Vec<serde_json::Value> = callers
        .iter()
        .map(|(name, key, permissions, tenants)| {
            let mut entry = serde_json::json!({
                "name": name,
                "key_sha256": hex::encode(billecta_onboarding::auth::hash_key(key)),
                "permissions": permissions,
            });
            if let Some(tenants) = tenants {
                entry["tenants"] = serde_json::json!(tenants);
            }
            entry
        })
        .collect();
    serde_json::Value::Array(entries).to_string()
}

/// An encryption key shared by servers that must read each other's secrets (replicas).
pub const SHARED_ENCRYPTION_KEYS: &str = "replicas:q83vEjRWeJoRI0VniavN7xEjRWeJq83vEjRWeJq83vE=";

/// A second replica of a server: the same database, the same Billecta (the first server's
/// simulators), the same encryption key.
pub struct Replica {
    pub client: Client,
    pub channel: Channel,
    pub shutdown: CancellationToken,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    /// Starts another replica beside this server (which must use [`SHARED_ENCRYPTION_KEYS`]).
    pub async fn replica(&self) -> Replica {
        self.replica_with(SHARED_ENCRYPTION_KEYS).await
    }

    /// Another replica whose keyring is `encryption_keys` (a rolling key rotation has replicas with
    /// different ones).
    pub async fn replica_with(&self, encryption_keys: &str) -> Replica {
        self.replica_adjusted(|config| config.encryption_keys = encryption_keys.to_owned())
            .await
    }

    /// Another replica (with [`SHARED_ENCRYPTION_KEYS`]) whose configuration `adjust` changes.
    pub async fn replica_adjusted(&self, adjust: impl FnOnce(&mut Config)) -> Replica {
        let mut config = Config::for_database(self.database.clone());
        config.encryption_keys = SHARED_ENCRYPTION_KEYS.to_owned();
        config.callers = callers_json(&[("sandbox-developer", SANDBOX_KEY, ALL_PERMISSIONS, None)]);
        config.billecta_test_url = self.simulator(Environment::Test).base_url();
        config.billecta_production_url = self.simulator(Environment::Production).base_url();
        config.billecta_backoff_base_ms = 10;
        config.billecta_backoff_max_ms = 50;
        adjust(&mut config);
        let application = Application::build(config).await.expect("replica builds");
        let address = application.local_addr();
        let shutdown = application.shutdown_token();
        tokio::spawn(application.run());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connects to the replica");
        Replica {
            client: client(channel.clone(), SANDBOX_KEY),
            channel,
            shutdown,
        }
    }

    /// The simulator standing in for Billecta's `environment`.
    pub fn simulator(&self, environment: Environment) -> &RunningSimulator {
        match environment {
            Environment::Test => &self.simulators[0],
            Environment::Production => &self.simulators[1],
        }
    }
}

/// A new, empty database for one server: a SQLite file in a folder of its own, or a database on
/// the PostgreSQL server. Both are removed when it is dropped, so that runs leave nothing behind on
/// the PostgreSQL server.
struct FreshDatabase {
    url: String,
    place: Place,
}

enum Place {
    /// Kept for the server's lifetime; removed with the file when dropped.
    Folder {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

impl FreshDatabase {
    async fn new(backend: &Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("onboarding.sqlite3");
                Self {
                    url: path.to_str().unwrap().to_owned(),
                    place: Place::Folder { _dir: dir },
                }
            }
            Backend::Postgres(admin_url) => {
                let name = format!("onboarding_test_{}", uuid::Uuid::new_v4().simple());
                let url = billecta_onboarding::scratch::create_database(admin_url, &name)
                    .await
                    .expect("creates a test database on TEST_POSTGRES_URL's server");
                Self {
                    url: url.to_string(),
                    place: Place::Postgres {
                        admin_url: admin_url.clone(),
                        name,
                    },
                }
            }
        }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let Place::Postgres { admin_url, name } = &self.place else {
            return;
        };
        let (admin_url, database) = (admin_url.clone(), name.clone());
        // On a thread of its own: a drop cannot wait for a future, and the test's runtime may be
        // this thread's. The server may still be connected; the drop closes its connections.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the drop")
                .block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        billecta_onboarding::scratch::drop_database(&admin_url, &database),
                    )
                    .await
                })
        })
        .join();
        // The name only: the URL holds the server's password.
        if !matches!(dropped, Ok(Ok(Ok(())))) {
            eprintln!("the test database {name} was not dropped: {dropped:?}");
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

/// The answer of a call that returns the onboarding as the call left it.
pub trait CarriesOnboarding {
    fn into_onboarding(self) -> Option<proto::Onboarding>;
}

/// Implements `CarriesOnboarding` for answers with an `onboarding` field.
macro_rules! carries_onboarding {
    ($($answer:ty),+ $(,)?) => {
        $(impl CarriesOnboarding for $answer {
            fn into_onboarding(self) -> Option<proto::Onboarding> {
                self.onboarding
            }
        })+
    };
}

carries_onboarding!(
    proto::CreateOnboardingResponse,
    proto::RecordAgreementResponse,
    proto::RegisterAccountResponse,
    proto::ConfirmAccountActivationResponse,
    proto::UpdateCompanySettingsResponse,
    proto::UpdateInvoiceSettingsResponse,
    proto::SkipStageResponse,
    proto::RegisterApiCredentialsResponse,
    proto::PromoteToProductionResponse,
);

/// Reads the onboarding out of a call's outcome, so that a test states the call rather than the
/// unwrapping of its answer.
pub trait OnboardingOutcome {
    /// The onboarding a successful call answered with; panics with the status on a refusal.
    fn onboarding(self) -> proto::Onboarding;
}

impl<Answer: CarriesOnboarding> OnboardingOutcome
    for Result<tonic::Response<Answer>, tonic::Status>
{
    #[track_caller]
    fn onboarding(self) -> proto::Onboarding {
        self.expect("the call succeeds")
            .into_inner()
            .into_onboarding()
            .expect("the answer carries the onboarding")
    }
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
            email: ACCOUNT_EMAIL.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sign-in that confirms the account user's activation with `password`.
pub fn confirm_request(name: &str, password: &str) -> proto::ConfirmAccountActivationRequest {
    proto::ConfirmAccountActivationRequest {
        name: name.to_owned(),
        username: ACCOUNT_EMAIL.to_owned(),
        password: password.to_owned(),
        ..Default::default()
    }
}

/// Göteborgs-Posten as a creditor of the onboarding `parent`.
pub fn creditor_request(parent: &str) -> proto::CreateCreditorRequest {
    proto::CreateCreditorRequest {
        parent: parent.to_owned(),
        organisation_number: ORG_NO.to_owned(),
        company_name: "Göteborgs-Posten AB".to_owned(),
        title: "GP".to_owned(),
        ..Default::default()
    }
}

/// Göteborgs-Posten's company settings, written the way Billecta stores them.
pub fn gp_company_settings() -> proto::CompanySettings {
    proto::CompanySettings {
        address: "Polhemsplatsen 5".to_owned(),
        zip_code: "411 11".to_owned(),
        city: "Göteborg".to_owned(),
        bankgiro_invoicing: "5050-1055".to_owned(),
        bankgiro_payments: "5402-9681".to_owned(),
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
        .onboarding()
}

pub async fn get(server: &TestServer, name: &str) -> Result<proto::Onboarding, tonic::Status> {
    get_via(&server.client, name).await
}

/// GetOnboarding through `client` (a replica's, say).
pub async fn get_via(client: &Client, name: &str) -> Result<proto::Onboarding, tonic::Status> {
    Ok(client
        .clone()
        .get_onboarding(proto::GetOnboardingRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .onboarding
        .unwrap())
}

/// Sends `request` twice through `call`, as a client retrying after a lost answer would; the retry
/// must answer with the first result, which is returned.
pub async fn assert_retry_replays<Request, Answer, Outcome>(
    request: Request,
    call: impl Fn(Request) -> Outcome,
) -> Answer
where
    Request: Clone,
    Answer: PartialEq + std::fmt::Debug,
    Outcome: Future<Output = Result<tonic::Response<Answer>, tonic::Status>>,
{
    let first = call(request.clone())
        .await
        .expect("the first attempt succeeds")
        .into_inner();
    let retried = call(request)
        .await
        .expect("the retry succeeds")
        .into_inner();
    assert_eq!(first, retried, "a retry returns the first result");
    first
}

/// Records the agreement of `name`; recording it again is allowed, and each time is an event.
pub async fn record_agreement(server: &TestServer, name: &str) {
    server
        .client
        .clone()
        .record_agreement(agreement_request(name))
        .await
        .expect("records the agreement");
}

/// Records the agreement and registers the account: the stages Payway's operations drive before the
/// tenant acts in Billecta's portal.
pub async fn record_agreement_and_account(server: &TestServer, name: &str) {
    record_agreement(server, name).await;
    server
        .client
        .clone()
        .register_account(account_request(name))
        .await
        .expect("registers the account");
}

/// `record_agreement_and_account`, then the person creates the registered account in Billecta's
/// portal from the activation email: it exists there, not yet activated. Returns the simulator's
/// account id, for activating it later.
pub async fn register_account_in_portal(
    server: &TestServer,
    name: &str,
    environment: Environment,
) -> Uuid {
    record_agreement_and_account(server, name).await;
    let account = server
        .simulator(environment)
        .create_account(NewAccount {
            name: "Payway Billecta".into(),
            company_name: "Göteborgs-Posten AB".into(),
            email: ACCOUNT_EMAIL.into(),
            password: "initial-from-the-activation-email".into(),
        })
        .expect("the portal creates the account");
    account.account_id
}

/// The person activates the account in the portal with `password`; the sign-in then completes
/// ACCOUNT.
pub async fn activate_and_confirm_account(
    server: &TestServer,
    name: &str,
    environment: Environment,
    account_id: Uuid,
    password: &str,
) {
    server
        .simulator(environment)
        .activate_account(account_id, password)
        .expect("the portal activates the account");
    server
        .client
        .clone()
        .confirm_account_activation(confirm_request(name, password))
        .await
        .expect("the activated account signs in");
}

/// The environment's stages up to a confirmed account, with the portal steps played in the
/// simulator and `password` set on activation.
pub async fn confirm_account(
    server: &TestServer,
    name: &str,
    environment: Environment,
    password: &str,
) {
    let account_id = register_account_in_portal(server, name, environment).await;
    activate_and_confirm_account(server, name, environment, account_id, password).await;
}

/// Creates the creditor `request` describes and returns it.
pub async fn create_creditor(
    server: &TestServer,
    request: proto::CreateCreditorRequest,
) -> proto::Creditor {
    server
        .client
        .clone()
        .create_creditor(request)
        .await
        .expect("creates the creditor")
        .into_inner()
        .creditor
        .unwrap()
}

/// Company settings applied, then the bankgiro for payments approved by Billecta's support and the
/// settings applied again: COMPANY_SETTINGS completes. `settings` of `None` applies what the
/// creditor already holds (promoted from test, say).
pub async fn settle_company_settings(
    server: &TestServer,
    environment: Environment,
    creditor: &proto::Creditor,
    settings: Option<proto::CompanySettings>,
) {
    let mut client = server.client.clone();
    let request = proto::UpdateCompanySettingsRequest {
        name: creditor.name.clone(),
        company_settings: settings,
        ..Default::default()
    };
    client
        .update_company_settings(request.clone())
        .await
        .expect("applies the company settings");
    server
        .simulator(environment)
        .approve_outgoing_bankgiro(creditor.creditor_public_id.parse().unwrap(), "5402-9681")
        .expect("Billecta's support approves the bankgiro");
    let applied = client.update_company_settings(request).await.onboarding();
    let creditor_stages = &applied
        .creditors
        .iter()
        .find(|listed| listed.name == creditor.name)
        .expect("the creditor is listed")
        .stages;
    assert_eq!(
        stage_state(creditor_stages, proto::Stage::CompanySettings),
        proto::StageState::Completed
    );
}

/// Skips the optional WEBHOOKS stage of the creditor `creditor_name`, giving `skip_reason`; returns
/// the onboarding.
pub async fn skip_webhooks(
    server: &TestServer,
    creditor_name: &str,
    skip_reason: &str,
) -> proto::Onboarding {
    server
        .client
        .clone()
        .skip_stage(proto::SkipStageRequest {
            name: creditor_name.to_owned(),
            stage: proto::Stage::Webhooks as i32,
            reason: skip_reason.to_owned(),
            ..Default::default()
        })
        .await
        .onboarding()
}

/// ValidateOnboarding's report on `name`.
pub async fn validate(server: &TestServer, name: &str) -> proto::ValidateOnboardingResponse {
    server
        .client
        .clone()
        .validate_onboarding(proto::ValidateOnboardingRequest {
            name: name.to_owned(),
        })
        .await
        .expect("validates")
        .into_inner()
}

/// The status of `which` among `stages`.
pub fn stage_status(stages: &[proto::StageStatus], which: proto::Stage) -> &proto::StageStatus {
    stages
        .iter()
        .find(|status| status.stage == which as i32)
        .expect("every stage is listed")
}

/// The state of `which` among `stages`.
pub fn stage_state(stages: &[proto::StageStatus], which: proto::Stage) -> proto::StageState {
    proto::StageState::try_from(stage_status(stages, which).state).unwrap()
}

/// Has `simulator` answer the next `times` requests to `route` with `fault`.
pub fn fail_next(simulator: &RunningSimulator, route: &str, fault: Fault, times: u32) {
    simulator
        .set_faults(None, vec![FaultRule::new(fault).on(route).times(times)])
        .expect("the simulator takes the fault");
}

/// Asserts that a refused call carries `code` and the ErrorInfo `expected_reason`.
#[track_caller]
pub fn assert_refused(status: &tonic::Status, code: tonic::Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(status), expected_reason, "{status:?}");
}

pub async fn events(server: &TestServer, name: &str) -> Vec<proto::OnboardingEvent> {
    events_via(&server.client, name).await
}

/// The audit trail of `name` as `client` (a replica's, say) lists it.
pub async fn events_via(client: &Client, name: &str) -> Vec<proto::OnboardingEvent> {
    client
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

/// A pool on a test server's database, to look at (or tamper with) what it stored.
pub async fn database_pool(database: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = if database.starts_with("postgres") {
        database.to_owned()
    } else {
        format!("sqlite://{database}")
    };
    sqlx::AnyPool::connect(&url).await.unwrap()
}

/// Everything the service stored: on PostgreSQL a dump of every row of every table (as JSON text,
/// byte strings raw), on SQLite the database files themselves, write-ahead log included.
pub async fn stored_everything(database: &str) -> Vec<u8> {
    let mut everything = Vec::new();
    if !database.starts_with("postgres") {
        let dir = std::path::Path::new(database)
            .parent()
            .expect("a SQLite file in a folder");
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            everything.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
        return everything;
    }
    let pool = database_pool(database).await;
    for table in [
        "onboardings",
        "creditors",
        "stages",
        "credentials",
        "events",
        "idempotency_keys",
    ] {
        use sqlx::Row;
        let dump = format!("SELECT CAST(row_to_json(t) AS TEXT) AS row FROM {table} t");
        for row in sqlx::query(sqlx::AssertSqlSafe(dump))
            .fetch_all(&pool)
            .await
            .unwrap()
        {
            everything.extend(row.get::<String, _>("row").into_bytes());
        }
    }
    for bytes in sqlx::query_scalar::<_, Vec<u8>>("SELECT ciphertext FROM credentials")
        .fetch_all(&pool)
        .await
        .unwrap()
    {
        everything.extend(bytes);
    }
    pool.close().await;
    everything
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The account password of [`ready_onboarding`].
pub const READY_PASSWORD: &str = "Höst-2026-lösen";

pub type Payments = billecta_onboarding::proto::payment_configuration_service_client::PaymentConfigurationServiceClient<
    tonic::codegen::InterceptedService<tonic::transport::Channel, Bearer>,
>;

pub fn payments(server: &TestServer) -> Payments {
    payments_on(server.channel.clone())
}

/// A payment-configuration client on `channel` (a replica's, say), with the sandbox key.
pub fn payments_on(channel: Channel) -> Payments {
    billecta_onboarding::proto::payment_configuration_service_client::PaymentConfigurationServiceClient::with_interceptor(
        channel,
        Bearer::new(billecta_onboarding::auth::SANDBOX_KEY),
    )
}

pub async fn payment_configuration(
    server: &TestServer,
    creditor: &str,
) -> Result<proto::PaymentConfiguration, tonic::Status> {
    payment_configuration_via(payments(server), creditor).await
}

/// GetPaymentConfiguration through `payments` (a replica's, say).
pub async fn payment_configuration_via(
    mut payments: Payments,
    creditor: &str,
) -> Result<proto::PaymentConfiguration, tonic::Status> {
    Ok(payments
        .get_payment_configuration(proto::GetPaymentConfigurationRequest {
            name: creditor.to_owned(),
        })
        .await?
        .into_inner()
        .payment_configuration
        .unwrap())
}

/// A test onboarding with its creditor and company settings done; returns its name and the creditor.
pub async fn settled_creditor(server: &TestServer) -> (String, proto::Creditor) {
    let name = create(server, "gp", proto::Environment::Test).await.name;
    confirm_account(server, &name, Environment::Test, READY_PASSWORD).await;
    let creditor = create_creditor(server, creditor_request(&name)).await;
    settle_company_settings(
        server,
        Environment::Test,
        &creditor,
        Some(gp_company_settings()),
    )
    .await;
    (name, creditor)
}

/// A READY test onboarding; returns its name.
pub async fn ready_onboarding(server: &TestServer) -> String {
    let (name, creditor) = settled_creditor(server).await;
    server
        .client
        .clone()
        .register_api_credentials(proto::RegisterApiCredentialsRequest {
            name: creditor.name.clone(),
            username: ACCOUNT_EMAIL.into(),
            password: READY_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    payment_configuration(server, &creditor.name).await.unwrap();
    skip_webhooks(server, &creditor.name, "later").await;
    let ready = get(server, &name).await.unwrap();
    assert_eq!(ready.state, proto::OnboardingState::Ready as i32);
    name
}

/// Someone removes the test account's one user (also its API user) in Billecta's portal.
pub fn remove_account_user(server: &TestServer) {
    let simulator = server.simulator(Environment::Test);
    let user = simulator.state().users[0].user_public_id;
    simulator.delete_user(user).unwrap();
}

/// A Billecta client for the test environment's simulator, as the service's own.
pub fn test_billecta(server: &TestServer) -> billecta_client::BillectaClient {
    billecta_client::BillectaClient::new(
        Environment::Test,
        billecta_client::ClientSettings::new(server.simulator(Environment::Test).base_url()),
    )
    .unwrap()
}

/// The test account's current SecureToken, signing in as the account user of [`ready_onboarding`].
pub async fn account_token(
    billecta: &billecta_client::BillectaClient,
) -> billecta_onboarding::secret::Secret {
    billecta
        .authenticate(
            ACCOUNT_EMAIL,
            &billecta_onboarding::secret::Secret::new(READY_PASSWORD),
            billecta_client::Deadline::none(),
        )
        .await
        .unwrap()
        .value
}
