//! Renders `<Trait>Server::asyncapi`: the service's description for the
//! runtime's AsyncAPI builder, with a JSON schema per argument and result.
//!
//! Schemas are decided here, from the types as written: primitives and std
//! containers become structural schemas; any other type becomes a probe
//! that uses `schemars::JsonSchema` when the runtime has the `schemars`
//! feature and the type implements it (autoref specialization), and a
//! placeholder titled with the type's name otherwise.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::{Attribute, GenericArgument, PathArguments, Type};

use crate::model::{Output, Service};
use crate::render_client::qos_tokens;

pub fn render(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let server = service.server_ident();
    let wire_name = &service.wire_name;
    let service_docs = docs(&service.attrs);
    let client = service.client_ident();
    let methods = service.methods.iter().enumerate().map(|(index, method)| {
        let wire = &method.wire_name;
        let ident = method.ident.to_string();
        let method_docs = docs(&method.attrs);
        let qos = qos_tokens(krate, method.qos);
        // A client stream's items are not in the request (see `upstream`).
        let args = method
            .args
            .iter()
            .filter(|arg| arg.stream.is_none())
            .map(|arg| {
                let name = arg.ident.unraw().to_string();
                let schema = schema(&arg.ty);
                let optional = is_option(&arg.ty);
                quote! {
                    #krate::__private::asyncapi::ArgDoc {
                        name: #name,
                        schema: #schema,
                        optional: #optional,
                    }
                }
            });
        let output = match &method.output {
            Output::Unit if method.oneway => {
                quote!(#krate::__private::asyncapi::OutputDoc::Oneway)
            }
            Output::Unit => {
                quote!(#krate::__private::asyncapi::OutputDoc::Value(
                    #krate::__private::asyncapi::unit()
                ))
            }
            Output::Plain(ty) => {
                let schema = schema(ty);
                quote!(#krate::__private::asyncapi::OutputDoc::Value(#schema))
            }
            Output::Fallible { ok, err, .. } => {
                let (ok, err) = (schema(ok), schema(err));
                quote!(#krate::__private::asyncapi::OutputDoc::Fallible { ok: #ok, err: #err })
            }
            Output::Stream { item, .. } => {
                let item = schema(item);
                quote!(#krate::__private::asyncapi::OutputDoc::Stream(#item))
            }
        };
        quote! {
            __methods.push(#krate::__private::asyncapi::MethodDoc {
                name: #wire,
                ident: #ident,
                docs: #method_docs,
                qos: #qos,
                fingerprint: #client::__mqrpc_schema(#index),
                args: ::std::vec![#(#args),*],
                output: #output,
            });
        }
    });
    let doc = format!(
        "The [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0) document of the \
         `{wire_name}` service, from the server's side: one channel per method at \
         `<prefix>/{wire_name}/<method>`, MQTT bindings, and a JSON schema per argument and result \
         (full ones for types implementing `schemars::JsonSchema` with mqrpc's `schemars` feature). \
         See `mqrpc::asyncapi` for the options; `mqrpc::asyncapi::to_json_pretty` writes it out."
    );
    quote! {
        impl #server<()> {
            #[doc = #doc]
            pub fn asyncapi(
                options: &#krate::asyncapi::AsyncApiOptions,
            ) -> #krate::asyncapi::Value {
                // Schema helpers below name their items through this path.
                use #krate::__private::asyncapi as __mqrpc_asyncapi;
                let mut __schemas = #krate::__private::asyncapi::Schemas::new();
                let mut __methods = ::std::vec::Vec::new();
                #(#methods)*
                #krate::__private::asyncapi::document(
                    #krate::__private::asyncapi::ServiceDoc {
                        name: #wire_name,
                        docs: #service_docs,
                        version: ::core::env!("CARGO_PKG_VERSION"),
                        methods: __methods,
                    },
                    __schemas,
                    options,
                )
            }
        }
    }
}

/// The doc comment (`///` lines) of an item, one line each.
fn docs(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(text),
                        ..
                    }),
                ..
            }) => Some(text.value()),
            _ => None,
        })
        .map(|line| {
            line.strip_prefix(' ')
                .unwrap_or(&line)
                .trim_end()
                .to_string()
        })
        .collect();
    lines.join("\n").trim().to_string()
}

/// True for `Option<T>`: serde takes a missing field of that type as `None`.
fn is_option(ty: &Type) -> bool {
    matches!(shape(ty), Some(("Option", args)) if args.len() == 1)
}

/// The last path segment's name and type arguments (`std::vec::Vec<u8>` →
/// `("Vec", [u8])`); `None` for other types.
fn shape(ty: &Type) -> Option<(&'static str, Vec<&Type>)> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    let args = match &last.arguments {
        PathArguments::None => Vec::new(),
        PathArguments::AngleBracketed(generic) => generic
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        PathArguments::Parenthesized(_) => return None,
    };
    let name = last.ident.to_string();
    KNOWN
        .iter()
        .find(|known| **known == name)
        .map(|known| (*known, args))
}

/// Names of the std types given a structural schema.
const KNOWN: &[&str] = &[
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "isize",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "usize",
    "f32",
    "f64",
    "bool",
    "char",
    "String",
    "str",
    "PathBuf",
    "Path",
    "Box",
    "Rc",
    "Arc",
    "Cow",
    "Vec",
    "VecDeque",
    "LinkedList",
    "BinaryHeap",
    "HashSet",
    "BTreeSet",
    "HashMap",
    "BTreeMap",
    "Option",
    "Result",
];
// Not `Duration`: std's, chrono's and time's share the name and not the
// encoding; it is probed like any other type.

const HELPERS: &str = "__mqrpc_asyncapi";

fn helper(name: &str) -> TokenStream {
    format!("{HELPERS}::{name}").parse().expect("a valid path")
}

/// An expression of type `Value`: the JSON schema of `ty`.
fn schema(ty: &Type) -> TokenStream {
    match ty {
        Type::Paren(inner) => return schema(&inner.elem),
        Type::Group(inner) => return schema(&inner.elem),
        Type::Tuple(tuple) if tuple.elems.is_empty() => {
            let unit = helper("unit");
            return quote!(#unit());
        }
        Type::Tuple(tuple) => {
            let items = tuple.elems.iter().map(schema);
            let f = helper("tuple");
            return quote!(#f(::std::vec![#(#items),*]));
        }
        Type::Array(array) => {
            let (items, len) = (schema(&array.elem), &array.len);
            let f = helper("fixed_array");
            return quote!(#f(#items, #len));
        }
        Type::Slice(slice) => {
            let items = schema(&slice.elem);
            let f = helper("array");
            return quote!(#f(#items, false));
        }
        _ => {}
    }
    if let Some((name, args)) = shape(ty) {
        if let Some(tokens) = known(name, &args) {
            return tokens;
        }
    }
    probe(ty)
}

/// The structural schema of a std type, if its arguments fit.
fn known(name: &str, args: &[&Type]) -> Option<TokenStream> {
    let tokens = match (name, args) {
        (
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
            | "usize",
            [],
        ) => {
            let f = helper("integer");
            let ty: TokenStream = format!("::core::primitive::{name}").parse().ok()?;
            quote!(#f(#name, #ty::MIN as i128, #ty::MAX as u128))
        }
        ("f32" | "f64", []) => {
            let f = helper("number");
            quote!(#f(#name))
        }
        ("bool", []) => {
            let f = helper("boolean");
            quote!(#f())
        }
        ("char", []) => {
            let f = helper("character");
            quote!(#f())
        }
        ("String" | "str" | "PathBuf" | "Path", []) => {
            let f = helper("string");
            quote!(#f())
        }
        ("Box" | "Rc" | "Arc" | "Cow", [inner]) => schema(inner),
        ("Vec" | "VecDeque" | "LinkedList" | "BinaryHeap", [item]) => {
            let (f, item) = (helper("array"), schema(item));
            quote!(#f(#item, false))
        }
        ("HashSet" | "BTreeSet", [item]) => {
            let (f, item) = (helper("array"), schema(item));
            quote!(#f(#item, true))
        }
        ("HashMap" | "BTreeMap", [key, value]) => {
            let keys = match shape(key) {
                Some(("String" | "str" | "char" | "Cow" | "Box" | "Rc" | "Arc", _)) => {
                    "string".to_string()
                }
                Some((
                    "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64"
                    | "u128" | "usize",
                    _,
                )) => "integer".to_string(),
                _ => type_name(key),
            };
            let (f, value) = (helper("map"), schema(value));
            quote!(#f(#keys, #value))
        }
        ("Option", [inner]) => {
            let (f, inner) = (helper("option"), schema(inner));
            quote!(#f(#inner))
        }
        ("Result", [ok, err]) => {
            let (f, ok, err) = (helper("result"), schema(ok), schema(err));
            quote!(#f(#ok, #err))
        }
        _ => return None,
    };
    Some(tokens)
}

/// `schemars::JsonSchema` if the type has it, a placeholder otherwise.
fn probe(ty: &Type) -> TokenStream {
    let name = type_name(ty);
    quote! {
        {
            #[allow(unused_imports)]
            use __mqrpc_asyncapi::{ViaFallback as _, ViaJsonSchema as _};
            (&&__mqrpc_asyncapi::Probe::<#ty>::new()).schema(&mut __schemas, #name)
        }
    }
}

/// The type as written, without the spaces `quote` puts between tokens.
fn type_name(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let next = chars.peek().copied().unwrap_or(' ');
            let prev = out.chars().last().unwrap_or(' ');
            // Keep the space after a comma; drop it around `<`, `>`, `::`, `&`.
            if prev == ',' || (prev.is_alphanumeric() && next.is_alphanumeric()) {
                out.push(' ');
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> Type {
        syn::parse_str(text).unwrap()
    }

    #[test]
    fn type_names_read_like_rust() {
        assert_eq!(type_name(&ty("my::Order")), "my::Order");
        assert_eq!(
            type_name(&ty("Wrapper < u8 , String >")),
            "Wrapper<u8, String>"
        );
    }

    #[test]
    fn std_types_get_structural_schemas_and_others_a_probe() {
        let text = |t: &str| schema(&ty(t)).to_string();
        assert!(text("u8").contains("integer"));
        assert!(text("std::vec::Vec<String>").contains("array"));
        assert!(text("Vec<Order>").contains("Probe"));
        assert!(!text("Vec<u8>").contains("Probe"));
        assert!(text("HashMap<String, u32>").contains("\"string\""));
        assert!(text("BTreeMap<u64, u32>").contains("\"integer\""));
        assert!(text("[u8; 4]").contains("fixed_array"));
        assert!(text("(u8, bool)").contains("tuple"));
        assert!(text("()").contains("unit"));
        // Wrong arity: not the std type, so probed.
        assert!(text("Vec").contains("Probe"));
        assert!(is_option(&ty("Option<u8>")));
        assert!(!is_option(&ty("Vec<Option<u8>>")));
    }

    #[test]
    fn docs_are_the_doc_comment() {
        let item: syn::TraitItemFn = syn::parse_str(
            "/// Adds.\n///\n/// Wraps around.\n#[inline] async fn add(&self) -> u8;",
        )
        .unwrap();
        assert_eq!(docs(&item.attrs), "Adds.\n\nWraps around.");
    }
}
