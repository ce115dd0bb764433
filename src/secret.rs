//! The service's secrets (passwords, SecureTokens) are the Billecta client's [`Secret`]: a value with
//! no `Display`, a redacted `Debug` and memory wiped on drop. One type for both, so that a credential
//! goes from storage to the client without ever being copied into a printable string.

pub use billecta_client::Secret;
