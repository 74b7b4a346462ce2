//! Code generation. The expansion holds no behaviour: it computes the key,
//! describes the options as a `Spec` value and hands the body, as a future,
//! to `__private::run_skip` / `run_wait` of the advisory-locked crate (with
//! `transaction = tx`: as a closure taking the transaction, to `run_tx_skip`
//! / `run_tx_wait`). It also submits the key's name to the compile-time
//! inventory of key names (`names`).
//!
//! The crate is named `::advisory_locked`, or by the path of `crate = "…"`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, LitStr, Pat, Path, ReturnType, Signature, Stmt, Type};

use crate::attr::{Key, OnLost, WaitMode};
use crate::template::{Member, Piece, Placeholder, Root, Template};
use crate::valid::{Limit, Options, Scope, ValidFn};

/// Rewrites a checked fn.
pub fn expand(options: &Options, f: ValidFn) -> TokenStream {
    let ValidFn {
        attrs,
        vis,
        mut sig,
        body,
    } = f;
    let krate = Krate(options.crate_path.as_ref());
    let ret = BodyType::of(&sig);
    sig.output = output(options, &krate, &ret, &sig.output);

    let key_var = Ident::new("__advisory_locked_key", Span::mixed_site());
    let key_name = key_name(options, &krate, &sig);
    let assertion = commit_assertion(options, &krate, &ret);
    let key_expr = key_expr(&options.key, &krate, &sig);
    let call = call(options, &krate, &ret, &key_var, &body.stmts, &sig);
    let inner_attrs = &body.inner_attrs;
    quote! {
        #(#attrs)*
        #vis #sig
        {
            #(#inner_attrs)*
            #key_name
            #assertion
            let #key_var = #key_expr;
            #call
        }
    }
}

/// The advisory-locked crate's path: `::advisory_locked`, or the path of
/// `crate = "…"` (its tokens spanned at that string).
struct Krate<'a>(Option<&'a Path>);

impl Krate<'_> {
    /// The path; the default one spanned at `span`, like the tokens around it.
    fn at(&self, span: Span) -> TokenStream {
        match self.0 {
            Some(path) => path.to_token_stream(),
            None => quote_spanned!(span=> ::advisory_locked),
        }
    }
}

/// The type the body evaluates to (`()` if none is written), and where to
/// point errors about it.
struct BodyType {
    ty: TokenStream,
    span: Span,
}

impl BodyType {
    fn of(sig: &Signature) -> Self {
        match &sig.output {
            ReturnType::Type(_, ty) => BodyType {
                ty: ty.to_token_stream(),
                span: ty.span(),
            },
            ReturnType::Default => {
                let span = sig.paren_token.span.close();
                BodyType {
                    ty: quote_spanned!(span=> ()),
                    span,
                }
            }
        }
    }
}

/// The fn's new return type: `Result<Outcome<T>, Error>` when skipping,
/// `Result<T, Error>` when waiting.
fn output(options: &Options, krate: &Krate, ret: &BodyType, old: &ReturnType) -> ReturnType {
    let (ty, span) = (&ret.ty, ret.span);
    let k = krate.at(span);
    let new_ret = match options.wait {
        WaitMode::Skip => quote_spanned!(span=>
            ::core::result::Result<#k::Outcome<#ty>, #k::Error>
        ),
        WaitMode::Forever | WaitMode::TimeoutMillis(_) => quote_spanned!(span=>
            ::core::result::Result<#ty, #k::Error>
        ),
    };
    let arrow = match old {
        ReturnType::Type(arrow, _) => *arrow,
        ReturnType::Default => syn::Token![->](span),
    };
    ReturnType::Type(arrow, Box::new(Type::Verbatim(new_ret)))
}

/// With a transaction, the body's type must say whether to commit; a wrong
/// type is reported at the return type.
fn commit_assertion(options: &Options, krate: &Krate, ret: &BodyType) -> TokenStream {
    match options.scope {
        Scope::Session { .. } | Scope::On { .. } => TokenStream::new(),
        Scope::Transaction { .. } => {
            let (ty, span) = (&ret.ty, ret.span);
            let k = krate.at(span);
            quote_spanned! {span=>
                let _ = <#ty as #k::TransactionResult>::commits;
            }
        }
    }
}

/// `__private::run_…(spec, key, body).await`.
fn call(
    options: &Options,
    krate: &Krate,
    ret: &BodyType,
    key_var: &Ident,
    stmts: &[Stmt],
    sig: &Signature,
) -> TokenStream {
    let skip = options.wait == WaitMode::Skip;
    if let Scope::On { arg } = &options.scope {
        let arg = argument_ident(sig, &Root::Arg(arg.clone()), arg.span());
        return call_on(
            options,
            krate,
            &arg,
            key_var,
            body(options, krate, ret, stmts),
        );
    }
    // With a transaction, the call is spanned at the return type: that is
    // where a body type without `TransactionResult` is reported.
    let (run, span) = match (&options.scope, skip) {
        (Scope::Session { .. }, true) => ("run_skip", Span::call_site()),
        (Scope::Session { .. }, false) => ("run_wait", Span::call_site()),
        (Scope::Transaction { .. }, true) => ("run_tx_skip", ret.span),
        (Scope::Transaction { .. }, false) => ("run_tx_wait", ret.span),
        (Scope::On { .. }, _) => ("run_on", Span::call_site()),
    };
    let run = Ident::new(run, span);
    let k = krate.at(span);
    let spec = spec(options, krate);
    let wait = wait(options, krate);
    let body = body(options, krate, ret, stmts);
    quote_spanned! {span=>
        #k::__private::#run(
            #spec,
            #wait
            #key_var,
            #body,
        )
        .await
    }
}

/// `on = tx`: the transaction-level lock in the argument `tx` (its own
/// token, so that a type that is not a transaction is reported at the
/// argument), then the body.
fn call_on(
    options: &Options,
    krate: &Krate,
    arg: &Ident,
    key_var: &Ident,
    body: TokenStream,
) -> TokenStream {
    let k = krate.at(Span::call_site());
    let mode = mode(options.shared, &k);
    let (lock, run) = match options.wait {
        WaitMode::Skip => (quote!(on_try), quote!(run_on_skip)),
        WaitMode::Forever | WaitMode::TimeoutMillis(_) => (quote!(on_wait), quote!(run_on_wait)),
    };
    let wait = wait(options, krate);
    quote! {
        #k::__private::#run(
            #k::__private::#lock(#arg, #mode, #wait #key_var).await,
            #body,
        )
        .await
    }
}

/// The wait of a wait-mode call, as the argument after the spec (nothing
/// in skip mode: the skip entry points take no wait).
fn wait(options: &Options, krate: &Krate) -> TokenStream {
    let k = krate.at(Span::call_site());
    match options.wait {
        WaitMode::Skip => TokenStream::new(),
        WaitMode::Forever => quote!(#k::__private::Wait::Forever,),
        WaitMode::TimeoutMillis(ms) => quote!(
            #k::__private::Wait::Timeout(::core::time::Duration::from_millis(#ms)),
        ),
    }
}

/// The options as a `__private::Spec` value.
fn spec(options: &Options, krate: &Krate) -> TokenStream {
    let k = krate.at(Span::call_site());
    let pool = &options.pool;
    let mode = mode(options.shared, &k);
    let (on_lost, limit) = match &options.scope {
        Scope::Session { on_lost, limit } => (*on_lost, limit.as_ref()),
        Scope::Transaction { .. } | Scope::On { .. } => (None, None),
    };
    let on_lost = some_or_none(on_lost.map(|policy| match policy {
        OnLost::Abort => quote!(#k::OnLost::Abort),
        OnLost::Continue => quote!(#k::OnLost::Continue),
    }));
    let limit = some_or_none(limit.map(|Limit { slots, per_millis }| {
        let per =
            some_or_none(per_millis.map(|ms| quote!(::core::time::Duration::from_millis(#ms))));
        quote!(#k::__private::Limit {
            slots: #slots,
            per: #per,
        })
    }));
    quote! {
        #k::__private::Spec {
            pool: #pool,
            mode: #mode,
            on_lost: #on_lost,
            limit: #limit,
        }
    }
}

fn some_or_none(value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}

fn mode(shared: bool, k: &TokenStream) -> TokenStream {
    if shared {
        quote!(#k::Mode::Shared)
    } else {
        quote!(#k::Mode::Exclusive)
    }
}

/// The body as a future (with a transaction: a closure taking it). The
/// `if let … return` first makes `return` in the body return its type.
fn body(options: &Options, krate: &Krate, ret: &BodyType, stmts: &[Stmt]) -> TokenStream {
    let ret_var = Ident::new("__advisory_locked_ret", Span::mixed_site());
    let ty = &ret.ty;
    let future = quote! {
        async move {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
            if let ::core::option::Option::Some(#ret_var) = ::core::option::Option::None::<#ty> {
                return #ret_var;
            }
            #(#stmts)*
        }
    };
    match &options.scope {
        Scope::Session { .. } | Scope::On { .. } => future,
        Scope::Transaction { name } => {
            let k = krate.at(Span::call_site());
            quote!(move |#name: #k::Transaction| #future)
        }
    }
}

/// A template whose every placeholder is an argument declared with a
/// primitive integer type (`key = "tenant:{id}"`, `id: u64`) as
/// `__private::KeyPart`s: its key is then written without `core::fmt`,
/// which costs more than the rest of the key. `None` for any other
/// template (formatted with `Display`, as before).
fn integer_parts(
    template: &Template,
    sig: &Signature,
    k: &TokenStream,
    span: Span,
) -> Option<Vec<TokenStream>> {
    template
        .pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => {
                let text = LitStr::new(text, span);
                Some(quote_spanned!(span=> #k::__private::KeyPart::Text(#text)))
            }
            Piece::Placeholder(ph) => {
                let arg = integer_argument(sig, ph)?;
                Some(quote_spanned!(span=> #k::__private::KeyInt::key_part(#arg)))
            }
        })
        .collect()
}

/// The argument a placeholder is, if it is one declared with a primitive
/// integer type (by name: an alias of one is formatted).
fn integer_argument(sig: &Signature, ph: &Placeholder) -> Option<Ident> {
    const INTEGERS: [&str; 10] = [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
    ];
    let (Root::Arg(name), []) = (&ph.root, ph.members.as_slice()) else {
        return None;
    };
    sig.inputs.iter().find_map(|arg| {
        let FnArg::Typed(pt) = arg else { return None };
        let (Pat::Ident(pi), Type::Path(ty)) = (&*pt.pat, &*pt.ty) else {
            return None;
        };
        let integer = ty.qself.is_none()
            && ty
                .path
                .get_ident()
                .is_some_and(|t| INTEGERS.contains(&&*t.to_string()));
        let by_value = pi.subpat.is_none() && pi.by_ref.is_none();
        (by_value && pi.ident.unraw() == name.unraw() && integer).then(|| pi.ident.clone())
    })
}

/// The argument (or `self`) a template placeholder names, as written in the
/// signature: its own span makes it resolve to that argument whatever the
/// hygiene of the key literal (e.g. a key passed into a `macro_rules!`).
fn argument_ident(sig: &Signature, root: &Root, fallback: Span) -> Ident {
    let found = sig.inputs.iter().find_map(|arg| match (arg, root) {
        (FnArg::Receiver(r), Root::SelfValue) => Some(Ident::new("self", r.self_token.span)),
        (FnArg::Typed(pt), Root::Arg(name)) => match &*pt.pat {
            Pat::Ident(pi) if pi.subpat.is_none() && pi.ident.unraw() == name.unraw() => {
                Some(pi.ident.clone())
            }
            _ => None,
        },
        _ => None,
    });
    // Checked before expansion; the fallback only keeps this total.
    found.unwrap_or_else(|| match root {
        Root::SelfValue => Ident::new("self", fallback),
        Root::Arg(name) => {
            let mut name = name.clone();
            name.set_span(fallback);
            name
        }
    })
}

/// The key's entry in the compile-time inventory of key names
/// (`advisory_locked::names`): its name as written, its number unless it is
/// a template, pool, mode, and where the fn is.
fn key_name(options: &Options, krate: &Krate, sig: &Signature) -> TokenStream {
    let k = krate.at(Span::call_site());
    let (name, id, kind) = key_identity(&options.key, &k);
    let pool = &options.pool;
    let mode = mode(options.shared, &k);
    // `file!()` and `line!()` of the fn's name, not of the attribute.
    let at = sig.ident.span();
    let file = quote_spanned!(at=> ::core::file!());
    let line = quote_spanned!(at=> ::core::line!());
    quote! {
        #k::__private::inventory::submit! {
            #k::__private::KeyName {
                name: #name,
                id: #id,
                kind: #k::names::KeyKind::#kind,
                pool: #pool,
                mode: #mode,
                file: #file,
                line: #line,
            }
        }
    }
}

/// The key's name as written, its number (`None` for a template) and its
/// `KeyKind` variant.
fn key_identity(key: &Key, k: &TokenStream) -> (LitStr, TokenStream, Ident) {
    let kind = |name| Ident::new(name, Span::call_site());
    match key {
        Key::Literal { name, .. } => {
            let lit = LitStr::new(name, Span::call_site());
            let id = quote!(::core::option::Option::Some(#k::KeyId::Int(
                #k::key_hash(#lit)
            )));
            (lit, id, kind("Name"))
        }
        Key::Int { value, .. } => {
            let v = proc_macro2::Literal::i64_suffixed(*value);
            (
                LitStr::new(&value.to_string(), Span::call_site()),
                quote!(::core::option::Option::Some(#k::KeyId::Int(#v))),
                kind("Int"),
            )
        }
        Key::Pair { a, b, .. } => {
            let (la, lb) = (
                proc_macro2::Literal::i32_suffixed(*a),
                proc_macro2::Literal::i32_suffixed(*b),
            );
            (
                LitStr::new(&format!("({a}, {b})"), Span::call_site()),
                quote!(::core::option::Option::Some(#k::KeyId::Pair(#la, #lb))),
                kind("Pair"),
            )
        }
        Key::Template { lit, .. } => (
            LitStr::new(&lit.value(), Span::call_site()),
            quote!(::core::option::Option::None),
            kind("Template"),
        ),
    }
}

/// The expression building the `LockKey`.
fn key_expr(key: &Key, krate: &Krate, sig: &Signature) -> TokenStream {
    let id_const = Ident::new("__ADVISORY_LOCKED_ID", Span::mixed_site());
    let k = krate.at(Span::call_site());
    match key {
        Key::Literal { name, span } => {
            let lit = LitStr::new(name, *span);
            quote! {{
                const #id_const: i64 = #k::key_hash(#lit);
                #k::LockKey::with_id(#lit, #k::KeyId::Int(#id_const))
            }}
        }
        Key::Int { value, span } => {
            let name = LitStr::new(&value.to_string(), *span);
            let value = proc_macro2::Literal::i64_suffixed(*value);
            quote! {
                #k::LockKey::with_id(#name, #k::KeyId::Int(#value))
            }
        }
        Key::Pair { a, b, span } => {
            let name = LitStr::new(&format!("({a}, {b})"), *span);
            let a = proc_macro2::Literal::i32_suffixed(*a);
            let b = proc_macro2::Literal::i32_suffixed(*b);
            quote! {
                #k::LockKey::with_id(#name, #k::KeyId::Pair(#a, #b))
            }
        }
        Key::Template { template, lit } => template_key_expr(template, lit, krate, sig),
    }
}

/// `__private::template_key(format_args!(…))` of a template: the key
/// `LockKey::named(format!(…))` makes, built without a `String` when its
/// name is short. Each value is borrowed into a local first, so that errors about the value (not `Display`, no such
/// field) point at the key.
fn template_key_expr(
    template: &Template,
    lit: &LitStr,
    krate: &Krate,
    sig: &Signature,
) -> TokenStream {
    let span = lit.span();
    let k = krate.at(span);
    if let Some(parts) = integer_parts(template, sig, &k, span) {
        return quote_spanned!(span=> #k::__private::template_key_parts(&[#(#parts),*]));
    }
    let format = LitStr::new(&template.format_string(), span);
    let mut bindings = Vec::new();
    let mut values = Vec::new();
    for (i, ph) in template.placeholders().enumerate() {
        let root = argument_ident(sig, &ph.root, span);
        let members = ph.members.iter().map(|m| match m {
            Member::Named(ident) => {
                let mut ident = ident.clone();
                ident.set_span(span);
                syn::Member::Named(ident)
            }
            Member::Index(index) => syn::Member::Unnamed(syn::Index {
                index: *index,
                span,
            }),
        });
        let var = Ident::new(
            &format!("__advisory_locked_value_{i}"),
            Span::mixed_site().located_at(span),
        );
        bindings.push(quote_spanned!(span=> let #var = &#root #(.#members)*;));
        values.push(var);
    }
    quote_spanned! {span=> {
        #(#bindings)*
        #k::__private::template_key(::core::format_args!(#format #(, #values)*))
    }}
}
