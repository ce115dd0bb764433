//! Reliability drills: many tenants provisioned from nothing to READY through the real service binary,
//! against the simulator with injected faults, while replicas are killed with `kill -9` and the
//! database is taken away. At the end every tenant must be READY, Billecta must hold exactly one
//! creditor per organisation number, and every tenant's audit trail must be whole: numbered without
//! gaps, explaining every stage's state, holding an event for every call that succeeded.
//!
//! - `fleet` — the service processes (started, killed, restarted) and a cuttable database proxy.
//! - `journey` — one tenant's calls, retried the way a careful client retries, and the audit.
//!
//! The `billecta-drill` binary runs one from the command line; `RELIABILITY.md` records runs.

pub mod fleet;
pub mod journey;

use billecta_onboarding::auth::{self, Permission};
use billecta_onboarding::scratch::{create_database, drop_database};

use anyhow::Context;
use base64::Engine;
use billecta_sim::{
    Environment, Fault, FaultBody, FaultRule, RunningSimulator, SignIn, SimulatorConfig,
};
use fleet::{CuttableProxy, Fleet};
use futures::StreamExt;
use journey::{CallLog, Clients, Driver, Portal, TenantAudit, TenantPlan};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where the replicas keep their state.
#[derive(Debug, Clone)]
pub enum DrillDatabase {
    /// A new SQLite file in the work directory (one replica only: SQLite is one process's).
    Sqlite,
    /// A new database on the PostgreSQL server `admin_url` reaches (any database on it); dropped
    /// after a successful drill.
    Postgres { admin_url: String },
}

/// How the database is taken away during the drill.
#[derive(Debug, Clone)]
pub enum OutageMethod {
    /// A proxy between the replicas and PostgreSQL drops every connection and refuses new ones.
    Proxy,
    /// Shell commands that stop and start the server (`pg_ctlcluster 15 main stop`).
    Commands { stop: String, start: String },
}

/// A database outage: when (after this share of the tenants reached READY), how long, and how.
#[derive(Debug, Clone)]
pub struct OutagePlan {
    pub after_share: f64,
    pub length: Duration,
    pub method: OutageMethod,
}

/// Everything a drill does.
#[derive(Debug, Clone)]
pub struct DrillSettings {
    pub tenants: usize,
    /// Tenants driven at once.
    pub concurrency: usize,
    pub replicas: usize,
    /// Journeys run at once for each tenant, each through its own replica (round the replicas when
    /// one): more than one is callers racing each other on the same tenant.
    pub drivers_per_tenant: usize,
    pub database: DrillDatabase,
    /// The `billecta-onboarding` binary.
    pub server_binary: PathBuf,
    /// Logs and the SQLite file go here.
    pub work_dir: PathBuf,
    /// The share of Billecta requests answered by an injected fault (5xx, 429, hang, reset).
    pub failure_rate: f64,
    /// Added to `latency_share` of Billecta's answers.
    pub latency: Duration,
    pub latency_share: f64,
    pub seed: u64,
    /// What the simulator's sign-in does with a user's live token (Billecta's answer is not known).
    pub sign_in: SignIn,
    /// `kill -9` of a replica this many times, spread over the run; each is restarted at once.
    pub kills: u32,
    pub outage: Option<OutagePlan>,
    /// How long one tenant may take before it counts as stuck.
    pub patience: Duration,
    /// Extra arguments for every replica (later ones win).
    pub server_args: Vec<String>,
}

impl DrillSettings {
    pub fn new(server_binary: PathBuf, work_dir: PathBuf) -> Self {
        Self {
            tenants: 500,
            concurrency: 32,
            replicas: 1,
            drivers_per_tenant: 1,
            database: DrillDatabase::Sqlite,
            server_binary,
            work_dir,
            failure_rate: 0.25,
            latency: Duration::from_millis(20),
            latency_share: 0.5,
            seed: 1,
            sign_in: SignIn::default(),
            kills: 0,
            outage: None,
            patience: Duration::from_secs(600),
            server_args: Vec::new(),
        }
    }
}

/// The mix of faults a drill injects: shares of the failures by kind, each rule's probability set so
/// that together `failure_rate` of the requests fail (the simulator applies the first rule that
/// fires), plus `latency` on `latency_share` of the requests.
pub fn fault_rules(failure_rate: f64, latency: Duration, latency_share: f64) -> Vec<FaultRule> {
    let kinds = [
        (
            0.40,
            Fault::Status {
                status: 503,
                body: FaultBody::Json,
            },
        ),
        (
            0.15,
            Fault::Status {
                status: 502,
                body: FaultBody::Html,
            },
        ),
        (
            0.25,
            Fault::RateLimited {
                retry_after_seconds: 1,
            },
        ),
        (0.08, Fault::Hang),
        (0.12, Fault::Reset),
    ];
    // Solve 1 - Π(1 - share·x) = failure_rate for x by bisection.
    let target = failure_rate.clamp(0.0, 0.95);
    let failing = |x: f64| {
        1.0 - kinds
            .iter()
            .map(|(share, _)| 1.0 - share * x)
            .product::<f64>()
    };
    let (mut low, mut high) = (0.0, 1.0 / 0.40);
    for _ in 0..60 {
        let middle = f64::midpoint(low, high);
        if failing(middle) < target {
            low = middle;
        } else {
            high = middle;
        }
    }
    let mut rules = Vec::new();
    if !latency.is_zero() {
        rules.push(
            FaultRule::new(Fault::Latency {
                ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            })
            .with_probability(latency_share.clamp(0.0, 1.0)),
        );
    }
    if target > 0.0 {
        rules.extend(
            kinds
                .into_iter()
                .map(|(share, fault)| FaultRule::new(fault).with_probability(share * low)),
        );
    }
    rules
}

/// What a drill found. [`problems`](Self::problems) lists what went wrong; none means the service
/// kept every promise.
#[derive(Debug, Clone, Default)]
pub struct DrillReport {
    pub tenants: usize,
    pub replicas: usize,
    pub drivers_per_tenant: usize,
    pub database: String,
    pub wall: Duration,
    pub ready: usize,
    /// Tenants that never got there, with why.
    pub stuck: Vec<String>,
    pub rpc_calls: u64,
    pub rpc_retries: u64,
    pub rpc_failures: BTreeMap<String, u64>,
    pub billecta_requests: u64,
    pub billecta_faulted: u64,
    /// What the simulator's sign-in did, and how many sign-ins succeeded in all.
    pub sign_in: SignIn,
    pub sign_ins: u64,
    pub creditor_creates: u64,
    pub creditor_creates_faulted: u64,
    pub creditors: usize,
    pub duplicate_creditors: usize,
    pub events: usize,
    pub event_gaps: usize,
    pub unexplained_stages: Vec<String>,
    pub calls_without_event: usize,
    pub completed_by_reconciler: usize,
    pub kills: u32,
    /// From `kill -9` to SERVING again, each time.
    pub restarts: Vec<Duration>,
    pub start_to_serving: Duration,
    /// The largest replica's resident memory at the end, in KiB.
    pub server_resident_kib: Option<u64>,
    /// CPU time the replicas used during the run (Linux; only for runs without kills).
    pub server_cpu: Option<Duration>,
    /// CPU time this process (the callers and the simulator) used during the run (Linux).
    pub driver_cpu: Option<Duration>,
    /// The SQLite file the replicas used, kept for later runs.
    pub sqlite_file: Option<PathBuf>,
    pub outage: Option<OutageReport>,
}

/// What happened around a database outage.
#[derive(Debug, Clone, Default)]
pub struct OutageReport {
    pub down_for: Duration,
    /// From the cut until a replica reported NOT_SERVING.
    pub not_serving_after: Option<Duration>,
    /// From the database's return until the replica reported SERVING again.
    pub serving_again_after: Option<Duration>,
    /// Calls refused with DATABASE_UNAVAILABLE while the database was away (or within the grace
    /// period after it came back).
    pub database_errors_during: u64,
    /// Calls refused with DATABASE_UNAVAILABLE at any other time: must be none.
    pub database_errors_outside: u64,
    /// How long DATABASE_UNAVAILABLE refusals took: failing fast, not hanging.
    pub median_refusal: Duration,
    pub slowest_refusal: Duration,
    /// From the database's return to the last DATABASE_UNAVAILABLE refusal.
    pub last_error_after_return: Option<Duration>,
}

/// Refusals this long after the database came back still count as part of the outage: the pool
/// reconnects and in-flight calls finish.
const OUTAGE_GRACE: Duration = Duration::from_secs(10);

impl DrillReport {
    /// Every broken promise, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.ready != self.tenants {
            problems.push(format!(
                "{} of {} tenants READY; stuck: {:?}",
                self.ready,
                self.tenants,
                self.stuck.iter().take(5).collect::<Vec<_>>()
            ));
        }
        if self.duplicate_creditors > 0 {
            problems.push(format!(
                "{} organisation numbers have more than one creditor in Billecta",
                self.duplicate_creditors
            ));
        }
        if self.creditors != self.tenants {
            problems.push(format!(
                "Billecta holds {} creditors for {} tenants",
                self.creditors, self.tenants
            ));
        }
        if self.creditor_creates > self.creditors as u64 + self.creditor_creates_faulted {
            problems.push(format!(
                "{} creditor creates for {} creditors and {} faulted creates: creates repeated without cause",
                self.creditor_creates, self.creditors, self.creditor_creates_faulted
            ));
        }
        if self.event_gaps > 0 {
            problems.push(format!("{} audit events out of sequence", self.event_gaps));
        }
        if !self.unexplained_stages.is_empty() {
            problems.push(format!(
                "{} stages whose state the audit trail does not explain: {:?}",
                self.unexplained_stages.len(),
                self.unexplained_stages.iter().take(5).collect::<Vec<_>>()
            ));
        }
        if self.calls_without_event > 0 {
            problems.push(format!(
                "{} successful calls without an audit event",
                self.calls_without_event
            ));
        }
        if self.restarts.len() != self.kills as usize {
            problems.push(format!(
                "{} kills but {} restarts",
                self.kills,
                self.restarts.len()
            ));
        }
        if let Some(outage) = &self.outage {
            if outage.database_errors_outside > 0 {
                problems.push(format!(
                    "{} DATABASE_UNAVAILABLE refusals while the database was up",
                    outage.database_errors_outside
                ));
            }
            if outage.serving_again_after.is_none() {
                problems.push("health never returned to SERVING after the outage".to_owned());
            }
        }
        problems
    }
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Milliseconds, or "never".
fn shown(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string())
}

impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_second = self.tenants as f64 / self.wall.as_secs_f64().max(f64::EPSILON);
        writeln!(
            f,
            "tenants              {} on {} replica(s), {}; {} journey(s) at once per tenant",
            self.tenants, self.replicas, self.database, self.drivers_per_tenant
        )?;
        writeln!(
            f,
            "wall time            {:.1} s ({per_second:.1} tenants/s); first start to SERVING {} ms; server memory at the end {} MiB",
            self.wall.as_secs_f64(),
            millis(self.start_to_serving),
            self.server_resident_kib.map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1}", kib as f64 / 1024.0)
            )
        )?;
        writeln!(f, "READY                {} of {}", self.ready, self.tenants)?;
        writeln!(
            f,
            "sign-ins             {} ({:.2} per tenant); the sign-in {}",
            self.sign_ins,
            self.sign_ins as f64 / self.tenants.max(1) as f64,
            self.sign_in
        )?;
        let share = self.billecta_faulted as f64 / self.billecta_requests.max(1) as f64;
        writeln!(
            f,
            "Billecta requests    {} ({:.1} per tenant), {} answered by a fault ({:.1} %); {:.2} per tenant answered normally",
            self.billecta_requests,
            self.billecta_requests as f64 / self.tenants.max(1) as f64,
            self.billecta_faulted,
            share * 100.0,
            (self.billecta_requests - self.billecta_faulted) as f64 / self.tenants.max(1) as f64
        )?;
        writeln!(
            f,
            "creditors            {} in Billecta, {} duplicated; {} creates sent, {} of them faulted",
            self.creditors,
            self.duplicate_creditors,
            self.creditor_creates,
            self.creditor_creates_faulted
        )?;
        writeln!(
            f,
            "gRPC calls           {} ({} retried); refusals: {:?}",
            self.rpc_calls, self.rpc_retries, self.rpc_failures
        )?;
        writeln!(
            f,
            "audit                {} events, {} out of sequence, {} stages unexplained, {} calls without event; {} stage completions by the reconciler",
            self.events,
            self.event_gaps,
            self.unexplained_stages.len(),
            self.calls_without_event,
            self.completed_by_reconciler
        )?;
        if self.kills > 0 {
            let mut restarts = self.restarts.clone();
            restarts.sort();
            writeln!(
                f,
                "kill -9              {} times; restart to SERVING median {} ms, max {} ms",
                self.kills,
                restarts.get(restarts.len() / 2).map_or(0, |d| millis(*d)),
                restarts.last().map_or(0, |d| millis(*d))
            )?;
        }
        if let Some(outage) = &self.outage {
            writeln!(
                f,
                "database outage      {} ms; NOT_SERVING after {} ms; SERVING again {} ms after its return",
                millis(outage.down_for),
                shown(outage.not_serving_after),
                shown(outage.serving_again_after)
            )?;
            writeln!(
                f,
                "                     {} DATABASE_UNAVAILABLE refusals during it (median {} ms, slowest {} ms, last {} ms after its return), {} outside it",
                outage.database_errors_during,
                millis(outage.median_refusal),
                millis(outage.slowest_refusal),
                shown(outage.last_error_after_return),
                outage.database_errors_outside
            )?;
        }
        let problems = self.problems();
        if problems.is_empty() {
            writeln!(f, "outcome              PASS")
        } else {
            writeln!(f, "outcome              FAIL")?;
            for problem in problems {
                writeln!(f, "  - {problem}")?;
            }
            Ok(())
        }
    }
}

/// The service binary of the same build: beside the running executable (`billecta-drill`,
/// `billecta-bench`), or one folder up from a test's executable in `deps/`. Cargo builds it with
/// the workspace (`cargo build`, `cargo test --workspace`); built alone, this crate does not.
pub fn service_binary() -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe()?;
    let beside = executable.with_file_name(SERVICE_BINARY);
    let above = executable
        .parent()
        .and_then(|folder| folder.parent())
        .map(|folder| folder.join(SERVICE_BINARY));
    Ok(match above {
        Some(above) if !beside.exists() && above.exists() => above,
        _ => beside,
    })
}

/// The name of the service's binary.
const SERVICE_BINARY: &str = "billecta-onboarding";

/// A random key of `bytes` bytes, base64.
pub fn random_key(bytes: usize) -> String {
    let mut key = vec![0u8; bytes];
    getrandom::fill(&mut key).expect("the system's random source");
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The database a drill's replicas use: its URL for them, and how to clean up.
struct Database {
    url: String,
    describe: String,
    postgres: Option<(String, String)>,
    proxy: Option<CuttableProxy>,
}

async fn prepare_database(settings: &DrillSettings, tag: &str) -> anyhow::Result<Database> {
    match &settings.database {
        DrillDatabase::Sqlite => {
            anyhow::ensure!(
                settings.replicas == 1,
                "several replicas need PostgreSQL: SQLite belongs to one process"
            );
            anyhow::ensure!(
                settings.outage.is_none(),
                "a database outage needs PostgreSQL"
            );
            let path = settings.work_dir.join(format!("drill-{tag}.sqlite3"));
            Ok(Database {
                url: path.display().to_string(),
                describe: "SQLite".to_owned(),
                postgres: None,
                proxy: None,
            })
        }
        DrillDatabase::Postgres { admin_url } => {
            let name = format!("drill_{tag}");
            let url = create_database(admin_url, &name).await?;
            let proxy = match settings.outage.as_ref().map(|outage| &outage.method) {
                Some(OutageMethod::Proxy) => {
                    let host = url.host_str().unwrap_or("127.0.0.1");
                    let upstream: SocketAddr =
                        tokio::net::lookup_host((host, url.port().unwrap_or(5432)))
                            .await?
                            .next()
                            .context("resolving the PostgreSQL host")?;
                    let proxy = CuttableProxy::start(upstream).await?;
                    Some(proxy)
                }
                _ => None,
            };
            let mut replica_url = url.clone();
            if let Some(proxy) = &proxy {
                replica_url
                    .set_host(Some("127.0.0.1"))
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                replica_url
                    .set_port(Some(proxy.address().port()))
                    .map_err(|()| anyhow::anyhow!("cannot set the proxy's port"))?;
            }
            Ok(Database {
                url: replica_url.to_string(),
                describe: format!("PostgreSQL database {name}"),
                postgres: Some((admin_url.clone(), name)),
                proxy,
            })
        }
    }
}

/// Runs a drill and reports what it found. Errors are for drills that could not run at all (a
/// binary missing, PostgreSQL unreachable); broken promises are in the report.
pub async fn run(settings: DrillSettings) -> anyhow::Result<DrillReport> {
    std::fs::create_dir_all(&settings.work_dir)?;
    let tag = format!("{:x}", uuid::Uuid::new_v4().as_u128() & 0xffff_ffff_ffff);
    let mut simulator_config = SimulatorConfig::new(Environment::Test);
    simulator_config.seed = settings.seed;
    simulator_config.sign_in = settings.sign_in;
    simulator_config.faults = fault_rules(
        settings.failure_rate,
        settings.latency,
        settings.latency_share,
    );
    let simulator = billecta_sim::start(simulator_config).await?;
    let database = prepare_database(&settings, &tag).await?;
    let (api_key, caller) = auth::new_key("drill", Permission::ALL.into(), None)?;
    let callers = serde_json::to_string(&[caller])?;
    let mut args: Vec<String> = [
        "--database",
        &database.url,
        "--billecta-test-url",
        &simulator.base_url(),
        "--billecta-production-url",
        &simulator.base_url(),
        "--billecta-timeout-ms",
        "1500",
        "--billecta-breaker-open-ms",
        "2000",
        "--stage-lease-ms",
        "10000",
        "--reconcile-interval-ms",
        "1000",
        "--log-format",
        "json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.extend(settings.server_args.iter().cloned());
    let env = vec![
        ("ONBOARDING_CALLERS".to_owned(), callers),
        (
            "ONBOARDING_ENCRYPTION_KEYS".to_owned(),
            format!("drill:{}", random_key(32)),
        ),
    ];
    let fleet = Fleet::new(
        settings.server_binary.clone(),
        args,
        env,
        settings.replicas.max(1),
        &settings.work_dir,
    )?;
    let mut start_to_serving = Duration::ZERO;
    for index in 0..fleet.len() {
        start_to_serving = start_to_serving.max(fleet.start(index).await?);
    }
    let server_cpu_before = fleet.cpu_time_total().await;
    let driver_cpu_before = fleet::process_cpu_time("self");
    let result = drive(&settings, &fleet, &simulator, &database, &api_key).await;
    let driver_cpu = fleet::process_cpu_time("self")
        .zip(driver_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let server_cpu = fleet
        .cpu_time_total()
        .await
        .zip(server_cpu_before)
        .map(|(after, before)| after.saturating_sub(before))
        .filter(|_| settings.kills == 0);
    let mut resident = None;
    for index in 0..fleet.len() {
        resident = resident.max(fleet.resident_kib(index).await);
    }
    fleet.stop().await;
    let mut report = result?;
    report.start_to_serving = start_to_serving;
    report.server_resident_kib = resident;
    report.server_cpu = server_cpu;
    report.driver_cpu = driver_cpu;
    report.sqlite_file = database
        .postgres
        .is_none()
        .then(|| PathBuf::from(&database.url));
    report.database = database.describe.clone();
    if report.problems().is_empty()
        && let Some((admin_url, name)) = &database.postgres
    {
        drop_database(admin_url, name).await?;
    }
    simulator.shutdown().await;
    Ok(report)
}

/// What happened to the database while the tenants were driven.
#[derive(Default)]
struct OutageTimes {
    down_at: Option<Duration>,
    up_at: Option<Duration>,
    not_serving_at: Option<Duration>,
    serving_again_at: Option<Duration>,
}

async fn drive(
    settings: &DrillSettings,
    fleet: &Fleet,
    simulator: &RunningSimulator,
    database: &Database,
    api_key: &str,
) -> anyhow::Result<DrillReport> {
    let mut replicas = Vec::new();
    for index in 0..fleet.len() {
        replicas.push(Clients::new(
            fleet::channel(fleet.address(index).await),
            api_key,
        ));
    }
    let log = CallLog::default();
    let started = Instant::now();
    let driver = Driver::new(replicas, simulator, &log, started, settings.patience);
    let run_tag = format!("{:04x}", settings.seed & 0xffff);
    let finished = AtomicUsize::new(0);
    let done = CancellationToken::new();
    let mut restarts = Vec::new();
    let mut outage_times = OutageTimes::default();

    let drivers = settings.drivers_per_tenant.max(1);
    let tenants = futures::stream::iter(0..settings.tenants)
        .map(|index| {
            let driver = &driver;
            let finished = &finished;
            let run_tag = &run_tag;
            async move {
                let plan = TenantPlan::new(run_tag, index);
                let portal = Portal::default();
                // One journey going round the replicas, or several at once, each through its own
                // replica: callers racing each other on the same tenant.
                let journeys = (0..drivers).map(|n| {
                    let pinned = (drivers > 1).then_some(n);
                    driver.journey(&plan, &portal, pinned)
                });
                let outcome = futures::future::join_all(journeys)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map(|ids| ids.concat());
                finished.fetch_add(1, Ordering::Relaxed);
                (plan, outcome)
            }
        })
        .buffer_unordered(settings.concurrency.max(1))
        .collect::<Vec<_>>();
    let chaos = async {
        let result = chaos(
            settings,
            fleet,
            database,
            &finished,
            started,
            &done,
            &mut restarts,
            &mut outage_times,
        )
        .await;
        if let Err(error) = &result {
            tracing::error!(error = %error, "the drill's chaos failed");
        }
        result
    };
    let (outcomes, chaos) = tokio::join!(
        async {
            let outcomes = tenants.await;
            done.cancel();
            outcomes
        },
        chaos
    );
    chaos?;
    let wall = started.elapsed();

    // The audit, once everything settled.
    let audit_deadline = Instant::now() + Duration::from_secs(300);
    let audits = futures::stream::iter(outcomes.iter())
        .map(|(plan, outcome)| {
            let driver = &driver;
            async move {
                let name = plan.onboarding();
                let onboarding = driver.onboarding(audit_deadline, &name).await?;
                let events = driver.events(audit_deadline, &name).await?;
                let empty = Vec::new();
                let succeeded = outcome.as_ref().unwrap_or(&empty);
                Ok::<TenantAudit, String>(journey::audit(&onboarding, &events, succeeded))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    let state = simulator.state();
    let failures = log.failures.lock().expect("call log").clone();
    let mut report = DrillReport {
        tenants: settings.tenants,
        replicas: fleet.len(),
        drivers_per_tenant: drivers,
        wall,
        rpc_calls: log.calls.load(Ordering::Relaxed),
        rpc_retries: log.retries.load(Ordering::Relaxed),
        rpc_failures: journey::failures_by_kind(&failures),
        billecta_requests: state.request_counts.values().sum(),
        billecta_faulted: state.faulted_counts.values().sum(),
        sign_in: state.sign_in,
        sign_ins: state.users.iter().map(|user| user.sign_ins).sum(),
        creditor_creates: state
            .request_counts
            .get(billecta_client::endpoints::CREATE_CREDITOR.route)
            .copied()
            .unwrap_or_default(),
        creditor_creates_faulted: state
            .faulted_counts
            .get(billecta_client::endpoints::CREATE_CREDITOR.route)
            .copied()
            .unwrap_or_default(),
        creditors: state.creditors.len(),
        duplicate_creditors: state
            .creditors_per_org_no
            .values()
            .filter(|count| **count > 1)
            .count(),
        kills: settings.kills,
        restarts,
        ..DrillReport::default()
    };
    for ((plan, outcome), audit) in outcomes.iter().zip(&audits) {
        if let Err(why) = outcome {
            report.stuck.push(format!("{}: {why}", plan.tenant));
        }
        match audit {
            Ok(audit) => {
                report.ready += usize::from(audit.ready && outcome.is_ok());
                report.events += audit.events;
                report.event_gaps += audit.gaps;
                report.calls_without_event += audit.calls_without_event;
                report.completed_by_reconciler += audit.completed_by_reconciler;
                report.unexplained_stages.extend(
                    audit
                        .unexplained_stages
                        .iter()
                        .map(|stage| format!("{}: {stage}", plan.tenant)),
                );
            }
            Err(why) => report
                .stuck
                .push(format!("{}: audit failed: {why}", plan.tenant)),
        }
    }
    if let (Some(down_at), Some(up_at)) = (outage_times.down_at, outage_times.up_at) {
        let database_errors: Vec<_> = failures
            .iter()
            .filter(|failure| failure.reason == "DATABASE_UNAVAILABLE")
            .collect();
        let mut refusal_times: Vec<Duration> =
            database_errors.iter().map(|failure| failure.took).collect();
        refusal_times.sort();
        // A refusal counts where the caller saw it: when its answer came.
        let during = |failure: &&journey::FailedCall| {
            let answered = failure.at + failure.took;
            answered >= down_at && answered <= up_at + OUTAGE_GRACE
        };
        report.outage = Some(OutageReport {
            down_for: up_at.saturating_sub(down_at),
            not_serving_after: outage_times
                .not_serving_at
                .map(|at| at.saturating_sub(down_at)),
            serving_again_after: outage_times
                .serving_again_at
                .map(|at| at.saturating_sub(up_at)),
            database_errors_during: database_errors.iter().filter(|f| during(f)).count() as u64,
            database_errors_outside: database_errors.iter().filter(|f| !during(f)).count() as u64,
            median_refusal: refusal_times
                .get(refusal_times.len() / 2)
                .copied()
                .unwrap_or_default(),
            slowest_refusal: refusal_times.last().copied().unwrap_or_default(),
            last_error_after_return: database_errors
                .iter()
                .map(|failure| failure.at + failure.took)
                .max()
                .map(|at| at.saturating_sub(up_at)),
        });
    }
    Ok(report)
}

/// Kills replicas and takes the database away at their moments in the run, measured in tenants
/// finished so that they fall in the middle of the work whatever the machine's speed.
#[allow(clippy::too_many_arguments)]
async fn chaos(
    settings: &DrillSettings,
    fleet: &Fleet,
    database: &Database,
    finished: &AtomicUsize,
    started: Instant,
    done: &CancellationToken,
    restarts: &mut Vec<Duration>,
    outage: &mut OutageTimes,
) -> anyhow::Result<()> {
    let tenants = settings.tenants.max(1);
    let mut kill_points: Vec<usize> = (1..=settings.kills as usize)
        .map(|n| tenants * n / (settings.kills as usize + 1))
        .collect();
    kill_points.reverse();
    let mut outage_plan = settings.outage.clone().map(|plan| {
        let at = ((tenants as f64) * plan.after_share) as usize;
        (at, plan)
    });
    let mut next_victim = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = done.cancelled() => return Ok(()),
        }
        let progress = finished.load(Ordering::Relaxed);
        if kill_points.last().is_some_and(|at| progress >= *at) {
            kill_points.pop();
            let victim = next_victim % fleet.len();
            next_victim += 1;
            fleet.kill(victim).await?;
            let killed = Instant::now();
            tracing::info!(replica = victim, progress, "drill: kill -9");
            fleet.start(victim).await?;
            restarts.push(killed.elapsed());
        }
        if outage_plan.as_ref().is_some_and(|(at, _)| progress >= *at) {
            let (_, plan) = outage_plan.take().expect("checked");
            take_database_away(&plan, fleet, database, started, outage).await?;
        }
    }
}

/// Stops the database (or cuts the proxy), keeps it away for the plan's length while watching a
/// replica's health, brings it back and waits for the replica to report SERVING again.
async fn take_database_away(
    plan: &OutagePlan,
    fleet: &Fleet,
    database: &Database,
    started: Instant,
    times: &mut OutageTimes,
) -> anyhow::Result<()> {
    let channel = fleet::channel(fleet.address(0).await);
    tracing::info!("drill: database outage begins");
    times.down_at = Some(started.elapsed());
    match &plan.method {
        OutageMethod::Proxy => database
            .proxy
            .as_ref()
            .context("the proxy of a proxy outage")?
            .cut(),
        OutageMethod::Commands { stop, .. } => shell(stop).await?,
    }
    let back_at = Instant::now() + plan.length;
    while Instant::now() < back_at {
        if times.not_serving_at.is_none() && !fleet::serving(&channel).await {
            times.not_serving_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match &plan.method {
        OutageMethod::Proxy => database
            .proxy
            .as_ref()
            .context("the proxy of a proxy outage")?
            .restore(),
        OutageMethod::Commands { start, .. } => shell(start).await?,
    }
    times.up_at = Some(started.elapsed());
    tracing::info!("drill: database back");
    let give_up = Instant::now() + Duration::from_secs(60);
    while Instant::now() < give_up {
        if fleet::serving(&channel).await {
            times.serving_again_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn shell(command: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .await
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(status.success(), "{command:?} failed with {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rules_fail_the_share_asked_for() {
        for rate in [0.1, 0.25, 0.5] {
            let rules = fault_rules(rate, Duration::from_millis(20), 0.5);
            assert!(matches!(rules[0].fault, Fault::Latency { ms: 20 }));
            let passing: f64 = rules[1..]
                .iter()
                .map(|rule| 1.0 - rule.probability)
                .product();
            assert!(((1.0 - passing) - rate).abs() < 1e-6, "{rate}: {rules:?}");
        }
        assert!(fault_rules(0.0, Duration::ZERO, 0.5).is_empty());
    }
}
