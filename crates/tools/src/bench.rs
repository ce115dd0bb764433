//! Benchmarks that print figures (`billecta-bench`; results in BENCHMARKS.md):
//!
//! 1. the read path — `GetOnboarding` and `GetPaymentConfiguration` under many concurrent streams,
//!    next to a bare no-op unary handler (a tonic server with nothing but a health service) loaded
//!    the same way in the same run, on SQLite and on PostgreSQL;
//! 2. provisioning — tenants from nothing to READY against the simulator with latency added to
//!    every Billecta call, next to the ideal time for that many calls at the configured Billecta
//!    concurrency;
//! 3. start-up to SERVING on an existing database, and resident memory.
//!
//! Everything runs on one machine at once, so each figure is read next to its baseline from the
//! same run: ratios, not absolute numbers, are what compare across machines.

use crate::drill::journey::{CallLog, Clients, Driver, Portal, TenantPlan};
use billecta_onboarding::app::Application;
use billecta_onboarding::config::Config;
use billecta_onboarding::proto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// How a load is applied.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// Calls in flight at once (each its own HTTP/2 stream).
    pub concurrency: usize,
    /// HTTP/2 connections the streams share.
    pub connections: usize,
    pub warm_up: Duration,
    pub measure: Duration,
    /// Calls per second in all, spread evenly over the streams; `None` for as many as are
    /// answered (each stream calls again as soon as its answer is in). Paced, a call's latency runs
    /// from when it was due, so a server that falls behind is not excused by calls it delayed.
    pub pace: Option<f64>,
}

/// What one load measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadResult {
    pub calls: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl std::fmt::Display for LoadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} calls/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} calls, {} errors)",
            self.per_second,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.calls,
            self.errors
        )
    }
}

/// Channels to `address`, connected.
pub async fn channels(address: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(
            Endpoint::from_shared(format!("http://{address}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(channels)
}

/// Runs `call` from `shape.concurrency` tasks spread over `channels` for the warm-up, then counts
/// calls and latencies for the measured period.
pub async fn load<F, Fut>(channels: &[Channel], shape: LoadShape, call: F) -> LoadResult
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    measure(channels, shape, Arc::new(call)).await.result()
}

/// Turns of at most this long, each preceded by [`TURN_WARM_UP`], in [`load_beside_bare`].
pub const TURN: Duration = Duration::from_secs(1);

/// The load before each turn of [`load_beside_bare`] after the first (whose warm-up is the shape's).
pub const TURN_WARM_UP: Duration = Duration::from_millis(200);

/// A call loaded in turns with the bare handler ([`load_beside_bare`]).
#[derive(Debug, Clone)]
pub struct BesideBare {
    /// The call's figures over all its turns.
    pub call: LoadResult,
    /// The bare handler's figures over all its turns.
    pub bare: LoadResult,
    /// Per pair of adjacent turns, the call's throughput over the bare handler's, in turn order.
    pub pair_ratios: Vec<f64>,
}

impl BesideBare {
    /// The median of [`Self::pair_ratios`]: a busy spell of the machine that falls on one turn
    /// moves the ratio of that pair, not the figure.
    pub fn ratio(&self) -> f64 {
        median(&self.pair_ratios)
    }
}

/// The median of `values` (the mean of the middle two of an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `call` on `channels` and [`bare_call`] on `bare_channels`, loaded in turns of [`TURN`] (the bare
/// handler first, then the call, then the call first), `shape.measure` of each in all: what else
/// the machine is doing meanwhile falls on both alike, so their ratio holds on a shared machine
/// where two loads run one after the other would not.
pub async fn load_beside_bare<F, Fut>(
    channels: &[Channel],
    bare_channels: &[Channel],
    shape: LoadShape,
    call: F,
) -> BesideBare
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let bare = Arc::new(bare_call);
    let turns = shape.measure.div_duration_f64(TURN).ceil().max(1.0) as u32;
    let turn = LoadShape {
        warm_up: TURN_WARM_UP,
        measure: shape.measure / turns,
        ..shape
    };
    let (mut called, mut bared) = (Measured::default(), Measured::default());
    let mut pair_ratios = Vec::with_capacity(turns as usize);
    for index in 0..turns {
        let shape = if index == 0 {
            LoadShape {
                warm_up: shape.warm_up,
                ..turn
            }
        } else {
            turn
        };
        let (call_turn, bare_turn) = if index % 2 == 0 {
            let bare_turn = measure(bare_channels, shape, bare.clone()).await;
            (measure(channels, shape, call.clone()).await, bare_turn)
        } else {
            let call_turn = measure(channels, shape, call.clone()).await;
            (call_turn, measure(bare_channels, shape, bare.clone()).await)
        };
        pair_ratios.push(call_turn.per_second() / bare_turn.per_second().max(f64::EPSILON));
        called.add(call_turn);
        bared.add(bare_turn);
    }
    BesideBare {
        call: called.result(),
        bare: bared.result(),
        pair_ratios,
    }
}

/// The latencies (µs) of the calls answered while a load was measured, its errors, and how long.
#[derive(Default)]
struct Measured {
    latencies: Vec<u32>,
    errors: u64,
    elapsed: Duration,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn add(&mut self, other: Measured) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    fn result(mut self) -> LoadResult {
        self.latencies.sort_unstable();
        let latencies = &self.latencies;
        let at = |share: f64| {
            latencies
                .get(
                    ((latencies.len() as f64 * share) as usize)
                        .min(latencies.len().saturating_sub(1)),
                )
                .map_or(Duration::ZERO, |micros| {
                    Duration::from_micros(u64::from(*micros))
                })
        };
        LoadResult {
            calls: latencies.len() as u64,
            errors: self.errors,
            per_second: self.per_second(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

async fn measure<F, Fut>(channels: &[Channel], shape: LoadShape, call: Arc<F>) -> Measured
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(shape.concurrency);
    for worker in 0..shape.concurrency {
        let channel = channels[worker % channels.len()].clone();
        let call = call.clone();
        let measuring = measuring.clone();
        let stop = stop.clone();
        // Paced: this stream's calls are due every `interval`, the streams' turns staggered.
        let interval = shape
            .pace
            .map(|rate| Duration::from_secs_f64(shape.concurrency as f64 / rate.max(1.0)));
        let mut due = interval.map(|interval| {
            Instant::now() + interval.mul_f64(worker as f64 / shape.concurrency as f64)
        });
        workers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut started = Instant::now();
                if let (Some(at), Some(interval)) = (due.as_mut(), interval) {
                    if *at > started {
                        // On time: the call starts when the timer lets it.
                        tokio::time::sleep_until((*at).into()).await;
                        started = Instant::now();
                    } else {
                        // Late, because the last answer was: count from when it was due.
                        started = *at;
                    }
                    *at += interval;
                }
                let outcome = call(channel.clone()).await;
                if measuring.load(Ordering::Relaxed) {
                    match outcome {
                        Ok(()) => latencies
                            .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(shape.warm_up).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(shape.measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut measured = Measured {
        elapsed,
        ..Measured::default()
    };
    for worker in workers {
        if let Ok((latencies, errors)) = worker.await {
            measured.latencies.extend(latencies);
            measured.errors += errors;
        }
    }
    measured
}

/// A tonic server with nothing but the health service, no layers: the cost of gRPC itself.
pub async fn bare_server() -> anyhow::Result<(SocketAddr, tokio_util::sync::CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let _reporter = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.cancelled_owned(),
            )
            .await;
    });
    Ok((address, stop))
}

/// The bare handler's call: a health check, its answer not decoded.
pub async fn bare_call(channel: Channel) -> Result<(), tonic::Status> {
    let request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    undecoded(channel, "/grpc.health.v1.Health/Check", request).await
}

/// A unary call to `path` whose answer is received whole but not decoded: the load generator's
/// work is then the same whatever the answer holds, and the figures are of the server's work (a
/// client decoding a large answer on the same cores would count its own work against the server).
pub async fn undecoded<M>(
    channel: Channel,
    path: &'static str,
    request: tonic::Request<M>,
) -> Result<(), tonic::Status>
where
    M: prost::Message + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let answer = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            Undecoded::<M>(std::marker::PhantomData),
        )
        .await?;
    if answer.into_inner() == 0 {
        return Err(tonic::Status::internal("an empty answer"));
    }
    Ok(())
}

/// Encodes requests `M`; takes answers as their length.
struct Undecoded<M>(std::marker::PhantomData<fn(M)>);

impl<M: prost::Message + Send + 'static> tonic::codec::Codec for Undecoded<M> {
    type Encode = M;
    type Decode = usize;
    type Encoder = tonic_prost::ProstEncoder<M>;
    type Decoder = Length;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Length
    }
}

struct Length;

impl tonic::codec::Decoder for Length {
    type Item = usize;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        source: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<usize>, tonic::Status> {
        use prost::bytes::Buf;
        let length = source.remaining();
        source.advance(length);
        Ok(Some(length))
    }
}

/// A service started in-process in sandbox mode on `database`, with one tenant brought to READY in
/// the test environment; returns the application's shutdown token, its address, the onboarding's
/// name and the creditor's.
pub struct ReadySetup {
    pub address: SocketAddr,
    pub onboarding: String,
    pub creditor: String,
    /// The size of a GetOnboarding answer's message, in bytes.
    pub onboarding_bytes: usize,
    pub shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ReadySetup {
    pub async fn start(database: &str, adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let mut config = Config::for_database(database);
        config.sandbox = true;
        config.reconcile_interval_ms = 0;
        config.max_concurrent_calls = 4096;
        adjust(&mut config);
        let application = Application::build(config).await?;
        let address = application.local_addr();
        let simulator = application
            .sandbox()
            .expect("sandbox mode")
            .simulator(billecta_onboarding::domain::Environment::Test)
            .clone();
        let shutdown = application.shutdown_token();
        let task = tokio::spawn(application.run());
        let channel = channels(address, 1).await?.remove(0);
        let log = CallLog::default();
        let driver = Driver::new(
            vec![Clients::new(
                channel,
                billecta_onboarding::auth::SANDBOX_KEY,
            )],
            &simulator,
            &log,
            Instant::now(),
            Duration::from_secs(60),
        );
        let plan = TenantPlan::new("bench", 0);
        driver
            .journey(&plan, &Portal::default(), None)
            .await
            .map_err(|why| anyhow::anyhow!("the benchmark's tenant did not get READY: {why}"))?;
        let onboarding = driver
            .onboarding(Instant::now() + Duration::from_secs(10), &plan.onboarding())
            .await
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        anyhow::ensure!(
            onboarding.state == proto::OnboardingState::Ready as i32,
            "the benchmark's tenant is not READY"
        );
        tracing::info!(?onboarding, "the benchmark's onboarding");
        Ok(Self {
            address,
            onboarding_bytes: prost::Message::encoded_len(&proto::GetOnboardingResponse {
                onboarding: Some(onboarding.clone()),
            }),
            onboarding: onboarding.name.clone(),
            creditor: onboarding.creditors[0].name.clone(),
            shutdown,
            task,
        })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The `authorization` header value of the sandbox's development key.
pub fn sandbox_bearer() -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {}", billecta_onboarding::auth::SANDBOX_KEY)
        .parse()
        .expect("an ASCII key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[0.52, 0.31, 0.55, 0.50, 0.53]), 0.52);
        assert_eq!(median(&[0.6, 0.4, 0.5, 0.7]), 0.55);
        assert_eq!(median(&[0.5]), 0.5);
        assert_eq!(median(&[]), 0.0);
    }
}
