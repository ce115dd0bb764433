//! A typed client for Billecta's REST API, one per environment.
//!
//! It works unchanged against `https://apitest.billecta.com`, `https://api.billecta.com` and the
//! simulator (`billecta-sim`). Every call:
//! - authenticates with Basic credentials (only `POST /v1/authentication/apiauthenticate`) or with
//!   `Authorization: SecureToken <base64(token)>`;
//! - has a per-attempt timeout, shortened to the caller's [`Deadline`];
//! - retries transient failures (cannot connect, timeout, 429 after its `Retry-After`, 5xx) with capped
//!   exponential backoff and jitter, but only where repeating the call is safe: a create is retried only
//!   when it certainly did not reach Billecta, otherwise the error says the outcome is unknown;
//! - passes the environment's circuit breaker, which fails calls at once while Billecta is down;
//! - returns a [`BillectaError`] that carries Billecta's `Message` and `ExternalErrorCode` (or an
//!   excerpt of a non-JSON body) with any echo of the credentials removed.
//!
//! Layout: [`model`] (wire types), [`error`] (classification), [`policy`] (deadline, retry, breaker),
//! [`timestamp`] (Billecta's date-time spellings), [`secret`] (credentials that cannot be printed).
//!
//! The crate knows nothing of the service that uses it: it has its own [`Environment`], and tells an
//! [`Observer`] about every request it sends rather than counting them itself.

pub mod error;
pub mod model;
pub mod policy;
pub mod secret;
pub mod timestamp;

pub use error::{BillectaError, ErrorKind, Failure};
pub use policy::{Bound, BreakerPolicy, BreakerState, Deadline, RetryPolicy};
pub use secret::Secret;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use model::{CreatedView, Creditor, SecureTokenView, User};
use policy::{AttemptOutcome, CircuitBreaker};
use reqwest::Method;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER,
};
use serde::de::DeserializeOwned;
use std::sync::{Arc, Once};
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;

/// Billecta's own base URLs.
pub const TEST_BASE_URL: &str = "https://apitest.billecta.com";
pub const PRODUCTION_BASE_URL: &str = "https://api.billecta.com";

/// A Billecta environment. The two are fully separate: credentials of one never work in the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    Test,
    Production,
}

impl Environment {
    /// The name used in errors, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Told about every HTTP request a client sends (retries included), so that the service can count
/// them without this crate knowing how.
pub trait Observer: std::fmt::Debug + Send + Sync {
    /// One request to `endpoint` (a route template) ended after `elapsed` with `outcome`: `"ok"`,
    /// the error kind's name ([`ErrorKind::as_str`]), or `"circuit_open"` when the breaker refused
    /// it without sending anything.
    fn request_finished(
        &self,
        environment: Environment,
        endpoint: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    );
}

/// How the client for one environment behaves.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Scheme, host and port, without a trailing slash: `https://apitest.billecta.com`.
    pub base_url: String,
    /// The longest one attempt may take, response body included.
    pub timeout: Duration,
    /// How an error that ran out of `timeout` names it, such as the setting it comes from.
    pub timeout_name: &'static str,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    /// At most this many requests to this environment at once; more wait for a free slot (within
    /// their deadline).
    pub max_concurrency: usize,
    /// Told about every request sent, when set.
    pub observer: Option<Arc<dyn Observer>>,
}

impl ClientSettings {
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientSettings {
            base_url: base_url.into(),
            timeout: Duration::from_secs(10),
            timeout_name: "the client's timeout",
            connect_timeout: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            max_concurrency: 32,
            observer: None,
        }
    }
}

/// Who a call acts as.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// An account's username and password; only the authenticate endpoint takes these.
    Basic {
        username: &'a str,
        password: &'a Secret,
    },
    /// A SecureToken's value, as Billecta returned it.
    SecureToken(&'a Secret),
}

/// A SecureToken: the secret and when Billecta says it expires.
#[derive(Debug, Clone)]
pub struct SecureToken {
    pub value: Secret,
    /// `None` when Billecta sent no readable `Expires`.
    pub expires: Option<OffsetDateTime>,
}

/// One Billecta endpoint.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub method: Method,
    /// The route template, as logs and errors name it: `GET /v1/creditors/creditor/{id}`.
    pub route: &'static str,
    /// Whether sending it twice has the same effect as sending it once, so that any transient failure
    /// may be retried. Creates are not: they are retried only when the request never left.
    pub repeatable: bool,
}

/// Every endpoint the client uses.
pub mod endpoints {
    use super::Endpoint;
    use reqwest::Method;

    macro_rules! endpoint {
        ($name:ident, $method:ident, $route:literal, $repeatable:literal) => {
            pub const $name: Endpoint = Endpoint {
                method: Method::$method,
                route: concat!(stringify!($method), " ", $route),
                repeatable: $repeatable,
            };
        };
    }

    // Billecta returns the user's current token (the simulator) or a new one; either way a repeat
    // leaves the caller holding a valid token.
    endpoint!(
        AUTHENTICATE,
        POST,
        "/v1/authentication/apiauthenticate",
        true
    );
    endpoint!(GET_TOKEN, GET, "/v1/authentication/securetoken", true);
    // Issuing a token for another user (as its administrator) invalidates that user's previous one; a
    // repeat does the same again with the caller's own token, which stays valid, and returns the newest.
    endpoint!(
        ISSUE_TOKEN,
        POST,
        "/v1/authentication/securetoken/{id}",
        true
    );
    // Issuing one's own new token kills the token the request was sent with: a repeat after a lost
    // answer would be refused, and the new token would be lost with it. Authenticate again instead.
    endpoint!(
        ISSUE_OWN_TOKEN,
        POST,
        "/v1/authentication/securetoken",
        false
    );
    endpoint!(
        REVOKE_TOKEN,
        DELETE,
        "/v1/authentication/apiauthenticate",
        true
    );
    endpoint!(LIST_CREDITORS, GET, "/v1/creditors/creditors", true);
    endpoint!(GET_CREDITOR, GET, "/v1/creditors/creditor/{id}", true);
    endpoint!(CREATE_CREDITOR, POST, "/v1/creditors/creditor", false);
    // A PUT replaces the whole creditor, so a repeat writes the same state again.
    endpoint!(UPDATE_CREDITOR, PUT, "/v1/creditors/creditor", true);
    endpoint!(LIST_USERS, GET, "/v1/users/users", true);
    endpoint!(GET_USER, GET, "/v1/users/user/{id}", true);
    endpoint!(CREATE_USER, POST, "/v1/users/user", false);

    /// All of them, for tests and metrics.
    pub const ALL: &[&Endpoint] = &[
        &AUTHENTICATE,
        &GET_TOKEN,
        &ISSUE_TOKEN,
        &ISSUE_OWN_TOKEN,
        &REVOKE_TOKEN,
        &LIST_CREDITORS,
        &GET_CREDITOR,
        &CREATE_CREDITOR,
        &UPDATE_CREDITOR,
        &LIST_USERS,
        &GET_USER,
        &CREATE_USER,
    ];
}

/// A request as it will go on the wire: the endpoint, the concrete path and query, and the JSON body.
/// Built by pure functions in [`requests`], so tests can check every body against Billecta's schemas.
#[derive(Clone)]
pub struct Request {
    pub endpoint: &'static Endpoint,
    /// The path with its ids filled in: `/v1/creditors/creditor/0b8f…`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
    /// Secrets the body carries (a new user's password), removed from any text Billecta sends back.
    pub secrets: Vec<Secret>,
}

impl std::fmt::Debug for Request {
    /// Never the body: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("endpoint", &self.endpoint.route)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("has_body", &self.body.is_some())
            .finish()
    }
}

/// The requests the client sends, one builder per endpoint.
pub mod requests {
    use super::{Request, endpoints};
    use crate::model::{Creditor, User};

    fn bodiless(endpoint: &'static super::Endpoint, path: String) -> Request {
        Request {
            endpoint,
            path,
            query: Vec::new(),
            body: None,
            secrets: Vec::new(),
        }
    }

    fn with_body(endpoint: &'static super::Endpoint, body: serde_json::Value) -> Request {
        let path = endpoint.route.split_once(' ').map_or("", |(_, path)| path);
        Request {
            endpoint,
            path: path.to_owned(),
            query: Vec::new(),
            body: Some(body),
            secrets: Vec::new(),
        }
    }

    /// Path segments are Billecta ids (GUIDs); anything else is percent-encoded so it cannot change
    /// the path.
    fn segment(id: &str) -> String {
        id.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (byte as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    }

    pub fn authenticate() -> Request {
        bodiless(
            &endpoints::AUTHENTICATE,
            "/v1/authentication/apiauthenticate".into(),
        )
    }

    pub fn get_token() -> Request {
        bodiless(
            &endpoints::GET_TOKEN,
            "/v1/authentication/securetoken".into(),
        )
    }

    /// A new token for the given user, or for the caller when `None`.
    pub fn issue_token(user_public_id: Option<&str>) -> Request {
        match user_public_id {
            Some(id) => bodiless(
                &endpoints::ISSUE_TOKEN,
                format!("/v1/authentication/securetoken/{}", segment(id)),
            ),
            None => bodiless(
                &endpoints::ISSUE_OWN_TOKEN,
                "/v1/authentication/securetoken".into(),
            ),
        }
    }

    pub fn revoke_token() -> Request {
        bodiless(
            &endpoints::REVOKE_TOKEN,
            "/v1/authentication/apiauthenticate".into(),
        )
    }

    pub fn list_creditors(offset: u32, limit: u32) -> Request {
        let mut request = bodiless(&endpoints::LIST_CREDITORS, "/v1/creditors/creditors".into());
        // `offset` counts creditors, not pages; no sorting field is sent, as none is documented.
        request.query = vec![("offset", offset.to_string()), ("limit", limit.to_string())];
        request
    }

    pub fn get_creditor(creditor_public_id: &str) -> Request {
        bodiless(
            &endpoints::GET_CREDITOR,
            format!("/v1/creditors/creditor/{}", segment(creditor_public_id)),
        )
    }

    /// Billecta assigns the id, so none is sent.
    pub fn create_creditor(creditor: &Creditor) -> Request {
        let new = Creditor {
            creditor_public_id: None,
            ..creditor.clone()
        };
        with_body(&endpoints::CREATE_CREDITOR, to_json(&new))
    }

    /// The whole creditor, as Billecta replaces it whole: read it, change it, send it back.
    pub fn update_creditor(creditor: &Creditor) -> Request {
        with_body(&endpoints::UPDATE_CREDITOR, to_json(creditor))
    }

    pub fn list_users() -> Request {
        bodiless(&endpoints::LIST_USERS, "/v1/users/users".into())
    }

    pub fn get_user(user_public_id: &str) -> Request {
        bodiless(
            &endpoints::GET_USER,
            format!("/v1/users/user/{}", segment(user_public_id)),
        )
    }

    /// Billecta assigns the id, so none is sent.
    pub fn create_user(user: &User) -> Request {
        let new = User {
            user_public_id: None,
            ..user.clone()
        };
        let mut request = with_body(&endpoints::CREATE_USER, to_json(&new));
        request.secrets.extend(user.password.iter().cloned());
        request
    }

    fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
        // The wire types are plain data (strings, booleans, maps with string keys): serialising them
        // cannot fail.
        serde_json::to_value(value).unwrap_or_default()
    }
}

/// The clients of both environments, which never share credentials or breakers.
#[derive(Debug, Clone)]
pub struct Billecta {
    test: BillectaClient,
    production: BillectaClient,
}

impl Billecta {
    pub fn new(test: BillectaClient, production: BillectaClient) -> Self {
        debug_assert_eq!(test.environment(), Environment::Test);
        debug_assert_eq!(production.environment(), Environment::Production);
        Billecta { test, production }
    }

    pub fn client(&self, environment: impl Into<Environment>) -> &BillectaClient {
        match environment.into() {
            Environment::Test => &self.test,
            Environment::Production => &self.production,
        }
    }
}

/// The page size used when the client reads every creditor.
const LIST_PAGE_SIZE: u32 = 100;
/// At most this many pages are read when looking for a creditor (100 000 creditors).
const MAX_LIST_PAGES: u32 = 1_000;
/// An attempt is not started with less time than this left before the caller's deadline.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(50);
/// How much of Billecta's `Message` is kept: it travels in the gRPC status and its metadata.
const MESSAGE_CHARS: usize = 500;
/// How much of a non-JSON error body is kept for the error message.
const BODY_EXCERPT_CHARS: usize = 200;

/// The client for one Billecta environment. Cheap to clone; clones share connections and the breaker.
#[derive(Debug, Clone)]
pub struct BillectaClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    environment: Environment,
    base_url: String,
    http: reqwest::Client,
    timeout: Duration,
    timeout_name: &'static str,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    slots: tokio::sync::Semaphore,
    observer: Option<Arc<dyn Observer>>,
}

/// The answer of one attempt that reached Billecta.
struct Answer {
    /// Attempts it took, this one included.
    attempts: u32,
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl BillectaClient {
    pub fn new(
        environment: impl Into<Environment>,
        settings: ClientSettings,
    ) -> anyhow::Result<Self> {
        let environment = environment.into();
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("billecta-onboarding/", env!("CARGO_PKG_VERSION")))
            // A redirect is not part of Billecta's API; following one would turn a POST into a GET.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base_url.starts_with("https://") || base_url.starts_with("http://"),
            "the Billecta {environment} base URL must start with https:// or http://, not {base_url:?}"
        );
        Ok(BillectaClient {
            inner: Arc::new(Inner {
                environment,
                base_url,
                http,
                timeout: settings.timeout,
                timeout_name: settings.timeout_name,
                retry: settings.retry,
                breaker: CircuitBreaker::new(settings.breaker),
                slots: tokio::sync::Semaphore::new(settings.max_concurrency.max(1)),
                observer: settings.observer,
            }),
        })
    }

    pub fn environment(&self) -> Environment {
        self.inner.environment
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Exchanges an account's username and password for its SecureToken.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &Secret,
        deadline: Deadline,
    ) -> Result<SecureToken, BillectaError> {
        let credentials = Credentials::Basic { username, password };
        self.token_call(requests::authenticate(), credentials, deadline)
            .await
    }

    /// The SecureToken the given token belongs to (a cheap way to check that it still works).
    pub async fn current_token(
        &self,
        token: &Secret,
        deadline: Deadline,
    ) -> Result<SecureToken, BillectaError> {
        self.token_call(
            requests::get_token(),
            Credentials::SecureToken(token),
            deadline,
        )
        .await
    }

    /// Issues a new SecureToken for a user (or the caller), which invalidates that user's old one.
    pub async fn issue_token(
        &self,
        token: &Secret,
        user_public_id: Option<&str>,
        deadline: Deadline,
    ) -> Result<SecureToken, BillectaError> {
        self.token_call(
            requests::issue_token(user_public_id),
            Credentials::SecureToken(token),
            deadline,
        )
        .await
    }

    /// Revokes the caller's SecureToken.
    pub async fn revoke_token(
        &self,
        token: &Secret,
        deadline: Deadline,
    ) -> Result<(), BillectaError> {
        self.execute(
            &requests::revoke_token(),
            Credentials::SecureToken(token),
            deadline,
        )
        .await
        .map(drop)
    }

    /// One page of the creditors the token's user can read.
    pub async fn list_creditors(
        &self,
        token: &Secret,
        offset: u32,
        limit: u32,
        deadline: Deadline,
    ) -> Result<Vec<Creditor>, BillectaError> {
        let request = requests::list_creditors(offset, limit);
        self.json_call(request, Credentials::SecureToken(token), deadline)
            .await
    }

    /// Every readable creditor with this Swedish organisation number (compared by its digits, so
    /// `556888-5645`, `5568885645` and `165568885645` match). Used before creating one, so that a
    /// retried or interrupted create never makes a second creditor.
    pub async fn find_creditors_by_org_no(
        &self,
        token: &Secret,
        org_no: &str,
        deadline: Deadline,
    ) -> Result<Vec<Creditor>, BillectaError> {
        let wanted = org_no_digits(org_no);
        let mut found: Vec<Creditor> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0;
        for _ in 0..MAX_LIST_PAGES {
            let page = self
                .list_creditors(token, offset, LIST_PAGE_SIZE, deadline)
                .await?;
            let count = page.len() as u32;
            let mut new_on_page = 0;
            for creditor in page {
                let id = creditor.creditor_public_id.clone().unwrap_or_default();
                if !seen.insert(id) {
                    continue;
                }
                new_on_page += 1;
                if creditor
                    .org_no
                    .as_deref()
                    .is_some_and(|candidate| org_no_digits(candidate) == wanted)
                {
                    found.push(creditor);
                }
            }
            // A short page is the last. A page longer than asked for means Billecta ignored the
            // paging and sent everything; a page with nothing new means it ignored the offset.
            if count != LIST_PAGE_SIZE || new_on_page == 0 {
                return Ok(found);
            }
            offset += count;
        }
        Err(BillectaError {
            environment: self.inner.environment,
            endpoint: endpoints::LIST_CREDITORS.route,
            failure: Failure::Decode,
            message: format!(
                "more than {} creditors; the lookup gave up",
                MAX_LIST_PAGES * LIST_PAGE_SIZE
            ),
            external_error_code: None,
            retry_after: None,
            attempts: 1,
            outcome_unknown: false,
        })
    }

    pub async fn get_creditor(
        &self,
        token: &Secret,
        creditor_public_id: &str,
        deadline: Deadline,
    ) -> Result<Creditor, BillectaError> {
        let request = requests::get_creditor(creditor_public_id);
        self.json_call(request, Credentials::SecureToken(token), deadline)
            .await
    }

    /// Creates a creditor and returns its `CreditorPublicId`. Not retried once the request may have
    /// reached Billecta: on such a failure the error's `outcome_unknown` is set and the caller must look
    /// with [`BillectaClient::find_creditors_by_org_no`] before trying again.
    pub async fn create_creditor(
        &self,
        token: &Secret,
        creditor: &Creditor,
        deadline: Deadline,
    ) -> Result<String, BillectaError> {
        let request = requests::create_creditor(creditor);
        self.created_call(request, Credentials::SecureToken(token), deadline)
            .await
    }

    /// Replaces the creditor with this one (Billecta clears what is left out: start from a fresh read).
    pub async fn update_creditor(
        &self,
        token: &Secret,
        creditor: &Creditor,
        deadline: Deadline,
    ) -> Result<(), BillectaError> {
        let request = requests::update_creditor(creditor);
        self.execute(&request, Credentials::SecureToken(token), deadline)
            .await
            .map(drop)
    }

    pub async fn list_users(
        &self,
        token: &Secret,
        deadline: Deadline,
    ) -> Result<Vec<User>, BillectaError> {
        self.json_call(
            requests::list_users(),
            Credentials::SecureToken(token),
            deadline,
        )
        .await
    }

    pub async fn get_user(
        &self,
        token: &Secret,
        user_public_id: &str,
        deadline: Deadline,
    ) -> Result<User, BillectaError> {
        let request = requests::get_user(user_public_id);
        self.json_call(request, Credentials::SecureToken(token), deadline)
            .await
    }

    /// Creates a user (an API user, typically) and returns its `UserPublicId`. Retried like
    /// [`BillectaClient::create_creditor`].
    pub async fn create_user(
        &self,
        token: &Secret,
        user: &User,
        deadline: Deadline,
    ) -> Result<String, BillectaError> {
        let request = requests::create_user(user);
        self.created_call(request, Credentials::SecureToken(token), deadline)
            .await
    }

    async fn token_call(
        &self,
        request: Request,
        credentials: Credentials<'_>,
        deadline: Deadline,
    ) -> Result<SecureToken, BillectaError> {
        let endpoint = request.endpoint;
        let answer = self.execute(&request, credentials, deadline).await?;
        // The body holds a secret: a decoding error must not quote it.
        let no_token = |message: &str| self.decode_error(endpoint, &answer, message.to_owned());
        let view = parse_secure_token(&answer.body)
            .ok_or_else(|| no_token("the response holds no SecureToken value"))?;
        let value = view
            .value
            .filter(|value| !value.is_empty())
            .ok_or_else(|| no_token("the SecureToken in the response is empty"))?;
        Ok(SecureToken {
            value: Secret::new(value),
            expires: view.expires.as_deref().and_then(timestamp::parse),
        })
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        request: Request,
        credentials: Credentials<'_>,
        deadline: Deadline,
    ) -> Result<T, BillectaError> {
        Ok(self.decoded_call(request, credentials, deadline).await?.0)
    }

    /// The answer decoded as `T`, with the answer itself for further checks.
    async fn decoded_call<T: DeserializeOwned>(
        &self,
        request: Request,
        credentials: Credentials<'_>,
        deadline: Deadline,
    ) -> Result<(T, Answer), BillectaError> {
        let endpoint = request.endpoint;
        let answer = self.execute(&request, credentials, deadline).await?;
        match serde_json::from_slice(&answer.body) {
            Ok(decoded) => Ok((decoded, answer)),
            Err(error) => {
                let message = Scrubber::new(credentials, &request.secrets)
                    .scrub(&format!("the response body does not fit: {error}"));
                Err(self.decode_error(endpoint, &answer, message))
            }
        }
    }

    async fn created_call(
        &self,
        request: Request,
        credentials: Credentials<'_>,
        deadline: Deadline,
    ) -> Result<String, BillectaError> {
        let endpoint = request.endpoint;
        let (created, answer): (CreatedView, Answer) =
            self.decoded_call(request, credentials, deadline).await?;
        created
            .public_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| {
                self.decode_error(endpoint, &answer, "the response has no PublicId".into())
            })
    }

    /// A 2xx answer that cannot be read. The call did take effect: after a create the caller must
    /// look before it creates again.
    fn decode_error(
        &self,
        endpoint: &'static Endpoint,
        answer: &Answer,
        message: String,
    ) -> BillectaError {
        BillectaError {
            environment: self.inner.environment,
            endpoint: endpoint.route,
            failure: Failure::Decode,
            message,
            external_error_code: None,
            retry_after: None,
            attempts: answer.attempts,
            outcome_unknown: !endpoint.repeatable,
        }
    }

    /// Sends a request with retries and the breaker, and returns the first 2xx answer.
    async fn execute(
        &self,
        request: &Request,
        credentials: Credentials<'_>,
        deadline: Deadline,
    ) -> Result<Answer, BillectaError> {
        let endpoint = request.endpoint;
        let scrubber = Scrubber::new(credentials, &request.secrets);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = std::time::Instant::now();
            // One span per request sent (the endpoint's route template, never its path with ids).
            let span = tracing::info_span!(
                "billecta",
                otel.name = endpoint.route,
                otel.kind = "client",
                environment = %self.inner.environment,
                endpoint = endpoint.route,
                attempt,
                http_status = tracing::field::Empty,
                outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let outcome = self
                .attempt(request, credentials, deadline, &scrubber)
                .instrument(span.clone())
                .await;
            match &outcome {
                Ok(answer) => {
                    span.record("http_status", answer.status);
                    span.record("outcome", "ok");
                }
                Err(error) => {
                    if let Some(status) = error.status() {
                        span.record("http_status", status);
                    }
                    span.record("outcome", error.kind().as_str());
                    span.record("otel.status_code", "ERROR");
                }
            }
            if let Some(observer) = &self.inner.observer {
                observer.request_finished(
                    self.inner.environment,
                    endpoint.route,
                    match &outcome {
                        Ok(_) => "ok",
                        // Refused here without a request: counted apart.
                        Err(error) if matches!(error.failure, Failure::CircuitOpen) => {
                            "circuit_open"
                        }
                        Err(error) => error.kind().as_str(),
                    },
                    sent.elapsed(),
                );
            }
            let mut error = match outcome {
                Ok(mut answer) => {
                    answer.attempts = attempt;
                    return Ok(answer);
                }
                Err(error) => error,
            };
            error.attempts = attempt;
            let retryable = error.is_transient()
                && !matches!(
                    error.failure,
                    Failure::CircuitOpen | Failure::DeadlineExceeded
                )
                && (endpoint.repeatable || !error.outcome_unknown);
            if !retryable || attempt >= self.inner.retry.max_attempts {
                tracing::warn!(
                    environment = %self.inner.environment,
                    endpoint = endpoint.route,
                    attempts = attempt,
                    kind = error.kind().as_str(),
                    status = error.status(),
                    error = %error,
                    "billecta call failed"
                );
                return Err(error);
            }
            let wait = match error.retry_after {
                Some(retry_after) if retry_after > self.inner.retry.max_retry_after => {
                    return Err(error);
                }
                Some(retry_after) => retry_after,
                None => self.inner.retry.backoff(attempt),
            };
            if !deadline.allows(wait + MIN_ATTEMPT_TIME) {
                error.retry_after = Some(wait);
                return Err(error);
            }
            tracing::info!(
                environment = %self.inner.environment,
                endpoint = endpoint.route,
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "retrying billecta call"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        request: &Request,
        credentials: Credentials<'_>,
        deadline: Deadline,
        scrubber: &Scrubber<'_>,
    ) -> Result<Answer, BillectaError> {
        let endpoint = request.endpoint;
        let error = |failure: Failure, message: String| BillectaError {
            environment: self.inner.environment,
            endpoint: endpoint.route,
            // The request may have taken effect unless we know it was never sent or was refused.
            outcome_unknown: !endpoint.repeatable
                && matches!(
                    failure,
                    Failure::Timeout | Failure::Connection | Failure::Status(500..)
                ),
            failure,
            message,
            external_error_code: None,
            retry_after: None,
            attempts: 1,
        };
        // At most `max_concurrency` requests at once; waiting for a slot counts against the deadline.
        let slot = self.inner.slots.acquire();
        let _slot = match deadline.remaining() {
            Some(left) => tokio::time::timeout(left, slot).await.map_err(|_| {
                error(
                    Failure::DeadlineExceeded,
                    format!(
                        "{} ran out while waiting for a free slot to Billecta",
                        deadline.bound()
                    ),
                )
            })?,
            None => slot.await,
        }
        .expect("the slots are never closed");
        let timeout = deadline.cap(self.inner.timeout);
        // When the caller's deadline, not the client's timeout, ends the attempt, that says nothing
        // about Billecta's health, and the caller is told which of its limits ran out: the one the
        // deadline's maker named, which is not always the caller's own.
        let cut_by_deadline = timeout < self.inner.timeout;
        if timeout < MIN_ATTEMPT_TIME.min(self.inner.timeout) {
            return Err(error(
                Failure::DeadlineExceeded,
                format!(
                    "no time left for a call to Billecta: {} ran out",
                    deadline.bound()
                ),
            ));
        }
        let permit = self.inner.breaker.admit().map_err(|wait| {
            let mut open = error(
                Failure::CircuitOpen,
                "Billecta failed repeatedly; calls are paused".into(),
            );
            open.retry_after = Some(wait);
            open
        })?;

        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(timeout, self.send(request, credentials)).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let answer = match sent {
            Err(_) if cut_by_deadline => {
                permit.record(AttemptOutcome::Neutral);
                let message = format!(
                    "no answer within {} ms, before {} ran out",
                    timeout.as_millis(),
                    deadline.bound()
                );
                return Err(error(Failure::DeadlineExceeded, message));
            }
            Err(_) => {
                permit.record(AttemptOutcome::Failed);
                let message = format!(
                    "no answer within {} ({} ms)",
                    self.inner.timeout_name,
                    timeout.as_millis()
                );
                return Err(error(Failure::Timeout, message));
            }
            Ok(Err(failure)) => {
                permit.record(AttemptOutcome::Failed);
                let (failure, message) = describe_transport_error(&failure);
                return Err(error(failure, scrubber.scrub(&message)));
            }
            Ok(Ok(answer)) => answer,
        };
        tracing::debug!(
            environment = %self.inner.environment,
            endpoint = endpoint.route,
            status = answer.status,
            elapsed_ms,
            "billecta answered"
        );
        permit.record(match answer.status {
            429 => AttemptOutcome::Neutral,
            500.. => AttemptOutcome::Failed,
            _ => AttemptOutcome::Answered,
        });
        if (200..300).contains(&answer.status) {
            return Ok(answer);
        }
        let (message, external_error_code) = error_text(scrubber, answer.status, &answer.body);
        let mut failed = error(Failure::Status(answer.status), message);
        failed.external_error_code = external_error_code;
        failed.retry_after = answer.retry_after;
        Err(failed)
    }

    async fn send(
        &self,
        request: &Request,
        credentials: Credentials<'_>,
    ) -> Result<Answer, reqwest::Error> {
        let url = format!("{}{}", self.inner.base_url, request.path);
        let mut builder = self
            .inner
            .http
            .request(request.endpoint.method.clone(), url)
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, authorization(credentials));
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        builder = match &request.body {
            Some(body) => builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string()),
            // Billecta's servers may answer 411 to a bodiless POST or DELETE without a length.
            None if request.endpoint.method != Method::GET => builder.header(CONTENT_LENGTH, "0"),
            None => builder,
        };
        let response = builder.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            attempts: 1,
            status,
            retry_after,
            body,
        })
    }
}

/// The `Authorization` header: Basic for the authenticate call, else the token's value base64-encoded
/// once more, as Billecta's documentation asks. Marked sensitive so that it is never printed.
fn authorization(credentials: Credentials<'_>) -> HeaderValue {
    let text = match credentials {
        Credentials::Basic { username, password } => format!(
            "Basic {}",
            BASE64.encode(format!("{username}:{}", password.expose()))
        ),
        Credentials::SecureToken(token) => format!("SecureToken {}", BASE64.encode(token.expose())),
    };
    let mut value = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Removes every form of the call's credentials from text that Billecta sent back. The forms are
/// worked out the first time something is scrubbed: most calls never need them.
struct Scrubber<'a> {
    credentials: Credentials<'a>,
    request_secrets: &'a [Secret],
    secrets: std::sync::OnceLock<Vec<String>>,
}

impl<'a> Scrubber<'a> {
    fn new(credentials: Credentials<'a>, request_secrets: &'a [Secret]) -> Self {
        Scrubber {
            credentials,
            request_secrets,
            secrets: std::sync::OnceLock::new(),
        }
    }

    fn secrets(&self) -> &[String] {
        self.secrets.get_or_init(|| {
            let mut raw = match self.credentials {
                Credentials::Basic { username, password } => vec![
                    password.expose().to_owned(),
                    BASE64.encode(format!("{username}:{}", password.expose())),
                ],
                Credentials::SecureToken(token) => {
                    vec![token.expose().to_owned(), BASE64.encode(token.expose())]
                }
            };
            raw.extend(
                self.request_secrets
                    .iter()
                    .map(|secret| secret.expose().to_owned()),
            );
            // Also as Billecta may write them back: escaped inside JSON strings or HTML.
            let escaped: Vec<String> = raw
                .iter()
                .flat_map(|secret| {
                    let json = serde_json::to_string(secret).unwrap_or_default();
                    // Without the quotes serde_json put around it, and only those.
                    let json = json
                        .strip_prefix('"')
                        .and_then(|json| json.strip_suffix('"'))
                        .unwrap_or(&json)
                        .to_owned();
                    let html = secret
                        .replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                        .replace('"', "&quot;")
                        .replace('\'', "&#39;");
                    [json, html]
                })
                .collect();
            raw.extend(escaped);
            let mut secrets: Vec<String> = raw
                .into_iter()
                .filter(|secret| !secret.is_empty())
                .collect();
            // Longest first, so that a secret containing another is removed whole.
            secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            secrets.dedup();
            secrets
        })
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets()
            .iter()
            .fold(text.to_owned(), |scrubbed, secret| {
                scrubbed.replace(secret, "[redacted]")
            })
    }
}

/// What a failed answer tells the caller: Billecta's text with the call's secrets removed — before
/// anything shortens or reflows it, since a secret cut in half or with its whitespace collapsed would
/// no longer be recognised — and then cut to a length a gRPC status carries.
fn error_text(scrubber: &Scrubber<'_>, status: u16, body: &[u8]) -> (String, Option<String>) {
    let scrubbed = scrubber.scrub(&String::from_utf8_lossy(body));
    let (message, external_error_code) = describe_error_body(status, scrubbed.as_bytes());
    (truncate(&message, MESSAGE_CHARS), external_error_code)
}

/// Billecta's error body: `{"Message": …, "ExternalErrorCode": …}`, or failing that a readable excerpt
/// of whatever came (an IIS error page, plain text), or the status's reason phrase. `RequestContent`
/// is never used: it may echo the request.
fn describe_error_body(status: u16, body: &[u8]) -> (String, Option<String>) {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("no message")
        .to_owned();
    // Of a JSON body only these two fields are read: the rest may echo the request.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) {
        let text = |name: &str| match fields.get(name) {
            Some(serde_json::Value::String(text)) if !text.is_empty() => Some(text.clone()),
            Some(serde_json::Value::Number(number)) => Some(number.to_string()),
            _ => None,
        };
        return (text("Message").unwrap_or(reason), text("ExternalErrorCode"));
    }
    let excerpt = readable_excerpt(&String::from_utf8_lossy(body));
    if !excerpt.is_empty() {
        return (excerpt, None);
    }
    (reason, None)
}

/// The text of an HTML or plain body: tags and scripts dropped, whitespace collapsed, cut short.
fn readable_excerpt(body: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    let mut skipping = false;
    let lower = body.to_ascii_lowercase();
    let mut index = 0;
    for character in body.chars() {
        if !in_tag && character == '<' {
            in_tag = true;
            let rest = &lower[index..];
            if rest.starts_with("<style") || rest.starts_with("<script") {
                skipping = true;
            } else if rest.starts_with("</style") || rest.starts_with("</script") {
                skipping = false;
            }
            text.push(' ');
        } else if in_tag && character == '>' {
            in_tag = false;
        } else if !in_tag && !skipping {
            text.push(character);
        }
        index += character.len_utf8();
    }
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&collapsed, BODY_EXCERPT_CHARS)
}

/// At most `chars` characters of `text`, with an ellipsis when cut.
fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn describe_transport_error(error: &reqwest::Error) -> (Failure, String) {
    // reqwest's text names the URL (no secrets: credentials travel in headers) and the cause.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let failure = if error.is_connect() {
        Failure::Connect
    } else if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connection
    };
    (failure, message)
}

/// The token from either plausible shape of the authenticate answer: a bare `SecureTokenView`, or a
/// wrapper that holds it under `SecureToken` (Billecta's `UserClaims`).
fn parse_secure_token(body: &[u8]) -> Option<SecureTokenView> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let view = match &value {
        serde_json::Value::Object(fields) if fields.contains_key("Value") => &value,
        serde_json::Value::Object(fields) => fields.get("SecureToken")?,
        _ => return None,
    };
    serde_json::from_value(view.clone()).ok()
}

/// The ten digits of a Swedish organisation number, without the century prefix of the twelve-digit
/// form, so that spellings can be compared.
pub fn org_no_digits(org_no: &str) -> String {
    let digits: String = org_no.chars().filter(char::is_ascii_digit).collect();
    if digits.len() == 12 {
        digits[2..].to_owned()
    } else {
        digits
    }
}

fn install_tls_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if another provider was installed first, which serves just as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_of_the_authenticate_answer_are_read() {
        let bare = br#"{"Value":"dG9rZW4=","Expires":"2027-01-01T00:00:00+01:00"}"#;
        assert_eq!(
            parse_secure_token(bare).and_then(|view| view.value),
            Some("dG9rZW4=".into())
        );
        let wrapped = br#"{"User":{"Username":"a"},"ClientConfig":{},"SecureToken":{"Value":"dG9rZW4=","Expires":null}}"#;
        assert_eq!(
            parse_secure_token(wrapped).and_then(|view| view.value),
            Some("dG9rZW4=".into())
        );
        assert!(parse_secure_token(b"<html>").is_none());
        assert!(parse_secure_token(br#"{"Other":1}"#).is_none());
    }

    #[test]
    fn error_bodies_are_read_as_json_html_or_nothing() {
        let json = br#"{"Message":"OrgNo is invalid","ExternalErrorCode":"E12","RequestContent":"{\"Password\":\"x\"}"}"#;
        assert_eq!(
            describe_error_body(400, json),
            ("OrgNo is invalid".into(), Some("E12".into()))
        );
        let html = b"<html><head><title>Service Unavailable</title><style>p{}</style></head><body><h2>HTTP Error 503. The service is unavailable.</h2></body></html>";
        let (message, code) = describe_error_body(503, html);
        assert_eq!(
            message,
            "Service Unavailable HTTP Error 503. The service is unavailable."
        );
        assert_eq!(code, None);
        assert_eq!(describe_error_body(404, b""), ("Not Found".into(), None));
        // JSON without a Message: the reason phrase, never the rest (it may echo the request).
        let echo =
            br#"{"Message":null,"ExternalErrorCode":7,"RequestContent":"{\"Password\":\"x\"}"}"#;
        assert_eq!(
            describe_error_body(400, echo),
            ("Bad Request".into(), Some("7".into()))
        );
        let long = "x".repeat(1000);
        assert!(
            describe_error_body(500, long.as_bytes()).0.chars().count() <= BODY_EXCERPT_CHARS + 1
        );
    }

    /// A scrubber for a call signing in as api@tidningen.se with `password`.
    fn basic_scrubber(password: &Secret) -> Scrubber<'_> {
        Scrubber::new(
            Credentials::Basic {
                username: "api@tidningen.se",
                password,
            },
            &[],
        )
    }

    #[test]
    fn secrets_are_removed_before_the_text_is_reflowed_or_cut() {
        let password = Secret::new("two  spaces<b>x\"y");
        let scrubber = basic_scrubber(&password);
        let padding = "p".repeat(190);
        let html = format!(
            "<html><body>{padding} bad password two  spaces&lt;b&gt;x&quot;y and two  spaces<b>x\"y</body></html>"
        );
        let (message, _) = error_text(&scrubber, 500, html.as_bytes());
        assert!(!message.contains("spaces"), "{message}");
        let json = serde_json::json!({"Message": format!("bad password {}", password.expose())})
            .to_string();
        let (message, _) = error_text(&scrubber, 400, json.as_bytes());
        assert_eq!(message, "bad password [redacted]");
    }

    #[test]
    fn a_secret_ending_in_a_quote_is_removed_whole_from_json() {
        let password = Secret::new("\"quoted\"");
        let scrubber = basic_scrubber(&password);
        let echoed = serde_json::json!({"Request": {"Password": password.expose()}}).to_string();
        assert_eq!(
            scrubber.scrub(&echoed),
            r#"{"Request":{"Password":"[redacted]"}}"#
        );
    }

    #[test]
    fn credentials_echoed_by_billecta_are_removed() {
        let password = Secret::new("s3cret-pass");
        let scrubber = basic_scrubber(&password);
        let header = BASE64.encode("api@tidningen.se:s3cret-pass");
        let scrubbed = scrubber.scrub(&format!("bad login s3cret-pass with header Basic {header}"));
        assert_eq!(
            scrubbed,
            "bad login [redacted] with header Basic [redacted]"
        );

        let token = Secret::new("dG9rZW4tdmFsdWU=");
        let new_password = Secret::new("new-user-pass");
        let scrubber = Scrubber::new(
            Credentials::SecureToken(&token),
            std::slice::from_ref(&new_password),
        );
        let echoed = format!(
            "token {} / {} for new-user-pass",
            token.expose(),
            BASE64.encode(token.expose())
        );
        assert_eq!(
            scrubber.scrub(&echoed),
            "token [redacted] / [redacted] for [redacted]"
        );
    }

    #[test]
    fn the_token_header_is_the_value_base64_encoded_once_more() {
        let token = Secret::new("abc==");
        let header = authorization(Credentials::SecureToken(&token));
        assert_eq!(
            header.to_str().unwrap(),
            format!("SecureToken {}", BASE64.encode("abc=="))
        );
        assert!(header.is_sensitive());
        let password = Secret::new("pw");
        let basic = authorization(Credentials::Basic {
            username: "user",
            password: &password,
        });
        assert_eq!(basic.to_str().unwrap(), "Basic dXNlcjpwdw==");
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn organisation_numbers_compare_by_their_digits() {
        assert_eq!(org_no_digits("556888-5645"), "5568885645");
        assert_eq!(org_no_digits("16556888-5645"), "5568885645");
        assert_eq!(org_no_digits("5568885645"), "5568885645");
    }

    #[test]
    fn ids_cannot_change_the_path() {
        assert_eq!(
            requests::get_creditor("../users/x?y").path,
            "/v1/creditors/creditor/..%2Fusers%2Fx%3Fy"
        );
        assert_eq!(
            requests::issue_token(None).path,
            "/v1/authentication/securetoken"
        );
    }

    #[test]
    fn creates_never_send_an_id() {
        let creditor = Creditor {
            creditor_public_id: Some("0b8f8c5e-7d0c-4a57-a0b7-3f1f1b6a2d11".into()),
            name: Some("Tidningen AB".into()),
            ..Creditor::default()
        };
        let body = requests::create_creditor(&creditor).body.unwrap();
        assert!(body.get("CreditorPublicId").is_none());
        let update = requests::update_creditor(&creditor);
        assert_eq!(update.path, "/v1/creditors/creditor");
        assert_eq!(
            update.body.unwrap()["CreditorPublicId"],
            "0b8f8c5e-7d0c-4a57-a0b7-3f1f1b6a2d11"
        );
    }
}
