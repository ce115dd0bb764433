//! The credentials Payway's payment code uses: registering and verifying the API user's, handing the
//! payment configuration over, and attesting the webhook addon.

use super::provisioning::{
    NewSecret, creditor_mut, creditor_public_id, find_creditor, open_creditor_stage, pending_in,
    sign_in_plan, sign_in_sentence, store_user_credentials, unchanged_token,
};
use super::stage::{BillectaStage, Claimed, Prepared, Unsuccessful};
use super::users::Obtained;
use super::{CallContext, Conventions, Mutation, Operations, Written};
use crate::domain::onboarding::{
    ApiAccess, BillectaUser, CredentialRecord, OnboardingRecord, PaymentTerms, Webhooks,
};
use crate::domain::stages;
use crate::domain::validate::CreditorKey;
use crate::domain::{CredentialField, Environment, Micros, Stage, StageState};
use crate::error::{Error, Result};
use crate::secret::Secret;
use billecta_client::{BillectaError, Deadline, ErrorKind};
use std::sync::Arc;

/// How the API user's credentials are given.
pub enum ApiCredentials {
    /// The service signs in with them and keeps the SecureToken (and the password).
    Password { username: String, password: Secret },
    /// A SecureToken; the username, if given, names its user for the shared-user checks.
    Token {
        username: Option<String>,
        token: Secret,
    },
}

/// What GetPaymentConfiguration hands over.
pub struct PaymentConfiguration {
    pub creditor: String,
    pub environment: Environment,
    pub api_base_url: String,
    pub creditor_public_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub secure_token: Secret,
    pub payment_terms: PaymentTerms,
    pub payment_methods: Vec<String>,
}

/// Production flags: an API user that is the account user, or the test environment's API user.
/// The user is recognised by its username or by its token.
pub fn shared_user_warnings(
    record: &OnboardingRecord,
    test: Option<&OnboardingRecord>,
    username: Option<&str>,
    token_fingerprint: &str,
) -> Vec<String> {
    if record.environment != Environment::Production {
        return Vec::new();
    }
    let is = |onboarding: &OnboardingRecord, user: &BillectaUser| {
        username.is_some_and(|name| user.is_named(name))
            || onboarding
                .secret_of(&user.id, CredentialField::Token)
                .is_some_and(|token| token.fingerprint == token_fingerprint)
    };
    let mut warnings = Vec::new();
    if record.account_user().is_some_and(|user| is(record, user)) {
        warnings.push("API_USER_IS_ACCOUNT_USER".to_owned());
    }
    let shared_with_test = test.is_some_and(|test| {
        test.creditors
            .iter()
            .filter_map(|creditor| test.api_user(creditor))
            .any(|user| is(test, user))
    });
    if shared_with_test {
        warnings.push("API_USER_SHARED_WITH_TEST".to_owned());
    }
    warnings
}

/// Forgets user `id` and its secrets when nothing refers to it any more; the secrets to remove.
fn forget_unused_user(record: &mut OnboardingRecord, id: &str) -> Vec<(String, CredentialField)> {
    if record.user_in_use(id) {
        return Vec::new();
    }
    record.users.retain(|user| user.id != id);
    pending_in(
        record,
        id,
        &[CredentialField::Token, CredentialField::Password],
    )
}

impl Operations {
    /// RegisterApiCredentials: obtains or takes the SecureToken, verifies it reads the creditor, and
    /// stores it (and the password) encrypted.
    pub async fn register_api_credentials(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        mutation: &Mutation,
        credentials: ApiCredentials,
        deadline: Deadline,
    ) -> Result<OnboardingRecord> {
        let verification = self
            .api_access_verification(key, credentials, mutation)
            .await?;
        self.run_stage(call, &key.onboarding, mutation, deadline, verification)
            .await
    }

    /// The API_ACCESS stage that registers `credentials` for the creditor `key` names.
    pub(super) async fn api_access_verification<'a>(
        &self,
        key: &'a CreditorKey,
        credentials: ApiCredentials,
        mutation: &Mutation,
    ) -> Result<ApiAccessVerification<'a>> {
        let onboarding = &key.onboarding;
        let test = match onboarding.environment {
            Environment::Production => {
                self.store
                    .get_onboarding(&onboarding.tenant, Environment::Test)
                    .await?
            }
            Environment::Test => None,
        };
        let password_fingerprint = match &credentials {
            ApiCredentials::Password { password, .. } => self.keyring.keyed_fingerprint(password),
            ApiCredentials::Token { .. } => String::new(),
        };
        Ok(ApiAccessVerification {
            key,
            credentials,
            test,
            password_fingerprint,
            validate_only: mutation.validate_only,
        })
    }

    /// GetPaymentConfiguration: the one read that returns a secret. Every read is one audit log
    /// line (caller, resource, request id, the credential's fingerprint). A caller's first read of
    /// each credential is also an audit-trail event, written before the answer leaves; the first
    /// read after the credential changed completes PAYMENT_CONFIGURATION. Other reads write nothing.
    pub async fn get_payment_configuration(
        &self,
        call: &CallContext,
        key: &CreditorKey,
    ) -> Result<PaymentConfiguration> {
        let record = self.get_onboarding(&key.onboarding).await?;
        let (configuration, credential) = self.payment_configuration(&record, key).await?;
        let creditor = find_creditor(&record, key)?;
        let completed = creditor
            .stages
            .iter()
            .any(|s| s.stage == Stage::PaymentConfiguration && s.state == StageState::Completed);
        let read_before = creditor
            .api_access
            .as_ref()
            .is_some_and(|access| access.has_read(&call.actor, credential.set_time));
        if !(completed && read_before) {
            // Boxed: a write's future is several times the size of the rest of this one, which
            // every read would otherwise carry.
            Box::pin(self.record_first_read(call, key, &credential)).await?;
        }
        tracing::info!(
            target: "audit",
            caller = %call.actor,
            resource = %configuration.creditor,
            request_id = %call.correlation_id,
            fingerprint = %credential.fingerprint,
            "payment configuration read (credentials included)"
        );
        Ok(configuration)
    }

    /// The audit-trail event of a caller's first read of a credential, which completes
    /// PAYMENT_CONFIGURATION if the stage waited for it.
    async fn record_first_read(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        read: &CredentialRecord,
    ) -> Result<()> {
        let reader = call.actor.clone();
        let mutation = Mutation::plain("GetPaymentConfiguration");
        self.transact(
            call,
            &key.onboarding,
            &mutation,
            Conventions::WHOLE,
            |record, now| {
                let creditor = find_creditor(record, key)?;
                let id = creditor.id.clone();
                // Credentials stored since the answer was read were not read: nothing waiting for
                // them is done, though the read is still recorded.
                let current = record
                    .api_user(creditor)
                    .and_then(|user| record.secret_of(&user.id, CredentialField::Token))
                    .is_some_and(|c| {
                        c.set_time == read.set_time && c.fingerprint == read.fingerprint
                    });
                let creditor = creditor_mut(record, &id);
                let waiting = creditor.stages.iter().any(|s| {
                    s.stage == Stage::PaymentConfiguration && s.state != StageState::Completed
                });
                let read_before = creditor
                    .api_access
                    .as_ref()
                    .is_some_and(|access| access.has_read(&reader, read.set_time));
                if current && read_before && !waiting {
                    // A read of the same caller recorded it meanwhile.
                    return Ok(Written::default());
                }
                let mut finished = None;
                if current {
                    if waiting {
                        stages::payment_configuration_read(creditor, &reader, now);
                    }
                    if let Some(access) = &mut creditor.api_access {
                        access.note_read(&reader, read.set_time);
                        if waiting {
                            finished = access.previous_user.take();
                        }
                    }
                }
                let mut summary = format!(
                    "payment configuration of {} read by {reader} (credentials included)",
                    key.creditor
                );
                let mut removed = Vec::new();
                if let Some(previous) = finished {
                    let label = record
                        .user(&previous)
                        .map(|user| user.label().to_owned())
                        .unwrap_or_default();
                    removed = forget_unused_user(record, &previous);
                    if !removed.is_empty() {
                        summary.push_str(&format!(
                            ". The rotation is done: the service no longer holds the previous API user {label}, which may now be removed in Billecta's portal"
                        ));
                    }
                }
                Ok(Written {
                    summary,
                    secrets: Vec::new(),
                    removed,
                    ..Written::default()
                })
            },
        )
        .await?;
        Ok(())
    }

    /// The payment configuration of a creditor of `record`, and the stored token's record.
    async fn payment_configuration(
        &self,
        record: &OnboardingRecord,
        key: &CreditorKey,
    ) -> Result<(PaymentConfiguration, CredentialRecord)> {
        let creditor = find_creditor(record, key)?;
        stages::require_creditor_done(
            record,
            creditor,
            &[Stage::ApiAccess],
            "GetPaymentConfiguration",
        )?;
        let user = record.api_user(creditor).ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "completed API access without its user: {}",
                creditor.name
            ))
        })?;
        let credential = record
            .secret_of(&user.id, CredentialField::Token)
            .cloned()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("no token stored for an API user")))?;
        let secure_token = self
            .secret(record, &user.id, CredentialField::Token)
            .await?;
        // A password the service generated is its own, to renew the token with; never shown.
        let password = match record.secret_of(&user.id, CredentialField::Password) {
            Some(_) if !user.made_here => Some(
                self.secret(record, &user.id, CredentialField::Password)
                    .await?,
            ),
            _ => None,
        };
        let payment_methods = creditor
            .company_settings
            .as_ref()
            .map(|_| vec!["BankGiro".to_owned()])
            .unwrap_or_default();
        let configuration = PaymentConfiguration {
            creditor: creditor.name.clone(),
            environment: record.environment,
            api_base_url: self
                .billecta
                .client(record.environment)
                .base_url()
                .to_owned(),
            creditor_public_id: creditor.creditor_public_id.clone().unwrap_or_default(),
            username: user.username.clone(),
            password,
            secure_token,
            payment_terms: creditor
                .invoice_settings
                .as_ref()
                .and_then(|s| s.payment_terms.clone())
                .unwrap_or_default(),
            payment_methods,
        };
        Ok((configuration, credential))
    }

    /// RecordWebhookSetup: attests the webhook addon; its Authorization value is stored encrypted.
    pub async fn record_webhook_setup(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        mutation: &Mutation,
        webhooks: Webhooks,
        authorization: Secret,
    ) -> Result<OnboardingRecord> {
        let committed = self
            .transact(
                call,
                &key.onboarding,
                mutation,
                Conventions::WHOLE,
                |record, now| {
                    let creditor = find_creditor(record, key)?;
                    stages::require_creditor_done(
                        record,
                        creditor,
                        &[Stage::Creditor],
                        "RecordWebhookSetup",
                    )?;
                    let id = creditor.id.clone();
                    let secret = self.seal(
                        record,
                        call,
                        NewSecret {
                            scope: &id,
                            field: CredentialField::WebhookAuthorization,
                            secret: &authorization,
                            principal: &webhooks.target_url,
                            verified: false,
                        },
                        now,
                    )?;
                    let creditor = creditor_mut(record, &id);
                    let summary = format!(
                        "webhook addon of {} attested by {}: {} for {}",
                        key.creditor,
                        webhooks.attested_by,
                        webhooks.target_url,
                        webhooks.events.join(", ")
                    );
                    creditor.webhooks = Some(Webhooks {
                        record_time: now,
                        ..webhooks.clone()
                    });
                    stages::webhooks_recorded(creditor, now);
                    Ok(Written {
                        summary,
                        secrets: vec![secret],
                        removed: Vec::new(),
                        ..Written::default()
                    })
                },
            )
            .await?;
        Ok(committed.into_record())
    }
}

/// API_ACCESS: the API user's credentials, verified by reading the creditor with them. With a
/// password, the service signs in only if it holds no working token of that user with it.
pub(super) struct ApiAccessVerification<'a> {
    key: &'a CreditorKey,
    credentials: ApiCredentials,
    /// The test environment's onboarding when this is production's, for the shared-user flags.
    test: Option<Arc<OnboardingRecord>>,
    /// The given password's keyed fingerprint (empty for a token).
    password_fingerprint: String,
    pub validate_only: bool,
}

impl ApiAccessVerification<'_> {
    fn username(&self) -> Option<&str> {
        match &self.credentials {
            ApiCredentials::Password { username, .. } => Some(username),
            ApiCredentials::Token { username, .. } => username.as_deref(),
        }
    }

    /// The secret given: kept, unverified, if Billecta cannot be asked now.
    fn given(&self) -> (CredentialField, &Secret) {
        match &self.credentials {
            ApiCredentials::Password { password, .. } => (CredentialField::Password, password),
            ApiCredentials::Token { token, .. } => (CredentialField::Token, token),
        }
    }

    /// The user the credentials belong to: by name, else by the token, else a new one.
    fn user(&self, record: &mut OnboardingRecord, token: &Secret) -> String {
        if self.username().is_none()
            && let Some(user) = record.user_with_token(&token.fingerprint())
        {
            return user.id.clone();
        }
        record.add_user(self.username())
    }
}

impl BillectaStage for ApiAccessVerification<'_> {
    type Answer = Obtained;

    fn step(&self) -> String {
        format!("verifying the API credentials of {}", self.key.creditor)
    }

    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared> {
        let (_, target) = open_creditor_stage(
            record,
            self.key,
            Stage::ApiAccess,
            &[Stage::Creditor],
            "RegisterApiCredentials",
            now,
        )?;
        let creditor = find_creditor(record, self.key)?;
        stages::require_company_settings_applied(record, creditor, "RegisterApiCredentials")?;
        if self.validate_only {
            let plan = match &self.credentials {
                ApiCredentials::Password { username, .. } => {
                    sign_in_plan(record, username, &self.password_fingerprint)
                }
                ApiCredentials::Token { .. } => {
                    "Would verify the given SecureToken by reading the creditor; no sign-in."
                        .to_owned()
                }
            };
            let id = target.creditor.clone();
            stages::creditor_stage(creditor_mut(record, &id), Stage::ApiAccess).message = plan;
        }
        Ok((self.step(), target))
    }

    async fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<Obtained, Unsuccessful> {
        let public_id = creditor_public_id(claimed)?;
        let public_id = public_id.as_str();
        let client = operations.billecta.client(self.key.onboarding.environment);
        let reads = |token: Secret| async move {
            client
                .get_creditor(&token, public_id, deadline)
                .await
                .map(drop)
        };
        let obtained = match &self.credentials {
            ApiCredentials::Password { username, password } => {
                operations
                    .token_for_password(&claimed.record, username, password, deadline, reads, true)
                    .await
            }
            ApiCredentials::Token { token, .. } => match reads(token.clone()).await {
                Ok(()) => Ok(Obtained {
                    token: token.clone(),
                    signed_in: false,
                }),
                Err(error) => Err(error.into()),
            },
        };
        match obtained {
            Err(Unsuccessful::Billecta(error)) if error.kind() == ErrorKind::BadCredentials => {
                Err(Unsuccessful::Refused {
                    summary: format!(
                        "Billecta refused the API credentials of {}: {error}",
                        self.key.creditor
                    ),
                    error: Error::Precondition {
                        reason: "BILLECTA_CREDENTIALS_REJECTED",
                        subject: format!("{}/stages/{}", self.key.name(), Stage::ApiAccess),
                        message: format!(
                            "Billecta's {} environment refused these API credentials, or they cannot read this creditor: the password or token is wrong, the user lacks rights on the creditor, or the credentials belong to the other environment. Billecta said: {}",
                            self.key.onboarding.environment, error.message
                        ),
                    },
                })
            }
            other => other,
        }
    }

    fn succeeded(
        &self,
        operations: &Operations,
        call: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        obtained: &Obtained,
        now: Micros,
    ) -> Result<Written> {
        let creditor_id = &claimed.target.creditor;
        let token = &obtained.token;
        let warnings = shared_user_warnings(
            record,
            self.test.as_deref(),
            self.username(),
            &token.fingerprint(),
        );
        let user = self.user(record, token);
        let password = match &self.credentials {
            ApiCredentials::Password { password, .. } => Some(password),
            ApiCredentials::Token { .. } => None,
        };
        let handed_out = |record: &OnboardingRecord| {
            let creditor = record.creditors.iter().find(|c| c.id == *creditor_id)?;
            let user = record.api_user(creditor)?;
            let token = record.secret_of(&user.id, CredentialField::Token)?;
            Some((user.id.clone(), token.fingerprint.clone()))
        };
        let before = handed_out(record);
        let stored = store_user_credentials(operations, call, record, &user, token, password, now)?;
        let cause = format!(
            "RegisterApiCredentials for {} {}",
            self.key.creditor,
            if obtained.signed_in {
                "signed in again"
            } else {
                "registered another token"
            }
        );
        let said = sign_in_sentence(record, &user, obtained, stored.token_changed, &cause, now);
        let unchanged = before == Some((user.clone(), token.fingerprint()));
        let creditor = creditor_mut(record, creditor_id);
        let old = creditor.api_access.take();
        // Another user's credential replaces one Payway's payment code uses: the one Payway holds
        // stays stored and valid until it reads the new one (or, mid-rotation, the one it held).
        let handed_out_before = claimed.before.state == StageState::Completed;
        let old_user = old.as_ref().and_then(|access| access.user.clone());
        let previous = old
            .as_ref()
            .and_then(|access| access.previous_user.clone())
            .or(old_user.clone().filter(|_| handed_out_before))
            .filter(|previous| *previous != user);
        let readers = old.filter(|_| unchanged);
        let username = record.user(&user).and_then(|u| u.username.clone());
        let creditor = creditor_mut(record, creditor_id);
        creditor.api_access = Some(ApiAccess {
            username,
            user: Some(user.clone()),
            previous_user: previous.clone(),
            warnings: warnings.clone(),
            ..readers.unwrap_or_default()
        });
        stages::api_access_verified(creditor, &warnings, !unchanged, now);
        let mut removed = pending_in(
            record,
            creditor_id,
            &[
                CredentialField::Password,
                CredentialField::Token,
                CredentialField::GeneratedPassword,
            ],
        );
        // A user registered but never read (replaced mid-rotation) is forgotten.
        if let Some(abandoned) = old_user.filter(|old| Some(old) != previous.as_ref()) {
            removed.extend(forget_unused_user(record, &abandoned));
        }
        let rotation = match previous.as_deref().and_then(|id| record.user(id)) {
            Some(previous) => format!(
                " Rotating from {}: its credential stays stored and valid until Payway's payment code reads the new one.",
                previous.label()
            ),
            None => String::new(),
        };
        let flagged = if warnings.is_empty() {
            String::new()
        } else {
            format!(" (flagged: {})", warnings.join(", "))
        };
        Ok(Written {
            summary: format!(
                "API credentials of {} verified: they read the creditor{flagged}. {said}{rotation}",
                self.key.creditor
            ),
            secrets: stored.secrets,
            // What a failed attempt kept to try again with is now the user's.
            removed,
            verified: unchanged_token(&user, token, stored.token_changed),
        })
    }

    fn failed(
        &self,
        operations: &Operations,
        call: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        _: &BillectaError,
        now: Micros,
    ) -> Result<Written> {
        // Kept, unverified, with the creditor's stage (not with a user: they may be wrong), so
        // that the reconciler can verify them without the caller; the payment configuration stays
        // as it was until they are.
        let creditor_id = &claimed.target.creditor;
        let (field, secret) = self.given();
        let pending = operations.seal(
            record,
            call,
            NewSecret {
                scope: creditor_id,
                field,
                secret,
                principal: self.username().unwrap_or_default(),
                verified: false,
            },
            now,
        )?;
        // The other kind of pending secret belonged to an earlier attempt.
        let other = match field {
            CredentialField::Token => CredentialField::Password,
            _ => CredentialField::Token,
        };
        Ok(Written {
            summary: String::new(),
            secrets: vec![pending],
            removed: pending_in(record, creditor_id, &[other]),
            ..Written::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::onboarding::{Account, CredentialRecord, CreditorRecord};
    use crate::domain::validate::{OnboardingKey, TenantId};

    /// An onboarding whose account user `billecta@gp.se` (user-1) holds token `sha256:account`.
    fn onboarding(environment: Environment) -> OnboardingRecord {
        let key = OnboardingKey::new(TenantId::parse("tenant", "gp").unwrap(), environment);
        let mut record = OnboardingRecord::new("id".into(), &key, 0);
        let user = record.add_user(Some("billecta@gp.se"));
        record.account = Some(Account {
            full_name: "Payway Billecta".into(),
            company_name: "GP AB".into(),
            email: "billecta@gp.se".into(),
            register_time: 0,
            username: Some("billecta@gp.se".into()),
            user: Some(user.clone()),
            activate_time: Some(1),
        });
        record.credentials.push(token(&user, "sha256:account"));
        record
    }

    fn token(scope: &str, fingerprint: &str) -> CredentialRecord {
        CredentialRecord {
            scope: scope.into(),
            field: CredentialField::Token,
            fingerprint: fingerprint.into(),
            principal: None,
            set_by: "ops".into(),
            set_time: 0,
            verify_time: Some(0),
        }
    }

    #[test]
    fn production_flags_the_account_user_by_name_or_by_token() {
        let production = onboarding(Environment::Production);
        assert_eq!(
            shared_user_warnings(&production, None, Some("BILLECTA@gp.se"), "sha256:1"),
            ["API_USER_IS_ACCOUNT_USER"]
        );
        assert_eq!(
            shared_user_warnings(&production, None, None, "sha256:account"),
            ["API_USER_IS_ACCOUNT_USER"],
            "a bare token of the account user is recognised"
        );
        assert!(shared_user_warnings(&production, None, Some("api@gp.se"), "sha256:2").is_empty());
        let test = onboarding(Environment::Test);
        assert!(
            shared_user_warnings(&test, None, Some("billecta@gp.se"), "sha256:1").is_empty(),
            "in test the account user is the API user"
        );
    }

    #[test]
    fn production_flags_the_test_environments_api_user() {
        let production = onboarding(Environment::Production);
        let mut test = onboarding(Environment::Test);
        let api_user = test.add_user(Some("api@gp.se"));
        test.credentials.push(token(&api_user, "sha256:test-api"));
        let mut creditor = CreditorRecord {
            id: "c1".into(),
            name: "tenants/gp/environments/test/creditors/556036-0793".into(),
            organisation_number: "556036-0793".into(),
            company_name: "GP AB".into(),
            title: String::new(),
            creditor_public_id: Some("x".into()),
            stages: Vec::new(),
            company_settings: None,
            invoice_settings: None,
            api_access: Some(ApiAccess::new(test.user(&api_user).unwrap(), Vec::new())),
            webhooks: None,
        };
        test.creditors.push(creditor.clone());
        assert_eq!(
            shared_user_warnings(&production, Some(&test), Some("API@gp.se"), "sha256:3"),
            ["API_USER_SHARED_WITH_TEST"]
        );
        assert_eq!(
            shared_user_warnings(&production, Some(&test), None, "sha256:test-api"),
            ["API_USER_SHARED_WITH_TEST"]
        );
        creditor.api_access = None;
        test.creditors = vec![creditor];
        assert!(
            shared_user_warnings(&production, Some(&test), Some("api@gp.se"), "sha256:3")
                .is_empty(),
            "a test user no creditor's payment configuration hands out is not shared"
        );
    }
}
