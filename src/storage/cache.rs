//! Onboardings kept in memory between reads and writes, each under the revision it was read or
//! written at.
//!
//! Every write of an onboarding or of anything it holds moves its `revision` on in the same
//! transaction, on whichever replica. So what is kept at a revision is what the database holds for
//! as long as the onboarding's row still shows that revision, and a caller that has just read the
//! row (one indexed query, after its call arrived) may use the kept copy instead of reading the
//! stages, creditors and credentials again. Nothing is ever answered from here without that check.

use crate::bounded::Bounded;
use crate::crypto::Sealed;
use crate::domain::onboarding::OnboardingRecord;
use crate::domain::{CredentialField, Environment};
use std::sync::Arc;

/// The ciphertexts of an onboarding's stored secrets: (creditor id, or '' for the environment;
/// field; ciphertext).
pub(super) type SealedSecrets = Vec<(String, CredentialField, Sealed)>;

/// An onboarding as committed at one revision, with the ciphertexts of its stored secrets.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub record: Arc<OnboardingRecord>,
    pub sealed: SealedSecrets,
}

impl Snapshot {
    /// The ciphertext of one stored secret, if it is stored.
    pub fn sealed(&self, scope: &str, field: CredentialField) -> Option<Sealed> {
        self.sealed
            .iter()
            .find(|(s, f, _)| s == scope && *f == field)
            .map(|(_, _, sealed)| sealed.clone())
    }
}

/// At most a set number of snapshots, one per onboarding.
pub(super) struct Cache(Bounded<Arc<Snapshot>>);

fn key(tenant: &str, environment: Environment) -> String {
    format!("{}/{tenant}", environment.as_str())
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self(Bounded::new(capacity))
    }

    /// The snapshot of onboarding `id` of `tenant` in `environment`, if one is kept at `revision`.
    pub fn at(
        &self,
        tenant: &str,
        environment: Environment,
        id: &str,
        revision: i64,
    ) -> Option<Arc<Snapshot>> {
        self.0.get(&key(tenant, environment), |kept| {
            kept.record.id == id && kept.record.revision == revision
        })
    }

    /// Keeps `snapshot` unless a later revision of the same onboarding is kept already.
    pub fn put(&self, snapshot: Arc<Snapshot>) {
        let record = &snapshot.record;
        let (id, revision) = (record.id.clone(), record.revision);
        self.0
            .put(&key(&record.tenant, record.environment), snapshot, |kept| {
                kept.record.id == id && kept.record.revision > revision
            });
    }

    /// Forgets what is kept of an onboarding, so that its next read asks the database.
    pub fn forget(&self, tenant: &str, environment: Environment) {
        self.0.remove(&key(tenant, environment));
    }
}
