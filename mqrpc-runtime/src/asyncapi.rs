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
//! use mqrpc_runtime::asyncapi::AsyncApiOptions;
//! let options = AsyncApiOptions::new()
//!     .title("Calculator API")
//!     .version("1.2.0")
//!     .prefix("acme/prod")
//!     .broker("mqtt://broker.example:1883")
//!     .unwrap();
//! assert_eq!(options.get_prefix(), "acme/prod");
//! ```

use serde_json::{json, Map};

use crate::connection::{host_and_port, Scheme};
use crate::protocol::{
    Status, CANCEL_METHOD, CANCEL_RESPONSE_TOPIC_PROPERTY, DEFAULT_PREFIX, INSTANCE_PROPERTY,
    SCHEMA_PARAMETER, SEQ_PROPERTY, STATUS_PROPERTY, TEXT_CONTENT_TYPE, TIMEOUT_PROPERTY,
};
use crate::{topic, Codec, ConnectOptions, Error, QoS};

/// A JSON value: what `asyncapi()` returns (`serde_json::Value`).
pub use serde_json::Value;

/// The AsyncAPI version of the documents (their `asyncapi` field).
///
/// ```
/// assert_eq!(mqrpc_runtime::asyncapi::ASYNCAPI_VERSION, "3.0.0");
/// ```
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// Version of the AsyncAPI MQTT bindings the documents use (their
/// `bindingVersion`).
///
/// ```
/// assert_eq!(mqrpc_runtime::asyncapi::MQTT_BINDING_VERSION, "0.2.0");
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
/// use mqrpc_runtime::asyncapi::AsyncApiOptions;
/// use mqrpc_runtime::Codec;
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
    /// let options = mqrpc_runtime::asyncapi::AsyncApiOptions::new();
    /// assert_eq!(options.get_prefix(), "mqrpc");
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// `info.title` (default: the service's wire name).
    ///
    /// ```
    /// let options = mqrpc_runtime::asyncapi::AsyncApiOptions::new().title("Billing");
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
    /// let options = mqrpc_runtime::asyncapi::AsyncApiOptions::new().version("2.0.0");
    /// # let _ = options;
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Text put before the generated `info.description` (Markdown).
    ///
    /// ```
    /// let options = mqrpc_runtime::asyncapi::AsyncApiOptions::new()
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
    /// use mqrpc_runtime::asyncapi::AsyncApiOptions;
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
    /// let options = mqrpc_runtime::asyncapi::AsyncApiOptions::new().prefix("tenant-a");
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
    /// use mqrpc_runtime::{asyncapi::AsyncApiOptions, Codec};
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
    /// assert_eq!(mqrpc_runtime::asyncapi::AsyncApiOptions::new().get_prefix(), "mqrpc");
    /// ```
    pub fn get_prefix(&self) -> &str {
        &self.prefix
    }

    /// The documented content types, in order.
    ///
    /// ```
    /// use mqrpc_runtime::{asyncapi::AsyncApiOptions, Codec};
    /// assert_eq!(AsyncApiOptions::new().get_codecs(), &[Codec::Json, Codec::Postcard]);
    /// ```
    pub fn get_codecs(&self) -> &[Codec] {
        &self.codecs
    }
}

/// `value` as indented JSON, e.g. to write an `asyncapi.json` file.
///
/// ```
/// use mqrpc_runtime::asyncapi::{to_json_pretty, Value};
/// let text = to_json_pretty(&Value::Bool(true));
/// assert_eq!(text, "true");
/// ```
pub fn to_json_pretty(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are strings.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Used by the code `#[mqrpc::service]` generates: the description of a
/// service, schema helpers and the `schemars` probe. Reached only through
/// `mqrpc::__private` (hidden, not covered by semver).
pub(crate) mod codegen {
    use std::marker::PhantomData;

    use serde_json::{json, Value};

    pub use super::AsyncApiOptions;
    pub use crate::QoS;

    /// Builds the document. Called by the generated `<Trait>Server::asyncapi`.
    pub fn document(service: ServiceDoc, schemas: Schemas, options: &AsyncApiOptions) -> Value {
        super::Builder::new(&service, options).build(service.methods.iter(), schemas)
    }

    /// A service as the macro saw it.
    pub struct ServiceDoc {
        /// Wire name.
        pub name: &'static str,
        /// Doc comment of the trait.
        pub docs: &'static str,
        /// `CARGO_PKG_VERSION` of the defining crate.
        pub version: &'static str,
        /// The methods, in declaration order.
        pub methods: Vec<MethodDoc>,
    }

    /// One method as the macro saw it.
    pub struct MethodDoc {
        /// Wire name.
        pub name: &'static str,
        /// Rust name.
        pub ident: &'static str,
        /// Doc comment.
        pub docs: &'static str,
        /// `#[mqrpc(qos = N)]`.
        pub qos: Option<QoS>,
        /// Schema fingerprint.
        pub fingerprint: &'static str,
        /// Arguments, in declaration order.
        pub args: Vec<ArgDoc>,
        /// What comes back.
        pub output: OutputDoc,
    }

    /// One argument.
    pub struct ArgDoc {
        /// Field name on the wire.
        pub name: &'static str,
        /// Its JSON schema.
        pub schema: Value,
        /// The type is an `Option`: serde takes a missing field as `None`.
        pub optional: bool,
    }

    /// What a method answers.
    pub enum OutputDoc {
        /// `#[mqrpc(oneway)]`: nothing.
        Oneway,
        /// One value (`()` included).
        Value(Value),
        /// `Result<T, E>`: `T` with status `ok`, `E` with status `error`.
        Fallible {
            /// Schema of `T`.
            ok: Value,
            /// Schema of `E`.
            err: Value,
        },
        /// `mqrpc::Stream<T>`: items, then an end marker.
        Stream(Value),
    }

    /// Collects the `schemars` definitions of one document.
    pub struct Schemas {
        #[cfg(feature = "schemars")]
        pub(super) generator: schemars::SchemaGenerator,
    }

    impl Schemas {
        /// A collector for one document.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Schemas {
            Schemas {
                #[cfg(feature = "schemars")]
                generator: schemars::generate::SchemaSettings::draft07()
                    .with(|settings| settings.definitions_path = "/components/schemas".into())
                    .into_generator(),
            }
        }

        /// The named schemas referenced from the document.
        pub(super) fn into_definitions(self) -> serde_json::Map<String, Value> {
            #[cfg(feature = "schemars")]
            {
                let mut generator = self.generator;
                generator.take_definitions(true)
            }
            #[cfg(not(feature = "schemars"))]
            serde_json::Map::new()
        }
    }

    /// Autoref specialization: `(&&Probe::<T>::new()).schema(..)` picks
    /// [`ViaJsonSchema`] when `T: schemars::JsonSchema` (feature `schemars`),
    /// [`ViaFallback`] otherwise.
    pub struct Probe<T: ?Sized>(PhantomData<T>);

    impl<T: ?Sized> Probe<T> {
        /// The probe of `T`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Probe(PhantomData)
        }
    }

    /// The full schema of a `schemars::JsonSchema` type.
    pub trait ViaJsonSchema {
        /// `T`'s schema (a `$ref` into `components/schemas` for named types).
        fn schema(&self, schemas: &mut Schemas, name: &str) -> Value;
    }

    #[cfg(feature = "schemars")]
    impl<T: ?Sized + schemars::JsonSchema> ViaJsonSchema for &Probe<T> {
        fn schema(&self, schemas: &mut Schemas, _name: &str) -> Value {
            let mut schema = schemas.generator.subschema_for::<T>();
            for transform in schemas.generator.transforms_mut() {
                transform.transform(&mut schema);
            }
            schema.to_value()
        }
    }

    /// The placeholder of a type mqrpc knows nothing about.
    pub trait ViaFallback {
        /// A schema titled with the type's name.
        fn schema(&self, schemas: &mut Schemas, name: &str) -> Value;
    }

    impl<T: ?Sized> ViaFallback for Probe<T> {
        fn schema(&self, _schemas: &mut Schemas, name: &str) -> Value {
            json!({
                "title": name,
                "description": format!(
                    "`{name}`: encoded by its serde implementation; no schema is known for it \
                     (enable mqrpc's `schemars` feature and derive `schemars::JsonSchema` on it \
                     for its full schema)."
                ),
            })
        }
    }

    /// An integer type with its bounds.
    pub fn integer(name: &str, min: i128, max: u128) -> Value {
        let mut schema = json!({ "type": "integer", "description": format!("`{name}`") });
        if let (Ok(min), Ok(max)) = (i64::try_from(min), u64::try_from(max)) {
            schema["minimum"] = json!(min);
            schema["maximum"] = json!(max);
        }
        schema
    }

    /// `f32` / `f64`.
    pub fn number(name: &str) -> Value {
        json!({ "type": "number", "description": format!("`{name}` (JSON has no NaN or infinities: serde_json writes them as null)") })
    }

    /// `bool`.
    pub fn boolean() -> Value {
        json!({ "type": "boolean" })
    }

    /// `String`, `str` and the like.
    pub fn string() -> Value {
        json!({ "type": "string" })
    }

    /// `char`: a string of one character.
    pub fn character() -> Value {
        json!({ "type": "string", "minLength": 1, "maxLength": 1, "description": "`char`" })
    }

    /// `()`: `null` in JSON, nothing in postcard.
    pub fn unit() -> Value {
        json!({ "type": "null", "description": "`()`: null in JSON, no bytes in postcard" })
    }

    /// A sequence (`Vec<T>`, slices, `VecDeque`; sets with `unique`).
    pub fn array(items: Value, unique: bool) -> Value {
        let mut schema = json!({ "type": "array", "items": items });
        if unique {
            schema["uniqueItems"] = json!(true);
        }
        schema
    }

    /// `[T; N]`: exactly `len` items (serde writes it as a tuple).
    pub fn fixed_array(items: Value, len: usize) -> Value {
        json!({ "type": "array", "items": items, "minItems": len, "maxItems": len })
    }

    /// A tuple: an array of exactly these items, in order.
    pub fn tuple(items: Vec<Value>) -> Value {
        let len = items.len();
        json!({
            "type": "array",
            "items": items,
            "additionalItems": false,
            "minItems": len,
            "maxItems": len,
        })
    }

    /// `Option<T>`: the value or `null`.
    pub fn option(inner: Value) -> Value {
        json!({ "anyOf": [inner, { "type": "null" }] })
    }

    /// `Result<T, E>` as an argument or inside a type: externally tagged.
    pub fn result(ok: Value, err: Value) -> Value {
        let variant = |tag: &str, schema: Value| {
            json!({
                "type": "object",
                "properties": { tag: schema },
                "required": [tag],
                "additionalProperties": false,
            })
        };
        json!({ "oneOf": [variant("Ok", ok), variant("Err", err)] })
    }

    /// A map: a JSON object. `keys` is `string`, `integer` (JSON writes the
    /// numbers as strings) or anything else (described only).
    pub fn map(keys: &str, values: Value) -> Value {
        let mut schema = json!({ "type": "object", "additionalProperties": values });
        match keys {
            "string" => {}
            "integer" => schema["propertyNames"] = json!({ "pattern": "^-?[0-9]+$" }),
            other => {
                schema["description"] = json!(format!(
                    "keys of type `{other}`: JSON writes them as strings where serde_json can"
                ))
            }
        }
        schema
    }
}

use codegen::{MethodDoc, OutputDoc, Schemas, ServiceDoc};

/// Ids of channels and operations: AsyncAPI wants `[A-Za-z0-9_.-]`, wire
/// names allow more; collisions get a numeric suffix.
#[derive(Default)]
struct Ids(std::collections::HashSet<String>);

impl Ids {
    fn take(&mut self, name: &str) -> String {
        let base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut id = base.clone();
        let mut n = 2;
        while !self.0.insert(id.clone()) {
            id = format!("{base}_{n}");
            n += 1;
        }
        id
    }
}

struct Builder<'a> {
    service: &'a ServiceDoc,
    options: &'a AsyncApiOptions,
    ids: Ids,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    replies: Map<String, Value>,
}

const REPLIES: &str = "_replies";
const FAILURE: &str = "failure";

impl<'a> Builder<'a> {
    fn new(service: &'a ServiceDoc, options: &'a AsyncApiOptions) -> Self {
        let mut ids = Ids::default();
        // Wire names cannot start with `_`, so these never collide with a method.
        ids.take(REPLIES);
        ids.take(CANCEL_METHOD);
        Builder {
            service,
            options,
            ids,
            channels: Map::new(),
            operations: Map::new(),
            replies: Map::new(),
        }
    }

    fn address(&self, method: &str) -> String {
        topic::request_topic(&self.options.prefix, self.service.name, method)
    }

    fn build<'m>(
        mut self,
        methods: impl Iterator<Item = &'m MethodDoc>,
        schemas: Schemas,
    ) -> Value {
        let mut any_reply = false;
        for method in methods {
            any_reply |= !matches!(method.output, OutputDoc::Oneway);
            self.method(method);
        }
        if any_reply {
            self.replies.insert(FAILURE.into(), failure_message());
        }
        self.cancel();
        let Builder {
            service,
            options,
            mut channels,
            operations,
            replies,
            ..
        } = self;
        if !replies.is_empty() {
            channels.insert(
                REPLIES.into(),
                json!({
                    "address": null,
                    "title": "Responses",
                    "description": format!(
                        "Answers go to the request's MQTT v5 Response Topic, whatever it is, with the \
                         request's Correlation Data. mqrpc clients use `{}/_reply/<client id>` (the \
                         reply prefix is the connection's, `mqrpc` by default), or `<Response \
                         Information>/<client id>` when the broker grants Response Information.",
                        DEFAULT_PREFIX
                    ),
                    "messages": replies,
                }),
            );
        }
        let mut doc = json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": info(service, options),
            "defaultContentType": options.codecs[0].content_type(),
            "channels": channels,
            "operations": operations,
        });
        if let Some((host, protocol)) = &options.broker {
            doc["servers"] = json!({
                "broker": {
                    "host": host,
                    "protocol": protocol,
                    "protocolVersion": "5",
                    "description": "MQTT v5 broker (any: requests, responses and shared subscriptions are standard MQTT v5).",
                }
            });
        }
        let mut definitions = schemas.into_definitions();
        if !definitions.is_empty() {
            rename_definitions(&mut definitions, &mut doc);
            doc["components"] = json!({ "schemas": definitions });
        }
        doc
    }

    fn method(&mut self, method: &MethodDoc) {
        let id = self.ids.take(method.name);
        let codecs = self.options.codecs.clone();
        let mut messages = Map::new();
        for &codec in &codecs {
            messages.insert(
                format!("request_{}", codec_id(codec)),
                request_message(method, codec),
            );
        }
        let refs: Vec<Value> = messages
            .keys()
            .map(|key| json!({ "$ref": format!("#/channels/{id}/messages/{key}") }))
            .collect();
        self.channels.insert(
            id.clone(),
            json!({
                "address": self.address(method.name),
                "title": method.name,
                "description": format!(
                    "Requests of `{}`. Servers subscribe `{}/{}/+` (as the shared subscription \
                     `$share/<group>/...`, group `mqrpc` by default); the same method is also \
                     served at `.../{}/_all/{}` (every server) and `.../{}/_to/<instance>/{}` \
                     (one server).",
                    method.name, self.options.prefix, self.service.name,
                    self.service.name, method.name, self.service.name, method.name,
                ),
                "messages": messages,
            }),
        );
        let qos = method.qos.unwrap_or_default();
        let mut operation = json!({
            "action": "receive",
            "channel": { "$ref": format!("#/channels/{id}") },
            "title": method.ident,
            "description": operation_description(method),
            "messages": refs,
            "bindings": { "mqtt": { "qos": qos_number(qos), "bindingVersion": MQTT_BINDING_VERSION } },
            "x-mqrpc-schema": method.fingerprint,
        });
        if let Some(summary) = summary(method.docs) {
            operation["summary"] = json!(summary);
        }
        let mut reply_refs = Vec::new();
        let mut reply = |key: String, message: Value, replies: &mut Map<String, Value>| {
            reply_refs.push(json!({ "$ref": format!("#/channels/{REPLIES}/messages/{key}") }));
            replies.insert(key, message);
        };
        for &codec in &codecs {
            let c = codec_id(codec);
            match &method.output {
                OutputDoc::Oneway => {}
                OutputDoc::Value(schema) => reply(
                    format!("{id}_result_{c}"),
                    value_message(method, codec, schema, ValueKind::Ok),
                    &mut self.replies,
                ),
                OutputDoc::Fallible { ok, err } => {
                    reply(
                        format!("{id}_result_{c}"),
                        value_message(method, codec, ok, ValueKind::Ok),
                        &mut self.replies,
                    );
                    reply(
                        format!("{id}_error_{c}"),
                        value_message(method, codec, err, ValueKind::Error),
                        &mut self.replies,
                    );
                }
                OutputDoc::Stream(item) => reply(
                    format!("{id}_item_{c}"),
                    value_message(method, codec, item, ValueKind::Item),
                    &mut self.replies,
                ),
            }
        }
        if !matches!(method.output, OutputDoc::Oneway) {
            if matches!(method.output, OutputDoc::Stream(_)) {
                reply(format!("{id}_end"), end_message(method), &mut self.replies);
            }
            reply_refs.push(json!({ "$ref": format!("#/channels/{REPLIES}/messages/{FAILURE}") }));
            operation["reply"] = json!({
                "address": {
                    "location": "$message.header#/responseTopic",
                    "description": "The request's MQTT v5 Response Topic property.",
                },
                "channel": { "$ref": format!("#/channels/{REPLIES}") },
                "messages": reply_refs,
            });
        }
        self.operations.insert(id, operation);
    }

    /// The cancel topic every server hears.
    fn cancel(&mut self) {
        let id = CANCEL_METHOD;
        self.channels.insert(
            id.into(),
            json!({
                "address": self.address(CANCEL_METHOD),
                "title": "Cancel",
                "description": "A caller gave up on a call: the server stops its handler, or does not run it if the request comes later.",
                "messages": {
                    "cancel": {
                        "name": "cancel",
                        "title": "Cancel a call",
                        "summary": "Identifies the call by its Response Topic and Correlation Data. Empty payload; never answered.",
                        "headers": headers(
                            json!({
                                CANCEL_RESPONSE_TOPIC_PROPERTY: {
                                    "type": "string",
                                    "description": "The Response Topic of the call to cancel (MQTT user property).",
                                }
                            }),
                            &[CANCEL_RESPONSE_TOPIC_PROPERTY],
                        ),
                        "correlationId": correlation_id(),
                        "bindings": { "mqtt": {
                            "correlationData": correlation_schema(),
                            "bindingVersion": MQTT_BINDING_VERSION,
                        } },
                    }
                },
            }),
        );
        self.operations.insert(
            id.into(),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{id}") },
                "summary": "Cancels a running call.",
                "messages": [{ "$ref": format!("#/channels/{id}/messages/cancel") }],
                "bindings": { "mqtt": { "qos": 0, "bindingVersion": MQTT_BINDING_VERSION } },
            }),
        );
    }
}

fn info(service: &ServiceDoc, options: &AsyncApiOptions) -> Value {
    let mut description = String::new();
    if let Some(text) = &options.description {
        description.push_str(text);
        description.push_str("\n\n");
    }
    if !service.docs.is_empty() {
        description.push_str(service.docs);
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "The `{}` service over MQTT v5, from the server's side, following the mqrpc wire \
         protocol version 1 (`PROTOCOL.md`). Requests go to `{}/{}/<method>` with a Response \
         Topic and Correlation Data; the answer goes to that Response Topic with the same \
         Correlation Data. A request without Response Topic is one-way: it runs, nothing is sent \
         back. The user property `{STATUS_PROPERTY}` gives the outcome of every answer (absent \
         means `ok`). Built-in methods `_ping`, `_info` and `_stats` are served too, and stream \
         credits arrive at `.../_to/<instance>/_credit`; they are not listed here.",
        service.name, options.prefix, service.name
    ));
    json!({
        "title": options.title.as_deref().unwrap_or(service.name),
        "version": options.version.as_deref().unwrap_or(if service.version.is_empty() {
            "0.0.0"
        } else {
            service.version
        }),
        "description": description,
    })
}

/// The first paragraph of a doc comment, on one line.
fn summary(docs: &str) -> Option<String> {
    let first = docs.split("\n\n").next()?.trim();
    (!first.is_empty()).then(|| first.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn operation_description(method: &MethodDoc) -> String {
    let mut text = String::new();
    if !method.docs.is_empty() {
        text.push_str(method.docs);
        text.push_str("\n\n");
    }
    text.push_str(&format!("Rust method `{}`. ", method.ident));
    text.push_str(match method.output {
        OutputDoc::Oneway => {
            "One-way (`#[mqrpc(oneway)]`): requests carry no Response Topic and nothing is sent \
             back. "
        }
        OutputDoc::Value(_) => "Answers once: the value with status `ok`, or a framework failure. ",
        OutputDoc::Fallible { .. } => {
            "Answers once: the `Ok` value with status `ok`, the `Err` value with status `error` \
             (the typed error, in the request's codec), or a framework failure. "
        }
        OutputDoc::Stream(_) => {
            "Server streaming: one answer per item (status absent, `mqrpc-seq` 0, 1, 2, ...), \
             then an end marker (status `end`, `mqrpc-seq` = the number of items, empty \
             payload); a failure ends the stream early. The server sends at most 32 items \
             beyond the credit the caller granted on `.../_to/<instance>/_credit`. "
        }
    });
    text.push_str(&format!(
        "Generated clients send the schema fingerprint `{0}` as the Content Type parameter \
         `{SCHEMA_PARAMETER}={0}`; a server with another fingerprint answers `schema-mismatch`.",
        method.fingerprint
    ));
    text
}

fn codec_id(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "json",
        Codec::Postcard => "postcard",
    }
}

fn codec_title(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "JSON",
        Codec::Postcard => "postcard",
    }
}

fn qos_number(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn correlation_schema() -> Value {
    json!({
        "type": "string",
        "format": "binary",
        "description": "MQTT v5 Correlation Data: opaque bytes chosen by the caller, echoed byte for byte in every answer (mqrpc clients send an 8-byte big-endian counter).",
    })
}

fn correlation_id() -> Value {
    json!({
        "location": "$message.header#/correlationData",
        "description": "The MQTT v5 Correlation Data property.",
    })
}

fn headers(properties: Value, required: &[&str]) -> Value {
    let mut schema = json!({
        "type": "object",
        "description": "MQTT v5 user properties (UTF-8 string pairs).",
        "properties": properties,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn content_type_note(codec: Codec) -> String {
    match codec {
        Codec::Json => format!("Content Type `{}`.", codec.content_type()),
        Codec::Postcard => format!(
            "Content Type `{}`, or none (absent means postcard). postcard is not \
             self-describing: it carries the same serde data model as the JSON schema \
             describes, in the [postcard wire format](https://postcard.jamesmunns.com/wire-format).",
            codec.content_type()
        ),
    }
}

fn request_message(method: &MethodDoc, codec: Codec) -> Value {
    let oneway = matches!(method.output, OutputDoc::Oneway);
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut items = Vec::new();
    for arg in &method.args {
        properties.insert(arg.name.into(), arg.schema.clone());
        if !arg.optional {
            required.push(arg.name);
        }
        items.push(arg.schema.clone());
    }
    let object = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "description": "The arguments by name. Fields of an `Option` type may be left out (then `None`); unknown fields are ignored.",
    });
    let payload = match codec {
        Codec::Json => json!({
            "description": "The arguments, as an object whose fields are the argument names, or as an array of the arguments in declaration order.",
            "oneOf": [object, in_order(items)],
        }),
        Codec::Postcard => {
            let mut object = object;
            // Positional: every field is there (`None` is a 0 byte).
            let all: Vec<&str> = method.args.iter().map(|arg| arg.name).collect();
            object["required"] = json!(all);
            object["description"] = json!(
                "The arguments as one struct: in postcard, the fields concatenated in declaration order (no names). A method without arguments takes an empty payload."
            );
            object
        }
    };
    let mut binding = json!({
        "contentType": codec.content_type(),
        "correlationData": correlation_schema(),
        "bindingVersion": MQTT_BINDING_VERSION,
    });
    let response = if oneway {
        "None: a one-way request carries no Response Topic (one that has one is answered like any other)."
    } else {
        "Where the answer goes; a request without one is one-way and not answered. mqrpc clients use `<reply prefix>/_reply/<client id>`."
    };
    binding["responseTopic"] = json!({ "type": "string", "description": response });
    let mut message = json!({
        "name": format!("{}_request", method.name),
        "title": format!("{} request ({})", method.name, codec_title(codec)),
        "contentType": codec.content_type(),
        "description": format!(
            "{} Generated clients add `; {SCHEMA_PARAMETER}={}`. Message Expiry Interval: the \
             caller's timeout in seconds, rounded up.",
            content_type_note(codec),
            method.fingerprint
        ),
        "headers": headers(
            json!({
                TIMEOUT_PROPERTY: {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "The caller's time budget in milliseconds (decimal). The server's deadline is arrival + min(this, the forwarded Message Expiry Interval).",
                }
            }),
            &[],
        ),
        "payload": payload,
        "bindings": { "mqtt": binding },
    });
    if !oneway {
        message["correlationId"] = correlation_id();
    }
    message
}

/// The arguments as a JSON array, in declaration order.
fn in_order(items: Vec<Value>) -> Value {
    let len = items.len();
    let mut schema = json!({
        "type": "array",
        "description": "The arguments in declaration order.",
        "minItems": len,
        "maxItems": len,
    });
    // AsyncAPI (like draft 07's meta-schema) wants a non-empty `items` array.
    if !items.is_empty() {
        schema["items"] = json!(items);
        schema["additionalItems"] = json!(false);
    }
    schema
}

#[derive(Clone, Copy, PartialEq)]
enum ValueKind {
    Ok,
    Error,
    Item,
}

fn status_header(value: &str, description: &str) -> Value {
    json!({ "type": "string", "const": value, "description": description })
}

fn value_message(method: &MethodDoc, codec: Codec, schema: &Value, kind: ValueKind) -> Value {
    let (name, title, mut props, required): (_, _, Map<String, Value>, &[&str]) = match kind {
        ValueKind::Ok => (
            "result",
            "result",
            [(
                STATUS_PROPERTY.to_string(),
                status_header("ok", "Absent on success (absent means `ok`)."),
            )]
            .into_iter()
            .collect(),
            &[],
        ),
        ValueKind::Error => (
            "error",
            "typed error",
            [(
                STATUS_PROPERTY.to_string(),
                status_header("error", "The method returned `Err`: the payload is the error value."),
            )]
            .into_iter()
            .collect(),
            &[STATUS_PROPERTY],
        ),
        ValueKind::Item => (
            "item",
            "stream item",
            [
                (
                    STATUS_PROPERTY.to_string(),
                    status_header("ok", "Absent on items (absent means `ok`)."),
                ),
                (
                    SEQ_PROPERTY.to_string(),
                    json!({ "type": "string", "pattern": "^[0-9]+$", "description": "The item's position: 0, 1, 2, ..." }),
                ),
            ]
            .into_iter()
            .collect(),
            &[SEQ_PROPERTY, INSTANCE_PROPERTY],
        ),
    };
    props.insert(
        INSTANCE_PROPERTY.to_string(),
        json!({ "type": "string", "description": "The answering server's instance id (on answers to broadcasts and on stream items)." }),
    );
    let mut binding = json!({
        "contentType": codec.content_type(),
        "correlationData": correlation_schema(),
        "bindingVersion": MQTT_BINDING_VERSION,
    });
    if codec == Codec::Postcard {
        binding.as_object_mut().map(|b| b.remove("contentType"));
    }
    json!({
        "name": format!("{}_{name}", method.name),
        "title": format!("{} {title} ({})", method.name, codec_title(codec)),
        "contentType": codec.content_type(),
        "description": format!(
            "{} Sent when the request's Content Type was {}.",
            content_type_note(codec),
            codec.content_type()
        ),
        "headers": headers(Value::Object(props), required),
        "payload": schema,
        "correlationId": correlation_id(),
        "bindings": { "mqtt": binding },
    })
}

fn end_message(method: &MethodDoc) -> Value {
    json!({
        "name": format!("{}_end", method.name),
        "title": format!("{} end of stream", method.name),
        "summary": "No more items follow. Empty payload.",
        "headers": headers(
            json!({
                STATUS_PROPERTY: status_header(Status::End.as_str(), "The end of the stream."),
                SEQ_PROPERTY: { "type": "string", "pattern": "^[0-9]+$", "description": "The number of items sent." },
                INSTANCE_PROPERTY: { "type": "string", "description": "The serving instance." },
            }),
            &[STATUS_PROPERTY, SEQ_PROPERTY],
        ),
        "correlationId": correlation_id(),
        "bindings": { "mqtt": {
            "correlationData": correlation_schema(),
            "bindingVersion": MQTT_BINDING_VERSION,
        } },
    })
}

fn failure_message() -> Value {
    let statuses: Vec<&str> = [
        Status::UnknownMethod,
        Status::BadRequest,
        Status::UnsupportedContentType,
        Status::Internal,
        Status::DeadlineExceeded,
        Status::Overloaded,
        Status::TooLarge,
        Status::SchemaMismatch,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    json!({
        "name": FAILURE,
        "title": "framework failure",
        "summary": "The call failed in the framework, not in the method: unknown method, undecodable arguments, unsupported content type, panic, deadline, overload, size or schema mismatch.",
        "contentType": TEXT_CONTENT_TYPE,
        "headers": headers(
            json!({
                STATUS_PROPERTY: {
                    "type": "string",
                    "enum": statuses,
                    "description": "What went wrong (PROTOCOL.md, Response). Clients treat unknown values as a protocol error.",
                },
                SEQ_PROPERTY: { "type": "string", "pattern": "^[0-9]+$", "description": "On streams: the items sent so far." },
            }),
            &[STATUS_PROPERTY],
        ),
        "payload": { "type": "string", "description": "A UTF-8 message for humans." },
        "correlationId": correlation_id(),
        "bindings": { "mqtt": {
            "contentType": TEXT_CONTENT_TYPE,
            "correlationData": correlation_schema(),
            "bindingVersion": MQTT_BINDING_VERSION,
        } },
    })
}

/// Gives every `components/schemas` key the characters AsyncAPI allows
/// (`[A-Za-z0-9_.-]`) and rewrites the `$ref`s that point at renamed ones.
fn rename_definitions(definitions: &mut Map<String, Value>, doc: &mut Value) {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if definitions.keys().all(|k| k.chars().all(valid)) {
        return;
    }
    let mut ids = Ids::default();
    let mut renamed = std::collections::HashMap::new();
    let old = std::mem::take(definitions);
    for key in old.keys() {
        if key.chars().all(valid) {
            ids.0.insert(key.clone());
        }
    }
    for (key, schema) in old {
        let new = if key.chars().all(valid) {
            key.clone()
        } else {
            ids.take(&key)
        };
        renamed.insert(
            format!("#/components/schemas/{}", encode_pointer(&key)),
            format!("#/components/schemas/{new}"),
        );
        definitions.insert(new, schema);
    }
    fn rewrite(value: &mut Value, renamed: &std::collections::HashMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        Value::String(target) if key == "$ref" => {
                            if let Some(new) = renamed.get(target.as_str()) {
                                *target = new.clone();
                            }
                        }
                        _ => rewrite(child, renamed),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, renamed)),
            _ => {}
        }
    }
    rewrite(doc, &renamed);
    for schema in definitions.values_mut() {
        rewrite(schema, &renamed);
    }
}

/// JSON Pointer escaping of one reference token (RFC 6901).
fn encode_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::codegen::*;
    use super::*;

    fn service(methods: Vec<MethodDoc>) -> ServiceDoc {
        ServiceDoc {
            name: "Calc",
            docs: "A calculator.",
            version: "1.0.0",
            methods,
        }
    }

    fn add() -> MethodDoc {
        MethodDoc {
            name: "add",
            ident: "add",
            docs: "Adds.",
            qos: None,
            fingerprint: "0123456789abcdef",
            args: vec![
                ArgDoc {
                    name: "a",
                    schema: integer("i64", i64::MIN.into(), i64::MAX as u128),
                    optional: false,
                },
                ArgDoc {
                    name: "b",
                    schema: option(integer("u8", 0, 255)),
                    optional: true,
                },
            ],
            output: OutputDoc::Value(integer("i64", i64::MIN.into(), i64::MAX as u128)),
        }
    }

    #[test]
    fn channels_operations_and_replies_reference_each_other() {
        let doc = document(
            service(vec![add()]),
            Schemas::new(),
            &AsyncApiOptions::new(),
        );
        assert_eq!(doc["channels"]["add"]["address"], "mqrpc/Calc/add");
        let op = &doc["operations"]["add"];
        assert_eq!(op["action"], "receive");
        for reference in op["messages"].as_array().unwrap() {
            let pointer = reference["$ref"].as_str().unwrap().trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{pointer}");
        }
        for reference in op["reply"]["messages"].as_array().unwrap() {
            let pointer = reference["$ref"].as_str().unwrap().trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{pointer}");
        }
        let request = &doc["channels"]["add"]["messages"]["request_json"];
        assert_eq!(request["payload"]["oneOf"][0]["required"], json!(["a"]));
        assert_eq!(request["payload"]["oneOf"][1]["minItems"], 2);
        assert_eq!(doc["defaultContentType"], "application/json");
    }

    #[test]
    fn ids_are_sanitized_and_unique() {
        let mut ids = Ids::default();
        assert_eq!(ids.take("a.b"), "a_b");
        assert_eq!(ids.take("a_b"), "a_b_2");
        assert_eq!(ids.take("stock-levels"), "stock-levels");
    }

    #[test]
    fn oneway_methods_have_no_reply() {
        let mut bump = add();
        bump.name = "bump";
        bump.output = OutputDoc::Oneway;
        let doc = document(service(vec![bump]), Schemas::new(), &AsyncApiOptions::new());
        assert!(doc["operations"]["bump"].get("reply").is_none());
        assert!(doc["channels"].get(REPLIES).is_none());
    }

    #[test]
    fn definitions_get_valid_names_and_refs_follow() {
        let mut definitions = Map::new();
        definitions.insert("Wrapper<u8>".into(), json!({ "type": "object" }));
        let mut doc = json!({ "x": { "$ref": "#/components/schemas/Wrapper<u8>" } });
        rename_definitions(&mut definitions, &mut doc);
        assert!(definitions.contains_key("Wrapper_u8_"));
        assert_eq!(doc["x"]["$ref"], "#/components/schemas/Wrapper_u8_");
    }
}
