//! Prometheus metrics, served on their own address (`--metrics-listen`) at `/metrics`:
//!
//! - `onboarding_rpc_requests_total{method, code}` and `onboarding_rpc_duration_seconds{method}`;
//! - `billecta_requests_total{environment, endpoint, outcome}` and
//!   `billecta_request_duration_seconds{environment, endpoint}`: every HTTP request to Billecta,
//!   retries included; `billecta_breaker_state{environment}` (0 closed, 1 half-open, 2 open);
//! - `onboarding_onboardings{environment, state}` and `onboarding_stages{environment, stage, state}`:
//!   the funnel, read from the database at each scrape, so every replica reports the same;
//! - `onboarding_reconciler_runs_total{work, outcome}` (what the background worker did) and
//!   `onboarding_integrations_broken_total{environment, stage}` (stages a live check found broken).
//!
//! Counters live in one process-wide registry, like the process they describe. Metrics depend on
//! no layer above them: what a scrape reads from the Billecta clients and the database is handed to
//! [`Metrics::render`] by the composition root (`app`).

use crate::domain::{Environment, Stage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

// Labels of the per-call families are static text: counting a call allocates nothing for them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BillectaLabels {
    environment: &'static str,
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    environment: &'static str,
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    environment: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    environment: String,
    stage: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokenLabels {
    environment: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcilerLabels {
    work: String,
    outcome: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A circuit breaker's state, as the `billecta_breaker_state` gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// Onboardings per (environment, state) and stages per (environment, stage, state), as counted at a
/// scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Funnel {
    pub onboardings: Vec<(String, String, i64)>,
    pub stages: Vec<(String, String, String, i64)>,
}

/// From 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Histograms<MethodLabels>,
    billecta_requests: Family<BillectaLabels, Counter>,
    billecta_duration: Histograms<EndpointLabels>,
    breaker_state: Family<EnvironmentLabels, Gauge>,
    onboardings: Family<StateLabels, Gauge>,
    stages: Family<StageLabels, Gauge>,
    reconciler_runs: Family<ReconcilerLabels, Counter>,
    integrations_broken: Family<BrokenLabels, Counter>,
    /// Serialises scrapes: each refreshes the database gauges before it encodes.
    scrape: tokio::sync::Mutex<()>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The gRPC methods the server offers (`/package.Service/Method`), so that a caller cannot create a
/// label value per made-up path.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    use prost::Message;
    let mut known = HashSet::new();
    for set in [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(files) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in files.file {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    known
});

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "onboarding_rpc_requests",
            "gRPC calls by method and status code",
            rpc_requests.clone(),
        );
        let rpc_duration: Histograms<MethodLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "onboarding_rpc_duration_seconds",
            "gRPC call latency by method, until the response headers",
            rpc_duration.clone(),
        );
        let billecta_requests = Family::<BillectaLabels, Counter>::default();
        registry.register(
            "billecta_requests",
            "HTTP requests to Billecta (retries included) by environment, endpoint and outcome: ok, or the error's kind",
            billecta_requests.clone(),
        );
        let billecta_duration: Histograms<EndpointLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "billecta_request_duration_seconds",
            "Latency of HTTP requests to Billecta by environment and endpoint",
            billecta_duration.clone(),
        );
        let breaker_state = Family::<EnvironmentLabels, Gauge>::default();
        registry.register(
            "billecta_breaker_state",
            "The circuit breaker per Billecta environment: 0 closed, 1 half-open (one probe), 2 open",
            breaker_state.clone(),
        );
        let onboardings = Family::<StateLabels, Gauge>::default();
        registry.register(
            "onboarding_onboardings",
            "Onboardings by environment and state (READY, ACTION_REQUIRED, IN_PROGRESS, FAILED, BROKEN)",
            onboardings.clone(),
        );
        let stages = Family::<StageLabels, Gauge>::default();
        registry.register(
            "onboarding_stages",
            "Stages by environment, stage and state: the onboarding funnel",
            stages.clone(),
        );
        let reconciler_runs = Family::<ReconcilerLabels, Counter>::default();
        registry.register(
            "onboarding_reconciler_runs",
            "Work the reconciler did: resume_<stage> or validate, by outcome",
            reconciler_runs.clone(),
        );
        let integrations_broken = Family::<BrokenLabels, Counter>::default();
        registry.register(
            "onboarding_integrations_broken",
            "Stages a live check found broken in Billecta (token rejected, creditor disabled, settings changed)",
            integrations_broken.clone(),
        );
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            billecta_requests,
            billecta_duration,
            breaker_state,
            onboardings,
            stages,
            reconciler_runs,
            integrations_broken,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// One finished gRPC call to `path` (`/package.Service/Method`).
    pub fn rpc(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let method = KNOWN_METHODS.get(path).map_or("unknown", |known| {
            known.rsplit('/').next().unwrap_or_default()
        });
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
        self.rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// One HTTP request to Billecta's `environment` (its name) and `endpoint` (a route template),
    /// and its outcome.
    pub fn billecta_request(
        &self,
        environment: &'static str,
        endpoint: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.billecta_requests
            .get_or_create(&BillectaLabels {
                environment,
                endpoint,
                outcome,
            })
            .inc();
        self.billecta_duration
            .get_or_create(&EndpointLabels {
                environment,
                endpoint,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The reconciler did `work` (`resume_CREDITOR`, `validate`) with `outcome`.
    pub fn reconciler_run(&self, work: &str, outcome: &str) {
        self.reconciler_runs
            .get_or_create(&ReconcilerLabels {
                work: work.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A live check turned `stage` BROKEN.
    pub fn integration_broken(&self, environment: Environment, stage: Stage) {
        self.integrations_broken
            .get_or_create(&BrokenLabels {
                environment: environment.as_str().to_owned(),
                stage: stage.as_str().to_owned(),
            })
            .inc();
    }

    /// The exposition: the counters, each environment's breaker as `breaker` tells it now, and the
    /// funnel as `funnel` reads it now.
    pub async fn render<E: std::fmt::Display>(
        &self,
        breaker: impl Fn(Environment) -> Breaker,
        funnel: impl Future<Output = Result<Funnel, E>>,
    ) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        for &environment in Environment::ALL {
            self.breaker_state
                .get_or_create(&EnvironmentLabels {
                    environment: environment.as_str().to_owned(),
                })
                .set(breaker(environment) as i64);
        }
        self.onboardings.clear();
        self.stages.clear();
        match funnel.await {
            Ok(funnel) => {
                for (environment, state, count) in funnel.onboardings {
                    self.onboardings
                        .get_or_create(&StateLabels { environment, state })
                        .set(count);
                }
                for (environment, stage, state, count) in funnel.stages {
                    self.stages
                        .get_or_create(&StageLabels {
                            environment,
                            stage,
                            state,
                        })
                        .set(count);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "metrics: the funnel could not be read");
            }
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %error, "metrics could not be encoded");
        }
        text
    }
}
