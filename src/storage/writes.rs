//! Where writes run.
//!
//! A pooled connection is tested with a round trip to the database when it is taken and again when
//! it is given back, so writes keep their connections. PostgreSQL writes run side by side on
//! connections taken from the pool once and kept between writes ([`Connections`]): a guarded write
//! is one round trip instead of three. SQLite allows one writer at a time, so its writes take turns
//! on one connection kept for them (the pool's tests would be two of the dozen round trips of a
//! typical write transaction, made while every other writer waits). The read rounds (`fresh`) keep
//! a connection of their own the same way.

use super::generations::{Generations, Slot, Stamps};
use super::{Backend, db_error, session_ending};
use crate::error::{Error, Result};
use futures::StreamExt;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, Arguments, AssertSqlSafe, Either, Encode, Executor, Row, Type};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The connections writes run on.
#[derive(Clone)]
pub(super) enum Writes {
    Pooled(Arc<Connections>),
    Turns(Arc<KeptConnection>),
}

impl Writes {
    /// Writes on `pool`: side by side on connections kept from it for PostgreSQL (see
    /// [`Connections`]), in turns on one of its connections for SQLite, each waiting at most `wait`
    /// for its turn.
    pub fn new(backend: Backend, pool: AnyPool, wait: Duration) -> Self {
        match backend {
            Backend::Postgres => Self::Pooled(Connections::start(pool)),
            Backend::Sqlite => Self::Turns(Arc::new(KeptConnection::new(pool, wait))),
        }
    }

    /// Starts a transaction. SQLite takes the write lock at the start (BEGIN IMMEDIATE, sent with the
    /// first read), so that writers in other processes on the same file wait (busy_timeout) instead
    /// of reading a version another writer is about to replace; PostgreSQL locks rows as they are
    /// read for update.
    pub async fn begin(&self) -> Result<Tx> {
        match self {
            Self::Pooled(connections) => Ok(Tx::Pooled(Pooled {
                held: connections.begin().await?,
                parts: Parts::default(),
            })),
            Self::Turns(turns) => Ok(Tx::Turn(Turn::new(turns.take().await?)?)),
        }
    }

    /// Waits for the writers' turn (SQLite) for a write made on a connection of its own.
    pub async fn turn(&self) -> Result<OwnedMutexGuard<Option<AnyConnection>>> {
        match self {
            Self::Turns(turns) => turns.turn().await,
            Self::Pooled(_) => Err(Error::Internal(anyhow::anyhow!(
                "PostgreSQL's writers take no turns"
            ))),
        }
    }

    /// A guarded write (see [`Guarded`]), where the backend has them: PostgreSQL.
    pub fn begin_guarded(&self) -> Option<Tx> {
        match self {
            Self::Pooled(connections) => Some(Tx::Guarded(Guarded {
                connections: connections.clone(),
                parts: Parts::default(),
            })),
            Self::Turns(_) => None,
        }
    }

    /// Runs one statement on its own (committed when it returns).
    pub async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<sqlx::any::AnyQueryResult> {
        match self {
            Self::Pooled(connections) => {
                let mut held = connections.take().await?;
                let outcome = query.execute(held.alone()).await;
                held.finish(outcome)
            }
            Self::Turns(turns) => {
                let mut held = turns.take().await?;
                query.execute(held_connection(&mut held)).await
            }
        }
        .map_err(db_error)
    }

    /// Closes the connections once the writes in progress are done.
    pub async fn close(&self) {
        match self {
            Self::Pooled(connections) => {
                connections.closed.store(true, Ordering::SeqCst);
                connections.idle().clear();
                connections.pool.close().await;
            }
            Self::Turns(turns) => {
                turns.held.lock().await.take();
                turns.pool.close().await;
            }
        }
    }

    /// The pool writes come from (migrations run on it).
    pub fn pool(&self) -> &AnyPool {
        match self {
            Self::Pooled(connections) => &connections.pool,
            Self::Turns(turns) => &turns.pool,
        }
    }
}

/// PostgreSQL's write connections: taken from the pool, and kept when given back, up to `keep` of
/// them idle (half the pool, so that reads always find connections; more go back to the pool). A
/// kept connection idle for [`IDLE_CHECK`] goes back to the pool (a task sweeps them), and a writer
/// that finds none kept takes one from the pool, which tests it: under load writes reuse their
/// connections without the pool's round trips, and when writes pause the pool has its connections
/// back. A write that finds its connection broken is not sent again (it may have committed) but
/// fails, and the connection is closed.
pub(super) struct Connections {
    pool: AnyPool,
    idle: std::sync::Mutex<Vec<(PoolConnection<sqlx::Any>, Instant)>>,
    keep: usize,
    /// Set by [`Writes::close`]: connections given back from then on go back to the pool.
    closed: AtomicBool,
}

impl Connections {
    /// Connections on `pool`, and the task that gives idle ones back to it.
    pub fn start(pool: AnyPool) -> Arc<Self> {
        // A writer that finds none kept waits for the pool, so a pool of one keeps none.
        let keep = usize::try_from(pool.options().get_max_connections() / 2).unwrap_or(0);
        let connections = Arc::new(Self {
            pool,
            idle: std::sync::Mutex::new(Vec::new()),
            keep,
            closed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&connections);
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(IDLE_CHECK);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                sweep.tick().await;
                let Some(connections) = weak.upgrade() else {
                    return;
                };
                // Dropped outside the lock: each goes back to the pool.
                let stale = connections.stale();
                drop(stale);
            }
        });
        connections
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<sqlx::Any>, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the kept connections idle for [`IDLE_CHECK`] or longer out of the idle list.
    fn stale(&self) -> Vec<PoolConnection<sqlx::Any>> {
        let mut idle = self.idle();
        // Oldest first: the list is in the order connections were given back.
        let fresh = idle.partition_point(|(_, since)| since.elapsed() >= IDLE_CHECK);
        idle.drain(..fresh)
            .map(|(connection, _)| connection)
            .collect()
    }

    /// The connection given back last, if it has not been idle long; otherwise one from the pool.
    pub async fn take(self: &Arc<Self>) -> Result<Held> {
        let newest = self.idle().pop();
        let connection = match newest {
            Some((connection, since)) if since.elapsed() < IDLE_CHECK => connection,
            stale => {
                // The one given back last has been idle long, so have the others: all go back to
                // the pool (dropped outside the lock).
                drop(stale);
                drop(self.stale());
                self.pool.acquire().await.map_err(db_error)?
            }
        };
        Ok(self.hold(connection))
    }

    fn hold(self: &Arc<Self>, connection: PoolConnection<sqlx::Any>) -> Held {
        Held {
            connection: Some(connection),
            home: self.clone(),
            open: false,
            busy: false,
        }
    }

    /// A connection with a transaction begun. BEGIN does nothing, so when it fails (a kept
    /// connection the database dropped within the last second) it is sent again on one the pool
    /// tests.
    async fn begin(self: &Arc<Self>) -> Result<Held> {
        let mut held = self.take().await?;
        // Open from the moment BEGIN is sent: a call given up meanwhile leaves it to be rolled back.
        held.open = true;
        if let Err(error) = held.connection().execute("BEGIN").await {
            tracing::debug!(%error, "BEGIN failed on a kept connection: taking another");
            held.discard();
            held = self.hold(self.pool.acquire().await.map_err(db_error)?);
            held.open = true;
            let outcome = held.connection().execute("BEGIN").await;
            held.check(outcome).map_err(db_error)?;
        }
        Ok(held)
    }

    /// Keeps `connection` for the next write, unless enough are kept or the writes are closed
    /// (then it goes back to the pool).
    fn give_back(&self, connection: PoolConnection<sqlx::Any>) {
        let mut idle = self.idle();
        if idle.len() < self.keep && !self.closed.load(Ordering::SeqCst) {
            idle.push((connection, Instant::now()));
        }
    }
}

/// A connection of [`Connections`], given back when dropped: rolled back first if a transaction is
/// still open on it (a write that failed or was given up), closed if it broke or a statement on it
/// was given up without a transaction around it (its answer would be read by the next user).
pub(super) struct Held {
    connection: Option<PoolConnection<sqlx::Any>>,
    home: Arc<Connections>,
    /// BEGIN has been sent, and neither COMMIT nor ROLLBACK has completed.
    open: bool,
    /// A statement outside a transaction has been sent and its answer not read yet.
    busy: bool,
}

impl Held {
    fn connection(&mut self) -> &mut AnyConnection {
        self.connection
            .as_deref_mut()
            .expect("a held connection is there until dropped")
    }

    /// The connection, for one statement outside a transaction, whose outcome goes through
    /// [`Held::finish`]: given up before then, the connection is closed.
    pub fn alone(&mut self) -> &mut AnyConnection {
        self.busy = true;
        self.connection()
    }

    /// The outcome of the statement [`Held::alone`] was for, as [`Held::check`] passes it on.
    pub fn finish<T>(&mut self, outcome: sqlx::Result<T>) -> sqlx::Result<T> {
        self.busy = false;
        self.check(outcome)
    }

    /// Passes `outcome` on; a connection that failed other than with an ordinary error of a
    /// statement (it broke, the protocol did, or the database is ending the session) is closed
    /// rather than kept.
    fn check<T>(&mut self, outcome: sqlx::Result<T>) -> sqlx::Result<T> {
        if let Err(error) = &outcome {
            let session_ended = match error.as_database_error() {
                None => true,
                Some(database) => database.code().is_some_and(|code| session_ending(&code)),
            };
            if session_ended {
                self.discard();
            }
        }
        outcome
    }

    /// Closes the connection instead of keeping it.
    fn discard(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            connection.close_on_drop();
        }
    }

    async fn commit(&mut self) -> Result<()> {
        let outcome = self.connection().execute("COMMIT").await;
        self.check(outcome).map_err(db_error)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        if self.busy {
            connection.close_on_drop();
            return;
        }
        if !self.open {
            self.home.give_back(connection);
            return;
        }
        // The ROLLBACK first reads whatever answers are still due (a statement given up).
        let home = self.home.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    match connection.execute("ROLLBACK").await {
                        Ok(_) => home.give_back(connection),
                        Err(_) => connection.close_on_drop(),
                    }
                });
            }
            Err(_) => connection.close_on_drop(),
        }
    }
}

/// A kept connection idle this long is given back to the pool, which tests it before it gives it out
/// again: a statement that fails cannot always be sent again (it may have committed), so one that
/// would fail on a connection the database dropped meanwhile (a restart) is not sent on it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A connection taken from a pool once and kept, used by one task at a time (SQLite's writers,
/// the read rounds). A user that finds it broken empties the slot; the next one takes a new
/// connection from the pool.
pub(super) struct KeptConnection {
    pool: AnyPool,
    held: Arc<Mutex<Option<AnyConnection>>>,
    wait: Duration,
}

impl KeptConnection {
    /// Each user waits at most `wait` for its turn.
    pub fn new(pool: AnyPool, wait: Duration) -> Self {
        Self {
            pool,
            held: Arc::new(Mutex::new(None)),
            wait,
        }
    }

    /// Waits for the turn, with a connection taken from the pool if there is none yet.
    pub async fn take(&self) -> Result<OwnedMutexGuard<Option<AnyConnection>>> {
        let mut held = self.turn().await?;
        if held.is_none() {
            let connection = self.pool.acquire().await.map_err(db_error)?;
            *held = Some(connection.detach());
        }
        Ok(held)
    }

    /// Waits for the turn, without a connection: for a write made on a connection of its own.
    pub async fn turn(&self) -> Result<OwnedMutexGuard<Option<AnyConnection>>> {
        tokio::time::timeout(self.wait, self.held.clone().lock_owned())
            .await
            .map_err(|_| Error::Unavailable {
                what: "the database",
                retry_after: Duration::from_secs(1),
                source: anyhow::anyhow!("no turn to write within {:?}", self.wait),
            })
    }

    /// Drops the kept connection, if no one holds it now; the next user takes a new one.
    pub fn forget(&self) {
        if let Ok(mut held) = self.held.try_lock() {
            *held = None;
        }
    }
}

/// The connection of a turn [`KeptConnection::take`] gave.
pub(super) fn held_connection(held: &mut Option<AnyConnection>) -> &mut AnyConnection {
    held.as_mut().expect("a turn is given with a connection")
}

/// A write transaction's connection.
///
/// Reads go through [`Tx::read`], writes through [`Tx::write`]; a transaction's writes wait and go to
/// the database together with its next read or with COMMIT. On SQLite, where every write waits for
/// the one in progress, BEGIN goes with the first reads too: a transaction is two round trips to
/// sqlx's SQLite worker thread instead of one per statement. On PostgreSQL the writes that wait go
/// as one statement (each a part of a WITH). What a write's outcome means ([`Expect`]) is checked
/// either way, before COMMIT runs. A [`Guarded`] write is one such statement without a transaction
/// around it.
pub(super) enum Tx {
    Pooled(Pooled),
    Turn(Turn),
    Guarded(Guarded),
}

/// What a statement of a [`Tx`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    /// A read that guards a [`Guarded`] write: the rows it must find (none, as a rule) are bound
    /// with [`Statement::run`]'s [`Expect::changes`].
    Guard,
}

impl Tx {
    /// A read of this transaction; its values are bound in order with [`Statement::bind`].
    pub fn read(&mut self, sql: &'static str) -> Statement<'_> {
        self.statement(sql, Kind::Read)
    }

    /// A write of this transaction; its values are bound in order with [`Statement::bind`].
    pub fn write(&mut self, sql: &'static str) -> Statement<'_> {
        self.statement(sql, Kind::Write)
    }

    /// A read that guards a [`Guarded`] write, queued like a write: the write is made only if the
    /// read finds as many rows as [`Statement::run`] is told.
    pub fn guard(&mut self, sql: &'static str) -> Statement<'_> {
        self.statement(sql, Kind::Guard)
    }

    fn statement(&mut self, sql: &'static str, kind: Kind) -> Statement<'_> {
        let (error, batched) = match (&mut *self, kind) {
            (Self::Pooled(Pooled { parts, .. }), Kind::Write)
            | (Self::Guarded(Guarded { parts, .. }), Kind::Write | Kind::Guard) => {
                match parts.add(sql, kind == Kind::Write) {
                    Ok(()) => (None, true),
                    Err(error) => (Some(error), false),
                }
            }
            (Self::Pooled(_), Kind::Read) => (None, false),
            (Self::Turn(turn), Kind::Read | Kind::Write) => (turn.pending.add(sql).err(), true),
            (_, Kind::Read | Kind::Guard) => (
                Some(Error::Internal(anyhow::anyhow!(
                    "a statement this transaction cannot run: {sql}"
                ))),
                false,
            ),
        };
        Statement {
            tx: self,
            sql,
            values: AnyArguments::default(),
            error,
            batched,
            queued: false,
        }
    }

    /// The rows of a read asked for with [`Statement::later`] (sending what waits, on SQLite).
    pub async fn rows(&mut self, read: Later) -> Result<Vec<AnyRow>> {
        match (self, read) {
            (_, Later::Rows(rows)) => Ok(rows),
            (Self::Turn(turn), Later::Queued(id)) => {
                if !turn.answers.contains_key(&id) {
                    turn.send().await?;
                }
                Ok(turn.answers.remove(&id).unwrap_or_default())
            }
            (Self::Pooled(_) | Self::Guarded(_), Later::Queued(_)) => Err(Error::Internal(
                anyhow::anyhow!("a queued read on a PostgreSQL transaction"),
            )),
        }
    }

    /// The connection, with every statement asked for so far run (for reads made by other code).
    pub async fn connection(&mut self) -> Result<&mut AnyConnection> {
        match self {
            Self::Pooled(pooled) => {
                pooled.send().await?;
                Ok(pooled.held.connection())
            }
            Self::Turn(turn) => {
                turn.send().await?;
                Ok(held_connection(&mut turn.held))
            }
            Self::Guarded(_) => Err(Error::Internal(anyhow::anyhow!(
                "a guarded write has no connection to read on"
            ))),
        }
    }

    /// Commits. With `counted` (SQLite), the write generations of those slots move around the
    /// COMMIT, their tickets taken while the write lock is held (see `generations`).
    pub async fn commit(self, counted: Option<(&Generations, Vec<Slot>)>) -> Result<Stamps> {
        match self {
            Self::Pooled(mut pooled) => {
                pooled.send().await?;
                pooled.held.commit().await?;
                Ok(Stamps::default())
            }
            Self::Turn(mut turn) => {
                let writing = match counted {
                    Some((generations, slots)) => {
                        if !turn.open {
                            // BEGIN IMMEDIATE has not run yet: take the write lock first.
                            turn.send().await?;
                        }
                        Some(generations.begin(slots))
                    }
                    None => None,
                };
                turn.pending.add("COMMIT")?;
                turn.pending.checks.push(Check::Plain);
                turn.send().await?;
                turn.open = false;
                Ok(writing.map(|writing| writing.stamps()).unwrap_or_default())
            }
            Self::Guarded(guarded) => match guarded.commit().await? {
                true => Ok(Stamps::default()),
                false => Err(Error::Internal(anyhow::anyhow!(
                    "a guarded write's guard failed"
                ))),
            },
        }
    }

    /// Commits a [`Guarded`] write: `false` when a guard failed and nothing was written.
    pub async fn commit_guarded(self) -> Result<bool> {
        match self {
            Self::Guarded(guarded) => guarded.commit().await,
            Self::Pooled(_) | Self::Turn(_) => Err(Error::Internal(anyhow::anyhow!(
                "a transaction committed as a guarded write"
            ))),
        }
    }
}

/// A PostgreSQL transaction on a pooled connection (rolled back by sqlx if dropped uncommitted).
/// The parts of one statement must not write the same row twice (PostgreSQL would apply one of them):
/// the store writes each row at most once per transaction.
pub(super) struct Pooled {
    /// The connection, a transaction open on it.
    held: Held,
    /// Writes not sent yet.
    parts: Parts,
}

impl Pooled {
    /// Sends the writes that wait: one alone, several as one statement whose answer counts the rows
    /// each changed (PostgreSQL runs the parts of a WITH together and checks foreign keys at the
    /// end of the statement).
    async fn send(&mut self) -> Result<()> {
        let (mut writes, values) = self.parts.take()?;
        if writes.len() <= 1 {
            let Some(Part { sql, expect, .. }) = writes.pop() else {
                return Ok(());
            };
            let outcome = match sql {
                Cow::Borrowed(sql) => {
                    sqlx::query_with(sql, values)
                        .execute(self.held.connection())
                        .await
                }
                Cow::Owned(sql) => {
                    sqlx::query_with(AssertSqlSafe(sql), values)
                        .execute(self.held.connection())
                        .await
                }
            };
            return expect.check(self.held.check(outcome));
        }
        let counts = (0..writes.len())
            .map(count_of)
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("{} SELECT {counts}", with_parts(&writes));
        let outcome = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_one(self.held.connection())
            .await;
        match self.held.check(outcome) {
            Ok(row) => {
                for (index, Part { expect, .. }) in writes.into_iter().enumerate() {
                    let changed: i64 = row.try_get(index).map_err(db_error)?;
                    expect.changed(u64::try_from(changed).unwrap_or(0))?;
                }
                Ok(())
            }
            Err(error) => {
                // Which write broke a unique constraint: the one on the table the error names.
                let table = error
                    .as_database_error()
                    .filter(|e| e.is_unique_violation())
                    .and_then(|e| e.table().map(str::to_owned));
                let culprit = table.and_then(|table| {
                    writes.into_iter().find(|part| {
                        part.expect.conflict.is_some()
                            && target_table(&part.sql) == Some(table.as_str())
                    })
                });
                Err(match culprit {
                    Some(part) => part.expect.failed(error),
                    None => db_error(error),
                })
            }
        }
    }
}

/// A PostgreSQL write without a transaction around it: its writes, and the reads that guard them,
/// go at commit as one statement — one round trip, instead of BEGIN, a read that locks the row,
/// the writes and COMMIT — that writes nothing unless every write changed, and every guard found,
/// the number of rows it was told to ([`Expect::changes`]). The store guards a write made from what
/// it keeps of an onboarding by the revision it kept (the onboarding's row must still show it):
/// an optimistic write, which the caller makes again under the row's lock when a guard fails.
///
/// The statement's answer checks the guards in order, so its first guard runs first: a write that
/// guards on the onboarding's row locks that row before anything the row holds, as a locked
/// transaction does, and when the row has moved on nothing else is touched. A failed guard aborts
/// the statement with a cast error naming it (PostgreSQL runs every part of a WITH, so only an
/// error undoes the others); the statement was its own transaction, so nothing stays behind.
pub(super) struct Guarded {
    connections: Arc<Connections>,
    parts: Parts,
}

impl Guarded {
    /// Sends the statement: `true` if it committed, `false` if a guard failed (or a unique
    /// constraint or a deadlock stopped it, which the locked write tells apart) and nothing was
    /// written.
    async fn commit(mut self) -> Result<bool> {
        let (parts, values) = self.parts.take()?;
        let guards: Vec<String> = parts
            .iter()
            .enumerate()
            .filter_map(|(index, part)| {
                let (rows, _) = part.expect.changes.as_ref()?;
                Some(format!("{} = {rows}", count_of(index)))
            })
            .collect();
        // The guards run first; when they hold, the THEN arm runs the other parts in their order
        // (as a locked transaction would make them: no deadlock between the two). The ELSE arm
        // reads a count, so PostgreSQL cannot fold it into a constant (and fail) while planning; it
        // runs only when a guard failed. Without guards the parts are still made together or not at
        // all (a unique constraint stops them all).
        let guards = match guards.is_empty() {
            true => "true".to_owned(),
            false => guards.join(" AND "),
        };
        let all = (0..parts.len())
            .map(count_of)
            .collect::<Vec<_>>()
            .join(" + ");
        let sql = format!(
            "{} SELECT CASE WHEN {guards} THEN {all} ELSE CAST('{GUARD_FAILED}' || {} AS bigint) END",
            with_parts(&parts),
            count_of(0),
        );
        let mut held = self.connections.take().await?;
        let outcome = sqlx::query_with(AssertSqlSafe(sql), values)
            .execute(held.alone())
            .await;
        match held.finish(outcome) {
            Ok(_) => Ok(true),
            Err(error) if stopped_by_guard(&error) => Ok(false),
            Err(error) => Err(db_error(error)),
        }
    }
}

/// The text of a failed guard's error (in PostgreSQL's log as an invalid bigint).
const GUARD_FAILED: &str = "guarded write not made, its onboarding was written meanwhile; rows: ";

/// Whether a guarded write stopped without writing anything for a reason the write made under lock
/// resolves: a failed guard, a unique constraint (a row written meanwhile), a deadlock.
fn stopped_by_guard(error: &sqlx::Error) -> bool {
    let Some(database) = error.as_database_error() else {
        return false;
    };
    let code = database.code();
    database.is_unique_violation()
        || matches!(code.as_deref(), Some("40P01" | "40001"))
        || (code.as_deref() == Some("22P02") && database.message().contains(GUARD_FAILED))
}

/// PostgreSQL writes (and a guarded write's guards) waiting to go as one statement.
#[derive(Default)]
struct Parts {
    parts: Vec<Part>,
    /// Their values, in order.
    values: AnyArguments,
    /// A part was begun but not queued whole.
    broken: bool,
}

/// One part of a PostgreSQL statement, its placeholders numbered on from those before it.
struct Part {
    sql: Cow<'static, str>,
    expect: Expect,
    /// A write (whose rows are counted through RETURNING), not a read.
    write: bool,
}

impl Parts {
    fn add(&mut self, sql: &'static str, write: bool) -> Result<()> {
        let sql = renumber(sql, self.values.len())?;
        self.parts.push(Part {
            sql,
            expect: Expect::default(),
            write,
        });
        Ok(())
    }

    /// The parts and their values, leaving none.
    fn take(&mut self) -> Result<(Vec<Part>, AnyArguments)> {
        if self.broken {
            return Err(Error::Internal(anyhow::anyhow!(
                "a statement of this transaction was left half built"
            )));
        }
        Ok((
            std::mem::take(&mut self.parts),
            std::mem::take(&mut self.values),
        ))
    }
}

/// `WITH w0 AS (…), w1 AS (…), …`: each part a row per row it changed (a write) or found (a read).
/// PostgreSQL runs the parts of a WITH together and checks foreign keys at the end of the statement.
fn with_parts(parts: &[Part]) -> String {
    let mut sql = String::from("WITH ");
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        let returning = if part.write { " RETURNING 1" } else { "" };
        sql.push_str(&format!("w{index} AS ({}{returning})", part.sql));
    }
    sql
}

/// The number of rows part `index` of [`with_parts`] changed or found.
fn count_of(index: usize) -> String {
    format!("(SELECT count(*) FROM w{index})")
}

/// The table an INSERT, UPDATE or DELETE writes to.
fn target_table(sql: &str) -> Option<&str> {
    let rest = sql
        .strip_prefix("INSERT INTO ")
        .or_else(|| sql.strip_prefix("UPDATE "))
        .or_else(|| sql.strip_prefix("DELETE FROM "))?;
    rest.split([' ', '(']).next()
}

/// `sql` with its placeholders `$n` numbered on after `offset` values bound before it (the first
/// write of a batch, often the only one, as it is).
fn renumber(sql: &'static str, offset: usize) -> Result<Cow<'static, str>> {
    if offset == 0 {
        return Ok(Cow::Borrowed(sql));
    }
    let mut numbered = String::with_capacity(sql.len() + 16);
    copy_placeholders(sql, &mut numbered, |out, number| {
        match number {
            Some(number) => out.push_str(&format!("${}", number + offset)),
            None => out.push('?'),
        }
        Ok(())
    })?;
    Ok(Cow::Owned(numbered))
}

/// Copies `sql` to `out`, each placeholder written by `write` from its number (`$n`), or `None` for
/// a plain `?`; a placeholder that is neither is an error.
fn copy_placeholders(
    sql: &str,
    out: &mut String,
    mut write: impl FnMut(&mut String, Option<usize>) -> Result<()>,
) -> Result<()> {
    let mut rest = sql;
    while let Some(at) = rest.find(['$', '?']) {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let number = &rest[at + 1..at + 1 + digits];
        let number = match (&rest[at..at + 1], number.parse()) {
            ("$", Ok(number)) => Some(number),
            ("?", _) if number.is_empty() => None,
            _ => {
                return Err(Error::Internal(anyhow::anyhow!(
                    "a statement's placeholder is neither $n nor ?: {sql}"
                )));
            }
        };
        write(out, number)?;
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    Ok(())
}

/// What a write's outcome means beyond success or failure.
#[derive(Debug, Default)]
pub(super) struct Expect {
    /// The error a unique-constraint violation by this statement stands for.
    pub conflict: Option<Error>,
    /// The number of rows it must change, and what another number means.
    pub changes: Option<(u64, String)>,
}

impl Expect {
    /// A write whose unique-constraint violation stands for `error`.
    pub fn conflict(error: Error) -> Self {
        Self {
            conflict: Some(error),
            changes: None,
        }
    }

    /// A write that must change `rows` rows; another number is an internal error saying `meaning`.
    pub fn changes(rows: u64, meaning: String) -> Self {
        Self {
            conflict: None,
            changes: Some((rows, meaning)),
        }
    }

    fn check(self, outcome: sqlx::Result<AnyQueryResult>) -> Result<()> {
        match outcome {
            Ok(result) => self.changed(result.rows_affected()),
            Err(error) => Err(self.failed(error)),
        }
    }

    fn changed(self, rows: u64) -> Result<()> {
        match self.changes {
            Some((expected, meaning)) if rows != expected => {
                Err(Error::Internal(anyhow::anyhow!(meaning)))
            }
            _ => Ok(()),
        }
    }

    fn failed(self, error: sqlx::Error) -> Error {
        if let sqlx::Error::Database(database) = &error
            && database.is_unique_violation()
            && let Some(conflict) = self.conflict
        {
            return conflict;
        }
        db_error(error)
    }
}

/// A read asked for with [`Statement::later`].
pub(super) enum Later {
    /// Already run (PostgreSQL).
    Rows(Vec<AnyRow>),
    /// Queued in SQLite's batch under this number.
    Queued(usize),
}

/// One statement of a [`Tx`], its values bound in order; run with [`Statement::run`] (a write),
/// [`Statement::fetch_all`] or [`Statement::later`] (a read).
pub(super) struct Statement<'t> {
    tx: &'t mut Tx,
    sql: &'static str,
    /// The values of a statement that runs on its own (a read on PostgreSQL).
    values: AnyArguments,
    error: Option<Error>,
    /// Its values go straight into the transaction's batch.
    batched: bool,
    /// Given to the batch whole: dropped before that, the batch is broken.
    queued: bool,
}

impl Statement<'_> {
    /// Where this statement's values go.
    fn values(&mut self) -> &mut AnyArguments {
        match &mut *self.tx {
            Tx::Pooled(Pooled { parts, .. }) | Tx::Guarded(Guarded { parts, .. })
                if self.batched =>
            {
                &mut parts.values
            }
            Tx::Pooled(_) | Tx::Guarded(_) => &mut self.values,
            Tx::Turn(turn) => &mut turn.pending.values,
        }
    }

    pub fn bind<'q, T: Encode<'q, sqlx::Any> + Type<sqlx::Any> + 'q>(mut self, value: T) -> Self {
        let values = self.values();
        if let Err(error) = values.add(value) {
            self.error.get_or_insert_with(|| {
                Error::Internal(anyhow::anyhow!("binding a value of a statement: {error}"))
            });
        }
        self
    }

    /// Makes room for `values` more values (a statement of many rows).
    pub fn reserve(mut self, values: usize) -> Self {
        self.values().reserve(values, 0);
        self
    }

    /// Queues a write, sent with the transaction's next read or with COMMIT.
    pub async fn run(mut self, expect: Expect) -> Result<()> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        match &mut *self.tx {
            Tx::Pooled(Pooled { parts, .. }) | Tx::Guarded(Guarded { parts, .. }) => {
                if let Some(last) = parts.parts.last_mut() {
                    last.expect = expect;
                }
                self.queued = true;
                Ok(())
            }
            Tx::Turn(turn) => {
                let Expect { conflict, changes } = expect;
                turn.pending.checks.push(Check::Write(conflict));
                self.queued = true;
                if let Some((rows, meaning)) = changes {
                    // The batch runs to its end (COMMIT included) before its outcomes are read,
                    // so the number of rows changed is checked inside it, by the next statement.
                    turn.pending.add(CHANGES_GUARD)?;
                    if let Err(error) = turn.pending.values.add(i64::try_from(rows).unwrap_or(-1)) {
                        turn.pending.broken = true;
                        return Err(Error::Internal(anyhow::anyhow!("{error}")));
                    }
                    turn.pending.checks.push(Check::Changes(meaning));
                }
                Ok(())
            }
        }
    }

    /// Asks for a read's rows, to be had with [`Tx::rows`]: PostgreSQL runs it now (after the
    /// writes that wait), SQLite with the transaction's next round trip (so several reads can go in
    /// one).
    pub async fn later(mut self) -> Result<Later> {
        self.queue().await
    }

    /// Runs a read (with every statement before it, on SQLite) and returns its rows.
    pub async fn fetch_all(mut self) -> Result<Vec<AnyRow>> {
        let read = self.queue().await?;
        self.tx.rows(read).await
    }

    /// Runs a read of at most one row.
    pub async fn fetch_optional(self) -> Result<Option<AnyRow>> {
        Ok(self.fetch_all().await?.into_iter().next())
    }

    async fn queue(&mut self) -> Result<Later> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        match &mut *self.tx {
            Tx::Pooled(pooled) => {
                pooled.send().await?;
                let values = std::mem::take(&mut self.values);
                let outcome = sqlx::query_with(self.sql, values)
                    .fetch_all(pooled.held.connection())
                    .await;
                let rows = pooled.held.check(outcome).map_err(db_error)?;
                Ok(Later::Rows(rows))
            }
            Tx::Guarded(_) => Err(Error::Internal(anyhow::anyhow!(
                "a guarded write cannot read"
            ))),
            Tx::Turn(turn) => {
                let id = turn.reads;
                turn.reads += 1;
                turn.pending.checks.push(Check::Read(id));
                self.queued = true;
                Ok(Later::Queued(id))
            }
        }
    }
}

impl Drop for Statement<'_> {
    /// Not queued (an error while binding its values): SQLite's batch holds part of a statement, so
    /// the transaction can only fail from here on.
    fn drop(&mut self) {
        if self.batched && !self.queued {
            match &mut *self.tx {
                Tx::Pooled(Pooled { parts, .. }) | Tx::Guarded(Guarded { parts, .. }) => {
                    parts.broken = true;
                }
                Tx::Turn(turn) => turn.pending.broken = true,
            }
        }
    }
}

/// Fails its batch when the write before it did not change the number of rows bound to it: SQLite's
/// json() throws on text that is not JSON, which stops the batch before COMMIT.
const CHANGES_GUARD: &str =
    "SELECT CASE WHEN changes() = $1 THEN 0 ELSE json('changed another number of rows') END";

/// What a statement in SQLite's batch is, for reading its outcome.
enum Check {
    /// BEGIN or COMMIT.
    Plain,
    /// A write, and the error a unique-constraint violation by it stands for.
    Write(Option<Error>),
    /// The [`CHANGES_GUARD`] after a write, and what its failure means.
    Changes(String),
    /// A read whose rows are kept under this number.
    Read(usize),
}

/// A transaction on SQLite's writers' connection, the turn held until dropped.
pub(super) struct Turn {
    held: OwnedMutexGuard<Option<AnyConnection>>,
    /// BEGIN may have run, COMMIT has not.
    open: bool,
    /// Statements not sent yet.
    pending: Batch,
    /// Reads queued so far (numbering them).
    reads: usize,
    /// Rows of sent reads not yet taken.
    answers: std::collections::HashMap<usize, Vec<AnyRow>>,
}

impl Turn {
    fn new(held: OwnedMutexGuard<Option<AnyConnection>>) -> Result<Self> {
        let mut pending = Batch::default();
        pending.add("BEGIN IMMEDIATE")?;
        pending.checks.push(Check::Plain);
        Ok(Self {
            held,
            open: false,
            pending,
            reads: 0,
            answers: std::collections::HashMap::new(),
        })
    }

    /// Sends the pending statements in one round trip, checks each outcome, and keeps the rows of
    /// the reads.
    async fn send(&mut self) -> Result<()> {
        if self.pending.broken {
            // Stays broken: what waits is not sent, and the transaction can never commit.
            return Err(Error::Internal(anyhow::anyhow!(
                "a statement of this transaction was left half built"
            )));
        }
        let batch = std::mem::take(&mut self.pending);
        if batch.checks.is_empty() {
            return Ok(());
        }
        self.open = true;
        let statements = batch.checks.len();
        let mut checks = batch.checks.into_iter();
        let mut current = checks.next();
        let mut done = 0;
        let mut steps = held_connection(&mut self.held)
            .fetch_many(sqlx::query_with(AssertSqlSafe(batch.sql), batch.values));
        while let Some(step) = steps.next().await {
            match (step, current.take()) {
                (Ok(Either::Right(row)), Some(Check::Read(id))) => {
                    self.answers.entry(id).or_default().push(row);
                    current = Some(Check::Read(id));
                }
                (Ok(Either::Right(_)), check) => current = check,
                (Ok(Either::Left(_)), check) => {
                    if let Some(Check::Read(id)) = check {
                        self.answers.entry(id).or_default();
                    }
                    done += 1;
                    current = checks.next();
                }
                (Err(error), Some(Check::Write(Some(conflict)))) => {
                    return Err(Expect::conflict(conflict).failed(error));
                }
                (Err(error), Some(Check::Changes(meaning))) => {
                    return Err(Error::Internal(anyhow::Error::new(error).context(meaning)));
                }
                (Err(error), _) => return Err(db_error(error)),
            }
        }
        if done != statements {
            return Err(Error::Internal(anyhow::anyhow!(
                "{done} of {statements} statements ran"
            )));
        }
        Ok(())
    }
}

impl Drop for Turn {
    /// Uncommitted (an error, or the call went away): the connection is closed, which rolls the
    /// transaction back and lets go of the write lock; the next writer opens a new one.
    fn drop(&mut self) {
        if self.open {
            self.held.take();
        }
    }
}

/// Statements of a SQLite transaction to send together, their values bound in order.
#[derive(Default)]
struct Batch {
    sql: String,
    values: AnyArguments,
    checks: Vec<Check>,
    /// A statement was added but not completed.
    broken: bool,
}

impl Batch {
    /// Appends `sql`, its numbered placeholders (`$1`, `$2`, … in that order, as the store writes
    /// them for both engines) made plain `?`, which SQLite binds in order across the statements of
    /// one query.
    fn add(&mut self, sql: &str) -> Result<()> {
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        let mut expected = 1usize;
        let added = copy_placeholders(sql, &mut self.sql, |out, number| {
            if number.is_some_and(|number| number != expected) {
                return Err(Error::Internal(anyhow::anyhow!(
                    "a statement's placeholders are not $1, $2, … in order: {sql}"
                )));
            }
            out.push('?');
            expected += 1;
            Ok(())
        });
        if added.is_err() {
            self.broken = true;
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_schema::TestSchema;
    use super::*;

    async fn sqlite_writes(table: &str) -> (tempfile::TempDir, Writes) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("w.sqlite3").display()
        );
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let writes = Writes::new(Backend::Sqlite, pool, Duration::from_millis(200));
        writes
            .execute(sqlx::query(AssertSqlSafe(table.to_owned())))
            .await
            .unwrap();
        (dir, writes)
    }

    /// Writes on one connection to `TEST_POSTGRES_URL`'s server, if it is set, with `table` made a
    /// temporary table of that connection.
    async fn postgres_writes(table: &str) -> Option<Writes> {
        let url = super::super::test_schema::postgres_url()?;
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let table = table.replace("CREATE TABLE", "CREATE TEMPORARY TABLE");
        let writes = Writes::new(Backend::Postgres, pool, Duration::from_millis(200));
        writes
            .execute(sqlx::query(AssertSqlSafe(table)))
            .await
            .unwrap();
        Some(writes)
    }

    async fn texts(writes: &Writes) -> Vec<String> {
        let query = sqlx::query_scalar("SELECT text FROM notes ORDER BY text");
        match writes {
            Writes::Turns(turns) => {
                let mut held = turns.take().await.unwrap();
                query.fetch_all(held_connection(&mut held)).await.unwrap()
            }
            Writes::Pooled(_) => {
                let mut tx = writes.begin().await.unwrap();
                let rows = tx
                    .read("SELECT text FROM notes ORDER BY text")
                    .fetch_all()
                    .await
                    .unwrap();
                tx.commit(None).await.unwrap();
                rows.iter()
                    .map(|row| sqlx::Row::get::<String, _>(row, "text"))
                    .collect()
            }
        }
    }

    #[tokio::test]
    async fn sqlite_writes_take_turns_and_an_uncommitted_one_leaves_nothing() {
        let (_dir, writes) = sqlite_writes("CREATE TABLE notes (text TEXT NOT NULL)").await;

        // Dropped uncommitted after its statements ran: rolled back, and the next writer gets its
        // turn on a new connection.
        let mut dropped = writes.begin().await.unwrap();
        let returned = dropped
            .read("INSERT INTO notes (text) VALUES ($1) RETURNING text")
            .bind("lost")
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(returned.len(), 1);
        drop(dropped);
        assert!(texts(&writes).await.is_empty());

        let mut kept = writes.begin().await.unwrap();
        kept.write("INSERT INTO notes (text) VALUES ($1)")
            .bind("kept")
            .run(Expect::default())
            .await
            .unwrap();
        // Another writer waits for its turn, and gives up after the wait with UNAVAILABLE.
        let waited = writes.begin().await.err().expect("the turn is taken");
        assert!(matches!(waited, Error::Unavailable { .. }), "{waited:?}");
        kept.commit(None).await.unwrap();
        assert_eq!(texts(&writes).await, ["kept"]);
    }

    #[tokio::test]
    async fn statements_sent_together_keep_their_values_and_their_meaning() {
        let table = "CREATE TABLE notes (id BIGINT PRIMARY KEY, text TEXT NOT NULL UNIQUE)";
        let (_dir, writes) = sqlite_writes(table).await;
        writes_sent_together(&writes).await;
        // SQLite binds in order: a statement whose placeholders are not in order cannot be sent.
        let mut tx = writes.begin().await.unwrap();
        let refused = tx
            .write("INSERT INTO notes (text, id) VALUES ($2, $1)")
            .bind(6)
            .bind("g")
            .run(Expect::default())
            .await;
        assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
        assert!(tx.commit(None).await.is_err());
        assert_eq!(texts(&writes).await, ["b", "c"]);

        if let Some(writes) = postgres_writes(table).await {
            writes_sent_together(&writes).await;
        }
    }

    async fn writes_sent_together(writes: &Writes) {
        /// Renames note `id`, which must exist.
        async fn rename(tx: &mut Tx, id: i64, text: &str) -> Result<()> {
            tx.write("UPDATE notes SET text = $1 WHERE id = $2")
                .bind(text.to_owned())
                .bind(id)
                .run(Expect::changes(1, format!("note {id} is gone")))
                .await
        }

        async fn insert(tx: &mut Tx, id: i64, text: &str, expect: Expect) -> Result<()> {
            tx.write("INSERT INTO notes (id, text) VALUES ($1, $2)")
                .bind(id)
                .bind(text.to_owned())
                .run(expect)
                .await
        }

        // Values land in their own statements, a read sees the writes before it, and one round
        // trip commits the rest.
        let mut tx = writes.begin().await.unwrap();
        for (id, text) in [(1, "a"), (2, "b")] {
            insert(&mut tx, id, text, Expect::default()).await.unwrap();
        }
        let seen = tx
            .read("SELECT text FROM notes WHERE id = $1")
            .bind(2)
            .fetch_optional()
            .await
            .unwrap()
            .map(|row| sqlx::Row::get::<String, _>(&row, "text"));
        assert_eq!(seen.as_deref(), Some("b"));
        rename(&mut tx, 1, "c").await.unwrap();
        tx.commit(None).await.unwrap();
        assert_eq!(texts(writes).await, ["b", "c"]);

        // A unique violation is the error its statement said it stands for, and the transaction's
        // other writes are undone.
        let mut tx = writes.begin().await.unwrap();
        insert(&mut tx, 3, "d", Expect::default()).await.unwrap();
        let conflict = Expect::conflict(Error::AlreadyExists {
            resource: "notes/b".into(),
        });
        insert(&mut tx, 4, "b", conflict).await.unwrap();
        let failed = tx.commit(None).await.unwrap_err();
        assert!(
            matches!(&failed, Error::AlreadyExists { resource } if resource == "notes/b"),
            "{failed:?}"
        );
        assert_eq!(texts(writes).await, ["b", "c"]);

        // A write that must change one row and changes none fails the transaction.
        let mut tx = writes.begin().await.unwrap();
        insert(&mut tx, 5, "e", Expect::default()).await.unwrap();
        rename(&mut tx, 99, "f").await.unwrap();
        let failed = tx.commit(None).await.unwrap_err();
        assert!(
            format!("{failed:?}").contains("note 99 is gone"),
            "{failed:?}"
        );
        assert_eq!(texts(writes).await, ["b", "c"]);

        // A statement left unfinished (bound, then dropped instead of run: an error while building
        // it) fails the transaction for good: not even the writes queued before it are committed.
        let mut tx = writes.begin().await.unwrap();
        insert(&mut tx, 7, "h", Expect::default()).await.unwrap();
        let unfinished = tx.write("UPDATE notes SET text = $1 WHERE id = $2");
        drop(unfinished.bind("z").bind(99));
        let read = tx
            .read("SELECT text FROM notes")
            .fetch_all()
            .await
            .map(|rows| rows.len());
        assert!(matches!(read, Err(Error::Internal(_))), "{read:?}");
        assert!(tx.commit(None).await.is_err());
        assert_eq!(texts(writes).await, ["b", "c"]);
    }

    /// Writes on `TEST_POSTGRES_URL`'s server, if it is set, with a pool of two connections (one kept
    /// by the writes) in a schema of their own holding `notes`.
    async fn postgres_kept_writes() -> Option<(TestSchema, Writes)> {
        let schema = TestSchema::create("writes_test", 2).await?;
        let writes = Writes::new(
            Backend::Postgres,
            schema.pool.clone(),
            Duration::from_millis(500),
        );
        writes
            .execute(sqlx::query(
                "CREATE TABLE notes (id BIGINT PRIMARY KEY, text TEXT NOT NULL UNIQUE, \
                 version BIGINT NOT NULL DEFAULT 0)",
            ))
            .await
            .unwrap();
        Some((schema, writes))
    }

    #[tokio::test]
    async fn postgres_kept_connections_leave_no_transaction_open_and_guarded_writes_are_all_or_nothing()
     {
        let Some((schema, writes)) = postgres_kept_writes().await else {
            return;
        };
        async fn insert(tx: &mut Tx, id: i64, text: &str) {
            tx.write("INSERT INTO notes (id, text) VALUES ($1, $2)")
                .bind(id)
                .bind(text.to_owned())
                .run(Expect::default())
                .await
                .unwrap();
        }

        // A transaction given up after its write ran: rolled back before its connection is kept
        // for the next one, which commits only its own write.
        let mut given_up = writes.begin().await.unwrap();
        insert(&mut given_up, 1, "lost").await;
        given_up.read("SELECT 1").fetch_all().await.unwrap();
        drop(given_up);
        let Writes::Pooled(connections) = &writes else {
            unreachable!("PostgreSQL writes are pooled")
        };
        for _ in 0..100 {
            if !connections.idle().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(connections.idle().len(), 1, "rolled back and kept");
        let mut kept = writes.begin().await.unwrap();
        insert(&mut kept, 2, "b").await;
        kept.commit(None).await.unwrap();
        assert_eq!(texts(&writes).await, ["b"]);

        // Calls given up while BEGIN is on the way (the future dropped after one poll) or just
        // after it: each connection is rolled back before it is used again, so the next write on it
        // commits, as another connection sees.
        for attempt in 0..10 {
            let mut beginning = Box::pin(writes.begin());
            if let std::task::Poll::Ready(begun) = futures::poll!(&mut beginning) {
                drop(begun.unwrap());
            }
            drop(beginning);
            for _ in 0..100 {
                if !connections.idle().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut tx = writes.begin_guarded().expect("PostgreSQL guards writes");
            tx.write("INSERT INTO notes (id, text) VALUES ($1, $2)")
                .bind(100 + attempt)
                .bind(format!("after given-up call {attempt}"))
                .run(Expect::default())
                .await
                .unwrap();
            assert!(tx.commit_guarded().await.unwrap());
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE id >= 100")
                .fetch_one(&schema.pool)
                .await
                .unwrap();
            assert_eq!(seen, attempt + 1, "attempt {attempt}");
        }
        sqlx::query("DELETE FROM notes WHERE id >= 100")
            .execute(&schema.pool)
            .await
            .unwrap();

        /// A guarded write: note 2 renamed if still at `version`, and note `id` inserted, unless a
        /// note says "forbidden".
        async fn guarded(writes: &Writes, version: i64, id: i64, text: &str) -> Result<bool> {
            let mut tx = writes.begin_guarded().expect("PostgreSQL guards writes");
            tx.write(
                "UPDATE notes SET text = $1, version = version + 1 WHERE id = 2 AND version = $2",
            )
            .bind(format!("b{id}"))
            .bind(version)
            .run(Expect::changes(1, "note 2 moved on".into()))
            .await?;
            tx.write("INSERT INTO notes (id, text) VALUES ($1, $2)")
                .bind(id)
                .bind(text.to_owned())
                .run(Expect::default())
                .await?;
            tx.guard("SELECT 1 FROM notes WHERE text = $1")
                .bind("forbidden")
                .run(Expect::changes(0, "a forbidden note".into()))
                .await?;
            tx.commit_guarded().await
        }

        assert!(guarded(&writes, 0, 3, "c").await.unwrap());
        assert_eq!(texts(&writes).await, ["b3", "c"]);
        // The guard on note 2 fails: nothing is written, not even the insert beside it.
        assert!(!guarded(&writes, 0, 4, "d").await.unwrap());
        // A unique constraint stops it: nothing is written.
        assert!(!guarded(&writes, 1, 5, "c").await.unwrap());
        assert_eq!(texts(&writes).await, ["b3", "c"]);
        // A guard that must find no rows finds one: nothing is written.
        let mut tx = writes.begin().await.unwrap();
        insert(&mut tx, 6, "forbidden").await;
        tx.commit(None).await.unwrap();
        assert!(!guarded(&writes, 1, 7, "g").await.unwrap());
        assert_eq!(texts(&writes).await, ["b3", "c", "forbidden"]);

        // Closing waits for the writes in progress; a connection they give back then goes straight
        // back to the pool (not to be kept until the sweep finds it idle), so the close ends at once.
        let in_progress = writes.begin().await.unwrap();
        let closing = tokio::spawn({
            let writes = writes.clone();
            async move { writes.close().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(in_progress);
        tokio::time::timeout(IDLE_CHECK / 2, closing)
            .await
            .expect("the close ends")
            .unwrap();
        schema.remove().await;
    }
}
