//! How hard the client tries: deadlines, retries with capped exponential backoff and jitter, and a
//! circuit breaker per environment so that a Billecta that is down is not hammered by every caller.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the caller stops waiting. Every attempt's timeout and every backoff fits inside it. It also
/// says what set that time ([`Bound`]), so that an error can name what ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline {
    at: Option<Instant>,
    bound: Bound,
}

impl Deadline {
    /// No deadline of the caller's own; only the client's per-attempt timeout applies.
    pub fn none() -> Self {
        Deadline::default()
    }

    /// The caller's deadline, at `instant`.
    pub fn at(instant: Instant) -> Self {
        Deadline {
            at: Some(instant),
            bound: Bound::caller(instant.saturating_duration_since(Instant::now())),
        }
    }

    /// The caller's deadline, `duration` from now.
    pub fn after(duration: Duration) -> Self {
        Deadline {
            at: Instant::now().checked_add(duration),
            bound: Bound::caller(duration),
        }
    }

    /// The same deadline, set by something else than the caller: `name` with its `length`, as an
    /// error names it ("the stage's lease --stage-lease-ms", 120 s).
    pub fn bounded_by(self, name: &'static str, length: Duration) -> Self {
        Deadline {
            bound: Bound { name, length },
            ..self
        }
    }

    /// What set this deadline.
    pub fn bound(&self) -> Bound {
        self.bound
    }

    /// The time left, or `None` when there is no deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.at
            .map(|instant| instant.saturating_duration_since(Instant::now()))
    }

    /// Whether `wait` still fits before the deadline.
    pub fn allows(&self, wait: Duration) -> bool {
        self.remaining().is_none_or(|left| wait < left)
    }

    /// The timeout for one attempt: the configured one, shortened to the time left.
    pub fn cap(&self, timeout: Duration) -> Duration {
        self.remaining().map_or(timeout, |left| left.min(timeout))
    }
}

/// What set a [`Deadline`], as errors name it: the caller's own deadline unless its maker said
/// otherwise, and the length it was given. Shown as "the caller's deadline (60000 ms)": an error
/// that ran out of time says which limit it was, not only the time the last attempt had left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub name: &'static str,
    pub length: Duration,
}

impl Bound {
    const CALLER: &'static str = "the caller's deadline";

    fn caller(length: Duration) -> Self {
        Bound {
            name: Self::CALLER,
            length,
        }
    }
}

impl Default for Bound {
    fn default() -> Self {
        Bound::caller(Duration::ZERO)
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} ms)", self.name, self.length.as_millis())
    }
}

/// Retries of transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means no retries.
    pub max_attempts: u32,
    /// The backoff before the first retry; it doubles for each further one.
    pub base_delay: Duration,
    /// The backoff never grows past this.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for inside a call: the error carries it instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1 for the first retry): half of the capped exponential
    /// step, plus a random share of the other half, so that callers that failed together do not all
    /// come back at the same instant.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(20);
        let step = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let half = step / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A number in `[0, 1)` from the operating system's randomness (through a v4 UUID).
fn random_fraction() -> f64 {
    // The low 56 bits of a v4 UUID are all random (its version and variant bits sit higher up).
    let bits = (uuid::Uuid::new_v4().as_u128() as u64) & ((1u64 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts (connect errors, timeouts, 5xx) that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, for health reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once, without reaching Billecta.
    Open,
    /// One probe call is being let through to see whether Billecta is back.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How an attempt ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Billecta answered (even with a 4xx: it is up).
    Answered,
    /// Billecta could not be reached, timed out or failed (5xx).
    Failed,
    /// Says nothing about Billecta's health (a 429: it is up and asks us to slow down).
    Neutral,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The state and its generation, which counts the breaker's changes (closed, open, each probe). A
/// permit carries the generation it was admitted in, so that the outcome of an attempt admitted
/// before a change (a slow call from before the breaker opened, a probe abandoned long ago) cannot
/// move the breaker.
#[derive(Debug)]
struct Tracked {
    state: State,
    generation: u64,
}

impl Tracked {
    fn change(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
    }
}

/// A circuit breaker for one Billecta environment, shared by every call to it.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    tracked: Mutex<Tracked>,
}

/// Permission for one attempt. Dropping it without [`Permit::record`] (a cancelled call) gives a
/// half-open breaker's probe slot back, so an abandoned probe cannot wedge the breaker.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        CircuitBreaker {
            policy,
            tracked: Mutex::new(Tracked {
                state: State::Closed {
                    consecutive_failures: 0,
                },
                generation: 0,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Lets an attempt through, or says how long until one may try.
    pub fn admit(&self) -> Result<Permit<'_>, Duration> {
        let mut tracked = self.lock();
        let now = Instant::now();
        let probe = match tracked.state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return Err(until - now),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                tracked.change(State::HalfOpen { probing: true });
                true
            }
            // Another call is probing; it will decide soon.
            State::HalfOpen { probing: true } => return Err(self.policy.open_for.min(PROBE_WAIT)),
        };
        Ok(Permit {
            breaker: self,
            generation: tracked.generation,
            probe,
            recorded: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(&self, tracked: &mut Tracked) {
        tracked.change(State::Open {
            until: Instant::now() + self.policy.open_for,
        });
    }
}

/// What a caller is told to wait while another call probes a half-open breaker.
const PROBE_WAIT: Duration = Duration::from_secs(1);

impl Permit<'_> {
    pub fn record(mut self, outcome: AttemptOutcome) {
        self.recorded = true;
        let breaker = self.breaker;
        let mut tracked = breaker.lock();
        if tracked.generation != self.generation {
            // Admitted before the breaker last changed: its outcome is old news.
            return;
        }
        match (outcome, tracked.state) {
            (AttemptOutcome::Answered, State::Closed { .. }) => {
                tracked.state = State::Closed {
                    consecutive_failures: 0,
                };
            }
            (AttemptOutcome::Answered, _) => {
                tracing::info!("billecta circuit breaker closed: the probe succeeded");
                tracked.change(State::Closed {
                    consecutive_failures: 0,
                });
            }
            (
                AttemptOutcome::Failed,
                State::Closed {
                    consecutive_failures,
                },
            ) => {
                let failures = consecutive_failures + 1;
                if failures >= breaker.policy.failure_threshold {
                    tracing::warn!(
                        failures,
                        open_for_ms = breaker.policy.open_for.as_millis() as u64,
                        "billecta circuit breaker opened"
                    );
                    breaker.open(&mut tracked);
                } else {
                    tracked.state = State::Closed {
                        consecutive_failures: failures,
                    };
                }
            }
            (AttemptOutcome::Failed, State::HalfOpen { .. }) => {
                tracing::warn!("billecta circuit breaker probe failed; open again");
                breaker.open(&mut tracked);
            }
            (AttemptOutcome::Neutral, State::HalfOpen { .. }) => {
                tracked.change(State::HalfOpen { probing: false });
            }
            (AttemptOutcome::Failed | AttemptOutcome::Neutral, _) => {}
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut tracked = self.breaker.lock();
            if tracked.generation == self.generation
                && let State::HalfOpen { probing: true } = tracked.state
            {
                tracked.change(State::HalfOpen { probing: false });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker::new(BreakerPolicy {
            failure_threshold: threshold,
            open_for,
        })
    }

    #[test]
    fn a_deadline_names_what_set_it() {
        let caller = Deadline::after(Duration::from_secs(60));
        assert_eq!(
            caller.bound().to_string(),
            "the caller's deadline (60000 ms)"
        );
        let lease = Deadline::after(Duration::from_secs(5)).bounded_by(
            "the stage's lease --stage-lease-ms",
            Duration::from_secs(10),
        );
        assert_eq!(
            lease.bound().to_string(),
            "the stage's lease --stage-lease-ms (10000 ms)"
        );
        assert!(lease.remaining().unwrap() <= Duration::from_secs(5));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.backoff(4)).collect();
        assert!(samples.len() > 1, "backoff has no jitter");
    }

    #[test]
    fn deadline_shortens_attempts_and_refuses_waits_that_do_not_fit() {
        let deadline = Deadline::after(Duration::from_millis(500));
        assert!(deadline.cap(Duration::from_secs(10)) <= Duration::from_millis(500));
        assert!(deadline.allows(Duration::from_millis(10)));
        assert!(!deadline.allows(Duration::from_secs(1)));
        assert_eq!(
            Deadline::none().cap(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert!(Deadline::none().allows(Duration::from_secs(3600)));
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_good_probe_closes_it() {
        let breaker = breaker(3, Duration::from_millis(300));
        for _ in 0..2 {
            breaker.admit().unwrap().record(AttemptOutcome::Failed);
        }
        // An answer (even a 4xx) resets the count.
        breaker.admit().unwrap().record(AttemptOutcome::Answered);
        for _ in 0..3 {
            breaker.admit().unwrap().record(AttemptOutcome::Failed);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        let wait = breaker.admit().unwrap_err();
        assert!(wait <= Duration::from_millis(300));

        std::thread::sleep(Duration::from_millis(350));
        let probe = breaker.admit().expect("one probe after the open period");
        assert!(breaker.admit().is_err(), "only one probe at a time");
        probe.record(AttemptOutcome::Answered);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_an_abandoned_probe_frees_the_slot() {
        let breaker = breaker(1, Duration::from_millis(20));
        breaker.admit().unwrap().record(AttemptOutcome::Failed);
        std::thread::sleep(Duration::from_millis(30));
        breaker.admit().unwrap().record(AttemptOutcome::Failed);
        assert_eq!(breaker.state(), BreakerState::Open);

        std::thread::sleep(Duration::from_millis(30));
        drop(breaker.admit().unwrap());
        assert!(
            breaker.admit().is_ok(),
            "a dropped probe gives its slot back"
        );
    }

    #[test]
    fn outcomes_from_before_a_change_do_not_move_the_breaker() {
        let breaker = breaker(1, Duration::from_millis(200));
        let slow = breaker.admit().unwrap();
        breaker.admit().unwrap().record(AttemptOutcome::Failed);
        assert_eq!(breaker.state(), BreakerState::Open);
        // A call admitted while closed answers late: the breaker stays open.
        slow.record(AttemptOutcome::Answered);
        assert_eq!(breaker.state(), BreakerState::Open);

        std::thread::sleep(Duration::from_millis(250));
        let abandoned = breaker.admit().unwrap();
        // The abandoned probe's slot is freed, and a newer probe takes it...
        drop(abandoned);
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err(), "still one probe at a time");
        probe.record(AttemptOutcome::Answered);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn rate_limiting_neither_opens_nor_closes_it() {
        let breaker = breaker(2, Duration::from_secs(60));
        breaker.admit().unwrap().record(AttemptOutcome::Failed);
        breaker.admit().unwrap().record(AttemptOutcome::Neutral);
        breaker.admit().unwrap().record(AttemptOutcome::Failed);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
