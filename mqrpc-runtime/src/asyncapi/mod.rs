//! [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! documents of services, from the server's point of view.
//!
//! `#[mqrpc::service]` gives every server type an associated function
//! `asyncapi(&AsyncApiOptions) -> Value` that describes the service as it
//! runs: one channel per method (`<prefix>/<service>/<method>`), a
//! `receive` operation per method with its AsyncAPI `reply`, MQTT bindings
//! (QoS, Content Type, Correlation Data, Response Topic), the `mqrpc-status`
//! user property, one-way and streaming methods, the cancel topic, and a
//! JSON Schema for every argument and result. The document follows
//! `PROTOCOL.md`; `tests/asyncapi.rs` validates it with the official
//! AsyncAPI parser.
//!
//! Schemas: the macro knows the types as written. Primitives and std
//! containers (integers with their bounds, floats, `bool`, `char`, strings,
//! `Vec`, arrays, sets, maps, `Option`, `Result`, tuples, `()`, `Box`, ...)
//! get a structural schema; any other type gets a placeholder titled with
//! its name, unless the `schemars` feature is on and it implements
//! `schemars::JsonSchema`: then its full schema goes to
//! `components/schemas`. No `JsonSchema` bound is ever required.
//!
//! ```
//! # use mqrpc_runtime as mqrpc;
//! use mqrpc::asyncapi::AsyncApiOptions;
//! let options = AsyncApiOptions::new()
//!     .title("Calculator API")
//!     .version("1.2.0")
//!     .prefix("acme/prod")
//!     .broker("mqtt://broker.example:1883")
//!     .unwrap();
//! assert_eq!(options.get_prefix(), "acme/prod");
//! ```

use crate::connection::{host_and_port, Scheme};
use crate::protocol::DEFAULT_PREFIX;
use crate::{Codec, ConnectOptions, Error};

/// A JSON value: what `asyncapi()` returns (`serde_json::Value`).
pub use serde_json::Value;

/// The AsyncAPI version of the documents (their `asyncapi` field).
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// assert_eq!(mqrpc::asyncapi::ASYNCAPI_VERSION, "3.0.0");
/// ```
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// Version of the AsyncAPI MQTT bindings the documents use (their
/// `bindingVersion`).
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// assert_eq!(mqrpc::asyncapi::MQTT_BINDING_VERSION, "0.2.0");
/// ```
pub const MQTT_BINDING_VERSION: &str = "0.2.0";

/// What a generated document says beyond the trait: title, version, broker,
/// topic prefix and content types.
///
/// Defaults: the service's name as title, the version of the crate that
/// defines the trait, no server entry, prefix `mqrpc`, and both content
/// types (JSON first, so it is the document's `defaultContentType`).
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::asyncapi::AsyncApiOptions;
/// use mqrpc::Codec;
/// let options = AsyncApiOptions::default().codecs([Codec::Json]);
/// assert_eq!(options.get_prefix(), "mqrpc");
/// assert_eq!(options.get_codecs(), &[Codec::Json]);
/// ```
#[derive(Debug, Clone)]
pub struct AsyncApiOptions {
    title: Option<String>,
    version: Option<String>,
    description: Option<String>,
    /// `(host[:port], protocol)`.
    broker: Option<(String, &'static str)>,
    prefix: String,
    codecs: Vec<Codec>,
}

impl Default for AsyncApiOptions {
    fn default() -> Self {
        AsyncApiOptions {
            title: None,
            version: None,
            description: None,
            broker: None,
            prefix: DEFAULT_PREFIX.to_string(),
            codecs: vec![Codec::Json, Codec::Postcard],
        }
    }
}

impl AsyncApiOptions {
    /// The defaults (see the type's documentation).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let options = mqrpc::asyncapi::AsyncApiOptions::new();
    /// assert_eq!(options.get_prefix(), "mqrpc");
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// `info.title` (default: the service's wire name).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let options = mqrpc::asyncapi::AsyncApiOptions::new().title("Billing");
    /// # let _ = options;
    /// ```
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// `info.version` (default: `CARGO_PKG_VERSION` of the crate that
    /// defines the trait, the version `_info` reports).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let options = mqrpc::asyncapi::AsyncApiOptions::new().version("2.0.0");
    /// # let _ = options;
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Text put before the generated `info.description` (Markdown).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let options = mqrpc::asyncapi::AsyncApiOptions::new()
    ///     .description("Owned by the billing team.");
    /// # let _ = options;
    /// ```
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The broker, as in `MQRPC_BROKER` (`mqtt://host[:port]`, or
    /// `mqtts://` for protocol `secure-mqtt`): becomes the document's one
    /// server entry. Credentials, the client id and TLS files in the URL
    /// are left out of the document. Describing a TLS broker needs no `tls`
    /// feature.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::asyncapi::AsyncApiOptions;
    /// assert!(AsyncApiOptions::new().broker("mqtt://user:secret@10.0.0.5").is_ok());
    /// assert!(AsyncApiOptions::new().broker("mqtts://broker.example.com").is_ok());
    /// assert!(AsyncApiOptions::new().broker("http://10.0.0.5").is_err());
    /// ```
    pub fn broker(mut self, url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let scheme = Scheme::parse(parsed.scheme())
            .filter(|scheme| !scheme.is_websocket())
            .ok_or_else(|| invalid("the scheme must be mqtt:// or mqtts://"))?;
        let protocol = if scheme.is_tls() {
            "secure-mqtt"
        } else {
            "mqtt"
        };
        let (host, port) = host_and_port(&parsed, scheme).ok_or_else(|| invalid("no host"))?;
        self.broker = Some((ConnectOptions::new(host, port).broker_address(), protocol));
        Ok(self)
    }

    /// The topic prefix the servers use (`ServerOptions::prefix`; default
    /// `mqrpc`).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let options = mqrpc::asyncapi::AsyncApiOptions::new().prefix("tenant-a");
    /// assert_eq!(options.get_prefix(), "tenant-a");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The content types to document, one message per content type and
    /// direction (default: JSON and postcard). The first one is the
    /// document's `defaultContentType`. An empty list keeps the default.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{asyncapi::AsyncApiOptions, Codec};
    /// let options = AsyncApiOptions::new().codecs([Codec::Postcard]);
    /// assert_eq!(options.get_codecs(), &[Codec::Postcard]);
    /// ```
    pub fn codecs(mut self, codecs: impl IntoIterator<Item = Codec>) -> Self {
        let mut chosen: Vec<Codec> = Vec::new();
        for codec in codecs {
            if !chosen.contains(&codec) {
                chosen.push(codec);
            }
        }
        if !chosen.is_empty() {
            self.codecs = chosen;
        }
        self
    }

    /// The topic prefix.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// assert_eq!(mqrpc::asyncapi::AsyncApiOptions::new().get_prefix(), "mqrpc");
    /// ```
    pub fn get_prefix(&self) -> &str {
        &self.prefix
    }

    /// The documented content types, in order.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{asyncapi::AsyncApiOptions, Codec};
    /// assert_eq!(AsyncApiOptions::new().get_codecs(), &[Codec::Json, Codec::Postcard]);
    /// ```
    pub fn get_codecs(&self) -> &[Codec] {
        &self.codecs
    }
}

/// `value` as indented JSON, e.g. to write an `asyncapi.json` file.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::asyncapi::{to_json_pretty, Value};
/// let text = to_json_pretty(&Value::Bool(true));
/// assert_eq!(text, "true");
/// ```
pub fn to_json_pretty(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are strings.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

mod builder;
pub(crate) mod codegen;
mod messages;
mod model;
