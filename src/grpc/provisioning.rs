//! The RPCs that change an onboarding, each as what sets it apart from the others: how its request
//! parses (every bad field at once, before anything reaches Billecta), the operation it runs and what
//! it answers. The skeleton they share is [`super::mutating`]. Also `PaymentConfigurationService`.

use super::mutating::{MutatingRpc, Parsed};
use super::{call_context, checked, convert, permitted, within};
use crate::auth::Permission;
use crate::domain::onboarding::{
    CompanySettings, InvoiceSettings, OnboardingRecord, PaymentTerms, Webhooks,
};
use crate::domain::swedish::{self, Bankgiro, InvoiceNumber, OrganisationNumber, PostalCode};
use crate::domain::validate::{
    self, CreditorKey, FieldViolation, OnboardingKey, TenantId, Violations,
};
use crate::domain::{Environment, Micros, Stage, now_micros};
use crate::error::Error;
use crate::operations::{ApiCredentials, Check, NewCreditor, Operations};
use crate::proto;
use crate::secret::Secret;
use tonic::{Request, Response, Status};

/// Longest accepted attestation texts.
const MAX_TEXT: usize = 200;
/// Longest company name, address and city.
const MAX_NAME: usize = 200;
/// Longest Payway title.
const MAX_TITLE: usize = 100;
/// Longest reason for skipping a stage.
const MAX_REASON: usize = 500;
/// Most webhook events one attestation lists.
const MAX_EVENTS: usize = 50;
/// Longest password or username.
const MAX_CREDENTIAL: usize = 256;

/// The answers that are the onboarding as the call left it.
macro_rules! onboarding_answer {
    ($($response:ty),* $(,)?) => {$(
        impl From<OnboardingRecord> for $response {
            fn from(record: OnboardingRecord) -> Self {
                Self {
                    onboarding: Some(convert::onboarding(&record)),
                }
            }
        }
    )*};
}

onboarding_answer!(
    proto::CreateOnboardingResponse,
    proto::RecordAgreementResponse,
    proto::RegisterAccountResponse,
    proto::ConfirmAccountActivationResponse,
    proto::UpdateCompanySettingsResponse,
    proto::UpdateInvoiceSettingsResponse,
    proto::SkipStageResponse,
    proto::RegisterApiCredentialsResponse,
    proto::CreateApiUserResponse,
    proto::RecordWebhookSetupResponse,
    proto::PromoteToProductionResponse,
);

/// The onboarding and the creditor created (or adopted), named by its resource name.
impl From<(OnboardingRecord, String)> for proto::CreateCreditorResponse {
    fn from((record, name): (OnboardingRecord, String)) -> Self {
        let onboarding = convert::onboarding(&record);
        let creditor = onboarding
            .creditors
            .iter()
            .find(|creditor| creditor.name == name)
            .cloned();
        Self {
            onboarding: Some(onboarding),
            creditor,
        }
    }
}

impl From<(OnboardingRecord, Vec<Check>)> for proto::ValidateOnboardingResponse {
    fn from((record, checks): (OnboardingRecord, Vec<Check>)) -> Self {
        Self {
            onboarding: Some(convert::onboarding(&record)),
            checks: checks.iter().map(convert::check).collect(),
        }
    }
}

impl MutatingRpc for proto::CreateOnboardingRequest {
    const METHOD: &'static str = "CreateOnboarding";
    const DETACHED: bool = false;
    /// The tenant, and the environment if it parsed: a tenant outside the caller's is refused
    /// whatever the environment says.
    type Target = (TenantId, Option<Environment>);
    type Input = ();
    type Output = OnboardingRecord;
    type Response = proto::CreateOnboardingResponse;

    fn target(&self, violations: &mut Violations) -> Option<Self::Target> {
        let tenant = violations.check(TenantId::parse("tenant", &self.tenant));
        let environment =
            violations.check(convert::parse_environment("environment", self.environment));
        tenant.map(|tenant| (tenant, environment))
    }

    fn input(&self, _: &mut Violations) -> Option<()> {
        Some(())
    }

    async fn run(
        operations: &Operations,
        (call, (tenant, environment), mutation, _): Parsed<'_, Self::Target>,
        (): (),
    ) -> Result<OnboardingRecord, Error> {
        let key = OnboardingKey::new(tenant.clone(), checked(*environment));
        let record = operations.create_onboarding(call, &key, mutation).await?;
        tracing::info!(onboarding = %key, validate_only = mutation.validate_only, "onboarding created");
        Ok(record)
    }
}

impl MutatingRpc for proto::RecordAgreementRequest {
    const METHOD: &'static str = "RecordAgreement";
    const DETACHED: bool = false;
    type Target = OnboardingKey;
    /// Who attested it, when it was agreed, and its reference.
    type Input = (String, Micros, String);
    type Output = OnboardingRecord;
    type Response = proto::RecordAgreementResponse;

    fn target(&self, violations: &mut Violations) -> Option<OnboardingKey> {
        violations.check(OnboardingKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        let attested_by = violations.check(validate::required_text(
            "attested_by",
            &self.attested_by,
            MAX_TEXT,
        ));
        let agreement_time = violations.check(validate::past_time(
            "agreement_time",
            self.agreement_time.as_ref().map(convert::micros),
            now_micros(),
        ));
        let reference = violations.check(validate::required_text(
            "reference",
            &self.reference,
            MAX_TEXT,
        ));
        Some((attested_by?, agreement_time?, reference?))
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, _): Parsed<'_, OnboardingKey>,
        (attested_by, agreement_time, reference): Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .record_agreement(call, key, mutation, attested_by, agreement_time, reference)
            .await
    }
}

impl MutatingRpc for proto::RegisterAccountRequest {
    const METHOD: &'static str = "RegisterAccount";
    const DETACHED: bool = false;
    type Target = OnboardingKey;
    /// The person's full name, the company's name and the e-mail address.
    type Input = (String, String, String);
    type Output = OnboardingRecord;
    type Response = proto::RegisterAccountResponse;

    fn target(&self, violations: &mut Violations) -> Option<OnboardingKey> {
        violations.check(OnboardingKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        let account = self.account.clone().unwrap_or_default();
        if self.account.is_none() {
            violations.push(FieldViolation::new(
                "account",
                "is required: full_name, company_name and email",
            ));
        }
        let full_name = violations.check(validate::required_text(
            "account.full_name",
            &account.full_name,
            MAX_TEXT,
        ));
        let company_name = violations.check(validate::required_text(
            "account.company_name",
            &account.company_name,
            MAX_TEXT,
        ));
        let email = violations.check(validate::Email::parse("account.email", &account.email));
        Some((full_name?, company_name?, email?.into_string()))
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, _): Parsed<'_, OnboardingKey>,
        (full_name, company_name, email): Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .register_account(call, key, mutation, full_name, company_name, email)
            .await
    }
}

/// A secret as typed: required, not blank, at most `MAX_CREDENTIAL` characters. Never echoed.
fn secret(field: &str, text: &str) -> Result<Secret, FieldViolation> {
    if text.trim().is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if text.chars().count() > MAX_CREDENTIAL {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_CREDENTIAL} characters"),
        ));
    }
    Ok(Secret::new(text))
}

impl MutatingRpc for proto::ConfirmAccountActivationRequest {
    const METHOD: &'static str = "ConfirmAccountActivation";
    const DETACHED: bool = true;
    type Target = OnboardingKey;
    /// The username and password the person chose in Billecta's portal.
    type Input = (String, Secret);
    type Output = OnboardingRecord;
    type Response = proto::ConfirmAccountActivationResponse;

    fn target(&self, violations: &mut Violations) -> Option<OnboardingKey> {
        violations.check(OnboardingKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        let username = violations.check(validate::required_text(
            "username",
            &self.username,
            MAX_CREDENTIAL,
        ));
        let password = violations.check(secret("password", &self.password));
        Some((username?, password?))
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, deadline): Parsed<'_, OnboardingKey>,
        (username, password): Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .confirm_account_activation(call, key, mutation, username, password, deadline)
            .await
    }
}

impl MutatingRpc for proto::CreateCreditorRequest {
    const METHOD: &'static str = "CreateCreditor";
    const DETACHED: bool = true;
    type Target = OnboardingKey;
    type Input = NewCreditor;
    /// The onboarding and the creditor's resource name.
    type Output = (OnboardingRecord, String);
    type Response = proto::CreateCreditorResponse;

    fn target(&self, violations: &mut Violations) -> Option<OnboardingKey> {
        violations.check(OnboardingKey::parse_name("parent", &self.parent))
    }

    fn input(&self, violations: &mut Violations) -> Option<NewCreditor> {
        let organisation_number = violations.check(OrganisationNumber::parse(
            "organisation_number",
            &self.organisation_number,
        ));
        let company_name = violations.check(validate::required_text(
            "company_name",
            &self.company_name,
            MAX_NAME,
        ));
        let title = if self.title.trim().is_empty() {
            Some(String::new())
        } else {
            violations.check(validate::required_text("title", &self.title, MAX_TITLE))
        };
        Some(NewCreditor {
            organisation_number: organisation_number?,
            company_name: company_name?,
            title: title?,
        })
    }

    /// No caller deadline: a create runs to its end within its lease (see
    /// `Operations::create_creditor`).
    async fn run(
        operations: &Operations,
        (call, key, mutation, _): Parsed<'_, OnboardingKey>,
        new: NewCreditor,
    ) -> Result<Self::Output, Error> {
        operations.create_creditor(call, key, mutation, new).await
    }
}

impl MutatingRpc for proto::UpdateCompanySettingsRequest {
    const METHOD: &'static str = "UpdateCompanySettings";
    const DETACHED: bool = true;
    type Target = CreditorKey;
    type Input = Option<CompanySettings>;
    type Output = OnboardingRecord;
    type Response = proto::UpdateCompanySettingsResponse;

    fn target(&self, violations: &mut Violations) -> Option<CreditorKey> {
        violations.check(CreditorKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        optional(violations, self.company_settings.as_ref(), company_settings)
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, deadline): Parsed<'_, CreditorKey>,
        settings: Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .update_company_settings(call, key, mutation, settings, deadline)
            .await
    }
}

/// Settings as given, or `None` when the request gives none: those asked for before (or promoted
/// from test) are applied then.
fn optional<Given, Settings>(
    violations: &mut Violations,
    given: Option<&Given>,
    parse: fn(&mut Violations, &Given) -> Option<Settings>,
) -> Option<Option<Settings>> {
    match given {
        Some(given) => parse(violations, given).map(Some),
        None => Some(None),
    }
}

/// Every field of the company settings, each violation named by its path.
fn company_settings(
    violations: &mut Violations,
    given: &proto::CompanySettings,
) -> Option<CompanySettings> {
    let address = violations.check(validate::required_text(
        "company_settings.address",
        &given.address,
        MAX_NAME,
    ));
    let zip_code = violations.check(PostalCode::parse(
        "company_settings.zip_code",
        &given.zip_code,
    ));
    let city = violations.check(validate::required_text(
        "company_settings.city",
        &given.city,
        MAX_NAME,
    ));
    let country_code = violations.check(swedish::country_code(
        "company_settings.country_code",
        &given.country_code,
    ));
    let invoicing = violations.check(Bankgiro::parse(
        "company_settings.bankgiro_invoicing",
        &given.bankgiro_invoicing,
    ));
    let payments = violations.check(Bankgiro::parse(
        "company_settings.bankgiro_payments",
        &given.bankgiro_payments,
    ));
    Some(CompanySettings {
        address: address?,
        zip_code: zip_code?.as_str().to_owned(),
        city: city?,
        country_code: country_code?,
        bankgiro_invoicing: invoicing?.as_str().to_owned(),
        bankgiro_payments: payments?.as_str().to_owned(),
        bankgiro_payments_approved: false,
    })
}

impl MutatingRpc for proto::UpdateInvoiceSettingsRequest {
    const METHOD: &'static str = "UpdateInvoiceSettings";
    const DETACHED: bool = true;
    type Target = CreditorKey;
    type Input = Option<InvoiceSettings>;
    type Output = OnboardingRecord;
    type Response = proto::UpdateInvoiceSettingsResponse;

    fn target(&self, violations: &mut Violations) -> Option<CreditorKey> {
        violations.check(CreditorKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        optional(violations, self.invoice_settings.as_ref(), invoice_settings)
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, deadline): Parsed<'_, CreditorKey>,
        settings: Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .update_invoice_settings(call, key, mutation, settings, deadline)
            .await
    }
}

/// The invoice settings given: a next invoice number (0: leave Billecta's as it is), payment terms,
/// or both.
fn invoice_settings(
    violations: &mut Violations,
    given: &proto::InvoiceSettings,
) -> Option<InvoiceSettings> {
    let number = match given.next_invoice_number {
        0 => Some(None),
        number => violations
            .check(InvoiceNumber::parse(
                "invoice_settings.next_invoice_number",
                &number.to_string(),
            ))
            .map(|number| Some(number.value())),
    };
    let terms = match &given.payment_terms {
        Some(terms) => payment_terms(violations, terms).map(Some),
        None => Some(None),
    };
    if given.next_invoice_number == 0 && given.payment_terms.is_none() {
        violations.push(FieldViolation::new(
            "invoice_settings",
            "give a next invoice number, payment terms or both",
        ));
        return None;
    }
    Some(InvoiceSettings {
        next_invoice_number: number?,
        payment_terms: terms?,
    })
}

/// Payment terms: whole days within a year, a due date at least a day out, an ISO 4217 currency
/// (SEK when empty).
fn payment_terms(violations: &mut Violations, given: &proto::PaymentTerms) -> Option<PaymentTerms> {
    let days = |violations: &mut Violations, field: &str, value: i32, least: i32| {
        if (least..=365).contains(&value) {
            u32::try_from(value).ok()
        } else {
            violations.push(FieldViolation::new(
                format!("invoice_settings.payment_terms.{field}"),
                format!("must be from {least} to 365 days"),
            ));
            None
        }
    };
    let lead = days(
        violations,
        "invoice_lead_time_days",
        given.invoice_lead_time_days,
        0,
    );
    let due = days(violations, "due_days", given.due_days, 1);
    let grace = days(violations, "grace_period_days", given.grace_period_days, 0);
    let write_off = days(violations, "write_off_days", given.write_off_days, 0);
    let currency = match given.currency.trim() {
        "" => Some("SEK".to_owned()),
        code if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(code.to_ascii_uppercase())
        }
        _ => {
            violations.push(FieldViolation::new(
                "invoice_settings.payment_terms.currency",
                "must be an ISO 4217 currency code such as SEK",
            ));
            None
        }
    };
    Some(PaymentTerms {
        invoice_lead_time_days: lead?,
        due_days: due?,
        grace_period_days: grace?,
        write_off_days: write_off?,
        currency: currency?,
    })
}

impl MutatingRpc for proto::SkipStageRequest {
    const METHOD: &'static str = "SkipStage";
    const DETACHED: bool = false;
    type Target = CreditorKey;
    /// The optional stage and why it is skipped.
    type Input = (Stage, String);
    type Output = OnboardingRecord;
    type Response = proto::SkipStageResponse;

    fn target(&self, violations: &mut Violations) -> Option<CreditorKey> {
        violations.check(CreditorKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        let stage = match proto::Stage::try_from(self.stage)
            .ok()
            .and_then(convert::stage_from)
        {
            Some(stage) if stage.is_optional() => Some(stage),
            _ => {
                violations.push(FieldViolation::new(
                    "stage",
                    "must be an optional stage: STAGE_INVOICE_SETTINGS or STAGE_WEBHOOKS",
                ));
                None
            }
        };
        let reason = violations.check(validate::required_text("reason", &self.reason, MAX_REASON));
        Some((stage?, reason?))
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, _): Parsed<'_, CreditorKey>,
        (stage, reason): Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .skip_stage(call, key, mutation, stage, reason)
            .await
    }
}

impl MutatingRpc for proto::RegisterApiCredentialsRequest {
    const METHOD: &'static str = "RegisterApiCredentials";
    const DETACHED: bool = true;
    type Target = CreditorKey;
    type Input = ApiCredentials;
    type Output = OnboardingRecord;
    type Response = proto::RegisterApiCredentialsResponse;

    fn target(&self, violations: &mut Violations) -> Option<CreditorKey> {
        violations.check(CreditorKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<ApiCredentials> {
        let username = if self.username.trim().is_empty() {
            None
        } else {
            violations.check(validate::required_text(
                "username",
                &self.username,
                MAX_CREDENTIAL,
            ))
        };
        match (self.password.is_empty(), self.secure_token.is_empty()) {
            (false, true) => match username {
                Some(username) => violations
                    .check(secret("password", &self.password))
                    .map(|password| ApiCredentials::Password { username, password }),
                None => {
                    violations.push(FieldViolation::new(
                        "username",
                        "is required with a password",
                    ));
                    None
                }
            },
            (true, false) => violations
                .check(secret("secure_token", &self.secure_token))
                .map(|token| ApiCredentials::Token { username, token }),
            (false, false) => {
                violations.push(FieldViolation::new(
                    "secure_token",
                    "give either password (with username) or secure_token, not both",
                ));
                None
            }
            (true, true) => {
                violations.push(FieldViolation::new(
                    "password",
                    "give either password (with username) or secure_token",
                ));
                None
            }
        }
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, deadline): Parsed<'_, CreditorKey>,
        credentials: ApiCredentials,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .register_api_credentials(call, key, mutation, credentials, deadline)
            .await
    }
}

impl MutatingRpc for proto::CreateApiUserRequest {
    const METHOD: &'static str = "CreateApiUser";
    const DETACHED: bool = true;
    type Target = CreditorKey;
    /// The username and the full name.
    type Input = (String, String);
    type Output = OnboardingRecord;
    type Response = proto::CreateApiUserResponse;

    fn target(&self, violations: &mut Violations) -> Option<CreditorKey> {
        violations.check(CreditorKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<(String, String)> {
        let username = violations.check(validate::Email::parse("username", &self.username));
        let full_name = if self.full_name.trim().is_empty() {
            Some("Payway API".to_owned())
        } else {
            violations.check(validate::required_text("full_name", &self.full_name, 200))
        };
        Some((username?.into_string(), full_name?))
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, deadline): Parsed<'_, CreditorKey>,
        (username, full_name): (String, String),
    ) -> Result<OnboardingRecord, Error> {
        operations
            .create_api_user(call, key, mutation, username, full_name, deadline)
            .await
    }
}

/// An https URL without spaces, at most 2000 characters.
fn https_url(field: &str, text: &str) -> Result<String, FieldViolation> {
    let trimmed = text.trim();
    let host = trimmed.strip_prefix("https://").unwrap_or_default();
    if host.is_empty()
        || host.starts_with('/')
        || trimmed.len() > 2000
        || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(FieldViolation::new(
            field,
            "must be an https:// URL with a host, without spaces",
        ));
    }
    Ok(trimmed.to_owned())
}

impl MutatingRpc for proto::RecordWebhookSetupRequest {
    const METHOD: &'static str = "RecordWebhookSetup";
    const DETACHED: bool = false;
    type Target = CreditorKey;
    /// The attestation, and the Authorization value Billecta sends with each webhook.
    type Input = (Webhooks, Secret);
    type Output = OnboardingRecord;
    type Response = proto::RecordWebhookSetupResponse;

    fn target(&self, violations: &mut Violations) -> Option<CreditorKey> {
        violations.check(CreditorKey::parse_name("name", &self.name))
    }

    fn input(&self, violations: &mut Violations) -> Option<Self::Input> {
        let target_url = violations.check(https_url("target_url", &self.target_url));
        let events = if self.events.len() > MAX_EVENTS {
            violations.push(FieldViolation::new(
                "events",
                format!("must list at most {MAX_EVENTS} events"),
            ));
            None
        } else if self.events.is_empty() {
            violations.push(FieldViolation::new(
                "events",
                "is required: the events chosen in the portal, such as InvoicePaymentReceived",
            ));
            None
        } else if let Some(bad) = self.events.iter().position(|event| {
            event.is_empty()
                || event.len() > 100
                || !event.bytes().all(|b| b.is_ascii_alphanumeric())
                || !event.starts_with(|c: char| c.is_ascii_alphabetic())
        }) {
            violations.push(FieldViolation::new(
                format!("events[{bad}]"),
                "must be an event name such as InvoicePaymentReceived",
            ));
            None
        } else {
            Some(self.events.clone())
        };
        let authorization = violations.check(secret("authorization", &self.authorization));
        let attested_by = violations.check(validate::required_text(
            "attested_by",
            &self.attested_by,
            MAX_NAME,
        ));
        let webhooks = Webhooks {
            target_url: target_url?,
            events: events?,
            attested_by: attested_by?,
            record_time: 0,
        };
        Some((webhooks, authorization?))
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, _): Parsed<'_, CreditorKey>,
        (webhooks, authorization): Self::Input,
    ) -> Result<OnboardingRecord, Error> {
        operations
            .record_webhook_setup(call, key, mutation, webhooks, authorization)
            .await
    }
}

impl MutatingRpc for proto::ValidateOnboardingRequest {
    const METHOD: &'static str = "ValidateOnboarding";
    const DETACHED: bool = true;
    type Target = OnboardingKey;
    type Input = ();
    type Output = (OnboardingRecord, Vec<Check>);
    type Response = proto::ValidateOnboardingResponse;

    fn target(&self, violations: &mut Violations) -> Option<OnboardingKey> {
        violations.check(OnboardingKey::parse_name("name", &self.name))
    }

    fn input(&self, _: &mut Violations) -> Option<()> {
        Some(())
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, deadline): Parsed<'_, OnboardingKey>,
        (): (),
    ) -> Result<Self::Output, Error> {
        operations
            .validate_onboarding(call, key, mutation, deadline)
            .await
    }
}

impl MutatingRpc for proto::PromoteToProductionRequest {
    const METHOD: &'static str = "PromoteToProduction";
    const DETACHED: bool = false;
    /// The test onboarding to promote.
    type Target = OnboardingKey;
    type Input = ();
    type Output = OnboardingRecord;
    type Response = proto::PromoteToProductionResponse;

    fn target(&self, violations: &mut Violations) -> Option<OnboardingKey> {
        match OnboardingKey::parse_name("name", &self.name) {
            Ok(key) if key.environment == Environment::Test => Some(key),
            Ok(_) => {
                violations.push(FieldViolation::new(
                    "name",
                    "must name the test onboarding to promote: tenants/{tenant}/environments/test",
                ));
                None
            }
            Err(violation) => {
                violations.push(violation);
                None
            }
        }
    }

    fn input(&self, _: &mut Violations) -> Option<()> {
        Some(())
    }

    async fn run(
        operations: &Operations,
        (call, key, mutation, _): Parsed<'_, OnboardingKey>,
        (): (),
    ) -> Result<OnboardingRecord, Error> {
        operations.promote_to_production(call, key, mutation).await
    }
}

/// `PaymentConfigurationService`: what Payway's payment code reads.
#[derive(Clone)]
pub struct PaymentConfigurationApi {
    operations: Operations,
}

impl PaymentConfigurationApi {
    pub fn new(operations: Operations) -> Self {
        Self { operations }
    }
}

#[tonic::async_trait]
impl proto::payment_configuration_service_server::PaymentConfigurationService
    for PaymentConfigurationApi
{
    async fn get_payment_configuration(
        &self,
        request: Request<proto::GetPaymentConfigurationRequest>,
    ) -> Result<Response<proto::GetPaymentConfigurationResponse>, Status> {
        let call = call_context(&request);
        let caller = permitted(&request, Permission::PaymentConfiguration)?;
        let request = request.into_inner();
        let key = CreditorKey::parse_name("name", &request.name).map_err(Error::from)?;
        within(&caller, Permission::PaymentConfiguration, &key)?;
        let configuration = self
            .operations
            .get_payment_configuration(&call, &key)
            .await?;
        Ok(Response::new(proto::GetPaymentConfigurationResponse {
            payment_configuration: Some(proto::PaymentConfiguration {
                creditor: configuration.creditor,
                environment: convert::environment(configuration.environment).into(),
                api_base_url: configuration.api_base_url,
                creditor_public_id: configuration.creditor_public_id,
                username: configuration.username.unwrap_or_default(),
                password: configuration
                    .password
                    .map(|password| password.expose().to_owned())
                    .unwrap_or_default(),
                secure_token: configuration.secure_token.expose().to_owned(),
                payment_terms: Some(convert::payment_terms(&configuration.payment_terms)),
                payment_methods: configuration.payment_methods,
            }),
        }))
    }
}
