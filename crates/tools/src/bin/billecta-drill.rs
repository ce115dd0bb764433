//! `billecta-drill`: provisions many tenants from nothing to READY through the service binary, against
//! the simulator with injected faults, optionally killing replicas with `kill -9` and taking the
//! database away, then checks that nothing was lost or duplicated. Prints the figures and exits 1 if
//! any promise was broken. See RELIABILITY.md.

use billecta_tools::drill::{self, DrillDatabase, DrillSettings, OutageMethod, OutagePlan};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "billecta-drill", version, about)]
struct Args {
    /// Tenants to provision from nothing to READY (test environment, every stage).
    #[arg(long, default_value_t = 500)]
    tenants: usize,
    /// Tenants driven at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Service processes on one database (more than one needs --postgres).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Journeys run at once for each tenant, each through its own replica: callers racing each
    /// other on the same tenant.
    #[arg(long, default_value_t = 1)]
    drivers_per_tenant: usize,
    /// A PostgreSQL URL (any database on the server): the drill creates a database of its own there.
    /// Without it, a new SQLite file.
    #[arg(long)]
    postgres: Option<String>,
    /// Share of Billecta requests answered by an injected fault: 503, 502 (HTML), 429, hang, reset.
    #[arg(long, default_value_t = 0.25)]
    failure_rate: f64,
    /// Latency added to half of Billecta's answers, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Seeds the simulator's fault decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What the simulator's sign-in does with a user's live token: returns-live-token, or
    /// issues-new-token (invalidating the one before).
    #[arg(long, default_value = "returns-live-token")]
    sign_in: billecta_sim::SignIn,
    /// `kill -9` a replica this many times, spread over the run (each restarted at once).
    #[arg(long, default_value_t = 0)]
    kills: u32,
    /// Take the database away for this many milliseconds once a third of the tenants are READY.
    #[arg(long)]
    outage_ms: Option<u64>,
    /// Stop the database with this shell command (with --outage-start); without, a TCP proxy
    /// between the replicas and PostgreSQL drops every connection.
    #[arg(long, requires = "outage_start")]
    outage_stop: Option<String>,
    /// Start the database again with this shell command.
    #[arg(long, requires = "outage_stop")]
    outage_start: Option<String>,
    /// The service binary; by default the `billecta-onboarding` beside this one.
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Where replica logs (and the SQLite file) go; by default a new temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds one tenant may take before it counts as stuck.
    #[arg(long, default_value_t = 600)]
    patience_secs: u64,
    /// Extra arguments for every replica, as one string split on spaces
    /// (`--server-args "--billecta-max-attempts 2"`).
    #[arg(long, default_value = "")]
    server_args: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DRILL_LOG")
                .unwrap_or_else(|_| "warn,billecta_sim=error,billecta_tools::drill=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server_binary = match args.server_binary {
        Some(binary) => binary,
        None => drill::service_binary()?,
    };
    let work_dir = match args.work_dir {
        Some(dir) => dir,
        None => tempfile_dir()?,
    };
    let mut settings = DrillSettings::new(server_binary, work_dir.clone());
    settings.tenants = args.tenants;
    settings.concurrency = args.concurrency;
    settings.replicas = args.replicas;
    settings.drivers_per_tenant = args.drivers_per_tenant;
    settings.database = match args.postgres {
        Some(admin_url) => DrillDatabase::Postgres { admin_url },
        None => DrillDatabase::Sqlite,
    };
    settings.failure_rate = args.failure_rate;
    settings.latency = Duration::from_millis(args.latency_ms);
    settings.seed = args.seed;
    settings.sign_in = args.sign_in;
    settings.kills = args.kills;
    settings.patience = Duration::from_secs(args.patience_secs);
    settings.outage = args.outage_ms.map(|ms| OutagePlan {
        after_share: 1.0 / 3.0,
        length: Duration::from_millis(ms),
        method: match (args.outage_stop, args.outage_start) {
            (Some(stop), Some(start)) => OutageMethod::Commands { stop, start },
            _ => OutageMethod::Proxy,
        },
    });
    settings.server_args = args
        .server_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    eprintln!(
        "drill: {} tenants, {:.0} % of Billecta requests failing, {} kill(s); replica logs in {}",
        settings.tenants,
        settings.failure_rate * 100.0,
        settings.kills,
        work_dir.display()
    );
    let report = drill::run(settings).await?;
    print!("{report}");
    Ok(if report.problems().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A new directory under the system's temporary directory, kept after the run for its logs.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("billecta-drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
