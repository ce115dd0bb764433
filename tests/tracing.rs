//! Traces reach an OpenTelemetry collector: a span per RPC that continues the caller's W3C trace
//! and names the tenant, environment, stage and request id, with a span per Billecta request under
//! it; never a secret. The collector here is a real OTLP/gRPC server the service exports to.
//!
//! Alone in its own test binary: the tracing subscriber is global to the process.

mod common;

use billecta_onboarding::domain::Environment;
use billecta_onboarding::proto;
use billecta_onboarding::telemetry::LogFormat;
use billecta_onboarding::telemetry::{self, TraceExport};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::sync::{Arc, Mutex};

/// An OTLP trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            if let Some(resource) = &resource_spans.resource {
                for attribute in &resource.attributes {
                    if attribute.key == "service.name" {
                        self.service_names.lock().unwrap().push(text(
                            attribute.value.as_ref().and_then(|v| v.value.as_ref()),
                        ));
                    }
                }
            }
            for scope_spans in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope_spans.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        _ => String::new(),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .map(|attribute| text(attribute.value.as_ref().and_then(|v| v.value.as_ref())))
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `message` with the W3C trace context `traceparent`.
fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test]
async fn spans_continue_the_callers_trace_and_reach_the_collector_without_secrets() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = telemetry::init(
        LogFormat::Human,
        "info,sqlx=warn,h2=warn,tower=warn",
        Some(&TraceExport {
            endpoint: format!("http://{address}"),
            service_name: "billecta-onboarding-under-test".into(),
            sample_ratio: 1.0,
        }),
    )
    .unwrap();

    let server = TestServer::start(&Backend::Sqlite).await;
    // CreateOnboarding, continuing the caller's trace.
    let created = server
        .client
        .clone()
        .create_onboarding(traced(
            create_request("gp", proto::Environment::Test),
            &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
        ))
        .await
        .unwrap()
        .into_inner();
    let name = created.onboarding.unwrap().name;
    // ConfirmAccountActivation signs in to Billecta: a request span under the call's span.
    let account_id = register_account_in_portal(&server, &name, Environment::Test).await;
    server
        .simulator(Environment::Test)
        .activate_account(account_id, READY_PASSWORD)
        .unwrap();
    let confirm_trace = "0af7651916cd43dd8448eb211c80319c";
    server
        .client
        .clone()
        .confirm_account_activation(traced(
            confirm_request(&name, READY_PASSWORD),
            &format!("00-{confirm_trace}-b7ad6b7169203331-01"),
        ))
        .await
        .unwrap();
    // A malformed traceparent is ignored: the call starts a trace of its own.
    server
        .client
        .clone()
        .get_onboarding(traced(
            proto::GetOnboardingRequest { name: name.clone() },
            "00-not-a-trace-01",
        ))
        .await
        .unwrap();

    let token = account_token(&test_billecta(&server)).await;
    server.shutdown.cancel();
    telemetry.shutdown().await;

    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        collector
            .service_names
            .lock()
            .unwrap()
            .iter()
            .all(|name| name == "billecta-onboarding-under-test")
    );
    let rpc = |method: &str| {
        spans
            .iter()
            .find(|span| {
                span.name == format!("payway.billecta.onboarding.v1.OnboardingService/{method}")
            })
            .unwrap_or_else(|| panic!("no span of {method} among {:?}", names(&spans)))
            .clone()
    };

    let create = rpc("CreateOnboarding");
    assert_eq!(hex::encode(&create.trace_id), CALLER_TRACE);
    assert_eq!(hex::encode(&create.parent_span_id), CALLER_SPAN);
    assert_eq!(create.kind, SpanKind::Server as i32);
    assert_eq!(attribute(&create, "tenant").as_deref(), Some("gp"));
    assert_eq!(attribute(&create, "environment").as_deref(), Some("test"));
    assert_eq!(
        attribute(&create, "trace_id").as_deref(),
        Some(CALLER_TRACE)
    );
    assert_eq!(attribute(&create, "grpc_status").as_deref(), Some("Ok"));
    assert!(
        attribute(&create, "request_id").is_some_and(|id| !id.is_empty()),
        "the correlation id is on the span"
    );

    let confirm = rpc("ConfirmAccountActivation");
    assert_eq!(hex::encode(&confirm.trace_id), confirm_trace);
    assert_eq!(attribute(&confirm, "stage").as_deref(), Some("ACCOUNT"));
    let requests: Vec<&Span> = spans
        .iter()
        .filter(|span| span.parent_span_id == confirm.span_id)
        .collect();
    assert!(!requests.is_empty(), "Billecta requests under the call");
    for request in &requests {
        assert_eq!(request.trace_id, confirm.trace_id);
        assert_eq!(request.kind, SpanKind::Client as i32);
        assert_eq!(attribute(request, "environment").as_deref(), Some("test"));
        assert_eq!(attribute(request, "outcome").as_deref(), Some("ok"));
        assert_eq!(attribute(request, "http_status").as_deref(), Some("200"));
        assert!(request.name.contains("/v1/"), "{}", request.name);
    }

    let get = rpc("GetOnboarding");
    assert_ne!(hex::encode(&get.trace_id), CALLER_TRACE);
    assert!(get.parent_span_id.is_empty(), "a trace of its own");

    // No secret in any span: the password, nor the account's token.
    let exported = format!("{spans:?}");
    assert!(!exported.contains(READY_PASSWORD));
    assert!(!exported.contains(token.expose()));
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|span| span.name.as_str()).collect()
}
