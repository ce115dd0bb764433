//! Page tokens: opaque to callers (URL-safe base64 of a small JSON document), checked on the way in
//! so a token from another query is a clear INVALID_ARGUMENT rather than a wrong page.

use crate::domain::validate::FieldViolation;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Serialize, de::DeserializeOwned};

pub fn encode<T: Serialize>(token: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).expect("page tokens serialise"))
}

/// Decodes a page token; an empty one means the first page.
pub fn decode<T: DeserializeOwned>(field: &str, token: &str) -> Result<Option<T>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| FieldViolation::new(field, "is not a page token this service issued"))
}

/// The page size to use: `default` for 0, at most `max`; negative is invalid.
pub fn page_size(
    field: &str,
    requested: i32,
    default: i64,
    max: i64,
) -> Result<i64, FieldViolation> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(FieldViolation::new(field, "must not be negative")),
        n => Ok(i64::from(n).min(max)),
    }
}
