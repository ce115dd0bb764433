//! The Prometheus endpoint after a short run: a tenant brought to READY, then broken in Billecta's
//! portal and found BROKEN by the scheduled validation. Every family operators rely on is exposed,
//! with the values that run must have left.

mod common;

use common::{TestServer, proto, ready_onboarding};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` over plain HTTP/1.1, as Prometheus scrapes it: the status line and the body.
async fn scrape(address: SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` (labels exactly as exposed), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

#[tokio::test]
async fn the_metrics_endpoint_exposes_every_family_after_a_short_run() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            config.reconcile_interval_ms = 100;
            config.revalidate_interval_ms = 500;
        })
        .await;
        let address = server.metrics.expect("the endpoint is on");
        let name = ready_onboarding(&server).await;
        common::remove_account_user(&server);
        let started = Instant::now();
        while common::get(&server, &name).await.unwrap().state
            != proto::OnboardingState::Broken as i32
        {
            assert!(started.elapsed() < Duration::from_secs(10), "never BROKEN");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A made-up method: refused, and counted under "unknown" rather than a label of its own.
        let mut grpc = tonic::client::Grpc::new(server.channel.clone());
        grpc.ready().await.unwrap();
        let made_up: Result<tonic::Response<()>, _> = grpc
            .unary(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static(
                    "/payway.billecta.onboarding.v1.OnboardingService/NoSuchMethod",
                ),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await;
        assert!(made_up.is_err());

        let (status, body) = scrape(address).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        for family in [
            "onboarding_rpc_requests",
            "onboarding_rpc_duration_seconds",
            "billecta_requests",
            "billecta_request_duration_seconds",
            "billecta_breaker_state",
            "onboarding_onboardings",
            "onboarding_stages",
            "onboarding_reconciler_runs",
            "onboarding_integrations_broken",
        ] {
            assert!(
                body.contains(&format!("# TYPE {family} ")),
                "{family} is exposed:\n{body}"
            );
        }
        // Counters count from the process's start (several servers share this test process), so
        // they are at least what this run did; gauges are read from this server's database.
        let at_least = |series: &str, floor: f64| {
            let value = sample(&body, series).unwrap_or_else(|| panic!("{series} in\n{body}"));
            assert!(
                value >= floor,
                "{series} = {value}, expected at least {floor}"
            );
        };
        at_least(
            r#"onboarding_rpc_requests_total{method="CreateCreditor",code="Ok"}"#,
            1.0,
        );
        at_least(
            r#"onboarding_rpc_duration_seconds_count{method="GetOnboarding"}"#,
            1.0,
        );
        at_least(
            r#"billecta_requests_total{environment="test",endpoint="POST /v1/creditors/creditor",outcome="ok"}"#,
            1.0,
        );
        at_least(
            r#"billecta_requests_total{environment="test",endpoint="GET /v1/authentication/securetoken",outcome="bad_credentials"}"#,
            1.0,
        );
        at_least(
            r#"onboarding_reconciler_runs_total{work="validate",outcome="broken"}"#,
            1.0,
        );
        at_least(
            r#"onboarding_integrations_broken_total{environment="test",stage="API_ACCESS"}"#,
            1.0,
        );
        assert_eq!(
            sample(&body, r#"billecta_breaker_state{environment="test"}"#),
            Some(0.0),
            "the breaker is closed"
        );
        assert_eq!(
            sample(
                &body,
                r#"onboarding_onboardings{environment="test",state="BROKEN"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &body,
                r#"onboarding_stages{environment="test",stage="API_ACCESS",state="BROKEN"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &body,
                r#"onboarding_stages{environment="test",stage="AGREEMENT",state="COMPLETED"}"#
            ),
            Some(1.0)
        );
        assert!(!body.contains("NoSuchMethod"));
        at_least(
            r#"onboarding_rpc_requests_total{method="unknown",code="Unauthenticated"}"#,
            1.0,
        );
    }
}
