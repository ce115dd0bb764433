//! The contract: Billecta's published view models (JSON Schema draft-04, in `schemas/`), adapted to
//! what travels on the wire, compiled once, and used on both sides. The simulator validates every
//! request body it accepts and every response body it sends; the client's contract tests validate
//! what the client sends and what it parses. One definition, so the two cannot drift apart.
//!
//! The published files describe the .NET models, not the JSON, in three ways that need adapting
//! before a validator can use them:
//!
//! - Enums are declared as integers with their names beside them
//!   (`{"type":"integer","enum":[0,1,-1],"x-enumNames":["Primary","Alternative","Unknown"]}`), but
//!   the API reads and writes the names. Each such enum becomes `{"type":"string","enum":[names]}`,
//!   with the name of the value 0 as its `default` (what .NET fills in for an omitted field).
//! - `format: "guid"` is not a standard format: it is checked here as 8-4-4-4-12 hexadecimal.
//!   `format: "date-time"` is replaced by a check that accepts every form Billecta is seen to use:
//!   RFC 3339, a space instead of `T`, fractional seconds, no offset at all (`2019-05-30T00:00:00`)
//!   and offsets without a colon (`+0200`).
//! - `CreditorsView` is `allOf: [array of CreditorView, object with Offset/Limit/...]`, which no
//!   instance satisfies. The list endpoint answers a JSON array (a .NET collection type serialises as
//!   an array and drops its paging properties), so the array branch is taken as the schema.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{JsonType, ValidationError, Validator};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

/// The view models the simulator serves or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    /// `SecureTokenView`: `{Value, Expires}`.
    SecureToken,
    /// `CreatedView`: `{PublicId}`, the answer to a create.
    Created,
    /// `CreditorView`: one creditor.
    Creditor,
    /// `CreditorsView`: the creditor list, a JSON array of `CreditorView`.
    Creditors,
    /// `ListOfCreditorSubView`: the light creditor list.
    CreditorSubs,
    /// `UserView`: one user.
    User,
    /// `ListOfUserView`: the user list.
    Users,
    /// `PasswordView`: `{Password}`.
    Password,
}

impl View {
    /// Every view, in declaration order.
    pub const ALL: &'static [View] = &[
        View::SecureToken,
        View::Created,
        View::Creditor,
        View::Creditors,
        View::CreditorSubs,
        View::User,
        View::Users,
        View::Password,
    ];

    /// The model's name in Billecta's documentation.
    pub fn name(self) -> &'static str {
        match self {
            View::SecureToken => "SecureTokenView",
            View::Created => "CreatedView",
            View::Creditor => "CreditorView",
            View::Creditors => "CreditorsView",
            View::CreditorSubs => "CreditorSubsView",
            View::User => "UserView",
            View::Users => "UsersView",
            View::Password => "PasswordView",
        }
    }

    /// The published schema, unchanged.
    fn published(self) -> &'static str {
        match self {
            View::SecureToken => include_str!("../schemas/SecureTokenView.json"),
            View::Created => include_str!("../schemas/CreatedView.json"),
            View::Creditor => include_str!("../schemas/CreditorView.json"),
            View::Creditors => include_str!("../schemas/CreditorsView.json"),
            View::CreditorSubs => include_str!("../schemas/CreditorSubsView.json"),
            View::User => include_str!("../schemas/UserView.json"),
            View::Users => include_str!("../schemas/UsersView.json"),
            View::Password => include_str!("../schemas/PasswordView.json"),
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One place where a body breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// Where, as `$.CreditorBankInfo.PaymentMethods[0].Priority`; `$` is the whole body.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every violation of one body against one view, in the order the schema lists the fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SchemaViolations {
    pub view: View,
    pub violations: Vec<SchemaViolation>,
}

impl SchemaViolations {
    /// The violations' paths, for logs that must not carry the values.
    pub fn paths(&self) -> Vec<&str> {
        self.violations
            .iter()
            .map(|violation| violation.path.as_str())
            .collect()
    }

    /// Whether some violation is at exactly `path`.
    pub fn names(&self, path: &str) -> bool {
        self.violations
            .iter()
            .any(|violation| violation.path == path)
    }
}

impl fmt::Display for SchemaViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, violation) in self.violations.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

/// Checks `body` against the wire form of `view`'s schema and lists every violation.
pub fn validate(view: View, body: &Value) -> Result<(), SchemaViolations> {
    let compiled = compiled(view);
    let mut violations = Vec::new();
    for error in compiled.validator.iter_errors(body) {
        collect(&error, &mut violations);
    }
    violations.dedup();
    if violations.is_empty() {
        return Ok(());
    }
    Err(SchemaViolations { view, violations })
}

/// The wire form of `view`'s schema, after the adaptations described in the module documentation.
pub fn schema(view: View) -> &'static Value {
    &compiled(view).schema
}

/// Whether `text` is a GUID as Billecta writes them: 8-4-4-4-12 hexadecimal digits.
pub fn is_guid(text: &str) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == GROUPS.len()
        && parts.iter().zip(GROUPS).all(|(part, length)| {
            part.len() == length && part.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

/// Whether `text` is a date-time in one of the forms Billecta is seen to use: `YYYY-MM-DD`, then `T`
/// or a space, `hh:mm:ss`, optional fractional seconds (1 to 9 digits), and an optional offset (`Z`,
/// `+hh:mm` or `+hhmm`). Without an offset the time is Stockholm local time.
pub fn is_billecta_date_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() < 19 {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (Some(year_digits), Some(month_digits), Some(day_digits)) =
        (digits(0..4), digits(5..7), digits(8..10))
    else {
        return false;
    };
    if bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11..13), digits(14..16), digits(17..19))
    else {
        return false;
    };
    if bytes[13] != b':' || bytes[16] != b':' || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let Ok(month) = time::Month::try_from(u8::try_from(month_digits).unwrap_or(0)) else {
        return false;
    };
    let (Ok(year), Ok(day)) = (i32::try_from(year_digits), u8::try_from(day_digits)) else {
        return false;
    };
    if time::Date::from_calendar_date(year, month, day).is_err() {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 || length > 9 {
            return false;
        }
        rest = &fraction[length..];
    }
    is_offset(rest)
}

/// `""`, `Z`, `+hh:mm`, `-hh:mm`, `+hhmm` or `-hhmm`.
fn is_offset(text: &str) -> bool {
    if text.is_empty() || text == "Z" || text == "z" {
        return true;
    }
    let Some(unsigned) = text.strip_prefix('+').or_else(|| text.strip_prefix('-')) else {
        return false;
    };
    let compact = unsigned.replacen(':', "", usize::from(unsigned.len() == 5));
    if compact.len() != 4 || !compact.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let hours: u32 = compact[..2].parse().unwrap_or(99);
    let minutes: u32 = compact[2..].parse().unwrap_or(99);
    hours <= 23 && minutes <= 59
}

/// Fills in every property the schema declares and the body omits, with the value a .NET model
/// serialises for it when nothing was set: `null` for nullable fields, `false`, `0`, the enum's zero
/// name, the empty GUID, `0001-01-01T00:00:00`. Nested objects and array items are completed too.
/// Properties the schema does not declare are dropped. This is what Billecta stores and returns
/// after it binds a request body to its model.
pub(crate) fn complete(view: View, body: &Value) -> Value {
    let root = schema(view);
    complete_node(root, root, body)
}

struct Compiled {
    schema: Value,
    validator: Validator,
}

static COMPILED: LazyLock<HashMap<View, Compiled>> = LazyLock::new(|| {
    View::ALL
        .iter()
        .map(|&view| (view, compile(view)))
        .collect()
});

fn compiled(view: View) -> &'static Compiled {
    COMPILED
        .get(&view)
        .expect("every view is compiled at first use")
}

fn compile(view: View) -> Compiled {
    let published: Value = serde_json::from_str(view.published())
        .unwrap_or_else(|error| panic!("the embedded {view} schema is not JSON: {error}"));
    let schema = adapt(view, published);
    let validator = jsonschema::draft4::options()
        .with_format("guid", is_guid)
        .with_format("date-time", is_billecta_date_time)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|error| panic!("the adapted {view} schema does not compile: {error}"));
    Compiled { schema, validator }
}

fn adapt(view: View, mut schema: Value) -> Value {
    if view == View::Creditors {
        take_array_branch(&mut schema);
    }
    adapt_enums(&mut schema);
    schema
}

/// Replaces the root `allOf` with its array branch, keeping `definitions`.
fn take_array_branch(schema: &mut Value) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    let Some(Value::Array(branches)) = root.remove("allOf") else {
        return;
    };
    let array = branches
        .into_iter()
        .find(|branch| branch.get("type") == Some(&Value::from("array")));
    if let Some(Value::Object(array)) = array {
        root.extend(array);
    }
}

/// Integer enums with `x-enumNames` become string enums of the names.
fn adapt_enums(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if let Some(names) = integer_enum_names(map) {
                let zero = map
                    .get("enum")
                    .and_then(Value::as_array)
                    .and_then(|values| values.iter().position(|value| value == &Value::from(0)))
                    .and_then(|index| names.get(index).cloned())
                    .or_else(|| names.first().cloned());
                map.remove("x-enumNames");
                map.insert("type".into(), Value::from("string"));
                map.insert("enum".into(), Value::Array(names));
                if let Some(zero_name) = zero {
                    map.insert("default".into(), zero_name);
                }
            }
            for child in map.values_mut() {
                adapt_enums(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(adapt_enums),
        _ => {}
    }
}

fn integer_enum_names(map: &Map<String, Value>) -> Option<Vec<Value>> {
    let names = map.get("x-enumNames")?.as_array()?;
    let values = map.get("enum")?.as_array()?;
    let is_integer = map.get("type") == Some(&Value::from("integer"));
    (is_integer && names.len() == values.len() && names.iter().all(Value::is_string))
        .then(|| names.clone())
}

/// Turns one validator error into violations. A `oneOf` between `null` and an object (how the
/// schemas spell a nullable nested model) is unwrapped to the errors inside the object, so the
/// path names the field that is wrong rather than the whole nested model.
fn collect(error: &ValidationError<'_>, out: &mut Vec<SchemaViolation>) {
    match error.kind() {
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            let parent = error.instance_path().as_str();
            let relevant: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|branch| !is_null_mismatch(branch, parent))
                .collect();
            if let [branch] = relevant.as_slice() {
                branch.iter().for_each(|inner| collect(inner, out));
                return;
            }
            out.push(SchemaViolation {
                path: render_path(error),
                message: format!(
                    "{} is not a valid value here",
                    short(error.instance().as_ref())
                ),
            });
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let parent = render_path(error);
            for name in unexpected {
                out.push(SchemaViolation {
                    path: join_property(&parent, name),
                    message: "unknown field: additional properties are not allowed".to_owned(),
                });
            }
        }
        _ => out.push(SchemaViolation {
            path: render_path(error),
            message: error.to_string(),
        }),
    }
}

/// A branch whose only complaint is that the value is not `null`, at the value itself.
fn is_null_mismatch(branch: &[ValidationError<'_>], parent: &str) -> bool {
    let [only] = branch else {
        return false;
    };
    only.instance_path().as_str() == parent
        && matches!(
            only.kind(),
            ValidationErrorKind::Type {
                kind: TypeKind::Single(JsonType::Null)
            }
        )
}

/// A value for a message, cut short so a whole nested object does not end up in it.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        return text;
    }
    let head: String = text.chars().take(57).collect();
    format!("{head}...")
}

fn render_path(error: &ValidationError<'_>) -> String {
    let mut path = String::from("$");
    for segment in error.instance_path().segments() {
        match segment {
            LocationSegment::Index(index) => path.push_str(&format!("[{index}]")),
            LocationSegment::Property(name) => path = join_property(&path, &name),
        }
    }
    path
}

fn join_property(parent: &str, name: &str) -> String {
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{parent}.{name}")
    } else {
        format!("{parent}[{}]", Value::from(name))
    }
}

/// Resolves a local `$ref` (`#/definitions/X`).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
        return node;
    };
    let target = reference
        .strip_prefix('#')
        .and_then(|pointer| root.pointer(pointer));
    target.map_or(node, |found| resolve(root, found))
}

/// The non-null branch of a `oneOf`/`anyOf`, if the node is one.
fn non_null_branch<'a>(root: &'a Value, node: &'a Value) -> Option<&'a Value> {
    let branches = node
        .get("oneOf")
        .or_else(|| node.get("anyOf"))?
        .as_array()?;
    branches
        .iter()
        .map(|branch| resolve(root, branch))
        .find(|branch| branch.get("type") != Some(&Value::from("null")))
}

fn types(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(single)) => vec![single.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn complete_node(root: &Value, given_node: &Value, value: &Value) -> Value {
    let node = resolve(root, given_node);
    if value.is_null() {
        return Value::Null;
    }
    if let Some(branch) = non_null_branch(root, node) {
        return complete_node(root, branch, value);
    }
    match value {
        Value::Object(given) => {
            let Some(properties) = node.get("properties").and_then(Value::as_object) else {
                return value.clone();
            };
            let completed = properties
                .iter()
                .map(|(name, property)| {
                    let filled = match given.get(name) {
                        Some(inner) => complete_node(root, property, inner),
                        None => default_for(root, property),
                    };
                    (name.clone(), filled)
                })
                .collect();
            Value::Object(completed)
        }
        Value::Array(items) => match node.get("items") {
            Some(item) => Value::Array(
                items
                    .iter()
                    .map(|inner| complete_node(root, item, inner))
                    .collect(),
            ),
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

fn default_for(root: &Value, given_node: &Value) -> Value {
    let node = resolve(root, given_node);
    if non_null_branch(root, node).is_some() {
        return Value::Null;
    }
    let kinds = types(node);
    if kinds.contains(&"null") {
        return Value::Null;
    }
    if let Some(default) = node.get("default") {
        return default.clone();
    }
    match kinds.first().copied() {
        Some("boolean") => Value::Bool(false),
        Some("integer" | "number") => Value::from(0),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => complete_node(root, node, &Value::Object(Map::new())),
        Some("string") => match node.get("format").and_then(Value::as_str) {
            Some("guid") => Value::from(uuid::Uuid::nil().to_string()),
            Some("date-time") => Value::from("0001-01-01T00:00:00"),
            _ => Value::from(""),
        },
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn creditor() -> Value {
        json!({
            "CreditorPublicId": "6f1c2a4e-1d2b-4c3d-9e8f-0123456789ab",
            "OrgNo": "556888-5645",
            "Name": "Acme AB",
            "Address": "Storgatan 1",
            "ZipCode": "111 22",
            "City": "Stockholm",
            "CountryCode": "SE",
            "IsEnabled": true,
            "UseCentRounding": false,
            "UsesClientFundForInvoicing": false,
            "NextInvoiceNumber": "1023",
            "CreditorInvoiceAddress": {"Email": "acme@example.com", "DeliveryMethod": "Email"},
            "CreditorBankInfo": {
                "UsesClientFund": false,
                "PaymentMethod": "BankGiro",
                "BankgiroNo": "123-4567",
                "PaymentMethods": [
                    {"Priority": "Primary", "PaymentMethod": "BankGiro", "BankgiroNo": "123-4567", "Verified": false}
                ],
                "CreditorOutgoingBankgiroes": [
                    {"BankgiroNo": "765-4321", "IsActive": true, "BankgiroApproved": false}
                ]
            }
        })
    }

    fn violations(view: View, body: &Value) -> SchemaViolations {
        validate(view, body).expect_err("the body is invalid")
    }

    /// The violations of the valid [`creditor`] once `spoil` has changed it.
    fn spoiled_creditor(spoil: impl FnOnce(&mut Value)) -> SchemaViolations {
        let mut body = creditor();
        spoil(&mut body);
        violations(View::Creditor, &body)
    }

    #[test]
    fn every_view_compiles() {
        for &view in View::ALL {
            assert!(schema(view).is_object(), "{view}");
        }
    }

    #[test]
    fn a_valid_creditor_passes() {
        assert_eq!(validate(View::Creditor, &creditor()), Ok(()));
    }

    #[test]
    fn the_creditor_list_is_an_array_of_creditors() {
        assert_eq!(validate(View::Creditors, &json!([creditor()])), Ok(()));
        let wrong = violations(View::Creditors, &json!({"Offset": 0, "Limit": 10}));
        assert!(wrong.names("$"), "{wrong}");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let wrong =
            spoiled_creditor(|body| body["CreditorBankInfo"]["SwishNumber"] = json!("1231234567"));
        assert!(wrong.names("$.CreditorBankInfo.SwishNumber"), "{wrong}");
        assert!(wrong.to_string().contains("unknown field"), "{wrong}");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let wrong = spoiled_creditor(|body| body["IsEnabled"] = json!("yes"));
        assert_eq!(wrong.paths(), vec!["$.IsEnabled"]);
        assert!(wrong.to_string().contains("boolean"), "{wrong}");
    }

    #[test]
    fn an_integer_enum_is_refused() {
        let wrong = spoiled_creditor(|body| {
            body["CreditorBankInfo"]["PaymentMethods"][0]["Priority"] = json!(0)
        });
        assert!(
            wrong.names("$.CreditorBankInfo.PaymentMethods[0].Priority"),
            "{wrong}"
        );
    }

    #[test]
    fn an_unknown_enum_name_is_refused() {
        let wrong = spoiled_creditor(|body| {
            body["CreditorBankInfo"]["PaymentMethods"][0]["Priority"] = json!("First")
        });
        assert_eq!(
            wrong.paths(),
            vec!["$.CreditorBankInfo.PaymentMethods[0].Priority"]
        );
        assert!(wrong.to_string().contains("\"First\""), "{wrong}");
        assert!(wrong.to_string().contains("Primary"), "{wrong}");
    }

    #[test]
    fn a_bad_guid_is_refused() {
        let wrong =
            spoiled_creditor(|body| body["CreditorPublicId"] = json!("6f1c2a4e-1d2b-4c3d-9e8f"));
        assert_eq!(wrong.paths(), vec!["$.CreditorPublicId"]);
        assert!(wrong.to_string().contains("guid"), "{wrong}");
    }

    #[test]
    fn a_nested_null_model_is_allowed_but_not_another_type() {
        let mut body = creditor();
        body["CreditorBankInfo"] = Value::Null;
        assert_eq!(validate(View::Creditor, &body), Ok(()));
        body["CreditorBankInfo"] = json!("BankGiro");
        let wrong = violations(View::Creditor, &body);
        assert_eq!(wrong.paths(), vec!["$.CreditorBankInfo"]);
    }

    #[test]
    fn every_violation_is_listed() {
        let wrong = spoiled_creditor(|body| {
            body["IsEnabled"] = json!(1);
            body["Name"] = json!(5);
        });
        assert!(
            wrong.names("$.IsEnabled") && wrong.names("$.Name"),
            "{wrong}"
        );
        assert_eq!(wrong.to_string().matches("; ").count(), 1, "{wrong}");
    }

    #[test]
    fn billecta_date_time_forms_are_accepted() {
        for text in [
            "2019-01-07 15:41:26+01:00",
            "2023-02-01T06:47:07+01:00",
            "2021-06-26T20:59:01.864227+00:00",
            "2019-05-30T00:00:00",
            "0001-01-01T00:00:00",
            "2017-10-19 00:00:00+0200",
            "2024-02-29T23:59:59.1234567Z",
        ] {
            assert!(is_billecta_date_time(text), "{text}");
        }
        for text in [
            "2019-01-07",
            "2019-13-07T00:00:00",
            "2023-02-29T00:00:00",
            "2019-01-07T24:00:00",
            "2019-01-07T10:00:00+1",
            "2019-01-07T10:00:00.",
            "2019-01-07T10:00:00 +01:00",
            "07/01/2019 10:00:00",
        ] {
            assert!(!is_billecta_date_time(text), "{text}");
        }
    }

    #[test]
    fn date_times_are_checked_in_bodies() {
        let token = json!({"Value": "abc", "Expires": "2019-05-30T00:00:00"});
        assert_eq!(validate(View::SecureToken, &token), Ok(()));
        let wrong = violations(
            View::SecureToken,
            &json!({"Value": "abc", "Expires": "tomorrow"}),
        );
        assert_eq!(wrong.paths(), vec!["$.Expires"]);
    }

    #[test]
    fn guids_are_eight_four_four_four_twelve_hex() {
        assert!(is_guid("00000000-0000-0000-0000-000000000000"));
        assert!(is_guid("6F1C2A4E-1D2B-4C3D-9E8F-0123456789AB"));
        assert!(!is_guid("6f1c2a4e1d2b4c3d9e8f0123456789ab"));
        assert!(!is_guid("{6f1c2a4e-1d2b-4c3d-9e8f-0123456789ab}"));
        assert!(!is_guid("6f1c2a4e-1d2b-4c3d-9e8f-0123456789ag"));
    }

    #[test]
    fn completion_fills_dotnet_defaults() {
        let completed = complete(
            View::Creditor,
            &json!({"Name": "Acme AB", "CreditorInvoiceAddress": {"Email": "a@example.com"}}),
        );
        assert_eq!(completed["Name"], "Acme AB");
        assert_eq!(completed["OrgNo"], Value::Null);
        assert_eq!(completed["IsEnabled"], false);
        assert_eq!(
            completed["CreditorPublicId"],
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            completed["CreditorInvoiceAddress"]["DeliveryMethod"],
            "Email"
        );
        assert_eq!(completed["CreditorInvoiceAddress"]["City"], Value::Null);
        assert_eq!(validate(View::Creditor, &completed), Ok(()));
        let user = complete(View::User, &json!({"Username": "api"}));
        assert_eq!(user["Language"], "SV");
        assert_eq!(validate(View::User, &user), Ok(()));
    }
}
