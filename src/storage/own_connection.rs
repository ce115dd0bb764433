//! SQLite: the audit events of a round of reads, written on a connection of their own.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands it every statement and every
//! answer across threads. For the events of a round of payment reads that hand-over cost more than
//! SQLite's own work: a round is written here instead, on a connection to the same file opened for
//! it, by the round's task itself — in the writers' turn, with no await between BEGIN IMMEDIATE and
//! the end of COMMIT, so that nothing can leave it half done. The connection does not wait for a
//! write lock another process holds (that would hold up the runtime's thread): such a round is left
//! to sqlx's thread.
//!
//! Nor does that connection checkpoint the log (copy what it holds into the database file and sync
//! both, which SQLite does after a commit that leaves the log longer than 1,000 pages, stopping the
//! writes and the runtime's thread for milliseconds): its commits start a checkpoint on a blocking
//! thread instead, which runs beside the writes. As long as writes keep coming such checkpoints
//! cannot catch up with the end of the log, which then grows; past four times that length one
//! checkpoint holds the writers' turn, so that it copies the whole log and the next write starts it
//! over.

use super::generations::Generations;
use super::rows;
use super::trail::{AuditedRead, Groups, Written, groups};
use super::writes::Writes;
use crate::error::{Error, Result};
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, TransactionBehavior, params};
use std::cell::Cell;
use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Pages the log may gain before a checkpoint starts (SQLite's own default).
const CHECKPOINT_PAGES: i32 = 1000;

/// Pages in the log past which a checkpoint holds the writers' turn.
const CATCH_UP_PAGES: i32 = 4 * CHECKPOINT_PAGES;

thread_local! {
    /// Pages in the log after the last commit on this thread of a connection [`open`] opened.
    static LOG_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's call after each commit of a connection [`open`] opened (instead of its checkpoint).
fn note_log_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    LOG_PAGES.set(pages);
    Ok(())
}

/// The round's connection to the database file, and the checkpoints its commits start.
pub(super) struct OwnConnection {
    kept: Kept,
    /// Whose turns the writes take (and a checkpoint of a long log).
    writes: Writes,
    /// Pages in the log after this connection's last commit.
    log_pages: AtomicI32,
    checkpoints: Arc<Checkpoints>,
}

impl OwnConnection {
    pub fn new(file: PathBuf, writes: Writes) -> Self {
        Self {
            writes,
            checkpoints: Arc::new(Checkpoints {
                kept: Kept::new(file.clone()),
                running: AtomicBool::new(false),
                copied: AtomicI32::new(0),
            }),
            kept: Kept::new(file),
            log_pages: AtomicI32::new(0),
        }
    }

    /// Writes the events of `reads` in one transaction, in the writers' turn; `None` (nothing
    /// written) if another process holds SQLite's write lock. Then starts a checkpoint if one is due.
    pub async fn write<'a>(
        &self,
        generations: Option<&Generations>,
        reads: &'a [AuditedRead],
    ) -> Result<Option<Written<'a>>> {
        let turn = self.writes.turn().await?;
        let written = self.write_in_turn(generations, reads);
        drop(turn);
        self.checkpoint();
        written
    }

    fn write_in_turn<'a>(
        &self,
        generations: Option<&Generations>,
        reads: &'a [AuditedRead],
    ) -> Result<Option<Written<'a>>> {
        let written = self
            .kept
            .with(|connection| {
                // Set by SQLite's call after a commit that wrote pages.
                LOG_PAGES.set(-1);
                let written = transaction(connection, generations, reads, groups(reads));
                let pages = LOG_PAGES.get();
                if pages >= 0 {
                    self.log_pages.store(pages, Ordering::Relaxed);
                }
                // A connection still in a transaction (the rollback on the way out failed) is not
                // used again: closing it rolls the transaction back.
                let keep = written.is_ok() || connection.is_autocommit();
                (written, keep)
            })
            .map_err(sqlite_error)?;
        written.map_err(|error| match error {
            Failure::Sqlite(error) => sqlite_error(error),
            Failure::Service(error) => error,
        })
    }

    /// Starts a checkpoint on a blocking thread if the log has grown enough since the last one and
    /// none is running; one that holds the writers' turn if the log is long.
    fn checkpoint(&self) {
        let pages = self.log_pages.load(Ordering::Relaxed);
        let copied = self.checkpoints.copied.load(Ordering::Relaxed);
        // Fewer pages than the last checkpoint copied: the log has started over since.
        let uncopied = if pages < copied {
            pages
        } else {
            pages - copied
        };
        let catch_up = pages >= CATCH_UP_PAGES;
        if (uncopied < CHECKPOINT_PAGES && !catch_up)
            || self.checkpoints.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let checkpoints = self.checkpoints.clone();
        let writes = catch_up.then(|| self.writes.clone());
        tokio::spawn(async move {
            // Without the turn (the wait for it timed out) the checkpoint copies what it can.
            let turn = match &writes {
                Some(writes) => writes.turn().await.ok(),
                None => None,
            };
            let running = checkpoints.clone();
            let done = tokio::task::spawn_blocking(move || {
                let done = checkpoints.run();
                drop(turn);
                done
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %sqlite_error(error), "checkpoint of the SQLite log failed; the next commit tries again");
                }
                Err(error) => tracing::warn!(%error, "checkpoint of the SQLite log did not finish"),
            }
            running.running.store(false, Ordering::Release);
        });
    }
}

/// Checkpoints of the log, one at a time, on a connection of their own.
struct Checkpoints {
    kept: Kept,
    running: AtomicBool,
    /// Pages of the log the last checkpoint left copied into the database file.
    copied: AtomicI32,
}

impl Checkpoints {
    /// Copies what it can of the log into the database file (without waiting for readers or
    /// writers), syncing the log before and the file after, as SQLite's own checkpoint does.
    fn run(&self) -> rusqlite::Result<()> {
        let copied = self.kept.with(|connection| {
            let copied = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i32>(2)
            });
            let keep = copied.is_ok();
            (copied, keep)
        })??;
        self.copied.store(copied.max(0), Ordering::Relaxed);
        Ok(())
    }
}

/// A connection to the database file, opened when first needed and again after it was dropped.
struct Kept {
    file: PathBuf,
    connection: Mutex<Option<Connection>>,
}

impl Kept {
    fn new(file: PathBuf) -> Self {
        Self {
            file,
            connection: Mutex::new(None),
        }
    }

    /// What `work` does with the connection, which it also tells whether to keep.
    fn with<T>(&self, work: impl FnOnce(&mut Connection) -> (T, bool)) -> rusqlite::Result<T> {
        let mut kept = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let connection = match kept.as_mut() {
            Some(connection) => connection,
            None => kept.insert(open(&self.file)?),
        };
        let (outcome, keep) = work(connection);
        if !keep {
            *kept = None;
        }
        Ok(outcome)
    }
}

fn open(file: &PathBuf) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The writers' connections' settings (Store::connect) but for waiting on a busy database, and
    // for foreign keys: an event is inserted here only after the UPDATE of its onboarding's row
    // in the same transaction returned that row, so the check would look the row up again for
    // nothing. The file is in WAL mode already.
    connection.busy_timeout(Duration::ZERO)?;
    connection.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -512;",
    )?;
    // In place of SQLite's own checkpoint after a commit (see the module's documentation).
    connection.wal_hook(Some(note_log_pages));
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
        let numbered: Vec<(usize, i64)> = written.moved(group, &members, last).collect();
        let mut rest = numbered.as_slice();
        while !rest.is_empty() {
            // Statements of as many rows as a power of two: few of them are kept prepared.
            let width = 1 << rest.len().min(rows::EVENTS_PER_INSERT).ilog2();
            let (chunk, after) = rest.split_at(width);
            let mut insert =
                tx.prepare_cached(rows::insert_events(super::Backend::Sqlite, width))?;
            for (row, &(index, sequence)) in chunk.iter().enumerate() {
                let event = &reads[index].event;
                let transitions = rows::json(&event.transitions).map_err(Failure::Service)?;
                let values: [&dyn ToSql; rows::EVENT_VALUES] = [
                    &onboarding_id,
                    &sequence,
                    &tenant,
                    &event.event_time,
                    &event.actor,
                    &event.method,
                    &event.request_id,
                    &event.correlation_id,
                    &event.outcome,
                    &event.summary,
                    &transitions,
                ];
                for (column, value) in values.into_iter().enumerate() {
                    insert.raw_bind_parameter(row * rows::EVENT_VALUES + column + 1, value)?;
                }
            }
            insert.raw_execute()?;
            rest = after;
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

    /// A database file with the trail's two tables, in WAL mode, and the onboardings given.
    fn trail_file(dir: &tempfile::TempDir, onboardings: &str) -> PathBuf {
        let file = dir.path().join("trail.sqlite3");
        Connection::open(&file)
            .unwrap()
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE onboardings (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, \
                 revision BIGINT NOT NULL, last_event BIGINT NOT NULL);
                 CREATE TABLE events (onboarding_id TEXT NOT NULL, sequence BIGINT NOT NULL, \
                 tenant TEXT NOT NULL, event_time BIGINT NOT NULL, actor TEXT NOT NULL, method TEXT NOT NULL, \
                 request_id TEXT NOT NULL, correlation_id TEXT NOT NULL, outcome TEXT NOT NULL, \
                 summary TEXT NOT NULL, transitions TEXT NOT NULL, PRIMARY KEY (onboarding_id, sequence));
                 INSERT INTO onboardings VALUES {onboardings};"
            ))
            .unwrap();
        file
    }

    /// The writers' turns of a pool on `file`.
    async fn writes_on(file: &std::path::Path) -> Writes {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        Writes::new(super::super::Backend::Sqlite, pool, Duration::from_secs(30))
    }

    fn owned(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
        rows.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    /// A round is one transaction: reads of an onboarding still at their revision get the next
    /// numbers and the write generation moves; a read of an onboarding that moved on gets `None`.
    /// When any insert fails nothing of the round is written, and the next round writes on a
    /// connection that is not left inside a transaction.
    #[tokio::test]
    async fn a_round_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let file = trail_file(
            &dir,
            "('a', 'tenant-a', 1, 1), ('b', 'tenant-b', 2, 5), ('c', 'tenant-c', 1, 1);
             -- An event already at the number c's next read would take.
             INSERT INTO events VALUES ('c', 2, 'tenant-c', 0, 'x', 'm', 'r', '', 'OK', 's', '[]')",
        );
        let generations = Generations::open(&file).unwrap();
        let own = OwnConnection::new(file.clone(), writes_on(&file).await);

        let reads = [
            read("a", 1, "first"),
            read("b", 1, "overtaken"),
            read("a", 1, "second"),
        ];
        let written = own
            .write(Some(&generations), &reads)
            .await
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
            .write(Some(&generations), &failing)
            .await
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
        let refused = own.write(Some(&generations), &again).await.unwrap();
        assert!(refused.is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);

        let written = own
            .write(Some(&generations), &again)
            .await
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

    /// The connection's commits leave checkpoints to a thread of their own, and the log still stays
    /// short: it is copied into the database file and starts over while rounds keep coming.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_checkpointed_beside_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = trail_file(&dir, "('a', 'tenant-a', 1, 1)");
        let own = OwnConnection::new(file.clone(), writes_on(&file).await);
        let log = dir.path().join("trail.sqlite3-wal");
        // Without checkpoints these rounds would leave the log some 18,000 pages long. Seven reads
        // of one onboarding are written by statements of four, two and one rows.
        let (rounds, per_round) = (5000, 7);
        let mut longest = 0;
        for round in 0..rounds {
            let reads: Vec<_> = (0..per_round)
                .map(|n| read("a", 1, &format!("reader-{round}-{n}")))
                .collect();
            let written = own.write(None, &reads).await.unwrap().unwrap();
            let numbers: Vec<_> = (1..=per_round)
                .map(|n| Some(1 + per_round * round + n))
                .collect();
            assert_eq!(written.sequences, numbers);
            longest = longest.max(std::fs::metadata(&log).unwrap().len());
            tokio::task::yield_now().await;
        }
        let page = 4096 + 24;
        assert!(
            longest < 2 * u64::try_from(CATCH_UP_PAGES).unwrap() * page,
            "the log reached {} pages",
            longest / page
        );
        while own.checkpoints.running.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let count = |file: &PathBuf| -> i64 {
            Connection::open(file)
                .unwrap()
                .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(count(&file), per_round * rounds);
        // The database file alone, without its log, holds what the checkpoints copied.
        let alone = dir.path().join("alone.sqlite3");
        std::fs::copy(&file, &alone).unwrap();
        let copied = count(&alone);
        assert!(copied > per_round * rounds / 2, "{copied} events copied");
    }
}
