//! The Billecta simulator over real HTTP: account lifecycle and tokens, both sign-in modes, every
//! API users mode, creditors, users and rights, refused bodies, every fault kind, request counts and shutdown.
//! Every response body these tests receive from the public API is checked against Billecta's
//! schemas.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use billecta_sim::schema::{self, View};
use billecta_sim::{
    self as simulator, AdminError, ApiUsers, Environment, Fault, FaultBody, FaultRule, NewAccount,
    NewUser, PUBLIC_ROUTES, RunningSimulator, Settings, SignIn, SimulatorConfig, SimulatorState,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Once;
use std::time::{Duration, Instant};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";
const DENIED: &str = "Authorization has been denied for this request.";

fn http_client(timeout: Duration) -> reqwest::Client {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // reqwest needs a TLS provider to build a client even for plain HTTP.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("building the HTTP client")
}

async fn start(environment: Environment) -> RunningSimulator {
    simulator::start(SimulatorConfig::new(environment))
        .await
        .expect("starting the simulator")
}

/// One answer, with the body read.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.text))
    }

    /// 200 with a body that `view`'s schema accepts.
    fn view(&self, view: View) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        let body = self.json();
        if let Err(violations) = schema::validate(view, &body) {
            panic!("the simulator answered an invalid {view}: {violations}");
        }
        body
    }

    /// An error in Billecta's shape; returns the message.
    fn message(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["ExternalErrorCode"], Value::Null);
        assert_eq!(body["RequestContent"], Value::Null);
        body["Message"]
            .as_str()
            .unwrap_or_else(|| panic!("no Message: {body}"))
            .to_owned()
    }

    /// 401 with the one message Web API answers for every refused credential.
    fn denied(&self) {
        assert_eq!(self.message(StatusCode::UNAUTHORIZED), DENIED);
    }

    /// An admin API error (`{"error": ...}`); returns the message.
    fn admin_error(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {body}"))
            .to_owned()
    }

    /// 204, what the admin API answers when it has done what it was asked.
    fn no_content(&self) {
        assert_eq!(self.status, StatusCode::NO_CONTENT, "{}", self.text);
    }

    /// 200 with an empty body and `Content-Length: 0`.
    fn empty_ok(&self) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        assert_eq!(self.text, "");
        assert_eq!(
            self.headers
                .get(reqwest::header::CONTENT_LENGTH)
                .map(|value| value.to_str().unwrap()),
            Some("0")
        );
    }
}

/// A Billecta API client over one simulator, with an optional credential.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
    authorization: Option<String>,
}

impl Api {
    fn new(simulator: &RunningSimulator) -> Self {
        Self {
            base: simulator.base_url(),
            http: http_client(Duration::from_secs(5)),
            authorization: None,
        }
    }

    fn basic(&self, username: &str, password: &str) -> Self {
        let encoded = BASE64.encode(format!("{username}:{password}"));
        Self {
            authorization: Some(format!("Basic {encoded}")),
            ..self.clone()
        }
    }

    fn token(&self, value: &str) -> Self {
        Self {
            authorization: Some(format!("SecureToken {}", BASE64.encode(value))),
            ..self.clone()
        }
    }

    fn anonymous(&self) -> Self {
        Self {
            authorization: None,
            ..self.clone()
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.try_send(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("{path}: {error:?}"))
    }

    async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, reqwest::Error> {
        let request = self.request(method, path);
        let with_body = match body {
            Some(body) => request.json(body),
            None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
        };
        Self::read(with_body).await
    }

    /// POST `body` as it is, with `content_type`: for bodies that `send` would not write.
    async fn post_raw(&self, path: &str, content_type: &str, body: String) -> Reply {
        let request = self
            .request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Self::read(request)
            .await
            .unwrap_or_else(|error| panic!("{path}: {error:?}"))
    }

    /// `method path`, asking for JSON, with the credential if there is one.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.authorization {
            Some(authorization) => request.header(reqwest::header::AUTHORIZATION, authorization),
            None => request,
        }
    }

    async fn read(request: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await?;
        Ok(Reply {
            status,
            headers,
            text,
        })
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Option<&Value>) -> Reply {
        self.send(Method::POST, path, body).await
    }

    async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// `POST /v1/authentication/apiauthenticate` with these credentials.
    async fn api_authenticate(&self, username: &str, password: &str) -> Reply {
        self.basic(username, password)
            .post("/v1/authentication/apiauthenticate", None)
            .await
    }

    /// [`api_authenticate`](Self::api_authenticate), which must succeed; the token's value.
    async fn authenticate(&self, username: &str, password: &str) -> String {
        let token = self
            .api_authenticate(username, password)
            .await
            .view(View::SecureToken);
        token["Value"].as_str().expect("a token value").to_owned()
    }

    async fn create_creditor(&self, body: &Value) -> Uuid {
        let created = self
            .post("/v1/creditors/creditor", Some(body))
            .await
            .view(View::Created);
        Uuid::parse_str(created["PublicId"].as_str().unwrap()).expect("a GUID PublicId")
    }

    async fn creditor(&self, id: Uuid) -> Value {
        self.get(&format!("/v1/creditors/creditor/{id}"))
            .await
            .view(View::Creditor)
    }
}

/// An activated account in `simulator`; the API authenticated as its user.
async fn account(simulator: &RunningSimulator, email: &str) -> (Api, Uuid, Uuid) {
    let created = simulator
        .create_activated_account(email, PASSWORD)
        .expect("creating the account");
    let api = Api::new(simulator);
    let token = api.authenticate(email, PASSWORD).await;
    (
        api.token(&token),
        created.account_id,
        created.user_public_id,
    )
}

/// A test-environment simulator with an activated account, under the fault rules `rules` (set
/// after the account authenticated, so they fault only what the test sends); the API as the owner.
async fn faulty(rules: Vec<FaultRule>) -> (RunningSimulator, Api) {
    let simulator = start(Environment::Test).await;
    let (api, _, _) = account(&simulator, "owner@tidningen.se").await;
    simulator
        .set_faults(None, rules)
        .expect("setting the fault rules");
    (simulator, api)
}

/// A creditor with every part the onboarding sets: address, contacts, invoice address, two
/// payment methods, an outgoing bankgiro and the next invoice number. The client claims Billecta's
/// fields (Verified, BankgiroApproved) and an id of its own; both must be ignored.
fn full_creditor() -> Value {
    let bank_info = json!({
        "UsesClientFund": false,
        "PaymentMethod": "BankGiro",
        "BankgiroNo": "5050-1055",
        "PlusgiroNo": null,
        "AccountNo": null,
        "ClearingNo": null,
        "EInvoiceFUI": null,
        "EInvoiceCUI": null,
        "ForeignAccounts": [],
        "PaymentMethods": [
                {"Priority": "Primary", "PaymentMethod": "BankGiro", "BankgiroNo": "5050-1055",
                 "PlusgiroNo": null, "ClearingNo": null, "AccountNo": null, "IBAN": null, "BIC": null,
                 "Verified": true},
                {"Priority": "Alternative", "PaymentMethod": "IBAN", "IBAN": "SE4550000000058398257466",
                 "BIC": "ESSESESS", "Verified": true}
            ],
        "CreditorOutgoingBankgiroes": [
                {"BankgiroNo": "5402-9681", "IsActive": true, "BankgiroApproved": true,
                 "Description": "Utbetalningar", "BookkeepingPaymentMeanCode": "BG"}
            ]
    });
    json!({
        "CreditorPublicId": "11111111-2222-3333-4444-555555555555",
        "OrgNo": "556888-5645",
        "Name": "Tidningen i Norr AB",
        "Attention": "Ekonomi",
        "CareOf": null,
        "Address": "Storgatan 1",
        "Address2": null,
        "ZipCode": "901 10",
        "City": "Umeå",
        "CountryCode": "SE",
        "Phone": "+46901234567",
        "VatNumber": "SE556888564501",
        "Residence": "Umeå",
        "ApprovedCompanyTax": true,
        "GiveAllUsersFullRightsOnCreditor": false,
        "GLN": null,
        "CreditorContact": {"FirstName": "Anna", "LastName": "Svensson", "Email": "anna@tidningen.se", "Phone": null},
        "CreditorClaimsContact": null,
        "CreditorSignatoryContact": null,
        "CreditorInvoiceAddress": {
            "Address": "Box 1", "Address2": null, "ZipCode": "901 10", "City": "Umeå",
            "CountryCode": "SE", "Email": "faktura@tidningen.se", "DeliveryMethod": "Email"
        },
        "IsEnabled": true,
        "NextInvoiceNumber": "1023",
        "LogoURL": null,
        "UseCentRounding": false,
        "UsesClientFundForInvoicing": false,
        "CreditorBankInfo": bank_info,
    })
}

/// `field` of every entry of the list `list` in `bank_info`.
fn each(bank_info: &Value, list: &str, field: &str) -> Vec<Value> {
    bank_info[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list}: {bank_info}"))
        .iter()
        .map(|entry| entry[field].clone())
        .collect()
}

fn minimal_creditor(name: &str, org_no: &str) -> Value {
    json!({"Name": name, "OrgNo": org_no, "IsEnabled": true, "UseCentRounding": false, "UsesClientFundForInvoicing": false})
}

#[tokio::test]
async fn account_lifecycle_and_secure_tokens() {
    let simulator = start(Environment::Test).await;
    // The admin API needs no credential: an anonymous client serves both.
    let api = Api::new(&simulator);
    let email = "billing@tidningen.se";

    // The person creates the account in the portal (admin API over HTTP).
    let created = api
        .post(
            "/admin/accounts",
            Some(&json!({"name": "Payway Billecta", "company_name": "Tidningen i Norr AB", "email": email, "password": "initial"})),
        )
        .await
        .json();
    assert_eq!(created["username"], email);
    let account_id = created["account_id"].as_str().unwrap().to_owned();

    // Not activated yet: the right password is still refused, saying why.
    let refused = api.api_authenticate(email, "initial").await;
    assert!(
        refused
            .message(StatusCode::UNAUTHORIZED)
            .contains("not been activated")
    );

    api.post(
        &format!("/admin/accounts/{account_id}/activate"),
        Some(&json!({"password": PASSWORD})),
    )
    .await
    .no_content();

    // The old password no longer works; a wrong one neither.
    for password in ["initial", "wrong"] {
        api.api_authenticate(email, password).await.denied();
    }

    let first = api
        .api_authenticate(email, PASSWORD)
        .await
        .view(View::SecureToken);
    let value = first["Value"].as_str().unwrap().to_owned();
    assert_eq!(value.len(), 88);
    assert!(value.ends_with("=="));
    let expires = time::OffsetDateTime::parse(
        first["Expires"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires > time::OffsetDateTime::now_utc() + Duration::from_secs(364 * 24 * 3600));

    // By default apiauthenticate does not rotate: the same token again.
    assert_eq!(api.authenticate(email, PASSWORD).await, value);
    let current = api
        .token(&value)
        .get("/v1/authentication/securetoken")
        .await
        .view(View::SecureToken);
    assert_eq!(current["Value"], value.as_str());

    // The token itself, not base64-encoded once more, is refused; so is Basic on other endpoints.
    let raw = Api {
        authorization: Some(format!("SecureToken {value}")),
        ..api.clone()
    };
    raw.get("/v1/creditors/creditors").await.denied();
    api.basic(email, PASSWORD)
        .get("/v1/creditors/creditors")
        .await
        .denied();

    // POST securetoken rotates: the old token dies at once.
    let rotated_view = api
        .token(&value)
        .post("/v1/authentication/securetoken", None)
        .await
        .view(View::SecureToken);
    let rotated = rotated_view["Value"].as_str().unwrap().to_owned();
    assert_ne!(rotated, value);
    api.token(&value)
        .get("/v1/creditors/creditors")
        .await
        .denied();
    assert_eq!(
        api.token(&rotated)
            .get("/v1/creditors/creditors")
            .await
            .view(View::Creditors),
        json!([])
    );
    assert_eq!(api.authenticate(email, PASSWORD).await, rotated);

    // DELETE apiauthenticate revokes; the next apiauthenticate issues a new token.
    api.token(&rotated)
        .delete("/v1/authentication/apiauthenticate")
        .await
        .empty_ok();
    api.token(&rotated)
        .get("/v1/authentication/securetoken")
        .await
        .denied();
    let fresh = api.authenticate(email, PASSWORD).await;
    assert_ne!(fresh, rotated);

    let state = simulator.state();
    let user = &state.users[0];
    assert!(user.last_login.is_some() && user.has_accepted_agreements);
    assert_eq!(user.token.as_ref().unwrap().fingerprint.len(), 8);
    let state_text = serde_json::to_string(&state).unwrap();
    assert!(!state_text.contains(&fresh) && !state_text.contains(PASSWORD));
    simulator.shutdown().await;
}

const SIGN_IN: &str = "POST /v1/authentication/apiauthenticate";

async fn start_signing_in(sign_in: SignIn) -> RunningSimulator {
    simulator::start(SimulatorConfig {
        sign_in,
        ..SimulatorConfig::new(Environment::Test)
    })
    .await
    .expect("starting the simulator")
}

/// Whether `token` still works, on an authenticated route that every user may call.
async fn works(api: &Api, token: &str) -> bool {
    let reply = api.token(token).get("/v1/creditors/creditors").await;
    if reply.status == StatusCode::OK {
        reply.view(View::Creditors);
        true
    } else {
        reply.denied();
        false
    }
}

/// The settings as `GET /admin/settings` answers them.
async fn settings(admin: &Api) -> Settings {
    let reply = admin.get("/admin/settings").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    serde_json::from_value(reply.json()).expect("settings")
}

#[tokio::test]
async fn by_default_sign_in_returns_the_live_token() {
    let simulator = start(Environment::Test).await;
    assert_eq!(simulator.sign_in(), SignIn::ReturnsLiveToken);
    let email = "owner@tidningen.se";
    simulator.create_activated_account(email, PASSWORD).unwrap();
    let api = Api::new(&simulator);

    let first = api.authenticate(email, PASSWORD).await;
    let second = api.authenticate(email, PASSWORD).await;
    assert_eq!(first, second);
    assert!(works(&api, &first).await && works(&api, &second).await);

    assert_eq!(simulator.sign_ins(email), 2);
    let state = simulator.state();
    assert_eq!(state.sign_in, SignIn::ReturnsLiveToken);
    assert_eq!(state.users[0].sign_ins, 2);
    simulator.shutdown().await;
}

#[tokio::test]
async fn issuing_a_new_token_at_sign_in_kills_the_one_before_at_once() {
    let simulator = start_signing_in(SignIn::IssuesNewToken).await;
    assert_eq!(simulator.sign_in(), SignIn::IssuesNewToken);
    let email = "owner@tidningen.se";
    simulator.create_activated_account(email, PASSWORD).unwrap();
    let api = Api::new(&simulator);

    let first = api.authenticate(email, PASSWORD).await;
    assert!(works(&api, &first).await);
    let fingerprint = |simulator: &RunningSimulator| {
        simulator.state().users[0]
            .token
            .as_ref()
            .expect("a token")
            .fingerprint
            .clone()
    };
    let first_fingerprint = fingerprint(&simulator);

    let second = api.authenticate(email, PASSWORD).await;
    assert_ne!(first, second);
    assert!(!works(&api, &first).await, "the first token still works");
    assert!(works(&api, &second).await);
    assert_ne!(fingerprint(&simulator), first_fingerprint);

    assert_eq!(simulator.sign_ins(email), 2);
    let state = simulator.state();
    assert_eq!(state.sign_in, SignIn::IssuesNewToken);
    assert_eq!(state.users[0].sign_ins, 2);
    simulator.shutdown().await;
}

#[tokio::test]
async fn the_sign_in_mode_changes_at_run_time_from_the_next_sign_in() {
    let simulator = start(Environment::Test).await;
    let email = "owner@tidningen.se";
    simulator.create_activated_account(email, PASSWORD).unwrap();
    let api = Api::new(&simulator);
    let admin = api.anonymous();
    let shown = admin.get("/admin/settings").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(
        shown.json(),
        json!({"SignIn": "RETURNS_LIVE_TOKEN", "ApiUsers": "SIGN_IN_WITH_PASSWORD"})
    );
    let first = api.authenticate(email, PASSWORD).await;

    // Through the admin API.
    let set = admin
        .put("/admin/settings", &json!({"SignIn": "ISSUES_NEW_TOKEN"}))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert_eq!(
        set.json(),
        json!({"SignIn": "ISSUES_NEW_TOKEN", "ApiUsers": "SIGN_IN_WITH_PASSWORD"})
    );
    assert_eq!(simulator.sign_in(), SignIn::IssuesNewToken);
    assert_eq!(simulator.api_users(), ApiUsers::SignInWithPassword);
    let state: SimulatorState =
        serde_json::from_value(admin.get("/admin/state").await.json()).unwrap();
    assert_eq!(state.sign_in, SignIn::IssuesNewToken);
    // Switching kills nothing by itself; the next sign-in does.
    assert!(works(&api, &first).await);
    let second = api.authenticate(email, PASSWORD).await;
    assert_ne!(second, first);
    assert!(!works(&api, &first).await && works(&api, &second).await);

    // In-process.
    simulator.set_sign_in(SignIn::ReturnsLiveToken);
    assert_eq!(
        settings(&admin).await,
        Settings {
            sign_in: SignIn::ReturnsLiveToken,
            api_users: ApiUsers::SignInWithPassword,
        }
    );
    let third = api.authenticate(email, PASSWORD).await;
    assert_eq!(third, second);
    assert!(works(&api, &third).await);
    simulator.set_sign_in(SignIn::IssuesNewToken);
    let fourth = api.authenticate(email, PASSWORD).await;
    assert_ne!(fourth, third);
    assert!(!works(&api, &third).await && works(&api, &fourth).await);

    // A body that is not a mode is refused and changes nothing.
    for body in [
        json!({"SignIn": "SOMETIMES"}),
        json!({"SignIn": "returns-live-token"}),
        json!({"sign_in": "RETURNS_LIVE_TOKEN"}),
        json!({"SignIn": "RETURNS_LIVE_TOKEN", "Rotate": false}),
        json!({"SignIn": null}),
    ] {
        let refused = admin.put("/admin/settings", &body).await;
        assert!(
            refused
                .admin_error(StatusCode::BAD_REQUEST)
                .contains("does not parse"),
            "{body}"
        );
    }
    let not_json = Api::read(
        admin
            .request(Method::PUT, "/admin/settings")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("ISSUES_NEW_TOKEN"),
    )
    .await
    .unwrap();
    not_json.admin_error(StatusCode::BAD_REQUEST);
    // A body that gives no setting is most likely a mistake, so it is refused too.
    let nothing = admin.put("/admin/settings", &json!({})).await;
    assert!(
        nothing
            .admin_error(StatusCode::BAD_REQUEST)
            .contains("no setting"),
        "{}",
        nothing.text
    );
    assert_eq!(simulator.sign_in(), SignIn::IssuesNewToken);
    assert_eq!(simulator.sign_ins(email), 4);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_reset_returns_to_the_sign_in_mode_the_simulator_started_with() {
    let simulator = start_signing_in(SignIn::IssuesNewToken).await;
    let admin = Api::new(&simulator);
    simulator.set_sign_in(SignIn::ReturnsLiveToken);
    admin.post("/admin/reset", None).await.no_content();
    assert_eq!(
        settings(&admin).await,
        Settings {
            sign_in: SignIn::IssuesNewToken,
            api_users: ApiUsers::SignInWithPassword,
        }
    );

    let set = admin
        .put("/admin/settings", &json!({"SignIn": "RETURNS_LIVE_TOKEN"}))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    simulator.reset();
    assert_eq!(simulator.sign_in(), SignIn::IssuesNewToken);
    assert_eq!(simulator.state().sign_in, SignIn::IssuesNewToken);
    simulator.shutdown().await;
}

const CREATE_USER: &str = "POST /v1/users/user";
const NO_RIGHTS: &str = "The user does not have the rights required for this request.";

/// A production simulator (where an account may have more than one user) treating API users as
/// `api_users` says.
async fn start_with_api_users(api_users: ApiUsers) -> RunningSimulator {
    simulator::start(SimulatorConfig {
        api_users,
        ..SimulatorConfig::new(Environment::Production)
    })
    .await
    .expect("starting the simulator")
}

/// The account's first user, an administrator, signed in; and a creditor it made.
async fn administrator_with_creditor(simulator: &RunningSimulator) -> (Api, Uuid, Uuid) {
    let (administrator, account_id, _) = account(simulator, "owner@tidningen.se").await;
    let creditor = administrator
        .create_creditor(&minimal_creditor("Tidningen i Norr AB", "556888-5645"))
        .await;
    (administrator, account_id, creditor)
}

/// A `UserView` for `POST /v1/users/user`: an enabled user with a password and read and write
/// rights on `creditor`, an API user or not.
fn new_user(username: &str, creditor: Uuid, is_api_user: bool) -> Value {
    json!({
        "Username": username, "Email": username, "Password": PASSWORD,
        "IsApiUser": is_api_user, "IsEnabled": true, "Language": "SV",
        "Rights": [{"CreditorPublicId": creditor.to_string(), "CanReadCreditor": true, "CanWriteCreditor": true}]
    })
}

/// `POST /v1/users/user` with `body`, which must succeed; the new user's id.
async fn create_user(administrator: &Api, body: &Value) -> Uuid {
    let created = administrator
        .post("/v1/users/user", Some(body))
        .await
        .view(View::Created);
    Uuid::parse_str(created["PublicId"].as_str().unwrap()).expect("a GUID PublicId")
}

/// The user named `username` in the simulator's state, if there is one.
fn user_named(simulator: &RunningSimulator, username: &str) -> Option<simulator::UserState> {
    simulator
        .state()
        .users
        .into_iter()
        .find(|user| user.username.eq_ignore_ascii_case(username))
}

#[tokio::test]
async fn by_default_an_api_user_made_through_the_users_api_signs_in_with_its_password() {
    let simulator = start(Environment::Production).await;
    assert_eq!(simulator.api_users(), ApiUsers::SignInWithPassword);
    let (administrator, _, creditor) = administrator_with_creditor(&simulator).await;
    let username = "api@tidningen.se";

    let id = create_user(&administrator, &new_user(username, creditor, true)).await;
    let stored = user_named(&simulator, username).expect("the API user");
    assert_eq!(stored.user_public_id, id);
    assert!(stored.is_api_user && stored.is_enabled && stored.has_password);

    let token = administrator.authenticate(username, PASSWORD).await;
    let api_user = administrator.token(&token);
    api_user.creditor(creditor).await;
    let own = api_user
        .get(&format!("/v1/users/user/{id}"))
        .await
        .view(View::User);
    assert_eq!(own["IsApiUser"], true);
    assert_eq!(simulator.sign_ins(username), 1);
    assert_eq!(simulator.state().api_users, ApiUsers::SignInWithPassword);
    simulator.shutdown().await;
}

#[tokio::test]
async fn an_api_user_refused_at_sign_in_gets_its_token_from_an_administrator() {
    let simulator = start_with_api_users(ApiUsers::TokenFromAdministrator).await;
    assert_eq!(simulator.api_users(), ApiUsers::TokenFromAdministrator);
    let (administrator, account_id, creditor) = administrator_with_creditor(&simulator).await;
    let username = "api@tidningen.se";

    let id = create_user(&administrator, &new_user(username, creditor, true)).await;
    assert!(
        user_named(&simulator, username)
            .expect("the API user")
            .is_api_user
    );

    // Refused exactly as a wrong password is: the client cannot tell the two apart.
    let right = administrator.api_authenticate(username, PASSWORD).await;
    let wrong = administrator.api_authenticate(username, "wrong").await;
    right.denied();
    wrong.denied();
    assert_eq!(right.text, wrong.text);
    assert_eq!(simulator.sign_ins(username), 0);
    assert_eq!(simulator.request_count(SIGN_IN), 3);

    let minted = administrator
        .post(&format!("/v1/authentication/securetoken/{id}"), None)
        .await
        .view(View::SecureToken);
    let token = minted["Value"].as_str().unwrap().to_owned();
    let api_user = administrator.token(&token);
    api_user.creditor(creditor).await;
    let current = api_user
        .get("/v1/authentication/securetoken")
        .await
        .view(View::SecureToken);
    assert_eq!(current["Value"], token.as_str());
    // Its sign-in still fails once it holds a token; the token lives on.
    administrator
        .api_authenticate(username, PASSWORD)
        .await
        .denied();
    assert!(works(&administrator, &token).await);

    // An API user made in the portal is refused the same way; other users sign in as before.
    simulator
        .create_user(
            account_id,
            NewUser {
                username: "portal-api@tidningen.se".into(),
                password: Some(PASSWORD.into()),
                is_api_user: true,
                creditors: vec![creditor],
                ..NewUser::default()
            },
        )
        .unwrap();
    administrator
        .api_authenticate("portal-api@tidningen.se", PASSWORD)
        .await
        .denied();
    create_user(
        &administrator,
        &new_user("clerk@tidningen.se", creditor, false),
    )
    .await;
    let clerk = administrator
        .authenticate("clerk@tidningen.se", PASSWORD)
        .await;
    administrator.token(&clerk).creditor(creditor).await;
    assert_eq!(simulator.sign_ins("owner@tidningen.se"), 1);
    assert_eq!(
        simulator.state().api_users,
        ApiUsers::TokenFromAdministrator
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn portal_only_refuses_an_api_user_through_the_users_api() {
    let simulator = start_with_api_users(ApiUsers::PortalOnly).await;
    assert_eq!(simulator.api_users(), ApiUsers::PortalOnly);
    let (administrator, account_id, creditor) = administrator_with_creditor(&simulator).await;
    let username = "api@tidningen.se";

    let refused = administrator
        .post("/v1/users/user", Some(&new_user(username, creditor, true)))
        .await;
    assert_eq!(refused.message(StatusCode::FORBIDDEN), NO_RIGHTS);
    assert!(user_named(&simulator, username).is_none());
    let state = simulator.state();
    assert_eq!(state.users.len(), 1);
    assert_eq!(state.accounts[0].user_public_ids.len(), 1);
    assert_eq!(state.request_counts[CREATE_USER], 1);
    assert_eq!(state.api_users, ApiUsers::PortalOnly);
    administrator
        .api_authenticate(username, PASSWORD)
        .await
        .denied();

    // A user that is not an API user is made as before, and signs in.
    let clerk = create_user(
        &administrator,
        &new_user("clerk@tidningen.se", creditor, false),
    )
    .await;
    let clerk_token = administrator
        .authenticate("clerk@tidningen.se", PASSWORD)
        .await;
    administrator.token(&clerk_token).creditor(creditor).await;
    // Nor can an update make it an API user.
    let mut promoted = administrator
        .get(&format!("/v1/users/user/{clerk}"))
        .await
        .view(View::User);
    promoted["IsApiUser"] = json!(true);
    let refused_update = administrator.put("/v1/users/user", &promoted).await;
    assert_eq!(refused_update.message(StatusCode::FORBIDDEN), NO_RIGHTS);
    assert!(
        !user_named(&simulator, "clerk@tidningen.se")
            .unwrap()
            .is_api_user
    );

    // The portal makes the API user, which signs in with its password.
    simulator
        .create_user(
            account_id,
            NewUser {
                username: username.into(),
                password: Some(PASSWORD.into()),
                is_api_user: true,
                creditors: vec![creditor],
                ..NewUser::default()
            },
        )
        .unwrap();
    let token = administrator.authenticate(username, PASSWORD).await;
    administrator.token(&token).creditor(creditor).await;
    assert_eq!(simulator.state().users.len(), 3);
    simulator.shutdown().await;
}

#[tokio::test]
async fn each_setting_changes_at_run_time_without_touching_the_other() {
    let simulator = start(Environment::Production).await;
    let (administrator, _, creditor) = administrator_with_creditor(&simulator).await;
    let admin = administrator.anonymous();
    let put = |body: Value| {
        let admin = admin.clone();
        async move {
            let reply = admin.put("/admin/settings", &body).await;
            assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text);
            serde_json::from_value::<Settings>(reply.json()).expect("settings")
        }
    };

    // Only ApiUsers: SignIn stays.
    let set = put(json!({"ApiUsers": "PORTAL_ONLY"})).await;
    let expected = Settings {
        sign_in: SignIn::ReturnsLiveToken,
        api_users: ApiUsers::PortalOnly,
    };
    assert_eq!(set, expected);
    assert_eq!(settings(&admin).await, expected);
    assert_eq!(simulator.api_users(), ApiUsers::PortalOnly);
    assert_eq!(simulator.sign_in(), SignIn::ReturnsLiveToken);
    let state: SimulatorState =
        serde_json::from_value(admin.get("/admin/state").await.json()).unwrap();
    assert_eq!(state.api_users, ApiUsers::PortalOnly);
    assert_eq!(state.sign_in, SignIn::ReturnsLiveToken);
    let refused = administrator
        .post(
            "/v1/users/user",
            Some(&new_user("api@tidningen.se", creditor, true)),
        )
        .await;
    assert_eq!(refused.message(StatusCode::FORBIDDEN), NO_RIGHTS);

    // Only SignIn: ApiUsers stays.
    let set = put(json!({"SignIn": "ISSUES_NEW_TOKEN"})).await;
    assert_eq!(
        set,
        Settings {
            sign_in: SignIn::IssuesNewToken,
            api_users: ApiUsers::PortalOnly,
        }
    );
    assert_eq!(simulator.api_users(), ApiUsers::PortalOnly);

    // Both at once.
    let set =
        put(json!({"SignIn": "RETURNS_LIVE_TOKEN", "ApiUsers": "TOKEN_FROM_ADMINISTRATOR"})).await;
    assert_eq!(
        set,
        Settings {
            sign_in: SignIn::ReturnsLiveToken,
            api_users: ApiUsers::TokenFromAdministrator,
        }
    );
    let id = create_user(
        &administrator,
        &new_user("api@tidningen.se", creditor, true),
    )
    .await;
    administrator
        .api_authenticate("api@tidningen.se", PASSWORD)
        .await
        .denied();

    // In-process; from the next request on, the same user signs in.
    simulator.set_api_users(ApiUsers::SignInWithPassword);
    assert_eq!(
        settings(&admin).await,
        Settings {
            sign_in: SignIn::ReturnsLiveToken,
            api_users: ApiUsers::SignInWithPassword,
        }
    );
    let token = administrator
        .authenticate("api@tidningen.se", PASSWORD)
        .await;
    administrator.token(&token).creditor(creditor).await;
    assert_eq!(
        user_named(&simulator, "api@tidningen.se")
            .unwrap()
            .user_public_id,
        id
    );

    // A body with an unknown field or value is refused whole: nothing changes, not even a
    // setting it gives correctly.
    for body in [
        json!({"ApiUsers": "SOMETIMES"}),
        json!({"ApiUsers": "portal-only"}),
        json!({"ApiUsers": null}),
        json!({"api_users": "PORTAL_ONLY"}),
        json!({"ApiUsers": "PORTAL_ONLY", "Extra": true}),
        json!({"SignIn": "ISSUES_NEW_TOKEN", "ApiUsers": "SOMETIMES"}),
        json!({"SignIn": "SOMETIMES", "ApiUsers": "PORTAL_ONLY"}),
    ] {
        let refused = admin.put("/admin/settings", &body).await;
        assert!(
            refused
                .admin_error(StatusCode::BAD_REQUEST)
                .contains("does not parse"),
            "{body}"
        );
    }
    assert_eq!(simulator.api_users(), ApiUsers::SignInWithPassword);
    assert_eq!(simulator.sign_in(), SignIn::ReturnsLiveToken);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_reset_returns_to_the_api_users_mode_the_simulator_started_with() {
    let simulator = simulator::start(SimulatorConfig {
        sign_in: SignIn::IssuesNewToken,
        api_users: ApiUsers::PortalOnly,
        ..SimulatorConfig::new(Environment::Production)
    })
    .await
    .expect("starting the simulator");
    let admin = Api::new(&simulator);
    let start = Settings {
        sign_in: SignIn::IssuesNewToken,
        api_users: ApiUsers::PortalOnly,
    };
    assert_eq!(settings(&admin).await, start);

    let set = admin
        .put(
            "/admin/settings",
            &json!({"SignIn": "RETURNS_LIVE_TOKEN", "ApiUsers": "SIGN_IN_WITH_PASSWORD"}),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    admin.post("/admin/reset", None).await.no_content();
    assert_eq!(settings(&admin).await, start);

    simulator.set_api_users(ApiUsers::TokenFromAdministrator);
    simulator.set_sign_in(SignIn::ReturnsLiveToken);
    simulator.reset();
    assert_eq!(simulator.api_users(), ApiUsers::PortalOnly);
    assert_eq!(simulator.sign_in(), SignIn::IssuesNewToken);
    let state = simulator.state();
    assert_eq!(
        (state.sign_in, state.api_users),
        (SignIn::IssuesNewToken, ApiUsers::PortalOnly)
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn only_sign_ins_answered_with_a_token_count_as_sign_ins() {
    let simulator = start(Environment::Production).await;
    let email = "owner@tidningen.se";
    let created = simulator
        .create_account(NewAccount {
            name: "Payway Billecta".into(),
            company_name: "Tidningen i Norr AB".into(),
            email: email.into(),
            password: "initial".into(),
        })
        .unwrap();
    let api = Api::new(&simulator);
    let other = simulator
        .create_user(
            created.account_id,
            NewUser {
                username: "api@tidningen.se".into(),
                password: Some(PASSWORD.into()),
                is_api_user: true,
                ..NewUser::default()
            },
        )
        .unwrap();

    // Not activated yet.
    let refused = api.api_authenticate(email, "initial").await;
    assert!(
        refused
            .message(StatusCode::UNAUTHORIZED)
            .contains("not been activated")
    );
    simulator
        .activate_account(created.account_id, PASSWORD)
        .unwrap();
    api.api_authenticate(email, "wrong").await.denied();
    assert_eq!(simulator.sign_ins(email), 0);

    // The username in another letter case is the same user.
    api.authenticate("Owner@Tidningen.SE", PASSWORD).await;
    assert_eq!(simulator.sign_ins(email), 1);
    assert_eq!(simulator.sign_ins("OWNER@tidningen.se"), 1);

    simulator
        .set_user_enabled(created.user_public_id, false)
        .unwrap();
    api.api_authenticate(email, PASSWORD).await.denied();
    simulator
        .set_user_enabled(created.user_public_id, true)
        .unwrap();

    // A faulted sign-in never reached Billecta.
    simulator
        .set_faults(
            None,
            vec![
                FaultRule::new(Fault::Status {
                    status: 503,
                    body: FaultBody::Json,
                })
                .on(SIGN_IN)
                .times(1),
            ],
        )
        .unwrap();
    let faulted = api.api_authenticate(email, PASSWORD).await;
    assert_eq!(faulted.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(simulator.sign_ins(email), 1);

    simulator.set_sign_in(SignIn::IssuesNewToken);
    api.authenticate(email, PASSWORD).await;
    assert_eq!(simulator.sign_ins(email), 2);
    assert_eq!(simulator.request_count(SIGN_IN), 6);

    let state = simulator.state();
    let sign_ins_of = |id: Uuid| {
        state
            .users
            .iter()
            .find(|user| user.user_public_id == id)
            .expect("the user")
            .sign_ins
    };
    assert_eq!(sign_ins_of(created.user_public_id), 2);
    assert_eq!(sign_ins_of(other.user_public_id), 0);
    assert_eq!(simulator.sign_ins(&other.username), 0);
    assert_eq!(simulator.sign_ins("nobody@tidningen.se"), 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn creditor_round_trip_with_bank_info_and_invoice_number() {
    let simulator = start(Environment::Test).await;
    let (api, _, _) = account(&simulator, "owner@tidningen.se").await;

    let sent = full_creditor();
    let id = api.create_creditor(&sent).await;
    assert_ne!(id.to_string(), sent["CreditorPublicId"]);

    // Stored as given, except the id and Billecta's own fields.
    let stored = api.creditor(id).await;
    let mut expected = sent.clone();
    expected["CreditorPublicId"] = json!(id.to_string());
    expected["CreditorBankInfo"]["PaymentMethods"][0]["Verified"] = json!(false);
    expected["CreditorBankInfo"]["PaymentMethods"][1]["Verified"] = json!(false);
    expected["CreditorBankInfo"]["PaymentMethods"][1]["BankgiroNo"] = Value::Null;
    expected["CreditorBankInfo"]["PaymentMethods"][1]["PlusgiroNo"] = Value::Null;
    expected["CreditorBankInfo"]["PaymentMethods"][1]["ClearingNo"] = Value::Null;
    expected["CreditorBankInfo"]["PaymentMethods"][1]["AccountNo"] = Value::Null;
    expected["CreditorBankInfo"]["CreditorOutgoingBankgiroes"][0]["BankgiroApproved"] =
        json!(false);
    assert_eq!(stored, expected);

    let listed = api
        .get("/v1/creditors/creditors?offset=0&limit=10&sortingfield=Name&asc=true")
        .await
        .view(View::Creditors);
    assert_eq!(listed, json!([stored.clone()]));
    let subs = api
        .get("/v1/creditors/creditorsubs")
        .await
        .view(View::CreditorSubs);
    assert_eq!(
        subs,
        json!([{"CreditorPublicId": id.to_string(), "Name": "Tidningen i Norr AB", "IsEnabled": true, "OrgNo": "556888-5645", "LogoURL": null}])
    );

    // Billecta staff approve the outgoing bankgiro and verify the bankgiro payment method.
    simulator.approve_outgoing_bankgiro(id, "54029681").unwrap();
    simulator.verify_payment_method(id, "5050-1055").unwrap();
    assert_eq!(
        simulator.approve_outgoing_bankgiro(id, "999-9999"),
        Err(AdminError::NotFound(format!(
            "creditor {id} has no outgoing bankgiro 999-9999"
        )))
    );

    // PUT replaces everything: omitted fields are cleared, Billecta's fields keep their values
    // whatever the body claims, a new outgoing bankgiro starts unapproved.
    let mut update = stored.clone();
    let object = update.as_object_mut().unwrap();
    object.remove("Address");
    object.remove("CreditorContact");
    update["NextInvoiceNumber"] = json!("20001");
    update["CreditorPublicId"] = json!(id.to_string().to_uppercase());
    update["CreditorBankInfo"]["PaymentMethods"][0]["Verified"] = json!(false);
    update["CreditorBankInfo"]["CreditorOutgoingBankgiroes"][0]["BankgiroApproved"] = json!(false);
    update["CreditorBankInfo"]["CreditorOutgoingBankgiroes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"BankgiroNo": "5555-5555", "IsActive": true, "BankgiroApproved": true}));
    api.put("/v1/creditors/creditor", &update).await.empty_ok();
    let updated = api.creditor(id).await;
    assert_eq!(updated["Address"], Value::Null);
    assert_eq!(updated["CreditorContact"], Value::Null);
    assert_eq!(updated["City"], "Umeå");
    assert_eq!(updated["NextInvoiceNumber"], "20001");
    assert_eq!(updated["CreditorPublicId"], id.to_string());
    let bank = &updated["CreditorBankInfo"];
    assert_eq!(each(bank, "PaymentMethods", "Verified"), [true, false]);
    assert_eq!(
        each(bank, "CreditorOutgoingBankgiroes", "BankgiroApproved"),
        [true, false]
    );
    assert_eq!(
        bank["CreditorOutgoingBankgiroes"][1]["Description"],
        Value::Null
    );

    // A PUT with only the id clears every field, and Name/OrgNo are required.
    let cleared = api
        .put(
            "/v1/creditors/creditor",
            &json!({"CreditorPublicId": id.to_string()}),
        )
        .await;
    assert!(
        cleared
            .message(StatusCode::BAD_REQUEST)
            .contains("Name is required")
    );

    // Duplicate OrgNo is allowed; the admin state counts them.
    let twin = api
        .create_creditor(&minimal_creditor("Tidningen Två", "556888-5645"))
        .await;
    assert_ne!(twin, id);
    assert_eq!(
        simulator.state().creditors_per_org_no.get("556888-5645"),
        Some(&2)
    );
    let second_page = api
        .get("/v1/creditors/creditors?offset=1&limit=1&sortingfield=name&asc=false")
        .await
        .view(View::Creditors);
    assert_eq!(second_page[0]["CreditorPublicId"], id.to_string());

    // Delete, then the creditor is gone: 404 with an empty body.
    api.delete(&format!("/v1/creditors/creditor/{twin}"))
        .await
        .empty_ok();
    let gone = api.get(&format!("/v1/creditors/creditor/{twin}")).await;
    assert_eq!(
        (gone.status, gone.text.as_str()),
        (StatusCode::NOT_FOUND, "")
    );
    let unknown = api
        .put(
            "/v1/creditors/creditor",
            &json!({"CreditorPublicId": twin.to_string(), "Name": "x", "OrgNo": "1"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    simulator.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_are_refused_with_the_field_named_and_change_nothing() {
    let simulator = start(Environment::Test).await;
    let (api, _, _) = account(&simulator, "owner@tidningen.se").await;
    let id = api.create_creditor(&full_creditor()).await;
    let before = simulator.state().creditors;

    let mut unknown_field = api.creditor(id).await;
    unknown_field["CreditorBankInfo"]["SwishNumber"] = json!("1231231231");
    let mut wrong_type = api.creditor(id).await;
    wrong_type["IsEnabled"] = json!("yes");
    let mut integer_enum = api.creditor(id).await;
    integer_enum["CreditorBankInfo"]["PaymentMethods"][0]["Priority"] = json!(0);
    let mut unknown_enum = api.creditor(id).await;
    unknown_enum["CreditorInvoiceAddress"]["DeliveryMethod"] = json!("Fax");
    let mut letters_in_number = api.creditor(id).await;
    letters_in_number["NextInvoiceNumber"] = json!("INV-100");
    let mut missing_org_no = api.creditor(id).await;
    missing_org_no["OrgNo"] = Value::Null;

    for (body, names) in [
        (
            &unknown_field,
            "$.CreditorBankInfo.SwishNumber: unknown field",
        ),
        (
            &wrong_type,
            "$.IsEnabled: \"yes\" is not of type \"boolean\"",
        ),
        (
            &integer_enum,
            "$.CreditorBankInfo.PaymentMethods[0].Priority: 0 is not of type \"string\"",
        ),
        (
            &unknown_enum,
            "$.CreditorInvoiceAddress.DeliveryMethod: \"Fax\" is not one of",
        ),
        (&letters_in_number, "NextInvoiceNumber \"INV-100\""),
        (&missing_org_no, "OrgNo is required"),
    ] {
        for reply in [
            api.put("/v1/creditors/creditor", body).await,
            api.post("/v1/creditors/creditor", Some(body)).await,
        ] {
            let message = reply.message(StatusCode::BAD_REQUEST);
            assert!(message.starts_with("The request is invalid."), "{message}");
            assert!(message.contains(names), "{message} does not name {names}");
        }
    }

    let malformed = api
        .post_raw(
            "/v1/creditors/creditor",
            "application/json",
            "{\"Name\": ".to_owned(),
        )
        .await;
    assert!(
        malformed
            .message(StatusCode::BAD_REQUEST)
            .starts_with("The request is invalid. The body is not valid JSON")
    );

    let as_text = api
        .post_raw(
            "/v1/creditors/creditor",
            "text/plain",
            minimal_creditor("Plain", "1").to_string(),
        )
        .await;
    assert_eq!(as_text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let bodiless = api.post("/v1/creditors/creditor", None).await;
    assert!(
        bodiless
            .message(StatusCode::BAD_REQUEST)
            .contains("body is empty")
    );

    // Authentication comes before the body: a bad body without a token is a 401.
    let anonymous = api
        .anonymous()
        .post("/v1/creditors/creditor", Some(&wrong_type))
        .await;
    anonymous.denied();

    assert_eq!(simulator.state().creditors, before);
    assert_eq!(simulator.request_count("PUT /v1/creditors/creditor"), 6);
    simulator.shutdown().await;
}

#[tokio::test]
async fn rights_and_users_in_production() {
    let simulator = start(Environment::Production).await;
    let (owner, account_id, owner_id) = account(&simulator, "owner@tidningen.se").await;
    let creditor = owner
        .create_creditor(&minimal_creditor("Tidningen i Norr AB", "556888-5645"))
        .await;

    // A second user, added in the portal, without rights on the creditor.
    let clerk = simulator
        .create_user(
            account_id,
            NewUser {
                username: "clerk@tidningen.se".into(),
                email: Some("clerk@tidningen.se".into()),
                password: Some(PASSWORD.into()),
                ..NewUser::default()
            },
        )
        .unwrap();
    let clerk_token = owner.authenticate("clerk@tidningen.se", PASSWORD).await;
    let clerk_api = owner.token(&clerk_token);
    let forbidden = clerk_api
        .get(&format!("/v1/creditors/creditor/{creditor}"))
        .await;
    assert!(forbidden.message(StatusCode::FORBIDDEN).contains("rights"));
    assert_eq!(
        clerk_api
            .get("/v1/creditors/creditors")
            .await
            .view(View::Creditors),
        json!([])
    );
    clerk_api
        .post(
            "/v1/creditors/creditor",
            Some(&minimal_creditor("Egen AB", "556000-0000")),
        )
        .await
        .message(StatusCode::FORBIDDEN);
    let own_list = clerk_api.get("/v1/users/users").await.view(View::Users);
    assert_eq!(own_list.as_array().unwrap().len(), 1);

    // The administrator reads the clerk, grants read rights with PUT, and the clerk can read.
    let mut clerk_view = owner
        .get(&format!("/v1/users/user/{}", clerk.user_public_id))
        .await
        .view(View::User);
    assert_eq!(clerk_view["Password"], Value::Null);
    clerk_view["Rights"] =
        json!([{"CreditorPublicId": creditor.to_string(), "CanReadCreditor": true}]);
    owner.put("/v1/users/user", &clerk_view).await.empty_ok();
    clerk_api.creditor(creditor).await;
    let mut rename = clerk_api.creditor(creditor).await;
    rename["Name"] = json!("Nytt namn AB");
    clerk_api
        .put("/v1/creditors/creditor", &rename)
        .await
        .message(StatusCode::FORBIDDEN);

    // An API user created over the API, its token minted by the administrator.
    let created = owner
        .post(
            "/v1/users/user",
            Some(&json!({
                "Username": "api-user@tidningen.se", "Email": "api-user@tidningen.se",
                "IsApiUser": true, "IsEnabled": true, "Language": "SV",
                "Rights": [{"CreditorPublicId": creditor.to_string(), "CanReadCreditor": true, "CanWriteCreditor": true}]
            })),
        )
        .await
        .view(View::Created);
    let api_user = created["PublicId"].as_str().unwrap().to_owned();
    let minted = owner
        .post(&format!("/v1/authentication/securetoken/{api_user}"), None)
        .await
        .view(View::SecureToken);
    let api_user_api = owner.token(minted["Value"].as_str().unwrap());
    api_user_api.creditor(creditor).await;
    api_user_api
        .put("/v1/creditors/creditor", &rename)
        .await
        .empty_ok();
    let users = owner.get("/v1/users/users").await.view(View::Users);
    assert_eq!(users.as_array().unwrap().len(), 3);
    // Only an administrator mints tokens for others; usernames are unique.
    clerk_api
        .post(&format!("/v1/authentication/securetoken/{owner_id}"), None)
        .await
        .message(StatusCode::FORBIDDEN);
    let duplicate = owner
        .post(
            "/v1/users/user",
            Some(&json!({"Username": "CLERK@tidningen.se"})),
        )
        .await;
    assert!(
        duplicate
            .message(StatusCode::BAD_REQUEST)
            .contains("already in use")
    );

    // A user of another account sees neither the creditor's content nor the users.
    let (stranger, _, _) = account(&simulator, "other@example.com").await;
    stranger
        .get(&format!("/v1/creditors/creditor/{creditor}"))
        .await
        .message(StatusCode::FORBIDDEN);
    let hidden = stranger.get(&format!("/v1/users/user/{owner_id}")).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    // Deleting a user kills its token at once; disabling does too.
    owner
        .delete(&format!("/v1/users/user/{api_user}"))
        .await
        .empty_ok();
    api_user_api.get("/v1/creditors/creditors").await.denied();
    simulator
        .set_user_enabled(clerk.user_public_id, false)
        .unwrap();
    clerk_api.get("/v1/users/users").await.denied();
    owner
        .api_authenticate("clerk@tidningen.se", PASSWORD)
        .await
        .denied();

    // The owner changes its own password; its token stays valid.
    owner
        .put(
            "/v1/users/changepassword",
            &json!({"Password": "a new password"}),
        )
        .await
        .empty_ok();
    owner.get("/v1/users/users").await.view(View::Users);
    owner
        .authenticate("owner@tidningen.se", "a new password")
        .await;
    simulator.shutdown().await;
}

#[tokio::test]
async fn the_test_environment_allows_one_user_per_account() {
    let simulator = start(Environment::Test).await;
    let (api, account_id, user_id) = account(&simulator, "owner@tidningen.se").await;
    let refused = api
        .post(
            "/v1/users/user",
            Some(&json!({"Username": "api@tidningen.se", "IsEnabled": true})),
        )
        .await;
    assert!(
        refused
            .message(StatusCode::BAD_REQUEST)
            .contains("one user per account")
    );
    let portal = simulator.create_user(
        account_id,
        NewUser {
            username: "api@tidningen.se".into(),
            ..NewUser::default()
        },
    );
    assert!(matches!(portal, Err(AdminError::Conflict(message)) if message.contains("one user")));

    // Deleting the only user breaks the integration: its token stops working.
    let token = simulator.state().users[0].token.clone();
    assert!(token.is_some());
    simulator.delete_user(user_id).unwrap();
    api.get("/v1/creditors/creditors").await.denied();
    simulator.shutdown().await;
}

#[tokio::test]
async fn every_public_route_requires_authentication_and_is_counted() {
    let simulator = start(Environment::Test).await;
    let api = Api::new(&simulator);
    let some_id = Uuid::new_v4().to_string();
    for route in PUBLIC_ROUTES {
        let (method, template) = route.split_once(' ').unwrap();
        let path = template.replace("{id}", &some_id);
        let body = matches!(method, "POST" | "PUT").then(|| json!({}));
        let reply = api
            .send(method.parse().unwrap(), &path, body.as_ref())
            .await;
        assert_eq!(reply.message(StatusCode::UNAUTHORIZED), DENIED, "{route}");
        assert_eq!(simulator.request_count(route), 1, "{route}");
    }
    let counts = simulator.state().request_counts;
    assert_eq!(counts.len(), PUBLIC_ROUTES.len());

    // Routes ignore case, as ASP.NET's do; unknown paths are 404 with an empty body.
    let mixed_case = api.get("/v1/Creditors/Creditors").await;
    assert_eq!(mixed_case.status, StatusCode::UNAUTHORIZED);
    assert_eq!(simulator.request_count("GET /v1/creditors/creditors"), 2);
    let unknown = api.get("/v1/creditors/nothing").await;
    assert_eq!(
        (unknown.status, unknown.text.as_str()),
        (StatusCode::NOT_FOUND, "")
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn latency_delays_and_composes_with_a_normal_answer() {
    let (simulator, api) = faulty(vec![
        FaultRule::new(Fault::Latency { ms: 150 }).on("GET /v1/creditors/creditors"),
    ])
    .await;
    let slow_started = Instant::now();
    api.get("/v1/creditors/creditors")
        .await
        .view(View::Creditors);
    assert!(slow_started.elapsed() >= Duration::from_millis(150));
    let fast_started = Instant::now();
    api.get("/v1/users/users").await.view(View::Users);
    assert!(fast_started.elapsed() < Duration::from_millis(150));
    simulator.shutdown().await;
}

#[tokio::test]
async fn status_faults_answer_json_or_html_and_times_limits_them() {
    let (simulator, api) = faulty(vec![
        FaultRule::new(Fault::Status {
            status: 503,
            body: FaultBody::Html,
        })
        .on("GET /v1/creditors/creditors")
        .times(2),
        FaultRule::new(Fault::Status {
            status: 500,
            body: FaultBody::Json,
        })
        .on("GET /v1/users/users")
        .times(1),
    ])
    .await;
    for _ in 0..2 {
        let reply = api.get("/v1/creditors/creditors").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers["content-type"], "text/html");
        assert!(reply.text.starts_with("<!DOCTYPE html"));
        assert!(reply.text.contains("HTTP Error 503"));
    }
    api.get("/v1/creditors/creditors")
        .await
        .view(View::Creditors);
    let json_error = api.get("/v1/users/users").await;
    assert_eq!(
        json_error.message(StatusCode::INTERNAL_SERVER_ERROR),
        "An error has occurred."
    );
    api.get("/v1/users/users").await.view(View::Users);
    assert_eq!(simulator.request_count("GET /v1/creditors/creditors"), 3);
    let faults = simulator.state().faults;
    assert_eq!(faults.rules[0].applied, 2);
    assert_eq!(faults.rules[1].applied, 1);
    simulator.shutdown().await;
}

#[tokio::test]
async fn rate_limiting_answers_429_with_retry_after() {
    let simulator = start(Environment::Test).await;
    let api = Api::new(&simulator);
    simulator
        .create_activated_account("owner@tidningen.se", PASSWORD)
        .unwrap();
    simulator
        .set_faults(
            None,
            vec![
                FaultRule::new(Fault::RateLimited {
                    retry_after_seconds: 2,
                })
                .times(1),
            ],
        )
        .unwrap();
    let limited = api.api_authenticate("owner@tidningen.se", PASSWORD).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "2");
    assert_eq!(limited.text, "");
    api.authenticate("owner@tidningen.se", PASSWORD).await;
    assert_eq!(
        simulator.request_count("POST /v1/authentication/apiauthenticate"),
        2
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_hang_lasts_until_the_client_gives_up_or_the_simulator_stops() {
    let (simulator, api) = faulty(vec![
        FaultRule::new(Fault::Hang).on("GET /v1/creditors/creditors"),
    ])
    .await;
    let impatient = Api {
        http: http_client(Duration::from_millis(300)),
        ..api.clone()
    };
    let started = Instant::now();
    let error = impatient
        .try_send(Method::GET, "/v1/creditors/creditors", None)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Other endpoints answer meanwhile.
    api.get("/v1/users/users").await.view(View::Users);

    // A patient client is released by shutdown, with a connection error rather than an answer.
    let patient = api.clone();
    let waiting = tokio::spawn(async move {
        patient
            .try_send(Method::GET, "/v1/creditors/creditors", None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    simulator.shutdown().await;
    let outcome = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the hanging request ends with the simulator")
        .unwrap();
    let released = outcome.unwrap_err();
    assert!(is_connection_reset(&released), "{released:?}");
    assert!(stopping.elapsed() < Duration::from_secs(2));
}

/// Whether an I/O "connection reset by peer" is somewhere in the error's causes.
fn is_connection_reset(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        cause = current.source();
    }
    false
}

#[tokio::test]
async fn a_reset_aborts_the_connection_without_a_status() {
    let (simulator, api) = faulty(vec![
        FaultRule::new(Fault::Reset)
            .on("POST /v1/creditors/creditor")
            .times(1),
    ])
    .await;
    let body = minimal_creditor("Tidningen i Norr AB", "556888-5645");
    let error = api
        .try_send(Method::POST, "/v1/creditors/creditor", Some(&body))
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(is_connection_reset(&error), "{error:?}");
    assert!(simulator.state().creditors.is_empty());
    // The rule fired once; the retry goes through on a new connection.
    api.create_creditor(&body).await;
    assert_eq!(simulator.request_count("POST /v1/creditors/creditor"), 2);
    simulator.shutdown().await;
}

#[tokio::test]
async fn the_same_seed_gives_the_same_sequence_of_outcomes() {
    let simulator = start(Environment::Test).await;
    let (api, _, _) = account(&simulator, "owner@tidningen.se").await;
    let rules = vec![
        FaultRule::new(Fault::Status {
            status: 502,
            body: FaultBody::Json,
        })
        .on("GET /v1/users/users")
        .with_probability(0.5),
    ];
    let run = async |seed: u64| -> Vec<u16> {
        simulator.set_faults(Some(seed), rules.clone()).unwrap();
        let mut statuses = Vec::new();
        for _ in 0..24 {
            statuses.push(api.get("/v1/users/users").await.status.as_u16());
        }
        statuses
    };
    let first = run(11).await;
    let again = run(11).await;
    let other = run(12).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert!(first.contains(&502) && first.contains(&200), "{first:?}");
    simulator.shutdown().await;
}

#[tokio::test]
async fn faults_and_state_through_the_admin_api() {
    let simulator = start(Environment::Production).await;
    let (api, _, _) = account(&simulator, "owner@tidningen.se").await;
    let admin = api.anonymous();

    let set = admin
        .put(
            "/admin/faults",
            &json!({"seed": 3, "rules": [
                {"fault": {"kind": "status", "status": 503}, "times": 1},
                {"route": "GET /v1/creditors/creditors", "fault": {"kind": "latency", "ms": 1}}
            ]}),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK);
    let shown = set.json();
    assert_eq!(shown["seed"], 3);
    assert_eq!(shown["rules"].as_array().unwrap().len(), 2);

    // A rule without a route hits every public endpoint, never the admin API.
    let faulted = api.get("/v1/users/users").await;
    assert_eq!(faulted.status, StatusCode::SERVICE_UNAVAILABLE);
    let state: SimulatorState =
        serde_json::from_value(admin.get("/admin/state").await.json()).unwrap();
    assert_eq!(state.request_counts["GET /v1/users/users"], 1);
    assert_eq!(state.faults.rules[0].applied, 1);
    assert_eq!(state.environment, Environment::Production);

    let invalid = admin
        .put(
            "/admin/faults",
            &json!({"rules": [{"route": "GET /v1/nothing", "fault": {"kind": "hang"}}]}),
        )
        .await;
    assert!(
        invalid
            .admin_error(StatusCode::BAD_REQUEST)
            .contains("not a public endpoint")
    );

    admin.delete("/admin/faults").await.no_content();
    api.get("/v1/users/users").await.view(View::Users);

    // Admin users: the test-environment rule does not apply in production.
    let account_id = state.accounts[0].account_id;
    let created = admin
        .post(
            &format!("/admin/accounts/{account_id}/users"),
            Some(
                &json!({"username": "api@tidningen.se", "password": PASSWORD, "is_api_user": true}),
            ),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let user_id = created.json()["user_public_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let api_token = api.authenticate("api@tidningen.se", PASSWORD).await;
    for action in ["disable", "enable"] {
        admin
            .post(&format!("/admin/users/{user_id}/{action}"), None)
            .await
            .no_content();
    }
    // Disabling dropped the token: enabled again, the user needs a new one.
    api.token(&api_token).get("/v1/users/users").await.denied();
    assert_ne!(
        api.authenticate("api@tidningen.se", PASSWORD).await,
        api_token
    );
    let user_path = format!("/admin/users/{user_id}");
    admin.delete(&user_path).await.no_content();
    let missing = admin.delete(&user_path).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Reset forgets everything but the fault rules.
    simulator
        .set_faults(None, vec![FaultRule::new(Fault::Latency { ms: 1 })])
        .unwrap();
    admin.post("/admin/reset", None).await.no_content();
    let after = simulator.state();
    assert!(after.accounts.is_empty() && after.users.is_empty() && after.request_counts.is_empty());
    assert_eq!(after.faults.rules.len(), 1);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_bodiless_post_needs_no_content_length() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let simulator = start(Environment::Test).await;
    simulator
        .create_activated_account("owner@tidningen.se", PASSWORD)
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(simulator.local_addr())
        .await
        .unwrap();
    let credentials = BASE64.encode(format!("owner@tidningen.se:{PASSWORD}"));
    let request = format!(
        "POST /v1/authentication/apiauthenticate HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {credentials}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        simulator.local_addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut answer))
        .await
        .expect("the simulator answers")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let token: Value = serde_json::from_str(body).unwrap();
    assert_eq!(schema::validate(View::SecureToken, &token), Ok(()));
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_password_changed_in_the_portal_signs_in_and_leaves_the_token_alone() {
    let simulator = start(Environment::Test).await;
    let email = "owner@tidningen.se";
    let created = simulator.create_activated_account(email, PASSWORD).unwrap();
    let api = Api::new(&simulator);
    let token = api.authenticate(email, PASSWORD).await;

    simulator
        .set_password(created.user_public_id, "a new one")
        .unwrap();
    assert_eq!(
        api.api_authenticate(email, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED,
        "the old password no longer signs in"
    );
    assert!(works(&api, &token).await, "the token lives on");
    assert_eq!(api.authenticate(email, "a new one").await, token);

    // Over the admin API too; an empty password or an unknown user is refused.
    let admin = Api::new(&simulator);
    let path = format!("/admin/users/{}/password", created.user_public_id);
    let reply = admin.post(&path, Some(&json!({"password": "third"}))).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert_eq!(api.authenticate(email, "third").await, token);
    let empty = admin.post(&path, Some(&json!({"password": ""}))).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let unknown = format!("/admin/users/{}/password", Uuid::new_v4());
    let missing = admin.post(&unknown, Some(&json!({"password": "x"}))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    simulator.shutdown().await;
}
