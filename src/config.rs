//! Every setting of the service, each a command-line flag and an environment variable
//! (`billecta-onboarding --help` lists them). Validated once at start-up.

use crate::auth::Callers;
use crate::crypto::Keyring;
use crate::domain::Environment;
use crate::telemetry::{LogFormat, TraceExport};
use anyhow::Context;
use billecta_client::{BreakerPolicy, ClientSettings, RetryPolicy};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Onboards Payway tenants onto Billecta over gRPC and keeps their integration healthy.
#[derive(Debug, Clone, Parser)]
#[command(name = "billecta-onboarding", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gRPC server listens on. Port 0 picks a free port (the address is logged).
    #[arg(long, env = "ONBOARDING_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`, plain HTTP); off when unset. Keep it
    /// on a network only the monitoring system reaches: it names tenants' counts, never tenants.
    #[arg(long, env = "ONBOARDING_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The database: a SQLite file path (created and migrated on start), or a postgres:// URL.
    #[arg(
        long,
        env = "ONBOARDING_DATABASE",
        default_value = "billecta-onboarding.sqlite3"
    )]
    pub database: String,

    /// Most database connections for calls [default: 4 on SQLite, whose readers share one file
    /// and gain nothing from more; 16 on PostgreSQL]. SQLite keeps one writer besides.
    #[arg(long, env = "ONBOARDING_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,

    /// How long a call waits for a free database connection before failing with UNAVAILABLE.
    #[arg(
        long,
        env = "ONBOARDING_DATABASE_ACQUIRE_TIMEOUT_MS",
        default_value_t = 3000
    )]
    pub database_acquire_timeout_ms: u64,

    /// Onboardings whose stages, creditors and stored credentials are kept in memory between reads.
    /// Kept data is used only after the database confirms it is current, so replicas sharing a
    /// database never read stale data; 0 reads everything from the database every time.
    #[arg(long, env = "ONBOARDING_CACHED_ONBOARDINGS", default_value_t = 1024)]
    pub cached_onboardings: usize,

    /// How often the database is checked for the health service.
    #[arg(
        long,
        env = "ONBOARDING_HEALTH_CHECK_INTERVAL_MS",
        default_value_t = 2000
    )]
    pub health_check_interval_ms: u64,

    /// Sandbox mode, for trying the service locally with no network: starts the built-in Billecta
    /// simulator twice in-process (test on 127.0.0.1:50061 and production on 127.0.0.1:50062 unless
    /// --sandbox-test-listen and --sandbox-production-listen say otherwise, logged at start-up) and
    /// talks to those instead of Billecta. The URL settings below are then ignored. Without
    /// --encryption-keys, the key for stored secrets is generated on the first start and kept beside
    /// the SQLite database, in <database>.sandbox-key (readable by its owner only; on PostgreSQL a
    /// throwaway key), so a restarted sandbox reads what it stored before. The simulators keep
    /// their state in memory only: after a restart, the onboardings refer to Billecta accounts and
    /// creditors that no longer exist (ValidateOnboarding says so); --sandbox-reset starts afresh.
    #[arg(long, env = "ONBOARDING_SANDBOX", default_value_t = false)]
    pub sandbox: bool,

    /// With --sandbox: deletes the sandbox's SQLite database and its key file before starting, to
    /// start afresh (every onboarding is gone).
    #[arg(long, env = "ONBOARDING_SANDBOX_RESET", default_value_t = false)]
    pub sandbox_reset: bool,

    /// In sandbox mode: where the test-environment simulator listens (its admin API plays the people
    /// in Billecta's portal). Port 0 picks a free one.
    #[arg(
        long,
        env = "ONBOARDING_SANDBOX_TEST_LISTEN",
        default_value = "127.0.0.1:50061"
    )]
    pub sandbox_test_listen: SocketAddr,

    /// In sandbox mode: where the production simulator listens.
    #[arg(
        long,
        env = "ONBOARDING_SANDBOX_PRODUCTION_LISTEN",
        default_value = "127.0.0.1:50062"
    )]
    pub sandbox_production_listen: SocketAddr,

    /// In sandbox mode: what the simulators' sign-in (`apiauthenticate`) does with a user's live
    /// SecureToken: `returns-live-token`, or `issues-new-token` (and invalidates the old one). Which
    /// one Billecta does is not known; the service must work with both.
    #[arg(
        long,
        env = "ONBOARDING_SANDBOX_SIGN_IN",
        default_value = "returns-live-token"
    )]
    pub sandbox_sign_in: billecta_sim::SignIn,

    /// Base URL of Billecta's test environment API.
    #[arg(long, env = "ONBOARDING_BILLECTA_TEST_URL", default_value = billecta_client::TEST_BASE_URL)]
    pub billecta_test_url: String,

    /// Base URL of Billecta's production API.
    #[arg(long, env = "ONBOARDING_BILLECTA_PRODUCTION_URL", default_value = billecta_client::PRODUCTION_BASE_URL)]
    pub billecta_production_url: String,

    /// The longest one Billecta request may take, response included. A caller's shorter gRPC
    /// deadline shortens it further.
    #[arg(long, env = "ONBOARDING_BILLECTA_TIMEOUT_MS", default_value_t = 10_000)]
    pub billecta_timeout_ms: u64,

    /// The longest connecting to Billecta may take.
    #[arg(
        long,
        env = "ONBOARDING_BILLECTA_CONNECT_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub billecta_connect_timeout_ms: u64,

    /// Requests in flight to one Billecta environment at most; more wait for a slot within their
    /// deadline.
    #[arg(
        long,
        env = "ONBOARDING_BILLECTA_MAX_CONCURRENCY",
        default_value_t = 32
    )]
    pub billecta_max_concurrency: usize,

    /// Attempts per Billecta call, the first included, for failures worth retrying.
    #[arg(long, env = "ONBOARDING_BILLECTA_MAX_ATTEMPTS", default_value_t = 4)]
    pub billecta_max_attempts: u32,

    /// Backoff before the first retry; it doubles per retry, with jitter.
    #[arg(
        long,
        env = "ONBOARDING_BILLECTA_BACKOFF_BASE_MS",
        default_value_t = 200
    )]
    pub billecta_backoff_base_ms: u64,

    /// The longest backoff between two attempts.
    #[arg(
        long,
        env = "ONBOARDING_BILLECTA_BACKOFF_MAX_MS",
        default_value_t = 5_000
    )]
    pub billecta_backoff_max_ms: u64,

    /// Consecutive failed attempts (no connection, timeout, 5xx) after which calls to that
    /// environment are paused.
    #[arg(
        long,
        env = "ONBOARDING_BILLECTA_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub billecta_breaker_failures: u32,

    /// How long calls stay paused before one probe call is let through.
    #[arg(
        long,
        env = "ONBOARDING_BILLECTA_BREAKER_OPEN_MS",
        default_value_t = 30_000
    )]
    pub billecta_breaker_open_ms: u64,

    /// Keys that encrypt stored secrets (AES-256-GCM): a comma-separated list of `id:base64`, each key
    /// 32 random bytes (`openssl rand -base64 32`). The first, or --encryption-active-key, encrypts;
    /// every listed key decrypts, so keys rotate without downtime. Required outside --sandbox; the
    /// sandbox without keys keeps a key of its own beside its database (see --sandbox).
    #[arg(
        long,
        env = "ONBOARDING_ENCRYPTION_KEYS",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub encryption_keys: String,

    /// The id of the key that encrypts new secrets; the first listed key when empty.
    #[arg(long, env = "ONBOARDING_ENCRYPTION_ACTIVE_KEY", default_value = "")]
    pub encryption_active_key: String,

    /// How often the reconciler carries on with stages waiting on the system (a transient Billecta
    /// failure, an interrupted call); 0 turns it off.
    #[arg(
        long,
        env = "ONBOARDING_RECONCILE_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub reconcile_interval_ms: u64,

    /// How often the live setup of READY (and BROKEN) onboardings is re-checked in Billecta; 0 turns
    /// the scheduled validation off.
    #[arg(
        long,
        env = "ONBOARDING_REVALIDATE_INTERVAL_MS",
        default_value_t = 3_600_000
    )]
    pub revalidate_interval_ms: u64,

    /// How long one call may work on a stage with Billecta before another call may take the stage
    /// over (its holder is presumed crashed). Longer than a Billecta call with all its retries.
    #[arg(long, env = "ONBOARDING_STAGE_LEASE_MS", default_value_t = 120_000)]
    pub stage_lease_ms: u64,

    /// The callers allowed in, as a JSON array of {"name", "key_sha256", "permissions", "tenants"}
    /// (permissions: read, write, payment_configuration; tenants optional). Only hashes of the keys
    /// are configured; `billecta-onboarding new-api-key` makes a key and its entry. Required outside
    /// --sandbox (or --callers-file); the sandbox otherwise accepts the key "sandbox-development-key".
    #[arg(
        long,
        env = "ONBOARDING_CALLERS",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        conflicts_with = "callers_file"
    )]
    pub callers: String,

    /// A file with the callers, in the --callers format.
    #[arg(long, env = "ONBOARDING_CALLERS_FILE")]
    pub callers_file: Option<std::path::PathBuf>,

    /// Serve TLS with this certificate chain (PEM); plaintext when not set.
    #[arg(long, env = "ONBOARDING_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "ONBOARDING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Ask clients for a certificate signed by this CA (PEM): mutual TLS. A client whose
    /// certificate's SHA-256 is a caller's certificate_sha256 is that caller, without an API key.
    /// Clients without a certificate may still use an API key.
    #[arg(long, env = "ONBOARDING_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Serve reflection (what grpcurl list and describe use) without a credential.
    #[arg(long, env = "ONBOARDING_PUBLIC_REFLECTION", default_value_t = false)]
    pub public_reflection: bool,

    /// Log format.
    #[arg(long, env = "ONBOARDING_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (for example "info" or "info,sqlx=warn").
    #[arg(
        long,
        env = "ONBOARDING_LOG",
        default_value = "info,sqlx=warn,h2=warn,tower=warn"
    )]
    pub log: String,

    /// Exports traces (a span per RPC and per Billecta request) over OTLP/gRPC to this collector,
    /// such as http://otel-collector:4317. Off when empty.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", default_value = "")]
    pub otlp_endpoint: String,

    /// The service name exported traces carry.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "billecta-onboarding")]
    pub otlp_service_name: String,

    /// The share of traces exported that no caller's traceparent decided (a caller's sampling
    /// decision is always followed): 1.0 exports all, 0.1 one in ten.
    #[arg(long, env = "ONBOARDING_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,

    /// Largest request or response message in bytes.
    #[arg(long, env = "ONBOARDING_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most calls served at once across all connections; further calls are refused with
    /// RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "ONBOARDING_MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,

    /// Most concurrent HTTP/2 streams (calls) one connection may open.
    #[arg(long, env = "ONBOARDING_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Most concurrent calls served per connection.
    #[arg(
        long,
        env = "ONBOARDING_CONCURRENCY_PER_CONNECTION",
        default_value_t = 256
    )]
    pub concurrency_per_connection: usize,

    /// On SIGTERM or SIGINT: how long in-flight calls may take to finish before the server stops.
    #[arg(long, env = "ONBOARDING_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// How often a watch stream also polls the database for changes made by other replicas.
    #[arg(
        long,
        env = "ONBOARDING_WATCH_POLL_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub watch_poll_interval_ms: u64,

    /// WatchOnboarding streams open at once across the server; more are refused with
    /// RESOURCE_EXHAUSTED (an open stream holds no call slot, so it needs a limit of its own).
    #[arg(long, env = "ONBOARDING_MAX_WATCH_STREAMS", default_value_t = 1024)]
    pub max_watch_streams: usize,

    /// How long a mutating call's result is kept under its request_id, for retries to get it back.
    /// Older ones are deleted by the background worker; a retry after that is a new request.
    #[arg(
        long,
        env = "ONBOARDING_REQUEST_ID_RETENTION_MS",
        default_value_t = 86_400_000
    )]
    pub request_id_retention_ms: u64,
}

/// What the binary does; without a subcommand it serves.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Asks a running server's gRPC health service for its overall status; exits 0 only on SERVING.
    /// For container health checks.
    Probe {
        /// The server to ask.
        #[arg(
            long,
            env = "ONBOARDING_PROBE_ADDRESS",
            default_value = "http://127.0.0.1:50051"
        )]
        address: String,
        /// How long to wait for the answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// For an https:// address: the CA (PEM) that signed the server's certificate.
        #[arg(long, env = "ONBOARDING_PROBE_CA")]
        ca: Option<std::path::PathBuf>,
    },
    /// Re-encrypts every stored secret under the active encryption key, so that an old key can be
    /// removed from --encryption-keys. Safe while the service runs; uses --database and
    /// --encryption-keys like the service.
    Reencrypt,
    /// Makes a new random API key for a caller and prints it with the entry to add to
    /// --callers (which stores only the key's hash). The key is shown once; hand it to the caller.
    NewApiKey {
        /// The caller's name, as the audit trail will show it.
        #[arg(long)]
        name: String,
        /// Comma-separated: read, write, payment_configuration.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<String>,
        /// Comma-separated tenants the caller may touch; every tenant when left out.
        #[arg(long, value_delimiter = ',')]
        tenants: Option<Vec<String>>,
    },
}

impl Config {
    /// Where and how traces are exported, if they are.
    pub fn tracing_export(&self) -> Option<TraceExport> {
        let endpoint = self.otlp_endpoint.trim();
        (!endpoint.is_empty()).then(|| TraceExport {
            endpoint: endpoint.to_owned(),
            service_name: self.otlp_service_name.clone(),
            sample_ratio: self.trace_sample_ratio,
        })
    }

    /// Checks settings that clap cannot, so a bad configuration stops the start with a clear message.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.database.trim().is_empty(),
            "--database must not be empty"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.trace_sample_ratio),
            "--trace-sample-ratio must be between 0 and 1"
        );
        anyhow::ensure!(
            self.database_max_connections.is_none_or(|n| n >= 1),
            "--database-max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_message_bytes >= 4096,
            "--max-message-bytes must be at least 4096"
        );
        anyhow::ensure!(
            self.max_concurrent_calls >= 1,
            "--max-concurrent-calls must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_streams >= 1,
            "--max-concurrent-streams must be at least 1"
        );
        anyhow::ensure!(
            self.max_watch_streams >= 1,
            "--max-watch-streams must be at least 1"
        );
        anyhow::ensure!(
            self.concurrency_per_connection >= 1,
            "--concurrency-per-connection must be at least 1"
        );
        anyhow::ensure!(
            self.watch_poll_interval_ms >= 10,
            "--watch-poll-interval-ms must be at least 10"
        );
        anyhow::ensure!(
            self.health_check_interval_ms >= 10,
            "--health-check-interval-ms must be at least 10"
        );
        anyhow::ensure!(
            self.sandbox || !self.callers.trim().is_empty() || self.callers_file.is_some(),
            "--callers (ONBOARDING_CALLERS) or --callers-file is required: every call needs an API key; only --sandbox may run without them"
        );
        anyhow::ensure!(
            self.sandbox || !self.encryption_keys.trim().is_empty(),
            "--encryption-keys (ONBOARDING_ENCRYPTION_KEYS) is required: stored secrets are encrypted with it; only --sandbox may run without one"
        );
        anyhow::ensure!(
            self.sandbox || !self.sandbox_reset,
            "--sandbox-reset deletes the sandbox's database: it works with --sandbox only"
        );
        anyhow::ensure!(
            self.stage_lease_ms >= 10_000,
            "--stage-lease-ms must be at least 10000"
        );
        anyhow::ensure!(
            self.billecta_max_attempts >= 1,
            "--billecta-max-attempts must be at least 1"
        );
        anyhow::ensure!(
            self.billecta_max_concurrency >= 1,
            "--billecta-max-concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.billecta_timeout_ms >= 1 && self.billecta_connect_timeout_ms >= 1,
            "--billecta-timeout-ms and --billecta-connect-timeout-ms must be at least 1"
        );
        anyhow::ensure!(
            self.billecta_backoff_base_ms <= self.billecta_backoff_max_ms,
            "--billecta-backoff-base-ms must not exceed --billecta-backoff-max-ms"
        );
        anyhow::ensure!(
            self.billecta_breaker_failures >= 1,
            "--billecta-breaker-failures must be at least 1"
        );
        Ok(())
    }

    /// How the Billecta client of an environment behaves, pointed at `base_url`.
    pub fn billecta_settings(&self, base_url: &str) -> ClientSettings {
        ClientSettings {
            base_url: base_url.to_owned(),
            timeout: Duration::from_millis(self.billecta_timeout_ms),
            timeout_name: "the client's timeout --billecta-timeout-ms",
            connect_timeout: Duration::from_millis(self.billecta_connect_timeout_ms),
            retry: RetryPolicy {
                max_attempts: self.billecta_max_attempts,
                base_delay: Duration::from_millis(self.billecta_backoff_base_ms),
                max_delay: Duration::from_millis(self.billecta_backoff_max_ms),
                ..RetryPolicy::default()
            },
            breaker: BreakerPolicy {
                failure_threshold: self.billecta_breaker_failures,
                open_for: Duration::from_millis(self.billecta_breaker_open_ms),
            },
            max_concurrency: self.billecta_max_concurrency,
            // The application counts the requests in its metrics (`app`).
            observer: None,
        }
    }

    /// The configured base URL of an environment's API.
    pub fn billecta_url(&self, environment: Environment) -> &str {
        match environment {
            Environment::Test => &self.billecta_test_url,
            Environment::Production => &self.billecta_production_url,
        }
    }

    /// The keyring for stored secrets: the configured keys, or in sandbox mode without keys the
    /// sandbox's own ([`Config::sandbox_keyring`]), its key file written at once if it is new.
    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        let (keyring, new_key) = self.keyring_and_new_key()?;
        if let Some(new_key) = new_key {
            new_key.write()?;
        }
        Ok(keyring)
    }

    /// The keyring for stored secrets, and the sandbox's key file still to write when its key was
    /// made now: the caller writes it once the database exists, so that a start that fails before
    /// (a port taken, say) leaves neither behind.
    pub fn keyring_and_new_key(&self) -> anyhow::Result<(Keyring, Option<NewKeyFile>)> {
        if self.encryption_keys.trim().is_empty() && self.sandbox {
            return self.sandbox_keyring();
        }
        let active = Some(self.encryption_active_key.trim()).filter(|id| !id.is_empty());
        let keyring = Keyring::parse(&self.encryption_keys, active)
            .map_err(|error| anyhow::anyhow!("--encryption-keys: {error}"))?;
        Ok((keyring, None))
    }

    /// The sandbox's SQLite database file and its key file beside it, `<database>.sandbox-key`;
    /// `None` for a database that is no file (PostgreSQL, SQLite in memory).
    pub fn sandbox_files(&self) -> Option<(PathBuf, PathBuf)> {
        let database = self.database.trim();
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            return None;
        }
        let path = match database.strip_prefix("sqlite:") {
            Some(url) => {
                let (path, options) = url.split_once('?').unwrap_or((url, ""));
                if options.split('&').any(|option| option == "mode=memory") {
                    return None;
                }
                path.strip_prefix("//").unwrap_or(path)
            }
            None => database,
        };
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        let key = PathBuf::from(format!("{path}.sandbox-key"));
        Some((PathBuf::from(path), key))
    }

    /// `--sandbox-reset`: deletes the sandbox's database (with SQLite's files beside it) and its
    /// key file, so that the sandbox starts afresh.
    pub fn reset_sandbox(&self) -> anyhow::Result<()> {
        let Some((database, key)) = self.sandbox_files() else {
            anyhow::bail!(
                "--sandbox-reset deletes the sandbox's SQLite file; the database {:?} is not one",
                self.database
            );
        };
        let mut files = vec![key];
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = database.clone().into_os_string();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for file in &files {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    anyhow::bail!("--sandbox-reset: deleting {}: {error}", file.display())
                }
            }
        }
        tracing::warn!(
            database = %database.display(),
            "sandbox: --sandbox-reset deleted the database and its key file; starting afresh"
        );
        Ok(())
    }

    /// The sandbox's key for stored secrets: read from its key file beside the database, or made
    /// on the first start (the database not there yet), with the key file to write, so that a
    /// restarted sandbox reads what it stored before. A database without its key file (or a key
    /// file without its database) stops the start: the secrets could not be read, and a new key
    /// would hide that until the first call failed. On a database that is no file, a throwaway key.
    pub fn sandbox_keyring(&self) -> anyhow::Result<(Keyring, Option<NewKeyFile>)> {
        let Some((database, key)) = self.sandbox_files() else {
            tracing::warn!(
                "sandbox: no --encryption-keys given and the database is no SQLite file; secrets are encrypted with a throwaway key and cannot be read after a restart"
            );
            return Ok((Keyring::generate(), None));
        };
        let (database_there, key_there) = (database.exists(), key.exists());
        if database_there != key_there {
            let (present, missing) = if database_there {
                (
                    format!("database {}", database.display()),
                    format!("its key file {}", key.display()),
                )
            } else {
                (
                    format!("key file {}", key.display()),
                    format!("its database {}", database.display()),
                )
            };
            anyhow::bail!(
                "the sandbox's {present} exists but {missing} does not, so the secrets stored in the \
                 database cannot be read: put the missing file back, or start afresh with \
                 --sandbox-reset (deletes the database and its key)"
            );
        }
        let (spec, new_key) = if key_there {
            let spec = std::fs::read_to_string(&key)
                .with_context(|| format!("reading the sandbox's key file {}", key.display()))?;
            tracing::info!(
                key_file = %key.display(),
                "sandbox: stored secrets are encrypted with the key kept beside the database"
            );
            (spec, None)
        } else {
            let spec = new_sandbox_key()?;
            let new_key = NewKeyFile {
                path: key.clone(),
                spec: spec.clone(),
            };
            (spec, Some(new_key))
        };
        let keyring = Keyring::parse(spec.trim(), None).map_err(|error| {
            anyhow::anyhow!(
                "the sandbox's key file {} holds no usable key ({error}); start afresh with --sandbox-reset",
                key.display()
            )
        })?;
        Ok((keyring, new_key))
    }

    /// The callers allowed in: the configured ones, or in sandbox mode without any the development
    /// caller with [`crate::auth::SANDBOX_KEY`].
    pub fn callers(&self) -> anyhow::Result<Callers> {
        let text = match &self.callers_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("--callers-file {}: {error}", path.display()))?,
            None => self.callers.clone(),
        };
        if text.trim().is_empty() && self.sandbox && self.callers_file.is_none() {
            // A well-known key with every permission is offered on this machine only.
            anyhow::ensure!(
                self.listen.ip().is_loopback(),
                "--sandbox without --callers listens on loopback only (its development key is public); configure --callers to listen on {}",
                self.listen
            );
            tracing::warn!(
                key = crate::auth::SANDBOX_KEY,
                "sandbox: no callers configured; calls authenticate with \"authorization: Bearer {}\"",
                crate::auth::SANDBOX_KEY
            );
            return Ok(Callers::sandbox());
        }
        let callers =
            Callers::parse(&text).map_err(|error| anyhow::anyhow!("--callers: {error}"))?;
        if callers.has_certificate_callers() && self.tls_client_ca.is_none() {
            tracing::warn!(
                "callers with certificate_sha256 are configured, but without --tls-client-ca no client certificate is asked for: they cannot sign in"
            );
        }
        Ok(callers)
    }

    /// The server's TLS settings, read from the configured files; `None` for plaintext.
    pub fn tls(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path)
                .map_err(|error| anyhow::anyhow!("{what} {}: {error}", path.display()))
        };
        let identity = tonic::transport::Identity::from_pem(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
        );
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            tls = tls
                .client_ca_root(tonic::transport::Certificate::from_pem(read(
                    ca,
                    "--tls-client-ca",
                )?))
                .client_auth_optional(true);
        }
        Ok(Some(tls))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// A configuration for tests and embedding: defaults, a free port, the given database.
    pub fn for_database(database: impl Into<String>) -> Self {
        let mut config = Config::parse_from(["billecta-onboarding"]);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.sandbox_test_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.sandbox_production_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database = database.into();
        config
    }
}

/// A key the sandbox made on its first start, to keep in its key file beside the database.
pub struct NewKeyFile {
    path: PathBuf,
    spec: String,
}

impl NewKeyFile {
    /// Writes the key file, readable by its owner only; an existing file is never overwritten.
    pub fn write(self) -> anyhow::Result<()> {
        write_private(&self.path, &self.spec)
            .with_context(|| format!("writing the sandbox's key file {}", self.path.display()))?;
        tracing::info!(
            key_file = %self.path.display(),
            "sandbox: generated the key for stored secrets and kept it beside the database; delete both with --sandbox-reset"
        );
        Ok(())
    }
}

/// The id of the sandbox's own key.
const SANDBOX_KEY_ID: &str = "sandbox";

/// A new key for the sandbox, in the --encryption-keys format: `sandbox:<base64 of 32 bytes>`.
fn new_sandbox_key() -> anyhow::Result<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("no randomness for a key: {error}"))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("{SANDBOX_KEY_ID}:{encoded}\n"))
}

/// Writes a new file only its owner may read (mode 0600); an existing one is never overwritten.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_keeps_its_key_beside_a_sqlite_file_only() {
        let files = |database: &str| {
            let mut config = Config::for_database(database);
            config.sandbox = true;
            config
                .sandbox_files()
                .map(|(database, key)| (database.display().to_string(), key.display().to_string()))
        };
        let beside =
            |database: &str| Some((database.to_owned(), format!("{database}.sandbox-key")));
        assert_eq!(
            files("billecta-onboarding.sqlite3"),
            beside("billecta-onboarding.sqlite3")
        );
        assert_eq!(
            files("sqlite://data/sandbox.db?mode=rwc"),
            beside("data/sandbox.db")
        );
        assert_eq!(files("sqlite:sandbox.db"), beside("sandbox.db"));
        assert_eq!(files("sqlite::memory:"), None);
        assert_eq!(files("sqlite://shared.db?mode=memory&cache=shared"), None);
        assert_eq!(files("postgres://postgres@127.0.0.1/onboarding"), None);
    }

    #[test]
    fn the_sandbox_offers_its_public_key_on_loopback_only() {
        let mut config = Config::for_database("unused.sqlite3");
        config.sandbox = true;
        assert!(config.callers().is_ok());
        config.listen = "0.0.0.0:50051".parse().unwrap();
        let refused = config.callers().unwrap_err().to_string();
        assert!(refused.contains("loopback"), "{refused}");
        config.callers = format!(
            r#"[{{"name": "ops", "key_sha256": "{}", "permissions": ["read"]}}]"#,
            "a".repeat(64)
        );
        assert!(
            config.callers().is_ok(),
            "configured callers may listen anywhere"
        );
    }
}
