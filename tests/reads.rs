//! The read path keeps what it read of an onboarding in memory, and records each caller's first
//! payment-configuration read of a credential in the audit trail. These tests hold it to its
//! promises: a replica never answers with anything older than a write another replica has
//! committed, and each caller's first read is one event in an unbroken trail, its later reads none.

mod common;

use billecta_client::Deadline;
use billecta_onboarding::auth::SANDBOX_KEY;
use billecta_onboarding::proto;
use common::*;

/// The callers of these tests: the sandbox's developer, and two of Payway's payment services.
const PAYMENTS_A: (&str, &str) = ("payway-payments-a", "payments-a-key");
const PAYMENTS_B: (&str, &str) = ("payway-payments-b", "payments-b-key");

fn callers() -> String {
    let payments: &[&str] = &["payment_configuration"];
    callers_json(&[
        ("sandbox-developer", SANDBOX_KEY, ALL_PERMISSIONS, None),
        (PAYMENTS_A.0, PAYMENTS_A.1, payments, None),
        (PAYMENTS_B.0, PAYMENTS_B.1, payments, None),
    ])
}

/// A payment-configuration client on `channel` that authenticates with `key`.
fn payments_as(channel: tonic::transport::Channel, key: &str) -> Payments {
    proto::payment_configuration_service_client::PaymentConfigurationServiceClient::with_interceptor(
        channel,
        Bearer::new(key),
    )
}

/// How many events of the onboarding `name` record a read by `caller`.
async fn reads_by(server: &TestServer, name: &str, caller: &str) -> usize {
    events(server, name)
        .await
        .iter()
        .filter(|event| event.method == "GetPaymentConfiguration" && event.actor == caller)
        .count()
}

/// A server with a READY onboarding and a second replica on its database: the server, the replica,
/// the onboarding's name and its creditor's.
async fn replicas_with_ready_onboarding(
    backend: &Backend,
) -> (TestServer, Replica, String, String) {
    let server = TestServer::start_with(backend, |config| {
        config.encryption_keys = SHARED_ENCRYPTION_KEYS.into();
        config.callers = callers();
    })
    .await;
    let name = ready_onboarding(&server).await;
    let replica = server
        .replica_adjusted(|config| config.callers = callers())
        .await;
    let creditor = creditor_of(&get(&server, &name).await.unwrap())
        .name
        .clone();
    (server, replica, name, creditor)
}

fn creditor_of(onboarding: &proto::Onboarding) -> &proto::Creditor {
    onboarding.creditors.first().expect("one creditor")
}

/// GetOnboarding through `replica`.
async fn read_onboarding(replica: &Replica, name: &str) -> proto::Onboarding {
    get_via(&replica.client, name).await.unwrap()
}

/// GetPaymentConfiguration through `replica`.
async fn read_payment_configuration(
    replica: &Replica,
    creditor: &str,
) -> proto::PaymentConfiguration {
    payment_configuration_via(payments_on(replica.channel.clone()), creditor)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replica_reads_every_write_another_replica_committed() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let (server, reader, name, creditor) = replicas_with_ready_onboarding(&backend).await;
        let billecta = test_billecta(&server);

        for round in 0..6 {
            // The reader has read (and may keep) the onboarding as it is now.
            let before = read_onboarding(&reader, &name).await;
            let paid_before = read_payment_configuration(&reader, &creditor).await;

            // A caller's first read of this credential through the other replica moves the audit
            // trail on; the reader, which keeps the onboarding, shows the trail's new end. The same
            // caller reading again writes nothing.
            let seen = read_onboarding(&reader, &name).await;
            payment_configuration_via(payments_as(server.channel.clone(), PAYMENTS_A.1), &creditor)
                .await
                .unwrap();
            let moved = read_onboarding(&reader, &name).await;
            assert_ne!(moved.last_event, seen.last_event, "round {round}");
            assert_eq!(moved, get(&server, &name).await.unwrap(), "round {round}");
            assert_eq!(
                moved.etag, seen.etag,
                "round {round}: a read is no new version"
            );
            payment_configuration_via(payments_as(server.channel.clone(), PAYMENTS_A.1), &creditor)
                .await
                .unwrap();
            let again = read_onboarding(&reader, &name).await;
            assert_eq!(again.last_event, moved.last_event, "round {round}");

            // The other replica changes what the onboarding holds: a stage and stored secrets.
            let target_url = format!("https://payway.example/billecta/hooks/{round}");
            let written = server
                .client
                .clone()
                .record_webhook_setup(proto::RecordWebhookSetupRequest {
                    name: creditor.clone(),
                    target_url: target_url.clone(),
                    events: vec!["InvoicePaymentReceived".into()],
                    authorization: format!("Bearer hook-{round}"),
                    attested_by: "ops@payway.example".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .onboarding
                .unwrap();
            // Someone issues the API user a new token in Billecta (the old one stops working) and
            // registers it.
            let current = account_token(&billecta).await;
            let issued = billecta
                .issue_token(&current, None, Deadline::none())
                .await
                .unwrap()
                .value;
            server
                .client
                .clone()
                .register_api_credentials(proto::RegisterApiCredentialsRequest {
                    name: creditor.clone(),
                    username: ACCOUNT_EMAIL.into(),
                    secure_token: issued.expose().to_owned(),
                    ..Default::default()
                })
                .await
                .unwrap();

            // The reader, which still keeps the onboarding as it was before both writes, answers a
            // payment read with the new token.
            let paid = read_payment_configuration(&reader, &creditor).await;
            assert_eq!(paid.secure_token, issued.expose(), "round {round}");
            assert_ne!(paid.secure_token, paid_before.secure_token, "round {round}");
            assert_eq!(
                paid.password, paid_before.password,
                "round {round}: the user's password stays with the user's new token"
            );

            // The reader sees both writes at once.
            let after = read_onboarding(&reader, &name).await;
            assert_ne!(after.etag, before.etag, "round {round}");
            assert_ne!(
                after.etag, written.etag,
                "round {round}: the registration is newer"
            );
            let hooks = creditor_of(&after)
                .webhooks
                .as_ref()
                .expect("webhooks recorded");
            assert_eq!(hooks.target_url, target_url, "round {round}");
            // The read completed PAYMENT_CONFIGURATION; both replicas agree on every field.
            let reread = read_onboarding(&reader, &name).await;
            assert_eq!(reread.state, proto::OnboardingState::Ready as i32);
            assert_eq!(reread, get(&server, &name).await.unwrap(), "round {round}");
            let paid_again = payment_configuration(&server, &creditor).await.unwrap();
            assert_eq!(paid, paid_again, "round {round}");
        }
    }
}

#[tokio::test]
async fn each_callers_first_read_is_one_event_in_an_unbroken_trail_however_many_read_at_once() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let (server, other, name, creditor) = replicas_with_ready_onboarding(&backend).await;
        let events_before = events(&server, &name).await.len();
        assert_eq!(reads_by(&server, &name, "sandbox-developer").await, 1);

        // Reads by three callers (the developer has read this credential before, the payment
        // services have not) through two replicas at once, with writes to the same onboarding
        // among them.
        let mut reads = Vec::new();
        for i in 0..120 {
            let creditor = creditor.clone();
            let channel = if i % 2 == 1 {
                other.channel.clone()
            } else {
                server.channel.clone()
            };
            let key = [SANDBOX_KEY, PAYMENTS_A.1, PAYMENTS_B.1][i % 3];
            reads.push(tokio::spawn(async move {
                payments_as(channel, key)
                    .get_payment_configuration(proto::GetPaymentConfigurationRequest {
                        name: creditor,
                    })
                    .await
            }));
        }
        let mut writes = 0;
        for round in 0..5 {
            server
                .client
                .clone()
                .record_webhook_setup(proto::RecordWebhookSetupRequest {
                    name: creditor.clone(),
                    target_url: format!("https://payway.example/hooks/{round}"),
                    events: vec!["InvoicePaymentReceived".into()],
                    authorization: format!("Bearer concurrent-{round}"),
                    attested_by: "ops@payway.example".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            writes += 1;
        }
        for read in reads {
            let configuration = read.await.unwrap().expect("every read is answered");
            assert!(configuration.into_inner().payment_configuration.is_some());
        }

        let trail = events(&server, &name).await;
        let sequences: Vec<i64> = trail
            .iter()
            .map(|event| event.name.rsplit('/').next().unwrap().parse().unwrap())
            .collect();
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, expected, "the trail has no gaps or repeats");
        assert_eq!(reads_by(&server, &name, "sandbox-developer").await, 1);
        assert_eq!(reads_by(&server, &name, PAYMENTS_A.0).await, 1);
        assert_eq!(reads_by(&server, &name, PAYMENTS_B.0).await, 1);
        assert_eq!(trail.len() - events_before, 2 + writes);
        let onboarding = get(&server, &name).await.unwrap();
        assert_eq!(onboarding.state, proto::OnboardingState::Ready as i32);
    }
}
