//! Renders the hidden `<Trait>Client::__mqrpc_schema(index)`: the schema
//! fingerprint of each method, computed at its first use from the wire
//! structure of every argument and output type (traced through their
//! `Deserialize` impls by `mqrpc::protocol::schema`), kept in a static.
//! Clients, the server's check, `_info` and AsyncAPI all read it there.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::Type;

use crate::hygiene::hidden;
use crate::model::{Output, Service};

pub fn render(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let client = service.client_ident();
    let index = hidden("index");
    let methods = service.methods.iter().map(|method| {
        let wire = &method.wire_name;
        let args = method.args.iter().map(|arg| {
            let name = arg.ident.unraw().to_string();
            let text = type_text(&arg.ty);
            quote!((#name, #text))
        });
        let output = match &method.output {
            Output::Unit => type_text(&syn::parse_quote!(())),
            Output::Plain(ty) => type_text(ty),
            Output::Fallible { ok, err, .. } => {
                let (ok, err) = (type_text(ok), type_text(err));
                quote!(__mqrpc_schema::result(#ok, #err))
            }
            Output::Stream { item, .. } => {
                let item = type_text(item);
                quote!(__mqrpc_schema::stream(#item))
            }
        };
        quote!(__mqrpc_schema::method(#wire, &[#(#args),*], &#output))
    });
    quote! {
        impl #client {
            /// The schema fingerprint of the method at `index` (declaration
            /// order); not a public API.
            #[doc(hidden)]
            #[allow(clippy::needless_borrow)]
            pub fn __mqrpc_schema(#index: usize) -> &'static str {
                static FINGERPRINTS: #krate::__private::schema::Fingerprints =
                    #krate::__private::schema::Fingerprints::new(|| {
                        use #krate::__private::schema as __mqrpc_schema;
                        #[allow(unused_imports)]
                        use __mqrpc_schema::{ViaDeserialize as _, ViaWritten as _};
                        ::std::vec![#(#methods),*]
                    });
                FINGERPRINTS
                    .get(#index)
                    .map_or("", ::std::string::String::as_str)
            }
        }
    }
}

/// `Option::Some(fingerprint)` of the method at `index`, for generated code.
pub fn fingerprint(service: &Service, index: usize) -> TokenStream {
    let client = service.client_ident();
    quote!(::core::option::Option::Some(#client::__mqrpc_schema(#index)))
}

/// An expression of type `String`: the canonical text of `ty`, traced if it
/// is `DeserializeOwned`, else as written.
fn type_text(ty: &Type) -> TokenStream {
    let written = written(ty);
    quote!((&&__mqrpc_schema::Probe::<#ty>::new()).text(#written))
}

/// The type as written, without any whitespace: `Vec<u8>`,
/// `std::collections::HashMap<String,u64>` (the fallback text of a type
/// that cannot be traced; PROTOCOL.md documents it).
pub fn written(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_text_has_no_whitespace() {
        let ty = |t: &str| -> Type { syn::parse_str(t).unwrap() };
        assert_eq!(written(&ty("Vec < u8 >")), "Vec<u8>");
        assert_eq!(
            written(&ty("std::collections::HashMap<String, Vec<(u8, i64)>>")),
            "std::collections::HashMap<String,Vec<(u8,i64)>>"
        );
        assert_eq!(written(&ty("[u8; 4]")), "[u8;4]");
    }
}
