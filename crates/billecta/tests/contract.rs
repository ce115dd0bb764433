//! The client's side of the contract with Billecta: every request it can send, for every endpoint,
//! carries a body that Billecta's published schemas accept, and the bytes on the wire have the headers
//! Billecta documents.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use billecta_client::model::{
    Contact, Creditor, CreditorBankInfo, DeliveryMethod, ForeignAccount, InvoiceAddress, Language,
    OutgoingBankgiro, PaymentMethod, PaymentMethodPriority, PaymentMethodType, User, UserRight,
};
use billecta_client::{
    BillectaClient, ClientSettings, Deadline, Endpoint, Environment, Request, Secret, endpoints,
    requests,
};
use billecta_sim::schema::{self, View};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CREDITOR_ID: &str = "0b8f8c5e-7d0c-4a57-a0b7-3f1f1b6a2d11";
const USER_ID: &str = "5d6a4a0e-0f53-4b1f-9a55-3a2b1c0d9e8f";

/// A creditor with every field the client knows set, so that each one is checked.
fn full_creditor() -> Creditor {
    let contact = |first: &str| Contact {
        first_name: Some(first.into()),
        last_name: Some("Svensson".into()),
        email: Some(format!("{}@tidningen.se", first.to_lowercase())),
        phone: Some("+46701234567".into()),
        ..Contact::default()
    };
    Creditor {
        creditor_public_id: Some(CREDITOR_ID.into()),
        org_no: Some("556888-5645".into()),
        name: Some("Tidningen i Norr AB".into()),
        creditor_bank_info: Some(CreditorBankInfo {
            uses_client_fund: Some(false),
            payment_method: Some(PaymentMethodType::BankGiro),
            bankgiro_no: Some("5050-1055".into()),
            plusgiro_no: None,
            account_no: Some("1234567".into()),
            clearing_no: Some("8327".into()),
            e_invoice_fui: Some("123456789012.12345678901.BANK.SE".into()),
            e_invoice_cui: Some("1234567".into()),
            foreign_accounts: Some(vec![ForeignAccount {
                currency_code: Some("EUR".into()),
                bank_name: Some("Nordea".into()),
                iban: Some("SE4550000000058398257466".into()),
                bic: Some("NDEASESS".into()),
                ..ForeignAccount::default()
            }]),
            creditor_outgoing_bankgiroes: Some(vec![OutgoingBankgiro {
                bankgiro_no: Some("5402-9681".into()),
                is_active: Some(true),
                bankgiro_approved: Some(false),
                description: Some("Payments".into()),
                bookkeeping_payment_mean_code: Some("BG1".into()),
                ..OutgoingBankgiro::default()
            }]),
            payment_methods: Some(vec![
                PaymentMethod {
                    priority: Some(PaymentMethodPriority::Primary),
                    payment_method: Some(PaymentMethodType::BankGiro),
                    bankgiro_no: Some("5050-1055".into()),
                    verified: Some(false),
                    ..PaymentMethod::default()
                },
                PaymentMethod {
                    priority: Some(PaymentMethodPriority::Alternative),
                    payment_method: Some(PaymentMethodType::Iban),
                    iban: Some("SE4550000000058398257466".into()),
                    bic: Some("ESSESESS".into()),
                    ..PaymentMethod::default()
                },
            ]),
            ..CreditorBankInfo::default()
        }),
        attention: Some("Ekonomi".into()),
        care_of: Some("Box 12".into()),
        address: Some("Storgatan 1".into()),
        address2: Some("Plan 3".into()),
        zip_code: Some("903 26".into()),
        city: Some("Umeå".into()),
        country_code: Some("SE".into()),
        phone: Some("+4690123456".into()),
        vat_number: Some("SE556888564501".into()),
        residence: Some("Umeå".into()),
        approved_company_tax: Some(true),
        give_all_users_full_rights_on_creditor: Some(true),
        gln: Some("7300009012345".into()),
        creditor_contact: Some(contact("Anna")),
        creditor_claims_contact: Some(contact("Bo")),
        creditor_signatory_contact: Some(contact("Cecilia")),
        creditor_invoice_address: Some(InvoiceAddress {
            address: Some("Storgatan 1".into()),
            address2: None,
            zip_code: Some("903 26".into()),
            city: Some("Umeå".into()),
            country_code: Some("SE".into()),
            email: Some("faktura@tidningen.se".into()),
            delivery_method: Some(DeliveryMethod::Email),
            ..InvoiceAddress::default()
        }),
        is_enabled: Some(true),
        next_invoice_number: Some("1023".into()),
        logo_url: Some("https://tidningen.se/logo.png".into()),
        use_cent_rounding: Some(false),
        uses_client_fund_for_invoicing: Some(false),
        ..Creditor::default()
    }
}

fn full_user() -> User {
    User {
        user_public_id: Some(USER_ID.into()),
        username: Some("api-norr@tidningen.se".into()),
        email: Some("api-norr@tidningen.se".into()),
        full_name: Some("Payway API Norr".into()),
        language: Some(Language::Swedish),
        password: None,
        is_enabled: Some(true),
        rights: Some(vec![UserRight {
            creditor_public_id: Some(CREDITOR_ID.into()),
            can_read_creditor: Some(true),
            can_write_creditor: Some(false),
            ..UserRight::default()
        }]),
        is_administrator: Some(false),
        is_api_user: Some(true),
        can_manage_creditors: Some(false),
        ..User::default()
    }
}

/// The request the client sends to each endpoint, with the view its body must match.
fn request_for(endpoint: &Endpoint) -> (Request, Option<View>) {
    let route = endpoint.route;
    if route == endpoints::AUTHENTICATE.route {
        (requests::authenticate(), None)
    } else if route == endpoints::GET_TOKEN.route {
        (requests::get_token(), None)
    } else if route == endpoints::ISSUE_TOKEN.route {
        (requests::issue_token(Some(USER_ID)), None)
    } else if route == endpoints::ISSUE_OWN_TOKEN.route {
        (requests::issue_token(None), None)
    } else if route == endpoints::REVOKE_TOKEN.route {
        (requests::revoke_token(), None)
    } else if route == endpoints::LIST_CREDITORS.route {
        (requests::list_creditors(0, 100), None)
    } else if route == endpoints::GET_CREDITOR.route {
        (requests::get_creditor(CREDITOR_ID), None)
    } else if route == endpoints::CREATE_CREDITOR.route {
        (
            requests::create_creditor(&full_creditor()),
            Some(View::Creditor),
        )
    } else if route == endpoints::UPDATE_CREDITOR.route {
        (
            requests::update_creditor(&full_creditor()),
            Some(View::Creditor),
        )
    } else if route == endpoints::LIST_USERS.route {
        (requests::list_users(), None)
    } else if route == endpoints::GET_USER.route {
        (requests::get_user(USER_ID), None)
    } else if route == endpoints::CREATE_USER.route {
        (requests::create_user(&full_user()), Some(View::User))
    } else {
        panic!("no contract case for {route}: add one here")
    }
}

#[test]
fn every_request_body_validates_against_billectas_schemas() {
    for endpoint in endpoints::ALL {
        let (request, view) = request_for(endpoint);
        assert_eq!(request.endpoint, *endpoint);
        match (view, &request.body) {
            (Some(view), Some(body)) => {
                if let Err(violations) = schema::validate(view, body) {
                    panic!(
                        "{} sends a body that breaks {}: {violations}",
                        endpoint.route,
                        view.name()
                    );
                }
            }
            (None, None) => {}
            (view, body) => panic!(
                "{}: expected a body for {view:?}, the client sends {body:?}",
                endpoint.route
            ),
        }
        let template = endpoint.route.split_once(' ').unwrap().1;
        let prefix = template.split('{').next().unwrap().trim_end_matches('/');
        assert!(
            request.path.starts_with(prefix),
            "{} goes to {}",
            endpoint.route,
            request.path
        );
    }
}

#[test]
fn a_body_read_from_billecta_is_sent_back_unchanged_and_valid() {
    let original = serde_json::to_value(full_creditor()).unwrap();
    let read: Creditor = serde_json::from_value(original.clone()).unwrap();
    let sent = requests::update_creditor(&read).body.unwrap();
    assert_eq!(sent, original);
    schema::validate(View::Creditor, &sent).unwrap();
}

#[test]
fn an_unvalidated_body_would_be_caught() {
    // The oracle itself: the schemas refuse what Billecta refuses.
    let mut body = serde_json::to_value(full_creditor()).unwrap();
    body["CreditorBankInfo"]["PaymentMethods"][0]["Priority"] = serde_json::json!(0);
    body["NextInvoiceNumber"] = serde_json::json!(1023);
    body["Swish"] = serde_json::json!(true);
    let violations = schema::validate(View::Creditor, &body).unwrap_err();
    assert!(violations.names("$.CreditorBankInfo.PaymentMethods[0].Priority"));
    assert!(violations.names("$.NextInvoiceNumber"));
}

/// One raw HTTP request as the server received it.
struct Captured {
    head: String,
    body: String,
}

/// A server that records the first request and answers 200 with the JSON `body`.
async fn capture(body: &str) -> (String, tokio::task::JoinHandle<Captured>) {
    capture_status("200 OK", body).await
}

/// A server that records the first request and answers `status` with the JSON `body`.
async fn capture_status(status: &str, body: &str) -> (String, tokio::task::JoinHandle<Captured>) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        let (head, body) = loop {
            let read = socket.read(&mut buffer).await.unwrap();
            assert!(read > 0, "connection closed before the request ended");
            received.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break (head.to_owned(), body.to_owned());
                }
            }
        };
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
        Captured { head, body }
    });
    (base_url, task)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

fn client(base_url: &str) -> BillectaClient {
    let mut settings = ClientSettings::new(base_url);
    settings.timeout = Duration::from_secs(5);
    BillectaClient::new(Environment::Test, settings).unwrap()
}

#[tokio::test]
async fn authenticate_sends_basic_auth_and_an_explicit_empty_length() {
    let (base_url, server) =
        capture(r#"{"Value":"dG9rZW4tdmFsdWU=","Expires":"2027-11-24T10:00:00+01:00"}"#).await;
    let password = Secret::new("correct horse");
    let token = client(&base_url)
        .authenticate("payway@tidningen.se", &password, Deadline::none())
        .await
        .unwrap();
    assert_eq!(token.value.expose(), "dG9rZW4tdmFsdWU=");
    assert!(token.expires.is_some());

    let captured = server.await.unwrap();
    assert!(
        captured
            .head
            .starts_with("POST /v1/authentication/apiauthenticate HTTP/1.1"),
        "{}",
        captured.head
    );
    assert_eq!(header(&captured.head, "content-length"), Some("0"));
    assert_eq!(header(&captured.head, "accept"), Some("application/json"));
    let expected = format!(
        "Basic {}",
        BASE64.encode("payway@tidningen.se:correct horse")
    );
    assert_eq!(
        header(&captured.head, "authorization"),
        Some(expected.as_str())
    );
    assert!(captured.body.is_empty());
}

#[tokio::test]
async fn calls_carry_the_token_base64_encoded_and_json_bodies() {
    let (base_url, server) =
        capture(r#"{"PublicId":"0b8f8c5e-7d0c-4a57-a0b7-3f1f1b6a2d11"}"#).await;
    let token = Secret::new("dG9rZW4tdmFsdWU=");
    let id = client(&base_url)
        .create_creditor(&token, &full_creditor(), Deadline::none())
        .await
        .unwrap();
    assert_eq!(id, CREDITOR_ID);

    let captured = server.await.unwrap();
    assert!(
        captured
            .head
            .starts_with("POST /v1/creditors/creditor HTTP/1.1")
    );
    let expected = format!("SecureToken {}", BASE64.encode("dG9rZW4tdmFsdWU="));
    assert_eq!(
        header(&captured.head, "authorization"),
        Some(expected.as_str())
    );
    assert_eq!(
        header(&captured.head, "content-type"),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&captured.body).unwrap();
    schema::validate(View::Creditor, &body).unwrap();
    assert_eq!(body["Name"], "Tidningen i Norr AB");
    assert!(body.get("CreditorPublicId").is_none());
}

#[tokio::test]
async fn a_create_whose_answer_cannot_be_read_may_have_happened() {
    let (base_url, server) = capture("{}").await;
    let token = Secret::new("dG9rZW4tdmFsdWU=");
    let error = client(&base_url)
        .create_creditor(&token, &full_creditor(), Deadline::none())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), billecta_client::ErrorKind::Unexpected);
    assert!(
        error.outcome_unknown,
        "Billecta answered 2xx: the creditor exists"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_new_users_password_echoed_by_billecta_never_reaches_the_error() {
    let (base_url, server) = capture_status(
        "400 Bad Request",
        r#"{"Message":"Password 'Vinter-2026-hemligt' is too weak","ExternalErrorCode":null,"RequestContent":"{\"Password\":\"Vinter-2026-hemligt\"}"}"#,
    )
    .await;
    let token = Secret::new("dG9rZW4tdmFsdWU=");
    let user = User {
        password: Some(Secret::new("Vinter-2026-hemligt")),
        ..full_user()
    };
    let error = client(&base_url)
        .create_user(&token, &user, Deadline::none())
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("Vinter-2026-hemligt"), "{shown}");
    assert!(shown.contains("is too weak"), "{shown}");
    let captured = server.await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&captured.body).unwrap();
    assert_eq!(
        body["Password"], "Vinter-2026-hemligt",
        "the password itself was sent"
    );
    schema::validate(View::User, &body).unwrap();
}
