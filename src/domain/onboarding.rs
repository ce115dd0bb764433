//! The onboarding record of one tenant and environment, and the operations that change it. Each
//! operation checks its preconditions, changes the record in memory and says what happened; the
//! caller stores the result and the audit event in one transaction.

use super::failure::Refusal;
use super::stages::{self, ENVIRONMENT_STAGES};
use super::validate::{OnboardingKey, TenantId};
use super::{BlockedOn, CredentialField, Environment, Micros, OnboardingState, Stage, StageState};
use serde::{Deserialize, Serialize};

/// The stored state of one onboarding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnboardingRecord {
    /// Internal id, stable for the onboarding's lifetime; never shown to callers.
    pub id: String,
    pub tenant: String,
    pub environment: Environment,
    /// Roll-up, recomputed by [`OnboardingRecord::refresh`] after every change.
    pub state: OnboardingState,
    pub blocked_on: BlockedOn,
    /// Counts changes; the etag is derived from it.
    pub version: i64,
    /// Sequence number of the newest audit event (events count from 1 per onboarding).
    pub last_event: i64,
    /// Counts every write of the onboarding or of anything it holds; audited reads leave it alone.
    /// What was read at one revision is current for as long as the row shows that revision.
    #[serde(default)]
    pub revision: i64,
    pub agreement: Option<Agreement>,
    pub account: Option<Account>,
    /// The environment-level stages, in [`ENVIRONMENT_STAGES`] order.
    pub stages: Vec<StageRecord>,
    pub creditors: Vec<CreditorRecord>,
    /// The Billecta users whose credentials the service holds, each once.
    #[serde(default)]
    pub users: Vec<BillectaUser>,
    /// What is known of the stored secrets (never the secrets themselves).
    #[serde(default)]
    pub credentials: Vec<CredentialRecord>,
    pub create_time: Micros,
    pub update_time: Micros,
}

/// A Billecta user whose credentials the service holds. Billecta allows one live SecureToken per
/// user, so its token and password are stored once, under the user's id, and the account and every
/// creditor's API access refer to the user: a new token replaces the old for every use at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillectaUser {
    /// Internal id (`user-1`, `user-2`, … per onboarding), the scope of the user's secrets; never
    /// shown to callers.
    pub id: String,
    /// The Billecta username, when known (a token may be registered without it).
    pub username: Option<String>,
    /// Billecta's id of the user, once seen.
    #[serde(default)]
    pub user_public_id: Option<String>,
    /// The service made the user (CreateApiUser) and generated its password, which is never shown:
    /// the payment configuration hands out its token alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub made_here: bool,
}

impl BillectaUser {
    /// Whether this is the user Billecta knows as `username` (usernames are case-insensitive).
    pub fn is_named(&self, username: &str) -> bool {
        self.username
            .as_deref()
            .is_some_and(|name| name.eq_ignore_ascii_case(username))
    }

    /// How the audit trail and messages name the user.
    pub fn label(&self) -> &str {
        self.username
            .as_deref()
            .unwrap_or("the user of the registered token")
    }
}

/// A stored secret, described without revealing it. The ciphertext lives only in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// The id of the user it belongs to, or the creditor's internal id (webhook authorization).
    pub scope: String,
    pub field: CredentialField,
    pub fingerprint: String,
    /// The Billecta username the secret belongs to.
    pub principal: Option<String>,
    pub set_by: String,
    pub set_time: Micros,
    /// When Billecta last accepted it.
    pub verify_time: Option<Micros>,
}

/// A worker's claim on a stage while it talks to Billecta outside any transaction: nobody else works
/// on the stage until the claim is released or expires (its holder crashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub expire_time: Micros,
}

/// A creditor's address and bankgiros, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompanySettings {
    pub address: String,
    pub zip_code: String,
    pub city: String,
    pub country_code: String,
    /// The primary payment method, `NNN-NNNN` or `NNNN-NNNN`.
    pub bankgiro_invoicing: String,
    /// The outgoing bankgiro.
    pub bankgiro_payments: String,
    /// Whether Billecta's support has approved `bankgiro_payments`, as last seen.
    pub bankgiro_payments_approved: bool,
}

/// A creditor's invoice settings, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InvoiceSettings {
    /// `None`: Billecta's number is left as it is.
    #[serde(default)]
    pub next_invoice_number: Option<u64>,
    #[serde(default)]
    pub payment_terms: Option<PaymentTerms>,
}

/// The terms Payway's payment code invoices with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTerms {
    pub invoice_lead_time_days: u32,
    pub due_days: u32,
    pub grace_period_days: u32,
    /// 0: never written off.
    pub write_off_days: u32,
    /// ISO 4217.
    pub currency: String,
}

impl Default for PaymentTerms {
    /// Billecta's recommendation for yearly and quarterly subscriptions: sent 45 days ahead, due in 30.
    fn default() -> Self {
        PaymentTerms {
            invoice_lead_time_days: 45,
            due_days: 30,
            grace_period_days: 0,
            write_off_days: 0,
            currency: "SEK".to_owned(),
        }
    }
}

/// The API credentials registered for a creditor (the secrets live encrypted in storage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiAccess {
    /// The API user's Billecta username, when known.
    pub username: Option<String>,
    /// The id of the [`BillectaUser`] whose token the payment configuration hands out.
    #[serde(default)]
    pub user: Option<String>,
    /// While the credential is rotated to another user: the user whose token Payway's payment code
    /// may still use until it reads the new one. Kept stored and valid until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_user: Option<String>,
    /// Flags such as `API_USER_IS_ACCOUNT_USER`.
    pub warnings: Vec<String>,
    /// The callers that have read the payment configuration with the credential set at
    /// `read_credential`: a caller's first read of each credential is an audit-trail event, its
    /// later reads only an audit log line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    /// When the credential those callers read was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_credential: Option<Micros>,
}

impl ApiAccess {
    /// Access as registered for `user`, read by nobody yet.
    pub fn new(user: &BillectaUser, warnings: Vec<String>) -> Self {
        Self {
            username: user.username.clone(),
            user: Some(user.id.clone()),
            previous_user: None,
            warnings,
            readers: Vec::new(),
            read_credential: None,
        }
    }

    /// Whether `reader` has read the payment configuration with the credential set at `set_time`.
    pub fn has_read(&self, reader: &str, set_time: Micros) -> bool {
        self.read_credential == Some(set_time) && self.readers.iter().any(|r| r == reader)
    }

    /// Notes that `reader` read the payment configuration with the credential set at `set_time`;
    /// the readers of an older credential are forgotten.
    pub fn note_read(&mut self, reader: &str, set_time: Micros) {
        if self.read_credential != Some(set_time) {
            self.readers.clear();
            self.read_credential = Some(set_time);
        }
        if !self.readers.iter().any(|r| r == reader) {
            self.readers.push(reader.to_owned());
        }
    }
}

/// The Billecta-to-Payway webhook addon, as attested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhooks {
    pub target_url: String,
    pub events: Vec<String>,
    pub attested_by: String,
    pub record_time: Micros,
}

/// One stage's stored status: exactly what a read shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub state: StageState,
    pub blocked_on: BlockedOn,
    pub due: Vec<String>,
    pub reason: String,
    pub message: String,
    pub update_time: Option<Micros>,
    /// Held while a call works on the stage with Billecta; never shown to callers.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Transient failures in a row; the reconciler backs off by it. Reset by every other change.
    #[serde(default)]
    pub attempts: i64,
    /// When the reconciler may try the stage again.
    #[serde(default)]
    pub next_attempt_time: Option<Micros>,
}

/// A creditor of the environment and its stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditorRecord {
    pub id: String,
    /// The full resource name, `tenants/{tenant}/environments/{environment}/creditors/{creditor}`.
    pub name: String,
    pub organisation_number: String,
    pub company_name: String,
    pub title: String,
    pub creditor_public_id: Option<String>,
    pub stages: Vec<StageRecord>,
    #[serde(default)]
    pub company_settings: Option<CompanySettings>,
    #[serde(default)]
    pub invoice_settings: Option<InvoiceSettings>,
    #[serde(default)]
    pub api_access: Option<ApiAccess>,
    #[serde(default)]
    pub webhooks: Option<Webhooks>,
}

/// Something due next, derived from the stages (never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueItem {
    pub item: String,
    pub stage: Stage,
    pub creditor: Option<String>,
    pub from: BlockedOn,
    pub description: String,
}

/// The agreement attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    pub attested_by: String,
    pub agreement_time: Micros,
    pub reference: String,
    pub record_time: Micros,
}

/// The Billecta account a person creates in the portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub full_name: String,
    pub company_name: String,
    pub email: String,
    pub register_time: Micros,
    /// The username that signed in when the activation was confirmed.
    #[serde(default)]
    pub username: Option<String>,
    /// The id of the [`BillectaUser`] the service provisions with.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub activate_time: Option<Micros>,
}

/// A stage moving from one state to another, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTransition {
    pub stage: Stage,
    /// The creditor's resource name, or `None` for an environment-level stage.
    pub creditor: Option<String>,
    pub from: StageState,
    pub to: StageState,
}

/// One entry of an onboarding's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Counts from 1 per onboarding, without gaps.
    pub sequence: i64,
    pub event_time: Micros,
    pub actor: String,
    pub method: String,
    pub request_id: String,
    pub correlation_id: String,
    /// The gRPC status code name of the outcome, "OK" on success.
    pub outcome: String,
    pub summary: String,
    pub transitions: Vec<StageTransition>,
}

impl StageRecord {
    /// A stage that has not started, waiting on `blocked_on` for `due`.
    pub fn waiting(
        stage: Stage,
        blocked_on: BlockedOn,
        due: Vec<String>,
        reason: &str,
        message: &str,
    ) -> Self {
        Self {
            stage,
            state: StageState::NotStarted,
            blocked_on,
            due,
            reason: reason.to_owned(),
            message: message.to_owned(),
            update_time: None,
            lease: None,
            attempts: 0,
            next_attempt_time: None,
        }
    }

    /// Moves the stage to a new status.
    pub fn set(
        &mut self,
        state: StageState,
        blocked_on: BlockedOn,
        due: Vec<String>,
        reason: &str,
        message: &str,
        now: Micros,
    ) {
        self.state = state;
        self.blocked_on = blocked_on;
        self.due = due;
        self.reason = reason.to_owned();
        self.message = message.to_owned();
        self.update_time = Some(now);
        self.attempts = 0;
        self.next_attempt_time = None;
    }
}

impl OnboardingRecord {
    /// Whether `self` differs from `other` in anything a caller sees (which callers have read the
    /// payment configuration is kept for the audit trail, and is not shown).
    pub fn differs_for_callers(&self, other: &OnboardingRecord) -> bool {
        if self == other {
            return false;
        }
        fn readers(record: &OnboardingRecord) -> Vec<Option<(&[String], Option<Micros>)>> {
            record
                .creditors
                .iter()
                .map(|c| {
                    c.api_access
                        .as_ref()
                        .map(|a| (a.readers.as_slice(), a.read_credential))
                })
                .collect()
        }
        if readers(self) == readers(other) {
            return true;
        }
        // The readers changed (a caller's first read): compare what is shown.
        let shown = |record: &OnboardingRecord| {
            let mut shown = record.clone();
            for creditor in &mut shown.creditors {
                if let Some(access) = &mut creditor.api_access {
                    access.readers.clear();
                    access.read_credential = None;
                }
            }
            shown
        };
        shown(self) != shown(other)
    }

    /// A new onboarding with every stage not started.
    pub fn new(id: String, key: &OnboardingKey, now: Micros) -> Self {
        let mut record = Self {
            id,
            tenant: key.tenant.as_str().to_owned(),
            environment: key.environment,
            state: OnboardingState::ActionRequired,
            blocked_on: BlockedOn::PaywayOperations,
            version: 1,
            last_event: 0,
            revision: 0,
            agreement: None,
            account: None,
            stages: stages::initial_environment_stages(key.environment),
            creditors: Vec::new(),
            users: Vec::new(),
            credentials: Vec::new(),
            create_time: now,
            update_time: now,
        };
        record.refresh();
        record
    }

    pub fn key(&self) -> OnboardingKey {
        let tenant = TenantId::parse("tenant", &self.tenant)
            .expect("stored tenant ids were validated on create");
        OnboardingKey::new(tenant, self.environment)
    }

    /// The etag of this version (AIP-154): opaque to callers, changes on every update.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// An environment-level stage.
    pub fn stage(&self, stage: Stage) -> &StageRecord {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .expect("every environment-level stage exists from creation")
    }

    pub fn stage_mut(&mut self, stage: Stage) -> &mut StageRecord {
        debug_assert!(ENVIRONMENT_STAGES.contains(&stage));
        self.stages
            .iter_mut()
            .find(|s| s.stage == stage)
            .expect("every environment-level stage exists from creation")
    }

    /// Recomputes the roll-up after a change.
    pub fn refresh(&mut self) {
        let (state, blocked_on, _) = stages::roll_up(self);
        self.state = state;
        self.blocked_on = blocked_on;
    }

    /// What is due next and from whom.
    pub fn next_due(&self) -> Vec<DueItem> {
        stages::roll_up(self).2
    }

    /// Attests the AGREEMENT stage; recording it again replaces the attestation.
    pub fn record_agreement(&mut self, agreement: Agreement, now: Micros) -> String {
        let summary = format!(
            "agreement recorded by {} with reference {}",
            agreement.attested_by, agreement.reference
        );
        self.agreement = Some(agreement);
        stages::agreement_recorded(self, now);
        summary
    }

    /// Records the account a person must create in Billecta's portal. Needs AGREEMENT; refused once
    /// ACCOUNT is completed, since the account then exists.
    pub fn register_account(&mut self, account: Account, now: Micros) -> Result<String, Refusal> {
        stages::require_done(self, &[Stage::Agreement], "RegisterAccount")?;
        if self.stage(Stage::Account).state == StageState::Completed {
            return Err(Refusal::Precondition {
                reason: "STAGE_ALREADY_COMPLETED",
                subject: format!("{}/stages/{}", self.key().name(), Stage::Account),
                message: "ACCOUNT is completed: the account is activated and can no longer be re-registered".to_owned(),
            });
        }
        let summary = format!(
            "account registered for {} ({})",
            account.full_name, account.company_name
        );
        self.account = Some(account);
        stages::account_registered(self, now);
        Ok(summary)
    }

    /// Every stage, with the creditor it belongs to.
    fn every_stage(&self) -> impl Iterator<Item = (Option<&str>, &StageRecord)> {
        self.stages.iter().map(|s| (None, s)).chain(
            self.creditors
                .iter()
                .flat_map(|c| c.stages.iter().map(move |s| (Some(c.name.as_str()), s))),
        )
    }

    /// The user with internal id `id`.
    pub fn user(&self, id: &str) -> Option<&BillectaUser> {
        self.users.iter().find(|user| user.id == id)
    }

    /// The user Billecta knows as `username`.
    pub fn user_named(&self, username: &str) -> Option<&BillectaUser> {
        self.users.iter().find(|user| user.is_named(username))
    }

    /// The user named `username` whose token is stored, and whose stored password has the keyed
    /// `password_fingerprint`: one the service may use without signing in.
    pub fn user_holding(
        &self,
        username: &str,
        password_fingerprint: &str,
    ) -> Option<&BillectaUser> {
        let user = self.user_named(username)?;
        self.secret_of(&user.id, CredentialField::Token)?;
        let stored = self.secret_of(&user.id, CredentialField::Password)?;
        (stored.fingerprint == password_fingerprint).then_some(user)
    }

    /// The user whose stored token has `fingerprint`.
    pub fn user_with_token(&self, fingerprint: &str) -> Option<&BillectaUser> {
        self.users.iter().find(|user| {
            self.secret_of(&user.id, CredentialField::Token)
                .is_some_and(|token| token.fingerprint == fingerprint)
        })
    }

    /// The user the account provisions with, once confirmed.
    pub fn account_user(&self) -> Option<&BillectaUser> {
        self.account
            .as_ref()
            .and_then(|account| account.user.as_deref())
            .and_then(|id| self.user(id))
    }

    /// The API user of a creditor, once registered.
    pub fn api_user(&self, creditor: &CreditorRecord) -> Option<&BillectaUser> {
        creditor
            .api_access
            .as_ref()
            .and_then(|access| access.user.as_deref())
            .and_then(|id| self.user(id))
    }

    /// What is stored of a secret: a user's (`scope` its id) or a creditor's.
    pub fn secret_of(&self, scope: &str, field: CredentialField) -> Option<&CredentialRecord> {
        self.credentials
            .iter()
            .find(|credential| credential.scope == scope && credential.field == field)
    }

    /// Adds a user, or gives the one Billecta knows by the same name; returns its id.
    pub fn add_user(&mut self, username: Option<&str>) -> String {
        if let Some(user) = username.and_then(|name| self.user_named(name)) {
            return user.id.clone();
        }
        let next = self
            .users
            .iter()
            .filter_map(|user| user.id.strip_prefix("user-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let id = format!("user-{next}");
        self.users.push(BillectaUser {
            id: id.clone(),
            username: username.map(str::to_owned),
            user_public_id: None,
            made_here: false,
        });
        id
    }

    /// Whether anything still refers to user `id`: the account, or a creditor's API access (also as
    /// the previous user of a rotation).
    pub fn user_in_use(&self, id: &str) -> bool {
        let by_account = self
            .account
            .as_ref()
            .is_some_and(|account| account.user.as_deref() == Some(id));
        by_account
            || self.creditors.iter().any(|creditor| {
                creditor.api_access.as_ref().is_some_and(|access| {
                    access.user.as_deref() == Some(id)
                        || access.previous_user.as_deref() == Some(id)
                })
            })
    }

    /// The creditors whose payment configuration hands out the token of user `id`.
    pub fn creditors_of_user(&self, id: &str) -> Vec<String> {
        self.creditors
            .iter()
            .filter(|creditor| {
                creditor
                    .api_access
                    .as_ref()
                    .is_some_and(|access| access.user.as_deref() == Some(id))
            })
            .map(|creditor| creditor.name.clone())
            .collect()
    }

    /// The stage state changes from `before` to `self`.
    pub fn transitions_since(&self, before: &OnboardingRecord) -> Vec<StageTransition> {
        self.every_stage()
            .filter_map(|(creditor, after)| {
                let from = before
                    .every_stage()
                    .find(|(c, s)| *c == creditor && s.stage == after.stage)
                    .map_or(StageState::NotStarted, |(_, s)| s.state);
                (from != after.state).then(|| StageTransition {
                    stage: after.stage,
                    creditor: creditor.map(str::to_owned),
                    from,
                    to: after.state,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(environment: Environment) -> OnboardingKey {
        OnboardingKey::new(TenantId::parse("tenant", "gp").unwrap(), environment)
    }

    fn agreement() -> Agreement {
        Agreement {
            attested_by: "anna@payway.se".into(),
            agreement_time: 1,
            reference: "CONTRACT-1".into(),
            record_time: 2,
        }
    }

    fn account() -> Account {
        Account {
            full_name: "Payway Billecta".into(),
            company_name: "GP AB".into(),
            email: "billecta@gp.se".into(),
            register_time: 3,
            username: None,
            user: None,
            activate_time: None,
        }
    }

    #[test]
    fn a_new_onboarding_waits_for_the_agreement_from_operations() {
        let record = OnboardingRecord::new("id".into(), &key(Environment::Test), 0);
        assert_eq!(record.state, OnboardingState::ActionRequired);
        assert_eq!(record.blocked_on, BlockedOn::PaywayOperations);
        let due = record.next_due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].item, stages::AGREEMENT_RECORD);
        assert_eq!(due[0].stage, Stage::Agreement);
    }

    #[test]
    fn the_account_needs_the_agreement_first() {
        let mut record = OnboardingRecord::new("id".into(), &key(Environment::Test), 0);
        let before = record.clone();
        let error = record.register_account(account(), 5).unwrap_err();
        match error {
            Refusal::StagesNotDone { unmet, .. } => {
                assert_eq!(unmet.len(), 1);
                assert_eq!(unmet[0].stage, Stage::Agreement);
                assert_eq!(
                    unmet[0].subject,
                    "tenants/gp/environments/test/stages/AGREEMENT"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(record, before, "a refused call changes nothing");
    }

    #[test]
    fn registering_the_account_waits_on_the_tenant_for_the_portal_steps() {
        let mut record = OnboardingRecord::new("id".into(), &key(Environment::Test), 0);
        let before = record.clone();
        record.record_agreement(agreement(), 4);
        record.register_account(account(), 5).unwrap();
        record.refresh();
        let stage = record.stage(Stage::Account);
        assert_eq!(stage.state, StageState::ActionRequired);
        assert_eq!(stage.blocked_on, BlockedOn::Tenant);
        assert!(stage.due.contains(&stages::ACCOUNT_ACTIVATE.to_owned()));
        assert!(stage.due.contains(&stages::ACCOUNT_ACCEPT_TERMS.to_owned()));
        assert!(
            stage
                .due
                .contains(&stages::ACCOUNT_CHANGE_PASSWORD.to_owned())
        );
        assert!(
            stage.message.contains("one user"),
            "test notes the single user: {}",
            stage.message
        );
        assert_eq!(record.state, OnboardingState::ActionRequired);
        assert_eq!(record.blocked_on, BlockedOn::Tenant);
        let transitions = record.transitions_since(&before);
        assert_eq!(
            transitions,
            vec![
                StageTransition {
                    stage: Stage::Agreement,
                    creditor: None,
                    from: StageState::NotStarted,
                    to: StageState::Completed
                },
                StageTransition {
                    stage: Stage::Account,
                    creditor: None,
                    from: StageState::NotStarted,
                    to: StageState::ActionRequired
                },
            ]
        );
    }

    #[test]
    fn production_recommends_a_separate_api_user() {
        let mut record = OnboardingRecord::new("id".into(), &key(Environment::Production), 0);
        record.record_agreement(agreement(), 4);
        record.register_account(account(), 5).unwrap();
        assert!(
            record
                .stage(Stage::Account)
                .message
                .contains("separate API user")
        );
        assert!(
            record.next_due()[0]
                .description
                .contains("app.billecta.com")
        );
    }

    #[test]
    fn a_done_environment_asks_for_the_first_creditor() {
        let mut record = OnboardingRecord::new("id".into(), &key(Environment::Test), 0);
        record.record_agreement(agreement(), 4);
        record.stage_mut(Stage::Account).set(
            StageState::Completed,
            BlockedOn::Nobody,
            vec![],
            "ACTIVATED",
            "",
            6,
        );
        record.refresh();
        assert_eq!(record.state, OnboardingState::ActionRequired);
        assert_eq!(record.next_due()[0].item, stages::CREDITOR_CREATE);
    }

    #[test]
    fn transient_failures_back_off_exponentially_up_to_a_cap_and_success_resets_them() {
        use crate::domain::failure::{FailureKind, StageFailure};
        let error = StageFailure {
            kind: FailureKind::Unavailable,
            description: "Billecta test POST /v1/creditors/creditor: HTTP 503".to_owned(),
        };
        let mut stage = StageRecord::waiting(Stage::Creditor, BlockedOn::Nobody, vec![], "X", "");
        let mut waits = Vec::new();
        for _ in 0..10 {
            stages::billecta_failed(&mut stage, &error, 0);
            waits.push(stage.next_attempt_time.unwrap() / 1_000_000);
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(stage.attempts, 10);
        assert_eq!(stage.blocked_on, BlockedOn::SystemRetrying);
        stage.set(
            StageState::Completed,
            BlockedOn::Nobody,
            vec![],
            "DONE",
            "",
            1,
        );
        assert_eq!((stage.attempts, stage.next_attempt_time), (0, None));
    }

    #[test]
    fn failing_and_waiting_never_look_alike() {
        let mut record = OnboardingRecord::new("id".into(), &key(Environment::Test), 0);
        record.stage_mut(Stage::Agreement).set(
            StageState::Failed,
            BlockedOn::PaywayOperations,
            vec![],
            "X",
            "",
            1,
        );
        record.refresh();
        assert_eq!(record.state, OnboardingState::Failed);
        record.stage_mut(Stage::Agreement).set(
            StageState::InProgress,
            BlockedOn::SystemRetrying,
            vec![],
            "X",
            "",
            1,
        );
        record.refresh();
        assert_eq!(record.state, OnboardingState::InProgress);
        assert_eq!(record.blocked_on, BlockedOn::SystemRetrying);
    }
}
