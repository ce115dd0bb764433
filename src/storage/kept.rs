//! Connections kept ready between statements.
//!
//! sqlx's pool tests each connection handed back to it (a ping: on PostgreSQL a round trip to the
//! server, on SQLite a trip to the connection's thread), which doubles the cost of a one-statement
//! read and adds one to every write. So the store takes its connections from the pool once and keeps
//! them here between uses, handing them out again as they are; every statement of the store goes
//! through here. One idle for longer than [`TEST_AFTER_IDLE`] is tested first; one whose statement
//! failed or was abandoned half-way goes back through the pool, which tests it and closes it if it
//! is broken. As many may be out at once as the pool allows: the others wait their turn here, up to
//! the acquire timeout.

use super::{Result, StorageError, TEST_AFTER_IDLE, db_error};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(super) struct Kept {
    pool: AnyPool,
    idle: Mutex<Vec<(PoolConnection<Any>, Instant)>>,
    /// One per connection the pool allows.
    turns: Arc<Semaphore>,
    wait: Duration,
}

impl Kept {
    /// Keeps connections of `pool`, of which at most `connections` exist; a caller waits up to
    /// `wait` for one.
    pub fn new(pool: AnyPool, connections: u32, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            idle: Mutex::new(Vec::new()),
            turns: Arc::new(Semaphore::new(connections as usize)),
            wait,
        })
    }

    /// A connection: a kept one if there is one (tested first if it sat idle), else the pool's.
    pub async fn take(self: &Arc<Self>) -> Result<Held> {
        let turn = tokio::time::timeout(self.wait, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| {
                StorageError::Unreachable(anyhow::anyhow!(
                    "no database connection free within {:?}",
                    self.wait
                ))
            })?
            .map_err(|_| StorageError::Unreachable(anyhow::anyhow!("the store is closed")))?;
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let connection = match idle {
                Some((mut connection, since)) => {
                    if since.elapsed() >= TEST_AFTER_IDLE && connection.ping().await.is_err() {
                        connection.close_on_drop();
                        continue;
                    }
                    connection
                }
                None => self.pool.acquire().await.map_err(db_error)?,
            };
            return Ok(Held {
                connection: Some(connection),
                kept: self.clone(),
                settled: false,
                _turn: turn,
            });
        }
    }

    /// Hands the kept connections back to the pool, and lets nobody take one again (before the
    /// pool is closed).
    pub fn release(&self) {
        // Under the lock, so that no connection is kept after this.
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.turns.close();
        idle.clear();
    }
}

/// A connection taken from [`Kept`]. Kept again when dropped only if [`Held::settled`] was called
/// after its last statement.
pub(super) struct Held {
    connection: Option<PoolConnection<Any>>,
    kept: Arc<Kept>,
    settled: bool,
    /// Given back after the connection is kept again.
    _turn: OwnedSemaphorePermit,
}

impl Held {
    /// The connection for the next statement.
    pub fn connection(&mut self) -> &mut AnyConnection {
        self.settled = false;
        self.connection
            .as_deref_mut()
            .expect("a held connection is there until it is dropped")
    }

    /// Its statements completed and it is outside any transaction: it may be kept.
    pub fn settled(&mut self) {
        self.settled = true;
    }

    /// Closes it instead of handing it back: its state is not known.
    pub fn discard(&mut self) {
        if let Some(connection) = &mut self.connection {
            connection.close_on_drop();
        }
        self.settled = false;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if !self.settled {
            return;
        }
        let mut idle = self
            .kept
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Once the store is closing, every connection goes back to the pool, which waits for them.
        if !self.kept.turns.is_closed() {
            idle.push((connection, Instant::now()));
        }
    }
}
