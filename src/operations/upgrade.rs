//! Moving secrets stored before credentials were kept per Billecta user (one copy per stage: the
//! account's password and token, each creditor's API password and token) to the users they belong
//! to. It runs at start-up, before the service answers. Each onboarding moves in one transaction; a
//! replica upgrading at the same time finds nothing left to move, and an onboarding whose secrets
//! cannot be decrypted now is left as it was, to be moved at the next start.

use super::provisioning::NewSecret;
use super::{CallContext, Conventions, Mutation, Operations, Written};
use crate::crypto::Sealed;
use crate::domain::onboarding::{CredentialRecord, OnboardingRecord};
use crate::domain::validate::{OnboardingKey, TenantId};
use crate::domain::{CredentialField, Micros};
use crate::error::{Error, Result};
use crate::secret::Secret;

/// A legacy secret, decrypted, with what was stored of it.
type Opened = (CredentialRecord, Secret);

impl Operations {
    /// Moves every onboarding's legacy secrets to its users; returns how many onboardings moved.
    pub async fn upgrade_credentials(&self) -> Result<usize> {
        let pending = self.store.legacy_credentials().await?;
        let mut upgraded = 0;
        for (tenant, environment) in pending {
            let tenant = TenantId::parse("tenant", &tenant).map_err(Error::from)?;
            let key = OnboardingKey::new(tenant, environment);
            match self.upgrade_onboarding(&key).await {
                Ok(()) => upgraded += 1,
                Err(error) => tracing::error!(
                    onboarding = %key.name(),
                    error = %error,
                    "the onboarding's credentials could not be moved to its Billecta users; it keeps them as they were until the next start"
                ),
            }
        }
        if upgraded > 0 {
            tracing::info!(
                onboardings = upgraded,
                "credentials moved to the Billecta users they belong to"
            );
        }
        Ok(upgraded)
    }

    async fn upgrade_onboarding(&self, key: &OnboardingKey) -> Result<()> {
        let record = self.get_onboarding(key).await?;
        let mut opened = Vec::new();
        for credential in record.credentials.iter().filter(|c| is_legacy(c.field)) {
            let secret = self
                .secret(&record, &credential.scope, credential.field)
                .await?;
            opened.push((credential.clone(), secret));
        }
        let call = CallContext {
            actor: "upgrade".to_owned(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
        };
        let mutation = Mutation::plain("UpgradeCredentials");
        self.transact(&call, key, &mutation, Conventions::WHOLE, |record, now| {
            self.move_legacy(record, &call, &opened, now)
        })
        .await?;
        Ok(())
    }

    /// The change that moves what `opened` holds of `record`'s legacy secrets (those still stored
    /// as they were read) to the users they belong to.
    fn move_legacy(
        &self,
        record: &mut OnboardingRecord,
        call: &CallContext,
        opened: &[Opened],
        now: Micros,
    ) -> Result<Written> {
        let current: Vec<&Opened> = opened
            .iter()
            .filter(|(stored, _)| record.credentials.contains(stored))
            .collect();
        if current.is_empty() {
            return Ok(Written::default());
        }
        let find = |scope: &str, field| {
            current
                .iter()
                .find(|(stored, _)| stored.scope == scope && stored.field == field)
                .copied()
        };
        let mut moved = Moved::default();

        let token = find("", CredentialField::LegacyAccountToken);
        let password = find("", CredentialField::LegacyAccountPassword);
        let verified_password = password.filter(|(stored, _)| stored.verify_time.is_some());
        if token.is_some() || verified_password.is_some() {
            let username = record
                .account
                .as_ref()
                .and_then(|account| account.username.clone())
                .or_else(|| token.and_then(|(stored, _)| stored.principal.clone()));
            let user = record.add_user(username.as_deref());
            if let Some(account) = record.account.as_mut() {
                account.user = Some(user.clone());
            }
            moved.to(
                self,
                record,
                call,
                &user,
                CredentialField::Token,
                token,
                now,
            )?;
            let field = CredentialField::Password;
            moved.to(self, record, call, &user, field, verified_password, now)?;
        }
        if verified_password.is_none() {
            // A password given but never accepted stays with the stage that will try it.
            moved.to(
                self,
                record,
                call,
                "",
                CredentialField::Password,
                password,
                now,
            )?;
        }

        for index in 0..record.creditors.len() {
            let id = record.creditors[index].id.clone();
            let token = find(&id, CredentialField::LegacyApiToken);
            let password = find(&id, CredentialField::LegacyApiPassword);
            match token.filter(|(stored, _)| stored.verify_time.is_some()) {
                Some(verified) => {
                    let username = record.creditors[index]
                        .api_access
                        .as_ref()
                        .and_then(|access| access.username.clone())
                        .or_else(|| verified.0.principal.clone())
                        .filter(|name| !name.is_empty());
                    let known = match &username {
                        None => record
                            .user_with_token(&verified.0.fingerprint)
                            .map(|user| user.id.clone()),
                        Some(_) => None,
                    };
                    let user = known.unwrap_or_else(|| record.add_user(username.as_deref()));
                    if let Some(access) = record.creditors[index].api_access.as_mut() {
                        access.user = Some(user.clone());
                    }
                    let field = CredentialField::Token;
                    moved.to(self, record, call, &user, field, Some(verified), now)?;
                    let field = CredentialField::Password;
                    let password = password.filter(|(stored, _)| stored.verify_time.is_some());
                    moved.to(self, record, call, &user, field, password, now)?;
                }
                None => {
                    // Given while Billecta could not be asked: they stay with the stage.
                    moved.to(self, record, call, &id, CredentialField::Token, token, now)?;
                    moved.to(
                        self,
                        record,
                        call,
                        &id,
                        CredentialField::Password,
                        password,
                        now,
                    )?;
                }
            }
        }
        let users = record.users.len();
        Ok(Written {
            summary: format!(
                "credentials moved to the Billecta users they belong to ({users} user(s)); nothing changed in Billecta"
            ),
            secrets: moved.secrets,
            removed: current
                .iter()
                .map(|(stored, _)| (stored.scope.clone(), stored.field))
                .collect(),
            ..Written::default()
        })
    }
}

fn is_legacy(field: CredentialField) -> bool {
    matches!(
        field,
        CredentialField::LegacyAccountPassword
            | CredentialField::LegacyAccountToken
            | CredentialField::LegacyApiPassword
            | CredentialField::LegacyApiToken
    )
}

/// The secrets an upgrade stores: one per user and field.
#[derive(Default)]
struct Moved {
    secrets: Vec<(CredentialRecord, Sealed)>,
}

impl Moved {
    /// Stores `from` (if any) as `scope`'s `field`, keeping who set it, when, and when Billecta last
    /// accepted it. When the account and an API access held the same user's secret, the one set
    /// last is kept: the other was replaced in Billecta, or is the same.
    #[allow(clippy::too_many_arguments)]
    fn to(
        &mut self,
        operations: &Operations,
        record: &OnboardingRecord,
        call: &CallContext,
        scope: &str,
        field: CredentialField,
        from: Option<&Opened>,
        now: Micros,
    ) -> Result<()> {
        let Some((stored, secret)) = from else {
            return Ok(());
        };
        let newer = self.secrets.iter().any(|(kept, _)| {
            kept.scope == scope && kept.field == field && kept.set_time >= stored.set_time
        });
        if newer {
            return Ok(());
        }
        self.secrets
            .retain(|(kept, _)| !(kept.scope == scope && kept.field == field));
        let new = NewSecret {
            scope,
            field,
            secret,
            principal: stored.principal.as_deref().unwrap_or_default(),
            verified: stored.verify_time.is_some(),
        };
        let (mut credential, sealed) = operations.seal(record, call, new, now)?;
        credential.set_by = stored.set_by.clone();
        credential.set_time = stored.set_time;
        credential.verify_time = stored.verify_time;
        self.secrets.push((credential, sealed));
        Ok(())
    }
}
