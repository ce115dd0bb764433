//! The RPCs of the stages the service drives in Billecta: each parses its request (every bad field
//! at once, before anything reaches Billecta), passes the caller's deadline on, and converts the
//! result.

use super::{call_context, checked, convert, mutation};
use crate::domain::onboarding::CompanySettings;
use crate::domain::swedish::{self, Bankgiro, InvoiceNumber, OrganisationNumber, PostalCode};
use crate::domain::validate::{self, CreditorKey, FieldViolation, OnboardingKey, Violations};
use crate::error::Error;
use crate::grpc::call::caller_deadline;
use crate::operations::{NewCreditor, Operations};
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
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(OnboardingKey::parse_name("name", &request.name));
    let username = violations.check(validate::required_text(
        "username",
        &request.username,
        MAX_CREDENTIAL,
    ));
    let password = violations.check(secret("password", &request.password));
    // The password is not part of the request's fingerprint: a stored digest of it could be
    // attacked offline. A retry with the same request_id is the same request whatever its password.
    let without_id = proto::ConfirmAccountActivationRequest {
        password: String::new(),
        request_id: String::new(),
        validate_only: false,
        etag: String::new(),
        ..request.clone()
    };
    let mutation = mutation(
        &mut violations,
        "ConfirmAccountActivation",
        &request.request_id,
        &request.etag,
        request.validate_only,
        &without_id,
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
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(OnboardingKey::parse_name("parent", &request.parent));
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
    let without_id = proto::CreateCreditorRequest {
        request_id: String::new(),
        validate_only: false,
        etag: String::new(),
        ..request.clone()
    };
    let mutation = mutation(
        &mut violations,
        "CreateCreditor",
        &request.request_id,
        &request.etag,
        request.validate_only,
        &without_id,
    );
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
            .create_creditor(&call, &key, &mutation, new, deadline)
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
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    let settings = match &request.company_settings {
        Some(given) => company_settings(&mut violations, given),
        None => {
            violations.push(FieldViolation::new("company_settings", "is required"));
            None
        }
    };
    let without_id = proto::UpdateCompanySettingsRequest {
        request_id: String::new(),
        validate_only: false,
        etag: String::new(),
        ..request.clone()
    };
    let mutation = mutation(
        &mut violations,
        "UpdateCompanySettings",
        &request.request_id,
        &request.etag,
        request.validate_only,
        &without_id,
    );
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
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
    let number = match &request.invoice_settings {
        Some(given) => violations.check(InvoiceNumber::parse(
            "invoice_settings.next_invoice_number",
            &given.next_invoice_number.to_string(),
        )),
        None => {
            violations.push(FieldViolation::new("invoice_settings", "is required"));
            None
        }
    };
    let without_id = proto::UpdateInvoiceSettingsRequest {
        request_id: String::new(),
        validate_only: false,
        etag: String::new(),
        ..request.clone()
    };
    let mutation = mutation(
        &mut violations,
        "UpdateInvoiceSettings",
        &request.request_id,
        &request.etag,
        request.validate_only,
        &without_id,
    );
    violations.finish().map_err(Error::from)?;
    let operations = operations.clone();
    let (key, mutation, number) = (checked(key), checked(mutation), checked(number));
    let record = detached(async move {
        operations
            .update_invoice_settings(&call, &key, &mutation, number, deadline)
            .await
    })
    .await?;
    Ok(Response::new(proto::UpdateInvoiceSettingsResponse {
        onboarding: Some(convert::onboarding(&record)),
    }))
}

pub async fn skip_stage(
    operations: &Operations,
    request: Request<proto::SkipStageRequest>,
) -> Result<Response<proto::SkipStageResponse>, Status> {
    let call = call_context(&request);
    let request = request.into_inner();
    let mut violations = Violations::new();
    let key = violations.check(CreditorKey::parse_name("name", &request.name));
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
    let without_id = proto::SkipStageRequest {
        request_id: String::new(),
        validate_only: false,
        etag: String::new(),
        ..request.clone()
    };
    let mutation = mutation(
        &mut violations,
        "SkipStage",
        &request.request_id,
        &request.etag,
        request.validate_only,
        &without_id,
    );
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
