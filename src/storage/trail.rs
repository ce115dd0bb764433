//! Audit events of reads, written together.
//!
//! A read that must be audited (a payment configuration, which includes credentials) is answered only
//! after its event is committed. Reads that arrive while one round is committing wait for the next,
//! which writes all of their events at once: on SQLite one transaction per round, on PostgreSQL one
//! statement per onboarding of the round (the trail's end moved and the events inserted together,
//! one round trip), instead of one transaction per read. An event is written only if the
//! onboarding is still at the revision the read was answered from; otherwise the caller is told, and
//! reads again.

use super::fresh::Snapshots;
use super::generations::{Generations, Slot, Stamps, UNSTAMPED};
use super::own_connection::OwnConnection;
use super::rounds::{Rounds, shared};
use super::writes::{Connections, Writes};
use super::{Backend, WriteTx, db_error, rows};
use crate::domain::Environment;
use crate::domain::onboarding::EventRecord;
use crate::error::{Error, Result};
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// An answered read and the event that records it.
#[derive(Debug, Clone)]
pub struct AuditedRead {
    pub onboarding_id: String,
    pub tenant: String,
    pub environment: Environment,
    /// The revision the answer was read at.
    pub revision: i64,
    /// Its sequence number is given when it is written.
    pub event: EventRecord,
}

/// Most events one round writes.
const EVENTS_PER_ROUND: usize = 256;

/// How a round's events reach the database.
pub(super) enum Appends {
    /// SQLite: one transaction per round, in the writers' turns, moving the write generations of
    /// the onboardings it writes; on a connection of its own when the database is a file.
    Transaction {
        writes: Writes,
        generations: Option<Arc<Generations>>,
        own: Option<Box<OwnConnection>>,
    },
    /// PostgreSQL: one statement per onboarding (its own transaction: the trail end moved and the
    /// events inserted together), on the writes' connections.
    Statements(Arc<Connections>),
}

impl Appends {
    /// As `writes` make them: a transaction where they take turns (on a connection of its own to
    /// `file`, if the database is one), statements where they are kept.
    pub fn of(
        writes: &Writes,
        generations: Option<Arc<Generations>>,
        file: Option<PathBuf>,
    ) -> Self {
        match writes {
            Writes::Turns(_) => Self::Transaction {
                writes: writes.clone(),
                generations,
                own: file.map(|file| Box::new(OwnConnection::new(file, writes.clone()))),
            },
            Writes::Pooled(connections) => Self::Statements(connections.clone()),
        }
    }

    /// Writes the events of one round's `reads`.
    async fn round(
        &self,
        backend: Backend,
        snapshots: &Snapshots,
        reads: &[AuditedRead],
    ) -> Result<Vec<Appended>> {
        match self {
            Self::Transaction {
                writes,
                generations,
                own,
            } => {
                // On a file the whole transaction runs here, without awaiting. It does not wait for
                // another process's write lock: the round then goes through sqlx's thread, which
                // does (as it does on an in-memory database).
                let written = match own {
                    Some(own) => own.write(generations.as_deref(), reads).await?,
                    None => None,
                };
                let written = match written {
                    Some(written) => written,
                    None => transaction_round(backend, writes, generations.clone(), reads).await?,
                };
                Ok(written.answers(snapshots))
            }
            Self::Statements(connections) => {
                Ok(statements_round(connections, snapshots, reads).await)
            }
        }
    }
}

/// A read's answer from a round: its sequence number, `None` if the onboarding had moved past the
/// read's revision, or why its event was not written.
type Appended = Result<Option<i64>>;

/// Writes audited reads' events for many callers at once (see the module's documentation).
#[derive(Clone)]
pub(super) struct Trail(Rounds<AuditedRead, Appended>);

impl Trail {
    /// Starts the task that writes events as `appends` says; what is kept in `snapshots` moves on
    /// with the trails it writes.
    pub fn start(backend: Backend, appends: Appends, snapshots: Arc<Snapshots>) -> Self {
        let appends = Arc::new(appends);
        Self(Rounds::start(EVENTS_PER_ROUND, move |reads| {
            let appends = appends.clone();
            let snapshots = snapshots.clone();
            async move { appends.round(backend, &snapshots, &reads).await }
        }))
    }

    /// Writes `read`'s event: its sequence number, or `None` if the onboarding has moved past the
    /// read's revision (nothing was written).
    pub async fn append(&self, read: AuditedRead) -> Result<Option<i64>> {
        self.0.ask(read).await?
    }
}

/// The reads of a round by onboarding and revision, in id order (so that concurrent rounds of
/// several replicas lock onboardings in one order and cannot deadlock).
pub(super) type Groups<'a> = BTreeMap<(&'a str, &'a str, Environment, i64), Vec<usize>>;

pub(super) fn groups(reads: &[AuditedRead]) -> Groups<'_> {
    let mut groups = Groups::new();
    for (index, read) in reads.iter().enumerate() {
        groups
            .entry((
                &read.onboarding_id,
                &read.tenant,
                read.environment,
                read.revision,
            ))
            .or_default()
            .push(index);
    }
    groups
}

/// The reads `members` of one onboarding with the sequence numbers their events took, in order,
/// the last of them `last` (the trail's new end).
fn numbered(members: &[usize], last: i64) -> impl Iterator<Item = (usize, i64)> + '_ {
    let count = i64::try_from(members.len()).unwrap_or(i64::MAX);
    (0..)
        .zip(members)
        .map(move |(offset, &index)| (index, last - count + 1 + offset))
}

/// What a SQLite round wrote: each read's sequence number (`None` if its onboarding had moved past
/// the read's revision), the onboardings whose trails moved on, and the stamps their write
/// generations settle at.
pub(super) struct Written<'a> {
    pub sequences: Vec<Option<i64>>,
    /// Id, tenant, environment, revision, and the trail's new end.
    pub moved_on: Vec<(&'a str, &'a str, Environment, i64, i64)>,
    pub stamps: Stamps,
}

impl<'a> Written<'a> {
    pub fn new(reads: &[AuditedRead]) -> Self {
        Self {
            sequences: vec![None; reads.len()],
            moved_on: Vec::new(),
            stamps: Stamps::default(),
        }
    }

    /// Notes that the reads `members` of the onboarding `group` names took the numbers up to `last`;
    /// each read's index and number.
    pub fn moved<'m>(
        &mut self,
        (onboarding_id, tenant, environment, revision): (&'a str, &'a str, Environment, i64),
        members: &'m [usize],
        last: i64,
    ) -> impl Iterator<Item = (usize, i64)> + 'm {
        self.moved_on
            .push((onboarding_id, tenant, environment, revision, last));
        for (index, sequence) in numbered(members, last) {
            self.sequences[index] = Some(sequence);
        }
        numbered(members, last)
    }

    /// The slots of the onboardings written.
    pub fn slots(&self) -> Vec<Slot> {
        let mut slots = Vec::new();
        for &(_, tenant, environment, ..) in &self.moved_on {
            let slot = Slot::of(tenant, environment);
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        slots
    }

    /// Moves what is kept of the onboardings written on, and answers the reads.
    fn answers(self, snapshots: &Snapshots) -> Vec<Appended> {
        for (onboarding_id, tenant, environment, revision, last) in self.moved_on {
            let stamp = self.stamps.of(tenant, environment);
            snapshots.advance(tenant, environment, onboarding_id, revision, last, stamp);
        }
        self.sequences.into_iter().map(Ok).collect()
    }
}

/// One transaction through sqlx: per onboarding, moves `last_event` on by its reads' events if the
/// revision still matches, then inserts them.
async fn transaction_round<'a>(
    backend: Backend,
    writes: &Writes,
    generations: Option<Arc<Generations>>,
    reads: &'a [AuditedRead],
) -> Result<Written<'a>> {
    let mut written = Written::new(reads);
    let mut tx = WriteTx::begin(backend, writes, None, generations).await?;
    for (group, members) in groups(reads) {
        let (onboarding_id, tenant, environment, revision) = group;
        let count = i64::try_from(members.len()).unwrap_or(i64::MAX);
        let moved = tx
            .tx
            .read(rows::COUNT_AUDITED_READS)
            .bind(count)
            .bind(onboarding_id)
            .bind(tenant)
            .bind(revision)
            .fetch_optional()
            .await?;
        let Some(row) = moved else { continue };
        let last: i64 = row.try_get("last_event").map_err(db_error)?;
        tx.writes_onboarding(tenant, environment);
        let events: Vec<_> = written
            .moved(group, &members, last)
            .map(|(index, sequence)| (sequence, &reads[index].event))
            .collect();
        tx.insert_events(onboarding_id, tenant, &events).await?;
    }
    written.stamps = tx.commit().await?;
    Ok(written)
}

/// One statement per onboarding, each committed on its own: a read is answered once its own
/// onboarding's statement has committed. After a statement fails, the reads of the onboardings not
/// yet written are told the same error (nothing of theirs was written).
async fn statements_round(
    connections: &Arc<Connections>,
    snapshots: &Snapshots,
    reads: &[AuditedRead],
) -> Vec<Appended> {
    let mut answers: Vec<Appended> = reads.iter().map(|_| Ok(None)).collect();
    let mut failure: Option<Error> = None;
    for ((onboarding_id, tenant, environment, revision), members) in groups(reads) {
        let outcome = match &failure {
            Some(error) => Err(shared(error)),
            None => {
                append_onboarding(
                    connections,
                    onboarding_id,
                    tenant,
                    revision,
                    reads,
                    &members,
                )
                .await
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(last)) => {
                for (index, sequence) in numbered(&members, last) {
                    answers[index] = Ok(Some(sequence));
                }
                snapshots.advance(
                    tenant,
                    environment,
                    onboarding_id,
                    revision,
                    last,
                    UNSTAMPED,
                );
            }
            Err(error) => {
                for index in members {
                    answers[index] = Err(shared(&error));
                }
                failure.get_or_insert(error);
            }
        }
    }
    answers
}

/// An event's columns, as [`rows::APPEND_AUDITED_READS`] reads them.
#[derive(Serialize)]
struct EventValues<'a> {
    k: i64,
    event_time: i64,
    actor: &'a str,
    method: &'a str,
    request_id: &'a str,
    correlation_id: &'a str,
    outcome: &'a str,
    summary: &'a str,
    transitions: String,
}

/// Writes the events of `members` (reads of one onboarding at one revision): the trail's new end,
/// or `None` if the onboarding has moved past the revision.
async fn append_onboarding(
    connections: &Arc<Connections>,
    onboarding_id: &str,
    tenant: &str,
    revision: i64,
    reads: &[AuditedRead],
    members: &[usize],
) -> Result<Option<i64>> {
    let events = (0..)
        .zip(members)
        .map(|(k, &index)| {
            let event = &reads[index].event;
            Ok(EventValues {
                k,
                event_time: event.event_time,
                actor: &event.actor,
                method: &event.method,
                request_id: &event.request_id,
                correlation_id: &event.correlation_id,
                outcome: &event.outcome,
                summary: &event.summary,
                transitions: rows::json(&event.transitions)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let events = rows::json(&events)?;
    let mut held = connections.take().await?;
    let moved = sqlx::query(rows::APPEND_AUDITED_READS)
        .bind(count)
        .bind(onboarding_id)
        .bind(tenant)
        .bind(revision)
        .bind(events)
        .fetch_optional(held.alone())
        .await;
    held.finish(moved)
        .map_err(db_error)?
        .map(|row| row.try_get("last_event").map_err(db_error))
        .transpose()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use sqlx::AssertSqlSafe;

    pub(in crate::storage) fn read(onboarding_id: &str, revision: i64, actor: &str) -> AuditedRead {
        AuditedRead {
            onboarding_id: onboarding_id.to_owned(),
            tenant: format!("tenant-{onboarding_id}"),
            environment: Environment::Test,
            revision,
            event: EventRecord {
                sequence: 0,
                event_time: 1_000,
                actor: actor.to_owned(),
                method: "GetPaymentConfiguration".to_owned(),
                request_id: format!("request-{actor}"),
                correlation_id: String::new(),
                outcome: "OK".to_owned(),
                summary: "payment configuration read".to_owned(),
                transitions: Vec::new(),
            },
        }
    }

    /// On PostgreSQL each onboarding of a round is its own statement: one written before a failure
    /// keeps its events and its readers are answered; the one that fails, and those after it, have
    /// nothing written and their readers are told; one that moved on is answered with `None`.
    #[tokio::test]
    async fn postgres_rounds_answer_each_onboarding_by_its_own_statement() {
        let Some(schema) = super::super::test_schema::TestSchema::create("trail_test", 1).await
        else {
            return;
        };
        let pool = schema.pool.clone();
        for statement in [
            "CREATE TABLE onboardings (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, \
             revision BIGINT NOT NULL, last_event BIGINT NOT NULL)",
            "CREATE TABLE events (onboarding_id TEXT NOT NULL, sequence BIGINT NOT NULL, \
             tenant TEXT NOT NULL, event_time BIGINT NOT NULL, actor TEXT NOT NULL, method TEXT NOT NULL, \
             request_id TEXT NOT NULL, correlation_id TEXT NOT NULL, outcome TEXT NOT NULL, \
             summary TEXT NOT NULL, transitions TEXT NOT NULL, PRIMARY KEY (onboarding_id, sequence))",
            "INSERT INTO onboardings VALUES ('a', 'tenant-a', 1, 1), ('b', 'tenant-b', 2, 5), \
             ('c', 'tenant-c', 1, 1), ('d', 'tenant-d', 1, 1)",
            // An event already at the number c's next read would take: c's statement fails.
            "INSERT INTO events VALUES ('c', 2, 'tenant-c', 0, 'x', 'm', 'r', '', 'OK', 's', '[]')",
        ] {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .unwrap();
        }
        let connections = Connections::start(pool.clone());
        let snapshots = Snapshots::new(8);
        let reads = [
            read("d", 1, "after-the-failure"),
            read("a", 1, "first"),
            read("c", 1, "failing"),
            read("b", 1, "overtaken"),
            read("a", 1, "second"),
        ];

        let answers = statements_round(&connections, &snapshots, &reads).await;

        assert!(matches!(answers[0], Err(Error::Internal(_))), "{answers:?}");
        assert_eq!(answers[1].as_ref().unwrap(), &Some(2));
        assert!(matches!(answers[2], Err(Error::Internal(_))), "{answers:?}");
        assert_eq!(answers[3].as_ref().unwrap(), &None);
        assert_eq!(answers[4].as_ref().unwrap(), &Some(3));
        drop(connections);
        let trails: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, last_event FROM onboardings ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let moved: Vec<(&str, i64)> = trails.iter().map(|(id, n)| (id.as_str(), *n)).collect();
        assert_eq!(moved, [("a", 3), ("b", 5), ("c", 1), ("d", 1)]);
        let events: Vec<(String, i64, String, String)> = sqlx::query_as(
            "SELECT onboarding_id, sequence, actor, transitions FROM events ORDER BY onboarding_id, sequence",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let events: Vec<(&str, i64, &str, &str)> = events
            .iter()
            .map(|(id, sequence, actor, transitions)| {
                (id.as_str(), *sequence, actor.as_str(), transitions.as_str())
            })
            .collect();
        assert_eq!(
            events,
            [
                ("a", 2, "first", "[]"),
                ("a", 3, "second", "[]"),
                ("c", 2, "x", "[]")
            ]
        );
        schema.remove().await;
    }
}
