//! Schema fingerprints: what a method's arguments and answers look like on
//! the wire, hashed, so a client and a server built from different versions
//! of a type get `schema-mismatch` instead of a wrong decode.
//!
//! A method's fingerprint is FNV-1a 64, as 16 lowercase hex digits
//! ([`fingerprint`]), of its canonical text
//! `wire_name(arg: T, ..) -> O`, where each `T` is the canonical text of an
//! argument's type ([`type_text`]) and `O` that of the output: `T`,
//! `result<T, E>` for `Result<T, E>`, `stream<T>` for `mqrpc::Stream<T>`,
//! `unit` for none. PROTOCOL.md ("Schema fingerprints") gives the grammar
//! and a worked example, so a peer in another language can match it.
//!
//! # How a type's structure is found
//!
//! By deserializing it, once, from a tracing deserializer of this module:
//! the type's own `serde::Deserialize` impl says what it reads (a struct's
//! field names and their types, an enum's variant names, a sequence, a map,
//! …), recursively; enums are deserialized again until every variant has
//! been seen, and recursive types are closed by back-references. This needs
//! nothing from users beyond the serde derives that their types need to
//! travel anyway. The alternatives were weighed and not taken:
//!
//! - `serde-reflection` traces the same way, but needs each enum that is
//!   nested in another type traced by its own call (the macro cannot name
//!   them), needs recursive enums to start with a non-recursive variant,
//!   and registers containers by their bare name, so `Page<User>` and
//!   `Page<Order>` in one type conflict;
//! - `postcard-schema`, or a derive of mqrpc's own, would ask every user
//!   type (and every type of a third-party crate used in an API) for one
//!   more derive.
//!
//! A type that cannot be traced falls back, deterministically, to its text
//! as written in the trait (whitespace removed, between backquotes):
//! types whose impl asks for `deserialize_any` (`#[serde(untagged)]`,
//! internally or adjacently tagged enums, `serde_json::Value`), impls that
//! reject the tracer's placeholder values (`1` for numbers, `""`, empty
//! bytes), enums with unreachable variants, types nested more than 96
//! levels deep or whose text would exceed 1 MiB. A panic in a user impl is
//! caught and also falls back. Tracing uses no `TypeId`, hasher or address
//! in the text: it is the same on every build and platform.
//!
//! The fingerprints of a service are computed at the first use of any of
//! them and kept in a static: a call only reads it.

mod format;
mod text;
mod trace;

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;

/// The canonical text of `T`'s wire structure (grammar in PROTOCOL.md,
/// "Schema fingerprints"), or `None` when `T` cannot be traced (then a
/// method's fingerprint uses the type's text as written).
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::protocol::schema::type_text;
///
/// #[derive(serde::Deserialize)]
/// struct Charge {
///     customer_id: u64,
///     coupon: Option<String>,
/// }
///
/// #[derive(serde::Deserialize)]
/// enum Tree {
///     Leaf(u8),
///     Node(Vec<Tree>),
/// }
///
/// assert_eq!(type_text::<Charge>().unwrap(), "{customer_id: u64, coupon: option<string>}");
/// assert_eq!(type_text::<Tree>().unwrap(), "enum{Leaf(u8), Node(seq<^1>)}");
/// assert_eq!(type_text::<(u8, u8)>().unwrap(), "[u8; 2]");
/// // Self-describing types cannot be traced.
/// assert_eq!(type_text::<serde_json::Value>(), None);
/// ```
pub fn type_text<T: DeserializeOwned>() -> Option<String> {
    let traced = catch_unwind(AssertUnwindSafe(trace::trace::<T>)).ok()?;
    let (format, registry) = traced.ok()?;
    text::render(&format, &registry).ok()
}

/// FNV-1a 64 of `text`, as 16 lowercase hex digits: the fingerprint of a
/// method's canonical text.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::protocol::schema::fingerprint;
///
/// assert_eq!(fingerprint(""), "cbf29ce484222325");
/// assert_eq!(fingerprint("add(a: i64, b: i64) -> i64"), "bb364c15d84acd2c");
/// ```
pub fn fingerprint(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The canonical text of a method: `wire_name(arg: T, ..) -> output`.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::protocol::schema::method_text;
///
/// let args = [("a", "i64".to_string()), ("b", "i64".to_string())];
/// assert_eq!(method_text("add", &args, "i64"), "add(a: i64, b: i64) -> i64");
/// ```
pub fn method_text(wire_name: &str, args: &[(&str, String)], output: &str) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|(name, text)| format!("{name}: {text}"))
        .collect();
    format!("{wire_name}({}) -> {output}", args.join(", "))
}

/// Used by the code `#[mqrpc::service]` generates: each argument and output
/// type's text, by [`type_text`] if the type is `DeserializeOwned` and can
/// be traced, else as written.
#[doc(hidden)]
pub mod codegen {
    use std::marker::PhantomData;

    use serde::de::DeserializeOwned;

    /// The fingerprints of a service's methods, in declaration order.
    pub type Fingerprints = std::sync::LazyLock<Vec<String>>;

    /// The fingerprint of a method, from its arguments' and output's texts.
    pub fn method(wire_name: &str, args: &[(&str, String)], output: &str) -> String {
        super::fingerprint(&super::method_text(wire_name, args, output))
    }

    /// A type's text as written in the trait, when it cannot be traced.
    pub fn written(text: &str) -> String {
        format!("`{text}`")
    }

    /// `result<T, E>`.
    pub fn result(ok: String, err: String) -> String {
        format!("result<{ok}, {err}>")
    }

    /// `stream<T>`.
    pub fn stream(item: String) -> String {
        format!("stream<{item}>")
    }

    /// Autoref specialization: `(&&Probe::<T>::new()).text(written)` picks
    /// [`ViaDeserialize`] when `T: DeserializeOwned`, [`ViaWritten`] otherwise
    /// (a type without `Deserialize` is then reported once, where the
    /// server decodes it, not here too).
    pub struct Probe<T: ?Sized>(PhantomData<fn() -> Box<T>>);

    impl<T: ?Sized> Probe<T> {
        /// A probe of `T`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Probe(PhantomData)
        }
    }

    /// The traced text of a `DeserializeOwned` type.
    pub trait ViaDeserialize {
        /// The type's canonical text, or `written` between backquotes.
        fn text(&self, written: &str) -> String;
    }

    impl<T: DeserializeOwned> ViaDeserialize for &Probe<T> {
        fn text(&self, text: &str) -> String {
            super::type_text::<T>().unwrap_or_else(|| written(text))
        }
    }

    /// The text as written of any other type.
    pub trait ViaWritten {
        /// `written` between backquotes.
        fn text(&self, written: &str) -> String;
    }

    impl<T: ?Sized> ViaWritten for Probe<T> {
        fn text(&self, text: &str) -> String {
            written(text)
        }
    }
}

#[cfg(test)]
mod tests;
