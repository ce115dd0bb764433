//! The onboarding API as a caller sees it, over real gRPC, on SQLite and PostgreSQL.

mod common;

use common::*;
use proto::{BlockedOn, Environment, OnboardingState, Stage, StageState};
use tonic::Code;

#[tokio::test]
async fn create_get_and_already_exists() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let created = create(&server, "gp", Environment::Test).await;
        assert_eq!(created.name, "tenants/gp/environments/test");
        assert_eq!(created.state, OnboardingState::ActionRequired as i32);
        assert_eq!(created.blocked_on, BlockedOn::PaywayOperations as i32);
        assert_eq!(created.stages.len(), 2);
        assert!(
            created
                .stages
                .iter()
                .all(|s| s.state == StageState::NotStarted as i32)
        );
        assert_eq!(created.next_due[0].item, "agreement.record");
        assert_eq!(created.next_due[0].from, BlockedOn::PaywayOperations as i32);
        assert_eq!(created.last_event, "tenants/gp/environments/test/events/1");

        let fetched = get(&server, &created.name).await.unwrap();
        assert_eq!(fetched, created);

        let again = client
            .create_onboarding(create_request("gp", Environment::Test))
            .await
            .unwrap_err();
        assert_refused(&again, Code::AlreadyExists, "ALREADY_EXISTS");

        // The other environment of the same tenant is a separate onboarding.
        let production = create(&server, "gp", Environment::Production).await;
        assert_eq!(production.name, "tenants/gp/environments/production");
        assert!(
            production.next_due[0]
                .description
                .contains("production procedure")
        );
    })
    .await;
}

#[tokio::test]
async fn create_is_idempotent_by_request_id() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let request = proto::CreateOnboardingRequest {
            request_id: "create-gp-1".into(),
            ..create_request("gp", Environment::Test)
        };
        assert_retry_replays(request.clone(), |attempt| {
            let mut attempt_client = server.client.clone();
            async move { attempt_client.create_onboarding(attempt).await }
        })
        .await;
        assert_eq!(
            events(&server, "tenants/gp/environments/test").await.len(),
            1,
            "and does nothing twice"
        );

        let reused = client
            .create_onboarding(proto::CreateOnboardingRequest {
                request_id: "create-gp-1".into(),
                ..create_request("gp", Environment::Production)
            })
            .await
            .unwrap_err();
        assert_refused(&reused, Code::InvalidArgument, "REQUEST_ID_REUSED");
        assert_eq!(bad_fields(&reused), vec!["request_id"]);
        assert_eq!(
            get(&server, "tenants/gp/environments/production")
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );

        // Concurrent first attempts with one request_id create one onboarding and agree on it.
        let request = proto::CreateOnboardingRequest {
            request_id: "create-hd-1".into(),
            ..create_request("hd", Environment::Test)
        };
        let attempts = (0..8).map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            tokio::spawn(async move {
                client
                    .create_onboarding(request)
                    .await
                    .map(|r| r.into_inner())
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
        assert_eq!(
            events(&server, "tenants/hd/environments/test").await.len(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn bad_input_is_rejected_field_by_field_and_changes_nothing() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let error = client
            .create_onboarding(proto::CreateOnboardingRequest {
                tenant: "Not A Tenant".into(),
                environment: 0,
                request_id: "bad id with spaces".into(),
                validate_only: false,
            })
            .await
            .unwrap_err();
        assert_refused(&error, Code::InvalidArgument, "INVALID_FIELDS");
        assert_eq!(
            bad_fields(&error),
            vec!["tenant", "environment", "request_id"]
        );
        let listed = client
            .list_onboardings(proto::ListOnboardingsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.onboardings.is_empty());

        let created = create(&server, "gp", Environment::Test).await;
        let mut bad_agreement = agreement_request(&created.name);
        bad_agreement.attested_by = "  ".into();
        bad_agreement.reference = "x".repeat(201);
        bad_agreement.agreement_time = Some(prost_types::Timestamp {
            seconds: 4_102_444_800,
            nanos: 0,
        });
        let error = client.record_agreement(bad_agreement).await.unwrap_err();
        assert_eq!(
            bad_fields(&error),
            vec!["attested_by", "agreement_time", "reference"]
        );

        let mut no_time = agreement_request(&created.name);
        no_time.agreement_time = None;
        assert_eq!(
            bad_fields(&client.record_agreement(no_time).await.unwrap_err()),
            vec!["agreement_time"]
        );

        let mut bad_account = account_request(&created.name);
        let account = bad_account.account.as_mut().unwrap();
        account.full_name.clear();
        account.email = "not-an-address".into();
        let error = client.register_account(bad_account).await.unwrap_err();
        assert_eq!(
            bad_fields(&error),
            vec!["account.full_name", "account.email"]
        );

        let error = client
            .register_account(proto::RegisterAccountRequest {
                name: created.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(bad_fields(&error).contains(&"account".to_owned()));

        for bad_name in [
            "",
            "tenants/gp",
            "tenants/gp/environments/staging",
            "tenants/GP/environments/test",
        ] {
            let error = get(&server, bad_name).await.unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{bad_name}");
            assert_eq!(bad_fields(&error), vec!["name"]);
        }
        assert_eq!(
            get(&server, &created.name).await.unwrap(),
            created,
            "nothing changed"
        );
        assert_eq!(events(&server, &created.name).await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn missing_onboardings_are_not_found() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let missing = name("nobody", "test");
        // Every call naming a missing onboarding is refused alike.
        let refusals = [
            get(&server, &missing).await.unwrap_err(),
            client
                .record_agreement(agreement_request(&missing))
                .await
                .unwrap_err(),
            client
                .register_account(account_request(&missing))
                .await
                .unwrap_err(),
            client
                .list_onboarding_events(proto::ListOnboardingEventsRequest {
                    name: missing.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            client
                .watch_onboarding(proto::WatchOnboardingRequest {
                    name: missing.clone(),
                    after_event: String::new(),
                })
                .await
                .unwrap_err(),
        ];
        for refusal in &refusals {
            assert_refused(refusal, Code::NotFound, "NOT_FOUND");
        }
    })
    .await;
}

#[tokio::test]
async fn agreement_then_account_walks_the_environment_stages() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let created = create(&server, "gp", Environment::Test).await;

        // Too early: the account needs the agreement.
        let error = client
            .register_account(account_request(&created.name))
            .await
            .unwrap_err();
        assert_refused(&error, Code::FailedPrecondition, "STAGES_NOT_COMPLETED");
        let details = tonic_types::StatusExt::get_error_details(&error);
        let violations = &details.precondition_failure().unwrap().violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(
            violations[0].subject,
            "tenants/gp/environments/test/stages/AGREEMENT"
        );
        assert!(error.message().contains("AGREEMENT"));

        let recorded = client
            .record_agreement(agreement_request(&created.name))
            .await
            .onboarding();
        let agreement = stage_status(&recorded.stages, Stage::Agreement);
        assert_eq!(agreement.state, StageState::Completed as i32);
        assert_eq!(
            recorded.agreement.as_ref().unwrap().reference,
            "CONTRACT-2026-17"
        );
        assert_eq!(
            recorded.agreement.as_ref().unwrap().attested_by,
            "anna@payway.se"
        );
        assert_eq!(recorded.next_due[0].item, "account.register");
        assert_ne!(recorded.etag, created.etag);

        let registered = client
            .register_account(account_request(&created.name))
            .await
            .onboarding();
        let account = stage_status(&registered.stages, Stage::Account);
        assert_eq!(account.state, StageState::ActionRequired as i32);
        assert_eq!(account.blocked_on, BlockedOn::Tenant as i32);
        assert_eq!(account.reason, "AWAITING_ACTIVATION");
        for item in [
            "account.create",
            "account.activate",
            "account.accept_terms",
            "account.change_password",
        ] {
            assert!(account.due.contains(&item.to_owned()), "{item} is due");
        }
        assert!(
            account.message.contains("one user"),
            "test notes the single user"
        );
        assert_eq!(registered.state, OnboardingState::ActionRequired as i32);
        assert_eq!(registered.blocked_on, BlockedOn::Tenant as i32);
        assert!(
            registered
                .next_due
                .iter()
                .all(|due| due.from == BlockedOn::Tenant as i32)
        );
        assert_eq!(registered.account.as_ref().unwrap().email, "billecta@gp.se");
        assert_eq!(
            get(&server, &created.name).await.unwrap(),
            registered,
            "reads show what the write returned"
        );

        let trail = events(&server, &created.name).await;
        let methods: Vec<&str> = trail.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(
            methods,
            ["CreateOnboarding", "RecordAgreement", "RegisterAccount"]
        );
        assert!(trail.iter().all(|e| e.outcome == "OK"
            && e.actor == "sandbox-developer"
            && !e.correlation_id.is_empty()));
        assert_eq!(trail[2].transitions.len(), 1);
        assert_eq!(trail[2].transitions[0].stage, Stage::Account as i32);
        assert_eq!(
            trail[2].transitions[0].from_state,
            StageState::NotStarted as i32
        );
        assert_eq!(
            trail[2].transitions[0].to_state,
            StageState::ActionRequired as i32
        );
    })
    .await;
}

#[tokio::test]
async fn etags_and_validate_only_guard_changes() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let created = create(&server, "gp", Environment::Production).await;

        let stale = proto::RecordAgreementRequest {
            etag: "\"999\"".into(),
            ..agreement_request(&created.name)
        };
        let error = client.record_agreement(stale).await.unwrap_err();
        assert_refused(&error, Code::Aborted, "ETAG_MISMATCH");
        assert_eq!(get(&server, &created.name).await.unwrap(), created);

        let dry_run = proto::RecordAgreementRequest {
            validate_only: true,
            etag: created.etag.clone(),
            ..agreement_request(&created.name)
        };
        let would_be = client.record_agreement(dry_run).await.onboarding();
        assert_eq!(
            stage_status(&would_be.stages, Stage::Agreement).state,
            StageState::Completed as i32
        );
        assert_eq!(
            get(&server, &created.name).await.unwrap(),
            created,
            "validate_only changes nothing"
        );
        assert_eq!(events(&server, &created.name).await.len(), 1);

        let dry_create = proto::CreateOnboardingRequest {
            validate_only: true,
            ..create_request("newco", Environment::Test)
        };
        let would_create = client.create_onboarding(dry_create).await.onboarding();
        assert_eq!(would_create.name, "tenants/newco/environments/test");
        assert_eq!(
            get(&server, &would_create.name).await.unwrap_err().code(),
            Code::NotFound
        );

        let current = proto::RecordAgreementRequest {
            etag: created.etag.clone(),
            ..agreement_request(&created.name)
        };
        let updated = client.record_agreement(current.clone()).await.onboarding();
        // The same etag again is now stale.
        assert_eq!(
            client.record_agreement(current).await.unwrap_err().code(),
            Code::Aborted
        );
        assert_eq!(get(&server, &created.name).await.unwrap(), updated);
    })
    .await;
}

#[tokio::test]
async fn mutating_calls_replay_their_first_result() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let created = create(&server, "gp", Environment::Test).await;
        let request = proto::RecordAgreementRequest {
            request_id: "agreement-1".into(),
            etag: created.etag.clone(),
            ..agreement_request(&created.name)
        };
        let first = client
            .record_agreement(request.clone())
            .await
            .unwrap()
            .into_inner();
        client
            .register_account(account_request(&created.name))
            .await
            .unwrap();
        // The retry carries a now stale etag, yet returns the first result and changes nothing.
        let retried = client
            .record_agreement(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first, retried);
        assert_eq!(events(&server, &created.name).await.len(), 3);

        let different = proto::RecordAgreementRequest {
            reference: "OTHER".into(),
            ..request
        };
        let error = client.record_agreement(different).await.unwrap_err();
        assert_eq!(reason(&error), "REQUEST_ID_REUSED");
        let reused_on_other_method = proto::RegisterAccountRequest {
            request_id: "agreement-1".into(),
            ..account_request(&created.name)
        };
        assert_eq!(
            reason(
                &client
                    .register_account(reused_on_other_method)
                    .await
                    .unwrap_err()
            ),
            "REQUEST_ID_REUSED"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_writers_lose_no_update() {
    for_each_backend(|server| async move {
        let created = create(&server, "gp", Environment::Test).await;
        let writers = (0..16).map(|i| {
            let mut client = server.client.clone();
            let request = proto::RecordAgreementRequest {
                reference: format!("REF-{i}"),
                ..agreement_request(&created.name)
            };
            tokio::spawn(async move { client.record_agreement(request).await })
        });
        for result in futures::future::join_all(writers).await {
            result.unwrap().unwrap();
        }
        let trail = events(&server, &created.name).await;
        assert_eq!(trail.len(), 17);
        let names: Vec<String> = trail.iter().map(|e| e.name.clone()).collect();
        let expected: Vec<String> = (1..=17)
            .map(|n| format!("{}/events/{n}", created.name))
            .collect();
        assert_eq!(names, expected, "events are numbered without gaps");
        let last = get(&server, &created.name).await.unwrap();
        assert_eq!(
            last.etag, "\"17\"",
            "every write applied on top of the one before"
        );
        let last_reference = &last.agreement.unwrap().reference;
        assert!(trail[16].summary.contains(last_reference.as_str()));
    })
    .await;
}

#[tokio::test]
async fn replicas_writing_one_onboarding_lose_no_update_and_replay_each_others_results() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let server = TestServer::start_with(&backend, |config| {
            config.encryption_keys = SHARED_ENCRYPTION_KEYS.into();
        })
        .await;
        let replica = server.replica().await;
        let created = create(&server, "gp", Environment::Test).await;
        let client = |i: usize| match i % 2 {
            0 => server.client.clone(),
            _ => replica.client.clone(),
        };
        let agreement = |i: usize| proto::RecordAgreementRequest {
            reference: format!("REF-{i}"),
            ..agreement_request(&created.name)
        };

        // The replicas write in turn, each after the other's write made what it keeps stale.
        for i in 0..6 {
            let written = client(i)
                .record_agreement(agreement(i))
                .await
                .unwrap()
                .into_inner()
                .onboarding
                .unwrap();
            assert_eq!(written.etag, format!("\"{}\"", i + 2), "write {i}");
            assert_eq!(written.agreement.unwrap().reference, format!("REF-{i}"));
        }
        // And at once.
        let writers = (6..22).map(|i| {
            let mut client = client(i);
            let request = agreement(i);
            tokio::spawn(async move { client.record_agreement(request).await })
        });
        for result in futures::future::join_all(writers).await {
            result.unwrap().unwrap();
        }
        let trail = events(&server, &created.name).await;
        let names: Vec<String> = trail.iter().map(|e| e.name.clone()).collect();
        let expected: Vec<String> = (1..=23)
            .map(|n| format!("{}/events/{n}", created.name))
            .collect();
        assert_eq!(
            names, expected,
            "one event per write, numbered without gaps"
        );
        let last = get(&server, &created.name).await.unwrap();
        assert_eq!(
            last.etag, "\"23\"",
            "every write applied on top of the one before"
        );
        assert!(
            trail[22]
                .summary
                .contains(&last.agreement.as_ref().unwrap().reference)
        );
        assert_eq!(get_via(&replica.client, &created.name).await.unwrap(), last);

        // A retried request_id answers with its first result through the other replica, which has
        // read the onboarding since and keeps it as it is.
        let request = proto::RecordAgreementRequest {
            request_id: "agreement-once".into(),
            ..agreement(99)
        };
        let first = client(0).record_agreement(request.clone()).await.unwrap();
        get_via(&replica.client, &created.name).await.unwrap();
        let again = client(1).record_agreement(request).await.unwrap();
        assert_eq!(again.into_inner(), first.into_inner());
        assert_eq!(events(&server, &created.name).await.len(), 24);
    }
}

#[tokio::test]
async fn list_filters_and_pages_stay_correct_while_rows_are_inserted() {
    for_each_backend(|server| async move {
        let test_tenants = ["b-tenant", "d-tenant", "f-tenant", "h-tenant"];
        for tenant in test_tenants {
            create(&server, tenant, Environment::Test).await;
        }
        let production = create(&server, "d-tenant", Environment::Production).await;
        record_agreement_and_account(&server, &production.name).await;

        let list = |request: proto::ListOnboardingsRequest| {
            let mut client = server.client.clone();
            async move {
                client
                    .list_onboardings(request)
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let names = |page: &proto::ListOnboardingsResponse| {
            page.onboardings
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
        };

        let filtered = [
            (
                "by environment",
                proto::ListOnboardingsRequest {
                    environment: Environment::Production.into(),
                    ..Default::default()
                },
                vec![production.name.clone()],
            ),
            (
                "waiting on the tenant",
                proto::ListOnboardingsRequest {
                    blocked_on: BlockedOn::Tenant.into(),
                    ..Default::default()
                },
                vec![production.name.clone()],
            ),
            (
                "waiting on Payway's operations",
                proto::ListOnboardingsRequest {
                    state: OnboardingState::ActionRequired.into(),
                    blocked_on: BlockedOn::PaywayOperations.into(),
                    ..Default::default()
                },
                test_tenants.map(|tenant| name(tenant, "test")).to_vec(),
            ),
            (
                "ready",
                proto::ListOnboardingsRequest {
                    state: OnboardingState::Ready.into(),
                    ..Default::default()
                },
                Vec::new(),
            ),
        ];
        for (label, request, expected) in filtered {
            let listed = list(request).await.unwrap();
            assert_eq!(names(&listed), expected, "{label}");
        }

        // Page through the test environment two at a time, inserting before and after the cursor.
        let filter = proto::ListOnboardingsRequest {
            environment: Environment::Test.into(),
            page_size: 2,
            ..Default::default()
        };
        let first = list(filter.clone()).await.unwrap();
        assert_eq!(
            names(&first),
            vec![name("b-tenant", "test"), name("d-tenant", "test")]
        );
        create(&server, "a-tenant", Environment::Test).await; // before the cursor: not in later pages
        create(&server, "e-tenant", Environment::Test).await; // after the cursor: in a later page
        let second = list(proto::ListOnboardingsRequest {
            page_token: first.next_page_token.clone(),
            ..filter.clone()
        })
        .await
        .unwrap();
        assert_eq!(
            names(&second),
            vec![name("e-tenant", "test"), name("f-tenant", "test")]
        );
        let third = list(proto::ListOnboardingsRequest {
            page_token: second.next_page_token.clone(),
            ..filter.clone()
        })
        .await
        .unwrap();
        assert_eq!(names(&third), vec![name("h-tenant", "test")]);
        assert!(third.next_page_token.is_empty());

        let wrong_filter = list(proto::ListOnboardingsRequest {
            page_token: first.next_page_token.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(bad_fields(&wrong_filter), vec!["page_token"]);
        let garbage = list(proto::ListOnboardingsRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(bad_fields(&garbage), vec!["page_token"]);
        let negative = list(proto::ListOnboardingsRequest {
            page_size: -1,
            state: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(bad_fields(&negative), vec!["state", "page_size"]);
    })
    .await;
}

#[tokio::test]
async fn events_page_in_order() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let created = create(&server, "gp", Environment::Test).await;
        for _ in 0..4 {
            record_agreement(&server, &created.name).await;
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_onboarding_events(proto::ListOnboardingEventsRequest {
                    name: created.name.clone(),
                    page_size: 2,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            seen.extend(page.events.into_iter().map(|e| e.name));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let expected: Vec<String> = (1..=5)
            .map(|n| format!("{}/events/{n}", created.name))
            .collect();
        assert_eq!(seen, expected);

        let other = create(&server, "hd", Environment::Test).await;
        let first = client
            .list_onboarding_events(proto::ListOnboardingEventsRequest {
                name: created.name.clone(),
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let error = client
            .list_onboarding_events(proto::ListOnboardingEventsRequest {
                name: other.name,
                page_size: 1,
                page_token: first.next_page_token,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&error), vec!["page_token"]);
    })
    .await;
}

/// How many ErrorInfo details a status carries.
fn error_infos(status: &tonic::Status) -> usize {
    use tonic_types::{ErrorDetail, StatusExt};
    status
        .get_error_details_vec()
        .iter()
        .filter(|detail| matches!(detail, ErrorDetail::ErrorInfo(_)))
        .count()
}

#[tokio::test]
async fn an_oversized_message_is_refused_with_an_error_info_naming_the_limit() {
    // The transport refuses it before any handler or database is involved: SQLite is enough.
    let server =
        TestServer::start_with(&Backend::Sqlite, |config| config.max_message_bytes = 4096).await;
    let mut client = server.client.clone();
    let created = create(&server, "gp", Environment::Test).await;

    let oversized = proto::RecordAgreementRequest {
        reference: "x".repeat(8192),
        ..agreement_request(&created.name)
    };
    let refused = client.record_agreement(oversized).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert_eq!(error_infos(&refused), 1, "{refused:?}");
    assert_eq!(reason(&refused), "MESSAGE_TOO_LARGE");
    let info = {
        use tonic_types::StatusExt;
        refused.get_error_details().error_info().cloned().unwrap()
    };
    assert_eq!(info.domain, "billecta-onboarding.payway");
    assert_eq!(info.metadata["limit_bytes"], "4096");
    assert!(refused.message().contains("4096"), "{}", refused.message());
    assert!(
        refused.message().contains("--max-message-bytes"),
        "{}",
        refused.message()
    );
    let unchanged = get(&server, &created.name).await.unwrap();
    assert_eq!(unchanged.etag, created.etag, "nothing was recorded");

    // A streaming call is refused the same way.
    let refused = client
        .watch_onboarding(proto::WatchOnboardingRequest {
            name: "x".repeat(8192),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert_eq!(error_infos(&refused), 1, "{refused:?}");
    assert_eq!(reason(&refused), "MESSAGE_TOO_LARGE");

    // A message within the limit is served as before.
    client
        .record_agreement(agreement_request(&created.name))
        .await
        .expect("a message within the limit is served");
}
