//! The RPCs of the stages the service drives in Billecta: each parses its request (every bad field
//! at once, before anything reaches Billecta), passes the caller's deadline on, and converts the
//! result.

use super::{call_context, checked, convert, mutation, permitted, within};
use crate::auth::Permission;
use crate::domain::onboarding::{CompanySettings, InvoiceSettings, PaymentTerms, Webhooks};
use crate::domain::swedish::{self, Bankgiro, InvoiceNumber, OrganisationNumber, PostalCode};
use crate::domain::validate::{self, CreditorKey, FieldViolation, OnboardingKey, Violations};
use crate::error::Error;
use crate::grpc::call::caller_deadline;
use crate::operations::{ApiCredentials, NewCreditor, Operations};
use crate::proto;
use crate::secret::Secret;
use std::future::Future;
use tonic::{Request, Response, Status};
use tracing::Instrument;

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

/// Runs a call's work in a task of its own. A caller that goes away midway (deadline, cancel) would
/// otherwise drop the work between Billecta's answer and recording it, leaving the stage claimed until
/// its lease runs out; detached, the outcome is always recorded.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work.in_current_span())
        .await
        .map_err(|failure| {
            Error::Internal(anyhow::Error::new(failure).context("a call's task failed"))
        })?
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

pub async fn confirm_account_activation(
    operations: &Operations,
    request: Request<proto::ConfirmAccountActivationRequest>,
) -> Result<Response<proto::ConfirmAccountActivationResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(OnboardingKey::parse_name("name", &request.name));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    let username = violations.check(validate::required_text(
        "username",
        &request.username,
        MAX_CREDENTIAL,
    ));
    let password = violations.check(secret("password", &request.password));
    let mutation = mutation(
        &mut violations,
        &caller,
        "ConfirmAccountActivation",
        &request,
    );
    violations.finish().map_err(Error::from)?;
    let operations = operations.clone();
    let (key, mutation, username, password) = (
        checked(key),
        checked(mutation),
        checked(username),
        checked(password),
    );
    let record = detached(async move {
        operations
            .confirm_account_activation(&call, &key, &mutation, username, password, deadline)
            .await
    })
    .await?;
    Ok(Response::new(proto::ConfirmAccountActivationResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
}

pub async fn create_creditor(
    operations: &Operations,
    request: Request<proto::CreateCreditorRequest>,
) -> Result<Response<proto::CreateCreditorResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    // No caller deadline: a create runs to its end within its lease (see Operations::create_creditor).
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(OnboardingKey::parse_name("parent", &request.parent));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    let organisation_number = violations.check(OrganisationNumber::parse(
        "organisation_number",
        &request.organisation_number,
    ));
    let company_name = violations.check(validate::required_text(
        "company_name",
        &request.company_name,
        MAX_NAME,
    ));
    let title = if request.title.trim().is_empty() {
        Some(String::new())
    } else {
        violations.check(validate::required_text("title", &request.title, MAX_TITLE))
    };
    let mutation = mutation(&mut violations, &caller, "CreateCreditor", &request);
    violations.finish().map_err(Error::from)?;
    let operations = operations.clone();
    let (key, mutation) = (checked(key), checked(mutation));
    let (organisation_number, company_name, title) = (
        checked(organisation_number),
        checked(company_name),
        checked(title),
    );
    let new = NewCreditor {
        organisation_number,
        company_name,
        title,
    };
    let (record, name) = detached(async move {
        operations
            .create_creditor(&call, &key, &mutation, new)
            .await
    })
    .await?;
    let onboarding = convert::onboarding(&record);
    let creditor = onboarding
        .creditors
        .iter()
        .find(|creditor| creditor.name == name)
        .cloned();
    Ok(Response::new(proto::CreateCreditorResponse {
        onboarding: Some(onboarding),
        creditor,
    }))
}

pub async fn update_company_settings(
    operations: &Operations,
    request: Request<proto::UpdateCompanySettingsRequest>,
) -> Result<Response<proto::UpdateCompanySettingsResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    // Without settings, those asked for before (or promoted from test) are applied.
    let settings = match &request.company_settings {
        Some(given) => company_settings(&mut violations, given).map(Some),
        None => Some(None),
    };
    let mutation = mutation(&mut violations, &caller, "UpdateCompanySettings", &request);
    violations.finish().map_err(Error::from)?;
    let operations = operations.clone();
    let (key, mutation, settings) = (checked(key), checked(mutation), checked(settings));
    let record = detached(async move {
        operations
            .update_company_settings(&call, &key, &mutation, settings, deadline)
            .await
    })
    .await?;
    Ok(Response::new(proto::UpdateCompanySettingsResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
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

pub async fn update_invoice_settings(
    operations: &Operations,
    request: Request<proto::UpdateInvoiceSettingsRequest>,
) -> Result<Response<proto::UpdateInvoiceSettingsResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    // Without settings, those asked for before (or promoted from test) are applied.
    let settings = match &request.invoice_settings {
        Some(given) => invoice_settings(&mut violations, given).map(Some),
        None => Some(None),
    };
    let mutation = mutation(&mut violations, &caller, "UpdateInvoiceSettings", &request);
    violations.finish().map_err(Error::from)?;
    let operations = operations.clone();
    let (key, mutation, settings) = (checked(key), checked(mutation), checked(settings));
    let record = detached(async move {
        operations
            .update_invoice_settings(&call, &key, &mutation, settings, deadline)
            .await
    })
    .await?;
    Ok(Response::new(proto::UpdateInvoiceSettingsResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
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

pub async fn skip_stage(
    operations: &Operations,
    request: Request<proto::SkipStageRequest>,
) -> Result<Response<proto::SkipStageResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    let stage = match proto::Stage::try_from(request.stage)
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
    let reason = violations.check(validate::required_text(
        "reason",
        &request.reason,
        MAX_REASON,
    ));
    let mutation = mutation(&mut violations, &caller, "SkipStage", &request);
    violations.finish().map_err(Error::from)?;
    let record = operations
        .skip_stage(
            &call,
            &checked(key),
            &checked(mutation),
            checked(stage),
            checked(reason),
        )
        .await?;
    Ok(Response::new(proto::SkipStageResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
}

pub async fn register_api_credentials(
    operations: &Operations,
    request: Request<proto::RegisterApiCredentialsRequest>,
) -> Result<Response<proto::RegisterApiCredentialsResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    let username = if request.username.trim().is_empty() {
        None
    } else {
        violations.check(validate::required_text(
            "username",
            &request.username,
            MAX_CREDENTIAL,
        ))
    };
    let credentials = match (request.password.is_empty(), request.secure_token.is_empty()) {
        (false, true) => match username.clone() {
            Some(username) => violations
                .check(secret("password", &request.password))
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
            .check(secret("secure_token", &request.secure_token))
            .map(|token| ApiCredentials::Token {
                username: username.clone(),
                token,
            }),
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
    };
    let mutation = mutation(&mut violations, &caller, "RegisterApiCredentials", &request);
    violations.finish().map_err(Error::from)?;
    let operations = operations.clone();
    let (key, mutation, credentials) = (checked(key), checked(mutation), checked(credentials));
    let record = detached(async move {
        operations
            .register_api_credentials(&call, &key, &mutation, credentials, deadline)
            .await
    })
    .await?;
    Ok(Response::new(proto::RegisterApiCredentialsResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
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

pub async fn record_webhook_setup(
    operations: &Operations,
    request: Request<proto::RecordWebhookSetupRequest>,
) -> Result<Response<proto::RecordWebhookSetupResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    if let Some(key) = &key {
        within(&caller, Permission::Write, key)?;
    }
    let target_url = violations.check(https_url("target_url", &request.target_url));
    let events = if request.events.len() > MAX_EVENTS {
        violations.push(FieldViolation::new(
            "events",
            format!("must list at most {MAX_EVENTS} events"),
        ));
        None
    } else if request.events.is_empty() {
        violations.push(FieldViolation::new(
            "events",
            "is required: the events chosen in the portal, such as InvoicePaymentReceived",
        ));
        None
    } else if let Some(bad) = request.events.iter().position(|event| {
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
        Some(request.events.clone())
    };
    let authorization = violations.check(secret("authorization", &request.authorization));
    let attested_by = violations.check(validate::required_text(
        "attested_by",
        &request.attested_by,
        MAX_NAME,
    ));
    let mutation = mutation(&mut violations, &caller, "RecordWebhookSetup", &request);
    violations.finish().map_err(Error::from)?;
    let webhooks = Webhooks {
        target_url: checked(target_url),
        events: checked(events),
        attested_by: checked(attested_by),
        record_time: 0,
    };
    let record = operations
        .record_webhook_setup(
            &call,
            &checked(key),
            &checked(mutation),
            webhooks,
            checked(authorization),
        )
        .await?;
    Ok(Response::new(proto::RecordWebhookSetupResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
}

pub async fn validate_onboarding(
    operations: &Operations,
    request: Request<proto::ValidateOnboardingRequest>,
) -> Result<Response<proto::ValidateOnboardingResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let key = OnboardingKey::parse_name("name", &request.name).map_err(Error::from)?;
    within(&caller, Permission::Write, &key)?;
    let operations = operations.clone();
    let (record, checks) =
        detached(async move { operations.validate_onboarding(&call, &key, deadline).await })
            .await?;
    Ok(Response::new(proto::ValidateOnboardingResponse {
        onboarding: Some(convert::onboarding(&record)),
        checks: checks.iter().map(convert::check).collect(),
    }))
}

pub async fn promote_to_production(
    operations: &Operations,
    request: Request<proto::PromoteToProductionRequest>,
) -> Result<Response<proto::PromoteToProductionResponse>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = match OnboardingKey::parse_name("name", &request.name) {
        Ok(key) if key.environment == crate::domain::Environment::Test => {
            within(&caller, Permission::Write, &key)?;
            Some(key)
        }
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
    };
    let mutation = mutation(&mut violations, &caller, "PromoteToProduction", &request);
    violations.finish().map_err(Error::from)?;
    let record = operations
        .promote_to_production(&call, &checked(key), &checked(mutation))
        .await?;
    Ok(Response::new(proto::PromoteToProductionResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
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
