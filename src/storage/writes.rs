//! Where writes run.
//!
//! PostgreSQL writes run side by side on pooled connections. SQLite allows one writer at a time, so
//! its writes take turns on one connection kept for them: a pooled connection would be tested with a
//! round trip to the database when it is taken and again when it is given back — two of the dozen
//! round trips of a typical write transaction, made while every other writer waits. The read rounds
//! (`fresh`) keep a connection of their own the same way.

use super::{Backend, db_error};
use crate::error::{Error, Result};
use sqlx::{AnyConnection, AnyPool, Executor};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The connections writes run on.
#[derive(Clone)]
pub(super) enum Writes {
    Pooled(AnyPool),
    Turns(Arc<KeptConnection>),
}

impl Writes {
    /// Writes on `pool`: pooled for PostgreSQL, in turns on one of its connections for SQLite,
    /// each waiting at most `wait` for its turn.
    pub fn new(backend: Backend, pool: AnyPool, wait: Duration) -> Self {
        match backend {
            Backend::Postgres => Self::Pooled(pool),
            Backend::Sqlite => Self::Turns(Arc::new(KeptConnection::new(pool, wait))),
        }
    }

    /// Starts a transaction. SQLite takes the write lock at the start, so that writers in other
    /// processes on the same file wait (busy_timeout) instead of reading a version another writer
    /// is about to replace; PostgreSQL locks rows as they are read for update.
    pub async fn begin(&self) -> Result<Tx> {
        match self {
            Self::Pooled(pool) => Ok(Tx::Pooled(pool.begin().await.map_err(db_error)?)),
            Self::Turns(turns) => {
                let mut turn = Turn {
                    held: turns.take().await?,
                    open: true,
                };
                if let Err(error) = turn.execute("BEGIN IMMEDIATE").await {
                    turn.open = false;
                    return Err(db_error(error));
                }
                Ok(Tx::Turn(turn))
            }
        }
    }

    /// Runs one statement on its own (committed when it returns).
    pub async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<sqlx::any::AnyQueryResult> {
        match self {
            Self::Pooled(pool) => query.execute(pool).await,
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
            Self::Pooled(pool) => pool.close().await,
            Self::Turns(turns) => {
                turns.held.lock().await.take();
                turns.pool.close().await;
            }
        }
    }

    /// The pool writes come from (migrations run on it).
    pub fn pool(&self) -> &AnyPool {
        match self {
            Self::Pooled(pool) => pool,
            Self::Turns(turns) => &turns.pool,
        }
    }
}

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
        let mut held = tokio::time::timeout(self.wait, self.held.clone().lock_owned())
            .await
            .map_err(|_| Error::Unavailable {
                what: "the database",
                retry_after: Duration::from_secs(1),
                source: anyhow::anyhow!("no turn to write within {:?}", self.wait),
            })?;
        if held.is_none() {
            let connection = self.pool.acquire().await.map_err(db_error)?;
            *held = Some(connection.detach());
        }
        Ok(held)
    }
}

/// The connection of a turn [`KeptConnection::take`] gave.
pub(super) fn held_connection(held: &mut Option<AnyConnection>) -> &mut AnyConnection {
    held.as_mut().expect("a turn is given with a connection")
}

/// A write transaction's connection.
pub(super) enum Tx {
    /// Rolled back by sqlx if dropped uncommitted.
    Pooled(sqlx::Transaction<'static, sqlx::Any>),
    Turn(Turn),
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        match self {
            Self::Pooled(tx) => tx.commit().await.map_err(db_error),
            Self::Turn(mut turn) => {
                turn.execute("COMMIT").await.map_err(db_error)?;
                turn.open = false;
                Ok(())
            }
        }
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Pooled(tx) => tx,
            Self::Turn(turn) => turn.held.as_ref().expect("a turn holds a connection"),
        }
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Pooled(tx) => tx,
            Self::Turn(turn) => held_connection(&mut turn.held),
        }
    }
}

/// A transaction on SQLite's writers' connection, the turn held until dropped.
pub(super) struct Turn {
    held: OwnedMutexGuard<Option<AnyConnection>>,
    /// Inside BEGIN, not yet committed.
    open: bool,
}

impl Turn {
    async fn execute(&mut self, statement: &'static str) -> sqlx::Result<()> {
        held_connection(&mut self.held).execute(statement).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(writes: &Writes) -> i64 {
        let mut held = match writes {
            Writes::Turns(turns) => turns.take().await.unwrap(),
            Writes::Pooled(_) => unreachable!("SQLite takes turns"),
        };
        sqlx::query_scalar("SELECT COUNT(*) FROM notes")
            .fetch_one(held_connection(&mut held))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_writes_take_turns_and_an_uncommitted_one_leaves_nothing() {
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
            .execute(sqlx::query("CREATE TABLE notes (text TEXT NOT NULL)"))
            .await
            .unwrap();

        // Dropped uncommitted: rolled back, and the next writer gets its turn on a new connection.
        let mut dropped = writes.begin().await.unwrap();
        sqlx::query("INSERT INTO notes (text) VALUES ('lost')")
            .execute(&mut *dropped)
            .await
            .unwrap();
        drop(dropped);
        assert_eq!(count(&writes).await, 0);

        let mut kept = writes.begin().await.unwrap();
        sqlx::query("INSERT INTO notes (text) VALUES ('kept')")
            .execute(&mut *kept)
            .await
            .unwrap();
        // Another writer waits for its turn, and gives up after the wait with UNAVAILABLE.
        let waited = writes.begin().await.err().expect("the turn is taken");
        assert!(matches!(waited, Error::Unavailable { .. }), "{waited:?}");
        kept.commit().await.unwrap();
        assert_eq!(count(&writes).await, 1);
    }
}
