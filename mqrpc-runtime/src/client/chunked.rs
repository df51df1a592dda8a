//! Chunked calls on the client (PROTOCOL.md, "Chunked transfer"): a
//! request too large for one message sent in chunks within the server's
//! grants, and an answer that comes in chunks reassembled, granted as it
//! comes, before it is decoded.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;

use super::pending::{answer, Caller, PendingSlot, Waiter};
use super::{Client, ClientOptions, Control, Response};
use crate::connection::AckTo;
use crate::error::Failure;
use crate::protocol::chunk::{
    cut, Assembly, ChunkHeader, Progress, CHUNK_GRANT_PROPERTY, CHUNK_PROPERTY, MAX_WINDOW,
};
use crate::protocol::QoS;
use crate::protocol::{topic, CANCEL_RESPONSE_TOPIC_PROPERTY, INSTANCE_PROPERTY, STATUS_PROPERTY};
use crate::{Chunking, Error};

/// The longest `mqrpc-chunk` value, for the size of a chunk's packet.
const LONGEST_HEADER: &str = "4294967295/4294967295/18446744073709551615";

/// Room for `_to/<instance>/` in the topic of chunks after the first.
const INSTANCE_ROOM: usize = 256;

/// The chunked transfers of one connection's calls, by correlation id.
#[derive(Default)]
pub(crate) struct Chunks {
    /// How many: calls check it before taking the lock.
    open: AtomicUsize,
    routes: Mutex<FxHashMap<u64, Route>>,
}

enum Route {
    /// A request being sent: the server's grants.
    Sending(Arc<Grants>),
    /// An answer being received: its chunks, and the instance sending it.
    Receiving(mpsc::Sender<Piece>, Option<Arc<str>>),
}

/// One chunk of an answer as it came, or the end of the call.
type Piece = Result<Chunk, Failure>;

struct Chunk {
    header: ChunkHeader,
    payload: Bytes,
    status: Option<String>,
    content_type: Option<String>,
    instance: Option<String>,
    /// Where the grants go (the chunk's Response Topic).
    grant_topic: Option<String>,
}

/// The server's grants to a request being sent, and the instance it named.
#[derive(Default)]
struct Grants {
    granted: AtomicU32,
    instance: Mutex<Option<Arc<str>>>,
    more: Notify,
}

impl Grants {
    fn grant(&self, n: u32, instance: Option<Arc<str>>) {
        if let Some(instance) = instance {
            let mut named = self.instance.lock().unwrap_or_else(|e| e.into_inner());
            named.get_or_insert(instance);
        }
        self.granted.fetch_max(n, Ordering::AcqRel);
        self.more.notify_one();
    }

    async fn wait_for(&self, index: u32) {
        while self.granted.load(Ordering::Acquire) <= index {
            self.more.notified().await;
        }
    }

    fn instance(&self) -> Option<Arc<str>> {
        self.instance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Chunks {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, id: u64, route: Route) {
        if self.lock().insert(id, route).is_none() {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes the route of `id` if it is of that kind (a request being
    /// sent, or an answer being received, which replaces it).
    fn remove(&self, id: u64, receiving: bool) {
        if self.open.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut routes = self.lock();
        if routes
            .get(&id)
            .is_some_and(|route| matches!(route, Route::Receiving(..)) == receiving)
        {
            routes.remove(&id);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Removes whatever route `id` has (its call ended); true if it had one.
    pub(super) fn forget(&self, id: u64) -> bool {
        if self.open.load(Ordering::Acquire) == 0 {
            return false;
        }
        let removed = self.lock().remove(&id).is_some();
        if removed {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// How many transfers are open (for tests: none once their calls ended).
    pub(super) fn len(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The instance `instance` is gone: the answers it was sending end.
    pub(super) fn instance_gone(&self, instance: &str) {
        self.end(
            |named| named == Some(instance),
            || Failure::Gone(Arc::from(instance)),
        );
    }

    /// The link dropped: every answer being received ends.
    pub(super) fn fail_all(&self, error: &Error) {
        self.end(|_| true, || Failure::Error(error.clone()));
    }

    fn end(&self, which: impl Fn(Option<&str>) -> bool, failure: impl Fn() -> Failure) {
        if self.open.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut routes = self.lock();
        let ended: Vec<u64> = routes
            .iter()
            .filter(
                |(_, route)| matches!(route, Route::Receiving(_, named) if which(named.as_deref())),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            if let Some(Route::Receiving(tx, _)) = routes.remove(&id) {
                self.open.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.try_send(Err(failure()));
            }
        }
    }
}

/// True for a message of a chunked transfer (a chunk or a grant), which
/// [`deliver`] takes instead of the usual path.
pub(super) fn is_chunked(properties: &PublishProperties) -> bool {
    properties
        .user_properties
        .iter()
        .any(|(key, _)| key == CHUNK_PROPERTY || key == CHUNK_GRANT_PROPERTY)
}

/// A chunk of an answer, or a grant to a request, for call `id`.
pub(super) fn deliver(caller: &Caller, id: u64, publish: Publish, properties: PublishProperties) {
    let mut header = None;
    let mut grant = None;
    let mut status = None;
    let mut instance = None;
    for (key, value) in properties.user_properties {
        match key.as_str() {
            CHUNK_PROPERTY => header = Some(ChunkHeader::parse(&value)),
            CHUNK_GRANT_PROPERTY => grant = value.trim().parse::<u32>().ok(),
            STATUS_PROPERTY => status = Some(value),
            INSTANCE_PROPERTY => instance = Some(value),
            _ => {}
        }
    }
    let chunks = &caller.chunks;
    let Some(header) = header else {
        // A grant: the request may go further, to that instance.
        let (Some(n), Some(route)) = (grant, chunks.lock().get(&id).map(Route::grants)) else {
            debug!(correlation = id, "grant for no chunked request: dropped");
            return;
        };
        let instance: Option<Arc<str>> = instance.map(Arc::from);
        if let Some(route) = route {
            route.grant(n, instance.clone());
        }
        if let Some(entry) = caller.lock().get_mut(&id) {
            if entry.instance.is_none() {
                entry.instance = instance;
            }
        }
        return;
    };
    let header = match header {
        Ok(header) => header,
        Err(reason) => return caller.fail_call(id, Failure::Error(Error::Protocol { reason })),
    };
    let chunk = Chunk {
        header,
        payload: publish.payload,
        status,
        content_type: properties.content_type,
        instance,
        grant_topic: properties.response_topic,
    };
    let mut routes = chunks.lock();
    if let Some(Route::Receiving(tx, _)) = routes.get(&id) {
        if tx.try_send(Ok(chunk)).is_err() {
            // More than the grants allow: the call ends.
            debug!(correlation = id, "chunks beyond the window: answer dropped");
            routes.remove(&id);
            chunks.open.fetch_sub(1, Ordering::AcqRel);
        }
        return;
    }
    if header.index != 0 {
        debug!(
            correlation = id,
            index = header.index,
            "chunk of no answer being received: dropped"
        );
        return;
    }
    // Chunk 0 of the answer: the call reads the chunks from now on.
    let waiter = {
        let mut pending = caller.lock();
        match pending.get(&id).map(|entry| &entry.waiter) {
            Some(Waiter::Once(_)) => pending.remove(&id).map(|entry| entry.waiter),
            _ => None,
        }
    };
    let Some(Waiter::Once(call)) = waiter else {
        debug!(
            correlation = id,
            "chunked answer for no unary call: dropped"
        );
        return;
    };
    let (tx, rx) = mpsc::channel(MAX_WINDOW as usize + 2);
    let instance = chunk.instance.as_deref().map(Arc::from);
    let _ = tx.try_send(Ok(chunk));
    if routes.insert(id, Route::Receiving(tx, instance)).is_none() {
        chunks.open.fetch_add(1, Ordering::AcqRel);
    }
    drop(routes);
    let incoming: Arc<dyn std::any::Any + Send + Sync> = Arc::new(Mutex::new(Some(rx)));
    let _ = call.send(Err(Failure::Chunked(incoming)));
}

impl Route {
    fn grants(&self) -> Option<Arc<Grants>> {
        match self {
            Route::Sending(grants) => Some(grants.clone()),
            Route::Receiving(..) => None,
        }
    }
}

/// Whether a request of `payload_len` bytes goes in chunks: over the chunk
/// size, or over the broker's Maximum Packet Size as one message.
pub(super) fn needs_chunks(
    client: &Client,
    topic: &str,
    payload_len: usize,
    properties: &PublishProperties,
) -> bool {
    if payload_len > client.options.chunking.get_size() {
        return true;
    }
    client.conn.broker_max_packet_size().is_some_and(|limit| {
        crate::connection::publish_size(topic, payload_len, properties) > limit as usize
    })
}

/// Removes a call's transfer when the call ends in any way; an answer
/// still coming is cancelled.
struct RouteGuard<'a> {
    client: &'a Client,
    id: u64,
    receiving: bool,
    cancel_to: Option<Option<Arc<str>>>,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        self.client.caller.chunks.remove(self.id, self.receiving);
        if let Some(instance) = self.cancel_to.take() {
            self.client
                .send_control(self.id, instance.as_deref(), Control::Cancel);
        }
    }
}

/// Sends a request in chunks, each once the server granted it, then waits
/// for the answer (which may come at any moment: a refusal ends it early).
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_request(
    client: &Client,
    slot: &PendingSlot<'_>,
    method: &str,
    topic: String,
    qos: QoS,
    payload: Bytes,
    properties: PublishProperties,
    mut rx: oneshot::Receiver<Result<Response, Failure>>,
) -> Result<Response, Failure> {
    let id = slot.id;
    let caller = &client.caller;
    let grants = Arc::new(Grants::default());
    grants.granted.store(1, Ordering::Release);
    caller.chunks.insert(id, Route::Sending(grants.clone()));
    let _route = RouteGuard {
        client,
        id,
        receiving: false,
        cancel_to: None,
    };
    let mut longest = properties.clone();
    longest
        .user_properties
        .push((CHUNK_PROPERTY.to_string(), LONGEST_HEADER.to_string()));
    let overhead = crate::connection::publish_size(&topic, 0, &longest) + INSTANCE_ROOM;
    let size = client
        .options
        .chunking
        .slice_size(overhead, client.conn.broker_max_packet_size());
    if size == 0 {
        return Err(Failure::Error(Error::TooLarge {
            message: "the request's properties leave no room for a chunk".into(),
        }));
    }
    let count = cut(payload.len(), size);
    let total = payload.len() as u64;
    let later = later_properties(&properties);
    debug!(
        correlation = id,
        bytes = total,
        count,
        size,
        "sending a chunked request"
    );
    let mut first = Some((topic, properties));
    for index in 0..count {
        let (topic, mut chunk) = match first.take() {
            Some(first) => first,
            None => {
                tokio::select! {
                    biased;
                    outcome = &mut rx => return outcome.unwrap_or(Err(Failure::Error(Error::Disconnected))),
                    () = grants.wait_for(index) => {}
                }
                (
                    later_topic(client, method, grants.instance())?,
                    later.clone(),
                )
            }
        };
        let header = ChunkHeader {
            index,
            count,
            total,
        };
        with_header(&mut chunk, &header);
        let start = index as usize * size;
        let slice = payload.slice(start.min(payload.len())..(start + size).min(payload.len()));
        let ack = AckTo::Listener(caller.clone(), id);
        client.conn.publish_to(topic, qos, slice, chunk, false, ack);
        slot.sent.store(true, Ordering::Relaxed);
    }
    answer(rx).await
}

/// The properties of a request's chunks after the first: what names the
/// call, and the Message Expiry Interval (the broker drops stale chunks).
pub(super) fn later_properties(first: &PublishProperties) -> PublishProperties {
    PublishProperties {
        response_topic: first.response_topic.clone(),
        correlation_data: first.correlation_data.clone(),
        message_expiry_interval: first.message_expiry_interval,
        ..PublishProperties::default()
    }
}

/// Adds a chunk's `mqrpc-chunk`.
pub(super) fn with_header(properties: &mut PublishProperties, header: &ChunkHeader) {
    properties
        .user_properties
        .push((CHUNK_PROPERTY.to_string(), header.value()));
}

/// The topic of chunks after the first: the instance that took chunk 0.
fn later_topic(
    client: &Client,
    method: &str,
    instance: Option<Arc<str>>,
) -> Result<String, Failure> {
    if client.instance.is_some() {
        return Ok(topic::method_topic(&client.topic_base, method));
    }
    let protocol = |reason: String| Failure::Error(Error::Protocol { reason });
    let instance =
        instance.ok_or_else(|| protocol("a chunk grant without mqrpc-instance".into()))?;
    topic::validate_level(&instance)
        .map_err(|_| protocol(format!("a chunk grant names the instance `{instance}`")))?;
    let service_base = topic::service_base(&client.options.prefix, &client.service);
    Ok(topic::method_topic(
        &topic::instance_base(&service_base, &instance),
        method,
    ))
}

/// Reads an answer that comes in chunks (chunk 0 arrived), granting the
/// server more as they come, and makes it the call's [`Response`].
pub(super) async fn receive_answer(
    client: &Client,
    id: u64,
    incoming: Arc<dyn std::any::Any + Send + Sync>,
) -> Result<Response, Failure> {
    let rx = incoming
        .downcast_ref::<Mutex<Option<mpsc::Receiver<Piece>>>>()
        .and_then(|rx| rx.lock().unwrap_or_else(|e| e.into_inner()).take());
    let protocol = |reason: String| Failure::Error(Error::Protocol { reason });
    let Some(mut rx) = rx else {
        return Err(protocol("a chunked answer read twice".into()));
    };
    let mut route = RouteGuard {
        client,
        id,
        receiving: true,
        cancel_to: Some(None),
    };
    let first = match rx.recv().await {
        Some(piece) => piece?,
        None => return Err(protocol("a chunked answer without its chunks".into())),
    };
    let instance = first.instance.clone();
    route.cancel_to = Some(instance.as_deref().map(Arc::from));
    let limit = client.options.max_response_size;
    if first.header.total > limit as u64 {
        return Err(Failure::Error(Error::TooLarge {
            message: format!(
                "the answer has {} bytes; this client accepts at most {limit} (ClientOptions::max_response_size)",
                first.header.total
            ),
        }));
    }
    let grant_topic = match &first.grant_topic {
        Some(topic) if topic::is_publishable(topic) => topic.clone(),
        _ => {
            return Err(protocol(
                "a chunked answer without a usable Response Topic for its grants".into(),
            ))
        }
    };
    let (status, content_type) = (first.status.clone(), first.content_type.clone());
    let mut assembly = Assembly::new(&first.header, client.options.chunking.get_window());
    let mut next = Some(first);
    loop {
        let chunk = match next.take() {
            Some(chunk) => chunk,
            None => match rx.recv().await {
                Some(piece) => piece?,
                None => {
                    return Err(protocol(
                        "the server sent more chunks than it was granted".into(),
                    ))
                }
            },
        };
        match assembly
            .accept(&chunk.header, chunk.payload)
            .map_err(protocol)?
        {
            Progress::Kept | Progress::Duplicate => {}
            Progress::Grant(n) => send_grant(client, id, &grant_topic, n),
            Progress::Done(payload) => {
                route.cancel_to = None;
                let mut response =
                    Response::from_parts(status.as_deref(), content_type.as_deref(), payload)
                        .map_err(Failure::Error)?;
                response.instance = instance;
                return Ok(response);
            }
        }
    }
}

/// A grant to the server sending an answer (PROTOCOL.md: a credit message
/// with `mqrpc-chunk-grant`).
fn send_grant(client: &Client, id: u64, grant_topic: &str, n: u32) {
    let properties = PublishProperties {
        correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
        user_properties: vec![
            (
                CANCEL_RESPONSE_TOPIC_PROPERTY.to_string(),
                client.caller.reply_topic.clone(),
            ),
            (CHUNK_GRANT_PROPERTY.to_string(), n.to_string()),
        ],
        ..PublishProperties::default()
    };
    drop(client.conn.publish(
        grant_topic.to_string(),
        QoS::AtLeastOnce,
        Bytes::new(),
        properties,
        false,
    ));
}

/// Chunked calls ([`Chunking`], PROTOCOL.md "Chunked transfer").
impl ClientOptions {
    /// How requests too large for one message travel: their chunk size,
    /// and the window this client grants a server sending it an answer in
    /// chunks (default [`Chunking::default`]: 1 MiB chunks, 8 at a time).
    /// The call's timeout covers the whole transfer.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{Chunking, ClientOptions};
    /// let opts = ClientOptions::default()
    ///     .chunking(Chunking::default().size(128 << 10))
    ///     .max_response_size(256 << 20);
    /// assert_eq!(opts.get_chunking().get_size(), 128 << 10);
    /// assert_eq!(opts.get_max_response_size(), 256 << 20);
    /// ```
    pub fn chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = chunking;
        self
    }

    /// Largest answer this client takes (default 16 MiB): a larger one
    /// ends the call with [`Error::TooLarge`] after its first chunk.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.max_response_size = bytes;
        self
    }

    /// The [`chunking`](Self::chunking) settings.
    pub fn get_chunking(&self) -> Chunking {
        self.chunking
    }

    /// The [`max_response_size`](Self::max_response_size).
    pub fn get_max_response_size(&self) -> usize {
        self.max_response_size
    }
}

impl Client {
    /// For mqrpc's own tests: the calls of this connection waiting for
    /// answers, and its chunked transfers open (both 0 once every call
    /// ended, however it ended).
    #[doc(hidden)]
    pub fn pending_counts(&self) -> (usize, usize) {
        (self.caller.lock().len(), self.caller.chunks.len())
    }

    /// For mqrpc's own tests: the calls waiting that are bound to a server
    /// instance (they end when it is gone).
    #[doc(hidden)]
    pub fn bound_calls(&self) -> usize {
        self.caller
            .lock()
            .values()
            .filter(|p| p.instance.is_some())
            .count()
    }
}
