//! What can go wrong talking to Billecta, classified for the stage machine: fix your data, fix your
//! credentials, the thing is gone, try again later, or something nobody expected.

use crate::Environment;
use std::fmt;
use std::time::Duration;

/// The class of a failure, which decides what the stage machine does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Billecta rejected the data (400). Retrying the same request fails the same way.
    InvalidInput,
    /// The credentials were refused (401) or lack the rights (403).
    BadCredentials,
    /// The resource does not exist in Billecta (404).
    NotFound,
    /// Billecta is down, slow, rate limiting, or the call ran out of time. Worth retrying later.
    Transient,
    /// A status or body this client does not understand.
    Unexpected,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::BadCredentials => "bad_credentials",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Transient => "transient",
            ErrorKind::Unexpected => "unexpected",
        }
    }
}

/// What happened on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Billecta answered with this HTTP status.
    Status(u16),
    /// No connection could be made; the request was not sent.
    Connect,
    /// An attempt took longer than its timeout.
    Timeout,
    /// The connection broke after the request was sent (reset, closed early).
    Connection,
    /// The caller's deadline left no time for (another) attempt.
    DeadlineExceeded,
    /// The circuit breaker is open: recent calls failed, so this one was not sent.
    CircuitOpen,
    /// The response could not be decoded as the expected view.
    Decode,
}

/// A failed Billecta call. Its text names the environment, the endpoint and Billecta's own message;
/// it never contains credentials (the client removes any echo of them from Billecta's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillectaError {
    pub environment: Environment,
    /// The endpoint as a route template, such as `POST /v1/creditors/creditor`.
    pub endpoint: &'static str,
    pub failure: Failure,
    /// Billecta's `Message` (or a readable excerpt of a non-JSON body), or what the client observed.
    pub message: String,
    /// Billecta's `ExternalErrorCode`, when it sent one.
    pub external_error_code: Option<String>,
    /// How long to wait before trying again, when known (429 `Retry-After`, an open breaker).
    pub retry_after: Option<Duration>,
    /// How many attempts were made.
    pub attempts: u32,
    /// True when the request may have taken effect although no success was seen (a create whose
    /// answer was lost). The caller must look before it creates again.
    pub outcome_unknown: bool,
}

impl BillectaError {
    pub fn kind(&self) -> ErrorKind {
        match self.failure {
            Failure::Status(400 | 409 | 411 | 413 | 415 | 422) => ErrorKind::InvalidInput,
            Failure::Status(401 | 403) => ErrorKind::BadCredentials,
            Failure::Status(404 | 410) => ErrorKind::NotFound,
            Failure::Status(408 | 425 | 429) => ErrorKind::Transient,
            Failure::Status(status) if status >= 500 => ErrorKind::Transient,
            Failure::Status(_) | Failure::Decode => ErrorKind::Unexpected,
            Failure::Connect
            | Failure::Timeout
            | Failure::Connection
            | Failure::DeadlineExceeded
            | Failure::CircuitOpen => ErrorKind::Transient,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    pub fn status(&self) -> Option<u16> {
        match self.failure {
            Failure::Status(status) => Some(status),
            _ => None,
        }
    }
}

impl fmt::Display for BillectaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Billecta {} {}: ", self.environment, self.endpoint)?;
        match self.failure {
            Failure::Status(status) => write!(f, "HTTP {status}")?,
            Failure::Connect => f.write_str("cannot connect")?,
            Failure::Timeout => f.write_str("timed out")?,
            Failure::Connection => f.write_str("connection lost")?,
            Failure::DeadlineExceeded => f.write_str("deadline exceeded")?,
            Failure::CircuitOpen => f.write_str("paused after repeated failures")?,
            Failure::Decode => f.write_str("unreadable response")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(code) = &self.external_error_code {
            write!(f, " (ExternalErrorCode {code})")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for BillectaError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(failure: Failure) -> BillectaError {
        BillectaError {
            environment: Environment::Test,
            endpoint: "POST /v1/creditors/creditor",
            failure,
            message: "OrgNo is invalid".into(),
            external_error_code: Some("E42".into()),
            retry_after: None,
            attempts: 1,
            outcome_unknown: false,
        }
    }

    #[test]
    fn statuses_are_classified_for_the_stage_machine() {
        let kind = |failure| failing(failure).kind();
        assert_eq!(kind(Failure::Status(400)), ErrorKind::InvalidInput);
        assert_eq!(kind(Failure::Status(401)), ErrorKind::BadCredentials);
        assert_eq!(kind(Failure::Status(403)), ErrorKind::BadCredentials);
        assert_eq!(kind(Failure::Status(404)), ErrorKind::NotFound);
        assert_eq!(kind(Failure::Status(429)), ErrorKind::Transient);
        assert_eq!(kind(Failure::Status(503)), ErrorKind::Transient);
        assert_eq!(kind(Failure::Status(302)), ErrorKind::Unexpected);
        assert_eq!(kind(Failure::Decode), ErrorKind::Unexpected);
        assert_eq!(kind(Failure::Timeout), ErrorKind::Transient);
        assert_eq!(kind(Failure::CircuitOpen), ErrorKind::Transient);
    }

    #[test]
    fn the_text_names_environment_endpoint_and_billectas_message() {
        let text = failing(Failure::Status(400)).to_string();
        assert_eq!(
            text,
            "Billecta test POST /v1/creditors/creditor: HTTP 400: OrgNo is invalid (ExternalErrorCode E42)"
        );
    }
}
