//! Who may call what, over real gRPC on SQLite and PostgreSQL: every RPC with no credential, a bad
//! one, a caller without the permission, a caller of another tenant, and the right caller. Refusals
//! are UNAUTHENTICATED or PERMISSION_DENIED, say nothing of whether the resource exists, and change
//! nothing — not the onboarding, not its audit trail, not Billecta.

mod common;

use billecta_onboarding::auth::SANDBOX_KEY;
use billecta_onboarding::domain::Environment;
use billecta_onboarding::proto::onboarding_service_client::OnboardingServiceClient;
use billecta_onboarding::proto::payment_configuration_service_client::PaymentConfigurationServiceClient;
use common::{ALL_PERMISSIONS, Bearer, TestServer, agreement_request, callers_json, events, proto};
use futures::future::BoxFuture;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const READER: &str = "bok_reader-of-gp";
const WRITER: &str = "bok_writer-of-gp";
const PAYMENTS: &str = "bok_payments-of-gp";
const OTHER_TENANT: &str = "bok_everything-for-hd";

const TEST: &str = "tenants/gp/environments/test";
const CREDITOR: &str = "tenants/gp/environments/test/creditors/556036-0793";

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Read,
    Write,
    PaymentConfiguration,
}

/// The clients of one caller.
#[derive(Clone)]
struct Caller {
    onboarding: common::Client,
    payments: PaymentConfigurationServiceClient<InterceptedService<Channel, Bearer>>,
}

impl Caller {
    fn new(channel: &Channel, bearer: Bearer) -> Self {
        Caller {
            onboarding: OnboardingServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            payments: PaymentConfigurationServiceClient::with_interceptor(channel.clone(), bearer),
        }
    }
}

type Call = fn(Caller) -> BoxFuture<'static, Result<(), tonic::Status>>;

/// Every RPC, called the way a caller of gp would.
fn rpcs() -> Vec<(&'static str, Needs, Call)> {
    vec![
        ("CreateOnboarding", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .create_onboarding(common::create_request("gp", proto::Environment::Production))
                    .await
                    .map(drop)
            })
        }),
        ("GetOnboarding", Needs::Read, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .get_onboarding(proto::GetOnboardingRequest { name: TEST.into() })
                    .await
                    .map(drop)
            })
        }),
        ("RecordAgreement", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .record_agreement(agreement_request(TEST))
                    .await
                    .map(drop)
            })
        }),
        ("RegisterAccount", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .register_account(common::account_request(TEST))
                    .await
                    .map(drop)
            })
        }),
        ("ConfirmAccountActivation", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .confirm_account_activation(proto::ConfirmAccountActivationRequest {
                        name: TEST.into(),
                        username: "billecta@gp.se".into(),
                        password: "Höst-2026".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("CreateCreditor", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .create_creditor(common::creditor_request(TEST))
                    .await
                    .map(drop)
            })
        }),
        ("UpdateCompanySettings", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .update_company_settings(proto::UpdateCompanySettingsRequest {
                        name: CREDITOR.into(),
                        company_settings: Some(common::gp_company_settings()),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("UpdateInvoiceSettings", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .update_invoice_settings(proto::UpdateInvoiceSettingsRequest {
                        name: CREDITOR.into(),
                        invoice_settings: Some(proto::InvoiceSettings {
                            next_invoice_number: 1000,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("SkipStage", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .skip_stage(proto::SkipStageRequest {
                        name: CREDITOR.into(),
                        stage: proto::Stage::Webhooks.into(),
                        reason: "later".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("RegisterApiCredentials", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .register_api_credentials(proto::RegisterApiCredentialsRequest {
                        name: CREDITOR.into(),
                        secure_token: "dG9rZW4=".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("RecordWebhookSetup", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .record_webhook_setup(proto::RecordWebhookSetupRequest {
                        name: CREDITOR.into(),
                        target_url: "https://payway.example/hooks".into(),
                        events: vec!["InvoicePaymentReceived".into()],
                        authorization: "Bearer webhook".into(),
                        attested_by: "ops@payway.se".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("ValidateOnboarding", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .validate_onboarding(proto::ValidateOnboardingRequest { name: TEST.into() })
                    .await
                    .map(drop)
            })
        }),
        ("PromoteToProduction", Needs::Write, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .promote_to_production(proto::PromoteToProductionRequest {
                        name: TEST.into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("ListOnboardingEvents", Needs::Read, |mut c| {
            Box::pin(async move {
                c.onboarding
                    .list_onboarding_events(proto::ListOnboardingEventsRequest {
                        name: TEST.into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        }),
        ("WatchOnboarding", Needs::Read, |mut c| {
            Box::pin(async move {
                let mut stream = c
                    .onboarding
                    .watch_onboarding(proto::WatchOnboardingRequest {
                        name: TEST.into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                stream.message().await.map(drop)
            })
        }),
        (
            "GetPaymentConfiguration",
            Needs::PaymentConfiguration,
            |mut c| {
                Box::pin(async move {
                    c.payments
                        .get_payment_configuration(proto::GetPaymentConfigurationRequest {
                            name: CREDITOR.into(),
                        })
                        .await
                        .map(drop)
                })
            },
        ),
    ]
}

/// What a refusal must leave untouched: both onboardings of gp, their trails, and Billecta.
async fn snapshot(server: &TestServer) -> String {
    let mut seen = String::new();
    for name in [TEST, "tenants/gp/environments/production"] {
        seen.push_str(&format!("{:?}", common::get(server, name).await.ok()));
        if common::get(server, name).await.is_ok() {
            seen.push_str(&format!("{:?}", events(server, name).await));
        }
    }
    seen.push_str(&format!(
        "{:?}",
        server.simulator(Environment::Test).state().request_counts
    ));
    seen
}

#[tokio::test]
async fn every_rpc_refuses_callers_without_the_right_credential_and_changes_nothing() {
    for backend in common::backends() {
        let callers = callers_json(&[
            ("sandbox-developer", SANDBOX_KEY, ALL_PERMISSIONS, None),
            ("reader", READER, &["read"], Some(&["gp"])),
            ("writer", WRITER, &["read", "write"], Some(&["gp"])),
            (
                "payments",
                PAYMENTS,
                &["payment_configuration"],
                Some(&["gp"]),
            ),
            ("other-tenant", OTHER_TENANT, ALL_PERMISSIONS, Some(&["hd"])),
        ]);
        let server = TestServer::start_with(&backend, |config| config.callers = callers).await;
        common::create(&server, "gp", proto::Environment::Test).await;
        let channel = &server.channel;
        let caller = |key: &str| Caller::new(channel, Bearer::new(key));

        let before = snapshot(&server).await;
        for (rpc, needs, call) in rpcs() {
            let without_permission = match needs {
                Needs::Read => PAYMENTS,
                Needs::Write => READER,
                Needs::PaymentConfiguration => WRITER,
            };
            let refusals = [
                (
                    "no credential",
                    Caller::new(channel, Bearer::none()),
                    Code::Unauthenticated,
                ),
                ("a bad key", caller("bok_not-a-key"), Code::Unauthenticated),
                (
                    "no permission",
                    caller(without_permission),
                    Code::PermissionDenied,
                ),
                (
                    "another tenant",
                    caller(OTHER_TENANT),
                    Code::PermissionDenied,
                ),
            ];
            for (case, client, expected) in refusals {
                let refused = call(client)
                    .await
                    .expect_err(&format!("{rpc} with {case} is refused"));
                assert_eq!(refused.code(), expected, "{rpc} with {case}: {refused:?}");
                assert!(
                    !refused.message().contains("does not exist"),
                    "{rpc} with {case} tells nothing of the resource: {}",
                    refused.message()
                );
            }
        }
        assert_eq!(
            snapshot(&server).await,
            before,
            "refused calls change nothing"
        );

        // The right caller gets past the gate: whatever the answer, it is about the request.
        for (rpc, needs, call) in rpcs() {
            let right = match needs {
                Needs::Read => READER,
                Needs::Write => WRITER,
                Needs::PaymentConfiguration => PAYMENTS,
            };
            if let Err(status) = call(caller(right)).await {
                assert!(
                    !matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ),
                    "{rpc} refused its right caller: {status:?}"
                );
            }
        }

        // Mutations and payment-configuration reads name their caller in the audit trail.
        let trail = events(&server, TEST).await;
        let agreement = trail
            .iter()
            .find(|event| event.method == "RecordAgreement")
            .expect("the writer recorded the agreement");
        assert_eq!(agreement.actor, "writer");

        // ListOnboardings: refused without a key or the read permission...
        let nobody = Caller::new(channel, Bearer::none())
            .onboarding
            .list_onboardings(proto::ListOnboardingsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(nobody.code(), Code::Unauthenticated);
        let no_read = caller(PAYMENTS)
            .onboarding
            .list_onboardings(proto::ListOnboardingsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(no_read.code(), Code::PermissionDenied);

        // A request_id's first result is replayed to the caller that made it, and no one else.
        let agreement_once = proto::RecordAgreementRequest {
            request_id: "agreement-1".into(),
            ..agreement_request(TEST)
        };
        caller(WRITER)
            .onboarding
            .record_agreement(agreement_once.clone())
            .await
            .unwrap();
        caller(WRITER)
            .onboarding
            .record_agreement(agreement_once.clone())
            .await
            .unwrap();
        let other = caller(SANDBOX_KEY)
            .onboarding
            .record_agreement(agreement_once)
            .await
            .unwrap_err();
        assert_eq!(common::reason(&other), "REQUEST_ID_REUSED");

        // ...and a caller limited to other tenants lists none of gp's onboardings.
        let listed = caller(OTHER_TENANT)
            .onboarding
            .list_onboardings(proto::ListOnboardingsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .onboardings;
        assert!(
            listed.iter().all(|onboarding| onboarding.tenant != "gp"),
            "{listed:?}"
        );
        let mut gp_reader = caller(READER).onboarding;
        let listed = gp_reader
            .list_onboardings(proto::ListOnboardingsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .onboardings;
        assert!(!listed.is_empty() && listed.iter().all(|o| o.tenant == "gp"));
    }
}
