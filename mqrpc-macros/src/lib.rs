//! The `#[mqrpc::service]` attribute macro. Use it through the `mqrpc`
//! crate, where it is documented with examples:
//! [`mqrpc::service`](https://docs.rs/mqrpc/latest/mqrpc/attr.service.html).
//!
//! Layout: `model` parses and checks the trait; `render_trait`,
//! `render_client`, `render_server`, `render_schema` and `render_asyncapi`
//! each produce one part of the output.

mod hygiene;
mod model;
mod render_asyncapi;
mod render_client;
mod render_schema;
mod render_server;
mod render_trait;

use proc_macro::TokenStream;

/// Generates a typed MQTT v5 client and server from a trait. See
/// `mqrpc::service` for the full documentation.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    match model::Service::parse(args.into(), item.clone()) {
        Ok(service) => {
            let mut out = render_trait::render(&service);
            out.extend(render_client::render(&service));
            out.extend(render_server::render(&service));
            out.extend(render_schema::render(&service));
            out.extend(render_asyncapi::render(&service));
            out.into()
        }
        Err(error) => {
            // Keep the trait (minus our attributes) so the user sees only the
            // real errors, not a cascade of "trait not found".
            let mut out = error.to_compile_error();
            out.extend(quote::ToTokens::into_token_stream(strip_mqrpc_attrs(item)));
            out.into()
        }
    }
}

fn strip_mqrpc_attrs(mut item: syn::ItemTrait) -> syn::ItemTrait {
    for trait_item in &mut item.items {
        if let syn::TraitItem::Fn(function) = trait_item {
            function.attrs.retain(|attr| !attr.path().is_ident("mqrpc"));
        }
    }
    item
}
