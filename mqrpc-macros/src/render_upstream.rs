//! The parts of generated code for methods taking `mqrpc::Stream<T>`
//! (client streaming, and bidirectional with a `mqrpc::Stream<U>` result):
//! the client's parameter and call, the server's arm and
//! `Service::takes_stream`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Ident, Type};

use crate::model::{Method, Output, Service};

/// The client's parameter for the stream argument: any `futures::Stream`
/// of the items, as tonic's client streaming takes.
pub fn client_param(ident: &Ident, item: &Type, krate: &syn::Path) -> TokenStream {
    quote! {
        #ident: impl #krate::__private::upstream::Stream<Item = #item>
            + ::core::marker::Send
            + 'static
    }
}

/// The client's output type, the `Client` method it calls and the
/// arguments after the encoded ones: the items, then how to decode.
pub fn client_call(
    method: &Method,
    krate: &syn::Path,
    items: &Ident,
) -> (TokenStream, TokenStream, TokenStream) {
    match &method.output {
        Output::Unit => (
            quote!(()),
            quote!(upstream_qos),
            quote!(#items, #krate::Response::into_value::<()>),
        ),
        Output::Plain(ty) => (
            quote!(#ty),
            quote!(upstream_qos),
            quote!(#items, #krate::Response::into_value::<#ty>),
        ),
        Output::Fallible { declared, ok, err } => (
            quote!(#declared),
            quote!(upstream_qos),
            quote!(#items, #krate::Response::into_result::<#ok, #err>),
        ),
        Output::Stream { item, .. } => (
            quote!(#krate::Items<#item>),
            quote!(bidi_qos),
            quote!(#items, #krate::Response::into_value::<#item>),
        ),
    }
}

/// The server's handling of a decoded call whose method takes a stream:
/// `reply` with the stream argument bound to the call's upstream, or
/// `bad-request` when the call came without one.
pub fn server_reply(
    method: &Method,
    krate: &syn::Path,
    codec: &Ident,
    reply: TokenStream,
) -> TokenStream {
    let Some((items, item)) = method.stream_arg() else {
        return reply;
    };
    let wire = &method.wire_name;
    quote! {
        match #krate::__private::upstream::take::<#item>(#codec) {
            ::core::option::Option::Some(#items) => #reply,
            ::core::option::Option::None => #krate::__private::upstream::missing(#wire),
        }
    }
}

/// `Service::takes_stream`, when a method takes a stream.
pub fn takes_stream(service: &Service) -> TokenStream {
    let names: Vec<_> = service
        .methods
        .iter()
        .filter(|m| m.stream_arg().is_some())
        .map(|m| &m.wire_name)
        .collect();
    if names.is_empty() {
        return TokenStream::new();
    }
    let method = crate::hygiene::hidden("method");
    quote! {
        fn takes_stream(#method: &str) -> bool {
            ::core::matches!(#method, #(#names)|*)
        }
    }
}
