//! What the reconciler does through the same operations a caller would use: carry on with stages left
//! waiting on the system (a transient Billecta failure, a call that stopped midway), and re-check the
//! live setup of onboardings on a schedule. Each is recorded like a call, with `reconciler` as actor.

use super::access::ApiCredentials;
use super::provisioning::{NewCreditor, find_creditor};
use super::{CallContext, Mutation, Operations};
use crate::domain::swedish::OrganisationNumber;
use crate::domain::validate::{CreditorKey, OnboardingKey, TenantId};
use crate::domain::{CredentialField, Environment, Stage, now_micros};
use crate::error::{Error, Result};
use crate::storage::PendingStage;
use billecta_client::{BreakerState, Deadline};
use std::time::Duration;
use tracing::Instrument;

/// The actor the reconciler's work is recorded under.
pub const RECONCILER: &str = "reconciler";

/// How long one resumed step may take with Billecta.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

fn call() -> CallContext {
    CallContext {
        actor: RECONCILER.to_owned(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
    }
}

impl Operations {
    /// One pass over stages waiting on the system and quiet for at least `quiet_for`: each is carried
    /// on, at most `limit` of them. Environments whose Billecta is paused by the breaker are left for
    /// later. Returns how many were carried on successfully.
    pub async fn resume_pending(&self, quiet_for: Duration, limit: i64) -> Result<usize> {
        let now = now_micros();
        let quiet_since = now - i64::try_from(quiet_for.as_micros()).unwrap_or(i64::MAX);
        let mut resumed = 0;
        for pending in self.store.stages_to_resume(now, quiet_since, limit).await? {
            if self.billecta_paused(pending.environment) {
                continue;
            }
            let span = tracing::info_span!(
                "reconcile",
                otel.name = %format_args!("resume {}", pending.stage),
                tenant = %pending.tenant,
                environment = %pending.environment,
                // Recorded by the stage's claim, like a call's.
                stage = tracing::field::Empty,
            );
            let outcome = self.resume(&pending).instrument(span).await;
            crate::metrics::metrics().reconciler_run(
                &format!("resume_{}", pending.stage),
                match &outcome {
                    Ok(true) => "completed",
                    Ok(false) => "needs_caller",
                    Err(_) => "failed",
                },
            );
            match outcome {
                Ok(true) => resumed += 1,
                Ok(false) => {}
                Err(error) => tracing::info!(
                    tenant = %pending.tenant,
                    environment = %pending.environment,
                    stage = %pending.stage,
                    error = %error,
                    "resumed stage did not complete yet"
                ),
            }
        }
        Ok(resumed)
    }

    /// Carries on with one stage; `false` when it cannot be resumed without a caller.
    async fn resume(&self, pending: &PendingStage) -> Result<bool> {
        let tenant = TenantId::parse("tenant", &pending.tenant).map_err(Error::from)?;
        let key = OnboardingKey::new(tenant, pending.environment);
        let deadline = Deadline::after(STEP_DEADLINE);
        let creditor_key = pending.creditor.as_ref().map(|creditor| CreditorKey {
            onboarding: key.clone(),
            creditor: creditor.clone(),
        });
        // Each step is recorded under the RPC whose work it carries on.
        match (pending.stage, creditor_key) {
            (Stage::Account, _) => {
                let record = self.get_onboarding(&key).await?;
                // The password a confirmation kept, unverified, when Billecta could not be asked.
                let username = record
                    .secret_of("", CredentialField::Password)
                    .and_then(|c| c.principal.clone());
                let Some(username) = username else {
                    return Ok(false);
                };
                let password = self.secret(&record, "", CredentialField::Password).await?;
                self.confirm_account_activation(
                    &call(),
                    &key,
                    &Mutation::plain("ConfirmAccountActivation"),
                    username,
                    password,
                    deadline,
                )
                .await?;
            }
            (Stage::Creditor, Some(creditor_key)) => {
                let record = self.get_onboarding(&key).await?;
                let Ok(creditor) = find_creditor(&record, &creditor_key) else {
                    return Ok(false);
                };
                let new = NewCreditor {
                    organisation_number: OrganisationNumber::parse(
                        "organisation_number",
                        &creditor.organisation_number,
                    )
                    .map_err(Error::from)?,
                    company_name: creditor.company_name.clone(),
                    title: creditor.title.clone(),
                };
                self.create_creditor(&call(), &key, &Mutation::plain("CreateCreditor"), new)
                    .await?;
            }
            (Stage::CompanySettings, Some(creditor_key)) => {
                self.update_company_settings(
                    &call(),
                    &creditor_key,
                    &Mutation::plain("UpdateCompanySettings"),
                    None,
                    deadline,
                )
                .await?;
            }
            (Stage::InvoiceSettings, Some(creditor_key)) => {
                self.update_invoice_settings(
                    &call(),
                    &creditor_key,
                    &Mutation::plain("UpdateInvoiceSettings"),
                    None,
                    deadline,
                )
                .await?;
            }
            (Stage::ApiAccess, Some(creditor_key)) => {
                let record = self.get_onboarding(&key).await?;
                let Ok(creditor) = find_creditor(&record, &creditor_key) else {
                    return Ok(false);
                };
                // The credentials a registration kept, unverified, when Billecta could not be asked.
                let pending = |field| {
                    record.credentials.iter().find(|c| {
                        c.scope == creditor.id && c.field == field && c.verify_time.is_none()
                    })
                };
                // An API user CreateApiUser was making: carried on with the password it generated.
                if let Some(stored) = pending(CredentialField::GeneratedPassword) {
                    let username = stored.principal.clone().unwrap_or_default();
                    self.create_api_user(
                        &call(),
                        &creditor_key,
                        &Mutation::plain("CreateApiUser"),
                        username,
                        "Payway API".to_owned(),
                        deadline,
                    )
                    .await?;
                    return Ok(true);
                }
                let credentials = if let Some(stored) = pending(CredentialField::Password) {
                    ApiCredentials::Password {
                        username: stored.principal.clone().unwrap_or_default(),
                        password: self
                            .secret(&record, &creditor.id, CredentialField::Password)
                            .await?,
                    }
                } else if let Some(stored) = pending(CredentialField::Token) {
                    ApiCredentials::Token {
                        username: stored.principal.clone().filter(|name| !name.is_empty()),
                        token: self
                            .secret(&record, &creditor.id, CredentialField::Token)
                            .await?,
                    }
                } else {
                    return Ok(false);
                };
                self.register_api_credentials(
                    &call(),
                    &creditor_key,
                    &Mutation::plain("RegisterApiCredentials"),
                    credentials,
                    deadline,
                )
                .await?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the breaker has paused calls to this environment's Billecta: work for it waits.
    pub fn billecta_paused(&self, environment: Environment) -> bool {
        self.billecta.client(environment).breaker_state() == BreakerState::Open
    }

    /// The scheduled live check of one onboarding, recorded with `reconciler` as actor.
    pub async fn revalidate(&self, key: &OnboardingKey) -> Result<()> {
        let checked = self
            .validate_onboarding(
                &call(),
                key,
                &Mutation::plain("ValidateOnboarding"),
                Deadline::after(STEP_DEADLINE),
            )
            .await;
        let outcome = match &checked {
            Ok((record, _)) if record.state == crate::domain::OnboardingState::Broken => "broken",
            Ok(_) => "ok",
            Err(_) => "failed",
        };
        crate::metrics::metrics().reconciler_run("validate", outcome);
        checked.map(drop)
    }
}
