//! CreateApiUser: a dedicated API user for a production creditor, made through Billecta's users API
//! with the account's token instead of by a person in the portal. That a user created so can sign in
//! (or be given a token by an administrator) is an inference from public material (Billecta's
//! API.md §2.4), so every refusal falls back to the portal path and says what was made.
//!
//! The generated password is stored (unverified, with the stage) by the claim, before anything is
//! created; so an attempt interrupted after the user exists in Billecta is carried on with the same
//! password, never by a second user.

use super::access::ApiAccessVerification;
use super::provisioning::{NewSecret, creditor_mut, creditor_public_id, find_creditor};
use super::stage::{BillectaStage, Claimed, Prepared, StageRef, Unsuccessful};
use super::users::Obtained;
use super::{CallContext, Mutation, Operations, Written};
use crate::desired;
use crate::domain::onboarding::OnboardingRecord;
use crate::domain::stages;
use crate::domain::validate::CreditorKey;
use crate::domain::{CredentialField, Environment, Micros, Stage};
use crate::error::{Error, Result};
use crate::secret::Secret;
use billecta_client::{BillectaError, Deadline, ErrorKind};

/// What creating the API user came to.
pub(super) enum Made {
    /// The user signs in and reads the creditor: registered as RegisterApiCredentials does. With
    /// Billecta's id of the user, when known.
    Registered(Obtained, Option<String>),
    /// Billecta refused a step: the portal path, with what was made and why.
    PortalPath(String),
}

/// API_ACCESS through a user the service creates.
pub(super) struct ApiUserCreation<'a> {
    /// Registers the user's credentials once it signs in.
    pub registration: ApiAccessVerification<'a>,
    pub key: &'a CreditorKey,
    pub username: String,
    pub full_name: String,
    /// A new password, or the one an interrupted attempt stored.
    pub password: Secret,
}

impl Operations {
    /// CreateApiUser: see the module's documentation.
    pub async fn create_api_user(
        &self,
        call: &CallContext,
        key: &CreditorKey,
        mutation: &Mutation,
        username: String,
        full_name: String,
        deadline: Deadline,
    ) -> Result<OnboardingRecord> {
        if key.onboarding.environment == Environment::Test {
            return Err(Error::Precondition {
                reason: "ONE_USER_ONLY",
                subject: key.onboarding.name(),
                message: "an account in Billecta's test environment has one user only: register the account's own user with RegisterApiCredentials".to_owned(),
            });
        }
        let record = self.get_onboarding(&key.onboarding).await?;
        // An earlier attempt's password, if it may have made the user already.
        let password = match find_creditor(&record, key)
            .ok()
            .and_then(|creditor| record.secret_of(&creditor.id, CredentialField::GeneratedPassword))
            .filter(|pending| pending.principal.as_deref() == Some(username.as_str()))
        {
            Some(pending) => {
                let scope = pending.scope.clone();
                self.secret(&record, &scope, CredentialField::GeneratedPassword)
                    .await?
            }
            None => generated_password()?,
        };
        let creation = ApiUserCreation {
            registration: self
                .api_access_verification(
                    key,
                    super::ApiCredentials::Password {
                        username: username.clone(),
                        password: password.clone(),
                    },
                    mutation,
                )
                .await?,
            key,
            username,
            full_name,
            password,
        };
        self.run_stage(call, &key.onboarding, mutation, deadline, creation)
            .await
    }
}

/// A password for a user nobody signs in to by hand: 24 random characters, with upper- and
/// lower-case letters, digits and a symbol whatever Billecta's rules ask for.
fn generated_password() -> Result<Secret> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|error| {
        Error::Internal(anyhow::anyhow!("no randomness for a password: {error}"))
    })?;
    let random: String = bytes
        .iter()
        .map(|byte| char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]))
        .collect();
    Ok(Secret::new(format!("Pw{random}7-")))
}

impl ApiUserCreation<'_> {
    /// Billecta refused `step`: the portal path, saying what exists.
    fn portal_path(&self, made: Option<&str>, step: &str, error: &BillectaError) -> Made {
        let username = &self.username;
        let existing = match made {
            Some(id) => format!(
                " The user {username} exists in Billecta (UserPublicId {id}): set its password in the portal and register it with RegisterApiCredentials, or delete it there."
            ),
            None => String::new(),
        };
        Made::PortalPath(format!(
            "Billecta refused {step} ({error}).{existing} Otherwise create an API user in the portal and register its credentials with RegisterApiCredentials."
        ))
    }
}

impl BillectaStage for ApiUserCreation<'_> {
    type Answer = Made;

    fn step(&self) -> String {
        format!(
            "creating the API user {} for {}",
            self.username, self.key.creditor
        )
    }

    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared> {
        let (summary, target) = self.registration.prepare(record, now)?;
        if record.user_named(&self.username).is_some() {
            return Err(Error::Precondition {
                reason: "USER_ALREADY_REGISTERED",
                subject: self.key.name(),
                message: format!(
                    "the service already holds the credentials of {}: register them with RegisterApiCredentials",
                    self.username
                ),
            });
        }
        if self.registration.validate_only {
            let id = target.creditor.clone();
            stages::creditor_stage(creditor_mut(record, &id), Stage::ApiAccess).message = format!(
                "Would create the API user {} in Billecta with rights on this creditor, and register its token.",
                self.username
            );
        }
        Ok((
            format!("{summary}: creating the API user {}", self.username),
            target,
        ))
    }

    async fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> std::result::Result<Made, Unsuccessful> {
        let public_id = creditor_public_id(claimed)?;
        let client = operations.billecta.client(self.key.onboarding.environment);
        let (account_token, users) = operations
            .with_account_token(claimed, deadline, |token| async move {
                client.list_users(&token, deadline).await
            })
            .await?;
        let existing = users.iter().find(|user| {
            user.username
                .as_deref()
                .is_some_and(|name| name.eq_ignore_ascii_case(&self.username))
        });
        let made = match existing {
            // Made by an interrupted attempt of ours: its password was stored with the stage before
            // this claim (which stored the same one again).
            Some(user) if self.resumes(&claimed.original) => user.user_public_id.clone(),
            Some(_) => {
                return Err(Unsuccessful::Refused {
                    summary: format!("a Billecta user named {} exists already", self.username),
                    error: Error::Precondition {
                        reason: "USERNAME_TAKEN",
                        subject: self.key.name(),
                        message: format!(
                            "Billecta already has a user named {}: register its credentials with RegisterApiCredentials, or choose another username",
                            self.username
                        ),
                    },
                });
            }
            None => {
                let user = desired::new_api_user(
                    &self.username,
                    &self.full_name,
                    &self.password,
                    &public_id,
                );
                match client.create_user(&account_token, &user, deadline).await {
                    Ok(id) => Some(id),
                    Err(error) if is_refusal(&error) => {
                        return Ok(self.portal_path(None, "creating the user", &error));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        let made = made.as_deref();
        // Its token: a sign-in with the password it was made with; failing that, an administrator's
        // new token for it.
        let token = match client
            .authenticate(&self.username, &self.password, deadline)
            .await
        {
            Ok(token) => token.value,
            Err(error) if is_refusal(&error) => {
                // Never without the user's id: with none, Billecta would replace the account's own
                // token.
                let Some(id) = made else {
                    return Ok(self.portal_path(made, "the new user's sign-in", &error));
                };
                match client.issue_token(&account_token, Some(id), deadline).await {
                    Ok(token) => token.value,
                    Err(issued) if is_refusal(&issued) => {
                        return Ok(self.portal_path(made, "the new user's sign-in", &error));
                    }
                    Err(issued) => return Err(issued.into()),
                }
            }
            Err(error) => return Err(error.into()),
        };
        match client.get_creditor(&token, &public_id, deadline).await {
            Ok(_) => Ok(Made::Registered(
                Obtained {
                    token,
                    signed_in: true,
                },
                made.map(str::to_owned),
            )),
            Err(error) if is_refusal(&error) => {
                Ok(self.portal_path(made, "the new user's reading of the creditor", &error))
            }
            Err(error) => Err(error.into()),
        }
    }

    fn succeeded(
        &self,
        operations: &Operations,
        call: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        made: &Made,
        now: Micros,
    ) -> Result<Written> {
        match made {
            Made::Registered(obtained, made) => {
                let written = self
                    .registration
                    .succeeded(operations, call, claimed, record, obtained, now)?;
                if let Some(user) = record
                    .users
                    .iter_mut()
                    .find(|user| user.is_named(&self.username))
                {
                    user.made_here = true;
                    user.user_public_id = made.clone();
                }
                Ok(Written {
                    summary: format!(
                        "API user {} created in Billecta for {}. {}",
                        self.username, self.key.creditor, written.summary
                    ),
                    ..written
                })
            }
            Made::PortalPath(why) => {
                let creditor = creditor_mut(record, &claimed.target.creditor);
                stages::api_user_portal_path(creditor, why, now);
                Ok(Written::from(format!(
                    "the API user {} for {} was not made through Billecta's API: {why}",
                    self.username, self.key.creditor
                )))
            }
        }
    }

    fn kept_at_claim(
        &self,
        operations: &Operations,
        call: &CallContext,
        record: &OnboardingRecord,
        target: &StageRef,
        now: Micros,
    ) -> Result<Written> {
        // Before Billecta is asked: the user may exist once it was, and the next attempt (the
        // caller's, or the reconciler's) signs it in with this password rather than making another.
        let pending = operations.seal(
            record,
            call,
            NewSecret {
                scope: &target.creditor,
                field: CredentialField::GeneratedPassword,
                secret: &self.password,
                principal: &self.username,
                verified: false,
            },
            now,
        )?;
        Ok(Written {
            secrets: vec![pending],
            ..Written::default()
        })
    }
}

impl ApiUserCreation<'_> {
    /// Whether this attempt carries on an interrupted one (its password was stored with the stage).
    fn resumes(&self, record: &OnboardingRecord) -> bool {
        record
            .creditors
            .iter()
            .find(|creditor| self.key.is_named(&creditor.name))
            .and_then(|creditor| record.secret_of(&creditor.id, CredentialField::GeneratedPassword))
            .is_some_and(|pending| pending.principal.as_deref() == Some(self.username.as_str()))
    }
}

/// Billecta ruled the step out (as opposed to not answering).
fn is_refusal(error: &BillectaError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::BadCredentials | ErrorKind::InvalidInput | ErrorKind::NotFound
    )
}
