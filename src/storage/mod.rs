//! Storage: SQLite (one file, WAL) or PostgreSQL behind one API, through sqlx's `Any` driver so each
//! query and the schema (`migrations/`) are written once. Migrations are embedded in the binary and
//! applied at start-up.
//!
//! Every function takes the tenant it works for and scopes its queries by it, but for the few that
//! serve the whole service (the reconciler's queues, metrics, key rotation). Every write is one
//! transaction that first takes the onboarding's lock ([`WriteTx`]). Reads may be answered from
//! [`cache`], but only after the onboarding's revision has been read and found unchanged.

mod cache;
mod error;
mod kept;
mod rows;
mod write;

pub use error::StorageError;
pub use write::{Locked, WriteTx};

use crate::crypto::Sealed;
use crate::domain::onboarding::{EventRecord, OnboardingRecord};
use crate::domain::validate::TenantId;
use crate::domain::{BlockedOn, CredentialField, Environment, OnboardingState};
use anyhow::Context;
use cache::{Cache, Snapshot};
use kept::Kept;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor, Row};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A statement with its values bound.
type Statement<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// How long a pooled connection may sit idle before it is tested on its way out (a database
/// restart in between leaves it dead).
const TEST_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Connections for calls when none are configured. SQLite's readers share one file on one
    /// machine, and each connection costs a thread and a page cache: a few do as much as many.
    pub fn default_connections(self) -> u32 {
        match self {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A SQLite file path (or `sqlite:` URL), or a `postgres://` URL.
    pub database: String,
    /// Connections for calls; `None` for the engine's default (see [`Backend::default_connections`]).
    pub max_connections: Option<u32>,
    /// How long a call waits for a free connection before it fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Onboardings kept in memory between reads (see [`cache`]); 0 keeps none.
    pub cached_onboardings: usize,
}

/// The connection pools and the queries of the service.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    reader: AnyPool,
    /// SQLite: one connection, so that writers queue here for the database's single write lock
    /// rather than fail with SQLITE_BUSY. PostgreSQL: the reader pool.
    writer: AnyPool,
    /// Connections of `reader` and `writer` kept for the statements on every call's path.
    reads: Arc<Kept>,
    writes: Arc<Kept>,
    /// The health check's own connection: a pool busy with calls is not a database away.
    health: AnyPool,
    /// False while the health check cannot reach the database: calls are refused at once with
    /// UNAVAILABLE instead of each waiting out the pool's acquire timeout.
    reachable: Arc<AtomicBool>,
    /// Set by a write refused for a full disk, cleared by the next write that commits: health
    /// reports it, and reads go on meanwhile.
    disk_full: Arc<AtomicBool>,
    cache: Arc<Cache>,
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
        let (backend, url) = database_url(&options.database)?;
        let pool_options = |connections: u32| {
            AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(options.acquire_timeout)
                // A connection is tested before use only after it sat idle: one in steady use has
                // just answered, and a test before every query would double its round trips.
                .test_before_acquire(false)
                .before_acquire(|connection, meta| {
                    Box::pin(async move {
                        Ok(meta.idle_for < TEST_AFTER_IDLE || connection.ping().await.is_ok())
                    })
                })
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
        let connections = options
            .max_connections
            .unwrap_or(backend.default_connections())
            .max(1);
        let reader = pool_options(connections)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        let writer = match backend {
            Backend::Sqlite => pool_options(1).connect(&url).await?,
            Backend::Postgres => reader.clone(),
        };
        let health = pool_options(1).connect_lazy(&url)?;
        let reads = Kept::new(reader.clone(), connections, options.acquire_timeout);
        let writes = match backend {
            Backend::Sqlite => Kept::new(writer.clone(), 1, options.acquire_timeout),
            Backend::Postgres => reads.clone(),
        };
        Ok(Self {
            backend,
            reader,
            writer,
            reads,
            writes,
            health,
            reachable: Arc::new(AtomicBool::new(true)),
            disk_full: Arc::new(AtomicBool::new(false)),
            cache: Arc::new(Cache::new(options.cached_onboardings)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!()
            .run(&self.writer)
            .await
            .context("applying database migrations")?;
        Ok(())
    }

    /// Whether the database answers `SELECT 1` within `within`, on the health check's own
    /// connection. While a write refused for a full disk is noted, it also tries a small write of
    /// its own, and the note stands until a write commits: the database answers, but cannot do all
    /// of its work.
    pub async fn ping(&self, within: Duration) -> Result<()> {
        let check = async {
            sqlx::query("SELECT 1")
                .execute(&self.health)
                .await
                .map_err(db_error)?;
            if self.disk_full.load(Ordering::Relaxed) {
                // Through the kept connections: on SQLite the writer pool's one connection may
                // be kept there, and the pool itself would have none to give.
                let probe = sqlx::query(rows::PROBE_WRITE).bind(crate::domain::now_micros());
                self.execute(probe).await?;
                self.disk_full.store(false, Ordering::Relaxed);
            }
            Ok(())
        };
        tokio::time::timeout(within, check)
            .await
            .unwrap_or_else(|_| {
                Err(StorageError::Unreachable(anyhow::anyhow!(
                    "no answer to the health check within {within:?}"
                )))
            })
    }

    /// Records what the health check found: while unreachable, every call is refused at once.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    fn check_reachable(&self) -> Result<()> {
        if self.reachable.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(StorageError::Unreachable(anyhow::anyhow!(
                "the last health check could not reach it"
            )))
        }
    }

    /// One statement's rows, on a kept connection of `kept`.
    async fn fetch_all(&self, kept: &Arc<Kept>, query: Statement<'_>) -> Result<Vec<AnyRow>> {
        self.check_reachable()?;
        let mut held = kept.take().await?;
        let rows = query.fetch_all(held.connection()).await.map_err(db_error)?;
        held.settled();
        Ok(rows)
    }

    /// One statement's row, if any, on a kept connection of `kept`.
    async fn fetch_optional(
        &self,
        kept: &Arc<Kept>,
        query: Statement<'_>,
    ) -> Result<Option<AnyRow>> {
        self.check_reachable()?;
        let mut held = kept.take().await?;
        let row = query
            .fetch_optional(held.connection())
            .await
            .map_err(db_error)?;
        held.settled();
        Ok(row)
    }

    /// How many rows one statement changed, on a kept connection of the writer.
    async fn execute(&self, query: Statement<'_>) -> Result<u64> {
        self.check_reachable()?;
        let mut held = self.writes.take().await?;
        let done = query
            .execute(held.connection())
            .await
            .map_err(|error| write::noted(&self.disk_full, db_error(error)))?;
        held.settled();
        Ok(done.rows_affected())
    }

    /// Waits for connections in use to be returned, then closes them.
    pub async fn close(&self) {
        self.reads.release();
        self.writes.release();
        self.writer.close().await;
        self.reader.close().await;
        self.health.close().await;
    }

    /// Starts a write: a transaction that has taken the database's write lock (SQLite) and takes
    /// the onboarding's row lock when it reads it ([`WriteTx::lock_onboarding`]).
    pub async fn begin(&self) -> Result<WriteTx> {
        self.check_reachable()?;
        WriteTx::begin(
            self.backend,
            &self.writes,
            self.cache.clone(),
            self.disk_full.clone(),
        )
        .await
    }

    /// One onboarding with its stages and creditors, as committed before this call. Reads the
    /// onboarding's revision, then answers from [`cache`] if it keeps that revision.
    pub async fn get_onboarding(
        &self,
        tenant: &TenantId,
        environment: Environment,
    ) -> Result<Option<Arc<OnboardingRecord>>> {
        let revision = sqlx::query(rows::SELECT_REVISION)
            .bind(tenant.as_str())
            .bind(environment.as_str());
        let Some(row) = self.fetch_optional(&self.reads, revision).await? else {
            return Ok(None);
        };
        let id: String = row.try_get("id").map_err(db_error)?;
        let revision: i64 = row.try_get("revision").map_err(db_error)?;
        if let Some(kept) = self.cache.at(tenant.as_str(), environment, &id, revision) {
            return Ok(Some(kept.record.clone()));
        }
        Ok(self
            .load(tenant, environment)
            .await?
            .map(|snapshot| snapshot.record.clone()))
    }

    /// Reads an onboarding and everything it holds in one snapshot, and keeps it.
    async fn load(
        &self,
        tenant: &TenantId,
        environment: Environment,
    ) -> Result<Option<Arc<Snapshot>>> {
        self.check_reachable()?;
        let mut held = self.reads.take().await?;
        let begin = match self.backend {
            // SQLite (WAL): a read transaction sees one snapshot from its first read on.
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        let read = async {
            let connection = held.connection();
            connection.execute(begin).await.map_err(db_error)?;
            let row = sqlx::query(rows::SELECT_ONBOARDING)
                .bind(tenant.as_str())
                .bind(environment.as_str())
                .fetch_optional(&mut *connection)
                .await
                .map_err(db_error)?;
            let snapshot = match row {
                Some(row) => Some(load_children(connection, rows::onboarding(&row)?).await?),
                None => None,
            };
            connection.execute("COMMIT").await.map_err(db_error)?;
            Ok(snapshot)
        };
        let snapshot = match read.await {
            Ok(snapshot) => snapshot.map(Arc::new),
            Err(error) => {
                // Perhaps still inside the read's transaction: not kept.
                held.discard();
                return Err(error);
            }
        };
        held.settled();
        if let Some(snapshot) = &snapshot {
            self.cache.put(snapshot.clone());
        }
        Ok(snapshot)
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
        let found = self
            .fetch_all(
                &self.reads,
                sqlx::query(rows::LIST_ONBOARDINGS)
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
                    })),
            )
            .await?;
        let mut records = Vec::with_capacity(found.len());
        for row in &found {
            let head = rows::onboarding(row)?;
            let kept = self
                .cache
                .at(&head.tenant, head.environment, &head.id, head.revision);
            let snapshot = match kept {
                Some(snapshot) => Some(snapshot),
                None => self.load(&head.key().tenant, head.environment).await?,
            };
            if let Some(snapshot) = snapshot {
                records.push(OnboardingRecord::clone(&snapshot.record));
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
        let found = self
            .fetch_all(
                &self.reads,
                sqlx::query(rows::SELECT_STAGES_TO_RESUME)
                    .bind(now)
                    .bind(quiet_since)
                    .bind(limit),
            )
            .await?;
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
        let onboardings = self
            .fetch_all(&self.reads, sqlx::query(rows::COUNT_ONBOARDINGS))
            .await?;
        let stages = self
            .fetch_all(&self.reads, sqlx::query(rows::COUNT_STAGES))
            .await?;
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
            .execute(sqlx::query(rows::SCHEDULE_VALIDATIONS).bind(first))
            .await?;
        Ok(updated)
    }

    /// READY and BROKEN onboardings whose live check is due at `now`, the longest due first.
    pub async fn validations_due(&self, now: i64, limit: i64) -> Result<Vec<ValidationDue>> {
        let found = self
            .fetch_all(
                &self.reads,
                sqlx::query(rows::SELECT_VALIDATIONS_DUE)
                    .bind(now)
                    .bind(limit),
            )
            .await?;
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
            .execute(
                sqlx::query(rows::TAKE_VALIDATION)
                    .bind(next)
                    .bind(&due.tenant)
                    .bind(due.environment.as_str())
                    .bind(due.due),
            )
            .await?;
        Ok(updated == 1)
    }

    /// Deletes up to `limit` results stored under request_ids before `before`; how many it deleted.
    pub async fn expire_results(&self, before: i64, limit: i64) -> Result<u64> {
        let deleted = self
            .execute(
                sqlx::query(rows::DELETE_EXPIRED_RESULTS)
                    .bind(before)
                    .bind(limit),
            )
            .await?;
        Ok(deleted)
    }

    /// The onboardings (tenant, environment) that still hold secrets stored before credentials were
    /// kept per Billecta user, for the start-up upgrade: a work list across tenants.
    pub async fn legacy_credentials(&self) -> Result<Vec<(String, Environment)>> {
        let found = self
            .fetch_all(&self.reads, sqlx::query(rows::SELECT_LEGACY_CREDENTIALS))
            .await?;
        found
            .iter()
            .map(|row| {
                let environment: String = row.try_get("environment").map_err(db_error)?;
                let environment = Environment::parse(&environment).ok_or_else(|| {
                    StorageError::internal(format!(
                        "stored environment {environment:?} is not known"
                    ))
                })?;
                Ok((row.try_get("tenant").map_err(db_error)?, environment))
            })
            .collect()
    }

    /// Every stored secret not encrypted with `active_key_id`, with what its decryption needs.
    pub async fn credentials_to_reencrypt(&self, active_key_id: &str) -> Result<Vec<StoredSecret>> {
        let found = self
            .fetch_all(
                &self.reads,
                sqlx::query(rows::SELECT_CREDENTIALS_TO_REENCRYPT).bind(active_key_id),
            )
            .await?;
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

    /// Replaces a stored ciphertext, but only if it is still `secret`'s: a secret written meanwhile
    /// (by a call of the running service) is left as it is. Says whether it replaced it. Moves the
    /// onboarding's revision on, as every write of what an onboarding holds does.
    pub async fn replace_sealed(&self, secret: &StoredSecret, new: &Sealed) -> Result<bool> {
        let mut tx = self.begin().await?;
        let replaced = tx.replace_sealed(secret, new).await?;
        tx.commit().await?;
        Ok(replaced)
    }

    /// A stored secret of `record`'s onboarding, if one is stored: the one of `record`'s revision
    /// when that is kept in memory.
    pub async fn sealed_credential(
        &self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Result<Option<Sealed>> {
        let kept = self.cache.at(
            &record.tenant,
            record.environment,
            &record.id,
            record.revision,
        );
        if let Some(kept) = kept {
            return Ok(kept.sealed(scope, field));
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
        let row = self
            .fetch_optional(
                &self.reads,
                sqlx::query(rows::SELECT_SEALED)
                    .bind(&record.id)
                    .bind(&record.tenant)
                    .bind(scope)
                    .bind(field.as_str()),
            )
            .await?;
        row.as_ref().map(rows::sealed).transpose()
    }

    /// Forgets what is kept of `record`'s onboarding, so the next read asks the database.
    pub fn forget(&self, record: &OnboardingRecord) {
        self.cache.forget(&record.tenant, record.environment);
    }

    /// Up to `limit` events of an onboarding with a sequence number above `after`, oldest first.
    pub async fn list_events(
        &self,
        tenant: &TenantId,
        onboarding_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        let found = self
            .fetch_all(
                &self.reads,
                sqlx::query(rows::LIST_EVENTS)
                    .bind(onboarding_id)
                    .bind(tenant.as_str())
                    .bind(after)
                    .bind(limit),
            )
            .await?;
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

/// Reads the stages, creditors and credentials (with their ciphertexts) of the onboarding whose
/// row is `record`.
async fn load_children(
    connection: &mut sqlx::AnyConnection,
    mut record: OnboardingRecord,
) -> Result<Snapshot> {
    let tenant = record.tenant.clone();
    let stage_rows = children(connection, rows::SELECT_STAGES, &record.id, &tenant).await?;
    let creditor_rows = children(connection, rows::SELECT_CREDITORS, &record.id, &tenant).await?;
    let credential_rows =
        children(connection, rows::SELECT_CREDENTIALS, &record.id, &tenant).await?;
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
    Ok(Snapshot {
        record: Arc::new(record),
        sealed,
    })
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

/// A database error as a [`StorageError`] (see [`error::classify`]).
pub(crate) fn db_error(error: sqlx::Error) -> StorageError {
    error::classify(error, || "the row".to_owned())
}

/// The sqlx URL and backend for a `database` setting: a `postgres://` URL, a `sqlite:` URL, or a
/// plain file path for SQLite.
fn database_url(database: &str) -> anyhow::Result<(Backend, String)> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return Ok((Backend::Postgres, database.to_owned()));
    }
    if database.starts_with("sqlite:") {
        return Ok((Backend::Sqlite, database.to_owned()));
    }
    anyhow::ensure!(!database.is_empty(), "the database setting is empty");
    let path = Path::new(database);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok((Backend::Sqlite, format!("sqlite://{database}?mode=rwc")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_busy_with_calls_is_not_a_database_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&StoreOptions {
            database: dir.path().join("busy.sqlite3").display().to_string(),
            max_connections: Some(2),
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
