//! A secret value (password, SecureToken) that cannot leak by accident: it has no `Display`, its
//! `Debug` prints a placeholder, and it is wiped from memory when dropped. Code that needs the value
//! says so with [`Secret::expose`], which is easy to find in review.

use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Only for putting it on the wire or encrypting it; never for logs or errors.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A short, stable, non-reversible identifier (the first 8 bytes of SHA-256, hex): enough to tell
    /// two secrets apart in a read response or an audit event without revealing either.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("sha256:{}", hex::encode(&digest[..8]))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite the bytes before the allocation is freed, so a later heap dump or reused buffer does
        // not hold the secret. `black_box` keeps the compiler from dropping the dead stores.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|byte| *byte = 0);
        std::hint::black_box(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-password");
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn fingerprints_tell_secrets_apart_without_revealing_them() {
        let one = Secret::new("first");
        let two = Secret::new("second");
        assert_ne!(one.fingerprint(), two.fingerprint());
        assert_eq!(one.fingerprint(), Secret::new("first").fingerprint());
        assert!(!one.fingerprint().contains("first"));
    }
}
