//! Fault injection: the failures a client of Billecta must survive, on demand and repeatable.
//!
//! A [`FaultRule`] says which public endpoint (or all of them) misbehaves, how, how often
//! (`probability`) and how many times at most (`times`, so a test can say "fail twice, then
//! succeed"). Rules are checked in order for every public request; a latency rule adds its delay
//! and the check goes on, the first other rule that fires answers the request. Probability draws
//! come from a seeded generator, one draw per rule that matches the request, so the same seed, rules
//! and request order give the same outcomes every run.
//!
//! Rules travel as tagged JSON (`{"route":"POST /v1/creditors/creditor","fault":{"kind":"status",
//! "status":503},"probability":0.5,"times":2}`) through the admin API and as a compact text form
//! through the binary's `--fault` flag (`status=503@POST /v1/creditors/creditor,p=0.5,times=2`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How one request misbehaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Wait this long before answering; composes with the other faults and with a normal answer.
    Latency { ms: u64 },
    /// Answer this 5xx status instead of doing the work.
    Status {
        status: u16,
        #[serde(default)]
        body: FaultBody,
    },
    /// Answer 429 with `Retry-After` and an empty body.
    RateLimited { retry_after_seconds: u64 },
    /// Never answer: the request waits until the client gives up or the simulator shuts down.
    Hang,
    /// Abort the TCP connection without an answer; the client sees a connection reset.
    Reset,
}

/// The body of an injected status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultBody {
    /// Billecta's error shape, `{"Message": ..., "ExternalErrorCode": null, "RequestContent": null}`.
    #[default]
    Json,
    /// An IIS-style HTML error page, as a proxy or a redeploy in progress answers.
    Html,
}

/// Which requests misbehave, how, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// A route template such as `POST /v1/creditors/creditor` or `GET /v1/creditors/creditor/{id}`;
    /// absent means every public endpoint (never the admin API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub fault: Fault,
    /// The chance, 0 to 1, that a matching request gets the fault.
    #[serde(default = "certain")]
    pub probability: f64,
    /// Apply at most this many times, then never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

fn certain() -> f64 {
    1.0
}

impl FaultRule {
    /// The fault on every public endpoint, every time.
    pub fn new(fault: Fault) -> Self {
        Self {
            route: None,
            fault,
            probability: 1.0,
            times: None,
        }
    }

    /// Only on `route` (`"POST /v1/creditors/creditor"`).
    pub fn on(mut self, route: &str) -> Self {
        self.route = Some(route.to_owned());
        self
    }

    /// With this probability.
    pub fn with_probability(mut self, probability: f64) -> Self {
        self.probability = probability;
        self
    }

    /// At most `times` times.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }

    /// Checks the values against `routes`, the public route templates. The route is compared
    /// without regard to case or repeated spaces.
    pub fn check(&self, routes: &[&str]) -> Result<(), FaultRuleError> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(FaultRuleError::Probability(self.probability.to_string()));
        }
        if let Fault::Status { status, .. } = self.fault
            && !(500..=599).contains(&status)
        {
            return Err(FaultRuleError::Status(status.to_string()));
        }
        if let Some(route) = &self.route {
            let wanted = normalize_route(route);
            if !routes.iter().any(|known| normalize_route(known) == wanted) {
                return Err(FaultRuleError::Route(route.clone()));
            }
        }
        Ok(())
    }

    fn matches(&self, route: &str) -> bool {
        self.route
            .as_deref()
            .is_none_or(|wanted| normalize_route(wanted) == normalize_route(route))
    }
}

/// `POST  /V1/Creditors/Creditor` and `post /v1/creditors/creditor` are the same route.
fn normalize_route(route: &str) -> String {
    route
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

/// A fault rule that does not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultRuleError {
    #[error(
        "empty fault rule; expected e.g. \"status=503\", \"latency=200\", \"rate-limit=2\", \"hang\" or \"reset\""
    )]
    Empty,
    #[error("unknown fault kind {0:?}; expected status, latency, rate-limit, hang or reset")]
    Kind(String),
    #[error("fault {kind:?} needs a value, as in \"{kind}={example}\"")]
    MissingValue {
        kind: &'static str,
        example: &'static str,
    },
    #[error("fault {0:?} takes no value")]
    UnexpectedValue(String),
    #[error("{what} {value:?} is not a whole number")]
    Number { what: &'static str, value: String },
    #[error(
        "status {0} is not a server error; injected statuses are 500 to 599 (use rate-limit for 429)"
    )]
    Status(String),
    #[error("status body {0:?} is neither json nor html")]
    Body(String),
    #[error("probability {0} is not between 0 and 1")]
    Probability(String),
    #[error("unknown option {0:?}; expected p=<0..1> or times=<n>")]
    Option(String),
    #[error(
        "route {0:?} is not a public endpoint of the simulator (write it as \"METHOD /v1/path/{{id}}\")"
    )]
    Route(String),
}

/// The compact form: `KIND[=VALUE][@ROUTE][,p=P][,times=N]`, where KIND=VALUE is `status=503`
/// (JSON body) or `status=502:html`, `latency=200` (milliseconds), `rate-limit=2` (Retry-After
/// seconds), `hang` or `reset`; ROUTE is one of the simulator's public route templates, such as
/// `POST /v1/creditors/creditor`.
impl FromStr for FaultRule {
    type Err = FaultRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let head = parts.next().unwrap_or_default().trim();
        if head.is_empty() {
            return Err(FaultRuleError::Empty);
        }
        let (spec, route) = match head.split_once('@') {
            Some((spec, route)) => (spec.trim(), Some(route.trim().to_owned())),
            None => (head, None),
        };
        let (kind, value) = match spec.split_once('=') {
            Some((kind, value)) => (kind.trim(), Some(value.trim())),
            None => (spec, None),
        };
        let fault = parse_fault(kind, value)?;
        let mut rule = FaultRule {
            route,
            ..FaultRule::new(fault)
        };
        for option in parts {
            let (option_name, option_value) = option.split_once('=').unwrap_or((option, ""));
            match option_name.trim() {
                "p" | "probability" => {
                    rule.probability = option_value
                        .trim()
                        .parse()
                        .map_err(|_| FaultRuleError::Probability(option_value.trim().to_owned()))?;
                }
                "times" => rule.times = Some(number("times", option_value)?),
                _ => return Err(FaultRuleError::Option(option.trim().to_owned())),
            }
        }
        rule.check(super::PUBLIC_ROUTES)?;
        Ok(rule)
    }
}

fn parse_fault(kind: &str, value: Option<&str>) -> Result<Fault, FaultRuleError> {
    let needed = |kind: &'static str, example: &'static str| {
        value.ok_or(FaultRuleError::MissingValue { kind, example })
    };
    let none = || match value {
        Some(_) => Err(FaultRuleError::UnexpectedValue(kind.to_owned())),
        None => Ok(()),
    };
    match kind {
        "status" => {
            let text = needed("status", "503")?;
            let (code, body_name) = text.split_once(':').unwrap_or((text, "json"));
            let status: u16 = number("status", code)?;
            if !(500..=599).contains(&status) {
                return Err(FaultRuleError::Status(code.trim().to_owned()));
            }
            let body = match body_name.trim() {
                "json" => FaultBody::Json,
                "html" => FaultBody::Html,
                other => return Err(FaultRuleError::Body(other.to_owned())),
            };
            Ok(Fault::Status { status, body })
        }
        "latency" => Ok(Fault::Latency {
            ms: number("latency", needed("latency", "200")?)?,
        }),
        "rate-limit" | "rate_limit" | "rate-limited" => Ok(Fault::RateLimited {
            retry_after_seconds: number("rate-limit", needed("rate-limit", "2")?)?,
        }),
        "hang" => none().map(|()| Fault::Hang),
        "reset" => none().map(|()| Fault::Reset),
        other => Err(FaultRuleError::Kind(other.to_owned())),
    }
}

fn number<T: FromStr>(what: &'static str, text: &str) -> Result<T, FaultRuleError> {
    text.trim().parse().map_err(|_| FaultRuleError::Number {
        what,
        value: text.trim().to_owned(),
    })
}

/// Writes the compact form, which [`FaultRule::from_str`] reads back.
impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fault {
            Fault::Latency { ms } => write!(f, "latency={ms}")?,
            Fault::Status {
                status,
                body: FaultBody::Json,
            } => write!(f, "status={status}")?,
            Fault::Status {
                status,
                body: FaultBody::Html,
            } => write!(f, "status={status}:html")?,
            Fault::RateLimited {
                retry_after_seconds,
            } => write!(f, "rate-limit={retry_after_seconds}")?,
            Fault::Hang => f.write_str("hang")?,
            Fault::Reset => f.write_str("reset")?,
        }
        if let Some(route) = &self.route {
            write!(f, "@{route}")?;
        }
        if self.probability < 1.0 {
            write!(f, ",p={}", self.probability)?;
        }
        if let Some(times) = self.times {
            write!(f, ",times={times}")?;
        }
        Ok(())
    }
}

/// A small seeded generator (SplitMix64): repeatable, and plenty for coin flips.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        // The top 53 bits fit a double's mantissa exactly.
        let bits = self.next_u64() >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}

/// A rule with how often it has fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRule {
    #[serde(flatten)]
    pub rule: FaultRule,
    /// How many requests this rule has answered or delayed so far.
    pub applied: u32,
}

/// The fault rules in force and the generator state, as the admin API shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultsState {
    pub seed: u64,
    pub rules: Vec<ActiveRule>,
}

/// What the rules decided for one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Decision {
    /// The sum of the latency rules that fired.
    pub latency: Duration,
    /// The first other fault that fired, which answers the request instead of the endpoint.
    pub answer: Option<Fault>,
}

/// The rules in force, with the generator that decides probabilities.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    seed: u64,
    random: SplitMix64,
    rules: Vec<ActiveRule>,
}

impl FaultPlan {
    pub(crate) fn new(seed: u64, rules: Vec<FaultRule>) -> Self {
        Self {
            seed,
            random: SplitMix64::new(seed),
            rules: rules
                .into_iter()
                .map(|rule| ActiveRule { rule, applied: 0 })
                .collect(),
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Decides the fate of one request to `route` (`"POST /v1/creditors/creditor"`).
    pub(crate) fn decide(&mut self, route: &str) -> Decision {
        let mut decision = Decision::default();
        for active in &mut self.rules {
            if !active.rule.matches(route) {
                continue;
            }
            if active
                .rule
                .times
                .is_some_and(|limit| active.applied >= limit)
            {
                continue;
            }
            let draw = self.random.next_f64();
            if draw >= active.rule.probability {
                continue;
            }
            active.applied = active.applied.saturating_add(1);
            match &active.rule.fault {
                Fault::Latency { ms } => decision.latency += Duration::from_millis(*ms),
                other => {
                    decision.answer = Some(other.clone());
                    break;
                }
            }
        }
        decision
    }

    pub(crate) fn state(&self) -> FaultsState {
        FaultsState {
            seed: self.seed,
            rules: self.rules.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[&str] = &[
        "POST /v1/creditors/creditor",
        "GET /v1/creditors/creditor/{id}",
    ];

    fn parse(text: &str) -> Result<FaultRule, FaultRuleError> {
        text.parse()
    }

    #[test]
    fn the_compact_form_parses() {
        for (text, expected) in [
            (
                "status=503@POST /v1/creditors/creditor,p=0.3,times=2",
                FaultRule {
                    route: Some("POST /v1/creditors/creditor".into()),
                    fault: Fault::Status {
                        status: 503,
                        body: FaultBody::Json,
                    },
                    probability: 0.3,
                    times: Some(2),
                },
            ),
            ("latency=200", FaultRule::new(Fault::Latency { ms: 200 })),
            (
                "rate-limit=2",
                FaultRule::new(Fault::RateLimited {
                    retry_after_seconds: 2,
                }),
            ),
            ("hang", FaultRule::new(Fault::Hang)),
            (
                "reset@GET /v1/creditors/creditor/{id}",
                FaultRule::new(Fault::Reset).on("GET /v1/creditors/creditor/{id}"),
            ),
            (
                "status=502:html,times=1",
                FaultRule::new(Fault::Status {
                    status: 502,
                    body: FaultBody::Html,
                })
                .times(1),
            ),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_compact_forms_say_what_is_wrong() {
        let number = |what, value: &str| FaultRuleError::Number {
            what,
            value: value.into(),
        };
        for (text, expected) in [
            ("", FaultRuleError::Empty),
            ("boom", FaultRuleError::Kind("boom".into())),
            (
                "status",
                FaultRuleError::MissingValue {
                    kind: "status",
                    example: "503",
                },
            ),
            ("status=404", FaultRuleError::Status("404".into())),
            ("status=503:xml", FaultRuleError::Body("xml".into())),
            ("latency=fast", number("latency", "fast")),
            ("hang=1", FaultRuleError::UnexpectedValue("hang".into())),
            ("reset,p=2", FaultRuleError::Probability("2".into())),
            ("reset,p=x", FaultRuleError::Probability("x".into())),
            ("reset,often=1", FaultRuleError::Option("often=1".into())),
            (
                "hang@POST /v1/creditor",
                FaultRuleError::Route("POST /v1/creditor".into()),
            ),
            ("reset,times=-1", number("times", "-1")),
        ] {
            assert_eq!(parse(text), Err(expected), "{text}");
        }
        let message = parse("status=404").unwrap_err().to_string();
        assert!(message.contains("500 to 599"), "{message}");
    }

    #[test]
    fn display_writes_the_compact_form_back() {
        for text in [
            "status=503@POST /v1/creditors/creditor,p=0.3,times=2",
            "status=502:html",
            "latency=200",
            "rate-limit=2,times=1",
            "hang",
            "reset@GET /v1/creditors/creditor/{id}",
        ] {
            let rule = parse(text).unwrap();
            assert_eq!(rule.to_string(), text);
            assert_eq!(parse(&rule.to_string()), Ok(rule));
        }
    }

    #[test]
    fn rules_travel_as_tagged_json() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"route":"POST /v1/creditors/creditor","fault":{"kind":"status","status":503},"probability":0.5,"times":2}"#,
        )
        .unwrap();
        assert_eq!(
            rule,
            FaultRule::new(Fault::Status {
                status: 503,
                body: FaultBody::Json
            })
            .on("POST /v1/creditors/creditor")
            .with_probability(0.5)
            .times(2)
        );
        let minimal: FaultRule = serde_json::from_str(r#"{"fault":{"kind":"hang"}}"#).unwrap();
        assert_eq!(minimal, FaultRule::new(Fault::Hang));
        let json = serde_json::to_value(FaultRule::new(Fault::RateLimited {
            retry_after_seconds: 3,
        }))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"fault": {"kind": "rate_limited", "retry_after_seconds": 3}, "probability": 1.0})
        );
    }

    #[test]
    fn check_refuses_unknown_routes_and_bad_values() {
        let rule = FaultRule::new(Fault::Hang).on("post  /V1/creditors/creditor");
        assert_eq!(rule.check(ROUTES), Ok(()));
        let typo = FaultRule::new(Fault::Hang).on("POST /v1/creditor");
        assert_eq!(
            typo.check(ROUTES),
            Err(FaultRuleError::Route("POST /v1/creditor".into()))
        );
        let status = FaultRule::new(Fault::Status {
            status: 200,
            body: FaultBody::Json,
        });
        assert_eq!(
            status.check(ROUTES),
            Err(FaultRuleError::Status("200".into()))
        );
        let probability = FaultRule::new(Fault::Hang).with_probability(-0.1);
        assert!(probability.check(ROUTES).is_err());
    }

    #[test]
    fn times_limits_a_rule_and_latency_composes() {
        let mut plan = FaultPlan::new(
            7,
            vec![
                FaultRule::new(Fault::Latency { ms: 5 }),
                FaultRule::new(Fault::Reset)
                    .on("POST /v1/creditors/creditor")
                    .times(2),
            ],
        );
        let route = "POST /v1/creditors/creditor";
        for _ in 0..2 {
            let decision = plan.decide(route);
            assert_eq!(decision.latency, Duration::from_millis(5));
            assert_eq!(decision.answer, Some(Fault::Reset));
        }
        assert_eq!(plan.decide(route).answer, None);
        let other = plan.decide("GET /v1/creditors/creditor/{id}");
        assert_eq!(
            (other.latency, other.answer),
            (Duration::from_millis(5), None)
        );
        assert_eq!(plan.state().rules[1].applied, 2);
        assert_eq!(plan.state().rules[0].applied, 4);
    }

    #[test]
    fn the_same_seed_gives_the_same_outcomes() {
        let outcomes = |seed: u64| {
            let mut plan = FaultPlan::new(
                seed,
                vec![FaultRule::new(Fault::Hang).with_probability(0.5)],
            );
            (0..64)
                .map(|_| plan.decide("GET /v1/creditors/creditors").answer.is_some())
                .collect::<Vec<bool>>()
        };
        assert_eq!(outcomes(42), outcomes(42));
        assert_ne!(outcomes(42), outcomes(43));
        let fired = outcomes(42).iter().filter(|&&fired| fired).count();
        assert!((16..=48).contains(&fired), "{fired} of 64");
    }

    #[test]
    fn probability_zero_never_fires_and_one_always_does() {
        let mut never = FaultPlan::new(1, vec![FaultRule::new(Fault::Hang).with_probability(0.0)]);
        let mut always = FaultPlan::new(1, vec![FaultRule::new(Fault::Hang)]);
        for _ in 0..100 {
            assert_eq!(never.decide("GET /v1/users/users").answer, None);
            assert_eq!(
                always.decide("GET /v1/users/users").answer,
                Some(Fault::Hang)
            );
        }
    }

    #[test]
    fn draws_are_uniform_enough() {
        let mut random = SplitMix64::new(0);
        let draws: Vec<f64> = (0..1000).map(|_| random.next_f64()).collect();
        assert!(draws.iter().all(|draw| (0.0..1.0).contains(draw)));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }
}
