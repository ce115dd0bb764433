//! The stages the service drives in Billecta: confirming the account, creating (or adopting) a
//! creditor, its company and invoice settings. Each is a [`BillectaStage`] that
//! [`Operations::run_stage`] runs: claim, Billecta, record.
//!
//! Creating a creditor always looks for one with the organisation number first, so an interrupted
//! create is adopted, never repeated.

use super::stage::{
    BillectaStage, Claimed, Prepared, StageRef, Unsuccessful, check_free, stage_mut,
};
use super::users::Obtained;
use super::{CallContext, Mutation, Operations, Written};
use crate::crypto::SecretContext;
use crate::desired;
use crate::domain::onboarding::{
    CompanySettings, CredentialRecord, CreditorRecord, InvoiceSettings, Lease, OnboardingRecord,
    StageRecord,
};
use crate::domain::stages::{self, creditor_stage};
use crate::domain::swedish::{InvoiceNumber, OrganisationNumber};
use crate::domain::validate::{CreditorKey, FieldViolation, OnboardingKey};
use crate::domain::{CredentialField, Micros, Stage, StageState};
use crate::error::{Error, Result};
use crate::secret::Secret;
use billecta_client::model::Creditor;
use billecta_client::{BillectaError, Deadline, ErrorKind};
use std::time::Duration;

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

impl Operations {
    /// The account user's token, checked by the step's first request `first` (a refused token is
    /// renewed once, see [`Operations::with_token`]), with that request's answer; the token is
    /// handed on for the rest of the step.
    pub(super) async fn with_account_token<T, F, Fut>(
        &self,
        claimed: &Claimed,
        deadline: Deadline,
        first: F,
    ) -> std::result::Result<(Secret, T), Unsuccessful>
    where
        F: Fn(Secret) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, BillectaError>>,
    {
        let user = account_user_id(&claimed.record)?;
        let first = &first;
        self.with_token(
            &claimed.record,
            &user,
            deadline,
            &claimed.renewals,
            |token| async move {
                let answer = first(token.clone()).await?;
                Ok((token, answer))
            },
        )
        .await
    }

    /// The claimed creditor as Billecta holds it, read with the account user's token: its Billecta
    /// id, the token (for the rest of the step) and the creditor.
    pub(super) async fn claimed_creditor(
        &self,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<(String, Secret, Creditor), Unsuccessful> {
        let client = self.billecta.client(claimed.record.environment);
        let public_id = creditor_public_id(claimed)?;
        let public = public_id.as_str();
        let (token, creditor) = self
            .with_account_token(claimed, deadline, |token| async move {
                client.get_creditor(&token, public, deadline).await
            })
            .await?;
        Ok((public_id, token, creditor))
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
                CredentialField::Token
                | CredentialField::LegacyAccountToken
                | CredentialField::LegacyApiToken => secret.fingerprint(),
                CredentialField::Password
                | CredentialField::GeneratedPassword
                | CredentialField::WebhookAuthorization
                | CredentialField::LegacyAccountPassword
                | CredentialField::LegacyApiPassword => self.keyring.keyed_fingerprint(secret),
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
        let activation = AccountActivation {
            key,
            password_fingerprint: self.keyring.keyed_fingerprint(&password),
            username,
            password,
            validate_only: mutation.validate_only,
        };
        self.run_stage(call, key, mutation, deadline, activation)
            .await
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
        let name = CreditorKey {
            onboarding: key.clone(),
            creditor: new.organisation_number.as_str().to_owned(),
        }
        .name();
        let creation = CreditorCreation {
            key,
            name: name.clone(),
            new,
        };
        // The create is not cut short by an impatient caller: an answer lost to a timeout is the one
        // case that could lead to a second creditor. The work runs detached, within the lease.
        let record = self
            .run_stage(call, key, mutation, Deadline::none(), creation)
            .await?;
        Ok((record, name))
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
        let update = CompanySettingsUpdate {
            key,
            requested,
            settings: None,
        };
        self.run_stage(call, &key.onboarding, mutation, deadline, update)
            .await
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
        let update = InvoiceSettingsUpdate {
            key,
            requested,
            number: None,
        };
        self.run_stage(call, &key.onboarding, mutation, deadline, update)
            .await
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

/// The id of the user the account provisions with (ACCOUNT is completed, so there is one).
pub(super) fn account_user_id(record: &OnboardingRecord) -> Result<String> {
    record
        .account_user()
        .map(|user| user.id.clone())
        .ok_or_else(|| Error::Precondition {
            reason: "CREDENTIAL_MISSING",
            subject: record.key().name(),
            message:
                "no account token is stored; confirm the account with ConfirmAccountActivation"
                    .to_owned(),
        })
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

/// Billecta refused an account's credentials: say what usually causes it.
fn credentials_refused(key: &OnboardingKey, username: &str, error: &BillectaError) -> Error {
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

/// ACCOUNT: the account user's token, from the credentials the person chose in Billecta's portal.
/// The service signs in only if it holds no working token of that user with that password.
struct AccountActivation<'a> {
    key: &'a OnboardingKey,
    username: String,
    password: Secret,
    /// The password's keyed fingerprint, to tell whether it is the one stored.
    password_fingerprint: String,
    validate_only: bool,
}

impl BillectaStage for AccountActivation<'_> {
    type Answer = Obtained;

    fn step(&self) -> String {
        format!("signing in as {}", self.username)
    }

    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared> {
        let key = self.key;
        stages::require_done(record, &[Stage::Agreement], "ConfirmAccountActivation")?;
        if record.account.is_none() {
            return Err(Error::Precondition {
                reason: "ACCOUNT_NOT_REGISTERED",
                subject: format!("{}/stages/{}", key.name(), Stage::Account),
                message: "register the account with RegisterAccount first".to_owned(),
            });
        }
        check_free(record.stage(Stage::Account), &key.name(), now)?;
        if self.validate_only {
            record.stage_mut(Stage::Account).message =
                sign_in_plan(record, &self.username, &self.password_fingerprint);
        }
        let target = StageRef {
            creditor: String::new(),
            stage: Stage::Account,
        };
        Ok((
            format!("signing in to Billecta as {}", self.username),
            target,
        ))
    }

    async fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<Obtained, Unsuccessful> {
        let client = operations.billecta.client(self.key.environment);
        let obtained = operations
            .token_for_password(
                &claimed.record,
                &self.username,
                &self.password,
                deadline,
                |token| async move { client.current_token(&token, deadline).await.map(drop) },
                false,
            )
            .await;
        match obtained {
            Err(Unsuccessful::Billecta(error)) if error.kind() == ErrorKind::BadCredentials => {
                Err(Unsuccessful::Refused {
                    summary: format!(
                        "Billecta refused the credentials of {}: {error}",
                        self.username
                    ),
                    error: credentials_refused(self.key, &self.username, &error),
                })
            }
            other => other,
        }
    }

    fn succeeded(
        &self,
        operations: &Operations,
        call: &CallContext,
        _: &Claimed,
        record: &mut OnboardingRecord,
        obtained: &Obtained,
        now: Micros,
    ) -> Result<Written> {
        let username = &self.username;
        let user = record.add_user(Some(username));
        let stored = store_user_credentials(
            operations,
            call,
            record,
            &user,
            &obtained.token,
            Some(&self.password),
            now,
        )?;
        if let Some(account) = record.account.as_mut() {
            account.username = Some(username.clone());
            account.user = Some(user.clone());
            account.activate_time = Some(now);
        }
        stages::account_confirmed(record, now);
        let cause = format!("ConfirmAccountActivation signed in again as {username}");
        let said = sign_in_sentence(record, &user, obtained, stored.token_changed, &cause, now);
        let stage = record.stage_mut(Stage::Account);
        stage.message = format!("{} {said}", stage.message);
        Ok(Written {
            summary: format!(
                "account activation confirmed: {username} signs in to Billecta. {said}"
            ),
            secrets: stored.secrets,
            // What a failed attempt kept to try again with is now the user's.
            removed: pending_in(record, "", &[CredentialField::Password]),
            verified: unchanged_token(&user, &obtained.token, stored.token_changed),
        })
    }

    fn failed(
        &self,
        operations: &Operations,
        call: &CallContext,
        _: &Claimed,
        record: &mut OnboardingRecord,
        _: &BillectaError,
        now: Micros,
    ) -> Result<Written> {
        // Kept, unverified, with the stage (not the user, whose credentials it may not be), so
        // that the sign-in can be tried again without the caller.
        let unverified = NewSecret {
            scope: "",
            field: CredentialField::Password,
            secret: &self.password,
            principal: &self.username,
            verified: false,
        };
        Ok(Written {
            secrets: vec![operations.seal(record, call, unverified, now)?],
            ..Written::default()
        })
    }
}

/// What storing a user's credentials did.
pub(super) struct StoredCredentials {
    pub secrets: Vec<(CredentialRecord, crate::crypto::Sealed)>,
    /// What the user's stored token was before: `None` for none, `Some(true)` when it was another.
    pub token_changed: Option<bool>,
}

/// Stores a user's verified token and, if given, password, unless they are the ones stored (a
/// token stored again would look new to the payment configuration's readers).
pub(super) fn store_user_credentials(
    operations: &Operations,
    call: &CallContext,
    record: &OnboardingRecord,
    user: &str,
    token: &Secret,
    password: Option<&Secret>,
    now: Micros,
) -> Result<StoredCredentials> {
    let principal = record
        .user(user)
        .and_then(|user| user.username.clone())
        .unwrap_or_default();
    let stored_token = record
        .secret_of(user, CredentialField::Token)
        .map(|stored| stored.fingerprint.clone());
    let mut secrets = Vec::new();
    let verified = |field, secret| NewSecret {
        scope: user,
        field,
        secret,
        principal: &principal,
        verified: true,
    };
    if stored_token.as_deref() != Some(token.fingerprint().as_str()) {
        secrets.push(operations.seal(
            record,
            call,
            verified(CredentialField::Token, token),
            now,
        )?);
    }
    if let Some(password) = password {
        let same = record
            .secret_of(user, CredentialField::Password)
            .is_some_and(|stored| {
                stored.fingerprint == operations.keyring.keyed_fingerprint(password)
            });
        if !same {
            secrets.push(operations.seal(
                record,
                call,
                verified(CredentialField::Password, password),
                now,
            )?);
        }
    }
    Ok(StoredCredentials {
        secrets,
        token_changed: stored_token.map(|stored| stored != token.fingerprint()),
    })
}

/// The user's `token` when it is the one stored (`token_changed` of [`store_user_credentials`]):
/// Billecta just accepted it again.
pub(super) fn unchanged_token(
    user: &str,
    token: &Secret,
    token_changed: Option<bool>,
) -> Vec<(String, CredentialField, String)> {
    match token_changed {
        Some(false) => vec![(user.to_owned(), CredentialField::Token, token.fingerprint())],
        _ => Vec::new(),
    }
}

/// The pending (unverified) secrets of `fields` kept with a stage's scope, to remove.
pub(super) fn pending_in(
    record: &OnboardingRecord,
    scope: &str,
    fields: &[CredentialField],
) -> Vec<(String, CredentialField)> {
    fields
        .iter()
        .filter(|field| record.secret_of(scope, **field).is_some())
        .map(|field| (scope.to_owned(), *field))
        .collect()
}

/// What a call that obtained a token from a caller's credentials says of it, after putting every
/// payment configuration that hands out a changed token back to waiting for Payway's read.
pub(super) fn sign_in_sentence(
    record: &mut OnboardingRecord,
    user: &str,
    obtained: &Obtained,
    token_changed: Option<bool>,
    cause: &str,
    now: Micros,
) -> String {
    let label = record
        .user(user)
        .map(|user| user.label().to_owned())
        .unwrap_or_default();
    let prefix = match (obtained.signed_in, token_changed) {
        (false, None) => return format!("Registered the SecureToken given for {label}."),
        (false, Some(false)) => {
            return format!("The stored SecureToken of {label} works: no sign-in was needed.");
        }
        (true, None) => return format!("Signed in as {label}."),
        (true, Some(false)) => {
            return format!("Signed in as {label}; Billecta kept the user's SecureToken.");
        }
        (false, Some(true)) => format!("A new SecureToken of {label} was given"),
        (true, Some(true)) => format!("Signed in as {label}; Billecta issued a new SecureToken"),
    };
    let affected = stages::token_changed(record, user, cause, now);
    if affected.is_empty() {
        format!("{prefix}, which replaced the stored one.")
    } else {
        format!(
            "{prefix}, which replaced the stored one: the payment configuration of {} must be read again.",
            affected.join(", ")
        )
    }
}

/// What validate_only says a call with a password would do with the user's token.
pub(super) fn sign_in_plan(
    record: &OnboardingRecord,
    username: &str,
    password_fingerprint: &str,
) -> String {
    let user = record.user_named(username);
    if record
        .user_holding(username, password_fingerprint)
        .is_some()
    {
        return format!(
            "Would use the stored SecureToken of {username}, and sign in only if Billecta refuses it."
        );
    }
    let affected = user
        .map(|user| record.creditors_of_user(&user.id))
        .unwrap_or_default();
    let mut plan = format!(
        "Would sign in to Billecta as {username}: Billecta may issue a new SecureToken and invalidate the one before"
    );
    if affected.is_empty() {
        plan.push('.');
    } else {
        plan.push_str(&format!(
            ", which the payment configuration of {} hands out: Payway's payment code would have to read it again.",
            affected.join(", ")
        ));
    }
    plan
}

/// CREDITOR: creating the creditor in Billecta, or adopting the one it holds for the organisation
/// number.
struct CreditorCreation<'a> {
    key: &'a OnboardingKey,
    /// The creditor's resource name.
    name: String,
    new: NewCreditor,
}

impl BillectaStage for CreditorCreation<'_> {
    /// Billecta's id of the creditor, and whether it was there already (adopted).
    type Answer = (String, bool);

    fn step(&self) -> String {
        format!("creating creditor {}", self.new.organisation_number)
    }

    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared> {
        let (name, new) = (&self.name, &self.new);
        stages::require_done(record, &stages::ENVIRONMENT_STAGES, "CreateCreditor")?;
        let existing = record.creditors.iter_mut().find(|c| c.name == *name);
        let creditor = match existing {
            Some(creditor) => {
                let stage = creditor_stage(creditor, Stage::Creditor);
                if stage.state == StageState::Completed {
                    return Err(Error::AlreadyExists {
                        resource: name.clone(),
                    });
                }
                check_free(stage, name, now)?;
                // An interrupted or refused create: take it up again with this input.
                creditor.company_name = new.company_name.clone();
                creditor.title = new.title.clone();
                creditor
            }
            None => {
                record.creditors.push(CreditorRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: name.clone(),
                    organisation_number: new.organisation_number.as_str().to_owned(),
                    company_name: new.company_name.clone(),
                    title: new.title.clone(),
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
            format!(
                "creating creditor {} ({}) in Billecta",
                new.organisation_number, new.company_name
            ),
            target,
        ))
    }

    async fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<(String, bool), Unsuccessful> {
        let organisation_number = &self.new.organisation_number;
        let client = operations.billecta.client(self.key.environment);
        let (token, found) = operations
            .with_account_token(claimed, deadline, |token| async move {
                client
                    .find_creditors_by_org_no(&token, organisation_number.as_str(), deadline)
                    .await
            })
            .await?;
        if let Some(existing) = found.iter().find_map(|c| c.creditor_public_id.clone()) {
            if found.len() > 1 {
                tracing::warn!(organisation_number = %organisation_number, count = found.len(), "billecta holds several creditors for one organisation number; adopting the first");
            }
            return Ok((existing, true));
        }
        let new = desired::new_creditor(organisation_number, &self.new.company_name);
        let id = client.create_creditor(&token, &new, deadline).await?;
        Ok((id, false))
    }

    fn succeeded(
        &self,
        _: &Operations,
        _: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        (public_id, adopted): &(String, bool),
        now: Micros,
    ) -> Result<Written> {
        let creditor = creditor_mut(record, &claimed.target.creditor);
        creditor.creditor_public_id = Some(public_id.clone());
        stages::creditor_created(creditor, *adopted, now);
        let verb = if *adopted { "adopted" } else { "created" };
        Ok(Written::from(format!(
            "creditor {} {verb} in Billecta as {public_id}",
            self.new.organisation_number
        )))
    }

    fn failed(
        &self,
        operations: &Operations,
        _: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        error: &BillectaError,
        now: Micros,
    ) -> Result<Written> {
        if error.outcome_unknown {
            settling(
                stage_mut(record, &claimed.target),
                operations.timing.settle,
                now,
                &format!("its answer was lost ({error})"),
            );
        }
        Ok(Written::default())
    }

    fn settles_when_abandoned(&self) -> bool {
        // The create may be on its way to Billecta when the shutdown cuts the step off.
        true
    }
}

/// Keeps a CREDITOR stage whose create may have happened although `unknown` says why its outcome
/// is not known: Billecta may still be creating the creditor, so nobody creates again for `settle`,
/// the time it needs to finish, and the next attempt looks it up first.
pub(super) fn settling(stage: &mut StageRecord, settle: Duration, now: Micros, unknown: &str) {
    stage.lease = Some(Lease {
        owner: SETTLING.to_owned(),
        expire_time: now.saturating_add(i64::try_from(settle.as_micros()).unwrap_or(i64::MAX)),
    });
    stage.message = format!(
        "Billecta may have created the creditor although {unknown}; it is looked up before any new attempt, from {} s on.",
        settle.as_secs()
    );
}

/// COMPANY_SETTINGS: the address and both bankgiros, written into Billecta's creditor.
struct CompanySettingsUpdate<'a> {
    key: &'a CreditorKey,
    requested: Option<CompanySettings>,
    /// What is applied: as requested, or as asked for before (or promoted); settled by the claim.
    settings: Option<CompanySettings>,
}

impl BillectaStage for CompanySettingsUpdate<'_> {
    /// Whether Billecta shows the bankgiro for payments approved.
    type Answer = bool;

    fn step(&self) -> String {
        format!("setting company settings of {}", self.key.creditor)
    }

    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared> {
        let key = self.key;
        let (creditor, target) = open_creditor_stage(
            record,
            key,
            Stage::CompanySettings,
            &[Stage::Creditor],
            "UpdateCompanySettings",
            now,
        )?;
        // Without settings in the request, the ones asked for before (or promoted) apply.
        let desired = match self
            .requested
            .clone()
            .or_else(|| creditor.company_settings.clone())
        {
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
        self.settings = Some(desired);
        Ok((summary, target))
    }

    async fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<bool, Unsuccessful> {
        let settings = self
            .settings
            .as_ref()
            .expect("a claim resolved the settings");
        let client = operations.billecta.client(self.key.onboarding.environment);
        let (public_id, token, mut creditor) =
            operations.claimed_creditor(claimed, deadline).await?;
        desired::apply_company_settings(&mut creditor, settings);
        client.update_creditor(&token, &creditor, deadline).await?;
        let shown = client.get_creditor(&token, &public_id, deadline).await?;
        Ok(desired::payments_bankgiro_approved(
            &shown,
            &settings.bankgiro_payments,
        ))
    }

    fn succeeded(
        &self,
        _: &Operations,
        _: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        approved: &bool,
        now: Micros,
    ) -> Result<Written> {
        let creditor = creditor_mut(record, &claimed.target.creditor);
        if let Some(stored) = creditor.company_settings.as_mut() {
            stored.bankgiro_payments_approved = *approved;
        }
        stages::company_settings_applied(creditor, *approved, now);
        let approval = if *approved {
            "approved"
        } else {
            "awaiting Billecta's approval"
        };
        Ok(Written::from(format!(
            "company settings of {} applied in Billecta; bankgiro for payments {approval}",
            self.key.creditor
        )))
    }
}

/// INVOICE_SETTINGS: the next invoice number in Billecta, and payment terms kept for Payway.
struct InvoiceSettingsUpdate<'a> {
    key: &'a CreditorKey,
    requested: Option<InvoiceSettings>,
    /// The next invoice number to set in Billecta, if any; settled by the claim.
    number: Option<InvoiceNumber>,
}

impl InvoiceSettingsUpdate<'_> {
    /// The number asked for, in the audit trail's words.
    fn asked(&self) -> String {
        self.number
            .map_or_else(|| "unchanged".to_owned(), |n| n.to_string())
    }
}

impl BillectaStage for InvoiceSettingsUpdate<'_> {
    type Answer = ();

    fn step(&self) -> String {
        format!("setting the invoice settings of {}", self.key.creditor)
    }

    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared> {
        let key = self.key;
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
        let to_send = match &self.requested {
            Some(given) => given.next_invoice_number,
            None => stored.next_invoice_number,
        };
        let desired = match &self.requested {
            Some(given) => InvoiceSettings {
                next_invoice_number: given.next_invoice_number.or(stored.next_invoice_number),
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
        creditor_mut(record, &target.creditor).invoice_settings = Some(desired);
        self.number = to_send.and_then(|n| InvoiceNumber::from_billecta(&n.to_string()));
        Ok((
            format!("setting the invoice settings of {}", key.creditor),
            target,
        ))
    }

    async fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<(), Unsuccessful> {
        let client = operations.billecta.client(self.key.onboarding.environment);
        let (_, token, mut creditor) = operations.claimed_creditor(claimed, deadline).await?;
        let Some(number) = self.number else {
            return Ok(());
        };
        let current = creditor
            .next_invoice_number
            .as_deref()
            .and_then(InvoiceNumber::from_billecta);
        if let Some(current) = current.filter(|current| *current > number) {
            let asked = self.asked();
            return Err(Unsuccessful::Refused {
                summary: format!(
                    "refused next invoice number {asked} for {}: Billecta's is already {current}",
                    self.key.creditor
                ),
                error: Error::Precondition {
                    reason: "INVOICE_NUMBER_BEHIND",
                    subject: self.key.name(),
                    message: format!(
                        "Billecta's next invoice number for this creditor is already {current}; {asked} would repeat invoice numbers"
                    ),
                },
            });
        }
        creditor.next_invoice_number = Some(number.to_string());
        client.update_creditor(&token, &creditor, deadline).await?;
        Ok(())
    }

    fn succeeded(
        &self,
        _: &Operations,
        _: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        (): &(),
        now: Micros,
    ) -> Result<Written> {
        stages::invoice_settings_applied(
            creditor_mut(record, &claimed.target.creditor),
            self.number.map(InvoiceNumber::value),
            now,
        );
        Ok(Written::from(format!(
            "invoice settings of {} applied; next invoice number {}",
            self.key.creditor,
            self.asked()
        )))
    }
}
