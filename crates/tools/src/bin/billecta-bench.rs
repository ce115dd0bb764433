//! `billecta-bench`: prints the figures BENCHMARKS.md records — the read path next to a bare gRPC
//! handler, provisioning next to its ideal time, start-up and memory. Build with `--release`.

use billecta_onboarding::proto;
use billecta_onboarding::proto::onboarding_service_client::OnboardingServiceClient;
use billecta_onboarding::scratch;
use billecta_tools::bench::{self, BesideBare, LoadShape, ReadySetup};
use billecta_tools::drill::{self, DrillDatabase, DrillSettings};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "billecta-bench", version, about)]
struct Args {
    /// A PostgreSQL URL (any database on the server): the read path is also measured on a fresh
    /// database there.
    #[arg(long)]
    postgres: Option<String>,
    /// Concurrent streams of the read-path load.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls per second of the paced read-path loads (latency at a steady load below saturation).
    #[arg(long, default_value_t = 10_000.0)]
    paced_rate: f64,
    /// Seconds each read-path load is measured (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Tenants of the provisioning run.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Latency added to every Billecta call in the provisioning run, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// The service's --billecta-max-concurrency in the provisioning run.
    #[arg(long, default_value_t = 32)]
    billecta_concurrency: usize,
    /// Tenants driven at once in the provisioning run.
    #[arg(long, default_value_t = 128)]
    provision_concurrency: usize,
    /// Skip the read path.
    #[arg(long)]
    skip_read: bool,
    /// Skip provisioning (and the start-up and memory figures that follow it).
    #[arg(long)]
    skip_provision: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work_dir = std::env::temp_dir().join(format!("billecta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    // The in-process servers log (and make their spans) as the service does by default; the lines
    // go to a file, away from the figures.
    let log = std::fs::File::create(work_dir.join("bench.log"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::sync::Mutex::new(log))
        .with_ansi(false)
        .init();
    println!(
        "machine: {} cores; build: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        if cfg!(debug_assertions) {
            "debug (use --release for figures)"
        } else {
            "release"
        }
    );
    if !args.skip_read {
        read_path(&args, &work_dir).await?;
    }
    if !args.skip_provision {
        provisioning(&args, &work_dir).await?;
    }
    println!("\nlogs and databases: {}", work_dir.display());
    Ok(())
}

async fn read_path(args: &Args, work_dir: &std::path::Path) -> anyhow::Result<()> {
    let saturated = LoadShape {
        concurrency: args.concurrency,
        connections: args.connections,
        warm_up: Duration::from_secs(1),
        measure: Duration::from_secs(args.seconds),
        pace: None,
    };
    let paced = LoadShape {
        pace: Some(args.paced_rate),
        ..saturated
    };
    println!(
        "\n== read path: {} concurrent streams over {} connections, {} s each; answers received whole, not decoded",
        saturated.concurrency, saturated.connections, args.seconds
    );
    println!(
        "   at full load each call is loaded in turns with the bare handler (turns of {:.1} s, each after {:.1} s of warm-up), so both meet the machine as it is at the time",
        bench::TURN.as_secs_f64(),
        bench::TURN_WARM_UP.as_secs_f64()
    );
    // PostgreSQL's database is made only when its figures start: what PostgreSQL does for a new
    // database (its log, the background writes of the copied template) would fall on SQLite's.
    let mut backends = vec![("SQLite", None)];
    if let Some(admin_url) = &args.postgres {
        backends.push(("PostgreSQL", Some(admin_url)));
    }
    for (label, admin_url) in backends {
        let (database, cleanup) = match admin_url {
            None => (work_dir.join("read.sqlite3").display().to_string(), None),
            Some(admin_url) => {
                let name = format!("bench_{}", std::process::id());
                let url = scratch::create_database(admin_url, &name).await?;
                (url.to_string(), Some((admin_url, name)))
            }
        };
        let (bare_address, bare_stop) = bench::bare_server().await?;
        let bare_channels = bench::channels(bare_address, saturated.connections).await?;
        let bare_paced = bench::load(&bare_channels, paced, bench::bare_call).await;

        let setup = ReadySetup::start(&database, |_| {}).await?;
        let channels = bench::channels(setup.address, saturated.connections).await?;
        let bearer = bench::sandbox_bearer();
        let onboarding = {
            let (name, bearer) = (setup.onboarding.clone(), bearer.clone());
            move |channel| {
                let mut request =
                    tonic::Request::new(proto::GetOnboardingRequest { name: name.clone() });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                bench::undecoded(
                    channel,
                    "/payway.billecta.onboarding.v1.OnboardingService/GetOnboarding",
                    request,
                )
            }
        };
        let payments = {
            let (name, bearer) = (setup.creditor.clone(), bearer.clone());
            move |channel| {
                let mut request = tonic::Request::new(proto::GetPaymentConfigurationRequest {
                    name: name.clone(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                bench::undecoded(
                    channel,
                    "/payway.billecta.onboarding.v1.PaymentConfigurationService/GetPaymentConfiguration",
                    request,
                )
            }
        };
        println!("{label:<10} at full load");
        report(
            label,
            "GetOnboarding",
            bench::load_beside_bare(&channels, &bare_channels, saturated, onboarding.clone()).await,
        );
        report(
            label,
            "GetPaymentConfiguration",
            bench::load_beside_bare(&channels, &bare_channels, saturated, payments.clone()).await,
        );
        let name = setup.onboarding.clone();
        let decoding =
            bench::load_beside_bare(&channels, &bare_channels, saturated, move |channel| {
                let mut request =
                    tonic::Request::new(proto::GetOnboardingRequest { name: name.clone() });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                async move {
                    OnboardingServiceClient::new(channel)
                        .get_onboarding(request)
                        .await
                        .map(drop)
                }
            })
            .await;
        report(label, "GetOnboarding, decoded", decoding);
        println!(
            "{label:<10} (an answer of GetOnboarding is {} bytes, the bare handler's 2; the decoding client parses each answer on the same cores)",
            setup.onboarding_bytes
        );
        println!("{label:<10} at {:.0} calls/s", args.paced_rate);
        println!("{label:<10} bare no-op handler        {bare_paced}");
        println!(
            "{label:<10} GetOnboarding             {}",
            bench::load(&channels, paced, onboarding).await
        );
        println!(
            "{label:<10} GetPaymentConfiguration   {}",
            bench::load(&channels, paced, payments).await
        );
        setup.stop().await;
        bare_stop.cancel();
        if let Some((admin_url, name)) = cleanup {
            scratch::drop_database(admin_url, &name).await?;
        }
    }
    Ok(())
}

/// A call's figures at full load, its ratio to the bare handler's (the median over pairs of
/// turns, and their range), and the bare handler's (loaded in turns with it).
fn report(backend: &str, method: &str, measured: BesideBare) {
    let (lowest, highest) = measured
        .pair_ratios
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(low, high), &ratio| {
            (low.min(ratio), high.max(ratio))
        });
    println!(
        "{backend:<10} {method:<25} {}  ratio to bare {:.2} (turn pairs {lowest:.2}-{highest:.2})",
        measured.call,
        measured.ratio(),
    );
    println!("{backend:<10}   bare, in turns with it  {}", measured.bare);
}

async fn provisioning(args: &Args, work_dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\n== provisioning: {} tenants from nothing to READY (test), {} ms added to every Billecta call, Billecta concurrency {}",
        args.tenants, args.latency_ms, args.billecta_concurrency
    );
    let server_binary = drill::service_binary()?;
    let report = provision(args, work_dir, &server_binary, DrillDatabase::Sqlite).await?;
    if let Some(admin_url) = &args.postgres {
        let database = DrillDatabase::Postgres {
            admin_url: admin_url.clone(),
        };
        provision(args, work_dir, &server_binary, database).await?;
    }

    println!("\n== start-up to SERVING on the provisioned database");
    let sqlite = report
        .sqlite_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("missing.sqlite3"));
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(startup(&server_binary, &sqlite, work_dir).await?);
    }
    times.sort();
    println!(
        "median {:.0} ms, fastest {:.0} ms, slowest {:.0} ms (5 starts, {} tenants in the database)",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3,
        args.tenants
    );
    Ok(())
}

/// One provisioning run on `database`, with its figures printed.
async fn provision(
    args: &Args,
    work_dir: &std::path::Path,
    server_binary: &std::path::Path,
    database: DrillDatabase,
) -> anyhow::Result<drill::DrillReport> {
    let label = match database {
        DrillDatabase::Sqlite => "SQLite",
        DrillDatabase::Postgres { .. } => "PostgreSQL",
    };
    let mut settings = DrillSettings::new(server_binary.to_owned(), work_dir.to_owned());
    settings.tenants = args.tenants;
    settings.concurrency = args.provision_concurrency;
    settings.failure_rate = 0.0;
    settings.latency = Duration::from_millis(args.latency_ms);
    settings.latency_share = 1.0;
    settings.database = database;
    settings.server_args = vec![
        "--billecta-max-concurrency".into(),
        args.billecta_concurrency.to_string(),
    ];
    let report = drill::run(settings).await?;
    anyhow::ensure!(
        report.problems().is_empty(),
        "the provisioning run broke a promise:\n{report}"
    );
    let ideal = Duration::from_secs_f64(
        report.billecta_requests as f64 * args.latency_ms as f64
            / 1000.0
            / args.billecta_concurrency as f64,
    );
    println!(
        "{label:<10} wall time {:.2} s for {} Billecta calls; ideal at concurrency {}: {:.2} s; ratio {:.2}",
        report.wall.as_secs_f64(),
        report.billecta_requests,
        args.billecta_concurrency,
        ideal.as_secs_f64(),
        report.wall.as_secs_f64() / ideal.as_secs_f64().max(f64::EPSILON)
    );
    if let (Some(server), Some(driver)) = (report.server_cpu, report.driver_cpu) {
        let machine = report.wall.as_secs_f64()
            * std::thread::available_parallelism().map_or(1, usize::from) as f64;
        println!(
            "{label:<10} CPU: service {:.1} s ({:.0} % of the machine; {:.0} µs per Billecta call), callers and simulator {:.1} s ({:.0} %)",
            server.as_secs_f64(),
            100.0 * server.as_secs_f64() / machine,
            server.as_secs_f64() * 1e6 / report.billecta_requests.max(1) as f64,
            driver.as_secs_f64(),
            100.0 * driver.as_secs_f64() / machine,
        );
    }
    if let Some(kib) = report.server_resident_kib {
        println!(
            "{label:<10} server resident memory after the run: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    Ok(report)
}

/// Starts the service binary on `database` and measures the time to SERVING, then stops it.
async fn startup(
    binary: &std::path::Path,
    database: &std::path::Path,
    work_dir: &std::path::Path,
) -> anyhow::Result<Duration> {
    let (_, caller) = billecta_onboarding::auth::new_key(
        "bench",
        [billecta_onboarding::auth::Permission::Read].into(),
        None,
    )?;
    let callers = serde_json::to_string(&[caller])?;
    let fleet = drill::fleet::Fleet::new(
        binary.to_owned(),
        vec![
            "--database".into(),
            database.display().to_string(),
            "--log".into(),
            "warn".into(),
            "--reconcile-interval-ms".into(),
            "0".into(),
        ],
        vec![
            ("ONBOARDING_CALLERS".into(), callers),
            (
                "ONBOARDING_ENCRYPTION_KEYS".into(),
                format!("bench:{}", drill::random_key(32)),
            ),
        ],
        1,
        work_dir,
    )?;
    let took = fleet.start(0).await?;
    fleet.stop().await;
    Ok(took)
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
