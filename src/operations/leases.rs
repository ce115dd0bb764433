//! The leases this process holds, so that a clean shutdown releases them instead of leaving them to
//! run out. A stage claimed by a call the shutdown cut off would otherwise stay busy for the rest of
//! its lease (`--stage-lease-ms`), and every caller of a restarted service would be told
//! `STAGE_BUSY` until then although nobody works on the stage any more.
//!
//! [`Operations::run_stage`] enters its claim here once it is committed and takes it out once the
//! outcome is recorded. At shutdown [`Operations::release_abandoned`] closes the register (a claim
//! committed after that releases itself at once), stops the Billecta steps still running, and
//! releases every claim left, each in a transaction of its own that changes the stage only if its
//! lease is still the one this process took: a call that recorded its outcome meanwhile, or a stage
//! taken over by another call, is left as it is.
//!
//! Released, a lease ends there and then: the stage shows `INTERRUPTED` (blocked on
//! `SYSTEM_RETRYING`), the next call takes it at once, and the reconciler carries it on, as after a
//! crash once the lease has run out. A creditor's create is the exception: Billecta may have the
//! creditor although its answer never came, so its stage stays leased for the settling time, as
//! after a create whose answer was lost, and the next attempt looks the creditor up before it
//! creates.

use super::stage::{StageRef, stage_mut};
use super::{CallContext, Conventions, Mutation, Operations, Written};
use crate::domain::now_micros;
use crate::domain::onboarding::Lease;
use crate::domain::validate::OnboardingKey;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// One claim of this process: where it is, the lease it took, and the call it was taken for.
pub(super) struct Held {
    pub key: OnboardingKey,
    pub target: StageRef,
    pub lease: Lease,
    pub call: CallContext,
    pub mutation: Mutation,
    /// The Billecta step may have made something a new attempt cannot find yet (a creditor's
    /// create on its way): released, the stage stays leased for the settling time.
    pub settles: bool,
}

/// The claims this process holds, by lease owner.
#[derive(Default)]
pub(super) struct HeldLeases {
    register: Mutex<Register>,
    /// Cancelled at shutdown: the Billecta steps still running stop.
    stop: CancellationToken,
}

#[derive(Default)]
struct Register {
    held: HashMap<String, Held>,
    /// The shutdown took the register: nothing more is entered.
    closed: bool,
}

impl HeldLeases {
    /// Enters a committed claim; handed back when the shutdown has begun, for its holder to release.
    pub(super) fn hold(&self, held: Held) -> std::result::Result<(), Box<Held>> {
        let mut register = self
            .register
            .lock()
            .expect("the lease register is never poisoned");
        if register.closed {
            return Err(Box::new(held));
        }
        // A claim whose holder was dropped before it recorded (a task aborted) stays entered; once
        // its lease has run out there is nothing left to release.
        let now = now_micros();
        register.held.retain(|_, held| held.lease.expire_time > now);
        register.held.insert(held.lease.owner.clone(), held);
        Ok(())
    }

    /// Takes out a claim whose outcome is recorded (or could not be).
    pub(super) fn let_go(&self, owner: &str) {
        self.register
            .lock()
            .expect("the lease register is never poisoned")
            .held
            .remove(owner);
    }

    /// Closes the register and hands over what it held.
    fn close(&self) -> Vec<Held> {
        let mut register = self
            .register
            .lock()
            .expect("the lease register is never poisoned");
        register.closed = true;
        register.held.drain().map(|(_, held)| held).collect()
    }

    /// `work`, unless the shutdown stops it first (`None`).
    pub(super) async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            done = work => Some(done),
        }
    }
}

impl Operations {
    /// At shutdown, once calls in flight had their grace period: stops the Billecta steps still
    /// running and releases the stages they had claimed (see the module's documentation). Returns
    /// how many stages were released.
    pub async fn release_abandoned(&self) -> usize {
        let held = self.leases.close();
        self.leases.stop.cancel();
        let mut released = 0;
        for held in held {
            match self.release(&held).await {
                Ok(true) => released += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    onboarding = %held.key.name(),
                    stage = %held.target.stage,
                    error = %error,
                    "a stage claimed by a call cut off by the shutdown was not released; it is free once its lease runs out"
                ),
            }
        }
        released
    }

    /// Releases one claim of a call cut off by the shutdown, if its lease is still the one taken.
    /// `true` when it was.
    pub(super) async fn release(&self, held: &Held) -> Result<bool> {
        let conventions = Conventions {
            first_write: false,
            save_result: false,
            bump_version: false,
            // What the caller saw: the service went away.
            outcome: "UNAVAILABLE",
        };
        let settle = self.timing.settle;
        let mut released = false;
        self.transact(
            &held.call,
            &held.key,
            &held.mutation,
            conventions,
            |record, now| {
                released = false;
                let target = &held.target;
                let present = target.creditor.is_empty()
                    || record.creditors.iter().any(|c| c.id == target.creditor);
                if !present {
                    return Ok(Written::default());
                }
                let stage = stage_mut(record, target);
                if stage.lease.as_ref() != Some(&held.lease) {
                    // Recorded meanwhile, or taken over: not this claim's any more.
                    return Ok(Written::default());
                }
                released = true;
                let summary = if held.settles {
                    super::provisioning::settling(
                        stage,
                        settle,
                        now,
                        "the service shut down before its answer came",
                    );
                    format!(
                        "{} cut off by a shutdown of the service while creating in Billecta; the stage stays leased for {} s, then the creditor is looked up before any new attempt",
                        held.mutation.method,
                        settle.as_secs()
                    )
                } else {
                    stage.lease = Some(Lease {
                        owner: held.lease.owner.clone(),
                        expire_time: now,
                    });
                    format!(
                        "{} cut off by a shutdown of the service before it finished; {} is free for the next call",
                        held.mutation.method, target.stage
                    )
                };
                Ok(Written::from(summary))
            },
        )
        .await?;
        if released {
            tracing::info!(
                onboarding = %held.key.name(),
                stage = %held.target.stage,
                settles = held.settles,
                "released a stage claimed by a call cut off by the shutdown"
            );
        }
        Ok(released)
    }

    /// Enters a committed claim in the register, or, when the shutdown has begun, releases it at
    /// once and refuses the call.
    pub(super) async fn hold(&self, held: Held) -> Result<()> {
        let Err(held) = self.leases.hold(held) else {
            return Ok(());
        };
        self.release(&held).await?;
        Err(Error::ShuttingDown)
    }
}
