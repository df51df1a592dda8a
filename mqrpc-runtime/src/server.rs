//! The serving side: subscribe to a service's method topics, dispatch each
//! request to the generated [`Service`] implementation, and always answer
//! when the request names a Response Topic.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::Serialize;
use tracing::{debug, warn};

use crate::connection::{Connection, Sink};
use crate::protocol::{Status, DEFAULT_PREFIX, STATUS_PROPERTY, TEXT_CONTENT_TYPE};
use crate::{topic, Codec, Error, QoS};

/// A service the runtime can serve: implemented by the generated
/// `<Trait>Server` type, rarely by hand.
///
/// ```
/// use mqrpc_runtime::{Codec, Reply, Service, Status};
/// struct Echo;
/// impl Service for Echo {
///     const NAME: &'static str = "Echo";
///     const METHODS: &'static [&'static str] = &["echo"];
///     async fn call(&self, method: &str, codec: Codec, payload: &[u8]) -> Reply {
///         match method {
///             "echo" => match codec.decode::<String>(payload) {
///                 Ok(text) => Reply::ok(codec, &text),
///                 Err(e) => Reply::bad_request(e),
///             },
///             other => Reply::unknown_method(other),
///         }
///     }
/// }
/// # let reply = futures_util::FutureExt::now_or_never(Echo.call("nope", Codec::Json, b"")).unwrap();
/// # assert_eq!(reply.status(), Status::UnknownMethod);
/// ```
pub trait Service: Send + Sync + 'static {
    /// Service name: the topic level after the prefix.
    const NAME: &'static str;
    /// Wire names of the methods.
    const METHODS: &'static [&'static str];

    /// Decodes the arguments of `method`, runs it, encodes its outcome.
    fn call(
        &self,
        method: &str,
        codec: Codec,
        payload: &[u8],
    ) -> impl Future<Output = Reply> + Send;
}

/// The outcome of one call, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    status: Status,
    /// `None`: the payload is a UTF-8 message.
    codec: Option<Codec>,
    payload: Vec<u8>,
}

impl Reply {
    /// A successful result.
    pub fn ok<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Reply {
        Self::encoded(Status::Ok, codec, value)
    }

    /// A typed application error (`Err(E)` of a `Result<T, E>` method).
    pub fn app_error<E: Serialize + ?Sized>(codec: Codec, error: &E) -> Reply {
        Self::encoded(Status::Error, codec, error)
    }

    fn encoded<T: Serialize + ?Sized>(status: Status, codec: Codec, value: &T) -> Reply {
        match codec.encode(value) {
            Ok(payload) => Reply {
                status,
                codec: Some(codec),
                payload,
            },
            Err(e) => Reply::failure(Status::Internal, format!("cannot encode the result: {e}")),
        }
    }

    /// A framework failure with a human-readable message.
    pub fn failure(status: Status, message: impl std::fmt::Display) -> Reply {
        Reply {
            status,
            codec: None,
            payload: message.to_string().into_bytes(),
        }
    }

    /// The answer to a method the service does not have.
    pub fn unknown_method(method: &str) -> Reply {
        Self::failure(Status::UnknownMethod, format!("no method `{method}`"))
    }

    /// The answer to arguments that could not be decoded.
    pub fn bad_request(error: Error) -> Reply {
        let message = match error {
            Error::Decode { reason } => format!("cannot decode the arguments: {reason}"),
            other => other.to_string(),
        };
        Self::failure(Status::BadRequest, message)
    }

    /// The status this reply carries.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The encoded payload (or UTF-8 message).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Per-server settings.
///
/// ```
/// use mqrpc_runtime::{ServerOptions, QoS};
/// let opts = ServerOptions::default().prefix("acme/prod").qos(QoS::AtMostOnce);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    prefix: String,
    qos: QoS,
}

impl Default for ServerOptions {
    /// Prefix `mqrpc`, subscription QoS 1.
    fn default() -> Self {
        ServerOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            qos: QoS::AtLeastOnce,
        }
    }
}

impl ServerOptions {
    /// Topic prefix (default `mqrpc`); must match the clients'.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Maximum QoS of the method subscription (default 1).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
}

/// A running server. Dropping it leaves the service running for as long as
/// the connection lives; call [`ServerHandle::stop`] to unsubscribe.
#[derive(Debug)]
#[must_use = "keep the handle to stop the server later; dropping it does not stop serving"]
pub struct ServerHandle {
    conn: Connection,
    route_id: u64,
    filter: String,
}

impl ServerHandle {
    /// The topic filter the server subscribed to, e.g. `mqrpc/Calculator/+`.
    pub fn topic_filter(&self) -> &str {
        &self.filter
    }

    /// Unsubscribes; requests published afterwards are no longer served.
    /// Handlers already running still answer.
    pub async fn stop(self) -> Result<(), Error> {
        self.conn.unsubscribe(self.route_id).await
    }
}

/// Serves `service` on `conn`: subscribes to `<prefix>/<name>/+` and
/// returns once the broker acknowledged the subscription.
pub async fn serve<S: Service>(
    conn: &Connection,
    service: S,
    options: ServerOptions,
) -> Result<ServerHandle, Error> {
    topic::validate_prefix(&options.prefix)?;
    topic::validate_level(S::NAME)?;
    if S::NAME.starts_with('_') {
        return Err(Error::InvalidName {
            name: S::NAME.to_string(),
            reason: "service names starting with `_` are reserved".into(),
        });
    }
    let filter = topic::service_filter(&options.prefix, S::NAME);
    let method_offset = filter.len() - 1; // the method level starts where `+` is
    let service = Arc::new(service);
    let sink: Sink = Arc::new(move |conn, publish| {
        tokio::spawn(handle_request(
            service.clone(),
            conn.clone(),
            method_offset,
            publish,
        ));
    });
    let route_id = conn.subscribe(filter.clone(), options.qos, sink).await?;
    Ok(ServerHandle {
        conn: conn.clone(),
        route_id,
        filter,
    })
}

async fn handle_request<S: Service>(
    service: Arc<S>,
    conn: Connection,
    method_offset: usize,
    mut publish: Publish,
) {
    let properties = publish.properties.take().unwrap_or_default();
    // The route matched `<prefix>/<name>/+`, so the topic is UTF-8 and the
    // method is everything after the offset.
    let method = std::str::from_utf8(&publish.topic)
        .ok()
        .and_then(|topic| topic.get(method_offset..))
        .unwrap_or_default()
        .to_string();
    let reply = match Codec::from_content_type(properties.content_type.as_deref()) {
        Err(Error::Protocol { reason }) | Err(Error::Decode { reason }) => {
            Reply::failure(Status::UnsupportedContentType, reason)
        }
        Err(other) => Reply::failure(Status::UnsupportedContentType, other),
        Ok(codec) => AssertUnwindSafe(service.call(&method, codec, &publish.payload))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                warn!(service = S::NAME, %method, panic = %what, "handler panicked");
                Reply::failure(
                    Status::Internal,
                    format!("the handler of `{method}` panicked: {what}"),
                )
            }),
    };
    let Some(response_topic) = properties.response_topic else {
        debug!(service = S::NAME, %method, "request without Response Topic: not answered");
        return;
    };
    if !topic::is_publishable(&response_topic) {
        warn!(service = S::NAME, %method, %response_topic, "invalid Response Topic: not answered");
        return;
    }
    if properties.correlation_data.is_none() {
        debug!(service = S::NAME, %method, "request without Correlation Data: answering without it");
    }
    let content_type = match reply.codec {
        Some(codec) => codec.content_type(),
        None => TEXT_CONTENT_TYPE,
    };
    let response_properties = PublishProperties {
        correlation_data: properties.correlation_data,
        content_type: Some(content_type.to_string()),
        user_properties: vec![(
            STATUS_PROPERTY.to_string(),
            reply.status.as_str().to_string(),
        )],
        ..PublishProperties::default()
    };
    let qos = QoS::from(publish.qos);
    if let Err(e) = conn
        .publish(response_topic, qos, reply.payload, response_properties)
        .await
    {
        warn!(service = S::NAME, %method, error = %e, "could not send the response");
    }
}
