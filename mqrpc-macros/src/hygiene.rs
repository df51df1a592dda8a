//! Names of the generated code that no user name can capture or shadow.

use proc_macro2::Span;
use syn::Ident;

/// A name of the generated code that no user name can capture or shadow:
/// reserved (`__mqrpc_` prefix) and, for locals, resolved at the macro's
/// own site.
pub(crate) fn hidden(name: &str) -> Ident {
    Ident::new(&format!("__mqrpc_{name}"), Span::mixed_site())
}
