//! Parses the annotated trait into a small model and checks everything the
//! wire cannot carry, with errors on the offending tokens.

use proc_macro2::{Span, TokenStream};
use syn::visit::Visit;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, PathArguments, ReturnType,
    Token, TraitItem, TraitItemFn, Type, TypeParamBound, Visibility,
};

/// Names of the generated client's own methods: a service method of the
/// same name would collide with them.
const CLIENT_INHERENT: &[&str] = &[
    "new",
    "with_options",
    "from_client",
    "with_timeout",
    "to_instance",
    "broadcast",
    "client",
    "__mqrpc_schema",
];

pub struct Service {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub supertraits: syn::punctuated::Punctuated<TypeParamBound, Token![+]>,
    pub wire_name: String,
    pub methods: Vec<Method>,
    /// Path of the `mqrpc` crate in generated code: `::mqrpc`, or what
    /// `#[mqrpc::service(crate = "...")]` names (a renamed dependency).
    pub krate: syn::Path,
}

pub struct Method {
    /// The user's attributes minus `#[mqrpc(...)]` (docs, cfg, lints).
    pub attrs: Vec<Attribute>,
    pub ident: Ident,
    pub wire_name: String,
    /// `#[mqrpc(qos = N)]`: the method's own QoS (0, 1 or 2).
    pub qos: Option<u8>,
    /// `#[mqrpc(oneway)]`: fire and forget, no answer.
    pub oneway: bool,
    /// `#[mqrpc(idempotent)]`: may run twice; a retry the server cannot
    /// vouch for runs anyway.
    pub idempotent: bool,
    pub args: Vec<Arg>,
    pub output: Output,
}

pub struct Arg {
    pub ident: Ident,
    pub ty: Type,
    /// `T` of an argument `mqrpc::Stream<T>` (any path ending in
    /// `Stream<T>`): the caller streams its items to the server.
    pub stream: Option<Box<Type>>,
}

impl Method {
    /// The argument the caller streams, if any (at most one).
    pub fn stream_arg(&self) -> Option<(&Ident, &Type)> {
        self.args
            .iter()
            .find_map(|arg| Some((&arg.ident, &**arg.stream.as_ref()?)))
    }
}

pub enum Output {
    Unit,
    Plain(Type),
    /// `mqrpc::Stream<T>` (any path ending in `Stream<T>`): one answer per
    /// item, the client gets `mqrpc::Items<T>`.
    Stream {
        declared: Box<Type>,
        item: Box<Type>,
    },
    /// `Result<T, E>`: `E` travels as a typed application error.
    Fallible {
        declared: Box<Type>,
        ok: Box<Type>,
        err: Box<Type>,
    },
}

/// Collects every error instead of stopping at the first, so one build
/// shows all of them.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, span: impl quote::ToTokens, message: impl std::fmt::Display) {
        let error = syn::Error::new_spanned(span, message);
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn push_error(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

impl Service {
    pub fn parse(args: TokenStream, item: ItemTrait) -> Result<Service, syn::Error> {
        let mut errors = Errors::default();
        let ServiceArgs { name, krate } = parse_service_args(args, &mut errors);
        let (wire_name, name_span) = match name {
            Some(name) => (name.value(), name.span()),
            None => (item.ident.to_string(), item.ident.span()),
        };
        check_name(&wire_name, name_span, &mut errors, true);
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(
                &item.generics,
                "an #[mqrpc::service] trait cannot be generic: client and server must agree on concrete types; use concrete types or one trait per type",
            );
        }
        if let Some(unsafety) = &item.unsafety {
            errors.push(unsafety, "an #[mqrpc::service] trait cannot be `unsafe`");
        }
        if let Some(auto) = &item.auto_token {
            errors.push(auto, "an #[mqrpc::service] trait cannot be an auto trait");
        }
        let mut methods: Vec<Method> = Vec::new();
        for trait_item in &item.items {
            match trait_item {
                TraitItem::Fn(function) => {
                    if let Some(method) = Method::parse(function, &mut errors) {
                        if let Some(first) = methods.iter().find(|m| m.wire_name == method.wire_name) {
                            errors.push(
                                &function.sig.ident,
                                format!(
                                    "duplicate wire name `{}`: method `{}` already uses it; give one of them another #[mqrpc(name = \"...\")]",
                                    method.wire_name, first.ident
                                ),
                            );
                        }
                        methods.push(method);
                    }
                }
                other => errors.push(
                    other,
                    "an #[mqrpc::service] trait may only contain `async fn` methods (no constants, types or macros)",
                ),
            }
        }
        errors.finish()?;
        Ok(Service {
            attrs: item.attrs,
            vis: item.vis,
            ident: item.ident,
            supertraits: item.supertraits,
            wire_name,
            methods,
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::mqrpc)),
        })
    }

    /// The `crate = "..."` string serde's derive takes for its own path.
    pub fn serde_crate(&self) -> LitStr {
        let krate = &self.krate;
        let path = quote::quote!(#krate::__private::serde).to_string();
        LitStr::new(&path.replace(' ', ""), Span::call_site())
    }

    pub fn client_ident(&self) -> Ident {
        Ident::new(&format!("{}Client", self.ident), self.ident.span())
    }

    pub fn broadcast_ident(&self) -> Ident {
        Ident::new(&format!("{}Broadcast", self.ident), self.ident.span())
    }

    pub fn server_ident(&self) -> Ident {
        Ident::new(&format!("{}Server", self.ident), self.ident.span())
    }
}

/// What `#[mqrpc::service(name = "calc", crate = "path")]` says.
#[derive(Default)]
struct ServiceArgs {
    name: Option<LitStr>,
    krate: Option<syn::Path>,
}

fn parse_service_args(args: TokenStream, errors: &mut Errors) -> ServiceArgs {
    let mut parsed = ServiceArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            parsed.name = Some(meta.value()?.parse::<LitStr>()?);
            Ok(())
        } else if meta.path.is_ident("crate") {
            let path = meta.value()?.parse::<LitStr>()?;
            parsed.krate = Some(path.parse::<syn::Path>().map_err(|_| {
                syn::Error::new_spanned(
                    &path,
                    "`crate` takes the path of the mqrpc crate, e.g. `crate = \"::my_mqrpc\"`",
                )
            })?);
            Ok(())
        } else {
            Err(meta.error(
                "unsupported #[mqrpc::service] argument; supported: `name = \"...\"`, `crate = \"path\"`",
            ))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push_error(e);
    }
    parsed
}

/// What `#[mqrpc(...)]` says of a method.
#[derive(Default)]
struct MethodAttrs {
    name: Option<LitStr>,
    qos: Option<u8>,
    /// `oneway` was given.
    oneway: Option<syn::Path>,
    /// `idempotent` was given.
    idempotent: Option<syn::Path>,
}

/// Reads `#[mqrpc(name = "...", qos = N, oneway)]` from a method and
/// returns the other attributes.
fn split_method_attrs(attrs: &[Attribute], errors: &mut Errors) -> (Vec<Attribute>, MethodAttrs) {
    let mut kept = Vec::new();
    let mut name = None;
    let mut qos = None;
    let mut oneway = None;
    let mut idempotent = None;
    for attr in attrs {
        if !attr.path().is_ident("mqrpc") {
            kept.push(attr.clone());
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse::<LitStr>()?);
                Ok(())
            } else if meta.path.is_ident("oneway") {
                oneway = Some(meta.path.clone());
                Ok(())
            } else if meta.path.is_ident("idempotent") {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error(
                        "`idempotent` takes no value: write `#[mqrpc(idempotent)]`",
                    ));
                }
                idempotent = Some(meta.path.clone());
                Ok(())
            } else if meta.path.is_ident("qos") {
                let value = meta.value()?.parse::<syn::LitInt>()?;
                match value.base10_parse::<u8>() {
                    Ok(level @ 0..=2) => {
                        qos = Some(level);
                        Ok(())
                    }
                    _ => Err(syn::Error::new_spanned(value, "MQTT QoS is 0, 1 or 2")),
                }
            } else {
                Err(meta.error(
                    "unsupported #[mqrpc] attribute; supported: `name = \"...\"`, `qos = 0|1|2`, `oneway`, `idempotent`",
                ))
            }
        });
        if let Err(e) = result {
            errors.push_error(e);
        }
    }
    let attrs = MethodAttrs {
        name,
        qos,
        oneway,
        idempotent,
    };
    (kept, attrs)
}

fn check_name(name: &str, span: Span, errors: &mut Errors, is_service: bool) {
    let what = if is_service { "service" } else { "method" };
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name.contains(['/', '+', '#', '\0']) {
        Some("must be one MQTT topic level: no `/`, `+`, `#` or NUL")
    } else if name.starts_with('_') {
        Some("must not start with `_` (reserved for mqrpc's own topics)")
    } else {
        None
    };
    if let Some(problem) = problem {
        errors.push_error(syn::Error::new(
            span,
            format!("{what} name `{name}` {problem}"),
        ));
    }
}

impl Method {
    fn parse(function: &TraitItemFn, errors: &mut Errors) -> Option<Method> {
        let sig = &function.sig;
        let before = errors.0.is_some();
        let (attrs, method_attrs) = split_method_attrs(&function.attrs, errors);
        let MethodAttrs {
            name,
            qos,
            oneway,
            idempotent,
        } = method_attrs;
        if let (Some(_), Some(path)) = (&oneway, &idempotent) {
            errors.push(
                path,
                "a #[mqrpc(oneway)] method gets no answer and is never retried: remove `idempotent`",
            );
        }
        if let (true, ReturnType::Type(_, ty)) = (oneway.is_some(), &sig.output) {
            errors.push(
                ty,
                "a #[mqrpc(oneway)] method gets no answer, so it returns nothing: remove the return type",
            );
        }
        let (wire_name, name_span) = match name {
            Some(name) => (name.value(), name.span()),
            None => (sig.ident.to_string(), sig.ident.span()),
        };
        check_name(&wire_name, name_span, errors, false);
        if CLIENT_INHERENT.contains(&sig.ident.to_string().as_str()) {
            errors.push(
                &sig.ident,
                format!(
                    "`{0}` is a method of the generated client; rename this method (the wire name can stay: #[mqrpc(name = \"{0}\")])",
                    sig.ident
                ),
            );
        }
        if sig.asyncness.is_none() {
            errors.push(
                sig.fn_token,
                "methods of an #[mqrpc::service] trait must be `async fn`: every call crosses the network",
            );
        }
        if let Some(constness) = &sig.constness {
            errors.push(constness, "a service method cannot be `const`");
        }
        if let Some(unsafety) = &sig.unsafety {
            errors.push(unsafety, "a service method cannot be `unsafe`");
        }
        if let Some(abi) = &sig.abi {
            errors.push(abi, "a service method cannot have an `extern` ABI");
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(variadic, "a service method cannot be variadic");
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(
                &sig.generics,
                "a service method cannot be generic: the server must know the concrete types it decodes; use concrete types",
            );
        }
        if let Some(body) = &function.default {
            errors.push(
                body,
                "remove the default body: the server's type implements every method",
            );
        }

        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver)) => {
                if receiver.reference.is_none() {
                    errors.push(
                        receiver,
                        "take `&self`: the server keeps one instance and calls it for every request",
                    );
                } else if receiver.mutability.is_some() {
                    errors.push(
                        receiver,
                        "take `&self`, not `&mut self`: a server handles many calls at once; keep mutable state behind a Mutex or an atomic",
                    );
                } else if receiver.colon_token.is_some() {
                    errors.push(receiver, "write the receiver as plain `&self`");
                }
            }
            _ => errors.push(
                &sig.ident,
                "a service method must take `&self` as its first argument",
            ),
        }

        let mut args = Vec::new();
        for input in inputs {
            let FnArg::Typed(typed) = input else { continue };
            let ident = match &*typed.pat {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    pat.ident.clone()
                }
                other => {
                    errors.push(
                        other,
                        "use a plain argument name here: it names the field on the wire",
                    );
                    continue;
                }
            };
            check_wire_type(&typed.ty, "argument", errors);
            let stream = stream_item(&typed.ty).map(Box::new);
            match &stream {
                Some(_) if args.iter().any(|arg: &Arg| arg.stream.is_some()) => errors.push(
                    &typed.ty,
                    "a method takes at most one `mqrpc::Stream<T>` argument: its items travel in one sequence; merge the streams into one of an enum",
                ),
                Some(_) if oneway.is_some() => errors.push(
                    &typed.ty,
                    "a #[mqrpc(oneway)] method cannot take a `mqrpc::Stream<T>`: the server grants credit for its items in answers; remove `oneway`",
                ),
                Some(item) => check_no_stream(item, errors),
                None => check_no_stream(&typed.ty, errors),
            }
            args.push(Arg {
                ident,
                ty: (*typed.ty).clone(),
                stream,
            });
        }

        let output = match &sig.output {
            ReturnType::Default => Output::Unit,
            ReturnType::Type(_, ty) => {
                check_wire_type(ty, "return type", errors);
                match (result_parts(ty), stream_item(ty)) {
                    (Some((ok, err)), _) => Output::Fallible {
                        declared: ty.clone(),
                        ok: Box::new(ok),
                        err: Box::new(err),
                    },
                    (None, Some(item)) => Output::Stream {
                        declared: ty.clone(),
                        item: Box::new(item),
                    },
                    (None, None) => Output::Plain((**ty).clone()),
                }
            }
        };
        if errors.0.is_some() && !before {
            return None;
        }
        Some(Method {
            attrs,
            ident: sig.ident.clone(),
            wire_name,
            qos,
            oneway: oneway.is_some(),
            idempotent: idempotent.is_some(),
            args,
            output,
        })
    }
}

/// The type arguments of a path type whose last segment is `name`
/// (`Result<T, E>` → `[T, E]`).
fn type_args(ty: &Type, name: &str) -> Option<Vec<Type>> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    let types = generic.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    });
    Some(types.collect())
}

/// `T` of `Stream<T>` (any path ending in `Stream` with one type argument).
fn stream_item(ty: &Type) -> Option<Type> {
    match <[Type; 1]>::try_from(type_args(ty, "Stream")?) {
        Ok([item]) => Some(item),
        Err(_) => None,
    }
}

/// Rejects a `Stream<..>` inside an argument's type (`Vec<Stream<T>>`,
/// `Option<Stream<T>>`, `Stream<Stream<T>>`): a stream is an argument of its own.
fn check_no_stream(ty: &Type, errors: &mut Errors) {
    struct Checker<'a> {
        errors: &'a mut Errors,
    }
    impl<'ast> Visit<'ast> for Checker<'_> {
        fn visit_type_path(&mut self, node: &'ast syn::TypePath) {
            if stream_item(&Type::Path(node.clone())).is_some() {
                self.errors.push(
                    node,
                    "a `mqrpc::Stream<T>` can only be a whole argument (`items: mqrpc::Stream<T>`), not inside another type",
                );
                return;
            }
            syn::visit::visit_type_path(self, node);
        }
    }
    Checker { errors }.visit_type(ty);
}

/// `Result<T, E>` (any path ending in `Result` with two type arguments).
fn result_parts(ty: &Type) -> Option<(Type, Type)> {
    if matches!(ty, Type::Path(path) if path.qself.is_some()) {
        return None;
    }
    match <[Type; 2]>::try_from(type_args(ty, "Result")?) {
        Ok([ok, err]) => Some((ok, err)),
        Err(_) => None,
    }
}

/// Rejects what cannot be sent by value: references, `impl Trait`, trait
/// objects and non-`'static` lifetimes, anywhere inside the type.
fn check_wire_type(ty: &Type, what: &str, errors: &mut Errors) {
    struct Checker<'a> {
        what: &'a str,
        errors: &'a mut Errors,
    }
    impl<'ast> Visit<'ast> for Checker<'_> {
        fn visit_type_reference(&mut self, node: &'ast syn::TypeReference) {
            self.errors.push(
                node,
                format!(
                    "a service {} cannot borrow: it travels over the wire by value; use an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)",
                    self.what
                ),
            );
        }
        fn visit_type_impl_trait(&mut self, node: &'ast syn::TypeImplTrait) {
            self.errors.push(
                node,
                format!(
                    "`impl Trait` cannot be a service {}: use a concrete type",
                    self.what
                ),
            );
        }
        fn visit_type_trait_object(&mut self, node: &'ast syn::TypeTraitObject) {
            self.errors.push(
                node,
                format!(
                    "a trait object cannot be a service {}: use a concrete type",
                    self.what
                ),
            );
        }
        fn visit_lifetime(&mut self, node: &'ast syn::Lifetime) {
            if node.ident != "static" {
                self.errors.push(
                    node,
                    format!(
                        "a service {} cannot hold a borrowed lifetime; use owned data",
                        self.what
                    ),
                );
            }
        }
        fn visit_type_ptr(&mut self, node: &'ast syn::TypePtr) {
            self.errors.push(
                node,
                format!("a raw pointer cannot be a service {}", self.what),
            );
        }
    }
    Checker { what, errors }.visit_type(ty);
}
