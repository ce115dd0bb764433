//! The background worker that keeps onboardings moving without a caller: every interval it carries on
//! with stages left waiting on the system (a transient Billecta failure, a call that stopped midway)
//! and re-checks the live setup of READY and BROKEN onboardings whose last check is older than the
//! revalidation interval, so a removed API user or a disabled creditor shows up as BROKEN (with an
//! audit event and a watch-stream change) before a customer notices.
//!
//! It works through the same operations as callers, so everything they guarantee holds: a stage is
//! worked by one call at a time (leases), a create looks before it creates, and an environment whose
//! Billecta is down (breaker open) is left alone until it is back.

use crate::domain::OnboardingState;
use crate::operations::Operations;
use crate::storage::ListFilter;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the reconciler looks, and how often it re-checks a working setup.
#[derive(Debug, Clone, Copy)]
pub struct ReconcilerSettings {
    pub interval: Duration,
    /// `None`: no scheduled revalidation.
    pub revalidate_every: Option<Duration>,
}

/// Most stages carried on, and most onboardings re-checked, in one pass: the rest wait for the next.
const PER_PASS: usize = 50;

/// Runs until `shutdown` is cancelled.
pub async fn run(
    operations: Operations,
    settings: ReconcilerSettings,
    shutdown: CancellationToken,
) {
    let mut last_checked: HashMap<String, Instant> = HashMap::new();
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
            revalidate_due(&operations, every, &mut last_checked, &shutdown).await;
        }
    }
}

/// Re-checks the READY and BROKEN onboardings not checked for `every`.
async fn revalidate_due(
    operations: &Operations,
    every: Duration,
    last_checked: &mut HashMap<String, Instant>,
    shutdown: &CancellationToken,
) {
    let mut checked = 0;
    for state in [OnboardingState::Ready, OnboardingState::Broken] {
        let filter = ListFilter {
            state: Some(state),
            ..ListFilter::default()
        };
        let mut after: Option<(String, String)> = None;
        loop {
            let page = operations
                .store()
                .list_onboardings(
                    &filter,
                    after.as_ref().map(|(t, e)| (t.as_str(), e.as_str())),
                    100,
                )
                .await;
            let records = match page {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(error = %error, "reconciler could not list onboardings");
                    return;
                }
            };
            let Some(last) = records.last() else {
                break;
            };
            after = Some((last.tenant.clone(), last.environment.as_str().to_owned()));
            for record in &records {
                if checked >= PER_PASS || shutdown.is_cancelled() {
                    return;
                }
                let key = record.key();
                let name = key.name();
                // An onboarding first seen (a new one, or every one after a restart) is checked one
                // interval later, so a restart does not check them all at once.
                let seen = *last_checked
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if seen.elapsed() < every {
                    continue;
                }
                last_checked.insert(name.clone(), Instant::now());
                checked += 1;
                if let Err(error) = operations.revalidate(&key).await {
                    tracing::info!(onboarding = %name, error = %error, "scheduled validation did not run");
                }
            }
        }
    }
}
