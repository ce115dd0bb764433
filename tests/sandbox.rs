//! A sandbox survives a restart: without --encryption-keys it keeps the key of its stored secrets in
//! a file beside its SQLite database, so that the next start reads what the last one stored; a
//! database without its key file (or the other way round) stops the start with a line that names
//! both and offers --sandbox-reset, which starts afresh.

mod common;

use billecta_onboarding::app::Application;
use billecta_onboarding::auth::SANDBOX_KEY;
use billecta_onboarding::config::Config;
use billecta_onboarding::domain::Environment;
use billecta_sim::{NewAccount, RunningSimulator};
use common::{
    ACCOUNT_EMAIL, Client, OnboardingOutcome, account_request, agreement_request, confirm_request,
    create_request, proto,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_billecta-onboarding");
const PASSWORD: &str = "Vår-2026-lösen";

/// A sandbox started in-process on `database`, without encryption keys.
struct Sandbox {
    client: Client,
    simulator: Arc<RunningSimulator>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sandbox {
    async fn start(database: &Path) -> Self {
        let mut config = Config::for_database(database.to_str().unwrap());
        config.sandbox = true;
        config.encryption_keys = String::new();
        config.reconcile_interval_ms = 0;
        let application = Application::build(config)
            .await
            .expect("the sandbox builds");
        let address = application.local_addr();
        let simulator = application
            .sandbox()
            .expect("sandbox mode")
            .simulator(Environment::Test)
            .clone();
        let shutdown = application.shutdown_token();
        let task = tokio::spawn(application.run());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .expect("connects to the sandbox");
        Sandbox {
            client: common::client(channel, SANDBOX_KEY),
            simulator,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the sandbox's task")
            .expect("a clean stop");
    }
}

/// The key file of a sandbox on `database`.
fn key_file(database: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sandbox-key", database.display()))
}

#[tokio::test]
async fn a_restarted_sandbox_reads_the_secrets_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("onboarding.sqlite3");

    // First start: an account confirmed, its password and token stored encrypted.
    let first = Sandbox::start(&database).await;
    let mut client = first.client.clone();
    let name = client
        .create_onboarding(create_request("gp", proto::Environment::Test))
        .await
        .onboarding()
        .name;
    client
        .record_agreement(agreement_request(&name))
        .await
        .unwrap();
    client
        .register_account(account_request(&name))
        .await
        .unwrap();
    let account = first
        .simulator
        .create_account(NewAccount {
            name: "Payway Billecta".into(),
            company_name: "Göteborgs-Posten AB".into(),
            email: ACCOUNT_EMAIL.into(),
            password: "initial-from-the-activation-email".into(),
        })
        .unwrap();
    first
        .simulator
        .activate_account(account.account_id, PASSWORD)
        .unwrap();
    client
        .confirm_account_activation(confirm_request(&name, PASSWORD))
        .await
        .expect("the account signs in");
    first.stop().await;

    let key = key_file(&database);
    let metadata = std::fs::metadata(&key).expect("the key file beside the database");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        metadata.permissions().mode() & 0o777,
        0o600,
        "readable by its owner only"
    );
    let kept = std::fs::read_to_string(&key).unwrap();

    // Second start on the same folder: the stored token decrypts. The new simulator does not know
    // the account (its state was in memory), which is what the check reports, not INTERNAL.
    let second = Sandbox::start(&database).await;
    let report = second
        .client
        .clone()
        .validate_onboarding(proto::ValidateOnboardingRequest { name: name.clone() })
        .await
        .expect("validates after a restart")
        .into_inner();
    let signs_in = report
        .checks
        .iter()
        .find(|check| check.check == "account.signs_in")
        .expect("the account's token is checked");
    assert_ne!(signs_in.reason, "CREDENTIAL_UNREADABLE", "{signs_in:?}");
    assert_eq!(
        signs_in.result,
        proto::CheckResult::Fail as i32,
        "the restarted simulator does not know the account: {signs_in:?}"
    );
    assert!(
        report
            .checks
            .iter()
            .all(|check| check.reason != "CREDENTIAL_UNREADABLE"),
        "{:?}",
        report.checks
    );
    second.stop().await;
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        kept,
        "the key is read, never replaced"
    );
}

/// Runs the service binary in sandbox mode on `database` with `extra` arguments; its stderr lines
/// are collected.
fn spawn_sandbox(database: &Path, extra: &[&str]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(BINARY)
        .args([
            "--sandbox",
            "--listen",
            "127.0.0.1:0",
            "--sandbox-test-listen",
            "127.0.0.1:0",
            "--sandbox-production-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--database")
        .arg(database)
        .args(extra)
        .env_remove("ONBOARDING_ENCRYPTION_KEYS")
        .env_remove("ONBOARDING_CALLERS")
        .env_remove("ONBOARDING_SANDBOX_RESET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

/// Starts the sandbox binary, waits until it serves, and stops it with SIGTERM.
fn serve_once(database: &Path, extra: &[&str]) -> Vec<String> {
    let (mut child, lines) = spawn_sandbox(database, extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("serving gRPC"))
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited with {status}: {:?}", lines.lock().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "never served: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {:?}", lines.lock().unwrap());
    // The reader thread sees the pipe close once the process has gone.
    std::thread::sleep(Duration::from_millis(100));
    lines.lock().unwrap().clone()
}

/// Runs the sandbox binary expecting it to refuse to start; returns its stderr.
fn refused(database: &Path) -> String {
    let output = Command::new(BINARY)
        .args(["--sandbox", "--listen", "127.0.0.1:0"])
        .args(["--sandbox-test-listen", "127.0.0.1:0"])
        .args(["--sandbox-production-listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(database)
        .env_remove("ONBOARDING_ENCRYPTION_KEYS")
        .env_remove("ONBOARDING_CALLERS")
        .env_remove("ONBOARDING_SANDBOX_RESET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    stderr
}

#[test]
fn a_sandbox_missing_its_key_or_its_database_refuses_to_start_and_reset_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("sandbox.sqlite3");
    let key = key_file(&database);

    let first = serve_once(&database, &[]);
    assert!(
        first
            .iter()
            .any(|line| line.contains("generated the key for stored secrets")),
        "the start-up log says where the key is: {first:?}"
    );
    let kept = std::fs::read_to_string(&key).expect("the key file beside the database");
    let again = serve_once(&database, &[]);
    assert!(
        again
            .iter()
            .any(|line| line.contains("encrypted with the key kept beside the database")),
        "{again:?}"
    );

    // The key file gone: one line that names both files and the way out.
    std::fs::rename(&key, dir.path().join("elsewhere")).unwrap();
    let stderr = refused(&database);
    let line = stderr
        .lines()
        .find(|line| line.contains("--sandbox-reset"))
        .unwrap_or_else(|| panic!("no line offers --sandbox-reset: {stderr}"));
    assert!(
        line.contains(&database.display().to_string()) && line.contains(&key.display().to_string()),
        "{line}"
    );
    assert!(!line.contains(kept.trim()), "key material is never echoed");

    // The database gone instead, its key there: refused as well.
    std::fs::rename(dir.path().join("elsewhere"), &key).unwrap();
    std::fs::rename(&database, dir.path().join("moved.sqlite3")).unwrap();
    let stderr = refused(&database);
    assert!(
        stderr.contains("--sandbox-reset") && stderr.contains(&key.display().to_string()),
        "{stderr}"
    );

    // --sandbox-reset deletes what is left and starts afresh with a new key.
    std::fs::rename(dir.path().join("moved.sqlite3"), &database).unwrap();
    std::fs::remove_file(&key).unwrap();
    let reset = serve_once(&database, &["--sandbox-reset"]);
    assert!(
        reset
            .iter()
            .any(|line| line.contains("--sandbox-reset deleted")),
        "{reset:?}"
    );
    let fresh = std::fs::read_to_string(&key).expect("a new key file");
    assert_ne!(fresh, kept, "a new key");
    serve_once(&database, &[]);
}

#[test]
fn help_names_the_sandbox_ports_its_key_file_and_what_a_restart_keeps() {
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "127.0.0.1:50061",
        "127.0.0.1:50062",
        "<database>.sandbox-key",
        "--sandbox-reset",
        "in memory only",
    ] {
        assert!(help.contains(expected), "{expected} missing from --help");
    }
    assert!(!help.contains("free loopback ports"), "{help}");
}

#[test]
fn a_sandbox_that_fails_to_start_leaves_no_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("sandbox.sqlite3");
    // Its port taken: the start fails before the database is made.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(BINARY)
        .args(["--sandbox", "--listen", &address])
        .args(["--sandbox-test-listen", "127.0.0.1:0"])
        .args(["--sandbox-production-listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(&database)
        .env_remove("ONBOARDING_ENCRYPTION_KEYS")
        .env_remove("ONBOARDING_CALLERS")
        .env_remove("ONBOARDING_SANDBOX_RESET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        !database.exists() && !key_file(&database).exists(),
        "nothing left to refuse the next start"
    );
    drop(taken);
    serve_once(&database, &[]);
    assert!(key_file(&database).exists());
}
