//! Client middleware: [`tower::Layer`]s around a client's unary calls
//! ([`ClientOptions::layer`](crate::ClientOptions::layer)): each call is a
//! [`ClientCall`] in and a [`Response`] out, so a layer can look at it,
//! change it, time it, limit it or refuse it before it is sent. Retries
//! ([`ClientOptions::retry`](crate::ClientOptions::retry)) run beside, under
//! the layers: a layer sees one call, however many attempts it takes.
//!
//! All calls of a client (and of its clones) go through one stack of
//! layers, as through one tower service; without layers none of this
//! exists.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::util::BoxService;
use tower::{Layer, Service as _, ServiceExt};

use super::{Client, Response};
use crate::{Error, QoS};

/// The error type of layered client services: any error, boxed; an
/// [`Error`] comes back to the caller as itself.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service a client layer wraps: the layers added after it, around
/// the sending of the call.
pub type ClientCallService = BoxService<ClientCall, Response, BoxError>;

/// One outgoing call as a client's layers see it: the method, its encoded
/// arguments, its timeout.
#[derive(Debug, Clone)]
pub struct ClientCall {
    /// The client that sends it (without its layers).
    client: Client,
    method: String,
    qos: QoS,
    schema: Option<&'static str>,
    payload: Vec<u8>,
}

impl ClientCall {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.client.service
    }

    /// The method's wire name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The encoded arguments.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// How long the call waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.client.options.timeout
    }

    /// The metadata the call carries (the client's): a layer may add to it,
    /// e.g. a token.
    pub fn metadata_mut(&mut self) -> &mut crate::Metadata {
        &mut self.client.metadata
    }

    /// Gives the call another timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.client.options.timeout = timeout;
    }
}

/// The answer of a call whose layers failed with `error`.
fn failed(error: BoxError, method: &str, timeout: Duration) -> Error {
    let error = match error.downcast::<Error>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Error::ResourceExhausted {
            message: "the client sheds load: too many calls at once".into(),
        };
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return Error::Timeout {
            method: method.to_string(),
            timeout,
        };
    }
    Error::Unsupported {
        what: format!("a client layer failed the call: {error}"),
    }
}

type Wrap = Arc<dyn Fn(ClientCallService) -> ClientCallService + Send + Sync>;

/// The layers of a client's options, outermost first, and their stack once
/// built (shared by the clones of the client).
#[derive(Clone, Default)]
pub(crate) struct ClientLayers {
    wraps: Vec<Wrap>,
    stack: Arc<OnceLock<Stack>>,
}

impl std::fmt::Debug for ClientLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} layers", self.wraps.len())
    }
}

type Stack = tokio::sync::Mutex<ClientCallService>;

impl ClientLayers {
    pub(crate) fn push<L>(&mut self, layer: L)
    where
        L: Layer<ClientCallService> + Send + Sync + 'static,
        L::Service: tower::Service<ClientCall, Response = Response> + Send + 'static,
        <L::Service as tower::Service<ClientCall>>::Error: Into<BoxError>,
        <L::Service as tower::Service<ClientCall>>::Future: Send + 'static,
    {
        self.wraps.push(Arc::new(move |inner| {
            BoxService::new(layer.layer(inner).map_err(Into::into))
        }));
        // Options with other layers make another stack.
        self.stack = Arc::default();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.wraps.is_empty()
    }

    fn stack(&self) -> &Stack {
        self.stack.get_or_init(|| {
            let inner = BoxService::new(Sender);
            let stack = self
                .wraps
                .iter()
                .rev()
                .fold(inner, |inner, wrap| wrap(inner));
            tokio::sync::Mutex::new(stack)
        })
    }
}

impl Client {
    /// A call of a client with layers or retries: through its layers, if
    /// any, then sent with its retries, if any.
    pub(super) async fn send_extra(
        &self,
        extras: Arc<super::options::Extras>,
        method: &str,
        qos: QoS,
        schema: Option<&'static str>,
        payload: Vec<u8>,
    ) -> Result<Response, Error> {
        if extras.layers.is_empty() {
            let policy = extras.retry.unwrap_or_else(|| super::RetryPolicy::new(1));
            return self
                .send_retrying(method, qos, schema, payload, policy)
                .await;
        }
        // The client the innermost service sends with: without layers.
        let mut client = self.clone();
        client.options.extras = extras.retry.map(|policy| {
            Arc::new(super::options::Extras {
                retry: Some(policy),
                layers: ClientLayers::default(),
            })
        });
        let call = ClientCall {
            client,
            method: method.to_string(),
            qos,
            schema,
            payload,
        };
        let timeout = self.options.timeout;
        let answer = {
            let mut stack = extras.layers.stack().lock().await;
            match stack.ready().await {
                Ok(ready) => ready.call(call),
                Err(error) => return Err(failed(error, method, timeout)),
            }
        };
        answer.await.map_err(|error| failed(error, method, timeout))
    }
}

/// The innermost service: sends the call.
struct Sender;

impl tower::Service<ClientCall> for Sender {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ClientCall) -> Self::Future {
        Box::pin(async move {
            let ClientCall {
                client,
                method,
                qos,
                schema,
                payload,
            } = call;
            client
                .send(&method, Some(qos), schema, payload)
                .await
                .map_err(|error| Box::new(error) as BoxError)
        })
    }
}
