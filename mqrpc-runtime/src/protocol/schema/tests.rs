//! The canonical text of each kind of type, the fallbacks, and the
//! fingerprints pinned to literal values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::codegen::{Probe, ViaDeserialize as _, ViaWritten as _};
use super::{fingerprint, method_text, type_text};

fn text<T: serde::de::DeserializeOwned>() -> String {
    type_text::<T>().expect("traceable")
}

#[test]
fn primitives_and_std_containers() {
    assert_eq!(text::<bool>(), "bool");
    assert_eq!(text::<i8>(), "i8");
    assert_eq!(text::<u128>(), "u128");
    assert_eq!(text::<f32>(), "f32");
    assert_eq!(text::<char>(), "char");
    assert_eq!(text::<String>(), "string");
    assert_eq!(text::<()>(), "unit");
    assert_eq!(text::<Option<u8>>(), "option<u8>");
    assert_eq!(text::<Vec<String>>(), "seq<string>");
    assert_eq!(text::<HashSet<u16>>(), "seq<u16>");
    assert_eq!(text::<HashMap<String, Vec<u8>>>(), "map<string, seq<u8>>");
    assert_eq!(text::<BTreeMap<u8, ()>>(), "map<u8, unit>");
    assert_eq!(text::<Box<i64>>(), "i64");
    assert_eq!(text::<(u8, String)>(), "(u8, string)");
    // A tuple and an array are the same bytes: one text.
    assert_eq!(text::<(u8, u8, u8)>(), "[u8; 3]");
    assert_eq!(text::<[u32; 4]>(), "[u32; 4]");
    assert_eq!(text::<[u8; 0]>(), "()");
    assert_eq!(text::<Duration>(), "{secs: u64, nanos: u32}");
    assert_eq!(text::<NonZeroU32>(), "u32");
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Point {
    x: i32,
    #[serde(rename = "why")]
    y: i32,
    #[serde(skip)]
    cache: u64,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Meters(f64);

#[derive(Deserialize)]
struct Marker;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Pair(u8, String);

#[test]
fn structs_newtypes_and_unit_structs() {
    assert_eq!(text::<Point>(), "{x: i32, why: i32}");
    // Neither a newtype nor a unit struct shows on the wire.
    assert_eq!(text::<Meters>(), "f64");
    assert_eq!(text::<Marker>(), "unit");
    assert_eq!(text::<Pair>(), "(u8, string)");
}

#[derive(Deserialize, PartialEq, Eq, Hash)]
#[allow(dead_code)]
enum Status {
    Active,
    Suspended(String),
    Moved(u8, u8),
    Closed { at: u64, reason: Option<String> },
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Account {
    id: u64,
    status: Status,
    history: Vec<Status>,
    flags: HashMap<Status, bool>,
}

#[test]
fn every_variant_of_nested_enums_is_traced() {
    let status =
        "enum{Active, Suspended(string), Moved(u8, u8), Closed{at: u64, reason: option<string>}}";
    assert_eq!(text::<Status>(), status);
    assert_eq!(
        text::<Account>(),
        format!(
            "{{id: u64, status: {status}, history: seq<{status}>, flags: map<{status}, bool>}}"
        )
    );
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Inner {
    A,
    B(u8),
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Outer {
    Plain,
    Deep(Option<Inner>),
}

#[test]
fn enums_reached_through_one_variant_are_complete() {
    assert_eq!(text::<Outer>(), "enum{Plain, Deep(option<enum{A, B(u8)}>)}");
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Node {
    value: u64,
    next: Option<Box<Node>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum Expr {
    // The first variant recurses: the tracer still finds a way out.
    Add(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Lit(i64),
    Let { name: String, body: Vec<Stmt> },
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Stmt {
    expr: Expr,
}

#[test]
fn recursive_types_are_closed_by_back_references() {
    assert_eq!(text::<Node>(), "{value: u64, next: option<^1>}");
    assert_eq!(
        text::<Expr>(),
        "enum{Add(^1, ^1), Neg(^1), Lit(i64), Let{name: string, body: seq<{expr: ^2}>}}"
    );
    assert_eq!(
        text::<Stmt>(),
        "{expr: enum{Add(^1, ^1), Neg(^1), Lit(i64), Let{name: string, body: seq<^2>}}}"
    );
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Wrapper<T> {
    inner: T,
}

#[test]
fn generic_instances_are_told_apart() {
    assert_eq!(
        text::<(Wrapper<u8>, Wrapper<String>)>(),
        "({inner: u8}, {inner: string})"
    );
    assert_eq!(text::<Wrapper<Wrapper<u16>>>(), "{inner: {inner: u16}}");
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Loose {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(tag = "kind")]
#[allow(dead_code)]
enum Tagged {
    A { x: u8 },
}

/// Rejects every value, as a validating impl may reject the placeholders.
struct Picky;

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Err(serde::de::Error::custom(format!(
            "not a picky value: {text:?}"
        )))
    }
}

/// Panics in its impl.
struct Panicky;

impl<'de> Deserialize<'de> for Panicky {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("Panicky cannot be deserialized")
    }
}

#[derive(Deserialize)]
enum Never {}

/// `Vec<Vec<..<u8>..>>`, one `Vec` per token.
macro_rules! nested {
    () => { u8 };
    ($first:tt $($rest:tt)*) => { Vec<nested!($($rest)*)> };
}

/// 100 levels: deeper than the tracer goes.
type TooDeep = nested!(
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9
);

#[test]
#[allow(clippy::needless_borrow)] // the autoref probe, as generated code writes it
fn untraceable_types_fall_back_to_their_text() {
    assert_eq!(type_text::<Loose>(), None);
    assert_eq!(type_text::<Tagged>(), None);
    assert_eq!(type_text::<serde_json::Value>(), None);
    assert_eq!(type_text::<Picky>(), None);
    assert_eq!(type_text::<Panicky>(), None);
    assert_eq!(type_text::<Never>(), None);
    assert_eq!(type_text::<TooDeep>(), None);
    assert_eq!(text::<nested!(0 1 2)>(), "seq<seq<seq<u8>>>");
    // A fallback inside a struct makes the whole type fall back.
    assert_eq!(type_text::<Wrapper<Loose>>(), None);
    // What generated code writes then: the text as written.
    assert_eq!((&&Probe::<Loose>::new()).text("my::Loose"), "`my::Loose`");
    // And for a type without `Deserialize` at all.
    struct Opaque;
    assert_eq!((&&Probe::<Opaque>::new()).text("Opaque"), "`Opaque`");
    assert_eq!(
        (&&Probe::<Point>::new()).text("Point"),
        "{x: i32, why: i32}"
    );
}

/// Version 1 and version 2 of one type, in ways postcard alone would
/// decode without noticing (or with a confusing error).
mod v1 {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    pub struct Charge {
        pub customer_id: u64,
        pub line: Line,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    pub struct Line {
        pub amount: Vec<(String, u32)>,
    }
}

mod v2 {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    pub struct Charge {
        pub customer_id: u64,
        pub line: Line,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    pub struct Line {
        pub amount: Vec<(String, i32)>,
    }
}

#[test]
fn a_change_deep_inside_changes_the_text() {
    assert_eq!(
        text::<v1::Charge>(),
        "{customer_id: u64, line: {amount: seq<(string, u32)>}}"
    );
    assert_ne!(text::<v1::Charge>(), text::<v2::Charge>());
}

/// The worked example of PROTOCOL.md ("Schema fingerprints").
mod example {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    pub struct ChargeRequest {
        pub customer_id: u64,
        pub amount: i64,
        pub coupon: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    pub enum ChargeError {
        Declined { reason: String },
        Unknown,
    }
}

#[test]
fn the_documented_example_and_pinned_fingerprints() {
    let args = [
        ("request", text::<example::ChargeRequest>()),
        ("tags", text::<Vec<String>>()),
    ];
    let output = super::codegen::result(text::<u64>(), text::<example::ChargeError>());
    let method = method_text("charge", &args, &output);
    assert_eq!(
        method,
        "charge(request: {customer_id: u64, amount: i64, coupon: option<string>}, tags: seq<string>) \
         -> result<u64, enum{Declined{reason: string}, Unknown}>"
    );
    assert_eq!(fingerprint(&method), "00bf1cf8e6c7ff8b");
    // A fixed type, pinned: the fingerprint must never change across
    // builds, platforms or releases without a protocol change.
    let account = method_text("open", &[("account", text::<Account>())], "unit");
    assert_eq!(fingerprint(&account), PINNED_ACCOUNT);
}

/// FNV-1a 64 of `open(account: {id: u64, status: enum{..}, ..}) -> unit`.
const PINNED_ACCOUNT: &str = "664f3b1a5e277b9a";
