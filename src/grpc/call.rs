//! What happens to every call before its handler: a correlation id (the caller's `x-request-id`, or a
//! new one) that is echoed back and put on a `rpc` span so that every log line of the call carries
//! it; authentication of the caller's bearer API key (health, and reflection if so configured, are
//! public; anything else without a valid key is UNAUTHENTICATED before any handler runs), with the
//! caller's name on the span and the [`Caller`] in the request for the handler's permission check;
//! admission against the server-wide concurrency limit (a call over the limit is refused at once with
//! RESOURCE_EXHAUSTED rather than queued); and one log line when the call ends.

use crate::auth::Callers;
use crate::error::Error;
use crate::grpc::status::to_status;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Semaphore;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument;

/// The header that carries the correlation id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A call's correlation id, in the request's extensions.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

#[derive(Clone)]
pub struct CallLayer {
    admission: Arc<Semaphore>,
    callers: Arc<Callers>,
    public_reflection: bool,
}

impl CallLayer {
    /// `max_concurrent_calls` calls at once across the server, by the `callers`.
    pub fn new(
        max_concurrent_calls: usize,
        callers: Arc<Callers>,
        public_reflection: bool,
    ) -> Self {
        Self {
            admission: Arc::new(Semaphore::new(max_concurrent_calls)),
            callers,
            public_reflection,
        }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            admission: self.admission.clone(),
            callers: self.callers.clone(),
            public_reflection: self.public_reflection,
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    admission: Arc<Semaphore>,
    callers: Arc<Callers>,
    public_reflection: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CallService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let correlation_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| is_acceptable_id(value))
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let path = request.uri().path();
        let method = path.rsplit('/').next().unwrap_or_default();
        let public = path.starts_with("/grpc.health.v1.Health/")
            || (self.public_reflection && path.starts_with("/grpc.reflection."));
        let (caller, refused) = if public {
            (None, None)
        } else {
            let by_key = bearer(request.headers()).map(|key| self.callers.authenticate(key));
            let by_certificate = || {
                // A client certificate verified against --tls-client-ca (mutual TLS).
                let certificates = request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()?
                    .peer_certs()?;
                let first = certificates.first()?;
                self.callers.authenticate_certificate(first.as_ref())
            };
            match by_key.unwrap_or_else(by_certificate).cloned() {
                Some(caller) => (Some(caller), None),
                None if by_key.is_some() => (None, Some("the API key is not valid")),
                None => (
                    None,
                    Some(
                        "a credential is required: send \"authorization: Bearer <API key>\" or a client certificate",
                    ),
                ),
            }
        };
        // Fields are rendered for the logs as they are given: what only a trace needs is given only
        // when traces are exported, and the rest at once rather than recorded one by one.
        let exporting = crate::telemetry::exporting();
        let span = tracing::info_span!(
            "rpc",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            request_id = %correlation_id,
            method = %method,
            caller = caller.as_ref().map(|caller| caller.name.as_str()),
            tenant = tracing::field::Empty,
            environment = tracing::field::Empty,
            stage = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            grpc_status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if exporting {
            span.record("otel.name", path.trim_start_matches('/'));
            span.record("otel.kind", "server");
        }
        continue_trace(&span, request.headers());
        let full_path = path.to_owned();
        request
            .extensions_mut()
            .insert(CorrelationId(correlation_id.clone()));
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        let permit = self.admission.clone().try_acquire_owned();
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let header = HeaderValue::from_str(&correlation_id).ok();
        Box::pin(
            async move {
                let started = Instant::now();
                let mut response = match (refused, permit) {
                    (Some(message), _) => {
                        tracing::info!(reason = message, "call refused: not authenticated");
                        to_status(Error::Unauthenticated {
                            message: message.to_owned(),
                        })
                        .into_http()
                    }
                    (None, Ok(_permit)) => inner.call(request).await?,
                    (None, Err(_)) => {
                        tracing::warn!("call refused: the server is at its concurrency limit");
                        tonic::Status::resource_exhausted(
                            "the server is at its concurrency limit; retry with backoff",
                        )
                        .into_http()
                    }
                };
                let status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|code| code.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                crate::metrics::metrics().rpc(&full_path, status, started.elapsed());
                if exporting {
                    let span = tracing::Span::current();
                    span.record("grpc_status", format_args!("{status:?}"));
                    if !matches!(
                        status,
                        tonic::Code::Ok
                            | tonic::Code::NotFound
                            | tonic::Code::AlreadyExists
                            | tonic::Code::InvalidArgument
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::Aborted
                    ) {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                if status == tonic::Code::Ok {
                    tracing::debug!(elapsed_ms, grpc_status = ?status, "call finished");
                } else {
                    tracing::info!(elapsed_ms, grpc_status = ?status, "call finished");
                }
                if let Some(header) = header {
                    response.headers_mut().insert(REQUEST_ID_HEADER, header);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Continues the caller's trace (W3C `traceparent`, with `tracestate`) in `span`, and puts the trace
/// id on it for the logs. A missing or malformed header starts a new trace, as the standard asks.
fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    let trace_id = if headers.contains_key(TRACEPARENT) {
        let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&HeaderExtractor(headers));
        let context = parent.span().span_context().clone();
        if !context.is_valid() {
            return;
        }
        // Without an exporter there is no OpenTelemetry layer to take the parent: no harm done.
        let _ = span.set_parent(parent);
        context.trace_id()
    } else {
        // Not exporting, no layer started a trace for the call: there is no trace id to log.
        if !crate::telemetry::exporting() {
            return;
        }
        // Exporting: the trace the layer started for the call.
        let context = span.context().span().span_context().clone();
        if !context.is_valid() {
            return;
        }
        context.trace_id()
    };
    span.record("trace_id", format_args!("{trace_id}"));
}

/// The W3C trace context header.
const TRACEPARENT: &str = "traceparent";

/// Request headers as OpenTelemetry's propagators read them.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The key of an `authorization: Bearer <key>` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|key| !key.is_empty())
}

/// A caller's id is reused only if it is short, printable ASCII, so logs stay clean.
fn is_acceptable_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2: at most eight digits and
/// a unit, `H`, `M`, `S`, `m`, `u` or `n`). Billecta calls made for the call must end by then; without
/// the header only the client's own timeouts apply.
pub fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> billecta_client::Deadline {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or_else(
            billecta_client::Deadline::none,
            billecta_client::Deadline::after,
        )
}

fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_grpc_timeout("99999u"),
            Some(Duration::from_micros(99999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(
            parse_grpc_timeout("123456789S"),
            None,
            "more than eight digits"
        );
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);

        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(caller_deadline(&metadata).remaining(), None);
        metadata.insert("grpc-timeout", "500m".parse().unwrap());
        let left = caller_deadline(&metadata).remaining().unwrap();
        assert!(left <= Duration::from_millis(500) && left > Duration::from_millis(400));
    }

    use super::*;
    use std::convert::Infallible;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_call_over_the_limit_is_refused_at_once_and_ids_are_echoed() {
        let (release, released) = oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let slow = tower::service_fn(move |_request: Request<()>| {
            let released = released.clone();
            async move {
                if let Some(wait) = released.lock().await.take() {
                    let _ = wait.await;
                }
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        });
        let service =
            CallLayer::new(1, Arc::new(crate::auth::Callers::sandbox()), false).layer(slow);

        let mut held = authenticated();
        held.headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from_static("first-call"));
        let first = tokio::spawn(service.clone().oneshot(held));
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        let refused = service.clone().oneshot(authenticated()).await.unwrap();
        assert_eq!(
            refused.headers().get("grpc-status").unwrap(),
            "8",
            "RESOURCE_EXHAUSTED"
        );
        assert!(!refused.headers().get(REQUEST_ID_HEADER).unwrap().is_empty());

        release.send(()).unwrap();
        let served = first.await.unwrap().unwrap();
        assert!(served.headers().get("grpc-status").is_none());
        assert_eq!(
            served.headers().get(REQUEST_ID_HEADER).unwrap(),
            "first-call"
        );

        // The slot is free again.
        let after = service.oneshot(authenticated()).await.unwrap();
        assert!(after.headers().get("grpc-status").is_none());
    }

    /// A request with the sandbox's key.
    fn authenticated() -> Request<()> {
        let mut request = Request::new(());
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sandbox-development-key"),
        );
        request
    }

    #[tokio::test]
    async fn only_health_and_public_reflection_need_no_key() {
        let ok = tower::service_fn(|_request: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let call = |public_reflection: bool, path: &'static str, key: Option<&'static str>| {
            let service = CallLayer::new(
                4,
                Arc::new(crate::auth::Callers::sandbox()),
                public_reflection,
            )
            .layer(ok);
            let mut request = Request::builder().uri(path).body(()).unwrap();
            if let Some(key) = key {
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, HeaderValue::from_static(key));
            }
            async move {
                let response = service.oneshot(request).await.unwrap();
                response
                    .headers()
                    .get("grpc-status")
                    .map(|status| status.to_str().unwrap().to_owned())
            }
        };
        let api = "/payway.billecta.onboarding.v1.OnboardingService/GetOnboarding";
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(call(false, api, None).await.as_deref(), Some("16"));
        assert_eq!(
            call(false, api, Some("Bearer wrong")).await.as_deref(),
            Some("16")
        );
        assert_eq!(
            call(false, api, Some("Basic c2FuZGJveA=="))
                .await
                .as_deref(),
            Some("16")
        );
        assert_eq!(
            call(false, api, Some("bearer sandbox-development-key")).await,
            None
        );
        assert_eq!(
            call(false, "/grpc.health.v1.Health/Check", None).await,
            None
        );
        assert_eq!(call(false, reflection, None).await.as_deref(), Some("16"));
        assert_eq!(call(true, reflection, None).await, None);
    }
}
