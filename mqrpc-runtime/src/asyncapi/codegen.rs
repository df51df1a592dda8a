//! Used by the code `#[mqrpc::service]` generates: the description of a
//! service, schema helpers and the `schemars` probe. Reached only through
//! `mqrpc::__private` (hidden, not covered by semver).
use std::marker::PhantomData;

use serde_json::{json, Value};

pub use super::model::{ArgDoc, MethodDoc, OutputDoc, Schemas, ServiceDoc};
pub use super::AsyncApiOptions;
pub use crate::protocol::QoS;

/// Builds the document. Called by the generated `<Trait>Server::asyncapi`.
pub fn document(service: ServiceDoc, schemas: Schemas, options: &AsyncApiOptions) -> Value {
    super::builder::Builder::new(&service, options).build(service.methods.iter(), schemas)
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
