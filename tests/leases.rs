//! Leases end with their holders: a clean shutdown releases the stages of the calls it cuts off (a
//! caller's, or the reconciler's), so that the next call, after a restart or on another replica, goes
//! ahead at once instead of finding the stage busy for the rest of the lease; a creditor's create cut
//! off so stays leased for its settling time, since Billecta may have the creditor. And an error that
//! ran out of time names the limit it was: the caller's deadline, the stage's lease or the client's
//! timeout.

mod common;

use billecta_onboarding::config::Config;
use billecta_onboarding::domain::Environment;
use billecta_sim::{Fault, FaultBody};
use common::{
    Client, ORG_NO, Replica, SHARED_ENCRYPTION_KEYS, TestServer, assert_refused, confirm_request,
    create, creditor_request, events_via, fail_next, proto, reason, register_account_in_portal,
    stage_state, stage_status,
};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

const PASSWORD: &str = "Vinter-2026-lösen";
const SIGN_IN: &str = "POST /v1/authentication/apiauthenticate";
const CREATE_CREDITOR: &str = "POST /v1/creditors/creditor";

/// A server whose replicas read its secrets, and whose shutdown gives calls in flight little time.
async fn start(backend: &common::Backend, adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(backend, |config| {
        config.encryption_keys = SHARED_ENCRYPTION_KEYS.to_owned();
        config.shutdown_grace_ms = 300;
        adjust(config);
    })
    .await
}

/// A test onboarding whose account exists in Billecta's portal, activated with [`PASSWORD`], not
/// yet confirmed.
async fn activated_in_portal(server: &TestServer) -> String {
    let name = create(server, "gp", proto::Environment::Test).await.name;
    let account = register_account_in_portal(server, &name, Environment::Test).await;
    server
        .simulator(Environment::Test)
        .activate_account(account, PASSWORD)
        .expect("the portal activates the account");
    name
}

/// Waits until `route` of the test simulator has been asked `count` times.
async fn wait_for_requests(server: &TestServer, route: &str, count: u64) {
    let started = Instant::now();
    while server.simulator(Environment::Test).request_count(route) < count {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{route} was not asked {count} times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shuts the server down as SIGTERM does and waits until it has stopped.
async fn shut_down(server: &mut TestServer) {
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), &mut server.task)
        .await
        .expect("the server stops within its grace and the release")
        .expect("the server's task")
        .expect("a clean shutdown");
}

/// The service started again on the stopped server's database, with its key and its Billecta. Its
/// reconciler is off, so that what a test sees is what the shutdown left.
async fn restarted(server: &TestServer) -> Replica {
    server
        .replica_adjusted(|config| config.reconcile_interval_ms = 0)
        .await
}

/// The ACCOUNT stage as `client` reads it.
async fn account_stage(client: &Client, name: &str) -> proto::StageStatus {
    let onboarding = common::get_via(client, name).await.unwrap();
    stage_status(&onboarding.stages, proto::Stage::Account).clone()
}

/// The stage shows that the call working on it stopped, and waits on nobody but the system.
#[track_caller]
fn assert_interrupted(stage: &proto::StageStatus) {
    assert_eq!(
        stage.state,
        proto::StageState::InProgress as i32,
        "{stage:?}"
    );
    assert_eq!(
        stage.blocked_on,
        proto::BlockedOn::SystemRetrying as i32,
        "{stage:?}"
    );
    assert_eq!(stage.reason, "INTERRUPTED", "{stage:?}");
}

/// Confirms the account through `replica`: the stage is not busy, the sign-in goes through.
async fn confirm_through(replica: &Replica, name: &str) {
    let confirmed = replica
        .client
        .clone()
        .confirm_account_activation(confirm_request(name, PASSWORD))
        .await
        .expect("the next call goes ahead at once")
        .into_inner()
        .onboarding
        .unwrap();
    assert_eq!(
        stage_state(&confirmed.stages, proto::Stage::Account),
        proto::StageState::Completed
    );
}

#[tokio::test]
async fn a_clean_shutdown_frees_the_stage_of_a_call_it_cut_off() {
    for backend in common::backends() {
        eprintln!("backend: {backend:?}");
        let mut server = start(&backend, |_| {}).await;
        let name = activated_in_portal(&server).await;

        // Billecta never answers the sign-in: the call holds ACCOUNT when the shutdown comes.
        fail_next(server.simulator(Environment::Test), SIGN_IN, Fault::Hang, 1);
        let mut patient = tonic::Request::new(confirm_request(&name, PASSWORD));
        patient.set_timeout(Duration::from_secs(60));
        let mut client = server.client.clone();
        let running = tokio::spawn(async move { client.confirm_account_activation(patient).await });
        wait_for_requests(&server, SIGN_IN, 1).await;
        assert_eq!(
            account_stage(&server.client, &name).await.state,
            proto::StageState::InProgress as i32,
            "claimed by the running call"
        );

        let stopping = Instant::now();
        shut_down(&mut server).await;
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "stopped after the grace, not when Billecta gave up: {:?}",
            stopping.elapsed()
        );
        let cut_off = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the cut-off call ends with the server")
            .expect("the call's task");
        assert!(cut_off.is_err(), "{cut_off:?}");

        // Restarted (a new process on the same database): the stage is free and says why.
        let replica = restarted(&server).await;
        let last = interrupted_by_shutdown(&replica, &name).await;
        assert_eq!(last.method, "ConfirmAccountActivation", "{last:?}");
        assert_eq!(last.outcome, "UNAVAILABLE", "{last:?}");
        confirm_through(&replica, &name).await;
    }
}

/// Asserts that ACCOUNT shows INTERRUPTED to `replica` and that the last event of the trail says a
/// shutdown cut the call off; returns that event.
async fn interrupted_by_shutdown(replica: &common::Replica, name: &str) -> proto::OnboardingEvent {
    assert_interrupted(&account_stage(&replica.client, name).await);
    let events = events_via(&replica.client, name).await;
    let last = events.last().expect("events").clone();
    assert!(
        last.summary.contains("cut off by a shutdown"),
        "{}",
        last.summary
    );
    last
}

#[tokio::test]
async fn the_reconcilers_claim_is_released_at_shutdown_too() {
    for backend in common::backends() {
        eprintln!("backend: {backend:?}");
        let mut server = start(&backend, |config| config.reconcile_interval_ms = 200).await;
        let name = activated_in_portal(&server).await;
        let simulator = server.simulator(Environment::Test);

        // Billecta is down when the caller confirms: the stage waits on the system, and the
        // reconciler carries it on; then Billecta never answers the reconciler's sign-in.
        let attempts = Config::for_database("unused").billecta_max_attempts;
        fail_next(
            simulator,
            SIGN_IN,
            Fault::Status {
                status: 503,
                body: FaultBody::Json,
            },
            attempts,
        );
        let down = server
            .client
            .clone()
            .confirm_account_activation(confirm_request(&name, PASSWORD))
            .await
            .unwrap_err();
        assert_refused(&down, Code::Unavailable, "BILLECTA_UNAVAILABLE");
        fail_next(simulator, SIGN_IN, Fault::Hang, 1);
        wait_for_requests(&server, SIGN_IN, u64::from(attempts) + 1).await;
        let stage = account_stage(&server.client, &name).await;
        assert_eq!(stage.blocked_on, proto::BlockedOn::None as i32, "{stage:?}");

        shut_down(&mut server).await;
        let replica = restarted(&server).await;
        let last = interrupted_by_shutdown(&replica, &name).await;
        assert_eq!(last.actor, "reconciler", "{last:?}");
        confirm_through(&replica, &name).await;
    }
}

#[tokio::test]
async fn a_create_cut_off_by_a_shutdown_keeps_its_stage_until_billecta_has_settled() {
    for backend in common::backends() {
        eprintln!("backend: {backend:?}");
        // Creates settle for twice the client's timeout: 6 s.
        let mut server = start(&backend, |config| config.billecta_timeout_ms = 3_000).await;
        let name = activated_in_portal(&server).await;
        server
            .client
            .clone()
            .confirm_account_activation(confirm_request(&name, PASSWORD))
            .await
            .expect("the account signs in");

        // The create is on its way when the shutdown comes: Billecta may make the creditor.
        fail_next(
            server.simulator(Environment::Test),
            CREATE_CREDITOR,
            Fault::Hang,
            1,
        );
        let mut client = server.client.clone();
        let request = creditor_request(&name);
        let running = tokio::spawn(async move { client.create_creditor(request).await });
        wait_for_requests(&server, CREATE_CREDITOR, 1).await;
        shut_down(&mut server).await;
        let released_at = Instant::now();
        assert!(running.await.expect("the call's task").is_err());

        // Not freed at once: a second create now could make a second creditor.
        let replica = restarted(&server).await;
        let busy = replica
            .client
            .clone()
            .create_creditor(creditor_request(&name))
            .await
            .unwrap_err();
        assert_refused(&busy, Code::Aborted, "STAGE_BUSY");
        let delay = busy
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay)
            .expect("a retry delay");
        assert!(
            delay <= Duration::from_secs(6),
            "the settling time, not the whole lease: {delay:?}"
        );
        let events = events_via(&replica.client, &name).await;
        let last = events.last().expect("events");
        assert_eq!(last.method, "CreateCreditor", "{last:?}");
        assert!(
            last.summary.contains("cut off by a shutdown") && last.summary.contains("looked up"),
            "{}",
            last.summary
        );

        // Once it has settled, the next call looks the creditor up and makes it once.
        let created = loop {
            match replica
                .client
                .clone()
                .create_creditor(creditor_request(&name))
                .await
            {
                Ok(created) => break created.into_inner(),
                Err(status) if reason(&status) == "STAGE_BUSY" => {
                    assert!(
                        released_at.elapsed() < Duration::from_secs(30),
                        "still busy long after settling: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("the create after settling fails: {status:?}"),
            }
        };
        assert_eq!(created.creditor.unwrap().organisation_number, ORG_NO);
        assert_eq!(
            server.simulator(Environment::Test).state().creditors.len(),
            1
        );
    }
}

/// The status message of a confirmation that Billecta never answers, and the audit trail's last
/// summary, on a server that `adjust` configures; the call waits at most `timeout`, when given.
async fn never_answered(
    backend: &common::Backend,
    adjust: impl FnOnce(&mut Config),
    timeout: Option<Duration>,
) -> (tonic::Status, String) {
    let mut server = start(backend, adjust).await;
    let name = activated_in_portal(&server).await;
    fail_next(server.simulator(Environment::Test), SIGN_IN, Fault::Hang, 1);
    let mut request = tonic::Request::new(confirm_request(&name, PASSWORD));
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let status = server
        .client
        .clone()
        .confirm_account_activation(request)
        .await
        .unwrap_err();
    // The outcome is recorded after the caller has gone when its own deadline ended the call.
    let started = Instant::now();
    let summary = loop {
        let events = events_via(&server.client, &name).await;
        let last = events.last().expect("events");
        if last.method == "ConfirmAccountActivation" && last.outcome != "OK" {
            break last.summary.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no outcome recorded: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Its database connections go with it: the next scenario starts another server.
    shut_down(&mut server).await;
    (status, summary)
}

#[tokio::test]
async fn an_error_that_ran_out_of_time_names_the_limit_it_was() {
    for backend in common::backends() {
        eprintln!("backend: {backend:?}");
        // The lease (10 s, 5 s of it kept to record the outcome) ends before the caller's minute
        // and the client's 20 s.
        let (status, summary) = never_answered(
            &backend,
            |config| {
                config.stage_lease_ms = 10_000;
                config.billecta_timeout_ms = 20_000;
            },
            Some(Duration::from_secs(60)),
        )
        .await;
        assert_refused(
            &status,
            Code::DeadlineExceeded,
            "BILLECTA_DEADLINE_EXCEEDED",
        );
        assert!(
            status
                .message()
                .contains("before the stage's lease --stage-lease-ms (10000 ms) ran out"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("caller"), "{}", status.message());
        assert!(summary.contains("--stage-lease-ms (10000 ms)"), "{summary}");

        // The caller's own deadline: the caller is gone, the audit trail says which it was.
        let (status, summary) = never_answered(
            &backend,
            |config| config.billecta_timeout_ms = 20_000,
            Some(Duration::from_secs(1)),
        )
        .await;
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(
            summary.contains("before the caller's deadline (1000 ms) ran out"),
            "{summary}"
        );

        // The client's timeout, with nothing else to bound the call.
        let (status, _) = never_answered(
            &backend,
            |config| {
                config.billecta_timeout_ms = 500;
                config.billecta_max_attempts = 1;
            },
            None,
        )
        .await;
        assert_refused(&status, Code::Unavailable, "BILLECTA_UNAVAILABLE");
        assert!(
            status
                .message()
                .contains("no answer within the client's timeout --billecta-timeout-ms (500 ms)"),
            "{}",
            status.message()
        );
    }
}
