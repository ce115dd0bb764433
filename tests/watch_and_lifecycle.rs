//! WatchOnboarding (live changes, resume without gaps or repeats), health, request ids and graceful
//! shutdown, over real gRPC on SQLite and PostgreSQL.

mod common;

use common::*;
use proto::Environment;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn next(
    stream: &mut tonic::Streaming<proto::WatchOnboardingResponse>,
) -> proto::WatchOnboardingResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch message within 10 s")
        .expect("the stream is open")
        .expect("a message, not an error")
}

/// Opens a watch stream on `name`, resuming after `after_event` when it is not empty.
async fn watch(
    server: &TestServer,
    name: &str,
    after_event: &str,
) -> Result<tonic::Streaming<proto::WatchOnboardingResponse>, tonic::Status> {
    let request = proto::WatchOnboardingRequest {
        name: name.to_owned(),
        after_event: after_event.to_owned(),
    };
    Ok(server
        .client
        .clone()
        .watch_onboarding(request)
        .await?
        .into_inner())
}

/// A new onboarding and a watch stream on it, past its first message (the current state).
async fn watching(
    server: &TestServer,
) -> (
    proto::Onboarding,
    tonic::Streaming<proto::WatchOnboardingResponse>,
) {
    let created = create(server, "gp", Environment::Test).await;
    let mut stream = watch(server, &created.name, "").await.unwrap();
    next(&mut stream).await;
    (created, stream)
}

/// Asserts that the next message on `stream` is the agreement of `name` being recorded, as its
/// second event.
async fn assert_agreement_streamed(
    stream: &mut tonic::Streaming<proto::WatchOnboardingResponse>,
    name: &str,
) {
    let change = next(stream).await;
    assert_eq!(event_name(&change), format!("{name}/events/2"));
    assert_eq!(change.event.as_ref().unwrap().method, "RecordAgreement");
    assert_eq!(
        change.onboarding.as_ref().unwrap().stages[0].state,
        proto::StageState::Completed as i32
    );
}

/// Asserts that `stream` sends nothing for `quiet_for`.
async fn assert_silent(
    stream: &mut tonic::Streaming<proto::WatchOnboardingResponse>,
    quiet_for: Duration,
) {
    let sent = tokio::time::timeout(quiet_for, stream.next()).await;
    assert!(sent.is_err(), "nothing is sent, yet got {sent:?}");
}

fn event_name(message: &proto::WatchOnboardingResponse) -> String {
    message.event.as_ref().expect("an event").name.clone()
}

#[tokio::test]
async fn watch_streams_changes_and_resumes_without_gaps_or_repeats() {
    for_each_backend(|server| async move {
        let mut client = server.client.clone();
        let created = create(&server, "gp", Environment::Test).await;
        let mut stream = watch(&server, &created.name, "").await.unwrap();
        let first = next(&mut stream).await;
        assert!(
            first.event.is_none(),
            "the first message is the current state"
        );
        assert_eq!(first.onboarding.unwrap(), created);

        record_agreement(&server, &created.name).await;
        assert_agreement_streamed(&mut stream, &created.name).await;
        drop(stream);

        // Changes made while nobody watches are replayed on resume, then the stream goes on live.
        client
            .register_account(account_request(&created.name))
            .await
            .unwrap();
        record_agreement(&server, &created.name).await;
        let mut resumed = watch(
            &server,
            &created.name,
            &format!("{}/events/2", created.name),
        )
        .await
        .unwrap();
        assert_eq!(
            event_name(&next(&mut resumed).await),
            format!("{}/events/3", created.name)
        );
        assert_eq!(
            event_name(&next(&mut resumed).await),
            format!("{}/events/4", created.name)
        );
        record_agreement(&server, &created.name).await;
        let live = next(&mut resumed).await;
        assert_eq!(event_name(&live), format!("{}/events/5", created.name));
        assert_eq!(
            live.onboarding.unwrap().last_event,
            format!("{}/events/5", created.name)
        );
        // Nothing more is sent: no repeats.
        assert_silent(&mut resumed, Duration::from_millis(600)).await;

        // Changes to other onboardings do not show up.
        create(&server, "other", Environment::Test).await;
        assert_silent(&mut resumed, Duration::from_millis(400)).await;
    })
    .await;
}

#[tokio::test]
async fn watch_rejects_bad_resume_points() {
    for_each_backend(|server| async move {
        let created = create(&server, "gp", Environment::Test).await;
        for after_event in [
            "events/1".to_owned(),
            "tenants/other/environments/test/events/1".to_owned(),
            format!("{}/events/99", created.name),
            format!("{}/events/x", created.name),
        ] {
            let error = watch(&server, &created.name, &after_event)
                .await
                .unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{after_event}");
            assert_eq!(bad_fields(&error), vec!["after_event"]);
        }
        // Resuming at the newest event waits quietly for the next one.
        let mut stream = watch(&server, &created.name, &created.last_event)
            .await
            .unwrap();
        assert_silent(&mut stream, Duration::from_millis(400)).await;
    })
    .await;
}

#[tokio::test]
async fn health_is_serving_and_request_ids_flow_into_the_audit_trail() {
    for_each_backend(|server| async move {
        let mut health = HealthClient::new(server.channel.clone());
        for service in ["", "payway.billecta.onboarding.v1.OnboardingService"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(status.status, ServingStatus::Serving as i32, "{service:?}");
        }

        let mut request = tonic::Request::new(create_request("gp", Environment::Test));
        request
            .metadata_mut()
            .insert("x-request-id", "trace-abc-123".parse().unwrap());
        let response = server
            .client
            .clone()
            .create_onboarding(request)
            .await
            .unwrap();
        assert_eq!(
            response.metadata().get("x-request-id").unwrap(),
            "trace-abc-123"
        );
        let trail = events(&server, "tenants/gp/environments/test").await;
        assert_eq!(trail[0].correlation_id, "trace-abc-123");

        // Without one, the server makes one up and says which.
        let response = server
            .client
            .clone()
            .get_onboarding(proto::GetOnboardingRequest {
                name: "tenants/gp/environments/test".into(),
            })
            .await
            .unwrap();
        assert!(!response.metadata().get("x-request-id").unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_and_stops_within_the_grace_period() {
    for_each_backend(|server| async move {
        let (_, mut stream) = watching(&server).await;
        server.shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends");
        match ended {
            Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
        let stopped = tokio::time::timeout(Duration::from_secs(10), server.task)
            .await
            .expect("stops within the grace period");
        stopped.unwrap().unwrap();
        // The port no longer takes calls.
        let refused = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address))
            .unwrap()
            .connect()
            .await;
        assert!(refused.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_watch_on_one_replica_sees_changes_made_through_another() {
    for_each_backend(|server| async move {
        let (created, mut stream) = watching(&server).await;

        let replica = server.replica().await;
        replica
            .client
            .clone()
            .record_agreement(agreement_request(&created.name))
            .await
            .expect("the other replica records the agreement");
        assert_agreement_streamed(&mut stream, &created.name).await;
    })
    .await;
}

#[tokio::test]
async fn open_watch_streams_are_limited_and_a_closed_one_frees_its_place() {
    let server = TestServer::start_with(&Backend::Sqlite, |config| {
        config.max_watch_streams = 2;
    })
    .await;
    let (created, first) = watching(&server).await;
    let mut second = watch(&server, &created.name, "").await.unwrap();
    next(&mut second).await;

    let refused = watch(&server, &created.name, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Other calls are not affected.
    get(&server, &created.name).await.unwrap();

    // The caller closes a stream; its place comes free once the server sees it gone.
    drop(first);
    let reopened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch(&server, &created.name, "").await {
                Ok(stream) => break stream,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("unexpected refusal: {status:?}"),
            }
        }
    });
    let mut third = reopened
        .await
        .expect("the closed stream's place comes free");
    next(&mut third).await;
    // Both open streams still carry changes.
    record_agreement(&server, &created.name).await;
    assert_agreement_streamed(&mut second, &created.name).await;
    assert_agreement_streamed(&mut third, &created.name).await;
}
