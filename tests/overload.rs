//! Overload and deadlines, on SQLite and PostgreSQL: a server at its concurrency limit sheds calls at
//! once with RESOURCE_EXHAUSTED instead of queueing them, and recovers as soon as calls finish; a
//! caller's deadline bounds a call that waits on a slow Billecta, which leaves the stage waiting,
//! never FAILED.

mod common;

use billecta_onboarding::domain::Environment;
use billecta_sim::{Fault, NewAccount};
use common::{TestServer, fail_next, proto};
use std::time::{Duration, Instant};
use tonic::Code;

/// A test onboarding for `tenant` whose account `email` is activated in Billecta with `password`,
/// ready for ConfirmAccountActivation; returns its name.
async fn activated(server: &TestServer, tenant: &str, email: &str, password: &str) -> String {
    let name = common::create(server, tenant, proto::Environment::Test)
        .await
        .name;
    common::record_agreement(server, &name).await;
    let mut register = common::account_request(&name);
    register.account.as_mut().unwrap().email = email.to_owned();
    server
        .client
        .clone()
        .register_account(register)
        .await
        .expect("registers the account");
    let simulator = server.simulator(Environment::Test);
    let account = simulator
        .create_account(NewAccount {
            name: "Payway Billecta".into(),
            company_name: format!("{tenant} AB"),
            email: email.into(),
            password: "initial".into(),
        })
        .unwrap();
    simulator
        .activate_account(account.account_id, password)
        .unwrap();
    name
}

fn confirm(name: &str, email: &str, password: &str) -> proto::ConfirmAccountActivationRequest {
    proto::ConfirmAccountActivationRequest {
        name: name.to_owned(),
        username: email.to_owned(),
        password: password.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_full_server_sheds_calls_at_once_and_recovers() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.max_concurrent_calls = 2;
        })
        .await;
        let first = activated(&server, "gp", "gp@example.se", "Lösen-1-2026").await;
        let second = activated(&server, "hd", "hd@example.se", "Lösen-2-2026").await;
        // Billecta is slow to sign in: two confirmations hold both of the server's call slots.
        fail_next(
            server.simulator(Environment::Test),
            "POST /v1/authentication/apiauthenticate",
            Fault::Latency { ms: 1_500 },
            2,
        );
        let mut one = server.client.clone();
        let mut two = server.client.clone();
        let slow = tokio::spawn({
            let (first, second) = (first.clone(), second.clone());
            async move {
                tokio::join!(
                    one.confirm_account_activation(confirm(
                        &first,
                        "gp@example.se",
                        "Lösen-1-2026"
                    )),
                    two.confirm_account_activation(confirm(
                        &second,
                        "hd@example.se",
                        "Lösen-2-2026"
                    )),
                )
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;

        let asked = Instant::now();
        let shed = common::get(&server, &first).await.unwrap_err();
        assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "refused at once, not queued: {:?}",
            asked.elapsed()
        );

        let (one, two) = slow.await.unwrap();
        one.expect("the first slow call completes");
        two.expect("the second slow call completes");
        let after = common::get(&server, &first).await.expect("served again");
        assert_eq!(
            common::stage_state(&after.stages, proto::Stage::Account),
            proto::StageState::Completed
        );
    }
}

#[tokio::test]
async fn a_callers_deadline_bounds_a_call_waiting_on_a_slow_billecta() {
    for backend in common::backends() {
        let server = TestServer::start(&backend).await;
        let name = activated(&server, "gp", "gp@example.se", "Lösen-1-2026").await;
        fail_next(
            server.simulator(Environment::Test),
            "POST /v1/authentication/apiauthenticate",
            Fault::Latency { ms: 5_000 },
            1,
        );
        let mut impatient = tonic::Request::new(confirm(&name, "gp@example.se", "Lösen-1-2026"));
        impatient.set_timeout(Duration::from_millis(300));
        let asked = Instant::now();
        let gone = server
            .client
            .clone()
            .confirm_account_activation(impatient)
            .await
            .unwrap_err();
        assert!(
            matches!(gone.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{gone:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_millis(1_500),
            "the deadline, not Billecta's 5 s, ended the call: {:?}",
            asked.elapsed()
        );
        // The stage waits (or is still being worked on); a transient cause never fails it.
        let onboarding = common::get(&server, &name).await.unwrap();
        assert_ne!(
            common::stage_state(&onboarding.stages, proto::Stage::Account),
            proto::StageState::Failed
        );
    }
}
