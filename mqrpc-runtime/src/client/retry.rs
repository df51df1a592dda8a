//! Retries that run a call once: [`RetryPolicy`], and the send loop of a
//! client that has one ([`ClientOptions::retry`](crate::ClientOptions::retry)).
//!
//! Every attempt of a call is the same request with the same Correlation
//! Data, so a server that already ran it answers the retry from its
//! duplicate table instead of running it again; the first answer of any
//! attempt ends the call (later ones are dropped as late). Retries carry
//! `mqrpc-attempt` and `mqrpc-age-ms`, so a server that does not remember
//! the call can refuse to run it again (PROTOCOL.md, "Retries").

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{request_properties, topic_base, Client, PendingSlot, Response, Waiter};
use crate::connection::AckTo;
use crate::error::Failure;
use crate::protocol::{Status, AGE_PROPERTY, ATTEMPT_PROPERTY};
use crate::{observe, Error, QoS};

/// When and how often a call is sent again: attempts in all, exponential
/// backoff with full jitter between them, each attempt waiting at most
/// [`attempt_timeout`](Self::attempt_timeout) for its answer, and all of
/// it within the call's timeout (its deadline: no attempt is sent after
/// it, and the server keeps a call's answer until 5 s past it).
///
/// A call is retried only after [`Error::Timeout`] (of an attempt),
/// [`Error::Disconnected`], [`Error::Overloaded`] and
/// [`Error::ServerGone`] (then sent to any instance of the service); a
/// retry waits for a lost connection to come back. Unary calls only, and
/// only those whose arguments fit in one message: streams, broadcasts,
/// one-way calls and calls sent in chunks are sent once.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use std::time::Duration;
/// use mqrpc::{ClientOptions, RetryPolicy};
/// let policy = RetryPolicy::new(4)
///     .backoff(Duration::from_millis(20), Duration::from_millis(500))
///     .attempt_timeout(Duration::from_secs(1));
/// let options = ClientOptions::default()
///     .timeout(Duration::from_secs(5))
///     .retry(policy);
/// assert_eq!(options.get_retry().map(|p| p.attempts()), Some(4));
/// assert_eq!(policy.get_attempt_timeout(Duration::from_secs(5)), Duration::from_secs(1));
/// // Without its own, an attempt waits for an equal share of the timeout.
/// assert_eq!(RetryPolicy::new(4).get_attempt_timeout(Duration::from_secs(8)), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 3 attempts, backoff from 50 ms doubling up to 1 s, each attempt
    /// waiting a third of the call's timeout.
    fn default() -> Self {
        RetryPolicy::new(3)
    }
}

impl RetryPolicy {
    /// At most `attempts` sends of each call, the first included (at
    /// least 1); backoff from 50 ms doubling up to 1 s.
    pub fn new(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts: attempts.max(1),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: None,
        }
    }

    /// The wait before the second attempt is up to `initial` (a random
    /// part of it: full jitter), doubling per attempt up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> RetryPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// How long one attempt waits for its answer before the next is sent
    /// (default: the call's timeout divided by the attempts). An answer
    /// to an earlier attempt that comes later still ends the call.
    pub fn attempt_timeout(mut self, timeout: Duration) -> RetryPolicy {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Attempts in all, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long one attempt of a call with this `timeout` waits.
    pub fn get_attempt_timeout(&self, timeout: Duration) -> Duration {
        self.attempt_timeout
            .unwrap_or_else(|| timeout / self.attempts)
            .min(timeout)
    }

    /// The jittered wait after attempt `attempt` (1 for the first).
    fn wait_after(&self, attempt: u32) -> Duration {
        let doubled = self
            .initial_backoff
            .saturating_mul(1 << (attempt - 1).min(16));
        let ceiling = doubled.min(self.max_backoff);
        let fraction = (crate::connection::random_u64() % 1024) as u32;
        ceiling * fraction / 1024
    }
}

/// True for the errors a retry may cure.
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Timeout { .. }
            | Error::Disconnected
            | Error::Overloaded { .. }
            | Error::ServerGone { .. }
    )
}

/// What one wait for an answer brought.
type Outcome = Result<Result<Response, Failure>, Option<oneshot::error::RecvError>>;

impl Client {
    /// [`send`](Client::send) with retries: one pending entry and one
    /// Correlation Data for all attempts.
    pub(super) async fn send_retrying(
        &self,
        method: &str,
        qos: QoS,
        schema: Option<&'static str>,
        payload: Vec<u8>,
        policy: RetryPolicy,
    ) -> Result<Response, Error> {
        #[cfg(feature = "metrics")]
        let meter = observe::CallMeter::start(&self.service, method);
        let timeout = self.options.timeout;
        let first_sent = Instant::now();
        let deadline = first_sent + timeout;
        let (tx, rx) = oneshot::channel();
        let registered = self.conn.ensure_open().and_then(|()| {
            self.caller
                .register(Waiter::Once(tx), self.instance.clone())
        });
        let id = match registered {
            Ok(id) => id,
            Err(error) => {
                #[cfg(feature = "metrics")]
                meter.finish(observe::error_label(&error));
                return Err(error);
            }
        };
        let slot = PendingSlot {
            client: self,
            id,
            sent: std::sync::atomic::AtomicBool::new(false),
        };
        let span = observe::client_span(&self.service, method, id);
        let mut call = Attempts {
            client: self,
            method,
            qos,
            schema,
            payload: Bytes::from(payload),
            topic: [&*self.topic_base, method].concat(),
            instance: self.instance.clone(),
            id,
            last_sent: first_sent,
            uncertain_since: None,
            rx,
        };
        let mut attempt = 1;
        let run = async {
            let mut late: Option<Outcome> = None;
            loop {
                let outcome = match late.take() {
                    Some(outcome) => outcome,
                    None => {
                        if let Err(error) = call.send(&span, attempt, deadline) {
                            break Err(error);
                        }
                        slot.sent.store(true, Ordering::Relaxed);
                        let wait = policy
                            .get_attempt_timeout(timeout)
                            .min(deadline.saturating_duration_since(Instant::now()));
                        match tokio::time::timeout(wait, &mut call.rx).await {
                            Ok(answer) => answer.map_err(Some),
                            Err(_) => Err(None),
                        }
                    }
                };
                let error = match outcome {
                    Ok(Ok(response)) if response.status == Status::Overloaded => {
                        Error::Overloaded {
                            message: String::from_utf8_lossy(&response.payload).into_owned(),
                        }
                    }
                    Ok(Ok(response)) => break Ok(response),
                    // The answer comes in chunks (PROTOCOL.md, "Chunked transfer").
                    Ok(Err(Failure::Chunked(incoming))) => {
                        let answer = super::chunked::receive_answer(self, id, incoming);
                        break Box::pin(answer).await.map_err(|f| f.into_error(method));
                    }
                    Ok(Err(failure)) => failure.into_error(method),
                    Err(Some(_)) => Error::Disconnected,
                    Err(None) => Error::Timeout {
                        method: method.to_string(),
                        timeout,
                    },
                };
                let backoff = policy.wait_after(attempt);
                if !retryable(&error)
                    || attempt >= policy.attempts
                    || Instant::now() + backoff >= deadline
                {
                    break Err(error);
                }
                if !matches!(error, Error::Overloaded { .. }) {
                    call.uncertain_since.get_or_insert(call.last_sent);
                }
                tracing::debug!(correlation = id, attempt, %error, "retrying");
                #[cfg(feature = "metrics")]
                observe::client_retry(&self.service, method, observe::error_label(&error));
                // An attempt that timed out keeps its entry: an answer to
                // it may still come. The others took it: put it back.
                if !error.is_timeout() {
                    if error.is_server_gone() {
                        // That instance is gone: any other may serve it.
                        call.topic =
                            [&*topic_base(&self.options.prefix, &self.service), method].concat();
                        call.instance = None;
                    }
                    let (tx, rx) = oneshot::channel();
                    self.caller
                        .reregister(id, Waiter::Once(tx), call.instance.clone());
                    call.rx = rx;
                }
                late = call.back_off(backoff, deadline).await;
                if late.is_none() {
                    attempt += 1;
                }
            }
        };
        let result = observe::InSpan::new(&span, run).await;
        drop(slot);
        let result = match result {
            Ok(response) if response.status == Status::DeadlineExceeded => Err(Error::Timeout {
                method: method.to_string(),
                timeout,
            }),
            other => other,
        };
        let status = observe::outcome_label(result.as_ref().map(|response| &response.status));
        observe::record_status(&span, status);
        observe::record_attempts(&span, attempt);
        tracing::debug!(parent: &span, correlation = id, status, attempt, "call ended");
        #[cfg(feature = "metrics")]
        meter.finish(status);
        result
    }
}

/// The state shared by the attempts of one call.
struct Attempts<'a> {
    client: &'a Client,
    method: &'a str,
    qos: QoS,
    schema: Option<&'static str>,
    payload: Bytes,
    topic: String,
    instance: Option<std::sync::Arc<str>>,
    id: u64,
    /// When the last attempt was sent.
    last_sent: Instant,
    /// When the first attempt that may have run was sent (it timed out,
    /// its link dropped, its instance went away); `None` while every
    /// attempt is known not to have run (answered `overloaded`).
    uncertain_since: Option<Instant>,
    rx: oneshot::Receiver<Result<Response, Failure>>,
}

impl Attempts<'_> {
    /// Publishes attempt `attempt` (never in a batch: a retry carries its
    /// own user properties) with what is left of the deadline.
    fn send(&mut self, span: &tracing::Span, attempt: u32, deadline: Instant) -> Result<(), Error> {
        self.last_sent = Instant::now();
        let client = self.client;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut properties = request_properties(
            &client.caller.reply_topic,
            self.id,
            client.options.codec,
            self.schema,
            remaining.max(Duration::from_millis(1)),
        );
        // Marked as a retry only when an earlier attempt may have run:
        // after `overloaded` alone the server knows it did not.
        if let Some(since) = self.uncertain_since {
            let age = since.elapsed().as_millis();
            let user = &mut properties.user_properties;
            user.push((ATTEMPT_PROPERTY.to_string(), attempt.to_string()));
            user.push((AGE_PROPERTY.to_string(), age.to_string()));
        }
        if !client.metadata.is_empty() {
            client.metadata.check_limits()?;
            client.metadata.write_to(&mut properties.user_properties);
        }
        observe::inject(span, &mut properties.user_properties);
        client.check_size(&self.topic, self.payload.len(), &properties)?;
        let ack = AckTo::Listener(client.caller.clone(), self.id);
        let (topic, payload) = (self.topic.clone(), self.payload.clone());
        client
            .conn
            .publish_to(topic, self.qos, payload, properties, false, ack);
        tracing::debug!(
            correlation = self.id,
            attempt,
            method = self.method,
            "request sent"
        );
        Ok(())
    }

    /// Waits `backoff`, and then for the connection to be up, within the
    /// deadline; an answer (or end) of the call that comes meanwhile is
    /// returned, to be taken instead of sending again.
    async fn back_off(&mut self, backoff: Duration, deadline: Instant) -> Option<Outcome> {
        let mut wait = backoff;
        loop {
            tokio::select! {
                biased;
                outcome = answer_or_closed(&mut self.rx) => return Some(outcome),
                () = tokio::time::sleep(wait) => {}
            }
            if self.client.conn.is_connected() || Instant::now() >= deadline {
                return None;
            }
            wait =
                Duration::from_millis(20).min(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// The next thing the call's receiver brings.
async fn answer_or_closed(rx: &mut oneshot::Receiver<Result<Response, Failure>>) -> Outcome {
    rx.await.map_err(Some)
}
