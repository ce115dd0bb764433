//! The credentials of Billecta users. Billecta allows one live SecureToken per user, and whether a
//! sign-in hands back the user's live token or issues a new one (invalidating the old) is not known;
//! so the service signs in only when there is no other way:
//! - a stored token that works is used, also when a caller gives the same password again;
//! - a stored token that Billecta refuses is renewed once with the user's stored password, and the
//!   new token is stored with the call's outcome, whatever that outcome is, because Billecta may
//!   have invalidated the old one;
//! - every creditor whose payment configuration hands out a token that changed waits until Payway's
//!   payment code reads it again ([`stages::token_changed`]).

use super::provisioning::NewSecret;
use super::stage::Unsuccessful;
use super::{CallContext, Operations};
use crate::crypto::Sealed;
use crate::domain::onboarding::{CredentialRecord, OnboardingRecord};
use crate::domain::stages;
use crate::domain::{CredentialField, Micros};
use crate::error::Result;
use crate::secret::Secret;
use billecta_client::{BillectaError, Deadline, ErrorKind};
use std::future::Future;
use std::sync::{Mutex, PoisonError};

/// The tokens a call obtained for stored users whose tokens Billecta refused, to be stored with the
/// call's outcome.
#[derive(Default)]
pub(super) struct Renewals(Mutex<Vec<(String, Secret)>>);

impl Renewals {
    fn push(&self, user: &str, token: Secret) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((user.to_owned(), token));
    }

    /// What was renewed so far (a write that is tried again records it again).
    fn list(&self) -> Vec<(String, Secret)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A user's token as a stage obtained it from the credentials a caller gave.
pub(super) struct Obtained {
    pub token: Secret,
    /// Whether the service signed in to get it (and so may have replaced a token in use).
    pub signed_in: bool,
}

/// The cause named when a renewed token reaches the payment configurations.
const RENEWED: &str =
    "Billecta refused the stored token; the service signed in again with the stored password";

impl Operations {
    /// Runs `work` with the stored token of user `user`. If Billecta refuses that token itself (not
    /// merely the user's rights), signs in once with the user's stored password and runs `work`
    /// again with the new token, which is noted in `renewals`.
    pub(super) async fn with_token<T, F, Fut>(
        &self,
        record: &OnboardingRecord,
        user: &str,
        deadline: Deadline,
        renewals: &Renewals,
        work: F,
    ) -> std::result::Result<T, Unsuccessful>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = std::result::Result<T, BillectaError>>,
    {
        let token = self.secret(record, user, CredentialField::Token).await?;
        let refused = match work(token.clone()).await {
            Ok(answer) => return Ok(answer),
            Err(error) if error.kind() == ErrorKind::BadCredentials => error,
            Err(error) => return Err(error.into()),
        };
        match self
            .renewed_token(record, user, &token, deadline, renewals)
            .await?
        {
            Some(token) => Ok(work(token).await?),
            None => Err(refused.into()),
        }
    }

    /// A working token for `user` in place of `refused`; `None` when there is none to be had: the
    /// token works (what was refused was the user's rights), no password is stored, or the stored
    /// password no longer signs in.
    pub(super) async fn renewed_token(
        &self,
        record: &OnboardingRecord,
        user: &str,
        refused: &Secret,
        deadline: Deadline,
        renewals: &Renewals,
    ) -> std::result::Result<Option<Secret>, Unsuccessful> {
        let client = self.billecta.client(record.environment);
        match client.current_token(refused, deadline).await {
            Ok(_) => return Ok(None),
            Err(error) if error.kind() == ErrorKind::BadCredentials => {}
            Err(error) => return Err(error.into()),
        }
        // Another call may have renewed it since `record` was read: its token is as good as a new
        // one, and signing in again could invalidate it.
        let latest = self.get_onboarding(&record.key()).await?;
        let stored = latest
            .secret_of(user, CredentialField::Token)
            .map(|token| token.fingerprint.clone());
        if stored.is_some_and(|fingerprint| fingerprint != refused.fingerprint()) {
            let token = self.secret(&latest, user, CredentialField::Token).await?;
            if client.current_token(&token, deadline).await.is_ok() {
                return Ok(Some(token));
            }
        }
        let username = latest.user(user).and_then(|user| user.username.clone());
        let (Some(username), Some(_)) =
            (username, latest.secret_of(user, CredentialField::Password))
        else {
            return Ok(None);
        };
        let password = self
            .secret(&latest, user, CredentialField::Password)
            .await?;
        match client.authenticate(&username, &password, deadline).await {
            Ok(token) => {
                tracing::info!(
                    tenant = %record.tenant,
                    environment = %record.environment,
                    user = %username,
                    "a stored SecureToken was refused; signed in again with the stored password"
                );
                renewals.push(user, token.value.clone());
                Ok(Some(token.value))
            }
            Err(error) if error.kind() == ErrorKind::BadCredentials => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The token of the user Billecta knows as `username`, from the password a caller gave: the
    /// stored token if the password is the stored one and `verify` accepts the token, else a
    /// sign-in, whose token `verify` must accept too when `verify_new` (a sign-in's token is
    /// otherwise proof enough).
    pub(super) async fn token_for_password<F, Fut>(
        &self,
        record: &OnboardingRecord,
        username: &str,
        password: &Secret,
        deadline: Deadline,
        verify: F,
        verify_new: bool,
    ) -> std::result::Result<Obtained, Unsuccessful>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = std::result::Result<(), BillectaError>>,
    {
        let client = self.billecta.client(record.environment);
        if let Some(user) = self.same_password_user(record, username, password) {
            let token = self.secret(record, &user, CredentialField::Token).await?;
            match verify(token.clone()).await {
                Ok(()) => {
                    return Ok(Obtained {
                        token,
                        signed_in: false,
                    });
                }
                Err(error) if error.kind() == ErrorKind::BadCredentials => {
                    // A working token that was refused lacks rights: a sign-in gives the same user
                    // the same rights.
                    match client.current_token(&token, deadline).await {
                        Ok(_) => return Err(error.into()),
                        Err(error) if error.kind() == ErrorKind::BadCredentials => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        let token = client
            .authenticate(username, password, deadline)
            .await?
            .value;
        if verify_new {
            verify(token.clone()).await?;
        }
        Ok(Obtained {
            token,
            signed_in: true,
        })
    }

    /// The id of the stored user named `username` whose token and password are stored, when
    /// `password` is that password (compared by keyed fingerprints).
    pub(super) fn same_password_user(
        &self,
        record: &OnboardingRecord,
        username: &str,
        password: &Secret,
    ) -> Option<String> {
        let fingerprint = self.keyring.keyed_fingerprint(password);
        record
            .user_holding(username, &fingerprint)
            .map(|user| user.id.clone())
    }

    /// Stores what `renewals` holds in `record` (the change a call records), and puts every payment
    /// configuration that hands out a changed token back to waiting for Payway's read. Returns the
    /// secrets to write and a sentence for the audit trail (empty when nothing was renewed).
    pub(super) fn store_renewals(
        &self,
        record: &mut OnboardingRecord,
        call: &CallContext,
        renewals: &Renewals,
        now: Micros,
    ) -> Result<(Vec<(CredentialRecord, Sealed)>, String)> {
        let mut secrets = Vec::new();
        let mut said = Vec::new();
        for (user, token) in renewals.list() {
            let username = record
                .user(&user)
                .and_then(|user| user.username.clone())
                .unwrap_or_default();
            let changed = record
                .secret_of(&user, CredentialField::Token)
                .is_none_or(|stored| stored.fingerprint != token.fingerprint());
            let new = NewSecret {
                scope: &user,
                field: CredentialField::Token,
                secret: &token,
                principal: &username,
                verified: true,
            };
            secrets.retain(|(stored, _): &(CredentialRecord, Sealed)| stored.scope != user);
            secrets.push(self.seal(record, call, new, now)?);
            let affected = if changed {
                stages::token_changed(record, &user, RENEWED, now)
            } else {
                Vec::new()
            };
            said.push(renewal_sentence(&username, &affected));
        }
        Ok((secrets, said.join(" ")))
    }
}

/// What the audit trail says of a renewed token.
fn renewal_sentence(username: &str, affected: &[String]) -> String {
    let mut sentence = format!(
        "Billecta refused the stored token of {username}; the service signed in again with the stored password and stored the new token."
    );
    if !affected.is_empty() {
        sentence.push_str(&format!(
            " The payment configuration of {} must be read again.",
            affected.join(", ")
        ));
    }
    sentence
}
