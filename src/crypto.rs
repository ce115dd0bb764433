//! Encryption of stored secrets (Billecta passwords and SecureTokens): AES-256-GCM with key ids,
//! associated data, and key rotation without downtime.
//!
//! The product's rule is that secrets are encrypted at rest and never appear in logs, errors, events
//! or responses. This module is the "encrypted at rest" half; [`crate::secret::Secret`] is the other.
//!
//! # Design
//!
//! - **AES-256-GCM** is an authenticated cipher: a ciphertext that was altered in any way, or opened
//!   with the wrong key, fails to decrypt instead of yielding garbage. Each encryption uses a fresh
//!   12-byte nonce from the operating system's random number generator, so encrypting the same secret
//!   twice gives two different ciphertexts and a reader of the database cannot tell that two tenants
//!   share a password.
//! - **A key id travels with every ciphertext** ([`Sealed::key_id`]). The service holds several keys
//!   at once (a [`Keyring`]); the id says which one to decrypt with, so old rows stay readable after a
//!   new key has become active, and rotation never needs a stop-the-world re-encryption.
//! - **Associated data binds each ciphertext to where it belongs**: tenant, environment, scope
//!   (creditor id, or empty) and field ([`SecretContext`]). The associated data is authenticated but
//!   not stored with the ciphertext; decryption must supply the same values. So someone with write
//!   access to the database cannot copy tenant A's encrypted token into tenant B's row, or swap the
//!   password and token fields, and have the service use it: decryption fails. The encoding is
//!   versioned and length-prefixed, so no two different contexts produce the same bytes (`"ab" + "c"`
//!   versus `"a" + "bc"`).
//! - **No key material is ever printed**: [`Keyring`]'s `Debug` shows key ids only, errors name a
//!   key's id or position but never its bytes or its base64 text, and key bytes are overwritten when
//!   the keyring is dropped.
//!
//! # Configuring keys
//!
//! Keys are given as a comma-separated list of `id:base64key` items (see [`Keyring::parse`]), e.g.
//! `2026-11:<base64>,2026-05:<base64>`. A key is 32 random bytes in standard base64, for instance
//! from `head -c 32 /dev/urandom | base64`. The id is 1 to 32 characters of `A-Z a-z 0-9 _ -`; a date
//! makes a good id. The active key — the one new secrets are encrypted with — is the first in the
//! list unless an active id is given explicitly. Every listed key can decrypt.
//!
//! # Rotating a key
//!
//! Every replica must know a key before any replica encrypts with it: otherwise, during a rolling
//! restart, a replica that already uses the new key writes rows that a replica still on the old
//! configuration cannot read. So a rotation is two rollouts, each restarting replicas one by one:
//!
//! 1. **Add the new key as non-active everywhere**: append it to the list (or list it first and set
//!    the active id explicitly to the current key). After this rollout every replica can decrypt with
//!    the new key, and none encrypts with it yet.
//! 2. **Make it active**: move it first in the list (or set the active id to it). New secrets are
//!    encrypted with it; old ones still decrypt with the key their id names.
//!
//! Then a background job can re-encrypt rows whose ciphertext [`Keyring::needs_reencryption`], and
//! once none are left, a third rollout can remove the old key. Removing it earlier makes the rows
//! still encrypted with it unreadable ([`CryptoError::UnknownKeyId`]).
//!
//! # Sandbox
//!
//! [`Keyring::generate`] makes a random key that lives only in memory, for `--sandbox` and tests:
//! whatever it encrypted cannot be decrypted after a restart, or by another process.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;

use crate::secret::Secret;

/// Bytes in an AES-256 key.
const KEY_LEN: usize = 32;

/// Bytes in an AES-GCM nonce. 96 bits is the size GCM is designed for; other sizes are hashed into
/// one, which weakens the uniqueness argument for random nonces.
pub const NONCE_LEN: usize = 12;

/// The longest key id accepted: ids are stored next to every ciphertext and shown in errors, so they
/// stay short.
const MAX_KEY_ID_LEN: usize = 32;

/// The id of the key made by [`Keyring::generate`].
pub const EPHEMERAL_KEY_ID: &str = "ephemeral";

/// The first part of the associated data. Changing how the context is encoded means a new version
/// tag, so that old and new encodings can never be confused.
const AAD_VERSION: &[u8] = b"billecta-onboarding/secret/v1";

/// Where a secret belongs. Its encoding is the AES-GCM associated data, so a ciphertext only decrypts
/// with the very same tenant, environment, scope and field it was encrypted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretContext<'a> {
    /// The tenant that owns the secret.
    pub tenant: &'a str,
    /// The Billecta environment the secret is for (e.g. test or production).
    pub environment: &'a str,
    /// The creditor id for a creditor-level secret, or `""` for one that belongs to the whole
    /// environment.
    pub scope: &'a str,
    /// Which secret this is (e.g. `password`, `secure_token`), so two fields of one row cannot be
    /// swapped.
    pub field: &'a str,
}

impl SecretContext<'_> {
    /// The associated data: the version tag, then each part, every one prefixed with its length as a
    /// 4-byte big-endian number. Length prefixes make the encoding unambiguous whatever the parts
    /// contain, which a separator character would not.
    fn associated_data(&self) -> Vec<u8> {
        let parts: [&[u8]; 5] = [
            AAD_VERSION,
            self.tenant.as_bytes(),
            self.environment.as_bytes(),
            self.scope.as_bytes(),
            self.field.as_bytes(),
        ];
        let total: usize = parts.iter().map(|part| 4 + part.len()).sum();
        let mut encoded = Vec::with_capacity(total);
        for part in parts {
            // Parts are identifiers far below 4 GiB; saturating keeps a pathological input from
            // wrapping to a short length (the encoding then still differs from any honest one).
            let length = u32::try_from(part.len()).unwrap_or(u32::MAX);
            encoded.extend_from_slice(&length.to_be_bytes());
            encoded.extend_from_slice(part);
        }
        encoded
    }
}

/// An encrypted secret as it is stored: the id of the key that encrypted it, the nonce, and the
/// ciphertext with its 16-byte authentication tag at the end.
///
/// `Debug` shows the key id and the lengths only.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The id of the key in the [`Keyring`] that encrypted this, and that must decrypt it.
    pub key_id: String,
    /// 12 random bytes, fresh for every encryption.
    pub nonce: Vec<u8>,
    /// The encrypted secret followed by the authentication tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Why a [`Keyring`] could not be built from its configuration. No message contains key material:
/// keys are named by their id, or by their position in the list when the id itself is unusable (it
/// might be a key pasted in the wrong place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("no encryption keys configured: the key list is empty")]
    Empty,
    #[error("encryption key {position} in the list is not of the form `id:base64key`")]
    MissingSeparator { position: usize },
    #[error(
        "encryption key {position} in the list has an invalid id: it must be 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'"
    )]
    InvalidId { position: usize },
    #[error("encryption key id `{id}` is listed more than once")]
    DuplicateId { id: String },
    #[error("encryption key `{id}` is not valid standard base64")]
    NotBase64 { id: String },
    #[error("encryption key `{id}` is {length} bytes long; AES-256 needs exactly 32")]
    WrongLength { id: String, length: usize },
    #[error(
        "the active encryption key id is invalid: it must be 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'"
    )]
    InvalidActiveId,
    #[error("the active encryption key id `{id}` is not in the key list")]
    UnknownActiveId { id: String },
}

/// Why a secret could not be encrypted or decrypted. No message contains key, plaintext or
/// ciphertext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext names a key this keyring does not hold: most likely the key was removed before
    /// every secret encrypted with it had been re-encrypted.
    #[error("no encryption key with id `{key_id}` is configured")]
    UnknownKeyId { key_id: String },
    /// Wrong key, wrong context, or altered nonce or ciphertext. GCM cannot tell these apart, and
    /// saying more would help an attacker, not an operator.
    #[error("the secret could not be decrypted: authentication failed")]
    AuthenticationFailed,
    #[error("the stored nonce is {length} bytes; expected 12")]
    NonceLength { length: usize },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    /// Only for a plaintext beyond AES-GCM's limit of 64 GiB.
    #[error("the secret could not be encrypted")]
    EncryptionFailed,
    /// The ciphertext authenticated but does not hold text; [`Keyring::seal`] never produces that.
    #[error("the decrypted secret is not valid UTF-8")]
    NotUtf8,
}

/// One 256-bit key, its id, and its cipher. The bytes, and the cipher's expanded key schedule, are
/// overwritten when it is dropped.
struct KeyEntry {
    id: String,
    bytes: [u8; KEY_LEN],
    /// Made once: every read of a payment configuration opens two secrets, and the schedule holds
    /// nothing the bytes beside it do not.
    cipher: Aes256Gcm,
}

impl KeyEntry {
    fn new(id: &str, bytes: [u8; KEY_LEN]) -> Self {
        // `new_from_slice` borrows the bytes, where `new(&bytes.into())` would leave an unwiped copy
        // of the key on the stack.
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).expect("an AES-256 key is 32 bytes, as KEY_LEN says");
        Self {
            id: id.to_owned(),
            bytes,
            cipher,
        }
    }

    fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl Drop for KeyEntry {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// Overwrites `bytes` with zeros. `black_box` keeps the compiler from removing stores to memory that
/// is about to be freed.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// The encryption keys the service knows: one *active* key encrypts, any of them decrypts.
///
/// `Debug` shows the key ids and which one is active, never key bytes. Share it with `Arc` rather than
/// copying it, so there is one copy of the keys in memory.
pub struct Keyring {
    keys: Vec<KeyEntry>,
    /// Index into `keys`.
    active: usize,
}

impl Keyring {
    /// Builds a keyring from a comma-separated list of `id:base64key` items; whitespace around items,
    /// ids and keys is ignored. Each key is standard base64 (with padding) of exactly 32 bytes. The
    /// active key is `active` if given, else the first listed key.
    pub fn parse(spec: &str, active: Option<&str>) -> Result<Keyring, KeyringError> {
        if spec.trim().is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut keys: Vec<KeyEntry> = Vec::new();
        for (index, item) in spec.split(',').enumerate() {
            let position = index + 1;
            let Some((raw_id, encoded)) = item.split_once(':') else {
                return Err(KeyringError::MissingSeparator { position });
            };
            let id = raw_id.trim();
            if !is_valid_key_id(id) {
                return Err(KeyringError::InvalidId { position });
            }
            if keys.iter().any(|key| key.id == id) {
                return Err(KeyringError::DuplicateId { id: id.to_owned() });
            }
            let bytes = decode_key(id, encoded.trim())?;
            keys.push(KeyEntry::new(id, bytes));
        }
        let active_index = match active {
            None => 0,
            Some(active_id) => find_active(&keys, active_id)?,
        };
        Ok(Keyring {
            keys,
            active: active_index,
        })
    }

    /// A keyring of one random key with id [`EPHEMERAL_KEY_ID`], for sandbox mode and tests.
    ///
    /// The key exists only in this process's memory: anything encrypted with it cannot be decrypted
    /// after a restart, nor by any other replica. Never use it where stored secrets must survive.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, which on supported platforms only
    /// happens when the system is unusable anyway.
    pub fn generate() -> Keyring {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes)
            .expect("the operating system's random number generator must work to make a key");
        let keyring = Keyring {
            keys: vec![KeyEntry::new(EPHEMERAL_KEY_ID, bytes)],
            active: 0,
        };
        // `bytes` is a copy of the key on the stack; the keyring holds its own.
        wipe(&mut bytes);
        keyring
    }

    /// The ids of all keys, in the order they were listed.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.id.as_str())
    }

    /// The id of the key new secrets are encrypted with.
    pub fn active_key_id(&self) -> &str {
        &self.active_key().id
    }

    /// Whether `sealed` was encrypted with a key other than the active one (including one this
    /// keyring does not hold), so a background job should decrypt and re-encrypt it.
    pub fn needs_reencryption(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.active_key().id
    }

    /// Encrypts `plaintext` with the active key and a fresh random nonce, bound to `context`.
    pub fn seal(&self, plaintext: &Secret, context: &SecretContext) -> Result<Sealed, CryptoError> {
        let key = self.active_key();
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(CryptoError::Random)?;
        let aad = context.associated_data();
        let payload = Payload {
            msg: plaintext.expose().as_bytes(),
            aad: &aad,
        };
        let ciphertext = key
            .cipher()
            .encrypt(&Nonce::<U12>::from(nonce), payload)
            .map_err(|_| CryptoError::EncryptionFailed)?;
        Ok(Sealed {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts `sealed` with the key its id names, checking that it was encrypted for `context`.
    pub fn open(&self, sealed: &Sealed, context: &SecretContext) -> Result<Secret, CryptoError> {
        let Some(key) = self.keys.iter().find(|key| key.id == sealed.key_id) else {
            return Err(CryptoError::UnknownKeyId {
                key_id: sealed.key_id.clone(),
            });
        };
        let Ok(nonce) = <[u8; NONCE_LEN]>::try_from(sealed.nonce.as_slice()) else {
            return Err(CryptoError::NonceLength {
                length: sealed.nonce.len(),
            });
        };
        let aad = context.associated_data();
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: &aad,
        };
        let plaintext = key
            .cipher()
            .decrypt(&Nonce::<U12>::from(nonce), payload)
            .map_err(|_| CryptoError::AuthenticationFailed)?;
        match String::from_utf8(plaintext) {
            Ok(text) => Ok(Secret::new(text)),
            Err(error) => {
                let mut bytes = error.into_bytes();
                wipe(&mut bytes);
                Err(CryptoError::NotUtf8)
            }
        }
    }

    fn active_key(&self) -> &KeyEntry {
        &self.keys[self.active]
    }

    /// A fingerprint for a secret a person chose (a password, a webhook authorization value): an
    /// HMAC-SHA256 under a key derived from the active key, so that whoever reads fingerprints
    /// cannot test guesses against them offline, as they could against a plain hash. Random secrets
    /// (SecureTokens) can use [`crate::secret::Secret::fingerprint`], which compares across keys.
    pub fn keyed_fingerprint(&self, secret: &crate::secret::Secret) -> String {
        use hmac::{Hmac, Mac};
        use sha2::{Digest, Sha256};
        // A subkey, so that the encryption key itself never keys anything else.
        let mut subkey: [u8; 32] = Sha256::new()
            .chain_update(b"billecta-onboarding/fingerprint/v1")
            .chain_update(self.active_key().bytes)
            .finalize()
            .into();
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&subkey).expect("HMAC takes a key of any length");
        wipe(&mut subkey);
        mac.update(secret.expose().as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("hmac:{}", hex::encode(&digest[..8]))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.key_ids().collect();
        f.debug_struct("Keyring")
            .field("active", &self.active_key_id())
            .field("key_ids", &ids)
            .finish()
    }
}

/// 1 to 32 characters of `A-Z a-z 0-9 _ -`: safe to store, log and put in an error message.
fn is_valid_key_id(id: &str) -> bool {
    let length_ok = !id.is_empty() && id.len() <= MAX_KEY_ID_LEN;
    length_ok
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// Decodes one key. The base64 decoder's own error is dropped on purpose: it names the offending
/// character, which is a piece of the key.
fn decode_key(id: &str, encoded: &str) -> Result<[u8; KEY_LEN], KeyringError> {
    let Ok(mut decoded) = BASE64.decode(encoded) else {
        return Err(KeyringError::NotBase64 { id: id.to_owned() });
    };
    let converted: Result<[u8; KEY_LEN], _> = decoded.as_slice().try_into();
    let length = decoded.len();
    wipe(&mut decoded);
    converted.map_err(|_| KeyringError::WrongLength {
        id: id.to_owned(),
        length,
    })
}

/// The index of the key `active_id` names. Only a well-formed id is echoed in the error: anything
/// else might be key material passed in the wrong setting.
fn find_active(keys: &[KeyEntry], active_id: &str) -> Result<usize, KeyringError> {
    let id = active_id.trim();
    if !is_valid_key_id(id) {
        return Err(KeyringError::InvalidActiveId);
    }
    keys.iter()
        .position(|key| key.id == id)
        .ok_or_else(|| KeyringError::UnknownActiveId { id: id.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two fixed test keys, as base64 of 32 bytes.
    fn key_a() -> String {
        BASE64.encode([0x11u8; KEY_LEN])
    }

    fn key_b() -> String {
        BASE64.encode([0x22u8; KEY_LEN])
    }

    fn context() -> SecretContext<'static> {
        SecretContext {
            tenant: "tenant-1",
            environment: "production",
            scope: "creditor-42",
            field: "secure_token",
        }
    }

    fn keyring_a() -> Keyring {
        Keyring::parse(&format!("2026-05:{}", key_a()), None).unwrap()
    }

    const PLAINTEXT: &str = "very-secret-token-value";

    #[test]
    fn keyed_fingerprints_tell_secrets_apart_but_need_the_key() {
        let keyring = Keyring::generate();
        let password = crate::secret::Secret::new("Sommar-2026");
        let fingerprint = keyring.keyed_fingerprint(&password);
        assert!(fingerprint.starts_with("hmac:"));
        assert_eq!(fingerprint, keyring.keyed_fingerprint(&password));
        assert_ne!(
            fingerprint,
            keyring.keyed_fingerprint(&crate::secret::Secret::new("Sommar-2027"))
        );
        // Another key, another fingerprint: without the key a guess cannot be checked.
        assert_ne!(
            fingerprint,
            Keyring::generate().keyed_fingerprint(&password)
        );
        assert_ne!(fingerprint, password.fingerprint());
    }

    #[test]
    fn round_trip() {
        let keyring = keyring_a();
        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        assert_eq!(sealed.key_id, "2026-05");
        assert_eq!(sealed.nonce.len(), NONCE_LEN);
        assert_eq!(sealed.ciphertext.len(), PLAINTEXT.len() + 16);
        let opened = keyring.open(&sealed, &context()).unwrap();
        assert_eq!(opened.expose(), PLAINTEXT);
    }

    #[test]
    fn the_empty_secret_round_trips() {
        let keyring = keyring_a();
        let sealed = keyring.seal(&Secret::new(""), &context()).unwrap();
        assert_eq!(keyring.open(&sealed, &context()).unwrap().expose(), "");
    }

    #[test]
    fn a_different_context_part_fails_to_decrypt() {
        let keyring = keyring_a();
        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        let others = [
            SecretContext {
                tenant: "tenant-2",
                ..context()
            },
            SecretContext {
                environment: "test",
                ..context()
            },
            SecretContext {
                scope: "creditor-43",
                ..context()
            },
            SecretContext {
                scope: "",
                ..context()
            },
            SecretContext {
                field: "password",
                ..context()
            },
        ];
        for other in others {
            let result = keyring.open(&sealed, &other);
            assert_eq!(
                result.unwrap_err(),
                CryptoError::AuthenticationFailed,
                "{other:?}"
            );
        }
    }

    #[test]
    fn the_encoding_is_unambiguous_across_part_boundaries() {
        let one = SecretContext {
            tenant: "ab",
            environment: "c",
            scope: "",
            field: "f",
        };
        let two = SecretContext {
            tenant: "a",
            environment: "bc",
            scope: "",
            field: "f",
        };
        assert_ne!(one.associated_data(), two.associated_data());
        let keyring = keyring_a();
        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &one).unwrap();
        assert_eq!(
            keyring.open(&sealed, &two).unwrap_err(),
            CryptoError::AuthenticationFailed
        );
    }

    #[test]
    fn tampering_fails_to_decrypt() {
        let keyring = keyring_a();
        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();

        let mut flipped_ciphertext = sealed.clone();
        flipped_ciphertext.ciphertext[0] ^= 1;
        let mut flipped_tag = sealed.clone();
        let last = flipped_tag.ciphertext.len() - 1;
        flipped_tag.ciphertext[last] ^= 1;
        let mut truncated = sealed.clone();
        truncated.ciphertext.pop();
        let mut flipped_nonce = sealed.clone();
        flipped_nonce.nonce[0] ^= 1;

        for tampered in [flipped_ciphertext, flipped_tag, truncated, flipped_nonce] {
            assert_eq!(
                keyring.open(&tampered, &context()).unwrap_err(),
                CryptoError::AuthenticationFailed
            );
        }
    }

    #[test]
    fn a_nonce_of_the_wrong_length_is_rejected() {
        let keyring = keyring_a();
        let mut sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        sealed.nonce.push(0);
        assert_eq!(
            keyring.open(&sealed, &context()).unwrap_err(),
            CryptoError::NonceLength { length: 13 }
        );
        sealed.nonce.truncate(4);
        assert_eq!(
            keyring.open(&sealed, &context()).unwrap_err(),
            CryptoError::NonceLength { length: 4 }
        );
    }

    #[test]
    fn the_wrong_key_under_the_same_id_fails_to_decrypt() {
        let sealed = keyring_a()
            .seal(&Secret::new(PLAINTEXT), &context())
            .unwrap();
        let impostor = Keyring::parse(&format!("2026-05:{}", key_b()), None).unwrap();
        assert_eq!(
            impostor.open(&sealed, &context()).unwrap_err(),
            CryptoError::AuthenticationFailed
        );
    }

    #[test]
    fn old_ciphertexts_decrypt_after_rotation() {
        let old = keyring_a();
        let sealed_old = old.seal(&Secret::new(PLAINTEXT), &context()).unwrap();

        // Step 1 of a rollout: the new key is known everywhere but not active.
        let step_one =
            Keyring::parse(&format!("2026-05:{}, 2026-11:{}", key_a(), key_b()), None).unwrap();
        assert_eq!(step_one.active_key_id(), "2026-05");
        assert!(!step_one.needs_reencryption(&sealed_old));

        // Step 2: the new key is active; the old one still decrypts.
        let rotated =
            Keyring::parse(&format!("2026-11:{},2026-05:{}", key_b(), key_a()), None).unwrap();
        assert_eq!(rotated.active_key_id(), "2026-11");
        assert_eq!(
            rotated.open(&sealed_old, &context()).unwrap().expose(),
            PLAINTEXT
        );
        assert!(rotated.needs_reencryption(&sealed_old));

        let sealed_new = rotated.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        assert_eq!(sealed_new.key_id, "2026-11");
        assert!(!rotated.needs_reencryption(&sealed_new));
        // A replica still on step one can read what step two wrote.
        assert_eq!(
            step_one.open(&sealed_new, &context()).unwrap().expose(),
            PLAINTEXT
        );
    }

    #[test]
    fn an_explicit_active_id_wins_over_the_order() {
        let keyring = Keyring::parse(
            &format!("2026-11:{},2026-05:{}", key_b(), key_a()),
            Some("2026-05"),
        )
        .unwrap();
        assert_eq!(keyring.active_key_id(), "2026-05");
        assert_eq!(
            keyring.key_ids().collect::<Vec<_>>(),
            ["2026-11", "2026-05"]
        );
        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        assert_eq!(sealed.key_id, "2026-05");
    }

    #[test]
    fn an_unknown_key_id_is_named() {
        let sealed = keyring_a()
            .seal(&Secret::new(PLAINTEXT), &context())
            .unwrap();
        let other = Keyring::parse(&format!("2026-11:{}", key_b()), None).unwrap();
        let error = other.open(&sealed, &context()).unwrap_err();
        assert_eq!(
            error,
            CryptoError::UnknownKeyId {
                key_id: "2026-05".to_owned()
            }
        );
        assert!(error.to_string().contains("`2026-05`"), "{error}");
        assert!(other.needs_reencryption(&sealed));
    }

    #[test]
    fn two_seals_of_the_same_secret_differ() {
        let keyring = keyring_a();
        let secret = Secret::new(PLAINTEXT);
        let one = keyring.seal(&secret, &context()).unwrap();
        let two = keyring.seal(&secret, &context()).unwrap();
        assert_ne!(one.nonce, two.nonce);
        assert_ne!(one.ciphertext, two.ciphertext);
    }

    #[test]
    fn generated_keyrings_work_and_differ() {
        let one = Keyring::generate();
        let two = Keyring::generate();
        assert_eq!(one.active_key_id(), EPHEMERAL_KEY_ID);
        assert_eq!(one.key_ids().collect::<Vec<_>>(), [EPHEMERAL_KEY_ID]);
        let sealed = one.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        assert_eq!(one.open(&sealed, &context()).unwrap().expose(), PLAINTEXT);
        assert_eq!(
            two.open(&sealed, &context()).unwrap_err(),
            CryptoError::AuthenticationFailed
        );
    }

    #[test]
    fn whitespace_around_items_is_ignored() {
        let keyring = Keyring::parse(
            &format!("  2026-11 : {} ,\n 2026-05:{}\n", key_b(), key_a()),
            Some(" 2026-05 "),
        )
        .unwrap();
        assert_eq!(
            keyring.key_ids().collect::<Vec<_>>(),
            ["2026-11", "2026-05"]
        );
        assert_eq!(keyring.active_key_id(), "2026-05");
    }

    #[test]
    fn key_ids_are_checked() {
        assert!(is_valid_key_id("a"));
        assert!(is_valid_key_id("2026-11_primary"));
        assert!(is_valid_key_id(&"x".repeat(32)));
        assert!(!is_valid_key_id(""));
        assert!(!is_valid_key_id(&"x".repeat(33)));
        assert!(!is_valid_key_id("has space"));
        assert!(!is_valid_key_id("dot.ted"));
        assert!(!is_valid_key_id("åäö"));
    }

    /// Every parse error, with the key material that must not appear in its message.
    #[test]
    fn parse_errors_name_the_problem_without_key_material() {
        let a = key_a();
        let b = key_b();
        let short = BASE64.encode([0x33u8; 16]);
        let not_base64 = "q83v!!not*base64@@@@@@@@@@@@@@@@@@@@@@@@@@@@";
        let cases: Vec<(String, Option<&str>, KeyringError, Vec<String>)> = vec![
            (String::new(), None, KeyringError::Empty, vec![]),
            (" \n\t ".to_owned(), None, KeyringError::Empty, vec![]),
            (
                format!("2026-05:{a},{b}"),
                None,
                KeyringError::MissingSeparator { position: 2 },
                vec![a.clone(), b.clone()],
            ),
            (
                format!("2026-05:{a},"),
                None,
                KeyringError::MissingSeparator { position: 2 },
                vec![a.clone()],
            ),
            (
                format!("{a}:2026-05"),
                None,
                KeyringError::InvalidId { position: 1 },
                vec![a.clone()],
            ),
            (
                format!("bad id:{a}"),
                None,
                KeyringError::InvalidId { position: 1 },
                vec![a.clone()],
            ),
            (
                format!(":{a}"),
                None,
                KeyringError::InvalidId { position: 1 },
                vec![a.clone()],
            ),
            (
                format!("{}:{a}", "x".repeat(33)),
                None,
                KeyringError::InvalidId { position: 1 },
                vec![a.clone()],
            ),
            (
                format!("k1:{a},k1:{b}"),
                None,
                KeyringError::DuplicateId { id: "k1".into() },
                vec![a.clone(), b.clone()],
            ),
            (
                format!("k1:{not_base64}"),
                None,
                KeyringError::NotBase64 { id: "k1".into() },
                vec![not_base64.to_owned(), "!".to_owned()],
            ),
            (
                format!("k1:{short}"),
                None,
                KeyringError::WrongLength {
                    id: "k1".into(),
                    length: 16,
                },
                vec![short.clone()],
            ),
            (
                format!("k1:{}", BASE64.encode([0x44u8; 33])),
                None,
                KeyringError::WrongLength {
                    id: "k1".into(),
                    length: 33,
                },
                vec![BASE64.encode([0x44u8; 33])],
            ),
            (
                format!("k1:{a}"),
                Some("k2"),
                KeyringError::UnknownActiveId { id: "k2".into() },
                vec![a.clone()],
            ),
            (
                format!("k1:{a}"),
                Some(b.as_str()),
                KeyringError::InvalidActiveId,
                vec![a.clone(), b.clone()],
            ),
            (
                format!("k1:{a}"),
                Some(""),
                KeyringError::InvalidActiveId,
                vec![a.clone()],
            ),
        ];
        for (spec, active, expected, forbidden) in cases {
            let error = Keyring::parse(&spec, active).unwrap_err();
            assert_eq!(error, expected, "spec {spec:?}, active {active:?}");
            let shown = format!("{error} {error:?}");
            for material in forbidden {
                assert!(
                    !shown.contains(&material),
                    "{shown:?} contains {material:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_length_says_how_many_bytes() {
        let spec = format!("k1:{}", BASE64.encode([0x33u8; 16]));
        let error = Keyring::parse(&spec, None).unwrap_err();
        assert!(error.to_string().contains("16 bytes"), "{error}");
    }

    #[test]
    fn debug_shows_ids_but_no_key_or_plaintext() {
        let keyring =
            Keyring::parse(&format!("2026-11:{},2026-05:{}", key_b(), key_a()), None).unwrap();
        let shown = format!("{keyring:?} {keyring:#?} {:?}", keyring.keys);
        assert!(
            shown.contains("2026-11") && shown.contains("2026-05"),
            "{shown}"
        );
        assert!(shown.contains(r#"active: "2026-11""#), "{shown}");
        assert!(
            !shown.contains(&key_a()) && !shown.contains(&key_b()),
            "{shown}"
        );
        // Neither the bytes as numbers (17 = 0x11, 34 = 0x22) nor as hex.
        assert!(
            !shown.contains("17, 17") && !shown.contains("34, 34"),
            "{shown}"
        );
        assert!(
            !shown.contains("1111") && !shown.contains("2222"),
            "{shown}"
        );

        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        let shown_sealed = format!("{sealed:?} {sealed:#?}");
        assert!(!shown_sealed.contains(PLAINTEXT), "{shown_sealed}");
        assert!(shown_sealed.contains("2026-11"), "{shown_sealed}");
        assert!(
            shown_sealed.contains(&format!("ciphertext_len: {}", PLAINTEXT.len() + 16)),
            "{shown_sealed}"
        );
        let first_bytes = format!("{:?}", &sealed.ciphertext[..4]);
        assert!(!shown_sealed.contains(&first_bytes), "{shown_sealed}");
    }

    #[test]
    fn crypto_errors_contain_no_secret_material() {
        let keyring = keyring_a();
        let sealed = keyring.seal(&Secret::new(PLAINTEXT), &context()).unwrap();
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        let error = keyring.open(&tampered, &context()).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(PLAINTEXT), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", &tampered.ciphertext[..4])),
            "{shown}"
        );
    }
}
