//! Requests answered in rounds: callers that arrive while a round runs wait for the next, which
//! answers all of them at once — one query, or one transaction, for many callers.

use crate::error::{Error, Result};
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

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
fn shared(error: &Error) -> Error {
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
