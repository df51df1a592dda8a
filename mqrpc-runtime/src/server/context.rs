//! What a handler can know about the call it is serving: its deadline.
//!
//! The server runs every handler inside a task-local [`CallContext`], so a
//! handler needs no extra argument to read its remaining budget.

use std::time::{Duration, Instant};

tokio::task_local! {
    static CURRENT: CallContext;
}

/// The call a handler is serving.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::{Duration, Instant};
/// use mqrpc::context::{self, CallContext};
/// // Outside a handler there is no call.
/// assert!(context::current().is_none());
/// let call = CallContext::new(Some(Instant::now() + Duration::from_secs(2)));
/// call.scope(async {
///     let left = context::remaining().unwrap();
///     assert!(left <= Duration::from_secs(2));
/// })
/// .await;
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    deadline: Option<Instant>,
}

impl CallContext {
    /// A context with the given deadline (`None`: the caller set none).
    pub fn new(deadline: Option<Instant>) -> CallContext {
        CallContext { deadline }
    }

    /// When the caller stops waiting. The server stops the handler then.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs `future` with this context as the current one.
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

/// The context of the call the current task serves, if any.
pub fn current() -> Option<CallContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Deadline of the call the current task serves.
pub fn deadline() -> Option<Instant> {
    current().and_then(|c| c.deadline())
}

/// Time left for the call the current task serves.
pub fn remaining() -> Option<Duration> {
    current().and_then(|c| c.remaining())
}
