//! Properties of everything that reads untrusted text: the validators of caller input, and what the
//! client and the simulator read from the other side. For any input they answer (no panic), and what
//! they accept is in its one normalised form, which they accept again unchanged.

use billecta_client::timestamp;
use billecta_onboarding::domain::swedish::{
    Bankgiro, InvoiceNumber, OrganisationNumber, PostalCode,
};
use billecta_onboarding::domain::validate::{
    CreditorKey, Email, OnboardingKey, RequestId, TenantId, required_text,
};
use billecta_sim::schema::{self, View};
use proptest::prelude::*;

/// The Luhn check digit that completes `digits`.
fn check_digit(digits: &[u32]) -> u32 {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, digit)| {
            if index % 2 == 0 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *digit
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

fn with_check_digit(digits: Vec<u32>) -> String {
    let check = check_digit(&digits);
    digits
        .iter()
        .chain(std::iter::once(&check))
        .map(|digit| char::from_digit(*digit, 10).unwrap())
        .collect()
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("Name".to_owned()),
                    Just("OrgNo".to_owned()),
                    Just("CreditorBankInfo".to_owned()),
                    Just("PaymentMethods".to_owned()),
                    Just("Priority".to_owned()),
                    Just("Expires".to_owned()),
                    "[A-Za-z]{1,10}",
                ],
                inner,
                0..5
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validators_answer_any_text(text in ".{0,40}") {
        for parsed in [
            OrganisationNumber::parse("f", &text).map(|v| v.as_str().to_owned()),
            Bankgiro::parse("f", &text).map(|v| v.as_str().to_owned()),
            PostalCode::parse("f", &text).map(|v| v.as_str().to_owned()),
            InvoiceNumber::parse("f", &text).map(|v| v.to_string()),
            Email::parse("f", &text).map(|v| v.as_str().to_owned()),
            TenantId::parse("f", &text).map(|v| v.as_str().to_owned()),
            OnboardingKey::parse_name("f", &text).map(|v| v.name()),
            CreditorKey::parse_name("f", &text).map(|v| v.name()),
            RequestId::parse_optional("f", &text).map(|v| v.map(|id| id.as_str().to_owned()).unwrap_or_default()),
            required_text("f", &text, 20),
        ] {
            if let Err(violation) = parsed {
                prop_assert_eq!(violation.field, "f");
                prop_assert!(!violation.description.is_empty());
            }
        }
    }

    #[test]
    fn every_valid_organisation_number_is_accepted_in_every_spelling(
        mut digits in prop::collection::vec(0u32..10, 9),
        month_position in 2u32..10,
        century in prop_oneof![Just(""), Just("16"), Just("19"), Just("20")],
        dash in any::<bool>(),
    ) {
        // An organisation's number has 20 or more in digits 3-4.
        digits[2] = month_position;
        let ten = with_check_digit(digits);
        let spelled = if dash {
            format!("{century}{}-{}", &ten[..6], &ten[6..])
        } else {
            format!("{century}{ten}")
        };
        let parsed = OrganisationNumber::parse("org", &spelled).unwrap();
        let normal = format!("{}-{}", &ten[..6], &ten[6..]);
        prop_assert_eq!(parsed.as_str(), normal.as_str());
        prop_assert_eq!(OrganisationNumber::parse("org", parsed.as_str()).unwrap(), parsed);
    }

    #[test]
    fn a_wrong_check_digit_is_always_refused(digits in prop::collection::vec(0u32..10, 9), off in 1u32..10) {
        let valid = with_check_digit(digits);
        let last = valid.chars().last().unwrap().to_digit(10).unwrap();
        let wrong = format!("{}{}", &valid[..9], (last + off) % 10);
        prop_assert!(OrganisationNumber::parse("org", &wrong).is_err());
    }

    #[test]
    fn valid_bankgiros_and_postcodes_normalise_once(
        digits in prop::collection::vec(0u32..10, 6..8)
            .prop_filter("a bankgiro of zeros is refused", |digits| digits.iter().any(|d| *d != 0)),
        postcode in 10000u32..99999,
    ) {
        let bankgiro = with_check_digit(digits);
        let parsed = Bankgiro::parse("bg", &bankgiro).unwrap();
        prop_assert!(parsed.matches(&bankgiro));
        prop_assert_eq!(Bankgiro::parse("bg", parsed.as_str()).unwrap(), parsed.clone());
        let zip = PostalCode::parse("zip", &postcode.to_string()).unwrap();
        prop_assert_eq!(PostalCode::parse("zip", zip.as_str()).unwrap(), zip);
    }

    #[test]
    fn billecta_date_times_never_panic(text in ".{0,40}") {
        let _ = timestamp::parse(&text);
    }

    #[test]
    fn the_simulator_judges_any_body_without_panicking(body in json()) {
        for view in View::ALL {
            if let Err(violations) = schema::validate(*view, &body) {
                prop_assert!(!violations.violations.is_empty());
            }
        }
    }
}

/// The simulator's public API under arbitrary request bodies: always an answer Billecta would give
/// (400 for what does not parse or fit, never a 5xx), and nothing stored from a refused body.
#[test]
fn the_simulator_answers_any_request_body_like_billecta() {
    use billecta_client::{BillectaClient, ClientSettings, Deadline};
    use billecta_onboarding::domain::Environment;
    use billecta_onboarding::secret::Secret;
    use billecta_sim::{self as simulator, SimulatorConfig};
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (simulator, token) = runtime.block_on(async {
        let simulator = simulator::start(SimulatorConfig::new(simulator::Environment::Test))
            .await
            .unwrap();
        simulator
            .create_activated_account("fuzz@example.se", "Fuzz-2026")
            .unwrap();
        let client =
            BillectaClient::new(Environment::Test, ClientSettings::new(simulator.base_url()))
                .unwrap();
        let token = client
            .authenticate(
                "fuzz@example.se",
                &Secret::new("Fuzz-2026"),
                Deadline::none(),
            )
            .await
            .unwrap()
            .value;
        (simulator, token)
    });
    let http = reqwest::Client::new();
    let url = format!("{}/v1/creditors/creditor", simulator.base_url());
    let authorization = {
        use base64::Engine as _;
        format!(
            "SecureToken {}",
            base64::engine::general_purpose::STANDARD.encode(token.expose())
        )
    };
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        json().prop_map(|value| value.to_string().into_bytes()),
    ];
    let mut runner = TestRunner::new(Config::with_cases(128));
    runner
        .run(&bodies, |body| {
            let status = runtime.block_on(async {
                http.post(&url)
                    .header("Authorization", &authorization)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
            prop_assert!(
                status.as_u16() == 200 || status.as_u16() == 400,
                "{status} for {:?}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(
        simulator.request_count("POST /v1/creditors/creditor"),
        128,
        "every body got an answer"
    );
    // Only bodies that are valid creditors were stored.
    for creditor in simulator.state().creditors {
        schema::validate(View::Creditor, &creditor.view).unwrap();
    }
}
