//! What happens to every call before its handler: a correlation id (the caller's `x-request-id`, or a
//! new one) that is echoed back and put on a `rpc` span so that every log line of the call carries
//! it; admission against the server-wide concurrency limit (a call over the limit is refused at once
//! with RESOURCE_EXHAUSTED rather than queued); and one log line when the call ends.

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Semaphore;
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
}

impl CallLayer {
    /// `max_concurrent_calls` calls at once across the server.
    pub fn new(max_concurrent_calls: usize) -> Self {
        Self {
            admission: Arc::new(Semaphore::new(max_concurrent_calls)),
        }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    admission: Arc<Semaphore>,
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
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let span = tracing::info_span!("rpc", request_id = %correlation_id, method = %method);
        request
            .extensions_mut()
            .insert(CorrelationId(correlation_id.clone()));
        let permit = self.admission.clone().try_acquire_owned();
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let header = HeaderValue::from_str(&correlation_id).ok();
        Box::pin(
            async move {
                let started = Instant::now();
                let mut response = match permit {
                    Ok(_permit) => inner.call(request).await?,
                    Err(_) => {
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
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                if status == tonic::Code::Ok {
                    tracing::debug!(elapsed_ms, "call finished");
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

/// A caller's id is reused only if it is short, printable ASCII, so logs stay clean.
fn is_acceptable_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2: at most eight digits and
/// a unit, `H`, `M`, `S`, `m`, `u` or `n`). Billecta calls made for the call must end by then; without
/// the header only the client's own timeouts apply.
pub fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> crate::billecta::Deadline {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or_else(
            crate::billecta::Deadline::none,
            crate::billecta::Deadline::after,
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
        let service = CallLayer::new(1).layer(slow);

        let mut held = Request::new(());
        held.headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from_static("first-call"));
        let first = tokio::spawn(service.clone().oneshot(held));
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        let refused = service.clone().oneshot(Request::new(())).await.unwrap();
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
        let after = service.oneshot(Request::new(())).await.unwrap();
        assert!(after.headers().get("grpc-status").is_none());
    }
}
