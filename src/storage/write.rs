//! A write: one transaction of the same shape on both engines. It begins by taking the
//! onboarding's lock — on SQLite `BEGIN IMMEDIATE` on the single writer connection (the whole
//! database's write lock, across processes too), on PostgreSQL `SELECT … FOR UPDATE` of the
//! onboarding's row — reads what it changes, writes, and commits. Concurrent writes of one
//! onboarding therefore take turns, none loses another's update, and its audit events are numbered
//! in commit order.
//!
//! The write says BEGIN, COMMIT and ROLLBACK itself rather than through sqlx's transaction guard:
//! when SQLite refuses a COMMIT (a full disk) it may roll back on its own, the guard's ROLLBACK then
//! fails, and sqlx keeps the connection marked as inside a transaction, so that every later write
//! on the single writer connection would fail. A connection whose state is not known is closed
//! instead of going back to the pool.

use super::cache::{Cache, SealedSecrets, Snapshot};
use super::error::classify;
use super::kept::{Held, Kept};
use super::{
    Backend, Result, StorageError, StoredResult, StoredSecret, db_error, load_children, rows,
};
use crate::crypto::Sealed;
use crate::domain::onboarding::{CredentialRecord, CreditorRecord, EventRecord, OnboardingRecord};
use crate::domain::validate::TenantId;
use crate::domain::{CredentialField, Environment};
use sqlx::{AnyConnection, Executor};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What [`WriteTx::lock_onboarding`] read.
#[derive(Debug)]
pub struct Locked {
    pub record: Option<OnboardingRecord>,
    /// The stored result asked for, if there is one.
    pub result: Option<StoredResult>,
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls it back.
pub struct WriteTx {
    backend: Backend,
    /// The connection inside the transaction; taken by commit, rolled back if still here on drop.
    connection: Option<Held>,
    cache: Arc<Cache>,
    /// The store's note of a write refused for a full disk (see [`super::Store::ping`]).
    disk_full: Arc<AtomicBool>,
    /// What the onboarding written holds once this commits, for the cache: the record and its
    /// ciphertexts. `None` when that is not known (nothing was locked, or its secrets were not).
    after: Option<(OnboardingRecord, SealedSecrets)>,
}

impl WriteTx {
    pub(super) async fn begin(
        backend: Backend,
        writer: &Arc<Kept>,
        cache: Arc<Cache>,
        disk_full: Arc<AtomicBool>,
    ) -> Result<Self> {
        let mut connection = writer.take().await?;
        let begin = match backend {
            // Takes the write lock now, not at the first write: a transaction that read first
            // could otherwise fail to upgrade its lock when another process wrote meanwhile.
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        // Failed, BEGIN leaves no transaction: the connection goes back through the pool.
        connection
            .connection()
            .execute(begin)
            .await
            .map_err(db_error)?;
        Ok(Self {
            backend,
            connection: Some(connection),
            cache,
            disk_full,
            after: None,
        })
    }

    /// Reads an onboarding under the write's lock: nothing it holds can change until this
    /// transaction ends. With `result_of`, also the stored result of an earlier call of the tenant
    /// with that request_id.
    pub async fn lock_onboarding(
        &mut self,
        tenant: &TenantId,
        environment: Environment,
        result_of: Option<&str>,
    ) -> Result<Locked> {
        let select = match self.backend {
            Backend::Sqlite => rows::SELECT_LOCKED,
            Backend::Postgres => rows::SELECT_LOCKED_FOR_UPDATE,
        };
        let row = sqlx::query(select)
            .bind(tenant.as_str())
            .bind(environment.as_str())
            .bind(result_of)
            .fetch_optional(self.db())
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            // No onboarding to find the result beside (a create): the result alone.
            let result = match result_of {
                Some(request_id) => sqlx::query(rows::SELECT_RESULT)
                    .bind(tenant.as_str())
                    .bind(request_id)
                    .fetch_optional(self.db())
                    .await
                    .map_err(db_error)?
                    .as_ref()
                    .map(rows::stored_result)
                    .transpose()?
                    .flatten(),
                None => None,
            };
            return Ok(Locked {
                record: None,
                result,
            });
        };
        let result = rows::stored_result(&row)?;
        let head = rows::onboarding(&row)?;
        let snapshot = match self
            .cache
            .at(&head.tenant, head.environment, &head.id, head.revision)
        {
            Some(kept) => kept,
            None => {
                let read = Arc::new(load_children(self.db(), head).await?);
                self.cache.put(read.clone());
                read
            }
        };
        let record = OnboardingRecord::clone(&snapshot.record);
        self.after = Some((record.clone(), snapshot.sealed.clone()));
        Ok(Locked {
            record: Some(record),
            result,
        })
    }

    /// Stores a call's result under its request_id. Another result stored under the same id
    /// meanwhile is [`StorageError::Duplicate`].
    pub async fn save_result(
        &mut self,
        tenant: &TenantId,
        request_id: &str,
        result: &StoredResult,
        now: i64,
    ) -> Result<()> {
        sqlx::query(rows::INSERT_RESULT)
            .bind(tenant.as_str())
            .bind(request_id)
            .bind(&result.method)
            .bind(&result.request_hash)
            .bind(&result.response)
            .bind(now)
            .execute(self.db())
            .await
            .map_err(|error| {
                let what = || format!("a result under request_id {request_id}");
                noted(&self.disk_full, classify(error, what))
            })?;
        Ok(())
    }

    /// Inserts a new onboarding with its stages and creditors. A second onboarding for the same
    /// tenant and environment is [`StorageError::Duplicate`], even when created concurrently.
    pub async fn insert_onboarding(&mut self, record: &OnboardingRecord) -> Result<()> {
        sqlx::query(rows::INSERT_ONBOARDING)
            .bind(&record.id)
            .bind(&record.tenant)
            .bind(record.environment.as_str())
            .bind(record.state.as_str())
            .bind(record.blocked_on.as_str())
            .bind(record.version)
            .bind(record.last_event)
            .bind(rows::json_opt(&record.agreement)?)
            .bind(rows::json_opt(&record.account)?)
            .bind(record.create_time)
            .bind(record.update_time)
            .bind(record.revision)
            .bind(rows::json_list(&record.users)?)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, classify(error, || record.key().name())))?;
        for stage in &record.stages {
            self.upsert_stage(record, "", stage).await?;
        }
        for creditor in &record.creditors {
            self.insert_creditor(record, creditor).await?;
            for stage in &creditor.stages {
                self.upsert_stage(record, &creditor.id, stage).await?;
            }
        }
        self.after = Some((record.clone(), Vec::new()));
        Ok(())
    }

    /// Writes a changed onboarding: its row and what changed of the stages and creditors. `before`
    /// is what [`WriteTx::lock_onboarding`] read; `after` must move the revision on.
    pub async fn update_onboarding(
        &mut self,
        before: &OnboardingRecord,
        after: &OnboardingRecord,
    ) -> Result<()> {
        // The cache relies on it (see `cache`).
        if after.revision <= before.revision {
            return Err(StorageError::internal(format!(
                "a write of onboarding {} did not move its revision",
                after.id
            )));
        }
        let updated = sqlx::query(rows::UPDATE_ONBOARDING)
            .bind(after.state.as_str())
            .bind(after.blocked_on.as_str())
            .bind(after.version)
            .bind(after.last_event)
            .bind(rows::json_opt(&after.agreement)?)
            .bind(rows::json_opt(&after.account)?)
            .bind(after.update_time)
            .bind(after.revision)
            .bind(rows::json_list(&after.users)?)
            .bind(&after.id)
            .bind(&after.tenant)
            .bind(before.revision)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        // Only a write that did not take the onboarding's lock could have changed it.
        if updated.rows_affected() != 1 {
            return Err(StorageError::internal(format!(
                "onboarding {} is not at revision {} under its lock",
                after.id, before.revision
            )));
        }
        for stage in &after.stages {
            if !before.stages.contains(stage) {
                self.upsert_stage(after, "", stage).await?;
            }
        }
        for creditor in &after.creditors {
            let previous = before.creditors.iter().find(|c| c.id == creditor.id);
            match previous {
                None => self.insert_creditor(after, creditor).await?,
                Some(previous) if creditor_row_changed(previous, creditor) => {
                    self.update_creditor(after, creditor).await?;
                }
                Some(_) => {}
            }
            for stage in &creditor.stages {
                if previous.is_none_or(|c| !c.stages.contains(stage)) {
                    self.upsert_stage(after, &creditor.id, stage).await?;
                }
            }
        }
        if let Some((record, _)) = &mut self.after {
            record.clone_from(after);
        }
        Ok(())
    }

    async fn insert_creditor(
        &mut self,
        record: &OnboardingRecord,
        creditor: &CreditorRecord,
    ) -> Result<()> {
        let resource_id = creditor.name.rsplit('/').next().unwrap_or_default();
        sqlx::query(rows::INSERT_CREDITOR)
            .bind(&creditor.id)
            .bind(&record.id)
            .bind(&record.tenant)
            .bind(resource_id)
            .bind(&creditor.organisation_number)
            .bind(&creditor.company_name)
            .bind(&creditor.title)
            .bind(&creditor.creditor_public_id)
            .bind(rows::json_opt(&creditor.company_settings)?)
            .bind(rows::json_opt(&creditor.invoice_settings)?)
            .bind(rows::json_opt(&creditor.api_access)?)
            .bind(rows::json_opt(&creditor.webhooks)?)
            .bind(record.update_time)
            .bind(record.update_time)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, classify(error, || creditor.name.clone())))?;
        Ok(())
    }

    async fn update_creditor(
        &mut self,
        record: &OnboardingRecord,
        creditor: &CreditorRecord,
    ) -> Result<()> {
        sqlx::query(rows::UPDATE_CREDITOR)
            .bind(&creditor.company_name)
            .bind(&creditor.title)
            .bind(&creditor.creditor_public_id)
            .bind(rows::json_opt(&creditor.company_settings)?)
            .bind(rows::json_opt(&creditor.invoice_settings)?)
            .bind(rows::json_opt(&creditor.api_access)?)
            .bind(rows::json_opt(&creditor.webhooks)?)
            .bind(record.update_time)
            .bind(&creditor.id)
            .bind(&record.tenant)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        Ok(())
    }

    async fn upsert_stage(
        &mut self,
        record: &OnboardingRecord,
        creditor_id: &str,
        stage: &crate::domain::onboarding::StageRecord,
    ) -> Result<()> {
        sqlx::query(rows::UPSERT_STAGE)
            .bind(&record.id)
            .bind(creditor_id)
            .bind(stage.stage.as_str())
            .bind(&record.tenant)
            .bind(stage.state.as_str())
            .bind(stage.blocked_on.as_str())
            .bind(rows::json(&stage.due)?)
            .bind(&stage.reason)
            .bind(&stage.message)
            .bind(stage.update_time)
            .bind(stage.lease.as_ref().map(|lease| lease.owner.clone()))
            .bind(stage.lease.as_ref().map(|lease| lease.expire_time))
            .bind(stage.attempts)
            .bind(stage.next_attempt_time)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        Ok(())
    }

    /// Stores a secret's ciphertext with what reads show of it, replacing the previous one.
    pub async fn put_credential(
        &mut self,
        record: &OnboardingRecord,
        credential: &CredentialRecord,
        sealed: &Sealed,
    ) -> Result<()> {
        sqlx::query(rows::UPSERT_CREDENTIAL)
            .bind(&record.id)
            .bind(&credential.scope)
            .bind(credential.field.as_str())
            .bind(&record.tenant)
            .bind(&sealed.key_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .bind(&credential.fingerprint)
            .bind(&credential.principal)
            .bind(&credential.set_by)
            .bind(credential.set_time)
            .bind(credential.verify_time)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        if let Some((_, kept)) = &mut self.after {
            kept.retain(|(s, f, _)| !(*s == credential.scope && *f == credential.field));
            kept.push((credential.scope.clone(), credential.field, sealed.clone()));
        }
        Ok(())
    }

    /// Forgets a stored secret (one that no longer belongs with the others).
    pub async fn delete_credential(
        &mut self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Result<()> {
        sqlx::query(rows::DELETE_CREDENTIAL)
            .bind(&record.id)
            .bind(scope)
            .bind(field.as_str())
            .bind(&record.tenant)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        if let Some((_, kept)) = &mut self.after {
            kept.retain(|(s, f, _)| !(s == scope && *f == field));
        }
        Ok(())
    }

    /// Notes that Billecta accepted a stored secret again at `time`.
    pub async fn verify_credential(
        &mut self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
        time: i64,
    ) -> Result<()> {
        sqlx::query(rows::VERIFY_CREDENTIAL)
            .bind(time)
            .bind(&record.id)
            .bind(scope)
            .bind(field.as_str())
            .bind(&record.tenant)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        Ok(())
    }

    /// Appends an event to an onboarding's audit trail.
    pub async fn append_event(
        &mut self,
        record: &OnboardingRecord,
        event: &EventRecord,
    ) -> Result<()> {
        sqlx::query(rows::INSERT_EVENT)
            .bind(&record.id)
            .bind(event.sequence)
            .bind(&record.tenant)
            .bind(event.event_time)
            .bind(&event.actor)
            .bind(&event.method)
            .bind(&event.request_id)
            .bind(&event.correlation_id)
            .bind(&event.outcome)
            .bind(&event.summary)
            .bind(rows::json(&event.transitions)?)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        Ok(())
    }

    /// Replaces a stored ciphertext if it is still `secret`'s, moving its onboarding's revision
    /// on; says whether it did.
    pub async fn replace_sealed(&mut self, secret: &StoredSecret, new: &Sealed) -> Result<bool> {
        if self.backend == Backend::Postgres {
            sqlx::query(rows::LOCK_ONBOARDING_BY_ID)
                .bind(&secret.onboarding_id)
                .bind(&secret.tenant)
                .execute(self.db())
                .await
                .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        }
        let replaced = sqlx::query(rows::REPLACE_SEALED)
            .bind(&new.key_id)
            .bind(&new.nonce)
            .bind(&new.ciphertext)
            .bind(&secret.onboarding_id)
            .bind(&secret.scope)
            .bind(&secret.field)
            .bind(&secret.tenant)
            .bind(&secret.sealed.key_id)
            .bind(&secret.sealed.nonce)
            .execute(self.db())
            .await
            .map_err(|error| noted(&self.disk_full, db_error(error)))?
            .rows_affected()
            == 1;
        if replaced {
            sqlx::query(rows::MOVE_REVISION)
                .bind(&secret.onboarding_id)
                .bind(&secret.tenant)
                .execute(self.db())
                .await
                .map_err(|error| noted(&self.disk_full, db_error(error)))?;
        }
        Ok(replaced)
    }

    /// The transaction's connection.
    fn db(&mut self) -> &mut AnyConnection {
        self.connection
            .as_mut()
            .expect("a write's connection is there until it commits")
            .connection()
    }

    /// Commits, and keeps what the onboarding now holds for the next read or write of it.
    pub async fn commit(mut self) -> Result<()> {
        let mut connection = self
            .connection
            .take()
            .expect("a write's connection is there until it commits");
        if let Err(error) = connection.connection().execute("COMMIT").await {
            // Committed, rolled back, or still open: not known, so not reused.
            connection.discard();
            return Err(noted(&self.disk_full, db_error(error)));
        }
        connection.settled();
        self.disk_full.store(false, Ordering::Relaxed);
        if let Some((mut record, sealed)) = self.after.take() {
            super::in_stored_order(&mut record);
            self.cache.put(Arc::new(Snapshot {
                record: Arc::new(record),
                sealed,
            }));
        }
        Ok(())
    }
}

impl Drop for WriteTx {
    /// Rolls back a write that did not commit, in a task of its own (the lock is let go at once,
    /// and the connection goes back to the pool after); a connection that cannot be rolled back
    /// is closed.
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    match connection.connection().execute("ROLLBACK").await {
                        Ok(_) => connection.settled(),
                        Err(_) => connection.discard(),
                    }
                });
            }
            Err(_) => connection.discard(),
        }
    }
}

/// Whether a creditor's own row (not its stages) differs.
fn creditor_row_changed(before: &CreditorRecord, after: &CreditorRecord) -> bool {
    before.company_name != after.company_name
        || before.title != after.title
        || before.creditor_public_id != after.creditor_public_id
        || before.company_settings != after.company_settings
        || before.invoice_settings != after.invoice_settings
        || before.api_access != after.api_access
        || before.webhooks != after.webhooks
}

/// `error`, noted in `disk_full` if it is a full disk: health reports that until a write commits.
pub(super) fn noted(disk_full: &AtomicBool, error: StorageError) -> StorageError {
    if matches!(error, StorageError::DiskFull(_)) {
        disk_full.store(true, Ordering::Relaxed);
    }
    error
}
