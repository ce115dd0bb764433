//! A stateful simulator of Billecta's REST API, for tests and local runs, because Billecta itself
//! cannot be reached from where the service is built and tested. One simulator is one Billecta
//! environment (test or production): accounts with users, SecureTokens, creditors with their bank
//! details, rights, and the errors Billecta answers. It is faithful where public material is clear
//! and picks one documented answer where it is not (the open questions about Billecta's behaviour; see
//! the crate's `README.md`), except where the service must be tested under each answer: whether
//! sign-in rotates the token is a [`SignIn`] mode, and how API users are made and signed in is an
//! [`ApiUsers`] mode, both changeable at run time. Every request and
//! response body is checked against Billecta's published schemas ([`schema`]), the same ones the
//! client's contract tests use.
//!
//! - [`schema`] — the contract: the view models' schemas, adapted to the wire, and `validate`.
//! - `state` — what the environment holds and every business rule.
//! - `routes` — the public `/v1` API; `admin` — the `/admin` API that plays people and staff.
//! - [`faults`] — injected latency, 5xx, 429, hangs and connection resets, seeded and repeatable.
//! - `server` — the HTTP/1.1 accept loop that can reset a connection.
//!
//! Start one in-process with [`start`] and drive the human steps with the helpers on
//! [`RunningSimulator`]; or run the `billecta-sim` binary.

mod admin;
pub mod faults;
mod routes;
pub mod schema;
mod server;
mod state;

pub use admin::{FaultsRequest, Settings, SettingsRequest};
pub use faults::{ActiveRule, Fault, FaultBody, FaultRule, FaultRuleError, FaultsState};
pub use routes::PUBLIC_ROUTES;
pub use state::{
    AccountState, AdminError, CreatedAccount, CreatedUser, CreditorState, NewAccount, NewUser,
    SimulatorState, TokenState, UserRightView, UserState,
};

use anyhow::Context;
use faults::FaultPlan;
use state::{StaffFlag, Store};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A Billecta environment, to behave like. Its own type: the simulator shares no code with the
/// service it stands in for Billecta to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Environment {
    Test,
    Production,
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Environment::Test => "test",
            Environment::Production => "production",
        })
    }
}

/// What `POST /v1/authentication/apiauthenticate` does with a user's live token: an open question
/// about Billecta (its API.md §2.3), so the simulator offers both answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SignIn {
    /// Returns the user's live token; issues one only if it has none (or it expired).
    #[default]
    ReturnsLiveToken,
    /// Issues a new token at every sign-in, which invalidates the one before.
    IssuesNewToken,
}

impl SignIn {
    const RETURNS_LIVE_TOKEN: &'static str = "returns-live-token";
    const ISSUES_NEW_TOKEN: &'static str = "issues-new-token";
}

impl std::fmt::Display for SignIn {
    /// The name the `--sign-in` flag takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignIn::ReturnsLiveToken => Self::RETURNS_LIVE_TOKEN,
            SignIn::IssuesNewToken => Self::ISSUES_NEW_TOKEN,
        })
    }
}

impl std::str::FromStr for SignIn {
    type Err = UnknownSignIn;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            Self::RETURNS_LIVE_TOKEN => Ok(SignIn::ReturnsLiveToken),
            Self::ISSUES_NEW_TOKEN => Ok(SignIn::IssuesNewToken),
            _ => Err(UnknownSignIn(text.to_owned())),
        }
    }
}

/// A name that is not a [`SignIn`] mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown sign-in mode {0:?}: expected {returns} or {issues}",
    returns = SignIn::RETURNS_LIVE_TOKEN,
    issues = SignIn::ISSUES_NEW_TOKEN
)]
pub struct UnknownSignIn(String);

/// How Billecta treats API users (`IsApiUser`), which public material does not say (its API.md
/// §2.4): the simulator offers each plausible answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiUsers {
    /// Created through the users API like any user, and sign in with their password.
    #[default]
    SignInWithPassword,
    /// Created through the users API, but `apiauthenticate` refuses them (401, as a wrong password):
    /// only an administrator's `POST /v1/authentication/securetoken/{UserPublicId}` gives one a token.
    TokenFromAdministrator,
    /// `POST /v1/users/user` refuses a user with `IsApiUser: true` (403, Billecta's forbidden body):
    /// API users are made in the portal only.
    PortalOnly,
}

impl ApiUsers {
    const SIGN_IN_WITH_PASSWORD: &'static str = "sign-in-with-password";
    const TOKEN_FROM_ADMINISTRATOR: &'static str = "token-from-administrator";
    const PORTAL_ONLY: &'static str = "portal-only";
}

impl std::fmt::Display for ApiUsers {
    /// The name the `--api-users` flag takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiUsers::SignInWithPassword => Self::SIGN_IN_WITH_PASSWORD,
            ApiUsers::TokenFromAdministrator => Self::TOKEN_FROM_ADMINISTRATOR,
            ApiUsers::PortalOnly => Self::PORTAL_ONLY,
        })
    }
}

impl std::str::FromStr for ApiUsers {
    type Err = UnknownApiUsers;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            Self::SIGN_IN_WITH_PASSWORD => Ok(ApiUsers::SignInWithPassword),
            Self::TOKEN_FROM_ADMINISTRATOR => Ok(ApiUsers::TokenFromAdministrator),
            Self::PORTAL_ONLY => Ok(ApiUsers::PortalOnly),
            _ => Err(UnknownApiUsers(text.to_owned())),
        }
    }
}

/// A name that is not an [`ApiUsers`] mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown API users mode {0:?}: expected {password}, {administrator} or {portal}",
    password = ApiUsers::SIGN_IN_WITH_PASSWORD,
    administrator = ApiUsers::TOKEN_FROM_ADMINISTRATOR,
    portal = ApiUsers::PORTAL_ONLY
)]
pub struct UnknownApiUsers(String);

/// How a simulator starts.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Which Billecta environment to behave like. In `Test` an account has exactly one user.
    pub environment: Environment,
    /// Seeds the generator that decides fault probabilities.
    pub seed: u64,
    /// Fault rules in force from the start.
    pub faults: Vec<FaultRule>,
    /// How long a SecureToken lives.
    pub token_lifetime: Duration,
    /// What apiauthenticate does with a live token, from the start and again after a reset.
    pub sign_in: SignIn,
    /// How API users are made and get their tokens, from the start and again after a reset.
    pub api_users: ApiUsers,
}

impl SimulatorConfig {
    /// The default token lifetime: a year.
    pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// `127.0.0.1`, a random port, no faults, seed 0, apiauthenticate returning the live token, API
    /// users made through the users API and signing in with their password.
    pub fn new(environment: Environment) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            environment,
            seed: 0,
            faults: Vec::new(),
            token_lifetime: Self::DEFAULT_TOKEN_LIFETIME,
            sign_in: SignIn::default(),
            api_users: ApiUsers::default(),
        }
    }
}

impl Default for SimulatorConfig {
    /// The test environment.
    fn default() -> Self {
        Self::new(Environment::Test)
    }
}

/// What the server tasks share.
pub(crate) struct Shared {
    store: Mutex<Store>,
    faults: Mutex<FaultPlan>,
    start_seed: u64,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic under the lock leaves plain data behind; keep serving it.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultPlan> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the rules and restarts the generator from `seed` (or the start seed).
    pub(crate) fn set_faults(
        &self,
        seed: Option<u64>,
        rules: Vec<FaultRule>,
    ) -> Result<(), FaultRuleError> {
        for rule in &rules {
            rule.check(PUBLIC_ROUTES)?;
        }
        let effective_seed = seed.unwrap_or(self.start_seed);
        tracing::info!(
            seed = effective_seed,
            rules = rules.len(),
            "fault rules replaced"
        );
        *self.faults() = FaultPlan::new(effective_seed, rules);
        Ok(())
    }

    pub(crate) fn clear_faults(&self) {
        let seed = self.faults().seed();
        *self.faults() = FaultPlan::new(seed, Vec::new());
        tracing::info!("fault rules cleared");
    }

    pub(crate) fn set_sign_in(&self, sign_in: SignIn) {
        let previous = self.store().set_sign_in(sign_in);
        tracing::info!(from = %previous, to = %sign_in, "sign-in mode set");
    }

    pub(crate) fn set_api_users(&self, api_users: ApiUsers) {
        let previous = self.store().set_api_users(api_users);
        tracing::info!(from = %previous, to = %api_users, "API users mode set");
    }

    pub(crate) fn state(&self) -> SimulatorState {
        let faults = self.faults().state();
        self.store().snapshot(faults)
    }
}

/// Binds, then serves in a spawned task until [`RunningSimulator::shutdown`].
pub async fn start(config: SimulatorConfig) -> anyhow::Result<RunningSimulator> {
    for rule in &config.faults {
        rule.check(PUBLIC_ROUTES)
            .with_context(|| format!("fault rule {rule}"))?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        store: Mutex::new(Store::new(
            config.environment,
            config.token_lifetime,
            config.sign_in,
            config.api_users,
        )),
        faults: Mutex::new(FaultPlan::new(config.seed, config.faults.clone())),
        start_seed: config.seed,
        shutdown: CancellationToken::new(),
    });
    let router = routes::router(Arc::clone(&shared))
        .merge(admin::router(Arc::clone(&shared)))
        .fallback(|| async { http::StatusCode::NOT_FOUND });
    let task = tokio::spawn(server::serve(listener, router, shared.shutdown.clone()));
    tracing::info!(
        address = %local_addr,
        environment = %config.environment,
        seed = config.seed,
        faults = config.faults.len(),
        sign_in = %config.sign_in,
        api_users = %config.api_users,
        "billecta simulator listening"
    );
    Ok(RunningSimulator {
        local_addr,
        environment: config.environment,
        shared,
        task: Some(task),
    })
}

/// A simulator serving in the background. Dropping it stops accepting and ends every connection;
/// [`shutdown`](Self::shutdown) also waits for that to finish.
pub struct RunningSimulator {
    local_addr: SocketAddr,
    environment: Environment,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl RunningSimulator {
    /// `http://127.0.0.1:41234`, no trailing slash: what a Billecta client takes as its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// A person fills in "Create new account" in the portal. The account waits for activation; its
    /// one user (username = e-mail) is an administrator who may manage creditors.
    pub fn create_account(&self, account: NewAccount) -> Result<CreatedAccount, AdminError> {
        self.shared
            .store()
            .admin_create_account(account, OffsetDateTime::now_utc())
    }

    /// The person activates the account, accepts the terms and sets `password`.
    pub fn activate_account(&self, account_id: Uuid, password: &str) -> Result<(), AdminError> {
        self.shared
            .store()
            .admin_activate_account(account_id, password)
    }

    /// Both steps at once: an activated account whose user `email` has `password`.
    pub fn create_activated_account(
        &self,
        email: &str,
        password: &str,
    ) -> Result<CreatedAccount, AdminError> {
        let created = self.create_account(NewAccount {
            name: "Payway Billecta".to_owned(),
            company_name: "Simulated Company AB".to_owned(),
            email: email.to_owned(),
            password: format!("{password}-initial"),
        })?;
        self.activate_account(created.account_id, password)?;
        Ok(created)
    }

    /// An administrator adds a user in the portal. In the test environment this fails: the account
    /// already has its one user. The portal makes API users in every [`ApiUsers`] mode; under
    /// [`ApiUsers::TokenFromAdministrator`] one made here is still refused at apiauthenticate.
    pub fn create_user(&self, account_id: Uuid, user: NewUser) -> Result<CreatedUser, AdminError> {
        self.shared
            .store()
            .admin_create_user(account_id, user, OffsetDateTime::now_utc())
    }

    /// The user is removed in the portal; its SecureToken stops working at once.
    pub fn delete_user(&self, user_public_id: Uuid) -> Result<(), AdminError> {
        self.shared.store().admin_delete_user(user_public_id)
    }

    /// A person changes the user's password in the portal; its token stays as it is.
    pub fn set_password(&self, user_public_id: Uuid, password: &str) -> Result<(), AdminError> {
        self.shared
            .store()
            .admin_set_password(user_public_id, password)
    }

    /// Disables (dropping its token) or enables a user.
    pub fn set_user_enabled(&self, user_public_id: Uuid, enabled: bool) -> Result<(), AdminError> {
        self.shared
            .store()
            .admin_set_user_enabled(user_public_id, enabled)
    }

    /// Billecta's customer service approves an outgoing bankgiro (`BankgiroApproved`).
    pub fn approve_outgoing_bankgiro(
        &self,
        creditor_public_id: Uuid,
        bankgiro: &str,
    ) -> Result<(), AdminError> {
        self.shared.store().admin_set_staff_flag(
            creditor_public_id,
            StaffFlag::BankgiroApproved,
            bankgiro,
        )
    }

    /// Billecta verifies a payment method (`Verified`) by its number.
    pub fn verify_payment_method(
        &self,
        creditor_public_id: Uuid,
        number: &str,
    ) -> Result<(), AdminError> {
        self.shared
            .store()
            .admin_set_staff_flag(creditor_public_id, StaffFlag::Verified, number)
    }

    /// Replaces the fault rules; the generator restarts from `seed`, or the start seed.
    pub fn set_faults(
        &self,
        seed: Option<u64>,
        rules: Vec<FaultRule>,
    ) -> Result<(), FaultRuleError> {
        self.shared.set_faults(seed, rules)
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Public requests so far to `route` (`"POST /v1/creditors/creditor"`), faulted ones included.
    pub fn request_count(&self, route: &str) -> u64 {
        self.shared.store().request_count(route)
    }

    /// Changes what apiauthenticate does from the next sign-in on. Tokens already handed out stay
    /// as they are: switching to [`SignIn::IssuesNewToken`] kills nothing until someone signs in.
    pub fn set_sign_in(&self, sign_in: SignIn) {
        self.shared.set_sign_in(sign_in);
    }

    /// What apiauthenticate does now.
    pub fn sign_in(&self) -> SignIn {
        self.shared.store().sign_in()
    }

    /// Changes how API users are treated from the next request on. Users and tokens that exist stay
    /// as they are: an API user's live token keeps working under
    /// [`ApiUsers::TokenFromAdministrator`], and an API user made before
    /// [`ApiUsers::PortalOnly`] is not removed.
    pub fn set_api_users(&self, api_users: ApiUsers) {
        self.shared.set_api_users(api_users);
    }

    /// How API users are treated now.
    pub fn api_users(&self) -> ApiUsers {
        self.shared.store().api_users()
    }

    /// Successful `POST /v1/authentication/apiauthenticate` calls (those answered with a token) of
    /// the user named `username`, compared without regard to case; 0 for no such user. Refused and
    /// faulted attempts count only in [`request_count`](Self::request_count).
    pub fn sign_ins(&self, username: &str) -> u64 {
        self.shared.store().sign_ins(username)
    }

    /// Everything the simulator holds, without passwords or token values.
    pub fn state(&self) -> SimulatorState {
        self.shared.state()
    }

    /// Forgets accounts, users, tokens, creditors and request counts, and goes back to the sign-in
    /// and API users modes the simulator was started with; keeps the fault rules.
    pub fn reset(&self) {
        self.shared.store().reset();
    }

    /// Stops accepting, ends hanging requests and resets their connections, lets the others finish,
    /// and waits for all of it.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::warn!(error = %error, "the simulator's server task failed");
        }
        tracing::info!("billecta simulator stopped");
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_modes_have_kebab_names_for_flags_and_screaming_ones_on_the_wire() {
        for (mode, name, wire) in [
            (
                SignIn::ReturnsLiveToken,
                "returns-live-token",
                "\"RETURNS_LIVE_TOKEN\"",
            ),
            (
                SignIn::IssuesNewToken,
                "issues-new-token",
                "\"ISSUES_NEW_TOKEN\"",
            ),
        ] {
            assert_eq!(mode.to_string(), name);
            assert_eq!(name.parse::<SignIn>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), wire);
            assert_eq!(serde_json::from_str::<SignIn>(wire).unwrap(), mode);
        }
        let error = "rotate".parse::<SignIn>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown sign-in mode \"rotate\": expected returns-live-token or issues-new-token"
        );
        assert_eq!(SimulatorConfig::default().sign_in, SignIn::ReturnsLiveToken);
    }

    #[test]
    fn api_users_modes_have_kebab_names_for_flags_and_screaming_ones_on_the_wire() {
        for (mode, name, wire) in [
            (
                ApiUsers::SignInWithPassword,
                "sign-in-with-password",
                "\"SIGN_IN_WITH_PASSWORD\"",
            ),
            (
                ApiUsers::TokenFromAdministrator,
                "token-from-administrator",
                "\"TOKEN_FROM_ADMINISTRATOR\"",
            ),
            (ApiUsers::PortalOnly, "portal-only", "\"PORTAL_ONLY\""),
        ] {
            assert_eq!(mode.to_string(), name);
            assert_eq!(name.parse::<ApiUsers>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), wire);
            assert_eq!(serde_json::from_str::<ApiUsers>(wire).unwrap(), mode);
        }
        let error = "PORTAL_ONLY".parse::<ApiUsers>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown API users mode \"PORTAL_ONLY\": expected sign-in-with-password, token-from-administrator or portal-only"
        );
        assert_eq!(
            SimulatorConfig::default().api_users,
            ApiUsers::SignInWithPassword
        );
        assert_eq!(ApiUsers::default(), ApiUsers::SignInWithPassword);
    }
}
