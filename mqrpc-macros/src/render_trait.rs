//! Renders the user's trait with `Send` futures, so servers can run each
//! call on a multi-threaded runtime.

use proc_macro2::TokenStream;
use quote::quote;

use crate::model::{Output, Service};

pub fn render(service: &Service) -> TokenStream {
    let Service {
        attrs,
        vis,
        ident,
        supertraits,
        ..
    } = service;
    let colon = (!supertraits.is_empty()).then(|| quote!(:));
    let methods = service.methods.iter().map(|method| {
        let attrs = &method.attrs;
        let name = &method.ident;
        let args = method.args.iter().map(|arg| {
            let (ident, ty) = (&arg.ident, &arg.ty);
            quote!(#ident: #ty)
        });
        let output = match &method.output {
            Output::Unit => quote!(()),
            Output::Plain(ty) => quote!(#ty),
            Output::Fallible { declared, .. } | Output::Stream { declared, .. } => {
                quote!(#declared)
            }
        };
        quote! {
            #(#attrs)*
            fn #name(&self, #(#args),*)
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
        }
    });
    quote! {
        #(#attrs)*
        #vis trait #ident #colon #supertraits {
            #(#methods)*
        }
    }
}
