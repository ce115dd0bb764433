//! The stages the service drives in Billecta: confirming the account, creating (or adopting) a
//! creditor, its company and invoice settings.
//!
//! Each runs in three steps, so that no database transaction waits on Billecta:
//! 1. **Claim** (one transaction): replay a retried request_id, check the etag and the stage order,
//!    record what was asked for, and put the stage IN_PROGRESS under a lease. validate_only stops
//!    here, before Billecta is contacted.
//! 2. **Billecta**, outside any transaction, within the caller's deadline and the lease.
//! 3. **Record** (a second transaction): if the lease still holds, store the outcome — the stage's
//!    new state, any secrets, one audit event with the outcome — and, on success, the result under
//!    the request_id.
//!
//! A lease that expires (its holder crashed) lets the next call take the stage over. Creating a
//! creditor always looks for one with the organisation number first, so an interrupted create is
//! adopted, never repeated.

use super::{CallContext, Committed, Conventions, Mutation, Operations, Written};
use crate::crypto::SecretContext;
use crate::desired;
use crate::domain::failure::StageFailure;
use crate::domain::onboarding::{
    CompanySettings, CredentialRecord, CreditorRecord, InvoiceSettings, Lease, OnboardingRecord,
    StageRecord,
};
use crate::domain::stages::{self, creditor_stage};
use crate::domain::swedish::{InvoiceNumber, OrganisationNumber};
use crate::domain::validate::{CreditorKey, FieldViolation, OnboardingKey};
use crate::domain::{CredentialField, Micros, Stage, StageState, now_micros};
use crate::error::{Error, Result};
use crate::secret::Secret;
use billecta_client::model::Creditor;
use billecta_client::{BillectaError, Deadline, ErrorKind};
use std::time::Duration;

/// The stage a call works on: an environment stage (`creditor` empty) or a creditor's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StageRef {
    /// The creditor's internal id; empty for the environment.
    pub creditor: String,
    pub stage: Stage,
}

/// What the claim step leaves for the Billecta step.
pub(super) struct Claimed {
    pub record: OnboardingRecord,
    pub lease: Lease,
    /// The stage as it was before the claim.
    pub before: StageRecord,
    /// The whole onboarding before the call, to put back what a refused call changed.
    pub original: OnboardingRecord,
    pub target: StageRef,
}

/// Either the claim, or the answer when the call must not go on (validate_only, or a retry whose
/// first result is stored).
pub(super) enum Claim {
    Claimed(Box<Claimed>),
    Answered(Box<OnboardingRecord>),
}

/// A secret to store for the environment (`scope` empty) or a creditor.
pub(super) struct NewSecret<'a> {
    pub scope: &'a str,
    pub field: CredentialField,
    pub secret: &'a Secret,
    /// The Billecta username it belongs to.
    pub principal: &'a str,
    /// Whether Billecta just accepted it.
    pub verified: bool,
}

/// What CreateCreditor asks for.
pub struct NewCreditor {
    pub organisation_number: OrganisationNumber,
    pub company_name: String,
    /// The Payway title, or empty.
    pub title: String,
}

/// The lease owner while a create whose answer was lost settles in Billecta.
const SETTLING: &str = "settling-after-unknown-outcome";

/// Time kept back from the lease, so the outcome is recorded before another call may take over.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Undoes what a call changed on the way in (the stage, what was asked for, a creditor it added):
/// a refused call changes nothing but the audit trail.
pub(super) fn restore(record: &mut OnboardingRecord, claimed: &Claimed) {
    let target = &claimed.target;
    if target.creditor.is_empty() {
        *record.stage_mut(target.stage) = claimed.before.clone();
        record.account = claimed.original.account.clone();
        return;
    }
    let original = claimed
        .original
        .creditors
        .iter()
        .find(|creditor| creditor.id == target.creditor);
    match original {
        Some(original) => {
            if let Some(creditor) = record
                .creditors
                .iter_mut()
                .find(|creditor| creditor.id == target.creditor)
            {
                *creditor = original.clone();
            }
        }
        None => record
            .creditors
            .retain(|creditor| creditor.id != target.creditor),
    }
}

/// Records a failed Billecta step: a stage that was completed before the call stays as it was (the
/// setup in Billecta is what it was), any other shows the failure — waiting on the system when it is
/// transient.
pub(super) fn settle_failure(
    record: &mut OnboardingRecord,
    claimed: &Claimed,
    error: &BillectaError,
    now: Micros,
) {
    if claimed.before.state == StageState::Completed {
        restore(record, claimed);
    } else {
        stages::billecta_failed(
            stage_mut(record, &claimed.target),
            &StageFailure::from(error),
            now,
        );
    }
}

pub(super) fn stage_mut<'a>(
    record: &'a mut OnboardingRecord,
    target: &StageRef,
) -> &'a mut StageRecord {
    if target.creditor.is_empty() {
        return record.stage_mut(target.stage);
    }
    let creditor = record
        .creditors
        .iter_mut()
        .find(|creditor| creditor.id == target.creditor)
        .expect("a claimed creditor is never removed");
    creditor_stage(creditor, target.stage)
}

pub(super) fn creditor_mut<'a>(
    record: &'a mut OnboardingRecord,
    id: &str,
) -> &'a mut CreditorRecord {
    record
        .creditors
        .iter_mut()
        .find(|creditor| creditor.id == id)
        .expect("a claimed creditor is never removed")
}

/// The creditor a creditor-level call names, or NOT_FOUND.
pub(super) fn find_creditor<'a>(
    record: &'a OnboardingRecord,
    key: &CreditorKey,
) -> Result<&'a CreditorRecord> {
    record
        .creditors
        .iter()
        .find(|creditor| key.is_named(&creditor.name))
        .ok_or_else(|| Error::NotFound {
            resource: key.name(),
        })
}

/// The creditor a creditor-level call names and the stage it works on, once the stages it needs are
/// done and no other call is working on that stage.
pub(super) fn open_creditor_stage<'a>(
    record: &'a OnboardingRecord,
    key: &CreditorKey,
    stage: Stage,
    requires: &[Stage],
    action: &str,
    now: Micros,
) -> Result<(&'a CreditorRecord, StageRef)> {
    let creditor = find_creditor(record, key)?;
    stages::require_creditor_done(record, creditor, requires, action)?;
    let current = creditor
        .stages
        .iter()
        .find(|s| s.stage == stage)
        .expect("every creditor stage exists");
    check_free(current, &creditor.name, now)?;
    let target = StageRef {
        creditor: creditor.id.clone(),
        stage,
    };
    Ok((creditor, target))
}

/// Refuses a stage another call is working on, unless its lease ran out.
pub(super) fn check_free(stage: &StageRecord, subject: &str, now: Micros) -> Result<()> {
    match &stage.lease {
        Some(lease) if lease.expire_time > now => Err(Error::Busy {
            resource: format!("{subject}/stages/{}", stage.stage),
            retry_after: Duration::from_micros(
                u64::try_from(lease.expire_time - now).unwrap_or_default(),
            ),
        }),
        _ => Ok(()),
    }
}

/// The audit outcome of a failed Billecta step, as the caller will see it.
pub(super) fn outcome_of(error: &BillectaError) -> &'static str {
    match error.kind() {
        _ if error.failure == billecta_client::Failure::DeadlineExceeded => "DEADLINE_EXCEEDED",
        ErrorKind::Transient => "UNAVAILABLE",
        ErrorKind::Unexpected => "INTERNAL",
        ErrorKind::InvalidInput | ErrorKind::BadCredentials | ErrorKind::NotFound => {
            "FAILED_PRECONDITION"
        }
    }
}

impl Operations {
    /// Step 1: claims `target` for this call after `prepare` checked the order and recorded what was
    /// asked for.
    pub(super) async fn claim(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        mut prepare: impl FnMut(&mut OnboardingRecord, Micros) -> Result<(String, StageRef)>,
    ) -> Result<Claim> {
        let owner = uuid::Uuid::new_v4().to_string();
        let lease_micros = i64::try_from(self.timing.lease.as_micros()).unwrap_or(i64::MAX);
        let mut claimed = None;
        let conventions = Conventions {
            first_write: true,
            save_result: false,
            bump_version: false,
            outcome: "OK",
        };
        let written = self
            .transact(call, key, mutation, conventions, |record, now| {
                let original = record.clone();
                let (summary, target) = prepare(record, now)?;
                let prepared = record.clone();
                let lease = Lease {
                    owner: owner.clone(),
                    expire_time: now.saturating_add(lease_micros),
                };
                let stage = stage_mut(record, &target);
                let before = stage.clone();
                // A completed stage stays completed while it is redone: what Billecta has works
                // until the new call succeeds.
                if stage.state != StageState::Completed {
                    stage.state = StageState::InProgress;
                    stage.blocked_on = crate::domain::BlockedOn::Nobody;
                    stage.update_time = Some(now);
                }
                stage.lease = Some(lease.clone());
                claimed = Some((lease, before, original, prepared, target));
                Ok(Written::from(summary))
            })
            .await?;
        match written {
            Committed::Replayed(record) => Ok(Claim::Answered(Box::new(record))),
            Committed::Stored(record) => {
                let (lease, before, original, prepared, target) =
                    claimed.expect("a stored claim ran its preparation");
                tracing::Span::current().record("stage", before.stage.as_str());
                if mutation.validate_only {
                    // What was asked for, checked; the stage is not claimed and Billecta not asked.
                    let mut answer = prepared;
                    answer.refresh();
                    return Ok(Claim::Answered(Box::new(answer)));
                }
                Ok(Claim::Claimed(Box::new(Claimed {
                    record,
                    lease,
                    before,
                    original,
                    target,
                })))
            }
        }
    }

    /// Step 3: records the outcome if this call still holds its lease. `apply` gets the record with
    /// the stage still claimed, and must settle the stage.
    pub(super) async fn record(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        claimed: &Claimed,
        outcome: &'static str,
        mut apply: impl FnMut(&mut OnboardingRecord, Micros) -> Result<Written>,
    ) -> Result<OnboardingRecord> {
        let conventions = Conventions {
            first_write: false,
            save_result: outcome == "OK",
            bump_version: outcome == "OK",
            outcome,
        };
        let written = self
            .transact(call, key, mutation, conventions, |record, now| {
                let target = &claimed.target;
                if !target.creditor.is_empty()
                    && !record.creditors.iter().any(|c| c.id == target.creditor)
                {
                    // Only a copy older than the claim lacks the creditor (what a replica keeps
                    // may be one): refused, the write is made again on the onboarding as locked.
                    return Err(Error::Internal(anyhow::anyhow!(
                        "the claimed creditor {} is not in the onboarding",
                        target.creditor
                    )));
                }
                let stage = stage_mut(record, &claimed.target);
                if stage.lease.as_ref() != Some(&claimed.lease) {
                    return Err(Error::Busy {
                        resource: format!("{}/stages/{}", key.name(), claimed.target.stage),
                        retry_after: Duration::from_secs(1),
                    });
                }
                stage.lease = None;
                apply(record, now)
            })
            .await?;
        match written {
            Committed::Replayed(record) | Committed::Stored(record) => Ok(record),
        }
    }

    /// Records a failed Billecta step (see [`settle_failure`]) and answers with the failure.
    pub(super) async fn failed<T>(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        claimed: &Claimed,
        error: BillectaError,
        what: &str,
    ) -> Result<T> {
        self.record(
            call,
            key,
            mutation,
            claimed,
            outcome_of(&error),
            |record, now| {
                settle_failure(record, claimed, &error, now);
                Ok(Written::from(format!("{what} failed: {error}")))
            },
        )
        .await?;
        Err(Error::Billecta(error))
    }

    /// Gives a claimed stage back unchanged when the call cannot go on before reaching Billecta.
    pub(super) async fn abandon<T>(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        claimed: &Claimed,
        error: Error,
    ) -> Result<T> {
        let outcome = match error {
            Error::Internal(_) => "INTERNAL",
            _ => "FAILED_PRECONDITION",
        };
        self.record(call, key, mutation, claimed, outcome, |record, _| {
            restore(record, claimed);
            Ok(Written::from(format!(
                "{} stopped before reaching Billecta: {error}",
                mutation.method
            )))
        })
        .await?;
        Err(error)
    }

    /// The claimed creditor's Billecta id and the account's token, to work on the creditor with.
    pub(super) async fn account_access(&self, claimed: &Claimed) -> Result<(String, Secret)> {
        let public_id = creditor_public_id(claimed)?;
        let token = self
            .secret(&claimed.record, "", CredentialField::AccountToken)
            .await?;
        Ok((public_id, token))
    }

    /// The end of the lease, less a margin to record the outcome in.
    pub(super) fn lease_deadline(claimed: &Claimed) -> Deadline {
        let lease_left = Duration::from_micros(
            u64::try_from(claimed.lease.expire_time - now_micros()).unwrap_or_default(),
        )
        .saturating_sub(LEASE_MARGIN);
        Deadline::after(lease_left)
    }

    /// The deadline of the Billecta step: the caller's, but never past the lease.
    pub(super) fn billecta_deadline(&self, caller: Deadline, claimed: &Claimed) -> Deadline {
        let lease_deadline = Self::lease_deadline(claimed);
        match (caller.remaining(), lease_deadline.remaining()) {
            (Some(caller_left), Some(lease_left)) if caller_left < lease_left => caller,
            _ => lease_deadline,
        }
    }

    fn secret_context<'a>(
        record: &'a OnboardingRecord,
        scope: &'a str,
        field: CredentialField,
    ) -> SecretContext<'a> {
        SecretContext {
            tenant: &record.tenant,
            environment: record.environment.as_str(),
            scope,
            field: field.as_str(),
        }
    }

    /// Encrypts a secret for storage, with what reads show of it.
    pub(super) fn seal(
        &self,
        record: &OnboardingRecord,
        call: &CallContext,
        new: NewSecret<'_>,
        now: Micros,
    ) -> Result<(CredentialRecord, crate::crypto::Sealed)> {
        let NewSecret {
            scope,
            field,
            secret,
            principal,
            verified,
        } = new;
        let sealed = self
            .keyring
            .seal(secret, &Self::secret_context(record, scope, field))
            .map_err(|error| {
                Error::Internal(anyhow::Error::new(error).context("encrypting a secret"))
            })?;
        let credential = CredentialRecord {
            scope: scope.to_owned(),
            field,
            fingerprint: match field {
                CredentialField::AccountToken | CredentialField::ApiToken => secret.fingerprint(),
                CredentialField::AccountPassword
                | CredentialField::ApiPassword
                | CredentialField::WebhookAuthorization => self.keyring.keyed_fingerprint(secret),
            },
            principal: Some(principal.to_owned()),
            set_by: call.actor.clone(),
            set_time: now,
            verify_time: verified.then_some(now),
        };
        Ok((credential, sealed))
    }

    /// A stored secret, decrypted.
    pub(super) async fn secret(
        &self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Result<Secret> {
        let key = record.key();
        let missing = || Error::Precondition {
            reason: "CREDENTIAL_MISSING",
            subject: key.name(),
            message: format!(
                "no {field} is stored; confirm the account with ConfirmAccountActivation"
            ),
        };
        let context = Self::secret_context(record, scope, field);
        let sealed = self
            .store
            .sealed_credential(record, scope, field)
            .await?
            .ok_or_else(missing)?;
        if let Ok(secret) = self.keyring.open(&sealed, &context) {
            return Ok(secret);
        }
        // A ciphertext kept in memory may since have been re-encrypted under a newer key: open what
        // the database holds now before calling it unreadable.
        self.store.forget(record);
        let stored = self
            .store
            .stored_sealed(record, scope, field)
            .await?
            .ok_or_else(missing)?;
        self.keyring.open(&stored, &context).map_err(|error| {
            Error::Internal(anyhow::Error::new(error).context("decrypting a stored secret"))
        })
    }

    /// ConfirmAccountActivation: signs in with the account's credentials; success completes ACCOUNT
    /// and stores the password and the token, encrypted.
    pub async fn confirm_account_activation(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        username: String,
        password: Secret,
        deadline: Deadline,
    ) -> Result<OnboardingRecord> {
        let claim = self
            .claim(call, key, mutation, |record, now| {
                stages::require_done(record, &[Stage::Agreement], "ConfirmAccountActivation")?;
                if record.account.is_none() {
                    return Err(Error::Precondition {
                        reason: "ACCOUNT_NOT_REGISTERED",
                        subject: format!("{}/stages/{}", key.name(), Stage::Account),
                        message: "register the account with RegisterAccount first".to_owned(),
                    });
                }
                check_free(record.stage(Stage::Account), &key.name(), now)?;
                let target = StageRef {
                    creditor: String::new(),
                    stage: Stage::Account,
                };
                Ok((format!("signing in to Billecta as {username}"), target))
            })
            .await?;
        let claimed = match claim {
            Claim::Answered(record) => return Ok(*record),
            Claim::Claimed(claimed) => claimed,
        };
        let client = self.billecta.client(key.environment);
        let signed_in = client
            .authenticate(
                &username,
                &password,
                self.billecta_deadline(deadline, &claimed),
            )
            .await;
        match signed_in {
            Ok(token) => {
                self.record(call, key, mutation, &claimed, "OK", |record, now| {
                    let verified = |field, secret| NewSecret {
                        scope: "",
                        field,
                        secret,
                        principal: &username,
                        verified: true,
                    };
                    let password = verified(CredentialField::AccountPassword, &password);
                    let token = verified(CredentialField::AccountToken, &token.value);
                    let secrets = vec![
                        self.seal(record, call, password, now)?,
                        self.seal(record, call, token, now)?,
                    ];
                    if let Some(account) = record.account.as_mut() {
                        account.username = Some(username.clone());
                        account.activate_time = Some(now);
                    }
                    stages::account_confirmed(record, now);
                    Ok(Written {
                        summary: format!(
                            "account activation confirmed: {username} signs in to Billecta"
                        ),
                        secrets,
                        removed: Vec::new(),
                    })
                })
                .await
            }
            Err(error) if error.kind() == ErrorKind::BadCredentials => {
                let refused = self.credentials_refused(key, &username, &error);
                self.record(
                    call,
                    key,
                    mutation,
                    &claimed,
                    "FAILED_PRECONDITION",
                    |record, _| {
                        restore(record, &claimed);
                        Ok(Written::from(format!(
                            "Billecta refused the credentials of {username}: {error}"
                        )))
                    },
                )
                .await?;
                Err(refused)
            }
            Err(error) => {
                self.record(
                    call,
                    key,
                    mutation,
                    &claimed,
                    outcome_of(&error),
                    |record, now| {
                        let summary = format!("signing in as {username} failed: {error}");
                        if claimed.before.state == StageState::Completed {
                            // The account works with what is stored; nothing changes.
                            restore(record, &claimed);
                            return Ok(Written::from(summary));
                        }
                        // Kept, unverified, so that the sign-in can be tried again without the caller.
                        let unverified = NewSecret {
                            scope: "",
                            field: CredentialField::AccountPassword,
                            secret: &password,
                            principal: &username,
                            verified: false,
                        };
                        let secret = self.seal(record, call, unverified, now)?;
                        let failure = StageFailure::from(&error);
                        stages::billecta_failed(record.stage_mut(Stage::Account), &failure, now);
                        Ok(Written {
                            summary,
                            secrets: vec![secret],
                            removed: Vec::new(),
                        })
                    },
                )
                .await?;
                Err(Error::Billecta(error))
            }
        }
    }

    /// Billecta refused an account's credentials: say what usually causes it.
    fn credentials_refused(
        &self,
        key: &OnboardingKey,
        username: &str,
        error: &BillectaError,
    ) -> Error {
        let environment = key.environment;
        let other = match environment {
            crate::domain::Environment::Test => "production",
            crate::domain::Environment::Production => "test",
        };
        Error::Precondition {
            reason: "BILLECTA_CREDENTIALS_REJECTED",
            subject: format!("{}/stages/{}", key.name(), Stage::Account),
            message: format!(
                "Billecta's {environment} environment refused the username {username:?} with this password. \
                 Likely causes: the password is wrong or was not changed yet; the account is not activated \
                 (activation e-mail, terms accepted); or these are {other} credentials, which never work in \
                 {environment}. Billecta said: {}",
                error.message
            ),
        }
    }

    /// CreateCreditor: creates the creditor in Billecta, or adopts the one Billecta holds for the
    /// organisation number. Returns the onboarding and the creditor's resource name.
    pub async fn create_creditor(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        new: NewCreditor,
    ) -> Result<(OnboardingRecord, String)> {
        let NewCreditor {
            organisation_number,
            company_name,
            title,
        } = new;
        let name = CreditorKey {
            onboarding: key.clone(),
            creditor: organisation_number.as_str().to_owned(),
        }
        .name();
        let claim = self
            .claim(call, key, mutation, |record, now| {
                stages::require_done(record, &stages::ENVIRONMENT_STAGES, "CreateCreditor")?;
                let existing = record.creditors.iter_mut().find(|c| c.name == name);
                let creditor = match existing {
                    Some(creditor) => {
                        let stage = creditor_stage(creditor, Stage::Creditor);
                        if stage.state == StageState::Completed {
                            return Err(Error::AlreadyExists {
                                resource: name.clone(),
                            });
                        }
                        check_free(stage, &name, now)?;
                        // An interrupted or refused create: take it up again with this input.
                        creditor.company_name = company_name.clone();
                        creditor.title = title.clone();
                        creditor
                    }
                    None => {
                        record.creditors.push(CreditorRecord {
                            id: uuid::Uuid::new_v4().to_string(),
                            name: name.clone(),
                            organisation_number: organisation_number.as_str().to_owned(),
                            company_name: company_name.clone(),
                            title: title.clone(),
                            creditor_public_id: None,
                            stages: stages::new_creditor_stages(),
                            company_settings: None,
                            invoice_settings: None,
                            api_access: None,
                            webhooks: None,
                        });
                        record.creditors.last_mut().expect("just pushed")
                    }
                };
                let target = StageRef {
                    creditor: creditor.id.clone(),
                    stage: Stage::Creditor,
                };
                Ok((
                    format!("creating creditor {organisation_number} ({company_name}) in Billecta"),
                    target,
                ))
            })
            .await?;
        let claimed = match claim {
            Claim::Answered(record) => return Ok((*record, name)),
            Claim::Claimed(claimed) => claimed,
        };
        let token = match self
            .secret(&claimed.record, "", CredentialField::AccountToken)
            .await
        {
            Ok(token) => token,
            Err(error) => return self.abandon(call, key, mutation, &claimed, error).await,
        };
        let client = self.billecta.client(key.environment);
        // The create is not cut short by an impatient caller: an answer lost to a timeout is the one
        // case that could lead to a second creditor. The work runs detached, within the lease.
        let billecta_deadline = Self::lease_deadline(&claimed);
        let outcome: std::result::Result<(String, bool), BillectaError> = async {
            let found = client
                .find_creditors_by_org_no(&token, organisation_number.as_str(), billecta_deadline)
                .await?;
            if let Some(existing) = found.iter().find_map(|c| c.creditor_public_id.clone()) {
                if found.len() > 1 {
                    tracing::warn!(organisation_number = %organisation_number, count = found.len(), "billecta holds several creditors for one organisation number; adopting the first");
                }
                return Ok((existing, true));
            }
            let new = desired::new_creditor(&organisation_number, &company_name);
            let id = client.create_creditor(&token, &new, billecta_deadline).await?;
            Ok((id, false))
        }
        .await;
        let creditor_id = claimed.target.creditor.clone();
        match outcome {
            Ok((public_id, adopted)) => {
                let record = self
                    .record(call, key, mutation, &claimed, "OK", |record, now| {
                        let creditor = creditor_mut(record, &creditor_id);
                        creditor.creditor_public_id = Some(public_id.clone());
                        stages::creditor_created(creditor, adopted, now);
                        let verb = if adopted { "adopted" } else { "created" };
                        Ok(Written::from(format!(
                            "creditor {organisation_number} {verb} in Billecta as {public_id}"
                        )))
                    })
                    .await?;
                Ok((record, name))
            }
            Err(error) => {
                self.record(
                    call,
                    key,
                    mutation,
                    &claimed,
                    outcome_of(&error),
                    |record, now| {
                        settle_failure(record, &claimed, &error, now);
                        if error.outcome_unknown {
                            // Billecta may still be creating it: nobody creates again until it
                            // has had time to finish, and the next attempt looks it up first.
                            let settle = i64::try_from(self.timing.settle.as_micros())
                                .unwrap_or(i64::MAX);
                            let stage = stage_mut(record, &claimed.target);
                            stage.lease = Some(Lease {
                                owner: SETTLING.to_owned(),
                                expire_time: now.saturating_add(settle),
                            });
                            stage.message = format!(
                                "Billecta may have created the creditor although its answer was lost ({error}); it is looked up before any new attempt, from {} s on.",
                                self.timing.settle.as_secs()
                            );
                        }
                        Ok(Written::from(format!(
                            "creating creditor {organisation_number} failed: {error}"
                        )))
                    },
                )
                .await?;
                Err(Error::Billecta(error))
            }
        }
    }

    /// UpdateCompanySettings: writes the address and both bankgiros into Billecta's creditor by a
    /// read-modify-write of the whole creditor, then reads it back.
    pub async fn update_company_settings(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        mutation: &Mutation,
        requested: Option<CompanySettings>,
        deadline: Deadline,
    ) -> Result<OnboardingRecord> {
        let onboarding = &key.onboarding;
        let mut settings = None;
        let claim = self
            .claim(call, onboarding, mutation, |record, now| {
                let (creditor, target) = open_creditor_stage(
                    record,
                    key,
                    Stage::CompanySettings,
                    &[Stage::Creditor],
                    "UpdateCompanySettings",
                    now,
                )?;
                // Without settings in the request, the ones asked for before (or promoted) apply.
                let desired = match requested.clone().or_else(|| creditor.company_settings.clone()) {
                    Some(desired) => CompanySettings {
                        bankgiro_payments_approved: false,
                        ..desired
                    },
                    None => {
                        return Err(FieldViolation::new(
                            "company_settings",
                            "is required: none were given or promoted before",
                        )
                        .into());
                    }
                };
                let summary = format!(
                    "setting company settings of {}: {}, {} {}, bankgiro {} for invoicing, {} for payments",
                    key.creditor,
                    desired.address,
                    desired.zip_code,
                    desired.city,
                    desired.bankgiro_invoicing,
                    desired.bankgiro_payments
                );
                creditor_mut(record, &target.creditor).company_settings = Some(desired.clone());
                settings = Some(desired);
                Ok((summary, target))
            })
            .await?;
        let claimed = match claim {
            Claim::Answered(record) => return Ok(*record),
            Claim::Claimed(claimed) => claimed,
        };
        let settings = settings.expect("a claim resolved the settings");
        let (public_id, token) = match self.account_access(&claimed).await {
            Ok(prepared) => prepared,
            Err(error) => {
                return self
                    .abandon(call, onboarding, mutation, &claimed, error)
                    .await;
            }
        };
        let client = self.billecta.client(onboarding.environment);
        let billecta_deadline = self.billecta_deadline(deadline, &claimed);
        let outcome: std::result::Result<bool, BillectaError> = async {
            let mut creditor: Creditor = client
                .get_creditor(&token, &public_id, billecta_deadline)
                .await?;
            desired::apply_company_settings(&mut creditor, &settings);
            client
                .update_creditor(&token, &creditor, billecta_deadline)
                .await?;
            let shown = client
                .get_creditor(&token, &public_id, billecta_deadline)
                .await?;
            Ok(desired::payments_bankgiro_approved(
                &shown,
                &settings.bankgiro_payments,
            ))
        }
        .await;
        let creditor_id = claimed.target.creditor.clone();
        match outcome {
            Ok(approved) => {
                self.record(call, onboarding, mutation, &claimed, "OK", |record, now| {
                    let creditor = creditor_mut(record, &creditor_id);
                    if let Some(stored) = creditor.company_settings.as_mut() {
                        stored.bankgiro_payments_approved = approved;
                    }
                    stages::company_settings_applied(creditor, approved, now);
                    let approval = if approved { "approved" } else { "awaiting Billecta's approval" };
                    Ok(Written::from(format!(
                        "company settings of {} applied in Billecta; bankgiro for payments {approval}",
                        key.creditor
                    )))
                })
                .await
            }
            Err(error) => {
                let what = format!("setting company settings of {}", key.creditor);
                self.failed(call, onboarding, mutation, &claimed, error, &what).await
            }
        }
    }

    /// UpdateInvoiceSettings: sets the next invoice number, refusing one below Billecta's current.
    pub async fn update_invoice_settings(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        mutation: &Mutation,
        requested: Option<InvoiceSettings>,
        deadline: Deadline,
    ) -> Result<OnboardingRecord> {
        let onboarding = &key.onboarding;
        let mut to_send = None;
        let claim = self
            .claim(call, onboarding, mutation, |record, now| {
                let (creditor, target) = open_creditor_stage(
                    record,
                    key,
                    Stage::InvoiceSettings,
                    &[Stage::Creditor],
                    "UpdateInvoiceSettings",
                    now,
                )?;
                // Given values win; what is not given stays as asked before (or as promoted).
                let stored = creditor.invoice_settings.clone().unwrap_or_default();
                // Billecta's number is set only when this call gives one, or applies what was asked
                // for before (or promoted): a call with payment terms alone leaves it alone.
                to_send = match &requested {
                    Some(given) => given.next_invoice_number,
                    None => stored.next_invoice_number,
                };
                let desired = match &requested {
                    Some(given) => InvoiceSettings {
                        next_invoice_number: given
                            .next_invoice_number
                            .or(stored.next_invoice_number),
                        payment_terms: given.payment_terms.clone().or(stored.payment_terms),
                    },
                    None => stored,
                };
                if desired == InvoiceSettings::default() {
                    return Err(FieldViolation::new(
                        "invoice_settings",
                        "is required: give a next invoice number, payment terms or both",
                    )
                    .into());
                }
                let creditor = creditor_mut(record, &target.creditor);
                creditor.invoice_settings = Some(desired);
                Ok((
                    format!("setting the invoice settings of {}", key.creditor),
                    target,
                ))
            })
            .await?;
        let claimed = match claim {
            Claim::Answered(record) => return Ok(*record),
            Claim::Claimed(claimed) => claimed,
        };
        let number = to_send.and_then(|n| InvoiceNumber::from_billecta(&n.to_string()));
        let (public_id, token) = match self.account_access(&claimed).await {
            Ok(prepared) => prepared,
            Err(error) => {
                return self
                    .abandon(call, onboarding, mutation, &claimed, error)
                    .await;
            }
        };
        let client = self.billecta.client(onboarding.environment);
        let billecta_deadline = self.billecta_deadline(deadline, &claimed);
        let outcome: std::result::Result<std::result::Result<(), InvoiceNumber>, BillectaError> =
            async {
                let mut creditor = client
                    .get_creditor(&token, &public_id, billecta_deadline)
                    .await?;
                let Some(number) = number else {
                    return Ok(Ok(()));
                };
                let current = creditor
                    .next_invoice_number
                    .as_deref()
                    .and_then(InvoiceNumber::from_billecta);
                if let Some(current) = current.filter(|current| *current > number) {
                    return Ok(Err(current));
                }
                creditor.next_invoice_number = Some(number.to_string());
                client
                    .update_creditor(&token, &creditor, billecta_deadline)
                    .await?;
                Ok(Ok(()))
            }
            .await;
        let creditor_id = claimed.target.creditor.clone();
        let asked = number.map_or_else(|| "unchanged".to_owned(), |n| n.to_string());
        match outcome {
            Ok(Ok(())) => {
                self.record(call, onboarding, mutation, &claimed, "OK", |record, now| {
                    stages::invoice_settings_applied(
                        creditor_mut(record, &creditor_id),
                        number.map(InvoiceNumber::value),
                        now,
                    );
                    Ok(Written::from(format!(
                        "invoice settings of {} applied; next invoice number {asked}",
                        key.creditor
                    )))
                })
                .await
            }
            Ok(Err(current)) => {
                self.record(call, onboarding, mutation, &claimed, "FAILED_PRECONDITION", |record, _| {
                    restore(record, &claimed);
                    Ok(Written::from(format!(
                        "refused next invoice number {asked} for {}: Billecta's is already {current}",
                        key.creditor
                    )))
                })
                .await?;
                Err(Error::Precondition {
                    reason: "INVOICE_NUMBER_BEHIND",
                    subject: key.name(),
                    message: format!(
                        "Billecta's next invoice number for this creditor is already {current}; {asked} would repeat invoice numbers"
                    ),
                })
            }
            Err(error) => {
                let what = format!("setting the invoice settings of {}", key.creditor);
                self.failed(call, onboarding, mutation, &claimed, error, &what)
                    .await
            }
        }
    }

    /// SkipStage: an optional stage of a creditor is skipped on purpose.
    pub async fn skip_stage(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        mutation: &Mutation,
        stage: Stage,
        reason: String,
    ) -> Result<OnboardingRecord> {
        debug_assert!(stage.is_optional());
        self.mutate(call, &key.onboarding, mutation, |record, now| {
            let (creditor, target) =
                open_creditor_stage(record, key, stage, &[Stage::Creditor], "SkipStage", now)?;
            if creditor
                .stages
                .iter()
                .any(|s| s.stage == stage && s.state == StageState::Completed)
            {
                return Err(Error::Precondition {
                    reason: "STAGE_ALREADY_COMPLETED",
                    subject: format!("{}/stages/{stage}", creditor.name),
                    message: format!("{stage} is completed and can no longer be skipped"),
                });
            }
            stages::stage_skipped(creditor_mut(record, &target.creditor), stage, &reason, now);
            Ok(format!("{stage} of {} skipped: {reason}", key.creditor))
        })
        .await
    }
}

/// The Billecta id of the claimed creditor (its CREDITOR stage is completed, so it has one).
pub(super) fn creditor_public_id(claimed: &Claimed) -> Result<String> {
    claimed
        .record
        .creditors
        .iter()
        .find(|creditor| creditor.id == claimed.target.creditor)
        .and_then(|creditor| creditor.creditor_public_id.clone())
        .ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "a completed creditor has no CreditorPublicId"
            ))
        })
}
