//! SQLite: the audit events of a round of reads, written on a connection of their own.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands it every statement and every
//! answer across threads. For the events of a round of payment reads that hand-over cost more than
//! SQLite's own work: a round is written here instead, on a connection to the same file opened for
//! it, by the round's task itself — in the writers' turn, with no await between BEGIN IMMEDIATE and
//! the end of COMMIT, so that nothing can leave it half done. The connection does not wait for a
//! write lock another process holds (that would hold up the runtime's thread): such a round is left
//! to sqlx's thread.

use super::generations::Generations;
use super::rows;
use super::trail::{AuditedRead, Groups, Written};
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The connection (opened when first needed, and again after it failed) to the database file.
pub(super) struct OwnConnection {
    file: PathBuf,
    connection: Mutex<Option<Connection>>,
}

impl OwnConnection {
    pub fn new(file: PathBuf) -> Self {
        Self {
            file,
            connection: Mutex::new(None),
        }
    }

    /// Writes the events of `reads`, grouped as `groups`, in one transaction; `None` (nothing
    /// written) if another process holds SQLite's write lock. Call only in the writers' turn.
    pub fn write<'a>(
        &self,
        generations: Option<&Generations>,
        reads: &'a [AuditedRead],
        groups: Groups<'a>,
    ) -> Result<Option<Written<'a>>> {
        let mut kept = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let connection = match kept.as_mut() {
            Some(connection) => connection,
            None => kept.insert(open(&self.file).map_err(sqlite_error)?),
        };
        let written = transaction(connection, generations, reads, groups);
        if written.is_err() && !connection.is_autocommit() {
            // The rollback on the way out failed: a connection still in a transaction is not used
            // again (closing it rolls the transaction back).
            *kept = None;
        }
        written.map_err(|error| match error {
            Failure::Sqlite(error) => sqlite_error(error),
            Failure::Service(error) => error,
        })
    }
}

fn open(file: &PathBuf) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The writers' connections' settings (Store::connect) but for waiting on a busy database; the
    // file is in WAL mode already.
    connection.busy_timeout(Duration::ZERO)?;
    connection.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -512;",
    )?;
    Ok(connection)
}

enum Failure {
    Sqlite(rusqlite::Error),
    Service(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

/// Per onboarding, moves `last_event` on by its reads' events if the revision still matches, then
/// inserts them; the write generations of the onboardings written move around the COMMIT, their
/// tickets taken while the write lock is held.
fn transaction<'a>(
    connection: &mut Connection,
    generations: Option<&Generations>,
    reads: &'a [AuditedRead],
    groups: Groups<'a>,
) -> std::result::Result<Option<Written<'a>>, Failure> {
    let mut written = Written::new(reads);
    // Rolled back when dropped uncommitted.
    let tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Err(error) if busy(&error) => return Ok(None),
        begun => begun?,
    };
    for (group, members) in groups {
        let (onboarding_id, tenant, _, revision) = group;
        let count = i64::try_from(members.len()).unwrap_or(i64::MAX);
        let last: Option<i64> = tx
            .prepare_cached(rows::COUNT_AUDITED_READS)?
            .query_row(params![count, onboarding_id, tenant, revision], |row| {
                row.get(0)
            })
            .optional()?;
        let Some(last) = last else { continue };
        let mut insert = tx.prepare_cached(rows::insert_events(super::Backend::Sqlite, 1))?;
        for (index, sequence) in written.moved(group, &members, last) {
            let event = &reads[index].event;
            let transitions = rows::json(&event.transitions).map_err(Failure::Service)?;
            insert.execute(params![
                onboarding_id,
                sequence,
                tenant,
                event.event_time,
                event.actor,
                event.method,
                event.request_id,
                event.correlation_id,
                event.outcome,
                event.summary,
                transitions,
            ])?;
        }
    }
    let slots = written.slots();
    let writing = generations
        .filter(|_| !slots.is_empty())
        .map(|generations| generations.begin(slots));
    tx.commit()?;
    if let Some(writing) = writing {
        written.stamps = writing.stamps();
    }
    Ok(Some(written))
}

/// SQLite's "busy" or "locked": another connection holds the lock.
fn busy(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// As `db_error` says of sqlx's errors: a busy or locked database, or one that cannot be opened
/// or read, is UNAVAILABLE (the call may be retried); anything else is internal.
fn sqlite_error(error: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let unavailable = busy(&error)
        || matches!(
            error.sqlite_error_code(),
            Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure)
        );
    super::classified(error, unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Environment;
    use crate::storage::generations::{Slot, UNSTAMPED};
    use crate::storage::trail::groups;
    use crate::storage::trail::tests::read;

    /// Each onboarding's trail end, and each event's onboarding, sequence number and actor.
    type Trails = (Vec<(String, i64)>, Vec<(String, i64, String)>);

    fn trails(file: &PathBuf) -> Trails {
        let connection = Connection::open(file).unwrap();
        let ends = connection
            .prepare("SELECT id, last_event FROM onboardings ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let events = connection
            .prepare("SELECT onboarding_id, sequence, actor FROM events ORDER BY onboarding_id, sequence")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        (ends, events)
    }

    fn owned(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
        rows.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    /// A round is one transaction: reads of an onboarding still at their revision get the next
    /// numbers and the write generation moves; a read of an onboarding that moved on gets `None`.
    /// When any insert fails nothing of the round is written, and the next round writes on a
    /// connection that is not left inside a transaction.
    #[test]
    fn a_round_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trail.sqlite3");
        Connection::open(&file)
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE onboardings (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, \
                 revision BIGINT NOT NULL, last_event BIGINT NOT NULL);
                 CREATE TABLE events (onboarding_id TEXT NOT NULL, sequence BIGINT NOT NULL, \
                 tenant TEXT NOT NULL, event_time BIGINT NOT NULL, actor TEXT NOT NULL, method TEXT NOT NULL, \
                 request_id TEXT NOT NULL, correlation_id TEXT NOT NULL, outcome TEXT NOT NULL, \
                 summary TEXT NOT NULL, transitions TEXT NOT NULL, PRIMARY KEY (onboarding_id, sequence));
                 INSERT INTO onboardings VALUES ('a', 'tenant-a', 1, 1), ('b', 'tenant-b', 2, 5), \
                 ('c', 'tenant-c', 1, 1);
                 -- An event already at the number c's next read would take.
                 INSERT INTO events VALUES ('c', 2, 'tenant-c', 0, 'x', 'm', 'r', '', 'OK', 's', '[]');",
            )
            .unwrap();
        let generations = Generations::open(&file).unwrap();
        let own = OwnConnection::new(file.clone());

        let reads = [
            read("a", 1, "first"),
            read("b", 1, "overtaken"),
            read("a", 1, "second"),
        ];
        let written = own
            .write(Some(&generations), &reads, groups(&reads))
            .unwrap()
            .unwrap();
        assert_eq!(written.sequences, [Some(2), None, Some(3)]);
        assert_eq!(
            written.moved_on,
            [("a", "tenant-a", Environment::Test, 1, 3)]
        );
        let stamp = written.stamps.of("tenant-a", Environment::Test);
        assert_ne!(stamp, UNSTAMPED);
        assert_eq!(
            generations.settled(Slot::of("tenant-a", Environment::Test)),
            Some(stamp)
        );
        assert_eq!(written.stamps.of("tenant-b", Environment::Test), UNSTAMPED);

        let failing = [read("a", 1, "lost"), read("c", 1, "failing")];
        let error = own
            .write(Some(&generations), &failing, groups(&failing))
            .err()
            .expect("c's event collides with one already written");
        assert!(matches!(error, Error::Internal(_)), "{error:?}");
        let (ends, events) = trails(&file);
        assert_eq!(ends, owned(&[("a", 3), ("b", 5), ("c", 1)]));
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(
            generations
                .settled(Slot::of("tenant-a", Environment::Test))
                .is_some(),
            "a failed round leaves no write in flight"
        );

        // Another process holding the write lock: nothing is written and nothing waits.
        let mut other = Connection::open(&file).unwrap();
        let held = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let again = [read("a", 1, "third")];
        let started = std::time::Instant::now();
        let refused = own
            .write(Some(&generations), &again, groups(&again))
            .unwrap();
        assert!(refused.is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);

        let written = own
            .write(Some(&generations), &again, groups(&again))
            .unwrap()
            .unwrap();
        assert_eq!(written.sequences, [Some(4)]);
        let (ends, events) = trails(&file);
        assert_eq!(ends, owned(&[("a", 4), ("b", 5), ("c", 1)]));
        let actors: Vec<(&str, i64, &str)> = events
            .iter()
            .map(|(id, sequence, actor)| (id.as_str(), *sequence, actor.as_str()))
            .collect();
        assert_eq!(
            actors,
            [
                ("a", 2, "first"),
                ("a", 3, "second"),
                ("a", 4, "third"),
                ("c", 2, "x")
            ]
        );
    }
}
