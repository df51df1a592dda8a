//! Client streaming on the server: a method taking `mqrpc::Stream<T>`
//! reads the items its caller sends to this instance
//! (`<prefix>/<service>/_to/<instance>/_item`), each within the credit the
//! server granted (PROTOCOL.md, "Client streaming and bidirectional
//! streaming").
//!
//! When such a call starts, the dispatcher opens its [`Inbox`], registers
//! it under the call's key and grants the caller [`WINDOW`] items (the
//! grant names this instance: the caller sends the rest here, whichever
//! member of a share group took the request). Items arriving are held in
//! order of `mqrpc-seq` (a redelivered one is dropped, a gap waits for its
//! item) until the handler takes them; each [`WINDOW`]` / 2` taken earn
//! the caller as many more once the handler asks for the next. An item over the credit, over the server's
//! request size, undecodable, or an end marker that contradicts the items
//! stops the call with `bad-request`. The inbox leaves the table when the
//! handler drops its stream (it returned, was stopped, or its answer
//! stream ended), so late items find nothing and are dropped.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::answer::send_refusal;
use super::dispatch::Dispatcher;
use super::limits::Held;
use super::{Request, Service};
use crate::connection::Connection;
use crate::protocol::{
    Status, CREDIT_PROPERTY, INSTANCE_PROPERTY, SEQ_PROPERTY, STATUS_PROPERTY, TEXT_CONTENT_TYPE,
};
use crate::server::duplicates::{call_key, CallKey, KeyData};
use crate::{Codec, QoS, STREAM_WINDOW as WINDOW};

/// How the topic of an item ends: `/` and [`ITEM_METHOD`](crate::protocol::ITEM_METHOD)
/// (a method's name cannot start with `_`, so none ends so).
pub(crate) const ITEM_SUFFIX: &[u8] = b"/_item";

/// The client streams running on a server, by call.
pub(crate) type Upstreams = std::collections::HashMap<CallKey, Arc<Inbox>>;

tokio::task_local! {
    /// The upstream of the call the current handler serves, until the
    /// generated code takes it.
    static CURRENT: std::cell::RefCell<Option<RawUpstream>>;
}

/// Where grants and the refusal of a broken stream go: the call's Response
/// Topic and Correlation Data.
struct Caller {
    conn: Connection,
    request: Request,
    held: Arc<Held>,
    key: CallKey,
}

impl Caller {
    /// Grants the caller `n` more items (QoS 1: a lost grant would stall
    /// the stream).
    fn grant(&self, n: u32, instance: &str) {
        let Some(topic) = self.request.response_topic.clone() else {
            return;
        };
        if !crate::protocol::topic::is_publishable(&topic) {
            return; // its answer is not sent either (a warning says why)
        }
        let properties = PublishProperties {
            correlation_data: self.request.correlation.clone(),
            user_properties: vec![
                (
                    STATUS_PROPERTY.to_string(),
                    Status::Credit.as_str().to_string(),
                ),
                (CREDIT_PROPERTY.to_string(), n.to_string()),
                (INSTANCE_PROPERTY.to_string(), instance.to_string()),
            ],
            ..PublishProperties::default()
        };
        drop(
            self.conn
                .publish(topic, QoS::AtLeastOnce, Bytes::new(), properties, false),
        );
    }

    /// Stops the call (its handler, or its answer stream) and answers
    /// `bad-request` with `message`.
    fn refuse(&self, message: String) {
        warn!(method = %self.request.method, %message, "client stream refused");
        self.held.calls().cancel(self.key.clone(), Instant::now());
        let request = self.request.clone();
        let payload = Bytes::from(message);
        send_refusal(
            &self.conn,
            &self.held,
            request,
            Status::BadRequest,
            TEXT_CONTENT_TYPE,
            payload,
            None,
        );
    }
}

/// The items of one call's upstream that arrived and the handler has not
/// taken yet.
pub(crate) struct Inbox {
    state: Mutex<State>,
    caller: Caller,
    instance: Arc<str>,
    max_item_size: usize,
}

#[derive(Default)]
struct State {
    /// The next item the handler takes.
    next: u64,
    /// The caller may send the items before this one.
    granted: u64,
    /// Taken since the last grant.
    taken: u32,
    /// Arrived, not taken yet: `next..granted` at most.
    items: BTreeMap<u64, Bytes>,
    /// The count the end marker gave.
    end: Option<u64>,
    /// Refused: the stream gives nothing more.
    broken: bool,
    waker: Option<Waker>,
}

impl State {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Inbox {
    /// An item (`end: None`) or the end marker (`end: Some(count)`) of the
    /// caller, from the dispatcher's task. `Err`: the call must stop.
    fn arrive(&self, seq: u64, end: bool, payload: Bytes) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.broken {
            return Ok(());
        }
        let fault = if end {
            match state.end {
                Some(count) if count == seq => return Ok(()), // a copy
                Some(count) => Some(format!("end markers at {count} and {seq}")),
                None if state
                    .items
                    .keys()
                    .next_back()
                    .is_some_and(|last| *last >= seq)
                    || seq < state.next =>
                {
                    Some(format!(
                        "end marker at {seq} after item {}",
                        state.next.max(seq)
                    ))
                }
                None if seq > state.granted => Some(format!(
                    "end marker at {seq}, beyond the credit granted ({})",
                    state.granted
                )),
                None => {
                    state.end = Some(seq);
                    None
                }
            }
        } else if seq < state.next || state.items.contains_key(&seq) {
            debug!(seq, "client stream: a copy of an item, dropped");
            return Ok(());
        } else if seq >= state.granted {
            Some(format!(
                "item {seq} is beyond the credit granted ({} items)",
                state.granted
            ))
        } else if state.end.is_some_and(|count| seq >= count) {
            Some(format!("item {seq} after the end marker"))
        } else if payload.len() > self.max_item_size {
            Some(format!(
                "item {seq} has {} bytes; this server accepts at most {}",
                payload.len(),
                self.max_item_size
            ))
        } else {
            state.items.insert(seq, payload);
            None
        };
        match fault {
            None => {
                state.wake();
                Ok(())
            }
            Some(message) => {
                state.broken = true;
                state.items.clear();
                state.wake();
                Err(message)
            }
        }
    }

    /// The next item, in order, once it is there; `None` after the last
    /// one or once the stream is refused.
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.broken {
            return Poll::Ready(None);
        }
        // Credit for what the handler took, now that it asks for more.
        if state.taken >= WINDOW / 2 {
            let n = std::mem::take(&mut state.taken);
            state.granted += u64::from(n);
            self.caller.grant(n, &self.instance);
        }
        let next = state.next;
        if let Some(item) = state.items.remove(&next) {
            state.next += 1;
            state.taken += 1;
            return Poll::Ready(Some(item));
        }
        if state.end == Some(next) {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn refuse(&self, message: String) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.broken = true;
        state.items.clear();
        drop(state);
        self.caller.refuse(message);
    }
}

/// A call's upstream as the handler's side holds it: encoded items. It
/// takes the inbox out of the server's table when dropped.
pub(crate) struct RawUpstream {
    inbox: Arc<Inbox>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        let key = &self.inbox.caller.key;
        let mut upstreams = self.inbox.caller.held.upstreams();
        if upstreams
            .get(&**key)
            .is_some_and(|inbox| Arc::ptr_eq(inbox, &self.inbox))
        {
            upstreams.remove(&**key);
        }
    }
}

/// The items of a client stream decoded as `T`, as the handler reads
/// them: what the generated server passes as the `mqrpc::Stream<T>`
/// argument. An undecodable item ends it and stops the call with
/// `bad-request`.
struct Decoded<T> {
    upstream: RawUpstream,
    codec: Codec,
    decode: fn(Codec, &[u8]) -> Result<T, crate::Error>,
}

impl<T> futures_util::Stream for Decoded<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let Some(bytes) = std::task::ready!(this.upstream.inbox.poll_take(cx)) else {
            return Poll::Ready(None);
        };
        match (this.decode)(this.codec, &bytes) {
            Ok(item) => Poll::Ready(Some(item)),
            Err(e) => {
                let seq = this
                    .upstream
                    .inbox
                    .state
                    .lock()
                    .map_or(0, |s| s.next.saturating_sub(1));
                this.upstream
                    .inbox
                    .refuse(format!("cannot decode item {seq}: {e}"));
                Poll::Ready(None)
            }
        }
    }
}

/// The client stream of the call the current handler serves, decoded as
/// `T`; `None` outside such a call (a request to the method that came
/// without an upstream: broadcast, or [`respond`](crate::respond)), or
/// when taken already. Used by generated servers.
pub fn take<T: DeserializeOwned + Send + 'static>(codec: Codec) -> Option<crate::Stream<T>> {
    let upstream = CURRENT
        .try_with(|current| current.borrow_mut().take())
        .ok()
        .flatten()?;
    Some(crate::Stream::new(Decoded {
        upstream,
        codec,
        decode: |codec, bytes| codec.decode::<T>(bytes),
    }))
}

/// The message of a call to a method taking a client stream that came
/// without one. Used by generated servers.
pub fn missing(method: &str) -> crate::Reply {
    crate::Reply::failure(
        Status::BadRequest,
        format!(
            "`{method}` takes a stream of items from its caller: call it on one server \
             (not broadcast), as PROTOCOL.md \"Client streaming\" says"
        ),
    )
}

/// `work` with `upstream` as the current handler's client stream, if any.
pub(super) fn scope<F: std::future::Future>(
    upstream: Option<RawUpstream>,
    work: F,
) -> futures_util::future::Either<F, Pin<Box<impl std::future::Future<Output = F::Output>>>> {
    use futures_util::future::Either;
    match upstream {
        None => Either::Left(work),
        Some(upstream) => Either::Right(Box::pin(
            CURRENT.scope(std::cell::RefCell::new(Some(upstream)), work),
        )),
    }
}

impl<S: Service> Dispatcher<S> {
    /// Opens the upstream of a call to a method taking a client stream,
    /// and grants the caller its first window. `None` for other methods,
    /// broadcasts, and requests without Response Topic or Correlation Data.
    pub(super) fn open_upstream(
        &self,
        conn: &Connection,
        request: &Request,
    ) -> Option<RawUpstream> {
        if !S::takes_stream(&request.method) || request.broadcast {
            return None;
        }
        let key = call_key(
            request.response_topic.as_deref()?,
            request.correlation.as_deref()?,
        );
        let mut answer_to = request.clone();
        answer_to.payload = Bytes::new();
        answer_to.instance = None;
        let inbox = Arc::new(Inbox {
            state: Mutex::new(State {
                granted: u64::from(WINDOW),
                ..State::default()
            }),
            caller: Caller {
                conn: conn.clone(),
                request: answer_to,
                held: self.held.clone(),
                key: key.clone(),
            },
            instance: self.instance.clone(),
            max_item_size: self.max_request_size,
        });
        self.held.upstreams().insert(key, inbox.clone());
        inbox.caller.grant(WINDOW, &self.instance);
        Some(RawUpstream { inbox })
    }

    /// An item or end marker of a client stream
    /// (`<prefix>/<service>/_to/<instance>/_item`): to its call's inbox.
    pub(super) fn upstream_item(&self, conn: &Connection, publish: Publish, now: Instant) {
        let user = |name: &str| {
            publish.properties.as_ref().and_then(|p| {
                p.user_properties
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.trim().to_string())
            })
        };
        let seq = user(SEQ_PROPERTY).and_then(|seq| seq.parse::<u64>().ok());
        let end = user(STATUS_PROPERTY).as_deref() == Some(Status::End.as_str());
        let request = Request::from_publish(publish, now);
        if let Err(violation) = self.limits.check(&request) {
            return self.over_limit(conn, request, violation, None);
        }
        let (Some(topic), Some(correlation), Some(seq)) =
            (&request.cancel_of, &request.correlation, seq)
        else {
            debug!(service = S::NAME, "client stream item without mqrpc-response-topic, Correlation Data or mqrpc-seq: dropped");
            return;
        };
        let key = KeyData {
            topic: topic.as_str().into(),
            correlation: correlation.as_ref().into(),
        };
        let Some(inbox) = self.held.upstreams().get(&key).cloned() else {
            debug!(
                service = S::NAME,
                seq, "item of no running client stream: dropped"
            );
            return;
        };
        if let Err(message) = inbox.arrive(seq, end, request.payload) {
            inbox.caller.refuse(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_item_suffix_is_the_item_method_level() {
        assert_eq!(
            ITEM_SUFFIX,
            format!("/{}", crate::protocol::ITEM_METHOD).as_bytes()
        );
    }
}
