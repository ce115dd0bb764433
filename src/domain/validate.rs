//! Parsing of caller input into domain values. A value of one of these types is valid by
//! construction, so nothing past the transport re-checks strings.
//!
//! Every parser reports problems as [`FieldViolation`]s naming the request field, so that a caller
//! gets one violation per bad field in a single answer.

use super::{Environment, Micros};
use std::fmt;

/// One bad field of a request: its path in the request (such as `account.email`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects violations while a request is parsed, so that every bad field is reported at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the parsed value, or records why it was rejected.
    pub fn check<T>(&mut self, parsed: Result<T, FieldViolation>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(violation) => {
                self.0.push(violation);
                None
            }
        }
    }

    pub fn push(&mut self, violation: FieldViolation) {
        self.0.push(violation);
    }

    /// `Ok(())` when nothing was rejected, else every violation.
    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// A Payway organisation id: 1-63 characters of lower-case letters, digits and '-', starting with a
/// letter and not ending with '-', so it fits in a resource name and a DNS label alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        const RULE: &str =
            "must be 1-63 characters of a-z, 0-9 and '-', start with a letter and not end with '-'";
        let valid_chars = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let starts_with_letter = text.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if text.is_empty() {
            return Err(FieldViolation::new(field, format!("is required; {RULE}")));
        }
        if text.len() > 63 || !valid_chars || !starts_with_letter || text.ends_with('-') {
            return Err(FieldViolation::new(field, RULE));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one onboarding: `tenants/{tenant}/environments/{environment}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnboardingKey {
    pub tenant: TenantId,
    pub environment: Environment,
}

impl OnboardingKey {
    pub fn new(tenant: TenantId, environment: Environment) -> Self {
        Self {
            tenant,
            environment,
        }
    }

    /// Parses a resource name of the form `tenants/{tenant}/environments/{test|production}`.
    pub fn parse_name(field: &str, name: &str) -> Result<Self, FieldViolation> {
        const FORM: &str = "must have the form tenants/{tenant}/environments/{test|production}";
        let mut parts = name.split('/');
        let parts = [(); 5].map(|()| parts.next());
        match parts {
            [
                Some("tenants"),
                Some(tenant),
                Some("environments"),
                Some(environment),
                None,
            ] => {
                let tenant = TenantId::parse(field, tenant).map_err(|v| {
                    FieldViolation::new(field, format!("{FORM}; tenant {}", v.description))
                })?;
                let environment = Environment::parse(environment).ok_or_else(|| {
                    FieldViolation::new(
                        field,
                        format!("{FORM}; the environment is test or production"),
                    )
                })?;
                Ok(Self::new(tenant, environment))
            }
            _ if name.is_empty() => Err(FieldViolation::new(field, format!("is required; {FORM}"))),
            _ => Err(FieldViolation::new(field, FORM)),
        }
    }

    /// The resource name, `tenants/{tenant}/environments/{environment}`.
    pub fn name(&self) -> String {
        format!("tenants/{}/environments/{}", self.tenant, self.environment)
    }

    /// The resource name of the `sequence`th event of this onboarding.
    pub fn event_name(&self, sequence: i64) -> String {
        format!("{}/events/{sequence}", self.name())
    }

    /// Parses an event name of this onboarding back to its sequence number.
    pub fn parse_event_name(&self, field: &str, event: &str) -> Result<i64, FieldViolation> {
        let prefix = format!("{}/events/", self.name());
        event
            .strip_prefix(&prefix)
            .and_then(|sequence| sequence.parse::<i64>().ok())
            .filter(|sequence| *sequence >= 0)
            .ok_or_else(|| {
                FieldViolation::new(
                    field,
                    format!("must be an event name of this onboarding, {prefix}{{n}}"),
                )
            })
    }
}

impl fmt::Display for OnboardingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenants/{}/environments/{}",
            self.tenant, self.environment
        )
    }
}

/// Identifies one creditor: `tenants/{tenant}/environments/{environment}/creditors/{creditor}`, where
/// `{creditor}` is its organisation number, `NNNNNN-NNNN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CreditorKey {
    pub onboarding: OnboardingKey,
    /// The creditor's resource id.
    pub creditor: String,
}

impl CreditorKey {
    pub fn parse_name(field: &str, name: &str) -> Result<Self, FieldViolation> {
        const FORM: &str = "must have the form tenants/{tenant}/environments/{test|production}/creditors/{organisation number}";
        let Some((onboarding, creditor)) = name.rsplit_once("/creditors/") else {
            return Err(FieldViolation::new(
                field,
                if name.is_empty() {
                    format!("is required; {FORM}")
                } else {
                    FORM.to_owned()
                },
            ));
        };
        let onboarding = OnboardingKey::parse_name(field, onboarding)
            .map_err(|_| FieldViolation::new(field, FORM))?;
        let creditor = super::swedish::OrganisationNumber::parse(field, creditor)
            .map_err(|_| FieldViolation::new(field, FORM))?;
        Ok(Self {
            onboarding,
            creditor: creditor.into_string(),
        })
    }

    /// The resource name.
    pub fn name(&self) -> String {
        format!("{}/creditors/{}", self.onboarding.name(), self.creditor)
    }

    /// Whether `name` is this creditor's resource name (as [`Self::name`] would make it).
    pub fn is_named(&self, name: &str) -> bool {
        (|| {
            let rest = name.strip_prefix("tenants/")?;
            let rest = rest.strip_prefix(self.onboarding.tenant.as_str())?;
            let rest = rest.strip_prefix("/environments/")?;
            let rest = rest.strip_prefix(self.onboarding.environment.as_str())?;
            rest.strip_prefix("/creditors/")
        })()
        .is_some_and(|creditor| creditor == self.creditor)
    }
}

/// A caller's idempotency key: 1-128 characters of letters, digits and `-_.:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// An empty id means the caller did not ask for idempotency.
    pub fn parse_optional(field: &str, text: &str) -> Result<Option<Self>, FieldViolation> {
        if text.is_empty() {
            return Ok(None);
        }
        let valid = text.len() <= 128
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !valid {
            return Err(FieldViolation::new(
                field,
                "must be at most 128 characters of letters, digits, '-', '_', '.' and ':'",
            ));
        }
        Ok(Some(Self(text.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text a person typed: trimmed, 1..=`max` characters, no control characters.
pub fn required_text(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if trimmed.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// An e-mail address that mail can be delivered to: `local@domain.tld`, at most 254 characters, a
/// local part of at most 64, a domain of dot-separated labels of letters, digits and '-'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        let text = text.trim();
        if text.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        let invalid =
            || FieldViolation::new(field, "must be an e-mail address such as name@example.se");
        let (local, domain) = text.rsplit_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
        if text.len() > 254 || !local_ok || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A point in time a person attests: required, not before 2000, and not more than five minutes in
/// the future (clock skew between the caller and us).
pub fn past_time(field: &str, time: Option<Micros>, now: Micros) -> Result<Micros, FieldViolation> {
    const YEAR_2000: Micros = 946_684_800_000_000;
    const SKEW: Micros = 5 * 60 * 1_000_000;
    match time {
        None => Err(FieldViolation::new(field, "is required")),
        Some(time) if time < YEAR_2000 => {
            Err(FieldViolation::new(field, "must be after 2000-01-01"))
        }
        Some(time) if time > now + SKEW => {
            Err(FieldViolation::new(field, "must not be in the future"))
        }
        Some(time) => Ok(time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creditor_names_are_parsed_and_checked() {
        let key = CreditorKey::parse_name(
            "name",
            "tenants/gp/environments/production/creditors/556036-0793",
        )
        .unwrap();
        assert_eq!(key.onboarding.environment, Environment::Production);
        assert_eq!(key.creditor, "556036-0793");
        assert_eq!(
            key.name(),
            "tenants/gp/environments/production/creditors/556036-0793"
        );
        for bad in [
            "",
            "tenants/gp/environments/test",
            "tenants/gp/environments/test/creditors/556036-0794",
            "tenants/GP/environments/test/creditors/556036-0793",
        ] {
            assert!(CreditorKey::parse_name("name", bad).is_err(), "{bad:?}");
        }
        // Other spellings of the number name the same creditor.
        let spelled = CreditorKey::parse_name(
            "name",
            "tenants/gp/environments/production/creditors/165560360793",
        )
        .unwrap();
        assert_eq!(spelled, key);
    }

    #[test]
    fn a_creditor_key_knows_its_name_and_no_other() {
        let key = CreditorKey::parse_name(
            "name",
            "tenants/gp/environments/production/creditors/556036-0793",
        )
        .unwrap();
        assert!(key.is_named(&key.name()));
        for other in [
            "",
            "tenants/gp/environments/production",
            "tenants/gp/environments/production/creditors/",
            "tenants/gp/environments/production/creditors/556036-07931",
            "tenants/gp/environments/production/creditors/5560360793",
            "tenants/gp/environments/test/creditors/556036-0793",
            "tenants/gpx/environments/production/creditors/556036-0793",
            "tenants/g/environments/production/creditors/556036-0793",
            "tenant/gp/environments/production/creditors/556036-0793",
            "tenants/gp/environments/production/creditor/556036-0793",
        ] {
            assert!(!key.is_named(other), "{other:?}");
        }
    }

    #[test]
    fn tenant_ids_follow_dns_label_rules() {
        for good in ["a", "gp", "gota-media", "tenant-42", &"a".repeat(63)] {
            assert!(TenantId::parse("tenant", good).is_ok(), "{good}");
        }
        for bad in ["", "A", "1abc", "ab-", "a_b", "a b", "å", &"a".repeat(64)] {
            let violation = TenantId::parse("tenant", bad).unwrap_err();
            assert_eq!(violation.field, "tenant");
        }
    }

    #[test]
    fn onboarding_names_round_trip() {
        let key = OnboardingKey::parse_name("name", "tenants/gp/environments/production").unwrap();
        assert_eq!(key.tenant.as_str(), "gp");
        assert_eq!(key.environment, Environment::Production);
        assert_eq!(key.name(), "tenants/gp/environments/production");
        assert_eq!(
            key.parse_event_name("after", &key.event_name(7)).unwrap(),
            7
        );
        assert!(
            key.parse_event_name("after", "tenants/x/environments/test/events/7")
                .is_err()
        );
        for bad in [
            "",
            "tenants/gp",
            "tenants/gp/environments/stage",
            "tenants/GP/environments/test",
            "x/gp/environments/test/extra",
        ] {
            assert!(OnboardingKey::parse_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_need_a_deliverable_shape() {
        for good in [
            "a@b.se",
            "payway.billecta@example.com",
            "first+tag@sub.example.co.uk",
        ] {
            assert!(Email::parse("email", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "plain",
            "@b.se",
            "a@",
            "a@b",
            "a@b.s",
            "a b@c.se",
            "a@-b.se",
            "a..b@c.se",
            "a@b.123",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_are_bounded() {
        assert_eq!(RequestId::parse_optional("request_id", "").unwrap(), None);
        assert!(
            RequestId::parse_optional("request_id", "0f8c-11:ab.c_d")
                .unwrap()
                .is_some()
        );
        assert!(RequestId::parse_optional("request_id", "has space").is_err());
        assert!(RequestId::parse_optional("request_id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn attested_times_are_in_the_past() {
        let now = 1_800_000_000_000_000;
        assert!(past_time("t", None, now).is_err());
        assert!(past_time("t", Some(now + 3_600_000_000), now).is_err());
        assert!(past_time("t", Some(100), now).is_err());
        assert_eq!(past_time("t", Some(now - 1), now).unwrap(), now - 1);
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(required_text("f", "  Anna  ", 10).unwrap(), "Anna");
        assert!(required_text("f", "   ", 10).is_err());
        assert!(required_text("f", "elevenchars", 10).is_err());
        assert!(required_text("f", "a\u{7}b", 10).is_err());
    }
}
