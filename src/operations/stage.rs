//! The runner of every stage that calls Billecta, [`Operations::run_stage`]. It works in three steps,
//! so that no database transaction waits on Billecta:
//! 1. **Claim** (one transaction): replay a retried request_id, check the etag and the stage order,
//!    record what was asked for, and put the stage IN_PROGRESS under a lease. validate_only stops
//!    here, before Billecta is contacted.
//! 2. **Billecta**, outside any transaction, within the caller's deadline and the lease.
//! 3. **Record** (a second transaction): if the lease still holds, store the outcome — the stage's
//!    new state, any secrets, one audit event with the outcome — and, on success, the result under
//!    the request_id.
//!
//! A stage supplies only what sets it apart ([`BillectaStage`]): the claim's checks, the work in
//! Billecta, and what success and failure change. A lease that expires (its holder crashed) lets the
//! next call take the stage over; one whose holder a clean shutdown cut off is released at once
//! ([`super::leases`]).

use super::leases::Held;
use super::users::Renewals;
use super::{CallContext, Committed, Conventions, Mutation, Operations, Written};
use crate::domain::failure::StageFailure;
use crate::domain::onboarding::{Lease, OnboardingRecord, StageRecord};
use crate::domain::stages::{self, creditor_stage};
use crate::domain::validate::OnboardingKey;
use crate::domain::{Micros, Stage, StageState, now_micros};
use crate::error::{Error, Result};
use billecta_client::{BillectaError, Deadline, ErrorKind};
use std::future::Future;
use std::time::Duration;

/// A stage that calls Billecta: what sets it apart from the others, step by step.
pub(super) trait BillectaStage: Send + Sync {
    /// What the Billecta step found or made, for the record step.
    type Answer: Send + Sync;

    /// The Billecta step in the audit trail's words, as in "{step} failed: {error}".
    fn step(&self) -> String;

    /// Step 1, in the claim's transaction: checks that the stage may be worked on now (the stages it
    /// needs done, no other call on it), records what was asked for, and returns the audit summary
    /// and the stage to claim.
    fn prepare(&mut self, record: &mut OnboardingRecord, now: Micros) -> Result<Prepared>;

    /// Step 2, outside any transaction: the work in Billecta, within `deadline`.
    fn call(
        &self,
        operations: &Operations,
        claimed: &Claimed,
        deadline: Deadline,
    ) -> impl Future<Output = std::result::Result<Self::Answer, Unsuccessful>> + Send;

    /// Step 3 after success: settles the stage and says what was done.
    fn succeeded(
        &self,
        operations: &Operations,
        call: &CallContext,
        claimed: &Claimed,
        record: &mut OnboardingRecord,
        answer: &Self::Answer,
        now: Micros,
    ) -> Result<Written>;

    /// Step 1, after `prepare`, in the claim's transaction (never for validate_only): secrets to keep
    /// before Billecta is asked, because the call may make something in Billecta that needs them
    /// should it be interrupted. Nothing, unless a stage says otherwise.
    fn kept_at_claim(
        &self,
        _operations: &Operations,
        _call: &CallContext,
        _record: &OnboardingRecord,
        _target: &StageRef,
        _now: Micros,
    ) -> Result<Written> {
        Ok(Written::default())
    }

    /// Step 3 after Billecta failed, once the stage shows the failure (a stage completed before the
    /// call stays as it was, and this is not asked): what else is kept, such as secrets to try again
    /// with. Nothing, unless a stage says otherwise.
    fn failed(
        &self,
        _operations: &Operations,
        _call: &CallContext,
        _claimed: &Claimed,
        _record: &mut OnboardingRecord,
        _error: &BillectaError,
        _now: Micros,
    ) -> Result<Written> {
        Ok(Written::default())
    }

    /// Whether the Billecta step, cut off by a shutdown, may have made something in Billecta that a
    /// new attempt could not find yet: the stage then stays leased for the settling time instead of
    /// being freed at once. No, unless a stage says otherwise.
    fn settles_when_abandoned(&self) -> bool {
        false
    }
}

/// What the claim's preparation settles: the claim's audit summary, and the stage to claim.
pub(super) type Prepared = (String, StageRef);

/// A secret kept by the claim, sealed.
type Kept = (
    crate::domain::onboarding::CredentialRecord,
    crate::crypto::Sealed,
);

/// Why the Billecta step did not succeed.
pub(super) enum Unsuccessful {
    /// The call could not go on before reaching Billecta (a stored secret missing or unreadable).
    /// The stage is given back as it was.
    Stopped(Error),
    /// Billecta failed. The stage shows it, unless it was completed before the call.
    Billecta(BillectaError),
    /// Billecta's answer rules the request out as it is (credentials refused, an invoice number
    /// behind Billecta's). The stage is given back as it was, the audit event says why in `summary`,
    /// and the caller gets `error`.
    Refused { summary: String, error: Error },
}

impl From<Error> for Unsuccessful {
    fn from(error: Error) -> Self {
        Unsuccessful::Stopped(error)
    }
}

impl From<BillectaError> for Unsuccessful {
    fn from(error: BillectaError) -> Self {
        Unsuccessful::Billecta(error)
    }
}

/// The stage a call works on: an environment stage (`creditor` empty) or a creditor's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StageRef {
    /// The creditor's internal id; empty for the environment.
    pub creditor: String,
    pub stage: Stage,
}

/// What the claim step leaves for the Billecta step.
pub(super) struct Claimed {
    pub record: OnboardingRecord,
    pub lease: Lease,
    /// The stage as it was before the claim.
    pub before: StageRecord,
    /// The whole onboarding before the call, to put back what a refused call changed.
    pub original: OnboardingRecord,
    pub target: StageRef,
    /// Tokens the Billecta step renewed, stored with whatever outcome the call records.
    pub renewals: Renewals,
    /// The lease ends before the caller's deadline (or the caller has none): it, not the caller,
    /// bounds the Billecta step.
    pub lease_bounds: bool,
}

/// Either the claim, or the answer when the call must not go on (validate_only, or a retry whose
/// first result is stored).
enum Claim {
    Claimed(Box<Claimed>),
    Answered(Box<OnboardingRecord>),
}

/// Time kept back from the lease, so the outcome is recorded before another call may take over.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Undoes what a call changed on the way in (the stage, what was asked for, a creditor it added):
/// a refused call changes nothing but the audit trail.
fn restore(record: &mut OnboardingRecord, claimed: &Claimed) {
    let target = &claimed.target;
    if target.creditor.is_empty() {
        *record.stage_mut(target.stage) = claimed.before.clone();
        record.account = claimed.original.account.clone();
        return;
    }
    let original = claimed
        .original
        .creditors
        .iter()
        .find(|creditor| creditor.id == target.creditor);
    match original {
        Some(original) => {
            if let Some(creditor) = record
                .creditors
                .iter_mut()
                .find(|creditor| creditor.id == target.creditor)
            {
                *creditor = original.clone();
            }
        }
        None => record
            .creditors
            .retain(|creditor| creditor.id != target.creditor),
    }
}

pub(super) fn stage_mut<'a>(
    record: &'a mut OnboardingRecord,
    target: &StageRef,
) -> &'a mut StageRecord {
    if target.creditor.is_empty() {
        return record.stage_mut(target.stage);
    }
    let creditor = record
        .creditors
        .iter_mut()
        .find(|creditor| creditor.id == target.creditor)
        .expect("a claimed creditor is never removed");
    creditor_stage(creditor, target.stage)
}

/// The lease as an error that ran out of it names it.
const LEASE_BOUND: &str = "the stage's lease --stage-lease-ms";

/// How long a claim holds its stage, in microseconds: the lease, but no longer than the claiming
/// call's deadline plus the margin to record the outcome in. The Billecta step ends by the deadline
/// (the client fits every attempt and backoff into it), so after that margin nobody is working on
/// the stage any more: a waiting call is told that time ([`check_free`]), not the whole lease, and a
/// call whose holder crashed is taken over as soon. A create runs without a deadline and keeps the
/// whole lease; one whose answer was lost is leased again for the settling time when its failure is
/// recorded.
fn lease_length(lease: Duration, deadline: Deadline) -> Micros {
    let length = deadline
        .remaining()
        .map_or(lease, |left| lease.min(left.saturating_add(LEASE_MARGIN)));
    i64::try_from(length.as_micros()).unwrap_or(i64::MAX)
}

/// Refuses a stage another call is working on, unless its lease ran out. The caller is told to
/// retry when the lease ends: by then the holder has recorded its outcome or is presumed crashed.
pub(super) fn check_free(stage: &StageRecord, subject: &str, now: Micros) -> Result<()> {
    match &stage.lease {
        Some(lease) if lease.expire_time > now => Err(Error::Busy {
            resource: format!("{subject}/stages/{}", stage.stage),
            retry_after: Duration::from_micros(
                u64::try_from(lease.expire_time - now).unwrap_or_default(),
            ),
        }),
        _ => Ok(()),
    }
}

/// The audit outcome of a failed Billecta step, as the caller will see it.
fn outcome_of(error: &BillectaError) -> &'static str {
    match error.kind() {
        _ if error.failure == billecta_client::Failure::DeadlineExceeded => "DEADLINE_EXCEEDED",
        ErrorKind::Transient => "UNAVAILABLE",
        ErrorKind::Unexpected => "INTERNAL",
        ErrorKind::InvalidInput | ErrorKind::BadCredentials | ErrorKind::NotFound => {
            "FAILED_PRECONDITION"
        }
    }
}

impl Operations {
    /// Runs `stage` in its three steps. Answers the record as the call left it; a retried
    /// request_id's first result; or, for validate_only, the record as the claim checked it.
    pub(super) async fn run_stage(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        deadline: Deadline,
        mut stage: impl BillectaStage,
    ) -> Result<OnboardingRecord> {
        let claim = self
            .claim(call, key, mutation, deadline, |record, now| {
                let prepared = stage.prepare(record, now)?;
                let kept = if mutation.validate_only {
                    Vec::new()
                } else {
                    stage
                        .kept_at_claim(self, call, record, &prepared.1, now)?
                        .secrets
                };
                Ok((prepared, kept))
            })
            .await?;
        let claimed = match claim {
            Claim::Answered(record) => return Ok(*record),
            Claim::Claimed(claimed) => claimed,
        };
        self.hold(Held {
            key: key.clone(),
            target: claimed.target.clone(),
            lease: claimed.lease.clone(),
            call: call.clone(),
            mutation: mutation.clone(),
            settles: stage.settles_when_abandoned(),
        })
        .await?;
        let outcome = self
            .call_and_record(call, key, mutation, deadline, &claimed, &stage)
            .await;
        self.leases.let_go(&claimed.lease.owner);
        outcome
    }

    /// Steps 2 and 3 of a claimed stage: Billecta, and the outcome recorded. A shutdown that stops
    /// the Billecta step leaves the claim to [`Operations::release_abandoned`].
    async fn call_and_record(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        deadline: Deadline,
        claimed: &Claimed,
        stage: &impl BillectaStage,
    ) -> Result<OnboardingRecord> {
        let deadline = billecta_deadline(deadline, claimed, self.timing.lease);
        let answer = self
            .leases
            .unless_stopped(stage.call(self, claimed, deadline))
            .await
            .ok_or(Error::ShuttingDown)?;
        let (summary, error) = match answer {
            Ok(answer) => {
                return self
                    .record(call, key, mutation, claimed, "OK", |record, now| {
                        stage.succeeded(self, call, claimed, record, &answer, now)
                    })
                    .await;
            }
            Err(Unsuccessful::Billecta(error)) => {
                let outcome = outcome_of(&error);
                self.record(call, key, mutation, claimed, outcome, |record, now| {
                    let summary = format!("{} failed: {error}", stage.step());
                    if claimed.before.state == StageState::Completed {
                        // The setup in Billecta is what it was and works: the stage stays as it
                        // was, and nothing of this call is kept.
                        restore(record, claimed);
                        return Ok(Written::from(summary));
                    }
                    // Any other stage shows the failure, waiting on the system when it is transient.
                    stages::billecta_failed(
                        stage_mut(record, &claimed.target),
                        &StageFailure::from(&error),
                        now,
                    );
                    let kept = stage.failed(self, call, claimed, record, &error, now)?;
                    Ok(Written { summary, ..kept })
                })
                .await?;
                return Err(Error::Billecta(error));
            }
            Err(Unsuccessful::Stopped(error)) => (
                format!(
                    "{} stopped before reaching Billecta: {error}",
                    mutation.method
                ),
                error,
            ),
            Err(Unsuccessful::Refused { summary, error }) => (summary, error),
        };
        // A refused call changes nothing but the audit trail.
        let outcome = match error {
            Error::Internal(_) => "INTERNAL",
            _ => "FAILED_PRECONDITION",
        };
        self.record(call, key, mutation, claimed, outcome, |record, _| {
            restore(record, claimed);
            Ok(Written::from(summary.clone()))
        })
        .await?;
        Err(error)
    }

    /// Step 1: claims `target` for this call, until its `deadline` (see [`lease_length`]), after
    /// `prepare` checked the order and recorded what was asked for.
    async fn claim(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        deadline: Deadline,
        mut prepare: impl FnMut(&mut OnboardingRecord, Micros) -> Result<(Prepared, Vec<Kept>)>,
    ) -> Result<Claim> {
        let owner = uuid::Uuid::new_v4().to_string();
        let full_lease = i64::try_from(self.timing.lease.as_micros()).unwrap_or(i64::MAX);
        let mut lease_bounds = true;
        let mut claimed = None;
        let conventions = Conventions {
            first_write: true,
            save_result: false,
            bump_version: false,
            outcome: "OK",
        };
        let written = self
            .transact(call, key, mutation, conventions, |record, now| {
                let original = record.clone();
                let ((summary, target), kept) = prepare(record, now)?;
                let prepared = record.clone();
                let length = lease_length(self.timing.lease, deadline);
                // Not shortened to the caller's deadline: the lease ends first.
                lease_bounds = length == full_lease;
                let lease = Lease {
                    owner: owner.clone(),
                    expire_time: now.saturating_add(length),
                };
                let stage = stage_mut(record, &target);
                let before = stage.clone();
                // A completed stage stays completed while it is redone: what Billecta has works
                // until the new call succeeds.
                if stage.state != StageState::Completed {
                    stage.state = StageState::InProgress;
                    stage.blocked_on = crate::domain::BlockedOn::Nobody;
                    stage.update_time = Some(now);
                }
                stage.lease = Some(lease.clone());
                claimed = Some((lease, before, original, prepared, target));
                Ok(Written {
                    summary,
                    secrets: kept,
                    removed: Vec::new(),
                    ..Written::default()
                })
            })
            .await?;
        match written {
            Committed::Replayed(record) => Ok(Claim::Answered(Box::new(record))),
            Committed::Stored(record) => {
                let (lease, before, original, prepared, target) =
                    claimed.expect("a stored claim ran its preparation");
                tracing::Span::current().record("stage", before.stage.as_str());
                if mutation.validate_only {
                    // What was asked for, checked; the stage is not claimed and Billecta not asked.
                    let mut answer = prepared;
                    answer.refresh();
                    return Ok(Claim::Answered(Box::new(answer)));
                }
                Ok(Claim::Claimed(Box::new(Claimed {
                    record,
                    lease,
                    before,
                    original,
                    target,
                    renewals: Renewals::default(),
                    lease_bounds,
                })))
            }
        }
    }

    /// Step 3: records the outcome if this call still holds its lease. `apply` gets the record with
    /// the stage still claimed, and must settle the stage.
    async fn record(
        &self,
        call: &CallContext,
        key: &OnboardingKey,
        mutation: &Mutation,
        claimed: &Claimed,
        outcome: &'static str,
        mut apply: impl FnMut(&mut OnboardingRecord, Micros) -> Result<Written>,
    ) -> Result<OnboardingRecord> {
        let conventions = Conventions {
            first_write: false,
            save_result: outcome == "OK",
            bump_version: outcome == "OK",
            outcome,
        };
        let written = self
            .transact(call, key, mutation, conventions, |record, now| {
                let target = &claimed.target;
                if !target.creditor.is_empty()
                    && !record.creditors.iter().any(|c| c.id == target.creditor)
                {
                    // Only a copy older than the claim lacks the creditor (what a replica keeps
                    // may be one): refused, the write is made again on the onboarding as locked.
                    return Err(Error::Internal(anyhow::anyhow!(
                        "the claimed creditor {} is not in the onboarding",
                        target.creditor
                    )));
                }
                let stage = stage_mut(record, &claimed.target);
                if stage.lease.as_ref() != Some(&claimed.lease) {
                    return Err(Error::Busy {
                        resource: format!("{}/stages/{}", key.name(), claimed.target.stage),
                        retry_after: Duration::from_secs(1),
                    });
                }
                stage.lease = None;
                let mut written = apply(record, now)?;
                let (renewed, said) = self.store_renewals(record, call, &claimed.renewals, now)?;
                if !renewed.is_empty() {
                    // What the stage stored itself was obtained last, so it wins.
                    for (new, sealed) in renewed {
                        let own = written.secrets.iter().any(|(stored, _)| {
                            stored.scope == new.scope && stored.field == new.field
                        });
                        if !own {
                            written.secrets.push((new, sealed));
                        }
                    }
                    written.summary = format!("{} {said}", written.summary).trim().to_owned();
                }
                Ok(written)
            })
            .await?;
        match written {
            Committed::Replayed(record) | Committed::Stored(record) => Ok(record),
        }
    }
}

/// The deadline of the Billecta step: the caller's, but never past the lease (of `lease` in all),
/// less a margin to record the outcome in; named after whichever of the two it is, so that an
/// error that runs out of it says which.
fn billecta_deadline(caller: Deadline, claimed: &Claimed, lease: Duration) -> Deadline {
    if !claimed.lease_bounds {
        // The claim lasts until the caller's deadline and the margin: the caller's comes first.
        return caller;
    }
    let lease_left = Duration::from_micros(
        u64::try_from(claimed.lease.expire_time - now_micros()).unwrap_or_default(),
    )
    .saturating_sub(LEASE_MARGIN);
    Deadline::after(lease_left).bounded_by(LEASE_BOUND, lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_lasts_until_the_claiming_calls_deadline_and_a_margin() {
        let lease = Duration::from_secs(120);
        let micros = |duration: Duration| i64::try_from(duration.as_micros()).unwrap();
        assert_eq!(lease_length(lease, Deadline::none()), micros(lease));
        let soon = lease_length(lease, Deadline::after(Duration::from_secs(3)));
        assert!(
            soon <= micros(Duration::from_secs(3) + LEASE_MARGIN),
            "{soon}"
        );
        assert!(soon > micros(LEASE_MARGIN), "{soon}");
        assert_eq!(
            lease_length(lease, Deadline::after(Duration::from_secs(600))),
            micros(lease)
        );
        // A deadline already past still leaves the margin to record the failure in.
        assert_eq!(
            lease_length(lease, Deadline::after(Duration::ZERO)),
            micros(LEASE_MARGIN)
        );
    }
}
