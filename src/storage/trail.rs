//! Audit events of reads, written together.
//!
//! A read that must be audited (a payment configuration, which includes credentials) is answered only
//! after its event is committed. Reads that arrive while one transaction is committing wait for the
//! next, which writes all of their events at once: one transaction per round instead of one per read.
//! An event is written only if the onboarding is still at the revision the read was answered from;
//! otherwise the caller is told, and reads again.

use super::fresh::Snapshots;
use super::generations::Generations;
use super::rounds::Rounds;
use super::writes::Writes;
use super::{Backend, WriteTx, db_error, rows};
use crate::domain::Environment;
use crate::domain::onboarding::EventRecord;
use crate::error::Result;
use sqlx::Row;
use std::collections::BTreeMap;
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

/// Most events one transaction writes.
const EVENTS_PER_ROUND: usize = 256;

/// Writes audited reads' events for many callers at once (see the module's documentation).
#[derive(Clone)]
pub(super) struct Trail(Rounds<AuditedRead, Option<i64>>);

impl Trail {
    /// Starts the task that writes events through `writes`; what is kept in `snapshots` moves on
    /// with the trails it writes.
    pub fn start(
        backend: Backend,
        writes: Writes,
        snapshots: Arc<Snapshots>,
        generations: Option<Arc<Generations>>,
    ) -> Self {
        Self(Rounds::start(EVENTS_PER_ROUND, move |reads| {
            let writes = writes.clone();
            let snapshots = snapshots.clone();
            let generations = generations.clone();
            async move { write_round(backend, &writes, &snapshots, generations, &reads).await }
        }))
    }

    /// Writes `read`'s event: its sequence number, or `None` if the onboarding has moved past the
    /// read's revision (nothing was written).
    pub async fn append(&self, read: AuditedRead) -> Result<Option<i64>> {
        self.0.ask(read).await
    }
}

/// One transaction: per onboarding (in id order, so concurrent rounds of several replicas cannot
/// deadlock), moves `last_event` on by its reads' events if the revision still matches, then inserts
/// them.
async fn write_round(
    backend: Backend,
    writes: &Writes,
    snapshots: &Snapshots,
    generations: Option<Arc<Generations>>,
    reads: &[AuditedRead],
) -> Result<Vec<Option<i64>>> {
    let mut groups: BTreeMap<(&str, &str, Environment, i64), Vec<usize>> = BTreeMap::new();
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
    let mut sequences = vec![None; reads.len()];
    let mut moved_on = Vec::new();
    let mut tx = WriteTx::begin(backend, writes, None, generations).await?;
    for ((onboarding_id, tenant, environment, revision), members) in groups {
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
        moved_on.push((onboarding_id, tenant, environment, revision, last));
        let mut events = Vec::with_capacity(members.len());
        for (offset, index) in (0..).zip(members) {
            let sequence = last - count + 1 + offset;
            sequences[index] = Some(sequence);
            events.push((sequence, &reads[index].event));
        }
        tx.insert_events(onboarding_id, tenant, &events).await?;
    }
    let stamps = tx.commit().await?;
    for (onboarding_id, tenant, environment, revision, last) in moved_on {
        let stamp = stamps.of(tenant, environment);
        snapshots.advance(tenant, environment, onboarding_id, revision, last, stamp);
    }
    Ok(sequences)
}
