//! Logging and tracing.
//!
//! Every line written during a call carries the call's span (`rpc`, with the request id, method,
//! caller, tenant, environment and stage as they become known; a Billecta request adds a `billecta`
//! span with the endpoint, attempt and status), in the human format as a prefix and in JSON as
//! fields. A caller's W3C `traceparent` is honoured: the call's span continues the caller's trace,
//! and its trace id is logged. With an OTLP endpoint configured, the same spans are exported to an
//! OpenTelemetry collector (batched, off the call's path).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, for a terminal.
    Human,
    /// One JSON object per line, with the call's span fields (request id, method), for log shippers.
    Json,
}

/// Where traces go.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// An OTLP/gRPC collector, such as `http://otel-collector:4317`.
    pub endpoint: String,
    pub service_name: String,
    /// The share of traces kept that no caller's sampling decision covers.
    pub sample_ratio: f64,
}

/// Keeps the trace exporter running; [`Telemetry::shutdown`] sends what is still buffered.
#[must_use = "dropping it without shutdown loses the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The flush blocks until the collector answers, which needs the runtime to go on.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "traces not all exported at shutdown"),
            Err(error) => tracing::warn!(error = %error, "traces not all exported at shutdown"),
        }
    }
}

/// Installs the global subscriber: logs to stderr in `format`, filtered by `filter`, and spans to
/// `export` if given. Must run inside the Tokio runtime when exporting. Returns an error if the
/// filter does not parse or the exporter cannot be built; a second call in one process (tests) keeps
/// the first subscriber.
pub fn init(
    format: LogFormat,
    filter: &str,
    export: Option<&TraceExport>,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(filter)?;
    let logs = match format {
        // Colours only for a terminal: a log file or collector gets plain text.
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = export.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("billecta-onboarding"))
            .with_tracked_inactivity(false)
    });
    let tracing = traces.is_some();
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    // Already installed (a second server in one test process): keep the first.
    if installed.is_ok() {
        EXPORTING.store(tracing, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

/// Whether spans go to a collector (the installed subscriber exports them).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: fields that only a trace shows (`otel.*`, the call's status on its
/// span) are given only then, since the log formatter renders every field it is given.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

fn tracer_provider(export: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&export.sample_ratio),
        "the trace sample ratio must be between 0 and 1"
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(export.endpoint.clone())
        .build()
        .map_err(|error| anyhow::anyhow!("the OTLP exporter for {}: {error}", export.endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(export.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            export.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}
