//! One tenant's way from nothing to READY in the test environment, driven over gRPC the way Payway's
//! tooling would drive it — every call with a request_id, retried with the same one after anything
//! transient (Billecta down, a replica killed, the database away) — with the simulator playing the
//! people in Billecta's portal. Afterwards, [`audit`] checks what the service recorded.

use billecta_onboarding::domain::swedish::luhn_check_digit;
use billecta_onboarding::proto;
use billecta_onboarding::proto::onboarding_service_client::OnboardingServiceClient;
use billecta_onboarding::proto::payment_configuration_service_client::PaymentConfigurationServiceClient;
use billecta_sim::{NewAccount, RunningSimulator};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Adds the drill's API key to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(key: &str) -> Self {
        Self(format!("Bearer {key}").parse().expect("an ASCII key"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Onboardings = OnboardingServiceClient<InterceptedService<Channel, Bearer>>;
type Payments = PaymentConfigurationServiceClient<InterceptedService<Channel, Bearer>>;

/// The clients of one replica.
#[derive(Clone)]
pub struct Clients {
    pub onboardings: Onboardings,
    pub payments: Payments,
}

impl Clients {
    pub fn new(channel: Channel, key: &str) -> Self {
        Self {
            onboardings: OnboardingServiceClient::with_interceptor(
                channel.clone(),
                Bearer::new(key),
            ),
            payments: PaymentConfigurationServiceClient::with_interceptor(
                channel,
                Bearer::new(key),
            ),
        }
    }
}

/// One failed attempt, for the report.
#[derive(Debug, Clone)]
pub struct FailedCall {
    /// Since the drill started.
    pub at: Duration,
    pub took: Duration,
    pub code: Code,
    /// The ErrorInfo reason, or empty.
    pub reason: String,
}

/// What the drivers saw, shared by all of them.
#[derive(Default)]
pub struct CallLog {
    pub calls: AtomicU64,
    pub retries: AtomicU64,
    pub failures: Mutex<Vec<FailedCall>>,
}

/// The tenant's data: unique, valid, and the same every time for the same index.
#[derive(Debug, Clone)]
pub struct TenantPlan {
    pub tenant: String,
    pub email: String,
    pub password: String,
    pub organisation_number: String,
    pub bankgiro_invoicing: String,
    pub bankgiro_payments: String,
}

/// `prefix` followed by `number` in `width` digits and the Luhn check digit.
fn with_check_digit(prefix: &str, number: usize, width: usize) -> String {
    let body = format!("{prefix}{number:0width$}");
    let digits: Vec<u8> = body.bytes().map(|byte| byte - b'0').collect();
    format!("{body}{}", luhn_check_digit(&digits))
}

impl TenantPlan {
    /// The `index`th tenant of the run `run` (a short lower-case tag that keeps runs apart).
    pub fn new(run: &str, index: usize) -> Self {
        let organisation = with_check_digit("556", index, 6);
        let invoicing = with_check_digit("50", index % 100_000, 5);
        let payments = with_check_digit("54", index % 100_000, 5);
        Self {
            tenant: format!("drill-{run}-{index:05}"),
            email: format!("billing+{run}-{index:05}@drill.payway.example"),
            password: format!("Drill-{run}-{index:05}-lösen"),
            organisation_number: format!("{}-{}", &organisation[..6], &organisation[6..]),
            bankgiro_invoicing: format!("{}-{}", &invoicing[..4], &invoicing[4..]),
            bankgiro_payments: format!("{}-{}", &payments[..4], &payments[4..]),
        }
    }

    pub fn onboarding(&self) -> String {
        format!("tenants/{}/environments/test", self.tenant)
    }
}

/// The people's steps for one tenant (account in the portal, bankgiro approved by support), done
/// once however many journeys of the tenant run.
#[derive(Default)]
pub struct Portal {
    account: tokio::sync::OnceCell<()>,
    approval: tokio::sync::OnceCell<()>,
}

/// Drives tenants; one per drill, shared by its tasks.
pub struct Driver<'a> {
    pub replicas: Vec<Clients>,
    pub simulator: &'a RunningSimulator,
    pub log: &'a CallLog,
    pub started: Instant,
    /// How long one tenant may take before the drill gives up on it.
    pub patience: Duration,
    next_replica: AtomicUsize,
}

/// How a call ended for the journey.
enum Answer<T> {
    Done(T),
    /// ALREADY_EXISTS or STAGE_ALREADY_COMPLETED: the work was done, by an earlier attempt, another
    /// caller or the reconciler.
    AlreadyDone,
}

/// The ErrorInfo reason of a refusal, or empty.
fn failure_reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// Codes after which the same request is sent again: nothing was done, or what was done is
/// replayed by the request_id.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Cancelled
    )
}

impl<'a> Driver<'a> {
    pub fn new(
        replicas: Vec<Clients>,
        simulator: &'a RunningSimulator,
        log: &'a CallLog,
        started: Instant,
        patience: Duration,
    ) -> Self {
        Self {
            replicas,
            simulator,
            log,
            started,
            patience,
            next_replica: AtomicUsize::new(0),
        }
    }

    /// The clients of replica `pinned`, or of the next replica: calls go round the replicas, so one
    /// tenant's calls are served by all of them.
    fn clients(&self, pinned: Option<usize>) -> Clients {
        let index = pinned.unwrap_or_else(|| self.next_replica.fetch_add(1, Ordering::Relaxed))
            % self.replicas.len();
        self.replicas[index].clone()
    }

    /// Sends one request until it is answered, retrying transient refusals after the server's
    /// RetryInfo delay (or a capped, jittered backoff). `request_ids` collects the request_id of each
    /// call that succeeded, for the audit.
    async fn call<T, F, Fut>(
        &self,
        pinned: Option<usize>,
        deadline: Instant,
        what: &str,
        already_done_ok: bool,
        mut send: F,
    ) -> Result<Answer<T>, String>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt: u32 = 0;
        loop {
            self.log.calls.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let status = match send(self.clients(pinned)).await {
                Ok(response) => return Ok(Answer::Done(response.into_inner())),
                Err(status) => status,
            };
            let reason = failure_reason(&status);
            self.log
                .failures
                .lock()
                .expect("call log")
                .push(FailedCall {
                    at: sent.duration_since(self.started),
                    took: sent.elapsed(),
                    code: status.code(),
                    reason,
                });
            // Another caller (or the reconciler) got there first: the work is done.
            let done_by_another = status.code() == Code::AlreadyExists
                || (status.code() == Code::FailedPrecondition
                    && failure_reason(&status) == "STAGE_ALREADY_COMPLETED");
            if already_done_ok && done_by_another {
                return Ok(Answer::AlreadyDone);
            }
            if !retryable(status.code()) {
                return Err(format!("{what}: {:?} {}", status.code(), status.message()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: still {:?} after {attempt} retries: {}",
                    status.code(),
                    status.message()
                ));
            }
            attempt += 1;
            self.log.retries.fetch_add(1, Ordering::Relaxed);
            let hinted = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay);
            let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(5)));
            let jitter = Duration::from_millis(
                u64::try_from(uuid::Uuid::new_v4().as_u128() % 200).expect("below 200"),
            );
            let wait = hinted.unwrap_or(backoff).min(Duration::from_secs(5)) + jitter;
            tokio::time::sleep(wait).await;
        }
    }

    /// The tenant's whole journey, its calls sent to replica `pinned` (or round the replicas);
    /// returns the request_ids of the calls that succeeded. Several journeys of one tenant may run
    /// at once: `portal` makes sure the people's steps happen once.
    pub async fn journey(
        &self,
        plan: &TenantPlan,
        portal: &Portal,
        pinned: Option<usize>,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + self.patience;
        let name = plan.onboarding();
        let mut succeeded = Vec::new();
        let request_id = |method: &str| format!("{}-{method}", uuid::Uuid::new_v4());

        let id = request_id("create");
        let answer = self
            .call(pinned, deadline, "CreateOnboarding", true, |mut clients| {
                let request = proto::CreateOnboardingRequest {
                    tenant: plan.tenant.clone(),
                    environment: proto::Environment::Test.into(),
                    request_id: id.clone(),
                    ..Default::default()
                };
                async move { clients.onboardings.create_onboarding(request).await }
            })
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        let id = request_id("agreement");
        let answer = self
            .call(pinned, deadline, "RecordAgreement", true, |mut clients| {
                let request = proto::RecordAgreementRequest {
                    name: name.clone(),
                    attested_by: "drill@payway.example".into(),
                    agreement_time: Some(prost_types::Timestamp {
                        seconds: 1_767_225_600,
                        nanos: 0,
                    }),
                    reference: format!("DRILL-{}", plan.tenant),
                    request_id: id.clone(),
                    ..Default::default()
                };
                async move { clients.onboardings.record_agreement(request).await }
            })
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        let id = request_id("account");
        let answer = self
            .call(pinned, deadline, "RegisterAccount", true, |mut clients| {
                let request = proto::RegisterAccountRequest {
                    name: name.clone(),
                    account: Some(proto::Account {
                        full_name: "Payway Billing".into(),
                        company_name: format!("Drill {} AB", plan.tenant),
                        email: plan.email.clone(),
                        ..Default::default()
                    }),
                    request_id: id.clone(),
                    ..Default::default()
                };
                async move { clients.onboardings.register_account(request).await }
            })
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        // The person creates and activates the account in Billecta's portal.
        portal
            .account
            .get_or_try_init(|| async {
                let account = self
                    .simulator
                    .create_account(NewAccount {
                        name: "Payway Billing".into(),
                        company_name: format!("Drill {} AB", plan.tenant),
                        email: plan.email.clone(),
                        password: "initial-from-the-activation-email".into(),
                    })
                    .map_err(|error| format!("portal: {error:?}"))?;
                self.simulator
                    .activate_account(account.account_id, &plan.password)
                    .map_err(|error| format!("portal: {error:?}"))
            })
            .await?;

        let id = request_id("confirm");
        let answer = self
            .call(
                pinned,
                deadline,
                "ConfirmAccountActivation",
                true,
                |mut clients| {
                    let request = proto::ConfirmAccountActivationRequest {
                        name: name.clone(),
                        username: plan.email.clone(),
                        password: plan.password.clone(),
                        request_id: id.clone(),
                        ..Default::default()
                    };
                    async move {
                        clients
                            .onboardings
                            .confirm_account_activation(request)
                            .await
                    }
                },
            )
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        let id = request_id("creditor");
        let answer = self
            .call(pinned, deadline, "CreateCreditor", true, |mut clients| {
                let request = proto::CreateCreditorRequest {
                    parent: name.clone(),
                    organisation_number: plan.organisation_number.clone(),
                    company_name: format!("Drill {} AB", plan.tenant),
                    title: "Drill Tidning".into(),
                    request_id: id.clone(),
                    ..Default::default()
                };
                async move { clients.onboardings.create_creditor(request).await }
            })
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }
        let creditor = self.creditor(pinned, deadline, &name).await?;

        let settings = proto::CompanySettings {
            address: "Drillgatan 1".into(),
            zip_code: "411 11".into(),
            city: "Göteborg".into(),
            bankgiro_invoicing: plan.bankgiro_invoicing.clone(),
            bankgiro_payments: plan.bankgiro_payments.clone(),
            ..Default::default()
        };
        let id = request_id("company");
        if self
            .update_company_settings(pinned, deadline, &creditor.name, Some(settings), id.clone())
            .await?
        {
            succeeded.push(id);
        }
        // Billecta's support approves the bankgiro for payments; the settings are applied again.
        let public_id = creditor
            .creditor_public_id
            .parse()
            .map_err(|_| format!("creditor {} has no CreditorPublicId", creditor.name))?;
        portal
            .approval
            .get_or_try_init(|| async {
                self.simulator
                    .approve_outgoing_bankgiro(public_id, &plan.bankgiro_payments)
                    .map_err(|error| format!("support: {error:?}"))
            })
            .await?;
        let id = request_id("company-approved");
        if self
            .update_company_settings(pinned, deadline, &creditor.name, None, id.clone())
            .await?
        {
            succeeded.push(id);
        }

        let id = request_id("invoice");
        let answer = self
            .call(
                pinned,
                deadline,
                "UpdateInvoiceSettings",
                true,
                |mut clients| {
                    let request = proto::UpdateInvoiceSettingsRequest {
                        name: creditor.name.clone(),
                        invoice_settings: Some(proto::InvoiceSettings {
                            next_invoice_number: 1001,
                            payment_terms: None,
                        }),
                        request_id: id.clone(),
                        ..Default::default()
                    };
                    async move { clients.onboardings.update_invoice_settings(request).await }
                },
            )
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        // In test the account's one user is the API user.
        let id = request_id("api");
        let answer = self
            .call(
                pinned,
                deadline,
                "RegisterApiCredentials",
                true,
                |mut clients| {
                    let request = proto::RegisterApiCredentialsRequest {
                        name: creditor.name.clone(),
                        username: plan.email.clone(),
                        password: plan.password.clone(),
                        request_id: id.clone(),
                        ..Default::default()
                    };
                    async move { clients.onboardings.register_api_credentials(request).await }
                },
            )
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        let id = request_id("skip-webhooks");
        let answer = self
            .call(pinned, deadline, "SkipStage", true, |mut clients| {
                let request = proto::SkipStageRequest {
                    name: creditor.name.clone(),
                    stage: proto::Stage::Webhooks.into(),
                    reason: "drill: webhooks are not used".into(),
                    request_id: id.clone(),
                    ..Default::default()
                };
                async move { clients.onboardings.skip_stage(request).await }
            })
            .await?;
        if let Answer::Done(_) = answer {
            succeeded.push(id);
        }

        self.call(
            pinned,
            deadline,
            "GetPaymentConfiguration",
            true,
            |mut clients| {
                let request = proto::GetPaymentConfigurationRequest {
                    name: creditor.name.clone(),
                };
                async move { clients.payments.get_payment_configuration(request).await }
            },
        )
        .await?;
        Ok(succeeded)
    }

    /// UpdateCompanySettings, answered; `false` when another caller had done it.
    async fn update_company_settings(
        &self,
        pinned: Option<usize>,
        deadline: Instant,
        creditor: &str,
        settings: Option<proto::CompanySettings>,
        request_id: String,
    ) -> Result<bool, String> {
        self.call(
            pinned,
            deadline,
            "UpdateCompanySettings",
            true,
            |mut clients| {
                let request = proto::UpdateCompanySettingsRequest {
                    name: creditor.to_owned(),
                    company_settings: settings.clone(),
                    request_id: request_id.clone(),
                    ..Default::default()
                };
                async move { clients.onboardings.update_company_settings(request).await }
            },
        )
        .await
        .map(|answer| matches!(answer, Answer::Done(_)))
    }

    /// The onboarding `name`, read until answered.
    pub async fn onboarding(
        &self,
        deadline: Instant,
        name: &str,
    ) -> Result<proto::Onboarding, String> {
        self.onboarding_via(None, deadline, name).await
    }

    async fn onboarding_via(
        &self,
        pinned: Option<usize>,
        deadline: Instant,
        name: &str,
    ) -> Result<proto::Onboarding, String> {
        match self
            .call(pinned, deadline, "GetOnboarding", false, |mut clients| {
                let request = proto::GetOnboardingRequest {
                    name: name.to_owned(),
                };
                async move { clients.onboardings.get_onboarding(request).await }
            })
            .await?
        {
            Answer::Done(response) => response
                .onboarding
                .ok_or_else(|| format!("GetOnboarding of {name} answered without the onboarding")),
            Answer::AlreadyDone => unreachable!("ALREADY_EXISTS is not accepted here"),
        }
    }

    /// The creditor of the onboarding `name` (the drill creates one).
    async fn creditor(
        &self,
        pinned: Option<usize>,
        deadline: Instant,
        name: &str,
    ) -> Result<proto::Creditor, String> {
        self.onboarding_via(pinned, deadline, name)
            .await?
            .creditors
            .into_iter()
            .next()
            .ok_or_else(|| format!("{name} has no creditor after CreateCreditor"))
    }

    /// Every event of the onboarding `name`, in order.
    pub async fn events(
        &self,
        deadline: Instant,
        name: &str,
    ) -> Result<Vec<proto::OnboardingEvent>, String> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .call(
                    None,
                    deadline,
                    "ListOnboardingEvents",
                    false,
                    |mut clients| {
                        let request = proto::ListOnboardingEventsRequest {
                            name: name.to_owned(),
                            page_size: 1000,
                            page_token: page_token.clone(),
                        };
                        async move { clients.onboardings.list_onboarding_events(request).await }
                    },
                )
                .await?;
            let Answer::Done(page) = page else {
                unreachable!("ALREADY_EXISTS is not accepted here")
            };
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return Ok(events);
            }
            page_token = page.next_page_token;
        }
    }
}

/// What the audit of one tenant found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TenantAudit {
    pub ready: bool,
    pub events: usize,
    /// Event numbers missing from 1..=n, or out of order.
    pub gaps: usize,
    /// Stages whose state is not the one the trail's last transition for it says.
    pub unexplained_stages: Vec<String>,
    /// Successful calls whose request_id has no OK event.
    pub calls_without_event: usize,
    /// Events recorded by the reconciler that completed a stage.
    pub completed_by_reconciler: usize,
}

/// Checks the trail of `onboarding` against its state and the calls that succeeded.
pub fn audit(
    onboarding: &proto::Onboarding,
    events: &[proto::OnboardingEvent],
    succeeded_request_ids: &[String],
) -> TenantAudit {
    let mut audit = TenantAudit {
        ready: onboarding.state == proto::OnboardingState::Ready as i32,
        events: events.len(),
        ..TenantAudit::default()
    };
    for (expected, event) in (1..).zip(events) {
        let number = event
            .name
            .rsplit('/')
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        if number != Some(expected) {
            audit.gaps += 1;
        }
    }
    // The trail's word on each stage: the last transition's target.
    let mut last: HashMap<(String, i32), i32> = HashMap::new();
    for event in events {
        for transition in &event.transitions {
            last.insert(
                (transition.creditor.clone(), transition.stage),
                transition.to_state,
            );
        }
        if event.actor == billecta_onboarding::operations::RECONCILER
            && event
                .transitions
                .iter()
                .any(|t| t.to_state == proto::StageState::Completed as i32)
        {
            audit.completed_by_reconciler += 1;
        }
    }
    let stages = onboarding
        .stages
        .iter()
        .map(|status| (String::new(), status))
        .chain(onboarding.creditors.iter().flat_map(|creditor| {
            creditor
                .stages
                .iter()
                .map(|status| (creditor.name.clone(), status))
        }));
    for (creditor, status) in stages {
        let said = last.get(&(creditor.clone(), status.stage)).copied();
        // A stage never touched keeps its first state and needs no transition.
        let untouched = said.is_none()
            && matches!(
                proto::StageState::try_from(status.state),
                Ok(proto::StageState::NotStarted | proto::StageState::ActionRequired)
            );
        if !untouched && said != Some(status.state) {
            audit.unexplained_stages.push(format!(
                "{creditor}/{:?}: now {:?}, trail says {:?}",
                proto::Stage::try_from(status.stage),
                proto::StageState::try_from(status.state),
                said.map(proto::StageState::try_from)
            ));
        }
    }
    let recorded: std::collections::HashSet<&str> = events
        .iter()
        .filter(|event| event.outcome == "OK")
        .map(|event| event.request_id.as_str())
        .collect();
    audit.calls_without_event = succeeded_request_ids
        .iter()
        .filter(|id| !recorded.contains(id.as_str()))
        .count();
    audit
}

/// Failed calls by code and reason, for the report.
pub fn failures_by_kind(failures: &[FailedCall]) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    for failure in failures {
        let key = if failure.reason.is_empty() {
            format!("{:?}", failure.code)
        } else {
            format!("{:?} {}", failure.code, failure.reason)
        };
        *kinds.entry(key).or_insert(0) += 1;
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        n: u64,
        request_id: &str,
        transitions: Vec<proto::StageTransition>,
    ) -> proto::OnboardingEvent {
        proto::OnboardingEvent {
            name: format!("tenants/t/environments/test/events/{n}"),
            actor: "drill".into(),
            request_id: request_id.into(),
            outcome: "OK".into(),
            transitions,
            ..Default::default()
        }
    }

    fn to(stage: proto::Stage, state: proto::StageState) -> proto::StageTransition {
        proto::StageTransition {
            stage: stage.into(),
            from_state: proto::StageState::NotStarted.into(),
            to_state: state.into(),
            ..Default::default()
        }
    }

    fn onboarding(agreement: proto::StageState) -> proto::Onboarding {
        proto::Onboarding {
            stages: vec![
                proto::StageStatus {
                    stage: proto::Stage::Agreement.into(),
                    state: agreement.into(),
                    ..Default::default()
                },
                proto::StageStatus {
                    stage: proto::Stage::Account.into(),
                    state: proto::StageState::NotStarted.into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_whole_trail_passes() {
        let events = [event(
            1,
            "a",
            vec![to(proto::Stage::Agreement, proto::StageState::Completed)],
        )];
        let audit = audit(
            &onboarding(proto::StageState::Completed),
            &events,
            &["a".to_owned()],
        );
        assert_eq!((audit.gaps, audit.calls_without_event), (0, 0));
        assert!(audit.unexplained_stages.is_empty());
    }

    #[test]
    fn gaps_unexplained_states_and_unrecorded_calls_are_found() {
        let events = [
            event(1, "a", vec![]),
            event(
                3,
                "b",
                vec![to(proto::Stage::Agreement, proto::StageState::InProgress)],
            ),
        ];
        let audit = audit(
            &onboarding(proto::StageState::Completed),
            &events,
            &["a".to_owned(), "c".to_owned()],
        );
        assert_eq!(audit.gaps, 1, "event 2 is missing");
        assert_eq!(audit.unexplained_stages.len(), 1, "{audit:?}");
        assert_eq!(audit.calls_without_event, 1, "call c has no event");
    }

    #[test]
    fn tenant_data_is_valid_and_distinct() {
        use billecta_onboarding::domain::swedish::{Bankgiro, OrganisationNumber};
        let plans: Vec<_> = (0..200).map(|index| TenantPlan::new("t1", index)).collect();
        for plan in &plans {
            OrganisationNumber::parse("o", &plan.organisation_number).unwrap();
            Bankgiro::parse("b", &plan.bankgiro_invoicing).unwrap();
            Bankgiro::parse("b", &plan.bankgiro_payments).unwrap();
            billecta_onboarding::domain::validate::TenantId::parse("t", &plan.tenant).unwrap();
        }
        let numbers: std::collections::HashSet<_> =
            plans.iter().map(|plan| &plan.organisation_number).collect();
        assert_eq!(numbers.len(), plans.len());
    }
}
