//! Credentials as Billecta issues them, on SQLite and PostgreSQL, under both answers Billecta's
//! sign-in may give (the live token, or a new one that invalidates it): one token per user, a sign-in
//! only when no stored token works, a refused token renewed once with the stored password, and every
//! changed token handed to Payway's payment code before the onboarding counts as READY again.
//!
//! The tests run on two workers: a connection the server is still opening when a test's PostgreSQL
//! database is dropped (on the test's thread) must be able to finish, or DROP DATABASE waits for it.

mod common;

use billecta_client::Deadline;
use billecta_onboarding::domain::Environment;
use billecta_onboarding::secret::Secret;
use billecta_sim::{ApiUsers, NewUser};
use common::{
    ACCOUNT_EMAIL, READY_PASSWORD, SignIn, TestServer, for_each_backend,
    for_each_backend_and_sign_in, payment_configuration, proto, ready_onboarding, stage_status,
    validate,
};

fn state(onboarding: &proto::Onboarding) -> proto::OnboardingState {
    proto::OnboardingState::try_from(onboarding.state).unwrap()
}

/// The creditor of the READY test onboarding `ready_onboarding` makes.
async fn creditor_of(server: &TestServer, name: &str) -> proto::Creditor {
    common::get(server, name).await.unwrap().creditors[0].clone()
}

/// A READY test onboarding whose payment configuration Payway's payment code read: its name, its
/// creditor and the token Payway holds.
async fn ready_and_read(server: &TestServer) -> (String, proto::Creditor, String) {
    let name = ready_onboarding(server).await;
    let creditor = creditor_of(server, &name).await;
    let held = payment_configuration(server, &creditor.name)
        .await
        .unwrap()
        .secure_token;
    (name, creditor, held)
}

/// Billecta accepts `token`: it reads the creditor.
async fn works(server: &TestServer, token: &str, creditor: &proto::Creditor) -> bool {
    common::test_billecta(server)
        .get_creditor(
            &Secret::new(token),
            &creditor.creditor_public_id,
            Deadline::none(),
        )
        .await
        .is_ok()
}

/// The user's token stops working, as when someone revokes it in Billecta.
async fn revoke(server: &TestServer, token: &str) {
    common::test_billecta(server)
        .revoke_token(&Secret::new(token), Deadline::none())
        .await
        .unwrap();
}

fn sign_ins(server: &TestServer) -> u64 {
    server.simulator(Environment::Test).sign_ins(ACCOUNT_EMAIL)
}

fn check<'a>(
    report: &'a proto::ValidateOnboardingResponse,
    name: &str,
) -> &'a proto::ValidationCheck {
    report
        .checks
        .iter()
        .find(|check| check.check == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", report.checks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_renewed_once_and_reaches_payway_before_ready() {
    for_each_backend_and_sign_in(|server, sign_in| async move {
        let (name, creditor, held) = ready_and_read(&server).await;
        assert_eq!(sign_ins(&server), 1, "{sign_in}");

        // The user's token dies in Billecta (revoked): the next check signs in once with the
        // stored password and carries on with the new token.
        revoke(&server, &held).await;
        let report = validate(&server, &name).await;
        let signs_in = check(&report, "account.signs_in");
        assert_eq!(
            (signs_in.result, signs_in.reason.as_str()),
            (proto::CheckResult::Warn as i32, "TOKEN_RENEWED"),
            "{sign_in}: {signs_in:?}"
        );
        let reads = check(&report, "api_access.reads_creditor");
        assert_ne!(reads.result, proto::CheckResult::Fail as i32, "{reads:?}");
        assert_eq!(
            sign_ins(&server),
            2,
            "{sign_in}: one renewal for the one user"
        );

        // Payway's payment code holds a dead token: the onboarding is not READY until it reads the
        // new one, and says why.
        let onboarding = report.onboarding.unwrap();
        assert_eq!(state(&onboarding), proto::OnboardingState::ActionRequired);
        let configuration = stage_status(
            &onboarding.creditors[0].stages,
            proto::Stage::PaymentConfiguration,
        );
        assert_eq!(configuration.reason, "SECURE_TOKEN_CHANGED");
        assert_eq!(
            configuration.blocked_on,
            proto::BlockedOn::PaywayOperations as i32
        );
        assert!(
            configuration.message.contains("refused"),
            "{}",
            configuration.message
        );
        assert_eq!(onboarding.next_due[0].item, "payment_configuration.read");
        let trail = common::events(&server, &name).await;
        let renewal = trail.last().unwrap();
        assert!(
            renewal.summary.contains("signed in again") && renewal.summary.contains(&creditor.name),
            "{}",
            renewal.summary
        );

        let read = payment_configuration(&server, &creditor.name)
            .await
            .unwrap()
            .secure_token;
        assert_ne!(read, held);
        assert!(works(&server, &read, &creditor).await);
        assert_eq!(
            state(&common::get(&server, &name).await.unwrap()),
            proto::OnboardingState::Ready
        );
        // Nothing more to renew: the next check signs nobody in.
        let again = validate(&server, &name).await;
        assert!(
            again
                .checks
                .iter()
                .all(|check| check.result == proto::CheckResult::Pass as i32),
            "{:?}",
            again.checks
        );
        assert_eq!(sign_ins(&server), 2);
        assert_eq!(
            state(again.onboarding.as_ref().unwrap()),
            proto::OnboardingState::Ready
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_renews_a_refused_account_token_and_carries_on() {
    for_each_backend_and_sign_in(|server, sign_in| async move {
        let (name, creditor) = common::settled_creditor(&server).await;
        // A token of the account user, as Payway's payment code or a person would hold it.
        let token = common::account_token(&common::test_billecta(&server)).await;
        let before = sign_ins(&server);
        revoke(&server, token.expose()).await;
        if sign_in == SignIn::ReturnsLiveToken {
            // The live token was the stored one; with the other answer the sign-in above replaced
            // the stored token already.
            assert!(!works(&server, token.expose(), &creditor).await);
        }

        let updated = server
            .client
            .clone()
            .update_invoice_settings(proto::UpdateInvoiceSettingsRequest {
                name: creditor.name.clone(),
                invoice_settings: Some(proto::InvoiceSettings {
                    next_invoice_number: 7001,
                    payment_terms: None,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .onboarding
            .unwrap();
        assert_eq!(
            common::stage_state(&updated.creditors[0].stages, proto::Stage::InvoiceSettings),
            proto::StageState::Completed,
            "{sign_in}"
        );
        assert_eq!(sign_ins(&server), before + 1, "{sign_in}: renewed once");
        let trail = common::events(&server, &name).await;
        assert!(
            trail.last().unwrap().summary.contains("signed in again"),
            "{}",
            trail.last().unwrap().summary
        );
        // The renewed token is the one stored: the next stage needs no sign-in.
        let validated = validate(&server, &name).await;
        assert_eq!(
            check(&validated, "account.signs_in").result,
            proto::CheckResult::Pass as i32
        );
        assert_eq!(sign_ins(&server), before + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_says_whether_a_sign_in_would_replace_a_token_payway_holds() {
    for_each_backend(|server| async move {
        let name = ready_onboarding(&server).await;
        let creditor = creditor_of(&server, &name).await;
        let before = common::get(&server, &name).await.unwrap();
        let confirm = |password: &str| proto::ConfirmAccountActivationRequest {
            validate_only: true,
            ..common::confirm_request(&name, password)
        };
        let account_message = |onboarding: proto::Onboarding| {
            stage_status(&onboarding.stages, proto::Stage::Account)
                .message
                .clone()
        };

        let same = server
            .client
            .clone()
            .confirm_account_activation(confirm(READY_PASSWORD))
            .await
            .unwrap()
            .into_inner()
            .onboarding
            .unwrap();
        let said = account_message(same);
        assert!(said.contains("Would use the stored SecureToken"), "{said}");

        let other = server
            .client
            .clone()
            .confirm_account_activation(confirm("Vår-2027-lösen"))
            .await
            .unwrap()
            .into_inner()
            .onboarding
            .unwrap();
        let said = account_message(other);
        assert!(said.contains("Would sign in"), "{said}");
        assert!(
            said.contains(&creditor.name),
            "names what it may break: {said}"
        );

        // The API credentials: the same user, so the same answer.
        let api = server
            .client
            .clone()
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.name.clone(),
                username: ACCOUNT_EMAIL.into(),
                password: "Vår-2027-lösen".into(),
                validate_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .onboarding
            .unwrap();
        let said = stage_status(&api.creditors[0].stages, proto::Stage::ApiAccess)
            .message
            .clone();
        assert!(said.contains("Would sign in"), "{said}");

        // Nothing was done.
        assert_eq!(sign_ins(&server), 1);
        let after = common::get(&server, &name).await.unwrap();
        assert_eq!(after.etag, before.etag);
        assert_eq!(after.last_event, before.last_event);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_signs_in_and_a_replaced_token_reaches_payway() {
    for_each_backend_and_sign_in(|server, sign_in| async move {
        let (name, creditor, held) = ready_and_read(&server).await;
        // A person changes the password in the portal and confirms the account with it.
        let simulator = server.simulator(Environment::Test);
        let user = simulator.state().users[0].user_public_id;
        simulator.set_password(user, "Vår-2027-lösen").unwrap();
        let confirmed = server
            .client
            .clone()
            .confirm_account_activation(common::confirm_request(&name, "Vår-2027-lösen"))
            .await
            .unwrap()
            .into_inner()
            .onboarding
            .unwrap();
        assert_eq!(
            sign_ins(&server),
            2,
            "{sign_in}: the new password had to sign in"
        );
        let configuration = stage_status(
            &confirmed.creditors[0].stages,
            proto::Stage::PaymentConfiguration,
        );
        let event = common::events(&server, &name).await.pop().unwrap();
        match sign_in {
            SignIn::ReturnsLiveToken => {
                // The token Payway holds still works: nothing for Payway to do.
                assert!(works(&server, &held, &creditor).await);
                assert_eq!(state(&confirmed), proto::OnboardingState::Ready);
                assert!(event.summary.contains("kept"), "{}", event.summary);
            }
            SignIn::IssuesNewToken => {
                assert!(!works(&server, &held, &creditor).await);
                assert_eq!(state(&confirmed), proto::OnboardingState::ActionRequired);
                assert_eq!(configuration.reason, "SECURE_TOKEN_CHANGED");
                assert!(
                    configuration.message.contains("ConfirmAccountActivation"),
                    "names the cause: {}",
                    configuration.message
                );
                assert!(
                    event.summary.contains("new SecureToken")
                        && event.summary.contains(&creditor.name),
                    "{}",
                    event.summary
                );
                let read = payment_configuration(&server, &creditor.name)
                    .await
                    .unwrap();
                assert!(works(&server, &read.secure_token, &creditor).await);
                assert_eq!(read.password, "Vår-2027-lösen");
                assert_eq!(
                    state(&common::get(&server, &name).await.unwrap()),
                    proto::OnboardingState::Ready
                );
            }
        }
    })
    .await;
}

/// A production onboarding of the tenant with its creditor settled; its name and the creditor.
async fn production_creditor(server: &TestServer) -> (String, proto::Creditor) {
    let production = common::create(server, "gp", proto::Environment::Production)
        .await
        .name;
    common::confirm_account(server, &production, Environment::Production, READY_PASSWORD).await;
    let creditor = common::create_creditor(server, common::creditor_request(&production)).await;
    common::settle_company_settings(
        server,
        Environment::Production,
        &creditor,
        Some(common::gp_company_settings()),
    )
    .await;
    (production, creditor)
}

/// A person creates an API user with rights on `creditor` in the production portal; its id.
fn portal_api_user(
    server: &TestServer,
    creditor: &proto::Creditor,
    username: &str,
    password: &str,
) -> uuid::Uuid {
    let account = common::simulator_account(server, Environment::Production, ACCOUNT_EMAIL);
    server
        .simulator(Environment::Production)
        .create_user(
            account,
            NewUser {
                username: username.into(),
                password: Some(password.into()),
                is_api_user: true,
                creditors: vec![creditor.creditor_public_id.parse().unwrap()],
                ..NewUser::default()
            },
        )
        .unwrap()
        .user_public_id
}

async fn register_password(
    server: &TestServer,
    creditor: &proto::Creditor,
    username: &str,
    password: &str,
) -> proto::Onboarding {
    server
        .client
        .clone()
        .register_api_credentials(proto::RegisterApiCredentialsRequest {
            name: creditor.name.clone(),
            username: username.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .onboarding
        .unwrap()
}

/// Whether `token` reads `creditor` in the production simulator.
async fn works_in_production(server: &TestServer, token: &str, creditor: &proto::Creditor) -> bool {
    billecta_client::BillectaClient::new(
        Environment::Production,
        billecta_client::ClientSettings::new(server.simulator(Environment::Production).base_url()),
    )
    .unwrap()
    .get_creditor(
        &Secret::new(token),
        &creditor.creditor_public_id,
        Deadline::none(),
    )
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_credential_is_rotated_to_another_user_without_an_outage() {
    for_each_backend_and_sign_in(|server, sign_in| async move {
        let (name, creditor) = production_creditor(&server).await;
        portal_api_user(&server, &creditor, "api-2026@gp.se", "Första-lösen");
        register_password(&server, &creditor, "api-2026@gp.se", "Första-lösen").await;
        common::skip_webhooks(&server, &creditor.name, "later").await;
        let held = payment_configuration(&server, &creditor.name).await.unwrap();
        assert_eq!(
            state(&common::get(&server, &name).await.unwrap()),
            proto::OnboardingState::Ready
        );

        // The operator registers a new API user's credentials as the next credential.
        portal_api_user(&server, &creditor, "api-2027@gp.se", "Andra-lösen");
        let rotating = register_password(&server, &creditor, "api-2027@gp.se", "Andra-lösen").await;
        assert_eq!(state(&rotating), proto::OnboardingState::ActionRequired);
        assert_eq!(rotating.next_due[0].item, "payment_configuration.read");
        let event = common::events(&server, &name).await.pop().unwrap();
        assert!(event.summary.contains("Rotating from api-2026@gp.se"), "{}", event.summary);
        // Until Payway reads it, the previous credential stays valid, and both are checked.
        assert!(works_in_production(&server, &held.secure_token, &creditor).await);
        let report = validate(&server, &name).await;
        for name in ["api_access.reads_creditor", "api_access.previous_reads_creditor"] {
            let checked = check(&report, name);
            assert_eq!(checked.result, proto::CheckResult::Pass as i32, "{sign_in}: {checked:?}");
        }

        let read = payment_configuration(&server, &creditor.name).await.unwrap();
        assert_eq!(read.username, "api-2027@gp.se");
        assert_eq!(read.password, "Andra-lösen");
        assert_ne!(read.secure_token, held.secure_token);
        assert!(works_in_production(&server, &read.secure_token, &creditor).await);
        let done = common::events(&server, &name).await.pop().unwrap();
        assert!(
            done.summary.contains("api-2026@gp.se") && done.summary.contains("removed"),
            "the event names the user that may now be removed: {}",
            done.summary
        );
        let after = common::get(&server, &name).await.unwrap();
        assert_eq!(state(&after), proto::OnboardingState::Ready);
        let report = validate(&server, &name).await;
        assert!(
            report
                .checks
                .iter()
                .all(|c| c.check != "api_access.previous_reads_creditor"),
            "the previous credential is gone"
        );
        // Only the account's user and the new API user's secrets are stored.
        let pool = common::database_pool(&server.database).await;
        let principals: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT DISTINCT principal FROM credentials c JOIN onboardings o ON o.id = c.onboarding_id \
             WHERE o.environment = 'production' ORDER BY principal",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        assert_eq!(
            principals,
            [Some("api-2027@gp.se".to_owned()), Some(ACCOUNT_EMAIL.to_owned())]
        );
        let production = server.simulator(Environment::Production);
        assert_eq!(
            (production.sign_ins("api-2026@gp.se"), production.sign_ins("api-2027@gp.se")),
            (1, 1),
            "{sign_in}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_registered_without_a_password_breaks_api_access() {
    for_each_backend(|server| async move {
        let name = ready_onboarding(&server).await;
        // In production a separate API user; here a second token-only user is not possible (the
        // test environment has one user), so production plays it.
        let (production, prod_creditor) = production_creditor(&server).await;
        let simulator = server.simulator(Environment::Production);
        let api_user = portal_api_user(&server, &prod_creditor, "api@gp.se", "Api-lösen");
        // Payway's operator signs in as the API user and registers only the token.
        let billecta = billecta_client::BillectaClient::new(
            Environment::Production,
            billecta_client::ClientSettings::new(simulator.base_url()),
        )
        .unwrap();
        let token = billecta
            .authenticate("api@gp.se", &Secret::new("Api-lösen"), Deadline::none())
            .await
            .unwrap()
            .value;
        server
            .client
            .clone()
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: prod_creditor.name.clone(),
                username: "api@gp.se".into(),
                secure_token: token.expose().to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        billecta
            .revoke_token(&token, Deadline::none())
            .await
            .unwrap();

        let report = validate(&server, &production).await;
        let reads = check(&report, "api_access.reads_creditor");
        assert_eq!(reads.result, proto::CheckResult::Fail as i32);
        assert_eq!(reads.reason, "TOKEN_REJECTED");
        assert!(reads.message.contains("no password"), "{}", reads.message);
        let onboarding = report.onboarding.clone().unwrap();
        let access = stage_status(&onboarding.creditors[0].stages, proto::Stage::ApiAccess);
        assert_eq!(access.state, proto::StageState::Broken as i32);
        let due: Vec<_> = onboarding
            .next_due
            .iter()
            .map(|item| item.item.as_str())
            .collect();
        assert!(due.contains(&"api_access.register"), "{due:?}");
        assert_eq!(
            simulator.sign_ins("api@gp.se"),
            1,
            "only the operator's own"
        );
        let exists = check(&report, "api_access.user_exists");
        assert_eq!(exists.result, proto::CheckResult::Pass as i32, "{exists:?}");

        // Someone disables the API user in the portal: named as such.
        simulator.set_user_enabled(api_user, false).unwrap();
        let report = validate(&server, &production).await;
        let exists = check(&report, "api_access.user_exists");
        assert_eq!(
            (exists.result, exists.reason.as_str()),
            (proto::CheckResult::Fail as i32, "API_USER_DISABLED")
        );
        assert!(exists.message.contains("api@gp.se"), "{}", exists.message);
        // The test onboarding is untouched by production's trouble.
        assert_eq!(
            state(&common::get(&server, &name).await.unwrap()),
            proto::OnboardingState::Ready
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_access_goes_ahead_while_the_bankgiro_awaits_approval_but_ready_waits_for_it() {
    for_each_backend(|server| async move {
        let name = common::create(&server, "gp", proto::Environment::Test)
            .await
            .name;
        common::confirm_account(&server, &name, Environment::Test, READY_PASSWORD).await;
        let creditor = common::create_creditor(&server, common::creditor_request(&name)).await;
        server
            .client
            .clone()
            .update_company_settings(proto::UpdateCompanySettingsRequest {
                name: creditor.name.clone(),
                company_settings: Some(common::gp_company_settings()),
                ..Default::default()
            })
            .await
            .unwrap();
        let registered = register_password(&server, &creditor, ACCOUNT_EMAIL, READY_PASSWORD).await;
        let stages = &registered.creditors[0].stages;
        assert_eq!(
            common::stage_state(stages, proto::Stage::ApiAccess),
            proto::StageState::Completed
        );
        assert_eq!(
            common::stage_state(stages, proto::Stage::CompanySettings),
            proto::StageState::ActionRequired
        );
        payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        common::skip_webhooks(&server, &creditor.name, "later").await;
        let waiting = common::get(&server, &name).await.unwrap();
        assert_eq!(state(&waiting), proto::OnboardingState::ActionRequired);
        assert_eq!(
            waiting.next_due[0].item,
            "company_settings.bankgiro_payments"
        );
        assert_eq!(waiting.blocked_on, proto::BlockedOn::BillectaSupport as i32);
    })
    .await;
}

async fn create_api_user(
    server: &TestServer,
    creditor: &proto::Creditor,
    username: &str,
    validate_only: bool,
) -> Result<proto::Onboarding, tonic::Status> {
    Ok(server
        .client
        .clone()
        .create_api_user(proto::CreateApiUserRequest {
            name: creditor.name.clone(),
            username: username.into(),
            validate_only,
            ..Default::default()
        })
        .await?
        .into_inner()
        .onboarding
        .unwrap())
}

/// Billecta is down for an administrator's tokens (more often than the client retries).
fn tokens_unavailable(simulator: &billecta_sim::RunningSimulator) {
    common::fail_next(
        simulator,
        "POST /v1/authentication/securetoken/{id}",
        billecta_sim::Fault::Status {
            status: 503,
            body: billecta_sim::FaultBody::Json,
        },
        20,
    );
}

/// The production simulator's users named `username`.
fn users_named(server: &TestServer, username: &str) -> Vec<billecta_sim::UserState> {
    server
        .simulator(Environment::Production)
        .state()
        .users
        .into_iter()
        .filter(|user| user.username.eq_ignore_ascii_case(username))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_api_user_makes_a_dedicated_user_and_registers_its_token() {
    for_each_backend_and_sign_in(|server, sign_in| async move {
        // Not in test: an account there has one user.
        let (test, test_creditor) = common::settled_creditor(&server).await;
        let refused = create_api_user(&server, &test_creditor, "api@gp.se", false)
            .await
            .unwrap_err();
        common::assert_refused(&refused, tonic::Code::FailedPrecondition, "ONE_USER_ONLY");
        let _ = test;

        let (name, creditor) = production_creditor(&server).await;
        let planned = create_api_user(&server, &creditor, "api@gp.se", true)
            .await
            .unwrap();
        let access = stage_status(&planned.creditors[0].stages, proto::Stage::ApiAccess);
        assert!(
            access.message.contains("Would create"),
            "{}",
            access.message
        );
        assert!(
            users_named(&server, "api@gp.se").is_empty(),
            "validate_only made nothing"
        );

        let made = create_api_user(&server, &creditor, "api@gp.se", false)
            .await
            .unwrap();
        let access = stage_status(&made.creditors[0].stages, proto::Stage::ApiAccess);
        assert_eq!(
            access.state,
            proto::StageState::Completed as i32,
            "{access:?}"
        );
        assert!(
            made.creditors[0]
                .api_access
                .as_ref()
                .unwrap()
                .warnings
                .is_empty(),
            "a user of its own"
        );
        let user = &users_named(&server, "api@gp.se")[0];
        assert!(user.is_api_user && !user.is_administrator);
        assert_eq!(user.rights.len(), 1, "rights on this creditor only");
        let configuration = payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        assert_eq!(configuration.username, "api@gp.se");
        assert_eq!(
            configuration.password, "",
            "the generated password is the service's own, never shown"
        );
        assert!(works_in_production(&server, &configuration.secure_token, &creditor).await);
        assert_eq!(
            server
                .simulator(Environment::Production)
                .sign_ins("api@gp.se"),
            1,
            "{sign_in}"
        );
        assert_eq!(
            made.creditors[0]
                .api_access
                .as_ref()
                .unwrap()
                .credential
                .as_ref()
                .unwrap()
                .principal,
            "api@gp.se"
        );
        let report = validate(&server, &name).await;
        assert_eq!(
            check(&report, "api_access.user_exists").result,
            proto::CheckResult::Pass as i32
        );

        // A username Billecta already has is refused, and nothing is made.
        portal_api_user(&server, &creditor, "someone@gp.se", "Hennes-lösen");
        let taken = create_api_user(&server, &creditor, "someone@gp.se", false)
            .await
            .unwrap_err();
        common::assert_refused(&taken, tonic::Code::FailedPrecondition, "USERNAME_TAKEN");
        assert_eq!(users_named(&server, "someone@gp.se").len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_api_user_copes_with_each_way_billecta_may_treat_api_users() {
    for_each_backend(|server| async move {
        let (_, creditor) = production_creditor(&server).await;
        let simulator = server.simulator(Environment::Production);

        // API users are made in the portal only: the portal path, saying why; nothing made.
        simulator.set_api_users(ApiUsers::PortalOnly);
        let fallback = create_api_user(&server, &creditor, "api@gp.se", false)
            .await
            .unwrap();
        let access = stage_status(&fallback.creditors[0].stages, proto::Stage::ApiAccess);
        assert_eq!(access.state, proto::StageState::ActionRequired as i32);
        assert_eq!(access.reason, "API_USER_PORTAL_PATH");
        assert!(
            access.message.contains("creating the user"),
            "{}",
            access.message
        );
        assert_eq!(fallback.next_due[0].item, "api_access.register");
        assert!(users_named(&server, "api@gp.se").is_empty());

        // API users never sign in with a password; an administrator gives them a token. Billecta
        // is down just after the user is made: the next attempt carries that user on.
        simulator.set_api_users(ApiUsers::TokenFromAdministrator);
        tokens_unavailable(simulator);
        let down = create_api_user(&server, &creditor, "api@gp.se", false)
            .await
            .unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        assert_eq!(users_named(&server, "api@gp.se").len(), 1, "made");
        simulator.clear_faults();
        let done = create_api_user(&server, &creditor, "api@gp.se", false)
            .await
            .unwrap();
        let access = stage_status(&done.creditors[0].stages, proto::Stage::ApiAccess);
        assert_eq!(
            access.state,
            proto::StageState::Completed as i32,
            "{access:?}"
        );
        assert_eq!(users_named(&server, "api@gp.se").len(), 1, "not made twice");
        let configuration = payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        assert!(works_in_production(&server, &configuration.secure_token, &creditor).await);
        assert_eq!(simulator.sign_ins("api@gp.se"), 0, "never signed in");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_carries_on_an_api_user_billecta_was_down_for() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.reconcile_interval_ms = 200;
        })
        .await;
        let (name, creditor) = production_creditor(&server).await;
        let simulator = server.simulator(Environment::Production);
        simulator.set_api_users(ApiUsers::TokenFromAdministrator);
        tokens_unavailable(simulator);
        let down = create_api_user(&server, &creditor, "api@gp.se", false)
            .await
            .unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        simulator.clear_faults();

        let started = std::time::Instant::now();
        loop {
            let onboarding = common::get(&server, &name).await.unwrap();
            let access = stage_status(&onboarding.creditors[0].stages, proto::Stage::ApiAccess);
            if access.state == proto::StageState::Completed as i32 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "not carried on: {access:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(users_named(&server, "api@gp.se").len(), 1, "not made twice");
        let carried = common::events(&server, &name)
            .await
            .into_iter()
            .rev()
            .find(|event| event.method == "CreateApiUser")
            .unwrap();
        assert_eq!(
            (carried.actor.as_str(), carried.outcome.as_str()),
            ("reconciler", "OK")
        );
        let configuration = payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        assert!(works_in_production(&server, &configuration.secure_token, &creditor).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_shows_when_billecta_last_accepted_its_token() {
    for_each_backend(|server| async move {
        let name = ready_onboarding(&server).await;
        let verified = |onboarding: &proto::Onboarding| {
            let at = |credential: Option<&proto::Credential>| {
                let time = credential.unwrap().verify_time.unwrap();
                (time.seconds, time.nanos)
            };
            let api = at(onboarding.creditors[0]
                .api_access
                .as_ref()
                .unwrap()
                .credential
                .as_ref());
            (
                api,
                onboarding.creditors[0]
                    .api_access
                    .clone()
                    .unwrap()
                    .credential
                    .unwrap()
                    .fingerprint,
            )
        };
        let before = verified(&common::get(&server, &name).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let report = validate(&server, &name).await;
        let after = verified(report.onboarding.as_ref().unwrap());
        assert!(after.0 > before.0, "{before:?} then {after:?}");
        assert_eq!(after.1, before.1, "the same token, checked again");
        assert_eq!(sign_ins(&server), 1);
    })
    .await;
}
