//! The one place where the service's errors become gRPC statuses: each with exactly one ErrorInfo
//! (an UPPER_SNAKE reason), plus BadRequest, PreconditionFailure or RetryInfo where they apply.

use crate::error::Error;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "billecta-onboarding.payway";

pub fn to_status(error: Error) -> Status {
    let mut details = ErrorDetails::new();
    let metadata = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let (code, message) = match &error {
        Error::InvalidArgument(violations) => {
            for violation in violations {
                details.add_bad_request_violation(&violation.field, &violation.description);
            }
            let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
            details.set_error_info(
                "INVALID_FIELDS",
                ERROR_DOMAIN,
                metadata(&[("fields", &fields.join(","))]),
            );
            let described: Vec<String> = violations
                .iter()
                .map(|v| format!("{} {}", v.field, v.description))
                .collect();
            (
                Code::InvalidArgument,
                format!("invalid request: {}", described.join("; ")),
            )
        }
        Error::NotFound { resource } => {
            details.set_error_info(
                "NOT_FOUND",
                ERROR_DOMAIN,
                metadata(&[("resource", resource)]),
            );
            (Code::NotFound, error.to_string())
        }
        Error::AlreadyExists { resource } => {
            details.set_error_info(
                "ALREADY_EXISTS",
                ERROR_DOMAIN,
                metadata(&[("resource", resource)]),
            );
            (Code::AlreadyExists, error.to_string())
        }
        Error::StagesNotDone {
            resource,
            unmet,
            message,
        } => {
            for stage in unmet {
                details.add_precondition_failure_violation(
                    "STAGE",
                    &stage.subject,
                    format!("{} is {}, not COMPLETED", stage.stage, stage.state),
                );
            }
            let names: Vec<&str> = unmet.iter().map(|s| s.stage.as_str()).collect();
            details.set_error_info(
                "STAGES_NOT_COMPLETED",
                ERROR_DOMAIN,
                metadata(&[("resource", resource), ("unmet_stages", &names.join(","))]),
            );
            (Code::FailedPrecondition, message.clone())
        }
        Error::Precondition {
            reason,
            subject,
            message,
        } => {
            details.add_precondition_failure_violation("STATE", subject, message);
            details.set_error_info(*reason, ERROR_DOMAIN, metadata(&[("resource", subject)]));
            (Code::FailedPrecondition, message.clone())
        }
        Error::EtagMismatch { resource } => {
            details.set_error_info(
                "ETAG_MISMATCH",
                ERROR_DOMAIN,
                metadata(&[("resource", resource)]),
            );
            (
                Code::Aborted,
                format!("{error}; read it again and retry with the new etag"),
            )
        }
        Error::RequestIdReused { .. } => {
            details
                .add_bad_request_violation("request_id", "was used before for a different request");
            details.set_error_info("REQUEST_ID_REUSED", ERROR_DOMAIN, HashMap::new());
            (Code::InvalidArgument, error.to_string())
        }
        Error::Unavailable {
            what,
            retry_after,
            source,
        } => {
            tracing::warn!(error = %source, "{what} is unavailable");
            details.set_retry_info(Some(*retry_after));
            details.set_error_info("DATABASE_UNAVAILABLE", ERROR_DOMAIN, HashMap::new());
            (
                Code::Unavailable,
                format!("{what} is unavailable; retry later"),
            )
        }
        Error::Internal(cause) => {
            tracing::error!(error = ?cause, "internal error");
            details.set_error_info("INTERNAL", ERROR_DOMAIN, HashMap::new());
            (
                Code::Internal,
                "internal error; the service's logs have the cause under this call's x-request-id"
                    .to_owned(),
            )
        }
    };
    Status::with_error_details(code, message, details)
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}
