//! Checking the live setup in Billecta against what was asked for, and promoting a ready test
//! setup to production.

use super::access::shared_user_warnings;
use super::provisioning::creditor_mut;
use super::stage::Unsuccessful;
use super::users::Renewals;
use super::{CallContext, Conventions, Mutation, Operations, Written};
use crate::domain::onboarding::{BillectaUser, CreditorRecord, OnboardingRecord, StageRecord};
use crate::domain::stages::{self, creditor_stage};
use crate::domain::swedish::{Bankgiro, InvoiceNumber};
use crate::domain::validate::{CreditorKey, OnboardingKey};
use crate::domain::{CredentialField, Environment, OnboardingState, Stage, StageState, now_micros};
use crate::error::{Error, Result};
use crate::secret::Secret;
use billecta_client::model::Creditor;
use billecta_client::{BillectaClient, BillectaError, Deadline, ErrorKind};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Pass,
    /// Works, but should be changed.
    Warn,
    Fail,
    /// Could not be checked now (Billecta did not answer); says nothing about the setup.
    Unknown,
}

/// One check of a validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Such as `creditor.enabled`.
    pub check: String,
    /// The onboarding's or a creditor's resource name.
    pub subject: String,
    pub result: CheckResult,
    /// A failing critical check marks `stage` BROKEN.
    pub critical: bool,
    pub reason: String,
    pub message: String,
    pub expected: String,
    pub observed: String,
    /// The stage the check speaks for: the creditor's internal id ('' for the environment) and stage.
    pub stage: Option<(String, Stage)>,
}

impl Check {
    fn new(check: &str, subject: &str, stage: Option<(String, Stage)>) -> Self {
        Check {
            check: check.to_owned(),
            subject: subject.to_owned(),
            result: CheckResult::Pass,
            critical: false,
            reason: "OK".to_owned(),
            message: String::new(),
            expected: String::new(),
            observed: String::new(),
            stage,
        }
    }

    fn pass(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    fn fail(mut self, critical: bool, reason: &str, message: impl Into<String>) -> Self {
        self.result = CheckResult::Fail;
        self.critical = critical;
        self.reason = reason.to_owned();
        self.message = message.into();
        self
    }

    fn warn(mut self, reason: &str, message: impl Into<String>) -> Self {
        self.result = CheckResult::Warn;
        self.reason = reason.to_owned();
        self.message = message.into();
        self
    }

    fn drift(self, critical: bool, expected: &str, observed: &str) -> Self {
        let message = format!("asked for {expected:?}, Billecta shows {observed:?}");
        let mut check = if critical {
            self.fail(true, "DRIFT", message)
        } else {
            self.warn("DRIFT", message)
        };
        check.expected = expected.to_owned();
        check.observed = observed.to_owned();
        check
    }

    /// A Billecta failure: refused credentials fail the check, anything transient leaves it unknown.
    fn billecta(self, error: &BillectaError, refused_reason: &str, refused: &str) -> Self {
        match error.kind() {
            ErrorKind::BadCredentials => {
                self.fail(true, refused_reason, format!("{refused}: {error}"))
            }
            ErrorKind::NotFound => self.fail(
                true,
                "NOT_FOUND",
                format!("Billecta no longer has it: {error}"),
            ),
            _ => {
                let mut check = self;
                check.result = CheckResult::Unknown;
                check.reason = "BILLECTA_UNAVAILABLE".to_owned();
                check.message = format!("could not be checked now: {error}");
                check
            }
        }
    }
}

/// What a validation found of one user's stored token.
#[derive(Clone)]
enum TokenOutcome {
    Works(Secret),
    /// Refused, renewed with the stored password; the new token (and the user, named).
    Renewed(Secret, String),
    /// Refused, and could not be renewed: why.
    Refused(String),
    /// Billecta did not answer.
    Unknown(String),
    /// None is stored (`true`), or it cannot be decrypted; the user, named.
    Unreadable(bool, String),
}

/// The outcome of each user's token, asked once per validation: in test the account user is the
/// API user, and a second sign-in could invalidate the token the first one obtained.
type UserTokens = std::collections::HashMap<String, TokenOutcome>;

impl TokenOutcome {
    fn token(&self) -> Option<Secret> {
        match self {
            TokenOutcome::Works(token) | TokenOutcome::Renewed(token, _) => Some(token.clone()),
            _ => None,
        }
    }

    /// `check` with this outcome; `passed` says what passing means.
    fn check(&self, check: Check, passed: &str) -> Check {
        match self {
            TokenOutcome::Works(_) => check.pass(passed),
            TokenOutcome::Renewed(_, user) => check.warn(
                "TOKEN_RENEWED",
                format!(
                    "{passed}, after Billecta refused the stored token of {user}: the service signed in again with the stored password and stored the new token"
                ),
            ),
            TokenOutcome::Refused(message) => check.fail(true, "TOKEN_REJECTED", message.clone()),
            TokenOutcome::Unknown(message) => {
                let mut check = check;
                check.result = CheckResult::Unknown;
                check.reason = "BILLECTA_UNAVAILABLE".to_owned();
                check.message = message.clone();
                check
            }
            TokenOutcome::Unreadable(true, user) => check.fail(
                true,
                "CREDENTIAL_MISSING",
                format!("no token of {user} is stored"),
            ),
            TokenOutcome::Unreadable(false, user) => check.fail(
                true,
                "CREDENTIAL_UNREADABLE",
                format!(
                    "the stored token of {user} cannot be decrypted with the configured encryption keys"
                ),
            ),
        }
    }
}

/// What the API access check of one creditor works with.
struct ApiAccessCheck<'a> {
    client: &'a BillectaClient,
    record: &'a OnboardingRecord,
    test: Option<&'a OnboardingRecord>,
    creditor: &'a CreditorRecord,
    public_id: &'a str,
    deadline: Deadline,
    renewals: &'a Renewals,
}

fn is_checked(stage: Option<&StageRecord>) -> bool {
    stage.is_some_and(|stage| {
        matches!(
            stage.state,
            StageState::Completed | StageState::Broken | StageState::ActionRequired
        )
    })
}

fn creditor_stage_of(creditor: &CreditorRecord, stage: Stage) -> Option<&StageRecord> {
    creditor.stages.iter().find(|record| record.stage == stage)
}

impl Operations {
    /// ValidateOnboarding: runs every check, marks stages BROKEN (or COMPLETED again), and records
    /// one audit event with the tally.
    pub async fn validate_onboarding(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        deadline: Deadline,
    ) -> Result<(OnboardingRecord, Vec<Check>)> {
        let record = self.get_onboarding(key).await?;
        let client = self.billecta.client(key.environment);
        let name = key.name();
        let mut checks = Vec::new();

        let renewals = Renewals::default();
        let mut tokens = UserTokens::default();
        let account_user = record
            .account_user()
            .filter(|_| record.stage(Stage::Account).state != StageState::NotStarted)
            .map(|user| user.id.clone());
        let account_token = match account_user {
            None => None,
            Some(user) => {
                let check = Check::new(
                    "account.signs_in",
                    &name,
                    Some((String::new(), Stage::Account)),
                );
                let outcome = self
                    .checked_token(&record, &user, deadline, &renewals, &mut tokens)
                    .await;
                checks.push(outcome.check(check, "the account's token signs in"));
                outcome.token()
            }
        };

        // Before the API access checks: a removed user is what their refused token means.
        let seen_users = match &account_token {
            Some(token) => {
                self.check_api_users(client, &record, token, deadline, &mut checks)
                    .await
            }
            None => Vec::new(),
        };
        let test = match key.environment {
            Environment::Production => {
                self.store
                    .get_onboarding(&key.tenant, Environment::Test)
                    .await?
            }
            Environment::Test => None,
        };
        for creditor in &record.creditors {
            let Some(public_id) = creditor.creditor_public_id.as_deref() else {
                continue;
            };
            if let Some(token) = &account_token {
                self.check_creditor(client, token, creditor, public_id, deadline, &mut checks)
                    .await;
            }
            let access = ApiAccessCheck {
                client,
                record: &record,
                test: test.as_deref(),
                creditor,
                public_id,
                deadline,
                renewals: &renewals,
            };
            self.check_api_access(access, &mut tokens, &mut checks)
                .await;
        }

        let tally = |result| checks.iter().filter(|c| c.result == result).count();
        let summary = format!(
            "validated in Billecta: {} passed, {} warnings, {} failed, {} unknown",
            tally(CheckResult::Pass),
            tally(CheckResult::Warn),
            tally(CheckResult::Fail),
            tally(CheckResult::Unknown)
        );
        let seen = stage_times(&record);
        // The stored tokens Billecta accepted as they were: when each was last verified moves on.
        let verified: Vec<(String, CredentialField, String)> = tokens
            .iter()
            .filter_map(|(user, outcome)| match outcome {
                TokenOutcome::Works(token) => {
                    Some((user.clone(), CredentialField::Token, token.fingerprint()))
                }
                _ => None,
            })
            .collect();
        let updated = self
            .transact(call, key, mutation, Conventions::WHOLE, |record, now| {
                apply_checks(record, &checks, &seen, now);
                for (user, public_id) in &seen_users {
                    if let Some(user) = record.users.iter_mut().find(|u| u.id == *user) {
                        user.user_public_id.get_or_insert_with(|| public_id.clone());
                    }
                }
                // After the checks: a renewed token puts payment configurations back to waiting.
                let (secrets, said) = self.store_renewals(record, call, &renewals, now)?;
                Ok(Written {
                    summary: format!("{summary} {said}").trim_end().to_owned(),
                    secrets,
                    removed: Vec::new(),
                    verified: verified.clone(),
                })
            })
            .await?
            .into_record();
        for stage in newly_broken(&record, &updated) {
            crate::metrics::metrics().integration_broken(key.environment, stage);
        }
        Ok((updated, checks))
    }

    /// The creditor exists, is enabled, and shows the settings asked for.
    async fn check_creditor(
        &self,
        client: &BillectaClient,
        token: &Secret,
        creditor: &CreditorRecord,
        public_id: &str,
        deadline: Deadline,
        checks: &mut Vec<Check>,
    ) {
        let subject = creditor.name.as_str();
        let at = |stage| Some((creditor.id.clone(), stage));
        let exists = Check::new("creditor.exists", subject, at(Stage::Creditor));
        let shown: Creditor = match client.get_creditor(token, public_id, deadline).await {
            Ok(shown) => {
                checks.push(exists.pass(format!("Billecta holds creditor {public_id}")));
                shown
            }
            Err(error) => {
                checks.push(exists.billecta(
                    &error,
                    "CREDITOR_UNREADABLE",
                    "the account cannot read the creditor",
                ));
                return;
            }
        };
        let enabled = Check::new("creditor.enabled", subject, at(Stage::Creditor));
        checks.push(if shown.is_enabled == Some(true) {
            enabled.pass("the creditor is enabled")
        } else {
            enabled.fail(
                true,
                "CREDITOR_DISABLED",
                "the creditor is disabled in Billecta",
            )
        });

        if let Some(settings) = creditor
            .company_settings
            .as_ref()
            .filter(|_| is_checked(creditor_stage_of(creditor, Stage::CompanySettings)))
        {
            let field = |name: &str| {
                Check::new(
                    &format!("company_settings.{name}"),
                    subject,
                    at(Stage::CompanySettings),
                )
            };
            let compare = |name: &str, expected: &str, observed: Option<&str>, critical: bool| {
                let observed = observed.unwrap_or_default();
                let same = normalise(expected) == normalise(observed);
                if same {
                    field(name).pass(format!("{name} is {expected:?}"))
                } else {
                    field(name).drift(critical, expected, observed)
                }
            };
            checks.push(compare(
                "address",
                &settings.address,
                shown.address.as_deref(),
                false,
            ));
            checks.push(compare(
                "zip_code",
                &settings.zip_code,
                shown.zip_code.as_deref(),
                false,
            ));
            checks.push(compare(
                "city",
                &settings.city,
                shown.city.as_deref(),
                false,
            ));
            checks.push(compare(
                "country_code",
                &settings.country_code,
                shown.country_code.as_deref(),
                false,
            ));
            let bank = shown.creditor_bank_info.as_ref();
            let invoicing = Bankgiro::parse("bankgiro", &settings.bankgiro_invoicing).ok();
            let primary = bank
                .and_then(|bank| bank.payment_methods.as_ref())
                .and_then(|methods| {
                    methods.iter().find(|method| {
                        method.priority
                            == Some(billecta_client::model::PaymentMethodPriority::Primary)
                    })
                })
                .and_then(|method| method.bankgiro_no.clone())
                .unwrap_or_default();
            let check = field("bankgiro_invoicing");
            checks.push(
                if invoicing
                    .as_ref()
                    .is_some_and(|bankgiro| bankgiro.matches(&primary))
                {
                    check.pass(format!(
                        "the primary payment method is bankgiro {}",
                        settings.bankgiro_invoicing
                    ))
                } else {
                    check.drift(true, &settings.bankgiro_invoicing, &primary)
                },
            );
            let payments = Bankgiro::parse("bankgiro", &settings.bankgiro_payments).ok();
            let outgoing = bank
                .and_then(|bank| bank.creditor_outgoing_bankgiroes.as_ref())
                .and_then(|entries| {
                    entries.iter().find(|entry| {
                        payments.as_ref().is_some_and(|bankgiro| {
                            entry
                                .bankgiro_no
                                .as_deref()
                                .is_some_and(|number| bankgiro.matches(number))
                        })
                    })
                });
            let check = field("bankgiro_payments");
            checks.push(match outgoing {
                None => check.drift(true, &settings.bankgiro_payments, "missing"),
                Some(entry) if entry.bankgiro_approved != Some(true) => check.warn(
                    "AWAITING_APPROVAL",
                    format!(
                        "bankgiro {} for payments awaits Billecta's approval",
                        settings.bankgiro_payments
                    ),
                ),
                Some(_) => check.pass(format!(
                    "bankgiro {} for payments is approved",
                    settings.bankgiro_payments
                )),
            });
        }

        if let Some(expected) = creditor
            .invoice_settings
            .as_ref()
            .and_then(|settings| settings.next_invoice_number)
            .filter(|_| is_checked(creditor_stage_of(creditor, Stage::InvoiceSettings)))
        {
            let check = Check::new(
                "invoice_settings.next_invoice_number",
                subject,
                at(Stage::InvoiceSettings),
            );
            let observed = shown.next_invoice_number.clone().unwrap_or_default();
            let current = InvoiceNumber::from_billecta(&observed).map(InvoiceNumber::value);
            checks.push(match current {
                Some(current) if current >= expected => check.pass(format!(
                    "Billecta's next invoice number {current} is not behind {expected}"
                )),
                _ => check.drift(true, &expected.to_string(), &observed),
            });
        }
    }

    /// Every creditor's API user still exists in Billecta and is enabled, as the account's user
    /// lists them: a removed user is named as such, not only as a refused token. Returns the
    /// users found, with Billecta's id of each, to remember.
    async fn check_api_users(
        &self,
        client: &BillectaClient,
        record: &OnboardingRecord,
        account_token: &Secret,
        deadline: Deadline,
        checks: &mut Vec<Check>,
    ) -> Vec<(String, String)> {
        let api_users: Vec<(&CreditorRecord, &BillectaUser)> = record
            .creditors
            .iter()
            .filter(|creditor| is_checked(creditor_stage_of(creditor, Stage::ApiAccess)))
            .filter_map(|creditor| Some((creditor, record.api_user(creditor)?)))
            .filter(|(_, user)| user.username.is_some() || user.user_public_id.is_some())
            .collect();
        if api_users.is_empty() {
            return Vec::new();
        }
        let listed = client.list_users(account_token, deadline).await;
        let mut seen = Vec::new();
        for (creditor, user) in api_users {
            let check = Check::new(
                "api_access.user_exists",
                &creditor.name,
                Some((creditor.id.clone(), Stage::ApiAccess)),
            );
            let label = user.label();
            let users = match &listed {
                Ok(users) => users,
                Err(error) if error.kind() == ErrorKind::BadCredentials => {
                    checks.push(check.warn(
                        "USERS_UNREADABLE",
                        format!(
                            "the account's user may not list Billecta's users, so whether {label} still exists was not checked: {error}"
                        ),
                    ));
                    continue;
                }
                Err(error) => {
                    let mut check = check;
                    check.result = CheckResult::Unknown;
                    check.reason = "BILLECTA_UNAVAILABLE".to_owned();
                    check.message = format!("could not be checked now: {error}");
                    checks.push(check);
                    continue;
                }
            };
            let found = users.iter().find(|listed| match &user.user_public_id {
                Some(id) => listed.user_public_id.as_deref() == Some(id.as_str()),
                None => listed
                    .username
                    .as_deref()
                    .is_some_and(|name| user.is_named(name)),
            });
            checks.push(match found {
                None => check.fail(
                    true,
                    "API_USER_REMOVED",
                    format!(
                        "the API user {label} no longer exists in Billecta (removed in the portal?): Payway's payment code cannot call Billecta with its token"
                    ),
                ),
                Some(listed) if listed.is_enabled == Some(false) => check.fail(
                    true,
                    "API_USER_DISABLED",
                    format!("the API user {label} is disabled in Billecta"),
                ),
                Some(listed) => {
                    if let Some(id) = &listed.user_public_id {
                        seen.push((user.id.clone(), id.clone()));
                    }
                    check.pass(format!("the API user {label} exists and is enabled"))
                }
            });
        }
        seen
    }

    /// Whether the stored token of `user` works, asked once per validation (a token Billecta
    /// refuses is renewed once with the stored password).
    async fn checked_token(
        &self,
        record: &OnboardingRecord,
        user: &str,
        deadline: Deadline,
        renewals: &Renewals,
        tokens: &mut UserTokens,
    ) -> TokenOutcome {
        if let Some(known) = tokens.get(user) {
            return known.clone();
        }
        let client = self.billecta.client(record.environment);
        let stored = record
            .secret_of(user, CredentialField::Token)
            .map(|token| token.fingerprint.clone());
        let label = record
            .user(user)
            .map(|user| user.label().to_owned())
            .unwrap_or_default();
        let works = |token: Secret| async move {
            client.current_token(&token, deadline).await.map(|_| token)
        };
        let outcome = match self
            .with_token(record, user, deadline, renewals, works)
            .await
        {
            Ok(token) if stored.as_deref() == Some(token.fingerprint().as_str()) => {
                TokenOutcome::Works(token)
            }
            Ok(token) => TokenOutcome::Renewed(token, label),
            Err(Unsuccessful::Billecta(error)) if error.kind() == ErrorKind::BadCredentials => {
                let password = record.secret_of(user, CredentialField::Password).is_some();
                TokenOutcome::Refused(format!(
                    "Billecta refused the stored token of {label}, and {}: the user was probably removed or disabled, or its password changed. Billecta said: {error}",
                    if password {
                        "the stored password no longer signs in"
                    } else {
                        "no password is stored to sign in again with"
                    }
                ))
            }
            Err(Unsuccessful::Billecta(error)) => {
                TokenOutcome::Unknown(format!("could not be checked now: {error}"))
            }
            Err(Unsuccessful::Stopped(error)) => {
                TokenOutcome::Unreadable(matches!(error, Error::Precondition { .. }), label)
            }
            Err(Unsuccessful::Refused { error, .. }) => TokenOutcome::Unknown(error.to_string()),
        };
        tokens.insert(user.to_owned(), outcome.clone());
        outcome
    }

    /// The API credentials read their creditor in this environment, and production does not share
    /// a user with the account or with test.
    async fn check_api_access(
        &self,
        access: ApiAccessCheck<'_>,
        tokens: &mut UserTokens,
        checks: &mut Vec<Check>,
    ) {
        let ApiAccessCheck {
            client,
            record,
            test,
            creditor,
            public_id,
            deadline,
            renewals,
        } = access;
        if !is_checked(creditor_stage_of(creditor, Stage::ApiAccess)) {
            return;
        }
        let subject = creditor.name.as_str();
        let at = Some((creditor.id.clone(), Stage::ApiAccess));
        let check = Check::new("api_access.reads_creditor", subject, at.clone());
        let Some(user) = record.api_user(creditor) else {
            checks.push(check.fail(
                true,
                "CREDENTIAL_MISSING",
                "no API credentials are stored for this creditor",
            ));
            return;
        };
        let outcome = self
            .checked_token(record, &user.id, deadline, renewals, tokens)
            .await;
        let Some(token) = outcome.token() else {
            checks.push(outcome.check(check, ""));
            return;
        };
        match client.get_creditor(&token, public_id, deadline).await {
            Ok(_) => {
                let read = format!(
                    "the API token reads the creditor in Billecta's {} environment",
                    record.environment
                );
                checks.push(outcome.check(check, &read));
            }
            Err(error) => checks.push(check.billecta(
                &error,
                "CREDITOR_UNREADABLE",
                "the API user's token works but cannot read the creditor: the user lacks rights on it",
            )),
        }
        let previous = creditor
            .api_access
            .as_ref()
            .and_then(|access| access.previous_user.as_deref())
            .and_then(|id| record.user(id));
        if let Some(previous) = previous {
            // Payway's payment code may still use it until it reads the new credential. Not
            // critical: what puts it right (that read) is already due.
            let check = Check::new("api_access.previous_reads_creditor", subject, at.clone());
            let outcome = self
                .checked_token(record, &previous.id, deadline, renewals, tokens)
                .await;
            let mut check = match outcome.token() {
                None => outcome.check(check, ""),
                Some(token) => match client.get_creditor(&token, public_id, deadline).await {
                    Ok(_) => outcome.check(
                        check,
                        &format!(
                            "the previous API user {}, whose token Payway's payment code may use until it reads the new one, reads the creditor",
                            previous.label()
                        ),
                    ),
                    Err(error) => check.billecta(
                        &error,
                        "CREDITOR_UNREADABLE",
                        "the previous API user's token works but cannot read the creditor",
                    ),
                },
            };
            check.critical = false;
            checks.push(check);
        }
        for warning in
            shared_user_warnings(record, test, user.username.as_deref(), &token.fingerprint())
        {
            let message = match warning.as_str() {
                "API_USER_IS_ACCOUNT_USER" => {
                    "production uses the account's own user as API user; a separate API user is recommended"
                }
                _ => "production uses the same API user as the test environment",
            };
            checks.push(
                Check::new("api_access.separate_user", subject, at.clone()).warn(&warning, message),
            );
        }
    }

    /// PromoteToProduction: copies a READY test setup into the production onboarding as desired state.
    pub async fn promote_to_production(
        &self,
        call: &CallContext,
        test_key: &OnboardingKey,
        mutation: &Mutation,
    ) -> Result<OnboardingRecord> {
        let test = self.get_onboarding(test_key).await?;
        let ready = || {
            if test.state == OnboardingState::Ready {
                return Ok(());
            }
            Err(Error::Precondition {
                reason: "ONBOARDING_NOT_READY",
                subject: test_key.name(),
                message: format!(
                    "only a READY test onboarding can be promoted; {} is {}",
                    test_key.name(),
                    test.state
                ),
            })
        };
        let production = OnboardingKey::new(test_key.tenant.clone(), Environment::Production);
        let summary = format!(
            "promoted from {}: {} creditor(s) copied as the desired production setup",
            test_key.name(),
            test.creditors.len()
        );
        if self
            .store
            .get_onboarding(&production.tenant, Environment::Production)
            .await?
            .is_none()
        {
            ready()?;
            if mutation.validate_only {
                let mut record = OnboardingRecord::new(
                    uuid::Uuid::new_v4().to_string(),
                    &production,
                    now_micros(),
                );
                copy_desired(&mut record, &test, now_micros());
                record.refresh();
                return Ok(record);
            }
            let create = Mutation::plain("PromoteToProduction");
            match self.create_onboarding(call, &production, &create).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        // A retry of a promotion that succeeded is answered from its stored result before this runs,
        // whatever the test onboarding became since.
        self.mutate(call, &production, mutation, |record, now| {
            ready()?;
            copy_desired(record, &test, now);
            Ok(summary.clone())
        })
        .await
    }
}

/// Compares as Billecta may respell: case, spaces and dashes do not count.
fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// When each stage last changed, to tell which moved while the checks ran.
fn stage_times(record: &OnboardingRecord) -> Vec<((String, Stage), Option<i64>)> {
    let environment = record
        .stages
        .iter()
        .map(|stage| ((String::new(), stage.stage), stage.update_time));
    let creditors = record.creditors.iter().flat_map(|creditor| {
        creditor
            .stages
            .iter()
            .map(|stage| ((creditor.id.clone(), stage.stage), stage.update_time))
    });
    environment.chain(creditors).collect()
}

/// Marks stages BROKEN where a critical check failed, and COMPLETED again (or back to waiting for
/// the bankgiro approval) where a broken stage now passes. Stages that moved since the checks ran
/// are left alone: the checks speak of what they were.
fn apply_checks(
    record: &mut OnboardingRecord,
    checks: &[Check],
    seen: &[((String, Stage), Option<i64>)],
    now: i64,
) {
    let mut targets: Vec<(String, Stage)> = checks.iter().filter_map(|c| c.stage.clone()).collect();
    targets.dedup();
    for (creditor_id, stage) in targets {
        let concerning: Vec<&Check> = checks
            .iter()
            .filter(|c| c.stage.as_ref() == Some(&(creditor_id.clone(), stage)))
            .collect();
        let failed = concerning
            .iter()
            .find(|c| c.result == CheckResult::Fail && c.critical);
        let all_known = concerning.iter().all(|c| c.result != CheckResult::Unknown);
        let awaiting_approval = concerning.iter().any(|c| c.reason == "AWAITING_APPROVAL");
        let checked_at = seen
            .iter()
            .find(|(target, _)| *target == (creditor_id.clone(), stage))
            .map(|(_, time)| *time);
        let record_stage = if creditor_id.is_empty() {
            record.stage_mut(stage)
        } else {
            match record.creditors.iter_mut().find(|c| c.id == creditor_id) {
                Some(creditor) => creditor_stage(creditor, stage),
                None => continue,
            }
        };
        if checked_at != Some(record_stage.update_time) {
            continue;
        }
        match (failed, record_stage.state) {
            // A stage being worked on is left to the call working on it.
            (
                Some(check),
                StageState::Completed | StageState::Broken | StageState::ActionRequired,
            ) if record_stage.lease.is_none() => {
                stages::broken(
                    record_stage,
                    &check.reason,
                    &format!("{}: {}", check.check, check.message),
                    now,
                );
            }
            (None, StageState::Broken) if all_known && awaiting_approval => {
                stages::awaiting_bankgiro_approval(record_stage, now);
            }
            (None, StageState::Broken) if all_known => stages::repaired(record_stage, now),
            _ => {}
        }
    }
}

/// The stages BROKEN in `after` that were not in `before`.
fn newly_broken(before: &OnboardingRecord, after: &OnboardingRecord) -> Vec<Stage> {
    let all = |record: &OnboardingRecord| {
        record
            .stages
            .iter()
            .map(|stage| (String::new(), stage.stage, stage.state))
            .chain(record.creditors.iter().flat_map(|creditor| {
                creditor
                    .stages
                    .iter()
                    .map(|stage| (creditor.id.clone(), stage.stage, stage.state))
            }))
            .collect::<Vec<_>>()
    };
    let was_broken: std::collections::HashSet<(String, Stage)> = all(before)
        .into_iter()
        .filter(|(_, _, state)| *state == StageState::Broken)
        .map(|(scope, stage, _)| (scope, stage))
        .collect();
    all(after)
        .into_iter()
        .filter(|(scope, stage, state)| {
            *state == StageState::Broken && !was_broken.contains(&(scope.clone(), *stage))
        })
        .map(|(_, stage, _)| stage)
        .collect()
}

/// Copies the test creditors' non-secret desired setup into production, where production does not
/// have its own yet. Credentials are never copied.
fn copy_desired(record: &mut OnboardingRecord, test: &OnboardingRecord, now: i64) {
    let production = record.key();
    for source in &test.creditors {
        let name = CreditorKey {
            onboarding: production.clone(),
            creditor: source.organisation_number.clone(),
        }
        .name();
        let exists = record.creditors.iter().any(|c| c.name == name);
        if !exists {
            record.creditors.push(CreditorRecord {
                id: uuid::Uuid::new_v4().to_string(),
                name: name.clone(),
                organisation_number: source.organisation_number.clone(),
                company_name: source.company_name.clone(),
                title: source.title.clone(),
                creditor_public_id: None,
                stages: stages::promoted_creditor_stages(now),
                company_settings: None,
                invoice_settings: None,
                api_access: None,
                webhooks: None,
            });
        }
        let id = record
            .creditors
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let creditor = creditor_mut(record, &id);
        // What production has done itself stays; what it has not is (re)set from test.
        let open = |creditor: &CreditorRecord, stage| {
            creditor_stage_of(creditor, stage)
                .is_none_or(|s| s.state != StageState::Completed && s.lease.is_none())
        };
        if open(creditor, Stage::Creditor) {
            creditor.company_name = source.company_name.clone();
            creditor.title = source.title.clone();
        }
        if open(creditor, Stage::CompanySettings) {
            creditor.company_settings = source.company_settings.clone().map(|settings| {
                crate::domain::onboarding::CompanySettings {
                    bankgiro_payments_approved: false,
                    ..settings
                }
            });
        }
        if open(creditor, Stage::InvoiceSettings) {
            creditor.invoice_settings = source.invoice_settings.clone();
        }
    }
}
