//! The one error type of the service's operations. Each variant is something a caller can act on,
//! except `Internal`, which carries the cause chain for the logs. The transport maps each variant to a
//! gRPC status in exactly one place (`grpc::status`).
//!
//! The layers below have errors of their own, which this one wraps or translates: the domain's
//! [`Refusal`], auth's [`PermissionDenied`] and the Billecta client's [`BillectaError`]. None of them
//! knows about this type.

use crate::auth::PermissionDenied;
use crate::domain::failure::Refusal;
use crate::domain::validate::FieldViolation;
use billecta_client::BillectaError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was changed. One violation per bad field.
    #[error("the request has invalid fields")]
    InvalidArgument(Vec<FieldViolation>),

    #[error("{resource} does not exist")]
    NotFound { resource: String },

    #[error("{resource} already exists")]
    AlreadyExists { resource: String },

    /// The domain refused the change: earlier stages are not done, or the record's state does not
    /// allow it.
    #[error(transparent)]
    Refused(#[from] Refusal),

    /// The call does not fit the resource's current state for another reason.
    #[error("{message}")]
    Precondition {
        reason: &'static str,
        subject: String,
        message: String,
    },

    /// Another call is working on the same stage with Billecta right now.
    #[error("{resource} is being worked on by another call")]
    Busy {
        resource: String,
        retry_after: Duration,
    },

    /// No credential, or one that is not valid.
    #[error("{message}")]
    Unauthenticated { message: String },

    /// A valid caller without the permission, or outside its tenants.
    #[error(transparent)]
    PermissionDenied(#[from] PermissionDenied),

    /// The caller's etag is not the resource's current one (AIP-154).
    #[error("the etag does not match {resource}'s current etag")]
    EtagMismatch { resource: String },

    /// The same request_id came with a different request.
    #[error("request_id {request_id:?} was used before for a different request")]
    RequestIdReused { request_id: String },

    /// The database could not do its part: unreachable, or its disk full (a retry may succeed),
    /// or a failure a caller cannot act on. A key taken (`Duplicate`) is [`Error::AlreadyExists`]
    /// unless the operation that knows better maps it.
    #[error(transparent)]
    Storage(crate::storage::StorageError),

    /// A Billecta call failed. Its kind decides the status: Billecta refusing our data, our credentials
    /// or not finding a resource is a failed precondition; Billecta down or slow is UNAVAILABLE with
    /// the time to wait. Billecta's own message travels with it; credentials never do.
    #[error("{0}")]
    Billecta(#[from] BillectaError),

    /// The service is shutting down: the call's work was cut off, or refused before it began.
    /// Another replica, or this one once restarted, takes the call.
    #[error("the service is shutting down")]
    ShuttingDown,

    /// Anything a caller cannot act on. Logged with its cause; callers see only that it happened.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Vec<FieldViolation>> for Error {
    fn from(violations: Vec<FieldViolation>) -> Self {
        Error::InvalidArgument(violations)
    }
}

impl From<FieldViolation> for Error {
    fn from(violation: FieldViolation) -> Self {
        Error::InvalidArgument(vec![violation])
    }
}

impl From<crate::storage::StorageError> for Error {
    fn from(error: crate::storage::StorageError) -> Self {
        match error {
            crate::storage::StorageError::Duplicate(resource) => Error::AlreadyExists { resource },
            other => Error::Storage(other),
        }
    }
}
