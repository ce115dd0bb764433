//! Requests answered in rounds: callers that arrive while a round runs wait for the next, which
//! answers all of them at once — one query, or one transaction, for many callers.

use crate::error::{Error, Result};
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

/// Times the round's task yields before a round starts. A yield lasts until the worker has run the
/// tasks that were ready, or, on a busy worker, until its next look at the network (every 61 task
/// polls in tokio): under load each yield lets more of the calls on their way reach this round.
/// Measured at full load on SQLite, payment reads ran some 30 % slower without a yield and some 5 %
/// slower with one than with three (billecta-bench; BENCHMARKS.md).
const TURNS_BEFORE_ROUND: usize = 3;

struct Waiting<Q, A> {
    request: Q,
    reply: oneshot::Sender<Result<A>>,
}

/// A handle on a task that answers requests `Q` with `A`, in rounds.
pub(super) struct Rounds<Q, A> {
    requests: mpsc::UnboundedSender<Waiting<Q, A>>,
}

impl<Q, A> Clone for Rounds<Q, A> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Rounds<Q, A> {
    /// Starts the task: each round takes up to `per_round` waiting requests and `round` answers them,
    /// one answer per request in their order (an error answers all of them). The task ends when the
    /// last handle is dropped. (The number waiting is bounded by the server's admission limit.)
    pub fn start<F, Fut>(per_round: usize, mut round: F) -> Self
    where
        F: FnMut(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<A>>> + Send,
    {
        let (requests, mut receiver) = mpsc::unbounded_channel::<Waiting<Q, A>>();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while receiver.recv_many(&mut waiting, per_round).await > 0 {
                // Before the round starts, the tasks that are ready to run get their turns: under
                // load many of them are about to ask, and join this round instead of each waiting
                // for one of their own. Idle, nothing else is ready and the round starts at once.
                for _ in 0..TURNS_BEFORE_ROUND {
                    if waiting.len() >= per_round {
                        break;
                    }
                    tokio::task::yield_now().await;
                    while waiting.len() < per_round {
                        match receiver.try_recv() {
                            Ok(request) => waiting.push(request),
                            Err(_) => break,
                        }
                    }
                }
                let (asked, replies): (Vec<Q>, Vec<_>) = waiting
                    .drain(..)
                    .map(|waiting| (waiting.request, waiting.reply))
                    .unzip();
                // A caller may have gone away meanwhile: its answer is dropped.
                match round(asked).await {
                    Ok(answers) => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(shared(&error)));
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    /// Waits for the answer to `request`, given in the first round that starts after this call.
    pub async fn ask(&self, request: Q) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Waiting { request, reply })
            .map_err(|_| Error::Internal(anyhow::anyhow!("a round task has stopped")))?;
        answer
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("a round left a request unanswered")))?
    }
}

/// One error told to every caller of the round that failed.
pub(super) fn shared(error: &Error) -> Error {
    let chain = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    match error {
        Error::Unavailable {
            what, retry_after, ..
        } => Error::Unavailable {
            what,
            retry_after: *retry_after,
            source: anyhow::anyhow!(chain),
        },
        _ => Error::Internal(anyhow::anyhow!(chain)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Tasks between the round falling due and the last callers asking.
    const HOPS: usize = 100;

    /// On `#[tokio::test]`'s current-thread runtime, as on each worker of the server's, the
    /// scheduler looks at the network (and wakes yielded tasks) every 61 polls; this test needs only
    /// that one worker.
    #[tokio::test]
    async fn callers_on_their_way_when_a_round_is_due_join_it() {
        let rounds_run = Arc::new(AtomicUsize::new(0));
        let counter = rounds_run.clone();
        let rounds = Rounds::start(64, move |asked: Vec<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(asked.into_iter().map(|n| n * 2).collect()) }
        });
        // The first caller asks (the round task is now due), and only then does a chain of tasks
        // start, each waking the next, the last of which lets 20 more callers go: they ask some
        // 120–140 task polls after the round fell due, past the end of the first yield.
        let (go, mut relayed) = tokio::sync::watch::channel(false);
        for _ in 0..HOPS {
            let (next, gate) = tokio::sync::watch::channel(false);
            let mut previous = std::mem::replace(&mut relayed, gate);
            tokio::spawn(async move {
                previous.wait_for(|open| *open).await.unwrap();
                // A gate stays open once opened: waiting on it succeeds even after its sender is gone.
                next.send(true).unwrap();
            });
        }
        let gate = relayed;
        let others = (1..=20u32)
            .map(|n| {
                let (rounds, mut gate) = (rounds.clone(), gate.clone());
                tokio::spawn(async move {
                    gate.wait_for(|open| *open).await.unwrap();
                    rounds.ask(n).await.unwrap()
                })
            })
            .collect::<Vec<_>>();
        tokio::task::yield_now().await;
        let mut first = std::pin::pin!(rounds.ask(100));
        assert!(futures::poll!(first.as_mut()).is_pending());
        go.send(true).unwrap();
        assert_eq!(first.await.unwrap(), 200);
        for (n, other) in (1..=20u32).zip(others) {
            assert_eq!(other.await.unwrap(), n * 2);
        }
        assert_eq!(
            rounds_run.load(Ordering::SeqCst),
            1,
            "one round answered all 21"
        );
    }
}
