//! The skeleton every mutating RPC runs in, [`mutating`]: the caller and its permission, the resource
//! the request names and the caller's tenants, the other fields (every bad one reported at once), the
//! shared conventions (request_id, etag, validate_only), the operation (in the call's task or
//! detached from it) and the answer. An RPC supplies only what differs: [`MutatingRpc`].

use super::call::caller_deadline;
use super::{Scope, call_context, checked, permitted, within};
use crate::auth::{Caller, Permission};
use crate::domain::validate::{RequestId, Violations};
use crate::error::Error;
use crate::operations::{CallContext, Mutation, Operations};
use crate::proto;
use billecta_client::Deadline;
use prost::Message;
use sha2::{Digest, Sha256};
use std::future::Future;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// One mutating RPC: how its request parses, which operation it runs and what it answers.
pub(super) trait MutatingRpc: MutatingRequest + Send + 'static {
    /// The RPC's name, in the audit trail and with the stored result.
    const METHOD: &'static str;
    /// Whether the operation runs in a task of its own (see [`detached`]): those that talk to
    /// Billecta, so that their outcome is recorded even when the caller goes away.
    const DETACHED: bool;
    /// The resource the request names; the caller's tenants are checked against it before the
    /// other fields are looked at.
    type Target: Scope + Send + Sync + 'static;
    /// The other fields, parsed.
    type Input: Send + 'static;
    /// What the operation returns.
    type Output: Send + 'static;
    type Response: From<Self::Output>;

    /// Parses the resource the request names; `None` when it did not parse (a violation says why).
    fn target(&self, violations: &mut Violations) -> Option<Self::Target>;

    /// Parses the other fields, each bad one a violation.
    fn input(&self, violations: &mut Violations) -> Option<Self::Input>;

    /// The operation.
    fn run(
        operations: &Operations,
        parsed: Parsed<'_, Self::Target>,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send;
}

/// What an operation gets of a call whose request parsed: who calls, the resource, the shared
/// conventions, and the caller's deadline (unused by an operation that must not be cut short by it,
/// such as `CreateCreditor`).
pub(super) type Parsed<'a, T> = (&'a CallContext, &'a T, &'a Mutation, Deadline);

/// Runs a mutating RPC. Nothing is looked up before the caller's permission and tenants are checked,
/// so that a refusal says nothing about whether the resource exists.
pub(super) async fn mutating<R: MutatingRpc>(
    operations: &Operations,
    request: Request<R>,
) -> Result<Response<R::Response>, Status> {
    let call = call_context(&request);
    let caller = permitted(&request, Permission::Write)?;
    let deadline = caller_deadline(request.metadata());
    let request = request.into_inner();
    let mut violations = Violations::new();
    let target = request.target(&mut violations);
    if let Some(target) = &target {
        within(&caller, Permission::Write, target)?;
    }
    let input = request.input(&mut violations);
    let mutation = mutation(&mut violations, &caller, R::METHOD, &request);
    violations.finish().map_err(Error::from)?;
    let (target, input, mutation) = (checked(target), checked(input), checked(mutation));
    let output = if R::DETACHED {
        let operations = operations.clone();
        detached(
            async move { R::run(&operations, (&call, &target, &mutation, deadline), input).await },
        )
        .await?
    } else {
        R::run(operations, (&call, &target, &mutation, deadline), input).await?
    };
    Ok(Response::new(R::Response::from(output)))
}

/// Runs a call's work in a task of its own. A caller that goes away midway (deadline, cancel) would
/// otherwise drop the work between Billecta's answer and recording it, leaving the stage claimed until
/// its lease runs out; detached, the outcome is always recorded.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work.in_current_span())
        .await
        .map_err(|failure| {
            Error::Internal(anyhow::Error::new(failure).context("a call's task failed"))
        })?
}

/// A request of a mutating call, with the conventions every one of them shares.
pub(super) trait MutatingRequest: Message + Clone {
    fn request_id(&self) -> &str;
    fn etag(&self) -> &str;
    fn validate_only(&self) -> bool;
    /// The request as its fingerprint sees it: without request_id, etag and validate_only, so that a
    /// retry fingerprints the same, and without secrets, whose digest could be attacked offline (a
    /// retry with the same request_id is the same request whatever its password).
    fn fingerprinted(&self) -> Self;
}

macro_rules! mutating_request {
    ($type:ty $(, secrets: [$($secret:ident),*])?) => {
        impl MutatingRequest for $type {
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn etag(&self) -> &str {
                &self.etag
            }
            fn validate_only(&self) -> bool {
                self.validate_only
            }
            fn fingerprinted(&self) -> Self {
                Self {
                    request_id: String::new(),
                    etag: String::new(),
                    validate_only: false,
                    $($($secret: String::new(),)*)?
                    ..self.clone()
                }
            }
        }
    };
    (without etag: $type:ty) => {
        impl MutatingRequest for $type {
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn etag(&self) -> &str {
                ""
            }
            fn validate_only(&self) -> bool {
                self.validate_only
            }
            fn fingerprinted(&self) -> Self {
                Self {
                    request_id: String::new(),
                    validate_only: false,
                    ..self.clone()
                }
            }
        }
    };
}

mutating_request!(without etag: proto::CreateOnboardingRequest);
mutating_request!(proto::RecordAgreementRequest);
mutating_request!(proto::RegisterAccountRequest);
mutating_request!(proto::ConfirmAccountActivationRequest, secrets: [password]);
mutating_request!(proto::CreateCreditorRequest);
mutating_request!(proto::UpdateCompanySettingsRequest);
mutating_request!(proto::UpdateInvoiceSettingsRequest);
mutating_request!(proto::SkipStageRequest);
mutating_request!(proto::RegisterApiCredentialsRequest, secrets: [password, secure_token]);
mutating_request!(proto::CreateApiUserRequest);
mutating_request!(proto::RecordWebhookSetupRequest, secrets: [authorization]);
mutating_request!(without etag: proto::PromoteToProductionRequest);

/// ValidateOnboarding has none of the conventions: every call checks anew, on whatever version.
impl MutatingRequest for proto::ValidateOnboardingRequest {
    fn request_id(&self) -> &str {
        ""
    }
    fn etag(&self) -> &str {
        ""
    }
    fn validate_only(&self) -> bool {
        false
    }
    fn fingerprinted(&self) -> Self {
        self.clone()
    }
}

/// The shared conventions of a mutating request: its request_id (checked), the fingerprint that tells
/// a retry from a reused id, the etag and validate_only. The caller is part of the fingerprint: the
/// first result of a request_id is only ever replayed to the caller that made it.
fn mutation<R: MutatingRequest>(
    violations: &mut Violations,
    caller: &Caller,
    method: &'static str,
    request: &R,
) -> Option<Mutation> {
    let request_id = violations.check(RequestId::parse_optional(
        "request_id",
        request.request_id(),
    ))?;
    let request_hash = hex::encode(
        Sha256::new()
            .chain_update(caller.name.as_bytes())
            .chain_update([0])
            .chain_update(request.fingerprinted().encode_to_vec())
            .finalize(),
    );
    let etag = request.etag();
    Some(Mutation {
        method,
        request_id,
        request_hash,
        etag: (!etag.is_empty()).then(|| etag.to_owned()),
        validate_only: request.validate_only(),
    })
}
