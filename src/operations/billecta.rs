//! The edge between the service and the Billecta client crate, and the only place where one's terms
//! become the other's: the domain's environment as the client's, and a failed call as the stage
//! machine's [`StageFailure`].

use crate::domain::Environment;
use crate::domain::failure::{FailureKind, StageFailure};
use billecta_client::{BillectaError, ErrorKind};

impl From<Environment> for billecta_client::Environment {
    fn from(environment: Environment) -> Self {
        match environment {
            Environment::Test => billecta_client::Environment::Test,
            Environment::Production => billecta_client::Environment::Production,
        }
    }
}

impl From<&BillectaError> for StageFailure {
    fn from(error: &BillectaError) -> Self {
        let kind = match error.kind() {
            ErrorKind::Transient => FailureKind::Unavailable,
            ErrorKind::BadCredentials => FailureKind::CredentialsRejected,
            ErrorKind::InvalidInput => FailureKind::Refused,
            ErrorKind::NotFound => FailureKind::Gone,
            ErrorKind::Unexpected => FailureKind::Unexpected,
        };
        StageFailure {
            kind,
            description: error.to_string(),
        }
    }
}
