//! Where a stage's state is decided: the order of the stages, what each one waits for, the due
//! items a person reads, and the roll-up of an onboarding.
//!
//! Every stage is stored with the state, blocked_on, due items, reason and message it shows, so a
//! read shows exactly what the last change decided. The functions here are the only place that
//! chooses those values.

use super::onboarding::{DueItem, OnboardingRecord, StageRecord};
use super::{BlockedOn, Environment, Micros, OnboardingState, Stage, StageState};
use crate::error::{Error, UnmetStage};

/// The stages of an environment, in order.
pub const ENVIRONMENT_STAGES: [Stage; 2] = [Stage::Agreement, Stage::Account];

/// The stages of each creditor, in order.
pub const CREDITOR_STAGES: [Stage; 6] = [
    Stage::Creditor,
    Stage::CompanySettings,
    Stage::InvoiceSettings,
    Stage::ApiAccess,
    Stage::PaymentConfiguration,
    Stage::Webhooks,
];

/// Due item: record the agreement with `RecordAgreement`.
pub const AGREEMENT_RECORD: &str = "agreement.record";
/// Due item: register the account to create with `RegisterAccount`.
pub const ACCOUNT_REGISTER: &str = "account.register";
/// Due items of the portal steps, in the order a person does them.
pub const ACCOUNT_CREATE: &str = "account.create";
pub const ACCOUNT_ACTIVATE: &str = "account.activate";
pub const ACCOUNT_ACCEPT_TERMS: &str = "account.accept_terms";
pub const ACCOUNT_CHANGE_PASSWORD: &str = "account.change_password";
pub const ACCOUNT_CONFIRM: &str = "account.confirm_activation";
/// Due item: create the first creditor with `CreateCreditor`.
pub const CREDITOR_CREATE: &str = "creditor.create";

/// Who must act on a due item, and what they must do, for a person to read.
pub fn describe_due(item: &str, environment: Environment) -> (BlockedOn, String) {
    let portal = portal_url(environment);
    match item {
        AGREEMENT_RECORD => (
            BlockedOn::PaywayOperations,
            match environment {
                Environment::Test => "Make sure an agreement with Billecta exists (contact Billecta to set one up), then record it with RecordAgreement.".to_owned(),
                Environment::Production => "Contact Billecta to start the production procedure, then record it with RecordAgreement.".to_owned(),
            },
        ),
        ACCOUNT_REGISTER => (
            BlockedOn::PaywayOperations,
            "Register the Billecta account to create (name, company name, e-mail) with RegisterAccount.".to_owned(),
        ),
        ACCOUNT_CREATE => (
            BlockedOn::Tenant,
            format!("Create the account at {portal} with \"Create new account\", using the registered name, company name and e-mail."),
        ),
        ACCOUNT_ACTIVATE => (
            BlockedOn::Tenant,
            match environment {
                Environment::Test => "Activate the account from the e-mail Billecta sends. Billecta's test environment mails only whitelisted addresses: ask Billecta support if none arrives.".to_owned(),
                Environment::Production => "Activate the account from the e-mail Billecta sends.".to_owned(),
            },
        ),
        ACCOUNT_ACCEPT_TERMS => (
            BlockedOn::Tenant,
            format!("Log in at {portal} and accept Billecta's terms and conditions."),
        ),
        ACCOUNT_CHANGE_PASSWORD => (
            BlockedOn::Tenant,
            "Change the account's password in the portal.".to_owned(),
        ),
        ACCOUNT_CONFIRM => (
            BlockedOn::Tenant,
            "Confirm the activation with ConfirmAccountActivation, giving the account's username and password.".to_owned(),
        ),
        CREDITOR_CREATE => (
            BlockedOn::PaywayOperations,
            "Create the first creditor with CreateCreditor (organisation number and company name).".to_owned(),
        ),
        other => (BlockedOn::PaywayOperations, format!("Do {other}.")),
    }
}

/// Billecta's portal for an environment, where the human steps happen.
pub fn portal_url(environment: Environment) -> &'static str {
    match environment {
        Environment::Test => "https://apptest.billecta.com",
        Environment::Production => "https://app.billecta.com",
    }
}

/// The stages of a new onboarding: the agreement is due from Payway operations, the account waits for
/// it.
pub fn initial_environment_stages(environment: Environment) -> Vec<StageRecord> {
    let agreement = StageRecord::waiting(
        Stage::Agreement,
        describe_due(AGREEMENT_RECORD, environment).0,
        vec![AGREEMENT_RECORD.to_owned()],
        "AWAITING_AGREEMENT",
        match environment {
            Environment::Test => "No agreement with Billecta is recorded yet.",
            Environment::Production => {
                "The production procedure with Billecta is not recorded as started yet."
            }
        },
    );
    let account = StageRecord::waiting(
        Stage::Account,
        BlockedOn::Nobody,
        Vec::new(),
        "WAITING_FOR_EARLIER_STAGE",
        "Starts once the agreement is recorded.",
    );
    vec![agreement, account]
}

/// AGREEMENT is attested: the account is now due to be registered, unless it already moved on.
pub fn agreement_recorded(record: &mut OnboardingRecord, now: Micros) {
    record.stage_mut(Stage::Agreement).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        "AGREEMENT_RECORDED",
        "The agreement is recorded.",
        now,
    );
    let account = record.stage_mut(Stage::Account);
    if account.state == StageState::NotStarted {
        account.set(
            StageState::NotStarted,
            BlockedOn::PaywayOperations,
            vec![ACCOUNT_REGISTER.to_owned()],
            "AWAITING_ACCOUNT_DETAILS",
            "Register the account to create in Billecta's portal.",
            now,
        );
    }
}

/// The account to create is registered: a person must now do the portal steps.
pub fn account_registered(record: &mut OnboardingRecord, now: Micros) {
    let environment = record.environment;
    let message = match environment {
        Environment::Test => format!(
            "Create and activate the account at {}. Billecta's test environment allows one user per account, so this user will also be the API user.",
            portal_url(environment)
        ),
        Environment::Production => format!(
            "Create and activate the account at {}. Use a separate API user for the integration later.",
            portal_url(environment)
        ),
    };
    let due = [
        ACCOUNT_CREATE,
        ACCOUNT_ACTIVATE,
        ACCOUNT_ACCEPT_TERMS,
        ACCOUNT_CHANGE_PASSWORD,
        ACCOUNT_CONFIRM,
    ]
    .map(str::to_owned)
    .to_vec();
    record.stage_mut(Stage::Account).set(
        StageState::ActionRequired,
        BlockedOn::Tenant,
        due,
        "AWAITING_ACTIVATION",
        &message,
        now,
    );
}

/// The stages among `required` that are not done yet, as a precondition error for `action`.
pub fn require_done(
    record: &OnboardingRecord,
    required: &[Stage],
    action: &str,
) -> Result<(), Error> {
    let name = record.key().name();
    let unmet: Vec<UnmetStage> = required
        .iter()
        .map(|stage| record.stage(*stage))
        .filter(|stage| !stage.state.is_done())
        .map(|stage| UnmetStage {
            subject: format!("{name}/stages/{}", stage.stage),
            stage: stage.stage,
            state: stage.state,
        })
        .collect();
    if unmet.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = unmet.iter().map(|u| u.stage.as_str()).collect();
    Err(Error::StagesNotDone {
        resource: name,
        message: format!(
            "{action} needs these stages completed first: {}",
            list.join(", ")
        ),
        unmet,
    })
}

/// The roll-up of an onboarding: its state, who the next step waits on and what is due next.
///
/// What is due next is the frontier: the due items of the first stage not done in the environment,
/// and once the environment is done, of the first stage not done of each creditor. Optional stages
/// that were never started do not hold READY back.
pub fn roll_up(record: &OnboardingRecord) -> (OnboardingState, BlockedOn, Vec<DueItem>) {
    let environment = record.environment;
    let mut next_due = Vec::new();
    let mut waiting_on = None;
    let mut add_frontier =
        |stage: &StageRecord, creditor: Option<&str>, next_due: &mut Vec<DueItem>| {
            waiting_on.get_or_insert(stage.blocked_on);
            next_due.extend(
                stage
                    .due
                    .iter()
                    .map(|item| due_item(item, stage.stage, creditor, environment)),
            );
        };
    match frontier(&record.stages) {
        Some(stage) => add_frontier(stage, None, &mut next_due),
        None if record.creditors.is_empty() => {
            let first_creditor = StageRecord::waiting(
                Stage::Creditor,
                BlockedOn::PaywayOperations,
                vec![CREDITOR_CREATE.to_owned()],
                "AWAITING_CREDITOR",
                "",
            );
            add_frontier(&first_creditor, None, &mut next_due);
        }
        None => {
            for creditor in &record.creditors {
                if let Some(stage) = frontier(&creditor.stages) {
                    add_frontier(stage, Some(&creditor.name), &mut next_due);
                }
            }
        }
    }
    let every_stage = record
        .stages
        .iter()
        .chain(record.creditors.iter().flat_map(|c| c.stages.iter()));
    let (mut any_failed, mut any_broken) = (false, false);
    for stage in every_stage {
        any_failed |= stage.state == StageState::Failed;
        any_broken |= stage.state == StageState::Broken;
    }
    let blocked_on = waiting_on.unwrap_or(BlockedOn::Nobody);
    let state = if any_broken {
        OnboardingState::Broken
    } else if any_failed {
        OnboardingState::Failed
    } else if waiting_on.is_none() {
        OnboardingState::Ready
    } else if matches!(blocked_on, BlockedOn::Nobody | BlockedOn::SystemRetrying) {
        OnboardingState::InProgress
    } else {
        OnboardingState::ActionRequired
    };
    (state, blocked_on, next_due)
}

/// The first stage that holds the setup back: not done, and not an optional stage nobody started.
fn frontier(stages: &[StageRecord]) -> Option<&StageRecord> {
    stages.iter().find(|stage| {
        !(stage.state.is_done()
            || (stage.stage.is_optional() && stage.state == StageState::NotStarted))
    })
}

fn due_item(item: &str, stage: Stage, creditor: Option<&str>, environment: Environment) -> DueItem {
    let (from, description) = describe_due(item, environment);
    DueItem {
        item: item.to_owned(),
        stage,
        creditor: creditor.map(str::to_owned),
        from,
        description,
    }
}
