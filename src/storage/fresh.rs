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

use super::{db_error, rows};
use crate::crypto::Sealed;
use crate::domain::onboarding::OnboardingRecord;
use crate::domain::{CredentialField, Environment};
use crate::error::{Error, Result};
use sqlx::AnyPool;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::{mpsc, oneshot};

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

    /// Whether this snapshot is of `head`'s onboarding at `head`'s revision.
    pub fn matches(&self, head: &OnboardingRecord) -> bool {
        self.record.id == head.id && self.record.revision == head.revision
    }
}

/// Snapshots by (tenant, environment), at most `capacity` of them.
pub(super) struct Snapshots {
    entries: Mutex<HashMap<(String, Environment), Arc<Snapshot>>>,
    capacity: usize,
}

impl Snapshots {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Environment), Arc<Snapshot>>> {
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
            .get(&(head.tenant.clone(), head.environment))
            .filter(|snapshot| snapshot.matches(head))
            .cloned()
    }

    /// Keeps `snapshot` unless a newer one of the same onboarding is kept already.
    pub fn put(&self, snapshot: Arc<Snapshot>) {
        if self.capacity == 0 {
            return;
        }
        let key = (snapshot.record.tenant.clone(), snapshot.record.environment);
        let mut entries = self.entries();
        if let Some(kept) = entries.get(&key)
            && kept.record.id == snapshot.record.id
            && kept.record.revision > snapshot.record.revision
        {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            // Any entry will do: a dropped one costs one read of the database.
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(key, snapshot);
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
        self.entries()
            .remove(&(record.tenant.clone(), record.environment));
    }
}

/// Most distinct onboardings one row query asks for.
const ROWS_PER_QUERY: usize = 16;
/// Most reads one round answers; the others wait for the next round.
const READS_PER_ROUND: usize = 1024;

/// The row query for `n` onboardings, by (tenant, environment).
static ROW_QUERIES: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..=ROWS_PER_QUERY)
        .map(|n| {
            let keys = (0..n)
                .map(|i| format!("(tenant = ${} AND environment = ${})", 2 * i + 1, 2 * i + 2))
                .collect::<Vec<_>>()
                .join(" OR ");
            let select = rows::SELECT_ONBOARDING
                .split_once("WHERE")
                .map_or(rows::SELECT_ONBOARDING, |(select, _)| select);
            format!("{select}WHERE {keys}")
        })
        .collect()
});

type Key = (String, Environment);

struct RowRequest {
    key: Key,
    reply: oneshot::Sender<Result<Option<OnboardingRecord>>>,
}

/// Reads onboarding rows for many callers at once (see the module's documentation).
#[derive(Clone)]
pub(super) struct Rows {
    requests: mpsc::UnboundedSender<RowRequest>,
}

impl Rows {
    /// Starts the task that answers row requests from `pool`. It ends when the last `Rows` is
    /// dropped.
    pub fn start(pool: AnyPool) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(answer(pool, receiver));
        Self { requests }
    }

    /// The onboarding's row as the database shows it now (children empty), read after this call.
    pub async fn get(
        &self,
        tenant: &str,
        environment: Environment,
    ) -> Result<Option<OnboardingRecord>> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(RowRequest {
                key: (tenant.to_owned(), environment),
                reply,
            })
            .map_err(|_| Error::Internal(anyhow::anyhow!("the row reader has stopped")))?;
        answer
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the row reader dropped a read")))?
    }
}

async fn answer(pool: AnyPool, mut receiver: mpsc::UnboundedReceiver<RowRequest>) {
    let mut waiting = Vec::new();
    while receiver.recv_many(&mut waiting, READS_PER_ROUND).await > 0 {
        let mut keys: Vec<&Key> = waiting.iter().map(|request| &request.key).collect();
        keys.sort_unstable();
        keys.dedup();
        let found = futures::future::join_all(
            keys.chunks(ROWS_PER_QUERY)
                .map(|chunk| read_rows(&pool, chunk)),
        )
        .await;
        let mut rows: HashMap<Key, OnboardingRecord> = HashMap::new();
        let mut failure = None;
        for outcome in found {
            match outcome {
                Ok(records) => rows.extend(
                    records
                        .into_iter()
                        .map(|record| ((record.tenant.clone(), record.environment), record)),
                ),
                Err(error) => failure = Some(error),
            }
        }
        for request in waiting.drain(..) {
            let reply = match (&failure, rows.get(&request.key)) {
                (_, Some(record)) => Ok(Some(record.clone())),
                (None, None) => Ok(None),
                (Some(error), None) => Err(shared(error)),
            };
            // The caller may have gone away meanwhile.
            let _ = request.reply.send(reply);
        }
    }
}

async fn read_rows(pool: &AnyPool, keys: &[&Key]) -> Result<Vec<OnboardingRecord>> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(ROW_QUERIES[keys.len()].as_str()));
    for (tenant, environment) in keys {
        query = query.bind(tenant.as_str()).bind(environment.as_str());
    }
    let found = query.fetch_all(pool).await.map_err(db_error)?;
    found.iter().map(rows::onboarding).collect()
}

/// One error told to every caller that shared the query that failed.
pub(super) fn shared(error: &Error) -> Error {
    let chain = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    match error {
        Error::Unavailable {
            what, retry_after, ..
        } => Error::Unavailable {
            what,
            retry_after: *retry_after,
            source: anyhow::anyhow!(chain),
        },
        _ => Error::Internal(anyhow::anyhow!(chain)),
    }
}
