//! Where a stage's state is decided: the order of the stages, what each one waits for, the due
//! items a person reads, and the roll-up of an onboarding.
//!
//! Every stage is stored with the state, blocked_on, due items, reason and message it shows, so a
//! read shows exactly what the last change decided. The functions here are the only place that
//! chooses those values.

use super::failure::{FailureKind, Refusal, StageFailure, UnmetStage};
use super::onboarding::{CreditorRecord, DueItem, OnboardingRecord, StageRecord};
use super::{BlockedOn, Environment, Micros, OnboardingState, Stage, StageState};

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
/// Due item: give the address and both bankgiros with `UpdateCompanySettings`.
pub const COMPANY_SETTINGS_UPDATE: &str = "company_settings.update";
/// Due item: Billecta's support must approve the bankgiro for payments.
pub const COMPANY_SETTINGS_BANKGIRO_APPROVAL: &str = "company_settings.bankgiro_payments";
/// Due item: set the next invoice number with `UpdateInvoiceSettings`, or skip the stage.
pub const INVOICE_SETTINGS_UPDATE: &str = "invoice_settings.update";
/// Due item: register the API user's credentials with `RegisterApiCredentials`.
pub const API_ACCESS_REGISTER: &str = "api_access.register";
/// Due item: Payway's payment code reads the configuration with `GetPaymentConfiguration`.
pub const PAYMENT_CONFIGURATION_READ: &str = "payment_configuration.read";
/// Due item: set up the webhook addon in the portal and attest it with `RecordWebhookSetup`.
pub const WEBHOOKS_RECORD: &str = "webhooks.record";
/// Due item: the creditor is gone or disabled in Billecta; restore it there.
pub const CREDITOR_RESTORE: &str = "creditor.restore";
/// Due item: nobody's; the service retries a step after a transient Billecta failure.
pub const SYSTEM_RETRY: &str = "system.retry";

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
        COMPANY_SETTINGS_UPDATE => (
            BlockedOn::PaywayOperations,
            "Give the creditor's address, bankgiro for invoicing and bankgiro for payments with UpdateCompanySettings.".to_owned(),
        ),
        COMPANY_SETTINGS_BANKGIRO_APPROVAL => (
            BlockedOn::BillectaSupport,
            "Billecta's support reviews and approves the bankgiro for payments; ask them if it takes more than a few working days, then call UpdateCompanySettings again to check.".to_owned(),
        ),
        INVOICE_SETTINGS_UPDATE => (
            BlockedOn::PaywayOperations,
            "Set the next invoice number with UpdateInvoiceSettings, or skip the stage with SkipStage.".to_owned(),
        ),
        API_ACCESS_REGISTER => (
            BlockedOn::PaywayOperations,
            match environment {
                Environment::Test => "Register the API credentials with RegisterApiCredentials (in the test environment the account's own user).".to_owned(),
                Environment::Production => "Create a separate API user in the portal and register its credentials with RegisterApiCredentials.".to_owned(),
            },
        ),
        PAYMENT_CONFIGURATION_READ => (
            BlockedOn::PaywayOperations,
            "Payway's payment code reads the payment configuration with GetPaymentConfiguration.".to_owned(),
        ),
        WEBHOOKS_RECORD => (
            BlockedOn::Tenant,
            format!("Set up the webhook addon to Payway at {portal} (Settings, Addons, Webhooks), then attest it with RecordWebhookSetup, or skip the stage."),
        ),
        CREDITOR_RESTORE => (
            BlockedOn::PaywayOperations,
            format!("Billecta no longer holds the creditor as it was (deleted or disabled): enable it at {portal} or ask Billecta's support, then run ValidateOnboarding."),
        ),
        SYSTEM_RETRY => (
            BlockedOn::SystemRetrying,
            "Billecta did not answer; the service retries the step by itself (the stage says when). Nothing to do unless it keeps failing: then see the stage's message.".to_owned(),
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
) -> Result<(), Refusal> {
    let stages = required.iter().map(|stage| record.stage(*stage));
    unmet_error(record, None, stages, action)
}

/// The same for stages of a creditor (after the environment's own, which every creditor stage needs).
pub fn require_creditor_done(
    record: &OnboardingRecord,
    creditor: &CreditorRecord,
    required: &[Stage],
    action: &str,
) -> Result<(), Refusal> {
    require_done(record, &ENVIRONMENT_STAGES, action)?;
    let stages = creditor
        .stages
        .iter()
        .filter(|stage| required.contains(&stage.stage));
    unmet_error(record, Some(&creditor.name), stages, action)
}

/// COMPANY_SETTINGS is applied in Billecta: done, or waiting only for Billecta's support to approve
/// the bankgiro for payments, which may take days and has nothing to do with the API credentials
/// (READY still waits for it).
pub fn require_company_settings_applied(
    record: &OnboardingRecord,
    creditor: &CreditorRecord,
    action: &str,
) -> Result<(), Refusal> {
    let stages = creditor.stages.iter().filter(|stage| {
        stage.stage == Stage::CompanySettings && !is_awaiting_bankgiro_approval(stage)
    });
    unmet_error(record, Some(&creditor.name), stages, action)
}

/// Whether the stage is COMPANY_SETTINGS applied in Billecta but for the approval of the bankgiro
/// for payments.
pub fn is_awaiting_bankgiro_approval(stage: &StageRecord) -> bool {
    stage.stage == Stage::CompanySettings
        && stage.state == StageState::ActionRequired
        && stage
            .due
            .iter()
            .any(|item| item == COMPANY_SETTINGS_BANKGIRO_APPROVAL)
}

/// The error naming `stages` of `record` that are not done, if any; `owner` is the resource they
/// belong to (the onboarding's own name if `None`). Names are made only for an error.
fn unmet_error<'a>(
    record: &OnboardingRecord,
    owner: Option<&str>,
    stages: impl Iterator<Item = &'a StageRecord>,
    action: &str,
) -> Result<(), Refusal> {
    let mut unmet_stages = stages.filter(|stage| !stage.state.is_done()).peekable();
    if unmet_stages.peek().is_none() {
        return Ok(());
    }
    let name = record.key().name();
    let owner = owner.unwrap_or(&name);
    let unmet: Vec<UnmetStage> = unmet_stages
        .map(|stage| UnmetStage {
            subject: format!("{owner}/stages/{}", stage.stage),
            stage: stage.stage,
            state: stage.state,
        })
        .collect();
    let list: Vec<&str> = unmet.iter().map(|u| u.stage.as_str()).collect();
    Err(Refusal::StagesNotDone {
        message: format!(
            "{action} needs these stages completed first: {}",
            list.join(", ")
        ),
        resource: name,
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

/// The account signs in: ACCOUNT is completed and the first creditor is due.
pub fn account_confirmed(record: &mut OnboardingRecord, now: Micros) {
    let environment = record.environment;
    record.stage_mut(Stage::Account).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        "ACCOUNT_ACTIVATED",
        &format!("The account signs in to Billecta's {environment} environment."),
        now,
    );
}

/// The stages of a creditor that is being created in Billecta.
pub fn new_creditor_stages() -> Vec<StageRecord> {
    CREDITOR_STAGES
        .iter()
        .map(|stage| match stage {
            Stage::Creditor => StageRecord {
                state: StageState::InProgress,
                ..StageRecord::waiting(
                    Stage::Creditor,
                    BlockedOn::Nobody,
                    Vec::new(),
                    "CREATING_IN_BILLECTA",
                    "The service is creating the creditor in Billecta, or adopting the one Billecta holds for this organisation number.",
                )
            },
            later => StageRecord::waiting(
                *later,
                BlockedOn::Nobody,
                Vec::new(),
                "WAITING_FOR_EARLIER_STAGE",
                "Starts once the creditor exists in Billecta.",
            ),
        })
        .collect()
}

/// The stages of a creditor copied from test by a promotion: it is yet to be created in production.
pub fn promoted_creditor_stages(now: Micros) -> Vec<StageRecord> {
    new_creditor_stages()
        .into_iter()
        .map(|mut stage| {
            if stage.stage == Stage::Creditor {
                stage.set(
                    StageState::NotStarted,
                    BlockedOn::PaywayOperations,
                    vec![CREDITOR_CREATE.to_owned()],
                    "PROMOTED",
                    "Copied from the test environment; create it in production with CreateCreditor.",
                    now,
                );
            }
            stage
        })
        .collect()
}

/// Billecta holds the creditor: the settings are due next.
pub fn creditor_created(creditor: &mut CreditorRecord, adopted: bool, now: Micros) {
    let (reason, message) = if adopted {
        (
            "CREDITOR_ADOPTED",
            "Billecta already held a creditor with this organisation number; it was adopted, not created again.",
        )
    } else {
        ("CREDITOR_CREATED", "The creditor was created in Billecta.")
    };
    creditor_stage(creditor, Stage::Creditor).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        reason,
        message,
        now,
    );
    let waiting = [
        (
            Stage::CompanySettings,
            COMPANY_SETTINGS_UPDATE,
            "AWAITING_COMPANY_SETTINGS",
            "Give the address and both bankgiros.",
        ),
        (
            Stage::InvoiceSettings,
            INVOICE_SETTINGS_UPDATE,
            "AWAITING_INVOICE_SETTINGS",
            "Optional: set the next invoice number, or skip.",
        ),
        (
            Stage::ApiAccess,
            API_ACCESS_REGISTER,
            "AWAITING_API_CREDENTIALS",
            "Register the API user's credentials.",
        ),
        (
            Stage::Webhooks,
            WEBHOOKS_RECORD,
            "AWAITING_WEBHOOKS",
            "Optional: set up the webhook addon, or skip.",
        ),
    ];
    for (stage, due, reason, message) in waiting {
        let record = creditor_stage(creditor, stage);
        if record.state == StageState::NotStarted {
            record.set(
                StageState::NotStarted,
                BlockedOn::PaywayOperations,
                vec![due.to_owned()],
                reason,
                message,
                now,
            );
        }
    }
}

/// The company settings are in Billecta; the bankgiro for payments may still wait for approval.
pub fn company_settings_applied(creditor: &mut CreditorRecord, approved: bool, now: Micros) {
    let bankgiro = creditor
        .company_settings
        .as_ref()
        .map(|settings| settings.bankgiro_payments.clone())
        .unwrap_or_default();
    let stage = creditor_stage(creditor, Stage::CompanySettings);
    if approved {
        stage.set(
            StageState::Completed,
            BlockedOn::Nobody,
            Vec::new(),
            "COMPANY_SETTINGS_APPLIED",
            "Billecta shows the address and both bankgiros; the bankgiro for payments is approved.",
            now,
        );
    } else {
        awaiting_bankgiro_approval(stage, now);
        stage.message = format!(
            "Billecta shows the settings; its support has yet to approve bankgiro {bankgiro} for payments."
        );
    }
}

/// The company settings are in Billecta; the bankgiro for payments waits for Billecta's support.
pub fn awaiting_bankgiro_approval(stage: &mut StageRecord, now: Micros) {
    stage.set(
        StageState::ActionRequired,
        BlockedOn::BillectaSupport,
        vec![COMPANY_SETTINGS_BANKGIRO_APPROVAL.to_owned()],
        "AWAITING_BANKGIRO_APPROVAL",
        "Billecta shows the settings; its support has yet to approve the bankgiro for payments.",
        now,
    );
}

/// The next invoice number is set in Billecta.
pub fn invoice_settings_applied(creditor: &mut CreditorRecord, number: Option<u64>, now: Micros) {
    let message = match number {
        Some(number) => {
            format!("Billecta's next invoice number is {number}; the payment terms are set.")
        }
        None => {
            "The payment terms are set; Billecta's invoice numbering is left as it is.".to_owned()
        }
    };
    creditor_stage(creditor, Stage::InvoiceSettings).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        "INVOICE_SETTINGS_APPLIED",
        &message,
        now,
    );
}

/// An optional stage was skipped on purpose.
pub fn stage_skipped(creditor: &mut CreditorRecord, stage: Stage, reason: &str, now: Micros) {
    debug_assert!(stage.is_optional());
    creditor_stage(creditor, stage).set(
        StageState::Skipped,
        BlockedOn::Nobody,
        Vec::new(),
        "SKIPPED",
        &format!("Skipped: {reason}"),
        now,
    );
}

/// A Billecta call for the stage failed: transient failures leave it retrying (waiting is not
/// failing), refusals say what must change and who must act.
pub fn billecta_failed(stage: &mut StageRecord, failure: &StageFailure, now: Micros) {
    let (state, blocked_on, reason, message) = match failure.kind {
        FailureKind::Unavailable => (
            StageState::InProgress,
            BlockedOn::SystemRetrying,
            "BILLECTA_UNAVAILABLE",
            format!("Billecta did not answer ({failure}); the step is retried."),
        ),
        FailureKind::CredentialsRejected => (
            StageState::ActionRequired,
            BlockedOn::Tenant,
            "BILLECTA_CREDENTIALS_REJECTED",
            format!(
                "Billecta refused the stored credentials ({failure}). Confirm the account again with ConfirmAccountActivation."
            ),
        ),
        FailureKind::Refused => (
            StageState::Failed,
            BlockedOn::PaywayOperations,
            "BILLECTA_REJECTED",
            format!("Billecta refused the data: {failure}"),
        ),
        FailureKind::Gone => (
            StageState::Broken,
            BlockedOn::PaywayOperations,
            "BILLECTA_NOT_FOUND",
            format!("Billecta no longer has it: {failure}"),
        ),
        FailureKind::Unexpected => (
            StageState::Failed,
            BlockedOn::PaywayOperations,
            "BILLECTA_UNEXPECTED_RESPONSE",
            format!("Billecta answered unexpectedly: {failure}"),
        ),
    };
    let due = match failure.kind {
        FailureKind::Unavailable => SYSTEM_RETRY,
        // The stored token was refused and could not be renewed: the account's credentials must be
        // given again, or, for API_ACCESS, the API user's.
        FailureKind::CredentialsRejected if stage.stage != Stage::ApiAccess => ACCOUNT_CONFIRM,
        FailureKind::Gone if stage.stage == Stage::Creditor => CREDITOR_RESTORE,
        _ => repair_item(stage.stage),
    };
    let attempts = stage.attempts;
    stage.set(
        state,
        blocked_on,
        vec![due.to_owned()],
        reason,
        &message,
        now,
    );
    stage.lease = None;
    if failure.kind == FailureKind::Unavailable {
        // Capped exponential backoff for the reconciler: 5 s, 10 s, 20 s, ... at most 10 minutes.
        stage.attempts = attempts + 1;
        let exponent = u32::try_from(attempts.clamp(0, 7)).unwrap_or(7);
        let wait = (RETRY_BASE_MICROS << exponent).min(RETRY_CAP_MICROS);
        let next = now.saturating_add(wait);
        stage.next_attempt_time = Some(next);
        stage.message = format!("{} Next attempt at {}.", stage.message, time_text(next));
    }
}

/// The due item that puts a stage right when it failed or broke: the call that sets it up again.
fn repair_item(stage: Stage) -> &'static str {
    match stage {
        Stage::Agreement => AGREEMENT_RECORD,
        Stage::Account => ACCOUNT_CONFIRM,
        Stage::Creditor => CREDITOR_RESTORE,
        Stage::CompanySettings => COMPANY_SETTINGS_UPDATE,
        Stage::InvoiceSettings => INVOICE_SETTINGS_UPDATE,
        Stage::ApiAccess => API_ACCESS_REGISTER,
        Stage::PaymentConfiguration => PAYMENT_CONFIGURATION_READ,
        Stage::Webhooks => WEBHOOKS_RECORD,
    }
}

/// A time for a person to read, RFC 3339 in UTC.
fn time_text(micros: Micros) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|time| {
            time.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

/// The first wait before the reconciler retries a stage after a transient failure.
const RETRY_BASE_MICROS: i64 = 5_000_000;
/// The longest wait between two retries of a stage.
const RETRY_CAP_MICROS: i64 = 600_000_000;

/// A creditor's stage.
pub fn creditor_stage(creditor: &mut CreditorRecord, stage: Stage) -> &mut StageRecord {
    creditor
        .stages
        .iter_mut()
        .find(|record| record.stage == stage)
        .expect("every creditor stage exists from the creditor's creation")
}

/// The API credentials read the creditor: API_ACCESS is completed (with any warnings in its message),
/// and, if the token the payment configuration hands out `changed`, Payway's payment code must read
/// it.
pub fn api_access_verified(
    creditor: &mut CreditorRecord,
    warnings: &[String],
    changed: bool,
    now: Micros,
) {
    let (reason, message) = if warnings.is_empty() {
        (
            "API_ACCESS_VERIFIED",
            "The API credentials sign in and read the creditor.".to_owned(),
        )
    } else {
        (
            "API_ACCESS_VERIFIED_WITH_WARNINGS",
            format!(
                "The API credentials sign in and read the creditor, but: {}.",
                warnings.join(", ")
            ),
        )
    };
    creditor_stage(creditor, Stage::ApiAccess).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        reason,
        &message,
        now,
    );
    let configuration = creditor_stage(creditor, Stage::PaymentConfiguration);
    if !changed && configuration.state != StageState::NotStarted {
        return;
    }
    configuration.set(
        StageState::NotStarted,
        BlockedOn::PaywayOperations,
        vec![PAYMENT_CONFIGURATION_READ.to_owned()],
        "AWAITING_PAYMENT_CONFIGURATION_READ",
        "Payway's payment code has not read the current credentials yet.",
        now,
    );
}

/// CreateApiUser could not make a working API user through Billecta's API: the portal path is due,
/// and `why` says what was made and what to do.
pub fn api_user_portal_path(creditor: &mut CreditorRecord, why: &str, now: Micros) {
    let stage = creditor_stage(creditor, Stage::ApiAccess);
    if stage.state == StageState::Completed {
        // The credentials registered before still work: they stay.
        return;
    }
    stage.set(
        StageState::ActionRequired,
        BlockedOn::PaywayOperations,
        vec![API_ACCESS_REGISTER.to_owned()],
        "API_USER_PORTAL_PATH",
        why,
        now,
    );
}

/// Payway's payment code read the configuration with the current credentials.
pub fn payment_configuration_read(creditor: &mut CreditorRecord, reader: &str, now: Micros) {
    creditor_stage(creditor, Stage::PaymentConfiguration).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        "PAYMENT_CONFIGURATION_READ",
        &format!("Read by {reader} after the last credential change."),
        now,
    );
}

/// The webhook addon is attested.
pub fn webhooks_recorded(creditor: &mut CreditorRecord, now: Micros) {
    creditor_stage(creditor, Stage::Webhooks).set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        "WEBHOOKS_RECORDED",
        "The webhook addon to Payway is attested.",
        now,
    );
}

/// A live check found a completed stage no longer works: due is what puts it right.
pub fn broken(stage: &mut StageRecord, reason: &str, message: &str, now: Micros) {
    let due = match (stage.stage, reason) {
        (Stage::Creditor, _) => CREDITOR_RESTORE,
        (_, "TOKEN_REJECTED" | "CREDENTIAL_MISSING" | "CREDENTIAL_UNREADABLE")
            if stage.stage != Stage::ApiAccess =>
        {
            ACCOUNT_CONFIRM
        }
        _ => repair_item(stage.stage),
    };
    stage.set(
        StageState::Broken,
        BlockedOn::PaywayOperations,
        vec![due.to_owned()],
        reason,
        message,
        now,
    );
}

/// The SecureToken of a user changed (`cause` says why): every creditor whose payment
/// configuration hands it out waits until Payway's payment code reads it again, since the token
/// Payway holds may no longer work. Returns those creditors' names.
pub fn token_changed(
    record: &mut OnboardingRecord,
    user: &str,
    cause: &str,
    now: Micros,
) -> Vec<String> {
    let label = record
        .user(user)
        .map(|user| user.label().to_owned())
        .unwrap_or_default();
    let mut affected = Vec::new();
    for creditor in &mut record.creditors {
        let uses = creditor
            .api_access
            .as_ref()
            .is_some_and(|access| access.user.as_deref() == Some(user));
        let configured = creditor
            .stages
            .iter()
            .any(|s| s.stage == Stage::ApiAccess && s.state != StageState::NotStarted);
        if !(uses && configured) {
            continue;
        }
        creditor_stage(creditor, Stage::PaymentConfiguration).set(
            StageState::ActionRequired,
            BlockedOn::PaywayOperations,
            vec![PAYMENT_CONFIGURATION_READ.to_owned()],
            "SECURE_TOKEN_CHANGED",
            &format!(
                "The SecureToken of {label} changed ({cause}); the token Payway's payment code holds may no longer work: it must read the payment configuration again."
            ),
            now,
        );
        affected.push(creditor.name.clone());
    }
    affected
}

/// A live check found a broken stage working again.
pub fn repaired(stage: &mut StageRecord, now: Micros) {
    stage.set(
        StageState::Completed,
        BlockedOn::Nobody,
        Vec::new(),
        "REVALIDATED",
        "A live check found it working again.",
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::onboarding::{CompanySettings, Lease};
    use crate::domain::validate::{OnboardingKey, TenantId};

    fn record(environment: Environment) -> OnboardingRecord {
        let tenant = TenantId::parse("tenant", "gp").unwrap();
        OnboardingRecord::new("id".into(), &OnboardingKey::new(tenant, environment), 0)
    }

    /// An onboarding whose agreement and account are done.
    fn environment_done() -> OnboardingRecord {
        let mut record = record(Environment::Test);
        agreement_recorded(&mut record, 1);
        account_registered(&mut record, 2);
        account_confirmed(&mut record, 3);
        record
    }

    /// A creditor being created in Billecta, with company settings asked for.
    fn creditor(id: &str) -> CreditorRecord {
        CreditorRecord {
            id: id.to_owned(),
            name: format!("tenants/gp/environments/test/creditors/{id}"),
            organisation_number: "556000-0001".into(),
            company_name: "GP AB".into(),
            title: String::new(),
            creditor_public_id: None,
            stages: new_creditor_stages(),
            company_settings: Some(CompanySettings {
                address: "Storgatan 1".into(),
                zip_code: "111 22".into(),
                city: "Stockholm".into(),
                country_code: "SE".into(),
                bankgiro_invoicing: "123-4567".into(),
                bankgiro_payments: "765-4321".into(),
                bankgiro_payments_approved: false,
            }),
            invoice_settings: None,
            api_access: None,
            webhooks: None,
        }
    }

    /// A creditor with every required stage completed and the optional ones never started.
    fn ready_creditor(id: &str) -> CreditorRecord {
        let mut creditor = creditor(id);
        creditor_created(&mut creditor, false, 4);
        company_settings_applied(&mut creditor, true, 5);
        api_access_verified(&mut creditor, &[], true, 6);
        payment_configuration_read(&mut creditor, "payway-payments", 7);
        creditor
    }

    /// What a caller reads of a stage: state, whose move it is, what is due and why.
    fn shown(stage: &StageRecord) -> (StageState, BlockedOn, Vec<&str>, &str) {
        (
            stage.state,
            stage.blocked_on,
            stage.due.iter().map(String::as_str).collect(),
            stage.reason.as_str(),
        )
    }

    fn of(creditor: &mut CreditorRecord, stage: Stage) -> (StageState, BlockedOn, Vec<&str>, &str) {
        shown(creditor_stage(creditor, stage))
    }

    fn failure(kind: FailureKind) -> StageFailure {
        StageFailure {
            kind,
            description: "Billecta test POST /v1/creditors/creditor: HTTP 503".into(),
        }
    }

    fn due_items(record: &OnboardingRecord) -> Vec<(String, Stage, Option<String>, BlockedOn)> {
        roll_up(record)
            .2
            .into_iter()
            .map(|due| (due.item, due.stage, due.creditor, due.from))
            .collect()
    }

    #[test]
    fn a_new_onboarding_waits_on_operations_for_the_agreement_and_the_account_waits_for_it() {
        let stages = initial_environment_stages(Environment::Test);
        assert_eq!(
            shown(&stages[0]),
            (
                StageState::NotStarted,
                BlockedOn::PaywayOperations,
                vec![AGREEMENT_RECORD],
                "AWAITING_AGREEMENT"
            )
        );
        assert_eq!(
            shown(&stages[1]),
            (
                StageState::NotStarted,
                BlockedOn::Nobody,
                vec![],
                "WAITING_FOR_EARLIER_STAGE"
            )
        );
        let production = initial_environment_stages(Environment::Production);
        assert!(
            production[0].message.contains("production procedure"),
            "{}",
            production[0].message
        );
    }

    #[test]
    fn recording_the_agreement_asks_operations_to_register_the_account() {
        let mut record = record(Environment::Test);
        agreement_recorded(&mut record, 1);
        assert_eq!(
            shown(record.stage(Stage::Agreement)),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "AGREEMENT_RECORDED"
            )
        );
        assert_eq!(
            shown(record.stage(Stage::Account)),
            (
                StageState::NotStarted,
                BlockedOn::PaywayOperations,
                vec![ACCOUNT_REGISTER],
                "AWAITING_ACCOUNT_DETAILS"
            )
        );
        assert_eq!(
            due_items(&record),
            vec![(
                ACCOUNT_REGISTER.to_owned(),
                Stage::Account,
                None,
                BlockedOn::PaywayOperations
            )]
        );
    }

    #[test]
    fn recording_the_agreement_again_leaves_an_account_that_moved_on() {
        let mut record = record(Environment::Test);
        agreement_recorded(&mut record, 1);
        account_registered(&mut record, 2);
        let account = record.stage(Stage::Account).clone();
        agreement_recorded(&mut record, 3);
        assert_eq!(record.stage(Stage::Account), &account);
    }

    #[test]
    fn a_registered_account_waits_on_the_tenant_for_each_portal_step_in_order() {
        let mut record = record(Environment::Test);
        agreement_recorded(&mut record, 1);
        account_registered(&mut record, 2);
        let steps = vec![
            ACCOUNT_CREATE,
            ACCOUNT_ACTIVATE,
            ACCOUNT_ACCEPT_TERMS,
            ACCOUNT_CHANGE_PASSWORD,
            ACCOUNT_CONFIRM,
        ];
        assert_eq!(
            shown(record.stage(Stage::Account)),
            (
                StageState::ActionRequired,
                BlockedOn::Tenant,
                steps.clone(),
                "AWAITING_ACTIVATION"
            )
        );
        let (state, blocked_on, due) = roll_up(&record);
        assert_eq!(
            (state, blocked_on),
            (OnboardingState::ActionRequired, BlockedOn::Tenant)
        );
        let items: Vec<&str> = due.iter().map(|due| due.item.as_str()).collect();
        assert_eq!(items, steps);
        assert!(due.iter().all(|due| due.from == BlockedOn::Tenant));
        assert!(
            due[0].description.contains("https://apptest.billecta.com"),
            "{}",
            due[0].description
        );
    }

    #[test]
    fn a_confirmed_account_completes_and_the_first_creditor_falls_due_from_operations() {
        let record = environment_done();
        assert_eq!(
            shown(record.stage(Stage::Account)),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "ACCOUNT_ACTIVATED"
            )
        );
        assert!(record.stage(Stage::Account).message.contains("test"));
        assert_eq!(
            roll_up(&record).0,
            OnboardingState::ActionRequired,
            "a setup without a creditor is not ready"
        );
        assert_eq!(
            due_items(&record),
            vec![(
                CREDITOR_CREATE.to_owned(),
                Stage::Creditor,
                None,
                BlockedOn::PaywayOperations
            )]
        );
    }

    #[test]
    fn require_done_names_every_unmet_stage_with_its_resource() {
        let record = record(Environment::Test);
        let refusal = require_done(&record, &ENVIRONMENT_STAGES, "CreateCreditor").unwrap_err();
        let Refusal::StagesNotDone {
            resource,
            unmet,
            message,
        } = refusal
        else {
            panic!("unexpected {refusal:?}");
        };
        assert_eq!(resource, "tenants/gp/environments/test");
        assert_eq!(
            message,
            "CreateCreditor needs these stages completed first: AGREEMENT, ACCOUNT"
        );
        assert_eq!(
            unmet,
            vec![
                UnmetStage {
                    subject: "tenants/gp/environments/test/stages/AGREEMENT".into(),
                    stage: Stage::Agreement,
                    state: StageState::NotStarted,
                },
                UnmetStage {
                    subject: "tenants/gp/environments/test/stages/ACCOUNT".into(),
                    stage: Stage::Account,
                    state: StageState::NotStarted,
                },
            ]
        );
        assert_eq!(
            require_done(&environment_done(), &ENVIRONMENT_STAGES, "CreateCreditor"),
            Ok(())
        );
    }

    #[test]
    fn creditor_stages_need_the_environment_first_then_their_own_and_skipped_counts_as_done() {
        let mut creditor = creditor("c1");
        let refusal = require_creditor_done(
            &record(Environment::Test),
            &creditor,
            &[Stage::Creditor],
            "X",
        )
        .unwrap_err();
        let Refusal::StagesNotDone { unmet, .. } = refusal else {
            panic!("unexpected {refusal:?}");
        };
        assert_eq!(
            unmet.iter().map(|u| u.stage).collect::<Vec<_>>(),
            [Stage::Agreement, Stage::Account]
        );

        let record = environment_done();
        let refusal =
            require_creditor_done(&record, &creditor, &[Stage::Creditor], "X").unwrap_err();
        let Refusal::StagesNotDone { unmet, .. } = refusal else {
            panic!("unexpected {refusal:?}");
        };
        assert_eq!(
            unmet,
            vec![UnmetStage {
                subject: "tenants/gp/environments/test/creditors/c1/stages/CREDITOR".into(),
                stage: Stage::Creditor,
                state: StageState::InProgress,
            }]
        );

        creditor_created(&mut creditor, false, 4);
        stage_skipped(&mut creditor, Stage::Webhooks, "not used", 5);
        let required = [Stage::Creditor, Stage::Webhooks];
        assert_eq!(
            require_creditor_done(&record, &creditor, &required, "X"),
            Ok(())
        );
    }

    #[test]
    fn a_new_creditor_is_being_created_by_the_service_and_its_later_stages_wait() {
        let stages = new_creditor_stages();
        assert_eq!(
            stages.iter().map(|s| s.stage).collect::<Vec<_>>(),
            CREDITOR_STAGES
        );
        assert_eq!(
            shown(&stages[0]),
            (
                StageState::InProgress,
                BlockedOn::Nobody,
                vec![],
                "CREATING_IN_BILLECTA"
            )
        );
        for later in &stages[1..] {
            assert_eq!(
                shown(later),
                (
                    StageState::NotStarted,
                    BlockedOn::Nobody,
                    vec![],
                    "WAITING_FOR_EARLIER_STAGE"
                ),
                "{:?}",
                later.stage
            );
        }
        let mut record = environment_done();
        record.creditors.push(creditor("c1"));
        assert_eq!(
            roll_up(&record),
            (OnboardingState::InProgress, BlockedOn::Nobody, vec![])
        );
    }

    #[test]
    fn a_promoted_creditor_waits_for_operations_to_create_it_in_production() {
        let stages = promoted_creditor_stages(9);
        assert_eq!(
            shown(&stages[0]),
            (
                StageState::NotStarted,
                BlockedOn::PaywayOperations,
                vec![CREDITOR_CREATE],
                "PROMOTED"
            )
        );
        assert_eq!(stages[0].update_time, Some(9));
        assert_eq!(stages[1].reason, "WAITING_FOR_EARLIER_STAGE");
    }

    #[test]
    fn a_created_creditor_asks_operations_for_its_settings_credentials_and_webhooks() {
        let mut creditor = creditor("c1");
        creditor_created(&mut creditor, false, 4);
        assert_eq!(
            of(&mut creditor, Stage::Creditor),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "CREDITOR_CREATED"
            )
        );
        let waiting = [
            (
                Stage::CompanySettings,
                COMPANY_SETTINGS_UPDATE,
                "AWAITING_COMPANY_SETTINGS",
            ),
            (
                Stage::InvoiceSettings,
                INVOICE_SETTINGS_UPDATE,
                "AWAITING_INVOICE_SETTINGS",
            ),
            (
                Stage::ApiAccess,
                API_ACCESS_REGISTER,
                "AWAITING_API_CREDENTIALS",
            ),
            (Stage::Webhooks, WEBHOOKS_RECORD, "AWAITING_WEBHOOKS"),
        ];
        for (stage, due, reason) in waiting {
            assert_eq!(
                of(&mut creditor, stage),
                (
                    StageState::NotStarted,
                    BlockedOn::PaywayOperations,
                    vec![due],
                    reason
                )
            );
        }
        assert_eq!(
            of(&mut creditor, Stage::PaymentConfiguration).3,
            "WAITING_FOR_EARLIER_STAGE",
            "the payment configuration waits for the credentials"
        );
    }

    #[test]
    fn an_adopted_creditor_says_so_and_stages_that_moved_on_are_left_alone() {
        let mut creditor = creditor("c1");
        creditor_stage(&mut creditor, Stage::ApiAccess).set(
            StageState::Completed,
            BlockedOn::Nobody,
            vec![],
            "API_ACCESS_VERIFIED",
            "",
            3,
        );
        creditor_created(&mut creditor, true, 4);
        assert_eq!(of(&mut creditor, Stage::Creditor).3, "CREDITOR_ADOPTED");
        assert_eq!(
            of(&mut creditor, Stage::ApiAccess),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "API_ACCESS_VERIFIED"
            )
        );
    }

    #[test]
    fn company_settings_wait_on_billectas_support_until_the_payments_bankgiro_is_approved() {
        let mut record = environment_done();
        let mut waiting = creditor("c1");
        creditor_created(&mut waiting, false, 4);
        company_settings_applied(&mut waiting, false, 5);
        assert_eq!(
            of(&mut waiting, Stage::CompanySettings),
            (
                StageState::ActionRequired,
                BlockedOn::BillectaSupport,
                vec![COMPANY_SETTINGS_BANKGIRO_APPROVAL],
                "AWAITING_BANKGIRO_APPROVAL"
            )
        );
        assert!(
            creditor_stage(&mut waiting, Stage::CompanySettings)
                .message
                .contains("765-4321"),
            "the message names the bankgiro waiting for approval"
        );
        record.creditors.push(waiting.clone());
        assert_eq!(roll_up(&record).0, OnboardingState::ActionRequired);
        assert_eq!(roll_up(&record).1, BlockedOn::BillectaSupport);

        company_settings_applied(&mut waiting, true, 6);
        assert_eq!(
            of(&mut waiting, Stage::CompanySettings),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "COMPANY_SETTINGS_APPLIED"
            )
        );
    }

    #[test]
    fn invoice_settings_say_which_number_billecta_continues_from() {
        let mut creditor = creditor("c1");
        invoice_settings_applied(&mut creditor, Some(1001), 5);
        let stage = creditor_stage(&mut creditor, Stage::InvoiceSettings).clone();
        assert_eq!(
            shown(&stage),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "INVOICE_SETTINGS_APPLIED"
            )
        );
        assert!(stage.message.contains("1001"), "{}", stage.message);
        invoice_settings_applied(&mut creditor, None, 6);
        assert!(
            creditor_stage(&mut creditor, Stage::InvoiceSettings)
                .message
                .contains("left as it is")
        );
    }

    #[test]
    fn a_skipped_stage_keeps_the_reason_given() {
        let mut creditor = creditor("c1");
        stage_skipped(&mut creditor, Stage::InvoiceSettings, "Billecta numbers", 5);
        let stage = creditor_stage(&mut creditor, Stage::InvoiceSettings);
        assert_eq!(
            shown(stage),
            (StageState::Skipped, BlockedOn::Nobody, vec![], "SKIPPED")
        );
        assert_eq!(stage.message, "Skipped: Billecta numbers");
    }

    #[test]
    fn verified_api_access_makes_the_payment_configuration_due_again() {
        let mut creditor = ready_creditor("c1");
        assert_eq!(
            of(&mut creditor, Stage::PaymentConfiguration).0,
            StageState::Completed
        );
        let warnings = ["API_USER_IS_ACCOUNT_USER".to_owned()];
        api_access_verified(&mut creditor, &warnings, true, 8);
        let api_access = creditor_stage(&mut creditor, Stage::ApiAccess).clone();
        assert_eq!(api_access.reason, "API_ACCESS_VERIFIED_WITH_WARNINGS");
        assert!(api_access.message.contains("API_USER_IS_ACCOUNT_USER"));
        assert_eq!(
            of(&mut creditor, Stage::PaymentConfiguration),
            (
                StageState::NotStarted,
                BlockedOn::PaywayOperations,
                vec![PAYMENT_CONFIGURATION_READ],
                "AWAITING_PAYMENT_CONFIGURATION_READ"
            )
        );
        api_access_verified(&mut creditor, &[], true, 9);
        assert_eq!(of(&mut creditor, Stage::ApiAccess).3, "API_ACCESS_VERIFIED");
    }

    #[test]
    fn reading_the_payment_configuration_and_recording_webhooks_complete_their_stages() {
        let mut creditor = creditor("c1");
        payment_configuration_read(&mut creditor, "payway-payments", 5);
        let read = creditor_stage(&mut creditor, Stage::PaymentConfiguration).clone();
        assert_eq!(
            shown(&read),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "PAYMENT_CONFIGURATION_READ"
            )
        );
        assert_eq!(
            read.message,
            "Read by payway-payments after the last credential change."
        );
        webhooks_recorded(&mut creditor, 6);
        assert_eq!(
            of(&mut creditor, Stage::Webhooks),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "WEBHOOKS_RECORDED"
            )
        );
    }

    #[test]
    fn each_failure_kind_sets_its_own_state_whose_move_it_is_and_reason() {
        let expected = [
            (
                FailureKind::Unavailable,
                StageState::InProgress,
                BlockedOn::SystemRetrying,
                "BILLECTA_UNAVAILABLE",
                SYSTEM_RETRY,
            ),
            (
                FailureKind::CredentialsRejected,
                StageState::ActionRequired,
                BlockedOn::Tenant,
                "BILLECTA_CREDENTIALS_REJECTED",
                ACCOUNT_CONFIRM,
            ),
            (
                FailureKind::Refused,
                StageState::Failed,
                BlockedOn::PaywayOperations,
                "BILLECTA_REJECTED",
                CREDITOR_RESTORE,
            ),
            (
                FailureKind::Gone,
                StageState::Broken,
                BlockedOn::PaywayOperations,
                "BILLECTA_NOT_FOUND",
                CREDITOR_RESTORE,
            ),
            (
                FailureKind::Unexpected,
                StageState::Failed,
                BlockedOn::PaywayOperations,
                "BILLECTA_UNEXPECTED_RESPONSE",
                CREDITOR_RESTORE,
            ),
        ];
        for (kind, state, blocked_on, reason, due) in expected {
            let mut stage = StageRecord::waiting(
                Stage::Creditor,
                BlockedOn::PaywayOperations,
                vec![CREDITOR_CREATE.to_owned()],
                "X",
                "",
            );
            billecta_failed(&mut stage, &failure(kind), 10);
            assert_eq!(
                shown(&stage),
                (state, blocked_on, vec![due], reason),
                "{kind:?}: never waiting without saying on what"
            );
            assert!(
                stage.message.contains("HTTP 503"),
                "{kind:?}: the message carries what Billecta said: {}",
                stage.message
            );
            assert_eq!(stage.update_time, Some(10));
        }
    }

    #[test]
    fn only_a_transient_failure_schedules_a_retry() {
        let mut retried = StageRecord::waiting(Stage::Creditor, BlockedOn::Nobody, vec![], "X", "");
        billecta_failed(&mut retried, &failure(FailureKind::Unavailable), 1_000_000);
        assert_eq!(
            (retried.attempts, retried.next_attempt_time),
            (1, Some(6_000_000))
        );
        for kind in [
            FailureKind::CredentialsRejected,
            FailureKind::Refused,
            FailureKind::Gone,
            FailureKind::Unexpected,
        ] {
            let mut stage = retried.clone();
            billecta_failed(&mut stage, &failure(kind), 2_000_000);
            assert_eq!(
                (stage.attempts, stage.next_attempt_time),
                (0, None),
                "{kind:?} waits for a person, not for the reconciler"
            );
        }
    }

    #[test]
    fn a_failure_releases_the_stages_lease_and_other_changes_keep_it() {
        let lease = Lease {
            owner: "call-1".into(),
            expire_time: 99,
        };
        let mut stage = StageRecord::waiting(Stage::Creditor, BlockedOn::Nobody, vec![], "X", "");
        stage.lease = Some(lease.clone());
        broken(
            &mut stage,
            "TOKEN_REJECTED",
            "the token no longer signs in",
            5,
        );
        assert_eq!(
            stage.lease,
            Some(lease),
            "only the lease's holder lets it go"
        );
        billecta_failed(&mut stage, &failure(FailureKind::Refused), 6);
        assert_eq!(stage.lease, None);
    }

    #[test]
    fn a_broken_stage_is_repaired_by_a_live_check() {
        let mut stage = StageRecord::waiting(Stage::ApiAccess, BlockedOn::Nobody, vec![], "X", "");
        broken(
            &mut stage,
            "API_TOKEN_REJECTED",
            "Billecta refused the API token",
            5,
        );
        assert_eq!(
            shown(&stage),
            (
                StageState::Broken,
                BlockedOn::PaywayOperations,
                vec![API_ACCESS_REGISTER],
                "API_TOKEN_REJECTED"
            )
        );
        assert_eq!(stage.message, "Billecta refused the API token");
        repaired(&mut stage, 6);
        assert_eq!(
            shown(&stage),
            (
                StageState::Completed,
                BlockedOn::Nobody,
                vec![],
                "REVALIDATED"
            )
        );
    }

    #[test]
    fn ready_needs_every_required_stage_completed_and_never_waits_for_untouched_optional_ones() {
        let mut record = environment_done();
        record.creditors.push(ready_creditor("c1"));
        record.refresh();
        assert_eq!(
            (record.state, record.blocked_on),
            (OnboardingState::Ready, BlockedOn::Nobody)
        );
        assert!(record.next_due().is_empty());

        // An optional stage someone started holds READY back until it is done.
        let creditor = &mut record.creditors[0];
        creditor_stage(creditor, Stage::InvoiceSettings).set(
            StageState::InProgress,
            BlockedOn::Nobody,
            vec![],
            "APPLYING",
            "",
            8,
        );
        record.refresh();
        assert_eq!(record.state, OnboardingState::InProgress);

        let creditor = &mut record.creditors[0];
        invoice_settings_applied(creditor, None, 9);
        creditor_stage(creditor, Stage::PaymentConfiguration).set(
            StageState::NotStarted,
            BlockedOn::PaywayOperations,
            vec![PAYMENT_CONFIGURATION_READ.to_owned()],
            "AWAITING_PAYMENT_CONFIGURATION_READ",
            "",
            10,
        );
        record.refresh();
        assert_eq!(
            (record.state, record.blocked_on),
            (OnboardingState::ActionRequired, BlockedOn::PaywayOperations)
        );
    }

    #[test]
    fn each_creditors_first_unfinished_stage_is_due_and_named_by_its_creditor() {
        let mut record = environment_done();
        let mut first = creditor("c1");
        creditor_created(&mut first, false, 4);
        let mut second = creditor("c2");
        creditor_created(&mut second, false, 4);
        company_settings_applied(&mut second, false, 5);
        record.creditors = vec![first, second];
        assert_eq!(
            due_items(&record),
            vec![
                (
                    COMPANY_SETTINGS_UPDATE.to_owned(),
                    Stage::CompanySettings,
                    Some("tenants/gp/environments/test/creditors/c1".to_owned()),
                    BlockedOn::PaywayOperations
                ),
                (
                    COMPANY_SETTINGS_BANKGIRO_APPROVAL.to_owned(),
                    Stage::CompanySettings,
                    Some("tenants/gp/environments/test/creditors/c2".to_owned()),
                    BlockedOn::BillectaSupport
                ),
            ]
        );
        assert_eq!(
            roll_up(&record).1,
            BlockedOn::PaywayOperations,
            "the first creditor's next step decides whose move it is"
        );
    }

    #[test]
    fn the_environment_is_due_before_any_creditor() {
        let mut record = record(Environment::Test);
        agreement_recorded(&mut record, 1);
        record.creditors.push(ready_creditor("c1"));
        let due = due_items(&record);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, Stage::Account);
    }

    #[test]
    fn broken_outranks_failed_which_outranks_waiting_and_retrying_is_in_progress() {
        let mut record = environment_done();
        let mut creditor = ready_creditor("c1");
        billecta_failed(
            creditor_stage(&mut creditor, Stage::CompanySettings),
            &failure(FailureKind::Unavailable),
            8,
        );
        record.creditors.push(creditor);
        assert_eq!(roll_up(&record).0, OnboardingState::InProgress);
        assert_eq!(roll_up(&record).1, BlockedOn::SystemRetrying);

        billecta_failed(
            creditor_stage(&mut record.creditors[0], Stage::InvoiceSettings),
            &failure(FailureKind::Refused),
            9,
        );
        assert_eq!(roll_up(&record).0, OnboardingState::Failed);

        broken(
            creditor_stage(&mut record.creditors[0], Stage::ApiAccess),
            "API_TOKEN_REJECTED",
            "",
            10,
        );
        assert_eq!(roll_up(&record).0, OnboardingState::Broken);
    }

    #[test]
    fn every_due_item_says_who_acts() {
        let expected = [
            (AGREEMENT_RECORD, BlockedOn::PaywayOperations),
            (ACCOUNT_REGISTER, BlockedOn::PaywayOperations),
            (ACCOUNT_CREATE, BlockedOn::Tenant),
            (ACCOUNT_ACTIVATE, BlockedOn::Tenant),
            (ACCOUNT_ACCEPT_TERMS, BlockedOn::Tenant),
            (ACCOUNT_CHANGE_PASSWORD, BlockedOn::Tenant),
            (ACCOUNT_CONFIRM, BlockedOn::Tenant),
            (CREDITOR_CREATE, BlockedOn::PaywayOperations),
            (COMPANY_SETTINGS_UPDATE, BlockedOn::PaywayOperations),
            (
                COMPANY_SETTINGS_BANKGIRO_APPROVAL,
                BlockedOn::BillectaSupport,
            ),
            (INVOICE_SETTINGS_UPDATE, BlockedOn::PaywayOperations),
            (API_ACCESS_REGISTER, BlockedOn::PaywayOperations),
            (PAYMENT_CONFIGURATION_READ, BlockedOn::PaywayOperations),
            (WEBHOOKS_RECORD, BlockedOn::Tenant),
        ];
        for (item, from) in expected {
            let (blocked_on, description) = describe_due(item, Environment::Test);
            assert_eq!(blocked_on, from, "{item}");
            assert!(!description.is_empty(), "{item}");
        }
        let (blocked_on, description) = describe_due("made.up", Environment::Test);
        assert_eq!(
            (blocked_on, description.as_str()),
            (BlockedOn::PaywayOperations, "Do made.up.")
        );
        let production = describe_due(ACCOUNT_CREATE, Environment::Production).1;
        assert!(
            production.contains("https://app.billecta.com"),
            "{production}"
        );
    }
}
