//! The background worker, on SQLite and PostgreSQL: a stage left waiting on the system after Billecta
//! failed is carried on without any caller, and a READY setup broken in Billecta's portal is found
//! BROKEN by the scheduled validation within one interval.

mod common;

use billecta_onboarding::domain::Environment;
use billecta_onboarding::simulator::{Fault, FaultBody};
use common::{TestServer, proto};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Höst-2026-lösen";

/// Waits until `done` holds for the onboarding, or fails after `limit`.
async fn eventually(
    server: &TestServer,
    name: &str,
    limit: Duration,
    done: impl Fn(&proto::Onboarding) -> bool,
) -> proto::Onboarding {
    let started = Instant::now();
    loop {
        let onboarding = common::get(server, name).await.unwrap();
        if done(&onboarding) {
            return onboarding;
        }
        assert!(
            started.elapsed() < limit,
            "not within {limit:?}: {onboarding:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stage_waiting_on_billecta_is_carried_on_without_a_caller() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.reconcile_interval_ms = 200;
            config.billecta_timeout_ms = 300;
        })
        .await;
        let simulator = server.simulator(Environment::Test);
        let name = common::create(&server, "gp", proto::Environment::Test)
            .await
            .name;
        common::confirm_account(&server, &name, Environment::Test, PASSWORD).await;

        // Billecta answers the create with 503: the caller is told UNAVAILABLE and goes away.
        common::fail_next(
            simulator,
            "POST /v1/creditors/creditor",
            Fault::Status {
                status: 503,
                body: FaultBody::Html,
            },
            1,
        );
        let down = server
            .client
            .clone()
            .create_creditor(common::creditor_request(&name))
            .await
            .unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable);

        // The reconciler carries on once the create has settled, looks first, and completes it.
        let done = eventually(&server, &name, Duration::from_secs(10), |onboarding| {
            onboarding.creditors.first().is_some_and(|creditor| {
                common::stage_state(&creditor.stages, proto::Stage::Creditor)
                    == proto::StageState::Completed
            })
        })
        .await;
        assert_eq!(
            simulator.state().creditors.len(),
            1,
            "one creditor in Billecta"
        );
        assert!(!done.creditors[0].creditor_public_id.is_empty());
        let trail = common::events(&server, &name).await;
        let resumed = trail
            .iter()
            .rev()
            .find(|event| event.method == "CreateCreditor")
            .unwrap();
        assert_eq!(resumed.actor, "reconciler");
        assert_eq!(resumed.outcome, "OK");
    }
}

#[tokio::test]
async fn a_removed_api_user_is_found_by_the_scheduled_validation() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.reconcile_interval_ms = 200;
            config.revalidate_interval_ms = 1_000;
        })
        .await;
        let name = common::create(&server, "gp", proto::Environment::Test)
            .await
            .name;
        common::confirm_account(&server, &name, Environment::Test, PASSWORD).await;
        let creditor = common::create_creditor(&server, common::creditor_request(&name)).await;
        common::settle_company_settings(
            &server,
            Environment::Test,
            &creditor,
            Some(common::gp_company_settings()),
        )
        .await;
        server
            .client
            .clone()
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.name.clone(),
                username: common::ACCOUNT_EMAIL.into(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut payments = billecta_onboarding::proto::payment_configuration_service_client::PaymentConfigurationServiceClient::with_interceptor(
            server.channel.clone(),
            common::Bearer::new(billecta_onboarding::auth::SANDBOX_KEY),
        );
        payments
            .get_payment_configuration(proto::GetPaymentConfigurationRequest {
                name: creditor.name.clone(),
            })
            .await
            .unwrap();
        common::skip_webhooks(&server, &creditor.name, "later").await;
        let ready = common::get(&server, &name).await.unwrap();
        assert_eq!(ready.state, proto::OnboardingState::Ready as i32);

        // Someone removes the user in Billecta's portal (in test, the account's one user).
        let user = server.simulator(Environment::Test).state().users[0].user_public_id;
        server
            .simulator(Environment::Test)
            .delete_user(user)
            .unwrap();
        let started = Instant::now();
        let broken = eventually(&server, &name, Duration::from_secs(5), |onboarding| {
            onboarding.state == proto::OnboardingState::Broken as i32
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(2_500),
            "found within about one interval: {:?}",
            started.elapsed()
        );
        assert_eq!(
            common::stage_state(&broken.creditors[0].stages, proto::Stage::ApiAccess),
            proto::StageState::Broken
        );
        let trail = common::events(&server, &name).await;
        let check = trail
            .iter()
            .rev()
            .find(|event| event.method == "ValidateOnboarding")
            .unwrap();
        assert_eq!(check.actor, "reconciler");
    }
}
