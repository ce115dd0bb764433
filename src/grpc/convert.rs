//! Domain records to API messages, and API enums to domain values.

use crate::domain::onboarding::{
    CredentialRecord, CreditorRecord, DueItem, EventRecord, OnboardingRecord, PaymentTerms,
    StageRecord, StageTransition,
};
use crate::domain::validate::{FieldViolation, OnboardingKey};
use crate::domain::{
    BlockedOn, CredentialField, Environment, Micros, OnboardingState, Stage, StageState,
};
use crate::operations::{Check, CheckResult};
use crate::proto;

pub fn timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A caller's timestamp in microseconds; out-of-range values saturate and are then rejected by the
/// field's own validation.
pub fn micros(timestamp: &prost_types::Timestamp) -> Micros {
    timestamp
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(timestamp.nanos) / 1000)
}

pub fn environment(environment: Environment) -> proto::Environment {
    match environment {
        Environment::Test => proto::Environment::Test,
        Environment::Production => proto::Environment::Production,
    }
}

/// A required environment field.
pub fn parse_environment(field: &str, value: i32) -> Result<Environment, FieldViolation> {
    match proto::Environment::try_from(value) {
        Ok(proto::Environment::Test) => Ok(Environment::Test),
        Ok(proto::Environment::Production) => Ok(Environment::Production),
        _ => Err(FieldViolation::new(
            field,
            "is required: ENVIRONMENT_TEST or ENVIRONMENT_PRODUCTION",
        )),
    }
}

/// An optional filter field: unspecified means no filter.
pub fn parse_filter<P, D>(
    field: &str,
    value: i32,
    convert: fn(P) -> Option<D>,
) -> Result<Option<D>, FieldViolation>
where
    P: TryFrom<i32>,
{
    if value == 0 {
        return Ok(None);
    }
    P::try_from(value)
        .ok()
        .and_then(convert)
        .map(Some)
        .ok_or_else(|| FieldViolation::new(field, format!("{value} is not a known value")))
}

pub fn environment_from(value: proto::Environment) -> Option<Environment> {
    match value {
        proto::Environment::Unspecified => None,
        proto::Environment::Test => Some(Environment::Test),
        proto::Environment::Production => Some(Environment::Production),
    }
}

pub fn onboarding_state_from(value: proto::OnboardingState) -> Option<OnboardingState> {
    OnboardingState::ALL
        .iter()
        .copied()
        .find(|state| onboarding_state(*state) == value)
}

pub fn blocked_on_from(value: proto::BlockedOn) -> Option<BlockedOn> {
    BlockedOn::ALL
        .iter()
        .copied()
        .find(|blocked| blocked_on(*blocked) == value)
}

/// The domain stage of an API stage; `None` for unspecified.
pub fn stage_from(stage: proto::Stage) -> Option<Stage> {
    Stage::ALL
        .iter()
        .copied()
        .find(|candidate| self::stage(*candidate) == stage)
}

pub fn stage(stage: Stage) -> proto::Stage {
    match stage {
        Stage::Agreement => proto::Stage::Agreement,
        Stage::Account => proto::Stage::Account,
        Stage::Creditor => proto::Stage::Creditor,
        Stage::CompanySettings => proto::Stage::CompanySettings,
        Stage::InvoiceSettings => proto::Stage::InvoiceSettings,
        Stage::ApiAccess => proto::Stage::ApiAccess,
        Stage::PaymentConfiguration => proto::Stage::PaymentConfiguration,
        Stage::Webhooks => proto::Stage::Webhooks,
    }
}

pub fn stage_state(state: StageState) -> proto::StageState {
    match state {
        StageState::NotStarted => proto::StageState::NotStarted,
        StageState::InProgress => proto::StageState::InProgress,
        StageState::ActionRequired => proto::StageState::ActionRequired,
        StageState::Completed => proto::StageState::Completed,
        StageState::Skipped => proto::StageState::Skipped,
        StageState::Failed => proto::StageState::Failed,
        StageState::Broken => proto::StageState::Broken,
    }
}

pub fn blocked_on(blocked_on: BlockedOn) -> proto::BlockedOn {
    match blocked_on {
        BlockedOn::Nobody => proto::BlockedOn::None,
        BlockedOn::Tenant => proto::BlockedOn::Tenant,
        BlockedOn::PaywayOperations => proto::BlockedOn::PaywayOperations,
        BlockedOn::BillectaSupport => proto::BlockedOn::BillectaSupport,
        BlockedOn::SystemRetrying => proto::BlockedOn::SystemRetrying,
    }
}

pub fn onboarding_state(state: OnboardingState) -> proto::OnboardingState {
    match state {
        OnboardingState::InProgress => proto::OnboardingState::InProgress,
        OnboardingState::ActionRequired => proto::OnboardingState::ActionRequired,
        OnboardingState::Ready => proto::OnboardingState::Ready,
        OnboardingState::Failed => proto::OnboardingState::Failed,
        OnboardingState::Broken => proto::OnboardingState::Broken,
    }
}

fn stage_status(record: &StageRecord) -> proto::StageStatus {
    let mut status = proto::StageStatus {
        stage: stage(record.stage).into(),
        state: stage_state(record.state).into(),
        blocked_on: blocked_on(record.blocked_on).into(),
        due: record.due.clone(),
        reason: record.reason.clone(),
        message: record.message.clone(),
        update_time: record.update_time.map(timestamp),
    };
    // A claim whose holder stopped (a crash, a restart) shows as such, not as work under way.
    let interrupted = record.state == StageState::InProgress
        && record.blocked_on == BlockedOn::Nobody
        && record
            .lease
            .as_ref()
            .is_some_and(|lease| lease.expire_time <= crate::domain::now_micros());
    if interrupted {
        status.blocked_on = proto::BlockedOn::SystemRetrying.into();
        status.reason = "INTERRUPTED".to_owned();
        status.message =
            "The call working on this stage stopped before it finished; repeat it to go on."
                .to_owned();
    }
    status
}

/// What reads show of a creditor's stored secret, if there is one.
fn stored_credential(
    onboarding: &OnboardingRecord,
    creditor: &CreditorRecord,
    field: CredentialField,
) -> Option<proto::Credential> {
    onboarding
        .credentials
        .iter()
        .find(|c| c.scope == creditor.id && c.field == field)
        .map(credential)
}

pub fn payment_terms(terms: &PaymentTerms) -> proto::PaymentTerms {
    let days = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    proto::PaymentTerms {
        invoice_lead_time_days: days(terms.invoice_lead_time_days),
        due_days: days(terms.due_days),
        grace_period_days: days(terms.grace_period_days),
        write_off_days: days(terms.write_off_days),
        currency: terms.currency.clone(),
    }
}

fn creditor(onboarding: &OnboardingRecord, record: &CreditorRecord) -> proto::Creditor {
    proto::Creditor {
        name: record.name.clone(),
        organisation_number: record.organisation_number.clone(),
        company_name: record.company_name.clone(),
        title: record.title.clone(),
        creditor_public_id: record.creditor_public_id.clone().unwrap_or_default(),
        stages: record.stages.iter().map(stage_status).collect(),
        company_settings: record
            .company_settings
            .as_ref()
            .map(|settings| proto::CompanySettings {
                address: settings.address.clone(),
                zip_code: settings.zip_code.clone(),
                city: settings.city.clone(),
                country_code: settings.country_code.clone(),
                bankgiro_invoicing: settings.bankgiro_invoicing.clone(),
                bankgiro_payments: settings.bankgiro_payments.clone(),
                bankgiro_payments_approved: settings.bankgiro_payments_approved,
            }),
        invoice_settings: record
            .invoice_settings
            .as_ref()
            .map(|settings| proto::InvoiceSettings {
                next_invoice_number: settings
                    .next_invoice_number
                    .map_or(0, |number| i64::try_from(number).unwrap_or(i64::MAX)),
                payment_terms: settings.payment_terms.as_ref().map(payment_terms),
            }),
        api_access: record.api_access.as_ref().map(|access| proto::ApiAccess {
            username: access.username.clone().unwrap_or_default(),
            credential: onboarding
                .api_user(record)
                .and_then(|user| onboarding.secret_of(&user.id, CredentialField::Token))
                .map(credential),
            warnings: access.warnings.clone(),
        }),
        webhooks: record.webhooks.as_ref().map(|webhooks| proto::Webhooks {
            target_url: webhooks.target_url.clone(),
            events: webhooks.events.clone(),
            authorization: stored_credential(
                onboarding,
                record,
                CredentialField::WebhookAuthorization,
            ),
            attested_by: webhooks.attested_by.clone(),
            record_time: Some(timestamp(webhooks.record_time)),
        }),
    }
}

/// What reads show of a stored secret: never the secret.
fn credential(record: &CredentialRecord) -> proto::Credential {
    proto::Credential {
        fingerprint: record.fingerprint.clone(),
        principal: record.principal.clone().unwrap_or_default(),
        set_by: record.set_by.clone(),
        set_time: Some(timestamp(record.set_time)),
        verify_time: record.verify_time.map(timestamp),
    }
}

fn due_item(item: DueItem) -> proto::DueItem {
    proto::DueItem {
        item: item.item,
        stage: stage(item.stage).into(),
        creditor: item.creditor.unwrap_or_default(),
        from: blocked_on(item.from).into(),
        description: item.description,
    }
}

pub fn onboarding(record: &OnboardingRecord) -> proto::Onboarding {
    let key = record.key();
    proto::Onboarding {
        name: key.name(),
        tenant: record.tenant.clone(),
        environment: environment(record.environment).into(),
        state: onboarding_state(record.state).into(),
        blocked_on: blocked_on(record.blocked_on).into(),
        stages: record.stages.iter().map(stage_status).collect(),
        creditors: record
            .creditors
            .iter()
            .map(|c| creditor(record, c))
            .collect(),
        next_due: record.next_due().into_iter().map(due_item).collect(),
        agreement: record.agreement.as_ref().map(|a| proto::Agreement {
            attested_by: a.attested_by.clone(),
            agreement_time: Some(timestamp(a.agreement_time)),
            reference: a.reference.clone(),
            record_time: Some(timestamp(a.record_time)),
        }),
        account: record.account.as_ref().map(|a| proto::Account {
            full_name: a.full_name.clone(),
            company_name: a.company_name.clone(),
            email: a.email.clone(),
            register_time: Some(timestamp(a.register_time)),
            username: a.username.clone().unwrap_or_default(),
            credential: record
                .account_user()
                .and_then(|user| record.secret_of(&user.id, CredentialField::Password))
                .map(credential),
            activate_time: a.activate_time.map(timestamp),
        }),
        etag: record.etag(),
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
        last_event: if record.last_event > 0 {
            key.event_name(record.last_event)
        } else {
            String::new()
        },
    }
}

fn transition(record: &StageTransition) -> proto::StageTransition {
    proto::StageTransition {
        stage: stage(record.stage).into(),
        creditor: record.creditor.clone().unwrap_or_default(),
        from_state: stage_state(record.from).into(),
        to_state: stage_state(record.to).into(),
    }
}

pub fn event(key: &OnboardingKey, record: &EventRecord) -> proto::OnboardingEvent {
    proto::OnboardingEvent {
        name: key.event_name(record.sequence),
        event_time: Some(timestamp(record.event_time)),
        actor: record.actor.clone(),
        method: record.method.clone(),
        request_id: record.request_id.clone(),
        correlation_id: record.correlation_id.clone(),
        outcome: record.outcome.clone(),
        summary: record.summary.clone(),
        transitions: record.transitions.iter().map(transition).collect(),
    }
}

/// A validation check as the API shows it.
pub fn check(check: &Check) -> proto::ValidationCheck {
    proto::ValidationCheck {
        check: check.check.clone(),
        subject: check.subject.clone(),
        result: match check.result {
            CheckResult::Pass => proto::CheckResult::Pass,
            CheckResult::Warn => proto::CheckResult::Warn,
            CheckResult::Fail => proto::CheckResult::Fail,
            CheckResult::Unknown => proto::CheckResult::Unknown,
        }
        .into(),
        critical: check.critical,
        reason: check.reason.clone(),
        message: check.message.clone(),
        expected: check.expected.clone(),
        observed: check.observed.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for value in [0, 1, 1_700_000_000_123_456, -1, -1_500_000] {
            assert_eq!(micros(&timestamp(value)), value);
            assert!((0..1_000_000_000).contains(&timestamp(value).nanos));
        }
    }

    #[test]
    fn every_domain_value_has_an_api_value() {
        for state in OnboardingState::ALL {
            assert_eq!(
                onboarding_state_from(onboarding_state(*state)),
                Some(*state)
            );
        }
        for blocked in BlockedOn::ALL {
            assert_eq!(blocked_on_from(blocked_on(*blocked)), Some(*blocked));
        }
        assert_eq!(
            onboarding_state_from(proto::OnboardingState::Unspecified),
            None
        );
    }
}
