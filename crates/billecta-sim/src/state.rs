//! What one Billecta environment holds, in memory: accounts, their users (with passwords and
//! SecureTokens), creditors, and how often each endpoint was called. Every rule of the simulated
//! API that is not about HTTP lives here: who may do what, what a create or an update stores, which
//! fields belong to Billecta and cannot be written. The HTTP layer (`routes`, `admin`) parses,
//! validates bodies against the schemas, takes the lock and calls one method.
//!
//! The choices for what public material leaves open are listed in the crate's `README.md`;
//! the comments below say which rule answers which question.

use super::faults::FaultsState;
use super::schema::{self, View};
use crate::{ApiUsers, Environment, SignIn};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// The message ASP.NET Web API answers for every refused credential.
const DENIED: &str = "Authorization has been denied for this request.";

const NOT_ACTIVATED: &str = "The account has not been activated. Follow the activation link in the e-mail from Billecta and accept the terms and conditions.";

const NO_RIGHTS: &str = "The user does not have the rights required for this request.";

const ONE_USER_IN_TEST: &str = "The test environment allows one user per account.";

/// A refusal of the public API, with the status and message Billecta would answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400 with `Message`.
    #[error("{0}")]
    BadRequest(String),
    /// 401 with `Message`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 with `Message`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 with an empty body.
    #[error("not found")]
    NotFound,
    /// 415 with `Message`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 500 with `Message`: the simulator broke its own contract.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn invalid(detail: impl std::fmt::Display) -> Self {
        ApiError::BadRequest(format!("The request is invalid. {detail}"))
    }

    /// 401 for every refused credential: ASP.NET Web API never says which part was wrong.
    pub(crate) fn denied() -> Self {
        ApiError::Unauthorized(DENIED.to_owned())
    }

    fn forbidden() -> Self {
        ApiError::Forbidden(NO_RIGHTS.to_owned())
    }

    /// 403 for an API user made through the users API under [`ApiUsers::PortalOnly`]: the same
    /// forbidden body as any other refused right, as nothing public says Billecta would word it
    /// otherwise.
    fn api_user_in_portal_only() -> Self {
        Self::forbidden()
    }
}

/// A refusal of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request does not fit the current state.
    #[error("{0}")]
    Conflict(String),
    /// 400: the request itself is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// A user's rights on one creditor (`UserRightView`), as Billecta writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserRightView {
    pub creditor_public_id: Uuid,
    pub can_read_creditor: bool,
    pub include_creditor_on_start_page: bool,
    pub can_write_creditor: bool,
    pub can_attest_invoice: bool,
    pub can_manage_invoice_payments: bool,
    pub can_sell_invoice: bool,
    pub can_sales_finance: bool,
    pub can_attest_supplier_invoice: bool,
    pub can_pay_supplier_invoice: bool,
    pub can_manage_invoices: bool,
    pub can_manage_debt_collections: bool,
    pub can_manage_self_invoices: bool,
    pub can_manage_self_invoice_debtor_infoes: bool,
    pub can_manage_supplier_invoices: bool,
    pub can_manage_finances: bool,
    pub can_read_settings: bool,
    pub can_read_bookkeeping: bool,
}

impl UserRightView {
    /// Every right on `creditor`: what the creator of a creditor gets.
    pub fn full(creditor: Uuid) -> Self {
        Self {
            creditor_public_id: creditor,
            can_read_creditor: true,
            include_creditor_on_start_page: true,
            can_write_creditor: true,
            can_attest_invoice: true,
            can_manage_invoice_payments: true,
            can_sell_invoice: true,
            can_sales_finance: true,
            can_attest_supplier_invoice: true,
            can_pay_supplier_invoice: true,
            can_manage_invoices: true,
            can_manage_debt_collections: true,
            can_manage_self_invoices: true,
            can_manage_self_invoice_debtor_infoes: true,
            can_manage_supplier_invoices: true,
            can_manage_finances: true,
            can_read_settings: true,
            can_read_bookkeeping: true,
        }
    }
}

/// `UserView` on the wire, every field present (the body is completed with .NET defaults before it
/// is read into this).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UserView {
    pub username: Option<String>,
    pub email: Option<String>,
    pub user_public_id: Uuid,
    pub full_name: Option<String>,
    pub org_no: Option<String>,
    pub language: String,
    pub password_expired: bool,
    pub password_never_expires: bool,
    pub password: Option<String>,
    pub is_enabled: bool,
    pub rights: Option<Vec<UserRightView>>,
    pub is_administrator: bool,
    pub is_api_user: bool,
    pub can_manage_creditors: bool,
    pub hide_select_creditor_dialog: bool,
    pub hide_system_updates: bool,
    pub hide_lookup_dialog: bool,
    pub active_creditor_public_id: Option<Uuid>,
    pub last_login: Option<String>,
    pub created: String,
    pub has_accepted_agreements: bool,
    pub receive_system_update_notification: bool,
    pub two_factor_bank_id_auth_enabled: bool,
}

/// The admin API's new account: what a person types into the portal's "Create new account" form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    /// The user's name.
    pub name: String,
    pub company_name: String,
    /// Also the username.
    pub email: String,
    /// The first password; activation sets the one the integration uses.
    pub password: String,
}

/// What creating an account made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAccount {
    pub account_id: Uuid,
    pub user_public_id: Uuid,
    pub username: String,
}

/// The admin API's new user, as an administrator adds one in the portal: the portal makes API users
/// in every [`ApiUsers`] mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub full_name: Option<String>,
    /// Without a password the user cannot use `apiauthenticate`; an administrator can still mint
    /// its token with `POST /v1/authentication/securetoken/{UserPublicId}`.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub is_api_user: bool,
    #[serde(default)]
    pub is_administrator: bool,
    #[serde(default)]
    pub can_manage_creditors: bool,
    /// Creditors of the account the user gets every right on, as an administrator grants them in the
    /// portal (an API user needs at least read rights on its creditor).
    #[serde(default)]
    pub creditors: Vec<Uuid>,
}

/// What creating a user made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedUser {
    pub user_public_id: Uuid,
    pub username: String,
}

/// Everything the simulator holds, for tests and the admin API. Passwords and token values are
/// never part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulatorState {
    pub environment: Environment,
    /// What apiauthenticate does with a live token now.
    pub sign_in: SignIn,
    /// How API users are made and get their tokens now.
    pub api_users: ApiUsers,
    pub accounts: Vec<AccountState>,
    pub users: Vec<UserState>,
    pub creditors: Vec<CreditorState>,
    /// How many creditors exist per `OrgNo`: Billecta allows duplicates, so the caller must not
    /// create them.
    pub creditors_per_org_no: BTreeMap<String, usize>,
    /// Public API requests per route template (`"POST /v1/creditors/creditor"`), including those a
    /// fault answered.
    pub request_counts: BTreeMap<String, u64>,
    /// Of those, the requests an injected fault (a status, 429, hang or reset; not added latency)
    /// answered instead of the endpoint.
    pub faulted_counts: BTreeMap<String, u64>,
    pub faults: FaultsState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub account_id: Uuid,
    pub name: String,
    pub company_name: String,
    pub email: String,
    pub activated: bool,
    pub created: String,
    pub user_public_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub user_public_id: Uuid,
    pub account_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub is_enabled: bool,
    pub is_administrator: bool,
    pub is_api_user: bool,
    pub can_manage_creditors: bool,
    pub has_accepted_agreements: bool,
    pub has_password: bool,
    /// In Billecta's own shape (`UserRightView`, PascalCase).
    pub rights: Vec<UserRightView>,
    pub created: String,
    pub last_login: Option<String>,
    pub token: Option<TokenState>,
    /// Successful apiauthenticate calls (those answered with a token) so far.
    pub sign_ins: u64,
}

/// A SecureToken without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    /// The first 8 hexadecimal digits of the SHA-256 of the value: enough to tell tokens apart.
    pub fingerprint: String,
    pub expires: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditorState {
    pub creditor_public_id: Uuid,
    pub account_id: Uuid,
    /// The `CreditorView` as stored and returned.
    pub view: Value,
}

struct Account {
    id: Uuid,
    name: String,
    company_name: String,
    email: String,
    activated: bool,
    created: OffsetDateTime,
}

struct PasswordHash {
    salt: [u8; 16],
    digest: [u8; 32],
}

impl PasswordHash {
    fn new(password: &str) -> Self {
        let salt = *Uuid::new_v4().as_bytes();
        Self {
            salt,
            digest: Self::digest(&salt, password),
        }
    }

    fn digest(salt: &[u8], password: &str) -> [u8; 32] {
        Sha256::new()
            .chain_update(salt)
            .chain_update(password.as_bytes())
            .finalize()
            .into()
    }

    fn matches(&self, password: &str) -> bool {
        Self::digest(&self.salt, password) == self.digest
    }
}

struct Token {
    value: String,
    expires: OffsetDateTime,
}

impl Token {
    /// 64 random bytes in base64: 88 characters ending in `==`, like Billecta's.
    fn issue(now: OffsetDateTime, lifetime: Duration) -> Self {
        let bytes: Vec<u8> = (0..4).flat_map(|_| *Uuid::new_v4().as_bytes()).collect();
        Self {
            value: BASE64.encode(bytes),
            expires: now + lifetime,
        }
    }

    fn is_live(&self, now: OffsetDateTime) -> bool {
        self.expires > now
    }

    fn view(&self) -> Value {
        json!({"Value": self.value, "Expires": wire_time(self.expires)})
    }

    fn state(&self) -> TokenState {
        let digest = Sha256::digest(self.value.as_bytes());
        TokenState {
            fingerprint: hex::encode(&digest[..4]),
            expires: wire_time(self.expires),
        }
    }
}

struct User {
    id: Uuid,
    account_id: Uuid,
    username: String,
    email: Option<String>,
    full_name: Option<String>,
    org_no: Option<String>,
    language: String,
    password_expired: bool,
    password_never_expires: bool,
    password: Option<PasswordHash>,
    is_enabled: bool,
    rights: Vec<UserRightView>,
    is_administrator: bool,
    is_api_user: bool,
    can_manage_creditors: bool,
    hide_select_creditor_dialog: bool,
    hide_system_updates: bool,
    hide_lookup_dialog: bool,
    active_creditor_public_id: Option<Uuid>,
    last_login: Option<OffsetDateTime>,
    created: OffsetDateTime,
    has_accepted_agreements: bool,
    receive_system_update_notification: bool,
    two_factor_bank_id_auth_enabled: bool,
    token: Option<Token>,
    /// Successful apiauthenticate calls: a test tells "the service reused its token" from "it
    /// signed in again" by this, which the request count cannot do once refusals and faults are
    /// in it.
    sign_ins: u64,
}

impl User {
    fn new(account_id: Uuid, username: String, now: OffsetDateTime) -> Self {
        Self {
            id: Uuid::new_v4(),
            account_id,
            username,
            email: None,
            full_name: None,
            org_no: None,
            language: "SV".to_owned(),
            password_expired: false,
            password_never_expires: false,
            password: None,
            is_enabled: true,
            rights: Vec::new(),
            is_administrator: false,
            is_api_user: false,
            can_manage_creditors: false,
            hide_select_creditor_dialog: false,
            hide_system_updates: false,
            hide_lookup_dialog: false,
            active_creditor_public_id: None,
            last_login: None,
            created: now,
            has_accepted_agreements: false,
            receive_system_update_notification: false,
            two_factor_bank_id_auth_enabled: false,
            token: None,
            sign_ins: 0,
        }
    }

    /// The user as `GET /v1/users/user/{id}` shows it: never the password.
    fn view(&self) -> UserView {
        UserView {
            username: Some(self.username.clone()),
            email: self.email.clone(),
            user_public_id: self.id,
            full_name: self.full_name.clone(),
            org_no: self.org_no.clone(),
            language: self.language.clone(),
            password_expired: self.password_expired,
            password_never_expires: self.password_never_expires,
            password: None,
            is_enabled: self.is_enabled,
            rights: Some(self.rights.clone()),
            is_administrator: self.is_administrator,
            is_api_user: self.is_api_user,
            can_manage_creditors: self.can_manage_creditors,
            hide_select_creditor_dialog: self.hide_select_creditor_dialog,
            hide_system_updates: self.hide_system_updates,
            hide_lookup_dialog: self.hide_lookup_dialog,
            active_creditor_public_id: self.active_creditor_public_id,
            last_login: self.last_login.map(wire_time),
            created: wire_time(self.created),
            has_accepted_agreements: self.has_accepted_agreements,
            receive_system_update_notification: self.receive_system_update_notification,
            two_factor_bank_id_auth_enabled: self.two_factor_bank_id_auth_enabled,
        }
    }

    /// Takes every field a client may set from `view`; `Created`, `LastLogin` and
    /// `HasAcceptedAgreements` belong to Billecta and are ignored.
    fn apply(&mut self, view: UserView, username: String) {
        self.username = username;
        self.email = view.email;
        self.full_name = view.full_name;
        self.org_no = view.org_no;
        self.language = view.language;
        self.password_expired = view.password_expired;
        self.password_never_expires = view.password_never_expires;
        if let Some(password) = view.password.filter(|password| !password.is_empty()) {
            self.password = Some(PasswordHash::new(&password));
        }
        self.is_enabled = view.is_enabled;
        self.rights = view.rights.unwrap_or_default();
        self.is_administrator = view.is_administrator;
        self.is_api_user = view.is_api_user;
        self.can_manage_creditors = view.can_manage_creditors;
        self.hide_select_creditor_dialog = view.hide_select_creditor_dialog;
        self.hide_system_updates = view.hide_system_updates;
        self.hide_lookup_dialog = view.hide_lookup_dialog;
        self.active_creditor_public_id = view.active_creditor_public_id;
        self.receive_system_update_notification = view.receive_system_update_notification;
        self.two_factor_bank_id_auth_enabled = view.two_factor_bank_id_auth_enabled;
        if !self.is_enabled {
            self.token = None;
        }
    }

    fn state(&self) -> UserState {
        UserState {
            user_public_id: self.id,
            account_id: self.account_id,
            username: self.username.clone(),
            email: self.email.clone(),
            full_name: self.full_name.clone(),
            is_enabled: self.is_enabled,
            is_administrator: self.is_administrator,
            is_api_user: self.is_api_user,
            can_manage_creditors: self.can_manage_creditors,
            has_accepted_agreements: self.has_accepted_agreements,
            has_password: self.password.is_some(),
            rights: self.rights.clone(),
            created: wire_time(self.created),
            last_login: self.last_login.map(wire_time),
            token: self.token.as_ref().map(Token::state),
            sign_ins: self.sign_ins,
        }
    }

    fn grant_full(&mut self, creditor: Uuid) {
        self.rights
            .retain(|right| right.creditor_public_id != creditor);
        self.rights.push(UserRightView::full(creditor));
    }
}

struct Creditor {
    id: Uuid,
    account_id: Uuid,
    /// The complete `CreditorView`.
    view: Value,
}

impl Creditor {
    fn sub_view(&self) -> Value {
        json!({
            "CreditorPublicId": self.id,
            "Name": self.view["Name"],
            "IsEnabled": self.view["IsEnabled"],
            "OrgNo": self.view["OrgNo"],
            "LogoURL": self.view["LogoURL"],
        })
    }
}

/// What a right check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// The paging and sorting of `GET /v1/creditors/creditors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub offset: usize,
    pub limit: Option<usize>,
    pub sorting_field: Option<String>,
    pub ascending: bool,
}

/// One Billecta environment.
pub(crate) struct Store {
    environment: Environment,
    token_lifetime: Duration,
    /// The mode the simulator was started with, which a reset returns to: a reset starts a test
    /// afresh, and a mode left behind by the test before would change what the next one sees.
    start_sign_in: SignIn,
    sign_in: SignIn,
    /// Likewise the API users mode the simulator was started with, and the one in force.
    start_api_users: ApiUsers,
    api_users: ApiUsers,
    accounts: Vec<Account>,
    users: Vec<User>,
    creditors: Vec<Creditor>,
    request_counts: BTreeMap<String, u64>,
    faulted_counts: BTreeMap<String, u64>,
}

impl Store {
    pub(crate) fn new(
        environment: Environment,
        token_lifetime: Duration,
        sign_in: SignIn,
        api_users: ApiUsers,
    ) -> Self {
        Self {
            environment,
            token_lifetime,
            start_sign_in: sign_in,
            sign_in,
            start_api_users: api_users,
            api_users,
            accounts: Vec::new(),
            users: Vec::new(),
            creditors: Vec::new(),
            request_counts: BTreeMap::new(),
            faulted_counts: BTreeMap::new(),
        }
    }

    /// Forgets everything: accounts, users, tokens, creditors and request counts; the sign-in and
    /// API users modes are the start modes again.
    pub(crate) fn reset(&mut self) {
        *self = Self::new(
            self.environment,
            self.token_lifetime,
            self.start_sign_in,
            self.start_api_users,
        );
    }

    pub(crate) fn sign_in(&self) -> SignIn {
        self.sign_in
    }

    /// Sets the sign-in mode; the one it replaces.
    pub(crate) fn set_sign_in(&mut self, sign_in: SignIn) -> SignIn {
        std::mem::replace(&mut self.sign_in, sign_in)
    }

    pub(crate) fn api_users(&self) -> ApiUsers {
        self.api_users
    }

    /// Sets the API users mode; the one it replaces.
    pub(crate) fn set_api_users(&mut self, api_users: ApiUsers) -> ApiUsers {
        std::mem::replace(&mut self.api_users, api_users)
    }

    /// Successful sign-ins of the user named `username` (any letter case), 0 for no such user.
    pub(crate) fn sign_ins(&self, username: &str) -> u64 {
        self.users
            .iter()
            .find(|user| user.username.eq_ignore_ascii_case(username))
            .map_or(0, |user| user.sign_ins)
    }

    /// Counts a request to `route`; `faulted` when an injected fault answers it instead of the
    /// endpoint.
    pub(crate) fn count(&mut self, route: &str, faulted: bool) {
        *self.request_counts.entry(route.to_owned()).or_default() += 1;
        if faulted {
            *self.faulted_counts.entry(route.to_owned()).or_default() += 1;
        }
    }

    pub(crate) fn request_count(&self, route: &str) -> u64 {
        self.request_counts.get(route).copied().unwrap_or_default()
    }

    fn account(&self, id: Uuid) -> Option<&Account> {
        self.accounts.iter().find(|account| account.id == id)
    }

    fn user(&self, id: Uuid) -> Option<&User> {
        self.users.iter().find(|user| user.id == id)
    }

    fn user_mut(&mut self, id: Uuid) -> Option<&mut User> {
        self.users.iter_mut().find(|user| user.id == id)
    }

    fn creditor(&self, id: Uuid) -> Option<&Creditor> {
        self.creditors.iter().find(|creditor| creditor.id == id)
    }

    fn username_taken(&self, username: &str, except: Option<Uuid>) -> bool {
        self.users
            .iter()
            .any(|user| Some(user.id) != except && user.username.eq_ignore_ascii_case(username))
    }

    /// In the test environment an account has exactly one user.
    fn has_room_for_user(&self, account_id: Uuid) -> bool {
        self.environment != Environment::Test
            || !self.users.iter().any(|user| user.account_id == account_id)
    }

    // ---- authentication -------------------------------------------------------------------

    /// `POST /v1/authentication/apiauthenticate`. Whether Billecta rotates the token here is not
    /// known, so it depends on the mode: [`SignIn::ReturnsLiveToken`] answers the user's live token
    /// (every service instance that signs in gets the same one) and issues one only if there is
    /// none; [`SignIn::IssuesNewToken`] always issues one, and the one before dies, as Billecta
    /// allows one token per user.
    ///
    /// Whether an API user may sign in at all is not known either: under
    /// [`ApiUsers::TokenFromAdministrator`] one is refused with the very 401 of a wrong password,
    /// wherever it was made, so a client cannot tell the two apart and must fall back to an
    /// administrator's `POST /v1/authentication/securetoken/{UserPublicId}`.
    pub(crate) fn api_authenticate(
        &mut self,
        username: &str,
        password: &str,
        now: OffsetDateTime,
    ) -> Result<Value, ApiError> {
        let lifetime = self.token_lifetime;
        let Some(user) = self
            .users
            .iter()
            .find(|candidate| candidate.username.eq_ignore_ascii_case(username))
        else {
            return Err(ApiError::denied());
        };
        let password_matches = user
            .password
            .as_ref()
            .is_some_and(|hash| hash.matches(password));
        let refused_as_api_user =
            user.is_api_user && self.api_users == ApiUsers::TokenFromAdministrator;
        if !password_matches || !user.is_enabled || refused_as_api_user {
            return Err(ApiError::denied());
        }
        let activated = self
            .account(user.account_id)
            .is_some_and(|account| account.activated);
        if !activated {
            return Err(ApiError::Unauthorized(NOT_ACTIVATED.to_owned()));
        }
        let id = user.id;
        let reuse_live_token = self.sign_in == SignIn::ReturnsLiveToken;
        let holder = self.user_mut(id).ok_or_else(ApiError::denied)?;
        holder.last_login = Some(now);
        holder.sign_ins += 1;
        if reuse_live_token
            && let Some(live) = holder.token.as_ref().filter(|token| token.is_live(now))
        {
            return Ok(live.view());
        }
        let token = Token::issue(now, lifetime);
        let view = token.view();
        holder.token = Some(token);
        Ok(view)
    }

    /// Who a SecureToken belongs to. Unknown, expired or revoked tokens, deleted or disabled users:
    /// all 401, at once.
    pub(crate) fn authenticate(
        &mut self,
        token_value: &str,
        now: OffsetDateTime,
    ) -> Result<Uuid, ApiError> {
        let Some(user) = self.users.iter_mut().find(|candidate| {
            candidate
                .token
                .as_ref()
                .is_some_and(|token| token.value == token_value && token.is_live(now))
        }) else {
            return Err(ApiError::denied());
        };
        if !user.is_enabled {
            return Err(ApiError::denied());
        }
        user.last_login = Some(now);
        Ok(user.id)
    }

    fn caller(&self, id: Uuid) -> Result<&User, ApiError> {
        self.user(id).ok_or_else(ApiError::denied)
    }

    /// `GET /v1/authentication/securetoken`.
    pub(crate) fn current_token(&self, caller: Uuid) -> Result<Value, ApiError> {
        let user = self.caller(caller)?;
        user.token
            .as_ref()
            .map(Token::view)
            .ok_or_else(ApiError::denied)
    }

    /// `POST /v1/authentication/securetoken[/{UserPublicId}]`: a new token, which invalidates the
    /// old one. For another user the caller must administer the same account.
    pub(crate) fn issue_token(
        &mut self,
        caller: Uuid,
        target: Option<Uuid>,
        now: OffsetDateTime,
    ) -> Result<Value, ApiError> {
        let lifetime = self.token_lifetime;
        let user = self.caller(caller)?;
        let target_id = target.unwrap_or(user.id);
        if target_id != user.id {
            let Some(target_user) = self.user(target_id) else {
                return Err(ApiError::NotFound);
            };
            if target_user.account_id != user.account_id {
                return Err(ApiError::NotFound);
            }
            if !user.is_administrator {
                return Err(ApiError::forbidden());
            }
            if !target_user.is_enabled {
                return Err(ApiError::invalid("The user is disabled."));
            }
        }
        let token = Token::issue(now, lifetime);
        let view = token.view();
        let holder = self.user_mut(target_id).ok_or(ApiError::NotFound)?;
        holder.token = Some(token);
        Ok(view)
    }

    /// `DELETE /v1/authentication/apiauthenticate`: the caller's token stops working.
    pub(crate) fn revoke_token(&mut self, caller: Uuid) -> Result<(), ApiError> {
        let user = self.user_mut(caller).ok_or_else(ApiError::denied)?;
        user.token = None;
        Ok(())
    }

    // ---- creditors ------------------------------------------------------------------------

    fn may(&self, user: &User, creditor: &Creditor, need: Need) -> bool {
        if user.is_administrator && user.account_id == creditor.account_id {
            return true;
        }
        user.rights
            .iter()
            .find(|right| right.creditor_public_id == creditor.id)
            .is_some_and(|right| match need {
                Need::Read => right.can_read_creditor || right.can_write_creditor,
                Need::Write => right.can_write_creditor,
            })
    }

    fn readable(&self, caller: Uuid) -> Result<Vec<&Creditor>, ApiError> {
        let user = self.caller(caller)?;
        Ok(self
            .creditors
            .iter()
            .filter(|creditor| self.may(user, creditor, Need::Read))
            .collect())
    }

    /// `GET /v1/creditors/creditors`.
    pub(crate) fn list_creditors(
        &self,
        caller: Uuid,
        query: &ListQuery,
    ) -> Result<Value, ApiError> {
        let mut creditors = self.readable(caller)?;
        if let Some(field) = &query.sorting_field {
            let Some(name) = sortable_field(field) else {
                return Err(ApiError::invalid(format!(
                    "sortingfield {field:?} is not a field of CreditorView that can be sorted on."
                )));
            };
            creditors.sort_by(|a, b| compare_json(&a.view[name.as_str()], &b.view[name.as_str()]));
            if !query.ascending {
                creditors.reverse();
            }
        } else if !query.ascending {
            creditors.reverse();
        }
        let page: Vec<Value> = creditors
            .into_iter()
            .skip(query.offset)
            .take(query.limit.unwrap_or(usize::MAX))
            .map(|creditor| creditor.view.clone())
            .collect();
        Ok(Value::Array(page))
    }

    /// `GET /v1/creditors/creditorsubs`.
    pub(crate) fn creditor_subs(&self, caller: Uuid) -> Result<Value, ApiError> {
        Ok(Value::Array(
            self.readable(caller)?
                .into_iter()
                .map(Creditor::sub_view)
                .collect(),
        ))
    }

    /// `GET /v1/creditors/creditor/{id}`.
    pub(crate) fn get_creditor(&self, caller: Uuid, id: Uuid) -> Result<Value, ApiError> {
        let user = self.caller(caller)?;
        let creditor = self.creditor(id).ok_or(ApiError::NotFound)?;
        if !self.may(user, creditor, Need::Read) {
            return Err(ApiError::forbidden());
        }
        Ok(creditor.view.clone())
    }

    /// `POST /v1/creditors/creditor`. The body's `CreditorPublicId` is ignored: Billecta makes the
    /// id. Duplicate `OrgNo`s are allowed. The creator gets every right on the new creditor;
    /// `GiveAllUsersFullRightsOnCreditor: true` gives them to every user of the account.
    pub(crate) fn create_creditor(&mut self, caller: Uuid, body: &Value) -> Result<Uuid, ApiError> {
        let user = self.caller(caller)?;
        if !(user.is_administrator || user.can_manage_creditors) {
            return Err(ApiError::forbidden());
        }
        let account_id = user.account_id;
        let mut view = schema::complete(View::Creditor, body);
        check_creditor_fields(&view)?;
        let id = Uuid::new_v4();
        view["CreditorPublicId"] = Value::from(id.to_string());
        keep_billecta_owned_fields(&mut view, None);
        let everyone = view["GiveAllUsersFullRightsOnCreditor"] == Value::Bool(true);
        self.creditors.push(Creditor {
            id,
            account_id,
            view,
        });
        for member in &mut self.users {
            if member.id == caller || (everyone && member.account_id == account_id) {
                member.grant_full(id);
            }
        }
        Ok(id)
    }

    /// `PUT /v1/creditors/creditor`: replaces the whole creditor. Omitted or null fields are
    /// cleared; `Verified` and `BankgiroApproved` keep their stored values.
    pub(crate) fn update_creditor(&mut self, caller: Uuid, body: &Value) -> Result<(), ApiError> {
        let user = self.caller(caller)?;
        let mut view = schema::complete(View::Creditor, body);
        let id = view["CreditorPublicId"]
            .as_str()
            .and_then(|text| Uuid::parse_str(text).ok())
            .filter(|parsed| !parsed.is_nil())
            .ok_or_else(|| ApiError::invalid("CreditorPublicId is required."))?;
        let creditor = self.creditor(id).ok_or(ApiError::NotFound)?;
        if !self.may(user, creditor, Need::Write) {
            return Err(ApiError::forbidden());
        }
        check_creditor_fields(&view)?;
        view["CreditorPublicId"] = Value::from(id.to_string());
        keep_billecta_owned_fields(&mut view, Some(&creditor.view));
        let account_id = creditor.account_id;
        let everyone = view["GiveAllUsersFullRightsOnCreditor"] == Value::Bool(true);
        if let Some(stored) = self.creditors.iter_mut().find(|entry| entry.id == id) {
            stored.view = view;
        }
        if everyone {
            for member in self
                .users
                .iter_mut()
                .filter(|member| member.account_id == account_id)
            {
                member.grant_full(id);
            }
        }
        Ok(())
    }

    /// `DELETE /v1/creditors/creditor/{id}`. Nothing (invoices, debtors) ever exists on a
    /// simulated creditor, so deleting is always allowed to those who may write it.
    pub(crate) fn delete_creditor(&mut self, caller: Uuid, id: Uuid) -> Result<(), ApiError> {
        let user = self.caller(caller)?;
        let creditor = self.creditor(id).ok_or(ApiError::NotFound)?;
        if !self.may(user, creditor, Need::Write) {
            return Err(ApiError::forbidden());
        }
        self.creditors.retain(|entry| entry.id != id);
        for member in &mut self.users {
            member.rights.retain(|right| right.creditor_public_id != id);
        }
        Ok(())
    }

    // ---- users ----------------------------------------------------------------------------

    /// `GET /v1/users/users`: an administrator sees the account's users, anyone else only itself.
    pub(crate) fn list_users(&self, caller: Uuid) -> Result<Vec<UserView>, ApiError> {
        let user = self.caller(caller)?;
        Ok(self
            .users
            .iter()
            .filter(|member| {
                member.id == user.id
                    || (user.is_administrator && member.account_id == user.account_id)
            })
            .map(User::view)
            .collect())
    }

    /// `GET /v1/users/user/{id}`: any user of the same account; others do not exist.
    pub(crate) fn get_user(&self, caller: Uuid, id: Uuid) -> Result<UserView, ApiError> {
        let user = self.caller(caller)?;
        self.user(id)
            .filter(|member| member.account_id == user.account_id)
            .map(User::view)
            .ok_or(ApiError::NotFound)
    }

    fn check_user_input(
        &self,
        account_id: Uuid,
        view: &UserView,
        except: Option<Uuid>,
    ) -> Result<String, ApiError> {
        let username = view
            .username
            .as_deref()
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ApiError::invalid("Username is required."))?;
        if self.username_taken(username, except) {
            return Err(ApiError::invalid(format!(
                "Username {username:?} is already in use."
            )));
        }
        for (index, right) in view.rights.iter().flatten().enumerate() {
            let known = self
                .creditor(right.creditor_public_id)
                .is_some_and(|creditor| creditor.account_id == account_id);
            if !known {
                return Err(ApiError::invalid(format!(
                    "Rights[{index}].CreditorPublicId {} is not a creditor of this account.",
                    right.creditor_public_id
                )));
            }
        }
        Ok(username.to_owned())
    }

    /// `POST /v1/users/user`: administrators only; `UserPublicId` is ignored and made here. Under
    /// [`ApiUsers::PortalOnly`] a user with `IsApiUser: true` is refused (403) before anything else
    /// in the body is looked at, as a rule about who may be made, not about the body's content.
    pub(crate) fn create_user(
        &mut self,
        caller: Uuid,
        view: UserView,
        now: OffsetDateTime,
    ) -> Result<Uuid, ApiError> {
        let user = self.caller(caller)?;
        if !user.is_administrator {
            return Err(ApiError::forbidden());
        }
        if view.is_api_user && self.api_users == ApiUsers::PortalOnly {
            return Err(ApiError::api_user_in_portal_only());
        }
        let account_id = user.account_id;
        let username = self.check_user_input(account_id, &view, None)?;
        if !self.has_room_for_user(account_id) {
            return Err(ApiError::invalid(ONE_USER_IN_TEST));
        }
        let mut member = User::new(account_id, username.clone(), now);
        member.apply(view, username);
        let id = member.id;
        self.users.push(member);
        Ok(id)
    }

    /// `PUT /v1/users/user`: administrators only; `UserPublicId` names the user, every settable
    /// field is replaced, a non-null `Password` changes the password. Under [`ApiUsers::PortalOnly`]
    /// turning a user into an API user is refused (403) like creating one, or the update would be a
    /// way around the rule; an API user made in the portal keeps `IsApiUser: true` on updates, as a
    /// PUT must send every field.
    pub(crate) fn update_user(&mut self, caller: Uuid, view: UserView) -> Result<(), ApiError> {
        let user = self.caller(caller)?;
        if !user.is_administrator {
            return Err(ApiError::forbidden());
        }
        let account_id = user.account_id;
        let id = view.user_public_id;
        if id.is_nil() {
            return Err(ApiError::invalid("UserPublicId is required."));
        }
        let Some(existing) = self
            .user(id)
            .filter(|member| member.account_id == account_id)
        else {
            return Err(ApiError::NotFound);
        };
        if view.is_api_user && !existing.is_api_user && self.api_users == ApiUsers::PortalOnly {
            return Err(ApiError::api_user_in_portal_only());
        }
        let username = self.check_user_input(account_id, &view, Some(id))?;
        let member = self.user_mut(id).ok_or(ApiError::NotFound)?;
        member.apply(view, username);
        Ok(())
    }

    /// `DELETE /v1/users/user/{id}`: administrators only; the user's token dies with it.
    pub(crate) fn delete_user(&mut self, caller: Uuid, id: Uuid) -> Result<(), ApiError> {
        let user = self.caller(caller)?;
        let same_account = self
            .user(id)
            .is_some_and(|member| member.account_id == user.account_id);
        if !same_account {
            return Err(ApiError::NotFound);
        }
        if !user.is_administrator {
            return Err(ApiError::forbidden());
        }
        self.users.retain(|member| member.id != id);
        Ok(())
    }

    /// `PUT /v1/users/changepassword`: the caller's own password. Its token stays valid.
    pub(crate) fn change_password(
        &mut self,
        caller: Uuid,
        password: Option<&str>,
    ) -> Result<(), ApiError> {
        let new_password = password
            .filter(|text| !text.is_empty())
            .ok_or_else(|| ApiError::invalid("Password is required."))?;
        let user = self.user_mut(caller).ok_or_else(ApiError::denied)?;
        user.password = Some(PasswordHash::new(new_password));
        Ok(())
    }

    // ---- admin: the portal and Billecta staff ---------------------------------------------

    pub(crate) fn admin_create_account(
        &mut self,
        account: NewAccount,
        now: OffsetDateTime,
    ) -> Result<CreatedAccount, AdminError> {
        let email = account.email.trim().to_owned();
        for (field, value) in [
            ("name", account.name.trim()),
            ("company_name", account.company_name.trim()),
            ("email", email.as_str()),
            ("password", account.password.as_str()),
        ] {
            if value.is_empty() {
                return Err(AdminError::Invalid(format!("{field} is required")));
            }
        }
        if self.username_taken(&email, None) {
            return Err(AdminError::Conflict(format!(
                "a user named {email:?} already exists"
            )));
        }
        let account_id = Uuid::new_v4();
        self.accounts.push(Account {
            id: account_id,
            name: account.name.trim().to_owned(),
            company_name: account.company_name.trim().to_owned(),
            email: email.clone(),
            activated: false,
            created: now,
        });
        let mut user = User::new(account_id, email.clone(), now);
        user.email = Some(email.clone());
        user.full_name = Some(account.name.trim().to_owned());
        user.password = Some(PasswordHash::new(&account.password));
        user.is_administrator = true;
        user.can_manage_creditors = true;
        let user_public_id = user.id;
        self.users.push(user);
        Ok(CreatedAccount {
            account_id,
            user_public_id,
            username: email,
        })
    }

    /// The person follows the activation link, accepts the terms and sets the password.
    pub(crate) fn admin_activate_account(
        &mut self,
        account_id: Uuid,
        password: &str,
    ) -> Result<(), AdminError> {
        if password.is_empty() {
            return Err(AdminError::Invalid("password is required".to_owned()));
        }
        let account = self
            .accounts
            .iter_mut()
            .find(|entry| entry.id == account_id)
            .ok_or_else(|| AdminError::NotFound(format!("no account {account_id}")))?;
        if account.activated {
            return Err(AdminError::Conflict(format!(
                "account {account_id} is already activated"
            )));
        }
        account.activated = true;
        let email = account.email.clone();
        for user in self
            .users
            .iter_mut()
            .filter(|user| user.account_id == account_id && user.username == email)
        {
            user.has_accepted_agreements = true;
            user.password = Some(PasswordHash::new(password));
        }
        Ok(())
    }

    pub(crate) fn admin_create_user(
        &mut self,
        account_id: Uuid,
        new: NewUser,
        now: OffsetDateTime,
    ) -> Result<CreatedUser, AdminError> {
        if self.account(account_id).is_none() {
            return Err(AdminError::NotFound(format!("no account {account_id}")));
        }
        let username = new.username.trim().to_owned();
        if username.is_empty() {
            return Err(AdminError::Invalid("username is required".to_owned()));
        }
        if self.username_taken(&username, None) {
            return Err(AdminError::Conflict(format!(
                "a user named {username:?} already exists"
            )));
        }
        if !self.has_room_for_user(account_id) {
            return Err(AdminError::Conflict(ONE_USER_IN_TEST.to_owned()));
        }
        let mut user = User::new(account_id, username.clone(), now);
        user.email = new.email;
        user.full_name = new.full_name;
        user.password = new
            .password
            .filter(|password| !password.is_empty())
            .map(|password| PasswordHash::new(&password));
        user.is_api_user = new.is_api_user;
        user.is_administrator = new.is_administrator;
        user.can_manage_creditors = new.can_manage_creditors;
        user.has_accepted_agreements = true;
        for creditor in &new.creditors {
            if !self
                .creditors
                .iter()
                .any(|entry| entry.id == *creditor && entry.account_id == account_id)
            {
                return Err(AdminError::NotFound(format!(
                    "no creditor {creditor} in account {account_id}"
                )));
            }
            user.rights.push(UserRightView::full(*creditor));
        }
        let user_public_id = user.id;
        self.users.push(user);
        Ok(CreatedUser {
            user_public_id,
            username,
        })
    }

    pub(crate) fn admin_delete_user(&mut self, id: Uuid) -> Result<(), AdminError> {
        if self.user(id).is_none() {
            return Err(AdminError::NotFound(format!("no user {id}")));
        }
        self.users.retain(|user| user.id != id);
        Ok(())
    }

    /// A person changes the user's password in the portal. The token stays as it is: nothing
    /// public says a password change revokes it.
    pub(crate) fn admin_set_password(
        &mut self,
        id: Uuid,
        password: &str,
    ) -> Result<(), AdminError> {
        if password.is_empty() {
            return Err(AdminError::Invalid("password is required".to_owned()));
        }
        let user = self
            .user_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("no user {id}")))?;
        user.password = Some(PasswordHash::new(password));
        Ok(())
    }

    /// Disabling also drops the user's token: enabling again needs a new one.
    pub(crate) fn admin_set_user_enabled(
        &mut self,
        id: Uuid,
        enabled: bool,
    ) -> Result<(), AdminError> {
        let user = self
            .user_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("no user {id}")))?;
        user.is_enabled = enabled;
        if !enabled {
            user.token = None;
        }
        Ok(())
    }

    /// Billecta's staff set `flag` on the creditor's entries with `number`: customer service
    /// approves a bankgiro for outgoing payments, or Billecta verifies a payment method (the
    /// account behind a bankgiro, plusgiro, bank account or IBAN).
    pub(crate) fn admin_set_staff_flag(
        &mut self,
        creditor_id: Uuid,
        flag: StaffFlag,
        number: &str,
    ) -> Result<(), AdminError> {
        let creditor = self
            .creditors
            .iter_mut()
            .find(|entry| entry.id == creditor_id)
            .ok_or_else(|| AdminError::NotFound(format!("no creditor {creditor_id}")))?;
        if !flag.set(&mut creditor.view, number) {
            return Err(AdminError::NotFound(format!(
                "creditor {creditor_id} has no {} {number}",
                flag.entry()
            )));
        }
        Ok(())
    }

    pub(crate) fn snapshot(&self, faults: FaultsState) -> SimulatorState {
        let mut creditors_per_org_no = BTreeMap::new();
        for creditor in &self.creditors {
            if let Some(org_no) = creditor.view["OrgNo"].as_str() {
                *creditors_per_org_no.entry(org_no.to_owned()).or_default() += 1;
            }
        }
        SimulatorState {
            environment: self.environment,
            sign_in: self.sign_in,
            api_users: self.api_users,
            accounts: self
                .accounts
                .iter()
                .map(|account| AccountState {
                    account_id: account.id,
                    name: account.name.clone(),
                    company_name: account.company_name.clone(),
                    email: account.email.clone(),
                    activated: account.activated,
                    created: wire_time(account.created),
                    user_public_ids: self
                        .users
                        .iter()
                        .filter(|user| user.account_id == account.id)
                        .map(|user| user.id)
                        .collect(),
                })
                .collect(),
            users: self.users.iter().map(User::state).collect(),
            creditors: self
                .creditors
                .iter()
                .map(|creditor| CreditorState {
                    creditor_public_id: creditor.id,
                    account_id: creditor.account_id,
                    view: creditor.view.clone(),
                })
                .collect(),
            creditors_per_org_no,
            request_counts: self.request_counts.clone(),
            faulted_counts: self.faulted_counts.clone(),
            faults,
        }
    }
}

/// Date-times as the simulator writes them: RFC 3339 in UTC with seven fractional digits, the way
/// .NET writes a `DateTimeOffset`.
pub(crate) fn wire_time(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7][offset_hour sign:mandatory]:[offset_minute]"
    );
    at.format(format).unwrap_or_default()
}

/// `Name` and `OrgNo` are required; `NextInvoiceNumber`, when given, is digits only.
fn check_creditor_fields(view: &Value) -> Result<(), ApiError> {
    for field in ["Name", "OrgNo"] {
        let present = view[field]
            .as_str()
            .is_some_and(|text| !text.trim().is_empty());
        if !present {
            return Err(ApiError::invalid(format!("{field} is required.")));
        }
    }
    if let Some(number) = view["NextInvoiceNumber"].as_str()
        && (number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ApiError::invalid(format!(
            "NextInvoiceNumber {number:?} must consist of digits only."
        )));
    }
    Ok(())
}

/// A yes/no field of `CreditorBankInfo` entries that only Billecta's staff set. A client's body
/// never changes it (see [`keep_billecta_owned_fields`]); the admin API does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaffFlag {
    /// `BankgiroApproved` of an outgoing bankgiro: customer service approved it for payments.
    BankgiroApproved,
    /// `Verified` of a payment method: Billecta checked the account behind it.
    Verified,
}

impl StaffFlag {
    /// The list under `CreditorBankInfo` whose entries carry the flag.
    fn list(self) -> &'static str {
        match self {
            StaffFlag::BankgiroApproved => "CreditorOutgoingBankgiroes",
            StaffFlag::Verified => "PaymentMethods",
        }
    }

    /// The flag's name in each entry.
    fn field(self) -> &'static str {
        match self {
            StaffFlag::BankgiroApproved => "BankgiroApproved",
            StaffFlag::Verified => "Verified",
        }
    }

    /// What an entry is, for messages.
    fn entry(self) -> &'static str {
        match self {
            StaffFlag::BankgiroApproved => "outgoing bankgiro",
            StaffFlag::Verified => "payment method",
        }
    }

    /// What identifies an entry, as its kind and its normalised number: a PUT replaces the list, so
    /// entries are matched by this, not by position. A payment method needs its kind (a bankgiro
    /// and a plusgiro may share digits); outgoing bankgiros are all of one kind.
    fn identity(self, entry: &Value) -> (String, String) {
        match self {
            StaffFlag::BankgiroApproved => (String::new(), bankgiro_number(entry)),
            StaffFlag::Verified => payment_method_key(entry),
        }
    }

    /// `number` as staff write it, normalised the way [`identity`](Self::identity) normalises an
    /// entry's number: `123-4567` names the bankgiro `1234567`.
    fn normalize(self, number: &str) -> String {
        match self {
            StaffFlag::BankgiroApproved => digits(number),
            StaffFlag::Verified => normalize_account(number),
        }
    }

    /// The flag of each entry of `view`: the stored value of the entry with the same identity in
    /// `stored_bank_info`; `false` for a new entry.
    fn keep(self, view: &mut Value, stored_bank_info: Option<&Value>) {
        let Some(entries) = view["CreditorBankInfo"][self.list()].as_array_mut() else {
            return;
        };
        for entry in entries {
            let identity = self.identity(entry);
            let kept = stored_bank_info
                .and_then(|info| info[self.list()].as_array())
                .and_then(|old| old.iter().find(|stored| self.identity(stored) == identity))
                .is_some_and(|stored| stored[self.field()] == Value::Bool(true));
            entry[self.field()] = Value::Bool(kept);
        }
    }

    /// Sets the flag on every entry of the creditor `view` whose number is `number`; whether there
    /// was one.
    fn set(self, view: &mut Value, number: &str) -> bool {
        let wanted = self.normalize(number);
        let Some(entries) = view["CreditorBankInfo"][self.list()].as_array_mut() else {
            return false;
        };
        let mut found = false;
        for entry in entries
            .iter_mut()
            .filter(|entry| self.identity(entry).1 == wanted)
        {
            entry[self.field()] = Value::Bool(true);
            found = true;
        }
        found
    }
}

/// `Verified` (payment methods) and `BankgiroApproved` (outgoing bankgiros) are Billecta's to set:
/// whatever the body says, each entry keeps the stored value of the entry with the same number,
/// and a new number starts unverified.
fn keep_billecta_owned_fields(view: &mut Value, stored: Option<&Value>) {
    let stored_bank_info = stored.map(|old| &old["CreditorBankInfo"]);
    StaffFlag::Verified.keep(view, stored_bank_info);
    StaffFlag::BankgiroApproved.keep(view, stored_bank_info);
}

/// An outgoing bankgiro's number, digits only.
fn bankgiro_number(entry: &Value) -> String {
    digits(entry["BankgiroNo"].as_str().unwrap_or_default())
}

/// A payment method's identity: its kind and its account number, normalised.
fn payment_method_key(method: &Value) -> (String, String) {
    let text = |field: &str| method[field].as_str().unwrap_or_default().to_owned();
    let kind = text("PaymentMethod");
    let number = match kind.as_str() {
        "BankGiro" => text("BankgiroNo"),
        "PlusGiro" => text("PlusgiroNo"),
        "BankAccount" => format!("{}{}", text("ClearingNo"), text("AccountNo")),
        "IBAN" => text("IBAN"),
        _ => [
            "BankgiroNo",
            "PlusgiroNo",
            "ClearingNo",
            "AccountNo",
            "IBAN",
        ]
        .iter()
        .map(|field| text(field))
        .collect(),
    };
    (kind, normalize_account(&number))
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Letters and digits only, upper case: `123-4567` and `1234567` are the same bankgiro,
/// `SE45 5000 ...` and `se455000...` the same IBAN.
fn normalize_account(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The top-level scalar field of `CreditorView` named `field`, compared without regard to case.
fn sortable_field(field: &str) -> Option<String> {
    let properties = schema::schema(View::Creditor)
        .get("properties")?
        .as_object()?;
    properties
        .iter()
        .find(|(name, property)| {
            name.eq_ignore_ascii_case(field)
                && property.get("oneOf").is_none()
                && property.get("$ref").is_none()
        })
        .map(|(name, _)| name.clone())
}

fn compare_json(a: &Value, b: &Value) -> Ordering {
    fn rank(value: &Value) -> u8 {
        match value {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Reads a completed `UserView` body.
pub(crate) fn user_view_from(body: &Value) -> Result<UserView, ApiError> {
    let completed = schema::complete(View::User, body);
    serde_json::from_value(completed).map_err(ApiError::invalid)
}

/// Serialises a user list or user for a response.
pub(crate) fn to_value<T: Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|error| ApiError::Internal(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn activated_store(environment: Environment) -> (Store, Uuid) {
        let mut store = Store::new(
            environment,
            Duration::from_secs(3600),
            SignIn::default(),
            ApiUsers::default(),
        );
        let created = store
            .admin_create_account(
                NewAccount {
                    name: "Payway Billecta".into(),
                    company_name: "Acme AB".into(),
                    email: "billing@example.com".into(),
                    password: "first".into(),
                },
                now(),
            )
            .unwrap();
        store
            .admin_activate_account(created.account_id, "secret")
            .unwrap();
        let token = store
            .api_authenticate("billing@example.com", "secret", now())
            .unwrap();
        let caller = store
            .authenticate(token["Value"].as_str().unwrap(), now())
            .unwrap();
        (store, caller)
    }

    #[test]
    fn tokens_look_like_billectas() {
        let token = Token::issue(now(), Duration::from_secs(60));
        assert_eq!(token.value.len(), 88);
        assert!(token.value.ends_with("=="));
        assert_eq!(token.state().fingerprint.len(), 8);
    }

    #[test]
    fn wire_times_are_billecta_date_times() {
        let text = wire_time(now());
        assert!(schema::is_billecta_date_time(&text), "{text}");
        assert!(text.ends_with("+00:00"), "{text}");
    }

    #[test]
    fn an_expired_token_is_refused_and_replaced() {
        let (mut store, caller) = activated_store(Environment::Test);
        let later = now() + Duration::from_secs(7200);
        let old = store.current_token(caller).unwrap();
        assert_eq!(
            store.authenticate(old["Value"].as_str().unwrap(), later),
            Err(ApiError::denied())
        );
        let new = store
            .api_authenticate("BILLING@example.com", "secret", later)
            .unwrap();
        assert_ne!(old["Value"], new["Value"]);
    }

    fn sign_in(store: &mut Store) -> String {
        let token = store
            .api_authenticate("billing@example.com", "secret", now())
            .unwrap();
        token["Value"].as_str().unwrap().to_owned()
    }

    #[test]
    fn sign_in_returns_the_live_token_or_issues_a_new_one_by_mode() {
        let (mut store, caller) = activated_store(Environment::Test);
        let first = sign_in(&mut store);
        assert_eq!(sign_in(&mut store), first);
        assert_eq!(store.authenticate(&first, now()), Ok(caller));

        assert_eq!(
            store.set_sign_in(SignIn::IssuesNewToken),
            SignIn::ReturnsLiveToken
        );
        // The switch alone kills nothing; the next sign-in does.
        assert_eq!(store.authenticate(&first, now()), Ok(caller));
        let second = sign_in(&mut store);
        let third = sign_in(&mut store);
        assert!(first != second && second != third && first != third);
        for dead in [&first, &second] {
            assert_eq!(store.authenticate(dead, now()), Err(ApiError::denied()));
        }
        assert_eq!(store.authenticate(&third, now()), Ok(caller));

        store.set_sign_in(SignIn::ReturnsLiveToken);
        assert_eq!(sign_in(&mut store), third);
    }

    #[test]
    fn only_successful_sign_ins_are_counted() {
        let (mut store, _) = activated_store(Environment::Test);
        // `activated_store` signed in once.
        assert_eq!(store.sign_ins("BILLING@EXAMPLE.COM"), 1);
        assert_eq!(
            store.api_authenticate("billing@example.com", "wrong", now()),
            Err(ApiError::denied())
        );
        assert_eq!(store.sign_ins("billing@example.com"), 1);
        store.set_sign_in(SignIn::IssuesNewToken);
        sign_in(&mut store);
        assert_eq!(store.sign_ins("billing@example.com"), 2);
        assert_eq!(store.sign_ins("nobody@example.com"), 0);
        let state = store.snapshot(FaultsState {
            seed: 0,
            rules: Vec::new(),
        });
        assert_eq!(state.users[0].sign_ins, 2);
        assert_eq!(state.sign_in, SignIn::IssuesNewToken);
    }

    #[test]
    fn a_reset_returns_to_the_start_sign_in_mode() {
        let mut store = Store::new(
            Environment::Test,
            Duration::from_secs(3600),
            SignIn::IssuesNewToken,
            ApiUsers::default(),
        );
        store.set_sign_in(SignIn::ReturnsLiveToken);
        store.reset();
        assert_eq!(store.sign_in(), SignIn::IssuesNewToken);
    }

    /// `POST /v1/users/user` as the administrator `caller`: a user named `username` with
    /// `is_api_user`, enabled, with a password.
    fn create_through_the_api(
        store: &mut Store,
        caller: Uuid,
        username: &str,
        is_api_user: bool,
    ) -> Result<Uuid, ApiError> {
        let view = user_view_from(&json!({
            "Username": username,
            "Password": "api-secret",
            "IsApiUser": is_api_user,
            "IsEnabled": true,
        }))
        .unwrap();
        store.create_user(caller, view, now())
    }

    #[test]
    fn api_users_sign_in_with_their_password_by_default() {
        let (mut store, caller) = activated_store(Environment::Production);
        assert_eq!(store.api_users(), ApiUsers::SignInWithPassword);
        let id = create_through_the_api(&mut store, caller, "api@example.com", true).unwrap();
        let token = store
            .api_authenticate("api@example.com", "api-secret", now())
            .unwrap();
        assert_eq!(
            store.authenticate(token["Value"].as_str().unwrap(), now()),
            Ok(id)
        );
        assert_eq!(store.sign_ins("api@example.com"), 1);
    }

    #[test]
    fn an_api_user_gets_its_token_from_an_administrator_only_when_so_set() {
        let (mut store, caller) = activated_store(Environment::Production);
        assert_eq!(
            store.set_api_users(ApiUsers::TokenFromAdministrator),
            ApiUsers::SignInWithPassword
        );
        let made_by_api =
            create_through_the_api(&mut store, caller, "api@example.com", true).unwrap();
        // Wherever it was made: the portal's API user is refused the same way.
        let account_id = store.user(caller).unwrap().account_id;
        store
            .admin_create_user(
                account_id,
                NewUser {
                    username: "portal-api@example.com".into(),
                    password: Some("api-secret".into()),
                    is_api_user: true,
                    ..NewUser::default()
                },
                now(),
            )
            .unwrap();
        for username in ["api@example.com", "PORTAL-API@example.com"] {
            for password in ["api-secret", "wrong"] {
                assert_eq!(
                    store.api_authenticate(username, password, now()),
                    Err(ApiError::denied()),
                    "{username} with {password}"
                );
            }
            assert_eq!(store.sign_ins(username), 0);
        }
        let minted = store.issue_token(caller, Some(made_by_api), now()).unwrap();
        assert_eq!(
            store.authenticate(minted["Value"].as_str().unwrap(), now()),
            Ok(made_by_api)
        );

        // Users that are not API users still sign in; the switch back lets API users in again.
        create_through_the_api(&mut store, caller, "person@example.com", false).unwrap();
        assert!(
            store
                .api_authenticate("person@example.com", "api-secret", now())
                .is_ok()
        );
        store.set_api_users(ApiUsers::SignInWithPassword);
        assert!(
            store
                .api_authenticate("api@example.com", "api-secret", now())
                .is_ok()
        );
    }

    #[test]
    fn portal_only_refuses_api_users_through_the_users_api_but_not_in_the_portal() {
        let (mut store, caller) = activated_store(Environment::Production);
        store.set_api_users(ApiUsers::PortalOnly);
        assert_eq!(
            create_through_the_api(&mut store, caller, "api@example.com", true),
            Err(ApiError::forbidden())
        );
        assert!(!store.username_taken("api@example.com", None));

        let person =
            create_through_the_api(&mut store, caller, "person@example.com", false).unwrap();
        // An update must not turn a user into an API user either.
        let mut update = store.user(person).unwrap().view();
        update.is_api_user = true;
        assert_eq!(
            store.update_user(caller, update),
            Err(ApiError::forbidden())
        );
        assert!(!store.user(person).unwrap().is_api_user);

        // The portal makes API users in every mode; the users API may update one, as a PUT
        // repeats `IsApiUser: true`.
        let account_id = store.user(caller).unwrap().account_id;
        let portal = store
            .admin_create_user(
                account_id,
                NewUser {
                    username: "api@example.com".into(),
                    password: Some("api-secret".into()),
                    is_api_user: true,
                    ..NewUser::default()
                },
                now(),
            )
            .unwrap();
        let mut renamed = store.user(portal.user_public_id).unwrap().view();
        renamed.full_name = Some("Integration".into());
        store.update_user(caller, renamed).unwrap();
        assert!(
            store
                .api_authenticate("api@example.com", "api-secret", now())
                .is_ok()
        );
        let state = store.snapshot(FaultsState {
            seed: 0,
            rules: Vec::new(),
        });
        assert_eq!(state.api_users, ApiUsers::PortalOnly);
    }

    #[test]
    fn a_reset_returns_to_the_start_api_users_mode() {
        let mut store = Store::new(
            Environment::Production,
            Duration::from_secs(3600),
            SignIn::IssuesNewToken,
            ApiUsers::PortalOnly,
        );
        store.set_api_users(ApiUsers::SignInWithPassword);
        store.set_sign_in(SignIn::ReturnsLiveToken);
        store.reset();
        assert_eq!(store.api_users(), ApiUsers::PortalOnly);
        assert_eq!(store.sign_in(), SignIn::IssuesNewToken);
    }

    #[test]
    fn verified_and_approved_follow_the_number_not_the_body() {
        let stored = json!({"CreditorBankInfo": {
            "PaymentMethods": [{"PaymentMethod": "BankGiro", "BankgiroNo": "123-4567", "Verified": true}],
            "CreditorOutgoingBankgiroes": [{"BankgiroNo": "765-4321", "BankgiroApproved": true}]
        }});
        let mut incoming = json!({"CreditorBankInfo": {
            "PaymentMethods": [
                {"PaymentMethod": "BankGiro", "BankgiroNo": "1234567", "Verified": false},
                {"PaymentMethod": "BankGiro", "BankgiroNo": "999-9999", "Verified": true}
            ],
            "CreditorOutgoingBankgiroes": [
                {"BankgiroNo": "7654321", "BankgiroApproved": false},
                {"BankgiroNo": "111-1111", "BankgiroApproved": true}
            ]
        }});
        keep_billecta_owned_fields(&mut incoming, Some(&stored));
        let flags = |flag: StaffFlag| -> Vec<Value> {
            incoming["CreditorBankInfo"][flag.list()]
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| entry[flag.field()].clone())
                .collect()
        };
        assert_eq!(flags(StaffFlag::Verified), [true, false]);
        assert_eq!(flags(StaffFlag::BankgiroApproved), [true, false]);
    }

    #[test]
    fn creditors_sort_and_page() {
        let (mut store, caller) = activated_store(Environment::Production);
        for name in ["b", "C", "a"] {
            store
                .create_creditor(caller, &json!({"Name": name, "OrgNo": "556000-0000"}))
                .unwrap();
        }
        let names = |query: ListQuery| -> Vec<String> {
            store
                .list_creditors(caller, &query)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|creditor| creditor["Name"].as_str().unwrap().to_owned())
                .collect()
        };
        let ascending = ListQuery {
            ascending: true,
            ..ListQuery::default()
        };
        assert_eq!(names(ascending.clone()), ["b", "C", "a"]);
        let by_name = ListQuery {
            sorting_field: Some("name".into()),
            ..ascending.clone()
        };
        assert_eq!(names(by_name.clone()), ["a", "b", "C"]);
        let descending = ListQuery {
            ascending: false,
            ..by_name.clone()
        };
        assert_eq!(names(descending), ["C", "b", "a"]);
        let page = ListQuery {
            offset: 1,
            limit: Some(1),
            ..by_name
        };
        assert_eq!(names(page), ["b"]);
        let unknown = ListQuery {
            sorting_field: Some("CreditorBankInfo".into()),
            ..ascending
        };
        assert!(matches!(
            store.list_creditors(caller, &unknown),
            Err(ApiError::BadRequest(_))
        ));
    }
}
