//! Each RPC's work, from parsed input to stored result: load the onboarding in a transaction,
//! replay an earlier result for a retried request_id, check the etag, apply the domain operation,
//! write the record, its changed stages and one audit event, and tell watchers.
//!
//! The stages that drive Billecta never hold a transaction while they wait for Billecta: one runner
//! ([`stage`]) claims the stage with a lease in one transaction, talks to Billecta, and records the
//! outcome in a second one. The claims this process holds are kept in a register ([`leases`]), so
//! that a clean shutdown releases those of the calls it cuts off.

mod access;
mod api_user;
mod billecta;
mod leases;
mod provisioning;
mod reconcile;
mod stage;
mod upgrade;
mod users;
mod validation;

pub use access::{ApiCredentials, PaymentConfiguration};
pub use provisioning::NewCreditor;
pub use reconcile::RECONCILER;
pub use validation::{Check, CheckResult};

use crate::crypto::{Keyring, Sealed};
use crate::domain::onboarding::{
    Account, Agreement, CredentialRecord, EventRecord, OnboardingRecord,
};
use crate::domain::validate::{OnboardingKey, RequestId, TenantId};
use crate::domain::{CredentialField, Micros, now_micros};
use crate::error::{Error, Result};
pub use crate::storage::ListFilter;
use crate::storage::{StorageError, Store, StoredResult, WriteTx};
use billecta_client::Billecta;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Who is calling, for the audit trail.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The caller's identity.
    pub actor: String,
    /// The call's correlation id, as in the logs.
    pub correlation_id: String,
}

/// The conventions every mutating call shares.
#[derive(Debug, Clone)]
pub struct Mutation {
    /// The RPC name, recorded in the audit trail and with the stored result.
    pub method: &'static str,
    pub request_id: Option<RequestId>,
    /// A digest of the request (without its request_id), to tell a retry from a reused id.
    pub request_hash: String,
    /// When set, the call applies only to this version of the onboarding.
    pub etag: Option<String>,
    pub validate_only: bool,
}

impl Mutation {
    /// A write the service makes on its own under `method`, without a caller's conventions: no
    /// request_id to replay, no etag, never validate_only.
    pub fn plain(method: &'static str) -> Self {
        Mutation {
            method,
            request_id: None,
            request_hash: String::new(),
            etag: None,
            validate_only: false,
        }
    }
}

/// A committed change to an onboarding, as announced to watchers in this process.
#[derive(Debug, Clone)]
pub struct Change {
    pub onboarding_id: String,
    pub sequence: i64,
}

/// The service's operations over one store.
#[derive(Clone)]
pub struct Operations {
    store: Store,
    billecta: Billecta,
    keyring: Arc<Keyring>,
    timing: StageTiming,
    changes: broadcast::Sender<Change>,
    /// The stages this process has claimed and not yet settled.
    leases: Arc<leases::HeldLeases>,
}

/// How long stages stay claimed.
#[derive(Debug, Clone, Copy)]
pub struct StageTiming {
    /// How long a call may work on a stage with Billecta before another may take the stage over.
    pub lease: Duration,
    /// After a create whose outcome is unknown (its answer was lost), how long nobody creates again,
    /// so that Billecta finishes the request and the next attempt finds the creditor instead.
    pub settle: Duration,
}

/// What a change did besides changing the record: its summary for the audit trail, and secrets to
/// store with it.
#[derive(Default)]
struct Written {
    summary: String,
    secrets: Vec<(CredentialRecord, Sealed)>,
    /// Stored secrets to forget: (scope, field).
    removed: Vec<(String, CredentialField)>,
    /// Stored secrets Billecta just accepted again, unchanged: (scope, field, fingerprint).
    verified: Vec<(String, CredentialField, String)>,
}

impl From<String> for Written {
    fn from(summary: String) -> Self {
        Written {
            summary,
            ..Written::default()
        }
    }
}

/// How one write transaction applies the shared conventions.
#[derive(Debug, Clone, Copy)]
struct Conventions {
    /// The call's first write: replays an earlier result for its request_id, checks the etag and
    /// honours validate_only.
    first_write: bool,
    /// Stores the result under the request_id.
    save_result: bool,
    /// Counts the change as a new version of the onboarding (a new etag). Claiming a stage and
    /// recording a failed attempt do not: a caller retrying with the etag it read must not be refused
    /// because of its own failed attempt.
    bump_version: bool,
    /// The audit event's outcome: a gRPC status code name.
    outcome: &'static str,
}

impl Conventions {
    /// A call that is done in one write.
    const WHOLE: Conventions = Conventions {
        first_write: true,
        save_result: true,
        bump_version: true,
        outcome: "OK",
    };
}

/// The record a write left, or the first result of a retried request_id.
enum Committed {
    Replayed(OnboardingRecord),
    Stored(OnboardingRecord),
}

impl Committed {
    /// The record, whether stored now or replayed.
    fn into_record(self) -> OnboardingRecord {
        match self {
            Committed::Replayed(record) | Committed::Stored(record) => record,
        }
    }
}

impl Operations {
    pub fn new(
        store: Store,
        billecta: Billecta,
        keyring: Arc<Keyring>,
        timing: StageTiming,
    ) -> Self {
        let (changes, _) = broadcast::channel(1024);
        Self {
            store,
            billecta,
            keyring,
            timing,
            changes,
            leases: Arc::default(),
        }
    }

    /// The Billecta clients the stages drive.
    pub fn billecta(&self) -> &Billecta {
        &self.billecta
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Changes committed by this process, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Creates an onboarding; a retry with the same request_id returns the first result.
    pub async fn create_onboarding(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
    ) -> Result<OnboardingRecord> {
        // Two attempts: when a concurrent call with the same request_id wins the insert, the second
        // attempt finds its stored result.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_create(call, key, mutation).await {
                Err(Error::AlreadyExists { .. })
                    if attempt == 1 && mutation.request_id.is_some() =>
                {
                    continue;
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt at a create, in a transaction that first looks for the onboarding and for a
    /// result stored under the request_id.
    async fn try_create(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
    ) -> Result<OnboardingRecord> {
        let now = now_micros();
        let (record, event) = created(call, key, mutation, now);
        let mut tx = self.store.begin().await?;
        let locked = tx
            .lock_onboarding(&key.tenant, key.environment, replayable(mutation))
            .await?;
        if let Some(replayed) = replay(locked.result, mutation)? {
            return Ok(replayed);
        }
        if locked.record.is_some() {
            return Err(Error::AlreadyExists {
                resource: key.name(),
            });
        }
        if mutation.validate_only {
            return Ok(record);
        }
        tx.insert_onboarding(&record).await?;
        tx.append_event(&record, &event).await?;
        store_result(&mut tx, &key.tenant, mutation, &record, now).await?;
        tx.commit().await?;
        self.announce(&record.id, record.last_event);
        Ok(record)
    }

    /// Attests the AGREEMENT stage.
    pub async fn record_agreement(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        attested_by: String,
        agreement_time: Micros,
        reference: String,
    ) -> Result<OnboardingRecord> {
        self.mutate(call, key, mutation, |record, now| {
            let agreement = Agreement {
                attested_by: attested_by.clone(),
                agreement_time,
                reference: reference.clone(),
                record_time: now,
            };
            Ok(record.record_agreement(agreement, now))
        })
        .await
    }

    /// Records the account a person must create in Billecta's portal.
    pub async fn register_account(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        full_name: String,
        company_name: String,
        email: String,
    ) -> Result<OnboardingRecord> {
        self.mutate(call, key, mutation, |record, now| {
            let account = Account {
                full_name: full_name.clone(),
                company_name: company_name.clone(),
                email: email.clone(),
                register_time: now,
                username: None,
                user: None,
                activate_time: None,
            };
            Ok(record.register_account(account, now)?)
        })
        .await
    }

    /// Runs one change to an existing onboarding with the shared conventions: idempotency, etag,
    /// validate_only, one audit event, and an announcement after commit.
    async fn mutate(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        mut change: impl FnMut(&mut OnboardingRecord, Micros) -> Result<String>,
    ) -> Result<OnboardingRecord> {
        let written = self
            .transact(call, key, mutation, Conventions::WHOLE, |record, now| {
                change(record, now).map(Written::from)
            })
            .await?;
        Ok(match written {
            Committed::Replayed(record) | Committed::Stored(record) => record,
        })
    }

    /// One write on an existing onboarding: lock and read it, apply `change`, write the record,
    /// the secrets the change produced and one audit event, commit, and tell watchers.
    async fn transact(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        conventions: Conventions,
        mut change: impl FnMut(&mut OnboardingRecord, Micros) -> Result<Written>,
    ) -> Result<Committed> {
        let now = now_micros();
        let mut tx = self.store.begin().await?;
        let result_of = replayable(mutation).filter(|_| conventions.first_write);
        let locked = tx
            .lock_onboarding(&key.tenant, key.environment, result_of)
            .await?;
        let Some(before) = locked.record else {
            return Err(Error::NotFound {
                resource: key.name(),
            });
        };
        if conventions.first_write {
            if let Some(replayed) = replay(locked.result, mutation)? {
                return Ok(Committed::Replayed(replayed));
            }
            if etag_refuses(mutation, &before) {
                return Err(Error::EtagMismatch {
                    resource: key.name(),
                });
            }
        }
        let Some(change) = apply(call, mutation, conventions, &before, &mut change, now)? else {
            // Nothing to change and nothing to record.
            return Ok(Committed::Stored(before));
        };
        if conventions.first_write && mutation.validate_only {
            return Ok(Committed::Stored(change.record));
        }
        change.write(&mut tx, &before).await?;
        if conventions.save_result {
            store_result(&mut tx, &key.tenant, mutation, &change.record, now).await?;
        }
        tx.commit().await?;
        self.announce(&change.record.id, change.record.last_event);
        Ok(Committed::Stored(change.record))
    }

    /// Tells this process's watchers that an onboarding's event `sequence` is committed.
    fn announce(&self, onboarding_id: &str, sequence: i64) {
        // Nobody listening is fine: watchers also poll the database.
        let _ = self.changes.send(Change {
            onboarding_id: onboarding_id.to_owned(),
            sequence,
        });
    }

    /// Up to `limit` onboardings matching `filter`, after the (tenant, environment) `after`.
    pub async fn list_onboardings(
        &self,
        filter: &ListFilter,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<OnboardingRecord>> {
        Ok(self.store.list_onboardings(filter, after, limit).await?)
    }

    /// Up to `limit` events of the onboarding `onboarding_id` of `tenant` after sequence `after`.
    pub async fn list_events(
        &self,
        tenant: &TenantId,
        onboarding_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        Ok(self
            .store
            .list_events(tenant, onboarding_id, after, limit)
            .await?)
    }

    pub async fn get_onboarding(&self, key: &OnboardingKey) -> Result<Arc<OnboardingRecord>> {
        self.store
            .get_onboarding(&key.tenant, key.environment)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource: key.name(),
            })
    }
}

/// A new onboarding of `key` and the event of its creation.
fn created(
    call: &CallContext,
    key: &OnboardingKey,
    mutation: &Mutation,
    now: Micros,
) -> (OnboardingRecord, EventRecord) {
    let mut record = OnboardingRecord::new(uuid::Uuid::new_v4().to_string(), key, now);
    let before = record.clone();
    record.last_event = 1;
    let event = event(
        call,
        mutation,
        &record,
        &before,
        now,
        format!("onboarding created for {key}"),
    );
    (record, event)
}

/// Whether the call's etag, if it gave one, is not `record`'s.
fn etag_refuses(mutation: &Mutation, record: &OnboardingRecord) -> bool {
    mutation
        .etag
        .as_ref()
        .is_some_and(|etag| *etag != record.etag())
}

/// The request_id whose stored result replays a call, if any (a validate_only call stores none).
fn replayable(mutation: &Mutation) -> Option<&str> {
    mutation
        .request_id
        .as_ref()
        .filter(|_| !mutation.validate_only)
        .map(|id| id.as_str())
}

/// The first result of a retried call, from what is `stored` under its request_id, or `None` for a
/// new request_id. The same id with another request is [`Error::RequestIdReused`].
fn replay(stored: Option<StoredResult>, mutation: &Mutation) -> Result<Option<OnboardingRecord>> {
    let (Some(stored), Some(request_id)) = (stored, replayable(mutation)) else {
        return Ok(None);
    };
    if stored.method != mutation.method || stored.request_hash != mutation.request_hash {
        return Err(Error::RequestIdReused {
            request_id: request_id.to_owned(),
        });
    }
    let record = serde_json::from_str(&stored.response).map_err(|e| {
        Error::Internal(anyhow::Error::new(e).context("stored result is not valid"))
    })?;
    Ok(Some(record))
}

/// Stores the result under the request_id, if any.
async fn store_result(
    tx: &mut WriteTx,
    tenant: &TenantId,
    mutation: &Mutation,
    record: &OnboardingRecord,
    now: Micros,
) -> Result<()> {
    if let Some(request_id) = &mutation.request_id {
        let stored = StoredResult {
            method: mutation.method.to_owned(),
            request_hash: mutation.request_hash.clone(),
            response: serde_json::to_string(record).map_err(|e| Error::Internal(e.into()))?,
        };
        // The same request_id stored meanwhile by a call on another onboarding of the tenant (a
        // retry of this call would have found it under the onboarding's lock).
        tx.save_result(tenant, request_id.as_str(), &stored, now)
            .await
            .map_err(|error| match error {
                StorageError::Duplicate(_) => Error::RequestIdReused {
                    request_id: request_id.as_str().to_owned(),
                },
                other => other.into(),
            })?;
    }
    Ok(())
}

/// A change of an onboarding, ready to write: the record it leaves, what it wrote, its event.
struct Applied {
    record: OnboardingRecord,
    written: Written,
    event: EventRecord,
}

/// Applies `change` to `before` with the shared conventions (`None` when it changed nothing and
/// has nothing to record, its summary empty): the secrets it wrote, the version,
/// the revision and the audit trail moved on.
fn apply(
    call: &CallContext,
    mutation: &Mutation,
    conventions: Conventions,
    before: &OnboardingRecord,
    change: &mut impl FnMut(&mut OnboardingRecord, Micros) -> Result<Written>,
    now: Micros,
) -> Result<Option<Applied>> {
    let mut record = before.clone();
    let mut written = change(&mut record, now)?;
    if written.summary.is_empty()
        && written.secrets.is_empty()
        && written.removed.is_empty()
        && written.verified.is_empty()
        && record == *before
    {
        return Ok(None);
    }
    // A change may not both store and remove one credential: which of them wins would depend on
    // the order of the writes.
    if written.removed.iter().any(|(scope, field)| {
        written
            .secrets
            .iter()
            .any(|(c, _)| c.scope == *scope && c.field == *field)
    }) {
        return Err(Error::Internal(anyhow::anyhow!(
            "a change both stored and removed one credential"
        )));
    }
    for (credential, _) in &written.secrets {
        record
            .credentials
            .retain(|c| !(c.scope == credential.scope && c.field == credential.field));
        record.credentials.push(credential.clone());
    }
    for (scope, field) in &written.removed {
        record
            .credentials
            .retain(|c| !(c.scope == *scope && c.field == *field));
    }
    // Only what stays as it was: a secret stored anew carries its own time.
    written.verified.retain(|(scope, field, fingerprint)| {
        let stored_anew = written
            .secrets
            .iter()
            .any(|(c, _)| c.scope == *scope && c.field == *field);
        let credential = record
            .credentials
            .iter_mut()
            .find(|c| c.scope == *scope && c.field == *field && c.fingerprint == *fingerprint);
        match credential {
            Some(credential) if !stored_anew => {
                credential.verify_time = Some(now);
                true
            }
            _ => false,
        }
    });
    record.refresh();
    if conventions.bump_version && record.differs_for_callers(before) {
        record.version += 1;
    }
    record.last_event += 1;
    record.revision += 1;
    record.update_time = now;
    let summary = std::mem::take(&mut written.summary);
    let mut event = event(call, mutation, &record, before, now, summary);
    event.outcome = conventions.outcome.to_owned();
    Ok(Some(Applied {
        record,
        written,
        event,
    }))
}

impl Applied {
    /// Queues the change's writes in `tx`: the onboarding's row first, then its secrets and event.
    async fn write(&self, tx: &mut WriteTx, before: &OnboardingRecord) -> Result<()> {
        tx.update_onboarding(before, &self.record).await?;
        for (credential, sealed) in &self.written.secrets {
            tx.put_credential(&self.record, credential, sealed).await?;
        }
        for (scope, field) in &self.written.removed {
            tx.delete_credential(&self.record, scope, *field).await?;
        }
        for (scope, field, _) in &self.written.verified {
            tx.verify_credential(&self.record, scope, *field, self.event.event_time)
                .await?;
        }
        tx.append_event(&self.record, &self.event).await?;
        Ok(())
    }
}

fn event(
    call: &CallContext,
    mutation: &Mutation,
    after: &OnboardingRecord,
    before: &OnboardingRecord,
    now: Micros,
    summary: String,
) -> EventRecord {
    EventRecord {
        sequence: after.last_event,
        event_time: now,
        actor: call.actor.clone(),
        method: mutation.method.to_owned(),
        request_id: mutation
            .request_id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        correlation_id: call.correlation_id.clone(),
        outcome: "OK".to_owned(),
        summary,
        transitions: after.transitions_since(before),
    }
}
