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

use super::rounds::Rounds;
use super::{Backend, db_error, rows};
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
    pub record: Arc<OnboardingRecord>,
    /// (creditor id or '' for the environment, field, ciphertext).
    pub sealed: Vec<(String, CredentialField, Sealed)>,
}

/// What a read asks of an onboarding's row: enough to tell whether what is kept is current.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub id: String,
    pub revision: i64,
    pub last_event: i64,
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
        self.at(&head.id, head.revision)
    }

    fn at(&self, id: &str, revision: i64) -> Option<Arc<Snapshot>> {
        if self.capacity == 0 {
            return None;
        }
        self.entries()
            .get(id)
            .filter(|snapshot| snapshot.record.revision == revision)
            .cloned()
    }

    /// The onboarding as `head` (a row read now) shows it, if what is kept is of `head`'s revision.
    /// Its audit trail may have moved on since (audited reads): then a copy with the new last event
    /// is kept and given.
    pub fn current(&self, head: &Head) -> Option<Arc<OnboardingRecord>> {
        let kept = self.at(&head.id, head.revision)?;
        if kept.record.last_event >= head.last_event {
            return Some(kept.record.clone());
        }
        let mut record = OnboardingRecord::clone(&kept.record);
        record.last_event = head.last_event;
        let record = Arc::new(record);
        self.put(Arc::new(Snapshot {
            record: record.clone(),
            sealed: kept.sealed.clone(),
        }));
        Some(record)
    }

    /// Keeps `snapshot` unless a newer one of the same onboarding is kept already.
    pub fn put(&self, snapshot: Arc<Snapshot>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries();
        match entries.get(&snapshot.record.id) {
            Some(kept)
                if (kept.record.revision, kept.record.last_event)
                    > (snapshot.record.revision, snapshot.record.last_event) =>
            {
                return;
            }
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
pub(super) struct Rows(Rounds<Key, Option<Head>>);

impl Rows {
    /// Starts the task that answers row requests on a connection of its own from `pool`.
    pub fn start(backend: Backend, pool: AnyPool) -> Self {
        let link = Arc::new(tokio::sync::Mutex::new(Link {
            backend,
            pool,
            connection: None,
        }));
        Self(Rounds::start(READS_PER_ROUND, move |keys| {
            let link = link.clone();
            async move { link.lock().await.read_round(keys).await }
        }))
    }

    /// The onboarding's head as the database shows it now, read after this call.
    pub async fn get(&self, tenant: &str, environment: Environment) -> Result<Option<Head>> {
        self.0.ask((tenant.to_owned(), environment)).await
    }
}

/// The rounds' connection: taken from the pool once and kept, so a round costs its query alone
/// (a pooled connection is tested on the way out and again on the way back). One that fails is
/// dropped and the round tried once more on a new one, so a database restart costs no reads.
struct Link {
    backend: Backend,
    pool: AnyPool,
    connection: Option<sqlx::AnyConnection>,
}

impl Link {
    /// The heads of `asked`, in its order.
    async fn read_round(&mut self, asked: Vec<Key>) -> Result<Vec<Option<Head>>> {
        let mut keys: Vec<&Key> = asked.iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut heads = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(rows::ONBOARDINGS_PER_SELECT) {
            heads.extend(self.read_rows(chunk).await?);
        }
        Ok(asked.iter().map(|key| heads.get(key).cloned()).collect())
    }

    async fn read_rows(&mut self, keys: &[&Key]) -> Result<Vec<(Key, Head)>> {
        let fresh = self.connection.is_none();
        match self.try_read_rows(keys).await {
            Err(_) if !fresh => self.try_read_rows(keys).await,
            outcome => outcome,
        }
    }

    async fn try_read_rows(&mut self, keys: &[&Key]) -> Result<Vec<(Key, Head)>> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            empty => empty.insert(self.pool.acquire().await.map_err(db_error)?.detach()),
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(rows::select_heads(
            self.backend,
            keys.len(),
        )));
        for (tenant, environment) in keys {
            query = query.bind(tenant.as_str()).bind(environment.as_str());
        }
        match query.fetch_all(&mut *connection).await {
            Ok(found) => found.iter().map(rows::head).collect(),
            Err(error) => {
                self.connection = None;
                Err(db_error(error))
            }
        }
    }
}
