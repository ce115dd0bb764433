//! The gRPC transport: parses requests into domain values (every bad field reported at once),
//! calls [`Operations`], and converts records and errors to API messages.

pub mod call;
pub mod convert;
mod mutating;
mod provisioning;

pub use provisioning::PaymentConfigurationApi;
pub mod status;
mod tokens;

use crate::auth::{Caller, Permission};
use crate::bounded::Bounded;
use crate::domain::Environment;
use crate::domain::onboarding::OnboardingRecord;
use crate::domain::validate::{CreditorKey, FieldViolation, OnboardingKey, TenantId, Violations};
use crate::error::Error;
use crate::operations::{CallContext, ListFilter, Operations};
use crate::proto;
use crate::proto::onboarding_service_server::OnboardingService;
use call::CorrelationId;
use mutating::mutating;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The `OnboardingService` implementation.
#[derive(Clone)]
pub struct OnboardingApi {
    operations: Operations,
    /// Cancelled when the server drains: open watch streams end so shutdown is not held up.
    shutdown: CancellationToken,
    watch_poll_interval: Duration,
    /// One permit per open WatchOnboarding stream.
    watch_streams: Arc<Semaphore>,
    max_watch_streams: usize,
    answers: Arc<Answers>,
}

impl OnboardingApi {
    /// `cached_onboardings` bounds the converted answers kept, as it bounds the onboardings the
    /// store keeps.
    pub fn new(
        operations: Operations,
        shutdown: CancellationToken,
        watch_poll_interval: Duration,
        max_watch_streams: usize,
        cached_onboardings: usize,
    ) -> Self {
        Self {
            operations,
            shutdown,
            watch_poll_interval,
            watch_streams: Arc::new(Semaphore::new(max_watch_streams)),
            max_watch_streams,
            answers: Arc::new(Answers(Bounded::new(cached_onboardings))),
        }
    }
}

/// Onboardings as answers, converted once per record: reads of an unchanged onboarding share one
/// record (see `storage::cache`), and an answer is reused only for the very record it was made
/// from. The record is held weakly — its allocation, not its contents — so that no other record
/// can take its address while the answer is kept.
struct Answers(Bounded<(Weak<OnboardingRecord>, Arc<proto::Onboarding>)>);

impl Answers {
    fn onboarding(&self, record: &Arc<OnboardingRecord>) -> proto::Onboarding {
        let same = |(from, _): &(Weak<OnboardingRecord>, _)| {
            std::ptr::eq(from.as_ptr(), Arc::as_ptr(record))
        };
        if let Some((_, answer)) = self.0.get(&record.id, same) {
            return proto::Onboarding::clone(&answer);
        }
        let answer = convert::onboarding(record);
        let kept = (Arc::downgrade(record), Arc::new(answer.clone()));
        self.0.put(&record.id, kept, |_| false);
        answer
    }
}

/// Who is calling and under which correlation id.
fn call_context<T>(request: &Request<T>) -> CallContext {
    let correlation_id = request
        .extensions()
        .get::<CorrelationId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    // The caller the call layer authenticated; every RPC but health has one.
    let actor = request
        .extensions()
        .get::<Arc<Caller>>()
        .map_or_else(|| "anonymous".to_owned(), |caller| caller.name.clone());
    CallContext {
        actor,
        correlation_id,
    }
}

/// The authenticated caller, if it holds `permission` (checked before anything else, so that a
/// refusal says nothing about the request).
fn permitted<T>(request: &Request<T>, permission: Permission) -> Result<Arc<Caller>, Status> {
    let caller = request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated {
            message: "a credential is required".to_owned(),
        })?;
    caller.authorize(permission, None).map_err(Error::from)?;
    Ok(caller)
}

/// Refuses a tenant outside the caller's, before the resource is looked up: whether it exists is
/// not given away.
/// The call's tenant and environment go on its span here, once, for logs and traces.
fn within(caller: &Caller, permission: Permission, scope: &impl Scope) -> Result<(), Status> {
    caller
        .authorize(permission, Some(scope.tenant()))
        .map_err(Error::from)?;
    let span = tracing::Span::current();
    span.record("tenant", scope.tenant().as_str());
    if let Some(environment) = scope.environment() {
        span.record("environment", environment.as_str());
    }
    Ok(())
}

/// What a request names, as far as it parsed.
trait Scope {
    fn tenant(&self) -> &TenantId;
    fn environment(&self) -> Option<Environment>;
}

impl Scope for OnboardingKey {
    fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    fn environment(&self) -> Option<Environment> {
        Some(self.environment)
    }
}

impl Scope for CreditorKey {
    fn tenant(&self) -> &TenantId {
        &self.onboarding.tenant
    }
    fn environment(&self) -> Option<Environment> {
        Some(self.onboarding.environment)
    }
}

/// A tenant, and the environment if it parsed (CreateOnboarding).
impl Scope for (TenantId, Option<Environment>) {
    fn tenant(&self) -> &TenantId {
        &self.0
    }
    fn environment(&self) -> Option<Environment> {
        self.1
    }
}

/// Unwraps values that [`Violations::finish`] has vouched for.
fn checked<T>(value: Option<T>) -> T {
    value.expect("every field was checked before use")
}

#[derive(Serialize, Deserialize)]
struct OnboardingsPage {
    /// The last onboarding of the previous page.
    tenant: String,
    environment: String,
    /// The filter the token was issued for.
    filter: String,
}

#[derive(Serialize, Deserialize)]
struct EventsPage {
    onboarding: String,
    after: i64,
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<proto::WatchOnboardingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl OnboardingService for OnboardingApi {
    async fn create_onboarding(
        &self,
        request: Request<proto::CreateOnboardingRequest>,
    ) -> Result<Response<proto::CreateOnboardingResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn get_onboarding(
        &self,
        request: Request<proto::GetOnboardingRequest>,
    ) -> Result<Response<proto::GetOnboardingResponse>, Status> {
        let caller = permitted(&request, Permission::Read)?;
        let key =
            OnboardingKey::parse_name("name", &request.get_ref().name).map_err(Error::from)?;
        within(&caller, Permission::Read, &key)?;
        let record = self.operations.get_onboarding(&key).await?;
        Ok(Response::new(proto::GetOnboardingResponse {
            onboarding: Some(self.answers.onboarding(&record)),
        }))
    }

    async fn list_onboardings(
        &self,
        request: Request<proto::ListOnboardingsRequest>,
    ) -> Result<Response<proto::ListOnboardingsResponse>, Status> {
        let caller = permitted(&request, Permission::Read)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let environment = violations.check(convert::parse_filter(
            "environment",
            request.environment,
            convert::environment_from,
        ));
        let state = violations.check(convert::parse_filter(
            "state",
            request.state,
            convert::onboarding_state_from,
        ));
        let blocked_on = violations.check(convert::parse_filter(
            "blocked_on",
            request.blocked_on,
            convert::blocked_on_from,
        ));
        let page_size =
            violations.check(tokens::page_size("page_size", request.page_size, 50, 500));
        let page = violations.check(tokens::decode::<OnboardingsPage>(
            "page_token",
            &request.page_token,
        ));
        violations.finish().map_err(Error::from)?;
        let filter = ListFilter {
            environment: checked(environment),
            state: checked(state),
            blocked_on: checked(blocked_on),
            // A caller limited to some tenants sees only theirs.
            tenants: caller.tenants.clone(),
        };
        let filter_text = format!(
            "{:?}",
            (
                filter.environment,
                filter.state,
                filter.blocked_on,
                &filter.tenants
            )
        );
        let page = checked(page);
        if page.as_ref().is_some_and(|page| page.filter != filter_text) {
            return Err(Error::from(FieldViolation::new(
                "page_token",
                "was issued for a different filter",
            ))
            .into());
        }
        let limit = checked(page_size);
        let after = page
            .as_ref()
            .map(|page| (page.tenant.as_str(), page.environment.as_str()));
        let mut records = self
            .operations
            .list_onboardings(&filter, after, limit + 1)
            .await?;
        let more = records.len() as i64 > limit;
        records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match records.last() {
            Some(last) if more => tokens::encode(&OnboardingsPage {
                tenant: last.tenant.clone(),
                environment: last.environment.as_str().to_owned(),
                filter: filter_text,
            }),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListOnboardingsResponse {
            onboardings: records.iter().map(convert::onboarding).collect(),
            next_page_token,
        }))
    }

    async fn record_agreement(
        &self,
        request: Request<proto::RecordAgreementRequest>,
    ) -> Result<Response<proto::RecordAgreementResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn register_account(
        &self,
        request: Request<proto::RegisterAccountRequest>,
    ) -> Result<Response<proto::RegisterAccountResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn confirm_account_activation(
        &self,
        request: Request<proto::ConfirmAccountActivationRequest>,
    ) -> Result<Response<proto::ConfirmAccountActivationResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn create_creditor(
        &self,
        request: Request<proto::CreateCreditorRequest>,
    ) -> Result<Response<proto::CreateCreditorResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn update_company_settings(
        &self,
        request: Request<proto::UpdateCompanySettingsRequest>,
    ) -> Result<Response<proto::UpdateCompanySettingsResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn update_invoice_settings(
        &self,
        request: Request<proto::UpdateInvoiceSettingsRequest>,
    ) -> Result<Response<proto::UpdateInvoiceSettingsResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn skip_stage(
        &self,
        request: Request<proto::SkipStageRequest>,
    ) -> Result<Response<proto::SkipStageResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn register_api_credentials(
        &self,
        request: Request<proto::RegisterApiCredentialsRequest>,
    ) -> Result<Response<proto::RegisterApiCredentialsResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn create_api_user(
        &self,
        request: Request<proto::CreateApiUserRequest>,
    ) -> Result<Response<proto::CreateApiUserResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn record_webhook_setup(
        &self,
        request: Request<proto::RecordWebhookSetupRequest>,
    ) -> Result<Response<proto::RecordWebhookSetupResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn validate_onboarding(
        &self,
        request: Request<proto::ValidateOnboardingRequest>,
    ) -> Result<Response<proto::ValidateOnboardingResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn promote_to_production(
        &self,
        request: Request<proto::PromoteToProductionRequest>,
    ) -> Result<Response<proto::PromoteToProductionResponse>, Status> {
        mutating(&self.operations, request).await
    }

    async fn list_onboarding_events(
        &self,
        request: Request<proto::ListOnboardingEventsRequest>,
    ) -> Result<Response<proto::ListOnboardingEventsResponse>, Status> {
        let caller = permitted(&request, Permission::Read)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let key = violations.check(OnboardingKey::parse_name("name", &request.name));
        if let Some(key) = &key {
            within(&caller, Permission::Read, key)?;
        }
        let page_size =
            violations.check(tokens::page_size("page_size", request.page_size, 100, 1000));
        let page = violations.check(tokens::decode::<EventsPage>(
            "page_token",
            &request.page_token,
        ));
        violations.finish().map_err(Error::from)?;
        let key = checked(key);
        let page = checked(page);
        if page
            .as_ref()
            .is_some_and(|page| page.onboarding != key.name())
        {
            return Err(Error::from(FieldViolation::new(
                "page_token",
                "was issued for a different onboarding",
            ))
            .into());
        }
        let limit = checked(page_size);
        let record = self.operations.get_onboarding(&key).await?;
        let after = page.map_or(0, |page| page.after);
        let events = self
            .operations
            .list_events(&key.tenant, &record.id, after, limit)
            .await?;
        let next_page_token = match events.last() {
            Some(last) if last.sequence < record.last_event => tokens::encode(&EventsPage {
                onboarding: key.name(),
                after: last.sequence,
            }),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListOnboardingEventsResponse {
            events: events
                .iter()
                .map(|event| convert::event(&key, event))
                .collect(),
            next_page_token,
        }))
    }

    type WatchOnboardingStream = WatchStream;

    async fn watch_onboarding(
        &self,
        request: Request<proto::WatchOnboardingRequest>,
    ) -> Result<Response<Self::WatchOnboardingStream>, Status> {
        let caller = permitted(&request, Permission::Read)?;
        let request = request.into_inner();
        let key = OnboardingKey::parse_name("name", &request.name).map_err(Error::from)?;
        within(&caller, Permission::Read, &key)?;
        // Held for as long as the stream is open.
        let Ok(permit) = self.watch_streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "the server has {} WatchOnboarding streams open, its limit; retry with backoff",
                self.max_watch_streams
            )));
        };
        let after = if request.after_event.is_empty() {
            None
        } else {
            Some(
                key.parse_event_name("after_event", &request.after_event)
                    .map_err(Error::from)?,
            )
        };
        // Subscribe before reading, so no change between the read and the subscription is missed.
        let changes = self.operations.subscribe();
        let record = self.operations.get_onboarding(&key).await?;
        if after.is_some_and(|after| after > record.last_event) {
            let newest = key.event_name(record.last_event);
            return Err(Error::from(FieldViolation::new(
                "after_event",
                format!("is newer than the newest event, {newest}"),
            ))
            .into());
        }
        let (sender, receiver) = mpsc::channel(16);
        let watch = Watch {
            operations: self.operations.clone(),
            key,
            onboarding_id: record.id.clone(),
            sender,
            shutdown: self.shutdown.clone(),
            poll_interval: self.watch_poll_interval,
            _permit: permit,
        };
        tokio::spawn(
            watch
                .run(record, after, changes)
                .instrument(tracing::Span::current()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// One open WatchOnboarding stream. Sends events from the database, in sequence order, after a
/// cursor; wakes on changes committed in this process and polls for those of other replicas.
struct Watch {
    operations: Operations,
    key: OnboardingKey,
    onboarding_id: String,
    sender: mpsc::Sender<Result<proto::WatchOnboardingResponse, Status>>,
    shutdown: CancellationToken,
    poll_interval: Duration,
    /// The stream's place under --max-watch-streams, given back when it ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Watch {
    async fn run(
        self,
        first: Arc<OnboardingRecord>,
        after: Option<i64>,
        mut changes: broadcast::Receiver<crate::operations::Change>,
    ) {
        let mut cursor = match after {
            Some(after) => after,
            None => {
                let snapshot = proto::WatchOnboardingResponse {
                    event: None,
                    onboarding: Some(convert::onboarding(&first)),
                };
                if self.sender.send(Ok(snapshot)).await.is_err() {
                    return;
                }
                first.last_event
            }
        };
        loop {
            match self.send_after(cursor).await {
                Ok(Some(sent_up_to)) => cursor = sent_up_to,
                Ok(None) => return,
                Err(status) => {
                    let _ = self.sender.send(Err(status)).await;
                    return;
                }
            }
            let poll = tokio::time::sleep(self.poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    () = self.sender.closed() => return,
                    () = self.shutdown.cancelled() => {
                        let status = Status::unavailable("the server is shutting down; resume with after_event set to the last event received");
                        let _ = self.sender.send(Err(status)).await;
                        return;
                    }
                    () = &mut poll => break,
                    change = changes.recv() => match change {
                        Ok(change) if change.onboarding_id != self.onboarding_id || change.sequence <= cursor => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
    }

    /// Sends every event after `cursor`; returns the new cursor, or `None` when the caller left.
    async fn send_after(&self, mut cursor: i64) -> Result<Option<i64>, Status> {
        loop {
            let events = self
                .operations
                .list_events(&self.key.tenant, &self.onboarding_id, cursor, 100)
                .await?;
            if events.is_empty() {
                return Ok(Some(cursor));
            }
            let current = self.operations.get_onboarding(&self.key).await?;
            let current = convert::onboarding(&current);
            for event in &events {
                let message = proto::WatchOnboardingResponse {
                    event: Some(convert::event(&self.key, event)),
                    onboarding: Some(current.clone()),
                };
                if self.sender.send(Ok(message)).await.is_err() {
                    return Ok(None);
                }
                cursor = event.sequence;
            }
        }
    }
}
