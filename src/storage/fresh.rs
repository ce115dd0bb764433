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
//! fetches the rows of all of them at once. Under load many reads cost one small query.

use super::rounds::Rounds;
use super::{db_error, rows};
use crate::crypto::Sealed;
use crate::domain::onboarding::OnboardingRecord;
use crate::domain::{CredentialField, Environment};
use crate::error::Result;
use sqlx::AnyPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An onboarding as read at one revision, with its stored ciphertexts.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub record: OnboardingRecord,
    /// (creditor id or '' for the environment, field, ciphertext).
    pub sealed: Vec<(String, CredentialField, Sealed)>,
}

impl Snapshot {
    /// `head` (a row read now) with the children kept here.
    pub fn complete(&self, mut head: OnboardingRecord) -> OnboardingRecord {
        head.stages.clone_from(&self.record.stages);
        head.creditors.clone_from(&self.record.creditors);
        head.credentials.clone_from(&self.record.credentials);
        head
    }
}

/// Snapshots by onboarding id, at most `capacity` of them.
pub(super) struct Snapshots {
    entries: Mutex<HashMap<String, Arc<Snapshot>>>,
    capacity: usize,
}

impl Snapshots {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Snapshot>>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The snapshot of `head`'s onboarding at `head`'s revision, if one is kept.
    pub fn get(&self, head: &OnboardingRecord) -> Option<Arc<Snapshot>> {
        if self.capacity == 0 {
            return None;
        }
        self.entries()
            .get(&head.id)
            .filter(|snapshot| snapshot.record.revision == head.revision)
            .cloned()
    }

    /// Keeps `snapshot` unless a newer one of the same onboarding is kept already.
    pub fn put(&self, snapshot: Arc<Snapshot>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries();
        match entries.get(&snapshot.record.id) {
            Some(kept) if kept.record.revision > snapshot.record.revision => return,
            Some(_) => {}
            None if entries.len() >= self.capacity => {
                // Any entry will do: a dropped one costs one read of the database.
                if let Some(victim) = entries.keys().next().cloned() {
                    entries.remove(&victim);
                }
            }
            None => {}
        }
        entries.insert(snapshot.record.id.clone(), snapshot);
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
        self.entries().remove(&record.id);
    }
}

/// Most reads one round answers; the others wait for the next.
const READS_PER_ROUND: usize = 1024;

type Key = (String, Environment);

/// Reads onboarding rows for many callers at once (see the module's documentation).
#[derive(Clone)]
pub(super) struct Rows(Rounds<Key, Option<OnboardingRecord>>);

impl Rows {
    /// Starts the task that answers row requests from `pool`.
    pub fn start(pool: AnyPool) -> Self {
        Self(Rounds::start(READS_PER_ROUND, move |keys| {
            read_round(pool.clone(), keys)
        }))
    }

    /// The onboarding's row as the database shows it now (children empty), read after this call.
    pub async fn get(
        &self,
        tenant: &str,
        environment: Environment,
    ) -> Result<Option<OnboardingRecord>> {
        self.0.ask((tenant.to_owned(), environment)).await
    }
}

/// The rows of `asked`, in its order: the distinct ones, a few per query, queries at once.
async fn read_round(pool: AnyPool, asked: Vec<Key>) -> Result<Vec<Option<OnboardingRecord>>> {
    let mut keys: Vec<&Key> = asked.iter().collect();
    keys.sort_unstable();
    keys.dedup();
    let found = futures::future::try_join_all(
        keys.chunks(rows::ONBOARDINGS_PER_SELECT)
            .map(|chunk| read_rows(&pool, chunk)),
    )
    .await?;
    let rows: HashMap<Key, OnboardingRecord> = found
        .into_iter()
        .flatten()
        .map(|record| ((record.tenant.clone(), record.environment), record))
        .collect();
    Ok(asked.iter().map(|key| rows.get(key).cloned()).collect())
}

async fn read_rows(pool: &AnyPool, keys: &[&Key]) -> Result<Vec<OnboardingRecord>> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(rows::select_onboardings(keys.len())));
    for (tenant, environment) in keys {
        query = query.bind(tenant.as_str()).bind(environment.as_str());
    }
    let found = query.fetch_all(pool).await.map_err(db_error)?;
    found.iter().map(rows::onboarding).collect()
}
