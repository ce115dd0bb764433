//! What can go wrong in storage, in the terms its callers act on. Database errors are classified
//! by their codes and types, never by their text.

use sqlx::error::DatabaseError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database cannot be reached or cannot answer now (connection refused or lost, the pool
    /// exhausted, the server restarting, the file locked by another process past the busy timeout).
    /// A later retry may succeed.
    #[error("the database cannot be reached")]
    Unreachable(#[source] anyhow::Error),

    /// The disk that holds the database is full: writes are refused until space is freed, reads go
    /// on. Nothing of the refused write was kept.
    #[error("the disk that holds the database is full")]
    DiskFull(#[source] anyhow::Error),

    /// A row with the same key exists: the resource named, or a request_id stored before.
    #[error("{0} already exists")]
    Duplicate(String),

    /// Anything else: a failed statement, a stored value that does not read back.
    #[error("a database operation failed")]
    Internal(#[source] anyhow::Error),
}

impl StorageError {
    /// How long a caller should wait before retrying, for the errors a retry can mend.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unreachable(_) => Some(Duration::from_secs(1)),
            Self::DiskFull(_) => Some(Duration::from_secs(30)),
            Self::Duplicate(_) | Self::Internal(_) => None,
        }
    }

    pub(super) fn internal(message: String) -> Self {
        Self::Internal(anyhow::Error::msg(message))
    }
}

/// SQLite's primary result codes that the store tells apart (the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_FULL: i64 = 13;

/// Turns a database error into a [`StorageError`]: connection trouble is `Unreachable`, a full
/// disk `DiskFull`, a unique key `Duplicate` (of `what`), anything else `Internal`.
pub(super) fn classify(error: sqlx::Error, what: impl FnOnce() -> String) -> StorageError {
    let unreachable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                return StorageError::Duplicate(what());
            }
            if let Some(code) = sqlite_code(db.as_ref()) {
                if code & 0xff == SQLITE_FULL {
                    return StorageError::DiskFull(error.into());
                }
                code & 0xff == SQLITE_BUSY || code & 0xff == SQLITE_LOCKED
            } else {
                // PostgreSQL: class 08 (connection exception) and 57P0x (the server shutting
                // down or restarting) end the session; 53100 is its disk full.
                let code = db.code().unwrap_or_default();
                if code == "53100" {
                    return StorageError::DiskFull(error.into());
                }
                code.starts_with("08") || code.starts_with("57P")
            }
        }
        _ => false,
    };
    if unreachable {
        StorageError::Unreachable(error.into())
    } else {
        StorageError::Internal(anyhow::Error::new(error).context("database statement failed"))
    }
}

/// The extended result code of a SQLite error; `None` for PostgreSQL's.
fn sqlite_code(error: &(dyn DatabaseError + 'static)) -> Option<i64> {
    error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(|sqlite| sqlite.code())
        .and_then(|code| code.parse().ok())
}
