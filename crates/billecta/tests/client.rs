//! The Billecta client against the simulator over real HTTP: the provisioning calls end to end, and
//! every injected fault — retried when transient and safe, not retried otherwise, the breaker opening
//! and recovering, deadlines kept, Billecta's text surfaced, credentials never.

use billecta_client::model::{
    Creditor, CreditorBankInfo, OutgoingBankgiro, PaymentMethod, PaymentMethodPriority,
    PaymentMethodType, User, UserRight,
};
use billecta_client::{
    BillectaClient, BillectaError, BreakerPolicy, BreakerState, ClientSettings, Deadline,
    Environment, ErrorKind, Failure, RetryPolicy, Secret,
};
use billecta_sim::{
    self as simulator, Fault, FaultBody, FaultRule, NewUser, RunningSimulator, SimulatorConfig,
};
use std::time::{Duration, Instant};
use uuid::Uuid;

const EMAIL: &str = "payway@tidningen.se";
const PASSWORD: &str = "Sommar-2026-lösen";
const GET_CREDITOR: &str = "GET /v1/creditors/creditor/{id}";
const CREATE_CREDITOR: &str = "POST /v1/creditors/creditor";

/// Settings that keep the tests fast: short backoffs, a breaker that stays out of the way.
fn fast_settings(base_url: String) -> ClientSettings {
    ClientSettings {
        base_url,
        timeout: Duration::from_secs(3),
        timeout_name: "the client's timeout",
        connect_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
        },
        breaker: BreakerPolicy {
            failure_threshold: 100,
            open_for: Duration::from_secs(30),
        },
        max_concurrency: 32,
        observer: None,
    }
}

struct Fixture {
    simulator: RunningSimulator,
    client: BillectaClient,
    account_id: Uuid,
    user_public_id: Uuid,
    token: Secret,
}

/// The next `times` requests to `route` are answered with `fault`.
fn fail_next(simulator: &RunningSimulator, route: &str, fault: Fault, times: u32) {
    simulator
        .set_faults(None, vec![FaultRule::new(fault).on(route).times(times)])
        .expect("the simulator takes the fault");
}

async fn fixture(environment: Environment) -> Fixture {
    fixture_with(environment, |_| {}).await
}

/// A simulator with one activated account, a client pointed at it, and the account user's token.
async fn fixture_with(
    environment: Environment,
    adjust: impl FnOnce(&mut ClientSettings),
) -> Fixture {
    let simulated = match environment {
        Environment::Test => simulator::Environment::Test,
        Environment::Production => simulator::Environment::Production,
    };
    let simulator = simulator::start(SimulatorConfig::new(simulated))
        .await
        .expect("simulator starts");
    let account = simulator
        .create_activated_account(EMAIL, PASSWORD)
        .expect("account");
    let mut settings = fast_settings(simulator.base_url());
    adjust(&mut settings);
    let client = BillectaClient::new(environment, settings).unwrap();
    let token = client
        .authenticate(EMAIL, &Secret::new(PASSWORD), Deadline::none())
        .await
        .expect("the activated account authenticates")
        .value;
    Fixture {
        simulator,
        client,
        account_id: account.account_id,
        user_public_id: account.user_public_id,
        token,
    }
}

impl Fixture {
    /// Creates the creditor `new_creditor(org_no)` with the account user's token; returns its id.
    async fn create_creditor(&self, org_no: &str) -> String {
        self.client
            .create_creditor(&self.token, &new_creditor(org_no), Deadline::none())
            .await
            .expect("Billecta creates the creditor")
    }

    /// A new token issued with the account user's: for the user `user_public_id`, or for the
    /// account user itself when `None`.
    async fn issue_token(&self, user_public_id: Option<&str>) -> Secret {
        self.client
            .issue_token(&self.token, user_public_id, Deadline::none())
            .await
            .expect("Billecta issues a token")
            .value
    }

    /// Asserts that Billecta refuses `token` for reading `creditor_id`: a credentials error, not
    /// retried, and showing none of `secrets`.
    async fn assert_token_refused(&self, token: &Secret, creditor_id: &str, secrets: &[&str]) {
        let refused = self
            .client
            .get_creditor(token, creditor_id, Deadline::none())
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::BadCredentials);
        assert_eq!(refused.attempts, 1, "credentials errors are not retried");
        assert_no_secret(&refused, secrets);
    }
}

fn new_creditor(org_no: &str) -> Creditor {
    Creditor {
        org_no: Some(org_no.into()),
        name: Some("Tidningen i Norr AB".into()),
        country_code: Some("SE".into()),
        is_enabled: Some(true),
        use_cent_rounding: Some(false),
        uses_client_fund_for_invoicing: Some(false),
        ..Creditor::default()
    }
}

/// Every form a secret of the fixture could take in an error.
fn assert_no_secret(error: &BillectaError, secrets: &[&str]) {
    use base64::Engine as _;
    let shown = format!("{error} {error:?}");
    for secret in secrets {
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(
            !shown.contains(secret) && !shown.contains(&encoded),
            "an error shows a secret: {shown}"
        );
    }
}

fn fault(route: &str, fault: Fault) -> FaultRule {
    FaultRule::new(fault).on(route)
}

#[tokio::test]
async fn provisions_a_creditor_end_to_end() {
    let f = fixture(Environment::Test).await;
    let client = &f.client;
    let none = Deadline::none();

    // The token in hand is the account's current one.
    let current = client.current_token(&f.token, none).await.unwrap();
    assert_eq!(current.value, f.token);
    assert!(
        current
            .expires
            .is_some_and(|expires| expires > time::OffsetDateTime::now_utc())
    );

    // Look before creating, then create.
    let found = client
        .find_creditors_by_org_no(&f.token, "556888-5645", none)
        .await
        .unwrap();
    assert!(found.is_empty());
    let id = f.create_creditor("556888-5645").await;
    let found = client
        .find_creditors_by_org_no(&f.token, "165568885645", none)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "found by the twelve-digit form too");
    assert_eq!(found[0].creditor_public_id.as_deref(), Some(id.as_str()));

    // Company and invoice settings: read, change, write back whole.
    let mut creditor = client.get_creditor(&f.token, &id, none).await.unwrap();
    creditor.address = Some("Storgatan 1".into());
    creditor.zip_code = Some("903 26".into());
    creditor.city = Some("Umeå".into());
    creditor.next_invoice_number = Some("1023".into());
    creditor.creditor_bank_info = Some(CreditorBankInfo {
        uses_client_fund: Some(false),
        payment_method: Some(PaymentMethodType::BankGiro),
        payment_methods: Some(vec![PaymentMethod {
            priority: Some(PaymentMethodPriority::Primary),
            payment_method: Some(PaymentMethodType::BankGiro),
            bankgiro_no: Some("5050-1055".into()),
            ..PaymentMethod::default()
        }]),
        creditor_outgoing_bankgiroes: Some(vec![OutgoingBankgiro {
            bankgiro_no: Some("5402-9681".into()),
            is_active: Some(true),
            // Billecta's staff decide this; the simulator ignores it, as Billecta does.
            bankgiro_approved: Some(true),
            ..OutgoingBankgiro::default()
        }]),
        ..CreditorBankInfo::default()
    });
    client
        .update_creditor(&f.token, &creditor, none)
        .await
        .unwrap();
    let stored = client.get_creditor(&f.token, &id, none).await.unwrap();
    assert_eq!(stored.city.as_deref(), Some("Umeå"));
    assert_eq!(stored.next_invoice_number.as_deref(), Some("1023"));
    let bank = stored.creditor_bank_info.as_ref().unwrap();
    assert_eq!(
        bank.payment_methods.as_ref().unwrap()[0]
            .bankgiro_no
            .as_deref(),
        Some("5050-1055")
    );
    let outgoing = &bank.creditor_outgoing_bankgiroes.as_ref().unwrap()[0];
    assert_eq!(outgoing.bankgiro_approved, Some(false));

    // Billecta's customer service approves the bankgiro; the client sees it.
    f.simulator
        .approve_outgoing_bankgiro(id.parse().unwrap(), "5402-9681")
        .unwrap();
    let approved = client.get_creditor(&f.token, &id, none).await.unwrap();
    let outgoing = &approved
        .creditor_bank_info
        .unwrap()
        .creditor_outgoing_bankgiroes
        .unwrap()[0];
    assert_eq!(outgoing.bankgiro_approved, Some(true));

    // The one user of a test account is the integration user.
    let users = client.list_users(&f.token, none).await.unwrap();
    assert_eq!(users.len(), 1);
    let me = client
        .get_user(&f.token, &f.user_public_id.to_string(), none)
        .await
        .unwrap();
    assert_eq!(me.username.as_deref(), Some(EMAIL));
    assert!(me.can_read(&id));
    assert_eq!(me.password, None, "Billecta never returns a password");

    let state = f.simulator.state();
    assert_eq!(state.creditors.len(), 1, "nothing was created twice");
}

#[tokio::test]
async fn a_test_account_refuses_a_second_user_with_billectas_message() {
    let f = fixture(Environment::Test).await;
    let user = User {
        username: Some("api@tidningen.se".into()),
        is_api_user: Some(true),
        ..User::default()
    };
    let error = f
        .client
        .create_user(&f.token, &user, Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert_eq!(error.status(), Some(400));
    assert!(!error.message.is_empty(), "Billecta's Message is surfaced");
    assert_eq!(
        f.simulator.request_count("POST /v1/users/user"),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn production_api_users_get_their_own_token_which_dies_with_the_user() {
    let f = fixture(Environment::Production).await;
    let none = Deadline::none();
    let creditor = f.create_creditor("556888-5645").await;
    let api_user = User {
        username: Some("api-norr@tidningen.se".into()),
        email: Some("api-norr@tidningen.se".into()),
        full_name: Some("Payway API Norr".into()),
        // Billecta reads a missing boolean as false: a user created without it is disabled.
        is_enabled: Some(true),
        is_api_user: Some(true),
        rights: Some(vec![UserRight {
            creditor_public_id: Some(creditor.clone()),
            can_read_creditor: Some(true),
            ..UserRight::default()
        }]),
        ..User::default()
    };
    let api_user_id = f
        .client
        .create_user(&f.token, &api_user, none)
        .await
        .unwrap();

    let first = f.issue_token(Some(&api_user_id)).await;
    assert_ne!(first, f.token, "the API user has a token of its own");
    f.client
        .get_creditor(&first, &creditor, none)
        .await
        .unwrap();

    // A new token invalidates the old one: one active token per user.
    let second = f.issue_token(Some(&api_user_id)).await;
    f.assert_token_refused(&first, &creditor, &[first.expose(), second.expose()])
        .await;
    f.client
        .get_creditor(&second, &creditor, none)
        .await
        .unwrap();

    // Someone deletes the API user in the portal: its token stops working at once.
    f.simulator
        .delete_user(api_user_id.parse().unwrap())
        .unwrap();
    f.assert_token_refused(&second, &creditor, &[second.expose()])
        .await;

    // The account's own token is unaffected, and revoking it ends it.
    f.client.revoke_token(&f.token, none).await.unwrap();
    let revoked = f.client.list_users(&f.token, none).await.unwrap_err();
    assert_eq!(revoked.status(), Some(401));
}

#[tokio::test]
async fn wrong_passwords_and_missing_things_fail_once_with_their_class() {
    let f = fixture(Environment::Test).await;
    let none = Deadline::none();
    let wrong = Secret::new("not-the-password");
    let refused = f
        .client
        .authenticate(EMAIL, &wrong, none)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::BadCredentials);
    assert_eq!(refused.attempts, 1);
    assert_no_secret(&refused, &["not-the-password", PASSWORD]);

    let missing = f
        .client
        .get_creditor(&f.token, &Uuid::new_v4().to_string(), none)
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(f.simulator.request_count(GET_CREDITOR), 1);

    let nameless = Creditor {
        name: None,
        ..new_creditor("556888-5645")
    };
    let rejected = f
        .client
        .create_creditor(&f.token, &nameless, none)
        .await
        .unwrap_err();
    assert_eq!(rejected.kind(), ErrorKind::InvalidInput);
    assert!(rejected.message.contains("Name"), "{rejected}");
    assert!(!rejected.outcome_unknown);
    assert!(f.simulator.state().creditors.is_empty());
    assert_no_secret(&rejected, &[f.token.expose()]);
}

#[tokio::test]
async fn transient_failures_are_retried_until_billecta_answers() {
    let f = fixture(Environment::Test).await;
    let none = Deadline::none();
    let id = f.create_creditor("556888-5645").await;

    let cases = [
        (
            "503 with Billecta's JSON",
            Fault::Status {
                status: 503,
                body: FaultBody::Json,
            },
            2,
        ),
        (
            "502 with an HTML page",
            Fault::Status {
                status: 502,
                body: FaultBody::Html,
            },
            3,
        ),
        ("connection reset", Fault::Reset, 2),
    ];
    for (what, injected, times) in cases {
        let before = f.simulator.request_count(GET_CREDITOR);
        fail_next(&f.simulator, GET_CREDITOR, injected, times);
        let creditor = f.client.get_creditor(&f.token, &id, none).await;
        assert!(creditor.is_ok(), "{what}: {creditor:?}");
        assert_eq!(
            f.simulator.request_count(GET_CREDITOR) - before,
            u64::from(times) + 1,
            "{what}: one retry per failure"
        );
    }

    // 429: the client waits for Retry-After before trying again.
    let before = f.simulator.request_count(GET_CREDITOR);
    fail_next(
        &f.simulator,
        GET_CREDITOR,
        Fault::RateLimited {
            retry_after_seconds: 1,
        },
        1,
    );
    let started = Instant::now();
    f.client.get_creditor(&f.token, &id, none).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    assert_eq!(f.simulator.request_count(GET_CREDITOR) - before, 2);
}

#[tokio::test]
async fn persistent_failures_give_up_after_the_last_attempt_with_billectas_text() {
    let f = fixture(Environment::Test).await;
    let html = Fault::Status {
        status: 503,
        body: FaultBody::Html,
    };
    f.simulator
        .set_faults(None, vec![FaultRule::new(html).on("GET /v1/users/users")])
        .unwrap();
    let error = f
        .client
        .list_users(&f.token, Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient);
    assert_eq!(error.status(), Some(503));
    assert_eq!(error.attempts, 4);
    assert_eq!(f.simulator.request_count("GET /v1/users/users"), 4);
    assert!(
        !error.message.contains('<'),
        "HTML is reduced to text: {}",
        error.message
    );
    assert!(!error.message.is_empty());
    assert_no_secret(&error, &[f.token.expose(), PASSWORD]);
}

#[tokio::test]
async fn a_create_is_not_repeated_once_it_may_have_happened() {
    let f = fixture(Environment::Test).await;
    let none = Deadline::none();

    // The answer is lost after the request went out: no retry, and the caller is told to look.
    for injected in [
        Fault::Status {
            status: 500,
            body: FaultBody::Json,
        },
        Fault::Reset,
    ] {
        let before = f.simulator.request_count(CREATE_CREDITOR);
        fail_next(&f.simulator, CREATE_CREDITOR, injected.clone(), 1);
        let error = f
            .client
            .create_creditor(&f.token, &new_creditor("556888-5645"), none)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Transient, "{injected:?}");
        assert!(error.outcome_unknown, "{injected:?}: {error}");
        assert_eq!(
            f.simulator.request_count(CREATE_CREDITOR) - before,
            1,
            "{injected:?}"
        );
    }

    // Rate limited: Billecta refused it unprocessed, so it is safe to send again.
    let before = f.simulator.request_count(CREATE_CREDITOR);
    fail_next(
        &f.simulator,
        CREATE_CREDITOR,
        Fault::RateLimited {
            retry_after_seconds: 0,
        },
        1,
    );
    f.create_creditor("556888-5645").await;
    assert_eq!(f.simulator.request_count(CREATE_CREDITOR) - before, 2);
    assert_eq!(
        f.simulator.state().creditors.len(),
        1,
        "exactly one creditor"
    );
}

#[tokio::test]
async fn an_unreachable_billecta_is_retried_and_reported_without_a_status() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = BillectaClient::new(
        Environment::Test,
        fast_settings(format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let password = Secret::new(PASSWORD);
    let error = client
        .authenticate(EMAIL, &password, Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(error.failure, Failure::Connect);
    assert_eq!(error.kind(), ErrorKind::Transient);
    assert_eq!(error.attempts, 4);
    assert!(!error.outcome_unknown);
    assert_no_secret(&error, &[PASSWORD]);

    // A create that never connected is safe to repeat, and says so.
    let token = Secret::new("dG9rZW4=");
    let error = client
        .create_creditor(&token, &new_creditor("556888-5645"), Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(error.attempts, 4);
    assert!(!error.outcome_unknown);
}

#[tokio::test]
async fn slow_and_hanging_requests_end_at_the_timeout_or_the_callers_deadline() {
    let f = fixture_with(Environment::Test, |settings| {
        settings.timeout = Duration::from_millis(200);
        settings.retry.max_attempts = 2;
    })
    .await;
    let id = f.create_creditor("556888-5645").await;

    // Slower than the per-attempt timeout: each attempt is cut off, then the call gives up.
    f.simulator
        .set_faults(
            None,
            vec![fault(GET_CREDITOR, Fault::Latency { ms: 1_000 })],
        )
        .unwrap();
    let started = Instant::now();
    let error = f
        .client
        .get_creditor(&f.token, &id, Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(error.failure, Failure::Timeout);
    assert_eq!(error.attempts, 2);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A hanging Billecta and a caller with 300 ms left: the call ends by the deadline.
    f.simulator
        .set_faults(None, vec![fault(GET_CREDITOR, Fault::Hang)])
        .unwrap();
    let client =
        BillectaClient::new(Environment::Test, fast_settings(f.simulator.base_url())).unwrap();
    let started = Instant::now();
    let error = client
        .get_creditor(&f.token, &id, Deadline::after(Duration::from_millis(300)))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_eq!(error.failure, Failure::DeadlineExceeded);
    assert_eq!(
        client.breaker_state(),
        BreakerState::Closed,
        "a caller running out of time says nothing about Billecta"
    );

    // A Retry-After longer than the caller will wait is handed back instead of slept through.
    f.simulator
        .set_faults(
            None,
            vec![fault(
                GET_CREDITOR,
                Fault::RateLimited {
                    retry_after_seconds: 3,
                },
            )],
        )
        .unwrap();
    let started = Instant::now();
    let error = client
        .get_creditor(&f.token, &id, Deadline::after(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(error.status(), Some(429));
    assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn the_breaker_stops_calls_to_a_failing_billecta_and_lets_them_through_once_it_recovers() {
    let f = fixture_with(Environment::Test, |settings| {
        settings.retry.max_attempts = 1;
        settings.breaker = BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_secs(1),
        };
    })
    .await;
    let none = Deadline::none();
    let down = Fault::Status {
        status: 503,
        body: FaultBody::Json,
    };
    f.simulator
        .set_faults(
            None,
            vec![FaultRule::new(down.clone()).on("GET /v1/users/users")],
        )
        .unwrap();
    for _ in 0..3 {
        let error = f.client.list_users(&f.token, none).await.unwrap_err();
        assert_eq!(error.status(), Some(503));
    }
    assert_eq!(f.client.breaker_state(), BreakerState::Open);

    // Open: calls fail at once and never reach Billecta.
    let started = Instant::now();
    let paused = f.client.list_users(&f.token, none).await.unwrap_err();
    assert_eq!(paused.failure, Failure::CircuitOpen);
    assert_eq!(paused.kind(), ErrorKind::Transient);
    assert!(
        paused
            .retry_after
            .is_some_and(|wait| wait <= Duration::from_secs(1))
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(f.simulator.request_count("GET /v1/users/users"), 3);

    // Still down when the probe goes through: open again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(f.client.breaker_state(), BreakerState::HalfOpen);
    f.client.list_users(&f.token, none).await.unwrap_err();
    assert_eq!(f.client.breaker_state(), BreakerState::Open);
    assert_eq!(f.simulator.request_count("GET /v1/users/users"), 4);

    // Billecta recovers: the next probe succeeds and the breaker closes.
    f.simulator.clear_faults();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.client.list_users(&f.token, none).await.unwrap();
    assert_eq!(f.client.breaker_state(), BreakerState::Closed);
    f.client.list_users(&f.token, none).await.unwrap();
}

#[tokio::test]
async fn one_environment_failing_does_not_pause_the_other() {
    let test = fixture_with(Environment::Test, |settings| {
        settings.retry.max_attempts = 1;
        settings.breaker.failure_threshold = 1;
    })
    .await;
    let production = fixture(Environment::Production).await;
    test.simulator
        .set_faults(None, vec![FaultRule::new(Fault::Reset)])
        .unwrap();
    test.client
        .list_users(&test.token, Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(test.client.breaker_state(), BreakerState::Open);
    assert_eq!(production.client.breaker_state(), BreakerState::Closed);
    production
        .client
        .list_users(&production.token, Deadline::none())
        .await
        .unwrap();
}

#[tokio::test]
async fn seeded_faults_repeat_the_same_outcomes() {
    let outcomes = |seed: u64| async move {
        let f = fixture(Environment::Test).await;
        let rule = FaultRule::new(Fault::Status {
            status: 503,
            body: FaultBody::Json,
        })
        .on("GET /v1/users/users")
        .with_probability(0.5);
        f.simulator.set_faults(Some(seed), vec![rule]).unwrap();
        let client = BillectaClient::new(
            Environment::Test,
            ClientSettings {
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                ..fast_settings(f.simulator.base_url())
            },
        )
        .unwrap();
        let mut seen = Vec::new();
        for _ in 0..16 {
            seen.push(client.list_users(&f.token, Deadline::none()).await.is_ok());
        }
        seen
    };
    let first = outcomes(7).await;
    assert_eq!(first, outcomes(7).await);
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
}

#[tokio::test]
async fn an_account_user_with_a_new_token_loses_the_old_one() {
    let f = fixture(Environment::Test).await;
    let none = Deadline::none();
    let renewed = f.issue_token(None).await;
    assert_ne!(renewed, f.token);
    let old = f.client.list_users(&f.token, none).await.unwrap_err();
    assert_eq!(old.kind(), ErrorKind::BadCredentials);
    f.client.list_users(&renewed, none).await.unwrap();

    // A test-environment user added in the portal is refused, like the API does.
    let refused = f.simulator.create_user(
        f.account_id,
        NewUser {
            username: "second@tidningen.se".into(),
            ..NewUser::default()
        },
    );
    assert!(refused.is_err());
}

#[tokio::test]
async fn the_lookup_by_organisation_number_reads_every_page() {
    let f = fixture(Environment::Test).await;
    let none = Deadline::none();
    // More creditors than one page holds; the one sought is created last.
    for index in 0..230 {
        let org_no = format!("55{index:04}-0000");
        f.create_creditor(&org_no).await;
    }
    let last = f.create_creditor("212000-0142").await;
    let found = f
        .client
        .find_creditors_by_org_no(&f.token, "2120000142", none)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].creditor_public_id.as_deref(), Some(last.as_str()));
    assert_eq!(
        f.simulator.request_count("GET /v1/creditors/creditors"),
        3,
        "three pages of 100"
    );
}

#[tokio::test]
async fn no_more_requests_than_the_concurrency_limit_are_in_flight() {
    let f = fixture_with(Environment::Test, |settings| settings.max_concurrency = 2).await;
    f.simulator
        .set_faults(
            None,
            vec![fault("GET /v1/users/users", Fault::Latency { ms: 300 })],
        )
        .unwrap();
    // Six reads, two at a time: three rounds of 300 ms at least.
    let started = std::time::Instant::now();
    let reads = (0..6).map(|_| f.client.list_users(&f.token, Deadline::none()));
    for read in futures::future::join_all(reads).await {
        read.expect("every read is answered");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "two at a time: {:?}",
        started.elapsed()
    );
    // A caller whose deadline passes while it waits for a slot is told so, and nothing is sent.
    let before = f.simulator.request_count("GET /v1/users/users");
    let busy = f.client.list_users(&f.token, Deadline::none());
    let also_busy = f.client.list_users(&f.token, Deadline::none());
    let impatient = f
        .client
        .list_users(&f.token, Deadline::after(Duration::from_millis(100)));
    let (busy, also_busy, impatient) = tokio::join!(busy, also_busy, impatient);
    busy.unwrap();
    also_busy.unwrap();
    assert_eq!(impatient.unwrap_err().failure, Failure::DeadlineExceeded);
    assert_eq!(f.simulator.request_count("GET /v1/users/users"), before + 2);
}
