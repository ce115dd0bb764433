//! The admin API under `/admin`: what people do in Billecta's portal (create and activate an
//! account, add users) and what Billecta's staff do (approve a bankgiro), plus the simulator's own
//! knobs (faults, settings, reset) and a view of everything it holds. JSON with snake_case fields
//! (the settings excepted), no authentication. Errors are `{"error": "..."}` with 400, 404 or 409.
//! The same operations are available in-process on [`RunningSimulator`](super::RunningSimulator).

use super::faults::FaultRule;
use super::state::{AdminError, NewAccount, NewUser, StaffFlag};
use super::{ApiUsers, Shared, SignIn};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::StatusCode;
use serde::Deserializer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use uuid::Uuid;

/// The body of `PUT /admin/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultsRequest {
    /// Restart the probability generator from this seed; absent means the seed the simulator was
    /// started with. Either way the generator restarts, so a test that sets rules gets the same
    /// outcomes every run.
    #[serde(default)]
    pub seed: Option<u64>,
    pub rules: Vec<FaultRule>,
}

/// The answer of `GET /admin/settings` and `PUT /admin/settings`: how the simulator answers the
/// questions about Billecta it offers more than one answer to, every one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// What `POST /v1/authentication/apiauthenticate` does with a user's live token.
    #[serde(rename = "SignIn")]
    pub sign_in: SignIn,
    /// How API users are made and get their tokens.
    #[serde(rename = "ApiUsers")]
    pub api_users: ApiUsers,
}

/// The body of `PUT /admin/settings`: the settings to change. Each is optional, so a caller that
/// knows only some of them (one written before a setting was added) changes those and leaves the
/// others as they are; at least one must be given, and an unknown field, a null or an unknown
/// value is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsRequest {
    /// The new [`Settings::sign_in`]; absent leaves it.
    #[serde(
        rename = "SignIn",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "given"
    )]
    pub sign_in: Option<SignIn>,
    /// The new [`Settings::api_users`]; absent leaves it.
    #[serde(
        rename = "ApiUsers",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "given"
    )]
    pub api_users: Option<ApiUsers>,
}

impl SettingsRequest {
    fn is_empty(&self) -> bool {
        self.sign_in.is_none() && self.api_users.is_none()
    }
}

/// A setting that is present: absent is `None` (by `default`), but `null` is refused like any
/// other value that is not a mode, rather than read as "leave it".
fn given<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
struct Activation {
    password: String,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/admin/accounts", post(create_account))
        .route("/admin/accounts/{id}/activate", post(activate_account))
        .route("/admin/accounts/{id}/users", post(create_user))
        .route("/admin/users/{id}", delete(delete_user))
        .route("/admin/users/{id}/disable", post(disable_user))
        .route("/admin/users/{id}/password", post(set_password))
        .route("/admin/users/{id}/enable", post(enable_user))
        .route(
            "/admin/creditors/{id}/outgoing-bankgiros/{bankgiro}/approve",
            post(|state, path| set_staff_flag(state, path, StaffFlag::BankgiroApproved)),
        )
        .route(
            "/admin/creditors/{id}/payment-methods/{number}/verify",
            post(|state, path| set_staff_flag(state, path, StaffFlag::Verified)),
        )
        .route("/admin/state", get(state))
        .route(
            "/admin/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
        .route("/admin/settings", get(get_settings).put(put_settings))
        .route("/admin/reset", post(reset))
        .route_layer(middleware::from_fn(admin_layer))
        .with_state(shared)
}

async fn admin_layer(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::debug!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "admin request"
    );
    response
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(bytes)
        .map_err(|error| AdminError::Invalid(format!("the body does not parse: {error}")))
}

fn id(text: &str) -> Result<Uuid, AdminError> {
    Uuid::parse_str(text).map_err(|_| AdminError::Invalid(format!("{text:?} is not a GUID")))
}

fn done(result: Result<(), AdminError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

/// 201 with what was made.
fn created<T: Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(made) => (StatusCode::CREATED, Json(made)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn create_account(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    created(body::<NewAccount>(&bytes).and_then(|account| {
        shared
            .store()
            .admin_create_account(account, OffsetDateTime::now_utc())
    }))
}

async fn activate_account(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    bytes: Bytes,
) -> Response {
    done(id(&account).and_then(|account_id| {
        let activation: Activation = body(&bytes)?;
        shared
            .store()
            .admin_activate_account(account_id, &activation.password)
    }))
}

async fn create_user(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    bytes: Bytes,
) -> Response {
    created(id(&account).and_then(|account_id| {
        let user: NewUser = body(&bytes)?;
        shared
            .store()
            .admin_create_user(account_id, user, OffsetDateTime::now_utc())
    }))
}

async fn delete_user(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    done(id(&user).and_then(|user_id| shared.store().admin_delete_user(user_id)))
}

async fn disable_user(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    done(id(&user).and_then(|user_id| shared.store().admin_set_user_enabled(user_id, false)))
}

/// `POST /admin/users/{id}/password` with `{"password": "..."}`.
async fn set_password(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
    bytes: Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewPassword {
        password: String,
    }
    done(id(&user).and_then(|user_id| {
        let new: NewPassword = body(&bytes)?;
        shared.store().admin_set_password(user_id, &new.password)
    }))
}

async fn enable_user(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    done(id(&user).and_then(|user_id| shared.store().admin_set_user_enabled(user_id, true)))
}

/// `POST /admin/creditors/{id}/outgoing-bankgiros/{bankgiro}/approve` and
/// `POST /admin/creditors/{id}/payment-methods/{number}/verify`: the two differ only in the flag
/// Billecta's staff set on the entries with that number.
async fn set_staff_flag(
    State(shared): State<Arc<Shared>>,
    Path((creditor, number)): Path<(String, String)>,
    flag: StaffFlag,
) -> Response {
    done(id(&creditor).and_then(|creditor_id| {
        shared
            .store()
            .admin_set_staff_flag(creditor_id, flag, &number)
    }))
}

async fn state(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.state()).into_response()
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.faults().state()).into_response()
}

async fn put_faults(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    let result = body::<FaultsRequest>(&bytes).and_then(|request| {
        shared
            .set_faults(request.seed, request.rules)
            .map_err(|error| AdminError::Invalid(error.to_string()))
    });
    match result {
        Ok(()) => Json(shared.faults().state()).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

fn settings(shared: &Shared) -> Settings {
    // One guard for both: the store's lock is not reentrant, and both read at the same moment.
    let store = shared.store();
    Settings {
        sign_in: store.sign_in(),
        api_users: store.api_users(),
    }
}

async fn get_settings(State(shared): State<Arc<Shared>>) -> Response {
    Json(settings(&shared)).into_response()
}

/// 200 with every setting now in force, after changing those the body gives.
async fn put_settings(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Response {
    let request = body::<SettingsRequest>(&bytes).and_then(|request| {
        if request.is_empty() {
            // Most likely a caller that meant to change something: say so rather than answer 200.
            return Err(AdminError::Invalid(
                "the body gives no setting: expected SignIn, ApiUsers or both".to_owned(),
            ));
        }
        Ok(request)
    });
    match request {
        Ok(request) => {
            if let Some(sign_in) = request.sign_in {
                shared.set_sign_in(sign_in);
            }
            if let Some(api_users) = request.api_users {
                shared.set_api_users(api_users);
            }
            Json(settings(&shared)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.store().reset();
    tracing::info!("state reset");
    StatusCode::NO_CONTENT.into_response()
}
