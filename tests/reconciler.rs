//! The background worker, on SQLite and PostgreSQL: a stage left waiting on the system after Billecta
//! failed is carried on without any caller (a creditor's create, API credentials given while Billecta
//! was down), and a READY setup broken in Billecta's portal is found BROKEN by the scheduled
//! validation within one interval.

mod common;

use billecta_onboarding::domain::Environment;
use billecta_sim::{Fault, FaultBody};
use common::{TestServer, proto};
use std::time::{Duration, Instant};

use common::{
    READY_PASSWORD as PASSWORD, payment_configuration, ready_onboarding, settled_creditor,
};

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
async fn api_credentials_given_while_billecta_is_down_are_verified_later() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.reconcile_interval_ms = 200;
            config.billecta_max_attempts = 2;
        })
        .await;
        let (name, creditor) = settled_creditor(&server).await;

        // Billecta is down for the verification (the account's user and password: the stored token
        // is used, no sign-in): the caller is told UNAVAILABLE and goes away.
        common::fail_next(
            server.simulator(Environment::Test),
            "GET /v1/creditors/creditor/{id}",
            Fault::Status {
                status: 503,
                body: FaultBody::Json,
            },
            2,
        );
        let register = proto::RegisterApiCredentialsRequest {
            name: creditor.name.clone(),
            username: common::ACCOUNT_EMAIL.into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        let down = server
            .client
            .clone()
            .register_api_credentials(register)
            .await
            .unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable);
        let waiting = common::get(&server, &name).await.unwrap();
        let access = common::stage_status(&waiting.creditors[0].stages, proto::Stage::ApiAccess);
        assert_eq!(access.blocked_on, proto::BlockedOn::SystemRetrying as i32);
        // Waiting on the system still says what is due, and when the next attempt is.
        assert_eq!(waiting.next_due[0].item, "system.retry");
        assert!(
            access.message.contains("Next attempt at"),
            "{}",
            access.message
        );
        // Unverified credentials are not handed out.
        let closed = payment_configuration(&server, &creditor.name)
            .await
            .unwrap_err();
        assert_eq!(closed.code(), tonic::Code::FailedPrecondition);

        // The reconciler verifies the kept credentials once Billecta answers again.
        eventually(&server, &name, Duration::from_secs(15), |onboarding| {
            common::stage_state(&onboarding.creditors[0].stages, proto::Stage::ApiAccess)
                == proto::StageState::Completed
        })
        .await;
        let trail = common::events(&server, &name).await;
        let verified = trail
            .iter()
            .rev()
            .find(|event| event.method == "RegisterApiCredentials")
            .unwrap();
        assert_eq!(
            (verified.actor.as_str(), verified.outcome.as_str()),
            ("reconciler", "OK")
        );
        let configuration = payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        assert_eq!(configuration.username, common::ACCOUNT_EMAIL);
        assert_eq!(configuration.password, PASSWORD);

        // Registered again with the SecureToken alone: it is recognised as the same user's token, so
        // the user's password stays with it, and nobody signs in.
        let sign_ins = server
            .simulator(Environment::Test)
            .sign_ins(common::ACCOUNT_EMAIL);
        server
            .client
            .clone()
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.name.clone(),
                secure_token: configuration.secure_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let configuration = payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        assert_eq!(
            configuration.password, PASSWORD,
            "the user's password stays with its token"
        );
        assert!(!configuration.secure_token.is_empty());
        assert_eq!(
            server
                .simulator(Environment::Test)
                .sign_ins(common::ACCOUNT_EMAIL),
            sign_ins,
            "a token given needs no sign-in"
        );
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
        let name = ready_onboarding(&server).await;

        // Someone removes the user in Billecta's portal (in test, the account's one user).
        common::remove_account_user(&server);
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

// On two workers: a connection the server is still opening when the PostgreSQL database is dropped
// (on the test's thread) must be able to finish, or DROP DATABASE waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_onboarding_stays_ready_over_scheduled_validations_whatever_sign_in_does() {
    for backend in common::backends() {
        for sign_in in [
            common::SignIn::ReturnsLiveToken,
            common::SignIn::IssuesNewToken,
        ] {
            let server = TestServer::start_with(&backend, |config| {
                config.sandbox_sign_in = sign_in;
                config.reconcile_interval_ms = 100;
                config.revalidate_interval_ms = 400;
            })
            .await;
            let name = ready_onboarding(&server).await;
            let creditor = common::get(&server, &name).await.unwrap().creditors[0].clone();
            let held = payment_configuration(&server, &creditor.name)
                .await
                .unwrap();

            // Several scheduled checks later, nothing signed in, and Payway's token still works.
            let started = Instant::now();
            loop {
                let scheduled = common::events(&server, &name)
                    .await
                    .into_iter()
                    .filter(|e| e.method == "ValidateOnboarding" && e.actor == "reconciler")
                    .count();
                if scheduled >= 3 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{scheduled} checks"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let onboarding = common::get(&server, &name).await.unwrap();
            assert_eq!(
                onboarding.state,
                proto::OnboardingState::Ready as i32,
                "{sign_in}: {:?}",
                onboarding.next_due
            );
            assert_eq!(
                server
                    .simulator(Environment::Test)
                    .sign_ins(common::ACCOUNT_EMAIL),
                1,
                "{sign_in}"
            );
            let still = common::test_billecta(&server)
                .get_creditor(
                    &billecta_onboarding::secret::Secret::new(held.secure_token.clone()),
                    &held.creditor_public_id,
                    billecta_client::Deadline::none(),
                )
                .await;
            assert!(still.is_ok(), "{sign_in}: Payway's token works");
        }
    }
}

#[tokio::test]
async fn replicas_share_the_validation_schedule() {
    for backend in common::backends() {
        let fast = |config: &mut billecta_onboarding::config::Config| {
            config.reconcile_interval_ms = 100;
            config.revalidate_interval_ms = 1_000;
        };
        let server = TestServer::start_with(&backend, fast).await;
        let _second = server.replica_adjusted(fast).await;
        let _third = server.replica_adjusted(fast).await;
        let name = ready_onboarding(&server).await;

        // Three replicas, each looking every 100 ms, for 4.5 intervals: one check per interval.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        let checks: Vec<_> = common::events(&server, &name)
            .await
            .into_iter()
            .filter(|event| event.method == "ValidateOnboarding" && event.actor == "reconciler")
            .collect();
        assert!(
            (3..=5).contains(&checks.len()),
            "one scheduled check per interval, whichever replica makes it: {} checks",
            checks.len()
        );
        let times: Vec<i64> = checks
            .iter()
            .map(|event| {
                event.event_time.as_ref().unwrap().seconds * 1_000
                    + i64::from(event.event_time.as_ref().unwrap().nanos) / 1_000_000
            })
            .collect();
        // Event times are when each check finished; how long a check takes varies with the load
        // on the machine, so the gaps vary around the interval. A check repeated by another replica
        // would follow within one look (100 ms) plus that variation.
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= 500,
                "checks an interval apart, not repeated by another replica: {times:?}"
            );
        }
    }
}

#[tokio::test]
async fn results_past_their_request_id_retention_are_deleted_and_the_id_is_new_again() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.reconcile_interval_ms = 100;
            config.request_id_retention_ms = 500;
        })
        .await;
        let name = common::create(&server, "gp", proto::Environment::Test)
            .await
            .name;
        let agreement = |reference: &str| proto::RecordAgreementRequest {
            request_id: "agreement-gp-test".into(),
            reference: reference.into(),
            ..common::agreement_request(&name)
        };
        let mut client = server.client.clone();
        client
            .record_agreement(agreement("CONTRACT-1"))
            .await
            .unwrap();
        // Within the retention the id belongs to the first request.
        let reused = client
            .record_agreement(agreement("CONTRACT-2"))
            .await
            .unwrap_err();
        common::assert_refused(&reused, tonic::Code::InvalidArgument, "REQUEST_ID_REUSED");

        // The worker deletes the stored result once it is older than the retention.
        let pool = common::database_pool(&server.database).await;
        let started = Instant::now();
        loop {
            let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
                .fetch_one(&pool)
                .await
                .unwrap();
            if kept == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{kept} stored results are still there"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;

        // After it, the same id is a new request.
        let second = client
            .record_agreement(agreement("CONTRACT-2"))
            .await
            .unwrap()
            .into_inner();
        let onboarding = second.onboarding.unwrap();
        assert_eq!(onboarding.agreement.unwrap().reference, "CONTRACT-2");
    }
}
