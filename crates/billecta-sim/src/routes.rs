//! The public API: Billecta's REST endpoints, as far as onboarding needs them.
//!
//! Every request goes through [`public_layer`] first: it counts the request under its route
//! template, applies the fault rules, and logs one line (method, route, status, latency; never
//! headers or bodies). Then the handler authenticates (before it reads the body, as Web API's
//! authorization filter does), parses and validates the body against its view's schema, and calls
//! one method of the store under the lock. Every response body is validated against its view
//! before it leaves; a simulator that breaks its own contract answers 500 so tests notice.

use super::Shared;
use super::faults::{Fault, FaultBody};
use super::schema::{self, View};
use super::server::ConnectionHandle;
use super::state::{self, ApiError, ListQuery, Store};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use uuid::Uuid;

/// Every public route template, as fault rules and request counts name them.
pub const PUBLIC_ROUTES: &[&str] = &[
    "POST /v1/authentication/apiauthenticate",
    "DELETE /v1/authentication/apiauthenticate",
    "GET /v1/authentication/securetoken",
    "POST /v1/authentication/securetoken",
    "POST /v1/authentication/securetoken/{id}",
    "GET /v1/creditors/creditors",
    "GET /v1/creditors/creditorsubs",
    "POST /v1/creditors/creditor",
    "PUT /v1/creditors/creditor",
    "GET /v1/creditors/creditor/{id}",
    "DELETE /v1/creditors/creditor/{id}",
    "GET /v1/users/users",
    "POST /v1/users/user",
    "PUT /v1/users/user",
    "GET /v1/users/user/{id}",
    "DELETE /v1/users/user/{id}",
    "PUT /v1/users/changepassword",
];

const JSON_UTF8: &str = "application/json; charset=utf-8";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/v1/authentication/apiauthenticate",
            post(api_authenticate).delete(revoke_token),
        )
        .route(
            "/v1/authentication/securetoken",
            get(current_token).post(new_own_token),
        )
        .route("/v1/authentication/securetoken/{id}", post(new_token_for))
        .route("/v1/creditors/creditors", get(list_creditors))
        .route("/v1/creditors/creditorsubs", get(creditor_subs))
        .route(
            "/v1/creditors/creditor",
            post(create_creditor).put(update_creditor),
        )
        .route(
            "/v1/creditors/creditor/{id}",
            get(get_creditor).delete(delete_creditor),
        )
        .route("/v1/users/users", get(list_users))
        .route("/v1/users/user", post(create_user).put(update_user))
        .route("/v1/users/user/{id}", get(get_user).delete(delete_user))
        .route("/v1/users/changepassword", put(change_password))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            public_layer,
        ))
        .with_state(shared)
}

// ---- the layer: counting, faults, logging -----------------------------------------------------

async fn public_layer(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let template = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let route = format!("{method} {template}");
    let decision = shared.faults().decide(&route);
    shared.store().count(&route, decision.answer.is_some());
    // Like the web server Billecta runs on, a request that started is finished even when the client
    // hangs up (a create whose client timed out still creates), so the work runs in a task of its
    // own that the connection's end does not cancel.
    let worker = Arc::clone(&shared);
    let work = tokio::spawn(async move {
        if !decision.latency.is_zero() {
            // Added latency shapes every call it is configured for (a line each would be most of
            // the log); the faults that fail a call are warnings.
            tracing::debug!(route = %route, latency_ms = millis(decision.latency), "fault injected: latency");
            tokio::select! {
                () = tokio::time::sleep(decision.latency) => {}
                () = worker.shutdown.cancelled() => {}
            }
        }
        match decision.answer {
            Some(fault) => inject(&worker, &route, fault, request, next).await,
            None => next.run(request).await,
        }
    });
    let response = match work.await {
        Ok(response) => response,
        Err(failure) => {
            tracing::error!(error = %failure, "simulator request task failed");
            http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    };
    tracing::info!(
        method = %method,
        route = %template,
        status = response.status().as_u16(),
        latency_ms = millis(started.elapsed()),
        "request"
    );
    response
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn inject(
    shared: &Shared,
    route: &str,
    fault: Fault,
    request: Request,
    next: Next,
) -> Response {
    let connection = request.extensions().get::<ConnectionHandle>().cloned();
    match fault {
        Fault::Latency { .. } => next.run(request).await,
        Fault::Status { status, body } => {
            tracing::warn!(route = %route, status, "fault injected: status");
            fault_status(status, body)
        }
        Fault::RateLimited {
            retry_after_seconds,
        } => {
            tracing::warn!(route = %route, retry_after_seconds, "fault injected: rate limited");
            let mut response = empty(StatusCode::TOO_MANY_REQUESTS);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            response
        }
        Fault::Hang => {
            tracing::warn!(route = %route, "fault injected: hang");
            shared.shutdown.cancelled().await;
            abort(connection).await
        }
        Fault::Reset => {
            tracing::warn!(route = %route, "fault injected: reset");
            abort(connection).await
        }
    }
}

/// Aborts the connection and never answers.
async fn abort(handle: Option<ConnectionHandle>) -> Response {
    let Some(connection) = handle else {
        tracing::error!(
            "no connection handle: the request did not come through the simulator's server"
        );
        return ApiError::Internal("the connection cannot be reset".to_owned()).into_response();
    };
    connection.reset();
    std::future::pending().await
}

fn fault_status(status: u16, body: FaultBody) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let reason = code.canonical_reason().unwrap_or("Server Error");
    let (content_type, text) = match body {
        FaultBody::Json => (
            JSON_UTF8,
            json!({"Message": "An error has occurred.", "ExternalErrorCode": null, "RequestContent": null})
                .to_string(),
        ),
        FaultBody::Html => (
            "text/html",
            format!(
                "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\r\n\
                 <html xmlns=\"http://www.w3.org/1999/xhtml\">\r\n<head>\r\n\
                 <meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"/>\r\n\
                 <title>{status} - {reason}</title>\r\n</head>\r\n<body>\r\n\
                 <div id=\"header\"><h1>Server Error</h1></div>\r\n\
                 <div id=\"content\">\r\n <div class=\"content-container\"><fieldset>\r\n\
                 <h2>HTTP Error {status}. {reason}.</h2>\r\n\
                 <h3>The server cannot handle the request right now.</h3>\r\n\
                 </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
            ),
        ),
    };
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

// ---- responses ---------------------------------------------------------------------------------

/// Billecta's error shape; 404 has an empty body.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => return empty(StatusCode::NOT_FOUND),
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({
            "Message": self.to_string(),
            "ExternalErrorCode": null,
            "RequestContent": null,
        });
        json_bytes(status, &body)
    }
}

fn json_bytes(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    response
}

/// A status with an empty body and `Content-Length: 0`.
fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(0));
    response
}

/// 200 with `body`, once it is checked against `view`.
fn respond(view: View, result: Result<Value, ApiError>) -> Response {
    let body = match result {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    if let Err(violations) = schema::validate(view, &body) {
        tracing::error!(view = %view, paths = ?violations.paths(), "simulator produced an invalid response");
        return ApiError::Internal(format!(
            "simulator produced an invalid response: {violations}"
        ))
        .into_response();
    }
    json_bytes(StatusCode::OK, &body)
}

/// `CreatedView`: the id Billecta made.
fn created(id: Uuid) -> Value {
    json!({"PublicId": id.to_string()})
}

/// 200 with an empty body.
fn respond_empty(result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => empty(StatusCode::OK),
        Err(error) => error.into_response(),
    }
}

// ---- requests ----------------------------------------------------------------------------------

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// `Authorization: <scheme> <credentials>`, the scheme compared without regard to case.
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Result<&'a str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(ApiError::denied)?;
    let (given, rest) = header.trim().split_once(' ').ok_or_else(ApiError::denied)?;
    if !given.eq_ignore_ascii_case(scheme) {
        return Err(ApiError::denied());
    }
    Ok(rest.trim())
}

fn decode(credentials: &str) -> Result<String, ApiError> {
    let bytes = BASE64.decode(credentials).map_err(|_| ApiError::denied())?;
    String::from_utf8(bytes).map_err(|_| ApiError::denied())
}

/// `Authorization: SecureToken base64(Value)`.
fn secure_token(headers: &HeaderMap) -> Result<String, ApiError> {
    decode(credentials(headers, "SecureToken")?)
}

/// Authenticates the caller by its SecureToken, then runs `action` for it on the store, under one
/// lock so the token cannot die in between. Every public handler but `apiauthenticate` goes through
/// here. Authentication comes first, before the path, the query or the body is parsed, as Web API's
/// authorization filter runs before model binding: an anonymous request with a bad body is a 401,
/// not a 400.
fn as_caller<T>(
    shared: &Shared,
    headers: &HeaderMap,
    action: impl FnOnce(&mut Store, Uuid) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let token = secure_token(headers)?;
    let mut store = shared.store();
    let caller = store.authenticate(&token, now())?;
    action(&mut store, caller)
}

/// `Authorization: Basic base64(username:password)`.
fn basic(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let pair = decode(credentials(headers, "Basic")?)?;
    let (username, password) = pair.split_once(':').ok_or_else(ApiError::denied)?;
    Ok((username.to_owned(), password.to_owned()))
}

/// The body as `view`: present, JSON by content type, JSON in fact, and valid against the schema.
fn json_body(view: View, headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(format!(
            "The request body is empty; a {view} was expected."
        )));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media_type != "application/json" && media_type != "text/json" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "The request entity's media type '{media_type}' is not supported for this resource."
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("The body is not valid JSON: {error}.")))?;
    if let Err(violations) = schema::validate(view, &value) {
        tracing::info!(view = %view, paths = ?violations.paths(), "request body refused");
        return Err(ApiError::invalid(violations));
    }
    Ok(value)
}

/// A `UserView` body, completed with .NET defaults.
fn user_body(headers: &HeaderMap, body: &Bytes) -> Result<state::UserView, ApiError> {
    state::user_view_from(&json_body(View::User, headers, body)?)
}

fn guid(text: &str) -> Result<Uuid, ApiError> {
    if !schema::is_guid(text) {
        return Err(ApiError::invalid(format!("{text:?} is not a valid GUID.")));
    }
    Uuid::parse_str(text).map_err(|_| ApiError::invalid(format!("{text:?} is not a valid GUID.")))
}

fn list_query(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<ListQuery, ApiError> {
    let Query(pairs) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let mut parsed = ListQuery {
        ascending: true,
        ..ListQuery::default()
    };
    for (name, value) in pairs {
        let number = || {
            value.trim().parse::<usize>().map_err(|_| {
                ApiError::invalid(format!(
                    "{name} {value:?} is not a whole number of 0 or more."
                ))
            })
        };
        match name.to_ascii_lowercase().as_str() {
            "offset" => parsed.offset = number()?,
            "limit" => parsed.limit = Some(number()?),
            "sortingfield" if !value.trim().is_empty() => {
                parsed.sorting_field = Some(value.trim().to_owned());
            }
            "asc" => {
                parsed.ascending = match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "asc {value:?} is neither true nor false."
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(parsed)
}

// ---- authentication ----------------------------------------------------------------------------

async fn api_authenticate(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = basic(&headers).and_then(|(username, password)| {
        shared.store().api_authenticate(&username, &password, now())
    });
    respond(View::SecureToken, result)
}

async fn revoke_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    respond_empty(as_caller(&shared, &headers, |store, caller| {
        store.revoke_token(caller)
    }))
}

async fn current_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.current_token(caller)
    });
    respond(View::SecureToken, result)
}

async fn new_own_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.issue_token(caller, None, now())
    });
    respond(View::SecureToken, result)
}

async fn new_token_for(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.issue_token(caller, Some(guid(&id)?), now())
    });
    respond(View::SecureToken, result)
}

// ---- creditors ---------------------------------------------------------------------------------

async fn list_creditors(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.list_creditors(caller, &list_query(query)?)
    });
    respond(View::Creditors, result)
}

async fn creditor_subs(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.creditor_subs(caller)
    });
    respond(View::CreditorSubs, result)
}

async fn get_creditor(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.get_creditor(caller, guid(&id)?)
    });
    respond(View::Creditor, result)
}

async fn create_creditor(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        let view = json_body(View::Creditor, &headers, &body)?;
        store.create_creditor(caller, &view)
    });
    respond(View::Created, result.map(created))
}

async fn update_creditor(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond_empty(as_caller(&shared, &headers, |store, caller| {
        store.update_creditor(caller, &json_body(View::Creditor, &headers, &body)?)
    }))
}

async fn delete_creditor(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    respond_empty(as_caller(&shared, &headers, |store, caller| {
        store.delete_creditor(caller, guid(&id)?)
    }))
}

// ---- users -------------------------------------------------------------------------------------

async fn list_users(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        state::to_value(&store.list_users(caller)?)
    });
    respond(View::Users, result)
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        state::to_value(&store.get_user(caller, guid(&id)?)?)
    });
    respond(View::User, result)
}

async fn create_user(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = as_caller(&shared, &headers, |store, caller| {
        store.create_user(caller, user_body(&headers, &body)?, now())
    });
    respond(View::Created, result.map(created))
}

async fn update_user(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond_empty(as_caller(&shared, &headers, |store, caller| {
        store.update_user(caller, user_body(&headers, &body)?)
    }))
}

async fn delete_user(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    respond_empty(as_caller(&shared, &headers, |store, caller| {
        store.delete_user(caller, guid(&id)?)
    }))
}

async fn change_password(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond_empty(as_caller(&shared, &headers, |store, caller| {
        let view = json_body(View::Password, &headers, &body)?;
        store.change_password(caller, view["Password"].as_str())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn body_of(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn an_invalid_response_becomes_a_500_naming_the_violation() {
        let response = respond(View::Created, Ok(json!({"PublicId": 5})));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        let message = body["Message"].as_str().unwrap();
        assert!(
            message.starts_with("simulator produced an invalid response: $.PublicId:"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_valid_response_is_sent_as_json() {
        let response = respond(View::Created, Ok(json!({"PublicId": "x"})));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], JSON_UTF8);
        assert_eq!(body_of(response).await, json!({"PublicId": "x"}));
    }

    #[test]
    fn credentials_need_the_right_scheme_and_base64() {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("securetoken {}", BASE64.encode("abc=="))).unwrap(),
        );
        assert_eq!(secure_token(&headers), Ok("abc==".to_owned()));
        assert!(basic(&headers).is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("SecureToken abc=="));
        assert!(secure_token(&headers).is_err());
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", BASE64.encode("user:pa:ss"))).unwrap(),
        );
        assert_eq!(basic(&headers), Ok(("user".to_owned(), "pa:ss".to_owned())));
    }

    #[test]
    fn list_queries_are_read_without_regard_to_case() {
        let pairs = vec![
            ("Offset".to_owned(), "2".to_owned()),
            ("LIMIT".to_owned(), "5".to_owned()),
            ("SortingField".to_owned(), "Name".to_owned()),
            ("asc".to_owned(), "False".to_owned()),
        ];
        assert_eq!(
            list_query(Ok(Query(pairs))),
            Ok(ListQuery {
                offset: 2,
                limit: Some(5),
                sorting_field: Some("Name".to_owned()),
                ascending: false,
            })
        );
        let negative = vec![("offset".to_owned(), "-1".to_owned())];
        assert!(matches!(
            list_query(Ok(Query(negative))),
            Err(ApiError::BadRequest(message)) if message.contains("offset")
        ));
    }
}
