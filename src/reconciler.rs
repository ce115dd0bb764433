//! The background worker that keeps onboardings moving without a caller: every interval it carries on
//! with stages left waiting on the system (a transient Billecta failure, a call that stopped midway)
//! and re-checks the live setup of READY and BROKEN onboardings on a schedule kept in the database
//! (one interval apart, each check made by one replica), so a removed API user or a disabled creditor shows up as BROKEN (with an
//! audit event and a watch-stream change) before a customer notices.
//!
//! It works through the same operations as callers, so everything they guarantee holds: a stage is
//! worked by one call at a time (leases), a create looks before it creates, and an environment whose
//! Billecta is down (breaker open) is left alone until it is back.

use crate::domain::now_micros;
use crate::domain::validate::{OnboardingKey, TenantId};
use crate::operations::Operations;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often the reconciler looks, and how often it re-checks a working setup.
#[derive(Debug, Clone, Copy)]
pub struct ReconcilerSettings {
    pub interval: Duration,
    /// `None`: no scheduled revalidation.
    pub revalidate_every: Option<Duration>,
    /// How long results stay under their request_id.
    pub request_id_retention: Duration,
}

/// Most stages carried on, and most onboardings re-checked, in one pass: the rest wait for the next.
const PER_PASS: usize = 50;

/// Runs until `shutdown` is cancelled.
pub async fn run(
    operations: Operations,
    settings: ReconcilerSettings,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            () = shutdown.cancelled() => return,
        }
        match operations
            .resume_pending(settings.interval, PER_PASS as i64)
            .await
        {
            Ok(0) => {}
            Ok(resumed) => tracing::info!(resumed, "reconciler carried stages on"),
            Err(error) => {
                tracing::warn!(error = %error, "reconciler could not look for pending stages")
            }
        }
        if let Some(every) = settings.revalidate_every {
            revalidate_due(&operations, every, &shutdown).await;
        }
        expire_request_ids(&operations, settings.request_id_retention).await;
    }
}

/// Most stored results deleted by one statement; a pass repeats it while there are more.
const EXPIRED_PER_STATEMENT: i64 = 1000;

/// Deletes the results kept under request_ids longer than `retention`.
async fn expire_request_ids(operations: &Operations, retention: Duration) {
    let before = now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let mut deleted = 0;
    loop {
        match operations
            .store()
            .expire_results(before, EXPIRED_PER_STATEMENT)
            .await
        {
            Ok(count) => {
                deleted += count;
                if count < EXPIRED_PER_STATEMENT as u64 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "reconciler could not expire request ids");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "results past their request_id retention deleted");
    }
}

/// Re-checks the READY and BROKEN onboardings whose scheduled check is due. The schedule lives in
/// the database, shared by every replica: an onboarding newly READY (or seen for the first time after
/// an upgrade) is first checked one interval later, and each due check is taken by exactly one
/// replica, which moves it an interval on before it checks.
async fn revalidate_due(operations: &Operations, every: Duration, shutdown: &CancellationToken) {
    let every = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
    let store = operations.store();
    let now = now_micros();
    if let Err(error) = store.schedule_validations(now.saturating_add(every)).await {
        tracing::warn!(error = %error, "reconciler could not schedule validations");
        return;
    }
    let due = match store.validations_due(now, PER_PASS as i64).await {
        Ok(due) => due,
        Err(error) => {
            tracing::warn!(error = %error, "reconciler could not look for due validations");
            return;
        }
    };
    for check in due {
        if shutdown.is_cancelled() {
            return;
        }
        // A check against a Billecta that is down would tell nothing; it waits until it is back.
        if operations.billecta_paused(check.environment) {
            continue;
        }
        match store
            .take_validation(&check, now_micros().saturating_add(every))
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(error = %error, "reconciler could not take a validation");
                return;
            }
        }
        let Ok(tenant) = TenantId::parse("tenant", &check.tenant) else {
            continue;
        };
        let key = OnboardingKey::new(tenant, check.environment);
        let span = tracing::info_span!(
            "reconcile",
            otel.name = "revalidate",
            tenant = %check.tenant,
            environment = %check.environment,
        );
        if let Err(error) = operations.revalidate(&key).instrument(span).await {
            tracing::info!(onboarding = %key.name(), error = %error, "scheduled validation did not run");
        }
    }
}
