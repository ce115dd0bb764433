//! The domain's own errors: what it refuses ([`Refusal`]), and what it is told went wrong in
//! Billecta ([`StageFailure`]), in the terms the stage machine decides by. The layers above translate
//! to and from these; the domain never sees a transport, storage or Billecta client type.

use super::{Stage, StageState};
use std::fmt;

/// A stage that must be done before the call can proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmetStage {
    /// The stage's resource, such as `tenants/gp/environments/test/stages/AGREEMENT`.
    pub subject: String,
    pub stage: Stage,
    pub state: StageState,
}

/// A change the domain refuses; the record is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The call came too early: earlier stages are not done.
    #[error("{message}")]
    StagesNotDone {
        resource: String,
        unmet: Vec<UnmetStage>,
        message: String,
    },

    /// The call does not fit the record's current state for another reason.
    #[error("{message}")]
    Precondition {
        reason: &'static str,
        subject: String,
        message: String,
    },
}

/// What a failed Billecta step means for its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Billecta is down, slow or rate limiting: worth trying again later.
    Unavailable,
    /// Billecta refused the stored credentials.
    CredentialsRejected,
    /// Billecta refused the data; the same request fails the same way.
    Refused,
    /// Billecta no longer holds what the stage set up.
    Gone,
    /// An answer nobody expected.
    Unexpected,
}

/// A failed Billecta step, as the stage machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    pub kind: FailureKind,
    /// What happened, for a person: the environment, the endpoint and Billecta's own message. Never
    /// a credential.
    pub description: String,
}

impl fmt::Display for StageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}
