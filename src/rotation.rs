//! Retiring an encryption key: every stored secret still encrypted with another key than the active
//! one is decrypted and encrypted again with the active key. Safe while the service serves: each
//! secret is replaced only if it is still the ciphertext that was read, so a secret a call wrote
//! meanwhile (already with the active key) is never overwritten. Run it after every replica knows the
//! new key as active; afterwards the old key can be removed from `--encryption-keys`.

use crate::crypto::{Keyring, SecretContext};
use crate::storage::Store;

/// What a re-encryption did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reencrypted {
    /// Secrets now under the active key.
    pub reencrypted: usize,
    /// Secrets written meanwhile by the service, left as they are.
    pub skipped: usize,
    /// Secrets that could not be decrypted with any configured key (named in the log by where they
    /// are, never by content); they stay as they are.
    pub unreadable: usize,
    /// Secrets still under another key after the pass (written meanwhile by a replica that had not
    /// yet made the new key active, or unreadable): the old key must not be retired yet.
    pub remaining: usize,
}

/// Re-encrypts every secret that is not under the keyring's active key.
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> anyhow::Result<Reencrypted> {
    let mut done = Reencrypted::default();
    for secret in store
        .credentials_to_reencrypt(keyring.active_key_id())
        .await?
    {
        let context = SecretContext {
            tenant: &secret.tenant,
            environment: &secret.environment,
            scope: &secret.scope,
            field: &secret.field,
        };
        let plaintext = match keyring.open(&secret.sealed, &context) {
            Ok(plaintext) => plaintext,
            Err(error) => {
                tracing::error!(
                    tenant = %secret.tenant,
                    environment = %secret.environment,
                    field = %secret.field,
                    key_id = %secret.sealed.key_id,
                    error = %error,
                    "a stored secret cannot be decrypted; left as it is"
                );
                done.unreadable += 1;
                continue;
            }
        };
        let sealed = keyring.seal(&plaintext, &context)?;
        if store.replace_sealed(&secret, &sealed).await? {
            done.reencrypted += 1;
        } else {
            done.skipped += 1;
        }
    }
    done.remaining = store
        .credentials_to_reencrypt(keyring.active_key_id())
        .await?
        .len();
    tracing::info!(
        reencrypted = done.reencrypted,
        remaining = done.remaining,
        skipped = done.skipped,
        unreadable = done.unreadable,
        active_key = keyring.active_key_id(),
        "re-encryption finished"
    );
    Ok(done)
}
