//! A service as `#[mqrpc::service]` describes it to the document builder:
//! its methods, their arguments and answers, and the `schemars`
//! definitions collected on the way.

use serde_json::Value;

use crate::protocol::QoS;

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
