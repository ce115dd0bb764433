//! The whole journey over gRPC, on SQLite and PostgreSQL, with the sandbox's simulators playing the
//! people in Billecta's portal: a tenant from nothing to READY in test, promoted, READY in
//! production; Payway's payment code reads a token the simulator accepts; then someone deletes the API
//! user in Billecta and ValidateOnboarding reports the integration BROKEN, with the reason.

mod common;

use billecta_client::{BillectaClient, ClientSettings, Deadline};
use billecta_onboarding::domain::Environment;
use billecta_onboarding::secret::Secret;
use billecta_sim::NewUser;
use common::{
    ACCOUNT_EMAIL, ORG_NO, OnboardingOutcome, TestServer, assert_refused, confirm_account,
    create_creditor, creditor_request, events, for_each_backend, for_each_backend_and_sign_in,
    gp_company_settings, payment_configuration, proto, settle_company_settings, skip_webhooks,
    stage_status, validate,
};
use std::sync::{Arc, Mutex, OnceLock};
use tonic::Code;

const TEST_PASSWORD: &str = "Test-lösen-2026";
const PRODUCTION_PASSWORD: &str = "Prod-lösen-2026";
const API_USER: &str = "payway-api@gp.se";
const API_PASSWORD: &str = "Api-lösen-2026";
const WEBHOOK_SECRET: &str = "webhook-secret-2026";
/// Every secret the journey hands the service; none may show anywhere but the payment
/// configuration.
const SECRETS: [&str; 4] = [
    TEST_PASSWORD,
    PRODUCTION_PASSWORD,
    API_PASSWORD,
    WEBHOOK_SECRET,
];

/// Every log line any test of this binary writes, at debug level for every crate: what an operator
/// who turns logging up would see.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .json()
            .with_writer(move || LogSink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The audit log lines of payment-configuration reads of `creditor` captured so far.
fn audit_lines(logs: &Mutex<Vec<u8>>, creditor: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "audit" && line["fields"]["resource"] == creditor)
        .collect()
}

fn state(onboarding: &proto::Onboarding) -> proto::OnboardingState {
    proto::OnboardingState::try_from(onboarding.state).unwrap()
}

/// Registers `username` and `password` as the API credentials of the creditor `creditor_name`;
/// returns the onboarding.
async fn register_api_credentials(
    server: &TestServer,
    creditor_name: &str,
    username: &str,
    password: &str,
) -> proto::Onboarding {
    server
        .client
        .clone()
        .register_api_credentials(proto::RegisterApiCredentialsRequest {
            name: creditor_name.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        })
        .await
        .onboarding()
}

/// PromoteToProduction of the test onboarding `name`.
async fn promote(server: &TestServer, name: &str) -> Result<proto::Onboarding, tonic::Status> {
    Ok(server
        .client
        .clone()
        .promote_to_production(proto::PromoteToProductionRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .onboarding
        .unwrap())
}

/// Asserts that the onboarding `name` is READY, showing what is still due when it is not.
async fn assert_ready(server: &TestServer, name: &str) {
    let onboarding = common::get(server, name).await.unwrap();
    assert_eq!(
        state(&onboarding),
        proto::OnboardingState::Ready,
        "{:?}",
        onboarding.next_due
    );
}

/// Billecta accepts the token handed to Payway: it reads the creditor.
async fn token_works(
    configuration: &proto::PaymentConfiguration,
    environment: Environment,
) -> bool {
    let client = BillectaClient::new(
        environment,
        ClientSettings::new(configuration.api_base_url.clone()),
    )
    .unwrap();
    client
        .get_creditor(
            &Secret::new(configuration.secure_token.clone()),
            &configuration.creditor_public_id,
            Deadline::none(),
        )
        .await
        .is_ok()
}

#[tokio::test]
async fn a_tenant_goes_from_nothing_to_ready_in_test_and_production() {
    let logs = captured_logs();
    for_each_backend_and_sign_in(|server, sign_in| {
        let logs = logs.clone();
        async move {
            let mut client = server.client.clone();

            // ---- test ----
            let test = common::create(&server, "gp", proto::Environment::Test)
                .await
                .name;
            confirm_account(&server, &test, Environment::Test, TEST_PASSWORD).await;
            let creditor = create_creditor(&server, creditor_request(&test)).await;
            settle_company_settings(
                &server,
                Environment::Test,
                &creditor,
                Some(gp_company_settings()),
            )
            .await;
            client
                .update_invoice_settings(proto::UpdateInvoiceSettingsRequest {
                    name: creditor.name.clone(),
                    invoice_settings: Some(proto::InvoiceSettings {
                        next_invoice_number: 5001,
                        payment_terms: Some(proto::PaymentTerms {
                            invoice_lead_time_days: 14,
                            due_days: 14,
                            grace_period_days: 5,
                            write_off_days: 90,
                            currency: "sek".into(),
                        }),
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
            // In test the account's one user is the API user.
            let registered =
                register_api_credentials(&server, &creditor.name, ACCOUNT_EMAIL, TEST_PASSWORD)
                    .await;
            let access = registered.creditors[0].api_access.clone().unwrap();
            assert!(
                access.warnings.is_empty(),
                "the test account user is fine as API user"
            );
            assert!(
                access
                    .credential
                    .as_ref()
                    .unwrap()
                    .fingerprint
                    .starts_with("sha256:")
            );
            assert_eq!(registered.next_due[0].item, "payment_configuration.read");

            let audited_before = audit_lines(&logs, &creditor.name).len();
            let configuration = payment_configuration(&server, &creditor.name)
                .await
                .unwrap();
            assert_eq!(
                configuration.api_base_url,
                server.simulator(Environment::Test).base_url()
            );
            assert_eq!(
                configuration.creditor_public_id,
                creditor.creditor_public_id
            );
            assert_eq!(configuration.username, ACCOUNT_EMAIL);
            let terms = configuration.payment_terms.clone().unwrap();
            assert_eq!((terms.due_days, terms.currency.as_str()), (14, "SEK"));
            assert!(token_works(&configuration, Environment::Test).await);
            // Every read of the credential is an audit log line with its reader; only a caller's
            // first read of a credential is also in the audit trail.
            payment_configuration(&server, &creditor.name)
                .await
                .unwrap();
            let reads: Vec<_> = events(&server, &test)
                .await
                .into_iter()
                .filter(|event| event.method == "GetPaymentConfiguration")
                .collect();
            assert_eq!(reads.len(), 1);
            assert!(reads.iter().all(|event| event.actor == "sandbox-developer"));
            let audited = audit_lines(&logs, &creditor.name).split_off(audited_before);
            assert_eq!(audited.len(), 2, "one audit line per read: {audited:?}");
            let fingerprint = access.credential.as_ref().unwrap().fingerprint.clone();
            for line in &audited {
                assert_eq!(line["fields"]["caller"], "sandbox-developer");
                assert_eq!(line["fields"]["fingerprint"], fingerprint.as_str());
                assert!(
                    !line["fields"]["request_id"]
                        .as_str()
                        .unwrap_or("")
                        .is_empty()
                );
                assert!(!line.to_string().contains(&configuration.secure_token));
            }
            client
                .record_webhook_setup(proto::RecordWebhookSetupRequest {
                    name: creditor.name.clone(),
                    target_url: "https://stage.payway.example/billecta/webhooks".into(),
                    events: vec!["InvoicePaymentReceived".into(), "UnmatchedPayment".into()],
                    authorization: format!("Bearer {WEBHOOK_SECRET}"),
                    attested_by: "ops@payway.se".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_ready(&server, &test).await;
            let validated = validate(&server, &test).await;
            let failed: Vec<_> = validated
                .checks
                .iter()
                .filter(|check| check.result != proto::CheckResult::Pass as i32)
                .collect();
            assert!(failed.is_empty(), "{failed:?}");
            assert_eq!(
                state(validated.onboarding.as_ref().unwrap()),
                proto::OnboardingState::Ready
            );
            // One user, one sign-in: the registration with the same password used the stored
            // token, and no check signed in.
            assert_eq!(
                server.simulator(Environment::Test).sign_ins(ACCOUNT_EMAIL),
                1,
                "{sign_in}"
            );

            // ---- promotion ----
            let production = promote(&server, &test).await.unwrap();
            assert_eq!(production.name, "tenants/gp/environments/production");
            assert_eq!(production.next_due[0].item, "agreement.record");
            let promoted = &production.creditors[0];
            assert_eq!(
                promoted
                    .company_settings
                    .as_ref()
                    .unwrap()
                    .bankgiro_invoicing,
                "5050-1055"
            );
            assert!(
                promoted.api_access.is_none(),
                "credentials are never copied"
            );
            assert!(production.account.is_none());

            // ---- production ----
            let name = production.name.clone();
            confirm_account(&server, &name, Environment::Production, PRODUCTION_PASSWORD).await;
            let creditor = create_creditor(&server, creditor_request(&name)).await;
            // The promoted settings apply without being given again.
            settle_company_settings(&server, Environment::Production, &creditor, None).await;
            client
                .update_invoice_settings(proto::UpdateInvoiceSettingsRequest {
                    name: creditor.name.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let in_billecta = server.simulator(Environment::Production).state().creditors[0]
                .view
                .clone();
            assert_eq!(in_billecta["NextInvoiceNumber"], "5001");
            assert_eq!(in_billecta["City"], "Göteborg");

            // A person creates a separate API user in the portal, with rights on the creditor.
            let account =
                common::simulator_account(&server, Environment::Production, ACCOUNT_EMAIL);
            let api_user_id = server
                .simulator(Environment::Production)
                .create_user(
                    account,
                    NewUser {
                        username: API_USER.into(),
                        email: Some(API_USER.into()),
                        password: Some(API_PASSWORD.into()),
                        is_api_user: true,
                        creditors: vec![creditor.creditor_public_id.parse().unwrap()],
                        ..NewUser::default()
                    },
                )
                .unwrap()
                .user_public_id;
            let registered =
                register_api_credentials(&server, &creditor.name, API_USER, API_PASSWORD).await;
            assert!(
                registered.creditors[0]
                    .api_access
                    .as_ref()
                    .unwrap()
                    .warnings
                    .is_empty()
            );
            let configuration = payment_configuration(&server, &creditor.name)
                .await
                .unwrap();
            assert!(token_works(&configuration, Environment::Production).await);
            assert_eq!(configuration.password, API_PASSWORD);
            skip_webhooks(&server, &creditor.name, "webhooks are set up next quarter").await;
            assert_ready(&server, &name).await;
            let validated = validate(&server, &name).await;
            assert_eq!(
                state(validated.onboarding.as_ref().unwrap()),
                proto::OnboardingState::Ready,
                "{:?}",
                validated.checks
            );
            assert!(token_works(&configuration, Environment::Production).await);
            // One sign-in per user: the account's and the API user's.
            let production_sim = server.simulator(Environment::Production);
            assert_eq!(
                (
                    production_sim.sign_ins(ACCOUNT_EMAIL),
                    production_sim.sign_ins(API_USER)
                ),
                (1, 1),
                "{sign_in}"
            );

            // ---- someone deletes the API user in Billecta ----
            server
                .simulator(Environment::Production)
                .delete_user(api_user_id)
                .unwrap();
            let report = validate(&server, &name).await;
            let broken = report
                .checks
                .iter()
                .find(|check| check.check == "api_access.reads_creditor")
                .unwrap();
            assert_eq!(broken.result, proto::CheckResult::Fail as i32);
            assert!(broken.critical);
            assert_eq!(broken.reason, "TOKEN_REJECTED");
            assert!(broken.message.contains("removed"), "{}", broken.message);
            // The account lists Billecta's users: the API user is named as removed.
            let removed = report
                .checks
                .iter()
                .find(|check| check.check == "api_access.user_exists")
                .unwrap();
            assert_eq!(
                (removed.result, removed.reason.as_str()),
                (proto::CheckResult::Fail as i32, "API_USER_REMOVED")
            );
            assert!(removed.message.contains(API_USER), "{}", removed.message);
            let onboarding = report.onboarding.unwrap();
            assert_eq!(state(&onboarding), proto::OnboardingState::Broken);
            let access = stage_status(&onboarding.creditors[0].stages, proto::Stage::ApiAccess);
            assert_eq!(access.state, proto::StageState::Broken as i32);
            assert_eq!(access.reason, "API_USER_REMOVED");
            assert_eq!(onboarding.next_due[0].item, "api_access.register");
            let trail = events(&server, &name).await;
            assert!(trail.iter().any(|event| {
                event.method == "ValidateOnboarding"
                    && event
                        .transitions
                        .iter()
                        .any(|t| t.to_state == proto::StageState::Broken as i32)
            }));

            // No secret anywhere a caller reads, except the payment configuration itself.
            let listed = server
                .client
                .clone()
                .list_onboardings(proto::ListOnboardingsRequest::default())
                .await
                .unwrap()
                .into_inner();
            let read = format!(
                "{:?} {:?} {:?} {:?} {:?}",
                common::get(&server, &test).await.unwrap(),
                onboarding,
                listed,
                events(&server, &test).await,
                events(&server, &name).await
            );
            for secret in SECRETS {
                assert!(!read.contains(secret), "{secret} shown");
            }
            assert!(!read.contains(&configuration.secure_token));

            // Stored only encrypted: no secret in any row or file of the database.
            let stored = common::stored_everything(&server.database).await;
            for secret in SECRETS
                .into_iter()
                .chain([configuration.secure_token.as_str()])
            {
                assert!(
                    !common::contains(&stored, secret),
                    "{secret} stored in plain text"
                );
            }
            let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            assert!(
                !logged.contains(&configuration.secure_token),
                "a token was logged"
            );
        }
    })
    .await;

    // Nor in any log line, at debug level, of the service, its client or the simulators.
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logged.contains("billecta"), "the logs were captured");
    for secret in SECRETS {
        assert!(!logged.contains(secret), "{secret} logged");
    }
}

#[tokio::test]
async fn production_flags_an_api_user_that_is_the_account_user_and_only_ready_test_promotes() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let test = common::create(&server, "hd", proto::Environment::Test)
            .await
            .name;
        let refused = promote(&server, &test).await.unwrap_err();
        assert_refused(&refused, Code::FailedPrecondition, "ONBOARDING_NOT_READY");
        let not_test = promote(&server, "tenants/hd/environments/production")
            .await
            .unwrap_err();
        assert_eq!(common::bad_fields(&not_test), ["name"]);

        let production = common::create(&server, "hd", proto::Environment::Production)
            .await
            .name;
        confirm_account(
            &server,
            &production,
            Environment::Production,
            PRODUCTION_PASSWORD,
        )
        .await;
        let creditor = create_creditor(
            &server,
            proto::CreateCreditorRequest {
                parent: production.clone(),
                organisation_number: ORG_NO.into(),
                company_name: "Hallands Nyheter AB".into(),
                ..Default::default()
            },
        )
        .await;
        // Hallands Nyheter's address, with the same bankgiros.
        let settings = proto::CompanySettings {
            address: "Storgatan 2".into(),
            zip_code: "302 42".into(),
            city: "Halmstad".into(),
            ..gp_company_settings()
        };
        settle_company_settings(&server, Environment::Production, &creditor, Some(settings)).await;
        let registered =
            register_api_credentials(&server, &creditor.name, ACCOUNT_EMAIL, PRODUCTION_PASSWORD)
                .await;
        let creditor = &registered.creditors[0];
        assert_eq!(
            creditor.api_access.as_ref().unwrap().warnings,
            ["API_USER_IS_ACCOUNT_USER"]
        );
        let api_stage = stage_status(&creditor.stages, proto::Stage::ApiAccess);
        assert_eq!(api_stage.reason, "API_ACCESS_VERIFIED_WITH_WARNINGS");
        let report = validate(&server, &production).await;
        let flagged = report
            .checks
            .iter()
            .find(|check| check.check == "api_access.separate_user")
            .expect("the shared user is reported");
        assert_eq!(flagged.result, proto::CheckResult::Warn as i32);
        assert_eq!(flagged.reason, "API_USER_IS_ACCOUNT_USER");

        // Wrong credentials for the API user: refused, and API_ACCESS stays as it was.
        let wrong = client
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.name.clone(),
                secure_token: "bm90LWEtdG9rZW4=".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_refused(
            &wrong,
            Code::FailedPrecondition,
            "BILLECTA_CREDENTIALS_REJECTED",
        );
        assert!(!wrong.message().contains("bm90LWEtdG9rZW4="));
        let after = common::get(&server, &production).await.unwrap();
        assert_eq!(
            after.creditors[0].api_access.as_ref().unwrap().warnings,
            ["API_USER_IS_ACCOUNT_USER"],
            "the registered credentials stay"
        );
    })
    .await;
}
