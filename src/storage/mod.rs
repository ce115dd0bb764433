//! Storage: SQLite (one file, WAL) or PostgreSQL behind one API, through sqlx's `Any` driver so each
//! query and the schema (`migrations/`) are written once. Migrations are embedded in the binary and
//! applied at start-up.
//!
//! Every function takes the tenant it works for and scopes its queries by it. Writes go through
//! [`WriteTx`]: one transaction that locks the onboarding row, so concurrent calls for one onboarding
//! are serialised and its audit events are numbered in commit order. SQLite has a single writer
//! connection, which gives the same serialisation within the process.

mod fresh;
mod generations;
mod own_connection;
mod rounds;
mod rows;
mod trail;
mod writes;

#[cfg(test)]
mod test_schema;

pub use generations::Stamps;
pub use trail::AuditedRead;

use crate::crypto::Sealed;
use crate::domain::onboarding::{
    CredentialRecord, CreditorRecord, EventRecord, OnboardingRecord, StageRecord,
};
use crate::domain::validate::TenantId;
use crate::domain::{BlockedOn, CredentialField, Environment, OnboardingState};
use crate::error::{Error, Result};
use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use writes::Expect;

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A SQLite file path (or `sqlite:` URL), or a `postgres://` URL.
    pub database: String,
    pub max_connections: u32,
    /// How long a call waits for a free connection before it fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Onboardings kept in memory between reads (see [`fresh`]); 0 keeps none.
    pub cached_onboardings: usize,
}

/// A connection pool (a separate single writer for SQLite) and the queries of the service.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    reader: AnyPool,
    writes: writes::Writes,
    /// False while the health check cannot reach the database: calls are refused at once with
    /// UNAVAILABLE instead of each waiting out the pool's acquire timeout.
    reachable: Arc<AtomicBool>,
    /// The health check's own connection: a pool busy with calls is not a database away.
    health: Arc<writes::KeptConnection>,
    snapshots: Arc<fresh::Snapshots>,
    /// Write generations shared by the processes on one SQLite file: reads of a kept onboarding
    /// that none of them has written since need not ask the database (see [`fresh`]).
    generations: Option<Arc<generations::Generations>>,
    rows: fresh::Rows,
    trail: trail::Trail,
}

/// Which onboardings to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub environment: Option<Environment>,
    pub state: Option<OnboardingState>,
    pub blocked_on: Option<BlockedOn>,
    /// Only these tenants; every tenant when `None`.
    pub tenants: Option<std::collections::BTreeSet<String>>,
}

/// A stage the reconciler resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStage {
    pub tenant: String,
    pub environment: Environment,
    pub stage: crate::domain::Stage,
    /// The creditor's resource id, for creditor stages.
    pub creditor: Option<String>,
}

/// Counts per state: (environment, state, count) and (environment, stage, state, count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Funnel {
    pub onboardings: Vec<(String, String, i64)>,
    pub stages: Vec<(String, String, String, i64)>,
}

/// A scheduled live check that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationDue {
    pub tenant: String,
    pub environment: Environment,
    /// When it was due: taking it is a compare-and-set on this.
    pub due: i64,
}

/// A stored secret as re-encryption sees it.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub onboarding_id: String,
    /// The creditor's internal id, or empty for the environment.
    pub scope: String,
    pub field: String,
    pub tenant: String,
    pub environment: String,
    pub sealed: Sealed,
}

/// A stored result of a mutating call, looked up by the caller's request_id.
#[derive(Debug, Clone)]
pub struct StoredResult {
    pub method: String,
    pub request_hash: String,
    pub response: String,
}

impl Store {
    /// Connects, creating the SQLite file (and its folder) if it does not exist.
    pub async fn connect(options: &StoreOptions) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url, file) = database_url(&options.database)?;
        let pool_options = || {
            AnyPoolOptions::new()
                .acquire_timeout(options.acquire_timeout)
                .after_connect(move |connection, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            connection
                                // A small page cache per connection: the operating system caches
                                // the file for all of them, and memory stays low however many
                                // connections the pool opens.
                                .execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                                     PRAGMA cache_size = -512;",
                                )
                                .await?;
                        }
                        Ok(())
                    })
                })
        };
        let reader = pool_options()
            .max_connections(options.max_connections.max(1))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        let writer = match backend {
            // SQLite allows one writer at a time; one connection makes writers queue here rather
            // than fail with SQLITE_BUSY.
            Backend::Sqlite => pool_options().max_connections(1).connect(&url).await?,
            Backend::Postgres => reader.clone(),
        };
        let writes = writes::Writes::new(backend, writer, options.acquire_timeout);
        let generations =
            file.as_ref()
                .and_then(|file| match generations::Generations::open(file) {
                    Ok(generations) => Some(Arc::new(generations)),
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "write generations unavailable: every read asks the database"
                        );
                        None
                    }
                });
        let snapshots = Arc::new(fresh::Snapshots::new(options.cached_onboardings));
        Ok(Self {
            backend,
            rows: fresh::Rows::start(
                backend,
                writes::KeptConnection::new(reader.clone(), options.acquire_timeout),
            ),
            trail: trail::Trail::start(
                backend,
                trail::Appends::of(&writes, generations.clone(), file),
                snapshots.clone(),
            ),
            health: Arc::new(writes::KeptConnection::new(
                reader.clone(),
                options.acquire_timeout,
            )),
            reader,
            writes,
            reachable: Arc::new(AtomicBool::new(true)),
            snapshots,
            generations,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!()
            .run(self.writes.pool())
            .await
            .context("applying database migrations")?;
        Ok(())
    }

    /// Whether the database answers `SELECT 1` within `within`, on a connection kept for this (taken
    /// from the pool only at first and after a failure), so that a pool whose connections are all
    /// busy with calls is not taken for a database that cannot be reached. A connection that failed
    /// or did not answer in time is dropped.
    pub async fn ping(&self, within: Duration) -> Result<()> {
        let answered = tokio::time::timeout(within, async {
            let mut held = self.health.take().await?;
            let outcome = sqlx::query("SELECT 1")
                .execute(writes::held_connection(&mut held))
                .await;
            if outcome.is_err() {
                *held = None;
            }
            outcome.map(|_| ()).map_err(db_error)
        })
        .await;
        match answered {
            Ok(outcome) => outcome,
            Err(_) => {
                // Abandoned mid-query: the connection's state is unknown.
                self.health.forget();
                Err(Error::Unavailable {
                    what: "the database",
                    retry_after: Duration::from_secs(1),
                    source: anyhow::anyhow!("no answer to the health check within {within:?}"),
                })
            }
        }
    }

    /// Records what the health check found: while unreachable, every call is refused at once.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// The pool for reads, unless the database is known to be unreachable.
    fn reader(&self) -> Result<&AnyPool> {
        self.check_reachable()?;
        Ok(&self.reader)
    }

    /// Where writes run, unless the database is known to be unreachable.
    fn writer(&self) -> Result<&writes::Writes> {
        self.check_reachable()?;
        Ok(&self.writes)
    }

    fn check_reachable(&self) -> Result<()> {
        if self.reachable.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Error::Unavailable {
                what: "the database",
                retry_after: Duration::from_secs(1),
                source: anyhow::anyhow!("the last health check could not reach it"),
            })
        }
    }

    /// Waits for connections in use to be returned, then closes them.
    pub async fn close(&self) {
        self.writes.close().await;
        self.reader.close().await;
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<WriteTx> {
        WriteTx::begin(
            self.backend,
            self.writer()?,
            Some(self.snapshots.clone()),
            self.generations.clone(),
        )
        .await
    }

    /// What is kept of an onboarding, of whatever revision, with a guarded write to make from it:
    /// a write whose first statement is [`WriteTx::update_onboarding`] from the record given, and
    /// which [`WriteTx::commit_guarded`] makes only if the onboarding is still as kept. `None` where
    /// writes are not guarded (SQLite, whose writes take turns on one connection anyway) or nothing
    /// is kept.
    pub fn kept_for_write(
        &self,
        tenant: &TenantId,
        environment: Environment,
    ) -> Result<Option<(Arc<OnboardingRecord>, WriteTx)>> {
        let Some(tx) = self.begin_guarded()? else {
            return Ok(None);
        };
        let Some(record) = self.kept_onboarding(tenant, environment) else {
            return Ok(None);
        };
        Ok(Some((record, tx)))
    }

    /// A guarded write: its writes go at [`WriteTx::commit_guarded`] as one statement, made only if
    /// every write that must change a number of rows changes that many, every guard holds and no
    /// unique constraint stops it. `None` where writes are not guarded (SQLite).
    pub fn begin_guarded(&self) -> Result<Option<WriteTx>> {
        Ok(self.writer()?.begin_guarded().map(|tx| WriteTx {
            backend: self.backend,
            tx,
            snapshots: None,
            generations: None,
            written: Vec::new(),
        }))
    }

    /// One onboarding with its stages and creditors, as committed before this call (see [`fresh`]).
    /// Shared with other reads of the same revision.
    pub async fn get_onboarding(
        &self,
        tenant: &TenantId,
        environment: Environment,
    ) -> Result<Option<Arc<OnboardingRecord>>> {
        self.check_reachable()?;
        let settled = self.generations.as_ref().and_then(|generations| {
            generations.settled(generations::Slot::of(tenant.as_str(), environment))
        });
        if let Some(settled) = settled
            && let Some(record) = self
                .snapshots
                .settled(tenant.as_str(), environment, settled)
        {
            return Ok(Some(record));
        }
        // Boxed: the futures of the database's reads are many times the size of the rest, which
        // every caller's future would otherwise carry (and move) whether it reads or not.
        Box::pin(self.read_through(tenant, environment, settled)).await
    }

    /// `get_onboarding` when what is kept of the onboarding is not known to be current.
    async fn read_through(
        &self,
        tenant: &TenantId,
        environment: Environment,
        settled: Option<u64>,
    ) -> Result<Option<Arc<OnboardingRecord>>> {
        let observed = settled.unwrap_or(generations::UNSTAMPED);
        let Some(head) = self.rows.get(tenant.as_str(), environment).await? else {
            return Ok(None);
        };
        if let Some(record) = self
            .snapshots
            .current(tenant.as_str(), environment, &head, observed)
        {
            return Ok(Some(record));
        }
        self.load(tenant, environment, observed).await
    }

    /// Reads an onboarding and everything it holds in one snapshot, and keeps it (`None` if it went
    /// away meanwhile), current at `observed`: a generation its slot was settled at before.
    async fn load(
        &self,
        tenant: &TenantId,
        environment: Environment,
        observed: u64,
    ) -> Result<Option<Arc<OnboardingRecord>>> {
        let mut tx = match self.backend {
            // SQLite (WAL): a read transaction sees one snapshot from its first read on.
            Backend::Sqlite => self.reader()?.begin().await,
            Backend::Postgres => {
                self.reader()?
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
        }
        .map_err(db_error)?;
        let row = sqlx::query(rows::SELECT_ONBOARDING)
            .bind(tenant.as_str())
            .bind(environment.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let snapshot = match row {
            Some(row) => load_children(&mut tx, tenant.as_str(), row, observed).await?,
            None => return Ok(None),
        };
        tx.commit().await.map_err(db_error)?;
        let record = snapshot.record.clone();
        self.snapshots.put(Arc::new(snapshot));
        Ok(Some(record))
    }

    /// Up to `limit` onboardings matching `filter`, ordered by (tenant, environment), starting after
    /// `after`. Keyset pagination: rows inserted meanwhile neither shift nor repeat a page.
    pub async fn list_onboardings(
        &self,
        filter: &ListFilter,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<OnboardingRecord>> {
        let (after_tenant, after_environment) = after.unwrap_or(("", ""));
        let found = sqlx::query(rows::LIST_ONBOARDINGS)
            .bind(after_tenant)
            .bind(after_environment)
            .bind(filter.environment.map_or("", Environment::as_str))
            .bind(filter.state.map_or("", OnboardingState::as_str))
            .bind(filter.blocked_on.map_or("", BlockedOn::as_str))
            .bind(limit)
            // Tenant ids hold no commas (they are validated), so a comma-separated list is exact.
            .bind(filter.tenants.as_ref().map_or_else(String::new, |tenants| {
                format!(
                    ",{},",
                    tenants.iter().cloned().collect::<Vec<_>>().join(",")
                )
            }))
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        let mut records = Vec::with_capacity(found.len());
        for row in &found {
            let head = rows::onboarding(row)?;
            if let Some(snapshot) = self.snapshots.get(&head) {
                records.push(snapshot.complete(head));
            } else if let Some(record) = self
                .load(&head.key().tenant, head.environment, generations::UNSTAMPED)
                .await?
            {
                records.push(Arc::unwrap_or_clone(record));
            }
        }
        Ok(records)
    }

    /// Stages the service itself must carry on with: waiting on the system after a transient failure,
    /// or claimed by a call that stopped (its lease ran out), untouched since `quiet_since`.
    pub async fn stages_to_resume(
        &self,
        now: i64,
        quiet_since: i64,
        limit: i64,
    ) -> Result<Vec<PendingStage>> {
        let found = sqlx::query(rows::SELECT_STAGES_TO_RESUME)
            .bind(now)
            .bind(quiet_since)
            .bind(limit)
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        found
            .iter()
            .filter_map(|row| {
                let stage: String = row.try_get("stage").ok()?;
                let environment: String = row.try_get("environment").ok()?;
                Some(Ok(PendingStage {
                    tenant: row.try_get("tenant").ok()?,
                    environment: Environment::parse(&environment)?,
                    stage: crate::domain::Stage::parse(&stage)?,
                    creditor: row
                        .try_get::<String, _>("creditor")
                        .ok()
                        .filter(|c| !c.is_empty()),
                }))
            })
            .collect()
    }

    /// How many onboardings and stages are in each state, per environment: the funnel operators
    /// watch. Every tenant's, for metrics.
    pub async fn funnel(&self) -> Result<Funnel> {
        let onboardings = sqlx::query(rows::COUNT_ONBOARDINGS)
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        let stages = sqlx::query(rows::COUNT_STAGES)
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        let text =
            |row: &AnyRow, column: &str| row.try_get::<String, _>(column).unwrap_or_default();
        let count = |row: &AnyRow| row.try_get::<i64, _>("n").unwrap_or_default();
        Ok(Funnel {
            onboardings: onboardings
                .iter()
                .map(|row| (text(row, "environment"), text(row, "state"), count(row)))
                .collect(),
            stages: stages
                .iter()
                .map(|row| {
                    (
                        text(row, "environment"),
                        text(row, "stage"),
                        text(row, "state"),
                        count(row),
                    )
                })
                .collect(),
        })
    }

    /// Gives each READY or BROKEN onboarding that has no scheduled live check one at `first`.
    pub async fn schedule_validations(&self, first: i64) -> Result<u64> {
        let updated = self
            .writer()?
            .execute(sqlx::query(rows::SCHEDULE_VALIDATIONS).bind(first))
            .await?;
        Ok(updated.rows_affected())
    }

    /// READY and BROKEN onboardings whose live check is due at `now`, the longest due first.
    pub async fn validations_due(&self, now: i64, limit: i64) -> Result<Vec<ValidationDue>> {
        let found = sqlx::query(rows::SELECT_VALIDATIONS_DUE)
            .bind(now)
            .bind(limit)
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        Ok(found
            .iter()
            .filter_map(|row| {
                let environment: String = row.try_get("environment").ok()?;
                Some(ValidationDue {
                    tenant: row.try_get("tenant").ok()?,
                    environment: Environment::parse(&environment)?,
                    due: row.try_get("next_validation_time").ok()?,
                })
            })
            .collect())
    }

    /// Takes a due check for this replica by moving it to `next`: `false` when another replica
    /// took it first.
    pub async fn take_validation(&self, due: &ValidationDue, next: i64) -> Result<bool> {
        let updated = self
            .writer()?
            .execute(
                sqlx::query(rows::TAKE_VALIDATION)
                    .bind(next)
                    .bind(&due.tenant)
                    .bind(due.environment.as_str())
                    .bind(due.due),
            )
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Deletes up to `limit` results stored under request_ids before `before`; how many it deleted.
    pub async fn expire_results(&self, before: i64, limit: i64) -> Result<u64> {
        let deleted = self
            .writer()?
            .execute(
                sqlx::query(rows::DELETE_EXPIRED_RESULTS)
                    .bind(before)
                    .bind(limit),
            )
            .await?;
        Ok(deleted.rows_affected())
    }

    /// Every stored secret not encrypted with `active_key_id`, with what its decryption needs.
    pub async fn credentials_to_reencrypt(&self, active_key_id: &str) -> Result<Vec<StoredSecret>> {
        let found = sqlx::query(rows::SELECT_CREDENTIALS_TO_REENCRYPT)
            .bind(active_key_id)
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        found
            .iter()
            .map(|row| {
                Ok(StoredSecret {
                    onboarding_id: row.try_get("onboarding_id").map_err(db_error)?,
                    scope: row.try_get("creditor_id").map_err(db_error)?,
                    field: row.try_get("field").map_err(db_error)?,
                    tenant: row.try_get("tenant").map_err(db_error)?,
                    environment: row.try_get("environment").map_err(db_error)?,
                    sealed: rows::sealed(row)?,
                })
            })
            .collect()
    }

    /// Replaces a stored ciphertext, but only if it is still `old`: a secret written meanwhile (by a
    /// call of the running service) is left as it is. Says whether it replaced it.
    pub async fn replace_sealed(&self, secret: &StoredSecret, new: &Sealed) -> Result<bool> {
        let updated = self
            .writer()?
            .execute(
                sqlx::query(rows::REPLACE_SEALED)
                    .bind(&new.key_id)
                    .bind(&new.nonce)
                    .bind(&new.ciphertext)
                    .bind(&secret.onboarding_id)
                    .bind(&secret.scope)
                    .bind(&secret.field)
                    .bind(&secret.tenant)
                    .bind(&secret.sealed.key_id)
                    .bind(&secret.sealed.nonce),
            )
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// A stored secret of `record`'s onboarding, if one is stored: the one of `record`'s revision
    /// when that is kept in memory.
    pub async fn sealed_credential(
        &self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Result<Option<Sealed>> {
        if let Some(kept) = self.snapshots.sealed(record, scope, field) {
            return Ok(kept);
        }
        self.stored_sealed(record, scope, field).await
    }

    /// A stored secret's ciphertext as the database holds it now.
    pub async fn stored_sealed(
        &self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Result<Option<Sealed>> {
        let row = sqlx::query(rows::SELECT_SEALED)
            .bind(&record.id)
            .bind(&record.tenant)
            .bind(scope)
            .bind(field.as_str())
            .fetch_optional(self.reader()?)
            .await
            .map_err(db_error)?;
        row.as_ref().map(rows::sealed).transpose()
    }

    /// Keeps what a committed write left: `after`, written over `before` (as read under the write's
    /// lock) with `secrets` stored and `removed` deleted, current at the write's `stamps`. Kept only
    /// if what `before` was read from is kept, so the ciphertexts the write did not touch are known;
    /// the next read or write of the onboarding then need not read it back.
    pub fn remember_write(
        &self,
        before: &OnboardingRecord,
        after: &OnboardingRecord,
        secrets: &[(CredentialRecord, Sealed)],
        removed: &[(String, CredentialField)],
        stamps: &Stamps,
    ) {
        let Some(previous) = self.snapshots.get(before) else {
            return;
        };
        let replaced = |scope: &str, field: CredentialField| {
            removed.iter().any(|(s, f)| s == scope && *f == field)
                || secrets
                    .iter()
                    .any(|(credential, _)| credential.scope == scope && credential.field == field)
        };
        let mut sealed: Vec<_> = previous
            .sealed
            .iter()
            .filter(|(scope, field, _)| !replaced(scope, *field))
            .cloned()
            .collect();
        sealed.extend(secrets.iter().map(|(credential, ciphertext)| {
            (
                credential.scope.clone(),
                credential.field,
                ciphertext.clone(),
            )
        }));
        self.keep(after, sealed, stamps);
    }

    /// Keeps an onboarding a committed write created (it has no secrets yet), current at the
    /// write's `stamps`: its next write need not read it back.
    pub fn remember_created(&self, record: &OnboardingRecord, stamps: &Stamps) {
        self.keep(record, Vec::new(), stamps);
    }

    fn keep(
        &self,
        record: &OnboardingRecord,
        sealed: Vec<(String, CredentialField, Sealed)>,
        stamps: &Stamps,
    ) {
        let mut record = record.clone();
        in_stored_order(&mut record);
        let stamp = stamps.of(&record.tenant, record.environment);
        self.snapshots.put(Arc::new(fresh::Snapshot::new(
            Arc::new(record),
            sealed,
            stamp,
        )));
    }

    /// Forgets what is kept of `record`'s onboarding, so the next read asks the database.
    pub fn forget(&self, record: &OnboardingRecord) {
        self.snapshots.forget(record);
    }

    /// What is kept of an onboarding, of whatever revision, without asking the database: only for a
    /// read whose answer is confirmed afterwards by [`Store::append_read_event`], which writes the
    /// read's event only if the onboarding is still at the revision the answer was read at.
    pub fn kept_onboarding(
        &self,
        tenant: &TenantId,
        environment: Environment,
    ) -> Option<Arc<OnboardingRecord>> {
        self.snapshots.unconfirmed(tenant.as_str(), environment)
    }

    /// Writes the audit event of an answered read (see [`trail`]): its sequence number, or `None`
    /// when the onboarding changed after the read (nothing is written; read again).
    pub async fn append_read_event(&self, read: AuditedRead) -> Result<Option<i64>> {
        self.check_reachable()?;
        self.trail.append(read).await
    }

    /// Up to `limit` events of an onboarding with a sequence number above `after`, oldest first.
    pub async fn list_events(
        &self,
        tenant: &TenantId,
        onboarding_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        let found = sqlx::query(rows::LIST_EVENTS)
            .bind(onboarding_id)
            .bind(tenant.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(self.reader()?)
            .await
            .map_err(db_error)?;
        found.iter().map(rows::event).collect()
    }
}

/// The rows of one child table (`query` takes the onboarding id and the tenant).
async fn children(
    connection: &mut sqlx::AnyConnection,
    query: &'static str,
    onboarding_id: &str,
    tenant: &str,
) -> Result<Vec<AnyRow>> {
    sqlx::query(query)
        .bind(onboarding_id)
        .bind(tenant)
        .fetch_all(&mut *connection)
        .await
        .map_err(db_error)
}

/// Reads an onboarding row's stages, creditors and credentials (with their ciphertexts).
async fn load_children(
    connection: &mut sqlx::AnyConnection,
    tenant: &str,
    row: AnyRow,
    stamp: u64,
) -> Result<fresh::Snapshot> {
    let mut record = rows::onboarding(&row)?;
    let stage_rows = children(connection, rows::SELECT_STAGES, &record.id, tenant).await?;
    let creditor_rows = children(connection, rows::SELECT_CREDITORS, &record.id, tenant).await?;
    let credential_rows =
        children(connection, rows::SELECT_CREDENTIALS, &record.id, tenant).await?;
    record.credentials = credential_rows
        .iter()
        .map(rows::credential)
        .collect::<Result<Vec<_>>>()?;
    let sealed = credential_rows
        .iter()
        .zip(&record.credentials)
        .map(|(row, credential)| {
            Ok((
                credential.scope.clone(),
                credential.field,
                rows::sealed(row)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let key = record.key();
    record.creditors = creditor_rows
        .iter()
        .map(|row| rows::creditor(&key, row))
        .collect::<Result<Vec<_>>>()?;
    for row in &stage_rows {
        let (creditor_id, stage) = rows::stage(row)?;
        if creditor_id.is_empty() {
            record.stages.push(stage);
        } else if let Some(creditor) = record.creditors.iter_mut().find(|c| c.id == creditor_id) {
            creditor.stages.push(stage);
        }
    }
    in_stored_order(&mut record);
    Ok(fresh::Snapshot::new(Arc::new(record), sealed, stamp))
}

/// Puts what an onboarding holds in one order, however it was put together — read from the
/// database or kept after a write — so that every replica answers alike.
fn in_stored_order(record: &mut OnboardingRecord) {
    record.stages.sort_by_key(|s| s.stage);
    record
        .creditors
        .sort_by(|a, b| a.name.rsplit('/').next().cmp(&b.name.rsplit('/').next()));
    for creditor in &mut record.creditors {
        creditor.stages.sort_by_key(|s| s.stage);
    }
    record
        .credentials
        .sort_by(|a, b| (&a.scope, a.field.as_str()).cmp(&(&b.scope, b.field.as_str())));
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
    tx: writes::Tx,
    /// What is kept of onboardings in memory, for [`WriteTx::lock_onboarding`].
    snapshots: Option<Arc<fresh::Snapshots>>,
    /// The write generations to move for the onboardings this transaction writes (SQLite).
    generations: Option<Arc<generations::Generations>>,
    /// Their slots.
    written: Vec<generations::Slot>,
}

impl WriteTx {
    async fn begin(
        backend: Backend,
        writes: &writes::Writes,
        snapshots: Option<Arc<fresh::Snapshots>>,
        generations: Option<Arc<generations::Generations>>,
    ) -> Result<Self> {
        Ok(Self {
            backend,
            tx: writes.begin().await?,
            snapshots,
            generations,
            written: Vec::new(),
        })
    }

    /// Notes that this transaction writes the onboarding of `tenant` in `environment` (its revision
    /// or its audit trail), so that its COMMIT moves the onboarding's write generation.
    pub(super) fn writes_onboarding(&mut self, tenant: &str, environment: Environment) {
        if self.generations.is_some() {
            let slot = generations::Slot::of(tenant, environment);
            if !self.written.contains(&slot) {
                self.written.push(slot);
            }
        }
    }

    /// Reads an onboarding for update: on PostgreSQL the row stays locked until the transaction ends,
    /// so concurrent writers of one onboarding take turns and none loses an update. With
    /// `result_of`, also the stored result of an earlier call of the tenant with that request_id
    /// (read together, in one round trip on SQLite).
    pub async fn lock_onboarding(
        &mut self,
        tenant: &TenantId,
        environment: Environment,
        result_of: Option<&str>,
    ) -> Result<Locked> {
        // On PostgreSQL the stored result comes in the same statement, as columns beside the row.
        let beside = self.backend == Backend::Postgres && result_of.is_some();
        let query = match (self.backend, beside) {
            (Backend::Sqlite, _) => rows::SELECT_ONBOARDING,
            (Backend::Postgres, false) => rows::SELECT_ONBOARDING_FOR_UPDATE,
            (Backend::Postgres, true) => rows::SELECT_ONBOARDING_FOR_UPDATE_WITH_RESULT,
        };
        let mut onboarding = self
            .tx
            .read(query)
            .bind(tenant.as_str())
            .bind(environment.as_str());
        if beside {
            onboarding = onboarding.bind(result_of);
        }
        let onboarding = onboarding.later().await?;
        let result = match result_of {
            Some(request_id) if !beside => {
                Some(self.result_read(tenant, request_id).later().await?)
            }
            _ => None,
        };
        let onboarding = self.tx.rows(onboarding).await?.into_iter().next();
        let result = match (result, &onboarding, result_of) {
            (Some(read), _, _) => match self.tx.rows(read).await?.first() {
                Some(row) => rows::stored_result(row)?,
                None => None,
            },
            (None, Some(row), Some(_)) => rows::stored_result(row)?,
            // No onboarding to find the result beside: the result alone.
            (None, None, Some(request_id)) => {
                match self
                    .result_read(tenant, request_id)
                    .fetch_optional()
                    .await?
                {
                    Some(row) => rows::stored_result(&row)?,
                    None => None,
                }
            }
            (None, _, None) => None,
        };
        let Some(row) = onboarding else {
            return Ok(Locked {
                record: None,
                result,
            });
        };
        // The row is locked (PostgreSQL) or the database is (SQLite): nothing it holds can change
        // until this transaction ends, so what is kept of its revision is what the database holds.
        let head = rows::onboarding(&row)?;
        if let Some(snapshot) = self.snapshots.as_ref().and_then(|kept| kept.get(&head)) {
            return Ok(Locked {
                record: Some(snapshot.complete(head)),
                result,
            });
        }
        let snapshot = load_children(
            self.tx.connection().await?,
            tenant.as_str(),
            row,
            generations::UNSTAMPED,
        )
        .await?;
        let record = OnboardingRecord::clone(&snapshot.record);
        if let Some(kept) = &self.snapshots {
            kept.put(Arc::new(snapshot));
        }
        Ok(Locked {
            record: Some(record),
            result,
        })
    }

    /// Guards a guarded write (see [`Store::kept_for_write`]): made only if no result is stored
    /// under the tenant's `request_id`.
    pub async fn guard_no_result(&mut self, tenant: &TenantId, request_id: &str) -> Result<()> {
        self.tx
            .guard(rows::SELECT_RESULT)
            .bind(tenant.as_str())
            .bind(request_id)
            .run(Expect::changes(
                0,
                format!("a result is stored under request_id {request_id}"),
            ))
            .await
    }

    /// Commits a guarded write (see [`Store::kept_for_write`]): `None` when a guard failed and
    /// nothing was written (make the write again under the onboarding's lock).
    pub async fn commit_guarded(self) -> Result<Option<Stamps>> {
        Ok(self.tx.commit_guarded().await?.then(Stamps::default))
    }

    /// The read of the stored result of the tenant's `request_id`.
    fn result_read(&mut self, tenant: &TenantId, request_id: &str) -> writes::Statement<'_> {
        self.tx
            .read(rows::SELECT_RESULT)
            .bind(tenant.as_str())
            .bind(request_id)
    }

    /// Stores a call's result under its request_id.
    pub async fn save_result(
        &mut self,
        tenant: &TenantId,
        request_id: &str,
        result: &StoredResult,
        now: i64,
    ) -> Result<()> {
        self.tx
            .write(rows::INSERT_RESULT)
            .bind(tenant.as_str())
            .bind(request_id)
            .bind(&result.method)
            .bind(&result.request_hash)
            .bind(&result.response)
            .bind(now)
            .run(Expect::conflict(
                // Another call of this tenant stored a result under the same id meanwhile (the same
                // call is serialised by the onboarding lock, so this one is a different request).
                Error::RequestIdReused {
                    request_id: request_id.to_owned(),
                },
            ))
            .await
    }

    /// Inserts a new onboarding with its stages. A second onboarding for the same tenant and
    /// environment is [`Error::AlreadyExists`], even when created concurrently.
    pub async fn insert_onboarding(&mut self, record: &OnboardingRecord) -> Result<()> {
        self.writes_onboarding(&record.tenant, record.environment);
        self.tx
            .write(rows::INSERT_ONBOARDING)
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
            .run(Expect::conflict(Error::AlreadyExists {
                resource: record.key().name(),
            }))
            .await?;
        for stage in &record.stages {
            self.upsert_stage(record, "", stage).await?;
        }
        for creditor in &record.creditors {
            self.insert_creditor(record, creditor).await?;
            for stage in &creditor.stages {
                self.upsert_stage(record, &creditor.id, stage).await?;
            }
        }
        Ok(())
    }

    /// Writes a changed onboarding: the row (only if still at `before`'s version, revision and last
    /// event) and the stages that changed. In a guarded write this is the guard, and comes first.
    pub async fn update_onboarding(
        &mut self,
        before: &OnboardingRecord,
        after: &OnboardingRecord,
    ) -> Result<()> {
        // What replicas keep in memory is valid while the revision stands (see `fresh`).
        if after.revision <= before.revision {
            return Err(Error::Internal(anyhow::anyhow!(
                "a write of onboarding {} did not move its revision",
                after.id
            )));
        }
        self.writes_onboarding(&after.tenant, after.environment);
        self.tx
            .write(rows::UPDATE_ONBOARDING)
            .bind(after.state.as_str())
            .bind(after.blocked_on.as_str())
            .bind(after.version)
            .bind(after.last_event)
            .bind(rows::json_opt(&after.agreement)?)
            .bind(rows::json_opt(&after.account)?)
            .bind(after.update_time)
            .bind(after.revision)
            .bind(&after.id)
            .bind(&after.tenant)
            .bind(before.version)
            .bind(before.revision)
            .bind(before.last_event)
            .run(Expect::changes(
                1,
                format!("onboarding {} changed underneath its update", after.id),
            ))
            .await?;
        for stage in &after.stages {
            if !before.stages.contains(stage) {
                self.upsert_stage(after, "", stage).await?;
            }
        }
        for creditor in &after.creditors {
            let previous: Option<&CreditorRecord> =
                before.creditors.iter().find(|c| c.id == creditor.id);
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
        Ok(())
    }

    async fn insert_creditor(
        &mut self,
        record: &OnboardingRecord,
        creditor: &CreditorRecord,
    ) -> Result<()> {
        let resource_id = creditor.name.rsplit('/').next().unwrap_or_default();
        self.tx
            .write(rows::INSERT_CREDITOR)
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
            .run(Expect::conflict(Error::AlreadyExists {
                resource: creditor.name.clone(),
            }))
            .await
    }

    async fn update_creditor(
        &mut self,
        record: &OnboardingRecord,
        creditor: &CreditorRecord,
    ) -> Result<()> {
        self.tx
            .write(rows::UPDATE_CREDITOR)
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
            .run(Expect::default())
            .await
    }

    /// Stores a secret's ciphertext with what reads show of it, replacing the previous one.
    pub async fn put_credential(
        &mut self,
        record: &OnboardingRecord,
        credential: &CredentialRecord,
        sealed: &Sealed,
    ) -> Result<()> {
        self.tx
            .write(rows::UPSERT_CREDENTIAL)
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
            .run(Expect::default())
            .await
    }

    /// Forgets a stored secret (one that no longer belongs with the others).
    pub async fn delete_credential(
        &mut self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Result<()> {
        self.tx
            .write(rows::DELETE_CREDENTIAL)
            .bind(&record.id)
            .bind(scope)
            .bind(field.as_str())
            .bind(&record.tenant)
            .run(Expect::default())
            .await
    }

    async fn upsert_stage(
        &mut self,
        record: &OnboardingRecord,
        creditor_id: &str,
        stage: &StageRecord,
    ) -> Result<()> {
        self.tx
            .write(rows::UPSERT_STAGE)
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
            .run(Expect::default())
            .await
    }

    /// Appends an event to an onboarding's audit trail.
    pub async fn append_event(
        &mut self,
        record: &OnboardingRecord,
        event: &EventRecord,
    ) -> Result<()> {
        self.insert_events(&record.id, &record.tenant, &[(event.sequence, event)])
            .await
    }

    /// Appends events to an onboarding's audit trail (each under the sequence number paired with
    /// it), many per statement.
    async fn insert_events(
        &mut self,
        onboarding_id: &str,
        tenant: &str,
        events: &[(i64, &EventRecord)],
    ) -> Result<()> {
        for chunk in events.chunks(rows::EVENTS_PER_INSERT) {
            let mut query = self
                .tx
                .write(rows::insert_events(self.backend, chunk.len()))
                .reserve(chunk.len() * rows::EVENT_VALUES);
            for (sequence, event) in chunk {
                query = query
                    .bind(onboarding_id)
                    .bind(*sequence)
                    .bind(tenant)
                    .bind(event.event_time)
                    .bind(&event.actor)
                    .bind(&event.method)
                    .bind(&event.request_id)
                    .bind(&event.correlation_id)
                    .bind(&event.outcome)
                    .bind(&event.summary)
                    .bind(rows::json(&event.transitions)?);
            }
            query.run(Expect::default()).await?;
        }
        Ok(())
    }

    /// Commits; what the transaction wrote is current at the returned stamps. On SQLite the COMMIT of
    /// a write of onboardings runs to its end even if the caller goes away meanwhile, since their
    /// write generations must not settle before the outcome is known.
    pub async fn commit(self) -> Result<Stamps> {
        let Self {
            tx,
            generations,
            written,
            ..
        } = self;
        match generations.filter(|_| !written.is_empty()) {
            None => tx.commit(None).await,
            Some(generations) => {
                tokio::spawn(async move { tx.commit(Some((&generations, written))).await })
                    .await
                    .map_err(|e| Error::Internal(e.into()))?
            }
        }
    }
}

/// Turns a database error into the service's error: connection trouble is UNAVAILABLE (the call may
/// be retried), anything else internal.
pub fn db_error(error: sqlx::Error) -> Error {
    let unavailable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // PostgreSQL ending the session, and SQLite's "busy"/"locked".
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| session_ending(&code) || code == "5" || code == "6"),
        _ => false,
    };
    classified(error, unavailable)
}

/// PostgreSQL's codes for a session that is ending: class 08 (connection exception) and 57P0x (the
/// server shutting down or restarting).
fn session_ending(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

/// A database's error as the service's: UNAVAILABLE if `unavailable`, internal otherwise.
fn classified<E: std::error::Error + Send + Sync + 'static>(error: E, unavailable: bool) -> Error {
    if unavailable {
        Error::Unavailable {
            what: "the database",
            retry_after: Duration::from_secs(1),
            source: error.into(),
        }
    } else {
        Error::Internal(anyhow::Error::new(error).context("database query failed"))
    }
}

/// The sqlx URL and backend for a `database` setting: a `postgres://` URL, a `sqlite:` URL, or a
/// plain file path for SQLite.
fn database_url(database: &str) -> anyhow::Result<(Backend, String, Option<PathBuf>)> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return Ok((Backend::Postgres, database.to_owned(), None));
    }
    if let Some(rest) = database.strip_prefix("sqlite:") {
        let (path, parameters) = rest.split_once('?').unwrap_or((rest, ""));
        let path = path.strip_prefix("//").unwrap_or(path);
        let in_memory = path.is_empty() || path == ":memory:" || parameters.contains("mode=memory");
        let file = (!in_memory).then(|| PathBuf::from(path));
        return Ok((Backend::Sqlite, database.to_owned(), file));
    }
    anyhow::ensure!(!database.is_empty(), "the database setting is empty");
    let path = Path::new(database);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok((
        Backend::Sqlite,
        format!("sqlite://{database}?mode=rwc"),
        Some(path.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_busy_with_calls_is_not_a_database_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&StoreOptions {
            database: dir.path().join("busy.sqlite3").display().to_string(),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            cached_onboardings: 0,
        })
        .await
        .unwrap();
        let within = Duration::from_millis(300);
        store.ping(within).await.unwrap();
        // Every pooled connection taken by calls, and held longer than the check waits.
        let mut busy = Vec::new();
        for _ in 0..2 {
            busy.push(store.reader.acquire().await.unwrap());
        }
        store
            .ping(within)
            .await
            .expect("the database still answers");
        drop(busy);
        store.close().await;
    }
}
