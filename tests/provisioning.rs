//! The stages the service drives in Billecta, over real gRPC against the sandbox's simulator, on
//! SQLite and PostgreSQL: the account confirmed, a creditor created (never twice), company and
//! invoice settings, skipping; stage order, bad input, validate_only, Billecta failing midway, and no
//! secret anywhere but encrypted.

mod common;

use billecta_onboarding::domain::Environment;
use billecta_sim::{Fault, FaultBody, FaultRule};
use common::{
    ACCOUNT_EMAIL, ORG_NO, OnboardingOutcome, TestServer, activate_and_confirm_account,
    assert_refused, assert_retry_replays, bad_fields, confirm_request, create, create_creditor,
    creditor_request, events, fail_next, for_each_backend, gp_company_settings, proto, reason,
    register_account_in_portal, settle_company_settings, skip_webhooks, stage_state, stage_status,
    validate,
};
use std::time::Duration;
use tonic::Code;
use uuid::Uuid;

const PASSWORD: &str = "Höst-2026-lösenord!";

/// An onboarding of `environment` whose agreement is recorded and whose account is registered in
/// Billecta's portal (created, not yet activated). Returns its name and the simulator's account id.
async fn registered(server: &TestServer, environment: Environment) -> (String, Uuid) {
    let api_environment = match environment {
        Environment::Test => proto::Environment::Test,
        Environment::Production => proto::Environment::Production,
    };
    let name = create(server, "gp", api_environment).await.name;
    let account_id = register_account_in_portal(server, &name, environment).await;
    (name, account_id)
}

/// An onboarding of `environment` whose ACCOUNT is completed.
async fn activated(server: &TestServer, environment: Environment) -> String {
    let (name, account_id) = registered(server, environment).await;
    activate_and_confirm_account(server, &name, environment, account_id, PASSWORD).await;
    name
}

/// The sign-in with the password the account is activated with.
fn confirm(name: &str) -> proto::ConfirmAccountActivationRequest {
    confirm_request(name, PASSWORD)
}

/// Göteborgs-Posten's company settings as a caller types them: the postcode and the bankgiro for
/// invoicing without their separators, which the service adds.
fn unformatted_company_settings() -> proto::CompanySettings {
    proto::CompanySettings {
        zip_code: "41111".to_owned(),
        bankgiro_invoicing: "50501055".to_owned(),
        ..gp_company_settings()
    }
}

fn company_settings(name: &str) -> proto::UpdateCompanySettingsRequest {
    proto::UpdateCompanySettingsRequest {
        name: name.to_owned(),
        company_settings: Some(unformatted_company_settings()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_tenant_goes_from_a_registered_account_to_a_configured_creditor() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let simulator = server.simulator(Environment::Test);
        let (name, account_id) = registered(&server, Environment::Test).await;

        // Not activated yet: refused, with the likely causes named, and nothing changes.
        let before = common::get(&server, &name).await.unwrap();
        let refused = client
            .confirm_account_activation(confirm(&name))
            .await
            .unwrap_err();
        assert_refused(
            &refused,
            Code::FailedPrecondition,
            "BILLECTA_CREDENTIALS_REJECTED",
        );
        assert!(
            refused.message().contains("not activated"),
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains("production credentials"),
            "{}",
            refused.message()
        );
        assert!(!refused.message().contains(PASSWORD));
        let after = common::get(&server, &name).await.unwrap();
        assert_eq!(
            after.stages, before.stages,
            "a refused sign-in leaves ACCOUNT as it was"
        );
        assert_eq!(after.state, before.state);
        assert!(
            after.account.unwrap().credential.is_none(),
            "nothing is stored"
        );

        // The person activates the account; the sign-in completes ACCOUNT.
        simulator.activate_account(account_id, PASSWORD).unwrap();
        let confirmed = client
            .confirm_account_activation(confirm(&name))
            .await
            .onboarding();
        assert_eq!(
            stage_state(&confirmed.stages, proto::Stage::Account),
            proto::StageState::Completed
        );
        let account = confirmed.account.clone().unwrap();
        assert_eq!(account.username, ACCOUNT_EMAIL);
        let credential = account.credential.unwrap();
        assert!(
            credential.fingerprint.starts_with("hmac:"),
            "passwords get a keyed fingerprint"
        );
        assert_eq!(credential.principal, ACCOUNT_EMAIL);
        assert!(credential.verify_time.is_some());
        assert_eq!(confirmed.next_due[0].item, "creditor.create");

        // The creditor is created in Billecta.
        let created = client
            .create_creditor(creditor_request(&name))
            .await
            .unwrap()
            .into_inner();
        let creditor = created.creditor.unwrap();
        assert_eq!(creditor.name, format!("{name}/creditors/{ORG_NO}"));
        assert_eq!(
            stage_state(&creditor.stages, proto::Stage::Creditor),
            proto::StageState::Completed
        );
        assert!(!creditor.creditor_public_id.is_empty());
        assert_eq!(simulator.state().creditors.len(), 1);
        assert_creditor_exists_already(&server, &name).await;
        assert_eq!(simulator.state().creditors.len(), 1, "never two creditors");

        // Company settings: applied, the bankgiro for payments waits on Billecta's support.
        let waiting = client
            .update_company_settings(company_settings(&creditor.name))
            .await
            .onboarding();
        let settings_stage =
            stage_status(&waiting.creditors[0].stages, proto::Stage::CompanySettings).clone();
        assert_eq!(
            settings_stage.state,
            proto::StageState::ActionRequired as i32
        );
        assert_eq!(
            settings_stage.blocked_on,
            proto::BlockedOn::BillectaSupport as i32
        );
        assert_eq!(settings_stage.due, ["company_settings.bankgiro_payments"]);
        let stored = waiting.creditors[0].company_settings.clone().unwrap();
        assert_eq!(stored.zip_code, "411 11");
        assert_eq!(stored.bankgiro_invoicing, "5050-1055");
        assert_eq!(stored.country_code, "SE");
        assert!(!stored.bankgiro_payments_approved);
        let in_billecta = &simulator.state().creditors[0].view;
        assert_eq!(in_billecta["City"], "Göteborg");
        assert_eq!(
            in_billecta["CreditorBankInfo"]["PaymentMethods"][0]["Priority"],
            "Primary"
        );

        // Billecta's support approves; asking again completes the stage.
        simulator
            .approve_outgoing_bankgiro(creditor.creditor_public_id.parse().unwrap(), "5402-9681")
            .unwrap();
        let approved = client
            .update_company_settings(company_settings(&creditor.name))
            .await
            .onboarding();
        assert_eq!(
            stage_state(&approved.creditors[0].stages, proto::Stage::CompanySettings),
            proto::StageState::Completed
        );

        // Invoice settings; a number below Billecta's is refused and changes nothing.
        let invoice = |number: i64| proto::UpdateInvoiceSettingsRequest {
            name: creditor.name.clone(),
            invoice_settings: Some(proto::InvoiceSettings {
                next_invoice_number: number,
                ..Default::default()
            }),
            ..Default::default()
        };
        let numbered = client
            .update_invoice_settings(invoice(1023))
            .await
            .onboarding();
        assert_eq!(
            stage_state(&numbered.creditors[0].stages, proto::Stage::InvoiceSettings),
            proto::StageState::Completed
        );
        assert_eq!(
            simulator.state().creditors[0].view["NextInvoiceNumber"],
            "1023"
        );
        let behind = client
            .update_invoice_settings(invoice(10))
            .await
            .unwrap_err();
        assert_refused(&behind, Code::FailedPrecondition, "INVOICE_NUMBER_BEHIND");
        let unchanged = common::get(&server, &name).await.unwrap();
        assert_eq!(
            unchanged.creditors[0]
                .invoice_settings
                .as_ref()
                .unwrap()
                .next_invoice_number,
            1023
        );
        assert_eq!(
            simulator.state().creditors[0].view["NextInvoiceNumber"],
            "1023"
        );

        // Webhooks are optional: skipped on purpose.
        let skipped = skip_webhooks(
            &server,
            &creditor.name,
            "the tenant reconciles payments by file",
        )
        .await;
        let webhooks = stage_status(&skipped.creditors[0].stages, proto::Stage::Webhooks);
        assert_eq!(webhooks.state, proto::StageState::Skipped as i32);
        assert_eq!(skipped.next_due[0].item, "api_access.register");

        // The audit trail has every Billecta outcome, the refusals included.
        let trail = events(&server, &name).await;
        let outcomes: Vec<(&str, &str)> = trail
            .iter()
            .map(|event| (event.method.as_str(), event.outcome.as_str()))
            .collect();
        assert!(
            outcomes.contains(&("ConfirmAccountActivation", "FAILED_PRECONDITION")),
            "{outcomes:?}"
        );
        assert!(
            outcomes.contains(&("UpdateInvoiceSettings", "FAILED_PRECONDITION")),
            "{outcomes:?}"
        );
        assert!(outcomes.contains(&("CreateCreditor", "OK")), "{outcomes:?}");

        // Secrets: nowhere in what a caller reads, and only encrypted in the database.
        let read = format!("{skipped:?} {trail:?}");
        assert!(!read.contains(PASSWORD));
        let stored = common::stored_everything(&server.database).await;
        assert!(
            !common::contains(&stored, PASSWORD),
            "the password is stored in plain text"
        );
        assert!(!stored.is_empty());
    })
    .await;
}

#[tokio::test]
async fn stage_order_and_bad_input_are_refused_before_billecta_is_asked() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let simulator = server.simulator(Environment::Test);
        let (name, _) = registered(&server, Environment::Test).await;

        // Too early: the account is not confirmed.
        let early = client
            .create_creditor(creditor_request(&name))
            .await
            .unwrap_err();
        assert_refused(&early, Code::FailedPrecondition, "STAGES_NOT_COMPLETED");
        assert!(early.message().contains("ACCOUNT"), "{}", early.message());

        // Every bad field at once, nothing stored, nothing sent.
        let before = common::get(&server, &name).await.unwrap();
        let bad = client
            .create_creditor(proto::CreateCreditorRequest {
                parent: name.clone(),
                organisation_number: "556036-0794".into(),
                company_name: " ".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&bad), ["organisation_number", "company_name"]);
        let bad_settings = client
            .update_company_settings(proto::UpdateCompanySettingsRequest {
                name: format!("{name}/creditors/{ORG_NO}"),
                company_settings: Some(proto::CompanySettings {
                    zip_code: "4111".into(),
                    country_code: "Sweden".into(),
                    bankgiro_invoicing: "123-4567".into(),
                    ..unformatted_company_settings()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            bad_fields(&bad_settings),
            [
                "company_settings.zip_code",
                "company_settings.country_code",
                "company_settings.bankgiro_invoicing"
            ]
        );
        let skip_required = client
            .skip_stage(proto::SkipStageRequest {
                name: format!("{name}/creditors/{ORG_NO}"),
                stage: proto::Stage::Creditor as i32,
                reason: "no".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&skip_required), ["stage"]);
        let unknown = client
            .update_company_settings(company_settings(&format!("{name}/creditors/{ORG_NO}")))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);

        // validate_only checks, but contacts nobody and stores nothing.
        let checked = client
            .confirm_account_activation(proto::ConfirmAccountActivationRequest {
                validate_only: true,
                ..confirm(&name)
            })
            .await
            .unwrap();
        assert!(checked.into_inner().onboarding.is_some());
        let after = common::get(&server, &name).await.unwrap();
        assert_eq!(after.etag, before.etag);
        assert_eq!(
            simulator.request_count("POST /v1/authentication/apiauthenticate"),
            0
        );
        assert!(simulator.state().creditors.is_empty());
    })
    .await;
}

#[tokio::test]
async fn numbers_that_pass_the_check_digit_but_belong_to_nobody_are_refused() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        let sent_before = simulator.state().request_counts;

        // Each has a valid check digit: zeros, and a person's number whose month is 13.
        for nobody in ["000000-0000", "0000000000", "811318-9875"] {
            let refused = client
                .create_creditor(proto::CreateCreditorRequest {
                    organisation_number: nobody.into(),
                    ..creditor_request(&name)
                })
                .await
                .unwrap_err();
            assert_refused(&refused, Code::InvalidArgument, "INVALID_FIELDS");
            assert_eq!(bad_fields(&refused), ["organisation_number"], "{nobody}");
        }
        assert_eq!(
            simulator.state().request_counts,
            sent_before,
            "nothing was sent to Billecta"
        );
        assert!(simulator.state().creditors.is_empty());

        // A sole trader's personal identity number is a creditor's number too.
        let sole_trader = create_creditor(
            &server,
            proto::CreateCreditorRequest {
                organisation_number: "811218-9876".into(),
                company_name: "Anna Andersson Konsult".into(),
                ..creditor_request(&name)
            },
        )
        .await;
        assert_eq!(sole_trader.organisation_number, "811218-9876");

        // Bankgiros of zeros, in both fields.
        let sent_before = simulator.state().request_counts;
        let refused = client
            .update_company_settings(proto::UpdateCompanySettingsRequest {
                name: sole_trader.name.clone(),
                company_settings: Some(proto::CompanySettings {
                    bankgiro_invoicing: "000-0000".into(),
                    bankgiro_payments: "0000-0000".into(),
                    ..gp_company_settings()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_refused(&refused, Code::InvalidArgument, "INVALID_FIELDS");
        assert_eq!(
            bad_fields(&refused),
            [
                "company_settings.bankgiro_invoicing",
                "company_settings.bankgiro_payments"
            ]
        );
        assert_eq!(
            simulator.state().request_counts,
            sent_before,
            "nothing was sent to Billecta"
        );
        let after = common::get(&server, &name).await.unwrap();
        assert_eq!(
            stage_state(&after.creditors[0].stages, proto::Stage::CompanySettings),
            proto::StageState::NotStarted
        );
    })
    .await;
}

/// Asserts that creating the creditor of the onboarding `name` again is refused: it exists.
async fn assert_creditor_exists_already(server: &TestServer, name: &str) {
    let again = server
        .client
        .clone()
        .create_creditor(creditor_request(name))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
}

/// Waits on a STAGE_BUSY answer's RetryInfo.
fn retry_delay(status: &tonic::Status) -> Duration {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("STAGE_BUSY carries RetryInfo")
}

#[tokio::test]
async fn a_creditor_whose_create_answer_was_lost_is_adopted_not_created_again() {
    for backend in common::backends() {
        // Billecta answers within 400 ms or the attempt counts as lost; a lost create settles for
        // 800 ms before anyone may create again.
        let server =
            TestServer::start_with(&backend, |config| config.billecta_timeout_ms = 400).await;
        let mut client = server.client.clone();
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        let create = || creditor_request(&name);

        // Billecta is down: the stage waits on the system, it does not fail.
        fail_next(
            simulator,
            "POST /v1/creditors/creditor",
            Fault::Status {
                status: 503,
                body: FaultBody::Html,
            },
            1,
        );
        let down = client.create_creditor(create()).await.unwrap_err();
        assert_refused(&down, Code::Unavailable, "BILLECTA_UNAVAILABLE");
        let waiting = common::get(&server, &name).await.unwrap();
        let creditor_stage = stage_status(&waiting.creditors[0].stages, proto::Stage::Creditor);
        assert_eq!(creditor_stage.state, proto::StageState::InProgress as i32);
        assert_eq!(
            creditor_stage.blocked_on,
            proto::BlockedOn::SystemRetrying as i32
        );
        assert_eq!(waiting.state, proto::OnboardingState::InProgress as i32);

        // A 5xx may still have created it: an immediate retry is told to wait, and creates nothing.
        let early = client.create_creditor(create()).await.unwrap_err();
        assert_refused(&early, Code::Aborted, "STAGE_BUSY");
        tokio::time::sleep(retry_delay(&early) + Duration::from_millis(50)).await;

        // Billecta creates the creditor but answers after the client gave up.
        fail_next(
            simulator,
            "POST /v1/creditors/creditor",
            Fault::Latency { ms: 700 },
            1,
        );
        let lost = client.create_creditor(create()).await.unwrap_err();
        assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
        let early = client.create_creditor(create()).await.unwrap_err();
        assert_eq!(
            reason(&early),
            "STAGE_BUSY",
            "no second create while the first settles"
        );
        tokio::time::sleep(retry_delay(&early) + Duration::from_millis(50)).await;
        assert_eq!(
            simulator.state().creditors.len(),
            1,
            "Billecta did create it"
        );

        // The retry finds it by organisation number and adopts it.
        let adopted = create_creditor(&server, create()).await;
        let creditor_stage = stage_status(&adopted.stages, proto::Stage::Creditor);
        assert_eq!(creditor_stage.state, proto::StageState::Completed as i32);
        assert_eq!(creditor_stage.reason, "CREDITOR_ADOPTED");
        assert_eq!(simulator.state().creditors.len(), 1, "never two creditors");
        assert_eq!(
            adopted.creditor_public_id,
            simulator.state().creditors[0]
                .creditor_public_id
                .to_string()
        );
        assert_eq!(
            simulator.request_count("POST /v1/creditors/creditor"),
            2,
            "two creates sent in all, one of them lost"
        );
    }
}

#[tokio::test]
async fn a_busy_stage_asks_for_a_retry_when_the_running_call_must_end_not_after_the_lease() {
    for_each_backend(|server| async move {
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        let creditor = create_creditor(&server, creditor_request(&name)).await;
        let write = "PUT /v1/creditors/creditor";

        // Billecta never answers the write: the first call holds the stage until its deadline.
        fail_next(simulator, write, Fault::Hang, 1);
        let first_timeout = Duration::from_secs(4);
        let mut first = tonic::Request::new(company_settings(&creditor.name));
        first.set_timeout(first_timeout);
        let mut first_client = server.client.clone();
        let running =
            tokio::spawn(async move { first_client.update_company_settings(first).await });
        let started = std::time::Instant::now();
        while simulator.request_count(write) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30) && !running.is_finished(),
                "the first call reaches Billecta's write"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut client = server.client.clone();
        let busy = client
            .update_company_settings(company_settings(&creditor.name))
            .await
            .unwrap_err();
        let told_at = std::time::Instant::now();
        assert_refused(&busy, Code::Aborted, "STAGE_BUSY");
        let delay = retry_delay(&busy);
        // The first call must end by its deadline, and has 5 s after it to record its outcome: the
        // delay is at most that, measured from when the first call arrived, and far from the
        // 120 s lease.
        assert!(
            delay <= first_timeout + Duration::from_secs(5),
            "{delay:?} is longer than the first call may take"
        );

        let first_outcome = running.await.expect("the first call's task");
        assert!(first_outcome.is_err(), "{first_outcome:?}");
        // The stage is free again by the time the delay named, or soon after on a busy machine.
        let applied = loop {
            match client
                .update_company_settings(company_settings(&creditor.name))
                .await
            {
                Ok(applied) => break applied.into_inner(),
                Err(status) if reason(&status) == "STAGE_BUSY" => {
                    assert!(
                        told_at.elapsed() < delay + Duration::from_secs(15),
                        "still busy long after the delay given: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("the retry fails: {status:?}"),
            }
        };
        let onboarding = applied
            .onboarding
            .expect("the answer carries the onboarding");
        assert_eq!(
            stage_state(
                &onboarding.creditors[0].stages,
                proto::Stage::CompanySettings
            ),
            proto::StageState::ActionRequired,
            "applied; the bankgiro for payments waits on Billecta's support"
        );
        assert_eq!(simulator.request_count(write), 2);
    })
    .await;
}

#[tokio::test]
async fn an_impatient_caller_does_not_cut_a_create_short() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        fail_next(
            simulator,
            "POST /v1/creditors/creditor",
            Fault::Latency { ms: 600 },
            1,
        );
        let mut impatient = tonic::Request::new(creditor_request(&name));
        impatient.set_timeout(Duration::from_millis(200));
        let gone = client.create_creditor(impatient).await.unwrap_err();
        assert!(
            matches!(gone.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{gone:?}"
        );
        // The work goes on without the caller and is recorded.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let done = common::get(&server, &name).await.unwrap();
        assert_eq!(
            stage_state(&done.creditors[0].stages, proto::Stage::Creditor),
            proto::StageState::Completed
        );
        assert_eq!(simulator.state().creditors.len(), 1);
        // And a retry with the same input finds it done.
        assert_creditor_exists_already(&server, &name).await;
    })
    .await;
}

#[tokio::test]
async fn retries_with_a_request_id_and_an_etag_after_billecta_failed() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        let etag = common::get(&server, &name).await.unwrap().etag;
        let request = proto::CreateCreditorRequest {
            request_id: "gp-creditor-1".into(),
            etag: etag.clone(),
            ..creditor_request(&name)
        };

        // The lookup before the create fails (a read: safe to repeat, nothing was created).
        fail_next(
            simulator,
            "GET /v1/creditors/creditors",
            Fault::Status {
                status: 503,
                body: FaultBody::Json,
            },
            4,
        );
        let down = client.create_creditor(request.clone()).await.unwrap_err();
        assert_eq!(down.code(), Code::Unavailable);
        assert_eq!(
            common::get(&server, &name).await.unwrap().etag,
            etag,
            "a failed attempt is not a new version: the caller's etag still holds"
        );

        // The same request, the same etag: it goes through, once.
        let first = assert_retry_replays(request.clone(), |attempt| {
            let mut attempt_client = server.client.clone();
            async move { attempt_client.create_creditor(attempt).await }
        })
        .await;
        assert_eq!(simulator.request_count("POST /v1/creditors/creditor"), 1);
        let reused = client
            .create_creditor(proto::CreateCreditorRequest {
                organisation_number: "212000-0142".into(),
                ..request
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&reused), "REQUEST_ID_REUSED");

        // validate_only checks and answers, but neither stores nor writes to Billecta.
        let creditor = first.creditor.unwrap();
        let before = common::get(&server, &name).await.unwrap();
        let checked = client
            .update_company_settings(proto::UpdateCompanySettingsRequest {
                validate_only: true,
                ..company_settings(&creditor.name)
            })
            .await
            .onboarding();
        assert_eq!(
            checked.creditors[0]
                .company_settings
                .as_ref()
                .unwrap()
                .zip_code,
            "411 11",
            "the answer shows what would be asked for"
        );
        assert_eq!(common::get(&server, &name).await.unwrap(), before);
        assert_eq!(simulator.request_count("PUT /v1/creditors/creditor"), 0);
    })
    .await;
}

#[tokio::test]
async fn validation_reports_drift_field_by_field_and_marks_broken_stages() {
    use billecta_client::{BillectaClient, ClientSettings, Deadline};
    use billecta_onboarding::secret::Secret;
    for_each_backend(|server| async move {
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        let creditor = create_creditor(&server, creditor_request(&name)).await;
        settle_company_settings(
            &server,
            Environment::Test,
            &creditor,
            Some(unformatted_company_settings()),
        )
        .await;

        // Someone edits the creditor in Billecta's portal: another city, and disables it.
        let billecta =
            BillectaClient::new(Environment::Test, ClientSettings::new(simulator.base_url()))
                .unwrap();
        let token = billecta
            .authenticate(ACCOUNT_EMAIL, &Secret::new(PASSWORD), Deadline::none())
            .await
            .unwrap()
            .value;
        let mut edited = billecta
            .get_creditor(&token, &creditor.creditor_public_id, Deadline::none())
            .await
            .unwrap();
        edited.city = Some("Mölndal".into());
        edited.is_enabled = Some(false);
        billecta
            .update_creditor(&token, &edited, Deadline::none())
            .await
            .unwrap();

        let report = validate(&server, &name).await;
        let check = |check_name: &str| {
            report
                .checks
                .iter()
                .find(|check| check.check == check_name)
                .unwrap_or_else(|| panic!("no {check_name} check"))
                .clone()
        };
        let city = check("company_settings.city");
        assert_eq!(city.result, proto::CheckResult::Warn as i32);
        assert_eq!(city.reason, "DRIFT");
        assert_eq!(
            (city.expected.as_str(), city.observed.as_str()),
            ("Göteborg", "Mölndal")
        );
        assert_eq!(
            check("company_settings.zip_code").result,
            proto::CheckResult::Pass as i32
        );
        let enabled = check("creditor.enabled");
        assert_eq!(enabled.result, proto::CheckResult::Fail as i32);
        assert!(enabled.critical);
        let onboarding = report.onboarding.unwrap();
        assert_eq!(
            stage_state(&onboarding.creditors[0].stages, proto::Stage::Creditor),
            proto::StageState::Broken
        );
        assert_eq!(onboarding.state, proto::OnboardingState::Broken as i32);

        // Put right in Billecta: the next validation finds the stage working again.
        edited.is_enabled = Some(true);
        billecta
            .update_creditor(&token, &edited, Deadline::none())
            .await
            .unwrap();
        let repaired = validate(&server, &name).await.onboarding.unwrap();
        let creditor_stage = stage_status(&repaired.creditors[0].stages, proto::Stage::Creditor);
        assert_eq!(creditor_stage.state, proto::StageState::Completed as i32);
        assert_eq!(creditor_stage.reason, "REVALIDATED");

        // Billecta unreachable: every check it needs is UNKNOWN, and nothing is marked broken.
        simulator
            .set_faults(
                None,
                vec![FaultRule::new(Fault::Status {
                    status: 503,
                    body: FaultBody::Html,
                })],
            )
            .unwrap();
        let blind = validate(&server, &name).await;
        assert!(
            blind
                .checks
                .iter()
                .all(|check| check.result == proto::CheckResult::Unknown as i32)
        );
        assert_ne!(
            blind.onboarding.unwrap().state,
            proto::OnboardingState::Broken as i32
        );
    })
    .await;
}

#[tokio::test]
async fn credentials_webhooks_and_terms_are_checked_field_by_field() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let (name, _) = registered(&server, Environment::Test).await;
        let creditor = format!("{name}/creditors/{ORG_NO}");

        let neither = client
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&neither), ["password"]);
        let both = client
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.clone(),
                username: "api@gp.se".into(),
                password: "pw".into(),
                secure_token: "dG9rZW4=".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&both), ["secure_token"]);
        assert!(
            !both.message().contains("dG9rZW4="),
            "secrets are never echoed"
        );
        let nameless = client
            .register_api_credentials(proto::RegisterApiCredentialsRequest {
                name: creditor.clone(),
                password: "pw".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&nameless), ["username"]);

        let webhooks = client
            .record_webhook_setup(proto::RecordWebhookSetupRequest {
                name: creditor.clone(),
                target_url: "http://payway.example/hooks".into(),
                events: vec!["InvoicePaymentReceived".into(), "not an event".into()],
                authorization: String::new(),
                attested_by: String::new(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            bad_fields(&webhooks),
            ["target_url", "events[1]", "authorization", "attested_by"]
        );

        let terms = client
            .update_invoice_settings(proto::UpdateInvoiceSettingsRequest {
                name: creditor.clone(),
                invoice_settings: Some(proto::InvoiceSettings {
                    next_invoice_number: -3,
                    payment_terms: Some(proto::PaymentTerms {
                        invoice_lead_time_days: 400,
                        due_days: 0,
                        grace_period_days: -1,
                        write_off_days: 30,
                        currency: "kronor".into(),
                    }),
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            bad_fields(&terms),
            [
                "invoice_settings.next_invoice_number",
                "invoice_settings.payment_terms.invoice_lead_time_days",
                "invoice_settings.payment_terms.due_days",
                "invoice_settings.payment_terms.grace_period_days",
                "invoice_settings.payment_terms.currency"
            ]
        );
        let empty = client
            .update_invoice_settings(proto::UpdateInvoiceSettingsRequest {
                name: creditor.clone(),
                invoice_settings: Some(proto::InvoiceSettings::default()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&empty), ["invoice_settings"]);
        let skip = client
            .skip_stage(proto::SkipStageRequest {
                name: creditor.clone(),
                stage: proto::Stage::Webhooks as i32,
                reason: String::new(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&skip), ["reason"]);
    })
    .await;
}

/// A server and a second replica on its database.
async fn server_and_replica(backend: &common::Backend) -> (TestServer, common::Replica) {
    let server = TestServer::start_with(backend, |config| {
        config.encryption_keys = common::SHARED_ENCRYPTION_KEYS.into();
    })
    .await;
    let replica = server.replica().await;
    (server, replica)
}

#[tokio::test]
async fn two_replicas_racing_to_create_one_creditor_make_one() {
    for backend in common::backends() {
        let (server, replica) = server_and_replica(&backend).await;
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        // The create takes a while in Billecta, so the two calls overlap.
        fail_next(
            simulator,
            "POST /v1/creditors/creditor",
            Fault::Latency { ms: 300 },
            1,
        );
        let mut first = server.client.clone();
        let mut second = replica.client.clone();
        let (one, other) = tokio::join!(
            first.create_creditor(creditor_request(&name)),
            second.create_creditor(creditor_request(&name)),
        );
        let outcomes = [one.map(drop), other.map(drop)];
        assert_eq!(
            outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
            1,
            "{outcomes:?}"
        );
        for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
            assert!(
                matches!(refused.code(), Code::Aborted | Code::AlreadyExists),
                "{refused:?}"
            );
        }
        assert_eq!(
            simulator.state().creditors.len(),
            1,
            "one creditor in Billecta"
        );
        assert_eq!(simulator.request_count("POST /v1/creditors/creditor"), 1);
    }
}

#[tokio::test]
async fn a_retry_through_another_replica_that_has_read_the_onboarding_since_replays() {
    for backend in common::backends() {
        eprintln!("backend: {backend:?}");
        let (server, replica) = server_and_replica(&backend).await;
        let simulator = server.simulator(Environment::Test);
        let name = activated(&server, Environment::Test).await;
        let creditor = common::create_creditor(&server, creditor_request(&name)).await;
        // Invoice settings may be set again once set: only the request_id tells a retry apart.
        let request = proto::UpdateInvoiceSettingsRequest {
            name: creditor.name.clone(),
            invoice_settings: Some(proto::InvoiceSettings {
                next_invoice_number: 1023,
                ..Default::default()
            }),
            request_id: "gp-invoice-settings-once".into(),
            ..Default::default()
        };
        let first = server
            .client
            .clone()
            .update_invoice_settings(request.clone())
            .await
            .unwrap()
            .into_inner();
        let sent = simulator.request_count("PUT /v1/creditors/creditor");
        // The replica reads the onboarding as it now is (and keeps it), then gets the retry: the
        // onboarding has not changed since, but the request_id has its result.
        let read = common::get_via(&replica.client, &name).await.unwrap();
        let retried = replica
            .client
            .clone()
            .update_invoice_settings(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retried, first);
        assert_eq!(
            simulator.request_count("PUT /v1/creditors/creditor"),
            sent,
            "Billecta is not asked again"
        );
        let after = common::get(&server, &name).await.unwrap();
        assert_eq!(after, read, "the retry wrote nothing");
        assert_eq!(common::get_via(&replica.client, &name).await.unwrap(), read);
    }
}
