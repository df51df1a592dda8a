//! # mqrpc: typed RPC over MQTT v5
//!
//! Write a trait in a crate shared by two services, put
//! [`#[mqrpc::service]`](macro@service) on it, and get a typed client and a
//! server dispatcher. Calls are checked by the compiler; on the wire they are
//! plain MQTT v5 request/response (Response Topic + Correlation Data), so
//! they work through any MQTT v5 broker.
//!
//! ```
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! pub enum MathError { DivideByZero }
//!
//! #[mqrpc::service]
//! pub trait Calculator {
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError>;
//! }
//!
//! struct Calc;
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 { a + b }
//!     async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError> {
//!         if b == 0.0 { Err(MathError::DivideByZero) } else { Ok(a / b) }
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), mqrpc::Error> {
//! // MQRPC_BROKER=mqtt://host:port, or an embedded broker when unset.
//! let conn = mqrpc::Connection::from_env_or_embedded().await?;
//! let _server = CalculatorServer::new(Calc).serve(&conn).await?;
//! let calc = CalculatorClient::new(&conn).await?;
//!
//! assert_eq!(calc.add(2, 3).await?, 5);
//! assert_eq!(calc.divide(1.0, 0.0).await?, Err(MathError::DivideByZero));
//! # Ok(()) }
//! ```
//!
//! The wire protocol, enough to call or serve from any MQTT v5 client, is in
//! `PROTOCOL.md` at the repository root; every server type also describes
//! its service as an [AsyncAPI 3.0](asyncapi) document.
//!
//! # Features
//!
//! The default build is lean: what a service in production needs, with no
//! broker linked in (73 crates in `cargo tree`). Everything else is opt-in.
//!
//! | feature | default | what |
//! |---|---|---|
//! | `embedded-broker` | off | `EmbeddedBroker` and `Connection::from_env_or_embedded`: a real MQTT v5 broker in-process, for a quickstart or tests with nothing installed (158 crates with it: `mqtt5`, rustls, ring) |
//! | `tls` | off | `mqtts://` brokers: rustls (ring), system roots or a CA file, client certificates |
//! | `websocket` | off | `ws://` (and, with `tls`, `wss://`) brokers: MQTT over WebSocket |
//! | `opentelemetry` | off | W3C `traceparent`/`tracestate` between client and server spans, through `tracing-opentelemetry` |
//! | `metrics` | off | per-method call counters and latency histograms through the `metrics` facade |
//! | `schemars` | off | AsyncAPI documents carry the full JSON schema of argument and result types that implement `schemars::JsonSchema` (schemars 1.x); other types keep the structural schema. Nothing requires the trait |

#![warn(missing_docs)]

// The README's quickstart runs as a doctest, so it cannot rot.
#[cfg(all(doctest, feature = "embedded-broker"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Turns a trait into a typed MQTT v5 service: a client stub and a server
/// dispatcher.
///
/// # What you write
///
/// A trait of `async fn` methods taking `&self` and arguments by value.
/// Argument and return types must be `serde::Serialize +
/// serde::de::DeserializeOwned` (derive both). A return type of the form
/// `Result<T, E>` is a *fallible* method: `E` is your typed error and
/// travels as itself.
///
/// # What you get, for `trait Calculator`
///
/// | item | what it is |
/// |---|---|
/// | `trait Calculator` | your trait, its methods rewritten to `fn ..(&self, ..) -> impl Future<Output = T> + Send`; implement them with plain `async fn` |
/// | `CalculatorClient` | `Clone + Send + Sync`; `new(&conn)`, `with_options(&conn, ClientOptions)`, `with_timeout(Duration)`, `to_instance(id)`, `client()`, and one `async fn` per method |
/// | `CalculatorBroadcast` | from `client.broadcast(max_answers)`: the same methods, each calling every server at once and returning [`Answers`], a stream of `(instance, outcome)` |
/// | `CalculatorServer<S>` | `new(impl)`, then `serve(&conn)` or `serve_with(&conn, ServerOptions)`, returning a [`ServerHandle`] |
/// | `CalculatorServer::asyncapi(&AsyncApiOptions)` | the service's [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0) document, see [`asyncapi`] |
///
/// Client methods take the same arguments as the trait and return the
/// declared type wrapped in the framework result:
///
/// | declared | client returns |
/// |---|---|
/// | `-> i64` | `Result<i64, mqrpc::Error>` |
/// | `-> Result<f64, MathError>` | `Result<Result<f64, MathError>, mqrpc::Error>` |
/// | no return type | `Result<(), mqrpc::Error>` |
/// | `-> mqrpc::Stream<u64>` (server streaming) | `Result<mqrpc::Items<u64>, mqrpc::Error>`, a stream of `Result<u64, mqrpc::Error>`; the server returns `mqrpc::Stream::new(stream)` or `mqrpc::Stream::iter(items)` |
///
/// The outer `Err` is always the framework ([`Error::Timeout`],
/// [`Error::UnknownMethod`], ...); the inner one is always yours, decoded as
/// `MathError`, never as a string.
///
/// # Topics
///
/// Requests go to `<prefix>/<service>/<method>`; the default prefix is
/// `mqrpc` (see [`ClientOptions::prefix`], [`ServerOptions::prefix`]), the
/// service name is the trait's name and the method name is the Rust name.
/// The server subscribes to `<prefix>/<service>/+`.
///
/// # Attributes
///
/// | attribute | where | default | effect |
/// |---|---|---|---|
/// | `#[mqrpc::service(name = "calc")]` | trait | the trait's name | service level of the topic |
/// | `#[mqrpc::service(crate = "::my_mqrpc")]` | trait | `::mqrpc` | the path generated code uses to reach mqrpc: a renamed dependency (`my_mqrpc = { package = "mqrpc", .. }`) or a re-export. Nothing else needs to be in scope, not even `serde` |
/// | `#[mqrpc(name = "sum")]` | method | the method's name | method level of the topic |
/// | `#[mqrpc(qos = 0)]` | method | the client's QoS ([`ClientOptions::qos`], default 1) | MQTT QoS (0, 1 or 2) of this method's requests; wins over the client's |
/// | `#[mqrpc(idempotent)]` | method | off | running the method twice does no harm: a server that cannot tell whether an earlier attempt of a retried call ran ([`ClientOptions::retry`]) runs it anyway instead of answering [`Error::RetryRefused`] (PROTOCOL.md, "Retries"). Not with `oneway` |
/// | `#[mqrpc(oneway)]` | method | off | fire and forget: the request has no Response Topic, the server runs the method and sends nothing back; the client method returns `Result<(), mqrpc::Error>` once the broker has the request (its PUBACK at QoS 1, PUBCOMP at QoS 2, the socket write at QoS 0; [`Error::NoResponder`] when the broker reports no subscriber). The method must not declare a return type |
///
/// Method and service names starting with `_` are reserved for mqrpc's own
/// topics (e.g. `_cancel`).
///
/// # AsyncAPI
///
/// `CalculatorServer::asyncapi(&options)` returns the service's AsyncAPI
/// 3.0 document (see [`asyncapi`]): a channel per method at its topic, the
/// request and reply messages of each content type, MQTT bindings and a
/// JSON schema per argument and result, taken from the doc comments and
/// types of the trait.
///
/// ```
/// use mqrpc::asyncapi::AsyncApiOptions;
///
/// #[mqrpc::service]
/// pub trait Calculator {
///     /// Adds two numbers.
///     async fn add(&self, a: i64, b: i64) -> i64;
///     #[mqrpc(oneway)]
///     async fn reset(&self);
/// }
///
/// let doc = CalculatorServer::asyncapi(&AsyncApiOptions::new().prefix("acme"));
/// assert_eq!(doc["asyncapi"], "3.0.0");
/// assert_eq!(doc["channels"]["add"]["address"], "acme/Calculator/add");
/// assert_eq!(doc["operations"]["add"]["summary"], "Adds two numbers.");
/// assert!(doc["operations"]["reset"].get("reply").is_none()); // one-way
/// let args = &doc["channels"]["add"]["messages"]["request_json"]["payload"]["oneOf"][0];
/// assert_eq!(args["properties"]["a"]["type"], "integer");
/// ```
///
/// Anything else is a compile error, as are non-`async` methods, generics,
/// `&mut self` or a missing `&self`, by-reference arguments, `impl Trait`,
/// default bodies, two methods with one wire name, and method names that
/// clash with the client's own (`new`, `with_options`, `from_client`,
/// `with_timeout`, `to_instance`, `broadcast`, `client`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// #[mqrpc::service(name = "greeter")]
/// pub trait Greeter {
///     /// Says hello.
///     async fn hello(&self, name: String) -> String;
///     #[mqrpc(name = "slow-hello")]
///     async fn slow_hello(&self, name: String) -> String;
/// }
///
/// struct English;
/// impl Greeter for English {
///     async fn hello(&self, name: String) -> String { format!("Hello, {name}!") }
///     async fn slow_hello(&self, name: String) -> String {
///         tokio::time::sleep(Duration::from_secs(5)).await;
///         format!("Hello, {name}...")
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// let conn = mqrpc::Connection::from_env_or_embedded().await?;
/// let server = GreeterServer::new(English).serve(&conn).await?;
/// assert_eq!(server.topic_filter(), "$share/mqrpc/mqrpc/greeter/+");
///
/// let greeter = GreeterClient::new(&conn).await?;
/// assert_eq!(greeter.hello("Ada".into()).await?, "Hello, Ada!");
///
/// // Per-call timeout:
/// let err = greeter
///     .with_timeout(Duration::from_millis(100))
///     .slow_hello("Bob".into())
///     .await
///     .unwrap_err();
/// assert!(matches!(err, mqrpc::Error::Timeout { .. }));
/// # Ok(()) }
/// ```
#[doc(inline)]
pub use mqrpc_macros::service;

#[cfg(feature = "embedded-broker")]
#[doc(inline)]
pub use mqrpc_runtime::EmbeddedBroker;
#[doc(inline)]
pub use mqrpc_runtime::{
    asyncapi, context, discover, layers, protocol, respond, serve, Answers, Call, ChunkedUsage,
    Chunking, Client, ClientOptions, Codec, ConnectOptions, Connection, Error, Items, Metadata,
    MethodInfo, MethodStats, PublishCounts, QoS, RawAnswers, Reply, Response, ResponseMetadata,
    RetryPolicy, ServerHandle, ServerOptions, ServerUsage, Service, ServiceInfo, ServiceStats,
    Status, Stream, DEFAULT_TIMEOUT, STREAM_WINDOW,
};

/// Reads the [`Items`] of a streaming call and the [`Answers`] of a
/// broadcast: `while let Some(item) = items.next().await { .. }`.
#[doc(no_inline)]
pub use futures_util::StreamExt;

/// Used by the code `#[mqrpc::service]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use mqrpc_runtime::__private::{asyncapi, schema, upstream};
    pub use serde;
}
