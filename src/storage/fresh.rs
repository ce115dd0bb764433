//! Reads served from memory that are never older than the database.
//!
//! What an onboarding holds — its stages, creditors and credentials, with the credentials'
//! ciphertexts — is kept in memory under the onboarding's `revision`. Every write of the onboarding
//! or of anything it holds, on any replica, increments the revision in the same transaction (the
//! store refuses a write that does not). A read asks the database for the onboarding's row in a query
//! that starts after the read arrived, and reuses what is kept only if the row shows the revision it
//! was read at; otherwise it reads everything again, row and children in one snapshot. So a read
//! sees every write committed before it arrived, whichever replica made it.
//!
//! The row queries are shared: reads that arrive while one is running wait for the next, which
//! fetches the rows of all of them at once. They fetch only what tells whether what is kept is
//! current — the revision, and the audit trail's last event (audited reads move it on without
//! changing anything else) — so under load many reads cost one small query, and a read whose
//! onboarding is kept shares it rather than copying it.
//!
//! On SQLite the replicas are processes on one machine, and they share write generations
//! ([`generations`](super::generations)): a read answers from what is kept without asking the database while no write
//! of the onboarding has begun, in any of them, since what is kept was known to be current.

use super::rounds::Rounds;
use super::writes::{KeptConnection, held_connection};
use super::{Backend, db_error, rows};
use crate::bounded::Bounded;
use crate::crypto::Sealed;
use crate::domain::onboarding::OnboardingRecord;
use crate::domain::{CredentialField, Environment};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An onboarding as read at one revision, with its stored ciphertexts.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub record: Arc<OnboardingRecord>,
    /// (creditor id or '' for the environment, field, ciphertext).
    pub sealed: Vec<(String, CredentialField, Sealed)>,
    /// The write generation it is known to be current at (SQLite; see [`generations`](super::generations)), or
    /// [`UNSTAMPED`](super::generations::UNSTAMPED).
    stamp: AtomicU64,
}

/// What a read asks of an onboarding's row: enough to tell whether what is kept is current.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub id: String,
    pub revision: i64,
    pub last_event: i64,
}

impl Snapshot {
    /// `record` with its ciphertexts, current at generation `stamp`.
    pub fn new(
        record: Arc<OnboardingRecord>,
        sealed: Vec<(String, CredentialField, Sealed)>,
        stamp: u64,
    ) -> Self {
        Self {
            record,
            sealed,
            stamp: AtomicU64::new(stamp),
        }
    }

    /// `head` (a row read now) with the children kept here.
    pub fn complete(&self, mut head: OnboardingRecord) -> OnboardingRecord {
        head.stages.clone_from(&self.record.stages);
        head.creditors.clone_from(&self.record.creditors);
        head.credentials.clone_from(&self.record.credentials);
        head
    }
}

/// Snapshots by onboarding (tenant and environment), at most `capacity` of them.
pub(super) struct Snapshots(Bounded<Arc<Snapshot>>);

/// The key of an onboarding's snapshot.
fn key(tenant: &str, environment: Environment) -> String {
    format!("{}/{tenant}", environment.as_str())
}

/// `look_up` given the key of an onboarding's snapshot, made on the stack (a tenant's id is at
/// most 63 characters) rather than allocated: lookups are on every read's path.
fn with_key<R>(tenant: &str, environment: Environment, look_up: impl FnOnce(&str) -> R) -> R {
    let prefix = environment.as_str().as_bytes();
    let length = prefix.len() + 1 + tenant.len();
    let mut buffer = [0u8; 96];
    let Some(made) = buffer.get_mut(..length) else {
        return look_up(&key(tenant, environment));
    };
    let (start, rest) = made.split_at_mut(prefix.len());
    start.copy_from_slice(prefix);
    rest[0] = b'/';
    rest[1..].copy_from_slice(tenant.as_bytes());
    look_up(std::str::from_utf8(made).expect("two strings joined by an ASCII character"))
}

impl Snapshots {
    pub fn new(capacity: usize) -> Self {
        Self(Bounded::new(capacity))
    }

    /// The snapshot of `head`'s onboarding at `head`'s revision, if one is kept.
    pub fn get(&self, head: &OnboardingRecord) -> Option<Arc<Snapshot>> {
        self.at(&head.tenant, head.environment, &head.id, head.revision)
    }

    fn at(
        &self,
        tenant: &str,
        environment: Environment,
        id: &str,
        revision: i64,
    ) -> Option<Arc<Snapshot>> {
        with_key(tenant, environment, |key| {
            self.0.get(key, |snapshot| {
                snapshot.record.id == id && snapshot.record.revision == revision
            })
        })
    }

    /// The onboarding as kept, if no write of it can have begun since it was current: its slot is
    /// settled at `settled` (read just now, see [`generations`](super::generations)), the snapshot's
    /// stamp.
    pub fn settled(
        &self,
        tenant: &str,
        environment: Environment,
        settled: u64,
    ) -> Option<Arc<OnboardingRecord>> {
        with_key(tenant, environment, |key| {
            self.0.get(key, |snapshot| {
                snapshot.stamp.load(Ordering::Acquire) == settled
            })
        })
        .map(|snapshot| snapshot.record.clone())
    }

    /// The onboarding as kept, of whatever revision: only for a read whose answer a later write
    /// confirms by checking that revision (an audited read, see [`trail`](super::trail)).
    pub fn unconfirmed(
        &self,
        tenant: &str,
        environment: Environment,
    ) -> Option<Arc<OnboardingRecord>> {
        with_key(tenant, environment, |key| self.0.get(key, |_| true))
            .map(|snapshot| snapshot.record.clone())
    }

    /// The onboarding as `head` (a row read now) shows it, if what is kept is of `head`'s revision;
    /// what is given is then current at `observed`, a generation its slot was settled at before the
    /// row was read. Its audit trail may have moved on since (audited reads): then a copy with the
    /// new last event is kept and given.
    pub fn current(
        &self,
        tenant: &str,
        environment: Environment,
        head: &Head,
        observed: u64,
    ) -> Option<Arc<OnboardingRecord>> {
        let kept = self.at(tenant, environment, &head.id, head.revision)?;
        if kept.record.last_event >= head.last_event {
            kept.stamp.store(observed, Ordering::Release);
            return Some(kept.record.clone());
        }
        let mut record = OnboardingRecord::clone(&kept.record);
        record.last_event = head.last_event;
        let record = Arc::new(record);
        self.put(Arc::new(Snapshot::new(
            record.clone(),
            kept.sealed.clone(),
            observed,
        )));
        Some(record)
    }

    /// After audited reads moved an onboarding's trail on to `last_event` in a write stamped
    /// `stamp`: what is kept of it, if of `revision`, with the trail's new end.
    pub fn advance(
        &self,
        tenant: &str,
        environment: Environment,
        id: &str,
        revision: i64,
        last_event: i64,
        stamp: u64,
    ) {
        let Some(kept) = self.at(tenant, environment, id, revision) else {
            return;
        };
        let mut record = OnboardingRecord::clone(&kept.record);
        record.last_event = record.last_event.max(last_event);
        self.put(Arc::new(Snapshot::new(
            Arc::new(record),
            kept.sealed.clone(),
            stamp,
        )));
    }

    /// Keeps `snapshot` unless a newer one of the same onboarding is kept already.
    pub fn put(&self, snapshot: Arc<Snapshot>) {
        let record = &snapshot.record;
        let newest = (record.revision, record.last_event);
        let key = key(&record.tenant, record.environment);
        self.0.put(&key, snapshot, |kept| {
            (kept.record.revision, kept.record.last_event) > newest
        });
    }

    /// The ciphertext of a secret of `record`, if the snapshot of its revision is kept.
    pub fn sealed(
        &self,
        record: &OnboardingRecord,
        scope: &str,
        field: CredentialField,
    ) -> Option<Option<Sealed>> {
        let snapshot = self.get(record)?;
        Some(
            snapshot
                .sealed
                .iter()
                .find(|(s, f, _)| s == scope && *f == field)
                .map(|(_, _, sealed)| sealed.clone()),
        )
    }

    /// Forgets the snapshot of an onboarding (its ciphertext did not open).
    pub fn forget(&self, record: &OnboardingRecord) {
        self.0.remove(&key(&record.tenant, record.environment));
    }
}

/// Most reads one round answers; the others wait for the next.
const READS_PER_ROUND: usize = 1024;

type Key = (String, Environment);

/// Reads onboarding rows for many callers at once (see the module's documentation).
#[derive(Clone)]
pub(super) struct Rows(Rounds<Key, Option<Head>>);

impl Rows {
    /// Starts the task that answers row requests on `connection`.
    pub fn start(backend: Backend, connection: KeptConnection) -> Self {
        let connection = Arc::new(connection);
        Self(Rounds::start(READS_PER_ROUND, move |keys| {
            let connection = connection.clone();
            async move { read_round(backend, &connection, keys).await }
        }))
    }

    /// The onboarding's head as the database shows it now, read after this call.
    pub async fn get(&self, tenant: &str, environment: Environment) -> Result<Option<Head>> {
        self.0.ask((tenant.to_owned(), environment)).await
    }
}

/// The heads of `asked`, in its order. The rounds keep their connection (a pooled one is tested on
/// the way out and again on the way back); one that fails is dropped and the query tried once
/// more on a new one, so a database restart costs no reads.
async fn read_round(
    backend: Backend,
    connection: &KeptConnection,
    asked: Vec<Key>,
) -> Result<Vec<Option<Head>>> {
    let mut keys: Vec<&Key> = asked.iter().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut heads = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(rows::ONBOARDINGS_PER_SELECT) {
        let found = match read_rows(backend, connection, chunk).await {
            Err(Failed::Query(_)) => read_rows(backend, connection, chunk).await,
            outcome => outcome,
        };
        heads.extend(found.map_err(Failed::into_error)?);
    }
    Ok(asked.iter().map(|key| heads.get(key).cloned()).collect())
}

/// Why the rows were not read: the query failed on the connection (which is then dropped: worth
/// one more try on a new one), or anything else (no connection could be had, a row did not read).
enum Failed {
    Other(Error),
    Query(Error),
}

impl Failed {
    fn into_error(self) -> Error {
        match self {
            Self::Other(error) | Self::Query(error) => error,
        }
    }
}

async fn read_rows(
    backend: Backend,
    connection: &KeptConnection,
    keys: &[&Key],
) -> std::result::Result<Vec<(Key, Head)>, Failed> {
    let mut held = connection.take().await.map_err(Failed::Other)?;
    let mut query = sqlx::query(sqlx::AssertSqlSafe(rows::select_heads(backend, keys.len())));
    for (tenant, environment) in keys {
        query = query.bind(tenant.as_str()).bind(environment.as_str());
    }
    match query.fetch_all(held_connection(&mut held)).await {
        Ok(found) => found
            .iter()
            .map(rows::head)
            .collect::<Result<_>>()
            .map_err(Failed::Other),
        Err(error) => {
            held.take();
            Err(Failed::Query(db_error(error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_made_on_the_stack_is_the_allocated_one() {
        for tenant in ["acme", &"t".repeat(63), &"long".repeat(40)] {
            for environment in [Environment::Test, Environment::Production] {
                let made = with_key(tenant, environment, str::to_owned);
                assert_eq!(made, key(tenant, environment));
            }
        }
    }
}
