//! The one place where the service's errors become gRPC statuses: each with exactly one ErrorInfo
//! (an UPPER_SNAKE reason), plus BadRequest, PreconditionFailure or RetryInfo where they apply.

use crate::domain::failure::Refusal;
use crate::error::Error;
use crate::storage::StorageError;
use billecta_client::{ErrorKind, Failure};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What a caller is told to wait when Billecta is down and did not say for how long.
const BILLECTA_DEFAULT_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// What a caller is told to wait when the service is shutting down: a restart or another replica
/// takes the call within moments.
const SHUTTING_DOWN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

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
        Error::AlreadyExists { resource } | Error::Storage(StorageError::Duplicate(resource)) => {
            details.set_error_info(
                "ALREADY_EXISTS",
                ERROR_DOMAIN,
                metadata(&[("resource", resource)]),
            );
            (Code::AlreadyExists, error.to_string())
        }
        Error::Refused(Refusal::StagesNotDone {
            resource,
            unmet,
            message,
        }) => {
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
        }
        | Error::Refused(Refusal::Precondition {
            reason,
            subject,
            message,
        }) => {
            details.add_precondition_failure_violation("STATE", subject, message);
            details.set_error_info(*reason, ERROR_DOMAIN, metadata(&[("resource", subject)]));
            (Code::FailedPrecondition, message.clone())
        }
        Error::Busy {
            resource,
            retry_after,
        } => {
            details.set_retry_info(Some(*retry_after));
            details.set_error_info(
                "STAGE_BUSY",
                ERROR_DOMAIN,
                metadata(&[("resource", resource)]),
            );
            (
                Code::Aborted,
                format!("{error}; retry after the RetryInfo delay"),
            )
        }
        Error::Unauthenticated { message } => {
            details.set_error_info("UNAUTHENTICATED", ERROR_DOMAIN, HashMap::new());
            (Code::Unauthenticated, message.clone())
        }
        Error::PermissionDenied(denied) => {
            details.set_error_info(
                "PERMISSION_DENIED",
                ERROR_DOMAIN,
                metadata(&[("permission", denied.permission.as_str())]),
            );
            (Code::PermissionDenied, error.to_string())
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
        Error::Storage(storage @ (StorageError::Unreachable(_) | StorageError::DiskFull(_))) => {
            details.set_retry_info(storage.retry_after());
            let (reason, message) = if let StorageError::DiskFull(source) = storage {
                tracing::error!(
                    error = format!("{source:#}"),
                    "a write was refused: the disk that holds the database is full"
                );
                (
                    "DATABASE_DISK_FULL",
                    "the disk that holds the database is full: changes are refused until an \
                     operator frees space, reads still work; retry later",
                )
            } else {
                tracing::warn!(
                    error = format!("{storage:#}"),
                    "the database is unavailable"
                );
                (
                    "DATABASE_UNAVAILABLE",
                    "the database is unavailable; retry later",
                )
            };
            details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
            (Code::Unavailable, message.to_owned())
        }
        Error::Billecta(failure) => {
            let kind = failure.kind();
            let status = failure.status().map(|status| status.to_string());
            let attempts = failure.attempts.to_string();
            let mut pairs = vec![
                ("environment", failure.environment.as_str()),
                ("endpoint", failure.endpoint),
                ("kind", kind.as_str()),
                ("attempts", attempts.as_str()),
                ("billecta_message", failure.message.as_str()),
            ];
            if let Some(status) = &status {
                pairs.push(("http_status", status));
            }
            if let Some(code) = &failure.external_error_code {
                pairs.push(("external_error_code", code));
            }
            if failure.outcome_unknown {
                pairs.push(("outcome_unknown", "true"));
            }
            let (code, reason) = match (kind, &failure.failure) {
                (_, Failure::DeadlineExceeded) => {
                    (Code::DeadlineExceeded, "BILLECTA_DEADLINE_EXCEEDED")
                }
                (ErrorKind::Transient, _) => (Code::Unavailable, "BILLECTA_UNAVAILABLE"),
                (ErrorKind::InvalidInput, _) => (Code::FailedPrecondition, "BILLECTA_REJECTED"),
                (ErrorKind::BadCredentials, _) => {
                    (Code::FailedPrecondition, "BILLECTA_CREDENTIALS_REJECTED")
                }
                (ErrorKind::NotFound, _) => (Code::FailedPrecondition, "BILLECTA_NOT_FOUND"),
                (ErrorKind::Unexpected, _) => (Code::Internal, "BILLECTA_UNEXPECTED_RESPONSE"),
            };
            if code == Code::Unavailable {
                details.set_retry_info(Some(
                    failure.retry_after.unwrap_or(BILLECTA_DEFAULT_RETRY_AFTER),
                ));
            }
            if code == Code::FailedPrecondition {
                details.add_precondition_failure_violation(
                    reason,
                    format!("billecta/{}", failure.environment),
                    failure.to_string(),
                );
            }
            details.set_error_info(reason, ERROR_DOMAIN, metadata(&pairs));
            (code, failure.to_string())
        }
        Error::ShuttingDown => {
            details.set_retry_info(Some(SHUTTING_DOWN_RETRY_AFTER));
            details.set_error_info("SHUTTING_DOWN", ERROR_DOMAIN, HashMap::new());
            (
                Code::Unavailable,
                "the service is shutting down; retry with the same request_id (another replica, \
                 or this one once restarted, takes the call)"
                    .to_owned(),
            )
        }
        Error::Internal(cause) | Error::Storage(StorageError::Internal(cause)) => {
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

/// The status of a request message over `--max-message-bytes`.
fn message_too_large(limit_bytes: usize) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "MESSAGE_TOO_LARGE",
        ERROR_DOMAIN,
        HashMap::from([
            ("limit_bytes".to_owned(), limit_bytes.to_string()),
            ("setting".to_owned(), "--max-message-bytes".to_owned()),
        ]),
    );
    Status::with_error_details(
        Code::OutOfRange,
        format!(
            "the request message is larger than the {limit_bytes} bytes the server accepts; send \
             a smaller one, or have the operators raise --max-message-bytes \
             (ONBOARDING_MAX_MESSAGE_BYTES)"
        ),
        details,
    )
}

/// Gives the answer to an oversized request message the ErrorInfo every error carries. tonic
/// refuses such a message itself, before any handler, with OUT_OF_RANGE and no details, in a
/// trailers-only answer (the status in the headers); no status of the service's own is
/// OUT_OF_RANGE, and each has details.
pub fn explain_oversized<B: Default>(
    response: http::Response<B>,
    limit_bytes: usize,
) -> http::Response<B> {
    let headers = response.headers();
    let refused_by_tonic = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11")
        && !headers.contains_key("grpc-status-details-bin");
    if refused_by_tonic {
        message_too_large(limit_bytes).into_http()
    } else {
        response
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billecta_client::{BillectaError, Environment};
    use std::time::Duration;

    fn billecta(failure: Failure, retry_after: Option<Duration>) -> Status {
        to_status(Error::Billecta(BillectaError {
            environment: Environment::Test,
            endpoint: "POST /v1/creditors/creditor",
            failure,
            message: "OrgNo is not a valid organisation number".into(),
            external_error_code: Some("E17".into()),
            retry_after,
            attempts: 3,
            outcome_unknown: false,
        }))
    }

    #[test]
    fn only_tonics_own_out_of_range_is_explained() {
        let explained = explain_oversized(
            Status::out_of_range("Error, decoded message length too large").into_http::<()>(),
            4096,
        );
        let status = Status::from_header_map(explained.headers()).expect("a status");
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(status.message().contains("--max-message-bytes"));
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["limit_bytes"], "4096");

        let served = http::Response::new(());
        assert!(explain_oversized(served, 4096).headers().is_empty());
        let ours = to_status(Error::NotFound {
            resource: "tenants/gp".into(),
        })
        .into_http::<()>();
        let kept = explain_oversized(ours, 4096);
        assert_eq!(kept.headers()["grpc-status"], "5");
    }

    #[test]
    fn a_call_cut_off_by_a_shutdown_is_unavailable_with_a_short_wait() {
        let status = to_status(Error::ShuttingDown);
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "SHUTTING_DOWN");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(SHUTTING_DOWN_RETRY_AFTER)
        );
    }

    #[test]
    fn billecta_refusing_our_data_is_a_failed_precondition_with_its_message() {
        let status = billecta(Failure::Status(400), None);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("OrgNo is not a valid organisation number"),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "BILLECTA_REJECTED");
        assert_eq!(info.metadata["external_error_code"], "E17");
        assert_eq!(info.metadata["http_status"], "400");
        assert_eq!(info.metadata["environment"], "test");
    }

    #[test]
    fn billecta_down_is_unavailable_with_the_time_to_wait() {
        let status = billecta(Failure::Status(429), Some(Duration::from_secs(7)));
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "BILLECTA_UNAVAILABLE");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(7))
        );
        let status = billecta(Failure::Connect, None);
        assert_eq!(
            status.get_error_details().retry_info().unwrap().retry_delay,
            Some(BILLECTA_DEFAULT_RETRY_AFTER)
        );
    }

    #[test]
    fn other_billecta_failures_map_to_their_own_reasons() {
        let reason = |failure| {
            let status = billecta(failure, None);
            let reason = status
                .get_error_details()
                .error_info()
                .unwrap()
                .reason
                .clone();
            (status.code(), reason)
        };
        assert_eq!(
            reason(Failure::Status(401)),
            (
                Code::FailedPrecondition,
                "BILLECTA_CREDENTIALS_REJECTED".into()
            )
        );
        assert_eq!(
            reason(Failure::Status(404)),
            (Code::FailedPrecondition, "BILLECTA_NOT_FOUND".into())
        );
        assert_eq!(
            reason(Failure::DeadlineExceeded),
            (Code::DeadlineExceeded, "BILLECTA_DEADLINE_EXCEEDED".into())
        );
        assert_eq!(
            reason(Failure::Decode),
            (Code::Internal, "BILLECTA_UNEXPECTED_RESPONSE".into())
        );
    }
}
